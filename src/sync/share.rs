//! CRM → Partner Center, first time: an opportunity a seller marked "Sync with Partner Center"
//! becomes exactly one referral. Checked before any request (the reasons go to the status
//! column); claimed through [`crate::crm::Crm::claim`] (a conditional write of the status
//! column, or in Salesforce a conditional blob write), so of two overlapping runs only one
//! creates; created once (only a 429 is retried); and when the answer to the create
//! was lost, the next attempt finds the referral by its `externalReferenceId` among the
//! outgoing referrals created since the claim and links it instead of creating another.

use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{SyncError, Syncer, utc_seconds};
use crate::{
    crm::{CrmError, CrmRecord, RecordKind},
    domain::{Referral, ReferralId},
    mapping::{
        Audit,
        plan::referral_link,
        share::{claim_text, claimed_at, plan_share},
    },
};

/// How the audit names this direction.
const TO_PARTNER_CENTER: &str = "to Partner Center";

/// How far before a claim the search for its referral starts (clock skew between the app and
/// Partner Center).
const CLAIM_SKEW: Duration = Duration::from_secs(600);

/// Rounds of re-reading when the row changes while the referral is linked.
const LINK_ROUNDS: usize = 4;

/// What happened to a shared opportunity.
#[derive(Debug, Clone, PartialEq)]
pub enum ShareOutcome {
    /// The referral was created and linked.
    Created(ReferralId),
    /// A referral an earlier attempt created (its answer lost) was found and linked.
    Adopted(ReferralId),
    /// Refused before sending anything; the reasons are in the status column.
    Invalid(Vec<String>),
    /// Another attempt claimed the row recently (or won the claim just now); the next run
    /// looks again.
    Waiting,
    /// Dry run: the body that would be sent.
    WouldCreate(Value),
    /// Dry run: the referral an earlier attempt created, which would be linked.
    WouldAdopt(ReferralId),
}

impl ShareOutcome {
    /// One line for logs and output.
    pub fn describe(&self, record: &CrmRecord) -> String {
        let row = format!("opportunity {}", record.id);
        match self {
            Self::Created(id) => format!("{row}: shared as referral {id}"),
            Self::Adopted(id) => {
                format!("{row}: linked to referral {id}, created by an earlier attempt")
            }
            Self::Invalid(problems) => format!("{row}: not shared: {}", problems.join("; ")),
            Self::Waiting => format!("{row}: another run is creating its referral"),
            Self::WouldCreate(body) => format!("{row}: would create referral {body}"),
            Self::WouldAdopt(id) => format!("{row}: would link referral {id}"),
        }
    }

    /// Whether the share wrote something.
    pub fn changed(&self) -> bool {
        matches!(self, Self::Created(_) | Self::Adopted(_))
    }
}

impl Syncer {
    /// Shares one opportunity that has no referral yet. `write` false reads both sides and
    /// writes nothing.
    #[tracing::instrument(skip_all, fields(opportunity = %record.id, write = write))]
    pub async fn share(&self, record: CrmRecord, write: bool) -> Result<ShareOutcome, SyncError> {
        let table = self.mappings.table(RecordKind::Opportunity);
        let Some(status_column) = table.partner_center.status.clone() else {
            return Err(CrmError::Rejected {
                crm: self.crm.name(),
                message: "sharing an opportunity needs its Partner Center sync status column; set partnerCenterColumns.syncStatus in the mapping file".into(),
            }
            .into());
        };
        let now = OffsetDateTime::now_utc();
        if let Some(at) = claimed_at(record.columns.get(&status_column)) {
            if let Some(referral) = self.find_created(&record.id, at).await? {
                if !write {
                    return Ok(ShareOutcome::WouldAdopt(referral.id().clone()));
                }
                return self.link(record, &referral, true).await;
            }
            if now - at < self.claim_lease {
                return Ok(ShareOutcome::Waiting);
            }
            tracing::warn!(claimed_at = %utc_seconds(at), "an earlier attempt claimed this opportunity and created no referral; creating it now");
        }
        let party = self.crm.share_party(&record).await?;
        let body = match plan_share(table, &record, &party) {
            Ok(body) => body,
            Err(problems) => {
                if write {
                    self.refuse(&record, &status_column, &problems).await?;
                }
                return Ok(ShareOutcome::Invalid(problems));
            }
        };
        if !write {
            return Ok(ShareOutcome::WouldCreate(body));
        }
        let mut claim = Map::new();
        claim.insert(status_column, Value::from(claim_text(&utc_seconds(now))));
        let claimed = match self
            .crm
            .claim(&record, &claim, &table.select_columns())
            .await
        {
            Ok(claimed) => claimed,
            // Another run claimed it first, or the seller saved it again: the next run reads it.
            Err(CrmError::Conflict(_)) => return Ok(ShareOutcome::Waiting),
            Err(e) => return Err(e.into()),
        };
        let claimed = super::to_crm::merge(record, claimed, &claim);
        // Any failure from here on leaves the claim: the next attempt looks for the referral
        // before it creates one.
        let referral = self.partner_center.create_referral(&body).await?;
        tracing::info!(referral_id = %referral.id(), "referral created for the shared opportunity");
        self.link(claimed, &referral, false).await
    }

