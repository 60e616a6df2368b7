//! referral-connector: an Azure Functions custom handler that turns every Partner Center
//! referral into exactly one up-to-date CRM record (a Dynamics 365 lead or opportunity) and
//! writes the record's id and state back to the referral, plus the operator commands that set
//! it up and recover from gaps. `routes` are the functions, `sync` the CRM-neutral core with
//! one module per direction, `crm` the interface with one module per CRM adapter.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod crm;
pub mod domain;
pub mod envelope;
pub mod http;
pub mod mapping;
pub mod partner_center;
pub mod routes;
pub mod startup;
pub mod storage;
pub mod sync;
pub mod telemetry;
pub mod tokens;
pub mod webhook_auth;
