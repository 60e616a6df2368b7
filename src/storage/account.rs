//! Which storage account the app uses and how to sign in to it, parsed once from the settings
//! the Functions host reads: the `AzureWebJobsStorage` connection string (an account key,
//! Azurite's `UseDevelopmentStorage=true`, explicit `QueueEndpoint=`/`BlobEndpoint=`), or the
//! identity-based `AzureWebJobsStorage__accountName` / `__queueServiceUri` / `__blobServiceUri`
//! / `__credential` / `__clientId` settings.

use std::fmt;

use azure_core::credentials::{Secret, SecretBytes};
use base64::Engine;
use url::Url;

use crate::config::is_key_vault_reference;

/// The setting that holds the app's storage connection.
pub const SETTING: &str = "AzureWebJobsStorage";
/// Azurite's development account.
pub const DEVELOPMENT_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (documented by Microsoft; not a secret).
const DEVELOPMENT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Why the storage settings cannot be used; each names the setting and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageConfigError {
    /// Neither the connection string nor an identity-based account is set.
    #[error(
        "setting AzureWebJobsStorage is not set: set it to the Function App's storage connection string \
         (`UseDevelopmentStorage=true` for Azurite), or set AzureWebJobsStorage__accountName for an \
         identity-based connection; with --settings local.settings.json it is read from that file"
    )]
    NotSet,
    /// A value that does not parse.
    #[error("setting {name} is invalid: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong, with the fix.
        reason: String,
    },
}

/// A decoded account key; `Debug` never shows it.
#[derive(Clone)]
pub struct AccountKey(SecretBytes);

impl AccountKey {
    /// Decodes the base64 key of a connection string.
    pub fn parse(base64_key: &str) -> Result<Self, StorageConfigError> {
        base64::engine::general_purpose::STANDARD
            .decode(base64_key.trim())
            .ok()
            .filter(|key| !key.is_empty())
            .map(|key| Self(SecretBytes::new(key)))
            .ok_or_else(|| invalid(SETTING, "AccountKey is not base64: copy the key again from the storage account's Access keys"))
    }

    /// The key bytes, for signing.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(***)")
    }
}

/// Which Entra credential signs in to an identity-based account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityCredential {
    /// `__credential=managedidentity`: the Function App's identity (user-assigned with `__clientId`).
    ManagedIdentity {
        /// `AzureWebJobsStorage__clientId`.
        client_id: Option<String>,
    },
    /// `__tenantId`, `__clientId` and `__clientSecret`: an app registration.
    ClientSecret {
        /// `AzureWebJobsStorage__tenantId`.
        tenant_id: String,
        /// `AzureWebJobsStorage__clientId`.
        client_id: String,
        /// `AzureWebJobsStorage__clientSecret`.
        secret: Secret,
    },
    /// No credential named: the operator's Azure CLI (or azd) sign-in.
    DeveloperTools,
}

/// How requests to the account are authorized.
#[derive(Debug, Clone)]
pub enum StorageAuth {
    /// SharedKey with the account key of the connection string.
    SharedKey {
        /// The account name that is signed.
        account: String,
        /// The key.
        key: AccountKey,
    },
    /// An Entra token for `https://storage.azure.com/.default`.
    Identity(IdentityCredential),
}

/// The app's storage account: its queue and blob endpoints and how to sign in.
#[derive(Debug, Clone)]
pub struct StorageAccount {
    queue_endpoint: Url,
    blob_endpoint: Url,
    auth: StorageAuth,
}

fn invalid(name: &'static str, reason: impl Into<String>) -> StorageConfigError {
    StorageConfigError::Invalid {
        name,
        reason: reason.into(),
    }
}

