//! Fake Dataverse Web API for the `lead` table: GET and upsert-PATCH by alternate key with the
//! real conditional-header semantics, `WhoAmI`, and the metadata calls needed to create the
//! key column and the alternate key (whose index goes Pending → InProgress → Active).

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Deref,
    sync::{Arc, Mutex},
};

use serde_json::{Map, Value, json};

use super::common::{FakeServer, Recorded, Reply, lock};

const API: &str = "/api/data/v9.2/";

/// Columns of `lead` that exist in a fresh organisation (the key column is not among them).
const STANDARD_COLUMNS: &[&str] = &[
    "leadid",
    "subject",
    "firstname",
    "lastname",
    "fullname",
    "companyname",
    "emailaddress1",
    "telephone1",
    "mobilephone",
    "jobtitle",
    "description",
    "budgetamount",
    "estimatedamount",
    "estimatedvalue",
    "estimatedclosedate",
    "leadsourcecode",
    "leadqualitycode",
    "statecode",
    "statuscode",
    "versionnumber",
    "createdon",
    "modifiedon",
    "ownerid",
    "transactioncurrencyid",
    "parentaccountid",
    "parentcontactid",
    "campaignid",
    "address1_line1",
    "address1_city",
    "address1_stateorprovince",
    "address1_postalcode",
    "address1_country",
    "websiteurl",
    "numberofemployees",
    "industrycode",
    "qualificationcomments",
];

#[derive(Debug, Clone)]
struct Lead {
    leadid: String,
    version: u64,
    statecode: i64,
    statuscode: i64,
    columns: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct EntityKey {
    logical_name: String,
    schema_name: String,
    attributes: Vec<String>,
    status: String,
    gets: usize,
}

impl EntityKey {
    /// Status reported after `gets` previous Keys reads, given `polls` reads to activation.
    fn shown(&self, polls: usize) -> String {
        if !matches!(self.status.as_str(), "Pending" | "InProgress") {
            self.status.clone()
        } else if self.gets >= polls {
            "Active".into()
        } else if self.gets == 0 {
            self.status.clone()
        } else {
            "InProgress".into()
        }
    }

    fn to_json(&self, polls: usize) -> Value {
        json!({
            "LogicalName": self.logical_name,
            "SchemaName": self.schema_name,
            "KeyAttributes": self.attributes,
            "EntityKeyIndexStatus": self.shown(polls),
        })
    }
}

#[derive(Debug)]
struct State {
    key_column: String,
    leads: BTreeMap<String, Lead>,
    write_count: usize,
    attributes: BTreeSet<String>,
    keys: Vec<EntityKey>,
    key_activation_polls: usize,
    enforce_schema: bool,
    who_am_i: Value,
}

impl State {
    fn lead_json(&self, key_value: &str, lead: &Lead) -> Value {
        let mut obj = Map::new();
        obj.insert("leadid".into(), json!(lead.leadid));
        obj.insert("statecode".into(), json!(lead.statecode));
        obj.insert("statuscode".into(), json!(lead.statuscode));
        obj.insert("versionnumber".into(), json!(lead.version));
        obj.extend(lead.columns.clone());
        obj.insert(self.key_column.clone(), json!(key_value));
        Value::Object(obj)
    }

    fn key_is_active(&self) -> bool {
        self.attributes.contains(&self.key_column)
            && self.keys.iter().any(|k| {
                k.attributes == [self.key_column.clone()]
                    && k.shown(self.key_activation_polls) == "Active"
            })
    }

    fn find_by_id(&self, id: &str) -> Option<String> {
        self.leads
            .iter()
            .find(|(_, l)| l.leadid.eq_ignore_ascii_case(id))
            .map(|(k, _)| k.clone())
    }
}

/// Fake Dataverse Web API (`/api/data/v9.2/...`) for `lead` rows addressed by one alternate key
/// column. Every request needs `Authorization: Bearer <non-empty>`.
#[derive(Debug)]
pub struct FakeDataverse {
    server: FakeServer,
    state: Arc<Mutex<State>>,
}

impl Deref for FakeDataverse {
    type Target = FakeServer;
    fn deref(&self) -> &FakeServer {
        &self.server
    }
}

impl FakeDataverse {
    /// Starts the fake over plain HTTP; `key_column` is the alternate key column accepted in
    /// `leads(<key_column>='…')` URLs (its metadata does not exist until created or
    /// [`with_key_column`](Self::with_key_column)).
    pub async fn start(key_column: &str) -> Self {
        Self::start_inner(key_column, None).await
    }

