//! The Dataverse `opportunity` table: its default column rules and types, the columns the
//! connector manages, its Partner Center columns, and how `statecode`/`statuscode` map to the
//! CRM-neutral state. The customer account and the currency are lookups the adapter resolves
//! when it creates an opportunity (`super::DataverseCrm::prepare_create`).

use crate::{
    crm::{RecordKind, RecordState},
    mapping::{ColumnKind, ColumnNames, Direction, PartnerCenterColumns, TableMapping},
};

/// Known opportunity columns and their types (../shared/spec/dataverse-opportunity.md §1).
pub const KNOWN_COLUMNS: &[(&str, ColumnKind)] = &[
    ("name", ColumnKind::Text { max: 300 }),
    ("description", ColumnKind::Text { max: 2000 }),
    ("estimatedvalue", ColumnKind::Money),
    ("actualvalue", ColumnKind::Money),
    ("budgetamount", ColumnKind::Money),
    ("estimatedclosedate", ColumnKind::Date),
    ("actualclosedate", ColumnKind::Date),
    ("closeprobability", ColumnKind::Integer),
    ("msdyn_forecastcategory", ColumnKind::Integer),
    ("new_microsofthelp", ColumnKind::Integer),
    ("new_syncwithpartnercenter", ColumnKind::Boolean),
];

/// Opportunity columns the connector or Dataverse manages (lookups are set by the adapter).
pub const PROTECTED: &[&str] = &[
    "opportunityid",
    "statecode",
    "statuscode",
    "versionnumber",
    "customerid",
    "transactioncurrencyid",
    "originatingleadid",
    "estimatedvalue_base",
    "exchangerate",
];

/// The default opportunity mapping: all on create; afterwards the seller owns the columns, and
/// the value and the close date flow back to the referral.
pub fn mapping() -> TableMapping {
    use Direction::{CrmOwned, OnCreate};
    TableMapping {
        kind: RecordKind::Opportunity,
        rules: Vec::new(),
        known: KNOWN_COLUMNS,
        protected: PROTECTED,
        names: ColumnNames::Logical,
        partner_center: PartnerCenterColumns {
            link: Some(super::LINK_COLUMN.into()),
            sync: Some(super::SYNC_COLUMN.into()),
            help: Some(super::HELP_COLUMN.into()),
            solutions: Some(super::SOLUTIONS_COLUMN.into()),
            status: Some(super::STATUS_COLUMN.into()),
            audit: Some(super::AUDIT_COLUMN.into()),
        },
    }
    .with_rules(&[
        ("name", &["name", "customerProfile.name"], OnCreate),
        ("estimatedvalue", &["details.dealValue"], CrmOwned),
        ("estimatedclosedate", &["details.closingDateTime"], CrmOwned),
        ("description", &["details.notes"], OnCreate),
    ])
}

/// Opportunity `statecode` (0 Open, 1 Won, 2 Lost) → the neutral state.
pub fn state(statecode: i64, statuscode: Option<i64>) -> RecordState {
    match statecode {
        0 => RecordState::Open,
        1 => RecordState::Won,
        2 => RecordState::Lost {
            reason: match statuscode {
                Some(4) => "Canceled".to_owned(),
                Some(5) => "Out-Sold".to_owned(),
                Some(other) => format!("Lost in Dynamics 365 (status reason {other})"),
                None => "Lost in Dynamics 365".to_owned(),
            },
        },
        other => RecordState::Other(format!("statecode {other}")),
    }
}

/// `statuscode` of the close actions: Won 3; Lost as Canceled 4.
pub const WON_STATUS: i64 = 3;
/// `statuscode` for a referral lost, declined or expired in Partner Center.
pub const LOST_STATUS: i64 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_table() {
        let cases = [
            (0, Some(1), RecordState::Open),
            (0, Some(2), RecordState::Open),
            (1, Some(3), RecordState::Won),
            (
                2,
                Some(4),
                RecordState::Lost {
                    reason: "Canceled".into(),
                },
            ),
            (
                2,
                Some(5),
                RecordState::Lost {
                    reason: "Out-Sold".into(),
                },
            ),
            (
                2,
                Some(100_000_001),
                RecordState::Lost {
                    reason: "Lost in Dynamics 365 (status reason 100000001)".into(),
                },
            ),
            (3, None, RecordState::Other("statecode 3".into())),
        ];
        for (code, status, expected) in cases {
            assert_eq!(state(code, status), expected, "{code}/{status:?}");
        }
    }

    #[test]
    fn the_seller_owns_every_column_after_create_and_value_and_date_flow_back() {
        let table = mapping();
        let directions: Vec<(&str, Direction)> = table
            .rules
            .iter()
            .map(|r| (r.column.as_str(), r.direction))
            .collect();
        assert_eq!(
            directions,
            [
                ("name", Direction::OnCreate),
                ("estimatedvalue", Direction::CrmOwned),
                ("estimatedclosedate", Direction::CrmOwned),
                ("description", Direction::OnCreate),
            ]
        );
        assert_eq!(
            table.returned_columns(),
            ["estimatedvalue", "estimatedclosedate"]
        );
        assert_eq!(table.kind_of("name"), ColumnKind::Text { max: 300 });
    }
}
