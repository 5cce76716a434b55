//! `herald listen --catch-up`: a receiver killed in the middle of a stream, restarted, ends
//! with every event exactly once: what it missed comes from `webhookEvents`, the rest as
//! deliveries.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herald::domain::RetrySchedule;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, World, free_port};

const SECRET: &str = "catch-up-secret";

/// A child process, killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `herald listen --json --catch-up …` on `port`, its stdout lines sent to `lines`.
fn listen(
    app: &TestApp,
    world: &World,
    endpoint: &str,
    port: u16,
    state: &std::path::Path,
    lines: mpsc::Sender<String>,
) -> Killed {
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["listen", "--json", "--secret", SECRET])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--catch-up", &app.url("/")])
            .args(["--endpoint", endpoint])
            .arg("--state")
            .arg(state)
            .env("HERALD_TOKEN", &world.read)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("herald listen did not listen on port {port}");
}

/// Records a build with `tasks` tasks: 1 + `tasks` events.
async fn build_with_tasks(app: &TestApp, world: &World, tasks: usize) {
    let build = world.build(app).await;
    for t in 0..tasks {
        world.task(app, &build, &format!("task-{t}")).await;
    }
}

/// Reads printed events until `n` distinct sequence numbers came; each number with whether it
/// was fetched, and how many times it was printed.
fn read_until(
    lines: &mpsc::Receiver<String>,
    printed: &mut BTreeMap<i64, (bool, usize)>,
    n: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while printed.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "only {} of {n} events were printed: {printed:?}",
                printed.len()
            )
        });
        let summary: Value = serde_json::from_str(&line).unwrap();
        let sequence = summary["sequence"]
            .as_i64()
            .expect("every event shows its sequence");
        let fetched = summary["fetched"].as_bool().unwrap_or(false);
        let entry = printed.entry(sequence).or_insert((fetched, 0));
        entry.1 += 1;
    }
}

/// Herald on `backend`, where a failed delivery is not tried again within a test: only
/// catching up brings it.
async fn without_retries(backend: Backend) -> Option<TestApp> {
    TestApp::start_with(backend, |config| {
        config.retry_schedule = RetrySchedule::parse("1h").unwrap();
    })
    .await
}

pub(super) async fn a_killed_listener_catches_up_on_what_it_missed(backend: Backend) {
    let Some(app) = without_retries(backend).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let world = World::new(&app, "catch-up").await;
    let port = free_port();
    let endpoint = world
        .endpoint(
            &app,
            &format!("http://127.0.0.1:{port}/"),
            json!({ "secretToken": SECRET }),
        )
        .await;
    let state = tempfile::tempdir().unwrap();
    let state = state.path().join("sequence");
    let (sender, lines) = mpsc::channel();
    let mut printed = BTreeMap::new();

    let first = listen(&app, &world, &endpoint, port, &state, sender.clone());
    for _ in 0..3 {
        build_with_tasks(&app, &world, 2).await;
    }
    read_until(&lines, &mut printed, 9);
    // Killed once it has kept all nine (an event printed but not yet kept would be printed
    // again after the restart: at least once, across a crash).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&state).unwrap_or_default().trim() != "9" {
        assert!(Instant::now() < deadline, "the state file never said 9");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first);

    // Nine more events while nothing listens: each build's first delivery fails (the retry is
    // an hour away), and its tasks' deliveries wait behind it.
    for _ in 0..3 {
        build_with_tasks(&app, &world, 2).await;
    }
    let retrying = "query($org: ID!, $endpoint: ID!) { ownerInfo(uid: $org) { webhookDeliveries(endpointId: $endpoint, state: RETRYING, first: 50) { edges { node { id } } } } }";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let data = app
            .ok(
                &world.admin,
                retrying,
                json!({ "org": world.org, "endpoint": endpoint }),
            )
            .await;
        let failed = data["ownerInfo"]["webhookDeliveries"]["edges"]
            .as_array()
            .unwrap()
            .len();
        if failed >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{failed} of 3 deliveries failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _second = listen(&app, &world, &endpoint, port, &state, sender);
    build_with_tasks(&app, &world, 1).await;
    read_until(&lines, &mut printed, 20);
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Ok(line) = lines.try_recv() {
        panic!("an event was printed twice: {line}");
    }
    let numbers: Vec<i64> = printed.keys().copied().collect();
    assert_eq!(numbers, (1..=20).collect::<Vec<_>>());
    // What it missed could only be fetched; the rest came as deliveries, or from the feed
    // when one overtook another.
    for (sequence, (fetched, times)) in &printed {
        assert_eq!(*times, 1, "sequence {sequence}");
        if (10..=18).contains(sequence) {
            assert!(fetched, "sequence {sequence} was missed");
        }
    }
    let kept = std::fs::read_to_string(&state).unwrap();
    assert_eq!(kept.trim(), "20");
}

pub(super) async fn a_listener_following_another_endpoint_refuses_its_deliveries(backend: Backend) {
    let Some(app) = without_retries(backend).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let world = World::new(&app, "catch-up-other").await;
    let port = free_port();
    // The endpoint the listener is told to follow sends elsewhere; another sends to it.
    let followed = world
        .endpoint(
            &app,
            "http://127.0.0.1:1/",
            json!({ "secretToken": SECRET }),
        )
        .await;
    build_with_tasks(&app, &world, 0).await;
    let state = tempfile::tempdir().unwrap();
    let state = state.path().join("sequence");
    let (sender, lines) = mpsc::channel();
    let _listener = listen(&app, &world, &followed, port, &state, sender);
    let mut printed = BTreeMap::new();
    read_until(&lines, &mut printed, 1);
    assert_eq!(
        printed[&1],
        (true, 1),
        "the followed endpoint's first event, fetched"
    );
    let sending = world
        .endpoint(
            &app,
            &format!("http://127.0.0.1:{port}/"),
            json!({ "secretToken": SECRET }),
        )
        .await;
    build_with_tasks(&app, &world, 0).await;
    // Its first delivery has number 1 too: refused, not taken for a repeat.
    let query = "query($org: ID!, $endpoint: ID!) { ownerInfo(uid: $org) { webhookDeliveries(endpointId: $endpoint, first: 5) { edges { node { attemptLog { status } } } } } }";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let data = app
            .ok(
                &world.admin,
                query,
                json!({ "org": world.org, "endpoint": sending }),
            )
            .await;
        let status =
            &data["ownerInfo"]["webhookDeliveries"]["edges"][0]["node"]["attemptLog"][0]["status"];
        if !status.is_null() {
            assert_eq!(status, 409, "{data:#}");
            break;
        }
        assert!(Instant::now() < deadline, "no attempt was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lines.try_recv().is_err(), "nothing more was printed");
}

pub(super) async fn a_feed_refused_at_start_ends_the_listener(backend: Backend) {
    let Some(app) = without_retries(backend).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let world = World::new(&app, "catch-up-refused").await;
    let endpoint = world
        .endpoint(
            &app,
            "http://127.0.0.1:1/",
            json!({ "secretToken": SECRET }),
        )
        .await;
    let (url, port) = (app.url("/"), free_port());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["listen", "--secret", SECRET, "--catch-up", &url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--endpoint", &endpoint, "--token", "not-a-token"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Herald refused to list the missed events: The token is malformed."),
        "{stderr}"
    );
    assert!(!stderr.contains("not-a-token"), "{stderr}");
}
