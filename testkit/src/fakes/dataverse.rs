//! Fake Dataverse Web API v9.2 for the tables the connector touches: `lead`, `opportunity`,
//! `account`, `contact`, `transactioncurrency` and `opportunityclose`.
//!
//! What it reproduces (see `dataverse-opportunity.md` and `dataverse-and-crates.md`):
//! - rows addressed by primary id on every table and by the alternate key column on `lead` and
//!   `opportunity`; GET with `$select`, upsert-PATCH with the real conditional headers
//!   (`If-None-Match: *` create-only → 412, `If-Match` → 404 when missing / 412 on a version
//!   mismatch), `Prefer: return=representation` (201/200 + body) or 204 + `OData-EntityId`;
//!   `POST` creates; a weak `@odata.etag` `W/"<versionnumber>"`; `modifiedon`/`createdon` in UTC
//!   at second precision;
//! - lookups written with `<nav>@odata.bind` and read back as `_<column>_value` (annotations only
//!   when `Prefer: odata.include-annotations` asks), typed columns (money, date-only, choices);
//! - the opportunity state rules, `WinOpportunity` / `LoseOpportunity` with `opportunityclose`
//!   rows, `QualifyLead` (also as a test method, [`FakeDataverse::qualify_lead`]);
//! - collection queries with a small `$filter` grammar, `$orderby`, `$top` and `$count`;
//! - metadata per table: columns (create String/Memo/Boolean/Picklist/… and read them back),
//!   alternate keys whose index goes Pending → InProgress → Active over Keys reads, `PublishXml`.
//!
//! Where the spec leaves a status or code unverified the choice is documented on the function
//! that produces it and summarised in [`FakeDataverse`].

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    ops::Deref,
    sync::{Arc, Mutex},
};

use serde_json::{Map, Value, json};
use time::{
    Date, OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description,
};

use super::common::{FakeServer, Recorded, Reply, lock, parse_rfc3339};

const API: &str = "/api/data/v9.2/";

const LEAD: usize = 0;
const OPPORTUNITY: usize = 1;
const ACCOUNT: usize = 2;
const CONTACT: usize = 3;
const CURRENCY: usize = 4;
const OPPORTUNITY_CLOSE: usize = 5;

/// A state (statecode, its label, and its status reasons; the first is the default).
type StateDef = (i64, &'static str, &'static [(i64, &'static str)]);

#[derive(Debug)]
struct TableDef {
    logical: &'static str,
    set: &'static str,
    pk: &'static str,
    /// Primary name column (used for formatted lookup values).
    name: &'static str,
    /// Name of the state enum in error messages (`OpportunityState`).
    state_enum: &'static str,
    states: &'static [StateDef],
}

const ACTIVE_INACTIVE: &[StateDef] = &[
    (0, "Active", &[(1, "Active")]),
    (1, "Inactive", &[(2, "Inactive")]),
];

const TABLES: [TableDef; 6] = [
    TableDef {
        logical: "lead",
        set: "leads",
        pk: "leadid",
        name: "fullname",
        state_enum: "LeadState",
        states: &[
            (0, "Open", &[(1, "New"), (2, "Contacted")]),
            (1, "Qualified", &[(3, "Qualified")]),
            (
                2,
                "Disqualified",
                &[
                    (4, "Lost"),
                    (5, "Cannot Contact"),
                    (6, "No Longer Interested"),
                    (7, "Canceled"),
                ],
            ),
        ],
    },
    TableDef {
        logical: "opportunity",
        set: "opportunities",
        pk: "opportunityid",
        name: "name",
        state_enum: "OpportunityState",
        states: &[
            (0, "Open", &[(1, "In Progress"), (2, "On Hold")]),
            (1, "Won", &[(3, "Won")]),
            (2, "Lost", &[(4, "Canceled"), (5, "Out-Sold")]),
        ],
    },
    TableDef {
        logical: "account",
        set: "accounts",
        pk: "accountid",
        name: "name",
        state_enum: "AccountState",
        states: ACTIVE_INACTIVE,
    },
    TableDef {
        logical: "contact",
        set: "contacts",
        pk: "contactid",
        name: "fullname",
        state_enum: "ContactState",
        states: ACTIVE_INACTIVE,
    },
    TableDef {
        logical: "transactioncurrency",
        set: "transactioncurrencies",
        pk: "transactioncurrencyid",
        name: "currencyname",
        state_enum: "TransactionCurrencyState",
        states: ACTIVE_INACTIVE,
    },
    TableDef {
        logical: "opportunityclose",
        set: "opportunitycloses",
        pk: "activityid",
        name: "subject",
        state_enum: "OpportunityCloseState",
        states: &[
            (0, "Open", &[(1, "Open")]),
            (1, "Completed", &[(2, "Completed")]),
            (2, "Canceled", &[(3, "Canceled")]),
        ],
    },
];

/// Lookup targets that are not tables of the fake: binds to them are accepted when the id is a
/// GUID, without an existence check.
const EXTERNAL_SETS: &[(&str, &str)] = &[
    ("systemuser", "systemusers"),
    ("team", "teams"),
    ("campaign", "campaigns"),
    ("competitor", "competitors"),
];

fn table_index(logical: &str) -> Option<usize> {
    TABLES.iter().position(|t| t.logical == logical)
}

fn table_by_set(set: &str) -> Option<usize> {
    TABLES.iter().position(|t| t.set == set)
}

/// Logical name of an entity set, for tables and external lookup targets.
fn logical_of_set(set: &str) -> Option<&'static str> {
    table_by_set(set).map(|t| TABLES[t].logical).or_else(|| {
        EXTERNAL_SETS
            .iter()
            .find(|(_, s)| *s == set)
            .map(|(l, _)| *l)
    })
}

/// Panics on an unknown table name (test helpers).
fn table_arg(table: &str) -> usize {
    table_index(table).unwrap_or_else(|| {
        panic!(
            "unknown table {table:?}; the fake has {}",
            TABLES.map(|t| t.logical).join(", ")
        )
    })
}

fn statuses(t: usize, statecode: i64) -> Option<&'static [(i64, &'static str)]> {
    TABLES[t]
        .states
        .iter()
        .find(|(s, _, _)| *s == statecode)
        .map(|(_, _, st)| *st)
}

fn valid_pair(t: usize, statecode: i64, statuscode: i64) -> bool {
    statuses(t, statecode).is_some_and(|st| st.iter().any(|(v, _)| *v == statuscode))
}

fn default_status(t: usize, statecode: i64) -> i64 {
    statuses(t, statecode).map_or(1, |st| st[0].0)
}

/// The type of a column, which decides how written values are checked and converted.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Uniqueidentifier (primary key).
    Id,
    /// Single line of text, with MaxLength when known.
    Text(Option<usize>),
    /// Multiple lines of text.
    Memo(usize),
    Integer,
    BigInt,
    Money,
    Decimal,
    Double,
    Boolean,
    /// DateTime with DateOnly behaviour (`Edm.Date`, `"2026-12-31"`).
    DateOnly,
    /// DateTime (`Edm.DateTimeOffset`), stored in UTC at second precision.
    DateTime,
    /// Choice; an empty list accepts any integer.
    Picklist(Vec<i64>),
    State,
    Status,
    /// Lookup to one or more tables (nav property = column name).
    Lookup(&'static [&'static str]),
    /// Customer lookup (nav properties `<column>_account`, `<column>_contact`).
    Customer,
    /// Owner (nav property `ownerid`, to `systemusers` or `teams`).
    Owner,
}

impl Kind {
    fn is_lookup(&self) -> bool {
        matches!(self, Self::Lookup(_) | Self::Customer | Self::Owner)
    }

    fn targets(&self) -> Vec<&'static str> {
        match self {
            Self::Lookup(t) => t.to_vec(),
            Self::Customer => vec!["account", "contact"],
            Self::Owner => vec!["systemuser", "team"],
            _ => Vec::new(),
        }
    }

    /// `AttributeType` of the metadata.
    fn attribute_type(&self) -> &'static str {
        match self {
            Self::Id => "Uniqueidentifier",
            Self::Text(_) => "String",
            Self::Memo(_) => "Memo",
            Self::Integer => "Integer",
            Self::BigInt => "BigInt",
            Self::Money => "Money",
            Self::Decimal => "Decimal",
            Self::Double => "Double",
            Self::Boolean => "Boolean",
            Self::DateOnly | Self::DateTime => "DateTime",
            Self::Picklist(_) => "Picklist",
            Self::State => "State",
            Self::Status => "Status",
            Self::Lookup(_) => "Lookup",
            Self::Customer => "Customer",
            Self::Owner => "Owner",
        }
    }

    /// The metadata class (`StringAttributeMetadata`).
    fn metadata_class(&self) -> &'static str {
        match self {
            Self::Id => "UniqueIdentifierAttributeMetadata",
            Self::Text(_) => "StringAttributeMetadata",
            Self::Memo(_) => "MemoAttributeMetadata",
            Self::Integer => "IntegerAttributeMetadata",
            Self::BigInt => "BigIntAttributeMetadata",
            Self::Money => "MoneyAttributeMetadata",
            Self::Decimal => "DecimalAttributeMetadata",
            Self::Double => "DoubleAttributeMetadata",
            Self::Boolean => "BooleanAttributeMetadata",
            Self::DateOnly | Self::DateTime => "DateTimeAttributeMetadata",
            Self::Picklist(_) => "PicklistAttributeMetadata",
            Self::State => "StateAttributeMetadata",
            Self::Status => "StatusAttributeMetadata",
            Self::Lookup(_) | Self::Customer | Self::Owner => "LookupAttributeMetadata",
        }
    }

    fn edm(&self) -> &'static str {
        match self {
            Self::Text(_) | Self::Memo(_) => "Edm.String",
            Self::Integer | Self::Picklist(_) | Self::State | Self::Status => "Edm.Int32",
            Self::BigInt => "Edm.Int64",
            Self::Money | Self::Decimal => "Edm.Decimal",
            Self::Double => "Edm.Double",
            Self::Boolean => "Edm.Boolean",
            Self::DateOnly => "Edm.Date",
            Self::DateTime => "Edm.DateTimeOffset",
            Self::Id | Self::Lookup(_) | Self::Customer | Self::Owner => "Edm.Guid",
        }
    }
}

const TO_ACCOUNT: &[&str] = &["account"];
const TO_CONTACT: &[&str] = &["contact"];
const TO_LEAD: &[&str] = &["lead"];
const TO_OPPORTUNITY: &[&str] = &["opportunity"];
const TO_CURRENCY: &[&str] = &["transactioncurrency"];
const TO_CAMPAIGN: &[&str] = &["campaign"];
const TO_COMPETITOR: &[&str] = &["competitor"];

const LEAD_SOURCES: &[(i64, &str)] = &[
    (1, "Advertisement"),
    (2, "Employee Referral"),
    (3, "External Referral"),
    (4, "Partner"),
    (5, "Public Relations"),
    (6, "Seminar"),
    (7, "Trade Show"),
    (8, "Web"),
    (9, "Word of Mouth"),
    (10, "Other"),
];
const LEAD_QUALITIES: &[(i64, &str)] = &[(1, "Hot"), (2, "Warm"), (3, "Cold")];
const FORECAST_CATEGORIES: &[(i64, &str)] = &[
    (100000001, "Pipeline"),
    (100000002, "Best case"),
    (100000003, "Committed"),
    (100000004, "Omitted"),
    (100000005, "Won"),
    (100000006, "Lost"),
];
const OPPORTUNITY_STATES: &[(i64, &str)] = &[(0, "Open"), (1, "Won"), (2, "Lost")];
const OPPORTUNITY_STATUSES: &[(i64, &str)] = &[
    (1, "In Progress"),
    (2, "On Hold"),
    (3, "Won"),
    (4, "Canceled"),
    (5, "Out-Sold"),
];

/// Options of the standard choice columns.
fn standard_options(t: usize, column: &str) -> &'static [(i64, &'static str)] {
    match (t, column) {
        (LEAD, "leadsourcecode") => LEAD_SOURCES,
        (LEAD, "leadqualitycode") => LEAD_QUALITIES,
        (OPPORTUNITY, "msdyn_forecastcategory") => FORECAST_CATEGORIES,
        (OPPORTUNITY_CLOSE, "opportunitystatecode") => OPPORTUNITY_STATES,
        (OPPORTUNITY_CLOSE, "opportunitystatuscode") => OPPORTUNITY_STATUSES,
        _ => &[],
    }
}

fn picklist(t: usize, column: &str) -> Kind {
    Kind::Picklist(standard_options(t, column).iter().map(|o| o.0).collect())
}

const fn text(max: usize) -> Kind {
    Kind::Text(Some(max))
}

/// Columns of each table in a fresh organisation (the key column is not among them).
fn standard_columns(t: usize) -> Vec<(&'static str, Kind)> {
    use Kind::{
        BigInt, Customer, DateOnly, DateTime, Decimal, Double, Id, Integer, Lookup, Memo, Money,
        Owner, State, Status,
    };
    let address = [
        ("address1_line1", text(250)),
        ("address1_city", text(80)),
        ("address1_stateorprovince", text(50)),
        ("address1_postalcode", text(20)),
        ("address1_country", text(80)),
    ];
    let mut columns: Vec<(&'static str, Kind)> = match t {
        LEAD => vec![
            ("leadid", Id),
            ("subject", text(300)),
            ("firstname", text(50)),
            ("lastname", text(50)),
            ("fullname", text(160)),
            ("companyname", text(100)),
            ("emailaddress1", text(100)),
            ("telephone1", text(50)),
            ("mobilephone", text(20)),
            ("jobtitle", text(100)),
            ("description", Memo(2000)),
            ("budgetamount", Money),
            ("estimatedamount", Money),
            ("estimatedvalue", Double),
            ("estimatedclosedate", DateOnly),
            ("revenue", Money),
            ("leadsourcecode", picklist(LEAD, "leadsourcecode")),
            ("leadqualitycode", picklist(LEAD, "leadqualitycode")),
            ("ownerid", Owner),
            ("transactioncurrencyid", Lookup(TO_CURRENCY)),
            ("parentaccountid", Lookup(TO_ACCOUNT)),
            ("parentcontactid", Lookup(TO_CONTACT)),
            ("campaignid", Lookup(TO_CAMPAIGN)),
            ("customerid", Customer),
            ("qualifyingopportunityid", Lookup(TO_OPPORTUNITY)),
            ("websiteurl", text(200)),
            ("numberofemployees", Integer),
            ("industrycode", Kind::Picklist(Vec::new())),
            ("qualificationcomments", Memo(2000)),
        ],
        OPPORTUNITY => vec![
            ("opportunityid", Id),
            ("name", text(300)),
            ("description", Memo(2000)),
            ("estimatedvalue", Money),
            ("estimatedvalue_base", Money),
            ("estimatedclosedate", DateOnly),
            ("actualvalue", Money),
            ("actualvalue_base", Money),
            ("actualclosedate", DateOnly),
            ("closeprobability", Integer),
            ("exchangerate", Decimal),
            ("customerid", Customer),
            ("parentaccountid", Lookup(TO_ACCOUNT)),
            ("parentcontactid", Lookup(TO_CONTACT)),
            ("transactioncurrencyid", Lookup(TO_CURRENCY)),
            ("originatingleadid", Lookup(TO_LEAD)),
            (
                "msdyn_forecastcategory",
                picklist(OPPORTUNITY, "msdyn_forecastcategory"),
            ),
            ("ownerid", Owner),
            ("qualificationcomments", Memo(2000)),
        ],
        ACCOUNT => vec![
            ("accountid", Id),
            ("name", text(160)),
            ("accountnumber", text(20)),
            ("telephone1", text(50)),
            ("emailaddress1", text(100)),
            ("websiteurl", text(200)),
            ("description", Memo(2000)),
            ("revenue", Money),
            ("numberofemployees", Integer),
            ("parentaccountid", Lookup(TO_ACCOUNT)),
            ("primarycontactid", Lookup(TO_CONTACT)),
            ("originatingleadid", Lookup(TO_LEAD)),
            ("transactioncurrencyid", Lookup(TO_CURRENCY)),
            ("ownerid", Owner),
        ],
        CONTACT => vec![
            ("contactid", Id),
            ("firstname", text(50)),
            ("lastname", text(50)),
            ("fullname", text(160)),
            ("emailaddress1", text(100)),
            ("telephone1", text(50)),
            ("mobilephone", text(50)),
            ("jobtitle", text(100)),
            ("description", Memo(2000)),
            ("parentcustomerid", Customer),
            ("originatingleadid", Lookup(TO_LEAD)),
            ("transactioncurrencyid", Lookup(TO_CURRENCY)),
            ("ownerid", Owner),
        ],
        CURRENCY => vec![
            ("transactioncurrencyid", Id),
            ("currencyname", text(100)),
            ("isocurrencycode", text(5)),
            ("currencysymbol", text(10)),
            ("currencyprecision", Integer),
            ("exchangerate", Decimal),
        ],
        _ => vec![
            ("activityid", Id),
            ("subject", text(200)),
            ("description", Memo(2000)),
            ("actualrevenue", Money),
            ("actualend", DateTime),
            ("opportunityid", Lookup(TO_OPPORTUNITY)),
            ("regardingobjectid", Lookup(TO_OPPORTUNITY)),
            ("competitorid", Lookup(TO_COMPETITOR)),
            (
                "opportunitystatecode",
                picklist(OPPORTUNITY_CLOSE, "opportunitystatecode"),
            ),
            (
                "opportunitystatuscode",
                picklist(OPPORTUNITY_CLOSE, "opportunitystatuscode"),
            ),
            ("transactioncurrencyid", Lookup(TO_CURRENCY)),
        ],
    };
    if matches!(t, LEAD | ACCOUNT | CONTACT) {
        columns.extend(address);
    }
    columns.extend([
        ("statecode", State),
        ("statuscode", Status),
        ("versionnumber", BigInt),
        ("createdon", DateTime),
        ("modifiedon", DateTime),
    ]);
    columns
}

/// Columns the platform computes; writing them is rejected.
fn is_read_only(t: usize, column: &str) -> bool {
    matches!(column, "versionnumber" | "createdon" | "modifiedon")
        || column.ends_with("_base")
        || (t == OPPORTUNITY && column == "exchangerate")
        || (t == CONTACT && column == "fullname")
        || (t == OPPORTUNITY_CLOSE && column == "regardingobjectid")
}

/// A localized label as the metadata API writes it.
fn label(text: &str) -> Value {
    let localized = json!({"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": 1033});
    json!({"LocalizedLabels": [localized.clone()], "UserLocalizedLabel": localized})
}

