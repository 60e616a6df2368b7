//! `backfill`: list referrals updated in a window (following `@odata.nextLink` on the API
//! host only) and sync each with bounded concurrency, honouring 429 `Retry-After` through the
//! shared retry. Ends with counts per outcome and the failures; non-zero exit on any failure.

use std::{io::IsTerminal, io::Write};

use time::{
    Date, OffsetDateTime, PrimitiveDateTime, Time, format_description::well_known::Rfc3339,
};

use crate::{
    config::Settings,
    domain::ReferralId,
    sync::{
        SyncError, SyncReport, Syncer,
        reconcile::{self, Listing},
    },
};

/// Backfill options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Window start.
    pub since: String,
    /// Window end.
    pub until: Option<String>,
    /// Syncs in flight at most.
    pub concurrency: usize,
    /// Write nothing.
    pub dry_run: bool,
}

/// `2026-01-31` or an RFC 3339 time → that instant in UTC.
pub fn parse_date(raw: &str, flag: &str) -> anyhow::Result<OffsetDateTime> {
    let raw = raw.trim();
    let parsed = OffsetDateTime::parse(raw, &Rfc3339).or_else(|_| {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        Date::parse(raw, &format).map(|d| PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc())
    });
    let parsed = parsed.map_err(|_| {
        anyhow::anyhow!("{flag} `{raw}` is not a date like 2026-01-31 or 2026-01-31T08:00:00Z")
    })?;
    Ok(parsed.to_offset(time::UtcOffset::UTC))
}

/// `--since` and `--until` as RFC 3339 UTC times (`2026-01-31T00:00:00Z`); refuses an
/// `--until` before `--since`, comparing instants rather than text.
fn window(since: &str, until: Option<&str>) -> anyhow::Result<(String, Option<String>)> {
    let since = parse_date(since, "--since")?;
    let until = until.map(|u| parse_date(u, "--until")).transpose()?;
    let since_text = since.format(&Rfc3339)?;
    let until_text = match until {
        Some(until) => {
            let text = until.format(&Rfc3339)?;
            anyhow::ensure!(
                until >= since,
                "--until {text} is before --since {since_text}"
            );
            Some(text)
        }
        None => None,
    };
    Ok((since_text, until_text))
}

/// Runs the backfill; returns whether every referral synced.
pub async fn run(
    settings: &Settings,
    options: &Options,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let (since, until) = window(&options.since, options.until.as_deref())?;
    let syncer = Syncer::from_settings(settings)?;
    let Listing {
        ids,
        unreadable,
        pages,
    } = reconcile::list_updated(&syncer, &since, until.as_deref()).await?;
    writeln!(
        out,
        "{} referrals updated from {since}{} ({pages} pages){}",
        ids.len(),
        until
            .as_deref()
            .map(|u| format!(" to {u}"))
            .unwrap_or_default(),
        if options.dry_run {
            "; dry run, nothing is written"
        } else {
            ""
        }
    )?;

    let bar = if std::io::stdout().is_terminal() {
        indicatif::ProgressBar::new(ids.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut stopped: Option<String> = None;
    let mut not_started = 0usize;
    let results: Vec<(ReferralId, Result<SyncReport, String>)> =
        reconcile::sync_all(&syncer, ids, options.concurrency, options.dry_run, || {
            bar.inc(1)
        })
        .await
        .into_iter()
        .filter_map(|(id, result)| match result {
            Err(SyncError::OverBudget(why)) => {
                not_started += 1;
                stopped.get_or_insert(why);
                None
            }
            other => Some((id, other.map_err(|e| e.to_string()))),
        })
        .collect();
    bar.finish_and_clear();

    let count = |what: &str| {
        results
            .iter()
            .filter(|(_, r)| r.as_ref().is_ok_and(|s| s.summary() == what))
            .count()
    };
    let failures: Vec<&(ReferralId, Result<SyncReport, String>)> =
        results.iter().filter(|(_, r)| r.is_err()).collect();
    let verb = if options.dry_run { "would be " } else { "" };
    for (id, result) in &results {
        if let Ok(report) = result
            && report.summary() != "unchanged"
        {
            writeln!(
                out,
                "{id} {verb}{}: {} {}",
                report.summary(),
                report.kind,
                report.record_id
            )?;
        }
    }
    writeln!(
        out,
        "{} {verb}created, {} {verb}updated, {} unchanged, {} failed",
        count("created"),
        count("updated"),
        count("unchanged"),
        failures.len() + unreadable.len()
    )?;
    for (id, result) in &failures {
        if let Err(reason) = result {
            writeln!(out, "failed {id}: {reason}")?;
        }
    }
    for reason in &unreadable {
        writeln!(out, "failed (unreadable list item): {reason}")?;
    }
    if let Some(why) = &stopped {
        writeln!(
            out,
            "stopped early, {not_started} not synced: {why}; run the same backfill again later (what is done stays done)"
        )?;
    }
    if !failures.is_empty() {
        writeln!(
            out,
            "run `referral-connector sync <id>` for each failed referral once the cause is fixed"
        )?;
    }
    Ok(failures.is_empty() && unreadable.is_empty() && stopped.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_normalised_to_utc() {
        assert_eq!(
            window("2026-01-31", Some("2026-01-31T10:00:00+02:00")).unwrap(),
            (
                "2026-01-31T00:00:00Z".to_owned(),
                Some("2026-01-31T08:00:00Z".to_owned())
            )
        );
        assert!(
            parse_date("yesterday", "--since")
                .unwrap_err()
                .to_string()
                .contains("--since")
        );
    }

    #[test]
    fn the_window_is_ordered_by_instant_not_by_text() {
        // As text, "…00Z" sorts after "…00.5Z" ('Z' > '.'), though it is half a second earlier.
        let err = window("2026-01-31T08:00:00.5Z", Some("2026-01-31T08:00:00Z")).unwrap_err();
        assert!(err.to_string().contains("is before --since"), "{err}");
        assert_eq!(
            window("2026-01-31T08:00:00Z", Some("2026-01-31T08:00:00.5Z"))
                .unwrap()
                .1
                .as_deref(),
            Some("2026-01-31T08:00:00.5Z")
        );
        assert!(window("2026-01-31T10:00:00+02:00", Some("2026-01-31T08:00:00Z")).is_ok());
    }
}
