//! Partner Center client: the referrals API (get, list, JSON Patch) and the webhook
//! registration API. Base URLs come from settings; every call carries a delegated token.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use url::Url;

use crate::{
    domain::{Referral, ReferralError, ReferralId},
    http::{AuthorizedClient, CallError, RetryPolicy, join_url},
    mapping::PatchOp,
    tokens::{PARTNER_CENTER_SCOPE, PARTNER_CENTER_WEBHOOK_SCOPE},
};

/// Errors of the Partner Center boundary.
#[derive(Debug, thiserror::Error)]
pub enum PartnerCenterError {
    /// 404 for the referral.
    #[error("referral {0} was not found in Partner Center")]
    NotFound(ReferralId),
    /// 412: the eTag is stale.
    #[error("the referral changed since it was read (412 Precondition Failed)")]
    PreconditionFailed,
    /// The call failed (status, transport or token).
    #[error("Partner Center: {0}")]
    Call(#[from] CallError),
    /// The referral document is unusable.
    #[error("Partner Center returned an unusable referral: {0}")]
    BadReferral(#[from] ReferralError),
    /// A `@odata.nextLink` points to another origin (scheme, host or port) than the API.
    #[error("refusing to follow @odata.nextLink to another host: {0}")]
    ForeignNextLink(String),
}

impl PartnerCenterError {
    /// Whether a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Call(e) if e.is_transient())
    }
}

/// One page of a referral listing.
#[derive(Debug)]
pub struct ReferralPage {
    /// The referrals on this page.
    pub referrals: Vec<Referral>,
    /// Items that could not be read as referrals, with why.
    pub invalid: Vec<String>,
    /// The next page, when there is one.
    pub next: Option<PageUrl>,
}

/// The URL of a referral list page on the API's origin. Only [`PartnerCenterClient`] makes
/// one: the first page from settings, the others from a checked `@odata.nextLink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageUrl(Url);

/// Filter of a referral listing on `updatedDateTime`.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Inclusive lower bound (RFC 3339).
    pub since: String,
    /// Inclusive upper bound (RFC 3339).
    pub until: Option<String>,
    /// Page size.
    pub page_size: u32,
}

/// Partner Center API client.
#[derive(Debug, Clone)]
pub struct PartnerCenterClient {
    client: AuthorizedClient,
    api: Url,
    webhook_api: Url,
}

