//! Fake Partner Center: the referrals API (`/v1.0/engagements/referrals`: create, get,
//! JSON-Patch update with `If-Match`, OData list with `$filter` on the update and creation
//! times and on `direction`/`status`/`type`, `$orderby` on both times, paging) and the webhook
//! registration API (`/webhooks/v1/registration` plus validation events) on one server.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Deref,
    sync::{Arc, Mutex},
};

use serde_json::{Map, Value, json};

use super::common::{FakeServer, Recorded, Reply, lock, now_rfc3339, parse_rfc3339};

const REFERRALS: &str = "/v1.0/engagements/referrals";
const REGISTRATION: &str = "/webhooks/v1/registration";
const MAX_PAGE: usize = 100;

#[derive(Debug)]
struct Stored {
    seq: u64,
    doc: Value,
}

#[derive(Debug, Default)]
struct State {
    referrals: BTreeMap<String, Stored>,
    seq: u64,
    etag: u64,
    patches: Vec<(String, Value)>,
    patch_counts: HashMap<String, usize>,
    next_link_base: Option<String>,
    registration: Option<Value>,
    validation_events: HashMap<String, Value>,
    accepted_paths: Option<Vec<String>>,
    creates: Vec<Value>,
}

impl State {
    fn next_etag(&mut self) -> String {
        self.etag += 1;
        format!("\"{}\"", self.etag)
    }

    /// Bumps the eTag of `id` and, unless `touch` is false, its `updatedDateTime`.
    fn bump(&mut self, id: &str, touch: bool) -> Value {
        let etag = self.next_etag();
        let stored = self.referrals.get_mut(id).expect("bump: referral exists");
        let obj = stored
            .doc
            .as_object_mut()
            .expect("stored referral is an object");
        obj.insert("eTag".into(), Value::String(etag));
        if touch {
            obj.insert("updatedDateTime".into(), Value::String(now_rfc3339()));
        }
        stored.doc.clone()
    }
}

/// Fake Partner Center referrals + webhook registration API. Every request needs
/// `Authorization: Bearer <non-empty>`.
#[derive(Debug)]
pub struct FakePartnerCenter {
    server: FakeServer,
    state: Arc<Mutex<State>>,
}

impl Deref for FakePartnerCenter {
    type Target = FakeServer;
    fn deref(&self) -> &FakeServer {
        &self.server
    }
}

impl FakePartnerCenter {
    /// Starts the fake over plain HTTP on 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// Starts the fake over HTTPS with `acceptor`; `base_url` is `https://{host}:{port}`.
    pub async fn start_tls(acceptor: tokio_native_tls::TlsAcceptor, host: &str) -> Self {
        Self::start_inner(Some((acceptor, host.to_owned()))).await
    }

