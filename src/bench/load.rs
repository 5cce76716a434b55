//! The scenarios: a fresh Herald per scenario, load through GraphQL, arrivals at the receiver.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::receiver::Receiver;
use super::report::Figures;
use super::{BenchArgs, DELIVERY_DEADLINE};
use crate::domain::{EndpointUrl, EventKind, PayloadFormat, Permission};
use crate::graphql::TokenKeys;
use crate::store;

/// The selection every bench endpoint uses: small, and enough to key arrivals.
const SELECTION: &str = "task(id: $taskId) { id status }";

/// A Herald under test: a `serve` child process (and extra workers) on a fresh database.
struct Server {
    children: Vec<Child>,
    base: String,
    token: String,
    repository: String,
    http: reqwest::Client,
    database_url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(std::path::PathBuf),
    Postgres { admin: String, name: String },
}

impl Server {
    async fn start(
        args: &BenchArgs,
        receiver: &Receiver,
        endpoints: usize,
        api_only: bool,
    ) -> anyhow::Result<Self> {
        let (database_url, cleanup) = fresh_database(&args.database_url).await?;
        let db = store::connect(&database_url).await?;
        let org = store::orgs::create(&db, "bench")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = crate::app::token_secret(&db).await?;
        let token = TokenKeys::new(&key)
            .issue(&org.id.to_string(), "bench", Permission::Admin, 24 * 3600)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let repository = store::ci::create_repository(
            &db,
            org.id,
            store::ci::NewRepository {
                name: "bench".into(),
                is_private: false,
                default_branch: "main".into(),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        for i in 0..endpoints {
            let fields = store::endpoints::EndpointFields {
                url: EndpointUrl::parse(&receiver.url(&format!("/endpoint/{i}")))?,
                secret: Some("bench-secret".into()),
                events: vec![EventKind::Task],
                payload_query: Some(SELECTION.into()),
                payload_format: PayloadFormat::Data,
                enabled: true,
                insecure_ssl: false,
                status_filter: Vec::new(),
            };
            store::endpoints::create(&db, org.id, fields, &crate::secrets::Vault::default())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        db.close().await.ok();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut serve = vec![
            "serve".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        if api_only {
            serve.push("--no-worker".into());
        }
        let mut server = Self {
            children: vec![spawn(&database_url, &serve)?],
            base: format!("http://127.0.0.1:{port}"),
            token,
            repository: repository.id.to_string(),
            http: reqwest::Client::new(),
            database_url,
            cleanup,
        };
        if !api_only {
            for _ in 0..args.workers {
                server
                    .children
                    .push(spawn(&server.database_url, &["worker".into()])?);
            }
        }
        for _ in 0..400 {
            if server
                .http
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .is_ok()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("herald serve did not start")
    }

    fn start_worker(&mut self) -> anyhow::Result<()> {
        let child = spawn(&self.database_url, &["worker".into()])?;
        self.children.push(child);
        Ok(())
    }

    async fn gql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let body = json!({ "query": query, "variables": variables }).to_string();
        let response = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let value: Value = serde_json::from_slice(&response.bytes().await?)?;
        match value.get("errors") {
            Some(errors) => anyhow::bail!("{errors}"),
            None => Ok(value["data"].clone()),
        }
    }

    /// The largest peak RSS of the Herald processes, in MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        self.children
            .iter()
            .filter_map(|child| {
                let status =
                    std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
                let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
                let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib / 1024.0)
            })
            .reduce(f64::max)
    }

    async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Postgres { admin, name } => {
                if let Ok(db) = sea_orm::Database::connect(admin).await {
                    let _ = db
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            }
        }
    }
}

fn spawn(database_url: &str, args: &[String]) -> anyhow::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(args)
        .env("HERALD_DATABASE_URL", database_url)
        .env("HERALD_ALLOW_PRIVATE_TARGETS", "true")
        .env("RUST_LOG", "warn")
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("HERALD_ENCRYPTION_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a Herald process")
}

async fn fresh_database(spec: &str) -> anyhow::Result<(String, Cleanup)> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    if spec.starts_with("postgres") {
        let name = format!("herald_bench_{id}");
        let admin = sea_orm::Database::connect(spec)
            .await
            .context("connecting to PostgreSQL")?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let mut url = url::Url::parse(spec)?;
        url.set_path(&format!("/{name}"));
        Ok((
            url.to_string(),
            Cleanup::Postgres {
                admin: spec.to_owned(),
                name,
            },
        ))
    } else {
        let path = std::env::temp_dir().join(format!("herald-bench-{id}.db"));
        Ok((
            format!("sqlite://{}?mode=rwc", path.display()),
            Cleanup::File(path),
        ))
    }
}

/// Acknowledgement times by event key, and failed mutations.
#[derive(Default)]
struct Recorded {
    acks: HashMap<String, Instant>,
    errors: usize,
}

