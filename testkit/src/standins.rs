//! The local run without Azure Functions Core Tools: the handler under the host emulation
//! ([`crate::host_emulation`]) over a real Azurite, with an HTTP front like `func start`'s
//! (`POST /api/ReferralWebhook`). When no tenant is configured it also starts local stand-ins
//! of Entra, Partner Center, the CRM (Dataverse, or Salesforce with [`CrmStandIn::Salesforce`])
//! and the certificate host (with a signing chain made here), points the handler at them and
//! can run a scripted tour: a signed callback becomes a lead and patches its referral, a replay
//! writes nothing, a forged callback gets 401, and an opportunity shared from the CRM becomes
//! one referral on the next poll.
//!
//! Used by `scripts/dev.sh` (through the `standins` program) and by the end-to-end test.

use std::{
    collections::HashMap,
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::{Value, json};
use warp::{Filter, http::Response};

use crate::{
    azurite::Azurite,
    cert_world::CertWorld,
    fakes::REFERRAL_ID_FIELD,
    host::{callback_body, http_envelope},
    host_emulation::{FakeHost, FunctionApp, Handler, resolve, schedule_period},
    sync_world::{
        KEY_COLUMN, SyncWorld, referral, shared_opportunity, shared_salesforce_opportunity,
    },
};

/// How the CrmChanges timer runs against the stand-ins (the app's default is every minute).
pub const TOUR_POLL_SCHEDULE: &str = "*/5 * * * * *";
/// The longest the tour waits for one step before it fails.
const STEP_LIMIT: Duration = Duration::from_secs(90);

/// The CRM the handler syncs with when the stand-ins run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrmStandIn {
    /// The Dataverse stand-in (`CRM=dataverse`, the default).
    #[default]
    Dataverse,
    /// The Salesforce stand-in (`CRM=salesforce`).
    Salesforce,
}

impl CrmStandIn {
    /// The values [`CrmStandIn::parse`] accepts, for messages.
    pub const NAMES: &'static str = "dataverse or salesforce";

    /// `dataverse` or `salesforce` (the values of the `CRM` setting), any case.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "dataverse" => Some(Self::Dataverse),
            "salesforce" => Some(Self::Salesforce),
            _ => None,
        }
    }

    /// The CRM of `settings` (`CRM`; Dataverse when unset or not a known value).
    pub fn of(settings: &HashMap<String, String>) -> Self {
        settings
            .get("CRM")
            .and_then(|v| Self::parse(v))
            .unwrap_or_default()
    }

    /// The value of the `CRM` setting.
    pub fn setting(self) -> &'static str {
        match self {
            Self::Dataverse => "dataverse",
            Self::Salesforce => "salesforce",
        }
    }

    /// The product's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dataverse => "Dataverse",
            Self::Salesforce => "Salesforce",
        }
    }

    /// The setting that names the user's CRM (empty: no tenant).
    fn url_setting(self) -> &'static str {
        match self {
            Self::Dataverse => "DATAVERSE_URL",
            Self::Salesforce => "SALESFORCE_URL",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The handler binary (the release build).
    pub handler: String,
    /// The function app root (host.json and the function folders).
    pub app_root: PathBuf,
    /// The app settings (local.settings.json `Values` with the environment over them).
    pub settings: HashMap<String, String>,
    /// Port of the HTTP front (`func start` uses 7071; 0 picks a free one).
    pub port: u16,
    /// Where the handler's stdout goes.
    pub handler_log: PathBuf,
    /// The CRM stand-in to start and point the handler at (with the stand-ins).
    pub crm: CrmStandIn,
}

/// Why no tenant is configured, or `None` when one is: the Partner Center refresh token
/// (written by `login`) or the URL of `crm` (`DATAVERSE_URL`, `SALESFORCE_URL`) is empty.
pub fn missing_tenant(settings: &HashMap<String, String>, crm: CrmStandIn) -> Option<String> {
    let empty: Vec<&str> = ["PARTNER_CENTER_REFRESH_TOKEN", crm.url_setting()]
        .into_iter()
        .filter(|name| settings.get(*name).is_none_or(|v| v.trim().is_empty()))
        .collect();
    (!empty.is_empty()).then(|| format!("{} empty", empty.join(" and ")))
}

