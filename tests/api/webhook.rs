//! ReferralWebhook: one test per rejection reason, the success paths, and the cache.

use serde_json::Value;
use testkit::{
    cert_host::FileReply,
    pki::{self, CertSpec, KeySlot},
};

use crate::helpers::{
    CertWorld, REFERRAL_ID, TestApp, callback_body, http_envelope, webhook_settings,
};

struct World {
    certs: CertWorld,
    app: TestApp,
}

async fn world() -> World {
    let certs = CertWorld::start().await;
    let mut settings = webhook_settings(&certs);
    settings.webhook.fetch_timeout = std::time::Duration::from_millis(800);
    let app = TestApp::spawn(&settings).await;
    World { certs, app }
}

/// The caller's status and body, and the queue output if any.
struct Answer {
    status: u16,
    body: Value,
    queued: Option<Value>,
}

async fn call(app: &TestApp, body: Option<&str>, headers: &[(String, String)]) -> Answer {
    let (host_status, answer) = app
        .invoke("ReferralWebhook", http_envelope(body, headers))
        .await;
    assert_eq!(host_status, 200, "the host must always get 2xx: {answer}");
    let res = &answer["Outputs"]["res"];
    let body = serde_json::from_str(res["body"].as_str().expect("res.body")).expect("JSON body");
    assert_eq!(res["headers"]["Content-Type"], "application/json");
    Answer {
        status: res["statusCode"].as_u64().expect("statusCode") as u16,
        body,
        queued: answer["Outputs"].get("syncQueue").cloned(),
    }
}

fn with(headers: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect();
    out.push((name.to_owned(), value.to_owned()));
    out
}

fn without(headers: &[(String, String)], name: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

async fn rejected(
    w: &World,
    body: Option<&str>,
    headers: &[(String, String)],
    status: u16,
    reason: &str,
) {
    let answer = call(&w.app, body, headers).await;
    assert_eq!(answer.status, status, "{}", answer.body);
    assert!(
        answer.queued.is_none(),
        "nothing may be enqueued on rejection"
    );
    assert_eq!(answer.body["reason"], reason, "{}", answer.body);
}

fn good(w: &World) -> (String, Vec<(String, String)>) {
    let body = callback_body("referral-created", REFERRAL_ID);
    let headers = w
        .certs
        .signed_headers(body.as_bytes(), &w.certs.pki.leaf, "leaf.cer");
    (body, headers)
}

#[tokio::test]
async fn genuine_callback_is_queued_with_the_documented_message() {
    let w = world().await;
    let (body, headers) = good(&w);
    let answer = call(&w.app, Some(&body), &headers).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        serde_json::json!({"status": "queued", "referralId": REFERRAL_ID})
    );
    let queued = answer.queued.expect("syncQueue output");
    assert_eq!(queued["referralId"], REFERRAL_ID);
    assert_eq!(queued["eventName"], "referral-created");
    assert_eq!(
        queued["resourceChangeUtcDate"],
        "2026-11-20T10:15:30.1234567+00:00"
    );
    assert!(queued["receivedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(queued.as_object().unwrap().len(), 4);
}

#[tokio::test]
async fn all_four_referral_events_are_queued_and_others_ignored() {
    let w = world().await;
    for event in [
        "referral-updated",
        "related-referral-created",
        "related-referral-updated",
    ] {
        let body = callback_body(event, REFERRAL_ID);
        let answer = call(
            &w.app,
            Some(&body),
            &w.certs
                .signed_headers(body.as_bytes(), &w.certs.pki.leaf, "leaf.cer"),
        )
        .await;
        assert_eq!(answer.queued.expect(event)["eventName"], event);
    }
    for event in ["test-created", "subscription-updated"] {
        let body = callback_body(event, REFERRAL_ID);
        let answer = call(
            &w.app,
            Some(&body),
            &w.certs
                .signed_headers(body.as_bytes(), &w.certs.pki.leaf, "leaf.cer"),
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.body,
            serde_json::json!({"status": "ignored", "event": event})
        );
        assert!(answer.queued.is_none());
    }
}

#[tokio::test]
async fn x_ms_signature_header_with_and_without_prefix_is_accepted() {
    let w = world().await;
    let (body, headers) = good(&w);
    let signature = w.certs.pki.leaf.sign_b64(body.as_bytes());
    for value in [format!("Signature {signature}"), signature.clone()] {
        let h = with(
            &without(&headers, "Authorization"),
            "x-ms-signature",
            &value,
        );
        assert!(
            call(&w.app, Some(&body), &h).await.queued.is_some(),
            "{value}"
        );
    }
}

#[tokio::test]
async fn header_names_are_case_insensitive() {
    let w = world().await;
    let (body, headers) = good(&w);
    let upper: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_uppercase(), v.clone()))
        .collect();
    assert!(call(&w.app, Some(&body), &upper).await.queued.is_some());
}

