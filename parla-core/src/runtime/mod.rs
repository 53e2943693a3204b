//! The executor: [`Runtime`], [`Builder`], [`Handle`], and the one place where the pure
//! graph and admission state machines (`graph`, `scheduler`) meet Tokio.
//!
//! | module | what |
//! | --- | --- |
//! | `exec` | the pipeline: map and admit ready tasks, launch, complete, apply effects |
//! | `driver` | drivers: Tokio tasks that pull tasks from the injector and poll them |
//! | `inject` | the injector queue and the driver-count handshake |
//! | `waker` | counted and uncounted wakers of tasks and `block_on` futures |
//! | `counters` | the live and busy counts |
//! | `parked` | started tasks that waited, and `block_on` futures (for the stall resolver) |
//! | `stall` | the stall resolver and its monitor task |
//! | `bridge` | GPU fences to wakers |
//! | `context` | thread-locals: current runtime, task, device, poller |
//!
//! # Invariants
//! - Every change of the live and busy counts is made here (`counters` says when).
//! - A task has one run token at a time: it travels from admission (or a wake) through the
//!   injector or a driver's next-task slot to the one driver that polls it.
//! - No poller is woken from inside its own poll by the runtime: a task taking back VCUs it
//!   lent is granted them inline, or queued without a waker.

pub(crate) mod bridge;
mod builder;
pub(crate) mod context;
pub(crate) mod counters;
pub(crate) mod data;
mod driver;
mod exec;
mod inject;
pub(crate) mod nudge;
pub(crate) mod parked;
mod stall;
pub(crate) mod waker;

pub(crate) use exec::let_go_last;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

pub use builder::Builder;

use crate::device::backend::GpuBackend;
use crate::device::{Device, Usage};
use crate::graph::activity::EndPoll;
use crate::graph::arc::{TaskArc, TaskPtr};
use crate::graph::node::{Header, Outcome, Schedule, Waking};
use crate::scheduler::SlottedCount;
use crate::scheduler::admission::Admission;
use crate::scheduler::mapping::MappingPolicy;
use counters::Counters;
use inject::Injector;
use waker::MainPoller;

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
    pub(crate) admission: Admission<TaskPtr>,
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
    /// Tasks with data waiting for admission, and the data with copies here.
    pub(crate) data: data::DeviceData,
    /// Tasks running on the device, counted when `track_running` (for the mapping policy),
    /// in slots per thread. Every task start and finish updates it, on every worker; one
    /// shared count made its line move between the cores on each (a tenth of all samples
    /// of a grid spawned by tasks on 16 workers, where a GPU made the runtime track it),
    /// and the policy reads it only for tasks that may go to more than one device.
    running: SlottedCount,
    track_running: bool,
}

impl DeviceState {
    #[allow(clippy::too_many_arguments)]
    fn new(
        device: Device,
        name: String,
        backing: Backing,
        gpu: Option<(Arc<dyn GpuBackend>, usize)>,
        memory: u64,
        default_vcu: u32,
        slots: usize,
        track_running: bool,
        lane_shards: usize,
        running_slots: usize,
    ) -> Self {
        DeviceState {
            device,
            admission: Admission::new(memory, lane_shards),
            default_vcu,
            slots,
            backing,
            name,
            gpu,
            failed: OnceLock::new(),
            data: Default::default(),
            running: SlottedCount::new(running_slots),
            track_running,
        }
    }

    /// The VCUs a task asking for `vcu` (fixed point; [`DEFAULT_VCU`] when it does not ask)
    /// takes on this device.
    ///
    /// [`DEFAULT_VCU`]: crate::graph::node::DEFAULT_VCU
    #[inline]
    pub(crate) fn vcu_for(&self, vcu: u32) -> u32 {
        if vcu == crate::graph::node::DEFAULT_VCU {
            self.default_vcu
        } else {
            vcu
        }
    }

    /// `n` tasks started on the device (for the mapping policy's load figures).
    #[inline]
    pub(crate) fn started(&self, n: usize) {
        if self.track_running && n > 0 {
            self.running.add(n);
        }
    }

    /// A task that started on the device finished.
    #[inline]
    pub(crate) fn finished(&self) {
        if self.track_running {
            self.running.sub(1);
        }
    }

    /// Tasks running on the device (a snapshot; 0 when not tracked).
    pub(crate) fn running(&self) -> usize {
        self.running.sum()
    }

    /// What is reserved on the device, and the tasks waiting for it: for admission, or
    /// (tasks with data) in its data queue, which admits them in order as their copies
    /// find room.
    pub(crate) fn usage(&self) -> Usage {
        let mut u = self.admission.usage();
        u.waiting += self.data.queued();
        u
    }
}

static NEXT_RUNTIME: AtomicU32 = AtomicU32::new(1);
/// The runtimes running, by id (with their state, once built).
static ALIVE: Mutex<Vec<(u32, Weak<RtInner>)>> = Mutex::new(Vec::new());

fn new_runtime_id() -> u32 {
    let id = NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed);
    ALIVE.lock().push((id, Weak::new()));
    id
}

/// Records the state of the runtime numbered `id`, now built (see [`in_runtime`]).
fn set_alive(id: u32, rt: Weak<RtInner>) {
    if let Some(e) = ALIVE.lock().iter_mut().find(|e| e.0 == id) {
        e.1 = rt;
    }
    nudge::watch();
}

/// Whether the runtime with this id is still running.
pub(crate) fn runtime_alive(id: u32) -> bool {
    ALIVE.lock().iter().any(|e| e.0 == id)
}

