//! The bench's receiver: answers 200 and records when each event arrived. It answers at once,
//! except under `/herald-bench/slow/MS/`, where it waits MS milliseconds first (a busy
//! receiver, whose endpoint keeps its backlog).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;

#[derive(Default)]
struct Arrivals {
    count: AtomicUsize,
    /// Event key (`task:status`) → when its deliveries arrived.
    by_key: Mutex<HashMap<String, Vec<Instant>>>,
}

/// A fast loopback receiver.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    arrivals: Arc<Arrivals>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Self> {
        let arrivals = Arc::new(Arrivals::default());
        let router = axum::Router::new()
            .fallback(record)
            .with_state(arrivals.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { addr, arrivals })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Forgets every arrival (between scenarios).
    pub fn reset(&self) {
        self.arrivals.count.store(0, Ordering::SeqCst);
        self.arrivals.by_key.lock().expect("arrivals").clear();
    }

    pub fn count(&self) -> usize {
        self.arrivals.count.load(Ordering::SeqCst)
    }

    /// Waits until `n` deliveries arrived or `deadline` passed; returns when the last arrived.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Option<Instant> {
        let until = Instant::now() + deadline;
        while self.count() < n {
            if Instant::now() > until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.arrivals
            .by_key
            .lock()
            .expect("arrivals")
            .values()
            .flatten()
            .max()
            .copied()
    }

    /// How many of these events have arrived.
    pub fn arrived_of(&self, keys: &[&String]) -> usize {
        let arrivals = self.arrivals.by_key.lock().expect("arrivals");
        keys.iter()
            .filter(|key| arrivals.contains_key(**key))
            .count()
    }

    /// Every arrival, by event key.
    pub fn arrivals(&self) -> HashMap<String, Vec<Instant>> {
        self.arrivals.by_key.lock().expect("arrivals").clone()
    }
}

/// The path under which the receiver answers after a delay (see [`delay`]).
pub const SLOW: &str = "/herald-bench/slow/";

/// How long to wait before answering a request to `uri`.
fn delay(uri: &Uri) -> Option<Duration> {
    let rest = uri.path().strip_prefix(SLOW)?;
    let ms = rest.split('/').next()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

async fn record(State(arrivals): State<Arc<Arrivals>>, uri: Uri, body: Bytes) -> &'static str {
    if let Some(delay) = delay(&uri) {
        tokio::time::sleep(delay).await;
    }
    let now = Instant::now();
    if let Some(key) = event_key(&body) {
        arrivals
            .by_key
            .lock()
            .expect("arrivals")
            .entry(key)
            .or_default()
            .push(now);
    }
    arrivals.count.fetch_add(1, Ordering::SeqCst);
    "ok"
}

/// `task:status` from a body rendered by the bench's selection, `task(id: $taskId) { id status }`.
pub fn event_key(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let task = &value["data"]["task"];
    Some(format!(
        "{}:{}",
        task["id"].as_str()?,
        task["status"].as_str()?
    ))
}
