//! One mapped column: where its value comes from in the referral (a field path or a constant),
//! which way it flows, and how a referral value is converted for the CRM column's type.

use std::fmt;

use serde_json::{Map, Value};

use crate::domain::{Referral, referral::lookup};

/// Dataverse logical names: lowercase ASCII letters, digits and underscores, starting with a
/// letter, at most 50 characters.
pub fn is_logical_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 50
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Which way a column flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Partner Center → CRM on every sync (`"pc-to-crm"`, the default).
    PcToCrm,
    /// Partner Center → CRM only when the record is created (`"on-create"`).
    OnCreate,
    /// CRM → Partner Center: the CRM column is written into the referral field (`"crm-to-pc"`).
    CrmToPc,
    /// Partner Center → CRM when the record is created, CRM → Partner Center afterwards: the
    /// seller owns the column (`"crm-owned"`; the opportunity's value and close date).
    CrmOwned,
}

impl Direction {
    pub(crate) const NAMES: &'static str =
        "\"pc-to-crm\", \"on-create\", \"crm-to-pc\" or \"crm-owned\"";

    pub(crate) fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pc-to-crm" => Some(Self::PcToCrm),
            "on-create" => Some(Self::OnCreate),
            "crm-to-pc" => Some(Self::CrmToPc),
            "crm-owned" => Some(Self::CrmOwned),
            _ => None,
        }
    }

    /// The file spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::PcToCrm => "pc-to-crm",
            Self::OnCreate => "on-create",
            Self::CrmToPc => "crm-to-pc",
            Self::CrmOwned => "crm-owned",
        }
    }

    /// Whether the CRM column is written into the referral.
    pub fn writes_referral(&self) -> bool {
        matches!(self, Self::CrmToPc | Self::CrmOwned)
    }

    /// Whether the referral field is written into the CRM column on this sync.
    pub fn reads_referral(&self, creating: bool) -> bool {
        match self {
            Self::PcToCrm => true,
            Self::OnCreate | Self::CrmOwned => creating,
            Self::CrmToPc => false,
        }
    }
}

/// The CRM type of a column, which decides how a referral value is converted.
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
    pub(crate) const NAMES: &'static str =
        "\"text\", \"number\", \"money\", \"integer\", \"choice\", \"date\" or \"boolean\"";

    pub(crate) fn parse(raw: &str, max: Option<usize>) -> Option<Self> {
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
}

/// A path into the referral document: `customerProfile.team[0].firstName`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    pub(crate) text: String,
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
    pub(crate) fn keys(&self) -> Option<Vec<&str>> {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect()
    }

    pub(crate) fn first_key(&self) -> &str {
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

    pub(crate) fn convert_for_crm(
        &self,
        value: Option<&Value>,
        path: &FieldPath,
    ) -> Result<Value, MapError> {
        match value {
            None => Ok(Value::Null),
            Some(v) => self.convert_value(v, &path.text),
        }
    }

    pub(crate) fn convert_value(&self, value: &Value, field: &str) -> Result<Value, MapError> {
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
    pub(crate) fn to_partner_center(self, value: &Value) -> Value {
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

impl ColumnRule {
    /// A rule that takes the first of `paths` that has a value (the default tables' shape).
    pub fn from_fields(
        column: &str,
        paths: &[&str],
        direction: Direction,
        kind: ColumnKind,
    ) -> Self {
        Self {
            column: column.to_owned(),
            source: Source::Fields(
                paths
                    .iter()
                    .filter_map(|p| FieldPath::parse(p).ok())
                    .collect(),
            ),
            direction,
            kind,
        }
    }

    /// A rule that writes a constant.
    pub fn constant(column: &str, value: Value, direction: Direction, kind: ColumnKind) -> Self {
        Self {
            column: column.to_owned(),
            source: Source::Constant(value),
            direction,
            kind,
        }
    }
}
