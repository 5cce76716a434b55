//! The worker: claims due deliveries under a lease, sends them with bounded concurrency, and
//! records each attempt. Woken at once by the outbox after a commit, with a short poll as the
//! fallback for retries coming due and for deliveries another process queued.
//!
//! Claims take as many deliveries as there are free slots in one transaction, and the
//! endpoints they name in one query. They are fair across endpoints (see
//! [`store::deliveries::claim`]): each claim visits the endpoints with deliveries in a round
//! and takes a few of each, skipping those whose slots are all taken, so that one endpoint's
//! backlog never holds up another's deliveries. An endpoint whose slots are all taken may have
//! as many claimed deliveries again waiting for them, so that a freed slot sends at once
//! instead of waiting for the next claim; a stopping worker gives back those it did not send.
//! Outcomes go to one writer task, which records every outcome that is waiting in one
//! transaction: under load, a few statements per batch instead of a transaction per delivery. An attempt ends once it has handed its outcome over; the
//! writer tells the worker's loop, one message per transaction, what the outcomes made due.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::{Destination, Outgoing};
use super::outcome::{Outcome, decide};
use crate::Result;
use crate::app::AppState;
use crate::domain::DeliveryState;
use crate::signing::Signer;
use crate::store::{
    self,
    deliveries::{AttemptRecord, Leased},
};

/// How often an idle worker looks for due deliveries it was not woken for.
const POLL: Duration = Duration::from_millis(200);

/// The longest pause after claims keep failing (the database is down or restarting).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often the worker looks for held deliveries that no longer wait for anything.
const SWEEP: Duration = Duration::from_secs(60);

/// The most outcomes the writer records in one transaction.
const WRITE_BATCH: usize = 512;

/// Attempts a worker keeps per slot, sending or with their outcome waiting to be written: an
/// answered request frees its slot at once, so that the next delivery is sent while the
/// outcome waits for the writer's next transaction, and this bounds how many wait.
const KEPT_PER_SLOT: usize = 2;

/// While the worker is busy, a claim for fewer than `1/SMALL_CLAIM` of its slots waits up to
/// [`CLAIM_GAP`] after the previous claim for more to free up: a claim costs about the same
/// for one delivery as for a hundred, and on SQLite it holds the one write lock meanwhile.
const SMALL_CLAIM: usize = 8;

/// See [`SMALL_CLAIM`].
const CLAIM_GAP: Duration = Duration::from_millis(5);

/// How long the writer waits for more outcomes while requests are still unanswered, so that
/// the answers to one claim, which come close together, share a transaction.
const GATHER: Duration = Duration::from_millis(5);

/// The delivery worker of one process.
pub struct Worker {
    /// Shared by every attempt: cloning it is one count, not one per handle it holds.
    state: Arc<AppState>,
}

impl Worker {
    pub fn new(state: AppState) -> Self {
        Self {
            state: Arc::new(state),
        }
    }