/// Runs `f` in the runtime numbered `id`, from any thread, if it is still running: entered
/// (as [`Handle::enter`] does) and held off stall detection meanwhile. For code that holds
/// one of the runtime's tasks but may run anywhere (`TaskHandle::abort`).
///
/// A thread inside that runtime's scope already (a task's poll, `block_on`'s) runs `f`
/// there: entering the runtime again took a global lock and about 300 instructions, as
/// much as the rest of an abort of a waiting task.
#[inline]
pub(crate) fn in_runtime<R>(id: u32, f: impl FnOnce(&Arc<RtInner>) -> R) -> Option<R> {
    let p = context::entered_rt();
    // SAFETY: a non-null pointer was set by the guard of the scope this thread is in (a
    // driver's poll, `block_on`), which outlives this call (see `entered_rt`).
    if let Some(rt) = unsafe { p.as_ref() }
        && rt.id == id
    {
        return Some(f(rt));
    }
    in_runtime_entered(id, f)
}

/// [`in_runtime`] from outside the runtime's scope: finds the runtime and enters it.
#[inline(never)]
fn in_runtime_entered<R>(id: u32, f: impl FnOnce(&Arc<RtInner>) -> R) -> Option<R> {
    let rt = ALIVE
        .lock()
        .iter()
        .find(|e| e.0 == id)
        .and_then(|e| e.1.upgrade())?;
    let h = Handle { inner: rt };
    let _entered = h.enter();
    Some(f(&h.inner))
}

/// State shared by the runtime, its handles, its drivers and its tasks.
pub(crate) struct RtInner {
    pub(crate) id: u32,
    pub(crate) tokio: tokio::runtime::Handle,
    /// Tokio's metrics, made once: a lingering driver reads its shared queue's depth
    /// (`Handle::metrics` clones the handle, a count every worker would update).
    pub(crate) tokio_metrics: tokio::runtime::RuntimeMetrics,
    /// The task polls of its Tokio pool's threads, for the nudger.
    pub(crate) poll_marks: Arc<nudge::PollMarks>,
    pub(crate) devices: Box<[DeviceState]>,
    pub(crate) gpus: usize,
    /// Why the runtime has no GPU, when it has none (said with a GPU placement's error).
    pub(crate) no_gpu_why: &'static str,
    pub(crate) inject: Injector<TaskPtr>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) policy: Box<dyn MappingPolicy>,
    /// Placeholders made (forward references), for the stall resolver: it fails those
    /// still waited on when nothing can spawn them any more (even once their space is
    /// dropped). In [`FORWARD_SHARDS`] lists, each placeholder in the one its space and its
    /// key's block pick, so that threads spawning with forward references at once rarely
    /// take the same lock.
    forward: Box<[CachePadded<Mutex<VecDeque<TaskPtr>>>]>,
    /// Held (write) by the stall resolver while it acts, and (read) by threads entering the
    /// runtime from outside while they take their busy token: the resolver never acts on
    /// a stall that a thread entering meanwhile ends.
    pub(crate) gate: parking_lot::RwLock<()>,
    /// The runtime's own subscriber (a trace file or a profile was asked for).
    #[cfg(feature = "tracing")]
    pub(crate) trace: Option<crate::trace::RtTrace>,
    pub(crate) bridge: bridge::Bridge,
    pub(crate) pollers: parked::Pollers,
    /// The poller of a `block_on` call that returned, for the next call to reuse (see
    /// [`main_poller`](Self::main_poller)).
    spare_main: SpareMain,
    /// Where wakers schedule this runtime's tasks.
    pub(crate) waking: Arc<Waking>,
    pub(crate) cpu_threads: usize,
    /// The cores this process may run on (see `driver`: a driver lingering for CPU work
    /// where the workers fill them gives its core to a woken `block_on` thread).
    pub(crate) cores: usize,
    /// Polls going on that let go of their thread (see `RtInner::release_held`): each may
    /// block its thread until another task ran, so the runtime's drop does not wait for
    /// their threads before it cancels what is left (the task they wait for, among it).
    pub(crate) let_go_polls: AtomicUsize,
    pub(crate) shutdown: AtomicBool,
    /// Where data objects report the bytes they free on devices.
    pub(crate) ledger: crate::data::Ledger,
    /// Finished tasks handed back by the drivers, for spawns outside them to free.
    pub(crate) spent: CachePadded<SpentPool>,
    /// How many times a driver lingered and found nothing (see `Driver::linger`).
    #[cfg(all(test, not(parla_loom)))]
    pub(crate) futile_lingers: AtomicUsize,
    /// How many aborts looked for their task in the devices' lanes (`abort_waiting`).
    #[cfg(all(test, not(parla_loom)))]
    pub(crate) abort_lookups: AtomicUsize,
    /// How many drivers were made.
    #[cfg(all(test, not(parla_loom)))]
    pub(crate) drivers_made: AtomicUsize,
    /// How many times a task woken by a CPU task's poll checked whether its VCUs fit back
    /// (see `context::skip_fit_check`).
    #[cfg(all(test, not(parla_loom)))]
    pub(crate) fit_checks: AtomicUsize,
    /// How many times a driver yielded because Tokio's budget ran out in a task's poll.
    #[cfg(all(test, not(parla_loom)))]
    pub(crate) coop_yields: AtomicUsize,
}

