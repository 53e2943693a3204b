//! The runtime: [`Builder`], [`Runtime`], and the state every part of the scheduler shares.

mod activity;
pub(crate) mod bridge;
mod driver;
pub(crate) mod parked;

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crossbeam_queue::SegQueue;
use parking_lot::Mutex;

pub(crate) use activity::{Activity, Counters};
use driver::Driver;

use crate::context;
use crate::device::admission::Admission;
use crate::device::backend::{GpuBackend, GpuBackendFactory, GpuOptions};
use crate::device::{Demand, Device, MAX_GPUS, VCU_ONE, vcu_fixed};
use crate::error::{Error, Result};
use crate::scheduler::Launch;
use crate::scheduler::mapping::{MappingPolicy, MostFree};
use crate::scheduler::stall;
use crate::task::Task;
use crate::task::header::Header;
use crate::trace::Recorder;

/// What a device is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backing {
    /// The host CPU.
    Cpu,
    /// A simulated GPU: tasks run on the host, admission as on a real one.
    Virtual,
    /// A GPU of a backend (CUDA).
    Gpu,
}

/// A GPU found at build time: name, memory budget, backing, backend and index.
type GpuSlot = (String, u64, Backing, Option<(Arc<dyn GpuBackend>, usize)>);

/// One device's runtime state.
pub(crate) struct DeviceState {
    pub(crate) device: Device,
    pub(crate) admission: Admission<Arc<dyn Task>>,
    /// VCUs of a task that does not ask (fixed point).
    pub(crate) default_vcu: u32,
    /// Tasks the device runs at once by design (for the mapping policy).
    pub(crate) slots: usize,
    pub(crate) backing: Backing,
    pub(crate) name: String,
    /// The backend and its index for the device, on real GPUs.
    pub(crate) gpu: Option<(Arc<dyn GpuBackend>, usize)>,
    /// Set once the device failed for good (a sticky GPU error).
    pub(crate) failed: OnceLock<String>,
    running: AtomicUsize,
    track_running: bool,
}

impl DeviceState {
    /// Admits `t` (or queues it); pushes what was admitted to `out`.
    pub(crate) fn admit(&self, t: Arc<dyn Task>, d: Demand, out: &mut Launch) {
        let before = out.len();
        self.admission.admit(t, d, out);
        self.count(&out[before..]);
    }

    /// Releases a reservation; pushes what that admitted to `out`.
    pub(crate) fn release(&self, d: Demand, out: &mut Launch) {
        let before = out.len();
        self.admission.release(d, out);
        self.count(&out[before..]);
    }

