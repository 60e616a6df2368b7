//! The Salesforce adapter: the `Lead` and `Opportunity` objects behind the CRM interface. It
//! owns the REST client (settings `SALESFORCE_*`, the OAuth token, the calls, the API usage
//! header, one error type with its transient/permanent decision), the objects' defaults and
//! state rules, the account lookup and first stage of a new opportunity, the stage table that
//! closes one, the change poll on `SystemModstamp`, and the share claim. Salesforce has no
//! If-Match on these objects: creates are create-only through the unique external id
//! (`DUPLICATE_VALUE` on a race), the core re-reads the referral after each write, and the
//! share claim is a conditional blob write in the app's storage account. `setup` creates the
//! connector's fields and permission set and checks the org.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::{Mutex, OnceCell};

use crate::{
    crm::{
        Account, Changes, Contact, Crm, CrmError, CrmRecord, Outcome, Prepared, RecordKind,
        RecordState, ShareParty, WriteMode,
    },
    domain::{Referral, ReferralId, referral::lookup},
    mapping::{ColumnKind, TableMapping, share::claimed_at},
    storage::StorageClient,
};

pub mod client;
pub mod error;
pub mod lead;
pub mod opportunity;
pub mod settings;
pub mod setup;

pub use client::{ApiUsage, SalesforceClient, TokenIdentity, UpsertOutcome};
pub use error::SalesforceError;
pub use settings::{SalesforceAuth, SalesforceSettings};

/// The external-id field (External ID, Unique) that holds the referral id on Lead and
/// Opportunity.
pub const KEY_FIELD: &str = "Partner_Center_Referral_Id__c";
/// "Partner Center Link" (URL).
pub const LINK_FIELD: &str = "Partner_Center_Link__c";
/// "Sync with Partner Center" (checkbox, Opportunity).
pub const SYNC_FIELD: &str = "Sync_with_Partner_Center__c";
/// "How can Microsoft help?" (picklist of `assistanceRequestCode`, Opportunity).
pub const HELP_FIELD: &str = "How_can_Microsoft_help__c";
/// "Partner Center Solutions" (text, Opportunity).
pub const SOLUTIONS_FIELD: &str = "Partner_Center_Solutions__c";
/// "Partner Center Sync Status" (text 255).
pub const STATUS_FIELD: &str = "Partner_Center_Sync_Status__c";
/// "Partner Center Audit" (long text area).
pub const AUDIT_FIELD: &str = "Partner_Center_Audit__c";
/// Stage of a new opportunity when `SALESFORCE_NEW_STAGE` is not set.
pub const DEFAULT_NEW_STAGE: &str = "Prospecting";
/// Container of the share claims in the app's storage account.
pub const CLAIM_CONTAINER: &str = crate::storage::WATERMARK_CONTAINER;

const NAME: &str = "Salesforce";
/// Days after today a new opportunity closes when its referral has no close date (Salesforce
/// requires `CloseDate`).
const DEFAULT_CLOSE_DAYS: i64 = 90;
/// The header that keeps lead assignment rules from reassigning what the connector writes.
const NO_AUTO_ASSIGN: (&str, &str) = ("Sforce-Auto-Assign", "FALSE");

/// The default mapping of a Salesforce object.
pub fn default_mapping(kind: RecordKind) -> TableMapping {
    match kind {
        RecordKind::Lead => lead::mapping(),
        RecordKind::Opportunity => opportunity::mapping(),
    }
}

/// The Salesforce object of a record kind.
pub fn object(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Lead => "Lead",
        RecordKind::Opportunity => "Opportunity",
    }
}

