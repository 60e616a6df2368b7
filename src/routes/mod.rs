//! The handler's HTTP routes: the readiness probe and one route per function folder.

pub mod crm_changes;
pub mod health;
pub mod reconcile;
pub mod referral_sync;
pub mod webhook;

/// How a timer function answers the host.
#[derive(Debug)]
pub struct TimerAnswer {
    /// `true`: 2xx (a complete run); `false`: non-2xx, so the invocation shows as failed.
    pub success: bool,
    /// The body.
    pub response: crate::envelope::InvokeResponse,
}

impl TimerAnswer {
    /// An incomplete run: logged, and answered non-2xx with the line.
    pub fn failed(line: String) -> Self {
        tracing::error!("{line}");
        Self {
            success: false,
            response: crate::envelope::InvokeResponse::default().log(line),
        }
    }
}

/// A timer invocation's `Data` and the sync, or the line that says why the run cannot start.
pub fn timer_request<'a>(
    envelope: &[u8],
    syncer: Result<&'a crate::sync::Syncer, &str>,
) -> Result<(crate::envelope::TimerData, &'a crate::sync::Syncer), String> {
    let request: crate::envelope::InvokeRequest<crate::envelope::TimerData> =
        serde_json::from_slice(envelope)
            .map_err(|e| format!("malformed invocation envelope: {e}"))?;
    let syncer =
        syncer.map_err(|reason| format!("not configured: {reason}; the next run tries again"))?;
    Ok((request.data, syncer))
}
