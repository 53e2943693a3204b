//! Task nodes: the part of a task every other part of the runtime sees - its lifecycle,
//! dependency counter, dependents, outcome, constraints and activity.
//!
//! # Invariants
//! - `state` moves WAITING -> READY -> DONE, or WAITING -> DONE (failed before running); a
//!   GPU task whose body returned moves READY -> FENCED -> COMPLETING -> DONE while its
//!   fence is pending. Each move is one `transition_to_*` method, and only the winner of a
//!   transition acts on it: READY is taken once, when the dependency counter reaches zero;
//!   DONE without running once, by whoever fails the task first; COMPLETING once, by
//!   whoever first sees the fence done.
//! - `pending` counts unfinished dependencies plus one guard held by the spawner until every
//!   dependency is registered, so a task cannot become ready while it is being wired.
//! - The outcome is published by setting `PUBLISHED` (and `links.err` for a failure) under
//!   the `links` lock together with taking the dependents and the handle's waker, so a
//!   dependent or handle registering concurrently is either taken at completion or sees the
//!   outcome - never neither, never both. A success also sets `SUCCEEDED`, with `Release`:
//!   a reader that sees it (`Acquire`) knows the outcome, final and visible with all the
//!   task did, without the lock.
//! - The join protocol (`join_state`): the task's output is dropped exactly once, by the
//!   completer if the handle is gone when the task completes, else by the handle (when it
//!   takes the output, or when it is dropped after completion).

use std::cell::UnsafeCell;
use std::fmt;
use std::sync::Arc;
use std::task::Waker;

use smallvec::SmallVec;

use super::activity::Activity;
use super::arc::{TaskArc, TaskPtr};
use crate::device::backend::Fence;
use crate::device::{Demand, Device, SlotMask};
use crate::error::TaskError;
use crate::key::Key;
use crate::loom::sync::{
    AtomicPtr, AtomicU8, AtomicU16, AtomicU32, AtomicUsize, Ordering, SpinLock,
};
use crate::scheduler::idle::HeldMark;

/// What a finished task resolved to, as dependents and awaiters see it.
pub(crate) type Outcome = Result<(), Arc<TaskError>>;

const WAITING: u8 = 0;
const READY: u8 = 1;
const FENCED: u8 = 2;
const COMPLETING: u8 = 3;
const DONE: u8 = 4;

/// A handle may still take the output.
const JOIN_INTEREST: u8 = 1;
/// The task completed (its output, if any, is stored).
const JOIN_COMPLETE: u8 = 2;
/// A handle waits for the task (its completion is wanted promptly).
const JOIN_AWAITED: u8 = 4;
/// Placeholders: a task was spawned under the id (the forward reference resolved).
const RESOLVED: u8 = 8;
/// The outcome is published (written and read under the `links` lock).
const PUBLISHED: u8 = 16;
/// An awaiter spins on the task's fence (the fence poller leaves it alone meanwhile).
const SPUN: u8 = 32;
/// The outcome is published and is a success: read without the `links` lock.
const SUCCEEDED: u8 = 64;
/// Its handle asked for the task to be aborted (`TaskHandle::abort`): its body is not
/// polled again.
const ABORTED: u8 = 128;

/// A mark of a task's lent VCUs: lent while it waited on something outside the runtime
/// (see `Header::lend_outside`). (VCUs take 20 bits: `VCU_ONE` is a million.)
const LENT_OUTSIDE: u32 = 1 << 31;
const _: () = assert!(crate::scheduler::admission::VCU_ONE < LENT_OUTSIDE);

/// A VCU demand resolved from the chosen device's default at mapping time.
pub(crate) const DEFAULT_VCU: u32 = u32::MAX;

/// A task's name: its id in a task space, or a sequence number.
pub(crate) enum Name {
    Anon(u64),
    /// The space's name (a thin pointer) and the key.
    Id(Arc<String>, Key),
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Anon(n) => write!(f, "#{n}"),
            Name::Id(space, key) => write!(f, "{space}[{key}]"),
        }
    }
}

/// Who to tell when a node finishes.
pub(crate) enum Dependent {
    /// A task (or a placeholder) counting this one among its dependencies.
    Task(TaskPtr),
    /// Somebody awaiting this node through an id, a range or a space; removed again when
    /// the await is dropped first.
    Waiter(Arc<atomic_waker::AtomicWaker>),
}

/// Whether dependent `d` is a task (or placeholder) that finished.
fn dependent_done(d: &Dependent) -> bool {
    matches!(d, Dependent::Task(t) if t.header().is_done())
}

/// A node's dependents: a small vector whose drop, where it holds nothing and no memory
/// (most tasks finish with no dependents left, or had none), is a check inline instead of
/// a call.
#[derive(Default)]
pub(crate) struct Dependents(std::mem::ManuallyDrop<SmallVec<[Dependent; 2]>>);

impl Dependents {
    /// Whether dropping the list has nothing to do: no dependents, no memory of its own.
    #[inline(always)]
    fn is_bare(&self) -> bool {
        self.0.is_empty() && !self.0.spilled()
    }
}

impl Drop for Dependents {
    #[inline(always)]
    fn drop(&mut self) {
        if !self.is_bare() {
            // SAFETY: the vector is dropped once, here, and never used again (`self` is
            // being dropped).
            unsafe { std::mem::ManuallyDrop::drop(&mut self.0) }
        }
    }
}

