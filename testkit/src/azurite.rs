//! A real Azurite (the Azure Storage emulator, installed by `scripts/install-deps.sh --azurite`)
//! started as a child process on free loopback ports, and minimal Queue and Blob service REST
//! clients for the development account, signed with SharedKey exactly as the Azure SDKs sign.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
use time::{OffsetDateTime, macros::format_description};

/// The development storage account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its well-known key (published in the Azurite README; not a secret).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Queue service version sent in `x-ms-version`.
const API_VERSION: &str = "2021-12-02";

/// A running Azurite (blob, queue and table services), killed on drop.
pub struct Azurite {
    child: Child,
    /// Blob service port.
    pub blob_port: u16,
    /// Queue service port.
    pub queue_port: u16,
    /// Table service port.
    pub table_port: u16,
    _data: tempfile::TempDir,
}

/// Path of the Azurite launcher installed by `scripts/install-deps.sh --azurite`.
pub fn azurite_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.azurite/node_modules/.bin/azurite")
}

impl Azurite {
    /// Starts Azurite with in-memory data on three free ports and waits until the queue
    /// service answers (at most 30 s).
    ///
    /// # Panics
    /// When Azurite is not installed ("run scripts/install-deps.sh --azurite"), exits early,
    /// or does not answer in time.
    pub fn start() -> Self {
        let bin = azurite_bin();
        assert!(
            bin.exists(),
            "{} is missing: run scripts/install-deps.sh --azurite",
            bin.display()
        );
        let data = tempfile::tempdir().expect("temp dir");
        let (blob_port, queue_port, table_port) =
            (crate::free_port(), crate::free_port(), crate::free_port());
        let mut child = Command::new(&bin)
            .arg("--silent")
            .arg("--skipApiVersionCheck")
            .arg("--loose")
            .arg("--disableTelemetry")
            // In memory: nothing to clean up (Azurite refuses --location together with this).
            .arg("--inMemoryPersistence")
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &blob_port.to_string(),
            ])
            .args([
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                &queue_port.to_string(),
            ])
            .args([
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                &table_port.to_string(),
            ])
            .current_dir(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): run scripts/install-deps.sh --azurite",
                    bin.display()
                )
            });
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], queue_port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("azurite exited early with {status}");
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("azurite did not open the queue port {queue_port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            blob_port,
            queue_port,
            table_port,
            _data: data,
        }
    }

    /// `http://127.0.0.1:<queue port>/devstoreaccount1`.
    pub fn queue_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.queue_port)
    }

    /// The connection string of this instance (what `AzureWebJobsStorage` would hold).
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};\
             BlobEndpoint=http://127.0.0.1:{}/{ACCOUNT};QueueEndpoint=http://127.0.0.1:{}/{ACCOUNT};\
             TableEndpoint=http://127.0.0.1:{}/{ACCOUNT};",
            self.blob_port, self.queue_port, self.table_port
        )
    }

    /// `http://127.0.0.1:<blob port>/devstoreaccount1`.
    pub fn blob_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.blob_port)
    }

    /// A client for the blobs of this instance.
    pub fn blobs(&self) -> BlobClient {
        BlobClient::new(&self.blob_endpoint(), ACCOUNT, ACCOUNT_KEY)
    }

    /// A client for queue `name` of this instance.
    pub fn queue(&self, name: &str) -> QueueClient {
        QueueClient::new(&self.queue_endpoint(), ACCOUNT, ACCOUNT_KEY, name)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message returned by Get Messages (or Peek Messages, which has no pop receipt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// `MessageId`.
    pub id: String,
    /// `PopReceipt` (empty for peeked messages).
    pub pop_receipt: String,
    /// `DequeueCount`.
    pub dequeue_count: u32,
    /// `MessageText`, XML-unescaped (still base64 when the writer encoded it).
    pub text: String,
    /// `InsertionTime`.
    pub insertion_time: String,
    /// `TimeNextVisible` (empty for peeked messages).
    pub time_next_visible: String,
}

/// A failed Queue service call.
#[derive(Debug)]
pub struct QueueError(pub String);

impl std::error::Error for QueueError {}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Minimal client of one queue: `http(s)://host/<account>/<queue>`, SharedKey-signed.
#[derive(Debug, Clone)]
pub struct QueueClient {
    http: reqwest::Client,
    /// `…/<account>` (path-style, as Azurite serves it).
    endpoint: String,
    account: String,
    key: Vec<u8>,
    name: String,
}

type Result<T> = std::result::Result<T, QueueError>;

impl QueueClient {
    /// A client for `<endpoint>/<name>`; `key` is the base64 account key.
    pub fn new(endpoint: &str, account: &str, key: &str, name: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            account: account.to_owned(),
            key: base64::engine::general_purpose::STANDARD
                .decode(key)
                .expect("account key is base64"),
            name: name.to_owned(),
        }
    }

    /// The queue name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the queue (no error if it already exists).
    pub async fn create(&self) -> Result<()> {
        let (status, _, body) = self.send("PUT", "", &[], None).await?;
        match status {
            201 | 204 => Ok(()),
            _ => Err(QueueError(format!(
                "create queue {}: {status} {body}",
                self.name
            ))),
        }
    }

    /// Puts a message whose `MessageText` is `text` (XML-escaped here; encode it first if the
    /// reader expects base64).
    pub async fn put(&self, text: &str) -> Result<String> {
        let body = format!(
            "<QueueMessage><MessageText>{}</MessageText></QueueMessage>",
            xml_escape(text)
        );
        let (status, _, answer) = self.send("POST", "/messages", &[], Some(body)).await?;
        if status != 201 {
            return Err(QueueError(format!("put message: {status} {answer}")));
        }
        Ok(element(&answer, "MessageId").unwrap_or_default())
    }

    /// Puts `text` base64-encoded, as the Functions queue binding writes with
    /// `messageEncoding: base64`.
    pub async fn put_base64(&self, text: &str) -> Result<String> {
        self.put(&base64::engine::general_purpose::STANDARD.encode(text))
            .await
    }

    /// Dequeues up to `count` (1-32) messages, invisible for `visibility_timeout` seconds.
    pub async fn get(&self, count: u32, visibility_timeout: u32) -> Result<Vec<QueueMessage>> {
        let query = [
            ("numofmessages", count.to_string()),
            ("visibilitytimeout", visibility_timeout.to_string()),
        ];
        let (status, _, body) = self.send("GET", "/messages", &query, None).await?;
        if status != 200 {
            return Err(QueueError(format!("get messages: {status} {body}")));
        }
        Ok(parse_messages(&body))
    }

    /// Peeks up to `count` (1-32) visible messages without dequeuing them.
    pub async fn peek(&self, count: u32) -> Result<Vec<QueueMessage>> {
        let query = [
            ("numofmessages", count.to_string()),
            ("peekonly", "true".to_owned()),
        ];
        let (status, _, body) = self.send("GET", "/messages", &query, None).await?;
        if status != 200 {
            return Err(QueueError(format!("peek messages: {status} {body}")));
        }
        Ok(parse_messages(&body))
    }

    /// Deletes a dequeued message.
    pub async fn delete(&self, message: &QueueMessage) -> Result<()> {
        let query = [("popreceipt", message.pop_receipt.clone())];
        let path = format!("/messages/{}", message.id);
        let (status, _, body) = self.send("DELETE", &path, &query, None).await?;
        match status {
            204 => Ok(()),
            _ => Err(QueueError(format!("delete message: {status} {body}"))),
        }
    }

    /// Makes a dequeued message visible again after `visibility_timeout` seconds (Update
    /// Message without new content), returning it with its new pop receipt.
    pub async fn release(
        &self,
        message: &QueueMessage,
        visibility_timeout: u32,
    ) -> Result<QueueMessage> {
        let query = [
            ("popreceipt", message.pop_receipt.clone()),
            ("visibilitytimeout", visibility_timeout.to_string()),
        ];
        let path = format!("/messages/{}", message.id);
        let (status, headers, body) = self.send("PUT", &path, &query, None).await?;
        if status != 204 {
            return Err(QueueError(format!("update message: {status} {body}")));
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        Ok(QueueMessage {
            pop_receipt: header("x-ms-popreceipt"),
            time_next_visible: header("x-ms-time-next-visible"),
            ..message.clone()
        })
    }

    /// The approximate number of messages, visible or not (`x-ms-approximate-messages-count`).
    pub async fn count(&self) -> Result<u64> {
        let query = [("comp", "metadata".to_owned())];
        let (status, headers, body) = self.send("GET", "", &query, None).await?;
        if status != 200 {
            return Err(QueueError(format!("get queue metadata: {status} {body}")));
        }
        headers
            .get("x-ms-approximate-messages-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| QueueError("no x-ms-approximate-messages-count".into()))
    }

    /// Deletes every message.
    pub async fn clear(&self) -> Result<()> {
        let (status, _, body) = self.send("DELETE", "/messages", &[], None).await?;
        match status {
            204 => Ok(()),
            _ => Err(QueueError(format!("clear messages: {status} {body}"))),
        }
    }

    async fn send(
        &self,
        method: &str,
        sub_path: &str,
        query: &[(&str, String)],
        body: Option<String>,
    ) -> Result<(u16, reqwest::header::HeaderMap, String)> {
        let mut url = url::Url::parse(&format!("{}/{}{sub_path}", self.endpoint, self.name))
            .map_err(|e| QueueError(format!("bad queue URL: {e}")))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let date = rfc1123(OffsetDateTime::now_utc());
        let body = body.unwrap_or_default();
        let content_length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let content_type = if body.is_empty() {
            ""
        } else {
            "application/xml; charset=utf-8"
        };
        let ms_headers = [("x-ms-date", date.as_str()), ("x-ms-version", API_VERSION)];
        let signature = shared_key(
            &self.account,
            &self.key,
            method,
            &content_length,
            content_type,
            &ms_headers,
            url.path(),
            query,
        );
        let method_value =
            reqwest::Method::from_bytes(method.as_bytes()).expect("valid HTTP method");
        let mut request = self
            .http
            .request(method_value, url.clone())
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION)
            .header(
                "Authorization",
                format!("SharedKey {}:{signature}", self.account),
            );
        if !body.is_empty() {
            request = request.header("Content-Type", content_type);
        }
        // Always send a length (0 for PUT/POST/DELETE without a body): the service wants one.
        request = request
            .header("Content-Length", body.len().to_string())
            .body(body);
        let response = request
            .send()
            .await
            .map_err(|e| QueueError(format!("{method} {url}: {e}")))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .map_err(|e| QueueError(format!("{method} {url}: reading the answer: {e}")))?;
        Ok((status, headers, text))
    }
}

/// SharedKey signature (the 2009-09-19+ string-to-sign of the Blob and Queue services):
/// `VERB`, the eleven standard headers (only Content-Length and Content-Type are used here),
/// the `x-ms-*` headers lower-cased and sorted, then the canonical resource.
#[allow(clippy::too_many_arguments)]
fn shared_key(
    account: &str,
    key: &[u8],
    method: &str,
    content_length: &str,
    content_type: &str,
    ms_headers: &[(&str, &str)],
    path: &str,
    query: &[(&str, String)],
) -> String {
    let mut canonical_headers: Vec<(String, String)> = ms_headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    canonical_headers.sort();
    // Path-style URL: the path already starts with /<account>, and the canonical resource
    // is /<account><path>, so the account appears twice (as the SDKs send it).
    let mut resource = format!("/{account}{}", percent_decode(path));
    let mut params: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    params.sort();
    for (k, v) in params {
        resource.push_str(&format!("\n{k}:{v}"));
    }
    let mut to_sign = format!("{method}\n\n\n{content_length}\n\n{content_type}\n\n\n\n\n\n\n");
    for (k, v) in canonical_headers {
        to_sign.push_str(&format!("{k}:{v}\n"));
    }
    to_sign.push_str(&resource);
    let key = PKey::hmac(key).expect("hmac key");
    let mut signer = Signer::new(MessageDigest::sha256(), &key).expect("signer");
    signer.update(to_sign.as_bytes()).expect("hmac");
    base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec().expect("hmac"))
}

