//! Salesforce setup and its checks against the local Salesforce fake (an org without the
//! connector's fields): fields, permission set, field permissions and assignment created once;
//! the fields visible to the integration user afterwards; a second run that writes nothing;
//! repairs of a partial setup; refusals that name the missing permission; `verify` before and
//! after setup and with a broken stage table; logs free of secrets.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use referral_connector::{
    config::HttpSettings,
    crm::salesforce::{
        SalesforceClient, SalesforceSettings,
        setup::{
            CONNECTOR_FIELDS, Finding, PERMISSION_SET_LABEL, PERMISSION_SET_NAME, SetupSummary,
            setup, verify,
        },
    },
    http::RetryPolicy,
};
use serde_json::{Value, json};
use testkit::fakes::{FakeSalesforce, Fault};

fn client(sf: &FakeSalesforce) -> SalesforceClient {
    let vars: HashMap<&str, String> = [
        ("SALESFORCE_URL", sf.base_url()),
        ("SALESFORCE_CLIENT_ID", sf.client_id()),
        ("SALESFORCE_CLIENT_SECRET", sf.client_secret()),
    ]
    .into_iter()
    .collect();
    let settings =
        SalesforceSettings::from_lookup(|name| vars.get(name).cloned()).expect("settings");
    let http = referral_connector::http::client(&HttpSettings::default()).expect("http client");
    SalesforceClient::new(
        http,
        &settings,
        RetryPolicy::new(Duration::from_secs(2), Duration::from_millis(5)),
    )
    .expect("client")
}

async fn run_setup(client: &SalesforceClient) -> (SetupSummary, String) {
    let mut out = Vec::new();
    let summary = setup(client, &mut out).await.expect("setup");
    (summary, String::from_utf8(out).expect("utf8"))
}

/// What the fake holds of the setup: custom fields, permission sets, field permissions,
/// assignments.
fn setup_records(sf: &FakeSalesforce) -> Vec<Vec<Value>> {
    [
        "CustomField",
        "PermissionSet",
        "FieldPermissions",
        "PermissionSetAssignment",
    ]
    .iter()
    .map(|o| sf.records(o))
    .collect()
}

/// Requests that could change the org (everything but reads and the token).
fn write_requests(sf: &FakeSalesforce) -> usize {
    sf.requests()
        .iter()
        .filter(|r| r.method != "GET" && !r.decoded_path().contains("/oauth2/token"))
        .count()
}

fn visible_fields(describe: &Value) -> Vec<String> {
    describe["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::to_owned))
        .collect()
}

/// What `check` would ask about: every connector field plus standard ones, per object.
fn mapping_fields() -> Vec<(&'static str, Vec<String>)> {
    ["Lead", "Opportunity"]
        .into_iter()
        .map(|object| {
            let mut fields: Vec<String> = CONNECTOR_FIELDS
                .iter()
                .filter(|f| f.object == object)
                .map(|f| f.name.to_owned())
                .collect();
            fields.push(
                if object == "Lead" {
                    "LastName"
                } else {
                    "StageName"
                }
                .to_owned(),
            );
            (object, fields)
        })
        .collect()
}

fn failures(findings: &[Finding]) -> Vec<String> {
    findings
        .iter()
        .filter_map(|f| {
            f.result
                .as_ref()
                .err()
                .map(|p| format!("{}: {} / {}", f.what, p.problem, p.fix))
        })
        .collect()
}

#[tokio::test]
async fn setup_creates_the_fields_the_permission_set_its_grants_and_the_assignment() {
    let sf = FakeSalesforce::start().await;
    let client = client(&sf);
    let (summary, out) = run_setup(&client).await;

    let fields = sf.records("CustomField");
    assert_eq!(fields.len(), CONNECTOR_FIELDS.len(), "{out}");
    for f in &CONNECTOR_FIELDS {
        let full = f.full_name();
        assert!(
            fields.iter().any(|r| r["FullName"] == full.as_str()),
            "{full} created"
        );
        assert!(out.contains(&format!("created field {full} (")), "{out}");
    }

    let sets = sf.records("PermissionSet");
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0]["Name"], PERMISSION_SET_NAME);
    assert_eq!(sets[0]["Label"], PERMISSION_SET_LABEL);
    let set_id = sets[0]["Id"].as_str().expect("permission set id");

    let grants = sf.records("FieldPermissions");
    assert_eq!(grants.len(), CONNECTOR_FIELDS.len(), "{grants:?}");
    for f in &CONNECTOR_FIELDS {
        let grant = grants
            .iter()
            .find(|g| g["Field"] == f.full_name().as_str())
            .unwrap_or_else(|| panic!("no grant on {}", f.full_name()));
        assert_eq!(grant["ParentId"], set_id);
        assert_eq!(grant["SobjectType"], f.object);
        assert_eq!(grant["PermissionsRead"], true);
        assert_eq!(grant["PermissionsEdit"], true);
    }

    let assignments = sf.records("PermissionSetAssignment");
    assert_eq!(assignments.len(), 1, "{assignments:?}");
    assert_eq!(assignments[0]["PermissionSetId"], set_id);
    assert_eq!(assignments[0]["AssigneeId"], sf.integration_user_id());
    assert!(
        out.contains(&format!(
            "assigned permission set {PERMISSION_SET_NAME} to user {}",
            sf.integration_user_id()
        )),
        "{out}"
    );

    assert_eq!(
        summary,
        SetupSummary {
            fields_created: CONNECTOR_FIELDS.len(),
            permission_set_created: true,
            field_permissions_created: CONNECTOR_FIELDS.len(),
            field_permissions_fixed: 0,
            assignment_created: true,
        }
    );
    assert_eq!(
        summary.writes(),
        write_requests(&sf),
        "one request per write"
    );
    assert_eq!(
        sf.count("POST", "/tooling/sobjects/CustomField"),
        CONNECTOR_FIELDS.len()
    );
}

