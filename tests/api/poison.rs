//! `poison list | replay` against a real Azurite: both entry shapes, both encodings, the
//! message each replay puts into `referral-sync`, and exactly-once under a kill (the real
//! binary, stopped by its test hook at chosen points and run again).

use std::collections::HashMap;

use base64::Engine;
use referral_connector::{
    cli::{self, poison::EXIT_HOOK},
    config::Settings,
    storage::{POISON_QUEUE, SYNC_QUEUE},
};
use serde_json::{Value, json};
use testkit::azurite::{Azurite, QueueClient};

/// A fresh Azurite with both queues created.
pub struct Storage {
    pub azurite: Azurite,
    pub poison: QueueClient,
    pub sync: QueueClient,
}

impl Storage {
    pub async fn start() -> Self {
        let azurite = Azurite::start();
        let poison = azurite.queue(POISON_QUEUE);
        let sync = azurite.queue(SYNC_QUEUE);
        poison.create().await.unwrap();
        sync.create().await.unwrap();
        Self {
            azurite,
            poison,
            sync,
        }
    }

    /// `AzureWebJobsStorage` with Azurite's random ports.
    pub fn vars(&self) -> HashMap<String, String> {
        HashMap::from([(
            "AzureWebJobsStorage".to_owned(),
            self.azurite.connection_string(),
        )])
    }

    pub fn settings(&self) -> Settings {
        Settings::from_vars(&self.vars()).unwrap()
    }
}

pub fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn record(i: usize) -> String {
    format!("0e7c1f5e-0000-4000-8000-{i:012}")
}

/// Entry `i`: even ones are ReferralSync's, odd ones CrmChanges'.
pub fn entry(i: usize) -> String {
    if i.is_multiple_of(2) {
        json!({"referralId": id(i), "eventName": "referral-created", "receivedAt": "2026-12-01T10:00:00Z",
               "error": format!("mapping: column estimatedamount: `n/a` is not a number (referral {})", id(i)),
               "failedAt": "2026-12-02T10:00:00Z"})
    } else {
        json!({"referralId": id(i), "table": "opportunity", "recordId": record(i),
               "error": "gave up after 5 runs of CrmChanges: Partner Center: HTTP 400",
               "failedAt": "2026-12-02T10:01:00Z"})
    }
    .to_string()
}

/// What replaying entry `i` must put into `referral-sync`.
fn expected(i: usize) -> Value {
    if i.is_multiple_of(2) {
        json!({"referralId": id(i), "eventName": "referral-created", "receivedAt": "2026-12-01T10:00:00Z"})
    } else {
        json!({"table": "opportunity", "recordId": record(i), "referralId": id(i)})
    }
}

/// Poisons entries `0..n`, base64 as the host's queue output writes them, every fifth plain.
async fn poison_entries(storage: &Storage, n: usize) {
    for i in 0..n {
        if i % 5 == 4 {
            storage.poison.put(&entry(i)).await.unwrap();
        } else {
            storage.poison.put_base64(&entry(i)).await.unwrap();
        }
    }
}

/// Every message in `referral-sync`, taken, base64-decoded (the trigger's encoding) and parsed.
async fn drain(queue: &QueueClient) -> Vec<Value> {
    let mut messages = Vec::new();
    loop {
        let batch = queue.get(32, 600).await.unwrap();
        if batch.is_empty() {
            return messages;
        }
        for m in batch {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&m.text)
                .unwrap_or_else(|_| panic!("not base64 as the queue trigger expects: {}", m.text));
            messages.push(serde_json::from_slice(&bytes).unwrap());
        }
    }
}

/// How many times each entry of `0..n` arrived in `referral-sync`; fails on a message that
/// is not exactly one of them.
fn tally(messages: &[Value], n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for message in messages {
        let i = (0..n)
            .find(|i| expected(*i) == *message)
            .unwrap_or_else(|| panic!("unexpected message {message}"));
        counts[i] += 1;
    }
    counts
}

/// Runs the real binary with only these settings; returns the exit code and stdout.
pub async fn run(args: &[&str], vars: &HashMap<String, String>) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_referral-connector"))
        .args(args)
        .env_clear()
        .envs(vars)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code(), format!("{stdout}{stderr}"))
}

