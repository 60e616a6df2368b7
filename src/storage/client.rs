//! The client of the app's storage account: one `reqwest::Client`, the queue and blob
//! endpoints from the settings, and every request signed with SharedKey or carrying an Entra
//! token for `https://storage.azure.com/.default`. Operations live in `queue.rs` and
//! `blob.rs`; this module sends, authorizes and classifies answers. There are no in-process
//! retries: a put that timed out may have been stored, so the commands decide what to redo.

use std::{fmt, sync::Arc};

use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::TokenCredential,
    http::{ClientOptions, RetryOptions, Transport},
};
use azure_identity::{
    ClientSecretCredential, ClientSecretCredentialOptions, DeveloperToolsCredential,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};
use reqwest::{Method, header::HeaderMap};
use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};
use url::Url;

use super::{
    account::{AccountKey, IdentityCredential, StorageAccount, StorageAuth, StorageConfigError},
    shared_key,
};
use crate::config::Settings;

/// The Entra scope of the storage data plane.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// `x-ms-version` of every request (supported by Azure and by Azurite 3.35).
const API_VERSION: &str = "2021-12-02";
/// The HTTP date format of `x-ms-date` and `Date`.
const HTTP_DATE: &[BorrowedFormatItem<'static>] = format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

/// Formats an instant as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(HTTP_DATE)
        .unwrap_or_default()
}

/// Parses an HTTP date as the storage services send it.
pub fn parse_http_date(text: &str) -> Option<OffsetDateTime> {
    time::PrimitiveDateTime::parse(text.trim(), HTTP_DATE)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

/// A storage call that did not succeed. Messages name the call, the endpoint and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The settings do not describe a usable account.
    #[error(transparent)]
    Config(#[from] StorageConfigError),
    /// The account refused the credentials (401/403).
    #[error("{what}: storage at {endpoint} answered {status} {code}; {fix}")]
    Denied {
        /// The call.
        what: &'static str,
        /// The service endpoint.
        endpoint: String,
        /// 401 or 403.
        status: u16,
        /// `x-ms-error-code`.
        code: String,
        /// What to change.
        fix: &'static str,
    },
    /// The queue, container, blob or message does not exist (404).
    #[error("{what}: not found ({code})")]
    NotFound {
        /// The call.
        what: &'static str,
        /// `x-ms-error-code` (`QueueNotFound`, `BlobNotFound`, `MessageNotFound`, …).
        code: String,
    },
    /// No answer: connection refused, DNS, timeout.
    #[error("{what}: cannot reach storage at {endpoint} ({detail}); {fix}")]
    Unreachable {
        /// The call.
        what: &'static str,
        /// The service endpoint.
        endpoint: String,
        /// The transport error.
        detail: String,
        /// What to check.
        fix: &'static str,
    },
    /// No token for the identity-based connection.
    #[error("{what}: no storage token ({message}); {fix}")]
    Token {
        /// The call.
        what: &'static str,
        /// The credential's first line (never a secret).
        message: String,
        /// How to sign in.
        fix: &'static str,
    },
    /// Any other answer.
    #[error("{what}: storage answered {status} {code}")]
    Status {
        /// The call.
        what: &'static str,
        /// The status code.
        status: u16,
        /// `x-ms-error-code`.
        code: String,
    },
    /// A success answer that is not what the REST API documents.
    #[error("{what}: unexpected answer from storage: {detail}")]
    Unexpected {
        /// The call.
        what: &'static str,
        /// What was missing or malformed.
        detail: String,
    },
}

enum Authorizer {
    SharedKey { account: String, key: AccountKey },
    Token(Arc<dyn TokenCredential>, &'static str),
}

/// The app's storage account.
pub struct StorageClient {
    http: reqwest::Client,
    account: StorageAccount,
    authorizer: Authorizer,
}

impl fmt::Debug for StorageClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageClient")
            .field("account", &self.account.describe())
            .finish_non_exhaustive()
    }
}

