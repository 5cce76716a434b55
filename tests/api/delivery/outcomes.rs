//! Outcomes that are kept: a shutdown lets in-flight attempts finish and gives back the claims
//! it did not send, and an outcome rolled back in a deadlock is written again.

use std::time::Duration;

use herald::domain::DeliveryState;
use herald::store::deliveries;
use sea_orm::sqlx::postgres::PgListener;
use serde_json::json;

use super::{a_build_answered_slowly, settled};
use crate::support::{Backend, Receiver, Reply, TestApp, World};

pub(super) async fn shutdown_lets_in_flight_attempts_finish(mut app: TestApp) {
    let (receiver, world) = a_build_answered_slowly(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop().await;
    let org: i64 = world.org.parse().unwrap();
    let page = herald::store::Page::new(Some(10), None).unwrap();
    let rows = herald::store::deliveries::list(&app.state.db, org, None, None, page)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].state,
        DeliveryState::Delivered,
        "the in-flight attempt finished and was recorded before exit"
    );
    assert_eq!(receiver.received().len(), 1);
}

/// A worker holds claimed deliveries of a busy endpoint ready for its next free slot; when it
/// stops, it gives back those it did not send, so that they do not wait for their lease to end.
pub(super) async fn shutdown_gives_back_claims_it_did_not_send(app: TestApp) {
    let backend = app.backend;
    drop(app);
    let mut app = TestApp::start_with(backend, |config| config.endpoint_concurrency = 1)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    // The first build's delivery is answered after the stop, within the shutdown's grace; the
    // second waits, claimed, for the endpoint's one slot; the third is not claimed.
    receiver.default_reply(Reply::status(200).delay(Duration::from_millis(1200)));
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["BUILD"] }))
        .await;
    for _ in 0..3 {
        world.build(&app).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // On PostgreSQL, the claims given back are announced to the other processes' workers.
    let mut listener = match backend {
        Backend::Postgres => {
            let mut listener = PgListener::connect(&app.database_url).await.unwrap();
            listener.listen(deliveries::CHANNEL).await.unwrap();
            Some(listener)
        }
        Backend::Sqlite => None,
    };
    app.stop().await;
    if let Some(listener) = listener.as_mut() {
        let announced = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await;
        assert!(
            announced.is_ok_and(|notification| notification.is_ok()),
            "the claims given back were not announced"
        );
    }
    assert_eq!(receiver.received().len(), 1);
    let org: i64 = world.org.parse().unwrap();
    let page = herald::store::Page::new(Some(10), None).unwrap();
    let rows = herald::store::deliveries::list(&app.state.db, org, None, None, page)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let states: Vec<&str> = rows.iter().map(|row| row.state.as_str()).collect();
    assert_eq!(
        states.iter().filter(|state| **state == "DELIVERED").count(),
        1,
        "{states:?}"
    );
    for row in rows
        .iter()
        .filter(|row| row.state == DeliveryState::Pending)
    {
        use sea_orm::EntityTrait;
        let queued = herald::store::entities::delivery_queue::Entity::find_by_id(row.id)
            .one(&app.state.db)
            .await
            .unwrap()
            .expect("an unfinished delivery is queued");
        assert_eq!(queued.lease_token, None, "a claim was kept: {queued:?}");
        assert_eq!(queued.lease_until, None, "a claim was kept: {queued:?}");
    }
}

/// An outcome whose transaction PostgreSQL rolls back to break a deadlock (another transaction
/// holds the delivery's row and waits for its queue row, which the outcome took first) is
/// written again once the other lets go: the delivery is recorded once, as delivered, and is
/// not sent again when its lease ends.
pub(super) async fn on_postgres_an_outcome_rolled_back_in_a_deadlock_is_written_again() {
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
    let lease = Duration::from_secs(4);
    let Some(app) = TestApp::start_with(Backend::Postgres, |config| config.lease = lease).await
    else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let (receiver, world) = a_build_answered_slowly(&app).await;
    let other = sea_orm::Database::connect(&app.database_url).await.unwrap();
    let query = |sql: &str| Statement::from_string(sea_orm::DbBackend::Postgres, sql.to_owned());
    // While the receiver answers, another transaction takes the delivery's row; it detects no
    // deadlock itself, so that PostgreSQL ends the outcome's transaction and not this one.
    let tx = other.begin().await.unwrap();
    tx.execute_unprepared("SET LOCAL deadlock_timeout = '30s'")
        .await
        .unwrap();
    let row = tx
        .query_one_raw(query("SELECT id FROM deliveries FOR UPDATE"))
        .await
        .unwrap()
        .expect("the build's delivery");
    let id: i64 = row.try_get("", "id").unwrap();
    // The outcome deletes the queue row, then waits for the delivery's row.
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity
        WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE deliveries%'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = other.query_one_raw(query(waiting)).await.unwrap().unwrap();
        if row.try_get::<i64>("", "n").unwrap() > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outcome never waited for the delivery's row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Waiting for the queue row closes the cycle; once the outcome's transaction is rolled
    // back, the row is there again and this lock is granted.
    let queued = tx
        .query_one_raw(query(&format!(
            "SELECT delivery_id FROM delivery_queue WHERE delivery_id = {id} FOR UPDATE"
        )))
        .await
        .unwrap();
    assert!(queued.is_some(), "the rolled-back outcome left the queue");
    tx.rollback().await.unwrap();
    let delivery = settled(&app, &world, "DELIVERED").await;
    assert_eq!(delivery["attempts"], 1);
    // Past the lease: an outcome left unwritten would have its delivery sent again.
    receiver
        .expect_no_more_than(1, lease + Duration::from_secs(1))
        .await;
}