/// Runs `replay --all` until it reports nothing left (an entry taken by a killed run comes
/// back after the visibility timeout); bounded, so a replay that never finishes fails.
async fn replay_until_done(vars: &HashMap<String, String>) -> String {
    let mut said = String::new();
    for _ in 0..120 {
        let (code, out) = run(
            &["poison", "replay", "--all", "--visibility-timeout", "2"],
            vars,
        )
        .await;
        said.push_str(&out);
        match code {
            Some(0) => return said,
            Some(1) if out.contains("are invisible") => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            other => panic!("replay failed ({other:?}): {out}"),
        }
    }
    panic!("replay never finished: {said}");
}

#[tokio::test]
async fn poison_list_shows_each_shape_in_either_encoding_and_changes_nothing() {
    let storage = Storage::start().await;
    storage.poison.put_base64(&entry(0)).await.unwrap();
    storage.poison.put(&entry(1)).await.unwrap();
    storage
        .poison
        .put_base64(&json!({"originalMessage": "not a referral", "error": "malformed message: expected {\"referralId\": \"<guid>\"}", "failedAt": "2026-12-02T11:00:00Z"}).to_string())
        .await
        .unwrap();
    storage
        .poison
        .put_base64(&json!({"referralId": id(7), "eventName": "referral-updated"}).to_string())
        .await
        .unwrap();
    let before = storage.poison.peek(32).await.unwrap();

    let mut out = Vec::new();
    assert!(
        cli::poison::list(&storage.settings(), &mut out)
            .await
            .unwrap()
    );
    let printed = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = printed.lines().collect();
    assert!(
        lines[0].starts_with("MESSAGE ID")
            && lines[0].contains("WHAT")
            && lines[0].contains("FAILED AT")
            && lines[0].contains("DEQUEUED")
            && lines[0].ends_with("REASON"),
        "{printed}"
    );
    let row = |i: usize| {
        lines
            .iter()
            .find(|l| l.starts_with(before[i].id.as_str()))
            .unwrap_or_else(|| panic!("row {i} in {printed}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        row(0).contains(&format!(
            "referral {} 2026-12-02T10:00:00Z 0 mapping: column estimatedamount",
            id(0)
        )),
        "{printed}"
    );
    assert!(
        row(1).contains(&format!(
            "opportunity {} (referral {}) 2026-12-02T10:01:00Z 0 gave up after 5 runs of CrmChanges: Partner Center: HTTP 400",
            record(1),
            id(1)
        )),
        "plain text is read too: {printed}"
    );
    assert!(
        row(2).contains("message not a referral 2026-12-02T11:00:00Z 0 malformed message"),
        "{printed}"
    );
    assert!(
        row(3).contains(&format!(
            "referral {} - 0 no reason recorded (moved by the Functions host",
            id(7)
        )),
        "{printed}"
    );
    assert!(
        printed.contains("4 entries in referral-sync-poison"),
        "{printed}"
    );

    let after = storage.poison.peek(32).await.unwrap();
    assert_eq!(after, before, "listing takes nothing and changes nothing");
}

#[tokio::test]
async fn replay_of_50_entries_requeues_each_exactly_once_in_the_trigger_encoding() {
    let storage = Storage::start().await;
    poison_entries(&storage, 50).await;
    let (code, out) = run(&["poison", "replay", "--all"], &storage.vars()).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("50 re-queued to referral-sync, 0 re-queued by an earlier run"),
        "{out}"
    );
    assert_eq!(storage.poison.count().await.unwrap(), 0);
    let messages = drain(&storage.sync).await;
    assert_eq!(tally(&messages, 50), vec![1; 50]);
    for message in &messages {
        let text = message.to_string();
        assert!(
            !text.contains("error") && !text.contains("failedAt") && !text.contains("replayed"),
            "only the message to sync is re-queued: {text}"
        );
        if message.get("table").is_none() {
            referral_connector::sync::SyncMessage::parse(&text)
                .unwrap_or_else(|e| panic!("ReferralSync reads {text}: {e}"));
        }
    }

    let (code, out) = run(&["poison", "replay", "--all"], &storage.vars()).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 re-queued"), "an empty queue: {out}");
    assert_eq!(
        storage.sync.count().await.unwrap(),
        50,
        "nothing more was put (the 50 are still there, taken by drain)"
    );
}