#[tokio::test]
async fn certificate_and_intermediate_are_fetched_once_and_cached() {
    let w = world().await;
    let (body, headers) = good(&w);
    for _ in 0..3 {
        assert!(call(&w.app, Some(&body), &headers).await.queued.is_some());
    }
    assert_eq!(w.certs.host.hits("/cert/leaf.cer"), 1);
    assert_eq!(w.certs.host.hits("/aia/issuing.cer"), 1);
}

#[tokio::test]
async fn concurrent_first_requests_fetch_the_certificate_once() {
    let w = world().await;
    let (body, headers) = good(&w);
    let calls = (0..10).map(|_| call(&w.app, Some(&body), &headers));
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.queued.is_some()));
    assert_eq!(w.certs.host.hits("/cert/leaf.cer"), 1);
}

#[tokio::test]
async fn pem_downloads_and_bundled_intermediates_work_without_aia() {
    let w = world().await;
    let bundle = [
        w.certs.pki.leaf.cert_pem(),
        w.certs.pki.intermediate.cert_pem(),
    ]
    .concat();
    w.certs.host.set("/cert/bundle.pem", FileReply::ok(bundle));
    let body = callback_body("referral-updated", REFERRAL_ID);
    let headers = w
        .certs
        .signed_headers(body.as_bytes(), &w.certs.pki.leaf, "bundle.pem");
    assert!(call(&w.app, Some(&body), &headers).await.queued.is_some());
    assert_eq!(w.certs.host.hits("/aia/issuing.cer"), 0);
}

#[tokio::test]
async fn missing_headers_are_each_rejected() {
    let w = world().await;
    let (body, headers) = good(&w);
    rejected(
        &w,
        Some(&body),
        &without(&headers, "x-ms-certificate-url"),
        401,
        "missing x-ms-certificate-url",
    )
    .await;
    rejected(
        &w,
        Some(&body),
        &without(&headers, "x-ms-signature-algorithm"),
        401,
        "missing x-ms-signature-algorithm",
    )
    .await;
    rejected(
        &w,
        Some(&body),
        &without(&headers, "Authorization"),
        401,
        "missing signature",
    )
    .await;
    rejected(
        &w,
        Some(&body),
        &with(&headers, "Authorization", "Bearer abc"),
        401,
        "missing signature",
    )
    .await;
    assert_eq!(
        w.certs.host.total_hits(),
        0,
        "no download before the headers are complete"
    );
}

#[tokio::test]
async fn wrong_algorithms_are_rejected_including_rsa_sha1() {
    let w = world().await;
    let (body, headers) = good(&w);
    let sha1 = {
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha1(), &w.certs.pki.leaf.key)
                .unwrap();
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            signer.sign_oneshot_to_vec(body.as_bytes()).unwrap(),
        )
    };
    let h = with(
        &with(&headers, "Authorization", &format!("Signature {sha1}")),
        "x-ms-signature-algorithm",
        "rsa-sha1",
    );
    rejected(&w, Some(&body), &h, 401, "unsupported signature algorithm").await;
    rejected(
        &w,
        Some(&body),
        &with(&headers, "x-ms-signature-algorithm", "hmac-sha256"),
        401,
        "unsupported signature algorithm",
    )
    .await;
    rejected(
        &w,
        Some(&body),
        &with(&headers, "x-ms-signature-algorithm", "none"),
        401,
        "unsupported signature algorithm",
    )
    .await;
}

