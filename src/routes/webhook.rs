//! `POST /ReferralWebhook`: authenticate the Partner Center callback, then enqueue the
//! referral id through the `syncQueue` output binding. The caller's answer goes in `res`.

use serde::Serialize;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    domain::{EventError, WebhookEvent},
    envelope::{HttpResponseOutput, InvokeRequest, InvokeResponse, WebhookData},
    webhook_auth::{self, CertSource, WebhookAuthError},
};

/// The `syncQueue` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueMessage {
    /// Referral to sync.
    pub referral_id: String,
    /// Event that caused it.
    pub event_name: String,
    /// `ResourceChangeUtcDate` of the callback, if any.
    pub resource_change_utc_date: Option<String>,
    /// When the callback was received (RFC 3339 UTC).
    pub received_at: String,
}

/// What an authenticated callback led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Enqueued for sync.
    Queued(QueueMessage),
    /// Acknowledged, not enqueued.
    Ignored(String),
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The host's envelope is not what the host sends.
    #[error("the invocation envelope is malformed: {0}")]
    Envelope(String),
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] WebhookAuthError),
    /// The authenticated body is not a valid event.
    #[error("the event is invalid: {0}")]
    Event(#[from] EventError),
}

impl WebhookError {
    /// The one decision of the caller's status: 413 for a body over the limit, 415 for a
    /// compressed body, 401 for any other authentication failure, 400 malformed.
    pub fn status(&self) -> u16 {
        match self {
            Self::Auth(WebhookAuthError::BodyTooLarge) => 413,
            Self::Auth(WebhookAuthError::ContentEncoding) => 415,
            Self::Auth(_) => 401,
            Self::Envelope(_) | Self::Event(_) => 400,
        }
    }

    /// The short reason for the caller: no internals.
    pub fn public_reason(&self) -> String {
        match self {
            Self::Auth(e) => e.public_reason().to_owned(),
            Self::Envelope(_) => "malformed request".to_owned(),
            Self::Event(e) => e.to_string(),
        }
    }

    /// The body for the caller.
    pub fn public_body(&self) -> Value {
        let error = match self.status() {
            413 => "payload_too_large",
            415 => "unsupported_media_type",
            401 => "unauthorized",
            _ => "bad_request",
        };
        json!({"error": error, "reason": self.public_reason()})
    }
}

/// Authenticates and interprets one invocation envelope.
pub async fn process(
    certs: &CertSource,
    envelope: &[u8],
    now: OffsetDateTime,
) -> Result<Accepted, WebhookError> {
    let request: InvokeRequest<WebhookData> =
        serde_json::from_slice(envelope).map_err(|e| WebhookError::Envelope(e.to_string()))?;
    let req = request.data.req;
    let body = req
        .body_bytes()
        .map_err(|e| WebhookError::Envelope(e.to_string()))?;
    let verified =
        webhook_auth::authenticate(certs, &req.headers, &body, now.unix_timestamp()).await?;
    tracing::debug!(
        certificate.subject = verified.certificate_subject(),
        "signature verified"
    );
    match WebhookEvent::parse(verified.body())? {
        WebhookEvent::Referral {
            name,
            referral_id,
            resource_change_utc_date,
        } => {
            tracing::Span::current().record("referral_id", referral_id.as_str());
            Ok(Accepted::Queued(QueueMessage {
                referral_id: referral_id.to_string(),
                event_name: name.as_str().to_owned(),
                resource_change_utc_date,
                received_at: now.format(&Rfc3339).unwrap_or_default(),
            }))
        }
        WebhookEvent::Ignored { name } => Ok(Accepted::Ignored(name.as_str().to_owned())),
    }
}

/// Turns the outcome into the host answer: always `res`, and `syncQueue` only when queued.
pub fn respond(outcome: &Result<Accepted, WebhookError>) -> InvokeResponse {
    match outcome {
        Ok(Accepted::Queued(message)) => {
            tracing::info!(event = %message.event_name, "callback authenticated; referral queued");
            InvokeResponse::default()
                .output(
                    "res",
                    HttpResponseOutput::json(
                        200,
                        &json!({"status": "queued", "referralId": message.referral_id}),
                    ),
                )
                .output(
                    "syncQueue",
                    serde_json::to_value(message).unwrap_or(Value::Null),
                )
                .log(format!(
                    "queued referral {} ({})",
                    message.referral_id, message.event_name
                ))
        }
        Ok(Accepted::Ignored(event)) => {
            tracing::info!(event = %event, "callback authenticated; event ignored");
            InvokeResponse::default()
                .output(
                    "res",
                    HttpResponseOutput::json(200, &json!({"status": "ignored", "event": event})),
                )
                .log(format!("ignored event {event}"))
        }
        Err(error) => {
            tracing::warn!(status = error.status(), error = %error, "callback refused");
            InvokeResponse::default()
                .output(
                    "res",
                    HttpResponseOutput::json(error.status(), &error.public_body()),
                )
                .log(format!(
                    "refused callback ({}): {}",
                    error.status(),
                    error.public_reason()
                ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_error_table() {
        let cases = [
            (
                WebhookError::Auth(WebhookAuthError::BodyTooLarge),
                413,
                "payload_too_large",
            ),
            (
                WebhookError::Auth(WebhookAuthError::ContentEncoding),
                415,
                "unsupported_media_type",
            ),
            (
                WebhookError::Auth(WebhookAuthError::EmptyBody),
                401,
                "unauthorized",
            ),
            (
                WebhookError::Auth(WebhookAuthError::BadSignature),
                401,
                "unauthorized",
            ),
            (WebhookError::Envelope("x".into()), 400, "bad_request"),
            (WebhookError::Event(EventError::NotJson), 400, "bad_request"),
        ];
        for (error, status, label) in cases {
            assert_eq!(error.status(), status, "{error}");
            assert_eq!(error.public_body()["error"], label, "{error}");
        }
    }
}
