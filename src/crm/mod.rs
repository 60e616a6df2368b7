//! The CRM interface the sync core speaks: read a record by the referral key, write it
//! create-only or only if its version still matches, adopt a record the CRM made by itself (a
//! qualified lead's opportunity), close an opportunity, and resolve the lookups a new record
//! needs. Each CRM is one adapter module that owns its client, errors, table defaults and
//! state rules (`dataverse`, `salesforce`); the core never names one.

use std::fmt;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::{
    domain::{Referral, ReferralId},
    http::CallError,
};

pub mod dataverse;
pub mod salesforce;

/// The CRM adapter the settings describe (`CRM`: Dataverse or Salesforce), with its client and
/// credential. Fails naming the first missing or unusable setting.
pub fn from_settings(
    settings: &crate::config::Settings,
    http: reqwest::Client,
) -> Result<std::sync::Arc<dyn Crm>, crate::config::ConfigError> {
    match settings.crm {
        crate::config::CrmChoice::Dataverse => {
            let client = dataverse::DataverseClient::from_settings(settings, http)?;
            Ok(std::sync::Arc::new(dataverse::DataverseCrm::from(client)))
        }
        crate::config::CrmChoice::Salesforce => Ok(std::sync::Arc::new(
            salesforce::SalesforceCrm::from_settings(settings, http)?,
        )),
    }
}

/// The two kinds of record a referral becomes, whatever the CRM calls its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// A lead (Dataverse `lead`, Salesforce `Lead`).
    Lead,
    /// An opportunity (Dataverse `opportunity`, Salesforce `Opportunity`).
    Opportunity,
}

impl RecordKind {
    /// Both kinds.
    pub const ALL: [RecordKind; 2] = [RecordKind::Lead, RecordKind::Opportunity];

    /// Lower-case name for logs and output.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Lead => "lead",
            Self::Opportunity => "opportunity",
        }
    }

    /// The other kind.
    pub fn other(&self) -> Self {
        match self {
            Self::Lead => Self::Opportunity,
            Self::Opportunity => Self::Lead,
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a record stands, in the CRM-neutral terms of the status table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Open: the only state in which the sync writes mapped columns.
    Open,
    /// A lead qualified (converted) into an opportunity, whose id is given when the CRM knows it.
    Converted {
        /// The opportunity the lead became.
        opportunity: Option<String>,
    },
    /// An opportunity won.
    Won,
    /// A lost opportunity or a disqualified lead, with the status reason's text.
    Lost {
        /// Status reason (e.g. `Canceled`, `Out-Sold`, `No Longer Interested`).
        reason: String,
    },
    /// A state this version does not know: read-only.
    Other(String),
}

impl RecordState {
    /// Lower-case name for logs and output.
    pub fn name(&self) -> &str {
        match self {
            Self::Open => "open",
            Self::Converted { .. } => "qualified",
            Self::Won => "won",
            Self::Lost { .. } => "lost",
            Self::Other(name) => name,
        }
    }

    /// Whether the sync may write mapped columns.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open)
    }

    /// The opportunity of a qualified lead, when the CRM knows it.
    pub fn successor(&self) -> Option<&str> {
        match self {
            Self::Converted {
                opportunity: Some(id),
            } => Some(id),
            _ => None,
        }
    }
}

/// One CRM record as the sync sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmRecord {
    /// Lead or opportunity.
    pub kind: RecordKind,
    /// The CRM's id of the record.
    pub id: String,
    /// The concurrency token (Dataverse `@odata.etag`), when the CRM has one.
    pub version: Option<String>,
    /// The state.
    pub state: RecordState,
    /// The referral id in the key column, if set.
    pub key: Option<String>,
    /// When the record last changed (RFC 3339 UTC, at the CRM's precision), when read.
    pub modified_on: Option<String>,
    /// The requested columns as the CRM returned them (lookups and annotations removed).
    pub columns: Map<String, Value>,
}

/// The precondition of a write: conditional writes in one place, so the core never sees a
/// CRM's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteMode {
    /// Create only: fails with [`CrmError::Conflict`] when a record with the key exists.
    Create,
    /// Update only while the record still has this version; [`CrmError::Conflict`] otherwise,
    /// [`CrmError::Gone`] when it no longer exists.
    Update(Option<String>),
}

/// How an opportunity is closed from Partner Center.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Won.
    Won,
    /// Lost (Partner Center's Lost, Declined or Expired), with Partner Center's reason text.
    Lost {
        /// The referral's substatus and reason, for the close record.
        reason: String,
    },
}

/// What the adapter added to a new record, for the audit column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// One sentence per lookup that did not go as mapped (e.g. a currency the org lacks).
    pub notes: Vec<String>,
}

/// The customer of an opportunity a seller shares with Partner Center, as the CRM holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareParty {
    /// The opportunity's account.
    pub account: Option<Account>,
    /// The opportunity's contact (Dataverse `parentcontactid`, Salesforce the primary contact
    /// role).
    pub contact: Option<Contact>,
    /// The opportunity's currency, ISO 4217.
    pub currency: Option<String>,
}

/// An account's name and address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    /// Name.
    pub name: Option<String>,
    /// Street, first line.
    pub line1: Option<String>,
    /// Street, second line.
    pub line2: Option<String>,
    /// City.
    pub city: Option<String>,
    /// State or province.
    pub state: Option<String>,
    /// Postal code.
    pub postal_code: Option<String>,
    /// Country as the CRM holds it (a name or a code).
    pub country: Option<String>,
}

/// A person at the customer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Phone.
    pub phone: Option<String>,
}

