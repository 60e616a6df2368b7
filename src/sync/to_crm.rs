//! Partner Center → CRM: read the CRM record by the referral key, then the referral; create
//! the record (create-only) or write what differs (only if its version is unchanged), adopt a
//! qualified lead's opportunity, close an opportunity whose referral was closed, and JSON-Patch
//! the referral with `If-Match` only when something would change. Every write that happens
//! also stamps the record's Partner Center status and audit columns; a sync that would write
//! nothing writes nothing at all. This module speaks to the CRM only through [`Crm`].

use std::sync::atomic::Ordering;

use reqwest::StatusCode;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{RecordOutcome, SyncError, SyncReport, Syncer, WriteBackOutcome};
use crate::{
    crm::{CrmError, CrmRecord, RecordKind, RecordState, WriteMode},
    domain::{Referral, ReferralId, ReferralStatus},
    mapping::{Audit, PatchOp, RecordPlan, TableMapping, WriteBack, close_outcome},
    partner_center::PartnerCenterError,
};

/// Rounds of re-reading after a 412 on either side before the message goes back to the queue.
const MAX_CONFLICT_ROUNDS: usize = 4;

/// How the audit names this direction.
const FROM_PARTNER_CENTER: &str = "from Partner Center";

impl Syncer {
    /// Syncs one referral. Replays are no-ops: nothing is written when nothing differs. A
    /// permanent failure is also written to the record's status and audit columns.
    pub async fn sync(&self, id: &ReferralId) -> Result<SyncReport, SyncError> {
        let mut seen = None;
        let result = self.run(id, true, &mut seen).await;
        if let (Err(error), Some(record)) = (&result, seen)
            && matches!(error.disposition(), super::Disposition::GiveUp(_))
        {
            self.record_error(id, &record, &error.to_string()).await;
        }
        result
    }

    /// What [`Syncer::sync`] would do, reading both sides and writing nothing.
    pub async fn preview(&self, id: &ReferralId) -> Result<SyncReport, SyncError> {
        self.run(id, false, &mut None).await
    }

    pub(super) fn policy(&self) -> crate::mapping::WriteBackPolicy {
        let mut policy = self.policy.clone();
        policy.optional_paths = !self.optional_refused.load(Ordering::Relaxed);
        policy
    }

    /// The record of this referral: in the target's tables, following a qualified lead to
    /// the opportunity that already carries the key.
    async fn locate(&self, id: &ReferralId) -> Result<Option<CrmRecord>, CrmError> {
        let order: &[RecordKind] = match self.target {
            super::SyncTarget::Lead => &[RecordKind::Lead],
            super::SyncTarget::Opportunity => &[RecordKind::Opportunity],
            super::SyncTarget::Auto => &[RecordKind::Opportunity, RecordKind::Lead],
        };
        for kind in order {
            let table = self.mappings.table(*kind);
            let Some(record) = self.crm.read(*kind, id, &table.select_columns()).await? else {
                continue;
            };
            if record.state.successor().is_some() && !order.contains(&RecordKind::Opportunity) {
                let opportunity = self.mappings.table(RecordKind::Opportunity);
                let followed = self
                    .crm
                    .read(RecordKind::Opportunity, id, &opportunity.select_columns())
                    .await?;
                return Ok(Some(followed.unwrap_or(record)));
            }
            return Ok(Some(record));
        }
        Ok(None)
    }

