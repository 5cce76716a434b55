//! In which order: each build's deliveries arrive in order under a slow receiver, changes sent
//! at once each get their own answer and payload, and a retrying delivery holds back its own
//! build only.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Received, Receiver, Reply, TestApp, World, code, task_at};

pub(super) async fn each_build_arrives_in_order_under_a_slow_receiver(app: TestApp) {
    let receiver = Receiver::start().await;
    let delays: Vec<Reply> = (0..60)
        .map(|i| Reply::status(200).delay(Duration::from_millis((i * 37 % 5) * 20)))
        .collect();
    receiver.script(delays);
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["TASK"] }))
        .await;
    let statuses = [
        "TRIGGERED",
        "SCHEDULED",
        "EXECUTING",
        "PAUSED",
        "EXECUTING",
        "FAILED",
        "COMPLETED",
    ];
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let build = world.build(&app).await;
        tasks.push(world.task(&app, &build, "test").await);
    }
    for status in statuses {
        for task in &tasks {
            world.task_status(&app, task, status).await;
        }
    }
    let received = receiver.wait_for(3 * (statuses.len() + 1)).await;
    for task in &tasks {
        let seen: Vec<String> = received
            .iter()
            .map(|r| r.json())
            .filter(|body| body["data"]["task"]["id"] == task.as_str())
            .map(|body| body["data"]["task"]["status"].as_str().unwrap().to_owned())
            .collect();
        let mut expected = vec!["CREATED".to_owned()];
        expected.extend(statuses.iter().map(|s| s.to_string()));
        assert_eq!(seen, expected, "task {task} arrived out of order");
    }
}

/// Changes that arrive together are written together; each still gets its own answer, a change
/// that fails does not take the others with it, and each payload shows its build as its own
/// change left it, in the order the build's changes were made.
pub(super) async fn changes_sent_at_once_get_their_own_answers_and_payloads(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let selection = "build(id: $buildId) { tasks { id status } } task(id: $taskId) { id status }";
    world
        .endpoint(
            &app,
            &receiver.url("/hook"),
            json!({ "events": ["TASK"], "payloadQuery": selection }),
        )
        .await;
    const CREATE: &str = "mutation($build: ID!, $name: String!) { createTask(input: {buildId: $build, name: $name}) { task { id name } } }";
    let mut created = Vec::new();
    for _ in 0..6 {
        let build = world.build(&app).await;
        created.push((
            CREATE,
            json!({ "build": build, "name": format!("a{build}") }),
        ));
        created.push((
            CREATE,
            json!({ "build": build, "name": format!("b{build}") }),
        ));
    }
    let failing = [
        (CREATE, json!({ "build": "999999", "name": "x" })),
        (
            CREATE,
            json!({ "build": created[0].1["build"], "name": " " }),
        ),
    ];
    created.extend(failing);
    let answers = app.gql_at_once(&world.write, created.clone()).await;
    let mut builds = Vec::new();
    for (pair, requests) in answers[..12].chunks(2).zip(created.chunks(2)) {
        let tasks: Vec<String> = pair
            .iter()
            .zip(requests)
            .map(|(answer, (_, asked))| {
                let task = &answer["data"]["createTask"]["task"];
                assert_eq!(task["name"], asked["name"], "{answer}");
                task["id"].as_str().unwrap().to_owned()
            })
            .collect();
        builds.push([tasks[0].clone(), tasks[1].clone()]);
    }
    assert_eq!(code(&answers[12]), "NOT_FOUND", "{}", answers[12]);
    assert_eq!(code(&answers[13]), "BAD_USER_INPUT", "{}", answers[13]);
    receiver.wait_for(12).await;
    const UPDATE: &str = "mutation($task: ID!, $status: TaskStatus!) { updateTaskStatus(input: {taskId: $task, status: $status}) { task { id status } } }";
    let mut requests: Vec<(&str, Value)> = builds
        .iter()
        .flatten()
        .map(|task| (UPDATE, json!({ "task": task, "status": "EXECUTING" })))
        .collect();
    requests.extend((0..4).map(|_| (UPDATE, json!({ "task": "999999", "status": "EXECUTING" }))));
    let answers = app.gql_at_once(&world.write, requests).await;
    for (answer, task) in answers.iter().zip(builds.iter().flatten()) {
        let written = &answer["data"]["updateTaskStatus"]["task"];
        assert_eq!(written["id"], task.as_str(), "{answer}");
        assert_eq!(written["status"], "EXECUTING", "{answer}");
    }
    for answer in &answers[12..] {
        assert_eq!(code(answer), "NOT_FOUND", "{answer}");
    }
    let received = receiver.wait_for(24).await;
    for tasks in &builds {
        let events: Vec<Value> = received[12..]
            .iter()
            .map(|r| r.json()["data"].clone())
            .filter(|data| tasks.iter().any(|task| data["task"]["id"] == task.as_str()))
            .collect();
        assert_eq!(events.len(), 2, "{events:?}");
        for (n, data) in events.iter().enumerate() {
            assert_eq!(data["task"]["status"], "EXECUTING");
            let executing = data["build"]["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|task| task["status"] == "EXECUTING")
                .count();
            assert_eq!(executing, n + 1, "event {n} of its build: {data}");
        }
    }
    receiver
        .expect_no_more_than(24, Duration::from_millis(300))
        .await;
}

pub(super) async fn a_retrying_delivery_holds_back_its_own_build_only(app: TestApp) {
    let backend = app.backend;
    drop(app);
    let app = TestApp::start_with(backend, |config| {
        config.retry_schedule = herald::domain::RetrySchedule::parse("1s").unwrap();
    })
    .await
    .unwrap();
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500)]);
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["TASK"] }))
        .await;
    let build = world.build(&app).await;
    let held = world.task(&app, &build, "held").await;
    receiver.wait_for(1).await;
    // The first event now waits a second for its retry; its build's next events wait behind it.
    world.task_status(&app, &held, "EXECUTING").await;
    world.task_status(&app, &held, "COMPLETED").await;
    let other = world.build(&app).await;
    let free = world.task(&app, &other, "free").await;
    let received = receiver.wait_for(5).await;
    let order: Vec<(String, String)> = received.iter().map(Received::task).collect();
    let at = task_at;
    assert_eq!(
        order,
        [
            at(&held, "CREATED"),
            at(&free, "CREATED"),
            at(&held, "CREATED"),
            at(&held, "EXECUTING"),
            at(&held, "COMPLETED"),
        ],
        "the other build went ahead; the held build followed its retry in order"
    );
}
