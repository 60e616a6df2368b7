//! Entry point: parse the command line, load settings, start telemetry, run.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use referral_connector::{
    cli::{self, Cli, Command, SetupTarget, WebhookAction},
    config::Settings,
    startup::Application,
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
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
            cli::login::run(&settings, cli.settings.as_deref(), print, out).await
        }
        Command::Webhook { action } => match action {
            WebhookAction::Register {
                url,
                events,
                signature_header,
            } => cli::webhook::register(&settings, &url, &events, signature_header, out).await,
            WebhookAction::Show { url } => cli::webhook::show(&settings, url.as_deref(), out).await,
            WebhookAction::Test { timeout, poll } => {
                cli::webhook::test(&settings, timeout, poll, out).await
            }
        },
        Command::Sync { ids } => cli::sync::run(&settings, &ids, out).await,
        Command::Backfill {
            since,
            until,
            concurrency,
            dry_run,
        } => {
            let options = cli::backfill::Options {
                since,
                until,
                concurrency: usize::from(concurrency),
                dry_run,
            };
            cli::backfill::run(&settings, &options, out).await
        }
        Command::Check { url } => cli::check::run(&settings, url.as_deref(), out).await,
        Command::Setup {
            target: SetupTarget::Dataverse { timeout, poll },
        } => cli::setup::dataverse(&settings, timeout, poll, out).await,
    }
}
