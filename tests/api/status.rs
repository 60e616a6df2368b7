//! `status` and `check`'s watermark lines against a real Azurite and the Partner Center fake:
//! the exit code of a healthy and an unhealthy app (in process and from the real binary),
//! and an identity-based storage connection signed in through azure_identity.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use referral_connector::{cli, config::Settings, storage::StorageClient};
use serde_json::json;
use testkit::sync_world::{DATAVERSE_TENANT, SyncWorld};
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};
use warp::Filter;

use crate::{
    helpers::sync_settings,
    poison::{Storage, id, run},
};

const URL: &str =
    "https://contoso-referrals.azurewebsites.net/api/ReferralWebhook?code=function-key-value";

struct App {
    storage: Storage,
    fakes: SyncWorld,
}

impl App {
    async fn start() -> Self {
        Self {
            storage: Storage::start().await,
            fakes: SyncWorld::start().await,
        }
    }

    fn vars(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut vars = self.fakes.vars();
        vars.extend(self.storage.vars());
        vars.insert("SSL_CERT_FILE".into(), self.fakes.root_pem_path());
        vars.insert("SYNC_RETRY_BUDGET_SECONDS".into(), "3".into());
        for (k, v) in extra {
            vars.insert((*k).into(), (*v).into());
        }
        vars
    }

    fn settings(&self, extra: &[(&str, &str)]) -> Settings {
        let connection = self.storage.azurite.connection_string();
        let mut pairs = vec![("AzureWebJobsStorage", connection.as_str())];
        pairs.extend_from_slice(extra);
        sync_settings(&self.fakes, &pairs)
    }

    fn register(&self, url: &str) {
        self.fakes.partner_center.set_registration(Some(json!({
            "WebhookUrl": url,
            "WebhookEvents": referral_connector::domain::EventName::SUBSCRIBED,
        })));
    }

    /// Writes the watermark blobs as the host's output bindings would (`None`: no blob).
    async fn watermarks(
        &self,
        crm_since: Option<OffsetDateTime>,
        reconciled: Option<OffsetDateTime>,
    ) {
        let client = StorageClient::from_settings(&self.settings(&[])).unwrap();
        if let Some(since) = crm_since {
            let state = json!({"since": since.format(&Rfc3339).unwrap(), "failures": {}});
            client
                .put_blob_text("referral-connector", "crm-changes.json", &state.to_string())
                .await
                .unwrap();
        }
        if let Some(at) = reconciled {
            let watermark = json!({"completedRunStartedAt": at.format(&Rfc3339).unwrap(), "summary": "3 listed"});
            client
                .put_blob_text(
                    "referral-connector",
                    "referral-reconcile.json",
                    &watermark.to_string(),
                )
                .await
                .unwrap();
        }
    }
}

fn seconds_ago(s: i64) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now) - Duration::seconds(s)
}

