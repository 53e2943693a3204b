//! What code running on a thread can ask about where it runs: the current runtime, task,
//! device and poller, as thread-locals.
//!
//! - The runtime is set for the scope of a driver's poll, of `Runtime::block_on`, and of a
//!   `Handle::enter` guard. On the runtime's worker threads it is also known outside those
//!   scopes (for futures started with `tokio::spawn` inside tasks), through a weak
//!   reference installed when the thread starts.
//! - The task, device and poller are set for the duration of one poll of a task's body (or
//!   of a `block_on` future): the runtime's own futures use the poller to register wakers
//!   that stall detection does not count, and to find awaits the stall resolver failed.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use super::RtInner;
use crate::device::{Demand, Device, vcu_float};
use crate::graph::activity::Activity;
use crate::graph::arc::{RawTask, TaskArc, TaskPtr};

/// The poller being polled on this thread: its activity and its waker's data pointer.
#[derive(Clone, Copy)]
pub(crate) struct PollerRef {
    pub(crate) act: *const Activity,
    /// The data pointer of the poller's waker (to recognise it in a `Context`).
    pub(crate) data: *const (),
    /// Makes an uncounted waker for the poller.
    pub(crate) uncounted: unsafe fn(*const ()) -> std::task::Waker,
    pub(crate) rt_id: u32,
}

/// What a thread polls now, in one thread-local. Entering and leaving a task's poll set
/// the task alone: its device and its poller are the task's own, read from it where they
/// are asked for (rarely, next to every poll).
struct Current {
    /// The task (null outside tasks). While it is set, the task is the poller.
    task: Cell<*const TaskPtr>,
    /// The `block_on` future polled on this thread, the poller outside tasks.
    main: Cell<Option<PollerRef>>,
}

/// What a driver's loop reads for every task it runs, in one thread-local: the next-task
/// slot, and what the current poller's poll awaited. A driver's poll looks it up once
/// ([`slots`]) and reads it through that reference for every task: a lookup of a
/// thread-local from the drivers' code is a call (the accessor lives in another codegen
/// unit), two of them per task when these were thread-locals of their own.
pub(crate) struct Slots {
    /// The next task: one strong reference (`Arc::into_raw`), a plain pointer so that the
    /// slot needs no destructor (a driver empties it before its poll returns).
    lifo: Cell<Option<RawTask>>,
    /// The current poller returned `Pending` on a node of the runtime (see
    /// [`note_blocked`]).
    blocked: Cell<bool>,
    /// The task it awaited last (a raw strong reference).
    awaited: Cell<Option<RawTask>>,
    /// The current poll may block this thread: the driver let go of it (see
    /// [`let_go_of_poll`]).
    let_go: Cell<bool>,
    /// This thread's count of task polls begun and ended, for the nudger (see
    /// [`set_poll_mark`]); null on threads outside the runtimes' pools.
    mark: Cell<*const AtomicU32>,
}

