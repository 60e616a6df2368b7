//! Test harness: a fresh handler per test on port 0, a fresh test PKI served over HTTPS from a
//! local certificate host, and envelope builders shaped exactly like the Functions host's.

use std::{collections::HashMap, io::Write};

use referral_connector::{config::Settings, startup::Application};
use serde_json::{Value, json};
use testkit::{
    cert_host::{CertHost, FileReply},
    pki::{Issued, TestPki},
    tls::HttpsFront,
};

/// The referral id used across tests.
pub const REFERRAL_ID: &str = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";

/// A compact Partner Center callback body.
pub fn callback_body(event: &str, id: &str) -> String {
    format!(
        r#"{{"EventName":"{event}","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/{id}","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2026-11-20T10:15:30.1234567+00:00"}}"#
    )
}

/// A running handler.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// Client for invocations.
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    /// Starts the handler with these settings.
    pub async fn spawn(settings: &Settings) -> Self {
        let app = Application::build(settings).await.expect("build app");
        let address = format!("http://127.0.0.1:{}", app.port());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Self {
            address,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
        }
    }

    /// POSTs an envelope to `/<function>` chunked (no Content-Length), as the host does.
    pub async fn invoke(&self, function: &str, envelope: Vec<u8>) -> (u16, Value) {
        invoke(
            &self.client,
            &self.address,
            function,
            envelope,
            &uuid::Uuid::new_v4().to_string(),
        )
        .await
    }
}

/// POSTs an envelope to `{address}/{function}` chunked, with the host's headers.
pub async fn invoke(
    client: &reqwest::Client,
    address: &str,
    function: &str,
    envelope: Vec<u8>,
    invocation_id: &str,
) -> (u16, Value) {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        envelope.chunks(64).map(|c| Ok(c.to_vec())).collect();
    let response = client
        .post(format!("{address}/{function}"))
        .header("Content-Type", "application/json; charset=utf-8")
        .header("User-Agent", "Azure-Functions-Host/4.1000.0")
        .header("X-Azure-Functions-HostVersion", "4.1000.0")
        .header("X-Azure-Functions-InvocationId", invocation_id)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("invoke");
    let status = response.status().as_u16();
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "the host needs a JSON content type"
    );
    let body = response.json().await.expect("JSON answer");
    (status, body)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An HTTP trigger envelope with the host's shapes: header arrays, body as a string.
pub fn http_envelope(body: Option<&str>, headers: &[(String, String)]) -> Vec<u8> {
    let mut header_map = serde_json::Map::new();
    header_map.insert("Content-Type".into(), json!(["application/json"]));
    header_map.insert(
        "Host".into(),
        json!(["contoso-referrals.azurewebsites.net"]),
    );
    for (k, v) in headers {
        match header_map.get_mut(k) {
            Some(Value::Array(values)) => values.push(json!(v)),
            _ => {
                header_map.insert(k.clone(), json!([v]));
            }
        }
    }
    let mut req = json!({
        "Url": "https://contoso-referrals.azurewebsites.net/api/ReferralWebhook?code=secret-function-key",
        "Method": "POST",
        "Query": {"code": "secret-function-key"},
        "Headers": header_map,
        "Params": {},
        "Identities": [],
    });
    if let Some(body) = body {
        req["Body"] = json!(body);
    }
    json!({"Data": {"req": req}, "Metadata": {"sys": {"MethodName": "ReferralWebhook"}}})
        .to_string()
        .into_bytes()
}

/// The test PKI, served the way Partner Center's certificate is: the leaf alone at an https
/// URL under the allowed prefix, the intermediate at the leaf's AIA caIssuers URL (http).
pub struct CertWorld {
    /// Root, intermediate, leaf.
    pub pki: TestPki,
    /// Plain HTTP host (AIA, and the backend of the https front).
    pub host: CertHost,
    /// HTTPS front of `host`.
    pub front: HttpsFront,
    ca_file: tempfile::NamedTempFile,
}

impl CertWorld {
    /// Builds and serves the PKI: `/cert/leaf.cer` (DER) and `/aia/issuing.cer` (DER).
    pub async fn start() -> Self {
        let host = CertHost::start().await;
        let pki = TestPki::new(Some(&format!("{}/aia/issuing.cer", host.base_url())));
        let tls = pki.tls_server();
        let front = HttpsFront::start(host.addr(), &tls).await;
        host.set("/cert/leaf.cer", FileReply::ok(pki.leaf.cert_der()));
        host.set(
            "/aia/issuing.cer",
            FileReply::ok(pki.intermediate.cert_der()),
        );
        let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
        ca_file.write_all(&pki.root.cert_pem()).expect("write root");
        Self {
            pki,
            host,
            front,
            ca_file,
        }
    }

    /// The allowed prefix: `https://127.0.0.1:PORT/cert/`.
    pub fn prefix(&self) -> String {
        format!("{}/cert/", self.front.base_url())
    }

    /// The https URL of a file under `/cert/`.
    pub fn cert_url(&self, file: &str) -> String {
        format!("{}{file}", self.prefix())
    }

    /// Path of the PEM file holding the test root.
    pub fn root_pem_path(&self) -> String {
        self.ca_file.path().display().to_string()
    }

    /// Settings variables pointing the webhook at this PKI.
    pub fn vars(&self) -> HashMap<String, String> {
        HashMap::from([
            ("WEBHOOK_CERT_URL_PREFIXES".to_owned(), self.prefix()),
            ("WEBHOOK_TRUSTED_CA_FILE".to_owned(), self.root_pem_path()),
        ])
    }

    /// Settings for the handler (the root is also trusted for TLS to the front).
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::from_vars(&self.vars()).expect("settings");
        settings.http.extra_root_pems = vec![self.pki.root.cert_pem()];
        settings
    }

    /// The three signature headers for `body`, signed by `signer`.
    pub fn signed_headers(
        &self,
        body: &[u8],
        signer: &Issued,
        cert_file: &str,
    ) -> Vec<(String, String)> {
        vec![
            (
                "Authorization".into(),
                format!("Signature {}", signer.sign_b64(body)),
            ),
            ("x-ms-certificate-url".into(), self.cert_url(cert_file)),
            ("x-ms-signature-algorithm".into(), "rsa-sha256".into()),
        ]
    }
}
