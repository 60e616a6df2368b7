//! Outbound HTTP shared by every client: one way to build a `reqwest::Client` (OpenSSL via
//! native-tls, so `SSL_CERT_FILE` works), the transient/permanent classification, and the
//! short in-process retry that honours `Retry-After` within a budget.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use azure_core::credentials::TokenCredential;
use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header::HeaderMap};
use url::Url;

use crate::config::HttpSettings;

/// The user agent sent on every request.
pub const USER_AGENT: &str = concat!("referral-connector/", env!("CARGO_PKG_VERSION"));

/// A client builder with the shared timeouts, user agent and extra roots.
pub fn client_builder(settings: &HttpSettings) -> Result<reqwest::ClientBuilder, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .tls_backend_native()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none());
    let mut roots = Vec::new();
    for pem in &settings.extra_root_pems {
        roots.push(reqwest::Certificate::from_pem(pem)?);
    }
    if !roots.is_empty() {
        builder = builder.tls_certs_merge(roots);
    }
    Ok(builder)
}

/// The shared client the settings describe.
pub fn client(settings: &HttpSettings) -> Result<reqwest::Client, crate::config::ConfigError> {
    client_with(settings, |builder| builder)
}

/// A client the settings describe, with `customize` applied before it is built.
pub fn client_with(
    settings: &HttpSettings,
    customize: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, crate::config::ConfigError> {
    client_builder(settings)
        .and_then(|builder| customize(builder).build())
        .map_err(|e| crate::config::ConfigError::Invalid {
            name: "SSL_CERT_FILE",
            reason: format!("the HTTP client cannot be built: {e}"),
        })
}

/// A short description of a transport error, for logs and operator output.
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "response could not be read"
    } else if error.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Transient: 408, 429 and 5xx (Vector `HttpRetryLogic`, reqwest-retry).
pub fn is_transient_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// `Retry-After` in seconds (HTTP-date forms are treated as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Why a call did not produce a usable response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The service answered with a status the caller did not expect.
    #[error("HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        /// Status code.
        status: StatusCode,
        /// Start of the response body (services put their error there; never a token).
        body: String,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// Timeout, connection error, or a body that could not be read.
    #[error("{0}")]
    Transport(String),
    /// A token could not be obtained.
    #[error("token: {message}")]
    Token {
        /// What went wrong (no secret).
        message: String,
        /// Whether trying again later may help.
        transient: bool,
    },
    /// The response body is not what the API documents.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// The request URL could not be built from the configured base.
    #[error("cannot build the request URL: {0}")]
    Url(String),
}

impl CallError {
    /// Whether trying again may help: 408/429/5xx, transport errors, token endpoint outages.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => is_transient_status(*status),
            Self::Transport(_) => true,
            Self::Token { transient, .. } => *transient,
            Self::Decode(_) | Self::Url(_) => false,
        }
    }

    /// The status code, when the service answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Reads a non-success response into an error (body truncated to 512 characters).
    pub async fn from_response(response: Response) -> Self {
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        Self::Status {
            status,
            body: body.chars().take(512).collect(),
            retry_after,
        }
    }
}

impl From<reqwest::Error> for CallError {
    fn from(e: reqwest::Error) -> Self {
        Self::Transport(describe(&e))
    }
}

/// The JSON body of a successful response; any other status becomes a [`CallError`].
pub async fn json_body<T: serde::de::DeserializeOwned>(response: Response) -> Result<T, CallError> {
    if !response.status().is_success() {
        return Err(CallError::from_response(response).await);
    }
    decode(response).await
}

/// A response body decoded as JSON.
pub async fn decode<T: serde::de::DeserializeOwned>(response: Response) -> Result<T, CallError> {
    response
        .json()
        .await
        .map_err(|e| CallError::Decode(describe(&e)))
}

/// Classifies a token error from azure_identity or our refresh-token credential.
pub fn token_error(error: &azure_core::Error) -> CallError {
    let mut transient = false;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(azure) = e.downcast_ref::<azure_core::Error>() {
            match azure.kind() {
                azure_core::error::ErrorKind::HttpResponse { status, .. } => {
                    transient = is_transient_status(
                        StatusCode::from_u16(u16::from(*status)).unwrap_or(StatusCode::BAD_GATEWAY),
                    );
                    break;
                }
                azure_core::error::ErrorKind::Io | azure_core::error::ErrorKind::Connection => {
                    transient = true;
                    break;
                }
                _ => {}
            }
        }
        if e.downcast_ref::<reqwest::Error>().is_some()
            || e.downcast_ref::<std::io::Error>().is_some()
        {
            transient = true;
            break;
        }
        current = e.source();
    }
    CallError::Token {
        message: error
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        transient,
    }
}

/// `base` (a configured API root, with or without a trailing `/`) followed by `path`, which
/// starts with `/` and may carry a query.
pub fn join_url(base: &Url, path: &str) -> Result<Url, CallError> {
    let base = base.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}{path}")).map_err(|e| CallError::Url(format!("{base}{path}: {e}")))
}

/// Sends calls to one API on behalf of a credential: every attempt carries a fresh bearer
/// token and `Accept: application/json`, and transient failures are retried by the policy.
#[derive(Debug, Clone)]
pub struct AuthorizedClient {
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    retry: RetryPolicy,
}

