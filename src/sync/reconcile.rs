//! Recovery: every referral updated in a window is listed (following `@odata.nextLink` on the
//! API's origin only) and synced with bounded concurrency, honouring 429 `Retry-After`
//! through the shared retry. Used by `backfill` and by the `ReferralReconcile` timer.

use std::collections::HashSet;

use futures::{StreamExt, stream};

use super::{SyncError, SyncReport, Syncer};
use crate::{
    domain::ReferralId,
    partner_center::{ListQuery, PartnerCenterError},
};

/// The referrals updated in a window.
#[derive(Debug, Default)]
pub struct Listing {
    /// Their ids, oldest update first, each once.
    pub ids: Vec<ReferralId>,
    /// Items that could not be read as referrals, with why.
    pub unreadable: Vec<String>,
    /// Pages read.
    pub pages: usize,
}

/// Lists the referrals updated from `since` to `until` (RFC 3339 UTC).
pub async fn list_updated(
    syncer: &Syncer,
    since: &str,
    until: Option<&str>,
) -> Result<Listing, PartnerCenterError> {
    let client = syncer.partner_center();
    let mut next = Some(client.first_page_url(&ListQuery {
        since: since.to_owned(),
        until: until.map(str::to_owned),
        page_size: 100,
    })?);
    let mut listing = Listing::default();
    let mut seen = HashSet::new();
    while let Some(url) = next {
        let page = client.list_page(&url).await?;
        listing.pages += 1;
        for referral in page.referrals {
            if seen.insert(referral.id().clone()) {
                listing.ids.push(referral.id().clone());
            }
        }
        listing.unreadable.extend(page.invalid);
        next = page.next;
    }
    Ok(listing)
}

/// Syncs (or with `dry_run` previews) each id, at most `concurrency` at a time; `progress`
/// is called after each one. Once the CRM's API budget is used up the rest fail as
/// [`SyncError::OverBudget`] without a request (a transient failure: a later run syncs them).
pub async fn sync_all(
    syncer: &Syncer,
    ids: Vec<ReferralId>,
    concurrency: usize,
    dry_run: bool,
    progress: impl Fn(),
) -> Vec<(ReferralId, Result<SyncReport, SyncError>)> {
    stream::iter(ids)
        .map(|id| async move {
            if let Some(why) = syncer.crm().over_budget() {
                return (id, Err(SyncError::OverBudget(why)));
            }
            let result = if dry_run {
                syncer.preview(&id).await
            } else {
                syncer.sync(&id).await
            };
            (id, result)
        })
        .buffer_unordered(concurrency.max(1))
        .inspect(|_| progress())
        .collect()
        .await
}

/// Counts per outcome of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Referrals listed.
    pub listed: usize,
    /// Records created.
    pub created: usize,
    /// Records or referrals changed.
    pub updated: usize,
    /// Nothing to do.
    pub unchanged: usize,
    /// Failures a later run may fix (throttling, outages, conflicts).
    pub transient: usize,
    /// Failures no retry fixes (also written to the record's status column).
    pub permanent: usize,
}

impl Summary {
    /// Counts the results of [`sync_all`].
    pub fn of(results: &[(ReferralId, Result<SyncReport, SyncError>)], unreadable: usize) -> Self {
        let mut summary = Self {
            listed: results.len(),
            permanent: unreadable,
            ..Self::default()
        };
        for (_, result) in results {
            match result {
                Ok(report) => match report.summary() {
                    "created" => summary.created += 1,
                    "updated" => summary.updated += 1,
                    _ => summary.unchanged += 1,
                },
                Err(e) => match e.disposition() {
                    super::Disposition::RetryLater(_) => summary.transient += 1,
                    super::Disposition::GiveUp(_) => summary.permanent += 1,
                },
            }
        }
        summary
    }

    /// `N created, N updated, N unchanged, N failed (N transient)`.
    pub fn line(&self) -> String {
        format!(
            "{} listed: {} created, {} updated, {} unchanged, {} failed ({} transient)",
            self.listed,
            self.created,
            self.updated,
            self.unchanged,
            self.transient + self.permanent,
            self.transient
        )
    }
}
