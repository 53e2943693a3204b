//! The nudger: a thread that wakes a parked Tokio worker for work it missed.
//!
//! Tokio's multi-threaded scheduler wakes a parked worker when work is queued, unless a
//! worker is searching for work (it will find it) or no worker is parked. A worker that
//! runs out of work while half of the workers search does not search itself, and it parks
//! without looking at the queues again: the work queued meanwhile is left to the searching
//! workers. If they find other work first, its wake went to a worker still unparked, and
//! the work waits until a worker's task ends. On Tokio a task is expected to yield soon,
//! so that wait is short; a task here may compute for long, or spin until other tasks run
//! (a barrier between tasks, one per worker). Then a driver started for the last of them
//! waited in Tokio's shared queue with a worker parked (and the others spinning), and the
//! program hung: 1 run in about 10 of a test running 1,000 rounds of a task per worker that
//! spins until all four run, beside 16 tasks parked on channels (a debug build on 2
//! cores). Tokio documents the case as a task that blocks (tokio-rs/tokio#4730, #6847).
//!
//! Timers wait likewise: Tokio fires them on a worker that parks, and the worker that
//! held them as it parked may wake and run such a task, leaving the others parked where
//! no timer fires.
//!
//! A Tokio task spawned from outside the pool wakes a parked worker once no worker searches:
//! that worker finds what waits (in the shared queue, or in the run queue of a worker busy
//! with a task), and as it parks again it fires the timers due. So one thread of the process
//! looks at every runtime it runs, and where a worker may be parked it spawns an empty Tokio
//! task from outside (a nudge) if
//! - work waited at two looks in a row (runnable tasks queued for a driver, or Tokio tasks
//!   in Tokio's shared queue), or
//! - a worker has been in the same task poll since the last look ([`PollMarks`]).
//!
//! A nudge can be lost as the work's own wake was (a worker searched, or had not parked
//! yet), so the next look nudges again, up to [`MAX_IN_FLIGHT`] nudges waiting to run. It
//! looks every [`LOOK_MIN`] while work waits or a task poll runs, and less often (up to
//! every [`LOOK_MAX`]) otherwise; it sleeps while no runtime runs. A runtime with one worker
//! is left alone: a task that blocks its only worker leaves nothing to wake. With the
//! nudger, the test above passed 50 runs of 50, and rounds of a task per worker that
//! sleeps and then spins until all woke (`tests/task_await.rs`) no longer hang.
//!
//! Work that waits in a worker's LIFO slot is out of its reach: Tokio runs it on that
//! worker alone, once its task ends (see `RtInner::start_drivers` for the drivers'
//! part).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::counters::Counters;
use super::{ALIVE, RtInner};

/// How often the nudger looks while work waited, or a task poll ran, at its last look.
const LOOK_MIN: Duration = Duration::from_millis(1);
/// How often it looks, at most, while neither did at its last looks: each such look
/// doubles the interval, up to this.
const LOOK_MAX: Duration = Duration::from_millis(10);

/// The most empty tasks of a runtime that wait to run at once: while workers are busy
/// with long tasks and work waits, the nudges wait too.
const MAX_IN_FLIGHT: usize = 8;

/// The nudger's thread, once started (`None` if the system refused a thread: runtimes
/// then run as Tokio alone would).
static NUDGER: OnceLock<Option<Thread>> = OnceLock::new();

/// Makes sure the nudger looks at the runtimes now running: starts it, or wakes it from
/// its sleep (called as a runtime starts).
pub(super) fn watch() {
    let t = NUDGER.get_or_init(|| {
        std::thread::Builder::new()
            .name("parla-nudger".into())
            .spawn(run)
            .ok()
            .map(|h| h.thread().clone())
    });
    if let Some(t) = t {
        t.unpark();
    }
}

/// The counts of task polls begun and ended on each thread of a runtime's Tokio pool, for
/// the nudger: a count that is odd at two looks in a row, and the same, is a task poll
/// that has run since the first (or a thread that polled one task twice in a row, at each
/// look: a nudge in vain).
#[derive(Default)]
pub(crate) struct PollMarks {
    /// Each thread's count (padded: each thread writes its own at every task poll), and
    /// what the nudger read of it last.
    threads: Mutex<Vec<(Arc<CachePadded<AtomicU32>>, u32)>>,
}

