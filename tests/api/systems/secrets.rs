//! Named secrets, custom headers and rotations: write-only, masked, sealed at rest, and bad
//! input refused with one sentence that changes nothing.

use serde_json::{Value, json};

use crate::support::{Backend, Receiver, TestApp, World, code};

const ENDPOINTS: &str = "query($org: ID!) { ownerInfo(uid: $org) { webhookSettings { endpoints { id webhookURL maskedSecretToken secretName signatureStyle publishedEvents headers { name maskedValue } } } webhookSecrets { name maskedValue usedBy } } }";

async fn settings(app: &TestApp, world: &World) -> Value {
    app.ok(&world.admin, ENDPOINTS, json!({ "org": world.org }))
        .await
}

pub(super) async fn custom_headers_are_sent_and_shown_masked(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "headers").await;
    let endpoint = world
        .endpoint(
            &app,
            &receiver.url("/hook"),
            json!({
                "events": ["BUILD"],
                "headers": [
                    { "name": "X-Team", "value": "platform" },
                    { "name": "Authorization", "value": "Bearer receiver-api-key-0042" },
                ],
            }),
        )
        .await;
    let shown = settings(&app, &world).await;
    assert_eq!(
        shown["ownerInfo"]["webhookSettings"]["endpoints"][0]["headers"],
        json!([
            { "name": "X-Team", "maskedValue": "********" },
            { "name": "Authorization", "maskedValue": "********0042" },
        ])
    );
    // Saving the masked values back keeps the stored ones.
    app.ok(
        &world.admin,
        "mutation($id: ID!) { updateWebHookEndpoint(input: {id: $id, headers: [{name: \"X-Team\", value: \"********\"}, {name: \"Authorization\", value: \"********0042\"}]}) { endpoint { id } } }",
        json!({ "id": endpoint }),
    )
    .await;
    world.build(&app).await;
    let delivery = receiver.wait_for(1).await[0].clone();
    assert_eq!(delivery.header("x-team"), Some("platform"));
    assert_eq!(
        delivery.header("authorization"),
        Some("Bearer receiver-api-key-0042")
    );
}

pub(super) async fn refused_inputs_answer_one_sentence_and_change_nothing(app: TestApp) {
    let world = World::new(&app, "refusals").await;
    app.ok(
        &world.admin,
        "mutation($org: ID!) { setWebHookSecret(input: {ownerUid: $org, name: \"in-use\", value: \"a-named-secret-value\"}) { secret { name } } }",
        json!({ "org": world.org }),
    )
    .await;
    let endpoint = world
        .endpoint(
            &app,
            "http://127.0.0.1:9/hook",
            json!({ "secretName": "in-use", "signatureStyle": "GITHUB" }),
        )
        .await;
    let before = settings(&app, &world).await;
    let create = "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id } } }";
    let url = "http://127.0.0.1:9/other";
    let too_many: Vec<Value> = (0..21)
        .map(|i| json!({ "name": format!("X-H{i}"), "value": "v" }))
        .collect();
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            create,
            json!({ "input": { "ownerUid": world.org, "webhookURL": url, "secretToken": "own-secret", "secretName": "in-use" } }),
            "BAD_USER_INPUT",
            "not both",
        ),
        (
            create,
            json!({ "input": { "ownerUid": world.org, "webhookURL": url, "secretName": "missing" } }),
            "BAD_USER_INPUT",
            "no webhook secret named",
        ),
        (
            create,
            json!({ "input": { "ownerUid": world.org, "webhookURL": url, "secretName": "bad name" } }),
            "BAD_USER_INPUT",
            "secret name",
        ),
        (
            create,
            json!({ "input": { "ownerUid": world.org, "webhookURL": url, "headers": [{ "name": "X-Cirrus-Event", "value": "x" }] } }),
            "BAD_USER_INPUT",
            "sets itself",
        ),
        (
            create,
            json!({ "input": { "ownerUid": world.org, "webhookURL": url, "headers": [{ "name": "Bad Name", "value": "x" }] } }),
            "BAD_USER_INPUT",
            "header name",
        ),
        (
            create,
            json!({ "input": { "ownerUid": world.org, "webhookURL": url, "headers": [{ "name": "X-A", "value": "line\r\nX-B: injected" }] } }),
            "BAD_USER_INPUT",
            "visible ASCII",
        ),
        (
            create,
            json!({ "input": { "ownerUid": world.org, "webhookURL": url, "headers": too_many } }),
            "BAD_USER_INPUT",
            "at most 20",
        ),
        (
            create,
            json!({ "input": { "ownerUid": world.org, "webhookURL": "http://u:p@127.0.0.1:9/creds", "headers": [{ "name": "Authorization", "value": "Bearer x" }] } }),
            "BAD_USER_INPUT",
            "Authorization",
        ),
        (
            create,
            json!({ "input": { "ownerUid": world.org, "webhookURL": url, "events": ["PUBLISHED"], "publishedEvents": ["task"] } }),
            "BAD_USER_INPUT",
            "reserved",
        ),
        (
            "mutation($org: ID!) { setWebHookSecret(input: {ownerUid: $org, name: \"x\", value: \"\"}) { secret { name } } }",
            json!({ "org": world.org }),
            "BAD_USER_INPUT",
            "must not be empty",
        ),
        (
            "mutation($org: ID!) { setWebHookSecret(input: {ownerUid: $org, name: \"x\", value: \"tab\\there\"}) { secret { name } } }",
            json!({ "org": world.org }),
            "BAD_USER_INPUT",
            "visible ASCII",
        ),
        (
            "mutation($org: ID!) { deleteWebHookSecret(input: {ownerUid: $org, name: \"in-use\"}) { deletedName } }",
            json!({ "org": world.org }),
            "CONFLICT",
            "used by endpoint",
        ),
        (
            "mutation($id: ID!) { rotateWebHookSecret(input: {endpointId: $id, newValue: \"n\", overlapSeconds: -1}) { overlapEndsTimestamp } }",
            json!({ "id": endpoint }),
            "BAD_USER_INPUT",
            "overlap",
        ),
        (
            "mutation($id: ID!) { rotateWebHookSecret(input: {endpointId: $id, newValue: \"new-value\"}) { overlapEndsTimestamp } }",
            json!({ "id": endpoint }),
            "BAD_USER_INPUT",
            "rotate that secret instead",
        ),
        (
            "mutation($id: ID!, $org: ID!) { rotateWebHookSecret(input: {endpointId: $id, ownerUid: $org, name: \"in-use\", newValue: \"n\"}) { overlapEndsTimestamp } }",
            json!({ "id": endpoint, "org": world.org }),
            "BAD_USER_INPUT",
            "Give either",
        ),
    ];
    for (query, variables, expected, words) in cases {
        let response = app.gql(Some(&world.admin), query, variables.clone()).await;
        assert_eq!(code(&response), expected, "{variables}: {response}");
        let message = response["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains(words) && message.ends_with('.') && !message.contains('\n'),
            "{message}"
        );
        assert!(!message.contains("a-named-secret-value"));
    }
    assert_eq!(settings(&app, &world).await, before, "nothing changed");
    let audit = app
        .ok(
            &world.admin,
            "query($org: ID!) { ownerInfo(uid: $org) { auditEvents(first: 50) { edges { node { data } } } } }",
            json!({ "org": world.org }),
        )
        .await;
    let text = audit.to_string();
    assert!(text.contains("SetWebHookSecret") && !text.contains("a-named-secret-value"));
}

