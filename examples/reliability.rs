//! Reliability run (not a unit test): 10,000 signed referral events with duplicates and
//! reorderings go through ReferralWebhook, an in-memory queue that behaves like the host's
//! (re-delivery with a rising dequeue count, poison after maxDequeueCount), and ReferralSync,
//! while the Partner Center, CRM and token fakes inject 429 + Retry-After, 503,
//! timeouts and connection resets on 20 % of requests. Loopback only, bounded in count and
//! time. Afterwards every referral must have exactly one correct lead and a consistent
//! write-back, or sit in the poison queue with its reason.
//!
//! With `--target opportunity` the referrals become Dynamics 365 opportunities instead (notes
//! flowing to `description` on every sync, 50 customers shared between them): then every
//! referral must end with exactly one correct opportunity and every customer with one account.
//!
//! With `--two-way` (opportunities) the CRM side moves too: sellers share opportunities with
//! Microsoft (one referral each must appear), edit the value and close date of linked ones and
//! win or lose some, while Partner Center changes the notes; CrmChanges runs on a timer, two
//! runs overlapping now and then, and the faults also lose answers to writes that happened.
//! After quiescence both sides must agree field by field per the mapping's directions, every
//! shared opportunity must have exactly one referral, and a further round of callbacks and
//! polls must write nothing.
//!
//! With `--crm salesforce` (default `dataverse`) the same traffic and faults go to the
//! Salesforce fake instead: Leads and Opportunities keyed by `Partner_Center_Referral_Id__c`,
//! accounts found by name and postal code, sellers moving `StageName`, `Amount` and
//! `CloseDate`, and (two-way) share claims in a real Azurite as the app's storage account.
//! The verdicts are the same.
//!
//! `scripts/reliability.sh` (= `cargo run --release --example reliability`); exits non-zero on
//! any loss or duplicate. Arguments:
//! `[--crm dataverse|salesforce] [--target lead|opportunity | --two-way] [events] [fault-rate] [seed]`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use referral_connector::{
    config::Settings,
    crm::{RecordKind, dataverse, salesforce},
    mapping::{Mappings, TableMapping},
    startup::Application,
};
use serde_json::{Value, json};
use testkit::{
    azurite::Azurite,
    cert_world::CertWorld,
    fakes::{FakeServer, REFERRAL_ID_FIELD, RandomFaults},
    host::{callback_body, http_envelope, timer_envelope},
    sync_world::{
        KEY_COLUMN, SyncWorld, queue_envelope, referral, shared_opportunity,
        shared_salesforce_opportunity, sync_message,
    },
};

const MAX_DEQUEUE_COUNT: u32 = 5;
/// Customers the opportunity run spreads its referrals over (so first syncs race for accounts).
const CUSTOMERS: usize = 50;
/// The run's daily API allocation of the Salesforce fake: high enough that the API budget
/// never stops the sync (this run is about faults, not about the budget).
const SALESFORCE_API_LIMIT: u64 = 10_000_000;
const DEADLINE: Duration = Duration::from_secs(20 * 60);

struct Message {
    text: String,
    dequeue_count: u32,
    visible_at: Instant,
}

