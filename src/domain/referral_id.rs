//! `ReferralId`: a Partner Center referral id, which is always a GUID.

use std::fmt;

/// A referral id in canonical form (lowercase, hyphenated GUID).
///
/// Only GUIDs are accepted, so the value is safe inside URLs, OData key literals and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReferralId(String);

/// Why a string is not a referral id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferralIdError {
    /// Nothing was given.
    #[error("the referral id is empty")]
    Empty,
    /// Not of the form 8-4-4-4-12 hexadecimal digits.
    #[error("the referral id is not a GUID (8-4-4-4-12 hexadecimal digits)")]
    NotAGuid,
}

impl ReferralId {
    /// Parses a GUID in the hyphenated 8-4-4-4-12 form, in either case.
    pub fn parse(raw: &str) -> Result<Self, ReferralIdError> {
        if raw.is_empty() {
            return Err(ReferralIdError::Empty);
        }
        let bytes = raw.as_bytes();
        if bytes.len() != 36 {
            return Err(ReferralIdError::NotAGuid);
        }
        for (i, b) in bytes.iter().enumerate() {
            let ok = match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            };
            if !ok {
                return Err(ReferralIdError::NotAGuid);
            }
        }
        Ok(Self(raw.to_ascii_lowercase()))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReferralId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for ReferralId {
    type Error = ReferralIdError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl serde::Serialize for ReferralId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ReferralId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_a_guid_and_lowercases_it() {
        let id = ReferralId::parse("C5FBB3B6-BE74-4795-9FB5-4324C73FED37").unwrap();
        assert_eq!(id.as_str(), "c5fbb3b6-be74-4795-9fb5-4324c73fed37");
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(ReferralId::parse(""), Err(ReferralIdError::Empty));
    }

    #[test]
    fn rejects_wrong_length_braces_and_missing_hyphens() {
        for bad in [
            "c5fbb3b6-be74-4795-9fb5-4324c73fed3",
            "{c5fbb3b6-be74-4795-9fb5-4324c73fed37}",
            "c5fbb3b6be7447959fb54324c73fed37",
            "c5fbb3b6_be74-4795-9fb5-4324c73fed37",
        ] {
            assert_eq!(
                ReferralId::parse(bad),
                Err(ReferralIdError::NotAGuid),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_characters_that_would_break_urls_or_odata_keys() {
        for bad in [
            "c5fbb3b6-be74-4795-9fb5-4324c73fed3'",
            "c5fbb3b6-be74-4795-9fb5-4324c73fed/.",
            "g5fbb3b6-be74-4795-9fb5-4324c73fed37",
            "c5fbb3b6-be74-4795-9fb5-4324c73fé3",
        ] {
            assert!(ReferralId::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_uuid_round_trips(bytes in any::<[u8; 16]>()) {
            let text = uuid::Uuid::from_bytes(bytes).hyphenated().to_string().to_uppercase();
            let id = ReferralId::parse(&text).unwrap();
            prop_assert_eq!(id.as_str(), text.to_lowercase());
        }

        #[test]
        fn parsed_ids_only_hold_hex_and_hyphens(s in "\\PC{0,40}") {
            if let Ok(id) = ReferralId::parse(&s) {
                prop_assert!(id.as_str().chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
                prop_assert_eq!(id.as_str().len(), 36);
            }
        }
    }
}