    fn count(&self, admitted: &[Arc<dyn Task>]) {
        if self.track_running {
            let n = admitted.iter().filter(|t| t.as_resume().is_none()).count();
            if n > 0 {
                self.running.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn finished(&self) {
        if self.track_running {
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
}

/// State shared by the runtime handle, its drivers and its tasks.
pub(crate) struct RtInner {
    pub(crate) tokio: tokio::runtime::Handle,
    pub(crate) devices: Box<[DeviceState]>,
    pub(crate) gpus: usize,
    pub(crate) injector: SegQueue<Arc<dyn Task>>,
    /// Drivers pulling from the injector now.
    pub(crate) drivers: AtomicUsize,
    max_drivers: usize,
    pub(crate) counters: Arc<Counters>,
    pub(crate) policy: Box<dyn MappingPolicy>,
    /// Placeholders ever created (forward references), for the stall resolver.
    forward: Mutex<Vec<Arc<dyn Task>>>,
    pub(crate) resolver: Mutex<()>,
    pub(crate) epoch: Instant,
    pub(crate) trace: Option<Recorder>,
    pub(crate) bridge: bridge::Bridge,
    pub(crate) profile: Option<crate::trace::profile::Profile>,
    pub(crate) parked: parked::ParkedAwaits,
    cpu_threads: usize,
}

impl RtInner {
    pub(crate) fn register_forward(&self, p: Arc<dyn Task>) {
        let mut f = self.forward.lock();
        if f.len() >= 64 && f.len().is_power_of_two() {
            f.retain(|p| !p.header().is_done());
        }
        f.push(p);
    }

    pub(crate) fn forward_refs(&self) -> Vec<Arc<dyn Task>> {
        let mut f = self.forward.lock();
        f.retain(|p| !p.header().is_done());
        f.clone()
    }

    /// Reserves a slot among the active drivers.
    pub(crate) fn try_activate(&self) -> bool {
        let mut n = self.drivers.load(Ordering::SeqCst);
        while n < self.max_drivers {
            match self
                .drivers
                .compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(actual) => n = actual,
            }
        }
        false
    }

    /// A driver stops pulling (its task waits). Starts another if work is queued.
    pub(crate) fn deactivate(self: &Arc<Self>) {
        self.drivers.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.injector.is_empty() {
            self.ensure_drivers(1);
        }
    }

    /// Queues an admitted task for any driver.
    pub(crate) fn push(&self, t: Arc<dyn Task>) {
        self.injector.push(t);
    }

    /// Passes on what admission let through: a resume request wakes its driver (giving back
    /// the token admission counted for it, since the driver takes its own); a task is
    /// returned to be run.
    pub(crate) fn route(&self, t: Arc<dyn Task>) -> Option<Arc<dyn Task>> {
        match t.as_resume() {
            None => Some(t),
            Some(r) => {
                // Grant first: the woken driver takes its own token before this one is given
                // back, so the busy count never dips to zero in between.
                r.grant();
                self.counters.add(0, -1);
                None
            }
        }
    }

    /// Queues admitted tasks and makes sure drivers will run them.
    pub(crate) fn push_all(self: &Arc<Self>, tasks: impl Iterator<Item = Arc<dyn Task>>) {
        let mut n = 0;
        for t in tasks {
            if let Some(t) = self.route(t) {
                self.injector.push(t);
                n += 1;
            }
        }
        if n > 0 {
            self.ensure_drivers(n);
        }
    }

    /// Launches admitted tasks from outside a driver (spawn, the stall resolver).
    pub(crate) fn launch_detached(self: &Arc<Self>, launch: Launch) {
        self.push_all(launch.into_iter());
    }

    fn ensure_drivers(self: &Arc<Self>, mut wanted: usize) {
        fence(Ordering::SeqCst);
        while wanted > 0 && self.try_activate() {
            wanted -= 1;
            self.tokio.spawn(Driver::new(self.clone(), None));
        }
    }

    /// Nanoseconds since the runtime started.
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Records pipeline time `i` (0 spawn, 1 ready, 2 start) when tracing to a file.
    #[inline]
    pub(crate) fn stamp(&self, h: &Header, i: usize) {
        if let Some(t) = &h.times {
            t[i].store(self.now(), Ordering::Relaxed);
        }
    }

    /// Records a finished task in the trace.
    #[inline]
    pub(crate) fn stamp_end(&self, t: &Arc<dyn Task>, device: Device) {
        if let Some(r) = &self.trace {
            r.record(t.header(), device, self.now(), false);
        }
    }

    /// Records a task that failed without running.
    #[inline]
    pub(crate) fn trace_failed(&self, h: &Header) {
        if let Some(r) = &self.trace {
            r.record(h, h.device().unwrap_or(Device::CPU), self.now(), true);
        }
    }
}

/// Configures and builds a [`Runtime`].
///
/// ```
/// let rt = parla_core::Runtime::builder()
///     .cpu_threads(2)
///     .virtual_gpus(2, 1 << 30)
///     .build()?;
/// assert_eq!(rt.devices().len(), 3);
/// # Ok::<_, parla_core::Error>(())
/// ```
pub struct Builder {
    cpu_threads: Option<usize>,
    virtual_gpus: Option<(usize, u64)>,
    gpu_backend: Option<GpuBackendFactory>,
    gpu_ordinals: Option<Vec<usize>>,
    gpu_memory_fraction: f64,
    streams_per_gpu: usize,
    trace: Option<PathBuf>,
    policy: Option<Box<dyn MappingPolicy>>,
    cpu_memory: Option<u64>,
    profile: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            cpu_threads: None,
            virtual_gpus: None,
            gpu_backend: None,
            gpu_ordinals: None,
            gpu_memory_fraction: 0.95,
            streams_per_gpu: 8,
            trace: None,
            policy: None,
            cpu_memory: None,
            profile: false,
        }
    }
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("cpu_threads", &self.cpu_threads)
            .field("virtual_gpus", &self.virtual_gpus)
            .field("gpus", &self.gpu_ordinals)
            .field("gpu_memory_fraction", &self.gpu_memory_fraction)
            .field("streams_per_gpu", &self.streams_per_gpu)
            .field("trace", &self.trace)
            .field("cpu_memory", &self.cpu_memory)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Worker threads (default: the machine's available parallelism). The default VCUs of a
    /// CPU task are one worker's share, `1 / cpu_threads`.
    pub fn cpu_threads(mut self, n: usize) -> Self {
        self.cpu_threads = Some(n);
        self
    }

    /// `n` simulated GPUs with `memory` bytes of budget each, in place of real ones: the
    /// scheduler treats them as GPUs (placement, VCUs, memory admission) and runs their tasks
    /// on the host. For tests and machines without CUDA.
    pub fn virtual_gpus(mut self, n: usize, memory: u64) -> Self {
        self.virtual_gpus = Some((n, memory));
        self
    }

    /// Which GPUs to use, by device ordinal: `.gpus([0, 2])`, `.gpus(0..2)`, or `.gpus([])`
    /// for none. Default: every device the GPU backend finds.
    pub fn gpus(mut self, ordinals: impl IntoIterator<Item = usize>) -> Self {
        self.gpu_ordinals = Some(ordinals.into_iter().collect());
        self
    }

    /// The fraction of each GPU's total memory that tasks may reserve (default 0.95).
    pub fn gpu_memory_fraction(mut self, fraction: f64) -> Self {
        self.gpu_memory_fraction = fraction;
        self
    }

    /// The GPU backend that finds and runs real GPUs. The `parla` facade sets the CUDA
    /// backend; a runtime built from `parla-core` alone has none. Ignored when
    /// [`virtual_gpus`](Self::virtual_gpus) is set.
    pub fn gpu_backend(mut self, factory: GpuBackendFactory) -> Self {
        self.gpu_backend = Some(factory);
        self
    }

    /// CUDA streams in each GPU's pool (default 8); also the number of tasks the mapping
    /// policy expects a GPU to run at once.
    pub fn streams_per_gpu(mut self, n: usize) -> Self {
        self.streams_per_gpu = n;
        self
    }

    /// Writes a Perfetto/Chrome trace of every task to `path` when the runtime shuts down.
    /// The `PARLA_TRACE` environment variable does the same without code changes.
    pub fn trace(mut self, path: impl Into<PathBuf>) -> Self {
        self.trace = Some(path.into());
        self
    }

    /// Prints a profile when the runtime shuts down: tasks and busy time per device, and the
    /// scheduler's time per task by phase. `PARLA_PROFILE=1` does the same.
    pub fn profile(mut self, on: bool) -> Self {
        self.profile = on;
        self
    }

    /// The mapping policy for list placements (default [`MostFree`]).
    pub fn mapping_policy(mut self, policy: impl MappingPolicy) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// The CPU device's memory budget in bytes (default: the machine's memory).
    pub fn cpu_memory(mut self, bytes: u64) -> Self {
        self.cpu_memory = Some(bytes);
        self
    }

    /// Builds the runtime and starts its worker threads.
    pub fn build(self) -> Result<Runtime> {
        let threads = match self.cpu_threads {
            Some(0) => return Err(Error::Config("cpu_threads must be at least 1".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.streams_per_gpu == 0 {
            return Err(Error::Config("streams_per_gpu must be at least 1".into()));
        }
        let fraction = self.gpu_memory_fraction;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(Error::Config(format!(
                "gpu_memory_fraction = {fraction}: it must be in (0, 1]"
            )));
        }
        // The GPUs: virtual ones if asked for, else whatever the backend finds.
        let mut gpus: Vec<GpuSlot> = Vec::new();
        if let Some((n, mem)) = self.virtual_gpus {
            for i in 0..n {
                gpus.push((format!("virtual GPU {i}"), mem, Backing::Virtual, None));
            }
        } else if let Some(factory) = self.gpu_backend {
            let opts = GpuOptions {
                ordinals: self.gpu_ordinals.clone(),
                streams_per_gpu: self.streams_per_gpu,
                memory_fraction: fraction,
            };
            if let Some(backend) = factory(&opts).map_err(Error::Backend)? {
                for (i, info) in backend.devices().into_iter().enumerate() {
                    gpus.push((
                        info.name,
                        info.memory_budget,
                        Backing::Gpu,
                        Some((backend.clone(), i)),
                    ));
                }
            }
        }
        let n_gpus = gpus.len();
        if n_gpus > MAX_GPUS {
            return Err(Error::Config(format!(
                "{n_gpus} GPUs asked for; the runtime manages at most {MAX_GPUS}"
            )));
        }
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("parla-worker")
            .enable_all()
            .build()?;
        let counters = Arc::new(Counters::new());
        let cpu_mem = self.cpu_memory.unwrap_or_else(system_memory);
        let track_running = n_gpus > 0;
        let mut devices = vec![DeviceState {
            device: Device::CPU,
            admission: Admission::new(cpu_mem),
            default_vcu: vcu_fixed(1.0 / threads as f64).max(1),
            slots: threads,
            backing: Backing::Cpu,
            name: "host CPU".into(),
            gpu: None,
            failed: OnceLock::new(),
            running: AtomicUsize::new(0),
            track_running,
        }];
        for (i, (name, mem, backing, gpu)) in gpus.into_iter().enumerate() {
            devices.push(DeviceState {
                device: Device::gpu(i as u32),
                admission: Admission::new(mem),
                default_vcu: 0,
                slots: self.streams_per_gpu,
                backing,
                name,
                gpu,
                failed: OnceLock::new(),
                running: AtomicUsize::new(0),
                track_running,
            });
        }
        debug_assert!(devices.iter().all(|d| d.default_vcu <= VCU_ONE));
        let trace_path = self
            .trace
            .or_else(|| std::env::var_os("PARLA_TRACE").map(PathBuf::from));
        let inner = Arc::new(RtInner {
            tokio: tokio.handle().clone(),
            devices: devices.into_boxed_slice(),
            gpus: n_gpus,
            injector: SegQueue::new(),
            drivers: AtomicUsize::new(0),
            max_drivers: threads,
            counters,
            policy: self.policy.unwrap_or_else(|| Box::new(MostFree)),
            forward: Mutex::new(Vec::new()),
            resolver: Mutex::new(()),
            epoch: Instant::now(),
            trace: trace_path.map(Recorder::new),
            bridge: bridge::Bridge::default(),
            profile: (self.profile || std::env::var_os("PARLA_PROFILE").is_some_and(|v| v != "0"))
                .then(|| crate::trace::profile::Profile::new(n_gpus + 1)),
            parked: parked::ParkedAwaits::default(),
            cpu_threads: threads,
        });
        Ok(Runtime {
            tokio: Some(tokio),
            inner,
        })
    }
}

/// The machine's memory in bytes, from `/proc/meminfo` (16 GiB where it cannot be read).
fn system_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(16 << 30, |kb| kb * 1024)
}

/// A parla runtime: worker threads, devices, and the scheduler.
///
/// ```
/// use parla_core::{Runtime, task};
/// let rt = Runtime::builder().cpu_threads(2).build()?;
/// let v = rt.block_on(async { task(async { 6 * 7 }).await })?;
/// assert_eq!(v, 42);
/// # Ok::<_, parla_core::Error>(())
/// ```
pub struct Runtime {
    tokio: Option<tokio::runtime::Runtime>,
    inner: Arc<RtInner>,
}

impl Runtime {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A runtime with default settings.
    pub fn new() -> Result<Runtime> {
        Builder::default().build()
    }

    /// The runtime's devices: `cpu:0`, then its GPUs.
    pub fn devices(&self) -> Vec<Device> {
        self.inner.devices.iter().map(|d| d.device).collect()
    }

    /// How many GPUs (real or virtual) the runtime manages.
    pub fn gpus(&self) -> usize {
        self.inner.gpus
    }

    /// Whether the runtime drives real GPUs through a backend (CUDA).
    pub fn has_real_gpus(&self) -> bool {
        self.inner.devices.iter().any(|d| d.backing == Backing::Gpu)
    }

    /// Whether the runtime's GPUs are simulated.
    pub fn has_virtual_gpus(&self) -> bool {
        self.inner
            .devices
            .iter()
            .any(|d| d.backing == Backing::Virtual)
    }

    /// A description of each device: `cpu:0: host CPU (4 threads, 24 GiB)`.
    pub fn describe_devices(&self) -> Vec<String> {
        self.inner
            .devices
            .iter()
            .map(|d| {
                format!(
                    "{}: {} ({} slots, {:.1} GiB budget)",
                    d.device,
                    d.name,
                    d.slots,
                    d.admission.mem_capacity() as f64 / (1u64 << 30) as f64
                )
            })
            .collect()
    }

    /// The memory budget of device `d` in bytes (`None` if the runtime has no such device).
    pub fn memory_budget(&self, d: Device) -> Option<u64> {
        self.inner
            .devices
            .get(d.slot())
            .filter(|s| s.device == d)
            .map(|s| s.admission.mem_capacity())
    }

    /// The profile so far (see [`Builder::profile`]), or `None` when profiling is off.
    pub fn profile_summary(&self) -> Option<String> {
        self.inner.profile.as_ref().map(|p| p.summary(&self.inner))
    }

    /// Worker threads.
    pub fn cpu_threads(&self) -> usize {
        self.inner.cpu_threads
    }

    /// Runs `fut` on this thread with the runtime current, and returns its output once it
    /// and every task spawned meanwhile finished.
    ///
    /// Tasks still waiting when nothing else can run (on an id never spawned, in a
    /// dependency cycle) are failed with [`TaskError::NeverSpawned`](crate::TaskError) or
    /// [`TaskError::Cycle`](crate::TaskError), so this never hangs on them.
    ///
    /// # Panics
    /// If called from inside a task or another `block_on` (as Tokio's `block_on`).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let inner = &self.inner;
        let _rt = context::enter_rt(inner);
        inner.counters.add(0, 1);
        let activity = Arc::new(Activity::new(inner.counters.clone()));
        let waker = Waker::from(activity.clone());
        let mut main = pin!(fut);
        let mut out = None;
        let tokio = self.tokio.as_ref().map(|t| t.handle().clone());
        let driver = std::future::poll_fn(|cx: &mut Context<'_>| {
            loop {
                inner.counters.register_monitor(cx.waker());
                if out.is_none() && activity.should_poll() {
                    activity.waker.register(cx.waker());
                    activity.begin_poll();
                    context::take_blocked();
                    let polled = main.as_mut().poll(&mut Context::from_waker(&waker));
                    context::flush_credits();
                    match polled {
                        Poll::Ready(v) => {
                            out = Some(v);
                            activity.finish();
                        }
                        Poll::Pending => activity.end_poll(context::take_blocked()),
                    }
                }
                let (live, busy) = inner.counters.load();
                if out.is_some() && live == 0 {
                    return Poll::Ready(());
                }
                if busy == 0 && stall::resolve(inner) {
                    continue;
                }
                // GPU work in flight and nothing else to do: poll its fences here for a
                // moment before sleeping, so a short kernel's completion is seen without a
                // hop through the poller thread and a wake-up of this one.
                if inner.bridge.is_busy() && !activity.should_poll() && spin_fences(inner) {
                    continue;
                }
                return Poll::Pending;
            }
        });
        match tokio {
            Some(t) => t.block_on(driver),
            None => unreachable_runtime(),
        }
        match out {
            Some(v) => v,
            None => unreachable_runtime(),
        }
    }
}

/// Polls the runtime's pending fences for up to [`bridge::AWAIT_SPIN`]. Returns whether any
/// finished.
fn spin_fences(rt: &Arc<RtInner>) -> bool {
    let start = Instant::now();
    while start.elapsed() < bridge::AWAIT_SPIN {
        if bridge::Bridge::poll_once(rt) > 0 {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

#[cold]
fn unreachable_runtime() -> ! {
    // The Tokio runtime is only taken in `Drop`, and `block_on` only returns after its
    // future produced a value: reaching this is a bug in the runtime itself.
    std::process::abort()
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.inner.bridge.shutdown();
        if let Some(t) = self.tokio.take() {
            drop(t);
        }
        stall::cancel_all(&self.inner);
        if let Some(r) = &self.inner.trace {
            r.write(&self.inner);
        }
        if let Some(p) = &self.inner.profile {
            eprint!("{}", p.summary(&self.inner));
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("devices", &self.devices())
            .field("cpu_threads", &self.cpu_threads())
            .finish()
    }
}
