//! `status`: one screen for an operator or a monitor: the depths of `referral-sync` and
//! `referral-sync-poison`, the age of both timer watermarks, the poison reasons grouped by
//! cause, and the webhook registration. It exits non-zero when something needs attention:
//! poison entries, a watermark older than three of its schedule's longest gaps (or missing:
//! the timer never completed a run), unreadable storage, or a registration that is missing,
//! incomplete or points elsewhere. Reading and judging are separate; the judging is pure.

use std::{io::Write, time::Duration};

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    mask_url,
    poison::PoisonEntry,
    schedule::Schedule,
    webhook::{missing_referral_events, registered_url},
};
use crate::{
    config::Settings,
    partner_center::PartnerCenterClient,
    routes::reconcile::Watermark,
    storage::{POISON_QUEUE, SYNC_QUEUE, StorageClient, WATERMARK_CONTAINER},
    sync::to_partner_center::PollState,
};

/// How many of its schedule's longest gaps a watermark may be old before it is stale.
pub const STALE_AFTER_GAPS: u32 = 3;

/// A timer function that keeps a watermark blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// `CrmChanges` (`crm-changes.json`, `since`).
    CrmChanges,
    /// `ReferralReconcile` (`referral-reconcile.json`, `completedRunStartedAt`).
    ReferralReconcile,
}

impl Timer {
    /// Both timers.
    pub const ALL: [Self; 2] = [Self::CrmChanges, Self::ReferralReconcile];

    /// The function name.
    pub fn name(self) -> &'static str {
        match self {
            Self::CrmChanges => "CrmChanges",
            Self::ReferralReconcile => "ReferralReconcile",
        }
    }

    /// The blob in [`WATERMARK_CONTAINER`] (function.json).
    pub fn blob(self) -> &'static str {
        match self {
            Self::CrmChanges => "crm-changes.json",
            Self::ReferralReconcile => "referral-reconcile.json",
        }
    }

    /// The setting holding its schedule.
    pub fn setting(self) -> &'static str {
        match self {
            Self::CrmChanges => "CRM_POLL_SCHEDULE",
            Self::ReferralReconcile => "REFERRAL_RECONCILE_SCHEDULE",
        }
    }

    fn schedule(self, settings: &Settings) -> &str {
        match self {
            Self::CrmChanges => &settings.ops.crm_poll_schedule,
            Self::ReferralReconcile => &settings.ops.reconcile_schedule,
        }
    }
}

/// What a watermark blob says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// No blob (or no time in it yet): the timer never completed a run.
    NeverRan,
    /// The watermark instant, and how many CRM records the state still retries.
    At {
        /// `since` or `completedRunStartedAt`.
        at: OffsetDateTime,
        /// CrmChanges records failing and retried on the next runs.
        retrying: usize,
    },
    /// The blob exists but cannot be read (the storage error, or its content).
    Unreadable(String),
}

/// Reads a watermark blob's text (`None`: no blob). Pure.
pub fn read_watermark(timer: Timer, text: Option<&str>) -> Reading {
    let Some(text) = text else {
        return Reading::NeverRan;
    };
    let parse = |at: &str| {
        OffsetDateTime::parse(at, &Rfc3339)
            .map_err(|e| format!("`{at}` is not an RFC 3339 time ({e})"))
    };
    let result = match timer {
        Timer::CrmChanges => serde_json::from_str::<PollState>(text)
            .map_err(|e| format!("not the CrmChanges state ({e})"))
            .and_then(|state| match state.since.as_deref() {
                None => Ok(None),
                Some(since) => parse(since).map(|at| Some((at, state.failures.len()))),
            }),
        Timer::ReferralReconcile => serde_json::from_str::<Watermark>(text)
            .map_err(|e| format!("not the ReferralReconcile watermark ({e})"))
            .and_then(|w| parse(&w.completed_run_started_at).map(|at| Some((at, 0)))),
    };
    match result {
        Ok(Some((at, retrying))) => Reading::At { at, retrying },
        Ok(None) => Reading::NeverRan,
        Err(reason) => Reading::Unreadable(format!("{}: {reason}", timer.blob())),
    }
}

/// A watermark judged against its schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Younger than the limit.
    Fresh {
        /// How old.
        age: Duration,
        /// [`STALE_AFTER_GAPS`] × the schedule's longest gap.
        limit: Duration,
    },
    /// Older than the limit: the timer stopped completing runs.
    Stale {
        /// How old.
        age: Duration,
        /// The limit.
        limit: Duration,
    },
    /// No watermark: the timer never completed a run.
    NeverRan,
    /// Cannot be judged (storage, content or schedule), with the reason.
    Unknown(String),
}

