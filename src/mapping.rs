//! Referral ↔ lead mapping: the default column table, the optional mapping file, and the pure
//! planning functions that decide what (if anything) to write to Dataverse and back to Partner
//! Center. Nothing here does I/O or reads the clock.

use std::{fmt, path::Path};

use serde_json::{Map, Value};

use crate::domain::{
    Lead, LeadState, Referral, ReferralStatus,
    referral::{lookup, lookup_entry},
};

/// Which way a column flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Partner Center → CRM on every sync (`"pc-to-crm"`, the default).
    PcToCrm,
    /// Partner Center → CRM only when the lead is created (`"on-create"`).
    OnCreate,
    /// CRM → Partner Center: the lead column is written into the referral field (`"crm-to-pc"`).
    CrmToPc,
}

impl Direction {
    const NAMES: &'static str = "\"pc-to-crm\", \"on-create\" or \"crm-to-pc\"";

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pc-to-crm" => Some(Self::PcToCrm),
            "on-create" => Some(Self::OnCreate),
            "crm-to-pc" => Some(Self::CrmToPc),
            _ => None,
        }
    }

    /// The file spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::PcToCrm => "pc-to-crm",
            Self::OnCreate => "on-create",
            Self::CrmToPc => "crm-to-pc",
        }
    }
}

/// The Dataverse type of a column, which decides how a referral value is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Single line of text or memo, truncated to `max` characters.
    Text {
        /// Maximum length in characters.
        max: usize,
    },
    /// Floating point number.
    Number,
    /// Currency: rounded to 2 decimals, as Dataverse stores it.
    Money,
    /// Whole number or choice (option set value).
    Integer,
    /// Date only (`YYYY-MM-DD`).
    Date,
    /// Yes/No.
    Boolean,
}

impl ColumnKind {
    const NAMES: &'static str =
        "\"text\", \"number\", \"money\", \"integer\", \"choice\", \"date\" or \"boolean\"";

    fn parse(raw: &str, max: Option<usize>) -> Option<Self> {
        match raw {
            "text" => Some(Self::Text {
                max: max.unwrap_or(4000),
            }),
            "number" => Some(Self::Number),
            "money" => Some(Self::Money),
            "integer" | "choice" => Some(Self::Integer),
            "date" => Some(Self::Date),
            "boolean" => Some(Self::Boolean),
            _ => None,
        }
    }

    /// Known lead columns and their types; custom columns default to text.
    fn for_lead_column(column: &str) -> Self {
        match column {
            "subject" => Self::Text { max: 300 },
            "firstname" | "lastname" | "telephone1" | "telephone2" | "address1_stateorprovince" => {
                Self::Text { max: 50 }
            }
            "companyname" | "emailaddress1" | "jobtitle" | "websiteurl" => Self::Text { max: 100 },
            "mobilephone" | "address1_postalcode" => Self::Text { max: 20 },
            "address1_line1" | "address1_line2" | "address1_line3" => Self::Text { max: 250 },
            "address1_city" | "address1_country" => Self::Text { max: 80 },
            "description" => Self::Text { max: 2000 },
            "estimatedamount" | "budgetamount" | "revenue" => Self::Money,
            "estimatedvalue" => Self::Number,
            "estimatedclosedate" => Self::Date,
            "leadsourcecode"
            | "leadqualitycode"
            | "numberofemployees"
            | "industrycode"
            | "preferredcontactmethodcode" => Self::Integer,
            _ => Self::Text { max: 4000 },
        }
    }
}

