//! One organization cannot slow the others: its flood of changes to one build does not hold
//! up another organization's change at the writer, and its endpoint's backlog does not hold
//! up another endpoint's deliveries at the worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald::app::Role;
use serde_json::{Value, json};

use crate::support::{Herald, Receiver, Reply, TestApp, World};

crate::on_both_backends!(
    a_flood_of_one_builds_changes_does_not_hold_up_another_organizations_build,
    a_backlog_of_one_endpoint_does_not_hold_up_another_endpoints_delivery,
);

const CREATE_TASK: &str = "mutation($build: ID!, $name: String!) { createTask(input: {buildId: $build, name: $name}) { task { id } } }";
const UPDATE_TASK: &str = "mutation($task: ID!, $status: TaskStatus!) { updateTaskStatus(input: {taskId: $task, status: $status}) { task { id statusTimestamp } } }";

/// How many changes of one build organization A has in flight at once.
const FLOOD: usize = 200;

/// How many changes each of A's clients makes, one after the other.
const ROUNDS: usize = 4;

/// A's build's changes can only be written one per transaction (a build's changes are written
/// in order, one per batch), so while A's clients keep FLOOD of them in flight, they wait at
/// the writer. B's build, created meanwhile, goes in the next batch instead of behind them:
/// only a few of A's changes are acknowledged between B's request and its answer. A's
/// deliveries, one chain, still arrive in the order of A's changes.
async fn a_flood_of_one_builds_changes_does_not_hold_up_another_organizations_build(app: TestApp) {
    let receiver = Receiver::start().await;
    let a = World::new(&app, "flood").await;
    a.endpoint(
        &app,
        &receiver.url("/a"),
        json!({ "events": ["TASK"], "payloadQuery": "task(id: $taskId) { id status statusTimestamp }" }),
    )
    .await;
    let b = World::new(&app, "quiet").await;
    let build = a.build(&app).await;
    let creates = (0..FLOOD)
        .map(|n| {
            (
                CREATE_TASK,
                json!({ "build": build, "name": format!("t{n}") }),
            )
        })
        .collect();
    let tasks: Vec<String> = app
        .gql_at_once(&a.write, creates)
        .await
        .iter()
        .map(|response| {
            response["data"]["createTask"]["task"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("a task: {response}"))
                .to_owned()
        })
        .collect();

    // Each of A's clients changes its task ROUNDS times, EXECUTING and SCHEDULED in turn.
    let answered = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::new();
    let mut flood = tokio::task::JoinSet::new();
    for task in tasks.clone() {
        let (http, url, token) = (http.clone(), app.url("/graphql"), a.write.clone());
        let answered = answered.clone();
        flood.spawn(async move {
            for round in 0..ROUNDS {
                let status = ["EXECUTING", "SCHEDULED"][round % 2];
                let body = json!({ "query": UPDATE_TASK, "variables": { "task": task, "status": status } });
                let text = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let response: Value = serde_json::from_str(&text).unwrap();
                assert!(response.get("errors").is_none(), "an update: {response}");
                answered.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    // Once A's flood has been going for a while, its clients' next changes wait at the writer.
    while answered.load(Ordering::SeqCst) < FLOOD {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = answered.load(Ordering::SeqCst);
    b.build(&app).await;
    let meanwhile = answered.load(Ordering::SeqCst) - before;
    flood.join_all().await;
    assert!(
        meanwhile < FLOOD / 10,
        "{meanwhile} of A's changes were acknowledged while B's build waited"
    );

    // A's deliveries, one chain, arrive in the order of A's changes: each task's in the order
    // its client made them, and all of them in the order they were written.
    // Each task's creation is an event too.
    let received = receiver.wait_for(FLOOD * (ROUNDS + 1)).await;
    let bodies: Vec<Value> = received.iter().map(|delivery| delivery.json()).collect();
    let times: Vec<i64> = bodies
        .iter()
        .map(|body| body["data"]["task"]["statusTimestamp"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|pair| pair[0] <= pair[1]),
        "A's deliveries arrived out of the order its changes were written: {times:?}"
    );
    let mut by_task: HashMap<String, Vec<String>> = HashMap::new();
    for body in &bodies {
        let task = &body["data"]["task"];
        by_task
            .entry(task["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(task["status"].as_str().unwrap().to_owned());
    }
    let mut expected = vec!["CREATED".to_owned()];
    expected.extend((0..ROUNDS).map(|round| ["EXECUTING", "SCHEDULED"][round % 2].to_owned()));
    for task in &tasks {
        assert_eq!(by_task.get(task), Some(&expected), "task {task}");
    }
}

/// A's endpoint has a backlog of a hundred builds' deliveries, queued before any worker runs,
/// and a receiver that takes 50 ms per answer; B's one delivery, queued last, is among the
/// first claimed and arrives before A's receiver has answered more than a few.
async fn a_backlog_of_one_endpoint_does_not_hold_up_another_endpoints_delivery(app: TestApp) {
    let backend = app.backend;
    drop(app);
    let app = TestApp::start_role(backend, Role::ApiOnly, |_| {})
        .await
        .unwrap();
    let (slow, fast) = (Receiver::start().await, Receiver::start().await);
    slow.default_reply(Reply::status(200).delay(Duration::from_millis(50)));
    let a = World::new(&app, "backlog").await;
    a.endpoint(&app, &slow.url("/a"), json!({ "events": ["BUILD"] }))
        .await;
    let b = World::new(&app, "other").await;
    b.endpoint(&app, &fast.url("/b"), json!({ "events": ["BUILD"] }))
        .await;
    let backlog = 100;
    for _ in 0..backlog {
        a.build(&app).await;
    }
    b.build(&app).await;

    // Eight slots, two per endpoint: A's endpoint holds at most four claims (two sending,
    // two ready), and the others are free for everyone else.
    let _worker = Herald::spawn(
        &app.database_url,
        &[
            "worker",
            "--worker-concurrency",
            "8",
            "--endpoint-concurrency",
            "2",
        ],
    );
    fast.wait_for(1).await;
    let answered = slow.received().len();
    assert!(
        answered < 4,
        "B's delivery waited until A's receiver had answered {answered} of A's {backlog}"
    );
}