impl Slots {
    /// A task poll begins or ends on this thread: the count of [`set_poll_mark`] is odd
    /// while one runs.
    #[inline]
    pub(crate) fn mark_poll(&self) {
        let p = self.mark.get();
        if !p.is_null() {
            // SAFETY: set by `set_poll_mark` from a count that the runtime's `PollMarks`
            // keeps alive until this thread's stop hook gave it back and cleared the
            // pointer; only this thread writes the count.
            let c = unsafe { &*p };
            c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// Takes this thread's next task (see [`take_next`]).
    #[inline]
    pub(crate) fn take_next(&self) -> Option<TaskPtr> {
        from_raw(self.lifo.take())
    }

    /// Reads and clears the blocked mark, and forgets the task awaited (see
    /// [`take_blocked`]).
    #[inline]
    pub(crate) fn take_blocked(&self) -> bool {
        let (blocked, awaited) = (self.blocked.replace(false), self.awaited.take());
        drop(from_raw(awaited));
        blocked
    }

    /// Reads and clears the mark of [`let_go_of_poll`].
    #[inline]
    pub(crate) fn take_let_go(&self) -> bool {
        self.let_go.replace(false)
    }

    /// Takes the task the current poller awaited last, noted since the last
    /// [`take_blocked`](Self::take_blocked).
    #[inline]
    pub(crate) fn take_awaited(&self) -> Option<TaskPtr> {
        from_raw(self.awaited.take())
    }
}

/// Where a worker thread finds its runtime outside driver polls.
pub(crate) type WorkerRt = Arc<OnceLock<Weak<RtInner>>>;

thread_local! {
    static RT: Cell<*const Arc<RtInner>> = const { Cell::new(std::ptr::null()) };
    /// The runtimes of the [`Handle::enter`](crate::runtime::Handle::enter) guards this
    /// thread is in, the innermost last, each with its guard's number (see
    /// [`enter_handle`]). Owned here, not borrowed from the handle: a guard may outlive the
    /// handle it came from (`let _g = rt.handle().enter();`), and guards may be dropped in
    /// any order.
    static HANDLE_RT: RefCell<Vec<(u64, Arc<RtInner>)>> = const { RefCell::new(Vec::new()) };
    /// The number of this thread's last [`enter_handle`] guard.
    static HANDLE_SEQ: Cell<u64> = const { Cell::new(0) };
    static WORKER: RefCell<Option<WorkerRt>> = const { RefCell::new(None) };
    /// What this thread polls now (see [`Current`]).
    static CURRENT: Current = const {
        Current {
            task: Cell::new(
                std::ptr::null::<Arc<crate::graph::node::Placeholder>>() as *const TaskPtr,
            ),
            main: Cell::new(None),
        }
    };
    /// The next task, and what the current poller awaited (see [`Slots`]).
    static SLOTS: Slots = const {
        Slots {
            lifo: Cell::new(None),
            blocked: Cell::new(false),
            awaited: Cell::new(None),
            let_go: Cell::new(false),
            mark: Cell::new(std::ptr::null()),
        }
    };
    /// Live-task counts taken ahead from the current runtime (see `take_live_credit`).
    static CREDITS: Cell<u32> = const { Cell::new(0) };
    /// The driver polling on this thread (its runtime's id, 0: none).
    static DRIVER: Cell<u32> = const { Cell::new(0) };
    /// Marks of the drivers on this thread: [`HANDOFF`] and [`PUT_OFF_HERE`].
    static MARKS: Cell<u8> = const { Cell::new(0) };
    /// Drivers put off behind Tokio's deferred wakes on this thread (their runtime, and
    /// their state word: see [`note_put_off`]).
    static PUT_OFF: RefCell<Vec<(u32, Arc<AtomicU8>)>> = const { RefCell::new(Vec::new()) };
    /// A driver on this thread yielded because Tokio's budget ran out (see
    /// [`note_coop_yield`]).
    static COOP_YIELD: Cell<bool> = const { Cell::new(false) };
    /// VCUs a completing task holds for a task it wakes (see [`Gift`]).
    static GIFT: Cell<Option<Gift>> = const { Cell::new(None) };
    /// Completions of awaited tasks on this thread while tasks waited (gifts, or VCUs
    /// released while resumes waited) since the last turn, and how many make a turn now
    /// (see [`gift_turn`]).
    static GIFTS: Cell<(u32, u32)> = const { Cell::new((0, GIFT_TURN)) };
    /// A gift turn was taken in the completion running on this thread (see [`gift_turn`]).
    static TURN: Cell<bool> = const { Cell::new(false) };
    /// A task made ready during the poll of a task on this thread that did not fit on its
    /// device (a raw strong reference; see [`stash`]).
    static STASH: Cell<Option<(RawTask, Demand)>> = const { Cell::new(None) };
    /// A task woken during the poll of a CPU task on this thread that could not take back
    /// the VCUs it lent (a raw strong reference; see [`defer_resume`]).
    static WOKEN: Cell<Option<RawTask>> = const { Cell::new(None) };
    /// Tasks held in `WOKEN` since the last one [`defer_resume`] turned away for fairness.
    static DEFERRED: Cell<u32> = const { Cell::new(0) };
    /// Wakes on this thread left to skip the check whether the VCUs of a woken task fit
    /// back on the CPU (see [`skip_fit_check`]).
    static FIT_SKIPS: Cell<u32> = const { Cell::new(0) };
}

/// How many woken tasks in a row a thread's polls may pass their VCUs to (see
/// [`defer_resume`]) before one takes its turn among the tasks that wait for its device
/// (if any do: `Admission::resume_after_tasks`). (Every eighth cost tasks passing messages on 16 workers
/// twice their time per message; every 32nd, a tenth.)
const DEFER_BUDGET: u32 = 32;

/// How many wakes on a thread skip the check whether a woken task's VCUs fit back on the
/// CPU, after that check found they did not (see [`skip_fit_check`]). (The check reads the
/// CPU's usage, a line that every admission on every worker writes: with more tasks
/// passing messages than 16 workers admit, reading it at every wake took a sixth of the
/// workers' time.)
const FIT_SKIP_WAKES: u32 = 15;

/// Whether a task woken by the poll of a CPU task on this thread goes straight to
/// [`defer_resume`], without checking whether its VCUs fit back on the CPU first: for the
/// next [`FIT_SKIP_WAKES`] such wakes after a check found they did not ([`note_no_fit`]). A
/// check skipped where it would have found room only puts the woken task off until the
/// poll that woke it ends, as a full CPU does.
#[inline]
pub(crate) fn skip_fit_check() -> bool {
    FIT_SKIPS.with(|c| {
        let n = c.get();
        if n > 0 {
            c.set(n - 1);
        }
        n > 0
    })
}

/// Notes that a woken task's VCUs did not fit back on the CPU: the next wakes on this thread
/// skip that check (see [`skip_fit_check`]).
#[inline]
pub(crate) fn note_no_fit() {
    FIT_SKIPS.with(|c| c.set(FIT_SKIP_WAKES));
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
        crate::space::flush_spare_refs();
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

/// Makes `rt` the current runtime of this thread through a [`Handle`]'s guard until the
/// returned guard drops (the thread keeps a reference meanwhile; guards may be dropped in
/// any order: the innermost one still alive gives the runtime).
/// Unlike [`enter_rt`], it is found only where no runtime was entered
/// ([`with_rt`]): such a thread spawns through the slower path, which cancels what it
/// spawns into a runtime that was dropped ([`in_handle_scope`]), since no driver of that
/// runtime will ever run it.
///
/// [`Handle`]: crate::runtime::Handle
pub(crate) fn enter_handle(rt: &Arc<RtInner>) -> HandleGuard {
    let id = HANDLE_SEQ.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    HANDLE_RT.with(|s| s.borrow_mut().push((id, rt.clone())));
    HandleGuard {
        id,
        _thread: std::marker::PhantomData,
    }
}

/// Takes its runtime off this thread's [`HANDLE_RT`] on drop (wherever it is there: an
/// outer guard may be dropped first).
pub(crate) struct HandleGuard {
    id: u64,
    /// Not `Send`: the entry is this thread's.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        let entry = HANDLE_RT
            .try_with(|s| {
                let mut s = s.borrow_mut();
                let i = s.iter().rposition(|(g, _)| *g == self.id)?;
                Some(s.remove(i))
            })
            .ok()
            .flatten();
        // (Dropped once the list is released: it may be the runtime's last reference.)
        drop(entry);
    }
}

/// The runtime of the innermost [`Handle::enter`](crate::runtime::Handle::enter) guard
/// this thread is in, if any.
fn handle_rt() -> Option<Arc<RtInner>> {
    HANDLE_RT
        .try_with(|s| s.borrow().last().map(|(_, rt)| rt.clone()))
        .ok()
        .flatten()
}

/// Whether this thread finds its runtime through a [`Handle::enter`] guard alone (see
/// [`enter_handle`]).
///
/// [`Handle::enter`]: crate::runtime::Handle::enter
pub(crate) fn in_handle_scope() -> bool {
    entered_rt().is_null() && HANDLE_RT.try_with(|s| !s.borrow().is_empty()) == Ok(true)
}

/// Installs, on a worker thread that is starting, where it finds its runtime.
pub(crate) fn set_worker_rt(w: WorkerRt) {
    WORKER.with(|c| *c.borrow_mut() = Some(w));
}

/// Clears what [`set_worker_rt`] installed (the worker thread stops).
pub(crate) fn clear_worker_rt() {
    WORKER.with(|c| c.borrow_mut().take());
}

/// Sets the count this thread's task polls mark (see [`Slots::mark_poll`]): one that the
/// runtime's `PollMarks` keeps alive until this thread clears it (null) as it stops.
pub(crate) fn set_poll_mark(mark: *const AtomicU32) {
    SLOTS.with(|s| s.mark.set(mark));
}

/// Clears this thread's count of [`set_poll_mark`] (the thread stops) and returns it.
pub(crate) fn take_poll_mark() -> *const AtomicU32 {
    SLOTS.with(|s| s.mark.replace(std::ptr::null()))
}

/// Whether this thread is one of `rt`'s Tokio pool (a worker, or a thread running
/// `spawn_blocking` closures).
pub(crate) fn on_pool_of(rt: &Arc<RtInner>) -> bool {
    WORKER.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|w| w.get())
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(rt)))
    })
}

