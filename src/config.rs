//! Typed settings: defaults, then an optional `local.settings.json` `Values` block, then the
//! process environment (the Functions host passes app settings as environment variables).
//!
//! Every external base URL is a setting so that tests and local runs can point the connector at
//! fakes. Values are validated here, once, with messages that name the setting and say what a
//! valid value looks like.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use azure_core::credentials::Secret;
use url::Url;

use crate::{
    crm::{dataverse, salesforce::SalesforceSettings},
    mapping::{MappingError, Mappings, WriteBackPolicy, rules::is_logical_name},
    sync::SyncTarget,
};

/// Default prefix of the only certificate location Partner Center has ever used.
pub const DEFAULT_CERT_URL_PREFIX: &str = "https://3psostorageacct.blob.core.windows.net/cert/";
/// Default Organization (O=) required in the webhook signing certificate's subject.
pub const DEFAULT_CERT_ORGANIZATION: &str = "Microsoft Corporation";
/// Default Entra ID authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Default base of the Partner Center referrals API.
pub const DEFAULT_PARTNER_CENTER_API_URL: &str = "https://api.partner.microsoft.com";
/// Default base of the Partner Center webhook registration API.
pub const DEFAULT_PARTNER_CENTER_WEBHOOK_API_URL: &str = "https://api.partnercenter.microsoft.com";
/// Default name of the lead column that holds the referral id and carries the alternate key.
pub const DEFAULT_REFERRAL_KEY_COLUMN: &str = "new_partnercenterreferralid";

/// A problem with one setting, named so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse.
    #[error("setting {name} is invalid: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong, with a valid example.
        reason: String,
    },
    /// A setting a feature needs but that is not set.
    #[error("setting {name} is not set: {hint}")]
    Missing {
        /// The setting.
        name: &'static str,
        /// How to set it.
        hint: &'static str,
    },
    /// The mapping file named by `REFERRAL_MAPPING_FILE` is unusable.
    #[error("REFERRAL_MAPPING_FILE {path}: {source}")]
    Mapping {
        /// The file.
        path: String,
        /// What is wrong, naming the field.
        #[source]
        source: MappingError,
    },
    /// A setting whose value is still an App Service Key Vault reference: the platform could
    /// not read the secret and passed the reference text through.
    #[error(
        "setting {name} holds an unresolved Key Vault reference, so the platform could not read the secret. \
         In Azure: give the Function App's managed identity read access to it (role Key Vault Secrets User \
         on the vault, or a `get` secret access policy), check the reference's status under the app's \
         Environment variables, then restart the app. In local.settings.json put the value itself"
    )]
    UnresolvedReference {
        /// The setting.
        name: &'static str,
    },
    /// The `--settings` file cannot be read.
    #[error("settings file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// All settings of the connector.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port the handler listens on (`FUNCTIONS_CUSTOMHANDLER_PORT`); 0 picks a free one.
    pub port: u16,
    /// Webhook authentication.
    pub webhook: WebhookSettings,
    /// Partner Center APIs and the delegated token.
    pub partner_center: PartnerCenterSettings,
    /// Which CRM the connector syncs with (`CRM`).
    pub crm: CrmChoice,
    /// Dataverse environment and its credential.
    pub dataverse: DataverseSettings,
    /// The Salesforce org and its credential (used with `CRM=salesforce`).
    pub salesforce: SalesforceSlot,
    /// Queue processing.
    pub sync: SyncSettings,
    /// Outbound HTTP.
    pub http: HttpSettings,
    /// What the operator commands `poison`, `status` and `check` read besides the APIs.
    pub ops: OpsSettings,
}

/// The CRM the connector syncs with (`CRM`, default `dataverse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrmChoice {
    /// Dynamics 365 (Dataverse Web API).
    #[default]
    Dataverse,
    /// Salesforce (REST API).
    Salesforce,
}

impl CrmChoice {
    /// Parses the setting.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "dataverse" | "dynamics" | "dynamics365" => Some(Self::Dataverse),
            "salesforce" => Some(Self::Salesforce),
            _ => None,
        }
    }
}

/// The Salesforce settings, or the one that is missing. Missing settings stop only what needs
/// them (sync messages are retried, then poisoned naming the setting); invalid ones stop the
/// start.
#[derive(Debug, Clone)]
pub struct SalesforceSlot(Result<SalesforceSettings, (&'static str, &'static str)>);

impl SalesforceSlot {
    /// The settings, or the missing setting with how to set it.
    pub fn require(&self) -> Result<&SalesforceSettings, ConfigError> {
        self.0
            .as_ref()
            .map_err(|(name, hint)| ConfigError::Missing { name, hint })
    }
}

/// The app's storage, its timer schedules and the host's queue message encoding.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// `AzureWebJobsStorage` (or its identity-based `AzureWebJobsStorage__*` form), or why it
    /// is unusable; only these commands need it, so it never stops the handler.
    pub storage: Result<crate::storage::StorageAccount, crate::storage::StorageConfigError>,
    /// `CRM_POLL_SCHEDULE`, default `0 */1 * * * *`.
    pub crm_poll_schedule: String,
    /// `REFERRAL_RECONCILE_SCHEDULE`, default `0 30 3 * * *`.
    pub reconcile_schedule: String,
    /// host.json `extensions.queues.messageEncoding` (or the host's app setting override).
    pub message_encoding: crate::storage::MessageEncoding,
}

/// How callbacks are authenticated.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Allowed certificate URL prefixes (`WEBHOOK_CERT_URL_PREFIXES`).
    pub cert_url_prefixes: Vec<String>,
    /// PEM bundle used instead of the system trust store (`WEBHOOK_TRUSTED_CA_FILE`).
    pub trusted_ca_file: Option<PathBuf>,
    /// Required subject Organization (`WEBHOOK_CERT_ORGANIZATION`).
    pub cert_organization: String,
    /// Timeout of one certificate download.
    pub fetch_timeout: Duration,
    /// Largest certificate download accepted, in bytes.
    pub max_cert_bytes: usize,
}

