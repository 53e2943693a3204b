//! The backend the scheduler drives: devices, task execution, discovery.
//!
//! # Invariants
//! - A device's context is current on a worker thread whenever that thread polls a task of
//!   the device (`enter`), and a task's GPU context is published in the thread-local only
//!   between `enter` and `exit`.
//! - A device marked failed (a sticky CUDA error) stays failed; `begin` refuses it, and the
//!   scheduler fails its waiting tasks.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaContext, CudaEvent, CudaFunction};
use parking_lot::Mutex;
use parla_core::Device;
use parla_core::device::backend::{Fence, GpuBackend, GpuExec, GpuInfo, GpuOptions};
use rustc_hash::FxHashMap;

use crate::context::{self, GpuContext};
use crate::error::{Error, describe};
use crate::event::CudaFence;
use crate::stream::StreamPool;

/// The next [`GpuDevice::uid`].
static NEXT_DEVICE_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Events created per device at start.
const EVENT_STOCK: usize = 256;

/// Compiled kernels: by their source (its address and length: a `'static` string never
/// moves), then by name.
pub(crate) type Kernels = FxHashMap<(usize, usize), FxHashMap<Box<str>, CudaFunction>>;

/// One CUDA device of the runtime.
pub struct GpuDevice {
    /// Unique in the process (no other device of this or any runtime has it): what a
    /// thread's cache of kernels knows the device by.
    pub(crate) uid: u64,
    /// Index among the runtime's GPUs (`gpu:index`).
    pub(crate) index: usize,
    /// CUDA device ordinal.
    pub(crate) ordinal: usize,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) streams: StreamPool,
    /// Completed events for reuse (lock-free: the fence poller returns them while workers
    /// take them).
    pub(crate) events: crossbeam_queue::SegQueue<CudaEvent>,
    pub(crate) kernels: Mutex<Kernels>,
    /// Page-locked buffers staging uploads.
    pub(crate) staging: crate::transfer::Staging,
    /// A stream for copies outside tasks (write-backs, reads for CPU tasks), made on first
    /// use.
    pub(crate) copy: OnceLock<Arc<cudarc::driver::CudaStream>>,
    /// Device-side times of traced tasks.
    pub(crate) clock: crate::timing::Clock,
    name: String,
    total: u64,
    budget: u64,
    failed: OnceLock<String>,
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("index", &self.index)
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("total", &self.total)
            .field("budget", &self.budget)
            .field("failed", &self.failed.get())
            .finish_non_exhaustive()
    }
}

impl GpuDevice {
    /// Marks the device failed (first message wins).
    pub(crate) fn fail(&self, message: String) {
        let _ = self.failed.set(message);
    }

    pub(crate) fn failed(&self) -> Option<&String> {
        self.failed.get()
    }

    /// The runtime's name for the device.
    pub(crate) fn device(&self) -> Device {
        Device::gpu(self.index as u32)
    }
}

/// The CUDA backend: every device the runtime uses.
#[derive(Debug)]
pub struct CudaBackend {
    devices: Vec<Arc<GpuDevice>>,
}

impl GpuBackend for CudaBackend {
    fn devices(&self) -> Vec<GpuInfo> {
        self.devices
            .iter()
            .map(|d| GpuInfo {
                name: format!("{} (CUDA device {})", d.name, d.ordinal),
                memory_budget: d.budget,
                memory_total: d.total,
            })
            .collect()
    }

    fn begin(
        &self,
        gpu: usize,
        _task: &dyn std::fmt::Display,
        after: &[Arc<dyn Fence>],
        priority: u8,
    ) -> Result<Box<dyn GpuExec>, String> {
        let dev = self
            .devices
            .get(gpu)
            .ok_or_else(|| format!("no GPU {gpu} in this backend"))?;
        if let Some(m) = dev.failed() {
            return Err(format!("the device failed earlier: {m}"));
        }
        // Stream affinity: a task after a GPU task of this device takes that task's stream
        // when it is free and of the task's priority; stream order then stands in for a
        // wait.
        let urgent = priority > 0;
        let preferred = after.iter().find_map(|f| {
            let cf = f.as_any().downcast_ref::<CudaFence>()?;
            match cf.origin() {
                (g, Some(s)) if g == gpu && dev.streams.is_urgent(s) == urgent => Some(s),
                _ => None,
            }
        });
        let (stream, owned) = match preferred.and_then(|i| dev.streams.acquire_free(i)) {
            Some(s) => (s, true),
            None => dev.streams.acquire(urgent),
        };
        for f in after {
            if let Some(cf) = f.as_any().downcast_ref::<CudaFence>() {
                if cf.origin() == (gpu, Some(stream.index)) {
                    continue;
                }
                // Runahead: the dependency's work is enqueued, possibly on another device;
                // this stream waits for it on the GPU, not on the host (its event is
                // recorded now if it was deferred).
                let ev = cf.covering().map_err(str::to_string)?;
                stream.stream().wait(ev).map_err(|e| describe(&e))?;
            }
        }
        let exec = Exec {
            ctx: Some(GpuContext::new(dev.clone(), stream, None)),
            owned,
            prev: None,
        };
        // Into the memory of the last task that finished on this thread, if any.
        Ok(match SPARE_EXEC.take() {
            Some(mut b) => {
                *b = exec;
                b
            }
            None => Box::new(exec),
        })
    }