/// Counts one more live task in the current runtime `rt`. Spawning threads take counts in
/// batches, so that a thread spawning many tasks does not write the runtime's shared
/// counter word once per task; the counts not used are given back by [`flush_credits`]
/// before the runtime could look for a live count of zero (at the end of every poll).
#[inline]
pub(crate) fn take_live_credit(rt: &RtInner) {
    if entered_rt().is_null() {
        // Not inside a scope that flushes credits (a worker thread outside polls): count
        // the task alone.
        rt.counters.add(1, 0);
        return;
    }
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

/// The runtime this thread entered (a driver's, `block_on`'s), or null: a pointer that
/// stays valid while this thread is inside the scope of the guard that set it (the caller
/// uses it at once, inside that scope; see [`with_entered_rt`]).
#[inline]
pub(crate) fn entered_rt() -> *const Arc<RtInner> {
    RT.with(|c| c.get())
}

/// Runs `f` with the runtime this thread entered (a driver's, `block_on`'s), if any: no
/// reference count is touched.
#[inline]
pub(crate) fn with_entered_rt<R>(f: impl FnOnce(Option<&Arc<RtInner>>) -> R) -> R {
    let p = entered_rt();
    // SAFETY: a non-null pointer was set by `enter_rt` from a reference that outlives the
    // guard restoring the previous value, and this thread is inside that guard's scope.
    f(unsafe { p.as_ref() })
}

/// Runs `f` with the current runtime, if any: the one this thread entered (without
/// touching a reference count), or the one of the innermost
/// [`Handle::enter`](crate::runtime::Handle::enter) guard it is in, else its worker's.
pub(crate) fn with_rt<R>(f: impl FnOnce(Option<&Arc<RtInner>>) -> R) -> R {
    if !entered_rt().is_null() {
        return with_entered_rt(f);
    }
    if let Some(rt) = handle_rt() {
        return f(Some(&rt));
    }
    let worker = WORKER.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|w| w.get())
            .and_then(Weak::upgrade)
    });
    f(worker.as_ref())
}