#[tokio::test]
async fn after_setup_the_integration_user_sees_the_fields_with_their_metadata() {
    let sf = FakeSalesforce::start().await;
    let client = client(&sf);
    for object in ["Lead", "Opportunity"] {
        let names = visible_fields(&client.describe(object).await.expect("describe"));
        for f in CONNECTOR_FIELDS.iter().filter(|f| f.object == object) {
            assert!(
                !names.iter().any(|n| n == f.name),
                "{} before setup",
                f.name
            );
        }
    }
    run_setup(&client).await;
    for object in ["Lead", "Opportunity"] {
        let describe = client.describe(object).await.expect("describe");
        let names = visible_fields(&describe);
        for f in CONNECTOR_FIELDS.iter().filter(|f| f.object == object) {
            assert!(names.iter().any(|n| n == f.name), "{} after setup", f.name);
        }
        let by_name = |name: &str| {
            describe["fields"]
                .as_array()
                .and_then(|a| a.iter().find(|f| f["name"] == name))
                .cloned()
                .unwrap_or_else(|| panic!("{object}.{name}"))
        };
        let key = by_name("Partner_Center_Referral_Id__c");
        assert_eq!(key["externalId"], true);
        assert_eq!(key["unique"], true);
        assert_eq!(key["caseSensitive"], false);
        assert_eq!(key["length"], 36);
        assert_eq!(by_name("Partner_Center_Link__c")["type"], "url");
        assert_eq!(by_name("Partner_Center_Audit__c")["length"], 32768);
        if object == "Opportunity" {
            let help = by_name("How_can_Microsoft_help__c");
            assert_eq!(help["restrictedPicklist"], true);
            let values: Vec<&str> = help["picklistValues"]
                .as_array()
                .expect("values")
                .iter()
                .filter_map(|v| v["value"].as_str())
                .collect();
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let mut expected = testkit::fakes::ASSISTANCE_CODES.to_vec();
            expected.sort_unstable();
            assert_eq!(sorted, expected);
            assert_eq!(by_name("Sync_with_Partner_Center__c")["type"], "boolean");
        }
    }
    // The sync can now write the fields.
    let id = client
        .create(
            "Opportunity",
            &json!({"Name": "Contoso", "StageName": "Prospecting", "CloseDate": "2027-01-31",
                "Partner_Center_Referral_Id__c": "5f0c2a9e-1b2c-4d5e-8f90-0123456789ab",
                "How_can_Microsoft_help__c": "ProofOfConceptOrDemo",
                "Sync_with_Partner_Center__c": true}),
            &[],
        )
        .await
        .expect("create with the connector fields");
    assert!(!id.is_empty());
}