impl AuthorizedClient {
    /// Wraps the shared HTTP client.
    pub fn new(
        http: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            credential,
            retry,
        }
    }

    /// Gets a token for `scope`, sending nothing (used by `check`).
    pub async fn token(&self, scope: &str) -> Result<(), CallError> {
        self.credential
            .get_token(&[scope], None)
            .await
            .map(|_| ())
            .map_err(|e| token_error(&e))
    }

    /// Sends one logical call with retries; `build` adds the call's own parts to each attempt.
    pub async fn send(
        &self,
        what: &str,
        method: Method,
        url: Url,
        scope: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, CallError> {
        self.send_with(&self.retry, what, method, url, scope, build)
            .await
    }

    /// Sends a call that must not be repeated once the service may have acted on it (a
    /// create): only a 429, which the service refused before doing anything, is retried.
    pub async fn send_once(
        &self,
        what: &str,
        method: Method,
        url: Url,
        scope: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, CallError> {
        let policy = RetryPolicy {
            throttling_only: true,
            ..self.retry.clone()
        };
        self.send_with(&policy, what, method, url, scope, build)
            .await
    }

    async fn send_with(
        &self,
        policy: &RetryPolicy,
        what: &str,
        method: Method,
        url: Url,
        scope: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, CallError> {
        policy
            .send(what, || {
                let request = build(self.http.request(method.clone(), url.clone()));
                async move {
                    let token = self
                        .credential
                        .get_token(&[scope], None)
                        .await
                        .map_err(|e| token_error(&e))?;
                    Ok(request
                        .bearer_auth(token.token.secret())
                        .header("Accept", "application/json")
                        .send()
                        .await?)
                }
            })
            .await
    }
}

/// How long and how often one invocation retries in-process.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total time retries may wait.
    pub budget: Duration,
    /// First delay when the service sends no `Retry-After`.
    pub min_delay: Duration,
    /// Most attempts after the first.
    pub max_retries: usize,
    /// Retry only 429 (for calls that must not be repeated once they may have been applied).
    pub throttling_only: bool,
}

impl RetryPolicy {
    /// From the sync settings.
    pub fn new(budget: Duration, min_delay: Duration) -> Self {
        Self {
            budget,
            min_delay,
            max_retries: 6,
            throttling_only: false,
        }
    }

    /// Sends with retries: transient failures are retried with jittered exponential back-off,
    /// or after `Retry-After` when the service gives one, while the budget lasts. Returns the
    /// first response whose status is not transient (success or not), or the last error.
    pub async fn send<F, Fut>(&self, what: &str, mut send: F) -> Result<Response, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Response, CallError>>,
    {
        let deadline = Instant::now() + self.budget;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.max_retries)
            .with_jitter();
        let attempt = || {
            let sent = send();
            async move {
                let response = sent.await?;
                if is_transient_status(response.status()) {
                    Err(CallError::from_response(response).await)
                } else {
                    Ok(response)
                }
            }
        };
        attempt
            .retry(backoff)
            .when(|error| {
                if self.throttling_only {
                    error.status() == Some(StatusCode::TOO_MANY_REQUESTS)
                } else {
                    error.is_transient()
                }
            })
            .adjust(move |error, backoff| {
                let wait = error.retry_after().unwrap_or(backoff?);
                (Instant::now() + wait <= deadline).then_some(wait)
            })
            .notify(|error, wait| {
                tracing::warn!(call = what, error = %error, wait_ms = wait.as_millis() as u64, "transient failure, retrying");
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_set_is_408_429_and_5xx() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(
                is_transient_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [200, 204, 400, 401, 403, 404, 409, 412] {
            assert!(
                !is_transient_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_are_read_and_dates_ignored() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn urls_join_with_or_without_a_trailing_slash() {
        for base in ["https://api.test", "https://api.test/"] {
            assert_eq!(
                join_url(&Url::parse(base).unwrap(), "/v1/x?$top=1")
                    .unwrap()
                    .as_str(),
                "https://api.test/v1/x?$top=1"
            );
        }
        let base = Url::parse("https://org.test/base/").unwrap();
        assert_eq!(
            join_url(&base, "/api/data/v9.2/leads").unwrap().as_str(),
            "https://org.test/base/api/data/v9.2/leads"
        );
        assert!(matches!(
            join_url(&Url::parse("https://api.test").unwrap(), ":99999/x"),
            Err(CallError::Url(_))
        ));
    }

    #[test]
    fn call_errors_classify() {
        let status = |s: u16| CallError::Status {
            status: StatusCode::from_u16(s).unwrap(),
            body: String::new(),
            retry_after: None,
        };
        assert!(status(429).is_transient());
        assert!(!status(400).is_transient());
        assert!(CallError::Transport("timed out".into()).is_transient());
        assert!(!CallError::Decode("x".into()).is_transient());
        assert!(!CallError::Url("x".into()).is_transient());
        assert!(
            !CallError::Token {
                message: "invalid_grant".into(),
                transient: false
            }
            .is_transient()
        );
    }

    #[test]
    fn token_errors_from_the_token_endpoint_classify_by_status() {
        let make = |status: u16| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::HttpResponse {
                    status: azure_core::http::StatusCode::from(status),
                    error_code: None,
                    raw_response: None,
                },
                "refused",
            )
        };
        assert!(token_error(&make(503)).is_transient());
        assert!(!token_error(&make(400)).is_transient());
        let io =
            azure_core::Error::with_message(azure_core::error::ErrorKind::Io, "connection refused");
        assert!(token_error(&io).is_transient());
    }
}
