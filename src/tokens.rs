//! Tokens for the two APIs. Partner Center's referrals API takes only delegated (app+user)
//! tokens, so its credential redeems the operator's refresh token; Dataverse uses
//! azure_identity (client secret, else managed identity). Both are `TokenCredential`s that
//! cache per scope until five minutes before expiry, with one refresh shared by concurrent
//! callers.

use std::{collections::HashMap, fmt, sync::Arc};

use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions},
    error::ErrorKind,
    http::{ClientOptions, RetryOptions, Transport},
};
use azure_identity::{
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use serde::Deserialize;
use time::OffsetDateTime;
use url::Url;

use crate::config::{ConfigError, DataverseSettings, PartnerCenterApp, PartnerCenterSettings};

/// Scope of the Partner Center referrals API.
pub const PARTNER_CENTER_SCOPE: &str = "https://api.partner.microsoft.com/.default";
/// Scope of the Partner Center webhook registration API.
pub const PARTNER_CENTER_WEBHOOK_SCOPE: &str = "https://api.partnercenter.microsoft.com/.default";

/// A token is refreshed when it has less than this left.
const REFRESH_MARGIN: time::Duration = time::Duration::minutes(5);

/// The `{authority}/{tenant}/oauth2/v2.0/{endpoint}` URL.
pub fn entra_url(authority: &Url, tenant: &str, endpoint: &str) -> Result<Url, ConfigError> {
    let tenant_ok = !tenant.is_empty()
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !tenant_ok {
        return Err(ConfigError::Invalid {
            name: "PARTNER_CENTER_TENANT_ID",
            reason: "must be a tenant GUID or a domain such as contoso.onmicrosoft.com".into(),
        });
    }
    let base = authority.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/{tenant}/oauth2/v2.0/{endpoint}")).map_err(|e| {
        ConfigError::Invalid {
            name: "AZURE_AUTHORITY_HOST",
            reason: e.to_string(),
        }
    })
}

/// Entra token endpoint success body.
#[derive(Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// Lifetime in seconds (number or string).
    #[serde(deserialize_with = "seconds")]
    pub expires_in: i64,
    /// A rotated refresh token, when the grant returns one.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Entra token endpoint error body.
#[derive(Debug, Deserialize, Default)]
pub struct EntraError {
    /// e.g. `invalid_grant`, `authorization_pending`.
    #[serde(default)]
    pub error: String,
    /// Human text (starts with an AADSTS code).
    #[serde(default)]
    pub error_description: String,
}

impl EntraError {
    /// The first line of the description (the AADSTS code and its sentence).
    pub fn first_line(&self) -> &str {
        self.error_description.lines().next().unwrap_or("")
    }
}

fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("expires_in")),
        serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom("expires_in")),
    }
}

/// Posts a form to an Entra endpoint; `Ok(Err(..))` is an OAuth error answer.
pub async fn post_form<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &Url,
    form: &[(&str, &str)],
) -> azure_core::Result<Result<T, (reqwest::StatusCode, EntraError)>> {
    let response = client
        .post(url.clone())
        .form(form)
        .send()
        .await
        .map_err(|e| azure_core::Error::with_message(ErrorKind::Io, crate::http::describe(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| azure_core::Error::with_message(ErrorKind::Io, crate::http::describe(&e)))?;
    if status.is_success() {
        let parsed = serde_json::from_slice::<T>(&body).map_err(|_| {
            azure_core::Error::with_message(
                ErrorKind::DataConversion,
                "the token endpoint answered with an unexpected body",
            )
        })?;
        return Ok(Ok(parsed));
    }
    Ok(Err((
        status,
        serde_json::from_slice(&body).unwrap_or_default(),
    )))
}

/// The error for an OAuth error answer, keeping the status for classification.
pub fn entra_failure(
    status: reqwest::StatusCode,
    error: &EntraError,
    fix: &str,
) -> azure_core::Error {
    let first_line = error.first_line();
    azure_core::Error::with_message(
        ErrorKind::HttpResponse {
            status: azure_core::http::StatusCode::from(status.as_u16()),
            error_code: Some(error.error.clone()).filter(|e| !e.is_empty()),
            raw_response: None,
        },
        format!(
            "the token endpoint answered {status} {} {first_line}; {fix}",
            error.error
        ),
    )
}

/// Delegated credential: redeems the refresh token of the Referrals Admin user.
pub struct RefreshTokenCredential {
    client: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: Option<Secret>,
    refresh_token: std::sync::Mutex<Secret>,
    cache: tokio::sync::Mutex<HashMap<String, AccessToken>>,
}

impl fmt::Debug for RefreshTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenCredential")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl RefreshTokenCredential {
    /// From the Partner Center settings; fails naming the first missing or unresolved setting.
    pub fn new(
        settings: &PartnerCenterSettings,
        client: reqwest::Client,
    ) -> Result<Arc<Self>, ConfigError> {
        let app = settings.app()?;
        let refresh = settings.refresh_token()?.clone();
        Self::for_app(&app, &settings.authority_host, refresh, client)
    }

    /// For an app registration and a given refresh token (what `login` just obtained).
    pub fn for_app(
        app: &PartnerCenterApp<'_>,
        authority_host: &Url,
        refresh_token: Secret,
        client: reqwest::Client,
    ) -> Result<Arc<Self>, ConfigError> {
        Ok(Arc::new(Self {
            client,
            token_url: entra_url(authority_host, app.tenant, "token")?,
            client_id: app.client_id.to_owned(),
            client_secret: app.client_secret.cloned(),
            refresh_token: std::sync::Mutex::new(refresh_token),
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// The newest refresh token (Entra rotates it on each redemption).
    pub fn current_refresh_token(&self) -> Secret {
        self.refresh_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn redeem(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let refresh = self.current_refresh_token();
        let scope = scopes.join(" ");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("refresh_token", refresh.secret()),
            ("scope", scope.as_str()),
        ];
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.secret()));
        }
        match post_form::<TokenResponse>(&self.client, &self.token_url, &form).await? {
            Ok(token) => {
                if let Some(rotated) = token.refresh_token.filter(|t| !t.is_empty()) {
                    *self.refresh_token.lock().unwrap_or_else(|p| p.into_inner()) =
                        Secret::new(rotated);
                }
                Ok(AccessToken::new(
                    token.access_token,
                    OffsetDateTime::now_utc() + time::Duration::seconds(token.expires_in),
                ))
            }
            Err((status, error)) => Err(entra_failure(
                status,
                &error,
                "if the refresh token expired or was revoked, run `referral-connector login` and update PARTNER_CENTER_REFRESH_TOKEN",
            )),
        }
    }
}

#[async_trait::async_trait]
impl TokenCredential for RefreshTokenCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let key = scopes.join(" ");
        let mut cache = self.cache.lock().await;
        if let Some(token) = cache.get(&key)
            && token.expires_on - REFRESH_MARGIN > OffsetDateTime::now_utc()
        {
            return Ok(token.clone());
        }
        let token = self.redeem(scopes).await?;
        cache.insert(key, token.clone());
        Ok(token)
    }
}

