//! Webhook settings: endpoints created, updated and deleted, their secrets never returned, bad
//! selections, URLs and secrets refused with nothing stored, and the list saved whole.

use serde_json::{Value, json};

use crate::support::{TestApp, World, code};

pub(super) async fn secrets_are_never_returned(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let secret = "topsecret-signing-key-0001";
    let password = "hunter2pass";
    let url = format!("https://bot:{password}@hooks.example.com/ci");
    let created = app
        .ok(
            &world.admin,
            "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id webhookURL maskedSecretToken } } }",
            json!({ "input": { "ownerUid": world.org, "webhookURL": url, "secretToken": secret } }),
        )
        .await;
    let endpoint = created["createWebHookEndpoint"]["endpoint"].clone();
    assert_eq!(
        endpoint["webhookURL"],
        "https://***:***@hooks.example.com/ci"
    );
    assert_eq!(endpoint["maskedSecretToken"], "********0001");
    let saved = app
        .ok(
            &world.admin,
            "mutation($org: ID!, $url: String!) { saveWebHookSettings(input: {ownerUid: $org, deliveryEndpoints: [{webhookURL: $url, secretToken: \"********0001\"}]}) { settings { endpoints { id webhookURL maskedSecretToken } } } }",
            json!({ "org": world.org, "url": "https://***:***@hooks.example.com/ci" }),
        )
        .await;
    let everything = app
        .ok(&world.admin, "{ viewer { webhookSettings { endpoints { id webhookURL maskedSecretToken events payloadQuery payloadFormat enabled insecureSsl lastDelivery { id } } } } }", json!({}))
        .await;
    for response in [created, saved.clone(), everything] {
        let text = response.to_string();
        assert!(
            !text.contains(secret) && !text.contains(password),
            "a secret leaked: {text}"
        );
    }
    // The masked values kept what was stored.
    let kept = &saved["saveWebHookSettings"]["settings"]["endpoints"][0];
    assert_eq!(kept["maskedSecretToken"], "********0001");
    assert_eq!(kept["id"], endpoint["id"]);
    let stored = herald::store::endpoints::list(&app.state.db, world.org.parse().unwrap())
        .await
        .unwrap();
    let fields = herald::store::endpoints::fields_of(&stored[0], &app.state.vault).unwrap();
    assert_eq!(fields.secret.as_deref(), Some(secret));
    assert_eq!(fields.url.as_stored(), url);
}

/// Deletes the endpoint that `response`, a `createWebHookEndpoint` expected to succeed,
/// created.
async fn delete_created(app: &TestApp, world: &World, response: &Value) {
    assert!(response.get("errors").is_none(), "{response:#}");
    let id = response["data"]["createWebHookEndpoint"]["endpoint"]["id"].clone();
    app.ok(
        &world.admin,
        "mutation($id: ID!) { deleteWebHookEndpoint(input: {id: $id}) { deletedId } }",
        json!({ "id": id }),
    )
    .await;
}

async fn endpoint_count(app: &TestApp, world: &World) -> usize {
    let data = app
        .ok(
            &world.admin,
            "{ viewer { webhookSettings { endpoints { id payloadQuery } } } }",
            json!({}),
        )
        .await;
    data["viewer"]["webhookSettings"]["endpoints"]
        .as_array()
        .unwrap()
        .len()
}

/// A selection nested 18 levels deep.
fn deep_selection() -> String {
    let mut deep = String::from("build(id: $buildId) { ");
    for _ in 0..4 {
        deep.push_str("repository { builds { edges { node { ");
    }
    deep.push_str("id");
    deep.push_str(&" } } } }".repeat(4));
    deep + " }"
}

