//! The README's "Set up" and "Deploy" blocks, run as a new user would paste them into one bash
//! shell (feature `e2e`; `scripts/e2e.sh` runs it). Nothing here reaches Azure:
//!
//! - `az` and `func` are stand-ins (`tests/readme_deploy/`) that record every call; `func
//!   azure functionapp publish` uploads into a local folder the way Core Tools zips one.
//! - Every Microsoft service the connector calls is a local fake; "editing local.settings.json"
//!   writes the fakes' values, as a user writes theirs.
//!
//! Afterwards the test checks what Azure would have checked: each `az` call uses only options
//! the Azure CLI documents for that command, the names, secrets and role assignments agree, the
//! upload holds exactly the function app, and the handler, given the app settings with their
//! Key Vault references resolved as App Service resolves them, syncs a referral.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use testkit::sync_world::{SyncWorld, referral};

const MARKER: &str = "<!-- rehearsed: tests/readme_deploy.rs -->";
/// The line of the first block where the user edits local.settings.json.
const EDIT_LINE: &str = "# edit local.settings.json:";
const APP_PRINCIPAL_ID: &str = "7d4a1c52-0f5e-4c3a-9a51-3f0b1e2d9c11";
const USER_OBJECT_ID: &str = "2b8e6f90-41d7-4e0a-b5c3-9d8f7a6e5b44";
const SUBSCRIPTION_ID: &str = "0c1d2e3f-4a5b-4c6d-8e7f-901234567890";
const FUNCTION_KEY: &str = "fk-Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5o==";
const REFERRAL: &str = "4111fffc-f9ee-4d53-bba6-569135228642";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `sh` blocks that follow the rehearsal marker, in order.
fn rehearsed_blocks(readme: &str) -> Vec<String> {
    readme
        .split(MARKER)
        .skip(1)
        .map(|rest| {
            let body = rest
                .trim_start()
                .strip_prefix("```sh\n")
                .expect("a ```sh block follows the marker");
            body[..body.find("\n```").expect("the block ends")].to_owned()
        })
        .collect()
}

/// A copy of the working tree (tracked and untracked, not ignored), so the rehearsal cannot
/// touch the developer's own local.settings.json or publish/.
fn copy_of_repository(to: &Path) {
    let listing = std::process::Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(repo())
        .output()
        .expect("git ls-files");
    assert!(listing.status.success());
    for file in listing.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = std::str::from_utf8(file).expect("utf-8 path");
        let source = repo().join(file);
        if !source.is_file() {
            continue; // deleted in the working tree
        }
        let target = to.join(file);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&source, &target).unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
}

/// One recorded `az` or `func` call.
#[derive(Debug)]
struct Call {
    tool: String,
    args: Vec<String>,
}

impl Call {
    /// The subcommand words (`functionapp config appsettings set`).
    fn command(&self) -> String {
        self.args
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Options and their values; `--settings` takes several.
    fn options(&self) -> Vec<(String, Vec<String>)> {
        let mut options: Vec<(String, Vec<String>)> = Vec::new();
        for arg in self.args.iter().skip_while(|a| !a.starts_with('-')) {
            match options.last_mut() {
                Some((_, values)) if !arg.starts_with('-') => values.push(arg.clone()),
                _ => options.push((arg.clone(), Vec::new())),
            }
        }
        options
    }

    /// The value of an option given by any of its names.
    fn value(&self, names: &[&str]) -> Option<String> {
        self.options()
            .into_iter()
            .find(|(name, _)| names.contains(&name.as_str()))
            .and_then(|(_, values)| values.first().cloned())
    }
}

fn calls(log: &str) -> Vec<Call> {
    log.lines()
        .map(|line| {
            let mut parts = line.split('\u{1f}').map(str::to_owned);
            let tool = parts.next().expect("tool");
            Call {
                tool,
                args: parts.collect(),
            }
        })
        .collect()
}

/// An Azure CLI command as its reference documents it: option names (aliases separated by `|`)
/// that are required, and all that are accepted. Only what the README uses is listed; a call
/// of anything else fails the test.
struct AzCommand {
    command: &'static str,
    required: &'static [&'static str],
    accepted: &'static [&'static str],
}

