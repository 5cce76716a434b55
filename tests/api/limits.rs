//! What one organization's token can send is bounded: strings Herald cannot store, input
//! sizes and counts, and the work a query or a stored selection may do.

use serde_json::{Value, json};

use std::time::Duration;

use crate::support::{Receiver, TestApp, World, code};

crate::on_both_backends!(
    a_nul_in_any_string_input_is_refused_alone_and_named,
    inputs_past_their_bounds_are_refused_and_change_nothing,
    accumulating_inputs_stop_at_their_bounds,
    a_url_too_long_once_encoded_is_refused_and_nothing_is_stored,
    queries_cost_the_most_tasks_a_build_may_have_and_stop_at_their_row_budget,
    an_oversized_payload_is_recorded_as_a_failed_delivery_with_its_reason,
    deliveries_to_an_endpoint_that_cannot_be_read_fail_with_the_reason,
);

/// Runs a request that must be refused with BAD_USER_INPUT and `expected` as its message.
async fn refused(app: &TestApp, token: &str, query: &str, variables: Value, expected: &str) {
    let response = app.gql(Some(token), query, variables).await;
    assert_eq!(code(&response), "BAD_USER_INPUT", "{response}");
    assert_eq!(message(&response), expected, "{response}");
}

fn message(response: &Value) -> &str {
    response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
}

async fn a_nul_in_any_string_input_is_refused_alone_and_named(app: TestApp) {
    let a = World::new(&app, "a").await;
    let b = World::new(&app, "b").await;
    let build_a = a.build(&app).await;
    let build_b = b.build(&app).await;
    let create_task = "mutation($build: ID!, $name: String!) { createTask(input: {buildId: $build, name: $name}) { task { id } } }";
    let bad = [
        (
            "mutation($input: CreateBuildInput!) { createBuild(input: $input) { build { id } } }",
            json!({ "input": { "repositoryId": a.repository, "branch": "ma\u{0}in", "changeIdInRepo": "x" } }),
            "$input.branch",
        ),
        (
            "mutation($build: ID!) { createTask(input: {buildId: $build, name: \"t\", labels: [\"ok\", \"l\\u0000\"]}) { task { id } } }",
            json!({ "build": build_a }),
            "createTask(input.labels[1])",
        ),
        (
            create_task,
            json!({ "build": build_a, "name": "\u{0}" }),
            "$name",
        ),
        (
            "mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"r\\u0000\"}) { repository { id } } }",
            json!({ "org": a.org }),
            "createRepository(input.name)",
        ),
        (
            "query { ownerInfoByName(name: \"a\\u0000\") { uid } }",
            json!({}),
            "ownerInfoByName(name)",
        ),
    ];
    let good: Vec<(&str, Value)> = (0..20)
        .map(|n| {
            (
                create_task,
                json!({ "build": build_b, "name": format!("t{n}") }),
            )
        })
        .collect();
    let (refused, written) = tokio::join!(
        app.gql_at_once(
            &a.write,
            bad.iter()
                .map(|(query, variables, _)| (*query, variables.clone()))
                .collect()
        ),
        app.gql_at_once(&b.write, good)
    );
    for ((_, _, path), response) in bad.iter().zip(&refused) {
        assert_eq!(code(response), "BAD_USER_INPUT", "{response}");
        assert_eq!(
            message(response),
            format!("The input {path} holds a NUL character, which Herald cannot store."),
        );
    }
    for response in &written {
        assert!(response.get("errors").is_none(), "{response}");
    }
    assert_eq!(
        app.state.metrics.change_batches_split.get(),
        0,
        "no batch of changes was split"
    );
    let tasks = app
        .ok(
            &a.read,
            "query($build: ID!) { build(id: $build) { tasks { id } } }",
            json!({ "build": build_a }),
        )
        .await;
    assert_eq!(tasks["build"]["tasks"], json!([]), "nothing was written");
}

const CREATE_BUILD: &str =
    "mutation($input: CreateBuildInput!) { createBuild(input: $input) { build { id } } }";
const CREATE_TASK: &str =
    "mutation($input: CreateTaskInput!) { createTask(input: $input) { task { id } } }";
const UPDATE_TASK: &str =
    "mutation($input: UpdateTaskStatusInput!) { updateTaskStatus(input: $input) { task { id } } }";

