//! `drain`: a backlog queued with no worker running, then one worker timed emptying it.

use std::sync::Arc;
use std::time::Instant;

use super::load::{Progress, backend, record};
use super::report::Figures;
use super::server::Server;
use super::sink::{Landed, Sink};
use super::{BenchArgs, DELIVERY_DEADLINE, cpu};

/// Queues `size` deliveries with no worker running (events to the `fanout` endpoints, as a
/// backlog of many receivers), then times one worker emptying the queue.
pub async fn drain(args: &BenchArgs, sink: &Sink, size: usize) -> anyhow::Result<Figures> {
    let endpoints = args.fanout.clamp(1, size.max(1));
    let events = size.div_ceil(endpoints);
    eprintln!(
        "drain-{size}: queueing {} deliveries ({events} events × {endpoints} endpoints) with no worker…",
        events * endpoints
    );
    sink.reset();
    let server = Arc::new(Server::start(args, sink, endpoints, true).await?);
    let queueing = Progress::start(&format!("drain-{size}"), sink);
    let recorded = record(&server, args, events, None, &queueing).await;
    drop(queueing);
    let queued = recorded.acks.len() * endpoints;
    let mut server =
        Arc::try_unwrap(server).map_err(|_| anyhow::anyhow!("the server is still shared"))?;
    eprintln!("drain-{size}: starting one worker…");
    let draining = Progress::start(&format!("drain-{size}"), sink);
    let (started, cpu_start) = (Instant::now(), server.cpu());
    let landed: anyhow::Result<Landed> = async {
        server.start_worker()?;
        sink.landed(args, &server, &recorded, queued, DELIVERY_DEADLINE)
            .await
    }
    .await;
    drop(draining);
    let landed = match landed {
        Ok(landed) => landed,
        Err(err) => {
            server.stop().await;
            return Err(err);
        }
    };
    let end = landed.end;
    let figures = Figures {
        scenario: format!("drain-{size}"),
        backend: backend(args).into(),
        events: recorded.acks.len(),
        deliveries: landed.count,
        deliveries_per_second: landed.count as f64
            / end.duration_since(started).as_secs_f64().max(1e-9),
        seconds: end.duration_since(started).as_secs_f64(),
        peak_rss_mib: landed.peak_rss_mib,
        errors: recorded.errors + queued.saturating_sub(landed.count),
        ..Figures::default()
    }
    .with_cpu(cpu::Spent::between(&cpu_start, &landed.cpu));
    server.stop().await;
    Ok(figures)
}