/// Judges a reading at `now` against the schedule. Pure.
pub fn freshness(
    reading: &Reading,
    schedule: Result<&Schedule, &str>,
    now: OffsetDateTime,
) -> Freshness {
    let (at, schedule) = match (reading, schedule) {
        (Reading::NeverRan, _) => return Freshness::NeverRan,
        (Reading::Unreadable(reason), _) => return Freshness::Unknown(reason.clone()),
        (Reading::At { .. }, Err(reason)) => return Freshness::Unknown(reason.to_owned()),
        (Reading::At { at, .. }, Ok(schedule)) => (*at, schedule),
    };
    let age = Duration::try_from(now - at).unwrap_or(Duration::ZERO);
    let limit = schedule.longest_gap() * STALE_AFTER_GAPS;
    if age > limit {
        Freshness::Stale { age, limit }
    } else {
        Freshness::Fresh { age, limit }
    }
}

/// One timer's watermark: where it was read, what it says and how fresh it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkReport {
    /// The timer.
    pub timer: Timer,
    /// What the blob says.
    pub reading: Reading,
    /// The judgement.
    pub freshness: Freshness,
}

impl WatermarkReport {
    /// One line: the instant and its age, "never ran", or why it cannot be judged.
    pub fn describe(&self) -> String {
        let retrying = match &self.reading {
            Reading::At { retrying, .. } if *retrying > 0 => {
                format!("; {retrying} CRM records are being retried")
            }
            _ => String::new(),
        };
        let at = match &self.reading {
            Reading::At { at, .. } => crate::sync::utc_seconds(*at),
            _ => String::new(),
        };
        match &self.freshness {
            Freshness::Fresh { age, limit } => format!(
                "watermark {at}, {} ago (stale after {}){retrying}",
                human(*age),
                human(*limit)
            ),
            Freshness::Stale { age, limit } => format!(
                "watermark {at}, {} ago: STALE (more than {}){retrying}",
                human(*age),
                human(*limit)
            ),
            Freshness::NeverRan => format!(
                "never ran: no watermark in {WATERMARK_CONTAINER}/{}",
                self.timer.blob()
            ),
            Freshness::Unknown(reason) => format!("cannot tell: {reason}"),
        }
    }
}

/// Reads and judges both watermarks at `now` (shared by `status` and `check`).
pub async fn watermarks(
    client: &StorageClient,
    settings: &Settings,
    now: OffsetDateTime,
) -> Vec<WatermarkReport> {
    let mut reports = Vec::new();
    for timer in Timer::ALL {
        let reading = match client.blob_text(WATERMARK_CONTAINER, timer.blob()).await {
            Ok(blob) => read_watermark(timer, blob.as_ref().map(|b| b.text.as_str())),
            Err(e) => Reading::Unreadable(e.to_string()),
        };
        let schedule = Schedule::parse(timer.schedule(settings))
            .map_err(|e| format!("setting {}: {e}", timer.setting()));
        let freshness = freshness(&reading, schedule.as_ref().map_err(String::as_str), now);
        reports.push(WatermarkReport {
            timer,
            reading,
            freshness,
        });
    }
    reports
}

/// `1 d 2 h`, `3 min 5 s`, `45 s`: the two largest units.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let units = [(86_400, "d"), (3600, "h"), (60, "min"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, name) in units {
        if rest >= size && parts.len() < 2 {
            parts.push(format!("{} {name}", rest / size));
            rest %= size;
        } else if !parts.is_empty() {
            break;
        }
    }
    if parts.is_empty() {
        "0 s".to_owned()
    } else {
        parts.join(" ")
    }
}

/// The cause of a poison reason: without the retry prefixes, ids replaced by `<id>`,
/// whitespace collapsed. Pure.
pub fn cause(reason: &str) -> String {
    let mut text = reason.trim();
    while let Some(rest) = text.strip_prefix("gave up after ") {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let after = &rest[digits..];
        let stripped = [" attempts: ", " runs of CrmChanges: "]
            .iter()
            .find_map(|p| after.strip_prefix(p));
        match stripped {
            Some(stripped) if digits > 0 => text = stripped.trim_start(),
            _ => break,
        }
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes.len() - i >= 36 && is_guid(&bytes[i..i + 36]) {
            out.push_str("<id>");
            i += 36;
            continue;
        }
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        out.push(c);
        i += c.len_utf8();
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_guid(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    })
}