/// Finished tasks spawned outside drivers, whose last reference a driver held: freed by the
/// next spawn outside drivers instead (see [`RtInner::retire`]). On a cache line of its
/// own: drivers write it every few tasks, and the fields around it (the runtime's id, its
/// Tokio handle) are read by every spawn.
pub(crate) struct SpentPool {
    /// At most [`SPENT`]; drivers add them in batches.
    pub(crate) tasks: parking_lot::Mutex<Vec<TaskPtr>>,
    /// The length of [`tasks`](Self::tasks), stored under its lock: a spawn that finds it
    /// zero does not take the lock, and drivers that find it full free their tasks.
    pub(crate) len: AtomicUsize,
}

/// How many finished tasks [`RtInner::spent`] holds at most (small tasks spawned outside
/// the drivers: at most 1,008 bytes each, `RECYCLE_BYTES` in `task::spawn`).
///
/// Enough for a batch: a program that spawns thousands of tasks from `block_on` faster than
/// the workers finish them (tasks that do real work, or more tasks than the device admits
/// at once), waits for them, and spawns the next batch, writes the next batch into the
/// memory of the last one. With room for a few hundred only, the rest of each batch was
/// freed by the workers (each free of memory the spawning thread allocated goes through
/// glibc's slow path, under the lock of that thread's arena) and allocated again by the
/// next spawns. The pool's vector grows as tasks come back: a runtime whose spawns never
/// come from outside the drivers keeps nothing in it.
const SPENT: usize = 4096;

/// How many finished tasks a driver gathers before it adds them to [`RtInner::spent`] (and
/// what it gathered so far, whenever it runs out of work or yields).
const SPENT_BATCH: usize = 16;

/// How many lists the registry of forward references ([`RtInner::forward`]) has.
pub(crate) const FORWARD_SHARDS: usize = 16;

/// What a pass over a list of the registry let go of ([`retain_forward`]), for the caller
/// to drop once it unlocked the registry (and the shard of a space it holds, if any).
#[must_use]
#[derive(Default)]
pub(crate) struct Released {
    /// Entries the registry let go of.
    gone: Vec<TaskPtr>,
    /// Placeholders of ids never spawned that nothing waits on any more, their dependents
    /// having finished (aborted, or failed by another dependency): they leave their
    /// spaces (see [`crate::space::release_placeholder`]), and the registry at its next
    /// pass.
    prune: Vec<TaskPtr>,
}

impl Drop for Released {
    fn drop(&mut self) {
        self.gone.clear();
        for p in self.prune.drain(..) {
            crate::space::release_placeholder(p);
        }
    }
}

/// Keeps the placeholders (and tasks that took one over) that may still matter: unfinished,
/// and either waited on or still referred to from somewhere else than this registry.
/// Returns the others, and the placeholders whose dependents all finished, to leave their
/// spaces (see [`Released`]).
fn retain_forward(f: &mut VecDeque<TaskPtr>) -> Released {
    let mut prune = Vec::new();
    // Kept entries moved to the front in order, the ones that go behind them, then
    // drained (to be dropped once the registry's lock is let go of).
    let mut kept = 0;
    for i in 0..f.len() {
        let p = &f[i];
        let h = p.header();
        let go = h.is_done() || {
            let count = TaskArc::strong_count(p);
            if count == 2 && h.is_unspawned_id() && !h.forget_done_dependents() {
                // Held by its space's table and this registry alone, and nothing waits on
                // it: the space lets go of it (unless a lookup made another reference
                // meanwhile), and the registry at its next pass.
                prune.push(p.clone());
            }
            count == 1 && !h.has_dependents()
        };
        if !go {
            f.swap(kept, i);
            kept += 1;
        }
    }
    let gone: Vec<TaskPtr> = f.drain(kept..).collect();
    if f.capacity() > 64 && f.len() < f.capacity() / 4 {
        f.shrink_to(f.len() * 2);
    }
    Released { gone, prune }
}

/// The scheduler wakers reach: the runtime, weakly (tasks may outlive it).
struct Sched(Weak<RtInner>);

impl Sched {
    /// Runs `f` with the runtime, if it is still there: the one this thread entered when it
    /// is this one (a wake from inside a driver, the usual case), else upgraded from the
    /// weak reference. (An upgrade for every wake updates the runtime's reference count from
    /// every worker.)
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&Arc<RtInner>) -> R) -> Option<R> {
        context::with_entered_rt(|cur| match cur {
            Some(rt) if std::ptr::eq(Arc::as_ptr(rt), self.0.as_ptr()) => Some(f(rt)),
            _ => self.0.upgrade().map(|rt| f(&rt)),
        })
    }
}

impl Schedule for Sched {
    fn woken(&self, task: TaskPtr, took_token: bool) {
        self.with(|rt| rt.schedule_woken(task, took_token));
    }

    fn tokens(&self, delta: i64) {
        self.with(|rt| rt.counters.add(0, delta));
    }
}

impl RtInner {
    /// The registry's list for placeholders of hash `hash` (a key's block hash with its
    /// space mixed in: `TaskSpace::registry_hash`).
    #[inline]
    fn forward_of(&self, hash: u64) -> &Mutex<VecDeque<TaskPtr>> {
        // The bits a space picks its shard with, so that the threads a space's shards keep
        // apart rarely meet here either.
        &self.forward[(hash >> 32) as usize % FORWARD_SHARDS]
    }

    /// Records a placeholder (a forward reference) for the stall resolver, of hash `hash`
    /// (see [`forward_of`](Self::forward_of)). Called with the placeholder's shard locked
    /// (the registry's locks are taken inside a shard's, never the other way round), it
    /// returns the entries it let go of, for the caller to drop once the shard is
    /// unlocked.
    pub(crate) fn register_forward(&self, p: &TaskPtr, hash: u64) -> Released {
        self.push_forward(&mut self.forward_of(hash).lock(), p)
    }

