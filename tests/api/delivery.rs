//! The delivery engine: what arrives, signed how, retried when, in which order.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use herald::store::deliveries;
use sea_orm::sqlx::postgres::PgListener;

use crate::support::{Backend, Received, Receiver, Reply, TestApp, World, code, task_at};

crate::on_both_backends!(
    build_and_task_events_arrive_signed_with_cirrus_and_standard_headers,
    flat_and_custom_selections_shape_the_body,
    no_signature_headers_without_a_secret,
    event_filters_and_unchanged_statuses,
    payloads_show_the_state_at_the_event,
    failures_are_retried_with_the_same_id_and_bytes,
    a_spent_schedule_fails_the_delivery,
    retry_after_is_honoured,
    gone_disables_the_endpoint,
    redirects_are_not_followed,
    redelivery_and_test_pings,
    redelivery_waits_for_the_attempt_under_way_and_an_enabled_endpoint,
    a_selection_whose_field_fails_still_lets_the_change_through,
    preview_equals_what_is_sent,
    each_build_arrives_in_order_under_a_slow_receiver,
    changes_sent_at_once_get_their_own_answers_and_payloads,
    a_retrying_delivery_holds_back_its_own_build_only,
    shutdown_lets_in_flight_attempts_finish,
    shutdown_gives_back_claims_it_did_not_send,
);

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

async fn build_and_task_events_arrive_signed_with_cirrus_and_standard_headers(app: TestApp) {
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

async fn flat_and_custom_selections_shape_the_body(app: TestApp) {
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

async fn no_signature_headers_without_a_secret(app: TestApp) {
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

async fn event_filters_and_unchanged_statuses(app: TestApp) {
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

async fn payloads_show_the_state_at_the_event(app: TestApp) {
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

const DELIVERIES: &str = "query($endpoint: ID) { viewer { webhookDeliveries(endpointId: $endpoint) { edges { node {
    id state attempts event action nextAttemptTimestamp payload { event action data } response { status data duration }
    attemptLog { number status error duration responseData responseHeaders timestamp } } } } } }";

async fn deliveries(app: &TestApp, world: &World) -> Vec<Value> {
    let data = app.ok(&world.admin, DELIVERIES, json!({})).await;
    data["viewer"]["webhookDeliveries"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| edge["node"].clone())
        .collect()
}

/// Waits until the newest delivery reaches `state`.
async fn settled(app: &TestApp, world: &World, state: &str) -> Value {
    for _ in 0..200 {
        let all = deliveries(app, world).await;
        if all.first().is_some_and(|d| d["state"] == state) {
            return all[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the delivery never reached {state}: {:#?}",
        deliveries(app, world).await
    );
}

async fn failures_are_retried_with_the_same_id_and_bytes(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.script([
        Reply::status(500).header("x-receipt", "r-1"),
        Reply::status(502),
    ]);
    let world = World::new(&app, "acme").await;
    world
        .endpoint(
            &app,
            &receiver.url("/hook"),
            json!({ "secretToken": "x-secret" }),
        )
        .await;
    world.build(&app).await;
    let received = receiver.wait_for(3).await;
    assert!(
        received
            .iter()
            .all(|r| r.header("x-cirrus-delivery") == received[0].header("x-cirrus-delivery"))
    );
    assert!(received.iter().all(|r| r.body == received[0].body));
    let delivery = settled(&app, &world, "DELIVERED").await;
    assert_eq!(
        delivery["id"],
        received[0].header("x-cirrus-delivery").unwrap()
    );
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(
        delivery["payload"]["data"],
        String::from_utf8(received[0].body.to_vec()).unwrap()
    );
    let log = delivery["attemptLog"].as_array().unwrap();
    assert_eq!(
        log.iter().map(|a| a["status"].clone()).collect::<Vec<_>>(),
        [json!(500), json!(502), json!(200)]
    );
    assert_eq!(log[0]["error"], "the receiver answered HTTP 500");
    let headers: Value = serde_json::from_str(log[0]["responseHeaders"].as_str().unwrap()).unwrap();
    assert_eq!(headers["x-receipt"], "r-1", "{headers}");
    assert_eq!(headers["content-length"], "8", "{headers}");
    assert_eq!(log[2]["error"], Value::Null);
    assert_eq!(log[2]["responseData"], "received");
    assert_eq!(delivery["response"]["status"], 200);
    assert_eq!(delivery["nextAttemptTimestamp"], Value::Null);
}

async fn a_spent_schedule_fails_the_delivery(app: TestApp) {
    let world = World::new(&app, "acme").await;
    // Nothing listens on this port: every attempt is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    world
        .endpoint(&app, &format!("http://{closed}/hook"), json!({}))
        .await;
    world.build(&app).await;
    let delivery = settled(&app, &world, "FAILED").await;
    assert_eq!(
        delivery["attempts"], 3,
        "the schedule has two delays: three attempts"
    );
    assert_eq!(delivery["response"], Value::Null);
    let log = delivery["attemptLog"].as_array().unwrap();
    assert!(
        log.iter()
            .all(|a| a["status"].is_null() && a["error"] == "the receiver refused the connection"),
        "{log:#?}"
    );
}

async fn retry_after_is_honoured(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(429).header("retry-after", "2")]);
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({}))
        .await;
    world.build(&app).await;
    receiver.wait_for(2).await;
    let delivery = settled(&app, &world, "DELIVERED").await;
    let log = delivery["attemptLog"].as_array().unwrap();
    let waited = log[1]["timestamp"].as_i64().unwrap() - log[0]["timestamp"].as_i64().unwrap();
    assert!(
        waited >= 1900,
        "the second attempt came {waited} ms after the first, not after Retry-After's 2 s"
    );
}

