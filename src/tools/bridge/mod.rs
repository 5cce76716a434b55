//! `herald bridge slack`: receives signed deliveries from Herald or Cirrus CI (FLAT or DATA,
//! ids as strings or numbers), verifies them, and shows them in Slack, in one of two ways:
//!
//! - to an incoming webhook (`--slack-url`, [`webhook`]): one message per event;
//! - as a Slack app (`--bot-token`, [`app`]): one message per build, edited in place as the build
//!   moves on, with one reply per task in its thread, kept up to date the same way.
//!
//! Either way the bridge answers the sender only once Slack shows the delivery. When Slack stays
//! busy past `max_wait`, the bridge answers 503 with a `Retry-After`, so the sender's own
//! (durable) retry schedule takes over rather than the bridge holding deliveries in memory.

mod app;
mod args;
mod board;
mod pacer;
mod slack_api;
mod webhook;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value as Json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::retry::format_duration;
use crate::slack;
use crate::tools::receive::{Check, Incoming, Signatures, now_secs};

pub use app::BUILDS;
pub use args::{BotTokenParser, SlackArgs, SlackUrl, SlackUrlParser};
pub use slack_api::BotToken;
pub use webhook::{Undelivered, next_wait, post};

/// How many deliveries the bridge remembers to skip repeats (delivery is at least once).
const REMEMBERED: usize = 4096;

/// How the bridge checks, filters and forwards.
/// No `Debug`: it holds the secret.
#[derive(Clone)]
pub struct BridgeOptions {
    pub secret: String,
    /// Where the messages go.
    pub destination: Destination,
    /// Forward only events reaching these statuses; empty forwards every event.
    pub only_status: Vec<String>,
    /// Where builds and tasks link to (`https://cirrus-ci.com` for Cirrus CI's pages).
    pub public_url: Option<String>,
    /// How far a `webhook-timestamp` may be from now; zero accepts any.
    pub tolerance: Duration,
    /// How long a delivery may wait for Slack before the retry is handed back to the sender.
    pub max_wait: Duration,
    /// Refuse deliveries without a valid Standard Webhooks signature whose `webhook-timestamp`
    /// is within `tolerance` of now: a captured delivery replayed later is refused.
    pub require_timestamp: bool,
    /// Send to Slack through the proxy that `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and
    /// `NO_PROXY` name. Off, the bridge connects directly: a proxy variable set for other
    /// programs must not see Slack's token (in the webhook URL's path, or the bot token).
    pub use_proxy_env: bool,
}

/// Where the bridge shows deliveries.
#[derive(Clone)]
pub enum Destination {
    /// A Slack incoming webhook (its URL holds Slack's token): one message per event.
    Webhook(url::Url),
    /// A Slack app: one message per build, edited in place, and one reply per task.
    App(AppOptions),
}

/// The Slack app mode's options. No `Debug` beyond the token's mask.
#[derive(Clone)]
pub struct AppOptions {
    /// The bot token (`xoxb-…`, scope `chat:write`).
    pub token: BotToken,
    /// The channel to post to: its id (`C0123`) or `#name`.
    pub channel: String,
    /// Slack's Web API (`https://slack.com/api`).
    pub api: url::Url,
    /// The pause between two calls to Slack (Slack allows about one message a second per
    /// channel).
    pub channel_interval: Duration,
}

/// Recent delivery keys, the oldest forgotten past [`REMEMBERED`].
#[derive(Default)]
struct Recent(Mutex<(HashSet<String>, VecDeque<String>)>);

impl Recent {
    fn contains(&self, key: &str) -> bool {
        self.0.lock().is_ok_and(|recent| recent.0.contains(key))
    }

    fn insert(&self, key: &str) {
        if let Ok(mut recent) = self.0.lock() {
            if recent.0.insert(key.to_owned()) {
                recent.1.push_back(key.to_owned());
            }
            if recent.1.len() > REMEMBERED
                && let Some(oldest) = recent.1.pop_front()
            {
                recent.0.remove(&oldest);
            }
        }
    }
}