#[tokio::test]
async fn replay_killed_after_marking_and_run_again_requeues_each_exactly_once() {
    // The hook stops the process after the 25th entry was re-queued and marked but before it
    // left the poison queue: the point where a replay without the marker would re-queue it
    // again on the next run.
    let storage = Storage::start().await;
    poison_entries(&storage, 50).await;
    let mut killed = storage.vars();
    killed.insert(EXIT_HOOK.into(), "25:marked".into());
    let (code, out) = run(&["poison", "replay", "--all"], &killed).await;
    assert_eq!(code, Some(137), "stopped by the hook: {out}");
    assert_eq!(storage.sync.count().await.unwrap(), 25);
    assert_eq!(
        storage.poison.count().await.unwrap(),
        26,
        "24 removed, the 25th still there, marked"
    );

    let (code, out) = run(&["poison", "replay", "--all"], &storage.vars()).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "25 re-queued to referral-sync, 1 re-queued by an earlier run and now removed"
        ),
        "{out}"
    );
    assert_eq!(storage.poison.count().await.unwrap(), 0);
    assert_eq!(tally(&drain(&storage.sync).await, 50), vec![1; 50]);
}

#[tokio::test]
async fn replay_killed_after_taking_an_entry_requeues_it_once_when_it_reappears() {
    let storage = Storage::start().await;
    poison_entries(&storage, 50).await;
    let mut killed = storage.vars();
    killed.insert(EXIT_HOOK.into(), "10:taken".into());
    let (code, out) = run(
        &["poison", "replay", "--all", "--visibility-timeout", "2"],
        &killed,
    )
    .await;
    assert_eq!(code, Some(137), "{out}");
    assert_eq!(storage.sync.count().await.unwrap(), 9);

    let said = replay_until_done(&storage.vars()).await;
    assert_eq!(storage.poison.count().await.unwrap(), 0, "{said}");
    assert_eq!(
        tally(&drain(&storage.sync).await, 50),
        vec![1; 50],
        "{said}"
    );
}

#[tokio::test]
async fn replay_killed_between_put_and_mark_requeues_that_entry_twice_and_loses_none() {
    // The one window left (module comment of cli::poison): the put is stored, the marker is
    // not. The entry comes back unmarked after its visibility timeout and is re-queued again.
    let storage = Storage::start().await;
    poison_entries(&storage, 50).await;
    let mut killed = storage.vars();
    killed.insert(EXIT_HOOK.into(), "10:requeued".into());
    let (code, out) = run(
        &["poison", "replay", "--all", "--visibility-timeout", "2"],
        &killed,
    )
    .await;
    assert_eq!(code, Some(137), "{out}");
    assert_eq!(storage.sync.count().await.unwrap(), 10);

    let said = replay_until_done(&storage.vars()).await;
    assert_eq!(storage.poison.count().await.unwrap(), 0, "{said}");
    let counts = tally(&drain(&storage.sync).await, 50);
    let twice: Vec<usize> = (0..50).filter(|i| counts[*i] == 2).collect();
    assert_eq!(twice.len(), 1, "{counts:?}");
    assert!(
        counts.iter().all(|c| (1..=2).contains(c)),
        "none lost: {counts:?}"
    );
}

#[tokio::test]
async fn dry_run_prints_each_message_and_changes_nothing() {
    let storage = Storage::start().await;
    poison_entries(&storage, 5).await;
    let before = storage.poison.peek(32).await.unwrap();
    let options = cli::poison::ReplayOptions {
        selection: cli::poison::Selection::All,
        dry_run: true,
        visibility_timeout: 120,
    };
    let mut out = Vec::new();
    assert!(
        cli::poison::replay(&storage.settings(), &options, &mut out)
            .await
            .unwrap()
    );
    let printed = String::from_utf8(out).unwrap();
    for (i, message) in before.iter().enumerate() {
        let line = printed
            .lines()
            .find(|l| l.starts_with(&format!("would re-queue {}", message.id)))
            .unwrap_or_else(|| panic!("{i} in {printed}"));
        let (_, json) = line.split_once("): ").unwrap();
        assert_eq!(serde_json::from_str::<Value>(json).unwrap(), expected(i));
    }
    assert!(printed.contains("nothing was changed"), "{printed}");
    assert_eq!(
        storage.poison.peek(32).await.unwrap(),
        before,
        "nothing taken: same entries, dequeue counts still 0"
    );
    assert_eq!(storage.sync.count().await.unwrap(), 0);
}

