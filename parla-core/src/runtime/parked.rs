//! Awaits of tasks that are parked: what the stall resolver fails when nothing else can.
//!
//! A task (or `block_on`) awaiting another task's handle, id or space registers here while
//! it waits. If the runtime stalls with such awaits left and nothing else to fail (tasks
//! awaiting each other inside their bodies: no dependency edge shows the cycle), the
//! resolver fails every registered await with `Deadlock` and wakes it, so `block_on`
//! returns instead of hanging.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Waker;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::RtInner;
use crate::error::TaskError;
use crate::task::Task;

struct Entry {
    waker: Waker,
    failed: Arc<AtomicBool>,
    /// Made from inside a task (else from `block_on`).
    in_task: bool,
}

/// The registry of parked awaits of one runtime.
#[derive(Default)]
pub(crate) struct ParkedAwaits {
    entries: Mutex<FxHashMap<u64, Entry>>,
    next: AtomicU64,
}

impl ParkedAwaits {
    /// Fails the registered awaits made inside tasks (or, if there are none, those of
    /// `block_on`) and wakes them: tasks get to handle the error and finish, which may let
    /// `block_on`'s own awaits finish normally. Returns how many it failed.
    pub(crate) fn fail_stuck(&self) -> usize {
        let mut entries = self.entries.lock();
        let in_tasks = entries.values().any(|e| e.in_task);
        let ids: Vec<u64> = entries
            .iter()
            .filter(|(_, e)| e.in_task == in_tasks)
            .map(|(id, _)| *id)
            .collect();
        let failed: Vec<Entry> = ids.iter().filter_map(|id| entries.remove(id)).collect();
        drop(entries);
        for e in &failed {
            e.failed.store(true, Ordering::Release);
            e.waker.wake_by_ref();
        }
        failed.len()
    }
}

/// One await's registration; unregisters on drop.
pub(crate) struct AwaitRegistration {
    id: u64,
    failed: Arc<AtomicBool>,
    rt: Weak<RtInner>,
    awaited: Arc<dyn Task>,
}

impl AwaitRegistration {
    /// Registers (or refreshes the waker of) the await of `awaited` by the current poller,
    /// when a runtime is current.
    pub(crate) fn park(
        slot: &mut Option<AwaitRegistration>,
        awaited: &Arc<dyn Task>,
        waker: &Waker,
    ) {
        if let Some(r) = slot {
            if let Some(rt) = r.rt.upgrade() {
                let mut e = rt.parked.entries.lock();
                if let Some(entry) = e.get_mut(&r.id) {
                    entry.waker.clone_from(waker);
                }
            }
            return;
        }
        *slot = crate::context::with_rt(|rt| {
            let rt = rt?;
            let id = rt.parked.next.fetch_add(1, Ordering::Relaxed);
            let failed = Arc::new(AtomicBool::new(false));
            rt.parked.entries.lock().insert(
                id,
                Entry {
                    waker: waker.clone(),
                    failed: failed.clone(),
                    in_task: crate::context::current_task().is_some(),
                },
            );
            Some(AwaitRegistration {
                id,
                failed,
                rt: Arc::downgrade(rt),
                awaited: awaited.clone(),
            })
        });
    }

    /// The error for an await the stall resolver failed, if it did.
    pub(crate) fn failure(slot: &Option<AwaitRegistration>) -> Option<TaskError> {
        let r = slot.as_ref()?;
        if !r.failed.load(Ordering::Acquire) {
            return None;
        }
        let by =
            crate::context::current_task().map_or_else(|| "block_on".to_string(), |t| t.name());
        Some(TaskError::Deadlock {
            task: by,
            device: crate::context::current_device().to_string(),
            reason: format!(
                "it awaits {}, and nothing left could finish it (tasks awaiting each other, or waiting on such awaits)",
                r.awaited.header().name
            ),
        })
    }
}

impl Drop for AwaitRegistration {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.upgrade() {
            rt.parked.entries.lock().remove(&self.id);
        }
    }
}