/// Reads local.settings.json's `Values` (missing file: none) and lays the environment's
/// values of the same names, and of the connector's own settings, over them.
pub fn load_settings(file: &Path) -> HashMap<String, String> {
    let mut settings: HashMap<String, String> = std::fs::read_to_string(file)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|v| v["Values"].as_object().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
        .collect();
    const PREFIXES: [&str; 9] = [
        "PARTNER_CENTER_",
        "DATAVERSE_",
        "SALESFORCE_",
        "AZURE_",
        "SYNC_",
        "CRM_",
        "WEBHOOK_",
        "REFERRAL_",
        "SSL_CERT_",
    ];
    for (name, value) in std::env::vars() {
        if settings.contains_key(&name) || PREFIXES.iter().any(|p| name.starts_with(p)) {
            settings.insert(name, value);
        }
    }
    settings
}

/// The local stand-ins of every Microsoft service and the CRM, and the files that make them
/// trusted.
pub struct StandIns {
    /// Entra, Partner Center and the CRMs (the handler uses the one of [`StandIns::crm`]).
    pub sync: SyncWorld,
    /// The CRM the handler is pointed at.
    pub crm: CrmStandIn,
    /// The certificate host and the signing chain.
    pub certs: CertWorld,
    _trust: tempfile::NamedTempFile,
}

/// Fields of a Salesforce record that every record has and that say nothing about the sync.
const SALESFORCE_SYSTEM_FIELDS: [&str; 9] = [
    "attributes",
    "CreatedById",
    "CreatedDate",
    "LastModifiedById",
    "LastModifiedDate",
    "SystemModstamp",
    "IsDeleted",
    "IsConverted",
    "OwnerId",
];

/// How far in the past the tour plants the seller's Salesforce opportunity: the change poll
/// leaves rows of Salesforce's current second to a later run.
const SALESFORCE_SAVED_AGO: time::Duration = time::Duration::seconds(5);

impl StandIns {
    /// The CRM stand-in's base URL.
    pub fn crm_url(&self) -> String {
        match self.crm {
            CrmStandIn::Dataverse => self.sync.dataverse.base_url(),
            CrmStandIn::Salesforce => self.sync.salesforce.base_url(),
        }
    }