/// An endpoint: https, or http only on loopback (Azurite); no query (a SAS is not supported).
fn endpoint(name: &'static str, what: &str, raw: &str) -> Result<Url, StorageConfigError> {
    let text = raw.trim().trim_end_matches('/');
    let url = Url::parse(text).map_err(|e| {
        invalid(
            name,
            format!("{what} `{text}` is not an absolute URL ({e})"),
        )
    })?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if !(url.scheme() == "https" || url.scheme() == "http" && loopback) {
        return Err(invalid(
            name,
            format!("{what} `{text}` must be https (http only for 127.0.0.1, e.g. Azurite)"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || url.host_str().is_none() {
        return Err(invalid(
            name,
            format!(
                "{what} `{text}` must be a plain service URL without query (SAS tokens are not supported)"
            ),
        ));
    }
    Ok(url)
}

impl StorageAccount {
    /// Reads the account from settings by name (`lookup` gives a trimmed, non-empty value).
    /// The connection string wins over the identity-based settings, as in the host.
    pub fn from_settings(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, StorageConfigError> {
        if let Some(text) = lookup(SETTING) {
            if is_key_vault_reference(&text) {
                return Err(invalid(
                    SETTING,
                    "holds an unresolved Key Vault reference: give the app's identity read access to the secret, or put the connection string itself in local.settings.json",
                ));
            }
            return Self::parse_connection_string(&text);
        }
        Self::identity_based(&lookup)
    }

    /// Parses a storage connection string (`Key=Value;…`, keys in any casing).
    pub fn parse_connection_string(text: &str) -> Result<Self, StorageConfigError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(invalid(
                    SETTING,
                    format!(
                        "`{}` is not Key=Value; a connection string reads like DefaultEndpointsProtocol=https;AccountName=<name>;AccountKey=<key>;EndpointSuffix=core.windows.net",
                        part.chars().take(40).collect::<String>()
                    ),
                ));
            };
            pairs.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        if get("sharedaccesssignature").is_some() {
            return Err(invalid(
                SETTING,
                "SharedAccessSignature connection strings are not supported: use the account key connection string, or an identity-based connection (AzureWebJobsStorage__accountName)",
            ));
        }
        if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            if get("developmentstorageproxyuri").is_some() {
                return Err(invalid(
                    SETTING,
                    "DevelopmentStorageProxyUri is not supported: give QueueEndpoint= and BlobEndpoint= instead",
                ));
            }
            return Ok(Self {
                queue_endpoint: endpoint(
                    SETTING,
                    "queue endpoint",
                    &format!("http://127.0.0.1:10001/{DEVELOPMENT_ACCOUNT}"),
                )?,
                blob_endpoint: endpoint(
                    SETTING,
                    "blob endpoint",
                    &format!("http://127.0.0.1:10000/{DEVELOPMENT_ACCOUNT}"),
                )?,
                auth: StorageAuth::SharedKey {
                    account: DEVELOPMENT_ACCOUNT.to_owned(),
                    key: AccountKey::parse(DEVELOPMENT_KEY)?,
                },
            });
        }
        let account = get("accountname").ok_or_else(|| {
            invalid(
                SETTING,
                "AccountName is missing: copy the connection string from the storage account's Access keys, or use UseDevelopmentStorage=true for Azurite",
            )
        })?;
        let key = AccountKey::parse(get("accountkey").ok_or_else(|| {
            invalid(
                SETTING,
                "AccountKey is missing: copy the connection string from the storage account's Access keys",
            )
        })?)?;
        let protocol = get("defaultendpointsprotocol").unwrap_or("https");
        let suffix = get("endpointsuffix").unwrap_or("core.windows.net");
        let service = |explicit: &str, service: &str| match get(explicit) {
            Some(url) => endpoint(SETTING, &format!("{service} endpoint"), url),
            None => endpoint(
                SETTING,
                &format!("{service} endpoint"),
                &format!("{protocol}://{account}.{service}.{suffix}"),
            ),
        };
        Ok(Self {
            queue_endpoint: service("queueendpoint", "queue")?,
            blob_endpoint: service("blobendpoint", "blob")?,
            auth: StorageAuth::SharedKey {
                account: account.to_owned(),
                key,
            },
        })
    }

    fn identity_based(
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, StorageConfigError> {
        const ACCOUNT: &str = "AzureWebJobsStorage__accountName";
        const QUEUE: &str = "AzureWebJobsStorage__queueServiceUri";
        const BLOB: &str = "AzureWebJobsStorage__blobServiceUri";
        const CREDENTIAL: &str = "AzureWebJobsStorage__credential";
        const CLIENT_ID: &str = "AzureWebJobsStorage__clientId";
        const TENANT_ID: &str = "AzureWebJobsStorage__tenantId";
        const CLIENT_SECRET: &str = "AzureWebJobsStorage__clientSecret";
        let account = lookup(ACCOUNT);
        let (queue, blob) = (lookup(QUEUE), lookup(BLOB));
        if account.is_none() && queue.is_none() && blob.is_none() {
            return Err(StorageConfigError::NotSet);
        }
        if let Some(name) = &account {
            let valid = (3..=24).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            if !valid {
                return Err(invalid(
                    ACCOUNT,
                    format!(
                        "`{name}` is not a storage account name (3-24 lowercase letters and digits)"
                    ),
                ));
            }
        }
        let service = |name: &'static str, given: Option<String>, service: &str| match (
            given, &account,
        ) {
            (Some(url), _) => endpoint(name, &format!("{service} service URI"), &url),
            (None, Some(account)) => endpoint(
                ACCOUNT,
                &format!("{service} endpoint"),
                &format!("https://{account}.{service}.core.windows.net"),
            ),
            (None, None) => Err(invalid(
                name,
                format!(
                    "is needed when AzureWebJobsStorage__accountName is not set, e.g. https://<account>.{service}.core.windows.net"
                ),
            )),
        };
        let queue_endpoint = service(QUEUE, queue, "queue")?;
        let blob_endpoint = service(BLOB, blob, "blob")?;
        let client_id = lookup(CLIENT_ID);
        let credential = match lookup(CREDENTIAL) {
            Some(kind) if kind.eq_ignore_ascii_case("managedidentity") => {
                IdentityCredential::ManagedIdentity { client_id }
            }
            Some(other) => {
                return Err(invalid(
                    CREDENTIAL,
                    format!(
                        "`{other}` is not supported: use managedidentity, or leave it out to sign in with the Azure CLI (`az login`)"
                    ),
                ));
            }
            None => match lookup(CLIENT_SECRET) {
                Some(secret) => IdentityCredential::ClientSecret {
                    tenant_id: lookup(TENANT_ID).ok_or_else(|| {
                        invalid(
                            TENANT_ID,
                            "is needed with AzureWebJobsStorage__clientSecret",
                        )
                    })?,
                    client_id: client_id.ok_or_else(|| {
                        invalid(
                            CLIENT_ID,
                            "is needed with AzureWebJobsStorage__clientSecret",
                        )
                    })?,
                    secret: Secret::new(secret),
                },
                None => IdentityCredential::DeveloperTools,
            },
        };
        Ok(Self {
            queue_endpoint,
            blob_endpoint,
            auth: StorageAuth::Identity(credential),
        })
    }

    /// The Queue service endpoint (`https://<account>.queue.core.windows.net`, or Azurite's
    /// path-style `http://127.0.0.1:<port>/devstoreaccount1`).
    pub fn queue_endpoint(&self) -> &Url {
        &self.queue_endpoint
    }

    /// The Blob service endpoint.
    pub fn blob_endpoint(&self) -> &Url {
        &self.blob_endpoint
    }

    /// How requests are authorized.
    pub fn auth(&self) -> &StorageAuth {
        &self.auth
    }

    /// Whether the account is a local emulator (its endpoints are on loopback).
    pub fn is_local(&self) -> bool {
        matches!(
            self.queue_endpoint.host_str(),
            Some("127.0.0.1" | "localhost" | "[::1]")
        )
    }

    /// One line for operators: where the account is and how it is reached (no key).
    pub fn describe(&self) -> String {
        let how = match &self.auth {
            StorageAuth::SharedKey { account, .. } => format!("account {account}, account key"),
            StorageAuth::Identity(IdentityCredential::ManagedIdentity { .. }) => {
                "managed identity".to_owned()
            }
            StorageAuth::Identity(IdentityCredential::ClientSecret { client_id, .. }) => {
                format!("app registration {client_id}")
            }
            StorageAuth::Identity(IdentityCredential::DeveloperTools) => {
                "Azure CLI sign-in".to_owned()
            }
        };
        format!(
            "{} ({how})",
            self.queue_endpoint.as_str().trim_end_matches('/')
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<StorageAccount, StorageConfigError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        StorageAccount::from_settings(|name| vars.get(name).cloned())
    }

    fn endpoints(account: &StorageAccount) -> (&str, &str) {
        (
            account.queue_endpoint().as_str(),
            account.blob_endpoint().as_str(),
        )
    }

    fn signed_account(account: &StorageAccount) -> &str {
        match account.auth() {
            StorageAuth::SharedKey { account, .. } => account,
            StorageAuth::Identity(_) => panic!("expected an account key"),
        }
    }

    #[test]
    fn connection_strings_give_endpoints_and_the_signed_account() {
        let key = "a2V5";
        let cases: [(String, &str, &str, &str); 5] = [
            (
                "UseDevelopmentStorage=true".into(),
                "http://127.0.0.1:10001/devstoreaccount1",
                "http://127.0.0.1:10000/devstoreaccount1",
                "devstoreaccount1",
            ),
            (
                format!(
                    "DefaultEndpointsProtocol=https;AccountName=stcontoso;AccountKey={key};EndpointSuffix=core.windows.net"
                ),
                "https://stcontoso.queue.core.windows.net/",
                "https://stcontoso.blob.core.windows.net/",
                "stcontoso",
            ),
            (
                "accountname=stcontoso;accountkey=a2V5cw==;endpointsuffix=core.chinacloudapi.cn;"
                    .to_owned(),
                "https://stcontoso.queue.core.chinacloudapi.cn/",
                "https://stcontoso.blob.core.chinacloudapi.cn/",
                "stcontoso",
            ),
            (
                format!(
                    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint=http://127.0.0.1:41000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:41001/devstoreaccount1/;"
                ),
                "http://127.0.0.1:41001/devstoreaccount1",
                "http://127.0.0.1:41000/devstoreaccount1",
                "devstoreaccount1",
            ),
            (
                format!(
                    " AccountName = st1 ; AccountKey = {key} ; QueueEndpoint=https://q.example.test"
                ),
                "https://q.example.test/",
                "https://st1.blob.core.windows.net/",
                "st1",
            ),
        ];
        for (text, queue, blob, account) in cases {
            let parsed = StorageAccount::parse_connection_string(&text)
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(endpoints(&parsed), (queue, blob), "{text}");
            assert_eq!(signed_account(&parsed), account, "{text}");
        }
    }

    #[test]
    fn bad_connection_strings_say_what_to_fix() {
        let cases = [
            ("AccountName=st1", "AccountKey is missing"),
            ("AccountKey=a2V5", "AccountName is missing"),
            ("AccountName=st1;AccountKey=***", "AccountKey is not base64"),
            (
                "BlobEndpoint=https://st1.blob.core.windows.net;SharedAccessSignature=sv=2022&sig=x",
                "SharedAccessSignature connection strings are not supported",
            ),
            (
                "AccountName=st1;AccountKey=a2V5;QueueEndpoint=http://st1.example.test",
                "must be https",
            ),
            (
                "AccountName=st1;AccountKey=a2V5;QueueEndpoint=https://q.test/?sv=1",
                "without query",
            ),
            ("just-a-word", "is not Key=Value"),
        ];
        for (text, expected) in cases {
            let err = StorageAccount::parse_connection_string(text)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("setting AzureWebJobsStorage is invalid") && err.contains(expected),
                "{text}: {err}"
            );
            assert!(!err.contains("sig=x"), "a SAS is never echoed: {err}");
        }
    }

    #[test]
    fn identity_based_settings_pick_the_endpoints_and_the_credential() {
        let account = from(&[
            ("AzureWebJobsStorage__accountName", "stcontoso"),
            ("AzureWebJobsStorage__credential", "managedidentity"),
            ("AzureWebJobsStorage__clientId", "mi-client"),
        ])
        .unwrap();
        assert_eq!(
            endpoints(&account),
            (
                "https://stcontoso.queue.core.windows.net/",
                "https://stcontoso.blob.core.windows.net/"
            )
        );
        assert!(matches!(
            account.auth(),
            StorageAuth::Identity(IdentityCredential::ManagedIdentity { client_id: Some(id) }) if id == "mi-client"
        ));

        let uris = from(&[
            (
                "AzureWebJobsStorage__queueServiceUri",
                "https://127.0.0.1:9/devstoreaccount1",
            ),
            (
                "AzureWebJobsStorage__blobServiceUri",
                "https://127.0.0.1:8/devstoreaccount1",
            ),
            ("AzureWebJobsStorage__tenantId", "t1"),
            ("AzureWebJobsStorage__clientId", "app1"),
            ("AzureWebJobsStorage__clientSecret", "s3cret"),
        ])
        .unwrap();
        assert_eq!(
            endpoints(&uris),
            (
                "https://127.0.0.1:9/devstoreaccount1",
                "https://127.0.0.1:8/devstoreaccount1"
            )
        );
        assert!(matches!(
            uris.auth(),
            StorageAuth::Identity(IdentityCredential::ClientSecret { tenant_id, .. }) if tenant_id == "t1"
        ));
        assert!(!format!("{uris:?}").contains("s3cret"));

        let cli = from(&[("AzureWebJobsStorage__accountName", "stcontoso")]).unwrap();
        assert!(matches!(
            cli.auth(),
            StorageAuth::Identity(IdentityCredential::DeveloperTools)
        ));

        let both = from(&[
            ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
            ("AzureWebJobsStorage__accountName", "stcontoso"),
        ])
        .unwrap();
        assert!(both.is_local(), "the connection string wins");
    }

    #[test]
    fn identity_based_mistakes_name_the_setting() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[], "setting AzureWebJobsStorage is not set"),
            (
                &[("AzureWebJobsStorage__accountName", "St-Contoso")],
                "AzureWebJobsStorage__accountName is invalid",
            ),
            (
                &[("AzureWebJobsStorage__queueServiceUri", "https://q.test")],
                "AzureWebJobsStorage__blobServiceUri is invalid",
            ),
            (
                &[
                    ("AzureWebJobsStorage__accountName", "st1"),
                    ("AzureWebJobsStorage__credential", "password"),
                ],
                "AzureWebJobsStorage__credential is invalid",
            ),
            (
                &[
                    ("AzureWebJobsStorage__accountName", "st1"),
                    ("AzureWebJobsStorage__clientSecret", "s"),
                ],
                "AzureWebJobsStorage__tenantId is invalid",
            ),
            (
                &[(
                    "AzureWebJobsStorage",
                    "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/s/)",
                )],
                "unresolved Key Vault reference",
            ),
        ];
        for (pairs, expected) in cases {
            let err = from(pairs).unwrap_err().to_string();
            assert!(err.contains(expected), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn keys_never_show_in_debug_or_descriptions() {
        let account = StorageAccount::parse_connection_string(
            "AccountName=st1;AccountKey=c2VjcmV0LWtleS1ieXRlcw==",
        )
        .unwrap();
        let shown = format!("{account:?} {}", account.describe());
        assert!(
            !shown.contains("c2VjcmV0") && !shown.contains("secret-key"),
            "{shown}"
        );
        assert_eq!(
            account.describe(),
            "https://st1.queue.core.windows.net (account st1, account key)"
        );
    }
}
