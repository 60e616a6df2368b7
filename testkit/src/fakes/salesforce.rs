//! Fake Salesforce org: the OAuth token endpoint (client credentials and JWT bearer), the REST API
//! under `/services/data/vXX.X/` (sObject create/read/update/delete, upsert by external id,
//! describe, SOQL query with `nextRecordsUrl` paging, limits) and the slice of the Tooling API a
//! connector uses for setup (`CustomField` create and query), with permission sets and
//! field-level security deciding which custom fields the integration user can see.
//!
//! Behaviour follows `spec/salesforce.md`: JSON-array error bodies `[{"message","errorCode",
//! "fields"}]`, `Sforce-Limit-Info: api-usage=N/M` on every REST answer, `Date` from the fake's
//! clock, 18-character ids with the object key prefix, datetimes as `2026-12-03T07:00:00.000+0000`.
//! Where the spec marks behaviour as unverified the choice is documented on the helper that
//! switches it.

mod soql;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Deref,
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use openssl::{
    hash::MessageDigest,
    pkey::{PKey, Public},
    rsa::Padding,
    sign::Verifier,
    x509::X509,
};
use serde_json::{Map, Value, json};
use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};

use super::common::{FakeServer, Fault, Recorded, Reply, lock};

/// Lowest REST API version the fake serves (`updateOnly` needs v61.0).
pub const MIN_API_VERSION: f64 = 61.0;
/// Highest REST API version the fake serves (Winter '27).
pub const MAX_API_VERSION: f64 = 68.0;
/// The external-id field the connector upserts by.
pub const REFERRAL_ID_FIELD: &str = "Partner_Center_Referral_Id__c";
/// The six `assistanceRequestCode` values of the `How_can_Microsoft_help__c` picklist.
pub const ASSISTANCE_CODES: [&str; 6] = [
    "GeneralOrOther",
    "CustomerTechnicalArchitecture",
    "ProofOfConceptOrDemo",
    "QuotesOrLicensing",
    "PostSalesCustomerSuccess",
    "WorkloadSpecificValueProposition",
];

const ORG_ID: &str = "00D5g000004ABCDEAA";
const INTEGRATION_USER_ID: &str = "0055g00000AbCdEAAA";
/// The user that "edits" records through the test helpers (a seller in the org).
const SELLER_USER_ID: &str = "0055g00000SeLlRAAA";
const DEFAULT_BATCH: usize = 2000;