/// Restores the previous task on drop.
pub(crate) struct TaskGuard {
    task: *const TaskPtr,
}

impl Drop for TaskGuard {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|c| c.task.set(self.task));
    }
}

/// Marks `task` as running on this thread (on its device, polled as itself) until the
/// guard drops. The guard must drop before `task` does.
#[inline]
pub(crate) fn enter_task(task: &TaskPtr) -> TaskGuard {
    CURRENT.with(|c| TaskGuard {
        task: c.task.replace(task as *const _),
    })
}

/// Restores the previous `block_on` poller, and the task running before, on drop.
pub(crate) struct PollerGuard {
    main: Option<PollerRef>,
    task: *const TaskPtr,
}

impl Drop for PollerGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| {
            c.main.set(self.main);
            c.task.set(self.task);
        });
    }
}

/// Marks `poller` (a `block_on` future) as the poller of this thread outside tasks until
/// the guard drops. The future runs outside any task: a `block_on` called from a task of
/// another runtime (inside `block_in_place`) is not that task (`current_task()` is `None`
/// there, and its awaits are the `block_on`'s).
pub(crate) fn enter_poller(poller: PollerRef) -> PollerGuard {
    CURRENT.with(|c| PollerGuard {
        main: c.main.replace(Some(poller)),
        task: c.task.replace(std::ptr::null()),
    })
}

/// Runs `f` with the task running on this thread, if any.
#[inline]
fn with_running<R>(f: impl FnOnce(Option<&TaskPtr>) -> R) -> R {
    let p = CURRENT.with(|c| c.task.get());
    // SAFETY: a non-null pointer was set by `enter_task` from a reference that outlives the
    // guard that restores the previous value, and this thread is inside that scope for the
    // whole call (`f` cannot end it: the guard is its caller's).
    f(unsafe { p.as_ref() })
}

/// The task running on this thread, if any (a new reference).
pub(crate) fn running_task() -> Option<TaskPtr> {
    with_running(|t| t.cloned())
}

/// Whether `h` is the header of the task running on this thread.
pub(crate) fn is_running(h: &crate::graph::node::Header) -> bool {
    with_running(|t| t.is_some_and(|t| std::ptr::eq(t.header(), h)))
}

/// The device of the task running on this thread, if any.
#[inline]
fn running_device() -> Option<Device> {
    with_running(|t| t.map(|t| t.header().device().unwrap_or(Device::CPU)))
}

/// The architecture function variants dispatch on: the running task's, when it runs on the
/// CPU or on a GPU of a backend; `None` outside tasks and on virtual GPUs (which run the
/// default body).
pub(crate) fn variant_arch() -> Option<crate::Arch> {
    with_running(|t| {
        let h = t?.header();
        let device = h.device().unwrap_or(Device::CPU);
        match device.arch() {
            crate::Arch::Cpu => Some(crate::Arch::Cpu),
            // (A task is polled inside its runtime's driver, which entered the runtime;
            // checked all the same, rather than index another runtime's devices.)
            crate::Arch::Gpu => with_entered_rt(|rt| {
                rt.filter(|rt| rt.id == h.rt_id)
                    .and_then(|rt| rt.devices.get(device.slot()))
                    .is_some_and(|d| d.gpu.is_some())
                    .then_some(crate::Arch::Gpu)
            }),
        }
    })
}

/// The poller being polled on this thread: the running task, or else a `block_on` future.
pub(crate) fn poller() -> Option<PollerRef> {
    with_running(|t| match t {
        Some(t) => Some(super::waker::task_poller(t)),
        None => CURRENT.with(|c| c.main.get()),
    })
}

