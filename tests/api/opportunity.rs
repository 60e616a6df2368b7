//! Dynamics 365 opportunities and the deal's lifecycle, against the local Dataverse fake:
//! account and currency lookups, CRM-owned columns, adoption of a qualified lead's
//! opportunity, the close actions, the table choice, the status and audit columns, and the
//! write-back Partner Center refuses.

use serde_json::{Value, json};
use testkit::sync_world::{KEY_COLUMN, SyncWorld, queue_envelope, referral, sync_message};

use crate::helpers::{REFERRAL_ID, TestApp, sync_settings};

struct World {
    fakes: SyncWorld,
    app: TestApp,
}

impl World {
    async fn start(extra: &[(&str, &str)], referral_doc: Value) -> Self {
        let fakes = SyncWorld::start().await;
        fakes.dataverse.set_schema(true, Some("Active"));
        fakes.partner_center.insert_referral(referral_doc);
        let app = TestApp::spawn(&sync_settings(&fakes, extra)).await;
        Self { fakes, app }
    }

    async fn opportunities(extra: &[(&str, &str)]) -> Self {
        let mut vars = vec![("SYNC_TARGET", "opportunity")];
        vars.extend_from_slice(extra);
        Self::start(&vars, referral(REFERRAL_ID)).await
    }

    async fn sync(&self) -> (u16, Value) {
        self.app
            .invoke(
                "ReferralSync",
                queue_envelope(&sync_message(REFERRAL_ID), 1),
            )
            .await
    }

    async fn sync_ok(&self) -> String {
        let (status, answer) = self.sync().await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer["Outputs"].get("poison").is_none(), "{answer}");
        answer["Logs"][0].as_str().unwrap_or_default().to_owned()
    }

    fn opportunity(&self) -> Value {
        self.fakes
            .dataverse
            .opportunity(REFERRAL_ID)
            .expect("opportunity")
    }

    fn referral(&self) -> Value {
        self.fakes
            .partner_center
            .referral(REFERRAL_ID)
            .expect("referral")
    }

    fn set(&self, pointer: &str, value: Value) {
        self.fakes
            .partner_center
            .set_referral_field(REFERRAL_ID, pointer, value);
    }
}

fn with(extra: Value) -> Value {
    let mut doc = referral(REFERRAL_ID);
    if let (Value::Object(d), Value::Object(e)) = (&mut doc, extra) {
        d.extend(e);
    }
    doc
}

#[tokio::test]
async fn a_new_opportunity_links_a_found_account_and_the_currency() {
    let w = World::opportunities(&[]).await;
    let account = w
        .fakes
        .dataverse
        .insert_account(json!({"name": "Fabrikam Inc", "address1_postalcode": "98052"}));
    w.fakes
        .dataverse
        .insert_account(json!({"name": "Fabrikam Inc", "address1_postalcode": "10001"}));
    let log = w.sync_ok().await;
    assert!(log.contains("opportunity created"), "{log}");
    let o = w.opportunity();
    assert_eq!(o["name"], "Fabrikam cloud migration");
    assert_eq!(o["estimatedvalue"], json!(10000));
    assert_eq!(o["estimatedclosedate"], "2026-12-31");
    assert_eq!(o["description"], "Wants help moving 40 VMs");
    assert_eq!(o["_customerid_value"], account.as_str());
    assert_eq!(
        o["_transactioncurrencyid_value"],
        w.fakes.dataverse.currency_id("USD").unwrap().as_str()
    );
    assert_eq!(o["new_syncwithpartnercenter"], true);
    assert_eq!(w.fakes.dataverse.accounts().len(), 2, "no account created");
    assert_eq!(w.referral()["externalReferenceId"], o["opportunityid"]);
    let filter = w.fakes.dataverse.requests_matching("GET", "/accounts")[0]
        .query_value("$filter")
        .unwrap();
    assert_eq!(
        filter,
        "name eq 'Fabrikam Inc' and address1_postalcode eq '98052'"
    );
}