    #[tracing::instrument(skip_all, fields(referral_id = %id, write = write))]
    async fn run(
        &self,
        id: &ReferralId,
        write: bool,
        seen: &mut Option<CrmRecord>,
    ) -> Result<SyncReport, SyncError> {
        let mut written: Option<RecordOutcome> = None;
        for round in 0..MAX_CONFLICT_ROUNDS {
            if round > 0 {
                tracing::info!(round, "re-reading after a concurrent change");
            }
            // The CRM first: a CRM write is conditional on the version read here, so it can
            // only succeed if no other sync wrote since, and the referral read after it is at
            // least as new as the one any earlier writer saw. Read the other way round, a sync
            // holding an older referral could overwrite a record another sync had just brought
            // up to date.
            let current = self.locate(id).await?;
            *seen = current.clone().filter(|r| r.state.is_open());
            let referral = self.read_referral(id).await?;
            let now = super::utc_seconds(OffsetDateTime::now_utc());
            let audit = Audit { now: &now };
            let policy = self.policy();
            let step = match current {
                None => self.create(id, &referral, write, audit).await?,
                Some(record) if record.state.successor().is_some() => {
                    self.adopt(id, &referral, record, write, audit).await?
                }
                Some(record) => self.update(id, &referral, record, write, audit).await?,
            };
            let Some((mut record, outcome)) = step else {
                continue;
            };
            *seen = Some(record.clone()).filter(|r| r.state.is_open());
            let wrote_record = matches!(
                outcome,
                RecordOutcome::Created | RecordOutcome::Adopted | RecordOutcome::Updated
            );
            if wrote_record {
                written.get_or_insert(outcome.clone());
            }
            // Without conditional CRM writes a sync holding an older referral may have written
            // after one holding a newer: whoever sees the referral moved writes again.
            if wrote_record && write && !self.crm.conditional_writes() {
                let newest = self.read_referral(id).await?;
                if newest.e_tag() != referral.e_tag() {
                    tracing::info!(
                        "the referral changed while its record was written; writing it again"
                    );
                    continue;
                }
            }
            let table = self.mappings.table(record.kind);
            let closed = close_outcome(&referral, &record, &policy);
            if let Some(outcome) = &closed
                && write
            {
                let line = audit.line(
                    FROM_PARTNER_CENTER,
                    &format!(
                        "closed the opportunity as {} because the referral was closed",
                        match outcome {
                            crate::crm::Outcome::Won => "won".to_owned(),
                            crate::crm::Outcome::Lost { reason } => format!("lost ({reason})"),
                        }
                    ),
                );
                match self.stamp(id, table, &record, &audit.synced(), &line).await {
                    Ok(stamped) => record = stamped,
                    Err(CrmError::Conflict(_) | CrmError::Gone(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
                self.crm.close(&record, outcome).await?;
                record.state = match outcome {
                    crate::crm::Outcome::Won => RecordState::Won,
                    crate::crm::Outcome::Lost { reason } => RecordState::Lost {
                        reason: reason.clone(),
                    },
                };
            }
            let plan = table.plan_writeback(&referral, &record, &policy)?;
            let sent = match &plan {
                WriteBack::Patch(ops) => ops.clone(),
                WriteBack::Unchanged | WriteBack::Closed => Vec::new(),
            };
            let write_back = match plan {
                WriteBack::Patch(_) if !write => WriteBackOutcome::Patched,
                WriteBack::Patch(ops) => match self.patch(id, &referral, table, &record, ops).await
                {
                    Ok(outcome) => {
                        if outcome == WriteBackOutcome::Patched
                            && !wrote_record
                            && closed.is_none()
                            && record.state.is_open()
                        {
                            let line = audit.line(
                                FROM_PARTNER_CENTER,
                                "referral updated from the record (status or crm-to-pc fields)",
                            );
                            // Best effort: the referral is already right.
                            if let Err(e) =
                                self.stamp(id, table, &record, &audit.synced(), &line).await
                            {
                                tracing::warn!(error = %e, "could not write the audit line");
                            }
                        }
                        outcome
                    }
                    Err(PartnerCenterError::PreconditionFailed) => continue,
                    Err(e) => return Err(e.into()),
                },
                WriteBack::Unchanged => WriteBackOutcome::Unchanged,
                WriteBack::Closed => {
                    if referral.status() != &ReferralStatus::Closed {
                        tracing::warn!(
                            status = referral.status().as_str(),
                            "unknown referral status; not patched"
                        );
                    }
                    WriteBackOutcome::SkippedClosed
                }
            };
            return Ok(SyncReport {
                referral_id: id.clone(),
                kind: record.kind,
                record_id: record.id,
                record: written.unwrap_or(outcome),
                closed,
                write_back,
                sent,
            });
        }
        Err(SyncError::Conflicts)
    }

    /// A new record in the table the target routes the referral to. `None`: another sync
    /// created it first; read again.
    async fn create(
        &self,
        id: &ReferralId,
        referral: &Referral,
        write: bool,
        audit: Audit<'_>,
    ) -> Result<Option<(CrmRecord, RecordOutcome)>, SyncError> {
        let kind = self.target.route(referral);
        let table = self.mappings.table(kind);
        let policy = self.policy();
        let mut columns = table.plan_create(referral, &policy)?;
        let mut record = CrmRecord {
            kind,
            id: format!("(new {kind})"),
            version: None,
            state: RecordState::Open,
            key: Some(id.to_string()),
            modified_on: None,
            columns: columns.clone(),
        };
        if !write {
            return Ok(Some((record, RecordOutcome::Created)));
        }
        let prepared = self
            .crm
            .prepare_create(kind, id, referral, &mut columns)
            .await?;
        let referral_paths = table.plan_writeback(referral, &record, &policy)?;
        let mut what = format!("created the {kind} ({})", column_list(table, &columns));
        append_paths(&mut what, &referral_paths);
        for note in &prepared.notes {
            what.push_str("; ");
            what.push_str(note);
        }
        stamp_columns(
            table,
            &mut columns,
            None,
            &audit.synced(),
            &audit.line(FROM_PARTNER_CENTER, &what),
        );
        match self
            .crm
            .write(
                kind,
                id,
                &columns,
                &WriteMode::Create,
                &table.returned_columns(),
            )
            .await
        {
            Ok(created) => {
                record = merge(record, created, &columns);
                Ok(Some((record, RecordOutcome::Created)))
            }
            Err(CrmError::Conflict(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A qualified lead whose opportunity does not carry the key yet: put the key on the
    /// opportunity (only while it has the version read), so from now on the referral follows
    /// it. The lead is not touched.
    async fn adopt(
        &self,
        id: &ReferralId,
        referral: &Referral,
        lead: CrmRecord,
        write: bool,
        audit: Audit<'_>,
    ) -> Result<Option<(CrmRecord, RecordOutcome)>, SyncError> {
        let Some(successor) = lead.state.successor() else {
            return Ok(Some(read_only(lead)));
        };
        let table = self.mappings.table(RecordKind::Opportunity);
        let Some(opportunity) = self
            .crm
            .read_by_id(RecordKind::Opportunity, successor, &table.select_columns())
            .await?
        else {
            return Ok(Some(read_only(lead)));
        };
        if let Some(other) = &opportunity.key
            && other != id.as_str()
        {
            tracing::warn!(opportunity = %opportunity.id, other_referral = %other, "the qualified lead's opportunity belongs to another referral; the lead stays the record");
            return Ok(Some(read_only(lead)));
        }
        if !write {
            return Ok(Some((opportunity, RecordOutcome::Adopted)));
        }
        let policy = self.policy();
        let mut columns = table.plan_adopt(referral, &opportunity, &policy)?;
        let mut what = format!(
            "linked this opportunity, qualified from lead {}, to the referral",
            lead.id
        );
        let referral_paths = table.plan_writeback(referral, &opportunity, &policy)?;
        append_paths(&mut what, &referral_paths);
        stamp_columns(
            table,
            &mut columns,
            opportunity
                .columns
                .get(table.partner_center.audit.as_deref().unwrap_or("")),
            &audit.synced(),
            &audit.line(FROM_PARTNER_CENTER, &what),
        );
        match self
            .crm
            .adopt(&opportunity, id, &columns, &table.returned_columns())
            .await
        {
            Ok(adopted) => Ok(Some((
                merge(opportunity, adopted, &columns),
                RecordOutcome::Adopted,
            ))),
            Err(CrmError::Conflict(_) | CrmError::Gone(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// An existing record: write what differs, only while it has the version read.
    async fn update(
        &self,
        id: &ReferralId,
        referral: &Referral,
        record: CrmRecord,
        write: bool,
        audit: Audit<'_>,
    ) -> Result<Option<(CrmRecord, RecordOutcome)>, SyncError> {
        let table = self.mappings.table(record.kind);
        let policy = self.policy();
        match table.plan_update(referral, &record, &policy)? {
            RecordPlan::Update { .. } if !write => Ok(Some((record, RecordOutcome::Updated))),
            RecordPlan::Update { mut changes } => {
                let mut what = format!(
                    "updated the {} ({})",
                    record.kind,
                    column_list(table, &changes)
                );
                append_paths(
                    &mut what,
                    &table.plan_writeback(referral, &record, &policy)?,
                );
                stamp_columns(
                    table,
                    &mut changes,
                    table
                        .partner_center
                        .audit
                        .as_ref()
                        .and_then(|c| record.columns.get(c)),
                    &audit.synced(),
                    &audit.line(FROM_PARTNER_CENTER, &what),
                );
                let mode = WriteMode::Update(record.version.clone());
                match self
                    .crm
                    .write(record.kind, id, &changes, &mode, &table.returned_columns())
                    .await
                {
                    Ok(done) => Ok(Some((
                        merge(record, done, &changes),
                        RecordOutcome::Updated,
                    ))),
                    Err(CrmError::Conflict(_) | CrmError::Gone(_)) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            RecordPlan::Unchanged => Ok(Some((record, RecordOutcome::Unchanged))),
            RecordPlan::ReadOnly { .. } => Ok(Some(read_only(record))),
        }
    }

    /// Sends the write-back. When Partner Center refuses it (400) and it carried optional
    /// paths, sends once more with status and substatus only and stops sending the optional
    /// paths for the life of the process; the record stays linked through its key column.
    async fn patch(
        &self,
        id: &ReferralId,
        referral: &Referral,
        table: &TableMapping,
        record: &CrmRecord,
        ops: Vec<PatchOp>,
    ) -> Result<WriteBackOutcome, PartnerCenterError> {
        let optional = ops.iter().any(|op| {
            !matches!(
                op.path.to_ascii_lowercase().as_str(),
                "/status" | "/substatus"
            )
        });
        match self
            .partner_center
            .patch_referral(id, referral.e_tag(), &ops)
            .await
        {
            Ok(()) => Ok(WriteBackOutcome::Patched),
            Err(PartnerCenterError::Call(e))
                if optional && e.status() == Some(StatusCode::BAD_REQUEST) =>
            {
                let first = !self.optional_refused.swap(true, Ordering::Relaxed);
                let refused: Vec<&str> = ops
                    .iter()
                    .map(|op| op.path.as_str())
                    .filter(|p| {
                        !matches!(p.to_ascii_lowercase().as_str(), "/status" | "/substatus")
                    })
                    .collect();
                if first {
                    tracing::warn!(paths = ?refused, error = %e, "Partner Center refused the optional write-back paths; sending only status and substatus from now on (the record stays linked by its key column)");
                    let line = format!(
                        "{} Partner Center refused {}; the record stays linked through its referral id column, and only status and substatus are sent back",
                        super::utc_seconds(OffsetDateTime::now_utc()),
                        refused.join(", ")
                    );
                    if record.state.is_open()
                        && let Some(column) = &table.partner_center.audit
                    {
                        let mut columns = Map::new();
                        columns.insert(
                            column.clone(),
                            Value::from(Audit::prepend(record.columns.get(column), &line)),
                        );
                        let mode = WriteMode::Update(None);
                        if let Err(e) = self.crm.write(record.kind, id, &columns, &mode, &[]).await
                        {
                            tracing::warn!(error = %e, "could not write the audit line");
                        }
                    }
                }
                let reduced: Vec<PatchOp> = ops
                    .into_iter()
                    .filter(|op| {
                        matches!(
                            op.path.to_ascii_lowercase().as_str(),
                            "/status" | "/substatus"
                        )
                    })
                    .collect();
                if reduced.is_empty() {
                    return Ok(WriteBackOutcome::Unchanged);
                }
                self.partner_center
                    .patch_referral(id, referral.e_tag(), &reduced)
                    .await
                    .map(|()| WriteBackOutcome::Patched)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes only the status and audit columns (before a close, or after a write-back).
    async fn stamp(
        &self,
        id: &ReferralId,
        table: &TableMapping,
        record: &CrmRecord,
        status: &str,
        line: &str,
    ) -> Result<CrmRecord, CrmError> {
        let mut columns = Map::new();
        let audit = table
            .partner_center
            .audit
            .as_ref()
            .and_then(|c| record.columns.get(c));
        stamp_columns(table, &mut columns, audit, status, line);
        if columns.is_empty() {
            return Ok(record.clone());
        }
        let mode = WriteMode::Update(record.version.clone());
        let done = self
            .crm
            .write(record.kind, id, &columns, &mode, &table.returned_columns())
            .await?;
        Ok(merge(record.clone(), done, &columns))
    }

    /// Writes `error: <reason>` into the status column and an audit line, once per distinct
    /// error (best effort: the message is poisoned with the reason either way).
    async fn record_error(&self, id: &ReferralId, record: &CrmRecord, reason: &str) {
        let table = self.mappings.table(record.kind);
        let Some(status_column) = &table.partner_center.status else {
            return;
        };
        let status = Audit::error(reason);
        if record.columns.get(status_column).and_then(Value::as_str) == Some(status.as_str()) {
            return;
        }
        let now = super::utc_seconds(OffsetDateTime::now_utc());
        let line = Audit { now: &now }.line(FROM_PARTNER_CENTER, &format!("sync failed: {reason}"));
        if let Err(e) = self.stamp(id, table, record, &status, &line).await {
            tracing::warn!(error = %e, "could not write the error to the record");
        }
    }
}

/// A record the sync does not write.
fn read_only(record: CrmRecord) -> (CrmRecord, RecordOutcome) {
    let state = record.state.clone();
    (record, RecordOutcome::ReadOnly(state))
}

/// Adds the status and audit columns to a write.
fn stamp_columns(
    table: &TableMapping,
    columns: &mut Map<String, Value>,
    audit_before: Option<&Value>,
    status: &str,
    line: &str,
) {
    if let Some(column) = &table.partner_center.status {
        columns.insert(column.clone(), Value::from(status));
    }
    if let Some(column) = &table.partner_center.audit {
        columns.insert(
            column.clone(),
            Value::from(Audit::prepend(audit_before, line)),
        );
    }
}

/// The written columns, for the audit line (the status and audit columns left out).
fn column_list(table: &TableMapping, columns: &Map<String, Value>) -> String {
    let skip = [&table.partner_center.status, &table.partner_center.audit];
    let names: Vec<&str> = columns
        .keys()
        .filter(|k| !skip.iter().any(|s| s.as_deref() == Some(k.as_str())))
        .map(|k| k.split('@').next().unwrap_or(k))
        .collect();
    names.join(", ")
}

fn append_paths(what: &mut String, write_back: &WriteBack) {
    let paths = write_back.paths();
    if !paths.is_empty() {
        what.push_str("; referral ");
        what.push_str(&paths.join(", "));
    }
}

/// The record after a write: the read columns overlaid with what the write returned.
/// `sent` are the columns the write carried, which the CRM did not necessarily return.
pub(super) fn merge(
    mut before: CrmRecord,
    after: CrmRecord,
    sent: &Map<String, Value>,
) -> CrmRecord {
    for (column, value) in sent {
        if !column.contains('@') {
            before.columns.insert(column.clone(), value.clone());
        }
    }
    before.version = after.version.or(before.version);
    before.state = after.state;
    before.id = after.id;
    before.key = after.key.or(before.key);
    before.modified_on = after.modified_on.or(before.modified_on);
    before.columns.extend(after.columns);
    before
}
