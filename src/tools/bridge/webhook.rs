//! The incoming-webhook mode: one Slack message per event, posted to `--slack-url`, retrying
//! Slack's 429 and 5xx answers within `max_wait` and honouring their `Retry-After`.

use std::time::{Duration, Instant, SystemTime};

use axum::http::header;
use serde_json::Value as Json;

use super::{Recent, Reply};
use crate::domain::retry::parse_retry_after;

/// The incoming-webhook mode's state: the URL and the deliveries already forwarded.
pub(super) struct Webhook {
    pub url: url::Url,
    pub forwarded: Recent,
}

impl Webhook {
    /// Posts `message` for the delivery known as `key`, unless it was forwarded already.
    pub async fn forward(
        &self,
        client: &reqwest::Client,
        key: &str,
        message: &Json,
        max_wait: Duration,
    ) -> Reply {
        if self.forwarded.contains(key) {
            return Reply::Done("already forwarded");
        }
        match post(client, &self.url, message, max_wait).await {
            Ok(()) => {
                self.forwarded.insert(key);
                Reply::Done("forwarded")
            }
            Err(Undelivered::Later(wait)) => Reply::Later(wait),
            Err(Undelivered::Refused(reason)) => Reply::Refused(reason),
        }
    }
}

/// Why a message did not reach Slack.
#[derive(Debug, PartialEq, Eq)]
pub enum Undelivered {
    /// Slack is busy or failing; try again after this long.
    Later(Duration),
    /// Slack refused the message (one sentence); retrying will not help.
    Refused(String),
}

/// After an answer of `status` (none when no answer came) to attempt `attempt` (from 1), how
/// long to wait before the next one; `None` means do not retry. `Retry-After` counts on 429 and
/// 5xx; otherwise the wait doubles from one second.
pub fn next_wait(
    status: Option<u16>,
    retry_after: Option<&str>,
    attempt: u32,
    now: SystemTime,
) -> Option<Duration> {
    let backoff = Duration::from_secs(1 << attempt.saturating_sub(1).min(6));
    match status {
        None => Some(backoff),
        Some(429 | 500..=599) => Some(
            retry_after
                .and_then(|value| parse_retry_after(value, now))
                .unwrap_or(backoff),
        ),
        Some(_) => None,
    }
}

/// Posts `message` to Slack, retrying within `max_wait`.
pub async fn post(
    client: &reqwest::Client,
    url: &url::Url,
    message: &Json,
    max_wait: Duration,
) -> Result<(), Undelivered> {
    let deadline = Instant::now() + max_wait;
    let body = message.to_string();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = client
            .post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let (status, retry_after, detail) = match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                let text = response.text().await.unwrap_or_default();
                (
                    Some(status),
                    retry_after,
                    format!("{status} {}", text.trim()),
                )
            }
            // Without the URL, which carries Slack's token.
            Err(err) => (None, None, err.without_url().to_string()),
        };
        let Some(wait) = next_wait(status, retry_after.as_deref(), attempt, SystemTime::now())
        else {
            return Err(Undelivered::Refused(format!(
                "Slack refused the message: {detail}."
            )));
        };
        tracing::info!(attempt, wait = ?wait, %detail, "Slack did not take the message; retrying");
        if Instant::now() + wait > deadline {
            return Err(Undelivered::Later(wait));
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_is_retried_on_429_and_5xx_only() {
        let now = SystemTime::now();
        assert_eq!(
            next_wait(Some(429), Some("3"), 1, now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            next_wait(Some(503), None, 3, now),
            Some(Duration::from_secs(4))
        );
        assert_eq!(next_wait(None, None, 1, now), Some(Duration::from_secs(1)));
        assert_eq!(next_wait(Some(400), Some("3"), 1, now), None);
        assert_eq!(next_wait(Some(404), None, 1, now), None);
    }
}
