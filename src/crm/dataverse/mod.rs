//! The Dataverse (Dynamics 365) adapter: the `lead` and `opportunity` tables behind the CRM
//! interface. It owns the Web API client, the tables' defaults and state rules, the account
//! and currency lookups of a new opportunity, and the close actions.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::{
    crm::{
        Account, Changes, Contact, Crm, CrmError, CrmRecord, Outcome, Prepared, RecordKind,
        ShareParty, WriteMode,
    },
    domain::{Referral, ReferralId, referral::lookup},
    mapping::TableMapping,
};

pub mod client;
pub mod lead;
pub mod opportunity;

pub use client::{Condition, DataverseClient, DataverseError, Row, Table};

/// Default "Referral Link" column.
pub const LINK_COLUMN: &str = "new_partnercenterlink";
/// Default "Sync with Partner Center" column.
pub const SYNC_COLUMN: &str = "new_syncwithpartnercenter";
/// Default "How can Microsoft help?" column.
pub const HELP_COLUMN: &str = "new_microsofthelp";
/// Default "Partner Center solutions" column.
pub const SOLUTIONS_COLUMN: &str = "new_partnercentersolutions";
/// Default "Partner Center sync status" column.
pub const STATUS_COLUMN: &str = "new_partnercentersyncstatus";
/// Default "Partner Center audit" column.
pub const AUDIT_COLUMN: &str = "new_partnercenteraudit";

const NAME: &str = "Dataverse";

/// The default mapping of a Dataverse table.
pub fn default_mapping(kind: RecordKind) -> TableMapping {
    match kind {
        RecordKind::Lead => lead::mapping(),
        RecordKind::Opportunity => opportunity::mapping(),
    }
}

/// The Dataverse table of a record kind.
pub fn table(kind: RecordKind) -> Table {
    match kind {
        RecordKind::Lead => Table::LEAD,
        RecordKind::Opportunity => Table::OPPORTUNITY,
    }
}

/// Dataverse behind the CRM interface.
#[derive(Debug, Clone)]
pub struct DataverseCrm {
    client: DataverseClient,
    currencies: Arc<Mutex<HashMap<String, Option<String>>>>,
}

impl From<DataverseClient> for DataverseCrm {
    fn from(client: DataverseClient) -> Self {
        Self {
            client,
            currencies: Arc::default(),
        }
    }
}

fn crm_error(kind: RecordKind, error: DataverseError) -> CrmError {
    match error {
        DataverseError::Conflict => CrmError::Conflict(kind),
        DataverseError::Gone => CrmError::Gone(kind),
        DataverseError::Call(source) => CrmError::Call { crm: NAME, source },
    }
}

impl DataverseCrm {
    /// The Web API client (for operator commands).
    pub fn client(&self) -> &DataverseClient {
        &self.client
    }

    fn select<'a>(&'a self, kind: RecordKind, columns: &[&'a str]) -> Vec<&'a str> {
        let table = table(kind);
        let mut select = vec![
            table.id,
            "statecode",
            "statuscode",
            self.client.key_column(),
        ];
        if kind == RecordKind::Lead {
            select.push("_qualifyingopportunityid_value");
        }
        for column in columns {
            if !select.contains(column) {
                select.push(column);
            }
        }
        select
    }

    fn record(
        &self,
        kind: RecordKind,
        mut entity: Map<String, Value>,
    ) -> Result<CrmRecord, CrmError> {
        let table = table(kind);
        let id = entity
            .remove(table.id)
            .and_then(|v| v.as_str().map(str::to_ascii_lowercase))
            .ok_or_else(|| CrmError::Rejected {
                crm: NAME,
                message: format!("the {} has no {}", table.logical, table.id),
            })?;
        let version = entity
            .remove("@odata.etag")
            .and_then(|v| v.as_str().map(str::to_owned));
        let statecode = entity
            .remove("statecode")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        let statuscode = entity.remove("statuscode").and_then(|v| v.as_i64());
        let key = entity
            .remove(self.client.key_column())
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|k| !k.is_empty());
        let state = match kind {
            RecordKind::Lead => {
                let opportunity = entity
                    .remove("_qualifyingopportunityid_value")
                    .and_then(|v| v.as_str().map(str::to_ascii_lowercase));
                lead::state(statecode, statuscode, opportunity)
            }
            RecordKind::Opportunity => opportunity::state(statecode, statuscode),
        };
        let modified_on = entity
            .get("modifiedon")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let lookup = |k: &str| k.starts_with('_') && k.ends_with("_value");
        entity.retain(|k, _| !(k.contains('@') || lookup(k)));
        Ok(CrmRecord {
            kind,
            id,
            version,
            state,
            key,
            modified_on,
            columns: entity,
        })
    }

