//! The binary: the checked-in schema, and the commands that share the server's database.

use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::{Backend, TestApp};

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

#[test]
fn bench_runs_every_scenario_in_its_quick_form() {
    quick_bench(None);
}

#[test]
fn bench_runs_every_scenario_in_its_quick_form_on_postgres() {
    match std::env::var("HERALD_TEST_POSTGRES_URL") {
        Ok(url) => quick_bench(Some(&url)),
        Err(_) => eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set"),
    }
}

/// Runs `herald bench --quick` on SQLite, or on the PostgreSQL server of `database_url` (the
/// bench makes and drops a database of its own per scenario), and checks its table and JSON.
fn quick_bench(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let mut command = herald();
    command
        .args(["bench", "--quick", "--drain", "100", "--json"])
        .arg(&json_path)
        .env_remove("HERALD_DATABASE_URL");
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.contains("| scenario |") && table.contains("| drain-100 |"),
        "{table}"
    );
    let figures: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ceiling",
            "ingest-deliver",
            "fanout",
            "steady",
            "burst",
            "drain-100"
        ]
    );
    for f in &figures {
        assert_eq!(f["errors"], 0, "{f}");
        assert!(
            f["deliveries"].as_u64().unwrap() > 0
                && f["deliveries_per_second"].as_f64().unwrap() > 0.0,
            "{f}"
        );
    }
    let backend = if database_url.is_some() {
        "postgresql"
    } else {
        "sqlite"
    };
    for f in &figures[1..] {
        assert!(f["peak_rss_mib"].as_f64().unwrap() > 1.0, "{f}");
        assert_eq!(f["backend"], backend, "{f}");
    }
}