    /// Like [`start`](Self::start) but over HTTPS; `base_url` is `https://{host}:{port}`.
    pub async fn start_tls(
        key_column: &str,
        acceptor: tokio_native_tls::TlsAcceptor,
        host: &str,
    ) -> Self {
        Self::start_inner(key_column, Some((acceptor, host.to_owned()))).await
    }

    async fn start_inner(
        key_column: &str,
        tls: Option<(tokio_native_tls::TlsAcceptor, String)>,
    ) -> Self {
        let state = Arc::new(Mutex::new(State {
            key_column: key_column.to_owned(),
            leads: BTreeMap::new(),
            write_count: 0,
            attributes: STANDARD_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
            keys: Vec::new(),
            key_activation_polls: 2,
            enforce_schema: false,
            who_am_i: json!({
                "BusinessUnitId": uuid::Uuid::new_v4().to_string(),
                "UserId": uuid::Uuid::new_v4().to_string(),
                "OrganizationId": uuid::Uuid::new_v4().to_string(),
            }),
        }));
        let handler_state = state.clone();
        let server = FakeServer::start(
            Box::new(move |req, base| handle(&handler_state, req, base)),
            fault_body,
            tls,
        )
        .await;
        Self { server, state }
    }

    /// Builder form of [`set_schema`](Self::set_schema): `true` = key column exists and its
    /// alternate key is `Active`; `false` = neither exists.
    pub fn with_key_column(self, exists: bool) -> Self {
        self.set_schema(exists, exists.then_some("Active"));
        self
    }

    /// Sets whether the key column exists and the status of its alternate key (`None` = no key).
    /// A `Pending`/`InProgress` key progresses on Keys reads like a created one.
    pub fn set_schema(&self, column_exists: bool, key_status: Option<&str>) {
        let mut s = lock(&self.state);
        let col = s.key_column.clone();
        if column_exists {
            s.attributes.insert(col.clone());
        } else {
            s.attributes.remove(&col);
        }
        s.keys.retain(|k| !k.attributes.contains(&col));
        if let Some(status) = key_status {
            s.keys.push(EntityKey {
                logical_name: format!("{col}key"),
                schema_name: format!("{col}key"),
                attributes: vec![col],
                status: status.to_owned(),
                gets: 0,
            });
        }
    }

    /// Number of Keys reads after which a new key reports `Active` (default 2: Pending,
    /// InProgress, Active).
    pub fn set_key_activation_polls(&self, n: usize) {
        lock(&self.state).key_activation_polls = n;
    }

    /// When `true`, lead reads/writes fail with 400 unless the key column exists with an `Active`
    /// key, and writes fail for columns that do not exist (default `false`).
    pub fn set_enforce_schema(&self, enforce: bool) {
        lock(&self.state).enforce_schema = enforce;
    }

    /// Declares an extra `lead` column (e.g. a custom one the sync writes).
    pub fn add_column(&self, logical_name: &str) {
        lock(&self.state).attributes.insert(logical_name.to_owned());
    }

    /// Whether column `logical_name` exists.
    pub fn has_column(&self, logical_name: &str) -> bool {
        lock(&self.state).attributes.contains(logical_name)
    }

    /// Current index status of the alternate key on the key column (not counted as a read).
    pub fn key_status(&self) -> Option<String> {
        let s = lock(&self.state);
        s.keys
            .iter()
            .find(|k| k.attributes.contains(&s.key_column))
            .map(|k| k.shown(s.key_activation_polls))
    }

    /// The configured key column.
    pub fn key_column(&self) -> String {
        lock(&self.state).key_column.clone()
    }

