//! Pure planning: what to write to the CRM record and what JSON Patch to send the referral,
//! given both as they are now. Replaying a sync plans nothing; the status table and the
//! Partner Center → CRM close are table-tested here.

use serde_json::{Map, Value};

use super::{
    TableMapping,
    rules::{ColumnKind, MapError, Source, same_value},
};
use crate::{
    crm::{CrmRecord, Outcome, RecordKind, RecordState},
    domain::{
        Referral, ReferralStatus,
        referral::{lookup, lookup_entry},
    },
};

/// Longest audit text kept in the CRM column; older lines are dropped first.
pub const AUDIT_MAX_CHARS: usize = 20_000;

/// Option values of the "How can Microsoft help?" choice, in the order of
/// `inviteContext.assistanceRequestCode` (../shared/spec/cosell.md §1.4).
pub const HELP_CHOICES: [(&str, i64, &str); 6] = [
    (
        "WorkloadSpecificValueProposition",
        100_000_001,
        "Workload-specific value proposition",
    ),
    (
        "CustomerTechnicalArchitecture",
        100_000_002,
        "Customer technical architecture",
    ),
    (
        "ProofOfConceptOrDemo",
        100_000_003,
        "Proof of concept / Demo",
    ),
    ("QuotesOrLicensing", 100_000_004, "Quotes and Licensing"),
    (
        "PostSalesCustomerSuccess",
        100_000_005,
        "Post-sales customer success",
    ),
    ("GeneralOrOther", 100_000_006, "General or other"),
];

/// What the sync may do beyond the column rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBackPolicy {
    /// Accept a new incoming referral once its record exists (`REFERRAL_ACCEPT_NEW`).
    pub accept_new: bool,
    /// Close an open opportunity when its referral is closed (`CRM_CLOSE_FROM_REFERRAL`).
    pub close_from_referral: bool,
    /// The referral's Partner Center URL, `{id}` standing for its id (`REFERRAL_LINK_TEMPLATE`).
    pub link_template: String,
    /// Whether paths other than status and substatus may be patched (false once Partner
    /// Center refused them).
    pub optional_paths: bool,
}

impl Default for WriteBackPolicy {
    fn default() -> Self {
        Self {
            accept_new: true,
            close_from_referral: true,
            link_template: "https://partner.microsoft.com/dashboard/referrals/v2/leads/{id}".into(),
            optional_paths: true,
        }
    }
}

/// What to do with an existing record.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordPlan {
    /// The record is open and differs in these columns.
    Update {
        /// Changed columns only.
        changes: Map<String, Value>,
    },
    /// The record already matches.
    Unchanged,
    /// The record is closed, qualified or disqualified, so it is read-only.
    ReadOnly {
        /// Its state.
        state: RecordState,
    },
}

/// What to do with the referral.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteBack {
    /// Send this JSON Patch.
    Patch(Vec<PatchOp>),
    /// Nothing would change.
    Unchanged,
    /// The referral is closed (or in an unknown status): never patched.
    Closed,
}

impl WriteBack {
    /// The patched paths, for the audit.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Self::Patch(ops) => ops.iter().map(|op| op.path.as_str()).collect(),
            Self::Unchanged | Self::Closed => Vec::new(),
        }
    }
}

/// One RFC 6902 operation (Partner Center supports `add` and `replace`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PatchOp {
    /// `add` or `replace`.
    pub op: &'static str,
    /// JSON pointer.
    pub path: String,
    /// New value.
    pub value: Value,
}

impl PatchOp {
    /// `replace` when the top-level field exists (in any casing), else `add`.
    pub(crate) fn set(document: &Map<String, Value>, field: &str, value: Value) -> Self {
        Self::at_path(document, &[field], value)
    }

    /// `replace` when the target exists; otherwise `add` at the first missing ancestor with
    /// the value nested inside it. Keys match case-insensitively, and the pointer spells the
    /// existing ones as the document does, so `Details` is never added next to `details`.
    pub(crate) fn at_path(document: &Map<String, Value>, keys: &[&str], value: Value) -> Self {
        let mut path = String::new();
        let mut object = Some(document);
        for (depth, key) in keys.iter().enumerate() {
            path.push('/');
            match object.and_then(|o| lookup_entry(o, key)) {
                Some((name, next)) => {
                    path.push_str(name);
                    object = next.as_object();
                }
                None => {
                    path.push_str(key);
                    let nested = keys[depth + 1..].iter().rev().fold(value, |inner, k| {
                        let mut m = Map::new();
                        m.insert((*k).to_owned(), inner);
                        Value::Object(m)
                    });
                    return Self {
                        op: "add",
                        path,
                        value: nested,
                    };
                }
            }
        }
        Self {
            op: "replace",
            path,
            value,
        }
    }
}

