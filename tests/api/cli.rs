//! The binary: the checked-in schema, and the commands that share the server's database.

use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::{Backend, Client, TestApp, free_port, herald_output};

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

/// Runs `herald bench --quick` on SQLite, or on the PostgreSQL server of `database_url` (the
/// bench makes and drops a database of its own per scenario), and checks its table and JSON.
async fn quick_bench(database_url: Option<&str>) {
    let mut args = vec!["--quick", "--drain", "100"];
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    let (table, figures) = bench_figures(&args).await;
    assert!(
        table.contains("| scenario |") && table.contains("| drain-100 |"),
        "{table}"
    );
    let names = scenarios(&figures);
    assert_eq!(
        names,
        [
            "ceiling",
            "ingest-deliver",
            "fanout",
            "steady",
            "burst",
            "drain-100",
            "noisy-neighbour quiet",
            "noisy-neighbour"
        ]
    );
    assert!(
        table.contains("organization B's figures, alone and beside organization A"),
        "{table}"
    );
    for f in &figures[6..] {
        let mutation = |name: &str| f[name].as_f64().unwrap_or_else(|| panic!("no {name}: {f}"));
        assert!(
            mutation("mutation_p50_ms") <= mutation("mutation_p99_ms"),
            "{f}"
        );
        assert_latencies_within_the_run(f);
    }
    assert!(figures[7]["neighbour_updates"].as_u64().unwrap() > 0);
    assert!(figures[6]["neighbour_updates"].is_null());
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
        assert!(
            f["herald_cpu_us_per_delivery"].as_f64().unwrap() > 0.0,
            "{f}"
        );
        assert_eq!(f["backend"], backend, "{f}");
    }
    assert!(figures[0]["herald_cpu_us_per_delivery"].is_null());
    for f in &figures {
        let busy = f["machine_busy_percent"].as_f64().unwrap();
        let steal = f["steal_percent"].as_f64().unwrap();
        assert!(busy > 0.0 && busy + steal <= 100.0 + 1e-9, "{f}");
    }
}

