//! The activity word of a poller (a task, or a `block_on` future): whether it runs, waits on
//! something that can still wake it, or is blocked on other tasks alone.
//!
//! The runtime is quiescent (nothing can make progress on its own) exactly when no poller
//! holds a *busy token*. This module decides when a poller holds one; the executor applies
//! the count changes each transition reports.
//!
//! # The blocked criterion
//! A poller counts as blocked only when nothing outside the runtime can wake it. Its waker
//! tells: every clone of the waker made by code outside the runtime (a timer, a channel, a
//! `FuturesUnordered`, another thread) is *counted* here, while the runtime's own futures
//! (task handles, ids, spaces) register *uncounted* clones. A poller whose last poll returned
//! `Pending` after awaiting tasks, and whose waker no outside code holds, is PARKED: it gave
//! its token back, and only the runtime can wake it. Anything else that is pending is IDLE
//! and keeps its token, so the runtime waits for it rather than failing what it awaits.
//!
//! # States
//! ```text
//!   NOTIFIED --begin_poll--> RUNNING --end_poll--> IDLE or PARKED (or stays NOTIFIED if
//!      ^                                              |     a wake came during the poll)
//!      +-------------------- wake --------------------+
//!   IDLE --last counted clone dropped, awaiting tasks--> PARKED
//!   any --finish--> DONE
//! ```
//!
//! # Invariants
//! - The token is held in NOTIFIED, RUNNING and IDLE; not in PARKED or DONE. Each transition
//!   into or out of PARKED is one compare-and-swap of the whole word and reports the token
//!   it took or dropped, so the count changes once per transition.
//! - The outside count (`ext`) is exact: it changes only in [`Activity::clone_counted`] and
//!   [`Activity::drop_counted`], in the same compare-and-swap that moves the state.
//! - PARKED is entered only with `ext == 0` and the AWAITS mark set; a wake (from the
//!   runtime, the only one that can still reach it) or a new counted clone leaves it.

use crate::loom::sync::{AtomicU64, Ordering};

const STATE: u64 = 0xff;
const RUNNING: u64 = 1;
const IDLE: u64 = 2;
const PARKED: u64 = 3;
const NOTIFIED: u64 = 4;
const DONE: u64 = 5;
/// The last poll returned `Pending` after one of the runtime's futures did (it awaits tasks).
const AWAITS: u64 = 1 << 8;
/// The stall resolver failed one of this poller's awaits: the next await to find itself
/// stuck resolves to `Deadlock`.
const AWAIT_FAILED: u64 = 1 << 9;
const EXT_SHIFT: u32 = 32;
const EXT_ONE: u64 = 1 << EXT_SHIFT;

/// What the end of a poll left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndPoll {
    /// Blocked on tasks alone: the token was dropped.
    Parked,
    /// Waiting on something that can still wake it: the token is kept.
    Idle,
    /// A wake arrived during the poll: poll again (the token is kept).
    Notified,
}

/// What a wake did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The poller must be scheduled; `took_token`: it was parked and takes a token now.
    Schedule { took_token: bool },
    /// Nothing to do: it runs (and will see the wake), is already notified, or finished.
    Nothing,
}

/// One poller's activity word.
#[derive(Debug)]
pub(crate) struct Activity {
    word: AtomicU64,
}

impl Activity {
    /// A poller that is runnable (it holds a token) and due for its first poll.
    pub(crate) fn new() -> Self {
        Activity {
            word: AtomicU64::new(NOTIFIED),
        }
    }

    fn update(&self, f: impl FnMut(u64) -> Option<u64>) -> (u64, u64) {
        self.update_ordered(Ordering::AcqRel, f)
    }

