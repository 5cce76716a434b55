//! `herald bridge slack`: signed deliveries in (Herald's or Cirrus CI's, FLAT or DATA), Slack
//! messages out, with filtering, de-duplication and Slack's 429 honoured.

use std::time::{Duration, Instant};

use herald::signing;
use herald::tools::bridge::{self, BridgeOptions, Destination};
use serde_json::json;

use crate::fake_slack::FakeSlack;
use crate::support::{Receiver, TestApp, World};

const SECRET: &str = "bridge-secret";

/// Starts a bridge on port 0 in front of `slack`.
async fn start_bridge(slack: &FakeSlack, only_status: &[&str]) -> String {
    start_bridge_with(slack, only_status, false).await
}

/// Starts a bridge on port 0 in front of `slack`, requiring fresh Standard Webhooks signatures
/// when `require_timestamp`.
async fn start_bridge_with(
    slack: &FakeSlack,
    only_status: &[&str],
    require_timestamp: bool,
) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = BridgeOptions {
        secret: SECRET.into(),
        destination: Destination::Webhook(slack.url().parse().unwrap()),
        only_status: only_status.iter().map(|s| s.to_string()).collect(),
        public_url: Some("https://cirrus-ci.com".into()),
        tolerance: Duration::from_secs(300),
        max_wait: Duration::from_secs(8),
        require_timestamp,
        use_proxy_env: false,
    };
    let router = bridge::router(options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/")
}

/// A body as Cirrus CI sends it: FLAT, numeric ids, `"task": {}` for build events.
fn cirrus_build_body(delivery_status: &str) -> String {
    json!({
        "action": "updated",
        "old_status": "EXECUTING",
        "repository": { "id": 5_012_345_678_i64, "owner": "acme", "name": "app", "isPrivate": false },
        "build": { "id": 6_012_345_678_i64, "branch": "main", "status": delivery_status, "durationInSeconds": 95, "changeIdInRepo": "abc123" },
        "task": {}
    })
    .to_string()
}

