//! What arrives: signed with Cirrus's and the standard headers, shaped by the endpoint's format
//! and selection, filtered by event, showing the state at the event, and equal to its preview.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{Receiver, TestApp, World, code};

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

pub(super) async fn build_and_task_events_arrive_signed_with_cirrus_and_standard_headers(
    app: TestApp,
) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let secret = "s3cret-for-signing";
    world
        .endpoint(
            &app,
            &receiver.url("/hook"),
            json!({ "secretToken": secret }),
        )
        .await;
    let build = world.build(&app).await;
    let task = world.task(&app, &build, "test").await;
    world.task_status(&app, &task, "EXECUTING").await;
    let received = receiver.wait_for(3).await;

    for (delivery, (event, action)) in received.iter().zip([
        ("build", "created"),
        ("task", "created"),
        ("task", "updated"),
    ]) {
        assert_eq!(delivery.header("x-cirrus-event"), Some(event));
        assert_eq!(delivery.header("content-type"), Some("application/json"));
        assert!(
            delivery
                .header("user-agent")
                .unwrap()
                .starts_with("Herald/")
        );
        let id = delivery.header("x-cirrus-delivery").unwrap();
        assert_eq!(delivery.header("webhook-id"), Some(id));
        assert!(
            delivery
                .header("x-cirrus-timestamp")
                .unwrap()
                .parse::<i64>()
                .unwrap()
                > 1_600_000_000_000
        );
        // Signatures checked with HMAC directly, not with Herald's signing code.
        let expected = hex::encode(hmac_hex(secret.as_bytes(), &[&delivery.body]));
        assert_eq!(
            delivery.header("x-cirrus-signature"),
            Some(expected.as_str())
        );
        let timestamp = delivery.header("webhook-timestamp").unwrap();
        let standard = hmac_hex(
            secret.as_bytes(),
            &[
                id.as_bytes(),
                b".",
                timestamp.as_bytes(),
                b".",
                &delivery.body,
            ],
        );
        let expected = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(standard)
        );
        assert_eq!(
            delivery.header("webhook-signature"),
            Some(expected.as_str())
        );
        assert_eq!(delivery.json()["action"], action);
    }
    let body = received[2].json();
    assert_eq!(body["old_status"], "CREATED");
    assert_eq!(body["data"]["task"]["status"], "EXECUTING");
    assert_eq!(body["data"]["task"]["id"], task.as_str());
    assert_eq!(body["data"]["build"]["id"], build.as_str());
    assert_eq!(body["data"]["repository"]["owner"], "acme");
    let build_body = received[0].json();
    assert_eq!(build_body["data"]["task"], Value::Null);
    assert!(build_body.get("old_status").is_none());
    // The default selection's fields, in its order.
    let keys: Vec<&String> = body["data"]["task"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "id",
            "name",
            "nameAlias",
            "localGroupId",
            "status",
            "statusTimestamp",
            "creationTimestamp",
            "durationInSeconds",
            "uniqueLabels",
            "automaticReRun",
            "automaticallyReRunnable",
            "manualRerunCount",
            "instanceType",
            "notifications"
        ]
    );
    let text = String::from_utf8(received[2].body.to_vec()).unwrap();
    assert!(
        text.starts_with(
            r#"{"action":"updated","old_status":"CREATED","data":{"repository":{"id":"#
        ),
        "{text}"
    );
}

pub(super) async fn flat_and_custom_selections_shape_the_body(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    world
        .endpoint(
            &app,
            &receiver.url("/flat"),
            json!({ "payloadFormat": "FLAT" }),
        )
        .await;
    world
        .endpoint(
            &app,
            &receiver.url("/custom"),
            json!({ "payloadQuery": "build(id: $buildId) { branch title: changeMessageTitle }" }),
        )
        .await;
    world.build(&app).await;
    let received = receiver.wait_for(2).await;
    let flat = received
        .iter()
        .find(|r| r.json().get("build").is_some())
        .unwrap()
        .json();
    assert_eq!(flat["action"], "created");
    assert_eq!(
        flat["task"],
        json!({}),
        "build events carry an empty task, as Cirrus sends"
    );
    assert_eq!(flat["repository"]["name"], "app");
    let custom = received
        .iter()
        .find(|r| r.json().get("data").is_some())
        .unwrap();
    assert_eq!(
        String::from_utf8(custom.body.to_vec()).unwrap(),
        r#"{"action":"created","data":{"build":{"branch":"main","title":"Fix it"}}}"#
    );
}

pub(super) async fn no_signature_headers_without_a_secret(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    // Credentials in the URL travel as HTTP Basic authentication, not in the request line.
    let url = format!("http://bot:pa%24s@{}/hook", receiver.addr);
    world.endpoint(&app, &url, json!({})).await;
    world.build(&app).await;
    let delivery = &receiver.wait_for(1).await[0];
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bot:pa$s")
    );
    assert_eq!(delivery.header("authorization"), Some(basic.as_str()));
    assert!(delivery.header("x-cirrus-signature").is_none());
    assert!(delivery.header("webhook-signature").is_none());
    assert!(
        delivery.header("webhook-id").is_some() && delivery.header("x-cirrus-delivery").is_some()
    );
}

