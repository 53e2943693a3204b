//! The event-to-waker bridge: how the host learns that GPU work finished.
//!
//! Fences are polled, never waited on: no Tokio worker blocks on the GPU, and no driver
//! callback (`cuLaunchHostFunc` measured at ~3.5x the latency of a poll here) is involved.
//! Four pollers, fastest first:
//! - whoever awaits a GPU task (its handle, its id) or synchronizes a stream spins on that
//!   one fence for up to [`AWAIT_SPIN`] before it parks, so a short kernel is seen at the
//!   latency of a query loop, with no thread hop. Off the drivers (`block_on`), an awaiter
//!   of a GPU task whose dependencies are met but whose body has not returned spins until
//!   the fence is recorded, within the same budget. While an awaiter spins on a task's fence, the other
//!   pollers leave that fence alone: several threads querying one event slow each query;
//! - a driver that ran GPU tasks and is out of work lingers for up to [`AWAIT_SPIN`]: it
//!   polls the watched fences and takes new work at once (a parent woken by its child's
//!   fence runs on it, with no thread hop);
//! - otherwise the fence goes to the runtime's poller thread (from a driver running GPU
//!   tasks nobody waits on, several at once: see [`Driver`](super::driver::Driver)'s
//!   invariants). It polls in rounds, querying
//!   only the oldest pending fence of each stream (a stream's fences finish in order; when
//!   the oldest is done, it bisects for the first pending one instead of querying each), and
//!   paces itself: a short pause while somebody waits on a watched fence (an awaiter, a CPU
//!   dependent, tasks queued for the device), otherwise a pause doubling up to a cap.
//!   Queries contend with kernel launches inside the CUDA driver, so a poller that spins
//!   hard slows the very work it watches; latency-sensitive waits spin on their own fence
//!   instead (above). With nothing to watch, the thread sleeps until a fence arrives;
//! - whichever poller sees a task's fence done first completes the task (the task's state
//!   moves FENCED -> COMPLETING once, so only one of them does).

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::thread::{JoinHandle, Thread};

use atomic_waker::AtomicWaker;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::RtInner;
use crate::device::backend::{Fence, FenceStatus};
use crate::graph::arc::TaskPtr;

/// How many awaiters spin on a task's fence now ([`spin_fenced`]), in every runtime. A
/// hint: a poller that misses one queries a fence an awaiter also queries, which costs time,
/// not correctness (only one of them completes the task).
static SPUN_TASKS: AtomicUsize = AtomicUsize::new(0);

/// How long an awaiter spins on a fence before it parks (and how long a driver that ran GPU
/// tasks lingers for more work when it runs out).
pub const AWAIT_SPIN: Duration = Duration::from_micros(50);

/// Something waiting for a fence.
pub(crate) enum Watch {
    /// A GPU task whose body returned: complete it. `urgent`: something waits on its
    /// completion (a CPU dependent, tasks queued for its device's resources).
    Task(TaskPtr, Arc<dyn Fence>, bool),
    /// A future waiting on a fence: wake it. Always urgent.
    Waker(Arc<dyn Fence>, Arc<AtomicWaker>),
}

impl Watch {
    fn fence(&self) -> &Arc<dyn Fence> {
        match self {
            Watch::Task(_, f, _) | Watch::Waker(f, _) => f,
        }
    }

    /// The status of the watched fence. A watched task completed already (by an awaiter
    /// that saw its fence done) needs no query: its fence is known to be done.
    fn status(&self) -> FenceStatus {
        if matches!(self, Watch::Task(t, _, _) if !t.header().is_fenced()) {
            self.fence().mark_done();
            return FenceStatus::Done;
        }
        status(self.fence())
    }

    /// Whether an awaiter spins on the watched task's fence. (Read only while some awaiter
    /// spins: a poller round would otherwise read the header of every pending task, whose
    /// lines the drivers running the next tasks are writing.)
    fn spun(&self) -> bool {
        SPUN_TASKS.load(Ordering::Relaxed) > 0
            && matches!(self, Watch::Task(t, _, _) if t.header().is_spun())
    }