/// Sends a failed build's delivery, signed with [`SECRET`], as Cirrus CI would.
async fn failed_build(url: &str, delivery: &str) -> reqwest::Result<reqwest::Response> {
    let body = cirrus_build_body("FAILED");
    reqwest::Client::new()
        .post(url)
        .header("x-cirrus-event", "build")
        .header("x-cirrus-delivery", delivery)
        .header(
            "x-cirrus-signature",
            signing::cirrus_signature(SECRET, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
}

/// Sends `body` as Cirrus CI would: only `X-Cirrus-Signature`.
async fn send_cirrus(url: &str, delivery: &str, body: &str, secret: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-cirrus-event", "build")
        .header("x-cirrus-delivery", delivery)
        .header(
            "x-cirrus-signature",
            signing::cirrus_signature(secret, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Slack's URL carries its token: a Slack that cannot be reached is logged (and answered) without
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_slack_is_logged_without_its_url() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = crate::support::free_port();
    let mut bridge = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["bridge", "slack", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--max-wait", "1s"])
        .env("HERALD_BRIDGE_SECRET", SECRET)
        .env(
            "SLACK_WEBHOOK_URL",
            "http://127.0.0.1:1/services/T0/B0/CANARYTOKEN",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, answer) = loop {
        let sent = failed_build(&url, "d-unreachable").await;
        if let Ok(response) = sent {
            let status = response.status().as_u16();
            break (status, response.text().await.unwrap());
        }
        assert!(Instant::now() < deadline, "the bridge did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "{answer}");
    let _ = bridge.kill();
    let output = bridge.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Slack did not take the message"),
        "{stderr}"
    );
    assert!(!stderr.contains("CANARYTOKEN"), "{stderr}");
    assert!(!answer.contains("CANARYTOKEN"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_refuses_a_delivery_signed_with_another_secret() {
    let slack = FakeSlack::start().await;
    let url = start_bridge(&slack, &[]).await;
    let (status, _) = send_cirrus(&url, "d-1", &cirrus_build_body("FAILED"), "wrong").await;
    assert_eq!(status, 400);
    let unsigned = reqwest::Client::new()
        .post(&url)
        .body(cirrus_build_body("FAILED"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 400);
    assert_eq!(slack.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_filters_forwards_once_and_waits_out_a_429() {
    let slack = FakeSlack::start().await;
    let url = start_bridge(&slack, &["FAILED", "ERRORED"]).await;

    let (status, text) = send_cirrus(&url, "d-ok", &cirrus_build_body("COMPLETED"), SECRET).await;
    assert_eq!(
        (status, text.trim()),
        (200, "filtered out by --only-status")
    );
    assert_eq!(slack.requests(), 0);

    slack.script([(429, Some("1"))]);
    let started = Instant::now();
    let (status, text) = send_cirrus(&url, "d-failed", &cirrus_build_body("FAILED"), SECRET).await;
    assert_eq!((status, text.trim()), (200, "forwarded"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was not honoured"
    );
    assert_eq!(slack.requests(), 2);
    let message = &slack.accepted()[0];
    assert_eq!(
        message["text"],
        ":x: acme/app: build 6012345678 on main is FAILED (was EXECUTING)"
    );
    assert_eq!(
        message["blocks"][3]["elements"][0]["url"],
        "https://cirrus-ci.com/build/6012345678"
    );

    // At-least-once delivery: the same delivery id again is not posted twice.
    let (status, _) = send_cirrus(&url, "d-failed", &cirrus_build_body("FAILED"), SECRET).await;
    assert_eq!(status, 200);
    assert_eq!(slack.requests(), 2);
    // X-Cirrus-Delivery is not signed: the same signed body under another id is a repeat too.
    let (status, text) =
        send_cirrus(&url, "d-replayed", &cirrus_build_body("FAILED"), SECRET).await;
    assert_eq!((status, text.trim()), (200, "already forwarded"));
    assert_eq!(slack.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_busy_for_too_long_hands_the_retry_back_to_the_sender() {
    let slack = FakeSlack::start().await;
    let url = start_bridge(&slack, &[]).await;
    slack.script([(429, Some("30"))]);
    let response = failed_build(&url, "d-busy").await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "30");
    assert!(slack.accepted().is_empty());
}

/// Sends a failed build's delivery signed the Standard Webhooks way, at `timestamp` (seconds),
/// with `secret`.
async fn send_standard(url: &str, delivery: &str, timestamp: i64, secret: &str) -> (u16, String) {
    let body = cirrus_build_body("FAILED");
    let response = reqwest::Client::new()
        .post(url)
        .header("x-cirrus-event", "build")
        .header("webhook-id", delivery)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signing::standard_signature(secret, delivery, timestamp, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_that_requires_timestamps_refuses_stale_and_unsigned_deliveries() {
    let slack = FakeSlack::start().await;
    let url = start_bridge_with(&slack, &[], true).await;
    let now = herald::tools::receive::now_secs();

    // X-Cirrus-Signature alone carries no time: a captured delivery could be replayed forever.
    let (status, text) = send_cirrus(&url, "d-cirrus", &cirrus_build_body("FAILED"), SECRET).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("webhook-timestamp within 5m"), "{text}");
    // Well outside the window, so that the clock moving on between sends changes nothing.
    let (status, _) = send_standard(&url, "d-stale", now - 400, SECRET).await;
    assert_eq!(status, 400, "a timestamp outside the window");
    let (status, _) = send_standard(&url, "d-future", now + 400, SECRET).await;
    assert_eq!(status, 400, "a timestamp ahead of the window");
    let (status, _) = send_standard(&url, "d-forged", now, "another-secret").await;
    assert_eq!(status, 400, "a signature that does not verify");
    assert_eq!(slack.requests(), 0);

    let now = herald::tools::receive::now_secs();
    let (status, text) = send_standard(&url, "d-fresh", now, SECRET).await;
    assert_eq!((status, text.trim()), (200, "forwarded"));
    assert_eq!(slack.requests(), 1);
}

/// Runs `herald bridge slack` with these arguments and environment; the child and its URL.
pub(crate) fn spawn_bridge(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, String) {
    let port = crate::support::free_port();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args(["bridge", "slack", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--max-wait", "1s"])
        .args(args)
        .env("HERALD_BRIDGE_SECRET", SECRET);
    for name in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "SLACK_WEBHOOK_URL",
        "SLACK_BOT_TOKEN",
    ] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (child, format!("http://127.0.0.1:{port}/"))
}

/// Sends a failed build to a bridge that is starting, until it answers.
pub(crate) async fn send_when_up(url: &str, delivery: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(response) = failed_build(url, delivery).await {
            return response.status().as_u16();
        }
        assert!(Instant::now() < deadline, "the bridge did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A proxy variable set for other programs does not see Slack's URL (its token) unless the
/// bridge is told to use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_ignores_proxy_variables_unless_told_to_use_them() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = FakeSlack::start().await;
    // A recording receiver stands for the proxy: a proxied request arrives at it in full.
    let proxy = Receiver::start().await;
    let proxy_url = format!("http://{}", proxy.addr);
    let env = [
        ("SLACK_WEBHOOK_URL", slack.url()),
        ("HTTP_PROXY", proxy_url.clone()),
        ("http_proxy", proxy_url.clone()),
        ("ALL_PROXY", proxy_url.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();

    let (mut direct, url) = spawn_bridge(&[], &env);
    assert_eq!(send_when_up(&url, "d-direct").await, 200);
    let _ = direct.kill();
    let _ = direct.wait();
    assert_eq!(slack.requests(), 1, "Slack got the message directly");
    assert!(proxy.received().is_empty(), "the proxy saw Slack's URL");

    let (mut proxied, url) = spawn_bridge(&["--use-proxy-env"], &env);
    assert_eq!(send_when_up(&url, "d-proxied").await, 200);
    let _ = proxied.kill();
    let _ = proxied.wait();
    assert_eq!(
        proxy.received().len(),
        1,
        "--use-proxy-env goes through the proxy"
    );
    assert_eq!(slack.requests(), 1);
}

/// A malformed SLACK_WEBHOOK_URL is bad usage, named without its value (Slack's token).
#[test]
fn a_malformed_slack_url_is_refused_without_being_echoed() {
    for malformed in [
        "hooks.slack.com/services/T0/B0/CANARYTOKEN",
        "htps:/hooks.slack.com/services/T0/B0/CANARYTOKEN",
        "https://hooks slack.com/services/T0/B0/CANARYTOKEN",
        "https://:443/services/T0/B0/CANARYTOKEN",
    ] {
        for (args, env) in [
            (vec![], vec![("SLACK_WEBHOOK_URL", malformed)]),
            (vec!["--slack-url", malformed], vec![]),
        ] {
            let output = finish(spawn_bridge(&args, &env).0);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{malformed}: {stderr}");
            assert!(stderr.contains("SLACK_WEBHOOK_URL"), "{stderr}");
            assert!(!stderr.contains("CANARYTOKEN"), "{stderr}");
        }
    }
    let (child, _) = spawn_bridge(
        &["--require-timestamp", "--tolerance", "0s"],
        &[(
            "SLACK_WEBHOOK_URL",
            "https://hooks.slack.com/services/T0/B0/X",
        )],
    );
    let output = finish(child);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

/// The output of a child that should exit at once; killed (and failing the test) if it still
/// runs after ten seconds.
pub(crate) fn finish(mut child: std::process::Child) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the bridge started instead of refusing its arguments");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

async fn herald_deliveries_reach_slack_through_the_bridge(app: TestApp) {
    let slack = FakeSlack::start().await;
    let bridge = start_bridge(&slack, &["FAILED"]).await;
    let world = World::new(&app, "acme").await;
    world
        .endpoint(
            &app,
            &bridge,
            json!({ "secretToken": SECRET, "payloadFormat": "DATA" }),
        )
        .await;
    let build = world.build(&app).await;
    let task = world.task(&app, &build, "unit tests").await;
    world.task_status(&app, &task, "EXECUTING").await;
    world.task_status(&app, &task, "FAILED").await;
    world.build_status(&app, &build, "FAILED").await;
    let messages = slack.wait_for(2).await;
    assert_eq!(
        messages[0]["text"],
        format!(":x: acme/app: task unit tests (build {build} on main) is FAILED (was EXECUTING)")
    );
    assert_eq!(
        messages[1]["text"],
        format!(":x: acme/app: build {build} on main is FAILED (was CREATED)")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(slack.accepted().len(), 2);
}

crate::on_both_backends!(herald_deliveries_reach_slack_through_the_bridge);