#[tokio::test]
async fn malformed_and_conflicting_signatures_are_rejected() {
    let w = world().await;
    let (body, headers) = good(&w);
    rejected(
        &w,
        Some(&body),
        &with(&headers, "Authorization", "Signature ***"),
        401,
        "malformed signature",
    )
    .await;
    let other = w.certs.pki.leaf.sign_b64(b"something else");
    let mut both = headers.clone();
    both.push(("x-ms-signature".into(), other));
    rejected(&w, Some(&body), &both, 401, "conflicting signatures").await;
    let mut twice = headers.clone();
    twice.push(("x-ms-certificate-url".into(), w.certs.cert_url("leaf.cer")));
    rejected(&w, Some(&body), &twice, 401, "duplicate signature header").await;
}

#[tokio::test]
async fn certificate_urls_outside_the_allow_list_are_never_fetched() {
    let w = world().await;
    let (body, headers) = good(&w);
    let port = w.certs.front.addr().port();
    let cases = [
        format!("http://127.0.0.1:{port}/cert/leaf.cer"),
        "https://evil.test/cert/leaf.cer".to_owned(),
        format!("https://127.0.0.1:{port}/cert.evil/leaf.cer"),
        format!("https://127.0.0.1:{port}/other/leaf.cer"),
        format!("https://user@127.0.0.1:{port}/cert/leaf.cer"),
        format!("https://127.0.0.1:{port}/cert/leaf.cer?sv=1"),
        format!("https://127.0.0.1:{port}/cert/leaf.cer#x"),
        format!("https://127.0.0.1:{port}/cert/../aia/issuing.cer"),
        format!("https://127.0.0.1:{port}/cert/%2e%2e/aia/issuing.cer"),
        format!("https://127.0.0.1:{port}/cert/sub/leaf.cer"),
        "not a url".to_owned(),
    ];
    for url in cases {
        rejected(
            &w,
            Some(&body),
            &with(&headers, "x-ms-certificate-url", &url),
            401,
            "certificate URL not allowed",
        )
        .await;
    }
    assert_eq!(w.certs.host.total_hits(), 0);
}

#[tokio::test]
async fn default_prefix_blocks_look_alike_hosts() {
    let certs = CertWorld::start().await;
    let mut settings =
        referral_connector::config::Settings::from_vars(&Default::default()).unwrap();
    settings.http.extra_root_pems = vec![certs.pki.root.cert_pem()];
    let app = TestApp::spawn(&settings).await;
    let body = callback_body("referral-created", REFERRAL_ID);
    let port = certs.front.addr().port();
    for url in [
        "https://3psostorageacct.blob.core.windows.net.evil.test/cert/pcnotifications-dispatch.microsoft.com.cer".to_owned(),
        format!("https://3psostorageacct.blob.core.windows.net@127.0.0.1:{port}/cert/leaf.cer"),
        "https://3psostorageacct.blob.core.windows.net:444/cert/a.cer".to_owned(),
    ] {
        let mut headers = certs.signed_headers(body.as_bytes(), &certs.pki.leaf, "leaf.cer");
        headers = with(&headers, "x-ms-certificate-url", &url);
        let answer = call(&app, Some(&body), &headers).await;
        assert_eq!((answer.status, answer.body["reason"].as_str()), (401, Some("certificate URL not allowed")), "{url}");
    }
    assert_eq!(certs.host.total_hits(), 0);
}