impl TableMapping {
    /// Columns to read: the mapped ones and the Partner Center columns.
    pub fn select_columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = self.rules.iter().map(|r| r.column.as_str()).collect();
        for name in self.partner_center.names() {
            if !columns.contains(&name) {
                columns.push(name);
            }
        }
        columns
    }

    /// Columns the write-back needs back from a write: the crm-to-pc ones.
    pub fn returned_columns(&self) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|r| r.direction.writes_referral())
            .map(|r| r.column.as_str())
            .collect()
    }

    /// The record columns a referral maps to (Partner Center → CRM rules only).
    /// `creating` includes `on-create` rules. Empty values map to `null`.
    pub fn record_columns(
        &self,
        referral: &Referral,
        creating: bool,
    ) -> Result<Map<String, Value>, MapError> {
        let mut out = Map::new();
        for rule in &self.rules {
            if rule.direction.reads_referral(creating) {
                out.insert(rule.column.clone(), rule.value_for_crm(referral)?);
            }
        }
        Ok(out)
    }

    /// The Partner Center columns a referral gives its record when the record is created or
    /// adopted: link, "Sync with Partner Center", "How can Microsoft help?", solutions.
    pub fn partner_center_columns(
        &self,
        referral: &Referral,
        policy: &WriteBackPolicy,
    ) -> Map<String, Value> {
        let pc = &self.partner_center;
        let mut out = Map::new();
        if let Some(column) = &pc.link {
            out.insert(column.clone(), Value::from(referral_link(referral, policy)));
        }
        if let Some(column) = &pc.sync {
            out.insert(column.clone(), Value::Bool(true));
        }
        if let Some(column) = &pc.help
            && let Some((code, value)) = help_choice(referral)
        {
            // A picklist (Salesforce) holds the code; a choice column (Dataverse) its value.
            let value = match self.kind_of(column) {
                ColumnKind::Text { .. } => Value::from(code),
                _ => Value::from(value),
            };
            out.insert(column.clone(), value);
        }
        if let Some(column) = &pc.solutions
            && let Some(text) = solutions_text(referral)
        {
            out.insert(column.clone(), Value::from(text));
        }
        out
    }

    /// The columns of a new record for a referral that has none (nulls left out).
    pub fn plan_create(
        &self,
        referral: &Referral,
        policy: &WriteBackPolicy,
    ) -> Result<Map<String, Value>, MapError> {
        let mut columns = self.record_columns(referral, true)?;
        columns.retain(|_, v| !v.is_null());
        columns.extend(self.partner_center_columns(referral, policy));
        Ok(columns)
    }

    /// The columns that link a record the CRM made by itself (a qualified lead's opportunity)
    /// to the referral: the Partner Center columns and the mapped columns that differ.
    pub fn plan_adopt(
        &self,
        referral: &Referral,
        record: &CrmRecord,
        policy: &WriteBackPolicy,
    ) -> Result<Map<String, Value>, MapError> {
        let mut columns = match self.plan_update(referral, record, policy)? {
            RecordPlan::Update { changes } => changes,
            RecordPlan::Unchanged | RecordPlan::ReadOnly { .. } => Map::new(),
        };
        columns.extend(self.partner_center_columns(referral, policy));
        Ok(columns)
    }

    /// Decides the CRM write for a referral whose record exists, given the record as it is now.
    /// The link follows the referral on every sync; the other Partner Center columns are the
    /// seller's once the record exists.
    pub fn plan_update(
        &self,
        referral: &Referral,
        record: &CrmRecord,
        policy: &WriteBackPolicy,
    ) -> Result<RecordPlan, MapError> {
        if !record.state.is_open() {
            return Ok(RecordPlan::ReadOnly {
                state: record.state.clone(),
            });
        }
        let mut desired = self.record_columns(referral, false)?;
        if let Some(column) = &self.partner_center.link {
            desired.insert(column.clone(), Value::from(referral_link(referral, policy)));
        }
        let mut changes = Map::new();
        for (column, value) in desired {
            if !same_value(&value, record.columns.get(&column).unwrap_or(&Value::Null)) {
                changes.insert(column, value);
            }
        }
        if changes.is_empty() {
            Ok(RecordPlan::Unchanged)
        } else {
            Ok(RecordPlan::Update { changes })
        }
    }

    /// Decides the JSON Patch for the referral, given its record after the CRM write.
    pub fn plan_writeback(
        &self,
        referral: &Referral,
        record: &CrmRecord,
        policy: &WriteBackPolicy,
    ) -> Result<WriteBack, MapError> {
        if matches!(
            referral.status(),
            ReferralStatus::Closed | ReferralStatus::Unknown(_)
        ) {
            return Ok(WriteBack::Closed);
        }
        let document = referral.document();
        let mut ops = Vec::new();
        if policy.optional_paths && referral.external_reference_id() != Some(record.id.as_str()) {
            ops.push(PatchOp::set(
                document,
                "externalReferenceId",
                Value::from(record.id.clone()),
            ));
        }
        if let Some(change) = status_change(referral, &record.state, policy.accept_new) {
            ops.push(PatchOp::set(document, "status", Value::from(change.status)));
            ops.push(PatchOp::set(
                document,
                "substatus",
                Value::from(change.substatus),
            ));
            if let Some(reason) = change.reason
                && policy.optional_paths
            {
                ops.push(PatchOp::set(document, "statusReason", Value::from(reason)));
            }
        }
        let crm_to_pc = self
            .rules
            .iter()
            .filter(|r| r.direction.writes_referral() && policy.optional_paths);
        for rule in crm_to_pc {
            let Source::Fields(paths) = &rule.source else {
                continue;
            };
            let Some(path) = paths.first() else { continue };
            let crm_value = record.columns.get(&rule.column).unwrap_or(&Value::Null);
            if crm_value.is_null() {
                continue;
            }
            let current = rule.convert_for_crm(path.get(document), path)?;
            if same_value(&current, crm_value) {
                continue;
            }
            let Some(keys) = path.keys() else {
                continue;
            };
            ops.push(PatchOp::at_path(
                document,
                &keys,
                rule.kind.to_partner_center(crm_value),
            ));
        }
        if ops.is_empty() {
            Ok(WriteBack::Unchanged)
        } else {
            Ok(WriteBack::Patch(ops))
        }
    }
}

