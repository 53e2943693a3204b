//! A per-runtime profile: tasks and busy time per device, and where the scheduler spends
//! its time per task, printed when the runtime shuts down.
//!
//! Enabled with [`Builder::profile`](crate::Builder::profile) or `PARLA_PROFILE=1`. Each
//! phase is timed with two clock reads, so leave it off when measuring overhead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::runtime::RtInner;

/// The phases of a task's life on a driver.
#[derive(Clone, Copy)]
pub(crate) enum Phase {
    /// Setting the task up to run (on a GPU: stream, waits).
    Start = 0,
    /// Polling its body (with the device context entered).
    Poll = 1,
    /// Completing it: release, fences, notifying dependents, launching what follows.
    Finish = 2,
    /// GPU tasks, within `Finish`: the backend recording the fence.
    Fence = 3,
    /// GPU tasks, within `Finish`: releasing dependents behind the fence.
    Runahead = 4,
    /// GPU tasks, within `Finish`: handing the fence to the poller.
    Watch = 5,
}

const PHASES: [&str; 6] = ["start", "poll", "finish", "fence", "runahead", "watch"];

pub(crate) struct Profile {
    phase_ns: [AtomicU64; 6],
    tasks: Box<[AtomicU64]>,
    busy_ns: Box<[AtomicU64]>,
}

impl Profile {
    pub(crate) fn new(devices: usize) -> Profile {
        Profile {
            phase_ns: Default::default(),
            tasks: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            busy_ns: (0..devices).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Time spent in `phase` from `from` to `to`.
    pub(crate) fn add(&self, phase: Phase, from: Instant, to: Instant) {
        let ns = to.duration_since(from).as_nanos() as u64;
        self.phase_ns[phase as usize].fetch_add(ns, Ordering::Relaxed);
    }

    /// A task's body was polled from `from` to `to` on device `slot`.
    pub(crate) fn poll(&self, slot: usize, from: Instant, to: Instant) {
        self.add(Phase::Poll, from, to);
        let ns = to.duration_since(from).as_nanos() as u64;
        self.busy_ns[slot].fetch_add(ns, Ordering::Relaxed);
    }

    /// A task finished on device `slot`.
    pub(crate) fn task_done(&self, slot: usize) {
        self.tasks[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// The summary, one line per device and one for the scheduler's phases.
    pub(crate) fn summary(&self, rt: &RtInner) -> String {
        let wall = rt.epoch.elapsed().as_nanos().max(1) as f64;
        let mut s = String::from("parla profile:\n");
        let mut total = 0;
        for (slot, d) in rt.devices.iter().enumerate() {
            let n = self.tasks[slot].load(Ordering::Relaxed);
            total += n;
            let busy = self.busy_ns[slot].load(Ordering::Relaxed) as f64;
            s.push_str(&format!(
                "  {}: {n} tasks, bodies polled {:.1}% of the time ({:.3} s)\n",
                d.device,
                100.0 * busy / wall,
                busy / 1e9
            ));
        }
        s.push_str("  scheduler, ns per task:");
        for (i, name) in PHASES.iter().enumerate() {
            let ns = self.phase_ns[i].load(Ordering::Relaxed) as f64;
            s.push_str(&format!(" {name} {:.0}", ns / total.max(1) as f64));
        }
        s.push('\n');
        s
    }
}