/// `2026-12-03T07:00:00.000+0000`
const SF_DATETIME: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000");
/// `Thu, 03 Dec 2026 07:00:00 GMT`
const HTTP_DATE: &[BorrowedFormatItem<'_>] = format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);
const DATE: &[BorrowedFormatItem<'_>] = format_description!("[year]-[month]-[day]");

// ---------------------------------------------------------------------------------------------
// Schema

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldType {
    Id,
    String,
    TextArea,
    Url,
    Email,
    Phone,
    Picklist,
    Boolean,
    Currency,
    Double,
    Percent,
    Date,
    DateTime,
    Reference,
}

impl FieldType {
    fn describe_name(self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::String => "string",
            FieldType::TextArea => "textarea",
            FieldType::Url => "url",
            FieldType::Email => "email",
            FieldType::Phone => "phone",
            FieldType::Picklist => "picklist",
            FieldType::Boolean => "boolean",
            FieldType::Currency => "currency",
            FieldType::Double => "double",
            FieldType::Percent => "percent",
            FieldType::Date => "date",
            FieldType::DateTime => "datetime",
            FieldType::Reference => "reference",
        }
    }

    fn is_text(self) -> bool {
        matches!(
            self,
            FieldType::String
                | FieldType::TextArea
                | FieldType::Url
                | FieldType::Email
                | FieldType::Phone
                | FieldType::Picklist
        )
    }
}

#[derive(Debug, Clone)]
struct FieldDef {
    name: String,
    label: String,
    ftype: FieldType,
    length: usize,
    /// Writable on create / update (false for system and formula-like fields).
    writable: bool,
    required: bool,
    picklist: Vec<String>,
    restricted: bool,
    external_id: bool,
    unique: bool,
    case_sensitive: bool,
    custom: bool,
    /// Created through the Tooling API: invisible until a permission set grants read.
    needs_grant: bool,
    reference_to: Option<&'static str>,
    default: Value,
}

impl FieldDef {
    fn new(name: &str, ftype: FieldType, length: usize) -> Self {
        Self {
            name: name.to_owned(),
            label: name.trim_end_matches("__c").replace('_', " "),
            ftype,
            length,
            writable: true,
            required: false,
            picklist: Vec::new(),
            restricted: false,
            external_id: false,
            unique: false,
            case_sensitive: false,
            custom: name.ends_with("__c"),
            needs_grant: false,
            reference_to: None,
            default: Value::Null,
        }
    }

    fn required(mut self) -> Self {
        self.required = true;
        self
    }

    fn read_only(mut self) -> Self {
        self.writable = false;
        self
    }

    fn picklist(mut self, values: &[&str], restricted: bool) -> Self {
        self.picklist = values.iter().map(|v| (*v).to_owned()).collect();
        self.restricted = restricted;
        self
    }

    fn reference(mut self, to: &'static str) -> Self {
        self.reference_to = Some(to);
        self
    }

    fn default(mut self, v: Value) -> Self {
        self.default = v;
        self
    }

    fn describe(&self, stages: &[Value]) -> Value {
        let picklist: Vec<Value> = if self.name == "StageName" {
            stages
                .iter()
                .filter(|s| s["IsActive"] == true)
                .map(|s| json!({"value": s["ApiName"], "label": s["MasterLabel"], "active": true, "defaultValue": false}))
                .collect()
        } else {
            self.picklist
                .iter()
                .map(|v| json!({"value": v, "label": v, "active": true, "defaultValue": false}))
                .collect()
        };
        let defaulted = !self.default.is_null() || !self.writable;
        json!({
            "name": self.name,
            "label": self.label,
            "type": self.ftype.describe_name(),
            "length": if self.ftype.is_text() { self.length } else { 0 },
            "createable": self.writable,
            "updateable": self.writable,
            "nillable": !self.required && self.ftype != FieldType::Boolean,
            "defaultedOnCreate": defaulted,
            "picklistValues": picklist,
            "restrictedPicklist": self.restricted,
            "externalId": self.external_id,
            "unique": self.unique,
            "caseSensitive": self.case_sensitive,
            "custom": self.custom,
            "referenceTo": self.reference_to.map_or_else(Vec::new, |r| vec![r]),
        })
    }
}

#[derive(Debug, Clone)]
struct ObjectDef {
    name: &'static str,
    prefix: &'static str,
    fields: Vec<FieldDef>,
    /// Only reachable through `/tooling/`.
    tooling: bool,
    /// Rows can be created through the API.
    createable: bool,
}

impl ObjectDef {
    fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

fn system_fields() -> Vec<FieldDef> {
    vec![
        FieldDef::new("Id", FieldType::Id, 18).read_only(),
        FieldDef::new("IsDeleted", FieldType::Boolean, 0).read_only(),
        FieldDef::new("CreatedDate", FieldType::DateTime, 0).read_only(),
        FieldDef::new("CreatedById", FieldType::Reference, 18)
            .read_only()
            .reference("User"),
        FieldDef::new("LastModifiedDate", FieldType::DateTime, 0).read_only(),
        FieldDef::new("LastModifiedById", FieldType::Reference, 18)
            .read_only()
            .reference("User"),
        FieldDef::new("SystemModstamp", FieldType::DateTime, 0).read_only(),
    ]
}

fn object(
    name: &'static str,
    prefix: &'static str,
    fields: Vec<FieldDef>,
    createable: bool,
) -> ObjectDef {
    let mut all = system_fields();
    all.extend(fields);
    ObjectDef {
        name,
        prefix,
        fields: all,
        tooling: false,
        createable,
    }
}

const LEAD_STATUSES: [&str; 4] = [
    "Open - Not Contacted",
    "Working - Contacted",
    "Closed - Converted",
    "Closed - Not Converted",
];
const LEAD_SOURCES: [&str; 5] = [
    "Web",
    "Phone Inquiry",
    "Partner Referral",
    "Purchased List",
    "Other",
];

fn default_objects() -> BTreeMap<String, ObjectDef> {
    use FieldType as T;
    let s = FieldDef::new;
    let objects = vec![
        object(
            "Lead",
            "00Q",
            vec![
                s("FirstName", T::String, 40),
                s("LastName", T::String, 80).required(),
                s("Company", T::String, 255).required(),
                s("Title", T::String, 128),
                s("Email", T::Email, 80),
                s("Phone", T::Phone, 40),
                s("Street", T::TextArea, 255),
                s("City", T::String, 40),
                s("State", T::String, 80),
                s("PostalCode", T::String, 20),
                s("Country", T::String, 80),
                s("Description", T::TextArea, 32000),
                s("LeadSource", T::Picklist, 255).picklist(&LEAD_SOURCES, false),
                s("Status", T::Picklist, 255)
                    .picklist(&LEAD_STATUSES, true)
                    .default(json!(LEAD_STATUSES[0])),
                s("OwnerId", T::Reference, 18).reference("User"),
                s("IsConverted", T::Boolean, 0).read_only(),
                s("ConvertedDate", T::Date, 0).read_only(),
                s("ConvertedAccountId", T::Reference, 18)
                    .read_only()
                    .reference("Account"),
                s("ConvertedContactId", T::Reference, 18)
                    .read_only()
                    .reference("Contact"),
                s("ConvertedOpportunityId", T::Reference, 18)
                    .read_only()
                    .reference("Opportunity"),
            ],
            true,
        ),
        object(
            "Opportunity",
            "006",
            vec![
                s("Name", T::String, 120).required(),
                s("StageName", T::Picklist, 255)
                    .required()
                    .picklist(&[], true),
                s("CloseDate", T::Date, 0).required(),
                s("Amount", T::Currency, 0),
                s("Probability", T::Percent, 0),
                s("Description", T::TextArea, 32000),
                s("AccountId", T::Reference, 18).reference("Account"),
                s("LeadSource", T::Picklist, 255).picklist(&LEAD_SOURCES, false),
                s("OwnerId", T::Reference, 18).reference("User"),
                s("IsClosed", T::Boolean, 0).read_only(),
                s("IsWon", T::Boolean, 0).read_only(),
                s("ForecastCategoryName", T::Picklist, 255)
                    .read_only()
                    .picklist(
                        &["Pipeline", "Best Case", "Commit", "Omitted", "Closed"],
                        true,
                    ),
            ],
            true,
        ),
        object(
            "Account",
            "001",
            vec![
                s("Name", T::String, 255).required(),
                s("BillingStreet", T::TextArea, 255),
                s("BillingCity", T::String, 40),
                s("BillingState", T::String, 80),
                s("BillingPostalCode", T::String, 20),
                s("BillingCountry", T::String, 80),
                s("Website", T::Url, 255),
                s("Phone", T::Phone, 40),
                s("OwnerId", T::Reference, 18).reference("User"),
            ],
            true,
        ),
        object(
            "Contact",
            "003",
            vec![
                s("FirstName", T::String, 40),
                s("LastName", T::String, 80).required(),
                s("Email", T::Email, 80),
                s("Phone", T::Phone, 40),
                s("Title", T::String, 128),
                s("AccountId", T::Reference, 18).reference("Account"),
            ],
            true,
        ),
        object(
            "OpportunityContactRole",
            "00K",
            vec![
                s("OpportunityId", T::Reference, 18)
                    .required()
                    .reference("Opportunity"),
                s("ContactId", T::Reference, 18)
                    .required()
                    .reference("Contact"),
                s("IsPrimary", T::Boolean, 0).default(json!(false)),
                s("Role", T::Picklist, 255),
            ],
            true,
        ),
        object(
            "OpportunityStage",
            "01J",
            vec![
                s("ApiName", T::String, 255).read_only(),
                s("MasterLabel", T::String, 255).read_only(),
                s("IsActive", T::Boolean, 0).read_only(),
                s("IsClosed", T::Boolean, 0).read_only(),
                s("IsWon", T::Boolean, 0).read_only(),
                s("SortOrder", T::Double, 0).read_only(),
                s("DefaultProbability", T::Percent, 0).read_only(),
                s("ForecastCategoryName", T::String, 255).read_only(),
            ],
            false,
        ),
        object(
            "Organization",
            "00D",
            vec![
                s("Name", T::String, 80).read_only(),
                s("DefaultCurrencyIsoCode", T::Picklist, 3).read_only(),
            ],
            false,
        ),
        object(
            "PermissionSet",
            "0PS",
            vec![
                s("Name", T::String, 80).required(),
                s("Label", T::String, 80).required(),
                s("Description", T::TextArea, 255),
            ],
            true,
        ),
        object(
            "FieldPermissions",
            "01k",
            vec![
                s("ParentId", T::Reference, 18)
                    .required()
                    .reference("PermissionSet"),
                s("SobjectType", T::String, 255).required(),
                s("Field", T::String, 255).required(),
                s("PermissionsRead", T::Boolean, 0).default(json!(false)),
                s("PermissionsEdit", T::Boolean, 0).default(json!(false)),
            ],
            true,
        ),
        object(
            "PermissionSetAssignment",
            "0Pa",
            vec![
                s("PermissionSetId", T::Reference, 18)
                    .required()
                    .reference("PermissionSet"),
                s("AssigneeId", T::Reference, 18)
                    .required()
                    .reference("User"),
            ],
            true,
        ),
        ObjectDef {
            tooling: true,
            ..object(
                "CustomField",
                "00N",
                vec![
                    s("DeveloperName", T::String, 40).read_only(),
                    s("TableEnumOrId", T::String, 40).read_only(),
                    s("FullName", T::String, 255).read_only(),
                ],
                true,
            )
        },
    ];
    objects
        .into_iter()
        .map(|o| (o.name.to_owned(), o))
        .collect()
}

/// `(ApiName, IsClosed, IsWon, DefaultProbability, ForecastCategoryName)` of the default org.
const DEFAULT_STAGES: [(&str, bool, bool, u32, &str); 10] = [
    ("Prospecting", false, false, 10, "Pipeline"),
    ("Qualification", false, false, 10, "Pipeline"),
    ("Needs Analysis", false, false, 20, "Pipeline"),
    ("Value Proposition", false, false, 50, "Pipeline"),
    ("Id. Decision Makers", false, false, 60, "Pipeline"),
    ("Perception Analysis", false, false, 70, "Pipeline"),
    ("Proposal/Price Quote", false, false, 75, "Pipeline"),
    ("Negotiation/Review", false, false, 90, "Pipeline"),
    ("Closed Won", true, true, 100, "Closed"),
    ("Closed Lost", true, false, 0, "Omitted"),
];

// ---------------------------------------------------------------------------------------------
// State

#[derive(Debug, Clone)]
struct Record {
    object: String,
    fields: Map<String, Value>,
    deleted: bool,
}

#[derive(Debug)]
struct Cursor {
    rows: Vec<Value>,
    batch: usize,
    tooling: bool,
}

#[derive(Debug)]
struct HtmlFault {
    status: u16,
    path_contains: String,
    times: usize,
}

#[derive(Debug)]
struct State {
    client_id: String,
    client_secret: String,
    username: String,
    run_as_user: bool,
    jwt_keys: Vec<PKey<Public>>,
    jwt_approved: bool,
    jwt_audiences: Vec<String>,
    tokens: HashSet<String>,
    tokens_issued: usize,
    expire_after_calls: Option<usize>,
    objects: BTreeMap<String, ObjectDef>,
    records: BTreeMap<String, Record>,
    next_id: u64,
    clock_offset_ms: i64,
    last_stamp_ms: i64,
    api_usage: u64,
    api_limit: u64,
    batch_size: usize,
    cursors: HashMap<String, Cursor>,
    next_cursor: u64,
    hidden: HashSet<(String, String)>,
    duplicate_races: HashMap<(String, String), usize>,
    update_returns_204: bool,
    deleted_holds_external_id: bool,
    writes: HashMap<String, usize>,
    lead_mapping: Vec<(String, String)>,
    html_faults: Vec<HtmlFault>,
}

impl State {
    fn new() -> Self {
        let mut s = Self {
            client_id: "3MVG9fake.client.id".into(),
            client_secret: "fake-client-secret".into(),
            username: "integration@example.com".into(),
            run_as_user: true,
            jwt_keys: Vec::new(),
            jwt_approved: true,
            jwt_audiences: vec![
                "https://login.salesforce.com".into(),
                "https://test.salesforce.com".into(),
            ],
            tokens: HashSet::new(),
            tokens_issued: 0,
            expire_after_calls: None,
            objects: default_objects(),
            records: BTreeMap::new(),
            next_id: 0,
            clock_offset_ms: 0,
            last_stamp_ms: 0,
            api_usage: 0,
            api_limit: 100_000,
            batch_size: DEFAULT_BATCH,
            cursors: HashMap::new(),
            next_cursor: 0,
            hidden: HashSet::new(),
            duplicate_races: HashMap::new(),
            update_returns_204: false,
            deleted_holds_external_id: true,
            writes: HashMap::new(),
            lead_mapping: Vec::new(),
            html_faults: Vec::new(),
        };
        for (i, (name, closed, won, prob, forecast)) in DEFAULT_STAGES.iter().enumerate() {
            let mut f = Map::new();
            f.insert("ApiName".into(), json!(name));
            f.insert("MasterLabel".into(), json!(name));
            f.insert("IsActive".into(), json!(true));
            f.insert("IsClosed".into(), json!(closed));
            f.insert("IsWon".into(), json!(won));
            f.insert("SortOrder".into(), json!(i + 1));
            f.insert("DefaultProbability".into(), json!(prob));
            f.insert("ForecastCategoryName".into(), json!(forecast));
            s.insert_raw("OpportunityStage", f, INTEGRATION_USER_ID);
        }
        let mut org = Map::new();
        org.insert("Name".into(), json!("Contoso Partner Org"));
        org.insert("DefaultCurrencyIsoCode".into(), json!("USD"));
        s.insert_raw("Organization", org, INTEGRATION_USER_ID);
        s
    }

    fn now_ms(&self) -> i64 {
        let real = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        i64::try_from(real).expect("a sane clock") + self.clock_offset_ms
    }

    /// A write timestamp: the fake's clock, never earlier than the previous stamp.
    fn stamp(&mut self) -> String {
        let ms = self.now_ms().max(self.last_stamp_ms);
        self.last_stamp_ms = ms;
        format_ms(ms)
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        make_id(prefix, self.next_id)
    }

    fn object(&self, name: &str) -> Option<&ObjectDef> {
        self.objects
            .values()
            .find(|o| o.name.eq_ignore_ascii_case(name))
    }

    fn stages(&self) -> Vec<Value> {
        self.records
            .values()
            .filter(|r| r.object == "OpportunityStage")
            .map(|r| Value::Object(r.fields.clone()))
            .collect()
    }

    /// Whether the integration user can see `object.field`.
    fn visible(&self, object: &str, field: &FieldDef) -> bool {
        if self
            .hidden
            .contains(&(object.to_owned(), field.name.clone()))
        {
            return false;
        }
        if !field.needs_grant {
            return true;
        }
        let full = format!("{object}.{}", field.name);
        self.records.values().any(|fp| {
            !fp.deleted
                && fp.object == "FieldPermissions"
                && fp.fields.get("Field").and_then(Value::as_str) == Some(full.as_str())
                && fp.fields.get("PermissionsRead") == Some(&json!(true))
                && self.records.values().any(|a| {
                    !a.deleted
                        && a.object == "PermissionSetAssignment"
                        && a.fields.get("PermissionSetId") == fp.fields.get("ParentId")
                        && a.fields.get("AssigneeId") == Some(&json!(INTEGRATION_USER_ID))
                })
        })
    }

    /// The visible field of `object` called `name` (case-insensitive), canonically spelled.
    fn visible_field(&self, object: &str, name: &str) -> Option<FieldDef> {
        let def = self.object(object)?;
        def.field(name)
            .filter(|f| self.visible(def.name, f))
            .cloned()
    }

    /// Stores a record without validation; returns its id.
    fn insert_raw(&mut self, object: &str, mut fields: Map<String, Value>, by: &str) -> String {
        let def = self
            .object(object)
            .expect("insert_raw: known object")
            .clone();
        let id = self.new_id(def.prefix);
        let stamp = self.stamp();
        for f in &def.fields {
            if !f.default.is_null() && !fields.contains_key(&f.name) {
                fields.insert(f.name.clone(), f.default.clone());
            }
        }
        fields.insert("Id".into(), json!(id));
        fields.insert("IsDeleted".into(), json!(false));
        fields.insert("CreatedDate".into(), json!(stamp));
        fields.insert("CreatedById".into(), json!(by));
        fields.insert("LastModifiedDate".into(), json!(stamp));
        fields.insert("LastModifiedById".into(), json!(by));
        fields.insert("SystemModstamp".into(), json!(stamp));
        match def.name {
            "Lead" => {
                fields.entry("IsConverted").or_insert(json!(false));
                fields
                    .entry("OwnerId")
                    .or_insert(json!(INTEGRATION_USER_ID));
            }
            "Opportunity" | "Account" => {
                fields
                    .entry("OwnerId")
                    .or_insert(json!(INTEGRATION_USER_ID));
            }
            _ => {}
        }
        let mut rec = Record {
            object: def.name.to_owned(),
            fields,
            deleted: false,
        };
        self.derive(&mut rec);
        self.records.insert(id.clone(), rec);
        id
    }

    /// Applies `changes` to record `id` and bumps its modification stamps.
    fn update_raw(&mut self, id: &str, changes: Map<String, Value>, by: &str) {
        let stamp = self.stamp();
        let mut rec = self
            .records
            .get(id)
            .expect("update_raw: record exists")
            .clone();
        // A new stage brings its default probability unless one is written with it.
        if changes.contains_key("StageName") && !changes.contains_key("Probability") {
            rec.fields.remove("Probability");
        }
        for (k, v) in changes {
            rec.fields.insert(k, v);
        }
        rec.fields.insert("LastModifiedDate".into(), json!(stamp));
        rec.fields.insert("LastModifiedById".into(), json!(by));
        rec.fields.insert("SystemModstamp".into(), json!(stamp));
        self.derive(&mut rec);
        self.records.insert(id.to_owned(), rec);
    }

    /// Fields Salesforce computes: IsClosed/IsWon/ForecastCategoryName from the stage.
    fn derive(&self, rec: &mut Record) {
        if rec.object != "Opportunity" {
            return;
        }
        let stage = rec.fields.get("StageName").and_then(Value::as_str);
        let row = self.records.values().find(|r| {
            r.object == "OpportunityStage"
                && r.fields.get("ApiName").and_then(Value::as_str) == stage
        });
        if let Some(row) = row {
            for (from, to) in [
                ("IsClosed", "IsClosed"),
                ("IsWon", "IsWon"),
                ("ForecastCategoryName", "ForecastCategoryName"),
            ] {
                rec.fields.insert(
                    to.into(),
                    row.fields.get(from).cloned().unwrap_or(Value::Null),
                );
            }
            if rec.fields.get("Probability").is_none_or(Value::is_null) {
                rec.fields.insert(
                    "Probability".into(),
                    row.fields
                        .get("DefaultProbability")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
            }
        }
    }

    fn count_write(&mut self, object: &str) {
        *self.writes.entry(object.to_owned()).or_default() += 1;
    }

    fn new_token(&mut self) -> String {
        self.tokens_issued += 1;
        let token = format!("{}!AQ{}", &ORG_ID[..15], uuid::Uuid::new_v4().simple());
        self.tokens.insert(token.clone());
        token
    }
}

fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("a representable time")
        .format(SF_DATETIME)
        .expect("format a timestamp")
}

/// An 18-character id: 3-character key prefix, 12 characters of base-62 counter, and the
/// 3-character case-safe suffix Salesforce computes from the upper-case letters.
fn make_id(prefix: &str, n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut body = vec![b'0'; 12];
    let mut v = n;
    for slot in body.iter_mut().rev() {
        *slot = DIGITS[(v % 62) as usize];
        v /= 62;
    }
    body[0] = b'5';
    body[1] = b'g';
    let id15 = format!("{prefix}{}", String::from_utf8_lossy(&body));
    let mut id = id15.clone();
    const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    for chunk in id15.as_bytes().chunks(5) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        id.push(SUFFIX[bits] as char);
    }
    id
}

/// Whether `s` looks like an 18-character id with key prefix `prefix`.
fn is_id_of(s: &str, prefix: &str) -> bool {
    s.len() == 18 && s.starts_with(prefix) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------------------------
// Public API

/// What [`FakeSalesforce::convert_lead`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertedLead {
    /// The new Account.
    pub account_id: String,
    /// The new Contact.
    pub contact_id: String,
    /// The new Opportunity.
    pub opportunity_id: String,
}

/// Fake Salesforce org on 127.0.0.1; `base_url()` is what a user sets as `SALESFORCE_URL` and what
/// the token endpoint returns as `instance_url`.
#[derive(Debug)]
pub struct FakeSalesforce {
    server: FakeServer,
    state: Arc<Mutex<State>>,
}

impl Deref for FakeSalesforce {
    type Target = FakeServer;
    fn deref(&self) -> &FakeServer {
        &self.server
    }
}

impl FakeSalesforce {
    /// Starts the fake over plain HTTP on 127.0.0.1, with the default objects and stages but
    /// without the connector's custom fields (see [`with_connector_fields`](Self::with_connector_fields)).
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::new()));
        let handler_state = state.clone();
        let server = FakeServer::start(
            Box::new(move |req, base| handle(&handler_state, req, base)),
            fault_body,
            None,
        )
        .await;
        lock(&state).jwt_audiences.push(server.base_url());
        Self { server, state }
    }

    /// Creates the connector's custom fields on Lead and Opportunity, visible to the integration
    /// user (as if created through the Tooling API and granted by a permission set).
    pub fn with_connector_fields(self) -> Self {
        {
            let mut s = lock(&self.state);
            for (object, meta) in connector_fields() {
                let full = format!("{object}.{}", meta["fullName"].as_str().unwrap_or_default());
                // Ignore "already exists": the helper is idempotent.
                let _ = create_custom_field(&mut s, &full, &meta, false);
            }
        }
        self
    }

    /// The consumer key accepted by the token endpoint.
    pub fn client_id(&self) -> String {
        lock(&self.state).client_id.clone()
    }

    /// The consumer secret accepted by the client-credentials grant.
    pub fn client_secret(&self) -> String {
        lock(&self.state).client_secret.clone()
    }

    /// The integration user's username (the JWT `sub`).
    pub fn username(&self) -> String {
        lock(&self.state).username.clone()
    }

    /// The integration user's id (the "Run As" user; `AssigneeId` of its permission sets).
    pub fn integration_user_id(&self) -> &'static str {
        INTEGRATION_USER_ID
    }

    /// The id the helpers' "user edits" are attributed to (`LastModifiedById`).
    pub fn seller_user_id(&self) -> &'static str {
        SELLER_USER_ID
    }

    /// Sets the consumer key and secret.
    pub fn set_client_credentials(&self, client_id: &str, client_secret: &str) -> &Self {
        let mut s = lock(&self.state);
        s.client_id = client_id.to_owned();
        s.client_secret = client_secret.to_owned();
        self
    }

    /// With `false` the app has no "Run As" user: client credentials answer 400 `invalid_grant`
    /// "no client credentials user enabled" (the description is unverified).
    pub fn set_run_as_user(&self, enabled: bool) -> &Self {
        lock(&self.state).run_as_user = enabled;
        self
    }

    /// Registers the certificate (or public key) PEM of the app, against which JWT assertions
    /// are verified. Panics on a PEM that is neither.
    pub fn register_jwt_certificate(&self, pem: &[u8]) -> &Self {
        let key = X509::from_pem(pem)
            .and_then(|c| c.public_key())
            .or_else(|_| PKey::public_key_from_pem(pem))
            .expect("register_jwt_certificate: a certificate or public key PEM");
        lock(&self.state).jwt_keys.push(key);
        self
    }

    /// With `false` the JWT grant answers "user hasn't approved this consumer" (no admin
    /// pre-authorisation and no prior user approval).
    pub fn set_jwt_approved(&self, approved: bool) -> &Self {
        lock(&self.state).jwt_approved = approved;
        self
    }

    /// Number of access tokens issued so far (both grants).
    pub fn tokens_issued(&self) -> usize {
        lock(&self.state).tokens_issued
    }

    /// Expires (revokes) every token issued so far: the next REST call with one gets 401
    /// `INVALID_SESSION_ID`.
    pub fn expire_tokens(&self) {
        lock(&self.state).tokens.clear();
    }

    /// Expires every token once `n` more authenticated REST calls have been answered (a session
    /// timing out mid-run).
    pub fn expire_tokens_after(&self, n: usize) {
        lock(&self.state).expire_after_calls = Some(n);
    }

    /// API calls counted so far (the `N` of `Sforce-Limit-Info: api-usage=N/M`).
    pub fn api_usage(&self) -> u64 {
        lock(&self.state).api_usage
    }

    /// Sets the calls counted so far (`N`); at `N >= M` every REST call gets 403
    /// `REQUEST_LIMIT_EXCEEDED`.
    pub fn set_api_usage(&self, n: u64) {
        lock(&self.state).api_usage = n;
    }

    /// Sets the daily allocation (`M`, default 100000).
    pub fn set_api_limit(&self, m: u64) {
        lock(&self.state).api_limit = m;
    }

    /// Sets the default query batch size (default 2000; the `Sforce-Query-Options: batchSize=`
    /// header still wins when it is within 200..=2000, as on the real service).
    pub fn set_batch_size(&self, n: usize) {
        lock(&self.state).batch_size = n.max(1);
    }

    /// Moves the fake's clock (write stamps, `Date` header, JWT `exp` checks) by `ms` milliseconds.
    pub fn advance_clock_ms(&self, ms: i64) {
        lock(&self.state).clock_offset_ms += ms;
    }

    /// The fake's current time in Salesforce format (`2026-12-03T07:00:00.000+0000`).
    pub fn now(&self) -> String {
        format_ms(lock(&self.state).now_ms())
    }

    /// Hides `object.field` from the integration user (no field-level security): describe omits
    /// it, writes and `?fields=` get `INVALID_FIELD`, SOQL gets `INVALID_FIELD`.
    pub fn hide_field(&self, object: &str, field: &str) {
        lock(&self.state)
            .hidden
            .insert((object.to_owned(), field.to_owned()));
    }

    /// Turns on multiple currencies, as Setup > Company Information does: `CurrencyIsoCode` (a
    /// restricted picklist of `codes`, defaulting to the corporate currency) appears on Lead,
    /// Opportunity and Account; the first code is the corporate currency.
    pub fn enable_multi_currency(&self, codes: &[&str]) {
        let mut s = lock(&self.state);
        let corporate = codes.first().copied().unwrap_or("USD");
        for object in ["Lead", "Opportunity", "Account"] {
            if let Some(def) = s.objects.get_mut(object)
                && !def.fields.iter().any(|f| f.name == "CurrencyIsoCode")
            {
                def.fields.push(
                    FieldDef::new("CurrencyIsoCode", FieldType::Picklist, 3)
                        .picklist(codes, true)
                        .default(json!(corporate)),
                );
            }
        }
        for record in s.records.values_mut() {
            if record.object == "Organization" {
                record
                    .fields
                    .insert("DefaultCurrencyIsoCode".into(), json!(corporate));
            }
        }
    }

    /// Makes the next `times` creates of `object` with `field = value` lose a race: another writer
    /// creates the record first (it is stored) and this request gets 400 `DUPLICATE_VALUE`.
    /// Deterministic stand-in for two creates within the same instant, which the fake's
    /// serialised handler can never produce by itself.
    pub fn race_next_create(&self, object: &str, value: &str, times: usize) {
        lock(&self.state)
            .duplicate_races
            .insert((object.to_owned(), value.to_lowercase()), times);
    }

    /// With `true`, upserts that update answer 204 without a body (older behaviour) instead of
    /// 200 `{"created": false}`.
    pub fn set_update_returns_204(&self, yes: bool) {
        lock(&self.state).update_returns_204 = yes;
    }

    /// Whether a deleted record still holds its unique external id (unverified; default `true`):
    /// an upsert of that value then answers 400 `ENTITY_IS_DELETED`; with `false` it creates a
    /// new record.
    pub fn set_deleted_holds_external_id(&self, yes: bool) {
        lock(&self.state).deleted_holds_external_id = yes;
    }

    /// Adds a Lead → Opportunity field mapping applied by [`convert_lead`](Self::convert_lead)
    /// ("Map Lead Fields"), e.g. `Partner_Center_Referral_Id__c` to itself.
    pub fn map_lead_field(&self, lead_field: &str, opportunity_field: &str) {
        lock(&self.state)
            .lead_mapping
            .push((lead_field.to_owned(), opportunity_field.to_owned()));
    }

    /// Inserts a record of `object` as a seller would (no validation); returns its id.
    pub fn insert(&self, object: &str, fields: Value) -> String {
        let mut s = lock(&self.state);
        let name = s
            .object(object)
            .unwrap_or_else(|| panic!("insert: unknown object {object}"))
            .name;
        let Value::Object(map) = fields else {
            panic!("insert: fields must be a JSON object")
        };
        s.insert_raw(name, map, SELLER_USER_ID)
    }

    /// The record `id` with every field (deleted ones too; `IsDeleted` tells).
    pub fn get(&self, id: &str) -> Option<Value> {
        lock(&self.state)
            .records
            .get(id)
            .map(|r| Value::Object(r.fields.clone()))
    }

    /// All live records of `object`, oldest first.
    pub fn records(&self, object: &str) -> Vec<Value> {
        lock(&self.state)
            .records
            .values()
            .filter(|r| r.object.eq_ignore_ascii_case(object) && !r.deleted)
            .map(|r| Value::Object(r.fields.clone()))
            .collect()
    }

    /// Live records of `object` whose `Partner_Center_Referral_Id__c` equals `value`
    /// (case-insensitive).
    pub fn find_by_referral_id(&self, object: &str, value: &str) -> Vec<Value> {
        self.records(object)
            .into_iter()
            .filter(|r| {
                r[REFERRAL_ID_FIELD]
                    .as_str()
                    .is_some_and(|v| v.eq_ignore_ascii_case(value))
            })
            .collect()
    }

    /// A seller edits `field` of record `id`: sets it (no validation), bumps `LastModifiedDate`
    /// and `SystemModstamp`, `LastModifiedById` = [`seller_user_id`](Self::seller_user_id).
    pub fn set_field(&self, id: &str, field: &str, value: Value) {
        let mut s = lock(&self.state);
        assert!(s.records.contains_key(id), "set_field: no record {id}");
        let mut changes = Map::new();
        changes.insert(field.to_owned(), value);
        s.update_raw(id, changes, SELLER_USER_ID);
    }

    /// A seller moves opportunity `id` to `stage` (IsClosed/IsWon follow the stage table).
    pub fn set_stage(&self, id: &str, stage: &str) {
        self.set_field(id, "StageName", json!(stage));
    }

    /// Overwrites `SystemModstamp` (and `LastModifiedDate`) of `id` without other changes, to
    /// plant records at known times. `stamp` is any accepted datetime form.
    pub fn set_system_modstamp(&self, id: &str, stamp: &str) {
        let ms = soql::parse_datetime(stamp).expect("set_system_modstamp: a datetime");
        let mut s = lock(&self.state);
        let rec = s
            .records
            .get_mut(id)
            .expect("set_system_modstamp: record exists");
        rec.fields
            .insert("SystemModstamp".into(), json!(format_ms(ms)));
        rec.fields
            .insert("LastModifiedDate".into(), json!(format_ms(ms)));
    }

    /// Deletes record `id` into the recycle bin (`IsDeleted`), as a seller would.
    pub fn delete(&self, id: &str) {
        let mut s = lock(&self.state);
        let stamp = s.stamp();
        let rec = s.records.get_mut(id).expect("delete: record exists");
        rec.deleted = true;
        rec.fields.insert("IsDeleted".into(), json!(true));
        rec.fields.insert("SystemModstamp".into(), json!(stamp));
    }

    /// Converts lead `id` as a seller would: creates an Account (from Company and the address),
    /// a Contact (name, email, phone), an Opportunity (`Company-` name, first stage, close date
    /// at the end of the current quarter, LeadSource, plus the [`map_lead_field`](Self::map_lead_field)
    /// mappings) and a primary OpportunityContactRole; marks the lead converted.
    pub fn convert_lead(&self, id: &str) -> ConvertedLead {
        let mut s = lock(&self.state);
        let lead = s
            .records
            .get(id)
            .filter(|r| r.object == "Lead" && !r.deleted)
            .unwrap_or_else(|| panic!("convert_lead: no lead {id}"))
            .fields
            .clone();
        assert_ne!(
            lead.get("IsConverted"),
            Some(&json!(true)),
            "already converted"
        );
        let pick = |pairs: &[(&str, &str)]| -> Map<String, Value> {
            pairs
                .iter()
                .filter_map(|(from, to)| {
                    lead.get(*from)
                        .filter(|v| !v.is_null())
                        .map(|v| ((*to).to_owned(), v.clone()))
                })
                .collect()
        };
        let account = pick(&[
            ("Company", "Name"),
            ("Street", "BillingStreet"),
            ("City", "BillingCity"),
            ("State", "BillingState"),
            ("PostalCode", "BillingPostalCode"),
            ("Country", "BillingCountry"),
            ("Phone", "Phone"),
        ]);
        let account_id = s.insert_raw("Account", account, SELLER_USER_ID);
        let mut contact = pick(&[
            ("FirstName", "FirstName"),
            ("LastName", "LastName"),
            ("Email", "Email"),
            ("Phone", "Phone"),
            ("Title", "Title"),
        ]);
        contact.insert("AccountId".into(), json!(account_id));
        let contact_id = s.insert_raw("Contact", contact, SELLER_USER_ID);
        let mapping: Vec<(String, String)> = s.lead_mapping.clone();
        let mut opp = pick(&[("LeadSource", "LeadSource"), ("Description", "Description")]);
        for (from, to) in &mapping {
            if let Some(v) = lead.get(from) {
                opp.insert(to.clone(), v.clone());
            }
        }
        let company = lead.get("Company").and_then(Value::as_str).unwrap_or("");
        opp.insert("Name".into(), json!(format!("{company}-")));
        opp.insert("StageName".into(), json!(DEFAULT_STAGES[0].0));
        opp.insert("CloseDate".into(), json!(end_of_quarter(s.now_ms())));
        opp.insert("AccountId".into(), json!(account_id));
        let opportunity_id = s.insert_raw("Opportunity", opp, SELLER_USER_ID);
        let mut role = Map::new();
        role.insert("OpportunityId".into(), json!(opportunity_id));
        role.insert("ContactId".into(), json!(contact_id));
        role.insert("IsPrimary".into(), json!(true));
        s.insert_raw("OpportunityContactRole", role, SELLER_USER_ID);
        let today = OffsetDateTime::from_unix_timestamp_nanos(i128::from(s.now_ms()) * 1_000_000)
            .expect("a representable time")
            .format(DATE)
            .expect("format a date");
        let mut changes = Map::new();
        changes.insert("IsConverted".into(), json!(true));
        changes.insert("Status".into(), json!("Closed - Converted"));
        changes.insert("ConvertedDate".into(), json!(today));
        changes.insert("ConvertedAccountId".into(), json!(account_id));
        changes.insert("ConvertedContactId".into(), json!(contact_id));
        changes.insert("ConvertedOpportunityId".into(), json!(opportunity_id));
        s.update_raw(id, changes, SELLER_USER_ID);
        ConvertedLead {
            account_id,
            contact_id,
            opportunity_id,
        }
    }

    /// Successful data writes through the API (creates, updates, upserts, deletes), all objects.
    pub fn write_count(&self) -> usize {
        lock(&self.state).writes.values().sum()
    }

    /// Successful data writes through the API on `object`.
    pub fn write_count_on(&self, object: &str) -> usize {
        lock(&self.state).writes.get(object).copied().unwrap_or(0)
    }

    /// The `Sforce-Auto-Assign` header of each write request to `object` (`None` = absent), in
    /// order, from the request log.
    pub fn auto_assign_headers(&self, object: &str) -> Vec<Option<String>> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.method != "GET" && r.decoded_path().contains(&format!("/sobjects/{object}"))
            })
            .map(|r| r.header("sforce-auto-assign").map(str::to_owned))
            .collect()
    }

    /// A 403 `REQUEST_LIMIT_EXCEEDED` "TotalRequests Limit exceeded." fault (inject it).
    pub fn request_limit_fault() -> Fault {
        Fault::status(403)
    }

    /// A 503 `SERVER_UNAVAILABLE` "Server too busy" fault (inject it).
    pub fn server_unavailable_fault() -> Fault {
        Fault::status(503)
    }

    /// A 400 `UNABLE_TO_LOCK_ROW` fault (inject it).
    pub fn unable_to_lock_row_fault() -> Fault {
        Fault::status(400)
    }

    /// The next `times` requests whose path contains `path_contains` get `status` with an HTML
    /// page (`text/html`), as the edge in front of the org sometimes answers.
    pub fn inject_html(&self, status: u16, path_contains: &str, times: usize) {
        lock(&self.state).html_faults.push(HtmlFault {
            status,
            path_contains: path_contains.to_owned(),
            times,
        });
    }
}