pub(super) async fn bad_payload_selections_are_refused_and_nothing_is_stored(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let deep = deep_selection();
    let cases: [(&str, &str); 11] = [
        (
            "build(id: $buildId) { id status",
            "does not parse at the end of the selection",
        ),
        (
            "build(id: $buildId) { id(: }",
            "does not parse at line 1, column 26",
        ),
        (
            "query A { viewer { uid } } query B { viewer { uid } }",
            "exactly one operation",
        ),
        (
            "mutation M { createRepository(input: {ownerUid: \"1\", name: \"x\"}) { repository { id } } }",
            "must be a query",
        ),
        (
            "build(id: $buildId) { id nosuchfield }",
            "line 1, column 26",
        ),
        (
            "repository(id: $repositoryId) {\n  id\n  colour\n}",
            "line 3, column 3",
        ),
        ("build(id: $other) { id }", "$other"),
        ("query Q($x: ID!) { build(id: $x) { id } }", "$x"),
        (&deep, "levels deep"),
        // Shallow, but each level of a build's tasks multiplies what it renders.
        (
            "build(id: $buildId) { tasks { build { tasks { build { tasks { id } } } } } }",
            "too complex",
        ),
        ("", "empty"),
    ];
    for (selection, expected) in cases {
        let response = app
            .gql(
                Some(&world.admin),
                "mutation($org: ID!, $q: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: \"https://h.example.com/\", payloadQuery: $q}) { endpoint { id } } }",
                json!({ "org": world.org, "q": if selection.is_empty() { " " } else { selection } }),
            )
            .await;
        if selection.is_empty() {
            // A blank selection means the default one.
            delete_created(&app, &world, &response).await;
            continue;
        }
        assert_eq!(
            code(&response),
            "BAD_USER_INPUT",
            "{selection}: {response:#}"
        );
        let message = response["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{selection}: {message}");
        assert!(!message.contains('\n'), "one sentence: {message}");
    }
    assert_eq!(endpoint_count(&app, &world).await, 0);

    // An update with a bad selection keeps the endpoint as it was.
    let id = world
        .endpoint(
            &app,
            "https://h.example.com/",
            json!({ "payloadQuery": "build(id: $buildId) { id }" }),
        )
        .await;
    let response = app
        .gql(Some(&world.admin), "mutation($id: ID!) { updateWebHookEndpoint(input: {id: $id, payloadQuery: \"build { id\"}) { endpoint { id } } }", json!({ "id": id }))
        .await;
    assert_eq!(code(&response), "BAD_USER_INPUT");
    let data = app
        .ok(
            &world.admin,
            "query($id: ID!) { webhookEndpoint(id: $id) { payloadQuery } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        data["webhookEndpoint"]["payloadQuery"],
        "build(id: $buildId) { id }"
    );
}

