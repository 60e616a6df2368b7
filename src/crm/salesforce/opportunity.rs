//! The Salesforce `Opportunity` object: its default field rules and types, the fields
//! Salesforce or the connector manages, the co-sell connector's fields, and how the stage's
//! `IsClosed` / `IsWon` map to the CRM-neutral state. The account, the first stage and a
//! missing close date are added by the adapter when it creates one
//! (`super::SalesforceCrm::prepare_create`).

use serde_json::{Map, Value};

use crate::{
    crm::{RecordKind, RecordState},
    mapping::{ColumnKind, ColumnNames, Direction, PartnerCenterColumns, TableMapping},
};

/// Known Opportunity fields and their types.
pub const KNOWN_COLUMNS: &[(&str, ColumnKind)] = &[
    ("Name", ColumnKind::Text { max: 120 }),
    ("Description", ColumnKind::Text { max: 32_000 }),
    ("StageName", ColumnKind::Text { max: 255 }),
    ("Amount", ColumnKind::Money),
    ("ExpectedRevenue", ColumnKind::Money),
    ("CloseDate", ColumnKind::Date),
    ("Probability", ColumnKind::Number),
    ("NextStep", ColumnKind::Text { max: 255 }),
    ("LeadSource", ColumnKind::Text { max: 255 }),
    ("Type", ColumnKind::Text { max: 255 }),
    (super::LINK_FIELD, ColumnKind::Text { max: 255 }),
    (super::SYNC_FIELD, ColumnKind::Boolean),
    (super::HELP_FIELD, ColumnKind::Text { max: 255 }),
    (super::SOLUTIONS_FIELD, ColumnKind::Text { max: 255 }),
    (super::STATUS_FIELD, ColumnKind::Text { max: 255 }),
    (super::AUDIT_FIELD, ColumnKind::Text { max: 32_768 }),
];

/// Opportunity fields Salesforce or the connector manages (the account is set by the adapter).
pub const PROTECTED: &[&str] = &[
    "Id",
    "IsClosed",
    "IsWon",
    "AccountId",
    "ForecastCategoryName",
    "SystemModstamp",
    "LastModifiedDate",
    "CreatedDate",
    "OwnerId",
    super::KEY_FIELD,
];

/// The default Opportunity mapping: all on create; afterwards the seller owns the fields, and
/// the amount and the close date flow back to the referral.
pub fn mapping() -> TableMapping {
    use Direction::{CrmOwned, OnCreate};
    TableMapping {
        kind: RecordKind::Opportunity,
        rules: Vec::new(),
        known: KNOWN_COLUMNS,
        protected: PROTECTED,
        names: ColumnNames::Api,
        partner_center: PartnerCenterColumns {
            link: Some(super::LINK_FIELD.into()),
            sync: Some(super::SYNC_FIELD.into()),
            help: Some(super::HELP_FIELD.into()),
            solutions: Some(super::SOLUTIONS_FIELD.into()),
            status: Some(super::STATUS_FIELD.into()),
            audit: Some(super::AUDIT_FIELD.into()),
        },
    }
    .with_rules(&[
        ("Name", &["name", "customerProfile.name"], OnCreate),
        ("Amount", &["details.dealValue"], CrmOwned),
        ("CloseDate", &["details.closingDateTime"], CrmOwned),
        ("Description", &["details.notes"], OnCreate),
    ])
}

/// An Opportunity's state from its stage's `IsClosed` and `IsWon` (Salesforce derives both
/// from the org's `OpportunityStage` row of `StageName`); a lost one gives its stage as the
/// reason.
pub fn state(is_closed: bool, is_won: bool, stage: Option<&str>) -> RecordState {
    match (is_closed, is_won) {
        (false, _) => RecordState::Open,
        (true, true) => RecordState::Won,
        (true, false) => RecordState::Lost {
            reason: stage
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .unwrap_or("Closed Lost")
                .to_owned(),
        },
    }
}

/// One row of the org's stage table (`OpportunityStage`).
#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    /// `ApiName`, the value of `Opportunity.StageName`.
    pub api_name: String,
    /// `IsActive`.
    pub active: bool,
    /// `IsClosed`.
    pub closed: bool,
    /// `IsWon`.
    pub won: bool,
    /// `SortOrder` (the picklist's order).
    pub sort_order: f64,
}

impl StageRow {
    /// The row of a SOQL record with `ApiName`, `IsActive`, `IsClosed`, `IsWon` and
    /// `SortOrder`; `None` without an `ApiName`.
    pub fn from_record(record: &Map<String, Value>) -> Option<Self> {
        let flag = |k: &str| record.get(k).and_then(Value::as_bool).unwrap_or(false);
        Some(Self {
            api_name: record
                .get("ApiName")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())?
                .to_owned(),
            active: flag("IsActive"),
            closed: flag("IsClosed"),
            won: flag("IsWon"),
            sort_order: record
                .get("SortOrder")
                .and_then(Value::as_f64)
                .unwrap_or(f64::MAX),
        })
    }
}

/// The stage a referral closed in Partner Center moves an open opportunity to: the org's
/// first active won stage, or first active closed-and-not-won stage, by sort order.
pub fn close_stage(stages: &[StageRow], won: bool) -> Option<&StageRow> {
    stages
        .iter()
        .filter(|s| s.active && s.closed && s.won == won)
        .min_by(|a, b| a.sort_order.total_cmp(&b.sort_order))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_table() {
        let cases = [
            (false, false, Some("Prospecting"), RecordState::Open),
            (false, true, Some("Odd"), RecordState::Open),
            (true, true, Some("Closed Won"), RecordState::Won),
            (
                true,
                false,
                Some("Closed Lost"),
                RecordState::Lost {
                    reason: "Closed Lost".into(),
                },
            ),
            (
                true,
                false,
                Some("Lost to Competitor"),
                RecordState::Lost {
                    reason: "Lost to Competitor".into(),
                },
            ),
            (
                true,
                false,
                None,
                RecordState::Lost {
                    reason: "Closed Lost".into(),
                },
            ),
        ];
        for (closed, won, stage, expected) in cases {
            assert_eq!(
                state(closed, won, stage),
                expected,
                "{closed}/{won}/{stage:?}"
            );
        }
    }

    #[test]
    fn a_closed_referral_moves_the_opportunity_to_the_first_active_matching_stage() {
        let stage = |name: &str, active, closed, won, order: i32| StageRow {
            api_name: name.into(),
            active,
            closed,
            won,
            sort_order: f64::from(order),
        };
        let stages = [
            stage("Prospecting", true, false, false, 1),
            stage("Closed Won (old)", false, true, true, 8),
            stage("Closed Won", true, true, true, 9),
            stage("Signed", true, true, true, 12),
            stage("Lost to Competitor", true, true, false, 11),
            stage("Closed Lost", true, true, false, 10),
        ];
        assert_eq!(
            close_stage(&stages, true).map(|s| s.api_name.as_str()),
            Some("Closed Won")
        );
        assert_eq!(
            close_stage(&stages, false).map(|s| s.api_name.as_str()),
            Some("Closed Lost")
        );
        assert_eq!(close_stage(&stages[..1], true), None);
    }
}
