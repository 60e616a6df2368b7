//! HTTP requests per sync (create, update, no-op) and end-to-end syncs per second through the
//! ReferralSync route against the local fakes, for each CRM (Dataverse, Salesforce) and table,
//! printed next to the fakes' raw round-trip rate measured in the same run.
//! `cargo bench --bench sync`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use referral_connector::{config::Settings, startup::Application};
use serde_json::json;
use testkit::{
    host::timer_envelope,
    sync_world::{SyncWorld, queue_envelope, referral, sync_message},
};

const N: usize = 2000;
const CONCURRENCY: usize = 16;

fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

async fn invoke(client: &reqwest::Client, address: &str, referral_id: &str) {
    let response = client
        .post(format!("{address}/ReferralSync"))
        .body(queue_envelope(&sync_message(referral_id), 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["Outputs"].get("poison").is_none(), "{body}");
}

/// Which CRM a run measures.
#[derive(Clone, Copy, PartialEq)]
enum Crm {
    Dataverse,
    Salesforce,
}

impl Crm {
    fn name(self) -> &'static str {
        match self {
            Self::Dataverse => "Dataverse",
            Self::Salesforce => "Salesforce",
        }
    }

    /// Requests to the CRM fake, its token endpoint left out.
    fn requests(self, world: &SyncWorld) -> usize {
        match self {
            Self::Dataverse => world.dataverse.requests().len(),
            Self::Salesforce => world
                .salesforce
                .requests()
                .iter()
                .filter(|r| !r.path.starts_with("/services/oauth2/"))
                .count(),
        }
    }

    /// Token requests for Partner Center and the CRM.
    fn tokens(self, world: &SyncWorld) -> usize {
        world.entra.requests().len()
            + match self {
                Self::Dataverse => 0,
                Self::Salesforce => world.salesforce.tokens_issued(),
            }
    }

    fn records(self, world: &SyncWorld, target: &str) -> usize {
        match (self, target) {
            (Self::Dataverse, "lead") => world.dataverse.leads().len(),
            (Self::Dataverse, _) => world.dataverse.opportunities().len(),
            (Self::Salesforce, "lead") => world.salesforce.records("Lead").len(),
            (Self::Salesforce, _) => world.salesforce.records("Opportunity").len(),
        }
    }

    /// One read of a record by its referral key, straight to the fake.
    async fn raw_read(
        self,
        client: &reqwest::Client,
        base: &str,
        token: &str,
        target: &str,
        key: &str,
    ) {
        let url = match self {
            Self::Dataverse => {
                let set = if target == "lead" {
                    "leads"
                } else {
                    "opportunities"
                };
                format!(
                    "{base}/api/data/v9.2/{set}(new_partnercenterreferralid='{key}')?$select=statecode"
                )
            }
            Self::Salesforce => {
                let object = if target == "lead" {
                    "Lead"
                } else {
                    "Opportunity"
                };
                format!(
                    "{base}/services/data/v67.0/sobjects/{object}/Partner_Center_Referral_Id__c/{key}?fields=Id"
                )
            }
        };
        let r = client.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
}

fn requests(world: &SyncWorld, crm: Crm) -> usize {
    world.partner_center.requests().len() + crm.requests(world)
}

fn clear(world: &SyncWorld) {
    world.partner_center.clear_requests();
    world.dataverse.clear_requests();
    world.salesforce.clear_requests();
}

async fn rate<F, Fut>(count: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    stream::iter(0..count)
        .for_each_concurrent(CONCURRENCY, f)
        .await;
    count as f64 / start.elapsed().as_secs_f64()
}

/// Requests per sync and syncs per second for one `SYNC_TARGET`.
struct Figures {
    first_create: usize,
    create: usize,
    create_new_account: usize,
    update: usize,
    noop: usize,
    tokens_first: usize,
    tokens_later: usize,
    creates: f64,
    noops: f64,
    raw: f64,
    raw_crm: f64,
    idle_poll: (usize, usize),
}

async fn measure(crm: Crm, target: &str) -> Figures {
    let world = SyncWorld::start().await;
    let mut vars = match crm {
        Crm::Dataverse => world.vars(),
        Crm::Salesforce => world.salesforce_vars(),
    };
    vars.insert("SYNC_RETRY_BUDGET_SECONDS".into(), "5".into());
    vars.insert("SYNC_TARGET".into(), target.into());
    let mut settings = Settings::from_vars(&vars).unwrap();
    settings.http.extra_root_pems = vec![world.root_pem()];
    settings.sync.retry_min_delay = Duration::from_millis(10);
    let app = Application::build(&settings).await.unwrap();
    let address = Arc::new(format!("http://127.0.0.1:{}", app.port()));
    tokio::spawn(app.run_until(std::future::pending()));
    let client = reqwest::Client::new();

    // The first sync of the process: tokens fetched (counted apart), the currency looked up
    // and the account created.
    world.partner_center.insert_referral(referral(&id(999_999)));
    clear(&world);
    invoke(&client, &address, &id(999_999)).await;
    let first_create = requests(&world, crm);
    let tokens_first = crm.tokens(&world);

    let a = id(0);
    world.partner_center.insert_referral(referral(&a));
    clear(&world);
    invoke(&client, &address, &a).await;
    let create = requests(&world, crm);
    let tokens_later = crm.tokens(&world) - tokens_first;

    let b = id(999_998);
    let mut other = referral(&b);
    other["customerProfile"]["name"] = json!("Northwind Traders");
    world.partner_center.insert_referral(other);
    clear(&world);
    invoke(&client, &address, &b).await;
    let create_new_account = requests(&world, crm);

    world
        .partner_center
        .set_referral_field(&a, "/details/notes", json!("updated notes"));
    clear(&world);
    invoke(&client, &address, &a).await;
    let update = requests(&world, crm);

    clear(&world);
    invoke(&client, &address, &a).await;
    let noop = requests(&world, crm);

    for i in 1..=N {
        world.partner_center.insert_referral(referral(&id(i)));
    }
    let creates = rate(N, |i| {
        let (client, address) = (client.clone(), address.clone());
        async move { invoke(&client, &address, &id(i + 1)).await }
    })
    .await;
    let noops = rate(N, |i| {
        let (client, address) = (client.clone(), address.clone());
        async move { invoke(&client, &address, &id(i + 1)).await }
    })
    .await;
    assert_eq!(
        crm.records(&world, target),
        N + 3,
        "exactly one {target} per referral"
    );

    let pc = Arc::new(world.partner_center.base_url());
    let raw = rate(N * 2, |i| {
        let (client, pc) = (client.clone(), pc.clone());
        async move {
            let r = client
                .get(format!("{pc}/v1.0/engagements/referrals/{}", id(i % N + 1)))
                .bearer_auth("bench")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
        }
    })
    .await;
    // An idle CrmChanges run: nothing changed since the watermark.
    let later = (time::OffsetDateTime::now_utc() + time::Duration::minutes(10))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let state = json!({"since": later}).to_string();
    clear(&world);
    let response = client
        .post(format!("{address}/CrmChanges"))
        .body(timer_envelope("CrmChanges", Some(&state)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let idle_poll = (crm.requests(&world), world.partner_center.requests().len());

    let (base, token) = match crm {
        Crm::Dataverse => (world.dataverse.base_url(), "bench".to_owned()),
        Crm::Salesforce => {
            let answer: serde_json::Value = client
                .post(format!(
                    "{}/services/oauth2/token",
                    world.salesforce.base_url()
                ))
                .form(&[
                    ("grant_type", "client_credentials".to_owned()),
                    ("client_id", world.salesforce.client_id()),
                    ("client_secret", world.salesforce.client_secret()),
                ])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let token = answer["access_token"].as_str().unwrap().to_owned();
            (world.salesforce.base_url(), token)
        }
    };
    let (base, token) = (Arc::new(base), Arc::new(token));
    let raw_crm = rate(N * 2, |i| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move {
            crm.raw_read(&client, &base, &token, target, &id(i % N + 1))
                .await
        }
    })
    .await;
    Figures {
        idle_poll,
        raw_crm,
        first_create,
        create,
        create_new_account,
        update,
        noop,
        tokens_first,
        tokens_later,
        creates,
        noops,
        raw,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("sync benchmark ({} cores, {N} referrals per table, {CONCURRENCY} concurrent invocations)", std::thread::available_parallelism().map_or(1, |n| n.get()));
        let runs = [
            (Crm::Dataverse, "lead", 4),
            (Crm::Dataverse, "opportunity", 7),
            (Crm::Salesforce, "lead", 5),
            (Crm::Salesforce, "opportunity", 7),
        ];
        for (crm, target, create_target) in runs {
            let f = measure(crm, target).await;
            let name = crm.name();
            println!("CRM={} SYNC_TARGET={target}", name.to_ascii_lowercase());
            println!("  requests per sync with tokens cached (targets: no-op <= 2, create <= {create_target})");
            println!("    create, first of the process      {}", f.first_create);
            println!("    create                            {}", f.create);
            println!("    create, another customer          {}", f.create_new_account);
            println!("    referral notes changed            {}", f.update);
            println!("    no-op                             {}", f.noop);
            println!("  token requests: {} on the first sync, {} on later ones", f.tokens_first, f.tokens_later);
            println!("  idle CrmChanges run: {} {name}, {} Partner Center requests (one query per polled table; none to Partner Center)", f.idle_poll.0, f.idle_poll.1);
            println!("  reference: raw GET round trips to the Partner Center fake {:>8.0}/s  (=> at most {:.0} creates/s, {:.0} no-ops/s)", f.raw, f.raw / f.create as f64, f.raw / f.noop as f64);
            let noop_bound = 1.0 / (1.0 / f.raw + 1.0 / f.raw_crm);
            println!("  reference: raw GET by key to the {name} fake ({} rows) {:>8.0}/s  (one of each => at most {noop_bound:.0} no-ops/s)", N + 3, f.raw_crm);
            println!("  end-to-end syncs through /ReferralSync, create {:>8.0}/s  = {:.2} of that bound", f.creates, f.creates / (f.raw / f.create as f64));
            println!("  end-to-end syncs through /ReferralSync, no-op  {:>8.0}/s  = {:.2} of the Partner Center bound, {:.2} of the two-fake bound", f.noops, f.noops / (f.raw / f.noop as f64), f.noops / noop_bound);
        }
    });
}