    /// The ids `WhoAmI` returns.
    pub fn who_am_i(&self) -> Value {
        lock(&self.state).who_am_i.clone()
    }

    /// All leads (ordered by key value) as `{leadid, statecode, statuscode, versionnumber,
    /// <columns incl. key>}`.
    pub fn leads(&self) -> Vec<Value> {
        let s = lock(&self.state);
        s.leads.iter().map(|(k, l)| s.lead_json(k, l)).collect()
    }

    /// The lead with key `key_value`, shaped like [`leads`](Self::leads).
    pub fn lead(&self, key_value: &str) -> Option<Value> {
        let s = lock(&self.state);
        s.leads.get(key_value).map(|l| s.lead_json(key_value, l))
    }

    /// Creates an open lead (version 1) with `columns` (an object, or null); returns its leadid.
    /// Panics if the key already exists.
    pub fn insert_lead(&self, key_value: &str, columns: Value) -> String {
        let mut columns = match columns {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => panic!("insert_lead: columns must be an object, got {other}"),
        };
        let mut s = lock(&self.state);
        assert!(
            !s.leads.contains_key(key_value),
            "insert_lead: a lead with key {key_value} already exists"
        );
        columns.insert(s.key_column.clone(), json!(key_value));
        let leadid = uuid::Uuid::new_v4().to_string();
        s.leads.insert(
            key_value.to_owned(),
            Lead {
                leadid: leadid.clone(),
                version: 1,
                statecode: 0,
                statuscode: 1,
                columns,
            },
        );
        leadid
    }

    /// Sets state and status of a lead (e.g. 1/3 qualified, 2/4 disqualified); bumps its version.
    pub fn set_lead_state(&self, key_value: &str, statecode: i64, statuscode: i64) {
        let mut s = lock(&self.state);
        let lead = s
            .leads
            .get_mut(key_value)
            .unwrap_or_else(|| panic!("set_lead_state: no lead {key_value}"));
        lead.statecode = statecode;
        lead.statuscode = statuscode;
        lead.version += 1;
    }

    /// Simulates a CRM user edit of one column; bumps the version.
    pub fn set_lead_column(&self, key_value: &str, column: &str, value: Value) {
        let mut s = lock(&self.state);
        let lead = s
            .leads
            .get_mut(key_value)
            .unwrap_or_else(|| panic!("set_lead_column: no lead {key_value}"));
        lead.columns.insert(column.to_owned(), value);
        lead.version += 1;
    }

