//! ReferralSync against local fakes of the token endpoint (https, real azure_identity and
//! refresh-token credentials), Partner Center and Dataverse.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{
    fakes::Fault,
    sync_world::{KEY_COLUMN, SyncWorld, queue_envelope, referral, sync_message},
};

use crate::helpers::{REFERRAL_ID, TestApp, sync_settings};

struct World {
    fakes: SyncWorld,
    app: TestApp,
}

async fn world_with(extra: &[(&str, &str)]) -> World {
    let fakes = SyncWorld::start().await;
    let app = TestApp::spawn(&sync_settings(&fakes, extra)).await;
    World { fakes, app }
}

/// A world whose Partner Center holds the referral `REFERRAL_ID`.
async fn world_with_referral(extra: &[(&str, &str)]) -> World {
    let w = world_with(extra).await;
    w.fakes
        .partner_center
        .insert_referral(referral(REFERRAL_ID));
    w
}

async fn world() -> World {
    world_with(&[]).await
}

impl World {
    async fn sync(&self, id: &str, dequeue_count: u32) -> (u16, Value) {
        self.app
            .invoke(
                "ReferralSync",
                queue_envelope(&sync_message(id), dequeue_count),
            )
            .await
    }

    fn requests(&self) -> usize {
        self.fakes.partner_center.requests().len() + self.fakes.dataverse.requests().len()
    }

    fn lead(&self, id: &str) -> Value {
        self.fakes.dataverse.lead(id).expect("lead exists")
    }
}

#[tokio::test]
async fn a_new_referral_becomes_one_lead_and_learns_its_id_in_four_requests() {
    let w = world_with_referral(&[]).await;
    let (status, answer) = w.sync(REFERRAL_ID, 1).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["Outputs"].get("poison").is_none());

    let lead = w.lead(REFERRAL_ID);
    assert_eq!(lead[KEY_COLUMN], REFERRAL_ID);
    for (column, value) in [
        ("subject", json!("Fabrikam cloud migration")),
        ("companyname", json!("Fabrikam Inc")),
        ("firstname", json!("Ada")),
        ("lastname", json!("Lovelace")),
        ("emailaddress1", json!("ada@fabrikam.test")),
        ("address1_city", json!("Redmond")),
        ("description", json!("Wants help moving 40 VMs")),
        ("estimatedamount", json!(10000)),
        ("estimatedclosedate", json!("2026-12-31")),
        ("leadsourcecode", json!(4)),
    ] {
        assert_eq!(lead[column], value, "{column}");
    }
    let referral = w.fakes.partner_center.referral(REFERRAL_ID).unwrap();
    assert_eq!(referral["externalReferenceId"], lead["leadid"]);
    assert_eq!(
        (referral["status"].as_str(), referral["substatus"].as_str()),
        (Some("Active"), Some("Accepted"))
    );
    let patch = &w
        .fakes
        .partner_center
        .requests_matching("PATCH", "/referrals/")[0];
    assert!(
        patch.header("if-match").is_some(),
        "the write-back is guarded by the eTag"
    );
    assert_eq!(
        w.requests(),
        4,
        "GET referral, GET lead, PATCH lead, PATCH referral"
    );
    assert!(answer["Logs"][0].as_str().unwrap().contains("lead created"));
}

#[tokio::test]
async fn replaying_the_same_message_writes_nothing_anywhere() {
    let w = world_with_referral(&[]).await;
    assert_eq!(w.sync(REFERRAL_ID, 1).await.0, 200);
    let (writes, patches, etag) = (
        w.fakes.dataverse.write_count(),
        w.fakes.partner_center.patch_count(REFERRAL_ID),
        w.fakes.partner_center.referral(REFERRAL_ID).unwrap()["eTag"].clone(),
    );
    w.fakes.partner_center.clear_requests();
    w.fakes.dataverse.clear_requests();
    for _ in 0..3 {
        let (status, answer) = w.sync(REFERRAL_ID, 1).await;
        assert_eq!(status, 200);
        assert!(
            answer["Logs"][0]
                .as_str()
                .unwrap()
                .contains("lead unchanged")
        );
    }
    assert_eq!(w.fakes.dataverse.write_count(), writes);
    assert_eq!(w.fakes.partner_center.patch_count(REFERRAL_ID), patches);
    assert_eq!(
        w.fakes.partner_center.referral(REFERRAL_ID).unwrap()["eTag"],
        etag,
        "our own PATCH raised no second write"
    );
    assert_eq!(
        w.requests(),
        6,
        "a no-op sync is 2 requests: read referral, read lead"
    );
}

