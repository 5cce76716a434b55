//! A fake Slack incoming webhook: it checks a message the way Slack does (text, or well-formed
//! blocks within Slack's limits), answers like Slack (`ok`, `invalid_blocks`, 429 with
//! `Retry-After`), and records what it accepted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    accepted: Mutex<Vec<Value>>,
    requests: Mutex<usize>,
    /// Answers to give before accepting: (status, Retry-After).
    script: Mutex<VecDeque<(u16, Option<&'static str>)>>,
    arrived: Notify,
}

#[derive(Clone)]
pub struct FakeSlack {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl FakeSlack {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let router = axum::Router::new()
            .fallback(incoming)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}/services/T000/B000/XXXX", self.addr)
    }

    /// Answers the next requests with these statuses (and `Retry-After` values), in order.
    pub fn script(&self, replies: impl IntoIterator<Item = (u16, Option<&'static str>)>) {
        self.inner.script.lock().unwrap().extend(replies);
    }

    /// Every request that came, accepted or not.
    pub fn requests(&self) -> usize {
        *self.inner.requests.lock().unwrap()
    }

    pub fn accepted(&self) -> Vec<Value> {
        self.inner.accepted.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages were accepted (at most 20 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.inner.arrived.notified();
            let accepted = self.accepted();
            if accepted.len() >= n {
                return accepted;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("expected {n} Slack messages, got {accepted:#?}");
            }
        }
    }
}

/// Slack's checks, as its documentation states them; `None` when the message is fine.
pub fn problem(message: &Value) -> Option<&'static str> {
    let text = message.get("text").and_then(Value::as_str);
    let blocks = message.get("blocks");
    if text.is_none_or(str::is_empty) && blocks.is_none() {
        return Some("no_text");
    }
    let blocks = blocks?;
    let Some(blocks) = blocks.as_array() else {
        return Some("invalid_blocks_format");
    };
    if blocks.len() > 50 {
        return Some("invalid_blocks");
    }
    let mrkdwn_ok = |value: &Value, limit: usize| {
        matches!(value["type"].as_str(), Some("mrkdwn" | "plain_text"))
            && value["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty() && t.len() <= limit)
    };
    for block in blocks {
        let ok = match block["type"].as_str() {
            Some("section") => {
                let text_ok = block.get("text").is_none_or(|t| mrkdwn_ok(t, 3000));
                let fields_ok = block.get("fields").is_none_or(|fields| {
                    fields.as_array().is_some_and(|fields| {
                        fields.len() <= 10 && fields.iter().all(|f| mrkdwn_ok(f, 2000))
                    })
                });
                (block.get("text").is_some() || block.get("fields").is_some())
                    && text_ok
                    && fields_ok
            }
            Some("context") => block["elements"].as_array().is_some_and(|e| {
                !e.is_empty() && e.len() <= 10 && e.iter().all(|e| mrkdwn_ok(e, 3000))
            }),
            Some("actions") => block["elements"].as_array().is_some_and(|elements| {
                elements.iter().all(|button| {
                    button["type"] == "button"
                        && mrkdwn_ok(&button["text"], 75)
                        && button["url"]
                            .as_str()
                            .is_some_and(|url| url.starts_with("http"))
                })
            }),
            _ => false,
        };
        if !ok {
            return Some("invalid_blocks");
        }
    }
    None
}

async fn incoming(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    *inner.requests.lock().unwrap() += 1;
    if let Some((status, retry_after)) = inner.script.lock().unwrap().pop_front() {
        let mut response = (StatusCode::from_u16(status).unwrap(), "rate_limited").into_response();
        if let Some(value) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", value.parse().unwrap());
        }
        return response;
    }
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    if let Some(problem) = problem(&message) {
        return (StatusCode::BAD_REQUEST, problem).into_response();
    }
    inner.accepted.lock().unwrap().push(message);
    inner.arrived.notify_waiters();
    (StatusCode::OK, "ok").into_response()
}