#[tokio::test]
async fn unusable_downloads_are_rejected() {
    let w = world().await;
    let body = callback_body("referral-created", REFERRAL_ID);
    w.certs.host.set(
        "/cert/redirect.cer",
        FileReply::redirect(&w.certs.cert_url("leaf.cer")),
    );
    w.certs
        .host
        .set("/cert/huge.cer", FileReply::ok(vec![b'A'; 70 * 1024]));
    w.certs.host.set(
        "/cert/page.cer",
        FileReply::ok(b"<html>not a certificate</html>".to_vec()),
    );
    let mut slow = FileReply::ok(w.certs.pki.leaf.cert_der());
    slow.delay = Some(std::time::Duration::from_secs(3));
    w.certs.host.set("/cert/slow.cer", slow);
    for file in [
        "redirect.cer",
        "huge.cer",
        "page.cer",
        "missing.cer",
        "slow.cer",
    ] {
        let headers = w
            .certs
            .signed_headers(body.as_bytes(), &w.certs.pki.leaf, file);
        rejected(&w, Some(&body), &headers, 401, "certificate unavailable").await;
    }
    assert_eq!(
        w.certs.host.hits("/cert/leaf.cer"),
        0,
        "the redirect must not be followed"
    );
}

#[tokio::test]
async fn untrusted_certificates_are_rejected() {
    let w = world().await;
    let body = callback_body("referral-created", REFERRAL_ID);
    let pki = &w.certs.pki;
    let aia = format!("{}/aia/issuing.cer", w.certs.host.base_url());
    let microsoft = Some("Microsoft Corporation");
    let self_signed = pki::self_signed(
        &CertSpec::leaf("pcnotifications-dispatch.microsoft.com", microsoft)
            .with_key(KeySlot::Other),
    );
    let orphan = pki::issue(&CertSpec::leaf("orphan", microsoft), &pki.intermediate);
    let dead_aia = pki::issue(
        &CertSpec::leaf("dead-aia", microsoft)
            .ca_issuers(&format!("{}/aia/gone.cer", w.certs.host.base_url())),
        &pki.intermediate,
    );
    let expired = pki::issue(
        &CertSpec::leaf("expired", microsoft)
            .ca_issuers(&aia)
            .valid(-10 * 86_400, -86_400),
        &pki.intermediate,
    );
    let future = pki::issue(
        &CertSpec::leaf("future", microsoft)
            .ca_issuers(&aia)
            .valid(86_400, 10 * 86_400),
        &pki.intermediate,
    );
    let contoso = pki::issue(
        &CertSpec::leaf("contoso", Some("Contoso Ltd")).ca_issuers(&aia),
        &pki.intermediate,
    );
    let no_org = pki::issue(
        &CertSpec::leaf("no-org", None).ca_issuers(&aia),
        &pki.intermediate,
    );
    let cases = [
        ("self-signed.cer", &self_signed),
        ("orphan.cer", &orphan),
        ("dead-aia.cer", &dead_aia),
        ("expired.cer", &expired),
        ("future.cer", &future),
        ("contoso.cer", &contoso),
        ("no-org.cer", &no_org),
    ];
    for (file, cert) in cases {
        w.certs
            .host
            .set(&format!("/cert/{file}"), FileReply::ok(cert.cert_der()));
        let headers = w.certs.signed_headers(body.as_bytes(), cert, file);
        let answer = call(&w.app, Some(&body), &headers).await;
        assert_eq!(
            (answer.status, answer.body["reason"].as_str()),
            (401, Some("certificate not trusted")),
            "{file}"
        );
        assert!(answer.queued.is_none());
    }
}

#[tokio::test]
async fn signatures_that_do_not_match_the_exact_body_are_rejected() {
    let w = world().await;
    let (body, headers) = good(&w);
    let other_key = pki::Issued {
        cert: w.certs.pki.leaf.cert.clone(),
        key: pki::key(KeySlot::Other),
    };
    rejected(
        &w,
        Some(&body),
        &w.certs
            .signed_headers(body.as_bytes(), &other_key, "leaf.cer"),
        401,
        "signature does not verify",
    )
    .await;
    let flipped = body.replacen("referral-created", "referral-createe", 1);
    rejected(
        &w,
        Some(&flipped),
        &headers,
        401,
        "signature does not verify",
    )
    .await;
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&body).unwrap()).unwrap();
    rejected(
        &w,
        Some(&pretty),
        &headers,
        401,
        "signature does not verify",
    )
    .await;
    let truncated = w.certs.pki.leaf.sign_b64(body.as_bytes());
    let short = &truncated[..truncated.len() - 8];
    rejected(
        &w,
        Some(&body),
        &with(&headers, "Authorization", &format!("Signature {short}")),
        401,
        "signature does not verify",
    )
    .await;
}

