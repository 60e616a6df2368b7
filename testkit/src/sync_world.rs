//! Everything ReferralSync talks to, faked on 127.0.0.1: the Entra token endpoint over https
//! (azure_identity insists on it; trusted through the test root), Partner Center, Dataverse
//! and a Salesforce org (with the connector's fields), plus the settings variables that point
//! the connector at them.

use std::{collections::HashMap, io::Write};

use serde_json::{Value, json};

use crate::{
    fakes::{FakeDataverse, FakeEntra, FakePartnerCenter, FakeSalesforce},
    pki::TestPki,
    tls,
};

/// Partner tenant used by the fakes.
pub const TENANT: &str = "contoso.onmicrosoft.com";
/// Dataverse tenant (a GUID, as azure_identity validates it).
pub const DATAVERSE_TENANT: &str = "11111111-2222-3333-4444-555555555555";
/// The alternate-key column.
pub const KEY_COLUMN: &str = "new_partnercenterreferralid";

/// A mapping file for Dataverse in which the notes follow the referral on every sync in both
/// tables (so every table has a Partner Center → CRM column).
pub const DATAVERSE_NOTES_MAPPING: &str = r#"{"tables": {
    "lead": {"columns": {"description": {"from": "details.notes"}}},
    "opportunity": {"columns": {"description": {"from": "details.notes"}}}
}}"#;

/// [`DATAVERSE_NOTES_MAPPING`] for Salesforce.
pub const SALESFORCE_NOTES_MAPPING: &str = r#"{"tables": {
    "Lead": {"columns": {"Description": {"from": "details.notes"}}},
    "Opportunity": {"columns": {"Description": {"from": "details.notes"}}}
}}"#;

/// The three fakes and the PKI that makes the token endpoint's TLS trusted.
pub struct SyncWorld {
    /// Root of the TLS certificate of the token endpoint.
    pub pki: TestPki,
    /// Token endpoint (https).
    pub entra: FakeEntra,
    /// Referrals and webhook registration APIs.
    pub partner_center: FakePartnerCenter,
    /// Dataverse Web API.
    pub dataverse: FakeDataverse,
    /// Salesforce org (used with [`SyncWorld::salesforce_vars`]).
    pub salesforce: FakeSalesforce,
    root_file: tempfile::NamedTempFile,
}

impl SyncWorld {
    /// Starts all fakes.
    pub async fn start() -> Self {
        let pki = TestPki::new(None);
        let entra = FakeEntra::start_tls(tls::acceptor(&pki.tls_server()), "127.0.0.1").await;
        let partner_center = FakePartnerCenter::start().await;
        let dataverse = FakeDataverse::start(KEY_COLUMN).await;
        let salesforce = FakeSalesforce::start().await.with_connector_fields();
        let mut root_file = tempfile::NamedTempFile::new().expect("temp file");
        root_file
            .write_all(&pki.root.cert_pem())
            .expect("write root");
        Self {
            pki,
            entra,
            partner_center,
            dataverse,
            salesforce,
            root_file,
        }
    }

    /// [`SyncWorld::vars`] for `CRM=salesforce`: the Salesforce fake with client credentials,
    /// and a poll that reads up to the fake's clock (no lag).
    pub fn salesforce_vars(&self) -> HashMap<String, String> {
        let mut vars = self.vars();
        for (k, v) in [
            ("CRM", "salesforce".to_owned()),
            ("SALESFORCE_URL", self.salesforce.base_url()),
            ("SALESFORCE_CLIENT_ID", self.salesforce.client_id()),
            ("SALESFORCE_CLIENT_SECRET", self.salesforce.client_secret()),
            ("SALESFORCE_POLL_LAG_SECONDS", "0".to_owned()),
        ] {
            vars.insert(k.to_owned(), v);
        }
        vars
    }

