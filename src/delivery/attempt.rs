//! One attempt: a claimed delivery sent, its answer decided into an outcome and handed to the
//! outcome writer, which records every outcome waiting in one transaction: under load, a few
//! statements per batch instead of a transaction per delivery. An attempt ends once it has
//! handed its outcome over; the writer tells the worker's loop, one message per transaction,
//! what the outcomes made due.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::WorkerHandles;
use super::client::{Destination, Outgoing, Signing};
use super::outcome::{Outcome, decide};
use super::scheduler::{Claimed, Launch};
use crate::Result;
use crate::domain::DeliveryState;
use crate::secrets::Vault;
use crate::store::entities::{webhook_endpoint, webhook_secret};
use crate::store::{
    self,
    deliveries::{AttemptRecord, Leased},
};

/// The most outcomes the writer records in one transaction.
const WRITE_BATCH: usize = 512;

/// How long the writer waits for more outcomes while requests are still unanswered, so that
/// the answers to one claim, which come close together, share a transaction.
const GATHER: Duration = Duration::from_millis(5);

/// A claimed delivery, with its endpoint and the claim's token.
pub(super) struct Claim {
    pub(super) row: Leased,
    pub(super) endpoint: Arc<Target>,
    pub(super) token: Arc<str>,
    /// The longest an attempt takes: a claim whose lease ends sooner is not sent.
    pub(super) margin: Duration,
}

impl Claimed for Claim {
    fn endpoint(&self) -> i64 {
        self.row.endpoint_id
    }

    fn sendable(&self, now_ms: i64) -> bool {
        let left = self.row.lease_until.unwrap_or(i64::MAX) - now_ms;
        left > self.margin.as_millis() as i64
    }
}

/// Starts attempts: what each one needs from the worker.
pub(super) struct Launcher {
    pub(super) handles: Arc<WorkerHandles>,
    pub(super) outcomes: mpsc::Sender<Written>,
    pub(super) freed: mpsc::UnboundedSender<i64>,
    pub(super) unanswered: Arc<AtomicUsize>,
    /// Outcomes handed to the writer and not written yet.
    pub(super) unwritten: Arc<AtomicUsize>,
}

impl Launcher {
    /// Sends `claim` in a task of `in_flight`, holding a slot of its endpoint until the
    /// receiver answers.
    pub(super) fn launch(&self, in_flight: &mut JoinSet<()>, claim: Claim) {
        let Claim {
            row,
            endpoint,
            token,
            ..
        } = claim;
        let slot = Slot::take(row.endpoint_id, &self.freed, &self.unanswered);
        let handles = self.handles.clone();
        let outcomes = self.outcomes.clone();
        let unwritten = self.unwritten.clone();
        let span = tracing::info_span!(
            "attempt",
            delivery = %row.uid,
            endpoint = row.endpoint_id,
            attempt = row.round_attempts + 1
        );
        in_flight.spawn(
            async move {
                // An outcome not handed over is not recorded: the lease expires and the
                // delivery is sent again.
                if let Err(err) =
                    attempt(&handles, row, &endpoint, slot, token, &outcomes, &unwritten).await
                {
                    tracing::warn!(error = %err, "a delivery attempt could not be recorded");
                }
            }
            .instrument(span),
        );
    }

    /// Starts the claims the scheduler sends now; those whose lease is ending are left to
    /// another claim once it ends.
    pub(super) fn start(&self, in_flight: &mut JoinSet<()>, launch: Launch<Claim>) {
        for claim in launch.expired {
            tracing::info!(delivery = %claim.row.uid, "a claim waited past its lease's margin and was not sent");
        }
        for claim in launch.send {
            self.launch(in_flight, claim);
        }
    }

    /// The number of outcomes handed to the writer and not written yet.
    pub(super) fn unwritten(&self) -> usize {
        self.unwritten.load(Ordering::Relaxed)
    }
}

/// An attempt whose outcome the writer has written (or failed to).
pub(super) struct Ended {
    pub(super) endpoint: i64,
    /// Whether its outcome may have made a delivery of its endpoint due: its write released
    /// the next delivery of a chain of the endpoint, or scheduled its retry for now (or could
    /// not be recorded).
    pub(super) made_due: bool,
}

/// An endpoint as an attempt needs it: where to send, and how to sign.
pub(super) struct Target {
    pub(super) destination: Destination,
    pub(super) signing: Signing,
}