#[tokio::test]
async fn a_changed_referral_updates_only_the_changed_columns() {
    let w = world_with_referral(&[]).await;
    assert_eq!(w.sync(REFERRAL_ID, 1).await.0, 200);
    w.fakes
        .partner_center
        .set_referral_field(REFERRAL_ID, "/details/notes", json!("Now 60 VMs"));
    w.fakes.dataverse.clear_requests();
    let (status, answer) = w.sync(REFERRAL_ID, 1).await;
    assert_eq!(status, 200);
    assert!(answer["Logs"][0].as_str().unwrap().contains("lead updated"));
    assert_eq!(w.lead(REFERRAL_ID)["description"], "Now 60 VMs");
    let patch = &w.fakes.dataverse.requests_matching("PATCH", "leads(")[0];
    let body = patch.json();
    let mut columns: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    columns.sort_unstable();
    assert_eq!(
        columns,
        [
            "description",
            "new_partnercenteraudit",
            "new_partnercentersyncstatus"
        ],
        "the changed column, plus the status and audit a seller sees"
    );
    assert_eq!(body["description"], "Now 60 VMs");
    assert!(
        body["new_partnercentersyncstatus"]
            .as_str()
            .unwrap()
            .starts_with("synced 20")
    );
    let audit = body["new_partnercenteraudit"].as_str().unwrap();
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "newest first, above the create line: {audit}"
    );
    assert!(
        lines[0].ends_with("from Partner Center: updated the lead (description)"),
        "{audit}"
    );
    assert!(lines[1].contains("created the lead"), "{audit}");
    assert!(patch.header("if-match").unwrap().starts_with("W/"));
    assert_eq!(
        w.fakes.partner_center.patch_count(REFERRAL_ID),
        1,
        "nothing new to write back"
    );
}

#[tokio::test]
async fn a_sync_that_read_an_older_referral_never_overwrites_a_newer_lead() {
    // Found by the reliability run: a sync reads the referral, the referral changes, a second
    // sync writes the change to the lead, and only then does the first sync read the lead.
    // Its write must not put the older notes back.
    let w = world_with_referral(&[]).await;
    assert_eq!(w.sync(REFERRAL_ID, 1).await.0, 200);
    w.fakes.dataverse.inject(
        Fault::delayed(Duration::from_millis(800))
            .on("GET", "leads(")
            .times(1),
    );
    let newer = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.fakes.partner_center.set_referral_field(
            REFERRAL_ID,
            "/details/notes",
            json!("Now 60 VMs"),
        );
        let answer = w.sync(REFERRAL_ID, 1).await;
        assert_eq!(w.lead(REFERRAL_ID)["description"], "Now 60 VMs");
        answer
    };
    let ((slow, _), (fast, _)) = tokio::join!(w.sync(REFERRAL_ID, 1), newer);
    assert_eq!((slow, fast), (200, 200));
    assert_eq!(
        w.lead(REFERRAL_ID)["description"],
        "Now 60 VMs",
        "the slower sync left the newer notes in place"
    );
}

#[tokio::test]
async fn ten_concurrent_invocations_for_one_new_referral_leave_exactly_one_lead() {
    let w = world_with_referral(&[]).await;
    let answers = futures::future::join_all((0..10).map(|_| w.sync(REFERRAL_ID, 1))).await;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert!(answer["Outputs"].get("poison").is_none());
    }
    let leads = w.fakes.dataverse.leads();
    assert_eq!(leads.len(), 1, "{leads:?}");
    let referral = w.fakes.partner_center.referral(REFERRAL_ID).unwrap();
    assert_eq!(referral["externalReferenceId"], leads[0]["leadid"]);
    let created = answers
        .iter()
        .filter(|(_, a)| a["Logs"][0].as_str().unwrap().contains("lead created"))
        .count();
    assert_eq!(created, 1);
}

#[tokio::test]
async fn throttling_with_retry_after_is_honoured_in_process() {
    let w = world_with_referral(&[]).await;
    w.fakes
        .dataverse
        .inject(Fault::status(429).retry_after(1).on("GET", "leads("));
    let started = Instant::now();
    let (status, _) = w.sync(REFERRAL_ID, 1).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(w.fakes.dataverse.count("GET", "leads("), 2);
    assert_eq!(w.fakes.dataverse.leads().len(), 1);
}

