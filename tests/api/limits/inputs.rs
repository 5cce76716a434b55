//! Inputs Herald cannot store or that go past their bounds: a NUL in any string, sizes and
//! counts, inputs that accumulate, and URLs too long once encoded; each refused whole.

use serde_json::{Value, json};

use super::{CREATE_BUILD, CREATE_TASK, UPDATE_TASK, message, refused};
use crate::support::{TestApp, World, code};

pub(super) async fn a_nul_in_any_string_input_is_refused_alone_and_named(app: TestApp) {
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

pub(super) async fn inputs_past_their_bounds_are_refused_and_change_nothing(app: TestApp) {
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

pub(super) async fn accumulating_inputs_stop_at_their_bounds(app: TestApp) {
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

pub(super) async fn a_url_too_long_once_encoded_is_refused_and_nothing_is_stored(app: TestApp) {
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