/// The text of a label in any of the shapes a caller may send.
fn label_text(label: &Value) -> Option<String> {
    if let Some(s) = label.as_str() {
        return Some(s.to_owned());
    }
    label
        .pointer("/UserLocalizedLabel/Label")
        .or_else(|| label.pointer("/LocalizedLabels/0/Label"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// A column: its type and the metadata `Attributes(LogicalName='…')` returns.
#[derive(Debug, Clone)]
struct Attr {
    kind: Kind,
    read_only: bool,
    meta: Value,
}

impl Attr {
    fn standard(t: usize, name: &str, kind: Kind) -> Self {
        let read_only = is_read_only(t, name);
        let mut meta = base_meta(t, name, &kind, false, read_only);
        match &kind {
            Kind::Picklist(_) => {
                let options: Vec<Value> = standard_options(t, name)
                    .iter()
                    .map(|(v, l)| json!({"Value": v, "Label": label(l)}))
                    .collect();
                meta["OptionSet"] =
                    json!({"OptionSetType": "Picklist", "IsGlobal": false, "Options": options});
            }
            Kind::State | Kind::Status => {
                let options: Vec<Value> = if kind == Kind::State {
                    TABLES[t]
                        .states
                        .iter()
                        .map(|(v, l, st)| {
                            json!({"Value": v, "Label": label(l), "DefaultStatus": st[0].0})
                        })
                        .collect()
                } else {
                    TABLES[t]
                        .states
                        .iter()
                        .flat_map(|(s, _, st)| {
                            st.iter().map(
                                move |(v, l)| json!({"Value": v, "Label": label(l), "State": s}),
                            )
                        })
                        .collect()
                };
                meta["OptionSet"] =
                    json!({"OptionSetType": kind.attribute_type(), "Options": options});
            }
            _ => {}
        }
        Self {
            kind,
            read_only,
            meta,
        }
    }

    /// A custom single-line text column (`add_column`, `set_schema`).
    fn custom_text(t: usize, name: &str, max: Option<usize>) -> Self {
        let kind = Kind::Text(max);
        Self {
            meta: base_meta(t, name, &kind, true, false),
            kind,
            read_only: false,
        }
    }

    /// The label of choice value `value`, from the stored option set.
    fn option_label(&self, value: i64) -> Option<String> {
        self.meta
            .pointer("/OptionSet/Options")
            .and_then(Value::as_array)?
            .iter()
            .find(|o| o.get("Value").and_then(Value::as_i64) == Some(value))
            .and_then(|o| o.get("Label"))
            .and_then(label_text)
    }
}

fn base_meta(t: usize, name: &str, kind: &Kind, custom: bool, read_only: bool) -> Value {
    let ty = kind.attribute_type();
    let mut meta = json!({
        "@odata.type": format!("#Microsoft.Dynamics.CRM.{}", kind.metadata_class()),
        "MetadataId": new_id(),
        "LogicalName": name,
        "SchemaName": name,
        "EntityLogicalName": TABLES[t].logical,
        "AttributeType": ty,
        "AttributeTypeName": {"Value": format!("{ty}Type")},
        "IsCustomAttribute": custom,
        "IsPrimaryId": name == TABLES[t].pk,
        "IsValidForCreate": !read_only,
        "IsValidForUpdate": !read_only && name != TABLES[t].pk,
        "IsValidForRead": true,
    });
    match kind {
        Kind::Text(Some(max)) | Kind::Memo(max) => meta["MaxLength"] = json!(max),
        Kind::DateOnly => {
            meta["Format"] = json!("DateOnly");
            meta["DateTimeBehavior"] = json!({"Value": "DateOnly"});
        }
        Kind::DateTime => {
            meta["Format"] = json!("DateAndTime");
            meta["DateTimeBehavior"] = json!({"Value": "UserLocal"});
        }
        k if k.is_lookup() => meta["Targets"] = json!(k.targets()),
        _ => {}
    }
    meta
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[derive(Debug, Clone)]
struct EntityKey {
    logical_name: String,
    schema_name: String,
    attributes: Vec<String>,
    status: String,
    gets: usize,
    /// The rows held duplicate values when the key was created: the index build ends `Failed`.
    fails: bool,
    metadata_id: String,
}

impl EntityKey {
    fn new(schema_name: &str, attributes: Vec<String>, status: &str, fails: bool) -> Self {
        Self {
            logical_name: schema_name.to_ascii_lowercase(),
            schema_name: schema_name.to_owned(),
            attributes,
            status: status.to_owned(),
            gets: 0,
            fails,
            metadata_id: new_id(),
        }
    }

    /// Status reported after `gets` previous Keys reads, given `polls` reads to activation.
    fn shown(&self, polls: usize) -> String {
        if !matches!(self.status.as_str(), "Pending" | "InProgress") {
            self.status.clone()
        } else if self.gets >= polls {
            if self.fails { "Failed" } else { "Active" }.into()
        } else if self.gets == 0 {
            self.status.clone()
        } else {
            "InProgress".into()
        }
    }

    fn to_json(&self, t: usize, polls: usize) -> Value {
        json!({
            "MetadataId": self.metadata_id,
            "LogicalName": self.logical_name,
            "SchemaName": self.schema_name,
            "EntityLogicalName": TABLES[t].logical,
            "KeyAttributes": self.attributes,
            "EntityKeyIndexStatus": self.shown(polls),
        })
    }
}

/// One row. Lookups live in `columns` as `_<column>_value`.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    seq: u64,
    version: u64,
    statecode: i64,
    statuscode: i64,
    createdon: String,
    modifiedon: String,
    columns: Map<String, Value>,
}

impl Row {
    fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }

    fn text(&self, column: &str) -> Option<&str> {
        self.columns
            .get(column)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    }
}

/// The string value of `column` in `row`, if any (what a key address or the uniqueness check
/// compares).
fn key_value<'a>(column: &str, row: &'a Row) -> Option<&'a str> {
    row.columns.get(column).and_then(Value::as_str)
}

/// The rows of one table by lower-case id, with an index from the value of the key column
/// (`State::key_column`) to the rows holding it, so that key addresses and the uniqueness check
/// are not full scans. Reads go through `Deref`; there is no `DerefMut`: every change goes
/// through [`insert`](Self::insert), [`remove`](Self::remove) or [`update`](Self::update), which
/// keep the index exact.
#[derive(Debug, Default)]
struct Rows {
    map: BTreeMap<String, Row>,
    key_column: String,
    /// Key value → `(seq, id)` of every row whose key column holds that string.
    by_key: BTreeMap<String, BTreeSet<(u64, String)>>,
}

impl Deref for Rows {
    type Target = BTreeMap<String, Row>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Rows {
    fn new(key_column: &str) -> Self {
        Self {
            key_column: key_column.to_owned(),
            ..Self::default()
        }
    }

    fn index(by_key: &mut BTreeMap<String, BTreeSet<(u64, String)>>, value: &str, row: &Row) {
        by_key
            .entry(value.to_owned())
            .or_default()
            .insert((row.seq, row.id.clone()));
    }

    fn unindex(by_key: &mut BTreeMap<String, BTreeSet<(u64, String)>>, value: &str, row: &Row) {
        if let Some(ids) = by_key.get_mut(value) {
            ids.remove(&(row.seq, row.id.clone()));
            if ids.is_empty() {
                by_key.remove(value);
            }
        }
    }

    /// Adds `row` (replacing a row with the same id).
    fn insert(&mut self, row: Row) {
        if let Some(value) = key_value(&self.key_column, &row) {
            Self::index(&mut self.by_key, value, &row);
        }
        if let Some(old) = self.map.insert(row.id.clone(), row)
            && let Some(value) = key_value(&self.key_column, &old)
        {
            Self::unindex(&mut self.by_key, value, &old);
        }
    }

    /// Deletes row `id`.
    fn remove(&mut self, id: &str) -> Option<Row> {
        let row = self.map.remove(id)?;
        if let Some(value) = key_value(&self.key_column, &row) {
            Self::unindex(&mut self.by_key, value, &row);
        }
        Some(row)
    }

    /// Changes existing row `id` with `f` (which must not change its `id` or `seq`) and
    /// re-indexes it. Panics if the row is missing.
    fn update<R>(&mut self, id: &str, f: impl FnOnce(&mut Row) -> R) -> R {
        let row = self.map.get_mut(id).expect("row exists");
        let (seq, before) = (row.seq, key_value(&self.key_column, row).map(str::to_owned));
        let out = f(row);
        assert!(row.seq == seq && row.id == id, "a row keeps its id and seq");
        let after = key_value(&self.key_column, row);
        if before.as_deref() != after {
            if let Some(value) = &before {
                Self::unindex(&mut self.by_key, value, row);
            }
            if let Some(value) = after {
                Self::index(&mut self.by_key, value, row);
            }
        }
        out
    }

    /// The id of the first created row whose key column is `value`.
    fn find_by_key(&self, value: &str) -> Option<&str> {
        self.by_key
            .get(value)
            .and_then(BTreeSet::first)
            .map(|(_, id)| id.as_str())
    }

    /// Whether a row other than `own` has `value` in the key column.
    fn key_taken(&self, value: &str, own: Option<&str>) -> bool {
        self.by_key
            .get(value)
            .is_some_and(|ids| ids.iter().any(|(_, id)| Some(id.as_str()) != own))
    }
}

#[derive(Debug, Default)]
struct Table {
    /// By lower-case id.
    rows: Rows,
    attributes: BTreeMap<String, Attr>,
    keys: Vec<EntityKey>,
    /// Successful write requests addressed to this table.
    writes: usize,
}

/// What `QualifyLead` is asked to do.
#[derive(Debug, Clone)]
struct Qualify {
    account: bool,
    contact: bool,
    opportunity: bool,
    status: i64,
    currency: Option<String>,
    /// (table, id) of an existing customer.
    customer: Option<(usize, String)>,
}

#[derive(Debug)]
struct State {
    key_column: String,
    tables: Vec<Table>,
    key_activation_polls: usize,
    enforce_schema: bool,
    who_am_i: Value,
    base_currency: String,
    seq: u64,
    clock_offset_secs: i64,
    /// Lead → opportunity attribute maps used by QualifyLead (source, target).
    qualify_maps: Vec<(String, String)>,
}

/// `2026-12-02T18:31:22Z`.
const SECONDS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
const DATE: &[BorrowedFormatItem<'_>] = format_description!("[year]-[month]-[day]");

fn format_seconds(t: OffsetDateTime) -> String {
    t.format(SECONDS).expect("format a timestamp")
}

/// An RFC 3339 timestamp normalised to UTC at second precision.
fn normalize_datetime(s: &str) -> Option<String> {
    let nanos = parse_rfc3339(s)?;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .map(format_seconds)
}

fn is_date(s: &str) -> bool {
    Date::parse(s, DATE).is_ok()
}

/// `_x_value` → `x`.
fn lookup_column(name: &str) -> Option<&str> {
    name.strip_prefix('_')?.strip_suffix("_value")
}

fn is_lookup_value(name: &str) -> bool {
    lookup_column(name).is_some()
}

impl State {
    fn new(key_column: &str) -> Self {
        let tables = (0..TABLES.len())
            .map(|t| Table {
                rows: Rows::new(key_column),
                attributes: standard_columns(t)
                    .into_iter()
                    .map(|(name, kind)| (name.to_owned(), Attr::standard(t, name, kind)))
                    .collect(),
                ..Table::default()
            })
            .collect();
        let mut s = Self {
            key_column: key_column.to_owned(),
            tables,
            key_activation_polls: 2,
            enforce_schema: false,
            who_am_i: json!({
                "BusinessUnitId": new_id(),
                "UserId": new_id(),
                "OrganizationId": new_id(),
            }),
            base_currency: String::new(),
            seq: 0,
            clock_offset_secs: 0,
            qualify_maps: Vec::new(),
        };
        s.base_currency = s.insert_currency("USD", "US Dollar", "$", 1.0);
        s.insert_currency("EUR", "Euro", "€", 0.92);
        s
    }

    fn insert_currency(&mut self, iso: &str, name: &str, symbol: &str, rate: f64) -> String {
        let columns = json!({
            "isocurrencycode": iso, "currencyname": name, "currencysymbol": symbol,
            "currencyprecision": 2, "exchangerate": rate,
        });
        self.insert_row(CURRENCY, None, 0, 1, object(columns, "currency"))
    }

    fn now_time(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::seconds(self.clock_offset_secs)
    }

    fn now(&self) -> String {
        format_seconds(self.now_time())
    }

    fn today(&self) -> String {
        self.now_time().date().format(DATE).expect("format a date")
    }

    fn user_id(&self) -> Value {
        self.who_am_i["UserId"].clone()
    }

    fn key_attr_exists(&self, t: usize) -> bool {
        self.tables[t].attributes.contains_key(&self.key_column)
    }

    /// Whether the key column exists on `t` with an `Active` alternate key on exactly it.
    fn key_is_active(&self, t: usize) -> bool {
        let col = &self.key_column;
        self.key_attr_exists(t)
            && self.tables[t].keys.iter().any(|k| {
                k.attributes == [col.clone()] && k.shown(self.key_activation_polls) == "Active"
            })
    }

    /// Whether `t(<col>='…')` is a valid address.
    fn key_usable(&self, t: usize, col: &str) -> bool {
        if matches!(t, LEAD | OPPORTUNITY) && col == self.key_column {
            return !self.enforce_schema || self.key_is_active(t);
        }
        self.tables[t].attributes.contains_key(col)
            && self.tables[t].keys.iter().any(|k| {
                k.attributes == [col.to_owned()] && k.shown(self.key_activation_polls) == "Active"
            })
    }

    /// Whether the key column's values must be unique on `t`.
    fn key_unique(&self, t: usize) -> bool {
        matches!(t, LEAD | OPPORTUNITY) && (!self.enforce_schema || self.key_is_active(t))
    }

    /// The id of the (first created) row of `t` whose `col` is `value`.
    fn find_by_key(&self, t: usize, col: &str, value: &str) -> Option<String> {
        let rows = &self.tables[t].rows;
        if col == rows.key_column {
            return rows.find_by_key(value).map(str::to_owned);
        }
        // Another alternate key (not indexed; no hot path uses one).
        rows.values()
            .filter(|r| key_value(col, r) == Some(value))
            .min_by_key(|r| r.seq)
            .map(|r| r.id.clone())
    }

    /// Logical name of the alternate key on the key column (for error messages).
    fn key_name(&self, t: usize) -> String {
        self.tables[t]
            .keys
            .iter()
            .find(|k| k.attributes == [self.key_column.clone()])
            .map_or_else(
                || format!("{}key", self.key_column),
                |k| k.logical_name.clone(),
            )
    }

    fn row(&self, t: usize, id: &str) -> Option<&Row> {
        self.tables[t].rows.get(&id.to_ascii_lowercase())
    }

    /// Inserts a row (version 1) without any validation; returns its id.
    fn insert_row(
        &mut self,
        t: usize,
        id: Option<String>,
        statecode: i64,
        statuscode: i64,
        mut columns: Map<String, Value>,
    ) -> String {
        let id = id.unwrap_or_else(new_id).to_ascii_lowercase();
        if t == OPPORTUNITY {
            columns
                .entry("_transactioncurrencyid_value")
                .or_insert_with(|| json!(self.base_currency));
            columns
                .entry("_ownerid_value")
                .or_insert_with(|| self.user_id());
        }
        let now = self.now();
        self.seq += 1;
        let row = Row {
            id: id.clone(),
            seq: self.seq,
            version: 1,
            statecode,
            statuscode,
            createdon: now.clone(),
            modifiedon: now,
            columns,
        };
        self.tables[t].rows.insert(row);
        self.derive(t, &id);
        id
    }

    /// Records a change of row `id`: version + 1, `modifiedon` now, computed columns.
    fn touch(&mut self, t: usize, id: &str) {
        let now = self.now();
        self.tables[t].rows.update(id, |row| {
            row.version += 1;
            row.modifiedon = now;
        });
        self.derive(t, id);
    }

    /// Recomputes the columns the platform derives (exchange rate and `_base` money, full name).
    fn derive(&mut self, t: usize, id: &str) {
        match t {
            OPPORTUNITY => {
                let currency = self.tables[t].rows[id]
                    .columns
                    .get("_transactioncurrencyid_value")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_lowercase);
                let rate = currency
                    .and_then(|c| self.tables[CURRENCY].rows.get(&c))
                    .and_then(|c| c.columns.get("exchangerate"))
                    .and_then(Value::as_f64)
                    .filter(|r| *r > 0.0)
                    .unwrap_or(1.0);
                self.tables[t].rows.update(id, |row| {
                    row.columns.insert("exchangerate".into(), json!(rate));
                    for col in ["estimatedvalue", "actualvalue"] {
                        let base = format!("{col}_base");
                        match row.columns.get(col).and_then(Value::as_f64) {
                            Some(v) => {
                                let b = (v / rate * 10_000.0).round() / 10_000.0;
                                row.columns.insert(base, json!(b));
                            }
                            None => {
                                row.columns.remove(&base);
                            }
                        }
                    }
                });
            }
            CONTACT => self.tables[t].rows.update(id, |row| {
                let parts: Vec<&str> = ["firstname", "lastname"]
                    .iter()
                    .filter_map(|c| row.text(c))
                    .collect();
                if !parts.is_empty() {
                    let full = parts.join(" ");
                    row.columns.insert("fullname".into(), json!(full));
                }
            }),
            _ => {}
        }
    }

    /// Wins (`state` 1) or loses (2) open opportunity `id` and adds its `opportunityclose` row.
    fn close_opportunity(&mut self, id: &str, state: i64, status: i64, close: Map<String, Value>) {
        let today = self.today();
        let opportunity = &self.tables[OPPORTUNITY].rows[id];
        let revenue = close
            .get("actualrevenue")
            .filter(|v| !v.is_null())
            .or_else(|| opportunity.columns.get("estimatedvalue"))
            .cloned();
        let close_date = close
            .get("actualend")
            .and_then(Value::as_str)
            .and_then(|d| d.get(..10))
            .map_or(today, str::to_owned);
        let currency = opportunity
            .columns
            .get("_transactioncurrencyid_value")
            .cloned();
        self.tables[OPPORTUNITY].rows.update(id, |row| {
            row.statecode = state;
            row.statuscode = status;
            if let Some(revenue) = revenue {
                row.columns.insert("actualvalue".into(), revenue);
            }
            row.columns
                .insert("actualclosedate".into(), json!(close_date));
        });
        self.touch(OPPORTUNITY, id);
        let mut columns: Map<String, Value> = close
            .into_iter()
            .filter(|(k, v)| !(is_lookup_value(k) && v.is_null()))
            .collect();
        columns.insert("_opportunityid_value".into(), json!(id));
        columns.insert("_regardingobjectid_value".into(), json!(id));
        columns.insert("opportunitystatecode".into(), json!(state));
        columns.insert("opportunitystatuscode".into(), json!(status));
        if let Some(currency) = currency {
            columns.insert("_transactioncurrencyid_value".into(), currency);
        }
        self.insert_row(OPPORTUNITY_CLOSE, None, 1, 2, columns);
    }

    /// Reopens opportunity `id` with `status`; its completed close rows become Canceled.
    fn reopen_opportunity(&mut self, id: &str, status: i64) {
        self.tables[OPPORTUNITY].rows.update(id, |row| {
            row.statecode = 0;
            row.statuscode = status;
        });
        self.touch(OPPORTUNITY, id);
        let closes: Vec<String> = self.tables[OPPORTUNITY_CLOSE]
            .rows
            .values()
            .filter(|r| {
                r.statecode == 1
                    && r.columns
                        .get("_opportunityid_value")
                        .and_then(Value::as_str)
                        == Some(id)
            })
            .map(|r| r.id.clone())
            .collect();
        for close in closes {
            self.tables[OPPORTUNITY_CLOSE].rows.update(&close, |row| {
                row.statecode = 2;
                row.statuscode = 3;
            });
            self.touch(OPPORTUNITY_CLOSE, &close);
        }
    }

    /// Qualifies open lead `lead_id`; returns the created rows as (table, id), account first.
    fn qualify(&mut self, lead_id: &str, q: &Qualify) -> Vec<(usize, String)> {
        let lead = self.tables[LEAD].rows[lead_id].clone();
        let copy = |columns: &[&str]| -> Map<String, Value> {
            columns
                .iter()
                .filter_map(|c| {
                    lead.columns
                        .get(*c)
                        .filter(|v| !v.is_null())
                        .map(|v| ((*c).to_owned(), v.clone()))
                })
                .collect()
        };
        let address = [
            "address1_line1",
            "address1_city",
            "address1_stateorprovince",
            "address1_postalcode",
            "address1_country",
        ];
        let mut created = Vec::new();
        let mut account = None;
        if q.account
            && q.customer.is_none()
            && let Some(company) = lead.text("companyname")
        {
            let mut columns =
                copy(&[&address[..], &["telephone1", "websiteurl", "emailaddress1"]].concat());
            columns.insert("name".into(), json!(company));
            columns.insert("_originatingleadid_value".into(), json!(lead.id));
            let id = self.insert_row(ACCOUNT, None, 0, 1, columns);
            created.push((ACCOUNT, id.clone()));
            account = Some(id);
        }
        let mut contact = None;
        if q.contact && (lead.text("firstname").is_some() || lead.text("lastname").is_some()) {
            let mut columns = copy(
                &[
                    &address[..],
                    &[
                        "firstname",
                        "lastname",
                        "emailaddress1",
                        "telephone1",
                        "mobilephone",
                        "jobtitle",
                    ],
                ]
                .concat(),
            );
            columns.insert("_originatingleadid_value".into(), json!(lead.id));
            if let Some(account) = &account {
                columns.insert("_parentcustomerid_value".into(), json!(account));
            }
            let id = self.insert_row(CONTACT, None, 0, 1, columns);
            created.push((CONTACT, id.clone()));
            contact = Some(id);
        }
        let mut opportunity = None;
        if q.opportunity {
            let mut columns = copy(&["description", "qualificationcomments"]);
            if let Some(subject) = lead.columns.get("subject").filter(|v| !v.is_null()) {
                columns.insert("name".into(), subject.clone());
            }
            for (source, target) in &self.qualify_maps {
                if let Some(v) = lead.columns.get(source) {
                    columns.insert(target.clone(), v.clone());
                }
            }
            columns.insert("_originatingleadid_value".into(), json!(lead.id));
            let (parent_account, parent_contact) = match &q.customer {
                Some((ACCOUNT, id)) => (Some(id.clone()), contact.clone()),
                Some((_, id)) => (account.clone(), Some(id.clone())),
                None => (account.clone(), contact.clone()),
            };
            let customer = q
                .customer
                .as_ref()
                .map(|(_, id)| id.clone())
                .or_else(|| account.clone())
                .or_else(|| contact.clone());
            for (col, value) in [
                ("_customerid_value", customer),
                ("_parentaccountid_value", parent_account),
                ("_parentcontactid_value", parent_contact),
                (
                    "_transactioncurrencyid_value",
                    q.currency
                        .clone()
                        .or_else(|| lead.text("_transactioncurrencyid_value").map(str::to_owned)),
                ),
                (
                    "_ownerid_value",
                    lead.text("_ownerid_value").map(str::to_owned),
                ),
            ] {
                if let Some(value) = value {
                    columns.insert(col.into(), json!(value));
                }
            }
            let id = self.insert_row(OPPORTUNITY, None, 0, 1, columns);
            created.push((OPPORTUNITY, id.clone()));
            opportunity = Some(id);
        }
        self.tables[LEAD].rows.update(lead_id, |row| {
            row.statecode = 1;
            row.statuscode = q.status;
            if let Some(opportunity) = opportunity {
                row.columns
                    .insert("_qualifyingopportunityid_value".into(), json!(opportunity));
            }
        });
        self.touch(LEAD, lead_id);
        created
    }

    /// A row as the test accessors return it.
    fn view(&self, t: usize, row: &Row) -> Value {
        Value::Object(row_view(t, row))
    }

    fn views(&self, t: usize) -> Vec<Value> {
        let mut rows: Vec<&Row> = self.tables[t].rows.values().collect();
        rows.sort_by_key(|r| r.seq);
        rows.into_iter().map(|r| self.view(t, r)).collect()
    }
}

/// `{<pk>, statecode, statuscode, versionnumber, createdon, modifiedon, <columns>}`.
fn row_view(t: usize, row: &Row) -> Map<String, Value> {
    let mut obj = Map::new();
    obj.insert(TABLES[t].pk.into(), json!(row.id));
    obj.insert("statecode".into(), json!(row.statecode));
    obj.insert("statuscode".into(), json!(row.statuscode));
    obj.insert("versionnumber".into(), json!(row.version));
    obj.insert("createdon".into(), json!(row.createdon));
    obj.insert("modifiedon".into(), json!(row.modifiedon));
    for (k, v) in &row.columns {
        obj.insert(k.clone(), v.clone());
    }
    obj
}

/// `columns` as an object (`null` = empty); panics otherwise (test helpers).
fn object(columns: Value, what: &str) -> Map<String, Value> {
    match columns {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => panic!("{what}: columns must be an object, got {other}"),
    }
}

/// Fake Dataverse Web API (`/api/data/v9.2/...`). Every request needs
/// `Authorization: Bearer <non-empty>`.
///
/// Tables: `lead` (`leads`, `leadid`), `opportunity` (`opportunities`, `opportunityid`),
/// `account` (`accounts`, `accountid`), `contact` (`contacts`, `contactid`),
/// `transactioncurrency` (`transactioncurrencies`, `transactioncurrencyid`; USD (the base
/// currency) and EUR are seeded) and `opportunityclose` (`opportunitycloses`, `activityid`).
/// `lead` and `opportunity` are addressable by the key column given to [`start`](Self::start).
///
/// Choices where the spec marks the wire behaviour unverified:
/// - key value taken by another row (PATCH by id or POST setting the key column): **412**
///   `0x80060892` DuplicateRecordEntityKey;
/// - PATCH of anything but a reopen on a Won/Lost opportunity: 400 `0x8004d103`;
/// - `WinOpportunity`/`LoseOpportunity` errors, `0x80100005`, `0x80040515`, `0x8004051a`,
///   `0x80048408`: 400; a missing opportunity: 404 `0x80040217`;
/// - create-only conflict: 412 with code `""` (the documented body), except on `lead`, which
///   keeps the field-reported `0x80040237` the existing tests pin;
/// - a string longer than the column's MaxLength: 400 `0x80044331`.
#[derive(Debug)]
pub struct FakeDataverse {
    server: FakeServer,
    state: Arc<Mutex<State>>,
}

impl Deref for FakeDataverse {
    type Target = FakeServer;
    fn deref(&self) -> &FakeServer {
        &self.server
    }
}

impl FakeDataverse {
    /// Starts the fake over plain HTTP; `key_column` is the alternate key column accepted in
    /// `leads(<key_column>='…')` and `opportunities(<key_column>='…')` URLs (its metadata does
    /// not exist until created or [`with_key_column`](Self::with_key_column)).
    pub async fn start(key_column: &str) -> Self {
        Self::start_inner(key_column, None).await
    }

