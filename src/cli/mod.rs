//! Operator commands of the same binary: `serve` (what the host runs), `sync`, and the setup
//! and recovery commands. Settings come from the environment and, with `--settings`, from a
//! `local.settings.json` `Values` block.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub mod sync;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "referral-connector",
    version,
    about = "Partner Center referrals → Dynamics 365 leads, as an Azure Functions custom handler"
)]
pub struct Cli {
    /// Read settings from this local.settings.json (its "Values" block); environment variables win.
    #[arg(long, global = true, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// What to do; without a command the handler serves (what the Functions host runs).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Functions host on 127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT (the default).
    Serve,
    /// Sync these referrals now, exactly as the queue function does, and print each outcome.
    Sync {
        /// Referral ids (GUIDs).
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}