impl PollMarks {
    /// A pool thread starts: gives it its count, which lives until [`stop`](Self::stop).
    pub(crate) fn start(&self) -> *const AtomicU32 {
        let c = Arc::new(CachePadded::new(AtomicU32::new(0)));
        let p: *const AtomicU32 = &**c;
        self.threads.lock().push((c, 0));
        p
    }

    /// The pool thread that got `mark` from [`start`](Self::start) stops (and polls no
    /// more tasks).
    pub(crate) fn stop(&self, mark: *const AtomicU32) {
        self.threads
            .lock()
            .retain(|(c, _)| !std::ptr::eq(&***c, mark));
    }

    /// Whether a thread runs a task poll now, and whether one runs the poll it ran at the
    /// last look.
    fn look(&self) -> (bool, bool) {
        let (mut polling, mut long) = (false, false);
        for (c, last) in self.threads.lock().iter_mut() {
            let v = c.load(Ordering::Relaxed);
            polling |= v % 2 == 1;
            long |= v % 2 == 1 && v == *last;
            *last = v;
        }
        (polling, long)
    }
}

/// The empty task's guard: it counts as one of the runtime's own Tokio tasks (see
/// `Counters::foreign_tasks`) and among the runtime's nudges in flight until the task ran
/// or was dropped.
struct Nudge {
    counters: Arc<Counters>,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Nudge {
    fn drop(&mut self) {
        self.counters.ours.fetch_sub(1, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// What the nudger keeps of one runtime.
#[derive(Default)]
struct Seen {
    /// Work waited at its last look.
    waited: bool,
    /// Its empty tasks that have not run yet.
    in_flight: Arc<AtomicUsize>,
}

/// Whether work waits for a worker of `rt`.
fn work_waits(rt: &RtInner) -> bool {
    rt.inject.has_work() || rt.tokio_metrics.global_queue_depth() > 0
}

/// Whether a worker of `rt` may be parked: Tokio counts each park and unpark of a worker,
/// so the count is odd while it is parked. (It may stay odd for a while after an unpark:
/// the worker publishes its counts as it parks, and now and then between its tasks.)
fn may_be_parked(rt: &RtInner) -> bool {
    #[cfg(target_has_atomic = "64")]
    {
        let m = &rt.tokio_metrics;
        (0..m.num_workers()).any(|i| m.worker_park_unpark_count(i) % 2 == 1)
    }
    #[cfg(not(target_has_atomic = "64"))]
    {
        let _ = rt;
        true
    }
}

fn run() {
    let mut seen: HashMap<u32, Seen> = HashMap::new();
    let mut every = LOOK_MIN;
    loop {
        let runtimes: Vec<(u32, Arc<RtInner>)> = ALIVE
            .lock()
            .iter()
            .filter_map(|(id, w)| Some((*id, w.upgrade()?)))
            .filter(|(_, rt)| rt.tokio_metrics.num_workers() > 1)
            .collect();
        seen.retain(|id, _| runtimes.iter().any(|(i, _)| i == id));
        if runtimes.is_empty() {
            // (Woken by the next runtime's start; a spurious wake looks again.)
            std::thread::park();
            continue;
        }
        let mut any = false;
        for (id, rt) in &runtimes {
            let s = seen.entry(*id).or_default();
            if rt.shutdown.load(Ordering::Relaxed) {
                continue;
            }
            let waits = work_waits(rt);
            let (polling, long) = rt.poll_marks.look();
            // (A nudge whose wake came while a worker searched, or before the worker
            // parked, is lost as the work's own was: the next look nudges again.)
            if (waits && s.waited || long)
                && s.in_flight.load(Ordering::Acquire) < MAX_IN_FLIGHT
                && may_be_parked(rt)
            {
                s.in_flight.fetch_add(1, Ordering::AcqRel);
                rt.counters.ours.fetch_add(1, Ordering::SeqCst);
                let nudge = Nudge {
                    counters: rt.counters.clone(),
                    in_flight: s.in_flight.clone(),
                };
                rt.tokio.spawn(async move { drop(nudge) });
            }
            s.waited = waits;
            any |= waits || polling;
        }
        drop(runtimes);
        every = if any {
            LOOK_MIN
        } else {
            (every * 2).min(LOOK_MAX)
        };
        std::thread::park_timeout(every);
    }
}
