//! `X-Herald-Sequence`: each endpoint's deliveries numbered 1, 2, 3, … without a gap or a
//! repeat, and `webhookEvents`, which returns any range of them with the exact bodies sent.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Receiver, TestApp, World};

const EVENTS: &str = "query($endpoint: ID!, $after: Int, $first: Int) { webhookEvents(endpointId: $endpoint, afterSequence: $after, first: $first) { sequence deliveryId event action timestamp state body } }";

/// Each delivery received at `path` by its sequence number; a number received twice fails.
fn by_sequence(receiver: &Receiver, path: &str) -> HashMap<i64, crate::support::Received> {
    let mut seen = HashMap::new();
    for received in receiver.received() {
        if received.uri.path() != path {
            continue;
        }
        let sequence: i64 = received
            .header("x-herald-sequence")
            .expect("every delivery carries X-Herald-Sequence")
            .parse()
            .unwrap();
        assert!(
            seen.insert(sequence, received).is_none(),
            "{path}: sequence {sequence} was sent twice"
        );
    }
    seen
}

pub(super) async fn each_endpoint_numbers_its_deliveries_without_gaps(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "sequences").await;
    let all = world.endpoint(&app, &receiver.url("/all"), json!({})).await;
    let builds_only = world
        .endpoint(
            &app,
            &receiver.url("/builds"),
            json!({ "events": ["BUILD"] }),
        )
        .await;
    // Builds and tasks changed from concurrent clients, so that batches hold several.
    let builds: Vec<String> = {
        let create = "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"c\"}) { build { id } } }";
        let answers = app
            .gql_at_once(
                &world.write,
                (0..12)
                    .map(|_| (create, json!({ "repo": world.repository })))
                    .collect(),
            )
            .await;
        answers
            .iter()
            .map(|a| {
                a["data"]["createBuild"]["build"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let task = "mutation($build: ID!) { createTask(input: {buildId: $build, name: \"test\"}) { task { id } } }";
    app.gql_at_once(
        &world.write,
        builds
            .iter()
            .map(|b| (task, json!({ "build": b })))
            .collect(),
    )
    .await;
    let finish = "mutation($build: ID!) { updateBuildStatus(input: {buildId: $build, status: COMPLETED}) { build { id } } }";
    app.gql_at_once(
        &world.write,
        builds
            .iter()
            .map(|b| (finish, json!({ "build": b })))
            .collect(),
    )
    .await;
    // A test delivery takes the next number too.
    let test = app
        .ok(
            &world.admin,
            "mutation($id: ID!) { sendTestWebHook(input: {endpointId: $id}) { delivery { sequence } } }",
            json!({ "id": all }),
        )
        .await;
    assert_eq!(test["sendTestWebHook"]["delivery"]["sequence"], 37);

    receiver.wait_for(37 + 24).await;
    receiver
        .expect_no_more_than(37 + 24, Duration::from_millis(300))
        .await;
    let received = by_sequence(&receiver, "/all");
    let mut numbers: Vec<i64> = received.keys().copied().collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=37).collect::<Vec<_>>());
    let mut numbers: Vec<i64> = by_sequence(&receiver, "/builds").keys().copied().collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=24).collect::<Vec<_>>(),
        "each endpoint counts its own"
    );
    // A build's events are numbered in their order.
    let mut last: HashMap<String, i64> = HashMap::new();
    for n in 1..=36 {
        let body = received[&n].json();
        let build = body["data"]["build"]["id"].as_str().unwrap().to_owned();
        if let Some(before) = last.insert(build.clone(), n) {
            assert!(before < n);
        }
    }

    // A receiver that missed 10..=14 fetches them, with the bodies it would have got.
    let page = app
        .ok(
            &world.read,
            EVENTS,
            json!({ "endpoint": all, "after": 9, "first": 5 }),
        )
        .await;
    let events = page["webhookEvents"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    for (event, n) in events.iter().zip(10..) {
        let sent = &received[&n];
        assert_eq!(event["sequence"], n);
        assert_eq!(
            event["deliveryId"],
            sent.header("x-cirrus-delivery").unwrap()
        );
        assert_eq!(event["event"], sent.header("x-cirrus-event").unwrap());
        assert_eq!(event["body"].as_str().unwrap().as_bytes(), &sent.body[..]);
        assert_eq!(event["state"], "DELIVERED");
    }
    let rest = app
        .ok(&world.read, EVENTS, json!({ "endpoint": all, "after": 30 }))
        .await;
    let rest: Vec<&Value> = rest["webhookEvents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["sequence"])
        .collect();
    assert_eq!(rest, [31, 32, 33, 34, 35, 36, 37]);
    let none = app
        .ok(
            &world.read,
            EVENTS,
            json!({ "endpoint": builds_only, "after": 24 }),
        )
        .await;
    assert_eq!(none["webhookEvents"], json!([]));
}

pub(super) async fn webhook_events_refuses_bad_ranges_and_other_organizations(app: TestApp) {
    let world = World::new(&app, "events-owner").await;
    let other = World::new(&app, "events-other").await;
    let endpoint = world
        .endpoint(&app, "https://receiver.example/hook", json!({}))
        .await;
    let audited = world
        .endpoint(
            &app,
            "https://receiver.example/audit",
            json!({ "events": ["AUDIT_EVENT"] }),
        )
        .await;
    let cases = [
        (
            &world.read,
            json!({ "endpoint": endpoint, "after": -1 }),
            "afterSequence must be 0 or more.",
        ),
        (
            &world.read,
            json!({ "endpoint": endpoint, "first": 0 }),
            "first must be between 1 and 500.",
        ),
        (
            &world.read,
            json!({ "endpoint": endpoint, "first": 501 }),
            "first must be between 1 and 500.",
        ),
        (
            &world.read,
            json!({ "endpoint": audited }),
            "This operation needs ADMIN permission.",
        ),
        (
            &other.admin,
            json!({ "endpoint": endpoint }),
            "No webhook endpoint",
        ),
    ];
    for (token, variables, message) in cases {
        let answer = app.gql(Some(token), EVENTS, variables.clone()).await;
        let error = answer["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{variables}: {answer:#}");
    }
    // The audit events it got stay for admins after it stops getting them.
    world
        .endpoint(&app, "https://receiver.example/another", json!({}))
        .await;
    app.ok(
        &world.admin,
        "mutation($id: ID!) { updateWebHookEndpoint(input: {id: $id, events: [BUILD]}) { endpoint { id } } }",
        json!({ "id": audited }),
    )
    .await;
    let refused = app
        .gql(Some(&world.read), EVENTS, json!({ "endpoint": audited }))
        .await;
    assert_eq!(
        refused["errors"][0]["message"], "This operation needs ADMIN permission.",
        "{refused:#}"
    );
    let audit = app
        .ok(&world.admin, EVENTS, json!({ "endpoint": audited }))
        .await;
    let events: Vec<&Value> = audit["webhookEvents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| &event["event"])
        .collect();
    assert!(
        !events.is_empty() && events.iter().all(|e| *e == "audit_event"),
        "{audit:#}"
    );
}
