//! `herald bench`: every scenario in its quick form, on a server of its own or one already
//! running (in an organization of its own, or refused), its options checked before it starts,
//! and a receiver of `--receiver-url`.

use serde_json::json;

use super::herald;
use crate::support::{Backend, TestApp};

/// Runs `herald bench --quick` on SQLite, or on the PostgreSQL server of `database_url` (the
/// bench makes and drops a database of its own per scenario), and checks its table and JSON.
pub(super) async fn quick_bench(database_url: Option<&str>) {
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

pub(super) async fn bench_measures_a_running_server_in_an_organization_of_its_own() {
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

pub(super) async fn bench_leaves_an_organization_it_cannot_use_alone() {
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

pub(super) async fn bench_refuses_options_it_cannot_honour_before_it_starts() {
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

pub(super) async fn bench_delivers_to_the_receiver_of_receiver_url() {
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

pub(super) async fn bench_stops_at_once_when_the_receiver_of_receiver_url_refuses_deliveries() {
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
