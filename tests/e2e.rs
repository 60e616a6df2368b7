//! End to end, with the Functions host played faithfully (Core Tools cannot be installed here):
//! a signed Partner Center callback → the real handler binary → the `syncQueue` output written
//! base64-encoded to a real Azurite queue → read back as the queue trigger reads it → the
//! host's queue-trigger envelope → `POST /ReferralSync` → delete on 2xx (writing `poison`
//! outputs), release for a retry on non-2xx, and the move to `<queue>-poison` once the dequeue
//! count reaches host.json's `maxDequeueCount`.
//!
//! Run: `scripts/install-deps.sh --azurite && cargo test --features e2e --test e2e`.
//! `HANDLER_BIN=publish/handler` runs the same tests against the static musl build.

use std::{
    collections::HashMap,
    io::Write,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{Value, json};
use testkit::{
    azurite::{ACCOUNT, Azurite, QueueClient},
    cert_world::CertWorld,
    fakes::Fault,
    host::{REFERRAL_ID, callback_body, http_envelope},
    sync_world::{KEY_COLUMN, SyncWorld, queue_envelope, referral},
};
use tokio::io::AsyncBufReadExt;

/// The queue of the ReferralWebhook output and the ReferralSync trigger (function.json).
const QUEUE: &str = "referral-sync";
/// Where the host moves messages that failed `maxDequeueCount` times, and the `poison` output.
const POISON_QUEUE: &str = "referral-sync-poison";
/// Retry back-off used instead of host.json's 30 s so the test stays short.
const RETRY_VISIBILITY_SECONDS: u32 = 1;
/// Lease the host takes on a dequeued message while the invocation runs (its default, 10 min).
const LEASE_SECONDS: u32 = 600;

fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// host.json's `extensions.queues`, the values the host applies to the queue trigger.
struct QueueOptions {
    max_dequeue_count: u32,
    batch_size: u32,
    message_encoding: String,
}

fn queue_options() -> QueueOptions {
    let host: Value = serde_json::from_str(&repo_file("host.json")).expect("host.json is JSON");
    let queues = &host["extensions"]["queues"];
    let function: Value =
        serde_json::from_str(&repo_file("ReferralSync/function.json")).expect("function.json");
    assert_eq!(function["bindings"][0]["queueName"], QUEUE);
    assert_eq!(function["bindings"][1]["queueName"], POISON_QUEUE);
    QueueOptions {
        max_dequeue_count: queues["maxDequeueCount"].as_u64().unwrap_or(5) as u32,
        batch_size: queues["batchSize"].as_u64().unwrap_or(16) as u32,
        message_encoding: queues["messageEncoding"]
            .as_str()
            .unwrap_or("base64")
            .to_owned(),
    }
}

/// The handler binary under test: `HANDLER_BIN` (e.g. the static musl build) or this build.
fn handler_bin() -> String {
    std::env::var("HANDLER_BIN")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_referral-connector").to_owned())
}

/// The handler process, started as the host starts it (port and settings in the environment,
/// nothing inherited), ready once `/` answers. Killed on drop.
struct Handler {
    child: tokio::process::Child,
    address: String,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Handler {
    async fn start(envs: &HashMap<String, String>) -> Self {
        Self::start_with(&handler_bin(), &[], envs).await
    }

    /// Starts `program args…` (the handler itself, or a wrapper that execs it).
    async fn start_with(program: &str, args: &[&str], envs: &HashMap<String, String>) -> Self {
        let port = testkit::free_port();
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .envs(envs)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        let mut reader = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        let address = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let started = Instant::now();
        while client.get(format!("{address}/")).send().await.is_err() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the handler exited during start-up"
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the handler did not answer / within the host's 30 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Self {
            child,
            address,
            stdout,
        }
    }

    fn logs(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// POSTs an envelope chunked (no Content-Length) with the host's headers.
async fn invoke(
    client: &reqwest::Client,
    handler: &Handler,
    function: &str,
    envelope: Vec<u8>,
) -> (u16, Value) {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        envelope.chunks(64).map(|c| Ok(c.to_vec())).collect();
    let response = client
        .post(format!("{}/{function}", handler.address))
        .header("Content-Type", "application/json; charset=utf-8")
        .header("User-Agent", "Azure-Functions-Host/4.1000.0")
        .header("X-Azure-Functions-HostVersion", "4.1000.0")
        .header(
            "X-Azure-Functions-InvocationId",
            uuid::Uuid::new_v4().to_string(),
        )
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap_or_else(|e| panic!("invoke {function}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "the host fails invocations answered with {content_type:?}"
    );
    (status, response.json().await.expect("a JSON answer"))
}

/// A signed `referral-created` callback in an HTTP trigger envelope, with the Content-Length
/// header the host passes on.
fn signed_callback(certs: &CertWorld) -> Vec<u8> {
    let body = callback_body("referral-created", REFERRAL_ID);
    let mut headers = certs.signed_headers(body.as_bytes(), &certs.pki.leaf, "leaf.cer");
    headers.push(("Content-Length".into(), body.len().to_string()));
    http_envelope(Some(&body), &headers)
}

fn unb64(text: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("queue message is not base64 ({e}): {text}"));
    String::from_utf8(bytes).expect("UTF-8 message")
}

/// One ReferralSync invocation as the fake host saw it.
#[derive(Debug)]
struct Delivery {
    dequeue_count: u32,
    status: u16,
    answer: Value,
}

/// The parts of the Functions host that matter here: output bindings to queues and the
/// queue trigger's dispatch, retry and poison handling.
struct FakeHost {
    client: reqwest::Client,
    options: QueueOptions,
    queue: QueueClient,
    poison: QueueClient,
    deliveries: Vec<Delivery>,
}

impl FakeHost {
    async fn new(azurite: &Azurite) -> Self {
        let options = queue_options();
        assert_eq!(options.message_encoding, "base64");
        let queue = azurite.queue(QUEUE);
        let poison = azurite.queue(POISON_QUEUE);
        queue.create().await.expect("create queue");
        poison.create().await.expect("create poison queue");
        Self {
            client: reqwest::Client::new(),
            options,
            queue,
            poison,
            deliveries: Vec::new(),
        }
    }

    /// A queue output binding value written as the host writes it: an object becomes its JSON
    /// text, an array one message per element, then base64 (`messageEncoding: base64`).
    async fn write_output(queue: &QueueClient, value: &Value) {
        let items = match value {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for item in items {
            let text = match item {
                Value::String(s) => s,
                other => other.to_string(),
            };
            queue.put_base64(&text).await.expect("put message");
        }
    }

    /// Invokes ReferralWebhook; on a 2xx answer writes `syncQueue`. Returns the `res` output.
    async fn webhook(&self, handler: &Handler, envelope: Vec<u8>) -> Value {
        let (status, answer) = invoke(&self.client, handler, "ReferralWebhook", envelope).await;
        assert_eq!(status, 200, "webhook invocation failed: {answer}");
        if let Some(value) = answer["Outputs"].get("syncQueue") {
            Self::write_output(&self.queue, value).await;
        }
        answer["Outputs"]["res"].clone()
    }

    /// Runs the queue trigger until `referral-sync` is empty (visible or not), or panics after
    /// `limit`.
    async fn drain(&mut self, handler: &Handler, limit: Duration) {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < limit,
                "referral-sync not drained within {limit:?}; deliveries: {:?}\nhandler log:\n{}",
                self.deliveries,
                handler.logs()
            );
            let batch = self
                .queue
                .get(self.options.batch_size, LEASE_SECONDS)
                .await
                .expect("get messages");
            if batch.is_empty() {
                if self.queue.count().await.expect("count") == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            for message in batch {
                let text = unb64(&message.text);
                let envelope = queue_envelope(&text, message.dequeue_count);
                let (status, answer) =
                    invoke(&self.client, handler, "ReferralSync", envelope).await;
                if (200..300).contains(&status) {
                    if let Some(value) = answer["Outputs"].get("poison") {
                        Self::write_output(&self.poison, value).await;
                    }
                    self.queue.delete(&message).await.expect("delete message");
                } else if message.dequeue_count >= self.options.max_dequeue_count {
                    // The host copies the message as it is to <queue>-poison, then deletes it.
                    self.poison
                        .put(&message.text)
                        .await
                        .expect("poison message");
                    self.queue.delete(&message).await.expect("delete message");
                } else {
                    self.queue
                        .release(&message, RETRY_VISIBILITY_SECONDS)
                        .await
                        .expect("release message");
                }
                self.deliveries.push(Delivery {
                    dequeue_count: message.dequeue_count,
                    status,
                    answer,
                });
            }
        }
    }

    /// Every message in `referral-sync-poison`, decoded.
    async fn poisoned(&self) -> Vec<Value> {
        self.poison
            .peek(32)
            .await
            .expect("peek poison")
            .iter()
            .map(|m| serde_json::from_str(&unb64(&m.text)).expect("poison message is JSON"))
            .collect()
    }
}

/// A PEM bundle file (for `SSL_CERT_FILE` or the bind-mounted system bundle).
fn bundle(pems: &[Vec<u8>]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    for pem in pems {
        file.write_all(pem).expect("write bundle");
        file.write_all(b"\n").expect("write bundle");
    }
    file.flush().expect("flush bundle");
    file
}

struct World {
    azurite: Azurite,
    fakes: SyncWorld,
    certs: CertWorld,
    _trust: tempfile::NamedTempFile,
    envs: HashMap<String, String>,
}

async fn world(extra: &[(&str, &str)]) -> World {
    let azurite = tokio::task::spawn_blocking(Azurite::start)
        .await
        .expect("azurite");
    let fakes = SyncWorld::start().await;
    let certs = CertWorld::start().await;
    fakes.partner_center.insert_referral(referral(REFERRAL_ID));
    let trust = bundle(&[fakes.root_pem(), certs.pki.root.cert_pem()]);
    let mut envs = fakes.vars();
    envs.extend(certs.vars());
    envs.insert("SSL_CERT_FILE".into(), trust.path().display().to_string());
    envs.insert(
        "SYNC_MAX_DEQUEUE_COUNT".into(),
        queue_options().max_dequeue_count.to_string(),
    );
    envs.insert("FUNCTIONS_WORKER_RUNTIME".into(), "custom".into());
    envs.insert("AzureWebJobsStorage".into(), azurite.connection_string());
    for (k, v) in extra {
        envs.insert((*k).into(), (*v).into());
    }
    World {
        azurite,
        fakes,
        certs,
        _trust: trust,
        envs,
    }
}

impl World {
    fn signed_callback(&self) -> Vec<u8> {
        signed_callback(&self.certs)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_callback_becomes_a_lead_through_a_real_queue() {
    let started = Instant::now();
    let w = world(&[("SYNC_RETRY_BUDGET_SECONDS", "5")]).await;
    let handler = Handler::start(&w.envs).await;
    let mut host = FakeHost::new(&w.azurite).await;

    let res = host.webhook(&handler, w.signed_callback()).await;
    assert_eq!(res["statusCode"], 200, "{res}");
    let body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"status": "queued", "referralId": REFERRAL_ID}));

    // What the webhook output left on the queue: base64 of the message's JSON text.
    let peeked = host.queue.peek(32).await.unwrap();
    assert_eq!(peeked.len(), 1);
    let message: Value = serde_json::from_str(&unb64(&peeked[0].text)).unwrap();
    assert_eq!(message["referralId"], REFERRAL_ID);
    assert_eq!(message["eventName"], "referral-created");

    host.drain(&handler, Duration::from_secs(30)).await;

    assert_eq!(host.deliveries.len(), 1, "{:?}", host.deliveries);
    let delivery = &host.deliveries[0];
    assert_eq!((delivery.dequeue_count, delivery.status), (1, 200));
    assert!(
        delivery.answer["Outputs"].get("poison").is_none(),
        "{}",
        delivery.answer
    );
    assert!(
        delivery.answer["Logs"][0]
            .as_str()
            .unwrap_or_default()
            .contains("lead created"),
        "{}",
        delivery.answer
    );
    let lead = w.fakes.dataverse.lead(REFERRAL_ID).expect("lead created");
    assert_eq!(lead[KEY_COLUMN], REFERRAL_ID);
    let referral = w.fakes.partner_center.referral(REFERRAL_ID).unwrap();
    assert_eq!(referral["externalReferenceId"], lead["leadid"]);
    assert_eq!(referral["status"], "Active");
    assert_eq!(referral["substatus"], "Accepted");
    assert_eq!(w.fakes.partner_center.patch_count(REFERRAL_ID), 1);
    assert_eq!(host.queue.count().await.unwrap(), 0);
    assert_eq!(host.poison.count().await.unwrap(), 0);
    // Azurite really checks the SharedKey signatures this client computes.
    let wrong_key = QueueClient::new(
        &w.azurite.queue_endpoint(),
        ACCOUNT,
        "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=",
        QUEUE,
    );
    let refused = wrong_key.count().await.expect_err("a wrong key is refused");
    assert!(refused.to_string().contains("403"), "{refused}");
    println!("happy path end to end in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataverse_outage_retries_five_times_then_poisons_exactly_once() {
    let started = Instant::now();
    let w = world(&[("SYNC_RETRY_BUDGET_SECONDS", "0")]).await;
    w.fakes
        .dataverse
        .inject(Fault::status(503).on("PATCH", "leads(").always());
    let handler = Handler::start(&w.envs).await;
    let mut host = FakeHost::new(&w.azurite).await;
    let max = host.options.max_dequeue_count;
    assert_eq!(max, 5, "host.json maxDequeueCount");

    let res = host.webhook(&handler, w.signed_callback()).await;
    assert_eq!(res["statusCode"], 200, "{res}");
    let original: Value =
        serde_json::from_str(&unb64(&host.queue.peek(1).await.unwrap()[0].text)).unwrap();

    host.drain(&handler, Duration::from_secs(40)).await;

    let seen: Vec<(u32, u16)> = host
        .deliveries
        .iter()
        .map(|d| (d.dequeue_count, d.status))
        .collect();
    // Attempts 1-4 answer non-2xx (the host makes the message visible again); on attempt 5
    // (= SYNC_MAX_DEQUEUE_COUNT) the handler gives up itself: 2xx with the `poison` output.
    let expected: Vec<(u32, u16)> = (1..=max)
        .map(|n| (n, if n < max { 503 } else { 200 }))
        .collect();
    assert_eq!(seen, expected, "{:?}", host.deliveries);
    assert_eq!(
        w.fakes.dataverse.count("PATCH", "leads("),
        max as usize,
        "one lead write per delivery (no in-process retries with a zero budget)"
    );

    let poisoned = host.poisoned().await;
    assert_eq!(
        poisoned.len(),
        1,
        "exactly one poison message: {poisoned:?}"
    );
    let entry = &poisoned[0];
    // Nothing lost: every field of the original message is in the poison entry.
    for (key, value) in original.as_object().unwrap() {
        assert_eq!(&entry[key], value, "{key} kept in {entry}");
    }
    let error = entry["error"].as_str().expect("a reason");
    assert!(
        error.starts_with(&format!("gave up after {max} attempts")),
        "{error}"
    );
    assert!(entry["failedAt"].is_string(), "{entry}");
    assert_eq!(
        host.queue.count().await.unwrap(),
        0,
        "referral-sync is empty"
    );
    assert!(w.fakes.dataverse.lead(REFERRAL_ID).is_none());
    assert_eq!(w.fakes.partner_center.patch_count(REFERRAL_ID), 0);
    println!(
        "outage end to end in {:?}; poison entry: {entry}",
        started.elapsed()
    );
}

/// The static build's vendored OpenSSL knows no Debian paths; the handler must still find the
/// system CA bundle (`/etc/ssl/certs/ca-certificates.crt`) with no `SSL_CERT_FILE`. Proven with
/// a private mount namespace (`unshare --mount`) in which a bundle = system bundle + a test
/// root is bind-mounted over the system file for the handler process only; the machine's
/// real store is never touched. Without the mount the same call must fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_ca_bundle_is_found_without_settings() {
    let system_bundle = "/etc/ssl/certs/ca-certificates.crt";
    let unshare_works = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !unshare_works || !std::path::Path::new(system_bundle).is_file() {
        let reason = "needs root, `unshare --mount` and /etc/ssl/certs/ca-certificates.crt";
        assert!(
            std::env::var_os("E2E_WITHOUT_CA_STORE_CHECK").is_some(),
            "this check cannot run here: {reason}; run as root, or set E2E_WITHOUT_CA_STORE_CHECK=1 to leave it out knowingly"
        );
        eprintln!("left out on request (E2E_WITHOUT_CA_STORE_CHECK): {reason}");
        return;
    }
    let certs = CertWorld::start().await;
    let system = std::fs::read(system_bundle).expect("read the system bundle");
    let overlay = bundle(&[system, certs.pki.root.cert_pem()]);
    // WEBHOOK_TRUSTED_CA_FILE only anchors the signing chain check; the https download of the
    // certificate uses the TLS client's default trust, i.e. the system store.
    let envs = certs.vars();
    assert!(!envs.contains_key("SSL_CERT_FILE") && !envs.contains_key("SSL_CERT_DIR"));
    let client = reqwest::Client::new();
    let callback = || signed_callback(&certs);
    let res_of = |answer: &Value| {
        let res = &answer["Outputs"]["res"];
        let body: Value =
            serde_json::from_str(res["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        (res["statusCode"].as_u64().unwrap_or(0), body)
    };

    let bin = handler_bin();
    let overlay_path = overlay.path().display().to_string();
    let script = r#"mount --bind "$1" "$2" && exec "$3""#;
    let with_mount = Handler::start_with(
        "unshare",
        &[
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            &overlay_path,
            system_bundle,
            &bin,
        ],
        &envs,
    )
    .await;
    let (status, answer) = invoke(&client, &with_mount, "ReferralWebhook", callback()).await;
    assert_eq!(status, 200);
    let (code, body) = res_of(&answer);
    assert_eq!(
        (code, &body["status"]),
        (200, &json!("queued")),
        "with the test root in the system bundle: {answer}\n{}",
        with_mount.logs()
    );
    drop(with_mount);

    let without = Handler::start_with(&bin, &[], &envs).await;
    let (status, answer) = invoke(&client, &without, "ReferralWebhook", callback()).await;
    assert_eq!(status, 200);
    let (code, body) = res_of(&answer);
    assert_eq!(code, 401, "without the test root: {answer}");
    assert!(
        body.to_string().contains("certificate unavailable"),
        "{body}"
    );
    assert!(answer["Outputs"].get("syncQueue").is_none());
    println!("system CA store check passed for {bin}");
}
