//! What a GPU task sees: [`current`] gives its [`GpuContext`].

use std::cell::RefCell;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::cusolver::DnHandle;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use parla_core::Device;
use parla_core::device::backend::FenceStatus;
use parla_core::fences::{AWAIT_SPIN, poll_fence_for, wait_fence};

use crate::error::{Error, Result};
use crate::event::CudaFence;
use crate::runtime::GpuDevice;
use crate::stream::PooledStream;

thread_local! {
    static CURRENT: RefCell<Option<GpuContext>> = const { RefCell::new(None) };
    /// The kernels this thread looked up last (see [`GpuContext::kernel`]).
    static KERNELS: RefCell<KernelCache> = const { RefCell::new(KernelCache::new()) };
}

/// How many kernels a thread remembers ([`GpuContext::kernel`]).
const KERNEL_CACHE: usize = 4;

/// A kernel a thread looked up: on which device (its unique number), from which source
/// (address and length), by which name.
struct CachedKernel {
    dev: u64,
    src: (usize, usize),
    name: Box<str>,
    f: CudaFunction,
}

/// The last [`KERNEL_CACHE`] kernels a thread looked up, replaced in turn. (It keeps their
/// modules loaded until they are replaced or the thread ends, as the device's table does
/// until its runtime ends.)
struct KernelCache {
    entries: [Option<CachedKernel>; KERNEL_CACHE],
    next: usize,
}

impl KernelCache {
    const fn new() -> KernelCache {
        KernelCache {
            entries: [None, None, None, None],
            next: 0,
        }
    }

    fn get(&self, dev: u64, src: (usize, usize), name: &str) -> Option<CudaFunction> {
        self.entries
            .iter()
            .flatten()
            .find_map(|e| (e.dev == dev && e.src == src && *e.name == *name).then(|| e.f.clone()))
    }

    fn put(&mut self, e: CachedKernel) {
        self.entries[self.next] = Some(e);
        self.next = (self.next + 1) % KERNEL_CACHE;
    }
}

/// Publishes `ctx` as this thread's GPU context; returns the previous one.
pub(crate) fn set(ctx: Option<GpuContext>) -> Option<GpuContext> {
    CURRENT.with(|c| c.replace(ctx))
}

/// The running GPU task's context: its device, stream and library handles. `None` outside a
/// task running on a real GPU (CPU tasks, virtual GPUs, outside tasks).
///
/// ```no_run
/// # async fn f() -> Result<(), parla_gpu::Error> {
/// let gpu = parla_gpu::current().expect("inside a GPU task");
/// let x = gpu.stream().clone_htod(&[1.0f32, 2.0, 3.0])?;
/// gpu.synchronize().await?;
/// # drop(x); Ok(()) }
/// ```
pub fn current() -> Option<GpuContext> {
    CURRENT.with(|c| c.borrow().clone())
}

/// A GPU task's device, stream, and the cuBLAS / cuSOLVER handles bound to that stream.
///
/// Everything enqueued on [`stream`](Self::stream) belongs to the task: the task completes
/// when that work finished, and GPU tasks that depend on it are ordered after it on the
/// GPU.
#[derive(Clone)]
pub struct GpuContext {
    dev: Arc<GpuDevice>,
    stream: Arc<PooledStream>,
    /// A traced task's start marker, recorded when it first takes its stream or handles.
    marks: Option<Arc<crate::timing::Marks>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("device", &self.device())
            .field("ordinal", &self.dev.ordinal)
            .field("stream", &self.stream.index)
            .finish()
    }
}

impl GpuContext {
    pub(crate) fn new(
        dev: Arc<GpuDevice>,
        stream: Arc<PooledStream>,
        marks: Option<Arc<crate::timing::Marks>>,
    ) -> Self {
        GpuContext { dev, stream, marks }
    }

    /// A traced task is about to enqueue work: its GPU slice starts here.
    #[inline]
    fn mark(&self) {
        if let Some(m) = &self.marks {
            m.start(&self.dev, self.stream.stream());
        }
    }

    pub(crate) fn gpu_device(&self) -> &Arc<GpuDevice> {
        &self.dev
    }

