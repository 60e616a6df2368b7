//! What the Functions host hands the handler for a Partner Center callback: the callback body
//! and the HTTP-trigger invocation envelope wrapping it, shaped exactly like the host's.

use serde_json::{Value, json};

/// The referral id used across tests and benchmarks.
pub const REFERRAL_ID: &str = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";

/// A compact Partner Center callback body for `event` about referral `referral_id`.
pub fn callback_body(event: &str, referral_id: &str) -> String {
    format!(
        r#"{{"EventName":"{event}","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/{referral_id}","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2026-11-20T10:15:30.1234567+00:00"}}"#
    )
}

/// An HTTP trigger envelope with the host's shapes: header arrays (a repeated name adds a
/// value), the body as a string (absent when `None`). `Content-Type` and `Host` are always
/// sent; `headers` come after them.
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

/// A timer-trigger envelope as the host sends it for a function with a watermark blob: the
/// `TimerInfo` as a nested object, the blob's text JSON-encoded again, or the string `null`
/// when the blob does not exist yet; `Metadata` holds only `sys`.
pub fn timer_envelope(function: &str, watermark: Option<&str>) -> Vec<u8> {
    let blob = match watermark {
        Some(text) => Value::String(serde_json::to_string(text).expect("encode")),
        None => json!("null"),
    };
    json!({
        "Data": {
            "timer": {
                "Schedule": {"AdjustForDST": true},
                "ScheduleStatus": {"Last": "2026-12-01T03:30:00.0123456+00:00",
                                   "Next": "2026-12-02T03:30:00+00:00",
                                   "LastUpdated": "2026-12-01T03:30:00.0123456+00:00"},
                "IsPastDue": false
            },
            "watermark": blob
        },
        "Metadata": {"sys": {"MethodName": function, "UtcNow": "2026-12-02T03:30:00.0156789Z",
                             "RandGuid": "0f6c4c2e-3f4e-4a53-9d53-2b1f8f5d6a7b"}}
    })
    .to_string()
    .into_bytes()
}
