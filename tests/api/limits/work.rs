//! The work a request or a delivery may take: what a query costs and the rows it may read, a
//! payload past the size a delivery may carry, and an endpoint whose stored URL cannot be read.

use serde_json::{Value, json};

use std::time::Duration;

use super::{CREATE_BUILD, CREATE_TASK, message, refused};
use crate::support::{Receiver, TestApp, World, code};

pub(super) async fn queries_cost_the_most_tasks_a_build_may_have_and_stop_at_their_row_budget(
    app: TestApp,
) {
    let world = World::new(&app, "acme").await;
    let build = world.build(&app).await;
    let tasks: Vec<(&str, Value)> = (0..200)
        .map(|n| {
            (
                CREATE_TASK,
                json!({ "input": { "buildId": build, "name": format!("t{n}") } }),
            )
        })
        .collect();
    for response in app.gql_at_once(&world.write, tasks).await {
        assert!(response.get("errors").is_none(), "{response}");
    }
    // A list of lists of lists is refused before anything runs, whatever the build holds.
    let deep = app
        .gql(
            Some(&world.read),
            "query($b: ID!) { build(id: $b) { tasks { build { tasks { build { tasks { id } } } } } } }",
            json!({ "b": build }),
        )
        .await;
    assert_eq!(code(&deep), "BAD_USER_INPUT", "{deep}");
    assert!(message(&deep).contains("too complex"), "{deep}");
    // A list of lists reads 40,200 rows: within the cost, and within a request's rows.
    let nested = "build(id: $b) { tasks { build { tasks { id } } } }";
    let once = app
        .gql(
            Some(&world.read),
            &format!("query($b: ID!) {{ {nested} }}"),
            json!({ "b": build }),
        )
        .await;
    assert!(once.get("errors").is_none(), "{once}");
    assert_eq!(
        once["data"]["build"]["tasks"].as_array().unwrap().len(),
        200
    );
    // Twice over it would read 80,400: it ends at the request's bound, with one sentence.
    let twice = app
        .gql(
            Some(&world.read),
            &format!("query($b: ID!) {{ a: {nested} b: {nested} }}"),
            json!({ "b": build }),
        )
        .await;
    assert_eq!(code(&twice), "BAD_USER_INPUT", "{twice}");
    assert_eq!(
        message(&twice),
        "The request reads more than 50000 rows; ask for fewer (smaller pages, fewer nested lists).",
    );
}

pub(super) async fn an_oversized_payload_is_recorded_as_a_failed_delivery_with_its_reason(
    app: TestApp,
) {
    let big = Receiver::start().await;
    let plain = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let selection = "build(id: $buildId) { a: changeMessage b: changeMessage c: changeMessage d: changeMessage e: changeMessage }";
    let endpoint = world
        .endpoint(&app, &big.url("/big"), json!({ "payloadQuery": selection }))
        .await;
    world.endpoint(&app, &plain.url("/plain"), json!({})).await;
    let message = "m".repeat(64 * 1024);
    let created = app
        .ok(
            &world.write,
            CREATE_BUILD,
            json!({ "input": { "repositoryId": world.repository, "branch": "main", "changeIdInRepo": "abc", "changeMessage": message } }),
        )
        .await;
    let build = created["createBuild"]["build"]["id"].as_str().unwrap();
    let sent = plain.wait_for(1).await;
    assert_eq!(
        sent[0].json()["data"]["build"]["id"],
        build,
        "the other endpoint's is sent"
    );
    big.expect_no_more_than(0, Duration::from_millis(300)).await;

    let data = app
        .ok(
            &world.admin,
            "query($e: ID!) { viewer { webhookDeliveries(endpointId: $e) { edges { node { id state attempts attemptLog { status error } } } } } }",
            json!({ "e": endpoint }),
        )
        .await;
    let delivery = &data["viewer"]["webhookDeliveries"]["edges"][0]["node"];
    assert_eq!(delivery["state"], "FAILED", "{delivery}");
    assert_eq!(
        delivery["attemptLog"],
        json!([{ "status": null, "error": "The payload is 321 KiB, more than the 256 KiB a delivery may carry; it was not sent." }])
    );
    refused(
        &app,
        &world.admin,
        "mutation($id: ID!) { redeliverWebHook(input: {deliveryId: $id}) { delivery { id } } }",
        json!({ "id": delivery["id"] }),
        "The delivery was never sent: its payload was refused when its event was recorded (its attempt log says why), so there is nothing to send again.",
    )
    .await;
    // The preview says the same, at once.
    refused(
        &app,
        &world.admin,
        "mutation($org: ID!, $b: ID!, $q: String) { previewWebHookPayload(input: {ownerUid: $org, buildId: $b, payloadQuery: $q}) { body } }",
        json!({ "org": world.org, "b": build, "q": selection }),
        "The payload is 321 KiB, more than the 256 KiB a delivery may carry; it was not sent.",
    )
    .await;
}

/// An endpoint whose stored URL cannot be read (written by an older release, or by hand) fails
/// its deliveries with the reason, instead of leaving them queued forever, holding back their
/// build's later deliveries.
pub(super) async fn deliveries_to_an_endpoint_that_cannot_be_read_fail_with_the_reason(
    app: TestApp,
) {
    use sea_orm::{ConnectionTrait, Statement};
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let broken = world
        .endpoint(&app, &receiver.url("/broken"), json!({}))
        .await;
    let fine = world
        .endpoint(&app, &receiver.url("/fine"), json!({}))
        .await;
    let db = &app.state.db;
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => "UPDATE webhook_endpoints SET url = $1 WHERE id = $2",
        _ => "UPDATE webhook_endpoints SET url = ? WHERE id = ?",
    };
    let unreadable = format!("https://example.com/{}", "%C3%A9".repeat(1000));
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [unreadable.into(), broken.parse::<i64>().unwrap().into()],
    ))
    .await
    .unwrap();
    let build = world.build(&app).await;
    world.task(&app, &build, "test").await;
    // The other endpoint gets both events; the broken one's fail, the second after the first.
    receiver.wait_for(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let deliveries = loop {
        let data = app
            .ok(
                &world.admin,
                "query($e: ID!) { viewer { webhookDeliveries(endpointId: $e) { edges { node { event state attemptLog { error } } } } } }",
                json!({ "e": broken }),
            )
            .await;
        let edges = data["viewer"]["webhookDeliveries"]["edges"].clone();
        let failed = edges
            .as_array()
            .unwrap()
            .iter()
            .filter(|edge| edge["node"]["state"] == "FAILED")
            .count();
        if failed == 2 {
            break edges;
        }
        assert!(tokio::time::Instant::now() < deadline, "{edges}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for edge in deliveries.as_array().unwrap() {
        assert_eq!(
            edge["node"]["attemptLog"][0]["error"],
            "the endpoint's stored URL or secret cannot be read, so nothing was sent; save the endpoint again"
        );
    }
    assert!(
        receiver.received().iter().all(|r| r.uri.path() == "/fine"),
        "nothing reached the broken endpoint's address"
    );
    let _ = fine;
}
