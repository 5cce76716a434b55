//! Where the bench's deliveries go (the built-in receiver, or the user's of `--receiver-url`),
//! and how their arrivals are read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::BenchArgs;
use super::cpu;
use super::load::Recorded;
use super::receiver::Receiver;
use super::server::Server;

/// Where the bench's deliveries go, and so where their arrivals are read.
pub enum Sink {
    /// The built-in receiver, which records each arrival as it comes.
    Builtin(Receiver),
    /// A receiver of the user's (`--receiver-url`): arrivals are read from Herald's delivery log.
    External(url::Url),
}

impl Sink {
    /// The URL of a scenario's `index`th endpoint.
    pub(super) fn endpoint_url(&self, index: usize) -> String {
        match self {
            Sink::Builtin(receiver) => receiver.url(&format!("/herald-bench/endpoint/{index}")),
            Sink::External(url) => {
                let mut url = url.clone();
                url.query_pairs_mut()
                    .append_pair("herald-bench-endpoint", &index.to_string());
                url.to_string()
            }
        }
    }

    /// The URL of the `ceiling` scenario's plain POSTs.
    pub(super) fn ceiling_url(&self) -> String {
        match self {
            Sink::Builtin(receiver) => receiver.url("/ceiling"),
            Sink::External(url) => url.to_string(),
        }
    }

    /// Forgets every arrival (between scenarios, and after a warm-up).
    pub(super) fn reset(&self) {
        if let Sink::Builtin(receiver) = self {
            receiver.reset();
        }
    }

    /// Waits until the `expected` deliveries of the events `recorded` acknowledged arrived, or
    /// `deadline` passed, or the bench is interrupted, and reads when each arrived.
    pub(super) async fn landed(
        &self,
        args: &BenchArgs,
        server: &Server,
        recorded: &Recorded,
        expected: usize,
        deadline: Duration,
    ) -> anyhow::Result<Landed> {
        let interrupted = args.interrupted.cancelled();
        match self {
            Sink::Builtin(receiver) => {
                let last = tokio::select! {
                    last = receiver.wait_for(expected, deadline) => last,
                    () = interrupted => None,
                };
                Ok(Landed {
                    count: receiver.count(),
                    by_key: receiver.arrivals(),
                    end: last.unwrap_or_else(Instant::now),
                    peak_rss_mib: server.peak_rss_mib(),
                    cpu: server.cpu(),
                })
            }
            Sink::External(_) => {
                let finished = tokio::select! {
                    finished = server.wait_finished(deadline) => finished?,
                    () = interrupted => false,
                };
                // Before the log is read: serving it is not part of the scenario.
                let mut landed = Landed {
                    count: 0,
                    by_key: HashMap::new(),
                    end: Instant::now(),
                    peak_rss_mib: server.peak_rss_mib(),
                    cpu: server.cpu(),
                };
                if args.interrupted.is_cancelled() {
                    return Ok(landed);
                }
                let mut last = None;
                for (key, at) in server.answers().await? {
                    if recorded.acks.contains_key(&key) {
                        landed.count += 1;
                        last = last.max(Some(at));
                        landed.by_key.entry(key).or_default().push(at);
                    }
                }
                if finished && landed.count >= expected {
                    landed.end = last.unwrap_or(landed.end);
                }
                Ok(landed)
            }
        }
    }
}

/// What reached the receiver.
pub(super) struct Landed {
    /// Deliveries that arrived.
    pub(super) count: usize,
    /// When each arrived, by event key.
    pub(super) by_key: HashMap<String, Vec<Instant>>,
    /// When the last expected one arrived, or when the wait for it ended (the deadline passed).
    pub(super) end: Instant,
    /// The largest peak RSS of the Herald processes the bench started, once they had arrived.
    pub(super) peak_rss_mib: Option<f64>,
    /// CPU time counters, read then.
    pub(super) cpu: cpu::Reading,
}
