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

/// One shard: a slab of (insertion order, task), its free slots reused.
#[derive(Default)]
struct Slab {
    slots: Vec<Option<(u64, TaskPtr)>>,
    free: Vec<u32>,
}

type Shard = CachePadded<Mutex<Slab>>;

/// The shard a held task is counted in: that of its slot (any fixed one would do, as long
/// as `hold` and `unhold` agree).
#[inline]
fn held_shard(h: &Header) -> usize {
    (h.poller_slot() >> INDEX_BITS) as usize
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
        let (shard, index) = (
            (slot >> INDEX_BITS) as usize,
            slot & ((1 << INDEX_BITS) - 1),
        );
        let mut s = self.shards[shard % SHARDS].lock();
        let ours = matches!(
            s.slots.get(index as usize),
            Some(Some((_, x))) if std::ptr::addr_eq(TaskArc::as_ptr(x), TaskArc::as_ptr(t))
        );
        if ours {
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
    pub(crate) fn hold(&self, t: &TaskPtr) {
        let h = t.header();
        h.set_held(true);
        self.held.add(held_shard(h));
    }

    /// The next holder of the run token of a task that may be held unmarks it. Returns
    /// whether it was held.
    #[inline]
    pub(crate) fn unhold(&self, t: &TaskPtr) -> bool {
        let h = t.header();
        if !h.is_held() {
            return false;
        }
        h.set_held(false);
        self.held.remove(held_shard(h));
        true
    }

    /// The tasks marked as held now (see [`hold`](Self::hold)), from the shards whose held
    /// count is not 0 (the caller made the handshake's fence: `Held::any`).
    pub(crate) fn held_tasks(&self) -> Vec<TaskPtr> {
        let mut out = Vec::new();
        for (i, s) in self.shards.iter().enumerate() {
            if !self.held.in_shard(i) {
                continue;
            }
            out.extend(
                s.lock()
                    .slots
                    .iter()
                    .flatten()
                    .filter(|(_, t)| t.header().is_held())
                    .map(|(_, t)| t.clone()),
            );
        }
        out
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