#[tokio::test]
async fn an_unknown_customer_gets_a_new_account_and_a_missing_currency_is_said_in_the_audit() {
    let doc = with(json!({
        "customerProfile": {"name": "O'Brien & Sons", "address": {"addressLine1": "1 Main St",
            "city": "Dublin", "postalCode": "D02", "country": "IE"}, "team": []},
        "details": {"notes": "n", "dealValue": 5, "currency": "JPY", "closingDateTime": "2027-01-31T00:00:00Z"}
    }));
    let w = World::start(&[("SYNC_TARGET", "opportunity")], doc).await;
    w.sync_ok().await;
    let accounts = w.fakes.dataverse.accounts();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0]["name"], "O'Brien & Sons");
    assert_eq!(accounts[0]["address1_city"], "Dublin");
    assert_eq!(accounts[0]["address1_postalcode"], "D02");
    let o = w.opportunity();
    assert_eq!(o["_customerid_value"], accounts[0]["accountid"]);
    assert_eq!(
        o["_transactioncurrencyid_value"],
        w.fakes.dataverse.base_currency_id().as_str(),
        "the org default"
    );
    let audit = o["new_partnercenteraudit"].as_str().unwrap();
    assert!(
        audit.contains("currency JPY is not an active currency"),
        "{audit}"
    );
    let filter = w.fakes.dataverse.requests_matching("GET", "/accounts")[0]
        .query_value("$filter")
        .unwrap();
    assert_eq!(
        filter,
        "name eq 'O''Brien & Sons' and address1_postalcode eq 'D02'"
    );
}

#[tokio::test]
async fn ten_concurrent_first_syncs_make_one_opportunity_and_one_account() {
    let w = World::opportunities(&[]).await;
    futures::future::join_all((0..10).map(|_| w.sync())).await;
    w.sync_ok().await;
    let opportunities: Vec<Value> = w
        .fakes
        .dataverse
        .opportunities()
        .into_iter()
        .filter(|o| o[KEY_COLUMN] == REFERRAL_ID)
        .collect();
    assert_eq!(opportunities.len(), 1);
    assert_eq!(w.fakes.dataverse.accounts().len(), 1, "one account");
    assert_eq!(
        opportunities[0]["_customerid_value"],
        w.fakes.dataverse.accounts()[0]["accountid"]
    );
}

#[tokio::test]
async fn columns_the_seller_owns_are_never_overwritten_and_value_and_close_date_flow_back() {
    let w = World::opportunities(&[]).await;
    w.sync_ok().await;
    let id = w.opportunity()["opportunityid"]
        .as_str()
        .unwrap()
        .to_owned();
    w.fakes
        .dataverse
        .set_opportunity_column(&id, "estimatedvalue", json!(75000));
    w.fakes
        .dataverse
        .set_opportunity_column(&id, "estimatedclosedate", json!("2027-03-31"));
    w.set("/details/notes", json!("changed in Partner Center"));
    let writes = w.fakes.dataverse.write_count();
    let patches = w.fakes.partner_center.patches(REFERRAL_ID).len();
    w.fakes.partner_center.clear_requests();
    let log = w.sync_ok().await;
    assert!(log.contains("opportunity unchanged"), "{log}");
    let o = w.opportunity();
    assert_eq!(o["estimatedvalue"], json!(75000));
    assert_eq!(o["estimatedclosedate"], "2027-03-31");
    assert_eq!(
        o["description"], "Wants help moving 40 VMs",
        "notes are on create only"
    );
    // The seller's value and close date reach the referral in one conditional PATCH.
    let sent = w.fakes.partner_center.patches(REFERRAL_ID);
    assert_eq!(sent.len(), patches + 1);
    assert_eq!(
        sent[patches],
        json!([
            {"op": "replace", "path": "/details/dealValue", "value": 75000},
            {"op": "replace", "path": "/details/closingDateTime", "value": "2027-03-31T00:00:00Z"}
        ])
    );
    let patch = &w
        .fakes
        .partner_center
        .requests_matching("PATCH", REFERRAL_ID)[0];
    assert!(patch.header("if-match").is_some());
    let r = w.referral();
    assert_eq!(r["details"]["dealValue"], json!(75000));
    // Only the audit line was written to the CRM; then nothing loops.
    assert_eq!(w.fakes.dataverse.write_count(), writes + 1);
    let audit = w.opportunity()["new_partnercenteraudit"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        audit
            .lines()
            .next()
            .unwrap()
            .contains("referral updated from the record"),
        "{audit}"
    );
    let writes = w.fakes.dataverse.write_count();
    w.sync_ok().await;
    assert_eq!(w.fakes.dataverse.write_count(), writes);
    assert_eq!(
        w.fakes.partner_center.patches(REFERRAL_ID).len(),
        patches + 1
    );
}