/// The Dataverse credential: client secret when `AZURE_CLIENT_SECRET` is set, else managed
/// identity (user-assigned when `AZURE_CLIENT_ID` is set). Requests go through `client`;
/// retries are ours, not the SDK's.
pub fn dataverse_credential(
    settings: &DataverseSettings,
    client: reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, ConfigError> {
    let mut custom = CustomConfiguration::default();
    custom.authority_host = settings
        .authority_host
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let client_options = ClientOptions {
        cloud: Some(Arc::new(CloudConfiguration::Custom(custom))),
        transport: Some(Transport::new(Arc::new(client))),
        retry: RetryOptions::none(),
        ..Default::default()
    };
    let invalid = |name: &'static str, e: azure_core::Error| ConfigError::Invalid {
        name,
        reason: e.to_string(),
    };
    match settings.client_secret.get()? {
        Some(secret) => {
            let tenant = settings.tenant_id.as_deref().ok_or(ConfigError::Missing {
                name: "AZURE_TENANT_ID",
                hint: "AZURE_CLIENT_SECRET is set, so the tenant of that app registration is needed",
            })?;
            let client_id = settings.client_id.clone().ok_or(ConfigError::Missing {
                name: "AZURE_CLIENT_ID",
                hint: "AZURE_CLIENT_SECRET is set, so the app registration's client id is needed",
            })?;
            let credential = ClientSecretCredential::new(
                tenant,
                client_id,
                secret.clone(),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(|e| invalid("AZURE_TENANT_ID", e))?;
            Ok(credential)
        }
        None => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: settings.client_id.clone().map(UserAssignedId::ClientId),
                client_options,
            };
            let credential = ManagedIdentityCredential::new(Some(options))
                .map_err(|e| invalid("AZURE_CLIENT_ID", e))?;
            Ok(credential)
        }
    }
}

/// `{DATAVERSE_URL}/.default`.
pub fn dataverse_scope(url: &Url) -> String {
    format!("{}/.default", url.as_str().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Settings;

    fn dataverse(pairs: &[(&str, &str)]) -> DataverseSettings {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Settings::from_vars(&vars).unwrap().dataverse
    }

    #[test]
    fn a_client_secret_selects_the_client_secret_credential_else_managed_identity() {
        let http = reqwest::Client::new();
        let secret = dataverse(&[
            ("AZURE_TENANT_ID", "11111111-2222-3333-4444-555555555555"),
            ("AZURE_CLIENT_ID", "dv-client"),
            ("AZURE_CLIENT_SECRET", "s3cret"),
        ]);
        let credential = dataverse_credential(&secret, http.clone()).unwrap();
        let debug = format!("{credential:?}");
        assert!(
            debug.contains("ClientSecretCredential") && !debug.contains("s3cret"),
            "{debug}"
        );
        let managed = dataverse_credential(
            &dataverse(&[("AZURE_CLIENT_ID", "mi-client")]),
            http.clone(),
        )
        .unwrap();
        assert!(
            format!("{managed:?}").contains("ManagedIdentityCredential"),
            "{managed:?}"
        );
        let missing = dataverse_credential(&dataverse(&[("AZURE_CLIENT_SECRET", "s3cret")]), http)
            .unwrap_err();
        assert!(missing.to_string().contains("AZURE_TENANT_ID"), "{missing}");
    }

    #[test]
    fn tenant_ids_are_checked_before_they_go_into_a_url() {
        let authority = Url::parse("https://login.microsoftonline.com").unwrap();
        assert_eq!(
            entra_url(&authority, "contoso.onmicrosoft.com", "token")
                .unwrap()
                .as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        for bad in ["", "a/b", "x?y", "../common"] {
            assert!(entra_url(&authority, bad, "token").is_err(), "{bad}");
        }
    }
}
