//! The binary: the checked-in schema, and the commands that share the server's database.
//!
//! `herald bench`'s tests are declared here too, so that their names stay `cli::…`; their
//! bodies are in `bench.rs`.

mod approvals;
mod bench;

use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::{Backend, Client, TestApp, free_port, herald_output};

use bench::quick_bench;

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

#[test]
fn schema_graphql_equals_herald_schema() {
    let output = herald().arg("schema").output().unwrap();
    assert!(output.status.success());
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert!(
        String::from_utf8(output.stdout).unwrap() == checked_in,
        "schema.graphql differs from `herald schema`; run `cargo run -- schema > schema.graphql`"
    );
}

/// Boolean settings take `1` and `0` (CONTRACT §2: "`true`/`1` = on") from the environment,
/// as well as `true` and `false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boolean_settings_take_1_and_0_from_the_environment() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("h.db").display());
    let org = herald_output(&url, &["org", "create", "acme"]);
    let token = herald_output(
        &url,
        &["token", "issue", "--org", "acme", "--permission", "ADMIN"],
    );
    for (value, on) in [("1", true), ("0", false)] {
        let port = free_port();
        let mut serve = herald()
            .args([
                "serve",
                "--no-worker",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("HERALD_DATABASE_URL", &url)
            .env("HERALD_ALLOW_PRIVATE_TARGETS", value)
            .env("HERALD_GRAPHIQL", value)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let client = Client::new(port, &token);
        client.wait_healthy().await;
        let loopback = client
            .try_gql(
                "mutation($org: ID!, $url: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: $url}) { endpoint { id } } }",
                json!({ "org": org, "url": format!("http://127.0.0.1:9/hook{value}") }),
            )
            .await;
        assert_eq!(
            loopback.is_ok(),
            on,
            "private targets at {value}: {loopback:?}"
        );
        let graphiql = reqwest::get(format!("http://127.0.0.1:{port}/graphql"))
            .await
            .unwrap()
            .status();
        assert_eq!(graphiql == 200, on, "GraphiQL at {value}: {graphiql}");
        let _ = serve.kill();
        let _ = serve.wait();
    }
}

/// A CI engine's ordinary work logs no error: recording a build, its tasks and their statuses
/// leaves nothing at ERROR or WARN in the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_builds_and_tasks_logs_no_error() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("h.db").display());
    let org = herald_output(&url, &["org", "create", "acme"]);
    let token = herald_output(
        &url,
        &["token", "issue", "--org", "acme", "--permission", "WRITE"],
    );
    let port = free_port();
    let serve = herald()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("HERALD_DATABASE_URL", &url)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = Client::new(port, &token);
    client.wait_healthy().await;
    let repository = client
        .gql(
            "mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"app\"}) { repository { id } } }",
            json!({ "org": org }),
        )
        .await["createRepository"]["repository"]["id"]
        .clone();
    let build = client
        .gql(
            "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"abc\"}) { build { id } } }",
            json!({ "repo": repository }),
        )
        .await["createBuild"]["build"]["id"]
        .clone();
    for name in ["lint", "test"] {
        let task = client
            .gql(
                "mutation($build: ID!, $name: String!) { createTask(input: {buildId: $build, name: $name}) { task { id } } }",
                json!({ "build": build, "name": name }),
            )
            .await["createTask"]["task"]["id"]
            .clone();
        client
            .gql(
                "mutation($task: ID!) { updateTaskStatus(input: {taskId: $task, status: COMPLETED}) { task { id } } }",
                json!({ "task": task }),
            )
            .await;
    }
    let killed = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = serve.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(log.contains("INFO"), "the log was read: {log}");
    assert!(
        !log.contains("ERROR") && !log.contains("WARN"),
        "the server logged a problem: {log}"
    );
}

