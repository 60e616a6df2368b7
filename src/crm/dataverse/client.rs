//! The Dataverse Web API client: rows of any table by id or by the referral-id alternate key
//! (read, conditional upsert), simple queries, unbound actions, and the metadata calls that
//! `check` and `setup dataverse` need. It knows HTTP and OData, not the sync.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Map, Value};
use url::Url;

use crate::{
    domain::ReferralId,
    http::{AuthorizedClient, CallError, RetryPolicy, join_url},
    tokens::dataverse_scope,
};

/// Errors of the Dataverse boundary.
#[derive(Debug, thiserror::Error)]
pub enum DataverseError {
    /// 412: a create-only upsert found the key taken, or the row version changed.
    #[error("the row changed or already exists (412 Precondition Failed)")]
    Conflict,
    /// 404 on an update-only upsert.
    #[error("the row no longer exists (404)")]
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

    /// The Dataverse `error.code` of a failed call (`0x80040515`), when the body had one.
    pub fn code(&self) -> Option<String> {
        let Self::Call(CallError::Status { body, .. }) = self else {
            return None;
        };
        let body: Value = serde_json::from_str(body).ok()?;
        body.pointer("/error/code")?.as_str().map(str::to_owned)
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

/// A Dataverse table the connector writes: its logical name, entity set and primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// Logical name (`lead`).
    pub logical: &'static str,
    /// Entity set (`leads`).
    pub set: &'static str,
    /// Primary key column (`leadid`).
    pub id: &'static str,
}

impl Table {
    /// `lead`.
    pub const LEAD: Table = Table {
        logical: "lead",
        set: "leads",
        id: "leadid",
    };
    /// `opportunity`.
    pub const OPPORTUNITY: Table = Table {
        logical: "opportunity",
        set: "opportunities",
        id: "opportunityid",
    };
    /// `account`.
    pub const ACCOUNT: Table = Table {
        logical: "account",
        set: "accounts",
        id: "accountid",
    };
    /// `contact`.
    pub const CONTACT: Table = Table {
        logical: "contact",
        set: "contacts",
        id: "contactid",
    };
    /// `transactioncurrency`.
    pub const CURRENCY: Table = Table {
        logical: "transactioncurrency",
        set: "transactioncurrencies",
        id: "transactioncurrencyid",
    };
}

/// How a request addresses a row.
#[derive(Debug, Clone, Copy)]
pub enum Row<'a> {
    /// By the referral-id alternate key.
    Key(&'a ReferralId),
    /// By primary key (a GUID).
    Id(&'a str),
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
    /// A client for the environment at `base`, addressing rows by `key_column`.
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

    /// The environment's URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn api(&self, path_and_query: &str) -> Result<Url, CallError> {
        join_url(&self.base, &format!("/api/data/v9.2/{path_and_query}"))
    }

    fn row_url(&self, table: Table, row: Row<'_>, select: &[&str]) -> Result<Url, CallError> {
        // A ReferralId and a row id are GUIDs, so they need no quoting or escaping.
        let address = match row {
            Row::Key(id) => format!("{}='{id}'", self.key_column),
            Row::Id(id) => id.to_owned(),
        };
        self.api(&format!(
            "{}({address})?$select={}",
            table.set,
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

    /// Reads one row, or `None`.
    #[tracing::instrument(skip_all, fields(table = table.logical))]
    pub async fn get(
        &self,
        table: Table,
        row: Row<'_>,
        select: &[&str],
    ) -> Result<Option<Map<String, Value>>, DataverseError> {
        let what = format!("read {}", table.logical);
        let response = self
            .send(&what, Method::GET, self.row_url(table, row, select)?, |r| r)
            .await?;
        match response.status() {
            StatusCode::OK => Ok(Some(crate::http::decode(response).await?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(CallError::from_response(response).await.into()),
        }
    }

    /// Upserts one row in one request and returns the `$select` columns.
    #[tracing::instrument(skip_all, fields(table = table.logical, columns = columns.len()))]
    pub async fn upsert(
        &self,
        table: Table,
        row: Row<'_>,
        columns: &Map<String, Value>,
        condition: &Condition,
        select: &[&str],
    ) -> Result<Map<String, Value>, DataverseError> {
        let what = format!("upsert {}", table.logical);
        let response = self
            .send(
                &what,
                Method::PATCH,
                self.row_url(table, row, select)?,
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
            StatusCode::OK | StatusCode::CREATED => Ok(crate::http::decode(response).await?),
            StatusCode::PRECONDITION_FAILED => Err(DataverseError::Conflict),
            StatusCode::NOT_FOUND => Err(DataverseError::Gone),
            _ => {
                let error = DataverseError::Call(CallError::from_response(response).await);
                // DuplicateRecordEntityKey: another row already holds the key value.
                if error.code().as_deref() == Some("0x80060892") {
                    return Err(DataverseError::Conflict);
                }
                Err(error)
            }
        }
    }

    /// The rows of `table` matching an OData `$filter` (at most `top`).
    pub async fn query(
        &self,
        table: Table,
        select: &[&str],
        filter: &str,
        top: usize,
    ) -> Result<Vec<Map<String, Value>>, DataverseError> {
        let url = self.api(&format!(
            "{}?$select={}&$filter={}&$top={top}",
            table.set,
            select.join(","),
            encode_component(filter)
        ))?;
        let what = format!("query {}", table.set);
        let response = self.send(&what, Method::GET, url, |r| r).await?;
        let body: Value = crate::http::json_body(response).await?;
        Ok(body
            .get("value")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|row| row.as_object().cloned())
            .collect())
    }

    /// Every row of `table` matching `filter` in `order`, following `@odata.nextLink` (on this
    /// environment's origin only) with 500 rows a page.
    pub async fn query_all(
        &self,
        table: Table,
        select: &[&str],
        filter: &str,
        order: &str,
    ) -> Result<Vec<Map<String, Value>>, DataverseError> {
        let mut next = Some(self.api(&format!(
            "{}?$select={}&$filter={}&$orderby={}",
            table.set,
            select.join(","),
            encode_component(filter),
            encode_component(order)
        ))?);
        let mut rows = Vec::new();
        let what = format!("poll {}", table.set);
        while let Some(url) = next.take() {
            let response = self
                .send(&what, Method::GET, url.clone(), |r| {
                    r.header("Prefer", "odata.maxpagesize=500")
                })
                .await?;
            let body: Value = crate::http::json_body(response).await?;
            rows.extend(
                body.get("value")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|row| row.as_object().cloned()),
            );
            if let Some(link) = body.get("@odata.nextLink").and_then(Value::as_str) {
                let link = url
                    .join(link)
                    .map_err(|e| CallError::Decode(format!("@odata.nextLink: {e}")))?;
                if link.origin() != self.base.origin() {
                    return Err(CallError::Decode(format!(
                        "refusing to follow @odata.nextLink to another host: {}",
                        link.origin().ascii_serialization()
                    ))
                    .into());
                }
                next = Some(link);
            }
        }
        Ok(rows)
    }

    /// Calls an unbound action (`WinOpportunity`) with a JSON body.
    pub async fn action(&self, name: &str, body: &Value) -> Result<(), DataverseError> {
        let response = self
            .send(name, Method::POST, self.api(name)?, |r| {
                r.header("Content-Type", "application/json").json(body)
            })
            .await?;
        if !response.status().is_success() {
            return Err(CallError::from_response(response).await.into());
        }
        Ok(())
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

    /// Whether `column` exists on `table`.
    pub async fn column_exists(&self, table: Table, column: &str) -> Result<bool, DataverseError> {
        let url = self.api(&format!(
            "EntityDefinitions(LogicalName='{}')/Attributes(LogicalName='{column}')?$select=LogicalName",
            table.logical
        ))?;
        let response = self.send("read column", Method::GET, url, |r| r).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(CallError::from_response(response).await.into()),
        }
    }

    /// The index status (`Pending`, `InProgress`, `Active`, `Failed`) of the alternate key on
    /// exactly the key column of `table`, or `None` when there is no such key.
    pub async fn key_status(&self, table: Table) -> Result<Option<String>, DataverseError> {
        let url = self.api(&format!(
            "EntityDefinitions(LogicalName='{}')/Keys?$select=LogicalName,KeyAttributes,EntityKeyIndexStatus",
            table.logical
        ))?;
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

    /// Creates a column on `table` from its attribute metadata.
    pub async fn create_column(
        &self,
        table: Table,
        metadata: &Value,
    ) -> Result<(), DataverseError> {
        let url = self.api(&format!(
            "EntityDefinitions(LogicalName='{}')/Attributes",
            table.logical
        ))?;
        self.write_metadata("create column", url, metadata).await
    }

    /// Creates the key column on `table` (single line of text, 100 characters).
    pub async fn create_key_column(&self, table: Table) -> Result<(), DataverseError> {
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
        self.create_column(table, &body).await
    }

    /// Creates the alternate key on the key column of `table`.
    pub async fn create_key(&self, table: Table) -> Result<(), DataverseError> {
        let url = self.api(&format!(
            "EntityDefinitions(LogicalName='{}')/Keys",
            table.logical
        ))?;
        let schema_name = match table.logical {
            "lead" => format!("{}_key", self.key_column),
            other => format!("{}_{other}_key", self.key_column),
        };
        let body = serde_json::json!({
            "SchemaName": schema_name,
            "DisplayName": label("Partner Center referral id"),
            "KeyAttributes": [self.key_column],
        });
        self.write_metadata("create alternate key", url, &body)
            .await
    }

    /// Publishes the customizations of these tables (`PublishXml`).
    pub async fn publish(&self, tables: &[Table]) -> Result<(), DataverseError> {
        let entities: String = tables
            .iter()
            .map(|t| format!("<entity>{}</entity>", t.logical))
            .collect();
        let body = serde_json::json!({
            "ParameterXml": format!("<importexportxml><entities>{entities}</entities></importexportxml>"),
        });
        self.action("PublishXml", &body).await
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

/// A Dataverse label in English (1033).
pub fn label(text: &str) -> Value {
    serde_json::json!({"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]})
}

/// Percent-encodes a query value (spaces as `%20`, never `+`).
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~'()".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An OData string literal: single quotes doubled (the query encoding escapes the rest).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_single_quotes() {
        assert_eq!(literal("O'Brien & Sons"), "'O''Brien & Sons'");
        assert_eq!(literal(""), "''");
        assert_eq!(
            encode_component("name eq 'O''Brien & Sons'"),
            "name%20eq%20'O''Brien%20%26%20Sons'"
        );
    }
}
