//! The worker's decisions, with no I/O: when to claim and how many, which claimed deliveries to
//! send now and which wait for a slot of their endpoint, and what a finished attempt frees.
//! The worker's loop feeds it what happened (a wake, an answer, a written outcome, a claim's
//! result) and does what it says; time comes in as arguments, so tests drive it with a fake
//! clock.
//!
//! Slots: a worker sends at most `limit` requests at once and at most `per_endpoint` to one
//! endpoint. A slot is taken when a delivery is sent and given back as soon as the receiver
//! has answered, not when the outcome is written. An endpoint whose slots are all taken may
//! hold as many claimed deliveries again, ready to send as its slots free up, so that a freed
//! slot sends at once instead of waiting for the next claim.
//!
//! Claims: a claim is made when something may have made deliveries due or claimable since the
//! last one (a wake, a written outcome that released or rescheduled a delivery, a slot freed
//! while due deliveries were left behind, the poll), and only with room. While busy, a claim
//! for fewer than `1/SMALL_CLAIM` of the slots waits up to [`CLAIM_GAP`] after the previous
//! one for more to free up: a claim costs about the same for one delivery as for a hundred,
//! and on SQLite it holds the one write lock meanwhile. Failed claims back off exponentially
//! up to [`MAX_BACKOFF`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// How often an idle worker looks for due deliveries it was not woken for.
pub const POLL: Duration = Duration::from_millis(200);

/// The longest pause after claims keep failing (the database is down or restarting).
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Attempts a worker keeps per slot, sending or with their outcome waiting to be written: an
/// answered request frees its slot at once, so that the next delivery is sent while the
/// outcome waits for the writer's next transaction, and this bounds how many wait.
pub const KEPT_PER_SLOT: usize = 2;

/// See the module header.
pub const SMALL_CLAIM: usize = 8;

/// See the module header.
pub const CLAIM_GAP: Duration = Duration::from_millis(5);

/// A claimed delivery as the scheduler sees it.
pub trait Claimed {
    /// The endpoint it goes to.
    fn endpoint(&self) -> i64;
    /// Whether it may still be sent at `now_ms`: its lease must outlast the longest attempt.
    fn sendable(&self, now_ms: i64) -> bool;
}

/// What a claim took, as the scheduler needs it.
pub struct ClaimResult<C> {
    /// How many deliveries were claimed (some may have been dropped since).
    pub rows: usize,
    /// Whether due deliveries may be left that it did not take.
    pub more_due: bool,
    /// Where the next claim's round of endpoints goes on.
    pub next_after: i64,
    /// The claimed deliveries that can be sent.
    pub claims: Vec<C>,
}

/// What to claim now.
#[derive(Debug, PartialEq, Eq)]
pub struct ClaimPlan {
    /// How many deliveries, at most.
    pub room: usize,
    /// Endpoints whose claimed deliveries are at the cap: the claim skips them.
    pub busy: Vec<i64>,
    /// Where the claim's round of endpoints goes on.
    pub after: i64,
    /// The most claimed deliveries the worker holds per endpoint.
    pub per_endpoint: usize,
}

/// Claims to send now, and those dropped because their lease is ending.
#[derive(Debug)]
pub struct Launch<C> {
    pub send: Vec<C>,
    pub expired: Vec<C>,
}

impl<C> Default for Launch<C> {
    fn default() -> Self {
        Self {
            send: Vec::new(),
            expired: Vec::new(),
        }
    }
}

/// The scheduler of one worker (see the module header).
pub struct Scheduler<C> {
    limit: usize,
    per_endpoint: usize,
    /// Requests in flight per endpoint.
    sending: HashMap<i64, usize>,
    /// Claimed deliveries waiting for a slot of their endpoint, oldest first.
    ready: HashMap<i64, VecDeque<C>>,
    ready_total: usize,
    /// Whether to claim on the next turn.
    claim_now: bool,
    /// Whether due deliveries may be left unclaimed, which a freed slot may let a claim take.
    left_due: bool,
    /// Where the next claim's round of endpoints goes on.
    after: i64,
    /// Claims failed in a row.
    failures: u32,
    last_claim: Instant,
    /// When to claim at the latest.
    poll_at: Instant,
}

impl<C: Claimed> Scheduler<C> {
    /// A scheduler for `limit` requests at once, `per_endpoint` to one endpoint; it claims at
    /// once.
    pub fn new(limit: usize, per_endpoint: usize, now: Instant) -> Self {
        Self {
            limit,
            per_endpoint,
            sending: HashMap::new(),
            ready: HashMap::new(),
            ready_total: 0,
            claim_now: true,
            left_due: true,
            after: 0,
            failures: 0,
            last_claim: now,
            poll_at: now,
        }
    }

    /// The most claimed deliveries held per endpoint: in flight, and as many again ready.
    fn held_cap(&self) -> usize {
        2 * self.per_endpoint
    }

    /// The claimed deliveries of an endpoint the worker holds: in flight and ready to send.
    fn held(&self, endpoint: i64) -> usize {
        self.sending.get(&endpoint).copied().unwrap_or(0)
            + self.ready.get(&endpoint).map_or(0, VecDeque::len)
    }

    /// How many more deliveries may be claimed: as many as there are free slots (requests in
    /// flight and claims ready take one each), and no more than [`KEPT_PER_SLOT`] allows with
    /// the attempts the worker keeps (`kept`: sending, or with their outcome waiting to be
    /// written).
    pub fn room(&self, kept: usize) -> usize {
        let sending: usize = self.sending.values().sum();
        let free = self.limit.saturating_sub(sending + self.ready_total);
        free.min((KEPT_PER_SLOT * self.limit).saturating_sub(kept + self.ready_total))
    }

