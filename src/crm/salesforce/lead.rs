//! The Salesforce `Lead` object: its default field rules and types (lengths from the
//! Salesforce field reference), the fields Salesforce or the connector manages, its Partner
//! Center fields, and how `IsConverted` / `Status` map to the CRM-neutral state.

use serde_json::Value;

use crate::{
    crm::{RecordKind, RecordState},
    mapping::{ColumnKind, ColumnNames, ColumnRule, Direction, PartnerCenterColumns, TableMapping},
};

/// Known Lead fields and their types.
pub const KNOWN_COLUMNS: &[(&str, ColumnKind)] = &[
    ("FirstName", ColumnKind::Text { max: 40 }),
    ("LastName", ColumnKind::Text { max: 80 }),
    ("Company", ColumnKind::Text { max: 255 }),
    ("Title", ColumnKind::Text { max: 128 }),
    ("Email", ColumnKind::Text { max: 80 }),
    ("Phone", ColumnKind::Text { max: 40 }),
    ("MobilePhone", ColumnKind::Text { max: 40 }),
    ("Website", ColumnKind::Text { max: 255 }),
    ("Street", ColumnKind::Text { max: 255 }),
    ("City", ColumnKind::Text { max: 40 }),
    ("State", ColumnKind::Text { max: 80 }),
    ("PostalCode", ColumnKind::Text { max: 20 }),
    ("Country", ColumnKind::Text { max: 80 }),
    ("Description", ColumnKind::Text { max: 32_000 }),
    ("LeadSource", ColumnKind::Text { max: 255 }),
    ("Industry", ColumnKind::Text { max: 255 }),
    ("AnnualRevenue", ColumnKind::Money),
    ("NumberOfEmployees", ColumnKind::Integer),
    (super::LINK_FIELD, ColumnKind::Text { max: 255 }),
    (super::STATUS_FIELD, ColumnKind::Text { max: 255 }),
    (super::AUDIT_FIELD, ColumnKind::Text { max: 32_768 }),
];

/// Lead fields Salesforce or the connector manages.
pub const PROTECTED: &[&str] = &[
    "Id",
    "IsConverted",
    "ConvertedOpportunityId",
    "ConvertedAccountId",
    "ConvertedContactId",
    "ConvertedDate",
    "Status",
    "SystemModstamp",
    "LastModifiedDate",
    "CreatedDate",
    "OwnerId",
    super::KEY_FIELD,
];

/// The default Lead mapping (README "Salesforce").
pub fn mapping() -> TableMapping {
    use Direction::PcToCrm;
    let mut table = TableMapping {
        kind: RecordKind::Lead,
        rules: Vec::new(),
        known: KNOWN_COLUMNS,
        protected: PROTECTED,
        names: ColumnNames::Api,
        partner_center: PartnerCenterColumns {
            link: Some(super::LINK_FIELD.into()),
            status: Some(super::STATUS_FIELD.into()),
            audit: Some(super::AUDIT_FIELD.into()),
            ..PartnerCenterColumns::default()
        },
    }
    .with_rules(&[
        ("Company", &["customerProfile.name"], PcToCrm),
        ("FirstName", &["customerProfile.team[0].firstName"], PcToCrm),
        (
            "LastName",
            &["customerProfile.team[0].lastName", "customerProfile.name"],
            PcToCrm,
        ),
        ("Email", &["customerProfile.team[0].email"], PcToCrm),
        ("Phone", &["customerProfile.team[0].phoneNumber"], PcToCrm),
        ("Street", &["customerProfile.address.addressLine1"], PcToCrm),
        ("City", &["customerProfile.address.city"], PcToCrm),
        ("State", &["customerProfile.address.state"], PcToCrm),
        (
            "PostalCode",
            &["customerProfile.address.postalCode"],
            PcToCrm,
        ),
        ("Country", &["customerProfile.address.country"], PcToCrm),
        ("Description", &["details.notes"], PcToCrm),
    ]);
    table.rules.push(ColumnRule::constant(
        "LeadSource",
        Value::from("Partner"),
        Direction::OnCreate,
        ColumnKind::Text { max: 255 },
    ));
    table
}

/// A Lead's state: converted (with the opportunity it became), closed without conversion
/// (lost, with the status as the reason), or open.
pub fn state(is_converted: bool, opportunity: Option<String>, status: Option<&str>) -> RecordState {
    if is_converted {
        return RecordState::Converted { opportunity };
    }
    match status {
        Some(status) if status.trim().to_ascii_lowercase().starts_with("closed") => {
            RecordState::Lost {
                reason: status.trim().to_owned(),
            }
        }
        _ => RecordState::Open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_table() {
        let cases = [
            (false, None, Some("Open - Not Contacted"), RecordState::Open),
            (false, None, Some("Working - Contacted"), RecordState::Open),
            (false, None, None, RecordState::Open),
            (
                true,
                Some("006A".to_owned()),
                Some("Closed - Converted"),
                RecordState::Converted {
                    opportunity: Some("006A".into()),
                },
            ),
            (
                true,
                None,
                Some("Closed - Converted"),
                RecordState::Converted { opportunity: None },
            ),
            (
                false,
                None,
                Some("Closed - Not Converted"),
                RecordState::Lost {
                    reason: "Closed - Not Converted".into(),
                },
            ),
        ];
        for (converted, opportunity, status, expected) in cases {
            assert_eq!(
                state(converted, opportunity.clone(), status),
                expected,
                "{converted}/{opportunity:?}/{status:?}"
            );
        }
    }

    #[test]
    fn the_default_mapping_fills_the_required_fields() {
        let table = mapping();
        let columns: Vec<&str> = table.rules().iter().map(|r| r.column.as_str()).collect();
        for required in ["Company", "LastName"] {
            assert!(columns.contains(&required), "{required}");
        }
        assert!(!columns.contains(&super::super::KEY_FIELD));
    }
}
