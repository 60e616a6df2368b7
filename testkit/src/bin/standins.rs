//! `standins`: runs the handler locally without Azure Functions Core Tools, under the host
//! emulation over Azurite, and — when no tenant is configured — against local stand-ins of
//! Entra, Partner Center, the CRM (Dataverse, or Salesforce with `--crm salesforce`) and the
//! certificate host, with a scripted tour.
//!
//! ```text
//! standins --handler target/release/referral-connector [--app-root .] [--settings local.settings.json]
//!          [--port 7071] [--handler-log FILE] [--crm dataverse|salesforce] [--tour-only | --no-tour]
//! standins demo send --name "Contoso" [--url http://127.0.0.1:7071]
//! ```
//! Started by `scripts/dev.sh`; Ctrl-C stops everything.

use std::{path::PathBuf, process::ExitCode};

use testkit::standins::{self, CrmStandIn, Options};

const USAGE: &str = "usage: standins --handler PATH [--app-root DIR] [--settings FILE] [--port N] [--handler-log FILE] [--crm dataverse|salesforce] [--tour-only | --no-tour]
       standins demo send [--name NAME] [--url http://127.0.0.1:7071]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = if args.first().map(String::as_str) == Some("demo") {
        runtime.block_on(demo(&args[1..]))
    } else {
        runtime.block_on(run(&args))
    };
    // Children (the handler, Azurite) are killed on drop, before the runtime goes.
    drop(runtime);
    code
}

/// The value after `flag` in `args`.
fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

async fn demo(args: &[String]) -> ExitCode {
    if args.first().map(String::as_str) != Some("send") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let name = value(args, "--name").unwrap_or("Contoso");
    let url = value(args, "--url").unwrap_or("http://127.0.0.1:7071");
    let Ok(mut endpoint) = url::Url::parse(&format!("{url}/demo/referral")) else {
        eprintln!("--url {url:?} is not a URL");
        return ExitCode::from(2);
    };
    endpoint.query_pairs_mut().append_pair("name", name);
    let answer = reqwest::Client::new().post(endpoint).send().await;
    match answer {
        Ok(response) if response.status().is_success() => {
            let reply: serde_json::Value = response.json().await.unwrap_or_default();
            println!(
                "sent a signed referral-created callback for referral {} ({name}) → {} {}",
                reply["referralId"],
                reply["status"],
                reply["answer"].as_str().unwrap_or_default()
            );
            println!(
                "lead in the {} stand-in: {}",
                reply["crm"].as_str().unwrap_or("CRM"),
                reply["lead"]
            );
            println!(
                "referral in the Partner Center stand-in: externalReferenceId={}, status={}/{}",
                reply["referral"]["externalReferenceId"],
                reply["referral"]["status"],
                reply["referral"]["substatus"]
            );
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!(
                "{url} answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot reach {url} ({e}): is scripts/dev.sh running?");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> ExitCode {
    let Some(handler) = value(args, "--handler") else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let tour_only = args.iter().any(|a| a == "--tour-only");
    let no_tour = args.iter().any(|a| a == "--no-tour");
    let app_root = PathBuf::from(value(args, "--app-root").unwrap_or("."));
    let settings_file = PathBuf::from(value(args, "--settings").unwrap_or("local.settings.json"));
    let port: u16 = match value(args, "--port").unwrap_or("7071").parse() {
        Ok(port) => port,
        Err(_) => {
            eprintln!("--port needs a number\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let handler_log =
        PathBuf::from(value(args, "--handler-log").unwrap_or("target/standins/handler.log"));
    let mut settings = standins::load_settings(&settings_file);
    let crm = match value(args, "--crm") {
        None if args.iter().any(|a| a == "--crm") => {
            eprintln!("--crm needs a value: {}\n{USAGE}", CrmStandIn::NAMES);
            return ExitCode::from(2);
        }
        None => CrmStandIn::of(&settings),
        Some(raw) => match CrmStandIn::parse(raw) {
            Some(crm) => {
                settings.insert("CRM".into(), crm.setting().into());
                crm
            }
            None => {
                eprintln!(
                    "--crm {raw:?} is not a CRM this runs: use {}\n{USAGE}",
                    CrmStandIn::NAMES
                );
                return ExitCode::from(2);
            }
        },
    };
    let missing = standins::missing_tenant(&settings, crm);
    if tour_only && missing.is_none() {
        eprintln!(
            "--tour-only runs against the stand-ins, but a tenant is configured in {} or the environment",
            settings_file.display()
        );
        return ExitCode::from(2);
    }
    println!(
        "== a LOCAL STAND-IN for the Azure Functions host, not the host itself: the handler runs under \
         the same host emulation the end-to-end test uses — Azurite queues and blobs, the host's envelopes, \
         redelivery, poison after maxDequeueCount, timers on a simple schedule loop"
    );
    match &missing {
        Some(reason) => println!(
            "== no tenant configured ({reason} in {} and the environment): starting local stand-ins of Entra, \
             Partner Center, {} and a certificate host with a signing chain generated now",
            settings_file.display(),
            crm.name()
        ),
        None => println!(
            "== tenant settings from {} and the environment: the handler talks to your Partner Center and {}",
            settings_file.display(),
            crm.name()
        ),
    }
    let options = Options {
        handler: handler.to_owned(),
        app_root,
        settings,
        port,
        handler_log: handler_log.clone(),
        crm,
    };
    let running = standins::start(&options, missing.is_some()).await;
    let timers: Vec<String> = running
        .timers
        .iter()
        .map(|(name, period)| format!("{name} every {}s", period.as_secs()))
        .collect();
    println!(
        "== running: webhook at {}/api/ReferralWebhook; {}; handler log in {}",
        running.front,
        timers.join(", "),
        handler_log.display()
    );
    if let Some(standins) = &running.standins {
        println!(
            "== CRM: the {} STAND-IN (CRM={}) at {}",
            standins.crm.name(),
            standins.crm.setting(),
            standins.crm_url()
        );
    }
    if missing.is_some() && !no_tour {
        println!("== the tour");
        let say = |line: String| println!("{line}");
        if let Err(e) = standins::tour(&running, &say).await {
            eprintln!("tour failed: {e}\nhandler log: {}", handler_log.display());
            return ExitCode::FAILURE;
        }
    }
    if tour_only {
        println!("== --tour-only: stopping everything");
        return ExitCode::SUCCESS;
    }
    if missing.is_some() {
        println!(
            "== send more: `target/debug/standins demo send --name \"Contoso\"` (or \
             curl -X POST '{}/demo/referral?name=Contoso'); each becomes a signed callback, a lead in the {} stand-in and a patched referral",
            running.front,
            crm.name()
        );
    } else {
        println!(
            "== send Partner Center callbacks to {}/api/ReferralWebhook",
            running.front
        );
    }
    println!("== Ctrl-C stops everything");
    wait_for_stop().await;
    println!("== stopping the handler and Azurite");
    ExitCode::SUCCESS
}

/// Ctrl-C, or SIGTERM (so that `timeout` and service managers stop the children too).
async fn wait_for_stop() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