async fn inputs_past_their_bounds_are_refused_and_change_nothing(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let build = world.build(&app).await;
    let task = world.task(&app, &build, "test").await;
    let long = |n: usize| "é".repeat(n);
    let build_input = |field: &str, value: Value| {
        let mut input =
            json!({ "repositoryId": world.repository, "branch": "main", "changeIdInRepo": "abc" });
        input[field] = value;
        json!({ "input": input })
    };
    for (field, value, expected) in [
        (
            "branch",
            json!(long(256)),
            "The branch is longer than 255 characters.",
        ),
        ("branch", json!(" "), "The branch must not be empty."),
        (
            "changeIdInRepo",
            json!(long(256)),
            "The change id is longer than 255 characters.",
        ),
        (
            "tag",
            json!(long(256)),
            "The tag is longer than 255 characters.",
        ),
        (
            "changeMessageTitle",
            json!(long(1025)),
            "The change message title is longer than 1024 characters.",
        ),
        (
            "changeMessage",
            json!(long(64 * 1024 + 1)),
            "The change message is longer than 65536 characters.",
        ),
    ] {
        refused(
            &app,
            &world.write,
            CREATE_BUILD,
            build_input(field, value),
            expected,
        )
        .await;
    }
    let task_input = |field: &str, value: Value| {
        let mut input = json!({ "buildId": build, "name": "lint" });
        input[field] = value;
        json!({ "input": input })
    };
    let many_labels: Vec<String> = (0..101).map(|n| format!("l{n}")).collect();
    for (field, value, expected) in [
        (
            "name",
            json!(long(256)),
            "The task name is longer than 255 characters.",
        ),
        (
            "nameAlias",
            json!(long(256)),
            "The name alias is longer than 255 characters.",
        ),
        (
            "instanceType",
            json!(long(256)),
            "The instance type is longer than 255 characters.",
        ),
        (
            "labels",
            json!(many_labels),
            "There are 101 labels; at most 100 are allowed.",
        ),
        (
            "labels",
            json!([long(256)]),
            "The label is longer than 255 characters.",
        ),
    ] {
        refused(
            &app,
            &world.write,
            CREATE_TASK,
            task_input(field, value),
            expected,
        )
        .await;
    }
    let note = |message: String| json!({ "level": "INFO", "message": message });
    for (notes, expected) in [
        (
            (0..21).map(|n| note(format!("n{n}"))).collect::<Vec<_>>(),
            "There are 21 notifications in one change; at most 20 are allowed.",
        ),
        (
            vec![note(long(4097))],
            "The notification message is longer than 4096 characters.",
        ),
    ] {
        refused(
            &app,
            &world.write,
            UPDATE_TASK,
            json!({ "input": { "taskId": task, "status": "EXECUTING", "notifications": notes } }),
            expected,
        )
        .await;
    }
    let secret = json!({ "input": { "ownerUid": world.org, "webhookURL": "https://example.com/hook", "secretToken": long(1025) } });
    refused(
        &app,
        &world.admin,
        "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id } } }",
        secret,
        "The secret token is longer than 1024 characters.",
    )
    .await;

    let data = app
        .ok(
            &world.read,
            "query($build: ID!) { build(id: $build) { tasks { id status notifications { message } } } viewer { repositories { edges { node { builds { edges { node { id } } } } } } } }",
            json!({ "build": build }),
        )
        .await;
    assert_eq!(
        data["build"]["tasks"],
        json!([{ "id": task, "status": "CREATED", "notifications": [] }]),
        "nothing was written"
    );
    let builds = &data["viewer"]["repositories"]["edges"][0]["node"]["builds"]["edges"];
    assert_eq!(
        builds.as_array().unwrap().len(),
        1,
        "no other build: {builds}"
    );
}