/// What a change poll read: the records, and the instant up to which the CRM guarantees it
/// read everything (exclusive), when that is earlier than the poll's own start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// The records, oldest change first.
    pub records: Vec<CrmRecord>,
    /// RFC 3339 UTC; the next poll's watermark may not pass it (Salesforce: its clock minus
    /// the poll lag). `None`: the poll's start.
    pub until: Option<String>,
}

/// Errors of any CRM adapter, in the terms the core decides on.
#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    /// The record changed since it was read, or a create found the key taken.
    #[error("the {0} changed or already exists (412 Precondition Failed)")]
    Conflict(RecordKind),
    /// The record no longer exists.
    #[error("the {0} no longer exists (404)")]
    Gone(RecordKind),
    /// A call failed (status, transport or token).
    #[error("{crm}: {source}")]
    Call {
        /// Which CRM.
        crm: &'static str,
        /// What failed.
        #[source]
        source: CallError,
    },
    /// The CRM refused the operation for a reason no retry changes, with the fix.
    #[error("{crm}: {message}")]
    Rejected {
        /// Which CRM.
        crm: &'static str,
        /// What was refused and how to fix it.
        message: String,
    },
}

impl CrmError {
    /// Whether a later attempt may succeed. A conflict or a vanished record that reaches the
    /// caller is retried: the next attempt reads both sides again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Call { source, .. } => source.is_transient(),
            Self::Conflict(_) | Self::Gone(_) => true,
            Self::Rejected { .. } => false,
        }
    }
}

/// One CRM, as the sync core needs it. Implemented once per CRM; the conformance suite in
/// `tests/api/conformance.rs` runs the same sync scenarios against every implementation.
#[async_trait]
pub trait Crm: Send + Sync + fmt::Debug {
    /// The CRM's name, for messages (`Dataverse`).
    fn name(&self) -> &'static str;

    /// Whether [`WriteMode::Update`] and [`Crm::update_record`] really fail when the record
    /// changed since it was read (Dataverse's If-Match). Without it (Salesforce), the core
    /// re-reads the referral after each write and repeats when it moved, so the last write
    /// always carries the newest referral.
    fn conditional_writes(&self) -> bool {
        true
    }

    /// Why long runs (the change poll, reconciliation, backfill) should stop now to leave the
    /// CRM's API allocation to its users; `None` while within budget.
    fn over_budget(&self) -> Option<String> {
        None
    }

    /// Claims an unlinked opportunity for one attempt to create its referral, by writing
    /// `columns` (the claim in the status column): an operation only one of two overlapping
    /// attempts can win. [`CrmError::Conflict`] when another attempt (or the seller) changed
    /// or claimed the record since it was read. By default a conditional
    /// [`Crm::update_record`].
    async fn claim(
        &self,
        record: &CrmRecord,
        columns: &Map<String, Value>,
        returned: &[&str],
    ) -> Result<CrmRecord, CrmError> {
        self.update_record(record, columns, returned).await
    }

    /// Reads the record of `kind` whose key column holds `key`, with these mapped columns (the
    /// adapter adds what it needs for id, version, state and key).
    async fn read(
        &self,
        kind: RecordKind,
        key: &ReferralId,
        columns: &[&str],
    ) -> Result<Option<CrmRecord>, CrmError>;

    /// Reads a record by the CRM's own id.
    async fn read_by_id(
        &self,
        kind: RecordKind,
        id: &str,
        columns: &[&str],
    ) -> Result<Option<CrmRecord>, CrmError>;

    /// Writes `columns` to the record keyed by `key` (creating it with [`WriteMode::Create`])
    /// and returns it with the `returned` columns.
    async fn write(
        &self,
        kind: RecordKind,
        key: &ReferralId,
        columns: &Map<String, Value>,
        mode: &WriteMode,
        returned: &[&str],
    ) -> Result<CrmRecord, CrmError>;

    /// Puts `key` into the key column of a record that has none (a qualified lead's
    /// opportunity), with `columns`, only while the record still has the version read.
    async fn adopt(
        &self,
        record: &CrmRecord,
        key: &ReferralId,
        columns: &Map<String, Value>,
        returned: &[&str],
    ) -> Result<CrmRecord, CrmError>;

    /// Writes `columns` to this record (found by its id), only while it still has the version
    /// read; [`CrmError::Conflict`] otherwise.
    async fn update_record(
        &self,
        record: &CrmRecord,
        columns: &Map<String, Value>,
        returned: &[&str],
    ) -> Result<CrmRecord, CrmError>;

    /// Adds the lookups a new record of `kind` needs (customer account, currency) to `columns`.
    async fn prepare_create(
        &self,
        kind: RecordKind,
        key: &ReferralId,
        referral: &Referral,
        columns: &mut Map<String, Value>,
    ) -> Result<Prepared, CrmError>;

    /// Closes an open opportunity as won or lost.
    async fn close(&self, record: &CrmRecord, outcome: &Outcome) -> Result<(), CrmError>;

    /// The records of `kind` that changed at or after `since` (RFC 3339 UTC) and carry a
    /// referral key or, when `flag` names a yes/no column, have it set to yes; oldest change
    /// first, every page read, with these mapped columns.
    async fn changed_since(
        &self,
        kind: RecordKind,
        since: &str,
        flag: Option<&str>,
        columns: &[&str],
    ) -> Result<Changes, CrmError>;

    /// The account, contact and currency of an opportunity, for a new referral.
    async fn share_party(&self, record: &CrmRecord) -> Result<ShareParty, CrmError>;
}
