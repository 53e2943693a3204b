//! Errors: [`TaskError`] for what a task resolves to, [`Error`] for the runtime as a whole.

use std::sync::Arc;

/// Why a task did not produce a value.
///
/// Every variant carries named fields; match them with `TaskError::Panicked { .. }`.
/// Task names are their display form (`T[cpu, 0]`, or `#<n>` for tasks spawned without an
/// id: a number no other task of the process has, not the order of spawns, since each
/// thread takes numbers in blocks of 1,024). The type is `Clone + Send + Sync` and
/// implements [`std::error::Error`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task's body panicked.
    #[error("task {task} panicked: {message}")]
    Panicked {
        /// The task that panicked.
        task: String,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// A dependency failed, so the task did not run.
    #[error("task {task} did not run: its dependency {dependency} failed ({cause})")]
    DependencyFailed {
        /// The task that did not run.
        task: String,
        /// The task that failed first (the root of the failure, not an intermediate dependent).
        /// A task refused as a second one under its id is named `ID (a duplicate, refused)`,
        /// apart from the task under the id.
        dependency: String,
        /// What the failed dependency resolved to.
        cause: Arc<TaskError>,
    },
    /// No device in the task's placement can ever meet its constraints.
    #[error("task {task} can never run: {reason}")]
    Unsatisfiable {
        /// The task.
        task: String,
        /// The constraint and the numbers that make it unsatisfiable.
        reason: String,
    },
    /// A task with this id was already spawned into its task space.
    #[error("duplicate task id {id}: a task with this id was already spawned")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// The task (or an await) waited on an id that was never spawned, and the runtime went
    /// quiescent.
    #[error("task {id} was never spawned, and nothing left running could spawn it")]
    NeverSpawned {
        /// The id nobody spawned.
        id: String,
    },
    /// The task is part of a dependency cycle.
    #[error("dependency cycle: {} -> {}", ids.join(" -> "), ids.first().map_or("", String::as_str))]
    Cycle {
        /// The ids on the cycle, each once, in dependency order (a task after itself: its
        /// id alone). The message closes the loop: `T[a] -> T[b] -> T[a]`.
        ids: Vec<String>,
    },
    /// The task (or one of its awaits) waited for something nothing left could provide:
    /// device resources held by tasks blocked on it, or tasks awaiting each other.
    #[error("task {task} on {device} is deadlocked: {reason}")]
    Deadlock {
        /// The task that could not be admitted, or whose await failed (`block_on` for an
        /// await of `Runtime::block_on`'s future).
        task: String,
        /// The device it was mapped to.
        device: String,
        /// What it waited for and what was held.
        reason: String,
    },
    /// The device failed while running the task (a CUDA error, for example).
    #[error("task {task} failed on {device}: {message}")]
    Device {
        /// The task.
        task: String,
        /// The device, as `gpu:0`.
        device: String,
        /// The device's error.
        message: String,
    },
    /// The task used a task space, or depends on a task, of another parla runtime.
    #[error("task {task} cannot run: {reason}")]
    WrongRuntime {
        /// The task.
        task: String,
        /// What belongs to another runtime.
        reason: String,
    },
    /// The task was spawned outside a parla runtime.
    #[error(
        "task {task} was spawned outside a parla runtime (spawn from inside Runtime::block_on or a task; `rt.block_on(task(..))` spawns it inside)"
    )]
    NoRuntime {
        /// The task.
        task: String,
    },
    /// The runtime shut down before the task could finish.
    #[error("task {task} was cancelled: the runtime shut down")]
    Cancelled {
        /// The task.
        task: String,
    },
    /// The task was aborted through its handle
    /// ([`TaskHandle::abort`](crate::TaskHandle::abort)) before it finished.
    #[error("task {task} was aborted")]
    Aborted {
        /// The task.
        task: String,
    },
    /// The handle was awaited again after an earlier await took the task's value (a
    /// `timeout(d, &mut handle)` or `select!` over `&mut handle` that completed with it).
    #[error("task {task}'s value was taken already, by an earlier await of its handle")]
    OutputTaken {
        /// The task.
        task: String,
    },
}

impl TaskError {
    /// The root failure behind this error: the cause of a [`TaskError::DependencyFailed`],
    /// or the error itself.
    pub fn root(&self) -> &TaskError {
        match self {
            TaskError::DependencyFailed { cause, .. } => cause,
            other => other,
        }
    }
}

/// Errors of the runtime as a whole: building it, or a task's failure surfaced through `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A task failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The runtime could not be built as configured.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    /// A device backend failed to start.
    #[error("device backend error: {0}")]
    Backend(String),
    /// A device operation (a copy, a library call) failed.
    #[error("device error: {0}")]
    Device(String),
    /// An argument does not fit the operation (a shape, a size).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An I/O error (starting threads, writing a trace).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