async fn accumulating_inputs_stop_at_their_bounds(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let build = world.build(&app).await;

    // A task keeps at most 100 notifications, whatever the number of changes that bring them.
    let task = world.task(&app, &build, "test").await;
    let notes: Vec<Value> = (0..20)
        .map(|n| json!({ "level": "INFO", "message": format!("n{n}") }))
        .collect();
    for status in ["EXECUTING", "PAUSED", "EXECUTING", "PAUSED", "EXECUTING"] {
        app.ok(
            &world.write,
            UPDATE_TASK,
            json!({ "input": { "taskId": task, "status": status, "notifications": notes } }),
        )
        .await;
    }
    refused(
        &app,
        &world.write,
        UPDATE_TASK,
        json!({ "input": { "taskId": task, "status": "COMPLETED", "notifications": [notes[0]] } }),
        &format!("Task {task} would have 101 notifications; a task keeps at most 100."),
    )
    .await;

    // A build has at most 200 tasks.
    let more: Vec<(&str, Value)> = (1..200)
        .map(|n| {
            (
                CREATE_TASK,
                json!({ "input": { "buildId": build, "name": format!("t{n}") } }),
            )
        })
        .collect();
    for response in app.gql_at_once(&world.write, more).await {
        assert!(response.get("errors").is_none(), "{response}");
    }
    refused(
        &app,
        &world.write,
        CREATE_TASK,
        json!({ "input": { "buildId": build, "name": "one too many" } }),
        &format!("Build {build} has 200 tasks already; a build has at most 200."),
    )
    .await;

    // An organization has at most 100 endpoints (HERALD_MAX_ENDPOINTS).
    for n in 0..100 {
        world
            .endpoint(&app, &format!("https://example.com/hook/{n}"), json!({}))
            .await;
    }
    refused(
        &app,
        &world.admin,
        "mutation($org: ID!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: \"https://example.com/more\"}) { endpoint { id } } }",
        json!({ "org": world.org }),
        "An organization may have at most 100 webhook endpoints.",
    )
    .await;
    let endpoints: Vec<Value> = (0..101)
        .map(|n| json!({ "webhookURL": format!("https://example.com/hook/{n}") }))
        .collect();
    refused(
        &app,
        &world.admin,
        "mutation($org: ID!, $list: [WebHookDeliveryEndpointInput!]!) { saveWebHookSettings(input: {ownerUid: $org, deliveryEndpoints: $list}) { settings { endpoints { id } } } }",
        json!({ "org": world.org, "list": endpoints }),
        "An organization may have at most 100 webhook endpoints.",
    )
    .await;
}

