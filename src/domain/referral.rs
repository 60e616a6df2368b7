//! A Partner Center referral as read from the referrals API: the fields the sync decides on,
//! typed, plus the whole document for the mapping to read from.

use serde_json::{Map, Value};

use super::referral_id::{ReferralId, ReferralIdError};

/// `ReferralStatus` of Partner Center.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferralStatus {
    /// `None`
    None,
    /// `New`: not yet accepted or declined.
    New,
    /// `Active`: accepted.
    Active,
    /// `Closed`: terminal (Won, Lost, Declined, Expired); never written to.
    Closed,
    /// A value this version does not know; never written to.
    Unknown(String),
}

impl ReferralStatus {
    /// Parses the wire value (case-insensitive).
    pub fn parse(raw: &str) -> Self {
        match raw.to_ascii_lowercase().as_str() {
            "none" | "" => Self::None,
            "new" => Self::New,
            "active" => Self::Active,
            "closed" => Self::Closed,
            _ => Self::Unknown(raw.to_owned()),
        }
    }

    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::None => "None",
            Self::New => "New",
            Self::Active => "Active",
            Self::Closed => "Closed",
            Self::Unknown(s) => s,
        }
    }
}

/// Why a referral document cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferralError {
    /// The document is not a JSON object.
    #[error("the referral is not a JSON object")]
    NotAnObject,
    /// Its `id` is missing or not a GUID.
    #[error("the referral id is missing or invalid: {0}")]
    BadId(ReferralIdError),
}

/// A referral document.
#[derive(Debug, Clone, PartialEq)]
pub struct Referral {
    id: ReferralId,
    status: ReferralStatus,
    e_tag: Option<String>,
    document: Map<String, Value>,
}

impl Referral {
    /// Builds the referral from the API's JSON. `header_etag` is the response's `ETag` header,
    /// used when the body carries no `eTag`.
    pub fn from_json(value: Value, header_etag: Option<&str>) -> Result<Self, ReferralError> {
        let Value::Object(document) = value else {
            return Err(ReferralError::NotAnObject);
        };
        let id = match lookup(&document, "id") {
            Some(Value::String(s)) => ReferralId::parse(s).map_err(ReferralError::BadId)?,
            _ => return Err(ReferralError::BadId(ReferralIdError::Empty)),
        };
        let status = match lookup(&document, "status") {
            Some(Value::String(s)) => ReferralStatus::parse(s),
            _ => ReferralStatus::None,
        };
        let e_tag = match lookup(&document, "etag") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => header_etag.map(str::to_owned),
        };
        Ok(Self {
            id,
            status,
            e_tag,
            document,
        })
    }

    /// The referral id.
    pub fn id(&self) -> &ReferralId {
        &self.id
    }

    /// Its status.
    pub fn status(&self) -> &ReferralStatus {
        &self.status
    }

    /// The concurrency token to send as `If-Match`.
    pub fn e_tag(&self) -> Option<&str> {
        self.e_tag.as_deref()
    }

    /// A top-level string field, looked up case-insensitively (the API's casing drifts).
    pub fn text(&self, name: &str) -> Option<&str> {
        match lookup(&self.document, name) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// `externalReferenceId`, where the lead id is written back.
    pub fn external_reference_id(&self) -> Option<&str> {
        self.text("externalReferenceId").filter(|s| !s.is_empty())
    }

    /// Whether this referral came to the partner (`direction` Incoming or absent).
    pub fn is_incoming(&self) -> bool {
        !self
            .text("direction")
            .is_some_and(|d| d.eq_ignore_ascii_case("outgoing"))
    }

    /// The whole document.
    pub fn document(&self) -> &Map<String, Value> {
        &self.document
    }
}

/// Case-insensitive lookup of an object member (exact match first).
pub fn lookup<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    lookup_entry(object, name).map(|(_, v)| v)
}

/// Like [`lookup`], but also returns the member's name as the document spells it.
pub fn lookup_entry<'a>(
    object: &'a Map<String, Value>,
    name: &str,
) -> Option<(&'a String, &'a Value)> {
    object
        .get_key_value(name)
        .or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ID: &str = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";

    #[test]
    fn reads_status_etag_and_external_reference() {
        let r = Referral::from_json(
            json!({"id": ID, "status": "active", "eTag": "\"7\"", "externalReferenceId": "abc", "direction": "Incoming"}),
            None,
        )
        .unwrap();
        assert_eq!(r.status(), &ReferralStatus::Active);
        assert_eq!(r.e_tag(), Some("\"7\""));
        assert_eq!(r.external_reference_id(), Some("abc"));
        assert!(r.is_incoming());
    }

    #[test]
    fn header_etag_is_used_when_the_body_has_none_and_empty_reference_is_none() {
        let r = Referral::from_json(
            json!({"id": ID, "Status": "Closed", "externalReferenceId": ""}),
            Some("W/\"3\""),
        )
        .unwrap();
        assert_eq!(r.e_tag(), Some("W/\"3\""));
        assert_eq!(r.status(), &ReferralStatus::Closed);
        assert_eq!(r.external_reference_id(), None);
    }

    #[test]
    fn outgoing_referrals_are_not_incoming() {
        let r = Referral::from_json(json!({"id": ID, "direction": "Outgoing"}), None).unwrap();
        assert!(!r.is_incoming());
    }

    #[test]
    fn documents_without_a_valid_id_are_rejected() {
        assert_eq!(
            Referral::from_json(json!([]), None),
            Err(ReferralError::NotAnObject)
        );
        assert!(matches!(
            Referral::from_json(json!({"id": "x"}), None),
            Err(ReferralError::BadId(_))
        ));
        assert!(matches!(
            Referral::from_json(json!({}), None),
            Err(ReferralError::BadId(_))
        ));
    }
}