impl std::ops::Deref for Dependents {
    type Target = SmallVec<[Dependent; 2]>;
    #[inline(always)]
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Dependents {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl IntoIterator for Dependents {
    type Item = Dependent;
    type IntoIter = Consume<[Dependent; 2]>;
    #[inline(always)]
    fn into_iter(mut self) -> Self::IntoIter {
        // (`self` is left bare: its drop does nothing.)
        Consume::new(std::mem::take(&mut *self.0))
    }
}

/// A small vector's items by value, whose drop, once they were all taken from a vector
/// held inline (a task's dependents or dependencies, mostly), is a check inline instead of
/// a call.
pub(crate) struct Consume<A: smallvec::Array> {
    it: std::mem::ManuallyDrop<smallvec::IntoIter<A>>,
    spilled: bool,
}

impl<A: smallvec::Array> Consume<A> {
    #[inline(always)]
    pub(crate) fn new(v: SmallVec<A>) -> Self {
        Consume {
            spilled: v.spilled(),
            it: std::mem::ManuallyDrop::new(v.into_iter()),
        }
    }
}

impl<A: smallvec::Array> Iterator for Consume<A> {
    type Item = A::Item;
    #[inline(always)]
    fn next(&mut self) -> Option<A::Item> {
        self.it.next()
    }
    #[inline(always)]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.it.size_hint()
    }
}

impl<A: smallvec::Array> ExactSizeIterator for Consume<A> {}

impl<A: smallvec::Array> Drop for Consume<A> {
    #[inline(always)]
    fn drop(&mut self) {
        // Items left, or memory of its own: the iterator's drop frees them. Otherwise it
        // has nothing to do.
        if self.spilled || self.it.len() > 0 {
            // SAFETY: the iterator is dropped once, here, and never used again (`self` is
            // being dropped).
            unsafe { std::mem::ManuallyDrop::drop(&mut self.it) }
        }
    }
}

impl Links {
    /// Whether dropping the links has nothing to do.
    #[inline(always)]
    fn is_bare(&self) -> bool {
        self.err.is_none() && self.join.is_none() && self.gpu.is_none() && self.dependents.is_bare()
    }
}

pub(crate) struct Links {
    pub(crate) dependents: Dependents,
    /// The error of a failed task, once published (`PUBLISHED` tells a published success
    /// from no outcome yet).
    err: Option<Arc<TaskError>>,
    /// The waker of the task's `TaskHandle`, woken at completion.
    join: Option<Waker>,
    /// GPU tasks only (boxed: most tasks never need it).
    gpu: Option<Box<GpuLinks>>,
}

#[derive(Default)]
struct GpuLinks {
    /// The fence after the work of a body that returned, until completion.
    fence: Option<Arc<dyn Fence>>,
    /// Fences of GPU dependencies released early (runahead), for the stream to wait on.
    waits: SmallVec<[Arc<dyn Fence>; 2]>,
}

impl GpuLinks {
    /// Drops the fences it holds (keeping the waits' capacity).
    fn clear(&mut self) {
        self.fence = None;
        self.waits.clear();
    }
}

thread_local! {
    /// The GPU links of the last GPU task whose memory this thread dropped or reused,
    /// emptied, for the next GPU task it spawns. A GPU task's links are allocated where it
    /// is spawned and outlive its completion on a worker: a thread spawning GPU tasks in a
    /// loop takes them back with the memory of its finished tasks (the pool of spent
    /// tasks, or the tasks it kept), each spawn dropping one task's links and taking them
    /// for its own, rather than allocating anew while the workers free the old ones
    /// through the allocator's slow path for another thread's memory.
    static SPARE_GPU_LINKS: std::cell::Cell<Option<Box<GpuLinks>>> =
        const { std::cell::Cell::new(None) };
}

/// Empty GPU links: the ones this thread kept ([`keep_gpu_links`]), or new ones.
fn new_gpu_links() -> Box<GpuLinks> {
    let kept = if cfg!(parla_loom) {
        None
    } else {
        SPARE_GPU_LINKS.try_with(|c| c.take()).ok().flatten()
    };
    kept.unwrap_or_default()
}

/// Empties `g` and keeps it for [`new_gpu_links`].
#[inline(never)]
fn keep_gpu_links(mut g: Box<GpuLinks>) {
    if g.fence.is_some() || !g.waits.is_empty() {
        g.clear();
    }
    if cfg!(parla_loom) {
        return;
    }
    // (The newest is kept: any other is freed.)
    if let Ok(Some(old)) = SPARE_GPU_LINKS.try_with(|c| c.replace(Some(g))) {
        free_gpu_links(old);
    }
}

#[cold]
#[inline(never)]
fn free_gpu_links(g: Box<GpuLinks>) {
    drop(g);
}

/// What [`Header::publish`] takes from a node that finished.
pub(crate) struct Published {
    /// The dependents to tell.
    pub(crate) dependents: Dependents,
    /// The waker of the task's handle.
    pub(crate) join: Option<Waker>,
    /// The join protocol's completion: no handle will take the output (it was dropped
    /// before), so the completer drops it now.
    pub(crate) drop_output: bool,
}

/// What registering a dependent found.
pub(crate) enum Added {
    /// Registered: the dependent will be told.
    Registered,
    /// The node already finished.
    Done(Outcome),
    /// The node's GPU work is enqueued behind this fence, and the dependent runs on GPUs
    /// only: it need not wait on the host (runahead).
    Fenced(Arc<dyn Fence>),
}

/// Whether a finished task's memory is kept for a later spawn (see
/// [`Header::recycle`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Recycle {
    /// Freed as usual: a task with declared data or a span, a large one, a placeholder.
    No,
    /// A small plain task spawned outside the runtime's drivers (from `block_on`,
    /// mostly): its memory is best freed, or reused, where such tasks are spawned - the
    /// pool of spent tasks that the drivers fill (`RtInner::retire`).
    Outside,
    /// A small plain task spawned by a task (inside a driver): kept by the thread that
    /// lets go of it last (a worker, mostly), for that thread's next spawns.
    Inside,
}

/// Static kind of a node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Task,
    /// Stands for an id referenced before it was spawned.
    Placeholder,
}

/// Per-type operations on a node reached through a thin pointer to its header (a waker's
/// data pointer): every node type is `#[repr(C)]` with the header first.
pub(crate) struct NodeVt {
    /// A new strong reference to the node.
    pub(crate) to_arc: unsafe fn(*const Header) -> TaskPtr,
    /// Adds one to the node's strong count.
    pub(crate) inc: unsafe fn(*const Header),
    /// Drops one strong reference.
    pub(crate) dec: unsafe fn(*const Header),
}

/// Whatever runs a woken task: the executor implements it; a node keeps one once it has
/// been polled and left pending, so that wakers can schedule it from any thread.
pub(crate) trait Schedule: Send + Sync + 'static {
    /// `task` was woken and takes part again (its activity moved to NOTIFIED);
    /// `took_token`: it was parked and takes a busy token now.
    fn woken(&self, task: TaskPtr, took_token: bool);

    /// A task's activity took (`1`) or dropped (`-1`) a busy token outside a poll (an
    /// outside clone of its waker was made or dropped).
    fn tokens(&self, delta: i64);
}

/// What a started task keeps between polls (set by the executor when the task first
/// returns `Pending`).
pub(crate) struct RunState {
    /// GPU tasks: the backend's execution state (stream, context).
    pub(crate) exec: Option<Box<dyn crate::device::backend::GpuExec>>,
}

/// A traced task's span (made at spawn when a subscriber wants task spans).
pub(crate) struct TaskTrace {
    #[cfg(feature = "tracing")]
    pub(crate) span: tracing::Span,
}

#[cfg(feature = "tracing")]
impl TaskTrace {
    /// Records the `completed` step of a task that never ran, failed with `err` (a failed
    /// dependency, an abort, a cancel), before that outcome is published: whoever it wakes,
    /// or an await that finds it done, may drop the runtime (and close its trace) at once.
    /// The event goes to the subscriber that recorded the task's span (the runtime's own
    /// trace, or the one in scope at its spawn), whichever thread fails the task.
    #[cold]
    #[inline(never)]
    pub(crate) fn completed_unrun(&self, err: &TaskError) {
        self.span.with_subscriber(|(_, d)| {
            tracing::dispatcher::with_default(d, || {
                tracing::trace!(target: "parla::task", parent: &self.span, step = "completed", error = %err)
            })
        });
    }
}

/// The scheduler a node is woken into; shared by the nodes of one runtime.
pub(crate) struct Waking(pub(crate) Arc<dyn Schedule>);

/// What a task keeps once a poll of it returned `Pending` (made then, once): where wakers
/// schedule it, and its run state between polls.
struct Pended {
    waking: Arc<Waking>,
    /// Touched only by the run-token holder.
    run: UnsafeCell<Option<RunState>>,
    /// Where the task is in the runtime's set of pollers (`runtime::parked`).
    poller_slot: AtomicU32,
    /// It keeps its VCUs while it waits outside the runtime, and whether it is listed as
    /// such (`scheduler::idle`).
    held: HeldMark,
    /// Its place in its shard's list of held tasks while listed (`runtime::parked`),
    /// written and read under that list's lock.
    held_pos: AtomicU32,
    /// Awaits of unfinished tasks of its runtime that its polls registered through a waker
    /// not its own (a combinator's: `FuturesUnordered`), still registered (see
    /// `runtime::waker::Awaiting::waker`).
    combined: AtomicUsize,
}

/// How many emptied [`Pended`] allocations a thread keeps ([`PENDED`]).
const PENDED_KEPT: usize = 64;

