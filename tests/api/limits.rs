//! What one organization's token can send is bounded: strings Herald cannot store, input
//! sizes and counts, and the work a query or a stored selection may do.

use serde_json::{Value, json};

use crate::support::{TestApp, World, code};

crate::on_both_backends!(a_nul_in_any_string_input_is_refused_alone_and_named);

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