/// Partner Center endpoints and the delegated (app+user) credential.
#[derive(Debug, Clone)]
pub struct PartnerCenterSettings {
    /// Referrals API base (`PARTNER_CENTER_API_URL`).
    pub api_url: Url,
    /// Webhook registration API base (`PARTNER_CENTER_WEBHOOK_API_URL`).
    pub webhook_api_url: Url,
    /// Entra authority (`AZURE_AUTHORITY_HOST`).
    pub authority_host: Url,
    /// Partner tenant (`PARTNER_CENTER_TENANT_ID`).
    pub tenant_id: Option<String>,
    /// App registration (`PARTNER_CENTER_CLIENT_ID`).
    pub client_id: Option<String>,
    /// Its secret, when the app is confidential (`PARTNER_CENTER_CLIENT_SECRET`).
    pub client_secret: SecretSetting,
    /// Refresh token of the Referrals Admin user (`PARTNER_CENTER_REFRESH_TOKEN`).
    pub refresh_token: SecretSetting,
}

/// Dataverse environment and credential.
#[derive(Debug, Clone)]
pub struct DataverseSettings {
    /// Environment URL (`DATAVERSE_URL`), e.g. `https://contoso.crm.dynamics.com`.
    pub url: Option<Url>,
    /// Lead column with the alternate key (`DATAVERSE_REFERRAL_KEY_COLUMN`).
    pub key_column: String,
    /// Entra authority (`AZURE_AUTHORITY_HOST`).
    pub authority_host: Url,
    /// `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// `AZURE_CLIENT_ID` (app registration, or user-assigned managed identity).
    pub client_id: Option<String>,
    /// `AZURE_CLIENT_SECRET`; when absent, managed identity is used.
    pub client_secret: SecretSetting,
}

/// Queue processing behaviour.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Referral to record mapping per table (defaults, changed by `REFERRAL_MAPPING_FILE`).
    pub mappings: Mappings,
    /// Which table a referral goes to (`SYNC_TARGET`).
    pub target: SyncTarget,
    /// Accepting, closing, the referral link (`REFERRAL_ACCEPT_NEW`,
    /// `CRM_CLOSE_FROM_REFERRAL`, `REFERRAL_LINK_TEMPLATE`).
    pub policy: WriteBackPolicy,
    /// Must equal host.json `maxDequeueCount` (`SYNC_MAX_DEQUEUE_COUNT`).
    pub max_dequeue_count: u32,
    /// Longest time one invocation waits in-process for throttling or transient errors
    /// (`SYNC_RETRY_BUDGET_SECONDS`).
    pub retry_budget: Duration,
    /// First wait between in-process retries when the service gives no `Retry-After`.
    pub retry_min_delay: Duration,
    /// How many times a referral that is not (yet) found is read again before giving up.
    pub not_found_retries: u32,
    /// The `ReferralReconcile` timer.
    pub reconcile: ReconcileSettings,
    /// The `CrmChanges` timer.
    pub poll: crate::sync::to_partner_center::PollSettings,
}

/// The daily reconciliation (`ReferralReconcile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// How far before the last complete run's start a run looks again
    /// (`REFERRAL_RECONCILE_OVERLAP_SECONDS`).
    pub overlap: Duration,
    /// How far back the first run (no watermark yet) looks.
    pub first_lookback: Duration,
    /// Referrals synced at the same time (`REFERRAL_RECONCILE_CONCURRENCY`).
    pub concurrency: usize,
}

/// Outbound HTTP behaviour shared by every client.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Whole-request timeout (`OUTBOUND_TIMEOUT_SECONDS`).
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Extra trusted roots (PEM) on top of the system store; set by tests, not by users
    /// (users set `SSL_CERT_FILE`).
    pub extra_root_pems: Vec<Vec<u8>>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            extra_root_pems: Vec::new(),
        }
    }
}

