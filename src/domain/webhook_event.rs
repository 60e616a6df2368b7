//! The body of a Partner Center callback, parsed only after its signature verified.

use serde_json::{Map, Value};

use super::referral_id::{ReferralId, ReferralIdError};

/// Event names the connector knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventName {
    /// `referral-created`
    ReferralCreated,
    /// `referral-updated`
    ReferralUpdated,
    /// `related-referral-created`
    RelatedReferralCreated,
    /// `related-referral-updated`
    RelatedReferralUpdated,
    /// `test-created` (the self-service validation event)
    TestCreated,
    /// Any other event: acknowledged, never enqueued.
    Other(String),
}

impl EventName {
    /// Parses an event name (ASCII case-insensitive).
    pub fn parse(raw: &str) -> Self {
        match raw.to_ascii_lowercase().as_str() {
            "referral-created" => Self::ReferralCreated,
            "referral-updated" => Self::ReferralUpdated,
            "related-referral-created" => Self::RelatedReferralCreated,
            "related-referral-updated" => Self::RelatedReferralUpdated,
            "test-created" => Self::TestCreated,
            _ => Self::Other(raw.chars().take(100).collect()),
        }
    }

    /// The wire name.
    pub const fn as_str(&self) -> &str {
        match self {
            Self::ReferralCreated => "referral-created",
            Self::ReferralUpdated => "referral-updated",
            Self::RelatedReferralCreated => "related-referral-created",
            Self::RelatedReferralUpdated => "related-referral-updated",
            Self::TestCreated => "test-created",
            Self::Other(name) => name.as_str(),
        }
    }

    /// The events that ask for the referral to be synced.
    pub const REFERRAL: [EventName; 4] = [
        Self::ReferralCreated,
        Self::ReferralUpdated,
        Self::RelatedReferralCreated,
        Self::RelatedReferralUpdated,
    ];

    /// Whether this event asks for the referral to be synced.
    pub fn is_referral_event(&self) -> bool {
        Self::REFERRAL.contains(self)
    }

    /// The referral events a registration subscribes to, plus `test-created`.
    pub const SUBSCRIBED: [&'static str; 5] = [
        Self::REFERRAL[0].as_str(),
        Self::REFERRAL[1].as_str(),
        Self::REFERRAL[2].as_str(),
        Self::REFERRAL[3].as_str(),
        Self::TestCreated.as_str(),
    ];
}

/// A verified callback, reduced to what the connector acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// A referral changed: sync it.
    Referral {
        /// Which referral event.
        name: EventName,
        /// The referral, from the last path segment of `ResourceUri`.
        referral_id: ReferralId,
        /// `ResourceChangeUtcDate` as sent, if it was a string.
        resource_change_utc_date: Option<String>,
    },
    /// Acknowledged and not enqueued (`test-created` and unknown events).
    Ignored {
        /// The event name as sent (truncated).
        name: EventName,
    },
}

/// Why an authenticated body is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body is not JSON (a leading byte-order mark counts as not JSON).
    #[error("the body is not valid JSON")]
    NotJson,
    /// The JSON is not an object.
    #[error("the body is not a JSON object")]
    NotAnObject,
    /// The same property appears twice with different case.
    #[error("property {0} appears more than once")]
    DuplicateProperty(String),
    /// `EventName` is missing or not a string.
    #[error("EventName is missing or not a string")]
    MissingEventName,
    /// `ResourceUri` is missing or not a string.
    #[error("ResourceUri is missing or not a string")]
    MissingResourceUri,
    /// `ResourceUri` is not an absolute URL with a last path segment.
    #[error("ResourceUri is not a URL ending in a referral id")]
    BadResourceUri,
    /// The last path segment of `ResourceUri` is not a GUID.
    #[error("ResourceUri does not end in a referral id: {0}")]
    BadReferralId(ReferralIdError),
}

impl WebhookEvent {
    /// Parses the exact body bytes; keys are matched case-insensitively.
    pub fn parse(body: &[u8]) -> Result<Self, EventError> {
        let value: Value = serde_json::from_slice(body).map_err(|_| EventError::NotJson)?;
        let Value::Object(object) = value else {
            return Err(EventError::NotAnObject);
        };
        let fields = CaseInsensitive::new(&object)?;
        let name = match fields.get("eventname") {
            Some(Value::String(s)) if !s.is_empty() => EventName::parse(s),
            _ => return Err(EventError::MissingEventName),
        };
        if !name.is_referral_event() {
            return Ok(Self::Ignored { name });
        }
        let uri = match fields.get("resourceuri") {
            Some(Value::String(s)) => s,
            _ => return Err(EventError::MissingResourceUri),
        };
        let referral_id = referral_id_from_uri(uri)?;
        let resource_change_utc_date = match fields.get("resourcechangeutcdate") {
            Some(Value::String(s)) => Some(s.chars().take(64).collect()),
            _ => None,
        };
        Ok(Self::Referral {
            name,
            referral_id,
            resource_change_utc_date,
        })
    }
}