/// A success answer: headers, body text, and the service's clock.
pub(crate) struct Answer {
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
    /// The `Date` header: the service's time when it answered.
    pub(crate) date: Option<OffsetDateTime>,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl StorageClient {
    /// A client for `account`; an identity-based account gets its azure_identity credential,
    /// which signs in at `authority_host` through `http`.
    pub fn new(
        account: StorageAccount,
        http: reqwest::Client,
        authority_host: &Url,
    ) -> Result<Self, StorageError> {
        let authorizer = match account.auth() {
            StorageAuth::SharedKey { account, key } => Authorizer::SharedKey {
                account: account.clone(),
                key: key.clone(),
            },
            StorageAuth::Identity(identity) => {
                let fix = token_fix(identity);
                Authorizer::Token(credential(identity, http.clone(), authority_host)?, fix)
            }
        };
        Ok(Self {
            http,
            account,
            authorizer,
        })
    }

    /// The client the settings describe (`AzureWebJobsStorage`, `AZURE_AUTHORITY_HOST`).
    pub fn from_settings(settings: &Settings) -> Result<Self, StorageError> {
        let account = settings.ops.storage.clone()?;
        let http = crate::http::client(&settings.http).map_err(|e| StorageError::Unexpected {
            what: "building the HTTP client",
            detail: e.to_string(),
        })?;
        Self::new(account, http, &settings.dataverse.authority_host)
    }

    /// The account.
    pub fn account(&self) -> &StorageAccount {
        &self.account
    }

    /// `<queue endpoint>/<path>` or `<blob endpoint>/<path>`, with query pairs.
    pub(crate) fn url(&self, blob: bool, path: &str, query: &[(&str, &str)]) -> Url {
        let base = if blob {
            self.account.blob_endpoint()
        } else {
            self.account.queue_endpoint()
        };
        let mut url = base.clone();
        let joined = format!("{}/{}", url.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends one request. `body` goes with its content type; 2xx is `Ok`, everything else is
    /// classified into a [`StorageError`].
    pub(crate) async fn send(
        &self,
        what: &'static str,
        method: Method,
        url: Url,
        body: Option<(&str, String)>,
        extra: &[(&'static str, String)],
    ) -> Result<Answer, StorageError> {
        let endpoint = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default())
            + &url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let (content_type, body) = match body {
            Some((content_type, body)) => (Some(content_type), body),
            None => (None, String::new()),
        };
        let mut headers: Vec<(&str, String)> = vec![
            ("x-ms-date", http_date(OffsetDateTime::now_utc())),
            ("x-ms-version", API_VERSION.to_owned()),
            ("Content-Length", body.len().to_string()),
        ];
        if let Some(content_type) = content_type {
            headers.push(("Content-Type", content_type.to_owned()));
        }
        headers.extend(extra.iter().cloned());
        let authorization = match &self.authorizer {
            Authorizer::SharedKey { account, key } => {
                let pairs: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let text = shared_key::string_to_sign(account, method.as_str(), &url, &pairs);
                let signature =
                    shared_key::signature(key, &text).map_err(|e| StorageError::Unexpected {
                        what,
                        detail: format!("signing failed: {e}"),
                    })?;
                format!("SharedKey {account}:{signature}")
            }
            Authorizer::Token(credential, fix) => {
                let token = credential
                    .get_token(&[STORAGE_SCOPE], None)
                    .await
                    .map_err(|e| StorageError::Token {
                        what,
                        message: crate::http::token_error(&e).to_string(),
                        fix,
                    })?;
                format!("Bearer {}", token.token.secret())
            }
        };
        let mut request = self
            .http
            .request(method, url)
            .header("Authorization", authorization);
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| StorageError::Unreachable {
                what,
                endpoint: endpoint.clone(),
                detail: crate::http::describe(&e),
                fix: if self.account.is_local() {
                    "start Azurite (scripts/dev.sh starts it), or point AzureWebJobsStorage at the app's storage account"
                } else {
                    "check the account name in AzureWebJobsStorage and the storage account's network rules"
                },
            })?;
        let status = response.status();
        let headers = response.headers().clone();
        let date = headers
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        let body = response
            .text()
            .await
            .map_err(|e| StorageError::Unreachable {
                what,
                endpoint: endpoint.clone(),
                detail: crate::http::describe(&e),
                fix: "try again",
            })?;
        let code = headers
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        match status.as_u16() {
            200..=299 => Ok(Answer {
                headers,
                body,
                date,
            }),
            401 | 403 => Err(StorageError::Denied {
                what,
                endpoint,
                status: status.as_u16(),
                code,
                fix: match &self.authorizer {
                    Authorizer::SharedKey { .. } => {
                        "check AccountName and AccountKey in AzureWebJobsStorage (the storage account's Access keys; a rotated key needs the new connection string)"
                    }
                    Authorizer::Token(..) => {
                        "give the signed-in identity the roles Storage Queue Data Contributor and Storage Blob Data Reader on the storage account (assignments take a few minutes to apply)"
                    }
                },
            }),
            404 => Err(StorageError::NotFound { what, code }),
            other => Err(StorageError::Status {
                what,
                status: other,
                code,
            }),
        }
    }
}

fn token_fix(identity: &IdentityCredential) -> &'static str {
    match identity {
        IdentityCredential::ManagedIdentity { .. } => {
            "AzureWebJobsStorage__credential=managedidentity works only inside Azure; to run this command on your machine leave it out of local.settings.json and sign in with `az login`"
        }
        IdentityCredential::ClientSecret { .. } => {
            "check AzureWebJobsStorage__tenantId, __clientId and __clientSecret"
        }
        IdentityCredential::DeveloperTools => {
            "sign in with `az login` (the Azure CLI), or use the storage connection string in AzureWebJobsStorage"
        }
    }
}

fn credential(
    identity: &IdentityCredential,
    http: reqwest::Client,
    authority_host: &Url,
) -> Result<Arc<dyn TokenCredential>, StorageError> {
    let mut custom = CustomConfiguration::default();
    custom.authority_host = authority_host.as_str().trim_end_matches('/').to_owned();
    let client_options = ClientOptions {
        cloud: Some(Arc::new(CloudConfiguration::Custom(custom))),
        transport: Some(Transport::new(Arc::new(http))),
        retry: RetryOptions::none(),
        ..Default::default()
    };
    let invalid = |name: &'static str, e: azure_core::Error| {
        StorageError::Config(StorageConfigError::Invalid {
            name,
            reason: e.to_string(),
        })
    };
    Ok(match identity {
        IdentityCredential::ManagedIdentity { client_id } => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options,
            }))
            .map_err(|e| invalid("AzureWebJobsStorage__clientId", e))?
        }
        IdentityCredential::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => ClientSecretCredential::new(
            tenant_id,
            client_id.clone(),
            secret.clone(),
            Some(ClientSecretCredentialOptions { client_options }),
        )
        .map_err(|e| invalid("AzureWebJobsStorage__tenantId", e))?,
        IdentityCredential::DeveloperTools => DeveloperToolsCredential::new(None)
            .map_err(|e| invalid("AzureWebJobsStorage__credential", e))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_round_trip() {
        let t = OffsetDateTime::from_unix_timestamp(784_111_777).unwrap();
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn urls_keep_the_path_style_account() {
        let account = StorageAccount::parse_connection_string(
            "AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;BlobEndpoint=https://st1.blob.core.windows.net/",
        )
        .unwrap();
        let client = StorageClient::new(
            account,
            reqwest::Client::new(),
            &Url::parse("https://login.microsoftonline.com").unwrap(),
        )
        .unwrap();
        assert_eq!(
            client
                .url(false, "referral-sync/messages", &[("peekonly", "true")])
                .as_str(),
            "http://127.0.0.1:9/devstoreaccount1/referral-sync/messages?peekonly=true"
        );
        assert_eq!(
            client
                .url(true, "referral-connector/crm-changes.json", &[])
                .as_str(),
            "https://st1.blob.core.windows.net/referral-connector/crm-changes.json"
        );
    }
}