/// A path into the referral document: `customerProfile.team[0].firstName`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl FieldPath {
    /// Parses `a.b[0].c`; keys are letters, digits and `_`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        for part in text.split('.') {
            let (key, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`{text}` is not a field path like customerProfile.team[0].email"
                ));
            }
            segments.push(Segment::Key(key.to_owned()));
            while !rest.is_empty() {
                let close = rest
                    .find(']')
                    .ok_or_else(|| format!("`{text}` has an unclosed ["))?;
                let index = rest[1..close]
                    .parse::<usize>()
                    .map_err(|_| format!("`{text}` has a non-numeric index"))?;
                segments.push(Segment::Index(index));
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(format!("`{text}` is not a field path"));
                }
            }
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The value at this path; keys match case-insensitively.
    pub fn get<'a>(&self, document: &'a Map<String, Value>) -> Option<&'a Value> {
        let mut current: Option<&Value> = None;
        for (i, segment) in self.segments.iter().enumerate() {
            current = match (i, segment, current) {
                (0, Segment::Key(k), _) => lookup(document, k),
                (_, Segment::Key(k), Some(Value::Object(o))) => lookup(o, k),
                (_, Segment::Index(n), Some(Value::Array(a))) => a.get(*n),
                _ => None,
            };
            current?;
        }
        current
    }

    /// The RFC 6901 pointer, when the path has no array index.
    pub fn pointer(&self) -> Option<String> {
        Some(self.keys()?.iter().map(|k| format!("/{k}")).collect())
    }

    /// The keys of the path, when it has no array index.
    fn keys(&self) -> Option<Vec<&str>> {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect()
    }

    fn first_key(&self) -> &str {
        match self.segments.first() {
            Some(Segment::Key(k)) => k,
            _ => "",
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The first of these referral fields that has a value.
    Fields(Vec<FieldPath>),
    /// A constant (e.g. `leadsourcecode` = 4, Partner).
    Constant(Value),
}

/// One mapped column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnRule {
    /// Lead column logical name.
    pub column: String,
    /// Referral field(s) or constant.
    pub source: Source,
    /// Flow direction.
    pub direction: Direction,
    /// Column type.
    pub kind: ColumnKind,
}

/// The whole mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    rules: Vec<ColumnRule>,
    accept_new: bool,
}

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

/// A referral value that cannot be converted for its column: a permanent failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column} from {field}: {reason}")]
pub struct MapError {
    /// Lead column.
    pub column: String,
    /// Referral field.
    pub field: String,
    /// Why.
    pub reason: String,
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

/// Lead columns the connector manages; a mapping may not write them.
const PROTECTED_LEAD_COLUMNS: [&str; 5] = [
    "leadid",
    "statecode",
    "statuscode",
    "fullname",
    "versionnumber",
];

impl Default for Mapping {
    fn default() -> Self {
        let team = "customerProfile.team[0]";
        let address = "customerProfile.address";
        let rows: Vec<(&str, Vec<String>)> = vec![
            (
                "subject",
                vec!["name".into(), "customerProfile.name".into()],
            ),
            ("companyname", vec!["customerProfile.name".into()]),
            ("firstname", vec![format!("{team}.firstName")]),
            (
                "lastname",
                vec![format!("{team}.lastName"), "customerProfile.name".into()],
            ),
            ("emailaddress1", vec![format!("{team}.email")]),
            ("telephone1", vec![format!("{team}.phoneNumber")]),
            ("address1_line1", vec![format!("{address}.addressLine1")]),
            ("address1_line2", vec![format!("{address}.addressLine2")]),
            ("address1_city", vec![format!("{address}.city")]),
            ("address1_stateorprovince", vec![format!("{address}.state")]),
            ("address1_postalcode", vec![format!("{address}.postalCode")]),
            ("address1_country", vec![format!("{address}.country")]),
            ("description", vec!["details.notes".into()]),
            ("estimatedamount", vec!["details.dealValue".into()]),
            ("estimatedclosedate", vec!["details.closingDateTime".into()]),
        ];
        let mut rules: Vec<ColumnRule> = rows
            .into_iter()
            .map(|(column, paths)| ColumnRule {
                column: column.to_owned(),
                source: Source::Fields(
                    paths
                        .iter()
                        .filter_map(|p| FieldPath::parse(p).ok())
                        .collect(),
                ),
                direction: Direction::PcToCrm,
                kind: ColumnKind::for_lead_column(column),
            })
            .collect();
        rules.push(ColumnRule {
            column: "leadsourcecode".to_owned(),
            source: Source::Constant(Value::from(4)),
            direction: Direction::OnCreate,
            kind: ColumnKind::Integer,
        });
        Self {
            rules,
            accept_new: true,
        }
    }
}

impl Mapping {
    /// Whether a new incoming referral is accepted once its lead exists
    /// (`REFERRAL_ACCEPT_NEW`, default true).
    pub fn set_accept_new(&mut self, accept_new: bool) {
        self.accept_new = accept_new;
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[ColumnRule] {
        &self.rules
    }

    /// Reads a mapping file: the default mapping changed by the file's `columns`, or replaced
    /// when `"replaceDefaults": true`.
    pub fn from_file(path: &Path) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|e| MappingError::Read(e.to_string()))?;
        Self::from_json_text(&text)
    }

