//! The SLACK payload format: Slack messages rendered in the event's transaction from a fixed
//! selection, accepted by a (fake) Slack, compared with golden files; status filters; pings.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_slack::FakeSlack;
use crate::support::{Backend, Receiver, TestApp, World, code};

/// Replaces what changes from run to run (ids, durations) with placeholders; `ids` pairs a
/// word (`build`, `task`) with its id.
pub fn normalise(message: &Value, ids: &[(&str, &str)]) -> Value {
    match message {
        Value::String(text) if text.starts_with("*Duration*\n") => {
            Value::String("*Duration*\nDURATION".into())
        }
        Value::String(text) => {
            let mut text = text.clone();
            for (word, id) in ids {
                let title = format!("{}{}", word[..1].to_uppercase(), &word[1..]);
                let placeholder = format!("{}_ID", word.to_uppercase());
                for (before, after) in [
                    (format!("{word} {id}"), format!("{word} {placeholder}")),
                    (format!("/{word}/{id}"), format!("/{word}/{placeholder}")),
                    (
                        format!("*{title}*\n{id}"),
                        format!("*{title}*\n{placeholder}"),
                    ),
                    (format!("|{id}>"), format!("|{placeholder}>")),
                ] {
                    text = text.replace(&before, &after);
                }
            }
            Value::String(text)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| normalise(v, ids)).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), normalise(v, ids)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Compares with `tests/golden/<name>`; `HERALD_UPDATE_GOLDEN=1` rewrites the file instead.
pub fn assert_golden(name: &str, actual: &Value) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let pretty = format!("{}\n", serde_json::to_string_pretty(actual).unwrap());
    if std::env::var("HERALD_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &pretty).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{path} is missing; run with HERALD_UPDATE_GOLDEN=1"));
    assert!(
        expected == pretty,
        "{name} differs from its golden file:\n{pretty}"
    );
}

fn find<'a>(messages: &'a [Value], needle: &str) -> &'a Value {
    messages
        .iter()
        .find(|m| m["text"].as_str().is_some_and(|t| t.contains(needle)))
        .unwrap_or_else(|| panic!("no message with {needle:?} in {messages:#?}"))
}

async fn slack_bodies_for_build_and_task_events_match_their_golden_files(app: TestApp) {
    let slack = FakeSlack::start().await;
    let world = World::new(&app, "acme").await;
    // The stored selection is ignored for SLACK: the message always has what it needs.
    world
        .endpoint(
            &app,
            &slack.url(),
            json!({ "payloadFormat": "SLACK", "payloadQuery": "{ build(id: $buildId) { id } }" }),
        )
        .await;
    let build = world.build(&app).await;
    world.build_status(&app, &build, "EXECUTING").await;
    let task = world.task(&app, &build, "unit tests").await;
    world.task_status(&app, &task, "EXECUTING").await;
    world.task_status(&app, &task, "COMPLETED").await;
    world.build_status(&app, &build, "FAILED").await;

    let messages = slack.wait_for(6).await;
    assert_eq!(slack.requests(), 6, "Slack refused a message");
    let ids = [("build", build.as_str()), ("task", task.as_str())];
    assert_golden(
        "slack_build_failed.json",
        &normalise(find(&messages, "is FAILED"), &ids),
    );
    assert_golden(
        "slack_task_completed.json",
        &normalise(find(&messages, "is COMPLETED"), &ids),
    );
}

async fn a_status_filter_lets_only_those_statuses_through_but_not_the_ping(app: TestApp) {
    let slack = FakeSlack::start().await;
    let world = World::new(&app, "acme").await;
    let endpoint = world
        .endpoint(
            &app,
            &slack.url(),
            json!({ "payloadFormat": "SLACK", "statusFilter": ["failed", "ERRORED", "FAILED"] }),
        )
        .await;
    let data = app
        .ok(
            &world.admin,
            "query($id: ID!) { webhookEndpoint(id: $id) { payloadFormat statusFilter } }",
            json!({ "id": endpoint }),
        )
        .await;
    assert_eq!(
        data["webhookEndpoint"],
        json!({ "payloadFormat": "SLACK", "statusFilter": ["FAILED", "ERRORED"] })
    );

    app.ok(
        &world.admin,
        "mutation($id: ID!) { sendTestWebHook(input: {endpointId: $id}) { delivery { id } } }",
        json!({ "id": endpoint }),
    )
    .await;
    let ping = slack.wait_for(1).await;
    assert!(
        ping[0]["text"]
            .as_str()
            .unwrap()
            .contains("Herald is connected")
    );

    let build = world.build(&app).await;
    world.build_status(&app, &build, "EXECUTING").await;
    let task = world.task(&app, &build, "lint").await;
    world.task_status(&app, &task, "FAILED").await;
    world.build_status(&app, &build, "COMPLETED").await;
    let messages = slack.wait_for(2).await;
    assert!(messages[1]["text"].as_str().unwrap().contains("task lint"));
    assert!(messages[1]["text"].as_str().unwrap().contains("is FAILED"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slack.accepted().len(), 2, "a filtered event was sent");
    let log = app
        .ok(
            &world.admin,
            "{ viewer { webhookDeliveries(first: 10) { edges { node { event } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        log["viewer"]["webhookDeliveries"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "filtered events create no delivery"
    );
}

async fn an_unknown_status_in_a_filter_is_refused(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let response = app
        .gql(
            Some(&world.admin),
            "mutation($org: ID!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: \"http://127.0.0.1:9/\", statusFilter: [\"BROKEN\"]}) { endpoint { id } } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(code(&response), "BAD_USER_INPUT");
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("BROKEN")
    );
}

async fn other_endpoints_are_not_affected_by_a_slack_endpoints_filter(app: TestApp) {
    let slack = FakeSlack::start().await;
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    world
        .endpoint(
            &app,
            &slack.url(),
            json!({ "payloadFormat": "SLACK", "statusFilter": ["ERRORED"] }),
        )
        .await;
    world.endpoint(&app, &receiver.url("/all"), json!({})).await;
    let build = world.build(&app).await;
    world.build_status(&app, &build, "ERRORED").await;
    receiver.wait_for(2).await;
    let messages = slack.wait_for(1).await;
    assert!(messages[0]["text"].as_str().unwrap().contains(":boom:"));
}

crate::on_both_backends!(
    a_status_filter_lets_only_those_statuses_through_but_not_the_ping,
    an_unknown_status_in_a_filter_is_refused,
    other_endpoints_are_not_affected_by_a_slack_endpoints_filter,
);

/// Golden files include the links, so these tests configure a public URL.
async fn with_public_url(backend: Backend) -> Option<TestApp> {
    TestApp::start_with(backend, |config| {
        config.public_url = Some("https://ci.example.com".into());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_golden_files_on_sqlite() {
    let app = with_public_url(Backend::Sqlite).await.unwrap();
    slack_bodies_for_build_and_task_events_match_their_golden_files(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_golden_files_on_postgres() {
    match with_public_url(Backend::Postgres).await {
        Some(app) => slack_bodies_for_build_and_task_events_match_their_golden_files(app).await,
        None => eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set"),
    }
}
