//! When the next call to Slack may go: one interval after the last one (Slack allows about one
//! message a second per channel), later when Slack said `Retry-After`, and backing off while
//! its Web API does not answer.

use std::time::Duration;

use tokio::time::Instant;

use super::slack_api::Failure;

/// The longest pause after Slack keeps failing to answer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The pace of one channel.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next_at: Instant,
    /// Calls in a row that got no answer.
    failures: u32,
}

impl Pacer {
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            next_at: now,
            failures: 0,
        }
    }

    /// When the next call may go.
    pub fn ready_at(&self) -> Instant {
        self.next_at
    }

    /// Takes in the outcome of a call sent at `sent_at` and answered at `now`.
    pub fn after<T>(&mut self, sent_at: Instant, now: Instant, outcome: &Result<T, Failure>) {
        let earliest = match outcome {
            Err(Failure::RateLimited(wait)) => now + (*wait).max(self.interval),
            Err(Failure::Unavailable(_)) => {
                self.failures += 1;
                let backoff = Duration::from_secs(1 << (self.failures - 1).min(5));
                now + backoff.min(MAX_BACKOFF)
            }
            _ => {
                self.failures = 0;
                sent_at + self.interval
            }
        };
        self.next_at = self.next_at.max(earliest);
    }

    /// What to tell a sender whose delivery could not be shown in time: how long before it
    /// tries again (whole seconds, at least one).
    pub fn retry_after(&self, now: Instant) -> Duration {
        let wait = self.next_at.saturating_duration_since(now);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Duration::from_secs(seconds.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::bridge::slack_api::Posted;

    type Answer = Result<Posted, Failure>;

    #[test]
    fn calls_are_an_interval_apart_and_wait_out_retry_after() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Duration::from_millis(1000), start);
        assert_eq!(pacer.ready_at(), start);
        let ok: Answer = Ok(Posted {
            channel: "C".into(),
            ts: "1".into(),
        });
        pacer.after(start, start + Duration::from_millis(200), &ok);
        assert_eq!(pacer.ready_at(), start + Duration::from_secs(1));

        let at = start + Duration::from_secs(1);
        let limited: Answer = Err(Failure::RateLimited(Duration::from_secs(3)));
        pacer.after(at, at, &limited);
        assert_eq!(pacer.ready_at(), at + Duration::from_secs(3));
        assert_eq!(pacer.retry_after(at), Duration::from_secs(3));
        assert_eq!(
            pacer.retry_after(at + Duration::from_millis(2500)),
            Duration::from_secs(1)
        );
        assert_eq!(
            pacer.retry_after(at + Duration::from_secs(60)),
            Duration::from_secs(1),
            "never less than a second"
        );
    }

    #[test]
    fn an_unanswered_call_backs_off_until_slack_answers() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Duration::from_millis(50), start);
        let down: Answer = Err(Failure::Unavailable("HTTP 503".into()));
        let mut at = start;
        for expected in [1, 2, 4, 8, 16, 30, 30] {
            pacer.after(at, at, &down);
            assert_eq!(pacer.ready_at(), at + Duration::from_secs(expected));
            at = pacer.ready_at();
        }
        let refused: Answer = Err(Failure::Refused("no".into()));
        pacer.after(at, at, &refused);
        assert_eq!(pacer.ready_at(), at + Duration::from_millis(50));
        pacer.after(at, at, &down);
        assert_eq!(
            pacer.ready_at(),
            at + Duration::from_secs(1),
            "an answer ends the backoff"
        );
    }
}
