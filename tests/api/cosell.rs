//! A seller shares an opportunity with Microsoft ("Sync with Partner Center" = yes): CrmChanges
//! creates exactly one referral with the documented body, links it, and writes nothing more;
//! what Partner Center would refuse is refused before any request; a lost answer to the
//! create is adopted, never created twice, also when runs overlap.

use referral_connector::{cli, crm::RecordKind};
use serde_json::{Value, json};
use testkit::{
    fakes::Fault,
    sync_world::{SyncWorld, queue_envelope, shared_opportunity, sync_message},
};

use crate::helpers::{TestApp, sync_settings};

const CREATE_PATH: &str = "/v1.0/engagements/referrals";

struct World {
    fakes: SyncWorld,
    app: TestApp,
    settings: referral_connector::config::Settings,
    opportunity: String,
}

impl World {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let fakes = SyncWorld::start().await;
        fakes.dataverse.set_schema(true, Some("Active"));
        let opportunity = shared_opportunity(&fakes.dataverse, "Contoso");
        let mut vars = vec![("SYNC_TARGET", "opportunity")];
        vars.extend_from_slice(extra);
        let settings = sync_settings(&fakes, &vars);
        let app = TestApp::spawn(&settings).await;
        Self {
            fakes,
            app,
            settings,
            opportunity,
        }
    }

    /// One CrmChanges run with this state: status, answer, next state.
    async fn run(&self, state: Option<&str>) -> (u16, Value, Option<String>) {
        self.app.crm_changes(state).await
    }

    fn row(&self) -> Value {
        self.fakes
            .dataverse
            .opportunity_by_id(&self.opportunity)
            .unwrap()
    }

    fn posts(&self) -> usize {
        self.fakes.partner_center.count("POST", CREATE_PATH)
    }

    /// Writes anywhere: Dataverse writes, referrals created, referral patches.
    fn writes(&self) -> (usize, usize, usize) {
        let pc = &self.fakes.partner_center;
        let patches = pc.referral_ids().iter().map(|id| pc.patch_count(id)).sum();
        (
            self.fakes.dataverse.write_count(),
            pc.created().len(),
            patches,
        )
    }
}

fn log_of(answer: &Value) -> String {
    answer["Logs"].to_string()
}

