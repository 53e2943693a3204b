//! [`Builder`]: configuring and starting a runtime.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::context::{self, WorkerRt};
use super::counters::Counters;
use super::inject::Injector;
use super::nudge::PollMarks;
use super::{
    Backing, DeviceState, GpuSlot, RtInner, Runtime, Sched, bridge, new_runtime_id, parked,
    set_alive, stall,
};
use crate::device::backend::{GpuBackendFactory, GpuOptions};
use crate::device::{Device, MAX_GPUS, VCU_ONE, vcu_fixed};
use crate::error::{Error, Result};
use crate::graph::node::Waking;
use crate::scheduler::mapping::{MappingPolicy, MostFree};

/// How long a thread of `spawn_blocking` stays after its last closure (Tokio's default is
/// 10 s). Stall detection counts such a thread as one that may still spawn what others
/// wait for, whether it runs a closure or idles, so it fails a stuck program's tasks at
/// most this much later than it would without it.
pub(crate) const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(1);

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
    /// Worker threads (default: the machine's available parallelism; at most
    /// 32,768). The default VCUs of a CPU task are one worker's share, `1 / cpu_threads`.
    pub fn cpu_threads(mut self, n: usize) -> Self {
        self.cpu_threads = Some(n);
        self
    }

    /// `n` simulated GPUs (at most 63) with `memory` bytes of budget each (at most
    /// 2<sup>44</sup> - 1, a byte short of 16 TiB: a larger budget counts as that), in
    /// place of real ones: the scheduler treats them as GPUs (placement, VCUs, memory
    /// admission) and runs their tasks on the host. For tests and machines without CUDA.
    pub fn virtual_gpus(mut self, n: usize, memory: u64) -> Self {
        self.virtual_gpus = Some((n, memory));
        self
    }

    /// Which GPUs to use, by device ordinal: `.gpus([0, 2])`, `.gpus(0..2)`, or `.gpus([])`
    /// for none. Default: every device the GPU backend finds (none: the CPU alone).
    ///
    /// GPUs named here must exist: [`build`](Self::build) fails naming the first missing
    /// one (also on a machine without a CUDA driver), one named twice, and where
    /// [`virtual_gpus`](Self::virtual_gpus) is set as well.
    ///
    /// ```
    /// // A runtime of parla-core alone has no GPU backend to find GPU 0 with.
    /// let e = parla_core::Runtime::builder().gpus([0]).build().err().unwrap();
    /// assert!(e.to_string().contains("GPU 0"), "{e}");
    /// ```
    pub fn gpus(mut self, ordinals: impl IntoIterator<Item = usize>) -> Self {
        // (One more than a runtime manages at most: `build` refuses as many, and a range
        // as long as `0..usize::MAX` is not collected whole.)
        self.gpu_ordinals = Some(ordinals.into_iter().take(MAX_GPUS + 1).collect());
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

    /// CUDA streams in each GPU's pool (default 8, at most 64); also the number of tasks the
    /// mapping policy expects a GPU to run at once. The pool has half as many high-priority
    /// streams besides (at least one), for tasks with a
    /// [`priority`](crate::TaskBuilder::priority).
    pub fn streams_per_gpu(mut self, n: usize) -> Self {
        self.streams_per_gpu = n;
        self
    }

    /// Streams a Perfetto / Chrome trace of every task to `path`, closed when the runtime
    /// shuts down (see [`crate::trace`] for what it holds). The `PARLA_TRACE` environment
    /// variable does the same without code changes (set empty, it counts as unset). The
    /// runtime then sends its tasks' events, and the spans made inside them, to a
    /// subscriber of its own; to keep yours, add [`crate::trace::layer`] to it instead.
    /// [`build`](Self::build) fails with [`Error::Config`] if the file cannot be created
    /// (from `PARLA_TRACE`, a warning is printed and the runtime runs without a trace).
    /// While another runtime of the process writes the same file (tests run in parallel,
    /// each with its runtime), this one writes `NAME.2.EXT` (or the next number free)
    /// instead, and says so on stderr.
    pub fn trace(mut self, path: impl Into<PathBuf>) -> Self {
        self.trace = Some(path.into());
        self
    }

    /// Prints a [`Summary`](crate::trace::Summary) when the runtime shuts down: tasks run
    /// and failed, busy time per device, waits for dependencies and admission, the
    /// runtime's overhead per task, makespan against the critical path. `PARLA_PROFILE=1`
    /// does the same (`0`, `false`, `no`, `off` or empty leave it off);
    /// [`Runtime::profile_summary`](crate::Runtime::profile_summary) gives it while the
    /// runtime runs.
    pub fn profile(mut self, on: bool) -> Self {
        self.profile = on;
        self
    }

    /// The mapping policy for list placements (default [`MostFree`]).
    pub fn mapping_policy(mut self, policy: impl MappingPolicy) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// The CPU device's memory budget in bytes (default: the machine's memory; at most
    /// 2<sup>44</sup> - 1, a byte short of 16 TiB: a larger budget counts as that).
    pub fn cpu_memory(mut self, bytes: u64) -> Self {
        self.cpu_memory = Some(bytes);
        self
    }

    /// Builds the runtime and starts its worker threads.
    pub fn build(self) -> Result<Runtime> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = match self.cpu_threads {
            Some(0) => return Err(Error::Config("cpu_threads must be at least 1".into())),
            Some(n) if n > MAX_CPU_THREADS => {
                return Err(Error::Config(format!(
                    "cpu_threads = {n}: it must be between 1 and {MAX_CPU_THREADS}"
                )));
            }
            Some(n) => n,
            None => cores,
        };
        if !(1..=crate::device::backend::MAX_SLOTS).contains(&self.streams_per_gpu) {
            return Err(Error::Config(format!(
                "streams_per_gpu = {}: it must be between 1 and {}",
                self.streams_per_gpu,
                crate::device::backend::MAX_SLOTS
            )));
        }
        let fraction = self.gpu_memory_fraction;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(Error::Config(format!(
                "gpu_memory_fraction = {fraction}: it must be in (0, 1]"
            )));
        }
        // The GPUs: virtual ones if asked for, else whatever the backend finds.
        let mut gpus: Vec<GpuSlot> = Vec::new();
        if let Some(o) = &self.gpu_ordinals {
            if o.len() > MAX_GPUS {
                return Err(Error::Config(format!(
                    "gpus(..) named more than {MAX_GPUS} GPUs; the runtime manages at most {MAX_GPUS}"
                )));
            }
            // (One device twice would count its memory twice.)
            let twice =
                (0..o.len()).find_map(|i| Some((o[..i].iter().position(|g| *g == o[i])?, i)));
            if let Some((first, i)) = twice {
                return Err(Error::Config(format!(
                    "gpus(..) names GPU {} twice (at positions {first} and {i})",
                    o[i]
                )));
            }
        }
        if let Some(o) = self.gpu_ordinals.as_ref().and_then(|o| o.first()) {
            // Real GPUs named: they must be what the runtime runs on.
            if let Some((n, _)) = self.virtual_gpus {
                return Err(Error::Config(format!(
                    "gpus([{o}, ..]) names real GPUs, and virtual_gpus({n}, ..) replaces them: \
                     set one of the two"
                )));
            }
            if self.gpu_backend.is_none() {
                return Err(Error::Config(format!(
                    "GPU {o} asked for, but the runtime has no GPU backend (a runtime of \
                     parla-core alone has none: see Builder::gpu_backend)"
                )));
            }
        }
        if let Some((n, mem)) = self.virtual_gpus {
            if n > MAX_GPUS {
                return Err(too_many_gpus(n));
            }
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
        let no_gpu_why = match (&self.virtual_gpus, &self.gpu_ordinals) {
            (Some(_), _) => "virtual_gpus(0, ..) gave it none",
            (None, Some(o)) if o.is_empty() => "gpus([]) named none",
            _ if self.gpu_backend.is_none() => "a runtime of parla-core alone has no GPU backend",
            _ => "no CUDA device found",
        };
        if n_gpus > MAX_GPUS {
            return Err(too_many_gpus(n_gpus));
        }
        // (Before Tokio's runtime: a failure here returns before there is one to drop.)
        #[cfg(feature = "tracing")]
        let asked = self.trace.is_some();
        let trace_path = self
            .trace
            .or_else(|| env_set("PARLA_TRACE").map(|p| env_trace_path(p.into())));
        let profile = self.profile || env_set("PARLA_PROFILE").is_some_and(|v| !env_off(&v));
        #[cfg(feature = "tracing")]
        let trace = match (trace_path.is_some() || profile)
            .then(|| crate::trace::RtTrace::new(trace_path.clone(), profile))
        {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                // (The error names the file.)
                let what = e.to_string();
                if asked {
                    return Err(Error::Config(what));
                }
                // (Named by `PARLA_TRACE`: the program runs on without a trace.)
                eprintln!("parla: PARLA_TRACE: {what}; running without a trace");
                None
            }
        };
        #[cfg(not(feature = "tracing"))]
        if trace_path.is_some() || profile {
            eprintln!("parla: built without the `tracing` feature: no trace or profile");
        }
        // Worker threads find their runtime outside driver polls (futures started with
        // `tokio::spawn` inside tasks) through this, set once the runtime exists.
        let worker_rt: WorkerRt = Arc::new(OnceLock::new());
        let start_rt = worker_rt.clone();
        // The threads of Tokio's pool (workers, and the threads of `spawn_blocking`), counted
        // so that stall detection sees the blocking ones (`RtInner::foreign_tasks`). Tokio
        // names each thread it makes on the thread that asks for it, before the thread
        // starts and before `spawn_blocking` returns: counted there, a thread made for a
        // blocking closure is counted before the task that asked for it can finish, so no
        // stall is seen in between.
        let pool_threads = Arc::new(AtomicUsize::new(0));
        let (made, stopped) = (pool_threads.clone(), pool_threads.clone());
        let poll_marks = Arc::new(PollMarks::default());
        let (marks_start, marks_stop) = (poll_marks.clone(), poll_marks.clone());
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name_fn(move || {
                made.fetch_add(1, Ordering::SeqCst);
                "parla-worker".to_string()
            })
            .thread_keep_alive(BLOCKING_KEEP_ALIVE)
            .enable_all()
            .on_thread_start(move || {
                context::set_worker_rt(start_rt.clone());
                context::set_poll_mark(marks_start.start());
            })
            .on_thread_stop(move || {
                context::clear_worker_rt();
                marks_stop.stop(context::take_poll_mark());
                stopped.fetch_sub(1, Ordering::SeqCst);
            })
            .build()?;
        let cpu_mem = self.cpu_memory.unwrap_or_else(system_memory);
        let track_running = n_gpus > 0;
        // A task lane shard for each worker, and one for the threads outside them.
        let lane_shards = threads + 1;
        // Slots of the running counts: about one per thread that starts or finishes tasks
        // (the workers, `block_on`'s, the fence poller), at most 64 (see `DeviceState`).
        let running_slots = if track_running {
            (threads + 2).next_power_of_two().min(64)
        } else {
            1
        };
        let mut devices = vec![DeviceState::new(
            Device::CPU,
            "host CPU".into(),
            Backing::Cpu,
            None,
            cpu_mem,
            vcu_fixed(1.0 / threads as f64).max(1),
            threads,
            track_running,
            lane_shards,
            running_slots,
        )];
        for (i, (name, mem, backing, gpu)) in gpus.into_iter().enumerate() {
            devices.push(DeviceState::new(
                Device::gpu(i as u32),
                name,
                backing,
                gpu,
                mem,
                0,
                self.streams_per_gpu,
                track_running,
                lane_shards,
                running_slots,
            ));
        }
        debug_assert!(devices.iter().all(|d| d.default_vcu <= VCU_ONE));
        let id = new_runtime_id();
        let inner = Arc::new_cyclic(|me: &std::sync::Weak<RtInner>| RtInner {
            id,
            tokio: tokio.handle().clone(),
            tokio_metrics: tokio.metrics(),
            poll_marks,
            devices: devices.into_boxed_slice(),
            gpus: n_gpus,
            no_gpu_why,
            inject: Injector::new(threads),
            counters: Arc::new(Counters::new(tokio.metrics(), pool_threads, threads)),
            policy: self.policy.unwrap_or_else(|| Box::new(MostFree)),
            forward: (0..super::FORWARD_SHARDS)
                .map(|_| CachePadded::new(Mutex::new(std::collections::VecDeque::new())))
                .collect(),
            gate: parking_lot::RwLock::new(()),
            #[cfg(feature = "tracing")]
            trace,
            bridge: bridge::Bridge::default(),
            pollers: parked::Pollers::default(),
            spare_main: super::SpareMain::new(),
            waking: Arc::new(Waking(Arc::new(Sched(me.clone())))),
            cpu_threads: threads,
            cores,
            let_go_polls: std::sync::atomic::AtomicUsize::new(0),
            shutdown: std::sync::atomic::AtomicBool::new(false),
            ledger: super::data::ledger(me.clone(), id),
            #[cfg(all(test, not(parla_loom)))]
            futile_lingers: std::sync::atomic::AtomicUsize::new(0),
            #[cfg(all(test, not(parla_loom)))]
            abort_lookups: std::sync::atomic::AtomicUsize::new(0),
            #[cfg(all(test, not(parla_loom)))]
            drivers_made: std::sync::atomic::AtomicUsize::new(0),
            #[cfg(all(test, not(parla_loom)))]
            fit_checks: std::sync::atomic::AtomicUsize::new(0),
            #[cfg(all(test, not(parla_loom)))]
            coop_yields: std::sync::atomic::AtomicUsize::new(0),
            spent: crossbeam_utils::CachePadded::new(super::SpentPool {
                tasks: parking_lot::Mutex::new(Vec::new()),
                len: std::sync::atomic::AtomicUsize::new(0),
            }),
        });
        let _ = worker_rt.set(Arc::downgrade(&inner));
        set_alive(id, Arc::downgrade(&inner));
        stall::start_monitor(&inner);
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

