//! Dataverse Web API client: read and upsert the lead by its referral-id alternate key, and
//! the few metadata calls that `check` and `setup dataverse` need.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Map, Value};
use url::Url;

use crate::{
    domain::{Lead, ReferralId},
    http::{AuthorizedClient, CallError, RetryPolicy, join_url},
    tokens::dataverse_scope,
};

/// Errors of the Dataverse boundary.
#[derive(Debug, thiserror::Error)]
pub enum DataverseError {
    /// 412: a create-only upsert found the key taken, or the row version changed.
    #[error("the lead changed or already exists (412 Precondition Failed)")]
    Conflict,
    /// 404 on an update-only upsert.
    #[error("the lead no longer exists (404)")]
    Gone,
    /// The call failed (status, transport or token).
    #[error("Dataverse: {0}")]
    Call(#[from] CallError),
}

impl DataverseError {
    /// Whether a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Call(e) if e.is_transient())
    }
}

/// Precondition of an upsert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `If-None-Match: *`: create only, 412 when the key exists.
    CreateOnly,
    /// `If-Match: <etag>`: update only this version.
    IfMatch(String),
}

/// The result of an upsert.
#[derive(Debug, Clone)]
pub struct Upserted {
    /// The lead as returned (`$select` columns).
    pub lead: Lead,
}

/// Dataverse client.
#[derive(Debug, Clone)]
pub struct DataverseClient {
    client: AuthorizedClient,
    base: Url,
    key_column: String,
    scope: String,
}

impl DataverseClient {
    /// A client for the environment at `base`, addressing leads by `key_column`.
    pub fn new(
        http: reqwest::Client,
        base: Url,
        key_column: String,
        credential: Arc<dyn TokenCredential>,
        retry: RetryPolicy,
    ) -> Self {
        let scope = dataverse_scope(&base);
        Self {
            client: AuthorizedClient::new(http, credential, retry),
            base,
            key_column,
            scope,
        }
    }

    /// The client the settings describe, with its credential.
    pub fn from_settings(
        settings: &crate::config::Settings,
        http: reqwest::Client,
    ) -> Result<Self, crate::config::ConfigError> {
        let url = settings.dataverse.require_url()?.clone();
        let credential = crate::tokens::dataverse_credential(&settings.dataverse, http.clone())?;
        Ok(Self::new(
            http,
            url,
            settings.dataverse.key_column.clone(),
            credential,
            RetryPolicy::new(settings.sync.retry_budget, settings.sync.retry_min_delay),
        ))
    }

    /// Gets a Dataverse token (used by `check`).
    pub async fn token(&self) -> Result<(), CallError> {
        self.client.token(&self.scope).await
    }

    /// The alternate-key column.
    pub fn key_column(&self) -> &str {
        &self.key_column
    }

    fn api(&self, path_and_query: &str) -> Result<Url, CallError> {
        join_url(&self.base, &format!("/api/data/v9.2/{path_and_query}"))
    }

    fn lead_url(&self, id: &ReferralId, select: &[&str]) -> Result<Url, CallError> {
        // A ReferralId is a GUID, so it needs no quoting or escaping inside the key literal.
        self.api(&format!(
            "leads({}='{}')?$select={}",
            self.key_column,
            id,
            select.join(",")
        ))
    }

