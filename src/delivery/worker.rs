//! The worker: claims due deliveries under a lease, sends them with bounded concurrency, and
//! records each attempt. Woken at once by the outbox after a commit, with a short poll as the
//! fallback for retries coming due and for deliveries another process queued.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::Outgoing;
use super::outcome::{Outcome, decide};
use crate::Result;
use crate::app::AppState;
use crate::domain::DeliveryState;
use crate::store::{self, deliveries::AttemptRecord, entities::delivery};

/// How often an idle worker looks for due deliveries it was not woken for.
const POLL: Duration = Duration::from_millis(200);

/// The longest pause after claims keep failing (the database is down or restarting).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The delivery worker of one process.
pub struct Worker {
    state: AppState,
}

impl Worker {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// Runs until `shutdown`; then stops claiming and gives in-flight attempts the configured
    /// grace to finish. Attempts still running after it are dropped: their leases expire and
    /// another worker sends them again.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = &self.state.config;
        let limit = config.worker_concurrency as usize;
        let per_endpoint = config.endpoint_concurrency as usize;
        let mut in_flight: JoinSet<i64> = JoinSet::new();
        let mut per: HashMap<i64, usize> = HashMap::new();
        tracing::info!(concurrency = limit, "delivery worker started");
        let database_url = &config.database.database_url;
        let listener = database_url.starts_with("postgres").then(|| {
            let wake = self.state.wake.clone();
            tokio::spawn(super::listener::listen(
                database_url.clone(),
                wake,
                shutdown.clone(),
            ))
        });
        let mut failures = 0u32;
        loop {
            let mut pause = POLL;
            let room = limit - in_flight.len();
            let mut more = false;
            if room > 0 {
                let busy: Vec<i64> = per
                    .iter()
                    .filter(|(_, n)| **n >= per_endpoint)
                    .map(|(id, _)| *id)
                    .collect();
                // At most one endpoint's cap per claim, so that one endpoint's backlog cannot
                // take more slots than the cap in one go.
                let batch = room.min(per_endpoint);
                match self.claim(batch, &busy).await {
                    Ok((token, rows)) => {
                        failures = 0;
                        more = rows.len() == batch;
                        let mut over_cap = Vec::new();
                        for row in rows {
                            let count = per.entry(row.endpoint_id).or_default();
                            if *count >= per_endpoint {
                                over_cap.push(row.id);
                                continue;
                            }
                            *count += 1;
                            let state = self.state.clone();
                            let token = token.clone();
                            in_flight.spawn(async move {
                                let endpoint_id = row.endpoint_id;
                                if let Err(err) = attempt(&state, row, &token).await {
                                    tracing::warn!(error = %err, "a delivery attempt could not be recorded");
                                }
                                endpoint_id
                            });
                        }
                        for id in over_cap {
                            if let Err(err) =
                                store::deliveries::release(&self.state.db, id, &token).await
                            {
                                tracing::warn!(error = %err, "releasing a claim over the endpoint's cap failed; its lease will expire");
                            }
                        }
                    }
                    Err(err) => {
                        failures += 1;
                        pause = (POLL * 2u32.saturating_pow(failures.min(5))).min(MAX_BACKOFF);
                        tracing::warn!(error = %err, retry_in = ?pause, "claiming deliveries failed");
                    }
                }
            }
            if more && in_flight.len() < limit {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => release_slot(&mut per, done),
                _ = self.state.wake.notified(), if failures == 0 => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Some(listener) = listener {
            let _ = listener.await;
        }
        let grace = config.shutdown_grace;
        tracing::info!(in_flight = in_flight.len(), "delivery worker stopping");
        let drained = tokio::time::timeout(grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = in_flight.len(),
                "attempts still running after the shutdown grace were abandoned; their leases will expire"
            );
            in_flight.abort_all();
        }
    }

    async fn claim(&self, room: usize, busy: &[i64]) -> Result<(String, Vec<delivery::Model>)> {
        let tx = store::begin_write(&self.state.db).await?;
        let lease_ms = self.state.config.lease.as_millis() as i64;
        let claimed =
            store::deliveries::claim(&tx, crate::now_ms(), lease_ms, room as u64, busy).await?;
        tx.commit().await?;
        Ok(claimed)
    }
}

