//! Salesforce as the CRM, beyond the conformance suite: a converted lead followed to its
//! opportunity, outcomes both ways through the stage table, token expiry, every error class,
//! a seller's share (claimed in the app's storage, created once, a lost answer adopted), the
//! change poll's overlap and bounds, the API budget, and the requests each of these costs.

use std::collections::HashMap;

use serde_json::{Value, json};
use testkit::{
    azurite::Azurite,
    fakes::{FakeSalesforce, Fault, REFERRAL_ID_FIELD},
    sync_world::{
        SyncWorld, queue_envelope, referral, shared_salesforce_opportunity, sync_message,
    },
};

use crate::helpers::{REFERRAL_ID, TestApp, settings_from};

const CREATE_PATH: &str = "/v1.0/engagements/referrals";

struct World {
    fakes: SyncWorld,
    app: TestApp,
    _azurite: Option<Azurite>,
}

impl World {
    /// The fakes with `REFERRAL_ID` in Partner Center and a handler on Salesforce with
    /// `SYNC_TARGET=target`; `storage` starts Azurite for share claims.
    async fn start(target: &str, storage: bool, extra: &[(&str, &str)]) -> Self {
        let fakes = SyncWorld::start().await;
        fakes.partner_center.insert_referral(referral(REFERRAL_ID));
        let mut vars: HashMap<String, String> = fakes.salesforce_vars();
        vars.insert("SYNC_TARGET".into(), target.into());
        let azurite = storage.then(Azurite::start);
        if let Some(azurite) = &azurite {
            vars.insert("AzureWebJobsStorage".into(), azurite.connection_string());
        }
        for (k, v) in extra {
            vars.insert((*k).into(), (*v).into());
        }
        let app = TestApp::spawn(&settings_from(&fakes, vars)).await;
        Self {
            fakes,
            app,
            _azurite: azurite,
        }
    }

    fn sf(&self) -> &FakeSalesforce {
        &self.fakes.salesforce
    }

    async fn sync_id(&self, id: &str) -> (u16, Value) {
        self.app
            .invoke("ReferralSync", queue_envelope(&sync_message(id), 1))
            .await
    }

    async fn sync(&self) -> (u16, Value) {
        self.sync_id(REFERRAL_ID).await
    }

    async fn sync_ok(&self) -> String {
        let (status, answer) = self.sync().await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer["Outputs"].get("poison").is_none(), "{answer}");
        answer["Logs"].to_string()
    }

    fn referral(&self) -> Value {
        self.fakes
            .partner_center
            .referral(REFERRAL_ID)
            .expect("referral")
    }

    fn one(&self, object: &str) -> Value {
        let found = self.sf().find_by_referral_id(object, REFERRAL_ID);
        assert_eq!(found.len(), 1, "{object}: {found:?}");
        found[0].clone()
    }

    /// Writes anywhere: Salesforce writes, referrals created, referral patches.
    fn writes(&self) -> (usize, usize, usize) {
        let pc = &self.fakes.partner_center;
        let patches = pc.referral_ids().iter().map(|id| pc.patch_count(id)).sum();
        (self.sf().write_count(), pc.created().len(), patches)
    }
}

fn poison_reason(answer: &Value) -> String {
    let poison = &answer["Outputs"]["poison"];
    assert!(!poison.is_null(), "expected a poison entry: {answer}");
    poison.to_string()
}

#[tokio::test]
async fn a_new_lead_has_the_mapped_fields_and_no_auto_assignment() {
    let w = World::start("lead", false, &[]).await;
    w.sync_ok().await;
    let lead = w.one("Lead");
    assert_eq!(lead["Company"], "Fabrikam Inc");
    assert_eq!(lead["FirstName"], "Ada");
    assert_eq!(lead["LastName"], "Lovelace");
    assert_eq!(lead["Email"], "ada@fabrikam.test");
    assert_eq!(lead["City"], "Redmond");
    assert_eq!(lead["PostalCode"], "98052");
    assert_eq!(lead["LeadSource"], "Partner");
    assert_eq!(lead["Description"], "Wants help moving 40 VMs");
    assert!(
        w.sf()
            .auto_assign_headers("Lead")
            .iter()
            .all(|h| h.as_deref() == Some("FALSE")),
        "every Lead write carries Sforce-Auto-Assign: FALSE"
    );
    assert_eq!(w.referral()["externalReferenceId"], lead["Id"]);
}

