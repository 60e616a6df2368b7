//! Machinery shared by every fake: the hyper server loop (one task per connection, keep-alive on,
//! plain HTTP or TLS), request recording, scripted and random faults, the concurrency gauge, and
//! small helpers (RFC 3339 time, percent-decoding, JSON replies).

use std::{
    future::poll_fn,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::{
    Request, Response,
    body::{Body as _, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use time::{
    OffsetDateTime, format_description::BorrowedFormatItem,
    format_description::well_known::Rfc3339, macros::format_description,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    task::{JoinHandle, JoinSet},
};

/// One request as a fake received it (recorded before faults are applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// HTTP method, upper case (`"GET"`, `"PATCH"`, ...).
    pub method: String,
    /// Path exactly as sent (still percent-encoded).
    pub path: String,
    /// Raw query string without the leading `?`.
    pub query: Option<String>,
    /// Headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Raw body bytes.
    pub body: Vec<u8>,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Body parsed as JSON; `Value::Null` when the body is empty or not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Body as UTF-8 text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body parsed as `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_pairs(&self.body)
    }

    /// First value of form field `name` in a form-encoded body.
    pub fn form_value(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Decoded query pairs (`%24top` and `$top` both come out as `$top`).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .map(|q| parse_pairs(q.as_bytes()))
            .unwrap_or_default()
    }

    /// First decoded value of query parameter `name`.
    pub fn query_value(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Percent-decoded path.
    pub fn decoded_path(&self) -> String {
        percent_decode(&self.path)
    }

    /// The token of an `Authorization: Bearer <token>` header, if present and non-empty.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    fn matches(&self, method: &str, path_contains: &str) -> bool {
        (method.is_empty() || method == "*" || self.method.eq_ignore_ascii_case(method))
            && (self.path.contains(path_contains) || self.decoded_path().contains(path_contains))
    }
}

/// A scripted fault: the next `times` requests that match get this answer instead of the normal one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Only requests with this method (case-insensitive); `None` = any.
    pub method: Option<String>,
    /// Only requests whose path (raw or percent-decoded) contains this; `None` = any.
    pub path_contains: Option<String>,
    /// Status to answer with; `0` = answer normally (after `delay`).
    pub status: u16,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// Body to send instead of the fake's small JSON error body.
    pub body: Option<String>,
    /// Sleep this long before answering (or resetting); with `status == 0` this simulates a slow server.
    pub delay: Option<Duration>,
    /// How many matching requests this fault applies to.
    pub times: usize,
    /// Close the connection without any response.
    pub reset: bool,
    /// Handle the request first (its write is kept), then answer with the fault: the answer
    /// to a write that happened is lost.
    pub after_write: bool,
}

impl Fault {
    /// Answer the next matching request with `code` (use `0` to answer normally, e.g. with `.delay`).
    pub fn status(code: u16) -> Self {
        Self {
            method: None,
            path_contains: None,
            status: code,
            retry_after: None,
            body: None,
            delay: None,
            times: 1,
            reset: false,
            after_write: false,
        }
    }

    /// Delay the next matching request by `d`, then answer normally (a timeout for short client timeouts).
    pub fn delayed(d: Duration) -> Self {
        Self::status(0).delay(d)
    }

    /// Drop the connection of the next matching request without answering.
    pub fn connection_reset() -> Self {
        Self::status(0).reset()
    }

    /// Restrict to `method` (empty or `"*"` = any) and paths containing `path_contains`.
    pub fn on(mut self, method: &str, path_contains: &str) -> Self {
        self.method = (!method.is_empty() && method != "*").then(|| method.to_owned());
        self.path_contains = Some(path_contains.to_owned());
        self
    }

    /// Add `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Apply to `n` matching requests (default 1).
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    /// Apply to every matching request.
    pub fn always(self) -> Self {
        self.times(usize::MAX)
    }

    /// Sleep `d` before answering.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// Drop the connection instead of answering.
    pub fn reset(mut self) -> Self {
        self.reset = true;
        self
    }

    /// Handle the request normally (keeping what it wrote), then answer with this fault
    /// instead of the real answer: a lost answer to a write that happened.
    pub fn after_write(mut self) -> Self {
        self.after_write = true;
        self
    }

    /// Use `body` as the response body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    fn matches(&self, req: &Recorded) -> bool {
        req.matches(
            self.method.as_deref().unwrap_or(""),
            self.path_contains.as_deref().unwrap_or(""),
        )
    }
}

/// Random faults for load tests: each request, with probability `rate`, gets one of
/// 429 + `Retry-After`, 503, a delay of `timeout_delay` before the normal answer, or a
/// connection reset (chosen uniformly). Deterministic for a given `seed` and request order.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomFaults {
    /// Probability in `0.0..=1.0`.
    pub rate: f64,
    /// Seed of the xorshift generator.
    pub seed: u64,
    /// `Retry-After` seconds sent with 429s.
    pub retry_after_secs: u64,
    /// Delay used for the "timeout" fault.
    pub timeout_delay: Duration,
    /// Also lose the answer to writes (POST, PATCH, PUT, DELETE) that happened: a fifth
    /// fault, a connection reset after the request was handled.
    pub lost_answers: bool,
}

