//! The worker: claims due deliveries under a lease, sends them with bounded concurrency, and
//! records each attempt. Woken at once after a commit that queued deliveries, with a short poll
//! as the fallback for retries coming due and for deliveries another process queued.
//!
//! What to claim, when, and what a finished attempt frees is decided by the [`Scheduler`];
//! this loop only feeds it what happened and does what it says. Claims are fair across
//! endpoints (see [`store::deliveries::claim`]): each claim visits the endpoints with
//! deliveries in a round and takes a few of each, skipping those whose slots are all taken,
//! so that one endpoint's backlog never holds up another's deliveries. A stopping worker gives
//! back the claims it did not send.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::WorkerHandles;
use super::attempt::{Claim, Ended, Launcher, Target, write_outcomes};
use super::scheduler::{ClaimPlan, ClaimResult, Scheduler};
use crate::Result;
use crate::domain::DeliveryState;
use crate::store::{
    self,
    deliveries::{AttemptRecord, Leased},
};

/// How often the worker looks for held deliveries that no longer wait for anything.
const SWEEP: Duration = Duration::from_secs(60);

/// The delivery worker of one process.
pub struct Worker {
    /// Shared by every attempt: cloning it is one count, not one per handle it holds.
    handles: Arc<WorkerHandles>,
}

impl Worker {
    pub fn new(handles: WorkerHandles) -> Self {
        Self {
            handles: Arc::new(handles),
        }
    }

    /// Runs until `shutdown`; then stops claiming and gives in-flight attempts the configured
    /// grace to finish. Attempts still running after it are dropped: their leases expire and
    /// another worker sends them again.
    pub async fn run(self, shutdown: CancellationToken) {
        let settings = &self.handles.settings;
        let limit = settings.concurrency;
        tracing::info!(concurrency = limit, "delivery worker started");
        let listener = settings.listen_url.clone().map(|url| {
            let listen =
                super::listener::listen(url, self.handles.writes.clone(), shutdown.clone());
            tokio::spawn(listen)
        });
        let mut scheduler = Scheduler::new(limit, settings.endpoint_concurrency, Instant::now());
        // Attempts sending, up to the hand-off of their outcome to the writer.
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let (freed, mut answered) = mpsc::unbounded_channel::<i64>();
        let (ends, mut written_ends) = mpsc::unbounded_channel::<Vec<Ended>>();
        let (outcomes, written) = mpsc::channel(limit.max(1));
        let unanswered = Arc::new(AtomicUsize::new(0));
        let launcher = Launcher {
            handles: self.handles.clone(),
            outcomes,
            freed,
            unanswered: unanswered.clone(),
            unwritten: Arc::default(),
        };
        let mut writer = tokio::spawn(write_outcomes(
            self.handles.clone(),
            written,
            unanswered,
            launcher.unwritten.clone(),
            ends,
        ));
        let mut last_sweep: Option<Instant> = None;
        // Outcomes written since the last turn, seen once the answers before them are.
        let mut ended: Vec<Ended> = Vec::new();
        loop {
            if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP) {
                last_sweep = Some(Instant::now());
                self.remove_orphans().await;
                if self.release_stranded().await {
                    scheduler.wake();
                }
            }
            // Attempts that handed their outcome over count as unwritten from then on; one
            // that panicked handed nothing over, so what it would have made due is not known.
            while let Some(done) = in_flight.try_join_next() {
                if done.is_err() {
                    scheduler.wake();
                }
            }
            // Slots freed by answers not seen yet are given back before a claim counts them.
            while let Ok(endpoint) = answered.try_recv() {
                launcher.start(
                    &mut in_flight,
                    scheduler.answered(endpoint, crate::now_ms()),
                );
            }
            for ended in ended.drain(..) {
                scheduler.ended(ended.endpoint, ended.made_due);
            }
            let kept = |in_flight: &JoinSet<()>| in_flight.len() + launcher.unwritten();
            if let Some(plan) = scheduler.next(Instant::now(), kept(&in_flight)) {
                let claimed = self.claim(&scheduler, &plan).await;
                let now = Instant::now();
                match claimed {
                    Ok(result) => {
                        let (launch, more) =
                            scheduler.claimed(plan.room, result, now, crate::now_ms());
                        launcher.start(&mut in_flight, launch);
                        if more && scheduler.claims_again(kept(&in_flight)) {
                            continue;
                        }
                    }
                    Err(err) => {
                        let pause = scheduler.claim_failed(now);
                        tracing::warn!(error = %err, retry_in = ?pause, "claiming deliveries failed");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // The loop holds a sender of the writer's, so the writer ends only by
                // panicking: so does the worker, rather than go on claiming with no one to
                // record outcomes.
                stopped = &mut writer => match stopped {
                    Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                    _ => panic!("the outcome writer stopped while the worker ran"),
                },
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if done.is_err() {
                        scheduler.wake();
                    }
                }
                Some(batch) = written_ends.recv() => {
                    ended.extend(batch);
                    while let Ok(batch) = written_ends.try_recv() {
                        ended.extend(batch);
                    }
                }
                Some(endpoint) = answered.recv() => {
                    launcher.start(&mut in_flight, scheduler.answered(endpoint, crate::now_ms()));
                }
                _ = self.handles.writes.woken(), if scheduler.listens() => scheduler.wake(),
                _ = tokio::time::sleep_until(scheduler.poll_at()) => scheduler.poll(),
            }
        }
        if let Some(listener) = listener {
            let _ = listener.await;
        }
        self.give_back(scheduler.take_ready()).await;
        drop(launcher);
        tracing::info!(in_flight = in_flight.len(), "delivery worker stopping");
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
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
        // Every sender is gone once the attempts are: the writer records what is left and ends.
        drop(in_flight);
        let _ = writer.await;
    }