#[tokio::test]
async fn a_qualified_lead_hands_the_referral_to_its_opportunity() {
    let w = World::start(&[], referral(REFERRAL_ID)).await;
    w.sync_ok().await;
    let lead = w.fakes.dataverse.lead(REFERRAL_ID).unwrap();
    assert_eq!(w.referral()["externalReferenceId"], lead["leadid"]);
    let opportunity_id = w.fakes.dataverse.qualify_lead(REFERRAL_ID);
    let lead_before = w.fakes.dataverse.lead(REFERRAL_ID).unwrap();

    let log = w.sync_ok().await;
    assert!(log.contains("opportunity adopted"), "{log}");
    let o = w
        .fakes
        .dataverse
        .opportunity_by_id(&opportunity_id)
        .unwrap();
    assert_eq!(o[KEY_COLUMN], REFERRAL_ID);
    assert!(
        o["new_partnercenterlink"]
            .as_str()
            .unwrap()
            .ends_with(REFERRAL_ID)
    );
    assert!(
        o["new_partnercenteraudit"]
            .as_str()
            .unwrap()
            .contains("qualified from lead")
    );
    let patch = w
        .fakes
        .dataverse
        .requests_matching("PATCH", &opportunity_id);
    assert_eq!(patch.len(), 1);
    assert!(
        patch[0].header("if-match").is_some(),
        "adopted with If-Match"
    );
    assert_eq!(w.referral()["externalReferenceId"], opportunity_id.as_str());
    assert_eq!(
        w.fakes.dataverse.lead(REFERRAL_ID).unwrap(),
        lead_before,
        "the lead is untouched"
    );

    // From now on the referral follows the opportunity: nothing to do, and its end is reported.
    let writes = w.fakes.dataverse.write_count();
    let log = w.sync_ok().await;
    assert!(log.contains("opportunity unchanged"), "{log}");
    assert_eq!(w.fakes.dataverse.write_count(), writes);
    w.fakes
        .dataverse
        .set_opportunity_state(&opportunity_id, 1, 3);
    w.sync_ok().await;
    assert_eq!(w.referral()["substatus"], "Won");
}

#[tokio::test]
async fn won_in_dynamics_closes_the_referral_as_won_exactly_once() {
    let w = World::opportunities(&[]).await;
    w.sync_ok().await;
    let id = w.opportunity()["opportunityid"]
        .as_str()
        .unwrap()
        .to_owned();
    w.fakes.dataverse.set_opportunity_state(&id, 1, 3);
    let patches = w.fakes.partner_center.patch_count(REFERRAL_ID);
    w.sync_ok().await;
    let r = w.referral();
    assert_eq!(
        (r["status"].as_str(), r["substatus"].as_str()),
        (Some("Closed"), Some("Won"))
    );
    w.sync_ok().await;
    assert_eq!(w.fakes.partner_center.patch_count(REFERRAL_ID), patches + 1);
    assert!(
        w.fakes
            .dataverse
            .requests_matching("POST", "WinOpportunity")
            .is_empty(),
        "nothing closes the opportunity again"
    );
}

#[tokio::test]
async fn won_in_partner_center_wins_the_opportunity_once_unless_turned_off() {
    let w = World::opportunities(&[]).await;
    w.sync_ok().await;
    w.set("/status", json!("Closed"));
    w.set("/substatus", json!("Won"));
    w.sync_ok().await;
    w.sync_ok().await;
    let wins = w
        .fakes
        .dataverse
        .requests_matching("POST", "WinOpportunity");
    assert_eq!(wins.len(), 1, "WinOpportunity once");
    assert_eq!(wins[0].json()["Status"], 3);
    let o = w.opportunity();
    assert_eq!(
        (o["statecode"].as_i64(), o["statuscode"].as_i64()),
        (Some(1), Some(3))
    );
    assert_eq!(w.fakes.dataverse.opportunity_closes().len(), 1);

    let off = World::opportunities(&[("CRM_CLOSE_FROM_REFERRAL", "false")]).await;
    off.sync_ok().await;
    off.set("/status", json!("Closed"));
    off.set("/substatus", json!("Won"));
    off.sync_ok().await;
    assert!(
        off.fakes
            .dataverse
            .requests_matching("POST", "Opportunity")
            .is_empty()
    );
    assert_eq!(off.opportunity()["statecode"], 0);
}

