//! Wakers of pollers (tasks and `block_on` futures), counted and uncounted.
//!
//! A poller's waker comes in two kinds that wake the same way and differ in what cloning
//! them means for stall detection (`graph::activity`):
//! - *counted*: the waker a poll hands to the polled future. Every clone made from it is
//!   code outside the runtime keeping a way to wake the poller (a timer, a channel, another
//!   thread), and is counted in the poller's activity for as long as it lives;
//! - *uncounted*: what the runtime's own futures (task handles, ids, spaces) register on
//!   the nodes they await. The runtime knows it can wake through those.
//!
//! A task's waker points at its header (a thin pointer; the header's node table turns it
//! back into the task), a `block_on` future's at its [`MainPoller`].
//!
//! # Safety
//! Every raw waker made here holds one strong reference to what its data pointer points at
//! (the task's `Arc`, or the `MainPoller`'s), taken by `clone` and released by `drop` or
//! `wake`, except the borrowed waker of a poll, which is never dropped and lives only while
//! the poller holds its own reference.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use atomic_waker::AtomicWaker;

use super::context::{self, PollerRef};
use super::counters::Counters;
use crate::graph::activity::{Activity, Woken};
use crate::graph::arc::TaskPtr;
use crate::graph::node::Header;

static TASK_COUNTED: RawWakerVTable = RawWakerVTable::new(
    task_clone_counted,
    task_wake_counted,
    task_wake_by_ref,
    task_drop_counted,
);
static TASK_UNCOUNTED: RawWakerVTable = RawWakerVTable::new(
    task_clone_uncounted,
    task_wake_uncounted,
    task_wake_by_ref,
    task_drop_uncounted,
);

/// # Safety
/// `p` is the header of a live task (module safety).
unsafe fn hdr<'a>(p: *const ()) -> &'a Header {
    // SAFETY: per the contract.
    unsafe { &*(p as *const Header) }
}

unsafe fn task_clone_counted(p: *const ()) -> RawWaker {
    // SAFETY: `p` is a live header (module safety); the new waker takes a reference.
    let h = unsafe { hdr(p) };
    // SAFETY: as above.
    unsafe { (h.vt.inc)(h) };
    if h.act.clone_counted()
        && let Some(w) = h.waking()
    {
        w.0.tokens(1);
    }
    RawWaker::new(p, &TASK_COUNTED)
}

unsafe fn task_drop_counted(p: *const ()) {
    // SAFETY: `p` is a live header; this waker owns one reference, released last.
    let h = unsafe { hdr(p) };
    if h.act.drop_counted()
        && let Some(w) = h.waking()
    {
        w.0.tokens(-1);
    }
    // SAFETY: releases the reference this waker held.
    unsafe { (h.vt.dec)(h) };
}

unsafe fn task_wake_counted(p: *const ()) {
    // SAFETY: as `task_wake_by_ref`, then `task_drop_counted` releases this waker.
    unsafe {
        task_wake_by_ref(p);
        task_drop_counted(p);
    }
}

unsafe fn task_wake_by_ref(p: *const ()) {
    // SAFETY: `p` is a live header (module safety).
    let h = unsafe { hdr(p) };
    if let Woken::Schedule { took_token } = h.act.wake()
        && let Some(w) = h.waking()
    {
        // SAFETY: `h` is the header of a live task; `to_arc` takes a new reference.
        let task = unsafe { (h.vt.to_arc)(h) };
        w.0.woken(task, took_token);
    }
}

unsafe fn task_clone_uncounted(p: *const ()) -> RawWaker {
    // SAFETY: `p` is a live header; the new waker takes a reference.
    unsafe {
        let h = hdr(p);
        (h.vt.inc)(h);
    }
    RawWaker::new(p, &TASK_UNCOUNTED)
}

unsafe fn task_drop_uncounted(p: *const ()) {
    // SAFETY: releases the reference this waker held.
    unsafe {
        let h = hdr(p);
        (h.vt.dec)(h);
    }
}

unsafe fn task_wake_uncounted(p: *const ()) {
    // SAFETY: wake, then release this waker's reference.
    unsafe {
        task_wake_by_ref(p);
        task_drop_uncounted(p);
    }
}

/// # Safety
/// `p` is the header of a live task.
unsafe fn task_uncounted(p: *const ()) -> Waker {
    // SAFETY: `task_clone_uncounted` takes the reference the new waker owns.
    unsafe { Waker::from_raw(task_clone_uncounted(p)) }
}

