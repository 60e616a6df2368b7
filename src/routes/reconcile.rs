//! `POST /ReferralReconcile`: the daily timer that syncs every referral updated since its last
//! complete run (its watermark blob, minus an overlap), so a callback Partner Center gave up on
//! is synced within a day without an operator. The watermark moves only after a run in which
//! nothing failed transiently; timer invocations are not retried by the host, so the next run
//! picks the work up.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::TimerAnswer;
use crate::{
    config::ReconcileSettings,
    envelope::InvokeResponse,
    sync::{
        Syncer,
        reconcile::{self, Summary},
    },
};

/// The output binding that writes the watermark blob (function.json).
pub const WATERMARK_OUTPUT: &str = "watermarkOut";

/// The watermark blob's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Watermark {
    /// When the last complete run started (RFC 3339 UTC); the next run lists from here,
    /// minus the overlap.
    pub completed_run_started_at: String,
    /// That run's counts, for people reading the blob.
    #[serde(default)]
    pub summary: String,
}

/// The window start: the watermark minus the overlap, or `first_lookback` before `now` when
/// there is no usable watermark.
pub fn since(
    watermark: Option<&str>,
    settings: &ReconcileSettings,
    now: OffsetDateTime,
) -> OffsetDateTime {
    let last = watermark
        .and_then(|text| serde_json::from_str::<Watermark>(text).ok())
        .and_then(|w| OffsetDateTime::parse(&w.completed_run_started_at, &Rfc3339).ok());
    match last {
        Some(last) => last - settings.overlap,
        None => now - settings.first_lookback,
    }
}

/// Handles one timer invocation envelope; `now` is when the run started.
pub async fn handle(
    syncer: Result<&Syncer, &str>,
    settings: &ReconcileSettings,
    envelope: &[u8],
    now: OffsetDateTime,
) -> TimerAnswer {
    let (data, syncer) = match super::timer_request(envelope, syncer) {
        Ok(request) => request,
        Err(line) => return TimerAnswer::failed(line),
    };
    let watermark = data.watermark.as_deref();
    if watermark.is_some_and(|w| serde_json::from_str::<Watermark>(w).is_err()) {
        tracing::warn!("the watermark blob is unreadable; looking back from now instead");
    }
    let since = crate::sync::utc_seconds(since(watermark, settings, now));
    let listing = match reconcile::list_updated(syncer, &since, None).await {
        Ok(listing) => listing,
        Err(e) => {
            return TimerAnswer::failed(format!(
                "listing referrals updated since {since} failed: {e}; the watermark stays, the next run tries again"
            ));
        }
    };
    let unreadable = listing.unreadable.len();
    let results =
        reconcile::sync_all(syncer, listing.ids, settings.concurrency, false, || {}).await;
    for (id, result) in &results {
        if let Err(e) = result {
            tracing::warn!(referral_id = %id, error = %e, "reconcile: referral not synced");
        }
    }
    let summary = Summary::of(&results, unreadable);
    let line = format!(
        "reconciled referrals updated since {since}{}: {}",
        if data.timer.is_past_due {
            " (catch-up run)"
        } else {
            ""
        },
        summary.line()
    );
    if summary.transient > 0 {
        return TimerAnswer::failed(format!(
            "{line}; the watermark stays so the next run retries them"
        ));
    }
    tracing::info!(
        listed = summary.listed,
        created = summary.created,
        updated = summary.updated,
        failed = summary.permanent,
        "{line}"
    );
    let watermark = Watermark {
        completed_run_started_at: crate::sync::utc_seconds(now),
        summary: summary.line(),
    };
    let text = serde_json::to_string(&watermark).unwrap_or_default();
    TimerAnswer {
        success: true,
        response: InvokeResponse::default()
            .output(WATERMARK_OUTPUT, Value::from(text))
            .log(line),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> ReconcileSettings {
        ReconcileSettings {
            overlap: Duration::from_secs(3600),
            first_lookback: Duration::from_secs(86_400),
            concurrency: 4,
        }
    }

    #[test]
    fn the_window_starts_at_the_watermark_minus_the_overlap_or_a_day_back() {
        let now = OffsetDateTime::parse("2026-12-02T03:30:00Z", &Rfc3339).unwrap();
        let at = |w: Option<&str>| crate::sync::utc_seconds(since(w, &settings(), now));
        assert_eq!(
            at(Some(r#"{"completedRunStartedAt":"2026-12-01T03:30:00Z"}"#)),
            "2026-12-01T02:30:00Z"
        );
        assert_eq!(at(None), "2026-12-01T03:30:00Z", "first run");
        assert_eq!(at(Some("not json")), "2026-12-01T03:30:00Z");
        assert_eq!(
            at(Some(r#"{"completedRunStartedAt":"yesterday"}"#)),
            "2026-12-01T03:30:00Z"
        );
    }

    #[test]
    fn the_watermark_is_json_text_that_the_host_writes_as_is() {
        let text = serde_json::to_string(&Watermark {
            completed_run_started_at: "2026-12-02T03:30:00Z".into(),
            summary: "s".into(),
        })
        .unwrap();
        // The host base64-decodes an output string that happens to be base64; JSON text
        // starting with `{` never is.
        assert!(text.starts_with('{'));
        assert_eq!(
            serde_json::from_str::<Watermark>(&text)
                .unwrap()
                .completed_run_started_at,
            "2026-12-02T03:30:00Z"
        );
    }
}
