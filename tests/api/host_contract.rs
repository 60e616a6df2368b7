//! The real binary, started as the Functions host starts it: port from the environment, the
//! readiness probe on `/`, chunked envelope POSTs, JSON logs on stdout without secrets.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::io::AsyncReadExt;

use crate::helpers::{CertWorld, REFERRAL_ID, callback_body, http_envelope, invoke};

struct Handler {
    child: tokio::process::Child,
    address: String,
    ready_after: Duration,
}

async fn start(args: &[&str], envs: &[(String, String)]) -> Handler {
    let port = testkit::free_port();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_referral-connector"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .envs(envs.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn handler");
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    loop {
        if client.get(format!("{address}/")).send().await.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "handler not ready"
        );
        assert!(child.try_wait().unwrap().is_none(), "handler exited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Handler {
        child,
        address,
        ready_after: started.elapsed(),
    }
}

async fn stop(mut handler: Handler) -> (String, String) {
    handler.child.start_kill().unwrap();
    let mut out = String::new();
    let mut err = String::new();
    handler
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    handler
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    let _ = handler.child.wait().await;
    (out, err)
}

#[tokio::test]
async fn binary_answers_probe_and_invocations_and_logs_json_without_secrets() {
    let certs = CertWorld::start().await;
    let mut envs: Vec<(String, String)> = certs.vars().into_iter().collect();
    envs.push(("SSL_CERT_FILE".into(), certs.root_pem_path()));
    envs.push((
        "PARTNER_CENTER_REFRESH_TOKEN".into(),
        "refresh-token-that-must-not-leak".into(),
    ));
    let handler = start(&[], &envs).await;
    println!("ready after {:?}", handler.ready_after);

    let client = reqwest::Client::new();
    let probe = client
        .get(format!("{}/", handler.address))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);

    let body = callback_body("referral-created", REFERRAL_ID);
    let headers = certs.signed_headers(body.as_bytes(), &certs.pki.leaf, "leaf.cer");
    let signature = headers[0].1.trim_start_matches("Signature ").to_owned();
    let invocation_id = uuid::Uuid::new_v4().to_string();
    let (status, answer) = invoke(
        &client,
        &handler.address,
        "ReferralWebhook",
        http_envelope(Some(&body), &headers),
        &invocation_id,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["Outputs"]["res"]["statusCode"], 200);
    assert_eq!(answer["Outputs"]["syncQueue"]["referralId"], REFERRAL_ID);
    assert!(answer["Logs"].is_array());
    assert!(answer.get("ReturnValue").is_some());

    let forged = http_envelope(Some(&body.replace("created", "updated")), &headers);
    let (status, answer) = invoke(
        &client,
        &handler.address,
        "ReferralWebhook",
        forged,
        "forged-invocation",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["Outputs"]["res"]["statusCode"], 401);

    let message = serde_json::json!({"Data": {"msg": "\"not a message\""}, "Metadata": {"DequeueCount": "1"}});
    let (status, answer) = invoke(
        &client,
        &handler.address,
        "ReferralSync",
        message.to_string().into_bytes(),
        "sync-invocation",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        answer["Outputs"]["poison"]["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed message")
    );

    let (stdout, stderr) = stop(handler).await;
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["invocation_id"] == invocation_id.as_str()
                && l["span"]["referral_id"] == REFERRAL_ID),
        "a log line carries the invocation id and the referral id:\n{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["invocation_id"] == "forged-invocation")
    );
    let all = format!("{stdout}{stderr}");
    for secret in [
        "secret-function-key",
        "code=",
        signature.as_str(),
        "refresh-token-that-must-not-leak",
    ] {
        assert!(
            !all.contains(secret),
            "{secret} leaked into the logs:\n{all}"
        );
    }
}

#[tokio::test]
async fn serve_subcommand_is_the_same_as_no_arguments() {
    let handler = start(&["serve"], &[]).await;
    let client = reqwest::Client::new();
    for method in [
        reqwest::Method::GET,
        reqwest::Method::HEAD,
        reqwest::Method::POST,
    ] {
        let response = client
            .request(method.clone(), format!("{}/", handler.address))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{method}");
    }
    stop(handler).await;
}

#[tokio::test]
async fn a_bad_setting_stops_the_process_with_a_message_naming_it() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_referral-connector"))
        .env(
            "FUNCTIONS_CUSTOMHANDLER_PORT",
            testkit::free_port().to_string(),
        )
        .env("DATAVERSE_URL", "http://contoso.crm.dynamics.com")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATAVERSE_URL"), "{stderr}");
}
