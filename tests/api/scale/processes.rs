//! Several processes on one PostgreSQL: an API and workers deliver every event exactly once,
//! killed workers and terminated connections lose nothing, two API processes changing the same
//! rows record one event per change, and a change with due deliveries wakes the workers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald::store::deliveries;
use serde_json::{Value, json};

use super::{CREATE_TASK, Cluster, api_process, assert_per_build_order, record_events, settle};
use crate::support::{Receiver, Reply};

pub(super) async fn one_api_and_two_workers_deliver_two_thousand_events_exactly_once() {
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(2, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let acknowledged = record_events(&cluster.client, &cluster.repository, 100, 19, 8).await;
    assert_eq!(acknowledged, 2000);
    let (distinct, total) = settle(&receiver, acknowledged).await;
    assert_eq!(distinct, 2000, "every event was delivered");
    assert_eq!(total, 2000, "no event was delivered twice");
    assert_per_build_order(&receiver);
}

pub(super) async fn workers_killed_at_random_lose_nothing() {
    let receiver = Receiver::start().await;
    receiver.default_reply(Reply::status(200).delay(Duration::from_millis(10)));
    let Some(mut cluster) = Cluster::start(2, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let recording = {
        let client = cluster.client.clone();
        let repository = cluster.repository.clone();
        tokio::spawn(async move { record_events(&client, &repository, 60, 19, 4).await })
    };
    for kill in 0..12 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let victim = (herald::now_ms() as usize + kill) % cluster.workers.len();
        cluster.workers[victim].kill_and_restart();
    }
    let acknowledged = recording.await.unwrap();
    let (distinct, total) = settle(&receiver, acknowledged).await;
    assert_eq!(distinct, acknowledged, "no event was lost");
    println!(
        "12 worker kills while {acknowledged} events flowed caused {} duplicate deliveries",
        total - distinct
    );
    assert!(
        total - distinct <= 12 * 2 * 8,
        "only in-flight attempts may repeat"
    );
    assert!(cluster.api.running());
}

pub(super) async fn terminated_database_connections_lose_nothing_and_need_no_restart() {
    let receiver = Receiver::start().await;
    let Some(mut cluster) = Cluster::start(1, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let stop = Arc::new(AtomicBool::new(false));
    let terminator = {
        let stop = stop.clone();
        let name = cluster.database.name().to_owned();
        let database_url = cluster.database.url.clone();
        tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let admin = sea_orm::Database::connect(&database_url).await.unwrap();
                use sea_orm::ConnectionTrait;
                admin
                    .execute_unprepared(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                    ))
                    .await
                    .unwrap();
                admin.close().await.ok();
                rounds += 1;
            }
            rounds
        })
    };
    let acknowledged = record_events(&cluster.client, &cluster.repository, 30, 19, 4).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = terminator.await.unwrap();
    assert!(
        rounds >= 3,
        "the connections were terminated only {rounds} times"
    );
    let (distinct, _) = settle(&receiver, acknowledged).await;
    assert_eq!(
        distinct, acknowledged,
        "every acknowledged event was delivered"
    );
    assert!(
        cluster.api.running() && cluster.workers[0].running(),
        "no process had to restart"
    );
    println!("{rounds} rounds of pg_terminate_backend during {acknowledged} events: nothing lost");
}

