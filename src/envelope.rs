//! The Functions host ↔ custom handler envelopes, with the host's quirks absorbed here:
//! PascalCase keys, header values as arrays, the HTTP body as a string (base64 for binary
//! content types), the queue message double-encoded and `DequeueCount` as a string, the timer
//! as a nested object, a blob input JSON-encoded again (`"null"` when the blob is missing).

use std::{borrow::Cow, collections::HashMap, fmt};

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, de::IgnoredAny};
use serde_json::{Map, Value};

/// `POST /<FunctionName>` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvokeRequest<D, M = IgnoredAny> {
    /// Trigger and input bindings by binding name.
    pub data: D,
    /// Trigger metadata.
    #[serde(default = "Option::default")]
    pub metadata: Option<M>,
}

/// `Data` of the webhook function: the HTTP trigger binding `req`.
#[derive(Debug, Deserialize)]
pub struct WebhookData {
    /// The HTTP request.
    pub req: HttpRequestData,
}

/// An HTTP trigger request as the host forwards it: only what the webhook reads. `Url` and
/// `Query` (which carry the function key) are not even deserialized.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpRequestData {
    /// Headers, looked up case-insensitively.
    #[serde(default)]
    pub headers: HttpHeaders,
    /// The body as a string; absent when the request had no Content-Length.
    #[serde(default)]
    pub body: Option<String>,
}

/// Header names and the body length only: a header value may be the function key
/// (`x-functions-key`) or a signature.
impl fmt::Debug for HttpRequestData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRequestData")
            .field("headers", &self.headers.names())
            .field("body_len", &self.body.as_ref().map(String::len))
            .finish_non_exhaustive()
    }
}

/// Why the body bytes could not be recovered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the binary body is not valid base64")]
pub struct BodyEncodingError;

impl HttpRequestData {
    /// The request body bytes: the string's UTF-8 bytes, or the base64-decoded bytes for
    /// `application/octet-stream` and `multipart/*`, exactly as the host encodes them.
    pub fn body_bytes(&self) -> Result<Cow<'_, [u8]>, BodyEncodingError> {
        let Some(body) = &self.body else {
            return Ok(Cow::Borrowed(&[]));
        };
        let content_type = self
            .headers
            .first("content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("application/octet-stream")
            || content_type.starts_with("multipart/")
        {
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map(Cow::Owned)
                .map_err(|_| BodyEncodingError)
        } else {
            Ok(Cow::Borrowed(body.as_bytes()))
        }
    }
}

/// Request headers (values as arrays, as the host sends them).
#[derive(Debug, Clone, Default)]
pub struct HttpHeaders(Vec<(String, Vec<String>)>);

/// A header that must appear once appeared more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultipleValues;

impl HttpHeaders {
    /// Builds headers from name/value pairs; repeated names add values.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut headers = Self::default();
        for (name, value) in pairs {
            headers.0.push((name, vec![value]));
        }
        headers
    }

    /// All values of a header, any casing.
    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        let name = name.to_owned();
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(&name))
            .flat_map(|(_, values)| values.iter().map(String::as_str))
    }

    /// The first value of a header.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.all(name).next()
    }

    /// The only value of a header; more than one is an error.
    pub fn single(&self, name: &str) -> Result<Option<&str>, MultipleValues> {
        let mut values = self.all(name);
        let first = values.next();
        match values.next() {
            Some(_) => Err(MultipleValues),
            None => Ok(first),
        }
    }

    /// Header names only (for debugging without values).
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

impl<'de> Deserialize<'de> for HttpHeaders {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let map = Map::<String, Value>::deserialize(d)?;
        let mut headers = Vec::with_capacity(map.len());
        for (name, value) in map {
            let values = match serde_json::from_value::<OneOrMany>(value) {
                Ok(OneOrMany::One(v)) => vec![v],
                Ok(OneOrMany::Many(v)) => v,
                Err(_) => {
                    return Err(serde::de::Error::custom(format!(
                        "header {name} is not a string or array of strings"
                    )));
                }
            };
            headers.push((name, values));
        }
        Ok(Self(headers))
    }
}

/// `Data` of the queue function: the trigger binding `msg`.
#[derive(Debug, Deserialize)]
pub struct QueueData {
    /// The message text, decoded from the host's double encoding.
    #[serde(deserialize_with = "decode_queue_message")]
    pub msg: String,
}

