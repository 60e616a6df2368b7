//! `poison list | replay`: the entries of `referral-sync-poison` and moving them back to
//! `referral-sync`.
//!
//! An entry is ReferralSync's (the original message's fields, or its text as
//! `originalMessage`, plus `error` and `failedAt`), CrmChanges' (`table`, `recordId`,
//! `referralId`, `error`, `failedAt`), or a message the host moved itself (the original text,
//! no reason). The text may be base64 (what the host's queue outputs write) or plain.
//!
//! Replay takes one entry at a time with a visibility timeout, so no other replay sees it,
//! then:
//! 1. puts the message to sync into `referral-sync` (in the host's `messageEncoding`);
//! 2. updates the entry in place (Update Message, same pop receipt) to carry
//!    `replayedAs: <new message id>` and makes it visible again;
//! 3. deletes it with the new pop receipt.
//!
//! An entry that already carries `replayedAs` is only deleted. So a run stopped at any point
//! and run again re-queues every entry once, except in one window: between the service
//! storing the put (1) and storing the marker (2). A run killed there leaves the entry
//! unmarked and a later run re-queues it a second time; it is never lost, and ReferralSync
//! syncs a duplicate as a no-op. A run killed after taking an entry but before (2) leaves
//! it invisible until its visibility timeout ends; the next run says so and exits non-zero.

use std::io::Write;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::{
    config::Settings,
    storage::{
        MessageEncoding, MessageId, POISON_QUEUE, PeekedMessage, ReceivedMessage, SYNC_QUEUE,
        StorageClient, StorageError,
    },
};

/// Test-only: `<n>:<point>` makes `poison replay` exit at once (status 137, nothing cleaned
/// up, as if killed) when its n-th entry reaches `taken`, `requeued` or `marked`.
pub const EXIT_HOOK: &str = "REFERRAL_CONNECTOR_TEST_REPLAY_EXIT";

/// The fields the replay marker adds to an entry.
const MARKER_FIELDS: [&str; 2] = ["replayedAs", "replayedAt"];
/// The fields that are the entry's own, not the message's.
const ENTRY_FIELDS: [&str; 4] = ["error", "failedAt", "replayedAs", "replayedAt"];

/// What an entry syncs again when it is replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// ReferralSync's entry: the original message's fields.
    Referral {
        /// `referralId`, when the message has one.
        referral_id: Option<String>,
        /// The message without the entry's fields.
        message: Map<String, Value>,
    },
    /// A message that was not a JSON object (a bare id, or something unreadable).
    Text(String),
    /// CrmChanges' entry: a CRM row and its referral.
    CrmRecord {
        /// `lead` or `opportunity`.
        table: String,
        /// The row id.
        record_id: String,
        /// Its referral, when known.
        referral_id: Option<String>,
    },
}

/// One poison entry, parsed from its message text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoisonEntry {
    /// What replay re-queues.
    pub target: Target,
    /// `error`; `None` for a message the host moved itself.
    pub reason: Option<String>,
    /// `failedAt`.
    pub failed_at: Option<String>,
    /// `replayedAs`: the `referral-sync` message an interrupted replay already put.
    pub replayed_as: Option<String>,
    stored: Map<String, Value>,
    encoding: MessageEncoding,
}