impl Settings {
    /// Settings from the process environment only.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(None)
    }

    /// Settings from an optional `local.settings.json`, overridden by the process environment.
    pub fn load(settings_file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        Self::load_with_host_json(settings_file, std::path::Path::new("host.json"))
    }

    /// [`Settings::load`], reading the queue retry limit from the given host.json (the host
    /// starts the handler in the function app's folder, next to its host.json).
    pub fn load_with_host_json(
        settings_file: Option<&std::path::Path>,
        host_json: &std::path::Path,
    ) -> Result<Self, ConfigError> {
        let mut vars = match settings_file {
            Some(path) => read_settings_file(path)?,
            None => HashMap::new(),
        };
        vars.extend(std::env::vars());
        if !vars.contains_key(HOST_MAX_DEQUEUE_COUNT)
            && let Some(count) = host_json_max_dequeue_count(host_json)
        {
            vars.insert(HOST_MAX_DEQUEUE_COUNT.to_owned(), count);
        }
        if !vars.contains_key(HOST_MESSAGE_ENCODING)
            && let Some(encoding) = host_json_queues_value(host_json, "messageEncoding")
        {
            vars.insert(HOST_MESSAGE_ENCODING.to_owned(), encoding);
        }
        Self::from_vars(&vars)
    }

    /// Settings from a map of variable names to values (what tests use).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let raw = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        // A plain setting that still holds a Key Vault reference stops the start like any bad
        // value; a secret does not (the webhook needs none): the features that use it say why.
        let get = |name: &'static str| match raw(name) {
            Some(v) if is_key_vault_reference(v) => Err(ConfigError::UnresolvedReference { name }),
            v => Ok(v.map(str::to_owned)),
        };
        let secret = |name: &'static str| match raw(name) {
            None => SecretSetting::Unset,
            Some(v) if is_key_vault_reference(v) => SecretSetting::Unresolved(name),
            Some(v) => SecretSetting::Set(Secret::new(v.to_owned())),
        };
        let port = match get("FUNCTIONS_CUSTOMHANDLER_PORT")? {
            Some(v) => v.parse::<u16>().map_err(|_| ConfigError::Invalid {
                name: "FUNCTIONS_CUSTOMHANDLER_PORT",
                reason: format!("`{v}` is not a port number (0-65535)"),
            })?,
            None => 0,
        };

        let cert_url_prefixes = match get("WEBHOOK_CERT_URL_PREFIXES")? {
            Some(v) => parse_prefixes(&v)?,
            None => vec![DEFAULT_CERT_URL_PREFIX.to_owned()],
        };
        let webhook = WebhookSettings {
            cert_url_prefixes,
            trusted_ca_file: get("WEBHOOK_TRUSTED_CA_FILE")?.map(PathBuf::from),
            cert_organization: get("WEBHOOK_CERT_ORGANIZATION")?
                .unwrap_or_else(|| DEFAULT_CERT_ORGANIZATION.to_owned()),
            fetch_timeout: Duration::from_secs(5),
            max_cert_bytes: 64 * 1024,
        };
        if let Some(path) = &webhook.trusted_ca_file
            && !path.is_file()
        {
            return Err(ConfigError::Invalid {
                name: "WEBHOOK_TRUSTED_CA_FILE",
                reason: format!(
                    "{} is not a readable file; give a PEM bundle or unset it to use the system trust store",
                    path.display()
                ),
            });
        }

        let authority_host = parse_base_url(
            "AZURE_AUTHORITY_HOST",
            get("AZURE_AUTHORITY_HOST")?.as_deref(),
            DEFAULT_AUTHORITY_HOST,
        )?;
        let partner_center = PartnerCenterSettings {
            api_url: parse_base_url(
                "PARTNER_CENTER_API_URL",
                get("PARTNER_CENTER_API_URL")?.as_deref(),
                DEFAULT_PARTNER_CENTER_API_URL,
            )?,
            webhook_api_url: parse_base_url(
                "PARTNER_CENTER_WEBHOOK_API_URL",
                get("PARTNER_CENTER_WEBHOOK_API_URL")?.as_deref(),
                DEFAULT_PARTNER_CENTER_WEBHOOK_API_URL,
            )?,
            authority_host: authority_host.clone(),
            tenant_id: get("PARTNER_CENTER_TENANT_ID")?,
            client_id: get("PARTNER_CENTER_CLIENT_ID")?,
            client_secret: secret("PARTNER_CENTER_CLIENT_SECRET"),
            refresh_token: secret("PARTNER_CENTER_REFRESH_TOKEN"),
        };

        let dataverse_url = match get("DATAVERSE_URL")? {
            Some(v) => Some(parse_base_url("DATAVERSE_URL", Some(&v), "")?),
            None => None,
        };
        let key_column = get("DATAVERSE_REFERRAL_KEY_COLUMN")?
            .unwrap_or_else(|| DEFAULT_REFERRAL_KEY_COLUMN.to_owned());
        if !is_logical_name(&key_column) {
            return Err(ConfigError::Invalid {
                name: "DATAVERSE_REFERRAL_KEY_COLUMN",
                reason: format!(
                    "`{key_column}` is not a Dataverse logical name (lowercase letters, digits and `_`, with a publisher prefix, e.g. new_partnercenterreferralid)"
                ),
            });
        }
        let dataverse = DataverseSettings {
            url: dataverse_url,
            key_column,
            authority_host,
            tenant_id: get("AZURE_TENANT_ID")?,
            client_id: get("AZURE_CLIENT_ID")?,
            client_secret: secret("AZURE_CLIENT_SECRET"),
        };

        let crm = match get("CRM")? {
            None => CrmChoice::default(),
            Some(raw) => CrmChoice::parse(&raw).ok_or_else(|| ConfigError::Invalid {
                name: "CRM",
                reason: format!("`{raw}` is not dataverse or salesforce (default dataverse)"),
            })?,
        };
        let salesforce = SalesforceSlot(match crm {
            CrmChoice::Salesforce => {
                match SalesforceSettings::from_lookup(|name| raw(name).map(str::to_owned)) {
                    Ok(settings) => Ok(settings),
                    Err(ConfigError::Missing { name, hint }) => Err((name, hint)),
                    Err(e) => return Err(e),
                }
            }
            CrmChoice::Dataverse => Err((
                "CRM",
                "set CRM=salesforce and the SALESFORCE_* settings to sync with Salesforce",
            )),
        });
        let (defaults, key_column_setting, key_column): (fn(_) -> _, _, _) = match crm {
            CrmChoice::Dataverse => (
                dataverse::default_mapping,
                "DATAVERSE_REFERRAL_KEY_COLUMN",
                dataverse.key_column.clone(),
            ),
            CrmChoice::Salesforce => (
                crate::crm::salesforce::default_mapping,
                "the Salesforce external id",
                crate::crm::salesforce::KEY_FIELD.to_owned(),
            ),
        };
        let mappings = match get("REFERRAL_MAPPING_FILE")? {
            Some(path) => Mappings::from_file(std::path::Path::new(&path), defaults)
                .map_err(|source| ConfigError::Mapping { path, source })?,
            None => Mappings::defaults(defaults),
        };
        for table in [&mappings.lead, &mappings.opportunity] {
            if table.rules().iter().any(|r| r.column == key_column)
                || table.partner_center.names().contains(&key_column.as_str())
            {
                let prefix = match table.kind {
                    crate::crm::RecordKind::Lead => String::new(),
                    kind => format!("tables.{kind}."),
                };
                return Err(ConfigError::Invalid {
                    name: "REFERRAL_MAPPING_FILE",
                    reason: format!(
                        "{prefix}columns.{key_column} is the key column ({key_column_setting}) and is set by the connector"
                    ),
                });
            }
        }
        let target = match get("SYNC_TARGET")? {
            None => SyncTarget::default(),
            Some(raw) => SyncTarget::parse(&raw).ok_or_else(|| ConfigError::Invalid {
                name: "SYNC_TARGET",
                reason: format!("`{raw}` is not one of {} (default lead)", SyncTarget::NAMES),
            })?,
        };
        let policy = WriteBackPolicy {
            accept_new: parse_bool("REFERRAL_ACCEPT_NEW", get("REFERRAL_ACCEPT_NEW")?, true)?,
            close_from_referral: parse_bool(
                "CRM_CLOSE_FROM_REFERRAL",
                get("CRM_CLOSE_FROM_REFERRAL")?,
                true,
            )?,
            link_template: match get("REFERRAL_LINK_TEMPLATE")? {
                None => WriteBackPolicy::default().link_template,
                Some(template) => parse_link_template(&template)?,
            },
            optional_paths: true,
        };
        let mut sync = SyncSettings {
            mappings,
            target,
            policy,
            max_dequeue_count: max_dequeue_count(
                get(HOST_MAX_DEQUEUE_COUNT)?
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|n| (1..=100).contains(n)),
                get("SYNC_MAX_DEQUEUE_COUNT")?,
            )?,
            retry_budget: Duration::from_secs(parse_number(
                "SYNC_RETRY_BUDGET_SECONDS",
                get("SYNC_RETRY_BUDGET_SECONDS")?,
                20,
                0..=240,
            )?),
            retry_min_delay: Duration::from_millis(200),
            not_found_retries: 2,
            reconcile: ReconcileSettings {
                overlap: Duration::from_secs(parse_number(
                    "REFERRAL_RECONCILE_OVERLAP_SECONDS",
                    get("REFERRAL_RECONCILE_OVERLAP_SECONDS")?,
                    3600,
                    0..=7 * 86_400,
                )?),
                first_lookback: Duration::from_secs(86_400),
                concurrency: parse_number(
                    "REFERRAL_RECONCILE_CONCURRENCY",
                    get("REFERRAL_RECONCILE_CONCURRENCY")?,
                    4,
                    1..=32,
                )?,
            },
            poll: crate::sync::to_partner_center::PollSettings {
                overlap: Duration::from_secs(parse_number(
                    "CRM_POLL_OVERLAP_SECONDS",
                    get("CRM_POLL_OVERLAP_SECONDS")?,
                    120,
                    0..=86_400,
                )?),
                first_lookback: Duration::from_secs(86_400),
                concurrency: parse_number(
                    "CRM_POLL_CONCURRENCY",
                    get("CRM_POLL_CONCURRENCY")?,
                    4,
                    1..=32,
                )?,
                max_runs: 0,
                claim_lease: Duration::from_secs(parse_number(
                    "CRM_SHARE_CLAIM_SECONDS",
                    get("CRM_SHARE_CLAIM_SECONDS")?,
                    300,
                    0..=86_400,
                )?),
            },
        };
        sync.poll.max_runs = sync.max_dequeue_count;
        let http = HttpSettings {
            timeout: Duration::from_secs(parse_number(
                "OUTBOUND_TIMEOUT_SECONDS",
                get("OUTBOUND_TIMEOUT_SECONDS")?,
                15,
                1..=120,
            )?),
            ..HttpSettings::default()
        };
        // A claim must outlast the create call it guards, retries of a 429 included, or a
        // second attempt could create a second referral while the first call is still open.
        let longest_create = http.timeout * 2 + sync.retry_budget;
        if sync.poll.claim_lease <= longest_create {
            return Err(ConfigError::Invalid {
                name: "CRM_SHARE_CLAIM_SECONDS",
                reason: format!(
                    "{} s is not longer than one referral create can take ({} s: twice OUTBOUND_TIMEOUT_SECONDS plus SYNC_RETRY_BUDGET_SECONDS); use the default 300",
                    sync.poll.claim_lease.as_secs(),
                    longest_create.as_secs()
                ),
            });
        }
        let ops = OpsSettings {
            storage: crate::storage::StorageAccount::from_settings(|name| {
                raw(name).map(str::to_owned)
            }),
            crm_poll_schedule: get("CRM_POLL_SCHEDULE")?
                .unwrap_or_else(|| "0 */1 * * * *".to_owned()),
            reconcile_schedule: get("REFERRAL_RECONCILE_SCHEDULE")?
                .unwrap_or_else(|| "0 30 3 * * *".to_owned()),
            message_encoding: match get(HOST_MESSAGE_ENCODING)? {
                None => crate::storage::MessageEncoding::default(),
                Some(raw) => crate::storage::MessageEncoding::parse(&raw).ok_or_else(|| {
                    ConfigError::Invalid {
                        name: HOST_MESSAGE_ENCODING,
                        reason: format!(
                            "`{raw}` is not base64 or none (host.json extensions.queues.messageEncoding)"
                        ),
                    }
                })?,
            },
        };
        Ok(Self {
            port,
            webhook,
            partner_center,
            crm,
            dataverse,
            salesforce,
            sync,
            http,
            ops,
        })
    }
}

