//! CPU tasks that keep their VCUs while they wait on something outside the runtime, and the
//! handshake that makes them lend those VCUs once another task waits for them.
//!
//! A CPU task whose poll returns `Pending` without awaiting tasks (it waits on a channel, a
//! timer, I/O, the `JoinHandle` of a future it started with `tokio::spawn`) is usually woken
//! again soon. Giving its VCUs back at every such wait and taking them again at every wake
//! would update the device's usage word, which every worker shares, twice per wait. So it
//! keeps them and is *held*: marked (a flag of the task's) and counted here. While nothing
//! waits for VCUs on the CPU, that is all a wait costs. Once a task waits there, every held
//! task lends its VCUs, as a task awaiting other tasks does (a producer blocked on a full
//! channel must not keep its consumer from being admitted); when it is woken it takes them
//! back ahead of waiting tasks (the resume lane).
//!
//! # The handshake
//! - The holder's driver, still holding the task's run token: marks the task, counts it
//!   ([`Held::add`]), ends the poll (the activity goes IDLE), then [`Held::lend_now`]: a
//!   `SeqCst` fence, then whether anything waits for VCUs on the device. If something does,
//!   it lends the task's VCUs itself, claiming the task as below.
//! - A queuer, after counting its task as waiting (admission's `waiting`, or the data
//!   queue's count): [`Held::any`], a `SeqCst` fence, then the counts here. If any is
//!   non-zero, it claims each marked task whose activity is IDLE (`Activity::claim_idle`:
//!   IDLE to RUNNING, the token a poll would take), unmarks it, lends its VCUs, and gives
//!   the token back (`Activity::end_poll`; a wake meanwhile schedules the task, which takes
//!   its VCUs back as any lender does).
//!
//! # Invariants
//! - A task is marked and counted only by the holder of its run token (its driver, before
//!   its activity leaves RUNNING), and unmarked and uncounted once, by the next holder of
//!   its token (a driver about to poll it, or a claimer): the count of a shard is at least
//!   the number of marked tasks counted there.
//! - No task waits for VCUs that a held task keeps. The two fences are ordered. If the
//!   holder's comes first, the queuer's reads after its fence see the mark, the count and
//!   the IDLE state written before the holder's fence (or later values): it claims the
//!   task, or finds it woken (it runs, and holds its VCUs for that), or claimed by another
//!   claimer, who lends them. If the queuer's comes first, the holder's read after its
//!   fence sees the waiting task (or that it was admitted meanwhile): it lends itself.
//!   Checked by loom (`loom_test` below).
//! - A claimer only lends: VCUs given back are reserved again by the task itself when it
//!   is woken, through the resume lane, as after any loan.

use crossbeam_utils::CachePadded;

use crate::loom::sync::{AtomicU32, AtomicUsize, Ordering, fence};

/// Shards of the count: a task is counted in the shard of the thread that first saw it wait
/// (the shard of its place in the set of pollers), so the drivers of a worker count on a
/// line of their own.
pub(crate) const SHARDS: usize = 16;

/// How many held tasks each shard counts.
#[derive(Default)]
pub(crate) struct Held {
    /// The shards that ever counted a task, a bit each (never cleared): a queuer reads
    /// only those, and none in a runtime whose tasks never waited outside it.
    used: AtomicU32,
    shards: [CachePadded<AtomicUsize>; SHARDS],
}

const _: () = assert!(SHARDS <= u32::BITS as usize);

impl Held {
    /// A task is held (its run token's holder marked it first); `shard`: its shard.
    ///
    /// The shard's bit is set before the count, both before the holder's fence: a queuer
    /// that sees the count after its own fence sees the bit too.
    #[inline]
    pub(crate) fn add(&self, shard: usize) {
        let shard = shard % SHARDS;
        let bit = 1 << shard;
        if self.used.load(Ordering::Relaxed) & bit == 0 {
            self.used.fetch_or(bit, Ordering::Relaxed);
        }
        self.shards[shard].fetch_add(1, Ordering::Relaxed);
    }

    /// A held task was unmarked (by the next holder of its token).
    #[inline]
    pub(crate) fn remove(&self, shard: usize) {
        self.shards[shard % SHARDS].fetch_sub(1, Ordering::Relaxed);
    }

    /// After a held task's activity went IDLE: whether it must lend its VCUs now, as told
    /// by `waiting` (whether anything waits for VCUs on its device), read after the fence
    /// of the handshake.
    #[inline]
    pub(crate) fn lend_now(&self, waiting: impl FnOnce() -> bool) -> bool {
        fence(Ordering::SeqCst);
        waiting()
    }

