//! Activity tracking: which pollers (drivers and `block_on` futures) are runnable, so the
//! runtime knows when nothing can make progress on its own.
//!
//! # Invariants
//! - A poller holds one `busy` token in every state but PARKED. Only the transitions into
//!   and out of PARKED change the count, and each such transition is one compare-and-swap,
//!   so a token is dropped once per park and taken once per unpark.
//! - A poller parks only when its last poll returned `Pending` because it waits on other
//!   tasks (the runtime's own futures said so), and only if no wake arrived during that
//!   poll (the state would then be NOTIFIED, and the CAS from RUNNING fails).
//! - The waker moves PARKED -> NOTIFIED and takes the token *before* waking the poller, so
//!   the count never reads zero while a woken poller is on its way.

use std::sync::Arc;
use std::task::{Wake, Waker};

use crate::loom::sync::{AtomicU8, AtomicU64, Ordering};

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;

const RUNNING: u8 = 0;
const IDLE: u8 = 1;
const PARKED: u8 = 2;
const NOTIFIED: u8 = 3;
const DONE: u8 = 4;

/// The runtime's live-task and busy counts in one word, and who to tell when either
/// reaches zero.
pub(crate) struct Counters {
    /// `live << 32 | busy`.
    word: AtomicU64,
    monitors: Mutex<Vec<Waker>>,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            word: AtomicU64::new(0),
            monitors: Mutex::new(Vec::new()),
        }
    }

    /// Applies a change to both counts at once.
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
            self.wake_monitors();
        }
    }

    /// (live, busy).
    pub(crate) fn load(&self) -> (u32, u32) {
        let w = self.word.load(Ordering::Acquire);
        ((w >> 32) as u32, w as u32)
    }

    pub(crate) fn register_monitor(&self, w: &Waker) {
        let mut m = self.monitors.lock();
        if !m.iter().any(|x| x.will_wake(w)) {
            m.push(w.clone());
        }
    }

    pub(crate) fn wake_monitors(&self) {
        let ws = std::mem::take(&mut *self.monitors.lock());
        for w in ws {
            w.wake();
        }
    }
}

/// The activity state of one poller, and its waker.
pub(crate) struct Activity {
    state: AtomicU8,
    /// The waker of whatever polls this poller (the Tokio task, or `block_on`).
    pub(crate) waker: AtomicWaker,
    counters: Arc<Counters>,
}

impl Activity {
    /// A poller that holds a token and is due for its first poll.
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Activity {
            state: AtomicU8::new(NOTIFIED),
            waker: AtomicWaker::new(),
            counters,
        }
    }

    /// Whether a wake arrived since the last poll (or none happened yet).
    pub(crate) fn should_poll(&self) -> bool {
        self.state.load(Ordering::Acquire) == NOTIFIED
    }

    /// Before a poll: RUNNING, taking a token back if the poller was parked.
    pub(crate) fn begin_poll(&self) {
        if self.state.swap(RUNNING, Ordering::AcqRel) == PARKED {
            self.counters.add(0, 1);
        }
    }

    /// After a poll that returned `Pending`. `blocked`: the poller waits only on tasks.
    pub(crate) fn end_poll(&self, blocked: bool) {
        let to = if blocked { PARKED } else { IDLE };
        if self
            .state
            .compare_exchange(RUNNING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && blocked
        {
            self.counters.add(0, -1);
        }
    }

    /// The poller finished for good: drop its token.
    pub(crate) fn finish(&self) {
        if self.state.swap(DONE, Ordering::AcqRel) != PARKED {
            self.counters.add(0, -1);
        }
    }

    fn notify(&self) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s == NOTIFIED || s == DONE {
                break;
            }
            match self
                .state
                .compare_exchange(s, NOTIFIED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if s == PARKED {
                        self.counters.add(0, 1);
                    }
                    break;
                }
                Err(actual) => s = actual,
            }
        }
        self.waker.wake();
    }
}

impl Wake for Activity {
    fn wake(self: Arc<Self>) {
        self.notify();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notify();
    }
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use loom::thread;

    /// A poller that parked (waiting on tasks), with its counters.
    fn parked() -> (Arc<Counters>, Arc<Activity>) {
        let counters = Arc::new(Counters::new());
        counters.add(0, 1);
        let a = Arc::new(Activity::new(counters.clone()));
        a.begin_poll();
        a.end_poll(true);
        (counters, a)
    }

    /// A wake racing with a park: the busy count ends at 1 if the poller ends up notified
    /// (it will be polled), at 0 if it ends up parked, and never underflows.
    #[test]
    fn park_vs_wake_keeps_one_token() {
        loom::model(|| {
            let counters = Arc::new(Counters::new());
            counters.add(0, 1);
            let a = Arc::new(Activity::new(counters.clone()));
            a.begin_poll();
            let a2 = a.clone();
            let waker = thread::spawn(move || a2.notify());
            a.end_poll(true);
            waker.join().unwrap();
            let (_, busy) = counters.load();
            let state = a.state.load(Ordering::Acquire);
            match state {
                NOTIFIED => assert_eq!(busy, 1),
                PARKED => panic!("a wake after the park must leave the poller notified"),
                _ => panic!("unexpected state {state}"),
            }
            // The next poll takes the poller back to RUNNING with its token.
            a.begin_poll();
            assert_eq!(counters.load().1, 1);
        });
    }

    /// Handing a granted resume request to its parked driver (`RtInner::route`): the wake
    /// takes the driver's token before the admitter's token is given back, so an observer
    /// never reads a busy count of zero (which would make the runtime look stalled).
    #[test]
    fn grant_then_give_back_never_reads_zero() {
        loom::model(|| {
            let (counters, a) = parked();
            // The admitter counted the request it admitted.
            counters.add(0, 1);
            let (a2, c2) = (a.clone(), counters.clone());
            let router = thread::spawn(move || {
                a2.notify();
                c2.add(0, -1);
            });
            assert!(counters.load().1 >= 1, "the runtime looked stalled");
            router.join().unwrap();
            assert_eq!(counters.load().1, 1);
        });
    }

    /// Two wakers and a park: exactly one token comes back.
    #[test]
    fn two_wakes_one_token() {
        loom::model(|| {
            let (counters, a) = parked();
            assert_eq!(counters.load().1, 0);
            let (a1, a2) = (a.clone(), a.clone());
            let t1 = thread::spawn(move || a1.notify());
            let t2 = thread::spawn(move || a2.notify());
            t1.join().unwrap();
            t2.join().unwrap();
            assert_eq!(counters.load().1, 1);
        });
    }
}
