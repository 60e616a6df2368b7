//! Salesforce org setup and its checks. Owns the list of the connector's custom fields on Lead
//! and Opportunity and their Tooling API metadata; `setup` creates the missing fields, the
//! `Partner_Center_Connector` permission set with read and edit on each of them, and its
//! assignment to the integration user, idempotently; `verify` (for `check`) confirms sign-in,
//! that the integration user sees every field the mapping uses, and that the opportunity
//! stages the sync relies on exist.

use std::{collections::HashSet, io::Write};

use serde_json::{Map, Value, json};

use super::{SalesforceClient, SalesforceError};
use crate::mapping::plan::HELP_CHOICES;

/// API name of the permission set that grants the connector's fields.
pub const PERMISSION_SET_NAME: &str = "Partner_Center_Connector";
/// Label of that permission set.
pub const PERMISSION_SET_LABEL: &str = "Partner Center Connector";
/// The external-id field the connector upserts by, on Lead and Opportunity.
pub const REFERRAL_ID_FIELD: &str = "Partner_Center_Referral_Id__c";

const SETUP_COMMAND: &str = "referral-connector setup salesforce";
const CUSTOMIZE_FIX: &str = "the integration user needs the \"Customize Application\" and \"View \
     Setup and Configuration\" permissions to read and create custom fields during setup (or \
     create the fields in Setup → Object Manager and run setup again)";
const PERMISSION_SET_FIX: &str = "the integration user needs the \"Manage Profiles and \
     Permission Sets\" and \"View Setup and Configuration\" permissions to create the \
     Partner_Center_Connector permission set and its field permissions during setup";
const ASSIGN_FIX: &str = "the integration user needs the \"Assign Permission Sets\" and \"Manage \
     Profiles and Permission Sets\" permissions during setup, or an admin assigns the \
     Partner_Center_Connector permission set to it (Setup → Users → Permission Set \
     Assignments)";

/// The kind of a connector field, as created through the Tooling API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Text of `length` characters; with `external_id` also External ID, Unique and not case
    /// sensitive (the upsert key).
    Text {
        /// Maximum length (1–255).
        length: u32,
        /// External ID + Unique + case insensitive.
        external_id: bool,
    },
    /// URL (255 characters).
    Url,
    /// Long text area of `length` characters (256–131,072).
    LongTextArea {
        /// Maximum length.
        length: u32,
    },
    /// Checkbox with its default.
    Checkbox {
        /// Value of new records.
        default: bool,
    },
    /// Restricted picklist of the `assistanceRequestCode` values ([`HELP_CHOICES`]).
    HelpPicklist,
}

impl FieldType {
    /// A short description for setup's output (`Text(36), External ID, Unique`).
    pub fn summary(&self) -> String {
        match self {
            Self::Text {
                length,
                external_id: true,
            } => format!("Text({length}), External ID, Unique, case insensitive"),
            Self::Text { length, .. } => format!("Text({length})"),
            Self::Url => "Url".to_owned(),
            Self::LongTextArea { length } => format!("LongTextArea({length})"),
            Self::Checkbox { default } => format!("Checkbox, default {default}"),
            Self::HelpPicklist => format!("restricted Picklist, {} values", HELP_CHOICES.len()),
        }
    }
}

/// One custom field the connector needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectorField {
    /// The object (`Lead`, `Opportunity`).
    pub object: &'static str,
    /// The field's API name (`Partner_Center_Link__c`).
    pub name: &'static str,
    /// The field's label.
    pub label: &'static str,
    /// What it holds.
    pub field_type: FieldType,
}

const fn field(
    object: &'static str,
    name: &'static str,
    label: &'static str,
    field_type: FieldType,
) -> ConnectorField {
    ConnectorField {
        object,
        name,
        label,
        field_type,
    }
}

const REFERRAL_ID: FieldType = FieldType::Text {
    length: 36,
    external_id: true,
};
const SYNC_STATUS: FieldType = FieldType::Text {
    length: 255,
    external_id: false,
};
const AUDIT: FieldType = FieldType::LongTextArea { length: 32_768 };

