//! Reliability run (not a unit test): 10,000 signed referral events with duplicates and
//! reorderings go through ReferralWebhook, an in-memory queue that behaves like the host's
//! (re-delivery with a rising dequeue count, poison after maxDequeueCount), and ReferralSync,
//! while the Partner Center, Dataverse and token fakes inject 429 + Retry-After, 503,
//! timeouts and connection resets on 20 % of requests. Loopback only, bounded in count and
//! time. Afterwards every referral must have exactly one correct lead and a consistent
//! write-back, or sit in the poison queue with its reason.
//!
//! With `--target opportunity` the referrals become Dynamics 365 opportunities instead (notes
//! flowing to `description` on every sync, 50 customers shared between them): then every
//! referral must end with exactly one correct opportunity and every customer with one account.
//!
//! `scripts/reliability.sh` (= `cargo run --release --example reliability`); exits non-zero on
//! any loss or duplicate. Arguments: `[--target lead|opportunity] [events] [fault-rate] [seed]`.

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
    crm::{RecordKind, dataverse},
    mapping::Mappings,
    startup::Application,
};
use serde_json::{Value, json};
use testkit::{
    cert_world::CertWorld,
    fakes::RandomFaults,
    host::{callback_body, http_envelope},
    sync_world::{KEY_COLUMN, SyncWorld, queue_envelope, referral},
};

const MAX_DEQUEUE_COUNT: u32 = 5;
/// Customers the opportunity run spreads its referrals over (so first syncs race for accounts).
const CUSTOMERS: usize = 50;
/// The mapping of the run: notes follow the referral on every sync in both tables.
const MAPPING: &str = r#"{"tables": {
    "lead": {"columns": {"description": {"from": "details.notes"}}},
    "opportunity": {"columns": {"description": {"from": "details.notes"}}}
}}"#;
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
        tokio::time::timeout(DEADLINE, run(events, rate, seed, kind))
            .await
            .unwrap_or_else(|_| {
                println!("FAIL: the run did not finish within {DEADLINE:?}");
                false
            })
    });
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(events: usize, rate: f64, seed: u64, kind: RecordKind) -> bool {
    let started = Instant::now();
    let fakes = SyncWorld::start().await;
    let certs = CertWorld::start().await;
    let mapping_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(mapping_file.path(), MAPPING).expect("mapping file");
    let mut vars = fakes.vars();
    vars.extend(certs.vars());
    vars.insert("SYNC_TARGET".into(), kind.name().into());
    vars.insert(
        "REFERRAL_MAPPING_FILE".into(),
        mapping_file.path().display().to_string(),
    );
    vars.insert("OUTBOUND_TIMEOUT_SECONDS".into(), "1".into());
    vars.insert("SYNC_RETRY_BUDGET_SECONDS".into(), "3".into());
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
        lost_answers: false,
    };
    fakes.partner_center.set_random_faults(Some(faults(1)));
    fakes.dataverse.set_random_faults(Some(faults(2)));
    fakes.entra.set_random_faults(Some(faults(3)));

    let host = Arc::new(Host::default());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
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
    fakes.partner_center.set_random_faults(None);
    fakes.dataverse.set_random_faults(None);
    fakes.entra.set_random_faults(None);

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
    let (records, id_column) = match kind {
        RecordKind::Lead => (fakes.dataverse.leads(), "leadid"),
        RecordKind::Opportunity => (fakes.dataverse.opportunities(), "opportunityid"),
    };
    let mut per_key: HashMap<String, Vec<Value>> = HashMap::new();
    for record in records {
        per_key
            .entry(record[KEY_COLUMN].as_str().unwrap_or("").to_owned())
            .or_default()
            .push(record);
    }
    let mappings = Mappings::from_json_text(MAPPING, dataverse::default_mapping).expect("mapping");
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
            let mut wanted = mapping.record_columns(&r, false).unwrap();
            wanted.extend(mapping.partner_center_columns(&r, &policy));
            let columns_ok = wanted.iter().all(|(k, v)| {
                referral_connector::mapping::same_value(v, record.get(k).unwrap_or(&Value::Null))
            });
            columns_ok
                && document["externalReferenceId"] == record[id_column]
                && document["status"] == "Active"
                && document["substatus"] == "Accepted"
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
        }
    }
    let mut accounts: HashMap<String, usize> = HashMap::new();
    for account in fakes.dataverse.accounts() {
        let name = account["name"].as_str().unwrap_or("").to_lowercase();
        *accounts.entry(name).or_default() += 1;
    }
    let duplicate_accounts = accounts.values().filter(|n| **n > 1).count();
    let elapsed = started.elapsed();
    println!(
        "reliability run ({table}): {events} events for {referrals} referrals, fault rate {rate} on Partner Center, Dataverse and the token endpoint, seed {seed}"
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
        "  faults injected: Partner Center {}, Dataverse {}, token endpoint {}",
        fakes.partner_center.injected_faults(),
        fakes.dataverse.injected_faults(),
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
            fakes.dataverse.accounts().len(),
            CUSTOMERS.min(referrals)
        );
    }
    println!("  elapsed {:.1} s", elapsed.as_secs_f64());
    let ok = lost == 0
        && stale == 0
        && duplicates == 0
        && duplicate_accounts == 0
        && correct + in_poison == referrals;
    println!(
        "{}",
        if ok {
            "PASS: nothing lost, nothing duplicated"
        } else {
            "FAIL"
        }
    );
    ok
}
