//! The queue across a worker's life: queued deliveries kept in order through an upgrade, a
//! tarpit endpoint that does not starve another organization, and deliveries left queued for
//! a deleted endpoint swept away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::app::Role;
use serde_json::json;

use crate::support::{Herald, Received, Receiver, TestApp, World, task_at};

/// Upgrading a database whose deliveries are still queued keeps every one of them: taken
/// down a step (before migration `delivery_queue`), the queue's rows are the deliveries' own
/// columns again; up again, they are queue rows, and a worker started on the upgraded database
/// sends them all, the build's in order.
pub(super) async fn an_upgrade_keeps_every_queued_delivery_and_its_order(app: TestApp) {
    use herald_migrations::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Statement};
    let (app, receiver, world) = without_a_worker(app).await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["TASK"] }))
        .await;
    let build = world.build(&app).await;
    let one = world.task(&app, &build, "one").await;
    world.task_status(&app, &one, "EXECUTING").await;
    let two = world.task(&app, &build, "two").await;
    let db = &app.state.db;
    let count = |sql: &'static str| async move {
        let statement = Statement::from_string(db.get_database_backend(), sql);
        let row = db.query_one_raw(statement).await.unwrap().unwrap();
        row.try_get::<i64>("", "n").unwrap()
    };
    let held_in_queue = "SELECT COUNT(*) AS n FROM delivery_queue WHERE held = true";
    assert_eq!(count(held_in_queue).await, 2, "two wait behind the first");

    // The queue's migration and every one after it.
    let steps = Migrator::migrations()
        .iter()
        .rev()
        .position(|migration| migration.name() == "m20261214_000001_delivery_queue")
        .unwrap()
        + 1;
    Migrator::down(db, Some(steps as u32)).await.unwrap();
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'PENDING' AND held = true").await,
        2,
        "taken down, the deliveries hold their queue's state"
    );
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'PENDING' AND held = false")
            .await,
        1
    );

    Migrator::up(db, None).await.unwrap();
    assert_eq!(count("SELECT COUNT(*) AS n FROM delivery_queue").await, 3);
    assert_eq!(count(held_in_queue).await, 2);
    let _worker = Herald::spawn(&app.database_url, &["worker"]);
    let received = receiver.wait_for(3).await;
    let order: Vec<(String, String)> = received.iter().map(Received::task).collect();
    let at = task_at;
    assert_eq!(
        order,
        [
            at(&one, "CREATED"),
            at(&one, "EXECUTING"),
            at(&two, "CREATED")
        ]
    );
    receiver
        .expect_no_more_than(3, Duration::from_millis(300))
        .await;
}

pub(super) async fn a_tarpit_endpoint_does_not_starve_another_organization(app: TestApp) {
    let backend = app.backend;
    drop(app);
    let app = TestApp::start_with(backend, |config| {
        config.delivery_timeout = Duration::from_secs(30);
        config.lease = Duration::from_secs(60);
    })
    .await
    .unwrap();
    // The tarpit accepts connections and never answers.
    let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tarpit_addr = tarpit.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = tarpit.accept().await {
                held.lock().unwrap().push(socket);
            }
        });
    }
    let slow = World::new(&app, "slow").await;
    slow.endpoint(&app, &format!("http://{tarpit_addr}/hook"), json!({}))
        .await;
    for _ in 0..40 {
        slow.build(&app).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let receiver = Receiver::start().await;
    let fast = World::new(&app, "fast").await;
    fast.endpoint(&app, &receiver.url("/hook"), json!({})).await;
    let started = Instant::now();
    for _ in 0..20 {
        fast.build(&app).await;
    }
    receiver.wait_for(20).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the other organization waited {took:?} behind a 30 s tarpit"
    );
    let connections = held.lock().unwrap().len();
    assert!(
        connections <= 8,
        "the tarpit held {connections} attempts at once, over the per-endpoint cap"
    );
}

/// On PostgreSQL, an event recorded while its endpoint is being deleted may queue deliveries
/// the deletion did not see. This leaves that state directly (the endpoint's row deleted under
/// its queued deliveries, and a second endpoint's delivery beside them); a worker's sweep
/// removes the first endpoint's deliveries, which nothing could send, and sends the other's.
pub(super) async fn a_worker_removes_deliveries_left_queued_for_a_deleted_endpoint(app: TestApp) {
    use sea_orm::{ConnectionTrait, Statement};
    let (app, receiver, world) = without_a_worker(app).await;
    let gone = world
        .endpoint(&app, &receiver.url("/gone"), json!({}))
        .await;
    world
        .endpoint(&app, &receiver.url("/kept"), json!({}))
        .await;
    world.build(&app).await;
    let db = &app.state.db;
    let sql = format!("DELETE FROM webhook_endpoints WHERE id = {gone}");
    db.execute_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap();
    let log = "{ viewer { webhookDeliveries { edges { node { state } } } } }";
    let states = || async {
        let data = app.ok(&world.admin, log, json!({})).await;
        data["viewer"]["webhookDeliveries"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|edge| edge["node"]["state"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(states().await, ["PENDING", "PENDING"]);
    let _worker = Herald::spawn(&app.database_url, &["worker"]);
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].uri.path(), "/kept");
    let deadline = Instant::now() + Duration::from_secs(10);
    while states().await != ["DELIVERED"] {
        assert!(
            Instant::now() < deadline,
            "the deleted endpoint's delivery stayed: {:?}",
            states().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver
        .expect_no_more_than(1, Duration::from_millis(500))
        .await;
}

/// The same backend as `app`, with no worker (deliveries stay queued until a test starts a
/// `herald worker`), a receiver and an organization.
async fn without_a_worker(app: TestApp) -> (TestApp, Receiver, World) {
    let backend = app.backend;
    drop(app);
    let app = TestApp::start_role(backend, Role::ApiOnly, |_| {})
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    (app, receiver, world)
}