/// Called by the runtime's own futures (task handles, ids, spaces) when they return
/// `Pending` on a node of the current runtime: the poller awaits tasks. `node` is the task
/// its loan may go to first (see [`Slots::take_awaited`]), or `None` for one awaited in no
/// particular order (see `Awaiting::pending_on`).
///
/// A poll that awaits several tasks at once (`select!`, `join!` over handles or ids) lends
/// to the first of them that waits claimable in a shard of the task lane - queued before
/// the poll's last spawn, which waits in the stash until the poll ends - or, if none does,
/// to their device, where the waiting tasks take the VCUs in their order. Going to the one
/// awaited last would run a task spawned anew in every poll (`select! { _ = &mut stop =>
/// .., r = task(step) => .. }` in a loop) on the loan every time, and never the other,
/// however often the poll awaits it; going to the device always would run a fork-join
/// tree written with `join!(left, right)` breadth first (the device's oldest waiting task
/// is a right child high in the tree).
pub(crate) fn note_blocked(node: Option<TaskPtr>) {
    let prev = SLOTS.with(|s| {
        if s.blocked.replace(true) {
            return note_again(s, node);
        }
        s.awaited.replace(node.and_then(into_raw))
    });
    drop(from_raw(prev));
}

/// [`note_blocked`] once more in the same poll: the task noted stays if it is `node` or
/// waits in a shard; else `node` takes its place if it waits in a shard; else no task is
/// noted (for the rest of the poll). Returns what the slot held, for the caller to drop.
#[cold]
#[inline(never)]
fn note_again(s: &Slots, node: Option<TaskPtr>) -> Option<RawTask> {
    use crate::scheduler::admission::queued_in_shard;
    let prev = from_raw(s.awaited.take())?;
    let keep = match &node {
        Some(n) if TaskArc::ptr_eq(&prev, n) => true,
        _ => queued_in_shard(&prev.header().lane),
    };
    if keep {
        s.awaited.set(into_raw(prev));
        return None;
    }
    if let Some(n) = node.filter(|n| queued_in_shard(&n.header().lane)) {
        s.awaited.set(into_raw(n));
    }
    into_raw(prev)
}

/// Reads and clears the blocked mark (and forgets the task awaited).
pub(crate) fn take_blocked() -> bool {
    SLOTS.with(Slots::take_blocked)
}

/// A strong reference as a pointer for one of this thread's slots (taken back by
/// [`from_raw`]).
#[inline]
fn into_raw(t: TaskPtr) -> Option<RawTask> {
    Some(TaskArc::into_non_null(t))
}

/// The strong reference behind a pointer of one of this thread's slots.
#[inline]
fn from_raw(p: Option<RawTask>) -> Option<TaskPtr> {
    // SAFETY: the slots (the next task and the task awaited in `SLOTS`, `STASH`, `WOKEN`)
    // hold pointers from `TaskArc::into_non_null`, each taken out of its slot (and turned
    // back into its reference) exactly once, here.
    p.map(|p| unsafe { TaskArc::from_non_null(p) })
}

/// Marks this thread as running a driver of runtime `rt_id` until the guard drops.
pub(crate) struct DriverGuard {
    prev: u32,
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        DRIVER.with(|c| c.set(self.prev));
    }
}

pub(crate) fn enter_driver(rt_id: u32) -> DriverGuard {
    DriverGuard {
        prev: DRIVER.with(|c| c.replace(rt_id)),
    }
}

/// Whether a driver polls on this thread.
#[inline]
pub(crate) fn in_driver() -> bool {
    DRIVER.with(|c| c.get()) != 0
}

/// Whether this thread's next-task slot holds a task.
#[inline]
pub(crate) fn has_next() -> bool {
    SLOTS.with(|s| s.lifo.get().is_some())
}

/// For the rest of the current task's poll, which may block this thread until other
/// tasks ran (see `RtInner::release_held_here`), this thread counts as running no driver:
/// what that poll spawns or wakes goes where every driver finds it, not to this thread's
/// next-task slot, stash or woken task. The driver takes the thread back when the poll
/// returns ([`Slots::take_let_go`], [`take_back_driver`]).
#[cold]
pub(crate) fn let_go_of_poll() {
    DRIVER.with(|c| c.set(0));
    SLOTS.with(|s| s.let_go.set(true));
}

/// Marks this thread as running the driver of runtime `rt_id` again, after
/// [`let_go_of_poll`].
#[cold]
pub(crate) fn take_back_driver(rt_id: u32) {
    DRIVER.with(|c| c.set(rt_id));
}

/// Puts `t` in this thread's next-task slot if a driver of runtime `rt_id` polls here, as
/// Tokio's LIFO slot does: the newest task runs next, so a task that spawns children and
/// awaits them runs its tree depth first. Returns whether `t` went there, and what the
/// caller must queue instead: the task `t` displaced, or `t` itself on any other thread.
///
/// Not while the poll of a task goes on and has a task stashed ([`stash`]): the poll holds
/// that one back already, and may go on computing (a parent that spawned more children
/// than fit, then works before it awaits them). Held in the slot too, a task that fitted
/// after all (its siblings finished meanwhile) would wait for the poll to end beside it,
/// both with workers idle. (Once the poll returned, the driver queues the stashed task
/// after it lent the polled task's VCUs, and what that lend admits goes to the slot.)
#[inline]
pub(crate) fn place_next(rt_id: u32, t: TaskPtr) -> (bool, Option<TaskPtr>) {
    if DRIVER.with(|c| c.get()) != rt_id || (has_stash() && in_task_poll()) {
        return (false, Some(t));
    }
    (true, from_raw(SLOTS.with(|s| s.lifo.replace(into_raw(t)))))
}

