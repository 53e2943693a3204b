//! The pollers that may be blocked: tasks that returned `Pending` at least once and have
//! not finished, and the `block_on` futures. The stall resolver picks among the parked ones
//! the await to fail; shutdown cancels the tasks left.
//!
//! # Invariants
//! - A task is inserted once, by the driver holding its run token, at its first `Pending`
//!   (before its activity can park), and removed once, by its completer, through the slot
//!   its header keeps (checked to still hold the task: shutdown may have emptied the set).
//!   So the set holds exactly the started, unfinished tasks that ever waited; its size is
//!   bounded by the live tasks.
//! - Each thread inserts into a shard of its own (while there are no more threads than
//!   shards), and shards sit on cache lines of their own: a worker's inserts touch lines
//!   other workers do not, except when another thread completes the task and removes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::waker::MainPoller;
use crate::graph::arc::{TaskArc, TaskPtr};
use crate::graph::node::Header;
use crate::scheduler::idle::Held;

const SHARDS: usize = 16;
/// A slot number: the shard in the top bits, the index in the shard below.
const INDEX_BITS: u32 = 27;

/// One shard: a slab of (insertion order, task), its free slots reused, and the slots of
/// the tasks listed as held (`scheduler::idle::HeldMark`: every held task of the shard, and
/// those unmarked since the last look through the list), each task knowing its place here.
#[derive(Default)]
struct Slab {
    slots: Vec<Option<(u64, TaskPtr)>>,
    free: Vec<u32>,
    held: Vec<u32>,
}

impl Slab {
    /// The task in slot `index`, if any.
    fn task(&self, index: u32) -> Option<&TaskPtr> {
        self.slots.get(index as usize)?.as_ref().map(|(_, t)| t)
    }

    /// Drops entry `k` of the held list; the entry moved into its place learns it.
    fn unlist_at(&mut self, k: usize) {
        self.held.swap_remove(k);
        if let Some(&moved) = self.held.get(k)
            && let Some((_, pos)) = self.task(moved).and_then(|t| t.header().held())
        {
            pos.store(k as u32, Ordering::Relaxed);
        }
    }
}

type Shard = CachePadded<Mutex<Slab>>;

/// The shard a held task is counted in: that of its slot (any fixed one would do, as long
/// as `hold` and `unhold` agree).
#[inline]
fn held_shard(h: &Header) -> usize {
    split(h.poller_slot()).0
}

/// The shard and the index in it of slot number `slot`.
#[inline]
fn split(slot: u32) -> (usize, u32) {
    (
        (slot >> INDEX_BITS) as usize % SHARDS,
        slot & ((1 << INDEX_BITS) - 1),
    )
}

/// The calling thread's shard.
#[inline]
fn home() -> u32 {
    (crate::scheduler::thread_number() % SHARDS) as u32
}

#[derive(Default)]
pub(crate) struct Pollers {
    shards: [Shard; SHARDS],
    seq: AtomicU64,
    mains: Mutex<Vec<Weak<MainPoller>>>,
    /// How many of the set's CPU tasks keep their VCUs while they wait outside the runtime,
    /// counted by the shard the task is in (`scheduler::idle`).
    pub(crate) held: Held,
    /// Entries of the held lists looked at by [`held_tasks`](Self::held_tasks) (counted
    /// for tests, as the runtime's other such counts).
    #[cfg(all(test, not(parla_loom)))]
    looked_at: AtomicU64,
}

