//! The mapping file (`REFERRAL_MAPPING_FILE`): changes to the adapters' default tables, per
//! table. The top-level `columns` (and `replaceDefaults`) mean the lead table, as before;
//! `tables.<lead|opportunity>` holds `columns`, `replaceDefaults` and `partnerCenterColumns`.
//! Every problem names the JSON path of the entry and what is expected.

use std::path::Path;

use serde_json::{Map, Value};

use super::{
    Mappings, TableMapping,
    rules::{ColumnKind, ColumnRule, Direction, FieldPath, Source},
};
use crate::crm::RecordKind;

/// A mapping file problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file cannot be read.
    #[error("cannot read the file: {0}")]
    Read(String),
    /// The file is not JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// One entry is wrong.
    #[error("{field}: {reason}")]
    Field {
        /// JSON path of the entry, e.g. `columns.subject.direction`.
        field: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

/// Fields the connector itself manages on the referral; a mapping may not write them.
const PROTECTED_REFERRAL_FIELDS: [&str; 10] = [
    "id",
    "status",
    "substatus",
    "statusreason",
    "etag",
    "externalreferenceid",
    "createddatetime",
    "updateddatetime",
    "direction",
    "engagementid",
];

fn field_error(field: &str, reason: impl Into<String>) -> MappingError {
    MappingError::Field {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl Mappings {
    /// Reads a mapping file over the adapter's defaults.
    pub fn from_file(
        path: &Path,
        defaults: impl Fn(RecordKind) -> TableMapping,
    ) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|e| MappingError::Read(e.to_string()))?;
        Self::from_json_text(&text, defaults)
    }

    /// Parses mapping file text over the adapter's defaults (see the module comment).
    pub fn from_json_text(
        text: &str,
        defaults: impl Fn(RecordKind) -> TableMapping,
    ) -> Result<Self, MappingError> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| MappingError::Json(e.to_string()))?;
        let Value::Object(top) = doc else {
            return Err(field_error(
                "(top level)",
                "must be an object with a \"columns\" or \"tables\" object",
            ));
        };
        for key in top.keys() {
            if !matches!(
                key.as_str(),
                "columns" | "replaceDefaults" | "tables" | "$schema" | "description"
            ) {
                return Err(field_error(
                    key,
                    "unknown property (expected \"columns\", \"replaceDefaults\" or \"tables\")",
                ));
            }
        }
        let mut mappings = Self::defaults(&defaults);
        let tables = match top.get("tables") {
            None => Map::new(),
            Some(Value::Object(tables)) => tables.clone(),
            Some(_) => {
                return Err(field_error(
                    "tables",
                    "must be an object like {\"opportunity\": {\"columns\": {…}}}",
                ));
            }
        };
        if top.contains_key("columns") || top.contains_key("replaceDefaults") || tables.is_empty() {
            if tables.contains_key("lead") {
                return Err(field_error(
                    "tables.lead",
                    "the top-level \"columns\" already mean the lead table; give lead columns in one place",
                ));
            }
            apply_section(&mut mappings.lead, &top, "", true)?;
        }
        for (name, section) in &tables {
            let kind = match name.to_ascii_lowercase().as_str() {
                "lead" => RecordKind::Lead,
                "opportunity" => RecordKind::Opportunity,
                _ => {
                    return Err(field_error(
                        &format!("tables.{name}"),
                        "unknown table (expected \"lead\" or \"opportunity\")",
                    ));
                }
            };
            let here = format!("tables.{name}");
            let Value::Object(section) = section else {
                return Err(field_error(
                    &here,
                    "must be an object with a \"columns\" object",
                ));
            };
            for key in section.keys() {
                if !matches!(
                    key.as_str(),
                    "columns" | "replaceDefaults" | "partnerCenterColumns"
                ) {
                    return Err(field_error(
                        &format!("{here}.{key}"),
                        "unknown property (expected \"columns\", \"replaceDefaults\" or \"partnerCenterColumns\")",
                    ));
                }
            }
            apply_section(
                mappings.table_mut(kind),
                section,
                &format!("{here}."),
                false,
            )?;
        }
        Ok(mappings)
    }
}