/// The VCUs of a task that completes and wakes a parent awaiting it: kept reserved for the
/// parent, which lent VCUs while it waited, instead of going back to the device (where a
/// waiting task would take them before the parent asks). Set while the completion wakes
/// its awaiters; whatever is left goes back to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gift {
    pub(crate) rt_id: u32,
    pub(crate) slot: usize,
    pub(crate) vcu: u32,
}

/// Of the gifts a thread would make while tasks wait for the device, one in this many
/// goes to the device instead (see [`gift_turn`]), while the turns find few tasks waiting.
const GIFT_TURN: u32 = 256;

/// Whether the VCUs of a task completing on this thread, which would go to the parent
/// awaiting it (a [`Gift`]) while tasks wait for the device, go to the device this time.
/// Parents that await child after child in a loop, as many as the device admits, would
/// otherwise pass their VCUs to their children and back for as long as they loop, and a
/// task waiting for the device (spawned from outside any task, detached by the task that
/// spawned it, or a timer's task on its first run) would not start until they end. Once
/// in a while - every [`GIFT_TURN`]-th gift - the thread looks whether tasks wait in the
/// central part of the task lane: if so, the waiting task at its head takes the VCUs
/// instead, and the parent takes back its VCUs behind the tasks waiting there
/// ([`take_turn`]). While turns keep finding tasks waiting, they come twice as
/// often each time, down to every gift: parents that spawn a detached task at every step
/// make one per step, and one turn in 256 would let those pile up without end. A turn
/// that finds none waiting sets the interval back to [`GIFT_TURN`].
///
/// Completions that make no gift because resumes wait count too, and their turns send
/// the parent they wake behind the waiting tasks as well: parents looping on children
/// that take their VCUs back through the resume lane, each behind the other, keep that
/// lane from emptying, and resumes go ahead of the tasks.
///
/// Counts the completion: returns whether it is a turn's, and then the caller asks
/// whether tasks wait and tells [`turn_taken`].
#[inline]
pub(crate) fn gift_turn() -> bool {
    GIFTS.with(|c| {
        let (n, every) = c.get();
        c.set((n + 1, every));
        n + 1 >= every
    })
}

/// A turn ([`gift_turn`]) found tasks waiting (`wait`) or not.
#[cold]
#[inline(never)]
pub(crate) fn turn_taken(wait: bool) {
    GIFTS.with(|c| {
        let every = c.get().1;
        c.set((0, if wait { (every / 2).max(1) } else { GIFT_TURN }));
    });
    TURN.with(|t| t.set(wait));
}

/// Takes the mark of a gift turn taken in the completion running on this thread: the
/// parent it wakes takes its VCUs back in its turn among the tasks that wait, behind those
/// queued before it (`Admission::resume_after_tasks`), which the turn was for - ahead of them, as a
/// resume otherwise goes, parents looping on children on a full device would take back
/// every turn's VCUs and leave the waiting tasks only the turns no resume wanted.
#[inline]
pub(crate) fn take_turn() -> bool {
    TURN.with(|t| t.replace(false))
}

/// Offers `gift` to the tasks woken on this thread until [`end_gift`]; returns the offer it
/// replaces (to restore).
pub(crate) fn offer_gift(gift: Gift) -> Option<Gift> {
    GIFT.with(|c| c.replace(Some(gift)))
}

/// Takes the gift on offer if it is exactly `vcu` VCUs of device `slot` of runtime `rt_id`.
pub(crate) fn take_gift(rt_id: u32, slot: usize, vcu: u32) -> bool {
    GIFT.with(|c| {
        let wanted = Some(Gift { rt_id, slot, vcu });
        let hit = c.get() == wanted;
        if hit {
            c.set(None);
        }
        hit
    })
}

/// Ends an offer, restoring `prev`: returns whether the gift is still there (nobody took it).
pub(crate) fn end_gift(prev: Option<Gift>) -> bool {
    GIFT.with(|c| c.replace(prev)).is_some()
}

/// Whether a task is polled on this thread (by a driver, of any runtime).
#[inline]
pub(crate) fn in_task_poll() -> bool {
    !CURRENT.with(|c| c.task.get()).is_null()
}

/// Whether a driver of runtime `rt_id` polls a task on this thread.
#[inline]
pub(crate) fn polling_task(rt_id: u32) -> bool {
    DRIVER.with(|c| c.get()) == rt_id && !CURRENT.with(|c| c.task.get()).is_null()
}

