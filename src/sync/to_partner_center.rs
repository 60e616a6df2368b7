//! CRM → Partner Center: the poll behind the `CrmChanges` timer. Each run reads the CRM records
//! that carry a referral key and changed since the stored watermark minus an overlap, and syncs
//! each one's referral (the same conditional sync as the queue function, so the seller's
//! value, close date and outcome reach Partner Center and nothing is written when nothing
//! differs). The watermark moves only past records that are done; a record that keeps failing
//! is retried on later runs and reported once to the poison queue after `maxDequeueCount` runs.
//! The state is plain data the host keeps in a blob; the bookkeeping is pure and table-tested.

use std::collections::{BTreeMap, HashSet};

use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{Disposition, SyncError, SyncReport, Syncer, share::ShareOutcome};
use crate::{
    crm::{CrmError, CrmRecord, RecordKind},
    domain::ReferralId,
    mapping::share::wants_share,
};

/// What a poll remembers between runs (the watermark blob).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollState {
    /// Records changed at or after this instant (RFC 3339 UTC) are read by the next run
    /// (minus the overlap). `None` before the first run.
    #[serde(default)]
    pub since: Option<String>,
    /// Records that failed, by `<table>:<record id>`.
    #[serde(default)]
    pub failures: BTreeMap<String, Failure>,
}

/// A record that failed on one or more runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// Its referral.
    pub referral_id: String,
    /// Its `modifiedon` when it last failed; a different one means it changed again.
    pub modified_on: Option<String>,
    /// Runs it failed on.
    pub runs: u32,
    /// The last reason.
    pub reason: String,
    /// Already written to the poison queue; skipped until it changes again.
    pub reported: bool,
}

/// How the poll behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSettings {
    /// Read again this far before the watermark (`CRM_POLL_OVERLAP_SECONDS`).
    pub overlap: std::time::Duration,
    /// How far back the first run reads.
    pub first_lookback: std::time::Duration,
    /// Records synced at the same time (`CRM_POLL_CONCURRENCY`).
    pub concurrency: usize,
    /// Runs a record may fail before it is reported (the host's `maxDequeueCount`).
    pub max_runs: u32,
    /// How long a claim to create a referral holds before another attempt may create it
    /// (`CRM_SHARE_CLAIM_SECONDS`); longer than one create call can take.
    pub claim_lease: std::time::Duration,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct PollOutcome {
    /// The state to store.
    pub state: PollState,
    /// Poison entries to write (each record once).
    pub poison: Vec<Value>,
    /// Records read.
    pub read: usize,
    /// Records synced without error.
    pub synced: usize,
    /// Records whose sync wrote something.
    pub changed: usize,
    /// Records that failed this run.
    pub failed: usize,
    /// Records skipped: reported and unchanged since.
    pub skipped: usize,
    /// Why the run stopped before syncing every record (the CRM's API budget).
    pub stopped: Option<String>,
}

impl PollOutcome {
    /// One line for the logs.
    pub fn line(&self) -> String {
        let line = format!(
            "{} read: {} synced ({} with changes), {} failed, {} skipped (reported, unchanged)",
            self.read, self.synced, self.changed, self.failed, self.skipped
        );
        match &self.stopped {
            Some(why) => format!("{line}; stopped early, the rest is read again next run: {why}"),
            None => line,
        }
    }
}

