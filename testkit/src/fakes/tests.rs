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
        .get(pc.url("/v1.0/engagements/referrals?$filter=status eq 'New'"))
        .bearer_auth("t")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
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
