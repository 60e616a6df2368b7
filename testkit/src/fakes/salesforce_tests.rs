//! End-to-end tests of the Salesforce fake over real HTTP (reqwest).

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

use super::*;
use crate::pki::{self, KeySlot};

const V: &str = "/services/data/v67.0";

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

async fn json_of(resp: Response) -> Value {
    resp.json().await.expect("JSON body")
}

async fn token_form(sf: &FakeSalesforce, form: &[(&str, &str)]) -> Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    client()
        .post(sf.url("/services/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("send token request")
}

async fn token(sf: &FakeSalesforce) -> String {
    let id = sf.client_id();
    let secret = sf.client_secret();
    let resp = token_form(
        sf,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    json_of(resp).await["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// A connected fake with the connector fields and a token.
async fn org() -> (FakeSalesforce, String) {
    let sf = FakeSalesforce::start().await.with_connector_fields();
    let t = token(&sf).await;
    (sf, t)
}

async fn call(
    sf: &FakeSalesforce,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client()
        .request(method, sf.url(&format!("{V}{path}")))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("send")
}

fn with_q(url: String, q: &str) -> String {
    let mut url = url::Url::parse(&url).expect("url");
    url.query_pairs_mut().append_pair("q", q);
    url.to_string()
}

async fn soql(sf: &FakeSalesforce, token: &str, q: &str) -> Response {
    client()
        .get(with_q(sf.url(&format!("{V}/query")), q))
        .bearer_auth(token)
        .send()
        .await
        .expect("send query")
}

fn error_code(body: &Value) -> &str {
    body[0]["errorCode"].as_str().unwrap_or("<none>")
}

fn jwt(claims: &Value, slot: KeySlot) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(br#"{"alg":"RS256"}"#);
    let body = b64.encode(claims.to_string());
    let signing_input = format!("{head}.{body}");
    let sig = pki::sign(&pki::key(slot), signing_input.as_bytes());
    format!("{signing_input}.{}", b64.encode(sig))
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn salesforce_client_credentials_grant_and_its_errors() {
    let sf = FakeSalesforce::start().await;
    let (id, secret) = (sf.client_id(), sf.client_secret());
    let resp = token_form(
        &sf,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_of(resp).await;
    assert_eq!(body["instance_url"], sf.base_url());
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "api");
    assert!(
        body["id"]
            .as_str()
            .is_some_and(|i| i.ends_with(sf.integration_user_id()))
    );
    let issued_at = body["issued_at"].as_str().expect("issued_at string");
    assert_eq!(issued_at.len(), 13, "milliseconds: {issued_at}");
    assert!(body["signature"].is_string());
    assert!(body.get("refresh_token").is_none());
    assert!(body.get("expires_in").is_none());

    // HTTP Basic works too.
    let resp = client()
        .post(sf.url("/services/oauth2/token"))
        .basic_auth(&id, Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sf.tokens_issued(), 2);

    type Form<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Form<'_>, &str, &str); 3] = [
        (
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", "wrong"),
            ],
            "invalid_client",
            "invalid client credentials",
        ),
        (
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "nope"),
                ("client_secret", &secret),
            ],
            "invalid_client_id",
            "client identifier invalid",
        ),
        (
            &[("grant_type", "password")],
            "unsupported_grant_type",
            "grant type not supported",
        ),
    ];
    for (form, error, description) in cases {
        let resp = token_form(&sf, form).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{error}");
        let body = json_of(resp).await;
        assert_eq!(body["error"], error);
        assert_eq!(body["error_description"], description);
    }

    sf.set_run_as_user(false);
    let resp = token_form(
        &sf,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(json_of(resp).await["error"], "invalid_grant");
    assert_eq!(sf.tokens_issued(), 2);
}

#[tokio::test]
async fn salesforce_jwt_bearer_grant_and_its_errors() {
    let sf = FakeSalesforce::start().await;
    let public_pem = pki::key(KeySlot::Leaf)
        .public_key_to_pem()
        .expect("public PEM");
    sf.register_jwt_certificate(&public_pem);
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({
            "iss": sf.client_id(),
            "sub": sf.username(),
            "aud": "https://login.salesforce.com",
            "exp": now_secs() + 180,
        });
        f(&mut c);
        c
    };
    let grant = "urn:ietf:params:oauth:grant-type:jwt-bearer";
    let post = |assertion: String| {
        let sf = &sf;
        async move {
            let resp = token_form(sf, &[("grant_type", grant), ("assertion", &assertion)]).await;
            let status = resp.status();
            (status, json_of(resp).await)
        }
    };

    let (status, body) = post(jwt(&claims(&|_| {}), KeySlot::Leaf)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["instance_url"], sf.base_url());
    assert!(body["access_token"].is_string());
    assert!(body.get("refresh_token").is_none());
    assert!(
        body.get("issued_at").is_none(),
        "JWT answers omit issued_at"
    );
    assert_eq!(sf.tokens_issued(), 1);

    let cases: Vec<(String, &str, &str)> = vec![
        (
            jwt(&claims(&|_| {}), KeySlot::Other),
            "invalid_grant",
            "invalid assertion",
        ),
        (
            jwt(
                &claims(&|c| c["aud"] = json!("https://example.com")),
                KeySlot::Leaf,
            ),
            "invalid_grant",
            "audience is invalid",
        ),
        (
            jwt(
                &claims(&|c| c["exp"] = json!(now_secs() - 10)),
                KeySlot::Leaf,
            ),
            "invalid_grant",
            "expired authorization code",
        ),
        (
            jwt(
                &claims(&|c| c["sub"] = json!("someone@example.com")),
                KeySlot::Leaf,
            ),
            "invalid_grant",
            "user hasn't approved this consumer",
        ),
        (
            jwt(
                &claims(&|c| c["prn"] = json!("someone@example.com")),
                KeySlot::Leaf,
            ),
            "invalid_grant",
            "user hasn't approved this consumer",
        ),
        (
            jwt(&claims(&|c| c["iss"] = json!("other-app")), KeySlot::Leaf),
            "invalid_client_id",
            "client identifier invalid",
        ),
        ("not.a.jwt".to_owned(), "invalid_grant", "invalid assertion"),
    ];
    for (assertion, error, description) in cases {
        let (status, body) = post(assertion).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{description}");
        assert_eq!(body["error"], error, "{description}");
        assert_eq!(body["error_description"], description);
    }

    sf.set_jwt_approved(false);
    let (status, body) = post(jwt(&claims(&|_| {}), KeySlot::Leaf)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error_description"],
        "user hasn't approved this consumer"
    );
    assert_eq!(sf.tokens_issued(), 1);
}

#[tokio::test]
async fn salesforce_expired_tokens_get_invalid_session_id() {
    let (sf, t) = org().await;
    let resp = call(&sf, "made-up", "GET", "/limits", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = call(&sf, &t, "GET", "/limits", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    sf.expire_tokens();
    let resp = call(&sf, &t, "GET", "/limits", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(resp).await,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    );

    // Mid-run expiry: the third call after the helper fails.
    let t = token(&sf).await;
    sf.expire_tokens_after(2);
    for want in [StatusCode::OK, StatusCode::OK, StatusCode::UNAUTHORIZED] {
        assert_eq!(call(&sf, &t, "GET", "/limits", None).await.status(), want);
    }
    let t = token(&sf).await;
    assert_eq!(
        call(&sf, &t, "GET", "/limits", None).await.status(),
        StatusCode::OK
    );
    assert_eq!(sf.tokens_issued(), 3);
}

#[tokio::test]
async fn salesforce_upsert_creates_updates_and_reports_multiple_matches() {
    let (sf, t) = org().await;
    let path = format!("/sobjects/Lead/{REFERRAL_ID_FIELD}/ref-1");
    let lead = json!({"LastName": "Doe", "Company": "Contoso"});
    let resp = client()
        .patch(sf.url(&format!("{V}{path}")))
        .bearer_auth(&t)
        .header("Sforce-Auto-Assign", "FALSE")
        .json(&lead)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body = json_of(resp).await;
    assert_eq!(body["created"], true);
    assert_eq!(body["success"], true);
    assert_eq!(body["errors"], json!([]));
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("00Q"));
    let stored = sf.get(&id).expect("stored");
    assert_eq!(stored[REFERRAL_ID_FIELD], "ref-1");
    assert_eq!(stored["Status"], "Open - Not Contacted");
    let stamp = stored["SystemModstamp"].as_str().expect("stamp");
    assert_eq!(stamp.len(), 28, "{stamp}");
    assert!(
        stamp.ends_with("+0000") && stamp.as_bytes()[19] == b'.',
        "{stamp}"
    );

    // Update (the external id matches case-insensitively).
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &format!("/sobjects/Lead/{REFERRAL_ID_FIELD}/REF-1"),
        Some(json!({"Company": "Contoso Ltd"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_of(resp).await;
    assert_eq!(body["created"], false);
    assert_eq!(body["id"], id);
    assert_eq!(sf.get(&id).expect("stored")["Company"], "Contoso Ltd");

    sf.set_update_returns_204(true);
    let resp = call(&sf, &t, "PATCH", &path, Some(json!({"City": "Oslo"}))).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.text().await.expect("body"), "");

    // updateOnly on a value nobody has: nothing created.
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &format!("/sobjects/Lead/{REFERRAL_ID_FIELD}/ref-2?updateOnly=true"),
        Some(lead.clone()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(sf.find_by_referral_id("Lead", "ref-2").is_empty());

    // The external-id field itself must not be in the body.
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &path,
        Some(json!({REFERRAL_ID_FIELD: "ref-1"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // A field that is not an external id.
    let resp = call(&sf, &t, "PATCH", "/sobjects/Lead/Company/x", Some(lead)).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Two records with the value (planted by a seller): 300 with both URLs, nothing written.
    let a = sf.insert(
        "Opportunity",
        json!({REFERRAL_ID_FIELD: "dup", "Name": "A"}),
    );
    let b = sf.insert(
        "Opportunity",
        json!({REFERRAL_ID_FIELD: "dup", "Name": "B"}),
    );
    let writes = sf.write_count();
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &format!("/sobjects/Opportunity/{REFERRAL_ID_FIELD}/dup"),
        Some(json!({"Amount": 5})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::MULTIPLE_CHOICES);
    assert_eq!(
        json_of(resp).await,
        json!([
            format!("{V}/sobjects/Opportunity/{a}"),
            format!("{V}/sobjects/Opportunity/{b}")
        ])
    );
    assert_eq!(sf.write_count(), writes);
    assert_eq!(sf.write_count_on("Lead"), 3, "create and two updates");
    assert_eq!(
        sf.auto_assign_headers("Lead")[0].as_deref(),
        Some("FALSE"),
        "the header of the first write is recorded"
    );
}

#[tokio::test]
async fn salesforce_concurrent_first_create_loses_with_duplicate_value() {
    let (sf, t) = org().await;
    let path = format!("/sobjects/Opportunity/{REFERRAL_ID_FIELD}/ref-race");
    let opp = json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2026-12-31"});
    sf.race_next_create("Opportunity", "ref-race", 1);
    let resp = call(&sf, &t, "PATCH", &path, Some(opp.clone())).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = json_of(resp).await;
    assert_eq!(error_code(&body), "DUPLICATE_VALUE");
    assert_eq!(body[0]["fields"], json!([]));
    let winners = sf.find_by_referral_id("Opportunity", "ref-race");
    assert_eq!(winners.len(), 1, "the other writer's record exists");
    let winner = winners[0]["Id"].as_str().expect("id");
    assert!(
        body[0]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with(winner))
    );
    // The retry is an update of the winner.
    let resp = call(&sf, &t, "PATCH", &path, Some(opp.clone())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(resp).await["id"], winner);

    // A plain create with the taken value: DUPLICATE_VALUE too.
    let mut with_id = opp;
    with_id[REFERRAL_ID_FIELD] = json!("REF-RACE");
    let resp = call(&sf, &t, "POST", "/sobjects/Opportunity", Some(with_id)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&json_of(resp).await), "DUPLICATE_VALUE");
}

#[tokio::test]
async fn salesforce_converted_lead_refuses_writes_and_maps_the_referral_id() {
    let (sf, t) = org().await;
    sf.map_lead_field(REFERRAL_ID_FIELD, REFERRAL_ID_FIELD);
    let lead = sf.insert(
        "Lead",
        json!({"LastName": "Doe", "FirstName": "Jo", "Company": "Fabrikam",
            "City": "Oslo", REFERRAL_ID_FIELD: "ref-c", "LeadSource": "Web"}),
    );
    let conv = sf.convert_lead(&lead);
    let stored = sf.get(&lead).expect("lead");
    assert_eq!(stored["IsConverted"], true);
    assert_eq!(stored["ConvertedOpportunityId"], conv.opportunity_id);
    assert_eq!(stored["Status"], "Closed - Converted");
    let opp = sf.get(&conv.opportunity_id).expect("opportunity");
    assert_eq!(opp[REFERRAL_ID_FIELD], "ref-c");
    assert_eq!(opp["Name"], "Fabrikam-");
    assert_eq!(opp["AccountId"], conv.account_id);
    assert_eq!(opp["LeadSource"], "Web");
    assert_eq!(
        sf.get(&conv.account_id).expect("account")["BillingCity"],
        "Oslo"
    );

    for (method, path) in [
        ("PATCH", format!("/sobjects/Lead/{REFERRAL_ID_FIELD}/ref-c")),
        ("PATCH", format!("/sobjects/Lead/{lead}")),
    ] {
        let resp = call(&sf, &t, method, &path, Some(json!({"Company": "X"}))).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            error_code(&json_of(resp).await),
            "CANNOT_UPDATE_CONVERTED_LEAD"
        );
    }
    assert_eq!(sf.write_count(), 0);

    let resp = soql(
        &sf,
        &t,
        &format!(
            "SELECT ContactId, IsPrimary FROM OpportunityContactRole WHERE OpportunityId = '{}'",
            conv.opportunity_id
        ),
    )
    .await;
    let body = json_of(resp).await;
    assert_eq!(body["totalSize"], 1);
    assert_eq!(body["records"][0]["ContactId"], conv.contact_id);
    assert_eq!(body["records"][0]["IsPrimary"], true);
}

#[tokio::test]
async fn salesforce_write_validation_errors() {
    let (sf, t) = org().await;
    let long = "x".repeat(121);
    let cases = [
        (
            "Lead",
            json!({"FirstName": "A"}),
            "REQUIRED_FIELD_MISSING",
            json!(["LastName", "Company"]),
        ),
        (
            "Opportunity",
            json!({"Name": "A", "StageName": "Prospecting"}),
            "REQUIRED_FIELD_MISSING",
            json!(["CloseDate"]),
        ),
        (
            "Opportunity",
            json!({"Name": long, "StageName": "Prospecting", "CloseDate": "2026-12-31"}),
            "STRING_TOO_LONG",
            json!(["Name"]),
        ),
        (
            "Opportunity",
            json!({"Name": "A", "StageName": "Dreaming", "CloseDate": "2026-12-31"}),
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            json!(["StageName"]),
        ),
        (
            "Opportunity",
            json!({"Name": "A", "StageName": "Prospecting", "CloseDate": "2026-12-31",
                "How_can_Microsoft_help__c": "Magic"}),
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            json!(["How_can_Microsoft_help__c"]),
        ),
        (
            "Lead",
            json!({"LastName": "A", "Company": "B", "Nope__c": 1}),
            "INVALID_FIELD",
            json!([]),
        ),
        (
            "Opportunity",
            json!({"Name": "A", "StageName": "Prospecting", "CloseDate": "2026-12-31", "IsWon": true}),
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            json!(["IsWon"]),
        ),
    ];
    for (object, body, code, fields) in cases {
        let resp = call(&sf, &t, "POST", &format!("/sobjects/{object}"), Some(body)).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{code}");
        let body = json_of(resp).await;
        assert_eq!(error_code(&body), code, "{body}");
        assert_eq!(body[0]["fields"], fields, "{code}");
    }
    assert_eq!(sf.write_count(), 0);

    let ok = json!({"Name": "A", "StageName": "Prospecting", "CloseDate": "2026-12-31",
        "How_can_Microsoft_help__c": "QuotesOrLicensing", "Sync_with_Partner_Center__c": true});
    let resp = call(&sf, &t, "POST", "/sobjects/Opportunity", Some(ok)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = json_of(resp).await["id"].as_str().expect("id").to_owned();
    let resp = call(
        &sf,
        &t,
        "DELETE",
        &format!("/sobjects/Opportunity/{id}"),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &format!("/sobjects/Opportunity/{id}"),
        Some(json!({"Amount": 1})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&json_of(resp).await), "ENTITY_IS_DELETED");

    // A deleted record still holds its external id (the chosen reading).
    let lead = sf.insert(
        "Lead",
        json!({"LastName": "A", "Company": "B", REFERRAL_ID_FIELD: "gone"}),
    );
    sf.delete(&lead);
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &format!("/sobjects/Lead/{REFERRAL_ID_FIELD}/gone"),
        Some(json!({"LastName": "A", "Company": "B"})),
    )
    .await;
    assert_eq!(error_code(&json_of(resp).await), "ENTITY_IS_DELETED");
    sf.set_deleted_holds_external_id(false);
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &format!("/sobjects/Lead/{REFERRAL_ID_FIELD}/gone"),
        Some(json!({"LastName": "A", "Company": "B"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn salesforce_soql_filters_and_orders_by_system_modstamp_and_id() {
    let (sf, t) = org().await;
    let mk = |name: &str, referral: Option<&str>, sync: bool, stamp: &str| {
        let mut f = json!({"Name": name, "StageName": "Prospecting", "CloseDate": "2026-12-31",
            "Sync_with_Partner_Center__c": sync});
        if let Some(r) = referral {
            f[REFERRAL_ID_FIELD] = json!(r);
        }
        let id = sf.insert("Opportunity", f);
        sf.set_system_modstamp(&id, stamp);
        id
    };
    let late = mk("late", Some("r1"), true, "2026-12-03T07:30:00Z");
    let early = mk("early", Some("r2"), false, "2026-12-03T07:10:00Z");
    let tie_b = mk("tie", Some("r3"), true, "2026-12-03T07:20:00Z");
    let no_ref = mk("noref", None, true, "2026-12-03T07:15:00Z");
    let out_of_window = mk("old", Some("r4"), true, "2026-12-03T06:00:00Z");
    let tie_a = mk("tie", Some("r5"), true, "2026-12-03T07:20:00Z");
    let _ = (no_ref, out_of_window);

    let ids = |body: &Value| -> Vec<String> {
        body["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|r| r["Id"].as_str().expect("Id").to_owned())
            .collect()
    };
    let q = "SELECT Id, Name, SystemModstamp FROM Opportunity WHERE Partner_Center_Referral_Id__c != null \
             AND SystemModstamp >= 2026-12-03T07:00:00Z AND SystemModstamp <= 2026-12-03T07:30:00.000Z \
             ORDER BY SystemModstamp, Id";
    let body = json_of(soql(&sf, &t, q).await).await;
    assert_eq!(body["done"], true);
    assert_eq!(body["totalSize"], 4);
    let mut ties = [tie_b.clone(), tie_a.clone()];
    ties.sort();
    assert_eq!(
        ids(&body),
        [
            early.clone(),
            ties[0].clone(),
            ties[1].clone(),
            late.clone()
        ]
    );
    let rec = &body["records"][0];
    assert_eq!(rec["attributes"]["type"], "Opportunity");
    assert_eq!(
        rec["attributes"]["url"],
        format!("{V}/sobjects/Opportunity/{early}")
    );
    assert_eq!(rec["SystemModstamp"], "2026-12-03T07:10:00.000+0000");
    assert!(rec.get(REFERRAL_ID_FIELD).is_none(), "only selected fields");

    let body = json_of(
        soql(
            &sf,
            &t,
            "SELECT Id FROM Opportunity WHERE Sync_with_Partner_Center__c = true AND \
             (Name = 'TIE' OR Name = 'late') ORDER BY SystemModstamp DESC, Id LIMIT 2",
        )
        .await,
    )
    .await;
    assert_eq!(ids(&body), [late.clone(), ties[0].clone()]);

    let body = json_of(
        soql(
            &sf,
            &t,
            &format!("SELECT Name FROM Opportunity WHERE Id = '{early}'"),
        )
        .await,
    )
    .await;
    assert_eq!(body["records"][0]["Name"], "early");

    let account = sf.insert(
        "Account",
        json!({"Name": "Contoso", "BillingPostalCode": "0150"}),
    );
    let body = json_of(
        soql(
            &sf,
            &t,
            "SELECT Id FROM Account WHERE Name = 'contoso' AND BillingPostalCode = '0150'",
        )
        .await,
    )
    .await;
    assert_eq!(ids(&body), [account]);

    for (q, code) in [
        ("SELECT Id FROM Opportunity WHERE", "MALFORMED_QUERY"),
        (
            "SELECT Id FROM Opportunity WHERE Name = 'a' AND Name = 'b' OR Name = 'c'",
            "MALFORMED_QUERY",
        ),
        ("SELECT Bogus__c FROM Opportunity", "INVALID_FIELD"),
        ("SELECT Id FROM Bogus__c", "INVALID_TYPE"),
    ] {
        let resp = soql(&sf, &t, q).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(error_code(&json_of(resp).await), code, "{q}");
    }
}

#[tokio::test]
async fn salesforce_query_pages_through_next_records_url() {
    let (sf, t) = org().await;
    for i in 0..5 {
        sf.insert("Lead", json!({"LastName": format!("L{i}"), "Company": "C"}));
    }
    sf.set_batch_size(2);
    let body =
        json_of(soql(&sf, &t, "SELECT Id, LastName FROM Lead ORDER BY LastName").await).await;
    let mut names: Vec<Value> = body["records"].as_array().expect("records").clone();
    assert_eq!(body["totalSize"], 5);
    assert_eq!(body["done"], false);
    let mut next = body["nextRecordsUrl"].as_str().map(str::to_owned);
    let mut pages = 1;
    while let Some(url) = next {
        assert!(url.starts_with(&format!("{V}/query/01g")), "{url}");
        let resp = client()
            .get(sf.url(&url))
            .bearer_auth(&t)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = json_of(resp).await;
        pages += 1;
        names.extend(body["records"].as_array().expect("records").iter().cloned());
        next = body["nextRecordsUrl"].as_str().map(str::to_owned);
        assert_eq!(body["done"], next.is_none());
    }
    assert_eq!(pages, 3);
    let names: Vec<&str> = names
        .iter()
        .map(|r| r["LastName"].as_str().expect("LastName"))
        .collect();
    assert_eq!(names, ["L0", "L1", "L2", "L3", "L4"]);

    let resp = call(&sf, &t, "GET", "/query/01gnope-2", None).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&json_of(resp).await), "INVALID_QUERY_LOCATOR");
}

#[tokio::test]
async fn salesforce_describe_and_hidden_fields() {
    let (sf, t) = org().await;
    let body = json_of(call(&sf, &t, "GET", "/sobjects/Opportunity/describe", None).await).await;
    assert_eq!(body["keyPrefix"], "006");
    let field = |body: &Value, name: &str| -> Option<Value> {
        body["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
    };
    let referral = field(&body, REFERRAL_ID_FIELD).expect("referral id field");
    assert_eq!(referral["externalId"], true);
    assert_eq!(referral["unique"], true);
    assert_eq!(referral["length"], 36);
    assert_eq!(referral["type"], "string");
    let help = field(&body, "How_can_Microsoft_help__c").expect("picklist");
    assert_eq!(help["picklistValues"].as_array().map(Vec::len), Some(6));
    let stage = field(&body, "StageName").expect("StageName");
    assert_eq!(stage["nillable"], false);
    assert_eq!(stage["picklistValues"][8]["value"], "Closed Won");
    let audit = field(&body, "Partner_Center_Audit__c").expect("audit");
    assert_eq!(
        (audit["type"].clone(), audit["length"].clone()),
        (json!("textarea"), json!(32768))
    );
    for object in ["Lead", "Account", "Contact"] {
        let resp = call(
            &sf,
            &t,
            "GET",
            &format!("/sobjects/{object}/describe"),
            None,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{object}");
    }

    let id = sf.insert(
        "Opportunity",
        json!({"Name": "A", "StageName": "Prospecting", "CloseDate": "2026-12-31", "Amount": 10}),
    );
    sf.hide_field("Opportunity", "Amount");
    let body = json_of(call(&sf, &t, "GET", "/sobjects/Opportunity/describe", None).await).await;
    assert!(field(&body, "Amount").is_none());
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &format!("/sobjects/Opportunity/{id}"),
        Some(json!({"Amount": 1})),
    )
    .await;
    assert_eq!(error_code(&json_of(resp).await), "INVALID_FIELD");
    let resp = call(
        &sf,
        &t,
        "GET",
        &format!("/sobjects/Opportunity/{id}?fields=Name,Amount"),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = call(&sf, &t, "GET", &format!("/sobjects/Opportunity/{id}"), None).await;
    let rec = json_of(resp).await;
    assert_eq!(rec["Name"], "A");
    assert!(
        rec.get("Amount").is_none(),
        "hidden fields are omitted silently"
    );
    let resp = soql(&sf, &t, "SELECT Amount FROM Opportunity").await;
    assert_eq!(error_code(&json_of(resp).await), "INVALID_FIELD");
    let resp = call(
        &sf,
        &t,
        "GET",
        &format!("/sobjects/Opportunity/{id}?fields=Name,StageName"),
        None,
    )
    .await;
    let rec = json_of(resp).await;
    assert_eq!(rec["StageName"], "Prospecting");
    assert!(rec.get("CloseDate").is_none());
}

#[tokio::test]
async fn salesforce_opportunity_stages_drive_closed_and_won() {
    let (sf, t) = org().await;
    let body = json_of(
        soql(
            &sf,
            &t,
            "SELECT ApiName, IsClosed, IsWon FROM OpportunityStage WHERE IsActive = true ORDER BY SortOrder",
        )
        .await,
    )
    .await;
    let names: Vec<&str> = body["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["ApiName"].as_str().expect("ApiName"))
        .collect();
    assert_eq!(
        names,
        [
            "Prospecting",
            "Qualification",
            "Needs Analysis",
            "Value Proposition",
            "Id. Decision Makers",
            "Perception Analysis",
            "Proposal/Price Quote",
            "Negotiation/Review",
            "Closed Won",
            "Closed Lost"
        ]
    );
    assert_eq!(body["records"][8]["IsWon"], true);
    assert_eq!(body["records"][9]["IsClosed"], true);
    assert_eq!(body["records"][9]["IsWon"], false);

    let resp = call(
        &sf,
        &t,
        "POST",
        "/sobjects/Opportunity",
        Some(json!({"Name": "A", "StageName": "Prospecting", "CloseDate": "2026-12-31"})),
    )
    .await;
    let id = json_of(resp).await["id"].as_str().expect("id").to_owned();
    let before = sf.get(&id).expect("opp");
    assert_eq!(
        (before["IsClosed"].clone(), before["IsWon"].clone()),
        (json!(false), json!(false))
    );
    sf.advance_clock_ms(1500);
    sf.set_stage(&id, "Closed Won");
    let after = sf.get(&id).expect("opp");
    assert_eq!(
        (after["IsClosed"].clone(), after["IsWon"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(after["Probability"], 100);
    assert_eq!(after["LastModifiedById"], sf.seller_user_id());
    assert!(after["SystemModstamp"].as_str() > before["SystemModstamp"].as_str());
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &format!("/sobjects/Opportunity/{id}"),
        Some(json!({"StageName": "Closed Lost"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let lost = sf.get(&id).expect("opp");
    assert_eq!(
        (lost["IsClosed"].clone(), lost["IsWon"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(lost["LastModifiedById"], sf.integration_user_id());
}

#[tokio::test]
async fn salesforce_tooling_custom_fields_and_field_permissions() {
    let sf = FakeSalesforce::start().await;
    let t = token(&sf).await;
    let field = json!({"FullName": "Opportunity.Partner_Center_Referral_Id__c",
        "Metadata": {"label": "Partner Center Referral Id", "type": "Text", "length": 36,
            "externalId": true, "unique": true, "caseSensitive": false}});
    let resp = call(
        &sf,
        &t,
        "POST",
        "/tooling/sobjects/CustomField",
        Some(field.clone()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let field_id = json_of(resp).await["id"].as_str().expect("id").to_owned();
    assert!(field_id.starts_with("00N"));
    let resp = call(
        &sf,
        &t,
        "POST",
        "/tooling/sobjects/CustomField",
        Some(field),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&json_of(resp).await), "DUPLICATE_DEVELOPER_NAME");

    let resp = client()
        .get(with_q(
            sf.url(&format!("{V}/tooling/query")),
            "SELECT Id, DeveloperName FROM CustomField WHERE TableEnumOrId = 'Opportunity'",
        ))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    let body = json_of(resp).await;
    assert_eq!(body["totalSize"], 1);
    assert_eq!(
        body["records"][0]["DeveloperName"],
        "Partner_Center_Referral_Id"
    );
    assert_eq!(body["records"][0]["Id"], field_id);

    // Not visible to the integration user before a permission set grants it.
    let describe = || async {
        let body =
            json_of(call(&sf, &t, "GET", "/sobjects/Opportunity/describe", None).await).await;
        body["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .any(|f| f["name"] == REFERRAL_ID_FIELD)
    };
    assert!(!describe().await);
    let upsert = format!("/sobjects/Opportunity/{REFERRAL_ID_FIELD}/r");
    let resp = call(&sf, &t, "PATCH", &upsert, Some(json!({}))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = call(
        &sf,
        &t,
        "POST",
        "/sobjects/PermissionSet",
        Some(json!({"Name": "Partner_Center_Connector", "Label": "Partner Center Connector"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let ps = json_of(resp).await["id"].as_str().expect("id").to_owned();
    let body = json_of(
        soql(
            &sf,
            &t,
            "SELECT Id FROM PermissionSet WHERE Name = 'Partner_Center_Connector'",
        )
        .await,
    )
    .await;
    assert_eq!(body["records"][0]["Id"], ps);
    let grant = json!({"ParentId": ps, "SobjectType": "Opportunity",
        "Field": format!("Opportunity.{REFERRAL_ID_FIELD}"), "PermissionsRead": true, "PermissionsEdit": true});
    let resp = call(
        &sf,
        &t,
        "POST",
        "/sobjects/FieldPermissions",
        Some(grant.clone()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let grant_id = json_of(resp).await["id"].as_str().expect("id").to_owned();
    let resp = call(&sf, &t, "POST", "/sobjects/FieldPermissions", Some(grant)).await;
    assert_eq!(error_code(&json_of(resp).await), "DUPLICATE_VALUE");
    // Updates name only the permissions; Edit still needs Read (sent or already held).
    let grant_path = format!("/sobjects/FieldPermissions/{grant_id}");
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &grant_path,
        Some(json!({"PermissionsRead": false, "PermissionsEdit": false})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let patch = |edit: Value| {
        call(
            &sf,
            &t,
            "PATCH",
            &grant_path,
            Some(json!({"PermissionsEdit": edit})),
        )
    };
    let resp = patch(json!(true)).await;
    assert_eq!(
        error_code(&json_of(resp).await),
        "FIELD_INTEGRITY_EXCEPTION"
    );
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &grant_path,
        Some(json!({"PermissionsRead": true, "PermissionsEdit": true})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(sf.get(&grant_id).expect("grant")["PermissionsEdit"], true);
    assert!(!describe().await, "granted but not yet assigned");
    let resp = call(
        &sf,
        &t,
        "POST",
        "/sobjects/PermissionSetAssignment",
        Some(json!({"PermissionSetId": ps, "AssigneeId": sf.integration_user_id()})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(describe().await);
    let resp = call(
        &sf,
        &t,
        "PATCH",
        &upsert,
        Some(json!({"Name": "A", "StageName": "Prospecting", "CloseDate": "2026-12-31"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn salesforce_limit_info_counts_rest_calls() {
    let (sf, t) = org().await;
    let usage = |resp: &Response| {
        resp.headers()
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let resp = call(&sf, &t, "GET", "/limits", None).await;
    assert_eq!(usage(&resp).as_deref(), Some("api-usage=1/100000"));
    let date = resp
        .headers()
        .get("date")
        .expect("Date header")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(date.ends_with(" GMT"), "{date}");
    assert_eq!(resp.headers().get_all("date").iter().count(), 1);
    let resp = soql(&sf, &t, "SELECT Id FROM Lead").await;
    assert_eq!(usage(&resp).as_deref(), Some("api-usage=2/100000"));
    assert_eq!(sf.api_usage(), 2);

    sf.set_api_limit(5000);
    sf.set_api_usage(4999);
    let resp = call(&sf, &t, "GET", "/limits", None).await;
    assert_eq!(usage(&resp).as_deref(), Some("api-usage=5000/5000"));
    let resp = call(&sf, &t, "GET", "/limits", None).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        json_of(resp).await,
        json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    );

    // Unsupported versions answer 404; the version list needs no token.
    let resp = client()
        .get(sf.url("/services/data/v60.0/limits"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = client()
        .get(sf.url("/services/data/"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn salesforce_injected_faults_have_salesforce_bodies() {
    let (sf, t) = org().await;
    sf.inject(FakeSalesforce::request_limit_fault().on("GET", "/limits"));
    sf.inject(FakeSalesforce::server_unavailable_fault().on("GET", "/limits"));
    sf.inject(FakeSalesforce::unable_to_lock_row_fault().on("PATCH", "/sobjects/"));
    let resp = call(&sf, &t, "GET", "/limits", None).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(&json_of(resp).await), "REQUEST_LIMIT_EXCEEDED");
    let resp = call(&sf, &t, "GET", "/limits", None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&json_of(resp).await), "SERVER_UNAVAILABLE");
    let path = format!("/sobjects/Lead/{REFERRAL_ID_FIELD}/ref-f");
    let lead = json!({"LastName": "Doe", "Company": "C"});
    let resp = call(&sf, &t, "PATCH", &path, Some(lead.clone())).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&json_of(resp).await), "UNABLE_TO_LOCK_ROW");
    assert_eq!(sf.write_count(), 0, "a locked row writes nothing");

    sf.inject_html(503, "/sobjects/", 1);
    let resp = call(&sf, &t, "PATCH", &path, Some(lead.clone())).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/html"))
    );
    assert!(
        resp.text()
            .await
            .expect("body")
            .starts_with("<!DOCTYPE html>")
    );

    // A lost answer: the write happened although the client saw a 503.
    sf.inject(
        FakeSalesforce::server_unavailable_fault()
            .on("PATCH", "/sobjects/")
            .after_write(),
    );
    let resp = call(&sf, &t, "PATCH", &path, Some(lead.clone())).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sf.find_by_referral_id("Lead", "ref-f").len(), 1);
    let resp = call(&sf, &t, "PATCH", &path, Some(lead)).await;
    assert_eq!(resp.status(), StatusCode::OK, "the retry is an update");
    assert_eq!(sf.requests_matching("PATCH", "ref-f").len(), 4);
}

#[tokio::test]
async fn salesforce_reads_by_external_id_query_options_and_query_all() {
    let (sf, t) = org().await;
    let id = sf.insert(
        "Lead",
        json!({"LastName": "Doe", "Company": "C", REFERRAL_ID_FIELD: "ref-r"}),
    );
    let resp = call(
        &sf,
        &t,
        "GET",
        &format!("/sobjects/Lead/{REFERRAL_ID_FIELD}/ref-r?fields=Id,IsConverted"),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let rec = json_of(resp).await;
    assert_eq!(rec["Id"], id);
    assert_eq!(rec["IsConverted"], false);
    assert!(rec.get("Company").is_none());
    let resp = call(
        &sf,
        &t,
        "GET",
        &format!("/sobjects/Lead/{REFERRAL_ID_FIELD}/nobody"),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // 15-character ids are accepted.
    let resp = call(
        &sf,
        &t,
        "GET",
        &format!("/sobjects/Lead/{}", &id[..15]),
        None,
    )
    .await;
    assert_eq!(json_of(resp).await["Id"], id);

    for i in 0..250 {
        sf.insert("Contact", json!({"LastName": format!("C{i:03}")}));
    }
    let resp = client()
        .get(with_q(
            sf.url(&format!("{V}/query")),
            "SELECT Id FROM Contact",
        ))
        .bearer_auth(&t)
        .header("Sforce-Query-Options", "batchSize=200")
        .send()
        .await
        .expect("send");
    let body = json_of(resp).await;
    assert_eq!(body["records"].as_array().map(Vec::len), Some(200));
    assert!(
        body["nextRecordsUrl"]
            .as_str()
            .is_some_and(|u| u.ends_with("-200"))
    );

    sf.delete(&id);
    let q = "SELECT Id, IsDeleted FROM Lead";
    let body = json_of(soql(&sf, &t, q).await).await;
    assert_eq!(body["totalSize"], 0);
    let resp = client()
        .get(with_q(sf.url(&format!("{V}/queryAll")), q))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    let body = json_of(resp).await;
    assert_eq!(body["totalSize"], 1);
    assert_eq!(body["records"][0]["IsDeleted"], true);
    let resp = call(&sf, &t, "GET", &format!("/sobjects/Lead/{id}"), None).await;
    assert_eq!(error_code(&json_of(resp).await), "ENTITY_IS_DELETED");
}