/// The most worker threads a runtime starts (Tokio fails or panics well before a number
/// such as `usize::MAX`: it is refused first).
const MAX_CPU_THREADS: usize = 1 << 15;

/// The error of `n` GPUs asked for, more than the runtime manages.
fn too_many_gpus(n: usize) -> Error {
    Error::Config(format!(
        "{n} GPUs asked for; the runtime manages at most {MAX_GPUS}"
    ))
}

/// Whether a switch set in the environment (`PARLA_PROFILE`) says off: `0`, `false`, `no`
/// or `off`, in any case.
fn env_off(v: &std::ffi::OsStr) -> bool {
    let v = v.to_string_lossy();
    ["0", "false", "no", "off"]
        .iter()
        .any(|off| v.trim().eq_ignore_ascii_case(off))
}

/// The environment variable `name`, if it is set to something: set empty (`PARLA_TRACE=`),
/// or to blanks alone, it counts as unset, as most tools take it.
fn env_set(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.to_string_lossy().trim().is_empty())
}

/// The file a runtime traced through `PARLA_TRACE` writes: the path as given for the first
/// such runtime of the process, then `NAME.2.EXT`, `NAME.3.EXT` and so on (said on stderr),
/// so that runtimes built one after the other or side by side (one per test) do not write
/// into one file.
fn env_trace_path(path: PathBuf) -> PathBuf {
    static RUNTIMES: AtomicUsize = AtomicUsize::new(0);
    let n = RUNTIMES.fetch_add(1, Ordering::Relaxed);
    // (A directory: no runtime writes it, and none writes a file next to it instead.)
    if n == 0 || path.is_dir() {
        return path;
    }
    let own = crate::trace::numbered(&path, n + 1);
    eprintln!(
        "parla: PARLA_TRACE: runtime {} of this process writes {}",
        n + 1,
        own.display()
    );
    own
}
