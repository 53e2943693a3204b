//! The profile summary: what the devices did, how long tasks waited, what the runtime cost.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Intervals kept before overlapping ones are merged.
const INTERVALS: usize = 512;

/// A distribution of waits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The longest.
    pub max: Duration,
}

/// One device in a [`Summary`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSummary {
    /// The device (`cpu:0`, `gpu:1`).
    pub device: String,
    /// Tasks that ran on it (failed ones included).
    pub tasks: u64,
    /// Of those, how many failed.
    pub failed: u64,
    /// The fraction of the makespan during which at least one task ran on it: on a GPU,
    /// while its kernels ran (CUDA event times); on the CPU, while a task was polled (to
    /// its completion; a task that suspends is not busy while it waits); on a virtual GPU,
    /// from a task's first poll to its completion.
    pub busy: f64,
}

/// What a traced run did, from the tasks' pipeline events.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Tasks whose body ran (failed ones included).
    pub tasks_run: u64,
    /// Tasks whose body ran and that failed (an error, a panic, a device fault).
    pub tasks_failed: u64,
    /// Tasks that never ran: a dependency failed, or they were cancelled or refused.
    pub tasks_never_ran: u64,
    /// Per device, in order of first use.
    pub devices: Vec<DeviceSummary>,
    /// From spawn until the dependencies finished.
    pub wait_dependencies: Percentiles,
    /// From ready until the device admitted it (VCUs and memory free).
    pub wait_admission: Percentiles,
    /// From admission until a worker polled it.
    pub wait_worker: Percentiles,
    /// Workers' time outside task bodies per task run: mapping, admission, starting,
    /// completing, notifying dependents, freeing tasks (handing events to the trace and the
    /// GPU poller's thread not included). Bodies that block (`std::thread::sleep`, blocking
    /// I/O) are counted as bodies for as long as they block. `None` when no worker
    /// reported.
    pub overhead_per_task: Option<Duration>,
    /// From the first spawn to the last completion.
    pub makespan: Duration,
    /// The longest chain of dependent tasks, by their run times (a GPU task's by its
    /// kernels' time): no schedule can finish faster.
    pub critical_path: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "parla profile: {} tasks run ({} failed), {} never ran",
            self.tasks_run, self.tasks_failed, self.tasks_never_ran
        )?;
        let ratio = if self.critical_path.is_zero() {
            String::new()
        } else {
            format!(
                " ({:.2}x)",
                self.makespan.as_secs_f64() / self.critical_path.as_secs_f64()
            )
        };
        writeln!(
            f,
            "  makespan {}, critical path {}{ratio}",
            Human(self.makespan),
            Human(self.critical_path)
        )?;
        for d in &self.devices {
            writeln!(
                f,
                "  {}: {} tasks ({} failed), busy {:.1}%",
                d.device,
                d.tasks,
                d.failed,
                100.0 * d.busy
            )?;
        }
        for (what, p) in [
            ("dependencies", &self.wait_dependencies),
            ("admission", &self.wait_admission),
            ("a worker", &self.wait_worker),
        ] {
            writeln!(
                f,
                "  wait for {what}: p50 {}, p99 {}, max {}",
                Human(p.p50),
                Human(p.p99),
                Human(p.max)
            )?;
        }
        match self.overhead_per_task {
            Some(o) => writeln!(
                f,
                "  runtime overhead: {} per task (workers' time outside task bodies)",
                Human(o)
            ),
            None => writeln!(f, "  runtime overhead: no worker reported"),
        }
    }
}

/// A duration in the unit that reads best.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos() as f64;
        if ns < 1e3 {
            write!(f, "{ns:.0} ns")
        } else if ns < 1e6 {
            write!(f, "{:.1} us", ns / 1e3)
        } else if ns < 1e9 {
            write!(f, "{:.2} ms", ns / 1e6)
        } else {
            write!(f, "{:.3} s", ns / 1e9)
        }
    }
}

/// Busy time as a union of intervals, merged as they pile up.
#[derive(Default)]
struct Intervals {
    open: Vec<(u64, u64)>,
    /// Time of intervals merged and retired (all before those in `open`).
    closed: u64,
}

impl Intervals {
    fn add(&mut self, from: u64, to: u64) {
        self.open.push((from, to.max(from)));
        if self.open.len() >= INTERVALS {
            self.merge();
            if self.open.len() >= INTERVALS / 2 {
                // Retire the older half: tasks finish roughly in time order, so later
                // intervals rarely reach back into it.
                let keep = self.open.split_off(self.open.len() / 2);
                self.closed += self.open.iter().map(|(a, b)| b - a).sum::<u64>();
                self.open = keep;
            }
        }
    }

    /// Sorts and merges overlapping intervals.
    fn merge(&mut self) {
        self.open.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.open.len());
        for &(a, b) in &self.open {
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        self.open = out;
    }

    fn total(&mut self) -> u64 {
        self.merge();
        self.closed + self.open.iter().map(|(a, b)| b - a).sum::<u64>()
    }
}

#[derive(Default)]
struct DevStats {
    tasks: u64,
    failed: u64,
    busy: Intervals,
}