#[tokio::test]
async fn replay_by_id_moves_only_that_entry_and_releases_the_others() {
    let storage = Storage::start().await;
    poison_entries(&storage, 5).await;
    let before = storage.poison.peek(32).await.unwrap();
    let chosen = before[2].id.clone();
    let replay = |selection| cli::poison::ReplayOptions {
        selection,
        dry_run: false,
        visibility_timeout: 120,
    };
    let mut out = Vec::new();
    assert!(
        cli::poison::replay(
            &storage.settings(),
            &replay(cli::poison::Selection::Id(chosen.clone())),
            &mut out
        )
        .await
        .unwrap()
    );
    let printed = String::from_utf8(out).unwrap();
    assert!(
        printed.contains(&format!("re-queued {chosen} (referral {})", id(2))),
        "{printed}"
    );
    assert_eq!(tally(&drain(&storage.sync).await, 5), [0, 0, 1, 0, 0]);
    let left: Vec<String> = storage
        .poison
        .peek(32)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    let others: Vec<String> = before
        .iter()
        .map(|m| m.id.clone())
        .filter(|m| *m != chosen)
        .collect();
    assert_eq!(left, others, "the others are visible again at once");

    let mut out = Vec::new();
    assert!(
        cli::poison::replay(
            &storage.settings(),
            &replay(cli::poison::Selection::Id(record(3))),
            &mut out
        )
        .await
        .unwrap(),
        "a CRM record id selects its entry"
    );
    assert_eq!(tally(&drain(&storage.sync).await, 5), [0, 0, 0, 1, 0]);

    let mut out = Vec::new();
    assert!(
        !cli::poison::replay(
            &storage.settings(),
            &replay(cli::poison::Selection::Id("no-such-id".into())),
            &mut out
        )
        .await
        .unwrap()
    );
    assert!(
        String::from_utf8(out)
            .unwrap()
            .contains("no visible entry in referral-sync-poison has the message id, referral id or record id no-such-id")
    );
    assert_eq!(storage.poison.count().await.unwrap(), 3);
}

#[tokio::test]
async fn poison_commands_have_help_and_name_the_storage_fix() {
    for args in [
        vec!["poison", "--help"],
        vec!["poison", "list", "--help"],
        vec!["poison", "replay", "--help"],
        vec!["status", "--help"],
    ] {
        let (code, out) = run(&args, &HashMap::new()).await;
        assert_eq!(code, Some(0), "{args:?}");
        assert!(out.contains("Usage:"), "{args:?}");
    }
    let (code, out) = run(&["poison", "replay"], &HashMap::new()).await;
    assert_eq!(code, Some(2), "--id or --all is required: {out}");

    let (code, out) = run(&["poison", "list"], &HashMap::new()).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("setting AzureWebJobsStorage is not set"),
        "{out}"
    );

    let storage = Storage::start().await;
    let wrong_key = storage.azurite.connection_string().replace(
        testkit::azurite::ACCOUNT_KEY,
        "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=",
    );
    let vars = HashMap::from([("AzureWebJobsStorage".to_owned(), wrong_key)]);
    let (code, out) = run(&["poison", "list"], &vars).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("answered 403"), "{out}");
    assert!(out.contains("check AccountName and AccountKey"), "{out}");
    assert!(
        !out.contains("d3Jvbmct") && !out.contains(testkit::azurite::ACCOUNT_KEY),
        "{out}"
    );

    let port = storage.azurite.queue_port;
    drop(storage);
    let vars = HashMap::from([(
        "AzureWebJobsStorage".to_owned(),
        format!(
            "AccountName=devstoreaccount1;AccountKey={};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1",
            testkit::azurite::ACCOUNT_KEY
        ),
    )]);
    let (code, out) = run(&["poison", "replay", "--all"], &vars).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("cannot reach storage at http://127.0.0.1") && out.contains("start Azurite"),
        "{out}"
    );
}
