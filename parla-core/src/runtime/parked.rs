//! The pollers that may be blocked: tasks that returned `Pending` at least once and have
//! not finished, and the `block_on` futures. The stall resolver picks among the parked ones
//! the await to fail; shutdown cancels the tasks left.
//!
//! # Invariants
//! - A task is inserted once, by the driver holding its run token, at its first `Pending`
//!   (before its activity can park), and removed once, by its completer. So the set holds
//!   exactly the started, unfinished tasks that ever waited; its size is bounded by the
//!   live tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::waker::MainPoller;
use crate::graph::node::Task;

const SHARDS: usize = 16;

type Shard = Mutex<FxHashMap<usize, (u64, Arc<dyn Task>)>>;

#[derive(Default)]
pub(crate) struct Pollers {
    shards: [Shard; SHARDS],
    seq: AtomicU64,
    mains: Mutex<Vec<Weak<MainPoller>>>,
}

fn key(t: &Arc<dyn Task>) -> usize {
    Arc::as_ptr(t) as *const () as usize
}

impl Pollers {
    fn shard(&self, k: usize) -> &Shard {
        &self.shards[(k >> 6) % SHARDS]
    }

    /// A started task returned `Pending` for the first time.
    pub(crate) fn insert(&self, t: &Arc<dyn Task>) {
        let k = key(t);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.shard(k).lock().insert(k, (seq, t.clone()));
    }

    /// A task that was inserted finished.
    pub(crate) fn remove(&self, t: &Arc<dyn Task>) {
        let k = key(t);
        self.shard(k).lock().remove(&k);
    }

    /// The parked task that waited last (first inserted last), if any.
    pub(crate) fn newest_parked(&self) -> Option<Arc<dyn Task>> {
        let mut best: Option<(u64, Arc<dyn Task>)> = None;
        for s in &self.shards {
            for (seq, t) in s.lock().values() {
                if t.header().act.is_parked() && best.as_ref().is_none_or(|(b, _)| seq > b) {
                    best = Some((*seq, t.clone()));
                }
            }
        }
        best.map(|(_, t)| t)
    }

    /// Every task in the set, taken out (at shutdown).
    pub(crate) fn take_all(&self) -> Vec<Arc<dyn Task>> {
        let mut out = Vec::new();
        for s in &self.shards {
            out.extend(std::mem::take(&mut *s.lock()).into_values().map(|(_, t)| t));
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