/// A lease that an attempt could outlast would let a second claim send the delivery again
/// while the first attempt still waits for its answer: such settings stop the start, and say
/// why.
#[test]
fn a_lease_shorter_than_twice_the_delivery_timeout_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("h.db").display());
    for command in ["serve", "worker"] {
        let output = herald()
            .args([command, "--lease", "15s", "--delivery-timeout", "10s"])
            .env("HERALD_DATABASE_URL", &url)
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains(
                "HERALD_LEASE (15s) must be at least twice HERALD_DELIVERY_TIMEOUT (10s)"
            ),
            "{command}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_create_and_token_issue_share_the_servers_database() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let run = |args: &[&str]| {
        herald()
            .args(args)
            .env("HERALD_DATABASE_URL", &app.database_url)
            .env_remove("HERALD_JWT_SECRET")
            .output()
            .unwrap()
    };
    let created = run(&["org", "create", "acme"]);
    assert!(created.status.success(), "{created:?}");
    let uid = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let duplicate = run(&["org", "create", "acme"]);
    assert_eq!(duplicate.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));

    let issued = run(&["token", "issue", "--org", "acme", "--permission", "ADMIN"]);
    assert!(issued.status.success(), "{issued:?}");
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_owned();
    let data = app
        .ok(
            &token,
            "{ viewer { uid name viewerPermission } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data["viewer"],
        json!({ "uid": uid, "name": "acme", "viewerPermission": "ADMIN" })
    );

    let unknown = run(&["token", "issue", "--org", "nobody", "--permission", "READ"]);
    assert_eq!(unknown.status.code(), Some(1));
    let bad_usage = run(&["token", "issue", "--org", "acme", "--permission", "ROOT"]);
    assert_eq!(bad_usage.status.code(), Some(2));
}

#[test]
fn verify_exit_codes() {
    let body = br#"{"action":"created"}"#;
    let signature = herald::signing::cirrus_signature("key", body);
    let check = |signature: &str| {
        let mut child = herald()
            .args(["verify", "--secret", "key", "--signature", signature])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(body).unwrap();
        child.wait().unwrap().code()
    };
    assert_eq!(check(&signature), Some(0));
    assert_eq!(check(&"0".repeat(64)), Some(1));
    assert_eq!(check("zz-not-hex"), Some(1));
    assert_eq!(
        herald()
            .args(["verify", "--secret", "key"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_with_a_backlog_delivers_all_of_it_after_restart() {
    use crate::support::{Client, Herald, Receiver, Reply, free_port, herald_output};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("herald.db").display()
    );
    let org = herald_output(&database_url, &["org", "create", "acme"]);
    let token = herald_output(
        &database_url,
        &["token", "issue", "--org", "acme", "--permission", "ADMIN"],
    );

    let receiver = Receiver::start().await;
    receiver.default_reply(Reply::status(200).delay(std::time::Duration::from_millis(300)));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Herald::spawn(&database_url, &["serve", "--listen", &listen]);
    let client = Client::new(port, &token);
    client.wait_healthy().await;
    client.gql("mutation($org: ID!, $url: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: $url}) { endpoint { id } } }", json!({ "org": org, "url": receiver.url("/hook") })).await;
    let repo = client.gql("mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"app\"}) { repository { id } } }", json!({ "org": org })).await;
    let repo = repo["createRepository"]["repository"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let build = client.gql("mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"c\"}) { build { id } } }", json!({ "repo": repo })).await;
    let build = build["createBuild"]["build"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..20 {
        client.gql("mutation($b: ID!, $n: String!) { createTask(input: {buildId: $b, name: $n}) { task { id } } }", json!({ "b": build, "n": format!("task-{i}") })).await;
    }
    server.kill();
    let before = receiver.received().len();
    assert!(
        before < 21,
        "the backlog was already delivered before the kill"
    );

    let _restarted = Herald::spawn(&database_url, &["serve", "--listen", &listen]);
    client.wait_healthy().await;
    let received = receiver.wait_for(21).await;
    let ids: std::collections::HashSet<String> = received
        .iter()
        .map(|r| r.header("x-cirrus-delivery").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 21, "every event was delivered after the restart");
    let names: std::collections::HashSet<String> = received
        .iter()
        .filter_map(|r| r.json()["data"]["task"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names.len(), 20);
}

#[tokio::test]
async fn bench_runs_every_scenario_in_its_quick_form() {
    quick_bench(None).await;
}

#[tokio::test]
async fn bench_runs_every_scenario_in_its_quick_form_on_postgres() {
    match std::env::var("HERALD_TEST_POSTGRES_URL") {
        Ok(url) => quick_bench(Some(&url)).await,
        Err(_) => eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_a_running_server_in_an_organization_of_its_own() {
    bench::bench_measures_a_running_server_in_an_organization_of_its_own().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_leaves_an_organization_it_cannot_use_alone() {
    bench::bench_leaves_an_organization_it_cannot_use_alone().await;
}

#[tokio::test]
async fn bench_refuses_options_it_cannot_honour_before_it_starts() {
    bench::bench_refuses_options_it_cannot_honour_before_it_starts().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_delivers_to_the_receiver_of_receiver_url() {
    bench::bench_delivers_to_the_receiver_of_receiver_url().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_stops_at_once_when_the_receiver_of_receiver_url_refuses_deliveries() {
    bench::bench_stops_at_once_when_the_receiver_of_receiver_url_refuses_deliveries().await;
}
