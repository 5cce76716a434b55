//! Herald: webhook notifications for CI, configured through GraphQL and wire-compatible with
//! Cirrus CI's webhooks.
//!
//! Every build or task change takes one path: the mutation writes the change, its event and one
//! rendered delivery per matching endpoint in a single transaction; the worker claims due
//! deliveries with a lease, signs and POSTs them, and records each attempt.

/// AppState and App::build/run: the server, the worker and shutdown.
pub mod app;
/// `herald bench`: end-to-end throughput, latency and memory beside the machine's ceiling.
pub mod bench;
/// `herald bridge slack`: verified deliveries in, Slack messages out.
pub mod bridge;
/// The command line: serve, worker, migrate, schema, org, token, listen, verify, bridge, demo.
pub mod cli;
/// One typed configuration: defaults < environment < flags.
pub mod config;
/// The delivery worker, its outbound client and the outcome of each attempt.
pub mod delivery;
/// `herald demo`: a temporary Herald playing a build to a local receiver.
pub mod demo;
/// Plain types and rules: statuses, permissions, endpoint URLs, retry policy.
pub mod domain;
/// One error type, mapped to GraphQL `extensions.code` and HTTP status.
pub mod error;
/// The GraphQL schema by area, with authentication and permission guards.
pub mod graphql;
/// axum routes: the console, /graphql, GraphiQL, /healthz, /readyz, /metrics.
pub mod http;
/// `herald listen`: a local receiver that prints and checks each delivery.
pub mod listen;
/// Prometheus metrics.
pub mod metrics;
/// Stored payload selections: validation, caching, rendering and envelopes.
pub mod payload;
/// The receiving side: checking both signature schemes and reading FLAT or DATA envelopes.
pub mod receive;
/// Secrets at rest: sealed with an AEAD when a key is configured.
pub mod secrets;
/// The HTTP server's connections: the cap, the header timeout and the shutdown grace.
pub mod serve;
/// X-Cirrus-Signature and Standard Webhooks signatures.
pub mod signing;
/// Slack messages for build and task events (the SLACK format and the bridge).
pub mod slack;
/// sea-orm entities and every query; org-scoped finders start from the organization.
pub mod store;

/// The web console: `web/` embedded in the binary and served at `/`.
pub mod web;

pub use error::{Error, Result};

/// Milliseconds since the Unix epoch, the unit of every timestamp Herald stores and serves.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