async fn a_url_too_long_once_encoded_is_refused_and_nothing_is_stored(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let url = format!("https://example.com/{}", "é".repeat(1000));
    refused(
        &app,
        &world.admin,
        "mutation($org: ID!, $url: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: $url}) { endpoint { id } } }",
        json!({ "org": world.org, "url": url }),
        "The webhook URL is longer than 2048 characters once percent-encoded.",
    )
    .await;
    let data = app
        .ok(
            &world.admin,
            "{ viewer { webhookSettings { endpoints { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["viewer"]["webhookSettings"]["endpoints"], json!([]));
}

async fn queries_cost_the_most_tasks_a_build_may_have_and_stop_at_their_row_budget(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let build = world.build(&app).await;
    let tasks: Vec<(&str, Value)> = (0..200)
        .map(|n| {
            (
                CREATE_TASK,
                json!({ "input": { "buildId": build, "name": format!("t{n}") } }),
            )
        })
        .collect();
    for response in app.gql_at_once(&world.write, tasks).await {
        assert!(response.get("errors").is_none(), "{response}");
    }
    // A list of lists of lists is refused before anything runs, whatever the build holds.
    let deep = app
        .gql(
            Some(&world.read),
            "query($b: ID!) { build(id: $b) { tasks { build { tasks { build { tasks { id } } } } } } }",
            json!({ "b": build }),
        )
        .await;
    assert_eq!(code(&deep), "BAD_USER_INPUT", "{deep}");
    assert!(message(&deep).contains("too complex"), "{deep}");
    // A list of lists reads 40,200 rows: within the cost, and within a request's rows.
    let nested = "build(id: $b) { tasks { build { tasks { id } } } }";
    let once = app
        .gql(
            Some(&world.read),
            &format!("query($b: ID!) {{ {nested} }}"),
            json!({ "b": build }),
        )
        .await;
    assert!(once.get("errors").is_none(), "{once}");
    assert_eq!(
        once["data"]["build"]["tasks"].as_array().unwrap().len(),
        200
    );
    // Twice over it would read 80,400: it ends at the request's bound, with one sentence.
    let twice = app
        .gql(
            Some(&world.read),
            &format!("query($b: ID!) {{ a: {nested} b: {nested} }}"),
            json!({ "b": build }),
        )
        .await;
    assert_eq!(code(&twice), "BAD_USER_INPUT", "{twice}");
    assert_eq!(
        message(&twice),
        "The request reads more than 50000 rows; ask for fewer (smaller pages, fewer nested lists).",
    );
}

async fn an_oversized_payload_is_recorded_as_a_failed_delivery_with_its_reason(app: TestApp) {
    let big = Receiver::start().await;
    let plain = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let selection = "build(id: $buildId) { a: changeMessage b: changeMessage c: changeMessage d: changeMessage e: changeMessage }";
    let endpoint = world
        .endpoint(&app, &big.url("/big"), json!({ "payloadQuery": selection }))
        .await;
    world.endpoint(&app, &plain.url("/plain"), json!({})).await;
    let message = "m".repeat(64 * 1024);
    let created = app
        .ok(
            &world.write,
            CREATE_BUILD,
            json!({ "input": { "repositoryId": world.repository, "branch": "main", "changeIdInRepo": "abc", "changeMessage": message } }),
        )
        .await;
    let build = created["createBuild"]["build"]["id"].as_str().unwrap();
    let sent = plain.wait_for(1).await;
    assert_eq!(
        sent[0].json()["data"]["build"]["id"],
        build,
        "the other endpoint's is sent"
    );
    big.expect_no_more_than(0, Duration::from_millis(300)).await;

    let data = app
        .ok(
            &world.admin,
            "query($e: ID!) { viewer { webhookDeliveries(endpointId: $e) { edges { node { id state attempts attemptLog { status error } } } } } }",
            json!({ "e": endpoint }),
        )
        .await;
    let delivery = &data["viewer"]["webhookDeliveries"]["edges"][0]["node"];
    assert_eq!(delivery["state"], "FAILED", "{delivery}");
    assert_eq!(
        delivery["attemptLog"],
        json!([{ "status": null, "error": "The payload is 321 KiB, more than the 256 KiB a delivery may carry; it was not sent." }])
    );
    refused(
        &app,
        &world.admin,
        "mutation($id: ID!) { redeliverWebHook(input: {deliveryId: $id}) { delivery { id } } }",
        json!({ "id": delivery["id"] }),
        "The delivery was never sent: its payload was refused when its event was recorded (its attempt log says why), so there is nothing to send again.",
    )
    .await;
    // The preview says the same, at once.
    refused(
        &app,
        &world.admin,
        "mutation($org: ID!, $b: ID!, $q: String) { previewWebHookPayload(input: {ownerUid: $org, buildId: $b, payloadQuery: $q}) { body } }",
        json!({ "org": world.org, "b": build, "q": selection }),
        "The payload is 321 KiB, more than the 256 KiB a delivery may carry; it was not sent.",
    )
    .await;
}

/// An endpoint whose stored URL cannot be read (written by an older release, or by hand) fails
/// its deliveries with the reason, instead of leaving them queued forever, holding back their
/// build's later deliveries.
async fn deliveries_to_an_endpoint_that_cannot_be_read_fail_with_the_reason(app: TestApp) {
    use sea_orm::{ConnectionTrait, Statement};
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let broken = world
        .endpoint(&app, &receiver.url("/broken"), json!({}))
        .await;
    let fine = world
        .endpoint(&app, &receiver.url("/fine"), json!({}))
        .await;
    let db = &app.state.db;
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => "UPDATE webhook_endpoints SET url = $1 WHERE id = $2",
        _ => "UPDATE webhook_endpoints SET url = ? WHERE id = ?",
    };
    let unreadable = format!("https://example.com/{}", "%C3%A9".repeat(1000));
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [unreadable.into(), broken.parse::<i64>().unwrap().into()],
    ))
    .await
    .unwrap();
    let build = world.build(&app).await;
    world.task(&app, &build, "test").await;
    // The other endpoint gets both events; the broken one's fail, the second after the first.
    receiver.wait_for(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let deliveries = loop {
        let data = app
            .ok(
                &world.admin,
                "query($e: ID!) { viewer { webhookDeliveries(endpointId: $e) { edges { node { event state attemptLog { error } } } } } }",
                json!({ "e": broken }),
            )
            .await;
        let edges = data["viewer"]["webhookDeliveries"]["edges"].clone();
        let failed = edges
            .as_array()
            .unwrap()
            .iter()
            .filter(|edge| edge["node"]["state"] == "FAILED")
            .count();
        if failed == 2 {
            break edges;
        }
        assert!(tokio::time::Instant::now() < deadline, "{edges}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for edge in deliveries.as_array().unwrap() {
        assert_eq!(
            edge["node"]["attemptLog"][0]["error"],
            "the endpoint's stored URL or secret cannot be read, so nothing was sent; save the endpoint again"
        );
    }
    assert!(
        receiver.received().iter().all(|r| r.uri.path() == "/fine"),
        "nothing reached the broken endpoint's address"
    );
    let _ = fine;
}
