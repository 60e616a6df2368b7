//! End-to-end tests of the fakes over real HTTP (reqwest), including faults and TLS.

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use super::*;

const KEY: &str = "new_partnercenterreferralid";

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

fn lead_url(dv: &FakeDataverse, value: &str) -> String {
    dv.url(&format!("/api/data/v9.2/leads({KEY}='{value}')"))
}

async fn dv_patch(
    c: &Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> reqwest::Response {
    let mut req = c.patch(url).bearer_auth("dv-at-1").json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("send PATCH")
}

async fn json_of(resp: reqwest::Response) -> Value {
    resp.json().await.expect("JSON body")
}

#[tokio::test]
async fn dataverse_upsert_semantics() {
    let dv = FakeDataverse::start(KEY).await;
    let c = client();
    let url = lead_url(&dv, "r-1");

    let resp = c.get(&url).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = dv_patch(&c, &url, &[("If-None-Match", "*")], json!({"subject": "A"})).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let entity_id = resp.headers()["odata-entityid"].to_str().expect("ascii");
    assert_eq!(
        entity_id,
        format!("{}/api/data/v9.2/leads({KEY}='r-1')", dv.base_url())
    );

    let resp = dv_patch(&c, &url, &[("If-None-Match", "*")], json!({"subject": "B"})).await;
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(json_of(resp).await["error"]["code"], "0x80040237");

    let resp = dv_patch(
        &c,
        &format!("{url}?$select=subject,companyname"),
        &[("If-Match", "*"), ("Prefer", "return=representation")],
        json!({"subject": "C"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_of(resp).await;
    assert_eq!(body["@odata.etag"], "W/\"2\"");
    assert_eq!(body["subject"], "C");
    assert_eq!(body["companyname"], Value::Null);
    assert_eq!(body["statecode"], 0);

    let resp = dv_patch(
        &c,
        &url,
        &[("If-Match", "W/\"1\"")],
        json!({"subject": "D"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(json_of(resp).await["error"]["code"], "0x80060882");
    let resp = dv_patch(
        &c,
        &url,
        &[("If-Match", "W/\"2\"")],
        json!({"subject": "D"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let missing = lead_url(&dv, "r-2");
    let resp = dv_patch(&c, &missing, &[("If-Match", "*")], json!({"subject": "X"})).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = dv_patch(
        &c,
        &missing,
        &[("Prefer", "return=representation")],
        json!({"subject": "Y"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    let resp = dv_patch(&c, &url, &[], json!({"statecode": 1})).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let resp = c
        .get(format!("{url}?$select=subject"))
        .bearer_auth("t")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_of(resp).await;
    assert_eq!(body["subject"], "D");
    assert_eq!(body["@odata.etag"], "W/\"3\"");

    let resp = c
        .get(lead_url(&dv, "nope"))
        .bearer_auth("t")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(resp).await["error"]["code"], "0x80060891");
    let resp = c
        .get(dv.url("/api/data/v9.2/leads(other_key='r-1')"))
        .bearer_auth("t")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(resp).await["error"]["code"], "0x80060888");

    dv.set_lead_state("r-1", 2, 4);
    let resp = dv_patch(&c, &url, &[], json!({"subject": "E"})).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    assert_eq!(dv.write_count(), 4);
    let lead = dv.lead("r-1").expect("lead");
    assert_eq!(lead["subject"], "D");
    assert_eq!(lead[KEY], "r-1");
    assert_eq!(lead["versionnumber"], 4);
    assert_eq!(dv.leads().len(), 2);
    assert_eq!(dv.count("PATCH", "leads("), 9);
}

#[tokio::test]
async fn dataverse_quoted_key_and_helpers() {
    let dv = FakeDataverse::start(KEY).await;
    let id = dv.insert_lead("O'Brien", json!({"subject": "s"}));
    let c = client();
    let resp = c
        .get(dv.url(&format!("/api/data/v9.2/leads({KEY}='O''Brien')")))
        .bearer_auth("t")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(resp).await["leadid"], id.as_str());
    let resp = c
        .get(dv.url(&format!("/api/data/v9.2/leads({id})")))
        .bearer_auth("t")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    dv.set_lead_column("O'Brien", "subject", json!("edited"));
    assert_eq!(dv.lead("O'Brien").expect("lead")["versionnumber"], 2);
    let who = c
        .get(dv.url("/api/data/v9.2/WhoAmI"))
        .bearer_auth("t")
        .send()
        .await
        .expect("send");
    assert_eq!(json_of(who).await, dv.who_am_i());
}

#[tokio::test]
async fn dataverse_concurrent_creates_stay_unique() {
    let dv = FakeDataverse::start(KEY).await;
    let c = client();
    let url = lead_url(&dv, "same");
    let plain = futures::future::join_all(
        (0..20).map(|i| dv_patch(&c, &url, &[], json!({"subject": format!("s{i}")}))),
    )
    .await;
    assert!(plain.iter().all(|r| r.status() == StatusCode::NO_CONTENT));
    assert_eq!(dv.leads().len(), 1);
    assert_eq!(dv.lead("same").expect("lead")["versionnumber"], 20);

    let url = lead_url(&dv, "create-only");
    let create_only = futures::future::join_all(
        (0..20).map(|_| dv_patch(&c, &url, &[("If-None-Match", "*")], json!({"subject": "x"}))),
    )
    .await;
    let created = create_only
        .iter()
        .filter(|r| r.status() == StatusCode::NO_CONTENT)
        .count();
    let rejected = create_only
        .iter()
        .filter(|r| r.status() == StatusCode::PRECONDITION_FAILED)
        .count();
    assert_eq!((created, rejected), (1, 19));
    assert_eq!(dv.leads().len(), 2);
    assert!(dv.max_in_flight() >= 1);
    assert_eq!(dv.in_flight(), 0);
}

#[tokio::test]
async fn dataverse_metadata_setup() {
    let dv = FakeDataverse::start(KEY).await;
    dv.set_enforce_schema(true);
    let c = client();
    let entity = dv.url("/api/data/v9.2/EntityDefinitions(LogicalName='lead')");
    let attr = format!("{entity}/Attributes(LogicalName='{KEY}')?$select=LogicalName");
    let get = |u: String| c.get(u).bearer_auth("t").send();

    assert_eq!(
        get(attr.clone()).await.expect("send").status(),
        StatusCode::NOT_FOUND
    );
    let resp = dv_patch(&c, &lead_url(&dv, "a"), &[], json!({"subject": "x"})).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let resp = c
        .post(format!("{entity}/Attributes"))
        .bearer_auth("t")
        .json(
            &json!({"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "SchemaName": "new_PartnerCenterReferralId", "MaxLength": 100}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = get(attr).await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(resp).await["LogicalName"], KEY);

    let resp = c
        .post(format!("{entity}/Keys"))
        .bearer_auth("t")
        .json(
            &json!({"SchemaName": "new_pcreferralkey", "KeyAttributes": [KEY],
            "DisplayName": {"LocalizedLabels": []}}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let keys_url = format!("{entity}/Keys?$select=LogicalName,KeyAttributes,EntityKeyIndexStatus");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let body = json_of(get(keys_url.clone()).await.expect("send")).await;
        assert_eq!(body["value"][0]["KeyAttributes"], json!([KEY]));
        statuses.push(body["value"][0]["EntityKeyIndexStatus"].clone());
    }
    assert_eq!(
        statuses,
        [json!("Pending"), json!("InProgress"), json!("Active")]
    );
    assert_eq!(dv.key_status().as_deref(), Some("Active"));

    let resp = dv_patch(&c, &lead_url(&dv, "a"), &[], json!({"subject": "x"})).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = dv_patch(&c, &lead_url(&dv, "a"), &[], json!({"new_unknown": "x"})).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let ready = FakeDataverse::start(KEY).await.with_key_column(true);
    assert!(ready.has_column(KEY));
    assert_eq!(ready.key_status().as_deref(), Some("Active"));
}

fn referral(id: &str, updated: &str) -> Value {
    json!({"id": id, "status": "New", "substatus": "Pending", "updatedDateTime": updated,
        "details": {"dealValue": 100}, "team": []})
}

#[tokio::test]
async fn partner_center_patch_with_if_match() {
    let pc = FakePartnerCenter::start().await;
    let c = client();
    let etag = pc.insert_referral(referral("r1", "2026-01-01T00:00:00Z"));
    let url = pc.url("/v1.0/engagements/referrals/r1");

    let resp = c.get(&url).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = c
        .get(&url)
        .bearer_auth("pc-at-1")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"].to_str().expect("ascii"), etag);
    assert_eq!(json_of(resp).await["eTag"], etag.as_str());

    pc.set_referral_field("r1", "/details/notes", json!("by someone else"));
    let patch = json!([
        {"op": "replace", "path": "/status", "value": "Active"},
        {"op": "replace", "path": "/details/dealValue", "value": 500},
        {"op": "add", "path": "/externalReferenceId", "value": "lead-1"},
        {"op": "add", "path": "/team/-", "value": {"email": "a@b.c"}}
    ]);
    let send_patch = |if_match: String, body: Value, prefer: bool| {
        let mut req = c
            .patch(&url)
            .bearer_auth("pc-at-1")
            .header("If-Match", if_match)
            .json(&body);
        if prefer {
            req = req.header("Prefer", "return=representation");
        }
        req.send()
    };
    let resp = send_patch(etag.clone(), patch.clone(), false)
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(json_of(resp).await["code"], "PreconditionFailed");
    assert_eq!(pc.patch_count("r1"), 0);

    let current = pc.referral("r1").expect("referral")["eTag"]
        .as_str()
        .expect("etag")
        .to_owned();
    let resp = send_patch(current.clone(), patch.clone(), false)
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let doc = pc.referral("r1").expect("referral");
    assert_eq!(doc["status"], "Active");
    assert_eq!(
        doc["details"],
        json!({"dealValue": 500, "notes": "by someone else"})
    );
    assert_eq!(doc["externalReferenceId"], "lead-1");
    assert_eq!(doc["team"], json!([{"email": "a@b.c"}]));
    assert_ne!(doc["eTag"], current.as_str());
    assert_ne!(doc["updatedDateTime"], "2026-01-01T00:00:00Z");
    assert_eq!(pc.patch_count("r1"), 1);
    assert_eq!(pc.patches("r1"), [patch]);

    let bad = json!([{"op": "remove", "path": "/status"}]);
    let resp = send_patch("*".into(), bad, false).await.expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bad = json!([{"op": "replace", "path": "/missing", "value": 1}]);
    let resp = send_patch("*".into(), bad, false).await.expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let ok = json!([{"op": "replace", "path": "/substatus", "value": "Accepted"}]);
    let resp = send_patch("*".into(), ok, true).await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(resp).await["substatus"], "Accepted");

    let resp = c
        .get(pc.url("/v1.0/engagements/referrals/none"))
        .bearer_auth("t")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(resp).await["code"], "NotFound");
}

#[tokio::test]
async fn partner_center_list_pages_with_next_link() {
    let pc = FakePartnerCenter::start().await;
    for i in 0..250 {
        let day = 1 + i / 24;
        let hour = i % 24;
        pc.insert_referral(referral(
            &format!("r{i:03}"),
            &format!("2026-01-{day:02}T{hour:02}:00:00Z"),
        ));
    }
    let c = client();
    let first = pc.url(
        "/v1.0/engagements/referrals?$filter=updatedDateTime ge 2026-01-02T00:00:00Z \
         and updatedDateTime le 2026-01-10T23:00:00Z&$orderby=updatedDateTime desc&$top=40",
    );
    let mut next = Some(first);
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(url) = next {
        let body = json_of(c.get(&url).bearer_auth("t").send().await.expect("send")).await;
        assert_eq!(body["@odata.count"], 250 - 24 - 10);
        for item in body["value"].as_array().expect("value") {
            seen.push(item["id"].as_str().expect("id").to_owned());
        }
        next = body["@odata.nextLink"].as_str().map(str::to_owned);
        if let Some(n) = &next {
            assert!(n.starts_with(&pc.base_url()));
        }
        pages += 1;
    }
    assert_eq!(pages, 6);
    let expected: Vec<String> = (24..240).rev().map(|i| format!("r{i:03}")).collect();
    assert_eq!(seen, expected);

    pc.set_next_link_base(Some("https://evil.example"));
    let body = json_of(
        c.get(pc.url("/v1.0/engagements/referrals?$top=10"))
            .bearer_auth("t")
            .send()
            .await
            .expect("send"),
    )
    .await;
    let link = body["@odata.nextLink"].as_str().expect("next link");
    assert!(link.starts_with("https://evil.example/v1.0/engagements/referrals?$top=10"));

    let resp = c
        .get(pc.url("/v1.0/engagements/referrals?$filter=name eq 'New'"))
        .bearer_auth("t")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn partner_center_creates_outgoing_referrals_and_lists_them_newest_first() {
    let pc = FakePartnerCenter::start().await;
    pc.insert_referral(
        json!({"id": "in-1", "direction": "Incoming", "createdDateTime": "2026-01-01T00:00:00Z"}),
    );
    let c = client();
    let url = pc.url("/v1.0/engagements/referrals");
    let body = |name: &str, country: &str| {
        json!({
            "name": name, "type": "Independent",
            "customerProfile": {"name": name, "address": {"country": country}},
            "consent": {"consentToShareReferralWithMicrosoftSellers": true},
            "details": {"dealValue": 10}, "externalReferenceId": name,
        })
    };
    let post = |b: Value| c.post(&url).bearer_auth("t").json(&b).send();
    let bad = post(body("x", "United States")).await.expect("send");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let mut missing = body("y", "US");
    missing.as_object_mut().expect("object").remove("consent");
    assert_eq!(
        post(missing).await.expect("send").status(),
        StatusCode::BAD_REQUEST
    );
    let first = json_of(post(body("first", "US")).await.expect("send")).await;
    assert_eq!(first["direction"], "Outgoing");
    assert_eq!(first["status"], "Active");
    assert!(first["eTag"].is_string() && first["createdDateTime"].is_string());
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The answer is lost, but the referral exists.
    pc.inject(
        Fault::connection_reset()
            .on("POST", "/referrals")
            .after_write(),
    );
    assert!(post(body("second", "US")).await.is_err());
    assert_eq!(pc.created().len(), 2);
    let listed = json_of(
        c.get(format!(
            "{url}?$filter=direction eq 'Outgoing'&$orderby=createdDateTime desc"
        ))
        .bearer_auth("t")
        .send()
        .await
        .expect("send"),
    )
    .await;
    let names: Vec<&str> = listed["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|r| r["externalReferenceId"].as_str().expect("ref"))
        .collect();
    assert_eq!(names, ["second", "first"]);
}

#[tokio::test]
async fn partner_center_webhook_registration() {
    let pc = FakePartnerCenter::start().await;
    let c = client();
    let reg = pc.url("/webhooks/v1/registration");
    let resp = c.get(&reg).bearer_auth("t").send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body = json!({"webhookUrl": "https://app/api/ReferralWebhook",
        "webhookEvents": ["referral-created", "test-created"]});
    let resp = c
        .post(&reg)
        .bearer_auth("t")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let created = json_of(resp).await;
    assert_eq!(created["WebhookUrl"], "https://app/api/ReferralWebhook");
    assert_eq!(created["SignatureTokenToMsSignatureHeader"], false);
    let resp = c
        .post(&reg)
        .bearer_auth("t")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let resp = c
        .put(&reg)
        .bearer_auth("t")
        .json(
            &json!({"WebhookUrl": "https://app2", "WebhookEvents": ["test-created"],
            "SignatureTokenToMsSignatureHeader": true}),
        )
        .send()
        .await
        .expect("send");
    let updated = json_of(resp).await;
    assert_eq!(updated["SubscriberId"], created["SubscriberId"]);
    assert_eq!(
        pc.registration().expect("registration")["WebhookUrl"],
        "https://app2"
    );

    let resp = c
        .post(format!("{reg}/validationEvents"))
        .bearer_auth("t")
        .send()
        .await
        .expect("send");
    let id = json_of(resp).await["correlationId"]
        .as_str()
        .expect("id")
        .to_owned();
    let event = json_of(
        c.get(format!("{reg}/validationEvents/{id}"))
            .bearer_auth("t")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(event["callbackUrl"], "https://app2");
    assert_eq!(event["results"][0]["responseCode"], "OK");
}

#[tokio::test]
async fn scripted_429_with_retry_after() {
    let pc = FakePartnerCenter::start().await;
    pc.insert_referral(referral("r1", "2026-01-01T00:00:00Z"));
    pc.inject(
        Fault::status(429)
            .on("GET", "/referrals/r1")
            .retry_after(7)
            .times(2),
    );
    let c = client();
    let url = pc.url("/v1.0/engagements/referrals/r1");
    for _ in 0..2 {
        let resp = c.get(&url).bearer_auth("t").send().await.expect("send");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "7");
        assert_eq!(json_of(resp).await["statusCode"], 429);
    }
    let resp = c.get(&url).bearer_auth("t").send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(pc.count("GET", "/referrals/r1"), 3);
    assert_eq!(pc.injected_faults(), 2);
}

#[tokio::test]
async fn reset_fault_is_a_connection_error() {
    let dv = FakeDataverse::start(KEY).await;
    dv.inject(Fault::connection_reset().on("PATCH", "leads("));
    let c = client();
    let url = lead_url(&dv, "a");
    let err = c
        .patch(&url)
        .bearer_auth("t")
        .json(&json!({"subject": "x"}))
        .send()
        .await
        .expect_err("reset must fail the request");
    // hyper reports `IncompleteMessage`: a request error, not a connect error or a status.
    assert!(
        err.is_request() && !err.is_status() && !err.is_timeout(),
        "{err:?}"
    );
    assert_eq!(dv.write_count(), 0);
    let resp = dv_patch(&c, &url, &[], json!({"subject": "x"})).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(dv.count("PATCH", "leads("), 2);
}

#[tokio::test]
async fn delay_fault_times_out_and_counts_in_flight() {
    let dv = FakeDataverse::start(KEY).await;
    dv.inject(Fault::delayed(Duration::from_millis(300)).times(5));
    let c = client();
    let url = dv.url("/api/data/v9.2/WhoAmI");
    let results =
        futures::future::join_all((0..5).map(|_| c.get(&url).bearer_auth("t").send())).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
    );
    assert_eq!(dv.max_in_flight(), 5);

    dv.inject(Fault::delayed(Duration::from_secs(5)));
    let err = c
        .get(&url)
        .bearer_auth("t")
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .expect_err("must time out");
    assert!(err.is_timeout());
}

#[tokio::test]
async fn random_faults_are_deterministic() {
    async fn run(seed: u64) -> Vec<String> {
        let pc = FakePartnerCenter::start().await;
        pc.set_random_faults(Some(RandomFaults {
            rate: 0.5,
            seed,
            retry_after_secs: 3,
            timeout_delay: Duration::from_millis(20),
            lost_answers: false,
        }));
        let c = client();
        let mut out = Vec::new();
        for _ in 0..40 {
            let r = c
                .get(pc.url("/webhooks/v1/registration"))
                .bearer_auth("t")
                .send()
                .await;
            out.push(match r {
                Ok(r) => r.status().as_str().to_owned(),
                Err(_) => "reset".to_owned(),
            });
        }
        assert_eq!(pc.count("GET", ""), 40);
        out
    }
    let a = run(42).await;
    assert_eq!(a, run(42).await);
    for kind in ["429", "503", "404", "reset"] {
        assert!(a.iter().any(|s| s == kind), "{kind} missing in {a:?}");
    }
}

#[tokio::test]
async fn entra_grants() {
    let entra = FakeEntra::start().await;
    let c = client();
    let token = entra.token_url("contoso");
    let post = |form: &'static str| {
        c.post(&token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };

    let resp = post(
        "grant_type=refresh_token&client_id=pc-client&client_secret=pc-secret\
         &refresh_token=rt-initial&scope=https%3A%2F%2Fapi.partner.microsoft.com%2F.default+offline_access",
    )
    .await
    .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_of(resp).await;
    assert_eq!(body["access_token"], "pc-at-1");
    assert_eq!(body["refresh_token"], "rt-1");
    assert_eq!(
        body["scope"],
        "https://api.partner.microsoft.com/.default offline_access"
    );

    let resp = post(
        "grant_type=refresh_token&client_id=pc-client&client_secret=pc-secret&refresh_token=rt-1",
    )
    .await
    .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = post(
        "grant_type=refresh_token&client_id=pc-client&client_secret=pc-secret&refresh_token=bogus",
    )
    .await
    .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = json_of(resp).await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], json!([70000]));

    let resp = post("grant_type=refresh_token&client_id=pc-client&refresh_token=rt-initial")
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    entra.require_client_secret(false);
    let resp = post("grant_type=refresh_token&client_id=pc-client&refresh_token=rt-initial")
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(entra.token_requests("refresh_token"), 5);

    let resp = post(
        "grant_type=client_credentials&client_id=dv-client&client_secret=dv-secret\
         &scope=https%3A%2F%2Forg.crm.dynamics.com%2F.default",
    )
    .await
    .expect("send");
    assert_eq!(json_of(resp).await["access_token"], "dv-at-4");
    let resp = post("grant_type=client_credentials&client_id=dv-client&client_secret=nope")
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(resp).await["error"], "invalid_client");

    let resp = c
        .post(entra.device_code_url("organizations"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("client_id=pc-client&scope=offline_access")
        .send()
        .await
        .expect("send");
    let dc = json_of(resp).await;
    assert_eq!(dc["user_code"], USER_CODE);
    let poll = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&client_id=pc-client&device_code={}",
        dc["device_code"].as_str().expect("device_code")
    );
    let poll_once = || {
        c.post(&token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(poll.clone())
            .send()
    };
    let first = json_of(poll_once().await.expect("send")).await;
    assert_eq!(first["error"], "authorization_pending");
    let second = json_of(poll_once().await.expect("send")).await;
    assert_eq!(second["refresh_token"], "rt-6");
    assert_eq!(second["scope"], "offline_access");
    let third = json_of(poll_once().await.expect("send")).await;
    assert_eq!(third["error"], "expired_token");

    assert_eq!(
        entra.issued_access_tokens(),
        ["pc-at-1", "pc-at-2", "pc-at-3", "dv-at-4", "pc-at-6"]
    );
    assert_eq!(
        entra.issued_refresh_tokens(),
        ["rt-1", "rt-2", "rt-3", "rt-6"]
    );
}

#[tokio::test]
async fn fakes_stop_when_dropped() {
    let entra = FakeEntra::start().await;
    let addr = entra.addr();
    drop(entra);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A self-signed certificate for `localhost` (PEM cert, PEM PKCS#8 key).
fn self_signed_localhost() -> (Vec<u8>, Vec<u8>) {
    use openssl::{
        asn1::Asn1Time,
        bn::BigNum,
        hash::MessageDigest,
        pkey::PKey,
        rsa::Rsa,
        x509::{X509, X509NameBuilder, extension::SubjectAlternativeName},
    };
    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", "localhost").expect("cn");
    let name = name.build();
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("version");
    let serial = BigNum::from_u32(1)
        .and_then(|n| n.to_asn1_integer())
        .expect("serial");
    b.set_serial_number(&serial).expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(&name).expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(1).expect("time"))
        .expect("na");
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&b.x509v3_context(None, None))
        .expect("san");
    b.append_extension(san).expect("ext");
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    (
        b.build().to_pem().expect("cert pem"),
        key.private_key_to_pem_pkcs8().expect("key pem"),
    )
}

#[tokio::test]
async fn entra_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (cert, key) = self_signed_localhost();
    let identity = native_tls::Identity::from_pkcs8(&cert, &key).expect("identity");
    let acceptor = native_tls::TlsAcceptor::new(identity).expect("acceptor");
    let entra = FakeEntra::start_tls(acceptor.into(), "localhost").await;
    assert!(entra.base_url().starts_with("https://localhost:"));

    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(&cert).expect("cert"))
        .build()
        .expect("connector");
    let connector = tokio_native_tls::TlsConnector::from(connector);
    let tcp = tokio::net::TcpStream::connect(entra.addr())
        .await
        .expect("connect");
    let mut tls = connector
        .connect("localhost", tcp)
        .await
        .expect("handshake");
    let body = "grant_type=client_credentials&client_id=dv-client&client_secret=dv-secret";
    let request = format!(
        "POST /t/oauth2/v2.0/token HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tls.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"access_token\":\"dv-at-1\""));
}

// ---- Dataverse: the opportunity side -------------------------------------------------------

const API: &str = "/api/data/v9.2";

fn opp_url(dv: &FakeDataverse, value: &str) -> String {
    dv.url(&format!("{API}/opportunities({KEY}='{value}')"))
}

async fn dv_get(c: &Client, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = c.get(url).bearer_auth("dv-at-1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("send GET")
}

async fn dv_post(c: &Client, url: &str, body: Value) -> reqwest::Response {
    c.post(url)
        .bearer_auth("dv-at-1")
        .json(&body)
        .send()
        .await
        .expect("send POST")
}

/// Status and `error.code` of a failed call.
async fn failure(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body = json_of(resp).await;
    (
        status,
        body["error"]["code"].as_str().expect("code").to_owned(),
        body["error"]["message"]
            .as_str()
            .expect("message")
            .to_owned(),
    )
}

fn is_seconds_utc(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T' && !s.contains('.')
}

#[tokio::test]
async fn dataverse_opportunity_upsert_by_key() {
    let dv = FakeDataverse::start(KEY).await;
    let c = client();
    let url = opp_url(&dv, "r-1");
    let select = "?$select=opportunityid,name,estimatedvalue,estimatedclosedate";
    let created = dv_patch(
        &c,
        &format!("{url}{select}"),
        &[("If-None-Match", "*"), ("Prefer", "return=representation")],
        json!({"name": "Contoso - Azure", "estimatedvalue": "50000", "estimatedclosedate": "2026-12-31"}),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let body = json_of(created).await;
    assert_eq!(body["@odata.etag"], "W/\"1\"");
    assert_eq!(body["name"], "Contoso - Azure");
    assert_eq!(
        body["estimatedvalue"], 50000,
        "money reads back as a number"
    );
    assert_eq!(body["estimatedclosedate"], "2026-12-31");
    assert_eq!(
        body["_transactioncurrencyid_value"],
        dv.base_currency_id().as_str(),
        "a money column brings the currency, the base one by default"
    );
    let id = body["opportunityid"].as_str().expect("id").to_owned();

    let again = dv_patch(&c, &url, &[("If-None-Match", "*")], json!({"name": "B"})).await;
    assert_eq!(
        failure(again).await,
        (
            412,
            String::new(),
            "A record with matching key values already exists.".into()
        )
    );

    let updated = dv_patch(
        &c,
        &url,
        &[("If-Match", "W/\"1\"")],
        json!({"closeprobability": 40}),
    )
    .await;
    assert_eq!(updated.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        updated.headers()["odata-entityid"],
        format!("{}{API}/opportunities({KEY}='r-1')", dv.base_url()).as_str()
    );
    let stale = dv_patch(
        &c,
        &url,
        &[("If-Match", "W/\"1\"")],
        json!({"closeprobability": 50}),
    )
    .await;
    assert_eq!(failure(stale).await.1, "0x80060882");

    let bad_date = dv_patch(
        &c,
        &url,
        &[],
        json!({"estimatedclosedate": "2026-12-31T00:00:00Z"}),
    )
    .await;
    let (status, code, message) = failure(bad_date).await;
    assert_eq!((status, code.as_str()), (400, "0x80048d19"));
    assert!(
        message.starts_with("Cannot convert the literal '2026-12-31T00:00:00Z'"),
        "{message}"
    );
    let with_state = dv_patch(
        &c,
        &opp_url(&dv, "r-2"),
        &[("If-None-Match", "*")],
        json!({"name": "x", "statecode": 0}),
    )
    .await;
    assert_eq!(
        failure(with_state).await,
        (
            400,
            "0x80040203".into(),
            "statecode is not valid for create".into()
        )
    );
    let missing = dv_patch(
        &c,
        &opp_url(&dv, "r-3"),
        &[("If-Match", "*")],
        json!({"name": "x"}),
    )
    .await;
    assert_eq!(failure(missing).await.0, 404);

    let row = dv.opportunity("r-1").expect("opportunity");
    assert_eq!(row["opportunityid"], id.as_str());
    assert_eq!(row[KEY], "r-1");
    assert_eq!(row["closeprobability"], 40);
    assert_eq!(row["versionnumber"], 2);
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(0), json!(1))
    );
    assert!(
        is_seconds_utc(&row["modifiedon"]) && is_seconds_utc(&row["createdon"]),
        "{row}"
    );
    assert_eq!(dv.opportunity_by_id(&id.to_uppercase()), Some(row.clone()));
    assert_eq!(dv.opportunities().len(), 1);
    assert_eq!((dv.write_count(), dv.write_count_on("opportunity")), (2, 2));

    dv.advance_clock(90);
    let before = row["modifiedon"].clone();
    let resp = dv_get(
        &c,
        &dv.url(&format!(
            "{API}/opportunities({id})?$select=modifiedon,createdon"
        )),
        &[],
    )
    .await;
    assert_eq!(
        json_of(resp).await["modifiedon"],
        before,
        "a read changes nothing"
    );
    dv_patch(&c, &url, &[], json!({"description": "later"})).await;
    let after = dv.opportunity("r-1").expect("opportunity");
    assert!(after["modifiedon"].as_str() > before.as_str(), "{after}");
    assert_eq!(after["createdon"], row["createdon"]);
}

#[tokio::test]
async fn dataverse_create_only_by_id_keeps_the_chosen_id() {
    let dv = FakeDataverse::start(KEY).await;
    let c = client();
    let id = "5f3c8a1e-2b7d-4c09-9e61-a4d27b80c3f1";
    let url = dv.url(&format!("{API}/accounts({id})"));
    let resp = dv_patch(
        &c,
        &url,
        &[("If-None-Match", "*")],
        json!({"name": "Fabrikam"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        resp.headers()["odata-entityid"],
        format!("{}{API}/accounts({id})", dv.base_url()).as_str()
    );
    let again = dv_patch(
        &c,
        &url,
        &[("If-None-Match", "*")],
        json!({"name": "Other"}),
    )
    .await;
    assert_eq!(failure(again).await.0, 412);
    assert_eq!(dv.accounts().len(), 1);
    assert_eq!(dv.accounts()[0]["accountid"], id);
    assert_eq!(dv.accounts()[0]["name"], "Fabrikam");

    let missing = "00000000-0000-4000-8000-000000000009";
    let resp = dv_get(&c, &dv.url(&format!("{API}/opportunities({missing})")), &[]).await;
    assert_eq!(
        failure(resp).await,
        (
            404,
            "0x80040217".into(),
            format!("opportunity With Id = {missing} Does Not Exist")
        )
    );
    let opp = dv_patch(
        &c,
        &dv.url(&format!("{API}/opportunities({missing})?$select=name")),
        &[("If-None-Match", "*"), ("Prefer", "return=representation")],
        json!({"name": "chosen"}),
    )
    .await;
    assert_eq!(opp.status(), StatusCode::CREATED);
    assert_eq!(json_of(opp).await["opportunityid"], missing);

    let posted = dv_post(
        &c,
        &dv.url(&format!("{API}/contacts")),
        json!({
            "firstname": "Ada", "lastname": "Lovelace",
            "parentcustomerid_account@odata.bind": format!("/accounts({id})")
        }),
    )
    .await;
    assert_eq!(posted.status(), StatusCode::NO_CONTENT);
    let entity = posted.headers()["odata-entityid"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let contact = &dv.contacts()[0];
    assert_eq!(
        entity,
        format!(
            "{}{API}/contacts({})",
            dv.base_url(),
            contact["contactid"].as_str().unwrap()
        )
    );
    assert_eq!(contact["fullname"], "Ada Lovelace");
    assert_eq!(contact["_parentcustomerid_value"], id);
    let posted = dv_post(
        &c,
        &dv.url(&format!("{API}/accounts")),
        json!({"name": "Second"}),
    )
    .await;
    assert_eq!(posted.status(), StatusCode::NO_CONTENT);
    assert!(
        posted.headers()["odata-entityid"]
            .to_str()
            .unwrap()
            .starts_with(&format!("{}{API}/accounts(", dv.base_url()))
    );
    assert_eq!(dv.accounts().len(), 2);
    assert_eq!(dv.write_count_on("account"), 2);
    assert_eq!(dv.write_count(), 4);
}

#[tokio::test]
async fn dataverse_account_filter_with_quotes_and_ampersand() {
    let dv = FakeDataverse::start(KEY).await;
    let first =
        dv.insert_account(json!({"name": "O'Brien & Sons", "address1_postalcode": "98052"}));
    let second =
        dv.insert_account(json!({"name": "o'brien & sons", "address1_postalcode": "98052"}));
    dv.insert_account(json!({"name": "O'Brien & Sons", "address1_postalcode": "10001"}));
    dv.insert_account(json!({"name": "O'Brien", "address1_postalcode": "98052"}));
    let no_postal = dv.insert_account(json!({"name": "O'Brien & Sons"}));
    let c = client();
    let query = |filter: &str, top: &str| {
        dv.url(&format!(
            "{API}/accounts?$select=accountid,name,address1_postalcode&$filter={filter}{top}"
        ))
    };
    let ids = |body: Value| -> Vec<String> {
        body["value"]
            .as_array()
            .expect("value")
            .iter()
            .map(|r| r["accountid"].as_str().expect("id").to_owned())
            .collect()
    };
    let filter = "name eq 'O''Brien %26 Sons' and address1_postalcode eq '98052'";
    let resp = dv_get(&c, &query(filter, "&$top=2"), &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_of(resp).await;
    assert_eq!(ids(body.clone()), [first.clone(), second]);
    assert_eq!(body["value"][0]["name"], "O'Brien & Sons");
    assert!(body["value"][0]["@odata.etag"].is_string());
    let body = json_of(dv_get(&c, &query(filter, "&$top=1"), &[]).await).await;
    assert_eq!(ids(body), [first]);
    let null = "name eq 'O''Brien %26 Sons' and address1_postalcode eq null";
    let body = json_of(dv_get(&c, &query(null, ""), &[]).await).await;
    assert_eq!(ids(body), [no_postal]);

    let either = "name eq 'O''Brien' or address1_postalcode eq '10001'";
    let body = json_of(dv_get(&c, &query(either, ""), &[]).await).await;
    assert_eq!(ids(body).len(), 2, "or: the 10001 account and O'Brien");

    for bad in [
        "(name eq 'O''Brien %26 Sons' or address1_postalcode eq '98052'",
        "contains(name,'Brien')",
        "name eq 'O'Brien'",
        "name eq 3",
    ] {
        let (status, code, message) = failure(dv_get(&c, &query(bad, ""), &[]).await).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "0x80060888"),
            "{bad}: {message}"
        );
    }
    dv.set_enforce_schema(true);
    let (status, code, message) = failure(dv_get(&c, &query("nme eq 'x'", ""), &[]).await).await;
    assert_eq!((status, code.as_str()), (400, "0x0"));
    assert_eq!(
        message,
        "Could not find a property named 'nme' on type 'Microsoft.Dynamics.CRM.account'."
    );
}

#[tokio::test]
async fn dataverse_currency_lookup_and_binding() {
    let dv = FakeDataverse::start(KEY).await;
    let c = client();
    let query = |iso: &str| {
        dv.url(&format!(
            "{API}/transactioncurrencies?$select=transactioncurrencyid,currencyname,exchangerate&$filter=isocurrencycode eq '{iso}' and statecode eq 0"
        ))
    };
    let body = json_of(dv_get(&c, &query("USD"), &[]).await).await;
    assert_eq!(body["value"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        body["value"][0]["transactioncurrencyid"],
        dv.base_currency_id().as_str()
    );
    assert_eq!(body["value"][0]["currencyname"], "US Dollar");
    let body = json_of(dv_get(&c, &query("usd"), &[]).await).await;
    assert_eq!(
        body["value"].as_array().map(Vec::len),
        Some(1),
        "case-insensitive"
    );
    let body = json_of(dv_get(&c, &query("GBP"), &[]).await).await;
    assert_eq!(body["value"], json!([]));
    let gbp = dv.add_currency("GBP");
    let body = json_of(dv_get(&c, &query("GBP"), &[]).await).await;
    assert_eq!(body["value"][0]["transactioncurrencyid"], gbp.as_str());
    assert_eq!(dv.currency_id("gbp").as_deref(), Some(gbp.as_str()));
    dv.remove_currency("GBP");
    assert_eq!(dv.currency_id("GBP"), None);
    let body = json_of(dv_get(&c, &query("GBP"), &[]).await).await;
    assert_eq!(body["value"], json!([]));

    let eur = dv.currency_id("EUR").expect("EUR is seeded");
    let resp = dv_patch(
        &c,
        &format!(
            "{}?$select=estimatedvalue,estimatedvalue_base,exchangerate",
            opp_url(&dv, "r-eur")
        ),
        &[("Prefer", "return=representation")],
        json!({"name": "x", "estimatedvalue": 920,
               "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({eur})")}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body = json_of(resp).await;
    assert_eq!(body["_transactioncurrencyid_value"], eur.as_str());
    assert_eq!(body["estimatedvalue_base"], 1000.0);
    let gone = "11111111-2222-4333-8444-555555555555";
    let resp = dv_patch(
        &c,
        &opp_url(&dv, "r-eur"),
        &[],
        json!({"transactioncurrencyid@odata.bind": format!("/transactioncurrencies({gone})")}),
    )
    .await;
    assert_eq!(
        failure(resp).await,
        (
            400,
            "0x80040217".into(),
            format!("transactioncurrency With Id = {gone} Does Not Exist")
        )
    );
}

#[tokio::test]
async fn dataverse_lookups_and_navigation_properties() {
    let dv = FakeDataverse::start(KEY).await;
    let c = client();
    let account = dv.insert_account(json!({"name": "Contoso Ltd"}));
    let contact = dv.insert_contact(json!({"firstname": "Ada", "lastname": "Lovelace"}));
    let url = opp_url(&dv, "r-l");
    let resp = dv_patch(
        &c,
        &url,
        &[],
        json!({"name": "x",
               "customerid_account@odata.bind": format!("/accounts({account})"),
               "parentcontactid@odata.bind": format!("{}{API}/contacts({contact})", dv.base_url())}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let read = format!("{url}?$select=name,_customerid_value,_parentcontactid_value");
    let annotations = [(
        "Prefer",
        "odata.include-annotations=\"Microsoft.Dynamics.CRM.lookuplogicalname,Microsoft.Dynamics.CRM.associatednavigationproperty,OData.Community.Display.V1.FormattedValue\"",
    )];
    let body = json_of(dv_get(&c, &read, &annotations).await).await;
    assert_eq!(body["_customerid_value"], account.as_str());
    assert_eq!(
        body["_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"],
        "account"
    );
    assert_eq!(
        body["_customerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"],
        "customerid_account"
    );
    assert_eq!(
        body["_customerid_value@OData.Community.Display.V1.FormattedValue"],
        "Contoso Ltd"
    );
    assert_eq!(body["_parentcontactid_value"], contact.as_str());
    let plain = json_of(dv_get(&c, &read, &[]).await).await;
    assert!(
        plain
            .get("_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname")
            .is_none(),
        "annotations only when asked: {plain}"
    );

    let resp = dv_patch(
        &c,
        &url,
        &[],
        json!({"customerid_contact@odata.bind": format!("/contacts({contact})")}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let body = json_of(dv_get(&c, &read, &annotations).await).await;
    assert_eq!(
        body["_customerid_value"],
        contact.as_str(),
        "the contact replaced the account"
    );
    assert_eq!(
        body["_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"],
        "contact"
    );

    let wrong_case = dv_patch(
        &c,
        &url,
        &[],
        json!({"CustomerId_account@odata.bind": format!("/accounts({account})")}),
    )
    .await;
    let (status, code, message) = failure(wrong_case).await;
    assert_eq!((status, code.as_str()), (400, "0x80048d19"));
    assert!(
        message.starts_with(
            "An undeclared property 'CustomerId_account' which only has property annotations"
        ),
        "{message}"
    );
    let unknown_nav = dv_patch(
        &c,
        &url,
        &[],
        json!({"accountid@odata.bind": format!("/accounts({account})")}),
    )
    .await;
    assert_eq!(failure(unknown_nav).await.1, "0x80048d19");
    let wrong_table = dv_patch(
        &c,
        &url,
        &[],
        json!({"customerid_account@odata.bind": format!("/contacts({contact})")}),
    )
    .await;
    assert_eq!(failure(wrong_table).await.0, 400);
    let missing = "99999999-9999-4999-8999-999999999999";
    let resp = dv_patch(
        &c,
        &url,
        &[],
        json!({"parentaccountid@odata.bind": format!("/accounts({missing})")}),
    )
    .await;
    assert_eq!(
        failure(resp).await,
        (
            400,
            "0x80040217".into(),
            format!("account With Id = {missing} Does Not Exist")
        )
    );
    let direct = dv_patch(&c, &url, &[], json!({"_customerid_value": account})).await;
    assert_eq!(
        failure(direct).await.0,
        400,
        "lookups are written with @odata.bind only"
    );
    let cleared = dv_patch(&c, &url, &[], json!({"parentcontactid@odata.bind": null})).await;
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    let row = dv.opportunity("r-l").expect("opportunity");
    assert!(row.get("_parentcontactid_value").is_none(), "{row}");
    assert_eq!(row["_customerid_value"], contact.as_str());

    let lead = dv.insert_lead("r-lead", json!({"subject": "s"}));
    let resp = dv_patch(
        &c,
        &url,
        &[],
        json!({"originatingleadid@odata.bind": format!("/leads({KEY}='r-lead')")}),
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "binds by alternate key work too"
    );
    assert_eq!(
        dv.opportunity("r-l").unwrap()["_originatingleadid_value"],
        lead.as_str()
    );
}

async fn close(
    c: &Client,
    dv: &FakeDataverse,
    action: &str,
    status: i64,
    id: &str,
    extra: Value,
) -> reqwest::Response {
    let mut close = json!({"subject": format!("{action} {id}"), "opportunityid@odata.bind": format!("/opportunities({id})")});
    close
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    dv_post(
        c,
        &dv.url(&format!("{API}/{action}")),
        json!({"Status": status, "OpportunityClose": close}),
    )
    .await
}

#[tokio::test]
async fn dataverse_win_then_second_win_is_already_closed() {
    let dv = FakeDataverse::start(KEY).await;
    let c = client();
    let id = dv.insert_opportunity(Some("r-w"), json!({"name": "won", "estimatedvalue": 5000}));
    let resp = close(
        &c,
        &dv,
        "WinOpportunity",
        3,
        &id,
        json!({"description": "Closed from Partner Center"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.text().await.expect("body").is_empty());
    let row = dv.opportunity("r-w").expect("opportunity");
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(1), json!(3))
    );
    assert_eq!(
        row["actualvalue"], 5000,
        "defaults to the estimated revenue"
    );
    assert_eq!(row["versionnumber"], 2);
    assert_eq!(row["actualclosedate"].as_str().map(str::len), Some(10));
    let closes = dv.opportunity_closes();
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0]["_opportunityid_value"], id.as_str());
    assert_eq!(closes[0]["subject"], format!("WinOpportunity {id}"));
    assert_eq!(closes[0]["description"], "Closed from Partner Center");
    assert_eq!(closes[0]["statecode"], 1);

    let again = close(&c, &dv, "WinOpportunity", 3, &id, json!({})).await;
    assert_eq!(
        failure(again).await,
        (
            400,
            "0x80040515".into(),
            "The opportunity is already closed.".into()
        )
    );
    assert_eq!(dv.opportunity_closes().len(), 1);
    assert_eq!(dv.write_count_on("opportunity"), 1);

    let lost = dv.insert_opportunity(None, json!({"name": "lost", "estimatedvalue": 10}));
    let bad = close(&c, &dv, "LoseOpportunity", 3, &lost, json!({})).await;
    assert_eq!(failure(bad).await.1, "0x80048408");
    let resp = close(
        &c,
        &dv,
        "LoseOpportunity",
        5,
        &lost,
        json!({"actualrevenue": 0, "actualend": "2026-11-30T00:00:00Z"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let row = dv.opportunity_by_id(&lost).expect("opportunity");
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(2), json!(5))
    );
    assert_eq!(row["actualvalue"], 0);
    assert_eq!(row["actualclosedate"], "2026-11-30");
    assert_eq!(
        dv.opportunity_closes()[1]["actualend"],
        "2026-11-30T00:00:00Z"
    );

    let missing = close(
        &c,
        &dv,
        "WinOpportunity",
        3,
        "00000000-0000-4000-8000-00000000000a",
        json!({}),
    )
    .await;
    assert_eq!(failure(missing).await.0, 404);
    let unbound = dv_post(
        &c,
        &dv.url(&format!("{API}/WinOpportunity")),
        json!({"Status": 3, "OpportunityClose": {"subject": "x"}}),
    )
    .await;
    assert_eq!(failure(unbound).await.1, "0x80043b15");
}

#[tokio::test]
async fn dataverse_opportunity_state_rules_over_patch() {
    let dv = FakeDataverse::start(KEY).await;
    let c = client();
    let id = dv.insert_opportunity(Some("r-s"), json!({"name": "s", "estimatedvalue": 1}));
    let url = dv.url(&format!("{API}/opportunities({id})"));
    let resp = dv_patch(&c, &url, &[], json!({"statecode": 1, "statuscode": 3})).await;
    let (status, code, message) = failure(resp).await;
    assert_eq!((status, code.as_str()), (400, "0x80100005"));
    assert!(
        message.contains("use the WinOpportunityRequest message"),
        "{message}"
    );
    let resp = dv_patch(&c, &url, &[], json!({"statuscode": 4})).await;
    assert_eq!(
        failure(resp).await.1,
        "0x80048408",
        "Canceled is not an open status"
    );
    let resp = dv_patch(&c, &url, &[], json!({"statuscode": 2})).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "On Hold by PATCH is fine"
    );
    let resp = dv_patch(&c, &url, &[], json!({"statecode": 0, "statuscode": 1})).await;
    assert_eq!(failure(resp).await.1, "0x8004051a", "already open");

    let resp = close(&c, &dv, "WinOpportunity", 3, &id, json!({})).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = dv_patch(&c, &url, &[], json!({"description": "edit"})).await;
    assert_eq!(
        failure(resp).await,
        (
            400,
            "0x8004d103".into(),
            "This opportunity is closed and read-only; reopen it first.".into()
        )
    );
    let resp = dv_patch(
        &c,
        &opp_url(&dv, "r-s"),
        &[],
        json!({"description": "edit"}),
    )
    .await;
    assert_eq!(failure(resp).await.1, "0x8004d103", "by key too");
    let resp = dv_patch(
        &c,
        &url,
        &[],
        json!({"statecode": 0, "statuscode": 1, "name": "x"}),
    )
    .await;
    assert_eq!(
        failure(resp).await.1,
        "0x8004d103",
        "a reopen carries nothing else"
    );
    let resp = dv_patch(&c, &url, &[], json!({"statecode": 0, "statuscode": 4})).await;
    assert_eq!(failure(resp).await.1, "0x80048408");
    let version = dv.opportunity_by_id(&id).unwrap()["versionnumber"].clone();

    let resp = dv_patch(
        &c,
        &url,
        &[("If-Match", "*")],
        json!({"statecode": 0, "statuscode": 1}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let row = dv.opportunity_by_id(&id).expect("opportunity");
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(row["versionnumber"], version.as_u64().unwrap() + 1);
    assert_eq!(
        dv.opportunity_closes()[0]["statecode"],
        2,
        "the close activity is canceled"
    );
    let resp = dv_patch(&c, &url, &[], json!({"description": "editable again"})).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    dv.set_opportunity_state(&id, 2, 4);
    assert_eq!(
        dv.opportunity_closes().len(),
        2,
        "a seller's Lose adds a close row"
    );
    let resp = dv_patch(&c, &url, &[], json!({"description": "x"})).await;
    assert_eq!(failure(resp).await.1, "0x8004d103");
    dv.set_opportunity_column(&id, "description", json!("seller edit"));
    assert_eq!(
        dv.opportunity_by_id(&id).unwrap()["description"],
        "seller edit"
    );
}

#[tokio::test]
async fn dataverse_qualify_lead_does_not_copy_the_key() {
    let dv = FakeDataverse::start(KEY).await;
    let c = client();
    let lead = dv.insert_lead(
        "r-q",
        json!({"subject": "Azure migration", "description": "60 VMs", "companyname": "Fabrikam",
               "firstname": "Ada", "lastname": "Lovelace"}),
    );
    let opportunity = dv.qualify_lead("r-q");
    let row = dv.opportunity_by_id(&opportunity).expect("opportunity");
    assert_eq!(row["name"], "Azure migration");
    assert_eq!(row["description"], "60 VMs");
    assert_eq!(row["_originatingleadid_value"], lead.as_str());
    assert!(
        row.get(KEY).is_none(),
        "custom columns are not mapped: {row}"
    );
    assert!(dv.opportunity("r-q").is_none());
    let accounts = dv.accounts();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0]["name"], "Fabrikam");
    assert_eq!(row["_customerid_value"], accounts[0]["accountid"]);
    assert_eq!(
        row["_transactioncurrencyid_value"],
        dv.base_currency_id().as_str()
    );
    assert_eq!(dv.contacts()[0]["fullname"], "Ada Lovelace");
    let lead_row = dv.lead("r-q").expect("lead");
    assert_eq!(
        (
            lead_row["statecode"].clone(),
            lead_row["statuscode"].clone()
        ),
        (json!(1), json!(3))
    );
    assert_eq!(
        lead_row["_qualifyingopportunityid_value"],
        opportunity.as_str()
    );
    assert_eq!(dv.lead_by_id(&lead), Some(lead_row.clone()));
    let resp = dv_get(
        &c,
        &format!(
            "{}?$select=_qualifyingopportunityid_value",
            lead_url(&dv, "r-q")
        ),
        &[],
    )
    .await;
    assert_eq!(
        json_of(resp).await["_qualifyingopportunityid_value"],
        opportunity.as_str()
    );

    // The service stamps the key onto the new opportunity itself.
    let etag = format!("W/\"{}\"", row["versionnumber"]);
    let resp = dv_patch(
        &c,
        &dv.url(&format!("{API}/opportunities({opportunity})")),
        &[("If-Match", &etag)],
        json!({KEY: "r-q"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        dv.opportunity("r-q").expect("now by key")["opportunityid"],
        opportunity.as_str()
    );

    // The HTTP action, with an attribute map for the key.
    dv.add_qualify_mapping(KEY, KEY);
    let other = dv.insert_lead("r-q2", json!({"subject": "Second"}));
    let url = dv.url(&format!(
        "{API}/leads({other})/Microsoft.Dynamics.CRM.QualifyLead"
    ));
    let body = json!({"CreateAccount": true, "CreateContact": true, "CreateOpportunity": true, "Status": 3});
    let resp = dv_post(&c, &url, body.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let value = json_of(resp).await["value"].clone();
    assert_eq!(
        value.as_array().map(Vec::len),
        Some(1),
        "no company, no name: only the opportunity: {value}"
    );
    assert_eq!(
        value[0]["@odata.type"],
        "#Microsoft.Dynamics.CRM.opportunity"
    );
    let id = value[0]["opportunityid"].as_str().expect("id");
    assert_eq!(
        dv.opportunity("r-q2").expect("mapped key")["opportunityid"],
        id
    );
    assert_eq!(dv.write_count_on("lead"), 1);
    let again = dv_post(&c, &url, body).await;
    assert_eq!(
        failure(again).await,
        (
            400,
            "0x80040519".into(),
            "The lead is already closed.".into()
        )
    );
    let resp = dv_patch(&c, &lead_url(&dv, "r-q2"), &[], json!({"subject": "x"})).await;
    assert_eq!(failure(resp).await.0, 400, "a qualified lead is read-only");
}

#[tokio::test]
async fn dataverse_key_uniqueness_on_patch_by_id() {
    let dv = FakeDataverse::start(KEY).await.with_key_column(true);
    let c = client();
    dv.insert_opportunity(Some("k1"), json!({"name": "first"}));
    let second = dv.insert_opportunity(None, json!({"name": "second"}));
    let url = dv.url(&format!("{API}/opportunities({second})"));
    let resp = dv_patch(&c, &url, &[], json!({KEY: "k1"})).await;
    let (status, code, message) = failure(resp).await;
    assert_eq!((status, code.as_str()), (412, "0x80060892"));
    assert!(
        message.starts_with(&format!(
            "Entity Key {KEY}key violated. A record with the same value for {KEY} already exists."
        )),
        "{message}"
    );
    assert!(dv.opportunity_by_id(&second).unwrap().get(KEY).is_none());
    let resp = dv_patch(&c, &url, &[], json!({KEY: "k2"})).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        dv.opportunity("k2").expect("k2")["opportunityid"],
        second.as_str()
    );
    let resp = dv_post(
        &c,
        &dv.url(&format!("{API}/opportunities")),
        json!({"name": "third", KEY: "k1"}),
    )
    .await;
    assert_eq!(failure(resp).await.1, "0x80060892", "POST is checked too");

    dv.insert_lead("a", Value::Null);
    let b = dv.insert_lead("b", Value::Null);
    let resp = dv_patch(
        &c,
        &dv.url(&format!("{API}/leads({b})")),
        &[],
        json!({KEY: "a"}),
    )
    .await;
    assert_eq!(failure(resp).await.1, "0x80060892");
    assert_eq!(dv.lead_by_id(&b).unwrap()[KEY], "b");
    assert_eq!(dv.opportunities().len(), 2);
}

#[tokio::test]
async fn dataverse_metadata_per_table() {
    let dv = FakeDataverse::start(KEY).await;
    dv.set_enforce_schema(true);
    let c = client();
    let entity = |t: &str| dv.url(&format!("{API}/EntityDefinitions(LogicalName='{t}')"));
    let label = |text: &str| json!({"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]});
    let link = json!({"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "AttributeType": "String",
        "SchemaName": "new_ReferralLink", "DisplayName": label("Referral Link"), "FormatName": {"Value": "Url"}, "MaxLength": 500});
    let resp = dv_post(
        &c,
        &format!("{}/Attributes", entity("opportunity")),
        link.clone(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(
        resp.headers()["odata-entityid"]
            .to_str()
            .unwrap()
            .starts_with(&format!("{}/Attributes(", entity("opportunity")))
    );
    let again = dv_post(
        &c,
        &format!("{}/Attributes", entity("opportunity")),
        link.clone(),
    )
    .await;
    assert_eq!(
        failure(again).await,
        (
            400,
            "0x80060304".into(),
            "Attribute new_referrallink already exists for entity opportunity.".into()
        )
    );
    assert!(dv.has_column_on("opportunity", "new_referrallink"));
    assert!(!dv.has_column_on("lead", "new_referrallink"));
    let resp = dv_post(&c, &format!("{}/Attributes", entity("lead")), link).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "per table");
    assert_eq!(
        dv.attribute("opportunity", "new_referrallink").unwrap()["FormatName"]["Value"],
        "Url"
    );

    let picklist = json!({"@odata.type": "Microsoft.Dynamics.CRM.PicklistAttributeMetadata", "SchemaName": "new_ReferralStatus",
        "OptionSet": {"IsGlobal": false, "OptionSetType": "Picklist", "Options": [
            {"Value": 727000000, "Label": label("New")}, {"Value": 727000001, "Label": label("Active")}]}});
    assert_eq!(
        dv_post(
            &c,
            &format!("{}/Attributes", entity("opportunity")),
            picklist
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );
    for (schema, ty) in [("new_Sync", "Boolean"), ("new_Audit", "Memo")] {
        let body = json!({"@odata.type": format!("Microsoft.Dynamics.CRM.{ty}AttributeMetadata"), "SchemaName": schema, "MaxLength": 1_048_576});
        assert_eq!(
            dv_post(&c, &format!("{}/Attributes", entity("opportunity")), body)
                .await
                .status(),
            StatusCode::NO_CONTENT,
            "{ty}"
        );
    }
    let values: Vec<Value> =
        dv.attribute("opportunity", "new_referralstatus").unwrap()["OptionSet"]["Options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["Value"].clone())
            .collect();
    assert_eq!(values, [json!(727000000), json!(727000001)]);
    let resp = dv_get(
        &c,
        &format!(
            "{}/Attributes(LogicalName='new_referralstatus')",
            entity("opportunity")
        ),
        &[],
    )
    .await;
    let body = json_of(resp).await;
    assert_eq!(
        (body["LogicalName"].clone(), body["AttributeType"].clone()),
        (json!("new_referralstatus"), json!("Picklist"))
    );
    assert_eq!(body["OptionSet"]["Options"][1]["Value"], 727000001);
    let resp = dv_get(
        &c,
        &format!(
            "{}/Attributes(LogicalName='statuscode')",
            entity("opportunity")
        ),
        &[],
    )
    .await;
    let options = json_of(resp).await["OptionSet"]["Options"].clone();
    assert!(
        options
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["Value"] == 5 && o["State"] == 2),
        "{options}"
    );
    let resp = dv_get(
        &c,
        &format!(
            "{}/Attributes(LogicalName='new_referralstatus')",
            entity("lead")
        ),
        &[],
    )
    .await;
    assert_eq!(failure(resp).await.0, 404);

    // Keys per table: the opportunity key alone does not make lead addressable.
    let key = json!({"SchemaName": "new_opportunity_key", "DisplayName": label("k"), "KeyAttributes": [KEY]});
    let resp = dv_post(&c, &format!("{}/Keys", entity("opportunity")), key.clone()).await;
    assert_eq!(
        failure(resp).await.1,
        "0x80040217",
        "the key column does not exist yet"
    );
    let column = json!({"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "SchemaName": KEY, "MaxLength": 100});
    assert_eq!(
        dv_post(&c, &format!("{}/Attributes", entity("opportunity")), column)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        dv_post(&c, &format!("{}/Keys", entity("opportunity")), key)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(dv.key_status_on("opportunity").as_deref(), Some("Pending"));
    assert_eq!(dv.key_status(), None);
    let x_url = opp_url(&dv, "x");
    let write = || {
        dv_patch(
            &c,
            &x_url,
            &[],
            json!({"name": "x", "new_referralstatus": 727000001, "new_sync": true}),
        )
    };
    assert_eq!(
        failure(write().await).await.1,
        "0x80060888",
        "key not Active yet"
    );
    let keys = format!(
        "{}/Keys?$select=LogicalName,KeyAttributes,EntityKeyIndexStatus",
        entity("opportunity")
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            json_of(dv_get(&c, &keys, &[]).await).await["value"][0]["EntityKeyIndexStatus"].clone(),
        );
    }
    assert_eq!(
        seen,
        [json!("Pending"), json!("InProgress"), json!("Active")]
    );
    assert_eq!(
        json_of(dv_get(&c, &format!("{}/Keys", entity("lead")), &[]).await).await["value"],
        json!([])
    );
    assert_eq!(write().await.status(), StatusCode::NO_CONTENT);
    let resp = dv_patch(
        &c,
        &opp_url(&dv, "x"),
        &[],
        json!({"new_referralstatus": 5}),
    )
    .await;
    assert_eq!(
        failure(resp).await.1,
        "0x8004431a",
        "a value outside the created choices"
    );
    let resp = dv_patch(&c, &opp_url(&dv, "x"), &[], json!({"new_unknown": 5})).await;
    assert_eq!(failure(resp).await.1, "0x80060888");
    let resp = dv_get(
        &c,
        &format!("{}?$select=name,bogus", opp_url(&dv, "x")),
        &[],
    )
    .await;
    assert_eq!(
        failure(resp).await,
        (
            400,
            "0x0".into(),
            "Could not find a property named 'bogus' on type 'Microsoft.Dynamics.CRM.opportunity'."
                .into()
        )
    );
    let resp = dv_get(
        &c,
        &format!("{}?$select=customerid", opp_url(&dv, "x")),
        &[],
    )
    .await;
    assert_eq!(
        failure(resp).await.1,
        "0x0",
        "select the _customerid_value instead"
    );
    let resp = dv_get(
        &c,
        &format!("{}?$select=_customerid_value,new_sync", opp_url(&dv, "x")),
        &[],
    )
    .await;
    assert_eq!(json_of(resp).await["new_sync"], true);
    let resp = dv_patch(&c, &lead_url(&dv, "x"), &[], json!({"subject": "x"})).await;
    assert_eq!(failure(resp).await.1, "0x80060888", "lead has no key");

    let publish = dv_post(&c, &dv.url(&format!("{API}/PublishXml")), json!({"ParameterXml": "<importexportxml><entities><entity>opportunity</entity></entities></importexportxml>"})).await;
    assert_eq!(publish.status(), StatusCode::NO_CONTENT);
    let publish = dv_post(&c, &dv.url(&format!("{API}/PublishAllXml")), json!({})).await;
    assert_eq!(publish.status(), StatusCode::NO_CONTENT);
    let publish = dv_post(&c, &dv.url(&format!("{API}/PublishXml")), json!({})).await;
    assert_eq!(failure(publish).await.0, 400);

    let both = FakeDataverse::start(KEY).await.with_key_column(true);
    assert_eq!(both.key_status_on("opportunity").as_deref(), Some("Active"));
    assert!(both.has_column_on("opportunity", KEY) && both.has_column(KEY));
    both.set_schema(false, None);
    assert!(!both.has_column_on("opportunity", KEY));
    assert_eq!(both.key_status_on("opportunity"), None);
}
