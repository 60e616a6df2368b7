//! The parts of the Azure Functions host that matter to this handler, played over a real
//! Azurite: the handler process started as the host starts it (port and settings in the
//! environment, ready once `/` answers), invocation envelopes POSTed chunked with the host's
//! headers, output bindings written as the host writes them (queue messages base64, blobs
//! decoded or as text), the queue trigger's dispatch (delete on 2xx, release for a retry on
//! non-2xx, the move to `<queue>-poison` once the dequeue count reaches host.json's
//! `maxDequeueCount`), and timer functions run on their schedules with their blob inputs.
//!
//! The end-to-end test (`tests/e2e.rs`) and the local stand-in run (`standins`) use it. It is
//! a stand-in for the host, not the host: one instance, no locks, no scale-out.

use std::{
    collections::HashMap,
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::io::AsyncBufReadExt;

use crate::{
    azurite::{ACCOUNT, ACCOUNT_KEY, Azurite, BlobClient, QueueClient},
    sync_world::queue_envelope,
};

/// The queue of the ReferralWebhook output and the ReferralSync trigger (function.json).
pub const QUEUE: &str = "referral-sync";
/// Where the host moves messages that failed `maxDequeueCount` times, and the `poison` output.
pub const POISON_QUEUE: &str = "referral-sync-poison";
/// Lease the host takes on a dequeued message while the invocation runs (its default, 10 min).
pub const LEASE_SECONDS: u32 = 600;

/// host.json's `extensions.queues`, the values the host applies to the queue trigger.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// `maxDequeueCount` (default 5).
    pub max_dequeue_count: u32,
    /// `batchSize` (default 16).
    pub batch_size: u32,
    /// `messageEncoding` (default `base64`).
    pub message_encoding: String,
    /// `maxPollingInterval` in seconds (default 2 here; the host's default is a minute).
    pub max_polling_seconds: u64,
}

impl QueueOptions {
    /// Reads `extensions.queues` of a parsed host.json.
    pub fn from_host_json(host: &Value) -> Self {
        let queues = &host["extensions"]["queues"];
        Self {
            max_dequeue_count: queues["maxDequeueCount"].as_u64().unwrap_or(5) as u32,
            batch_size: queues["batchSize"].as_u64().unwrap_or(16) as u32,
            message_encoding: queues["messageEncoding"]
                .as_str()
                .unwrap_or("base64")
                .to_owned(),
            max_polling_seconds: queues["maxPollingInterval"]
                .as_str()
                .and_then(hh_mm_ss)
                .map(|d| d.as_secs().max(1))
                .unwrap_or(2),
        }
    }
}

/// The function app as the host reads it from its root: host.json and every
/// `<Function>/function.json`.
#[derive(Debug, Clone)]
pub struct FunctionApp {
    /// The app root (the repository root, or a publish folder).
    pub root: PathBuf,
    /// Parsed host.json.
    pub host: Value,
    /// Function name → its `bindings` array.
    pub functions: HashMap<String, Vec<Value>>,
}

