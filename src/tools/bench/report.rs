//! The figures of one scenario, and the table that shows them.

use std::time::Duration;

use serde::Serialize;

use super::cpu::Spent;

/// Everything one scenario measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub scenario: String,
    pub backend: String,
    /// Events recorded (acknowledged mutations).
    pub events: usize,
    /// Deliveries that reached the receiver.
    pub deliveries: usize,
    pub events_per_second: f64,
    pub deliveries_per_second: f64,
    /// From a mutation's acknowledgement to its delivery's arrival, in milliseconds.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// Wall time of the measured part, in seconds.
    pub seconds: f64,
    /// The largest peak RSS of the Herald processes, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// CPU time the Herald processes the bench started spent in the measured part (API,
    /// payloads and worker; not the database's), per delivery received, in microseconds.
    pub herald_cpu_us_per_delivery: Option<f64>,
    /// The machine's busy CPU time in the measured part (Herald, the database and the bench
    /// alike), as a percentage of all its CPU time.
    pub machine_busy_percent: Option<f64>,
    /// CPU time the hypervisor took for other machines in the measured part, as a percentage
    /// of all the machine's: figures of runs with much of it are not comparable.
    pub steal_percent: Option<f64>,
    /// Failed mutations plus deliveries that never arrived.
    pub errors: usize,
    /// Deliveries per second as a share of the `ceiling` scenario's rate.
    pub ceiling_ratio: Option<f64>,
    /// `noisy-neighbour`: the 50th and 99th percentiles of the measured organization's
    /// mutations, from request to answer, in milliseconds.
    pub mutation_p50_ms: Option<f64>,
    pub mutation_p99_ms: Option<f64>,
    /// `noisy-neighbour`: the other organization's updates acknowledged while the measured one
    /// recorded, and its mutations that failed.
    pub neighbour_updates: Option<usize>,
    pub neighbour_errors: Option<usize>,
    /// How many runs these figures are the median of, by deliveries per second, when the
    /// scenario ran several times (its errors and peak RSS are then those of all runs).
    pub median_of: Option<usize>,
}

/// The run with the median rate of deliveries among `runs` (the faster of the middle two when
/// their number is even), with the errors of every run added up and the largest peak RSS; one
/// run is returned as it is.
pub fn median(mut runs: Vec<Figures>) -> Option<Figures> {
    runs.sort_by(|a, b| a.deliveries_per_second.total_cmp(&b.deliveries_per_second));
    let count = runs.len();
    let errors = runs.iter().map(|f| f.errors).sum();
    let peak = runs.iter().filter_map(|f| f.peak_rss_mib).reduce(f64::max);
    let mut middle = runs.into_iter().nth(count / 2)?;
    middle.errors = errors;
    middle.peak_rss_mib = peak;
    middle.median_of = (count > 1).then_some(count);
    Some(middle)
}

impl Figures {
    /// Fills the CPU figures from what was spent in the measured part.
    pub fn with_cpu(mut self, spent: Spent) -> Self {
        self.herald_cpu_us_per_delivery = spent
            .processes_seconds
            .filter(|_| self.deliveries > 0)
            .map(|seconds| seconds * 1e6 / self.deliveries as f64);
        self.machine_busy_percent = spent.busy_share.map(|share| share * 100.0);
        self.steal_percent = spent.steal_share.map(|share| share * 100.0);
        self
    }

    /// Fills the latency percentiles from a list of latencies.
    pub fn with_latencies(mut self, mut latencies: Vec<Duration>) -> Self {
        latencies.sort();
        self.latency_p50_ms = percentile(&latencies, 0.50);
        self.latency_p95_ms = percentile(&latencies, 0.95);
        self.latency_p99_ms = percentile(&latencies, 0.99);
        self.latency_max_ms = percentile(&latencies, 1.0);
        self
    }
}

/// The `q` quantile of `sorted`, by rank, in milliseconds; none of an empty list.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index].as_secs_f64() * 1000.0)
}

