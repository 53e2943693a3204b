//! Data that tasks declare they read and write: the interface between the scheduler and a
//! data layer (the `parla` crate's `PArray` implements [`DataObject`]).
//!
//! A task declares accesses on its builder ([`TaskBuilder::reads`](crate::TaskBuilder::reads),
//! [`writes`](crate::TaskBuilder::writes), [`reads_writes`](crate::TaskBuilder::reads_writes)).
//! The runtime then
//! - orders tasks that touch the same object in spawn order ([`Flow`]): a read after the
//!   last write, a write after the last write and after every read since; reads of the same
//!   data run together;
//! - counts the bytes of the task's objects that have no valid copy on its device in the
//!   task's memory admission, evicting unused copies (least recently used first) when the
//!   device is full ([`DataObject::evict`]);
//! - before the body runs, asks each object to be valid on the task's device
//!   ([`DataObject::acquire`]), and when the body returns, tells it what was written
//!   ([`DataObject::release`]).
//!
//! # Invariants
//! - A copy pinned for a task is not evicted before the task released it.
//! - The bytes of a device copy are counted in its device's admission from the moment a
//!   task reserved them until the copy is freed, which reports them back through
//!   [`Ledger::freed`] (invalidation) or as the return value of [`DataObject::evict`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::device::Device;
use crate::device::fence::Fence;
use crate::error::TaskError;
use crate::graph::arc::{TaskArc, TaskPtr};

pub use crate::runtime::context::current_task_key;

/// How a task uses a data object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reads only.
    Read,
    /// Overwrites the whole object without reading it.
    Write,
    /// Reads and writes.
    ReadWrite,
}

impl Access {
    /// Whether the task reads the object.
    pub fn reads(self) -> bool {
        !matches!(self, Access::Write)
    }

    /// Whether the task writes the object.
    pub fn writes(self) -> bool {
        !matches!(self, Access::Read)
    }

    /// Both accesses together (a task declaring an object twice).
    pub fn union(self, other: Access) -> Access {
        if self == other {
            self
        } else {
            Access::ReadWrite
        }
    }
}

/// What an object's copy became valid with: the bytes newly taken on the device, and a fence
/// to wait for before the body runs (a copy to the host still in flight).
#[derive(Debug, Default)]
pub struct Acquired {
    /// Bytes of the device's budget a new copy took (0 if the copy was already there).
    pub allocated: u64,
    /// The host must wait for this fence before the body reads the data.
    pub ready: Option<Arc<dyn Fence>>,
}

/// Where a data object reports bytes it frees on a device outside eviction (a copy
/// invalidated by a write elsewhere, an object dropped): the runtime that counted them.
/// Cheap to clone; a ledger of a runtime that is gone ignores the reports.
#[derive(Clone)]
pub struct Ledger(pub(crate) Arc<dyn LedgerSink>);

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

/// The runtime side of a [`Ledger`].
pub(crate) trait LedgerSink: Send + Sync {
    fn freed(&self, device: Device, bytes: u64);
    fn resident(&self, device: Device, obj: std::sync::Weak<dyn DataObject>);
    fn same(&self, other: &dyn LedgerSink) -> bool;
    fn id(&self) -> u32;
}

impl Ledger {
    /// `bytes` of a copy on `device` were freed: the device's budget gets them back.
    pub fn freed(&self, device: Device, bytes: u64) {
        if bytes > 0 {
            self.0.freed(device, bytes);
        }
    }

    /// A copy of `obj` now lives on `device`: it becomes a candidate for eviction there.
    pub fn resident(&self, device: Device, obj: std::sync::Weak<dyn DataObject>) {
        self.0.resident(device, obj);
    }

    /// Whether both ledgers are one runtime's.
    pub fn same_runtime(&self, other: &Ledger) -> bool {
        self.0.same(&*other.0)
    }

    /// The runtime's id.
    pub fn runtime_id(&self) -> u32 {
        self.0.id()
    }
}

/// What task builders take as data: a handle to a [`DataObject`] (the `parla` crate's
/// `PArray`). Pass a reference to the handle (`.reads(&a)`); the object itself is the
/// runtime's to use.
pub trait AsData {
    /// The object.
    ///
    /// # Safety
    /// Called by the runtime only, to declare a task's access: the object's order holds
    /// only while every access to it is declared through a handle, and its
    /// [`Flow::clear`] assumes that none is declared once the handles are gone.
    unsafe fn as_data(&self) -> Arc<dyn DataObject>;
}

