//! The conformance suite: one set of sync scenarios, written once against what a CRM's local
//! fake can show (its records, a seller's edits, its write count), run for every table of
//! every CRM adapter through the real ReferralSync function. A new adapter or table is done
//! when `conformance!` passes for it.

use std::{collections::HashMap, future::Future, io::Write};

use serde_json::{Value, json};
use testkit::{
    fakes::{Fault, Recorded},
    sync_world::{
        DATAVERSE_NOTES_MAPPING, KEY_COLUMN, SALESFORCE_NOTES_MAPPING, SyncWorld, queue_envelope,
        referral, sync_message,
    },
};

use crate::helpers::{REFERRAL_ID, TestApp, settings_from};

/// One table of one CRM, as the scenarios see it through its local fake.
pub trait Table: Sync {
    /// The `SYNC_TARGET` that sends referrals to this table.
    fn target(&self) -> &'static str;
    /// The settings that select this CRM, pointing at its fake.
    fn vars(&self, w: &SyncWorld) -> HashMap<String, String>;
    /// The mapping file every scenario runs with: notes flow to the description on every
    /// sync, so the update scenario has a Partner Center → CRM column on every table.
    fn mapping(&self) -> &'static str;
    /// The description column, which holds the referral's notes.
    fn notes(&self) -> &'static str;
    /// The sync status, link and audit columns.
    fn status_link_audit(&self) -> [&'static str; 3];
    /// The record with this referral key, as the fake holds it.
    fn record(&self, w: &SyncWorld, key: &str) -> Option<Value>;
    /// How many records carry this key.
    fn count(&self, w: &SyncWorld, key: &str) -> usize;
    /// The record's id as written back to `externalReferenceId`.
    fn id(&self, record: &Value) -> String;
    /// A seller closes the record in the CRM as lost (disqualified, for a lead).
    fn seller_loses(&self, w: &SyncWorld, key: &str);
    /// The status reason that loss reports to Partner Center.
    fn lost_reason(&self) -> &'static str;
    /// Successful data writes on the fake.
    fn writes(&self, w: &SyncWorld) -> usize;
    /// Requests the CRM fake received.
    fn requests(&self, w: &SyncWorld) -> Vec<Recorded>;
    /// Forgets the CRM fake's requests.
    fn clear_requests(&self, w: &SyncWorld);
    /// The write requests to this table's records.
    fn record_writes(&self, w: &SyncWorld) -> Vec<Recorded>;
    /// Arms the CRM side of a write race: the next write to the record is refused as changed
    /// (`true`: the referral changes before the sync), or held back before it lands (`false`:
    /// the referral changes while the write is in flight).
    fn arm_race(&self, w: &SyncWorld) -> bool;
    /// How the record ends after its referral is closed in Partner Center as lost.
    fn closed_from_referral(&self, record: &Value) -> bool;
}

/// Dataverse `lead`.
pub struct DataverseLead;
/// Dataverse `opportunity`.
pub struct DataverseOpportunity;
/// Salesforce `Lead`.
pub struct SalesforceLead;
/// Salesforce `Opportunity`.
pub struct SalesforceOpportunity;

/// What the Dataverse tables share.
trait DataverseTable {
    fn path(&self) -> &'static str;
}

macro_rules! dataverse_common {
    () => {
        fn vars(&self, w: &SyncWorld) -> HashMap<String, String> {
            w.vars()
        }
        fn mapping(&self) -> &'static str {
            DATAVERSE_NOTES_MAPPING
        }
        fn notes(&self) -> &'static str {
            "description"
        }
        fn status_link_audit(&self) -> [&'static str; 3] {
            [
                "new_partnercentersyncstatus",
                "new_partnercenterlink",
                "new_partnercenteraudit",
            ]
        }
        fn writes(&self, w: &SyncWorld) -> usize {
            w.dataverse.write_count()
        }
        fn requests(&self, w: &SyncWorld) -> Vec<Recorded> {
            w.dataverse.requests()
        }
        fn clear_requests(&self, w: &SyncWorld) {
            w.dataverse.clear_requests();
        }
        fn record_writes(&self, w: &SyncWorld) -> Vec<Recorded> {
            let writes = w.dataverse.requests_matching("PATCH", self.path());
            for write in &writes {
                assert!(
                    write
                        .header("if-match")
                        .is_some_and(|v| v.starts_with("W/")),
                    "every Dataverse update is conditional on the version read"
                );
            }
            writes
        }
        fn arm_race(&self, w: &SyncWorld) -> bool {
            w.dataverse
                .inject(Fault::status(412).on("PATCH", self.path()).times(1));
            true
        }
    };
}