fn histogram() -> Histogram<u64> {
    Histogram::new(2).expect("2 significant figures are valid")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let d = |q: f64| Duration::from_nanos(h.value_at_quantile(q));
    Percentiles {
        count: h.len(),
        p50: d(0.5),
        p99: d(0.99),
        max: Duration::from_nanos(h.max()),
    }
}

/// One finished task, as the summary counts it.
pub(crate) struct TaskTimes<'a> {
    pub(crate) device: &'a str,
    pub(crate) ran: bool,
    pub(crate) failed: bool,
    pub(crate) spawn: u64,
    pub(crate) ready: Option<u64>,
    pub(crate) admitted: Option<u64>,
    pub(crate) started: Option<u64>,
    pub(crate) end: u64,
    /// When it kept its device busy (`None` also for a task whose polls were counted one
    /// by one: [`Stats::busy`]).
    pub(crate) busy: Option<(u64, u64)>,
    /// The longest chain of tasks ending with this one.
    pub(crate) chain: u64,
}

/// Running totals behind a [`Summary`], bounded in size however many tasks run.
pub(crate) struct Stats {
    first: Option<u64>,
    last: u64,
    run: u64,
    failed: u64,
    never_ran: u64,
    devices: Vec<(String, DevStats)>,
    deps: Histogram<u64>,
    admission: Histogram<u64>,
    worker: Histogram<u64>,
    driver_ns: u64,
    body_ns: u64,
    driver_reports: u64,
    critical: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            first: None,
            last: 0,
            run: 0,
            failed: 0,
            never_ran: 0,
            devices: Vec::new(),
            deps: histogram(),
            admission: histogram(),
            worker: histogram(),
            driver_ns: 0,
            body_ns: 0,
            driver_reports: 0,
            critical: 0,
        }
    }
}

impl Stats {
    pub(crate) fn spawned(&mut self, at: u64) {
        self.first = Some(self.first.map_or(at, |f| f.min(at)));
    }

    pub(crate) fn task(&mut self, t: TaskTimes<'_>) {
        self.last = self.last.max(t.end);
        self.critical = self.critical.max(t.chain);
        if !t.ran {
            self.never_ran += 1;
            return;
        }
        self.run += 1;
        self.failed += t.failed as u64;
        let dev = self.device(t.device);
        dev.tasks += 1;
        dev.failed += t.failed as u64;
        if let Some((a, b)) = t.busy {
            dev.busy.add(a, b);
        }
        let gap = |h: &mut Histogram<u64>, from: Option<u64>, to: Option<u64>| {
            if let (Some(a), Some(b)) = (from, to) {
                // Resizes as needed; a value beyond any range (centuries) is dropped.
                let _ = h.record(b.saturating_sub(a));
            }
        };
        gap(&mut self.deps, Some(t.spawn), t.ready);
        gap(&mut self.admission, t.ready, t.admitted);
        gap(&mut self.worker, t.admitted, t.started);
    }

    /// A poll of a task on `device` kept it busy from `from` to `to` (a task that suspends
    /// is busy in its polls, not while it waits).
    pub(crate) fn busy(&mut self, device: &str, from: u64, to: u64) {
        self.device(device).busy.add(from, to);
    }

    fn device(&mut self, name: &str) -> &mut DevStats {
        match self.devices.iter().position(|(n, _)| n == name) {
            Some(i) => &mut self.devices[i].1,
            None => {
                self.devices.push((name.to_string(), DevStats::default()));
                &mut self.devices.last_mut().expect("just pushed").1
            }
        }
    }

    /// A worker's report: `driver_ns` spent running tasks, `body_ns` of it in their bodies
    /// (both read from one clock; the minimum guards against a report that is not).
    pub(crate) fn driver(&mut self, driver_ns: u64, body_ns: u64) {
        self.driver_ns += driver_ns;
        self.body_ns += body_ns.min(driver_ns);
        self.driver_reports += 1;
    }

    pub(crate) fn summary(&mut self) -> Summary {
        let makespan = self.first.map_or(0, |f| self.last.saturating_sub(f));
        let devices = self
            .devices
            .iter_mut()
            .map(|(name, d)| DeviceSummary {
                device: name.clone(),
                tasks: d.tasks,
                failed: d.failed,
                busy: (d.busy.total() as f64 / makespan.max(1) as f64).min(1.0),
            })
            .collect();
        Summary {
            tasks_run: self.run,
            tasks_failed: self.failed,
            tasks_never_ran: self.never_ran,
            devices,
            wait_dependencies: percentiles(&self.deps),
            wait_admission: percentiles(&self.admission),
            wait_worker: percentiles(&self.worker),
            overhead_per_task: (self.driver_reports > 0 && self.run > 0)
                .then(|| Duration::from_nanos((self.driver_ns - self.body_ns) / self.run.max(1))),
            makespan: Duration::from_nanos(makespan),
            critical_path: Duration::from_nanos(self.critical),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_is_the_union_of_intervals() {
        let mut i = Intervals::default();
        i.add(0, 10);
        i.add(5, 15);
        i.add(20, 30);
        i.add(22, 25);
        assert_eq!(i.total(), 25);
        let mut many = Intervals::default();
        for k in 0..10_000u64 {
            many.add(k * 10, k * 10 + 5);
        }
        assert_eq!(many.total(), 50_000);
        assert!(many.open.len() < INTERVALS);
    }
}
