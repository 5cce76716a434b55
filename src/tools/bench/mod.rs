//! `herald bench`: end-to-end throughput, latency and memory, measured the way users drive
//! Herald (GraphQL mutations in, signed POSTs out), beside the machine's own ceiling.
//!
//! Every scenario gets a fresh database and a fresh `herald serve` child process (so its peak
//! RSS is its own), or with `--url` fresh endpoints on a server already running; deliveries go
//! to a built-in receiver on loopback, or with `--receiver-url` to the user's, whose arrivals
//! are read from Herald's delivery log. Every run stops by itself.

mod ceiling;
mod cpu;
mod drain;
mod load;
mod noisy;
mod receiver;
mod report;
mod server;
mod setup;
mod sink;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

pub use report::Figures;

/// Options of `herald bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenarios to run (comma-separated): ingest-deliver, fanout, steady, burst, drain,
    /// noisy-neighbour, ceiling [default: all of them; with --url, all but drain and
    /// noisy-neighbour].
    #[arg(long, value_delimiter = ',')]
    pub scenario: Option<Vec<String>>,
    /// `sqlite` (a fresh file per scenario) or a `postgres://…` server URL (a fresh database per
    /// scenario is created on it and dropped afterwards).
    #[arg(long, default_value = "sqlite")]
    pub database_url: String,
    /// Measure a Herald server already running on this machine instead of starting one: its
    /// base URL (loopback only). The server must allow private targets
    /// (`HERALD_ALLOW_PRIVATE_TARGETS=true`) to reach the bench's receiver; each scenario adds a
    /// repository and its own endpoints to the token's organization, which must have no
    /// endpoints of its own, and deletes the endpoints afterwards.
    #[arg(long, value_parser = parse_loopback_url)]
    pub url: Option<url::Url>,
    /// An ADMIN token of the organization to measure in, with --url (`herald token issue`).
    #[arg(long, env = "HERALD_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Deliver to this receiver on this machine instead of the built-in one (loopback only).
    /// It must answer 2xx; deliveries are signed with the secret `bench-secret`. It is given
    /// every delivery, each endpoint's with `?herald-bench-endpoint=N` added; arrivals are
    /// then read from Herald's delivery log, as the time each answer came, to the millisecond.
    #[arg(long, value_parser = parse_loopback_url)]
    pub receiver_url: Option<url::Url>,
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
    /// `noisy-neighbour`: events per second organization B records (for `--seconds`).
    #[arg(long, default_value_t = 50)]
    pub neighbour_rate: usize,
    /// `noisy-neighbour`: deliveries organization A has queued to its slow endpoint.
    #[arg(long, default_value_t = 20_000)]
    pub backlog: usize,
    /// `noisy-neighbour`: how long A's receiver takes to answer, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub slow_ms: u64,
    /// `noisy-neighbour`: concurrent updates A keeps in flight, on the tasks of one build (at
    /// most the 200 tasks a build may have).
    #[arg(long, default_value_t = crate::domain::limits::MAX_TASKS_PER_BUILD)]
    pub flood: usize,
    /// Requests of the `ceiling` loop.
    #[arg(long, default_value_t = 200_000)]
    pub requests: usize,
    /// Small counts everywhere: a quick check that every scenario works.
    #[arg(long)]
    pub quick: bool,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Cancelled on Ctrl-C: the running scenario stops early, and its server is stopped and
    /// what it added removed as usual.
    #[arg(skip)]
    pub interrupted: tokio_util::sync::CancellationToken,
}

/// Every scenario, in the order they run by default.
const SCENARIOS: [&str; 7] = [
    "ceiling",
    "ingest-deliver",
    "fanout",
    "steady",
    "burst",
    "drain",
    "noisy-neighbour",
];

/// Scenarios that run only on a server the bench starts, with its own receiver.
const OWN_SERVER_ONLY: [&str; 2] = ["drain", "noisy-neighbour"];

impl BenchArgs {
    /// The scenarios to run: those asked for, or by default every one the target allows.
    fn scenarios(&self) -> Vec<String> {
        match &self.scenario {
            Some(chosen) => chosen.clone(),
            None => SCENARIOS
                .iter()
                .filter(|name| self.url.is_none() || !OWN_SERVER_ONLY.contains(name))
                .map(|name| (*name).to_owned())
                .collect(),
        }
    }