    /// The settings a user would set, pointing at the fakes.
    pub fn vars(&self) -> HashMap<String, String> {
        [
            ("AZURE_AUTHORITY_HOST", self.entra.base_url()),
            ("PARTNER_CENTER_TENANT_ID", TENANT.to_owned()),
            ("PARTNER_CENTER_CLIENT_ID", self.entra.client_id()),
            ("PARTNER_CENTER_CLIENT_SECRET", self.entra.client_secret()),
            ("PARTNER_CENTER_REFRESH_TOKEN", self.entra.refresh_token()),
            ("PARTNER_CENTER_API_URL", self.partner_center.base_url()),
            (
                "PARTNER_CENTER_WEBHOOK_API_URL",
                self.partner_center.base_url(),
            ),
            ("DATAVERSE_URL", self.dataverse.base_url()),
            ("DATAVERSE_REFERRAL_KEY_COLUMN", KEY_COLUMN.to_owned()),
            ("AZURE_TENANT_ID", DATAVERSE_TENANT.to_owned()),
            ("AZURE_CLIENT_ID", self.entra.dataverse_client_id()),
            ("AZURE_CLIENT_SECRET", self.entra.dataverse_client_secret()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// PEM of the root that issued the token endpoint's certificate.
    pub fn root_pem(&self) -> Vec<u8> {
        self.pki.root.cert_pem()
    }

    /// A file holding [`SyncWorld::root_pem`] (for `SSL_CERT_FILE`).
    pub fn root_pem_path(&self) -> String {
        self.root_file.path().display().to_string()
    }
}

/// A realistic incoming, new referral.
pub fn referral(id: &str) -> Value {
    json!({
        "id": id,
        "engagementId": "65edc0b5-3485-41b7-a17e-dfa9ef4706e2",
        "name": "Fabrikam cloud migration",
        "organizationId": "7d23e5ca-19dc-4eaa-aac8-5e6b559f0d1d",
        "organizationName": "Contoso Company",
        "externalReferenceId": "",
        "status": "New",
        "substatus": "Pending",
        "qualification": "SalesQualified",
        "type": "Independent",
        "direction": "Incoming",
        "customerProfile": {
            "name": "Fabrikam Inc",
            "address": {"addressLine1": "One Microsoft Way", "addressLine2": "", "city": "Redmond",
                        "state": "WA", "postalCode": "98052", "country": "US"},
            "team": [
                {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@fabrikam.test", "phoneNumber": "555-0100"},
                {"firstName": "Bob", "lastName": "Later", "email": "bob@fabrikam.test", "phoneNumber": "555-0101"}
            ]
        },
        "details": {"notes": "Wants help moving 40 VMs", "dealValue": 10000, "currency": "USD",
                    "closingDateTime": "2026-12-31T00:00:00Z"}
    })
}

/// A queue-trigger envelope as the host sends it: the message double-encoded, `DequeueCount`
/// as a string, `Id` and `PopReceipt` JSON-quoted, message properties copied into Metadata.
pub fn queue_envelope(message_text: &str, dequeue_count: u32) -> Vec<u8> {
    let mut metadata = json!({
        "DequeueCount": dequeue_count.to_string(),
        "Id": format!("\"{}\"", uuid::Uuid::new_v4()),
        "PopReceipt": "\"AgAAAAMAAAAAAAAA\"",
        "InsertionTime": "2026-11-23T07:54:20+00:00",
        "ExpirationTime": "2026-11-30T07:54:20+00:00",
        "NextVisibleTime": "2026-11-23T08:04:22+00:00",
        "sys": {"MethodName": "ReferralSync", "UtcNow": "2026-11-23T07:54:22.1233190Z", "RandGuid": uuid::Uuid::new_v4().to_string()}
    });
    if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(message_text) {
        for (k, v) in fields {
            metadata[k] = Value::from(v.to_string());
        }
    }
    let pretty = serde_json::from_str::<Value>(message_text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| message_text.to_owned());
    let msg = serde_json::to_string(&pretty).expect("encode");
    json!({"Data": {"msg": msg}, "Metadata": metadata})
        .to_string()
        .into_bytes()
}

/// The message the webhook enqueues for `id`.
pub fn sync_message(id: &str) -> String {
    json!({"referralId": id, "eventName": "referral-created",
           "resourceChangeUtcDate": "2026-11-20T10:15:30.1234567+00:00", "receivedAt": "2026-11-20T10:15:31Z"})
    .to_string()
}

/// A seller's opportunity marked "Sync with Partner Center" in the Dataverse fake: an account
/// in the United States (`customer` is its name), a contact with name and email, US dollars,
/// value, close date, Microsoft help and one solution. Returns the opportunity id.
pub fn shared_opportunity(dv: &FakeDataverse, customer: &str) -> String {
    let account = dv.insert_account(json!({
        "name": customer, "address1_line1": "1 Main St", "address1_city": "Redmond",
        "address1_stateorprovince": "WA", "address1_postalcode": "98052",
        "address1_country": "United States",
    }));
    let contact = dv.insert_contact(json!({
        "firstname": "Avery", "lastname": "Howard",
        "emailaddress1": "avery@example.test", "telephone1": "+1 425 555 0100",
    }));
    let usd = dv
        .currency_id("USD")
        .unwrap_or_else(|| dv.add_currency("USD"));
    dv.insert_opportunity(
        None,
        json!({
            "name": format!("{customer} Azure migration"),
            "estimatedvalue": 25000,
            "estimatedclosedate": "2027-03-31",
            "description": "Move 40 VMs",
            "new_syncwithpartnercenter": true,
            "new_microsofthelp": 100_000_003,
            "new_partnercentersolutions": "SOL-1234-PQRS",
            "_parentaccountid_value": account,
            "_customerid_value": account,
            "_parentcontactid_value": contact,
            "_transactioncurrencyid_value": usd,
        }),
    )
}

/// A seller's opportunity marked "Sync with Partner Center" in the Salesforce fake: an account
/// in the United States (`customer` is its name), a primary contact role for a contact with
/// name and email, amount, close date, Microsoft help and one solution. Returns its id.
pub fn shared_salesforce_opportunity(sf: &FakeSalesforce, customer: &str) -> String {
    let account = sf.insert(
        "Account",
        json!({"Name": customer, "BillingStreet": "1 Main St", "BillingCity": "Redmond",
               "BillingState": "WA", "BillingPostalCode": "98052",
               "BillingCountry": "United States"}),
    );
    let contact = sf.insert(
        "Contact",
        json!({"FirstName": "Avery", "LastName": "Howard", "Email": "avery@example.test",
               "Phone": "+1 425 555 0100", "AccountId": account}),
    );
    let opportunity = sf.insert(
        "Opportunity",
        json!({"Name": format!("{customer} Azure migration"), "StageName": "Prospecting",
               "Amount": 25000, "CloseDate": "2027-03-31", "Description": "Move 40 VMs",
               "AccountId": account, "Sync_with_Partner_Center__c": true,
               "How_can_Microsoft_help__c": "ProofOfConceptOrDemo",
               "Partner_Center_Solutions__c": "SOL-1234-PQRS"}),
    );
    sf.insert(
        "OpportunityContactRole",
        json!({"OpportunityId": opportunity, "ContactId": contact, "IsPrimary": true,
               "Role": "Decision Maker"}),
    );
    opportunity
}