async fn gone_disables_the_endpoint(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.default_reply(Reply::status(410));
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({}))
        .await;
    world.build(&app).await;
    let delivery = settled(&app, &world, "FAILED").await;
    assert_eq!(delivery["attempts"], 1);
    let data = app
        .ok(
            &world.admin,
            "{ viewer { webhookSettings { endpoints { enabled lastDelivery { state } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data["viewer"]["webhookSettings"]["endpoints"][0]["enabled"],
        false
    );
    world.build(&app).await;
    receiver
        .expect_no_more_than(1, Duration::from_millis(500))
        .await;
}

async fn redirects_are_not_followed(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(302).header("location", &receiver.url("/elsewhere"))]);
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({}))
        .await;
    world.build(&app).await;
    let delivery = settled(&app, &world, "DELIVERED").await;
    assert_eq!(delivery["attemptLog"][0]["status"], 302);
    assert_eq!(
        receiver.received().len(),
        2,
        "the redirect was retried at the endpoint, not followed"
    );
}

async fn redelivery_and_test_pings(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let endpoint = world
        .endpoint(
            &app,
            &receiver.url("/hook"),
            json!({ "secretToken": "ping-secret" }),
        )
        .await;
    world.build(&app).await;
    let first = receiver.wait_for(1).await[0].clone();
    let id = settled(&app, &world, "DELIVERED").await["id"].clone();
    let redelivered = app.ok(&world.admin, "mutation($id: ID!) { redeliverWebHook(input: {deliveryId: $id}) { delivery { id state } } }", json!({ "id": id })).await;
    assert_eq!(redelivered["redeliverWebHook"]["delivery"]["id"], id);
    let again = receiver.wait_for(2).await[1].clone();
    assert_eq!(
        again.header("x-cirrus-delivery"),
        first.header("x-cirrus-delivery")
    );
    assert_eq!(again.body, first.body);
    let delivery = settled(&app, &world, "DELIVERED").await;
    assert_eq!(delivery["attempts"], 2);

    let ping = app.ok(&world.admin, "mutation($id: ID!) { sendTestWebHook(input: {endpointId: $id}) { delivery { id event } } }", json!({ "id": endpoint })).await;
    assert_eq!(ping["sendTestWebHook"]["delivery"]["event"], "ping");
    let received = receiver.wait_for(3).await[2].clone();
    assert_eq!(received.header("x-cirrus-event"), Some("ping"));
    assert_eq!(received.json()["action"], "ping");
    assert!(received.header("x-cirrus-signature").is_some());
    let missing = app
        .gql(
            Some(&world.admin),
            "mutation { redeliverWebHook(input: {deliveryId: \"nope\"}) { delivery { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&missing), "NOT_FOUND");
}

/// A redelivery is refused while an attempt is under way (its outcome, decided on the old
/// schedule, would stand for the redelivery) and while the endpoint is disabled (nothing would
/// send it); either refusal changes nothing, and a redelivery after the attempt is sent.
async fn redelivery_waits_for_the_attempt_under_way_and_an_enabled_endpoint(app: TestApp) {
    let (receiver, world) = a_build_answered_slowly(&app).await;
    let redeliver = "mutation($id: ID!) { redeliverWebHook(input: {deliveryId: $id}) { delivery { id state } } }";
    let in_flight = loop {
        let all = deliveries(&app, &world).await;
        if let Some(delivery) = all.first() {
            break delivery["id"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = app
        .gql(Some(&world.admin), redeliver, json!({ "id": in_flight }))
        .await;
    assert_eq!(code(&refused), "CONFLICT", "{refused:#}");
    let delivery = settled(&app, &world, "DELIVERED").await;
    assert_eq!(delivery["attempts"], 1);
    receiver
        .expect_no_more_than(1, Duration::from_secs(1))
        .await;

    let endpoint = app
        .ok(
            &world.admin,
            "{ viewer { webhookSettings { endpoints { id } } } }",
            json!({}),
        )
        .await["viewer"]["webhookSettings"]["endpoints"][0]["id"]
        .clone();
    app.ok(&world.admin, "mutation($id: ID!) { updateWebHookEndpoint(input: {id: $id, enabled: false}) { endpoint { id } } }", json!({ "id": endpoint })).await;
    let disabled = app
        .gql(Some(&world.admin), redeliver, json!({ "id": in_flight }))
        .await;
    assert_eq!(code(&disabled), "BAD_USER_INPUT", "{disabled:#}");
    assert_eq!(settled(&app, &world, "DELIVERED").await["attempts"], 1);

    app.ok(&world.admin, "mutation($id: ID!) { updateWebHookEndpoint(input: {id: $id, enabled: true}) { endpoint { id } } }", json!({ "id": endpoint })).await;
    app.ok(&world.admin, redeliver, json!({ "id": in_flight }))
        .await;
    receiver.wait_for(2).await;
    assert_eq!(settled(&app, &world, "DELIVERED").await["attempts"], 2);
}

/// A stored selection with a field that fails at every event (here a name no organization can
/// have) renders that field as null; the change that records the event goes through, and the
/// delivery is sent. On PostgreSQL the failing field's statement used to end the change's
/// transaction, so every change of the organization failed.
async fn a_selection_whose_field_fails_still_lets_the_change_through(app: TestApp) {
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

async fn preview_equals_what_is_sent(app: TestApp) {
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

async fn each_build_arrives_in_order_under_a_slow_receiver(app: TestApp) {
    let receiver = Receiver::start().await;
    let delays: Vec<Reply> = (0..60)
        .map(|i| Reply::status(200).delay(Duration::from_millis((i * 37 % 5) * 20)))
        .collect();
    receiver.script(delays);
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["TASK"] }))
        .await;
    let statuses = [
        "TRIGGERED",
        "SCHEDULED",
        "EXECUTING",
        "PAUSED",
        "EXECUTING",
        "FAILED",
        "COMPLETED",
    ];
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let build = world.build(&app).await;
        tasks.push(world.task(&app, &build, "test").await);
    }
    for status in statuses {
        for task in &tasks {
            world.task_status(&app, task, status).await;
        }
    }
    let received = receiver.wait_for(3 * (statuses.len() + 1)).await;
    for task in &tasks {
        let seen: Vec<String> = received
            .iter()
            .map(|r| r.json())
            .filter(|body| body["data"]["task"]["id"] == task.as_str())
            .map(|body| body["data"]["task"]["status"].as_str().unwrap().to_owned())
            .collect();
        let mut expected = vec!["CREATED".to_owned()];
        expected.extend(statuses.iter().map(|s| s.to_string()));
        assert_eq!(seen, expected, "task {task} arrived out of order");
    }
}

/// Changes that arrive together are written together; each still gets its own answer, a change
/// that fails does not take the others with it, and each payload shows its build as its own
/// change left it, in the order the build's changes were made.
async fn changes_sent_at_once_get_their_own_answers_and_payloads(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let selection = "build(id: $buildId) { tasks { id status } } task(id: $taskId) { id status }";
    world
        .endpoint(
            &app,
            &receiver.url("/hook"),
            json!({ "events": ["TASK"], "payloadQuery": selection }),
        )
        .await;
    const CREATE: &str = "mutation($build: ID!, $name: String!) { createTask(input: {buildId: $build, name: $name}) { task { id name } } }";
    let mut created = Vec::new();
    for _ in 0..6 {
        let build = world.build(&app).await;
        created.push((
            CREATE,
            json!({ "build": build, "name": format!("a{build}") }),
        ));
        created.push((
            CREATE,
            json!({ "build": build, "name": format!("b{build}") }),
        ));
    }
    let failing = [
        (CREATE, json!({ "build": "999999", "name": "x" })),
        (
            CREATE,
            json!({ "build": created[0].1["build"], "name": " " }),
        ),
    ];
    created.extend(failing);
    let answers = app.gql_at_once(&world.write, created.clone()).await;
    let mut builds = Vec::new();
    for (pair, requests) in answers[..12].chunks(2).zip(created.chunks(2)) {
        let tasks: Vec<String> = pair
            .iter()
            .zip(requests)
            .map(|(answer, (_, asked))| {
                let task = &answer["data"]["createTask"]["task"];
                assert_eq!(task["name"], asked["name"], "{answer}");
                task["id"].as_str().unwrap().to_owned()
            })
            .collect();
        builds.push([tasks[0].clone(), tasks[1].clone()]);
    }
    assert_eq!(code(&answers[12]), "NOT_FOUND", "{}", answers[12]);
    assert_eq!(code(&answers[13]), "BAD_USER_INPUT", "{}", answers[13]);
    receiver.wait_for(12).await;
    const UPDATE: &str = "mutation($task: ID!, $status: TaskStatus!) { updateTaskStatus(input: {taskId: $task, status: $status}) { task { id status } } }";
    let mut requests: Vec<(&str, Value)> = builds
        .iter()
        .flatten()
        .map(|task| (UPDATE, json!({ "task": task, "status": "EXECUTING" })))
        .collect();
    requests.extend((0..4).map(|_| (UPDATE, json!({ "task": "999999", "status": "EXECUTING" }))));
    let answers = app.gql_at_once(&world.write, requests).await;
    for (answer, task) in answers.iter().zip(builds.iter().flatten()) {
        let written = &answer["data"]["updateTaskStatus"]["task"];
        assert_eq!(written["id"], task.as_str(), "{answer}");
        assert_eq!(written["status"], "EXECUTING", "{answer}");
    }
    for answer in &answers[12..] {
        assert_eq!(code(answer), "NOT_FOUND", "{answer}");
    }
    let received = receiver.wait_for(24).await;
    for tasks in &builds {
        let events: Vec<Value> = received[12..]
            .iter()
            .map(|r| r.json()["data"].clone())
            .filter(|data| tasks.iter().any(|task| data["task"]["id"] == task.as_str()))
            .collect();
        assert_eq!(events.len(), 2, "{events:?}");
        for (n, data) in events.iter().enumerate() {
            assert_eq!(data["task"]["status"], "EXECUTING");
            let executing = data["build"]["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|task| task["status"] == "EXECUTING")
                .count();
            assert_eq!(executing, n + 1, "event {n} of its build: {data}");
        }
    }
    receiver
        .expect_no_more_than(24, Duration::from_millis(300))
        .await;
}

async fn a_retrying_delivery_holds_back_its_own_build_only(app: TestApp) {
    let backend = app.backend;
    drop(app);
    let app = TestApp::start_with(backend, |config| {
        config.retry_schedule = herald::domain::RetrySchedule::parse("1s").unwrap();
    })
    .await
    .unwrap();
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500)]);
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["TASK"] }))
        .await;
    let build = world.build(&app).await;
    let held = world.task(&app, &build, "held").await;
    receiver.wait_for(1).await;
    // The first event now waits a second for its retry; its build's next events wait behind it.
    world.task_status(&app, &held, "EXECUTING").await;
    world.task_status(&app, &held, "COMPLETED").await;
    let other = world.build(&app).await;
    let free = world.task(&app, &other, "free").await;
    let received = receiver.wait_for(5).await;
    let order: Vec<(String, String)> = received.iter().map(Received::task).collect();
    let at = task_at;
    assert_eq!(
        order,
        [
            at(&held, "CREATED"),
            at(&free, "CREATED"),
            at(&held, "CREATED"),
            at(&held, "EXECUTING"),
            at(&held, "COMPLETED"),
        ],
        "the other build went ahead; the held build followed its retry in order"
    );
}

