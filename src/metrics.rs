//! Prometheus metrics, served at `GET /metrics`. One registry per application (no globals).

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Herald's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Build and task events committed.
    pub events_recorded: Counter,
    /// Batches of changes that failed before their commit and were written again one change
    /// at a time (a deadlock, a lost connection).
    pub change_batches_split: Counter,
    /// Attempt outcomes: `delivered`, `retrying`, `failed`, `lease_lost`.
    pub attempts: Family<Vec<(String, String)>, Counter>,
    /// Seconds from sending a request to its outcome.
    pub attempt_seconds: Histogram,
    /// Deliveries waiting for an attempt, read when scraped.
    pub queue_depth: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let events_recorded = Counter::default();
        let change_batches_split = Counter::default();
        let attempts = Family::<Vec<(String, String)>, Counter>::default();
        let attempt_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let queue_depth = Gauge::default();
        registry.register(
            "events_recorded",
            "Build and task events committed",
            events_recorded.clone(),
        );
        registry.register(
            "change_batches_split",
            "Batches of changes that failed before their commit and were written one change at a time",
            change_batches_split.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Delivery attempts by outcome",
            attempts.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "Time from request to outcome of one attempt",
            attempt_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Deliveries waiting for an attempt",
            queue_depth.clone(),
        );
        Self {
            registry: Arc::new(registry),
            events_recorded,
            change_batches_split,
            attempts,
            attempt_seconds,
            queue_depth,
        }
    }
}

impl Metrics {
    /// Counts one attempt's outcome.
    pub fn attempt(&self, outcome: &str, seconds: f64) {
        self.attempts
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
        self.attempt_seconds.observe(seconds);
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