thread_local! {
    /// Allocations of [`Pended`] this thread emptied, for the next tasks that pend here.
    /// Most tasks that wait are freed on another thread than the one where they first
    /// waited (their memory is kept, or freed, by whoever lets go of them last): there, the
    /// allocator would take the free through its slow path, and the next task to wait
    /// would allocate again.
    // (Boxes on purpose: what is kept is the allocations.)
    #[allow(clippy::vec_box)]
    static PENDED: std::cell::RefCell<Vec<Box<std::mem::MaybeUninit<Pended>>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `p` in an allocation this thread emptied earlier, or in a new one.
#[inline]
fn new_pended(p: Pended) -> Box<Pended> {
    let kept = if cfg!(parla_loom) {
        None
    } else {
        PENDED
            .try_with(|c| c.try_borrow_mut().ok().and_then(|mut v| v.pop()))
            .ok()
            .flatten()
    };
    match kept {
        Some(b) => Box::write(b, p),
        None => Box::new(p),
    }
}

/// Drops what `p` holds (its run state, its reference to the runtime's scheduler) and
/// keeps the allocation for [`new_pended`], unless this thread keeps [`PENDED_KEPT`]
/// already. (Out of line: it runs for tasks that waited only, and every task's drop
/// inlines the check that calls it.)
#[inline(never)]
fn free_pended(p: Box<Pended>) {
    let raw = Box::into_raw(p);
    // SAFETY: `raw` is a live, owned `Pended` (from the box): its contents are dropped
    // once, here, and the allocation is then owned as an uninitialized one of the same
    // layout (`MaybeUninit<Pended>` has `Pended`'s), which never reads them again.
    let empty = unsafe {
        std::ptr::drop_in_place(raw);
        Box::from_raw(raw.cast::<std::mem::MaybeUninit<Pended>>())
    };
    if cfg!(parla_loom) {
        return;
    }
    let back = PENDED
        .try_with(|c| match c.try_borrow_mut() {
            Ok(mut v) if v.len() < PENDED_KEPT => {
                v.push(empty);
                None
            }
            _ => Some(empty),
        })
        .ok()
        .flatten();
    drop(back);
}

pub(crate) struct Header {
    pub(crate) vt: &'static NodeVt,
    state: AtomicU8,
    join_state: AtomicU8,
    pub(crate) kind: Kind,
    /// How urgent the task is (`TaskBuilder::priority`).
    pub(crate) priority: u8,
    /// The task declared data accesses (`Task::data` is `Some`): saves the virtual call
    /// for the others.
    pub(crate) has_data: bool,
    /// Whether the task's memory is kept for a later spawn to write its own task into once
    /// the task is let go of (`RtInner::retire`, `let_go_last`), and where.
    pub(crate) recycle: Recycle,
    /// Where the task stands in its device's task lane (its `admission::Claim` word: out,
    /// queued, or claimed by the parent awaiting it).
    pub(crate) lane: AtomicU8,
    /// The low bits of the ticket the task took as it queued in the central part of its
    /// device's task lane, or in its resume lane (it waits in one lane at a time): where an
    /// aborter looks for it there (see `admission::Claim::ticket_hint`). (In the header's
    /// padding.)
    pub(crate) ticket: AtomicU16,
    /// Slot of the device the task was mapped to; `u16::MAX` until mapped.
    device: AtomicU16,
    pending: AtomicU32,
    /// The runtime the node belongs to (0: none).
    pub(crate) rt_id: u32,
    /// VCUs asked for (fixed point), or `DEFAULT_VCU`.
    pub(crate) vcu: u32,
    /// VCUs reserved now (the device default resolved; 0 while lent).
    reserved_vcu: AtomicU32,
    /// VCUs lent back to the device while the task waits (on other tasks, or on something
    /// outside the runtime once other tasks waited for them: then with [`LENT_OUTSIDE`]).
    lent: AtomicU32,
    /// Allowed device slots.
    pub(crate) mask: SlotMask,
    /// Bytes of workspace asked for.
    pub(crate) mem: u64,
    pub(crate) act: Activity,
    /// (Dropped by hand: see the `Drop` impl.)
    links: std::mem::ManuallyDrop<SpinLock<Links>>,
    pub(crate) name: Name,
    /// The task's span, when it is traced. (Dropped by hand, only when there is one: see the
    /// `Drop` impl.)
    pub(crate) trace: std::mem::ManuallyDrop<Option<Box<TaskTrace>>>,
    /// Set once (`Box::into_raw`), by the run-token holder, when a poll first returns
    /// `Pending`; freed with the header.
    pended: AtomicPtr<Pended>,
}

// SAFETY: the run state behind `pended` is only touched by the run-token holder (one
// thread at a time, handed over through the injector or admission, which synchronise); the
// rest of `Pended` is immutable once published; every other field is `Sync`.
unsafe impl Sync for Header {}
// SAFETY: as above; the run state is `Send`.
unsafe impl Send for Header {}

impl Header {
    /// [`Header::drop`]'s drop of links that hold something. A GPU task's links go to this
    /// thread's spare (see `SPARE_GPU_LINKS`); often they were all its links held.
    #[inline(never)]
    fn drop_links(&mut self) {
        let gpu = self.links.with_mut(|l| l.gpu.take());
        let bare = gpu.is_some() && self.links.with_mut(|l| l.is_bare());
        if let Some(g) = gpu {
            keep_gpu_links(g);
        }
        if cfg!(parla_loom) || !bare {
            // SAFETY: the links are dropped once, here (`Header::drop` calls this once,
            // as the header is dropped), and never used again.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.links) }
        }
    }
}

impl Drop for Header {
    #[inline]
    fn drop(&mut self) {
        let p = self.pended.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: `p` came from `Box::into_raw` in `save_run` and is freed once, here
            // (`&mut self`: nobody else can reach it).
            free_pended(unsafe { Box::from_raw(p) });
        }
        // Most tasks end with links that hold nothing (no dependents left, no error, no
        // waker, no GPU links): checked here rather than in a call to their drop.
        if cfg!(parla_loom) || !self.links.with_mut(|l| l.is_bare()) {
            self.drop_links();
        }
        // Few tasks are traced: the check is inline, where the field's drop glue would be a
        // call on every task.
        if self.trace.is_some() {
            // SAFETY: dropped once, here, and never used again (`self` is being dropped).
            unsafe { std::mem::ManuallyDrop::drop(&mut self.trace) }
        }
    }
}

