//! The scheduler's rules, driven with a fake clock.

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