/// Every custom field the connector reads or writes, on Lead and Opportunity.
pub const CONNECTOR_FIELDS: [ConnectorField; 11] = [
    field(
        "Lead",
        REFERRAL_ID_FIELD,
        "Partner Center Referral Id",
        REFERRAL_ID,
    ),
    field(
        "Lead",
        "Partner_Center_Link__c",
        "Partner Center Link",
        FieldType::Url,
    ),
    field(
        "Lead",
        "Partner_Center_Sync_Status__c",
        "Partner Center Sync Status",
        SYNC_STATUS,
    ),
    field(
        "Lead",
        "Partner_Center_Audit__c",
        "Partner Center Audit",
        AUDIT,
    ),
    field(
        "Opportunity",
        REFERRAL_ID_FIELD,
        "Partner Center Referral Id",
        REFERRAL_ID,
    ),
    field(
        "Opportunity",
        "Partner_Center_Link__c",
        "Partner Center Link",
        FieldType::Url,
    ),
    field(
        "Opportunity",
        "Partner_Center_Sync_Status__c",
        "Partner Center Sync Status",
        SYNC_STATUS,
    ),
    field(
        "Opportunity",
        "Partner_Center_Audit__c",
        "Partner Center Audit",
        AUDIT,
    ),
    field(
        "Opportunity",
        "Sync_with_Partner_Center__c",
        "Sync with Partner Center",
        FieldType::Checkbox { default: false },
    ),
    field(
        "Opportunity",
        "How_can_Microsoft_help__c",
        "How can Microsoft help?",
        FieldType::HelpPicklist,
    ),
    field(
        "Opportunity",
        "Partner_Center_Solutions__c",
        "Partner Center Solutions",
        SYNC_STATUS,
    ),
];

impl ConnectorField {
    /// `Object.Field__c`, the Tooling `FullName` and the FieldPermissions `Field`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.object, self.name)
    }

    /// The name without `__c`: what Tooling calls `DeveloperName`.
    pub fn developer_name(&self) -> &'static str {
        self.name.strip_suffix("__c").unwrap_or(self.name)
    }

    /// The Tooling `CustomField` `Metadata` (`CustomFieldMetadata`).
    pub fn metadata(&self) -> Value {
        let mut meta = json!({
            "label": self.label,
            "description": "Maintained by the Partner Center referral connector.",
        });
        let extra = match self.field_type {
            FieldType::Text {
                length,
                external_id,
            } => {
                let mut text = json!({"type": "Text", "length": length});
                if external_id {
                    text["externalId"] = json!(true);
                    text["unique"] = json!(true);
                    text["caseSensitive"] = json!(false);
                }
                text
            }
            FieldType::Url => json!({"type": "Url"}),
            FieldType::LongTextArea { length } => {
                json!({"type": "LongTextArea", "length": length, "visibleLines": 5})
            }
            FieldType::Checkbox { default } => {
                json!({"type": "Checkbox", "defaultValue": default.to_string()})
            }
            FieldType::HelpPicklist => {
                let values: Vec<Value> = HELP_CHOICES
                    .iter()
                    .map(|(code, _, label)| json!({"fullName": code, "label": label, "default": false}))
                    .collect();
                json!({"type": "Picklist", "valueSet": {
                    "restricted": true,
                    "valueSetDefinition": {"sorted": false, "value": values},
                }})
            }
        };
        if let (Value::Object(meta), Value::Object(extra)) = (&mut meta, extra) {
            meta.extend(extra);
        }
        meta
    }

    /// The body of `POST …/tooling/sobjects/CustomField`.
    pub fn tooling_body(&self) -> Value {
        json!({"FullName": self.full_name(), "Metadata": self.metadata()})
    }
}

/// Whether `object.field` is one of the connector's fields.
pub fn is_connector_field(object: &str, field: &str) -> bool {
    CONNECTOR_FIELDS
        .iter()
        .any(|f| f.object.eq_ignore_ascii_case(object) && f.name.eq_ignore_ascii_case(field))
}

/// What a [`setup`] run wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetupSummary {
    /// Custom fields created.
    pub fields_created: usize,
    /// Whether the permission set was created.
    pub permission_set_created: bool,
    /// FieldPermissions created.
    pub field_permissions_created: usize,
    /// FieldPermissions that lacked read or edit and were fixed.
    pub field_permissions_fixed: usize,
    /// Whether the permission set was assigned to the integration user.
    pub assignment_created: bool,
}

