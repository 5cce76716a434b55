//! `herald listen --catch-up`: a receiver that trusts its endpoint's sequence
//! (`X-Herald-Sequence`) to tell it what it missed, and fetches that from `webhookEvents`.
//!
//! Numbers follow the commits of their events, so when a delivery numbered `n` arrives, every
//! number below it is already recorded: one it has not seen was missed (or is still on its way,
//! as deliveries of different builds travel side by side), and the feed has it. The listener
//! prints each event once, whether it came as a delivery or from the feed, and acknowledges a
//! repeat without printing it again. With `--state FILE` it keeps the number up to which it has
//! every event, and at start fetches whatever came after it, so that a restart misses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value as Json, json};

/// How many events one page asks for (the most `webhookEvents` gives).
const PAGE: i64 = 500;

/// How long a number may stay missing before it is fetched: deliveries of different builds
/// travel side by side, so a later one often arrives first.
const GRACE: Duration = Duration::from_millis(500);

const QUERY: &str = "query($endpoint: ID!, $after: Int, $first: Int) { webhookEvents(endpointId: $endpoint, afterSequence: $after, first: $first) { sequence deliveryId event body } }";

/// Where the feed is, and whose. No `Debug`: it holds the token.
#[derive(Clone)]
pub struct CatchUpOptions {
    /// Herald's GraphQL URL.
    pub graphql: url::Url,
    /// A READ token of the endpoint's organization.
    pub token: String,
    pub endpoint_id: String,
    /// Where the number up to which every event was seen is kept across restarts.
    pub state: Option<PathBuf>,
}

/// Which numbers have been seen: all up to `contiguous`, and these above it.
#[derive(Debug, Default)]
pub struct Seen {
    pub contiguous: i64,
    above: BTreeSet<i64>,
}

impl Seen {
    /// Takes `n` as seen; false when it was already.
    pub fn claim(&mut self, n: i64) -> bool {
        if n <= self.contiguous || !self.above.insert(n) {
            return false;
        }
        while self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }

    /// Whether a number below the highest seen is missing.
    pub fn has_gap(&self) -> bool {
        !self.above.is_empty()
    }

    /// The highest number seen.
    pub fn highest(&self) -> i64 {
        self.above.last().copied().unwrap_or(self.contiguous)
    }

    /// Takes every number up to `n` as seen (the feed no longer has them).
    pub fn skip_to(&mut self, n: i64) {
        self.contiguous = self.contiguous.max(n);
        self.above = self.above.split_off(&(n + 1));
        while self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }
}

/// How many numbers' delivery ids are kept to tell a repeat from another endpoint's delivery.
const REMEMBERED: usize = 10_000;

/// What a delivery's number was to the listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    New,
    /// The same delivery again (delivery is at least once).
    Repeat,
    /// Another delivery had the number: the delivery id it had.
    Conflict(String),
}

/// Shows an event fetched from the feed: its headers (`X-Cirrus-Event`, `X-Cirrus-Delivery`),
/// its body and its number.
pub type Show = Box<dyn Fn(&HeaderMap, &[u8], i64) + Send + Sync>;

/// The listener's side of catching up: what it has seen, and one fetch at a time.
pub struct CatchUp {
    options: CatchUpOptions,
    seen: Mutex<Seen>,
    fetching: tokio::sync::Mutex<()>,
    client: reqwest::Client,
    show: Show,
    /// Whether a fetch is waiting out its [`GRACE`].
    scheduled: AtomicBool,
    /// The delivery ids of the last numbers taken.
    ids: Mutex<BTreeMap<i64, String>>,
    writing: Mutex<()>,
}

impl CatchUp {
    /// Starts from the state file's number, if there is one; `show` prints each event fetched.
    pub fn new(options: CatchUpOptions, show: Show) -> anyhow::Result<Arc<Self>> {
        let contiguous = match &options.state {
            Some(path) if path.exists() => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold a sequence number", path.display()))?,
            _ => 0,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(crate::delivery::client::AGENT)
            .build()
            .context("building the HTTP client")?;
        Ok(Arc::new(Self {
            options,
            seen: Mutex::new(Seen {
                contiguous,
                above: BTreeSet::new(),
            }),
            fetching: tokio::sync::Mutex::new(()),
            client,
            show,
            scheduled: AtomicBool::new(false),
            ids: Mutex::default(),
            writing: Mutex::new(()),
        }))
    }

    /// What it follows, for the listener's first line.
    pub fn describe(&self) -> String {
        format!(
            "catching up on endpoint {} after sequence {}",
            self.options.endpoint_id,
            self.seen().contiguous
        )
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a delivery's number as seen; false for a repeat, which is not printed again.
    /// Takes number `n`, of delivery `id`, as seen: new, a repeat (not printed again), or a
    /// conflict when another delivery had that number (the events of another endpoint).
    pub fn claim(&self, n: i64, id: &str) -> Claim {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.seen().claim(n) {
            ids.insert(n, id.to_owned());
            if ids.len() > REMEMBERED {
                ids.pop_first();
            }
            return Claim::New;
        }
        match ids.get(&n) {
            Some(other) if other != id => Claim::Conflict(other.clone()),
            _ => Claim::Repeat,
        }
    }

    /// After a delivery was taken: keeps the state, and fetches what is missing below it once
    /// it stays missing for [`GRACE`] (one fetch waiting at most).
    pub fn after_delivery(self: &Arc<Self>) {
        self.keep_state();
        if self.seen().has_gap() && !self.scheduled.swap(true, Ordering::SeqCst) {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(GRACE).await;
                this.scheduled.store(false, Ordering::SeqCst);
                if this.seen().has_gap()
                    && let Err(refused) = this.fetch_missing().await
                {
                    eprintln!("{refused}");
                }
            });
        }
    }