/// Salesforce behind the CRM interface.
#[derive(Debug, Clone)]
pub struct SalesforceCrm {
    client: SalesforceClient,
    new_stage: String,
    budget_percent: u8,
    poll_lag: Duration,
    claims: Claims,
    stages: Arc<OnceCell<Vec<opportunity::StageRow>>>,
    currency: Arc<OnceCell<Option<String>>>,
    /// The active values of Opportunity's `CurrencyIsoCode` when multiple currencies are on
    /// (`None`: one corporate currency), read once.
    currencies: Arc<OnceCell<Option<Vec<String>>>>,
    /// Find-or-create of accounts, one at a time per customer in this process, so concurrent
    /// first syncs for one customer link one account.
    accounts: Arc<std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>>,
}

/// Where share claims are kept: the app's storage account, or why it cannot be used.
#[derive(Clone)]
struct Claims {
    storage: Result<Arc<StorageClient>, String>,
    lease: Duration,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field(
                "storage",
                &self.storage.as_ref().map(|_| "AzureWebJobsStorage"),
            )
            .field("lease", &self.lease)
            .finish()
    }
}

impl SalesforceCrm {
    /// The adapter the settings describe (`CRM=salesforce`): its client, the new-opportunity
    /// stage, the API budget, the poll lag and the app's storage for share claims.
    pub fn from_settings(
        settings: &crate::config::Settings,
        http: reqwest::Client,
    ) -> Result<Self, crate::config::ConfigError> {
        let sf = settings.salesforce.require()?;
        let client = SalesforceClient::new(
            http,
            sf,
            crate::http::RetryPolicy::new(
                settings.sync.retry_budget,
                settings.sync.retry_min_delay,
            ),
        )?;
        let storage = StorageClient::from_settings(settings)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        Ok(Self::new(
            client,
            sf,
            settings.sync.poll.claim_lease,
            storage,
        ))
    }

    /// An adapter over `client`; `storage` keeps the share claims.
    pub fn new(
        client: SalesforceClient,
        settings: &SalesforceSettings,
        claim_lease: Duration,
        storage: Result<Arc<StorageClient>, String>,
    ) -> Self {
        Self {
            client,
            new_stage: settings.new_stage.clone(),
            budget_percent: settings.api_budget_percent,
            poll_lag: settings.poll_lag,
            claims: Claims {
                storage,
                lease: claim_lease,
            },
            stages: Arc::default(),
            currency: Arc::default(),
            currencies: Arc::default(),
            accounts: Arc::default(),
        }
    }

    /// The REST client (for operator commands).
    pub fn client(&self) -> &SalesforceClient {
        &self.client
    }

    /// A record that is not there is gone (the core reads again); one in the recycle bin
    /// (`ENTITY_IS_DELETED`) is a permanent error, like every other refusal.
    fn error(kind: RecordKind, error: SalesforceError) -> CrmError {
        if error.is_not_found() {
            return CrmError::Gone(kind);
        }
        match error {
            SalesforceError::MultipleMatches { what, ids } => CrmError::Rejected {
                crm: NAME,
                message: format!(
                    "more than one {} has {what} (records {}); merge or clear the duplicates and make {KEY_FIELD} Unique",
                    object(kind),
                    ids.join(" and ")
                ),
            },
            e => e.into(),
        }
    }