/// Minimal client of the Blob service: read and overwrite block blobs by `container/name`
/// path, SharedKey-signed; what the host's blob bindings do.
#[derive(Debug, Clone)]
pub struct BlobClient {
    http: reqwest::Client,
    endpoint: String,
    account: String,
    key: Vec<u8>,
}

impl BlobClient {
    /// A client for `<endpoint>` (`…/<account>`); `key` is the base64 account key.
    pub fn new(endpoint: &str, account: &str, key: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            account: account.to_owned(),
            key: base64::engine::general_purpose::STANDARD
                .decode(key)
                .expect("account key is base64"),
        }
    }

    /// The blob at `path` (`container/name`), or `None` when it or its container is missing.
    pub async fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let (status, body) = self.send("GET", path, &[], &[], Vec::new()).await?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => Err(QueueError(format!(
                "get blob {path}: {status} {}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }

    /// Overwrites the block blob at `path`, creating its container when missing (as the
    /// host's blob output binding does).
    pub async fn put(&self, path: &str, content: &[u8]) -> Result<()> {
        let container = path.split('/').next().unwrap_or_default();
        let create = [("restype", "container".to_owned())];
        let (status, body) = self
            .send("PUT", container, &create, &[], Vec::new())
            .await?;
        if !matches!(status, 201 | 409) {
            return Err(QueueError(format!(
                "create container {container}: {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let headers = [("x-ms-blob-type", "BlockBlob")];
        let (status, body) = self
            .send("PUT", path, &[], &headers, content.to_vec())
            .await?;
        match status {
            201 => Ok(()),
            _ => Err(QueueError(format!(
                "put blob {path}: {status} {}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        extra: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut url = url::Url::parse(&format!("{}/{path}", self.endpoint))
            .map_err(|e| QueueError(format!("bad blob URL: {e}")))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let date = rfc1123(OffsetDateTime::now_utc());
        let content_length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let content_type = if body.is_empty() {
            ""
        } else {
            "application/octet-stream"
        };
        let mut ms_headers = vec![("x-ms-date", date.as_str()), ("x-ms-version", API_VERSION)];
        ms_headers.extend_from_slice(extra);
        let signature = shared_key(
            &self.account,
            &self.key,
            method,
            &content_length,
            content_type,
            &ms_headers,
            url.path(),
            query,
        );
        let method_value =
            reqwest::Method::from_bytes(method.as_bytes()).expect("valid HTTP method");
        let mut request = self.http.request(method_value, url.clone()).header(
            "Authorization",
            format!("SharedKey {}:{signature}", self.account),
        );
        for (k, v) in &ms_headers {
            request = request.header(*k, *v);
        }
        if !body.is_empty() {
            request = request.header("Content-Type", content_type);
        }
        let response = request
            .header("Content-Length", body.len().to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| QueueError(format!("{method} {url}: {e}")))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| QueueError(format!("{method} {url}: reading the answer: {e}")))?;
        Ok((status, bytes.to_vec()))
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn rfc1123(t: OffsetDateTime) -> String {
    let format = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(format)
        .expect("format date")
}

fn percent_decode(path: &str) -> String {
    url::form_urlencoded::parse(format!("p={}", path.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| path.to_owned())
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The unescaped text of the first `<name>…</name>` in `xml`.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml_unescape(&xml[start..end]))
}

fn parse_messages(xml: &str) -> Vec<QueueMessage> {
    xml.split("<QueueMessage>")
        .skip(1)
        .map(|part| {
            let get = |name| element(part, name).unwrap_or_default();
            QueueMessage {
                id: get("MessageId"),
                pop_receipt: get("PopReceipt"),
                dequeue_count: get("DequeueCount").parse().unwrap_or(0),
                text: get("MessageText"),
                insertion_time: get("InsertionTime"),
                time_next_visible: get("TimeNextVisible"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc1123_in_gmt() {
        let t = OffsetDateTime::from_unix_timestamp(784_111_777).unwrap();
        assert_eq!(rfc1123(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn message_lists_parse_and_unescape() {
        let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessagesList><QueueMessage>\
            <MessageId>m1</MessageId><InsertionTime>Mon, 23 Nov 2026 08:00:00 GMT</InsertionTime>\
            <PopReceipt>p+1/x==</PopReceipt><TimeNextVisible>t</TimeNextVisible>\
            <DequeueCount>3</DequeueCount><MessageText>a &amp; &lt;b&gt; &#x41;</MessageText>\
            </QueueMessage><QueueMessage><MessageId>m2</MessageId><MessageText></MessageText>\
            </QueueMessage></QueueMessagesList>";
        let messages = parse_messages(xml);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].id, "m1");
        assert_eq!(messages[0].pop_receipt, "p+1/x==");
        assert_eq!(messages[0].dequeue_count, 3);
        assert_eq!(messages[0].text, "a & <b> A");
        assert_eq!(messages[1].text, "");
        assert_eq!(xml_unescape(&xml_escape("<&'\">")), "<&'\">");
    }
}