    fn urgent(&self) -> bool {
        match self {
            Watch::Task(_, _, u) => *u,
            Watch::Waker(..) => true,
        }
    }
}

/// Watched fences: per in-order queue (oldest first), and those without a queue.
#[derive(Default)]
struct Entries {
    queues: rustc_hash::FxHashMap<u64, VecDeque<Watch>>,
    loose: Vec<Watch>,
}

impl Entries {
    fn push(&mut self, w: Watch) {
        let Some(q) = w.fence().queue() else {
            self.loose.push(w);
            return;
        };
        insert_in_place(self.queues.entry(q).or_default(), w);
    }

    fn is_empty(&self) -> bool {
        self.loose.is_empty() && self.queues.values().all(VecDeque::is_empty)
    }

    /// Moves the watches of `newer` (watched after everything in `self`) into `self`, behind
    /// those of their queue (in the order of their places: see [`push`](Self::push)),
    /// leaving `newer` empty with its capacity.
    fn merge(&mut self, newer: &mut Entries) {
        for (q, ws) in &mut newer.queues {
            if !ws.is_empty() {
                let to = self.queues.entry(*q).or_default();
                for w in ws.drain(..) {
                    insert_in_place(to, w);
                }
            }
        }
        self.loose.append(&mut newer.loose);
    }

    fn drain(self) -> impl Iterator<Item = Watch> {
        self.queues.into_values().flatten().chain(self.loose)
    }
}

/// Adds `w` to the watches of its queue, in the order of their fences' places (see
/// [`Fence::place`]; one without a place goes to the back): a queue's finished fences must
/// be a prefix of its list ([`take_finished`]). Fences come in order, mostly, so the back is
/// looked at first; an older one (an awaiter watching a fence late, behind thousands) is
/// placed by bisection.
fn insert_in_place(ws: &mut VecDeque<Watch>, w: Watch) {
    let later = |o: &Watch, p: u64| o.fence().place().is_some_and(|op| op > p);
    match w.fence().place() {
        Some(p) if ws.back().is_some_and(|b| later(b, p)) => {
            let at = ws.partition_point(|o| !later(o, p));
            ws.insert(at, w);
        }
        _ => ws.push_back(w),
    }
}

#[derive(Default)]
pub(crate) struct Bridge {
    entries: Mutex<Entries>,
    pending: AtomicUsize,
    /// Pending watches somebody waits on: the poller keeps a short pace while there are any.
    urgent: AtomicUsize,
    shutdown: AtomicBool,
    /// The poller sleeps with nothing to watch: a new fence must wake it.
    sleeping: AtomicBool,
    /// The poller thread exists.
    started: AtomicBool,
    thread: Mutex<Option<(JoinHandle<()>, Thread)>>,
}

impl Bridge {
    /// Hands `w` to the poller thread (started on first use).
    pub(crate) fn watch(rt: &Arc<RtInner>, w: Watch) {
        let b = &rt.bridge;
        if w.urgent() {
            b.urgent.fetch_add(1, Ordering::AcqRel);
        }
        let urgent = w.urgent();
        b.entries.lock().push(w);
        b.pending.fetch_add(1, Ordering::SeqCst);
        Self::wake_poller(rt, urgent);
    }

    /// Hands the watches of `ws` to the poller thread at once (one lock round and one count
    /// for all), leaving `ws` empty: a driver's deferred watches (see
    /// [`Driver`](super::driver::Driver)), none of them urgent.
    pub(crate) fn watch_all(rt: &Arc<RtInner>, ws: &mut Vec<Watch>) {
        let n = ws.len();
        if n == 0 {
            return;
        }
        debug_assert!(ws.iter().all(|w| !w.urgent()));
        let b = &rt.bridge;
        {
            let mut e = b.entries.lock();
            for w in ws.drain(..) {
                e.push(w);
            }
        }
        b.pending.fetch_add(n, Ordering::SeqCst);
        Self::wake_poller(rt, false);
    }

