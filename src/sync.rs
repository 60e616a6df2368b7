//! The sync of one referral: read the referral, read the lead by its alternate key, write the
//! lead only when it differs (create-only or If-Match, so concurrent syncs converge on one
//! lead), then JSON-Patch the referral with `If-Match` only when something would change.
//! `SyncError::disposition` is the one place that decides retry or give up.

use std::{sync::Arc, time::Duration};

use serde::Deserialize;

use crate::{
    config::{ConfigError, Settings},
    dataverse::{Condition, DataverseClient, DataverseError},
    domain::{Lead, LeadState, Referral, ReferralId, ReferralStatus},
    mapping::{LeadPlan, MapError, Mapping, WriteBack},
    partner_center::{PartnerCenterClient, PartnerCenterError},
};

/// Rounds of re-reading after a 412 on either side before the message goes back to the queue.
const MAX_CONFLICT_ROUNDS: usize = 4;

/// What happened to the lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadOutcome {
    /// A new lead was created.
    Created,
    /// Changed columns were written.
    Updated,
    /// Nothing differed; nothing was written.
    Unchanged,
    /// Qualified or disqualified: read-only, not written.
    ReadOnly(LeadState),
}

/// What happened to the referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteBackOutcome {
    /// The JSON Patch was applied.
    Patched,
    /// Nothing would change; no PATCH was sent.
    Unchanged,
    /// The referral is closed; never patched.
    SkippedClosed,
}

/// The result of one sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Which referral.
    pub referral_id: ReferralId,
    /// The lead id.
    pub lead_id: String,
    /// Lead side.
    pub lead: LeadOutcome,
    /// Referral side.
    pub write_back: WriteBackOutcome,
}

impl SyncReport {
    /// `created`, `updated` or `unchanged`, as operators read it.
    pub fn summary(&self) -> &'static str {
        match (self.lead, self.write_back) {
            (LeadOutcome::Created, _) => "created",
            (LeadOutcome::Updated, _) | (_, WriteBackOutcome::Patched) => "updated",
            _ => "unchanged",
        }
    }

    /// One line for logs and output.
    pub fn describe(&self) -> String {
        let lead = match self.lead {
            LeadOutcome::Created => "lead created".to_owned(),
            LeadOutcome::Updated => "lead updated".to_owned(),
            LeadOutcome::Unchanged => "lead unchanged".to_owned(),
            LeadOutcome::ReadOnly(state) => {
                format!("lead {} (read-only, not written)", state.name())
            }
        };
        let referral = match self.write_back {
            WriteBackOutcome::Patched => "referral patched",
            WriteBackOutcome::Unchanged => "referral unchanged",
            WriteBackOutcome::SkippedClosed => "referral closed (never patched)",
        };
        format!(
            "referral {}: {lead} ({}), {referral}",
            self.referral_id, self.lead_id
        )
    }
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The queue message is not a sync request.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A setting the sync needs is missing or wrong.
    #[error("not configured: {0}")]
    NotConfigured(String),
    /// The referral does not exist (after re-reading).
    #[error("referral {0} was not found in Partner Center")]
    ReferralNotFound(ReferralId),
    /// Partner Center failed.
    #[error(transparent)]
    PartnerCenter(#[from] PartnerCenterError),
    /// Dataverse failed.
    #[error(transparent)]
    Dataverse(#[from] DataverseError),
    /// A referral value does not fit its column.
    #[error("mapping: {0}")]
    Mapping(#[from] MapError),
    /// 412s kept coming.
    #[error("the referral or lead kept changing during the sync (412 on every attempt)")]
    Conflicts,
}

/// What the queue function does with a failed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Answer non-2xx: the host makes the message visible again later.
    RetryLater(String),
    /// Answer 2xx and write the message with this reason to the poison queue.
    GiveUp(String),
}

impl SyncError {
    /// The one decision: transient (timeouts, connection errors, 408, 429, 5xx, token endpoint
    /// down, configuration not yet present, persistent conflicts) is retried by the queue;
    /// everything else is permanent.
    pub fn disposition(&self) -> Disposition {
        let reason = self.to_string();
        let transient = match self {
            Self::NotConfigured(_) | Self::Conflicts => true,
            Self::PartnerCenter(e) => e.is_transient(),
            Self::Dataverse(e) => e.is_transient(),
            Self::Malformed(_) | Self::ReferralNotFound(_) | Self::Mapping(_) => false,
        };
        if transient {
            Disposition::RetryLater(reason)
        } else {
            Disposition::GiveUp(reason)
        }
    }
}

/// The queue message the webhook writes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncMessage {
    /// The referral to sync.
    pub referral_id: ReferralId,
    /// The event that caused it (informational).
    #[serde(default)]
    pub event_name: Option<String>,
}