    /// Like [`start`](Self::start) but over HTTPS; `base_url` is `https://{host}:{port}`.
    pub async fn start_tls(
        key_column: &str,
        acceptor: tokio_native_tls::TlsAcceptor,
        host: &str,
    ) -> Self {
        Self::start_inner(key_column, Some((acceptor, host.to_owned()))).await
    }

    async fn start_inner(
        key_column: &str,
        tls: Option<(tokio_native_tls::TlsAcceptor, String)>,
    ) -> Self {
        let state = Arc::new(Mutex::new(State::new(key_column)));
        let handler_state = state.clone();
        let server = FakeServer::start(
            Box::new(move |req, base| handle(&handler_state, req, base)),
            fault_body,
            tls,
        )
        .await;
        Self { server, state }
    }

    /// Builder form of [`set_schema`](Self::set_schema): `true` = key column exists and its
    /// alternate key is `Active` (on `lead` and `opportunity`); `false` = neither exists.
    pub fn with_key_column(self, exists: bool) -> Self {
        self.set_schema(exists, exists.then_some("Active"));
        self
    }

    /// Sets, on both `lead` and `opportunity`, whether the key column exists and the status of
    /// its alternate key (`None` = no key). A `Pending`/`InProgress` key progresses on Keys reads
    /// like a created one.
    pub fn set_schema(&self, column_exists: bool, key_status: Option<&str>) {
        self.set_schema_on("lead", column_exists, key_status);
        self.set_schema_on("opportunity", column_exists, key_status);
    }

    /// [`set_schema`](Self::set_schema) for one table (`"lead"` or `"opportunity"`).
    pub fn set_schema_on(&self, table: &str, column_exists: bool, key_status: Option<&str>) {
        let t = table_arg(table);
        let mut s = lock(&self.state);
        let col = s.key_column.clone();
        let table = &mut s.tables[t];
        if column_exists {
            table
                .attributes
                .entry(col.clone())
                .or_insert_with(|| Attr::custom_text(t, &col, Some(100)));
        } else {
            table.attributes.remove(&col);
        }
        table.keys.retain(|k| !k.attributes.contains(&col));
        if let Some(status) = key_status {
            table.keys.push(EntityKey::new(
                &format!("{col}key"),
                vec![col],
                status,
                false,
            ));
        }
    }

    /// Number of Keys reads after which a new key reports `Active` (default 2: Pending,
    /// InProgress, Active).
    pub fn set_key_activation_polls(&self, n: usize) {
        lock(&self.state).key_activation_polls = n;
    }

    /// When `true` (default `false`), on `lead` and `opportunity` requests addressed by the key
    /// column fail with 400 unless the column exists with an `Active` key, and on every table
    /// writes of unknown columns fail (400 `0x80060888`) and unknown columns in `$select`,
    /// `$filter` or `$orderby` fail (400 `0x0`). Requests by primary id are not gated on the key,
    /// as in Dataverse; only their columns are checked.
    pub fn set_enforce_schema(&self, enforce: bool) {
        lock(&self.state).enforce_schema = enforce;
    }

    /// Declares an extra `lead` column (a text column of unlimited length).
    pub fn add_column(&self, logical_name: &str) {
        self.add_column_on("lead", logical_name);
    }

    /// Declares an extra text column on `table`.
    pub fn add_column_on(&self, table: &str, logical_name: &str) {
        let t = table_arg(table);
        lock(&self.state).tables[t]
            .attributes
            .entry(logical_name.to_owned())
            .or_insert_with(|| Attr::custom_text(t, logical_name, None));
    }

    /// Whether column `logical_name` exists on `lead`.
    pub fn has_column(&self, logical_name: &str) -> bool {
        self.has_column_on("lead", logical_name)
    }

    /// Whether column `logical_name` exists on `table`.
    pub fn has_column_on(&self, table: &str, logical_name: &str) -> bool {
        lock(&self.state).tables[table_arg(table)]
            .attributes
            .contains_key(logical_name)
    }

    /// The stored metadata of column `name` on `table` (as `Attributes(LogicalName='…')`
    /// returns it, e.g. with `OptionSet.Options[].Value` for a choice), or `None`.
    pub fn attribute(&self, table: &str, name: &str) -> Option<Value> {
        lock(&self.state).tables[table_arg(table)]
            .attributes
            .get(name)
            .map(|a| a.meta.clone())
    }

    /// Current index status of the alternate key on the key column of `lead` (not counted as a
    /// read).
    pub fn key_status(&self) -> Option<String> {
        self.key_status_on("lead")
    }

    /// Current index status of the alternate key on the key column of `table` (not counted as
    /// a read).
    pub fn key_status_on(&self, table: &str) -> Option<String> {
        let s = lock(&self.state);
        s.tables[table_arg(table)]
            .keys
            .iter()
            .find(|k| k.attributes.contains(&s.key_column))
            .map(|k| k.shown(s.key_activation_polls))
    }

    /// The configured key column.
    pub fn key_column(&self) -> String {
        lock(&self.state).key_column.clone()
    }

    /// The ids `WhoAmI` returns.
    pub fn who_am_i(&self) -> Value {
        lock(&self.state).who_am_i.clone()
    }

    /// Moves the fake's clock (`modifiedon`, `createdon`, default close dates) forward.
    pub fn advance_clock(&self, seconds: u64) {
        let secs = i64::try_from(seconds).expect("a sane number of seconds");
        lock(&self.state).clock_offset_secs += secs;
    }