    /// After watches were added (`urgent`: one of them is): wakes the poller thread if it
    /// sleeps or if somebody waits, and starts it on first use.
    fn wake_poller(rt: &Arc<RtInner>, urgent: bool) {
        let b = &rt.bridge;
        // The poller paces itself while it has (or recently had) fences: wake it only from
        // its idle sleep, or for a fence somebody waits on. A wake-up is a system call when
        // the thread sleeps, on the path of every GPU task otherwise. (SeqCst with the
        // poller's flag-then-check: one of the two sees the other, and the poller's sleep is
        // bounded besides.)
        // (Read before it is swapped: the flag's line stays shared with the poller on the
        // way of every GPU task while the poller is awake.)
        let woke = b.sleeping.load(Ordering::SeqCst) && b.sleeping.swap(false, Ordering::SeqCst);
        if !woke && !urgent && b.started.load(Ordering::Acquire) {
            return;
        }
        let mut t = b.thread.lock();
        match &*t {
            Some((_, th)) => th.unpark(),
            None => {
                let rt2 = rt.clone();
                let spawned = std::thread::Builder::new()
                    .name("parla-fences".into())
                    .spawn(move || poll_loop(&rt2));
                match spawned {
                    Ok(h) => {
                        let th = h.thread().clone();
                        *t = Some((h, th));
                        b.started.store(true, Ordering::Release);
                    }
                    Err(e) => {
                        // Without a thread, fences are still seen by awaiters and by
                        // `block_on`'s idle polling; say why latency may suffer.
                        eprintln!("parla: cannot start the fence poller thread: {e}");
                    }
                }
            }
        }
    }

    /// Whether fences are being watched.
    pub(crate) fn is_busy(&self) -> bool {
        self.pending.load(Ordering::Acquire) > 0
    }

    /// Stops and joins the poller thread.
    pub(crate) fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        let t = self.thread.lock().take();
        if let Some((h, th)) = t {
            th.unpark();
            let _ = h.join();
        }
    }

    /// Takes every task still waiting on a fence (at shutdown).
    pub(crate) fn take_tasks(&self) -> Vec<TaskPtr> {
        let all = std::mem::take(&mut *self.entries.lock());
        self.pending.store(0, Ordering::Release);
        self.urgent.store(0, Ordering::Release);
        all.drain()
            .filter_map(|w| match w {
                Watch::Task(t, _, _) => Some(t),
                Watch::Waker(..) => None,
            })
            .collect()
    }

    /// Polls the watched fences once (the oldest pending one of each stream, and every
    /// fence without a stream) and acts on the finished ones. Returns how many finished.
    pub(crate) fn poll_once(rt: &Arc<RtInner>) -> usize {
        let b = &rt.bridge;
        // Poll outside the lock (queries cost a driver call each); watches added meanwhile
        // are merged back behind the ones taken. The lock gets this thread's spare lists
        // meanwhile, and the spare keeps the lists the added watches came in, emptied: a
        // stream's list keeps its capacity from round to round, where a watch used to
        // allocate one.
        let mut batch = {
            let mut e = b.entries.lock();
            if e.is_empty() {
                return 0;
            }
            std::mem::replace(&mut *e, SPARE.try_with(Cell::take).unwrap_or_default())
        };
        // (Taken, not borrowed: completing a task may poll again on this thread.)
        let mut done = DONE.try_with(Cell::take).unwrap_or_default();
        for ws in batch.queues.values_mut() {
            take_finished(ws, &mut done);
        }
        take_finished_loose(&mut batch.loose, &mut done);
        let mut newer = {
            let mut e = b.entries.lock();
            let mut newer = std::mem::replace(&mut *e, batch);
            e.merge(&mut newer);
            newer
        };
        // (The spare's lists are empty. Its queues do not pile up: a queue is one of the
        // devices' pooled streams, a fixed set.)
        newer.loose.shrink_to(64);
        // (A thread being torn down keeps nothing.)
        let _ = SPARE.try_with(|s| s.set(newer));
        let n = done.len();
        let urgent = done.iter().filter(|(w, _)| w.urgent()).count();
        b.urgent.fetch_sub(urgent, Ordering::AcqRel);
        b.pending.fetch_sub(n, Ordering::AcqRel);
        // One scratch for the round: the runtime's counters, which the drivers update too,
        // are written once for all the tasks it completes, not once each.
        rt.with_local(|l| {
            for (w, s) in done.drain(..) {
                match w {
                    Watch::Waker(_, waker) => waker.wake(),
                    Watch::Task(t, _, _) => {
                        rt.complete_fenced_in(&t, s, l);
                        // A task whose last reference this is goes back to the spawning
                        // thread to be freed, as those the drivers finish do.
                        rt.retire(t, &mut l.spent);
                    }
                }
            }
        });
        done.shrink_to(64);
        let _ = DONE.try_with(|d| d.set(done));
        n
    }
}