    /// Sends one logical call with retries, with the OData version headers.
    async fn send(
        &self,
        what: &str,
        method: Method,
        url: Url,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<reqwest::Response, CallError> {
        self.client
            .send(what, method, url, &self.scope, |request| {
                build(request)
                    .header("OData-MaxVersion", "4.0")
                    .header("OData-Version", "4.0")
            })
            .await
    }

    async fn entity(response: reqwest::Response) -> Result<Lead, CallError> {
        let body: Map<String, Value> = crate::http::decode(response).await?;
        Lead::from_entity(body).ok_or_else(|| CallError::Decode("the lead has no leadid".into()))
    }

    /// Reads the lead with this referral id, or `None`.
    #[tracing::instrument(skip_all, fields(referral_id = %id))]
    pub async fn get_lead(
        &self,
        id: &ReferralId,
        select: &[&str],
    ) -> Result<Option<Lead>, DataverseError> {
        let response = self
            .send("read lead", Method::GET, self.lead_url(id, select)?, |r| r)
            .await?;
        match response.status() {
            StatusCode::OK => Ok(Some(Self::entity(response).await?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(CallError::from_response(response).await.into()),
        }
    }

    /// Upserts by the alternate key in one request and returns the `$select` columns.
    #[tracing::instrument(skip_all, fields(referral_id = %id, columns = columns.len()))]
    pub async fn upsert_lead(
        &self,
        id: &ReferralId,
        columns: &Map<String, Value>,
        condition: &Condition,
        select: &[&str],
    ) -> Result<Upserted, DataverseError> {
        let response = self
            .send(
                "upsert lead",
                Method::PATCH,
                self.lead_url(id, select)?,
                |r| {
                    let r = r
                        .header("Content-Type", "application/json")
                        .header("Prefer", "return=representation")
                        .json(columns);
                    match condition {
                        Condition::CreateOnly => r.header("If-None-Match", "*"),
                        Condition::IfMatch(etag) => r.header("If-Match", etag),
                    }
                },
            )
            .await?;
        match response.status() {
            StatusCode::OK | StatusCode::CREATED => Ok(Upserted {
                lead: Self::entity(response).await?,
            }),
            StatusCode::PRECONDITION_FAILED => Err(DataverseError::Conflict),
            StatusCode::NOT_FOUND => Err(DataverseError::Gone),
            _ => Err(CallError::from_response(response).await.into()),
        }
    }

    /// `WhoAmI`: the application user's id.
    pub async fn who_am_i(&self) -> Result<String, DataverseError> {
        let response = self
            .send("WhoAmI", Method::GET, self.api("WhoAmI")?, |r| r)
            .await?;
        let body: Value = crate::http::json_body(response).await?;
        Ok(body
            .get("UserId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    /// Whether the key column exists on `lead`.
    pub async fn key_column_exists(&self) -> Result<bool, DataverseError> {
        let url = self.api(&format!(
            "EntityDefinitions(LogicalName='lead')/Attributes(LogicalName='{}')?$select=LogicalName",
            self.key_column
        ))?;
        let response = self
            .send("read key column", Method::GET, url, |r| r)
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(CallError::from_response(response).await.into()),
        }
    }

    /// The index status (`Pending`, `InProgress`, `Active`, `Failed`) of the alternate key on
    /// exactly the key column, or `None` when there is no such key.
    pub async fn key_status(&self) -> Result<Option<String>, DataverseError> {
        let url = self.api("EntityDefinitions(LogicalName='lead')/Keys?$select=LogicalName,KeyAttributes,EntityKeyIndexStatus")?;
        let response = self
            .send("read alternate keys", Method::GET, url, |r| r)
            .await?;
        let body: Value = crate::http::json_body(response).await?;
        let status = body
            .get("value")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|key| {
                key.get("KeyAttributes")
                    .and_then(Value::as_array)
                    .is_some_and(|a| {
                        a.len() == 1 && a[0].as_str() == Some(self.key_column.as_str())
                    })
            })
            .and_then(|key| key.get("EntityKeyIndexStatus"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(status)
    }

    /// Creates the key column (single line of text, 100 characters).
    pub async fn create_key_column(&self) -> Result<(), DataverseError> {
        let url = self.api("EntityDefinitions(LogicalName='lead')/Attributes")?;
        let body = serde_json::json!({
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "AttributeType": "String",
            "AttributeTypeName": {"Value": "StringType"},
            "SchemaName": self.key_column,
            "MaxLength": 100,
            "FormatName": {"Value": "Text"},
            "RequiredLevel": {"Value": "None", "CanBeChanged": true},
            "DisplayName": label("Partner Center referral id"),
            "Description": label("Partner Center referral id; alternate key used by referral-connector"),
        });
        self.write_metadata("create key column", url, &body).await
    }

    /// Creates the alternate key on the key column.
    pub async fn create_key(&self) -> Result<(), DataverseError> {
        let url = self.api("EntityDefinitions(LogicalName='lead')/Keys")?;
        let body = serde_json::json!({
            "SchemaName": format!("{}_key", self.key_column),
            "DisplayName": label("Partner Center referral id"),
            "KeyAttributes": [self.key_column],
        });
        self.write_metadata("create alternate key", url, &body)
            .await
    }

    async fn write_metadata(
        &self,
        what: &str,
        url: Url,
        body: &Value,
    ) -> Result<(), DataverseError> {
        let response = self
            .send(what, Method::POST, url, |r| {
                r.header("Content-Type", "application/json").json(body)
            })
            .await?;
        if !response.status().is_success() {
            return Err(CallError::from_response(response).await.into());
        }
        Ok(())
    }
}

fn label(text: &str) -> Value {
    serde_json::json!({"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]})
}
