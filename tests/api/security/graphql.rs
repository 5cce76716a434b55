//! GraphQL request limits that apply before any resolver: aliases, directives, depth,
//! complexity, body size and batches, and introspection that can be turned off.

use serde_json::json;

use crate::support::{Backend, TestApp, World, code};

pub(super) async fn graphql_limits_apply_before_any_resolver() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let world = World::new(&app, "acme").await;
    let aliases: String = (0..31)
        .map(|i| format!("a{i}: viewer {{ name }} "))
        .collect();
    let response = app
        .gql(Some(&world.read), &format!("{{ {aliases} }}"), json!({}))
        .await;
    assert_eq!(code(&response), "BAD_USER_INPUT");
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("31 aliases")
    );
    let directives: String = (0..21).map(|_| "@include(if: true) ").collect();
    let response = app
        .gql(
            Some(&world.read),
            &format!("{{ viewer {directives} {{ name }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(code(&response), "BAD_USER_INPUT");
    let mut deep =
        String::from("{ viewer { repositories { edges { node { builds { edges { node { ");
    for _ in 0..4 {
        deep.push_str("repository { builds { edges { node { ");
    }
    deep.push_str("id");
    deep.push_str(&" } } } }".repeat(6));
    deep.push_str(" } } }");
    let response = app.gql(Some(&world.read), &deep, json!({})).await;
    assert_eq!(code(&response), "BAD_USER_INPUT", "{response:#}");
    // Twelve levels, but lists within lists: each page of builds, and each build's tasks,
    // multiplies the work of what it holds.
    let wide = "{ viewer { repositories(first: 100) { edges { node { builds(first: 100) { edges { node { tasks { uniqueLabels build { tasks { id } } } } } } } } } } }";
    let response = app.gql(Some(&world.read), wide, json!({})).await;
    assert_eq!(code(&response), "BAD_USER_INPUT", "{response:#}");
    let message = response["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("too complex"), "{message}");

    let http = reqwest::Client::new();
    let big = json!({ "query": "{ __typename }", "variables": { "pad": "x".repeat(400 * 1024) } })
        .to_string();
    let response = http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let batch = r#"[{"query":"{ __typename }"},{"query":"{ __typename }"}]"#;
    let response = http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Introspection and GraphiQL can be turned off.
    let closed = TestApp::start_with(Backend::Sqlite, |config| config.graphiql = false)
        .await
        .unwrap();
    let introspect = "{ __schema { types { name } } }";
    assert!(
        app.gql(Some(&world.read), introspect, json!({})).await["data"]["__schema"]["types"]
            .is_array()
    );
    assert_eq!(
        code(&app.gql(None, introspect, json!({})).await),
        "UNAUTHENTICATED"
    );
    let closed_world = World::new(&closed, "acme").await;
    assert!(
        closed
            .gql(Some(&closed_world.read), introspect, json!({}))
            .await["data"]["__schema"]
            .is_null()
    );
    assert_eq!(
        http.get(closed.url("/graphql"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.get(app.url("/graphql")).send().await.unwrap().status(),
        200
    );
    // GraphiQL's own files go with it.
    for (server, status) in [(&app, 200), (&closed, 404)] {
        let asset = http
            .get(server.url("/graphiql/graphiql.min.js"))
            .send()
            .await
            .unwrap();
        assert_eq!(asset.status(), status);
    }
}
