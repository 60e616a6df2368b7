//! Timer schedules as the Functions timer trigger reads them: six-field NCRONTAB
//! (`{second} {minute} {hour} {day} {month} {day-of-week}`; five fields mean seconds 0), or a
//! `hh:mm:ss` interval. Only what `status` and `check` need: the longest time between two
//! runs, so that a watermark older than a few of those means the timer stopped. Pure.

use std::time::Duration;

use time::{Date, Month};

/// A schedule that cannot be used; names the text and shows a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is not a timer schedule: {reason} (NCRONTAB `second minute hour day month day-of-week`, e.g. `0 */5 * * * *`)"
)]
pub struct ScheduleError {
    text: String,
    reason: String,
}

/// A parsed schedule and its longest gap between two runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    longest_gap: Duration,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// Days scanned for matching dates: 57 years, two full cycles of weekdays and leap years.
const SCANNED_DAYS: i64 = 57 * 366;

impl Schedule {
    /// Parses a schedule; a schedule that never fires is an error too.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let error = |reason: String| ScheduleError {
            text: text.to_owned(),
            reason,
        };
        if let Some(interval) = parse_interval(text.trim()) {
            return match interval {
                Some(d) if !d.is_zero() => Ok(Self { longest_gap: d }),
                _ => Err(error(
                    "an interval must be hh:mm:ss and more than zero".into(),
                )),
            };
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        let fields: Vec<&str> = match fields.len() {
            6 => fields,
            5 => std::iter::once("0").chain(fields).collect(),
            n => return Err(error(format!("it has {n} fields, not 6"))),
        };
        let spec = [
            ("second", 0, 59, &[][..], 0),
            ("minute", 0, 59, &[][..], 0),
            ("hour", 0, 23, &[][..], 0),
            ("day", 1, 31, &[][..], 0),
            ("month", 1, 12, &MONTHS[..], 1),
            ("day-of-week", 0, 6, &WEEKDAYS[..], 0),
        ];
        let mut sets = Vec::with_capacity(6);
        for (field, (name, min, max, names, first)) in fields.iter().zip(spec) {
            sets.push(
                parse_field(field, min, max, names, first)
                    .map_err(|reason| error(format!("{name} `{field}`: {reason}")))?,
            );
        }
        let longest_gap = longest_gap(&sets).ok_or_else(|| error("it never fires".into()))?;
        Ok(Self { longest_gap })
    }

    /// The longest time between two consecutive runs.
    pub fn longest_gap(&self) -> Duration {
        self.longest_gap
    }
}

/// `Some` when `text` looks like an interval (`hh:mm:ss`, `d.hh:mm:ss`); the inner `None`
/// when it does but does not parse.
fn parse_interval(text: &str) -> Option<Option<Duration>> {
    if !text.contains(':') || text.contains(' ') {
        return None;
    }
    let (days, clock) = match text.split_once('.') {
        Some((d, rest)) => (d.parse::<u64>().ok(), rest),
        None => (Some(0), text),
    };
    let parts: Vec<Option<u64>> = clock.split(':').map(|p| p.parse().ok()).collect();
    Some(match (days, parts.as_slice()) {
        (Some(d), [Some(h), Some(m), Some(s)]) if *h < 24 && *m < 60 && *s < 60 => {
            Some(Duration::from_secs(d * 86_400 + h * 3600 + m * 60 + s))
        }
        _ => None,
    })
}

/// The values a field allows, as a membership table indexed by value.
fn parse_field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    first_name: u32,
) -> Result<Vec<bool>, String> {
    let value = |raw: &str| -> Result<u32, String> {
        let lower = raw.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(first_name + i as u32);
        }
        match raw.parse::<u32>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(format!("`{raw}` is not a value from {min} to {max}")),
        }
    };
    let mut allowed = vec![false; max as usize + 1];
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => match step.parse::<u32>() {
                Ok(s) if s > 0 => (range, s),
                _ => return Err(format!("step `{step}` is not a whole number above 0")),
            },
            None => (item, 1),
        };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else if item.contains('/') {
            (value(range)?, max)
        } else {
            let v = value(range)?;
            (v, v)
        };
        if from > to {
            return Err(format!("range `{range}` runs backwards"));
        }
        for v in (from..=to).step_by(step as usize) {
            allowed[v as usize] = true;
        }
    }
    Ok(allowed)
}

/// The longest gap between runs over two 28-year calendar cycles; `None` when the schedule
/// matches fewer than two runs in that time. Day of month and day of week must both match,
/// as in NCrontab.
fn longest_gap(sets: &[Vec<bool>]) -> Option<Duration> {
    let [seconds, minutes, hours, days, months, weekdays] = sets else {
        return None;
    };
    let mut times = Vec::new();
    for h in (0..24).filter(|h| hours[*h]) {
        for m in (0..60).filter(|m| minutes[*m]) {
            for s in (0..60).filter(|s| seconds[*s]) {
                times.push((h * 3600 + m * 60 + s) as i64);
            }
        }
    }
    let (first, last) = (*times.first()?, *times.last()?);
    let within_day = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let start = Date::from_calendar_date(2001, Month::January, 1).ok()?;
    let mut previous: Option<i64> = None;
    let mut longest = within_day;
    let mut runs_on_days = 0;
    for offset in 0..SCANNED_DAYS {
        let Some(day) = start.checked_add(time::Duration::days(offset)) else {
            break;
        };
        let matches = months[u8::from(day.month()) as usize]
            && days[day.day() as usize]
            && weekdays[day.weekday().number_days_from_sunday() as usize];
        if !matches {
            continue;
        }
        runs_on_days += 1;
        if let Some(previous) = previous {
            longest = longest.max((offset - previous) * 86_400 - last + first);
        }
        previous = Some(offset);
    }
    let runs = runs_on_days * times.len();
    (runs >= 2).then(|| Duration::from_secs(longest.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_of_each_schedule() {
        let hour = 3600;
        let day = 86_400;
        let cases = [
            ("0 */1 * * * *", 60),
            ("0 */5 * * * *", 300),
            ("*/10 * * * * *", 10),
            ("* * * * * *", 1),
            ("0 30 3 * * *", day),
            ("0 0 */2 * * *", 2 * hour),
            ("0 0 9-17 * * *", 16 * hour),
            ("0 0 9-17 * * 1-5", 2 * day + 16 * hour),
            ("0 30 9 * * Mon-Fri", 3 * day),
            ("0 0 0 1 * *", 31 * day),
            ("0 0 0 1 Jan *", 366 * day),
            ("0 0 0 29 2 *", 1461 * day),
            ("0 5,10,50 * * * *", 40 * 60),
            ("0 0/20 * * * *", 20 * 60),
            ("*/5 * * * *", 300),
            ("00:05:00", 300),
            ("1.00:00:00", day),
        ];
        for (text, seconds) in cases {
            let schedule = Schedule::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                schedule.longest_gap(),
                Duration::from_secs(seconds),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let cases = [
            ("61 * * * * *", "second `61`"),
            ("0 * * * *  * *", "7 fields"),
            ("0 0 25 * * *", "hour `25`"),
            ("0 */0 * * * *", "step `0`"),
            ("0 0 0 30 2 *", "never fires"),
            ("0 0 0 * * Funday", "day-of-week `Funday`"),
            ("0 0 5-1 * * *", "runs backwards"),
            ("25:00:00", "hh:mm:ss"),
            ("00:00:00", "more than zero"),
            ("", "0 fields"),
        ];
        for (text, expected) in cases {
            let err = Schedule::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.contains("e.g. `0 */5 * * * *`"), "{err}");
        }
    }
}
