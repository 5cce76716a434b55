//! Published events as Codeup's and Kudu's receivers take them: the payload itself, the event's
//! name in their header, Codeup's token and Basic credentials, Kudu's hooks unsigned.

use base64::Engine as _;
use serde_json::{Value, json};

use super::verify;
use crate::support::{Receiver, TestApp, World, code};

fn golden(path: &str) -> Value {
    let path = format!("{}/tests/golden/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const PUBLISH: &str = "mutation($input: PublishEventInput!) { publishEvent(input: $input) { event { id type subject timestamp } deliveries } }";

async fn publish(
    app: &TestApp,
    world: &World,
    kind: &str,
    subject: Option<&str>,
    payload: &Value,
) -> Value {
    app.ok(
        &world.write,
        PUBLISH,
        json!({ "input": { "ownerUid": world.org, "type": kind, "subject": subject, "payload": payload } }),
    )
    .await["publishEvent"]
        .clone()
}

pub(super) async fn codeup_receives_published_git_events_with_its_token_and_credentials(
    app: TestApp,
) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "codeup").await;
    let url = format!("http://codeup-bot:p%40ss@{}/codeup", receiver.addr);
    let endpoint = world
        .endpoint(
            &app,
            &url,
            json!({
                "secretToken": "codeup-shared-token",
                "signatureStyle": "CODEUP",
                "payloadFormat": "RAW",
                "events": ["PUBLISHED"],
                "publishedEvents": ["push", "Tag_Push", "note", "merge_request"],
            }),
        )
        .await;
    // An endpoint that names no events gets build and task events only.
    world
        .endpoint(&app, &receiver.url("/default"), json!({}))
        .await;
    let events = golden("codeup/events.json");
    let kinds = ["push", "tag_push", "note", "merge_request"];
    for kind in kinds {
        let published = publish(&app, &world, kind, Some("demo/demo"), &events[kind]).await;
        assert_eq!(published["deliveries"], 1, "{kind}");
        assert_eq!(published["event"]["type"], kind);
        assert_eq!(published["event"]["subject"], "demo/demo");
    }
    let skipped = publish(
        &app,
        &world,
        "pipeline",
        Some("demo/demo"),
        &json!({"x": 1}),
    )
    .await;
    assert_eq!(
        skipped["deliveries"], 0,
        "a type the endpoint does not list"
    );

    let received = receiver.wait_for(4).await;
    receiver
        .expect_no_more_than(4, std::time::Duration::from_millis(300))
        .await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("codeup-bot:p@ss")
    );
    let names = [
        "Push Hook",
        "Tag Push Hook",
        "Note Hook",
        "Merge Request Hook",
    ];
    for ((r, kind), name) in received.iter().zip(kinds).zip(names) {
        assert_eq!(r.uri.path(), "/codeup");
        assert_eq!(r.header("codeup-event"), Some(name), "in subject order");
        assert_eq!(r.header("x-cirrus-event"), Some(kind));
        assert!(verify::token(r, "x-codeup-token", "codeup-shared-token"));
        assert_eq!(r.header("authorization"), Some(basic.as_str()));
        assert_eq!(r.json(), events[kind], "the body is the payload itself");
        assert_eq!(r.json()["object_kind"], kind);
    }

    // "Test Hook" sends the newest payload of a kind through the endpoint's own style.
    let test = app
        .ok(
            &world.admin,
            "mutation($id: ID!) { sendTestWebHook(input: {endpointId: $id, event: \"push\"}) { delivery { event action } } }",
            json!({ "id": endpoint }),
        )
        .await;
    assert_eq!(
        test["sendTestWebHook"]["delivery"],
        json!({ "event": "push", "action": "published" })
    );
    let sample = receiver.wait_for(5).await[4].clone();
    assert_eq!(sample.header("codeup-event"), Some("Push Hook"));
    assert_eq!(sample.json(), events["push"]);
    assert!(verify::token(
        &sample,
        "x-codeup-token",
        "codeup-shared-token"
    ));
}

pub(super) async fn kudu_post_deployment_reaches_an_unsigned_endpoint(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "kudu").await;
    world
        .endpoint(
            &app,
            &receiver.url("/kudu"),
            json!({
                "secretToken": "never-sent-anywhere",
                "signatureStyle": "NONE",
                "payloadFormat": "RAW",
                "events": ["PUBLISHED"],
                "publishedEvents": ["postdeployment"],
            }),
        )
        .await;
    world
        .endpoint(
            &app,
            &receiver.url("/data"),
            json!({ "events": ["PUBLISHED"] }),
        )
        .await;
    let body = golden("kudu/post_deployment.json");
    let published = publish(&app, &world, "PostDeployment", None, &body).await;
    assert_eq!(published["deliveries"], 2);
    let received = receiver.wait_for(2).await;
    let kudu = received.iter().find(|r| r.uri.path() == "/kudu").unwrap();
    assert_eq!(kudu.json(), body);
    assert_eq!(kudu.header("x-cirrus-event"), Some("PostDeployment"));
    for name in ["webhook-signature", "x-cirrus-signature"] {
        assert!(kudu.header(name).is_none(), "{name} was sent");
    }
    assert!(!String::from_utf8_lossy(&kudu.body).contains("never-sent"));
    let data = received.iter().find(|r| r.uri.path() == "/data").unwrap();
    assert_eq!(data.json(), json!({ "action": "published", "data": body }));

    // A payload at the limit fits a RAW body, not DATA's envelope: that delivery is recorded
    // as failed, with the reason, and nothing is sent to it.
    let at_limit = json!({ "pad": "x".repeat(256 * 1024 - 10) });
    assert_eq!(at_limit.to_string().len(), 256 * 1024);
    let published = publish(&app, &world, "PostDeployment", None, &at_limit).await;
    assert_eq!(published["deliveries"], 1);
    let big = receiver.wait_for(3).await[2].clone();
    assert_eq!(big.uri.path(), "/kudu");
    let failed = app
        .ok(
            &world.admin,
            "query($org: ID!) { ownerInfo(uid: $org) { webhookDeliveries(first: 5, state: FAILED) { edges { node { event attemptLog { error } } } } } }",
            json!({ "org": world.org }),
        )
        .await;
    let node = &failed["ownerInfo"]["webhookDeliveries"]["edges"][0]["node"];
    assert_eq!(node["event"], "PostDeployment");
    assert!(
        node["attemptLog"][0]["error"]
            .as_str()
            .unwrap()
            .contains("with its envelope"),
        "{failed}"
    );

    // What publishing refuses, with one sentence each, recording nothing.
    for (kind, payload, words) in [
        ("build", json!({}), "reserved"),
        ("9lives", json!({}), "must be a letter"),
        ("deploy", json!([1, 2]), "JSON object"),
        ("deploy", json!({ "pad": "x".repeat(300 * 1024) }), "KiB"),
    ] {
        let response = app
            .gql(
                Some(&world.write),
                PUBLISH,
                json!({ "input": { "ownerUid": world.org, "type": kind, "payload": payload } }),
            )
            .await;
        assert_eq!(code(&response), "BAD_USER_INPUT", "{response}");
        let message = response["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains(words) && message.ends_with('.'),
            "{message}"
        );
    }
    let read = app
        .gql(
            Some(&world.read),
            PUBLISH,
            json!({ "input": { "ownerUid": world.org, "type": "deploy", "payload": {} } }),
        )
        .await;
    assert_eq!(code(&read), "FORBIDDEN");
    receiver
        .expect_no_more_than(3, std::time::Duration::from_millis(300))
        .await;
}