impl Target {
    /// The target of endpoint `row`, signing with its own secret or the named one among
    /// `named` (its organization's), and with the secret a rotation replaced while the overlap
    /// lasts at `now`. An endpoint whose URL, secret or headers cannot be read, or whose named
    /// secret is gone, has none.
    pub(super) fn of(
        row: &webhook_endpoint::Model,
        named: &[webhook_secret::Model],
        vault: &Vault,
        now: i64,
    ) -> Result<Self> {
        let fields = store::endpoints::fields_of(row, vault)?;
        let (current, replaced) = match &fields.secret_name {
            Some(name) => {
                let secret = named
                    .iter()
                    .find(|secret| secret.org_id == row.org_id && &secret.name == name)
                    .ok_or_else(|| {
                        crate::Error::internal(format!("the named secret {name:?} is gone"))
                    })?;
                let (current, replaced) = store::secrets::keys(secret, vault)?.signing_at(now);
                (Some(current), replaced)
            }
            None => {
                let replaced = fields
                    .previous_secret
                    .filter(|(_, until)| *until > now)
                    .map(|(secret, _)| secret);
                (fields.secret, replaced)
            }
        };
        Ok(Self {
            destination: Destination::new(&fields.url, row.insecure_ssl),
            signing: Signing::new(
                fields.signature_style,
                current.as_deref(),
                replaced.as_deref(),
                &fields.headers,
            ),
        })
    }
}

/// An endpoint's slot held by one attempt; dropped once the receiver has answered (or the
/// attempt ended otherwise), which gives the slot back to the worker.
struct Slot {
    endpoint_id: i64,
    freed: mpsc::UnboundedSender<i64>,
    /// How many slots are held: requests not answered yet.
    unanswered: Arc<AtomicUsize>,
}