/// A receiver that answers after 800 ms, an organization with an endpoint for it, and a build
/// whose delivery is on its way.
async fn a_build_answered_slowly(app: &TestApp) -> (Receiver, World) {
    let receiver = Receiver::start().await;
    receiver.default_reply(Reply::status(200).delay(Duration::from_millis(800)));
    let world = World::new(app, "acme").await;
    world.endpoint(app, &receiver.url("/hook"), json!({})).await;
    world.build(app).await;
    (receiver, world)
}

async fn shutdown_lets_in_flight_attempts_finish(mut app: TestApp) {
    let (receiver, world) = a_build_answered_slowly(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop().await;
    let org: i64 = world.org.parse().unwrap();
    let page = herald::store::Page::new(Some(10), None).unwrap();
    let rows = herald::store::deliveries::list(&app.state.db, org, None, None, page)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].state, "DELIVERED",
        "the in-flight attempt finished and was recorded before exit"
    );
    assert_eq!(receiver.received().len(), 1);
}

/// A worker holds claimed deliveries of a busy endpoint ready for its next free slot; when it
/// stops, it gives back those it did not send, so that they do not wait for their lease to end.
async fn shutdown_gives_back_claims_it_did_not_send(app: TestApp) {
    let backend = app.backend;
    drop(app);
    let mut app = TestApp::start_with(backend, |config| config.endpoint_concurrency = 1)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    // The first build's delivery is answered after the stop, within the shutdown's grace; the
    // second waits, claimed, for the endpoint's one slot; the third is not claimed.
    receiver.default_reply(Reply::status(200).delay(Duration::from_millis(1200)));
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["BUILD"] }))
        .await;
    for _ in 0..3 {
        world.build(&app).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // On PostgreSQL, the claims given back are announced to the other processes' workers.
    let mut listener = match backend {
        Backend::Postgres => {
            let mut listener = PgListener::connect(&app.database_url).await.unwrap();
            listener.listen(deliveries::CHANNEL).await.unwrap();
            Some(listener)
        }
        Backend::Sqlite => None,
    };
    app.stop().await;
    if let Some(listener) = listener.as_mut() {
        let announced = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await;
        assert!(
            announced.is_ok_and(|notification| notification.is_ok()),
            "the claims given back were not announced"
        );
    }
    assert_eq!(receiver.received().len(), 1);
    let org: i64 = world.org.parse().unwrap();
    let page = herald::store::Page::new(Some(10), None).unwrap();
    let rows = herald::store::deliveries::list(&app.state.db, org, None, None, page)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let states: Vec<&str> = rows.iter().map(|row| row.state.as_str()).collect();
    assert_eq!(
        states.iter().filter(|state| **state == "DELIVERED").count(),
        1,
        "{states:?}"
    );
    for row in rows.iter().filter(|row| row.state == "PENDING") {
        use sea_orm::EntityTrait;
        let queued = herald::store::entities::delivery_queue::Entity::find_by_id(row.id)
            .one(&app.state.db)
            .await
            .unwrap()
            .expect("an unfinished delivery is queued");
        assert_eq!(queued.lease_token, None, "a claim was kept: {queued:?}");
        assert_eq!(queued.lease_until, None, "a claim was kept: {queued:?}");
    }
}