/// Queue trigger metadata, with the host's string-typed values parsed.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueueTriggerMetadata {
    /// How many times the message has been dequeued (the host sends a string).
    #[serde(default, deserialize_with = "number_or_string")]
    pub dequeue_count: u32,
}

/// The message text from `Data.msg`: a JSON string whose content is the JSON serialization
/// of the message text (a plain string or an object is tolerated too).
fn decode_queue_message<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(outer) => match serde_json::from_str::<Value>(&outer) {
            Ok(Value::String(inner)) => inner,
            _ => outer,
        },
        other => other.to_string(),
    })
}

fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| serde::de::Error::custom("DequeueCount out of range")),
        Value::String(s) => s
            .trim_matches('"')
            .parse()
            .map_err(|_| serde::de::Error::custom("DequeueCount is not a number")),
        Value::Null => Ok(0),
        _ => Err(serde::de::Error::custom("DequeueCount is not a number")),
    }
}

/// `Data` of a timer function that keeps a watermark blob: binding `timer` (the trigger) and
/// binding `watermark` (the blob input).
#[derive(Debug, Default, Deserialize)]
pub struct TimerData {
    /// The trigger value.
    #[serde(default, deserialize_with = "lenient_timer")]
    pub timer: TimerInfo,
    /// The blob's text; `None` when the blob does not exist yet.
    #[serde(default, deserialize_with = "decode_blob_text")]
    pub watermark: Option<String>,
}

/// What the host says about a timer run; read leniently (dates vary, `ScheduleStatus` may be
/// null), and only informational: the connector keeps its own watermark.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TimerInfo {
    /// A catch-up run after occurrences were missed while the app was down.
    pub is_past_due: bool,
    /// `ScheduleStatus.Last`, as sent.
    pub last: Option<String>,
}

fn lenient_timer<'de, D: Deserializer<'de>>(d: D) -> Result<TimerInfo, D::Error> {
    let value = Value::deserialize(d)?;
    let value = match value {
        Value::String(text) => serde_json::from_str(&text).unwrap_or(Value::Null),
        other => other,
    };
    let is_past_due = match value.get("IsPastDue") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    let last = value
        .pointer("/ScheduleStatus/Last")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(TimerInfo { is_past_due, last })
}

/// A blob input without `dataType`: the text JSON-encoded again, or the string `null` for a
/// missing blob. A value the host did not encode is taken as the text itself.
fn decode_blob_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(outer) => match serde_json::from_str::<Value>(&outer) {
            Ok(Value::Null) => None,
            Ok(Value::String(inner)) => Some(inner),
            _ => Some(outer),
        },
        other => Some(other.to_string()),
    })
}

/// The handler's answer to the host.
#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct InvokeResponse {
    /// Output bindings by exact binding name.
    pub outputs: Map<String, Value>,
    /// Lines the host adds to the invocation log (discarded when the answer is non-2xx).
    pub logs: Vec<String>,
    /// Always null: no `$return` binding.
    pub return_value: Option<Value>,
}

impl InvokeResponse {
    /// Sets an output binding.
    pub fn output(mut self, binding: &str, value: Value) -> Self {
        self.outputs.insert(binding.to_owned(), value);
        self
    }

    /// Adds a log line.
    pub fn log(mut self, line: impl Into<String>) -> Self {
        self.logs.push(line.into());
        self
    }
}

/// The value of an `http` output binding.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpResponseOutput {
    /// Status for the caller.
    pub status_code: u16,
    /// Response headers.
    pub headers: HashMap<&'static str, &'static str>,
    /// JSON text.
    pub body: String,
}