    /// How the CRM calls a lead (Dataverse's table `lead`, Salesforce's object `Lead`).
    pub fn lead_word(&self) -> &'static str {
        match self.crm {
            CrmStandIn::Dataverse => "lead",
            CrmStandIn::Salesforce => "Lead",
        }
    }

    /// The column or field holding the referral id.
    pub fn key_field(&self) -> &'static str {
        match self.crm {
            CrmStandIn::Dataverse => KEY_COLUMN,
            CrmStandIn::Salesforce => REFERRAL_ID_FIELD,
        }
    }

    /// The column or field holding the record's sync status.
    fn status_field(&self) -> &'static str {
        match self.crm {
            CrmStandIn::Dataverse => "new_partnercentersyncstatus",
            CrmStandIn::Salesforce => "Partner_Center_Sync_Status__c",
        }
    }

    /// Every lead in the CRM stand-in.
    pub fn leads(&self) -> Vec<Value> {
        match self.crm {
            CrmStandIn::Dataverse => self.sync.dataverse.leads(),
            CrmStandIn::Salesforce => self.sync.salesforce.records("Lead"),
        }
    }

    /// The lead of referral `referral_id`.
    pub fn lead(&self, referral_id: &str) -> Option<Value> {
        match self.crm {
            CrmStandIn::Dataverse => self.sync.dataverse.lead(referral_id),
            CrmStandIn::Salesforce => self
                .sync
                .salesforce
                .find_by_referral_id("Lead", referral_id)
                .into_iter()
                .next(),
        }
    }

    /// The record id of `lead` (`leadid`, `Id`).
    pub fn lead_id(&self, lead: &Value) -> String {
        let field = match self.crm {
            CrmStandIn::Dataverse => "leadid",
            CrmStandIn::Salesforce => "Id",
        };
        lead[field].as_str().unwrap_or_default().to_owned()
    }

    /// The opportunity `id`.
    pub fn opportunity(&self, id: &str) -> Option<Value> {
        match self.crm {
            CrmStandIn::Dataverse => self.sync.dataverse.opportunity_by_id(id),
            CrmStandIn::Salesforce => self.sync.salesforce.get(id),
        }
    }

    /// Writes through the CRM's API so far.
    pub fn crm_writes(&self) -> usize {
        match self.crm {
            CrmStandIn::Dataverse => self.sync.dataverse.write_count(),
            CrmStandIn::Salesforce => self.sync.salesforce.write_count(),
        }
    }

    /// A seller's opportunity for `customer`, marked "Sync with Partner Center"; its id.
    pub fn share_opportunity(&self, customer: &str) -> String {
        match self.crm {
            CrmStandIn::Dataverse => shared_opportunity(&self.sync.dataverse, customer),
            CrmStandIn::Salesforce => {
                let sf = &self.sync.salesforce;
                let id = shared_salesforce_opportunity(sf, customer);
                let saved = time::OffsetDateTime::now_utc() - SALESFORCE_SAVED_AGO;
                if let Ok(stamp) = saved.format(&time::format_description::well_known::Rfc3339) {
                    sf.set_system_modstamp(&id, &stamp);
                }
                id
            }
        }
    }

    /// Fields of a record worth showing: set, not OData annotations, lookups or system fields.
    fn columns(&self, record: &Value) -> String {
        let hidden = |k: &str| match self.crm {
            CrmStandIn::Dataverse => k.contains('@') || k.starts_with('_'),
            CrmStandIn::Salesforce => SALESFORCE_SYSTEM_FIELDS.contains(&k),
        };
        record
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, v)| !hidden(k) && !v.is_null() && v != &&json!(""))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    }
}