#[tokio::test]
async fn a_new_opportunity_gets_the_first_stage_and_one_account_for_the_customer() {
    let w = World::start("opportunity", false, &[]).await;
    w.sync_ok().await;
    let opportunity = w.one("Opportunity");
    assert_eq!(opportunity["Name"], "Fabrikam cloud migration");
    assert_eq!(opportunity["StageName"], "Prospecting");
    assert_eq!(opportunity["Amount"], 10000.0);
    assert_eq!(opportunity["CloseDate"], "2026-12-31");
    assert_eq!(
        opportunity["How_can_Microsoft_help__c"],
        Value::Null,
        "no help asked for"
    );
    let accounts = w.sf().records("Account");
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0]["Name"], "Fabrikam Inc");
    assert_eq!(accounts[0]["BillingPostalCode"], "98052");
    assert_eq!(opportunity["AccountId"], accounts[0]["Id"]);
    // A second referral for the same customer links the same account.
    let second = "0d6f1b7e-2c3a-4b5c-8d9e-0f1a2b3c4d5e";
    w.fakes.partner_center.insert_referral(referral(second));
    let (status, answer) = w.sync_id(second).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(w.sf().records("Account").len(), 1);
    assert_eq!(w.sf().records("Opportunity").len(), 2);
}

#[tokio::test]
async fn with_multiple_currencies_a_new_opportunity_takes_the_referral_s_currency_when_active() {
    let w = World::start("opportunity", false, &[]).await;
    w.sf().enable_multi_currency(&["EUR", "USD"]);
    w.sync_ok().await;
    assert_eq!(w.one("Opportunity")["CurrencyIsoCode"], "USD");
    // A currency the org has not activated: the org's default, said in the audit.
    let other = "0d6f1b7e-2c3a-4b5c-8d9e-0f1a2b3c4d5e";
    let mut gbp = referral(other);
    gbp["details"]["currency"] = json!("GBP");
    w.fakes.partner_center.insert_referral(gbp);
    let (status, answer) = w.sync_id(other).await;
    assert_eq!(status, 200, "{answer}");
    let found = w.sf().find_by_referral_id("Opportunity", other);
    assert_eq!(found[0]["CurrencyIsoCode"], "EUR");
    assert!(
        found[0]["Partner_Center_Audit__c"]
            .as_str()
            .unwrap()
            .contains("currency GBP is not an active currency"),
        "{}",
        found[0]
    );
}

#[tokio::test]
async fn a_configured_first_stage_is_used() {
    let w = World::start(
        "opportunity",
        false,
        &[("SALESFORCE_NEW_STAGE", "Qualification")],
    )
    .await;
    w.sync_ok().await;
    assert_eq!(w.one("Opportunity")["StageName"], "Qualification");
}

#[tokio::test]
async fn a_converted_lead_is_followed_to_its_opportunity_which_is_adopted_once() {
    let w = World::start("lead", false, &[]).await;
    w.sync_ok().await;
    let lead = w.one("Lead");
    let converted = w.sf().convert_lead(lead["Id"].as_str().unwrap());
    let log = w.sync_ok().await;
    assert!(log.contains("adopted"), "{log}");
    let opportunity = w.one("Opportunity");
    assert_eq!(opportunity["Id"], converted.opportunity_id.as_str());
    assert_eq!(
        w.referral()["externalReferenceId"],
        converted.opportunity_id.as_str()
    );
    assert!(
        opportunity["Partner_Center_Link__c"]
            .as_str()
            .is_some_and(|l| l.ends_with(REFERRAL_ID))
    );
    assert_eq!(
        w.one("Lead")["Partner_Center_Audit__c"],
        lead["Partner_Center_Audit__c"],
        "the converted lead is not written"
    );
    let writes = w.writes();
    let log = w.sync_ok().await;
    assert!(log.contains("unchanged"), "{log}");
    assert_eq!(w.writes(), writes, "adopted once");
}

