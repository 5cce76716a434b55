//! `herald bridge slack --bot-token`: one Slack message per build, edited in place, and one
//! reply per task in its thread, through a fake Slack Web API; rate limits, coalescing, deleted
//! messages, refusals, and the token kept out of sight.

use std::time::{Duration, Instant};

use herald::signing;
use herald::tools::bridge::{self, AppOptions, BotToken, BridgeOptions, Destination};
use serde_json::{Value, json};

use crate::fake_slack_api::{CHANNEL_NAME, FakeSlackApi, TOKEN};
use crate::support::{Backend, TestApp, World};

pub(crate) const SECRET: &str = "bridge-secret";

/// Starts a bridge in app mode on port 0 in front of `slack`, posting to `channel`.
async fn start_app_bridge(
    slack: &FakeSlackApi,
    channel: &str,
    interval: Duration,
    max_wait: Duration,
) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = BridgeOptions {
        secret: SECRET.into(),
        destination: Destination::App(AppOptions {
            token: BotToken::new(TOKEN).unwrap(),
            channel: channel.into(),
            api: slack.url().parse().unwrap(),
            channel_interval: interval,
        }),
        only_status: Vec::new(),
        public_url: Some("https://cirrus-ci.com".into()),
        tolerance: Duration::from_secs(300),
        max_wait,
        require_timestamp: false,
        use_proxy_env: false,
    };
    let router = bridge::router(options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/")
}

/// A DATA body of build 42 of acme/app at `status`, with `task` (null for build events).
pub(crate) fn body(status: &str, task: Value) -> String {
    json!({
        "action": "updated",
        "data": {
            "repository": { "id": "5", "owner": "acme", "name": "app" },
            "build": { "id": "42", "branch": "main", "status": status },
            "task": task,
        }
    })
    .to_string()
}