impl RandomFaults {
    /// `rate` and `seed` with `Retry-After: 1` and a 10 s timeout delay.
    pub fn new(rate: f64, seed: u64) -> Self {
        Self {
            rate,
            seed,
            retry_after_secs: 1,
            timeout_delay: Duration::from_secs(10),
            lost_answers: false,
        }
    }
}

/// xorshift64 with a splitmix64-scrambled seed.
#[derive(Debug)]
struct Xorshift(u64);

impl Xorshift {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A response produced by a fake's handler.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    /// `status` without a body.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// Drops the body (and its content type), keeping status and other headers.
    pub fn without_body(mut self) -> Self {
        self.body.clear();
        self.headers.retain(|(k, _)| k != "content-type");
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// The synchronous request handler of a fake: (request, base URL) -> reply.
pub(crate) type Handler = Box<dyn Fn(&Recorded, &str) -> Reply + Send + Sync>;
/// Builds the body of an injected error: (status, retry-after) -> body.
pub(crate) type FaultBody = fn(u16, Option<u64>) -> String;

enum Outcome {
    Normal,
    Reset,
    Status {
        status: u16,
        retry_after: Option<u64>,
        body: Option<String>,
    },
}

struct Shared {
    base_url: String,
    handler: Handler,
    fault_body: FaultBody,
    requests: Mutex<Vec<Recorded>>,
    faults: Mutex<Vec<Fault>>,
    random: Mutex<Option<(RandomFaults, Xorshift)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    injected: AtomicUsize,
}

/// Locks a std mutex, ignoring poisoning (a panicking test must not cascade).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn plan(&self, req: &Recorded) -> (Option<Duration>, Outcome, bool) {
        {
            let mut faults = lock(&self.faults);
            if let Some(i) = faults.iter().position(|f| f.times > 0 && f.matches(req)) {
                let fault = faults[i].clone();
                if fault.times != usize::MAX {
                    faults[i].times -= 1;
                }
                if faults[i].times == 0 {
                    faults.remove(i);
                }
                drop(faults);
                self.injected.fetch_add(1, Ordering::SeqCst);
                let outcome = if fault.reset {
                    Outcome::Reset
                } else if fault.status == 0 {
                    Outcome::Normal
                } else {
                    Outcome::Status {
                        status: fault.status,
                        retry_after: fault.retry_after,
                        body: fault.body,
                    }
                };
                return (fault.delay, outcome, fault.after_write);
            }
        }
        let mut random = lock(&self.random);
        if let Some((cfg, rng)) = random.as_mut()
            && rng.next_f64() < cfg.rate
        {
            self.injected.fetch_add(1, Ordering::SeqCst);
            let kinds = if cfg.lost_answers && req.method != "GET" {
                5
            } else {
                4
            };
            let (delay, outcome) = match rng.next_u64() % kinds {
                0 => (
                    None,
                    Outcome::Status {
                        status: 429,
                        retry_after: Some(cfg.retry_after_secs),
                        body: None,
                    },
                ),
                1 => (
                    None,
                    Outcome::Status {
                        status: 503,
                        retry_after: None,
                        body: None,
                    },
                ),
                2 => (Some(cfg.timeout_delay), Outcome::Normal),
                3 => (None, Outcome::Reset),
                _ => return (None, Outcome::Reset, true),
            };
            return (delay, outcome, false);
        }
        (None, Outcome::Normal, false)
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<String>, io::Error> {
        let _guard = InFlight::enter(self);
        let (parts, mut body) = req.into_parts();
        let mut bytes = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(io::Error::other)?;
            if let Ok(data) = frame.into_data() {
                bytes.extend_from_slice(&data);
            }
        }
        let rec = Recorded {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: bytes,
        };
        lock(&self.requests).push(rec.clone());
        let (delay, outcome, after_write) = self.plan(&rec);
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if after_write {
            (self.handler)(&rec, &self.base_url);
        }
        let reply = match outcome {
            Outcome::Reset => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "injected connection reset",
                ));
            }
            Outcome::Status {
                status,
                retry_after,
                body,
            } => {
                let mut reply = Reply {
                    status,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: body.unwrap_or_else(|| (self.fault_body)(status, retry_after)),
                };
                if let Some(secs) = retry_after {
                    reply.headers.push(("retry-after".into(), secs.to_string()));
                }
                reply
            }
            Outcome::Normal => (self.handler)(&rec, &self.base_url),
        };
        let mut builder = Response::builder().status(reply.status);
        for (k, v) in &reply.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        Ok(builder
            .body(reply.body)
            .expect("fake built an invalid response"))
    }
}