/// Runs `herald bench` with `args` off the test's runtime (whose server it may be measuring);
/// its exit code, stdout and stderr.
async fn bench(args: Vec<String>) -> (Option<i32>, String, String) {
    let output = tokio::task::spawn_blocking(move || {
        herald()
            .arg("bench")
            .args(args)
            .env_remove("HERALD_DATABASE_URL")
            .env_remove("HERALD_BENCH_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// Runs `herald bench` with `args` and `--json`, which must succeed; its table and figures.
async fn bench_figures(args: &[&str]) -> (String, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let mut args = strings(args);
    args.extend(["--json".to_owned(), json_path.display().to_string()]);
    let (code, table, stderr) = bench(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let figures = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    (table, figures)
}

/// A scenario's latencies are ordered and lie within its run: a delivery cannot arrive before
/// the run started nor after it ended.
fn assert_latencies_within_the_run(f: &serde_json::Value) {
    let ms = |name: &str| f[name].as_f64().unwrap_or_else(|| panic!("no {name}: {f}"));
    let (p50, p99, max) = (
        ms("latency_p50_ms"),
        ms("latency_p99_ms"),
        ms("latency_max_ms"),
    );
    let run = f["seconds"].as_f64().unwrap() * 1000.0;
    assert!(
        0.0 <= p50 && p50 <= p99 && p99 <= max && max > 0.0 && max <= run + 1.0,
        "{f}"
    );
}

/// The scenarios' names, in the order of the figures.
fn scenarios(figures: &[serde_json::Value]) -> Vec<&str> {
    figures
        .iter()
        .map(|f| f["scenario"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_a_running_server_in_an_organization_of_its_own() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let org = app.org("bench").await;
    let admin = app.token(&org, herald::domain::Permission::Admin);
    let (table, figures) = bench_figures(&[
        "--quick",
        "--url",
        &app.url("/"),
        "--token",
        &admin,
        "--scenario",
        "ceiling,ingest-deliver,fanout",
    ])
    .await;
    assert!(
        table.contains(&format!("herald bench on the server at {}", app.url("/"))),
        "{table}"
    );
    let names = scenarios(&figures);
    assert_eq!(names, ["ceiling", "ingest-deliver", "fanout"]);
    for f in &figures[1..] {
        assert_eq!(f["errors"], 0, "{f}");
        assert_eq!(f["backend"], "unknown", "{f}");
        assert!(f["peak_rss_mib"].is_null(), "{f}");
        assert_latencies_within_the_run(f);
    }
    // Every event went through this server: one repository per scenario, and the deliveries
    // the figures count. The bench's endpoints are gone again, and their log with them.
    let data = app
        .ok(
            &admin,
            "{ viewer { webhookSettings { endpoints { id } } repositories(first: 10) { nodes { name } }
                webhookDeliveries(first: 1) { nodes { id } } } }",
            json!({}),
        )
        .await;
    let viewer = &data["viewer"];
    assert_eq!(
        viewer["webhookSettings"]["endpoints"],
        json!([]),
        "{viewer}"
    );
    assert_eq!(viewer["webhookDeliveries"]["nodes"], json!([]), "{viewer}");
    let repositories = viewer["repositories"]["nodes"].as_array().unwrap();
    assert_eq!(repositories.len(), 2, "{viewer}");
    let tasks: i64 = sea_orm::ConnectionTrait::query_one_raw(
        &app.state.db,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT COUNT(*) AS n FROM events WHERE kind = 'task'",
        ),
    )
    .await
    .unwrap()
    .unwrap()
    .try_get("", "n")
    .unwrap();
    let recorded: u64 = figures[1..]
        .iter()
        .map(|f| f["events"].as_u64().unwrap())
        .sum();
    assert_eq!(tasks as u64, recorded);

    // With a receiver of its own as well, the arrivals come from this server's delivery log.
    let receiver = crate::support::Receiver::start().await;
    let (_, figures) = bench_figures(&[
        "--quick",
        "--url",
        &app.url("/"),
        "--token",
        &admin,
        "--receiver-url",
        &receiver.url("/hooks"),
        "--scenario",
        "ingest-deliver",
    ])
    .await;
    assert_eq!(figures[0]["errors"], 0, "{}", figures[0]);
    assert_eq!(
        figures[0]["deliveries"].as_u64().unwrap(),
        receiver.received().len() as u64
    );
    assert!(
        figures[0]["herald_cpu_us_per_delivery"].is_null(),
        "the bench reads the CPU time only of processes it started: {}",
        figures[0]
    );
    assert_latencies_within_the_run(&figures[0]);
    let data = app
        .ok(
            &admin,
            "{ viewer { webhookSettings { endpoints { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["viewer"]["webhookSettings"]["endpoints"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_leaves_an_organization_it_cannot_use_alone() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let world = crate::support::World::new(&app, "acme").await;
    let stderr = refused_bench(&app, &world.write).await;
    assert!(
        stderr.contains("the token is not an ADMIN token"),
        "{stderr}"
    );
    assert_nothing_added(&app, &world.admin, 0).await;

    world
        .endpoint(&app, "http://127.0.0.1:9/hook", json!({}))
        .await;
    let stderr = refused_bench(&app, &world.admin).await;
    assert!(
        stderr.contains("has 1 webhook endpoint(s), which would be sent the bench's events"),
        "{stderr}"
    );
    assert_nothing_added(&app, &world.admin, 1).await;

    world
        .endpoint(
            &app,
            "http://127.0.0.1:9/hook?herald-bench-endpoint=0",
            json!({}),
        )
        .await;
    let stderr = refused_bench(&app, &world.admin).await;
    assert!(
        stderr.contains("still has 1 endpoint(s) of an interrupted bench run"),
        "{stderr}"
    );
    assert_nothing_added(&app, &world.admin, 2).await;
}

/// Runs a quick `ceiling` and `ingest-deliver` on `app` with `token`, which must fail before
/// `ceiling` runs; what it printed.
async fn refused_bench(app: &TestApp, token: &str) -> String {
    let (code, stdout, stderr) = bench(strings(&[
        "--quick",
        "--url",
        &app.url(""),
        "--token",
        token,
        "--scenario",
        "ceiling,ingest-deliver",
    ]))
    .await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        !stderr.contains("ceiling:"),
        "checked only after ceiling: {stderr}"
    );
    stderr
}

/// The organization of `admin` still has `endpoints` endpoints and only its one repository.
async fn assert_nothing_added(app: &TestApp, admin: &str, endpoints: usize) {
    let data = app
        .ok(
            admin,
            "{ viewer { webhookSettings { endpoints { id } } repositories(first: 10) { nodes { name } } } }",
            json!({}),
        )
        .await;
    let found = data["viewer"]["webhookSettings"]["endpoints"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(found, endpoints, "{data}");
    assert_eq!(
        data["viewer"]["repositories"]["nodes"],
        json!([{ "name": "app" }]),
        "nothing was added"
    );
}

#[tokio::test]
async fn bench_refuses_options_it_cannot_honour_before_it_starts() {
    let cases: [(&[&str], &str); 7] = [
        (
            &["--url", "http://192.0.2.1:8080"],
            "the bench measures on loopback only",
        ),
        (
            &["--receiver-url", "https://127.0.0.1:9/hook"],
            "use an http:// URL",
        ),
        (
            &["--url", "http://127.0.0.1:9"],
            "--url needs an ADMIN token",
        ),
        (
            &[
                "--url",
                "http://127.0.0.1:9",
                "--token",
                "t",
                "--scenario",
                "fanout,drain",
            ],
            "drain stops and starts Herald's worker",
        ),
        (
            &[
                "--url",
                "http://127.0.0.1:9",
                "--token",
                "t",
                "--workers",
                "2",
            ],
            "--workers adds worker processes",
        ),
        (
            &[
                "--url",
                "http://127.0.0.1:9",
                "--token",
                "t",
                "--database-url",
                "postgres://postgres@127.0.0.1/test",
            ],
            "--database-url chooses the database of a server the bench starts",
        ),
        (&["--scenario", "ceiling,fast"], "unknown scenario \"fast\""),
    ];
    for (args, message) in cases {
        let (code, stdout, stderr) = bench(strings(args)).await;
        assert_eq!(code, Some(2), "bad usage: {args:?}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("ceiling:"), "{args:?} started: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_delivers_to_the_receiver_of_receiver_url() {
    let receiver = crate::support::Receiver::start().await;
    let (table, figures) = bench_figures(&[
        "--quick",
        "--receiver-url",
        &receiver.url("/hooks"),
        "--scenario",
        "ceiling,fanout,steady,drain",
        "--drain",
        "100",
    ])
    .await;
    assert!(
        table.contains("Arrivals were read from Herald's delivery log"),
        "{table}"
    );
    for f in &figures {
        assert_eq!(f["errors"], 0, "{f}");
        assert!(f["deliveries"].as_u64().unwrap() > 0, "{f}");
    }
    for f in &figures[1..3] {
        assert_latencies_within_the_run(f);
    }
    // Every figure counts what this receiver got (the steady warm-up's, too, unmeasured):
    // `ceiling`'s plain POSTs on its URL, and each endpoint's signed deliveries with the
    // endpoint's number added.
    let received = receiver.received();
    let counted: u64 = figures
        .iter()
        .map(|f| f["deliveries"].as_u64().unwrap())
        .sum();
    let warmup = received.len() as u64 - counted;
    assert_eq!(warmup, 100, "50 events/s for 2 s in --quick");
    let plain = received.iter().filter(|r| r.uri.query().is_none()).count() as u64;
    assert_eq!(plain, figures[0]["deliveries"].as_u64().unwrap());
    let endpoints: std::collections::HashSet<&str> =
        received.iter().filter_map(|r| r.uri.query()).collect();
    assert_eq!(endpoints.len(), 10, "{endpoints:?}");
    for r in received.iter().filter(|r| r.uri.query().is_some()) {
        assert_eq!(r.uri.path(), "/hooks");
        assert!(r.header("x-cirrus-signature").is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_stops_at_once_when_the_receiver_of_receiver_url_refuses_deliveries() {
    let receiver = crate::support::Receiver::start().await;
    receiver.default_reply(crate::support::Reply::status(400));
    let started = std::time::Instant::now();
    let (code, _, stderr) = bench(strings(&[
        "--quick",
        "--receiver-url",
        &receiver.url("/hooks"),
        "--scenario",
        "ingest-deliver",
    ]))
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the receiver refused a delivery (it answered HTTP 400)")
            && stderr.contains("bench-secret"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "it waited for the retries: {:?}",
        started.elapsed()
    );
}