    /// Fetches and prints every event after the highest number up to which all were seen,
    /// page after page until the feed has no more; one fetch at a time. An unreachable Herald
    /// is tried again; a refusal (a wrong token or endpoint) ends the fetch with Herald's
    /// message.
    pub async fn fetch_missing(&self) -> Result<(), String> {
        let _one = self.fetching.lock().await;
        let mut wait = Duration::from_millis(250);
        loop {
            let after = self.seen().contiguous;
            let events = match self.fetch_after(after).await {
                Ok(Ok(events)) => events,
                Ok(Err(refused)) => {
                    return Err(format!(
                        "Herald refused to list the missed events: {refused}"
                    ));
                }
                Err(err) => {
                    eprintln!("Fetching missed events failed ({err:#}); trying again in {wait:?}.");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            wait = Duration::from_millis(250);
            let Some(first) = events.first().map(|(n, _)| *n) else {
                let seen = self.seen();
                if seen.has_gap() {
                    eprintln!(
                        "The feed has no event after {after}, yet number {} arrived: is --endpoint the endpoint that sends here?",
                        seen.highest()
                    );
                }
                return Ok(());
            };
            // Numbers are recorded in order, so those below the feed's first are gone (the
            // delivery log's retention removed them).
            if first > after + 1 {
                eprintln!(
                    "Sequence numbers {} to {} are gone from the feed; going on without them.",
                    after + 1,
                    first - 1
                );
                self.seen().skip_to(first - 1);
            }
            for (n, event) in events {
                let id = event["deliveryId"].as_str().unwrap_or_default();
                if self.claim(n, id) == Claim::New {
                    self.show_fetched(&event, n);
                }
            }
            self.keep_state();
        }
    }

    /// One page of the feed after `after`: each event with its number, or Herald's refusal.
    async fn fetch_after(&self, after: i64) -> anyhow::Result<Result<Vec<(i64, Json)>, String>> {
        let variables =
            json!({ "endpoint": self.options.endpoint_id, "after": after, "first": PAGE });
        let answer = self
            .client
            .post(self.options.graphql.clone())
            .bearer_auth(&self.options.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json!({ "query": QUERY, "variables": variables }).to_string())
            .send()
            .await
            .map_err(|err| anyhow::anyhow!(err.without_url()))?
            .text()
            .await
            .context("reading the answer")?;
        let response: Json = serde_json::from_str(&answer).context("the answer is not JSON")?;
        if let Some(error) = response["errors"][0]["message"].as_str() {
            return Ok(Err(error.to_owned()));
        }
        let events = response["data"]["webhookEvents"]
            .as_array()
            .context("the answer has no webhookEvents")?;
        let mut numbered = Vec::with_capacity(events.len());
        for event in events {
            let n = event["sequence"]
                .as_i64()
                .context("an event has no sequence")?;
            numbered.push((n, event.clone()));
        }
        Ok(Ok(numbered))
    }

    /// Prints an event fetched from the feed, as its delivery would print.
    fn show_fetched(&self, event: &Json, n: i64) {
        let mut headers = HeaderMap::new();
        for (name, field) in [
            ("x-cirrus-event", "event"),
            ("x-cirrus-delivery", "deliveryId"),
        ] {
            if let Some(value) = event[field]
                .as_str()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        let body = event["body"].as_str().unwrap_or_default();
        (self.show)(&headers, body.as_bytes(), n);
    }

    /// Writes the number up to which every event was seen, if there is a state file.
    fn keep_state(&self) {
        let Some(path) = &self.options.state else {
            return;
        };
        // One writer of the file at a time.
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let contiguous = self.seen().contiguous;
        let temporary = path.with_extension("tmp");
        let written = std::fs::write(&temporary, format!("{contiguous}\n"))
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(err) = written {
            eprintln!("Keeping the sequence in {} failed: {err}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_numbers_advance_over_what_arrives_out_of_order() {
        let mut seen = Seen::default();
        assert!(seen.claim(1));
        assert!(seen.claim(3));
        assert!(seen.has_gap());
        assert!(!seen.claim(3), "a repeat");
        assert_eq!((seen.contiguous, seen.highest()), (1, 3));
        assert!(seen.claim(2));
        assert!(!seen.has_gap());
        assert_eq!(seen.contiguous, 3);
        assert!(!seen.claim(2), "a repeat below the contiguous range");
        assert!(seen.claim(7));
        seen.skip_to(7);
        assert_eq!((seen.contiguous, seen.has_gap()), (7, false));
        assert!(seen.claim(9));
        assert!(seen.has_gap());
    }
}