/// Reasons grouped by [`cause`], most frequent first. Pure.
pub fn group_reasons(reasons: &[String]) -> Vec<(usize, String)> {
    let mut groups: Vec<(usize, String)> = Vec::new();
    for reason in reasons {
        let key = cause(reason);
        match groups.iter_mut().find(|(_, k)| *k == key) {
            Some((n, _)) => *n += 1,
            None => groups.push((1, key)),
        }
    }
    groups.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    groups
}

/// What the webhook registration looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookState {
    /// It could not be read.
    Unreadable(String),
    /// There is none.
    Missing,
    /// It exists.
    Registered {
        /// Its URL, masked.
        url: String,
        /// Referral events it lacks.
        missing_events: Vec<&'static str>,
        /// Whether it equals `--url`; `None` without `--url`.
        points_here: Option<bool>,
    },
}

/// Everything `status` observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observations {
    /// Why the storage account cannot be read at all; the queues and watermarks are then
    /// not judged one by one.
    pub storage_error: Option<String>,
    /// Depth of `referral-sync` (`None`: the queue does not exist yet).
    pub sync_depth: Result<Option<u64>, String>,
    /// Depth of `referral-sync-poison`.
    pub poison_depth: Result<Option<u64>, String>,
    /// Both watermarks.
    pub watermarks: Vec<WatermarkReport>,
    /// The registration.
    pub webhook: WebhookState,
}

/// What needs attention, one sentence with the fix each; empty when all is well. Pure.
pub fn verdict(observed: &Observations) -> Vec<String> {
    let mut findings = Vec::new();
    if let Some(e) = &observed.storage_error {
        findings.push(format!("the storage account cannot be read: {e}"));
    }
    for (queue, depth) in [
        (SYNC_QUEUE, &observed.sync_depth),
        (POISON_QUEUE, &observed.poison_depth),
    ] {
        if let Err(e) = depth
            && observed.storage_error.is_none()
        {
            findings.push(format!("{queue} cannot be read: {e}"));
        }
    }
    if let Ok(Some(n)) = observed.poison_depth
        && n > 0
    {
        findings.push(format!(
            "{n} entries in {POISON_QUEUE}: `referral-connector poison list` shows why; fix the cause, then `poison replay --all`"
        ));
    }
    for report in &observed.watermarks {
        let name = report.timer.name();
        match &report.freshness {
            Freshness::Fresh { .. } => {}
            Freshness::Stale { age, limit } => findings.push(format!(
                "{name} has not completed a run for {} (more than {}): check the function's invocations and logs in the Function App",
                human(*age),
                human(*limit)
            )),
            Freshness::NeverRan => findings.push(format!(
                "{name} never completed a run (no {WATERMARK_CONTAINER}/{}): check that the app is deployed, {} is set, and the function's logs",
                report.timer.blob(),
                report.timer.setting()
            )),
            Freshness::Unknown(reason) => {
                findings.push(format!("the {name} watermark cannot be judged: {reason}"));
            }
        }
    }
    let register = "run `referral-connector webhook register --url <ReferralWebhook URL>`";
    match &observed.webhook {
        WebhookState::Unreadable(e) => {
            findings.push(format!("the webhook registration cannot be read: {e}"));
        }
        WebhookState::Missing => findings.push(format!("no webhook registration: {register}")),
        WebhookState::Registered {
            url,
            missing_events,
            points_here,
        } => {
            if !missing_events.is_empty() {
                findings.push(format!(
                    "the webhook registration lacks {}: {register}",
                    missing_events.join(", ")
                ));
            }
            if *points_here == Some(false) {
                findings.push(format!(
                    "the webhook points at {url}, not at this app (another tool may have replaced it): {register}"
                ));
            }
        }
    }
    findings
}

async fn webhook_state(settings: &Settings, url: Option<&str>) -> WebhookState {
    let http = match crate::http::client(&settings.http) {
        Ok(http) => http,
        Err(e) => return WebhookState::Unreadable(e.to_string()),
    };
    let client = match PartnerCenterClient::from_settings(settings, http) {
        Ok((client, _)) => client,
        Err(e) => return WebhookState::Unreadable(e.to_string()),
    };
    match client.get_registration().await {
        Err(e) => WebhookState::Unreadable(e.to_string()),
        Ok(None) => WebhookState::Missing,
        Ok(Some(registration)) => WebhookState::Registered {
            url: mask_url(registered_url(&registration)),
            missing_events: missing_referral_events(&registration),
            points_here: url.map(|u| u == registered_url(&registration)),
        },
    }
}