#[derive(Default)]
struct Host {
    queue: Mutex<VecDeque<Message>>,
    poison: Mutex<Vec<Value>>,
    in_flight: AtomicUsize,
    invocations: AtomicUsize,
    failed_invocations: AtomicUsize,
    host_poisoned: AtomicUsize,
}

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn webhook_envelope(world: &CertWorld, event: &str, referral_id: &str) -> Vec<u8> {
    let body = callback_body(event, referral_id);
    let headers = world.signed_headers(body.as_bytes(), &world.pki.leaf, "leaf.cer");
    http_envelope(Some(&body), &headers)
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Value) {
    loop {
        match client.post(url).body(body.clone()).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                return (status, response.json().await.unwrap_or(Value::Null));
            }
            Err(e) => {
                eprintln!("handler unreachable ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One queue worker: takes visible messages until the producer is done and the queue drains.
async fn worker(
    host: Arc<Host>,
    client: reqwest::Client,
    url: String,
    producing: Arc<AtomicUsize>,
) {
    loop {
        let next = {
            let mut queue = host.queue.lock().unwrap();
            let now = Instant::now();
            let position = queue.iter().position(|m| m.visible_at <= now);
            position.and_then(|p| queue.remove(p))
        };
        let Some(mut message) = next else {
            let idle =
                host.queue.lock().unwrap().is_empty() && host.in_flight.load(Ordering::SeqCst) == 0;
            if idle && producing.load(Ordering::SeqCst) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        host.in_flight.fetch_add(1, Ordering::SeqCst);
        message.dequeue_count += 1;
        host.invocations.fetch_add(1, Ordering::Relaxed);
        let (status, answer) = post(
            &client,
            &url,
            queue_envelope(&message.text, message.dequeue_count),
        )
        .await;
        if (200..300).contains(&status) {
            if let Some(poison) = answer["Outputs"].get("poison") {
                host.poison.lock().unwrap().push(poison.clone());
            }
        } else {
            host.failed_invocations.fetch_add(1, Ordering::Relaxed);
            if message.dequeue_count >= MAX_DEQUEUE_COUNT {
                host.host_poisoned.fetch_add(1, Ordering::Relaxed);
                let mut entry: Value = serde_json::from_str(&message.text).unwrap_or(json!({}));
                entry["error"] = json!("moved by the host after maxDequeueCount");
                host.poison.lock().unwrap().push(entry);
            } else {
                message.visible_at = Instant::now() + Duration::from_millis(200);
                host.queue.lock().unwrap().push_back(message);
            }
        }
        host.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let mut kind = RecordKind::Lead;
    let two_way = args.iter().any(|a| a == "--two-way");
    args.retain(|a| a != "--two-way");
    if two_way {
        kind = RecordKind::Opportunity;
    }
    if let Some(at) = args.iter().position(|a| a == "--target") {
        kind = match args.get(at + 1).map(String::as_str) {
            Some("lead") => RecordKind::Lead,
            Some("opportunity") => RecordKind::Opportunity,
            other => {
                eprintln!("--target takes lead or opportunity, not {other:?}");
                std::process::exit(2);
            }
        };
        args.drain(at..at + 2);
    }
    let mut crm = Crm::Dataverse;
    if let Some(at) = args.iter().position(|a| a == "--crm") {
        crm = match args.get(at + 1).map(String::as_str).and_then(Crm::parse) {
            Some(crm) => crm,
            None => {
                eprintln!(
                    "--crm takes dataverse or salesforce, not {:?}",
                    args.get(at + 1)
                );
                std::process::exit(2);
            }
        };
        args.drain(at..at + 2);
    }
    let events: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rate: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0.2);
    let seed: u64 = args
        .get(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_261_123);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = runtime.block_on(async move {
        tokio::time::timeout(DEADLINE, run(crm, events, rate, seed, kind, two_way))
            .await
            .unwrap_or_else(|_| {
                println!("FAIL: the run did not finish within {DEADLINE:?}");
                false
            })
    });
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(
    crm: Crm,
    events: usize,
    rate: f64,
    seed: u64,
    kind: RecordKind,
    two_way: bool,
) -> bool {
    let started = Instant::now();
    let fakes = SyncWorld::start().await;
    let certs = CertWorld::start().await;
    let mapping_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(mapping_file.path(), crm.mapping()).expect("mapping file");
    let mut vars = crm.vars(&fakes);
    vars.extend(certs.vars());
    // Salesforce has no If-Match: a seller's share is claimed in the app's storage account.
    let azurite = (crm == Crm::Salesforce && two_way).then(Azurite::start);
    if let Some(azurite) = &azurite {
        vars.insert("AzureWebJobsStorage".into(), azurite.connection_string());
    }
    fakes.salesforce.set_api_limit(SALESFORCE_API_LIMIT);
    vars.insert("SYNC_TARGET".into(), kind.name().into());
    vars.insert(
        "REFERRAL_MAPPING_FILE".into(),
        mapping_file.path().display().to_string(),
    );
    vars.insert("OUTBOUND_TIMEOUT_SECONDS".into(), "1".into());
    vars.insert("SYNC_RETRY_BUDGET_SECONDS".into(), "3".into());
    // The poll runs every POLL_EVERY; a claim must outlast one create (2 × 1 s + 3 s).
    vars.insert("CRM_POLL_OVERLAP_SECONDS".into(), "2".into());
    vars.insert("CRM_SHARE_CLAIM_SECONDS".into(), "6".into());
    vars.insert("CRM_POLL_CONCURRENCY".into(), "16".into());
    let mut settings = Settings::from_vars(&vars).expect("settings");
    settings.http.extra_root_pems = vec![fakes.root_pem(), certs.pki.root.cert_pem()];
    settings.sync.retry_min_delay = Duration::from_millis(50);
    let app = Application::build(&settings).await.expect("app");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));

    let referrals = events / 4;
    for i in 0..referrals {
        let mut doc = referral(&id(i));
        if kind == RecordKind::Opportunity {
            doc["customerProfile"]["name"] = json!(format!("Customer {}", i % CUSTOMERS));
        }
        fakes.partner_center.insert_referral(doc);
    }
    // Per referral: created, updated, a duplicate of one of them, and one change followed by
    // its updated event; then the whole stream is shuffled (reordering).
    let mut rng = Xorshift(seed | 1);
    let mut stream_events: Vec<(usize, &str, bool)> = Vec::with_capacity(events);
    for i in 0..referrals {
        stream_events.push((i, "referral-created", false));
        stream_events.push((i, "referral-updated", false));
        stream_events.push((
            i,
            if rng.next().is_multiple_of(2) {
                "referral-created"
            } else {
                "related-referral-updated"
            },
            false,
        ));
        stream_events.push((i, "referral-updated", true));
    }
    for i in (1..stream_events.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        stream_events.swap(i, j);
    }
    let faults = |salt: u64| RandomFaults {
        rate,
        seed: seed ^ salt,
        retry_after_secs: 1,
        timeout_delay: Duration::from_millis(1500),
        lost_answers: two_way,
    };
    fakes.partner_center.set_random_faults(Some(faults(1)));
    crm.fake(&fakes).set_random_faults(Some(faults(2)));
    fakes.entra.set_random_faults(Some(faults(3)));

    let shared: Vec<String> = if two_way {
        (0..(referrals / 10).max(10))
            .map(|j| crm.share(&fakes, &format!("Shared customer {j}")))
            .collect()
    } else {
        Vec::new()
    };
    let host = Arc::new(Host::default());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let crm_side = CrmSide {
        enabled: two_way,
        ..CrmSide::default()
    };
    let crm_changes_url = format!("{base}/CrmChanges");
    let producing = Arc::new(AtomicUsize::new(1));
    let workers: Vec<_> = (0..96)
        .map(|_| {
            tokio::spawn(worker(
                host.clone(),
                client.clone(),
                format!("{base}/ReferralSync"),
                producing.clone(),
            ))
        })
        .collect();

    let queued = AtomicUsize::new(0);
    let traffic = async {
        let webhook_url = format!("{base}/ReferralWebhook");
        stream::iter(stream_events.iter().enumerate())
            .for_each_concurrent(32, |(n, (i, event, change))| {
                let (client, host, certs, fakes, webhook_url, queued) =
                    (&client, &host, &certs, &fakes, &webhook_url, &queued);
                async move {
                    if *change {
                        let notes = format!("change {n}");
                        fakes.partner_center.set_referral_field(
                            &id(*i),
                            "/details/notes",
                            json!(notes),
                        );
                    }
                    let (status, answer) =
                        post(client, webhook_url, webhook_envelope(certs, event, &id(*i))).await;
                    assert_eq!(status, 200, "{answer}");
                    assert_eq!(answer["Outputs"]["res"]["statusCode"], 200, "{answer}");
                    let message = answer["Outputs"]["syncQueue"].to_string();
                    host.queue.lock().unwrap().push_back(Message {
                        text: message,
                        dequeue_count: 0,
                        visible_at: Instant::now(),
                    });
                    queued.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
        producing.store(0, Ordering::SeqCst);
        for w in workers {
            w.await.unwrap();
        }
        crm_side.stop.store(1, Ordering::SeqCst);
    };
    tokio::join!(
        traffic,
        poll_timer(&crm_side, &host, &client, &crm_changes_url),
        seller(&crm_side, crm, &fakes, seed),
    );
    let shared_under_faults = fakes.partner_center.created().len();
    fakes.partner_center.set_random_faults(None);
    crm.fake(&fakes).set_random_faults(None);
    fakes.entra.set_random_faults(None);
    let mut writes_after_quiescence = 0;
    let mut quiescence_rounds = 0;
    if two_way {
        // Quiescence: every referral's callback (Partner Center sends one for each of our
        // writes) and a poll, until a round writes nothing; then one more round must write
        // nothing either.
        let writes = || {
            let pc = &fakes.partner_center;
            let patches: usize = pc.referral_ids().iter().map(|id| pc.patch_count(id)).sum();
            crm.write_count(&fakes) + patches + pc.created().len()
        };
        let round = || async {
            let before = writes();
            let answer = invoke_poll(&crm_side, &host, &client, &crm_changes_url).await;
            if answer.is_none() {
                println!("  a quiescence poll failed");
            }
            let ids = fakes.partner_center.referral_ids();
            stream::iter(ids)
                .for_each_concurrent(16, |rid| {
                    let (client, base) = (&client, &base);
                    async move {
                        let url = format!("{base}/ReferralSync");
                        post(client, &url, queue_envelope(&sync_message(&rid), 1)).await;
                    }
                })
                .await;
            writes() - before
        };
        loop {
            quiescence_rounds += 1;
            let written = round().await;
            if written == 0 || quiescence_rounds >= 30 {
                break;
            }
            // Claims of creates that never reached Partner Center expire after 6 s.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        writes_after_quiescence = round().await;
    }

    // Verification against the fakes' final state.
    let poison = host.poison.lock().unwrap().clone();
    let mut poisoned: HashMap<String, String> = HashMap::new();
    for entry in &poison {
        let reason = entry["error"].as_str().unwrap_or("").to_owned();
        assert!(
            !reason.is_empty(),
            "a poison entry without a reason: {entry}"
        );
        poisoned.insert(
            entry["referralId"].as_str().unwrap_or("").to_owned(),
            reason,
        );
    }
    let id_column = crm.id_field(kind);
    let mut per_key: HashMap<String, Vec<Value>> = HashMap::new();
    for record in crm.records(&fakes, kind) {
        per_key.entry(crm.key(&record)).or_default().push(record);
    }
    let mappings = Mappings::from_json_text(crm.mapping(), crm.default_mapping()).expect("mapping");
    let mapping = mappings.table(kind);
    let policy = settings.sync.policy.clone();
    let table = kind.name();
    let (mut correct, mut in_poison, mut lost, mut duplicates, mut stale) = (0, 0, 0, 0, 0);
    for i in 0..referrals {
        let rid = id(i);
        let document = fakes.partner_center.referral(&rid).unwrap();
        let found = per_key.get(&rid).cloned().unwrap_or_default();
        if found.len() > 1 {
            duplicates += 1;
            println!("DUPLICATE {rid}: {} {table} records", found.len());
            continue;
        }
        let consistent = found.first().is_some_and(|record| {
            let r =
                referral_connector::domain::Referral::from_json(document.clone(), None).unwrap();
            // A closed record is read-only (the status table): what Partner Center changed
            // after the seller closed it stays in the referral.
            let mut wanted = if crm.standing(kind, record) == Standing::Open {
                mapping.record_columns(&r, false).unwrap()
            } else {
                serde_json::Map::new()
            };
            wanted.extend(mapping.partner_center_columns(&r, &policy));
            let columns_ok = wanted.iter().all(|(k, v)| {
                referral_connector::mapping::same_value(v, record.get(k).unwrap_or(&Value::Null))
            });
            let state_ok = if two_way {
                agrees(crm, &document, record)
            } else {
                document["status"] == "Active" && document["substatus"] == "Accepted"
            };
            columns_ok && document["externalReferenceId"] == record[id_column] && state_ok
        });
        if consistent {
            correct += 1;
        } else if poisoned.contains_key(&rid) {
            in_poison += 1;
        } else if found.is_empty() {
            lost += 1;
            println!("LOST {rid}: no {table} and no poison entry");
        } else {
            stale += 1;
            println!("STALE {rid}: {table} or write-back differs and no poison entry");
            if let Some(record) = found.first() {
                let [notes, value, date] = crm.notes_value_date();
                println!(
                    "  referral {} {} {}; record state {:?} notes {} value {} date {}",
                    document["status"],
                    document["substatus"],
                    document["details"],
                    crm.standing(kind, record),
                    record[notes],
                    record[value],
                    record[date]
                );
            }
        }
    }
    // Shared opportunities: exactly one referral each, linked, and both sides agreeing.
    let (mut shared_ok, mut shared_missing, mut shared_duplicated, mut shared_disagree) =
        (0, 0, 0, 0);
    let outgoing: Vec<Value> = fakes
        .partner_center
        .referral_ids()
        .iter()
        .filter_map(|rid| fakes.partner_center.referral(rid))
        .filter(|r| r["direction"] == "Outgoing")
        .collect();
    for opportunity in &shared {
        let mine: Vec<&Value> = outgoing
            .iter()
            .filter(|r| r["externalReferenceId"].as_str() == Some(opportunity.as_str()))
            .collect();
        let record = crm.opportunity(&fakes, opportunity).unwrap();
        match mine.as_slice() {
            [] => {
                shared_missing += 1;
                println!("UNSHARED {opportunity}: no referral");
            }
            [one] => {
                let linked = one["id"]
                    .as_str()
                    .is_some_and(|rid| crm.key(&record) == rid.to_lowercase());
                if linked && agrees(crm, one, &record) {
                    shared_ok += 1;
                } else {
                    shared_disagree += 1;
                    println!(
                        "DISAGREE shared {opportunity}: referral {} vs opportunity {}",
                        one["details"], record
                    );
                }
            }
            many => {
                shared_duplicated += 1;
                println!("DUPLICATE shared {opportunity}: {} referrals", many.len());
            }
        }
    }
    let account_names = crm.account_names(&fakes);
    let mut accounts: HashMap<&str, usize> = HashMap::new();
    for name in &account_names {
        *accounts.entry(name).or_default() += 1;
    }
    let duplicate_accounts = accounts.values().filter(|n| **n > 1).count();
    let elapsed = started.elapsed();
    println!(
        "reliability run ({table}): {events} events for {referrals} referrals, fault rate {rate} on Partner Center, {} and the token endpoint, seed {seed}",
        crm.name()
    );
    println!(
        "  webhook callbacks accepted and queued     {}",
        queued.load(Ordering::Relaxed)
    );
    println!(
        "  sync invocations                          {}",
        host.invocations.load(Ordering::Relaxed)
    );
    println!(
        "  ...answered non-2xx (re-delivered)        {}",
        host.failed_invocations.load(Ordering::Relaxed)
    );
    println!(
        "  faults injected: Partner Center {}, {} {}, token endpoint {}",
        fakes.partner_center.injected_faults(),
        crm.name(),
        crm.fake(&fakes).injected_faults(),
        fakes.entra.injected_faults()
    );
    println!(
        "  poison entries                            {} ({} moved by the host, the rest by the handler with a reason)",
        poison.len(),
        host.host_poisoned.load(Ordering::Relaxed)
    );
    println!("  referrals with one correct {table} and write-back  {correct}");
    println!("  referrals in poison with a reason               {in_poison}");
    println!("  lost {lost}, stale {stale}, duplicated {duplicates}");
    if kind == RecordKind::Opportunity {
        println!(
            "  accounts {} for {} customers, duplicated {duplicate_accounts}",
            account_names.len(),
            CUSTOMERS.min(referrals) + shared.len()
        );
    }
    if two_way {
        println!(
            "  CRM side: {} CrmChanges runs ({} overlapping pairs, {} answered non-2xx), seller edits {}, closes {}",
            crm_side.runs.load(Ordering::Relaxed),
            crm_side.overlaps.load(Ordering::Relaxed),
            crm_side.failed_runs.load(Ordering::Relaxed),
            crm_side.edits.load(Ordering::Relaxed),
            crm_side.closes.load(Ordering::Relaxed)
        );
        println!(
            "  shared opportunities {}: one agreeing referral {shared_ok}, unshared {shared_missing}, duplicated {shared_duplicated}, disagreeing {shared_disagree}; {shared_under_faults} referrals created while the faults were on",
            shared.len()
        );
        println!(
            "  quiescence after {quiescence_rounds} rounds; writes in the round after it {writes_after_quiescence}"
        );
    }
    if crm == Crm::Salesforce {
        println!(
            "  Salesforce API calls counted               {}",
            fakes.salesforce.api_usage()
        );
    }
    println!("  elapsed {:.1} s", elapsed.as_secs_f64());
    let ok = lost == 0
        && stale == 0
        && duplicates == 0
        && duplicate_accounts == 0
        && correct + in_poison == referrals
        && shared_ok == shared.len()
        && writes_after_quiescence == 0;
    println!(
        "{}",
        if ok {
            if two_way {
                "PASS: nothing lost, nothing duplicated, both sides agree, nothing loops"
            } else {
                "PASS: nothing lost, nothing duplicated"
            }
        } else {
            "FAIL"
        }
    );
    ok
}

/// Whether a referral and its opportunity agree on what the CRM owns: the state, the deal
/// value and the close date.
fn agrees(crm: Crm, referral: &Value, record: &Value) -> bool {
    let state_ok = match crm.standing(RecordKind::Opportunity, record) {
        Standing::Open => referral["status"] == "Active",
        Standing::Won => referral["status"] == "Closed" && referral["substatus"] == "Won",
        Standing::Lost => referral["status"] == "Closed" && referral["substatus"] == "Lost",
        Standing::Other => false,
    };
    let [_, value, date] = crm.notes_value_date();
    let value_ok =
        referral_connector::mapping::same_value(&referral["details"]["dealValue"], &record[value]);
    let date_ok = referral["details"]["closingDateTime"]
        .as_str()
        .and_then(|d| d.get(..10))
        == record[date].as_str().and_then(|d| d.get(..10));
    state_ok && value_ok && date_ok
}

/// The CRM side of the two-way run: the poll's stored state and counters.
#[derive(Default)]
struct CrmSide {
    enabled: bool,
    state: Mutex<Option<String>>,
    stop: AtomicUsize,
    runs: AtomicUsize,
    overlaps: AtomicUsize,
    failed_runs: AtomicUsize,
    edits: AtomicUsize,
    closes: AtomicUsize,
}

/// One CrmChanges invocation as the host makes it: the stored state in, the new state out
/// (written only on success), poison entries to the host's poison list.
async fn invoke_poll(
    side: &CrmSide,
    host: &Host,
    client: &reqwest::Client,
    url: &str,
) -> Option<Value> {
    let state = side.state.lock().unwrap().clone();
    side.runs.fetch_add(1, Ordering::Relaxed);
    let (status, answer) = post(client, url, timer_envelope("CrmChanges", state.as_deref())).await;
    if !(200..300).contains(&status) {
        side.failed_runs.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if let Some(next) = answer["Outputs"]["watermarkOut"].as_str() {
        *side.state.lock().unwrap() = Some(next.to_owned());
    }
    match answer["Outputs"].get("poison") {
        Some(Value::Array(entries)) => host.poison.lock().unwrap().extend(entries.clone()),
        Some(entry) => host.poison.lock().unwrap().push(entry.clone()),
        None => {}
    }
    Some(answer)
}

/// The CrmChanges timer: a run every 500 ms; two times in three (the first included) two
/// overlapping runs (the host's singleton lease lost).
async fn poll_timer(side: &CrmSide, host: &Host, client: &reqwest::Client, url: &str) {
    let mut tick = 0usize;
    while side.enabled && side.stop.load(Ordering::SeqCst) == 0 {
        tick += 1;
        if !tick.is_multiple_of(3) {
            side.overlaps.fetch_add(1, Ordering::Relaxed);
            tokio::join!(
                invoke_poll(side, host, client, url),
                invoke_poll(side, host, client, url)
            );
        } else {
            invoke_poll(side, host, client, url).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sellers: every 40 ms one open linked opportunity gets a new value or close date, or (one
/// time in ten, for at most a tenth of them) is won or lost.
async fn seller(side: &CrmSide, crm: Crm, world: &SyncWorld, seed: u64) {
    let mut rng = Xorshift(seed.rotate_left(17) | 1);
    let id_field = crm.id_field(RecordKind::Opportunity);
    let [_, value_field, date_field] = crm.notes_value_date();
    while side.enabled && side.stop.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let opportunities = crm.records(world, RecordKind::Opportunity);
        let open: Vec<String> = opportunities
            .iter()
            .filter(|o| {
                crm.standing(RecordKind::Opportunity, o) == Standing::Open && !crm.key(o).is_empty()
            })
            .filter_map(|o| o[id_field].as_str().map(str::to_owned))
            .collect();
        if open.is_empty() {
            continue;
        }
        let id = &open[(rng.next() % open.len() as u64) as usize];
        let total = opportunities.len();
        match rng.next() % 10 {
            0 if side.closes.load(Ordering::Relaxed) < total / 10 => {
                side.closes.fetch_add(1, Ordering::Relaxed);
                crm.close(world, id, rng.next().is_multiple_of(2));
            }
            n if n % 2 == 0 => {
                side.edits.fetch_add(1, Ordering::Relaxed);
                let value = 1000 * (1 + rng.next() % 500);
                crm.edit(world, id, value_field, json!(value));
            }
            _ => {
                side.edits.fetch_add(1, Ordering::Relaxed);
                let day = 1 + rng.next() % 28;
                crm.edit(world, id, date_field, json!(format!("2027-05-{day:02}")));
            }
        }
    }
}

/// Where a CRM record stands, as the verifier reads it from the fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Open,
    Won,
    Lost,
    Other,
}

/// The CRM the run syncs with: its settings, its fake, the field names of a record and what
/// a seller does there. Everything else in the run is the same for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crm {
    Dataverse,
    Salesforce,
}

impl Crm {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "dataverse" => Some(Self::Dataverse),
            "salesforce" => Some(Self::Salesforce),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Dataverse => "Dataverse",
            Self::Salesforce => "Salesforce",
        }
    }

    fn mapping(self) -> &'static str {
        match self {
            Self::Dataverse => testkit::sync_world::DATAVERSE_NOTES_MAPPING,
            Self::Salesforce => testkit::sync_world::SALESFORCE_NOTES_MAPPING,
        }
    }

    fn default_mapping(self) -> fn(RecordKind) -> TableMapping {
        match self {
            Self::Dataverse => dataverse::default_mapping,
            Self::Salesforce => salesforce::default_mapping,
        }
    }

    /// The settings pointing the connector at this CRM's fake.
    fn vars(self, world: &SyncWorld) -> HashMap<String, String> {
        match self {
            Self::Dataverse => world.vars(),
            Self::Salesforce => world.salesforce_vars(),
        }
    }

    fn fake(self, world: &SyncWorld) -> &FakeServer {
        match self {
            Self::Dataverse => &world.dataverse,
            Self::Salesforce => &world.salesforce,
        }
    }

    /// Live records of `kind`.
    fn records(self, world: &SyncWorld, kind: RecordKind) -> Vec<Value> {
        match (self, kind) {
            (Self::Dataverse, RecordKind::Lead) => world.dataverse.leads(),
            (Self::Dataverse, RecordKind::Opportunity) => world.dataverse.opportunities(),
            (Self::Salesforce, kind) => world.salesforce.records(salesforce::object(kind)),
        }
    }

    fn opportunity(self, world: &SyncWorld, id: &str) -> Option<Value> {
        match self {
            Self::Dataverse => world.dataverse.opportunity_by_id(id),
            Self::Salesforce => world.salesforce.get(id),
        }
    }

    /// The field holding a record's own id.
    fn id_field(self, kind: RecordKind) -> &'static str {
        match (self, kind) {
            (Self::Dataverse, RecordKind::Lead) => "leadid",
            (Self::Dataverse, RecordKind::Opportunity) => "opportunityid",
            (Self::Salesforce, _) => "Id",
        }
    }

    /// The field holding the referral id.
    fn key_field(self) -> &'static str {
        match self {
            Self::Dataverse => KEY_COLUMN,
            Self::Salesforce => REFERRAL_ID_FIELD,
        }
    }

    /// The referral id a record holds, lower-case (empty when none).
    fn key(self, record: &Value) -> String {
        record[self.key_field()]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
    }

    /// The notes, deal value and close date fields of an opportunity.
    fn notes_value_date(self) -> [&'static str; 3] {
        match self {
            Self::Dataverse => ["description", "estimatedvalue", "estimatedclosedate"],
            Self::Salesforce => ["Description", "Amount", "CloseDate"],
        }
    }

    fn standing(self, kind: RecordKind, record: &Value) -> Standing {
        let flag = |name: &str| record[name].as_bool().unwrap_or(false);
        match (self, kind) {
            (Self::Dataverse, _) => match record["statecode"].as_i64() {
                Some(0) => Standing::Open,
                Some(1) => Standing::Won,
                Some(2) => Standing::Lost,
                _ => Standing::Other,
            },
            (Self::Salesforce, RecordKind::Lead) => {
                let closed = record["Status"]
                    .as_str()
                    .is_some_and(|s| s.to_lowercase().starts_with("closed"));
                if flag("IsConverted") || closed {
                    Standing::Other
                } else {
                    Standing::Open
                }
            }
            (Self::Salesforce, RecordKind::Opportunity) => {
                match (flag("IsClosed"), flag("IsWon")) {
                    (false, _) => Standing::Open,
                    (true, true) => Standing::Won,
                    (true, false) => Standing::Lost,
                }
            }
        }
    }

    /// Successful data writes the fake has seen.
    fn write_count(self, world: &SyncWorld) -> usize {
        match self {
            Self::Dataverse => world.dataverse.write_count(),
            Self::Salesforce => world.salesforce.write_count(),
        }
    }

    /// A seller's opportunity for a new `customer`, marked to sync with Partner Center.
    fn share(self, world: &SyncWorld, customer: &str) -> String {
        match self {
            Self::Dataverse => shared_opportunity(&world.dataverse, customer),
            Self::Salesforce => shared_salesforce_opportunity(&world.salesforce, customer),
        }
    }

    /// The names of all accounts, lower-case.
    fn account_names(self, world: &SyncWorld) -> Vec<String> {
        let (accounts, field) = match self {
            Self::Dataverse => (world.dataverse.accounts(), "name"),
            Self::Salesforce => (world.salesforce.records("Account"), "Name"),
        };
        accounts
            .iter()
            .map(|a| a[field].as_str().unwrap_or("").to_lowercase())
            .collect()
    }

    /// A seller wins or loses opportunity `id`.
    fn close(self, world: &SyncWorld, id: &str, won: bool) {
        match (self, won) {
            (Self::Dataverse, true) => world.dataverse.set_opportunity_state(id, 1, 3),
            (Self::Dataverse, false) => world.dataverse.set_opportunity_state(id, 2, 4),
            (Self::Salesforce, true) => world.salesforce.set_stage(id, "Closed Won"),
            (Self::Salesforce, false) => world.salesforce.set_stage(id, "Closed Lost"),
        }
    }

    /// A seller sets `field` of opportunity `id`.
    fn edit(self, world: &SyncWorld, id: &str, field: &str, value: Value) {
        match self {
            Self::Dataverse => world.dataverse.set_opportunity_column(id, field, value),
            Self::Salesforce => world.salesforce.set_field(id, field, value),
        }
    }
}