impl DataverseTable for DataverseLead {
    fn path(&self) -> &'static str {
        "leads("
    }
}

impl DataverseTable for DataverseOpportunity {
    fn path(&self) -> &'static str {
        "opportunities("
    }
}

impl Table for DataverseLead {
    dataverse_common!();
    fn target(&self) -> &'static str {
        "lead"
    }
    fn record(&self, w: &SyncWorld, key: &str) -> Option<Value> {
        w.dataverse.lead(key)
    }
    fn count(&self, w: &SyncWorld, key: &str) -> usize {
        w.dataverse
            .leads()
            .iter()
            .filter(|l| l[KEY_COLUMN] == key)
            .count()
    }
    fn id(&self, record: &Value) -> String {
        record["leadid"].as_str().unwrap_or_default().to_owned()
    }
    fn seller_loses(&self, w: &SyncWorld, key: &str) {
        w.dataverse.set_lead_state(key, 2, 6);
    }
    fn lost_reason(&self) -> &'static str {
        "No Longer Interested"
    }
    fn closed_from_referral(&self, record: &Value) -> bool {
        // Leads are never closed from Partner Center.
        record["statecode"] == 0
    }
}

impl Table for DataverseOpportunity {
    dataverse_common!();
    fn target(&self) -> &'static str {
        "opportunity"
    }
    fn record(&self, w: &SyncWorld, key: &str) -> Option<Value> {
        w.dataverse.opportunity(key)
    }
    fn count(&self, w: &SyncWorld, key: &str) -> usize {
        w.dataverse
            .opportunities()
            .iter()
            .filter(|o| o[KEY_COLUMN] == key)
            .count()
    }
    fn id(&self, record: &Value) -> String {
        record["opportunityid"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    fn seller_loses(&self, w: &SyncWorld, key: &str) {
        let id = self.id(&self.record(w, key).expect("opportunity"));
        w.dataverse.set_opportunity_state(&id, 2, 5);
    }
    fn lost_reason(&self) -> &'static str {
        "Out-Sold"
    }
    fn closed_from_referral(&self, record: &Value) -> bool {
        record["statecode"] == 2 && record["statuscode"] == 4
    }
}

/// What the Salesforce objects share.
trait SalesforceObject {
    fn object(&self) -> &'static str;
}

impl SalesforceObject for SalesforceLead {
    fn object(&self) -> &'static str {
        "Lead"
    }
}

impl SalesforceObject for SalesforceOpportunity {
    fn object(&self) -> &'static str {
        "Opportunity"
    }
}

macro_rules! salesforce_common {
    () => {
        fn vars(&self, w: &SyncWorld) -> HashMap<String, String> {
            w.salesforce_vars()
        }
        fn mapping(&self) -> &'static str {
            SALESFORCE_NOTES_MAPPING
        }
        fn notes(&self) -> &'static str {
            "Description"
        }
        fn status_link_audit(&self) -> [&'static str; 3] {
            [
                "Partner_Center_Sync_Status__c",
                "Partner_Center_Link__c",
                "Partner_Center_Audit__c",
            ]
        }
        fn record(&self, w: &SyncWorld, key: &str) -> Option<Value> {
            w.salesforce
                .find_by_referral_id(self.object(), key)
                .into_iter()
                .next()
        }
        fn count(&self, w: &SyncWorld, key: &str) -> usize {
            w.salesforce.find_by_referral_id(self.object(), key).len()
        }
        fn id(&self, record: &Value) -> String {
            record["Id"].as_str().unwrap_or_default().to_owned()
        }
        fn writes(&self, w: &SyncWorld) -> usize {
            w.salesforce.write_count()
        }
        fn requests(&self, w: &SyncWorld) -> Vec<Recorded> {
            w.salesforce.requests()
        }
        fn clear_requests(&self, w: &SyncWorld) {
            w.salesforce.clear_requests();
        }
        fn record_writes(&self, w: &SyncWorld) -> Vec<Recorded> {
            w.salesforce
                .requests_matching("PATCH", &format!("/sobjects/{}/", self.object()))
        }
        fn arm_race(&self, w: &SyncWorld) -> bool {
            w.salesforce.inject(
                Fault::delayed(std::time::Duration::from_millis(400))
                    .on("PATCH", &format!("/sobjects/{}/", self.object())),
            );
            false
        }
    };
}

