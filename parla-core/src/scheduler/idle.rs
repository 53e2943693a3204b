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
//! back ahead of waiting tasks (the resume lane), except that every so often the waiting
//! tasks go first (`Admission::resume_outside`): tasks yielding in a loop would otherwise
//! keep the tasks that never started from ever starting.
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

use crate::loom::sync::{AtomicU8, AtomicU32, AtomicUsize, Ordering, fence};

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

/// A task's mark of being held, and whether it is listed among its shard's held tasks.
///
/// A queuer looks for held tasks in its shard's list of them (`runtime::parked`), not among
/// every task that ever waited: with many tasks parked on channels or timers and lent
/// already, looking through all of them at each task queued made spawning quadratic.
///
/// - *Held* is set by the holder of the task's run token ([`mark`](Self::mark)) and
///   cleared by the next one ([`unmark`](Self::unmark)).
/// - *Listed* is set and cleared under the lock of the shard's list, so it tells exactly
///   whether the list has an entry for the task: set where a mark finds it clear (the
///   marker lists the task), cleared by a queuer's look through the list for a task no
///   longer held ([`unlist`](Self::unlist)), or where the task leaves the set of pollers.
/// - So a held task is always listed: the mark is one read-modify-write on the word, and
///   the queuer's unlisting a compare-and-swap that expects the task not held. Whichever
///   comes first, the other sees it (checked by loom: `loom_test` below).
#[derive(Default)]
pub(crate) struct HeldMark(AtomicU8);

const HELD: u8 = 1;
const LISTED: u8 = 2;

impl HeldMark {
    /// Marks the task held (the caller holds its run token). Returns whether it must be
    /// listed now (it was not), by [`listed`](Self::listed) under the list's lock.
    #[inline]
    pub(crate) fn mark(&self) -> bool {
        self.0.fetch_or(HELD, Ordering::Relaxed) & LISTED == 0
    }

    /// The task was listed (under the list's lock).
    #[inline]
    pub(crate) fn listed(&self) {
        self.0.fetch_or(LISTED, Ordering::Relaxed);
    }

    /// Unmarks the task (the caller holds its run token). Returns whether it was held.
    ///
    /// A read and a write, not a read-modify-write: nothing else changes the word while
    /// the task is held. The marker and this are the run token's holders, one at a time,
    /// and a queuer's [`unlist`](Self::unlist) expects the task not held.
    #[inline]
    pub(crate) fn unmark(&self) -> bool {
        let s = self.0.load(Ordering::Relaxed);
        if s & HELD == 0 {
            return false;
        }
        self.0.store(s & !HELD, Ordering::Relaxed);
        true
    }

    /// Whether the task is held.
    #[cfg(all(test, parla_loom))]
    pub(crate) fn is_held(&self) -> bool {
        self.0.load(Ordering::Relaxed) & HELD != 0
    }

    /// A queuer found the task in the list (under its lock): unlists it if it is not held
    /// (the caller then drops its entry). Returns whether it did; `false` means the task is
    /// held, and stays listed.
    #[inline]
    pub(crate) fn unlist(&self) -> bool {
        self.0
            .compare_exchange(LISTED, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// The task leaves the set of pollers (under the list's lock, by the holder of its run
    /// token): returns whether it was listed, and is not any more.
    #[inline]
    pub(crate) fn take_listed(&self) -> bool {
        self.0.fetch_and(!LISTED, Ordering::Relaxed) & LISTED != 0
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

    /// A task marked held (and listed if it was not) while a queuer looks through the list
    /// and unlists what is not held: afterwards the task is listed exactly when the list
    /// has its entry, and listed whenever it is held. Two rounds: the second mark finds the
    /// task listed or not, as the queuer left it.
    #[test]
    fn a_held_task_is_always_in_its_list() {
        use loom::sync::Mutex;
        loom::model(|| {
            let mark = Arc::new(HeldMark::default());
            // The shard's list: how many entries the task has.
            let list = Arc::new(Mutex::new(0usize));
            let (m2, l2) = (mark.clone(), list.clone());
            let queuer = thread::spawn(move || {
                let mut entries = l2.lock().unwrap();
                if *entries > 0 && m2.unlist() {
                    *entries -= 1;
                }
            });
            for _ in 0..2 {
                if mark.mark() {
                    let mut entries = list.lock().unwrap();
                    *entries += 1;
                    mark.listed();
                }
                assert!(mark.unmark());
            }
            if mark.mark() {
                let mut entries = list.lock().unwrap();
                *entries += 1;
                mark.listed();
            }
            queuer.join().unwrap();
            let entries = *list.lock().unwrap();
            assert!(mark.is_held());
            assert_eq!(entries, 1, "a held task has one entry");
            assert!(mark.take_listed(), "and is listed");
        });
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
