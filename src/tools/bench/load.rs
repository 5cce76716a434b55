//! The scenarios that record load through GraphQL and time its arrivals at the receiver
//! (`ingest-deliver`, `fanout`, `steady`, `burst`): a fresh Herald per scenario (or fresh
//! endpoints on the server of `--url`). The recording and the progress line serve `drain` and
//! `noisy-neighbour` too.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use super::cpu;
use super::report::Figures;
use super::server::Server;
use super::sink::{Landed, Sink};
use super::{BenchArgs, DELIVERY_DEADLINE};

/// Acknowledgement times by event key, and failed mutations.
#[derive(Default)]
pub(super) struct Recorded {
    pub(super) acks: HashMap<String, Instant>,
    /// How long each mutation took, from its request to its answer.
    pub(super) round_trips: Vec<Duration>,
    pub(super) errors: usize,
}

pub(super) const CREATE_BUILD: &str = "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"bench\"}) { build { id } } }";
pub(super) const CREATE_TASK: &str = "mutation($build: ID!) { createTask(input: {buildId: $build, name: \"t\"}) { task { id status } } }";
pub(super) const UPDATE_TASK: &str = "mutation($task: ID!, $status: TaskStatus!) { updateTaskStatus(input: {taskId: $task, status: $status}) { task { id status } } }";