/// The waker a poll of `task` hands to its body (counted clones), borrowed: it holds no
/// reference of its own, so it must not outlive the caller's reference to the task.
pub(crate) fn task_poll_waker(task: &TaskPtr) -> ManuallyDrop<Waker> {
    let p = task.header() as *const Header as *const ();
    // SAFETY: the waker is never dropped (ManuallyDrop) and the caller holds a reference to
    // the task while it uses it; clones take their own references.
    ManuallyDrop::new(unsafe { Waker::from_raw(RawWaker::new(p, &TASK_COUNTED)) })
}

/// The poller description of `task`, for the thread-local context.
pub(crate) fn task_poller(task: &TaskPtr) -> PollerRef {
    let h = task.header();
    PollerRef {
        act: &h.act,
        data: h as *const Header as *const (),
        uncounted: task_uncounted,
        rt_id: h.rt_id,
    }
}

/// The poller of a `block_on` future.
pub(crate) struct MainPoller {
    pub(crate) act: Activity,
    /// The waker of the thread blocked in `block_on`.
    pub(crate) thread: AtomicWaker,
    /// Woken and not polling yet: counted in the runtime's `Counters::main_woken`.
    woken: AtomicBool,
    counters: Arc<Counters>,
    rt_id: u32,
}

static MAIN_COUNTED: RawWakerVTable = RawWakerVTable::new(
    main_clone_counted,
    main_wake_counted,
    main_wake_by_ref,
    main_drop_counted,
);
static MAIN_UNCOUNTED: RawWakerVTable = RawWakerVTable::new(
    main_clone_uncounted,
    main_wake_uncounted,
    main_wake_by_ref,
    main_drop_uncounted,
);

/// # Safety
/// `p` comes from `Arc::<MainPoller>::as_ptr` of a live poller.
unsafe fn main_of<'a>(p: *const ()) -> &'a MainPoller {
    // SAFETY: per the contract.
    unsafe { &*(p as *const MainPoller) }
}

unsafe fn main_clone_counted(p: *const ()) -> RawWaker {
    // SAFETY: `p` is a live poller; the new waker takes a reference.
    let m = unsafe {
        Arc::increment_strong_count(p as *const MainPoller);
        main_of(p)
    };
    if m.act.clone_counted() {
        m.counters.add(0, 1);
    }
    RawWaker::new(p, &MAIN_COUNTED)
}

unsafe fn main_drop_counted(p: *const ()) {
    // SAFETY: `p` is a live poller; this waker's reference is released last.
    let m = unsafe { main_of(p) };
    if m.act.drop_counted() {
        m.counters.add(0, -1);
    }
    // SAFETY: releases this waker's reference.
    unsafe { Arc::decrement_strong_count(p as *const MainPoller) };
}

unsafe fn main_wake_counted(p: *const ()) {
    // SAFETY: wake, then release this waker.
    unsafe {
        main_wake_by_ref(p);
        main_drop_counted(p);
    }
}

unsafe fn main_wake_by_ref(p: *const ()) {
    // SAFETY: `p` is a live poller.
    let m = unsafe { main_of(p) };
    if let Woken::Schedule { took_token } = m.act.wake() {
        if took_token {
            m.counters.add(0, 1);
        }
        if !m.woken.swap(true, Ordering::Relaxed) {
            m.counters.main_woken(true);
        }
        m.thread.wake();
    }
}

unsafe fn main_clone_uncounted(p: *const ()) -> RawWaker {
    // SAFETY: `p` is a live poller; the new waker takes a reference.
    unsafe { Arc::increment_strong_count(p as *const MainPoller) };
    RawWaker::new(p, &MAIN_UNCOUNTED)
}

unsafe fn main_drop_uncounted(p: *const ()) {
    // SAFETY: releases this waker's reference.
    unsafe { Arc::decrement_strong_count(p as *const MainPoller) };
}

unsafe fn main_wake_uncounted(p: *const ()) {
    // SAFETY: wake, then release this waker.
    unsafe {
        main_wake_by_ref(p);
        main_drop_uncounted(p);
    }
}

/// # Safety
/// `p` comes from `Arc::<MainPoller>::as_ptr` of a live poller.
unsafe fn main_uncounted(p: *const ()) -> Waker {
    // SAFETY: `main_clone_uncounted` takes the reference the new waker owns.
    unsafe { Waker::from_raw(main_clone_uncounted(p)) }
}