#[tokio::test]
async fn won_in_salesforce_closes_the_referral_once_through_crm_changes() {
    let w = World::start("opportunity", false, &[]).await;
    w.sync_ok().await;
    let id = w.one("Opportunity")["Id"].as_str().unwrap().to_owned();
    let (_, _, state) = w.app.crm_changes(None).await;
    w.sf().set_stage(&id, "Closed Won");
    // Committed a little while ago, so inside the next run's window whatever the clocks say.
    w.sf().set_system_modstamp(&id, &ago(30));
    let (status, answer, state) = w.app.crm_changes(state.as_deref()).await;
    assert_eq!(status, 200, "{answer}");
    let referral = w.referral();
    assert_eq!(referral["status"], "Closed", "{answer}");
    assert_eq!(referral["substatus"], "Won");
    let writes = w.writes();
    let (status, _, _) = w.app.crm_changes(state.as_deref()).await;
    assert_eq!(status, 200);
    w.sync_ok().await;
    assert_eq!(w.writes(), writes, "closed once, then nothing");
}

#[tokio::test]
async fn a_referral_won_in_partner_center_moves_the_opportunity_to_the_first_won_stage_once() {
    let w = World::start("opportunity", false, &[]).await;
    w.sync_ok().await;
    w.fakes
        .partner_center
        .set_referral_field(REFERRAL_ID, "/status", json!("Closed"));
    w.fakes
        .partner_center
        .set_referral_field(REFERRAL_ID, "/substatus", json!("Won"));
    w.sync_ok().await;
    let opportunity = w.one("Opportunity");
    assert_eq!(opportunity["StageName"], "Closed Won");
    assert_eq!(opportunity["IsWon"], true);
    let writes = w.writes();
    w.sync_ok().await;
    assert_eq!(w.writes(), writes);
}

#[tokio::test]
async fn closing_from_the_referral_can_be_turned_off() {
    let w = World::start(
        "opportunity",
        false,
        &[("CRM_CLOSE_FROM_REFERRAL", "false")],
    )
    .await;
    w.sync_ok().await;
    w.fakes
        .partner_center
        .set_referral_field(REFERRAL_ID, "/status", json!("Closed"));
    w.fakes
        .partner_center
        .set_referral_field(REFERRAL_ID, "/substatus", json!("Lost"));
    w.sync_ok().await;
    assert_eq!(w.one("Opportunity")["StageName"], "Prospecting");
}

#[tokio::test]
async fn an_expired_token_mid_run_is_fetched_again_once_and_no_sync_fails() {
    let w = World::start("lead", false, &[]).await;
    w.sync_ok().await;
    assert_eq!(w.sf().tokens_issued(), 1);
    w.sf().expire_tokens();
    w.fakes
        .partner_center
        .set_referral_field(REFERRAL_ID, "/details/notes", json!("Now 60 VMs"));
    w.sync_ok().await;
    assert_eq!(w.sf().tokens_issued(), 2, "one new token");
    w.sync_ok().await;
    assert_eq!(w.sf().tokens_issued(), 2, "and it is reused");
}

#[tokio::test]
async fn transient_errors_are_retried_and_the_sync_ends_with_one_record() {
    let faults: [(&str, Fault); 4] = [
        (
            "503 SERVER_UNAVAILABLE",
            FakeSalesforce::server_unavailable_fault(),
        ),
        (
            "UNABLE_TO_LOCK_ROW",
            FakeSalesforce::unable_to_lock_row_fault(),
        ),
        (
            "403 REQUEST_LIMIT_EXCEEDED",
            FakeSalesforce::request_limit_fault(),
        ),
        ("connection reset", Fault::connection_reset()),
    ];
    for (name, fault) in faults {
        let w = World::start("lead", false, &[]).await;
        w.sf().inject(fault.on("POST", "/sobjects/Lead"));
        // The host redelivers what was not done; nothing is poisoned.
        let mut done = false;
        for _ in 0..3 {
            let (status, answer) = w.sync().await;
            assert!(
                answer["Outputs"].get("poison").is_none(),
                "{name}: {answer}"
            );
            if status == 200 {
                done = true;
                break;
            }
        }
        assert!(done, "{name}");
        assert_eq!(w.sf().injected_faults(), 1, "{name}");
        assert_eq!(
            w.sf().find_by_referral_id("Lead", REFERRAL_ID).len(),
            1,
            "{name}"
        );
    }
}

