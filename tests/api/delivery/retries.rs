//! When an attempt fails: retries with the same id and bytes until the schedule is spent,
//! Retry-After, 410 Gone, redirects, and redeliveries and test pings.

use std::time::Duration;

use serde_json::{Value, json};

use super::{a_build_answered_slowly, deliveries, settled};
use crate::support::{Receiver, Reply, TestApp, World, code};

pub(super) async fn failures_are_retried_with_the_same_id_and_bytes(app: TestApp) {
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

pub(super) async fn a_spent_schedule_fails_the_delivery(app: TestApp) {
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

pub(super) async fn retry_after_is_honoured(app: TestApp) {
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

pub(super) async fn gone_disables_the_endpoint(app: TestApp) {
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

pub(super) async fn redirects_are_not_followed(app: TestApp) {
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

pub(super) async fn redelivery_and_test_pings(app: TestApp) {
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
pub(super) async fn redelivery_waits_for_the_attempt_under_way_and_an_enabled_endpoint(
    app: TestApp,
) {
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