    /// All leads (ordered by key value) as `{leadid, statecode, statuscode, versionnumber,
    /// createdon, modifiedon, <columns incl. key and _x_value lookups>}`.
    pub fn leads(&self) -> Vec<Value> {
        let s = lock(&self.state);
        let col = s.key_column.clone();
        let mut rows: Vec<&Row> = s.tables[LEAD].rows.values().collect();
        rows.sort_by(|a, b| {
            let key = |r: &Row| {
                r.columns
                    .get(&col)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            key(a).cmp(&key(b)).then(a.seq.cmp(&b.seq))
        });
        rows.into_iter().map(|r| s.view(LEAD, r)).collect()
    }

    /// The lead with key `key_value`, shaped like [`leads`](Self::leads).
    pub fn lead(&self, key_value: &str) -> Option<Value> {
        let s = lock(&self.state);
        let col = s.key_column.clone();
        s.find_by_key(LEAD, &col, key_value)
            .map(|id| s.view(LEAD, &s.tables[LEAD].rows[&id]))
    }

    /// The lead with primary id `id`, shaped like [`leads`](Self::leads).
    pub fn lead_by_id(&self, id: &str) -> Option<Value> {
        let s = lock(&self.state);
        s.row(LEAD, id).map(|r| s.view(LEAD, r))
    }

    /// Creates an open lead (version 1) with `columns` (an object, or null); returns its leadid.
    /// Panics if the key already exists.
    pub fn insert_lead(&self, key_value: &str, columns: Value) -> String {
        let mut columns = object(columns, "insert_lead");
        let mut s = lock(&self.state);
        let col = s.key_column.clone();
        assert!(
            s.find_by_key(LEAD, &col, key_value).is_none(),
            "insert_lead: a lead with key {key_value} already exists"
        );
        columns.insert(col, json!(key_value));
        s.insert_row(LEAD, None, 0, 1, columns)
    }

    fn lead_id(s: &State, key_value: &str, what: &str) -> String {
        s.find_by_key(LEAD, &s.key_column, key_value)
            .unwrap_or_else(|| panic!("{what}: no lead {key_value}"))
    }

    /// Sets state and status of a lead (e.g. 1/3 qualified, 2/4 disqualified); bumps its version.
    pub fn set_lead_state(&self, key_value: &str, statecode: i64, statuscode: i64) {
        let mut s = lock(&self.state);
        let id = Self::lead_id(&s, key_value, "set_lead_state");
        s.tables[LEAD].rows.update(&id, |row| {
            row.statecode = statecode;
            row.statuscode = statuscode;
        });
        s.touch(LEAD, &id);
    }

    /// Simulates a CRM user edit of one column; bumps the version and `modifiedon`.
    pub fn set_lead_column(&self, key_value: &str, column: &str, value: Value) {
        let mut s = lock(&self.state);
        let id = Self::lead_id(&s, key_value, "set_lead_column");
        s.tables[LEAD].rows.update(&id, |row| {
            row.columns.insert(column.to_owned(), value);
        });
        s.touch(LEAD, &id);
    }

    /// What a seller's "Qualify" does to open lead `key_value`: the lead becomes Qualified
    /// (1/3); an account named after `companyname` (if any) and a contact (if the lead has a
    /// name) are created; a new open opportunity gets `name` ← `subject`, `description`,
    /// `qualificationcomments`, `_originatingleadid_value` ← the lead and `_customerid_value` ←
    /// the account (else the contact). Custom columns, such as the key column, are **not**
    /// copied unless mapped with [`add_qualify_mapping`](Self::add_qualify_mapping). The lead's
    /// `_qualifyingopportunityid_value` is set. Returns the opportunity id. Panics if the lead
    /// is missing or not open. Not counted in [`write_count`](Self::write_count).
    pub fn qualify_lead(&self, key_value: &str) -> String {
        let mut s = lock(&self.state);
        let id = Self::lead_id(&s, key_value, "qualify_lead");
        assert_eq!(
            s.tables[LEAD].rows[&id].statecode, 0,
            "qualify_lead: lead {key_value} is not open"
        );
        let created = s.qualify(
            &id,
            &Qualify {
                account: true,
                contact: true,
                opportunity: true,
                status: 3,
                currency: None,
                customer: None,
            },
        );
        created
            .into_iter()
            .find(|(t, _)| *t == OPPORTUNITY)
            .map(|(_, id)| id)
            .expect("an opportunity was created")
    }

    /// Adds a lead → opportunity attribute map (as an admin would on the
    /// `opportunity_originating_lead` relationship) so QualifyLead copies `source` to `target`.
    pub fn add_qualify_mapping(&self, source: &str, target: &str) {
        lock(&self.state)
            .qualify_maps
            .push((source.to_owned(), target.to_owned()));
    }

    /// All opportunities (in creation order), shaped like [`leads`](Self::leads).
    pub fn opportunities(&self) -> Vec<Value> {
        lock(&self.state).views(OPPORTUNITY)
    }

    /// The opportunity whose key column is `key_value`.
    pub fn opportunity(&self, key_value: &str) -> Option<Value> {
        let s = lock(&self.state);
        s.find_by_key(OPPORTUNITY, &s.key_column, key_value)
            .map(|id| s.view(OPPORTUNITY, &s.tables[OPPORTUNITY].rows[&id]))
    }

    /// The opportunity with primary id `id`.
    pub fn opportunity_by_id(&self, id: &str) -> Option<Value> {
        let s = lock(&self.state);
        s.row(OPPORTUNITY, id).map(|r| s.view(OPPORTUNITY, r))
    }

    /// Creates an open opportunity (0/1, version 1) with the key column set to `key_value` (if
    /// any) and `columns` (an object or null; may hold lookups directly, e.g.
    /// `_customerid_value`). Without `_transactioncurrencyid_value` it gets the base currency.
    /// Returns its id. Panics if the key value is taken or `columns` holds `statecode`,
    /// `statuscode` or `opportunityid` (use [`set_opportunity_state`](Self::set_opportunity_state)).
    pub fn insert_opportunity(&self, key_value: Option<&str>, columns: Value) -> String {
        let mut columns = object(columns, "insert_opportunity");
        for bad in ["statecode", "statuscode", "opportunityid", "versionnumber"] {
            assert!(
                !columns.contains_key(bad),
                "insert_opportunity: {bad} cannot be given"
            );
        }
        let mut s = lock(&self.state);
        if let Some(key) = key_value {
            let col = s.key_column.clone();
            assert!(
                s.find_by_key(OPPORTUNITY, &col, key).is_none(),
                "insert_opportunity: an opportunity with key {key} already exists"
            );
            columns.insert(col, json!(key));
        }
        s.insert_row(OPPORTUNITY, None, 0, 1, columns)
    }

    fn opportunity_id(s: &State, id: &str, what: &str) -> String {
        s.row(OPPORTUNITY, id)
            .map(|r| r.id.clone())
            .unwrap_or_else(|| panic!("{what}: no opportunity {id}"))
    }

    /// A seller's edit of one column of opportunity `id` (whatever its state); bumps the version
    /// and `modifiedon`.
    pub fn set_opportunity_column(&self, id: &str, column: &str, value: Value) {
        let mut s = lock(&self.state);
        let id = Self::opportunity_id(&s, id, "set_opportunity_column");
        assert!(
            !matches!(column, "statecode" | "statuscode"),
            "set_opportunity_column: use set_opportunity_state"
        );
        s.tables[OPPORTUNITY].rows.update(&id, |row| {
            row.columns.insert(column.to_owned(), value);
        });
        s.touch(OPPORTUNITY, &id);
    }

    /// A seller changing the state in the UI: 1/3 wins and 2/4|5 loses an open opportunity (with
    /// an `opportunityclose` row, `actualvalue` ← `estimatedvalue`, `actualclosedate` ← today);
    /// 0/1|2 reopens a closed one (its close rows become Canceled) or changes an open one's
    /// status. Bumps the version. Panics on an invalid pair or on closing a closed opportunity.
    pub fn set_opportunity_state(&self, id: &str, statecode: i64, statuscode: i64) {
        let mut s = lock(&self.state);
        let id = Self::opportunity_id(&s, id, "set_opportunity_state");
        assert!(
            valid_pair(OPPORTUNITY, statecode, statuscode),
            "set_opportunity_state: {statuscode} is not a status of state {statecode}"
        );
        let current = s.tables[OPPORTUNITY].rows[&id].statecode;
        match (current, statecode) {
            (0, 0) => {
                s.tables[OPPORTUNITY]
                    .rows
                    .update(&id, |row| row.statuscode = statuscode);
                s.touch(OPPORTUNITY, &id);
            }
            (_, 0) => s.reopen_opportunity(&id, statuscode),
            (0, _) => {
                let subject = if statecode == 1 { "Won" } else { "Lost" };
                let close = object(
                    json!({ "subject": format!("Opportunity Close: {subject}") }),
                    "close",
                );
                s.close_opportunity(&id, statecode, statuscode, close);
            }
            _ => panic!("set_opportunity_state: opportunity {id} is already closed"),
        }
    }

    /// All `opportunityclose` rows (creation order): `{activityid, statecode, statuscode, …,
    /// subject, description, actualrevenue, actualend, _opportunityid_value,
    /// opportunitystatecode, opportunitystatuscode}`.
    pub fn opportunity_closes(&self) -> Vec<Value> {
        lock(&self.state).views(OPPORTUNITY_CLOSE)
    }

    /// All accounts (creation order).
    pub fn accounts(&self) -> Vec<Value> {
        lock(&self.state).views(ACCOUNT)
    }

    /// Creates an active account with `columns`; returns its id.
    pub fn insert_account(&self, columns: Value) -> String {
        let columns = object(columns, "insert_account");
        lock(&self.state).insert_row(ACCOUNT, None, 0, 1, columns)
    }

    /// A user's edit of one column of account `id`; bumps its version and `modifiedon`.
    /// Panics when there is no such account.
    pub fn set_account_column(&self, id: &str, column: &str, value: Value) {
        let mut s = lock(&self.state);
        let id = s
            .row(ACCOUNT, id)
            .map(|r| r.id.clone())
            .unwrap_or_else(|| panic!("set_account_column: no account {id}"));
        s.tables[ACCOUNT].rows.update(&id, |row| {
            row.columns.insert(column.to_owned(), value);
        });
        s.touch(ACCOUNT, &id);
    }

    /// All contacts (creation order).
    pub fn contacts(&self) -> Vec<Value> {
        lock(&self.state).views(CONTACT)
    }

    /// Creates an active contact with `columns` (`fullname` is computed); returns its id.
    pub fn insert_contact(&self, columns: Value) -> String {
        let columns = object(columns, "insert_contact");
        lock(&self.state).insert_row(CONTACT, None, 0, 1, columns)
    }

    /// All currencies (creation order).
    pub fn currencies(&self) -> Vec<Value> {
        lock(&self.state).views(CURRENCY)
    }

    /// Adds an active currency `iso` (exchange rate 1.0); returns its id. Panics if it exists.
    pub fn add_currency(&self, iso: &str) -> String {
        let mut s = lock(&self.state);
        assert!(
            currency_id(&s, iso).is_none(),
            "add_currency: {iso} already exists"
        );
        s.insert_currency(iso, iso, iso, 1.0)
    }

    /// Deletes currency `iso`. Panics if it is missing or the base currency.
    pub fn remove_currency(&self, iso: &str) {
        let mut s = lock(&self.state);
        let id = currency_id(&s, iso).unwrap_or_else(|| panic!("remove_currency: no {iso}"));
        assert_ne!(
            id, s.base_currency,
            "remove_currency: {iso} is the base currency"
        );
        s.tables[CURRENCY].rows.remove(&id);
    }

    /// The id of currency `iso` (case-insensitive), active or not.
    pub fn currency_id(&self, iso: &str) -> Option<String> {
        currency_id(&lock(&self.state), iso)
    }

    /// The id of the base currency (USD).
    pub fn base_currency_id(&self) -> String {
        lock(&self.state).base_currency.clone()
    }

    /// Number of successful data writes on any table: upserts, creates, close actions and
    /// QualifyLead calls over HTTP (not the test helpers).
    pub fn write_count(&self) -> usize {
        lock(&self.state).tables.iter().map(|t| t.writes).sum()
    }

    /// Successful data writes addressed to `table` (a Win/Lose counts on `opportunity`, a
    /// QualifyLead on `lead`); these add up to [`write_count`](Self::write_count).
    pub fn write_count_on(&self, table: &str) -> usize {
        lock(&self.state).tables[table_arg(table)].writes
    }
}

fn currency_id(s: &State, iso: &str) -> Option<String> {
    s.tables[CURRENCY]
        .rows
        .values()
        .find(|r| {
            r.text("isocurrencycode")
                .is_some_and(|c| c.eq_ignore_ascii_case(iso))
        })
        .map(|r| r.id.clone())
}

// ---------------------------------------------------------------------------------------------
// Errors

fn dv_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

fn fault_body(status: u16, _retry_after: Option<u64>) -> String {
    let (code, message) = match status {
        429 => (
            "0x80072322",
            "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
                .to_owned(),
        ),
        _ => ("0x80040216", format!("Injected fault (HTTP {status})")),
    };
    json!({ "error": { "code": code, "message": message } }).to_string()
}

fn not_found_segment(segment: &str) -> Reply {
    dv_error(
        404,
        "0x8006088a",
        &format!("Resource not found for the segment '{segment}'."),
    )
}

fn method_not_allowed() -> Reply {
    dv_error(405, "0x80060888", "Method not allowed.")
}

/// 404 for a missing row: the key message for key addresses, ObjectDoesNotExist for ids.
fn not_found(t: usize, target: &Target) -> Reply {
    match target {
        Target::Key(..) => dv_error(
            404,
            "0x80060891",
            &format!(
                "A record with the specified key values does not exist in {} entity",
                TABLES[t].logical
            ),
        ),
        Target::Id(id) => dv_error(
            404,
            "0x80040217",
            &format!("{} With Id = {id} Does Not Exist", TABLES[t].logical),
        ),
    }
}

fn invalid_key(t: usize) -> Reply {
    dv_error(
        400,
        "0x80060888",
        &format!(
            "The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.{}'.",
            TABLES[t].logical
        ),
    )
}

fn payload_error(t: usize) -> Reply {
    dv_error(
        400,
        "0x80048d19",
        &format!(
            "Error identified in Payload provided by the user for Entity :'{}'.",
            TABLES[t].set
        ),
    )
}

/// A column that does not exist, in `$select`/`$filter`/`$orderby` (documented code `0x0`).
fn unknown_property_read(t: usize, column: &str) -> Reply {
    dv_error(
        400,
        "0x0",
        &format!(
            "Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{}'.",
            TABLES[t].logical
        ),
    )
}

/// A column that does not exist, in a written body (field-reported code `0x80060888`).
fn unknown_property_write(t: usize, column: &str) -> Reply {
    dv_error(
        400,
        "0x80060888",
        &format!(
            "Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{}'.",
            TABLES[t].logical
        ),
    )
}

fn undeclared_property(name: &str) -> Reply {
    dv_error(
        400,
        "0x80048d19",
        &format!(
            "An undeclared property '{name}' which only has property annotations in the payload but no property value was found in the payload. In OData, only declared navigation properties and declared named streams can be represented as properties without values."
        ),
    )
}

fn literal_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn cannot_convert(v: &Value, edm: &str) -> Reply {
    dv_error(
        400,
        "0x80048d19",
        &format!(
            "Cannot convert the literal '{}' to the expected type '{edm}'.",
            literal_text(v)
        ),
    )
}

fn create_conflict(t: usize) -> Reply {
    // `lead` keeps the field-reported code that the existing tests pin; the documented body
    // has an empty code.
    let code = if t == LEAD { "0x80040237" } else { "" };
    dv_error(
        412,
        code,
        "A record with matching key values already exists.",
    )
}

fn version_mismatch() -> Reply {
    dv_error(
        412,
        "0x80060882",
        "The version of the existing record doesn't match the RowVersion property provided.",
    )
}

fn invalid_state_status(t: usize, statecode: i64, statuscode: i64) -> Reply {
    let def = &TABLES[t];
    let state = def
        .states
        .iter()
        .find(|(s, _, _)| *s == statecode)
        .map_or_else(|| statecode.to_string(), |(_, l, _)| (*l).replace(' ', ""));
    dv_error(
        400,
        "0x80048408",
        &format!(
            "{statuscode} is not a valid status code for state code {}.{state} on {}.",
            def.state_enum, def.logical
        ),
    )
}

fn opportunity_read_only() -> Reply {
    // Code unverified: the spec only says Won/Lost rows are read-only until reopened.
    dv_error(
        400,
        "0x8004d103",
        "This opportunity is closed and read-only; reopen it first.",
    )
}

fn cannot_set_closed_state(statecode: i64) -> Reply {
    let (state, message) = if statecode == 1 {
        ("Won", "WinOpportunityRequest")
    } else {
        ("Lost", "LostOpportunityRequest")
    };
    dv_error(
        400,
        "0x80100005",
        &format!(
            "This message can not be used to set the state of opportunity to {state}. In order to set the state of opportunity to {state}, use the {message} message instead."
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Addressing

/// Parses a single-quoted OData string literal (`''` escapes a quote).
fn parse_quoted(s: &str) -> Option<String> {
    let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// Formats a value as a single-quoted OData string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// How a request addresses a row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Key(String, String),
    /// Lower-case hyphenated GUID.
    Id(String),
}

fn parse_guid(s: &str) -> Option<String> {
    uuid::Uuid::parse_str(s.trim()).ok().map(|u| u.to_string())
}

fn parse_target(inner: &str) -> Option<Target> {
    match inner.split_once('=') {
        Some((key, value)) => Some(Target::Key(
            key.trim().to_owned(),
            parse_quoted(value.trim())?,
        )),
        None => parse_guid(inner).map(Target::Id),
    }
}

/// The index of the `)` closing the `(` at `open`, skipping quoted literals.
fn closing_paren(s: &str, open: usize) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in s[open + 1..].char_indices() {
        match c {
            '\'' => quoted = !quoted,
            ')' if !quoted => return Some(open + 1 + i),
            _ => {}
        }
    }
    None
}

/// `set(inner)tail` → (`set`, `inner`, `tail`); `set` alone → (`set`, None, "").
fn split_resource(path: &str) -> Option<(&str, Option<&str>, &str)> {
    match path.find('(') {
        None => Some((path, None, "")),
        Some(open) => {
            let close = closing_paren(path, open)?;
            Some((
                &path[..open],
                Some(&path[open + 1..close]),
                &path[close + 1..],
            ))
        }
    }
}

/// A bind value (`/accounts(<id>)`, `accounts(<id>)`, or with the absolute base URL) →
/// (entity set, inner).
fn parse_reference(text: &str) -> Option<(&str, &str)> {
    let path = match text.find("/api/data/") {
        Some(i) => text[i + "/api/data/".len()..].split_once('/')?.1,
        None => text.strip_prefix('/').unwrap_or(text),
    };
    match split_resource(path)? {
        (set, Some(inner), "") => Some((set, inner)),
        _ => None,
    }
}

/// Resolves `target` on table `t`; `Ok(None)` = addressed correctly but missing.
fn resolve(s: &State, t: usize, target: &Target) -> Result<Option<String>, Reply> {
    match target {
        Target::Key(col, value) => {
            if !s.key_usable(t, col) {
                return Err(invalid_key(t));
            }
            Ok(s.find_by_key(t, col, value))
        }
        Target::Id(id) => Ok(s.tables[t].rows.contains_key(id).then(|| id.clone())),
    }
}

/// The lookup column behind nav property `nav` of table `t` and the tables it may refer to.
fn nav_property(s: &State, t: usize, nav: &str) -> Option<(String, Vec<&'static str>)> {
    let attributes = &s.tables[t].attributes;
    if let Some(attr) = attributes.get(nav)
        && matches!(attr.kind, Kind::Lookup(_) | Kind::Owner)
        && !attr.read_only
    {
        return Some((nav.to_owned(), attr.kind.targets()));
    }
    for (suffix, target) in [("_account", "account"), ("_contact", "contact")] {
        if let Some(column) = nav.strip_suffix(suffix)
            && attributes
                .get(column)
                .is_some_and(|a| a.kind == Kind::Customer)
        {
            return Some((column.to_owned(), vec![target]));
        }
    }
    None
}

/// Resolves the value of `<nav>@odata.bind` to the id of an existing row (or null).
fn bind_value(s: &State, nav: &str, targets: &[&'static str], v: &Value) -> Result<Value, Reply> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let bad = || {
        dv_error(
            400,
            "0x80048d19",
            &format!(
                "The value '{}' of '{nav}@odata.bind' is not a valid entity reference; expected '/<entityset>(<id>)'.",
                literal_text(v)
            ),
        )
    };
    let (set, inner) = v.as_str().and_then(parse_reference).ok_or_else(bad)?;
    let logical = logical_of_set(set).ok_or_else(bad)?;
    if !targets.contains(&logical) {
        return Err(dv_error(
            400,
            "0x80048d19",
            &format!(
                "The navigation property '{nav}' cannot refer to a record of '{logical}'; it refers to {}.",
                targets.join(" or ")
            ),
        ));
    }
    let Some(t) = table_index(logical) else {
        return parse_guid(inner).map(Value::String).ok_or_else(bad);
    };
    let target = parse_target(inner).ok_or_else(bad)?;
    match resolve(s, t, &target)? {
        Some(id) => Ok(Value::String(id)),
        // A missing referenced row: 400 (the spec's "not found" code in a payload error).
        None => Err(dv_error(
            400,
            "0x80040217",
            &match &target {
                Target::Id(id) => format!("{logical} With Id = {id} Does Not Exist"),
                Target::Key(..) => format!(
                    "A record with the specified key values does not exist in {logical} entity"
                ),
            },
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Writes

/// A validated write body.
#[derive(Debug, Default)]
struct Prepared {
    /// Column → converted value; lookups as `_x_value` → id (or null to clear).
    set: Map<String, Value>,
    statecode: Option<i64>,
    statuscode: Option<i64>,
    /// The primary key given in the body.
    pk: Option<String>,
}

/// Properties the `lead` upsert refuses (kept from the lead-only fake).
const LEAD_FIXED: &[&str] = &["statecode", "statuscode", "leadid", "versionnumber"];

/// Checks and converts a write body for table `t` (payload-level checks only: unknown and
/// read-only columns, nav properties and their targets, value types).
fn prepare(s: &State, t: usize, body: &Map<String, Value>) -> Result<Prepared, Reply> {
    let def = &TABLES[t];
    let table = &s.tables[t];
    let mut p = Prepared::default();
    for (k, v) in body {
        if k.starts_with('@') {
            continue;
        }
        if let Some((prop, annotation)) = k.split_once('@') {
            if annotation == "odata.bind" {
                let Some((column, targets)) = nav_property(s, t, prop) else {
                    return Err(undeclared_property(prop));
                };
                let value = bind_value(s, prop, &targets, v)?;
                if p.set.insert(format!("_{column}_value"), value).is_some() {
                    return Err(dv_error(
                        400,
                        "0x80048d19",
                        &format!(
                            "More than one navigation property of the lookup '{column}' is set in the payload."
                        ),
                    ));
                }
            } else if !body.contains_key(prop) {
                return Err(undeclared_property(prop));
            }
            continue;
        }
        if t == LEAD && LEAD_FIXED.contains(&k.as_str()) {
            return Err(dv_error(
                400,
                "0x80048d19",
                &format!("The property '{k}' cannot be set through an upsert of lead."),
            ));
        }
        if k == def.pk {
            let id = v
                .as_str()
                .and_then(parse_guid)
                .ok_or_else(|| cannot_convert(v, "Edm.Guid"))?;
            p.pk = Some(id);
            continue;
        }
        if k == "statecode" || k == "statuscode" {
            let n = v.as_i64().ok_or_else(|| cannot_convert(v, "Edm.Int32"))?;
            if k == "statecode" {
                p.statecode = Some(n);
            } else {
                p.statuscode = Some(n);
            }
            continue;
        }
        match table.attributes.get(k) {
            None => {
                if s.enforce_schema || is_lookup_value(k) {
                    return Err(unknown_property_write(t, k));
                }
                p.set.insert(k.clone(), v.clone());
            }
            Some(attr) if attr.read_only => {
                return Err(dv_error(
                    400,
                    "0x80048d19",
                    &format!(
                        "The property '{k}' of '{}' is read-only and cannot be written.",
                        def.logical
                    ),
                ));
            }
            Some(attr) if attr.kind.is_lookup() => {
                return Err(dv_error(
                    400,
                    "0x80048d19",
                    &format!(
                        "A 'PrimitiveValue' node with non-null value was found when trying to read the value of the navigation property '{k}'; write the lookup as '{k}@odata.bind'."
                    ),
                ));
            }
            Some(attr) => {
                let value = convert(t, k, attr, v)?;
                p.set.insert(k.clone(), value);
            }
        }
    }
    Ok(p)
}

/// Checks a written value against the column's type; money given as a numeric string becomes a
/// number, date-times are normalised to UTC seconds.
fn convert(t: usize, column: &str, attr: &Attr, v: &Value) -> Result<Value, Reply> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let kind = &attr.kind;
    let wrong = || cannot_convert(v, kind.edm());
    match kind {
        Kind::Text(_) | Kind::Memo(_) => {
            let text = v.as_str().ok_or_else(wrong)?;
            let max = match kind {
                Kind::Memo(m) => Some(*m),
                Kind::Text(m) => *m,
                _ => None,
            };
            if let Some(max) = max
                && text.chars().count() > max
            {
                // Code unverified (StringLengthTooLong).
                return Err(dv_error(
                    400,
                    "0x80044331",
                    &format!(
                        "A validation error occurred. The length of the '{column}' attribute of the '{}' entity exceeded the maximum allowed length of '{max}'.",
                        TABLES[t].logical
                    ),
                ));
            }
            Ok(v.clone())
        }
        Kind::Integer | Kind::BigInt | Kind::State | Kind::Status => {
            v.as_i64().map(Value::from).ok_or_else(wrong)
        }
        Kind::Picklist(options) => {
            let n = v.as_i64().ok_or_else(wrong)?;
            let options = if options.is_empty() {
                attr.meta
                    .pointer("/OptionSet/Options")
                    .and_then(Value::as_array)
                    .map(|o| o.iter().filter_map(|o| o.get("Value")?.as_i64()).collect())
                    .unwrap_or_default()
            } else {
                options.clone()
            };
            if !options.is_empty() && !options.contains(&n) {
                return Err(dv_error(
                    400,
                    "0x8004431a",
                    &format!(
                        "A validation error occurred. The value {n} of '{column}' on record of type '{}' is outside the valid range.",
                        TABLES[t].logical
                    ),
                ));
            }
            Ok(Value::from(n))
        }
        Kind::Money | Kind::Decimal | Kind::Double => match v {
            Value::Number(_) => Ok(v.clone()),
            Value::String(s) => {
                if let Ok(i) = s.trim().parse::<i64>() {
                    Ok(Value::from(i))
                } else {
                    s.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(Value::from)
                        .ok_or_else(wrong)
                }
            }
            _ => Err(wrong()),
        },
        Kind::Boolean => v.as_bool().map(Value::from).ok_or_else(wrong),
        Kind::DateOnly => match v.as_str() {
            Some(s) if is_date(s) => Ok(v.clone()),
            _ => Err(wrong()),
        },
        Kind::DateTime => v
            .as_str()
            .and_then(normalize_datetime)
            .map(Value::from)
            .ok_or_else(wrong),
        Kind::Id => v
            .as_str()
            .and_then(parse_guid)
            .map(Value::from)
            .ok_or_else(wrong),
        Kind::Lookup(_) | Kind::Customer | Kind::Owner => Err(wrong()),
    }
}

/// 412 `0x80060892` when `set` gives the key column a value another row of `t` holds.
///
/// The spec lists DuplicateRecordEntityKey without a verified HTTP status; the fake answers
/// 412 (the status of the other "record exists" precondition failures).
fn check_unique(
    s: &State,
    t: usize,
    own: Option<&str>,
    set: &Map<String, Value>,
) -> Result<(), Reply> {
    if !s.key_unique(t) {
        return Ok(());
    }
    let col = &s.key_column;
    let Some(value) = set.get(col).and_then(Value::as_str) else {
        return Ok(());
    };
    if s.tables[t].rows.key_taken(value, own) {
        return Err(dv_error(
            412,
            "0x80060892",
            &format!(
                "Entity Key {} violated. A record with the same value for {col} already exists. A duplicate record cannot be created. Try modifying the values of the key attributes and try again.",
                s.key_name(t)
            ),
        ));
    }
    Ok(())
}

/// Creates a row of `t` from a prepared body; `id` is the addressed id (create by id).
fn create_row(s: &mut State, t: usize, id: Option<String>, p: Prepared) -> Result<String, Reply> {
    if t != LEAD && p.statecode.is_some() {
        return Err(dv_error(
            400,
            "0x80040203",
            "statecode is not valid for create",
        ));
    }
    let status = match p.statuscode {
        None => default_status(t, 0),
        Some(st) if valid_pair(t, 0, st) => st,
        Some(st) => return Err(invalid_state_status(t, 0, st)),
    };
    let id = id.or(p.pk).unwrap_or_else(new_id);
    if s.tables[t].rows.contains_key(&id) {
        return Err(create_conflict(t));
    }
    check_unique(s, t, None, &p.set)?;
    let columns = p
        .set
        .into_iter()
        .filter(|(k, v)| !(is_lookup_value(k) && v.is_null()))
        .collect();
    Ok(s.insert_row(t, Some(id), 0, status, columns))
}

/// What an update does to the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    Set(i64, i64),
    Reopen(i64),
}

/// The opportunity rules: `statecode` 1/2 only through Win/Lose; a Won/Lost row accepts only a
/// reopen (`{"statecode":0}` with an optional open `statuscode`, nothing else); reopening an
/// open row fails; `statuscode` alone must belong to the current state.
fn opportunity_change(row: &Row, p: &Prepared) -> Result<Change, Reply> {
    let closed = row.statecode != 0;
    match p.statecode {
        Some(sc @ (1 | 2)) => Err(cannot_set_closed_state(sc)),
        Some(0) if !closed => Err(dv_error(
            400,
            "0x8004051a",
            "The opportunity is already in the open state.",
        )),
        Some(0) => {
            if !p.set.is_empty() {
                return Err(opportunity_read_only());
            }
            let status = p.statuscode.unwrap_or(1);
            if !valid_pair(OPPORTUNITY, 0, status) {
                return Err(invalid_state_status(OPPORTUNITY, 0, status));
            }
            Ok(Change::Reopen(status))
        }
        Some(other) => Err(invalid_state_status(
            OPPORTUNITY,
            other,
            p.statuscode.unwrap_or(0),
        )),
        None if closed => Err(opportunity_read_only()),
        None => match p.statuscode {
            Some(st) if valid_pair(OPPORTUNITY, 0, st) => Ok(Change::Set(0, st)),
            Some(st) => Err(invalid_state_status(OPPORTUNITY, 0, st)),
            None => Ok(Change::None),
        },
    }
}

/// Other tables: any valid state/status pair (`statecode` alone takes its default status).
fn generic_change(t: usize, row: &Row, p: &Prepared) -> Result<Change, Reply> {
    match (p.statecode, p.statuscode) {
        (None, None) => Ok(Change::None),
        (Some(sc), st) => {
            let st = st.unwrap_or_else(|| default_status(t, sc));
            if valid_pair(t, sc, st) {
                Ok(Change::Set(sc, st))
            } else {
                Err(invalid_state_status(t, sc, st))
            }
        }
        (None, Some(st)) if valid_pair(t, row.statecode, st) => Ok(Change::Set(row.statecode, st)),
        (None, Some(st)) => Err(invalid_state_status(t, row.statecode, st)),
    }
}

/// Applies a prepared body to existing row `id`; `key` = the key column of a key address
/// (stripped from the body, as Dataverse does on update).
fn update_row(
    s: &mut State,
    t: usize,
    id: &str,
    mut p: Prepared,
    key: Option<&str>,
) -> Result<(), Reply> {
    if let Some(col) = key {
        p.set.remove(col);
    }
    if let Some(pk) = &p.pk
        && pk != id
    {
        return Err(dv_error(
            400,
            "0x80048d19",
            &format!("The property '{}' is not valid for update.", TABLES[t].pk),
        ));
    }
    let row = &s.tables[t].rows[id];
    let change = match t {
        LEAD if row.statecode != 0 => {
            return Err(dv_error(
                400,
                "0x8004f04a",
                "This lead is read-only because it has been qualified or disqualified. Reactivate it to edit.",
            ));
        }
        LEAD => Change::None,
        OPPORTUNITY => opportunity_change(row, &p)?,
        _ => generic_change(t, row, &p)?,
    };
    check_unique(s, t, Some(id), &p.set)?;
    s.tables[t].rows.update(id, |row| {
        for (k, v) in p.set {
            if is_lookup_value(&k) && v.is_null() {
                row.columns.remove(&k);
            } else {
                row.columns.insert(k, v);
            }
        }
        if let Change::Set(sc, st) = change {
            row.statecode = sc;
            row.statuscode = st;
        }
    });
    match change {
        Change::None | Change::Set(..) => s.touch(t, id),
        Change::Reopen(st) => s.reopen_opportunity(id, st),
    }
    Ok(())
}

fn wants_representation(req: &Recorded) -> bool {
    req.header("prefer")
        .is_some_and(|p| p.contains("return=representation"))
}

/// A successful create or update, for [`write_reply`].
struct Written<'a> {
    id: &'a str,
    created: bool,
    /// (key column, value) when the request addressed the row by key.
    key: Option<(&'a str, &'a str)>,
    select: Option<&'a [String]>,
}

/// The answer to a successful create or update.
fn write_reply(s: &State, t: usize, req: &Recorded, base: &str, w: &Written<'_>) -> Reply {
    let row = &s.tables[t].rows[w.id];
    if wants_representation(req) {
        let mut body = representation(s, t, row, w.select, &Annotations::of(req));
        body.insert(
            "@odata.context".into(),
            json!(entity_context(base, t, w.select)),
        );
        Reply::json(if w.created { 201 } else { 200 }, &Value::Object(body))
            .header("etag", row.etag())
            .header("odata-version", "4.0")
    } else {
        let set = TABLES[t].set;
        let entity = match w.key {
            Some((col, value)) => format!("{base}{API}{set}({col}={})", quote(value)),
            None => format!("{base}{API}{set}({})", w.id),
        };
        Reply::empty(204)
            .header("etag", row.etag())
            .header("odata-version", "4.0")
            .header("odata-entityid", entity)
    }
}

fn entity_context(base: &str, t: usize, select: Option<&[String]>) -> String {
    let sel = select.map(|c| c.join(",")).unwrap_or_default();
    format!("{base}{API}$metadata#{}({sel})/$entity", TABLES[t].set)
}

// ---------------------------------------------------------------------------------------------
// Reads

fn select_list(req: &Recorded) -> Option<Vec<String>> {
    req.query_value("$select").map(|s| {
        s.split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    })
}

/// The type of readable column `column` of `t` (`_x_value` for lookups), or `None`.
fn column_kind(s: &State, t: usize, column: &str) -> Option<Kind> {
    let attributes = &s.tables[t].attributes;
    if let Some(lookup) = lookup_column(column) {
        return attributes
            .get(lookup)
            .filter(|a| a.kind.is_lookup())
            .map(|a| a.kind.clone());
    }
    attributes
        .get(column)
        .filter(|a| !a.kind.is_lookup())
        .map(|a| a.kind.clone())
}

fn check_select(s: &State, t: usize, select: Option<&[String]>) -> Result<(), Reply> {
    if !s.enforce_schema {
        return Ok(());
    }
    for c in select.unwrap_or_default() {
        if column_kind(s, t, c).is_none() {
            return Err(unknown_property_read(t, c));
        }
    }
    Ok(())
}

/// 400 for a `$` query option other than `allowed`.
fn check_options(req: &Recorded, allowed: &[&str]) -> Result<(), Reply> {
    match req
        .query_pairs()
        .into_iter()
        .find(|(k, _)| k.starts_with('$') && !allowed.contains(&k.as_str()))
    {
        Some((k, _)) => Err(dv_error(
            400,
            "0x80060888",
            &format!(
                "The query option '{k}' is not supported here by the fake Dataverse (supported: {}).",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// The annotations a `Prefer: odata.include-annotations="…"` asks for.
#[derive(Debug, Default)]
struct Annotations(Vec<String>);

impl Annotations {
    fn of(req: &Recorded) -> Self {
        let Some(prefer) = req.header("prefer") else {
            return Self::default();
        };
        let Some(i) = prefer.find("odata.include-annotations=") else {
            return Self::default();
        };
        let rest = &prefer[i + "odata.include-annotations=".len()..];
        let value = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or_default(),
            None => rest.split(',').next().unwrap_or_default(),
        };
        Self(
            value
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        )
    }

    fn wants(&self, name: &str) -> bool {
        self.0.iter().any(|p| {
            p == "*"
                || p == name
                || p.strip_suffix('*')
                    .is_some_and(|prefix| name.starts_with(prefix))
        })
    }
}

/// (logical name, nav property, primary name) of the row lookup `column` of `t` points at.
fn describe_lookup(
    s: &State,
    t: usize,
    column: &str,
    id: &str,
) -> Option<(&'static str, String, Option<String>)> {
    let kind = &s.tables[t].attributes.get(column)?.kind;
    let targets = kind.targets();
    let nav = |logical: &str| {
        if *kind == Kind::Customer {
            format!("{column}_{logical}")
        } else {
            column.to_owned()
        }
    };
    for logical in &targets {
        if let Some(ti) = table_index(logical)
            && let Some(row) = s.row(ti, id)
        {
            let name = row.text(TABLES[ti].name).map(str::to_owned);
            return Some((logical, nav(logical), name));
        }
    }
    let logical = *targets.first()?;
    Some((logical, nav(logical), None))
}

fn annotate(s: &State, t: usize, obj: &mut Map<String, Value>, ann: &Annotations) {
    if ann.0.is_empty() {
        return;
    }
    let formatted = "OData.Community.Display.V1.FormattedValue";
    let mut extra = Vec::new();
    for (k, v) in obj.iter() {
        if let Some(column) = lookup_column(k)
            && let Some(id) = v.as_str()
            && let Some((logical, nav, name)) = describe_lookup(s, t, column, id)
        {
            for (annotation, value) in [
                (
                    "Microsoft.Dynamics.CRM.lookuplogicalname",
                    Some(logical.to_owned()),
                ),
                (
                    "Microsoft.Dynamics.CRM.associatednavigationproperty",
                    Some(nav),
                ),
                (formatted, name),
            ] {
                if let Some(value) = value
                    && ann.wants(annotation)
                {
                    extra.push((format!("{k}@{annotation}"), json!(value)));
                }
            }
        } else if let Some(attr) = s.tables[t].attributes.get(k)
            && matches!(attr.kind, Kind::Picklist(_) | Kind::State | Kind::Status)
            && let Some(n) = v.as_i64()
            && let Some(text) = attr.option_label(n)
            && ann.wants(formatted)
        {
            extra.push((format!("{k}@{formatted}"), json!(text)));
        }
    }
    obj.extend(extra);
}

/// The JSON of row `row` as the Web API returns it: `@odata.etag`, the primary key, the
/// `$select`ed columns (all without `$select`); `lead` always carries statecode/statuscode, and
/// money columns of an opportunity bring `_transactioncurrencyid_value`.
fn representation(
    s: &State,
    t: usize,
    row: &Row,
    select: Option<&[String]>,
    ann: &Annotations,
) -> Map<String, Value> {
    let view = row_view(t, row);
    let mut obj = Map::new();
    obj.insert("@odata.etag".into(), json!(row.etag()));
    obj.insert(TABLES[t].pk.into(), json!(row.id));
    if t == LEAD {
        obj.insert("statecode".into(), json!(row.statecode));
        obj.insert("statuscode".into(), json!(row.statuscode));
    }
    match select {
        Some(cols) => {
            for c in cols {
                obj.insert(c.clone(), view.get(c).cloned().unwrap_or(Value::Null));
                if t == OPPORTUNITY
                    && s.tables[t]
                        .attributes
                        .get(c)
                        .is_some_and(|a| a.kind == Kind::Money)
                {
                    let currency = "_transactioncurrencyid_value";
                    obj.insert(
                        currency.into(),
                        view.get(currency).cloned().unwrap_or(Value::Null),
                    );
                }
            }
        }
        None => obj.extend(view),
    }
    annotate(s, t, &mut obj, ann);
    obj
}

// ---------------------------------------------------------------------------------------------
// Routing

fn handle(state: &Mutex<State>, req: &Recorded, base: &str) -> Reply {
    if req.bearer().is_none() {
        return dv_error(401, "0x80072560", "Bearer token required.")
            .header("www-authenticate", "Bearer");
    }
    let path = req.decoded_path();
    let Some(rest) = path.strip_prefix(API) else {
        return not_found_segment(&path);
    };
    let rest = rest.trim_end_matches('/');
    let mut s = lock(state);
    let post = req.method == "POST";
    match rest {
        "WhoAmI" | "WhoAmI()" => return Reply::json(200, &s.who_am_i),
        "WinOpportunity" | "LoseOpportunity" if post => {
            return close_action(&mut s, req, rest == "WinOpportunity");
        }
        "PublishXml" | "PublishAllXml" if post => return publish(req, rest),
        "WinOpportunity" | "LoseOpportunity" | "PublishXml" | "PublishAllXml" => {
            return method_not_allowed();
        }
        _ => {}
    }
    if let Some(meta) = rest.strip_prefix("EntityDefinitions(") {
        return metadata(&mut s, req, base, meta);
    }
    let Some((set, inner, tail)) = split_resource(rest) else {
        return not_found_segment(rest);
    };
    let Some(t) = table_by_set(set) else {
        return not_found_segment(set);
    };
    let method = req.method.as_str();
    match (inner, tail) {
        (None, _) => match method {
            "GET" => query(&s, t, req, base),
            "POST" => post_create(&mut s, t, req, base),
            _ => method_not_allowed(),
        },
        (Some(inner), "") => {
            let Some(target) = parse_target(inner) else {
                return invalid_key(t);
            };
            match method {
                "GET" => get_row(&s, t, req, base, &target),
                "PATCH" => upsert(&mut s, t, req, base, &target),
                _ => method_not_allowed(),
            }
        }
        (Some(inner), "/Microsoft.Dynamics.CRM.QualifyLead") if t == LEAD => {
            let Some(target) = parse_target(inner) else {
                return invalid_key(t);
            };
            if post {
                qualify_action(&mut s, req, base, &target)
            } else {
                method_not_allowed()
            }
        }
        (Some(_), tail) => not_found_segment(tail.trim_start_matches('/')),
    }
}

fn get_row(s: &State, t: usize, req: &Recorded, base: &str, target: &Target) -> Reply {
    if let Err(r) = check_options(req, &["$select"]) {
        return r;
    }
    let id = match resolve(s, t, target) {
        Ok(Some(id)) => id,
        Ok(None) => return not_found(t, target),
        Err(reply) => return reply,
    };
    let select = select_list(req);
    if let Err(r) = check_select(s, t, select.as_deref()) {
        return r;
    }
    let row = &s.tables[t].rows[&id];
    if req
        .header("if-none-match")
        .is_some_and(|v| v.trim() == row.etag())
    {
        return Reply::empty(304).header("etag", row.etag());
    }
    let mut body = representation(s, t, row, select.as_deref(), &Annotations::of(req));
    body.insert(
        "@odata.context".into(),
        json!(entity_context(base, t, select.as_deref())),
    );
    Reply::json(200, &Value::Object(body))
        .header("etag", row.etag())
        .header("odata-version", "4.0")
}

fn etag_version(tag: &str) -> Option<u64> {
    let tag = tag.trim();
    tag.strip_prefix("W/")
        .unwrap_or(tag)
        .trim_matches('"')
        .parse()
        .ok()
}

/// PATCH by key or id: upsert with the conditional headers.
fn upsert(s: &mut State, t: usize, req: &Recorded, base: &str, target: &Target) -> Reply {
    if let Err(r) = check_options(req, &["$select"]) {
        return r;
    }
    let existing = match resolve(s, t, target) {
        Ok(k) => k,
        Err(reply) => return reply,
    };
    let select = select_list(req);
    if let Err(r) = check_select(s, t, select.as_deref()) {
        return r;
    }
    let Value::Object(body) = req.json() else {
        return payload_error(t);
    };
    let p = match prepare(s, t, &body) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    if let Some(if_match) = req.header("if-match") {
        let Some(id) = &existing else {
            return not_found(t, target);
        };
        if if_match.trim() != "*" && etag_version(if_match) != Some(s.tables[t].rows[id].version) {
            return version_mismatch();
        }
    }
    if req.header("if-none-match").map(str::trim) == Some("*") && existing.is_some() {
        return create_conflict(t);
    }
    let key = match target {
        Target::Key(col, value) => Some((col.as_str(), value.as_str())),
        Target::Id(_) => None,
    };
    let result = match existing {
        Some(id) => update_row(s, t, &id, p, key.map(|k| k.0)).map(|()| (id, false)),
        None => {
            let mut p = p;
            let id = match target {
                Target::Key(col, value) => {
                    // On create the key from the URL wins over one in the body.
                    p.set.insert(col.clone(), json!(value));
                    None
                }
                Target::Id(id) => Some(id.clone()),
            };
            create_row(s, t, id, p).map(|id| (id, true))
        }
    };
    let (id, created) = match result {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    s.tables[t].writes += 1;
    let written = Written {
        id: &id,
        created,
        key,
        select: select.as_deref(),
    };
    write_reply(s, t, req, base, &written)
}

/// `POST /<set>`: create (204 + `OData-EntityId`, or 201 + body with `return=representation`).
fn post_create(s: &mut State, t: usize, req: &Recorded, base: &str) -> Reply {
    if let Err(r) = check_options(req, &["$select"]) {
        return r;
    }
    let select = select_list(req);
    if let Err(r) = check_select(s, t, select.as_deref()) {
        return r;
    }
    let Value::Object(body) = req.json() else {
        return payload_error(t);
    };
    let id = match prepare(s, t, &body).and_then(|p| create_row(s, t, None, p)) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    s.tables[t].writes += 1;
    let written = Written {
        id: &id,
        created: true,
        key: None,
        select: select.as_deref(),
    };
    write_reply(s, t, req, base, &written)
}

/// `GET /<set>?$select&$filter&$orderby&$top&$count`. With `Prefer: odata.maxpagesize=N` the
/// rows come N at a time, each page with an `@odata.nextLink` carrying `$skiptoken` (as
/// Dataverse pages; `$top` is then ignored, as the spec says).
fn query(s: &State, t: usize, req: &Recorded, base: &str) -> Reply {
    if let Err(r) = check_options(
        req,
        &[
            "$select",
            "$filter",
            "$orderby",
            "$top",
            "$count",
            "$skiptoken",
        ],
    ) {
        return r;
    }
    let select = select_list(req);
    if let Err(r) = check_select(s, t, select.as_deref()) {
        return r;
    }
    let filter = match req.query_value("$filter") {
        None => Filter::all_rows(),
        Some(text) => match parse_filter(&text) {
            Ok(f) => f,
            Err(message) => return dv_error(400, "0x80060888", &message),
        },
    };
    for c in filter.conditions() {
        match column_kind(s, t, &c.column) {
            None if s.enforce_schema => return unknown_property_read(t, &c.column),
            Some(kind) if !c.literal.fits(&kind) => {
                return dv_error(
                    400,
                    "0x80060888",
                    &format!(
                        "A binary operator with incompatible types was detected. Found operand types '{}' and '{}' for operator kind '{}'.",
                        kind.edm(),
                        c.literal.edm(),
                        c.op.name()
                    ),
                );
            }
            _ => {}
        }
    }
    let order = match req.query_value("$orderby").map(|o| parse_orderby(&o)) {
        None => Vec::new(),
        Some(Ok(o)) => o,
        Some(Err(message)) => return dv_error(400, "0x80060888", &message),
    };
    if s.enforce_schema
        && let Some((c, _)) = order.iter().find(|(c, _)| column_kind(s, t, c).is_none())
    {
        return unknown_property_read(t, c);
    }
    let top = match req.query_value("$top") {
        None => None,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => {
                return dv_error(
                    400,
                    "0x80060888",
                    &format!("Invalid value '{v}' for $top query option found."),
                );
            }
        },
    };
    let count = match req.query_value("$count").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return dv_error(
                400,
                "0x80060888",
                &format!("Invalid value '{other}' for $count query option found."),
            );
        }
    };
    let mut rows: Vec<(&Row, Map<String, Value>)> = s.tables[t]
        .rows
        .values()
        .map(|r| (r, row_view(t, r)))
        .filter(|(_, view)| filter.matches(view))
        .collect();
    rows.sort_by(|a, b| {
        for (c, desc) in &order {
            let o = compare_values(
                a.1.get(c).unwrap_or(&Value::Null),
                b.1.get(c).unwrap_or(&Value::Null),
            );
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.0.seq.cmp(&b.0.seq)
    });
    let total = rows.len();
    let page_size = req
        .header("prefer")
        .and_then(|p| {
            p.split(',')
                .find_map(|part| part.trim().strip_prefix("odata.maxpagesize="))
        })
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|n| *n > 0);
    let skip = match req.query_value("$skiptoken").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return dv_error(400, "0x80060888", "Invalid $skiptoken."),
    };
    let mut next_link = None;
    match page_size {
        Some(size) => {
            rows.drain(..skip.min(rows.len()));
            if rows.len() > size {
                rows.truncate(size);
                let query: Vec<String> = req
                    .query
                    .as_deref()
                    .unwrap_or("")
                    .split('&')
                    .filter(|p| !p.is_empty() && !p.starts_with("$skiptoken="))
                    .map(str::to_owned)
                    .collect();
                next_link = Some(format!(
                    "{base}{}?{}&$skiptoken={}",
                    req.path,
                    query.join("&"),
                    skip + size
                ));
            }
        }
        None => {
            if let Some(n) = top {
                rows.truncate(n);
            }
        }
    }
    let ann = Annotations::of(req);
    let value: Vec<Value> = rows
        .iter()
        .map(|(r, _)| Value::Object(representation(s, t, r, select.as_deref(), &ann)))
        .collect();
    let sel = select.map(|c| c.join(",")).unwrap_or_default();
    let mut body = json!({
        "@odata.context": format!("{base}{API}$metadata#{}({sel})", TABLES[t].set),
        "value": value,
    });
    if count {
        body["@odata.count"] = json!(total);
    }
    if let Some(link) = next_link {
        body["@odata.nextLink"] = json!(link);
    }
    Reply::json(200, &body).header("odata-version", "4.0")
}

fn compare_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// $filter: `col op literal` joined by `and`/`or`, with parentheses

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "gt" => Self::Gt,
            "ge" => Self::Ge,
            "lt" => Self::Lt,
            "le" => Self::Le,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Eq => "Equal",
            Self::Ne => "NotEqual",
            Self::Gt => "GreaterThan",
            Self::Ge => "GreaterThanOrEqual",
            Self::Lt => "LessThan",
            Self::Le => "LessThanOrEqual",
        }
    }

    fn holds(self, o: Ordering) -> bool {
        match self {
            Self::Eq => o == Ordering::Equal,
            Self::Ne => o != Ordering::Equal,
            Self::Gt => o == Ordering::Greater,
            Self::Ge => o != Ordering::Less,
            Self::Lt => o == Ordering::Less,
            Self::Le => o != Ordering::Greater,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
    Guid(String),
    /// Nanoseconds since the epoch.
    DateTime(i128),
    Date(String),
}

impl Literal {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "null" => Self::Null,
            "true" => Self::Bool(true),
            "false" => Self::Bool(false),
            _ if word.len() == 36 && parse_guid(word).is_some() => {
                Self::Guid(word.to_ascii_lowercase())
            }
            _ if is_date(word) => Self::Date(word.to_owned()),
            _ if word.contains('T') => Self::DateTime(parse_rfc3339(word)?),
            _ => {
                let numeric = word.strip_prefix('-').unwrap_or(word);
                if !numeric.starts_with(|c: char| c.is_ascii_digit()) {
                    return None;
                }
                match word.parse::<i64>() {
                    Ok(i) => Self::Int(i),
                    Err(_) => Self::Num(word.parse::<f64>().ok()?),
                }
            }
        })
    }

    fn edm(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "Edm.Boolean",
            Self::Int(_) => "Edm.Int32",
            Self::Num(_) => "Edm.Decimal",
            Self::Str(_) => "Edm.String",
            Self::Guid(_) => "Edm.Guid",
            Self::DateTime(_) => "Edm.DateTimeOffset",
            Self::Date(_) => "Edm.Date",
        }
    }

