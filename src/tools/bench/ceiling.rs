//! `ceiling`: plain POSTs to the receiver, without Herald, for the machine's own limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::report::Figures;
use super::sink::Sink;
use super::{BenchArgs, cpu};

/// Plain keep-alive POSTs from the same HTTP client to the same receiver: the machine's limit.
pub async fn ceiling(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Figures> {
    eprintln!("ceiling: {} plain POSTs…", args.requests);
    sink.reset();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let (started, cpu_start) = (Instant::now(), cpu::Reading::now(&[]));
    let mut handles = Vec::new();
    for _ in 0..args.clients {
        let (client, next, url) = (client.clone(), next.clone(), sink.ceiling_url());
        let (total, interrupted) = (args.requests, args.interrupted.clone());
        handles.push(tokio::spawn(async move {
            let (mut answered, mut errors) = (0, 0);
            while next.fetch_add(1, Ordering::SeqCst) < total && !interrupted.is_cancelled() {
                let body =
                    r#"{"action":"updated","data":{"task":{"id":"0","status":"EXECUTING"}}}"#;
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => answered += 1,
                    _ => errors += 1,
                }
            }
            (answered, errors)
        }));
    }
    let (mut answered, mut errors) = (0, 0);
    for handle in handles {
        let (a, e) = handle.await.unwrap_or((0, 1));
        answered += a;
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Figures {
        scenario: "ceiling".into(),
        backend: "-".into(),
        deliveries: answered,
        deliveries_per_second: answered as f64 / seconds,
        seconds,
        errors,
        ..Figures::default()
    }
    .with_cpu(cpu::Spent::between(&cpu_start, &cpu::Reading::now(&[]))))
}