thread_local! {
    /// The watch lists a poller of this thread swaps in while it polls
    /// ([`Bridge::poll_once`]): empty, with their capacity.
    static SPARE: Cell<Entries> = Cell::new(Entries::default());
    /// The list of watches a poller round of this thread found finished, kept with its
    /// capacity from round to round.
    static DONE: Cell<Done> = const { Cell::new(Vec::new()) };
}

/// Watches a poller round found finished, with their status.
type Done = Vec<(Watch, FenceStatus)>;

/// Statuses of a queue's fences queried in a poller round, by position in the queue.
type Seen = smallvec::SmallVec<[(usize, FenceStatus); 8]>;

/// Moves the finished fences at the front of one queue's watches to `done`, with their
/// status. A queue's fences finish in order, so the finished ones are a prefix: it ends at
/// the first pending fence, or at one an awaiter spins on (and completes). When the first
/// is done, the prefix is found by bisection - a handful of queries for a long run of GPU
/// tasks that finished since the last round, instead of one each (queries contend with
/// kernel launches inside the driver). Fences found done that way without a query of their
/// own are told so (`Fence::mark_done`).
fn take_finished(ws: &mut VecDeque<Watch>, done: &mut Done) {
    let end = ws.iter().position(Watch::spun).unwrap_or(ws.len());
    if end == 0 {
        return;
    }
    let mut seen = Seen::new();
    let finished = bisect(ws, end, &mut seen).unwrap_or_else(|| linear(ws, end, &mut seen));
    // (The front popped at step `i` was at position `i` before the loop.)
    for i in 0..finished {
        let Some(w) = ws.pop_front() else { break };
        let s = match seen.iter().find(|(j, _)| *j == i) {
            Some((_, s)) => s.clone(),
            None => {
                w.fence().mark_done();
                FenceStatus::Done
            }
        };
        done.push((w, s));
    }
}

/// Moves the finished watches of fences without a queue (and of parked fence awaits) to
/// `done`, with their status: a query each, except those an awaiter spins on (it completes
/// them). In place, so that the list keeps its memory from round to round (a fence
/// awaited while it stays pending is in every round).
fn take_finished_loose(loose: &mut Vec<Watch>, done: &mut Done) {
    let mut i = 0;
    while i < loose.len() {
        let w = &loose[i];
        if w.spun() {
            i += 1;
            continue;
        }
        match w.status() {
            FenceStatus::Pending => i += 1,
            s => done.push((loose.swap_remove(i), s)),
        }
    }
}