/// Named secrets, custom header values and rotated secrets never reach the database file in
/// clear: a canary of each is looked for in every byte SQLite wrote.
pub(super) async fn receiver_secrets_are_sealed_at_rest() {
    let receiver = Receiver::start().await;
    let app = TestApp::start_with(Backend::Sqlite, |config| {
        config.encryption_key = Some(herald::config::Secret(
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".into(),
        ))
    })
    .await
    .unwrap();
    let world = World::new(&app, "canaries").await;
    let canaries = [
        "canary-named-secret-7f3a",
        "canary-header-value-51c2",
        "canary-first-token-0b9e",
        "canary-rotated-token-9e8d",
        "canary-named-rotated-44d1",
    ];
    app.ok(
        &world.admin,
        "mutation($org: ID!, $value: String!) { setWebHookSecret(input: {ownerUid: $org, name: \"named\", value: $value}) { secret { name } } }",
        json!({ "org": world.org, "value": canaries[0] }),
    )
    .await;
    world
        .endpoint(
            &app,
            &receiver.url("/named"),
            json!({ "secretName": "named", "signatureStyle": "GITLAB", "events": ["BUILD"], "headers": [{ "name": "X-Api-Key", "value": canaries[1] }] }),
        )
        .await;
    let own = world
        .endpoint(
            &app,
            &receiver.url("/own"),
            json!({ "secretToken": canaries[2], "signatureStyle": "CODEUP", "events": ["BUILD"] }),
        )
        .await;
    app.ok(
        &world.admin,
        "mutation($id: ID!, $value: String!) { rotateWebHookSecret(input: {endpointId: $id, newValue: $value, overlapSeconds: 600}) { overlapEndsTimestamp } }",
        json!({ "id": own, "value": canaries[3] }),
    )
    .await;
    app.ok(
        &world.admin,
        "mutation($org: ID!, $value: String!) { rotateWebHookSecret(input: {ownerUid: $org, name: \"named\", newValue: $value, overlapSeconds: 600}) { overlapEndsTimestamp } }",
        json!({ "org": world.org, "value": canaries[4] }),
    )
    .await;
    world.build(&app).await;
    let received = receiver.wait_for(2).await;
    let named = received.iter().find(|r| r.uri.path() == "/named").unwrap();
    assert_eq!(named.header("x-api-key"), Some(canaries[1]));
    assert_eq!(
        named.header("x-gitlab-token"),
        Some(canaries[0]),
        "during the overlap the token header is the replaced secret"
    );
    let own = received.iter().find(|r| r.uri.path() == "/own").unwrap();
    assert_eq!(own.header("x-codeup-token"), Some(canaries[2]));

    let shown = settings(&app, &world).await.to_string();
    let path = app
        .database_url
        .strip_prefix("sqlite://")
        .and_then(|url| url.split('?').next())
        .unwrap()
        .to_owned();
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(file) = std::fs::read(format!("{path}{suffix}")) {
            bytes.extend(file);
        }
    }
    assert!(bytes.len() > 4096, "the database file was read");
    let text = String::from_utf8_lossy(&bytes);
    for canary in canaries {
        assert!(!text.contains(canary), "{canary} is in the database file");
        assert!(!shown.contains(canary), "{canary} was shown");
    }
}