impl AsData for Arc<dyn DataObject> {
    unsafe fn as_data(&self) -> Arc<dyn DataObject> {
        self.clone()
    }
}

/// A data object the scheduler can move and order tasks by. Implemented by the data layer
/// (the `parla` crate's `PArray`); the methods are called by the runtime.
///
/// The methods that free copies or take pins and grants away (`unpin`, `evict`,
/// `acquire`, `release`, and [`Flow::clear`]) are `unsafe` to call: a task's views of the
/// object's data rely on them being called by the runtime alone, at the points its docs
/// give (a call from elsewhere could free the memory under a running task's view).
pub trait DataObject: Send + Sync + 'static {
    /// The object's identity (stable while it lives; two handles of one object agree).
    fn key(&self) -> usize;

    /// The size of one copy, in bytes.
    fn bytes(&self) -> u64;

    /// The object's task order: last writer and readers since.
    ///
    /// The tasks recorded there hold the object (through their declared accesses), so an
    /// object must clear it ([`Flow::clear`]) once no handle can declare a new access to
    /// it, or it is never freed: `PArray` does so when its last handle is dropped.
    fn flow(&self) -> &Flow;

    /// The id of another runtime than `rt_id` whose devices hold copies of the object, if
    /// one does: a task of `rt_id` cannot use the object now (checked at the spawn, so that
    /// such a task fails without taking a place in the object's order).
    fn other_runtime(&self, rt_id: u32) -> Option<u32> {
        let _ = rt_id;
        None
    }

    /// Whether a valid copy is on `device` (for mapping).
    fn valid_on(&self, device: Device) -> bool;

    /// If a valid copy is on `device`, pins it (no eviction until [`unpin`](Self::unpin))
    /// and returns `true`. Called at admission.
    fn pin_valid(&self, device: Device) -> bool;

    /// Undoes a pin.
    ///
    /// # Safety
    /// Called by the runtime only, once for each pin it took (see [`DataObject`]).
    unsafe fn unpin(&self, device: Device);

    /// When the copy on `device` was last used (a clock of the object's choosing, the same
    /// for every object of a runtime; lower is older), or `None` if there is no evictable
    /// copy there (none, or pinned).
    fn last_use(&self, device: Device) -> Option<u64>;

    /// Frees the copy on `device` unless it is pinned; a copy that is the only valid one is
    /// written back to the host first. Returns the bytes freed on the device's budget.
    ///
    /// # Safety
    /// Called by the runtime only (see [`DataObject`]).
    unsafe fn evict(&self, device: Device) -> u64;

    /// Called in the task, on `device`, before its body runs: makes the object valid there
    /// for `access` (copying it from where it is valid), pinned (`pinned`: admission pinned
    /// a valid copy already). Copies to a GPU are enqueued on the task's stream. `task` is
    /// the task's [`current_task_key`]. A write access makes the copy exclusive at once:
    /// the other copies are freed (reported to their ledgers), so none is read, or written
    /// back over this one, while the task writes.
    ///
    /// # Safety
    /// Called by the runtime only, in the task the object's order granted the access to
    /// (see [`DataObject`]).
    unsafe fn acquire(
        &self,
        ledger: &Ledger,
        task: usize,
        device: Device,
        access: Access,
        pinned: bool,
    ) -> Result<Acquired, String>;

    /// Called when the body finished (or failed): a write makes the copy on `device` the
    /// only valid one (other copies are freed, reported to their ledgers); the pin goes.
    /// `task` is the key [`acquire`](Self::acquire) was given.
    ///
    /// # Safety
    /// Called by the runtime only, once for each [`acquire`](Self::acquire), once the
    /// task's body is dropped (see [`DataObject`]).
    unsafe fn release(&self, task: usize, device: Device, access: Access);
}

/// The order of the tasks that touch one object: the last writer and the readers since.
#[derive(Default)]
pub struct Flow {
    state: Mutex<FlowState>,
}

#[derive(Default)]
struct FlowState {
    writer: Option<TaskPtr>,
    readers: Vec<TaskPtr>,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("Flow")
            .field("writer", &s.writer.is_some())
            .field("readers", &s.readers.len())
            .finish()
    }
}