impl Pollers {
    /// A started task returned `Pending` for the first time (its run state saved): it
    /// takes a slot, which its header keeps for [`remove`](Self::remove) - no hashing.
    pub(crate) fn insert(&self, t: &TaskPtr) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let shard = home();
        let mut s = self.shards[shard as usize].lock();
        let entry = Some((seq, t.clone()));
        let index = match s.free.pop() {
            Some(i) => {
                s.slots[i as usize] = entry;
                i
            }
            None => {
                s.slots.push(entry);
                (s.slots.len() - 1) as u32
            }
        };
        drop(s);
        t.header().set_poller_slot((shard << INDEX_BITS) | index);
    }

    /// A task that was inserted finished (or was taken out at shutdown meanwhile).
    pub(crate) fn remove(&self, t: &TaskPtr) {
        let slot = t.header().poller_slot();
        if slot == u32::MAX {
            return;
        }
        let (shard, index) = split(slot);
        let mut s = self.shards[shard].lock();
        let ours = matches!(
            s.slots.get(index as usize),
            Some(Some((_, x))) if std::ptr::addr_eq(TaskArc::as_ptr(x), TaskArc::as_ptr(t))
        );
        if ours {
            if let Some((mark, pos)) = t.header().held()
                && mark.take_listed()
            {
                s.unlist_at(pos.load(Ordering::Relaxed) as usize);
            }
            let old = s.slots[index as usize].take();
            s.free.push(index);
            drop(s);
            // The set's reference, dropped outside the lock.
            drop(old);
        }
    }

    /// A CPU task in the set, whose poll just returned `Pending` without awaiting tasks,
    /// keeps its VCUs while it waits: marked and counted (`scheduler::idle`). The caller
    /// holds its run token, and its activity has not left RUNNING.
    ///
    /// A task not listed yet is listed (under its shard's lock) before it is counted, so
    /// that a queuer who sees the count finds it in the list (`scheduler::idle`).
    pub(crate) fn hold(&self, t: &TaskPtr) {
        let h = t.header();
        let Some((mark, pos)) = h.held() else {
            return;
        };
        if mark.mark() {
            let (shard, index) = split(h.poller_slot());
            let mut s = self.shards[shard].lock();
            // (Not in the set any more only after shutdown took every task out.)
            if s.task(index).is_some_and(|x| TaskArc::ptr_eq(x, t)) {
                pos.store(s.held.len() as u32, Ordering::Relaxed);
                s.held.push(index);
                mark.listed();
            }
        }
        self.held.add(held_shard(h));
    }

    /// The next holder of the run token of a task that may be held unmarks it. Returns
    /// whether it was held. (It stays listed until a queuer looks.)
    #[inline]
    pub(crate) fn unhold(&self, t: &TaskPtr) -> bool {
        let h = t.header();
        if !h.held().is_some_and(|(mark, _)| mark.unmark()) {
            return false;
        }
        self.held.remove(held_shard(h));
        true
    }

    /// The tasks marked as held now (see [`hold`](Self::hold)), from the lists of the
    /// shards whose held count is not 0 (the caller made the handshake's fence:
    /// `Held::any`). The entries of tasks no longer held are dropped on the way, so each
    /// hold costs one entry looked at, whatever number of tasks wait.
    pub(crate) fn held_tasks(&self) -> Vec<TaskPtr> {
        let mut out = Vec::new();
        for (i, s) in self.shards.iter().enumerate() {
            if !self.held.in_shard(i) {
                continue;
            }
            let mut s = s.lock();
            #[cfg(all(test, not(parla_loom)))]
            self.looked_at
                .fetch_add(s.held.len() as u64, Ordering::Relaxed);
            let mut k = 0;
            while k < s.held.len() {
                let Some(t) = s.task(s.held[k]) else {
                    // (Never: a task leaves its list as it leaves its slot.)
                    s.unlist_at(k);
                    continue;
                };
                let Some((mark, _)) = t.header().held() else {
                    s.unlist_at(k);
                    continue;
                };
                if mark.unlist() {
                    s.unlist_at(k);
                } else {
                    out.push(t.clone());
                    k += 1;
                }
            }
        }
        out
    }

    /// How many entries of the lists of held tasks were looked at so far (for tests).
    #[cfg(all(test, not(parla_loom)))]
    pub(crate) fn held_looked_at(&self) -> u64 {
        self.looked_at.load(Ordering::Relaxed)
    }

    /// The parked task that waited last (first inserted last), if any.
    pub(crate) fn newest_parked(&self) -> Option<TaskPtr> {
        let mut best: Option<(u64, TaskPtr)> = None;
        for s in &self.shards {
            for (seq, t) in s.lock().slots.iter().flatten() {
                if t.header().act.is_parked() && best.as_ref().is_none_or(|(b, _)| seq > b) {
                    best = Some((*seq, t.clone()));
                }
            }
        }
        best.map(|(_, t)| t)
    }

    /// Every task in the set, taken out (at shutdown).
    pub(crate) fn take_all(&self) -> Vec<TaskPtr> {
        let mut out = Vec::new();
        for s in &self.shards {
            let slab = std::mem::take(&mut *s.lock());
            out.extend(slab.slots.into_iter().flatten().map(|(_, t)| t));
        }
        out
    }

    /// A `block_on` future starts.
    pub(crate) fn add_main(&self, m: &Arc<MainPoller>) {
        let mut v = self.mains.lock();
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(m));
    }

    /// A parked `block_on` future, if any.
    pub(crate) fn parked_main(&self) -> Option<Arc<MainPoller>> {
        self.mains
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .find(|m| m.act.is_parked())
    }
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use crate::runtime::Runtime;

    /// Tasks spawned from `block_on` that each wait on a channel, more of them than the
    /// CPU's VCUs admit at once: each keeps its VCUs as it waits, and lends them when the
    /// next spawn waits for VCUs. A queuer looks at the held tasks' entries alone, so the
    /// entries looked at grow with the number of tasks, not with its square (every
    /// waiting task was looked at for every spawn: 10^6 such spawns took 21 s, against
    /// 0.7 s on Tokio).
    #[test]
    fn spawns_beside_many_tasks_waiting_on_channels_look_at_the_held_ones_alone() {
        let n = 20_000;
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        let sum = rt.block_on(async {
            let mut senders = Vec::with_capacity(n);
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let (tx, rx) = tokio::sync::oneshot::channel::<u64>();
                    senders.push(tx);
                    crate::task(async move { rx.await.unwrap() + i as u64 }).spawn()
                })
                .collect();
            for tx in senders {
                tx.send(1).unwrap();
            }
            let mut sum = 0;
            for h in handles {
                sum += h.await.unwrap();
            }
            sum
        });
        assert_eq!(sum, (n as u64) * (n as u64 - 1) / 2 + n as u64);
        let looked = rt.inner.pollers.held_looked_at();
        assert!(
            looked <= 4 * n as u64,
            "{looked} entries looked at for {n} tasks waiting on channels"
        );
    }
}