    /// Adds `p` to the registry's list `f`, passing over it first at each power of two
    /// from 4 (a list keeps at most about as many entries nothing needs as it has
    /// entries that matter, or 3: about 50 over the lists). Returns the entries that pass
    /// let go of.
    fn push_forward(&self, f: &mut VecDeque<TaskPtr>, p: &TaskPtr) -> Released {
        let gone = if f.len() >= 4 && f.len().is_power_of_two() {
            retain_forward(f)
        } else {
            Released::default()
        };
        f.push_back(p.clone());
        self.counters.forward_entries_changed(1, gone.gone.len());
        gone
    }

    /// Task `task` took placeholder `p` (registered with hash `hash`) over
    /// ([`take_over`](crate::graph::take_over)): it stands in `p`'s place in the registry,
    /// a root of the cycles that went through `p` (`p`'s dependents wait for it now). `p`
    /// is looked for among the last entries of its list (a forward reference met soon
    /// after it was made: a chain spawned from its end); otherwise `task` is added, and
    /// `p`, finished, goes at the next pass over the list.
    pub(crate) fn forward_taken_over(&self, p: TaskPtr, task: &TaskPtr, hash: u64) {
        /// How many of the last entries are looked at.
        const LOOK: usize = 8;
        let mut f = self.forward_of(hash).lock();
        let from = f.len().saturating_sub(LOOK);
        let (old, gone) = match f.range(from..).rposition(|q| TaskArc::ptr_eq(q, &p)) {
            Some(i) => (
                Some(std::mem::replace(&mut f[from + i], task.clone())),
                Released::default(),
            ),
            None => (None, self.push_forward(&mut f, task)),
        };
        drop(f);
        // (Freed outside the registry's lock.)
        drop((old, gone, p));
    }

    /// Takes out of the registry the oldest placeholder of a list whose id was never
    /// spawned and that something waits on (for the stall resolver, which fails it).
    pub(crate) fn take_unspawned_waited(&self) -> Option<TaskPtr> {
        self.forward.iter().find_map(|list| {
            let mut f = list.lock();
            let i = f.iter().position(|p| {
                let h = p.header();
                h.is_unspawned_id() && h.has_dependents()
            })?;
            // (`remove`, not `swap_remove`: the list stays oldest first. Mostly the first
            // entry, taken in constant time: ids never spawned, failed one per step, took
            // a shift of the whole list each, quadratic in their count.)
            let p = f.remove(i);
            self.counters.forward_entries_changed(0, 1);
            p
        })
    }

    /// The unfinished placeholders (and tasks that took one over): each list of the
    /// registry in turn, oldest first in each.
    pub(crate) fn forward_refs(&self) -> Vec<TaskPtr> {
        let mut refs = Vec::new();
        for list in self.forward.iter() {
            let mut f = list.lock();
            let gone = retain_forward(&mut f);
            self.counters.forward_entries_changed(0, gone.gone.len());
            refs.extend(f.iter().cloned());
            drop(f);
            drop(gone);
        }
        refs
    }

