//! Retry policy as data: the schedule, its jitter and `Retry-After`, as pure functions.

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` Herald honours; a receiver asking for more waits this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Delays between attempts after the first: N delays allow N+1 attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// Parses `5s,5m,30m` (units `ms`, `s`, `m`, `h`); an empty text means no retries.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self(Vec::new()));
        }
        text.split(',')
            .map(parse_duration)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The delays, in order.
    pub fn delays(&self) -> &[Duration] {
        &self.0
    }

    /// The delay before the next attempt after `attempts_made` attempts, or `None` when the
    /// schedule is spent. `jitter` in `[0, 1)` spreads retries by up to a tenth of the delay so
    /// that a receiver coming back is not hit by every queued delivery at the same instant.
    pub fn next_delay(&self, attempts_made: usize, jitter: f64) -> Option<Duration> {
        let base = *self.0.get(attempts_made.checked_sub(1)?)?;
        Some(base + base.mul_f64(jitter.clamp(0.0, 1.0) / 10.0))
    }
}

impl std::fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|d| format_duration(*d)).collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses one duration such as `250ms`, `5s`, `30m` or `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 250ms, 5s, 30m or 2h"))?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(format!("{text:?} needs a unit: ms, s, m or h")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Formats a duration in the largest unit that represents it exactly.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// Reads a `Retry-After` value (seconds or an HTTP date), capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_parses_and_prints_back() {
        let text = "5s,5m,30m,2h,5h,10h,10h";
        let schedule = RetrySchedule::parse(text).unwrap();
        assert_eq!(schedule.delays().len(), 7);
        assert_eq!(schedule.to_string(), text);
        assert_eq!(
            RetrySchedule::parse("250ms").unwrap().delays(),
            [Duration::from_millis(250)]
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in ["5", "5x", "s", "-1s", "5s,,5m", "99999999999999999h"] {
            assert!(RetrySchedule::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn next_delay_follows_the_schedule_then_stops() {
        let schedule = RetrySchedule::parse("1s,10s").unwrap();
        assert_eq!(schedule.next_delay(1, 0.0), Some(Duration::from_secs(1)));
        assert_eq!(schedule.next_delay(2, 0.0), Some(Duration::from_secs(10)));
        assert_eq!(schedule.next_delay(3, 0.0), None);
        assert_eq!(
            schedule.next_delay(2, 0.999),
            Some(Duration::from_millis(10_999))
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