fn parse(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Where this run starts reading: the watermark minus the overlap, or the first lookback.
pub fn read_from(state: &PollState, settings: &PollSettings, now: OffsetDateTime) -> String {
    let from = match state.since.as_deref().and_then(parse) {
        Some(since) => since - settings.overlap,
        None => now - settings.first_lookback,
    };
    super::utc_seconds(from)
}

/// The next watermark: this run's start, unless a record that is still to be retried changed
/// earlier; never before the watermark it started from.
pub fn next_since(
    previous: Option<&str>,
    run_start: OffsetDateTime,
    pending: &[Option<&str>],
) -> String {
    let mut next = run_start;
    for modified in pending.iter().flatten().filter_map(|m| parse(m)) {
        next = next.min(modified);
    }
    if let Some(previous) = previous.and_then(parse) {
        next = next.max(previous);
    }
    super::utc_seconds(next)
}

/// Books one failure of a record: counts the run (from one again when the record changed
/// since it was reported) and says whether to report it now.
pub fn book_failure(
    failures: &mut BTreeMap<String, Failure>,
    slot: &str,
    referral_id: &str,
    modified_on: Option<&str>,
    reason: &str,
    max_runs: u32,
) -> bool {
    let entry = failures.entry(slot.to_owned()).or_insert_with(|| Failure {
        referral_id: referral_id.to_owned(),
        modified_on: modified_on.map(str::to_owned),
        runs: 0,
        reason: String::new(),
        reported: false,
    });
    if entry.reported && entry.modified_on.as_deref() != modified_on {
        entry.reported = false;
        entry.runs = 0;
    }
    entry.modified_on = modified_on.map(str::to_owned);
    entry.runs += 1;
    entry.reason = reason.to_owned();
    if !entry.reported && entry.runs >= max_runs {
        entry.reported = true;
        return true;
    }
    false
}

/// Whether a record was reported and has not changed since, so this run leaves it alone.
pub fn skipped(
    failures: &BTreeMap<String, Failure>,
    slot: &str,
    modified_on: Option<&str>,
) -> bool {
    failures
        .get(slot)
        .is_some_and(|f| f.reported && f.modified_on.as_deref() == modified_on)
}

fn slot(record: &CrmRecord) -> String {
    format!("{}:{}", record.kind, record.id)
}

impl Syncer {
    /// The tables the poll reads: a lead's referral may follow its opportunity, so the lead
    /// target reads both.
    pub fn polled_kinds(&self) -> &'static [RecordKind] {
        match self.target() {
            super::SyncTarget::Opportunity => &[RecordKind::Opportunity],
            super::SyncTarget::Lead | super::SyncTarget::Auto => &RecordKind::ALL,
        }
    }

    /// One `CrmChanges` run. An error means the CRM could not be read: nothing was synced and
    /// the state stays as it was.
    pub async fn poll(
        &self,
        state: PollState,
        settings: &PollSettings,
        now: OffsetDateTime,
    ) -> Result<PollOutcome, CrmError> {
        let (records, skipped_count, work, until) = self.poll_work(&state, settings, now).await?;
        let stopped = std::sync::Mutex::new(None::<String>);
        let stopped = &stopped;
        let results: Vec<_> = stream::iter(work)
            .map(|item| async move {
                if let Some(why) = self.crm().over_budget() {
                    let mut first = stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if first.is_none() {
                        tracing::warn!(reason = %why, "CrmChanges: stopping early; the records not synced are read again by the next run");
                        *first = Some(why);
                    }
                    return (item, Err(None));
                }
                let result = match &item {
                    Work::Linked(key, _) => self
                        .sync(key)
                        .await
                        .map(|r| r.summary() != "unchanged")
                        .map_err(Some),
                    Work::Share(record) => {
                        match self.share(record.clone(), true).await {
                            Ok(ShareOutcome::Waiting) => Err(None),
                            Ok(outcome) => {
                                tracing::info!(opportunity = %record.id, outcome = %outcome.describe(record), "CrmChanges: shared opportunity");
                                Ok(outcome.changed())
                            }
                            Err(e) => Err(Some(e)),
                        }
                    }
                };
                (item, result)
            })
            .buffer_unordered(settings.concurrency.max(1))
            .collect()
            .await;
        let mut state = state;
        let mut outcome = PollOutcome {
            state: PollState::default(),
            poison: Vec::new(),
            read: records,
            synced: 0,
            changed: 0,
            failed: 0,
            skipped: skipped_count,
            stopped: stopped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        };
        let mut pending = Vec::new();
        for (item, result) in &results {
            let record = item.record();
            let slot = slot(record);
            let referral_id = match item {
                Work::Linked(key, _) => key.as_str().to_owned(),
                Work::Share(_) => String::new(),
            };
            match result {
                Ok(changed) => {
                    outcome.synced += 1;
                    if *changed {
                        outcome.changed += 1;
                    }
                    state.failures.remove(&slot);
                }
                // Claimed by another attempt: not a failure, but not done either.
                Err(None) => pending.push(record.modified_on.clone()),
                Err(Some(error)) => {
                    outcome.failed += 1;
                    let reason = match error.disposition() {
                        Disposition::RetryLater(r) | Disposition::GiveUp(r) => r,
                    };
                    tracing::warn!(referral_id = %referral_id, record = %slot, error = %reason, "CrmChanges: record not synced; retried on the next run");
                    let report = book_failure(
                        &mut state.failures,
                        &slot,
                        &referral_id,
                        record.modified_on.as_deref(),
                        &reason,
                        settings.max_runs,
                    );
                    if report {
                        let mut entry = json!({
                            "table": record.kind.name(),
                            "recordId": record.id,
                            "error": format!("gave up after {} runs of CrmChanges: {reason}", settings.max_runs),
                            "failedAt": super::utc_seconds(now),
                        });
                        if !referral_id.is_empty() {
                            entry["referralId"] = Value::from(referral_id.clone());
                        }
                        outcome.poison.push(entry);
                    } else {
                        pending.push(record.modified_on.clone());
                    }
                }
            }
        }
        let pending: Vec<Option<&str>> = pending.iter().map(Option::as_deref).collect();
        let read_until = until.as_deref().and_then(parse).map_or(now, |u| u.min(now));
        state.since = Some(next_since(state.since.as_deref(), read_until, &pending));
        outcome.state = state;
        Ok(outcome)
    }

    /// What the next run would send, writing nothing: one line per record with work.
    pub async fn poll_preview(
        &self,
        state: &PollState,
        settings: &PollSettings,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, SyncError> {
        let (_, _, work, _) = self.poll_work(state, settings, now).await?;
        let mut lines = Vec::new();
        for item in work {
            match item {
                Work::Linked(key, _) => {
                    let report = self.preview(&key).await?;
                    if report.summary() != "unchanged" || !report.sent.is_empty() {
                        lines.push(report.describe_with_patch());
                    }
                }
                Work::Share(record) => {
                    let outcome = self.share(record.clone(), false).await?;
                    lines.push(outcome.describe(&record));
                }
            }
        }
        Ok(lines)
    }

    /// The records changed since the watermark and the work they need: linked records sync
    /// their referral (once per referral), unlinked shared opportunities are shared.
    async fn poll_work(
        &self,
        state: &PollState,
        settings: &PollSettings,
        now: OffsetDateTime,
    ) -> Result<(usize, usize, Vec<Work>, Option<String>), CrmError> {
        let from = read_from(state, settings, now);
        let mut records = Vec::new();
        let mut until: Option<String> = None;
        for kind in self.polled_kinds() {
            let table = self.mappings.table(*kind);
            let flag = match kind {
                RecordKind::Opportunity => table.partner_center.sync.as_deref(),
                RecordKind::Lead => None,
            };
            let columns = table.select_columns();
            let changes = self
                .crm()
                .changed_since(*kind, &from, flag, &columns)
                .await?;
            records.extend(changes.records);
            // The earliest bound of all tables: none of them is read past it.
            until = match (until, changes.until) {
                (Some(a), Some(b)) => Some(if parse(&b) < parse(&a) { b } else { a }),
                (a, b) => a.or(b),
            };
        }
        let read = records.len();
        let mut seen = HashSet::new();
        let mut work = Vec::new();
        let mut skipped_count = 0;
        for record in records {
            if skipped(
                &state.failures,
                &slot(&record),
                record.modified_on.as_deref(),
            ) {
                skipped_count += 1;
                continue;
            }
            match record.key.as_deref().map(ReferralId::parse) {
                // An adopted opportunity and its lead carry the same key: one sync for both.
                Some(Ok(key)) if seen.insert(key.clone()) => work.push(Work::Linked(key, record)),
                Some(_) => {}
                None if record.kind == RecordKind::Opportunity
                    && wants_share(self.mappings.table(record.kind), &record) =>
                {
                    work.push(Work::Share(record));
                }
                None => {}
            }
        }
        Ok((read, skipped_count, work, until))
    }
}

/// What syncing one CRM record to Partner Center did.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordSync {
    /// It has a referral: synced both ways.
    Synced(SyncReport),
    /// An opportunity without a referral, marked "Sync with Partner Center".
    Shared {
        /// The record.
        record: CrmRecord,
        /// What the share did.
        outcome: ShareOutcome,
    },
    /// Nothing to do: no referral, and not marked to be shared.
    Idle(CrmRecord),
}