impl SetupSummary {
    /// Number of records the run created or changed (0 on a run with nothing to do).
    pub fn writes(&self) -> usize {
        self.fields_created
            + usize::from(self.permission_set_created)
            + self.field_permissions_created
            + self.field_permissions_fixed
            + usize::from(self.assignment_created)
    }
}

/// Creates what is missing, one line per item on `out`: each connector field (Tooling API),
/// the `Partner_Center_Connector` permission set, read and edit on every field in it, and its
/// assignment to the user the token is issued to (the Run As user). Running it again writes
/// nothing. Errors name the permission the integration user lacks.
#[tracing::instrument(skip_all)]
pub async fn setup(
    client: &SalesforceClient,
    out: &mut impl Write,
) -> anyhow::Result<SetupSummary> {
    let mut summary = SetupSummary::default();
    let identity = client.token_identity().await.map_err(|e| {
        anyhow::anyhow!("signing in to Salesforce failed ({e}); check the SALESFORCE_* settings")
    })?;

    let existing = existing_fields(client).await?;
    for f in &CONNECTOR_FIELDS {
        let full = f.full_name();
        if existing.contains(&field_key(f.object, f.developer_name())) {
            writeln!(out, "field {full} exists")?;
            continue;
        }
        client
            .tooling_create("CustomField", &f.tooling_body())
            .await
            .map_err(|e| failed(&format!("creating field {full}"), &e, CUSTOMIZE_FIX))?;
        summary.fields_created += 1;
        writeln!(out, "created field {full} ({})", f.field_type.summary())?;
    }

    let permission_set = match find_permission_set(client).await? {
        Some(id) => {
            writeln!(out, "permission set {PERMISSION_SET_NAME} exists")?;
            id
        }
        None => {
            let body = json!({
                "Name": PERMISSION_SET_NAME,
                "Label": PERMISSION_SET_LABEL,
                "Description": "Read and edit on the Partner Center referral connector's fields.",
            });
            let id = client
                .create("PermissionSet", &body, &[])
                .await
                .map_err(|e| {
                    failed(
                        &format!("creating permission set {PERMISSION_SET_NAME}"),
                        &e,
                        PERMISSION_SET_FIX,
                    )
                })?;
            summary.permission_set_created = true;
            writeln!(
                out,
                "created permission set {PERMISSION_SET_NAME} ({PERMISSION_SET_LABEL})"
            )?;
            id
        }
    };

    grant_fields(client, &permission_set, &mut summary, out).await?;

    let user = identity.user_id.as_str();
    let soql = format!(
        "SELECT Id FROM PermissionSetAssignment WHERE PermissionSetId = {} AND AssigneeId = {}",
        literal(&permission_set),
        literal(user)
    );
    let assigned = client
        .query(&soql)
        .await
        .map_err(|e| failed("reading permission set assignments", &e, ASSIGN_FIX))?;
    if assigned.is_empty() {
        let body = json!({"PermissionSetId": permission_set, "AssigneeId": user});
        client
            .create("PermissionSetAssignment", &body, &[])
            .await
            .map_err(|e| {
                failed(
                    &format!("assigning {PERMISSION_SET_NAME} to user {user}"),
                    &e,
                    ASSIGN_FIX,
                )
            })?;
        summary.assignment_created = true;
        writeln!(
            out,
            "assigned permission set {PERMISSION_SET_NAME} to user {user}"
        )?;
    } else {
        writeln!(
            out,
            "permission set {PERMISSION_SET_NAME} is assigned to user {user}"
        )?;
    }

    match summary.writes() {
        0 => writeln!(
            out,
            "nothing to change: every field, field permission and the assignment exist"
        )?,
        n => writeln!(out, "Salesforce setup made {n} change(s)")?,
    }
    Ok(summary)
}

/// `(object, DeveloperName)` of the connector fields that exist, lower-cased.
async fn existing_fields(client: &SalesforceClient) -> anyhow::Result<HashSet<(String, String)>> {
    let objects: Vec<&str> = dedup(CONNECTOR_FIELDS.iter().map(|f| f.object));
    let names: Vec<&str> = dedup(CONNECTOR_FIELDS.iter().map(ConnectorField::developer_name));
    let soql = format!(
        "SELECT Id, DeveloperName, TableEnumOrId FROM CustomField WHERE TableEnumOrId IN ({}) \
         AND DeveloperName IN ({})",
        list(&objects),
        list(&names)
    );
    let rows = client
        .tooling_query(&soql)
        .await
        .map_err(|e| failed("reading the custom fields (Tooling API)", &e, CUSTOMIZE_FIX))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(field_key(
                text(r, "TableEnumOrId")?,
                text(r, "DeveloperName")?,
            ))
        })
        .collect())
}