#[tokio::test]
async fn a_retry_after_beyond_the_budget_goes_back_to_the_queue_at_once() {
    let w = world_with_referral(&[]).await;
    w.fakes
        .partner_center
        .inject(Fault::status(429).retry_after(120).on("GET", "/referrals/"));
    let started = Instant::now();
    let (status, _) = w.sync(REFERRAL_ID, 1).await;
    assert_eq!(status, 503);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn server_errors_answer_non_2xx_then_a_later_delivery_succeeds() {
    let w = world_with_referral(&[("SYNC_RETRY_BUDGET_SECONDS", "1")]).await;
    w.fakes
        .dataverse
        .inject(Fault::status(503).on("PATCH", "leads(").always());
    let (status, answer) = w.sync(REFERRAL_ID, 1).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["Outputs"].as_object().unwrap().is_empty(),
        "no output binding on a failed invocation"
    );
    assert!(w.fakes.dataverse.leads().is_empty());
    w.fakes.dataverse.clear_faults();
    let (status, _) = w.sync(REFERRAL_ID, 2).await;
    assert_eq!(status, 200);
    assert_eq!(w.fakes.dataverse.leads().len(), 1);
}

#[tokio::test]
async fn the_last_delivery_of_a_failing_message_lands_in_poison_with_its_reason() {
    let w = world_with_referral(&[("SYNC_RETRY_BUDGET_SECONDS", "0")]).await;
    w.fakes
        .partner_center
        .inject(Fault::status(500).on("GET", "/referrals/").always());
    let (status, answer) = w.sync(REFERRAL_ID, 5).await;
    assert_eq!(status, 200);
    let poison = &answer["Outputs"]["poison"];
    assert_eq!(poison["referralId"], REFERRAL_ID);
    assert!(
        poison["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 5 attempts"),
        "{poison}"
    );
    assert!(poison["failedAt"].is_string());
}

#[tokio::test]
async fn a_closed_referral_is_never_patched() {
    let w = world().await;
    let mut closed = referral(REFERRAL_ID);
    closed["status"] = json!("Closed");
    closed["substatus"] = json!("Won");
    w.fakes.partner_center.insert_referral(closed);
    for _ in 0..2 {
        assert_eq!(w.sync(REFERRAL_ID, 1).await.0, 200);
    }
    assert_eq!(w.fakes.partner_center.count("PATCH", "/referrals/"), 0);
    assert_eq!(
        w.fakes.partner_center.referral(REFERRAL_ID).unwrap()["externalReferenceId"],
        ""
    );
}

#[tokio::test]
async fn a_stale_etag_is_re_read_and_the_write_back_retried() {
    let w = world_with_referral(&[]).await;
    w.fakes
        .partner_center
        .inject(Fault::status(412).on("PATCH", "/referrals/"));
    let (status, _) = w.sync(REFERRAL_ID, 1).await;
    assert_eq!(status, 200);
    assert_eq!(
        w.fakes.partner_center.count("GET", "/referrals/"),
        2,
        "re-read after 412"
    );
    assert_eq!(w.fakes.partner_center.count("PATCH", "/referrals/"), 2);
    let referral = w.fakes.partner_center.referral(REFERRAL_ID).unwrap();
    assert_eq!(referral["status"], "Active");
    assert_eq!(w.fakes.dataverse.leads().len(), 1);
}

#[tokio::test]
async fn a_crm_edit_between_read_and_write_is_re_read_not_overwritten_blindly() {
    let w = world_with_referral(&[]).await;
    assert_eq!(w.sync(REFERRAL_ID, 1).await.0, 200);
    w.fakes
        .partner_center
        .set_referral_field(REFERRAL_ID, "/details/notes", json!("changed"));
    w.fakes
        .dataverse
        .inject(Fault::status(412).on("PATCH", "leads("));
    assert_eq!(w.sync(REFERRAL_ID, 1).await.0, 200);
    assert_eq!(w.fakes.dataverse.count("GET", "leads("), 3);
    assert_eq!(w.lead(REFERRAL_ID)["description"], "changed");
}

