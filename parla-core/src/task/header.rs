//! The part of a task every other part of the runtime sees: its state, dependency counter,
//! dependents, outcome and constraints.
//!
//! # Invariants
//! - `state` moves WAITING -> READY -> DONE, or WAITING -> DONE (failed before running); a
//!   GPU task whose body returned moves READY -> FENCED -> COMPLETING -> DONE while its
//!   fence is pending. Each move is one `transition_to_*` method, and only the winner of a
//!   transition acts on it: READY is taken once, when the dependency counter reaches zero;
//!   COMPLETING once, by whoever first sees the fence done; DONE is set once.
//! - `pending` counts unfinished dependencies plus one guard held by `spawn` until every
//!   dependency is registered, so a task cannot become ready while it is being wired.
//! - `links.outcome` is `Some` exactly when DONE is set; it is written under the `links`
//!   lock together with taking the dependents, so a dependent is either in the list taken
//!   at completion or sees the outcome when it registers - never neither, never both.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::device::backend::Fence;
use crate::device::{Demand, Device, SlotMask};
use crate::error::TaskError;
use crate::space::Key;

use super::Task;

/// What a finished task resolved to, as dependents and awaiters see it.
pub(crate) type Outcome = Result<(), Arc<TaskError>>;

const WAITING: u8 = 0;
const READY: u8 = 1;
const DONE: u8 = 2;
const FENCED: u8 = 3;
const COMPLETING: u8 = 4;

/// A VCU demand that is resolved from the chosen device's default at mapping time.
pub(crate) const DEFAULT_VCU: u32 = u32::MAX;

/// A task's name: its id in a task space, or a sequence number.
pub(crate) enum Name {
    Anon(u64),
    Id(Arc<str>, Key),
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Anon(n) => write!(f, "#{n}"),
            Name::Id(space, key) => write!(f, "{space}[{key}]"),
        }
    }
}

/// Who to tell when a task finishes.
pub(crate) enum Dependent {
    /// A task (or a placeholder) counting this one among its dependencies.
    Task(Arc<dyn Task>),
    /// Somebody awaiting this task through a `TaskRef` or a task space.
    Waiter(Arc<atomic_waker::AtomicWaker>),
}

pub(crate) struct Links {
    pub(crate) dependents: SmallVec<[Dependent; 2]>,
    pub(crate) outcome: Option<Outcome>,
    /// GPU tasks only (boxed: most tasks never need it).
    pub(crate) gpu: Option<Box<GpuLinks>>,
}

#[derive(Default)]
pub(crate) struct GpuLinks {
    /// The fence after the work of a body that returned, until completion.
    fence: Option<Arc<dyn Fence>>,
    /// Fences of GPU dependencies released early (runahead), for the stream to wait on.
    waits: SmallVec<[Arc<dyn Fence>; 2]>,
}

/// What registering a dependent found.
pub(crate) enum Added {
    /// Registered: the dependent will be told.
    Registered,
    /// The task already finished.
    Done(Outcome),
    /// The task's GPU work is enqueued behind this fence, and the dependent runs on GPUs
    /// only: it need not wait on the host (runahead).
    Fenced(Arc<dyn Fence>),
}

/// Static kind of a header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Task,
    /// Stands for an id referenced before it was spawned.
    Placeholder,
    /// A parked task asking its VCUs back (see `Resume`).
    Resume,
}

pub(crate) struct Header {
    state: AtomicU8,
    pending: AtomicU32,
    pub(crate) links: Mutex<Links>,
    /// The waker of the task's `TaskHandle`, woken at completion.
    pub(crate) join: atomic_waker::AtomicWaker,
    pub(crate) name: Name,
    pub(crate) kind: Kind,
    /// Allowed device slots.
    pub(crate) mask: SlotMask,
    /// VCUs asked for (fixed point), or `DEFAULT_VCU`.
    pub(crate) vcu: u32,
    /// Bytes of workspace asked for.
    pub(crate) mem: u64,
    /// The slot of the device the task was mapped to; `u16::MAX` until mapped.
    device: AtomicU16,
    /// The VCUs actually reserved once mapped (the device default resolved).
    reserved_vcu: AtomicU32,
    /// Placeholders: set once a task was spawned under this id (the forward reference
    /// resolved). Tasks: set once a handle awaits the task (bit 1).
    resolved: AtomicU8,
    /// Times (ns since the runtime's epoch) of spawn, ready and start, when tracing to a
    /// file.
    pub(crate) times: Option<Box<[AtomicU64; 3]>>,
}