    /// Parses mapping file text (see [`Mapping::from_file`]).
    pub fn from_json_text(text: &str) -> Result<Self, MappingError> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| MappingError::Json(e.to_string()))?;
        let field = |field: &str, reason: String| MappingError::Field {
            field: field.to_owned(),
            reason,
        };
        let Value::Object(top) = doc else {
            return Err(field(
                "(top level)",
                "must be an object with a \"columns\" object".into(),
            ));
        };
        for key in top.keys() {
            if !matches!(
                key.as_str(),
                "columns" | "replaceDefaults" | "$schema" | "description"
            ) {
                return Err(field(
                    key,
                    "unknown property (expected \"columns\" or \"replaceDefaults\")".into(),
                ));
            }
        }
        let replace = match top.get("replaceDefaults") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(field("replaceDefaults", "must be true or false".into())),
        };
        let Some(Value::Object(columns)) = top.get("columns") else {
            return Err(field(
                "columns",
                "must be an object of lead column → rule".into(),
            ));
        };
        let mut mapping = if replace {
            Self {
                rules: Vec::new(),
                accept_new: true,
            }
        } else {
            Self::default()
        };
        for (column, rule) in columns {
            let here = format!("columns.{column}");
            if !crate::config::is_logical_name(column) {
                return Err(field(
                    &here,
                    "is not a lead column logical name (lowercase, e.g. address1_city)".into(),
                ));
            }
            if PROTECTED_LEAD_COLUMNS.contains(&column.as_str()) {
                return Err(field(
                    &here,
                    "is managed by the connector and cannot be mapped".into(),
                ));
            }
            mapping.rules.retain(|r| r.column != *column);
            if rule.is_null() {
                continue;
            }
            mapping.rules.push(parse_rule(column, rule, &here)?);
        }
        mapping.validate()?;
        Ok(mapping)
    }

    /// Checks rules against each other: no ping-pong between a field read and written.
    fn validate(&self) -> Result<(), MappingError> {
        let read: Vec<&FieldPath> = self
            .rules
            .iter()
            .filter(|r| r.direction != Direction::CrmToPc)
            .flat_map(|r| match &r.source {
                Source::Fields(paths) => paths.iter().collect(),
                Source::Constant(_) => Vec::new(),
            })
            .collect();
        for rule in self
            .rules
            .iter()
            .filter(|r| r.direction == Direction::CrmToPc)
        {
            let here = format!("columns.{}.from", rule.column);
            let Source::Fields(paths) = &rule.source else {
                return Err(MappingError::Field {
                    field: format!("columns.{}", rule.column),
                    reason: "a crm-to-pc rule needs \"from\" (the referral field to write), not \"value\"".into(),
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
                        "`{path}` is also read into the lead by another rule; writing it back would loop"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Columns to `$select` when reading a lead.
    pub fn select_columns(&self) -> Vec<&str> {
        let mut columns = vec!["leadid", "statecode", "statuscode"];
        columns.extend(self.rules.iter().map(|r| r.column.as_str()));
        columns
    }

    /// Columns the write-back needs back from an upsert (`$select` of the representation).
    pub fn writeback_columns(&self) -> Vec<&str> {
        let mut columns = vec!["leadid", "statecode", "statuscode"];
        columns.extend(
            self.rules
                .iter()
                .filter(|r| r.direction == Direction::CrmToPc)
                .map(|r| r.column.as_str()),
        );
        columns
    }

    /// The lead columns a referral maps to (Partner Center → CRM rules only).
    /// `creating` includes `on-create` rules. Empty values map to `null`.
    pub fn lead_columns(
        &self,
        referral: &Referral,
        creating: bool,
    ) -> Result<Map<String, Value>, MapError> {
        let mut out = Map::new();
        for rule in &self.rules {
            let wanted = match rule.direction {
                Direction::PcToCrm => true,
                Direction::OnCreate => creating,
                Direction::CrmToPc => false,
            };
            if wanted {
                out.insert(rule.column.clone(), rule.value_for_crm(referral)?);
            }
        }
        Ok(out)
    }

    /// The columns of a new lead for a referral that has none (nulls left out).
    pub fn plan_create(&self, referral: &Referral) -> Result<Map<String, Value>, MapError> {
        let mut columns = self.lead_columns(referral, true)?;
        columns.retain(|_, v| !v.is_null());
        Ok(columns)
    }

    /// Decides the Dataverse write for a referral whose lead exists, given the lead as it is now.
    pub fn plan_update(&self, referral: &Referral, lead: &Lead) -> Result<LeadPlan, MapError> {
        if lead.state != LeadState::Open {
            return Ok(LeadPlan::ReadOnly { state: lead.state });
        }
        let mut changes = Map::new();
        for (column, desired) in self.lead_columns(referral, false)? {
            if !same_value(&desired, lead.columns.get(&column).unwrap_or(&Value::Null)) {
                changes.insert(column, desired);
            }
        }
        if changes.is_empty() {
            Ok(LeadPlan::Unchanged)
        } else {
            Ok(LeadPlan::Update { changes })
        }
    }

    /// Decides the JSON Patch for the referral, given the lead after its write.
    pub fn plan_writeback(&self, referral: &Referral, lead: &Lead) -> Result<WriteBack, MapError> {
        if matches!(
            referral.status(),
            ReferralStatus::Closed | ReferralStatus::Unknown(_)
        ) {
            return Ok(WriteBack::Closed);
        }
        let document = referral.document();
        let mut ops = Vec::new();
        if referral.external_reference_id() != Some(lead.lead_id.as_str()) {
            ops.push(PatchOp::set(
                document,
                "externalReferenceId",
                Value::from(lead.lead_id.clone()),
            ));
        }
        if let Some(change) = status_change(referral, lead, self.accept_new) {
            ops.push(PatchOp::set(document, "status", Value::from(change.status)));
            ops.push(PatchOp::set(
                document,
                "substatus",
                Value::from(change.substatus),
            ));
            if let Some(reason) = change.reason {
                ops.push(PatchOp::set(document, "statusReason", Value::from(reason)));
            }
        }
        for rule in self
            .rules
            .iter()
            .filter(|r| r.direction == Direction::CrmToPc)
        {
            let Source::Fields(paths) = &rule.source else {
                continue;
            };
            let Some(path) = paths.first() else { continue };
            let lead_value = lead.columns.get(&rule.column).unwrap_or(&Value::Null);
            if lead_value.is_null() {
                continue;
            }
            let current = rule.convert_for_crm(path.get(document), path)?;
            if same_value(&current, lead_value) {
                continue;
            }
            let Some(keys) = path.keys() else {
                continue;
            };
            ops.push(PatchOp::at_path(
                document,
                &keys,
                rule.kind.to_partner_center(lead_value),
            ));
        }
        if ops.is_empty() {
            Ok(WriteBack::Unchanged)
        } else {
            Ok(WriteBack::Patch(ops))
        }
    }
}

fn parse_rule(column: &str, rule: &Value, here: &str) -> Result<ColumnRule, MappingError> {
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
        None => match (ColumnKind::for_lead_column(column), max) {
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

impl ColumnRule {
    /// The value this rule gives the lead column for a referral.
    pub fn value_for_crm(&self, referral: &Referral) -> Result<Value, MapError> {
        match &self.source {
            Source::Constant(value) => self.convert_value(value, "value"),
            Source::Fields(paths) => {
                for path in paths {
                    let converted = self.convert_for_crm(path.get(referral.document()), path)?;
                    if !converted.is_null() {
                        return Ok(converted);
                    }
                }
                Ok(Value::Null)
            }
        }
    }

    fn convert_for_crm(&self, value: Option<&Value>, path: &FieldPath) -> Result<Value, MapError> {
        match value {
            None => Ok(Value::Null),
            Some(v) => self.convert_value(v, &path.text),
        }
    }

    fn convert_value(&self, value: &Value, field: &str) -> Result<Value, MapError> {
        let fail = |reason: &str| MapError {
            column: self.column.clone(),
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        if value.is_null() {
            return Ok(Value::Null);
        }
        if let Value::String(s) = value
            && s.trim().is_empty()
        {
            return Ok(Value::Null);
        }
        match self.kind {
            ColumnKind::Text { max } => {
                let text = match value {
                    Value::String(s) => s.trim().to_owned(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(fail("is an object or array, not text")),
                };
                Ok(Value::from(truncate_chars(&text, max)))
            }
            ColumnKind::Number | ColumnKind::Money => {
                let number = match value {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                }
                .filter(|n| n.is_finite())
                .ok_or_else(|| fail("is not a number"))?;
                let number = if self.kind == ColumnKind::Money {
                    (number * 100.0).round() / 100.0
                } else {
                    number
                };
                Ok(number_value(number))
            }
            ColumnKind::Integer => match value {
                Value::Number(n) if n.as_i64().is_some() => Ok(value.clone()),
                Value::String(s) => s
                    .trim()
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| fail("is not a whole number")),
                _ => Err(fail("is not a whole number")),
            },
            ColumnKind::Date => {
                let text = value.as_str().ok_or_else(|| fail("is not a date"))?;
                date_part(text)
                    .map(Value::from)
                    .ok_or_else(|| fail("is not an ISO 8601 date"))
            }
            ColumnKind::Boolean => match value {
                Value::Bool(_) => Ok(value.clone()),
                Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
                Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
                _ => Err(fail("is not true or false")),
            },
        }
    }
}

impl ColumnKind {
    /// A lead value as Partner Center expects it.
    fn to_partner_center(self, value: &Value) -> Value {
        match (self, value) {
            (Self::Date, Value::String(s)) => match date_part(s) {
                Some(date) => Value::from(format!("{date}T00:00:00Z")),
                None => value.clone(),
            },
            _ => value.clone(),
        }
    }
}

/// The `YYYY-MM-DD` part of an ISO 8601 date or date-time.
fn date_part(text: &str) -> Option<String> {
    let date = text.trim().get(..10)?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(date, &format).ok()?;
    Some(date.to_owned())
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text.to_owned(),
    }
}

fn number_value(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Equality as Dataverse round-trips values: numbers by value, empty text as null.
pub fn same_value(a: &Value, b: &Value) -> bool {
    let empty = |v: &Value| v.is_null() || v.as_str().is_some_and(|s| s.is_empty());
    match (a, b) {
        _ if empty(a) && empty(b) => true,
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            _ => x == y,
        },
        _ => a == b,
    }
}

/// What to do with an existing lead.
#[derive(Debug, Clone, PartialEq)]
pub enum LeadPlan {
    /// The lead is open and differs in these columns.
    Update {
        /// Changed columns only.
        changes: Map<String, Value>,
    },
    /// The lead already matches.
    Unchanged,
    /// The lead is qualified or disqualified, so it is read-only.
    ReadOnly {
        /// Its state.
        state: LeadState,
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
    fn set(document: &Map<String, Value>, field: &str, value: Value) -> Self {
        Self::at_path(document, &[field], value)
    }

    /// `replace` when the target exists; otherwise `add` at the first missing ancestor with
    /// the value nested inside it. Keys match case-insensitively, and the pointer spells the
    /// existing ones as the document does, so `Details` is never added next to `details`.
    fn at_path(document: &Map<String, Value>, keys: &[&str], value: Value) -> Self {
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

/// A referral status change derived from the lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// New status.
    pub status: &'static str,
    /// New substatus.
    pub substatus: &'static str,
    /// `statusReason`, for Lost.
    pub reason: Option<String>,
}

/// The status table (README "Status write-back"): only incoming referrals, never Closed ones.
///
/// | lead | referral New | referral Active |
/// |---|---|---|
/// | Open or Qualified | Active / Accepted | — |
/// | Disqualified | Closed / Lost + reason | Closed / Lost + reason |
///
/// With `accept_new` false a New referral is left for a person to accept in Partner Center.
pub fn status_change(referral: &Referral, lead: &Lead, accept_new: bool) -> Option<StatusChange> {
    if !referral.is_incoming() {
        return None;
    }
    match (referral.status(), lead.state) {
        (ReferralStatus::New, LeadState::Open | LeadState::Qualified) if accept_new => {
            Some(StatusChange {
                status: "Active",
                substatus: "Accepted",
                reason: None,
            })
        }
        (ReferralStatus::New | ReferralStatus::Active, LeadState::Disqualified) => {
            Some(StatusChange {
                status: "Closed",
                substatus: "Lost",
                reason: Some(lead.disqualify_reason()),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ID: &str = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";
    const LEAD: &str = "aaaaaaaa-0000-0000-0000-000000000001";

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

    fn lead(state: LeadState, status: Option<i64>, columns: Value) -> Lead {
        Lead {
            lead_id: LEAD.into(),
            etag: Some("W/\"1\"".into()),
            state,
            status_code: status,
            columns: columns.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn default_mapping_table() {
        let columns = Mapping::default()
            .plan_create(&referral(json!({})))
            .unwrap();
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
        let cols = Mapping::default().lead_columns(&r, true).unwrap();
        assert_eq!(cols["subject"], "Solo Ltd");
        assert_eq!(cols["lastname"], "Solo Ltd");
        assert_eq!(cols["firstname"], Value::Null);
        assert_eq!(cols["leadsourcecode"], 4);
    }

    #[test]
    fn text_is_truncated_to_the_column_length() {
        let long = "x".repeat(400);
        let r = referral(json!({"name": long}));
        let cols = Mapping::default().lead_columns(&r, false).unwrap();
        assert_eq!(cols["subject"].as_str().unwrap().chars().count(), 300);
    }

    #[test]
    fn bad_values_are_mapping_errors_naming_column_and_field() {
        let r =
            referral(json!({"details": {"dealValue": "a lot", "closingDateTime": "2026-12-01"}}));
        let err = Mapping::default().plan_create(&r).unwrap_err();
        assert_eq!(err.column, "estimatedamount");
        assert_eq!(err.field, "details.dealValue");
        let r = referral(json!({"details": {"closingDateTime": "soon"}}));
        assert_eq!(
            Mapping::default().plan_create(&r).unwrap_err().column,
            "estimatedclosedate"
        );
    }

    #[test]
    fn update_sends_only_changed_columns_and_on_create_columns_never() {
        let m = Mapping::default();
        let r = referral(json!({}));
        let mut current = m.lead_columns(&r, false).unwrap();
        current.insert("description".into(), json!("old notes"));
        current.insert("estimatedamount".into(), json!(10000.46));
        let plan = m
            .plan_update(&r, &lead(LeadState::Open, Some(1), Value::Object(current)))
            .unwrap();
        assert_eq!(
            plan,
            LeadPlan::Update {
                changes: json!({"description": "Needs help"})
                    .as_object()
                    .cloned()
                    .unwrap()
            }
        );
    }

    #[test]
    fn unchanged_lead_is_not_written_even_with_dataverse_number_and_empty_forms() {
        let m = Mapping::default();
        let r = referral(json!({}));
        let mut current = m.lead_columns(&r, false).unwrap();
        current.insert("estimatedamount".into(), json!(10000.460000));
        current.insert("address1_line2".into(), json!(""));
        let plan = m
            .plan_update(&r, &lead(LeadState::Open, Some(1), Value::Object(current)))
            .unwrap();
        assert_eq!(plan, LeadPlan::Unchanged);
    }

    #[test]
    fn qualified_and_disqualified_leads_are_read_only() {
        for state in [LeadState::Qualified, LeadState::Disqualified] {
            let plan = Mapping::default()
                .plan_update(&referral(json!({})), &lead(state, None, json!({})))
                .unwrap();
            assert_eq!(plan, LeadPlan::ReadOnly { state });
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
            let got = status_change(&r, &lead(state, code, json!({})), true);
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
            status_change(&outgoing, &lead(LeadState::Open, None, json!({})), true),
            None
        );
    }

    #[test]
    fn without_auto_accept_a_new_referral_only_learns_the_lead_id() {
        let mut m = Mapping::default();
        m.set_accept_new(false);
        let r = referral(json!({}));
        let WriteBack::Patch(ops) = m
            .plan_writeback(&r, &lead(LeadState::Open, Some(1), json!({})))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(ops).unwrap(),
            json!([{"op": "add", "path": "/externalReferenceId", "value": LEAD}])
        );
        let WriteBack::Patch(ops) = m
            .plan_writeback(&r, &lead(LeadState::Disqualified, Some(4), json!({})))
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
        let wb = Mapping::default()
            .plan_writeback(
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
        let WriteBack::Patch(ops) = Mapping::default()
            .plan_writeback(&r, &lead(LeadState::Disqualified, Some(6), json!({})))
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
            Mapping::default()
                .plan_writeback(&closed, &lead(LeadState::Open, None, json!({})))
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
            Mapping::default()
                .plan_writeback(&r, &lead(LeadState::Open, Some(1), json!({})))
                .unwrap(),
            WriteBack::Unchanged
        );
    }

    #[test]
    fn mapping_file_overrides_drops_and_adds_columns() {
        let m = Mapping::from_json_text(
            r#"{"columns": {
                "description": {"from": "details.notes", "direction": "on-create"},
                "telephone1": null,
                "new_dealsize": {"from": ["details.dealValue"], "type": "money"},
                "leadqualitycode": {"value": 2, "direction": "on-create"}
            }}"#,
        )
        .unwrap();
        let r = referral(json!({}));
        let update = m.lead_columns(&r, false).unwrap();
        assert!(!update.contains_key("description"));
        assert!(!update.contains_key("telephone1"));
        assert_eq!(update["new_dealsize"], json!(10000.46));
        let create = m.lead_columns(&r, true).unwrap();
        assert_eq!(create["description"], "Needs help");
        assert_eq!(create["leadqualitycode"], 2);
    }

    #[test]
    fn replace_defaults_keeps_only_the_file() {
        let m = Mapping::from_json_text(
            r#"{"replaceDefaults": true, "columns": {"subject": {"from": "name"}}}"#,
        )
        .unwrap();
        assert_eq!(
            m.select_columns(),
            vec!["leadid", "statecode", "statuscode", "subject"]
        );
    }

    #[test]
    fn crm_to_pc_writes_the_lead_value_into_the_referral_once() {
        let m = Mapping::from_json_text(
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
        let WriteBack::Patch(ops) = m.plan_writeback(&r, &l).unwrap() else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&ops).unwrap(),
            json!([{"op": "replace", "path": "/details/dealValue", "value": 25000}])
        );
        let updated = referral(json!({"status": "Active", "externalReferenceId": LEAD,
            "details": {"dealValue": 25000, "closingDateTime": "2026-12-01T00:00:00Z"}}));
        assert_eq!(
            m.plan_writeback(&updated, &l).unwrap(),
            WriteBack::Unchanged
        );
        assert!(
            !m.lead_columns(&updated, true)
                .unwrap()
                .contains_key("estimatedamount")
        );
    }

    #[test]
    fn crm_to_pc_into_a_missing_object_adds_the_object() {
        let m = Mapping::from_json_text(r#"{"columns": {"new_x": {"from": "extra.score", "direction": "crm-to-pc", "type": "number"}}}"#)
            .unwrap();
        let r = referral(json!({"status": "Active", "externalReferenceId": LEAD}));
        let WriteBack::Patch(ops) = m
            .plan_writeback(&r, &lead(LeadState::Open, None, json!({"new_x": 7})))
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
        let m = Mapping::from_json_text(
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
        let WriteBack::Patch(ops) = m.plan_writeback(&r, &l).unwrap() else {
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
            match Mapping::from_json_text(text) {
                Err(MappingError::Field { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            Mapping::from_json_text("{"),
            Err(MappingError::Json(_))
        ));
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
                    Mapping::default(),
                    Mapping::from_json_text(r#"{"columns": {"estimatedamount": {"from": "details.dealValue", "direction": "crm-to-pc"}}}"#).unwrap(),
                ] {
                    let referral = Referral::from_json(doc.clone(), None).unwrap();
                    let columns = mapping.plan_create(&referral).unwrap();
                    let mut lead = Lead { lead_id: LEAD.into(), etag: None, state: LeadState::Open, status_code: Some(1), columns };
                    if let Some(amount) = crm_amount
                        && mapping != Mapping::default() {
                            lead.columns.insert("estimatedamount".into(), Value::from(amount));
                        }
                    prop_assert_eq!(mapping.plan_update(&referral, &lead).unwrap(), LeadPlan::Unchanged);
                    lead.state = state;
                    lead.status_code = code;

                    let mut document = doc.clone();
                    if let WriteBack::Patch(ops) = mapping.plan_writeback(&referral, &lead).unwrap() {
                        apply(&mut document, &ops);
                    }
                    let after = Referral::from_json(document, None).unwrap();
                    let second = mapping.plan_writeback(&after, &lead).unwrap();
                    prop_assert!(matches!(second, WriteBack::Unchanged | WriteBack::Closed), "{:?}", second);
                    if state == LeadState::Open {
                        prop_assert_eq!(mapping.plan_update(&after, &lead).unwrap(), LeadPlan::Unchanged);
                    }
                }
            }
        }
    }
}