impl FunctionApp {
    /// Reads host.json and the function folders under `root`.
    ///
    /// # Panics
    /// When host.json or a function.json is missing or not JSON.
    pub fn load(root: &Path) -> Self {
        let read = |path: PathBuf| -> Value {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let host = read(root.join("host.json"));
        let mut functions = HashMap::new();
        let entries = std::fs::read_dir(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        for entry in entries.flatten() {
            let file = entry.path().join("function.json");
            if file.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let bindings = read(file)["bindings"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                functions.insert(name, bindings);
            }
        }
        Self {
            root: root.to_owned(),
            host,
            functions,
        }
    }

    /// host.json's queue options.
    pub fn queue_options(&self) -> QueueOptions {
        QueueOptions::from_host_json(&self.host)
    }

    /// The bindings of `function` (empty when there is no such function).
    pub fn bindings(&self, function: &str) -> &[Value] {
        self.functions.get(function).map_or(&[], Vec::as_slice)
    }

    /// The timer-triggered functions and their schedule expressions (`%NAME%` unresolved).
    pub fn timers(&self) -> Vec<(String, String)> {
        let mut timers: Vec<(String, String)> = self
            .functions
            .iter()
            .filter_map(|(name, bindings)| {
                bindings
                    .iter()
                    .find(|b| b["type"] == "timerTrigger")
                    .and_then(|b| b["schedule"].as_str())
                    .map(|s| (name.clone(), s.to_owned()))
            })
            .collect();
        timers.sort();
        timers
    }
}

/// Resolves `%NAME%` (the host's app-setting references in function.json) from `settings`.
pub fn resolve(text: &str, settings: &HashMap<String, String>) -> String {
    match text.strip_prefix('%').and_then(|t| t.strip_suffix('%')) {
        Some(name) => settings.get(name).cloned().unwrap_or_default(),
        None => text.to_owned(),
    }
}

/// `hh:mm:ss` (host.json time spans, and the timer trigger's interval form).
fn hh_mm_ss(text: &str) -> Option<Duration> {
    let parts: Vec<u64> = text
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [h, m, s] => Some(Duration::from_secs(h * 3600 + m * 60 + s)),
        _ => None,
    }
}

/// How often a timer schedule fires, roughly: `hh:mm:ss` intervals exactly; NCRONTAB by the
/// first of second, minute and hour that is not a fixed number (`*` → every unit, `*/n` →
/// every n units), a day when all three are fixed. Enough for a local schedule loop; the host
/// fires at the matching wall-clock times instead.
pub fn schedule_period(schedule: &str) -> Option<Duration> {
    if let Some(interval) = hh_mm_ss(schedule.trim()) {
        return (!interval.is_zero()).then_some(interval);
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let fields: Vec<&str> = match fields.len() {
        6 => fields,
        5 => std::iter::once("0").chain(fields).collect(),
        _ => return None,
    };
    for (field, unit) in fields.iter().take(3).zip([1u64, 60, 3600]) {
        if *field == "*" {
            return Some(Duration::from_secs(unit));
        }
        if let Some(step) = field.strip_prefix("*/") {
            let step: u64 = step.parse().ok().filter(|s| *s > 0)?;
            return Some(Duration::from_secs(step * unit));
        }
        field.parse::<u64>().ok()?;
    }
    Some(Duration::from_secs(24 * 3600))
}

/// The handler process, started as the host starts it (port and settings in the environment,
/// nothing else inherited but `PATH`), ready once `/` answers. Killed on drop.
pub struct Handler {
    child: tokio::process::Child,
    address: String,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Handler {
    /// Starts `program args…` (the handler itself, or a wrapper that execs it); its stdout
    /// lines are kept (see [`Handler::logs`]).
    pub async fn start_with(program: &str, args: &[&str], envs: &HashMap<String, String>) -> Self {
        Self::spawn(program, args, envs, None).await
    }

    /// Like [`Handler::start_with`], also appending every stdout line to `log`.
    ///
    /// # Panics
    /// When the program cannot be started, exits during start-up or does not answer `/`
    /// within the host's 30 s.
    pub async fn spawn(
        program: &str,
        args: &[&str],
        envs: &HashMap<String, String>,
        log: Option<File>,
    ) -> Self {
        let port = crate::free_port();
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
        let mut reader =
            tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        tokio::spawn(async move {
            let mut log = log;
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(file) = log.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
                lines.lock().expect("log lines").push(line);
            }
        });
        let address = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let started = Instant::now();
        while client.get(format!("{address}/")).send().await.is_err() {
            assert!(
                child.try_wait().expect("child status").is_none(),
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

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Everything the handler printed to stdout so far.
    pub fn logs(&self) -> String {
        self.stdout.lock().expect("log lines").join("\n")
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// POSTs an envelope to `/<function>` chunked (no Content-Length) with the host's headers;
/// returns the status and the JSON answer.
///
/// # Panics
/// When the handler does not answer, or answers something other than JSON (the host fails
/// such invocations).
pub async fn invoke(
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
        .timeout(Duration::from_secs(300))
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

/// Base64-decodes a queue message text.
///
/// # Panics
/// When it is not base64 of UTF-8.
pub fn unb64(text: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("queue message is not base64 ({e}): {text}"));
    String::from_utf8(bytes).expect("UTF-8 message")
}

/// One ReferralSync invocation as the emulated host saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message's dequeue count on this delivery.
    pub dequeue_count: u32,
    /// The handler's HTTP status.
    pub status: u16,
    /// The handler's answer.
    pub answer: Value,
}

/// The emulated host: output bindings to Azurite queues and blobs, the queue trigger of
/// `referral-sync`, and timer invocations.
pub struct FakeHost {
    client: reqwest::Client,
    app: FunctionApp,
    /// host.json's queue options.
    pub options: QueueOptions,
    /// `referral-sync`.
    pub queue: QueueClient,
    /// `referral-sync-poison`.
    pub poison: QueueClient,
    queue_endpoint: String,
    blobs: BlobClient,
    retry_visibility_seconds: u32,
    deliveries: Mutex<Vec<Delivery>>,
    last_timer_runs: Mutex<HashMap<String, OffsetDateTime>>,
}

impl FakeHost {
    /// A host for `app` over `azurite`; a failed queue invocation is retried after
    /// `retry_visibility_seconds` (host.json's `visibilityTimeout`, shortened in tests).
    ///
    /// # Panics
    /// When the queues cannot be created or the ReferralSync bindings are not the ones this
    /// emulation knows.
    pub async fn new(azurite: &Azurite, app: FunctionApp, retry_visibility_seconds: u32) -> Self {
        let options = app.queue_options();
        assert_eq!(options.message_encoding, "base64");
        let sync = app.bindings("ReferralSync");
        assert_eq!(sync[0]["queueName"], QUEUE, "ReferralSync's trigger queue");
        assert_eq!(
            sync[1]["queueName"], POISON_QUEUE,
            "ReferralSync's poison output"
        );
        let queue = azurite.queue(QUEUE);
        let poison = azurite.queue(POISON_QUEUE);
        queue.create().await.expect("create queue");
        poison.create().await.expect("create poison queue");
        Self {
            client: reqwest::Client::new(),
            app,
            options,
            queue,
            poison,
            queue_endpoint: azurite.queue_endpoint(),
            blobs: azurite.blobs(),
            retry_visibility_seconds,
            deliveries: Mutex::new(Vec::new()),
            last_timer_runs: Mutex::new(HashMap::new()),
        }
    }

    /// The function app this host runs.
    pub fn app(&self) -> &FunctionApp {
        &self.app
    }

    /// Every ReferralSync delivery so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().expect("deliveries").clone()
    }

    /// A queue output binding value written as the host writes it: an object becomes its JSON
    /// text, an array one message per element, then base64 (`messageEncoding: base64`).
    pub async fn write_queue_output(queue: &QueueClient, value: &Value) {
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

    /// A blob output binding value written as the host writes it: a string that is valid
    /// base64 as its bytes, another string as UTF-8, an object or array as compact JSON,
    /// `null` not at all.
    pub async fn write_blob_output(&self, path: &str, value: &Value) {
        let bytes = match value {
            Value::Null => return,
            Value::String(s) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap_or_else(|_| s.clone().into_bytes()),
            other => other.to_string().into_bytes(),
        };
        self.blobs.put(path, &bytes).await.expect("write blob");
    }

    /// Writes the `Outputs` of a successful invocation of `function` to its output bindings.
    pub async fn write_outputs(&self, function: &str, answer: &Value) {
        for binding in self.app.bindings(function) {
            if binding["direction"] != "out" {
                continue;
            }
            let name = binding["name"].as_str().unwrap_or_default();
            let Some(value) = answer["Outputs"].get(name) else {
                continue;
            };
            match binding["type"].as_str() {
                Some("queue") => {
                    let queue_name = binding["queueName"].as_str().unwrap_or_default();
                    let queue =
                        QueueClient::new(&self.queue_endpoint, ACCOUNT, ACCOUNT_KEY, queue_name);
                    Self::write_queue_output(&queue, value).await;
                }
                Some("blob") => {
                    let path = binding["path"].as_str().unwrap_or_default();
                    self.write_blob_output(path, value).await;
                }
                _ => {}
            }
        }
    }

    /// Invokes ReferralWebhook; on a 2xx answer writes its outputs (`syncQueue`). Returns the
    /// `res` output (what the caller gets).
    ///
    /// # Panics
    /// When the invocation fails (the host would answer the caller 500).
    pub async fn webhook(&self, handler: &Handler, envelope: Vec<u8>) -> Value {
        self.webhook_answer(handler, envelope).await["Outputs"]["res"].clone()
    }

    /// Like [`FakeHost::webhook`], returning the handler's whole answer.
    ///
    /// # Panics
    /// When the invocation fails.
    pub async fn webhook_answer(&self, handler: &Handler, envelope: Vec<u8>) -> Value {
        let (status, answer) = invoke(&self.client, handler, "ReferralWebhook", envelope).await;
        assert_eq!(status, 200, "webhook invocation failed: {answer}");
        self.write_outputs("ReferralWebhook", &answer).await;
        answer
    }

    /// One poll of the queue trigger: dequeues a batch and invokes ReferralSync for each
    /// message; returns how many were delivered.
    pub async fn poll_queue(&self, handler: &Handler) -> Result<usize, String> {
        let batch = self
            .queue
            .get(self.options.batch_size, LEASE_SECONDS)
            .await
            .map_err(|e| e.to_string())?;
        let delivered = batch.len();
        for message in batch {
            let text = unb64(&message.text);
            let envelope = queue_envelope(&text, message.dequeue_count);
            let (status, answer) = invoke(&self.client, handler, "ReferralSync", envelope).await;
            let step = if (200..300).contains(&status) {
                self.write_outputs("ReferralSync", &answer).await;
                self.queue.delete(&message).await
            } else if message.dequeue_count >= self.options.max_dequeue_count {
                // The host copies the message as it is to <queue>-poison, then deletes it.
                match self.poison.put(&message.text).await {
                    Ok(_) => self.queue.delete(&message).await,
                    Err(e) => Err(e),
                }
            } else {
                self.queue
                    .release(&message, self.retry_visibility_seconds)
                    .await
                    .map(|_| ())
            };
            step.map_err(|e| e.to_string())?;
            self.deliveries.lock().expect("deliveries").push(Delivery {
                dequeue_count: message.dequeue_count,
                status,
                answer,
            });
        }
        Ok(delivered)
    }

    /// Runs the queue trigger until `referral-sync` is empty (visible or not).
    ///
    /// # Panics
    /// When it is not empty after `limit`, or the queue cannot be read.
    pub async fn drain(&self, handler: &Handler, limit: Duration) {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < limit,
                "referral-sync not drained within {limit:?}; deliveries: {:?}\nhandler log:\n{}",
                self.deliveries(),
                handler.logs()
            );
            let delivered = self.poll_queue(handler).await.expect("poll the queue");
            if delivered == 0 {
                if self.queue.count().await.expect("count") == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// One run of the timer function `function`, as the schedule fires it: the `TimerInfo`,
    /// its blob inputs read from Azurite (`"null"` when missing), and on a 2xx answer its
    /// outputs written. Returns the status and the answer.
    pub async fn run_timer(&self, handler: &Handler, function: &str) -> (u16, Value) {
        let now = OffsetDateTime::now_utc();
        let format = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
        let last = self
            .last_timer_runs
            .lock()
            .expect("timer runs")
            .insert(function.to_owned(), now);
        let mut data = serde_json::Map::new();
        for binding in self.app.bindings(function) {
            let name = binding["name"].as_str().unwrap_or_default().to_owned();
            match (binding["type"].as_str(), binding["direction"].as_str()) {
                (Some("timerTrigger"), _) => {
                    let last = last.map_or("0001-01-01T00:00:00+00:00".to_owned(), format);
                    data.insert(
                        name,
                        json!({"Schedule": {"AdjustForDST": true},
                               "ScheduleStatus": {"Last": last, "Next": format(now),
                                                  "LastUpdated": format(now)},
                               "IsPastDue": false}),
                    );
                }
                (Some("blob"), Some("in")) => {
                    let path = binding["path"].as_str().unwrap_or_default();
                    let value = match self.blobs.get(path).await {
                        Ok(Some(bytes)) => {
                            let text = String::from_utf8_lossy(&bytes).into_owned();
                            Value::String(serde_json::to_string(&text).unwrap_or_default())
                        }
                        Ok(None) => json!("null"),
                        Err(e) => return (0, json!({"error": e.to_string()})),
                    };
                    data.insert(name, value);
                }
                _ => {}
            }
        }
        let envelope = json!({
            "Data": data,
            "Metadata": {"sys": {"MethodName": function, "UtcNow": format(now),
                                 "RandGuid": uuid::Uuid::new_v4().to_string()}}
        });
        let (status, answer) = invoke(
            &self.client,
            handler,
            function,
            envelope.to_string().into_bytes(),
        )
        .await;
        if (200..300).contains(&status) {
            self.write_outputs(function, &answer).await;
        }
        (status, answer)
    }

    /// Every message in `referral-sync-poison`, decoded.
    pub async fn poisoned(&self) -> Vec<Value> {
        self.poison
            .peek(32)
            .await
            .expect("peek poison")
            .iter()
            .map(|m| serde_json::from_str(&unb64(&m.text)).expect("poison message is JSON"))
            .collect()
    }

    /// Runs the queue trigger in the background: polls, and waits up to `maxPollingInterval`
    /// when the queue is empty. Errors are printed and the loop goes on.
    pub fn serve_queue(self: &Arc<Self>, handler: Arc<Handler>) -> tokio::task::JoinHandle<()> {
        let host = self.clone();
        tokio::spawn(async move {
            let idle = Duration::from_millis(250)
                .min(Duration::from_secs(host.options.max_polling_seconds));
            loop {
                match host.poll_queue(&handler).await {
                    Ok(0) => tokio::time::sleep(idle).await,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("host emulation: polling {QUEUE} failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    }

    /// Runs the timer `function` every `period` in the background (not at start, as
    /// `runOnStartup: false`); runs never overlap. Failed runs are printed, not retried.
    pub fn serve_timer(
        self: &Arc<Self>,
        handler: Arc<Handler>,
        function: String,
        period: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let host = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let (status, answer) = host.run_timer(&handler, &function).await;
                if !(200..300).contains(&status) {
                    eprintln!("host emulation: {function} failed ({status}): {answer}");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_give_their_period() {
        let cases = [
            ("0 */1 * * * *", Some(60)),
            ("0 */5 * * * *", Some(300)),
            ("*/5 * * * * *", Some(5)),
            ("* * * * * *", Some(1)),
            ("0 30 3 * * *", Some(86_400)),
            ("0 0 * * * *", Some(3600)),
            ("*/5 * * * *", Some(300)),
            ("00:00:10", Some(10)),
            ("00:00:00", None),
            ("every minute", None),
            ("*/0 * * * * *", None),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                schedule_period(text),
                seconds.map(Duration::from_secs),
                "{text}"
            );
        }
    }

    #[test]
    fn setting_references_resolve() {
        let settings = HashMap::from([("S".to_owned(), "0 */1 * * * *".to_owned())]);
        assert_eq!(resolve("%S%", &settings), "0 */1 * * * *");
        assert_eq!(resolve("%MISSING%", &settings), "");
        assert_eq!(resolve("0 0 * * * *", &settings), "0 0 * * * *");
    }

    #[test]
    fn the_repository_app_has_four_functions_and_two_timers() {
        let app = FunctionApp::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        let mut names: Vec<&String> = app.functions.keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "CrmChanges",
                "ReferralReconcile",
                "ReferralSync",
                "ReferralWebhook"
            ]
        );
        let timers: Vec<String> = app.timers().into_iter().map(|(n, _)| n).collect();
        assert_eq!(timers, ["CrmChanges", "ReferralReconcile"]);
        assert_eq!(app.queue_options().max_dequeue_count, 5);
        assert_eq!(app.queue_options().max_polling_seconds, 2);
    }
}