/// `true` or `false`, else an error naming the setting.
fn parse_bool(name: &'static str, raw: Option<String>, default: bool) -> Result<bool, ConfigError> {
    match raw.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(ConfigError::Invalid {
            name,
            reason: format!(
                "`{}` is not true or false (default {default})",
                raw.unwrap_or_default()
            ),
        }),
    }
}

/// An https URL with `{id}` where the referral id goes.
fn parse_link_template(template: &str) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        name: "REFERRAL_LINK_TEMPLATE",
        reason: format!(
            "`{template}` {reason}, e.g. https://partner.microsoft.com/dashboard/referrals/v2/leads/{{id}}"
        ),
    };
    if !template.contains("{id}") {
        return Err(invalid("has no {id} for the referral id"));
    }
    match Url::parse(&template.replace("{id}", "00000000-0000-0000-0000-000000000000")) {
        Ok(url) if url.scheme() == "https" => Ok(template.to_owned()),
        _ => Err(invalid("is not an https URL")),
    }
}

/// The host's own override of host.json `extensions.queues.maxDequeueCount` (an app setting).
const HOST_MAX_DEQUEUE_COUNT: &str = "AzureFunctionsJobHost__extensions__queues__maxDequeueCount";

/// The host's own override of host.json `extensions.queues.messageEncoding`.
const HOST_MESSAGE_ENCODING: &str = "AzureFunctionsJobHost__extensions__queues__messageEncoding";

