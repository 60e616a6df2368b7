//! The Salesforce adapter. For now its client: settings (`SALESFORCE_*`), the OAuth token
//! (client credentials or JWT bearer, cached until Salesforce says the session is invalid),
//! the REST calls the adapter needs (read, SOQL with paging, upsert by external id, create,
//! update, describe), the API usage header, and one error type with its transient/permanent
//! decision.

pub mod client;
pub mod error;
pub mod settings;

pub use client::{ApiUsage, SalesforceClient, UpsertOutcome};
pub use error::SalesforceError;
pub use settings::{SalesforceAuth, SalesforceSettings};
