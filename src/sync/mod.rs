//! The sync, CRM-neutral: the queue message, the one error enum and its one retry decision,
//! the report, and the `Syncer` that holds Partner Center, the CRM adapter and the mappings.
//! Each direction is its own module: `to_crm` is Partner Center → CRM, `to_partner_center` the
//! CRM → Partner Center poll; `reconcile` lists and re-syncs what changed in Partner Center.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    config::{ConfigError, Settings},
    crm::{Crm, CrmError, Outcome, RecordKind, RecordState},
    domain::{Referral, ReferralId},
    mapping::{MapError, Mappings, WriteBackPolicy},
    partner_center::{PartnerCenterClient, PartnerCenterError},
};

pub mod reconcile;
pub mod share;
pub mod to_crm;
pub mod to_partner_center;

/// An instant as RFC 3339 UTC to the second (`2026-12-02T19:00:21Z`), as the audit, the
/// watermarks and Dataverse's `modifiedon` spell it.
pub fn utc_seconds(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Which table a referral goes to (`SYNC_TARGET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncTarget {
    /// Every referral becomes a lead (the default).
    #[default]
    Lead,
    /// Every referral becomes an opportunity.
    Opportunity,
    /// Leads (`Direct` or `MarketingQualified`, type not `Shared`) to the lead table,
    /// everything else (co-sell opportunities) to the opportunity table.
    Auto,
}

impl SyncTarget {
    /// The setting's values.
    pub const NAMES: &'static str = "lead, opportunity or auto";

    /// Parses the setting.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "lead" => Some(Self::Lead),
            "opportunity" => Some(Self::Opportunity),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    /// The tables this target writes (and `check` verifies).
    pub fn kinds(&self) -> &'static [RecordKind] {
        match self {
            Self::Lead => &[RecordKind::Lead],
            Self::Opportunity => &[RecordKind::Opportunity],
            Self::Auto => &RecordKind::ALL,
        }
    }

    /// The table a referral without a record goes to.
    pub fn route(&self, referral: &Referral) -> RecordKind {
        match self {
            Self::Lead => RecordKind::Lead,
            Self::Opportunity => RecordKind::Opportunity,
            Self::Auto => {
                let is = |field: &str, values: &[&str]| {
                    referral
                        .text(field)
                        .is_some_and(|v| values.iter().any(|x| v.eq_ignore_ascii_case(x)))
                };
                if is("qualification", &["Direct", "MarketingQualified"])
                    && !is("type", &["Shared"])
                {
                    RecordKind::Lead
                } else {
                    RecordKind::Opportunity
                }
            }
        }
    }
}

/// What happened to the CRM record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// A new record was created.
    Created,
    /// A qualified lead's opportunity was linked to the referral.
    Adopted,
    /// Changed columns were written.
    Updated,
    /// Nothing differed; nothing was written.
    Unchanged,
    /// Closed, qualified or disqualified: read-only, not written.
    ReadOnly(RecordState),
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
#[derive(Debug, Clone, PartialEq)]
pub struct SyncReport {
    /// Which referral.
    pub referral_id: ReferralId,
    /// The table of its record.
    pub kind: RecordKind,
    /// The record id.
    pub record_id: String,
    /// Record side.
    pub record: RecordOutcome,
    /// The opportunity was closed from Partner Center.
    pub closed: Option<Outcome>,
    /// Referral side.
    pub write_back: WriteBackOutcome,
    /// The JSON Patch sent (or, previewed, that would be sent); empty when none.
    pub sent: Vec<crate::mapping::PatchOp>,
}

impl SyncReport {
    /// `created`, `updated` or `unchanged`, as operators read it.
    pub fn summary(&self) -> &'static str {
        match (&self.record, self.write_back, &self.closed) {
            (RecordOutcome::Created, _, _) => "created",
            (RecordOutcome::Updated | RecordOutcome::Adopted, _, _)
            | (_, WriteBackOutcome::Patched, _)
            | (_, _, Some(_)) => "updated",
            _ => "unchanged",
        }
    }

    /// One line for logs and output.
    pub fn describe(&self) -> String {
        let kind = self.kind;
        let record = match &self.record {
            RecordOutcome::Created => format!("{kind} created"),
            RecordOutcome::Adopted => format!("{kind} adopted from the qualified lead"),
            RecordOutcome::Updated => format!("{kind} updated"),
            RecordOutcome::Unchanged => format!("{kind} unchanged"),
            RecordOutcome::ReadOnly(state) => {
                format!("{kind} {} (read-only, not written)", state.name())
            }
        };
        let closed = match &self.closed {
            Some(Outcome::Won) => ", closed as won",
            Some(Outcome::Lost { .. }) => ", closed as lost",
            None => "",
        };
        let referral = match self.write_back {
            WriteBackOutcome::Patched => "referral patched",
            WriteBackOutcome::Unchanged => "referral unchanged",
            WriteBackOutcome::SkippedClosed => "referral closed (never patched)",
        };
        format!(
            "referral {}: {record} ({}){closed}, {referral}",
            self.referral_id, self.record_id
        )
    }
}

impl SyncReport {
    /// [`SyncReport::describe`] followed by the JSON Patch, when there is one.
    pub fn describe_with_patch(&self) -> String {
        let line = self.describe();
        if self.sent.is_empty() {
            return line;
        }
        let patch = serde_json::to_string(&self.sent).unwrap_or_default();
        format!("{line}: {patch}")
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
    /// The CRM failed.
    #[error(transparent)]
    Crm(#[from] CrmError),
    /// A referral value does not fit its column.
    #[error("mapping: {0}")]
    Mapping(#[from] MapError),
    /// 412s kept coming.
    #[error("the referral or its CRM record kept changing during the sync (412 on every attempt)")]
    Conflicts,
    /// Not synced: a long run stopped early to leave the CRM's API allocation to its users.
    #[error("stopped early, not synced: {0}")]
    OverBudget(String),
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
            Self::NotConfigured(_) | Self::Conflicts | Self::OverBudget(_) => true,
            Self::PartnerCenter(e) => e.is_transient(),
            Self::Crm(e) => e.is_transient(),
            Self::Malformed(_) | Self::ReferralNotFound(_) | Self::Mapping(_) => false,
        };
        if transient {
            Disposition::RetryLater(reason)
        } else {
            Disposition::GiveUp(reason)
        }
    }
}

/// A `referral-sync` queue message: a referral (what the webhook writes, or a bare id), or a
/// CRM record (what `poison replay` writes back for a record CrmChanges gave up on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMessage {
    /// Sync this referral.
    Referral {
        /// The referral.
        referral_id: ReferralId,
        /// The event that caused it (informational).
        event_name: Option<String>,
    },
    /// Sync this CRM record to Partner Center (its referral, or a share).
    Record {
        /// Its table.
        kind: RecordKind,
        /// Its id in the CRM.
        record_id: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageFields {
    referral_id: Option<String>,
    event_name: Option<String>,
    table: Option<String>,
    record_id: Option<String>,
}

impl SyncMessage {
    /// Parses the message text: `{"referralId": …}` (the webhook's), a bare referral id, or
    /// `{"table": "opportunity", "recordId": …}`.
    pub fn parse(text: &str) -> Result<Self, SyncError> {
        let trimmed = text.trim();
        if let Ok(referral_id) = ReferralId::parse(trimmed) {
            return Ok(Self::Referral {
                referral_id,
                event_name: None,
            });
        }
        let expected = "expected {\"referralId\": \"<guid>\"} or {\"table\": \"lead|opportunity\", \"recordId\": \"<id>\"}";
        let fields: MessageFields = serde_json::from_str(trimmed)
            .map_err(|e| SyncError::Malformed(format!("{expected}: {e}")))?;
        match (fields.table, fields.record_id, fields.referral_id) {
            (Some(table), Some(record_id), _) => {
                let kind = RecordKind::ALL
                    .into_iter()
                    .find(|k| k.name().eq_ignore_ascii_case(table.trim()))
                    .ok_or_else(|| {
                        SyncError::Malformed(format!("table `{table}` is not lead or opportunity"))
                    })?;
                // Dataverse ids are GUIDs (any case); Salesforce ids are case-sensitive.
                let record_id = match uuid::Uuid::parse_str(record_id.trim()) {
                    Ok(guid) => guid.to_string(),
                    Err(_) => record_id.trim().to_owned(),
                };
                if record_id.is_empty() {
                    return Err(SyncError::Malformed(format!(
                        "{expected}: recordId is empty"
                    )));
                }
                Ok(Self::Record { kind, record_id })
            }
            (_, _, Some(id)) => Ok(Self::Referral {
                referral_id: ReferralId::parse(&id)
                    .map_err(|e| SyncError::Malformed(format!("referralId: {e}")))?,
                event_name: fields.event_name,
            }),
            _ => Err(SyncError::Malformed(expected.to_owned())),
        }
    }

    /// The referral or record, for logs.
    pub fn subject(&self) -> String {
        match self {
            Self::Referral { referral_id, .. } => format!("referral {referral_id}"),
            Self::Record { kind, record_id } => format!("{kind} {record_id}"),
        }
    }
}

/// Runs syncs; shared by the queue function and the operator commands.
#[derive(Debug, Clone)]
pub struct Syncer {
    partner_center: PartnerCenterClient,
    crm: Arc<dyn Crm>,
    mappings: Arc<Mappings>,
    target: SyncTarget,
    policy: WriteBackPolicy,
    /// Set once Partner Center refused the optional write-back paths (400): from then on this
    /// process sends only status and substatus, so replays stay no-ops.
    optional_refused: Arc<AtomicBool>,
    not_found_retries: u32,
    not_found_delay: Duration,
    claim_lease: Duration,
}

impl Syncer {
    /// Wires the clients from settings. Fails naming the first missing or unusable setting.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let http = crate::http::client(&settings.http)?;
        let (partner_center, _) = PartnerCenterClient::from_settings(settings, http.clone())?;
        let crm = crate::crm::from_settings(settings, http)?;
        Ok(Self::new(partner_center, crm, settings))
    }

    /// A syncer over any CRM adapter, with the sync settings.
    pub fn new(
        partner_center: PartnerCenterClient,
        crm: Arc<dyn Crm>,
        settings: &Settings,
    ) -> Self {
        Self {
            partner_center,
            crm,
            mappings: Arc::new(settings.sync.mappings.clone()),
            target: settings.sync.target,
            policy: settings.sync.policy.clone(),
            optional_refused: Arc::default(),
            not_found_retries: settings.sync.not_found_retries,
            not_found_delay: settings.sync.retry_min_delay.max(Duration::from_millis(50)),
            claim_lease: settings.sync.poll.claim_lease,
        }
    }

    /// The Partner Center client (for operator commands).
    pub fn partner_center(&self) -> &PartnerCenterClient {
        &self.partner_center
    }

    /// The CRM adapter.
    pub fn crm(&self) -> &dyn Crm {
        self.crm.as_ref()
    }

    /// The table choice.
    pub fn target(&self) -> SyncTarget {
        self.target
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
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::http::CallError;

    #[test]
    fn messages_parse_from_the_webhook_object_a_bare_id_or_a_record() {
        let id = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";
        let referral = |event: Option<&str>| SyncMessage::Referral {
            referral_id: ReferralId::parse(id).unwrap(),
            event_name: event.map(str::to_owned),
        };
        let cases = [
            (
                format!(r#"{{"referralId":"{id}","eventName":"referral-created"}}"#),
                referral(Some("referral-created")),
            ),
            (id.to_owned(), referral(None)),
            (
                format!(
                    r#"{{"table":"Opportunity","recordId":"AB12","referralId":"{id}","error":"x"}}"#
                ),
                SyncMessage::Record {
                    kind: RecordKind::Opportunity,
                    record_id: "AB12".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(SyncMessage::parse(&text).unwrap(), expected, "{text}");
        }
        for bad in [
            "",
            "{}",
            "[]",
            r#"{"referralId":"nope"}"#,
            "not json",
            r#"{"table":"account","recordId":"1"}"#,
            r#"{"table":"lead","recordId":" "}"#,
            r#"{"table":"lead"}"#,
        ] {
            assert!(
                matches!(SyncMessage::parse(bad), Err(SyncError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn auto_routes_leads_to_lead_and_co_sell_to_opportunity() {
        let cases = [
            ("Direct", "Independent", RecordKind::Lead),
            ("MarketingQualified", "Independent", RecordKind::Lead),
            ("marketingqualified", "", RecordKind::Lead),
            ("Direct", "Shared", RecordKind::Opportunity),
            ("SalesQualified", "Independent", RecordKind::Opportunity),
            ("None", "Independent", RecordKind::Opportunity),
            ("", "", RecordKind::Opportunity),
        ];
        for (qualification, kind, expected) in cases {
            let referral = Referral::from_json(
                json!({"id": "c5fbb3b6-be74-4795-9fb5-4324c73fed37", "status": "New",
                       "qualification": qualification, "type": kind}),
                None,
            )
            .unwrap();
            assert_eq!(
                SyncTarget::Auto.route(&referral),
                expected,
                "{qualification}/{kind}"
            );
            assert_eq!(SyncTarget::Lead.route(&referral), RecordKind::Lead);
            assert_eq!(
                SyncTarget::Opportunity.route(&referral),
                RecordKind::Opportunity
            );
        }
        assert_eq!(SyncTarget::parse(" Auto "), Some(SyncTarget::Auto));
        assert_eq!(SyncTarget::parse("leads"), None);
    }

    #[test]
    fn disposition_table() {
        let id = ReferralId::parse("c5fbb3b6-be74-4795-9fb5-4324c73fed37").unwrap();
        let status = |s: u16| CallError::Status {
            status: reqwest::StatusCode::from_u16(s).unwrap(),
            body: String::new(),
            retry_after: None,
        };
        let crm = |source: CallError| -> SyncError {
            SyncError::Crm(CrmError::Call {
                crm: "Dataverse",
                source,
            })
        };
        let retry = [
            SyncError::PartnerCenter(PartnerCenterError::Call(status(429))),
            SyncError::PartnerCenter(PartnerCenterError::Call(status(503))),
            crm(status(500)),
            crm(CallError::Transport("timed out".into())),
            SyncError::Crm(CrmError::Conflict(RecordKind::Lead)),
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
            crm(status(400)),
            SyncError::Crm(CrmError::Rejected {
                crm: "Dataverse",
                message: "closed".into(),
            }),
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