/// A string `extensions.queues.<name>` of a host.json, when the file is there and sets it.
fn host_json_queues_value(path: &std::path::Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let host: serde_json::Value = serde_json::from_str(&text).ok()?;
    host.pointer(&format!("/extensions/queues/{name}"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}

/// `extensions.queues.maxDequeueCount` of a host.json, when the file is there and sets it.
fn host_json_max_dequeue_count(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let host: serde_json::Value = serde_json::from_str(&text).ok()?;
    host.pointer("/extensions/queues/maxDequeueCount")
        .and_then(serde_json::Value::as_u64)
        .map(|n| n.to_string())
}

/// The number of deliveries the host makes before it moves a message to the poison queue:
/// the host's value when known (so the two cannot drift), else `SYNC_MAX_DEQUEUE_COUNT`, else 5.
fn max_dequeue_count(host: Option<u32>, ours: Option<String>) -> Result<u32, ConfigError> {
    let ours = match ours {
        Some(raw) => Some(parse_number(
            "SYNC_MAX_DEQUEUE_COUNT",
            Some(raw),
            5,
            1..=100,
        )?),
        None => None,
    };
    match (host, ours) {
        (Some(host), Some(ours)) if host != ours => Err(ConfigError::Invalid {
            name: "SYNC_MAX_DEQUEUE_COUNT",
            reason: format!(
                "`{ours}` differs from the host's maxDequeueCount {host} (host.json or {HOST_MAX_DEQUEUE_COUNT}); remove the setting, the host's value is read"
            ),
        }),
        (Some(count), _) | (None, Some(count)) => Ok(count),
        (None, None) => Ok(5),
    }
}

/// Reads the `Values` block of a `local.settings.json`.
pub fn read_settings_file(path: &std::path::Path) -> Result<HashMap<String, String>, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| file_error(format!("not valid JSON ({e})")))?;
    let values = doc
        .get("Values")
        .and_then(|v| v.as_object())
        .ok_or_else(|| file_error("has no \"Values\" object".to_owned()))?;
    let mut vars = HashMap::new();
    for (key, value) in values {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => continue,
            other => other.to_string(),
        };
        vars.insert(key.clone(), text);
    }
    Ok(vars)
}

fn parse_prefixes(raw: &str) -> Result<Vec<String>, ConfigError> {
    let mut prefixes = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = Url::parse(item).map_err(|e| ConfigError::Invalid {
            name: "WEBHOOK_CERT_URL_PREFIXES",
            reason: format!("`{item}` is not a URL ({e})"),
        })?;
        if url.scheme() != "https" || !item.ends_with('/') || url.host_str().is_none() {
            return Err(ConfigError::Invalid {
                name: "WEBHOOK_CERT_URL_PREFIXES",
                reason: format!(
                    "`{item}` must be an https URL ending in `/`, e.g. {DEFAULT_CERT_URL_PREFIX}"
                ),
            });
        }
        prefixes.push(item.to_owned());
    }
    if prefixes.is_empty() {
        return Err(ConfigError::Invalid {
            name: "WEBHOOK_CERT_URL_PREFIXES",
            reason: format!("no prefix given; the default is {DEFAULT_CERT_URL_PREFIX}"),
        });
    }
    Ok(prefixes)
}

/// Parses a base URL: https, or http only for loopback fakes; no query or fragment.
fn parse_base_url(
    name: &'static str,
    raw: Option<&str>,
    default: &str,
) -> Result<Url, ConfigError> {
    let text = raw.unwrap_or(default).trim_end_matches('/');
    let url = Url::parse(text).map_err(|e| ConfigError::Invalid {
        name,
        reason: format!(
            "`{text}` is not an absolute URL ({e}); expected e.g. {}",
            example_for(name)
        ),
    })?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    if !scheme_ok || url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::Invalid {
            name,
            reason: format!(
                "`{text}` must be an https URL without query or fragment (http is allowed only for 127.0.0.1), e.g. {}",
                example_for(name)
            ),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::Invalid {
            name,
            reason: "credentials do not belong in the URL".to_owned(),
        });
    }
    Ok(url)
}

fn example_for(name: &str) -> &'static str {
    match name {
        "DATAVERSE_URL" => "https://contoso.crm.dynamics.com",
        "AZURE_AUTHORITY_HOST" => DEFAULT_AUTHORITY_HOST,
        "PARTNER_CENTER_API_URL" => DEFAULT_PARTNER_CENTER_API_URL,
        _ => DEFAULT_PARTNER_CENTER_WEBHOOK_API_URL,
    }
}

pub(crate) fn parse_number<T>(
    name: &'static str,
    raw: Option<String>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(raw) = raw else { return Ok(default) };
    match raw.parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(ConfigError::Invalid {
            name,
            reason: format!(
                "`{raw}` is not a whole number from {} to {} (default {default})",
                range.start(),
                range.end()
            ),
        }),
    }
}

/// App Service passes a Key Vault reference through unchanged when it cannot resolve it.
pub(crate) fn is_key_vault_reference(value: &str) -> bool {
    value
        .get(.."@Microsoft.KeyVault(".len())
        .is_some_and(|p| p.eq_ignore_ascii_case("@Microsoft.KeyVault("))
}

/// A secret setting: unset, set, or still holding an App Service Key Vault reference.
#[derive(Debug, Clone, Default)]
pub enum SecretSetting {
    /// Not set.
    #[default]
    Unset,
    /// The secret.
    Set(Secret),
    /// The named setting holds a Key Vault reference the platform could not resolve.
    Unresolved(&'static str),
}

impl SecretSetting {
    /// The secret, `None` when unset, or the error naming an unresolved reference.
    pub fn get(&self) -> Result<Option<&Secret>, ConfigError> {
        match self {
            Self::Unset => Ok(None),
            Self::Set(secret) => Ok(Some(secret)),
            Self::Unresolved(name) => Err(ConfigError::UnresolvedReference { name }),
        }
    }
}

/// The Partner Center app registration: tenant, client id and optional client secret.
pub struct PartnerCenterApp<'a> {
    /// `PARTNER_CENTER_TENANT_ID`.
    pub tenant: &'a str,
    /// `PARTNER_CENTER_CLIENT_ID`.
    pub client_id: &'a str,
    /// `PARTNER_CENTER_CLIENT_SECRET`, for a confidential app.
    pub client_secret: Option<&'a Secret>,
}