    async fn start_inner(tls: Option<(tokio_native_tls::TlsAcceptor, String)>) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let handler_state = state.clone();
        let server = FakeServer::start(
            Box::new(move |req, base| handle(&handler_state, req, base)),
            fault_body,
            tls,
        )
        .await;
        Self { server, state }
    }

    /// The bodies of the referral creations (POSTs) that were handled, in order.
    pub fn created(&self) -> Vec<Value> {
        lock(&self.state).creates.clone()
    }

    /// Stores (or replaces) a referral. It must be an object with a string `"id"`; the fake sets
    /// `eTag` to a fresh quoted counter and `updatedDateTime` to now if missing. Returns the eTag.
    pub fn insert_referral(&self, referral: Value) -> String {
        let id = referral
            .get("id")
            .and_then(Value::as_str)
            .expect("insert_referral: referral needs a string \"id\"")
            .to_owned();
        let mut doc = referral;
        let obj = doc
            .as_object_mut()
            .expect("insert_referral: referral must be a JSON object");
        obj.entry("updatedDateTime")
            .or_insert_with(|| Value::String(now_rfc3339()));
        let mut s = lock(&self.state);
        let etag = s.next_etag();
        obj.insert("eTag".into(), Value::String(etag.clone()));
        s.seq += 1;
        let seq = s.referrals.get(&id).map_or(s.seq, |r| r.seq);
        s.referrals.insert(id, Stored { seq, doc });
        etag
    }

    /// The stored referral `id`.
    pub fn referral(&self, id: &str) -> Option<Value> {
        lock(&self.state).referrals.get(id).map(|r| r.doc.clone())
    }

    /// Ids of all referrals in insertion order.
    pub fn referral_ids(&self) -> Vec<String> {
        let s = lock(&self.state);
        let mut ids: Vec<(u64, String)> = s
            .referrals
            .iter()
            .map(|(id, r)| (r.seq, id.clone()))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Simulates an edit by someone else: sets `pointer` (e.g. `/status`, creating missing
    /// object members) to `value`, bumps the eTag and `updatedDateTime` (unless the pointer is
    /// `/updatedDateTime` itself). Panics if the referral does not exist.
    pub fn set_referral_field(&self, id: &str, pointer: &str, value: Value) {
        let mut s = lock(&self.state);
        let stored = s
            .referrals
            .get_mut(id)
            .unwrap_or_else(|| panic!("set_referral_field: no referral {id}"));
        set_pointer(&mut stored.doc, pointer, value)
            .unwrap_or_else(|e| panic!("set_referral_field: {e}"));
        s.bump(id, pointer != "/updatedDateTime");
    }

    /// Accept only JSON Patch operations on these paths (case-insensitive) and answer 400
    /// naming the first other path, as a service that documents only some paths may do;
    /// `None` (the default) accepts every path.
    pub fn set_accepted_patch_paths(&self, paths: Option<&[&str]>) {
        lock(&self.state).accepted_paths =
            paths.map(|p| p.iter().map(|s| (*s).to_owned()).collect());
    }

    /// Number of successful PATCHes of referral `id`.
    pub fn patch_count(&self, id: &str) -> usize {
        lock(&self.state).patch_counts.get(id).copied().unwrap_or(0)
    }

    /// The JSON Patch documents successfully applied to referral `id`, in order.
    pub fn patches(&self, id: &str) -> Vec<Value> {
        lock(&self.state)
            .patches
            .iter()
            .filter(|(pid, _)| pid == id)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Makes `@odata.nextLink` start with `base` instead of this server's base URL.
    pub fn set_next_link_base(&self, base: Option<&str>) {
        lock(&self.state).next_link_base = base.map(|b| b.trim_end_matches('/').to_owned());
    }

    /// Replaces the webhook registration (stored as given).
    pub fn set_registration(&self, registration: Option<Value>) {
        lock(&self.state).registration = registration;
    }

    /// The current webhook registration.
    pub fn registration(&self) -> Option<Value> {
        lock(&self.state).registration.clone()
    }

    /// Correlation ids of the validation events created so far.
    pub fn validation_event_ids(&self) -> Vec<String> {
        lock(&self.state)
            .validation_events
            .keys()
            .cloned()
            .collect()
    }
}

fn pc_error(status: u16, code: &str, description: &str) -> Reply {
    Reply::json(status, &json!({ "code": code, "description": description }))
}

fn fault_body(status: u16, retry_after: Option<u64>) -> String {
    if status == 429 {
        let secs = retry_after.unwrap_or(1);
        json!({
            "statusCode": 429,
            "message": format!("Rate limit is exceeded. Try again in {secs} seconds."),
        })
        .to_string()
    } else {
        json!({
            "code": "InjectedFault",
            "description": format!("Injected fault (HTTP {status})"),
        })
        .to_string()
    }
}

fn handle(state: &Mutex<State>, req: &Recorded, base: &str) -> Reply {
    if req.bearer().is_none() {
        return pc_error(401, "Unauthorized", "Bearer token required.")
            .header("www-authenticate", "Bearer");
    }
    let path = req.decoded_path();
    let path = path.trim_end_matches('/');
    let mut s = lock(state);
    let method = req.method.as_str();
    if path == REFERRALS {
        return match method {
            "GET" => list(&s, req, base),
            "POST" => create_referral(&mut s, req),
            _ => pc_error(405, "MethodNotAllowed", "Method not allowed."),
        };
    }
    if let Some(id) = path
        .strip_prefix(REFERRALS)
        .and_then(|p| p.strip_prefix('/'))
    {
        if id.is_empty() || id.contains('/') {
            return pc_error(404, "NotFound", "Resource not found");
        }
        return match method {
            "GET" => get_referral(&s, id),
            "PATCH" => patch_referral(&mut s, req, id),
            _ => pc_error(405, "MethodNotAllowed", "Method not allowed."),
        };
    }
    if path == REGISTRATION {
        return match method {
            "GET" => match &s.registration {
                Some(r) => Reply::json(200, r),
                None => pc_error(404, "NotFound", "Registration not found."),
            },
            "POST" | "PUT" => put_registration(&mut s, req, method == "POST"),
            _ => pc_error(405, "MethodNotAllowed", "Method not allowed."),
        };
    }
    let events = format!("{REGISTRATION}/validationEvents");
    if path == events && method == "POST" {
        return create_validation_event(&mut s);
    }
    if let Some(id) = path.strip_prefix(&events).and_then(|p| p.strip_prefix('/'))
        && method == "GET"
    {
        return match s.validation_events.get(id) {
            Some(e) => Reply::json(200, e),
            None => pc_error(404, "NotFound", "Validation event not found."),
        };
    }
    pc_error(404, "NotFound", "Resource not found")
}

fn referral_reply(status: u16, doc: &Value) -> Reply {
    let etag = doc
        .get("eTag")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Reply::json(status, doc)
        .header("etag", etag)
        .header("request-id", uuid::Uuid::new_v4().to_string())
}

fn get_referral(s: &State, id: &str) -> Reply {
    match s.referrals.get(id) {
        Some(r) => referral_reply(200, &r.doc),
        None => pc_error(404, "NotFound", "Referral not found"),
    }
}

/// Strips weak markers and quotes so `"3"`, `3` and `W/"3"` compare equal.
fn bare_etag(tag: &str) -> &str {
    let tag = tag.trim();
    tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"')
}

fn patch_referral(s: &mut State, req: &Recorded, id: &str) -> Reply {
    let Some(stored) = s.referrals.get(id) else {
        return pc_error(404, "NotFound", "Referral not found");
    };
    if let Some(if_match) = req.header("if-match") {
        let current = stored.doc.get("eTag").and_then(Value::as_str).unwrap_or("");
        if if_match.trim() != "*" && bare_etag(if_match) != bare_etag(current) {
            return pc_error(
                412,
                "PreconditionFailed",
                "The eTag provided does not match the current version of the referral.",
            );
        }
    }
    let patch = req.json();
    let Some(ops) = patch.as_array() else {
        return pc_error(400, "BadRequest", "Body must be a JSON Patch array.");
    };
    if let Some(accepted) = &s.accepted_paths {
        let refused = ops.iter().find_map(|op| {
            let path = op.get("path").and_then(Value::as_str).unwrap_or("");
            (!accepted.iter().any(|a| a.eq_ignore_ascii_case(path))).then_some(path)
        });
        if let Some(path) = refused {
            return pc_error(
                400,
                "BadRequest",
                &format!("The path '{path}' is not supported for update."),
            );
        }
    }
    let mut doc = stored.doc.clone();
    for op in ops {
        if let Err(e) = apply_op(&mut doc, op) {
            return pc_error(400, "BadRequest", &e);
        }
    }
    s.referrals.get_mut(id).expect("checked above").doc = doc;
    let doc = s.bump(id, true);
    s.patches.push((id.to_owned(), patch.clone()));
    *s.patch_counts.entry(id.to_owned()).or_default() += 1;
    let representation = req
        .header("prefer")
        .is_some_and(|p| p.contains("return=representation"));
    if representation {
        referral_reply(200, &doc)
    } else {
        referral_reply(204, &doc).without_body()
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Applies one RFC 6902 `add`/`replace` operation.
fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let name = op.get("op").and_then(Value::as_str).unwrap_or("");
    let path = op
        .get("path")
        .and_then(Value::as_str)
        .ok_or("operation without a string \"path\"")?;
    let value = op
        .get("value")
        .cloned()
        .ok_or_else(|| format!("operation on {path} without \"value\""))?;
    if !matches!(name, "add" | "replace") {
        return Err(format!(
            "Unsupported operation '{name}'; only add and replace are supported."
        ));
    }
    let (parent_ptr, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid path '{path}'"))?;
    let last = unescape(last);
    let parent = doc
        .pointer_mut(parent_ptr)
        .ok_or_else(|| format!("path '{parent_ptr}' does not exist"))?;
    match (parent, name) {
        (Value::Object(map), "add") => {
            map.insert(last, value);
        }
        (Value::Object(map), _) => match map.get_mut(&last) {
            Some(slot) => *slot = value,
            None => return Err(format!("path '{path}' does not exist")),
        },
        (Value::Array(items), "add") => {
            if last == "-" {
                items.push(value);
            } else {
                let i: usize = last.parse().map_err(|_| format!("bad index in '{path}'"))?;
                if i > items.len() {
                    return Err(format!("index out of range in '{path}'"));
                }
                items.insert(i, value);
            }
        }
        (Value::Array(items), _) => {
            let slot = last
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get_mut(i))
                .ok_or_else(|| format!("path '{path}' does not exist"))?;
            *slot = value;
        }
        _ => return Err(format!("parent of '{path}' is not a container")),
    }
    Ok(())
}

/// Sets `pointer` in `doc`, creating missing object members along the way.
fn set_pointer(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let tokens: Vec<String> = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("pointer '{pointer}' must start with '/'"))?
        .split('/')
        .map(unescape)
        .collect();
    let (last, parents) = tokens.split_last().expect("split yields one token");
    let mut cur = doc;
    for t in parents {
        cur = match cur {
            Value::Object(map) => map
                .entry(t.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(items) => t
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get_mut(i))
                .ok_or_else(|| format!("no element '{t}' in '{pointer}'"))?,
            _ => return Err(format!("'{t}' in '{pointer}' is not a container")),
        };
    }
    match cur {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) => {
            let slot = last
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get_mut(i))
                .ok_or_else(|| format!("no element '{last}' in '{pointer}'"))?;
            *slot = value;
        }
        _ => return Err(format!("parent of '{pointer}' is not a container")),
    }
    Ok(())
}

