//! `herald bench`: end-to-end throughput, latency and memory, measured the way users drive
//! Herald (GraphQL mutations in, signed POSTs out), beside the machine's own ceiling.
//!
//! Every scenario gets a fresh database and a fresh `herald serve` child process (so its peak
//! RSS is its own), a built-in receiver on loopback, and stops by itself.

mod load;
mod receiver;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

pub use report::Figures;

/// Options of `herald bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenarios to run (comma-separated): ingest-deliver, fanout, steady, burst, drain, ceiling.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ceiling,ingest-deliver,fanout,steady,burst,drain"
    )]
    pub scenario: Vec<String>,
    /// `sqlite` (a fresh file per scenario) or a `postgres://…` server URL (a fresh database per
    /// scenario is created on it and dropped afterwards).
    #[arg(long, default_value = "sqlite")]
    pub database_url: String,
    /// Extra `herald worker` processes beside the server's own worker.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Concurrent GraphQL clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Tasks each client records in one build before it starts the next (a build's events
    /// reach an endpoint in order).
    #[arg(long, default_value_t = 10)]
    pub tasks_per_build: usize,
    /// Events recorded by `ingest-deliver` and `fanout`.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Endpoints per event in `fanout`.
    #[arg(long, default_value_t = 50)]
    pub fanout: usize,
    /// Events per second in `steady`.
    #[arg(long, default_value_t = 200)]
    pub rate: usize,
    /// Seconds `steady` runs.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Events recorded at once in `burst`.
    #[arg(long, default_value_t = 10_000)]
    pub burst: usize,
    /// Backlog sizes `drain` empties (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,100000")]
    pub drain: Vec<usize>,
    /// Requests of the `ceiling` loop.
    #[arg(long, default_value_t = 200_000)]
    pub requests: usize,
    /// Small counts everywhere: a quick check that every scenario works.
    #[arg(long)]
    pub quick: bool,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl BenchArgs {
    fn scaled(mut self) -> Self {
        if self.quick {
            self.events = self.events.min(400);
            self.fanout = self.fanout.min(10);
            self.rate = self.rate.min(50);
            self.seconds = self.seconds.min(2);
            self.burst = self.burst.min(400);
            self.drain = self.drain.iter().map(|n| (*n).min(300)).collect();
            self.requests = self.requests.min(2_000);
            self.clients = self.clients.min(8);
        }
        self
    }
}

/// Runs the chosen scenarios and prints the table (and JSON when asked).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = args.scaled();
    let receiver = receiver::Receiver::start()
        .await
        .context("starting the bench receiver")?;
    let mut results: Vec<Figures> = Vec::new();
    let ceiling_first = args.scenario.iter().any(|s| s == "ceiling");
    if ceiling_first {
        results.push(load::ceiling(&args, &receiver).await?);
    }
    for scenario in &args.scenario {
        let figures = match scenario.as_str() {
            "ceiling" => continue,
            "ingest-deliver" => vec![load::ingest_deliver(&args, &receiver).await?],
            "fanout" => vec![load::fanout(&args, &receiver).await?],
            "steady" => vec![load::steady(&args, &receiver).await?],
            "burst" => vec![load::burst(&args, &receiver).await?],
            "drain" => {
                let mut all = Vec::new();
                for size in &args.drain {
                    // A short drain lasts a fraction of a second, where one run's rate moves
                    // by a quarter or more from run to run: it is taken as the median of several.
                    let runs = if *size <= SHORT_DRAIN && !args.quick {
                        SHORT_DRAIN_RUNS
                    } else {
                        1
                    };
                    let mut figures = Vec::with_capacity(runs);
                    for _ in 0..runs {
                        figures.push(load::drain(&args, &receiver, *size).await?);
                    }
                    all.extend(report::median(figures));
                }
                all
            }
            other => anyhow::bail!(
                "unknown scenario {other:?}; choose from ingest-deliver, fanout, steady, burst, drain, ceiling"
            ),
        };
        results.extend(figures);
    }
    let ceiling = results
        .iter()
        .find(|f| f.scenario == "ceiling")
        .map(|f| f.deliveries_per_second);
    for figures in &mut results {
        figures.ceiling_ratio = ceiling
            .filter(|c| *c > 0.0)
            .map(|c| figures.deliveries_per_second / c);
    }
    println!("{}", report::table(&results, &args.database_url));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// How long a scenario may wait for its deliveries before it reports what it has.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(300);

/// Drains of at most this many deliveries are short enough to be run several times.
const SHORT_DRAIN: usize = 10_000;

/// How many times a short drain runs; its figures are the median run's.
const SHORT_DRAIN_RUNS: usize = 5;