async fn find_permission_set(client: &SalesforceClient) -> anyhow::Result<Option<String>> {
    let soql = format!(
        "SELECT Id, Name FROM PermissionSet WHERE Name = {}",
        literal(PERMISSION_SET_NAME)
    );
    let rows = client
        .query(&soql)
        .await
        .map_err(|e| failed("reading permission sets", &e, PERMISSION_SET_FIX))?;
    Ok(rows.iter().find_map(|r| text(r, "Id").map(str::to_owned)))
}

/// Read and edit on every connector field in the permission set: creates the missing
/// FieldPermissions, fixes those lacking read or edit.
async fn grant_fields(
    client: &SalesforceClient,
    permission_set: &str,
    summary: &mut SetupSummary,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let soql = format!(
        "SELECT Id, Field, PermissionsRead, PermissionsEdit FROM FieldPermissions WHERE \
         ParentId = {}",
        literal(permission_set)
    );
    let rows = client
        .query(&soql)
        .await
        .map_err(|e| failed("reading field permissions", &e, PERMISSION_SET_FIX))?;
    for f in &CONNECTOR_FIELDS {
        let full = f.full_name();
        let row = rows
            .iter()
            .find(|r| text(r, "Field").is_some_and(|x| x.eq_ignore_ascii_case(&full)));
        let flag =
            |r: &Map<String, Value>, k: &str| r.get(k).and_then(Value::as_bool) == Some(true);
        match row {
            Some(r) if flag(r, "PermissionsRead") && flag(r, "PermissionsEdit") => {
                writeln!(
                    out,
                    "field permission {full} (read, edit) in {PERMISSION_SET_NAME} exists"
                )?;
            }
            Some(r) => {
                let id = text(r, "Id").ok_or_else(|| {
                    anyhow::anyhow!(
                        "Salesforce answered a FieldPermissions row of {full} without an Id"
                    )
                })?;
                let had = if flag(r, "PermissionsRead") {
                    "read only"
                } else {
                    "no access"
                };
                let body = json!({"PermissionsRead": true, "PermissionsEdit": true});
                client
                    .update("FieldPermissions", id, &body, &[])
                    .await
                    .map_err(|e| {
                        failed(
                            &format!("granting read and edit on {full}"),
                            &e,
                            PERMISSION_SET_FIX,
                        )
                    })?;
                summary.field_permissions_fixed += 1;
                writeln!(
                    out,
                    "fixed field permission {full} in {PERMISSION_SET_NAME}: read, edit (was {had})"
                )?;
            }
            None => {
                let body = json!({
                    "ParentId": permission_set,
                    "SobjectType": f.object,
                    "Field": full,
                    "PermissionsRead": true,
                    "PermissionsEdit": true,
                });
                client
                    .create("FieldPermissions", &body, &[])
                    .await
                    .map_err(|e| {
                        failed(
                            &format!("granting read and edit on {full}"),
                            &e,
                            PERMISSION_SET_FIX,
                        )
                    })?;
                summary.field_permissions_created += 1;
                writeln!(
                    out,
                    "created field permission {full} (read, edit) in {PERMISSION_SET_NAME}"
                )?;
            }
        }
    }
    Ok(())
}

/// The error of a failed setup step, with the fix: `fix` for refusals, "later" for transient
/// failures.
fn failed(action: &str, error: &SalesforceError, fix: &str) -> anyhow::Error {
    if error.is_transient() {
        anyhow::anyhow!(
            "{action} failed ({error}); Salesforce is busy or the daily API allocation is used up, run `{SETUP_COMMAND}` again later"
        )
    } else {
        anyhow::anyhow!("{action} failed ({error}); {fix}")
    }
}

fn field_key(object: &str, developer_name: &str) -> (String, String) {
    (
        object.to_ascii_lowercase(),
        developer_name.to_ascii_lowercase(),
    )
}

fn text<'a>(row: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    row.get(key).and_then(Value::as_str)
}

fn dedup<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// A SOQL string literal: `'…'` with `\` and `'` escaped.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn list(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| literal(v))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// check