    /// The org's active currency with this ISO code, cached for the life of the process.
    async fn currency(&self, iso: &str) -> Result<Option<String>, CrmError> {
        let iso = iso.trim().to_ascii_uppercase();
        if let Some(found) = lock(&self.currencies).get(&iso) {
            return Ok(found.clone());
        }
        let rows = self
            .client
            .query(
                Table::CURRENCY,
                &["transactioncurrencyid"],
                &format!(
                    "isocurrencycode eq {} and statecode eq 0",
                    client::literal(&iso)
                ),
                1,
            )
            .await
            .map_err(|e| crm_error(RecordKind::Opportunity, e))?;
        let found = rows
            .first()
            .and_then(|r| r.get("transactioncurrencyid"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        lock(&self.currencies).insert(iso, found.clone());
        Ok(found)
    }

    /// The customer's account: found by name and postal code, else created with an id derived
    /// from them, so concurrent first syncs (of one referral or of several for the same
    /// customer) create one account between them.
    async fn account(
        &self,
        referral: &Referral,
        notes: &mut Vec<String>,
    ) -> Result<Option<String>, CrmError> {
        let profile = lookup(referral.document(), "customerProfile").and_then(Value::as_object);
        let text = |object: Option<&Map<String, Value>>, name: &str| {
            object
                .and_then(|o| lookup(o, name))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let Some(name) = text(profile, "name") else {
            notes.push("the referral has no customer name, so no account was linked".into());
            return Ok(None);
        };
        let name: String = name.chars().take(160).collect();
        let address = profile
            .and_then(|p| lookup(p, "address"))
            .and_then(Value::as_object);
        let postal = text(address, "postalCode").map(|p| p.chars().take(20).collect::<String>());
        let filter = match &postal {
            Some(postal) => format!(
                "name eq {} and address1_postalcode eq {}",
                client::literal(&name),
                client::literal(postal)
            ),
            None => format!(
                "name eq {} and address1_postalcode eq null",
                client::literal(&name)
            ),
        };
        let error = |e| crm_error(RecordKind::Opportunity, e);
        let found = self
            .client
            .query(Table::ACCOUNT, &["accountid"], &filter, 2)
            .await
            .map_err(error)?;
        let ids: Vec<&str> = found
            .iter()
            .filter_map(|r| r.get("accountid").and_then(Value::as_str))
            .collect();
        if let [first, ..] = ids.as_slice() {
            if ids.len() > 1 {
                notes.push(format!(
                    "several accounts are named {name} at postal code {}; the first was linked",
                    postal.as_deref().unwrap_or("(none)")
                ));
            }
            return Ok(Some(first.to_ascii_lowercase()));
        }
        let identity = format!(
            "{}\n{}",
            name.to_lowercase(),
            postal.as_deref().unwrap_or("").to_lowercase()
        );
        let id = uuid::Uuid::new_v5(&ACCOUNT_NAMESPACE, identity.as_bytes()).to_string();
        let mut columns = Map::new();
        columns.insert("name".into(), Value::from(name));
        let fields = [
            ("addressLine1", "address1_line1", 250),
            ("city", "address1_city", 80),
            ("state", "address1_stateorprovince", 50),
            ("postalCode", "address1_postalcode", 20),
            ("country", "address1_country", 80),
        ];
        for (field, column, max) in fields {
            if let Some(value) = text(address, field) {
                columns.insert(
                    column.into(),
                    Value::from(value.chars().take(max).collect::<String>()),
                );
            }
        }
        match self
            .client
            .upsert(
                Table::ACCOUNT,
                Row::Id(&id),
                &columns,
                &Condition::CreateOnly,
                &["accountid"],
            )
            .await
        {
            Ok(_) | Err(DataverseError::Conflict) => Ok(Some(id)),
            Err(e) => Err(error(e)),
        }
    }
}

/// Namespace of the account ids derived from a customer's name and postal code.
const ACCOUNT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5f3c_8a1e_2b7d_4c09_9e61_a4d2_7b80_c3f1);

#[async_trait]
impl Crm for DataverseCrm {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn read(
        &self,
        kind: RecordKind,
        key: &ReferralId,
        columns: &[&str],
    ) -> Result<Option<CrmRecord>, CrmError> {
        let select = self.select(kind, columns);
        match self.client.get(table(kind), Row::Key(key), &select).await {
            Ok(Some(entity)) => self.record(kind, entity).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(crm_error(kind, e)),
        }
    }

    async fn read_by_id(
        &self,
        kind: RecordKind,
        id: &str,
        columns: &[&str],
    ) -> Result<Option<CrmRecord>, CrmError> {
        let select = self.select(kind, columns);
        match self.client.get(table(kind), Row::Id(id), &select).await {
            Ok(Some(entity)) => self.record(kind, entity).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(crm_error(kind, e)),
        }
    }

    async fn write(
        &self,
        kind: RecordKind,
        key: &ReferralId,
        columns: &Map<String, Value>,
        mode: &WriteMode,
        returned: &[&str],
    ) -> Result<CrmRecord, CrmError> {
        let condition = match mode {
            WriteMode::Create => Condition::CreateOnly,
            WriteMode::Update(version) => {
                Condition::IfMatch(version.clone().unwrap_or_else(|| "*".into()))
            }
        };
        let select = self.select(kind, returned);
        let entity = self
            .client
            .upsert(table(kind), Row::Key(key), columns, &condition, &select)
            .await
            .map_err(|e| crm_error(kind, e))?;
        self.record(kind, entity)
    }

    async fn adopt(
        &self,
        record: &CrmRecord,
        key: &ReferralId,
        columns: &Map<String, Value>,
        returned: &[&str],
    ) -> Result<CrmRecord, CrmError> {
        let mut columns = columns.clone();
        columns.insert(
            self.client.key_column().to_owned(),
            Value::from(key.as_str()),
        );
        self.update_record(record, &columns, returned).await
    }

    async fn update_record(
        &self,
        record: &CrmRecord,
        columns: &Map<String, Value>,
        returned: &[&str],
    ) -> Result<CrmRecord, CrmError> {
        let condition = Condition::IfMatch(record.version.clone().unwrap_or_else(|| "*".into()));
        let select = self.select(record.kind, returned);
        let entity = self
            .client
            .upsert(
                table(record.kind),
                Row::Id(&record.id),
                columns,
                &condition,
                &select,
            )
            .await
            .map_err(|e| crm_error(record.kind, e))?;
        self.record(record.kind, entity)
    }

    async fn prepare_create(
        &self,
        kind: RecordKind,
        _key: &ReferralId,
        referral: &Referral,
        columns: &mut Map<String, Value>,
    ) -> Result<Prepared, CrmError> {
        let mut prepared = Prepared::default();
        if kind != RecordKind::Opportunity {
            return Ok(prepared);
        }
        let details = lookup(referral.document(), "details").and_then(Value::as_object);
        let currency = details
            .and_then(|d| lookup(d, "currency"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|c| !c.is_empty());
        if let Some(iso) = currency {
            match self.currency(iso).await? {
                Some(id) => {
                    columns.insert(
                        "transactioncurrencyid@odata.bind".into(),
                        Value::from(format!("/transactioncurrencies({id})")),
                    );
                }
                None => prepared.notes.push(format!(
                    "currency {iso} is not an active currency of this organization, so the organization's default currency was used; add it under Settings → Currencies"
                )),
            }
        }
        if let Some(account) = self.account(referral, &mut prepared.notes).await? {
            columns.insert(
                "customerid_account@odata.bind".into(),
                Value::from(format!("/accounts({account})")),
            );
        }
        Ok(prepared)
    }

    async fn close(&self, record: &CrmRecord, outcome: &Outcome) -> Result<(), CrmError> {
        let (action, status, subject, description) = match outcome {
            Outcome::Won => (
                "WinOpportunity",
                opportunity::WON_STATUS,
                "Won in Partner Center".to_owned(),
                "Closed as won because the Partner Center referral was won".to_owned(),
            ),
            Outcome::Lost { reason } => (
                "LoseOpportunity",
                opportunity::LOST_STATUS,
                "Lost in Partner Center".to_owned(),
                format!("Closed as lost: {reason}"),
            ),
        };
        let body = json!({
            "Status": status,
            "OpportunityClose": {
                "subject": subject,
                "description": description,
                "opportunityid@odata.bind": format!("/opportunities({})", record.id),
            }
        });
        match self.client.action(action, &body).await {
            Ok(()) => Ok(()),
            // OpportunityIsAlreadyClosed: someone closed it first; the next read shows how.
            Err(e) if e.code().as_deref() == Some("0x80040515") => Ok(()),
            Err(e) => Err(crm_error(RecordKind::Opportunity, e)),
        }
    }

    async fn share_party(&self, record: &CrmRecord) -> Result<ShareParty, CrmError> {
        let error = |e| crm_error(RecordKind::Opportunity, e);
        let lookups = [
            "_parentaccountid_value",
            "_customerid_value",
            "_parentcontactid_value",
            "_transactioncurrencyid_value",
        ];
        let Some(row) = self
            .client
            .get(Table::OPPORTUNITY, Row::Id(&record.id), &lookups)
            .await
            .map_err(error)?
        else {
            return Err(CrmError::Gone(RecordKind::Opportunity));
        };
        let mut party = ShareParty::default();
        // The customer may be a contact; the parent account is the account when it is set.
        for column in ["_parentaccountid_value", "_customerid_value"] {
            let Some(id) = text_of(&row, column) else {
                continue;
            };
            let select = [
                "name",
                "address1_line1",
                "address1_line2",
                "address1_city",
                "address1_stateorprovince",
                "address1_postalcode",
                "address1_country",
            ];
            if let Some(account) = self
                .client
                .get(Table::ACCOUNT, Row::Id(&id), &select)
                .await
                .map_err(error)?
            {
                party.account = Some(Account {
                    name: text_of(&account, "name"),
                    line1: text_of(&account, "address1_line1"),
                    line2: text_of(&account, "address1_line2"),
                    city: text_of(&account, "address1_city"),
                    state: text_of(&account, "address1_stateorprovince"),
                    postal_code: text_of(&account, "address1_postalcode"),
                    country: text_of(&account, "address1_country"),
                });
                break;
            }
        }
        if let Some(id) = text_of(&row, "_parentcontactid_value") {
            let select = ["firstname", "lastname", "emailaddress1", "telephone1"];
            if let Some(contact) = self
                .client
                .get(Table::CONTACT, Row::Id(&id), &select)
                .await
                .map_err(error)?
            {
                party.contact = Some(Contact {
                    first_name: text_of(&contact, "firstname"),
                    last_name: text_of(&contact, "lastname"),
                    email: text_of(&contact, "emailaddress1"),
                    phone: text_of(&contact, "telephone1"),
                });
            }
        }
        if let Some(id) = text_of(&row, "_transactioncurrencyid_value") {
            party.currency = self
                .client
                .get(Table::CURRENCY, Row::Id(&id), &["isocurrencycode"])
                .await
                .map_err(error)?
                .and_then(|c| text_of(&c, "isocurrencycode"));
        }
        Ok(party)
    }

    async fn changed_since(
        &self,
        kind: RecordKind,
        since: &str,
        flag: Option<&str>,
        columns: &[&str],
    ) -> Result<Changes, CrmError> {
        let table = table(kind);
        let mut select = self.select(kind, columns);
        select.push("modifiedon");
        if let Some(flag) = flag
            && !select.contains(&flag)
        {
            select.push(flag);
        }
        // An RFC 3339 instant and logical names need no quoting in the filter.
        let key = self.client.key_column();
        let filter = match flag {
            Some(flag) => format!("modifiedon ge {since} and ({key} ne null or {flag} eq true)"),
            None => format!("modifiedon ge {since} and {key} ne null"),
        };
        let order = format!("modifiedon asc,{} asc", table.id);
        let rows = self
            .client
            .query_all(table, &select, &filter, &order)
            .await
            .map_err(|e| crm_error(kind, e))?;
        let records = rows
            .into_iter()
            .map(|row| self.record(kind, row))
            .collect::<Result<_, _>>()?;
        Ok(Changes {
            records,
            until: None,
        })
    }
}

/// The text of a column, trimmed; `None` when empty.
fn text_of(row: &Map<String, Value>, column: &str) -> Option<String> {
    row.get(column)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The attribute metadata `setup dataverse` creates for each Partner Center column.
pub fn partner_center_column_metadata(table: &TableMapping) -> Vec<(String, Value)> {
    let pc = &table.partner_center;
    let text = |name: &str, display: &str, max: u32, url: bool| {
        json!({
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "AttributeType": "String",
            "AttributeTypeName": {"Value": "StringType"},
            "SchemaName": name,
            "MaxLength": max,
            "FormatName": {"Value": if url { "Url" } else { "Text" }},
            "RequiredLevel": {"Value": "None", "CanBeChanged": true},
            "DisplayName": client::label(display),
        })
    };
    let mut out = Vec::new();
    if let Some(name) = &pc.link {
        out.push((name.clone(), text(name, "Referral Link", 500, true)));
    }
    if let Some(name) = &pc.sync {
        out.push((
            name.clone(),
            json!({
                "@odata.type": "Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
                "AttributeType": "Boolean",
                "AttributeTypeName": {"Value": "BooleanType"},
                "SchemaName": name,
                "DefaultValue": false,
                "RequiredLevel": {"Value": "None", "CanBeChanged": true},
                "DisplayName": client::label("Sync with Partner Center"),
                "OptionSet": {
                    "OptionSetType": "Boolean",
                    "TrueOption": {"Value": 1, "Label": client::label("Yes")},
                    "FalseOption": {"Value": 0, "Label": client::label("No")}
                }
            }),
        ));
    }
    if let Some(name) = &pc.help {
        let options: Vec<Value> = crate::mapping::plan::HELP_CHOICES
            .iter()
            .map(|(_, value, label)| json!({"Value": value, "Label": client::label(label)}))
            .collect();
        out.push((
            name.clone(),
            json!({
                "@odata.type": "Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
                "AttributeType": "Picklist",
                "AttributeTypeName": {"Value": "PicklistType"},
                "SourceTypeMask": 0,
                "SchemaName": name,
                "RequiredLevel": {"Value": "None", "CanBeChanged": true},
                "DisplayName": client::label("How can Microsoft help?"),
                "OptionSet": {
                    "@odata.type": "Microsoft.Dynamics.CRM.OptionSetMetadata",
                    "IsGlobal": false,
                    "OptionSetType": "Picklist",
                    "Options": options
                }
            }),
        ));
    }
    if let Some(name) = &pc.solutions {
        out.push((
            name.clone(),
            text(name, "Partner Center solutions", 4000, false),
        ));
    }
    if let Some(name) = &pc.status {
        out.push((
            name.clone(),
            text(name, "Partner Center sync status", 4000, false),
        ));
    }
    if let Some(name) = &pc.audit {
        out.push((
            name.clone(),
            json!({
                "@odata.type": "Microsoft.Dynamics.CRM.MemoAttributeMetadata",
                "AttributeType": "Memo",
                "AttributeTypeName": {"Value": "MemoType"},
                "Format": "TextArea",
                "ImeMode": "Disabled",
                "SchemaName": name,
                "MaxLength": crate::mapping::plan::AUDIT_MAX_CHARS,
                "RequiredLevel": {"Value": "None", "CanBeChanged": true},
                "DisplayName": client::label("Partner Center audit"),
            }),
        ));
    }
    out
}