    /// Runs until `shutdown`; then stops claiming and gives in-flight attempts the configured
    /// grace to finish. Attempts still running after it are dropped: their leases expire and
    /// another worker sends them again.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = &self.state.config;
        let limit = config.worker_concurrency as usize;
        let per_endpoint = config.endpoint_concurrency as usize;
        // The most claimed deliveries the worker holds per endpoint: as many as it has slots,
        // in flight, and as many again ready to send as slots free up.
        let held_cap = 2 * per_endpoint;
        // Attempts sending, up to the hand-off of their outcome to the writer.
        let mut in_flight: JoinSet<()> = JoinSet::new();
        // Requests in flight per endpoint: a slot is taken at the claim and given back as soon
        // as the receiver has answered (see [`Slot`]), not when the outcome is written.
        let mut per: HashMap<i64, usize> = HashMap::new();
        // Claimed deliveries of endpoints whose slots are all taken, up to `per_endpoint` more
        // per endpoint: a freed slot sends the next one at once instead of waiting for a claim.
        let mut ready: Ready = Ready::default();
        let (freed, mut answered) = mpsc::unbounded_channel::<i64>();
        let unanswered = Arc::new(AtomicUsize::new(0));
        // Outcomes handed to the writer and not written yet: with the attempts in flight, the
        // attempts the worker keeps.
        let unwritten = Arc::new(AtomicUsize::new(0));
        let (ends, mut written_ends) = mpsc::unbounded_channel::<Vec<Ended>>();
        tracing::info!(concurrency = limit, "delivery worker started");
        let database_url = &config.database.database_url;
        let listener = database_url.starts_with("postgres").then(|| {
            let wake = self.state.wake.clone();
            tokio::spawn(super::listener::listen(
                database_url.clone(),
                wake,
                self.state.outbox.announcer().to_owned(),
                shutdown.clone(),
            ))
        });
        let (outcomes, written) = mpsc::channel(limit.max(1));
        let launcher = Launcher {
            state: self.state.clone(),
            outcomes: outcomes.clone(),
            freed: freed.clone(),
            unanswered: unanswered.clone(),
            unwritten: unwritten.clone(),
            per_endpoint,
            margin: config.delivery_timeout,
        };
        let mut writer = tokio::spawn(write_outcomes(
            self.state.clone(),
            written,
            unanswered.clone(),
            unwritten.clone(),
            ends,
        ));
        let kept = |in_flight: &JoinSet<()>| in_flight.len() + unwritten.load(Ordering::Relaxed);
        let mut failures = 0u32;
        let mut last_sweep: Option<tokio::time::Instant> = None;
        // Whether to claim on the next turn: set by what may have made deliveries due, or
        // claimable, since the last claim. A wake always claims: a claim does not read the
        // deliveries of endpoints at their cap, so it finds what the wake announced however
        // long their queues are.
        let mut claim_now = true;
        // Where the next claim's round of endpoints goes on.
        let mut after = 0i64;
        // Whether due deliveries may be left unclaimed, which a freed slot may let the next
        // claim take: the last claim left some behind, or an outcome since released one whose
        // endpoint had no room for it. When not, a slot freed by an answer makes nothing due
        // (the outcome's write may, and the writer's report of it claims).
        let mut left_due = true;
        // Attempts whose outcome was written since the last turn.
        let mut ended: Vec<Ended> = Vec::new();
        let mut poll_at = tokio::time::Instant::now();
        let mut last_claim = tokio::time::Instant::now();
        loop {
            if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP) {
                last_sweep = Some(tokio::time::Instant::now());
                self.remove_orphans().await;
                claim_now |= self.release_stranded().await;
            }
            // Attempts that handed their outcome over are counted once, as unwritten: collected
            // first, so that a claim does not count them twice.
            while let Some(done) = in_flight.try_join_next() {
                claim_now |= done.is_err();
            }
            // Slots freed by answers not seen yet are given back first, so that a claim counts
            // them: a claim made without them finds the endpoints still at their cap.
            while let Ok(endpoint_id) = answered.try_recv() {
                claim_now |= left_due;
                launcher.free(&mut in_flight, &mut per, &mut ready, endpoint_id);
            }
            // An outcome written may have made a delivery due (released the next of its chain,
            // or scheduled a retry for now), which is worth a claim only if it did (most do
            // not: the next event of a chain is seldom recorded before the delivery before it
            // is sent), and at once only if its endpoint has room for it (counted after the
            // answers). Without room, it is left due for the claim that the endpoint's next
            // freed slot makes.
            for ended in ended.drain(..).filter(|ended| ended.made_due) {
                if held(&per, &ready, ended.endpoint) >= held_cap {
                    left_due = true;
                } else {
                    claim_now = true;
                }
            }
            let room = room_for_claims(limit, &per, kept(&in_flight), ready.total);
            let mut more = false;
            // An idle worker's room is all its slots, so only a busy one waits.
            let worth_it = room >= limit.div_ceil(SMALL_CLAIM) || last_claim.elapsed() >= CLAIM_GAP;
            if room > 0 && claim_now && !worth_it {
                poll_at = poll_at.min(last_claim + CLAIM_GAP);
            } else if room > 0 && claim_now {
                last_claim = tokio::time::Instant::now();
                let mut pause = POLL;
                let held = |endpoint: i64| held(&per, &ready, endpoint);
                let busy: Vec<i64> = per
                    .keys()
                    .chain(ready.by_endpoint.keys())
                    .copied()
                    .filter(|id| held(*id) >= held_cap)
                    .collect::<HashSet<i64>>()
                    .into_iter()
                    .collect();
                let room_of = |endpoint: i64| held_cap.saturating_sub(held(endpoint));
                let request = store::deliveries::ClaimRequest {
                    now: crate::now_ms(),
                    lease_ms: config.lease.as_millis() as i64,
                    limit: room,
                    busy,
                    room_of,
                    per_endpoint: held_cap,
                    after,
                };
                claim_now = false;
                match self.claim(request).await {
                    Ok(claimed) => {
                        failures = 0;
                        more = claimed.rows == room;
                        claim_now = more;
                        left_due = claimed.more_due;
                        after = claimed.next_after;
                        for (row, endpoint) in claimed.ready {
                            let claim = Claim {
                                row,
                                endpoint,
                                token: claimed.token.clone(),
                            };
                            if per.get(&claim.row.endpoint_id).copied().unwrap_or(0) < per_endpoint
                            {
                                launcher.launch(&mut in_flight, &mut per, claim);
                            } else {
                                ready.push(claim);
                            }
                        }
                    }
                    Err(err) => {
                        failures += 1;
                        left_due = true;
                        pause = (POLL * 2u32.saturating_pow(failures.min(5))).min(MAX_BACKOFF);
                        tracing::warn!(error = %err, retry_in = ?pause, "claiming deliveries failed");
                    }
                }
                poll_at = tokio::time::Instant::now() + pause;
            } else if poll_at <= tokio::time::Instant::now() {
                poll_at = tokio::time::Instant::now() + POLL;
            }
            if more && room_for_claims(limit, &per, kept(&in_flight), ready.total) > 0 {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // The loop holds a sender of the writer's, so the writer ends only by
                // panicking: so does the worker, rather than go on claiming with no one to
                // record outcomes (and, as they are never written, soon with no room).
                stopped = &mut writer => match stopped {
                    Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                    _ => panic!("the outcome writer stopped while the worker ran"),
                },
                Some(first) = in_flight.join_next(), if !in_flight.is_empty() => {
                    // An attempt that panicked handed no outcome over: what it would have
                    // made due is not known.
                    // The others that ended are collected at the top of the loop.
                    claim_now |= first.is_err();
                }
                Some(batch) = written_ends.recv() => {
                    ended.extend(batch);
                    while let Ok(batch) = written_ends.try_recv() {
                        ended.extend(batch);
                    }
                }
                Some(endpoint_id) = answered.recv() => {
                    claim_now |= left_due;
                    launcher.free(&mut in_flight, &mut per, &mut ready, endpoint_id);
                }
                _ = self.state.wake.notified(), if failures == 0 => claim_now = true,
                _ = tokio::time::sleep_until(poll_at) => claim_now = true,
            }
        }
        if let Some(listener) = listener {
            let _ = listener.await;
        }
        self.give_back(ready).await;
        drop(launcher);
        drop(outcomes);
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
        // Every sender is gone once the attempts are: the writer records what is left and ends.
        drop(in_flight);
        let _ = writer.await;
    }

    /// Claims up to `room` deliveries and looks up their endpoints. A delivery whose endpoint
    /// was deleted since it was queued went with it and is dropped; one whose endpoint's URL,
    /// secret or credentials cannot be read is recorded as failed with the reason (see
    /// [`Worker::fail_unreadable`]).
    async fn claim(
        &self,
        request: store::deliveries::ClaimRequest<impl Fn(i64) -> usize>,
    ) -> Result<Claimed> {
        let db = &self.state.db;
        let leases = if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            // The claim configures its transaction itself (see [`store::deliveries::claim`]).
            let tx = store::begin_write(db).await?;
            let claimed = store::deliveries::claim(&tx, request).await?;
            tx.commit().await?;
            claimed
        } else {
            let _turn = self.state.outbox.worker_turn().await;
            store::wait_for_disk(&self.state.writer, false).await?;
            store::deliveries::claim(&self.state.writer, request).await?
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
            for row in store::endpoints::find_many(&self.state.db, &ids).await? {
                let fields = match store::endpoints::fields_of(&row, &self.state.vault) {
                    Ok(fields) => fields,
                    Err(err) => {
                        tracing::error!(endpoint = row.id, error = %err, "an endpoint's stored URL or secret cannot be read; its deliveries fail");
                        unreadable.insert(row.id);
                        continue;
                    }
                };
                let target = Target {
                    destination: Destination::new(&fields.url, row.insecure_ssl),
                    signer: fields.secret.as_deref().map(Signer::new),
                };
                endpoints.insert(row.id, Arc::new(target));
            }
        }
        let (failing, rows): (Vec<Leased>, Vec<Leased>) = rows
            .into_iter()
            .partition(|row| unreadable.contains(&row.endpoint_id));
        if !failing.is_empty() {
            self.fail_unreadable(&token, failing).await;
        }
        let ready = rows
            .into_iter()
            .filter_map(|row| {
                let endpoint = endpoints.get(&row.endpoint_id)?.clone();
                Some((row, endpoint))
            })
            .collect();
        Ok(Claimed {
            token: Arc::from(token),
            rows: count,
            more_due,
            next_after,
            ready,
        })
    }
}

