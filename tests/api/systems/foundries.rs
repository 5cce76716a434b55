//! Foundries.io's build body, produced by a RAW selection with aliases and signed as jobserv
//! signs it.

use serde_json::{Value, json};

use super::verify;
use crate::support::{Backend, Receiver, TestApp, World};

/// Jobserv's body, field for field, from a selection: aliases give its names, `webUrl` its
/// links and the `…Iso` fields its timestamps.
const FOUNDRIES_SELECTION: &str = "query Foundries($buildId: ID!) {
  build(id: $buildId) {
    build_id: id
    url: webUrl
    status
    runs: tasks {
      name
      url: webUrl
      status
      log_url: webUrl
      web_url: webUrl
      created: creationTimestampIso
      completed: finalStatusTimestampIso
      host_tag: instanceType
      tests: webUrl
    }
    web_url: webUrl
    trigger_name: branch
    created: buildCreatedTimestampIso
    completed: finalStatusTimestampIso
  }
}";

/// `actual` has exactly the keys of `reference`, at every depth, each with the same JSON type
/// (an integer where it has one); every element of an array has the shape of its first.
fn assert_key_for_key(reference: &Value, actual: &Value, path: &str) {
    match (reference, actual) {
        (Value::Object(expected), Value::Object(got)) => {
            let want: Vec<&String> = expected.keys().collect();
            let have: Vec<&String> = got.keys().collect();
            assert_eq!(want, have, "{path}: the keys differ");
            for (key, value) in expected {
                assert_key_for_key(value, &got[key], &format!("{path}.{key}"));
            }
        }
        (Value::Array(expected), Value::Array(got)) => {
            let shape = expected.first().expect("the reference has an element");
            for (i, item) in got.iter().enumerate() {
                assert_key_for_key(shape, item, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(expected), Value::Number(got)) => {
            assert_eq!(
                expected.is_i64(),
                got.is_i64(),
                "{path}: {got} vs {expected}"
            );
        }
        (Value::String(_), Value::String(_)) | (Value::Bool(_), Value::Bool(_)) => {}
        _ => panic!("{path}: Foundries sends {reference}, Herald sent {actual}"),
    }
}

pub(super) async fn a_raw_selection_reproduces_the_foundries_build_body(backend: Backend) {
    let Some(app) = TestApp::start_with(backend, |config| {
        config.public_url = Some("https://herald.example/".into());
    })
    .await
    else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let receiver = Receiver::start().await;
    let world = World::new(&app, "andy-corp").await;
    world
        .endpoint(
            &app,
            &receiver.url("/jobserv"),
            json!({
                "secretToken": "webhook-docs-example-value",
                "signatureStyle": "JOBSERV",
                "payloadFormat": "RAW",
                "payloadQuery": FOUNDRIES_SELECTION,
                "events": ["BUILD"],
                "statusFilter": ["COMPLETED"],
            }),
        )
        .await;
    let build = world.build(&app).await;
    let mut tasks = Vec::new();
    for (name, host) in [
        ("build-amd64-partner", "amd64-partner"),
        ("build-arm64", "arm64"),
        ("build-armhf", "armhf"),
    ] {
        let data = app
            .ok(
                &world.write,
                "mutation($build: ID!, $name: String!, $host: String!) { createTask(input: {buildId: $build, name: $name, instanceType: $host}) { task { id } } }",
                json!({ "build": build, "name": name, "host": host }),
            )
            .await;
        tasks.push(
            data["createTask"]["task"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for task in &tasks {
        world.task_status(&app, task, "COMPLETED").await;
    }
    world.build_status(&app, &build, "COMPLETED").await;
    let delivery = receiver.wait_for(1).await[0].clone();
    assert!(verify::jobserv(&delivery, "webhook-docs-example-value"));
    let body = delivery.json();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/golden/foundries/build.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    assert_key_for_key(&reference, &body, "body");
    assert_eq!(body["build_id"], json!(build.parse::<i64>().unwrap()));
    assert_eq!(body["runs"].as_array().unwrap().len(), 3);
    assert_eq!(body["runs"][0]["host_tag"], "amd64-partner");
    assert_eq!(
        body["web_url"],
        format!("https://herald.example/build/{build}")
    );
    assert_eq!(
        body["runs"][2]["url"],
        format!("https://herald.example/task/{}", tasks[2])
    );
    let completed = body["completed"].as_str().unwrap();
    assert!(
        completed.len() == 25 && completed.ends_with("+00:00") && completed.as_bytes()[10] == b'T',
        "{completed}"
    );
}
