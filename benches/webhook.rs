//! Webhook throughput with a cached certificate, printed next to this machine's raw
//! RSA-2048 verify rate measured in the same run. `cargo bench --bench webhook`.
//! Target: the in-process handler rate is at least half the all-cores raw verify rate.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use openssl::{hash::MessageDigest, rsa::Padding, sign::Verifier};
use referral_connector::{
    config::Settings, routes::webhook, startup::Application, webhook_auth::CertSource,
};
use testkit::{
    cert_world::CertWorld,
    host::{REFERRAL_ID, callback_body, http_envelope},
    pki,
};

const RUN: Duration = Duration::from_secs(3);

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The signed callback body.
fn body() -> String {
    callback_body("referral-updated", REFERRAL_ID)
}

/// Raw verifies per second on `threads` threads.
fn raw_verify_rate(threads: usize) -> f64 {
    let body = body();
    let key = pki::key(pki::KeySlot::Leaf);
    let signature = pki::sign(&key, body.as_bytes());
    let public =
        openssl::pkey::PKey::public_key_from_der(&key.public_key_to_der().unwrap()).unwrap();
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut n = 0;
                while start.elapsed() < RUN {
                    let mut v = Verifier::new(MessageDigest::sha256(), &public).unwrap();
                    v.set_rsa_padding(Padding::PKCS1).unwrap();
                    assert!(v.verify_oneshot(&signature, body.as_bytes()).unwrap());
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn envelope(world: &CertWorld) -> Vec<u8> {
    let body = body();
    let headers = world.signed_headers(body.as_bytes(), &world.pki.leaf, "leaf.cer");
    http_envelope(Some(&body), &headers)
}

fn settings(world: &CertWorld) -> Settings {
    let mut s = Settings::from_vars(&world.vars()).unwrap();
    s.http.extra_root_pems = vec![world.pki.root.cert_pem()];
    s
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = cores();
    let one = raw_verify_rate(1);
    let all = raw_verify_rate(n);
    let (in_process, over_http) = runtime.block_on(async {
        let world = CertWorld::start().await;
        let settings = settings(&world);
        let envelope = Arc::new(envelope(&world));

        let certs = Arc::new(CertSource::new(&settings.webhook, &settings.http).unwrap());
        let first = webhook::process(&certs, &envelope, time::OffsetDateTime::now_utc()).await;
        assert!(
            matches!(first, Ok(webhook::Accepted::Queued(_))),
            "{first:?}"
        );
        let done = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let workers: Vec<_> = (0..n)
            .map(|_| {
                let (certs, envelope, done, count) =
                    (certs.clone(), envelope.clone(), done.clone(), count.clone());
                tokio::spawn(async move {
                    while !done.load(Ordering::Relaxed) {
                        let r =
                            webhook::process(&certs, &envelope, time::OffsetDateTime::now_utc())
                                .await;
                        assert!(r.is_ok());
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(RUN).await;
        done.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
        let in_process = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();

        let app = Application::build(&settings).await.unwrap();
        let address = format!("http://127.0.0.1:{}/ReferralWebhook", app.port());
        tokio::spawn(app.run_until(std::future::pending()));
        let client = reqwest::Client::new();
        let warm = client
            .post(&address)
            .body(envelope.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(warm.status(), 200);
        let done = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let clients: Vec<_> = (0..32)
            .map(|_| {
                let (client, address, envelope, done, count) = (
                    client.clone(),
                    address.clone(),
                    envelope.clone(),
                    done.clone(),
                    count.clone(),
                );
                tokio::spawn(async move {
                    while !done.load(Ordering::Relaxed) {
                        let r = client
                            .post(&address)
                            .body(envelope.to_vec())
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 200);
                        let _ = r.bytes().await.unwrap();
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(RUN).await;
        done.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        (
            in_process,
            count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        )
    });
    println!("webhook benchmark ({n} cores, {RUN:?} per measurement, certificate cached)");
    println!("  reference: raw RSA-2048 verify, 1 core      {one:>10.0}/s");
    println!("  reference: raw RSA-2048 verify, {n} cores     {all:>10.0}/s");
    println!(
        "  webhook handler in-process, {n} workers      {in_process:>10.0}/s  = {:.2} of the all-cores verify rate (target >= 0.50)",
        in_process / all
    );
    println!(
        "  webhook over HTTP on loopback, 32 clients  {over_http:>10.0}/s  = {:.2} (load generator shares the cores)",
        over_http / all
    );
}