    fn fields<'a>(&self, kind: RecordKind, columns: &[&'a str]) -> Vec<&'a str> {
        let mut fields: Vec<&str> = vec!["Id", KEY_FIELD, "SystemModstamp"];
        fields.extend_from_slice(match kind {
            RecordKind::Lead => &["IsConverted", "ConvertedOpportunityId", "Status"],
            RecordKind::Opportunity => &["IsClosed", "IsWon", "StageName"],
        });
        for column in columns {
            if !fields.contains(column) {
                fields.push(column);
            }
        }
        fields
    }

    fn record(
        &self,
        kind: RecordKind,
        columns: &[&str],
        mut fields: Map<String, Value>,
    ) -> Result<CrmRecord, CrmError> {
        fields.remove("attributes");
        let id = text_of(&fields, "Id").ok_or_else(|| CrmError::Rejected {
            crm: NAME,
            message: format!("a {} came back without its Id", object(kind)),
        })?;
        fields.remove("Id");
        let key = fields
            .remove(KEY_FIELD)
            .and_then(|v| v.as_str().map(str::to_ascii_lowercase))
            .filter(|k| !k.is_empty());
        let modified_on = fields
            .remove("SystemModstamp")
            .and_then(|v| v.as_str().and_then(rfc3339));
        let flag = |fields: &mut Map<String, Value>, name: &str| {
            fields
                .remove(name)
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
        };
        let state = match kind {
            RecordKind::Lead => {
                let converted = flag(&mut fields, "IsConverted");
                let opportunity = fields
                    .remove("ConvertedOpportunityId")
                    .and_then(|v| v.as_str().map(str::to_owned));
                let status = text_of(&fields, "Status");
                lead::state(converted, opportunity, status.as_deref())
            }
            RecordKind::Opportunity => {
                let closed = flag(&mut fields, "IsClosed");
                let won = flag(&mut fields, "IsWon");
                opportunity::state(closed, won, text_of(&fields, "StageName").as_deref())
            }
        };
        for managed in ["Status", "StageName"] {
            if !columns.contains(&managed) {
                fields.remove(managed);
            }
        }
        Ok(CrmRecord {
            kind,
            id,
            version: None,
            state,
            key,
            modified_on,
            columns: fields,
        })
    }

    /// The record as a write left it: its id and state; the core overlays what was sent.
    fn written(kind: RecordKind, id: String, state: RecordState, key: Option<String>) -> CrmRecord {
        CrmRecord {
            kind,
            id,
            version: None,
            state,
            key,
            modified_on: None,
            columns: Map::new(),
        }
    }

    /// The org's stage table, read once per process.
    async fn stages(&self) -> Result<&[opportunity::StageRow], CrmError> {
        let stages = self
            .stages
            .get_or_try_init(|| async {
                let rows = self
                    .client
                    .query("SELECT ApiName, IsActive, IsClosed, IsWon, SortOrder FROM OpportunityStage ORDER BY SortOrder")
                    .await
                    .map_err(|e| Self::error(RecordKind::Opportunity, e))?;
                Ok::<_, CrmError>(
                    rows.iter()
                        .filter_map(opportunity::StageRow::from_record)
                        .collect(),
                )
            })
            .await?;
        Ok(stages)
    }

    /// The org's corporate currency (`Organization.DefaultCurrencyIsoCode`), read once.
    async fn org_currency(&self) -> Result<Option<String>, CrmError> {
        let currency = self
            .currency
            .get_or_try_init(|| async {
                let rows = self
                    .client
                    .query("SELECT DefaultCurrencyIsoCode FROM Organization LIMIT 1")
                    .await
                    .map_err(|e| Self::error(RecordKind::Opportunity, e))?;
                Ok::<_, CrmError>(
                    rows.first()
                        .and_then(|r| text_of(r, "DefaultCurrencyIsoCode")),
                )
            })
            .await?;
        Ok(currency.clone())
    }

    /// The org's active currencies when multiple currencies are on (Opportunity then has a
    /// `CurrencyIsoCode` picklist); `None` with one corporate currency. Read once per process
    /// from Opportunity's describe.
    async fn currencies(&self) -> Result<Option<&[String]>, CrmError> {
        let currencies = self
            .currencies
            .get_or_try_init(|| async {
                let describe = self
                    .client
                    .describe("Opportunity")
                    .await
                    .map_err(|e| Self::error(RecordKind::Opportunity, e))?;
                let field = describe["fields"]
                    .as_array()
                    .and_then(|fields| fields.iter().find(|f| f["name"] == "CurrencyIsoCode"));
                Ok::<_, CrmError>(field.map(|f| {
                    f["picklistValues"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|v| v["active"] != false)
                        .filter_map(|v| v["value"].as_str().map(str::to_ascii_uppercase))
                        .collect()
                }))
            })
            .await?;
        Ok(currencies.as_deref())
    }

    /// The customer's account: found by `Name` and `BillingPostalCode`, else created.
    async fn account(
        &self,
        referral: &Referral,
        notes: &mut Vec<String>,
    ) -> Result<Option<String>, CrmError> {
        let profile = lookup(referral.document(), "customerProfile").and_then(Value::as_object);
        let text = |object: Option<&Map<String, Value>>, name: &str, max: usize| {
            object
                .and_then(|o| lookup(o, name))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.chars().take(max).collect::<String>())
        };
        let Some(name) = text(profile, "name", 255) else {
            notes.push("the referral has no customer name, so no account was linked".into());
            return Ok(None);
        };
        let address = profile
            .and_then(|p| lookup(p, "address"))
            .and_then(Value::as_object);
        let postal = text(address, "postalCode", 20);
        let soql = format!(
            "SELECT Id FROM Account WHERE Name = {} AND BillingPostalCode = {} ORDER BY CreatedDate, Id LIMIT 2",
            literal(&name),
            postal.as_deref().map_or("null".to_owned(), literal)
        );
        let error = |e| Self::error(RecordKind::Opportunity, e);
        let customer = format!(
            "{}\n{}",
            name.to_lowercase(),
            postal.as_deref().unwrap_or("").to_lowercase()
        );
        let lock = self
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(customer)
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        let found = self.client.query(&soql).await.map_err(error)?;
        if let Some(first) = found.first().and_then(|r| text_of(r, "Id")) {
            if found.len() > 1 {
                notes.push(format!(
                    "several accounts are named {name} at postal code {}; the oldest was linked",
                    postal.as_deref().unwrap_or("(none)")
                ));
            }
            return Ok(Some(first));
        }
        let mut body = Map::new();
        body.insert("Name".into(), Value::from(name));
        let street = [
            text(address, "addressLine1", 255),
            text(address, "addressLine2", 255),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
        if !street.is_empty() {
            body.insert(
                "BillingStreet".into(),
                Value::from(street.chars().take(255).collect::<String>()),
            );
        }
        for (field, target, max) in [
            ("city", "BillingCity", 40),
            ("state", "BillingState", 80),
            ("postalCode", "BillingPostalCode", 20),
            ("country", "BillingCountry", 80),
        ] {
            if let Some(value) = text(address, field, max) {
                body.insert(target.into(), Value::from(value));
            }
        }
        let id = self
            .client
            .create("Account", &Value::Object(body), &[])
            .await
            .map_err(error)?;
        Ok(Some(id))
    }

    /// Cuts text values to the field's length, so a long value is shortened rather than
    /// refused (`STRING_TOO_LONG`).
    fn fit(kind: RecordKind, columns: &Map<String, Value>) -> Map<String, Value> {
        let known = match kind {
            RecordKind::Lead => lead::KNOWN_COLUMNS,
            RecordKind::Opportunity => opportunity::KNOWN_COLUMNS,
        };
        columns
            .iter()
            .map(|(name, value)| {
                let max = known.iter().find_map(|(n, k)| match k {
                    ColumnKind::Text { max } if n == name => Some(*max),
                    _ => None,
                });
                let value = match (value, max) {
                    (Value::String(s), Some(max)) if s.chars().count() > max => {
                        Value::from(s.chars().take(max).collect::<String>())
                    }
                    _ => value.clone(),
                };
                (name.clone(), value)
            })
            .collect()
    }
}

