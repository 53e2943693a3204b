//! The interface between the scheduler and a GPU backend (`parla-gpu` implements it on
//! CUDA; nothing here names CUDA).
//!
//! For each GPU task the runtime asks the backend to [`begin`](GpuBackend::begin) it on a
//! device (the backend picks a stream and makes it wait on the fences of the task's GPU
//! dependencies), calls [`enter`](GpuExec::enter) / [`exit`](GpuExec::exit) around every poll
//! of the task's body, and [`finish`](GpuExec::finish)es it when the body returns: the
//! backend records a [`Fence`] on the stream. The task completes when the fence is done,
//! which the runtime learns by polling fences (an awaiter or a synchronizing task spins
//! briefly on its own fence; a poller thread watches the rest), so no worker ever blocks on
//! the GPU. Waiting on a fence from a task: [`crate::fences`].

use std::sync::Arc;

pub use super::fence::{Fence, FenceStatus};
pub use super::free_set::{FreeSet, MAX_SLOTS};

/// One GPU as the backend describes it.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    /// The device's name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// The memory budget tasks may reserve on it, in bytes.
    pub memory_budget: u64,
    /// The device's total memory, in bytes.
    pub memory_total: u64,
}

/// What the runtime tells a backend when it starts.
#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// Device ordinals to use; `None`: every device found.
    pub ordinals: Option<Vec<usize>>,
    /// Streams in each device's pool.
    pub streams_per_gpu: usize,
    /// The fraction of each device's total memory tasks may reserve.
    pub memory_fraction: f64,
}

/// A GPU backend: its devices, and how a task runs on one of them.
pub trait GpuBackend: Send + Sync + 'static {
    /// The devices, in the order the runtime numbers them (`gpu:0`, `gpu:1`, ...).
    fn devices(&self) -> Vec<GpuInfo>;

    /// Prepares a task on GPU `gpu`: a stream from the device's pool that first waits on
    /// `after` (fences of the task's dependencies that ran on GPUs, possibly other ones).
    /// `priority` is the task's (`TaskBuilder::priority`): above 0, a high-priority stream.
    /// Called on the worker thread that will poll the task. `task` names it (formatted
    /// only if the backend needs the text: most tasks never do).
    fn begin(
        &self,
        gpu: usize,
        task: &dyn std::fmt::Display,
        after: &[Arc<dyn Fence>],
        priority: u8,
    ) -> Result<Box<dyn GpuExec>, String>;

    /// If the device can no longer run tasks (a sticky error), why.
    fn device_error(&self, gpu: usize) -> Option<String>;
}

/// One task's execution state on a GPU.
pub trait GpuExec: Send {
    /// Before each poll of the task's body, on the polling thread: make the device current
    /// and publish the task's GPU context.
    fn enter(&mut self);

    /// After each poll.
    fn exit(&mut self);

    /// The task is traced: mark the start of its work on the device now (before its first
    /// poll), so that its fence can tell when the work ran ([`Fence::times`]). The default
    /// does nothing.
    fn time(&mut self) {}

    /// The body returned: record a fence after the work it enqueued, and give the stream
    /// back. An error means the device reported one while the task ran.
    fn finish(self: Box<Self>) -> Result<Arc<dyn Fence>, String>;
}

/// Makes GPU backends from the runtime's options; given to
/// [`Builder::gpu_backend`](crate::Builder::gpu_backend).
///
/// `Ok(None)`: no device (or no driver) found; the runtime then runs on the CPU only.
pub type GpuBackendFactory = fn(&GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String>;