/// The Partner Center URL of a referral.
pub fn referral_link(referral: &Referral, policy: &WriteBackPolicy) -> String {
    policy.link_template.replace("{id}", referral.id().as_str())
}

/// `inviteContext.assistanceRequestCode` and its choice value, when it is one of the six.
pub fn help_choice(referral: &Referral) -> Option<(&'static str, i64)> {
    let context = lookup(referral.document(), "inviteContext")?.as_object()?;
    let code = lookup(context, "assistanceRequestCode")?.as_str()?;
    HELP_CHOICES
        .iter()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(code))
        .map(|(name, value, _)| (*name, *value))
}

/// `details.requirements.solutions` as `id (name)` entries joined by `; `, at most 4,000
/// characters.
pub fn solutions_text(referral: &Referral) -> Option<String> {
    let details = lookup(referral.document(), "details")?.as_object()?;
    let requirements = lookup(details, "requirements")?.as_object()?;
    let solutions = lookup(requirements, "solutions")?.as_array()?;
    let entries: Vec<String> = solutions
        .iter()
        .filter_map(|s| {
            let s = s.as_object()?;
            let id = lookup(s, "id").and_then(Value::as_str).unwrap_or("");
            let name = lookup(s, "name").and_then(Value::as_str).unwrap_or("");
            match (id.is_empty(), name.is_empty()) {
                (true, true) => None,
                (false, true) => Some(id.to_owned()),
                (true, false) => Some(name.to_owned()),
                (false, false) => Some(format!("{id} ({name})")),
            }
        })
        .collect();
    if entries.is_empty() {
        return None;
    }
    let text = entries.join("; ");
    Some(text.chars().take(4000).collect())
}

/// The audit and status columns' text.
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    /// The sync's time, RFC 3339 UTC.
    pub now: &'a str,
}

impl Audit<'_> {
    /// `synced <time>`.
    pub fn synced(&self) -> String {
        format!("synced {}", self.now)
    }

    /// `error: <reason>`, at most 4,000 characters.
    pub fn error(reason: &str) -> String {
        format!("error: {reason}").chars().take(4000).collect()
    }

    /// One audit line: time, direction, what changed.
    pub fn line(&self, direction: &str, what: &str) -> String {
        format!("{} {direction}: {what}", self.now)
    }

    /// The audit text with `line` on top, cut to [`AUDIT_MAX_CHARS`] at a line boundary.
    pub fn prepend(existing: Option<&Value>, line: &str) -> String {
        let existing = existing.and_then(Value::as_str).unwrap_or("");
        let mut text = if existing.is_empty() {
            line.to_owned()
        } else {
            format!("{line}\n{existing}")
        };
        if text.chars().count() > AUDIT_MAX_CHARS {
            let cut = text
                .char_indices()
                .nth(AUDIT_MAX_CHARS)
                .map_or(text.len(), |(i, _)| i);
            let keep = text[..cut].rfind('\n').unwrap_or(cut);
            text.truncate(keep);
        }
        text
    }
}

/// A referral status change derived from the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// New status.
    pub status: &'static str,
    /// New substatus.
    pub substatus: &'static str,
    /// `statusReason`, for Lost.
    pub reason: Option<String>,
}

/// The status table (README "Status write-back"): never Closed referrals; accepting only
/// incoming ones, the deal's end for outgoing ones (shared from the CRM) too.
///
/// | record | referral New | referral Active |
/// |---|---|---|
/// | Open, or a lead qualified | Active / Accepted | — |
/// | Won (opportunity) | Closed / Won | Closed / Won |
/// | Lost (opportunity) or disqualified (lead) | Closed / Lost + reason | Closed / Lost + reason |
///
/// With `accept_new` false a New referral is left for a person to accept in Partner Center.
pub fn status_change(
    referral: &Referral,
    state: &RecordState,
    accept_new: bool,
) -> Option<StatusChange> {
    let open = matches!(
        referral.status(),
        ReferralStatus::New | ReferralStatus::Active
    );
    match (referral.status(), state) {
        (ReferralStatus::New, RecordState::Open | RecordState::Converted { .. })
            if accept_new && referral.is_incoming() =>
        {
            Some(StatusChange {
                status: "Active",
                substatus: "Accepted",
                reason: None,
            })
        }
        (_, RecordState::Won) if open => Some(StatusChange {
            status: "Closed",
            substatus: "Won",
            reason: None,
        }),
        (_, RecordState::Lost { reason }) if open => Some(StatusChange {
            status: "Closed",
            substatus: "Lost",
            reason: Some(reason.clone()),
        }),
        _ => None,
    }
}