#[async_trait]
impl Crm for SalesforceCrm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn conditional_writes(&self) -> bool {
        false
    }

    fn over_budget(&self) -> Option<String> {
        if !self.client.over_budget(self.budget_percent) {
            return None;
        }
        let (used, limit) = self.client.usage()?;
        Some(format!(
            "Salesforce API usage is {used} of {limit} requests in the last 24 hours, past SALESFORCE_API_BUDGET_PERCENT ({}%)",
            self.budget_percent
        ))
    }

    async fn read(
        &self,
        kind: RecordKind,
        key: &ReferralId,
        columns: &[&str],
    ) -> Result<Option<CrmRecord>, CrmError> {
        let fields = self.fields(kind, columns);
        match self
            .client
            .get_by_external_id(object(kind), KEY_FIELD, key.as_str(), &fields)
            .await
        {
            Ok(Some(found)) => self.record(kind, columns, found).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(Self::error(kind, e)),
        }
    }

    async fn read_by_id(
        &self,
        kind: RecordKind,
        id: &str,
        columns: &[&str],
    ) -> Result<Option<CrmRecord>, CrmError> {
        let fields = self.fields(kind, columns);
        match self.client.get_record(object(kind), id, &fields).await {
            Ok(Some(found)) => self.record(kind, columns, found).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(Self::error(kind, e)),
        }
    }

    async fn write(
        &self,
        kind: RecordKind,
        key: &ReferralId,
        columns: &Map<String, Value>,
        mode: &WriteMode,
        _returned: &[&str],
    ) -> Result<CrmRecord, CrmError> {
        let mut body = Self::fit(kind, columns);
        let key_text = key.as_str().to_owned();
        match mode {
            // Create-only: a POST with the unique external id fails with DUPLICATE_VALUE
            // (a conflict) when another sync created the record first.
            WriteMode::Create => {
                body.insert(KEY_FIELD.into(), Value::from(key_text.clone()));
                let id = self
                    .client
                    .create(object(kind), &Value::Object(body), &[NO_AUTO_ASSIGN])
                    .await
                    .map_err(|e| Self::error(kind, e))?;
                Ok(Self::written(kind, id, RecordState::Open, Some(key_text)))
            }
            WriteMode::Update(_) => {
                let outcome = self
                    .client
                    .upsert_update_only(
                        object(kind),
                        KEY_FIELD,
                        &key_text,
                        &Value::Object(body),
                        &[NO_AUTO_ASSIGN],
                    )
                    .await
                    .map_err(|e| Self::error(kind, e))?;
                let id = match outcome {
                    UpsertOutcome::Created { id } | UpsertOutcome::Updated { id: Some(id) } => id,
                    UpsertOutcome::Updated { id: None } => {
                        // 204 without a body (older behaviour): read the id back.
                        self.read(kind, key, &[])
                            .await?
                            .map(|r| r.id)
                            .ok_or(CrmError::Gone(kind))?
                    }
                    UpsertOutcome::Multiple(ids) => {
                        return Err(Self::error(
                            kind,
                            SalesforceError::MultipleMatches {
                                what: format!("{KEY_FIELD} = {key_text}"),
                                ids,
                            },
                        ));
                    }
                };
                Ok(Self::written(kind, id, RecordState::Open, Some(key_text)))
            }
        }
    }

    async fn adopt(
        &self,
        record: &CrmRecord,
        key: &ReferralId,
        columns: &Map<String, Value>,
        returned: &[&str],
    ) -> Result<CrmRecord, CrmError> {
        let mut columns = columns.clone();
        columns.insert(KEY_FIELD.into(), Value::from(key.as_str()));
        self.update_record(record, &columns, returned).await
    }

    async fn update_record(
        &self,
        record: &CrmRecord,
        columns: &Map<String, Value>,
        _returned: &[&str],
    ) -> Result<CrmRecord, CrmError> {
        let body = Self::fit(record.kind, columns);
        self.client
            .update(
                object(record.kind),
                &record.id,
                &Value::Object(body),
                &[NO_AUTO_ASSIGN],
            )
            .await
            .map_err(|e| Self::error(record.kind, e))?;
        let key = columns
            .get(KEY_FIELD)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| record.key.clone());
        Ok(Self::written(
            record.kind,
            record.id.clone(),
            record.state.clone(),
            key,
        ))
    }

    async fn claim(
        &self,
        record: &CrmRecord,
        columns: &Map<String, Value>,
        returned: &[&str],
    ) -> Result<CrmRecord, CrmError> {
        let storage = self.claims.storage.as_ref().map_err(|why| CrmError::Rejected {
            crm: NAME,
            message: format!(
                "sharing an opportunity from Salesforce keeps its claim in the app's storage account, which is unusable: {why}"
            ),
        })?;
        let Some((column, claim)) = columns
            .iter()
            .find_map(|(c, v)| v.as_str().map(|text| (c, text)))
        else {
            return self.update_record(record, columns, returned).await;
        };
        let seen = record.columns.get(column).and_then(Value::as_str);
        let blob = format!("share-claims/opportunity-{}.txt", record.id);
        let unavailable = |e: crate::storage::StorageError| CrmError::Call {
            crm: NAME,
            source: crate::http::CallError::Transport(format!("share claim: {e}")),
        };
        // The first claim of an opportunity creates the blob; only when it exists is it read.
        let won = storage
            .create_blob_if_absent(CLAIM_CONTAINER, &blob, claim)
            .await
            .map_err(unavailable)?
            || match storage
                .blob_text(CLAIM_CONTAINER, &blob)
                .await
                .map_err(unavailable)?
            {
                None => false,
                Some(current) => {
                    // The claim this attempt saw (and judged expired), or one whose record
                    // write never landed and whose lease is over: take it over, unless another
                    // attempt replaced it meanwhile.
                    let expired = claimed_at(Some(&Value::from(current.text.as_str())))
                        .is_none_or(|at| OffsetDateTime::now_utc() - at >= self.claims.lease);
                    match current.etag {
                        Some(etag) if seen == Some(current.text.as_str()) || expired => storage
                            .replace_blob_if_unchanged(CLAIM_CONTAINER, &blob, claim, &etag)
                            .await
                            .map_err(unavailable)?,
                        _ => false,
                    }
                }
            };
        if !won {
            return Err(CrmError::Conflict(RecordKind::Opportunity));
        }
        self.update_record(record, columns, returned).await
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
        if !columns.contains_key("StageName") {
            columns.insert("StageName".into(), Value::from(self.new_stage.clone()));
        }
        if columns.get("CloseDate").is_none_or(Value::is_null) {
            let date =
                (OffsetDateTime::now_utc() + time::Duration::days(DEFAULT_CLOSE_DAYS)).date();
            columns.insert("CloseDate".into(), Value::from(date.to_string()));
            prepared.notes.push(format!(
                "the referral has no close date, so the opportunity closes {DEFAULT_CLOSE_DAYS} days from today"
            ));
        }
        let currency = lookup(referral.document(), "details")
            .and_then(Value::as_object)
            .and_then(|d| lookup(d, "currency"))
            .and_then(Value::as_str)
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| !c.is_empty());
        if let Some(iso) = currency
            && let Some(active) = self.currencies().await?
        {
            if active.contains(&iso) {
                columns.insert("CurrencyIsoCode".into(), Value::from(iso));
            } else {
                prepared.notes.push(format!(
                    "currency {iso} is not an active currency of this org, so the default currency was used; activate it under Setup > Company Settings > Manage Currencies"
                ));
            }
        }
        if let Some(account) = self.account(referral, &mut prepared.notes).await? {
            columns.insert("AccountId".into(), Value::from(account));
        }
        Ok(prepared)
    }

    async fn close(&self, record: &CrmRecord, outcome: &Outcome) -> Result<(), CrmError> {
        let won = matches!(outcome, Outcome::Won);
        let stages = self.stages().await?;
        let Some(stage) = opportunity::close_stage(stages, won) else {
            return Err(CrmError::Rejected {
                crm: NAME,
                message: format!(
                    "the org has no active {} opportunity stage; add one under Setup > Object Manager > Opportunity > Fields > Stage, or set CRM_CLOSE_FROM_REFERRAL=false",
                    if won { "Closed/Won" } else { "Closed/Lost" }
                ),
            });
        };
        let body = json!({ "StageName": stage.api_name });
        self.client
            .update("Opportunity", &record.id, &body, &[NO_AUTO_ASSIGN])
            .await
            .map_err(|e| Self::error(RecordKind::Opportunity, e))
    }

    async fn share_party(&self, record: &CrmRecord) -> Result<ShareParty, CrmError> {
        let error = |e| Self::error(RecordKind::Opportunity, e);
        // With multiple currencies on, each opportunity has its own; else the corporate one.
        let fields: &[&str] = if self.currencies().await?.is_some() {
            &["AccountId", "CurrencyIsoCode"]
        } else {
            &["AccountId"]
        };
        let row = self
            .client
            .get_record("Opportunity", &record.id, fields)
            .await
            .map_err(error)?
            .ok_or(CrmError::Gone(RecordKind::Opportunity))?;
        let mut party = ShareParty::default();
        if let Some(id) = text_of(&row, "AccountId") {
            let fields = [
                "Name",
                "BillingStreet",
                "BillingCity",
                "BillingState",
                "BillingPostalCode",
                "BillingCountry",
            ];
            if let Some(account) = self
                .client
                .get_record("Account", &id, &fields)
                .await
                .map_err(error)?
            {
                let street = text_of(&account, "BillingStreet").unwrap_or_default();
                let mut lines = street.lines().map(str::trim).filter(|l| !l.is_empty());
                let line1 = lines.next().map(str::to_owned);
                let rest: Vec<&str> = lines.collect();
                party.account = Some(Account {
                    name: text_of(&account, "Name"),
                    line1,
                    line2: (!rest.is_empty()).then(|| rest.join(", ")),
                    city: text_of(&account, "BillingCity"),
                    state: text_of(&account, "BillingState"),
                    postal_code: text_of(&account, "BillingPostalCode"),
                    country: text_of(&account, "BillingCountry"),
                });
            }
        }
        let roles = self
            .client
            .query(&format!(
                "SELECT ContactId FROM OpportunityContactRole WHERE OpportunityId = {} AND IsPrimary = true LIMIT 1",
                literal(&record.id)
            ))
            .await
            .map_err(error)?;
        if let Some(id) = roles.first().and_then(|r| text_of(r, "ContactId"))
            && let Some(contact) = self
                .client
                .get_record("Contact", &id, &["FirstName", "LastName", "Email", "Phone"])
                .await
                .map_err(error)?
        {
            party.contact = Some(Contact {
                first_name: text_of(&contact, "FirstName"),
                last_name: text_of(&contact, "LastName"),
                email: text_of(&contact, "Email"),
                phone: text_of(&contact, "Phone"),
            });
        }
        party.currency = match text_of(&row, "CurrencyIsoCode") {
            Some(code) => Some(code),
            None => self.org_currency().await?,
        };
        Ok(party)
    }

    async fn changed_since(
        &self,
        kind: RecordKind,
        since: &str,
        flag: Option<&str>,
        columns: &[&str],
    ) -> Result<Changes, CrmError> {
        let mut fields = self.fields(kind, columns);
        if let Some(flag) = flag
            && !fields.contains(&flag)
        {
            fields.push(flag);
        }
        let lag = time::Duration::try_from(self.poll_lag).unwrap_or(time::Duration::ZERO);
        let from = seconds_literal(since).ok_or_else(|| CrmError::Rejected {
            crm: NAME,
            message: format!("the poll's lower bound `{since}` is not an RFC 3339 instant"),
        })?;
        // Salesforce's clock, not ours: rows committed late carry an earlier SystemModstamp,
        // so the poll stays `lag` behind Salesforce's now.
        let upper = self.client.server_now().map(|now| now - lag);
        let mut filter = format!("SystemModstamp >= {from}");
        if let Some(upper) = upper {
            filter.push_str(&format!(" AND SystemModstamp < {}", soql_datetime(upper)));
        }
        let linked = match flag {
            Some(flag) => format!("({KEY_FIELD} != null OR {flag} = true)"),
            None => format!("{KEY_FIELD} != null"),
        };
        let soql = format!(
            "SELECT {} FROM {} WHERE {filter} AND {linked} ORDER BY SystemModstamp, Id",
            fields.join(", "),
            object(kind)
        );
        let rows = self
            .client
            .query(&soql)
            .await
            .map_err(|e| Self::error(kind, e))?;
        // Without a known clock before the query, its answer's Date sets the bound.
        let until = upper.or_else(|| self.client.server_time().map(|now| now - lag));
        let until = until.map(|u| u.replace_nanosecond(0).unwrap_or(u));
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let record = self.record(kind, columns, row)?;
            let late = match (&record.modified_on, until) {
                (Some(m), Some(u)) => OffsetDateTime::parse(m, &Rfc3339).is_ok_and(|m| m >= u),
                _ => false,
            };
            if !late {
                records.push(record);
            }
        }
        Ok(Changes {
            records,
            until: until.map(crate::sync::utc_seconds),
        })
    }
}

