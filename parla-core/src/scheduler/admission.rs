//! VCU and memory admission for one device: a plain state machine with two lanes.
//!
//! Items are typed by lane: a *task* asking for its VCUs and memory for the first time, or
//! a *resume* - a task that lent its VCUs back while it waited on other tasks and takes
//! them back before it runs on. Resumes have a lane of their own and go first: a parked
//! task taking back its own VCUs never waits behind work it is blocking (the children it
//! awaits). Whatever an operation admits is pushed to `out`; the caller (the executor) runs
//! it.
//!
//! # Invariants
//! - The VCUs and memory reserved on a device never exceed its capacity (1.0 VCU, the memory
//!   budget): every reservation is one compare-and-swap that checks the sum first.
//! - Each reservation is released exactly once, by the holder of what was admitted.
//! - No lost wake-up: an item waits only while it does not fit. Whoever queues an item
//!   increments `waiting` and then drains the lanes under the lock; whoever releases
//!   resources returns them and then reads `waiting` with a read-modify-write, draining when
//!   it is non-zero. Read-modify-writes of `waiting` are totally ordered: if the releaser's
//!   comes first, the queuer's increment acquires it and its drain sees the released
//!   resources; if it comes second, it reads the increment and drains. (No `SeqCst`
//!   reasoning needed, which loom checks.)
//! - The task lane is FIFO: a newcomer queues behind waiting items even when it would fit,
//!   so a large task is never starved by a stream of small ones. Two exceptions admit out
//!   of order: the stall resolver's [`backfill`](Admission::backfill), when nothing else
//!   can move, and a [`lend`](Admission::lend) to the task the lender awaits, which only
//!   takes what the lender gives up (as if the lender ran it on its own VCUs). Resumes are
//!   admitted first-fit. Items that need nothing bypass both lanes.

use std::collections::VecDeque;

use crate::loom::sync::{AtomicU64, AtomicUsize, Mutex, Ordering};

/// One VCU (a whole device) in fixed point: VCUs are counted in millionths.
pub const VCU_ONE: u32 = 1_000_000;

const VCU_BITS: u32 = 20;
const VCU_MASK: u64 = (1 << VCU_BITS) - 1;
/// The largest memory budget admission can track (16 TiB); larger budgets are clamped.
pub const MAX_MEMORY: u64 = (1 << (64 - VCU_BITS)) - 1;

/// What a task reserves on its device while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    /// VCUs in millionths (`VCU_ONE` is a whole device).
    pub vcu: u32,
    /// Bytes of workspace.
    pub mem: u64,
}

impl Demand {
    fn is_zero(self) -> bool {
        self.vcu == 0 && self.mem == 0
    }
    fn packed(self) -> u64 {
        (self.mem << VCU_BITS) | self.vcu as u64
    }
}

/// Resources in use on a device at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// VCUs in use, in millionths.
    pub vcu: u32,
    /// Bytes reserved.
    pub mem: u64,
    /// Items waiting for admission (both lanes).
    pub waiting: usize,
}

/// Which lane a waiting item is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// A task asking for its resources for the first time.
    Task,
    /// A parked task taking back the VCUs it lent.
    Resume,
}

struct Lanes<T> {
    tasks: VecDeque<(T, Demand)>,
    resumes: VecDeque<(T, Demand)>,
    /// No resume asks for less VCUs, nor for less memory (a bound: kept while items leave,
    /// reset when the lane empties).
    resume_min: Demand,
}

/// How many of the task lane's last items [`Admission::lend`] looks at for the awaited task
/// (a child spawned just before its parent awaits it is at the back).
const LEND_SCAN: usize = 32;

/// The `resume_min` of an empty lane.
const NO_MIN: Demand = Demand {
    vcu: u32::MAX,
    mem: u64::MAX,
};

/// The admission state of one device.
pub(crate) struct Admission<T> {
    used: AtomicU64,
    mem_capacity: u64,
    /// Items in both lanes.
    waiting: AtomicUsize,
    /// Items in the resume lane.
    resuming: AtomicUsize,
    lanes: Mutex<Lanes<T>>,
}