impl MainPoller {
    pub(crate) fn new(counters: Arc<Counters>, rt_id: u32) -> Arc<MainPoller> {
        Arc::new(MainPoller {
            act: Activity::new(),
            thread: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            counters,
            rt_id,
        })
    }

    /// The thread runs (it starts a poll of the future, or returns): no longer counted as
    /// woken.
    pub(crate) fn running(&self) {
        if self.woken.swap(false, Ordering::Relaxed) {
            self.counters.main_woken(false);
        }
    }

    /// The waker a poll of the future hands to it (borrowed, like [`task_poll_waker`]).
    pub(crate) fn poll_waker(self: &Arc<Self>) -> ManuallyDrop<Waker> {
        let p = Arc::as_ptr(self) as *const ();
        // SAFETY: never dropped; the caller holds `self` while it uses the waker.
        ManuallyDrop::new(unsafe { Waker::from_raw(RawWaker::new(p, &MAIN_COUNTED)) })
    }

    pub(crate) fn poller(self: &Arc<Self>) -> PollerRef {
        PollerRef {
            act: &self.act,
            data: Arc::as_ptr(self) as *const (),
            uncounted: main_uncounted,
            rt_id: self.rt_id,
        }
    }
}

/// A combinator's waker (`FuturesUnordered`'s), registered on a node of the runtime for an
/// await inside a task's poll: while it is registered, the task counts as awaiting a task
/// (`Header::awaits_combined`), even through polls that do not poll that await (a
/// `FuturesUnordered` polls only the futures woken), so that it lends its VCUs while it
/// waits as any task awaiting tasks does. Without that, a GPU task (which keeps its VCUs
/// while it waits on anything else) awaiting children through a `FuturesUnordered` kept
/// them from the grandchildren its children awaited, and the tree waited for good.
struct Combined {
    inner: Waker,
    task: TaskPtr,
}

/// A [`Combined`] waker of `w` for an await of a node of runtime `node_rt` inside the poll
/// of a task of that runtime on this thread; `None` outside such a poll.
fn combined(w: &Waker, node_rt: u32) -> Option<Waker> {
    let task = context::running_task()?;
    if task.header().rt_id != node_rt {
        return None;
    }
    let waking =
        context::with_rt(|rt| rt.filter(|rt| rt.id == node_rt).map(|rt| rt.waking.clone()))?;
    // SAFETY: the task is polled on this thread (it is the running task), and its poll
    // holds its run token for as long as it runs here, whether or not the driver let go of
    // the thread during the poll.
    unsafe { task.header().combined_await(&waking) };
    Some(Waker::from(Arc::new(Combined {
        inner: w.clone(),
        task,
    })))
}

impl std::task::Wake for Combined {
    fn wake(self: Arc<Self>) {
        // The await counted off first (if this was its last reference): the task, woken
        // and polled at once on another thread, finds its count right.
        let inner = self.inner.clone();
        drop(self);
        inner.wake();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.inner.wake_by_ref();
    }
}

impl Drop for Combined {
    fn drop(&mut self) {
        self.task.header().combined_done();
    }
}

/// The poller being polled on this thread, read once for the steps of one await of a node
/// by one of the runtime's futures (task handles, ids, spaces): the waker it registers,
/// whether the stall resolver failed it, and that it waits on a task. (Each step reading
/// the poller on its own read the thread-local and the running task three times per await.)
#[derive(Clone, Copy)]
pub(crate) struct Awaiting(Option<PollerRef>);

impl Awaiting {
    /// The current poller.
    #[inline]
    pub(crate) fn now() -> Awaiting {
        Awaiting(context::poller())
    }

    /// The waker to register on a node of runtime `node_rt` while the future waits: an
    /// uncounted waker of the poller when `cx` carries the poller's own waker and the node
    /// belongs to the poller's runtime, otherwise a clone of `cx`'s (a task of another
    /// runtime is an outside event).
    pub(crate) fn waker(self, cx: &Context<'_>, node_rt: u32) -> Waker {
        let w = cx.waker();
        match self.0 {
            Some(p) if p.rt_id == node_rt && node_rt != 0 && w.data() == p.data => {
                // SAFETY: `p.data` is the live poller being polled on this thread (the
                // context guard lives for the poll).
                unsafe { (p.uncounted)(p.data) }
            }
            Some(p) if p.rt_id == node_rt && node_rt != 0 => {
                // A waker not the poller's own: a combinator's (`FuturesUnordered`), or an
                // executor's nested in the poll (`futures::executor::block_on` inside
                // `tokio::task::block_in_place`), which blocks the thread until the node
                // finishes. What this thread's driver holds for after the poll goes to the
                // other drivers.
                if context::polling_task(node_rt) {
                    context::with_rt(|rt| {
                        if let Some(rt) = rt.filter(|rt| rt.id == node_rt) {
                            rt.release_held();
                        }
                    });
                }
                // (Whether or not the driver let go of this thread above, for this await or
                // an earlier one of the same poll: a combinator polls several.)
                combined(w, node_rt).unwrap_or_else(|| w.clone())
            }
            _ => w.clone(),
        }
    }

