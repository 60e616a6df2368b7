//! The Salesforce adapter. For now its client: settings (`SALESFORCE_*`), the OAuth token
//! (client credentials or JWT bearer, cached until Salesforce says the session is invalid),
//! the REST calls the adapter needs (read, SOQL with paging, upsert by external id, create,
//! update, describe), the API usage header, and one error type with its transient/permanent
//! decision; and the org setup (custom fields, permission set) with its checks.

pub mod client;
pub mod error;
pub mod settings;
pub mod setup;

pub use client::{ApiUsage, SalesforceClient, TokenIdentity, UpsertOutcome};
pub use error::SalesforceError;
pub use settings::{SalesforceAuth, SalesforceSettings};
