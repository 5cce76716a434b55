//! The GraphQL API: CI records, webhook settings, permissions and organization isolation.

use herald::domain::Permission;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, World, code};

crate::on_both_backends!(
    records_repositories_builds_and_tasks,
    permissions_are_enforced_on_every_level,
    another_organizations_ids_are_not_found,
    secrets_are_never_returned,
    bad_payload_selections_are_refused_and_nothing_is_stored,
    bad_urls_and_secrets_are_refused_and_nothing_is_stored,
    bad_tokens_are_unauthenticated,
    endpoints_are_created_updated_and_deleted,
    save_web_hook_settings_replaces_the_list_keyed_by_url,
);

async fn records_repositories_builds_and_tasks(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let build = app
        .ok(
            &world.write,
            "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"feature\", changeIdInRepo: \"deadbeef\",
               changeMessageTitle: \"Add it\", pullRequest: 42, pullRequestDraft: true, clientMutationId: \"m1\"}) {
               clientMutationId build { id status branch pullRequest pullRequestDraft changeIdInRepo changeMessageTitle durationInSeconds } } }",
            json!({ "repo": world.repository }),
        )
        .await;
    let payload = &build["createBuild"];
    assert_eq!(payload["clientMutationId"], "m1");
    assert_eq!(payload["build"]["status"], "CREATED");
    assert_eq!(payload["build"]["pullRequest"], 42);
    assert_eq!(payload["build"]["durationInSeconds"], 0, "not started yet");
    let build_id = payload["build"]["id"].as_str().unwrap().to_owned();

    let task = world.task(&app, &build_id, "test").await;
    app.ok(
        &world.write,
        "mutation($task: ID!) { updateTaskStatus(input: {taskId: $task, status: FAILED,
           notifications: [{level: ERROR, message: \"Instances got rescheduled\", link: \"https://ci.example/1\"}]}) { task { id } } }",
        json!({ "task": task }),
    )
    .await;
    world.build_status(&app, &build_id, "FAILED").await;

    let data = app
        .ok(
            &world.read,
            "query($build: ID!, $task: ID!, $org: ID!) {
               viewer { uid name viewerPermission repositories { edges { node { name owner builds(status: FAILED) { edges { node { id } } } } } } }
               ownerInfo(uid: $org) { name }
               ownerInfoByName(name: \"acme\") { uid }
               build(id: $build) { status durationInSeconds tasks { name status finalStatusTimestamp labels uniqueLabels
                 notifications { level message link } build { id } repository { name } } }
               task(id: $task) { status statusTimestamp creationTimestamp }
               none: task(id: null) { id } }",
            json!({ "build": build_id, "task": task, "org": world.org }),
        )
        .await;
    assert_eq!(data["viewer"]["name"], "acme");
    assert_eq!(data["viewer"]["viewerPermission"], "READ");
    let repo = &data["viewer"]["repositories"]["edges"][0]["node"];
    assert_eq!(repo["owner"], "acme");
    assert_eq!(repo["builds"]["edges"][0]["node"]["id"], build_id.as_str());
    assert_eq!(data["ownerInfo"]["name"], "acme");
    assert_eq!(data["ownerInfoByName"]["uid"], world.org.as_str());
    assert_eq!(data["build"]["status"], "FAILED");
    assert!(data["build"]["durationInSeconds"].is_i64());
    let task_node = &data["build"]["tasks"][0];
    assert_eq!(task_node["status"], "FAILED");
    assert!(task_node["finalStatusTimestamp"].is_i64());
    assert_eq!(task_node["labels"], json!(["linux"]));
    assert_eq!(
        task_node["notifications"][0]["message"],
        "Instances got rescheduled"
    );
    assert_eq!(task_node["build"]["id"], build_id.as_str());
    assert!(data["task"]["statusTimestamp"].as_i64() >= data["task"]["creationTimestamp"].as_i64());
    assert_eq!(data["none"], Value::Null);

    // Pagination: three builds, two per page.
    world.build(&app).await;
    world.build(&app).await;
    let page = app
        .ok(&world.read, "query($repo: ID!) { repository(id: $repo) { builds(first: 2) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } } }", json!({ "repo": world.repository }))
        .await;
    let builds = &page["repository"]["builds"];
    assert_eq!(builds["edges"].as_array().unwrap().len(), 2);
    assert_eq!(builds["pageInfo"]["hasNextPage"], true);
    let rest = app
        .ok(
            &world.read,
            "query($repo: ID!, $after: String) { repository(id: $repo) { builds(first: 2, after: $after) { edges { node { id } } pageInfo { hasNextPage } } } }",
            json!({ "repo": world.repository, "after": builds["pageInfo"]["endCursor"] }),
        )
        .await;
    assert_eq!(
        rest["repository"]["builds"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        rest["repository"]["builds"]["pageInfo"]["hasNextPage"],
        false
    );

    // A repository name is unique within its organization.
    let again = app
        .gql(Some(&world.write), "mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"app\"}) { repository { id } } }", json!({ "org": world.org }))
        .await;
    assert_eq!(code(&again), "CONFLICT");
}

async fn permissions_are_enforced_on_every_level(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let none = app.token(&world.org, Permission::None);
    let create_repo = "mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"other\"}) { repository { id } } }";
    let settings = "query { viewer { webhookSettings { endpoints { id } } } }";
    let endpoint = "mutation($org: ID!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: \"https://hooks.example.com/x\"}) { endpoint { id } } }";
    let read_repo = "query($repo: ID!) { repository(id: $repo) { name } }";
    let vars = json!({ "org": world.org, "repo": world.repository });

    let anonymous = app.gql(None, read_repo, vars.clone()).await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED");
    assert_eq!(
        code(&app.gql(Some(&none), read_repo, vars.clone()).await),
        "FORBIDDEN"
    );
    assert!(
        app.gql(Some(&world.read), read_repo, vars.clone())
            .await
            .get("errors")
            .is_none()
    );

    assert_eq!(
        code(&app.gql(Some(&world.read), create_repo, vars.clone()).await),
        "FORBIDDEN"
    );
    assert!(
        app.gql(Some(&world.write), create_repo, vars.clone())
            .await
            .get("errors")
            .is_none()
    );

    for token in [&world.read, &world.write] {
        assert_eq!(
            code(&app.gql(Some(token), settings, vars.clone()).await),
            "FORBIDDEN"
        );
        assert_eq!(
            code(&app.gql(Some(token), endpoint, vars.clone()).await),
            "FORBIDDEN"
        );
    }
    assert!(
        app.gql(Some(&world.admin), endpoint, vars.clone())
            .await
            .get("errors")
            .is_none()
    );
    let listed = app.ok(&world.admin, settings, json!({})).await;
    assert_eq!(
        listed["viewer"]["webhookSettings"]["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Every query and mutation that takes an id, with the id filled in.
fn id_operations(
    org: &str,
    repo: &str,
    build: &str,
    task: &str,
    endpoint: &str,
    delivery: &str,
) -> Vec<(String, Value)> {
    let ops = [
        ("query($id: ID!) { ownerInfo(uid: $id) { name } }", org),
        ("query($id: ID!) { repository(id: $id) { name } }", repo),
        ("query($id: ID!) { build(id: $id) { id } }", build),
        ("query($id: ID!) { task(id: $id) { id } }", task),
        (
            "query($id: ID!) { webhookEndpoint(id: $id) { id } }",
            endpoint,
        ),
        (
            "query($id: ID!) { webhookDelivery(id: $id) { id } }",
            delivery,
        ),
        (
            "mutation($id: ID!) { createRepository(input: {ownerUid: $id, name: \"x\"}) { repository { id } } }",
            org,
        ),
        (
            "mutation($id: ID!) { createBuild(input: {repositoryId: $id, branch: \"b\", changeIdInRepo: \"c\"}) { build { id } } }",
            repo,
        ),
        (
            "mutation($id: ID!) { updateBuildStatus(input: {buildId: $id, status: EXECUTING}) { build { id } } }",
            build,
        ),
        (
            "mutation($id: ID!) { createTask(input: {buildId: $id, name: \"t\"}) { task { id } } }",
            build,
        ),
        (
            "mutation($id: ID!) { updateTaskStatus(input: {taskId: $id, status: EXECUTING}) { task { id } } }",
            task,
        ),
        (
            "mutation($id: ID!) { createWebHookEndpoint(input: {ownerUid: $id, webhookURL: \"https://h.example.com/\"}) { endpoint { id } } }",
            org,
        ),
        (
            "mutation($id: ID!) { updateWebHookEndpoint(input: {id: $id, enabled: false}) { endpoint { id } } }",
            endpoint,
        ),
        (
            "mutation($id: ID!) { deleteWebHookEndpoint(input: {id: $id}) { deletedId } }",
            endpoint,
        ),
        (
            "mutation($id: ID!) { saveWebHookSettings(input: {ownerUid: $id, deliveryEndpoints: []}) { settings { ownerUid } } }",
            org,
        ),
        (
            "mutation($id: ID!) { redeliverWebHook(input: {deliveryId: $id}) { delivery { id } } }",
            delivery,
        ),
        (
            "mutation($id: ID!) { sendTestWebHook(input: {endpointId: $id}) { delivery { id } } }",
            endpoint,
        ),
        (
            "mutation($id: ID!) { previewWebHookPayload(input: {ownerUid: $id, buildId: \"1\"}) { body } }",
            org,
        ),
        (
            "mutation($id: ID!) { previewWebHookPayload(input: {ownerUid: \"0\", buildId: $id}) { body } }",
            build,
        ),
    ];
    ops.into_iter()
        .map(|(query, id)| (query.to_owned(), json!({ "id": id })))
        .collect()
}

async fn another_organizations_ids_are_not_found(app: TestApp) {
    let receiver = crate::support::Receiver::start().await;
    let victim = World::new(&app, "victim").await;
    let endpoint = victim
        .endpoint(&app, &receiver.url("/hook"), json!({}))
        .await;
    let build = victim.build(&app).await;
    let task = victim.task(&app, &build, "test").await;
    let delivery = receiver.wait_for(2).await[0]
        .header("x-cirrus-delivery")
        .unwrap()
        .to_owned();
    let intruder = World::new(&app, "intruder").await;

    let real = id_operations(
        &victim.org,
        &victim.repository,
        &build,
        &task,
        &endpoint,
        &delivery,
    );
    let missing = id_operations(
        "987654",
        "987654",
        "987654",
        "987654",
        "987654",
        "00000000-0000-0000-0000-000000000000",
    );
    for ((query, vars), (_, missing_vars)) in real.iter().zip(&missing) {
        let response = app.gql(Some(&intruder.admin), query, vars.clone()).await;
        assert_eq!(code(&response), "NOT_FOUND", "{query}: {response:#}");
        let absent = app
            .gql(Some(&intruder.admin), query, missing_vars.clone())
            .await;
        assert_eq!(code(&absent), "NOT_FOUND", "{query}: {absent:#}");
        // The answer for a foreign id has the same shape as for one that does not exist.
        let shape = |r: &Value| {
            r["errors"][0]["message"].as_str().unwrap().replace(
                |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '"',
                "",
            )
        };
        assert_eq!(shape(&response), shape(&absent), "{query}");
    }
    let by_name = app
        .gql(
            Some(&intruder.admin),
            "{ ownerInfoByName(name: \"victim\") { uid } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&by_name), "NOT_FOUND");

    // Nothing of the victim's changed.
    let data = app
        .ok(&victim.admin, "query($b: ID!) { build(id: $b) { status tasks { status } } viewer { webhookSettings { endpoints { enabled } } repositories { edges { node { name } } } } }", json!({ "b": build }))
        .await;
    assert_eq!(data["build"]["status"], "CREATED");
    assert_eq!(data["build"]["tasks"][0]["status"], "CREATED");
    assert_eq!(
        data["viewer"]["webhookSettings"]["endpoints"][0]["enabled"],
        true
    );
    assert_eq!(
        data["viewer"]["repositories"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn secrets_are_never_returned(app: TestApp) {
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

async fn bad_payload_selections_are_refused_and_nothing_is_stored(app: TestApp) {
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

async fn bad_urls_and_secrets_are_refused_and_nothing_is_stored(app: TestApp) {
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

async fn bad_tokens_are_unauthenticated(app: TestApp) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{EncodingKey, Header, encode};

    let world = World::new(&app, "acme").await;
    let key = herald::store::orgs::jwt_key(&app.state.db, &app.state.vault)
        .await
        .unwrap();
    let now = herald::now_ms() / 1000;
    let claims = |extra: Value| {
        let mut base = json!({ "iss": "herald", "sub": "t", "org": world.org, "permission": "ADMIN", "iat": now, "exp": now + 600 });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base
    };
    let sign = |claims: Value, secret: &str| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let good = sign(claims(json!({})), &key);
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let tampered_claims =
        B64.encode(claims(json!({ "permission": "ADMIN", "org": "999" })).to_string());
    let unsigned = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims(json!({})).to_string())
    );
    let hs512 = encode(
        &Header::new(jsonwebtoken::Algorithm::HS512),
        &claims(json!({})),
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap();
    let bad = [
        (
            "expired",
            sign(
                claims(json!({ "exp": now - 3600, "iat": now - 7200 })),
                &key,
            ),
        ),
        (
            "not yet valid",
            sign(claims(json!({ "nbf": now + 3600 })), &key),
        ),
        (
            "expired two seconds ago",
            sign(claims(json!({ "exp": now - 2, "iat": now - 60 })), &key),
        ),
        ("tampered", format!("{head}.{tampered_claims}.{signature}")),
        ("unsigned", unsigned),
        ("wrong algorithm", hs512),
        ("wrong key", sign(claims(json!({})), "another-key")),
        (
            "wrong issuer",
            sign(claims(json!({ "iss": "someone-else" })), &key),
        ),
        ("no issuer", sign(claims(json!({ "iss": null })), &key)),
        ("no expiry", sign(claims(json!({ "exp": null })), &key)),
        ("no org", sign(claims(json!({ "org": null })), &key)),
        (
            "no permission",
            sign(claims(json!({ "permission": null })), &key),
        ),
        ("oversized", "a".repeat(10_000)),
        ("garbage", "not.a.token".to_owned()),
    ];
    assert!(
        app.gql(Some(&good), "{ viewer { name } }", json!({}))
            .await
            .get("errors")
            .is_none()
    );
    for (why, token) in bad {
        let response = app
            .gql(Some(&token), "{ viewer { name } }", json!({}))
            .await;
        assert_eq!(code(&response), "UNAUTHENTICATED", "{why}: {response:#}");
        assert_eq!(response["data"], Value::Null, "{why}");
    }
}

async fn endpoints_are_created_updated_and_deleted(app: TestApp) {
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

async fn save_web_hook_settings_replaces_the_list_keyed_by_url(app: TestApp) {
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

/// On SQLite, what the API acknowledges (a change that records an event, an endpoint) is
/// committed with `synchronous = FULL`: in WAL mode, `NORMAL` lets a power loss take back the
/// last commits, acknowledged ones too. A power loss cannot be staged here; the level of the
/// one writing connection after each write can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_acknowledged_writes_wait_for_the_disk() {
    use sea_orm::{ConnectionTrait, Statement};
    let app = TestApp::start_role(Backend::Sqlite, herald::app::Role::ApiOnly, |_| {})
        .await
        .unwrap();
    let world = World::new(&app, "acme").await;
    let level = || async {
        let statement = Statement::from_string(sea_orm::DbBackend::Sqlite, "PRAGMA synchronous");
        let row = app
            .state
            .writes
            .conn()
            .query_one_raw(statement)
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i32>(0).unwrap()
    };
    // 2 is FULL.
    world.build(&app).await;
    assert_eq!(level().await, 2, "after a change");
    world
        .endpoint(&app, "https://hooks.example.com/x", json!({}))
        .await;
    assert_eq!(level().await, 2, "after an endpoint");
}