impl PartnerCenterClient {
    /// A client for the given bases (from settings).
    pub fn new(
        http: reqwest::Client,
        api: Url,
        webhook_api: Url,
        credential: Arc<dyn TokenCredential>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            client: AuthorizedClient::new(http, credential, retry),
            api,
            webhook_api,
        }
    }

    /// The client the settings describe, with the delegated refresh-token credential.
    pub fn from_settings(
        settings: &crate::config::Settings,
        http: reqwest::Client,
    ) -> Result<(Self, Arc<crate::tokens::RefreshTokenCredential>), crate::config::ConfigError>
    {
        let credential =
            crate::tokens::RefreshTokenCredential::new(&settings.partner_center, http.clone())?;
        let client = Self::new(
            http,
            settings.partner_center.api_url.clone(),
            settings.partner_center.webhook_api_url.clone(),
            credential.clone(),
            RetryPolicy::new(settings.sync.retry_budget, settings.sync.retry_min_delay),
        );
        Ok((client, credential))
    }

    fn referral_url(&self, id: &ReferralId) -> Result<Url, CallError> {
        join_url(&self.api, &format!("/v1.0/engagements/referrals/{id}"))
    }

    /// Sends one logical call with retries; `build` adds method-specific parts. Every attempt
    /// carries Partner Center's `MS-RequestId` (the same across retries) and a new
    /// `MS-CorrelationId`.
    async fn send(
        &self,
        what: &str,
        method: Method,
        url: Url,
        scope: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<reqwest::Response, CallError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        self.client
            .send(what, method, url, scope, |request| {
                build(request)
                    .header("MS-RequestId", &request_id)
                    .header("MS-CorrelationId", uuid::Uuid::new_v4().to_string())
            })
            .await
    }

    /// `GET /v1.0/engagements/referrals/{id}`.
    #[tracing::instrument(skip_all, fields(referral_id = %id))]
    pub async fn get_referral(&self, id: &ReferralId) -> Result<Referral, PartnerCenterError> {
        let response = self
            .send(
                "get referral",
                Method::GET,
                self.referral_url(id)?,
                PARTNER_CENTER_SCOPE,
                |r| r,
            )
            .await?;
        match response.status() {
            StatusCode::OK => {
                let etag = response
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body: Value = crate::http::decode(response).await?;
                let referral = Referral::from_json(body, etag.as_deref())?;
                if referral.id() != id {
                    return Err(CallError::Decode(format!(
                        "asked for {id}, got {}",
                        referral.id()
                    ))
                    .into());
                }
                Ok(referral)
            }
            StatusCode::NOT_FOUND => Err(PartnerCenterError::NotFound(id.clone())),
            _ => Err(CallError::from_response(response).await.into()),
        }
    }

    /// `PATCH /v1.0/engagements/referrals/{id}` with a JSON Patch, guarded by `If-Match`.
    #[tracing::instrument(skip_all, fields(referral_id = %id, ops = ops.len()))]
    pub async fn patch_referral(
        &self,
        id: &ReferralId,
        etag: Option<&str>,
        ops: &[PatchOp],
    ) -> Result<(), PartnerCenterError> {
        let response = self
            .send(
                "patch referral",
                Method::PATCH,
                self.referral_url(id)?,
                PARTNER_CENTER_SCOPE,
                |r| {
                    let r = r.json(ops);
                    match etag {
                        Some(etag) => r.header("If-Match", etag),
                        None => r,
                    }
                },
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::PRECONDITION_FAILED => Err(PartnerCenterError::PreconditionFailed),
            StatusCode::NOT_FOUND => Err(PartnerCenterError::NotFound(id.clone())),
            _ => Err(CallError::from_response(response).await.into()),
        }
    }

    /// `POST /v1.0/engagements/referrals`: creates a referral and returns it. Sent once: only
    /// a 429 is retried, so an error other than a refusal (4xx) means the referral may exist.
    #[tracing::instrument(skip_all)]
    pub async fn create_referral(&self, body: &Value) -> Result<Referral, PartnerCenterError> {
        let url = join_url(&self.api, "/v1.0/engagements/referrals")?;
        let request_id = uuid::Uuid::new_v4().to_string();
        let response = self
            .client
            .send_once(
                "create referral",
                Method::POST,
                url,
                PARTNER_CENTER_SCOPE,
                |r| {
                    r.json(body)
                        .header("MS-RequestId", &request_id)
                        .header("MS-CorrelationId", uuid::Uuid::new_v4().to_string())
                },
            )
            .await?;
        if !response.status().is_success() {
            return Err(CallError::from_response(response).await.into());
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = crate::http::decode(response).await?;
        Ok(Referral::from_json(body, etag.as_deref())?)
    }

    /// Outgoing referrals created at or after `since` (RFC 3339), newest first, reading pages
    /// until one reaches back past `since`. Uses only the documented `direction` filter and
    /// `createdDateTime` order.
    pub async fn outgoing_created_since(
        &self,
        since: time::OffsetDateTime,
    ) -> Result<Vec<Referral>, PartnerCenterError> {
        let mut url = join_url(&self.api, "/v1.0/engagements/referrals")?;
        url.query_pairs_mut()
            .append_pair("$filter", "direction eq 'Outgoing'")
            .append_pair("$orderby", "createdDateTime desc")
            .append_pair("$top", "100");
        let mut next = Some(PageUrl(url));
        let mut found = Vec::new();
        while let Some(url) = next.take() {
            let page = self.list_page(&url).await?;
            let mut older = false;
            for referral in page.referrals {
                let created = referral.text("createdDateTime").and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                });
                match created {
                    Some(created) if created < since => older = true,
                    _ => found.push(referral),
                }
            }
            if !older {
                next = page.next;
            }
        }
        Ok(found)
    }

    /// The first page of referrals updated in a window, oldest first.
    pub fn first_page_url(&self, query: &ListQuery) -> Result<PageUrl, PartnerCenterError> {
        let mut filter = format!("updatedDateTime ge {}", query.since);
        if let Some(until) = &query.until {
            filter.push_str(&format!(" and updatedDateTime le {until}"));
        }
        let mut url = join_url(&self.api, "/v1.0/engagements/referrals")?;
        url.query_pairs_mut()
            .append_pair("$filter", &filter)
            .append_pair("$orderby", "updatedDateTime asc")
            .append_pair("$top", &query.page_size.to_string());
        Ok(PageUrl(url))
    }

    /// Reads one page; its `@odata.nextLink` must stay on the API's origin.
    pub async fn list_page(&self, url: &PageUrl) -> Result<ReferralPage, PartnerCenterError> {
        let PageUrl(url) = url;
        let response = self
            .send(
                "list referrals",
                Method::GET,
                url.clone(),
                PARTNER_CENTER_SCOPE,
                |r| r,
            )
            .await?;
        let body: Value = crate::http::json_body(response).await?;
        let mut page = ReferralPage {
            referrals: Vec::new(),
            invalid: Vec::new(),
            next: None,
        };
        for item in body
            .get("value")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match Referral::from_json(item.clone(), None) {
                Ok(referral) => page.referrals.push(referral),
                Err(e) => page.invalid.push(e.to_string()),
            }
        }
        if let Some(next) = body.get("@odata.nextLink").and_then(Value::as_str) {
            let next = url
                .join(next)
                .map_err(|e| CallError::Decode(e.to_string()))?;
            if next.origin() != self.api.origin() {
                return Err(PartnerCenterError::ForeignNextLink(
                    next.origin().ascii_serialization(),
                ));
            }
            page.next = Some(PageUrl(next));
        }
        Ok(page)
    }

    /// `GET /webhooks/v1/registration`; `None` when there is none.
    pub async fn get_registration(&self) -> Result<Option<Value>, PartnerCenterError> {
        let url = join_url(&self.webhook_api, "/webhooks/v1/registration")?;
        let response = self
            .send(
                "get webhook registration",
                Method::GET,
                url,
                PARTNER_CENTER_WEBHOOK_SCOPE,
                |r| r,
            )
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND | StatusCode::NO_CONTENT => Ok(None),
            s if s.is_success() => {
                let body: Value = crate::http::decode(response).await?;
                Ok((!body.is_null()).then_some(body))
            }
            _ => Err(CallError::from_response(response).await.into()),
        }
    }

    /// Creates (`POST`) or replaces (`PUT`) the per-tenant registration.
    pub async fn put_registration(
        &self,
        create: bool,
        body: &Value,
    ) -> Result<Value, PartnerCenterError> {
        let url = join_url(&self.webhook_api, "/webhooks/v1/registration")?;
        let method = if create { Method::POST } else { Method::PUT };
        let response = self
            .send(
                "write webhook registration",
                method,
                url,
                PARTNER_CENTER_WEBHOOK_SCOPE,
                |r| r.json(body),
            )
            .await?;
        if !response.status().is_success() {
            return Err(CallError::from_response(response).await.into());
        }
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// Asks Partner Center to send a `test-created` event; returns the correlation id.
    pub async fn post_validation_event(&self) -> Result<String, PartnerCenterError> {
        let url = join_url(
            &self.webhook_api,
            "/webhooks/v1/registration/validationEvents",
        )?;
        let response = self
            .send(
                "post validation event",
                Method::POST,
                url,
                PARTNER_CENTER_WEBHOOK_SCOPE,
                |r| r,
            )
            .await?;
        let body: Value = crate::http::json_body(response).await?;
        body.get("correlationId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| CallError::Decode("no correlationId in the answer".into()).into())
    }

    /// The delivery result of a validation event.
    pub async fn get_validation_event(
        &self,
        correlation_id: &str,
    ) -> Result<Value, PartnerCenterError> {
        let id = ReferralId::parse(correlation_id)
            .map_err(|_| CallError::Decode("the correlation id is not a GUID".into()))?;
        let url = join_url(
            &self.webhook_api,
            &format!("/webhooks/v1/registration/validationEvents/{id}"),
        )?;
        let response = self
            .send(
                "get validation event",
                Method::GET,
                url,
                PARTNER_CENTER_WEBHOOK_SCOPE,
                |r| r,
            )
            .await?;
        Ok(crate::http::json_body(response).await?)
    }
}