impl<T> std::fmt::Debug for Admission<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("usage", &self.usage())
            .field("mem_capacity", &self.mem_capacity)
            .finish_non_exhaustive()
    }
}

impl<T> Admission<T> {
    pub(crate) fn new(mem_capacity: u64) -> Self {
        Admission {
            used: AtomicU64::new(0),
            mem_capacity: mem_capacity.min(MAX_MEMORY),
            waiting: AtomicUsize::new(0),
            resuming: AtomicUsize::new(0),
            lanes: Mutex::new(Lanes {
                tasks: VecDeque::new(),
                resumes: VecDeque::new(),
                resume_min: NO_MIN,
            }),
        }
    }

    pub(crate) fn mem_capacity(&self) -> u64 {
        self.mem_capacity
    }

    /// Whether `d` fits on an empty device.
    pub(crate) fn can_ever_fit(&self, d: Demand) -> bool {
        d.vcu <= VCU_ONE && d.mem <= self.mem_capacity
    }

    pub(crate) fn usage(&self) -> Usage {
        let u = self.used.load(Ordering::Relaxed);
        Usage {
            vcu: (u & VCU_MASK) as u32,
            mem: u >> VCU_BITS,
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Whether items wait in either lane (a snapshot).
    #[inline]
    pub(crate) fn has_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Reserves `d` now if it fits, whoever waits (for a queue of the caller's own, served
    /// in order). Returns whether it did.
    pub(crate) fn reserve_now(&self, d: Demand) -> bool {
        d.is_zero() || self.try_reserve(d)
    }

    /// The usage word `cur` with `d` added, if that stays within the device's capacity.
    #[inline]
    fn with_added(&self, cur: u64, d: Demand) -> Option<u64> {
        let vcu = (cur & VCU_MASK) + d.vcu as u64;
        let mem = (cur >> VCU_BITS).saturating_add(d.mem);
        (vcu <= VCU_ONE as u64 && mem <= self.mem_capacity).then_some((mem << VCU_BITS) | vcu)
    }

    fn try_reserve(&self, d: Demand) -> bool {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            let Some(next) = self.with_added(cur, d) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// A task asks for `d`: admitted if it fits now and nobody waits, else queued in the
    /// task lane. Everything admitted by this call (the item, or items queued before it)
    /// is pushed to `out`. Returns whether `item` itself was admitted at once.
    #[cfg(test)]
    pub(crate) fn admit(&self, item: T, d: Demand, out: &mut Vec<T>) -> bool {
        match self.admit_now(item, d, out) {
            Ok(()) => true,
            Err(item) => {
                self.queue([(item, d)], out);
                false
            }
        }
    }

    /// [`admit`](Self::admit)'s first step: admits `item` (into `out`) if it fits now and
    /// nobody waits; hands it back otherwise, for the caller to [`queue`](Self::queue).
    #[inline]
    pub(crate) fn admit_now(&self, item: T, d: Demand, out: &mut Vec<T>) -> Result<(), T> {
        if d.is_zero() || (self.waiting.load(Ordering::Acquire) == 0 && self.try_reserve(d)) {
            out.push(item);
            Ok(())
        } else {
            Err(item)
        }
    }

    /// [`admit`](Self::admit)'s second step, for items handed back by
    /// [`admit_now`](Self::admit_now): queues them in the task lane (in order, under one
    /// lock), then admits what fits.
    pub(crate) fn queue(&self, items: impl IntoIterator<Item = (T, Demand)>, out: &mut Vec<T>) {
        let mut q = self.lanes.lock();
        for item in items {
            q.tasks.push_back(item);
            self.waiting.fetch_add(1, Ordering::AcqRel);
        }
        self.drain(&mut q, out);
    }

    /// A parked task takes back `vcu` VCUs. Granted at once (the item is handed back) when
    /// they fit and no other resume waits - waiting tasks do not hold it back. Otherwise it
    /// queues in the resume lane (ahead of every waiting task) and `None` is returned; it
    /// may have been admitted by this very call, into `out`.
    pub(crate) fn resume(&self, item: T, vcu: u32, out: &mut Vec<T>) -> Option<T> {
        let d = Demand { vcu, mem: 0 };
        if d.is_zero() || (self.resuming.load(Ordering::Acquire) == 0 && self.try_reserve(d)) {
            return Some(item);
        }
        let mut q = self.lanes.lock();
        q.resumes.push_back((item, d));
        q.resume_min = Demand {
            vcu: q.resume_min.vcu.min(d.vcu),
            mem: q.resume_min.mem.min(d.mem),
        };
        self.resuming.fetch_add(1, Ordering::AcqRel);
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.drain(&mut q, out);
        None
    }

    /// Releases what an admitted item reserved, and admits waiting items that now fit.
    pub(crate) fn release(&self, d: Demand, out: &mut Vec<T>) {
        if d.is_zero() {
            return;
        }
        self.used.fetch_sub(d.packed(), Ordering::AcqRel);
        // A read-modify-write, not a load: see the module invariants.
        if self.waiting.fetch_add(0, Ordering::AcqRel) > 0 {
            let mut q = self.lanes.lock();
            self.drain(&mut q, out);
        }
    }

    /// A running task lends `d` (its VCUs) while it awaits another task, which
    /// `awaited` recognises: like [`release`](Self::release), except that if the awaited
    /// task waits in the task lane (among its last [`LEND_SCAN`] items) and asks for no more
    /// VCUs than `d` and no memory, it is admitted first, out of order.
    ///
    /// That is as if the lender kept its VCUs and ran the task it waits for on them, so a
    /// waiting task is no worse off than without the loan - and a parent awaiting its
    /// children one by one runs its tree depth first, instead of the lane's order
    /// expanding it breadth first.
    pub(crate) fn lend(&self, d: Demand, awaited: impl Fn(&T) -> bool, out: &mut Vec<T>) {
        if d.is_zero() {
            return;
        }
        self.used.fetch_sub(d.packed(), Ordering::AcqRel);
        // A read-modify-write, not a load: see the module invariants.
        if self.waiting.fetch_add(0, Ordering::AcqRel) > 0 {
            let mut q = self.lanes.lock();
            let n = q.tasks.len();
            let found = (n.saturating_sub(LEND_SCAN)..n)
                .rev()
                .find(|&i| awaited(&q.tasks[i].0));
            if let Some(i) = found {
                let c = q.tasks[i].1;
                if c.vcu <= d.vcu
                    && c.mem == 0
                    && self.try_reserve(c)
                    && let Some((item, _)) = q.tasks.remove(i)
                {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    out.push(item);
                }
            }
            self.drain(&mut q, out);
        }
    }

    /// Admits what fits: resumes first-fit, then tasks in order up to the first that does
    /// not fit.
    fn drain(&self, q: &mut Lanes<T>, out: &mut Vec<T>) {
        self.drain_resumes(q, out);
        while let Some(&(_, d)) = q.tasks.front() {
            if !self.try_reserve(d) {
                break;
            }
            if let Some((item, _)) = q.tasks.pop_front() {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                out.push(item);
            }
        }
        // A burst of waiting tasks should not keep its queue's memory for good.
        if q.tasks.is_empty() && q.tasks.capacity() > 4096 {
            q.tasks.shrink_to(64);
        }
    }

    #[inline]
    fn drain_resumes(&self, q: &mut Lanes<T>, out: &mut Vec<T>) {
        if !q.resumes.is_empty() {
            let n = self.admit_fitting(&mut q.resumes, q.resume_min, out);
            if q.resumes.is_empty() {
                q.resume_min = NO_MIN;
            }
            self.resuming.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Admits every item of `lane` that fits, in order, keeping the others in their order
    /// (in place). `min`: no item asks for less (a bound): the pass stops as soon as not even
    /// that fits any more, so a release with many resumes waiting for the same share (a
    /// fork-join tree's parents) admits the first and stops, instead of trying them all.
    /// Returns how many it admitted.
    fn admit_fitting(
        &self,
        lane: &mut VecDeque<(T, Demand)>,
        min: Demand,
        out: &mut Vec<T>,
    ) -> usize {
        let mut admitted = 0;
        let mut i = 0;
        while i < lane.len() && self.could_fit(min) {
            if self.try_reserve(lane[i].1) {
                if let Some((item, _)) = lane.remove(i) {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    out.push(item);
                    admitted += 1;
                }
            } else {
                i += 1;
            }
        }
        admitted
    }

    /// Whether `d` fits in what is free now.
    fn could_fit(&self, d: Demand) -> bool {
        self.with_added(self.used.load(Ordering::Acquire), d)
            .is_some()
    }

    /// At a stall (nothing running can release anything): admits every waiting item that
    /// fits, out of order. Returns how many it admitted.
    pub(crate) fn backfill(&self, out: &mut Vec<T>) -> usize {
        let mut q = self.lanes.lock();
        let before = self.waiting.load(Ordering::Acquire);
        self.drain_resumes(&mut q, out);
        let q = &mut *q;
        self.admit_fitting(&mut q.tasks, Demand::default(), out);
        before - self.waiting.load(Ordering::Acquire)
    }

    /// Removes and returns the first waiting item (resumes first), for the stall resolver.
    pub(crate) fn take_first_waiting(&self) -> Option<(T, Demand, Lane)> {
        let mut q = self.lanes.lock();
        if let Some((t, d)) = q.resumes.pop_front() {
            self.resuming.fetch_sub(1, Ordering::AcqRel);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Some((t, d, Lane::Resume));
        }
        let (t, d) = q.tasks.pop_front()?;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        Some((t, d, Lane::Task))
    }

    /// Removes and returns every waiting item (at shutdown, or when the device fails).
    pub(crate) fn take_waiting(&self) -> Vec<(T, Demand, Lane)> {
        let mut q = self.lanes.lock();
        self.waiting.store(0, Ordering::Release);
        self.resuming.store(0, Ordering::Release);
        let resumes = std::mem::take(&mut q.resumes);
        let tasks = std::mem::take(&mut q.tasks);
        resumes
            .into_iter()
            .map(|(t, d)| (t, d, Lane::Resume))
            .chain(tasks.into_iter().map(|(t, d)| (t, d, Lane::Task)))
            .collect()
    }
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use super::*;

    fn d(vcu: u32, mem: u64) -> Demand {
        Demand { vcu, mem }
    }

    #[test]
    fn vcus_limit_concurrency() {
        let a = Admission::new(100);
        let mut out = Vec::new();
        assert!(a.admit(1, d(VCU_ONE / 2, 0), &mut out));
        assert!(a.admit(2, d(VCU_ONE / 2, 0), &mut out));
        assert!(!a.admit(3, d(VCU_ONE / 2, 0), &mut out));
        assert_eq!(out, vec![1, 2]);
        assert_eq!(a.usage().waiting, 1);
        a.release(d(VCU_ONE / 2, 0), &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        assert_eq!(a.usage().vcu, VCU_ONE);
    }

    #[test]
    fn fifo_and_memory() {
        let a = Admission::new(100);
        let mut out = Vec::new();
        assert!(a.admit(1, d(0, 60), &mut out));
        assert!(!a.admit(2, d(0, 60), &mut out));
        // Fits, but queues behind 2.
        assert!(!a.admit(3, d(0, 10), &mut out));
        assert!(a.admit(4, d(0, 0), &mut out), "zero demand bypasses");
        a.release(d(0, 60), &mut out);
        assert_eq!(out, vec![1, 4, 2, 3]);
        assert_eq!(
            a.usage(),
            Usage {
                vcu: 0,
                mem: 70,
                waiting: 0
            }
        );
        assert!(a.can_ever_fit(d(VCU_ONE, 100)));
        assert!(!a.can_ever_fit(d(VCU_ONE + 1, 0)));
        assert!(!a.can_ever_fit(d(0, 101)));
    }

    #[test]
    fn thirds_fit_three_times() {
        let a = Admission::<u8>::new(0);
        let third = (VCU_ONE as f64 / 3.0).floor() as u32;
        let mut out = Vec::new();
        for i in 0..3 {
            assert!(a.admit(i, d(third, 0), &mut out));
        }
        assert!(!a.admit(3, d(third, 0), &mut out));
    }

    #[test]
    fn resumes_pass_waiting_tasks() {
        let a = Admission::new(100);
        let mut out = Vec::new();
        // A parent holds memory and lent its VCUs; a task needing memory waits.
        assert!(a.admit(1, d(VCU_ONE / 2, 60), &mut out));
        a.release(d(VCU_ONE / 2, 0), &mut out);
        assert!(!a.admit(2, d(VCU_ONE / 2, 60), &mut out));
        // The parent takes its VCUs back at once: the waiting task does not hold it back.
        assert_eq!(a.resume(1, VCU_ONE / 2, &mut out), Some(1));
        assert_eq!(a.usage().vcu, VCU_ONE / 2);
        out.clear();
        // A second resume that does not fit queues, ahead of the waiting tasks.
        assert!(!a.admit(3, d(VCU_ONE / 2, 0), &mut out), "behind task 2");
        assert_eq!(a.resume(9, VCU_ONE, &mut out), None);
        assert!(out.is_empty());
        a.release(d(VCU_ONE / 2, 0), &mut out);
        assert_eq!(out, vec![9], "the resume goes first");
        assert_eq!(a.usage().waiting, 2);
    }

    /// Resumes are admitted first-fit, in order: a release admits the first that fits
    /// (a smaller one behind a larger one that does not fit), and the others keep their
    /// order for the next release.
    #[test]
    fn resumes_are_admitted_first_fit_in_order() {
        let a = Admission::new(100);
        let mut out = Vec::new();
        let quarter = VCU_ONE / 4;
        assert!(a.admit(0, d(VCU_ONE, 0), &mut out));
        out.clear();
        // Parked parents taking back their VCUs: all wait while task 0 holds everything.
        for (item, vcu) in [(1, VCU_ONE / 2), (2, quarter), (3, quarter), (4, quarter)] {
            assert_eq!(a.resume(item, vcu, &mut out), None);
        }
        assert!(out.is_empty());
        // A quarter frees: 1 does not fit, 2 does; 3 and 4 wait.
        a.release(d(quarter, 0), &mut out);
        assert_eq!(out, vec![2]);
        // Three quarters more: 1 (a half) then 3 (a quarter) fit; 4 waits, alone.
        a.release(d(3 * quarter, 0), &mut out);
        assert_eq!(out, vec![2, 1, 3]);
        assert_eq!(a.usage().waiting, 1);
        assert_eq!(a.usage().vcu, VCU_ONE);
        a.release(d(quarter, 0), &mut out);
        assert_eq!(out, vec![2, 1, 3, 4]);
        assert_eq!(a.usage().waiting, 0);
    }

    #[test]
    fn a_lend_admits_the_awaited_task_first_within_the_loan() {
        let half = VCU_ONE / 2;
        let a = Admission::new(100);
        let mut out = Vec::new();
        assert!(a.admit(1, d(half, 0), &mut out));
        assert!(a.admit(2, d(half, 0), &mut out));
        // Waiting: 3 (first), the awaited 4, 5 needing memory, 6 needing more VCUs.
        for (i, dm) in [
            (3, d(half, 0)),
            (4, d(half, 0)),
            (5, d(half, 10)),
            (6, d(VCU_ONE, 0)),
        ] {
            assert!(!a.admit(i, dm, &mut out));
        }
        out.clear();
        // 1 lends its half while it awaits 4: 4 goes first, out of order.
        a.lend(d(half, 0), |&t| t == 4, &mut out);
        assert_eq!(out, vec![4]);
        assert_eq!(a.usage().waiting, 3);
        // Awaiting 5 (memory) or 6 (more than the loan): the lane's order.
        a.lend(d(half, 0), |&t| t == 5, &mut out);
        assert_eq!(out, vec![4, 3]);
        a.release(d(half, 0), &mut out);
        a.lend(d(half, 0), |&t| t == 6, &mut out);
        assert_eq!(out, vec![4, 3, 5]);
        assert_eq!(
            a.usage(),
            Usage {
                vcu: half,
                mem: 10,
                waiting: 1
            }
        );
    }

    #[test]
    fn backfill_admits_around_a_blocked_head() {
        let a = Admission::new(100);
        let mut out = Vec::new();
        assert!(a.admit(1, d(0, 60), &mut out));
        assert!(
            !a.admit(2, d(0, 60), &mut out),
            "head: needs memory held by 1"
        );
        assert!(
            !a.admit(3, d(VCU_ONE / 2, 0), &mut out),
            "fits, but behind 2"
        );
        out.clear();
        assert_eq!(a.backfill(&mut out), 1);
        assert_eq!(out, vec![3]);
        assert_eq!(a.usage().waiting, 1);
        let (t, dd, lane) = a.take_first_waiting().unwrap();
        assert_eq!((t, dd, lane), (2, d(0, 60), Lane::Task));
        assert!(a.take_first_waiting().is_none());
    }
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const HALF: Demand = Demand {
        vcu: VCU_ONE / 2,
        mem: 0,
    };
    const FULL: Demand = Demand {
        vcu: VCU_ONE,
        mem: 0,
    };

    /// A release racing with a queueing admit never strands the queued item.
    #[test]
    fn release_vs_admit_no_lost_wakeup() {
        loom::model(|| {
            let a = Arc::new(Admission::new(0));
            let mut out = Vec::new();
            assert!(a.admit(0u8, HALF, &mut out));
            let a2 = a.clone();
            let t = thread::spawn(move || {
                let mut out = Vec::new();
                a2.release(HALF, &mut out);
                out
            });
            let mut mine = Vec::new();
            a.admit(1u8, FULL, &mut mine);
            let theirs = t.join().unwrap();
            let admitted: Vec<u8> = mine.into_iter().chain(theirs).collect();
            assert_eq!(admitted, vec![1]);
            assert_eq!(a.usage().vcu, VCU_ONE);
        });
    }

    /// A release racing with a queueing resume: the resume is granted exactly once.
    #[test]
    fn release_vs_resume_no_lost_wakeup() {
        loom::model(|| {
            let a = Arc::new(Admission::new(0));
            let mut out = Vec::new();
            assert!(a.admit(0u8, FULL, &mut out));
            let a2 = a.clone();
            let t = thread::spawn(move || {
                let mut out = Vec::new();
                a2.release(FULL, &mut out);
                out
            });
            let mut mine = Vec::new();
            let at_once = a.resume(1u8, VCU_ONE / 2, &mut mine);
            let theirs = t.join().unwrap();
            let granted: Vec<u8> = at_once.into_iter().chain(mine).chain(theirs).collect();
            assert_eq!(granted, vec![1]);
            assert_eq!(a.usage().vcu, VCU_ONE / 2);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A lend to an awaited item racing with a queueing admit: both are admitted, once each.
    #[test]
    fn lend_vs_admit_no_lost_wakeup() {
        loom::model(|| {
            let a = Arc::new(Admission::new(0));
            let mut out = Vec::new();
            assert!(a.admit(0u8, FULL, &mut out));
            assert!(!a.admit(1u8, HALF, &mut out), "the awaited item waits");
            let a2 = a.clone();
            let t = thread::spawn(move || {
                let mut out = Vec::new();
                a2.admit(2u8, HALF, &mut out);
                out
            });
            let mut mine = Vec::new();
            a.lend(FULL, |&i| i == 1, &mut mine);
            let mut all: Vec<u8> = mine.into_iter().chain(t.join().unwrap()).collect();
            all.sort();
            assert_eq!(all, vec![1, 2]);
            assert_eq!(a.usage().vcu, VCU_ONE);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// Two releases and two queued items: both items end up admitted exactly once.
    #[test]
    fn two_releasers_two_waiters() {
        loom::model(|| {
            let a = Arc::new(Admission::new(0));
            let mut out = Vec::new();
            assert!(a.admit(0u8, HALF, &mut out));
            assert!(a.admit(1u8, HALF, &mut out));
            let a2 = a.clone();
            let t = thread::spawn(move || {
                let mut out = Vec::new();
                a2.admit(2u8, HALF, &mut out);
                a2.release(HALF, &mut out);
                out
            });
            let mut mine = Vec::new();
            a.admit(3u8, HALF, &mut mine);
            a.release(HALF, &mut mine);
            let mut all: Vec<u8> = mine.into_iter().chain(t.join().unwrap()).collect();
            all.sort();
            assert_eq!(all, vec![2, 3]);
            assert_eq!(a.usage().waiting, 0);
        });
    }
}
