//! The Salesforce REST client: one access token shared by every caller (fetched with client
//! credentials or a JWT bearer assertion from `{SALESFORCE_URL}/services/oauth2/token`, kept
//! until Salesforce answers 401 `INVALID_SESSION_ID`, then fetched again once), the calls the
//! adapter needs under `/services/data/vXX.X`, and what every answer says about the org: API
//! usage (`Sforce-Limit-Info`) and Salesforce's clock (`Date`). It knows HTTP and the REST API,
//! not the sync.

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use base64::Engine as _;
use bytes::Bytes;
use openssl::{
    hash::MessageDigest,
    pkey::{PKey, Private},
    rsa::Padding,
    sign::Signer,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header::HeaderMap};
use serde::Deserialize;
use serde_json::{Map, Value};
use time::{
    OffsetDateTime, PrimitiveDateTime, format_description::BorrowedFormatItem,
    macros::format_description,
};
use url::Url;

use super::{
    error::{Grant, SalesforceError},
    settings::{SalesforceAuth, SalesforceSettings},
};
use crate::{config::ConfigError, http::RetryPolicy};

/// Lifetime of a JWT bearer assertion (Salesforce accepts at most 3 minutes).
const ASSERTION_LIFETIME_SECS: i64 = 180;

/// `Thu, 03 Dec 2026 07:00:00 GMT`
const HTTP_DATE: &[BorrowedFormatItem<'_>] = format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

/// What an upsert by external id did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// 201: no record had the value; this one was created.
    Created {
        /// The new record's id.
        id: String,
    },
    /// 200 (`"created": false`, with the id) or 204 (older behaviour, no body): the one
    /// record with the value was updated.
    Updated {
        /// The record's id, when the answer had a body.
        id: Option<String>,
    },
    /// 300: more than one record has the value; nothing was written.
    Multiple(Vec<String>),
}

/// `Sforce-Limit-Info: api-usage=N/M`: calls counted in the rolling 24 hours, and the
/// allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiUsage {
    /// Calls used (`N`).
    pub used: u64,
    /// Daily allocation (`M`).
    pub limit: u64,
}

impl ApiUsage {
    /// Reads the `api-usage=N/M` part of a `Sforce-Limit-Info` value, ignoring the other
    /// parts (`api-bursts=…`, `per-app-api-usage=…`) and spaces.
    pub fn parse(header: &str) -> Option<Self> {
        header.split([';', ',']).find_map(|part| {
            let (name, value) = part.trim().split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("api-usage") {
                return None;
            }
            let (used, limit) = value.trim().split_once('/')?;
            Some(Self {
                used: used.trim().parse().ok()?,
                limit: limit.trim().parse().ok()?,
            })
        })
    }

    /// Whether `used` has reached `percent` of `limit` (an allocation of 0 always has).
    pub fn over(&self, percent: u8) -> bool {
        u128::from(self.used) * 100 >= u128::from(self.limit) * u128::from(percent)
    }
}

/// The `aud` of a JWT bearer assertion: sandboxes (`*.sandbox.my.salesforce.com`) take
/// `https://test.salesforce.com`, every other My Domain `https://login.salesforce.com`.
pub fn jwt_audience(url: &Url) -> &'static str {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if host.ends_with(".sandbox.my.salesforce.com") {
        "https://test.salesforce.com"
    } else {
        "https://login.salesforce.com"
    }
}

/// An access token; never printed.
struct AccessToken(String);

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(..)")
    }
}

/// The credential in the form the token request needs.
enum Credential {
    ClientCredentials {
        client_secret: azure_core::credentials::Secret,
    },
    JwtBearer {
        username: String,
        key: PKey<Private>,
        audience: &'static str,
    },
}

impl Credential {
    fn grant(&self) -> Grant {
        match self {
            Self::ClientCredentials { .. } => Grant::ClientCredentials,
            Self::JwtBearer { .. } => Grant::JwtBearer,
        }
    }
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    api_root: String,
    client_id: String,
    credential: Credential,
    retry: RetryPolicy,
    /// The shared token; the lock is held while one is fetched, so concurrent callers wait
    /// for that one request instead of sending their own.
    token: tokio::sync::Mutex<Option<Arc<AccessToken>>>,
    usage: Mutex<Option<ApiUsage>>,
    /// Salesforce's clock as last seen, and when it was seen on ours.
    server_time: Mutex<Option<(OffsetDateTime, std::time::Instant)>>,
    /// Who the last token was issued to.
    identity: Mutex<Option<TokenIdentity>>,
}