/// The text of a field, trimmed; `None` when empty.
fn text_of(row: &Map<String, Value>, field: &str) -> Option<String> {
    row.get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A SOQL string literal: quoted, with `\` and `'` escaped.
pub fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A SOQL datetime literal to the second, UTC (`2026-12-03T07:00:00Z`), rounded down.
fn soql_datetime(t: OffsetDateTime) -> String {
    crate::sync::utc_seconds(t)
}

/// `since` as a SOQL datetime literal, rounded down to the second.
fn seconds_literal(since: &str) -> Option<String> {
    OffsetDateTime::parse(since, &Rfc3339)
        .ok()
        .map(soql_datetime)
}

/// A Salesforce datetime (`2026-12-03T07:00:00.000+0000`) as RFC 3339 UTC with milliseconds.
pub fn rfc3339(text: &str) -> Option<String> {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond][offset_hour sign:mandatory][offset_minute]"
    );
    let t = OffsetDateTime::parse(text, FORMAT)
        .or_else(|_| OffsetDateTime::parse(text, &Rfc3339))
        .ok()?;
    t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soql_literals_escape_quotes_and_backslashes() {
        let cases = [
            ("Contoso", "'Contoso'"),
            ("O'Brien & Co", "'O\\'Brien & Co'"),
            ("a\\b", "'a\\\\b'"),
            ("two\nlines", "'two\\nlines'"),
        ];
        for (text, expected) in cases {
            assert_eq!(literal(text), expected, "{text}");
        }
    }

    #[test]
    fn salesforce_datetimes_become_rfc3339_utc() {
        let cases = [
            ("2026-12-03T07:00:00.000+0000", Some("2026-12-03T07:00:00Z")),
            (
                "2026-12-03T07:00:00.250+0000",
                Some("2026-12-03T07:00:00.25Z"),
            ),
            ("2026-12-03T09:00:00.000+0200", Some("2026-12-03T07:00:00Z")),
            ("2026-12-03T07:00:00Z", Some("2026-12-03T07:00:00Z")),
            ("yesterday", None),
        ];
        for (text, expected) in cases {
            assert_eq!(rfc3339(text).as_deref(), expected, "{text}");
        }
        assert_eq!(
            seconds_literal("2026-12-03T07:00:59.900Z").as_deref(),
            Some("2026-12-03T07:00:59Z")
        );
    }

    #[test]
    fn long_text_is_cut_to_the_field_length_and_other_values_pass() {
        let mut columns = Map::new();
        columns.insert(STATUS_FIELD.into(), Value::from("x".repeat(300)));
        columns.insert("Description".into(), Value::from("short"));
        columns.insert("Amount".into(), Value::from(12.5));
        let fitted = SalesforceCrm::fit(RecordKind::Opportunity, &columns);
        assert_eq!(fitted[STATUS_FIELD].as_str().map(str::len), Some(255));
        assert_eq!(fitted["Description"], "short");
        assert_eq!(fitted["Amount"], 12.5);
    }
}
