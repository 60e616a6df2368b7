//! `backfill`: list referrals updated in a window (following `@odata.nextLink` on the API
//! host only) and sync each with bounded concurrency, honouring 429 `Retry-After` through the
//! shared retry. Ends with counts per outcome and the failures; non-zero exit on any failure.

use std::{collections::HashSet, io::IsTerminal, io::Write};

use futures::{StreamExt, stream};
use time::{
    Date, OffsetDateTime, PrimitiveDateTime, Time, format_description::well_known::Rfc3339,
};

use crate::{config::Settings, domain::ReferralId, partner_center::ListQuery, sync::Syncer};

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

/// `2026-01-31` or an RFC 3339 time → `2026-01-31T00:00:00Z` (UTC).
pub fn parse_date(raw: &str, flag: &str) -> anyhow::Result<String> {
    let raw = raw.trim();
    let parsed = OffsetDateTime::parse(raw, &Rfc3339).or_else(|_| {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        Date::parse(raw, &format).map(|d| PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc())
    });
    let parsed = parsed.map_err(|_| {
        anyhow::anyhow!("{flag} `{raw}` is not a date like 2026-01-31 or 2026-01-31T08:00:00Z")
    })?;
    Ok(parsed.to_offset(time::UtcOffset::UTC).format(&Rfc3339)?)
}

/// Runs the backfill; returns whether every referral synced.
pub async fn run(
    settings: &Settings,
    options: &Options,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let since = parse_date(&options.since, "--since")?;
    let until = options
        .until
        .as_deref()
        .map(|u| parse_date(u, "--until"))
        .transpose()?;
    if let Some(until) = &until {
        anyhow::ensure!(*until >= since, "--until {until} is before --since {since}");
    }
    let syncer = Syncer::from_settings(settings)?;
    let client = syncer.partner_center();
    let mut next = Some(client.first_page_url(&ListQuery {
        since: since.clone(),
        until: until.clone(),
        page_size: 100,
    })?);
    let mut ids: Vec<ReferralId> = Vec::new();
    let mut seen = HashSet::new();
    let mut unreadable = Vec::new();
    let mut pages = 0;
    while let Some(url) = next {
        let page = client.list_page(&url).await?;
        pages += 1;
        for referral in page.referrals {
            if seen.insert(referral.id().clone()) {
                ids.push(referral.id().clone());
            }
        }
        unreadable.extend(page.invalid);
        next = page.next;
    }
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
    let results: Vec<(ReferralId, Result<&'static str, String>)> = stream::iter(ids)
        .map(|id| {
            let syncer = &syncer;
            async move {
                let result = if options.dry_run {
                    syncer.preview(&id).await
                } else {
                    syncer.sync(&id).await
                };
                (id, result.map(|r| r.summary()).map_err(|e| e.to_string()))
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .inspect(|_| bar.inc(1))
        .collect()
        .await;
    bar.finish_and_clear();

    let count = |what: &str| {
        results
            .iter()
            .filter(|(_, r)| r.as_ref().is_ok_and(|s| *s == what))
            .count()
    };
    let failures: Vec<&(ReferralId, Result<&str, String>)> =
        results.iter().filter(|(_, r)| r.is_err()).collect();
    let verb = if options.dry_run { "would be " } else { "" };
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
    if !failures.is_empty() {
        writeln!(
            out,
            "run `referral-connector sync <id>` for each failed referral once the cause is fixed"
        )?;
    }
    Ok(failures.is_empty() && unreadable.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_normalised_to_utc() {
        assert_eq!(
            parse_date("2026-01-31", "--since").unwrap(),
            "2026-01-31T00:00:00Z"
        );
        assert_eq!(
            parse_date("2026-01-31T10:00:00+02:00", "--since").unwrap(),
            "2026-01-31T08:00:00Z"
        );
        assert!(
            parse_date("yesterday", "--since")
                .unwrap_err()
                .to_string()
                .contains("--since")
        );
    }
}