fn text_field(fields: &Map<String, Value>, name: &str) -> Option<String> {
    fields
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl PoisonEntry {
    /// Parses a `MessageText` (base64 or plain) in any of the three shapes.
    pub fn parse(message_text: &str) -> Self {
        let (text, encoding) = MessageEncoding::decode(message_text);
        let stored = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(fields)) => fields,
            _ => {
                let mut fields = Map::new();
                fields.insert("originalMessage".into(), Value::from(text));
                fields
            }
        };
        let target = match (
            text_field(&stored, "table"),
            text_field(&stored, "recordId"),
            stored.get("originalMessage").and_then(Value::as_str),
        ) {
            (Some(table), Some(record_id), _) => Target::CrmRecord {
                table,
                record_id,
                referral_id: text_field(&stored, "referralId"),
            },
            (_, _, Some(original)) if !stored.contains_key("referralId") => {
                Target::Text(original.to_owned())
            }
            _ => {
                let mut message = stored.clone();
                for field in ENTRY_FIELDS {
                    message.remove(field);
                }
                Target::Referral {
                    referral_id: text_field(&message, "referralId"),
                    message,
                }
            }
        };
        Self {
            target,
            reason: text_field(&stored, "error"),
            failed_at: text_field(&stored, "failedAt"),
            replayed_as: text_field(&stored, "replayedAs"),
            stored,
            encoding,
        }
    }

    /// The message text replay puts into `referral-sync` (before the queue encoding).
    pub fn replay_text(&self) -> String {
        match &self.target {
            Target::Referral { message, .. } => Value::Object(message.clone()).to_string(),
            Target::Text(text) => text.clone(),
            Target::CrmRecord {
                table,
                record_id,
                referral_id,
            } => {
                let mut message = json!({"table": table, "recordId": record_id});
                if let Some(id) = referral_id {
                    message["referralId"] = Value::from(id.as_str());
                }
                message.to_string()
            }
        }
    }

    /// The entry's text with the replay marker, in the encoding it was read in.
    pub fn marked(&self, requeued_as: &MessageId, at: OffsetDateTime) -> String {
        let mut fields = self.stored.clone();
        for field in MARKER_FIELDS {
            fields.remove(field);
        }
        fields.insert("replayedAs".into(), Value::from(requeued_as.as_str()));
        fields.insert(
            "replayedAt".into(),
            Value::from(crate::sync::utc_seconds(at)),
        );
        self.encoding.encode(&Value::Object(fields).to_string())
    }

    /// The referral, or the CRM row and its referral, in a few words.
    pub fn subject(&self) -> String {
        match &self.target {
            Target::Referral {
                referral_id: Some(id),
                ..
            } => format!("referral {id}"),
            Target::Referral { message, .. } => {
                format!(
                    "message {}",
                    shorten(&Value::Object(message.clone()).to_string(), 60)
                )
            }
            Target::Text(text) => format!("message {}", shorten(text, 60)),
            Target::CrmRecord {
                table,
                record_id,
                referral_id,
            } => match referral_id {
                Some(id) => format!("{table} {record_id} (referral {id})"),
                None => format!("{table} {record_id}"),
            },
        }
    }

    /// Whether `id` names this entry's referral or CRM row.
    pub fn concerns(&self, id: &str) -> bool {
        let id = id.trim();
        let same = |candidate: &Option<String>| {
            candidate
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(id))
        };
        match &self.target {
            Target::Referral { referral_id, .. } => same(referral_id),
            Target::Text(text) => text.trim().eq_ignore_ascii_case(id),
            Target::CrmRecord {
                record_id,
                referral_id,
                ..
            } => record_id.eq_ignore_ascii_case(id) || same(referral_id),
        }
    }

    /// The reason, or what an entry without one means.
    pub fn reason_text(&self) -> String {
        match &self.reason {
            Some(reason) => reason.split_whitespace().collect::<Vec<_>>().join(" "),
            None => {
                "no reason recorded (moved by the Functions host after its last delivery failed)"
                    .to_owned()
            }
        }
    }
}

fn shorten(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// Which entries `replay` moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every entry that was in the queue when the run started.
    All,
    /// The entry with this message id, or the entries of this referral or CRM row.
    Id(String),
}

impl Selection {
    fn matches(&self, id: &MessageId, entry: &PoisonEntry) -> bool {
        match self {
            Self::All => true,
            Self::Id(wanted) => id.as_str() == wanted.trim() || entry.concerns(wanted),
        }
    }
}

/// `poison replay` options.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Which entries.
    pub selection: Selection,
    /// Print what would be re-queued, changing nothing.
    pub dry_run: bool,
    /// How long a taken entry stays invisible to others (seconds).
    pub visibility_timeout: u32,
}