    /// The outgoing referral created for this opportunity since its claim, if any.
    async fn find_created(
        &self,
        opportunity: &str,
        claimed: OffsetDateTime,
    ) -> Result<Option<Referral>, SyncError> {
        let candidates = self
            .partner_center
            .outgoing_created_since(claimed - CLAIM_SKEW)
            .await?;
        Ok(candidates.into_iter().find(|r| {
            r.external_reference_id()
                .is_some_and(|id| id.eq_ignore_ascii_case(opportunity))
        }))
    }

    /// Puts the referral id into the key column with the link, the status and an audit line,
    /// only while the row has the version read (re-reading when the seller saved meanwhile).
    async fn link(
        &self,
        mut record: CrmRecord,
        referral: &Referral,
        adopted: bool,
    ) -> Result<ShareOutcome, SyncError> {
        let table = self.mappings.table(RecordKind::Opportunity);
        let id = referral.id().clone();
        let policy = self.policy();
        for _ in 0..LINK_ROUNDS {
            if let Some(key) = &record.key {
                if key.eq_ignore_ascii_case(id.as_str()) {
                    return Ok(ShareOutcome::Adopted(id));
                }
                return Err(CrmError::Rejected {
                    crm: self.crm.name(),
                    message: format!(
                        "opportunity {} is already linked to referral {key}, but referral {id} was created for it; close one of them in Partner Center",
                        record.id
                    ),
                }
                .into());
            }
            let now = utc_seconds(OffsetDateTime::now_utc());
            let audit = Audit { now: &now };
            let what = if adopted {
                format!(
                    "shared with Microsoft as referral {id} (found after the answer to the create was lost)"
                )
            } else {
                format!("shared with Microsoft as referral {id}")
            };
            let mut columns = Map::new();
            if let Some(column) = &table.partner_center.link {
                columns.insert(
                    column.clone(),
                    Value::from(referral_link(referral, &policy)),
                );
            }
            if let Some(column) = &table.partner_center.status {
                columns.insert(column.clone(), Value::from(audit.synced()));
            }
            if let Some(column) = &table.partner_center.audit {
                columns.insert(
                    column.clone(),
                    Value::from(Audit::prepend(
                        record.columns.get(column),
                        &audit.line(TO_PARTNER_CENTER, &what),
                    )),
                );
            }
            match self
                .crm
                .adopt(&record, &id, &columns, &table.select_columns())
                .await
            {
                Ok(_) if adopted => return Ok(ShareOutcome::Adopted(id)),
                Ok(_) => return Ok(ShareOutcome::Created(id)),
                Err(CrmError::Conflict(_)) => {
                    record = self
                        .crm
                        .read_by_id(RecordKind::Opportunity, &record.id, &table.select_columns())
                        .await?
                        .ok_or(CrmError::Gone(RecordKind::Opportunity))?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(SyncError::Conflicts)
    }

    /// Writes why the opportunity cannot be shared, once per distinct reason.
    async fn refuse(
        &self,
        record: &CrmRecord,
        status_column: &str,
        problems: &[String],
    ) -> Result<(), SyncError> {
        let table = self.mappings.table(RecordKind::Opportunity);
        let status = Audit::error(&format!(
            "not shared with Partner Center: {}",
            problems.join("; ")
        ));
        if record.columns.get(status_column).and_then(Value::as_str) == Some(status.as_str()) {
            return Ok(());
        }
        let now = utc_seconds(OffsetDateTime::now_utc());
        let mut columns = Map::new();
        columns.insert(status_column.to_owned(), Value::from(status));
        if let Some(column) = &table.partner_center.audit {
            let line = Audit { now: &now }.line(
                TO_PARTNER_CENTER,
                &format!("not shared: {}", problems.join("; ")),
            );
            columns.insert(
                column.clone(),
                Value::from(Audit::prepend(record.columns.get(column), &line)),
            );
        }
        match self.crm.update_record(record, &columns, &[]).await {
            // The seller saved it meanwhile: the next run checks the new version.
            Ok(_) | Err(CrmError::Conflict(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