/// Two API processes changing the same tasks at the same moment record one event per task, from
/// the status it really had: a batch's read of the tasks it changes locks them, so the second
/// batch reads them as the first left them and finds nothing to change.
pub(super) async fn two_api_processes_changing_the_same_tasks_record_one_event_each() {
    const TASKS: usize = 20;
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(1, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let (_second_api, second) = api_process(&cluster.database, &cluster.client.token).await;
    // A build per task: each process takes all the changes in one batch.
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let build = cluster.new_build().await;
        let task = cluster
            .client
            .gql(
                CREATE_TASK,
                json!({ "build": build, "name": format!("task-{t}") }),
            )
            .await;
        tasks.push(
            task["createTask"]["task"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut requests = tokio::task::JoinSet::new();
    for task in &tasks {
        for client in [&cluster.client, &second] {
            let (client, task) = (client.clone(), task.clone());
            requests.spawn(async move {
                client
                    .gql(
                        "mutation($task: ID!) { updateTaskStatus(input: {taskId: $task, status: EXECUTING}) { task { status } } }",
                        json!({ "task": task }),
                    )
                    .await
            });
        }
    }
    while let Some(answer) = requests.join_next().await {
        assert_eq!(
            answer.unwrap()["updateTaskStatus"]["task"]["status"],
            "EXECUTING"
        );
    }
    let expected = 2 * TASKS + TASKS;
    let (distinct, _) = settle(&receiver, expected).await;
    let mut updates: HashMap<String, Vec<Value>> = HashMap::new();
    for received in receiver.received() {
        let body = received.json();
        if body["action"] == "updated" {
            let task = body["data"]["task"]["id"].as_str().unwrap().to_owned();
            updates
                .entry(task)
                .or_default()
                .push(body["old_status"].clone());
        }
    }
    let twice: Vec<_> = updates.iter().filter(|(_, olds)| olds.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "tasks with more than one event: {twice:?}"
    );
    assert_eq!(updates.len(), TASKS);
    assert!(updates.values().all(|olds| olds == &vec![json!("CREATED")]));
    assert_eq!(distinct, expected, "one event per change that happened");
}

/// Two API processes changing the same builds' statuses at once, each in the opposite order,
/// lock the builds in one order: no batch of changes deadlocks and has to be written again one
/// change at a time, and each change records one event.
pub(super) async fn two_api_processes_changing_builds_in_opposite_orders_do_not_deadlock() {
    const BUILDS: usize = 48;
    const STATUSES: [&str; 5] = ["TRIGGERED", "EXECUTING", "FAILED", "EXECUTING", "COMPLETED"];
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(1, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let (_second_api, second) = api_process(&cluster.database, &cluster.client.token).await;
    let mut builds = Vec::new();
    for _ in 0..BUILDS {
        builds.push(cluster.new_build().await);
    }
    for status in STATUSES {
        let mut requests = tokio::task::JoinSet::new();
        for n in 0..BUILDS {
            let forward = (cluster.client.clone(), builds[n].clone());
            let backward = (second.clone(), builds[BUILDS - 1 - n].clone());
            for (client, build) in [forward, backward] {
                requests.spawn(async move {
                    client
                        .gql(
                            "mutation($build: ID!, $status: BuildStatus!) { updateBuildStatus(input: {buildId: $build, status: $status}) { build { status } } }",
                            json!({ "build": build, "status": status }),
                        )
                        .await
                });
            }
        }
        while let Some(answer) = requests.join_next().await {
            assert_eq!(
                answer.unwrap()["updateBuildStatus"]["build"]["status"],
                status
            );
        }
    }
    for client in [&cluster.client, &second] {
        assert_eq!(
            client.metric("herald_change_batches_split_total").await,
            0.0
        );
    }
    let expected = BUILDS * (1 + STATUSES.len());
    let (distinct, _) = settle(&receiver, expected).await;
    assert_eq!(distinct, expected, "one event per change that happened");
    let mut olds: HashMap<String, Vec<Value>> = HashMap::new();
    let mut seen = HashSet::new();
    for received in receiver.received() {
        // At least once: a delivery sent again counts once.
        if !seen.insert(received.header("x-cirrus-delivery").unwrap().to_owned()) {
            continue;
        }
        let body = received.json();
        if body["action"] == "updated" {
            let build = body["data"]["build"]["id"].as_str().unwrap().to_owned();
            olds.entry(build)
                .or_default()
                .push(body["old_status"].clone());
        }
    }
    assert_eq!(olds.len(), BUILDS);
    let changes: Vec<Value> = ["CREATED"]
        .iter()
        .chain(&STATUSES[..STATUSES.len() - 1])
        .map(|status| json!(status))
        .collect();
    assert!(olds.values().all(|olds| olds == &changes), "{olds:?}");
}

/// Each change that queues a delivery due now announces it on PostgreSQL's channel at its
/// commit, so a worker of another process sends it at once instead of at its next poll. A
/// delivery held behind an unfinished one of its chain is not announced: the worker that
/// finishes that one releases it, and would only claim nothing if woken for it.
pub(super) async fn a_change_that_queues_due_deliveries_notifies_the_workers() {
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(0, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect(&cluster.database.url)
        .await
        .unwrap();
    listener.listen(deliveries::CHANNEL).await.unwrap();
    // Two builds, one after the other, each with two tasks: with no worker running, each
    // build's first delivery is due and its tasks' are held behind it.
    let acknowledged = record_events(&cluster.client, &cluster.repository, 2, 2, 1).await;
    assert_eq!(acknowledged, 6);
    let mut announced = 0;
    while let Ok(notification) = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await
    {
        notification.unwrap();
        announced += 1;
    }
    assert_eq!(
        announced, 2,
        "one notification per change with a due delivery"
    );
}

pub(super) async fn two_apis_and_two_workers_number_two_thousand_events_without_gaps() {
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(2, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let (_second, other) = api_process(&cluster.database, &cluster.client.token).await;
    // Each API process records 1,000 events of its own builds, from four clients.
    let (a, b) = tokio::join!(
        record_events(&cluster.client, &cluster.repository, 50, 19, 4),
        record_events(&other, &cluster.repository, 50, 19, 4),
    );
    assert_eq!(a + b, 2000);
    let (distinct, total) = settle(&receiver, 2000).await;
    assert_eq!((distinct, total), (2000, 2000), "every event once");
    assert_per_build_order(&receiver);
    // Numbered 1…2,000, each once, and each build's events in their order.
    let mut numbers = Vec::new();
    let mut last_of_build: HashMap<String, i64> = HashMap::new();
    for received in receiver.received() {
        let n: i64 = received
            .header("x-herald-sequence")
            .unwrap()
            .parse()
            .unwrap();
        numbers.push(n);
        let body = received.json();
        let build = body["data"]["build"]["id"].as_str().unwrap().to_owned();
        if let Some(before) = last_of_build.insert(build.clone(), n) {
            assert!(before < n, "build {build}: {before} then {n}");
        }
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=2000).collect::<Vec<i64>>());
}

pub(super) async fn two_apis_finishing_builds_of_one_branch_chain_their_transitions() {
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(1, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let (_second, other) = api_process(&cluster.database, &cluster.client.token).await;
    let finish = "mutation($build: ID!, $status: BuildStatus!) { updateBuildStatus(input: {buildId: $build, status: $status}) { build { id } } }";
    let base = cluster.new_build().await;
    cluster
        .client
        .gql(finish, json!({ "build": base, "status": "COMPLETED" }))
        .await;
    let mut builds = Vec::new();
    for _ in 0..24 {
        builds.push(cluster.new_build().await);
    }
    // Both processes finish builds of the one branch at once, passes and failures mixed.
    let status_of = |n: usize| {
        if n.is_multiple_of(3) {
            "COMPLETED"
        } else {
            "FAILED"
        }
    };
    let mut finishing = Vec::new();
    for (n, build) in builds.iter().enumerate() {
        let client = if n.is_multiple_of(2) {
            cluster.client.clone()
        } else {
            other.clone()
        };
        let variables = json!({ "build": build, "status": status_of(n) });
        finishing.push(tokio::spawn(
            async move { client.gql(finish, variables).await },
        ));
    }
    for finished in finishing {
        finished.await.unwrap();
    }
    // Each build compares with exactly one other, and the comparisons form one chain from the
    // passing build the branch had: no two builds compared with the same one.
    let mut previous_of: HashMap<String, (String, Value)> = HashMap::new();
    for build in &builds {
        let data = cluster
            .client
            .gql(
                "query($id: ID!) { build(id: $id) { status transition previousBuild { id status } } }",
                json!({ "id": build }),
            )
            .await;
        let read = &data["build"];
        let previous = &read["previousBuild"];
        let expected = match (
            previous["status"].as_str().unwrap(),
            read["status"].as_str().unwrap(),
        ) {
            ("COMPLETED", "FAILED") => json!("BROKEN"),
            ("FAILED", "FAILED") => json!("STILL_FAILING"),
            ("FAILED", "COMPLETED") => json!("FIXED"),
            _ => Value::Null,
        };
        assert_eq!(read["transition"], expected, "build {build}: {read}");
        let previous = previous["id"].as_str().unwrap().to_owned();
        previous_of.insert(build.clone(), (previous, read["transition"].clone()));
    }
    let mut next_of: HashMap<&str, &str> = HashMap::new();
    for (build, (previous, _)) in &previous_of {
        assert!(
            next_of.insert(previous.as_str(), build.as_str()).is_none(),
            "two builds compared with build {previous}"
        );
    }
    let mut chain = 0;
    let mut at = base.as_str();
    while let Some(next) = next_of.get(at) {
        chain += 1;
        at = next;
    }
    assert_eq!(chain, builds.len(), "one chain holds every build");
}