    /// [`update`](Self::update), the change made with ordering `success`.
    #[inline(always)]
    fn update_ordered(
        &self,
        success: Ordering,
        mut f: impl FnMut(u64) -> Option<u64>,
    ) -> (u64, u64) {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let Some(next) = f(cur) else {
                return (cur, cur);
            };
            match self
                .word
                .compare_exchange_weak(cur, next, success, Ordering::Acquire)
            {
                Ok(_) => return (cur, next),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Before a poll: NOTIFIED -> RUNNING.
    pub(crate) fn begin_poll(&self) {
        self.update(|w| Some((w & !(STATE | AWAITS)) | RUNNING));
    }

    /// Before a task's first poll: nothing can wake it yet (no waker of it exists), so a
    /// plain store does.
    pub(crate) fn begin_first_poll(&self) {
        self.word.store(RUNNING, Ordering::Release);
    }

    /// After a poll that returned `Pending`. `awaits`: one of the runtime's futures returned
    /// `Pending` during the poll (the poller awaits tasks).
    ///
    /// Sequentially consistent (the same instruction as acquire-release on x86-64): a
    /// driver reads the runtime's shutdown flag after it (`SeqCst`), and the runtime's drop
    /// sets the flag, then a `SeqCst` fence, then claims the waiting tasks
    /// ([`claim_waiting`](Self::claim_waiting)). So either the driver sees the flag, or
    /// this update comes before the fence in the single order of sequentially consistent
    /// operations, and the drop's claim sees the task waiting: a task whose poll ends
    /// while the runtime is dropped is cancelled by one of the two.
    pub(crate) fn end_poll(&self, awaits: bool) -> EndPoll {
        let (prev, next) = self.update_ordered(Ordering::SeqCst, |w| {
            if w & STATE != RUNNING {
                return None;
            }
            let base = w & !(STATE | AWAITS);
            Some(if awaits && w >> EXT_SHIFT == 0 {
                base | PARKED | AWAITS
            } else if awaits {
                base | IDLE | AWAITS
            } else {
                base | IDLE
            })
        });
        if prev == next {
            return EndPoll::Notified;
        }
        if next & STATE == PARKED {
            EndPoll::Parked
        } else {
            EndPoll::Idle
        }
    }

    /// A wake: moves an IDLE or PARKED poller to NOTIFIED.
    pub(crate) fn wake(&self) -> Woken {
        let (prev, next) = self.update(|w| match w & STATE {
            IDLE | PARKED | RUNNING => Some((w & !STATE) | NOTIFIED),
            _ => None,
        });
        if prev == next {
            return Woken::Nothing;
        }
        match prev & STATE {
            PARKED => Woken::Schedule { took_token: true },
            IDLE => Woken::Schedule { took_token: false },
            _ => Woken::Nothing,
        }
    }

    /// Code outside the runtime cloned the waker. Returns whether the poller took a token
    /// (it was parked, and is now reachable from outside).
    pub(crate) fn clone_counted(&self) -> bool {
        let (prev, _) = self.update(|w| {
            let w = w + EXT_ONE;
            Some(if w & STATE == PARKED {
                (w & !STATE) | IDLE
            } else {
                w
            })
        });
        prev & STATE == PARKED
    }

    /// A counted clone was dropped. Returns whether the poller parked (it dropped its token:
    /// it awaits tasks and nothing outside can wake it any more).
    pub(crate) fn drop_counted(&self) -> bool {
        let (prev, next) = self.update(|w| {
            let w = w.saturating_sub(EXT_ONE);
            Some(
                if w >> EXT_SHIFT == 0 && w & STATE == IDLE && w & AWAITS != 0 {
                    (w & !STATE) | PARKED
                } else {
                    w
                },
            )
        });
        prev & STATE != PARKED && next & STATE == PARKED
    }

    /// A finished poller that nothing else refers to any more, due for a first poll again,
    /// as [`new`](Self::new) makes it (a `block_on` poller reused by the next call).
    pub(crate) fn restart(&self) {
        debug_assert_eq!(self.word.load(Ordering::Acquire) & STATE, DONE);
        self.word.store(NOTIFIED, Ordering::Release);
    }

    /// The poller finished for good. Returns whether it held a token (it was not parked).
    pub(crate) fn finish(&self) -> bool {
        let (prev, _) = self.update(|w| Some((w & !STATE) | DONE));
        !matches!(prev & STATE, PARKED | DONE)
    }

    /// Takes a waiting (IDLE or PARKED) poller out of play for good (at shutdown): returns
    /// `Some(held_token)` if this call did, `None` if it runs, is notified or finished.
    pub(crate) fn claim_waiting(&self) -> Option<bool> {
        let (prev, next) = self.update(|w| match w & STATE {
            IDLE | PARKED => Some((w & !STATE) | DONE),
            _ => None,
        });
        (prev != next).then_some(prev & STATE == IDLE)
    }

    /// Takes the token of an IDLE poller that does not await tasks, as a poll would (IDLE
    /// to RUNNING), to act for it between polls (`scheduler::idle`: lending the VCUs it
    /// keeps). Returns whether it did; [`end_poll`](Self::end_poll)`(false)` gives the token
    /// back (and reports a wake that came meanwhile).
    pub(crate) fn claim_idle(&self) -> bool {
        let (prev, next) = self
            .update(|w| (w & STATE == IDLE && w & AWAITS == 0).then_some((w & !STATE) | RUNNING));
        prev != next
    }

    /// Whether the poller is parked (blocked on tasks alone).
    pub(crate) fn is_parked(&self) -> bool {
        self.word.load(Ordering::Acquire) & STATE == PARKED
    }

    /// A read-modify-write that changes nothing: it reads the word's latest value, and what
    /// wrote it before. An abort touches the word before it wakes the task (see
    /// `Header::abort_seen_after_poll` for why). Returns whether a wake was pending then
    /// (the poller is due for a poll: never polled yet, or woken since its last one).
    pub(crate) fn touch(&self) -> bool {
        self.word.fetch_or(0, Ordering::AcqRel) & STATE == NOTIFIED
    }

    /// Whether a wake is pending (the poller should be polled).
    pub(crate) fn is_notified(&self) -> bool {
        self.word.load(Ordering::Acquire) & STATE == NOTIFIED
    }

    /// The stall resolver fails one of this poller's awaits; the caller then wakes it.
    pub(crate) fn fail_one_await(&self) {
        self.word.fetch_or(AWAIT_FAILED, Ordering::AcqRel);
    }

    /// Takes the failure set by [`fail_one_await`](Self::fail_one_await), if any: the await
    /// that takes it resolves to `Deadlock`.
    #[inline]
    pub(crate) fn take_await_failure(&self) -> bool {
        self.word.load(Ordering::Acquire) & AWAIT_FAILED != 0
            && self.word.fetch_and(!AWAIT_FAILED, Ordering::AcqRel) & AWAIT_FAILED != 0
    }

    /// Counted outside clones of the waker (for tests).
    #[cfg(all(test, not(parla_loom)))]
    pub(crate) fn ext(&self) -> u64 {
        self.word.load(Ordering::Acquire) >> EXT_SHIFT
    }
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use super::*;

    #[test]
    fn parks_only_without_outside_clones() {
        let a = Activity::new();
        a.begin_poll();
        assert_eq!(a.end_poll(true), EndPoll::Parked);
        assert_eq!(a.wake(), Woken::Schedule { took_token: true });
        a.begin_poll();
        assert!(!a.clone_counted());
        assert_eq!(a.end_poll(true), EndPoll::Idle, "a timer holds the waker");
        assert!(a.drop_counted(), "the timer let go: blocked on tasks alone");
        assert!(a.is_parked());
        assert!(a.clone_counted(), "an outside clone takes the token back");
        assert_eq!(a.ext(), 1);
        assert!(a.drop_counted());
        assert_eq!(a.wake(), Woken::Schedule { took_token: true });
    }

    #[test]
    fn waiting_on_outside_events_alone_never_parks() {
        let a = Activity::new();
        a.begin_poll();
        assert_eq!(a.end_poll(false), EndPoll::Idle);
        a.clone_counted();
        assert!(!a.drop_counted(), "not awaiting tasks: stays idle");
        assert_eq!(a.wake(), Woken::Schedule { took_token: false });
    }

    #[test]
    fn a_wake_during_the_poll_is_kept() {
        let a = Activity::new();
        a.begin_poll();
        assert_eq!(a.wake(), Woken::Nothing);
        assert_eq!(a.end_poll(true), EndPoll::Notified);
        assert!(a.is_notified());
        assert_eq!(a.wake(), Woken::Nothing, "already notified");
        assert!(a.finish());
        assert_eq!(a.wake(), Woken::Nothing, "finished");
    }

    #[test]
    fn only_an_idle_poller_that_awaits_no_task_is_claimed() {
        let a = Activity::new();
        assert!(!a.claim_idle(), "notified");
        a.begin_poll();
        assert!(!a.claim_idle(), "running");
        assert_eq!(a.end_poll(false), EndPoll::Idle);
        assert!(a.claim_idle());
        assert!(!a.claim_idle(), "claimed already");
        assert_eq!(a.wake(), Woken::Nothing, "a wake while claimed is kept");
        assert_eq!(a.end_poll(false), EndPoll::Notified);
        a.begin_poll();
        assert!(!a.clone_counted());
        assert_eq!(a.end_poll(true), EndPoll::Idle);
        assert!(!a.claim_idle(), "it awaits tasks: it lent its VCUs already");
    }

    #[test]
    fn await_failure_is_taken_once() {
        let a = Activity::new();
        assert!(!a.take_await_failure());
        a.fail_one_await();
        assert!(a.take_await_failure());
        assert!(!a.take_await_failure());
    }
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicI64, AtomicU8};
    use loom::thread;

    /// Applies the token changes the transitions report to a shared count, as the executor
    /// does.
    struct Poller {
        act: Activity,
        busy: AtomicI64,
    }

    fn parked_with_clone() -> Arc<Poller> {
        let p = Arc::new(Poller {
            act: Activity::new(),
            busy: AtomicI64::new(1),
        });
        p.act.begin_poll();
        p.act.clone_counted();
        assert_eq!(p.act.end_poll(true), EndPoll::Idle);
        p
    }

    /// The last outside clone is dropped while the runtime wakes the poller: the poller ends
    /// notified with exactly one token, or parked with none - never both, never neither.
    #[test]
    fn drop_of_last_clone_vs_wake() {
        loom::model(|| {
            let p = parked_with_clone();
            let p2 = p.clone();
            let t = thread::spawn(move || {
                if p2.act.drop_counted() {
                    p2.busy.fetch_sub(1, Ordering::SeqCst);
                }
            });
            if let Woken::Schedule { took_token: true } = p.act.wake() {
                p.busy.fetch_add(1, Ordering::SeqCst);
            }
            t.join().unwrap();
            assert!(p.act.is_notified(), "the wake is never lost");
            assert_eq!(p.busy.load(Ordering::SeqCst), 1);
        });
    }

    /// A park racing with a wake from another thread: one token at the end, notified.
    #[test]
    fn park_vs_wake() {
        loom::model(|| {
            let p = Arc::new(Poller {
                act: Activity::new(),
                busy: AtomicI64::new(1),
            });
            p.act.begin_poll();
            let p2 = p.clone();
            let t = thread::spawn(move || {
                if let Woken::Schedule { took_token: true } = p2.act.wake() {
                    p2.busy.fetch_add(1, Ordering::SeqCst);
                }
            });
            if p.act.end_poll(true) == EndPoll::Parked {
                p.busy.fetch_sub(1, Ordering::SeqCst);
            }
            t.join().unwrap();
            assert!(p.act.is_notified());
            assert_eq!(p.busy.load(Ordering::SeqCst), 1);
        });
    }

    /// An abort (its flag set, the activity word touched, then a wake) racing with a poll
    /// that ends pending, the task's first (`first`) or a later one. The poll sees the flag
    /// as it starts, or it ends notified, or it sees the flag after `end_poll` (and wakes
    /// itself), or the abort's wake schedules the task: the abort is never lost.
    fn abort_vs_pending_poll(first: bool) {
        loom::model(move || {
            let p = Arc::new(Poller {
                act: Activity::new(),
                busy: AtomicI64::new(1),
            });
            if !first {
                // Polled once already, and notified for the poll below.
                p.act.begin_poll();
                assert_eq!(p.act.end_poll(false), EndPoll::Idle);
                assert!(matches!(p.act.wake(), Woken::Schedule { .. }));
            }
            let flag = Arc::new(AtomicU8::new(0));
            let (p2, f2) = (p.clone(), flag.clone());
            let t = thread::spawn(move || {
                f2.fetch_or(1, Ordering::AcqRel);
                p2.act.touch();
                matches!(p2.act.wake(), Woken::Schedule { .. })
            });
            if first {
                p.act.begin_first_poll();
            } else {
                p.act.begin_poll();
            }
            let at_start = flag.load(Ordering::Acquire) != 0;
            let end = p.act.end_poll(false);
            let after = end != EndPoll::Notified && flag.fetch_or(0, Ordering::AcqRel) != 0;
            let scheduled = t.join().unwrap();
            assert!(
                at_start || end == EndPoll::Notified || after || scheduled,
                "the abort is lost"
            );
        });
    }

    #[test]
    fn abort_vs_first_poll() {
        abort_vs_pending_poll(true);
    }

    #[test]
    fn abort_vs_later_poll() {
        abort_vs_pending_poll(false);
    }

    /// Two wakes of a parked poller: one token comes back.
    #[test]
    fn two_wakes_one_token() {
        loom::model(|| {
            let p = Arc::new(Poller {
                act: Activity::new(),
                busy: AtomicI64::new(1),
            });
            p.act.begin_poll();
            assert_eq!(p.act.end_poll(true), EndPoll::Parked);
            p.busy.fetch_sub(1, Ordering::SeqCst);
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let p = p.clone();
                    thread::spawn(move || {
                        if let Woken::Schedule { took_token: true } = p.act.wake() {
                            p.busy.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
            assert_eq!(p.busy.load(Ordering::SeqCst), 1);
        });
    }
}