/// Prints the screen; returns `false` when something needs attention.
pub async fn run(
    settings: &Settings,
    url: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let (client, first) = match StorageClient::from_settings(settings) {
        Err(e) => (None, Err(e.to_string())),
        Ok(client) => {
            let first = client
                .queue_depth(SYNC_QUEUE)
                .await
                .map_err(|e| e.to_string());
            (Some(client), first)
        }
    };
    let storage_error = first.as_ref().err().cloned();
    let client = client.filter(|_| storage_error.is_none());
    let now = match &first {
        Ok((_, Some(service_now))) => *service_now,
        _ => OffsetDateTime::now_utc(),
    };
    let sync_depth = first.map(|(depth, _)| depth);
    match (&client, &storage_error) {
        (Some(client), _) => writeln!(out, "{:<20} {}", "storage", client.account().describe())?,
        (None, Some(e)) => writeln!(out, "{:<20} cannot be read: {e}", "storage")?,
        (None, None) => {}
    }
    let (poison_depth, poison) = match &client {
        None => (Err("not read".to_owned()), Vec::new()),
        Some(client) => {
            let depth = client
                .queue_depth(POISON_QUEUE)
                .await
                .map(|(d, _)| d)
                .map_err(|e| e.to_string());
            let peeked = match &depth {
                Ok(Some(n)) if *n > 0 => client.peek(POISON_QUEUE, 32).await.unwrap_or_default(),
                _ => Vec::new(),
            };
            (depth, peeked)
        }
    };
    let depth = |d: &Result<Option<u64>, String>| match d {
        Ok(Some(n)) => n.to_string(),
        Ok(None) => "0 (not created yet)".to_owned(),
        Err(_) => "unreadable".to_owned(),
    };
    writeln!(out, "{SYNC_QUEUE:<20} {} messages", depth(&sync_depth))?;
    writeln!(out, "{POISON_QUEUE:<20} {} entries", depth(&poison_depth))?;
    let watermarks = match &client {
        Some(client) => watermarks(client, settings, now).await,
        None => Vec::new(),
    };
    for report in &watermarks {
        writeln!(out, "{:<20} {}", report.timer.name(), report.describe())?;
    }
    if !poison.is_empty() {
        let reasons: Vec<String> = poison
            .iter()
            .map(|m| PoisonEntry::parse(&m.text).reason_text())
            .collect();
        writeln!(
            out,
            "poison reasons of the {} oldest entries:",
            reasons.len()
        )?;
        for (count, cause) in group_reasons(&reasons) {
            writeln!(out, "  {count:>4}  {cause}")?;
        }
    }
    let webhook = webhook_state(settings, url).await;
    match &webhook {
        WebhookState::Unreadable(e) => {
            writeln!(out, "{:<20} cannot read the registration: {e}", "webhook")?
        }
        WebhookState::Missing => writeln!(out, "{:<20} no registration", "webhook")?,
        WebhookState::Registered {
            url: registered,
            missing_events,
            points_here,
        } => {
            let events = if missing_events.is_empty() {
                "all referral events".to_owned()
            } else {
                format!("lacks {}", missing_events.join(", "))
            };
            let here = match (points_here, url) {
                (Some(true), _) => "points at this app (--url): yes".to_owned(),
                (Some(false), Some(url)) => format!("points at this app ({}): no", mask_url(url)),
                _ => {
                    "points at this app: not checked (give --url <ReferralWebhook URL>)".to_owned()
                }
            };
            writeln!(out, "{:<20} {registered} ({events}); {here}", "webhook")?;
        }
    }
    let findings = verdict(&Observations {
        storage_error,
        sync_depth,
        poison_depth,
        watermarks,
        webhook,
    });
    if findings.is_empty() {
        writeln!(out, "status: OK")?;
        return Ok(true);
    }
    writeln!(out, "status: NEEDS ATTENTION")?;
    for finding in &findings {
        writeln!(out, "  - {finding}")?;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &Rfc3339).unwrap()
    }

    #[test]
    fn watermark_blobs_of_both_timers_are_read() {
        let cases = [
            (Timer::CrmChanges, None, Reading::NeverRan),
            (Timer::CrmChanges, Some("{}"), Reading::NeverRan),
            (
                Timer::CrmChanges,
                Some(
                    r#"{"since":"2026-12-02T10:00:00Z","failures":{"lead:l1":{"referralId":"r","modifiedOn":null,"runs":1,"reason":"x","reported":false}}}"#,
                ),
                Reading::At {
                    at: at("2026-12-02T10:00:00Z"),
                    retrying: 1,
                },
            ),
            (
                Timer::ReferralReconcile,
                Some(r#"{"completedRunStartedAt":"2026-12-02T03:30:00Z","summary":"3 listed"}"#),
                Reading::At {
                    at: at("2026-12-02T03:30:00Z"),
                    retrying: 0,
                },
            ),
            (Timer::ReferralReconcile, None, Reading::NeverRan),
        ];
        for (timer, text, expected) in cases {
            assert_eq!(read_watermark(timer, text), expected, "{timer:?} {text:?}");
        }
        for (timer, text) in [
            (Timer::CrmChanges, "not json"),
            (Timer::CrmChanges, r#"{"since":"yesterday"}"#),
            (Timer::ReferralReconcile, "{}"),
        ] {
            assert!(
                matches!(read_watermark(timer, Some(text)), Reading::Unreadable(r) if r.starts_with(timer.blob())),
                "{text}"
            );
        }
    }

    #[test]
    fn a_watermark_is_stale_after_three_of_its_longest_gaps() {
        let now = at("2026-12-02T10:00:00Z");
        let every_minute = Schedule::parse("0 */1 * * * *").unwrap();
        let daily = Schedule::parse("0 30 3 * * *").unwrap();
        let reading = |t: &str| Reading::At {
            at: at(t),
            retrying: 0,
        };
        let minutes = |n: u64| Duration::from_secs(n * 60);
        let cases = [
            (
                reading("2026-12-02T09:59:30Z"),
                Ok(&every_minute),
                Freshness::Fresh {
                    age: Duration::from_secs(30),
                    limit: minutes(3),
                },
            ),
            (
                reading("2026-12-02T09:57:00Z"),
                Ok(&every_minute),
                Freshness::Fresh {
                    age: minutes(3),
                    limit: minutes(3),
                },
            ),
            (
                reading("2026-12-02T09:56:59Z"),
                Ok(&every_minute),
                Freshness::Stale {
                    age: Duration::from_secs(181),
                    limit: minutes(3),
                },
            ),
            (
                reading("2026-11-30T03:30:00Z"),
                Ok(&daily),
                Freshness::Fresh {
                    age: minutes(2 * 1440 + 390),
                    limit: minutes(3 * 1440),
                },
            ),
            (
                reading("2026-11-28T03:30:00Z"),
                Ok(&daily),
                Freshness::Stale {
                    age: minutes(4 * 1440 + 390),
                    limit: minutes(3 * 1440),
                },
            ),
            (
                reading("2026-12-02T10:05:00Z"),
                Ok(&every_minute),
                Freshness::Fresh {
                    age: Duration::ZERO,
                    limit: minutes(3),
                },
            ),
            (Reading::NeverRan, Ok(&daily), Freshness::NeverRan),
            (
                reading("2026-12-02T09:59:30Z"),
                Err("bad schedule"),
                Freshness::Unknown("bad schedule".into()),
            ),
            (
                Reading::Unreadable("403".into()),
                Ok(&daily),
                Freshness::Unknown("403".into()),
            ),
        ];
        for (reading, schedule, expected) in cases {
            assert_eq!(freshness(&reading, schedule, now), expected, "{reading:?}");
        }
    }

    #[test]
    fn reasons_group_by_cause() {
        let reasons = [
            "gave up after 5 attempts: Partner Center: GET referral c5fbb3b6-be74-4795-9fb5-4324c73fed37: HTTP 503",
            "gave up after 5 attempts: Partner Center: GET referral 00000000-0000-4000-8000-000000000001: HTTP 503",
            "mapping: column estimatedamount: `n/a` is not a number",
            "gave up after 5 runs of CrmChanges: Partner Center: GET referral 00000000-0000-4000-8000-000000000002: HTTP 503",
            "mapping:   column estimatedamount: `n/a` is not a number",
            "no reason recorded (moved by the Functions host after its last delivery failed)",
        ]
        .map(String::from);
        assert_eq!(
            group_reasons(&reasons),
            [
                (3, "Partner Center: GET referral <id>: HTTP 503".to_owned()),
                (2, "mapping: column estimatedamount: `n/a` is not a number".to_owned()),
                (1, "no reason recorded (moved by the Functions host after its last delivery failed)".to_owned()),
            ]
        );
        assert_eq!(
            cause("gave up after x attempts: y"),
            "gave up after x attempts: y"
        );
        assert_eq!(
            cause("café c5fbb3b6-be74-4795-9fb5-4324c73fed37é"),
            "café <id>é"
        );
    }

    #[test]
    fn durations_read_in_their_two_largest_units() {
        let cases = [
            (0, "0 s"),
            (45, "45 s"),
            (180, "3 min"),
            (185, "3 min 5 s"),
            (3600 * 26 + 60, "1 d 2 h"),
            (3 * 86_400, "3 d"),
            (86_400 + 5, "1 d"),
        ];
        for (secs, text) in cases {
            assert_eq!(human(Duration::from_secs(secs)), text, "{secs}");
        }
    }

    #[test]
    fn the_verdict_names_each_problem_and_only_those() {
        let now = at("2026-12-02T10:00:00Z");
        let fresh = |timer| WatermarkReport {
            timer,
            reading: Reading::At {
                at: now,
                retrying: 0,
            },
            freshness: Freshness::Fresh {
                age: Duration::ZERO,
                limit: Duration::from_secs(180),
            },
        };
        let healthy = Observations {
            storage_error: None,
            sync_depth: Ok(Some(12)),
            poison_depth: Ok(None),
            watermarks: vec![fresh(Timer::CrmChanges), fresh(Timer::ReferralReconcile)],
            webhook: WebhookState::Registered {
                url: "https://app/api/ReferralWebhook?code=***".into(),
                missing_events: vec![],
                points_here: Some(true),
            },
        };
        assert!(
            verdict(&healthy).is_empty(),
            "a backlog in referral-sync is no problem"
        );
        let unchecked_url = Observations {
            webhook: WebhookState::Registered {
                url: "u".into(),
                missing_events: vec![],
                points_here: None,
            },
            ..healthy.clone()
        };
        assert!(verdict(&unchecked_url).is_empty());

        type Change = fn(&mut Observations);
        let cases: [(Change, &str); 10] = [
            (
                |o| {
                    o.storage_error = Some("403".into());
                    o.sync_depth = Err("403".into());
                    o.poison_depth = Err("not read".into());
                    o.watermarks.clear();
                },
                "the storage account cannot be read: 403",
            ),
            (
                |o| o.poison_depth = Ok(Some(2)),
                "2 entries in referral-sync-poison: `referral-connector poison list`",
            ),
            (
                |o| o.poison_depth = Err("403".into()),
                "referral-sync-poison cannot be read: 403",
            ),
            (
                |o| o.sync_depth = Err("refused".into()),
                "referral-sync cannot be read: refused",
            ),
            (
                |o| {
                    o.watermarks[0].freshness = Freshness::Stale {
                        age: Duration::from_secs(600),
                        limit: Duration::from_secs(180),
                    }
                },
                "CrmChanges has not completed a run for 10 min (more than 3 min)",
            ),
            (
                |o| o.watermarks[1].freshness = Freshness::NeverRan,
                "ReferralReconcile never completed a run (no referral-connector/referral-reconcile.json): check that the app is deployed, REFERRAL_RECONCILE_SCHEDULE is set",
            ),
            (
                |o| o.watermarks[0].freshness = Freshness::Unknown("bad".into()),
                "the CrmChanges watermark cannot be judged: bad",
            ),
            (
                |o| o.webhook = WebhookState::Missing,
                "no webhook registration: run `referral-connector webhook register",
            ),
            (
                |o| {
                    o.webhook = WebhookState::Registered {
                        url: "https://other.test/x".into(),
                        missing_events: vec![],
                        points_here: Some(false),
                    }
                },
                "the webhook points at https://other.test/x, not at this app",
            ),
            (
                |o| {
                    o.webhook = WebhookState::Registered {
                        url: "u".into(),
                        missing_events: vec!["referral-updated"],
                        points_here: Some(true),
                    }
                },
                "the webhook registration lacks referral-updated",
            ),
        ];
        for (change, expected) in cases {
            let mut observed = healthy.clone();
            change(&mut observed);
            let findings = verdict(&observed);
            assert_eq!(findings.len(), 1, "{expected}: {findings:?}");
            assert!(
                findings[0].starts_with(expected),
                "{expected}: {findings:?}"
            );
        }
        let unreadable = Observations {
            webhook: WebhookState::Unreadable("setting PARTNER_CENTER_TENANT_ID is not set".into()),
            ..healthy
        };
        assert_eq!(verdict(&unreadable).len(), 1);
    }
}