    /// Number of successful upsert PATCHes (creates and updates).
    pub fn write_count(&self) -> usize {
        lock(&self.state).write_count
    }
}

fn dv_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

fn fault_body(status: u16, _retry_after: Option<u64>) -> String {
    let (code, message) = match status {
        429 => (
            "0x80072322",
            "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
                .to_owned(),
        ),
        _ => ("0x80040216", format!("Injected fault (HTTP {status})")),
    };
    json!({ "error": { "code": code, "message": message } }).to_string()
}

fn not_found_record() -> Reply {
    dv_error(
        404,
        "0x80060891",
        "A record with the specified key values does not exist in lead entity",
    )
}

fn invalid_key() -> Reply {
    dv_error(
        400,
        "0x80060888",
        "The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.lead'.",
    )
}

/// Parses a single-quoted OData string literal (`''` escapes a quote).
fn parse_quoted(s: &str) -> Option<String> {
    let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// Formats a value as a single-quoted OData string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// How a request addresses a lead.
enum Target {
    Key(String, String),
    Id(String),
}

fn parse_target(inner: &str) -> Option<Target> {
    match inner.split_once('=') {
        Some((key, value)) => Some(Target::Key(
            key.trim().to_owned(),
            parse_quoted(value.trim())?,
        )),
        None => uuid::Uuid::parse_str(inner.trim())
            .ok()
            .map(|u| Target::Id(u.to_string())),
    }
}

fn handle(state: &Mutex<State>, req: &Recorded, base: &str) -> Reply {
    if req.bearer().is_none() {
        return dv_error(401, "0x80072560", "Bearer token required.")
            .header("www-authenticate", "Bearer");
    }
    let path = req.decoded_path();
    let Some(rest) = path.strip_prefix(API) else {
        return dv_error(404, "0x80060888", "Resource not found for the segment.");
    };
    let rest = rest.trim_end_matches('/');
    let mut s = lock(state);
    if rest == "WhoAmI" || rest == "WhoAmI()" {
        return Reply::json(200, &s.who_am_i);
    }
    if let Some(inner) = rest
        .strip_prefix("leads(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let Some(target) = parse_target(inner) else {
            return invalid_key();
        };
        return match req.method.as_str() {
            "GET" => get_lead(&s, req, base, &target),
            "PATCH" => upsert_lead(&mut s, req, base, &target),
            _ => dv_error(405, "0x80060888", "Method not allowed."),
        };
    }
    if let Some(meta) = rest.strip_prefix("EntityDefinitions(") {
        return metadata(&mut s, req, base, meta);
    }
    dv_error(404, "0x80060888", "Resource not found for the segment.")
}

fn select_list(req: &Recorded) -> Option<Vec<String>> {
    req.query_value("$select").map(|s| {
        s.split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    })
}

fn representation(lead: &Lead, select: Option<&[String]>, base: &str) -> Value {
    let mut obj = Map::new();
    let sel = select.map(|c| c.join(",")).unwrap_or_default();
    obj.insert(
        "@odata.context".into(),
        json!(format!("{base}{API}$metadata#leads({sel})/$entity")),
    );
    obj.insert(
        "@odata.etag".into(),
        json!(format!("W/\"{}\"", lead.version)),
    );
    obj.insert("leadid".into(), json!(lead.leadid));
    obj.insert("statecode".into(), json!(lead.statecode));
    obj.insert("statuscode".into(), json!(lead.statuscode));
    match select {
        Some(cols) => {
            for c in cols {
                let v = match c.as_str() {
                    "leadid" | "statecode" | "statuscode" => continue,
                    "versionnumber" => json!(lead.version),
                    other => lead.columns.get(other).cloned().unwrap_or(Value::Null),
                };
                obj.insert(c.clone(), v);
            }
        }
        None => {
            obj.insert("versionnumber".into(), json!(lead.version));
            obj.extend(lead.columns.clone());
        }
    }
    Value::Object(obj)
}

/// Resolves the target to a key value; `Ok(None)` = addressed correctly but missing.
fn resolve(s: &State, target: &Target) -> Result<Option<String>, Reply> {
    match target {
        Target::Key(key, value) => {
            if *key != s.key_column || (s.enforce_schema && !s.key_is_active()) {
                return Err(invalid_key());
            }
            Ok(s.leads.contains_key(value).then(|| value.clone()))
        }
        Target::Id(id) => Ok(s.find_by_id(id)),
    }
}

fn get_lead(s: &State, req: &Recorded, base: &str, target: &Target) -> Reply {
    let key = match resolve(s, target) {
        Ok(Some(k)) => k,
        Ok(None) => return not_found_record(),
        Err(reply) => return reply,
    };
    let lead = &s.leads[&key];
    let select = select_list(req);
    Reply::json(200, &representation(lead, select.as_deref(), base))
        .header("etag", format!("W/\"{}\"", lead.version))
        .header("odata-version", "4.0")
}

fn etag_version(tag: &str) -> Option<u64> {
    let tag = tag.trim();
    tag.strip_prefix("W/")
        .unwrap_or(tag)
        .trim_matches('"')
        .parse()
        .ok()
}

fn upsert_lead(s: &mut State, req: &Recorded, base: &str, target: &Target) -> Reply {
    let existing = match resolve(s, target) {
        Ok(k) => k,
        Err(reply) => return reply,
    };
    let Value::Object(body) = req.json() else {
        return dv_error(
            400,
            "0x80048d19",
            "Error identified in Payload provided by the user for Entity :'leads'.",
        );
    };
    if let Some(bad) = ["statecode", "statuscode", "leadid", "versionnumber"]
        .iter()
        .find(|k| body.contains_key(**k))
    {
        return dv_error(
            400,
            "0x80048d19",
            &format!("The property '{bad}' cannot be set through an upsert of lead."),
        );
    }
    if s.enforce_schema
        && let Some(unknown) = body.keys().find(|k| {
            let name = k.strip_suffix("@odata.bind").unwrap_or(k);
            !s.attributes.contains(name)
        })
    {
        return dv_error(
            400,
            "0x80060888",
            &format!(
                "Could not find a property named '{unknown}' on type 'Microsoft.Dynamics.CRM.lead'."
            ),
        );
    }
    // Conditional headers.
    if let Some(if_match) = req.header("if-match") {
        let Some(key) = &existing else {
            return not_found_record();
        };
        if if_match.trim() != "*" && etag_version(if_match) != Some(s.leads[key].version) {
            return dv_error(
                412,
                "0x80060882",
                "The version of the existing record doesn't match the RowVersion property provided.",
            );
        }
    }
    if req.header("if-none-match").map(str::trim) == Some("*") && existing.is_some() {
        return dv_error(
            412,
            "0x80040237",
            "A record with matching key values already exists.",
        );
    }
    let key_column = s.key_column.clone();
    let (key, created) = match existing {
        Some(key) => {
            let lead = s.leads.get_mut(&key).expect("resolved key exists");
            if lead.statecode != 0 {
                return dv_error(
                    400,
                    "0x8004f04a",
                    "This lead is read-only because it has been qualified or disqualified. Reactivate it to edit.",
                );
            }
            for (k, v) in body {
                if k != key_column {
                    lead.columns.insert(k, v);
                }
            }
            lead.version += 1;
            (key, false)
        }
        None => {
            let Target::Key(_, value) = target else {
                return not_found_record();
            };
            let mut columns = body;
            columns.insert(key_column.clone(), json!(value));
            s.leads.insert(
                value.clone(),
                Lead {
                    leadid: uuid::Uuid::new_v4().to_string(),
                    version: 1,
                    statecode: 0,
                    statuscode: 1,
                    columns,
                },
            );
            (value.clone(), true)
        }
    };
    s.write_count += 1;
    let lead = &s.leads[&key];
    let etag = format!("W/\"{}\"", lead.version);
    let wants_body = req
        .header("prefer")
        .is_some_and(|p| p.contains("return=representation"));
    if wants_body {
        let select = select_list(req);
        Reply::json(
            if created { 201 } else { 200 },
            &representation(lead, select.as_deref(), base),
        )
        .header("etag", etag)
        .header("odata-version", "4.0")
    } else {
        Reply::empty(204)
            .header("etag", etag)
            .header("odata-version", "4.0")
            .header(
                "odata-entityid",
                format!("{base}{API}leads({key_column}={})", quote(&key)),
            )
    }
}

fn metadata(s: &mut State, req: &Recorded, base: &str, meta: &str) -> Reply {
    let Some((entity, tail)) = meta.split_once(')') else {
        return dv_error(400, "0x80060888", "Bad EntityDefinitions segment.");
    };
    let logical = entity
        .strip_prefix("LogicalName=")
        .and_then(parse_quoted)
        .unwrap_or_default();
    if logical != "lead" {
        return dv_error(
            404,
            "0x80040217",
            &format!("Could not find entity '{logical}'"),
        );
    }
    let entity_url = format!("{base}{API}EntityDefinitions(LogicalName='lead')");
    let polls = s.key_activation_polls;
    match (req.method.as_str(), tail) {
        ("GET", "") => {
            let mut body = json!({ "LogicalName": "lead", "EntitySetName": "leads" });
            if req
                .query_value("$expand")
                .is_some_and(|e| e.contains("Keys"))
            {
                body["Keys"] = Value::Array(read_keys(s, polls));
            }
            Reply::json(200, &body)
        }
        ("GET", "/Keys") => Reply::json(
            200,
            &json!({
                "@odata.context": format!("{base}{API}$metadata#EntityDefinitions('lead')/Keys"),
                "value": read_keys(s, polls),
            }),
        ),
        ("POST", "/Keys") => create_key(s, req, &entity_url),
        ("POST", "/Attributes") => create_attribute(s, req, &entity_url),
        ("GET", t) => {
            let col = t
                .strip_prefix("/Attributes(LogicalName=")
                .and_then(|c| c.strip_suffix(')'))
                .and_then(parse_quoted);
            match col {
                Some(col) if s.attributes.contains(&col) => {
                    Reply::json(200, &json!({ "LogicalName": col }))
                }
                Some(_) => dv_error(404, "0x80040217", "Could not find attribute"),
                None => dv_error(404, "0x80060888", "Resource not found for the segment."),
            }
        }
        _ => dv_error(405, "0x80060888", "Method not allowed."),
    }
}

fn read_keys(s: &mut State, polls: usize) -> Vec<Value> {
    s.keys
        .iter_mut()
        .map(|k| {
            let v = k.to_json(polls);
            k.gets += 1;
            v
        })
        .collect()
}

fn create_attribute(s: &mut State, req: &Recorded, entity_url: &str) -> Reply {
    let body = req.json();
    let Some(schema) = body.get("SchemaName").and_then(Value::as_str) else {
        return dv_error(400, "0x80048d19", "SchemaName is required.");
    };
    let logical = schema.to_ascii_lowercase();
    if s.attributes.contains(&logical) {
        return dv_error(
            400,
            "0x80044363",
            &format!("An attribute with the name {logical} already exists on entity lead."),
        );
    }
    s.attributes.insert(logical);
    Reply::empty(204).header(
        "odata-entityid",
        format!("{entity_url}/Attributes({})", uuid::Uuid::new_v4()),
    )
}

fn create_key(s: &mut State, req: &Recorded, entity_url: &str) -> Reply {
    let body = req.json();
    let Some(schema) = body.get("SchemaName").and_then(Value::as_str) else {
        return dv_error(400, "0x80048d19", "SchemaName is required.");
    };
    let attributes: Option<Vec<String>> = body
        .get("KeyAttributes")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect());
    let Some(attributes) = attributes.filter(|a| !a.is_empty()) else {
        return dv_error(
            400,
            "0x80048d19",
            "KeyAttributes must be a non-empty array.",
        );
    };
    if let Some(missing) = attributes.iter().find(|a| !s.attributes.contains(*a)) {
        return dv_error(
            400,
            "0x80040217",
            &format!("Could not find attribute {missing} on entity lead."),
        );
    }
    let logical = schema.to_ascii_lowercase();
    if s.keys
        .iter()
        .any(|k| k.logical_name == logical || k.attributes == attributes)
    {
        return dv_error(
            400,
            "0x80060886",
            "An entity key with the same name or attributes already exists.",
        );
    }
    s.keys.push(EntityKey {
        logical_name: logical,
        schema_name: schema.to_owned(),
        attributes,
        status: "Pending".into(),
        gets: 0,
    });
    Reply::empty(204).header(
        "odata-entityid",
        format!("{entity_url}/Keys({})", uuid::Uuid::new_v4()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_literals() {
        assert_eq!(parse_quoted("'abc'").as_deref(), Some("abc"));
        assert_eq!(parse_quoted("'O''Brien'").as_deref(), Some("O'Brien"));
        assert_eq!(parse_quoted("''").as_deref(), Some(""));
        assert_eq!(parse_quoted("abc"), None);
        assert_eq!(parse_quoted("'a'b'"), None);
        assert_eq!(quote("O'Brien"), "'O''Brien'");
    }

    #[test]
    fn key_progression() {
        let mut k = EntityKey {
            logical_name: "k".into(),
            schema_name: "k".into(),
            attributes: vec!["c".into()],
            status: "Pending".into(),
            gets: 0,
        };
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(k.shown(2));
            k.gets += 1;
        }
        assert_eq!(seen, ["Pending", "InProgress", "Active", "Active"]);
        k.status = "Failed".into();
        assert_eq!(k.shown(2), "Failed");
    }
}
