//! Builds the handler: binds `127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT` first (the host probes
//! `/` every 25 ms), then serves the probe and one route per function.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use time::OffsetDateTime;
use tracing::Instrument;
use warp::{Filter, Reply, http::StatusCode};

use crate::{
    config::Settings,
    envelope::{HttpResponseOutput, InvokeResponse},
    routes,
    sync::Syncer,
    webhook_auth::CertSource,
};

/// Largest invocation envelope read (a 1 MiB callback, base64-encoded, plus headers).
const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;

/// Shared state of the routes.
#[derive(Debug)]
pub struct AppState {
    /// Webhook certificate source.
    pub certs: CertSource,
    /// The sync, or why it is not configured.
    pub syncer: Result<Syncer, String>,
    /// host.json `maxDequeueCount`.
    pub max_dequeue_count: u32,
    /// The `ReferralReconcile` timer.
    pub reconcile: crate::config::ReconcileSettings,
    /// The `CrmChanges` timer.
    pub poll: crate::sync::to_partner_center::PollSettings,
}

impl AppState {
    /// Builds the state; a sync that is not configured is reported, not fatal, so the webhook
    /// keeps working while the operator finishes the setup.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let certs = CertSource::new(&settings.webhook, &settings.http)?;
        let syncer = Syncer::from_settings(settings).map_err(|e| e.to_string());
        if let Err(reason) = &syncer {
            tracing::error!(error = %reason, "ReferralSync is not configured; queue messages will be retried and then poisoned with this reason");
        }
        Ok(Self {
            certs,
            syncer,
            max_dequeue_count: settings.sync.max_dequeue_count,
            reconcile: settings.sync.reconcile.clone(),
            poll: settings.sync.poll.clone(),
        })
    }
}

/// A bound, not yet running handler.
pub struct Application {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
}

impl Application {
    /// Binds `127.0.0.1:<settings.port>` (0 picks a free port) and builds the state.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let address = SocketAddr::from(([127, 0, 0, 1], settings.port));
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {address} (FUNCTIONS_CUSTOMHANDLER_PORT={})",
                    settings.port
                )
            })?;
        let state = Arc::new(AppState::new(settings)?);
        Ok(Self { listener, state })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves. Trust anchors load in the background meanwhile.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let warm = self.state.clone();
        tokio::spawn(async move {
            if let Err(e) = warm.certs.warm_up().await {
                tracing::error!(error = %e, "the webhook trust store could not be loaded");
            }
        });
        warp::serve(routes(self.state))
            .incoming(self.listener)
            .graceful(shutdown)
            .run()
            .await;
    }
}

/// All routes.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let webhook = invocation("ReferralWebhook")
        .and(with_state.clone())
        .then(|span: tracing::Span, envelope, state| webhook(state, envelope).instrument(span));
    let sync = invocation("ReferralSync").and(with_state.clone()).then(
        |span: tracing::Span, envelope, state| referral_sync(state, envelope).instrument(span),
    );
    let reconcile = invocation("ReferralReconcile")
        .and(with_state.clone())
        .then(|span: tracing::Span, envelope, state| {
            referral_reconcile(state, envelope).instrument(span)
        });
    let changes = invocation("CrmChanges")
        .and(with_state)
        .then(|span: tracing::Span, envelope, state| crm_changes(state, envelope).instrument(span));
    routes::health::route()
        .map(Reply::into_response)
        .or(webhook)
        .unify()
        .or(sync)
        .unify()
        .or(reconcile)
        .unify()
        .or(changes)
        .unify()
        .recover(|_| async {
            Ok::<_, Infallible>(json_reply(
                StatusCode::NOT_FOUND,
                &InvokeResponse::default().log("no such function"),
            ))
        })
        .unify()
}

/// Why an invocation envelope could not be read.
#[derive(Debug, thiserror::Error)]
enum EnvelopeError {
    /// Over [`MAX_ENVELOPE_BYTES`].
    #[error("the invocation envelope is over {MAX_ENVELOPE_BYTES} bytes")]
    TooLarge,
    /// The connection failed while the body was read.
    #[error("the invocation envelope could not be read: {0}")]
    Unreadable(String),
}