impl PartnerCenterSettings {
    /// The app registration, or the first missing or unresolved setting.
    pub fn app(&self) -> Result<PartnerCenterApp<'_>, ConfigError> {
        let tenant = self.tenant_id.as_deref().ok_or(ConfigError::Missing {
            name: "PARTNER_CENTER_TENANT_ID",
            hint: "set it to the partner tenant id (a GUID or domain)",
        })?;
        let client_id = self.client_id.as_deref().ok_or(ConfigError::Missing {
            name: "PARTNER_CENTER_CLIENT_ID",
            hint: "set it to the app registration's Application (client) ID",
        })?;
        Ok(PartnerCenterApp {
            tenant,
            client_id,
            client_secret: self.client_secret.get()?,
        })
    }

    /// The refresh token of the Referrals Admin user, or why it is not usable.
    pub fn refresh_token(&self) -> Result<&Secret, ConfigError> {
        self.refresh_token.get()?.ok_or(ConfigError::Missing {
            name: "PARTNER_CENTER_REFRESH_TOKEN",
            hint: "run `referral-connector login --settings local.settings.json` to obtain it",
        })
    }
}

impl DataverseSettings {
    /// The environment URL, or an error saying how to set it.
    pub fn require_url(&self) -> Result<&Url, ConfigError> {
        self.url.as_ref().ok_or(ConfigError::Missing {
            name: "DATAVERSE_URL",
            hint: "set it to the environment URL, e.g. https://contoso.crm.dynamics.com",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_crm_setting_picks_the_adapter_and_its_settings_fail_like_the_others() {
        let settings = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(settings.crm, CrmChoice::Dataverse);
        let err = Settings::from_vars(&vars(&[("CRM", "hubspot")])).unwrap_err();
        assert!(err.to_string().contains("CRM"), "{err}");
        // Missing: the start goes on; what needs Salesforce names the setting.
        let settings = Settings::from_vars(&vars(&[("CRM", "Salesforce")])).unwrap();
        assert_eq!(settings.crm, CrmChoice::Salesforce);
        let missing = settings.salesforce.require().unwrap_err().to_string();
        assert!(missing.contains("SALESFORCE_URL"), "{missing}");
        let http = reqwest::Client::new();
        let missing = crate::crm::from_settings(&settings, http.clone())
            .unwrap_err()
            .to_string();
        assert!(missing.contains("SALESFORCE_URL"), "{missing}");
        // Invalid: the start stops, naming it.
        let err = Settings::from_vars(&vars(&[
            ("CRM", "salesforce"),
            ("SALESFORCE_URL", "http://acme.my.salesforce.com"),
            ("SALESFORCE_CLIENT_ID", "id"),
            ("SALESFORCE_CLIENT_SECRET", "secret"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("SALESFORCE_URL"), "{err}");
        // Complete: Salesforce's defaults, and its field names in the mapping.
        let settings = Settings::from_vars(&vars(&[
            ("CRM", "salesforce"),
            ("SALESFORCE_URL", "https://acme.my.salesforce.com"),
            ("SALESFORCE_CLIENT_ID", "id"),
            ("SALESFORCE_CLIENT_SECRET", "secret"),
        ]))
        .unwrap();
        let sf = settings.salesforce.require().unwrap();
        assert_eq!(sf.new_stage, "Prospecting");
        assert!(crate::crm::from_settings(&settings, http).is_ok());
        assert!(
            settings
                .sync
                .mappings
                .lead
                .rules()
                .iter()
                .any(|r| r.column == "Company")
        );
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::from_vars(&HashMap::new()).unwrap();
        assert_eq!(s.port, 0);
        assert_eq!(s.webhook.cert_url_prefixes, vec![DEFAULT_CERT_URL_PREFIX]);
        assert_eq!(s.webhook.cert_organization, "Microsoft Corporation");
        assert_eq!(
            s.partner_center.api_url.as_str(),
            "https://api.partner.microsoft.com/"
        );
        assert_eq!(s.dataverse.key_column, DEFAULT_REFERRAL_KEY_COLUMN);
        assert_eq!(s.sync.max_dequeue_count, 5);
        assert!(s.dataverse.url.is_none());
    }

    #[test]
    fn http_base_urls_are_refused_unless_loopback() {
        let err = Settings::from_vars(&vars(&[(
            "DATAVERSE_URL",
            "http://contoso.crm.dynamics.com",
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("DATAVERSE_URL"), "{err}");
        let ok =
            Settings::from_vars(&vars(&[("DATAVERSE_URL", "http://127.0.0.1:8080/")])).unwrap();
        assert_eq!(ok.dataverse.url.unwrap().as_str(), "http://127.0.0.1:8080/");
    }

    #[test]
    fn prefixes_must_be_https_and_end_with_a_slash() {
        for bad in [
            "http://x.test/cert/",
            "https://x.test/cert",
            "not a url",
            " , ",
        ] {
            let err =
                Settings::from_vars(&vars(&[("WEBHOOK_CERT_URL_PREFIXES", bad)])).unwrap_err();
            assert!(
                err.to_string().contains("WEBHOOK_CERT_URL_PREFIXES"),
                "{bad}: {err}"
            );
        }
        let s = Settings::from_vars(&vars(&[(
            "WEBHOOK_CERT_URL_PREFIXES",
            "https://a.test/cert/, https://b.test/x/",
        )]))
        .unwrap();
        assert_eq!(
            s.webhook.cert_url_prefixes,
            vec!["https://a.test/cert/", "https://b.test/x/"]
        );
    }

    #[test]
    fn numbers_out_of_range_name_the_setting_and_the_range() {
        let err = Settings::from_vars(&vars(&[("SYNC_MAX_DEQUEUE_COUNT", "0")])).unwrap_err();
        assert!(err.to_string().contains("SYNC_MAX_DEQUEUE_COUNT"));
        assert!(err.to_string().contains("1 to 100"));
        let err =
            Settings::from_vars(&vars(&[("FUNCTIONS_CUSTOMHANDLER_PORT", "http")])).unwrap_err();
        assert!(err.to_string().contains("FUNCTIONS_CUSTOMHANDLER_PORT"));
    }

    #[test]
    fn auto_accept_is_on_by_default_and_can_be_turned_off() {
        let accepts = |s: Settings| s.sync.policy.accept_new;
        assert!(accepts(Settings::from_vars(&HashMap::new()).unwrap()));
        assert!(!accepts(
            Settings::from_vars(&vars(&[("REFERRAL_ACCEPT_NEW", "false")])).unwrap()
        ));
        let err = Settings::from_vars(&vars(&[("REFERRAL_ACCEPT_NEW", "no")])).unwrap_err();
        assert!(err.to_string().contains("REFERRAL_ACCEPT_NEW"));
    }

    #[test]
    fn table_choice_close_and_link_settings() {
        let defaults = Settings::from_vars(&HashMap::new()).unwrap();
        assert_eq!(defaults.sync.target, SyncTarget::Lead);
        assert!(defaults.sync.policy.close_from_referral);
        let set = Settings::from_vars(&vars(&[
            ("SYNC_TARGET", "auto"),
            ("CRM_CLOSE_FROM_REFERRAL", "false"),
            ("REFERRAL_LINK_TEMPLATE", "https://pc.example/r/{id}"),
        ]))
        .unwrap();
        assert_eq!(set.sync.target, SyncTarget::Auto);
        assert!(!set.sync.policy.close_from_referral);
        assert_eq!(set.sync.policy.link_template, "https://pc.example/r/{id}");
        for (name, value) in [
            ("SYNC_TARGET", "leads"),
            ("CRM_CLOSE_FROM_REFERRAL", "yes"),
            ("REFERRAL_LINK_TEMPLATE", "https://pc.example/r/"),
            ("REFERRAL_LINK_TEMPLATE", "http://pc.example/r/{id}"),
        ] {
            let err = Settings::from_vars(&vars(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn key_column_must_be_a_logical_name() {
        for bad in ["New_Key", "1abc", "a-b", "a b"] {
            assert!(
                Settings::from_vars(&vars(&[("DATAVERSE_REFERRAL_KEY_COLUMN", bad)])).is_err(),
                "{bad}"
            );
        }
        assert!(is_logical_name("cr5a1_pcreferralid"));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = Settings::from_vars(&vars(&[
            ("PARTNER_CENTER_REFRESH_TOKEN", "refresh-token-value"),
            ("PARTNER_CENTER_CLIENT_SECRET", "client-secret-value"),
            ("AZURE_CLIENT_SECRET", "azure-secret-value"),
        ]))
        .unwrap();
        let debug = format!("{s:?}");
        for secret in [
            "refresh-token-value",
            "client-secret-value",
            "azure-secret-value",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
    }

    #[test]
    fn settings_file_values_are_read_and_environment_style_map_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.settings.json");
        std::fs::write(
            &path,
            r#"{"IsEncrypted":false,"Values":{"DATAVERSE_URL":"https://a.crm.dynamics.com","SYNC_MAX_DEQUEUE_COUNT":7}}"#,
        )
        .unwrap();
        let mut map = read_settings_file(&path).unwrap();
        assert_eq!(map["SYNC_MAX_DEQUEUE_COUNT"], "7");
        map.insert("DATAVERSE_URL".into(), "https://b.crm.dynamics.com".into());
        let s = Settings::from_vars(&map).unwrap();
        assert_eq!(
            s.dataverse.url.unwrap().host_str(),
            Some("b.crm.dynamics.com")
        );
        assert_eq!(s.sync.max_dequeue_count, 7);
        std::fs::write(&path, "{}").unwrap();
        assert!(
            read_settings_file(&path)
                .unwrap_err()
                .to_string()
                .contains("Values")
        );
    }

    #[test]
    fn unresolved_key_vault_references_name_the_setting_and_the_fix() {
        let reference = "@Microsoft.KeyVault(VaultName=kv;SecretName=s)";
        let s = Settings::from_vars(&vars(&[
            ("PARTNER_CENTER_TENANT_ID", "contoso.onmicrosoft.com"),
            ("PARTNER_CENTER_CLIENT_ID", "client"),
            ("PARTNER_CENTER_REFRESH_TOKEN", reference),
            (
                "AZURE_CLIENT_SECRET",
                "@microsoft.keyvault(SecretUri=https://kv.vault.azure.net/secrets/s/)",
            ),
        ]))
        .expect("an unresolved secret does not stop the start");
        assert!(s.partner_center.app().is_ok(), "the app itself is usable");
        let err = s.partner_center.refresh_token().unwrap_err().to_string();
        assert!(
            err.contains("PARTNER_CENTER_REFRESH_TOKEN holds an unresolved Key Vault reference"),
            "{err}"
        );
        assert!(err.contains("Key Vault Secrets User"), "{err}");
        let err = s.dataverse.client_secret.get().unwrap_err().to_string();
        assert!(
            err.contains("AZURE_CLIENT_SECRET"),
            "never managed identity by accident: {err}"
        );

        let plain = Settings::from_vars(&vars(&[("PARTNER_CENTER_REFRESH_TOKEN", "rt")])).unwrap();
        assert_eq!(plain.partner_center.refresh_token().unwrap().secret(), "rt");
        assert!(plain.dataverse.client_secret.get().unwrap().is_none());

        let err = Settings::from_vars(&vars(&[("DATAVERSE_URL", reference)])).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::UnresolvedReference {
                    name: "DATAVERSE_URL"
                }
            ),
            "a plain setting stops the start: {err}"
        );
    }

    #[test]
    fn a_mapping_rule_on_the_key_column_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mapping.json");
        std::fs::write(
            &path,
            r#"{"columns": {"cr5a1_pcreferralid": {"from": "details.notes"}}}"#,
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let err = Settings::from_vars(&vars(&[
            ("REFERRAL_MAPPING_FILE", file),
            ("DATAVERSE_REFERRAL_KEY_COLUMN", "cr5a1_pcreferralid"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("REFERRAL_MAPPING_FILE")
                && err.contains("columns.cr5a1_pcreferralid is the key column"),
            "{err}"
        );
        assert!(
            Settings::from_vars(&vars(&[("REFERRAL_MAPPING_FILE", file)])).is_ok(),
            "the same rule is fine when another column is the key"
        );
        std::fs::write(
            &path,
            r#"{"tables": {"opportunity": {"columns": {"new_partnercenterreferralid": {"from": "id"}}}}}"#,
        )
        .unwrap();
        let err = Settings::from_vars(&vars(&[("REFERRAL_MAPPING_FILE", file)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "tables.opportunity.columns.new_partnercenterreferralid is the key column"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_bad_table_section_in_the_mapping_file_stops_the_start_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mapping.json");
        std::fs::write(
            &path,
            r#"{"tables": {"opportunity": {"columns": {"estimatedvalue": {"from": "details.dealValue", "type": "currency"}}}}}"#,
        )
        .unwrap();
        let err = Settings::from_vars(&vars(&[("REFERRAL_MAPPING_FILE", path.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("REFERRAL_MAPPING_FILE ")
                && err.contains(
                    "tables.opportunity.columns.estimatedvalue.type: `currency` is not one of"
                ),
            "{err}"
        );
    }

    #[test]
    fn the_retry_limit_follows_the_host_and_a_different_setting_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let host_json = dir.path().join("host.json");
        std::fs::write(
            &host_json,
            r#"{"version": "2.0", "extensions": {"queues": {"maxDequeueCount": 3}}}"#,
        )
        .unwrap();
        assert_eq!(
            host_json_max_dequeue_count(&host_json).as_deref(),
            Some("3")
        );
        assert_eq!(
            host_json_max_dequeue_count(&dir.path().join("none.json")),
            None
        );

        let count = |pairs: &[(&str, &str)]| {
            Settings::from_vars(&vars(pairs)).map(|s| s.sync.max_dequeue_count)
        };
        assert_eq!(count(&[]).unwrap(), 5);
        assert_eq!(count(&[("SYNC_MAX_DEQUEUE_COUNT", "7")]).unwrap(), 7);
        assert_eq!(count(&[(HOST_MAX_DEQUEUE_COUNT, "3")]).unwrap(), 3);
        assert_eq!(
            count(&[
                (HOST_MAX_DEQUEUE_COUNT, "3"),
                ("SYNC_MAX_DEQUEUE_COUNT", "3")
            ])
            .unwrap(),
            3
        );
        let err = count(&[
            (HOST_MAX_DEQUEUE_COUNT, "3"),
            ("SYNC_MAX_DEQUEUE_COUNT", "5"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("SYNC_MAX_DEQUEUE_COUNT") && err.contains("maxDequeueCount 3"),
            "{err}"
        );
    }

    #[test]
    fn storage_schedules_and_message_encoding_for_the_operator_commands() {
        let defaults = Settings::from_vars(&HashMap::new()).unwrap();
        assert_eq!(defaults.ops.crm_poll_schedule, "0 */1 * * * *");
        assert_eq!(defaults.ops.reconcile_schedule, "0 30 3 * * *");
        assert_eq!(
            defaults.ops.message_encoding,
            crate::storage::MessageEncoding::Base64
        );
        assert_eq!(
            defaults.ops.storage.unwrap_err(),
            crate::storage::StorageConfigError::NotSet
        );
        let bad = Settings::from_vars(&vars(&[("AzureWebJobsStorage", "AccountName=x")]))
            .expect("an unusable storage setting does not stop the handler");
        assert!(bad.ops.storage.is_err());

        let dir = tempfile::tempdir().unwrap();
        let host_json = dir.path().join("host.json");
        std::fs::write(
            &host_json,
            r#"{"version": "2.0", "extensions": {"queues": {"messageEncoding": "none"}}}"#,
        )
        .unwrap();
        assert_eq!(
            host_json_queues_value(&host_json, "messageEncoding").as_deref(),
            Some("none")
        );
        let set = Settings::from_vars(&vars(&[
            ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
            ("CRM_POLL_SCHEDULE", "0 */5 * * * *"),
            (HOST_MESSAGE_ENCODING, "none"),
        ]))
        .unwrap();
        assert!(set.ops.storage.unwrap().is_local());
        assert_eq!(set.ops.crm_poll_schedule, "0 */5 * * * *");
        assert_eq!(
            set.ops.message_encoding,
            crate::storage::MessageEncoding::None
        );
        let err = Settings::from_vars(&vars(&[(HOST_MESSAGE_ENCODING, "utf8")])).unwrap_err();
        assert!(err.to_string().contains("messageEncoding"), "{err}");
    }

    #[test]
    fn missing_partner_center_settings_say_how_to_fix_them() {
        let s = Settings::from_vars(&vars(&[
            ("PARTNER_CENTER_TENANT_ID", "contoso.onmicrosoft.com"),
            (
                "PARTNER_CENTER_CLIENT_ID",
                "00000000-0000-0000-0000-000000000001",
            ),
        ]))
        .unwrap();
        assert_eq!(
            s.partner_center.app().unwrap().tenant,
            "contoso.onmicrosoft.com"
        );
        let err = s.partner_center.refresh_token().unwrap_err().to_string();
        assert!(
            err.contains("PARTNER_CENTER_REFRESH_TOKEN") && err.contains("login"),
            "{err}"
        );
    }
}
