//! Operator commands of the same binary: `serve` (what the host runs) and the setup and
//! recovery commands. Settings come from the environment and, with `--settings`, from a
//! `local.settings.json` `Values` block. Every command prints one clear sentence per failure
//! with the fix, never prints a secret (except `login --print`), and exits 0 only on success.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::{config::Settings, startup::Application, telemetry};

pub mod backfill;
pub mod check;
pub mod crm;
pub mod login;
pub mod poison;
pub mod schedule;
pub mod setup;
pub mod status;
pub mod sync;
pub mod webhook;

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
    /// Sign in the Referrals Admin user once (device code) and store the refresh token.
    Login {
        /// Print the refresh token instead of writing it into the --settings file.
        #[arg(long)]
        print: bool,
    },
    /// Create, show or test the Partner Center webhook registration.
    Webhook {
        /// Which webhook action.
        #[command(subcommand)]
        action: WebhookAction,
    },
    /// Sync these referrals now, exactly as the queue function does, and print each outcome;
    /// with --crm, these CRM records, exactly as CrmChanges does.
    Sync {
        /// Referral ids (GUIDs), or with --crm the records' ids.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        /// The ids are records of this CRM table (lead or opportunity): sync them to Partner
        /// Center (their referral, or a share).
        #[arg(long, value_name = "TABLE", value_parser = crm::parse_table)]
        crm: Option<crate::crm::RecordKind>,
    },
    /// Sync every referral updated in a time window (recovers events Partner Center gave up on).
    Backfill {
        /// Start of the window: a date (2026-01-31) or an RFC 3339 time, UTC.
        #[arg(long, value_name = "DATE")]
        since: String,
        /// End of the window (inclusive); default: now.
        #[arg(long, value_name = "DATE")]
        until: Option<String>,
        /// Referrals synced at the same time.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
        concurrency: u16,
        /// Read both sides and report what would change, writing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Sync the CRM records changed in the window to Partner Center instead (CrmChanges).
        #[arg(long, conflicts_with = "until")]
        crm: bool,
    },
    /// Print what the next CrmChanges run would send to Partner Center, writing nothing.
    CrmChanges {
        /// Required: this command only previews.
        #[arg(long, required = true)]
        dry_run: bool,
        /// Read records changed since this date or time (UTC) instead of from the stored
        /// watermark.
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
    },
    /// Verify the whole configuration without writing anything.
    Check {
        /// The webhook URL the registration should point at.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// List or replay the entries of the poison queue (referral-sync-poison).
    Poison {
        /// What to do with them.
        #[command(subcommand)]
        action: PoisonAction,
    },
    /// Queues, timer watermarks, poison reasons and the webhook on one screen; exits 1 when
    /// something needs attention (for monitors).
    Status {
        /// The ReferralWebhook URL (with ?code=) the registration should point at, as given to
        /// `webhook register`.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Prepare the CRM: the referral-id column or field and the Partner Center columns.
    Setup {
        /// What to prepare.
        #[command(subcommand)]
        target: SetupTarget,
    },
}

/// `webhook` actions.
#[derive(Debug, Subcommand)]
pub enum WebhookAction {
    /// Create or update the tenant's registration (POST when none exists, PUT otherwise).
    Register {
        /// The ReferralWebhook URL, with ?code=<function key>.
        #[arg(long, value_name = "URL")]
        url: String,
        /// Events to subscribe to (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = crate::domain::EventName::SUBSCRIBED.map(String::from))]
        events: Vec<String>,
        /// Ask Partner Center to send the signature in x-ms-signature instead of Authorization.
        #[arg(long)]
        signature_header: bool,
    },
    /// Print the registration and whether it points at --url.
    Show {
        /// The URL it should point at.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Send a test-created event and wait for its delivery result.
    Test {
        /// How long to wait for the delivery result.
        #[arg(long, default_value = "120", value_parser = parse_seconds, value_name = "SECONDS")]
        timeout: Duration,
        /// Pause between polls.
        #[arg(long, default_value = "5", value_parser = parse_seconds, value_name = "SECONDS", hide = true)]
        poll: Duration,
    },
}

/// `poison` actions.
#[derive(Debug, Subcommand)]
pub enum PoisonAction {
    /// Show the entries: message id, referral or CRM row, failed at, dequeue count, reason.
    List,
    /// Move entries back to referral-sync; each leaves the poison queue only once re-queued.
    Replay {
        /// Only the entry with this message id (from `poison list`), or those of this
        /// referral id or CRM record id.
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        id: Option<String>,
        /// Every entry.
        #[arg(long)]
        all: bool,
        /// Print what would be re-queued, changing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Seconds a taken entry stays invisible to other readers.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=3600), hide = true)]
        visibility_timeout: u32,
    },
}

/// `setup` targets.
#[derive(Debug, Subcommand)]
pub enum SetupTarget {
    /// Create the key column and its alternate key if missing, then wait until the key is Active.
    Dataverse {
        /// How long to wait for the key index to become Active.
        #[arg(long, default_value = "900", value_parser = parse_seconds, value_name = "SECONDS")]
        timeout: Duration,
        /// Pause between polls.
        #[arg(long, default_value = "10", value_parser = parse_seconds, value_name = "SECONDS", hide = true)]
        poll: Duration,
    },
    /// Create the connector's fields on Lead and Opportunity through the Tooling API and a
    /// permission set granting them to the integration user, if missing.
    Salesforce,
}

/// Runs the command line: loads the settings, starts telemetry and dispatches. Returns whether
/// the command succeeded.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let settings = Settings::load(cli.settings.as_deref())?;
    let command = cli.command.unwrap_or(Command::Serve);
    if matches!(command, Command::Serve) {
        telemetry::init("info");
        let app = Application::build(&settings).await?;
        tracing::info!(port = app.port(), "listening");
        app.run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        return Ok(true);
    }
    telemetry::init("error");
    let out = &mut std::io::stdout();
    match command {
        Command::Serve => Ok(true),
        Command::Login { print } => {
            login::run(&settings, cli.settings.as_deref(), print, out).await
        }
        Command::Webhook { action } => match action {
            WebhookAction::Register {
                url,
                events,
                signature_header,
            } => webhook::register(&settings, &url, &events, signature_header, out).await,
            WebhookAction::Show { url } => webhook::show(&settings, url.as_deref(), out).await,
            WebhookAction::Test { timeout, poll } => {
                webhook::test(&settings, timeout, poll, out).await
            }
        },
        Command::Sync { ids, crm: None } => sync::run(&settings, &ids, out).await,
        Command::Sync {
            ids,
            crm: Some(kind),
        } => crm::sync_records(&settings, kind, &ids, out).await,
        Command::Backfill {
            since,
            concurrency,
            dry_run,
            crm: true,
            ..
        } => {
            let since = backfill::parse_date(&since, "--since")?;
            crm::backfill(&settings, since, usize::from(concurrency), dry_run, out).await
        }
        Command::CrmChanges { since, .. } => {
            let state = match since {
                Some(since) => crate::sync::to_partner_center::PollState {
                    since: Some(crate::sync::utc_seconds(
                        backfill::parse_date(&since, "--since")? + settings.sync.poll.overlap,
                    )),
                    failures: Default::default(),
                },
                None => crm::stored_state(&settings).await?,
            };
            crm::dry_run(&settings, &state, out).await
        }
        Command::Backfill {
            since,
            until,
            concurrency,
            dry_run,
            crm: false,
        } => {
            let options = backfill::Options {
                since,
                until,
                concurrency: usize::from(concurrency),
                dry_run,
            };
            backfill::run(&settings, &options, out).await
        }
        Command::Check { url } => check::run(&settings, url.as_deref(), out).await,
        Command::Poison { action } => match action {
            PoisonAction::List => poison::list(&settings, out).await,
            PoisonAction::Replay {
                id,
                all: _,
                dry_run,
                visibility_timeout,
            } => {
                let options = poison::ReplayOptions {
                    selection: id.map_or(poison::Selection::All, poison::Selection::Id),
                    dry_run,
                    visibility_timeout,
                };
                poison::replay(&settings, &options, out).await
            }
        },
        Command::Status { url } => status::run(&settings, url.as_deref(), out).await,
        Command::Setup {
            target: SetupTarget::Dataverse { timeout, poll },
        } => setup::dataverse(&settings, timeout, poll, out).await,
        Command::Setup {
            target: SetupTarget::Salesforce,
        } => setup::salesforce(&settings, out).await,
    }
}

fn parse_seconds(raw: &str) -> Result<Duration, String> {
    raw.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{raw}` is not a number of seconds"))
}

/// Hides the values of `code` (the function key) and `sig` (a SAS signature), in any casing,
/// in a URL for printing.
pub fn mask_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k.eq_ignore_ascii_case("code") || k.eq_ignore_ascii_case("sig") {
                "***".to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    if pairs.is_empty() {
        return parsed.to_string();
    }
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.to_string().replace("%2A%2A%2A", "***")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn function_keys_are_masked() {
        assert_eq!(
            mask_url("https://app.azurewebsites.net/api/ReferralWebhook?code=abc%3D%3D&x=1"),
            "https://app.azurewebsites.net/api/ReferralWebhook?code=***&x=1"
        );
        assert_eq!(mask_url("https://a.test/x"), "https://a.test/x");
    }
}