    fn device_error(&self, gpu: usize) -> Option<String> {
        self.devices.get(gpu).and_then(|d| d.failed().cloned())
    }
}

thread_local! {
    /// The allocation of the last [`Exec`] that finished on this thread (emptied), which
    /// the next task begun here takes over: a task's execution state then costs no
    /// allocation and no free.
    static SPARE_EXEC: std::cell::Cell<Option<Box<Exec>>> = const { std::cell::Cell::new(None) };
}

/// A task running on a device.
struct Exec {
    /// The task's context: here between polls, in the thread-local during them (moved, not
    /// cloned: a poll changes no reference count), taken over by its fence at the end.
    ctx: Option<GpuContext>,
    /// The stream was taken from the pool for this task (and goes back at the end).
    owned: bool,
    /// What the thread-local held before `enter`, until `exit`.
    prev: Option<Option<GpuContext>>,
}

impl GpuExec for Exec {
    fn enter(&mut self) {
        let Some(ctx) = self.ctx.take() else {
            // Entered already.
            return;
        };
        // A failure to make the context current shows up as an error of the task's first
        // CUDA call, and again at `finish`.
        let _ = crate::raw::make_current(&ctx.gpu_device().ctx);
        self.prev = Some(context::set(Some(ctx)));
    }

    fn exit(&mut self) {
        if let Some(prev) = self.prev.take() {
            // (The thread-local holds this task's context: only `enter` and `exit`, which
            // the runtime pairs around each poll, set it.)
            self.ctx = context::set(prev);
        }
    }

    fn time(&mut self) {
        if let Some(c) = &mut self.ctx {
            c.time();
        }
    }

    fn finish(mut self: Box<Self>) -> Result<Arc<dyn Fence>, String> {
        let ctx = self.ctx.take();
        let owned = self.owned;
        // (Emptied, the allocation waits for the next task begun on this thread.)
        self.prev = None;
        SPARE_EXEC.set(Some(self));
        let Some(ctx) = ctx else {
            return Err("the task's GPU context was not given back after its poll".into());
        };
        let (dev, stream, marks) = ctx.into_parts();
        let timing = marks.as_ref().and_then(|m| m.finish(&dev, stream.stream()));
        // A traced task's fence is recorded now, after its timing events; any other's
        // recording is deferred until somebody asks (one event then serves the fences of a
        // run of tasks on the stream). Either way the fence's place on the stream is taken
        // before the stream goes back to the pool.
        let recorded = timing
            .is_some()
            .then(|| CudaFence::recorded(&dev, &stream).map(|f| f.with_timing(timing)));
        let ticket = match recorded {
            None => CudaFence::ticket(&stream),
            Some(_) => 0,
        };
        if owned {
            dev.streams.release(&stream);
        }
        // Errors the context recorded meanwhile (from drops of CUDA objects) belong to the
        // task that ran on it.
        if let Err(e) = dev.ctx.check_err() {
            if crate::error::is_sticky(&e) {
                dev.fail(describe(&e));
            }
            return Err(describe(&e));
        }
        match recorded {
            // The fence takes over the context's references.
            None => Ok(Arc::new(CudaFence::after(dev, stream, ticket))),
            Some(Ok(f)) => Ok(Arc::new(f)),
            Some(Err(Error::Driver(e))) => {
                if crate::error::is_sticky(&e) {
                    dev.fail(describe(&e));
                }
                Err(describe(&e))
            }
            Some(Err(e)) => Err(e.to_string()),
        }
    }
}

/// A reference to each device's primary context, taken by the first runtime that uses the
/// device and kept for the rest of the process (by CUDA ordinal), as the CUDA runtime API
/// keeps it.
///
/// Making a primary context took 70-370 ms on an H200 host, most of it in the driver;
/// retaining one that exists takes well under a millisecond. Without this reference, the
/// context would go with the last runtime using it, and every runtime a program builds
/// after (a test suite builds one per test) would make it again. (Once a GPU task has run
/// in a process, the context was seen to stay on an H200 host without this reference too;
/// runtimes that run CPU tasks only, as most tests' do, rely on it: `tests/gpu_context.rs`.)
/// Each runtime still retains the context for itself (`CudaContext::new`), so what cudarc
/// keeps per `CudaContext` (its count of streams, the errors it recorded) stays the
/// runtime's own.
///
/// (A context a kernel fault broke stays broken for the process whether or not it is
/// kept: the driver refuses later runtimes on that device, `tests/gpu_fault.rs`.)
static KEPT_CONTEXTS: Mutex<Vec<Option<Arc<CudaContext>>>> = Mutex::new(Vec::new());