/// Records `events` task events from `clients` concurrent clients, each cycling tasks through
/// CREATED → EXECUTING → COMPLETED and starting a new build every `tasks_per_build` tasks (one
/// build's events reach an endpoint in order, so a build is a chain); a `pace` spaces events out
/// (steady load).
pub(super) async fn record(
    server: &Arc<Server>,
    args: &BenchArgs,
    events: usize,
    pace: Option<Duration>,
    progress: &Progress,
) -> Recorded {
    let budget = Arc::new(AtomicUsize::new(0));
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let started = Instant::now();
    let tasks_per_build = args.tasks_per_build.max(1);
    let mut handles = Vec::new();
    for _ in 0..args.clients {
        let (server, budget, recorded) = (server.clone(), budget.clone(), recorded.clone());
        let (acked, interrupted) = (progress.acked.clone(), args.interrupted.clone());
        handles.push(tokio::spawn(async move {
            let mut build = String::new();
            let mut task: Option<String> = None;
            let mut step = 0;
            loop {
                let n = budget.fetch_add(1, Ordering::SeqCst);
                if n >= events || interrupted.is_cancelled() {
                    return;
                }
                if let Some(pace) = pace {
                    tokio::time::sleep_until((started + pace * n as u32).into()).await;
                }
                if step % (3 * tasks_per_build) == 0 {
                    let sent = Instant::now();
                    match server
                        .gql(CREATE_BUILD, json!({ "repo": server.repository() }))
                        .await
                    {
                        Ok(data) => {
                            recorded.lock().await.round_trips.push(sent.elapsed());
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
                let sent = Instant::now();
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
                        let mut recorded = recorded.lock().await;
                        recorded.acks.insert(key, at);
                        recorded.round_trips.push(at - sent);
                        acked.fetch_add(1, Ordering::Relaxed);
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

/// How far a scenario got, shown on the terminal (and only there) a few times a second while
/// it runs: its events recorded and, with the built-in receiver, its deliveries arrived.
pub(super) struct Progress {
    acked: Arc<AtomicUsize>,
    /// Set, under the lock of stderr, when the line is cleared for good: the task showing it
    /// may be in the middle of a redraw when it is stopped.
    done: Arc<std::sync::atomic::AtomicBool>,
    shown: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub(super) fn start(name: &str, sink: &Sink) -> Self {
        use std::io::{IsTerminal as _, Write as _};
        let acked = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shown = std::io::stderr().is_terminal().then(|| {
            let (name, acked, done) = (name.to_owned(), acked.clone(), done.clone());
            let receiver = match sink {
                Sink::Builtin(receiver) => Some(receiver.clone()),
                Sink::External(_) => None,
            };
            tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let mut shown = format!("{:.1} s", started.elapsed().as_secs_f64());
                    match acked.load(Ordering::Relaxed) {
                        0 => {}
                        events => shown.push_str(&format!(", {events} events recorded")),
                    }
                    if let Some(receiver) = &receiver {
                        shown.push_str(&format!(", {} deliveries arrived", receiver.count()));
                    }
                    let mut stderr = std::io::stderr().lock();
                    if done.load(Ordering::SeqCst) {
                        return;
                    }
                    let _ = write!(stderr, "\r\x1b[2K{name}: {shown}");
                }
            })
        });
        Self { acked, done, shown }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        use std::io::Write as _;
        if let Some(shown) = self.shown.take() {
            let mut stderr = std::io::stderr().lock();
            self.done.store(true, Ordering::SeqCst);
            let _ = write!(stderr, "\r\x1b[2K");
            shown.abort();
        }
    }
}

/// Turns acknowledgements and arrivals into figures.
fn measure(
    name: &str,
    args: &BenchArgs,
    recorded: &Recorded,
    landed: &Landed,
    started: Instant,
    cpu_start: &cpu::Reading,
    per_event: usize,
) -> Figures {
    let mut latencies = Vec::new();
    for (key, acked) in &recorded.acks {
        for arrived in landed.by_key.get(key).into_iter().flatten() {
            latencies.push(arrived.saturating_duration_since(*acked));
        }
    }
    let last_ack = recorded.acks.values().max().copied().unwrap_or(started);
    let delivered = landed.count;
    let end = landed.end;
    let events = recorded.acks.len();
    Figures {
        scenario: name.into(),
        backend: backend(args).into(),
        events,
        deliveries: delivered,
        events_per_second: events as f64 / last_ack.duration_since(started).as_secs_f64().max(1e-9),
        deliveries_per_second: delivered as f64
            / end.duration_since(started).as_secs_f64().max(1e-9),
        seconds: end.duration_since(started).as_secs_f64(),
        errors: recorded.errors + (events * per_event).saturating_sub(delivered),
        peak_rss_mib: landed.peak_rss_mib,
        ..Figures::default()
    }
    .with_latencies(latencies)
    .with_cpu(cpu::Spent::between(cpu_start, &landed.cpu))
}

/// The database of the server measured: `unknown` for a server the bench did not start.
pub(super) fn backend(args: &BenchArgs) -> &'static str {
    if args.url.is_some() {
        "unknown"
    } else if args.database_url.starts_with("postgres") {
        "postgresql"
    } else {
        "sqlite"
    }
}

/// The events of a scenario: how many, how far apart (none: as fast as the clients go), and how
/// many to record first without measuring them.
struct Load {
    events: usize,
    pace: Option<Duration>,
    warmup: usize,
}

impl Load {
    fn flat_out(events: usize) -> Self {
        Self {
            events,
            pace: None,
            warmup: 0,
        }
    }
}

async fn scenario(
    name: &str,
    args: &BenchArgs,
    sink: &Sink,
    endpoints: usize,
    load: Load,
) -> anyhow::Result<Figures> {
    eprintln!(
        "{name}: {} events × {endpoints} endpoint(s) on {}…",
        load.events,
        super::target(args)
    );
    sink.reset();
    let server = Arc::new(Server::start(args, sink, endpoints, false).await?);
    let progress = Progress::start(name, sink);
    let measured = run_scenario(name, args, sink, &server, endpoints, load, &progress).await;
    drop(progress);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    measured
}

/// [`scenario`] on a started server, which the caller stops whatever happens.
async fn run_scenario(
    name: &str,
    args: &BenchArgs,
    sink: &Sink,
    server: &Arc<Server>,
    endpoints: usize,
    load: Load,
    progress: &Progress,
) -> anyhow::Result<Figures> {
    if load.warmup > 0 {
        eprintln!(
            "{name}: warming up with {} events, not measured…",
            load.warmup
        );
        let warm = record(server, args, load.warmup, load.pace, progress).await;
        sink.landed(
            args,
            server,
            &warm,
            warm.acks.len() * endpoints,
            DELIVERY_DEADLINE,
        )
        .await?;
        sink.reset();
        progress.acked.store(0, Ordering::Relaxed);
    }
    let (started, cpu_start) = (Instant::now(), server.cpu());
    let recorded = record(server, args, load.events, load.pace, progress).await;
    let landed = sink
        .landed(
            args,
            server,
            &recorded,
            recorded.acks.len() * endpoints,
            DELIVERY_DEADLINE,
        )
        .await?;
    Ok(measure(
        name, args, &recorded, &landed, started, &cpu_start, endpoints,
    ))
}

pub async fn ingest_deliver(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Figures> {
    scenario("ingest-deliver", args, sink, 1, Load::flat_out(args.events)).await
}

pub async fn fanout(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Figures> {
    let events = (args.events / args.fanout.max(1)).max(1);
    scenario("fanout", args, sink, args.fanout, Load::flat_out(events)).await
}

/// Seconds of load `steady` runs before it measures.
const STEADY_WARMUP_SECONDS: usize = 2;

/// A fixed rate for a fixed time, after a short warm-up at the same rate that is not measured:
/// the first events after a start wait for the server's pool to open its connections (on
/// PostgreSQL, tens of milliseconds each), which is a start's latency, not a steady one's.
pub async fn steady(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Figures> {
    let load = Load {
        events: args.rate * args.seconds as usize,
        pace: Some(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64)),
        warmup: args.rate * STEADY_WARMUP_SECONDS,
    };
    scenario("steady", args, sink, 1, load).await
}

pub async fn burst(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Figures> {
    scenario("burst", args, sink, 1, Load::flat_out(args.burst)).await
}