async fn status(settings: &Settings, url: Option<&str>) -> (bool, String) {
    let mut out = Vec::new();
    let ok = cli::status::run(settings, url, &mut out).await.unwrap();
    (ok, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn status_of_a_healthy_app_is_ok_and_exits_0() {
    let app = App::start().await;
    app.register(URL);
    let since = seconds_ago(20);
    app.watermarks(Some(since), Some(seconds_ago(7200))).await;

    let (ok, printed) = status(&app.settings(&[]), Some(URL)).await;
    assert!(ok, "{printed}");
    for expected in [
        "storage              http://127.0.0.1:",
        "referral-sync        0 messages",
        "referral-sync-poison 0 entries",
        &format!(
            "CrmChanges           watermark {}",
            since.format(&Rfc3339).unwrap()
        ),
        "(stale after 3 min)",
        "ReferralReconcile    watermark ",
        "(stale after 3 d)",
        "webhook              https://contoso-referrals.azurewebsites.net/api/ReferralWebhook?code=*** (all referral events); points at this app (--url): yes",
        "status: OK",
    ] {
        assert!(printed.contains(expected), "{expected} in\n{printed}");
    }
    assert!(!printed.contains("function-key-value"), "{printed}");
    assert!(
        !printed.contains(testkit::azurite::ACCOUNT_KEY),
        "{printed}"
    );

    let (ok, printed) = status(&app.settings(&[]), None).await;
    assert!(ok, "without --url the target is not judged: {printed}");
    assert!(
        printed.contains("points at this app: not checked (give --url"),
        "{printed}"
    );

    let (code, out) = run(&["status", "--url", URL], &app.vars(&[])).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("status: OK"), "{out}");
}

#[tokio::test]
async fn status_of_an_unhealthy_app_names_each_problem_and_exits_1() {
    let app = App::start().await;
    app.register("https://other-tool.example/hook");
    app.watermarks(Some(seconds_ago(600)), None).await;
    for i in 0..2 {
        app.storage
            .poison
            .put_base64(&json!({"referralId": id(i), "error": format!("gave up after 5 attempts: Partner Center: GET referral {}: HTTP 503", id(i)), "failedAt": "2026-12-02T10:00:00Z"}).to_string())
            .await
            .unwrap();
    }
    app.storage
        .poison
        .put_base64(&json!({"referralId": id(9), "table": "lead", "recordId": "l9", "error": "gave up after 5 runs of CrmChanges: Dataverse: HTTP 400", "failedAt": "2026-12-02T10:00:00Z"}).to_string())
        .await
        .unwrap();

    let (ok, printed) = status(&app.settings(&[]), Some(URL)).await;
    assert!(!ok, "{printed}");
    for expected in [
        "referral-sync-poison 3 entries",
        "poison reasons of the 3 oldest entries:",
        "     2  Partner Center: GET referral <id>: HTTP 503",
        "     1  Dataverse: HTTP 400",
        "STALE (more than 3 min)",
        "ReferralReconcile    never ran: no watermark in referral-connector/referral-reconcile.json",
        "points at this app (https://contoso-referrals.azurewebsites.net/api/ReferralWebhook?code=***): no",
        "status: NEEDS ATTENTION",
        "  - 3 entries in referral-sync-poison: `referral-connector poison list` shows why",
        "  - CrmChanges has not completed a run for 10 min",
        "  - ReferralReconcile never completed a run",
        "  - the webhook points at https://other-tool.example/hook, not at this app",
    ] {
        assert!(printed.contains(expected), "{expected} in\n{printed}");
    }
    assert_eq!(printed.matches("\n  - ").count(), 4, "{printed}");
    assert!(!printed.contains("function-key-value"), "{printed}");
    assert_eq!(
        app.storage.poison.count().await.unwrap(),
        3,
        "status takes nothing"
    );

    let (ok, printed) = status(
        &app.settings(&[("CRM_POLL_SCHEDULE", "0 */30 * * * *")]),
        Some(URL),
    )
    .await;
    assert!(!ok);
    assert!(
        printed.contains("(stale after 1 h 30 min)") && !printed.contains("CrmChanges has not"),
        "the schedule setting is what the age is judged against: {printed}"
    );

    let (code, out) = run(&["status", "--url", URL], &app.vars(&[])).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("status: NEEDS ATTENTION"), "{out}");

    let (code, out) = run(
        &["status", "--url", URL],
        &app.vars(&[("CRM_POLL_SCHEDULE", "0 61 * * * *")]),
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("the CrmChanges watermark cannot be judged: setting CRM_POLL_SCHEDULE: `0 61 * * * *` is not a timer schedule: minute `61`"),
        "{out}"
    );

    let port = testkit::free_port();
    let closed = format!(
        "AccountName=devstoreaccount1;AccountKey={};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1",
        testkit::azurite::ACCOUNT_KEY
    );
    let (code, out) = run(
        &["status", "--url", URL],
        &app.vars(&[("AzureWebJobsStorage", &closed)]),
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("  - the storage account cannot be read: reading the queue depth: cannot reach storage at http://127.0.0.1:")
            && out.contains("start Azurite"),
        "{out}"
    );
    assert_eq!(
        out.matches("\n  - ").count(),
        2,
        "one line for the storage, one for the webhook: {out}"
    );
}