#[tokio::test]
async fn qualified_leads_are_not_written_and_disqualified_ones_close_the_referral_as_lost() {
    let w = world_with_referral(&[]).await;
    assert_eq!(w.sync(REFERRAL_ID, 1).await.0, 200);
    w.fakes.dataverse.set_lead_state(REFERRAL_ID, 1, 3);
    w.fakes
        .partner_center
        .set_referral_field(REFERRAL_ID, "/details/notes", json!("changed"));
    let writes = w.fakes.dataverse.write_count();
    let (_, answer) = w.sync(REFERRAL_ID, 1).await;
    assert!(
        answer["Logs"][0].as_str().unwrap().contains("qualified"),
        "{answer}"
    );
    assert_eq!(
        w.fakes.dataverse.write_count(),
        writes,
        "a qualified lead is read-only"
    );

    w.fakes.dataverse.set_lead_state(REFERRAL_ID, 2, 6);
    assert_eq!(w.sync(REFERRAL_ID, 1).await.0, 200);
    let referral = w.fakes.partner_center.referral(REFERRAL_ID).unwrap();
    assert_eq!(
        (referral["status"].as_str(), referral["substatus"].as_str()),
        (Some("Closed"), Some("Lost"))
    );
    assert_eq!(referral["statusReason"], "No Longer Interested");
    let patches = w.fakes.partner_center.patch_count(REFERRAL_ID);
    assert_eq!(w.sync(REFERRAL_ID, 1).await.0, 200);
    assert_eq!(
        w.fakes.partner_center.patch_count(REFERRAL_ID),
        patches,
        "closed now: never patched again"
    );
}

#[tokio::test]
async fn permanent_failures_go_to_poison_with_the_original_message() {
    let w = world().await;
    let (status, answer) = w
        .app
        .invoke("ReferralSync", queue_envelope("{\"referral\":1}", 1))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["Outputs"]["poison"]["referral"], 1);
    assert!(
        answer["Outputs"]["poison"]["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed message")
    );

    let missing = "00000000-0000-0000-0000-0000000000aa";
    let (status, answer) = w.sync(missing, 1).await;
    assert_eq!(status, 200);
    assert!(
        answer["Outputs"]["poison"]["error"]
            .as_str()
            .unwrap()
            .contains("not found")
    );
    assert_eq!(
        w.fakes.partner_center.count("GET", missing),
        3,
        "read again before giving up"
    );

    let mut bad = referral(REFERRAL_ID);
    bad["details"]["dealValue"] = json!("a lot");
    w.fakes.partner_center.insert_referral(bad);
    let (_, answer) = w.sync(REFERRAL_ID, 1).await;
    let error = answer["Outputs"]["poison"]["error"].as_str().unwrap();
    assert!(
        error.contains("estimatedamount") && error.contains("details.dealValue"),
        "{error}"
    );

    let other = "00000000-0000-0000-0000-0000000000bb";
    w.fakes.partner_center.insert_referral(referral(other));
    w.fakes
        .dataverse
        .inject(Fault::status(400).on("PATCH", "leads("));
    let (status, answer) = w.sync(other, 1).await;
    assert_eq!(status, 200);
    assert!(
        answer["Outputs"]["poison"]["error"]
            .as_str()
            .unwrap()
            .contains("400"),
        "{answer}"
    );
}

#[tokio::test]
async fn tokens_are_cached_and_shared_across_invocations() {
    let w = world().await;
    for i in 0..5 {
        let id = format!("00000000-0000-0000-0000-00000000000{i}");
        w.fakes.partner_center.insert_referral(referral(&id));
    }
    let calls = (0..5).map(|i| w.sync_owned(format!("00000000-0000-0000-0000-00000000000{i}")));
    for (status, _) in futures::future::join_all(calls).await {
        assert_eq!(status, 200);
    }
    assert_eq!(w.fakes.entra.token_requests("refresh_token"), 1);
    assert_eq!(w.fakes.entra.token_requests("client_credentials"), 1);
    let bearer = w.fakes.dataverse.requests()[0].bearer().unwrap().to_owned();
    assert!(
        bearer.starts_with("dv-at-"),
        "Dataverse got the client-credentials token"
    );
    assert!(
        w.fakes.partner_center.requests()[0]
            .bearer()
            .unwrap()
            .starts_with("pc-at-")
    );
}

#[tokio::test]
async fn an_unresolved_key_vault_reference_is_retried_then_poisoned_naming_the_setting() {
    // App Service passes the reference text through when it cannot read the secret.
    let reference = "@Microsoft.KeyVault(VaultName=kv-referrals;SecretName=pc-refresh-token)";
    let w = world_with_referral(&[("PARTNER_CENTER_REFRESH_TOKEN", reference)]).await;
    let (status, _) = w.sync(REFERRAL_ID, 1).await;
    assert_eq!(status, 503, "retried: the secret may become readable");
    let (status, answer) = w.sync(REFERRAL_ID, 5).await;
    assert_eq!(status, 200);
    let error = answer["Outputs"]["poison"]["error"].as_str().unwrap();
    assert!(
        error.contains("PARTNER_CENTER_REFRESH_TOKEN")
            && error.contains("unresolved Key Vault reference")
            && error.contains("Key Vault Secrets User"),
        "{error}"
    );
    assert_eq!(
        w.fakes.entra.requests().len() + w.requests(),
        0,
        "the reference text is never sent anywhere as a token"
    );
    assert!(w.fakes.dataverse.lead(REFERRAL_ID).is_none());
}