#[tokio::test]
async fn permanent_errors_are_poisoned_naming_the_field_and_written_to_the_status_once() {
    let cases = [
        (
            "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "Company",
            "Company must not be a test name",
        ),
        (
            "REQUIRED_FIELD_MISSING",
            "Industry",
            "Required fields are missing: [Industry]",
        ),
        (
            "STRING_TOO_LONG",
            "Description",
            "Description: data value too large",
        ),
        (
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            "Status",
            "bad value for restricted picklist field: X",
        ),
        (
            "CANNOT_UPDATE_CONVERTED_LEAD",
            "",
            "cannot reference converted lead",
        ),
    ];
    for (code, field, message) in cases {
        let w = World::start("lead", false, &[]).await;
        w.sync_ok().await;
        w.fakes.partner_center.set_referral_field(
            REFERRAL_ID,
            "/details/notes",
            json!("Now 60 VMs"),
        );
        let fields: Vec<&str> = [field].into_iter().filter(|f| !f.is_empty()).collect();
        w.sf().inject(
            Fault::status(400).on("PATCH", "/sobjects/Lead/").body(
                json!([{"message": message, "errorCode": code, "fields": fields}]).to_string(),
            ),
        );
        let (status, answer) = w.sync().await;
        assert_eq!(status, 200, "{code}: {answer}");
        let reason = poison_reason(&answer);
        assert!(reason.contains(code), "{code}: {reason}");
        assert!(reason.contains(field), "{code}: {reason}");
        let lead = w.one("Lead");
        let status_text = lead["Partner_Center_Sync_Status__c"].as_str().unwrap_or("");
        assert!(status_text.starts_with("error: "), "{code}: {status_text}");
        assert!(status_text.chars().count() <= 255, "fits the field");
        assert_eq!(w.sf().injected_faults(), 1, "{code}: not retried");
    }
}

#[tokio::test]
async fn two_records_with_one_referral_id_are_refused_naming_both() {
    let w = World::start("lead", false, &[]).await;
    let a = w.sf().insert(
        "Lead",
        json!({"LastName": "A", "Company": "A", REFERRAL_ID_FIELD: "x"}),
    );
    let b = w.sf().insert(
        "Lead",
        json!({"LastName": "B", "Company": "B", REFERRAL_ID_FIELD: "y"}),
    );
    w.sf().set_field(&a, REFERRAL_ID_FIELD, json!(REFERRAL_ID));
    w.sf().set_field(&b, REFERRAL_ID_FIELD, json!(REFERRAL_ID));
    let (status, answer) = w.sync().await;
    assert_eq!(status, 200, "{answer}");
    let reason = poison_reason(&answer);
    assert!(reason.contains(&a) && reason.contains(&b), "{reason}");
}

#[tokio::test]
async fn a_mapped_field_the_integration_user_cannot_see_is_poisoned_with_its_name() {
    let w = World::start("lead", false, &[]).await;
    w.sf().hide_field("Lead", "Description");
    let (status, answer) = w.sync().await;
    assert_eq!(status, 200, "{answer}");
    let reason = poison_reason(&answer);
    assert!(reason.contains("Description"), "{reason}");
    assert!(w.sf().records("Lead").is_empty());
}

#[tokio::test]
async fn no_secret_or_token_reaches_the_logs() {
    let w = World::start("lead", false, &[]).await;
    let (_, answer) = w.sync().await;
    w.sf().expire_tokens();
    let (_, again) = w.sync().await;
    let logs = format!("{answer}{again}");
    assert!(!logs.contains(&w.sf().client_secret()), "{logs}");
    assert!(!logs.to_ascii_lowercase().contains("bearer "), "{logs}");
}

// ---------------------------------------------------------------------------------------------
// Salesforce → Partner Center

struct Share {
    w: World,
    opportunity: String,
}

