//! CrmChanges, invoked as the host invokes a timer with a state blob: changes a seller makes in
//! Dynamics 365 reach Partner Center, nothing is written when nothing differs, and a record
//! that keeps failing is retried, then reported once.

use serde_json::{Value, json};
use testkit::{
    fakes::Fault,
    sync_world::{SyncWorld, queue_envelope, referral, sync_message},
};

use crate::helpers::{REFERRAL_ID, TestApp, sync_settings};

struct World {
    fakes: SyncWorld,
    app: TestApp,
}

impl World {
    /// A referral synced into an opportunity by the queue function.
    async fn start(extra: &[(&str, &str)]) -> Self {
        let fakes = SyncWorld::start().await;
        fakes.dataverse.set_schema(true, Some("Active"));
        fakes.partner_center.insert_referral(referral(REFERRAL_ID));
        let mut vars = vec![("SYNC_TARGET", "opportunity")];
        vars.extend_from_slice(extra);
        let app = TestApp::spawn(&sync_settings(&fakes, &vars)).await;
        let (status, answer) = app
            .invoke(
                "ReferralSync",
                queue_envelope(&sync_message(REFERRAL_ID), 1),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        Self { fakes, app }
    }

    fn opportunity_id(&self) -> String {
        self.fakes.dataverse.opportunity(REFERRAL_ID).unwrap()["opportunityid"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// One CrmChanges run with this state; the status, the answer and the new state text.
    async fn run(&self, state: Option<&str>) -> (u16, Value, Option<String>) {
        self.app.crm_changes(state).await
    }

    fn referral(&self) -> Value {
        self.fakes.partner_center.referral(REFERRAL_ID).unwrap()
    }

    fn writes(&self) -> (usize, usize) {
        (
            self.fakes.dataverse.write_count(),
            self.fakes.partner_center.patch_count(REFERRAL_ID),
        )
    }
}

#[tokio::test]
async fn an_opportunity_won_or_lost_in_dynamics_closes_its_referral_once_and_then_nothing_loops() {
    let cases = [(1, 3, "Won", None), (2, 5, "Lost", Some("Out-Sold"))];
    for (statecode, statuscode, substatus, reason) in cases {
        let w = World::start(&[]).await;
        w.fakes
            .dataverse
            .set_opportunity_state(&w.opportunity_id(), statecode, statuscode);
        let (status, answer, state) = w.run(None).await;
        assert_eq!(status, 200, "{answer}");
        let r = w.referral();
        assert_eq!(
            (r["status"].as_str(), r["substatus"].as_str()),
            (Some("Closed"), Some(substatus))
        );
        assert_eq!(r["statusReason"].as_str(), reason, "{r}");
        assert!(
            answer["Logs"][0]
                .as_str()
                .unwrap()
                .contains("1 synced (1 with changes)"),
            "{answer}"
        );
        let state = state.expect("the state is written");
        let writes = w.writes();
        // The same run again, and the next run, read the record (overlap) and write nothing.
        for input in [None, Some(state.as_str())] {
            let (status, answer, _) = w.run(input).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(w.writes(), writes, "nothing written anywhere ({substatus})");
        }
    }
}

#[tokio::test]
async fn value_and_close_date_edited_by_the_seller_reach_the_referral_in_one_patch() {
    let w = World::start(&[]).await;
    let id = w.opportunity_id();
    w.fakes
        .dataverse
        .set_opportunity_column(&id, "estimatedvalue", json!(42000));
    w.fakes
        .dataverse
        .set_opportunity_column(&id, "estimatedclosedate", json!("2027-02-28"));
    let before = w.fakes.partner_center.patches(REFERRAL_ID).len();
    w.fakes.partner_center.clear_requests();
    let (status, answer, _) = w.run(None).await;
    assert_eq!(status, 200, "{answer}");
    let patches = w.fakes.partner_center.patches(REFERRAL_ID);
    assert_eq!(patches.len(), before + 1);
    assert_eq!(
        patches[before],
        json!([
            {"op": "replace", "path": "/details/dealValue", "value": 42000},
            {"op": "replace", "path": "/details/closingDateTime", "value": "2027-02-28T00:00:00Z"}
        ])
    );
    let sent = w
        .fakes
        .partner_center
        .requests_matching("PATCH", REFERRAL_ID);
    assert!(sent[0].header("if-match").is_some(), "guarded by the eTag");
}

#[tokio::test]
async fn a_412_is_re_read_and_a_429_waits_for_retry_after() {
    let w = World::start(&[]).await;
    w.fakes
        .dataverse
        .set_opportunity_column(&w.opportunity_id(), "estimatedvalue", json!(50000));
    w.fakes
        .partner_center
        .inject(Fault::status(412).on("PATCH", REFERRAL_ID).times(1));
    w.fakes.partner_center.inject(
        Fault::status(429)
            .retry_after(1)
            .on("GET", REFERRAL_ID)
            .times(1),
    );
    let started = std::time::Instant::now();
    let (status, answer, _) = w.run(None).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(w.referral()["details"]["dealValue"], json!(50000));
    assert_eq!(w.fakes.partner_center.injected_faults(), 2);
}

#[tokio::test]
async fn an_idle_run_is_one_dataverse_request_and_none_to_partner_center() {
    let w = World::start(&[]).await;
    // A watermark after the last change: nothing changed since.
    let later = (time::OffsetDateTime::now_utc() + time::Duration::minutes(10))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let state = json!({"since": later}).to_string();
    w.fakes.dataverse.clear_requests();
    w.fakes.partner_center.clear_requests();
    let (status, answer, next) = w.run(Some(&state)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(w.fakes.dataverse.requests().len(), 1);
    assert_eq!(w.fakes.partner_center.requests().len(), 0);
    let next: Value = serde_json::from_str(&next.unwrap()).unwrap();
    assert_eq!(
        next["since"],
        later.as_str(),
        "the watermark never goes back"
    );
    let poll = &w.fakes.dataverse.requests()[0];
    let filter = poll.query_value("$filter").unwrap();
    assert!(
        filter.starts_with("modifiedon ge ")
            && filter.contains("new_partnercenterreferralid ne null"),
        "{filter}"
    );
    assert_eq!(poll.header("prefer"), Some("odata.maxpagesize=500"));
}

#[tokio::test]
async fn a_record_failing_on_every_run_is_reported_once_and_the_watermark_waits_for_it() {
    let w = World::start(&[("SYNC_MAX_DEQUEUE_COUNT", "3")]).await;
    w.fakes
        .dataverse
        .set_opportunity_column(&w.opportunity_id(), "estimatedvalue", json!(1));
    let modified = w.fakes.dataverse.opportunity(REFERRAL_ID).unwrap()["modifiedon"]
        .as_str()
        .unwrap()
        .to_owned();
    w.fakes.partner_center.inject(
        Fault::status(503)
            .on("GET", &format!("/referrals/{REFERRAL_ID}"))
            .always(),
    );
    let mut state: Option<String> = None;
    let mut reported = Vec::new();
    for run in 1..=4 {
        let (status, answer, next) = w.run(state.as_deref()).await;
        assert_eq!(status, 200, "run {run}: {answer}");
        if let Some(poison) = answer["Outputs"].get("poison") {
            reported.push((run, poison.clone()));
        }
        let next = next.expect("state written");
        let since = serde_json::from_str::<Value>(&next).unwrap()["since"]
            .as_str()
            .unwrap()
            .to_owned();
        if run < 3 {
            assert!(
                since <= modified,
                "run {run}: the watermark {since} passed the failing record ({modified})"
            );
        }
        state = Some(next);
    }
    assert_eq!(reported.len(), 1, "{reported:?}");
    let (run, poison) = &reported[0];
    assert_eq!(*run, 3, "after maxDequeueCount runs");
    assert_eq!(poison["referralId"], REFERRAL_ID);
    assert_eq!(poison["table"], "opportunity");
    assert!(
        poison["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 runs"),
        "{poison}"
    );
}

#[tokio::test]
async fn the_poll_query_follows_every_page() {
    let fakes = SyncWorld::start().await;
    for i in 0..1201 {
        fakes
            .dataverse
            .insert_account(json!({"name": format!("Customer {i:04}")}));
    }
    let settings = sync_settings(&fakes, &[]);
    let http = referral_connector::http::client(&settings.http).unwrap();
    let client =
        referral_connector::crm::dataverse::DataverseClient::from_settings(&settings, http)
            .unwrap();
    let rows = client
        .query_all(
            referral_connector::crm::dataverse::Table::ACCOUNT,
            &["accountid", "name"],
            "name ne null",
            "name asc,accountid asc",
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1201);
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "in order across pages");
    sorted.dedup();
    assert_eq!(sorted.len(), 1201, "no row twice");
    let pages = fakes.dataverse.requests_matching("GET", "/accounts");
    assert_eq!(pages.len(), 3, "500 + 500 + 201");
    assert!(
        pages
            .iter()
            .all(|p| p.header("prefer") == Some("odata.maxpagesize=500"))
    );
}