/// Why a check failed and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub problem: String,
    /// What the operator should do.
    pub fix: String,
}

/// One line of `check`: what was checked, and what was found (`Ok(detail)`) or the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (`Salesforce Lead.Partner_Center_Link__c`).
    pub what: String,
    /// The detail of a pass, or the problem and its fix.
    pub result: Result<String, Problem>,
}

impl Finding {
    fn pass(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            result: Ok(detail.into()),
        }
    }

    fn fail(what: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            result: Err(Problem {
                problem: problem.into(),
                fix: fix.into(),
            }),
        }
    }

    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.result.is_ok()
    }
}

pub use super::opportunity::StageRow;

const STAGE_FIX_PLACE: &str =
    "Setup → Object Manager → Opportunity → Fields & Relationships → Stage";

/// Judges the stage table: an active won stage, an active closed stage that is not won, and
/// `new_stage` (where new opportunities start) active and open.
pub fn judge_stages(rows: &[StageRow], new_stage: &str) -> Vec<Finding> {
    let mut rows: Vec<&StageRow> = rows.iter().collect();
    rows.sort_by(|a, b| a.sort_order.total_cmp(&b.sort_order));
    let names = |pick: &dyn Fn(&StageRow) -> bool| -> Vec<&str> {
        rows.iter()
            .filter(|r| pick(r))
            .map(|r| r.api_name.as_str())
            .collect()
    };
    let mut findings = Vec::new();

    let won = names(&|r| r.active && r.won);
    findings.push(if won.is_empty() {
        Finding::fail(
            "Salesforce won stage",
            "no active opportunity stage is Closed/Won",
            format!(
                "activate or add a Closed/Won stage ({STAGE_FIX_PLACE}); won referrals are moved there"
            ),
        )
    } else {
        Finding::pass("Salesforce won stage", won.join(", "))
    });

    let lost = names(&|r| r.active && r.closed && !r.won);
    findings.push(if lost.is_empty() {
        Finding::fail(
            "Salesforce lost stage",
            "no active opportunity stage is Closed and not won",
            format!(
                "activate or add a Closed/Lost stage ({STAGE_FIX_PLACE}); lost referrals are moved there"
            ),
        )
    } else {
        Finding::pass("Salesforce lost stage", lost.join(", "))
    });

    let open = names(&|r| r.active && !r.closed);
    let choose = if open.is_empty() {
        format!("activate an open stage ({STAGE_FIX_PLACE}) and name it in SALESFORCE_NEW_STAGE")
    } else {
        format!(
            "set SALESFORCE_NEW_STAGE to one of the active open stages: {}",
            open.join(", ")
        )
    };
    let what = "Salesforce new-opportunity stage";
    findings.push(match rows.iter().find(|r| r.api_name == new_stage) {
        Some(r) if !r.active => Finding::fail(what, format!("`{new_stage}` is inactive"), choose),
        Some(r) if r.closed => Finding::fail(
            what,
            format!("`{new_stage}` is a closed stage; new opportunities must start open"),
            choose,
        ),
        Some(_) => Finding::pass(what, format!("`{new_stage}` is active and open")),
        None => {
            let near = rows
                .iter()
                .find(|r| r.api_name.eq_ignore_ascii_case(new_stage))
                .map(|r| format!(" (did you mean `{}`?)", r.api_name))
                .unwrap_or_default();
            Finding::fail(
                what,
                format!("`{new_stage}` is not an opportunity stage{near}"),
                choose,
            )
        }
    });
    findings
}

