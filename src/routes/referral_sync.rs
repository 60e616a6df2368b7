//! `POST /ReferralSync`: one queue message → one sync. Transient failures answer non-2xx so
//! the host retries; permanent ones answer 2xx with the message and its reason in `poison`.

use serde_json::{Map, Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    envelope::{InvokeRequest, InvokeResponse, QueueData, QueueTriggerMetadata},
    sync::{Disposition, SyncError, SyncMessage, Syncer, to_partner_center::RecordSync},
};

/// How the host is answered.
#[derive(Debug)]
pub struct SyncAnswer {
    /// `true`: 2xx (done or poisoned); `false`: non-2xx so the message is retried.
    pub success: bool,
    /// The body.
    pub response: InvokeResponse,
}

/// Handles one invocation envelope. `syncer` is `Err` with the reason when the sync is not
/// configured; `max_dequeue_count` is host.json's `maxDequeueCount`.
pub async fn handle(
    syncer: Result<&Syncer, &str>,
    max_dequeue_count: u32,
    envelope: &[u8],
) -> SyncAnswer {
    let request: InvokeRequest<QueueData, QueueTriggerMetadata> =
        match serde_json::from_slice(envelope) {
            Ok(request) => request,
            Err(e) => {
                let raw = String::from_utf8_lossy(envelope)
                    .chars()
                    .take(4096)
                    .collect::<String>();
                return give_up(&raw, &format!("malformed invocation envelope: {e}"));
            }
        };
    let dequeue_count = request
        .metadata
        .as_ref()
        .map_or(1, |m| m.dequeue_count.max(1));
    tracing::Span::current().record("dequeue_count", dequeue_count);
    let text = request.data.msg;
    let result = match SyncMessage::parse(&text) {
        Ok(message) => {
            if let SyncMessage::Referral { referral_id, .. } = &message {
                tracing::Span::current().record("referral_id", referral_id.as_str());
            }
            match (syncer, message) {
                (Err(reason), _) => Err(SyncError::NotConfigured(reason.to_owned())),
                (Ok(syncer), SyncMessage::Referral { referral_id, .. }) => {
                    syncer.sync(&referral_id).await.map(RecordSync::Synced)
                }
                (Ok(syncer), SyncMessage::Record { kind, record_id }) => {
                    syncer.sync_record(kind, &record_id, true).await
                }
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(done) => {
            let line = done.describe();
            tracing::info!(outcome = done.summary(), "{line}");
            SyncAnswer {
                success: true,
                response: InvokeResponse::default().log(line),
            }
        }
        Err(error) => match error.disposition() {
            Disposition::RetryLater(reason) if dequeue_count < max_dequeue_count => {
                tracing::warn!(dequeue_count, error = %reason, "transient failure; the host will retry the message");
                SyncAnswer {
                    success: false,
                    response: InvokeResponse::default()
                        .log(format!("retry later (attempt {dequeue_count}): {reason}")),
                }
            }
            Disposition::RetryLater(reason) => give_up(
                &text,
                &format!("gave up after {dequeue_count} attempts: {reason}"),
            ),
            Disposition::GiveUp(reason) => give_up(&text, &reason),
        },
    }
}

/// The poison entry: the original message's fields (or its text) plus `error` and `failedAt`.
pub fn poison_entry(original: &str, reason: &str, now: OffsetDateTime) -> Value {
    let mut entry = match serde_json::from_str::<Value>(original) {
        Ok(Value::Object(fields)) => fields,
        _ => {
            let mut fields = Map::new();
            fields.insert("originalMessage".into(), Value::from(original));
            fields
        }
    };
    entry.insert("error".into(), Value::from(reason));
    entry.insert(
        "failedAt".into(),
        json!(now.format(&Rfc3339).unwrap_or_default()),
    );
    Value::Object(entry)
}

fn give_up(original: &str, reason: &str) -> SyncAnswer {
    tracing::error!(error = %reason, "permanent failure; message written to referral-sync-poison");
    SyncAnswer {
        success: true,
        response: InvokeResponse::default()
            .output(
                "poison",
                poison_entry(original, reason, OffsetDateTime::now_utc()),
            )
            .log(format!("moved to poison: {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_keeps_the_message_fields_and_adds_the_reason() {
        let now = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let entry = poison_entry(
            r#"{"referralId":"x","eventName":"referral-created"}"#,
            "bad",
            now,
        );
        assert_eq!(
            entry,
            json!({"referralId": "x", "eventName": "referral-created", "error": "bad", "failedAt": "1970-01-01T00:00:00Z"})
        );
        let entry = poison_entry("not json", "malformed", now);
        assert_eq!(entry["originalMessage"], "not json");
    }

    #[tokio::test]
    async fn malformed_messages_go_to_poison_with_a_2xx_answer() {
        let envelope = json!({"Data": {"msg": "\"{\\\"referralId\\\":\\\"nope\\\"}\""}, "Metadata": {"DequeueCount": "1"}});
        let answer = handle(Err("unused"), 5, envelope.to_string().as_bytes()).await;
        assert!(answer.success);
        let poison = &answer.response.outputs["poison"];
        assert_eq!(poison["referralId"], "nope");
        assert!(
            poison["error"]
                .as_str()
                .unwrap()
                .starts_with("malformed message")
        );
    }

    #[tokio::test]
    async fn missing_configuration_is_retried_then_poisoned_on_the_last_attempt() {
        let id = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";
        let envelope = |n: u32| {
            json!({"Data": {"msg": format!("\"{{\\\"referralId\\\":\\\"{id}\\\"}}\"")}, "Metadata": {"DequeueCount": n.to_string()}})
                .to_string()
        };
        let first = handle(Err("DATAVERSE_URL is not set"), 5, envelope(1).as_bytes()).await;
        assert!(!first.success);
        assert!(first.response.outputs.is_empty());
        let last = handle(Err("DATAVERSE_URL is not set"), 5, envelope(5).as_bytes()).await;
        assert!(last.success);
        assert!(
            last.response.outputs["poison"]["error"]
                .as_str()
                .unwrap()
                .contains("gave up after 5 attempts")
        );
    }

    #[tokio::test]
    async fn a_broken_envelope_is_not_lost() {
        let answer = handle(Err("unused"), 5, b"{not json").await;
        assert!(answer.success);
        assert_eq!(
            answer.response.outputs["poison"]["originalMessage"],
            "{not json"
        );
    }
}
