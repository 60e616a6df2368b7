//! The handler as a process: time from start to the first successful probe on `/`, and
//! resident memory idle and under load, each printed next to its reference measured in the
//! same run (spawning `/bin/true`; the RSS of `sleep`). `cargo bench --bench process`.
//! Targets: start < 20 ms, idle RSS < 30 MB, loaded RSS < 64 MB.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use testkit::{
    cert_world::CertWorld,
    host::{REFERRAL_ID, callback_body, http_envelope},
    sync_world::{SyncWorld, queue_envelope, referral, sync_message},
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The binary under test: `HANDLER_BIN` (e.g. the static musl build), else this build's.
fn binary() -> String {
    std::env::var("HANDLER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_referral-connector").to_owned())
}

fn spawn(port: u16, envs: &[(String, String)]) -> Child {
    Command::new(binary())
        .env_clear()
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .envs(envs.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Start → first answer on `/`, probing every 1 ms like an impatient host.
fn startup(envs: &[(String, String)]) -> Duration {
    let port = testkit::free_port();
    let started = Instant::now();
    let mut child = spawn(port, envs);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = [0u8; 12];
            if std::io::Read::read_exact(&mut stream, &mut buf).is_ok()
                && buf.starts_with(b"HTTP/1.1 200")
            {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    elapsed
}

fn webhook_envelope(world: &CertWorld) -> Vec<u8> {
    let body = callback_body("referral-updated", REFERRAL_ID);
    let headers = world.signed_headers(body.as_bytes(), &world.pki.leaf, "leaf.cer");
    http_envelope(Some(&body), &headers)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (fakes, certs) =
        runtime.block_on(async { (SyncWorld::start().await, CertWorld::start().await) });
    let bundle = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bundle.path(),
        [fakes.root_pem(), certs.pki.root.cert_pem()].concat(),
    )
    .unwrap();
    let mut envs: Vec<(String, String)> = fakes.vars().into_iter().chain(certs.vars()).collect();
    envs.push(("SSL_CERT_FILE".into(), bundle.path().display().to_string()));

    let starts: Vec<Duration> = (0..21).map(|_| startup(&envs)).collect();
    let reference: Vec<Duration> = (0..21)
        .map(|_| {
            let t = Instant::now();
            Command::new("/bin/true").status().unwrap();
            t.elapsed()
        })
        .collect();

    let port = testkit::free_port();
    let mut child = spawn(port, &envs);
    std::thread::sleep(Duration::from_millis(1500));
    let idle = rss_kib(child.id(), "VmRSS:");
    let mut sleeper = Command::new("sleep").arg("5").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let sleep_rss = rss_kib(sleeper.id(), "VmRSS:");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    let address = format!("http://127.0.0.1:{port}");
    let (webhooks, syncs) = runtime.block_on(async {
        for i in 0..500 {
            fakes
                .partner_center
                .insert_referral(referral(&format!("00000000-0000-4000-8000-{i:012}")));
        }
        let client = reqwest::Client::new();
        let envelope = Arc::new(webhook_envelope(&certs));
        let done = Arc::new(AtomicBool::new(false));
        let (webhooks, syncs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (client, address, envelope, done, webhooks) = (
                client.clone(),
                address.clone(),
                envelope.clone(),
                done.clone(),
                webhooks.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    let r = client
                        .post(format!("{address}/ReferralWebhook"))
                        .body(envelope.to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await;
                    webhooks.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for w in 0..16u64 {
            let (client, address, done, syncs) =
                (client.clone(), address.clone(), done.clone(), syncs.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while !done.load(Ordering::Relaxed) {
                    let id = format!("00000000-0000-4000-8000-{:012}", i % 500);
                    let r = client
                        .post(format!("{address}/ReferralSync"))
                        .body(queue_envelope(&sync_message(&id), 1))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await;
                    syncs.fetch_add(1, Ordering::Relaxed);
                    i += 16;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        done.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        (
            webhooks.load(Ordering::Relaxed),
            syncs.load(Ordering::Relaxed),
        )
    });
    let peak = rss_kib(child.id(), "VmHWM:");
    child.kill().unwrap();
    child.wait().unwrap();

    println!("process benchmark ({})", binary());
    println!(
        "  start to first successful probe on /: median {:?} (min {:?})  target < 20 ms",
        median(starts.clone()),
        starts.iter().min().unwrap()
    );
    println!(
        "  reference: spawn and wait for /bin/true: median {:?}",
        median(reference)
    );
    println!(
        "  resident memory idle (trust store loaded): {:.1} MB  target < 30 MB; reference `sleep`: {:.1} MB",
        idle as f64 / 1024.0,
        sleep_rss as f64 / 1024.0
    );
    println!(
        "  peak resident memory under 5 s of load ({webhooks} webhook + {syncs} sync invocations, 48 connections): {:.1} MB  target < 64 MB",
        peak as f64 / 1024.0
    );
}