/// How many of `ws[..end]` finished, found by bisection (the fences of a queue finish in
/// order): a query of the first, then of the last, then of the middle of what is left.
/// `None` as soon as a query fails (a failed device reports each fence: see [`linear`]).
/// The statuses queried go to `seen`.
fn bisect(ws: &VecDeque<Watch>, end: usize, seen: &mut Seen) -> Option<usize> {
    // Whether fence `i` is done (`None`: it failed).
    let mut done = |i: usize| {
        let s = ws[i].status();
        let r = match s {
            FenceStatus::Done => Some(true),
            FenceStatus::Pending => Some(false),
            FenceStatus::Failed(_) => None,
        };
        seen.push((i, s));
        r
    };
    if !done(0)? {
        return Some(0);
    }
    if end == 1 || done(end - 1)? {
        return Some(end);
    }
    // Done at 0, pending at `end - 1`: the first pending one is in 1..end.
    let (mut lo, mut hi) = (1, end - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if done(mid)? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// The fences of `ws[..end]` queried one by one from the front, up to the first pending one
/// (after a query failed: a failed device reports each fence): returns how many finished,
/// their statuses in `seen`.
fn linear(ws: &VecDeque<Watch>, end: usize, seen: &mut Seen) -> usize {
    seen.clear();
    for (i, w) in ws.iter().take(end).enumerate() {
        match w.status() {
            FenceStatus::Pending => return i,
            s => seen.push((i, s)),
        }
    }
    end
}

fn poll_loop(rt: &Arc<RtInner>) {
    let _rt = super::context::enter_rt(rt);
    let b = &rt.bridge;
    let mut pause = MIN_PAUSE;
    let mut empty_since: Option<Instant> = None;
    loop {
        if b.shutdown.load(Ordering::Acquire) {
            return;
        }
        if !b.is_busy() {
            // Fences come in streams: stay in the lazy pace for a while before sleeping
            // (which makes the next fence pay for a wake-up).
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() < IDLE_GRACE {
                std::thread::park_timeout(max_pause());
                continue;
            }
            empty_since = None;
            b.sleeping.store(true, Ordering::SeqCst);
            // A fence registered between the check and the flag is caught here.
            if b.pending.load(Ordering::SeqCst) == 0 {
                std::thread::park_timeout(Duration::from_millis(10));
            }
            b.sleeping.store(false, Ordering::Release);
            pause = MIN_PAUSE;
            continue;
        }
        empty_since = None;
        let urgent = b.urgent.load(Ordering::Acquire) > 0;
        Bridge::poll_once(rt);
        pause = if urgent {
            // Somebody waits: keep the short pace.
            MIN_PAUSE
        } else {
            // Nobody waits on these fences (their GPU dependents were released behind them):
            // back off, so that polling does not slow the launches; completions are handled
            // in batches.
            (pause * 2).min(max_pause())
        };
        if pause <= Duration::from_micros(20) {
            spin_pause(pause);
        } else {
            std::thread::park_timeout(pause);
        }
    }
}

/// The poller's pause while somebody waits on a fence.
const MIN_PAUSE: Duration = Duration::from_micros(10);

/// How long the poller keeps its lazy pace with nothing to watch before it sleeps.
const IDLE_GRACE: Duration = Duration::from_millis(20);

/// The longest pause between the poller thread's rounds while fences are pending and nobody
/// waits on them: 1 ms, or `PARLA_FENCE_POLL_MAX_US` (a tuning knob, read once).
fn max_pause() -> Duration {
    static US: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_micros(*US.get_or_init(|| {
        std::env::var("PARLA_FENCE_POLL_MAX_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000)
    }))
    .max(MIN_PAUSE)
}

/// Busy-waits for `d` without a system call.
fn spin_pause(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The status of a fence; a backend that panics reports the fence failed.
fn status(fence: &Arc<dyn Fence>) -> FenceStatus {
    fence_status(&**fence)
}

fn fence_status(fence: &dyn Fence) -> FenceStatus {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fence.status())).unwrap_or_else(|p| {
        FenceStatus::Failed(format!(
            "the GPU backend panicked: {}",
            crate::graph::cell::panic_message(&*p)
        ))
    })
}

/// Spins on `fence` for up to `budget`. Returns its status at the end.
pub(crate) fn spin(fence: &dyn Fence, budget: Duration) -> FenceStatus {
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        let s = fence_status(fence);
        if s != FenceStatus::Pending {
            return s;
        }
        n += 1;
        if n.is_multiple_of(16) && start.elapsed() >= budget {
            return s;
        }
        std::hint::spin_loop();
    }
}

/// Polls the runtime's pending fences for up to `budget` (`block_on` with nothing else to
/// do). Returns whether any finished.
pub(crate) fn spin_fences(rt: &Arc<RtInner>, budget: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < budget {
        if Bridge::poll_once(rt) > 0 {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

/// An awaiter of `task` is about to wait: if the task's GPU work is in flight, ask the fence
/// poller to wake it promptly when the fence is done. Returns whether it did.
#[inline]
pub(crate) fn hurry(h: &crate::graph::node::Header, waker: &std::task::Waker) -> bool {
    // (Inline, the check that rules out tasks that are not fenced: most awaits.)
    h.is_fenced() && hurry_fenced(h, waker)
}

/// [`hurry`] for a task that was fenced.
#[inline(never)]
fn hurry_fenced(h: &crate::graph::node::Header, waker: &std::task::Waker) -> bool {
    let Some(fence) = h.fence() else {
        return false;
    };
    crate::runtime::context::with_rt(|rt| match rt {
        Some(rt) => {
            let w = Arc::new(AtomicWaker::new());
            w.register(waker);
            Bridge::watch(rt, Watch::Waker(fence, w));
            true
        }
        None => false,
    })
}

/// An awaiter of `task`: if the task's GPU work is pending behind a fence, spin on it
/// briefly and complete the task here if it finishes. Returns whether the task is done.
///
/// Off the runtime's drivers (`block_on`, another thread), an awaiter of a GPU task whose
/// dependencies are met but whose body has not returned yet also spins, for the same budget
/// in all, until its fence is recorded: a task just spawned and awaited then never puts the awaiter to
/// sleep. (A driver does not wait so: the task may be its own next one.) Whoever sees the
/// fence done first completes the task; an awaiter that lost that race spins on until the
/// outcome is published rather than going to sleep a moment before it is.
///
/// Callers ask [`may_spin`] first, inline.
pub(crate) fn spin_fenced(task: &TaskPtr) -> bool {
    let h = task.header();
    if !h.is_fenced() && !in_flight_on_gpu(h) {
        return false;
    }
    // The fence poller (and lingering drivers) leave the fence to this awaiter meanwhile:
    // several threads querying one event slow each query down.
    let _spun = Spun::new(h);
    spin_until_done(task)
}

/// Whether [`spin_fenced`] may spin for an awaiter of the task with header `h`: the task
/// is fenced, or was mapped to a device other than the CPU. (Inline, before the call:
/// most awaits are of CPU tasks.)
#[inline]
pub(crate) fn may_spin(h: &crate::graph::node::Header) -> bool {
    h.is_fenced() || h.slot() != crate::device::Device::CPU.slot()
}

/// An awaiter spins on the task's fence while this lives ([`SPUN_TASKS`] counts it).
struct Spun<'a>(&'a crate::graph::node::Header);

impl<'a> Spun<'a> {
    fn new(h: &'a crate::graph::node::Header) -> Spun<'a> {
        SPUN_TASKS.fetch_add(1, Ordering::Relaxed);
        h.set_spun(true);
        Spun(h)
    }
}

impl Drop for Spun<'_> {
    fn drop(&mut self) {
        self.0.set_spun(false);
        SPUN_TASKS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The loop of [`spin_fenced`].
fn spin_until_done(task: &TaskPtr) -> bool {
    let h = task.header();
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        if h.is_done() {
            return true;
        }
        if let Some(fence) = h.fence() {
            let status = fence_status(&*fence);
            if status != FenceStatus::Pending {
                let completed = crate::runtime::context::with_rt(|rt| match rt {
                    Some(rt) => {
                        rt.complete_fenced(task, status);
                        true
                    }
                    None => false,
                });
                if !completed {
                    return false;
                }
            }
        }
        n += 1;
        if n.is_multiple_of(16) && start.elapsed() >= AWAIT_SPIN {
            return h.is_done();
        }
        std::hint::spin_loop();
    }
}

/// Whether `h` is a task mapped to a GPU with a backend, past its dependencies and not
/// finished, awaited from outside the runtime's drivers.
fn in_flight_on_gpu(h: &crate::graph::node::Header) -> bool {
    if h.is_waiting() || h.is_done() || crate::runtime::context::in_driver() {
        return false;
    }
    let Some(device) = h.device().filter(|d| d.arch() == crate::Arch::Gpu) else {
        return false;
    };
    crate::runtime::context::with_rt(|rt| {
        rt.is_some_and(|rt| rt.id == h.rt_id && rt.devices[device.slot()].gpu.is_some())
    })
}

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
        let watched = super::context::with_rt(|rt| match rt {
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

#[cfg(all(test, not(parla_loom)))]
mod test {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// The fence at `at` of one queue whose first `done` fences finished (or failed, from
    /// `failed` on); counts the queries.
    struct Fake {
        at: usize,
        done: Arc<AtomicUsize>,
        failed: usize,
        queries: Arc<AtomicUsize>,
        marked: AtomicBool,
    }

    impl Fence for Fake {
        fn status(&self) -> FenceStatus {
            self.queries.fetch_add(1, Ordering::SeqCst);
            if self.at >= self.failed {
                FenceStatus::Failed("device lost".into())
            } else if self.at < self.done.load(Ordering::SeqCst) {
                FenceStatus::Done
            } else {
                FenceStatus::Pending
            }
        }
        fn gpu(&self) -> usize {
            0
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn queue(&self) -> Option<u64> {
            Some(0)
        }
        fn place(&self) -> Option<u64> {
            Some(self.at as u64)
        }
        fn mark_done(&self) {
            self.marked.store(true, Ordering::SeqCst);
        }
    }

    /// A queue of `n` watched fences; `done` of them finished.
    fn queue(n: usize, done: usize, failed: usize) -> (VecDeque<Watch>, Arc<AtomicUsize>) {
        let queries = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(done));
        let ws = (0..n)
            .map(|at| {
                let f: Arc<dyn Fence> = Arc::new(Fake {
                    at,
                    done: done.clone(),
                    failed,
                    queries: queries.clone(),
                    marked: AtomicBool::new(false),
                });
                Watch::Waker(f, Arc::new(AtomicWaker::new()))
            })
            .collect();
        (ws, queries)
    }

    fn marked(w: &Watch) -> bool {
        let f = w.fence().as_any().downcast_ref::<Fake>().unwrap();
        f.marked.load(Ordering::SeqCst)
    }

    #[test]
    fn watches_added_during_a_poll_go_behind_and_the_spare_keeps_its_lists() {
        let at = |w: &Watch| w.fence().as_any().downcast_ref::<Fake>().unwrap().at;
        let (taken, _) = queue(2, 0, usize::MAX);
        let (added, _) = queue(5, 0, usize::MAX);
        let mut batch = Entries::default();
        for w in taken {
            batch.push(w);
        }
        let mut newer = Entries::default();
        for w in added.into_iter().skip(2) {
            newer.push(w);
        }
        batch.merge(&mut newer);
        // Oldest first: the two taken for the poll, then the three added meanwhile.
        let order: Vec<usize> = batch.queues[&0].iter().map(at).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        // The spare is empty, and its list kept its room.
        assert!(newer.is_empty());
        assert!(newer.queues[&0].capacity() >= 3);
        assert!(!batch.is_empty());
        batch.queues.get_mut(&0).unwrap().clear();
        assert!(batch.is_empty(), "lists with no watches are empty");
    }

    /// Two threads finishing tasks on one stream may hand their fences over out of order:
    /// each queue's watches stay in the order of the fences' places, so the poller's
    /// bisection never takes a pending fence for a done one.
    #[test]
    fn fences_handed_over_out_of_order_are_kept_in_place_order() {
        let at = |w: &Watch| w.fence().as_any().downcast_ref::<Fake>().unwrap().at;
        for order in [
            [0, 2, 1, 3, 4],
            [1, 0, 2, 4, 3],
            [4, 3, 2, 1, 0],
            [0, 1, 2, 3, 4],
        ] {
            for finished in 0..=5 {
                let (ws, _) = queue(5, finished, usize::MAX);
                let mut ws: Vec<Option<Watch>> = ws.into_iter().map(Some).collect();
                // Some handed over before a poll, the others during it (merged behind).
                let mut batch = Entries::default();
                let mut newer = Entries::default();
                for (k, &i) in order.iter().enumerate() {
                    let w = ws[i].take().unwrap();
                    if k < 2 { batch.push(w) } else { newer.push(w) }
                }
                batch.merge(&mut newer);
                let q = batch.queues.get_mut(&0).unwrap();
                assert_eq!(q.iter().map(at).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
                let mut done = Done::new();
                take_finished(q, &mut done);
                let taken: Vec<usize> = done.iter().map(|(w, _)| at(w)).collect();
                assert_eq!(
                    taken,
                    (0..finished).collect::<Vec<_>>(),
                    "order {order:?}, {finished} finished"
                );
            }
        }
    }

    #[test]
    fn finished_fences_of_a_queue_are_found_by_bisection() {
        for (n, k) in [
            (1, 0),
            (1, 1),
            (2, 1),
            (1000, 0),
            (1000, 1),
            (1000, 617),
            (1000, 1000),
        ] {
            let (mut ws, queries) = queue(n, k, usize::MAX);
            let mut done = Done::new();
            take_finished(&mut ws, &mut done);
            assert_eq!(done.len(), k, "{k} of {n} done");
            assert_eq!(ws.len(), n - k);
            assert!(done.iter().all(|(_, s)| *s == FenceStatus::Done));
            let q = queries.load(Ordering::SeqCst);
            assert!(
                q <= 2 + (n as f64).log2().ceil() as usize,
                "{q} queries for {n}"
            );
            // Every fence taken was queried or told it is done.
            let told = done.iter().filter(|(w, _)| marked(w)).count();
            assert!(told + q >= k, "{told} told, {q} queries, {k} done");
        }
    }

    /// Watches without a queue are queried one by one; the finished ones leave the list,
    /// which keeps its memory (it is polled again every round while any is pending).
    #[test]
    fn finished_loose_watches_are_taken_in_place() {
        let at = |w: &Watch| w.fence().as_any().downcast_ref::<Fake>().unwrap().at;
        let (ws, queries) = queue(8, 3, usize::MAX);
        let mut loose: Vec<Watch> = ws.into_iter().collect();
        let memory = (loose.as_ptr(), loose.capacity());
        let mut done = Done::new();
        take_finished_loose(&mut loose, &mut done);
        let mut taken: Vec<usize> = done.iter().map(|(w, _)| at(w)).collect();
        taken.sort_unstable();
        assert_eq!(taken, [0, 1, 2]);
        assert!(done.iter().all(|(_, s)| *s == FenceStatus::Done));
        let mut left: Vec<usize> = loose.iter().map(at).collect();
        left.sort_unstable();
        assert_eq!(left, [3, 4, 5, 6, 7]);
        assert_eq!(queries.load(Ordering::SeqCst), 8, "one query per watch");
        assert_eq!(
            (loose.as_ptr(), loose.capacity()),
            memory,
            "the list kept its memory"
        );
    }

    #[test]
    fn a_failed_fence_makes_the_poller_query_each_one() {
        // 0..10 done, 10.. failed (a device lost): the failures are reported, per fence.
        let (mut ws, _) = queue(20, 10, 10);
        let mut done = Done::new();
        take_finished(&mut ws, &mut done);
        assert_eq!(done.len(), 20);
        assert!(done[..10].iter().all(|(_, s)| *s == FenceStatus::Done));
        assert!(
            done[10..]
                .iter()
                .all(|(_, s)| matches!(s, FenceStatus::Failed(_)))
        );
    }
}
