//! CPU time as Linux accounts it in `/proc`: the machine's, split into busy, idle and taken by
//! the hypervisor (`steal`), and that of the Herald processes the bench started. On a shared
//! machine the same run can differ by a third from hour to hour; the time each delivery cost
//! and the share stolen tell a slow machine from a slow Herald.

use std::collections::HashMap;

/// A reading of the counters, in clock ticks.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// The machine's busy time: user, nice, system, irq and softirq.
    busy: u64,
    /// Idle and waiting for I/O.
    idle: u64,
    /// Taken by the hypervisor for other machines.
    steal: u64,
    /// Each process's user plus system time, by pid.
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
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            if let Some(ticks) = stat.ok().and_then(|stat| process(&stat)) {
                reading.processes.insert(pid, ticks);
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
            let ticks: u64 = end
                .processes
                .iter()
                .map(|(pid, ticks)| {
                    ticks.saturating_sub(start.processes.get(pid).copied().unwrap_or(0))
                })
                .sum();
            ticks as f64 / ticks_per_second()
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

/// User plus system time from `/proc/<pid>/stat`, whose second field, the command, is in
/// parentheses and may hold spaces: the fields after its closing one are counted from there.
fn process(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state (field 3), …, utime (field 14) and stime (field 15).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of `/proc`'s counters (`USER_HZ`).
fn ticks_per_second() -> f64 {
    // SAFETY: `sysconf` only reads a configuration value; it has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_process_time_are_taken_between_two_readings() {
        let start = machine("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        let mut end = machine("cpu  250 10 90 1000 50 5 5 40 0 0\n").unwrap();
        // busy 150 + 10 + 40 + 5 + 5 = 210, idle 200, steal 40: 450 ticks in all.
        let stat = "4242 (herald serve) S 1 2 3 4 5 6 7 8 9 10 70 30 0 0";
        assert_eq!(process(stat), Some(100));
        end.processes.insert(4242, 100);
        let spent = Spent::between(&start, &end);
        assert_eq!(spent.busy_share, Some(210.0 / 450.0));
        assert_eq!(spent.steal_share, Some(40.0 / 450.0));
        assert_eq!(spent.processes_seconds, Some(100.0 / ticks_per_second()));
        let mut later = start.clone();
        later.processes.insert(4242, 60);
        assert_eq!(
            Spent::between(&later, &end).processes_seconds,
            Some(40.0 / ticks_per_second()),
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
}