impl Flow {
    /// Forgets the tasks recorded: for an object that no new task can access any more (its
    /// last handle is gone). The tasks hold the object through their declared accesses, so
    /// an object that kept them would never be freed.
    ///
    /// # Safety
    /// No task can declare an access to the object any more (its last handle is gone): a
    /// task spawned after the clear would not be ordered after those recorded, and could
    /// write data a running task reads.
    pub unsafe fn clear(&self) {
        let (writer, readers) = {
            let mut s = self.state.lock();
            (s.writer.take(), std::mem::take(&mut s.readers))
        };
        // Dropped outside the lock: a task's last reference drops what its output holds,
        // which may be a handle of this object.
        drop((writer, readers));
    }

    /// The last task recorded as writing the object, for code that reads the object's data
    /// outside any task (as `PArray::tiles` does), unless there is none or it succeeded:
    /// `Ok(name)` while it has not finished (what such a read sees is not its result), or
    /// the error a task `reader` reading the object would fail with, once it failed
    /// (`DependencyFailed`, naming the root failure).
    pub fn writer_in_the_way(&self, reader: &str) -> Option<Result<String, TaskError>> {
        let s = self.state.lock();
        let h = s.writer.as_ref()?.header();
        match h.outcome() {
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(Err(crate::graph::dependency_failed_of(reader, h, &e))),
            None => Some(Ok(h.name.to_string())),
        }
    }

    /// The name of an unfinished task of another runtime than `rt_id` recorded as
    /// accessing the object, if there is one: a task of `rt_id` cannot be ordered after it
    /// (checked at the spawn, so that such a task fails without taking a place in the
    /// object's order, which would fail the other runtime's next tasks with it).
    pub(crate) fn in_use_by_another(&self, rt_id: u32) -> Option<String> {
        let s = self.state.lock();
        s.writer
            .iter()
            .chain(&s.readers)
            .map(|t| t.header())
            .find(|h| h.rt_id != rt_id && !h.is_done())
            .map(|h| h.name.to_string())
    }

    /// Records `task` as the next access `access` and pushes the tasks it must follow:
    /// to `deps` the last writer (whose failure leaves the data unknown: `task` fails with
    /// it), and for a write to `after` the readers since (which it follows whatever their
    /// outcome: a reader changes nothing; see [`Accesses::set_follows`]). Finished readers
    /// are forgotten as the list grows.
    pub(crate) fn order(
        &self,
        task: &TaskPtr,
        access: Access,
        deps: &mut Vec<TaskPtr>,
        after: &mut Vec<TaskPtr>,
    ) {
        let mut s = self.state.lock();
        // (Tasks that finished are no wait, and may be of a runtime that is gone: left out,
        // except a writer that failed, whose failure the task inherits.)
        if let Some(w) = &s.writer
            && !w.header().succeeded()
        {
            deps.push(w.clone());
        }
        if access.writes() {
            after.extend(s.readers.drain(..).filter(|r| !r.header().is_done()));
            s.writer = Some(task.clone());
        } else {
            if s.readers.len() >= 16 && s.readers.len().is_power_of_two() {
                s.readers.retain(|r| !r.header().is_done());
            }
            s.readers.push(task.clone());
        }
    }
}

/// A task's address, as [`Accesses::set_follows`] records it.
fn addr(t: &TaskPtr) -> usize {
    TaskArc::as_ptr(t) as *const () as usize
}

/// One declared access of a task.
pub(crate) struct Item {
    pub(crate) obj: Arc<dyn DataObject>,
    pub(crate) access: Access,
    /// Admission pinned a valid copy on the task's device.
    pub(crate) pinned: AtomicBool,
}

/// A task's declared accesses (each object once), and the bytes admission reserved for
/// copies that were not on its device.
pub(crate) struct Accesses {
    pub(crate) items: SmallVec<[Item; 2]>,
    /// Bytes reserved at admission for missing copies.
    pub(crate) reserved: AtomicU64,
    /// Bytes the copies made before the body took (released at completion: the rest of
    /// `reserved` goes back to the device then).
    pub(crate) allocated: AtomicU64,
    /// The slot of the device the task was mapped to, plus one (0: not mapped yet).
    device: std::sync::atomic::AtomicU32,
    /// The dependencies the task only follows (see [`Flow::order`]): readers of data it
    /// writes, by address. Set once, before the task is wired; a dependency is alive
    /// while the task is wired to it, so no other dependency has its address.
    follows: std::sync::OnceLock<Box<[usize]>>,
}