fn release_slot(
    per: &mut HashMap<i64, usize>,
    done: std::result::Result<i64, tokio::task::JoinError>,
) {
    let Ok(endpoint_id) = done else { return };
    if let Some(count) = per.get_mut(&endpoint_id) {
        *count -= 1;
        if *count == 0 {
            per.remove(&endpoint_id);
        }
    }
}

/// Sends one claimed delivery and records the outcome, if the lease is still ours.
async fn attempt(state: &AppState, row: delivery::Model, token: &str) -> Result<()> {
    let endpoint = match store::endpoints::find(&state.db, row.org_id, row.endpoint_id).await {
        Ok(endpoint) => endpoint,
        // Deleted since the claim: its deliveries went with it.
        Err(crate::Error::NotFound { .. }) => return Ok(()),
        Err(err) => return Err(err),
    };
    let fields = store::endpoints::fields_of(&endpoint, &state.vault)?;
    let answer = state
        .sender
        .send(Outgoing {
            url: &fields.url,
            insecure_ssl: endpoint.insecure_ssl,
            event: &row.event,
            delivery_id: &row.uid,
            event_timestamp: row.created_at,
            secret: fields.secret.as_deref(),
            body: &row.body,
        })
        .await;
    let now = crate::now_ms();
    let retry_after = answer
        .headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok());
    let outcome = decide(
        answer.status,
        retry_after,
        row.round_attempts as usize + 1,
        &state.config.retry_schedule,
        now,
        rand::random::<f64>(),
    );
    let (delivery_state, next_attempt_at) = match outcome {
        Outcome::Delivered => (DeliveryState::Delivered, now),
        Outcome::Retry { at } => (DeliveryState::Retrying, at),
        Outcome::GaveUp | Outcome::Gone => (DeliveryState::Failed, now),
    };
    let error = answer
        .error
        .clone()
        .or_else(|| match (outcome, answer.status) {
            (Outcome::Delivered, _) => None,
            (Outcome::Gone, _) => {
                Some("the receiver answered 410 Gone, so the endpoint was disabled".to_owned())
            }
            (_, Some(status)) => Some(format!("the receiver answered HTTP {status}")),
            (_, None) => None,
        });
    let headers: serde_json::Map<String, serde_json::Value> = answer
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            )
        })
        .collect();
    let record = AttemptRecord {
        state: delivery_state,
        next_attempt_at,
        timestamp: now - answer.duration.as_millis() as i64,
        status: answer.status.map(i32::from),
        duration_ms: answer.duration.as_millis() as i64,
        error,
        response_headers: serde_json::Value::Object(headers).to_string(),
        response_body: answer.body,
    };
    // The answer is in hand: keep trying to record it through a short database outage, so the
    // delivery is not sent again when its lease expires.
    let mut wait = Duration::from_millis(100);
    let recorded = loop {
        match write_outcome(
            state,
            row.id,
            token,
            &record,
            outcome == Outcome::Gone,
            endpoint.id,
        )
        .await
        {
            Err(crate::Error::Unavailable) if wait < state.config.lease => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            result => break result?,
        }
    };
    let label = if recorded {
        outcome.label()
    } else {
        "lease_lost"
    };
    state.metrics.attempt(label, answer.duration.as_secs_f64());
    if !recorded {
        tracing::info!(delivery = %row.uid, "the lease was taken over; this attempt's result was discarded");
    }
    Ok(())
}

/// Writes one attempt's outcome (and disables the endpoint on 410) in one transaction.
async fn write_outcome(
    state: &AppState,
    delivery_id: i64,
    token: &str,
    record: &AttemptRecord,
    gone: bool,
    endpoint_id: i64,
) -> Result<bool> {
    let tx = store::begin_write(&state.db).await?;
    let recorded =
        store::deliveries::record_attempt(&tx, delivery_id, token, record.clone()).await?;
    if recorded && gone {
        store::endpoints::disable(&tx, endpoint_id).await?;
    }
    tx.commit().await?;
    Ok(recorded)
}
