//! A fake Slack Web API: `chat.postMessage` and `chat.update` with Slack's request and answer
//! shapes (a bearer token, `{"ok": true, "channel", "ts", "message"}`, `not_authed`,
//! `invalid_auth`, `channel_not_found`, `message_not_found`, the checks of a message's text and
//! blocks), a switch to answer `429` + `Retry-After` + `ratelimited` to the next calls, a way
//! to delete a message as a person would, and the channel as it now reads.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The bot token the fake accepts.
pub const TOKEN: &str = "xoxb-1-herald-test-token";
/// The channel's id, which Slack answers and `chat.update` needs.
pub const CHANNEL_ID: &str = "C0HERALD";
/// The channel's name, which `chat.postMessage` also takes.
pub const CHANNEL_NAME: &str = "#ci";

/// A message in the channel, as it now reads.
#[derive(Clone, Debug)]
pub struct Message {
    pub ts: String,
    /// The `ts` of the message whose thread holds it; none for a top-level message.
    pub thread_ts: Option<String>,
    pub text: String,
    pub blocks: Value,
    /// How many times `chat.update` changed it.
    pub edits: usize,
}

/// A call the fake answered.
#[derive(Clone, Debug)]
pub struct Call {
    /// `chat.postMessage` or `chat.update`.
    pub method: &'static str,
    pub status: u16,
    /// Slack's `error`, when `ok` was false.
    pub error: Option<String>,
}

#[derive(Default)]
struct Inner {
    messages: Mutex<Vec<Message>>,
    calls: Mutex<Vec<Call>>,
    /// Calls still to answer `ratelimited`, and the `Retry-After` they carry.
    limited: Mutex<(usize, String)>,
    next_ts: Mutex<u64>,
    changed: Notify,
}

#[derive(Clone)]
pub struct FakeSlackApi {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl FakeSlackApi {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let router = Router::new()
            .route(
                "/api/chat.postMessage",
                post(|state, headers, body| call(state, "chat.postMessage", headers, body)),
            )
            .route(
                "/api/chat.update",
                post(|state, headers, body| call(state, "chat.update", headers, body)),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, inner }
    }

    /// The Web API's base, as `--slack-api` takes it.
    pub fn url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Answers the next `calls` calls HTTP 429 with `Retry-After: retry_after` and
    /// `{"ok": false, "error": "ratelimited"}`.
    pub fn rate_limit(&self, calls: usize, retry_after: &str) {
        *self.inner.limited.lock().unwrap() = (calls, retry_after.to_owned());
    }

    /// Deletes a message, as a person in the channel would.
    pub fn delete(&self, ts: &str) {
        self.inner.messages.lock().unwrap().retain(|m| m.ts != ts);
    }

    /// The channel's top-level messages, oldest first.
    pub fn top_level(&self) -> Vec<Message> {
        let messages = self.inner.messages.lock().unwrap();
        messages
            .iter()
            .filter(|m| m.thread_ts.is_none())
            .cloned()
            .collect()
    }

    /// The replies in the thread of the message `ts`, oldest first.
    pub fn replies(&self, ts: &str) -> Vec<Message> {
        let messages = self.inner.messages.lock().unwrap();
        messages
            .iter()
            .filter(|m| m.thread_ts.as_deref() == Some(ts))
            .cloned()
            .collect()
    }

    /// Every call of `method` the fake answered, whatever the answer.
    pub fn calls(&self, method: &str) -> Vec<Call> {
        let calls = self.inner.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Waits until `done` holds of the fake (at most 30 s), else fails naming `what`.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let changed = self.inner.changed.notified();
            if done(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let messages = self.inner.messages.lock().unwrap().clone();
                panic!("{what} did not happen; the channel holds {messages:#?}");
            }
        }
    }
}

fn slack(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error(code: &str) -> Value {
    json!({ "ok": false, "error": code })
}

async fn call(
    State(inner): State<Arc<Inner>>,
    method: &'static str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (status, answer, retry_after) = answer(&inner, method, &headers, &body);
    inner.calls.lock().unwrap().push(Call {
        method,
        status: status.as_u16(),
        error: answer["error"].as_str().map(str::to_owned),
    });
    inner.changed.notify_waiters();
    let mut response = slack(status, answer);
    if let Some(value) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", value.parse().unwrap());
    }
    response
}

/// Slack's answer to a call: its status, body and `Retry-After`.
fn answer(
    inner: &Inner,
    method: &'static str,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, Value, Option<String>) {
    {
        let mut limited = inner.limited.lock().unwrap();
        if limited.0 > 0 {
            limited.0 -= 1;
            let retry_after = Some(limited.1.clone());
            return (
                StatusCode::TOO_MANY_REQUESTS,
                error("ratelimited"),
                retry_after,
            );
        }
    }
    let ok = StatusCode::OK;
    let token = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match token {
        None => return (ok, error("not_authed"), None),
        Some(token) if token != TOKEN => return (ok, error("invalid_auth"), None),
        Some(_) => {}
    }
    let json_body = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let Some(request) = json_body
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten()
    else {
        return (ok, error("invalid_json"), None);
    };
    let channel = request["channel"].as_str().unwrap_or_default();
    let known = channel == CHANNEL_ID || (method == "chat.postMessage" && channel == CHANNEL_NAME);
    if !known {
        return (ok, error("channel_not_found"), None);
    }
    if let Some(problem) = crate::fake_slack::problem(&request) {
        return (ok, error(problem), None);
    }
    let text = request["text"].as_str().unwrap_or_default().to_owned();
    let blocks = request.get("blocks").cloned();
    let mut messages = inner.messages.lock().unwrap();
    if method == "chat.postMessage" {
        let ts = {
            let mut next = inner.next_ts.lock().unwrap();
            *next += 1;
            format!("1700000000.{:06}", *next)
        };
        let thread_ts = request["thread_ts"].as_str().map(str::to_owned);
        let message = Message {
            ts: ts.clone(),
            thread_ts: thread_ts.clone(),
            text: text.clone(),
            blocks: blocks.clone().unwrap_or(Value::Null),
            edits: 0,
        };
        messages.push(message);
        let shown = json!({ "type": "message", "text": text, "ts": ts, "thread_ts": thread_ts, "blocks": blocks });
        return (
            ok,
            json!({ "ok": true, "channel": CHANNEL_ID, "ts": ts, "message": shown }),
            None,
        );
    }
    let ts = request["ts"].as_str().unwrap_or_default();
    let Some(message) = messages.iter_mut().find(|m| m.ts == ts) else {
        return (ok, error("message_not_found"), None);
    };
    message.text = text.clone();
    // Slack keeps a message's blocks when an update leaves them out.
    if let Some(blocks) = blocks {
        message.blocks = blocks;
    }
    message.edits += 1;
    let shown = json!({ "type": "message", "text": text, "blocks": message.blocks });
    (
        ok,
        json!({ "ok": true, "channel": CHANNEL_ID, "ts": ts, "text": text, "message": shown }),
        None,
    )
}