impl Table for SalesforceLead {
    salesforce_common!();
    fn target(&self) -> &'static str {
        "lead"
    }
    fn seller_loses(&self, w: &SyncWorld, key: &str) {
        let id = self.id(&self.record(w, key).expect("lead"));
        w.salesforce
            .set_field(&id, "Status", json!("Closed - Not Converted"));
    }
    fn lost_reason(&self) -> &'static str {
        "Closed - Not Converted"
    }
    fn closed_from_referral(&self, record: &Value) -> bool {
        // Leads are never closed from Partner Center.
        record["Status"] == "Open - Not Contacted"
    }
}

impl Table for SalesforceOpportunity {
    salesforce_common!();
    fn target(&self) -> &'static str {
        "opportunity"
    }
    fn seller_loses(&self, w: &SyncWorld, key: &str) {
        let id = self.id(&self.record(w, key).expect("opportunity"));
        w.salesforce.set_stage(&id, "Closed Lost");
    }
    fn lost_reason(&self) -> &'static str {
        "Closed Lost"
    }
    fn closed_from_referral(&self, record: &Value) -> bool {
        record["StageName"] == "Closed Lost" && record["IsClosed"] == true
    }
}

/// The fakes, the handler and the mapping file.
pub struct World {
    /// The fakes.
    pub fakes: SyncWorld,
    app: TestApp,
    _mapping: tempfile::NamedTempFile,
}

impl World {
    /// Fakes with `REFERRAL_ID` in Partner Center, a handler syncing into `table`.
    pub async fn start(table: &dyn Table, extra: &[(&str, &str)]) -> Self {
        let fakes = SyncWorld::start().await;
        fakes.dataverse.set_schema(true, Some("Active"));
        fakes.partner_center.insert_referral(referral(REFERRAL_ID));
        let mut mapping = tempfile::NamedTempFile::new().expect("temp file");
        mapping
            .write_all(table.mapping().as_bytes())
            .expect("write mapping");
        let path = mapping.path().display().to_string();
        let mut vars = table.vars(&fakes);
        vars.insert("SYNC_TARGET".into(), table.target().into());
        vars.insert("REFERRAL_MAPPING_FILE".into(), path);
        for (k, v) in extra {
            vars.insert((*k).into(), (*v).into());
        }
        let app = TestApp::spawn(&settings_from(&fakes, vars)).await;
        Self {
            fakes,
            app,
            _mapping: mapping,
        }
    }

    /// One ReferralSync invocation; the status and the host's answer.
    pub async fn sync(&self) -> (u16, Value) {
        self.app
            .invoke(
                "ReferralSync",
                queue_envelope(&sync_message(REFERRAL_ID), 1),
            )
            .await
    }

    /// Syncs and asserts success without a poison entry.
    pub async fn sync_ok(&self) -> String {
        let (status, answer) = self.sync().await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer["Outputs"].get("poison").is_none(), "{answer}");
        answer["Logs"][0].as_str().unwrap_or_default().to_owned()
    }

    fn referral(&self) -> Value {
        self.fakes
            .partner_center
            .referral(REFERRAL_ID)
            .expect("referral")
    }

    fn patches(&self) -> usize {
        self.fakes.partner_center.patch_count(REFERRAL_ID)
    }
}

