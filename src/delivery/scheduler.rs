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
mod tests {
    use super::*;

    /// A claim of endpoint `.0` whose lease ends at `.1` (ms).
    #[derive(Debug, PartialEq)]
    struct Fake(i64, i64);

    impl Claimed for Fake {
        fn endpoint(&self) -> i64 {
            self.0
        }
        fn sendable(&self, now_ms: i64) -> bool {
            self.1 > now_ms
        }
    }

    fn result(rows: usize, claims: Vec<Fake>) -> ClaimResult<Fake> {
        ClaimResult {
            rows,
            more_due: false,
            next_after: 7,
            claims,
        }
    }

    #[test]
    fn a_new_worker_claims_all_its_slots_at_once() {
        let t0 = Instant::now();
        let mut s = Scheduler::<Fake>::new(10, 2, t0);
        let plan = s.next(t0, 0).expect("a claim");
        assert_eq!(
            plan,
            ClaimPlan {
                room: 10,
                busy: vec![],
                after: 0,
                per_endpoint: 4
            }
        );
        assert!(s.next(t0, 0).is_none(), "nothing new since the claim");
    }

    #[test]
    fn claims_beyond_an_endpoints_slots_wait_and_take_the_slots_freed() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(10, 2, t0);
        s.next(t0, 0).unwrap();
        let claims = (0..4).map(|_| Fake(1, 1_000)).collect();
        let (launch, more) = s.claimed(10, result(4, claims), t0, 0);
        assert_eq!(launch.send.len(), 2, "two slots of endpoint 1");
        assert!(!more, "the claim did not fill its room");
        assert_eq!(s.room(2), 6, "10 slots less 2 sending and 2 ready");
        assert_eq!(s.room_of(1), 0, "endpoint 1 holds its cap");
        let freed = s.answered(1, 10);
        assert_eq!(
            freed.send,
            vec![Fake(1, 1_000)],
            "a ready claim takes the slot"
        );
        let freed = s.answered(1, 2_000);
        assert!(freed.send.is_empty());
        assert_eq!(
            freed.expired,
            vec![Fake(1, 1_000)],
            "its lease ended while it waited"
        );
        assert_eq!(s.room(1), 9);
    }

    #[test]
    fn endpoints_at_their_cap_are_skipped_by_the_next_claim() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(10, 1, t0);
        s.next(t0, 0).unwrap();
        s.claimed(
            10,
            result(3, vec![Fake(5, 9), Fake(5, 9), Fake(6, 9)]),
            t0,
            0,
        );
        s.wake();
        let plan = s.next(t0 + CLAIM_GAP, 3).expect("a claim after the wake");
        assert_eq!(plan.busy, vec![5], "endpoint 5 holds 2 of 2; 6 holds 1");
        assert_eq!(
            plan.after, 7,
            "the round goes on where the last claim left it"
        );
    }

    #[test]
    fn a_busy_worker_waits_for_more_slots_before_a_small_claim() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(16, 16, t0);
        s.next(t0, 0).unwrap();
        let claims = (0..16).map(|i| Fake(i, 9)).collect();
        let (_, more) = s.claimed(16, result(16, claims), t0, 0);
        assert!(more, "a full claim claims again");
        assert!(!s.claims_again(16), "but there is no room");
        s.answered(3, 0);
        assert!(s.next(t0, 16).is_none(), "one free slot of 16 waits");
        assert_eq!(s.poll_at(), t0 + CLAIM_GAP);
        let plan = s.next(t0 + CLAIM_GAP, 16).expect("claims after the gap");
        assert_eq!(plan.room, 1);
    }

    #[test]
    fn an_outcome_that_made_a_delivery_due_claims_only_with_room_for_it() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(10, 1, t0);
        s.next(t0, 0).unwrap();
        s.claimed(10, result(2, vec![Fake(1, 9), Fake(1, 9)]), t0, 0);
        s.ended(1, true);
        assert!(
            s.next(t0 + CLAIM_GAP, 2).is_none(),
            "endpoint 1 is at its cap"
        );
        s.ended(2, false);
        assert!(s.next(t0 + CLAIM_GAP, 2).is_none(), "nothing was made due");
        s.answered(1, 0);
        assert!(
            s.next(t0 + CLAIM_GAP, 2).is_some(),
            "the freed slot claims what was left due"
        );
    }

    #[test]
    fn answered_attempts_free_their_slots_up_to_what_the_worker_keeps() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(10, 3, t0);
        s.next(t0, 0).unwrap();
        let claims = vec![
            Fake(1, 9),
            Fake(1, 9),
            Fake(1, 9),
            Fake(2, 9),
            Fake(2, 9),
            Fake(1, 9),
        ];
        s.claimed(10, result(6, claims), t0, 0);
        // 5 requests in flight and 1 claim ready: 4 of 10 slots are free, whatever the
        // attempts whose outcome waits to be written.
        assert_eq!(s.room(11), 4);
        // Attempts kept are bounded: 18 of 20 kept leaves room for 1 with the claim ready.
        assert_eq!(s.room(18), 1);
        assert_eq!(s.room(20), 0);
    }

    #[test]
    fn failed_claims_back_off_and_ignore_wakes_until_one_succeeds() {
        let t0 = Instant::now();
        let mut s = Scheduler::<Fake>::new(4, 1, t0);
        s.next(t0, 0).unwrap();
        assert_eq!(s.claim_failed(t0), POLL * 2);
        assert!(!s.listens());
        s.poll();
        s.next(t0, 0).unwrap();
        assert_eq!(s.claim_failed(t0), POLL * 4);
        for _ in 0..10 {
            s.poll();
            s.next(t0, 0).unwrap();
            s.claim_failed(t0);
        }
        assert_eq!(s.poll_at(), t0 + MAX_BACKOFF);
        s.poll();
        s.next(t0, 0).unwrap();
        s.claimed(4, result(0, vec![]), t0, 0);
        assert!(s.listens());
        assert_eq!(s.poll_at(), t0 + POLL);
    }

    #[test]
    fn a_stopping_worker_gets_back_every_ready_claim() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(10, 1, t0);
        s.next(t0, 0).unwrap();
        s.claimed(
            10,
            result(3, vec![Fake(1, 9), Fake(1, 9), Fake(2, 9)]),
            t0,
            0,
        );
        assert_eq!(s.take_ready(), vec![Fake(1, 9)]);
        assert_eq!(s.room(2), 8);
    }
}