/// A running fake HTTP server bound to 127.0.0.1 on a fresh port; stops when dropped.
///
/// Every fake dereferences to this type, so `fake.requests()`, `fake.inject(..)` etc. work on all.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Binds 127.0.0.1:0 and serves `handler` on the current tokio runtime. With `tls`
    /// (`acceptor`, host name) the server speaks HTTPS and `base_url` is `https://{host}:{port}`.
    pub(crate) async fn start(
        handler: Handler,
        fault_body: FaultBody,
        tls: Option<(tokio_native_tls::TlsAcceptor, String)>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake: local_addr");
        let base_url = match &tls {
            Some((_, host)) => format!("https://{host}:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        let shared = Arc::new(Shared {
            base_url,
            handler,
            fault_body,
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            random: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
        });
        let acceptor = tls.map(|(a, _)| a);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), acceptor));
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT` (or `https://host:PORT`), no trailing slash.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `base_url() + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.shared.base_url)
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues a scripted fault (faults are checked in insertion order).
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Removes all scripted faults not yet consumed.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Enables (or with `None` disables) random faults; restarts the generator from the seed.
    pub fn set_random_faults(&self, faults: Option<RandomFaults>) {
        *lock(&self.shared.random) = faults.map(|f| {
            let rng = Xorshift::new(f.seed);
            (f, rng)
        });
    }

    /// How many requests got a scripted or random fault so far.
    pub fn injected_faults(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Requests being processed right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Highest number of requests processed concurrently since start (or the last reset).
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Resets `max_in_flight` to the current `in_flight`.
    pub fn reset_max_in_flight(&self) {
        self.shared
            .max_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Requests with `method` (empty or `"*"` = any) whose path contains `path_contains`.
    pub fn requests_matching(&self, method: &str, path_contains: &str) -> Vec<Recorded> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.matches(method, path_contains))
            .cloned()
            .collect()
    }

    /// Number of requests with `method` (empty or `"*"` = any) whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.matches(method, path_contains))
            .count()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_native_tls::TlsAcceptor>,
) {
    // Dropping the set (when this task is aborted) aborts every connection task.
    let mut conns = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve(stream, shared).await;
                    }
                }
                None => serve(stream, shared).await,
            }
        });
    }
}

async fn serve<I>(io: I, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { shared.handle(req).await }
    });
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Decoded `application/x-www-form-urlencoded` pairs (also the shape of a query string).
fn parse_pairs(encoded: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(encoded)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Percent-decodes `s` (no `+` to space conversion); invalid escapes are kept verbatim.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3339 UTC with 7 fractional digits, as Partner Center writes timestamps.
const RFC3339_7_DIGITS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7]Z");

/// Current time as RFC 3339 UTC with 7 fractional digits (`2026-01-01T00:00:00.0000000Z`).
pub(crate) fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc().unix_timestamp_nanos())
}

/// Formats nanoseconds since the Unix epoch as RFC 3339 UTC with 7 fractional digits.
pub(crate) fn format_rfc3339(nanos: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .expect("a representable time")
        .format(RFC3339_7_DIGITS)
        .expect("format a timestamp")
}

/// Parses `YYYY-MM-DD(T|t| )HH:MM:SS[.f+](Z|z|±HH:MM)`, surrounding whitespace allowed, into
/// nanoseconds since the Unix epoch.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i128> {
    let s = s.trim();
    // `time` takes any byte between date and time; keep to the separators RFC 3339 names.
    if !matches!(s.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let n = parse_rfc3339("2026-01-02T03:04:05.1234567Z").expect("parse");
        assert_eq!(format_rfc3339(n), "2026-01-02T03:04:05.1234567Z");
        assert_eq!(
            parse_rfc3339("2026-01-02T03:04:05Z"),
            parse_rfc3339("2026-01-02T04:04:05+01:00")
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert!(parse_rfc3339("2026-13-01T00:00:00Z").is_none());
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("leads(k=%27a%27%27b%27)"), "leads(k='a''b')");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn xorshift_is_deterministic() {
        let mut a = Xorshift::new(7);
        let mut b = Xorshift::new(7);
        let mut c = Xorshift::new(8);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], c.next_u64());
        let f = Xorshift::new(0).next_f64();
        assert!((0.0..1.0).contains(&f));
    }
}
