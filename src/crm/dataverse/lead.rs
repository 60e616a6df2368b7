//! The Dataverse `lead` table: its default column rules and types, the columns the connector
//! manages, the Partner Center columns it carries, and how `statecode`/`statuscode` map to
//! the CRM-neutral state.

use serde_json::Value;

use crate::{
    crm::{RecordKind, RecordState},
    mapping::{ColumnKind, ColumnNames, ColumnRule, Direction, PartnerCenterColumns, TableMapping},
};

/// Known lead columns and their types (lengths from the lead table reference).
pub const KNOWN_COLUMNS: &[(&str, ColumnKind)] = &[
    ("subject", ColumnKind::Text { max: 300 }),
    ("firstname", ColumnKind::Text { max: 50 }),
    ("lastname", ColumnKind::Text { max: 50 }),
    ("telephone1", ColumnKind::Text { max: 50 }),
    ("telephone2", ColumnKind::Text { max: 50 }),
    ("address1_stateorprovince", ColumnKind::Text { max: 50 }),
    ("companyname", ColumnKind::Text { max: 100 }),
    ("emailaddress1", ColumnKind::Text { max: 100 }),
    ("jobtitle", ColumnKind::Text { max: 100 }),
    ("websiteurl", ColumnKind::Text { max: 100 }),
    ("mobilephone", ColumnKind::Text { max: 20 }),
    ("address1_postalcode", ColumnKind::Text { max: 20 }),
    ("address1_line1", ColumnKind::Text { max: 250 }),
    ("address1_line2", ColumnKind::Text { max: 250 }),
    ("address1_line3", ColumnKind::Text { max: 250 }),
    ("address1_city", ColumnKind::Text { max: 80 }),
    ("address1_country", ColumnKind::Text { max: 80 }),
    ("description", ColumnKind::Text { max: 2000 }),
    ("estimatedamount", ColumnKind::Money),
    ("budgetamount", ColumnKind::Money),
    ("revenue", ColumnKind::Money),
    ("estimatedvalue", ColumnKind::Number),
    ("estimatedclosedate", ColumnKind::Date),
    ("leadsourcecode", ColumnKind::Integer),
    ("leadqualitycode", ColumnKind::Integer),
    ("numberofemployees", ColumnKind::Integer),
    ("industrycode", ColumnKind::Integer),
    ("preferredcontactmethodcode", ColumnKind::Integer),
];

/// Lead columns the connector or Dataverse manages.
pub const PROTECTED: &[&str] = &[
    "leadid",
    "statecode",
    "statuscode",
    "fullname",
    "versionnumber",
    "qualifyingopportunityid",
];

/// The default lead mapping (README "Mapping").
pub fn mapping() -> TableMapping {
    use Direction::PcToCrm;
    let mut table = TableMapping {
        kind: RecordKind::Lead,
        rules: Vec::new(),
        known: KNOWN_COLUMNS,
        protected: PROTECTED,
        names: ColumnNames::Logical,
        partner_center: PartnerCenterColumns {
            link: Some(super::LINK_COLUMN.into()),
            status: Some(super::STATUS_COLUMN.into()),
            audit: Some(super::AUDIT_COLUMN.into()),
            ..PartnerCenterColumns::default()
        },
    }
    .with_rules(&[
        ("subject", &["name", "customerProfile.name"], PcToCrm),
        ("companyname", &["customerProfile.name"], PcToCrm),
        ("firstname", &["customerProfile.team[0].firstName"], PcToCrm),
        (
            "lastname",
            &["customerProfile.team[0].lastName", "customerProfile.name"],
            PcToCrm,
        ),
        ("emailaddress1", &["customerProfile.team[0].email"], PcToCrm),
        (
            "telephone1",
            &["customerProfile.team[0].phoneNumber"],
            PcToCrm,
        ),
        (
            "address1_line1",
            &["customerProfile.address.addressLine1"],
            PcToCrm,
        ),
        (
            "address1_line2",
            &["customerProfile.address.addressLine2"],
            PcToCrm,
        ),
        ("address1_city", &["customerProfile.address.city"], PcToCrm),
        (
            "address1_stateorprovince",
            &["customerProfile.address.state"],
            PcToCrm,
        ),
        (
            "address1_postalcode",
            &["customerProfile.address.postalCode"],
            PcToCrm,
        ),
        (
            "address1_country",
            &["customerProfile.address.country"],
            PcToCrm,
        ),
        ("description", &["details.notes"], PcToCrm),
        ("estimatedamount", &["details.dealValue"], PcToCrm),
        ("estimatedclosedate", &["details.closingDateTime"], PcToCrm),
    ]);
    table.rules.push(ColumnRule::constant(
        "leadsourcecode",
        Value::from(4),
        Direction::OnCreate,
        ColumnKind::Integer,
    ));
    table
}

/// Lead `statecode` (0 Open, 1 Qualified, 2 Disqualified) → the neutral state;
/// `opportunity` is `qualifyingopportunityid`.
pub fn state(statecode: i64, statuscode: Option<i64>, opportunity: Option<String>) -> RecordState {
    match statecode {
        0 => RecordState::Open,
        1 => RecordState::Converted { opportunity },
        2 => RecordState::Lost {
            reason: disqualify_reason(statuscode),
        },
        other => RecordState::Other(format!("statecode {other}")),
    }
}

/// The reason text a disqualified lead's `statuscode` stands for.
pub fn disqualify_reason(statuscode: Option<i64>) -> String {
    match statuscode {
        Some(4) => "Lost".to_owned(),
        Some(5) => "Cannot Contact".to_owned(),
        Some(6) => "No Longer Interested".to_owned(),
        Some(7) => "Canceled".to_owned(),
        Some(other) => format!("Disqualified in Dynamics 365 (status reason {other})"),
        None => "Disqualified in Dynamics 365".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_table() {
        let cases = [
            (0, Some(1), None, RecordState::Open),
            (
                1,
                Some(3),
                Some("o1".to_owned()),
                RecordState::Converted {
                    opportunity: Some("o1".into()),
                },
            ),
            (
                2,
                Some(6),
                None,
                RecordState::Lost {
                    reason: "No Longer Interested".into(),
                },
            ),
            (
                2,
                Some(99),
                None,
                RecordState::Lost {
                    reason: "Disqualified in Dynamics 365 (status reason 99)".into(),
                },
            ),
            (7, None, None, RecordState::Other("statecode 7".into())),
        ];
        for (code, status, opportunity, expected) in cases {
            assert_eq!(
                state(code, status, opportunity),
                expected,
                "{code}/{status:?}"
            );
        }
    }
}