#[tokio::test]
async fn a_second_run_writes_nothing_and_says_so() {
    let sf = FakeSalesforce::start().await;
    let client = client(&sf);
    let (first, _) = run_setup(&client).await;
    assert!(first.writes() > 0);
    let before = setup_records(&sf);
    let writes_before = sf.write_count();
    let requests_before = write_requests(&sf);

    let (second, out) = run_setup(&client).await;
    assert_eq!(second, SetupSummary::default(), "{out}");
    assert_eq!(second.writes(), 0);
    assert_eq!(setup_records(&sf), before, "records unchanged");
    assert_eq!(sf.write_count(), writes_before);
    assert_eq!(write_requests(&sf), requests_before, "no write request");
    for f in &CONNECTOR_FIELDS {
        assert!(
            out.contains(&format!("field {} exists", f.full_name())),
            "{out}"
        );
    }
    assert!(
        out.contains(&format!("permission set {PERMISSION_SET_NAME} exists")),
        "{out}"
    );
    assert!(out.contains("is assigned to user"), "{out}");
    assert!(out.contains("nothing to change"), "{out}");
    assert!(!out.contains("created"), "{out}");
}

#[tokio::test]
async fn setup_repairs_a_partial_setup() {
    let sf = FakeSalesforce::start().await;
    let client = client(&sf);
    run_setup(&client).await;
    let grants = sf.records("FieldPermissions");
    let read_only = grants[0]["Id"].as_str().expect("id").to_owned();
    let read_only_field = grants[0]["Field"].as_str().expect("field").to_owned();
    let removed = grants[1]["Field"].as_str().expect("field").to_owned();
    sf.set_field(&read_only, "PermissionsEdit", json!(false));
    sf.delete(grants[1]["Id"].as_str().expect("id"));
    let assignment = sf.records("PermissionSetAssignment")[0]["Id"]
        .as_str()
        .expect("id")
        .to_owned();
    sf.delete(&assignment);

    let (summary, out) = run_setup(&client).await;
    assert_eq!(
        summary,
        SetupSummary {
            field_permissions_created: 1,
            field_permissions_fixed: 1,
            assignment_created: true,
            ..SetupSummary::default()
        },
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "fixed field permission {read_only_field} in {PERMISSION_SET_NAME}: read, edit (was read only)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("created field permission {removed} (read, edit)")),
        "{out}"
    );
    let fixed = sf.get(&read_only).expect("grant");
    assert_eq!(fixed["PermissionsEdit"], true);
    assert_eq!(fixed["PermissionsRead"], true);
    assert_eq!(sf.records("FieldPermissions").len(), CONNECTOR_FIELDS.len());
    assert_eq!(sf.records("PermissionSetAssignment").len(), 1);
    assert_eq!(sf.records("PermissionSet").len(), 1);
    assert_eq!(sf.records("CustomField").len(), CONNECTOR_FIELDS.len());
}

#[tokio::test]
async fn a_refused_field_create_names_the_permission_the_user_needs() {
    let sf = FakeSalesforce::start().await;
    let client = client(&sf);
    sf.inject(
        Fault::status(400)
            .on("POST", "/tooling/sobjects/CustomField")
            .body(
                json!([{"message": "insufficient access rights on cross-reference id",
                    "errorCode": "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY"}])
                .to_string(),
            ),
    );
    let mut out = Vec::new();
    let error = setup(&client, &mut out)
        .await
        .expect_err("the create is refused")
        .to_string();
    assert!(error.contains("Customize Application"), "{error}");
    assert!(
        error.contains(&format!(
            "creating field {}",
            CONNECTOR_FIELDS[0].full_name()
        )),
        "{error}"
    );
    assert!(
        sf.records("PermissionSet").is_empty(),
        "stopped at the failure"
    );
}

#[tokio::test]
async fn a_refused_assignment_names_the_permission_the_user_needs() {
    let sf = FakeSalesforce::start().await;
    let client = client(&sf);
    sf.inject(
        Fault::status(400)
            .on("POST", "/sobjects/PermissionSetAssignment")
            .body(
                json!([{"message": "insufficient access rights on object id",
                    "errorCode": "INSUFFICIENT_ACCESS_OR_READONLY"}])
                .to_string(),
            ),
    );
    let mut out = Vec::new();
    let error = setup(&client, &mut out)
        .await
        .expect_err("the assignment is refused")
        .to_string();
    assert!(error.contains("Assign Permission Sets"), "{error}");
    assert!(error.contains(sf.integration_user_id()), "{error}");
    assert!(sf.records("PermissionSetAssignment").is_empty());
}

