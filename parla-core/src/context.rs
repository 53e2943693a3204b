//! What a running task can ask about itself: [`current_task`] and [`current_device`].
//!
//! The driver that polls a task sets these thread-locals for the duration of each poll; the
//! runtime pointer is set the same way by drivers and by `Runtime::block_on`, so `spawn`
//! finds its runtime without any global.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use crate::device::{Device, vcu_float};
use crate::runtime::RtInner;
use crate::task::Task;

thread_local! {
    static RT: Cell<*const Arc<RtInner>> = const { Cell::new(std::ptr::null()) };
    static TASK: Cell<*const Arc<dyn Task>> = const { Cell::new(std::ptr::null::<Arc<crate::task::Placeholder>>() as *const Arc<dyn Task>) };
    static DEVICE: Cell<Device> = const { Cell::new(Device::CPU) };
    static BLOCKED: Cell<bool> = const { Cell::new(false) };
    /// Live-task counts taken ahead from the current runtime (see `take_live_credit`).
    static CREDITS: Cell<u32> = const { Cell::new(0) };
}

/// How many live-task counts a spawning thread takes from the runtime at once.
const CREDIT_BATCH: u32 = 32;

/// Restores the previous runtime pointer (and its credits) on drop, returning the credits
/// taken meanwhile.
pub(crate) struct RtGuard {
    prev: *const Arc<RtInner>,
    prev_credits: u32,
}

impl Drop for RtGuard {
    fn drop(&mut self) {
        flush_credits();
        RT.with(|c| c.set(self.prev));
        CREDITS.with(|c| c.set(self.prev_credits));
    }
}

/// Makes `rt` the current runtime of this thread until the guard drops. The guard must
/// drop before `rt` does (it is always a local of the caller, which borrows `rt`).
pub(crate) fn enter_rt(rt: &Arc<RtInner>) -> RtGuard {
    RtGuard {
        prev: RT.with(|c| c.replace(rt as *const _)),
        prev_credits: CREDITS.with(|c| c.replace(0)),
    }
}

/// Counts one more live task in the current runtime `rt`. Spawning threads take counts in
/// batches, so that a thread spawning many tasks does not write the runtime's shared
/// counter word once per task; the counts not used are given back by [`flush_credits`]
/// before the runtime could look for a live count of zero (at the end of every poll).
pub(crate) fn take_live_credit(rt: &RtInner) {
    CREDITS.with(|c| match c.get() {
        0 => {
            rt.counters.add(CREDIT_BATCH as i64, 0);
            c.set(CREDIT_BATCH - 1);
        }
        n => c.set(n - 1),
    })
}

/// Gives the live counts taken ahead and not used back to the current runtime.
pub(crate) fn flush_credits() {
    let n = CREDITS.with(|c| c.replace(0));
    if n > 0 {
        // Credits are only taken inside a runtime's scope, so there is one to give them to.
        with_rt(|rt| {
            if let Some(rt) = rt {
                rt.counters.add(-(n as i64), 0);
            }
        });
    }
}

/// Runs `f` with the current runtime, if any.
pub(crate) fn with_rt<R>(f: impl FnOnce(Option<&Arc<RtInner>>) -> R) -> R {
    let p = RT.with(|c| c.get());
    // SAFETY: a non-null pointer was set by `enter_rt` from a reference that outlives the
    // guard restoring the previous value, and this thread is inside that guard's scope.
    f(unsafe { p.as_ref() })
}

/// Restores the previous task context on drop.
pub(crate) struct TaskGuard {
    task: *const Arc<dyn Task>,
    device: Device,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        TASK.with(|c| c.set(self.task));
        DEVICE.with(|c| c.set(self.device));
    }
}

/// Marks `task` as running on `device` on this thread until the guard drops; the guard must
/// drop before `task` does.
pub(crate) fn enter_task(task: &Arc<dyn Task>, device: Device) -> TaskGuard {
    TaskGuard {
        task: TASK.with(|c| c.replace(task as *const _)),
        device: DEVICE.with(|c| c.replace(device)),
    }
}

/// Called by the runtime's own futures (task handles, task references, task spaces) when
/// they return `Pending`: the poller is then blocked on other tasks, not on outside events.
pub(crate) fn note_blocked() {
    BLOCKED.with(|c| c.set(true));
}

/// Reads and clears the blocked mark.
pub(crate) fn take_blocked() -> bool {
    BLOCKED.with(|c| c.replace(false))
}

/// The task running on this thread, if any.
///
/// ```
/// # let rt = parla_core::Runtime::builder().cpu_threads(1).build().unwrap();
/// # rt.block_on(async {
/// use parla_core::{TaskSpace, current_task, task};
/// let t = TaskSpace::new("T");
/// let name = task(async { current_task().unwrap().to_string() }).id(t.at(("cpu", 0))).await?;
/// assert_eq!(name, "Task(T[cpu, 0])");
/// assert!(current_task().is_none());
/// # Ok::<_, parla_core::TaskError>(()) }).unwrap();
/// ```
pub fn current_task() -> Option<TaskInfo> {
    let p = TASK.with(|c| c.get());
    // SAFETY: a non-null pointer was set by `enter_task` from a reference that outlives the
    // guard that restores the previous value, and we are inside that scope.
    unsafe { p.as_ref() }.map(|t| TaskInfo { task: t.clone() })
}

/// The device the running task was placed on: `cpu:0` outside tasks.
///
/// Virtual GPUs report `gpu:i` like real ones.
pub fn current_device() -> Device {
    DEVICE.with(|c| c.get())
}

/// A description of a task: its name, device and constraints. Displays as `Task(T[cpu, 0])`.
#[derive(Clone)]
pub struct TaskInfo {
    task: Arc<dyn Task>,
}

impl TaskInfo {
    /// The task's name: `T[cpu, 0]` for a task spawned with an id, `#<n>` otherwise.
    pub fn name(&self) -> String {
        self.task.header().name.to_string()
    }

    /// The device the task was placed on (`None` before it was mapped).
    pub fn device(&self) -> Option<Device> {
        self.task.header().device()
    }

    /// The VCUs reserved for the task on its device.
    pub fn vcus(&self) -> f64 {
        vcu_float(self.task.header().demand().vcu)
    }

    /// The workspace memory reserved for the task, in bytes.
    pub fn memory(&self) -> u64 {
        self.task.header().mem
    }
}

impl fmt::Display for TaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Task({})", self.task.header().name)
    }
}

impl fmt::Debug for TaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskInfo")
            .field("name", &self.name())
            .field("device", &self.device())
            .field("vcus", &self.vcus())
            .field("memory", &self.memory())
            .finish()
    }
}