/// The referral id is the last path segment of `ResourceUri`; the URI is never dereferenced.
fn referral_id_from_uri(uri: &str) -> Result<ReferralId, EventError> {
    let url = url::Url::parse(uri).map_err(|_| EventError::BadResourceUri)?;
    let last = url
        .path_segments()
        .and_then(|mut segments| segments.next_back())
        .filter(|s| !s.is_empty())
        .ok_or(EventError::BadResourceUri)?;
    ReferralId::parse(last).map_err(EventError::BadReferralId)
}

struct CaseInsensitive<'a>(Vec<(String, &'a Value)>);

impl<'a> CaseInsensitive<'a> {
    fn new(object: &'a Map<String, Value>) -> Result<Self, EventError> {
        let mut fields: Vec<(String, &Value)> = Vec::with_capacity(object.len());
        for (key, value) in object {
            let lower = key.to_ascii_lowercase();
            if fields.iter().any(|(k, _)| *k == lower) {
                return Err(EventError::DuplicateProperty(
                    key.chars().take(50).collect(),
                ));
            }
            fields.push((lower, value));
        }
        Ok(Self(fields))
    }

    fn get(&self, lower: &str) -> Option<&'a Value> {
        self.0.iter().find(|(k, _)| k == lower).map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";

    fn body(name: &str, uri: &str) -> Vec<u8> {
        format!(
            r#"{{"EventName":"{name}","ResourceUri":"{uri}","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2026-11-20T10:15:30.1234567+00:00"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn referral_events_yield_the_id_from_the_last_segment() {
        for name in [
            "referral-created",
            "referral-updated",
            "related-referral-created",
            "related-referral-updated",
        ] {
            let uri =
                format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{ID}");
            match WebhookEvent::parse(&body(name, &uri)).unwrap() {
                WebhookEvent::Referral {
                    name: n,
                    referral_id,
                    resource_change_utc_date,
                } => {
                    assert_eq!(n.as_str(), name);
                    assert_eq!(referral_id.as_str(), ID);
                    assert_eq!(
                        resource_change_utc_date.as_deref(),
                        Some("2026-11-20T10:15:30.1234567+00:00")
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn keys_are_case_insensitive() {
        let b = format!(
            r#"{{"eventName":"referral-updated","resourceUri":"https://x.test/referrals/{ID}"}}"#
        );
        assert!(matches!(
            WebhookEvent::parse(b.as_bytes()),
            Ok(WebhookEvent::Referral { .. })
        ));
    }

    #[test]
    fn same_key_twice_in_different_case_is_rejected() {
        let b = format!(
            r#"{{"EventName":"test-created","eventName":"referral-created","ResourceUri":"https://x.test/referrals/{ID}"}}"#
        );
        assert!(matches!(
            WebhookEvent::parse(b.as_bytes()),
            Err(EventError::DuplicateProperty(_))
        ));
    }

    #[test]
    fn test_and_unknown_events_are_ignored() {
        let t = body(
            "test-created",
            "http://localhost:16722/v1/webhooks/registration/test",
        );
        assert_eq!(
            WebhookEvent::parse(&t).unwrap(),
            WebhookEvent::Ignored {
                name: EventName::TestCreated
            }
        );
        let u = body("invoice-ready", "https://x.test/invoices/1");
        assert_eq!(
            WebhookEvent::parse(&u).unwrap(),
            WebhookEvent::Ignored {
                name: EventName::Other("invoice-ready".into())
            }
        );
    }

    #[test]
    fn malformed_bodies_are_rejected_with_a_reason() {
        let bom = [
            b"\xEF\xBB\xBF".as_slice(),
            &body("referral-created", &format!("https://x.test/{ID}")),
        ]
        .concat();
        let cases: Vec<(Vec<u8>, EventError)> = vec![
            (b"".to_vec(), EventError::NotJson),
            (bom, EventError::NotJson),
            (b"[1]".to_vec(), EventError::NotAnObject),
            (
                br#"{"ResourceUri":"x"}"#.to_vec(),
                EventError::MissingEventName,
            ),
            (
                br#"{"EventName":42}"#.to_vec(),
                EventError::MissingEventName,
            ),
            (
                br#"{"EventName":"referral-created"}"#.to_vec(),
                EventError::MissingResourceUri,
            ),
            (
                body("referral-created", "not a url"),
                EventError::BadResourceUri,
            ),
            (
                body("referral-created", "https://x.test/referrals/"),
                EventError::BadResourceUri,
            ),
            (
                body("referral-created", "https://x.test/referrals/12345"),
                EventError::BadReferralId(ReferralIdError::NotAGuid),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                WebhookEvent::parse(&input),
                Err(expected),
                "{}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn query_and_fragment_do_not_hide_the_id() {
        let uri = format!("https://x.test/referrals/{ID}?evil=1#frag");
        assert!(matches!(
            WebhookEvent::parse(&body("referral-updated", &uri)),
            Ok(WebhookEvent::Referral { .. })
        ));
    }
}
