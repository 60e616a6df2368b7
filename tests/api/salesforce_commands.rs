//! The operator commands with `CRM=salesforce`: `setup salesforce` twice, `check` before and
//! after it, and `backfill` stopping at the API budget.

use referral_connector::{cli, config::Settings};
use serde_json::json;
use testkit::{
    fakes::FakeSalesforce,
    sync_world::{SyncWorld, referral},
};

use crate::helpers::{REFERRAL_ID, settings_from};

const URL: &str =
    "https://contoso-referrals.azurewebsites.net/api/ReferralWebhook?code=function-key-value";

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The fakes with a bare Salesforce org (no connector fields yet) and the settings for it.
async fn world(extra: &[(&str, &str)]) -> (SyncWorld, FakeSalesforce, Settings) {
    let fakes = SyncWorld::start().await;
    let bare = FakeSalesforce::start().await;
    let mut vars = fakes.salesforce_vars();
    vars.insert("SALESFORCE_URL".into(), bare.base_url());
    vars.insert("SALESFORCE_CLIENT_ID".into(), bare.client_id());
    vars.insert("SALESFORCE_CLIENT_SECRET".into(), bare.client_secret());
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    let settings = settings_from(&fakes, vars);
    (fakes, bare, settings)
}

#[tokio::test]
async fn check_fails_naming_the_fields_then_setup_twice_then_check_passes() {
    let (fakes, sf, settings) = world(&[("SYNC_TARGET", "auto")]).await;
    fakes.partner_center.set_registration(Some(json!({"WebhookUrl": URL, "WebhookEvents": referral_connector::domain::EventName::SUBSCRIBED})));
    let mut out = Vec::new();
    assert!(
        !cli::check::run(&settings, Some(URL), &mut out)
            .await
            .unwrap()
    );
    let before = text(&out);
    assert!(before.contains("Partner_Center_Referral_Id__c"), "{before}");
    assert!(before.contains("setup salesforce"), "{before}");

    let mut out = Vec::new();
    assert!(cli::setup::salesforce(&settings, &mut out).await.unwrap());
    let first = text(&out);
    assert!(
        first.contains("created field Opportunity.Sync_with_Partner_Center__c"),
        "{first}"
    );
    let writes = sf.write_count();
    let mut out = Vec::new();
    assert!(cli::setup::salesforce(&settings, &mut out).await.unwrap());
    assert_eq!(
        sf.write_count(),
        writes,
        "the second run changes nothing:\n{}",
        text(&out)
    );
    assert!(!text(&out).contains("created"), "{}", text(&out));

    let mut out = Vec::new();
    let passed = cli::check::run(&settings, Some(URL), &mut out)
        .await
        .unwrap();
    let after = text(&out);
    assert!(passed, "{after}");
    assert!(after.contains("PASS  Webhook registration"), "{after}");
    assert!(after.contains("0 failed"), "{after}");
    assert!(!after.contains("function-key-value"));
    assert!(!after.contains(&sf.client_secret()));
    assert_eq!(sf.write_count(), writes, "check writes nothing");
}

#[tokio::test]
async fn backfill_stops_at_the_api_budget_and_the_next_run_finishes() {
    let fakes = SyncWorld::start().await;
    let mut vars = fakes.salesforce_vars();
    vars.insert("SALESFORCE_API_BUDGET_PERCENT".into(), "80".into());
    let settings = settings_from(&fakes, vars);
    let ids: Vec<String> = (0..5)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    for id in &ids {
        fakes.partner_center.insert_referral(referral(id));
    }
    fakes.partner_center.insert_referral(referral(REFERRAL_ID));
    fakes.salesforce.set_api_usage(85_000);
    let options = cli::backfill::Options {
        since: "2000-01-01".into(),
        until: None,
        concurrency: 1,
        dry_run: false,
    };
    let mut out = Vec::new();
    let done = cli::backfill::run(&settings, &options, &mut out)
        .await
        .unwrap();
    let printed = text(&out);
    assert!(!done, "a stopped backfill is not a success: {printed}");
    assert!(printed.contains("stopped early, 5 not synced"), "{printed}");
    assert!(
        printed.contains("SALESFORCE_API_BUDGET_PERCENT"),
        "{printed}"
    );
    assert_eq!(
        fakes.salesforce.records("Lead").len(),
        1,
        "only the first, which showed the usage"
    );

    fakes.salesforce.set_api_usage(1_000);
    let mut out = Vec::new();
    assert!(
        cli::backfill::run(&settings, &options, &mut out)
            .await
            .unwrap(),
        "{}",
        text(&out)
    );
    assert_eq!(fakes.salesforce.records("Lead").len(), 6);
}