    /// Runs `f` with the runtime's own subscriber as the default, if it has one (its
    /// tasks' spans and events go there); else with whatever subscriber is current.
    #[cfg(feature = "tracing")]
    #[inline]
    pub(crate) fn in_trace<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.trace {
            Some(t) => tracing::dispatcher::with_default(&t.dispatch, f),
            None => f(),
        }
    }

    /// Traces the device, VCUs and memory the task with header `h` was given: recorded on
    /// its span (which shows them from now on), and the `mapped` step.
    #[inline(always)]
    pub(crate) fn trace_mapped(&self, h: &Header, device: Device, vcu: u32, mem: u64) {
        #[cfg(feature = "tracing")]
        if let Some(t) = h.trace.as_deref() {
            crate::trace::cold(|| {
                let vcu = crate::device::vcu_float(vcu);
                // (A span records through its own subscriber.)
                t.span.record("device", tracing::field::display(device));
                t.span.record("vcu", vcu);
                t.span.record("mem.bytes", mem);
                crate::trace::step!(self, h, "mapped", device = %device, vcu, mem);
            });
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (h, device, vcu, mem);
    }

    /// Traces the completion of a task that ran, with its `outcome`, before it is published:
    /// whoever the outcome wakes may drop the runtime (and close its trace) at once.
    #[inline(always)]
    pub(crate) fn trace_outcome(&self, h: &Header, outcome: &Outcome) {
        #[cfg(feature = "tracing")]
        if h.trace.is_some() {
            crate::trace::cold(|| match outcome {
                Err(e) => crate::trace::step!(self, h, "completed", error = %e),
                Ok(()) => crate::trace::step!(self, h, "completed"),
            });
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (h, outcome);
    }

    /// Traces when a finished GPU task's work ran on the device, if its fence was timed.
    #[inline(always)]
    pub(crate) fn trace_gpu(&self, h: &Header) {
        #[cfg(feature = "tracing")]
        if h.trace.is_some() {
            crate::trace::cold(|| {
                if let Some(f) = h.recorded_fence()
                    && let Some((gpu_start, gpu_end)) = f.times()
                {
                    let stream = f.queue().unwrap_or(0);
                    crate::trace::step!(self, h, "gpu_finished", gpu_start, gpu_end, stream);
                }
            });
        }
        #[cfg(not(feature = "tracing"))]
        let _ = h;
    }

    /// After a spawn through a [`Handle`]: if the runtime was dropped, the spawned task is
    /// cancelled (with whatever else its drop left), as the drop cancels every task it
    /// finds. The drop sets `shutdown` before it looks; the spawn looks after its task is
    /// in the graph, past a fence: one of the two sees the task.
    pub(crate) fn cancel_if_shut_down(self: &Arc<Self>) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.shutdown.load(Ordering::SeqCst) {
            stall::cancel_all(self);
        }
    }

    /// A poller for a `block_on` call: the one a call that returned left (see
    /// [`keep_main`](Self::keep_main)) when nothing refers to it any more (no waker of it
    /// is left anywhere), else a new one, registered with the pollers. (Reused, a call
    /// makes no allocation, frees none, and leaves the pollers' list alone: about 300
    /// instructions of an empty `block_on`'s 1,350.)
    fn main_poller(&self) -> Arc<MainPoller> {
        if let Some(m) = self.spare_main.take()
            && Arc::strong_count(&m) == 1
        {
            m.act.restart();
            return m;
        }
        let m = MainPoller::new(self.counters.clone(), self.id);
        self.pollers.add_main(&m);
        m
    }

    /// Keeps the poller of a `block_on` call that returned (its future finished and its
    /// token given back) for the next call.
    fn keep_main(&self, m: Arc<MainPoller>) {
        drop(self.spare_main.put(m));
    }

    /// Takes a busy token for a thread entering from outside (a new `block_on`, a `hold`
    /// guard), never while the stall resolver acts.
    pub(crate) fn enter_token(&self) {
        let _gate = self.gate.read();
        self.counters.add(0, 1);
    }

    /// Tokio tasks alive that are not the runtime's own, and the threads of Tokio's pool
    /// beyond its workers (see [`Counters::foreign_tasks`]).
    pub(crate) fn foreign_tasks(&self) -> usize {
        self.counters.foreign_tasks()
    }
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
///
/// # Dropping
///
/// Dropping the runtime stops its worker threads; the tasks that have not finished are
/// dropped with them. Where no Tokio runtime is current, the drop waits for the threads to
/// end. Where one is (a runtime used from a Tokio application through its [`Handle`], and
/// dropped in an `async fn`; a runtime dropped in a task), it tells them to stop and
/// returns at once, where a blocking wait would stall the thread that drives that context.
///
/// ```
/// use parla_core::{Runtime, task};
/// # let app = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # app.block_on(async {
/// // In a Tokio application:
/// let rt = Runtime::builder().cpu_threads(2).build()?;
/// let v = rt.handle().spawn(task(async { 6 * 7 })).await?;
/// assert_eq!(v, 42);
/// drop(rt);
/// # Ok::<_, parla_core::Error>(()) }).unwrap();
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
    pub fn new() -> crate::Result<Runtime> {
        Builder::default().build()
    }

    /// A handle to the runtime: spawn tasks from any thread, or hold stall detection off.
    pub fn handle(&self) -> Handle {
        Handle {
            inner: self.inner.clone(),
        }
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

    /// A description of each device: `cpu:0: host CPU (4 slots, 24.0 GiB budget)`.
    pub fn describe_devices(&self) -> Vec<String> {
        self.inner
            .devices
            .iter()
            .map(|d| {
                format!(
                    "{}: {} ({} slots, {} budget)",
                    d.device,
                    d.name,
                    d.slots,
                    bytes_text(d.admission.mem_capacity())
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

    /// What is reserved on device `d` now (VCUs, bytes: task workspaces and the copies of
    /// data objects there) and how many tasks wait for it; `None` for a device the runtime
    /// does not have.
    pub fn usage(&self, d: Device) -> Option<crate::device::Usage> {
        self.inner
            .devices
            .iter()
            .find(|s| s.device == d)
            .map(DeviceState::usage)
    }

    /// The profile so far (see [`Builder::profile`] and [`Builder::trace`]), or `None`
    /// when the runtime has no subscriber of its own.
    #[cfg(feature = "tracing")]
    pub fn profile_summary(&self) -> Option<crate::trace::Summary> {
        let t = self.inner.trace.as_ref()?;
        t.guard.lock().as_ref().map(|g| g.summary())
    }

    /// Worker threads.
    pub fn cpu_threads(&self) -> usize {
        self.inner.cpu_threads
    }

    /// Runs `fut` on this thread with the runtime current, and returns its output once it
    /// and every task of the runtime finished (those spawned by other threads included).
    /// `fut` is a future or anything that turns into one, a task builder included
    /// (`rt.block_on(task(async { .. }))`). A task must not wait for a thread calling this
    /// on its own runtime: the call would wait for the task.
    ///
    /// Tasks still waiting when nothing else can run (on an id never spawned, in a
    /// dependency cycle) are failed with [`TaskError::NeverSpawned`](crate::TaskError) or
    /// [`TaskError::Cycle`](crate::TaskError), so this never hangs on them.
    ///
    /// # Panics
    /// If called from inside a task or another `block_on` (as Tokio's `block_on`), or from a
    /// thread of this runtime's own pool: a `spawn_blocking` closure, or `block_in_place`
    /// inside one of its tasks (the call would wait for every task, the one waiting for the
    /// call too; spawn the work as a task and await it instead). Inside another
    /// `block_on`'s future through Tokio's `block_in_place` (on that thread, not a pool
    /// thread), it runs, as Tokio's does, and returns once every task finished, those the
    /// outer future spawned included. A panic of `fut` itself propagates to the caller,
    /// and the runtime stays usable.
    #[track_caller]
    pub fn block_on<F: IntoFuture>(&self, fut: F) -> F::Output {
        self.block_on_main(fut, |_| false)
    }

    /// [`block_on`](Self::block_on), returning as soon as the future finished if `early`
    /// says so of its output, without waiting for the tasks still running (for
    /// `#[parla::main]`: a `main` that returned an error reports it at once, and dropping
    /// the runtime cancels the rest, as `#[tokio::main]` does).
    #[doc(hidden)]
    #[track_caller]
    pub fn block_on_main<F: IntoFuture>(
        &self,
        fut: F,
        early: impl Fn(&F::Output) -> bool,
    ) -> F::Output {
        let inner = &self.inner;
        if context::on_pool_of(inner) {
            own_pool_block_on();
        }
        // Called in a task's poll (inside `block_in_place`): the thread is blocked until the
        // future is done, so what its driver holds for after the poll goes to the other
        // drivers now, as for a spawn through a `Handle` (the future runs outside the task,
        // and a task it spawns into that runtime would wait for the poll to end).
        context::with_entered_rt(|rt| {
            if let Some(rt) = rt {
                rt.release_held_here();
            }
        });
        // Called inside another `block_on`'s poll on this thread (through Tokio's
        // `block_in_place`): the live counts that poll took ahead for its spawns go back
        // first, or this call, which waits for the live count's zero, would wait for them
        // for good.
        context::flush_credits();
        let _rt = context::enter_rt(inner);
        let main = inner.main_poller();
        inner.enter_token();
        // Gives the future's token back however this returns (a panic of the future too).
        let token = MainToken(&main, &inner.counters);
        let waker = main.poll_waker();
        // A task builder spawns as it turns into a future: with the runtime current and
        // this thread counted as waiting on it.
        let mut fut = pin!(fut.into_future());
        let mut out = None;
        let mut done_early = false;
        // Time spent polling fences since the future was last polled (see below).
        let mut spun = std::time::Duration::ZERO;
        let driver = std::future::poll_fn(|cx: &mut Context<'_>| {
            loop {
                main.thread.register(cx.waker());
                main.running();
                if out.is_none() && main.act.is_notified() {
                    spun = std::time::Duration::ZERO;
                    main.act.begin_poll();
                    context::take_blocked();
                    let polled = {
                        let _p = context::enter_poller(main.poller());
                        fut.as_mut().poll(&mut Context::from_waker(&waker))
                    };
                    main.act.take_await_failure();
                    context::flush_credits();
                    crate::space::flush_spare_refs();
                    match polled {
                        Poll::Ready(v) => {
                            done_early = early(&v);
                            out = Some(v);
                            // (Drops the task an await inside it noted, if any.)
                            context::take_blocked();
                            if main.act.finish() {
                                inner.counters.add(0, -1);
                            }
                        }
                        Poll::Pending => match main.act.end_poll(context::take_blocked()) {
                            EndPoll::Parked => inner.counters.add(0, -1),
                            EndPoll::Idle => {}
                            // Woken during its poll (a yield, or Tokio's cooperative budget
                            // running out): poll again from Tokio, with a fresh budget.
                            EndPoll::Notified => {
                                cx.waker().wake_by_ref();
                                return Poll::Pending;
                            }
                        },
                    }
                }
                if out.is_some() {
                    if done_early || inner.counters.load().0 == 0 {
                        return Poll::Ready(());
                    }
                    // Tasks are left: woken when the live count reaches zero, unless it
                    // did meanwhile. (Registered only then: a call whose tasks were all
                    // done when its future was took the list's lock, and the zero's wake
                    // of this very thread, for nothing.)
                    if inner.counters.live_done_or_monitor(cx.waker()) {
                        return Poll::Ready(());
                    }
                }
                // GPU work in flight and nothing else to do: poll its fences here for a
                // moment before sleeping, so a short kernel's completion is seen without a
                // hop through the poller thread and a wake-up of this one. While the future
                // waits, for a moment in all however many fences finish meanwhile: queries
                // contend with the launches of the tasks still running (a long chain of GPU
                // tasks would otherwise be polled from here until its end), and what the
                // future awaits wakes it. Once it is done, this thread only waits for the
                // tasks left, which nothing else may be watching closely: it polls on while
                // fences finish.
                let budget = match out {
                    None => bridge::AWAIT_SPIN.saturating_sub(spun),
                    Some(_) => bridge::AWAIT_SPIN,
                };
                if inner.bridge.is_busy() && !main.act.is_notified() && !budget.is_zero() {
                    let start = std::time::Instant::now();
                    let finished = bridge::spin_fences(inner, budget);
                    spun += start.elapsed();
                    if finished {
                        continue;
                    }
                }
                return Poll::Pending;
            }
        });
        match &self.tokio {
            // (Through the handle: on a multi-thread runtime the same as the runtime's own
            // `block_on`, less a second entry of its context, about 14 ns a call.)
            Some(t) => t.handle().block_on(driver),
            None => unreachable_runtime(),
        }
        drop(token);
        inner.keep_main(main);
        match out {
            Some(v) => v,
            None => unreachable_runtime(),
        }
    }
}

/// A slot for one `Arc<MainPoller>`, taken and put by swaps (no lock: an empty
/// `block_on` takes and puts one each call).
pub(crate) struct SpareMain(std::sync::atomic::AtomicPtr<MainPoller>);

impl SpareMain {
    pub(crate) fn new() -> Self {
        SpareMain(std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()))
    }

    /// The poller in the slot, if any, taken out.
    #[inline]
    fn take(&self) -> Option<Arc<MainPoller>> {
        let p = self.0.swap(std::ptr::null_mut(), Ordering::Acquire);
        // SAFETY: a non-null pointer in the slot is a reference made by `Arc::into_raw` (in
        // `put`) that the slot owned; the swap took it out, so it is owned here, once.
        (!p.is_null()).then(|| unsafe { Arc::from_raw(p) })
    }

    /// Puts `m` in the slot; returns what was there.
    #[inline]
    fn put(&self, m: Arc<MainPoller>) -> Option<Arc<MainPoller>> {
        let old = self.0.swap(Arc::into_raw(m).cast_mut(), Ordering::AcqRel);
        // SAFETY: as in `take`: the slot's reference, swapped out, is owned here, once.
        (!old.is_null()).then(|| unsafe { Arc::from_raw(old) })
    }
}

impl Drop for SpareMain {
    fn drop(&mut self) {
        drop(self.take());
    }
}

/// The busy token of a `block_on` future, given back if the future did not finish (it
/// panicked).
struct MainToken<'a>(&'a Arc<MainPoller>, &'a Counters);

impl Drop for MainToken<'_> {
    fn drop(&mut self) {
        if self.0.act.finish() {
            self.1.add(0, -1);
        }
        // (After `finish`: a wake no longer schedules the thread, so none is left counted
        // as woken.)
        self.0.running();
    }
}

/// `block_on` called on a thread of the runtime's own pool.
#[cold]
#[inline(never)]
#[track_caller]
fn own_pool_block_on() -> ! {
    panic!(
        "parla: `Runtime::block_on` called from a thread of the same runtime (inside one of its \
         tasks, `block_in_place`, or a `spawn_blocking` closure): it waits for every task of \
         the runtime, the one waiting for this call too. Spawn the work as a task and await it."
    )
}

#[cold]
fn unreachable_runtime() -> ! {
    // The Tokio runtime is only taken in `Drop`, and `block_on` only returns after its
    // future produced a value: reaching this is a bug in the runtime itself.
    std::process::abort()
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let inner = &self.inner;
        inner.shutdown.store(true, Ordering::SeqCst);
        // (Paired with the fence of `cancel_if_shut_down`.)
        std::sync::atomic::fence(Ordering::SeqCst);
        inner.bridge.shutdown();
        if let Some(t) = self.tokio.take() {
            // The workers are told to stop and finish on their own, without a wait for
            // their threads:
            // - where a Tokio runtime is current on this thread: mostly an asynchronous
            //   context (a Tokio application's `async fn`, a task of this or another
            //   runtime), where waiting would block the thread that drives it, and Tokio
            //   refuses that with a panic. Tokio tells no such context from a thread that
            //   only entered a runtime through its guard, so there too;
            // - while a poll that let go of its thread is under way: it may block the
            //   thread until a task ran (one it spawned and waits for in
            //   `tokio::task::block_in_place`), which no driver runs any more, so the wait
            //   would never end. The cancellation below resolves what it waits for.
            if tokio::runtime::Handle::try_current().is_ok()
                || inner.let_go_polls.load(Ordering::SeqCst) > 0
            {
                t.shutdown_background();
            } else {
                drop(t);
            }
        }
        stall::cancel_all(inner);
        inner.evict_all();
        ALIVE.lock().retain(|e| e.0 != inner.id);
        #[cfg(feature = "tracing")]
        if let Some(t) = &inner.trace {
            // Closes the file and prints the summary, if asked to.
            drop(t.guard.lock().take());
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

/// A handle to a [`Runtime`]: cheap to clone, `Send + Sync`, usable from any thread.
///
/// Spawn tasks from threads that are not the runtime's ([`spawn`](Handle::spawn), or
/// [`enter`](Handle::enter) to make `task(..).spawn()` work on this thread), and tell stall
/// detection that a thread may still spawn tasks others wait for ([`hold`](Handle::hold)).
///
/// ```
/// use parla_core::{Runtime, TaskSpace, task};
/// let rt = Runtime::builder().cpu_threads(2).build()?;
/// let h = rt.handle();
/// let t = TaskSpace::new("T");
/// let r = rt.block_on(async {
///     let hold = h.hold(); // the thread below will spawn T[0]: wait for it
///     let (h2, t2) = (h.clone(), t.clone());
///     std::thread::spawn(move || {
///         std::thread::sleep(std::time::Duration::from_millis(10));
///         h2.spawn(task(async { 7 }).id(t2.at(0)));
///         drop(hold);
///     });
///     t.at(0).await
/// });
/// assert!(r.is_ok());
/// # Ok::<_, parla_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Handle {
    inner: Arc<RtInner>,
}

impl Handle {
    /// The handle of the runtime this code runs in: inside a task, inside
    /// [`Runtime::block_on`] (and so in the body of a `#[parla::main]` function), in a
    /// Tokio task or a `spawn_blocking` closure started there, or while an
    /// [`EnterGuard`] lives. `None` anywhere else, such as a thread the program started
    /// itself: take the handle before starting it, and move it in.
    ///
    /// ```
    /// use parla_core::{Handle, Runtime, TaskSpace, task};
    /// assert!(Handle::current().is_none());
    /// let rt = Runtime::builder().cpu_threads(2).build()?;
    /// let t = TaskSpace::new("T");
    /// let r = rt.block_on(async {
    ///     // As in `#[parla::main]`, where the runtime itself is out of reach.
    ///     let h = Handle::current().expect("inside block_on");
    ///     let hold = h.hold(); // the thread below spawns T[0]: wait for it
    ///     let t2 = t.clone();
    ///     std::thread::spawn(move || {
    ///         assert!(Handle::current().is_none()); // a thread of the program's own
    ///         h.spawn(task(async { 7 }).id(t2.at(0)));
    ///         drop(hold);
    ///     });
    ///     t.at(0).await
    /// });
    /// assert!(r.is_ok());
    /// # Ok::<_, parla_core::Error>(())
    /// ```
    pub fn current() -> Option<Handle> {
        context::with_rt(|rt| rt.map(|rt| Handle { inner: rt.clone() }))
    }

    /// Spawns a task on the runtime from any thread. See
    /// [`TaskBuilder::spawn`](crate::TaskBuilder::spawn).
    ///
    /// A handle outlives its runtime: a task spawned through it once the runtime was
    /// dropped resolves to [`TaskError::Cancelled`](crate::TaskError::Cancelled) at once,
    /// as the tasks the drop found did (so does one spawned while an [`EnterGuard`] lives).
    pub fn spawn<F>(&self, b: crate::TaskBuilder<F>) -> crate::TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let _hold = self.hold();
        let _rt = context::enter_rt(&self.inner);
        let task = b.spawn();
        // Spawned from inside a task's poll, the task (or the one it displaced) would wait
        // on this thread until that poll ends: code that spawns through a handle is
        // blocking code, mostly (inside `tokio::task::block_in_place`), which may wait for it
        // before the poll ends.
        self.inner.release_held_here();
        self.inner.cancel_if_shut_down();
        task
    }

    /// Makes the runtime current on this thread until the guard drops, so that
    /// `task(..).spawn()` spawns on it. The guard also [holds](Handle::hold) stall
    /// detection off: this thread may spawn what others wait for.
    ///
    /// Guards nest: the innermost one still alive gives the runtime, whatever order they
    /// are dropped in. A guard keeps what it needs of the runtime itself, so it may outlive
    /// the handle it came from (`let g = rt.handle().enter(); .. drop(g);`). It stays on
    /// the thread that made it (it is not `Send`).
    ///
    /// ```
    /// use parla_core::{Runtime, task};
    /// let rt = Runtime::builder().cpu_threads(1).build()?;
    /// let handle = std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         let _guard = rt.handle().enter();
    ///         task(async { 6 * 7 }).spawn()
    ///     })
    ///     .join()
    ///     .unwrap()
    /// });
    /// assert_eq!(rt.block_on(handle)?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn enter(&self) -> EnterGuard {
        EnterGuard {
            _hold: self.hold(),
            _rt: context::enter_handle(&self.inner),
        }
    }

    /// While the guard lives, the runtime never considers itself stalled: this thread may
    /// still spawn tasks (or ids) that others wait for, so nothing is failed as never
    /// spawned or deadlocked meanwhile.
    pub fn hold(&self) -> Hold {
        self.inner.enter_token();
        Hold {
            inner: self.inner.clone(),
        }
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("runtime", &self.inner.id)
            .finish()
    }
}

/// The guard of [`Handle::enter`].
pub struct EnterGuard {
    _rt: context::HandleGuard,
    _hold: Hold,
}

impl std::fmt::Debug for EnterGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnterGuard")
    }
}

