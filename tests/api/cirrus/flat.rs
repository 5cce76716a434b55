//! FLAT bodies as Cirrus CI's receivers read them: the keys and JSON types of the bodies Cirrus
//! sends (`tests/golden/cirrus/`), decoded by strict typed structs modelled on a Go receiver,
//! and a ping of the same shape.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::{Receiver, TestApp, World};

fn golden(name: &str) -> Value {
    let path = format!("{}/tests/golden/cirrus/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every key of `reference` is in `actual`, with the same JSON type (a 64-bit integer where the
/// reference has one), at any depth; the first element of an array stands for all of them.
fn assert_same_shape(reference: &Value, actual: &Value, path: &str) {
    match (reference, actual) {
        (Value::Object(expected), Value::Object(got)) => {
            for (key, value) in expected {
                let at = format!("{path}.{key}");
                let got = got
                    .get(key)
                    .unwrap_or_else(|| panic!("{at} is missing in {actual:#}"));
                assert_same_shape(value, got, &at);
            }
        }
        (Value::Array(expected), Value::Array(got)) => {
            if let (Some(expected), Some(got)) = (expected.first(), got.first()) {
                assert_same_shape(expected, got, &format!("{path}[0]"));
            }
        }
        (Value::Number(expected), Value::Number(got)) => {
            assert_eq!(
                expected.is_i64(),
                got.is_i64(),
                "{path}: {got} is not a number of the same kind as {expected}"
            );
        }
        (Value::String(_), Value::String(_)) | (Value::Bool(_), Value::Bool(_)) => {}
        (Value::Null, _) => {}
        _ => panic!("{path}: Cirrus sends {reference}, Herald sent {actual}"),
    }
}

/// A build (initialized by `octo`) with a task, then the build's move to EXECUTING: the FLAT
/// deliveries of the build's update and of the task's creation, in that order.
async fn build_and_task_events(
    app: &TestApp,
    world: &World,
    receiver: &Receiver,
) -> (Value, Value) {
    let build = app
        .ok(
            &world.write,
            "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"1a7a425b\", changeMessageTitle: \"Periodic update (#7)\", initializer: \"octo\"}) { build { id } } }",
            json!({ "repo": world.repository }),
        )
        .await["createBuild"]["build"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.ok(
        &world.write,
        "mutation($build: ID!) { createTask(input: {buildId: $build, name: \"Lint (cargo fmt)\", nameAlias: \"lint\", localGroupId: 0, instanceType: \"CommunityContainer\"}) { task { id } } }",
        json!({ "build": build }),
    )
    .await;
    world.build_status(app, &build, "EXECUTING").await;
    let received = receiver.wait_for(3).await;
    let events: Vec<(String, Value)> = received
        .iter()
        .map(|r| (r.header("x-cirrus-event").unwrap().to_owned(), r.json()))
        .collect();
    let update = events
        .iter()
        .find(|(event, body)| event == "build" && body["action"] == "updated")
        .unwrap();
    let task = events.iter().find(|(event, _)| event == "task").unwrap();
    (update.1.clone(), task.1.clone())
}

pub(super) async fn flat_bodies_have_the_keys_and_types_of_cirrus_bodies(app: TestApp) {
    let receiver = Receiver::start().await;
    let audits = Receiver::start().await;
    let world = World::new(&app, "octo").await;
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
            &audits.url("/audit"),
            json!({ "payloadFormat": "FLAT", "events": ["AUDIT_EVENT"] }),
        )
        .await;
    let (build, task) = build_and_task_events(&app, &world, &receiver).await;
    assert_same_shape(&golden("build.json"), &build, "build event");
    assert_same_shape(&golden("task.json"), &task, "task event");
    assert_eq!(build["build"]["user"]["username"], "octo");
    assert_eq!(task["task"]["localGroupId"], 0);
    assert_eq!(task["task"]["instanceType"], "CommunityContainer");

    let audit = audits.wait_for(1).await[0].clone();
    assert_eq!(audit.header("x-cirrus-event"), Some("audit_event"));
    assert_same_shape(&golden("audit_event.json"), &audit.json(), "audit event");
}

/// A Go receiver's view of a FLAT body: `int64` ids and `*int64` times, as Cirrus Labs'
/// forwarder and GetDX path decode them. Go fills a missing field with its zero value and
/// fails on a wrong type; these structs fail on both, so every field is checked as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoRepository {
    id: i64,
    owner: String,
    name: String,
    is_private: bool,
}

#[derive(Deserialize)]
struct GoUser {
    id: i64,
    username: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoBuild {
    id: i64,
    branch: String,
    pull_request: Option<i64>,
    pull_request_draft: Option<bool>,
    duration_in_seconds: Option<i64>,
    change_id_in_repo: String,
    change_message_title: String,
    change_timestamp: Option<i64>,
    status: String,
    user: GoUser,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoNotification {
    level: String,
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoTask {
    id: i64,
    name: String,
    name_alias: Option<String>,
    local_group_id: i64,
    status: String,
    status_timestamp: Option<i64>,
    creation_timestamp: Option<i64>,
    duration_in_seconds: Option<i64>,
    unique_labels: Vec<String>,
    automatic_re_run: bool,
    automatically_re_runnable: bool,
    manual_rerun_count: i64,
    instance_type: String,
    notifications: Vec<GoNotification>,
}

#[derive(Deserialize)]
struct GoBuildEvent {
    action: String,
    old_status: Option<String>,
    repository: GoRepository,
    build: GoBuild,
    task: Empty,
}

#[derive(Deserialize)]
struct GoTaskEvent {
    action: String,
    repository: GoRepository,
    build: GoBuild,
    task: GoTask,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoAuditEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: Option<i64>,
    data: String,
    actor: GoUser,
    actor_location_ip: Option<String>,
    action: String,
    repository: GoRepository,
    build: Empty,
    task: Empty,
}

pub(super) async fn flat_bodies_decode_into_a_go_receivers_types(app: TestApp) {
    let receiver = Receiver::start().await;
    let audits = Receiver::start().await;
    let world = World::new(&app, "octo").await;
    world
        .endpoint(
            &app,
            &receiver.url("/flat"),
            json!({ "payloadFormat": "FLAT" }),
        )
        .await;
    let (build, task) = build_and_task_events(&app, &world, &receiver).await;

    let build: GoBuildEvent = serde_json::from_value(build).unwrap();
    assert_eq!(build.action, "updated");
    assert_eq!(build.old_status.as_deref(), Some("CREATED"));
    assert_eq!(build.repository.id.to_string(), world.repository);
    assert_eq!(
        (
            build.repository.owner.as_str(),
            build.repository.name.as_str()
        ),
        ("octo", "app")
    );
    assert!(!build.repository.is_private);
    assert_eq!(build.build.status, "EXECUTING");
    assert_eq!(build.build.branch, "main");
    assert_eq!(build.build.change_id_in_repo, "1a7a425b");
    assert_eq!(build.build.change_message_title, "Periodic update (#7)");
    assert!(build.build.change_timestamp.unwrap() > 0);
    assert_eq!(build.build.duration_in_seconds, Some(0));
    assert_eq!(
        (build.build.pull_request, build.build.pull_request_draft),
        (None, None)
    );
    assert_eq!(build.build.user.username, "octo");
    assert!(build.build.user.id > 0);
    let _ = build.task;

    let task: GoTaskEvent = serde_json::from_value(task).unwrap();
    assert_eq!(task.action, "created");
    assert_eq!(task.build.id, build.build.id);
    assert_eq!(task.repository.id, build.repository.id);
    assert_eq!(task.task.name, "Lint (cargo fmt)");
    assert_eq!(task.task.name_alias.as_deref(), Some("lint"));
    assert_eq!(task.task.local_group_id, 0);
    assert_eq!(task.task.instance_type, "CommunityContainer");
    assert_eq!(task.task.status, "CREATED");
    assert!(task.task.id > 0 && task.task.creation_timestamp.unwrap() > 0);
    assert!(task.task.status_timestamp.is_some() && task.task.duration_in_seconds.is_some());
    assert!(task.task.unique_labels.is_empty() && task.task.notifications.is_empty());
    assert!(!task.task.automatic_re_run && !task.task.automatically_re_runnable);
    assert_eq!(task.task.manual_rerun_count, 0);
    for notification in &task.task.notifications {
        assert!(!notification.level.is_empty() && !notification.message.is_empty());
    }

    // An audit event that concerns a repository carries it whole.
    world
        .endpoint(
            &app,
            &audits.url("/audit"),
            json!({ "payloadFormat": "FLAT", "events": ["AUDIT_EVENT"] }),
        )
        .await;
    world
        .build_status(&app, &build.build.id.to_string(), "FAILED")
        .await;
    let received = audits.wait_for(2).await;
    let update = received
        .iter()
        .find(|r| String::from_utf8_lossy(&r.body).contains("UpdateBuildStatus"))
        .unwrap();
    let audit: GoAuditEvent = serde_json::from_value(update.json()).unwrap();
    assert_eq!(audit.kind, "graphql.mutation");
    assert_eq!(audit.action, "created");
    assert!(uuid::Uuid::parse_str(&audit.id).is_ok(), "{}", audit.id);
    assert!(audit.timestamp.unwrap() > 0);
    assert_eq!(audit.actor.username, "test", "the token's subject");
    assert!(audit.actor.id > 0);
    assert_eq!(audit.actor_location_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(audit.repository.id, build.repository.id);
    let data: Value = serde_json::from_str(&audit.data).unwrap();
    assert_eq!(data["mutationName"], "UpdateBuildStatus");
    assert_eq!(data["status"], "FAILED");
    let (_, _) = (audit.build, audit.task);
}

pub(super) async fn a_flat_ping_has_the_flat_shape(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let endpoint = world
        .endpoint(
            &app,
            &receiver.url("/flat"),
            json!({ "payloadFormat": "FLAT" }),
        )
        .await;
    app.ok(
        &world.admin,
        "mutation($id: ID!) { sendTestWebHook(input: {endpointId: $id}) { delivery { id } } }",
        json!({ "id": endpoint }),
    )
    .await;
    let ping = &receiver.wait_for(1).await[0];
    assert_eq!(ping.header("x-cirrus-event"), Some("ping"));
    let body = ping.json();
    assert_eq!(body["action"], "ping");
    for key in ["repository", "build", "task"] {
        assert_eq!(body[key], json!({}), "{key} in {body}");
    }
    assert_eq!(body["endpointId"].as_i64().unwrap().to_string(), endpoint);
    assert_eq!(body["ownerUid"].as_i64().unwrap().to_string(), world.org);
}