impl Slot {
    fn take(
        endpoint_id: i64,
        freed: &mpsc::UnboundedSender<i64>,
        unanswered: &Arc<AtomicUsize>,
    ) -> Self {
        unanswered.fetch_add(1, Ordering::Relaxed);
        Self {
            endpoint_id,
            freed: freed.clone(),
            unanswered: unanswered.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.unanswered.fetch_sub(1, Ordering::Relaxed);
        let _ = self.freed.send(self.endpoint_id);
    }
}

/// An outcome on its way to the writer, with what the writer needs to count it and to tell
/// the worker's loop whether it made a delivery due.
pub(super) struct Written {
    record: AttemptRecord,
    /// The public id of the delivery, for the log.
    uid: String,
    /// What the answer came to; on 410 Gone the endpoint is disabled with the outcome.
    outcome: Outcome,
    /// The outcome schedules the next attempt for now (after `Retry-After: 0`).
    retry_now: bool,
    /// How long the receiver took.
    duration: Duration,
}

/// Sends one claimed delivery and hands its outcome to the writer, which records it if the
/// lease is still ours and tells the worker's loop what that made due (see [`Ended`]).
async fn attempt(
    handles: &WorkerHandles,
    mut row: Leased,
    endpoint: &Target,
    slot: Slot,
    token: Arc<str>,
    outcomes: &mpsc::Sender<Written>,
    unwritten: &AtomicUsize,
) -> Result<()> {
    let body = std::mem::take(&mut row.body);
    let answer = handles
        .sender
        .send(Outgoing {
            to: &endpoint.destination,
            event: &row.event,
            delivery_id: &row.uid,
            event_timestamp: row.created_at,
            signing: &endpoint.signing,
            work_id: row.work_id.as_deref(),
            sequence: row.sequence,
            body,
        })
        .await;
    drop(slot);
    let now = crate::now_ms();
    let outcome = decide(
        answer.status,
        answer.retry_after.as_deref(),
        row.round_attempts as usize + 1,
        &handles.settings.retry_schedule,
        now,
        rand::random::<f64>(),
    );
    tracing::debug!(
        status = answer.status,
        error = answer.error.as_deref(),
        outcome = outcome.label(),
        duration_ms = answer.duration.as_millis() as u64,
        "attempt answered"
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
    let record = AttemptRecord {
        delivery_id: row.id.into(),
        endpoint_id: row.endpoint_id.into(),
        build_id: row.build_id.map(Into::into),
        token: token.to_string(),
        state: delivery_state,
        next_attempt_at,
        timestamp: now - answer.duration.as_millis() as i64,
        status: answer.status.map(i32::from),
        duration_ms: answer.duration.as_millis() as i64,
        error,
        response_headers: answer.headers,
        response_body: answer.body,
    };
    let written = Written {
        record,
        uid: row.uid,
        outcome,
        retry_now: matches!(outcome, Outcome::Retry { at } if at <= now),
        duration: answer.duration,
    };
    unwritten.fetch_add(1, Ordering::Relaxed);
    if outcomes.send(written).await.is_err() {
        unwritten.fetch_sub(1, Ordering::Relaxed);
        return Err(crate::Error::internal("the outcome writer stopped"));
    }
    Ok(())
}

/// Records outcomes as they come: everything waiting is written in one transaction. The answer
/// is in hand, so a short database outage, or a transaction rolled back in a conflict (a
/// deadlock with a redelivery, say), is waited out and the batch written again (up to the
/// lease) rather than letting the lease expire and the delivery be sent again.
///
/// While requests are still `unanswered`, it waits up to [`GATHER`] for their outcomes: the
/// answers to one claim arrive together, and the first would otherwise take a transaction of
/// its own (on SQLite, a turn at the one write lock, which the next claim waits for).
///
/// After each transaction it counts the outcomes, and sends the worker's loop, in one message,
/// what each one made due (see [`Ended`]); the outcomes are then no longer `unwritten`.
pub(super) async fn write_outcomes(
    handles: Arc<WorkerHandles>,
    mut written: mpsc::Receiver<Written>,
    unanswered: Arc<AtomicUsize>,
    unwritten: Arc<AtomicUsize>,
    ends: mpsc::UnboundedSender<Vec<Ended>>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while written.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let until = tokio::time::Instant::now() + GATHER;
        while batch.len() < WRITE_BATCH && unanswered.load(Ordering::Relaxed) > 0 {
            let room = WRITE_BATCH - batch.len();
            match tokio::time::timeout_at(until, written.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut results = vec![write_waiting(&handles, &batch).await];
        let refused = matches!(&results[0], Err(err) if !matches!(err, crate::Error::Unavailable));
        if batch.len() > 1 && refused {
            // Not an outage: the database refused something in the batch. Each outcome is
            // written on its own, so that one it refuses does not take the others with it.
            tracing::warn!(
                attempts = batch.len(),
                "a batch of delivery attempts could not be recorded; writing them one at a time"
            );
            results.clear();
            for written in &batch {
                results.push(write_waiting(&handles, std::slice::from_ref(written)).await);
            }
        }
        let size = if results.len() == 1 { batch.len() } else { 1 };
        for result in &results {
            if let Err(err) = result {
                tracing::warn!(
                    error = %err,
                    attempts = size,
                    "delivery attempts could not be recorded; their leases will expire and they will be sent again"
                );
            }
        }
        let ended: Vec<Ended> = batch
            .drain(..)
            .enumerate()
            .map(|(i, written)| {
                let result = &results[i.min(results.len() - 1)];
                let endpoint = written.record.endpoint_id.get();
                // Whether an outcome that could not be recorded made anything due is not
                // known: it counts as if it did.
                let made_due = match result {
                    Ok(done) => {
                        let recorded = done.ids.contains(&written.record.delivery_id.get());
                        count(&handles, &written, recorded);
                        done.released.contains(&endpoint) || (recorded && written.retry_now)
                    }
                    Err(_) => true,
                };
                Ended { endpoint, made_due }
            })
            .collect();
        unwritten.fetch_sub(ended.len(), Ordering::Relaxed);
        let _ = ends.send(ended);
    }
}

/// [`write_batch`], written again while the database is unavailable (or rolled the write back
/// in a conflict), for as long as the lease lasts.
async fn write_waiting(
    handles: &WorkerHandles,
    batch: &[Written],
) -> Result<store::deliveries::Recorded> {
    let mut wait = Duration::from_millis(100);
    loop {
        match write_batch(handles, batch).await {
            Err(crate::Error::Unavailable) if wait < handles.settings.lease => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            result => return result,
        }
    }
}

/// Counts a written outcome in the metrics, as lost when its lease had been taken over.
fn count(handles: &WorkerHandles, written: &Written, recorded: bool) {
    let label = if recorded {
        written.outcome.label()
    } else {
        "lease_lost"
    };
    handles
        .metrics
        .attempt(label, written.duration.as_secs_f64());
    if !recorded {
        tracing::info!(delivery = %written.uid, "the lease was taken over; this attempt's result was discarded");
    }
}

/// Writes outcomes in one transaction, and disables each endpoint that answered 410 to an
/// attempt that was recorded.
async fn write_batch(
    handles: &WorkerHandles,
    batch: &[Written],
) -> Result<store::deliveries::Recorded> {
    let records: Vec<&AttemptRecord> = batch.iter().map(|w| &w.record).collect();
    let _turn = handles.writes.worker_turn().await;
    let tx = store::begin_worker_write(handles.writes.conn()).await?;
    let recorded = store::deliveries::record_attempts(&tx, &records).await?;
    for written in batch.iter().filter(|w| w.outcome == Outcome::Gone) {
        if recorded.ids.contains(&written.record.delivery_id.get()) {
            store::endpoints::disable(&tx, written.record.endpoint_id.get()).await?;
        }
    }
    tx.commit().await?;
    Ok(recorded)
}