/// Salesforce REST client. Cheap to clone; clones share the token and the usage figures.
#[derive(Clone)]
pub struct SalesforceClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for SalesforceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceClient")
            .field("base", &self.inner.base.as_str())
            .field("api_root", &self.inner.api_root)
            .field("client_id", &self.inner.client_id)
            .field("grant", &self.inner.credential.grant())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One answer that is not an error: status, headers, body.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, SalesforceError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| SalesforceError::Decode(format!("{what}: {e}")))
    }
}

/// How a call may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads and idempotent writes (PATCH): every transient failure is retried in-process.
    Idempotent,
    /// Creates (POST): retried only after 429, which the service refuses before acting.
    Once,
}

#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    access_token: String,
    /// The identity URL, `https://login.salesforce.com/id/{orgId}/{userId}`.
    #[serde(default)]
    id: String,
}

/// Who a token was issued to, read from the token answer's identity URL (`id`,
/// `…/id/{orgId}/{userId}`): for client credentials the External Client App's Run As user,
/// for JWT bearer the assertion's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The org's id (`00D…`).
    pub org_id: String,
    /// The user's id (`005…`).
    pub user_id: String,
}

impl TokenIdentity {
    /// Reads `…/id/{orgId}/{userId}` (the last two path segments after `id`).
    pub fn from_id_url(text: &str) -> Option<Self> {
        let url = Url::parse(text).ok()?;
        let segments: Vec<&str> = url.path_segments()?.filter(|s| !s.is_empty()).collect();
        match segments.as_slice() {
            [.., "id", org, user] if !org.is_empty() && !user.is_empty() => Some(Self {
                org_id: (*org).to_owned(),
                user_id: (*user).to_owned(),
            }),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct QueryPage {
    #[serde(default)]
    records: Vec<Map<String, Value>>,
    #[serde(default)]
    done: bool,
    #[serde(default, rename = "nextRecordsUrl")]
    next_records_url: Option<String>,
}

impl SalesforceClient {
    /// A client for the org the settings name, sending through `http` (built once by
    /// [`crate::http::client`]) and retrying transient failures by `retry`. Fails when the
    /// private key cannot be used.
    pub fn new(
        http: reqwest::Client,
        settings: &SalesforceSettings,
        retry: RetryPolicy,
    ) -> Result<Self, ConfigError> {
        let credential = match &settings.auth {
            SalesforceAuth::ClientCredentials { client_secret } => Credential::ClientCredentials {
                client_secret: client_secret.clone(),
            },
            SalesforceAuth::JwtBearer {
                username,
                private_key,
            } => Credential::JwtBearer {
                username: username.clone(),
                key: PKey::private_key_from_pem(private_key.secret().as_bytes()).map_err(|_| {
                    ConfigError::Invalid {
                        name: "SALESFORCE_PRIVATE_KEY",
                        reason: "is not a PEM private key".to_owned(),
                    }
                })?,
                audience: jwt_audience(&settings.url),
            },
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base: settings.url.clone(),
                api_root: format!("/services/data/v{}", settings.api_version),
                client_id: settings.client_id.clone(),
                credential,
                retry,
                token: tokio::sync::Mutex::new(None),
                usage: Mutex::new(None),
                server_time: Mutex::new(None),
                identity: Mutex::new(None),
            }),
        })
    }

    /// The org's URL (`SALESFORCE_URL`).
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The last `Sforce-Limit-Info: api-usage=N/M` seen, as `(N, M)`.
    pub fn usage(&self) -> Option<(u64, u64)> {
        lock(&self.inner.usage).map(|u| (u.used, u.limit))
    }

    /// Whether the last usage seen has reached `percent` of the daily allocation (`false`
    /// before any answer carried the header).
    pub fn over_budget(&self, percent: u8) -> bool {
        lock(&self.inner.usage).is_some_and(|u| u.over(percent))
    }

    /// Salesforce's clock: the `Date` of the last answer (second precision).
    pub fn server_time(&self) -> Option<OffsetDateTime> {
        lock(&self.inner.server_time).map(|(date, _)| date)
    }

