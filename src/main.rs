//! Entry point: parse the command line, load settings, start telemetry, run.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use referral_connector::{
    cli::{Cli, Command},
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
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            telemetry::init("info");
            let app = Application::build(&settings).await?;
            tracing::info!(port = app.port(), "listening");
            app.run_until(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
            Ok(true)
        }
        Command::Sync { ids } => {
            telemetry::init("warn");
            referral_connector::cli::sync::run(&settings, &ids, &mut std::io::stdout()).await
        }
    }
}