const OUTPUT: &str = "-o|--output";
const AZ: &[AzCommand] = &[
    AzCommand {
        command: "login",
        required: &[],
        accepted: &["--tenant|-t", "--use-device-code", OUTPUT],
    },
    AzCommand {
        command: "group create",
        required: &["-n|--name|-g|--resource-group", "-l|--location"],
        accepted: &["--tags", OUTPUT],
    },
    AzCommand {
        command: "storage account create",
        required: &["-n|--name", "-g|--resource-group"],
        accepted: &[
            "-l|--location",
            "--sku",
            "--kind",
            "--allow-blob-public-access",
            "--min-tls-version",
            OUTPUT,
        ],
    },
    AzCommand {
        command: "functionapp create",
        required: &[
            "-n|--name",
            "-g|--resource-group",
            "-s|--storage-account",
            "--runtime",
        ],
        accepted: &[
            "--flexconsumption-location",
            "--consumption-plan-location|-c",
            "--os-type",
            "--functions-version",
            "--runtime-version",
            "--assign-identity",
            "--deployment-storage-auth-type",
            "--instance-memory",
            OUTPUT,
        ],
    },
    AzCommand {
        command: "keyvault create",
        required: &["-n|--name", "-g|--resource-group"],
        accepted: &[
            "-l|--location",
            "--enable-rbac-authorization",
            "--sku",
            OUTPUT,
        ],
    },
    AzCommand {
        command: "keyvault show",
        required: &["-n|--name"],
        accepted: &["-g|--resource-group", "--query", OUTPUT],
    },
    AzCommand {
        command: "ad signed-in-user show",
        required: &[],
        accepted: &["--query", OUTPUT],
    },
    AzCommand {
        command: "role assignment create",
        required: &["--role", "--scope", "--assignee|--assignee-object-id"],
        accepted: &["--assignee-principal-type", OUTPUT],
    },
    AzCommand {
        command: "functionapp identity show",
        required: &["-n|--name", "-g|--resource-group"],
        accepted: &["--query", OUTPUT],
    },
    AzCommand {
        command: "keyvault secret set",
        required: &["--vault-name", "-n|--name", "--value|-f|--file"],
        accepted: &["--content-type", "--encoding|-e", OUTPUT],
    },
    AzCommand {
        command: "functionapp config appsettings set",
        required: &["-n|--name", "-g|--resource-group", "--settings"],
        accepted: &["--slot-settings", OUTPUT],
    },
    AzCommand {
        command: "functionapp function keys list",
        required: &["-n|--name", "-g|--resource-group", "--function-name"],
        accepted: &["--query", OUTPUT],
    },
];

/// Every problem with one `az` call, by the table above and the rules the CLI enforces.
fn az_problems(call: &Call) -> Vec<String> {
    let command = call.command();
    let Some(spec) = AZ.iter().find(|c| c.command == command) else {
        return vec![format!(
            "`az {command}` is not a command the README should need"
        )];
    };
    let options = call.options();
    let has = |aliases: &str| {
        options
            .iter()
            .any(|(o, _)| aliases.split('|').any(|a| a == o))
    };
    let mut problems = Vec::new();
    for (option, values) in &options {
        let known = spec
            .required
            .iter()
            .chain(spec.accepted)
            .any(|aliases| aliases.split('|').any(|a| a == option));
        if !known {
            problems.push(format!("`az {command}` has no option {option}"));
        }
        if values.is_empty() && !["--use-device-code"].contains(&option.as_str()) {
            problems.push(format!("`az {command}` {option} has no value"));
        }
    }
    for aliases in spec.required {
        if !has(aliases) {
            problems.push(format!("`az {command}` needs {aliases}"));
        }
    }
    if let Some(output) = call.value(&["-o", "--output"])
        && !["none", "tsv", "json", "table", "yaml"].contains(&output.as_str())
    {
        problems.push(format!(
            "`az {command}` -o {output} is not an output format"
        ));
    }
    if has("--query") && call.value(&["-o", "--output"]).as_deref() != Some("tsv") {
        problems.push(format!(
            "`az {command}` --query without -o tsv prints JSON quotes into the variable"
        ));
    }
    if command == "functionapp create" {
        let plans = [
            "--flexconsumption-location",
            "--consumption-plan-location|-c",
        ]
        .iter()
        .filter(|p| has(p))
        .count();
        if plans != 1 {
            problems.push("`az functionapp create` needs exactly one plan location".into());
        }
        if has("--flexconsumption-location") && has("--runtime-version") {
            problems
                .push("the custom runtime on Flex Consumption takes no --runtime-version".into());
        }
        if has("--consumption-plan-location|-c")
            && (call.value(&["--os-type"]).as_deref() != Some("Linux")
                || call.value(&["--functions-version"]).as_deref() != Some("4"))
        {
            problems
                .push("a Linux Consumption app needs --os-type Linux --functions-version 4".into());
        }
        if call.value(&["--runtime"]).as_deref() != Some("custom") {
            problems.push("the handler needs --runtime custom".into());
        }
    }
    if command == "role assignment create"
        && has("--assignee-principal-type")
        && !has("--assignee-object-id")
    {
        problems.push("--assignee-principal-type goes with --assignee-object-id".into());
    }
    problems
}