/// Holds `task` (ready, mapped, asking for `d` on its device, which it does not fit now)
/// until the poll of the task running on this thread ends (see [`polling_task`]), and hands
/// back the task held before, if any, for the caller to queue now. The driver queues the
/// one held at the end for admission - or, if the polled task ends up awaiting it, gives it
/// the polled task's VCUs directly (see `Driver::lend`): a parent spawning a child and
/// awaiting it does not take the device's admission lock for it. One task at most, so that
/// a poll that goes on computing holds back no more than that one (as the next-task slot
/// does), and the latest: the tasks a poll spawns are queued in the order it spawned them.
pub(crate) fn stash(task: TaskPtr, d: Demand) -> Option<(TaskPtr, Demand)> {
    let prev = STASH.with(|c| c.replace(into_raw(task).map(|p| (p, d))))?;
    Some((from_raw(Some(prev.0))?, prev.1))
}

/// Takes the stashed task if it is `task` and can run on `vcu` lent VCUs
/// ([`Demand::within_loan`]); returns what it asks for.
pub(crate) fn unstash(task: &TaskPtr, vcu: u32) -> Option<Demand> {
    let (p, d) = STASH.with(|c| c.get())?;
    if !std::ptr::addr_eq(p.as_ptr(), TaskArc::as_ptr(task)) || !d.within_loan(vcu) {
        return None;
    }
    drop(take_stash());
    Some(d)
}

/// Whether a task is stashed.
#[inline(always)]
pub(crate) fn has_stash() -> bool {
    STASH.with(|c| c.get().is_some())
}

/// Takes the stashed task, if any.
#[inline]
pub(crate) fn take_stash() -> Option<(TaskPtr, Demand)> {
    let (p, d) = STASH.with(|c| c.take())?;
    Some((from_raw(Some(p))?, d))
}

/// Holds `task`, woken during the poll of a CPU task of runtime `rt_id` on this thread and
/// needing `vcu` VCUs back on the CPU that do not fit now, until that poll ends. The driver
/// then gives it the polled task's VCUs if the polled task waits on (see
/// `Driver::pass_vcus`), or sends it through the resume lane. So two CPU tasks passing
/// messages while more tasks run than the CPU admits (a channel's sender waking its
/// receiver, then waiting for the reply) take turns on one worker's VCUs, as if the sender
/// ran the receiver on them, without the device's admission lock.
///
/// Handed back when no such poll runs here, when the polled task holds fewer VCUs, when a
/// task is held already, or (every [`DEFER_BUDGET`]-th time, if `others_wait` says tasks
/// wait for the device) so that the tasks waiting get their turn: then with `true`, for the
/// caller to queue it behind them (`Admission::resume_after_tasks`).
pub(crate) fn defer_resume(
    rt_id: u32,
    task: TaskPtr,
    vcu: u32,
    others_wait: impl FnOnce() -> bool,
) -> Result<(), (TaskPtr, bool)> {
    if !polling_task(rt_id) || running_device() != Some(Device::CPU) {
        return Err((task, false));
    }
    if WOKEN.with(|c| c.get().is_some()) {
        return Err((task, false));
    }
    let cur = CURRENT.with(|c| c.task.get());
    // SAFETY: non-null (`polling_task`), set by `enter_task` from a reference that outlives
    // the guard that restores the previous value, and this thread is inside that scope.
    let have = unsafe { &*cur }.header().demand().vcu;
    if have < vcu {
        return Err((task, false));
    }
    let n = DEFERRED.with(|c| c.get());
    if n >= DEFER_BUDGET && others_wait() {
        DEFERRED.with(|c| c.set(0));
        return Err((task, true));
    }
    DEFERRED.with(|c| c.set(n.saturating_add(1)));
    WOKEN.with(|c| c.set(into_raw(task)));
    Ok(())
}

/// Takes the task [`defer_resume`] holds, if any.
#[inline]
pub(crate) fn take_woken() -> Option<TaskPtr> {
    from_raw(WOKEN.with(|c| c.take()))
}

/// A mark of [`MARKS`]: a driver polling on this thread started another.
const HANDOFF: u8 = 1;
/// A mark of [`MARKS`]: a driver was put off on this thread (see [`note_put_off`]).
const PUT_OFF_HERE: u8 = 2;

/// Notes that a driver of runtime `rt_id` polling on this thread started another driver.
/// Tokio puts a task spawned from a worker in that worker's LIFO slot, which no other worker
/// can steal and which runs only once the running task yields: the spawning driver must
/// yield (see [`take_handoff`]) for the two to run on two workers.
pub(crate) fn note_handoff(rt_id: u32) {
    if DRIVER.with(|c| c.get()) == rt_id {
        MARKS.with(|c| c.set(c.get() | HANDOFF));
    }
}

/// Reads and clears the mark of [`note_handoff`].
pub(crate) fn take_handoff() -> bool {
    take_marks().0
}