/// For `noisy-neighbour`, the measured organization's figures on a quiet server beside those
/// next to the other organization, and how they compare with the target (p99 at most twice the
/// quiet one); none when the scenario did not run.
pub fn neighbours(results: &[Figures]) -> Option<String> {
    let quiet = results
        .iter()
        .find(|f| f.scenario == "noisy-neighbour quiet")?;
    let noisy = results.iter().find(|f| f.scenario == "noisy-neighbour")?;
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
        _ => "-".into(),
    };
    let row = |what: &str, quiet: Option<f64>, noisy: Option<f64>| {
        format!(
            "| {what} | {} | {} | {} |\n",
            opt(quiet, 1),
            opt(noisy, 1),
            ratio(noisy, quiet)
        )
    };
    let mut out = String::from(
        "\nnoisy-neighbour: organization B's figures, alone and beside organization A\n\n",
    );
    out.push_str("| B's | quiet | beside A | ratio |\n|---|---:|---:|---:|\n");
    out.push_str(&row(
        "acknowledgement → arrival p50 ms",
        quiet.latency_p50_ms,
        noisy.latency_p50_ms,
    ));
    out.push_str(&row(
        "acknowledgement → arrival p99 ms",
        quiet.latency_p99_ms,
        noisy.latency_p99_ms,
    ));
    out.push_str(&row(
        "mutation p50 ms",
        quiet.mutation_p50_ms,
        noisy.mutation_p50_ms,
    ));
    out.push_str(&row(
        "mutation p99 ms",
        quiet.mutation_p99_ms,
        noisy.mutation_p99_ms,
    ));
    let met = match (noisy.latency_p99_ms, quiet.latency_p99_ms) {
        (Some(noisy), Some(quiet)) if noisy <= 2.0 * quiet => "met",
        (Some(_), Some(_)) => "not met",
        _ => "not measured",
    };
    out.push_str(&format!(
        "\nTarget, B's p99 beside A at most 2× its quiet p99: {met}. A had {} updates acknowledged meanwhile ({} failed).\n",
        noisy.neighbour_updates.unwrap_or(0),
        noisy.neighbour_errors.unwrap_or(0),
    ));
    Some(out)
}

fn opt(value: Option<f64>, precision: usize) -> String {
    value
        .map(|v| format!("{v:.precision$}"))
        .unwrap_or_else(|| "-".into())
}

/// The results as a Markdown table, headed by what was measured (`SQLite`, `PostgreSQL`, or the
/// server the bench was pointed at).
pub fn table(results: &[Figures], target: &str) -> String {
    let mut out = format!("\nherald bench on {target}\n\n");
    out.push_str("| scenario | events | events/s | deliveries | deliveries/s | vs ceiling | p50 ms | p95 ms | p99 ms | max ms | seconds | peak RSS MiB | Herald CPU µs/delivery | busy % | steal % | errors |\n");
    out.push_str(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in results {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} |\n",
            match f.median_of {
                Some(runs) => format!("{} (median of {runs})", f.scenario),
                None => f.scenario.clone(),
            },
            f.events,
            f.events_per_second,
            f.deliveries,
            f.deliveries_per_second,
            f.ceiling_ratio
                .map(|r| format!("{:.1} %", r * 100.0))
                .unwrap_or_else(|| "-".into()),
            opt(f.latency_p50_ms, 1),
            opt(f.latency_p95_ms, 1),
            opt(f.latency_p99_ms, 1),
            opt(f.latency_max_ms, 1),
            f.seconds,
            opt(f.peak_rss_mib, 1),
            opt(f.herald_cpu_us_per_delivery, 0),
            opt(f.machine_busy_percent, 0),
            opt(f.steal_percent, 1),
            f.errors,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_taken_by_rank() {
        let latencies = (1..=100).map(Duration::from_millis).collect();
        let figures = Figures::default().with_latencies(latencies);
        assert_eq!(figures.latency_p50_ms, Some(50.0));
        assert_eq!(figures.latency_p99_ms, Some(99.0));
        assert_eq!(figures.latency_max_ms, Some(100.0));
    }

    #[test]
    fn the_median_run_keeps_every_runs_errors_and_the_largest_rss() {
        let run = |rate: f64, errors: usize, rss: f64| Figures {
            deliveries_per_second: rate,
            errors,
            peak_rss_mib: Some(rss),
            ..Figures::default()
        };
        let median = median(vec![
            run(300.0, 0, 20.0),
            run(100.0, 2, 40.0),
            run(200.0, 1, 30.0),
        ])
        .unwrap();
        assert_eq!(median.deliveries_per_second, 200.0);
        assert_eq!(median.errors, 3);
        assert_eq!(median.peak_rss_mib, Some(40.0));
        assert_eq!(median.median_of, Some(3));
        assert!(super::median(Vec::new()).is_none());
    }
}
