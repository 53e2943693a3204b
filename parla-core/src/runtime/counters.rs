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

use std::task::Waker;

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::loom::sync::{AtomicU64, AtomicUsize, Ordering};

pub(crate) struct Counters {
    /// `live << 32 | busy`.
    word: AtomicU64,
    /// `block_on` calls waiting for the live count to reach zero. (Inline: a `block_on`
    /// that awaits one task at a time registers again after every task, and a vector
    /// taken at each zero would allocate there each time.)
    monitors: Mutex<SmallVec<[Waker; 2]>>,
    /// The stall resolver, woken when the busy count reaches zero.
    pub(crate) stall: AtomicWaker,
    /// How many times the busy count reached zero: a stall that the resolver finds twice
    /// with the same count lasted in between (see `stall::Monitor`).
    zeros: AtomicU64,
    /// `block_on` threads woken (their futures' wakers scheduled them) that have not started
    /// the poll yet: runnable, and maybe kept from a core by a driver lingering for work
    /// (see `driver`).
    mains_woken: AtomicUsize,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            word: AtomicU64::new(0),
            monitors: Mutex::new(SmallVec::new()),
            stall: AtomicWaker::new(),
            zeros: AtomicU64::new(0),
            mains_woken: AtomicUsize::new(0),
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
            self.reached_zero(now as u32 == 0);
        }
    }

    #[cold]
    fn reached_zero(&self, idle: bool) {
        if idle {
            self.zeros.fetch_add(1, Ordering::AcqRel);
            self.stall.wake();
        }
        let ws = std::mem::take(&mut *self.monitors.lock());
        for w in ws {
            w.wake();
        }
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

    /// Wakes `w` the next time either count reaches zero.
    pub(crate) fn register_monitor(&self, w: &Waker) {
        let mut m = self.monitors.lock();
        if !m.iter().any(|x| x.will_wake(w)) {
            m.push(w.clone());
        }
    }
}
