//! Herald: webhook notifications for CI, configured through GraphQL and wire-compatible with
//! Cirrus CI's webhooks.
//!
//! Every build or task change takes one path: the mutation writes the change, its event and one
//! rendered delivery per matching endpoint in a single transaction; the worker claims due
//! deliveries with a lease, signs and POSTs them, and records each attempt.

// Dependencies run one way: `http → api → events → schema → store → domain`, with
// `delivery → store, signing` beside them; `app` wires them together, and `cli` and `tools`
// sit on top.

/// Mutations and the full schema; each write holds its turn in one `WriteTx`.
pub mod api;
/// The composition root: builds the handles, starts the server and the worker, shuts down.
pub mod app;
/// The command line: serve, worker, migrate, schema, org, token, listen, verify, bridge, demo.
pub mod cli;
/// One typed configuration: defaults < environment < flags.
pub mod config;
/// The delivery worker and its scheduler, the outbound client, the SSRF guard, outcomes.
pub mod delivery;
/// Plain types and rules: ids, statuses, actions, permissions, endpoint URLs, retry, limits.
pub mod domain;
/// One error type, mapped to GraphQL `extensions.code` and HTTP status.
pub mod error;
/// The outbox: stored selections, rendering, the group-commit writer of changes, audit events.
pub mod events;
/// axum routes, the connection server and the embedded web console.
pub mod http;
/// Prometheus metrics.
pub mod metrics;
/// The read side of GraphQL: `Query`, its types, token auth and guards, row budgets.
pub mod schema;
/// Secrets at rest: sealed with an AEAD when a key is configured.
pub mod secrets;
/// X-Cirrus-Signature and Standard Webhooks signatures.
pub mod signing;
/// Slack messages for build and task events (the SLACK format and the bridge).
pub mod slack;
/// sea-orm entities and every query; org-scoped finders start from the organization.
pub mod store;
/// Commands beside the service: `bench`, `bridge`, `demo`, `listen`, and `receive`, the
/// receiving side they share.
pub mod tools;

pub use error::{Error, Result};

/// Milliseconds since the Unix epoch, the unit of every timestamp Herald stores and serves.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
