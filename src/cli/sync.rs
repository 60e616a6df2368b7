//! `sync ID…`: the queue function's sync, run by hand.

use std::io::Write;

use crate::{config::Settings, domain::ReferralId, sync::Syncer};

/// Syncs each id and prints `<id> created|updated|unchanged|failed: reason`.
/// Returns whether every id succeeded.
pub async fn run(
    settings: &Settings,
    ids: &[String],
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let syncer = Syncer::from_settings(settings)?;
    let mut ok = true;
    for raw in ids {
        let line = match ReferralId::parse(raw) {
            Err(e) => {
                ok = false;
                format!("{raw} failed: {e}")
            }
            Ok(id) => match syncer.sync(&id).await {
                Ok(report) => format!("{id} {}: {}", report.summary(), report.describe()),
                Err(e) => {
                    ok = false;
                    format!("{id} failed: {e}")
                }
            },
        };
        writeln!(out, "{line}")?;
    }
    Ok(ok)
}