/// Applies one table's section: `columns` (required at the top level), `replaceDefaults`,
/// `partnerCenterColumns`. `prefix` is `""` for the top level, `tables.<name>.` otherwise.
fn apply_section(
    table: &mut TableMapping,
    section: &Map<String, Value>,
    prefix: &str,
    columns_required: bool,
) -> Result<(), MappingError> {
    let replace = match section.get("replaceDefaults") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(field_error(
                &format!("{prefix}replaceDefaults"),
                "must be true or false",
            ));
        }
    };
    let empty = Map::new();
    let columns = match section.get("columns") {
        Some(Value::Object(columns)) => columns,
        None if !columns_required => &empty,
        _ => {
            return Err(field_error(
                &format!("{prefix}columns"),
                format!("must be an object of {} column → rule", table.kind),
            ));
        }
    };
    if replace {
        table.rules.clear();
    }
    for (column, rule) in columns {
        let here = format!("{prefix}columns.{column}");
        if !table.names.accepts(column) {
            return Err(field_error(
                &here,
                format!(
                    "is not {} of the {} table",
                    table.names.example(),
                    table.kind
                ),
            ));
        }
        if table.protected.contains(&column.as_str())
            || table.partner_center.names().contains(&column.as_str())
        {
            return Err(field_error(
                &here,
                "is managed by the connector and cannot be mapped",
            ));
        }
        table.rules.retain(|r| r.column != *column);
        if rule.is_null() {
            continue;
        }
        let parsed = parse_rule(table, column, rule, &here)?;
        table.rules.push(parsed);
    }
    match section.get("partnerCenterColumns") {
        None => {}
        Some(Value::Object(names)) => {
            let here = format!("{prefix}partnerCenterColumns");
            for (name, value) in names {
                let mut known = false;
                for (slot_name, slot) in table.partner_center.slots_mut() {
                    if slot_name != name {
                        continue;
                    }
                    known = true;
                    *slot = match value {
                        Value::Null => None,
                        Value::String(s) if table.names.accepts(s) => Some(s.clone()),
                        _ => {
                            return Err(field_error(
                                &format!("{here}.{name}"),
                                format!(
                                    "must be {} or null to leave the column out",
                                    table.names.example()
                                ),
                            ));
                        }
                    };
                }
                if !known {
                    return Err(field_error(
                        &format!("{here}.{name}"),
                        "unknown column (expected link, syncWithPartnerCenter, microsoftHelp, solutions, syncStatus or audit)",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(field_error(
                &format!("{prefix}partnerCenterColumns"),
                "must be an object like {\"link\": \"new_partnercenterlink\"}",
            ));
        }
    }
    if let Some(rule) = table
        .rules
        .iter()
        .find(|r| table.partner_center.names().contains(&r.column.as_str()))
    {
        return Err(field_error(
            &format!("{prefix}columns.{}", rule.column),
            "is a Partner Center column of the connector and cannot be mapped",
        ));
    }
    validate(table, &format!("{prefix}columns."))
}

/// Checks rules against each other: no ping-pong between a field read and written.
fn validate(table: &TableMapping, prefix: &str) -> Result<(), MappingError> {
    // Fields read on every sync; a field read only when the record is created cannot loop.
    let read: Vec<&FieldPath> = table
        .rules
        .iter()
        .filter(|r| r.direction == Direction::PcToCrm)
        .flat_map(|r| match &r.source {
            Source::Fields(paths) => paths.iter().collect(),
            Source::Constant(_) => Vec::new(),
        })
        .collect();
    for rule in table.rules.iter().filter(|r| r.direction.writes_referral()) {
        let here = format!("{prefix}{}.from", rule.column);
        let Source::Fields(paths) = &rule.source else {
            return Err(MappingError::Field {
                field: format!("{prefix}{}", rule.column),
                reason:
                    "a crm-to-pc rule needs \"from\" (the referral field to write), not \"value\""
                        .into(),
            });
        };
        let [path] = paths.as_slice() else {
            return Err(MappingError::Field {
                field: here,
                reason: "a crm-to-pc rule writes exactly one referral field".into(),
            });
        };
        if path.pointer().is_none() {
            return Err(MappingError::Field {
                field: here,
                reason: format!("`{path}`: a crm-to-pc field cannot contain an array index"),
            });
        }
        if PROTECTED_REFERRAL_FIELDS.contains(&path.first_key().to_ascii_lowercase().as_str()) {
            return Err(MappingError::Field {
                field: here,
                reason: format!(
                    "`{path}` is managed by the connector and cannot be written by a mapping"
                ),
            });
        }
        if read.iter().any(|p| p.text.eq_ignore_ascii_case(&path.text)) {
            return Err(MappingError::Field {
                field: here,
                reason: format!(
                    "`{path}` is also read into the record by another rule; writing it back would loop"
                ),
            });
        }
    }
    Ok(())
}

fn parse_rule(
    table: &TableMapping,
    column: &str,
    rule: &Value,
    here: &str,
) -> Result<ColumnRule, MappingError> {
    let err = |sub: &str, reason: String| MappingError::Field {
        field: if sub.is_empty() {
            here.to_owned()
        } else {
            format!("{here}.{sub}")
        },
        reason,
    };
    let Value::Object(rule) = rule else {
        return Err(err(
            "",
            "must be an object like {\"from\": \"details.notes\"} or null to drop the column"
                .into(),
        ));
    };
    for key in rule.keys() {
        if !matches!(
            key.as_str(),
            "from" | "value" | "direction" | "type" | "maxLength"
        ) {
            return Err(err(
                key,
                "unknown property (expected from, value, direction, type, maxLength)".into(),
            ));
        }
    }
    let direction = match rule.get("direction") {
        None => Direction::PcToCrm,
        Some(Value::String(s)) => Direction::parse(s).ok_or_else(|| {
            err(
                "direction",
                format!("`{s}` is not one of {}", Direction::NAMES),
            )
        })?,
        Some(_) => {
            return Err(err(
                "direction",
                format!("must be one of {}", Direction::NAMES),
            ));
        }
    };
    let max = match rule.get("maxLength") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| (1..=1_048_576).contains(n))
                .ok_or_else(|| {
                    err(
                        "maxLength",
                        "must be a whole number from 1 to 1048576".into(),
                    )
                })? as usize,
        ),
    };
    let kind = match rule.get("type") {
        None => match (table.kind_of(column), max) {
            (ColumnKind::Text { .. }, Some(max)) => ColumnKind::Text { max },
            (kind, _) => kind,
        },
        Some(Value::String(s)) => ColumnKind::parse(s, max)
            .ok_or_else(|| err("type", format!("`{s}` is not one of {}", ColumnKind::NAMES)))?,
        Some(_) => return Err(err("type", format!("must be one of {}", ColumnKind::NAMES))),
    };
    let source = match (rule.get("from"), rule.get("value")) {
        (Some(_), Some(_)) => {
            return Err(err(
                "",
                "give either \"from\" or \"value\", not both".into(),
            ));
        }
        (None, None) => {
            return Err(err(
                "",
                "needs \"from\" (a referral field) or \"value\" (a constant)".into(),
            ));
        }
        (None, Some(value)) => Source::Constant(value.clone()),
        (Some(Value::String(path)), None) => Source::Fields(vec![
            FieldPath::parse(path).map_err(|reason| err("from", reason))?,
        ]),
        (Some(Value::Array(paths)), None) if !paths.is_empty() => {
            let mut parsed = Vec::new();
            for (i, p) in paths.iter().enumerate() {
                let text = p
                    .as_str()
                    .ok_or_else(|| err(&format!("from[{i}]"), "must be a string".into()))?;
                parsed.push(
                    FieldPath::parse(text).map_err(|reason| err(&format!("from[{i}]"), reason))?,
                );
            }
            Source::Fields(parsed)
        }
        (Some(_), None) => {
            return Err(err(
                "from",
                "must be a field path string or a non-empty array of them".into(),
            ));
        }
    };
    let rule = ColumnRule {
        column: column.to_owned(),
        source,
        direction,
        kind,
    };
    if let Source::Constant(value) = &rule.source {
        rule.convert_value(value, "value")
            .map_err(|e| err("value", e.reason))?;
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::dataverse::default_mapping;

    fn parse(text: &str) -> Result<Mappings, MappingError> {
        Mappings::from_json_text(text, default_mapping)
    }

    #[test]
    fn each_crm_checks_names_as_it_spells_them() {
        let salesforce =
            |text: &str| Mappings::from_json_text(text, crate::crm::salesforce::default_mapping);
        let m = salesforce(
            r#"{"tables": {"Lead": {"columns": {"Industry": {"from": "details.notes"}}},
                           "Opportunity": {"columns": {"Next_Step__c": {"from": "details.notes"}}}}}"#,
        )
        .unwrap();
        assert!(m.lead.rules().iter().any(|r| r.column == "Industry"));
        assert!(
            m.opportunity
                .rules()
                .iter()
                .any(|r| r.column == "Next_Step__c")
        );
        let cases = [
            (
                r#"{"tables": {"Lead": {"columns": {"Bad Name": null}}}}"#,
                "field API name",
            ),
            (
                r#"{"tables": {"Lead": {"columns": {"Partner_Center_Referral_Id__c": {"from": "id"}}}}}"#,
                "managed by the connector",
            ),
        ];
        for (text, expected) in cases {
            let err = salesforce(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = parse(r#"{"columns": {"BillingCity": {"from": "id"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("logical name"), "{err}");
    }

    #[test]
    fn table_sections_change_each_table_and_the_top_level_still_means_lead() {
        let m = parse(
            r#"{"columns": {"telephone1": null},
                "tables": {"opportunity": {
                    "columns": {"description": {"from": "details.notes"}, "name": null},
                    "partnerCenterColumns": {"link": "cr5a1_link", "solutions": null}}}}"#,
        )
        .unwrap();
        assert!(!m.lead.rules.iter().any(|r| r.column == "telephone1"));
        assert!(m.lead.rules.iter().any(|r| r.column == "subject"));
        let o = &m.opportunity;
        let description = o.rules.iter().find(|r| r.column == "description").unwrap();
        assert_eq!(description.direction, Direction::PcToCrm);
        assert!(!o.rules.iter().any(|r| r.column == "name"));
        assert_eq!(o.partner_center.link.as_deref(), Some("cr5a1_link"));
        assert_eq!(o.partner_center.solutions, None);
        assert_eq!(
            o.partner_center.audit.as_deref(),
            Some("new_partnercenteraudit")
        );
        let only_tables =
            parse(r#"{"tables": {"lead": {"replaceDefaults": true, "columns": {"subject": {"from": "name"}}}}}"#)
                .unwrap();
        assert_eq!(only_tables.lead.rules.len(), 1);
        assert_eq!(
            only_tables.opportunity,
            Mappings::defaults(default_mapping).opportunity
        );
    }

    #[test]
    fn bad_table_sections_name_the_field() {
        let cases = [
            (r#"{"tables": []}"#, "tables"),
            (r#"{"tables": {"account": {}}}"#, "tables.account"),
            (r#"{"tables": {"opportunity": []}}"#, "tables.opportunity"),
            (
                r#"{"tables": {"opportunity": {"colums": {}}}}"#,
                "tables.opportunity.colums",
            ),
            (
                r#"{"tables": {"opportunity": {"columns": {"statecode": {"value": 1}}}}}"#,
                "tables.opportunity.columns.statecode",
            ),
            (
                r#"{"tables": {"opportunity": {"columns": {"customerid": {"from": "x"}}}}}"#,
                "tables.opportunity.columns.customerid",
            ),
            (
                r#"{"tables": {"opportunity": {"columns": {"new_partnercenteraudit": {"from": "x"}}}}}"#,
                "tables.opportunity.columns.new_partnercenteraudit",
            ),
            (
                r#"{"tables": {"opportunity": {"columns": {"name": {"from": "name", "direction": "up"}}}}}"#,
                "tables.opportunity.columns.name.direction",
            ),
            (
                r#"{"tables": {"opportunity": {"partnerCenterColumns": {"link": "Bad-Name"}}}}"#,
                "tables.opportunity.partnerCenterColumns.link",
            ),
            (
                r#"{"tables": {"opportunity": {"partnerCenterColumns": {"notes": "new_x"}}}}"#,
                "tables.opportunity.partnerCenterColumns.notes",
            ),
            (
                r#"{"columns": {}, "tables": {"lead": {"columns": {}}}}"#,
                "tables.lead",
            ),
        ];
        for (text, field) in cases {
            match parse(text) {
                Err(MappingError::Field { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
