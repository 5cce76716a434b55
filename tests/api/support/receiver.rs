//! A recording receiver on loopback whose answers a test can script, and what it received.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::Value;
use tokio::sync::Notify;

/// A request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// The path and query the request was sent to.
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The task of a task event's delivery, as its id and status (see [`task_at`]).
    pub fn task(&self) -> (String, String) {
        let body = self.json();
        let task = &body["data"]["task"];
        task_at(
            task["id"].as_str().unwrap(),
            task["status"].as_str().unwrap(),
        )
    }
}

/// A task and a status, as [`Received::task`] gives them.
pub fn task_at(task: &str, status: &str) -> (String, String) {
    (task.to_owned(), status.to_owned())
}

/// An answer the receiver gives.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    /// The body; `received` when none is set.
    pub body: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: None,
        }
    }

    /// Answers with this JSON body.
    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.headers
            .push(("content-type", "application/json".into()));
        self.body = Some(body.to_string());
        self
    }

    /// Answers with this body as it is.
    pub fn body(mut self, body: &str) -> Self {
        self.body = Some(body.to_owned());
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    arrived: Notify,
}

/// A recording receiver on loopback whose answers a test can script.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A receiver on a given address (another loopback address, a given port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let state = Arc::new(ReceiverState::default());
        let router = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests with these replies, in order; then the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Answers every unscripted request with this reply (200 until set).
    pub fn default_reply(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (at most 20 s) and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.state.arrived.notified();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} deliveries, got {}: {:#?}",
                    received.len(),
                    received
                );
            }
        }
    }

    /// Asserts that no request beyond the first `n` arrives within `quiet`.
    pub async fn expect_no_more_than(&self, n: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        let received = self.received();
        assert_eq!(
            received.len(),
            n,
            "unexpected extra deliveries: {received:#?}"
        );
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| state.default.lock().unwrap().clone())
        .unwrap_or(Reply::status(200));
    tokio::time::sleep(reply.delay).await;
    state
        .received
        .lock()
        .unwrap()
        .push(Received { uri, headers, body });
    state.arrived.notify_waiters();
    let body = reply.body.unwrap_or_else(|| "received".into());
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
