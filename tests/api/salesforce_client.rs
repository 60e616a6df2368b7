//! The Salesforce client against the local Salesforce fake: the shared token (single flight,
//! reuse, one re-fetch on session expiry), both grants and their errors, upsert outcomes,
//! error classes, the usage header, query paging, and logs free of secrets.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use referral_connector::{
    config::HttpSettings,
    crm::{
        CrmError, RecordKind,
        salesforce::{SalesforceClient, SalesforceError, SalesforceSettings, UpsertOutcome},
    },
    http::RetryPolicy,
};
use serde_json::{Value, json};
use testkit::fakes::{FakeSalesforce, Fault, REFERRAL_ID_FIELD};

const REFERRAL: &str = "5f0c2a9e-1b2c-4d5e-8f90-0123456789ab";
const TOKEN_PATH: &str = "/services/oauth2/token";

fn settings(sf: &FakeSalesforce, overrides: &[(&str, String)]) -> SalesforceSettings {
    let mut vars: HashMap<String, String> = [
        ("SALESFORCE_URL", sf.base_url()),
        ("SALESFORCE_CLIENT_ID", sf.client_id()),
        ("SALESFORCE_CLIENT_SECRET", sf.client_secret()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in overrides {
        vars.insert((*k).to_owned(), v.clone());
    }
    SalesforceSettings::from_lookup(|name| vars.get(name).cloned()).expect("settings")
}

fn client_with(settings: &SalesforceSettings, budget: Duration) -> SalesforceClient {
    let http = referral_connector::http::client(&HttpSettings::default()).expect("http client");
    SalesforceClient::new(
        http,
        settings,
        RetryPolicy::new(budget, Duration::from_millis(5)),
    )
    .expect("client")
}

/// A client with client credentials and a short retry budget.
fn client(sf: &FakeSalesforce) -> SalesforceClient {
    client_with(&settings(sf, &[]), Duration::from_secs(2))
}

/// A client that never retries in-process.
fn no_retry_client(sf: &FakeSalesforce) -> SalesforceClient {
    client_with(&settings(sf, &[]), Duration::ZERO)
}

async fn org() -> FakeSalesforce {
    FakeSalesforce::start().await.with_connector_fields()
}

fn lead(last_name: &str) -> Value {
    json!({"LastName": last_name, "Company": "Contoso"})
}

/// An RSA key made for this test: (private key PEM, public key PEM).
fn rsa_key() -> (String, Vec<u8>) {
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa"))
        .expect("pkey");
    let private = String::from_utf8(key.private_key_to_pem_pkcs8().expect("pem")).expect("utf8");
    (private, key.public_key_to_pem().expect("public pem"))
}

fn jwt_settings(sf: &FakeSalesforce, private_pem: &str) -> SalesforceSettings {
    settings(
        sf,
        &[
            ("SALESFORCE_CLIENT_SECRET", String::new()),
            ("SALESFORCE_USERNAME", sf.username()),
            ("SALESFORCE_PRIVATE_KEY", private_pem.to_owned()),
        ],
    )
}

#[tokio::test]
async fn ten_concurrent_callers_share_one_token_request() {
    let sf = org().await;
    let client = client(&sf);
    let calls = (0..10).map(|_| client.describe("Lead"));
    for result in futures::future::join_all(calls).await {
        result.expect("describe");
    }
    assert_eq!(sf.tokens_issued(), 1);
    assert_eq!(sf.count("POST", TOKEN_PATH), 1);
}

#[tokio::test]
async fn the_cached_token_is_reused() {
    let sf = org().await;
    let client = client(&sf);
    client.get("/limits").await.expect("limits");
    client.describe("Lead").await.expect("describe");
    client.query("SELECT Id FROM Lead").await.expect("query");
    client
        .create("Lead", &lead("Reuse"), &[])
        .await
        .expect("create");
    assert_eq!(sf.tokens_issued(), 1);
}

#[tokio::test]
async fn a_session_that_expires_mid_run_costs_exactly_one_new_token() {
    let sf = org().await;
    let client = client(&sf);
    sf.expire_tokens_after(2);
    for _ in 0..5 {
        client.describe("Lead").await.expect("describe");
    }
    assert_eq!(sf.tokens_issued(), 2);
    sf.expire_tokens();
    let id = client
        .create("Lead", &lead("After expiry"), &[])
        .await
        .expect("a create refused with 401 is sent again with the new token");
    assert_eq!(sf.tokens_issued(), 3);
    assert_eq!(sf.records("Lead").len(), 1, "{id} created once");
}

#[tokio::test]
async fn concurrent_callers_with_an_expired_token_share_one_new_one() {
    let sf = org().await;
    let client = client(&sf);
    client.describe("Lead").await.expect("describe");
    sf.expire_tokens();
    let calls = (0..10).map(|_| client.describe("Lead"));
    for result in futures::future::join_all(calls).await {
        result.expect("describe after expiry");
    }
    assert_eq!(sf.tokens_issued(), 2);
}

#[tokio::test]
async fn client_credentials_errors_are_permanent_and_name_the_fix() {
    let sf = org().await;
    let cases: [(&[(&str, String)], &str); 2] = [
        (
            &[("SALESFORCE_CLIENT_SECRET", "wrong-secret".to_owned())],
            "Consumer Secret",
        ),
        (
            &[("SALESFORCE_CLIENT_ID", "3MVG9unknown".to_owned())],
            "Consumer Key",
        ),
    ];
    for (overrides, fix) in cases {
        let client = client_with(&settings(&sf, overrides), Duration::from_secs(2));
        let error = client.describe("Lead").await.expect_err("refused");
        assert!(matches!(error, SalesforceError::Token { .. }), "{error:?}");
        assert!(!error.is_transient(), "{error}");
        let text = error.to_string();
        assert!(text.contains(fix), "{text}");
        assert!(!text.contains("wrong-secret") && !text.contains(&sf.client_secret()));
        let crm = CrmError::from(error);
        assert!(!crm.is_transient(), "{crm}");
    }
    assert_eq!(
        sf.count("POST", TOKEN_PATH),
        2,
        "permanent errors are not retried"
    );
    sf.set_run_as_user(false);
    let error = client(&sf)
        .authenticate()
        .await
        .expect_err("no Run As user");
    assert!(error.to_string().contains("Run As"), "{error}");
    assert!(!error.is_transient());
    assert_eq!(sf.tokens_issued(), 0);
}

#[tokio::test]
async fn a_token_endpoint_outage_is_transient_and_retried() {
    let sf = org().await;
    sf.inject(Fault::status(503).on("POST", TOKEN_PATH));
    client(&sf).describe("Lead").await.expect("retried");
    assert_eq!(sf.count("POST", TOKEN_PATH), 2);
    sf.inject_html(503, TOKEN_PATH, 1);
    let error = no_retry_client(&sf)
        .authenticate()
        .await
        .expect_err("an HTML page");
    assert!(error.is_transient(), "{error}");
    assert!(error.to_string().contains("HTML"), "{error}");
}

#[tokio::test]
async fn jwt_bearer_with_a_key_made_for_the_test() {
    let sf = org().await;
    let (private_pem, public_pem) = rsa_key();
    sf.register_jwt_certificate(&public_pem);
    let client = client_with(&jwt_settings(&sf, &private_pem), Duration::from_secs(2));
    client
        .describe("Lead")
        .await
        .expect("describe with a JWT token");
    client.describe("Opportunity").await.expect("again");
    assert_eq!(sf.tokens_issued(), 1);
    let token_requests = sf.requests_matching("POST", TOKEN_PATH);
    assert_eq!(token_requests.len(), 1);
    let form = &token_requests[0];
    assert_eq!(
        form.form_value("grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    assert!(form.form_value("client_secret").is_none());

    // The same key, not pre-authorized; then a key whose certificate is not on the app.
    sf.set_jwt_approved(false);
    let error = client_with(&jwt_settings(&sf, &private_pem), Duration::from_secs(2))
        .authenticate()
        .await
        .expect_err("not approved");
    assert!(error.to_string().contains("pre-authorized"), "{error}");
    assert!(!error.is_transient());
    sf.set_jwt_approved(true);
    let (other_key, _) = rsa_key();
    let error = client_with(&jwt_settings(&sf, &other_key), Duration::from_secs(2))
        .authenticate()
        .await
        .expect_err("unknown certificate");
    assert!(error.to_string().contains("certificate"), "{error}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn upsert_answers_created_updated_and_multiple() {
    let sf = org().await;
    let client = client(&sf);
    let auto_assign = [("Sforce-Auto-Assign", "FALSE")];
    let created = client
        .upsert(
            "Lead",
            REFERRAL_ID_FIELD,
            REFERRAL,
            &lead("First"),
            &auto_assign,
        )
        .await
        .expect("create");
    let UpsertOutcome::Created { id } = created else {
        panic!("{created:?}")
    };
    let updated = client
        .upsert(
            "Lead",
            REFERRAL_ID_FIELD,
            REFERRAL,
            &lead("Second"),
            &auto_assign,
        )
        .await
        .expect("update");
    assert_eq!(
        updated,
        UpsertOutcome::Updated {
            id: Some(id.clone())
        }
    );
    assert_eq!(sf.get(&id).expect("record")["LastName"], "Second");
    sf.set_update_returns_204(true);
    let updated = client
        .upsert("Lead", REFERRAL_ID_FIELD, REFERRAL, &lead("Third"), &[])
        .await
        .expect("update 204");
    assert_eq!(updated, UpsertOutcome::Updated { id: None });
    assert_eq!(
        sf.auto_assign_headers("Lead")[..2],
        [Some("FALSE".to_owned()), Some("FALSE".to_owned())]
    );

    let error = client
        .upsert_update_only(
            "Lead",
            REFERRAL_ID_FIELD,
            "no-such-referral",
            &lead("X"),
            &[],
        )
        .await
        .expect_err("update-only creates nothing");
    assert!(error.is_not_found() && !error.is_transient(), "{error}");
    assert!(
        sf.find_by_referral_id("Lead", "no-such-referral")
            .is_empty()
    );
    let updated = client
        .upsert_update_only("Lead", REFERRAL_ID_FIELD, REFERRAL, &lead("Third"), &[])
        .await
        .expect("update-only update");
    assert_eq!(updated, UpsertOutcome::Updated { id: None });
    assert!(
        sf.requests_matching("PATCH", "/sobjects/Lead/")
            .iter()
            .any(|r| r.query_value("updateOnly").as_deref() == Some("true"))
    );

    let mut twin = lead("Twin");
    twin[REFERRAL_ID_FIELD] = json!(REFERRAL);
    let twin_id = sf.insert("Lead", twin);
    let multiple = client
        .upsert("Lead", REFERRAL_ID_FIELD, REFERRAL, &lead("Fourth"), &[])
        .await
        .expect("300 is an outcome");
    let UpsertOutcome::Multiple(mut ids) = multiple else {
        panic!("{multiple:?}")
    };
    ids.sort();
    let mut expected = vec![id.clone(), twin_id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let error = client
        .get_by_external_id("Lead", REFERRAL_ID_FIELD, REFERRAL, &["Id"])
        .await
        .expect_err("300 on a read");
    let text = error.to_string();
    assert!(text.contains(&id) && text.contains(&twin_id), "{text}");
    assert!(!error.is_transient());
    assert!(
        client
            .get_by_external_id("Lead", REFERRAL_ID_FIELD, "no-such-referral", &["Id"])
            .await
            .expect("read")
            .is_none()
    );
    let error = client
        .get_by_external_id("Lead", "No_Such_Field__c", REFERRAL, &["Id"])
        .await
        .expect_err("an unknown external-id field is not \"no record\"");
    assert!(error.to_string().contains("No_Such_Field__c"), "{error}");
    let record = client
        .get_record("Lead", &id, &["Id", "LastName"])
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(record["LastName"], "Third");
}

#[tokio::test]
async fn a_lost_create_race_is_duplicate_value() {
    let sf = org().await;
    let client = client(&sf);
    sf.race_next_create("Lead", REFERRAL, 1);
    let error = client
        .upsert("Lead", REFERRAL_ID_FIELD, REFERRAL, &lead("Loser"), &[])
        .await
        .expect_err("the race is lost");
    let SalesforceError::DuplicateValue {
        object,
        field,
        existing_id,
        ..
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!(object, "Lead");
    assert_eq!(field.as_deref(), Some(REFERRAL_ID_FIELD));
    let winner = sf.find_by_referral_id("Lead", REFERRAL);
    assert_eq!(winner.len(), 1);
    assert_eq!(existing_id.as_deref(), winner[0]["Id"].as_str());
    assert_eq!(
        sf.count("PATCH", "/sobjects/Lead/"),
        1,
        "not retried in-process"
    );
    assert!(matches!(
        CrmError::from(error),
        CrmError::Conflict(RecordKind::Lead)
    ));
    let again = client
        .upsert("Lead", REFERRAL_ID_FIELD, REFERRAL, &lead("Loser"), &[])
        .await
        .expect("the retry updates");
    assert!(matches!(again, UpsertOutcome::Updated { .. }), "{again:?}");
}

#[tokio::test]
async fn transient_answers_are_transient() {
    let sf = org().await;
    let client = no_retry_client(&sf);
    client.authenticate().await.expect("token");
    let faults = [
        (
            FakeSalesforce::request_limit_fault(),
            Some("REQUEST_LIMIT_EXCEEDED"),
        ),
        (
            FakeSalesforce::server_unavailable_fault(),
            Some("SERVER_UNAVAILABLE"),
        ),
        (
            FakeSalesforce::unable_to_lock_row_fault(),
            Some("UNABLE_TO_LOCK_ROW"),
        ),
        (Fault::status(500), Some("UNKNOWN_EXCEPTION")),
        (Fault::connection_reset(), None),
    ];
    for (fault, code) in faults {
        sf.inject(fault.on("PATCH", "/sobjects/Lead/"));
        let error = client
            .upsert("Lead", REFERRAL_ID_FIELD, REFERRAL, &lead("T"), &[])
            .await
            .expect_err("fault");
        assert_eq!(error.code(), code, "{error}");
        assert!(error.is_transient(), "{error}");
        let crm = CrmError::from(error);
        assert!(crm.is_transient(), "{crm}");
    }
    sf.inject_html(503, "/sobjects/Lead/describe", 1);
    let error = client.describe("Lead").await.expect_err("HTML");
    assert!(
        matches!(error, SalesforceError::Unparsed { html: true, .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert!(error.to_string().contains("503"), "{error}");
    assert!(CrmError::from(error).is_transient());
}

#[tokio::test]
async fn transient_failures_are_retried_in_process_but_creates_and_the_daily_limit_are_not() {
    let sf = org().await;
    let client = client(&sf);
    client.authenticate().await.expect("token");
    sf.inject(FakeSalesforce::unable_to_lock_row_fault().on("PATCH", "/sobjects/Lead/"));
    sf.inject_html(503, "/sobjects/Lead/Partner", 1);
    client
        .upsert("Lead", REFERRAL_ID_FIELD, REFERRAL, &lead("Retried"), &[])
        .await
        .expect("retried past the lock and the HTML page");
    assert_eq!(sf.count("PATCH", "/sobjects/Lead/"), 3);

    sf.inject(FakeSalesforce::server_unavailable_fault().on("POST", "/sobjects/Lead"));
    let error = client
        .create("Lead", &lead("Once"), &[])
        .await
        .expect_err("a create is not repeated");
    assert!(error.is_transient(), "{error}");
    assert_eq!(sf.count("POST", "/sobjects/Lead"), 1);

    sf.inject(FakeSalesforce::request_limit_fault().on("GET", "/describe"));
    let error = client.describe("Lead").await.expect_err("daily limit");
    assert!(error.is_transient(), "{error}");
    assert_eq!(
        sf.count("GET", "/describe"),
        1,
        "the daily limit is waited out later"
    );
}

#[tokio::test]
async fn permanent_answers_are_permanent_and_name_the_fields() {
    let sf = org().await;
    let client = client(&sf);
    let created = client
        .create("Lead", &lead("Base"), &[])
        .await
        .expect("create");

    let mut cases: Vec<(SalesforceError, &str, &[&str])> = Vec::new();
    let e = client
        .create("Lead", &json!({"FirstName": "Ada"}), &[])
        .await
        .expect_err("missing");
    cases.push((e, "REQUIRED_FIELD_MISSING", &["LastName", "Company"]));
    let mut long = lead("Long");
    long["FirstName"] = json!("x".repeat(41));
    let e = client.create("Lead", &long, &[]).await.expect_err("long");
    cases.push((e, "STRING_TOO_LONG", &["FirstName"]));
    let e = client
        .update("Lead", &created, &json!({"Status": "Bogus"}), &[])
        .await
        .expect_err("picklist");
    cases.push((e, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", &["Status"]));
    let e = client
        .update("Lead", &created, &json!({"Bogus__c": 1}), &[])
        .await
        .expect_err("field");
    cases.push((e, "INVALID_FIELD", &["Bogus__c"]));
    sf.inject(
        Fault::status(400).on("PATCH", "/sobjects/Lead/").body(
            json!([{"message": "Description must mention the partner",
                    "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "fields": ["Description"]}])
            .to_string(),
        ),
    );
    let e = client
        .update("Lead", &created, &json!({"Description": "x"}), &[])
        .await
        .expect_err("validation");
    cases.push((e, "FIELD_CUSTOM_VALIDATION_EXCEPTION", &["Description"]));
    let converted = client
        .create("Lead", &lead("Converted"), &[])
        .await
        .expect("create");
    sf.convert_lead(&converted);
    let e = client
        .update("Lead", &converted, &json!({"Description": "x"}), &[])
        .await
        .expect_err("converted");
    cases.push((e, "CANNOT_UPDATE_CONVERTED_LEAD", &[]));
    let deleted = match client
        .upsert("Lead", REFERRAL_ID_FIELD, REFERRAL, &lead("Deleted"), &[])
        .await
        .expect("create")
    {
        UpsertOutcome::Created { id } => id,
        other => panic!("{other:?}"),
    };
    sf.delete(&deleted);
    let e = client
        .upsert("Lead", REFERRAL_ID_FIELD, REFERRAL, &lead("Deleted"), &[])
        .await
        .expect_err("deleted");
    cases.push((e, "ENTITY_IS_DELETED", &[]));

    for (error, code, fields) in cases {
        assert_eq!(error.code(), Some(code), "{error}");
        assert!(!error.is_transient(), "{error}");
        let text = error.to_string();
        for field in fields {
            assert!(text.contains(field), "{text}");
        }
        match CrmError::from(error) {
            CrmError::Rejected { message, .. } => assert!(message.contains(code), "{message}"),
            other => panic!("{code}: {other:?}"),
        }
    }
    let missing = client
        .get("/sobjects/Lead/00Q000000000000AAA")
        .await
        .expect_err("no such record");
    assert!(
        missing.is_not_found() && !missing.is_transient(),
        "{missing}"
    );
}

#[tokio::test]
async fn the_usage_header_and_the_server_clock_are_kept() {
    let sf = org().await;
    let client = client(&sf);
    assert_eq!(client.usage(), None);
    assert!(!client.over_budget(80));
    sf.set_api_limit(100);
    sf.set_api_usage(78);
    client.describe("Lead").await.expect("describe");
    assert_eq!(client.usage(), Some((79, 100)));
    assert!(!client.over_budget(80));
    client.describe("Lead").await.expect("describe");
    assert_eq!(client.usage(), Some((80, 100)));
    assert!(client.over_budget(80));
    assert!(!client.over_budget(81));
    let now = time::OffsetDateTime::now_utc();
    let server = client.server_time().expect("Date header");
    assert!(
        (server - now).abs() < time::Duration::seconds(60),
        "{server}"
    );
    sf.advance_clock_ms(3_600_000);
    client.describe("Lead").await.expect("describe");
    let later = client.server_time().expect("Date header");
    assert!(later - server >= time::Duration::minutes(59), "{later}");
    sf.set_api_usage(100);
    let error = client
        .describe("Lead")
        .await
        .expect_err("allocation used up");
    assert_eq!(error.code(), Some("REQUEST_LIMIT_EXCEEDED"));
    assert_eq!(client.usage(), Some((100, 100)));
    assert!(client.over_budget(100));
}

#[tokio::test]
async fn a_query_follows_next_records_url() {
    let sf = org().await;
    sf.set_batch_size(2);
    for i in 0..5 {
        sf.insert("Lead", lead(&format!("Paged {i}")));
    }
    let client = client(&sf);
    let records = client
        .query("SELECT Id, LastName FROM Lead")
        .await
        .expect("query");
    assert_eq!(records.len(), 5);
    let mut names: Vec<&str> = records
        .iter()
        .filter_map(|r| r.get("LastName").and_then(Value::as_str))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["Paged 0", "Paged 1", "Paged 2", "Paged 3", "Paged 4"]
    );
    assert_eq!(sf.count("GET", "/query"), 3);
    let error = client.query("SELEKT nothing").await.expect_err("malformed");
    assert_eq!(error.code(), Some("MALFORMED_QUERY"));
    assert!(!error.is_transient());
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_secret_assertion_or_key_appears_in_the_logs() {
    let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = {
        let buffer = buffer.clone();
        move || LogSink(buffer.clone())
    };
    let _guard = tracing::subscriber::set_default(referral_connector::telemetry::get_subscriber(
        "trace", sink,
    ));
    let sf = org().await;
    let client = client(&sf);
    sf.expire_tokens_after(1);
    sf.inject(FakeSalesforce::unable_to_lock_row_fault().on("PATCH", "/sobjects/Lead/"));
    client
        .upsert("Lead", REFERRAL_ID_FIELD, REFERRAL, &lead("Logged"), &[])
        .await
        .expect("upsert");
    client
        .describe("Lead")
        .await
        .expect("describe after expiry");
    let _ = client_with(
        &settings(
            &sf,
            &[("SALESFORCE_CLIENT_SECRET", "wrong-secret".to_owned())],
        ),
        Duration::ZERO,
    )
    .authenticate()
    .await;
    let (private_pem, public_pem) = rsa_key();
    sf.register_jwt_certificate(&public_pem);
    client_with(&jwt_settings(&sf, &private_pem), Duration::ZERO)
        .describe("Lead")
        .await
        .expect("JWT");

    let logs = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("obtained a Salesforce access token"),
        "{logs}"
    );
    assert!(logs.contains("UNABLE_TO_LOCK_ROW"), "the retry was logged");
    let mut secrets = vec![sf.client_secret(), "wrong-secret".to_owned()];
    for request in sf.requests() {
        secrets.extend(request.bearer().map(str::to_owned));
        secrets.extend(request.form_value("assertion"));
    }
    secrets.extend(
        private_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_owned),
    );
    assert!(secrets.len() > 10, "tokens and assertions were collected");
    for secret in secrets {
        assert!(!logs.contains(&secret), "{secret} appears in the logs");
    }
}