impl RecordSync {
    /// `created`, `updated`, `unchanged` or `failed`, as operators read it.
    pub fn summary(&self) -> &'static str {
        match self {
            Self::Synced(report) => report.summary(),
            Self::Shared { outcome, .. } => match outcome {
                ShareOutcome::Created(_) | ShareOutcome::WouldCreate(_) => "created",
                ShareOutcome::Adopted(_) | ShareOutcome::WouldAdopt(_) => "updated",
                ShareOutcome::Invalid(_) => "refused",
                ShareOutcome::Waiting => "unchanged",
            },
            Self::Idle(_) => "unchanged",
        }
    }

    /// One line for logs and output.
    pub fn describe(&self) -> String {
        match self {
            Self::Synced(report) => report.describe(),
            Self::Shared { record, outcome } => outcome.describe(record),
            Self::Idle(record) => format!(
                "{} {}: no referral, and Sync with Partner Center is not yes; nothing to do",
                record.kind, record.id
            ),
        }
    }
}

impl Syncer {
    /// Syncs one CRM record to Partner Center, as CrmChanges does: its referral both ways, or
    /// a share. `write` false reads both sides and writes nothing.
    pub async fn sync_record(
        &self,
        kind: RecordKind,
        id: &str,
        write: bool,
    ) -> Result<RecordSync, SyncError> {
        let table = self.mappings.table(kind);
        let record = self
            .crm()
            .read_by_id(kind, id, &table.select_columns())
            .await?
            .ok_or_else(|| CrmError::Rejected {
                crm: self.crm().name(),
                message: format!("there is no {kind} with id {id}"),
            })?;
        match record.key.as_deref().map(ReferralId::parse) {
            Some(Ok(key)) => {
                let report = if write {
                    self.sync(&key).await?
                } else {
                    self.preview(&key).await?
                };
                Ok(RecordSync::Synced(report))
            }
            Some(Err(e)) => Err(CrmError::Rejected {
                crm: self.crm().name(),
                message: format!("{kind} {id} has an unusable referral id: {e}"),
            }
            .into()),
            None if kind == RecordKind::Opportunity && wants_share(table, &record) => {
                let outcome = self.share(record.clone(), write).await?;
                Ok(RecordSync::Shared { record, outcome })
            }
            None => Ok(RecordSync::Idle(record)),
        }
    }
}