impl Share {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let w = World::start("opportunity", true, extra).await;
        let opportunity = shared_salesforce_opportunity(w.sf(), "Contoso");
        // Saved by the seller a little while ago: the poll stays behind Salesforce's clock
        // and leaves the current second to the next run.
        w.sf().set_system_modstamp(&opportunity, &ago(10));
        Self { w, opportunity }
    }

    fn row(&self) -> Value {
        self.w.sf().get(&self.opportunity).expect("opportunity")
    }

    fn posts(&self) -> usize {
        self.w.fakes.partner_center.count("POST", CREATE_PATH)
    }

    /// The one referral created (the world's own referral left out).
    fn created_id(&self) -> String {
        let ids: Vec<String> = self
            .w
            .fakes
            .partner_center
            .referral_ids()
            .into_iter()
            .filter(|id| id != REFERRAL_ID)
            .collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        ids[0].clone()
    }
}

#[tokio::test]
async fn a_shared_opportunity_becomes_exactly_one_referral_and_nothing_is_written_after() {
    let s = Share::start(&[]).await;
    s.w.sf().clear_requests();
    let (status, answer, state) = s.w.app.crm_changes(None).await;
    assert_eq!(status, 200, "{answer}");
    let created = s.w.fakes.partner_center.created();
    assert_eq!(created.len(), 1, "{answer}");
    let body = &created[0];
    assert_eq!(body["externalReferenceId"], s.opportunity.as_str());
    assert_eq!(body["customerProfile"]["name"], "Contoso");
    assert_eq!(body["customerProfile"]["address"]["country"], "US");
    assert_eq!(
        body["customerProfile"]["team"],
        json!([{"firstName": "Avery", "lastName": "Howard",
                "email": "avery@example.test", "phoneNumber": "+1 425 555 0100"}])
    );
    assert_eq!(body["details"]["currency"], "USD");
    assert_eq!(body["details"]["dealValue"], 25000.0);
    assert_eq!(
        body["inviteContext"]["assistanceRequestCode"],
        "ProofOfConceptOrDemo"
    );
    let referral_id = s.created_id();
    let row = s.row();
    assert_eq!(row[REFERRAL_ID_FIELD], referral_id.as_str());
    assert!(
        row["Partner_Center_Sync_Status__c"]
            .as_str()
            .unwrap()
            .starts_with("synced ")
    );
    assert!(
        row["Partner_Center_Audit__c"]
            .as_str()
            .unwrap()
            .contains(&format!("shared with Microsoft as referral {referral_id}"))
    );
    // The same run again, the next run and Partner Center's callback: nothing written.
    let writes = s.w.writes();
    for input in [None, state.as_deref()] {
        let (status, answer, _) = s.w.app.crm_changes(input).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(s.w.writes(), writes, "{answer}");
    }
    let (status, _) = s.w.sync_id(&referral_id).await;
    assert_eq!(status, 200);
    assert_eq!(s.w.writes(), writes);
}

#[tokio::test]
async fn with_multiple_currencies_the_opportunity_s_own_currency_is_shared() {
    let w = World::start("opportunity", true, &[]).await;
    w.sf().enable_multi_currency(&["USD", "EUR"]);
    let opportunity = shared_salesforce_opportunity(w.sf(), "Contoso");
    w.sf()
        .set_field(&opportunity, "CurrencyIsoCode", json!("EUR"));
    w.sf().set_system_modstamp(&opportunity, &ago(10));
    let (status, answer, _) = w.app.crm_changes(None).await;
    assert_eq!(status, 200, "{answer}");
    let created = w.fakes.partner_center.created();
    assert_eq!(created.len(), 1, "{answer}");
    assert_eq!(created[0]["details"]["currency"], "EUR");
}