/// An outcome whose transaction PostgreSQL rolls back to break a deadlock (another transaction
/// holds the delivery's row and waits for its queue row, which the outcome took first) is
/// written again once the other lets go: the delivery is recorded once, as delivered, and is
/// not sent again when its lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_an_outcome_rolled_back_in_a_deadlock_is_written_again() {
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
    let lease = Duration::from_secs(4);
    let Some(app) = TestApp::start_with(Backend::Postgres, |config| config.lease = lease).await
    else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let (receiver, world) = a_build_answered_slowly(&app).await;
    let other = sea_orm::Database::connect(&app.database_url).await.unwrap();
    let query = |sql: &str| Statement::from_string(sea_orm::DbBackend::Postgres, sql.to_owned());
    // While the receiver answers, another transaction takes the delivery's row; it detects no
    // deadlock itself, so that PostgreSQL ends the outcome's transaction and not this one.
    let tx = other.begin().await.unwrap();
    tx.execute_unprepared("SET LOCAL deadlock_timeout = '30s'")
        .await
        .unwrap();
    let row = tx
        .query_one_raw(query("SELECT id FROM deliveries FOR UPDATE"))
        .await
        .unwrap()
        .expect("the build's delivery");
    let id: i64 = row.try_get("", "id").unwrap();
    // The outcome deletes the queue row, then waits for the delivery's row.
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity
        WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE deliveries%'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = other.query_one_raw(query(waiting)).await.unwrap().unwrap();
        if row.try_get::<i64>("", "n").unwrap() > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outcome never waited for the delivery's row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Waiting for the queue row closes the cycle; once the outcome's transaction is rolled
    // back, the row is there again and this lock is granted.
    let queued = tx
        .query_one_raw(query(&format!(
            "SELECT delivery_id FROM delivery_queue WHERE delivery_id = {id} FOR UPDATE"
        )))
        .await
        .unwrap();
    assert!(queued.is_some(), "the rolled-back outcome left the queue");
    tx.rollback().await.unwrap();
    let delivery = settled(&app, &world, "DELIVERED").await;
    assert_eq!(delivery["attempts"], 1);
    // Past the lease: an outcome left unwritten would have its delivery sent again.
    receiver
        .expect_no_more_than(1, lease + Duration::from_secs(1))
        .await;
}
