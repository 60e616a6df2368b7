//! Test harness: a fresh handler per test on port 0, a fresh test PKI served over HTTPS from a
//! local certificate host, and envelope builders shaped exactly like the Functions host's.

use referral_connector::{config::Settings, startup::Application};
use serde_json::Value;
pub use testkit::{
    cert_world::CertWorld,
    host::{REFERRAL_ID, callback_body, http_envelope},
};

/// A running handler.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// Client for invocations.
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    /// One CrmChanges run, invoked as the host invokes the timer with this stored state: the
    /// status, the answer and the state it writes back.
    pub async fn crm_changes(&self, state: Option<&str>) -> (u16, Value, Option<String>) {
        let (status, answer) = self
            .invoke(
                "CrmChanges",
                testkit::host::timer_envelope("CrmChanges", state),
            )
            .await;
        let next = answer["Outputs"]["watermarkOut"]
            .as_str()
            .map(str::to_owned);
        (status, answer, next)
    }

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

/// Settings for a handler that trusts this PKI (the root is also trusted for TLS to the front).
pub fn webhook_settings(world: &CertWorld) -> Settings {
    let mut settings = Settings::from_vars(&world.vars()).expect("settings");
    settings.http.extra_root_pems = vec![world.pki.root.cert_pem()];
    settings
}

/// Settings pointing the sync at the fakes, with short in-process retries.
pub fn sync_settings(fakes: &testkit::sync_world::SyncWorld, extra: &[(&str, &str)]) -> Settings {
    let mut vars = fakes.vars();
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    settings_from(fakes, vars)
}

/// Settings from `vars` (a world's variables and more), with short in-process retries.
pub fn settings_from(
    fakes: &testkit::sync_world::SyncWorld,
    mut vars: std::collections::HashMap<String, String>,
) -> Settings {
    vars.entry("SYNC_RETRY_BUDGET_SECONDS".into())
        .or_insert_with(|| "3".into());
    let mut settings = Settings::from_vars(&vars).expect("settings");
    settings.http.extra_root_pems = vec![fakes.root_pem()];
    settings.sync.retry_min_delay = std::time::Duration::from_millis(20);
    settings
}
