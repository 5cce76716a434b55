//! CPU time as Linux accounts it in `/proc`: the machine's, split into busy, idle and taken by
//! the hypervisor (`steal`), and that of the Herald processes the bench started. On a shared
//! machine the same run can differ by a third from hour to hour; the time each delivery cost
//! and the share stolen tell a slow machine from a slow Herald.

use std::collections::HashMap;

/// A reading of the counters: the machine's in clock ticks, the processes' in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// The machine's busy time: user, nice, system, irq and softirq.
    busy: u64,
    /// Idle and waiting for I/O.
    idle: u64,
    /// Taken by the hypervisor for other machines.
    steal: u64,
    /// Each process's CPU time in nanoseconds, by pid.
    processes: HashMap<u32, u64>,
}

impl Reading {
    /// Reads the machine's counters and those of `pids` (a process that is gone is left out).
    pub fn now(pids: &[u32]) -> Self {
        let mut reading = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| machine(&stat))
            .unwrap_or_default();
        for &pid in pids {
            if let Some(nanos) = process_nanos(pid) {
                reading.processes.insert(pid, nanos);
            }
        }
        reading
    }
}

/// What was spent between two readings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spent {
    /// CPU seconds of the processes read at the end, counted from the first reading (or from
    /// their start, for those started between the two); none when no process was read.
    pub processes_seconds: Option<f64>,
    /// The machine's busy time, as a share of all its CPU time (stolen time included).
    pub busy_share: Option<f64>,
    /// Time the hypervisor took, as a share of all the machine's CPU time.
    pub steal_share: Option<f64>,
}

impl Spent {
    pub fn between(start: &Reading, end: &Reading) -> Self {
        let busy = end.busy.saturating_sub(start.busy);
        let idle = end.idle.saturating_sub(start.idle);
        let steal = end.steal.saturating_sub(start.steal);
        let all = busy + idle + steal;
        let share = |part: u64| (all > 0).then(|| part as f64 / all as f64);
        let processes = (!end.processes.is_empty()).then(|| {
            let nanos: u64 = end
                .processes
                .iter()
                .map(|(pid, nanos)| {
                    nanos.saturating_sub(start.processes.get(pid).copied().unwrap_or(0))
                })
                .sum();
            nanos as f64 / 1e9
        });
        Self {
            processes_seconds: processes,
            busy_share: share(busy),
            steal_share: share(steal),
        }
    }
}

/// The `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal …
fn machine(stat: &str) -> Option<Reading> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let at = |index: usize| fields.get(index).copied().unwrap_or(0);
    Some(Reading {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        idle: at(3) + at(4),
        steal: at(7),
        processes: HashMap::new(),
    })
}

/// The CPU time a process has used so far, in nanoseconds, from its CPU-time clock; none for a
/// process that is gone. `/proc/<pid>/stat` counts it in clock ticks, sampled 100 times a
/// second, so that a process that ran a few milliseconds could count none.
fn process_nanos(pid: u32) -> Option<u64> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: it only writes the process's clock id into `clock`, a local.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: it only writes the clock's time into `time`, a local.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        return None;
    }
    let seconds = u64::try_from(time.tv_sec).ok()?;
    Some(seconds * 1_000_000_000 + u64::try_from(time.tv_nsec).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_process_time_are_taken_between_two_readings() {
        let start = machine("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        let mut end = machine("cpu  250 10 90 1000 50 5 5 40 0 0\n").unwrap();
        // busy 150 + 10 + 40 + 5 + 5 = 210, idle 200, steal 40: 450 ticks in all.
        end.processes.insert(4242, 100_000_000);
        let spent = Spent::between(&start, &end);
        assert_eq!(spent.busy_share, Some(210.0 / 450.0));
        assert_eq!(spent.steal_share, Some(40.0 / 450.0));
        assert_eq!(spent.processes_seconds, Some(0.1));
        let mut later = start.clone();
        later.processes.insert(4242, 60_000_000);
        assert_eq!(
            Spent::between(&later, &end).processes_seconds,
            Some(0.04),
            "a process read at the start counts from there"
        );
        assert_eq!(
            Spent::between(&start, &start),
            Spent {
                processes_seconds: None,
                busy_share: None,
                steal_share: None
            }
        );
    }

    #[test]
    fn a_process_cpu_time_moves_in_steps_finer_than_a_clock_tick() {
        let me = std::process::id();
        let before = process_nanos(me).expect("this process has a CPU-time clock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let step = loop {
            let now = process_nanos(me).unwrap();
            if now > before {
                break now - before;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the clock did not move"
            );
        };
        // `/proc`'s counters move by 10 ms at a time.
        assert!(step < 10_000_000, "{step} ns");
        // The largest pid Linux can give (`pid_max` is at most 2^22): none of the few
        // processes of a test machine has it.
        assert_eq!(process_nanos((1 << 22) - 1), None, "no such process");
    }
}
