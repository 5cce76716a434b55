//! A canary secret and password, searched for in every form they could leak in: GraphQL
//! responses, logs, stored deliveries and outbound requests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Backend, Receiver, Reply, TestApp, World};

/// Log output of the whole test binary, captured once.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buffer
    })
    .clone()
}

/// Every form a secret could leak in.
fn forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    vec![
        secret.to_owned(),
        hex::encode(secret),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
    ]
}

fn assert_absent(haystack: &str, secret: &str, place: &str) {
    for form in forms(secret) {
        assert!(
            !haystack.contains(&form),
            "the secret leaked into {place} as {form:?}"
        );
    }
}

pub(super) async fn a_canary_secret_appears_nowhere() {
    let logs = captured_logs();
    let secret = "cnry7SIGNq9xK2vLw";
    let password = "cnry4PASSm8zR1tYe";
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.default_reply(Reply::status(500));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = TestApp::start_with(Backend::Sqlite, |config| {
        config.retry_schedule = herald::domain::RetrySchedule::parse("50ms").unwrap();
    })
    .await
    .unwrap();
    let world = World::new(&app, "acme").await;
    let mut responses = Vec::new();
    for url in [
        format!("http://bot:{password}@{}/ok", ok.addr),
        format!("http://bot:{password}@{}/fail", failing.addr),
        format!("http://bot:{password}@{closed}/closed"),
    ] {
        world
            .endpoint(&app, &url, json!({ "secretToken": secret }))
            .await;
    }
    // Failed mutations that carry the secret in their variables.
    let bad = [
        json!({ "ownerUid": world.org, "webhookURL": format!("ftp://bot:{password}@example.com/"), "secretToken": secret }),
        json!({ "ownerUid": world.org, "webhookURL": format!("http://bot:{password}@{}/ok", ok.addr), "secretToken": secret }),
        json!({ "ownerUid": world.org, "webhookURL": "https://h.example.com/", "secretToken": secret, "payloadQuery": "build { nope" }),
    ];
    for input in bad {
        let response = app.gql(Some(&world.admin), "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id } } }", json!({ "input": input })).await;
        assert!(response.get("errors").is_some());
        responses.push(response.to_string());
    }
    let build = world.build(&app).await;
    let task = world.task(&app, &build, "test").await;
    world.task_status(&app, &task, "FAILED").await;
    ok.wait_for(3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let data = app
            .ok(
                &world.admin,
                "{ viewer { webhookDeliveries(first: 50) { edges { node { state } } } } }",
                json!({}),
            )
            .await;
        let states: Vec<Value> = data["viewer"]["webhookDeliveries"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["state"].clone())
            .collect();
        if states.len() == 9 && states.iter().all(|s| s == "FAILED" || s == "DELIVERED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries did not finish: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let everything = app
        .ok(
            &world.admin,
            "{ viewer { webhookSettings { endpoints { id webhookURL maskedSecretToken events payloadQuery payloadFormat enabled insecureSsl
                lastDelivery { id payload { data } response { data } } } }
              webhookDeliveries(first: 50) { edges { node { id state payload { event action data } response { status data }
                attemptLog { status error responseHeaders responseData } } } } } }",
            json!({}),
        )
        .await;
    responses.push(everything.to_string());
    let preview = app
        .ok(&world.admin, "mutation($org: ID!, $build: ID!) { previewWebHookPayload(input: {ownerUid: $org, buildId: $build}) { body } }", json!({ "org": world.org, "build": build }))
        .await;
    responses.push(preview.to_string());

    let responses = responses.join("\n");
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let org: i64 = world.org.parse().unwrap();
    let page = herald::store::Page::new(Some(50), None).unwrap();
    let mut stored = String::new();
    for row in herald::store::deliveries::list(&app.state.db, org, None, None, page)
        .await
        .unwrap()
    {
        stored.push_str(&format!("{row:?}"));
        for attempt in herald::store::deliveries::attempts(&app.state.db, row.id)
            .await
            .unwrap()
        {
            stored.push_str(&format!("{attempt:?}"));
        }
    }
    let mut outbound = String::new();
    let mut outbound_without_auth = String::new();
    for received in ok.received().into_iter().chain(failing.received()) {
        for (name, value) in &received.headers {
            let line = format!("{name}: {}\n", value.to_str().unwrap_or(""));
            outbound.push_str(&line);
            if name != "authorization" {
                outbound_without_auth.push_str(&line);
            }
        }
        outbound.push_str(&String::from_utf8_lossy(&received.body));
    }
    assert!(!outbound.is_empty() && !stored.is_empty() && !logs.is_empty());
    for (place, text) in [
        ("GraphQL responses", &responses),
        ("logs", &logs),
        ("stored deliveries and attempts", &stored),
    ] {
        assert_absent(text, secret, place);
        assert_absent(text, password, place);
    }
    assert_absent(&outbound, secret, "outbound requests");
    // The password is meant to travel, as HTTP Basic authentication, and nowhere else.
    assert_absent(&outbound_without_auth, password, "outbound requests");
}