const CREATE_BUILD: &str = "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"bench\"}) { build { id } } }";
const CREATE_TASK: &str = "mutation($build: ID!) { createTask(input: {buildId: $build, name: \"t\"}) { task { id status } } }";
const UPDATE_TASK: &str = "mutation($task: ID!, $status: TaskStatus!) { updateTaskStatus(input: {taskId: $task, status: $status}) { task { id status } } }";

/// Records `events` task events from `clients` concurrent clients, each cycling tasks through
/// CREATED → EXECUTING → COMPLETED and starting a new build every `tasks_per_build` tasks (one
/// build's events reach an endpoint in order, so a build is a chain); a `pace` spaces events out
/// (steady load).
async fn record(
    server: &Arc<Server>,
    args: &BenchArgs,
    events: usize,
    pace: Option<Duration>,
) -> Recorded {
    let budget = Arc::new(AtomicUsize::new(0));
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let started = Instant::now();
    let tasks_per_build = args.tasks_per_build.max(1);
    let mut handles = Vec::new();
    for _ in 0..args.clients {
        let (server, budget, recorded) = (server.clone(), budget.clone(), recorded.clone());
        handles.push(tokio::spawn(async move {
            let mut build = String::new();
            let mut task: Option<String> = None;
            let mut step = 0;
            loop {
                let n = budget.fetch_add(1, Ordering::SeqCst);
                if n >= events {
                    return;
                }
                if let Some(pace) = pace {
                    tokio::time::sleep_until((started + pace * n as u32).into()).await;
                }
                if step % (3 * tasks_per_build) == 0 {
                    match server
                        .gql(CREATE_BUILD, json!({ "repo": server.repository }))
                        .await
                    {
                        Ok(data) => {
                            build = data["createBuild"]["build"]["id"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned();
                        }
                        Err(_) => {
                            recorded.lock().await.errors += 1;
                            continue;
                        }
                    }
                }
                let result = match (&task, step % 3) {
                    (Some(id), 1) => {
                        server
                            .gql(UPDATE_TASK, json!({ "task": id, "status": "EXECUTING" }))
                            .await
                    }
                    (Some(id), 2) => {
                        server
                            .gql(UPDATE_TASK, json!({ "task": id, "status": "COMPLETED" }))
                            .await
                    }
                    _ => server.gql(CREATE_TASK, json!({ "build": build })).await,
                };
                let at = Instant::now();
                match result {
                    Ok(data) => {
                        let node = data
                            .as_object()
                            .and_then(|o| o.values().next())
                            .map(|p| p["task"].clone())
                            .unwrap_or_default();
                        let id = node["id"].as_str().unwrap_or_default().to_owned();
                        let key = format!("{id}:{}", node["status"].as_str().unwrap_or_default());
                        recorded.lock().await.acks.insert(key, at);
                        task = (step % 3 != 2).then_some(id);
                        step += 1;
                    }
                    Err(_) => recorded.lock().await.errors += 1,
                }
            }
        }));
    }
    for handle in handles {
        let _ = handle.await;
    }
    Arc::try_unwrap(recorded)
        .map(Mutex::into_inner)
        .unwrap_or_default()
}

/// Turns acknowledgements and arrivals into figures.
fn measure(
    name: &str,
    args: &BenchArgs,
    recorded: &Recorded,
    receiver: &Receiver,
    started: Instant,
    last: Option<Instant>,
    per_event: usize,
) -> Figures {
    let arrivals = receiver.arrivals();
    let mut latencies = Vec::new();
    for (key, acked) in &recorded.acks {
        for arrived in arrivals.get(key).into_iter().flatten() {
            latencies.push(arrived.saturating_duration_since(*acked));
        }
    }
    let last_ack = recorded.acks.values().max().copied().unwrap_or(started);
    let delivered = receiver.count();
    let end = last.unwrap_or_else(Instant::now);
    let events = recorded.acks.len();
    Figures {
        scenario: name.into(),
        backend: backend(&args.database_url).into(),
        events,
        deliveries: delivered,
        events_per_second: events as f64 / last_ack.duration_since(started).as_secs_f64().max(1e-9),
        deliveries_per_second: delivered as f64
            / end.duration_since(started).as_secs_f64().max(1e-9),
        seconds: end.duration_since(started).as_secs_f64(),
        errors: recorded.errors + (events * per_event).saturating_sub(delivered),
        ..Figures::default()
    }
    .with_latencies(latencies)
}

fn backend(spec: &str) -> &'static str {
    if spec.starts_with("postgres") {
        "postgresql"
    } else {
        "sqlite"
    }
}