/// One record's work in a run.
#[derive(Debug)]
enum Work {
    /// A record with a referral: sync it both ways.
    Linked(ReferralId, CrmRecord),
    /// An opportunity to share.
    Share(CrmRecord),
}

impl Work {
    fn record(&self) -> &CrmRecord {
        match self {
            Self::Linked(_, record) | Self::Share(record) => record,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        parse(text).unwrap()
    }

    fn settings() -> PollSettings {
        PollSettings {
            overlap: Duration::from_secs(120),
            first_lookback: Duration::from_secs(86_400),
            concurrency: 4,
            max_runs: 3,
            claim_lease: Duration::from_secs(300),
        }
    }

    #[test]
    fn runs_read_from_the_watermark_minus_the_overlap_or_a_day_back() {
        let now = at("2026-12-02T10:00:00Z");
        let state = |since: Option<&str>| PollState {
            since: since.map(str::to_owned),
            failures: BTreeMap::new(),
        };
        assert_eq!(
            read_from(&state(Some("2026-12-02T09:59:00Z")), &settings(), now),
            "2026-12-02T09:57:00Z"
        );
        assert_eq!(
            read_from(&state(None), &settings(), now),
            "2026-12-01T10:00:00Z"
        );
        assert_eq!(
            read_from(&state(Some("garbage")), &settings(), now),
            "2026-12-01T10:00:00Z"
        );
    }

    #[test]
    fn the_watermark_never_passes_a_record_still_to_retry() {
        let start = at("2026-12-02T10:00:00Z");
        type Case<'a> = (Option<&'a str>, &'a [Option<&'a str>], &'a str);
        let cases: [Case; 5] = [
            (Some("2026-12-02T09:59:00Z"), &[], "2026-12-02T10:00:00Z"),
            (
                Some("2026-12-02T09:00:00Z"),
                &[Some("2026-12-02T09:30:00Z"), Some("2026-12-02T09:45:00Z")],
                "2026-12-02T09:30:00Z",
            ),
            (
                Some("2026-12-02T09:40:00Z"),
                &[Some("2026-12-02T09:30:00Z")],
                "2026-12-02T09:40:00Z",
            ),
            (
                None,
                &[Some("2026-12-02T08:00:00Z")],
                "2026-12-02T08:00:00Z",
            ),
            (None, &[None], "2026-12-02T10:00:00Z"),
        ];
        for (previous, pending, expected) in cases {
            assert_eq!(
                next_since(previous, start, pending),
                expected,
                "{previous:?} {pending:?}"
            );
        }
    }

    #[test]
    fn a_record_is_reported_once_after_max_runs_and_again_only_after_it_changed() {
        let mut failures = BTreeMap::new();
        let t1 = Some("2026-12-02T09:00:00Z");
        let t2 = Some("2026-12-02T11:00:00Z");
        let book = |f: &mut BTreeMap<String, Failure>, m: Option<&str>| {
            book_failure(f, "opportunity:o1", "r1", m, "Partner Center: 400", 3)
        };
        assert!(!book(&mut failures, t1));
        assert!(!book(&mut failures, t1));
        assert!(book(&mut failures, t1), "the third run reports it");
        assert!(skipped(&failures, "opportunity:o1", t1));
        assert!(!book(&mut failures, t1), "reported once");
        assert!(
            !skipped(&failures, "opportunity:o1", t2),
            "it changed again"
        );
        assert!(!book(&mut failures, t2));
        assert_eq!(failures["opportunity:o1"].runs, 1, "counting starts again");
        assert!(!book(&mut failures, t2));
        assert!(book(&mut failures, t2));
    }

    #[test]
    fn the_state_round_trips_as_json_text() {
        let mut state = PollState {
            since: Some("2026-12-02T10:00:00Z".into()),
            failures: BTreeMap::new(),
        };
        book_failure(&mut state.failures, "lead:l1", "r1", None, "x", 5);
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.starts_with('{'));
        assert_eq!(serde_json::from_str::<PollState>(&text).unwrap(), state);
        assert_eq!(
            serde_json::from_str::<PollState>("{}").unwrap(),
            PollState::default()
        );
    }
}