/// How a delivery is answered.
enum Reply {
    /// 200, with a word on what happened.
    Done(&'static str),
    /// 503 with `Retry-After`: Slack is busy; the sender should try again after this long.
    Later(Duration),
    /// 502: Slack refused (one sentence); the sender's retry may still help once fixed.
    Refused(String),
    /// 422: the delivery lacks what the mode needs (one sentence).
    Unprocessable(&'static str),
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Done(what) => answer(StatusCode::OK, what),
            Reply::Later(wait) => {
                let mut response = answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Slack is busy; deliver this again later.",
                );
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            Reply::Refused(reason) => {
                tracing::warn!(%reason, "Slack refused a message");
                answer(StatusCode::BAD_GATEWAY, &reason)
            }
            Reply::Unprocessable(reason) => {
                tracing::warn!(%reason, "refused a delivery the bridge cannot place");
                answer(StatusCode::UNPROCESSABLE_ENTITY, reason)
            }
        }
    }
}

enum Mode {
    Webhook(webhook::Webhook),
    App(app::App),
}

struct Bridge {
    options: BridgeOptions,
    client: reqwest::Client,
    mode: Mode,
}

/// The bridge's routes: every method and path is a delivery. Called within a Tokio runtime:
/// the app mode starts its sender task here, which stops when the router is dropped.
pub fn router(options: BridgeOptions) -> anyhow::Result<Router> {
    let mut client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(crate::delivery::client::AGENT);
    if !options.use_proxy_env {
        client = client.no_proxy();
    }
    let client = client.build().context("building the Slack HTTP client")?;
    let mode = match &options.destination {
        Destination::Webhook(url) => Mode::Webhook(webhook::Webhook {
            url: url.clone(),
            forwarded: Recent::default(),
        }),
        Destination::App(app) => {
            let api = slack_api::SlackApi::new(client.clone(), &app.api, &app.token)?;
            Mode::App(app::App::start(
                api,
                app,
                options.public_url.as_deref(),
                options.max_wait,
            ))
        }
    };
    let bridge = Bridge {
        options,
        client,
        mode,
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
    let reply = if incoming.event == "ping" {
        match &bridge.mode {
            Mode::Webhook(webhook) => {
                let message = slack::ping_message();
                webhook
                    .forward(&bridge.client, &key, &message, options.max_wait)
                    .await
            }
            Mode::App(app) => app.ping(&key).await,
        }
    } else if incoming.is_ci_event() {
        let status = incoming.status().unwrap_or_default();
        if !options.only_status.is_empty() && !options.only_status.contains(&status) {
            return answer(StatusCode::OK, "filtered out by --only-status");
        }
        match &bridge.mode {
            Mode::Webhook(webhook) => {
                let message =
                    slack::message(&incoming.slack_event(), options.public_url.as_deref());
                webhook
                    .forward(&bridge.client, &key, &message, options.max_wait)
                    .await
            }
            Mode::App(app) => {
                let fact = board::Fact {
                    repository: incoming.part("repository"),
                    build: incoming.part("build"),
                    task: match incoming.event.as_str() {
                        "task" => incoming.part("task"),
                        _ => &Json::Null,
                    },
                    at: headers
                        .get("x-cirrus-timestamp")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.trim().parse().ok()),
                };
                app.deliver(&key, &fact).await
            }
        }
    } else {
        return answer(StatusCode::OK, "not a build or task event; ignored");
    };
    if let Reply::Done(what) = &reply {
        tracing::info!(event = %incoming.event, delivery = ?incoming.delivery, what, "delivery answered");
    }
    reply.into_response()
}

/// `herald bridge slack`: serves until SIGINT or SIGTERM.
pub async fn run(listen: std::net::SocketAddr, options: BridgeOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let what = match &options.destination {
        Destination::Webhook(_) => "Slack".to_owned(),
        Destination::App(app) => format!("Slack channel {}", app.channel),
    };
    let router = router(options)?;
    println!("Forwarding deliveries received on http://{addr}/ to {what}.");
    let shutdown = CancellationToken::new();
    crate::app::cancel_on_signal(shutdown.clone());
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the bridge")
}
