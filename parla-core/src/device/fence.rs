//! Fences: points in a device's work queue that the host polls without blocking.

use std::any::Any;
use std::fmt;

/// The state of a [`Fence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceStatus {
    /// The work before the fence is still running.
    Pending,
    /// The work before the fence finished.
    Done,
    /// The device reported an error (the message names it).
    Failed(String),
}

/// A point in a device's work queue that the host can poll without blocking.
pub trait Fence: Send + Sync + 'static {
    /// Checks the fence without blocking.
    fn status(&self) -> FenceStatus;

    /// The GPU (index among the runtime's GPUs) whose queue the fence is in.
    fn gpu(&self) -> usize;

    /// For the backend: downcast to its own fence type.
    fn as_any(&self) -> &dyn Any;

    /// The in-order queue (a stream) the fence was recorded on, if any: fences of one queue
    /// finish in the order they were recorded, so a poller that finds one pending need not
    /// query the later ones, and one that finds one done knows the earlier ones are (it
    /// tells them with [`mark_done`](Fence::mark_done) instead of querying them).
    fn queue(&self) -> Option<u64> {
        None
    }

    /// The fence's place in its [`queue`](Fence::queue), if the backend counts them: the
    /// fences of a queue finish in the order of their places. Threads that finish tasks on
    /// one queue at once (a stream shared by two running tasks, or taken by the next task
    /// while the thread that finished the last one is preempted) may hand their fences over
    /// out of that order, and the runtime keeps each queue's fences in this order for the
    /// conclusions above. `None` (the default): the order in which they are handed over.
    fn place(&self) -> Option<u64> {
        None
    }

    /// Something waits on the fence (an awaiter, a CPU dependent, tasks queued for the
    /// device): a backend that defers recording its fences (until a query asks, say) records
    /// this one now. Called on the thread that ran the fence's task, right after
    /// [`GpuExec::finish`](crate::device::backend::GpuExec::finish) returned it. The default
    /// does nothing.
    fn flush(&self) {}

    /// The fence is known to be done without a query of its own: a later fence of its
    /// queue is. (A backend may, for instance, recycle its event.)
    fn mark_done(&self) {}

    /// For a traced task's fence, once done: when the task's work started and ended on the
    /// device, in nanoseconds of the trace clock (`parla_core::trace::now_ns`), measured
    /// on the device (CUDA events), not when the host saw it.
    fn times(&self) -> Option<(u64, u64)> {
        None
    }
}

impl fmt::Debug for dyn Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fence(gpu {}, {:?})", self.gpu(), self.status())
    }
}