/// The Azure side as the recorded calls left it.
#[derive(Default)]
struct Azure {
    app: Option<String>,
    vaults: Vec<String>,
    /// (vault, secret) → value, with the call index.
    secrets: HashMap<(String, String), (usize, String)>,
    /// (principal, role, vault) with the call index.
    roles: Vec<(String, String, String, usize)>,
    app_settings: HashMap<String, String>,
}

impl Azure {
    fn from_calls(calls: &[Call]) -> Self {
        let mut azure = Self::default();
        for (index, call) in calls.iter().enumerate().filter(|(_, c)| c.tool == "az") {
            match call.command().as_str() {
                "functionapp create" => azure.app = call.value(&["-n", "--name"]),
                "keyvault create" => azure.vaults.extend(call.value(&["-n", "--name"])),
                "keyvault secret set" => {
                    let vault = call.value(&["--vault-name"]).unwrap_or_default();
                    let name = call.value(&["-n", "--name"]).unwrap_or_default();
                    let value = call.value(&["--value"]).unwrap_or_default();
                    azure.secrets.insert((vault, name), (index, value));
                }
                "role assignment create" => {
                    let principal = call
                        .value(&["--assignee-object-id", "--assignee"])
                        .unwrap_or_default();
                    let role = call.value(&["--role"]).unwrap_or_default();
                    let scope = call.value(&["--scope"]).unwrap_or_default();
                    let vault = scope
                        .strip_prefix(&format!("/subscriptions/{SUBSCRIPTION_ID}/"))
                        .and_then(|s| s.rsplit_once("/providers/Microsoft.KeyVault/vaults/"))
                        .map(|(_, v)| v.to_owned())
                        .unwrap_or_else(|| format!("<not a vault: {scope}>"));
                    azure.roles.push((principal, role, vault, index));
                }
                "functionapp config appsettings set" => {
                    let (_, values) = call
                        .options()
                        .into_iter()
                        .find(|(o, _)| o == "--settings")
                        .unwrap_or_default();
                    for pair in values {
                        let (name, value) = pair.split_once('=').expect("NAME=value");
                        azure.app_settings.insert(name.into(), value.into());
                    }
                }
                _ => {}
            }
        }
        azure
    }

    fn can_read(&self, principal: &str, vault: &str) -> bool {
        self.roles.iter().any(|(p, role, v, _)| {
            p == principal
                && v == vault
                && ["Key Vault Secrets User", "Key Vault Secrets Officer"].contains(&role.as_str())
        })
    }

    /// App settings as the app sees them: a Key Vault reference is replaced by the secret when
    /// the app's identity may read it, and otherwise passed through as text (App Service).
    fn resolved_settings(&self) -> HashMap<String, String> {
        self.app_settings
            .iter()
            .map(|(name, value)| {
                let resolved = value
                    .strip_prefix("@Microsoft.KeyVault(")
                    .and_then(|r| r.strip_suffix(')'))
                    .and_then(|reference| {
                        let parts: HashMap<&str, &str> = reference
                            .split(';')
                            .filter_map(|p| p.split_once('='))
                            .collect();
                        let vault = parts.get("VaultName")?.to_string();
                        let secret = parts.get("SecretName")?.to_string();
                        if !self.can_read(APP_PRINCIPAL_ID, &vault) {
                            return None;
                        }
                        self.secrets.get(&(vault, secret)).map(|(_, v)| v.clone())
                    });
                (name.clone(), resolved.unwrap_or_else(|| value.clone()))
            })
            .collect()
    }
}