fn end_of_quarter(now_ms: i64) -> String {
    let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .expect("a representable time");
    let month = u8::from(now.month());
    let (end_month, end_day) = match month {
        1..=3 => (3, 31),
        4..=6 => (6, 30),
        7..=9 => (9, 30),
        _ => (12, 31),
    };
    format!("{:04}-{end_month:02}-{end_day:02}", now.year())
}

/// The connector's custom fields as Tooling `Metadata` (with `fullName` = field name).
fn connector_fields() -> Vec<(&'static str, Value)> {
    let referral = json!({"fullName": REFERRAL_ID_FIELD, "label": "Partner Center Referral Id",
        "type": "Text", "length": 36, "externalId": true, "unique": true, "caseSensitive": false});
    let link = json!({"fullName": "Partner_Center_Link__c", "label": "Partner Center Link", "type": "Url"});
    let status = json!({"fullName": "Partner_Center_Sync_Status__c", "label": "Partner Center Sync Status",
        "type": "Text", "length": 255});
    let audit = json!({"fullName": "Partner_Center_Audit__c", "label": "Partner Center Audit",
        "type": "LongTextArea", "length": 32768, "visibleLines": 5});
    let values: Vec<Value> = ASSISTANCE_CODES
        .iter()
        .map(|c| json!({"fullName": c, "label": c, "default": false}))
        .collect();
    let mut out = vec![
        ("Lead", referral.clone()),
        ("Lead", link.clone()),
        ("Lead", status.clone()),
        ("Lead", audit.clone()),
        ("Opportunity", referral),
        ("Opportunity", link),
        ("Opportunity", status),
        ("Opportunity", audit),
    ];
    out.push((
        "Opportunity",
        json!({"fullName": "Sync_with_Partner_Center__c", "label": "Sync with Partner Center",
            "type": "Checkbox", "defaultValue": "false"}),
    ));
    out.push((
        "Opportunity",
        json!({"fullName": "How_can_Microsoft_help__c", "label": "How can Microsoft help?",
            "type": "Picklist", "valueSet": {"restricted": true, "valueSetDefinition": {"value": values}}}),
    ));
    out.push((
        "Opportunity",
        json!({"fullName": "Partner_Center_Solutions__c", "label": "Partner Center Solutions",
            "type": "Text", "length": 255}),
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// Errors

/// `[{"message", "errorCode", "fields"}]`.
fn sf_error(status: u16, code: &str, message: &str, fields: &[&str]) -> Reply {
    Reply::json(
        status,
        &json!([{ "message": message, "errorCode": code, "fields": fields }]),
    )
}

/// `[{"message", "errorCode"}]` (session, limit and server errors carry no `fields`).
fn sf_error_plain(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, &json!([{ "message": message, "errorCode": code }]))
}

fn not_found() -> Reply {
    sf_error_plain(404, "NOT_FOUND", "The requested resource does not exist")
}

fn oauth_error(error: &str, description: &str) -> Reply {
    Reply::json(
        400,
        &json!({ "error": error, "error_description": description }),
    )
}

/// Salesforce-shaped bodies for faults injected through [`Fault`]: 401 `INVALID_SESSION_ID`,
/// 403 `REQUEST_LIMIT_EXCEEDED`, 503 `SERVER_UNAVAILABLE`, 400 `UNABLE_TO_LOCK_ROW`, 404
/// `NOT_FOUND`, anything else `UNKNOWN_EXCEPTION`.
fn fault_body(status: u16, _retry_after: Option<u64>) -> String {
    let (code, message) = match status {
        400 => (
            "UNABLE_TO_LOCK_ROW",
            "unable to obtain exclusive access to this record or 1 records: 0065g000000AAAAAAA"
                .to_owned(),
        ),
        401 => (
            "INVALID_SESSION_ID",
            "Session expired or invalid".to_owned(),
        ),
        403 => (
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.".to_owned(),
        ),
        404 => (
            "NOT_FOUND",
            "The requested resource does not exist".to_owned(),
        ),
        503 => ("SERVER_UNAVAILABLE", "Server too busy".to_owned()),
        _ => (
            "UNKNOWN_EXCEPTION",
            format!(
                "An unexpected error occurred. Please include this ErrorId if you contact support: \
                 1234567890-12345 ({status})"
            ),
        ),
    };
    json!([{ "message": message, "errorCode": code }]).to_string()
}

fn html_page(status: u16) -> Reply {
    let body = format!(
        "<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body>\
         <h1>{status} - Service Unavailable</h1><p>The server is temporarily unable to service \
         your request. Please try again later.</p></body></html>"
    );
    Reply {
        status,
        headers: vec![("content-type".into(), "text/html;charset=UTF-8".into())],
        body,
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

fn handle(state: &Mutex<State>, req: &Recorded, base: &str) -> Reply {
    let mut s = lock(state);
    let date = OffsetDateTime::from_unix_timestamp_nanos(i128::from(s.now_ms()) * 1_000_000)
        .expect("a representable time")
        .format(HTTP_DATE)
        .expect("format an HTTP date");
    let reply = route(&mut s, req, base);
    reply.header("date", date)
}

fn route(s: &mut State, req: &Recorded, base: &str) -> Reply {
    let path = req.decoded_path();
    let path = path.trim_end_matches('/').to_owned();
    if let Some(i) = s
        .html_faults
        .iter()
        .position(|f| f.times > 0 && path.contains(&f.path_contains))
    {
        let status = s.html_faults[i].status;
        s.html_faults[i].times -= 1;
        if s.html_faults[i].times == 0 {
            s.html_faults.remove(i);
        }
        return html_page(status);
    }
    if path == "/services/oauth2/token" {
        return if req.method == "POST" {
            token(s, req, base)
        } else {
            oauth_error("invalid_request", "must use HTTP POST")
        };
    }
    if path == "/services/data" {
        let versions: Vec<Value> = (61..=68)
            .map(|v| json!({"version": format!("{v}.0"), "url": format!("/services/data/v{v}.0"), "label": format!("v{v}.0")}))
            .collect();
        return Reply::json(200, &Value::Array(versions));
    }
    let Some(rest) = path.strip_prefix("/services/data/v") else {
        return not_found();
    };
    let (version, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let ok_version = version.contains('.')
        && version
            .parse::<f64>()
            .is_ok_and(|v| (MIN_API_VERSION..=MAX_API_VERSION).contains(&v));
    if !ok_version {
        return not_found();
    }
    let version = version.to_owned();
    let rest = rest.to_owned();
    if !req.bearer().is_some_and(|t| s.tokens.contains(t)) {
        return sf_error_plain(401, "INVALID_SESSION_ID", "Session expired or invalid")
            .header("www-authenticate", "Token");
    }
    if s.api_usage >= s.api_limit {
        return sf_error_plain(
            403,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
        )
        .header(
            "sforce-limit-info",
            format!("api-usage={}/{}", s.api_usage, s.api_limit),
        );
    }
    s.api_usage += 1;
    let ctx = Ctx {
        req,
        version: &version,
    };
    let reply = rest_route(s, &ctx, &rest);
    if let Some(n) = s.expire_after_calls.as_mut() {
        if *n <= 1 {
            s.tokens.clear();
            s.expire_after_calls = None;
        } else {
            *n -= 1;
        }
    }
    reply.header(
        "sforce-limit-info",
        format!("api-usage={}/{}", s.api_usage, s.api_limit),
    )
}

struct Ctx<'a> {
    req: &'a Recorded,
    version: &'a str,
}

impl Ctx<'_> {
    fn sobject_url(&self, object: &str, id: &str) -> String {
        format!("/services/data/v{}/sobjects/{object}/{id}", self.version)
    }
}

fn rest_route(s: &mut State, ctx: &Ctx<'_>, rest: &str) -> Reply {
    let segs: Vec<&str> = rest.split('/').collect();
    let method = ctx.req.method.as_str();
    match (method, segs.as_slice()) {
        ("GET", ["limits"]) => Reply::json(
            200,
            &json!({"DailyApiRequests": {"Max": s.api_limit, "Remaining": s.api_limit.saturating_sub(s.api_usage)}}),
        ),
        ("GET", ["query"]) => query(s, ctx, false, false),
        ("GET", ["queryAll"]) => query(s, ctx, false, true),
        ("GET", ["query" | "queryAll", locator]) => query_more(s, ctx, locator, false),
        ("GET", ["tooling", "query"]) => query(s, ctx, true, false),
        ("GET", ["tooling", "query", locator]) => query_more(s, ctx, locator, true),
        ("POST", ["tooling", "sobjects", "CustomField"]) => tooling_create_field(s, ctx),
        (_, ["tooling", ..]) => not_found(),
        (_, ["sobjects", object, tail @ ..]) => {
            let Some(def) = s.object(object).filter(|d| !d.tooling).cloned() else {
                return not_found();
            };
            match (method, tail) {
                ("GET", ["describe"]) => describe(s, &def),
                ("POST", []) => create(s, ctx, &def),
                ("GET", [id]) => get_by_id(s, ctx, &def, id),
                ("PATCH", [id]) => update_by_id(s, ctx, &def, id),
                ("DELETE", [id]) => delete_by_id(s, &def, id),
                ("PATCH", [field, value]) => upsert(s, ctx, &def, field, value),
                ("GET", [field, value]) => get_by_external_id(s, ctx, &def, field, value),
                _ => not_found(),
            }
        }
        _ => not_found(),
    }
}

// ---------------------------------------------------------------------------------------------
// OAuth

fn token(s: &mut State, req: &Recorded, base: &str) -> Reply {
    let grant = req.form_value("grant_type").unwrap_or_default();
    match grant.as_str() {
        "client_credentials" => {
            let (mut id, mut secret) =
                (req.form_value("client_id"), req.form_value("client_secret"));
            if let Some((bid, bsecret)) = basic_auth(req) {
                id = id.or(Some(bid));
                secret = secret.or(Some(bsecret));
            }
            if id.as_deref() != Some(s.client_id.as_str()) {
                return oauth_error("invalid_client_id", "client identifier invalid");
            }
            if secret.as_deref() != Some(s.client_secret.as_str()) {
                return oauth_error("invalid_client", "invalid client credentials");
            }
            if !s.run_as_user {
                return oauth_error("invalid_grant", "no client credentials user enabled");
            }
            token_reply(s, base, true)
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let Some(assertion) = req.form_value("assertion") else {
                return oauth_error("invalid_request", "assertion is required");
            };
            match check_jwt(s, &assertion, base) {
                Ok(()) => token_reply(s, base, false),
                Err((error, description)) => oauth_error(error, description),
            }
        }
        "" => oauth_error("unsupported_grant_type", "grant type not supported"),
        _ => oauth_error("unsupported_grant_type", "grant type not supported"),
    }
}

fn basic_auth(req: &Recorded) -> Option<(String, String)> {
    let value = req.header("authorization")?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Client credentials answer with `issued_at` and `signature`; the JWT grant (where the spec
/// reports `issued_at` "sometimes absent") answers without both, so clients must not need them.
fn token_reply(s: &mut State, base: &str, with_issued_at: bool) -> Reply {
    let token = s.new_token();
    let issued_at = s.now_ms().to_string();
    let id_url = format!("{base}/id/{ORG_ID}/{INTEGRATION_USER_ID}");
    let mut body = json!({
        "access_token": token,
        "scope": "api",
        "instance_url": base,
        "id": id_url,
        "token_type": "Bearer",
    });
    if with_issued_at {
        let sig = openssl::sha::sha256(format!("{id_url}{issued_at}").as_bytes());
        body["issued_at"] = json!(issued_at);
        body["signature"] = json!(base64::engine::general_purpose::STANDARD.encode(sig));
    }
    Reply::json(200, &body)
}

type OAuthFailure = (&'static str, &'static str);

/// Verifies a JWT bearer assertion. Descriptions as observed from the real endpoint: a bad
/// signature or shape is "invalid assertion", a past `exp` is "expired authorization code", a
/// wrong `aud` "audience is invalid", an unknown or unapproved user "user hasn't approved this
/// consumer", an unknown `iss` "client identifier invalid".
fn check_jwt(s: &State, assertion: &str, base: &str) -> Result<(), OAuthFailure> {
    const INVALID: OAuthFailure = ("invalid_grant", "invalid assertion");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = assertion.split('.');
    let (Some(h), Some(c), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(INVALID);
    };
    let decode_json = |p: &str| -> Option<Value> {
        serde_json::from_slice(&b64.decode(p.trim_end_matches('=')).ok()?).ok()
    };
    let (Some(header), Some(claims)) = (decode_json(h), decode_json(c)) else {
        return Err(INVALID);
    };
    if header["alg"] != "RS256" {
        return Err(("invalid_grant", "invalid assertion algorithm"));
    }
    let Ok(sig) = b64.decode(sig.trim_end_matches('=')) else {
        return Err(INVALID);
    };
    let signed = format!("{h}.{c}");
    let verified = s.jwt_keys.iter().any(|key| {
        Verifier::new(MessageDigest::sha256(), key)
            .and_then(|mut v| {
                v.set_rsa_padding(Padding::PKCS1)?;
                v.verify_oneshot(&sig, signed.as_bytes())
            })
            .unwrap_or(false)
    });
    if claims["iss"].as_str() != Some(s.client_id.as_str()) {
        return Err(("invalid_client_id", "client identifier invalid"));
    }
    if !verified {
        return Err(INVALID);
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => {
            s.jwt_audiences.iter().any(|x| x == a.trim_end_matches('/')) || a == base
        }
        Value::Array(list) => list.iter().any(|a| {
            a.as_str()
                .is_some_and(|a| s.jwt_audiences.iter().any(|x| x == a.trim_end_matches('/')))
        }),
        _ => false,
    };
    if !aud_ok {
        return Err(("invalid_grant", "audience is invalid"));
    }
    let now_secs = s.now_ms() / 1000;
    match claims["exp"].as_i64() {
        Some(exp) if exp > now_secs => {}
        _ => return Err(("invalid_grant", "expired authorization code")),
    }
    // `prn` wins over `sub` when both are present.
    let subject = claims["prn"].as_str().or(claims["sub"].as_str());
    if subject != Some(s.username.as_str()) || !s.jwt_approved {
        return Err(("invalid_grant", "user hasn't approved this consumer"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sObjects

fn describe(s: &State, def: &ObjectDef) -> Reply {
    let stages = s.stages();
    let fields: Vec<Value> = def
        .fields
        .iter()
        .filter(|f| s.visible(def.name, f))
        .map(|f| f.describe(&stages))
        .collect();
    Reply::json(
        200,
        &json!({
            "name": def.name,
            "label": def.name,
            "keyPrefix": def.prefix,
            "createable": def.createable,
            "updateable": def.createable,
            "deletable": def.createable,
            "queryable": true,
            "custom": false,
            "fields": fields,
        }),
    )
}

/// Checks a write body against the object's visible fields. Returns the canonical changes.
fn validate_write(
    s: &State,
    def: &ObjectDef,
    body: &Value,
    existing: Option<&Map<String, Value>>,
    skip: Option<&str>,
) -> Result<Map<String, Value>, Reply> {
    let Value::Object(body) = body else {
        return Err(sf_error(
            400,
            "JSON_PARSER_ERROR",
            "The request body must be a JSON object",
            &[],
        ));
    };
    let mut out = Map::new();
    for (key, value) in body {
        if key == "attributes" {
            continue;
        }
        let Some(field) = s.visible_field(def.name, key) else {
            return Err(sf_error(
                400,
                "INVALID_FIELD",
                &format!("No such column '{key}' on sobject of type {}", def.name),
                &[],
            ));
        };
        if !field.writable || skip.is_some_and(|k| k.eq_ignore_ascii_case(&field.name)) {
            return Err(sf_error(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                &format!(
                    "Unable to create/update fields: {}. Please check the security settings of \
                     this field and verify that it is read/write for your profile or permission set.",
                    field.name
                ),
                &[&field.name],
            ));
        }
        check_value(s, &field, value)?;
        out.insert(field.name.clone(), value.clone());
    }
    let missing: Vec<&str> = def
        .fields
        .iter()
        .filter(|f| f.required)
        .filter(|f| match out.get(&f.name) {
            Some(v) => v.is_null() || v == "",
            None => existing.is_none_or(|e| e.get(&f.name).is_none_or(Value::is_null)),
        })
        .map(|f| f.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(sf_error(
            400,
            "REQUIRED_FIELD_MISSING",
            &format!("Required fields are missing: [{}]", missing.join(", ")),
            &missing,
        ));
    }
    Ok(out)
}

fn check_value(s: &State, f: &FieldDef, v: &Value) -> Result<(), Reply> {
    let type_error = || {
        sf_error(
            400,
            "JSON_PARSER_ERROR",
            &format!(
                "Cannot deserialize instance of {} from {v} value for field {}",
                f.ftype.describe_name(),
                f.name
            ),
            &[],
        )
    };
    if v.is_null() {
        return Ok(());
    }
    if f.ftype.is_text() || matches!(f.ftype, FieldType::Date | FieldType::Reference) {
        let Some(text) = v.as_str() else {
            return Err(type_error());
        };
        if f.ftype.is_text() && text.chars().count() > f.length {
            return Err(sf_error(
                400,
                "STRING_TOO_LONG",
                &format!(
                    "{}: data value too large: {} (max length={})",
                    f.label,
                    text.chars().take(80).collect::<String>(),
                    f.length
                ),
                &[&f.name],
            ));
        }
        if f.ftype == FieldType::Picklist && f.restricted {
            let allowed: Vec<String> = if f.name == "StageName" {
                s.stages()
                    .iter()
                    .filter(|st| st["IsActive"] == true)
                    .filter_map(|st| st["ApiName"].as_str().map(str::to_owned))
                    .collect()
            } else {
                f.picklist.clone()
            };
            if !allowed.iter().any(|a| a == text) {
                return Err(sf_error(
                    400,
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    &format!(
                        "{}: bad value for restricted picklist field: {text}",
                        f.label
                    ),
                    &[&f.name],
                ));
            }
        }
        if f.ftype == FieldType::Date && time::Date::parse(text, DATE).is_err() {
            return Err(type_error());
        }
        if f.ftype == FieldType::Reference {
            let target = f.reference_to.and_then(|t| s.object(t));
            let prefix = target.map_or("005", |t| t.prefix);
            if !is_id_of(text, prefix) {
                return Err(sf_error(
                    400,
                    "MALFORMED_ID",
                    &format!("{}: id value of incorrect type: {text}", f.label),
                    &[&f.name],
                ));
            }
            if target.is_some() && s.records.get(text).is_none_or(|r| r.deleted) {
                return Err(sf_error(
                    400,
                    "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id",
                    &[&f.name],
                ));
            }
        }
        return Ok(());
    }
    let ok = match f.ftype {
        FieldType::Boolean => v.is_boolean(),
        FieldType::Currency | FieldType::Double | FieldType::Percent => v.is_number(),
        FieldType::DateTime => v.as_str().and_then(soql::parse_datetime).is_some(),
        _ => false,
    };
    if ok { Ok(()) } else { Err(type_error()) }
}

/// The live or deleted records of `object` whose `field` equals `value`.
fn matching(s: &State, object: &str, field: &FieldDef, value: &str) -> Vec<(String, bool)> {
    s.records
        .iter()
        .filter(|(_, r)| r.object == object)
        .filter(|(_, r)| {
            r.fields
                .get(&field.name)
                .and_then(Value::as_str)
                .is_some_and(|v| {
                    if field.case_sensitive || field.name == "Id" {
                        v == value
                    } else {
                        v.eq_ignore_ascii_case(value)
                    }
                })
        })
        .map(|(id, r)| (id.clone(), r.deleted))
        .collect()
}

/// `DUPLICATE_VALUE` when a unique field of `changes` collides with another record.
fn check_unique(
    s: &State,
    def: &ObjectDef,
    changes: &Map<String, Value>,
    own_id: Option<&str>,
) -> Result<(), Reply> {
    for f in def.fields.iter().filter(|f| f.unique) {
        let Some(value) = changes.get(&f.name).and_then(Value::as_str) else {
            continue;
        };
        let other = matching(s, def.name, f, value)
            .into_iter()
            .find(|(id, deleted)| {
                Some(id.as_str()) != own_id && (!deleted || s.deleted_holds_external_id)
            });
        if let Some((id, _)) = other {
            return Err(duplicate_value(&f.name, &id));
        }
    }
    // Composite uniqueness of the setup objects.
    let composite: &[&str] = match def.name {
        "FieldPermissions" => &["ParentId", "Field"],
        "PermissionSetAssignment" => &["PermissionSetId", "AssigneeId"],
        _ => &[],
    };
    if !composite.is_empty() {
        let clash = s.records.values().any(|r| {
            r.object == def.name
                && !r.deleted
                && composite
                    .iter()
                    .all(|k| r.fields.get(*k) == changes.get(*k))
        });
        if clash {
            return Err(sf_error(
                400,
                "DUPLICATE_VALUE",
                "duplicate value found: <unknown> duplicates value on record with id: <unknown>",
                &[],
            ));
        }
    }
    if def.name == "PermissionSet" {
        let name = changes.get("Name").and_then(Value::as_str).unwrap_or("");
        let clash = s.records.values().any(|r| {
            r.object == "PermissionSet"
                && !r.deleted
                && r.fields
                    .get("Name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
        });
        if clash {
            return Err(sf_error(
                400,
                "DUPLICATE_DEVELOPER_NAME",
                &format!("The API name {name} is already in use by another permission set."),
                &["Name"],
            ));
        }
    }
    // An update that leaves `Field` alone (only the permissions) keeps the field it had.
    let names_field = own_id.is_none() || changes.contains_key("Field");
    if def.name == "FieldPermissions" && names_field {
        let object = changes
            .get("SobjectType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let field = changes.get("Field").and_then(Value::as_str).unwrap_or("");
        let known = field
            .split_once('.')
            .filter(|(o, _)| o.eq_ignore_ascii_case(object))
            .and_then(|(o, f)| s.object(o).and_then(|d| d.field(f)))
            .is_some_and(|f| f.custom);
        if !known {
            return Err(sf_error(
                400,
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                &format!("Field Name: bad value for restricted picklist field: {field}"),
                &["Field"],
            ));
        }
    }
    if def.name == "FieldPermissions" {
        let read = changes.get("PermissionsRead").or_else(|| {
            own_id
                .and_then(|id| s.records.get(id))
                .and_then(|r| r.fields.get("PermissionsRead"))
        });
        if changes.get("PermissionsEdit") == Some(&json!(true)) && read != Some(&json!(true)) {
            return Err(sf_error(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "Permission Edit depends on permission(s): Read",
                &[],
            ));
        }
    }
    Ok(())
}

fn duplicate_value(field: &str, id: &str) -> Reply {
    sf_error(
        400,
        "DUPLICATE_VALUE",
        &format!("duplicate value found: {field} duplicates value on record with id: {id}"),
        &[],
    )
}

fn body_json(req: &Recorded) -> Result<Value, Reply> {
    if req.body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        sf_error(
            400,
            "JSON_PARSER_ERROR",
            &format!("Unexpected character in the request body: {e}"),
            &[],
        )
    })
}

fn create(s: &mut State, ctx: &Ctx<'_>, def: &ObjectDef) -> Reply {
    if !def.createable {
        return sf_error(
            400,
            "INVALID_TYPE_FOR_OPERATION",
            &format!("entity type {} does not support insert", def.name),
            &[],
        );
    }
    let body = match body_json(ctx.req) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let changes = match validate_write(s, def, &body, None, None) {
        Ok(c) => c,
        Err(e) => return e,
    };
    if let Err(e) = check_unique(s, def, &changes, None) {
        return e;
    }
    let id = s.insert_raw(def.name, changes, INTEGRATION_USER_ID);
    s.count_write(def.name);
    Reply::json(201, &json!({"id": id, "success": true, "errors": []}))
}

fn lookup<'a>(s: &'a State, def: &ObjectDef, id: &str) -> Result<&'a Record, Reply> {
    let id = expand_id(id);
    match s.records.get(&id) {
        Some(r) if r.object == def.name && r.deleted => Err(sf_error_plain(
            404,
            "ENTITY_IS_DELETED",
            "entity is deleted",
        )),
        Some(r) if r.object == def.name => Ok(r),
        _ => Err(not_found()),
    }
}

/// Accepts 15-character ids by adding the case-safe suffix.
fn expand_id(id: &str) -> String {
    if id.len() != 15 {
        return id.to_owned();
    }
    let mut out = id.to_owned();
    const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    for chunk in id.as_bytes().chunks(5) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        out.push(SUFFIX[bits] as char);
    }
    out
}

fn render(s: &State, ctx: &Ctx<'_>, rec: &Record, fields: Option<&[String]>) -> Value {
    let id = rec.fields.get("Id").and_then(Value::as_str).unwrap_or("");
    let mut out = Map::new();
    out.insert(
        "attributes".into(),
        json!({"type": rec.object, "url": ctx.sobject_url(&rec.object, id)}),
    );
    let def = s.object(&rec.object).expect("record of a known object");
    let names: Vec<String> = match fields {
        Some(f) => f.to_vec(),
        None => def
            .fields
            .iter()
            .filter(|f| s.visible(def.name, f))
            .map(|f| f.name.clone())
            .collect(),
    };
    for name in names {
        out.insert(
            name.clone(),
            rec.fields.get(&name).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

/// Resolves `?fields=` to canonical names; `INVALID_FIELD` for unknown or hidden ones.
fn requested_fields(
    s: &State,
    ctx: &Ctx<'_>,
    def: &ObjectDef,
) -> Result<Option<Vec<String>>, Reply> {
    let Some(list) = ctx.req.query_value("fields") else {
        return Ok(None);
    };
    list.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            s.visible_field(def.name, f).map(|d| d.name).ok_or_else(|| {
                sf_error(
                    400,
                    "INVALID_FIELD",
                    &format!("No such column '{f}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.", def.name),
                    &[],
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn get_by_id(s: &State, ctx: &Ctx<'_>, def: &ObjectDef, id: &str) -> Reply {
    let fields = match requested_fields(s, ctx, def) {
        Ok(f) => f,
        Err(e) => return e,
    };
    match lookup(s, def, id) {
        Ok(rec) => Reply::json(200, &render(s, ctx, rec, fields.as_deref())),
        Err(e) => e,
    }
}

fn get_by_external_id(
    s: &State,
    ctx: &Ctx<'_>,
    def: &ObjectDef,
    field: &str,
    value: &str,
) -> Reply {
    let f = match external_id_field(s, def, field) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let fields = match requested_fields(s, ctx, def) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let live: Vec<String> = matching(s, def.name, &f, value)
        .into_iter()
        .filter(|(_, deleted)| !deleted)
        .map(|(id, _)| id)
        .collect();
    match live.as_slice() {
        [] => not_found(),
        [id] => {
            let rec = s.records.get(id).expect("matching returns stored ids");
            Reply::json(200, &render(s, ctx, rec, fields.as_deref()))
        }
        many => multiple_choices(ctx, def, many),
    }
}

fn multiple_choices(ctx: &Ctx<'_>, def: &ObjectDef, ids: &[String]) -> Reply {
    let urls: Vec<String> = ids.iter().map(|id| ctx.sobject_url(def.name, id)).collect();
    Reply::json(300, &json!(urls))
}

fn external_id_field(s: &State, def: &ObjectDef, field: &str) -> Result<FieldDef, Reply> {
    s.visible_field(def.name, field)
        .filter(|f| f.external_id || f.name == "Id")
        .ok_or_else(|| {
            sf_error_plain(
                404,
                "NOT_FOUND",
                &format!("Provided external ID field does not exist or is not accessible: {field}"),
            )
        })
}

fn converted_lead(rec: &Record) -> bool {
    rec.object == "Lead" && rec.fields.get("IsConverted") == Some(&json!(true))
}

fn cannot_update_converted() -> Reply {
    sf_error(
        400,
        "CANNOT_UPDATE_CONVERTED_LEAD",
        "cannot reference converted lead",
        &[],
    )
}

fn update_by_id(s: &mut State, ctx: &Ctx<'_>, def: &ObjectDef, id: &str) -> Reply {
    let rec = match lookup(s, def, id) {
        Ok(r) => r.clone(),
        Err(e) => return e,
    };
    if !def.createable {
        return sf_error(
            400,
            "INVALID_TYPE_FOR_OPERATION",
            &format!("entity type {} does not support update", def.name),
            &[],
        );
    }
    if converted_lead(&rec) {
        return cannot_update_converted();
    }
    let body = match body_json(ctx.req) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let changes = match validate_write(s, def, &body, Some(&rec.fields), None) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let id = expand_id(id);
    if let Err(e) = check_unique(s, def, &changes, Some(&id)) {
        return e;
    }
    s.update_raw(&id, changes, INTEGRATION_USER_ID);
    s.count_write(def.name);
    Reply::empty(204)
}

fn delete_by_id(s: &mut State, def: &ObjectDef, id: &str) -> Reply {
    if let Err(e) = lookup(s, def, id) {
        return e;
    }
    let id = expand_id(id);
    let stamp = s.stamp();
    let rec = s.records.get_mut(&id).expect("looked up above");
    rec.deleted = true;
    rec.fields.insert("IsDeleted".into(), json!(true));
    rec.fields.insert("SystemModstamp".into(), json!(stamp));
    s.count_write(def.name);
    Reply::empty(204)
}

fn upsert(s: &mut State, ctx: &Ctx<'_>, def: &ObjectDef, field: &str, value: &str) -> Reply {
    let f = match external_id_field(s, def, field) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let body = match body_json(ctx.req) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let update_only = ctx
        .req
        .query_value("updateOnly")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let found = matching(s, def.name, &f, value);
    let live: Vec<String> = found
        .iter()
        .filter(|(_, d)| !d)
        .map(|(id, _)| id.clone())
        .collect();
    if live.len() > 1 {
        return multiple_choices(ctx, def, &live);
    }
    if let Some(id) = live.first() {
        let rec = s
            .records
            .get(id)
            .expect("matching returns stored ids")
            .clone();
        if converted_lead(&rec) {
            return cannot_update_converted();
        }
        let changes = match validate_write(s, def, &body, Some(&rec.fields), Some(&f.name)) {
            Ok(c) => c,
            Err(e) => return e,
        };
        if let Err(e) = check_unique(s, def, &changes, Some(id)) {
            return e;
        }
        s.update_raw(id, changes, INTEGRATION_USER_ID);
        s.count_write(def.name);
        if s.update_returns_204 {
            return Reply::empty(204);
        }
        return Reply::json(
            200,
            &json!({"id": id, "success": true, "errors": [], "created": false}),
        );
    }
    if found.iter().any(|(_, d)| *d) && s.deleted_holds_external_id {
        return sf_error(400, "ENTITY_IS_DELETED", "entity is deleted", &[]);
    }
    if update_only {
        return not_found();
    }
    let mut changes = match validate_write(s, def, &body, None, Some(&f.name)) {
        Ok(c) => c,
        Err(e) => return e,
    };
    if f.name != "Id" {
        changes.insert(f.name.clone(), json!(value));
    }
    if let Err(e) = check_unique(s, def, &changes, None) {
        return e;
    }
    let race_key = (def.name.to_owned(), value.to_lowercase());
    if let Some(n) = s.duplicate_races.get_mut(&race_key) {
        // Another writer created the record an instant earlier.
        *n -= 1;
        if *n == 0 {
            s.duplicate_races.remove(&race_key);
        }
        let winner = s.insert_raw(def.name, changes, SELLER_USER_ID);
        return duplicate_value(&f.name, &winner);
    }
    let id = s.insert_raw(def.name, changes, INTEGRATION_USER_ID);
    s.count_write(def.name);
    Reply::json(
        201,
        &json!({"id": id, "success": true, "errors": [], "created": true}),
    )
}

// ---------------------------------------------------------------------------------------------
// Query

fn malformed(message: &str) -> Reply {
    sf_error_plain(400, "MALFORMED_QUERY", message)
}

fn query(s: &mut State, ctx: &Ctx<'_>, tooling: bool, include_deleted: bool) -> Reply {
    let Some(text) = ctx.req.query_value("q") else {
        return malformed("A query string has to be specified");
    };
    let mut q = match soql::parse(&text) {
        Ok(q) => q,
        Err(e) => return malformed(&e),
    };
    let Some(def) = s
        .object(&q.object)
        .filter(|d| d.tooling == tooling)
        .cloned()
    else {
        return sf_error_plain(
            400,
            "INVALID_TYPE",
            &format!(
                "sObject type '{}' is not supported. If you are attempting to use a custom object, \
                 be sure to append the '__c' after the entity name. Please reference your WSDL or \
                 the describe call for the appropriate names.",
                q.object
            ),
        );
    };
    let resolve = |name: &str| s.visible_field(def.name, name).map(|f| f.name);
    if let Err(bad) = q.resolve_fields(&resolve) {
        return sf_error_plain(
            400,
            "INVALID_FIELD",
            &format!(
                "No such column '{bad}' on entity '{}'. If you are attempting to use a custom \
                 field, be sure to append the '__c' after the custom field name. Please reference \
                 your WSDL or the describe call for the appropriate names.",
                def.name
            ),
        );
    }
    let mut rows: Vec<&Record> = s
        .records
        .values()
        .filter(|r| r.object == def.name && (include_deleted || !r.deleted))
        .filter(|r| {
            q.filter
                .as_ref()
                .is_none_or(|f| f.eval(&|name| r.fields.get(name).cloned().unwrap_or(Value::Null)))
        })
        .collect();
    rows.sort_by(|a, b| {
        for o in &q.order {
            let (x, y) = (
                a.fields.get(&o.field).unwrap_or(&Value::Null),
                b.fields.get(&o.field).unwrap_or(&Value::Null),
            );
            let ord = match soql::order_values(x, y) {
                Some(ord) if o.desc => ord.reverse(),
                Some(ord) => ord,
                None => match (x.is_null(), y.is_null()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) if o.nulls_last => std::cmp::Ordering::Greater,
                    (true, false) => std::cmp::Ordering::Less,
                    (false, _) if o.nulls_last => std::cmp::Ordering::Less,
                    (false, _) => std::cmp::Ordering::Greater,
                },
            };
            if ord != std::cmp::Ordering::Equal {
                return ord;
            }
        }
        std::cmp::Ordering::Equal
    });
    if let Some(limit) = q.limit {
        rows.truncate(limit);
    }
    let rendered: Vec<Value> = rows
        .iter()
        .map(|r| render(s, ctx, r, Some(&q.fields)))
        .collect();
    let batch = ctx
        .req
        .header("sforce-query-options")
        .and_then(|h| {
            h.split(',')
                .find_map(|p| p.trim().strip_prefix("batchSize="))
        })
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|n| (200..=2000).contains(n))
        .unwrap_or(s.batch_size);
    s.next_cursor += 1;
    let cursor = make_id("01g", s.next_cursor)[..15].to_owned();
    let page = page_reply(ctx, &cursor, &rendered, 0, batch, tooling);
    if rendered.len() > batch {
        s.cursors.insert(
            cursor,
            Cursor {
                rows: rendered,
                batch,
                tooling,
            },
        );
    }
    page
}

fn page_reply(
    ctx: &Ctx<'_>,
    cursor: &str,
    rows: &[Value],
    offset: usize,
    batch: usize,
    tooling: bool,
) -> Reply {
    let end = (offset + batch).min(rows.len());
    let mut body = json!({
        "totalSize": rows.len(),
        "done": end >= rows.len(),
        "records": rows.get(offset..end).unwrap_or(&[]),
    });
    if end < rows.len() {
        let tooling = if tooling { "tooling/" } else { "" };
        body["nextRecordsUrl"] = json!(format!(
            "/services/data/v{}/{tooling}query/{cursor}-{end}",
            ctx.version
        ));
    }
    Reply::json(200, &body)
}

fn query_more(s: &mut State, ctx: &Ctx<'_>, locator: &str, tooling: bool) -> Reply {
    let invalid = || sf_error_plain(400, "INVALID_QUERY_LOCATOR", "invalid query locator");
    let Some((cursor, offset)) = locator.rsplit_once('-') else {
        return invalid();
    };
    let Ok(offset) = offset.parse::<usize>() else {
        return invalid();
    };
    let Some(c) = s.cursors.get(cursor).filter(|c| c.tooling == tooling) else {
        return invalid();
    };
    if offset == 0 || offset >= c.rows.len() {
        return invalid();
    }
    page_reply(ctx, cursor, &c.rows, offset, c.batch, tooling)
}

// ---------------------------------------------------------------------------------------------
// Tooling API

fn tooling_create_field(s: &mut State, ctx: &Ctx<'_>) -> Reply {
    let body = match body_json(ctx.req) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let Some(full) = body.get("FullName").and_then(Value::as_str) else {
        return sf_error(
            400,
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [FullName]",
            &["FullName"],
        );
    };
    let meta = body.get("Metadata").cloned().unwrap_or(Value::Null);
    match create_custom_field(s, full, &meta, true) {
        Ok(id) => Reply::json(
            201,
            &json!({"id": id, "success": true, "errors": [], "warnings": [], "infos": []}),
        ),
        Err(e) => e,
    }
}

/// Creates custom field `full` (`Object.Name__c`) from Tooling `Metadata`. With `needs_grant`
/// the integration user sees it only once a permission set assigned to it grants read.
fn create_custom_field(
    s: &mut State,
    full: &str,
    meta: &Value,
    needs_grant: bool,
) -> Result<String, Reply> {
    let bad = |message: String| sf_error(400, "FIELD_INTEGRITY_EXCEPTION", &message, &[]);
    let Some((object, name)) = full.split_once('.') else {
        return Err(bad(format!("Invalid FullName: {full}")));
    };
    let Some(def) = s.object(object).filter(|d| !d.tooling).cloned() else {
        return Err(bad(format!("Invalid entity: {object}")));
    };
    let valid_name = name.ends_with("__c")
        && name
            .trim_end_matches("__c")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !valid_name {
        return Err(bad(format!("Invalid custom field name: {name}")));
    }
    if def.field(name).is_some() {
        return Err(sf_error(
            400,
            "DUPLICATE_DEVELOPER_NAME",
            &format!(
                "There is already a field named {} on {}.",
                name.trim_end_matches("__c"),
                def.name
            ),
            &[],
        ));
    }
    let kind = meta.get("type").and_then(Value::as_str).unwrap_or("");
    let length = meta
        .get("length")
        .and_then(Value::as_u64)
        .map(|l| l as usize);
    let (ftype, length) = match kind {
        "Text" => match length {
            Some(l @ 1..=255) => (FieldType::String, l),
            _ => return Err(bad("Length: must be between 1 and 255".into())),
        },
        "LongTextArea" => match length {
            Some(l @ 256..=131_072) => (FieldType::TextArea, l),
            _ => return Err(bad("Length: must be between 256 and 131072".into())),
        },
        "Url" => (FieldType::Url, 255),
        "Checkbox" => (FieldType::Boolean, 0),
        "Picklist" => (FieldType::Picklist, 255),
        "Number" => (FieldType::Double, 0),
        "Currency" => (FieldType::Currency, 0),
        "Date" => (FieldType::Date, 0),
        "DateTime" => (FieldType::DateTime, 0),
        other => return Err(bad(format!("Unsupported field type: {other}"))),
    };
    let flag = |k: &str| meta.get(k).and_then(Value::as_bool).unwrap_or(false);
    let mut field = FieldDef::new(name, ftype, length);
    field.label = meta
        .get("label")
        .and_then(Value::as_str)
        .unwrap_or(&field.label)
        .to_owned();
    field.external_id = flag("externalId");
    field.unique = flag("unique");
    field.case_sensitive = flag("caseSensitive");
    field.needs_grant = needs_grant;
    if ftype == FieldType::Boolean {
        let default = meta.get("defaultValue").and_then(Value::as_str) == Some("true");
        field.default = json!(default);
    }
    if ftype == FieldType::Picklist {
        let values: Vec<&str> = meta
            .pointer("/valueSet/valueSetDefinition/value")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(|x| x["fullName"].as_str()).collect())
            .unwrap_or_default();
        let restricted = meta
            .pointer("/valueSet/restricted")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        field = field.picklist(&values, restricted);
    }
    let object_name = def.name;
    s.objects
        .get_mut(object_name)
        .expect("object looked up above")
        .fields
        .push(field);
    let mut rec = Map::new();
    rec.insert("DeveloperName".into(), json!(name.trim_end_matches("__c")));
    rec.insert("TableEnumOrId".into(), json!(object_name));
    rec.insert("FullName".into(), json!(format!("{object_name}.{name}")));
    Ok(s.insert_raw("CustomField", rec, INTEGRATION_USER_ID))
}