/// Partner Center → CRM close: a referral closed in Partner Center closes its open
/// opportunity (Won → won; Lost, Declined or Expired → lost), unless the policy says not to.
/// Leads are never closed, and a closed opportunity is never reopened.
pub fn close_outcome(
    referral: &Referral,
    record: &CrmRecord,
    policy: &WriteBackPolicy,
) -> Option<Outcome> {
    if !policy.close_from_referral
        || record.kind != RecordKind::Opportunity
        || !record.state.is_open()
        || referral.status() != &ReferralStatus::Closed
    {
        return None;
    }
    let substatus = referral.text("substatus").unwrap_or("");
    if substatus.eq_ignore_ascii_case("won") {
        return Some(Outcome::Won);
    }
    let reason = referral.text("statusReason").filter(|r| !r.is_empty());
    let known = ["lost", "declined", "expired"]
        .iter()
        .any(|s| substatus.eq_ignore_ascii_case(s));
    known.then(|| Outcome::Lost {
        reason: match reason {
            Some(reason) => format!("{substatus} in Partner Center: {reason}"),
            None => format!("{substatus} in Partner Center"),
        },
    })
}
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        crm::dataverse::{self, lead},
        mapping::{MappingError, Mappings, rules::FieldPath},
    };

    const ID: &str = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";
    const LEAD: &str = "aaaaaaaa-0000-0000-0000-000000000001";

    /// Lead states as the old tests name them, mapped through the adapter's state rules.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum LeadState {
        Open,
        Qualified,
        Disqualified,
    }

    fn state(state: LeadState, status: Option<i64>) -> RecordState {
        let code = match state {
            LeadState::Open => 0,
            LeadState::Qualified => 1,
            LeadState::Disqualified => 2,
        };
        lead::state(code, status, None)
    }

    /// The default lead rules without the Partner Center columns (tested on their own below).
    fn m0() -> TableMapping {
        let mut table = lead::mapping();
        table.partner_center = Default::default();
        table
    }

    fn parse(text: &str) -> Result<TableMapping, MappingError> {
        Mappings::from_json_text(text, dataverse::default_mapping).map(|m| {
            let mut table = m.lead;
            table.partner_center = Default::default();
            table
        })
    }

    /// The planning calls with the default policy.
    trait Plans {
        fn create(&self, r: &Referral) -> Result<Map<String, Value>, MapError>;
        fn update(&self, r: &Referral, l: &CrmRecord) -> Result<RecordPlan, MapError>;
        fn writeback(&self, r: &Referral, l: &CrmRecord) -> Result<WriteBack, MapError>;
    }

    impl Plans for TableMapping {
        fn create(&self, r: &Referral) -> Result<Map<String, Value>, MapError> {
            self.plan_create(r, &WriteBackPolicy::default())
        }
        fn update(&self, r: &Referral, l: &CrmRecord) -> Result<RecordPlan, MapError> {
            self.plan_update(r, l, &WriteBackPolicy::default())
        }
        fn writeback(&self, r: &Referral, l: &CrmRecord) -> Result<WriteBack, MapError> {
            self.plan_writeback(r, l, &WriteBackPolicy::default())
        }
    }

    fn referral(extra: Value) -> Referral {
        let mut doc = json!({
            "id": ID, "name": "Contoso migration", "status": "New", "substatus": "Pending",
            "direction": "Incoming", "eTag": "\"1\"",
            "customerProfile": {
                "name": "Fabrikam Inc",
                "address": {"addressLine1": "One Microsoft Way", "addressLine2": "", "city": "Redmond",
                            "state": "WA", "postalCode": "98052", "country": "US"},
                "team": [
                    {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@fabrikam.test", "phoneNumber": "555-0100"},
                    {"firstName": "Bob", "lastName": "Last", "email": "bob@fabrikam.test"}
                ]
            },
            "details": {"notes": "Needs help", "dealValue": 10000.456, "currency": "USD",
                        "closingDateTime": "2026-12-01T00:00:00Z"}
        });
        if let (Value::Object(d), Value::Object(e)) = (&mut doc, extra) {
            for (k, v) in e {
                d.insert(k, v);
            }
        }
        Referral::from_json(doc, None).unwrap()
    }

    fn lead(lead_state: LeadState, status: Option<i64>, columns: Value) -> CrmRecord {
        CrmRecord {
            kind: RecordKind::Lead,
            id: LEAD.into(),
            version: Some("W/\"1\"".into()),
            state: state(lead_state, status),
            key: Some(ID.into()),
            modified_on: None,
            columns: columns.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn default_mapping_table() {
        let columns = m0().create(&referral(json!({}))).unwrap();
        let expected = json!({
            "subject": "Contoso migration", "companyname": "Fabrikam Inc",
            "firstname": "Ada", "lastname": "Lovelace", "emailaddress1": "ada@fabrikam.test",
            "telephone1": "555-0100", "address1_line1": "One Microsoft Way", "address1_city": "Redmond",
            "address1_stateorprovince": "WA", "address1_postalcode": "98052", "address1_country": "US",
            "description": "Needs help", "estimatedamount": 10000.46, "estimatedclosedate": "2026-12-01",
            "leadsourcecode": 4
        });
        assert_eq!(Value::Object(columns), expected);
    }

    #[test]
    fn first_team_member_not_the_last_and_fallbacks_when_there_is_none() {
        let r = referral(json!({"name": "", "customerProfile": {"name": "Solo Ltd", "team": []}}));
        let cols = m0().record_columns(&r, true).unwrap();
        assert_eq!(cols["subject"], "Solo Ltd");
        assert_eq!(cols["lastname"], "Solo Ltd");
        assert_eq!(cols["firstname"], Value::Null);
        assert_eq!(cols["leadsourcecode"], 4);
    }

    #[test]
    fn text_is_truncated_to_the_column_length() {
        let long = "x".repeat(400);
        let r = referral(json!({"name": long}));
        let cols = m0().record_columns(&r, false).unwrap();
        assert_eq!(cols["subject"].as_str().unwrap().chars().count(), 300);
    }

    #[test]
    fn bad_values_are_mapping_errors_naming_column_and_field() {
        let r =
            referral(json!({"details": {"dealValue": "a lot", "closingDateTime": "2026-12-01"}}));
        let err = m0().create(&r).unwrap_err();
        assert_eq!(err.column, "estimatedamount");
        assert_eq!(err.field, "details.dealValue");
        let r = referral(json!({"details": {"closingDateTime": "soon"}}));
        assert_eq!(m0().create(&r).unwrap_err().column, "estimatedclosedate");
    }

    #[test]
    fn update_sends_only_changed_columns_and_on_create_columns_never() {
        let m = m0();
        let r = referral(json!({}));
        let mut current = m.record_columns(&r, false).unwrap();
        current.insert("description".into(), json!("old notes"));
        current.insert("estimatedamount".into(), json!(10000.46));
        let plan = m
            .update(&r, &lead(LeadState::Open, Some(1), Value::Object(current)))
            .unwrap();
        assert_eq!(
            plan,
            RecordPlan::Update {
                changes: json!({"description": "Needs help"})
                    .as_object()
                    .cloned()
                    .unwrap()
            }
        );
    }

    #[test]
    fn unchanged_lead_is_not_written_even_with_dataverse_number_and_empty_forms() {
        let m = m0();
        let r = referral(json!({}));
        let mut current = m.record_columns(&r, false).unwrap();
        current.insert("estimatedamount".into(), json!(10000.460000));
        current.insert("address1_line2".into(), json!(""));
        let plan = m
            .update(&r, &lead(LeadState::Open, Some(1), Value::Object(current)))
            .unwrap();
        assert_eq!(plan, RecordPlan::Unchanged);
    }

    #[test]
    fn qualified_and_disqualified_leads_are_read_only() {
        for state in [LeadState::Qualified, LeadState::Disqualified] {
            let plan = m0()
                .update(&referral(json!({})), &lead(state, None, json!({})))
                .unwrap();
            assert_eq!(
                plan,
                RecordPlan::ReadOnly {
                    state: super::tests::state(state, None)
                }
            );
        }
    }

    #[test]
    fn status_table() {
        let cases = [
            (
                "New",
                LeadState::Open,
                None,
                Some(("Active", "Accepted", None)),
            ),
            (
                "New",
                LeadState::Qualified,
                Some(3),
                Some(("Active", "Accepted", None)),
            ),
            ("Active", LeadState::Open, Some(1), None),
            ("Active", LeadState::Qualified, Some(3), None),
            (
                "Active",
                LeadState::Disqualified,
                Some(5),
                Some(("Closed", "Lost", Some("Cannot Contact"))),
            ),
            (
                "New",
                LeadState::Disqualified,
                Some(4),
                Some(("Closed", "Lost", Some("Lost"))),
            ),
            ("Closed", LeadState::Disqualified, Some(4), None),
            ("Closed", LeadState::Open, Some(1), None),
        ];
        for (status, state, code, expected) in cases {
            let r = referral(json!({"status": status}));
            let got = status_change(&r, &lead(state, code, json!({})).state, true);
            let expected =
                expected.map(
                    |(s, sub, reason): (&str, &str, Option<&str>)| StatusChange {
                        status: if s == "Active" { "Active" } else { "Closed" },
                        substatus: if sub == "Accepted" {
                            "Accepted"
                        } else {
                            "Lost"
                        },
                        reason: reason.map(str::to_owned),
                    },
                );
            assert_eq!(got, expected, "{status} / {state:?}");
        }
        let outgoing = referral(json!({"direction": "Outgoing"}));
        assert_eq!(
            status_change(
                &outgoing,
                &lead(LeadState::Open, None, json!({})).state,
                true
            ),
            None
        );
    }

    #[test]
    fn without_auto_accept_a_new_referral_only_learns_the_lead_id() {
        let m = m0();
        let policy = WriteBackPolicy {
            accept_new: false,
            ..WriteBackPolicy::default()
        };
        let r = referral(json!({}));
        let WriteBack::Patch(ops) = m
            .plan_writeback(&r, &lead(LeadState::Open, Some(1), json!({})), &policy)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(ops).unwrap(),
            json!([{"op": "add", "path": "/externalReferenceId", "value": LEAD}])
        );
        let WriteBack::Patch(ops) = m
            .plan_writeback(
                &r,
                &lead(LeadState::Disqualified, Some(4), json!({})),
                &policy,
            )
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            ops[1].value, "Closed",
            "a disqualified lead still closes the referral"
        );
    }

    #[test]
    fn writeback_sets_reference_and_accepts_a_new_referral() {
        let wb = m0()
            .writeback(
                &referral(json!({})),
                &lead(LeadState::Open, Some(1), json!({})),
            )
            .unwrap();
        let WriteBack::Patch(ops) = wb else {
            panic!("{wb:?}")
        };
        let ops = serde_json::to_value(ops).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "add", "path": "/externalReferenceId", "value": LEAD},
                {"op": "replace", "path": "/status", "value": "Active"},
                {"op": "replace", "path": "/substatus", "value": "Accepted"}
            ])
        );
    }

    #[test]
    fn writeback_closes_as_lost_with_reason_and_never_touches_closed() {
        let r = referral(
            json!({"status": "Active", "substatus": "Accepted", "externalReferenceId": LEAD, "statusReason": ""}),
        );
        let WriteBack::Patch(ops) = m0()
            .writeback(&r, &lead(LeadState::Disqualified, Some(6), json!({})))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(ops).unwrap(),
            json!([
                {"op": "replace", "path": "/status", "value": "Closed"},
                {"op": "replace", "path": "/substatus", "value": "Lost"},
                {"op": "replace", "path": "/statusReason", "value": "No Longer Interested"}
            ])
        );
        let closed = referral(json!({"status": "Closed"}));
        assert_eq!(
            m0().writeback(&closed, &lead(LeadState::Open, None, json!({})))
                .unwrap(),
            WriteBack::Closed
        );
    }

    #[test]
    fn writeback_after_writeback_is_unchanged() {
        let r = referral(
            json!({"status": "Active", "substatus": "Accepted", "externalReferenceId": LEAD}),
        );
        assert_eq!(
            m0().writeback(&r, &lead(LeadState::Open, Some(1), json!({})))
                .unwrap(),
            WriteBack::Unchanged
        );
    }

    #[test]
    fn mapping_file_overrides_drops_and_adds_columns() {
        let m = parse(
            r#"{"columns": {
                "description": {"from": "details.notes", "direction": "on-create"},
                "telephone1": null,
                "new_dealsize": {"from": ["details.dealValue"], "type": "money"},
                "leadqualitycode": {"value": 2, "direction": "on-create"}
            }}"#,
        )
        .unwrap();
        let r = referral(json!({}));
        let update = m.record_columns(&r, false).unwrap();
        assert!(!update.contains_key("description"));
        assert!(!update.contains_key("telephone1"));
        assert_eq!(update["new_dealsize"], json!(10000.46));
        let create = m.record_columns(&r, true).unwrap();
        assert_eq!(create["description"], "Needs help");
        assert_eq!(create["leadqualitycode"], 2);
    }

    #[test]
    fn replace_defaults_keeps_only_the_file() {
        let m = parse(r#"{"replaceDefaults": true, "columns": {"subject": {"from": "name"}}}"#)
            .unwrap();
        assert_eq!(m.select_columns(), vec!["subject"]);
    }

    #[test]
    fn crm_to_pc_writes_the_lead_value_into_the_referral_once() {
        let m = parse(
            r#"{"columns": {
                "estimatedamount": {"from": "details.dealValue", "direction": "crm-to-pc"},
                "estimatedclosedate": {"from": "details.closingDateTime", "direction": "crm-to-pc"}
            }}"#,
        )
        .unwrap();
        let r = referral(json!({"status": "Active", "externalReferenceId": LEAD}));
        let l = lead(
            LeadState::Open,
            Some(1),
            json!({"estimatedamount": 25000, "estimatedclosedate": "2026-12-01"}),
        );
        let WriteBack::Patch(ops) = m.writeback(&r, &l).unwrap() else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&ops).unwrap(),
            json!([{"op": "replace", "path": "/details/dealValue", "value": 25000}])
        );
        let updated = referral(json!({"status": "Active", "externalReferenceId": LEAD,
            "details": {"dealValue": 25000, "closingDateTime": "2026-12-01T00:00:00Z"}}));
        assert_eq!(m.writeback(&updated, &l).unwrap(), WriteBack::Unchanged);
        assert!(
            !m.record_columns(&updated, true)
                .unwrap()
                .contains_key("estimatedamount")
        );
    }

    #[test]
    fn crm_to_pc_into_a_missing_object_adds_the_object() {
        let m = parse(r#"{"columns": {"new_x": {"from": "extra.score", "direction": "crm-to-pc", "type": "number"}}}"#)
            .unwrap();
        let r = referral(json!({"status": "Active", "externalReferenceId": LEAD}));
        let WriteBack::Patch(ops) = m
            .writeback(&r, &lead(LeadState::Open, None, json!({"new_x": 7})))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&ops).unwrap(),
            json!([{"op": "add", "path": "/extra", "value": {"score": 7}}])
        );
    }

    #[test]
    fn crm_to_pc_uses_the_documents_casing_of_existing_objects() {
        let m = parse(
            r#"{"columns": {"estimatedamount": {"from": "details.dealValue", "direction": "crm-to-pc"},
                            "new_x": {"from": "details.score", "direction": "crm-to-pc", "type": "number"}}}"#,
        )
        .unwrap();
        let mut r = referral(json!({"status": "Active", "externalReferenceId": LEAD}))
            .document()
            .clone();
        let details = r.remove("details").unwrap();
        r.insert("Details".into(), details);
        let r = Referral::from_json(Value::Object(r), None).unwrap();
        let l = lead(
            LeadState::Open,
            None,
            json!({"estimatedamount": 25000, "new_x": 7}),
        );
        let WriteBack::Patch(ops) = m.writeback(&r, &l).unwrap() else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&ops).unwrap(),
            json!([
                {"op": "replace", "path": "/Details/dealValue", "value": 25000},
                {"op": "add", "path": "/Details/score", "value": 7}
            ])
        );
    }

    #[test]
    fn bad_mapping_files_name_the_field() {
        let cases = [
            ("[]", "(top level)"),
            (r#"{"columns": []}"#, "columns"),
            (r#"{"colums": {}}"#, "colums"),
            (
                r#"{"columns": {"Subject": {"from": "name"}}}"#,
                "columns.Subject",
            ),
            (
                r#"{"columns": {"statecode": {"value": 1}}}"#,
                "columns.statecode",
            ),
            (
                r#"{"columns": {"subject": {"form": "name"}}}"#,
                "columns.subject.form",
            ),
            (r#"{"columns": {"subject": {}}}"#, "columns.subject"),
            (
                r#"{"columns": {"subject": {"from": "name", "value": "x"}}}"#,
                "columns.subject",
            ),
            (
                r#"{"columns": {"subject": {"from": "a..b"}}}"#,
                "columns.subject.from",
            ),
            (
                r#"{"columns": {"subject": {"from": "a[x]"}}}"#,
                "columns.subject.from",
            ),
            (
                r#"{"columns": {"subject": {"from": "name", "direction": "both"}}}"#,
                "columns.subject.direction",
            ),
            (
                r#"{"columns": {"new_x": {"from": "name", "type": "guid"}}}"#,
                "columns.new_x.type",
            ),
            (
                r#"{"columns": {"leadsourcecode": {"value": "partner"}}}"#,
                "columns.leadsourcecode.value",
            ),
            (
                r#"{"columns": {"new_x": {"value": 1, "direction": "crm-to-pc"}}}"#,
                "columns.new_x",
            ),
            (
                r#"{"columns": {"new_x": {"from": "status", "direction": "crm-to-pc"}}}"#,
                "columns.new_x.from",
            ),
            (
                r#"{"columns": {"new_x": {"from": "customerProfile.team[0].email", "direction": "crm-to-pc"}}}"#,
                "columns.new_x.from",
            ),
            (
                r#"{"columns": {"new_x": {"from": "details.notes", "direction": "crm-to-pc"}}}"#,
                "columns.new_x.from",
            ),
        ];
        for (text, field) in cases {
            match parse(text) {
                Err(MappingError::Field { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(parse("{"), Err(MappingError::Json(_))));
    }

    #[test]
    fn crm_owned_columns_come_from_the_referral_once_and_flow_back_afterwards() {
        let m = parse(
            r#"{"columns": {"estimatedamount": {"from": "details.dealValue", "direction": "crm-owned"}}}"#,
        )
        .unwrap();
        let r = referral(json!({"status": "Active", "externalReferenceId": LEAD}));
        assert_eq!(m.create(&r).unwrap()["estimatedamount"], json!(10000.46));
        assert!(
            !m.record_columns(&r, false)
                .unwrap()
                .contains_key("estimatedamount")
        );
        let mut current = m.record_columns(&r, false).unwrap();
        current.insert("estimatedamount".into(), json!(75000));
        let l = lead(LeadState::Open, Some(1), Value::Object(current));
        assert_eq!(
            m.update(&r, &l).unwrap(),
            RecordPlan::Unchanged,
            "the seller's value stays"
        );
        let WriteBack::Patch(ops) = m.writeback(&r, &l).unwrap() else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&ops).unwrap(),
            json!([{"op": "replace", "path": "/details/dealValue", "value": 75000}])
        );
        // Reading the same field once, on create, does not loop with writing it back.
        assert!(
            parse(r#"{"columns": {"estimatedamount": {"from": "details.dealValue", "direction": "on-create"},
                                  "new_x": {"from": "details.dealValue", "direction": "crm-to-pc", "type": "money"}}}"#)
            .is_ok()
        );
    }

    #[test]
    fn outgoing_referrals_learn_the_deals_end_but_are_never_accepted() {
        let outgoing = |status: &str| referral(json!({"direction": "Outgoing", "status": status}));
        let won = RecordState::Won;
        let lost = RecordState::Lost {
            reason: "Out-Sold".into(),
        };
        assert_eq!(
            status_change(&outgoing("New"), &RecordState::Open, true),
            None
        );
        assert_eq!(
            status_change(&outgoing("Active"), &won, true).map(|c| c.substatus),
            Some("Won")
        );
        assert_eq!(
            status_change(&outgoing("Active"), &lost, true).and_then(|c| c.reason),
            Some("Out-Sold".to_owned())
        );
        assert_eq!(status_change(&outgoing("Closed"), &won, true), None);
    }

    #[test]
    fn field_paths() {
        let p = FieldPath::parse("customerProfile.team[1].email").unwrap();
        let r = referral(json!({}));
        assert_eq!(p.get(r.document()), Some(&json!("bob@fabrikam.test")));
        assert_eq!(p.pointer(), None);
        assert_eq!(
            FieldPath::parse("details.dealValue")
                .unwrap()
                .pointer()
                .as_deref(),
            Some("/details/dealValue")
        );
        assert_eq!(
            FieldPath::parse("CUSTOMERPROFILE.NAME")
                .unwrap()
                .get(r.document()),
            Some(&json!("Fabrikam Inc"))
        );
        assert_eq!(
            FieldPath::parse("customerProfile.team[9].email")
                .unwrap()
                .get(r.document()),
            None
        );
    }

    mod property {
        use proptest::prelude::*;

        use super::*;

        fn apply(document: &mut Value, ops: &[PatchOp]) {
            for op in ops {
                let keys: Vec<&str> = op.path.split('/').skip(1).collect();
                let (last, parents) = keys.split_last().unwrap();
                let mut target = &mut *document;
                for key in parents {
                    target = target
                        .as_object_mut()
                        .unwrap()
                        .entry(*key)
                        .or_insert(json!({}));
                }
                let object = target.as_object_mut().unwrap();
                if op.op == "replace" {
                    assert!(
                        object.contains_key(*last),
                        "replace of a missing member {}",
                        op.path
                    );
                }
                object.insert((*last).to_owned(), op.value.clone());
            }
        }

        fn text() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                Just(json!("")),
                "\\PC{0,320}".prop_map(Value::from)
            ]
        }

        fn referral_doc() -> impl Strategy<Value = Value> {
            let member = (text(), text(), text(), text()).prop_map(
                |(f, l, e, p)| json!({"firstName": f, "lastName": l, "email": e, "phoneNumber": p}),
            );
            let deal = prop_oneof![
                Just(Value::Null),
                (0u32..2_000_000).prop_map(Value::from),
                (0.0f64..1.0e9).prop_map(Value::from),
                (0u32..100_000).prop_map(|n| Value::from(format!("{n}.5"))),
            ];
            let date = prop_oneof![
                Just(Value::Null),
                (2020i32..2030, 1u8..=12, 1u8..=28)
                    .prop_map(|(y, m, d)| Value::from(format!("{y}-{m:02}-{d:02}T00:00:00Z"))),
            ];
            let status = prop_oneof![Just("New"), Just("Active"), Just("Closed")];
            let direction = prop_oneof![Just("Incoming"), Just("Outgoing")];
            (text(), text(), proptest::collection::vec(member, 0..3), text(), text(), deal, date, status, direction)
                .prop_map(|(name, company, team, city, notes, deal, date, status, direction)| {
                    json!({"id": ID, "name": name, "status": status, "direction": direction, "eTag": "\"1\"",
                           "customerProfile": {"name": company, "team": team, "address": {"city": city}},
                           "details": {"notes": notes, "dealValue": deal, "closingDateTime": date}})
                })
        }

        fn lead_state() -> impl Strategy<Value = (LeadState, Option<i64>)> {
            prop_oneof![
                Just((LeadState::Open, Some(1))),
                Just((LeadState::Qualified, Some(3))),
                (4i64..=7).prop_map(|c| (LeadState::Disqualified, Some(c))),
            ]
        }

        proptest! {
            #[test]
            fn syncing_any_referral_twice_makes_no_second_write(doc in referral_doc(), (state, code) in lead_state(), crm_amount in proptest::option::of(0u32..1_000_000)) {
                for mapping in [
                    m0(),
                    parse(r#"{"columns": {"estimatedamount": {"from": "details.dealValue", "direction": "crm-to-pc"}}}"#).unwrap(),
                    lead::mapping(),
                    crate::crm::dataverse::opportunity::mapping(),
                ] {
                    let referral = Referral::from_json(doc.clone(), None).unwrap();
                    let columns = mapping.create(&referral).unwrap();
                    let mut record = CrmRecord { kind: mapping.kind, id: LEAD.into(), version: None, state: RecordState::Open, key: Some(ID.into()), modified_on: None, columns };
                    let crm_to_pc = !mapping.returned_columns().is_empty();
                    if let Some(amount) = crm_amount
                        && crm_to_pc {
                            record.columns.insert("estimatedamount".into(), Value::from(amount));
                        }
                    prop_assert_eq!(mapping.update(&referral, &record).unwrap(), RecordPlan::Unchanged);
                    record.state = match mapping.kind {
                        RecordKind::Lead => super::state(state, code),
                        RecordKind::Opportunity => crate::crm::dataverse::opportunity::state(
                            match state { LeadState::Open => 0, LeadState::Qualified => 1, LeadState::Disqualified => 2 },
                            code,
                        ),
                    };

                    let mut document = doc.clone();
                    if let WriteBack::Patch(ops) = mapping.writeback(&referral, &record).unwrap() {
                        apply(&mut document, &ops);
                    }
                    let after = Referral::from_json(document, None).unwrap();
                    let second = mapping.writeback(&after, &record).unwrap();
                    prop_assert!(matches!(second, WriteBack::Unchanged | WriteBack::Closed), "{:?}", second);
                    if state == LeadState::Open {
                        prop_assert_eq!(mapping.update(&after, &record).unwrap(), RecordPlan::Unchanged);
                    }
                    prop_assert_eq!(close_outcome(&after, &record, &WriteBackPolicy::default()).is_some(),
                        record.state.is_open() && mapping.kind == RecordKind::Opportunity && after.status() == &ReferralStatus::Closed
                            && after.text("substatus").is_some_and(|s| ["won", "lost", "declined", "expired"].contains(&s.to_ascii_lowercase().as_str())));
                }
            }
        }
    }
}