    /// Refuses combinations of options that cannot run, before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        for name in self.scenarios() {
            if !SCENARIOS.contains(&name.as_str()) {
                anyhow::bail!(
                    "unknown scenario {name:?}; choose from {}",
                    SCENARIOS.join(", ")
                );
            }
        }
        if self.receiver_url.is_some() && self.scenarios().iter().any(|s| s == "noisy-neighbour") {
            anyhow::bail!(
                "noisy-neighbour reads arrivals at the bench's own receiver (one of its endpoints answers slowly on purpose): leave out --receiver-url or the noisy-neighbour scenario"
            );
        }
        let most = crate::domain::limits::MAX_TASKS_PER_BUILD;
        if self.flood > most {
            anyhow::bail!(
                "--flood {} is more than the {most} tasks a build may have: give at most {most}",
                self.flood
            );
        }
        if self.url.is_none() {
            return Ok(());
        }
        if self.token.as_deref().is_none_or(str::is_empty) {
            anyhow::bail!(
                "--url needs an ADMIN token of the organization to measure in: pass --token or set HERALD_BENCH_TOKEN (herald token issue prints one)"
            );
        }
        if self.scenarios().iter().any(|name| name == "drain") {
            anyhow::bail!(
                "drain stops and starts Herald's worker, so it runs only on a server the bench starts: leave out --url or the drain scenario"
            );
        }
        if self
            .scenarios()
            .iter()
            .any(|name| name == "noisy-neighbour")
        {
            anyhow::bail!(
                "noisy-neighbour adds a second organization to the database, so it runs only on a server the bench starts: leave out --url or the noisy-neighbour scenario"
            );
        }
        if self.workers > 0 {
            anyhow::bail!(
                "--workers adds worker processes to a server the bench starts; with --url, start them beside your server yourself"
            );
        }
        if self.database_url != "sqlite" {
            anyhow::bail!(
                "--database-url chooses the database of a server the bench starts; with --url, the server keeps its own"
            );
        }
        Ok(())
    }

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
            self.backlog = self.backlog.min(300);
            self.flood = self.flood.min(50);
        }
        self
    }
}

/// Runs the chosen scenarios and prints the table (and JSON when asked).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    args.check()?;
    let args = args.scaled();
    server::check_server(&args).await?;
    let sink = match &args.receiver_url {
        Some(url) => sink::Sink::External(url.clone()),
        None => sink::Sink::Builtin(
            receiver::Receiver::start()
                .await
                .context("starting the bench receiver")?,
        ),
    };
    let interrupted = args.interrupted.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: stopping the scenario and removing what it added…");
            interrupted.cancel();
        }
    });
    let scenarios = args.scenarios();
    let mut results: Vec<Figures> = Vec::new();
    if scenarios.iter().any(|s| s == "ceiling") {
        results.push(ceiling::ceiling(&args, &sink).await?);
    }
    for scenario in &scenarios {
        if args.interrupted.is_cancelled() {
            break;
        }
        let figures = match scenario.as_str() {
            "ceiling" => continue,
            "ingest-deliver" => vec![load::ingest_deliver(&args, &sink).await?],
            "fanout" => vec![load::fanout(&args, &sink).await?],
            "steady" => vec![load::steady(&args, &sink).await?],
            "burst" => vec![load::burst(&args, &sink).await?],
            "noisy-neighbour" => noisy::noisy_neighbour(&args, &sink).await?,
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
                        if !args.interrupted.is_cancelled() {
                            figures.push(drain::drain(&args, &sink, *size).await?);
                        }
                    }
                    all.extend(report::median(figures));
                }
                all
            }
            other => unreachable!("scenario {other:?} passed the check"),
        };
        results.extend(figures);
    }
    if args.interrupted.is_cancelled() {
        anyhow::bail!("interrupted; what the bench started was stopped and what it added removed");
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
    println!("{}", report::table(&results, &target(&args)));
    if let Some(neighbours) = report::neighbours(&results) {
        println!("{neighbours}");
    }
    if args.receiver_url.is_some() {
        println!(
            "Arrivals were read from Herald's delivery log: the time each answer came, to the millisecond."
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// What the table's heading says was measured.
fn target(args: &BenchArgs) -> String {
    match &args.url {
        Some(url) => format!("the server at {url}"),
        None if args.database_url.starts_with("postgres") => "PostgreSQL".into(),
        None => "SQLite".into(),
    }
}

/// Reads a URL naming this machine: the bench measures on loopback only.
fn parse_loopback_url(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value)
        .map_err(|err| format!("not a URL ({err}): write it whole, like http://127.0.0.1:8080"))?;
    if url.scheme() != "http" {
        return Err("use an http:// URL (the bench measures over plain loopback HTTP)".into());
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !loopback {
        return Err(
            "the bench measures on loopback only: use 127.0.0.1, [::1] or localhost".into(),
        );
    }
    Ok(url)
}

/// How long a scenario may wait for its deliveries before it reports what it has.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(300);

/// Drains of at most this many deliveries are short enough to be run several times.
const SHORT_DRAIN: usize = 10_000;

/// How many times a short drain runs; its figures are the median run's.
const SHORT_DRAIN_RUNS: usize = 5;