#[tokio::test]
async fn a_shared_opportunity_becomes_exactly_one_referral_and_nothing_is_written_after() {
    let w = World::start(&[]).await;
    let (status, answer, state) = w.run(None).await;
    assert_eq!(status, 200, "{answer}");
    let created = w.fakes.partner_center.created();
    assert_eq!(created.len(), 1, "{answer}");
    let body = &created[0];
    assert_eq!(body["name"], "Contoso Azure migration");
    assert_eq!(body["type"], "Independent");
    assert_eq!(body["qualification"], "SalesQualified");
    assert_eq!(body["externalReferenceId"], w.opportunity.as_str());
    assert_eq!(body["customerProfile"]["name"], "Contoso");
    assert_eq!(body["customerProfile"]["address"]["country"], "US");
    assert_eq!(body["customerProfile"]["address"]["postalCode"], "98052");
    assert_eq!(
        body["customerProfile"]["team"],
        json!([{"firstName": "Avery", "lastName": "Howard",
                "email": "avery@example.test", "phoneNumber": "+1 425 555 0100"}])
    );
    assert_eq!(
        body["details"],
        json!({"dealValue": 25000, "closingDateTime": "2027-03-31T00:00:00Z",
               "notes": "Move 40 VMs", "currency": "USD",
               "requirements": {"solutions": [{"id": "SOL-1234-PQRS", "type": "Name"}]}})
    );
    assert_eq!(
        body["target"],
        json!([{"type": "SolutionProfile", "id": "SOL-1234-PQRS"}])
    );
    assert_eq!(
        body["inviteContext"]["assistanceRequestCode"],
        "ProofOfConceptOrDemo"
    );
    assert_eq!(
        body["consent"]["consentToShareReferralWithMicrosoftSellers"],
        true
    );
    let referral_id = w.fakes.partner_center.referral_ids()[0].clone();
    let row = w.row();
    assert_eq!(row["new_partnercenterreferralid"], referral_id.as_str());
    assert!(
        row["new_partnercenterlink"]
            .as_str()
            .unwrap()
            .ends_with(&referral_id)
    );
    assert!(
        row["new_partnercentersyncstatus"]
            .as_str()
            .unwrap()
            .starts_with("synced ")
    );
    let audit = row["new_partnercenteraudit"].as_str().unwrap();
    assert!(
        audit.contains(&format!(
            "to Partner Center: shared with Microsoft as referral {referral_id}"
        )),
        "{audit}"
    );
    // The same run again (same input state) and the next run: nothing written anywhere.
    let writes = w.writes();
    for input in [None, state.as_deref()] {
        let (status, answer, _) = w.run(input).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(w.writes(), writes, "{}", log_of(&answer));
    }
    // Partner Center's own callback for the new referral: nothing written either.
    let (status, _) = w
        .app
        .invoke(
            "ReferralSync",
            queue_envelope(&sync_message(&referral_id), 1),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(w.writes(), writes);
}

#[tokio::test]
async fn what_partner_center_would_refuse_is_refused_before_any_request_with_the_fix() {
    type Change = fn(&World);
    let cases: [(&str, Change, &str); 7] = [
        (
            "no country",
            |w| {
                let account = w.row()["_parentaccountid_value"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                w.fakes
                    .dataverse
                    .set_account_column(&account, "address1_country", Value::Null);
            },
            "the account has no country",
        ),
        (
            "country not ISO",
            |w| {
                let account = w.row()["_parentaccountid_value"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                w.fakes.dataverse.set_account_column(
                    &account,
                    "address1_country",
                    json!("Atlantis"),
                );
            },
            "'Atlantis' is not an ISO 3166 country",
        ),
        (
            "help without contact",
            |w| {
                w.fakes.dataverse.set_opportunity_column(
                    &w.opportunity,
                    "_parentcontactid_value",
                    Value::Null,
                )
            },
            "contact has no first name, last name and email",
        ),
        (
            "help without solution",
            |w| {
                w.fakes.dataverse.set_opportunity_column(
                    &w.opportunity,
                    "new_partnercentersolutions",
                    Value::Null,
                )
            },
            "no solution is given",
        ),
        (
            "no value",
            |w| {
                w.fakes.dataverse.set_opportunity_column(
                    &w.opportunity,
                    "estimatedvalue",
                    Value::Null,
                )
            },
            "the deal value is missing",
        ),
        (
            "no close date",
            |w| {
                w.fakes.dataverse.set_opportunity_column(
                    &w.opportunity,
                    "estimatedclosedate",
                    Value::Null,
                )
            },
            "the close date is missing",
        ),
        (
            "no currency",
            |w| {
                w.fakes.dataverse.set_opportunity_column(
                    &w.opportunity,
                    "_transactioncurrencyid_value",
                    Value::Null,
                )
            },
            "the currency is missing",
        ),
    ];
    for (name, change, expected) in cases {
        let w = World::start(&[]).await;
        change(&w);
        let (status, answer, state) = w.run(None).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(w.posts(), 0, "{name}: nothing sent to Partner Center");
        let row = w.row();
        let status_text = row["new_partnercentersyncstatus"].as_str().unwrap();
        assert!(
            status_text.starts_with("error: not shared with Partner Center")
                && status_text.contains(expected),
            "{name}: {status_text}"
        );
        assert!(row["new_partnercenterreferralid"].is_null(), "{name}");
        // The refusal is written once: the next run writes nothing.
        let writes = w.writes();
        let (_, _, _) = w.run(state.as_deref()).await;
        assert_eq!(w.writes(), writes, "{name}");
    }
}

#[tokio::test]
async fn a_lost_answer_to_the_create_is_adopted_by_the_next_run_never_created_twice() {
    for fault in [
        Fault::connection_reset()
            .on("POST", CREATE_PATH)
            .after_write(),
        Fault::status(503).on("POST", CREATE_PATH).after_write(),
    ] {
        let w = World::start(&[]).await;
        w.fakes.partner_center.inject(fault.clone());
        let (status, answer, state) = w.run(None).await;
        assert_eq!(status, 200, "{answer}");
        assert!(log_of(&answer).contains("1 failed"), "{answer}");
        assert_eq!(
            w.fakes.partner_center.created().len(),
            1,
            "the referral exists"
        );
        assert_eq!(w.posts(), 1, "a create is never repeated: {fault:?}");
        let row = w.row();
        assert!(row["new_partnercenterreferralid"].is_null());
        assert!(
            row["new_partnercentersyncstatus"]
                .as_str()
                .unwrap()
                .starts_with("creating referral (claimed "),
            "{row}"
        );
        let (status, answer, _) = w.run(state.as_deref()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(w.posts(), 1, "no second create: {fault:?}");
        let referral_id = w.fakes.partner_center.referral_ids()[0].clone();
        let row = w.row();
        assert_eq!(row["new_partnercenterreferralid"], referral_id.as_str());
        assert!(
            row["new_partnercenteraudit"]
                .as_str()
                .unwrap()
                .contains("found after the answer to the create was lost")
        );
        let lists = w
            .fakes
            .partner_center
            .requests_matching("GET", CREATE_PATH)
            .into_iter()
            .filter_map(|r| r.query_value("$filter"))
            .collect::<Vec<_>>();
        assert!(
            lists.iter().any(|f| f == "direction eq 'Outgoing'"),
            "{lists:?}"
        );
    }
}

#[tokio::test]
async fn a_create_that_never_reached_partner_center_is_sent_again_only_after_the_claim_expires() {
    let settings = [
        ("OUTBOUND_TIMEOUT_SECONDS", "1"),
        ("SYNC_RETRY_BUDGET_SECONDS", "0"),
        ("CRM_SHARE_CLAIM_SECONDS", "3"),
    ];
    let w = World::start(&settings).await;
    w.fakes
        .partner_center
        .inject(Fault::status(500).on("POST", CREATE_PATH));
    let (_, answer, state) = w.run(None).await;
    assert_eq!(w.posts(), 1, "{answer}");
    assert!(w.fakes.partner_center.created().is_empty());
    // Within the claim: another attempt may still be creating it, so nothing is sent.
    let (_, answer, state) = w.run(state.as_deref()).await;
    assert_eq!(w.posts(), 1, "{answer}");
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let (_, answer, _) = w.run(state.as_deref()).await;
    assert_eq!(w.posts(), 2, "{answer}");
    assert_eq!(w.fakes.partner_center.created().len(), 1);
    let referral_id = w.fakes.partner_center.referral_ids()[0].clone();
    assert_eq!(w.row()["new_partnercenterreferralid"], referral_id.as_str());
}

#[tokio::test]
async fn two_overlapping_runs_create_one_referral_and_a_429_waits_for_retry_after() {
    let w = World::start(&[]).await;
    w.fakes.partner_center.inject(
        Fault::status(429)
            .retry_after(1)
            .on("POST", CREATE_PATH)
            .times(1),
    );
    let (a, b) = tokio::join!(w.run(None), w.run(None));
    assert_eq!((a.0, b.0), (200, 200), "{} {}", a.1, b.1);
    assert_eq!(w.fakes.partner_center.created().len(), 1);
    assert_eq!(w.posts(), 2, "one 429, then the create");
    let (_, answer, _) = w.run(a.2.as_deref()).await;
    assert_eq!(w.fakes.partner_center.created().len(), 1, "{answer}");
    let referral_id = w.fakes.partner_center.referral_ids()[0].clone();
    assert_eq!(w.row()["new_partnercenterreferralid"], referral_id.as_str());
}

#[tokio::test]
async fn a_partner_center_change_and_a_crm_change_to_different_fields_both_land_in_either_order() {
    let mapping = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        mapping.path(),
        r#"{"tables": {"opportunity": {"columns": {"description": {"from": "details.notes", "direction": "pc-to-crm"}}}}}"#,
    )
    .unwrap();
    let path = mapping.path().display().to_string();
    for crm_first in [true, false] {
        let w = World::start(&[("REFERRAL_MAPPING_FILE", &path)]).await;
        let (_, answer, state) = w.run(None).await;
        let referral_id = w.fakes.partner_center.referral_ids()[0].clone();
        assert_eq!(
            w.row()["new_partnercenterreferralid"],
            referral_id.as_str(),
            "{answer}"
        );
        let pc = &w.fakes.partner_center;
        let edit_crm = || {
            w.fakes
                .dataverse
                .set_opportunity_column(&w.opportunity, "estimatedvalue", json!(31000))
        };
        let edit_pc = || pc.set_referral_field(&referral_id, "/details/notes", json!("Now 60 VMs"));
        let callback = || async {
            let (status, answer) = w
                .app
                .invoke(
                    "ReferralSync",
                    queue_envelope(&sync_message(&referral_id), 1),
                )
                .await;
            assert_eq!(status, 200, "{answer}");
        };
        if crm_first {
            edit_crm();
            edit_pc();
            w.run(state.as_deref()).await;
            callback().await;
        } else {
            edit_pc();
            callback().await;
            edit_crm();
            w.run(state.as_deref()).await;
        }
        let referral = pc.referral(&referral_id).unwrap();
        let row = w.row();
        assert_eq!(
            referral["details"]["dealValue"], 31000,
            "crm_first {crm_first}"
        );
        assert_eq!(referral["details"]["notes"], "Now 60 VMs");
        assert_eq!(row["estimatedvalue"], 31000);
        assert_eq!(row["description"], "Now 60 VMs", "crm_first {crm_first}");
        // Our own writes come back as a callback and as a changed row: nothing more is written.
        let writes = w.writes();
        callback().await;
        w.run(state.as_deref()).await;
        callback().await;
        assert_eq!(w.writes(), writes, "nothing loops (crm_first {crm_first})");
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8(out.to_vec()).unwrap()
}

#[tokio::test]
async fn crm_changes_dry_run_prints_the_referral_it_would_create_and_writes_nothing() {
    let w = World::start(&[]).await;
    let mut out = Vec::new();
    let state = referral_connector::sync::to_partner_center::PollState::default();
    assert!(
        cli::crm::dry_run(&w.settings, &state, &mut out)
            .await
            .unwrap()
    );
    let printed = text(&out);
    assert!(
        printed.contains(&format!(
            "opportunity {}: would create referral",
            w.opportunity
        )) && printed.contains("\"SOL-1234-PQRS\"")
            && printed.contains("1 with something to send"),
        "{printed}"
    );
    assert_eq!(w.writes(), (0, 0, 0));
    assert_eq!(w.posts(), 0);
}

#[tokio::test]
async fn sync_crm_shares_one_record_and_backfill_crm_pushes_a_sellers_edit() {
    let w = World::start(&[]).await;
    let mut out = Vec::new();
    let ids = [w.opportunity.clone()];
    let kind = RecordKind::Opportunity;
    assert!(
        cli::crm::sync_records(&w.settings, kind, &ids, &mut out)
            .await
            .unwrap()
    );
    assert!(
        text(&out).contains("created: opportunity"),
        "{}",
        text(&out)
    );
    assert_eq!(w.fakes.partner_center.created().len(), 1);
    let referral_id = w.fakes.partner_center.referral_ids()[0].clone();
    let writes = w.writes();
    let mut out = Vec::new();
    assert!(
        cli::crm::sync_records(&w.settings, kind, &ids, &mut out)
            .await
            .unwrap()
    );
    assert!(text(&out).contains(" unchanged: "), "{}", text(&out));
    assert_eq!(w.writes(), writes, "a second sync writes nothing");

    w.fakes
        .dataverse
        .set_opportunity_column(&w.opportunity, "estimatedvalue", json!(27500));
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let mut out = Vec::new();
    assert!(
        cli::crm::backfill(&w.settings, since, 4, true, &mut out)
            .await
            .unwrap()
    );
    assert!(text(&out).contains("/details/dealValue"), "{}", text(&out));
    assert_eq!(w.writes(), writes, "the dry run writes nothing");
    let mut out = Vec::new();
    assert!(
        cli::crm::backfill(&w.settings, since, 4, false, &mut out)
            .await
            .unwrap()
    );
    assert!(
        text(&out).contains("1 synced (1 with changes)"),
        "{}",
        text(&out)
    );
    let referral = w.fakes.partner_center.referral(&referral_id).unwrap();
    assert_eq!(referral["details"]["dealValue"], 27500);

    let mut out = Vec::new();
    let missing = ["0b000000-0000-4000-8000-000000000009".to_owned()];
    assert!(
        !cli::crm::sync_records(&w.settings, kind, &missing, &mut out)
            .await
            .unwrap()
    );
    assert!(
        text(&out).contains("there is no opportunity with id"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_record_message_on_the_sync_queue_runs_the_record_as_crm_changes_would() {
    let w = World::start(&[]).await;
    let message = json!({"table": "opportunity", "recordId": w.opportunity, "error": "replayed"});
    let (status, answer) = w
        .app
        .invoke("ReferralSync", queue_envelope(&message.to_string(), 1))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(w.fakes.partner_center.created().len(), 1, "{answer}");
    assert!(!w.row()["new_partnercenterreferralid"].is_null());
}

#[tokio::test]
async fn a_share_costs_one_partner_center_request_and_six_dataverse_requests_after_the_poll_query()
{
    let w = World::start(&[]).await;
    w.fakes.dataverse.clear_requests();
    w.fakes.partner_center.clear_requests();
    let (status, answer, _) = w.run(None).await;
    assert_eq!(status, 200, "{answer}");
    let pc: Vec<String> = w
        .fakes
        .partner_center
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        pc,
        ["POST /v1.0/engagements/referrals"],
        "no listing without a claim"
    );
    let dv: Vec<String> = w
        .fakes
        .dataverse
        .requests()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    // The poll query, the opportunity's lookups, account, contact, currency, the claim, the link.
    assert_eq!(
        dv,
        ["GET", "GET", "GET", "GET", "GET", "PATCH", "PATCH"],
        "{dv:?}"
    );
}