#[tokio::test]
async fn verify_fails_before_setup_naming_the_fields_and_passes_after() {
    let sf = FakeSalesforce::start().await;
    let client = client(&sf);
    let fields = mapping_fields();

    let before = verify(&client, &fields, "Prospecting").await;
    let failed = failures(&before);
    assert_eq!(failed.len(), CONNECTOR_FIELDS.len(), "{failed:#?}");
    for f in &CONNECTOR_FIELDS {
        let what = format!("Salesforce {}", f.full_name());
        let line = failed
            .iter()
            .find(|l| l.starts_with(&format!("{what}:")))
            .unwrap_or_else(|| panic!("no failure for {what}: {failed:#?}"));
        assert!(line.contains("setup salesforce"), "{line}");
    }
    assert!(
        before
            .iter()
            .any(|f| f.what == "Salesforce sign-in" && f.passed())
    );

    run_setup(&client).await;
    let writes = sf.write_count();
    let after = verify(&client, &fields, "Prospecting").await;
    assert!(failures(&after).is_empty(), "{:#?}", failures(&after));
    for what in [
        "Salesforce sign-in",
        "Salesforce Lead fields",
        "Salesforce Opportunity fields",
        "Salesforce won stage",
        "Salesforce lost stage",
        "Salesforce new-opportunity stage",
    ] {
        assert!(after.iter().any(|f| f.what == what), "{what}: {after:?}");
    }
    assert_eq!(sf.write_count(), writes, "verify writes nothing");
}

#[tokio::test]
async fn verify_fails_when_the_org_has_no_active_won_stage_or_the_new_stage_is_closed() {
    let sf = FakeSalesforce::start().await.with_connector_fields();
    let client = client(&sf);
    for stage in sf.records("OpportunityStage") {
        if stage["IsWon"] == true {
            sf.set_field(stage["Id"].as_str().expect("id"), "IsActive", json!(false));
        }
    }
    let findings = verify(&client, &mapping_fields(), "Closed Lost").await;
    let failed = failures(&findings);
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with("Salesforce won stage:") && l.contains("Closed/Won")),
        "{failed:#?}"
    );
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with("Salesforce new-opportunity stage:")
                && l.contains("closed")
                && l.contains("Prospecting")),
        "{failed:#?}"
    );
}

#[tokio::test]
async fn verify_reports_a_sign_in_failure_and_stops() {
    let sf = FakeSalesforce::start().await;
    let client = client(&sf);
    sf.set_client_credentials("3MVG9other", "other-secret");
    let findings = verify(&client, &mapping_fields(), "Prospecting").await;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].what, "Salesforce sign-in");
    assert!(!findings[0].passed());
}

/// A log sink writing into a shared buffer.
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn setup_and_verify_log_no_token_or_secret() {
    let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = {
        let buffer = buffer.clone();
        move || LogSink(buffer.clone())
    };
    let _guard = tracing::subscriber::set_default(referral_connector::telemetry::get_subscriber(
        "trace", sink,
    ));
    // Callsites first hit by tests on other threads cached "no subscriber"; look again.
    tracing::callsite::rebuild_interest_cache();
    let sf = FakeSalesforce::start().await;
    let client = client(&sf);
    sf.expire_tokens_after(3);
    run_setup(&client).await;
    verify(&client, &mapping_fields(), "Prospecting").await;

    let logs = String::from_utf8(buffer.lock().expect("logs").clone()).expect("utf8");
    assert!(
        logs.contains("obtained a Salesforce access token"),
        "{logs}"
    );
    assert!(logs.contains("getting a new token"), "{logs}");
    let mut secrets = vec![sf.client_secret()];
    for request in sf.requests() {
        secrets.extend(request.bearer().map(str::to_owned));
    }
    assert!(secrets.len() > 2, "tokens were collected");
    assert!(sf.tokens_issued() >= 2, "the session expired once");
    for secret in secrets {
        assert!(!logs.contains(&secret), "{secret} appears in the logs");
    }
}