/// `poison list`: the entries as a table (the first 32: the queue service shows no more
/// without taking them).
pub async fn list(settings: &Settings, out: &mut impl Write) -> anyhow::Result<bool> {
    let client = StorageClient::from_settings(settings)?;
    let (depth, _) = client.queue_depth(POISON_QUEUE).await?;
    let depth = depth.unwrap_or(0);
    if depth == 0 {
        writeln!(out, "{POISON_QUEUE} is empty")?;
        return Ok(true);
    }
    let peeked = client.peek(POISON_QUEUE, 32).await?;
    let rows: Vec<[String; 5]> = peeked
        .iter()
        .map(|message| {
            let entry = PoisonEntry::parse(&message.text);
            let reason = match &entry.replayed_as {
                Some(id) => format!(
                    "(re-queued as {id}, not yet removed) {}",
                    entry.reason_text()
                ),
                None => entry.reason_text(),
            };
            [
                message.id.to_string(),
                entry.subject(),
                entry.failed_at.clone().unwrap_or_else(|| "-".into()),
                message.dequeue_count.to_string(),
                reason,
            ]
        })
        .collect();
    write_table(
        out,
        ["MESSAGE ID", "WHAT", "FAILED AT", "DEQUEUED", "REASON"],
        &rows,
    )?;
    let shown = rows.len() as u64;
    writeln!(out, "{depth} entries in {POISON_QUEUE}")?;
    if depth > shown {
        writeln!(
            out,
            "showing the first {shown}: the queue service shows no more without taking them ({} invisible or further back)",
            depth - shown
        )?;
    }
    writeln!(
        out,
        "fix the cause, then `referral-connector poison replay --id <MESSAGE ID>` or `--all`"
    )?;
    Ok(true)
}