async fn scenario(
    name: &str,
    args: &BenchArgs,
    receiver: &Receiver,
    endpoints: usize,
    events: usize,
    pace: Option<Duration>,
    warmup: usize,
) -> anyhow::Result<Figures> {
    eprintln!(
        "{name}: {events} events × {endpoints} endpoint(s) on {}…",
        backend(&args.database_url)
    );
    receiver.reset();
    let server = Arc::new(Server::start(args, receiver, endpoints, false).await?);
    if warmup > 0 {
        eprintln!("{name}: warming up with {warmup} events, not measured…");
        let warm = record(&server, args, warmup, pace).await;
        receiver
            .wait_for(warm.acks.len() * endpoints, DELIVERY_DEADLINE)
            .await;
        receiver.reset();
    }
    let started = Instant::now();
    let recorded = record(&server, args, events, pace).await;
    let last = receiver
        .wait_for(recorded.acks.len() * endpoints, DELIVERY_DEADLINE)
        .await;
    let mut figures = measure(name, args, &recorded, receiver, started, last, endpoints);
    figures.peak_rss_mib = server.peak_rss_mib();
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    Ok(figures)
}

pub async fn ingest_deliver(args: &BenchArgs, receiver: &Receiver) -> anyhow::Result<Figures> {
    scenario("ingest-deliver", args, receiver, 1, args.events, None, 0).await
}

pub async fn fanout(args: &BenchArgs, receiver: &Receiver) -> anyhow::Result<Figures> {
    let events = (args.events / args.fanout.max(1)).max(1);
    scenario("fanout", args, receiver, args.fanout, events, None, 0).await
}

/// Seconds of load `steady` runs before it measures.
const STEADY_WARMUP_SECONDS: usize = 2;

/// A fixed rate for a fixed time, after a short warm-up at the same rate that is not measured:
/// the first events after a start wait for the server's pool to open its connections (on
/// PostgreSQL, tens of milliseconds each), which is a start's latency, not a steady one's.
pub async fn steady(args: &BenchArgs, receiver: &Receiver) -> anyhow::Result<Figures> {
    let events = args.rate * args.seconds as usize;
    let pace = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let warmup = args.rate * STEADY_WARMUP_SECONDS;
    scenario("steady", args, receiver, 1, events, Some(pace), warmup).await
}

pub async fn burst(args: &BenchArgs, receiver: &Receiver) -> anyhow::Result<Figures> {
    scenario("burst", args, receiver, 1, args.burst, None, 0).await
}

/// Queues `size` deliveries with no worker running (events to the `fanout` endpoints, as a
/// backlog of many receivers), then times one worker emptying the queue.
pub async fn drain(args: &BenchArgs, receiver: &Receiver, size: usize) -> anyhow::Result<Figures> {
    let endpoints = args.fanout.clamp(1, size.max(1));
    let events = size.div_ceil(endpoints);
    eprintln!(
        "drain-{size}: queueing {} deliveries ({events} events × {endpoints} endpoints) with no worker…",
        events * endpoints
    );
    receiver.reset();
    let server = Arc::new(Server::start(args, receiver, endpoints, true).await?);
    let recorded = record(&server, args, events, None).await;
    let queued = recorded.acks.len() * endpoints;
    let mut server =
        Arc::try_unwrap(server).map_err(|_| anyhow::anyhow!("the server is still shared"))?;
    eprintln!("drain-{size}: starting one worker…");
    let started = Instant::now();
    server.start_worker()?;
    let last = receiver.wait_for(queued, DELIVERY_DEADLINE).await;
    let delivered = receiver.count();
    let end = last.unwrap_or_else(Instant::now);
    let figures = Figures {
        scenario: format!("drain-{size}"),
        backend: backend(&args.database_url).into(),
        events: recorded.acks.len(),
        deliveries: delivered,
        deliveries_per_second: delivered as f64
            / end.duration_since(started).as_secs_f64().max(1e-9),
        seconds: end.duration_since(started).as_secs_f64(),
        peak_rss_mib: server.peak_rss_mib(),
        errors: recorded.errors + queued.saturating_sub(delivered),
        ..Figures::default()
    };
    server.stop().await;
    Ok(figures)
}

/// Plain keep-alive POSTs from the same HTTP client to the same receiver: the machine's limit.
pub async fn ceiling(args: &BenchArgs, receiver: &Receiver) -> anyhow::Result<Figures> {
    eprintln!("ceiling: {} plain POSTs…", args.requests);
    receiver.reset();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..args.clients {
        let (client, next, url) = (client.clone(), next.clone(), receiver.url("/ceiling"));
        let total = args.requests;
        handles.push(tokio::spawn(async move {
            let mut errors = 0;
            while next.fetch_add(1, Ordering::SeqCst) < total {
                let body =
                    r#"{"action":"updated","data":{"task":{"id":"0","status":"EXECUTING"}}}"#;
                if client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .is_err()
                {
                    errors += 1;
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for handle in handles {
        errors += handle.await.unwrap_or(1);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Figures {
        scenario: "ceiling".into(),
        backend: "-".into(),
        deliveries: receiver.count(),
        deliveries_per_second: receiver.count() as f64 / seconds,
        seconds,
        errors,
        ..Figures::default()
    })
}