/// `POST /v1.0/engagements/referrals`: the documented required parts (`type`,
/// `customerProfile` with a name, `consent`, `details`) and a two-letter country are checked;
/// the referral is stored as an outgoing, accepted one with a new id, engagement id, eTag and
/// times, and returned with 201.
fn create_referral(s: &mut State, req: &Recorded) -> Reply {
    let body = req.json();
    let Value::Object(mut doc) = body.clone() else {
        return pc_error(
            400,
            "BadRequest",
            "The request body must be a referral object.",
        );
    };
    for required in ["type", "customerProfile", "consent", "details"] {
        if doc.get(required).is_none_or(Value::is_null) {
            return pc_error(
                400,
                "BadRequest",
                &format!("The field '{required}' is required."),
            );
        }
    }
    if body
        .pointer("/customerProfile/name")
        .and_then(Value::as_str)
        .is_none_or(|n| n.trim().is_empty())
    {
        return pc_error(400, "BadRequest", "customerProfile.name is required.");
    }
    let country = body
        .pointer("/customerProfile/address/country")
        .and_then(Value::as_str)
        .unwrap_or("");
    if country.len() != 2 || !country.chars().all(|c| c.is_ascii_uppercase()) {
        return pc_error(
            400,
            "BadRequest",
            "customerProfile.address.country must be a two-letter ISO 3166 code.",
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_rfc3339();
    for read_only in [
        "id",
        "eTag",
        "engagementId",
        "createdDateTime",
        "updatedDateTime",
    ] {
        doc.remove(read_only);
    }
    doc.insert("id".into(), Value::from(id.clone()));
    doc.insert(
        "engagementId".into(),
        Value::from(uuid::Uuid::new_v4().to_string()),
    );
    doc.insert("direction".into(), Value::from("Outgoing"));
    doc.entry("status").or_insert_with(|| Value::from("Active"));
    doc.entry("substatus")
        .or_insert_with(|| Value::from("Accepted"));
    doc.insert("createdDateTime".into(), Value::from(now.clone()));
    doc.insert("acceptedDateTime".into(), Value::from(now.clone()));
    doc.insert("updatedDateTime".into(), Value::from(now));
    s.creates.push(body);
    let etag = s.next_etag();
    doc.insert("eTag".into(), Value::from(etag));
    s.seq += 1;
    let seq = s.seq;
    let doc = Value::Object(doc);
    s.referrals.insert(
        id,
        Stored {
            seq,
            doc: doc.clone(),
        },
    );
    referral_reply(201, &doc)
}

/// One `$filter` clause the fake understands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Clause {
    /// `updatedDateTime|createdDateTime ge|gt|le|lt <RFC 3339>`.
    Time {
        field: &'static str,
        op: String,
        at: i128,
    },
    /// `direction|status|substatus|type|qualification|externalReferenceId eq '<text>'`.
    Text { field: String, value: String },
}

impl Clause {
    fn holds(&self, doc: &Value) -> bool {
        match self {
            Self::Time { field, op, at } => {
                let t = time_nanos(doc, field);
                match op.as_str() {
                    "ge" => t >= *at,
                    "gt" => t > *at,
                    "le" => t <= *at,
                    _ => t < *at,
                }
            }
            Self::Text { field, value } => doc
                .get(field.as_str())
                .and_then(Value::as_str)
                .is_some_and(|v| v.eq_ignore_ascii_case(value)),
        }
    }
}

/// Parses clauses joined by `and`, with optional outer parentheses.
fn parse_filter(filter: &str) -> Option<Vec<Clause>> {
    let f = filter.trim();
    let f = f
        .strip_prefix('(')
        .and_then(|f| f.strip_suffix(')'))
        .unwrap_or(f);
    let mut clauses = Vec::new();
    for part in split_and(f) {
        let tokens: Vec<&str> = part.splitn(3, ' ').map(str::trim).collect();
        let clause = match tokens.as_slice() {
            [field, op, value]
                if matches!(*field, "updatedDateTime" | "createdDateTime")
                    && matches!(*op, "ge" | "gt" | "le" | "lt") =>
            {
                Clause::Time {
                    field: if *field == "updatedDateTime" {
                        "updatedDateTime"
                    } else {
                        "createdDateTime"
                    },
                    op: (*op).to_owned(),
                    at: parse_rfc3339(value)?,
                }
            }
            [field, "eq", value]
                if matches!(
                    *field,
                    "direction"
                        | "status"
                        | "substatus"
                        | "type"
                        | "qualification"
                        | "externalReferenceId"
                ) =>
            {
                let inner = value.strip_prefix('\'')?.strip_suffix('\'')?;
                if inner.replace("''", "").contains('\'') {
                    return None;
                }
                Clause::Text {
                    field: (*field).to_owned(),
                    value: inner.replace("''", "'"),
                }
            }
            _ => return None,
        };
        clauses.push(clause);
    }
    (!clauses.is_empty()).then_some(clauses)
}

/// Splits on ` and ` outside quotes.
fn split_and(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    for word in words {
        if !quoted && word.eq_ignore_ascii_case("and") {
            parts.push(String::new());
            continue;
        }
        let last = parts.last_mut().expect("at least one part");
        if !last.is_empty() {
            last.push(' ');
        }
        last.push_str(word);
        quoted ^= word.matches('\'').count() % 2 == 1;
    }
    parts
}

fn time_nanos(doc: &Value, field: &str) -> i128 {
    doc.get(field)
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
        .unwrap_or(i128::MIN)
}

fn list(s: &State, req: &Recorded, base: &str) -> Reply {
    let pairs = req.query_pairs();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let clauses = match get("$filter") {
        Some(f) => match parse_filter(f) {
            Some(c) => c,
            None => return pc_error(400, "BadRequest", &format!("Unsupported $filter '{f}'.")),
        },
        None => Vec::new(),
    };
    let order = match get("$orderby").map(str::trim) {
        None => None,
        Some(o) => {
            let words: Vec<&str> = o.split_whitespace().collect();
            let field = match words.first() {
                Some(&"updatedDateTime") => "updatedDateTime",
                Some(&"createdDateTime") => "createdDateTime",
                _ => {
                    return pc_error(400, "BadRequest", &format!("Unsupported $orderby '{o}'."));
                }
            };
            match words.get(1..) {
                Some([] | ["asc"]) => Some((field, false)),
                Some(["desc"]) => Some((field, true)),
                _ => {
                    return pc_error(400, "BadRequest", &format!("Unsupported $orderby '{o}'."));
                }
            }
        }
    };
    let top = match get("$top").map(str::parse::<usize>) {
        None => MAX_PAGE,
        Some(Ok(n)) if n > 0 => n.min(MAX_PAGE),
        Some(_) => return pc_error(400, "BadRequest", "Invalid $top."),
    };
    let skip = match get("$skiptoken").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return pc_error(400, "BadRequest", "Invalid $skiptoken."),
    };
    let mut items: Vec<&Stored> = s
        .referrals
        .values()
        .filter(|r| clauses.iter().all(|c| c.holds(&r.doc)))
        .collect();
    match order {
        None => items.sort_by_key(|r| r.seq),
        Some((field, desc)) => {
            items.sort_by_key(|r| (time_nanos(&r.doc, field), r.seq));
            if desc {
                items.reverse();
            }
        }
    }
    let total = items.len();
    let page: Vec<Value> = items
        .iter()
        .skip(skip)
        .take(top)
        .map(|r| r.doc.clone())
        .collect();
    let mut body = json!({ "@odata.count": total, "value": page });
    if skip + top < total {
        let link_base = s.next_link_base.as_deref().unwrap_or(base);
        let mut query: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k != "$skiptoken")
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        query.push(format!("$skiptoken={}", skip + top));
        body["@odata.nextLink"] =
            Value::String(format!("{link_base}{REFERRALS}?{}", query.join("&")));
    }
    Reply::json(200, &body)
}