#[tokio::test]
async fn check_reports_both_watermarks_and_their_age() {
    let app = App::start().await;
    app.register(URL);
    app.watermarks(Some(seconds_ago(30)), None).await;
    let check = |settings: Settings| async move {
        let mut out = Vec::new();
        cli::check::run(&settings, Some(URL), &mut out)
            .await
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    let printed = check(app.settings(&[])).await;
    assert!(
        printed.contains("PASS  CrmChanges watermark: watermark "),
        "{printed}"
    );
    assert!(
        printed.contains("NOTE  ReferralReconcile watermark: never ran: no watermark in referral-connector/referral-reconcile.json"),
        "a missing blob is reported, not failed: {printed}"
    );
    assert!(!printed.contains("FAIL  ReferralReconcile"), "{printed}");

    app.watermarks(Some(seconds_ago(3600)), Some(seconds_ago(60)))
        .await;
    let printed = check(app.settings(&[])).await;
    assert!(
        printed.contains("FAIL  CrmChanges watermark: watermark ")
            && printed.contains("STALE (more than 3 min)"),
        "{printed}"
    );
    assert!(
        printed.contains("PASS  ReferralReconcile watermark: watermark "),
        "{printed}"
    );

    let printed = check(sync_settings(&app.fakes, &[])).await;
    assert!(
        printed.contains("NOTE  Timer watermarks: not read: AzureWebJobsStorage is not set here"),
        "{printed}"
    );

    // After Deploy, local.settings.json still says UseDevelopmentStorage=true: a local
    // emulator that is not running is noted, not failed.
    let port = testkit::free_port();
    let not_running = format!(
        "AccountName=devstoreaccount1;AccountKey={};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1",
        testkit::azurite::ACCOUNT_KEY
    );
    let printed = check(app.settings(&[("AzureWebJobsStorage", &not_running)])).await;
    assert!(
        printed.contains(
            "NOTE  CrmChanges watermark: cannot tell: reading a blob: cannot reach storage"
        ) && printed.contains("(local development storage)"),
        "{printed}"
    );
    assert!(!printed.contains("FAIL  CrmChanges"), "{printed}");
}

/// A storage endpoint that records each request's path, query and Authorization, answers
/// Get Queue Metadata with 0 messages and everything else with 404.
async fn recording_storage() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let log = seen.clone();
    let route = warp::path::full()
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::optional::<String>("authorization"))
        .map(
            move |path: warp::path::FullPath, query: String, auth: Option<String>| {
                log.lock().unwrap().push((
                    format!("{}?{query}", path.as_str()),
                    auth.unwrap_or_default(),
                ));
                let builder = warp::http::Response::builder();
                if query == "comp=metadata" {
                    builder
                        .status(200)
                        .header("x-ms-approximate-messages-count", "0")
                        .body(String::new())
                } else {
                    builder
                        .status(404)
                        .header("x-ms-error-code", "BlobNotFound")
                        .body(String::new())
                }
                .unwrap()
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{addr}/stidentity"), seen)
}

#[tokio::test]
async fn identity_based_storage_is_read_with_a_token_for_the_storage_scope() {
    let fakes = SyncWorld::start().await;
    let (endpoint, seen) = recording_storage().await;
    let client_id = fakes.entra.dataverse_client_id();
    let secret = fakes.entra.dataverse_client_secret();
    let settings = sync_settings(
        &fakes,
        &[
            ("AzureWebJobsStorage__queueServiceUri", &endpoint),
            ("AzureWebJobsStorage__blobServiceUri", &endpoint),
            ("AzureWebJobsStorage__tenantId", DATAVERSE_TENANT),
            ("AzureWebJobsStorage__clientId", &client_id),
            ("AzureWebJobsStorage__clientSecret", &secret),
        ],
    );
    let (ok, printed) = status(&settings, None).await;
    assert!(!ok, "the timers never ran: {printed}");
    assert!(
        printed.contains(&format!(
            "storage              {endpoint} (app registration {client_id})"
        )),
        "{printed}"
    );
    assert!(
        printed.contains("referral-sync        0 messages"),
        "{printed}"
    );
    assert!(
        printed.contains("CrmChanges           never ran"),
        "{printed}"
    );

    let token = fakes.entra.requests_matching("POST", "/token");
    let scopes: Vec<String> = token.iter().filter_map(|r| r.form_value("scope")).collect();
    assert!(
        scopes.contains(&"https://storage.azure.com/.default".to_owned()),
        "{scopes:?}"
    );
    let issued = fakes.entra.issued_access_tokens();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 4, "{seen:?}");
    for (request, authorization) in &seen {
        let bearer = authorization.strip_prefix("Bearer ").unwrap_or_default();
        assert!(
            issued.iter().any(|t| t == bearer),
            "{request} carried {authorization:?}"
        );
    }
    assert!(!printed.contains(&secret), "{printed}");
}
