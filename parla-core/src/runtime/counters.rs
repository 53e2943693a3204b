//! The runtime's two counts, and who to tell when they reach zero.
//!
//! - `live`: tasks spawned and not finished. `block_on` returns once its future finished and
//!   this is zero.
//! - `busy`: busy tokens - pollers that can make progress on their own (a task admitted or
//!   running, a poller waiting on something outside the runtime, a `block_on` future that
//!   is not blocked on tasks alone, a GPU task whose fence is pending, a `Handle::hold`
//!   guard). When it is zero the runtime is quiescent and the stall resolver looks at what
//!   is left.
//!
//! # Invariants
//! - Only the executor changes the counts, in one atomic update for both.
//! - Increases are applied before what they count becomes visible to another thread (a
//!   task pushed to the injector, a woken task scheduled); decreases may be deferred to the
//!   end of a driver's poll. So the counts are overstated at times, never understated, and
//!   a zero busy count is never seen early.

use std::sync::Arc;
use std::task::Waker;

use atomic_waker::AtomicWaker;
use crossbeam_utils::CachePadded;
use smallvec::SmallVec;

use crate::loom::sync::{AtomicU64, AtomicUsize, Mutex, Ordering};

pub(crate) struct Counters {
    /// `live << 32 | busy`.
    word: AtomicU64,
    /// `block_on` calls waiting for the live count to reach zero.
    monitors: Monitors,
    /// The stall resolver, woken when the busy count reaches zero.
    pub(crate) stall: AtomicWaker,
    /// How many times the busy count reached zero: a stall that the resolver finds twice
    /// with the same count lasted in between (see `stall::Monitor`).
    zeros: AtomicU64,
    /// `block_on` threads woken (their futures' wakers scheduled them) that have not started
    /// the poll yet: runnable, and maybe kept from a core by a driver lingering for work
    /// (see `driver`).
    mains_woken: AtomicUsize,
    /// Entries in the runtime's registry of forward references (placeholders, and tasks
    /// that took one over), counted by the registry as its lists grow and shrink: with no
    /// task live, no entry and no Tokio task of the program, a zero busy count has nothing
    /// the stall resolver could find (see [`add`](Self::add)).
    forward_entries: AtomicUsize,
    /// Tokio tasks of the runtime's own that are alive (drivers and the stall monitor):
    /// any other alive Tokio task is a user's, and may still spawn tasks. (On a cache line
    /// of its own: drivers start and end often.)
    pub(crate) ours: CachePadded<std::sync::atomic::AtomicUsize>,
    /// The threads alive in Tokio's pool: the workers, and those of `spawn_blocking`.
    pool_threads: Arc<std::sync::atomic::AtomicUsize>,
    /// The runtime's workers.
    cpu_threads: usize,
    metrics: tokio::runtime::RuntimeMetrics,
    /// How many times the stall resolver was woken (for tests).
    #[cfg(all(test, not(parla_loom)))]
    stall_wakes: AtomicUsize,
}

impl Counters {
    pub(crate) fn new(
        metrics: tokio::runtime::RuntimeMetrics,
        pool_threads: Arc<std::sync::atomic::AtomicUsize>,
        cpu_threads: usize,
    ) -> Self {
        Counters {
            word: AtomicU64::new(0),
            monitors: Monitors::default(),
            stall: AtomicWaker::new(),
            zeros: AtomicU64::new(0),
            mains_woken: AtomicUsize::new(0),
            forward_entries: AtomicUsize::new(0),
            ours: CachePadded::new(std::sync::atomic::AtomicUsize::new(0)),
            pool_threads,
            cpu_threads,
            metrics,
            #[cfg(all(test, not(parla_loom)))]
            stall_wakes: AtomicUsize::new(0),
        }
    }

    /// Tokio tasks alive that are not the runtime's own, and the threads of Tokio's pool
    /// beyond its workers: those run `spawn_blocking` closures (which Tokio does not count
    /// among its tasks), or idle for a while after one (`builder::BLOCKING_KEEP_ALIVE`).
    /// Either may still spawn tasks or ids.
    pub(crate) fn foreign_tasks(&self) -> usize {
        let alive = self.metrics.num_alive_tasks();
        let blocking = self
            .pool_threads
            .load(Ordering::SeqCst)
            .saturating_sub(self.cpu_threads);
        alive.saturating_sub(self.ours.load(Ordering::SeqCst)) + blocking
    }

