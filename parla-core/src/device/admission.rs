//! VCU and memory admission for one device.
//!
//! # Invariants
//! - The VCUs and memory reserved on a device never exceed its capacity (1.0 VCU, the memory
//!   budget): every reservation is one compare-and-swap that checks the sum first.
//! - Each reservation is released exactly once, by the holder of what was admitted.
//! - No lost wake-up: an item waits in the queue only while the head of the queue does not
//!   fit. Whoever queues an item increments `waiting` and then drains the queue under the
//!   lock; whoever releases resources returns them and then reads `waiting` with a
//!   read-modify-write, draining when it is non-zero. Read-modify-writes of `waiting` are
//!   totally ordered: if the releaser's comes first, the queuer's increment acquires it and
//!   its drain sees the released resources; if it comes second, it reads the increment and
//!   drains. (No `SeqCst` reasoning needed, which loom can check.)
//! - The queue is FIFO: a newcomer queues behind waiting items even when it would fit, so a
//!   large task is never starved by a stream of small ones. Items that need nothing (0 VCUs,
//!   0 bytes) bypass the queue.

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
    /// Items waiting in the admission queue.
    pub waiting: usize,
}

/// The admission state of one device: a reservation word and a FIFO of waiting items.
#[derive(Debug)]
pub(crate) struct Admission<T> {
    used: AtomicU64,
    mem_capacity: u64,
    waiting: AtomicUsize,
    queue: Mutex<VecDeque<(T, Demand)>>,
}

impl<T> Admission<T> {
    pub(crate) fn new(mem_capacity: u64) -> Self {
        Admission {
            used: AtomicU64::new(0),
            mem_capacity: mem_capacity.min(MAX_MEMORY),
            waiting: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
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

    fn try_reserve(&self, d: Demand) -> bool {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            let vcu = (cur & VCU_MASK) as u32 + d.vcu;
            let mem = (cur >> VCU_BITS) + d.mem;
            if vcu > VCU_ONE || mem > self.mem_capacity {
                return false;
            }
            let next = (mem << VCU_BITS) | vcu as u64;
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Admits `item` if its demand fits now and nobody is waiting; otherwise queues it.
    /// Everything admitted by this call (the item and possibly items queued before it) is
    /// pushed to `out`. Returns whether `item` itself was admitted at once.
    pub(crate) fn admit(&self, item: T, d: Demand, out: &mut impl Extend<T>) -> bool {
        if d.is_zero() || (self.waiting.load(Ordering::Acquire) == 0 && self.try_reserve(d)) {
            out.extend(Some(item));
            return true;
        }
        let mut q = self.queue.lock();
        q.push_back((item, d));
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.drain(&mut q, out);
        false
    }

    /// Releases what an admitted item reserved, and admits waiting items that now fit.
    pub(crate) fn release(&self, d: Demand, out: &mut impl Extend<T>) {
        if d.is_zero() {
            return;
        }
        self.used.fetch_sub(d.packed(), Ordering::AcqRel);
        // A read-modify-write, not a load: see the module invariants.
        if self.waiting.fetch_add(0, Ordering::AcqRel) > 0 {
            let mut q = self.queue.lock();
            self.drain(&mut q, out);
        }
    }

    fn drain(&self, q: &mut VecDeque<(T, Demand)>, out: &mut impl Extend<T>) {
        while let Some(&(_, d)) = q.front() {
            if !self.try_reserve(d) {
                break;
            }
            if let Some((item, _)) = q.pop_front() {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                out.extend(Some(item));
            }
        }
        // A burst of waiting tasks should not keep its queue's memory for good.
        if q.is_empty() && q.capacity() > 4096 {
            q.shrink_to(64);
        }
    }

    /// Removes and returns every waiting item (the stall resolver fails them).
    pub(crate) fn take_waiting(&self) -> Vec<(T, Demand)> {
        let mut q = self.queue.lock();
        self.waiting.store(0, Ordering::Release);
        q.drain(..).collect()
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
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// A release racing with a queueing admit never strands the queued item.
    #[test]
    fn release_vs_admit_no_lost_wakeup() {
        loom::model(|| {
            let a = Arc::new(Admission::new(0));
            let half = Demand {
                vcu: VCU_ONE / 2,
                mem: 0,
            };
            let full = Demand {
                vcu: VCU_ONE,
                mem: 0,
            };
            let mut out = Vec::new();
            assert!(a.admit(0u8, half, &mut out));
            let a2 = a.clone();
            let t = thread::spawn(move || {
                let mut out = Vec::new();
                a2.release(half, &mut out);
                out
            });
            let mut mine = Vec::new();
            a.admit(1u8, full, &mut mine);
            let theirs = t.join().unwrap();
            let admitted: Vec<u8> = mine.into_iter().chain(theirs).collect();
            assert_eq!(admitted, vec![1]);
            assert_eq!(a.usage().vcu, VCU_ONE);
        });
    }

    /// Two releases and two queued items: both items end up admitted exactly once.
    #[test]
    fn two_releasers_two_waiters() {
        loom::model(|| {
            let a = Arc::new(Admission::new(0));
            let half = Demand {
                vcu: VCU_ONE / 2,
                mem: 0,
            };
            let mut out = Vec::new();
            assert!(a.admit(0u8, half, &mut out));
            assert!(a.admit(1u8, half, &mut out));
            let a2 = a.clone();
            let t = thread::spawn(move || {
                let mut out = Vec::new();
                a2.admit(2u8, half, &mut out);
                a2.release(half, &mut out);
                out
            });
            let mut mine = Vec::new();
            a.admit(3u8, half, &mut mine);
            a.release(half, &mut mine);
            let mut all: Vec<u8> = mine.into_iter().chain(t.join().unwrap()).collect();
            all.sort();
            assert_eq!(all, vec![2, 3]);
            assert_eq!(a.usage().waiting, 0);
        });
    }
}