    /// Salesforce's clock now: the last `Date` seen plus the time elapsed on this machine
    /// since (`None` before any answer carried one).
    pub fn server_now(&self) -> Option<OffsetDateTime> {
        lock(&self.inner.server_time).map(|(date, seen)| date + seen.elapsed())
    }

    /// Makes sure a token can be obtained (fetching one unless one is cached); sends no data
    /// call. For `check`.
    pub async fn authenticate(&self) -> Result<(), SalesforceError> {
        self.token().await.map(|_| ())
    }

    /// `GET {SALESFORCE_URL}/services/data/vXX.X{path}` (`path` starts with `/` and may carry
    /// a query) as JSON. 404 and 300 are errors ([`SalesforceError::is_not_found`],
    /// [`SalesforceError::MultipleMatches`]).
    #[tracing::instrument(skip_all)]
    pub async fn get(&self, path: &str) -> Result<Value, SalesforceError> {
        let url = self.api(path)?;
        let answer = self
            .call(
                "read",
                Method::GET,
                url,
                None,
                &[],
                Repeat::Idempotent,
                None,
            )
            .await?;
        if answer.status == StatusCode::MULTIPLE_CHOICES {
            return Err(SalesforceError::MultipleMatches {
                what: path.split('?').next().unwrap_or(path).to_owned(),
                ids: ids_of_choices(&answer.body),
            });
        }
        answer.json("read")
    }

    /// The record of `object` whose external-id `field` holds `value`, with `fields`; `None`
    /// when there is none, [`SalesforceError::MultipleMatches`] when there are several.
    #[tracing::instrument(skip_all, fields(object = %object))]
    pub async fn get_by_external_id(
        &self,
        object: &str,
        field: &str,
        value: &str,
        fields: &[&str],
    ) -> Result<Option<Map<String, Value>>, SalesforceError> {
        let mut url = self.sobject_url(&[object, field, value])?;
        if !fields.is_empty() {
            url.query_pairs_mut()
                .append_pair("fields", &fields.join(","));
        }
        let answer = self
            .call(
                "read",
                Method::GET,
                url,
                None,
                &[],
                Repeat::Idempotent,
                None,
            )
            .await;
        match answer {
            // The same 404 NOT_FOUND also means the field is not an external id the
            // integration user can see: that is an error, not "no record".
            Err(e) if e.is_not_found() && !names_missing_external_id(&e) => Ok(None),
            Err(e) => Err(e),
            Ok(a) if a.status == StatusCode::MULTIPLE_CHOICES => {
                Err(SalesforceError::MultipleMatches {
                    what: format!("{object}.{field} = {value}"),
                    ids: ids_of_choices(&a.body),
                })
            }
            Ok(a) => a.json("read").map(Some),
        }
    }

    /// The record `id` of `object` with `fields`; `None` when it does not exist.
    #[tracing::instrument(skip_all, fields(object = %object))]
    pub async fn get_record(
        &self,
        object: &str,
        id: &str,
        fields: &[&str],
    ) -> Result<Option<Map<String, Value>>, SalesforceError> {
        let mut url = self.sobject_url(&[object, id])?;
        if !fields.is_empty() {
            url.query_pairs_mut()
                .append_pair("fields", &fields.join(","));
        }
        match self
            .call(
                "read",
                Method::GET,
                url,
                None,
                &[],
                Repeat::Idempotent,
                None,
            )
            .await
        {
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
            Ok(a) => a.json("read").map(Some),
        }
    }

    /// Every record a SOQL query returns, following `nextRecordsUrl` (on this org's origin
    /// only) until `done`.
    #[tracing::instrument(skip_all)]
    pub async fn query(&self, soql: &str) -> Result<Vec<Map<String, Value>>, SalesforceError> {
        let mut url = self.api("/query")?;
        url.query_pairs_mut().append_pair("q", soql);
        self.all_pages("query", url).await
    }

    /// Every record from the query page at `url` and the pages after it.
    async fn all_pages(
        &self,
        what: &str,
        mut url: Url,
    ) -> Result<Vec<Map<String, Value>>, SalesforceError> {
        let mut records = Vec::new();
        loop {
            let answer = self
                .call(what, Method::GET, url, None, &[], Repeat::Idempotent, None)
                .await?;
            let page: QueryPage = answer.json(what)?;
            records.extend(page.records);
            match page.next_records_url {
                Some(next) if !page.done => url = self.next_page(&next)?,
                _ => break,
            }
        }
        Ok(records)
    }

