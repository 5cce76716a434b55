//! Delivery: the worker and its scheduler, the attempts and the writer of their outcomes, the
//! outbound client and its SSRF guard, and what each attempt's answer means.

pub mod approval;
mod attempt;
pub mod client;
pub mod guard;
pub mod listener;
pub mod outcome;
pub mod scheduler;
pub mod worker;

use std::time::Duration;

use sea_orm::DatabaseConnection;

use crate::config::Config;
use crate::domain::RetrySchedule;
use crate::metrics::Metrics;
use crate::secrets::Vault;
use crate::store::Writes;

pub use worker::Worker;

/// What the worker uses: the pool for reads, the process's writes, the outbound client, the
/// metrics and the vault that opens endpoint secrets.
#[derive(Clone)]
pub struct WorkerHandles {
    pub settings: WorkerSettings,
    pub db: DatabaseConnection,
    pub writes: Writes,
    pub sender: client::Sender,
    pub metrics: Metrics,
    pub vault: Vault,
}

/// The worker's settings.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Requests at once (`HERALD_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// Requests at once to one endpoint (`HERALD_ENDPOINT_CONCURRENCY`).
    pub endpoint_concurrency: usize,
    /// How long a claim holds a delivery.
    pub lease: Duration,
    /// The longest an attempt takes.
    pub delivery_timeout: Duration,
    /// How long in-flight attempts may finish at shutdown.
    pub shutdown_grace: Duration,
    pub retry_schedule: RetrySchedule,
    /// The PostgreSQL URL to listen for other processes' announcements on, if any.
    pub listen_url: Option<String>,
}

impl WorkerSettings {
    /// The settings `config` gives.
    pub fn from_config(config: &Config) -> Self {
        let url = &config.database.database_url;
        Self {
            concurrency: config.worker_concurrency as usize,
            endpoint_concurrency: config.endpoint_concurrency as usize,
            lease: config.lease,
            delivery_timeout: config.delivery_timeout,
            shutdown_grace: config.shutdown_grace,
            retry_schedule: config.retry_schedule.clone(),
            listen_url: url.starts_with("postgres").then(|| url.clone()),
        }
    }
}