/// A context of device `ordinal` for a new runtime: its primary context, made if no
/// runtime has used the device yet, then kept alive in [`KEPT_CONTEXTS`].
fn context_for(ordinal: usize) -> Result<Arc<CudaContext>, cudarc::driver::DriverError> {
    let mut kept = KEPT_CONTEXTS.lock();
    let ctx = CudaContext::new(ordinal)?;
    if kept.len() <= ordinal {
        kept.resize(ordinal + 1, None);
    }
    if kept[ordinal].is_none() {
        kept[ordinal] = Some(CudaContext::new(ordinal)?);
    }
    Ok(ctx)
}

/// Finds the CUDA devices and starts a backend on them: the runtime's GPU backend factory.
///
/// No driver (libcuda cannot be loaded) or no device: `Ok(None)`, and the runtime runs on
/// the CPU alone, unless devices were named (`opts.ordinals`, `Builder::gpus`). A device
/// named that does not exist (no driver, no device, an ordinal past the last one), or a
/// device that fails to start: `Err` naming it.
pub fn discover(opts: &GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String> {
    // cudarc panics where a library is missing; this is the last line against that.
    std::panic::catch_unwind(|| discover_inner(opts))
        .unwrap_or_else(|p| Err(format!("CUDA discovery panicked: {}", panic_text(&*p))))
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn discover_inner(opts: &GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String> {
    if matches!(&opts.ordinals, Some(o) if o.is_empty()) {
        return Ok(None);
    }
    // GPUs named by ordinal must be there; by default, no driver or no device means the
    // CPU alone.
    let named = opts.ordinals.as_ref().and_then(|o| o.first());
    if !crate::raw::driver_present() {
        return match named {
            Some(o) => Err(format!(
                "GPU {o} asked for, but no CUDA driver was found (libcuda could not be loaded)"
            )),
            None => Ok(None),
        };
    }
    let count = match CudaContext::device_count() {
        Ok(n) => n.max(0) as usize,
        // No device, or a driver that cannot start: CPU only, unless GPUs were named.
        Err(e) => {
            return match named {
                Some(o) => Err(format!(
                    "GPU {o} asked for, but the CUDA driver found no device: {}",
                    describe(&e)
                )),
                None => Ok(None),
            };
        }
    };
    let ordinals: Vec<usize> = match &opts.ordinals {
        Some(o) => o.clone(),
        None => (0..count).collect(),
    };
    if ordinals.is_empty() {
        return Ok(None);
    }
    let mut devices = Vec::new();
    for (index, &ordinal) in ordinals.iter().enumerate() {
        if ordinal >= count {
            return Err(format!(
                "GPU {ordinal} asked for, but {count} CUDA device{} found",
                if count == 1 { " was" } else { "s were" }
            ));
        }
        let err = |what: &str, e: cudarc::driver::DriverError| {
            format!("CUDA device {ordinal}: {what}: {}", describe(&e))
        };
        let ctx = context_for(ordinal).map_err(|e| err("cannot create a context", e))?;
        let name = ctx.name().map_err(|e| err("cannot read its name", e))?;
        let total = ctx
            .total_mem()
            .map_err(|e| err("cannot read its memory", e))? as u64;
        let streams = StreamPool::new(&ctx, opts.streams_per_gpu).map_err(|e| match e {
            Error::Driver(d) => err("cannot create streams", d),
            other => other.to_string(),
        })?;
        // Every GPU task records one event; start with a stock so that a burst of tasks
        // does not create (and later destroy) one each.
        let events = crossbeam_queue::SegQueue::new();
        for _ in 0..EVENT_STOCK {
            events.push(
                ctx.new_event(None)
                    .map_err(|e| err("cannot create events", e))?,
            );
        }
        devices.push(Arc::new(GpuDevice {
            uid: NEXT_DEVICE_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            index,
            ordinal,
            ctx,
            streams,
            events,
            kernels: Mutex::new(FxHashMap::default()),
            staging: Default::default(),
            copy: OnceLock::new(),
            clock: Default::default(),
            name,
            total,
            budget: (total as f64 * opts.memory_fraction) as u64,
            failed: OnceLock::new(),
        }));
    }
    // Direct copies between GPUs (and between their pooled buffers) where the hardware
    // allows.
    let ctxs: Vec<_> = devices.iter().map(|d| d.ctx.clone()).collect();
    crate::raw::enable_peer_access(&ctxs);
    Ok(Some(Arc::new(CudaBackend { devices })))
}
