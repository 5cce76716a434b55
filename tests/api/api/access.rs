//! Who may do what: permissions on every level, another organization's ids not found, and bad
//! tokens unauthenticated.

use herald::domain::Permission;
use serde_json::{Value, json};

use crate::support::{TestApp, World, code};

pub(super) async fn permissions_are_enforced_on_every_level(app: TestApp) {
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

pub(super) async fn another_organizations_ids_are_not_found(app: TestApp) {
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

pub(super) async fn bad_tokens_are_unauthenticated(app: TestApp) {
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