pub(super) async fn event_filters_and_unchanged_statuses(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    world
        .endpoint(
            &app,
            &receiver.url("/builds"),
            json!({ "events": ["BUILD"] }),
        )
        .await;
    world
        .endpoint(&app, &receiver.url("/off"), json!({ "enabled": false }))
        .await;
    let build = world.build(&app).await;
    let task = world.task(&app, &build, "test").await;
    world.task_status(&app, &task, "EXECUTING").await;
    world.task_status(&app, &task, "EXECUTING").await;
    world.build_status(&app, &build, "EXECUTING").await;
    world.build_status(&app, &build, "EXECUTING").await;
    let received = receiver.wait_for(2).await;
    receiver
        .expect_no_more_than(2, Duration::from_millis(600))
        .await;
    assert!(
        received
            .iter()
            .all(|r| r.header("x-cirrus-event") == Some("build"))
    );
    assert_eq!(received[1].json()["old_status"], "CREATED");
}

pub(super) async fn payloads_show_the_state_at_the_event(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["TASK"] }))
        .await;
    let build = world.build(&app).await;
    let task = world.task(&app, &build, "test").await;
    world.task_status(&app, &task, "EXECUTING").await;
    world.task_status(&app, &task, "COMPLETED").await;
    let statuses: Vec<Value> = receiver
        .wait_for(3)
        .await
        .iter()
        .map(|r| r.json()["data"]["task"]["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [json!("CREATED"), json!("EXECUTING"), json!("COMPLETED")]
    );
}

/// A stored selection with a field that fails at every event (here a name no organization can
/// have) renders that field as null; the change that records the event goes through, and the
/// delivery is sent. On PostgreSQL the failing field's statement used to end the change's
/// transaction, so every change of the organization failed.
pub(super) async fn a_selection_whose_field_fails_still_lets_the_change_through(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    // A string PostgreSQL would refuse, which would end the change's transaction, cannot be
    // stored in a selection at all.
    let nul = "ownerInfoByName(name: \"a\\u0000b\") { uid } build(id: $buildId) { id }";
    let response = app
        .gql(
            Some(&world.admin),
            "mutation($org: ID!, $q: String) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: \"https://example.com/nul\", payloadQuery: $q}) { endpoint { id } } }",
            json!({ "org": world.org, "q": nul }),
        )
        .await;
    assert_eq!(code(&response), "BAD_USER_INPUT", "{response}");
    // A field that fails when the payload is rendered (another organization is not found)
    // leaves it null, and the change and its other fields go through.
    let selection = "ownerInfoByName(name: \"someone-else\") { uid } build(id: $buildId) { id }";
    world
        .endpoint(
            &app,
            &receiver.url("/hook"),
            json!({ "payloadQuery": selection }),
        )
        .await;
    let build = world.build(&app).await;
    let received = receiver.wait_for(1).await;
    let body = received[0].json();
    assert_eq!(body["data"]["build"]["id"], build);
    assert!(body["data"]["ownerInfoByName"].is_null(), "{body:#}");
}

pub(super) async fn preview_equals_what_is_sent(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let selection =
        "repository(id: $repositoryId) { name } task(id: $taskId) { name status labels }";
    let build = world.build(&app).await;
    // The endpoint is added after the build, so the only event it gets is the task's creation.
    world
        .endpoint(
            &app,
            &receiver.url("/hook"),
            json!({ "payloadQuery": selection, "payloadFormat": "FLAT" }),
        )
        .await;
    let task = world.task(&app, &build, "lint").await;
    let sent = receiver.wait_for(1).await[0].clone();
    let preview = app
        .ok(
            &world.admin,
            "mutation($org: ID!, $build: ID!, $task: ID, $q: String) { previewWebHookPayload(input: {ownerUid: $org, buildId: $build, taskId: $task, payloadQuery: $q, payloadFormat: FLAT}) { event body } }",
            json!({ "org": world.org, "build": build, "task": task, "q": selection }),
        )
        .await;
    assert_eq!(preview["previewWebHookPayload"]["event"], "task");
    assert_eq!(
        preview["previewWebHookPayload"]["body"],
        String::from_utf8(sent.body.to_vec()).unwrap()
    );
    let bad = app
        .gql(Some(&world.admin), "mutation($org: ID!, $build: ID!) { previewWebHookPayload(input: {ownerUid: $org, buildId: $build, payloadQuery: \"build { nope }\"}) { body } }", json!({ "org": world.org, "build": build }))
        .await;
    assert_eq!(code(&bad), "BAD_USER_INPUT");
}
