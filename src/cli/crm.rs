//! The CRM → Partner Center commands: `sync --crm <table> <id>…` (one record at a time, as
//! CrmChanges syncs it), `backfill --crm --since D` (every record changed since D) and
//! `crm-changes --dry-run` (what the next CrmChanges run would send, writing nothing).

use std::io::Write;

use time::OffsetDateTime;

use crate::{
    config::Settings,
    crm::RecordKind,
    sync::{
        Syncer,
        to_partner_center::{PollSettings, PollState},
        utc_seconds,
    },
};

/// Parses `lead` or `opportunity`.
pub fn parse_table(raw: &str) -> Result<RecordKind, String> {
    RecordKind::ALL
        .into_iter()
        .find(|k| k.name().eq_ignore_ascii_case(raw.trim()))
        .ok_or_else(|| format!("`{raw}` is not a table: use lead or opportunity"))
}

/// `sync --crm <table> <id>…`: prints `<table> <id> <outcome>: <what>` per record; returns
/// whether every record synced.
pub async fn sync_records(
    settings: &Settings,
    kind: RecordKind,
    ids: &[String],
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let syncer = Syncer::from_settings(settings)?;
    let mut ok = true;
    for id in ids {
        let line = match syncer.sync_record(kind, id.trim(), true).await {
            Ok(done) => format!("{kind} {id} {}: {}", done.summary(), done.describe()),
            Err(e) => {
                ok = false;
                format!("{kind} {id} failed: {e}")
            }
        };
        writeln!(out, "{line}")?;
    }
    Ok(ok)
}

/// The poll's settings for a command: no overlap (the window is the operator's), failures
/// never reported.
fn command_poll(settings: &Settings, concurrency: usize) -> PollSettings {
    PollSettings {
        overlap: std::time::Duration::ZERO,
        concurrency,
        max_runs: u32::MAX,
        ..settings.sync.poll.clone()
    }
}

/// `backfill --crm --since D`: one CrmChanges run over every record changed since `since`;
/// prints its counts and each failure. Returns whether nothing failed.
pub async fn backfill(
    settings: &Settings,
    since: OffsetDateTime,
    concurrency: usize,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let syncer = Syncer::from_settings(settings)?;
    let poll = command_poll(settings, concurrency);
    let state = PollState {
        since: Some(utc_seconds(since)),
        failures: Default::default(),
    };
    let now = OffsetDateTime::now_utc();
    if dry_run {
        return preview(&syncer, &state, &poll, now, out).await;
    }
    writeln!(out, "CRM records changed since {}", utc_seconds(since))?;
    let outcome = syncer.poll(state, &poll, now).await?;
    writeln!(out, "{}", outcome.line())?;
    for (slot, failure) in &outcome.state.failures {
        writeln!(out, "failed {slot}: {}", failure.reason)?;
    }
    if outcome.failed > 0 {
        writeln!(
            out,
            "run `referral-connector sync --crm <table> <id>` for each failed record once the cause is fixed"
        )?;
    }
    Ok(outcome.failed == 0)
}

/// The state the next CrmChanges run starts from: its watermark blob in the app's storage
/// account (none yet: the first run reads a day back).
pub async fn stored_state(settings: &Settings) -> anyhow::Result<PollState> {
    let read = async {
        let client = crate::storage::StorageClient::from_settings(settings)?;
        client
            .blob_text(
                crate::storage::WATERMARK_CONTAINER,
                super::status::Timer::CrmChanges.blob(),
            )
            .await
    };
    match read.await {
        Ok(None) => Ok(PollState::default()),
        Ok(Some(blob)) => serde_json::from_str(&blob.text).map_err(|e| {
            anyhow::anyhow!(
                "the CrmChanges watermark blob is not readable ({e}); pass --since DATE"
            )
        }),
        Err(e) => Err(anyhow::anyhow!(
            "could not read the CrmChanges watermark: {e}; pass --since DATE to preview without it"
        )),
    }
}

/// `crm-changes --dry-run`: what a CrmChanges run from `state` would send.
pub async fn dry_run(
    settings: &Settings,
    state: &PollState,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let syncer = Syncer::from_settings(settings)?;
    let now = OffsetDateTime::now_utc();
    preview(&syncer, state, &settings.sync.poll, now, out).await
}

async fn preview(
    syncer: &Syncer,
    state: &PollState,
    poll: &PollSettings,
    now: OffsetDateTime,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let from = crate::sync::to_partner_center::read_from(state, poll, now);
    writeln!(
        out,
        "CRM records changed since {from}; dry run, nothing is written"
    )?;
    let lines = syncer.poll_preview(state, poll, now).await?;
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "{} with something to send", lines.len())?;
    Ok(true)
}
