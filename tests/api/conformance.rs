//! The conformance suite: one set of sync scenarios, written once against what a CRM's local
//! fake can show (its records, a seller's edits, its write count), run for every table of
//! every CRM adapter through the real ReferralSync function. A new adapter or table is done
//! when `conformance!` passes for it.

use std::{future::Future, io::Write};

use serde_json::{Value, json};
use testkit::{
    fakes::Fault,
    sync_world::{KEY_COLUMN, SyncWorld, queue_envelope, referral, sync_message},
};

use crate::helpers::{REFERRAL_ID, TestApp, sync_settings};

/// One table of one CRM, as the scenarios see it through its local fake.
pub trait Table: Sync {
    /// The `SYNC_TARGET` that sends referrals to this table.
    fn target(&self) -> &'static str;
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
    /// The path fragment of this table's row URLs, for fault injection.
    fn path(&self) -> &'static str;
    /// How the record ends after its referral is closed in Partner Center as lost.
    fn closed_from_referral(&self, record: &Value) -> bool;
}

/// Dataverse `lead`.
pub struct DataverseLead;
/// Dataverse `opportunity`.
pub struct DataverseOpportunity;

impl Table for DataverseLead {
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
    fn writes(&self, w: &SyncWorld) -> usize {
        w.dataverse.write_count()
    }
    fn path(&self) -> &'static str {
        "leads("
    }
    fn closed_from_referral(&self, record: &Value) -> bool {
        // Leads are never closed from Partner Center.
        record["statecode"] == 0
    }
}

impl Table for DataverseOpportunity {
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
    fn writes(&self, w: &SyncWorld) -> usize {
        w.dataverse.write_count()
    }
    fn path(&self) -> &'static str {
        "opportunities("
    }
    fn closed_from_referral(&self, record: &Value) -> bool {
        record["statecode"] == 2 && record["statuscode"] == 4
    }
}

/// The mapping every scenario runs with: notes flow to `description` on every sync, so the
/// update scenario has a Partner Center → CRM column on every table.
const MAPPING: &str = r#"{"tables": {
    "lead": {"columns": {"description": {"from": "details.notes"}}},
    "opportunity": {"columns": {"description": {"from": "details.notes"}}}
}}"#;

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
            .write_all(MAPPING.as_bytes())
            .expect("write mapping");
        let path = mapping.path().display().to_string();
        let mut vars = vec![
            ("SYNC_TARGET", table.target()),
            ("REFERRAL_MAPPING_FILE", path.as_str()),
        ];
        vars.extend_from_slice(extra);
        let app = TestApp::spawn(&sync_settings(&fakes, &vars)).await;
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
    assert_eq!(record["description"], "Wants help moving 40 VMs");
    assert!(
        record["new_partnercentersyncstatus"]
            .as_str()
            .is_some_and(|s| s.starts_with("synced 20")),
        "{record}"
    );
    assert!(
        record["new_partnercenterlink"]
            .as_str()
            .is_some_and(|s| s.ends_with(REFERRAL_ID)),
        "{record}"
    );
    let audit = record["new_partnercenteraudit"].as_str().unwrap_or("");
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
        w.fakes.dataverse.clear_requests();
        w.fakes.partner_center.clear_requests();
        let log = w.sync_ok().await;
        assert!(log.contains("unchanged"), "{log}");
        let requests = w.fakes.dataverse.requests().len() + w.fakes.partner_center.requests().len();
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
    w.fakes.dataverse.clear_requests();
    let log = w.sync_ok().await;
    assert!(
        log.contains(&format!("{} updated", table.target())),
        "{log}"
    );
    let record = table.record(&w.fakes, REFERRAL_ID).expect("record");
    assert_eq!(record["description"], "Now 60 VMs");
    let writes = w.fakes.dataverse.requests_matching("PATCH", table.path());
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].json()["description"], "Now 60 VMs");
    assert!(
        writes[0]
            .header("if-match")
            .is_some_and(|v| v.starts_with("W/"))
    );
    assert_eq!(w.patches(), patches, "nothing new to write back");
    let audit = record["new_partnercenteraudit"].as_str().unwrap_or("");
    assert!(
        audit
            .lines()
            .next()
            .is_some_and(|l| l.contains("updated") && l.contains("description")),
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
}

/// A 412 on the CRM write (someone changed the record in between) is re-read and retried.
pub async fn conflict_is_re_read(table: &dyn Table) {
    let w = World::start(table, &[]).await;
    w.sync_ok().await;
    w.fakes.partner_center.set_referral_field(
        REFERRAL_ID,
        "/details/notes",
        json!("After the race"),
    );
    w.fakes
        .dataverse
        .inject(Fault::status(412).on("PATCH", table.path()).times(1));
    w.sync_ok().await;
    let record = table.record(&w.fakes, REFERRAL_ID).expect("record");
    assert_eq!(record["description"], "After the race");
    assert_eq!(w.fakes.dataverse.injected_faults(), 1);
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