    /// Upserts the record of `object` whose external-id `field` holds `value`:
    /// `PATCH …/sobjects/{object}/{field}/{value}` with `body` (which must hold neither `Id`
    /// nor `field`) and the extra `headers` (e.g. `Sforce-Auto-Assign: FALSE`). Idempotent,
    /// so transient failures are retried.
    #[tracing::instrument(skip_all, fields(object = %object))]
    pub async fn upsert(
        &self,
        object: &str,
        field: &str,
        value: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<UpsertOutcome, SalesforceError> {
        self.upsert_with(object, field, value, body, headers, false)
            .await
    }

    /// [`upsert`](Self::upsert) with `?updateOnly=true` (v61.0+): updates the one record
    /// with the value and never creates one. What Salesforce answers when none matches is
    /// not confirmed against a live org (the fake answers 404 `NOT_FOUND`, see
    /// [`SalesforceError::is_not_found`]).
    #[tracing::instrument(skip_all, fields(object = %object))]
    pub async fn upsert_update_only(
        &self,
        object: &str,
        field: &str,
        value: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<UpsertOutcome, SalesforceError> {
        self.upsert_with(object, field, value, body, headers, true)
            .await
    }

    async fn upsert_with(
        &self,
        object: &str,
        field: &str,
        value: &str,
        body: &Value,
        headers: &[(&str, &str)],
        update_only: bool,
    ) -> Result<UpsertOutcome, SalesforceError> {
        let mut url = self.sobject_url(&[object, field, value])?;
        if update_only {
            url.query_pairs_mut().append_pair("updateOnly", "true");
        }
        let answer = self
            .call(
                "upsert",
                Method::PATCH,
                url,
                Some(body),
                headers,
                Repeat::Idempotent,
                Some(object),
            )
            .await?;
        let id_of = |answer: &Answer| -> Result<(Option<String>, Option<bool>), SalesforceError> {
            let body: Value = answer.json("upsert")?;
            Ok((
                body.get("id").and_then(Value::as_str).map(str::to_owned),
                body.get("created").and_then(Value::as_bool),
            ))
        };
        match answer.status {
            StatusCode::MULTIPLE_CHOICES => {
                Ok(UpsertOutcome::Multiple(ids_of_choices(&answer.body)))
            }
            StatusCode::NO_CONTENT => Ok(UpsertOutcome::Updated { id: None }),
            StatusCode::CREATED => match id_of(&answer)? {
                (Some(id), _) => Ok(UpsertOutcome::Created { id }),
                (None, _) => Err(SalesforceError::Decode("upsert: 201 without an id".into())),
            },
            _ => match id_of(&answer)? {
                (Some(id), Some(true)) => Ok(UpsertOutcome::Created { id }),
                (id, _) => Ok(UpsertOutcome::Updated { id }),
            },
        }
    }

    /// Creates a record of `object` (`POST …/sobjects/{object}`) and returns its id. Not
    /// retried in-process except after 429: a lost answer may hide a record that was made.
    #[tracing::instrument(skip_all, fields(object = %object))]
    pub async fn create(
        &self,
        object: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<String, SalesforceError> {
        let url = self.sobject_url(&[object])?;
        let answer = self
            .call(
                "create",
                Method::POST,
                url,
                Some(body),
                headers,
                Repeat::Once,
                Some(object),
            )
            .await?;
        let body: Value = answer.json("create")?;
        body.get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| SalesforceError::Decode("create: answer without an id".into()))
    }

    /// Updates record `id` of `object` (`PATCH …/sobjects/{object}/{id}`) with `body`.
    #[tracing::instrument(skip_all, fields(object = %object))]
    pub async fn update(
        &self,
        object: &str,
        id: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<(), SalesforceError> {
        let url = self.sobject_url(&[object, id])?;
        self.call(
            "update",
            Method::PATCH,
            url,
            Some(body),
            headers,
            Repeat::Idempotent,
            Some(object),
        )
        .await?;
        Ok(())
    }

    /// `GET …/sobjects/{object}/describe`: the fields the integration user can see.
    #[tracing::instrument(skip_all, fields(object = %object))]
    pub async fn describe(&self, object: &str) -> Result<Value, SalesforceError> {
        let url = self.sobject_url(&[object, "describe"])?;
        self.call(
            "describe",
            Method::GET,
            url,
            None,
            &[],
            Repeat::Idempotent,
            None,
        )
        .await?
        .json("describe")
    }

    /// Every record a Tooling API SOQL query returns (`GET …/tooling/query`), following
    /// `nextRecordsUrl` like [`query`](Self::query).
    #[tracing::instrument(skip_all)]
    pub async fn tooling_query(
        &self,
        soql: &str,
    ) -> Result<Vec<Map<String, Value>>, SalesforceError> {
        let mut url = self.api("/tooling/query")?;
        url.query_pairs_mut().append_pair("q", soql);
        self.all_pages("tooling query", url).await
    }

    /// Creates a Tooling API record (`POST …/tooling/sobjects/{object}`, e.g. a
    /// `CustomField` with `FullName` and `Metadata`) and returns its id. Retried in-process
    /// only after 429, like [`create`](Self::create).
    #[tracing::instrument(skip_all, fields(object = %object))]
    pub async fn tooling_create(
        &self,
        object: &str,
        body: &Value,
    ) -> Result<String, SalesforceError> {
        let mut url = self.api("/tooling/sobjects")?;
        url.path_segments_mut()
            .map_err(|()| SalesforceError::Url(format!("{} cannot take a path", self.inner.base)))?
            .push(object);
        let answer = self
            .call(
                "tooling create",
                Method::POST,
                url,
                Some(body),
                &[],
                Repeat::Once,
                Some(object),
            )
            .await?;
        let body: Value = answer.json("tooling create")?;
        body.get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| SalesforceError::Decode("tooling create: answer without an id".into()))
    }

    /// The org and user the access token was issued to (fetching a token unless one is
    /// cached), from the token answer's identity URL; no data call.
    #[tracing::instrument(skip_all)]
    pub async fn token_identity(&self) -> Result<TokenIdentity, SalesforceError> {
        self.token().await?;
        lock(&self.inner.identity).clone().ok_or_else(|| {
            SalesforceError::Decode(
                "the token answer had no identity URL (`id`) naming the user".into(),
            )
        })
    }

    // -----------------------------------------------------------------------------------------

    fn api(&self, path: &str) -> Result<Url, SalesforceError> {
        crate::http::join_url(&self.inner.base, &format!("{}{path}", self.inner.api_root))
            .map_err(|e| SalesforceError::Url(e.to_string()))
    }

    /// `…/sobjects/` followed by `segments`, each percent-encoded as one path segment.
    fn sobject_url(&self, segments: &[&str]) -> Result<Url, SalesforceError> {
        let mut url = self.api("/sobjects")?;
        url.path_segments_mut()
            .map_err(|()| SalesforceError::Url(format!("{} cannot take a path", self.inner.base)))?
            .extend(segments);
        Ok(url)
    }

    /// The URL of the next query page: the link resolved against the org's URL, refused
    /// when it leads to another origin or outside the REST API.
    fn next_page(&self, link: &str) -> Result<Url, SalesforceError> {
        next_page_url(&self.inner.base, link)
    }

    /// The cached token, or a new one (one request for all concurrent callers).
    async fn token(&self) -> Result<Arc<AccessToken>, SalesforceError> {
        let mut slot = self.inner.token.lock().await;
        if let Some(token) = slot.as_ref() {
            return Ok(token.clone());
        }
        let token = Arc::new(self.fetch_token().await?);
        *slot = Some(token.clone());
        Ok(token)
    }

    /// Forgets `stale` unless another caller already replaced it.
    async fn invalidate(&self, stale: &Arc<AccessToken>) {
        let mut slot = self.inner.token.lock().await;
        if slot.as_ref().is_some_and(|t| Arc::ptr_eq(t, stale)) {
            *slot = None;
        }
    }

    #[tracing::instrument(skip_all, fields(grant = ?self.inner.credential.grant()))]
    async fn fetch_token(&self) -> Result<AccessToken, SalesforceError> {
        let url = crate::http::join_url(&self.inner.base, "/services/oauth2/token")
            .map_err(|e| SalesforceError::Url(e.to_string()))?;
        let client_id = self.inner.client_id.as_str();
        let assertion;
        let form: Vec<(&str, &str)> = match &self.inner.credential {
            Credential::ClientCredentials { client_secret } => vec![
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", client_secret.secret()),
            ],
            Credential::JwtBearer {
                username,
                key,
                audience,
            } => {
                assertion = sign_assertion(client_id, username, audience, key)?;
                vec![
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ]
            }
        };
        let grant = self.inner.credential.grant();
        let answer = self
            .send(
                "Salesforce token",
                || {
                    self.inner
                        .http
                        .post(url.clone())
                        .header("Accept", "application/json")
                        .form(&form)
                },
                true,
                |status, content_type, body| {
                    SalesforceError::from_token(status, content_type, body, grant)
                },
            )
            .await?;
        let body = answer.body;
        // The body holds the token: never put it into an error.
        let token: TokenBody = serde_json::from_slice(&body).map_err(|_| {
            SalesforceError::Decode("the token endpoint answered with an unexpected body".into())
        })?;
        if token.access_token.is_empty() {
            return Err(SalesforceError::Decode(
                "the token endpoint answered without an access_token".into(),
            ));
        }
        *lock(&self.inner.identity) = TokenIdentity::from_id_url(&token.id);
        tracing::info!("obtained a Salesforce access token");
        Ok(AccessToken(token.access_token))
    }

    /// One logical call: with the shared token, retried by the policy, and on 401
    /// `INVALID_SESSION_ID` once more with a new token.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        what: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        repeat: Repeat,
        object: Option<&str>,
    ) -> Result<Answer, SalesforceError> {
        let token = self.token().await?;
        let build = |request: RequestBuilder| {
            let mut request = request.header("Accept", "application/json");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            match body {
                Some(body) => request.json(body),
                None => request,
            }
        };
        let first = self
            .attempt(what, &method, &url, &token, &build, repeat, object)
            .await;
        match first {
            Err(e) if e.is_invalid_session() => {
                tracing::info!(
                    call = what,
                    "Salesforce session expired or revoked; getting a new token"
                );
                self.invalidate(&token).await;
                let fresh = self.token().await?;
                self.attempt(what, &method, &url, &fresh, &build, repeat, object)
                    .await
                    .map_err(|e| match e {
                        SalesforceError::Api { message, .. } if e.is_invalid_session() => {
                            SalesforceError::SessionRejected { message }
                        }
                        e => e,
                    })
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        what: &str,
        method: &Method,
        url: &Url,
        token: &AccessToken,
        build: &impl Fn(RequestBuilder) -> RequestBuilder,
        repeat: Repeat,
        object: Option<&str>,
    ) -> Result<Answer, SalesforceError> {
        self.send(
            what,
            || {
                build(
                    self.inner
                        .http
                        .request(method.clone(), url.clone())
                        .bearer_auth(&token.0),
                )
            },
            repeat == Repeat::Idempotent,
            |status, content_type, body| {
                SalesforceError::from_rest(status, content_type, body, object)
            },
        )
        .await
    }

    /// Sends the request `make` builds, retried by the policy while the failure is worth it
    /// now (`idempotent` or not), and reads the whole answer. A success (or a 300) is the
    /// answer; anything else is the error `classify` makes of status, content type and body.
    /// Every answer's usage header and clock are kept.
    async fn send(
        &self,
        what: &str,
        make: impl Fn() -> RequestBuilder,
        idempotent: bool,
        classify: impl Fn(StatusCode, Option<&str>, &[u8]) -> SalesforceError,
    ) -> Result<Answer, SalesforceError> {
        let failure: Mutex<Option<SalesforceError>> = Mutex::new(None);
        let result = self
            .inner
            .retry
            .send(what, || {
                let request = make();
                let (failure, classify) = (&failure, &classify);
                async move {
                    let response = match request.send().await {
                        Ok(r) => r,
                        Err(e) => {
                            let error = SalesforceError::Transport(crate::http::describe(&e));
                            return Err(steer(failure, error, idempotent));
                        }
                    };
                    self.observe(response.headers());
                    let status = response.status();
                    if status.is_success() || status == StatusCode::MULTIPLE_CHOICES {
                        return Ok(response);
                    }
                    let content_type = content_type(response.headers());
                    let body = response.bytes().await.unwrap_or_default();
                    Err(steer(
                        failure,
                        classify(status, content_type.as_deref(), &body),
                        idempotent,
                    ))
                }
            })
            .await;
        let response: Response = result.map_err(|e| take_failure(&failure, e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| SalesforceError::Transport(crate::http::describe(&e)))?;
        Ok(Answer { status, body })
    }

    /// Keeps the usage and the clock an answer reports.
    fn observe(&self, headers: &HeaderMap) {
        if let Some(usage) = headers
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .and_then(ApiUsage::parse)
        {
            *lock(&self.inner.usage) = Some(usage);
        }
        if let Some(date) = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
        {
            *lock(&self.inner.server_time) = Some((date, std::time::Instant::now()));
        }
    }
}

/// Whether a 404 says the external-id field is unknown or hidden, rather than no record.
fn names_missing_external_id(error: &SalesforceError) -> bool {
    matches!(error, SalesforceError::Api { message, .. } if message.contains("external ID field"))
}

/// Keeps `error` for the caller and tells the retry policy whether to try again now: a
/// transient-class [`crate::http::CallError`] when it should, a permanent one when not.
fn steer(
    slot: &Mutex<Option<SalesforceError>>,
    error: SalesforceError,
    idempotent: bool,
) -> crate::http::CallError {
    let text = error.to_string();
    let retry = error.retry_now(idempotent);
    *lock(slot) = Some(error);
    if retry {
        crate::http::CallError::Transport(text)
    } else {
        crate::http::CallError::Decode(text)
    }
}

/// The Salesforce error kept by [`steer`], else the policy's own error.
fn take_failure(
    slot: &Mutex<Option<SalesforceError>>,
    error: crate::http::CallError,
) -> SalesforceError {
    lock(slot)
        .take()
        .unwrap_or_else(|| SalesforceError::Transport(error.to_string()))
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `Thu, 03 Dec 2026 07:00:00 GMT` (IMF-fixdate) as UTC.
pub fn parse_http_date(text: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(text.trim(), HTTP_DATE)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// The record ids of a 300 answer: a list of record URLs (or of objects with an `Id`).
fn ids_of_choices(body: &[u8]) -> Vec<String> {
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::String(url) => url.rsplit('/').next().map(str::to_owned),
            Value::Object(o) => o
                .get("Id")
                .or_else(|| o.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        })
        .filter(|id| !id.is_empty())
        .collect()
}

/// The next query page's URL: `link` resolved against `base`, only on `base`'s origin and
/// under `/services/data/`.
pub fn next_page_url(base: &Url, link: &str) -> Result<Url, SalesforceError> {
    let url = base
        .join(link)
        .map_err(|e| SalesforceError::Decode(format!("nextRecordsUrl: {e}")))?;
    if url.origin() != base.origin() {
        return Err(SalesforceError::Url(format!(
            "refusing to follow nextRecordsUrl to another origin: {}",
            url.origin().ascii_serialization()
        )));
    }
    if !url.path().starts_with("/services/data/") {
        return Err(SalesforceError::Url(
            "refusing to follow a nextRecordsUrl outside /services/data/".into(),
        ));
    }
    Ok(url)
}

/// An RS256 JWT bearer assertion: `iss` the consumer key, `sub` the username, `aud` the
/// login host, `exp` three minutes from now.
fn sign_assertion(
    client_id: &str,
    username: &str,
    audience: &str,
    key: &PKey<Private>,
) -> Result<String, SalesforceError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"RS256"}"#);
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": username,
        "aud": audience,
        "exp": OffsetDateTime::now_utc().unix_timestamp() + ASSERTION_LIFETIME_SECS,
    });
    let input = format!("{header}.{}", b64.encode(claims.to_string()));
    let signing = |e: openssl::error::ErrorStack| SalesforceError::Signing(e.to_string());
    let mut signer = Signer::new(MessageDigest::sha256(), key).map_err(signing)?;
    signer.set_rsa_padding(Padding::PKCS1).map_err(signing)?;
    signer.update(input.as_bytes()).map_err(signing)?;
    let signature = signer.sign_to_vec().map_err(signing)?;
    Ok(format!("{input}.{}", b64.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_info_table() {
        let cases: &[(&str, Option<(u64, u64)>)] = &[
            ("api-usage=18/5000", Some((18, 5000))),
            (
                "api-usage=10018/100000; api-bursts=1/750",
                Some((10018, 100000)),
            ),
            (
                "per-app-api-usage=17/250(appName=x); api-usage=25/100000",
                Some((25, 100000)),
            ),
            (" API-USAGE = 7 / 10 ", Some((7, 10))),
            ("api-bursts=1/750", None),
            ("api-usage=abc/10", None),
            ("api-usage=5", None),
            ("", None),
        ];
        for (header, expected) in cases {
            assert_eq!(
                ApiUsage::parse(header).map(|u| (u.used, u.limit)),
                *expected,
                "{header}"
            );
        }
    }

    #[test]
    fn budget_is_a_share_of_the_allocation() {
        let u = |used, limit| ApiUsage { used, limit };
        assert!(!u(79, 100).over(80));
        assert!(u(80, 100).over(80));
        assert!(u(100, 100).over(100));
        assert!(!u(99, 100).over(100));
        assert!(u(0, 0).over(80));
        assert!(!u(u64::MAX - 1, u64::MAX).over(100));
    }

    #[test]
    fn http_dates_parse_as_utc() {
        let t = parse_http_date("Thu, 03 Dec 2026 07:00:05 GMT").unwrap();
        assert_eq!(t.unix_timestamp(), 1_796_281_205);
        assert!(parse_http_date("yesterday").is_none());
    }

    #[test]
    fn sandboxes_take_the_test_audience() {
        let aud = |u: &str| jwt_audience(&Url::parse(u).unwrap());
        assert_eq!(
            aud("https://acme.my.salesforce.com"),
            "https://login.salesforce.com"
        );
        assert_eq!(
            aud("https://acme--dev.sandbox.my.salesforce.com"),
            "https://test.salesforce.com"
        );
        assert_eq!(aud("http://127.0.0.1:9"), "https://login.salesforce.com");
    }

    #[test]
    fn next_pages_stay_on_the_org() {
        let base = Url::parse("https://acme.my.salesforce.com").unwrap();
        assert_eq!(
            next_page_url(&base, "/services/data/v67.0/query/01g-2000")
                .unwrap()
                .as_str(),
            "https://acme.my.salesforce.com/services/data/v67.0/query/01g-2000"
        );
        for bad in [
            "https://evil.example/services/data/v67.0/query/01g-2000",
            "http://acme.my.salesforce.com/services/data/v67.0/query/x",
            "//evil.example/services/data/x",
            "/services/oauth2/token",
        ] {
            assert!(next_page_url(&base, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_urls_name_the_org_and_the_user() {
        let id = TokenIdentity::from_id_url(
            "https://login.salesforce.com/id/00D5g000004ABCDEAA/0055g00000AbCdEAAA",
        )
        .unwrap();
        assert_eq!(id.org_id, "00D5g000004ABCDEAA");
        assert_eq!(id.user_id, "0055g00000AbCdEAAA");
        for bad in [
            "",
            "not a url",
            "https://login.salesforce.com/id/00D5g000004ABCDEAA",
            "https://login.salesforce.com/services/oauth2/userinfo",
        ] {
            assert!(TokenIdentity::from_id_url(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn choices_give_record_ids() {
        let body = br#"["/services/data/v67.0/sobjects/Lead/00Q1","/services/data/v67.0/sobjects/Lead/00Q2"]"#;
        assert_eq!(ids_of_choices(body), vec!["00Q1", "00Q2"]);
        assert!(ids_of_choices(b"<html>").is_empty());
    }

    #[test]
    fn assertions_are_rs256_with_the_claims() {
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let jwt =
            sign_assertion("3MVG9", "i@acme.com", "https://login.salesforce.com", &key).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "3MVG9");
        assert_eq!(claims["sub"], "i@acme.com");
        assert_eq!(claims["aud"], "https://login.salesforce.com");
        let exp = claims["exp"].as_i64().unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(exp > now && exp <= now + 180, "{exp} vs {now}");
        let mut verifier = openssl::sign::Verifier::new(MessageDigest::sha256(), &key).unwrap();
        verifier
            .update(format!("{}.{}", parts[0], parts[1]).as_bytes())
            .unwrap();
        assert!(verifier.verify(&b64.decode(parts[2]).unwrap()).unwrap());
    }
}