pub(crate) enum Ready {
    /// The task became ready; the caller maps and admits it.
    Now,
    /// Not yet (dependencies left), or it already failed.
    No,
}

impl Header {
    pub(crate) fn new(name: Name, kind: Kind, mask: SlotMask, vcu: u32, mem: u64) -> Header {
        Header {
            state: AtomicU8::new(WAITING),
            pending: AtomicU32::new(1),
            links: Mutex::new(Links {
                dependents: SmallVec::new(),
                outcome: None,
                gpu: None,
            }),
            join: atomic_waker::AtomicWaker::new(),
            name,
            kind,
            mask,
            vcu,
            mem,
            device: AtomicU16::new(u16::MAX),
            reserved_vcu: AtomicU32::new(0),
            resolved: AtomicU8::new(0),
            times: None,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == DONE
    }

    /// Adds one unfinished dependency. Only while the spawn guard is held.
    pub(crate) fn add_pending(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// One dependency finished successfully (or the spawn guard was dropped).
    pub(crate) fn dependency_done(&self) -> Ready {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.transition_to_ready()
        } else {
            Ready::No
        }
    }

    fn transition_to_ready(&self) -> Ready {
        match self
            .state
            .compare_exchange(WAITING, READY, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ready::Now,
            Err(_) => Ready::No,
        }
    }

    /// WAITING -> DONE for a task that will not run. Returns whether this call won.
    pub(crate) fn transition_to_failed(&self) -> bool {
        self.state
            .compare_exchange(WAITING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// READY -> DONE, by the runner. Only the run-token holder calls this.
    pub(crate) fn transition_to_done(&self) {
        self.state.store(DONE, Ordering::Release);
    }

    /// READY -> FENCED: the body returned and its GPU work is behind `fence`. Only the
    /// run-token holder calls this.
    pub(crate) fn transition_to_fenced(&self) {
        self.state.store(FENCED, Ordering::Release);
    }

    /// Whether the task's body returned and its GPU work is pending behind a fence (one
    /// atomic load: callers check this before taking the links lock).
    pub(crate) fn is_fenced(&self) -> bool {
        self.state.load(Ordering::Acquire) == FENCED
    }

    /// FENCED -> COMPLETING. Returns whether this call won (and must complete the task).
    pub(crate) fn transition_to_completing(&self) -> bool {
        self.state
            .compare_exchange(FENCED, COMPLETING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the task runs on GPUs only (so it may start behind a GPU dependency's fence).
    pub(crate) fn gpu_only(&self) -> bool {
        self.kind == Kind::Task && self.mask != 0 && self.mask & 1 == 0
    }

    /// Registers task `dep` as a dependent, or reports why it need not wait.
    pub(crate) fn add_task_dependent(&self, dep: &Arc<dyn Task>) -> Added {
        let mut l = self.links.lock();
        if let Some(o) = &l.outcome {
            return Added::Done(o.clone());
        }
        if let Some(f) = l.gpu.as_ref().and_then(|g| g.fence.as_ref())
            && dep.header().gpu_only()
        {
            return Added::Fenced(f.clone());
        }
        l.dependents.push(Dependent::Task(dep.clone()));
        Added::Registered
    }

    /// Records the fence of a GPU dependency that released this task early.
    pub(crate) fn add_wait(&self, f: Arc<dyn Fence>) {
        self.links.lock().gpu.get_or_insert_default().waits.push(f);
    }

    /// Takes the fences this task's stream must wait on.
    pub(crate) fn take_waits(&self) -> SmallVec<[Arc<dyn Fence>; 2]> {
        self.links
            .lock()
            .gpu
            .as_mut()
            .map(|g| std::mem::take(&mut g.waits))
            .unwrap_or_default()
    }

    /// The body returned with its GPU work behind `f`: keeps the fence and takes the
    /// dependents that may start behind it (GPU-only tasks). Also says whether others stay
    /// (dependents or awaiters that need the task complete).
    pub(crate) fn set_fence(&self, f: Arc<dyn Fence>) -> (SmallVec<[Arc<dyn Task>; 2]>, bool) {
        let mut l = self.links.lock();
        l.gpu.get_or_insert_default().fence = Some(f);
        let mut early = SmallVec::new();
        l.dependents.retain(|d| match d {
            Dependent::Task(t) if t.header().gpu_only() => {
                early.push(t.clone());
                false
            }
            _ => true,
        });
        (early, !l.dependents.is_empty())
    }

    /// The fence of a GPU task whose body returned and whose work is still pending.
    pub(crate) fn fence(&self) -> Option<Arc<dyn Fence>> {
        if !self.is_fenced() {
            return None;
        }
        let l = self.links.lock();
        if l.outcome.is_some() {
            None
        } else {
            l.gpu.as_ref().and_then(|g| g.fence.clone())
        }
    }

    /// Registers `dep` to be told when this task finishes. Returns the outcome instead when
    /// the task already finished.
    pub(crate) fn add_dependent(&self, dep: Dependent) -> Option<Outcome> {
        let mut l = self.links.lock();
        match &l.outcome {
            Some(o) => Some(o.clone()),
            None => {
                l.dependents.push(dep);
                None
            }
        }
    }

    /// Publishes the outcome and takes the dependents to notify.
    pub(crate) fn publish(&self, outcome: Outcome) -> SmallVec<[Dependent; 2]> {
        let mut l = self.links.lock();
        l.outcome = Some(outcome);
        l.gpu = None;
        std::mem::take(&mut l.dependents)
    }

    pub(crate) fn outcome(&self) -> Option<Outcome> {
        self.links.lock().outcome.clone()
    }

    pub(crate) fn set_device(&self, d: Device, vcu: u32) {
        self.reserved_vcu.store(vcu, Ordering::Relaxed);
        self.device.store(d.slot() as u16, Ordering::Release);
    }

    /// The device the task was mapped to, once mapped.
    pub(crate) fn device(&self) -> Option<Device> {
        match self.device.load(Ordering::Acquire) {
            u16::MAX => None,
            s => Some(Device::from_slot(s as usize)),
        }
    }

    /// Sets the VCUs the task holds (0 while it lends them).
    pub(crate) fn set_reserved_vcu(&self, vcu: u32) {
        self.reserved_vcu.store(vcu, Ordering::Relaxed);
    }

    /// What the task reserved on its device.
    pub(crate) fn demand(&self) -> Demand {
        Demand {
            vcu: self.reserved_vcu.load(Ordering::Relaxed),
            mem: self.mem,
        }
    }

    /// Placeholders: marks the forward reference resolved. Returns false if it already was.
    pub(crate) fn resolve(&self) -> bool {
        self.resolved.swap(1, Ordering::AcqRel) == 0
    }

    pub(crate) fn is_resolved(&self) -> bool {
        self.resolved.load(Ordering::Acquire) != 0
    }

    /// Tasks: a handle awaits the task (its completion is wanted promptly).
    pub(crate) fn set_awaited(&self) {
        self.resolved.fetch_or(2, Ordering::AcqRel);
    }

    /// Tasks: whether a handle awaits the task.
    pub(crate) fn is_awaited(&self) -> bool {
        self.resolved.load(Ordering::Acquire) & 2 != 0
    }

    /// Whether anyone waits on this node.
    pub(crate) fn has_dependents(&self) -> bool {
        !self.links.lock().dependents.is_empty()
    }
}