    /// Deliveries may be due: a wake, a released delivery, an attempt that ended without an
    /// outcome.
    pub fn wake(&mut self) {
        self.claim_now = true;
    }

    /// Whether a wake is worth listening to now: not while claims fail and back off.
    pub fn listens(&self) -> bool {
        self.failures == 0
    }

    /// When the loop must come back at the latest.
    pub fn poll_at(&self) -> Instant {
        self.poll_at
    }

    /// The poll came: claim.
    pub fn poll(&mut self) {
        self.claim_now = true;
    }

    /// The receiver of a delivery to `endpoint` answered: its slot is free, and the endpoint's
    /// ready claims take it.
    pub fn answered(&mut self, endpoint: i64, now_ms: i64) -> Launch<C> {
        self.claim_now |= self.left_due;
        if let Some(count) = self.sending.get_mut(&endpoint) {
            *count -= 1;
            if *count == 0 {
                self.sending.remove(&endpoint);
            }
        }
        let mut launch = Launch::default();
        while self.sending.get(&endpoint).copied().unwrap_or(0) < self.per_endpoint {
            let Some(claim) = self.pop_ready(endpoint) else {
                break;
            };
            self.admit(claim, now_ms, &mut launch);
        }
        launch
    }

    /// An outcome of a delivery to `endpoint` was written; `made_due` when its write may have
    /// made a delivery of the endpoint due. That is worth a claim now only if the endpoint has
    /// room; without, it is left due for the claim its next freed slot makes.
    pub fn ended(&mut self, endpoint: i64, made_due: bool) {
        if !made_due {
            return;
        }
        if self.held(endpoint) >= self.held_cap() {
            self.left_due = true;
        } else {
            self.claim_now = true;
        }
    }

    /// What to claim now, if anything; `None` means wait until [`Scheduler::poll_at`] or an
    /// event.
    pub fn next(&mut self, now: Instant, kept: usize) -> Option<ClaimPlan> {
        let room = self.room(kept);
        // An idle worker's room is all its slots, so only a busy one waits.
        let worth_it = room >= self.limit.div_ceil(SMALL_CLAIM)
            || now.duration_since(self.last_claim) >= CLAIM_GAP;
        if room > 0 && self.claim_now && !worth_it {
            self.poll_at = self.poll_at.min(self.last_claim + CLAIM_GAP);
            return None;
        }
        if room > 0 && self.claim_now {
            self.last_claim = now;
            self.claim_now = false;
            let cap = self.held_cap();
            let endpoints: HashSet<i64> = self
                .sending
                .keys()
                .chain(self.ready.keys())
                .copied()
                .collect();
            let mut busy: Vec<i64> = endpoints
                .into_iter()
                .filter(|id| self.held(*id) >= cap)
                .collect();
            busy.sort_unstable();
            return Some(ClaimPlan {
                room,
                busy,
                after: self.after,
                per_endpoint: cap,
            });
        }
        if self.poll_at <= now {
            self.poll_at = now + POLL;
        }
        None
    }

    /// How many more deliveries `endpoint` may have claimed for it.
    pub fn room_of(&self, endpoint: i64) -> usize {
        self.held_cap().saturating_sub(self.held(endpoint))
    }

    /// A claim of `room` took `result`: which to send now; the others wait for a slot.
    /// Returns whether to claim again at once (it filled its room, so more may be due).
    pub fn claimed(
        &mut self,
        room: usize,
        result: ClaimResult<C>,
        now: Instant,
        now_ms: i64,
    ) -> (Launch<C>, bool) {
        self.failures = 0;
        let more = result.rows == room;
        self.claim_now = more;
        self.left_due = result.more_due;
        self.after = result.next_after;
        self.poll_at = now + POLL;
        let mut launch = Launch::default();
        for claim in result.claims {
            if self.sending.get(&claim.endpoint()).copied().unwrap_or(0) < self.per_endpoint {
                self.admit(claim, now_ms, &mut launch);
            } else {
                self.ready_total += 1;
                self.ready
                    .entry(claim.endpoint())
                    .or_default()
                    .push_back(claim);
            }
        }
        (launch, more)
    }

    /// A claim failed: back off, doubling the pause each time up to [`MAX_BACKOFF`].
    pub fn claim_failed(&mut self, now: Instant) -> Duration {
        self.failures += 1;
        self.left_due = true;
        let pause = (POLL * 2u32.saturating_pow(self.failures.min(5))).min(MAX_BACKOFF);
        self.poll_at = now + pause;
        pause
    }

    /// Whether a claim that filled its room should be followed by another at once.
    pub fn claims_again(&self, kept: usize) -> bool {
        self.room(kept) > 0
    }

    /// Every claim still waiting for a slot, to give back when the worker stops.
    pub fn take_ready(&mut self) -> Vec<C> {
        self.ready_total = 0;
        self.ready.drain().flat_map(|(_, queue)| queue).collect()
    }

    fn pop_ready(&mut self, endpoint: i64) -> Option<C> {
        let queue = self.ready.get_mut(&endpoint)?;
        let claim = queue.pop_front();
        if queue.is_empty() {
            self.ready.remove(&endpoint);
        }
        if claim.is_some() {
            self.ready_total -= 1;
        }
        claim
    }

    /// Sends `claim` now, taking a slot of its endpoint, unless its lease is ending: another
    /// claim takes it once the lease ends.
    fn admit(&mut self, claim: C, now_ms: i64, launch: &mut Launch<C>) {
        if claim.sendable(now_ms) {
            *self.sending.entry(claim.endpoint()).or_default() += 1;
            launch.send.push(claim);
        } else {
            launch.expired.push(claim);
        }
    }
}

#[cfg(test)]
mod tests;