    /// The future returns `Pending` waiting on `node`, a node of runtime `node_rt`: the
    /// poller awaits tasks, if the node is of its runtime. With `claims`, the poller's loan
    /// may go to the node first if it waits for admission (a handle, an id); without, the
    /// node is awaited in no particular order (a member of a space awaited as a whole): the
    /// loan then goes to the node's device, where the waiting tasks take it in their order
    /// (going to the node first would start the space's tasks in the order of its table
    /// rather than as they were spawned).
    ///
    /// Awaited by a poller that lends no VCUs (a `block_on` future, a future started with
    /// `tokio::spawn`), the node is nobody's to claim ([`unclaimed`]).
    #[inline]
    pub(crate) fn pending_on(self, node_rt: u32, node: impl FnOnce() -> TaskPtr, claims: bool) {
        let ours = node_rt != 0 && self.0.is_some_and(|p| p.rt_id == node_rt);
        if !context::in_task_poll() {
            return Self::pending_outside(node(), claims, ours);
        }
        if ours {
            context::note_blocked(claims.then(node));
        }
    }

    /// [`pending_on`](Self::pending_on) outside a task's poll.
    #[cold]
    #[inline(never)]
    fn pending_outside(node: TaskPtr, claims: bool, ours: bool) {
        unclaimed(&node);
        if ours {
            context::note_blocked(claims.then_some(node));
        }
    }

    /// Whether the stall resolver failed one of the poller's awaits (taking it): the await
    /// asking resolves to `Deadlock`.
    #[inline]
    pub(crate) fn failed(self) -> bool {
        match self.0 {
            // SAFETY: the poller's activity lives while it is polled on this thread.
            Some(p) => unsafe { &*p.act }.take_await_failure(),
            None => false,
        }
    }
}

/// Marks `task` as nobody's to claim in its claim word: its handle is gone, or a poller
/// that lends no VCUs awaits it. Queued claimable in a shard already, where only a task
/// awaiting it would take it, it moves to the central part of the lane
/// ([`RtInner::unshard`](super::RtInner::unshard)); not queued yet, its queuer queues it
/// there (see `admission::mark_outside`).
#[cold]
#[inline(never)]
pub(crate) fn unclaimed(task: &TaskPtr) {
    let h = task.header();
    if crate::scheduler::admission::mark_outside(&h.lane) {
        let rt_id = h.rt_id;
        context::with_rt(|rt| {
            if let Some(rt) = rt.filter(|rt| rt.id == rt_id) {
                rt.unshard(task);
            }
        });
    }
}

/// Polls `f`, a runtime future's step (the await of a task handle, an id, a range or a
/// space), as one operation of Tokio's cooperative budget, as Tokio's own `JoinHandle` is:
/// once the budget of the Tokio task polling it (a driver, for code inside tasks) is spent,
/// it answers `Pending` and is woken when that task yields. So a loop whose awaits all find
/// their tasks finished still lets the worker run other work, timers and I/O included.
/// Outside a Tokio runtime nothing is counted.
///
/// Only an await through the polled task's own waker spends it (a direct `.await` in its
/// body, or `select!` / `join!` there): Tokio delivers the wake of an await refused for
/// want of budget when the Tokio task polling it yields, which an executor nested in the
/// task's poll (`futures::executor::block_on` of a finished handle) would wait for
/// forever, and a no-op waker (`now_or_never`) would never see. A task shares the budget of
/// its driver's poll, so it may start a poll with none left.
#[inline(always)]
pub(crate) fn cooperative<T>(
    cx: &mut Context<'_>,
    f: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> Poll<T> {
    let own = context::poller().is_some_and(|p| cx.waker().data() == p.data);
    if !own {
        return f(cx);
    }
    let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
    let r = f(cx);
    if r.is_ready() {
        coop.made_progress();
    }
    r
}