impl HttpResponseOutput {
    /// A JSON response.
    pub fn json(status_code: u16, body: &Value) -> Value {
        let output = Self {
            status_code,
            headers: HashMap::from([("Content-Type", "application/json")]),
            body: body.to_string(),
        };
        serde_json::to_value(output).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/../shared/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn webhook_fixture_parses_with_array_headers_and_string_body() {
        let req: InvokeRequest<WebhookData> =
            serde_json::from_str(&fixture("webhook-invocation.json")).unwrap();
        let r = req.data.req;
        assert_eq!(
            r.headers.single("X-MS-CERTIFICATE-URL").unwrap().unwrap(),
            "https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer"
        );
        assert!(
            r.body_bytes()
                .unwrap()
                .starts_with(b"{\"EventName\":\"referral-created\"")
        );
        assert!(!format!("{r:?}").contains("function-key"));
        let keyed: HttpRequestData = serde_json::from_value(json!({
            "Headers": {"x-functions-key": ["the-function-key"]}, "Body": "{}"
        }))
        .unwrap();
        let debug = format!("{keyed:?}");
        assert!(
            debug.contains("x-functions-key") && !debug.contains("the-function-key"),
            "Debug must not show header values: {debug}"
        );
    }

    #[test]
    fn queue_fixture_is_decoded_twice_and_dequeue_count_is_a_number() {
        let req: InvokeRequest<QueueData, QueueTriggerMetadata> =
            serde_json::from_str(&fixture("queue-invocation.json")).unwrap();
        let message: Value = serde_json::from_str(&req.data.msg).unwrap();
        assert_eq!(
            message["referralId"],
            "c5fbb3b6-be74-4795-9fb5-4324c73fed37"
        );
        let meta = req.metadata.unwrap();
        assert_eq!(meta.dequeue_count, 1);
    }

    #[test]
    fn queue_message_tolerates_single_encoding_and_plain_text() {
        let single: QueueData =
            serde_json::from_value(json!({"msg": "{\"referralId\":\"r\"}"})).unwrap();
        assert_eq!(single.msg, "{\"referralId\":\"r\"}");
        let plain: QueueData = serde_json::from_value(json!({"msg": "hello"})).unwrap();
        assert_eq!(plain.msg, "hello");
        let object: QueueData = serde_json::from_value(json!({"msg": {"a": 1}})).unwrap();
        assert_eq!(object.msg, "{\"a\":1}");
    }

    #[test]
    fn octet_stream_bodies_are_base64_decoded() {
        let r: HttpRequestData = serde_json::from_value(json!({
            "Headers": {"Content-Type": ["application/octet-stream"]}, "Body": "AAEC"
        }))
        .unwrap();
        assert_eq!(r.body_bytes().unwrap().as_ref(), &[0, 1, 2]);
        let bad: HttpRequestData = serde_json::from_value(json!({
            "Headers": {"content-type": "application/octet-stream"}, "Body": "***"
        }))
        .unwrap();
        assert_eq!(bad.body_bytes(), Err(BodyEncodingError));
    }

    #[test]
    fn response_uses_pascal_case_and_http_output_camel_case() {
        let r = InvokeResponse::default()
            .output("res", HttpResponseOutput::json(401, &json!({"error": "x"})))
            .log("line");
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            json!({"Outputs": {"res": {"statusCode": 401, "headers": {"Content-Type": "application/json"}, "body": "{\"error\":\"x\"}"}},
                   "Logs": ["line"], "ReturnValue": null})
        );
    }

    #[test]
    fn timer_envelopes_read_leniently_and_a_missing_blob_is_none() {
        let cases = [
            // The wire shape: nested object, blob text encoded again.
            (
                json!({"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": {"Last": "2026-11-23T07:00:00.0123456+00:00", "Next": "2026-11-23T07:05:00+00:00", "LastUpdated": "2026-11-23T07:00:00+00:00"}, "IsPastDue": false},
                       "watermark": "\"{\\\"cursor\\\":42}\""}),
                false,
                Some("{\"cursor\":42}"),
            ),
            // First run: no schedule status, old-style date without offset, missing blob.
            (
                json!({"timer": {"Schedule": {}, "ScheduleStatus": null, "IsPastDue": true}, "watermark": "null"}),
                true,
                None,
            ),
            (
                json!({"timer": {"ScheduleStatus": {"Last": "0001-01-01T00:00:00"}, "IsPastDue": "True"}}),
                true,
                None,
            ),
            // A timer sent as a string and a blob not encoded twice are tolerated.
            (
                json!({"timer": "{\"IsPastDue\":false}", "watermark": "{\"a\":1}"}),
                false,
                Some("{\"a\":1}"),
            ),
        ];
        for (data, past_due, watermark) in cases {
            let envelope =
                json!({"Data": data, "Metadata": {"sys": {"MethodName": "ReferralReconcile"}}});
            let request: InvokeRequest<TimerData> = serde_json::from_value(envelope.clone())
                .unwrap_or_else(|e| panic!("{envelope}: {e}"));
            assert_eq!(request.data.timer.is_past_due, past_due, "{envelope}");
            assert_eq!(request.data.watermark.as_deref(), watermark, "{envelope}");
        }
    }
}
