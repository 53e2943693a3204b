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
//! the GPU.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

pub use crate::runtime::bridge::AWAIT_SPIN;
use crate::runtime::bridge::{Bridge, Watch, spin};

pub use super::fence::{Fence, FenceStatus};

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
    /// Called on the worker thread that will poll the task.
    fn begin(
        &self,
        gpu: usize,
        task: &str,
        after: &[Arc<dyn Fence>],
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

    /// The body returned: record a fence after the work it enqueued, and give the stream
    /// back. An error means the device reported one while the task ran.
    fn finish(self: Box<Self>) -> Result<Arc<dyn Fence>, String>;
}

/// Makes GPU backends from the runtime's options; given to
/// [`Builder::gpu_backend`](crate::Builder::gpu_backend).
///
/// `Ok(None)`: no device (or no driver) found; the runtime then runs on the CPU only.
pub type GpuBackendFactory = fn(&GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String>;

/// Polls `fence` in a loop for up to `budget` (a busy wait: keep it to microseconds).
/// Returns its status at the end.
pub fn poll_fence_for(fence: &dyn Fence, budget: std::time::Duration) -> FenceStatus {
    spin(fence, budget)
}

/// Waits for `fence` without blocking a worker: spins for a few microseconds (the latency of
/// a short kernel), then lets the runtime's fence poller wake the task.
///
/// Resolves to `Err` with the device's message if the fence reports an error, or if it is
/// awaited outside a parla runtime.
pub fn wait_fence(fence: Arc<dyn Fence>) -> FenceWait {
    FenceWait {
        fence,
        spun: false,
        waker: None,
    }
}

/// The future of [`wait_fence`].
#[must_use = "futures do nothing unless awaited"]
pub struct FenceWait {
    fence: Arc<dyn Fence>,
    spun: bool,
    waker: Option<Arc<AtomicWaker>>,
}

impl fmt::Debug for FenceWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FenceWait")
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl Future for FenceWait {
    type Output = Result<(), String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let budget = if this.spun {
            std::time::Duration::ZERO
        } else {
            AWAIT_SPIN
        };
        this.spun = true;
        match spin(&*this.fence, budget) {
            FenceStatus::Done => return Poll::Ready(Ok(())),
            FenceStatus::Failed(m) => return Poll::Ready(Err(m)),
            FenceStatus::Pending => {}
        }
        if let Some(w) = &this.waker {
            w.register(cx.waker());
            return Poll::Pending;
        }
        let w = Arc::new(AtomicWaker::new());
        w.register(cx.waker());
        let watched = crate::runtime::context::with_rt(|rt| match rt {
            Some(rt) => {
                Bridge::watch(rt, Watch::Waker(this.fence.clone(), w.clone()));
                true
            }
            None => false,
        });
        if !watched {
            return Poll::Ready(Err("a GPU fence was awaited outside a parla runtime".into()));
        }
        this.waker = Some(w);
        Poll::Pending
    }
}