fn encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Reads `key` from a JSON object case-insensitively.
fn get_ci<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn put_registration(s: &mut State, req: &Recorded, create: bool) -> Reply {
    match (&s.registration, create) {
        (Some(_), true) => {
            return pc_error(
                409,
                "Conflict",
                "Registration already exists, use the PUT method to update a registration.",
            );
        }
        (None, false) => return pc_error(404, "NotFound", "Registration not found."),
        _ => {}
    }
    let body = req.json();
    let Some(url) = get_ci(&body, "WebhookUrl").and_then(Value::as_str) else {
        return pc_error(400, "BadRequest", "WebhookUrl is required.");
    };
    let events: Option<Vec<String>> = get_ci(&body, "WebhookEvents")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|e| e.as_str().map(str::to_owned)).collect());
    let Some(events) = events else {
        return pc_error(
            400,
            "BadRequest",
            "WebhookEvents must be an array of strings.",
        );
    };
    let to_header = match get_ci(&body, "SignatureTokenToMsSignatureHeader") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return pc_error(
                400,
                "BadRequest",
                "SignatureTokenToMsSignatureHeader must be a boolean.",
            );
        }
    };
    let subscriber = s
        .registration
        .as_ref()
        .and_then(|r| get_ci(r, "SubscriberId"))
        .and_then(Value::as_str)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let registration = json!({
        "SubscriberId": subscriber,
        "WebhookUrl": url,
        "WebhookEvents": events,
        "SignatureTokenToMsSignatureHeader": to_header,
    });
    s.registration = Some(registration.clone());
    Reply::json(200, &registration)
}