impl Worker {
    /// Records as failed, with the reason, the claimed deliveries of endpoints whose stored URL
    /// or secret cannot be read: no attempt of theirs could ever be sent, and left queued they
    /// would hold their build's later deliveries back forever. The deliveries behind them are
    /// released, and the worker is woken to send them.
    async fn fail_unreadable(&self, token: &str, rows: Vec<Leased>) {
        let now = crate::now_ms();
        let records: Vec<AttemptRecord> = rows
            .iter()
            .map(|row| AttemptRecord {
                delivery_id: row.id,
                endpoint_id: row.endpoint_id,
                build_id: row.build_id,
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
            let _turn = self.state.outbox.worker_turn().await;
            let tx = store::begin_worker_write(&self.state.writer).await?;
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
                    self.state.outbox.wake();
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
    async fn give_back(&self, ready: Ready) {
        let claims: Vec<(i64, String)> = ready
            .by_endpoint
            .into_values()
            .flatten()
            .map(|claim| (claim.row.id, claim.token.to_string()))
            .collect();
        if claims.is_empty() {
            return;
        }
        let _turn = self.state.outbox.worker_turn().await;
        let writer = &self.state.writer;
        let announcer = self.state.outbox.announcer();
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
            let tx = store::begin_write(&self.state.writer).await?;
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
        match store::deliveries::release_stranded(&self.state.writer).await {
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

/// What one claim took.
struct Claimed {
    token: Arc<str>,
    /// How many deliveries were claimed.
    rows: usize,
    /// Whether due deliveries may be left that it did not take (see
    /// [`store::deliveries::Leases::more_due`]).
    more_due: bool,
    /// Where the next claim's round of endpoints goes on.
    next_after: i64,
    /// The claimed deliveries whose endpoint still exists, with it.
    ready: Vec<(Leased, Arc<Target>)>,
}

/// A claimed delivery, with its endpoint and the claim's token.
struct Claim {
    row: Leased,
    endpoint: Arc<Target>,
    token: Arc<str>,
}

/// Claimed deliveries waiting for a slot of their endpoint, oldest first.
#[derive(Default)]
struct Ready {
    by_endpoint: HashMap<i64, VecDeque<Claim>>,
    total: usize,
}

impl Ready {
    fn of(&self, endpoint: i64) -> usize {
        self.by_endpoint.get(&endpoint).map_or(0, VecDeque::len)
    }

    fn push(&mut self, claim: Claim) {
        self.total += 1;
        self.by_endpoint
            .entry(claim.row.endpoint_id)
            .or_default()
            .push_back(claim);
    }

    fn pop(&mut self, endpoint: i64) -> Option<Claim> {
        let queue = self.by_endpoint.get_mut(&endpoint)?;
        let claim = queue.pop_front();
        if queue.is_empty() {
            self.by_endpoint.remove(&endpoint);
        }
        if claim.is_some() {
            self.total -= 1;
        }
        claim
    }
}

/// Starts attempts: what each one needs from the worker.
struct Launcher {
    state: Arc<AppState>,
    outcomes: mpsc::Sender<Written>,
    freed: mpsc::UnboundedSender<i64>,
    unanswered: Arc<AtomicUsize>,
    /// Outcomes handed to the writer and not written yet.
    unwritten: Arc<AtomicUsize>,
    /// The most requests in flight to one endpoint.
    per_endpoint: usize,
    /// A claim whose lease ends sooner than this is not sent: the longest an attempt takes
    /// (at most half the lease, see [`crate::config::Config::check`], so that a fresh claim
    /// is always sent).
    margin: Duration,
}

impl Launcher {
    /// Sends `claim` in a task of `in_flight`, holding a slot of its endpoint. A claim that
    /// waited so long that its lease could end during the attempt is not sent: another claim
    /// takes it once the lease ends.
    fn launch(&self, in_flight: &mut JoinSet<()>, per: &mut HashMap<i64, usize>, claim: Claim) {
        let Claim {
            row,
            endpoint,
            token,
        } = claim;
        let left = row.lease_until.unwrap_or(i64::MAX) - crate::now_ms();
        if left <= self.margin.as_millis() as i64 {
            tracing::info!(delivery = %row.uid, "a claim waited past its lease's margin and was not sent");
            return;
        }
        *per.entry(row.endpoint_id).or_default() += 1;
        let slot = Slot::take(row.endpoint_id, &self.freed, &self.unanswered);
        let state = self.state.clone();
        let outcomes = self.outcomes.clone();
        let unwritten = self.unwritten.clone();
        in_flight.spawn(async move {
            // An outcome not handed over is not recorded: the lease expires and the delivery
            // is sent again.
            if let Err(err) =
                attempt(&state, row, &endpoint, slot, token, &outcomes, &unwritten).await
            {
                tracing::warn!(error = %err, "a delivery attempt could not be recorded");
            }
        });
    }

    /// Gives back the slot of an endpoint whose receiver answered, and sends its claims that
    /// wait for one. A claim that is not sent (its lease is ending) leaves the slot free for
    /// the next one.
    fn free(
        &self,
        in_flight: &mut JoinSet<()>,
        per: &mut HashMap<i64, usize>,
        ready: &mut Ready,
        endpoint_id: i64,
    ) {
        release_slot(per, endpoint_id);
        while per.get(&endpoint_id).copied().unwrap_or(0) < self.per_endpoint {
            let Some(claim) = ready.pop(endpoint_id) else {
                break;
            };
            self.launch(in_flight, per, claim);
        }
    }
}

/// An attempt whose outcome the writer has written (or failed to).
struct Ended {
    endpoint: i64,
    /// Whether its outcome may have made a delivery of its endpoint due: its write released
    /// the next delivery of a chain of the endpoint, or scheduled its retry for now (or could
    /// not be recorded).
    made_due: bool,
}

/// An endpoint as an attempt needs it: where to send, and its secret ready to sign with.
struct Target {
    destination: Destination,
    signer: Option<Signer>,
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

/// How many more deliveries a worker with `limit` slots may claim: as many as it has free slots
/// (requests in flight, `per` endpoint, and claims `ready` take one each), and no more than
/// [`KEPT_PER_SLOT`] allows with the attempts it keeps (`kept`: sending, or with their outcome
/// waiting to be written).
fn room_for_claims(limit: usize, per: &HashMap<i64, usize>, kept: usize, ready: usize) -> usize {
    let sending: usize = per.values().sum();
    let free = limit.saturating_sub(sending + ready);
    free.min((KEPT_PER_SLOT * limit).saturating_sub(kept + ready))
}

/// The claimed deliveries of an endpoint the worker holds: in flight and ready to send.
fn held(per: &HashMap<i64, usize>, ready: &Ready, endpoint: i64) -> usize {
    per.get(&endpoint).copied().unwrap_or(0) + ready.of(endpoint)
}

fn release_slot(per: &mut HashMap<i64, usize>, endpoint_id: i64) {
    if let Some(count) = per.get_mut(&endpoint_id) {
        *count -= 1;
        if *count == 0 {
            per.remove(&endpoint_id);
        }
    }
}

/// An outcome on its way to the writer, with what the writer needs to count it and to tell
/// the worker's loop whether it made a delivery due.
struct Written {
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
    state: &AppState,
    mut row: Leased,
    endpoint: &Target,
    slot: Slot,
    token: Arc<str>,
    outcomes: &mpsc::Sender<Written>,
    unwritten: &AtomicUsize,
) -> Result<()> {
    let answer = state
        .sender
        .send(Outgoing {
            to: &endpoint.destination,
            event: &row.event,
            delivery_id: &row.uid,
            event_timestamp: row.created_at,
            signer: endpoint.signer.as_ref(),
            body: std::mem::take(&mut row.body),
        })
        .await;
    drop(slot);
    let now = crate::now_ms();
    let outcome = decide(
        answer.status,
        answer.retry_after.as_deref(),
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
    let record = AttemptRecord {
        delivery_id: row.id,
        endpoint_id: row.endpoint_id,
        build_id: row.build_id,
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
async fn write_outcomes(
    state: Arc<AppState>,
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
        let mut results = vec![write_waiting(&state, &batch).await];
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
                results.push(write_waiting(&state, std::slice::from_ref(written)).await);
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
                let endpoint = written.record.endpoint_id;
                // Whether an outcome that could not be recorded made anything due is not
                // known: it counts as if it did.
                let made_due = match result {
                    Ok(done) => {
                        let recorded = done.ids.contains(&written.record.delivery_id);
                        count(&state, &written, recorded);
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
async fn write_waiting(state: &AppState, batch: &[Written]) -> Result<store::deliveries::Recorded> {
    let mut wait = Duration::from_millis(100);
    loop {
        match write_batch(state, batch).await {
            Err(crate::Error::Unavailable) if wait < state.config.lease => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            result => return result,
        }
    }
}

/// Counts a written outcome in the metrics, as lost when its lease had been taken over.
fn count(state: &AppState, written: &Written, recorded: bool) {
    let label = if recorded {
        written.outcome.label()
    } else {
        "lease_lost"
    };
    state.metrics.attempt(label, written.duration.as_secs_f64());
    if !recorded {
        tracing::info!(delivery = %written.uid, "the lease was taken over; this attempt's result was discarded");
    }
}

/// Writes outcomes in one transaction, and disables each endpoint that answered 410 to an
/// attempt that was recorded.
async fn write_batch(state: &AppState, batch: &[Written]) -> Result<store::deliveries::Recorded> {
    let records: Vec<&AttemptRecord> = batch.iter().map(|w| &w.record).collect();
    let _turn = state.outbox.worker_turn().await;
    let tx = store::begin_worker_write(&state.writer).await?;
    let recorded = store::deliveries::record_attempts(&tx, &records).await?;
    for written in batch.iter().filter(|w| w.outcome == Outcome::Gone) {
        if recorded.ids.contains(&written.record.delivery_id) {
            store::endpoints::disable(&tx, written.record.endpoint_id).await?;
        }
    }
    tx.commit().await?;
    Ok(recorded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_attempts_free_their_slots_up_to_what_the_worker_keeps() {
        let sending = HashMap::from([(1, 3), (2, 2)]);
        // 5 requests in flight and 1 claim ready: 4 of 10 slots are free, whatever the
        // attempts whose outcome waits to be written (6 of them here).
        assert_eq!(room_for_claims(10, &sending, 11, 1), 4);
        // Attempts kept are bounded: 18 of 20 kept leaves room for 1 with the claim ready.
        assert_eq!(room_for_claims(10, &sending, 18, 1), 1);
        assert_eq!(room_for_claims(10, &sending, 20, 1), 0);
        assert_eq!(room_for_claims(10, &HashMap::new(), 0, 0), 10);
    }
}