pub(super) async fn bad_urls_and_secrets_are_refused_and_nothing_is_stored(app: TestApp) {
    let world = World::new(&app, "acme").await;
    for url in [
        "ftp://example.com/x",
        "not a url",
        "http://",
        "https://example.com/#frag",
        "javascript:alert(1)",
    ] {
        let response = app
            .gql(Some(&world.admin), "mutation($org: ID!, $url: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: $url}) { endpoint { id } } }", json!({ "org": world.org, "url": url }))
            .await;
        assert_eq!(code(&response), "BAD_USER_INPUT", "{url}: {response:#}");
    }
    assert_eq!(endpoint_count(&app, &world).await, 0);
    // Stored in clear (no encryption key), the secret would be read back as a sealed value
    // that cannot be opened.
    let response = app
        .gql(Some(&world.admin), "mutation($org: ID!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: \"https://hooks.example.com/a\", secretToken: \"enc:v1:AAAA\"}) { endpoint { id } } }", json!({ "org": world.org }))
        .await;
    assert_eq!(code(&response), "BAD_USER_INPUT", "{response:#}");
    let message = response["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("`enc:v1:`"), "{message}");
    // Signed with its own bytes, it would fail every Standard Webhooks library's check.
    for secret in ["whsec_not*base64", "whsec_", "whsec_c2VjcmV0"] {
        let response = app
            .gql(Some(&world.admin), "mutation($org: ID!, $secret: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: \"https://hooks.example.com/w\", secretToken: $secret}) { endpoint { id } } }", json!({ "org": world.org, "secret": secret }))
            .await;
        if secret == "whsec_c2VjcmV0" {
            delete_created(&app, &world, &response).await;
            continue;
        }
        assert_eq!(code(&response), "BAD_USER_INPUT", "{secret}: {response:#}");
        let message = response["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("`whsec_`"), "{message}");
    }
    assert_eq!(endpoint_count(&app, &world).await, 0);
    let duplicate = "https://hooks.example.com/same";
    world.endpoint(&app, duplicate, json!({})).await;
    let again = app
        .gql(Some(&world.admin), "mutation($org: ID!, $url: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: $url}) { endpoint { id } } }", json!({ "org": world.org, "url": duplicate }))
        .await;
    assert_eq!(code(&again), "CONFLICT");
    assert_eq!(endpoint_count(&app, &world).await, 1);
}

pub(super) async fn endpoints_are_created_updated_and_deleted(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let created = app
        .ok(
            &world.admin,
            "mutation($org: ID!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: \"https://h.example.com/a\", secretToken: \"s-0123456789abcdef\",
               events: [TASK], payloadFormat: FLAT, clientMutationId: \"c\"}) { clientMutationId endpoint { id events payloadFormat enabled insecureSsl payloadQuery lastDelivery { id } } } }",
            json!({ "org": world.org }),
        )
        .await;
    let endpoint = &created["createWebHookEndpoint"]["endpoint"];
    assert_eq!(created["createWebHookEndpoint"]["clientMutationId"], "c");
    assert_eq!(endpoint["events"], json!(["TASK"]));
    assert_eq!(endpoint["payloadFormat"], "FLAT");
    assert_eq!(endpoint["enabled"], true);
    assert_eq!(endpoint["lastDelivery"], Value::Null);
    let id = endpoint["id"].clone();
    let updated = app
        .ok(
            &world.admin,
            "mutation($id: ID!) { updateWebHookEndpoint(input: {id: $id, enabled: false, insecureSsl: true, secretToken: \"\", payloadQuery: \"task(id: $taskId) { id }\"}) { endpoint { id events payloadFormat enabled insecureSsl maskedSecretToken payloadQuery } } }",
            json!({ "id": id }),
        )
        .await;
    let endpoint = &updated["updateWebHookEndpoint"]["endpoint"];
    assert_eq!(endpoint["enabled"], false);
    assert_eq!(endpoint["insecureSsl"], true);
    assert_eq!(endpoint["maskedSecretToken"], Value::Null);
    assert_eq!(
        endpoint["events"],
        json!(["TASK"]),
        "absent fields keep their values"
    );
    assert_eq!(endpoint["payloadQuery"], "task(id: $taskId) { id }");
    let deleted = app
        .ok(
            &world.admin,
            "mutation($id: ID!) { deleteWebHookEndpoint(input: {id: $id}) { deletedId } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(deleted["deleteWebHookEndpoint"]["deletedId"], id);
    assert_eq!(endpoint_count(&app, &world).await, 0);
    let again = app
        .gql(
            Some(&world.admin),
            "mutation($id: ID!) { deleteWebHookEndpoint(input: {id: $id}) { deletedId } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code(&again), "NOT_FOUND");
}

pub(super) async fn save_web_hook_settings_replaces_the_list_keyed_by_url(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let kept = world
        .endpoint(
            &app,
            "https://h.example.com/kept",
            json!({ "secretToken": "kept-secret-0123456789", "events": ["BUILD"] }),
        )
        .await;
    world
        .endpoint(&app, "https://h.example.com/dropped", json!({}))
        .await;
    let saved = app
        .ok(
            &world.admin,
            "mutation($org: ID!) { saveWebHookSettings(input: {ownerUid: $org, clientMutationId: \"s\", deliveryEndpoints: [
               {webhookURL: \"https://h.example.com/kept\", secretToken: \"********6789\"},
               {webhookURL: \"https://h.example.com/new\", secretToken: \"new-secret\", payloadFormat: FLAT}]}) {
               clientMutationId settings { ownerUid endpoints { id webhookURL maskedSecretToken events payloadFormat } } } }",
            json!({ "org": world.org }),
        )
        .await;
    let settings = &saved["saveWebHookSettings"]["settings"];
    assert_eq!(saved["saveWebHookSettings"]["clientMutationId"], "s");
    let endpoints = settings["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    assert_eq!(
        endpoints[0]["id"],
        kept.as_str(),
        "the kept URL keeps its id"
    );
    assert_eq!(
        endpoints[0]["maskedSecretToken"], "********6789",
        "the masked secret keeps the stored one"
    );
    assert_eq!(
        endpoints[0]["events"],
        json!([]),
        "omitted fields take their defaults"
    );
    assert_eq!(endpoints[1]["webhookURL"], "https://h.example.com/new");
    assert_eq!(endpoints[1]["maskedSecretToken"], "********");
    assert_eq!(endpoints[1]["payloadFormat"], "FLAT");

    // A bad entry refuses the whole list and changes nothing.
    let refused = app
        .gql(
            Some(&world.admin),
            "mutation($org: ID!) { saveWebHookSettings(input: {ownerUid: $org, deliveryEndpoints: [{webhookURL: \"https://h.example.com/x\"}, {webhookURL: \"nope\"}]}) { settings { ownerUid } } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(code(&refused), "BAD_USER_INPUT");
    let twice = app
        .gql(
            Some(&world.admin),
            "mutation($org: ID!) { saveWebHookSettings(input: {ownerUid: $org, deliveryEndpoints: [{webhookURL: \"https://h.example.com/x\"}, {webhookURL: \"https://h.example.com/x\"}]}) { settings { ownerUid } } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(code(&twice), "BAD_USER_INPUT");
    assert_eq!(endpoint_count(&app, &world).await, 2);
}
