//! Referral ↔ CRM mapping, per table: the column rules (`rules`), the mapping file that
//! changes the adapters' defaults (`file`), and the pure planning functions that decide what,
//! if anything, to write to the CRM and back to Partner Center (`plan`). Nothing here does I/O
//! or reads the clock; the default tables live with each CRM adapter.

use crate::crm::RecordKind;

pub mod file;
pub mod plan;
pub mod rules;
pub mod share;

pub use file::MappingError;
pub use plan::{
    Audit, PatchOp, RecordPlan, StatusChange, WriteBack, WriteBackPolicy, close_outcome,
    status_change,
};
pub use rules::{ColumnKind, ColumnRule, Direction, FieldPath, MapError, Source, same_value};

/// The "Partner Center" columns of Microsoft's co-sell connector on one table, by logical
/// name; `None` where the table does not have it (or the mapping file dropped it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartnerCenterColumns {
    /// URL of the referral in Partner Center.
    pub link: Option<String>,
    /// Yes/No "Sync with Partner Center"; yes for referrals from Partner Center.
    pub sync: Option<String>,
    /// Choice "How can Microsoft help?" (`inviteContext.assistanceRequestCode`).
    pub help: Option<String>,
    /// Text: the referral's solutions, `id` and `name`.
    pub solutions: Option<String>,
    /// Text: `synced <UTC time>` or `error: <reason and fix>`.
    pub status: Option<String>,
    /// Multi-line text: one line per sync that wrote something, newest first.
    pub audit: Option<String>,
}

impl PartnerCenterColumns {
    /// The names in the mapping file's `partnerCenterColumns` object, with their slots.
    pub fn slots_mut(&mut self) -> [(&'static str, &mut Option<String>); 6] {
        [
            ("link", &mut self.link),
            ("syncWithPartnerCenter", &mut self.sync),
            ("microsoftHelp", &mut self.help),
            ("solutions", &mut self.solutions),
            ("syncStatus", &mut self.status),
            ("audit", &mut self.audit),
        ]
    }

    /// Every column that is set.
    pub fn names(&self) -> Vec<&str> {
        [
            &self.link,
            &self.sync,
            &self.help,
            &self.solutions,
            &self.status,
            &self.audit,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect()
    }
}

/// The mapping of one table: its column rules, the types of the columns the CRM is known to
/// have, the columns the connector manages, and the Partner Center columns.
#[derive(Debug, Clone, PartialEq)]
pub struct TableMapping {
    /// Lead or opportunity.
    pub kind: RecordKind,
    /// The column rules, in order.
    pub rules: Vec<ColumnRule>,
    /// Known columns of the table and their types; other columns default to text.
    pub known: &'static [(&'static str, ColumnKind)],
    /// Columns the connector (or the CRM) manages; a mapping may not write them.
    pub protected: &'static [&'static str],
    /// The Partner Center columns.
    pub partner_center: PartnerCenterColumns,
    /// How the CRM spells column names.
    pub names: ColumnNames,
}

/// How a CRM spells its column names, for the mapping file's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnNames {
    /// Dataverse logical names: lowercase, digits and `_` (`address1_city`).
    Logical,
    /// Salesforce API names: letters, digits and `_`, custom ones ending `__c` (`BillingCity`).
    Api,
}

impl ColumnNames {
    /// Whether `name` is spelled as this CRM spells column names.
    pub fn accepts(&self, name: &str) -> bool {
        match self {
            Self::Logical => rules::is_logical_name(name),
            Self::Api => {
                let mut chars = name.chars();
                matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
                    && name.len() <= 80
                    && !name.contains("___")
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            }
        }
    }

    /// How to spell one, for messages.
    pub fn example(&self) -> &'static str {
        match self {
            Self::Logical => "a column logical name (lowercase, e.g. address1_city)",
            Self::Api => "a field API name (e.g. BillingCity or Partner_Center_Link__c)",
        }
    }
}

impl TableMapping {
    /// The type of a column: known, else text of up to 4,000 characters.
    pub fn kind_of(&self, column: &str) -> ColumnKind {
        self.known
            .iter()
            .find(|(name, _)| *name == column)
            .map_or(ColumnKind::Text { max: 4000 }, |(_, kind)| *kind)
    }

    /// Adds one rule per row (column, referral paths of which the first with a value is taken,
    /// direction), typed by the table's known columns: how adapters build their defaults.
    pub fn with_rules(mut self, rows: &[(&str, &[&str], Direction)]) -> Self {
        for (column, paths, direction) in rows {
            let kind = self.kind_of(column);
            self.rules
                .push(ColumnRule::from_fields(column, paths, *direction, kind));
        }
        self
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[ColumnRule] {
        &self.rules
    }
}

/// The mapping of every table.
#[derive(Debug, Clone, PartialEq)]
pub struct Mappings {
    /// The lead table.
    pub lead: TableMapping,
    /// The opportunity table.
    pub opportunity: TableMapping,
}

impl Mappings {
    /// The defaults of an adapter.
    pub fn defaults(defaults: impl Fn(RecordKind) -> TableMapping) -> Self {
        Self {
            lead: defaults(RecordKind::Lead),
            opportunity: defaults(RecordKind::Opportunity),
        }
    }

    /// The mapping of one table.
    pub fn table(&self, kind: RecordKind) -> &TableMapping {
        match kind {
            RecordKind::Lead => &self.lead,
            RecordKind::Opportunity => &self.opportunity,
        }
    }

    /// The mapping of one table, to change.
    pub fn table_mut(&mut self, kind: RecordKind) -> &mut TableMapping {
        match kind {
            RecordKind::Lead => &mut self.lead,
            RecordKind::Opportunity => &mut self.opportunity,
        }
    }
}
