//! `POST /CrmChanges`: the timer that pushes changes made in the CRM to Partner Center
//! (`sync::to_partner_center`). The poll state lives in the watermark blob, read and written
//! through the host's blob bindings; records given up on go to `referral-sync-poison`. Timer
//! invocations are not retried by the host, so a run that cannot read the CRM answers an error,
//! keeps the state, and the next run picks the work up.

use serde_json::Value;
use time::OffsetDateTime;

use super::TimerAnswer;
use crate::{
    envelope::InvokeResponse,
    sync::{
        Syncer,
        to_partner_center::{PollSettings, PollState},
    },
};

/// The output binding that writes the poll state blob (function.json).
pub const STATE_OUTPUT: &str = "watermarkOut";
/// The queue output binding for records given up on (function.json).
pub const POISON_OUTPUT: &str = "poison";

/// Handles one timer invocation envelope; `now` is when the run started.
pub async fn handle(
    syncer: Result<&Syncer, &str>,
    settings: &PollSettings,
    envelope: &[u8],
    now: OffsetDateTime,
) -> TimerAnswer {
    let (data, syncer) = match super::timer_request(envelope, syncer) {
        Ok(request) => request,
        Err(line) => return TimerAnswer::failed(line),
    };
    let state = match data.watermark.as_deref() {
        None => PollState::default(),
        Some(text) => serde_json::from_str(text).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the CrmChanges state blob is unreadable; starting afresh");
            PollState::default()
        }),
    };
    let outcome = match syncer.poll(state, settings, now).await {
        Ok(outcome) => outcome,
        Err(e) => {
            return TimerAnswer::failed(format!(
                "reading the changed CRM records failed: {e}; the watermark stays, the next run tries again"
            ));
        }
    };
    let line = format!("CrmChanges: {}", outcome.line());
    if outcome.changed > 0 || outcome.failed > 0 {
        tracing::info!(
            read = outcome.read,
            changed = outcome.changed,
            failed = outcome.failed,
            "{line}"
        );
    } else {
        tracing::debug!("{line}");
    }
    let mut response = InvokeResponse::default()
        .output(
            STATE_OUTPUT,
            Value::from(serde_json::to_string(&outcome.state).unwrap_or_default()),
        )
        .log(line);
    match outcome.poison.len() {
        0 => {}
        1 => response = response.output(POISON_OUTPUT, outcome.poison[0].clone()),
        _ => response = response.output(POISON_OUTPUT, Value::Array(outcome.poison)),
    }
    TimerAnswer {
        success: true,
        response,
    }
}