/// A new referral: one record with the key and the mapped columns, the referral linked to it
/// and accepted, and the seller's status and audit columns filled.
pub async fn create(table: &dyn Table) {
    let w = World::start(table, &[]).await;
    let log = w.sync_ok().await;
    assert!(
        log.contains(&format!("{} created", table.target())),
        "{log}"
    );
    assert_eq!(table.count(&w.fakes, REFERRAL_ID), 1);
    let record = table.record(&w.fakes, REFERRAL_ID).expect("record");
    let [status, link, audit] = table.status_link_audit();
    assert_eq!(record[table.notes()], "Wants help moving 40 VMs");
    assert!(
        record[status]
            .as_str()
            .is_some_and(|s| s.starts_with("synced 20")),
        "{record}"
    );
    assert!(
        record[link]
            .as_str()
            .is_some_and(|s| s.ends_with(REFERRAL_ID)),
        "{record}"
    );
    let audit = record[audit].as_str().unwrap_or("");
    assert_eq!(audit.lines().count(), 1, "{audit}");
    assert!(
        audit.contains(&format!("created the {}", table.target())),
        "{audit}"
    );
    let referral = w.referral();
    assert_eq!(referral["externalReferenceId"], table.id(&record));
    assert_eq!(referral["status"], "Active");
    assert_eq!(referral["substatus"], "Accepted");
    assert_eq!(w.patches(), 1);
}

/// The same message again, and the event of our own PATCH: nothing is written anywhere, in
/// two requests (the record, the referral).
pub async fn replay_is_a_no_op(table: &dyn Table) {
    let w = World::start(table, &[]).await;
    w.sync_ok().await;
    let (writes, patches) = (table.writes(&w.fakes), w.patches());
    let record = table.record(&w.fakes, REFERRAL_ID).expect("record");
    for _ in 0..2 {
        table.clear_requests(&w.fakes);
        w.fakes.partner_center.clear_requests();
        let log = w.sync_ok().await;
        assert!(log.contains("unchanged"), "{log}");
        let requests = table.requests(&w.fakes).len() + w.fakes.partner_center.requests().len();
        assert_eq!(requests, 2, "a no-op is one CRM read and one referral read");
    }
    assert_eq!(table.writes(&w.fakes), writes, "no CRM write on replay");
    assert_eq!(w.patches(), patches, "no referral patch on replay");
    assert_eq!(
        table.record(&w.fakes, REFERRAL_ID).expect("record"),
        record,
        "the record is untouched, status and audit included"
    );
}

/// A referral change reaches the record in one conditional write of the changed column (plus
/// status and audit), and nothing is written back.
pub async fn update(table: &dyn Table) {
    let w = World::start(table, &[]).await;
    w.sync_ok().await;
    let patches = w.patches();
    w.fakes
        .partner_center
        .set_referral_field(REFERRAL_ID, "/details/notes", json!("Now 60 VMs"));
    table.clear_requests(&w.fakes);
    let log = w.sync_ok().await;
    assert!(
        log.contains(&format!("{} updated", table.target())),
        "{log}"
    );
    let record = table.record(&w.fakes, REFERRAL_ID).expect("record");
    assert_eq!(record[table.notes()], "Now 60 VMs");
    let writes = table.record_writes(&w.fakes);
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].json()[table.notes()], "Now 60 VMs");
    assert_eq!(w.patches(), patches, "nothing new to write back");
    let audit = record[table.status_link_audit()[2]].as_str().unwrap_or("");
    assert!(
        audit
            .lines()
            .next()
            .is_some_and(|l| l.contains("updated") && l.contains(table.notes())),
        "{audit}"
    );
}

/// Ten first syncs at once end with one record, linked and accepted.
pub async fn concurrent_first_syncs(table: &dyn Table) {
    let w = World::start(table, &[]).await;
    let answers = futures::future::join_all((0..10).map(|_| w.sync())).await;
    for (status, answer) in &answers {
        assert!(
            *status == 200 || *status == 500 || *status == 503,
            "{status} {answer}"
        );
        assert!(answer["Outputs"].get("poison").is_none(), "{answer}");
    }
    // Any invocation the host would retry converges on the next delivery.
    w.sync_ok().await;
    assert_eq!(table.count(&w.fakes, REFERRAL_ID), 1, "exactly one record");
    let record = table.record(&w.fakes, REFERRAL_ID).expect("record");
    let referral = w.referral();
    assert_eq!(referral["externalReferenceId"], table.id(&record));
    assert_eq!(referral["status"], "Active");
    assert_eq!(record[table.notes()], referral["details"]["notes"]);
}