/// Everything that runs; dropping it stops the handler and Azurite.
pub struct Running {
    /// The stand-ins, when no tenant is configured.
    pub standins: Option<Arc<StandIns>>,
    /// The emulated host.
    pub host: Arc<FakeHost>,
    /// The handler process.
    pub handler: Arc<Handler>,
    /// `http://127.0.0.1:<port>` of the HTTP front.
    pub front: String,
    /// The timers and their periods.
    pub timers: Vec<(String, Duration)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _azurite: Azurite,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts Azurite, the stand-ins (when `with_standins`), the handler, the host emulation
/// (queue trigger and timers) and the HTTP front.
pub async fn start(options: &Options, with_standins: bool) -> Running {
    let azurite = tokio::task::spawn_blocking(Azurite::start)
        .await
        .expect("azurite");
    let app = FunctionApp::load(&options.app_root);
    let mut envs = options.settings.clone();
    let standins = if with_standins {
        let sync = SyncWorld::start().await;
        let certs = CertWorld::start().await;
        let mut trust = tempfile::NamedTempFile::new().expect("temp file");
        for pem in [sync.root_pem(), certs.pki.root.cert_pem()] {
            trust.write_all(&pem).expect("write bundle");
            trust.write_all(b"\n").expect("write bundle");
        }
        match options.crm {
            CrmStandIn::Dataverse => {
                sync.dataverse.set_schema(true, Some("Active"));
                envs.extend(sync.vars());
            }
            CrmStandIn::Salesforce => envs.extend(sync.salesforce_vars()),
        }
        envs.insert("CRM".into(), options.crm.setting().into());
        envs.extend(certs.vars());
        envs.insert("SSL_CERT_FILE".into(), trust.path().display().to_string());
        envs.insert("CRM_POLL_SCHEDULE".into(), TOUR_POLL_SCHEDULE.into());
        Some(Arc::new(StandIns {
            sync,
            crm: options.crm,
            certs,
            _trust: trust,
        }))
    } else {
        None
    };
    let options_queue = app.queue_options();
    envs.insert("FUNCTIONS_WORKER_RUNTIME".into(), "custom".into());
    envs.insert("AzureWebJobsStorage".into(), azurite.connection_string());
    envs.insert(
        "SYNC_MAX_DEQUEUE_COUNT".into(),
        options_queue.max_dequeue_count.to_string(),
    );
    let defaults = HashMap::from([
        ("CrmChanges", "0 */1 * * * *"),
        ("ReferralReconcile", "0 30 3 * * *"),
    ]);
    let timers: Vec<(String, Duration)> = app
        .timers()
        .into_iter()
        .map(|(name, schedule)| {
            let mut text = resolve(&schedule, &envs);
            if text.trim().is_empty() {
                text = defaults
                    .get(name.as_str())
                    .copied()
                    .unwrap_or("")
                    .to_owned();
            }
            let period = schedule_period(&text).unwrap_or(Duration::from_secs(60));
            (name, period)
        })
        .collect();
    let retry_visibility = app.host["extensions"]["queues"]["visibilityTimeout"]
        .as_str()
        .and_then(|t| {
            let parts: Vec<u32> = t.split(':').filter_map(|p| p.parse().ok()).collect();
            (parts.len() == 3).then(|| parts[0] * 3600 + parts[1] * 60 + parts[2])
        })
        .unwrap_or(30);
    if let Some(dir) = options.handler_log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let log = File::create(&options.handler_log).ok();
    let handler = Arc::new(Handler::spawn(&options.handler, &[], &envs, log).await);
    let host = Arc::new(FakeHost::new(&azurite, app, retry_visibility).await);
    let mut tasks = vec![host.serve_queue(handler.clone())];
    for (name, period) in &timers {
        tasks.push(host.serve_timer(handler.clone(), name.clone(), *period));
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
        .await
        .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{}: {e}", options.port));
    let front = format!(
        "http://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let routes = front_routes(host.clone(), handler.clone(), standins.clone());
    tasks.push(tokio::spawn(warp::serve(routes).incoming(listener).run()));
    Running {
        standins,
        host,
        handler,
        front,
        timers,
        tasks,
        _azurite: azurite,
    }
}

/// A Partner Center callback as the host hands it over: the envelope of `body` with `headers`
/// through ReferralWebhook. Returns the whole answer (with `Outputs.res` and `syncQueue`).
async fn deliver(
    host: &FakeHost,
    handler: &Handler,
    body: &str,
    mut headers: Vec<(String, String)>,
) -> Value {
    headers.push(("Content-Length".into(), body.len().to_string()));
    host.webhook_answer(handler, http_envelope(Some(body), &headers))
        .await
}

/// A signed `referral-created` callback for `id`, delivered.
async fn signed_callback(
    host: &FakeHost,
    handler: &Handler,
    standins: &StandIns,
    id: &str,
) -> Value {
    let body = callback_body("referral-created", id);
    let certs = &standins.certs;
    let headers = certs.signed_headers(body.as_bytes(), &certs.pki.leaf, "leaf.cer");
    deliver(host, handler, &body, headers).await
}

/// A new incoming referral for customer `name` in the Partner Center stand-in; its id.
pub fn new_referral(standins: &StandIns, name: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let mut doc = referral(&id);
    doc["name"] = json!(format!("{name} cloud migration"));
    doc["customerProfile"]["name"] = json!(name);
    standins.sync.partner_center.insert_referral(doc);
    id
}

fn front_routes(
    host: Arc<FakeHost>,
    handler: Arc<Handler>,
    standins: Option<Arc<StandIns>>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    let (h1, s1) = (host.clone(), handler.clone());
    let webhook = warp::post()
        .and(warp::path!("api" / "ReferralWebhook"))
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(move |headers: warp::http::HeaderMap, body: Bytes| {
            let (host, handler) = (h1.clone(), s1.clone());
            async move {
                let headers: Vec<(String, String)> = headers
                    .iter()
                    .filter(|(k, _)| *k != "content-length" && *k != "host")
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                let body = String::from_utf8_lossy(&body).into_owned();
                let answer = deliver(&host, &handler, &body, headers).await;
                let res = &answer["Outputs"]["res"];
                Response::builder()
                    .status(res["statusCode"].as_u64().unwrap_or(500) as u16)
                    .header("Content-Type", "application/json")
                    .body(res["body"].as_str().unwrap_or_default().to_owned().into())
                    .expect("response")
            }
        });
    let demo = warp::post()
        .and(warp::path!("demo" / "referral"))
        .and(warp::query::<HashMap<String, String>>())
        .then(move |query: HashMap<String, String>| {
            let (host, handler, standins) = (host.clone(), handler.clone(), standins.clone());
            async move {
                let Some(standins) = standins else {
                    return Response::builder()
                        .status(404)
                        .body("the demo needs the stand-ins (no tenant configured)".into())
                        .expect("response");
                };
                let name = query
                    .get("name")
                    .cloned()
                    .unwrap_or_else(|| "Contoso".into());
                let id = new_referral(&standins, &name);
                let answer = signed_callback(&host, &handler, &standins, &id).await;
                let res = &answer["Outputs"]["res"];
                let pc = &standins.sync.partner_center;
                let lead = wait_for("the lead", || {
                    standins.lead(&id).filter(|_| {
                        pc.referral(&id)
                            .is_some_and(|r| r["externalReferenceId"] != "")
                    })
                })
                .await
                .unwrap_or_else(|e| json!(e));
                let reply = json!({"referralId": id, "status": res["statusCode"],
                                   "answer": res["body"], "crm": standins.crm.name(), "lead": lead,
                                   "referral": pc.referral(&id)});
                Response::builder()
                    .header("Content-Type", "application/json")
                    .body(reply.to_string().into())
                    .expect("response")
            }
        });
    webhook
        .or(demo)
        .unify()
        .recover(|_| async {
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(404)
                    .body("POST /api/ReferralWebhook or /demo/referral?name=…".into())
                    .expect("response"),
            )
        })
        .unify()
}

/// Waits until `check` gives a value, at most [`STEP_LIMIT`].
async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T, String> {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if started.elapsed() > STEP_LIMIT {
            return Err(format!("gave up waiting for {what} after {STEP_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stand-ins' state at the end of the tour.
#[derive(Debug, Clone)]
pub struct TourOutcome {
    /// The incoming referral's id.
    pub referral_id: String,
    /// The lead's id.
    pub lead_id: String,
    /// The opportunity shared from the CRM.
    pub opportunity_id: String,
    /// The referral created for it.
    pub shared_referral_id: String,
}

/// Runs the scripted tour against the stand-ins, printing each step through `say`.
pub async fn tour(running: &Running, say: &(dyn Fn(String) + Sync)) -> Result<TourOutcome, String> {
    let standins = running
        .standins
        .as_ref()
        .ok_or("the tour runs only against the stand-ins (no tenant configured)")?;
    let (host, handler) = (&running.host, &running.handler);
    let pc = &standins.sync.partner_center;
    let (crm, lead_word) = (standins.crm.name(), standins.lead_word());

    let id = new_referral(standins, "Fabrikam");
    say(format!(
        "1. Partner Center sends a signed referral-created callback for referral {id} (\"Fabrikam cloud migration\")"
    ));
    let first = host.deliveries().len();
    let answer = signed_callback(host, handler, standins, &id).await;
    let res = &answer["Outputs"]["res"];
    if res["statusCode"] != 200 {
        return Err(format!("the signed callback was refused: {res}"));
    }
    say(format!(
        "   verified: certificate chain to the local test root, O=Microsoft Corporation, RSA-SHA256 over the body → {} {}",
        res["statusCode"],
        res["body"].as_str().unwrap_or_default()
    ));
    say(format!(
        "   queued on referral-sync: {}",
        answer["Outputs"]["syncQueue"]
    ));
    let lead = wait_for("the lead", || {
        standins.lead(&id).filter(|_| {
            pc.referral(&id)
                .is_some_and(|r| r["externalReferenceId"] != "")
        })
    })
    .await?;
    let lead_id = standins.lead_id(&lead);
    // The delivery is booked once the handler has answered, after its last write: the replay
    // below must be told apart from it.
    wait_for("the first delivery", || {
        host.deliveries().get(first).cloned()
    })
    .await?;
    say(format!(
        "   ReferralSync: {lead_word} created in the {crm} stand-in: {}",
        standins.columns(&lead)
    ));
    let patched = pc.referral(&id).unwrap_or_default();
    say(format!(
        "   the referral patched: externalReferenceId={}, status={}/{} ({} PATCH)",
        patched["externalReferenceId"],
        patched["status"],
        patched["substatus"],
        pc.patch_count(&id)
    ));

    say("2. the same callback again".to_owned());
    let (writes, patches) = (standins.crm_writes(), pc.patch_count(&id));
    let before = host.deliveries().len();
    let answer = signed_callback(host, handler, standins, &id).await;
    say(format!(
        "   verified and queued again → {}",
        answer["Outputs"]["res"]["body"]
            .as_str()
            .unwrap_or_default()
    ));
    let delivery = wait_for("the second delivery", || {
        host.deliveries().get(before).cloned()
    })
    .await?;
    let log = delivery.answer["Logs"][0].as_str().unwrap_or_default();
    if standins.crm_writes() != writes || pc.patch_count(&id) != patches {
        return Err(format!("the replay wrote something: {log}"));
    }
    say(format!(
        "   ReferralSync read both sides: nothing written ({crm} writes {writes} → {}, referral patches {patches} → {}): {log}",
        standins.crm_writes(),
        pc.patch_count(&id)
    ));

    say("3. a forged callback (the body changed after signing)".to_owned());
    let body = callback_body("referral-created", &id);
    let certs = &standins.certs;
    let headers = certs.signed_headers(body.as_bytes(), &certs.pki.leaf, "leaf.cer");
    let forged = body.replace("referral-created", "referral-updated");
    let answer = deliver(host, handler, &forged, headers).await;
    let res = &answer["Outputs"]["res"];
    if res["statusCode"] != 401 || answer["Outputs"].get("syncQueue").is_some() {
        return Err(format!("the forged callback was not refused: {answer}"));
    }
    say(format!(
        "   → 401 {}; nothing queued",
        res["body"].as_str().unwrap_or_default()
    ));

    say(format!(
        "4. a seller marks the opportunity \"Contoso Azure migration\" \"Sync with Partner Center\" in the {crm} stand-in"
    ));
    let known = pc.referral_ids();
    let opportunity_id = standins.share_opportunity("Contoso");
    let period = running
        .timers
        .iter()
        .find(|(n, _)| n == "CrmChanges")
        .map_or(Duration::from_secs(60), |(_, p)| *p);
    say(format!(
        "   opportunity {opportunity_id}; CrmChanges polls every {}s here",
        period.as_secs()
    ));
    let key = standins.key_field();
    let shared = wait_for("the shared opportunity's referral", || {
        standins.opportunity(&opportunity_id).filter(|o| {
            o[key]
                .as_str()
                .is_some_and(|k| !k.is_empty() && !known.iter().any(|id| id == k))
        })
    })
    .await?;
    let shared_referral_id = shared[key].as_str().unwrap_or_default().to_owned();
    let created = pc.referral(&shared_referral_id).unwrap_or_default();
    say(format!(
        "   CrmChanges: referral {shared_referral_id} created in Partner Center: name={}, dealValue={}, externalReferenceId={}",
        created["name"], created["details"]["dealValue"], created["externalReferenceId"]
    ));
    say(format!(
        "   the opportunity is linked: {key}={shared_referral_id}, sync status {}",
        shared[standins.status_field()]
    ));
    let state = json!({
        "crm": crm,
        "leads": standins.leads().len(),
        "referralPatches": pc.patch_count(&id),
        "referralsCreated": pc.created().len(),
        "referralId": id,
        "leadId": lead_id,
        "opportunityId": opportunity_id,
        "sharedReferralId": shared_referral_id,
    });
    say(format!("tour done; final state: {state}"));
    Ok(TourOutcome {
        referral_id: id,
        lead_id,
        opportunity_id,
        shared_referral_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_needs_the_refresh_token_and_the_url_of_its_crm() {
        let settings = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let example = settings(&[
            ("PARTNER_CENTER_REFRESH_TOKEN", ""),
            ("DATAVERSE_URL", "https://contoso.crm.dynamics.com"),
        ]);
        assert_eq!(
            missing_tenant(&example, CrmStandIn::Dataverse).as_deref(),
            Some("PARTNER_CENTER_REFRESH_TOKEN empty")
        );
        assert_eq!(
            missing_tenant(&settings(&[]), CrmStandIn::Dataverse).as_deref(),
            Some("PARTNER_CENTER_REFRESH_TOKEN and DATAVERSE_URL empty")
        );
        let configured = settings(&[
            ("PARTNER_CENTER_REFRESH_TOKEN", "token"),
            ("DATAVERSE_URL", "https://contoso.crm.dynamics.com"),
        ]);
        assert_eq!(missing_tenant(&configured, CrmStandIn::Dataverse), None);
        assert_eq!(
            missing_tenant(&configured, CrmStandIn::Salesforce).as_deref(),
            Some("SALESFORCE_URL empty")
        );
        let salesforce = settings(&[
            ("PARTNER_CENTER_REFRESH_TOKEN", "token"),
            ("SALESFORCE_URL", "https://contoso.my.salesforce.com"),
        ]);
        assert_eq!(missing_tenant(&salesforce, CrmStandIn::Salesforce), None);
    }

    #[test]
    fn the_crm_is_dataverse_or_salesforce_and_dataverse_by_default() {
        assert_eq!(
            CrmStandIn::parse("salesforce"),
            Some(CrmStandIn::Salesforce)
        );
        assert_eq!(
            CrmStandIn::parse(" Dataverse "),
            Some(CrmStandIn::Dataverse)
        );
        assert_eq!(CrmStandIn::parse("dynamics"), None);
        assert_eq!(CrmStandIn::of(&HashMap::new()), CrmStandIn::Dataverse);
        let salesforce = HashMap::from([("CRM".to_owned(), "salesforce".to_owned())]);
        assert_eq!(CrmStandIn::of(&salesforce), CrmStandIn::Salesforce);
        for crm in [CrmStandIn::Dataverse, CrmStandIn::Salesforce] {
            assert_eq!(CrmStandIn::parse(crm.setting()), Some(crm));
        }
    }

    #[test]
    fn the_settings_file_gives_its_values_and_a_missing_file_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("local.settings.json");
        std::fs::write(
            &file,
            r#"{"IsEncrypted":false,"Values":{"TOUR_TEST_ONLY_SETTING":"x","SYNC_TARGET":"lead"}}"#,
        )
        .expect("write");
        let settings = load_settings(&file);
        assert_eq!(settings["TOUR_TEST_ONLY_SETTING"], "x");
        assert!(settings.contains_key("SYNC_TARGET"));
        let none = load_settings(&dir.path().join("missing.json"));
        assert!(!none.contains_key("TOUR_TEST_ONLY_SETTING"));
    }
}
