//! `herald bridge slack`: receives signed deliveries from Herald or Cirrus CI (FLAT or DATA,
//! ids as strings or numbers), verifies them, and posts a Slack message for each to an incoming
//! webhook, retrying Slack's 429 and 5xx answers and honouring their `Retry-After`.
//!
//! The bridge answers the sender only once Slack has the message. When Slack stays busy past
//! `max_wait`, the bridge answers 503 with a `Retry-After`, so the sender's own (durable) retry
//! schedule takes over rather than the bridge holding messages in memory.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value as Json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::retry::{format_duration, parse_retry_after};
use crate::slack;
use crate::tools::receive::{Check, Incoming, Signatures, now_secs};

/// How many deliveries the bridge remembers to skip repeats (delivery is at least once).
const REMEMBERED: usize = 4096;

/// How the bridge checks, filters and forwards.
/// No `Debug`: it holds the secret.
#[derive(Clone)]
pub struct BridgeOptions {
    pub secret: String,
    /// The Slack incoming-webhook URL.
    pub slack_url: url::Url,
    /// Forward only events reaching these statuses; empty forwards every event.
    pub only_status: Vec<String>,
    /// Where builds and tasks link to (`https://cirrus-ci.com` for Cirrus CI's pages).
    pub public_url: Option<String>,
    /// How far a `webhook-timestamp` may be from now; zero accepts any.
    pub tolerance: Duration,
    /// How long to keep retrying Slack before handing the retry back to the sender.
    pub max_wait: Duration,
    /// Refuse deliveries without a valid Standard Webhooks signature whose `webhook-timestamp`
    /// is within `tolerance` of now: a captured delivery replayed later is refused.
    pub require_timestamp: bool,
    /// Send to Slack through the proxy that `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and
    /// `NO_PROXY` name. Off, the bridge connects directly: a proxy variable set for other
    /// programs must not see Slack's token, which is in the URL's path.
    pub use_proxy_env: bool,
}

/// Slack's incoming-webhook URL. Its path is Slack's token, so neither `Debug` nor a parse
/// error shows it.
#[derive(Clone)]
pub struct SlackUrl(pub url::Url);

impl std::fmt::Debug for SlackUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlackUrl(***)")
    }
}

/// Parses `--slack-url` / `SLACK_WEBHOOK_URL`: an http or https URL with a host. The error
/// says what is wrong without the value.
#[derive(Clone)]
pub struct SlackUrlParser;

impl clap::builder::TypedValueParser for SlackUrlParser {
    type Value = SlackUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<SlackUrl, clap::Error> {
        let refuse = |why: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "SLACK_WEBHOOK_URL (or --slack-url) {why}; its value is not shown, since it holds Slack's token\n"
                ),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refuse("is not UTF-8"))?;
        let url = url::Url::parse(text.trim()).map_err(|_| refuse("is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(refuse("is not an http or https URL"));
        }
        Ok(SlackUrl(url))
    }
}

struct Bridge {
    options: BridgeOptions,
    client: reqwest::Client,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Bridge {
    fn seen(&self, id: &str) -> bool {
        self.seen.lock().is_ok_and(|seen| seen.0.contains(id))
    }

    fn remember(&self, id: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            if seen.0.insert(id.to_owned()) {
                seen.1.push_back(id.to_owned());
            }
            if seen.1.len() > REMEMBERED
                && let Some(oldest) = seen.1.pop_front()
            {
                seen.0.remove(&oldest);
            }
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

/// The bridge's routes: every method and path is a delivery.
pub fn router(options: BridgeOptions) -> anyhow::Result<Router> {
    let mut client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(crate::delivery::client::AGENT);
    if !options.use_proxy_env {
        client = client.no_proxy();
    }
    let client = client.build().context("building the Slack HTTP client")?;
    let bridge = Bridge {
        options,
        client,
        seen: Mutex::default(),
    };
    Ok(Router::new().fallback(handle).with_state(Arc::new(bridge)))
}

fn answer(status: StatusCode, text: &str) -> Response {
    (status, format!("{text}\n")).into_response()
}

/// What identifies a delivery among repeats, from what its signature covers: the
/// `webhook-id` when the Standard Webhooks signature (which signs it) is valid, else the body's
/// SHA-256. `X-Cirrus-Delivery` is not signed, so a replayed body under a new id is still a
/// repeat.
fn repeat_key(headers: &HeaderMap, body: &[u8], signatures: &Signatures) -> String {
    use sha2::Digest as _;
    let signed_id = headers
        .get("webhook-id")
        .and_then(|id| id.to_str().ok())
        .filter(|_| signatures.standard == Check::Valid);
    match signed_id {
        Some(id) => format!("id:{id}"),
        None => format!("sha256:{}", hex::encode(sha2::Sha256::digest(body))),
    }
}

async fn handle(State(bridge): State<Arc<Bridge>>, headers: HeaderMap, body: Bytes) -> Response {
    let options = &bridge.options;
    let signatures = Signatures::check(
        &headers,
        &body,
        Some(&options.secret),
        options.tolerance,
        now_secs(),
    );
    if options.require_timestamp && signatures.standard != Check::Valid {
        tracing::warn!(
            standard = signatures.standard.as_str(),
            "refused a delivery without a fresh Standard Webhooks signature"
        );
        let why = format!(
            "This bridge requires a valid webhook-signature with a webhook-timestamp within {} of now.",
            format_duration(options.tolerance)
        );
        return answer(StatusCode::BAD_REQUEST, &why);
    }
    if !signatures.accepted() {
        tracing::warn!(
            cirrus = signatures.cirrus.as_str(),
            standard = signatures.standard.as_str(),
            "refused a delivery whose signature is not valid"
        );
        return answer(
            StatusCode::BAD_REQUEST,
            "The signature is not valid for this bridge's secret.",
        );
    }
    let incoming = Incoming::parse(&headers, &body);
    let key = repeat_key(&headers, &body, &signatures);
    if bridge.seen(&key) {
        return answer(StatusCode::OK, "already forwarded");
    }
    let message = if incoming.event == "ping" {
        slack::ping_message()
    } else if incoming.is_ci_event() {
        let status = incoming.status().unwrap_or_default();
        if !options.only_status.is_empty() && !options.only_status.contains(&status) {
            return answer(StatusCode::OK, "filtered out by --only-status");
        }
        slack::message(&incoming.slack_event(), options.public_url.as_deref())
    } else {
        return answer(StatusCode::OK, "not a build or task event; ignored");
    };
    match post(
        &bridge.client,
        &options.slack_url,
        &message,
        options.max_wait,
    )
    .await
    {
        Ok(()) => {
            bridge.remember(&key);
            tracing::info!(event = %incoming.event, delivery = ?incoming.delivery, "forwarded to Slack");
            answer(StatusCode::OK, "forwarded")
        }
        Err(Undelivered::Later(wait)) => {
            let mut response = answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "Slack is busy; deliver this again later.",
            );
            let seconds = wait.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Err(Undelivered::Refused(reason)) => {
            tracing::warn!(%reason, "Slack refused a message");
            answer(StatusCode::BAD_GATEWAY, &reason)
        }
    }
}

/// `herald bridge slack`: serves until SIGINT or SIGTERM.
pub async fn run(listen: std::net::SocketAddr, options: BridgeOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let router = router(options)?;
    println!("Forwarding deliveries received on http://{addr}/ to Slack.");
    let shutdown = CancellationToken::new();
    crate::app::cancel_on_signal(shutdown.clone());
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the bridge")
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