/// Runs the deployed handler's `sync` command with exactly the given environment.
fn deployed_sync(deployed: &Path, env: &HashMap<String, String>) -> std::process::Output {
    std::process::Command::new(deployed.join("handler"))
        .args(["sync", REFERRAL])
        .current_dir(deployed)
        .env_clear()
        .envs(env)
        .output()
        .expect("run the deployed handler")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_setup_and_deploy_blocks_work_as_written() {
    let fakes = SyncWorld::start().await;
    fakes.partner_center.insert_referral(referral(REFERRAL));
    fakes.dataverse.set_schema(false, None);

    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let blocks = rehearsed_blocks(&readme);
    assert_eq!(blocks.len(), 2, "the Set up and the Deploy block");
    assert!(
        blocks[0].lines().any(|l| l.starts_with(EDIT_LINE)),
        "the first block says where the user edits local.settings.json"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("referral-connector");
    copy_of_repository(&work);
    let rehearsal = dir.path().join("rehearsal");
    std::fs::create_dir_all(&rehearsal).expect("mkdir");

    // The user's edit: their tenant, app ids and secret; here the fakes' (and their URLs).
    // The Partner Center app is a public client ("Allow public client flows"), as Prerequisites
    // describe; the confidential variation adds one secret the same way.
    fakes.entra.require_client_secret(false);
    let mut edits = fakes.vars();
    edits.remove("PARTNER_CENTER_REFRESH_TOKEN");
    edits.remove("PARTNER_CENTER_CLIENT_SECRET");
    let edits_file = rehearsal.join("edits.json");
    std::fs::write(&edits_file, serde_json::to_vec(&edits).expect("json")).expect("write");
    let edit = format!(
        "jq --slurpfile e '{}' '.Values += $e[0]' local.settings.json > local.settings.json.new && mv local.settings.json.new local.settings.json",
        edits_file.display()
    );
    let first = blocks[0]
        .lines()
        .map(|l| {
            if l.starts_with(EDIT_LINE) {
                edit.as_str()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let script = format!("set -euo pipefail\n{first}\n{}\n", blocks[1]);
    std::fs::write(rehearsal.join("script.sh"), &script).expect("write script");

    let shims = repo().join("tests/readme_deploy");
    let path = format!(
        "{}:{}",
        shims.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The system roots (apt, rustup and cargo still fetch) plus the root of the fakes' TLS.
    let root = rehearsal.join("roots.pem");
    let mut roots = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    roots.extend(fakes.root_pem());
    std::fs::write(&root, roots).expect("write roots");
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(rehearsal.join("script.sh"))
        .current_dir(&work)
        .env_clear()
        .env("PATH", path)
        .env("SSL_CERT_FILE", &root)
        .env("REHEARSAL_DIR", &rehearsal)
        .env("APP_PRINCIPAL_ID", APP_PRINCIPAL_ID)
        .env("USER_OBJECT_ID", USER_OBJECT_ID)
        .env("SUBSCRIPTION_ID", SUBSCRIPTION_ID)
        .env("FUNCTION_KEY", FUNCTION_KEY)
        // Reuse this checkout's build cache; the rest of a user's environment stays out.
        .env("CARGO_TARGET_DIR", repo().join("target"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for name in [
        "HOME",
        "USER",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "TMPDIR",
        "TERM",
    ] {
        if let Ok(value) = std::env::var(name) {
            command.env(name, value);
        }
    }
    let run = tokio::time::timeout(Duration::from_secs(1500), command.output())
        .await
        .expect("the blocks finish within 25 minutes")
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the README blocks failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        run.status
    );

    let log = std::fs::read_to_string(rehearsal.join("calls.log")).expect("calls were recorded");
    let calls = calls(&log);
    let problems: Vec<String> = calls
        .iter()
        .filter(|c| c.tool == "az")
        .flat_map(az_problems)
        .collect();
    assert!(problems.is_empty(), "az calls:\n{}", problems.join("\n"));

    // Names agree across the calls.
    let azure = Azure::from_calls(&calls);
    let app = azure.app.clone().expect("a Function App was created");
    for call in calls.iter().filter(|c| c.tool == "az") {
        if call.command().starts_with("functionapp ") {
            assert_eq!(
                call.value(&["-n", "--name"]).as_deref(),
                Some(app.as_str()),
                "az {}",
                call.command()
            );
        }
    }
    let publish = calls
        .iter()
        .find(|c| c.tool == "func")
        .expect("func azure functionapp publish ran");
    assert_eq!(
        publish.args.get(3),
        Some(&app),
        "published to the created app"
    );
    assert!(
        publish
            .args
            .last()
            .is_some_and(|cwd| cwd.ends_with("referral-connector/publish")),
        "published from publish/: {publish:?}"
    );

    // Secrets: written after the user may write them, readable by the app, referenced by name.
    let vault = azure
        .vaults
        .first()
        .cloned()
        .expect("a Key Vault was created");
    let officer_at = azure
        .roles
        .iter()
        .find(|(p, role, v, _)| {
            p == USER_OBJECT_ID && role == "Key Vault Secrets Officer" && *v == vault
        })
        .map(|r| r.3)
        .expect("the signed-in user may write secrets");
    for ((v, name), (at, value)) in &azure.secrets {
        assert_eq!(v, &vault);
        assert!(
            *at > officer_at,
            "secret {name} is set after the role that allows it"
        );
        assert!(!value.is_empty(), "secret {name} has a value");
    }
    assert!(
        azure.can_read(APP_PRINCIPAL_ID, &vault),
        "the app may read the vault"
    );
    let stored = std::fs::read_to_string(work.join("local.settings.json")).expect("settings");
    let stored: Value = serde_json::from_str(&stored).expect("json");
    let refresh = stored["Values"]["PARTNER_CENTER_REFRESH_TOKEN"]
        .as_str()
        .expect("login stored a refresh token");
    assert!(
        fakes
            .entra
            .issued_refresh_tokens()
            .iter()
            .any(|t| t == refresh)
    );
    let settings = azure.resolved_settings();
    assert_eq!(settings["PARTNER_CENTER_REFRESH_TOKEN"], refresh);
    assert_eq!(
        settings["AZURE_CLIENT_SECRET"],
        fakes.entra.dataverse_client_secret()
    );
    for (name, value) in &azure.app_settings {
        assert!(
            !value.is_empty(),
            "app setting {name} is empty: a value the README reads is missing"
        );
        assert!(
            !["FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION"].contains(&name.as_str()),
            "Flex Consumption refuses the app setting {name}"
        );
    }
    for secret in ["PARTNER_CENTER_REFRESH_TOKEN", "AZURE_CLIENT_SECRET"] {
        assert!(
            azure.app_settings[secret].starts_with("@Microsoft.KeyVault("),
            "{secret} is a Key Vault reference, not the secret itself"
        );
    }

    // The upload is the function app and nothing else; the handler is what host.json runs.
    let deployed = rehearsal.join("deployed");
    let mut uploaded: Vec<String> = std::fs::read_to_string(rehearsal.join("uploaded.txt"))
        .expect("upload list")
        .lines()
        .map(str::to_owned)
        .collect();
    uploaded.sort();
    assert_eq!(
        uploaded,
        [
            "CrmChanges/function.json",
            "ReferralReconcile/function.json",
            "ReferralSync/function.json",
            "ReferralWebhook/function.json",
            "handler",
            "host.json"
        ]
    );
    let host: Value = serde_json::from_str(
        &std::fs::read_to_string(deployed.join("host.json")).expect("host.json"),
    )
    .expect("json");
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        "handler"
    );

    // Registered with the function key, tested, checked.
    let registration = fakes.partner_center.registration().expect("registered");
    assert_eq!(
        registration["WebhookUrl"],
        format!("https://{app}.azurewebsites.net/api/ReferralWebhook?code={FUNCTION_KEY}")
    );
    assert_eq!(
        fakes.partner_center.validation_event_ids().len(),
        1,
        "webhook test ran"
    );
    assert!(stdout.contains("PASS  Alternate key"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(
        !stdout.contains(FUNCTION_KEY),
        "the function key is never printed"
    );

    // The deployed handler with the app settings as App Service passes them. The Microsoft
    // endpoints stay at their defaults in Azure; here they are the fakes.
    let mut env = settings.clone();
    for name in [
        "AZURE_AUTHORITY_HOST",
        "PARTNER_CENTER_API_URL",
        "PARTNER_CENTER_WEBHOOK_API_URL",
    ] {
        assert!(!env.contains_key(name), "{name} keeps its default in Azure");
        env.insert(name.into(), edits[name].clone());
    }
    env.insert("SSL_CERT_FILE".into(), root.display().to_string());
    let synced = deployed_sync(&deployed, &env);
    assert!(
        synced.status.success(),
        "{}{}",
        String::from_utf8_lossy(&synced.stdout),
        String::from_utf8_lossy(&synced.stderr)
    );
    assert!(String::from_utf8_lossy(&synced.stdout).contains("created"));
    assert!(fakes.dataverse.lead(REFERRAL).is_some(), "the lead exists");

    // Without the app's read access the references stay text, and the handler says so.
    let mut unreadable = env.clone();
    unreadable.insert(
        "PARTNER_CENTER_REFRESH_TOKEN".into(),
        azure.app_settings["PARTNER_CENTER_REFRESH_TOKEN"].clone(),
    );
    let failed = deployed_sync(&deployed, &unreadable);
    let said = String::from_utf8_lossy(&failed.stdout).to_string()
        + &String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        said.contains("PARTNER_CENTER_REFRESH_TOKEN holds an unresolved Key Vault reference"),
        "{said}"
    );
}
