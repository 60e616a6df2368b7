//! ReferralReconcile, invoked as the host invokes a timer with a watermark blob: the first run
//! (no blob yet) syncs what Partner Center changed in the last day, later runs list from the
//! watermark minus the overlap, and the watermark moves only after a complete run.

use serde_json::{Value, json};
use testkit::{
    fakes::Fault,
    host::timer_envelope,
    sync_world::{SyncWorld, referral},
};

use crate::helpers::{REFERRAL_ID, TestApp, sync_settings};

async fn world() -> (SyncWorld, TestApp) {
    let fakes = SyncWorld::start().await;
    let app = TestApp::spawn(&sync_settings(&fakes, &[])).await;
    (fakes, app)
}

fn watermark_of(answer: &Value) -> Option<Value> {
    let text = answer["Outputs"]["watermarkOut"].as_str()?;
    Some(serde_json::from_str(text).expect("the watermark is JSON text"))
}

fn listed_since(fakes: &SyncWorld) -> String {
    let list = fakes
        .partner_center
        .requests_matching("GET", "/v1.0/engagements/referrals")
        .into_iter()
        .find(|r| r.query_value("$filter").is_some())
        .expect("a listing");
    list.query_value("$filter").unwrap()
}

#[tokio::test]
async fn a_referral_whose_callbacks_were_lost_is_synced_by_the_next_run() {
    let (fakes, app) = world().await;
    fakes.partner_center.insert_referral(referral(REFERRAL_ID));
    assert!(
        fakes.dataverse.lead(REFERRAL_ID).is_none(),
        "no callback came"
    );

    let (status, answer) = app
        .invoke(
            "ReferralReconcile",
            timer_envelope("ReferralReconcile", None),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let lead = fakes
        .dataverse
        .lead(REFERRAL_ID)
        .expect("synced by the run");
    assert_eq!(
        fakes.partner_center.referral(REFERRAL_ID).unwrap()["externalReferenceId"],
        lead["leadid"]
    );
    let log = answer["Logs"][0].as_str().unwrap();
    assert!(log.contains("1 listed: 1 created"), "{log}");
    let watermark = watermark_of(&answer).expect("a complete run writes the watermark");
    let started = watermark["completedRunStartedAt"].as_str().unwrap();
    let started =
        time::OffsetDateTime::parse(started, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert!(
        (time::OffsetDateTime::now_utc() - started)
            .whole_seconds()
            .abs()
            < 60
    );
    let filter = listed_since(&fakes);
    let since = (started - time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(
        filter.starts_with(&format!("updatedDateTime ge {since}")),
        "the first run looks one day back: {filter}"
    );
}

#[tokio::test]
async fn later_runs_list_from_the_watermark_minus_the_overlap_and_write_nothing_when_in_step() {
    let (fakes, app) = world().await;
    fakes.partner_center.insert_referral(referral(REFERRAL_ID));
    let (_, first) = app
        .invoke(
            "ReferralReconcile",
            timer_envelope("ReferralReconcile", None),
        )
        .await;
    let text = first["Outputs"]["watermarkOut"]
        .as_str()
        .unwrap()
        .to_owned();
    let writes = fakes.dataverse.write_count();
    let patches = fakes.partner_center.patch_count(REFERRAL_ID);
    fakes.partner_center.clear_requests();

    let (status, second) = app
        .invoke(
            "ReferralReconcile",
            timer_envelope("ReferralReconcile", Some(&text)),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(fakes.dataverse.write_count(), writes, "nothing to do");
    assert_eq!(fakes.partner_center.patch_count(REFERRAL_ID), patches);
    let started = serde_json::from_str::<Value>(&text).unwrap()["completedRunStartedAt"]
        .as_str()
        .unwrap()
        .to_owned();
    let started =
        time::OffsetDateTime::parse(&started, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let since = (started - time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(
        listed_since(&fakes).starts_with(&format!("updatedDateTime ge {since}")),
        "{}",
        listed_since(&fakes)
    );
    assert!(watermark_of(&second).is_some(), "the watermark moves on");
}

#[tokio::test]
async fn the_watermark_stays_when_a_referral_failed_transiently_and_the_next_run_catches_up() {
    let (fakes, app) = world().await;
    fakes.partner_center.insert_referral(referral(REFERRAL_ID));
    let old = json!({"completedRunStartedAt": "2026-12-01T03:30:00Z"}).to_string();
    fakes.partner_center.inject(
        Fault::status(503)
            .on("GET", &format!("/referrals/{REFERRAL_ID}"))
            .always(),
    );
    let (status, answer) = app
        .invoke(
            "ReferralReconcile",
            timer_envelope("ReferralReconcile", Some(&old)),
        )
        .await;
    assert_eq!(status, 500, "the invocation shows as failed: {answer}");
    assert!(
        watermark_of(&answer).is_none(),
        "the watermark is not moved"
    );
    assert!(fakes.dataverse.lead(REFERRAL_ID).is_none());

    fakes.partner_center.clear_faults();
    let (status, answer) = app
        .invoke(
            "ReferralReconcile",
            timer_envelope("ReferralReconcile", Some(&old)),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(fakes.dataverse.lead(REFERRAL_ID).is_some());
    assert!(watermark_of(&answer).is_some());
}

#[tokio::test]
async fn a_listing_that_fails_leaves_the_watermark_and_an_unconfigured_app_says_why() {
    let (fakes, app) = world().await;
    fakes.partner_center.inject(
        Fault::status(403)
            .on("GET", "/v1.0/engagements/referrals")
            .always(),
    );
    let (status, answer) = app
        .invoke(
            "ReferralReconcile",
            timer_envelope("ReferralReconcile", None),
        )
        .await;
    assert_eq!(status, 500, "{answer}");
    assert!(watermark_of(&answer).is_none());
    assert!(
        answer["Logs"][0]
            .as_str()
            .unwrap()
            .contains("the watermark stays"),
        "{answer}"
    );

    let mut settings = sync_settings(&fakes, &[]);
    settings.dataverse.url = None;
    let unconfigured = TestApp::spawn(&settings).await;
    let (status, answer) = unconfigured
        .invoke(
            "ReferralReconcile",
            timer_envelope("ReferralReconcile", None),
        )
        .await;
    assert_eq!(status, 500);
    assert!(
        answer["Logs"][0]
            .as_str()
            .unwrap()
            .contains("DATAVERSE_URL"),
        "{answer}"
    );
}