    /// Claims up to `room` deliveries and looks up their endpoints. A delivery whose endpoint
    /// was deleted since it was queued went with it and is dropped; one whose endpoint's URL,
    /// secret or credentials cannot be read is recorded as failed with the reason (see
    /// [`Worker::fail_unreadable`]).
    #[tracing::instrument(skip_all, fields(room = plan.room))]
    async fn claim(
        &self,
        scheduler: &Scheduler<Claim>,
        plan: &ClaimPlan,
    ) -> Result<ClaimResult<Claim>> {
        let settings = &self.handles.settings;
        let request = store::deliveries::ClaimRequest {
            now: crate::now_ms(),
            lease_ms: settings.lease.as_millis() as i64,
            limit: plan.room,
            busy: plan.busy.clone(),
            room_of: |endpoint| scheduler.room_of(endpoint),
            per_endpoint: plan.per_endpoint,
            after: plan.after,
        };
        let db = &self.handles.db;
        let leases = if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            // The claim configures its transaction itself (see [`store::deliveries::claim`]).
            let tx = store::begin_write(db).await?;
            let claimed = store::deliveries::claim(&tx, request).await?;
            tx.commit().await?;
            claimed
        } else {
            let writer = self.handles.writes.conn();
            let _turn = self.handles.writes.worker_turn().await;
            store::wait_for_disk(writer, false).await?;
            store::deliveries::claim(writer, request).await?
        };
        let store::deliveries::Leases {
            token,
            rows,
            more_due,
            next_after,
        } = leases;
        let count = rows.len();
        let mut endpoints: HashMap<i64, Arc<Target>> = HashMap::new();
        let mut unreadable = HashSet::new();
        if !rows.is_empty() {
            let mut ids: Vec<i64> = rows.iter().map(|row| row.endpoint_id).collect();
            ids.sort_unstable();
            ids.dedup();
            let rows = store::endpoints::find_many(db, &ids).await?;
            let named = named_secrets(db, &rows).await?;
            let now = crate::now_ms();
            for row in rows {
                match Target::of(&row, &named, &self.handles.vault, now) {
                    Ok(target) => {
                        endpoints.insert(row.id, Arc::new(target));
                    }
                    Err(err) => {
                        tracing::error!(endpoint = row.id, error = %err, "an endpoint's stored URL or secret cannot be read; its deliveries fail");
                        unreadable.insert(row.id);
                    }
                }
            }
        }
        let (failing, rows): (Vec<Leased>, Vec<Leased>) = rows
            .into_iter()
            .partition(|row| unreadable.contains(&row.endpoint_id));
        if !failing.is_empty() {
            self.fail_unreadable(&token, failing).await;
        }
        let token: Arc<str> = Arc::from(token);
        let claims = rows
            .into_iter()
            .filter_map(|row| {
                let endpoint = endpoints.get(&row.endpoint_id)?.clone();
                Some(Claim {
                    row,
                    endpoint,
                    token: token.clone(),
                    margin: settings.delivery_timeout,
                })
            })
            .collect();
        Ok(ClaimResult {
            rows: count,
            more_due,
            next_after,
            claims,
        })
    }

    /// Records as failed, with the reason, the claimed deliveries of endpoints whose stored URL
    /// or secret cannot be read: no attempt of theirs could ever be sent, and left queued they
    /// would hold their build's later deliveries back forever. The deliveries behind them are
    /// released, and the worker is woken to send them.
    async fn fail_unreadable(&self, token: &str, rows: Vec<Leased>) {
        let now = crate::now_ms();
        let records: Vec<AttemptRecord> = rows
            .iter()
            .map(|row| AttemptRecord {
                delivery_id: row.id.into(),
                endpoint_id: row.endpoint_id.into(),
                build_id: row.build_id.map(Into::into),
                token: token.to_owned(),
                state: DeliveryState::Failed,
                next_attempt_at: now,
                timestamp: now,
                status: None,
                duration_ms: 0,
                error: Some(
                    "the endpoint's stored URL or secret cannot be read, so nothing was sent; save the endpoint again".to_owned(),
                ),
                response_headers: "{}".to_owned(),
                response_body: String::new(),
            })
            .collect();
        let refs: Vec<&AttemptRecord> = records.iter().collect();
        let recorded = async {
            let _turn = self.handles.writes.worker_turn().await;
            let tx = store::begin_worker_write(self.handles.writes.conn()).await?;
            let recorded = store::deliveries::record_attempts(&tx, &refs).await?;
            tx.commit().await?;
            Ok::<_, crate::Error>(recorded)
        };
        match recorded.await {
            Ok(recorded) => {
                tracing::warn!(
                    deliveries = recorded.ids.len(),
                    "deliveries of endpoints that cannot be read were recorded as failed"
                );
                if !recorded.released.is_empty() {
                    self.handles.writes.wake();
                }
            }
            Err(err) => tracing::warn!(
                error = %err,
                "deliveries of endpoints that cannot be read could not be recorded as failed; their leases will expire"
            ),
        }
    }

    /// Gives back the claims of deliveries that were claimed but not sent, and announces them,
    /// so that another worker sends them at once rather than when their lease ends or at its
    /// next poll.
    async fn give_back(&self, ready: Vec<Claim>) {
        let claims: Vec<(i64, String)> = ready
            .into_iter()
            .map(|claim| (claim.row.id, claim.token.to_string()))
            .collect();
        if claims.is_empty() {
            return;
        }
        let _turn = self.handles.writes.worker_turn().await;
        let writer = self.handles.writes.conn();
        let announcer = self.handles.writes.announcer();
        let given = async {
            store::deliveries::give_back(writer, &claims).await?;
            store::deliveries::announce(writer, announcer).await
        };
        match given.await {
            Ok(()) => tracing::info!(deliveries = claims.len(), "unsent claims were given back"),
            Err(err) => {
                tracing::warn!(error = %err, "giving back unsent claims failed; their leases will expire")
            }
        }
    }

    /// Deletes the deliveries left queued for endpoints that no longer exist (see
    /// [`store::deliveries::remove_orphans`]).
    async fn remove_orphans(&self) {
        let removed = async {
            let tx = store::begin_write(self.handles.writes.conn()).await?;
            let removed = store::deliveries::remove_orphans(&tx).await?;
            tx.commit().await?;
            Ok::<_, crate::Error>(removed)
        };
        match removed.await {
            Ok(0) => {}
            Ok(removed) => tracing::warn!(
                removed,
                "deliveries queued for endpoints deleted meanwhile were removed"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "removing deliveries of deleted endpoints failed")
            }
        }
    }

    /// Releases held deliveries that no longer wait for anything (see
    /// [`store::deliveries::release_stranded`]); whether it released any.
    async fn release_stranded(&self) -> bool {
        match store::deliveries::release_stranded(self.handles.writes.conn()).await {
            Ok(0) => false,
            Ok(released) => {
                tracing::warn!(
                    released,
                    "held deliveries whose chain had moved on were released"
                );
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "releasing stranded deliveries failed");
                false
            }
        }
    }
}

/// The named secrets of the organizations of these endpoints, when any endpoint signs with
/// one.
async fn named_secrets(
    db: &sea_orm::DatabaseConnection,
    rows: &[store::entities::webhook_endpoint::Model],
) -> Result<Vec<store::entities::webhook_secret::Model>> {
    let mut orgs: Vec<i64> = rows
        .iter()
        .filter(|row| row.secret_name.is_some())
        .map(|row| row.org_id)
        .collect();
    if orgs.is_empty() {
        return Ok(Vec::new());
    }
    orgs.sort_unstable();
    orgs.dedup();
    store::secrets::of_orgs(db, &orgs).await
}