#[tokio::test]
async fn a_lost_answer_to_the_create_is_adopted_by_the_next_run_never_created_twice() {
    let s = Share::start(&[]).await;
    s.w.fakes
        .partner_center
        .inject(Fault::status(503).on("POST", CREATE_PATH).after_write());
    let (status, answer, state) = s.w.app.crm_changes(None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        s.w.fakes.partner_center.created().len(),
        1,
        "the create landed"
    );
    assert_eq!(
        s.row()[REFERRAL_ID_FIELD],
        Value::Null,
        "its answer was lost"
    );
    assert!(
        s.row()["Partner_Center_Sync_Status__c"]
            .as_str()
            .unwrap()
            .starts_with("creating referral (claimed ")
    );
    // The next run, once the claim's write is behind Salesforce's clock.
    s.w.sf().set_system_modstamp(&s.opportunity, &ago(5));
    let (status, answer, _) = s.w.app.crm_changes(state.as_deref()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(s.posts(), 1, "one POST in total");
    let referral_id = s.created_id();
    assert_eq!(s.row()[REFERRAL_ID_FIELD], referral_id.as_str());
}

#[tokio::test]
async fn overlapping_runs_create_one_referral() {
    let s = Share::start(&[]).await;
    s.w.fakes
        .partner_center
        .inject(Fault::delayed(std::time::Duration::from_millis(300)).on("POST", CREATE_PATH));
    let (a, b) = tokio::join!(s.w.app.crm_changes(None), s.w.app.crm_changes(None));
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(b.0, 200, "{}", b.1);
    let (status, _, _) = s.w.app.crm_changes(None).await;
    assert_eq!(status, 200);
    assert_eq!(s.posts(), 1, "exactly one create");
    assert_eq!(s.w.fakes.partner_center.created().len(), 1);
}

#[tokio::test]
async fn the_poll_reads_with_both_bounds_re_reads_its_overlap_and_writes_nothing() {
    let s = Share::start(&[("CRM_POLL_OVERLAP_SECONDS", "3600")]).await;
    let (_, _, state) = s.w.app.crm_changes(None).await;
    assert_eq!(s.posts(), 1);
    // Changed before the watermark, inside the overlap.
    s.w.sf().set_system_modstamp(&s.opportunity, &ago(5));
    let writes = s.w.writes();
    s.w.sf().clear_requests();
    let (status, answer, next) = s.w.app.crm_changes(state.as_deref()).await;
    assert_eq!(status, 200, "{answer}");
    let queries: Vec<String> =
        s.w.sf()
            .requests_matching("GET", "/query")
            .iter()
            .filter_map(|r| r.query_value("q"))
            .collect();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert!(
        q.contains("SystemModstamp >= ") && q.contains("SystemModstamp < "),
        "{q}"
    );
    assert!(q.ends_with("ORDER BY SystemModstamp, Id"), "{q}");
    assert!(
        answer["Logs"].to_string().contains("1 read"),
        "the overlap re-read the row: {answer}"
    );
    assert_eq!(s.w.writes(), writes, "re-reading writes nothing");
    assert!(next >= state, "the watermark never goes back");
}

#[tokio::test]
async fn an_idle_poll_costs_one_salesforce_call() {
    let s = Share::start(&[("CRM_POLL_OVERLAP_SECONDS", "0")]).await;
    let (_, _, state) = s.w.app.crm_changes(None).await;
    assert_eq!(s.posts(), 1);
    // Everything it wrote is older than the watermark: the next window holds nothing.
    s.w.sf().set_system_modstamp(&s.opportunity, &ago(3600));
    s.w.sf().clear_requests();
    s.w.fakes.partner_center.clear_requests();
    let (status, answer, _) = s.w.app.crm_changes(state.as_deref()).await;
    assert_eq!(status, 200, "{answer}");
    let calls: Vec<String> = s.w.sf().requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(s.w.fakes.partner_center.requests().is_empty());
}

/// An RFC 3339 instant `seconds` before now.
fn ago(seconds: i64) -> String {
    let t = time::OffsetDateTime::now_utc() - time::Duration::seconds(seconds);
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

#[tokio::test]
async fn past_the_api_budget_the_poll_stops_early_and_the_next_run_catches_up() {
    let s = Share::start(&[("SALESFORCE_API_BUDGET_PERCENT", "50")]).await;
    s.w.sf().set_api_usage(60_000);
    let (status, answer, state) = s.w.app.crm_changes(None).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["Logs"].to_string().contains("stopped early"),
        "{answer}"
    );
    assert_eq!(s.posts(), 0, "nothing shared past the budget");
    s.w.sf().set_api_usage(1_000);
    let (status, answer, _) = s.w.app.crm_changes(state.as_deref()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(s.posts(), 1, "the next run shares it: {answer}");
}