#[tokio::test]
async fn auto_sends_leads_to_lead_and_co_sell_to_opportunity_and_keeps_existing_records() {
    let lead_doc = with(json!({"qualification": "MarketingQualified", "type": "Independent"}));
    let w = World::start(&[("SYNC_TARGET", "auto")], lead_doc).await;
    w.sync_ok().await;
    assert!(w.fakes.dataverse.lead(REFERRAL_ID).is_some());
    assert!(w.fakes.dataverse.opportunity(REFERRAL_ID).is_none());

    let shared = with(json!({"qualification": "Direct", "type": "Shared"}));
    let w = World::start(&[("SYNC_TARGET", "auto")], shared).await;
    w.sync_ok().await;
    assert!(w.fakes.dataverse.lead(REFERRAL_ID).is_none());
    assert!(w.fakes.dataverse.opportunity(REFERRAL_ID).is_some());

    // A co-sell referral whose lead already exists stays with the lead.
    let w = World::start(&[("SYNC_TARGET", "auto")], referral(REFERRAL_ID)).await;
    w.fakes
        .dataverse
        .insert_lead(REFERRAL_ID, json!({"subject": "earlier"}));
    w.sync_ok().await;
    assert!(w.fakes.dataverse.opportunity(REFERRAL_ID).is_none());
    assert_eq!(
        w.referral()["externalReferenceId"],
        w.fakes.dataverse.lead(REFERRAL_ID).unwrap()["leadid"]
    );
}

#[tokio::test]
async fn a_permanent_error_is_written_to_the_status_and_audit_columns_once() {
    let mapping = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        mapping.path(),
        r#"{"tables": {"opportunity": {"columns": {"closeprobability": {"from": "details.probability", "type": "integer"}}}}}"#,
    )
    .unwrap();
    let path = mapping.path().display().to_string();
    let w = World::opportunities(&[("REFERRAL_MAPPING_FILE", &path)]).await;
    w.sync_ok().await;
    w.set("/details/probability", json!("very likely"));
    for _ in 0..2 {
        let (status, answer) = w.sync().await;
        assert_eq!(status, 200);
        let reason = answer["Outputs"]["poison"]["error"].as_str().unwrap();
        assert!(reason.contains("closeprobability"), "{reason}");
    }
    let o = w.opportunity();
    let status = o["new_partnercentersyncstatus"].as_str().unwrap();
    assert!(
        status.starts_with("error: mapping: column closeprobability"),
        "{status}"
    );
    let audit = o["new_partnercenteraudit"].as_str().unwrap();
    assert_eq!(
        audit.matches("sync failed").count(),
        1,
        "the same error is written once: {audit}"
    );
}

#[tokio::test]
async fn a_refused_write_back_keeps_the_link_and_sends_only_status_from_then_on() {
    let w = World::opportunities(&[]).await;
    w.fakes.partner_center.set_accepted_patch_paths(Some(&[
        "/status",
        "/substatus",
        "/details/notes",
        "/details/dealValue",
    ]));
    let (status, answer) = w.sync().await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["Outputs"].get("poison").is_none(),
        "not poisoned: {answer}"
    );
    let r = w.referral();
    assert_eq!(r["status"], "Active", "status and substatus still sent");
    assert_ne!(r["externalReferenceId"], w.opportunity()["opportunityid"]);
    let audit = w.opportunity()["new_partnercenteraudit"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        audit.contains("Partner Center refused /externalReferenceId"),
        "{audit}"
    );
    let patches = w.fakes.partner_center.patch_count(REFERRAL_ID);
    let writes = w.fakes.dataverse.write_count();
    w.sync_ok().await;
    assert_eq!(
        w.fakes.partner_center.patch_count(REFERRAL_ID),
        patches,
        "replay stays a no-op"
    );
    assert_eq!(w.fakes.dataverse.write_count(), writes);
    assert!(
        w.fakes.partner_center.requests_matching("PATCH", "").len() <= 2,
        "the refused paths are not sent again"
    );
}

#[tokio::test]
async fn help_and_solutions_reach_the_opportunity_form() {
    let doc = with(json!({
        "inviteContext": {"assistanceRequestCode": "ProofOfConceptOrDemo"},
        "details": {"notes": "n", "dealValue": 1, "currency": "EUR", "closingDateTime": "2027-01-31T00:00:00Z",
                    "requirements": {"solutions": [{"id": "SOL-1234-PQRS", "name": "Contoso Migrate"}, {"id": "SOL-9"}]}}
    }));
    let w = World::start(&[("SYNC_TARGET", "opportunity")], doc).await;
    w.sync_ok().await;
    let o = w.opportunity();
    assert_eq!(o["new_microsofthelp"], 100_000_003);
    assert_eq!(
        o["new_partnercentersolutions"],
        "SOL-1234-PQRS (Contoso Migrate); SOL-9"
    );
    assert_eq!(
        o["_transactioncurrencyid_value"],
        w.fakes.dataverse.currency_id("EUR").unwrap().as_str()
    );
}