/// [`take_handoff`], and whether a driver was put off on this thread ([`note_put_off`]),
/// in one look.
#[inline]
pub(crate) fn take_marks() -> (bool, bool) {
    MARKS.with(|c| {
        let m = c.get();
        c.set(m & !HANDOFF);
        (m & HANDOFF != 0, m & PUT_OFF_HERE != 0)
    })
}

/// A driver of runtime `rt_id` yields behind the wakes Tokio puts off on this thread, which
/// Tokio runs only once the worker has nothing else to poll: holding a driver slot (and
/// counted as lingering, when out of work), it may wait there as long as a task another
/// driver runs on this worker takes. `state` is its word, set to say so: a driver about to run a task
/// on this thread revokes it ([`take_put_off`]) so that the work counted on it goes to
/// another worker.
pub(crate) fn note_put_off(rt_id: u32, state: &Arc<AtomicU8>) {
    PUT_OFF.with(|p| p.borrow_mut().push((rt_id, state.clone())));
    MARKS.with(|c| c.set(c.get() | PUT_OFF_HERE));
}

/// Takes the words of the drivers of runtime `rt_id` put off on this thread (those back
/// already included: their words say so).
pub(crate) fn take_put_off(rt_id: u32) -> Vec<Arc<AtomicU8>> {
    PUT_OFF.with(|p| {
        let mut p = p.borrow_mut();
        let mut taken = Vec::new();
        p.retain(|(id, s)| {
            let mine = *id == rt_id;
            if mine {
                taken.push(s.clone());
            }
            !mine
        });
        if p.is_empty() {
            MARKS.with(|c| c.set(c.get() & !PUT_OFF_HERE));
        }
        taken
    })
}

/// Forgets the driver word `state` if it was noted on this thread (its driver is back).
/// (Nothing on a thread whose thread-locals are gone: a driver dropped as it exits.)
pub(crate) fn forget_put_off(state: &Arc<AtomicU8>) {
    let _ = PUT_OFF.try_with(|p| {
        let mut p = p.borrow_mut();
        p.retain(|(_, s)| !Arc::ptr_eq(s, state));
        if p.is_empty() {
            let _ = MARKS.try_with(|c| c.set(c.get() & !PUT_OFF_HERE));
        }
    });
}

/// Notes that a driver polling on this thread yields because Tokio's cooperative budget
/// ran out. A Tokio resource that refused a task for that reason (a channel, a semaphore)
/// handed its waker to Tokio's worker, which wakes it only once it has no task left to
/// poll: until then, the tasks it wakes are in no queue of the runtime, and a driver on
/// this thread that runs out of work must not spin waiting for them (see
/// [`take_coop_yield`]).
pub(crate) fn note_coop_yield() {
    COOP_YIELD.with(|c| c.set(true));
}

/// Reads and clears the mark of [`note_coop_yield`].
pub(crate) fn take_coop_yield() -> bool {
    COOP_YIELD.with(|c| c.replace(false))
}

/// Takes this thread's next task (the driver polling here).
pub(crate) fn take_next() -> Option<TaskPtr> {
    SLOTS.with(Slots::take_next)
}

/// This thread's [`Slots`], for a driver's poll, which reads them for every task. The
/// caller keeps the reference for the duration of one call (the poll), on this thread.
///
/// (The loop of a driver's poll inside `SLOTS.with` counted more instructions per task
/// than the lookups it saved: the loop became a closure, and the poll of one task was no
/// longer inlined into it.)
#[inline]
pub(crate) fn slots<'a>() -> &'a Slots {
    let s: *const Slots = SLOTS.with(|s| s as *const Slots);
    // SAFETY: `SLOTS` is initialized by a constant and has no destructor: its storage is
    // this thread's until the thread ends (or, where thread-locals are freed at the
    // thread's exit, until its thread-local destructors run, which cannot happen in the
    // middle of the caller's call). `Slots` is not `Sync`, so the reference cannot leave
    // the thread, and the caller keeps it for one call only.
    unsafe { &*s }
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
    let p = CURRENT.with(|c| c.task.get());
    // SAFETY: a non-null pointer was set by `enter_task` from a reference that outlives the
    // guard that restores the previous value, and we are inside that scope.
    unsafe { p.as_ref() }.map(|t| TaskInfo { task: t.clone() })
}

/// An identity of the running task (distinct among live tasks), for data objects that
/// remember which task may use them; `None` outside tasks.
pub fn current_task_key() -> Option<usize> {
    let p = CURRENT.with(|c| c.task.get());
    // SAFETY: as in `current_task`.
    unsafe { p.as_ref() }.map(|t| TaskArc::as_ptr(t) as *const () as usize)
}

/// The device the running task was placed on: `cpu:0` outside tasks.
///
/// Virtual GPUs report `gpu:i` like real ones.
pub fn current_device() -> Device {
    running_device().unwrap_or(Device::CPU)
}

/// A description of a task: its name, device and constraints. Displays as `Task(T[cpu, 0])`.
#[derive(Clone)]
pub struct TaskInfo {
    task: TaskPtr,
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
