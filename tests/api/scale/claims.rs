//! Claims and leases, as a worker takes them: a lease run out or taken over is fenced out, a
//! claim says whether it left due deliveries and visits every endpoint before any one's second,
//! and an outcome hands its chain on.

use std::collections::HashSet;
use std::time::Duration;

use herald::app::Role;
use herald::domain::DeliveryState;
use herald::store::deliveries::{self, AttemptRecord};
use herald::store::entities::delivery;
use sea_orm::EntityTrait as _;
use serde_json::json;

use crate::support::{TestApp, World};

/// An API-only Herald on `app`'s backend, for a test that plays the worker itself, with an
/// organization and one endpoint that nothing sends to.
async fn without_worker(app: TestApp) -> (TestApp, World) {
    let backend = app.backend;
    drop(app);
    let app = TestApp::start_role(backend, Role::ApiOnly, |_| {})
        .await
        .unwrap();
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, "http://127.0.0.1:9/hook", json!({}))
        .await;
    (app, world)
}

/// A redelivery made after a claim's lease ran out takes the delivery from that claim: the
/// expired attempt's outcome (here a last attempt's failure), decided on the old schedule,
/// cannot land on the redelivery.
pub(super) async fn a_redelivery_fences_out_the_claim_whose_lease_ran_out(app: TestApp) {
    let (app, world) = without_worker(app).await;
    world.build(&app).await;
    let db = &app.state.db;
    let tx = herald::store::begin_write(db).await.unwrap();
    let request = deliveries::ClaimRequest {
        now: herald::now_ms(),
        lease_ms: 1,
        limit: 10,
        busy: Vec::new(),
        room_of: |_| 10,
        per_endpoint: 16,
        after: 0,
    };
    let deliveries::Leases { token, rows, .. } = deliveries::claim(&tx, request).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let uid = rows[0].uid.clone();
    app.ok(
        &world.admin,
        "mutation($id: ID!) { redeliverWebHook(input: {deliveryId: $id}) { delivery { id } } }",
        json!({ "id": uid }),
    )
    .await;

    let stale = AttemptRecord {
        delivery_id: rows[0].id.into(),
        endpoint_id: rows[0].endpoint_id.into(),
        build_id: rows[0].build_id.map(Into::into),
        token,
        state: DeliveryState::Failed,
        next_attempt_at: herald::now_ms(),
        timestamp: herald::now_ms(),
        status: Some(500),
        duration_ms: 5,
        error: Some("The receiver answered 500.".into()),
        response_headers: "{}".into(),
        response_body: String::new(),
    };
    let recorded = deliveries::record_attempts(db, &[&stale]).await.unwrap();
    assert!(
        recorded.ids.is_empty(),
        "the stale claim's outcome was written"
    );
    let delivery = app
        .ok(
            &world.admin,
            "query($id: ID!) { webhookDelivery(id: $id) { state attempts } }",
            json!({ "id": uid }),
        )
        .await;
    assert_eq!(
        delivery["webhookDelivery"],
        json!({"state": "PENDING", "attempts": 0}),
        "the redelivery waits for its own attempt"
    );
}