    /// Whether the literal can be compared with a column of type `kind`.
    fn fits(&self, kind: &Kind) -> bool {
        matches!(
            (kind, self),
            (_, Self::Null)
                | (Kind::Text(_) | Kind::Memo(_), Self::Str(_))
                | (
                    Kind::Integer | Kind::BigInt | Kind::Picklist(_) | Kind::State | Kind::Status,
                    Self::Int(_),
                )
                | (
                    Kind::Money | Kind::Decimal | Kind::Double,
                    Self::Int(_) | Self::Num(_)
                )
                | (Kind::Boolean, Self::Bool(_))
                | (Kind::DateTime, Self::DateTime(_) | Self::Date(_))
                | (Kind::DateOnly, Self::Date(_))
                | (
                    Kind::Id | Kind::Lookup(_) | Kind::Customer | Kind::Owner,
                    Self::Guid(_)
                )
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    column: String,
    op: Op,
    literal: Literal,
}

impl Condition {
    /// Evaluates against a row view (or any JSON object); string compares ignore case. A null
    /// (or missing) column matches `eq null` and nothing else: like SQL, `ne 'x'` skips it.
    fn matches(&self, row: &Map<String, Value>) -> bool {
        let v = row.get(&self.column).unwrap_or(&Value::Null);
        let ordering = match (&self.literal, v) {
            (Literal::Null, _) => {
                return match self.op {
                    Op::Eq => v.is_null(),
                    _ => !v.is_null(),
                };
            }
            (_, Value::Null) => return false,
            (Literal::Str(s), Value::String(x)) => x.to_lowercase().cmp(&s.to_lowercase()),
            (Literal::Guid(g), Value::String(x)) => x.to_ascii_lowercase().cmp(g),
            (Literal::Bool(b), Value::Bool(x)) => x.cmp(b),
            (Literal::Int(i), Value::Number(x)) => match x.as_f64() {
                Some(x) => x.partial_cmp(&(*i as f64)).unwrap_or(Ordering::Equal),
                None => return false,
            },
            (Literal::Num(n), Value::Number(x)) => match x.as_f64() {
                Some(x) => x.partial_cmp(n).unwrap_or(Ordering::Equal),
                None => return false,
            },
            (Literal::DateTime(n), Value::String(x)) => {
                let parsed = parse_rfc3339(x).or_else(|| {
                    is_date(x)
                        .then(|| parse_rfc3339(&format!("{x}T00:00:00Z")))
                        .flatten()
                });
                match parsed {
                    Some(x) => x.cmp(n),
                    None => return false,
                }
            }
            (Literal::Date(d), Value::String(x)) => match x.get(..10) {
                Some(x) => x.cmp(d.as_str()),
                None => return false,
            },
            _ => return false,
        };
        self.op.holds(ordering)
    }
}

enum Token {
    Word(String, usize),
    Str(String, usize),
    Open(usize),
    Close(usize),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let start = i;
            let mut out = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(format!(
                            "There is an unterminated literal at position {start} in '{text}'."
                        ));
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        out.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        out.push(*c);
                        i += 1;
                    }
                }
            }
            tokens.push(Token::Str(out, start));
        } else if c == '(' {
            tokens.push(Token::Open(i));
            i += 1;
        } else if c == ')' {
            tokens.push(Token::Close(i));
            i += 1;
        } else {
            let start = i;
            while i < chars.len()
                && !chars[i].is_whitespace()
                && !matches!(chars[i], '(' | ')' | '\'')
            {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect(), start));
        }
    }
    Ok(tokens)
}

