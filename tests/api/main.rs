//! Integration tests: the handler against local fakes of every external system.

mod commands;
mod conformance;
mod cosell;
mod crm_changes;
mod helpers;
mod host_contract;
mod opportunity;
mod poison;
mod reconcile;
mod referral_sync;
mod salesforce_client;
mod salesforce_commands;
mod salesforce_setup;
mod salesforce_sync;
mod schemas;
mod status;
mod webhook;