impl Accesses {
    /// The accesses of `list`, each object once (two accesses of one object merge).
    pub(crate) fn new(list: Vec<(Arc<dyn DataObject>, Access)>) -> Accesses {
        /// Up to how many items the list is searched for a duplicate; past that, an index
        /// by key (a task declaring every tile of a large grid: `Tiles::to_host`).
        const SEARCHED: usize = 16;
        let mut items: SmallVec<[Item; 2]> = SmallVec::new();
        let mut index: rustc_hash::FxHashMap<usize, usize> = Default::default();
        for (obj, access) in list {
            let key = obj.key();
            let found = if items.len() <= SEARCHED {
                items.iter().position(|i| i.obj.key() == key)
            } else {
                if index.is_empty() {
                    index.extend(items.iter().enumerate().map(|(n, i)| (i.obj.key(), n)));
                }
                index.get(&key).copied()
            };
            match found {
                Some(n) => items[n].access = items[n].access.union(access),
                None => {
                    if !index.is_empty() {
                        index.insert(key, items.len());
                    }
                    items.push(Item {
                        obj,
                        access,
                        pinned: AtomicBool::new(false),
                    });
                }
            }
        }
        Accesses {
            items,
            reserved: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
            device: std::sync::atomic::AtomicU32::new(0),
            follows: std::sync::OnceLock::new(),
        }
    }

    /// Records `task`, whose accesses these are, in the order of each object it accesses
    /// ([`Flow::order`]): the tasks it must follow go to `deps`, the readers it only
    /// follows to `after`.
    #[inline(always)]
    pub(crate) fn order(&self, task: &TaskPtr, deps: &mut Vec<TaskPtr>, after: &mut Vec<TaskPtr>) {
        for i in &self.items {
            i.obj.flow().order(task, i.access, deps, after);
        }
    }

    /// The error of a task of runtime `rt_id` (its header `h`) one of whose objects another
    /// runtime holds copies of ([`DataObject::other_runtime`]), if one does.
    /// Also when a task of another runtime that accesses one of its objects has not
    /// finished ([`Flow::in_use_by_another`]).
    pub(crate) fn held_elsewhere(
        &self,
        rt_id: u32,
        h: &crate::graph::node::Header,
    ) -> Option<TaskError> {
        let reason = if let Some(other) = self.items.iter().find_map(|i| i.obj.other_runtime(rt_id))
        {
            format!(
                "its data has copies on the devices of another parla runtime (#{other}), which is alive: an array is used by tasks of one runtime at a time"
            )
        } else {
            let user = self
                .items
                .iter()
                .find_map(|i| i.obj.flow().in_use_by_another(rt_id))?;
            format!(
                "its data is in use by task {user} of another parla runtime, which has not finished: an array is used by tasks of one runtime at a time"
            )
        };
        Some(TaskError::WrongRuntime {
            task: h.name.to_string(),
            reason,
        })
    }

    /// Records `readers` as dependencies the task only follows (a reader that fails
    /// changed nothing: the task runs after it all the same), leaving out any that is
    /// also among `others` (given with `.after`, or the last writer of other data), where
    /// a failure stays a failure.
    pub(crate) fn set_follows(&self, readers: &[TaskPtr], others: &[TaskPtr]) {
        let follows: Box<[usize]> = readers
            .iter()
            .filter(|r| !others.iter().any(|o| TaskArc::ptr_eq(o, r)))
            .map(addr)
            .collect();
        let _ = self.follows.set(follows);
    }

    /// Whether the task only follows `dep` (see [`set_follows`](Self::set_follows)): its
    /// failure does not fail the task.
    pub(crate) fn follows(&self, dep: &TaskPtr) -> bool {
        self.follows.get().is_some_and(|f| f.contains(&addr(dep)))
    }

    pub(crate) fn set_device(&self, d: Device) {
        self.device
            .store(d.slot() as u32 + 1, std::sync::atomic::Ordering::Release);
    }

    /// The device the task was mapped to, once mapped.
    pub(crate) fn device(&self) -> Option<Device> {
        match self.device.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            s => Some(Device::from_slot(s as usize - 1)),
        }
    }

    /// The bytes of all the objects.
    pub(crate) fn bytes(&self) -> u64 {
        self.items.iter().map(|i| i.obj.bytes()).sum()
    }
}