    /// Times the task's work on the device ([`crate::timing`]): its first use of the
    /// stream or the handles marks the start.
    pub(crate) fn time(&mut self) {
        self.marks = Some(Arc::default());
    }

    /// The device, the pooled stream and the timing marks: what a task's fence takes over
    /// when its body returned.
    pub(crate) fn into_parts(
        self,
    ) -> (
        Arc<GpuDevice>,
        Arc<PooledStream>,
        Option<Arc<crate::timing::Marks>>,
    ) {
        (self.dev, self.stream, self.marks)
    }

    /// The task's device, `gpu:i`.
    pub fn device(&self) -> Device {
        self.dev.device()
    }

    /// The CUDA device ordinal.
    pub fn ordinal(&self) -> usize {
        self.dev.ordinal
    }

    /// The device's CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.dev.ctx
    }

    /// The task's stream, from the device's pool.
    pub fn stream(&self) -> &Arc<CudaStream> {
        self.mark();
        self.stream.stream()
    }

    /// The CUDA priority of the task's stream: 0 by default; the device's highest (a
    /// negative number, lower is more urgent) for a task with a
    /// [priority](parla_core::TaskBuilder::priority) above 0.
    pub fn stream_priority(&self) -> i32 {
        self.stream.priority
    }

    /// A cuBLAS handle bound to the task's stream (created on first use, then reused).
    pub fn blas(&self) -> Result<&CudaBlas> {
        // (Made on first use, which can take long: the task's slice starts after.)
        let b = self.stream.blas();
        self.mark();
        b
    }

    /// A cuSOLVER dense handle bound to the task's stream (created on first use, then reused).
    pub fn solver(&self) -> Result<&DnHandle> {
        let s = self.stream.solver();
        self.mark();
        s
    }

    /// Waits until the work enqueued on the task's stream so far finished, without blocking
    /// the worker: a brief spin for short work, then the runtime's fence poller.
    pub async fn synchronize(&self) -> Result<()> {
        let fence = CudaFence::recorded(&self.dev, &self.stream)?;
        // Short work is seen here, at the latency of a query loop; longer work goes to the
        // runtime's fence poller and this task yields its worker.
        match poll_fence_for(&fence, AWAIT_SPIN) {
            FenceStatus::Done => Ok(()),
            FenceStatus::Failed(m) => Err(Error::Device(m)),
            FenceStatus::Pending => wait_fence(Arc::new(fence)).await.map_err(Error::Device),
        }
    }

    /// A kernel compiled with NVRTC from CUDA C++ `source`, by `name` (an `extern "C"`
    /// function). Compiled once per device and cached by the source's address and length (a
    /// `'static` string never moves), then by the name. Each thread also remembers the last
    /// few kernels it looked up, so that a task looking up its kernel costs a few
    /// comparisons, without the device's lock.
    pub fn kernel(&self, source: &'static str, name: &str) -> Result<CudaFunction> {
        let src = (source.as_ptr() as usize, source.len());
        let dev = self.dev.uid;
        if let Some(f) = KERNELS.with(|k| k.borrow().get(dev, src, name)) {
            return Ok(f);
        }
        let found = self
            .dev
            .kernels
            .lock()
            .get(&src)
            .and_then(|m| m.get(name))
            .cloned();
        if let Some(f) = found {
            KERNELS.with(|k| {
                k.borrow_mut().put(CachedKernel {
                    dev,
                    src,
                    name: name.into(),
                    f: f.clone(),
                })
            });
            return Ok(f);
        }
        if !crate::raw::nvrtc_present() {
            return Err(Error::Unavailable(
                "NVRTC (libnvrtc) cannot be loaded".into(),
            ));
        }
        let ptx = cudarc::nvrtc::compile_ptx(source).map_err(|e| Error::Compile {
            name: name.to_string(),
            log: e.to_string(),
        })?;
        let module = self.dev.ctx.load_module(ptx)?;
        let f = module.load_function(name)?;
        self.dev
            .kernels
            .lock()
            .entry(src)
            .or_default()
            .insert(name.into(), f.clone());
        Ok(f)
    }
}