impl SyncMessage {
    /// Parses the message text: the webhook's JSON object, or a bare referral id.
    pub fn parse(text: &str) -> Result<Self, SyncError> {
        let trimmed = text.trim();
        if let Ok(referral_id) = ReferralId::parse(trimmed) {
            return Ok(Self {
                referral_id,
                event_name: None,
            });
        }
        serde_json::from_str(trimmed).map_err(|e| {
            SyncError::Malformed(format!("expected {{\"referralId\": \"<guid>\"}}: {e}"))
        })
    }
}

/// Runs syncs; shared by the queue function and the operator commands.
#[derive(Debug, Clone)]
pub struct Syncer {
    partner_center: PartnerCenterClient,
    dataverse: DataverseClient,
    mapping: Arc<Mapping>,
    not_found_retries: u32,
    not_found_delay: Duration,
}

impl Syncer {
    /// Wires the clients from settings. Fails naming the first missing or unusable setting.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let http = crate::http::client(&settings.http)?;
        let (partner_center, _) = PartnerCenterClient::from_settings(settings, http.clone())?;
        let dataverse = DataverseClient::from_settings(settings, http)?;
        Ok(Self {
            partner_center,
            dataverse,
            mapping: Arc::new(settings.sync.mapping.clone()),
            not_found_retries: settings.sync.not_found_retries,
            not_found_delay: settings.sync.retry_min_delay.max(Duration::from_millis(50)),
        })
    }

    /// The Partner Center client (for operator commands).
    pub fn partner_center(&self) -> &PartnerCenterClient {
        &self.partner_center
    }

    /// The Dataverse client (for operator commands).
    pub fn dataverse(&self) -> &DataverseClient {
        &self.dataverse
    }

    async fn read_referral(&self, id: &ReferralId) -> Result<Referral, SyncError> {
        let mut attempt = 0;
        loop {
            match self.partner_center.get_referral(id).await {
                Err(PartnerCenterError::NotFound(_)) if attempt < self.not_found_retries => {
                    attempt += 1;
                    tokio::time::sleep(self.not_found_delay * 2u32.pow(attempt)).await;
                }
                Err(PartnerCenterError::NotFound(_)) => {
                    return Err(SyncError::ReferralNotFound(id.clone()));
                }
                other => return Ok(other?),
            }
        }
    }

    /// Syncs one referral. Replays are no-ops: nothing is written when nothing differs.
    pub async fn sync(&self, id: &ReferralId) -> Result<SyncReport, SyncError> {
        self.run(id, true).await
    }

    /// What [`Syncer::sync`] would do, reading both sides and writing nothing.
    pub async fn preview(&self, id: &ReferralId) -> Result<SyncReport, SyncError> {
        self.run(id, false).await
    }

    #[tracing::instrument(skip_all, fields(referral_id = %id, write = write))]
    async fn run(&self, id: &ReferralId, write: bool) -> Result<SyncReport, SyncError> {
        let select = self.mapping.select_columns();
        let returned = self.mapping.writeback_columns();
        let mut lead_written: Option<LeadOutcome> = None;
        for round in 0..MAX_CONFLICT_ROUNDS {
            if round > 0 {
                tracing::info!(round, "re-reading after a concurrent change");
            }
            // The lead first: a lead write is conditional on the eTag read here, so it can only
            // succeed if no other sync wrote since, and the referral read after it is at least as
            // new as the one any earlier writer saw. Read the other way round, a sync holding an
            // older referral could overwrite a lead another sync had just brought up to date.
            let current = self.dataverse.get_lead(id, &select).await?;
            let referral = self.read_referral(id).await?;
            let (lead, outcome) = match current {
                None => {
                    let columns = self.mapping.plan_create(&referral)?;
                    if !write {
                        let lead = Lead {
                            lead_id: "(new lead)".into(),
                            etag: None,
                            state: LeadState::Open,
                            status_code: Some(1),
                            columns,
                        };
                        (lead, LeadOutcome::Created)
                    } else {
                        match self
                            .dataverse
                            .upsert_lead(id, &columns, &Condition::CreateOnly, &returned)
                            .await
                        {
                            Ok(done) => (done.lead, LeadOutcome::Created),
                            Err(DataverseError::Conflict) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Some(current) => match self.mapping.plan_update(&referral, &current)? {
                    LeadPlan::Update { .. } if !write => (current, LeadOutcome::Updated),
                    LeadPlan::Update { changes } => {
                        let condition =
                            Condition::IfMatch(current.etag.clone().unwrap_or_else(|| "*".into()));
                        match self
                            .dataverse
                            .upsert_lead(id, &changes, &condition, &returned)
                            .await
                        {
                            Ok(done) => (merge(current, done.lead), LeadOutcome::Updated),
                            Err(DataverseError::Conflict | DataverseError::Gone) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    LeadPlan::Unchanged => (current, LeadOutcome::Unchanged),
                    LeadPlan::ReadOnly { state } => (current, LeadOutcome::ReadOnly(state)),
                },
            };
            if matches!(outcome, LeadOutcome::Created | LeadOutcome::Updated) {
                lead_written.get_or_insert(outcome);
            }
            let write_back = match self.mapping.plan_writeback(&referral, &lead)? {
                WriteBack::Patch(_) if !write => WriteBackOutcome::Patched,
                WriteBack::Patch(ops) => {
                    match self
                        .partner_center
                        .patch_referral(id, referral.e_tag(), &ops)
                        .await
                    {
                        Ok(()) => WriteBackOutcome::Patched,
                        Err(PartnerCenterError::PreconditionFailed) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
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
                lead_id: lead.lead_id,
                lead: lead_written.unwrap_or(outcome),
                write_back,
            });
        }
        Err(SyncError::Conflicts)
    }
}

/// The lead after an update: the read columns overlaid with what the update returned.
fn merge(mut before: Lead, after: Lead) -> Lead {
    before.etag = after.etag.or(before.etag);
    before.state = after.state;
    before.status_code = after.status_code.or(before.status_code);
    before.columns.extend(after.columns);
    before
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::CallError;

    #[test]
    fn messages_parse_from_the_webhook_object_or_a_bare_id() {
        let id = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";
        let m = SyncMessage::parse(&format!(
            r#"{{"referralId":"{id}","eventName":"referral-created"}}"#
        ))
        .unwrap();
        assert_eq!(m.referral_id.as_str(), id);
        assert_eq!(SyncMessage::parse(id).unwrap().referral_id.as_str(), id);
        for bad in ["", "{}", "[]", r#"{"referralId":"nope"}"#, "not json"] {
            assert!(
                matches!(SyncMessage::parse(bad), Err(SyncError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn disposition_table() {
        let id = ReferralId::parse("c5fbb3b6-be74-4795-9fb5-4324c73fed37").unwrap();
        let status = |s: u16| CallError::Status {
            status: reqwest::StatusCode::from_u16(s).unwrap(),
            body: String::new(),
            retry_after: None,
        };
        let retry = [
            SyncError::PartnerCenter(PartnerCenterError::Call(status(429))),
            SyncError::PartnerCenter(PartnerCenterError::Call(status(503))),
            SyncError::Dataverse(DataverseError::Call(status(500))),
            SyncError::Dataverse(DataverseError::Call(CallError::Transport(
                "timed out".into(),
            ))),
            SyncError::PartnerCenter(PartnerCenterError::Call(CallError::Token {
                message: "down".into(),
                transient: true,
            })),
            SyncError::NotConfigured("DATAVERSE_URL".into()),
            SyncError::Conflicts,
        ];
        for e in retry {
            assert!(matches!(e.disposition(), Disposition::RetryLater(_)), "{e}");
        }
        let give_up = [
            SyncError::Malformed("x".into()),
            SyncError::ReferralNotFound(id),
            SyncError::Dataverse(DataverseError::Call(status(400))),
            SyncError::PartnerCenter(PartnerCenterError::Call(status(403))),
            SyncError::PartnerCenter(PartnerCenterError::Call(CallError::Token {
                message: "invalid_grant".into(),
                transient: false,
            })),
            SyncError::Mapping(MapError {
                column: "c".into(),
                field: "f".into(),
                reason: "r".into(),
            }),
        ];
        for e in give_up {
            assert!(matches!(e.disposition(), Disposition::GiveUp(_)), "{e}");
        }
    }
}