/// Judges one object's describe: every field in `wanted` is visible, and the connector's
/// fields are editable (the referral id also an External ID).
pub fn judge_fields(object: &str, describe: &Value, wanted: &[String]) -> Vec<Finding> {
    let fields: Vec<&Map<String, Value>> = describe
        .get("fields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    let find = |name: &str| {
        fields
            .iter()
            .find(|f| text(f, "name").is_some_and(|n| n.eq_ignore_ascii_case(name)))
    };
    let mut findings = Vec::new();
    let mut problems = 0;
    for name in wanted {
        let what = format!("Salesforce {object}.{name}");
        let connector = is_connector_field(object, name);
        let Some(f) = find(name) else {
            problems += 1;
            let fix = if connector {
                format!(
                    "run `{SETUP_COMMAND}`, or assign the {PERMISSION_SET_NAME} permission set to the integration user"
                )
            } else {
                format!(
                    "create {object}.{name} or remove it from the mapping, and give the integration user read and edit on it (a permission set's field permissions)"
                )
            };
            findings.push(Finding::fail(
                what,
                format!(
                    "the integration user cannot see {object}.{name}: it does not exist or no permission set grants read on it"
                ),
                fix,
            ));
            continue;
        };
        let flag = |k: &str| f.get(k).and_then(Value::as_bool) == Some(true);
        if connector && !flag("updateable") {
            problems += 1;
            findings.push(Finding::fail(
                what,
                format!("{object}.{name} is read-only for the integration user"),
                format!(
                    "run `{SETUP_COMMAND}` (it grants edit in the {PERMISSION_SET_NAME} permission set)"
                ),
            ));
        } else if name.eq_ignore_ascii_case(REFERRAL_ID_FIELD) && !flag("externalId") {
            problems += 1;
            findings.push(Finding::fail(
                what,
                format!(
                    "{object}.{name} is not an External ID, so records cannot be upserted by referral id"
                ),
                format!(
                    "edit the field in Setup → Object Manager → {object} and tick External ID and Unique"
                ),
            ));
        }
    }
    if problems == 0 {
        findings.push(Finding::pass(
            format!("Salesforce {object} fields"),
            format!(
                "the integration user sees all {} field(s) the mapping uses",
                wanted.len()
            ),
        ));
    }
    findings
}