/// A write that races a change ends with the newest referral: a 412 on the CRM write
/// (someone changed the record in between) is re-read and retried; where the CRM has no
/// conditional writes, a referral that moved while the write was in flight is written again.
pub async fn conflict_is_re_read(table: &dyn Table) {
    let w = World::start(table, &[]).await;
    w.sync_ok().await;
    let change = || {
        w.fakes.partner_center.set_referral_field(
            REFERRAL_ID,
            "/details/notes",
            json!("After the race"),
        )
    };
    w.fakes.partner_center.set_referral_field(
        REFERRAL_ID,
        "/details/notes",
        json!("Before the race"),
    );
    table.clear_requests(&w.fakes);
    if table.arm_race(&w.fakes) {
        change();
        w.sync_ok().await;
    } else {
        let during = async {
            while table.record_writes(&w.fakes).is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            change();
        };
        let (_, log) = tokio::join!(during, w.sync_ok());
        assert!(log.contains("updated"), "{log}");
        let sent: Vec<Value> = table
            .record_writes(&w.fakes)
            .iter()
            .map(|r| r.json()[table.notes()].clone())
            .collect();
        assert_eq!(sent, [json!("Before the race"), json!("After the race")]);
    }
    let record = table.record(&w.fakes, REFERRAL_ID).expect("record");
    assert_eq!(record[table.notes()], "After the race");
}

/// A referral closed in Partner Center is never patched; an open opportunity is closed once,
/// a lead is left as it is; later syncs change nothing.
pub async fn closed_referral(table: &dyn Table) {
    let w = World::start(table, &[]).await;
    w.sync_ok().await;
    for (pointer, value) in [
        ("/status", "Closed"),
        ("/substatus", "Lost"),
        ("/statusReason", "Customer chose another partner"),
    ] {
        w.fakes
            .partner_center
            .set_referral_field(REFERRAL_ID, pointer, json!(value));
    }
    let patches = w.patches();
    w.sync_ok().await;
    let record = table.record(&w.fakes, REFERRAL_ID).expect("record");
    assert!(table.closed_from_referral(&record), "{record}");
    let writes = table.writes(&w.fakes);
    w.sync_ok().await;
    assert_eq!(
        table.writes(&w.fakes),
        writes,
        "closed once, then never again"
    );
    assert_eq!(w.patches(), patches, "a closed referral is never patched");
    assert_eq!(w.referral()["status"], "Closed");
}

/// The deal's end in the CRM reaches Partner Center exactly once: lost with the reason.
pub async fn lifecycle_lost_in_the_crm(table: &dyn Table) {
    let w = World::start(table, &[]).await;
    w.sync_ok().await;
    table.seller_loses(&w.fakes, REFERRAL_ID);
    let patches = w.patches();
    w.sync_ok().await;
    let referral = w.referral();
    assert_eq!(referral["status"], "Closed");
    assert_eq!(referral["substatus"], "Lost");
    assert_eq!(referral["statusReason"], table.lost_reason());
    assert_eq!(w.patches(), patches + 1);
    w.sync_ok().await;
    assert_eq!(w.patches(), patches + 1, "exactly once");
}

/// Runs one scenario on one table (for the macro).
pub async fn run<F, Fut>(table: &'static dyn Table, scenario: F)
where
    F: FnOnce(&'static dyn Table) -> Fut,
    Fut: Future<Output = ()>,
{
    scenario(table).await;
}

/// Every scenario, as one test each, for one table.
macro_rules! conformance {
    ($module:ident, $table:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn create() {
                run(&$table, super::create).await;
            }
            #[tokio::test]
            async fn replay_is_a_no_op() {
                run(&$table, super::replay_is_a_no_op).await;
            }
            #[tokio::test]
            async fn update() {
                run(&$table, super::update).await;
            }
            #[tokio::test]
            async fn concurrent_first_syncs() {
                run(&$table, super::concurrent_first_syncs).await;
            }
            #[tokio::test]
            async fn conflict_is_re_read() {
                run(&$table, super::conflict_is_re_read).await;
            }
            #[tokio::test]
            async fn closed_referral() {
                run(&$table, super::closed_referral).await;
            }
            #[tokio::test]
            async fn lifecycle_lost_in_the_crm() {
                run(&$table, super::lifecycle_lost_in_the_crm).await;
            }
        }
    };
}

conformance!(dataverse_lead, DataverseLead);
conformance!(dataverse_opportunity, DataverseOpportunity);
conformance!(salesforce_lead, SalesforceLead);
conformance!(salesforce_opportunity, SalesforceOpportunity);