/// A parsed `$filter`, in disjunctive normal form: a row matches when every condition of
/// one of the groups holds.
#[derive(Debug, Clone, PartialEq, Default)]
struct Filter {
    any: Vec<Vec<Condition>>,
}

impl Filter {
    /// No `$filter`: every row.
    fn all_rows() -> Self {
        Self {
            any: vec![Vec::new()],
        }
    }

    fn matches(&self, row: &Map<String, Value>) -> bool {
        self.any
            .iter()
            .any(|group| group.iter().all(|c| c.matches(row)))
    }

    fn conditions(&self) -> impl Iterator<Item = &Condition> {
        self.any.iter().flatten()
    }

    fn and(self, other: Self) -> Self {
        let mut any = Vec::new();
        for a in &self.any {
            for b in &other.any {
                any.push(a.iter().chain(b).cloned().collect());
            }
        }
        Self { any }
    }

    fn or(mut self, other: Self) -> Self {
        self.any.extend(other.any);
        self
    }
}

struct FilterParser<'a> {
    text: &'a str,
    tokens: std::iter::Peekable<std::vec::IntoIter<Token>>,
}

impl FilterParser<'_> {
    fn unsupported(&self, what: &str, pos: usize) -> String {
        format!(
            "{what} at position {pos} in '{}': the fake's $filter supports only `column op literal` (op: eq, ne, gt, ge, lt, le) joined by `and`/`or`, with parentheses.",
            self.text
        )
    }

    /// `term (or term)*`
    fn expression(&mut self) -> Result<Filter, String> {
        let mut filter = self.term()?;
        while matches!(self.tokens.peek(), Some(Token::Word(w, _)) if w == "or") {
            self.tokens.next();
            filter = filter.or(self.term()?);
        }
        Ok(filter)
    }

    /// `factor (and factor)*`
    fn term(&mut self) -> Result<Filter, String> {
        let mut filter = self.factor()?;
        while matches!(self.tokens.peek(), Some(Token::Word(w, _)) if w == "and") {
            self.tokens.next();
            filter = filter.and(self.factor()?);
        }
        Ok(filter)
    }

    /// `( expression ) | column op literal`
    fn factor(&mut self) -> Result<Filter, String> {
        if let Some(Token::Open(_)) = self.tokens.peek() {
            self.tokens.next();
            let inner = self.expression()?;
            return match self.tokens.next() {
                Some(Token::Close(_)) => Ok(inner),
                Some(Token::Word(w, pos)) => Err(self.unsupported(&format!("'{w}'"), pos)),
                Some(Token::Str(_, pos) | Token::Open(pos)) => {
                    Err(self.unsupported("a literal or '('", pos))
                }
                None => Err(format!("Expected ')' at the end of '{}'.", self.text)),
            };
        }
        let text = self.text;
        let column = match self.tokens.next() {
            Some(Token::Word(w, pos)) => {
                if !w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || w.starts_with(|c: char| c.is_ascii_digit())
                    || matches!(w.as_str(), "not" | "and" | "or")
                {
                    return Err(self.unsupported(&format!("'{w}'"), pos));
                }
                w
            }
            Some(Token::Str(_, pos)) => return Err(self.unsupported("a literal", pos)),
            Some(Token::Open(pos) | Token::Close(pos)) => {
                return Err(self.unsupported("a parenthesis", pos));
            }
            None => return Err(format!("Expected a column name at the end of '{text}'.")),
        };
        let op = match self.tokens.next() {
            Some(Token::Word(w, pos)) => {
                Op::parse(&w).ok_or_else(|| self.unsupported(&format!("operator '{w}'"), pos))?
            }
            Some(Token::Str(_, pos) | Token::Open(pos) | Token::Close(pos)) => {
                return Err(self.unsupported("a literal or parenthesis", pos));
            }
            None => {
                return Err(format!(
                    "Expected an operator after '{column}' in '{text}'."
                ));
            }
        };
        let literal = match self.tokens.next() {
            Some(Token::Str(s, _)) => Literal::Str(s),
            Some(Token::Word(w, pos)) => {
                Literal::parse(&w).ok_or_else(|| self.unsupported(&format!("'{w}'"), pos))?
            }
            Some(Token::Open(pos) | Token::Close(pos)) => {
                return Err(self.unsupported("a parenthesis", pos));
            }
            None => return Err(format!("Expected a literal after '{column}' in '{text}'.")),
        };
        if matches!(
            literal,
            Literal::Null | Literal::Bool(_) | Literal::Str(_) | Literal::Guid(_)
        ) && !matches!(op, Op::Eq | Op::Ne)
        {
            return Err(format!(
                "Operator '{}' cannot compare '{column}' with {} in '{text}'.",
                op.name(),
                literal.edm()
            ));
        }
        Ok(Filter {
            any: vec![vec![Condition {
                column,
                op,
                literal,
            }]],
        })
    }
}

/// Parses `col op literal` conditions joined by `and` and `or` (`and` binds tighter), with
/// parentheses (`op`: eq ne gt ge lt le; literals: `'text'` with `''` for a quote, null,
/// true/false, integers, decimals, GUIDs, dates, RFC 3339 date-times). Functions (`contains`,
/// `not`, …) are errors.
fn parse_filter(text: &str) -> Result<Filter, String> {
    let mut parser = FilterParser {
        text,
        tokens: tokenize(text)?.into_iter().peekable(),
    };
    let filter = parser.expression()?;
    match parser.tokens.next() {
        None => Ok(filter),
        Some(Token::Word(w, pos)) => Err(parser.unsupported(&format!("'{w}'"), pos)),
        Some(Token::Str(_, pos) | Token::Open(pos) | Token::Close(pos)) => {
            Err(parser.unsupported("a literal or parenthesis", pos))
        }
    }
}

