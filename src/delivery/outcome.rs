//! What an attempt's answer means for its delivery: a pure function of the answer and the
//! policy, tested without I/O.

use std::time::{Duration, SystemTime};

use crate::domain::RetrySchedule;
use crate::domain::retry::parse_retry_after;

/// The fate of a delivery after one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Try again at this time (ms since the epoch).
    Retry { at: i64 },
    /// The schedule is spent.
    GaveUp,
    /// The receiver answered 410 Gone: the delivery fails and the endpoint is disabled.
    Gone,
}

impl Outcome {
    /// The metrics label of this outcome.
    pub fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry { .. } => "retrying",
            Self::GaveUp | Self::Gone => "failed",
        }
    }
}

/// Decides an attempt's outcome. `attempts_made` counts this attempt; `retry_after` is the
/// response's header, honoured on 429 and 503 (capped at one hour) in place of the schedule.
pub fn decide(
    status: Option<u16>,
    retry_after: Option<&str>,
    attempts_made: usize,
    schedule: &RetrySchedule,
    now_ms: i64,
    jitter: f64,
) -> Outcome {
    match status {
        Some(200..=299) => return Outcome::Delivered,
        Some(410) => return Outcome::Gone,
        _ => {}
    }
    let Some(scheduled) = schedule.next_delay(attempts_made, jitter) else {
        return Outcome::GaveUp;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms.max(0) as u64);
    let delay = match (status, retry_after) {
        (Some(429 | 503), Some(value)) => parse_retry_after(value, now).unwrap_or(scheduled),
        _ => scheduled,
    };
    Outcome::Retry {
        at: now_ms + delay.as_millis() as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule::parse("1s,1m").unwrap()
    }

    #[test]
    fn success_is_any_2xx() {
        assert_eq!(
            decide(Some(200), None, 1, &schedule(), 0, 0.0),
            Outcome::Delivered
        );
        assert_eq!(
            decide(Some(204), None, 1, &schedule(), 0, 0.0),
            Outcome::Delivered
        );
    }

    #[test]
    fn failures_follow_the_schedule_then_give_up() {
        for status in [None, Some(301), Some(400), Some(500)] {
            assert_eq!(
                decide(status, None, 1, &schedule(), 0, 0.0),
                Outcome::Retry { at: 1000 }
            );
            assert_eq!(
                decide(status, None, 2, &schedule(), 0, 0.0),
                Outcome::Retry { at: 60_000 }
            );
            assert_eq!(
                decide(status, None, 3, &schedule(), 0, 0.0),
                Outcome::GaveUp
            );
        }
    }

    #[test]
    fn gone_disables() {
        assert_eq!(
            decide(Some(410), None, 1, &schedule(), 0, 0.0),
            Outcome::Gone
        );
    }

    #[test]
    fn retry_after_counts_only_on_429_and_503_and_is_capped() {
        assert_eq!(
            decide(Some(429), Some("7"), 1, &schedule(), 0, 0.0),
            Outcome::Retry { at: 7000 }
        );
        assert_eq!(
            decide(Some(503), Some("99999"), 1, &schedule(), 0, 0.0),
            Outcome::Retry { at: 3_600_000 }
        );
        assert_eq!(
            decide(Some(500), Some("7"), 1, &schedule(), 0, 0.0),
            Outcome::Retry { at: 1000 }
        );
        assert_eq!(
            decide(Some(429), Some("7"), 3, &schedule(), 0, 0.0),
            Outcome::GaveUp
        );
    }
}