/// Sends `body` as Herald does (Standard Webhooks signature, `X-Cirrus-Timestamp` = `at`).
pub(crate) async fn send(
    url: &str,
    event: &str,
    delivery: &str,
    at: i64,
    body: &str,
) -> (u16, String) {
    let now = herald::tools::receive::now_secs();
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-cirrus-event", event)
        .header("x-cirrus-timestamp", at.to_string())
        .header("webhook-id", delivery)
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            signing::standard_signature(SECRET, delivery, now, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Waits until Herald has delivered `n` deliveries (at most 60 s) and returns each one's
/// number of attempts; fails on a delivery that failed.
async fn delivered(app: &TestApp, world: &World, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let data = app
            .ok(
                &world.admin,
                "{ viewer { webhookDeliveries(first: 100) { edges { node { state attempts } } } } }",
                json!({}),
            )
            .await;
        let nodes: Vec<Value> = data["viewer"]["webhookDeliveries"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|edge| edge["node"].clone())
            .collect();
        assert!(
            nodes.iter().all(|node| node["state"] != "FAILED"),
            "a delivery failed: {nodes:#?}"
        );
        let done = nodes.iter().filter(|n| n["state"] == "DELIVERED").count();
        if done >= n {
            return nodes
                .iter()
                .map(|n| n["attempts"].as_u64().unwrap())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} deliveries delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Slack's accepted `chat.update` calls.
fn accepted_updates(slack: &FakeSlackApi) -> usize {
    let updates = slack.calls("chat.update");
    updates.iter().filter(|call| call.error.is_none()).count()
}

async fn a_build_of_ten_tasks_is_one_message_with_ten_replies(app: TestApp) {
    let slack = FakeSlackApi::start().await;
    let bridge = start_app_bridge(
        &slack,
        CHANNEL_NAME,
        Duration::from_millis(20),
        Duration::from_millis(1500),
    )
    .await;
    let world = World::new(&app, "acme").await;
    let endpoint = json!({ "secretToken": SECRET, "payloadFormat": "DATA" });
    world.endpoint(&app, &bridge, endpoint).await;

    let build = world.build(&app).await;
    world.build_status(&app, &build, "EXECUTING").await;
    let mut tasks = Vec::new();
    for n in 0..10 {
        tasks.push(world.task(&app, &build, &format!("unit-{n}")).await);
    }
    for (n, task) in tasks.iter().enumerate() {
        world.task_status(&app, task, "SCHEDULED").await;
        world.task_status(&app, task, "EXECUTING").await;
        let last = if n == 3 { "FAILED" } else { "COMPLETED" };
        world.task_status(&app, task, last).await;
    }
    world.build_status(&app, &build, "FAILED").await;
    // Created, EXECUTING, 10 tasks created, 30 task statuses, FAILED.
    delivered(&app, &world, 43).await;

    let top = slack.top_level();
    assert_eq!(top.len(), 1, "{top:#?}");
    assert_eq!(
        top[0].text,
        format!(":x: acme/app: build {build} on main is FAILED · 10/10 tasks finished, 1 failed")
    );
    let replies = slack.replies(&top[0].ts);
    assert_eq!(replies.len(), 10, "{replies:#?}");
    for n in 0..10 {
        let status = if n == 3 { "FAILED" } else { "COMPLETED" };
        let line = format!("task unit-{n} (build {build} on main) is {status}");
        let mine: Vec<_> = replies
            .iter()
            .filter(|reply| reply.text.contains(&format!("task unit-{n} ")))
            .collect();
        assert_eq!(mine.len(), 1, "{replies:#?}");
        assert!(mine[0].text.ends_with(&line), "{:?}", mine[0].text);
    }
    assert_eq!(slack.calls("chat.postMessage").len(), 11);
}

crate::on_both_backends!(a_build_of_ten_tasks_is_one_message_with_ten_replies);

/// A storm of `ratelimited` answers while a build's events arrive through Herald: the bridge
/// waits out Retry-After, answers 503 past --max-wait, and Herald's retry brings the state
/// home; updates that waited coalesce.
async fn a_ratelimited_storm_coalesces_and_the_last_state_lands(backend: Backend) {
    let Some(app) = TestApp::start_with(backend, |config| {
        let schedule = vec!["200ms"; 30].join(",");
        config.retry_schedule = herald::domain::RetrySchedule::parse(&schedule).unwrap();
    })
    .await
    else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let slack = FakeSlackApi::start().await;
    let bridge = start_app_bridge(
        &slack,
        CHANNEL_NAME,
        Duration::from_millis(250),
        Duration::from_secs(1),
    )
    .await;
    let world = World::new(&app, "acme").await;
    let endpoint = json!({ "secretToken": SECRET, "payloadFormat": "DATA" });
    world.endpoint(&app, &bridge, endpoint).await;
    let build = world.build(&app).await;
    slack
        .wait_until("the build's message", |slack| slack.top_level().len() == 1)
        .await;

    slack.rate_limit(6, "1");
    world.build_status(&app, &build, "EXECUTING").await;
    let mut tasks = Vec::new();
    for n in 0..5 {
        tasks.push(world.task(&app, &build, &format!("lint-{n}")).await);
    }
    for task in &tasks {
        world.task_status(&app, task, "EXECUTING").await;
        world.task_status(&app, task, "COMPLETED").await;
    }
    world.build_status(&app, &build, "COMPLETED").await;
    // Created, EXECUTING, 5 tasks created, 10 task statuses, COMPLETED.
    let events = 18;
    let attempts = delivered(&app, &world, events).await;

    let limited = slack.calls("chat.update").into_iter();
    let limited = limited.filter(|c| c.status == 429).count()
        + slack
            .calls("chat.postMessage")
            .iter()
            .filter(|c| c.status == 429)
            .count();
    assert_eq!(limited, 6, "the storm happened");
    assert!(
        attempts.iter().any(|&n| n > 1),
        "the bridge handed a retry back to Herald: {attempts:?}"
    );
    let top = slack.top_level();
    assert_eq!(top.len(), 1, "{top:#?}");
    assert_eq!(
        top[0].text,
        format!(
            ":white_check_mark: acme/app: build {build} on main is COMPLETED · 5/5 tasks finished"
        )
    );
    assert_eq!(slack.replies(&top[0].ts).len(), 5);
    let updates = accepted_updates(&slack);
    assert!(
        updates < events,
        "{updates} chat.update calls for {events} events: waiting states did not coalesce"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ratelimited_storm_coalesces_and_the_last_state_lands_sqlite() {
    a_ratelimited_storm_coalesces_and_the_last_state_lands(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ratelimited_storm_coalesces_and_the_last_state_lands_postgres() {
    a_ratelimited_storm_coalesces_and_the_last_state_lands(Backend::Postgres).await;
}

/// Deliveries of one build that wait together (Cirrus CI sends in parallel) are answered by the
/// one update that shows the latest of them; an older state arriving late changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_that_wait_together_are_answered_by_one_update() {
    let slack = FakeSlackApi::start().await;
    let url = start_app_bridge(
        &slack,
        CHANNEL_NAME,
        Duration::from_millis(20),
        Duration::from_secs(8),
    )
    .await;
    let (status, _) = send(
        &url,
        "build",
        "d-created",
        1_000,
        &body("CREATED", Value::Null),
    )
    .await;
    assert_eq!(status, 200);

    slack.rate_limit(2, "1");
    let started = Instant::now();
    let sends = [
        ("d-exec", 2_000, "EXECUTING"),
        ("d-failed", 3_000, "FAILED"),
    ]
    .map(|(id, at, status)| {
        let url = url.clone();
        tokio::spawn(async move { send(&url, "build", id, at, &body(status, Value::Null)).await })
    });
    for sent in sends {
        let (status, text) = sent.await.unwrap();
        assert_eq!(status, 200, "{text}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "Retry-After was not honoured"
    );
    let top = slack.top_level();
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].text, ":x: acme/app: build 42 on main is FAILED");
    assert_eq!(
        slack.calls("chat.update").len(),
        3,
        "two refused, one taken"
    );
    assert_eq!(accepted_updates(&slack), 1);

    let (status, _) = send(
        &url,
        "build",
        "d-late",
        2_500,
        &body("EXECUTING", Value::Null),
    )
    .await;
    assert_eq!(status, 200);
    let (status, text) = send(
        &url,
        "build",
        "d-failed",
        3_000,
        &body("FAILED", Value::Null),
    )
    .await;
    assert_eq!((status, text.trim()), (200, "already shown"));
    assert_eq!(slack.top_level()[0].text, top[0].text);
    assert_eq!(accepted_updates(&slack), 1, "an older state is not shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_message_is_posted_anew_and_later_updates_go_to_it() {
    let slack = FakeSlackApi::start().await;
    let url = start_app_bridge(
        &slack,
        CHANNEL_NAME,
        Duration::from_millis(20),
        Duration::from_secs(5),
    )
    .await;
    let task = json!({ "id": "7", "name": "unit", "status": "EXECUTING" });
    assert_eq!(
        send(&url, "build", "d1", 1, &body("CREATED", Value::Null))
            .await
            .0,
        200
    );
    assert_eq!(
        send(&url, "task", "d2", 2, &body("CREATED", task)).await.0,
        200
    );
    // The build's message shows the task too, in the background; let it.
    slack
        .wait_until("the build's summary", |slack| {
            slack.top_level()[0].text.ends_with("0/1 task finished")
        })
        .await;
    let first = slack.top_level().remove(0);
    assert_eq!(slack.replies(&first.ts).len(), 1);

    slack.delete(&first.ts);
    assert_eq!(
        send(&url, "build", "d3", 3, &body("EXECUTING", Value::Null))
            .await
            .0,
        200
    );
    let gone = slack.calls("chat.update");
    assert_eq!(
        gone.last().unwrap().error.as_deref(),
        Some("message_not_found")
    );
    let top = slack.top_level();
    assert_eq!(top.len(), 1, "{top:#?}");
    let second = top[0].clone();
    assert_ne!(second.ts, first.ts);
    assert_eq!(
        second.text,
        ":hourglass_flowing_sand: acme/app: build 42 on main is EXECUTING · 0/1 task finished"
    );
    slack
        .wait_until("the task's reply in the new thread", |slack| {
            slack.replies(&second.ts).len() == 1
        })
        .await;

    assert_eq!(
        send(&url, "build", "d4", 4, &body("COMPLETED", Value::Null))
            .await
            .0,
        200
    );
    let top = slack.top_level();
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].ts, second.ts, "updated in place");
    assert!(top[0].text.contains("is COMPLETED"), "{}", top[0].text);
    assert!(top[0].edits >= 1);
    let posts = slack.calls("chat.postMessage");
    assert_eq!(posts.len(), 4, "two build messages, a reply in each thread");
}

/// Slack refusing a call is answered 502 with one sentence; a later delivery tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_answered_502_with_one_sentence() {
    let slack = FakeSlackApi::start().await;
    let url = start_app_bridge(
        &slack,
        "#nowhere",
        Duration::from_millis(20),
        Duration::from_secs(5),
    )
    .await;
    let (status, text) = send(&url, "build", "d1", 1, &body("CREATED", Value::Null)).await;
    assert_eq!(status, 502);
    assert_eq!(
        text.trim(),
        "Slack knows no channel #nowhere that the bot can see (channel_not_found)."
    );
    let (status, _) = send(&url, "build", "d1", 1, &body("CREATED", Value::Null)).await;
    assert_eq!(status, 502);
    assert_eq!(
        slack.calls("chat.postMessage").len(),
        2,
        "the repeat tried again"
    );
}

/// A ping (a test delivery) posts one message to the channel, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_posts_one_message() {
    let slack = FakeSlackApi::start().await;
    let url = start_app_bridge(
        &slack,
        CHANNEL_NAME,
        Duration::from_millis(20),
        Duration::from_secs(5),
    )
    .await;
    let ping = json!({ "action": "ping" }).to_string();
    assert_eq!(send(&url, "ping", "d-ping", 1, &ping).await.0, 200);
    let (status, text) = send(&url, "ping", "d-ping", 1, &ping).await;
    assert_eq!((status, text.trim()), (200, "already forwarded"));
    let top = slack.top_level();
    assert_eq!(top.len(), 1);
    assert!(
        top[0].text.starts_with(":wave: Herald is connected"),
        "{}",
        top[0].text
    );
}