/// A table with left-aligned columns; the last column is not padded.
pub(crate) fn write_table<const N: usize>(
    out: &mut impl Write,
    header: [&str; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.trim_end().to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// Where the test hook stops a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    Taken,
    Requeued,
    Marked,
}

#[derive(Debug, Clone, Copy)]
struct ExitHook {
    after: usize,
    point: Point,
}

impl ExitHook {
    fn from_env() -> anyhow::Result<Option<Self>> {
        let Ok(raw) = std::env::var(EXIT_HOOK) else {
            return Ok(None);
        };
        let parsed = raw.split_once(':').and_then(|(n, point)| {
            let point = match point {
                "taken" => Point::Taken,
                "requeued" => Point::Requeued,
                "marked" => Point::Marked,
                _ => return None,
            };
            Some(Self {
                after: n.parse().ok()?,
                point,
            })
        });
        parsed.map(Some).ok_or_else(|| {
            anyhow::anyhow!(
                "{EXIT_HOOK}=`{raw}` is not <n>:taken|requeued|marked (a test hook; unset it)"
            )
        })
    }

    fn check(hook: Option<Self>, entry: usize, point: Point) {
        if let Some(hook) = hook
            && hook.after == entry
            && hook.point == point
        {
            std::process::exit(137);
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    requeued: usize,
    removed: usize,
}

/// `poison replay`: moves the selected entries back to `referral-sync`; each is deleted from
/// the poison queue only after it was re-queued (see the module comment for the guarantee).
pub async fn replay(
    settings: &Settings,
    options: &ReplayOptions,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let client = StorageClient::from_settings(settings)?;
    if options.dry_run {
        return dry_run(&client, options, out).await;
    }
    let hook = ExitHook::from_env()?;
    client.create_queue(SYNC_QUEUE).await?;
    let encoding = settings.ops.message_encoding;
    let batch = match options.selection {
        Selection::All => 1,
        Selection::Id(_) => 32,
    };
    let mut counts = Counts::default();
    let mut held: Vec<ReceivedMessage> = Vec::new();
    let mut started: Option<OffsetDateTime> = None;
    let mut entries = 0;
    let mut outcome: anyhow::Result<()> = Ok(());
    'receive: loop {
        let (messages, date) = match client
            .receive(POISON_QUEUE, batch, options.visibility_timeout)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                outcome = Err(e.into());
                break;
            }
        };
        let run_start =
            *started.get_or_insert_with(|| date.unwrap_or_else(OffsetDateTime::now_utc));
        if messages.is_empty() {
            break;
        }
        let mut found = false;
        let mut batch_left = messages.into_iter();
        while let Some(message) = batch_left.next() {
            let entry = PoisonEntry::parse(&message.text);
            let newer = message.inserted.is_some_and(|t| t > run_start);
            if found || newer || !options.selection.matches(&message.id, &entry) {
                held.push(message);
                continue;
            }
            entries += 1;
            ExitHook::check(hook, entries, Point::Taken);
            found =
                matches!(&options.selection, Selection::Id(id) if id.trim() == message.id.as_str());
            if let Err(e) = replay_one(
                &client,
                message,
                &entry,
                encoding,
                hook,
                entries,
                &mut counts,
                out,
            )
            .await
            {
                held.extend(batch_left);
                outcome = Err(e);
                break 'receive;
            }
        }
        if found {
            break;
        }
    }
    let newer = held
        .iter()
        .filter(|m| m.inserted.zip(started).is_some_and(|(t, s)| t > s))
        .count();
    for message in &held {
        if let Err(e) = client.update_message(POISON_QUEUE, message, 0, None).await {
            writeln!(
                out,
                "note: {} stays invisible until its visibility timeout ends ({e})",
                message.id
            )?;
        }
    }
    writeln!(
        out,
        "{} re-queued to {SYNC_QUEUE}, {} re-queued by an earlier run and now removed from {POISON_QUEUE}",
        counts.requeued, counts.removed
    )?;
    outcome?;
    if let Selection::Id(id) = &options.selection
        && entries == 0
    {
        writeln!(
            out,
            "no visible entry in {POISON_QUEUE} has the message id, referral id or record id {id}; see `referral-connector poison list`"
        )?;
        return Ok(false);
    }
    if options.selection == Selection::All {
        let (depth, _) = client.queue_depth(POISON_QUEUE).await?;
        let left = depth.unwrap_or(0).saturating_sub(newer as u64);
        if newer > 0 {
            writeln!(
                out,
                "{newer} entries arrived during this run and were left for the next one"
            )?;
        }
        if left > 0 {
            writeln!(
                out,
                "{left} entries are invisible (taken by an interrupted or concurrent replay); they reappear within {} s: run `referral-connector poison replay --all` again then",
                options.visibility_timeout
            )?;
            return Ok(false);
        }
    }
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
async fn replay_one(
    client: &StorageClient,
    message: ReceivedMessage,
    entry: &PoisonEntry,
    encoding: MessageEncoding,
    hook: Option<ExitHook>,
    ordinal: usize,
    counts: &mut Counts,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let subject = entry.subject();
    if let Some(earlier) = &entry.replayed_as {
        match client
            .delete_message(POISON_QUEUE, &message.id, &message.pop_receipt)
            .await
        {
            Ok(()) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        counts.removed += 1;
        writeln!(
            out,
            "removed {} ({subject}): re-queued earlier as {earlier}",
            message.id
        )?;
        return Ok(());
    }
    let put = match client
        .put_message(SYNC_QUEUE, &encoding.encode(&entry.replay_text()))
        .await
    {
        Ok(put) => put,
        Err(e) => {
            let _ = client.update_message(POISON_QUEUE, &message, 0, None).await;
            return Err(anyhow::anyhow!(
                "{} ({subject}) was not re-queued and stays in {POISON_QUEUE}: {e}",
                message.id
            ));
        }
    };
    ExitHook::check(hook, ordinal, Point::Requeued);
    let marked = entry.marked(&put.id, OffsetDateTime::now_utc());
    let receipt = match client
        .update_message(POISON_QUEUE, &message, 0, Some(&marked))
        .await
    {
        Ok(receipt) => receipt,
        Err(mark_error) => {
            // Unmarked, a later run would re-queue it again: remove it with the receipt we hold.
            return match client
                .delete_message(POISON_QUEUE, &message.id, &message.pop_receipt)
                .await
            {
                Ok(()) => {
                    counts.requeued += 1;
                    writeln!(out, "re-queued {} ({subject}) as {}", message.id, put.id)?;
                    Ok(())
                }
                Err(delete_error) => Err(anyhow::anyhow!(
                    "{} ({subject}) was re-queued as {} but could not be marked ({mark_error}) or removed ({delete_error}); a later replay would re-queue it once more, so delete it from {POISON_QUEUE} (or let ReferralSync sync it twice: the second is a no-op)",
                    message.id,
                    put.id
                )),
            };
        }
    };
    ExitHook::check(hook, ordinal, Point::Marked);
    match client
        .delete_message(POISON_QUEUE, &message.id, &receipt)
        .await
    {
        Ok(()) | Err(StorageError::NotFound { .. }) => {}
        Err(e) => {
            return Err(anyhow::anyhow!(
                "{} ({subject}) was re-queued as {} and marked, but not removed ({e}); the next replay removes it without re-queuing",
                message.id,
                put.id
            ));
        }
    }
    counts.requeued += 1;
    writeln!(out, "re-queued {} ({subject}) as {}", message.id, put.id)?;
    Ok(())
}

async fn dry_run(
    client: &StorageClient,
    options: &ReplayOptions,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let (depth, _) = client.queue_depth(POISON_QUEUE).await?;
    let peeked: Vec<PeekedMessage> = client.peek(POISON_QUEUE, 32).await?;
    let mut selected = 0;
    for message in &peeked {
        let entry = PoisonEntry::parse(&message.text);
        if !options.selection.matches(&message.id, &entry) {
            continue;
        }
        selected += 1;
        match &entry.replayed_as {
            Some(earlier) => writeln!(
                out,
                "would remove {} ({}): re-queued earlier as {earlier}",
                message.id,
                entry.subject()
            )?,
            None => writeln!(
                out,
                "would re-queue {} ({}): {}",
                message.id,
                entry.subject(),
                entry.replay_text()
            )?,
        }
    }
    let depth = depth.unwrap_or(0);
    let shown = peeked.len() as u64;
    writeln!(
        out,
        "dry run: {selected} entries selected; nothing was changed"
    )?;
    if let Selection::Id(id) = &options.selection
        && selected == 0
    {
        writeln!(
            out,
            "no entry among the first {shown} of {POISON_QUEUE} has the message id, referral id or record id {id}"
        )?;
    }
    if depth > shown {
        writeln!(
            out,
            "{} more entries are not shown: the queue service shows at most 32 without taking them",
            depth - shown
        )?;
    }
    Ok(selected > 0 || options.selection == Selection::All)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";

    fn b64(text: &str) -> String {
        MessageEncoding::Base64.encode(text)
    }

    #[test]
    fn each_shape_and_encoding_replays_the_message_to_sync() {
        let referral = format!(
            r#"{{"referralId":"{ID}","eventName":"referral-created","receivedAt":"2026-12-01T10:00:00Z","error":"mapping: column estimatedamount","failedAt":"2026-12-02T10:00:00Z"}}"#
        );
        let crm = format!(
            r#"{{"referralId":"{ID}","table":"opportunity","recordId":"0e7c1f5e-0000-4000-8000-000000000001","error":"gave up after 5 runs of CrmChanges: Partner Center: 400","failedAt":"2026-12-02T10:01:00Z"}}"#
        );
        let cases: [(String, String, &str, Option<&str>); 6] = [
            (
                b64(&referral),
                format!(
                    r#"{{"referralId":"{ID}","eventName":"referral-created","receivedAt":"2026-12-01T10:00:00Z"}}"#
                ),
                "referral c5fbb3b6-be74-4795-9fb5-4324c73fed37",
                Some("mapping: column estimatedamount"),
            ),
            (
                referral.clone(),
                format!(
                    r#"{{"referralId":"{ID}","eventName":"referral-created","receivedAt":"2026-12-01T10:00:00Z"}}"#
                ),
                "referral c5fbb3b6-be74-4795-9fb5-4324c73fed37",
                Some("mapping: column estimatedamount"),
            ),
            (
                b64(&crm),
                format!(
                    r#"{{"table":"opportunity","recordId":"0e7c1f5e-0000-4000-8000-000000000001","referralId":"{ID}"}}"#
                ),
                "opportunity 0e7c1f5e-0000-4000-8000-000000000001 (referral c5fbb3b6-be74-4795-9fb5-4324c73fed37)",
                Some("gave up after 5 runs of CrmChanges: Partner Center: 400"),
            ),
            (
                b64(r#"{"table":"lead","recordId":"l1","error":"x","failedAt":"t"}"#),
                r#"{"table":"lead","recordId":"l1"}"#.to_owned(),
                "lead l1",
                Some("x"),
            ),
            (
                b64(&format!(
                    r#"{{"originalMessage":"{ID}","error":"referral not found","failedAt":"t"}}"#
                )),
                ID.to_owned(),
                "message c5fbb3b6-be74-4795-9fb5-4324c73fed37",
                Some("referral not found"),
            ),
            (
                b64(&format!(r#"{{"referralId":"{ID}"}}"#)),
                format!(r#"{{"referralId":"{ID}"}}"#),
                "referral c5fbb3b6-be74-4795-9fb5-4324c73fed37",
                None,
            ),
        ];
        for (stored, replay, subject, reason) in cases {
            let entry = PoisonEntry::parse(&stored);
            assert_eq!(entry.replay_text(), replay, "{stored}");
            assert_eq!(entry.subject(), subject, "{stored}");
            assert_eq!(entry.reason.as_deref(), reason, "{stored}");
            assert!(entry.replayed_as.is_none());
            assert!(entry.concerns(ID) || subject == "lead l1", "{stored}");
        }
        let host_moved = PoisonEntry::parse("not json at all");
        assert_eq!(host_moved.target, Target::Text("not json at all".into()));
        assert!(
            host_moved
                .reason_text()
                .contains("moved by the Functions host")
        );
    }

    #[test]
    fn the_marker_keeps_the_entry_and_its_encoding_and_replays_the_same_message() {
        let at = OffsetDateTime::from_unix_timestamp(1_796_000_000).unwrap();
        let put = |text: &str| {
            let received = PoisonEntry::parse(text);
            let target = MessageId::new("m-new");
            (
                received.clone(),
                PoisonEntry::parse(&received.marked(&target, at)),
            )
        };
        for stored in [
            b64(&format!(
                r#"{{"referralId":"{ID}","error":"e","failedAt":"t"}}"#
            )),
            r#"{"table":"lead","recordId":"l1","error":"e","failedAt":"t"}"#.to_owned(),
            "plain text".to_owned(),
        ] {
            let (before, after) = put(&stored);
            assert_eq!(after.replayed_as.as_deref(), Some("m-new"), "{stored}");
            assert_eq!(after.replay_text(), before.replay_text(), "{stored}");
            assert_eq!(after.reason, before.reason, "{stored}");
            assert_eq!(after.encoding, before.encoding, "{stored}");
            assert!(!after.replay_text().contains("replayed"), "{stored}");
        }
    }

    #[test]
    fn selection_by_message_id_referral_id_or_record_id() {
        let entry = PoisonEntry::parse(&format!(
            r#"{{"referralId":"{ID}","table":"opportunity","recordId":"row-1","error":"e"}}"#
        ));
        let message = MessageId::new("m1");
        assert!(Selection::All.matches(&message, &entry));
        assert!(Selection::Id("m1".into()).matches(&message, &entry));
        assert!(Selection::Id(ID.to_uppercase()).matches(&message, &entry));
        assert!(Selection::Id("row-1".into()).matches(&message, &entry));
        assert!(!Selection::Id("m2".into()).matches(&message, &entry));
    }

    #[test]
    fn tables_align_all_but_the_last_column() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            ["A", "BB", "C"],
            &[
                ["xxx".into(), "y".into(), "last column text".into()],
                ["z".into(), "".into(), "".into()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A    BB  C\nxxx  y   last column text\nz\n"
        );
    }
}
