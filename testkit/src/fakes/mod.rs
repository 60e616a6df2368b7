//! Local fakes of the external HTTP systems (Entra token endpoint, Partner Center, Dataverse,
//! Salesforce).
//!
//! Each fake binds `127.0.0.1:0`, runs on the caller's tokio runtime, records every request,
//! supports scripted and random faults, and stops when dropped. All fakes dereference to
//! [`FakeServer`] for the shared API (`base_url`, `requests`, `inject`, `max_in_flight`, ...).

mod common;
mod dataverse;
mod entra;
mod partner_center;
mod salesforce;
#[cfg(test)]
mod salesforce_tests;
#[cfg(test)]
mod tests;

pub use common::{FakeServer, Fault, RandomFaults, Recorded};
pub use dataverse::FakeDataverse;
pub use entra::{FakeEntra, USER_CODE, VERIFICATION_URI};
pub use partner_center::FakePartnerCenter;
pub use salesforce::{
    ASSISTANCE_CODES, ConvertedLead, FakeSalesforce, MAX_API_VERSION, MIN_API_VERSION,
    REFERRAL_ID_FIELD,
};
