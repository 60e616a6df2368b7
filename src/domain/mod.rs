//! Domain types: parsed once at the edge, trusted everywhere below it.

pub mod country;
pub mod referral;
pub mod referral_id;
pub mod webhook_event;

pub use country::CountryCode;
pub use referral::{Referral, ReferralError, ReferralStatus};
pub use referral_id::{ReferralId, ReferralIdError};
pub use webhook_event::{EventError, EventName, WebhookEvent};