    /// After a task was counted as waiting: whether any task may be held (read after the
    /// fence of the handshake). `false` means every held task that the waiting one could
    /// need lends its VCUs by itself.
    #[inline]
    pub(crate) fn any(&self) -> bool {
        fence(Ordering::SeqCst);
        let mut used = self.used.load(Ordering::Relaxed);
        while used != 0 {
            let shard = used.trailing_zeros() as usize;
            if self.shards[shard].load(Ordering::Relaxed) > 0 {
                return true;
            }
            used &= used - 1;
        }
        false
    }

    /// After [`any`](Self::any): whether shard `shard` may count a held task. A queuer
    /// looks for held tasks only in those shards: a count read as 0 after its fence means
    /// that every task counted there before the holder's fence was unmarked since.
    #[inline]
    pub(crate) fn in_shard(&self, shard: usize) -> bool {
        self.shards[shard % SHARDS].load(Ordering::Relaxed) > 0
    }
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use crate::graph::activity::{Activity, EndPoll};
    use crate::loom::sync::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;

    /// One held task (its mark, activity and lent VCUs), the device's waiting count, and
    /// the count here.
    struct World {
        held: Held,
        act: Activity,
        marked: AtomicBool,
        lent: AtomicUsize,
        waiting: AtomicUsize,
    }

    impl World {
        /// Claims the task if it is IDLE and lends its VCUs if it is still marked; returns
        /// what giving the token back found (`None`: not claimed).
        fn claim_and_lend(&self) -> Option<EndPoll> {
            if !self.act.claim_idle() {
                return None;
            }
            if self.marked.swap(false, Ordering::Relaxed) {
                self.held.remove(0);
                self.lent.fetch_add(1, Ordering::Relaxed);
            }
            Some(self.act.end_poll(false))
        }
    }

    fn world() -> Arc<World> {
        let w = World {
            held: Held::default(),
            act: Activity::new(),
            marked: AtomicBool::new(false),
            lent: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        };
        w.act.begin_first_poll();
        Arc::new(w)
    }

    /// The holder's driver: marks and counts the task, ends its poll, and lends if a task
    /// waits. Returns how the poll ended.
    fn hold(w: &World) -> EndPoll {
        w.marked.store(true, Ordering::Relaxed);
        w.held.add(0);
        let ended = w.act.end_poll(false);
        if ended == EndPoll::Idle && w.held.lend_now(|| w.waiting.load(Ordering::Relaxed) > 0) {
            // Woken while claimed, it would be scheduled now (`Notified`).
            let _ = w.claim_and_lend();
        }
        ended
    }

    /// A task queued for VCUs: counted as waiting, then lends the held task's VCUs.
    fn queue(w: &World) {
        w.waiting.fetch_add(1, Ordering::AcqRel);
        if w.held.any() && w.marked.load(Ordering::Relaxed) {
            let _ = w.claim_and_lend();
        }
    }

    /// The driver of a task that waits outside the runtime, racing with a task queued for
    /// VCUs: the task lends its VCUs exactly once, whichever side sees the other.
    #[test]
    fn a_held_task_lends_to_a_task_queued_meanwhile() {
        loom::model(|| {
            let w = world();
            let w2 = w.clone();
            let queuer = thread::spawn(move || queue(&w2));
            assert_eq!(hold(&w), EndPoll::Idle);
            queuer.join().unwrap();
            assert_eq!(w.lent.load(Ordering::Relaxed), 1, "the VCUs are lent, once");
            assert!(!w.marked.load(Ordering::Relaxed));
            assert!(!w.act.is_notified(), "nothing woke it");
        });
    }

    /// The same with a wake racing in: the task lends its VCUs at most once, and when it
    /// did not, it was woken (it runs again, and its next wait starts over).
    #[test]
    fn a_held_task_woken_meanwhile_lends_at_most_once() {
        loom::model(|| {
            let w = world();
            let (w2, w3) = (w.clone(), w.clone());
            let queuer = thread::spawn(move || queue(&w2));
            let waker = thread::spawn(move || {
                let _ = w3.act.wake();
            });
            hold(&w);
            queuer.join().unwrap();
            waker.join().unwrap();
            let lent = w.lent.load(Ordering::Relaxed);
            assert!(lent <= 1);
            assert!(lent == 1 || w.act.is_notified(), "lent, or woken to run");
        });
    }
}