#[tokio::test]
async fn a_token_endpoint_outage_is_transient_and_a_revoked_refresh_token_is_permanent() {
    let w = world_with_referral(&[("SYNC_RETRY_BUDGET_SECONDS", "0")]).await;
    w.fakes.entra.inject(Fault::status(503).always());
    let (status, _) = w.sync(REFERRAL_ID, 1).await;
    assert_eq!(status, 503);
    w.fakes.entra.clear_faults();
    w.fakes.entra.revoke_refresh_tokens();
    let (status, answer) = w.sync(REFERRAL_ID, 1).await;
    assert_eq!(status, 200);
    let error = answer["Outputs"]["poison"]["error"].as_str().unwrap();
    assert!(
        error.contains("invalid_grant") && error.contains("login"),
        "{error}"
    );
    assert!(
        !error.contains(&w.fakes.entra.refresh_token()),
        "the reason never carries the token"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_or_secret_appears_in_the_logs() {
    let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = {
        let buffer = buffer.clone();
        move || LogSink(buffer.clone())
    };
    let _guard = tracing::subscriber::set_default(referral_connector::telemetry::get_subscriber(
        "trace", sink,
    ));
    let w = world_with_referral(&[("SYNC_RETRY_BUDGET_SECONDS", "0")]).await;
    w.fakes.entra.inject(Fault::status(503));
    assert_eq!(w.sync(REFERRAL_ID, 1).await.0, 503);
    assert_eq!(w.sync(REFERRAL_ID, 2).await.0, 200);
    let logs = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
    assert!(logs.contains(REFERRAL_ID), "the logs were captured");
    let mut secrets = vec![
        w.fakes.entra.client_secret(),
        w.fakes.entra.dataverse_client_secret(),
    ];
    secrets.extend(w.fakes.entra.issued_access_tokens());
    secrets.extend(w.fakes.entra.issued_refresh_tokens());
    secrets.push("rt-initial".into());
    for secret in secrets {
        assert!(!logs.contains(&secret), "{secret} appears in the logs");
    }
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl World {
    async fn sync_owned(&self, id: String) -> (u16, Value) {
        self.sync(&id, 1).await
    }
}

#[tokio::test]
async fn a_next_link_to_another_scheme_on_the_api_host_and_port_is_refused() {
    use referral_connector::{
        partner_center::{ListQuery, PartnerCenterError},
        sync::Syncer,
    };

    let fakes = SyncWorld::start().await;
    for id in [REFERRAL_ID, "0b1f6a1e-8a5c-4d36-9c1e-2a3b4c5d6e7f"] {
        fakes.partner_center.insert_referral(referral(id));
    }
    let settings = sync_settings(&fakes, &[]);
    let api = settings.partner_center.api_url.clone();
    assert_eq!(api.scheme(), "http");
    let port = api.port_or_known_default().expect("port");
    // Same host and port, but https: not the API's origin.
    fakes.partner_center.set_next_link_base(Some(&format!(
        "https://{}:{port}{}",
        api.host_str().expect("host"),
        api.path().trim_end_matches('/')
    )));
    let syncer = Syncer::from_settings(&settings).expect("syncer");
    let client = syncer.partner_center();
    let first = client
        .first_page_url(&ListQuery {
            since: "2000-01-01T00:00:00Z".into(),
            until: None,
            page_size: 1,
        })
        .expect("first page");
    let err = client.list_page(&first).await.unwrap_err();
    assert!(
        matches!(&err, PartnerCenterError::ForeignNextLink(origin) if origin.starts_with("https://")),
        "{err}"
    );
    assert_eq!(fakes.partner_center.requests().len(), 1);
}

#[tokio::test]
async fn an_envelope_that_cannot_be_read_is_retried_not_poisoned() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let w = world().await;
    let address = w.app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // A chunked body whose second chunk size is not hexadecimal: the read fails midway.
    stream
        .write_all(
            b"POST /ReferralSync HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\nzz\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(!answer.contains("poison"), "{answer}");
    assert!(answer.contains("retry later"), "{answer}");
    assert_eq!(w.requests(), 0);
}