pub(super) async fn an_attempt_whose_lease_was_taken_over_changes_nothing(app: TestApp) {
    let (app, world) = without_worker(app).await;
    world.build(&app).await;
    let db = &app.state.db;

    let claim = |lease_ms: i64| async move {
        let tx = herald::store::begin_write(db).await.unwrap();
        let request = deliveries::ClaimRequest {
            now: herald::now_ms(),
            lease_ms,
            limit: 10,
            busy: Vec::new(),
            room_of: |_| 10,
            per_endpoint: 16,
            after: 0,
        };
        let claimed = deliveries::claim(&tx, request).await.unwrap();
        tx.commit().await.unwrap();
        claimed
    };
    let deliveries::Leases {
        token: stale, rows, ..
    } = claim(1).await;
    assert_eq!(rows.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let deliveries::Leases {
        token: current,
        rows,
        ..
    } = claim(60_000).await;
    assert_eq!(rows.len(), 1, "the expired lease was taken over");
    let id = rows[0].id;
    assert!(
        claim(60_000).await.rows.is_empty(),
        "a held lease is not claimed again"
    );

    let outcome = |token: &str, state: DeliveryState, status: i32| AttemptRecord {
        delivery_id: id.into(),
        endpoint_id: rows[0].endpoint_id.into(),
        build_id: rows[0].build_id.map(Into::into),
        token: token.to_owned(),
        state,
        next_attempt_at: herald::now_ms(),
        timestamp: herald::now_ms(),
        status: Some(status),
        duration_ms: 5,
        error: None,
        response_headers: "{}".into(),
        response_body: String::new(),
    };
    let recorded = deliveries::record_attempts(
        db,
        &[
            &outcome(&current, DeliveryState::Delivered, 200),
            &outcome(&stale, DeliveryState::Failed, 500),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        recorded.ids.into_iter().collect::<Vec<_>>(),
        vec![id],
        "only the current lease's attempt is recorded"
    );
    let stale_alone =
        deliveries::record_attempts(db, &[&outcome(&stale, DeliveryState::Failed, 500)])
            .await
            .unwrap();
    assert!(stale_alone.ids.is_empty(), "a stale token records nothing");
    let org: i64 = world.org.parse().unwrap();
    let page = herald::store::Page::new(Some(5), None).unwrap();
    let row = deliveries::list(db, org, None, None, page)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (row.state.as_str(), row.attempts, row.last_status),
        ("DELIVERED", 1, Some(200))
    );
    assert_eq!(
        deliveries::attempts(db, id).await.unwrap().len(),
        1,
        "the stale attempt left no record"
    );
}

/// The worker claims again when a slot frees only if its last claim may have left due
/// deliveries behind; a claim that says it took them all when it did not would leave them to
/// the poll.
pub(super) async fn a_claim_says_whether_it_may_have_left_due_deliveries(app: TestApp) {
    let (app, world) = without_worker(app).await;
    // Three builds: three chains, each with one due delivery to the one endpoint.
    for _ in 0..3 {
        world.build(&app).await;
    }
    let db = &app.state.db;
    let claim = |limit: usize, room: usize| async move {
        let tx = herald::store::begin_write(db).await.unwrap();
        let request = deliveries::ClaimRequest {
            now: herald::now_ms(),
            lease_ms: 60_000,
            limit,
            busy: Vec::new(),
            room_of: move |_| room,
            per_endpoint: 16,
            after: 0,
        };
        let leases = deliveries::claim(&tx, request).await.unwrap();
        tx.commit().await.unwrap();
        (leases.rows.len(), leases.more_due)
    };
    assert_eq!(
        claim(10, 0).await,
        (0, true),
        "due deliveries passed over for an endpoint without room"
    );
    assert_eq!(
        claim(2, 10).await,
        (2, true),
        "a claim that took as many as it could"
    );
    assert_eq!(
        claim(10, 10).await,
        (1, false),
        "the last due delivery, and nothing left"
    );
    assert_eq!(claim(10, 10).await, (0, false), "nothing due");
}

/// A claim visits the endpoints in a round and takes each one's first due delivery before any
/// one's second: an endpoint's backlog, however much older, does not fill a claim while
/// another endpoint has a delivery due.
pub(super) async fn a_claim_takes_every_endpoints_first_delivery_before_any_endpoints_second(
    app: TestApp,
) {
    let (app, world) = without_worker(app).await;
    for _ in 0..30 {
        world.build(&app).await;
    }
    let other = World::new(&app, "other").await;
    let endpoint: i64 = other
        .endpoint(&app, "http://127.0.0.1:9/other", json!({}))
        .await
        .parse()
        .unwrap();
    other.build(&app).await;
    let db = &app.state.db;
    let tx = herald::store::begin_write(db).await.unwrap();
    let request = deliveries::ClaimRequest {
        now: herald::now_ms(),
        lease_ms: 60_000,
        limit: 4,
        busy: Vec::new(),
        room_of: |_| 16,
        per_endpoint: 16,
        after: 0,
    };
    let leases = deliveries::claim(&tx, request).await.unwrap();
    tx.commit().await.unwrap();
    let endpoints: Vec<i64> = leases.rows.iter().map(|row| row.endpoint_id).collect();
    assert_eq!(endpoints.len(), 4);
    assert_eq!(
        endpoints.iter().filter(|id| **id == endpoint).count(),
        1,
        "the other endpoint's delivery was left behind the backlog: {endpoints:?}"
    );
    assert!(leases.more_due, "the backlog has more due");
}

pub(super) async fn an_outcome_says_for_which_endpoints_it_released_held_deliveries(app: TestApp) {
    let (app, world) = without_worker(app).await;
    // One chain: the build's delivery is due, the task's is held behind it.
    let build = world.build(&app).await;
    world.task(&app, &build, "test").await;
    let db = &app.state.db;
    let first = deliver_the_one_due(db).await;
    assert_eq!(
        first.released,
        HashSet::from([first.endpoint]),
        "the build's delivery released the task's"
    );
    let last = deliver_the_one_due(db).await;
    assert!(
        last.released.is_empty(),
        "the chain's last delivery released nothing"
    );
}

/// A finished delivery sent again goes ahead of its chain's unfinished ones; when it finishes,
/// the next to go is the first of those, which is not held, and then the held one after it.
pub(super) async fn a_redelivered_delivery_hands_its_chain_on_in_order(app: TestApp) {
    let (app, world) = without_worker(app).await;
    let build = world.build(&app).await;
    world.task(&app, &build, "one").await;
    world.task(&app, &build, "two").await;
    let db = &app.state.db;
    let built = deliver_the_one_due(db).await;
    let row = delivery::Entity::find_by_id(built.id)
        .one(db)
        .await
        .unwrap()
        .unwrap();
    deliveries::redeliver(db, &row, herald::now_ms())
        .await
        .unwrap();
    let again = deliver_the_one_due(db).await;
    assert_eq!(again.id, built.id, "the redelivered delivery goes first");
    assert_eq!(
        again.released,
        HashSet::from([again.endpoint]),
        "it hands the chain on"
    );
    let one = deliver_the_one_due(db).await;
    assert!(one.id > built.id);
    assert_eq!(
        one.released,
        HashSet::from([one.endpoint]),
        "the first task's delivery releases the second's"
    );
    let two = deliver_the_one_due(db).await;
    assert!(two.id > one.id);
    assert!(two.released.is_empty());
}

/// What [`deliver_the_one_due`] delivered.
struct Delivered {
    id: i64,
    endpoint: i64,
    /// The endpoints of the deliveries its outcome released.
    released: HashSet<i64>,
}

/// Claims the one delivery due, as a worker would, and records it as delivered.
async fn deliver_the_one_due(db: &sea_orm::DatabaseConnection) -> Delivered {
    let tx = herald::store::begin_write(db).await.unwrap();
    let request = deliveries::ClaimRequest {
        now: herald::now_ms(),
        lease_ms: 60_000,
        limit: 10,
        busy: Vec::new(),
        room_of: |_| 10,
        per_endpoint: 16,
        after: 0,
    };
    let deliveries::Leases { token, rows, .. } = deliveries::claim(&tx, request).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows.len(), 1, "one delivery of the chain is due at a time");
    let record = AttemptRecord {
        delivery_id: rows[0].id.into(),
        endpoint_id: rows[0].endpoint_id.into(),
        build_id: rows[0].build_id.map(Into::into),
        token,
        state: DeliveryState::Delivered,
        next_attempt_at: herald::now_ms(),
        timestamp: herald::now_ms(),
        status: Some(200),
        duration_ms: 5,
        error: None,
        response_headers: "{}".into(),
        response_body: String::new(),
    };
    let tx = herald::store::begin_write(db).await.unwrap();
    let recorded = deliveries::record_attempts(&tx, &[&record]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(recorded.ids, HashSet::from([record.delivery_id.get()]));
    Delivered {
        id: record.delivery_id.get(),
        endpoint: record.endpoint_id.get(),
        released: recorded.released,
    }
}