    /// The registry of forward references grew by `added` entries and let go of `removed`
    /// (under the lock of the list that changed).
    #[inline]
    pub(crate) fn forward_entries_changed(&self, added: usize, removed: usize) {
        if added > removed {
            self.forward_entries
                .fetch_add(added - removed, Ordering::AcqRel);
        } else if removed > added {
            self.forward_entries
                .fetch_sub(removed - added, Ordering::AcqRel);
        }
    }

    /// A `block_on` thread was woken (`true`), or started its poll or returned (`false`):
    /// called once each way per wake, by the one who changed the poller's own flag.
    #[inline]
    pub(crate) fn main_woken(&self, woken: bool) {
        if woken {
            self.mains_woken.fetch_add(1, Ordering::Relaxed);
        } else {
            self.mains_woken.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a `block_on` thread was woken and has not started its poll.
    #[inline]
    pub(crate) fn any_main_woken(&self) -> bool {
        self.mains_woken.load(Ordering::Relaxed) != 0
    }

    /// Applies a change to both counts at once.
    #[inline]
    pub(crate) fn add(&self, live: i64, busy: i64) {
        if live == 0 && busy == 0 {
            return;
        }
        let delta = (live << 32).wrapping_add(busy) as u64;
        let now = self
            .word
            .fetch_add(delta, Ordering::AcqRel)
            .wrapping_add(delta);
        if now as u32 == 0 || now >> 32 == 0 {
            self.reached_zero(now);
        }
    }

    /// Either count reached zero (`now`: both, after the update that did it).
    ///
    /// The stall resolver is woken when the busy count reaches zero, unless nothing could be
    /// stalled: no task is live, the registry of forward references is empty (nothing
    /// awaits an id never spawned) and no Tokio task of the program is alive (one could
    /// await such an id later, which the resolver warns of while it looks again). So a
    /// `block_on` that returns with nothing left, once per call, does not wake the
    /// resolver's task on a worker to find nothing. (Every registration of a forward
    /// reference comes before its thread gives back the busy token it registered under,
    /// and the update that brings the count to zero follows all those give-backs in the
    /// word's order: the registry's count read here includes it.)
    #[cold]
    fn reached_zero(&self, now: u64) {
        if now as u32 == 0 {
            self.zeros.fetch_add(1, Ordering::AcqRel);
            let quiet = now >> 32 == 0
                && self.forward_entries.load(Ordering::Acquire) == 0
                && self.foreign_tasks() == 0;
            if !quiet {
                #[cfg(all(test, not(parla_loom)))]
                self.stall_wakes.fetch_add(1, Ordering::Relaxed);
                self.stall.wake();
            }
        }
        self.monitors.wake_all();
    }

    /// How many times the busy count reached zero so far.
    pub(crate) fn zeros(&self) -> u64 {
        self.zeros.load(Ordering::Acquire)
    }

    /// (live, busy).
    pub(crate) fn load(&self) -> (u32, u32) {
        let w = self.word.load(Ordering::Acquire);
        ((w >> 32) as u32, w as u32)
    }

    /// Whether the live count is zero; if not, `w` is woken the next time either count
    /// reaches zero (or was woken already, by a zero since).
    ///
    /// No wake is lost, although a zero looks at the registered count without the lock:
    /// the registration counts `w` (a read-modify-write), then reads the word with a
    /// read-modify-write; a zero's update is a read-modify-write of the word before its
    /// look at the count. Updates of the word are totally ordered: if the zero's comes
    /// first, the read here sees the live count at zero; if it comes after, it acquires
    /// this one, and its look sees the count this registration made (or zero, once a zero
    /// in between took the list, `w` in it, and woke it).
    pub(crate) fn live_done_or_monitor(&self, w: &Waker) -> bool {
        self.monitors.live_done_or_register(&self.word, w)
    }
}

/// The wakers of `block_on` calls waiting for the live count to reach zero, and how many
/// there are: written under the list's lock, read without it, so that a zero with none
/// registered (most) skips the lock. (Inline: a `block_on` that awaits one task at a time
/// registers again after every task, and a vector taken at each zero would allocate there
/// each time.) The protocol with the counts' word: see
/// [`Counters::live_done_or_monitor`].
struct Monitors {
    list: Mutex<SmallVec<[Waker; 2]>>,
    count: AtomicUsize,
}

impl Default for Monitors {
    fn default() -> Self {
        Monitors {
            list: Mutex::new(SmallVec::new()),
            count: AtomicUsize::new(0),
        }
    }
}

impl Monitors {
    /// [`Counters::live_done_or_monitor`] with the counts' `word`: adds `w` (unless it is
    /// there) and counts it with a read-modify-write, then reads the word with one.
    fn live_done_or_register(&self, word: &AtomicU64, w: &Waker) -> bool {
        {
            let mut m = self.list.lock();
            if !m.iter().any(|x| x.will_wake(w)) {
                m.push(w.clone());
                self.count.swap(m.len(), Ordering::AcqRel);
            }
        }
        word.fetch_add(0, Ordering::AcqRel) >> 32 == 0
    }

    /// Wakes (and lets go of) every waker registered, if the count says any is.
    #[inline]
    fn wake_all(&self) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let ws = {
            let mut m = self.list.lock();
            self.count.swap(0, Ordering::AcqRel);
            std::mem::take(&mut *m)
        };
        for w in ws {
            w.wake();
        }
    }
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use crate::runtime::Runtime;
    use crate::{TaskError, TaskSpace, task};

    /// `block_on` calls that leave nothing behind (nothing awaited, or one task awaited)
    /// do not wake the stall resolver at their busy count's zero, which each call used to
    /// (a Tokio task woken on a worker to find nothing); an id awaited and never spawned
    /// after them is still failed by it.
    #[test]
    fn a_block_on_that_leaves_nothing_does_not_wake_the_stall_resolver() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        rt.block_on(async {});
        let wakes = || {
            rt.inner
                .counters
                .stall_wakes
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = wakes();
        for i in 0..200u32 {
            rt.block_on(async {});
            let v = rt.block_on(async move { task(async move { i }).await.unwrap() });
            assert_eq!(v, i);
        }
        // (A driver that just ended is counted by Tokio a little longer: a zero then wakes
        // the resolver, a few times in 400.)
        let woken = wakes() - before;
        assert!(woken <= 100, "the stall resolver was woken {woken} times");
        let t = TaskSpace::new("T");
        let r = rt.block_on(async move { t.at(1).await });
        assert!(
            matches!(r, Err(TaskError::NeverSpawned { .. })),
            "an id never spawned: {r:?}"
        );
    }
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Sets its flag when woken.
    struct Flag(crate::loom::sync::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
    }

    /// A `block_on` registering for the live count's zero while the last task finishes
    /// (the word updated, then the monitors woken, as `Counters::add` does): it sees the
    /// zero, or it is woken.
    #[test]
    fn loom_test_a_monitor_registered_as_the_live_count_reaches_zero_is_not_lost() {
        loom::model(|| {
            let word = Arc::new(AtomicU64::new(1 << 32));
            let monitors = Arc::new(Monitors::default());
            let finisher = {
                let (word, monitors) = (word.clone(), monitors.clone());
                thread::spawn(move || {
                    let now = word.fetch_sub(1 << 32, Ordering::AcqRel) - (1 << 32);
                    if now >> 32 == 0 {
                        monitors.wake_all();
                    }
                })
            };
            let flag = std::sync::Arc::new(Flag(crate::loom::sync::AtomicBool::new(false)));
            let waker = Waker::from(flag.clone());
            let done = monitors.live_done_or_register(&word, &waker);
            finisher.join().unwrap();
            assert!(
                done || flag.0.load(Ordering::Acquire),
                "the zero was missed"
            );
        });
    }
}
