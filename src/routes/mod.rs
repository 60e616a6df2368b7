//! The handler's HTTP routes: the readiness probe and one route per function folder.

pub mod crm_changes;
pub mod health;
pub mod reconcile;
pub mod referral_sync;
pub mod webhook;
