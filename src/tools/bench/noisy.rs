//! `noisy-neighbour`: how much one organization's load slows another's deliveries.
//!
//! Organization B records task events at a fixed rate to its endpoint, once on a server of its
//! own (quiet) and once beside organization A, which holds a backlog of deliveries to an
//! endpoint whose receiver answers slowly, and keeps many updates of one build's tasks in
//! flight. B's figures are taken from B's events only: acknowledgement to arrival, and the
//! mutations' own round trips (which a writer that served A first would lengthen).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::load::{CREATE_BUILD, CREATE_TASK, Progress, Recorded, UPDATE_TASK, backend, record};
use super::receiver::{Receiver, SLOW};
use super::report::{Figures, percentile};
use super::server::Server;
use super::sink::Sink;
use super::{BenchArgs, DELIVERY_DEADLINE, cpu};

/// B's load before its measured part, not measured: the server's pool opens its connections.
const WARMUP: Duration = Duration::from_secs(1);

/// Clients creating the tasks of A's flooded build.
const SETUP_CLIENTS: usize = 16;

/// B on a quiet server, then B beside A.
pub async fn noisy_neighbour(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Vec<Figures>> {
    let Sink::Builtin(receiver) = sink else {
        anyhow::bail!("noisy-neighbour needs the bench's own receiver: leave out --receiver-url");
    };
    let quiet = run(args, sink, receiver, false).await?;
    if args.interrupted.is_cancelled() {
        return Ok(vec![quiet]);
    }
    let noisy = run(args, sink, receiver, true).await?;
    Ok(vec![quiet, noisy])
}

async fn run(
    args: &BenchArgs,
    sink: &Sink,
    receiver: &Receiver,
    neighbour: bool,
) -> anyhow::Result<Figures> {
    let name = if neighbour {
        "noisy-neighbour"
    } else {
        "noisy-neighbour quiet"
    };
    eprintln!(
        "{name}: B records {} events/s for {} s{} on {}…",
        args.neighbour_rate,
        args.seconds,
        if neighbour {
            format!(
                " beside A ({} deliveries queued to a receiver answering in {} ms, {} concurrent updates of one build)",
                args.backlog, args.slow_ms, args.flood
            )
        } else {
            String::new()
        },
        super::target(args)
    );
    sink.reset();
    let server = Arc::new(Server::start(args, sink, 1, false).await?);
    let progress = Progress::start(name, sink);
    let measured = measure(name, args, receiver, &server, neighbour, &progress).await;
    drop(progress);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    measured
}

/// A's load while it runs: the updates acknowledged and refused.
#[derive(Default)]
struct Flood {
    updates: AtomicUsize,
    errors: AtomicUsize,
}

async fn measure(
    name: &str,
    args: &BenchArgs,
    receiver: &Receiver,
    server: &Arc<Server>,
    neighbour: bool,
    progress: &Progress,
) -> anyhow::Result<Figures> {
    let stop = CancellationToken::new();
    let flood = Arc::new(Flood::default());
    let mut flooding = Vec::new();
    if neighbour {
        let a = Arc::new(neighbour_organization(server, receiver, args).await?);
        // Every task in a build of its own: each delivery heads its own chain, so that every
        // one of the backlog is due, as many builds' events are.
        let backlog_args = BenchArgs {
            tasks_per_build: 1,
            ..args.clone()
        };
        eprintln!("{name}: A queues its backlog…");
        let queued = record(&a, &backlog_args, args.backlog, None, progress).await;
        if queued.errors > 0 {
            anyhow::bail!("A's backlog: {} mutations failed", queued.errors);
        }
        eprintln!(
            "{name}: A floods {} concurrent updates of one build…",
            args.flood
        );
        let tasks = flooded_tasks(&a, args.flood).await?;
        for (n, task) in tasks.into_iter().enumerate() {
            let (a, stop, flood) = (a.clone(), stop.clone(), flood.clone());
            flooding.push(tokio::spawn(async move {
                let statuses = ["EXECUTING", "SCHEDULED"];
                let mut step = n;
                while !stop.is_cancelled() {
                    let status = statuses[step % 2];
                    step += 1;
                    let done = a
                        .gql(UPDATE_TASK, json!({ "task": task, "status": status }))
                        .await;
                    let counter = if done.is_ok() {
                        &flood.updates
                    } else {
                        &flood.errors
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let rate = args.neighbour_rate.max(1);
    let pace = Some(Duration::from_secs_f64(1.0 / rate as f64));
    let warm = rate * WARMUP.as_secs() as usize;
    let warm = record(server, args, warm, pace, progress).await;
    arrived(receiver, &warm, Duration::from_secs(30), args).await;
    let (started, cpu_start) = (Instant::now(), server.cpu());
    let updates_before = flood.updates.load(Ordering::Relaxed);
    let recorded = record(server, args, rate * args.seconds as usize, pace, progress).await;
    let landed = arrived(receiver, &recorded, DELIVERY_DEADLINE, args).await;
    let cpu_end = server.cpu();
    let seconds = started.elapsed().as_secs_f64();
    let updates = flood.updates.load(Ordering::Relaxed) - updates_before;
    stop.cancel();
    for handle in flooding {
        let _ = handle.await;
    }
    let mut latencies = Vec::new();
    for (key, acked) in &recorded.acks {
        for at in landed.get(key).into_iter().flatten() {
            latencies.push(at.saturating_duration_since(*acked));
        }
    }
    let delivered = latencies.len();
    let events = recorded.acks.len();
    let mut round_trips = recorded.round_trips.clone();
    round_trips.sort();
    Ok(Figures {
        scenario: name.into(),
        backend: backend(args).into(),
        events,
        deliveries: delivered,
        events_per_second: events as f64 / seconds.max(1e-9),
        deliveries_per_second: delivered as f64 / seconds.max(1e-9),
        seconds,
        errors: recorded.errors + events.saturating_sub(delivered),
        peak_rss_mib: server.peak_rss_mib(),
        mutation_p50_ms: percentile(&round_trips, 0.50),
        mutation_p99_ms: percentile(&round_trips, 0.99),
        neighbour_updates: neighbour.then_some(updates),
        neighbour_errors: neighbour.then(|| flood.errors.load(Ordering::Relaxed)),
        ..Figures::default()
    }
    .with_latencies(latencies)
    .with_cpu(cpu::Spent::between(&cpu_start, &cpu_end)))
}

/// Organization A on `server`: a repository, and one endpoint whose receiver answers after
/// `--slow-ms`; the server as A's token sees it.
async fn neighbour_organization(
    server: &Server,
    receiver: &Receiver,
    args: &BenchArgs,
) -> anyhow::Result<Server> {
    let token = server.add_organization("neighbour").await?;
    let a = server.as_organization(token.clone(), String::new());
    let viewer = a.gql("{ viewer { uid } }", json!({})).await?;
    let owner = viewer["viewer"]["uid"].clone();
    let created = a
        .gql(
            "mutation($owner: ID!) { createRepository(input: {ownerUid: $owner, name: \"neighbour\"}) { repository { id } } }",
            json!({ "owner": owner }),
        )
        .await
        .context("creating A's repository")?;
    let a = server.as_organization(
        token,
        created["createRepository"]["repository"]["id"]
            .as_str()
            .context("A's repository has no id")?
            .to_owned(),
    );
    let url = receiver.url(&format!("{SLOW}{}/endpoint/neighbour", args.slow_ms));
    a.gql(
        "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id } } }",
        json!({ "input": {
            "ownerUid": owner,
            "webhookURL": url,
            "secretToken": "bench-secret",
            "events": ["TASK"],
            "payloadQuery": "task(id: $taskId) { id status }",
        } }),
    )
    .await
    .context("adding A's endpoint")?;
    Ok(a)
}

/// One build of A's with `count` tasks; their ids.
async fn flooded_tasks(a: &Arc<Server>, count: usize) -> anyhow::Result<Vec<String>> {
    let build = a
        .gql(CREATE_BUILD, json!({ "repo": a.repository() }))
        .await?["createBuild"]["build"]["id"]
        .as_str()
        .context("A's build has no id")?
        .to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let mut creating = Vec::new();
    for _ in 0..SETUP_CLIENTS.min(count.max(1)) {
        let (a, next, build) = (a.clone(), next.clone(), build.clone());
        creating.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < count {
                let data = a.gql(CREATE_TASK, json!({ "build": build })).await?;
                let id = data["createTask"]["task"]["id"]
                    .as_str()
                    .context("a task has no id")?;
                ids.push(id.to_owned());
            }
            anyhow::Ok(ids)
        }));
    }
    let mut tasks = Vec::with_capacity(count);
    for handle in creating {
        tasks.extend(handle.await??);
    }
    Ok(tasks)
}

/// Waits until every event `recorded` acknowledged has arrived, or `deadline` passed, or the
/// bench is interrupted; when each arrived, by event key.
async fn arrived(
    receiver: &Receiver,
    recorded: &Recorded,
    deadline: Duration,
    args: &BenchArgs,
) -> std::collections::HashMap<String, Vec<Instant>> {
    let keys: Vec<&String> = recorded.acks.keys().collect();
    let until = Instant::now() + deadline;
    while receiver.arrived_of(&keys) < keys.len()
        && Instant::now() < until
        && !args.interrupted.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all = receiver.arrivals();
    keys.into_iter()
        .filter_map(|key| Some((key.clone(), all.get(key)?.clone())))
        .collect()
}