/// `POST /<function>`: the invocation's span (with the host's invocation id) and its envelope,
/// read from a chunked body with a cap.
fn invocation(
    function: &'static str,
) -> impl Filter<Extract = (tracing::Span, Result<Bytes, EnvelopeError>), Error = warp::Rejection> + Clone
{
    warp::post()
        .and(warp::path(function))
        .and(warp::path::end())
        .and(warp::header::optional::<String>(
            "x-azure-functions-invocationid",
        ))
        .and(warp::body::stream())
        .then(move |invocation_id: Option<String>, body| async move {
            let span = tracing::info_span!(
                "invocation",
                function,
                invocation_id = invocation_id.as_deref().unwrap_or("-"),
                referral_id = tracing::field::Empty,
                dequeue_count = tracing::field::Empty,
            );
            (span, read_capped(body).await)
        })
        .untuple_one()
}

fn json_reply(status: StatusCode, response: &InvokeResponse) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(response), status).into_response()
}

/// Reads a chunked body with a cap (the host sends no Content-Length).
async fn read_capped<S, B>(body: S) -> Result<Bytes, EnvelopeError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| EnvelopeError::Unreadable(e.to_string()))?;
        if out.len() + chunk.remaining() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(out))
}

async fn webhook(
    state: Arc<AppState>,
    envelope: Result<Bytes, EnvelopeError>,
) -> warp::reply::Response {
    let envelope = match envelope {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::warn!(error = %e, "ReferralWebhook invocation refused");
            let response = InvokeResponse::default().output(
                "res",
                HttpResponseOutput::json(413, &serde_json::json!({"error": "payload_too_large"})),
            );
            return json_reply(StatusCode::OK, &response);
        }
    };
    let outcome =
        routes::webhook::process(&state.certs, &envelope, OffsetDateTime::now_utc()).await;
    json_reply(StatusCode::OK, &routes::webhook::respond(&outcome))
}

async fn referral_sync(
    state: Arc<AppState>,
    envelope: Result<Bytes, EnvelopeError>,
) -> warp::reply::Response {
    let envelope = match envelope {
        Ok(envelope) => envelope,
        Err(e) => {
            // Nothing was read, so there is no message to poison: let the host deliver it again.
            tracing::warn!(error = %e, "ReferralSync invocation body not read; answering 503 so the host retries the message");
            return json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &InvokeResponse::default().log(format!("retry later: {e}")),
            );
        }
    };
    let syncer = state.syncer.as_ref().map_err(String::as_str);
    let answer = routes::referral_sync::handle(syncer, state.max_dequeue_count, &envelope).await;
    let status = if answer.success {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_reply(status, &answer.response)
}

/// A timer invocation: the answer of `run`, 2xx for a complete run and 500 otherwise (the host
/// does not retry timers; the next run picks the work up).
async fn timer<F, Fut>(
    function: &str,
    state: Arc<AppState>,
    envelope: Result<Bytes, EnvelopeError>,
    run: F,
) -> warp::reply::Response
where
    F: FnOnce(Arc<AppState>, Bytes) -> Fut,
    Fut: Future<Output = routes::TimerAnswer>,
{
    let answer = match envelope {
        Ok(envelope) => run(state, envelope).await,
        Err(e) => routes::TimerAnswer::failed(format!(
            "{function} invocation body not read ({e}); the next run tries again"
        )),
    };
    let status = if answer.success {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    json_reply(status, &answer.response)
}

async fn crm_changes(
    state: Arc<AppState>,
    envelope: Result<Bytes, EnvelopeError>,
) -> warp::reply::Response {
    timer(
        "CrmChanges",
        state,
        envelope,
        |state, envelope| async move {
            let syncer = state.syncer.as_ref().map_err(String::as_str);
            let now = OffsetDateTime::now_utc();
            routes::crm_changes::handle(syncer, &state.poll, &envelope, now).await
        },
    )
    .await
}

async fn referral_reconcile(
    state: Arc<AppState>,
    envelope: Result<Bytes, EnvelopeError>,
) -> warp::reply::Response {
    timer(
        "ReferralReconcile",
        state,
        envelope,
        |state, envelope| async move {
            let syncer = state.syncer.as_ref().map_err(String::as_str);
            let now = OffsetDateTime::now_utc();
            routes::reconcile::handle(syncer, &state.reconcile, &envelope, now).await
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_in_use_names_the_address_and_the_setting() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut settings = Settings::from_vars(&Default::default()).unwrap();
        settings.port = taken.local_addr().unwrap().port();
        let Err(err) = Application::build(&settings).await else {
            panic!("bound a port that is in use")
        };
        let message = format!("{err:#}");
        assert!(
            message.contains(&format!("127.0.0.1:{}", settings.port))
                && message.contains("FUNCTIONS_CUSTOMHANDLER_PORT"),
            "{message}"
        );
    }
}