impl Header {
    #[inline]
    pub(crate) fn new(
        vt: &'static NodeVt,
        name: Name,
        kind: Kind,
        rt_id: u32,
        mask: SlotMask,
        vcu: u32,
        mem: u64,
    ) -> Header {
        Header {
            vt,
            state: AtomicU8::new(WAITING),
            join_state: AtomicU8::new(JOIN_INTEREST),
            kind,
            priority: 0,
            has_data: false,
            recycle: Recycle::No,
            lane: AtomicU8::new(crate::scheduler::admission::OUT),
            ticket: AtomicU16::new(0),
            device: AtomicU16::new(u16::MAX),
            pending: AtomicU32::new(1),
            rt_id,
            vcu,
            reserved_vcu: AtomicU32::new(0),
            lent: AtomicU32::new(0),
            mask,
            mem,
            act: Activity::new(),
            links: std::mem::ManuallyDrop::new(SpinLock::new(Links {
                dependents: Dependents::default(),
                err: None,
                join: None,
                gpu: None,
            })),
            name,
            trace: std::mem::ManuallyDrop::new(None),
            pended: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    // --- lifecycle -------------------------------------------------------------------

    pub(crate) fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == DONE
    }

    /// Whether the task still waits for dependencies (or is being wired).
    pub(crate) fn is_waiting(&self) -> bool {
        self.state.load(Ordering::Acquire) == WAITING
    }

    /// Counts `n` dependencies at once, before any of them is registered: the spawner's
    /// guard is all the counter holds then, and nothing else writes it until a dependency
    /// is registered (whose lock orders this store before that dependency's completion).
    /// Those found finished while wiring are given back with the guard
    /// ([`dependencies_done`](Self::dependencies_done)).
    #[inline]
    pub(crate) fn count_dependencies(&self, n: u32) {
        debug_assert_eq!(self.pending.load(Ordering::Relaxed), 1, "counted twice");
        self.pending.store(1 + n, Ordering::Relaxed);
    }

    /// Drops the spawn guard of a task without dependencies that no other thread can see
    /// yet (no id, no data, not handed on): it is READY, without read-modify-writes. It
    /// reaches other threads only through the queues it is handed to, which synchronise.
    #[inline]
    pub(crate) fn ready_unshared(&self) {
        debug_assert_eq!(
            self.pending.load(Ordering::Relaxed),
            1,
            "a dependency counted"
        );
        debug_assert_eq!(self.state.load(Ordering::Relaxed), WAITING);
        self.pending.store(0, Ordering::Relaxed);
        self.state.store(READY, Ordering::Relaxed);
    }

    /// One dependency finished successfully (or the spawn guard was dropped). Returns
    /// whether the task became ready with this call.
    #[inline]
    pub(crate) fn dependency_done(&self) -> bool {
        self.dependencies_done(1)
    }

    /// [`dependency_done`](Self::dependency_done) `n` times, in one step.
    #[inline]
    pub(crate) fn dependencies_done(&self, n: u32) -> bool {
        self.pending.fetch_sub(n, Ordering::AcqRel) == n && self.transition_to_ready()
    }

    fn transition_to_ready(&self) -> bool {
        self.state
            .compare_exchange(WAITING, READY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// WAITING -> DONE for a node that will not run (failed, or a placeholder mirroring its
    /// task). Returns whether this call won.
    pub(crate) fn claim_unrun(&self) -> bool {
        self.state
            .compare_exchange(WAITING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// READY (or COMPLETING) -> DONE, by the run-token holder.
    pub(crate) fn transition_to_done(&self) {
        self.state.store(DONE, Ordering::Release);
    }

    /// READY -> FENCED: the body returned and its GPU work is behind a fence. Only the
    /// run-token holder calls this.
    pub(crate) fn transition_to_fenced(&self) {
        self.state.store(FENCED, Ordering::Release);
    }

    /// Whether the body returned and its GPU work is pending behind a fence.
    #[inline]
    pub(crate) fn is_fenced(&self) -> bool {
        self.state.load(Ordering::Acquire) == FENCED
    }

    /// FENCED -> COMPLETING. Returns whether this call won (and must complete the task).
    pub(crate) fn transition_to_completing(&self) -> bool {
        self.state
            .compare_exchange(FENCED, COMPLETING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    // --- join protocol ---------------------------------------------------------------

    /// The handle is dropped. Returns whether it must drop the output itself (the task
    /// completed before).
    pub(crate) fn join_drop(&self) -> bool {
        self.join_state.fetch_and(!JOIN_INTEREST, Ordering::AcqRel) & JOIN_COMPLETE != 0
    }

    /// Whether a handle dropped now, of a task that is or may be claimable, should say so
    /// ([`join_drop`](Self::join_drop)) even when it has no output to drop, so that the
    /// task stops being [`claimable`](Self::claimable): the task has no id and had not
    /// completed (a relaxed read: one completing meanwhile only costs the update).
    #[inline]
    pub(crate) fn detach_on_drop(&self) -> bool {
        !matches!(self.name, Name::Id(..))
            && self.join_state.load(Ordering::Relaxed) & JOIN_COMPLETE == 0
    }

    /// Whether a lender may still claim the task from the task lane (see
    /// `Admission::queue`): its handle is alive, or it has an id, through which a task may
    /// await it. A task spawned by a task with its handle dropped at once (detached) and no
    /// id is nobody's to claim: it waits in the central part of the lane, where the
    /// turns that parents awaiting child after child give to waiting tasks find it
    /// (`context::gift_turn`).
    #[inline]
    pub(crate) fn claimable(&self) -> bool {
        matches!(self.name, Name::Id(..))
            || self.join_state.load(Ordering::Acquire) & JOIN_INTEREST != 0
    }

    /// Asks for the task to be aborted. Returns whether this call asked first.
    pub(crate) fn request_abort(&self) -> bool {
        self.join_state.fetch_or(ABORTED, Ordering::AcqRel) & ABORTED == 0
    }

    /// Whether the task was asked to abort (read before each poll of its body).
    #[inline]
    pub(crate) fn abort_requested(&self) -> bool {
        self.join_state.load(Ordering::Acquire) & ABORTED != 0
    }

    /// The error an aborted task resolves to.
    #[cold]
    pub(crate) fn aborted_error(&self) -> TaskError {
        TaskError::Aborted {
            task: self.name.to_string(),
        }
    }

    /// Whether the task was asked to abort, read after a poll that returned `Pending` and
    /// ended (`Activity::end_poll`) without a wake pending; if so, the poller wakes the
    /// task, whose next poll aborts it.
    ///
    /// The check at the start of a poll alone can miss a request: the poller writes its
    /// activity word and then reads the flag, the aborter writes the flag and then reads
    /// the word, and each may read the other's old value (the first poll's start is even a
    /// plain store). So both sides use read-modify-writes: the aborter sets the flag and
    /// then touches the activity word before its wake; the poller ends the poll and then
    /// reads the flag with this read-modify-write. If this one comes after the aborter's
    /// in the flag's order, it sees the flag. If it comes first, the aborter's reads it,
    /// so the end of the poll happened before the aborter's touch, and its wake sees the
    /// task idle or parked and schedules it. (Loom models: `activity::loom_test`,
    /// `abort_vs_first_poll` and `abort_vs_later_poll`.)
    pub(crate) fn abort_seen_after_poll(&self) -> bool {
        self.join_state.fetch_or(0, Ordering::AcqRel) & ABORTED != 0
    }

    /// A handle waits for the task.
    pub(crate) fn set_join_awaited(&self) {
        if self.join_state.load(Ordering::Relaxed) & JOIN_AWAITED == 0 {
            self.join_state.fetch_or(JOIN_AWAITED, Ordering::AcqRel);
        }
    }

    /// Whether a handle waits for the task.
    pub(crate) fn join_awaited(&self) -> bool {
        self.join_state.load(Ordering::Acquire) & JOIN_AWAITED != 0
    }

    /// An awaiter starts (`true`) or stops spinning on the task's fence.
    pub(crate) fn set_spun(&self, on: bool) {
        if on {
            self.join_state.fetch_or(SPUN, Ordering::AcqRel);
        } else {
            self.join_state.fetch_and(!SPUN, Ordering::AcqRel);
        }
    }

    /// Whether an awaiter spins on the task's fence: it will see the fence done first.
    pub(crate) fn is_spun(&self) -> bool {
        self.join_state.load(Ordering::Acquire) & SPUN != 0
    }

    /// Placeholders: marks the forward reference resolved. Returns false if it already was.
    pub(crate) fn resolve(&self) -> bool {
        self.join_state.fetch_or(RESOLVED, Ordering::AcqRel) & RESOLVED == 0
    }

    /// Placeholders: whether a task was spawned under the id.
    pub(crate) fn is_resolved(&self) -> bool {
        self.join_state.load(Ordering::Acquire) & RESOLVED != 0
    }

    /// Whether this is a placeholder whose id no task was spawned under yet (the runtime's
    /// registry of forward references holds tasks that took one over too).
    pub(crate) fn is_unspawned_id(&self) -> bool {
        self.kind == Kind::Placeholder && !self.is_resolved()
    }

    /// Whether the node finished successfully, known without the `links` lock (a success
    /// is final; see the module invariants).
    #[inline]
    pub(crate) fn succeeded(&self) -> bool {
        self.join_state.load(Ordering::Acquire) & SUCCEEDED != 0
    }

    /// Whether the node succeeded and a dependency on it can be dropped rather than wired
    /// (or a task space can let go of it): not traced, since the trace draws a task's
    /// dependencies from the nodes it was wired to.
    #[inline]
    pub(crate) fn succeeded_untraced(&self) -> bool {
        self.succeeded() && self.trace.is_none()
    }

    /// The outcome, if published; `l` is the `links` lock's guard.
    #[inline]
    fn outcome_in(&self, l: &Links) -> Option<Outcome> {
        if self.join_state.load(Ordering::Relaxed) & PUBLISHED == 0 {
            return None;
        }
        Some(match &l.err {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        })
    }

    /// The handle waits with `waker`: keeps it to wake at completion, or returns the
    /// outcome when it is published already.
    pub(crate) fn register_join(&self, waker: Waker) -> Option<Outcome> {
        if self.succeeded() {
            return Some(Ok(()));
        }
        let mut l = self.links.lock();
        if let Some(o) = self.outcome_in(&l) {
            return Some(o);
        }
        let old = l.join.replace(waker);
        drop(l);
        // Dropped outside the lock: a foreign waker's drop may run arbitrary code.
        drop(old);
        None
    }

    /// The handle is dropped: forgets its waker.
    pub(crate) fn unregister_join(&self) -> Option<Waker> {
        self.links.lock().join.take()
    }

    // --- dependents ------------------------------------------------------------------

    /// Whether the task runs on GPUs only (so it may start behind a GPU dependency's fence).
    pub(crate) fn gpu_only(&self) -> bool {
        self.kind == Kind::Task && self.mask != 0 && self.mask & 1 == 0
    }

    /// A task that runs on GPUs only gets its GPU links at spawn, on the spawning thread:
    /// the driver that releases it behind a fence, and its own driver, then only fill them
    /// in, rather than allocate them on the driver's hot path. (They are freed when the
    /// outcome is published, by whichever thread completes the task.)
    #[inline(always)]
    pub(crate) fn prepare_gpu(&self) {
        if self.gpu_only() {
            self.add_gpu_links();
        }
    }

    #[inline(never)]
    fn add_gpu_links(&self) {
        self.links.lock().gpu.get_or_insert_with(new_gpu_links);
    }

    /// Registers task `dep` as a dependent, or reports why it need not wait. (Its caller,
    /// `graph::wire`, skips a dependency it sees succeeded before it counts it.)
    #[inline]
    pub(crate) fn add_task_dependent(&self, dep: &TaskPtr) -> Added {
        let mut l = self.links.lock();
        if let Some(o) = self.outcome_in(&l) {
            return Added::Done(o);
        }
        if let Some(f) = l.gpu.as_ref().and_then(|g| g.fence.as_ref())
            && dep.header().gpu_only()
        {
            return Added::Fenced(f.clone());
        }
        l.dependents.push(Dependent::Task(dep.clone()));
        Added::Registered
    }

    /// Registers `dep` to be told when this node finishes. Returns the outcome instead when
    /// it already finished.
    pub(crate) fn add_dependent(&self, dep: Dependent) -> Option<Outcome> {
        if self.succeeded() {
            return Some(Ok(()));
        }
        let mut l = self.links.lock();
        match self.outcome_in(&l) {
            Some(o) => Some(o),
            None => {
                l.dependents.push(dep);
                None
            }
        }
    }

    /// A placeholder a task took over ([`take_over`](crate::graph::take_over)), claimed:
    /// publishes its success, and gives its dependents up to that task. (Not through
    /// [`publish`](Self::publish), whose one caller, on every task's path, then inlines
    /// it.)
    pub(crate) fn hand_over_dependents(&self) -> Dependents {
        let mut l = self.links.lock();
        self.join_state
            .fetch_or(PUBLISHED | SUCCEEDED | JOIN_COMPLETE, Ordering::AcqRel);
        std::mem::take(&mut l.dependents)
    }

    /// Makes `d` (the dependents of the placeholder this task took over: see
    /// [`take_over`](crate::graph::take_over)) this node's own.
    pub(crate) fn adopt_dependents(&self, d: Dependents) {
        let mut l = self.links.lock();
        if l.dependents.is_empty() {
            l.dependents = d;
        } else {
            l.dependents.extend(d);
        }
    }

    /// Removes waiter `w` (an await dropped before the node finished).
    pub(crate) fn remove_waiter(&self, w: &Arc<atomic_waker::AtomicWaker>) {
        let mut l = self.links.lock();
        if let Some(i) = l
            .dependents
            .iter()
            .position(|d| matches!(d, Dependent::Waiter(x) if Arc::ptr_eq(x, w)))
        {
            l.dependents.swap_remove(i);
            if l.dependents.is_empty() && l.dependents.spilled() {
                l.dependents = Dependents::default();
            }
        }
    }

    /// Publishes the outcome and takes the dependents to notify and the handle's waker.
    #[inline]
    pub(crate) fn publish(&self, outcome: Outcome) -> Published {
        let mut l = self.links.lock();
        // The join protocol's completion goes with the outcome, in one update.
        let bits = if outcome.is_ok() {
            PUBLISHED | SUCCEEDED | JOIN_COMPLETE
        } else {
            PUBLISHED | JOIN_COMPLETE
        };
        l.err = outcome.err();
        let before = self.join_state.fetch_or(bits, Ordering::AcqRel);
        if let Some(g) = l.gpu.as_deref_mut() {
            // Emptied, not freed: the allocation stays with the task, and goes to a thread's
            // spare GPU links when the task's memory is dropped or reused (`keep_gpu_links`).
            g.clear();
        }
        Published {
            dependents: std::mem::take(&mut l.dependents),
            join: l.join.take(),
            drop_output: before & JOIN_INTEREST == 0,
        }
    }

    #[inline]
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        let bits = self.join_state.load(Ordering::Acquire);
        if bits & SUCCEEDED != 0 {
            return Some(Ok(()));
        }
        if bits & PUBLISHED == 0 {
            // Not published yet (as the lock would have found it a moment earlier): no
            // lock taken, which an await of a task still running asks first.
            return None;
        }
        self.failure()
    }

    /// [`outcome`](Self::outcome) of a task whose outcome was published, not a success.
    #[inline(never)]
    fn failure(&self) -> Option<Outcome> {
        self.outcome_in(&self.links.lock())
    }

    /// Whether anything waits on this node.
    pub(crate) fn has_dependents(&self) -> bool {
        !self.links.lock().dependents.is_empty()
    }

    /// Lets go of the dependents that finished (tasks aborted or failed by another
    /// dependency before this node finished: nothing waits on it for them any more).
    /// Returns whether any dependent is left.
    #[cold]
    pub(crate) fn forget_done_dependents(&self) -> bool {
        let mut links = self.links.lock();
        if links.dependents.iter().all(|d| !dependent_done(d)) {
            return !links.dependents.is_empty();
        }
        let all = std::mem::take(&mut *links.dependents);
        let (done, left): (Vec<Dependent>, Vec<Dependent>) =
            all.into_iter().partition(dependent_done);
        links.dependents.extend(left);
        let any = !links.dependents.is_empty();
        drop(links);
        // (Dropped with the lock given back: a dependent's drop may free much.)
        drop(done);
        any
    }

    /// The unfinished tasks (and placeholders) this node's completion would notify.
    pub(crate) fn task_dependents(&self) -> Vec<TaskPtr> {
        self.links
            .lock()
            .dependents
            .iter()
            .filter_map(|d| match d {
                Dependent::Task(t) if !t.header().is_done() => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    // --- GPU fences ------------------------------------------------------------------

    /// Records the fence of a GPU dependency that released this task early.
    pub(crate) fn add_wait(&self, f: Arc<dyn Fence>) {
        self.links
            .lock()
            .gpu
            .get_or_insert_with(new_gpu_links)
            .waits
            .push(f);
    }

    /// Takes the fences this task's stream must wait on, as its driver starts it, and asks
    /// the core to fetch its task dependents meanwhile: when the body returns, this driver
    /// releases them behind the fence (their counts, links and admission), and the thread
    /// that spawned them wrote them last. Fetched now, that overlaps the body's launches
    /// instead of following them. (Their GPU links, a line of their own, are fetched once
    /// these lines arrived: [`prefetch_gpu_dependents`](Self::prefetch_gpu_dependents).)
    pub(crate) fn take_waits(&self) -> SmallVec<[Arc<dyn Fence>; 2]> {
        let mut l = self.links.lock();
        for d in l.dependents.iter() {
            if let Dependent::Task(t) = d {
                prefetch_head(t);
                // Its links' lock is taken before the first poll, to find its GPU links
                // (`prefetch_gpu_dependents`), and again when the body returns: for writing.
                let links: *const SpinLock<Links> = &*t.header().links;
                prefetch_line(links.cast(), has_prefetchw());
            }
        }
        l.gpu
            .as_mut()
            .map(|g| std::mem::take(&mut g.waits))
            .unwrap_or_default()
    }

    /// Before the first poll of a GPU task whose [`take_waits`](Self::take_waits) asked for
    /// its task dependents' heads: asks the core to fetch, for writing, the GPU links of the
    /// first two that run on GPUs only. When the body returns, the driver adds its fence to
    /// their waits there (`graph::body_fenced`); the thread that spawned them allocated
    /// those links last, so fetched now they arrive during the body's launches instead of
    /// after. (A dependent whose links are locked is skipped: a hint never waits.)
    pub(crate) fn prefetch_gpu_dependents(&self) {
        let l = self.links.lock();
        for d in l.dependents.iter().take(2) {
            if let Dependent::Task(t) = d {
                let th = t.header();
                if th.gpu_only()
                    && let Some(dl) = th.links.try_lock()
                    && let Some(g) = dl.gpu.as_deref()
                {
                    prefetch_line((g as *const GpuLinks).cast(), has_prefetchw());
                }
            }
        }
    }

    /// The body returned with its GPU work behind `f`: keeps the fence and takes the
    /// dependents that may start behind it (GPU-only tasks). Also says whether others stay
    /// (dependents or awaiters that need the task complete).
    pub(crate) fn set_fence(&self, f: Arc<dyn Fence>) -> (SmallVec<[TaskPtr; 2]>, bool) {
        let mut l = self.links.lock();
        l.gpu.get_or_insert_with(new_gpu_links).fence = Some(f);
        let mut early = SmallVec::new();
        // Moved, not cloned: no reference count changes hands.
        for d in std::mem::take(&mut l.dependents) {
            match d {
                Dependent::Task(t) if t.header().gpu_only() => early.push(t),
                other => l.dependents.push(other),
            }
        }
        (early, !l.dependents.is_empty())
    }

    /// The fence recorded after a GPU task's work, until its outcome is published.
    #[cfg(feature = "tracing")]
    pub(crate) fn recorded_fence(&self) -> Option<Arc<dyn Fence>> {
        self.links.lock().gpu.as_ref().and_then(|g| g.fence.clone())
    }

    /// The fence of a GPU task whose body returned and whose work is still pending.
    pub(crate) fn fence(&self) -> Option<Arc<dyn Fence>> {
        if !self.is_fenced() {
            return None;
        }
        let l = self.links.lock();
        if self.outcome_in(&l).is_some() {
            None
        } else {
            l.gpu.as_ref().and_then(|g| g.fence.clone())
        }
    }

    // --- placement and resources -----------------------------------------------------

    /// Records the device the task was mapped to and the VCUs it reserves there.
    pub(crate) fn set_device(&self, d: Device, vcu: u32) {
        self.reserved_vcu.store(vcu, Ordering::Relaxed);
        self.device.store(d.slot() as u16, Ordering::Release);
    }

    /// The device the task was mapped to, once mapped.
    #[inline]
    pub(crate) fn device(&self) -> Option<Device> {
        match self.device.load(Ordering::Acquire) {
            u16::MAX => None,
            s => Some(Device::from_slot(s as usize)),
        }
    }

    /// Whether the task was mapped to the device in `slot`.
    #[inline]
    pub(crate) fn mapped_to(&self, slot: usize) -> bool {
        self.device.load(Ordering::Acquire) as usize == slot
    }

    /// The slot of the device the task was mapped to (the CPU's, 0, until mapped).
    #[inline]
    pub(crate) fn slot(&self) -> usize {
        match self.device.load(Ordering::Acquire) {
            u16::MAX => 0,
            s => s as usize,
        }
    }

    /// What the task holds on its device now (no VCUs while it lends them).
    pub(crate) fn demand(&self) -> Demand {
        Demand {
            vcu: self.reserved_vcu.load(Ordering::Relaxed),
            mem: self.mem,
        }
    }

    /// The task lends its VCUs to its device while it waits on other tasks. Returns how
    /// many it lent (0: it holds none, or lends them already).
    pub(crate) fn lend(&self) -> u32 {
        self.lend_marked(0)
    }

    /// [`lend`](Self::lend), by a task waiting on something outside the runtime (a channel,
    /// a timer, `yield_now`): woken, it goes ahead of the tasks that wait for its device
    /// only so many times in a row (`Admission::resume_outside`;
    /// [`lent_outside`](Self::lent_outside)).
    pub(crate) fn lend_outside(&self) -> u32 {
        self.lend_marked(LENT_OUTSIDE)
    }

    #[inline]
    fn lend_marked(&self, mark: u32) -> u32 {
        let v = self.reserved_vcu.swap(0, Ordering::AcqRel);
        if v > 0 {
            self.lent.store(v | mark, Ordering::Release);
        }
        v
    }

    /// VCUs lent and not taken back yet.
    #[inline]
    pub(crate) fn lent(&self) -> u32 {
        self.lent.load(Ordering::Acquire) & !LENT_OUTSIDE
    }

    /// Whether the VCUs not taken back yet were lent while the task waited on something
    /// outside the runtime ([`lend_outside`](Self::lend_outside)).
    #[inline]
    pub(crate) fn lent_outside(&self) -> bool {
        self.lent.load(Ordering::Acquire) & LENT_OUTSIDE != 0
    }

    /// The lent VCUs are reserved again.
    pub(crate) fn reclaim(&self) {
        let v = self.lent.swap(0, Ordering::AcqRel) & !LENT_OUTSIDE;
        self.reserved_vcu.store(v, Ordering::Release);
    }

    // --- executor slots --------------------------------------------------------------

    /// Takes the run state a pending poll saved.
    ///
    /// # Safety
    /// The caller holds the task's run token.
    pub(crate) unsafe fn take_run(&self) -> Option<RunState> {
        // SAFETY: the run state is touched only by the run-token holder, the caller.
        self.pended().and_then(|p| unsafe { (*p.run.get()).take() })
    }

    /// What the task keeps once a poll of it returned `Pending`, if one did.
    #[inline]
    fn pended(&self) -> Option<&Pended> {
        let p = self.pended.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Box::into_raw` in `save_run` and is freed
        // only with the header, so it stays valid as long as `self` is; `Pended` is never
        // moved or mutated through it except its cells and atomics.
        unsafe { p.as_ref() }
    }

    /// Saves the run state of a task whose poll returns `Pending`; the first time, also
    /// records where wakers schedule it (`w`). Must happen before the poll's end is
    /// published (`Activity::end_poll`): a wake after that finds it.
    ///
    /// # Safety
    /// The caller holds the task's run token.
    pub(crate) unsafe fn save_run(&self, w: &Arc<Waking>, run: RunState) {
        // SAFETY: the caller holds the run token.
        let p = unsafe { self.pended_or_new(w) };
        // SAFETY: the caller holds the run token.
        unsafe { *p.run.get() = Some(run) };
    }

    /// What the task keeps between polls, made now if no poll of it returned `Pending` yet
    /// (`w`: where wakers schedule it).
    ///
    /// # Safety
    /// The caller holds the task's run token.
    unsafe fn pended_or_new(&self, w: &Arc<Waking>) -> &Pended {
        let mut p = self.pended.load(Ordering::Acquire);
        if p.is_null() {
            p = Box::into_raw(new_pended(Pended {
                waking: w.clone(),
                run: UnsafeCell::new(None),
                poller_slot: AtomicU32::new(u32::MAX),
                held: HeldMark::default(),
                held_pos: AtomicU32::new(0),
                combined: AtomicUsize::new(0),
            }));
            // Only the run-token holder stores, once: no race.
            self.pended.store(p, Ordering::Release);
        }
        // SAFETY: `p` is live: freed only with the header, which `self` borrows.
        unsafe { &*p }
    }

    /// One more await of a task registered through a waker not the task's own (see
    /// [`Pended::combined`]), until [`combined_done`](Self::combined_done).
    ///
    /// # Safety
    /// The caller holds the task's run token (it polls the task).
    pub(crate) unsafe fn combined_await(&self, w: &Arc<Waking>) {
        // SAFETY: as the caller's.
        unsafe { self.pended_or_new(w) }
            .combined
            .fetch_add(1, Ordering::AcqRel);
    }

    /// An await counted by [`combined_await`](Self::combined_await) is over (its
    /// registration was woken or dropped).
    pub(crate) fn combined_done(&self) {
        if let Some(p) = self.pended() {
            p.combined.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether awaits of tasks registered through a combinator's waker are still pending:
    /// the task awaits tasks even when its last poll did not poll them (a
    /// `FuturesUnordered` polls only the futures that were woken).
    pub(crate) fn awaits_combined(&self) -> bool {
        self.pended()
            .is_some_and(|p| p.combined.load(Ordering::Acquire) > 0)
    }

    /// Records where the task is in the runtime's set of pollers (after
    /// [`save_run`](Self::save_run), by the same run-token holder).
    pub(crate) fn set_poller_slot(&self, slot: u32) {
        if let Some(p) = self.pended() {
            p.poller_slot.store(slot, Ordering::Relaxed);
        }
    }

    /// Where the task is in the runtime's set of pollers (`u32::MAX`: nowhere). Read by the
    /// task's completer, after the run token was handed over.
    pub(crate) fn poller_slot(&self) -> u32 {
        self.pended()
            .map_or(u32::MAX, |p| p.poller_slot.load(Ordering::Relaxed))
    }

    /// The task's mark of keeping its VCUs while it waits outside the runtime
    /// (`scheduler::idle`), and its place in its shard's list of such tasks (under that
    /// list's lock); `None` before a poll of the task returned `Pending`.
    #[inline]
    pub(crate) fn held(&self) -> Option<(&HeldMark, &AtomicU32)> {
        self.pended().map(|p| (&p.held, &p.held_pos))
    }

    /// Where wakers schedule this node, once a poll of it returned `Pending`.
    pub(crate) fn waking(&self) -> Option<&Waking> {
        // (Its `waking` never changes once set.)
        self.pended().map(|p| &*p.waking)
    }
}

/// A node as the runtime sees it: a header and, for tasks, a body to poll.
pub(crate) trait Task: Send + Sync + 'static {
    /// The header (through the vtable; `<dyn Task>::header` reads it directly).
    fn node_header(&self) -> &Header;

    /// Polls the body once. Returns `Ready` with the outcome when the body finished (or
    /// panicked); the output is kept for the join handle.
    ///
    /// # Safety
    /// The caller holds the task's run token, and the task is not DONE.
    unsafe fn poll_body(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Outcome>;

    /// Drops the body without running it on (the task failed before it ran, or was
    /// cancelled). Catches panics of the future's destructor.
    ///
    /// # Safety
    /// The caller won the transition to DONE (or holds the run token), so nobody polls the
    /// body now or later.
    unsafe fn drop_body(&self);

    /// Drops a stored output nobody will take (the join protocol said so).
    ///
    /// # Safety
    /// The caller won the output by the join protocol.
    unsafe fn drop_output(&self);

    /// The data the task declared it reads and writes, if any.
    fn data(&self) -> Option<&crate::data::Accesses> {
        None
    }

    /// Placeholders: the task space (type-erased) and key they stand in.
    fn origin(&self) -> Option<&(std::sync::Weak<dyn std::any::Any + Send + Sync>, Key)> {
        None
    }
}

impl dyn Task {
    /// The task's declared data accesses, without a virtual call for tasks that have none.
    #[inline(always)]
    pub(crate) fn accesses(&self) -> Option<&crate::data::Accesses> {
        if self.header().has_data {
            self.data()
        } else {
            None
        }
    }

    /// The node's header without a virtual call (unlike [`Task::node_header`]).
    #[inline(always)]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: every node type is `#[repr(C)]` with its header first (`TaskCell`,
        // `Placeholder`: the same contract the waker vtable (`vt_of`) relies on), so the
        // data pointer of a `dyn Task` is the address of its header, which lives as long as
        // the node.
        let h = unsafe { &*(self as *const dyn Task as *const Header) };
        debug_assert!(std::ptr::eq(h, self.node_header()));
        h
    }
}

/// A node standing for an id that was referenced before any task was spawned under it.
/// When the task is spawned, the placeholder becomes its dependent and mirrors its outcome.
#[repr(C)]
pub(crate) struct Placeholder {
    header: Header,
    /// The space and key it stands in, to remove it from the space once unused.
    pub(crate) origin: Option<(std::sync::Weak<dyn std::any::Any + Send + Sync>, Key)>,
}

impl Placeholder {
    pub(crate) fn new(
        name: Name,
        rt_id: u32,
        origin: Option<(std::sync::Weak<dyn std::any::Any + Send + Sync>, Key)>,
    ) -> Self {
        Placeholder {
            header: Header::new(
                vt_of::<Placeholder>(),
                name,
                Kind::Placeholder,
                rt_id,
                0,
                0,
                0,
            ),
            origin,
        }
    }
}

impl Task for Placeholder {
    fn node_header(&self) -> &Header {
        &self.header
    }

    unsafe fn poll_body(&self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Outcome> {
        std::task::Poll::Ready(Ok(()))
    }

    unsafe fn drop_body(&self) {}

    unsafe fn drop_output(&self) {}

    fn origin(&self) -> Option<&(std::sync::Weak<dyn std::any::Any + Send + Sync>, Key)> {
        self.origin.as_ref()
    }
}

/// The operations of node type `T` behind a thin header pointer.
pub(crate) fn vt_of<T: Task>() -> &'static NodeVt {
    struct Vt<T>(std::marker::PhantomData<T>);
    impl<T: Task> Vt<T> {
        const VT: &'static NodeVt = &NodeVt {
            to_arc: to_arc::<T>,
            inc: inc::<T>,
            dec: dec::<T>,
        };
    }
    Vt::<T>::VT
}

/// # Safety
/// `h` is the header of a live `T` held in a [`TaskArc`] (`T` is `#[repr(C)]` with the
/// header first).
unsafe fn to_arc<T: Task>(h: *const Header) -> TaskPtr {
    // SAFETY: per the contract, `h` is also the address of the `T`; one more reference is
    // made and returned.
    unsafe {
        TaskArc::increment_strong_count(h as *const T);
        TaskArc::from_raw(h as *const T).into_task()
    }
}

/// # Safety
/// As [`to_arc`].
unsafe fn inc<T: Task>(h: *const Header) {
    // SAFETY: per the contract.
    unsafe { TaskArc::increment_strong_count(h as *const T) }
}

/// # Safety
/// As [`to_arc`], and the caller owns the reference it drops.
unsafe fn dec<T: Task>(h: *const Header) {
    // SAFETY: per the contract.
    unsafe { TaskArc::decrement_strong_count(h as *const T) }
}

/// Wakes `w` (a waker taken from a node's lists), catching a panic of foreign waker code.
pub(crate) fn wake_quietly(w: Waker) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()));
}

/// Asks the core to fetch the memory of `t` (its allocation) into its cache for writing: a
/// hint, which the core may ignore. For memory that only this thread uses next (a task to
/// reuse or to free), written last by another core.
#[inline]
pub(crate) fn prefetch_for_write(t: &TaskPtr) {
    prefetch_bytes(t, usize::MAX, has_prefetchw());
}

/// Asks the core to fetch the start of `t` (its header and a small future) for reading: a
/// task this thread will release soon, which the spawning thread may still be writing (it
/// wires the next task of a chain to it). Taking its lines for writing there would take
/// them from that thread too (measured slower on a chain of GPU tasks).
#[inline]
pub(crate) fn prefetch_head(t: &TaskPtr) {
    prefetch_bytes(t, 512, false);
}

#[inline(always)]
fn prefetch_bytes(t: &TaskPtr, max: usize, write: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        // The whole allocation: the count before the value, and the value.
        let (start, len) = TaskArc::memory(t);
        let len = len.min(max);
        let mut off = 0;
        while off < len {
            prefetch_line(start.wrapping_add(off), write);
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (t, max, write);
}

/// Asks the core to fetch the cache line of `p`: for writing (`PREFETCHW`, which takes the
/// line in the exclusive state, so the writes that follow need not ask the other cores
/// again) where `write` says the core has it, else for reading. A hint: it never faults.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_line(p: *const u8, write: bool) {
    if write {
        // SAFETY: the core supports `PREFETCHW` (`write`: see `has_prefetchw`); a prefetch
        // neither faults nor changes anything observable, whatever the address, and reads
        // and writes no memory the program sees (`readonly`, no stack, flags kept).
        unsafe {
            std::arch::asm!(
                "prefetchw [{0}]",
                in(reg) p,
                options(nostack, preserves_flags, readonly)
            )
        };
    } else {
        // SAFETY: as above: a prefetch is a hint that never faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
        };
    }
}

/// No prefetches off x86_64.
#[cfg(not(target_arch = "x86_64"))]
fn has_prefetchw() -> bool {
    false
}

/// No prefetches off x86_64.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn prefetch_line(p: *const u8, write: bool) {
    let _ = (p, write);
}

/// Whether the core has `PREFETCHW` (CPUID leaf `0x8000_0001`, ECX bit 8), asked once.
/// (Rust's `_MM_HINT_ET0` compiles to a prefetch for reading unless the whole build enables
/// the feature.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_prefetchw() -> bool {
    use std::sync::atomic::AtomicU8;
    /// 0: not asked yet; 1: no; 2: yes.
    static PREFETCHW: AtomicU8 = AtomicU8::new(0);
    #[cold]
    fn ask() -> bool {
        use std::arch::x86_64::__cpuid;
        // SAFETY: `CPUID` exists on every x86_64 core and has no side effects; leaf
        // `0x8000_0001` is asked only where the highest extended leaf reaches it.
        #[allow(unused_unsafe)]
        let yes = unsafe {
            __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
        };
        PREFETCHW.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
        yes
    }
    match PREFETCHW.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => ask(),
    }
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use loom::thread;

    fn node(n: u64) -> TaskPtr {
        TaskArc::new(Placeholder::new(Name::Anon(n), 1, None)).into_task()
    }

    /// A dependent registering while the node publishes its outcome is told exactly once:
    /// it is in the list publication takes, or it sees the outcome.
    #[test]
    fn register_vs_publish_tells_the_dependent_once() {
        loom::model(|| {
            let (a, b) = (node(0), node(1));
            let (a2, b2) = (a.clone(), b.clone());
            let t = thread::spawn(move || match a2.header().add_task_dependent(&b2) {
                Added::Registered => 0,
                Added::Done(_) => 1,
                Added::Fenced(_) => 2,
            });
            let taken = a.header().publish(Ok(())).dependents;
            let r = t.join().unwrap();
            assert!(
                (r == 0 && taken.len() == 1) || (r == 1 && taken.is_empty()),
                "registered: {r}, taken: {}",
                taken.len()
            );
        });
    }

    /// A success read without the lock (`SUCCEEDED`) comes with everything the task did
    /// before it published; a failure is never taken for a success.
    #[test]
    fn an_outcome_seen_without_the_lock_shows_what_the_task_did() {
        use loom::sync::atomic::AtomicUsize;
        for fail in [false, true] {
            loom::model(move || {
                let a = node(0);
                let data = Arc::new(AtomicUsize::new(0));
                let (a2, d2) = (a.clone(), data.clone());
                let t = thread::spawn(move || {
                    let seen = a2.header().outcome();
                    let read = d2.load(Ordering::Relaxed);
                    (seen, read)
                });
                data.store(7, Ordering::Relaxed);
                let outcome = if fail {
                    Err(Arc::new(TaskError::NoRuntime { task: "a".into() }))
                } else {
                    Ok(())
                };
                let _ = a.header().publish(outcome);
                let (seen, read) = t.join().unwrap();
                match seen {
                    None => {}
                    Some(o) => {
                        assert_eq!(o.is_err(), fail);
                        assert_eq!(read, 7, "the outcome without the task's write");
                    }
                }
            });
        }
    }

    /// Wiring counts every dependency first and gives back, with its guard, those it finds
    /// finished: with one dependency finished before, one finishing while the task is wired
    /// and one finishing after, the task becomes ready exactly once, when the last one
    /// finishes.
    #[test]
    fn wiring_vs_a_finishing_dependency_makes_the_task_ready_once() {
        loom::model(|| {
            let (t, a, b, c) = (node(0), node(1), node(2), node(3));
            let _ = c.header().publish(Ok(()));
            let a2 = a.clone();
            let other = thread::spawn(move || {
                a2.header()
                    .publish(Ok(()))
                    .dependents
                    .into_iter()
                    .filter(|d| matches!(d, Dependent::Task(t) if t.header().dependency_done()))
                    .count()
            });
            let wired = crate::graph::wire(&t, None, [a.clone(), b.clone(), c.clone()]);
            assert_eq!(wired, Ok(false), "ready with a dependency unfinished");
            assert_eq!(
                other.join().unwrap(),
                0,
                "ready with a dependency unfinished"
            );
            assert!(t.header().is_waiting());
            let ready = b
                .header()
                .publish(Ok(()))
                .dependents
                .into_iter()
                .filter(|d| matches!(d, Dependent::Task(t) if t.header().dependency_done()))
                .count();
            assert_eq!(ready, 1, "not ready once the last dependency finished");
        });
    }

    /// Completion racing with the handle's drop: the output is dropped by exactly one.
    #[test]
    fn completion_vs_handle_drop_drops_the_output_once() {
        loom::model(|| {
            let t = node(0);
            let t2 = t.clone();
            let other = thread::spawn(move || t2.header().publish(Ok(())).drop_output);
            let mine = t.header().join_drop();
            let theirs = other.join().unwrap();
            assert!(mine ^ theirs, "dropped once: {mine} {theirs}");
        });
    }
}

#[cfg(all(test, not(parla_loom), target_arch = "x86_64", target_os = "linux"))]
mod prefetch_test {
    /// The CPUID bit read for `PREFETCHW` is the one Linux reports as `3dnowprefetch`.
    #[test]
    fn prefetchw_detection_agrees_with_the_kernel() {
        let info = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
        let flags = info
            .lines()
            .find(|l| l.starts_with("flags"))
            .expect("a flags line");
        let kernel = flags.split_whitespace().any(|f| f == "3dnowprefetch");
        assert_eq!(super::has_prefetchw(), kernel);
        // Asked once, then read from the cache: the same answer.
        assert_eq!(super::has_prefetchw(), kernel);
    }
}