/// `col [asc|desc], …`.
fn parse_orderby(text: &str) -> Result<Vec<(String, bool)>, String> {
    text.split(',')
        .map(|part| {
            let words: Vec<&str> = part.split_whitespace().collect();
            match words.as_slice() {
                [c] => Ok(((*c).to_owned(), false)),
                [c, "asc"] => Ok(((*c).to_owned(), false)),
                [c, "desc"] => Ok(((*c).to_owned(), true)),
                _ => Err(format!("Invalid $orderby clause '{}'.", part.trim())),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Actions

fn invalid_parameter(action: &str, name: &str) -> Reply {
    dv_error(
        400,
        "0x80048d19",
        &format!(
            "The parameter '{name}' in the request payload is not a valid parameter for the operation '{action}'."
        ),
    )
}

fn missing_parameter(name: &str, edm: &str) -> Reply {
    dv_error(
        400,
        "0x80048d19",
        &format!("The parameter '{name}' is required and must be an {edm}."),
    )
}

fn missing_opportunity_id() -> Reply {
    dv_error(
        400,
        "0x80043b15",
        "The opportunity id is missing or invalid.",
    )
}

/// `POST /WinOpportunity` / `/LoseOpportunity` `{"Status", "OpportunityClose": {…,
/// "opportunityid@odata.bind"}}` → 204. Error statuses other than 404 are unverified; the fake
/// answers 400.
fn close_action(s: &mut State, req: &Recorded, win: bool) -> Reply {
    let action = if win {
        "WinOpportunity"
    } else {
        "LoseOpportunity"
    };
    let Value::Object(body) = req.json() else {
        return payload_error(OPPORTUNITY_CLOSE);
    };
    if let Some(k) = body
        .keys()
        .find(|k| !k.starts_with('@') && !matches!(k.as_str(), "Status" | "OpportunityClose"))
    {
        return invalid_parameter(action, k);
    }
    let Some(status) = body.get("Status").and_then(Value::as_i64) else {
        return missing_parameter("Status", "Edm.Int32");
    };
    let Some(Value::Object(close)) = body.get("OpportunityClose") else {
        return missing_opportunity_id();
    };
    let mut close = close.clone();
    let Some(bind) = close.remove("opportunityid@odata.bind") else {
        return missing_opportunity_id();
    };
    let target = bind
        .as_str()
        .and_then(parse_reference)
        .filter(|(set, _)| *set == TABLES[OPPORTUNITY].set)
        .and_then(|(_, inner)| parse_target(inner));
    let Some(target) = target else {
        return missing_opportunity_id();
    };
    let id = match resolve(s, OPPORTUNITY, &target) {
        Ok(Some(id)) => id,
        Ok(None) => return not_found(OPPORTUNITY, &target),
        Err(reply) => return reply,
    };
    let p = match prepare(s, OPPORTUNITY_CLOSE, &close) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    if p.statecode.is_some() || p.statuscode.is_some() || p.pk.is_some() {
        return dv_error(
            400,
            "0x80048d19",
            "statecode, statuscode and activityid of the OpportunityClose are set by the action.",
        );
    }
    let state = if win { 1 } else { 2 };
    if !valid_pair(OPPORTUNITY, state, status) {
        return invalid_state_status(OPPORTUNITY, state, status);
    }
    if s.tables[OPPORTUNITY].rows[&id].statecode != 0 {
        return dv_error(400, "0x80040515", "The opportunity is already closed.");
    }
    s.close_opportunity(&id, state, status, p.set);
    s.tables[OPPORTUNITY].writes += 1;
    Reply::empty(204).header("odata-version", "4.0")
}

/// `POST /PublishXml` (`{"ParameterXml": "…"}`) and `POST /PublishAllXml` → 204.
fn publish(req: &Recorded, action: &str) -> Reply {
    if action == "PublishXml" {
        let body = req.json();
        if let Some(k) = body
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "ParameterXml"))
        {
            return invalid_parameter(action, k);
        }
        if !body
            .get("ParameterXml")
            .and_then(Value::as_str)
            .is_some_and(|x| x.contains("<importexportxml>"))
        {
            return missing_parameter("ParameterXml", "Edm.String holding <importexportxml>");
        }
    }
    Reply::empty(204).header("odata-version", "4.0")
}

/// The row an action parameter refers to: `{"@odata.type": "Microsoft.Dynamics.CRM.account",
/// "accountid": "…"}` or a bind value.
fn parameter_ref(
    s: &State,
    value: &Value,
    bind: bool,
    tables: &[usize],
) -> Result<(usize, String), String> {
    let (t, target) = if bind {
        let (set, inner) = value
            .as_str()
            .and_then(parse_reference)
            .ok_or("not an entity reference")?;
        let t = table_by_set(set).ok_or("not a table of the fake")?;
        (t, parse_target(inner).ok_or("not a valid id")?)
    } else {
        let ty = value
            .get("@odata.type")
            .and_then(Value::as_str)
            .ok_or("@odata.type is missing")?;
        let logical = ty
            .trim_start_matches('#')
            .strip_prefix("Microsoft.Dynamics.CRM.")
            .ok_or("@odata.type is not Microsoft.Dynamics.CRM.<table>")?;
        let t = table_index(logical).ok_or("not a table of the fake")?;
        let id = value
            .get(TABLES[t].pk)
            .and_then(Value::as_str)
            .and_then(parse_guid)
            .ok_or("the primary key is missing")?;
        (t, Target::Id(id))
    };
    if !tables.contains(&t) {
        return Err(format!("a {} cannot be used here", TABLES[t].logical));
    }
    match resolve(s, t, &target) {
        Ok(Some(id)) => Ok((t, id)),
        _ => Err(format!("{} does not exist", TABLES[t].logical)),
    }
}

/// `POST leads(<id>)/Microsoft.Dynamics.CRM.QualifyLead` → 200 with the created rows.
fn qualify_action(s: &mut State, req: &Recorded, base: &str, target: &Target) -> Reply {
    const ACTION: &str = "QualifyLead";
    let id = match resolve(s, LEAD, target) {
        Ok(Some(id)) => id,
        Ok(None) => return not_found(LEAD, target),
        Err(reply) => return reply,
    };
    let Value::Object(body) = req.json() else {
        return payload_error(LEAD);
    };
    let known = [
        "CreateAccount",
        "CreateContact",
        "CreateOpportunity",
        "Status",
        "OpportunityCurrencyId",
        "OpportunityCustomerId",
        "SourceCampaignId",
        "ProcessInstanceId",
    ];
    if let Some(k) = body.keys().find(|k| {
        !k.starts_with('@') && !known.contains(&k.strip_suffix("@odata.bind").unwrap_or(k))
    }) {
        return invalid_parameter(ACTION, k);
    }
    let flag = |name: &str| body.get(name).and_then(Value::as_bool);
    let (Some(account), Some(contact), Some(opportunity)) = (
        flag("CreateAccount"),
        flag("CreateContact"),
        flag("CreateOpportunity"),
    ) else {
        return missing_parameter(
            "CreateAccount, CreateContact and CreateOpportunity",
            "Edm.Boolean",
        );
    };
    let Some(status) = body.get("Status").and_then(Value::as_i64) else {
        return missing_parameter("Status", "Edm.Int32");
    };
    let reference = |name: &str, tables: &[usize]| -> Result<Option<(usize, String)>, Reply> {
        let (value, bind) = match (body.get(name), body.get(&format!("{name}@odata.bind"))) {
            (Some(v), _) => (v, false),
            (None, Some(v)) => (v, true),
            (None, None) => return Ok(None),
        };
        parameter_ref(s, value, bind, tables)
            .map(Some)
            .map_err(|why| {
                dv_error(
                    400,
                    "0x80040217",
                    &format!("The {name} parameter is invalid: {why}."),
                )
            })
    };
    let currency = match reference("OpportunityCurrencyId", &[CURRENCY]) {
        Ok(c) => c.map(|(_, id)| id),
        Err(reply) => return reply,
    };
    let customer = match reference("OpportunityCustomerId", &[ACCOUNT, CONTACT]) {
        Ok(c) => c,
        Err(reply) => return reply,
    };
    if s.tables[LEAD].rows[&id].statecode != 0 {
        return dv_error(400, "0x80040519", "The lead is already closed.");
    }
    if !valid_pair(LEAD, 1, status) {
        return invalid_state_status(LEAD, 1, status);
    }
    let created = s.qualify(
        &id,
        &Qualify {
            account,
            contact,
            opportunity,
            status,
            currency,
            customer,
        },
    );
    s.tables[LEAD].writes += 1;
    let value: Vec<Value> = created
        .iter()
        .map(|(t, id)| {
            json!({
                "@odata.type": format!("#Microsoft.Dynamics.CRM.{}", TABLES[*t].logical),
                TABLES[*t].pk: id,
            })
        })
        .collect();
    Reply::json(
        200,
        &json!({
            "@odata.context": format!("{base}{API}$metadata#Collection(Microsoft.Dynamics.CRM.crmbaseentity)"),
            "value": value,
        }),
    )
    .header("odata-version", "4.0")
}

// ---------------------------------------------------------------------------------------------
// Metadata

fn metadata(s: &mut State, req: &Recorded, base: &str, meta: &str) -> Reply {
    let Some((entity, tail)) = meta.split_once(')') else {
        return dv_error(400, "0x80060888", "Bad EntityDefinitions segment.");
    };
    let logical = entity
        .strip_prefix("LogicalName=")
        .and_then(parse_quoted)
        .unwrap_or_default();
    let Some(t) = table_index(&logical) else {
        return dv_error(
            404,
            "0x80040217",
            &format!("Could not find entity '{logical}'"),
        );
    };
    let entity_url = format!("{base}{API}EntityDefinitions(LogicalName='{logical}')");
    let polls = s.key_activation_polls;
    match (req.method.as_str(), tail) {
        ("GET", "") => {
            let def = &TABLES[t];
            let mut body = json!({
                "@odata.context": format!("{base}{API}$metadata#EntityDefinitions/$entity"),
                "LogicalName": def.logical,
                "EntitySetName": def.set,
                "PrimaryIdAttribute": def.pk,
                "PrimaryNameAttribute": def.name,
                "IsOptimisticConcurrencyEnabled": true,
            });
            let expand = req.query_value("$expand").unwrap_or_default();
            if expand.contains("Keys") {
                body["Keys"] = Value::Array(read_keys(s, t, polls));
            }
            if expand.contains("Attributes") {
                body["Attributes"] = s.tables[t]
                    .attributes
                    .values()
                    .map(|a| a.meta.clone())
                    .collect();
            }
            Reply::json(200, &body)
        }
        ("GET", "/Keys") => Reply::json(
            200,
            &json!({
                "@odata.context": format!("{base}{API}$metadata#EntityDefinitions('{logical}')/Keys"),
                "value": read_keys(s, t, polls),
            }),
        ),
        ("POST", "/Keys") => create_key(s, t, req, &entity_url),
        ("GET", "/Attributes") => list_attributes(s, t, req, base),
        ("POST", "/Attributes") => create_attribute(s, t, req, &entity_url),
        ("GET", tail) if tail.starts_with("/Attributes(") => get_attribute(s, t, tail, base),
        ("GET", _) => not_found_segment(tail.trim_start_matches('/')),
        _ => method_not_allowed(),
    }
}

fn read_keys(s: &mut State, t: usize, polls: usize) -> Vec<Value> {
    s.tables[t]
        .keys
        .iter_mut()
        .map(|k| {
            let v = k.to_json(t, polls);
            k.gets += 1;
            v
        })
        .collect()
}

/// `GET …/Attributes(LogicalName='x')[/Microsoft.Dynamics.CRM.<Type>AttributeMetadata]`.
fn get_attribute(s: &State, t: usize, tail: &str, base: &str) -> Reply {
    let rest = &tail["/Attributes".len()..];
    let Some((_, Some(inner), cast)) = split_resource(rest) else {
        return not_found_segment(tail);
    };
    let Some(column) = inner.strip_prefix("LogicalName=").and_then(parse_quoted) else {
        return dv_error(404, "0x80060888", "Resource not found for the segment.");
    };
    let Some(attr) = s.tables[t].attributes.get(&column) else {
        return dv_error(
            404,
            "0x80040217",
            &format!(
                "Could not find attribute '{column}' on entity '{}'.",
                TABLES[t].logical
            ),
        );
    };
    let class = attr.kind.metadata_class();
    if let Some(cast) = cast.strip_prefix('/')
        && cast != format!("Microsoft.Dynamics.CRM.{class}")
    {
        return dv_error(
            400,
            "0x80060888",
            &format!("The attribute '{column}' is a {class}, not a {cast}."),
        );
    }
    let mut body = attr.meta.clone();
    body["@odata.context"] = json!(format!(
        "{base}{API}$metadata#EntityDefinitions('{}')/Attributes/$entity",
        TABLES[t].logical
    ));
    Reply::json(200, &body)
}

/// `GET …/Attributes[?$filter=…&$select=…]`.
fn list_attributes(s: &State, t: usize, req: &Recorded, base: &str) -> Reply {
    let filter = match req.query_value("$filter").map(|f| parse_filter(&f)) {
        None => Filter::all_rows(),
        Some(Ok(f)) => f,
        Some(Err(message)) => return dv_error(400, "0x80060888", &message),
    };
    let select = select_list(req);
    let value: Vec<Value> = s.tables[t]
        .attributes
        .values()
        .filter_map(|a| a.meta.as_object())
        .filter(|m| filter.matches(m))
        .map(|m| match &select {
            None => Value::Object(m.clone()),
            Some(cols) => Value::Object(
                m.iter()
                    .filter(|(k, _)| {
                        matches!(k.as_str(), "@odata.type" | "MetadataId") || cols.contains(k)
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        })
        .collect();
    Reply::json(
        200,
        &json!({
            "@odata.context": format!("{base}{API}$metadata#EntityDefinitions('{}')/Attributes", TABLES[t].logical),
            "value": value,
        }),
    )
}

fn metadata_error(message: &str) -> Reply {
    dv_error(400, "0x80048d19", message)
}

/// The `Value`s of a local option set, numbering missing ones from 100000000 like an
/// unprefixed publisher.
fn picklist_options(option_set: Option<&Value>) -> Result<Vec<Value>, Reply> {
    let Some(option_set) = option_set.and_then(Value::as_object) else {
        return Err(metadata_error(
            "A PicklistAttributeMetadata needs an OptionSet.",
        ));
    };
    if option_set.get("IsGlobal").and_then(Value::as_bool) == Some(true) {
        return Err(metadata_error(
            "Global option sets are not supported by the fake; send a local OptionSet.",
        ));
    }
    let Some(options) = option_set
        .get("Options")
        .and_then(Value::as_array)
        .filter(|o| !o.is_empty())
    else {
        return Err(metadata_error("The OptionSet needs at least one option."));
    };
    let mut out: Vec<Value> = Vec::new();
    let mut next = 100_000_000;
    for option in options {
        let mut option = option.clone();
        let value = match option.get("Value") {
            None | Some(Value::Null) => {
                next += 1;
                next - 1
            }
            Some(v) => v
                .as_i64()
                .ok_or_else(|| metadata_error("An option Value must be an integer."))?,
        };
        if out.iter().any(|o| o["Value"] == json!(value)) {
            return Err(metadata_error(&format!(
                "The option value {value} is used more than once."
            )));
        }
        option["Value"] = json!(value);
        out.push(option);
    }
    Ok(out)
}

/// `POST …/Attributes`: String (FormatName incl. Url), Memo, Boolean, Picklist (local option
/// set), Integer, BigInt, Money, Decimal, Double, DateTime.
fn create_attribute(s: &mut State, t: usize, req: &Recorded, entity_url: &str) -> Reply {
    let Value::Object(body) = req.json() else {
        return metadata_error("The attribute metadata must be a JSON object.");
    };
    let Some(schema) = body.get("SchemaName").and_then(Value::as_str) else {
        return metadata_error("SchemaName is required.");
    };
    let logical = schema.to_ascii_lowercase();
    if s.tables[t].attributes.contains_key(&logical) {
        return dv_error(
            400,
            "0x80060304",
            &format!(
                "Attribute {logical} already exists for entity {}.",
                TABLES[t].logical
            ),
        );
    }
    let class = body
        .get("@odata.type")
        .and_then(Value::as_str)
        .map(|c| {
            c.trim_start_matches('#')
                .trim_start_matches("Microsoft.Dynamics.CRM.")
                .trim_end_matches("AttributeMetadata")
                .to_owned()
        })
        .or_else(|| {
            body.get("AttributeType")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let int = |name: &str| body.get(name).and_then(Value::as_i64);
    let max_length = |default: i64, limit: i64| -> Result<usize, Reply> {
        let max = int("MaxLength").unwrap_or(default);
        usize::try_from(max)
            .ok()
            .filter(|m| (1..=limit).contains(&(*m as i64)))
            .ok_or_else(|| metadata_error(&format!("MaxLength must be between 1 and {limit}.")))
    };
    let mut meta = body.clone();
    let kind = match class.as_deref() {
        Some("String") => {
            let max = match max_length(100, 4000) {
                Ok(m) => m,
                Err(reply) => return reply,
            };
            let format = body
                .get("FormatName")
                .and_then(|f| f.get("Value"))
                .or_else(|| body.get("Format"))
                .and_then(Value::as_str)
                .unwrap_or("Text");
            const FORMATS: &[&str] = &[
                "Text",
                "TextArea",
                "Email",
                "Url",
                "Phone",
                "TickerSymbol",
                "PhoneticGuide",
                "VersionNumber",
                "Json",
                "RichText",
            ];
            if !FORMATS.contains(&format) {
                return metadata_error(&format!(
                    "'{format}' is not a valid FormatName; use one of {}.",
                    FORMATS.join(", ")
                ));
            }
            meta.insert("FormatName".into(), json!({ "Value": format }));
            Kind::Text(Some(max))
        }
        Some("Memo") => match max_length(2000, 1_048_576) {
            Ok(m) => Kind::Memo(m),
            Err(reply) => return reply,
        },
        Some("Boolean") => {
            let option = |name: &str, value: i64, text: &str| {
                body.get("OptionSet")
                    .and_then(|o| o.get(name))
                    .cloned()
                    .unwrap_or_else(|| json!({"Value": value, "Label": label(text)}))
            };
            meta.insert(
                "OptionSet".into(),
                json!({
                    "OptionSetType": "Boolean",
                    "TrueOption": option("TrueOption", 1, "Yes"),
                    "FalseOption": option("FalseOption", 0, "No"),
                }),
            );
            meta.entry("DefaultValue").or_insert(json!(false));
            Kind::Boolean
        }
        Some("Picklist") => {
            let options = match picklist_options(body.get("OptionSet")) {
                Ok(o) => o,
                Err(reply) => return reply,
            };
            let values = options.iter().filter_map(|o| o["Value"].as_i64()).collect();
            let mut option_set = body["OptionSet"].clone();
            option_set["Options"] = Value::Array(options);
            meta.insert("OptionSet".into(), option_set);
            Kind::Picklist(values)
        }
        Some("Integer") => Kind::Integer,
        Some("BigInt") => Kind::BigInt,
        Some("Money") => Kind::Money,
        Some("Decimal") => Kind::Decimal,
        Some("Double") => Kind::Double,
        Some("DateTime") => {
            let date_only = body.get("Format").and_then(Value::as_str) == Some("DateOnly")
                || body
                    .get("DateTimeBehavior")
                    .and_then(|b| b.get("Value"))
                    .and_then(Value::as_str)
                    == Some("DateOnly");
            if date_only {
                Kind::DateOnly
            } else {
                Kind::DateTime
            }
        }
        other => {
            return metadata_error(&format!(
                "Unsupported attribute metadata type {other:?}; the fake creates String, Memo, Boolean, Picklist, Integer, BigInt, Money, Decimal, Double and DateTime columns."
            ));
        }
    };
    let Value::Object(standard) = base_meta(t, &logical, &kind, true, false) else {
        unreachable!("metadata is an object");
    };
    for (k, v) in standard {
        if k == "SchemaName" {
            continue;
        }
        meta.insert(k, v);
    }
    let metadata_id = meta["MetadataId"].as_str().unwrap_or_default().to_owned();
    s.tables[t].attributes.insert(
        logical,
        Attr {
            kind,
            read_only: false,
            meta: Value::Object(meta),
        },
    );
    Reply::empty(204).header(
        "odata-entityid",
        format!("{entity_url}/Attributes({metadata_id})"),
    )
}

/// `POST …/Keys {"SchemaName", "KeyAttributes": [...]}` → 204; the key starts `Pending` (and
/// ends `Failed` if the rows already hold duplicate values).
fn create_key(s: &mut State, t: usize, req: &Recorded, entity_url: &str) -> Reply {
    let body = req.json();
    let Some(schema) = body.get("SchemaName").and_then(Value::as_str) else {
        return metadata_error("SchemaName is required.");
    };
    let attributes: Option<Vec<String>> = body
        .get("KeyAttributes")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect());
    let Some(attributes) = attributes.filter(|a| !a.is_empty()) else {
        return metadata_error("KeyAttributes must be a non-empty array.");
    };
    let table = &s.tables[t];
    if let Some(missing) = attributes
        .iter()
        .find(|a| !table.attributes.contains_key(*a))
    {
        return dv_error(
            400,
            "0x80040217",
            &format!(
                "Could not find attribute {missing} on entity {}.",
                TABLES[t].logical
            ),
        );
    }
    let logical = schema.to_ascii_lowercase();
    if table.keys.iter().any(|k| k.logical_name == logical) {
        return dv_error(
            400,
            "0x80060893",
            &format!("An entity key with the name {logical} already exists."),
        );
    }
    if table.keys.iter().any(|k| k.attributes == attributes) {
        return dv_error(
            400,
            "0x80060894",
            "An entity key with the selected attributes already exists.",
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    let duplicates = table.rows.values().any(|r| {
        let values: Vec<&Value> = attributes
            .iter()
            .map(|a| r.columns.get(a).unwrap_or(&Value::Null))
            .collect();
        !values.iter().all(|v| v.is_null())
            && !seen
                .insert(Value::from(values.into_iter().cloned().collect::<Vec<_>>()).to_string())
    });
    let key = EntityKey::new(schema, attributes, "Pending", duplicates);
    let id = key.metadata_id.clone();
    s.tables[t].keys.push(key);
    Reply::empty(204).header("odata-entityid", format!("{entity_url}/Keys({id})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_literals() {
        assert_eq!(parse_quoted("'abc'").as_deref(), Some("abc"));
        assert_eq!(parse_quoted("'O''Brien'").as_deref(), Some("O'Brien"));
        assert_eq!(parse_quoted("''").as_deref(), Some(""));
        assert_eq!(parse_quoted("abc"), None);
        assert_eq!(parse_quoted("'a'b'"), None);
        assert_eq!(quote("O'Brien"), "'O''Brien'");
    }

    #[test]
    fn key_progression() {
        let mut k = EntityKey::new("k", vec!["c".into()], "Pending", false);
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(k.shown(2));
            k.gets += 1;
        }
        assert_eq!(seen, ["Pending", "InProgress", "Active", "Active"]);
        k.status = "Failed".into();
        assert_eq!(k.shown(2), "Failed");
        let mut dup = EntityKey::new("k", vec!["c".into()], "Pending", true);
        dup.gets = 2;
        assert_eq!(
            dup.shown(2),
            "Failed",
            "duplicates make the index build fail"
        );
    }

    #[test]
    fn resources_and_references() {
        assert_eq!(
            split_resource("leads(k='a)b')/Microsoft.Dynamics.CRM.QualifyLead"),
            Some((
                "leads",
                Some("k='a)b'"),
                "/Microsoft.Dynamics.CRM.QualifyLead"
            ))
        );
        assert_eq!(split_resource("accounts"), Some(("accounts", None, "")));
        assert_eq!(split_resource("accounts(x"), None);
        let id = "6f0e1a2b-0000-4000-8000-000000000001";
        for text in [
            format!("/accounts({id})"),
            format!("accounts({id})"),
            format!("https://org.crm.dynamics.com/api/data/v9.2/accounts({id})"),
        ] {
            assert_eq!(parse_reference(&text), Some(("accounts", id)), "{text}");
        }
        assert_eq!(parse_reference("/accounts"), None);
        assert_eq!(parse_reference(&format!("/accounts({id})/x")), None);
        assert_eq!(
            parse_target(&id.to_uppercase()),
            Some(Target::Id(id.to_owned())),
            "ids are normalised to lower case"
        );
        assert_eq!(
            parse_target("new_k='O''Brien'"),
            Some(Target::Key("new_k".into(), "O'Brien".into()))
        );
        assert_eq!(parse_target("not-a-guid"), None);
    }

    fn row(columns: Value) -> Map<String, Value> {
        object(columns, "test")
    }

    #[test]
    fn filter_grammar() {
        let f = parse_filter("name eq 'O''Brien & Sons' and address1_postalcode eq '98052'")
            .expect("parse");
        assert_eq!(
            f.any,
            [vec![
                Condition {
                    column: "name".into(),
                    op: Op::Eq,
                    literal: Literal::Str("O'Brien & Sons".into())
                },
                Condition {
                    column: "address1_postalcode".into(),
                    op: Op::Eq,
                    literal: Literal::Str("98052".into())
                },
            ]]
        );
        let r = row(json!({"name": "o'brien & SONS", "address1_postalcode": "98052"}));
        assert!(f.matches(&r), "case-insensitive");
        let other = row(json!({"name": "O'Brien & Sons", "address1_postalcode": "98053"}));
        assert!(!f.matches(&other));

        let f = parse_filter("isocurrencycode eq 'USD' and statecode eq 0").expect("parse");
        assert_eq!(f.any[0][1].literal, Literal::Int(0));
        assert!(f.matches(&row(json!({"isocurrencycode": "usd", "statecode": 0}))));
        assert!(!f.matches(&row(json!({"isocurrencycode": "USD", "statecode": 1}))));

        let f = parse_filter("address1_postalcode eq null").expect("parse");
        assert!(f.matches(&row(json!({}))));
        assert!(f.matches(&row(json!({"address1_postalcode": null}))));
        assert!(!f.matches(&row(json!({"address1_postalcode": "1"}))));
        let ne = parse_filter("name ne 'x'").expect("parse");
        assert!(!ne.matches(&row(json!({}))), "ne skips nulls");
        assert!(ne.matches(&row(json!({"name": "y"}))));

        let f = parse_filter("modifiedon ge 2026-12-01T10:00:00Z").expect("parse");
        assert!(f.matches(&row(json!({"modifiedon": "2026-12-01T10:00:00Z"}))));
        assert!(!f.matches(&row(json!({"modifiedon": "2026-12-01T09:59:59Z"}))));
        let f = parse_filter("_customerid_value eq 6F0E1A2B-0000-4000-8000-000000000001")
            .expect("parse");
        assert!(f.matches(&row(
            json!({"_customerid_value": "6f0e1a2b-0000-4000-8000-000000000001"})
        )));

        // `and` binds tighter than `or`; parentheses group.
        let f = parse_filter("a eq 1 and (b ne null or c eq true)").expect("parse");
        assert_eq!(f.any.len(), 2);
        assert!(f.matches(&row(json!({"a": 1, "b": "x"}))));
        assert!(f.matches(&row(json!({"a": 1, "c": true}))));
        assert!(!f.matches(&row(json!({"a": 1, "c": false}))));
        assert!(!f.matches(&row(json!({"a": 2, "b": "x", "c": true}))));
        let f = parse_filter("a eq 1 and b eq 2 or c eq 3").expect("parse");
        assert!(f.matches(&row(json!({"c": 3}))));
        assert!(!f.matches(&row(json!({"a": 1}))));
        assert!(
            parse_filter("(name eq 'a')")
                .expect("parse")
                .matches(&row(json!({"name": "A"})))
        );

        for bad in [
            "name eq 'unterminated",
            "contains(name,'a')",
            "(name eq 'a'",
            "name eq 'a')",
            "name eq",
            "name like 'a'",
            "name eq 'a' and",
            "name eq 'a' or",
            "not name eq 'a'",
            "name gt null",
            "name eq bogus",
            "'a' eq name",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad} must be rejected");
        }
        assert!(
            parse_filter("name eq 'x")
                .unwrap_err()
                .contains("unterminated literal at position 8")
        );
    }

    #[test]
    fn literal_types_are_checked_against_columns() {
        assert!(Literal::Str("x".into()).fits(&Kind::Text(Some(5))));
        assert!(!Literal::Str("x".into()).fits(&Kind::Integer));
        assert!(
            !Literal::Str("6f0e…".into()).fits(&Kind::Customer),
            "GUIDs are unquoted"
        );
        assert!(Literal::Int(3).fits(&Kind::Money));
        assert!(Literal::Null.fits(&Kind::Boolean));
        assert!(!Literal::Int(1).fits(&Kind::Boolean));
    }

    #[test]
    fn orderby_clauses() {
        assert_eq!(
            parse_orderby("modifiedon asc, opportunityid desc,name").expect("parse"),
            [
                ("modifiedon".to_owned(), false),
                ("opportunityid".to_owned(), true),
                ("name".to_owned(), false)
            ]
        );
        assert!(parse_orderby("name sideways").is_err());
    }

    #[test]
    fn values_are_converted_by_column_type() {
        let attr = |kind: Kind| Attr {
            meta: base_meta(OPPORTUNITY, "c", &kind, true, false),
            kind,
            read_only: false,
        };
        let ok = |kind: Kind, v: Value| convert(OPPORTUNITY, "c", &attr(kind), &v);
        assert_eq!(ok(Kind::Money, json!("50000")).ok(), Some(json!(50000)));
        assert_eq!(ok(Kind::Money, json!("12.5")).ok(), Some(json!(12.5)));
        assert_eq!(ok(Kind::Money, json!(10000)).ok(), Some(json!(10000)));
        assert_eq!(ok(Kind::Money, json!("a lot")).unwrap_err().status, 400);
        assert_eq!(
            ok(Kind::DateOnly, json!("2026-12-31")).ok(),
            Some(json!("2026-12-31"))
        );
        let err = ok(Kind::DateOnly, json!("2026-12-31T00:00:00Z")).unwrap_err();
        assert!(err.body.contains("0x80048d19") && err.body.contains("Cannot convert the literal"));
        assert_eq!(
            ok(Kind::DateTime, json!("2026-12-15T01:02:03.456+01:00")).ok(),
            Some(json!("2026-12-15T00:02:03Z"))
        );
        let err = ok(Kind::Text(Some(3)), json!("abcd")).unwrap_err();
        assert!(err.body.contains("0x80044331"), "{}", err.body);
        assert!(ok(Kind::Text(Some(3)), json!("abc")).is_ok());
        let err = ok(Kind::Picklist(vec![1, 2]), json!(3)).unwrap_err();
        assert!(err.body.contains("0x8004431a"), "{}", err.body);
        assert!(ok(Kind::Picklist(vec![]), json!(3)).is_ok());
        assert!(ok(Kind::Boolean, json!("true")).is_err());
        assert_eq!(ok(Kind::Integer, Value::Null).ok(), Some(Value::Null));
    }

    fn opportunity_row(statecode: i64) -> Row {
        Row {
            id: "o".into(),
            seq: 1,
            version: 1,
            statecode,
            statuscode: default_status(OPPORTUNITY, statecode),
            createdon: String::new(),
            modifiedon: String::new(),
            columns: Map::new(),
        }
    }

    fn prepared(statecode: Option<i64>, statuscode: Option<i64>, set: Value) -> Prepared {
        Prepared {
            set: object(set, "test"),
            statecode,
            statuscode,
            pk: None,
        }
    }

    fn code(r: Result<Change, Reply>) -> String {
        let body: Value = serde_json::from_str(&r.expect_err("an error").body).expect("json");
        body["error"]["code"].as_str().expect("code").to_owned()
    }

    #[test]
    fn opportunity_state_rules() {
        let open = opportunity_row(0);
        let won = opportunity_row(1);
        let rule = |row: &Row, p: Prepared| opportunity_change(row, &p);
        assert_eq!(
            rule(&open, prepared(None, None, json!({"name": "x"}))).ok(),
            Some(Change::None)
        );
        assert_eq!(
            rule(&open, prepared(None, Some(2), Value::Null)).ok(),
            Some(Change::Set(0, 2)),
            "On Hold by statuscode"
        );
        assert_eq!(
            code(rule(&open, prepared(Some(1), Some(3), Value::Null))),
            "0x80100005"
        );
        assert_eq!(
            code(rule(&open, prepared(Some(2), Some(4), Value::Null))),
            "0x80100005"
        );
        assert_eq!(
            code(rule(&open, prepared(Some(0), Some(1), Value::Null))),
            "0x8004051a"
        );
        assert_eq!(
            code(rule(&open, prepared(None, Some(3), Value::Null))),
            "0x80048408"
        );
        assert_eq!(
            code(rule(&open, prepared(Some(7), None, Value::Null))),
            "0x80048408"
        );
        assert_eq!(
            rule(&won, prepared(Some(0), Some(1), Value::Null)).ok(),
            Some(Change::Reopen(1))
        );
        assert_eq!(
            rule(&won, prepared(Some(0), None, Value::Null)).ok(),
            Some(Change::Reopen(1))
        );
        assert_eq!(
            code(rule(&won, prepared(Some(0), Some(4), Value::Null))),
            "0x80048408"
        );
        assert_eq!(
            code(rule(&won, prepared(Some(0), Some(1), json!({"name": "x"})))),
            "0x8004d103",
            "a reopen with other columns is an edit of a closed row"
        );
        assert_eq!(
            code(rule(&won, prepared(None, None, json!({"name": "x"})))),
            "0x8004d103"
        );
        assert_eq!(
            code(rule(&won, prepared(None, None, Value::Null))),
            "0x8004d103"
        );
    }

    #[test]
    fn annotations_preference() {
        let req = |prefer: &str| Recorded {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: vec![("prefer".into(), prefer.into())],
            body: Vec::new(),
        };
        let a = Annotations::of(&req(
            "return=representation,odata.include-annotations=\"Microsoft.Dynamics.CRM.*\"",
        ));
        assert!(a.wants("Microsoft.Dynamics.CRM.lookuplogicalname"));
        assert!(!a.wants("OData.Community.Display.V1.FormattedValue"));
        assert!(Annotations::of(&req("odata.include-annotations=*")).wants("x"));
        assert!(Annotations::of(&req("return=representation")).0.is_empty());
    }

    #[test]
    fn state_seeds_currencies_and_standard_columns() {
        let s = State::new("new_k");
        assert_eq!(s.tables[CURRENCY].rows.len(), 2);
        assert_eq!(currency_id(&s, "usd"), Some(s.base_currency.clone()));
        assert!(currency_id(&s, "EUR").is_some());
        for (def, table) in TABLES.iter().zip(&s.tables) {
            for column in [
                def.pk,
                "statecode",
                "statuscode",
                "versionnumber",
                "modifiedon",
            ] {
                assert!(
                    table.attributes.contains_key(column),
                    "{}.{column}",
                    def.logical
                );
            }
            assert!(!table.attributes.contains_key("new_k"));
        }
        let status = &s.tables[OPPORTUNITY].attributes["statuscode"];
        assert_eq!(status.option_label(5).as_deref(), Some("Out-Sold"));
        assert!(s.now().ends_with('Z') && s.now().len() == "2026-12-02T18:31:22Z".len());
    }

    /// A request through the fake's router, as the server would pass it.
    fn send(state: &Mutex<State>, method: &str, path: &str, body: Value) -> Reply {
        let req = Recorded {
            method: method.into(),
            path: format!("{API}{path}"),
            query: None,
            headers: vec![("authorization".into(), "Bearer t".into())],
            body: if body.is_null() {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            },
        };
        handle(state, &req, "http://fake")
    }

    /// The key index of every table equals the one a full scan of its rows builds.
    fn assert_index_exact(s: &State) {
        for (def, table) in TABLES.iter().zip(&s.tables) {
            let mut scanned: BTreeMap<String, BTreeSet<(u64, String)>> = BTreeMap::new();
            for row in table.rows.values() {
                if let Some(v) = key_value(&s.key_column, row) {
                    scanned
                        .entry(v.to_owned())
                        .or_default()
                        .insert((row.seq, row.id.clone()));
                }
            }
            assert_eq!(table.rows.by_key, scanned, "key index of {}", def.logical);
        }
    }

    #[test]
    fn key_index_follows_every_change_of_the_key_column() {
        let state = Mutex::new(State::new("new_k"));
        let by_key = |v: &str| format!("leads(new_k='{v}')");
        let status = |r: Reply| (r.status, r.body);
        for (key, subject) in [("a", "A"), ("b", "B")] {
            let r = send(&state, "PATCH", &by_key(key), json!({ "subject": subject }));
            assert_eq!(status(r).0, 204);
        }
        let a = lock(&state)
            .find_by_key(LEAD, "new_k", "a")
            .expect("lead a");
        let b = lock(&state)
            .find_by_key(LEAD, "new_k", "b")
            .expect("lead b");
        assert_index_exact(&lock(&state));

        // A PATCH by id moves lead a to key c: a no longer finds it, c does.
        let r = send(
            &state,
            "PATCH",
            &format!("leads({a})"),
            json!({"new_k": "c"}),
        );
        assert_eq!(status(r).0, 204);
        assert_index_exact(&lock(&state));
        assert_eq!(send(&state, "GET", &by_key("a"), Value::Null).status, 404);
        let got: Value = serde_json::from_str(&send(&state, "GET", &by_key("c"), Value::Null).body)
            .expect("json");
        assert_eq!(got["leadid"], json!(a));
        assert_eq!(got["subject"], json!("A"));

        // The moved key is still unique: neither a create nor another row may take c, and the
        // row may not take b; key a is free again.
        for (method, path, body) in [
            ("POST", "leads".to_owned(), json!({"new_k": "c"})),
            (
                "PATCH",
                format!("leads({})", new_id()),
                json!({"new_k": "c"}),
            ),
            ("PATCH", format!("leads({b})"), json!({"new_k": "c"})),
            ("PATCH", format!("leads({a})"), json!({"new_k": "b"})),
        ] {
            let (code, body) = status(send(&state, method, &path, body));
            assert_eq!(code, 412, "{method} {path}: {body}");
            assert!(body.contains("0x80060892"), "{body}");
        }
        let r = send(&state, "PATCH", &by_key("b"), json!({"new_k": "x"}));
        assert_eq!(
            status(r).0,
            204,
            "the key from the URL is stripped on update"
        );
        let r = send(
            &state,
            "POST",
            "leads",
            json!({"new_k": "a", "subject": "A2"}),
        );
        assert_eq!(status(r).0, 204);
        assert_index_exact(&lock(&state));
        let a2 = lock(&state)
            .find_by_key(LEAD, "new_k", "a")
            .expect("new lead a");
        assert_ne!(a2, a);

        // Clearing the key unindexes the row; Qualify and test-helper edits keep it exact.
        let r = send(
            &state,
            "PATCH",
            &format!("leads({a})"),
            json!({"new_k": null}),
        );
        assert_eq!(status(r).0, 204);
        assert_eq!(send(&state, "GET", &by_key("c"), Value::Null).status, 404);
        let qualify = json!({
            "CreateAccount": true, "CreateContact": true, "CreateOpportunity": true, "Status": 3,
        });
        let r = send(
            &state,
            "POST",
            &format!("{}/Microsoft.Dynamics.CRM.QualifyLead", by_key("a")),
            qualify,
        );
        assert_eq!(status(r).0, 200);
        {
            let mut s = lock(&state);
            s.tables[LEAD]
                .rows
                .update(&a, |row| row.columns.insert("new_k".into(), json!("a")));
            assert_eq!(
                s.find_by_key(LEAD, "new_k", "a"),
                Some(a.clone()),
                "the first created row wins"
            );
            assert_index_exact(&s);
            s.tables[LEAD].rows.remove(&a);
            assert_eq!(s.find_by_key(LEAD, "new_k", "a"), Some(a2.clone()));
            assert_index_exact(&s);
        }
    }
}