/// The guard of [`Handle::hold`]: stall detection waits while it lives.
pub struct Hold {
    inner: Arc<RtInner>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.inner.counters.add(0, -1);
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// A byte count for people: `24.0 GiB`, `1.0 MiB`, `512 KiB`, `100 bytes`.
fn bytes_text(b: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match UNITS.iter().find(|(size, _)| b >= *size) {
        Some((size, unit)) => format!("{:.1} {unit}", b as f64 / *size as f64),
        None => format!("{b} bytes"),
    }
}

#[cfg(all(test, not(parla_loom)))]
mod bytes_test {
    /// Budgets print in the largest unit they reach (a 1 MiB budget printed as `0.0 GiB`).
    #[test]
    fn byte_counts_print_in_the_largest_unit_they_reach() {
        assert_eq!(super::bytes_text(24 << 30), "24.0 GiB");
        assert_eq!(super::bytes_text(1 << 20), "1.0 MiB");
        assert_eq!(super::bytes_text(1536), "1.5 KiB");
        assert_eq!(super::bytes_text(100), "100 bytes");
    }
}

#[cfg(all(test, not(parla_loom)))]
mod main_poller_test {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// The poller of a `block_on` call that returned is reused by the next call, unless a
    /// waker of it is still held somewhere: a waker a future kept past its call, woken
    /// during a later call, then wakes the finished poller it belongs to, and the later
    /// call (whose future waits on a channel) goes on as if nothing happened.
    #[test]
    fn a_block_on_poller_is_reused_unless_a_waker_of_it_is_left() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        let poller = |rt: &Runtime| {
            let m = rt.inner.spare_main.take().expect("a poller kept");
            let p = Arc::as_ptr(&m);
            drop(rt.inner.spare_main.put(m));
            p
        };
        rt.block_on(async {});
        let first = poller(&rt);
        for _ in 0..10 {
            rt.block_on(async { crate::task(async {}).await.unwrap() });
            assert_eq!(poller(&rt), first, "the poller was not reused");
        }
        // A waker kept past its call.
        let kept: Arc<StdMutex<Option<std::task::Waker>>> = Arc::default();
        let k = kept.clone();
        rt.block_on(std::future::poll_fn(move |cx| {
            *k.lock().unwrap() = Some(cx.waker().clone());
            std::task::Poll::Ready(())
        }));
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let v = rt.block_on(async {
            kept.lock().unwrap().take().expect("kept").wake();
            let h = crate::task(async move { rx.await.unwrap() + 1 }).spawn();
            tokio::task::yield_now().await;
            tx.send(41).unwrap();
            h.await.unwrap()
        });
        assert_eq!(v, 42);
        assert_ne!(poller(&rt), first, "a poller with a waker left was reused");
    }
}