#[tokio::test]
async fn a_bom_stripped_by_the_host_fails_verification() {
    let w = world().await;
    let body = callback_body("referral-created", REFERRAL_ID);
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat();
    let headers = w
        .certs
        .signed_headers(&with_bom, &w.certs.pki.leaf, "leaf.cer");
    rejected(&w, Some(&body), &headers, 401, "signature does not verify").await;
    let kept = format!("\u{feff}{body}");
    let headers = w
        .certs
        .signed_headers(kept.as_bytes(), &w.certs.pki.leaf, "leaf.cer");
    let answer = call(&w.app, Some(&kept), &headers).await;
    assert_eq!(
        answer.status, 400,
        "a BOM that reaches us signed is still not a valid event"
    );
    assert!(answer.queued.is_none());
}

#[tokio::test]
async fn empty_oversized_and_compressed_bodies_are_rejected() {
    let w = world().await;
    let (body, headers) = good(&w);
    rejected(&w, None, &headers, 401, "empty body").await;
    rejected(&w, Some(""), &headers, 401, "empty body").await;
    let compressed = call(
        &w.app,
        Some(&body),
        &with(&headers, "Content-Encoding", "gzip"),
    )
    .await;
    assert_eq!(compressed.status, 415, "{}", compressed.body);
    assert_eq!(
        compressed.body,
        serde_json::json!({"error": "unsupported_media_type", "reason": "compressed body"})
    );
    assert!(compressed.queued.is_none());

    // Over the 1 MiB limit, yet well under the handler's envelope cap.
    let large = format!("{body}{}", " ".repeat(1024 * 1024));
    let headers = w
        .certs
        .signed_headers(large.as_bytes(), &w.certs.pki.leaf, "leaf.cer");
    let oversized = call(&w.app, Some(&large), &headers).await;
    assert_eq!(oversized.status, 413, "{}", oversized.body);
    assert_eq!(
        oversized.body,
        serde_json::json!({"error": "payload_too_large", "reason": "body too large"})
    );
    assert!(oversized.queued.is_none());
}

#[tokio::test]
async fn authenticated_but_invalid_events_get_400() {
    let w = world().await;
    let cases = [
        (
            callback_body("referral-created", "12345"),
            "ResourceUri does not end in a referral id",
        ),
        (
            callback_body("referral-updated", "c5fbb3b6-be74-4795-9fb5-4324c73fed37'"),
            "ResourceUri does not end in a referral id",
        ),
        (
            r#"{"EventName":"referral-created"}"#.to_owned(),
            "ResourceUri is missing or not a string",
        ),
        (
            r#"{"ResourceUri":"https://x.test/referrals/c5fbb3b6-be74-4795-9fb5-4324c73fed37"}"#
                .to_owned(),
            "EventName is missing or not a string",
        ),
        ("[]".to_owned(), "the body is not a JSON object"),
        ("not json".to_owned(), "the body is not valid JSON"),
    ];
    for (body, reason) in cases {
        let headers = w
            .certs
            .signed_headers(body.as_bytes(), &w.certs.pki.leaf, "leaf.cer");
        let answer = call(&w.app, Some(&body), &headers).await;
        assert_eq!(answer.status, 400, "{body}");
        assert!(
            answer.body["reason"].as_str().unwrap().starts_with(reason),
            "{body}: {}",
            answer.body
        );
        assert!(answer.queued.is_none());
    }
}

#[tokio::test]
async fn unknown_routes_and_malformed_envelopes_never_get_5xx() {
    let w = world().await;
    let (status, _) = w.app.invoke("NoSuchFunction", b"{}".to_vec()).await;
    assert_eq!(status, 404);
    let (status, answer) = w.app.invoke("ReferralWebhook", b"{not json".to_vec()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["Outputs"]["res"]["statusCode"], 400);
    assert!(answer["Outputs"].get("syncQueue").is_none());
}