/// The Salesforce part of `check`, without writing anything: sign-in; for each
/// `(object, fields the mapping reads or writes)`, that the integration user sees each field;
/// and the opportunity stages ([`judge_stages`]).
#[tracing::instrument(skip_all)]
pub async fn verify(
    client: &SalesforceClient,
    fields: &[(&str, Vec<String>)],
    new_stage: &str,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let sign_in = "Salesforce sign-in";
    match client.token_identity().await {
        Ok(identity) => findings.push(Finding::pass(
            sign_in,
            format!(
                "signed in as user {} of org {}",
                identity.user_id, identity.org_id
            ),
        )),
        Err(e) => {
            findings.push(Finding::fail(
                sign_in,
                e.to_string(),
                "check SALESFORCE_URL, SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET (or \
                 SALESFORCE_USERNAME and SALESFORCE_PRIVATE_KEY) and the External Client App's \
                 Run As user",
            ));
            return findings;
        }
    }
    for (object, wanted) in fields {
        match client.describe(object).await {
            Ok(describe) => findings.extend(judge_fields(object, &describe, wanted)),
            Err(e) => findings.push(Finding::fail(
                format!("Salesforce {object}"),
                format!("describing {object} failed ({e})"),
                format!("give the integration user Read, Create and Edit on {object}"),
            )),
        }
    }
    let soql = "SELECT ApiName, IsActive, IsClosed, IsWon, SortOrder FROM OpportunityStage";
    match client.query(soql).await {
        Ok(records) => {
            let rows: Vec<StageRow> = records.iter().filter_map(StageRow::from_record).collect();
            findings.extend(judge_stages(&rows, new_stage));
        }
        Err(e) => findings.push(Finding::fail(
            "Salesforce opportunity stages",
            format!("reading OpportunityStage failed ({e})"),
            "give the integration user Read on opportunity stages (View Setup and Configuration)",
        )),
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, active: bool, closed: bool, won: bool, order: f64) -> StageRow {
        StageRow {
            api_name: name.to_owned(),
            active,
            closed,
            won,
            sort_order: order,
        }
    }

    fn default_stages() -> Vec<StageRow> {
        vec![
            stage("Prospecting", true, false, false, 1.0),
            stage("Qualification", true, false, false, 2.0),
            stage("Old Stage", false, false, false, 3.0),
            stage("Closed Won", true, true, true, 4.0),
            stage("Closed Lost", true, true, false, 5.0),
        ]
    }

    /// The problem of the finding about `what`, or `None` when it passed.
    fn problem<'a>(findings: &'a [Finding], what: &str) -> Option<&'a str> {
        let f = findings
            .iter()
            .find(|f| f.what == what)
            .unwrap_or_else(|| panic!("no finding {what}: {findings:?}"));
        f.result.as_ref().err().map(|p| p.problem.as_str())
    }

    /// (rows, new stage, failing findings with a word of their problem)
    type StageCase = (
        Vec<StageRow>,
        &'static str,
        Vec<(&'static str, &'static str)>,
    );

    /// (fields, the failing finding with words of its problem and its fix)
    type FieldCase = (
        &'static [&'static str],
        Option<(&'static str, &'static str, &'static str)>,
    );

    #[test]
    fn stage_table() {
        let without = |name: &str| -> Vec<StageRow> {
            default_stages()
                .into_iter()
                .filter(|s| s.api_name != name)
                .collect()
        };
        let deactivated = |name: &str| -> Vec<StageRow> {
            default_stages()
                .into_iter()
                .map(|mut s| {
                    if s.api_name == name {
                        s.active = false;
                    }
                    s
                })
                .collect()
        };
        let cases: Vec<StageCase> = vec![
            (default_stages(), "Prospecting", vec![]),
            (default_stages(), "Qualification", vec![]),
            (
                without("Closed Won"),
                "Prospecting",
                vec![("Salesforce won stage", "Closed/Won")],
            ),
            (
                deactivated("Closed Won"),
                "Prospecting",
                vec![("Salesforce won stage", "Closed/Won")],
            ),
            (
                deactivated("Closed Lost"),
                "Prospecting",
                vec![("Salesforce lost stage", "not won")],
            ),
            (
                default_stages(),
                "Old Stage",
                vec![("Salesforce new-opportunity stage", "inactive")],
            ),
            (
                default_stages(),
                "Closed Lost",
                vec![("Salesforce new-opportunity stage", "closed")],
            ),
            (
                default_stages(),
                "prospecting",
                vec![(
                    "Salesforce new-opportunity stage",
                    "did you mean `Prospecting`",
                )],
            ),
            (
                default_stages(),
                "Discovery",
                vec![(
                    "Salesforce new-opportunity stage",
                    "not an opportunity stage",
                )],
            ),
            (
                vec![],
                "Prospecting",
                vec![
                    ("Salesforce won stage", "Closed/Won"),
                    ("Salesforce lost stage", "not won"),
                    (
                        "Salesforce new-opportunity stage",
                        "not an opportunity stage",
                    ),
                ],
            ),
        ];
        for (rows, new_stage, failing) in cases {
            let findings = judge_stages(&rows, new_stage);
            assert_eq!(findings.len(), 3, "{findings:?}");
            for f in &findings {
                match failing.iter().find(|(what, _)| *what == f.what) {
                    Some((_, word)) => {
                        let p = problem(&findings, &f.what)
                            .unwrap_or_else(|| panic!("{new_stage}: {} passed", f.what));
                        assert!(p.contains(word), "{new_stage}: {p}");
                    }
                    None => assert!(f.passed(), "{new_stage}: {f:?}"),
                }
            }
        }
    }

    #[test]
    fn the_new_stage_fix_lists_the_open_stages_in_order() {
        let findings = judge_stages(&default_stages(), "Discovery");
        let Err(p) = &findings[2].result else {
            panic!("{findings:?}")
        };
        assert!(p.fix.ends_with("Prospecting, Qualification"), "{}", p.fix);
    }

    #[test]
    fn stage_rows_read_soql_records() {
        let record = |v: Value| v.as_object().cloned().unwrap();
        let row = StageRow::from_record(&record(json!({"ApiName": "Closed Won", "IsActive": true,
            "IsClosed": true, "IsWon": true, "SortOrder": 9})))
        .unwrap();
        assert_eq!(row, stage("Closed Won", true, true, true, 9.0));
        assert!(StageRow::from_record(&record(json!({"IsActive": true}))).is_none());
    }

    #[test]
    fn field_table() {
        let describe = json!({"fields": [
            {"name": "LastName", "updateable": true},
            {"name": "IsConverted", "updateable": false},
            {"name": "Partner_Center_Referral_Id__c", "updateable": true, "externalId": true},
            {"name": "Partner_Center_Link__c", "updateable": false},
            {"name": "Partner_Center_Sync_Status__c", "updateable": true},
        ]});
        let judge = |names: &[&str]| {
            let wanted: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            judge_fields("Lead", &describe, &wanted)
        };
        let cases: &[FieldCase] = &[
            (&["LastName", "IsConverted", REFERRAL_ID_FIELD], None),
            (
                &["LastName", "Partner_Center_Audit__c"],
                Some((
                    "Salesforce Lead.Partner_Center_Audit__c",
                    "cannot see",
                    SETUP_COMMAND,
                )),
            ),
            (
                &["Custom__c"],
                Some(("Salesforce Lead.Custom__c", "cannot see", "mapping")),
            ),
            (
                &["Partner_Center_Link__c"],
                Some((
                    "Salesforce Lead.Partner_Center_Link__c",
                    "read-only",
                    "edit",
                )),
            ),
        ];
        for (names, failing) in cases {
            let findings = judge(names);
            match failing {
                None => {
                    assert_eq!(findings.len(), 1, "{findings:?}");
                    assert!(findings[0].passed(), "{findings:?}");
                }
                Some((what, problem_word, fix_word)) => {
                    assert_eq!(findings.len(), 1, "{findings:?}");
                    assert_eq!(findings[0].what, *what);
                    let Err(p) = &findings[0].result else {
                        panic!("{findings:?}")
                    };
                    assert!(p.problem.contains(problem_word), "{p:?}");
                    assert!(p.fix.contains(fix_word), "{p:?}");
                }
            }
        }
        let plain = json!({"fields": [{"name": REFERRAL_ID_FIELD, "updateable": true}]});
        let findings = judge_fields("Lead", &plain, &[REFERRAL_ID_FIELD.to_owned()]);
        assert!(
            matches!(&findings[0].result, Err(p) if p.problem.contains("External ID")),
            "{findings:?}"
        );
    }

    #[test]
    fn the_picklist_holds_the_help_codes_restricted() {
        let help = CONNECTOR_FIELDS
            .iter()
            .find(|f| f.name == "How_can_Microsoft_help__c")
            .unwrap();
        let meta = help.metadata();
        assert_eq!(meta["type"], "Picklist");
        assert_eq!(meta["valueSet"]["restricted"], true);
        let codes: Vec<&str> = meta["valueSet"]["valueSetDefinition"]["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["fullName"].as_str().unwrap())
            .collect();
        let expected: Vec<&str> = HELP_CHOICES.iter().map(|(c, _, _)| *c).collect();
        assert_eq!(codes, expected);
    }

    #[test]
    fn the_referral_id_is_an_external_unique_case_insensitive_key_on_both_objects() {
        for object in ["Lead", "Opportunity"] {
            let f = CONNECTOR_FIELDS
                .iter()
                .find(|f| f.object == object && f.name == REFERRAL_ID_FIELD)
                .unwrap();
            let body = f.tooling_body();
            assert_eq!(body["FullName"], format!("{object}.{REFERRAL_ID_FIELD}"));
            let meta = &body["Metadata"];
            assert_eq!(meta["type"], "Text");
            assert_eq!(meta["length"], 36);
            assert_eq!(meta["externalId"], true);
            assert_eq!(meta["unique"], true);
            assert_eq!(meta["caseSensitive"], false);
        }
    }

    #[test]
    fn field_metadata_follows_the_tooling_shapes() {
        for f in &CONNECTOR_FIELDS {
            let meta = f.metadata();
            assert_eq!(meta["label"], f.label, "{}", f.name);
            assert!(f.name.ends_with("__c") && !f.developer_name().ends_with("__c"));
            match f.field_type {
                FieldType::Text { length, .. } => {
                    assert!((1..=255).contains(&length), "{}", f.name);
                    assert_eq!(meta["length"], length);
                }
                FieldType::LongTextArea { length } => {
                    assert_eq!(meta["length"], length);
                    assert!(meta["visibleLines"].as_u64().is_some(), "{}", f.name);
                }
                FieldType::Checkbox { default } => {
                    assert_eq!(meta["defaultValue"], default.to_string());
                }
                FieldType::Url | FieldType::HelpPicklist => {}
            }
        }
        let names: HashSet<String> = CONNECTOR_FIELDS.iter().map(|f| f.full_name()).collect();
        assert_eq!(names.len(), CONNECTOR_FIELDS.len(), "no field twice");
    }

    #[test]
    fn soql_literals_are_escaped() {
        assert_eq!(literal("a'b\\c"), r"'a\'b\\c'");
        assert_eq!(list(&["Lead", "Opportunity"]), "'Lead', 'Opportunity'");
    }
}