fn create_validation_event(s: &mut State) -> Reply {
    let Some(reg) = &s.registration else {
        return pc_error(400, "BadRequest", "No webhook registration.");
    };
    let subscribed = get_ci(reg, "WebhookEvents")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|e| e.as_str() == Some("test-created")));
    if !subscribed {
        return pc_error(
            400,
            "BadRequest",
            "The registration is not subscribed to test-created.",
        );
    }
    let callback = get_ci(reg, "WebhookUrl").cloned().unwrap_or(Value::Null);
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_rfc3339();
    s.validation_events.insert(
        id.clone(),
        json!({
            "correlationId": id,
            "partnerId": "00000000-0000-0000-0000-000000000000",
            "status": "completed",
            "callbackUrl": callback,
            "results": [{
                "responseCode": "OK",
                "responseMessage": "",
                "systemError": false,
                "dateTimeUtc": now.trim_end_matches('Z'),
            }],
        }),
    );
    Reply::json(200, &json!({ "correlationId": id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_patch_add_and_replace() {
        let mut doc = json!({"status": "New", "details": {"dealValue": 1}, "team": []});
        apply_op(
            &mut doc,
            &json!({"op":"replace","path":"/status","value":"Active"}),
        )
        .expect("replace");
        apply_op(
            &mut doc,
            &json!({"op":"add","path":"/details/notes","value":"n"}),
        )
        .expect("add member");
        apply_op(
            &mut doc,
            &json!({"op":"add","path":"/team/-","value":{"a":1}}),
        )
        .expect("append");
        assert_eq!(
            doc,
            json!({"status":"Active","details":{"dealValue":1,"notes":"n"},"team":[{"a":1}]})
        );
        assert!(apply_op(&mut doc, &json!({"op":"replace","path":"/nope","value":1})).is_err());
        assert!(apply_op(&mut doc, &json!({"op":"remove","path":"/status"})).is_err());
        assert!(apply_op(&mut doc, &json!({"op":"add","path":"/x/y","value":1})).is_err());
    }

    #[test]
    fn filter_forms() {
        let one = parse_filter("updatedDateTime ge 2026-01-01T00:00:00Z").expect("ge");
        assert_eq!(one.len(), 1);
        let two = parse_filter(
            "updatedDateTime ge 2026-01-01T00:00:00Z and updatedDateTime le 2026-02-01T00:00:00Z",
        )
        .expect("range");
        assert_eq!(two.len(), 2);
        let outgoing =
            parse_filter("(direction eq 'Outgoing' and status eq 'Active')").expect("text clauses");
        let doc = json!({"direction": "outgoing", "status": "Active"});
        assert!(outgoing.iter().all(|c| c.holds(&doc)));
        assert!(!outgoing[0].holds(&json!({"direction": "Incoming"})));
        let quoted = parse_filter("externalReferenceId eq 'a and b'").expect("quoted and");
        assert_eq!(quoted.len(), 1);
        for bad in [
            "status eq New",
            "name eq 'x'",
            "direction ne 'Outgoing'",
            "updatedDateTime ge yesterday",
            "direction eq 'Outgoing' or status eq 'New'",
        ] {
            assert!(parse_filter(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn set_pointer_creates_members() {
        let mut doc = json!({"a": {}});
        set_pointer(&mut doc, "/a/b/c", json!(1)).expect("set");
        assert_eq!(doc, json!({"a": {"b": {"c": 1}}}));
    }
}
