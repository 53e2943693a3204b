//! The pipeline as the executor runs it: map and admit tasks the graph made ready, launch
//! what admission let through, schedule woken tasks, complete tasks, and apply the graph's
//! effects. Every counter change of the runtime happens in this file or in the driver.
//!
//! ```text
//! spawn -> graph::wire -> ready -> map (policy) -> admit (VCUs, memory) -> launch
//!   -> driver polls -> Pending: lend VCUs, park or wait -> woken: resume (VCUs back) -> launch
//!                   -> Ready: complete -> release, graph::finish -> effects -> ...
//! ```

use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use smallvec::SmallVec;

use super::driver::Driver;
use super::{RtInner, context};
use crate::device::backend::FenceStatus;
use crate::device::{Arch, Demand, Device, vcu_float};
use crate::error::TaskError;
use crate::graph::arc::{TaskArc, TaskPtr};
use crate::graph::cell::reuse_as;
use crate::graph::node::{Header, Outcome, Recycle, prefetch_for_write, wake_quietly};
use crate::graph::{self, Effects};
use crate::scheduler::admission::{self, Lane, Resumed};
use crate::scheduler::mapping::Candidate;

/// How many busy tokens a driver counts ahead at a time ([`RtInner::take_busy_credit`]).
const BUSY_CREDIT: i64 = 32;

/// Tasks admitted to run, in order; the first usually runs next on the current driver.
pub(crate) type Launch = Vec<TaskPtr>;

/// What a caller of the pipeline keeps between steps: counter changes deferred to the end
/// of a driver's poll (decreases, and increases netted against a decrease still counted - a
/// finished task's token standing in for the task this driver runs next), and scratch space
/// for effects and admitted tasks, reused from one step to the next. Outside drivers a
/// thread-local one is borrowed and flushed at once ([`RtInner::with_local`]).
#[derive(Default)]
pub(crate) struct Local {
    pub(crate) live: i64,
    pub(crate) busy: i64,
    /// Graph effects to apply (empty between steps).
    pub(crate) fx: Effects,
    /// Tasks admission let through, to launch (empty between steps).
    pub(crate) admitted: Launch,
    /// Finished tasks to hand back to the threads that spawned them (see
    /// [`RtInner::retire`]), added to [`RtInner::spent`] at the next [`RtInner::flush`] or
    /// once there are [`SPENT_BATCH`](super::SPENT_BATCH).
    pub(crate) spent: Vec<TaskPtr>,
    /// Busy tokens counted ahead in the runtime's counters and not handed out yet (see
    /// [`RtInner::take_busy_credit`]); given back at [`RtInner::flush`].
    pub(crate) busy_credit: i64,
    /// Reservations passed on in a row, from tasks finished here to tasks they made ready
    /// (see [`RtInner::complete`]): at most [`PASS_ON`], then one is released.
    pub(crate) passed_on: u8,
}

/// The most reservations a thread passes on in a row from a finished task to a task it
/// made ready, past equal tasks waiting for the device ([`RtInner::complete`]); the next
/// finished task releases its own, which the device's waiting tasks take in their order.
pub(crate) const PASS_ON: u8 = 8;

/// Lets a scratch vector give back what a burst made it hold (a gate opening on a million
/// tasks readies them all at once): a thread keeps its scratch for good, and a driver for as
/// long as it runs.
#[inline]
fn trim<T>(v: &mut Vec<T>) {
    const KEEP: usize = 1024;
    if v.capacity() > KEEP {
        v.shrink_to(KEEP / 16);
    }
}

impl Local {
    /// Trims every scratch vector (see [`trim`]). The scratch of a thread outside the
    /// drivers ([`RtInner::with_local`]) is trimmed only where a vector may have grown:
    /// after tasks were made ready or finished unrun, and the vectors of wakers and of
    /// admitted tasks after each burst of them (`wake_all`, `launch_admitted`).
    #[inline]
    pub(crate) fn trim(&mut self) {
        trim(&mut self.fx.ready);
        trim(&mut self.fx.wake);
        trim(&mut self.admitted);
    }
}

/// The error of a task mapped to a device that failed.
fn failed_earlier(h: &Header, device: Device, message: &str) -> TaskError {
    TaskError::Device {
        task: h.name.to_string(),
        device: device.to_string(),
        message: format!("the device failed earlier: {message}"),
    }
}

thread_local! {
    /// A [`Local`] for callers outside drivers, lent out by [`RtInner::with_local`].
    static SCRATCH: std::cell::Cell<Option<Box<Local>>> = const { std::cell::Cell::new(None) };
    /// Spent tasks this thread took for its spawns outside the drivers (see
    /// [`RtInner::reuse_spent`]).
    static REUSE: std::cell::RefCell<Reuse> = const {
        std::cell::RefCell::new(Reuse { rt: 0, taken: Vec::new(), prefetched: None })
    };
}

/// The most finished tasks a thread keeps from the handles it drops and the tasks its
/// dependency lookups settle ([`let_go_last`]).
const KEPT: usize = 512;

/// Lets go of a reference to a finished `task`: when it is the last one, of a small plain
/// task, the task is kept for one of this thread's next spawns, which writes its own task
/// into that memory (or frees it just before it allocates, for a task of another size:
/// [`RtInner::reuse_spent`]). It is dropped at once otherwise, or when the thread keeps
/// [`KEPT`] already, or its spawns are another runtime's. (A driver's thread keeps tasks
/// spawned by tasks only: one spawned outside the drivers is best reused there.)
///
/// The last handle of a task goes here, and so does a task a space settles
/// ([`TaskSpace::dependency`](crate::space::TaskSpace::dependency)). A program that drops
/// many handles at once (a row of a grid) would otherwise free their memory in a burst,
/// more than the allocator's per-thread cache holds, and then allocate as many again
/// through its slow paths; and a task settled by a lookup finished on another core, which
/// wrote its lines last, so freeing it at once would stall the spawn on each of them.
/// Reused one at a time by the next spawns, each has its lines fetched one spawn ahead.
/// (Emptying or freeing it runs no user code: its future was dropped when it completed,
/// its output by its handle, or by the completer when there was none.)
#[inline]
pub(crate) fn let_go_last(task: TaskPtr) {
    if TaskArc::strong_count(&task) == 1 {
        match task.header().recycle {
            Recycle::Inside => keep_spent(task),
            Recycle::Outside if !context::in_driver() => keep_spent(task),
            _ => {}
        }
    }
}

/// Keeps `task` (finished, and this its last reference) in this thread's [`REUSE`], if
/// there is room and the thread spawns into the task's runtime (a thread keeping nothing
/// yet takes the task's); drops it otherwise.
#[inline]
fn keep_spent(task: TaskPtr) {
    let rt = task.header().rt_id;
    let back = REUSE
        .try_with(|r| match r.try_borrow_mut() {
            Ok(mut r) if r.rt == rt && r.taken.len() < KEPT => {
                r.taken.push(task);
                None
            }
            Ok(mut r) if r.taken.is_empty() && r.prefetched.is_none() => {
                r.rt = rt;
                r.taken.push(task);
                None
            }
            _ => Some(task),
        })
        .ok()
        .flatten();
    drop(back);
}

impl admission::Claim for TaskPtr {
    #[inline]
    fn claim_word(&self) -> Option<&crate::loom::sync::AtomicU8> {
        Some(&self.header().lane)
    }

    #[inline]
    fn is(&self, other: &Self) -> bool {
        TaskArc::ptr_eq(self, other)
    }

    #[inline]
    fn aborted(&self) -> bool {
        self.header().abort_requested()
    }

    /// A claimed task's lane entry, dropped once its task ran, is often the last
    /// reference to it: its memory is kept for this thread's next spawns.
    #[inline]
    fn let_go(self) {
        let_go_last(self);
    }

    #[inline]
    fn note_ticket(&self, ticket: u64) {
        // (Read under the lane's lock, or after the entry passed through the queue into
        // it: either orders this store before the read.)
        self.header()
            .ticket
            .store(ticket as u16, crate::loom::sync::Ordering::Relaxed);
    }

    #[inline]
    fn ticket_hint(&self) -> Option<u16> {
        Some(
            self.header()
                .ticket
                .load(crate::loom::sync::Ordering::Relaxed),
        )
    }
}

/// The spent tasks a thread took for its spawns outside the drivers.
struct Reuse {
    /// The runtime whose pool `taken` came from.
    rt: u32,
    /// Taken from the pool a batch at a time (and kept from dropped handles and settled
    /// ids: [`let_go_last`]), for the next spawns.
    taken: Vec<TaskPtr>,
    /// The one taken at the previous spawn, its memory being fetched: reused (or freed) at
    /// the next.
    prefetched: Option<TaskPtr>,
}

impl Reuse {
    /// Makes `taken` runtime `rt`'s: what it held for another runtime is freed. (Freeing a
    /// spent task runs no user code: its future and output were dropped when it
    /// completed.)
    #[inline]
    fn serve(&mut self, rt: u32) {
        if self.rt != rt {
            self.rt = rt;
            self.taken.clear();
        }
    }
}

impl RtInner {
    /// Applies deferred counter changes, and hands back the finished tasks gathered (see
    /// [`retire`](Self::retire)).
    pub(crate) fn flush(&self, l: &mut Local) {
        let (live, busy) = (std::mem::take(&mut l.live), std::mem::take(&mut l.busy));
        let credit = std::mem::take(&mut l.busy_credit);
        self.counters.add(live, busy - credit);
        self.hand_back(&mut l.spent);
    }

    /// Runs `f` with a scratch [`Local`] (this thread's, or a new one if it is lent out
    /// already), then applies what `f` left in it and flushes.
    pub(crate) fn with_local<R>(self: &Arc<Self>, f: impl FnOnce(&mut Local) -> R) -> R {
        let mut l = SCRATCH.with(|c| c.take()).unwrap_or_default();
        let r = f(&mut l);
        // Only made ready or finished tasks grow the effects' vectors (the others trim
        // themselves: see `Local::trim`).
        let effects = l.fx.unrun != 0 || !l.fx.ready.is_empty();
        self.apply(&mut l);
        self.flush(&mut l);
        if effects {
            l.trim();
        }
        SCRATCH.with(|c| c.set(Some(l)));
        r
    }

    /// Applies the effects and admitted tasks in `l`: tasks finished without running leave
    /// the live count, ready tasks are mapped and admitted, what was admitted is launched,
    /// and wakers are woken. Leaves `l`'s scratch empty.
    #[inline(always)]
    pub(crate) fn apply(self: &Arc<Self>, l: &mut Local) {
        if l.fx.unrun == 0 && l.fx.ready.is_empty() {
            // Nothing became ready or finished unrun (a task that completed with no
            // dependents, mostly): launch and wake, inline. (Neither adds effects to `l`.)
            self.launch(l);
            Self::wake(l);
            return;
        }
        self.apply_effects(l);
    }

    /// Wakes the wakers in `l` (a call only when there are some).
    #[inline(always)]
    fn wake(l: &mut Local) {
        if !l.fx.wake.is_empty() {
            Self::wake_all(l);
        }
    }

    #[inline(never)]
    fn wake_all(l: &mut Local) {
        while let Some(w) = l.fx.wake.pop() {
            wake_quietly(w);
        }
        trim(&mut l.fx.wake);
    }

    /// [`apply`](Self::apply) when tasks became ready or finished unrun.
    #[inline(never)]
    fn apply_effects(self: &Arc<Self>, l: &mut Local) {
        loop {
            if l.fx.unrun > 0 {
                l.live -= l.fx.unrun as i64;
                l.fx.unrun = 0;
            }
            while let Some(t) = l.fx.ready.pop() {
                self.admit_ready(t, l);
            }
            self.launch(l);
            Self::wake(l);
            if l.fx.unrun == 0 && l.fx.ready.is_empty() {
                return;
            }
        }
    }

    /// Maps and admits a ready task ([`on_ready`](Self::on_ready)); one whose device failed
    /// is failed, which may fail more. For the tasks [`apply`](Self::apply) takes from
    /// `l.fx.ready`, and for a task ready as it is spawned (without the trip through that
    /// list).
    #[inline]
    pub(crate) fn admit_ready(self: &Arc<Self>, task: TaskPtr, l: &mut Local) {
        if let Err((t, err)) = self.on_ready(task, &mut l.admitted) {
            graph::fail_held(&t, err, &mut l.fx);
        }
    }

    /// A task's dependencies are met: map it to a device and ask for its resources. What
    /// this admits is pushed to `admitted`; a task that cannot go to its device is handed
    /// back with its error.
    #[inline(always)]
    fn on_ready(
        self: &Arc<Self>,
        task: TaskPtr,
        admitted: &mut Launch,
    ) -> Result<(), (TaskPtr, TaskError)> {
        let h = task.header();
        crate::trace::step!(self, h, "ready");
        let slot = self.map(h, task.accesses());
        let dev = &self.devices[slot];
        let vcu = dev.vcu_for(h.vcu);
        h.set_device(dev.device, vcu);
        if let Some(message) = dev.failed.get() {
            let err = failed_earlier(h, dev.device, message);
            return Err((task, err));
        }
        let mem = h.mem;
        self.trace_mapped(h, dev.device, vcu, mem);
        if let Some(acc) = task.accesses() {
            acc.set_device(dev.device);
            self.data_ready(slot, task, admitted);
            return Ok(());
        }
        let d = Demand { vcu, mem };
        if let Err(task) = dev.admission.admit_now(task, d, admitted) {
            // It waits. Made ready by the task polled here (spawned by it, mostly), it may be
            // what that task awaits next: the last of the poll is held until the poll ends
            // (see `context::stash`), the others are queued - in the order they were
            // spawned, each as the next one comes - where that task's lend can claim them
            // (unless nobody can: `Header::claimable`).
            let in_poll = context::polling_task(self.id);
            let (task, d, dev, slot) = if in_poll {
                match self.stash(task, d) {
                    None => return Ok(()),
                    Some((prev, pd)) => {
                        let s = prev.header().slot();
                        (prev, pd, &self.devices[s], s)
                    }
                }
            } else {
                (task, d, dev, slot)
            };
            let aborted = if !in_poll && context::in_driver() {
                // A driver queueing a task that a finished one made ready (many drivers do at
                // once while the device is full): without waiting for the admission lock.
                dev.admission.queue_unlocked(task, d, admitted)
            } else {
                let claimable = in_poll && task.header().claimable();
                dev.admission.queue(task, d, claimable, admitted)
            };
            if let Some(task) = aborted {
                // Its handle aborted it: it fails without waiting for its resources.
                let err = task.header().aborted_error();
                return Err((task, err));
            }
            self.lend_held_for(slot, admitted);
        }
        Ok(())
    }

    /// A task was counted as waiting for VCUs on device `slot`: CPU tasks that keep theirs
    /// while they wait outside the runtime lend them now (`scheduler::idle`), and what that
    /// admits goes to `out`.
    #[inline]
    pub(crate) fn lend_held_for(self: &Arc<Self>, slot: usize, out: &mut Launch) {
        if slot != Device::CPU.slot() || !self.pollers.held.any() {
            return;
        }
        self.lend_all_held(out);
    }

    #[cold]
    fn lend_all_held(self: &Arc<Self>, out: &mut Launch) {
        if !self.cpu_waiting() {
            return;
        }
        for t in self.pollers.held_tasks() {
            self.lend_held(&t, out);
        }
    }

    /// Whether anything waits for VCUs on the CPU (either admission lane, or the queue of
    /// tasks with data).
    pub(crate) fn cpu_waiting(&self) -> bool {
        let dev = &self.devices[Device::CPU.slot()];
        dev.admission.has_waiting() || dev.data.queued() > 0
    }

    /// `task` waits claimable in a shard of its device's task lane, and nobody will claim
    /// it: its handle was dropped in a task's poll (and it has no id), or a poller that lends
    /// no VCUs (a `block_on` future, a future started with `tokio::spawn`) awaits it. It
    /// moves to the central part of the lane, where it is admitted in its turn, and where
    /// the turns that parents awaiting child after child give the waiting tasks find it.
    #[cold]
    #[inline(never)]
    pub(crate) fn unshard(self: &Arc<Self>, task: &TaskPtr) {
        let h = task.header();
        let dev = &self.devices[h.slot()];
        self.with_local(|l| {
            if let Some(t) = dev.admission.unshard(task, h.demand(), &mut l.admitted) {
                // Its handle aborted it: it fails without waiting for its resources.
                let err = t.header().aborted_error();
                graph::fail_held(&t, err, &mut l.fx);
            }
        });
    }

    /// Lends the VCUs of `task`, a CPU task marked as keeping them while it waits outside
    /// the runtime, if it still waits (IDLE) and is still marked: its token is claimed as a
    /// poll would claim it, and given back after. A wake that came meanwhile schedules it
    /// (it takes its VCUs back through the resume lane, as after any loan). What the loan
    /// admits goes to `out`.
    pub(crate) fn lend_held(self: &Arc<Self>, task: &TaskPtr, out: &mut Launch) {
        let h = task.header();
        if !h.act.claim_idle() {
            // It runs (and holds its VCUs for that), was woken, or another claimer lends.
            return;
        }
        if self.pollers.unhold(task) {
            let vcu = h.lend_outside();
            if vcu > 0 {
                let slot = h.slot();
                self.devices[slot]
                    .admission
                    .lend(Demand { vcu, mem: 0 }, None, out);
                self.pump(slot, out);
            }
        }
        // What the loan admitted is launched, its tokens counted, while this claim still
        // holds the task's token. Once the token is back with the idle task, its wake on
        // another thread may run it to its end and drop the token there: were the loan's
        // tasks still waiting for the caller to launch them, the busy count could read
        // zero while they hold VCUs that nothing runs, and the stall resolver would fail
        // an await of them (a tree of tasks awaiting their spaces, leaves sleeping: 1 run
        // in 150 of a debug build on a loaded machine, once the resolver acted at once).
        // Likewise if it was woken meanwhile: it takes its VCUs back, and when the loan's
        // tasks hold them it waits in the resume lane and gives up its token.
        if !out.is_empty() {
            self.with_local(|l| std::mem::swap(&mut l.admitted, out));
        }
        if h.act.end_poll(false) == crate::graph::activity::EndPoll::Notified {
            self.schedule_woken(task.clone(), false);
        }
        if self.shutdown.load(Ordering::SeqCst) {
            self.cancel_lent_at_shutdown(task);
        }
    }

    /// The runtime was dropped while [`lend_held`](Self::lend_held) held the token of
    /// `task`: the drop's cancellation found it claimed (as if it ran) and left it, and
    /// nothing else would cancel it (a task waiting on a channel nobody sends on: its
    /// handle waited for good, a few drops in a hundred of a one-worker runtime). Cancelled
    /// here, as a driver cancels a task whose poll ended after the drop (see
    /// `Activity::end_poll` for why one of the two does); a task woken meanwhile went to
    /// the injector, which the drop's pass empties.
    #[cold]
    #[inline(never)]
    fn cancel_lent_at_shutdown(self: &Arc<Self>, task: &TaskPtr) {
        self.pollers.remove(task);
        self.with_local(|l| super::stall::cancel_waiting(self, task, l));
        self.cancel_if_shut_down();
    }

    /// Hands what this thread's driver holds for after the current task's poll to the other
    /// drivers (the task in its next-task slot to the injector, a stashed one to its
    /// device's queue, a woken one to its resume lane), and lets go of the thread for the
    /// rest of the poll ([`context::let_go_of_poll`]), if a task of this runtime is polled
    /// here. For a poll that may block its thread until another task ran: one that waits
    /// for a task through a waker not its own (`futures::executor::block_on` or Tokio's
    /// `Handle::block_on` inside `tokio::task::block_in_place`), or that spawns through a
    /// [`Handle`](super::Handle). Such a poll does not end until then, and the next-task
    /// slot, the stash and the woken task are this thread's alone; so are the tasks that
    /// Tokio's deferred wakes, run as `block_in_place` begins, put there.
    #[inline]
    pub(crate) fn release_held_here(self: &Arc<Self>) {
        if context::polling_task(self.id) {
            self.release_held();
        }
    }

    /// [`release_held_here`](Self::release_held_here) once its caller saw a task of this
    /// runtime polled here.
    #[cold]
    pub(crate) fn release_held(self: &Arc<Self>) {
        // (This thread runs no driver from here on: what follows queues to the others.)
        context::let_go_of_poll();
        self.let_go_polls.fetch_add(1, Ordering::SeqCst);
        // The driver's slot goes too, so that a driver may start for what the poll waits
        // for although every slot's driver blocks (as many tasks as workers blocking in
        // `block_in_place` at once, whatever their VCUs); the driver takes a slot back
        // when the poll returns, or ends (`Driver::run`). (A leave: the count, then a look
        // at the queue.)
        let waiting = self.inject.revoke(false);
        if context::has_stash() {
            self.with_local(|l| self.flush_stash(l));
        }
        if let Some(t) = context::take_woken() {
            let lent = t.header().lent();
            self.resume_lent(t, Device::CPU.slot(), lent);
        }
        self.release_next();
        if waiting {
            super::driver::ask_for_drivers(self);
        }
        // A drop of the runtime that began before the count above was taken waits for this
        // thread (its Tokio worker), and no driver runs the task this poll may wait for:
        // what is left is cancelled now. (The drop reads the count after it set `shutdown`,
        // past a fence, and this reads `shutdown` after the count: one of the two sees the
        // other, and the drop, seeing the count, does not wait.)
        self.cancel_if_shut_down();
    }

    /// [`context::stash`] of a task made ready during the poll of a task on this thread
    /// that waits for its device. (Not inline: spawns outside tasks never come here.)
    #[inline(never)]
    fn stash(self: &Arc<Self>, task: TaskPtr, d: Demand) -> Option<(TaskPtr, Demand)> {
        if context::has_next() {
            // A task the poll made ready before (a sibling, mostly) waits in this thread's
            // next-task slot until the poll ends, holding VCUs this one waits for: the
            // other drivers run it while the poll goes on (a parent that spawns its
            // children, then computes before it awaits them).
            self.release_next();
        }
        admission::mark_held(&task.header().lane);
        context::stash(task, d)
    }

    /// Hands the task in this thread's next-task slot, if any, to the other drivers.
    #[cold]
    pub(super) fn release_next(self: &Arc<Self>) {
        if let Some(t) = context::take_next() {
            // (It holds its busy token.)
            self.inject.push(t);
            self.start_drivers(1);
        }
    }

    /// Queues the task stashed during the poll that just ended on this thread (see
    /// [`context::stash`]) for admission on its device, then launches what that admits.
    pub(crate) fn flush_stash(self: &Arc<Self>, l: &mut Local) {
        let Some((t, d)) = context::take_stash() else {
            return;
        };
        let dev = &self.devices[t.header().slot()];
        match dev.failed.get() {
            Some(message) => {
                let err = failed_earlier(t.header(), dev.device, message);
                graph::fail_held(&t, err, &mut l.fx);
            }
            None => {
                let slot = t.header().slot();
                let claimable = t.header().claimable();
                match dev.admission.queue(t, d, claimable, &mut l.admitted) {
                    None => self.lend_held_for(slot, &mut l.admitted),
                    Some(t) => {
                        let err = t.header().aborted_error();
                        graph::fail_held(&t, err, &mut l.fx);
                    }
                }
            }
        }
        self.apply(l);
    }

    /// Drops a task a driver finished with. The last reference to a small task spawned
    /// outside the drivers (`Header::recycle`) goes to [`spent`](RtInner::spent) instead,
    /// for a spawn outside the drivers to write its task into (or to free just before it
    /// allocates, for a task of another size: the allocator then hands that thread the
    /// memory back from its own cache). Freed here, on another thread, the memory goes
    /// back to the spawning thread's arena (under its lock, which that thread takes for
    /// every allocation it cannot serve from its cache). A chain spawned from `block_on`
    /// runs twice as fast this way.
    ///
    /// The driver gathers such tasks in `l` and adds them [`SPENT_BATCH`](super::SPENT_BATCH)
    /// at a time (and the rest when it runs out of work or yields: [`flush`](Self::flush)),
    /// so that the lines the spawning thread reads move between cores once a batch rather
    /// than once a task. Only the memory waits: the task's future and output are dropped
    /// when it completes, as always, and a traced task (whose span closes with it) is never
    /// kept.
    ///
    /// Tasks go there while [`spent`](RtInner::spent) has room (its length, read without
    /// its lock): a program that spawned everything up front fills it once and then pays
    /// a load of a line nobody writes for each task, and a program whose spawns take from
    /// it gets tasks back as soon as they do. (The spawning thread may not need them yet:
    /// it reuses the tasks whose handles it dropped first. What the pool keeps meanwhile
    /// serves its next batch, as in a reduction run again: the leaves of each run, whose
    /// handles are held until their parents are spawned, are written into the memory the
    /// last run's tasks left in the pool.)
    ///
    /// A small task spawned by a task (`Recycle::Inside`) is kept by this driver's thread
    /// instead ([`let_go_last`]), for the tasks spawned there next: a task that spawns
    /// children and awaits them, a row of a grid spawning its tiles. Its memory is then
    /// written where it was last used, rather than freed to the allocator of the thread
    /// that spawned it (another worker's, mostly) and taken fresh from this one's.
    #[inline]
    pub(crate) fn retire(&self, task: TaskPtr, batch: &mut Vec<TaskPtr>) {
        match task.header().recycle {
            Recycle::Outside
                if TaskArc::strong_count(&task) == 1
                    && self.spent.len.load(Ordering::Relaxed) < super::SPENT =>
            {
                batch.push(task);
                if batch.len() >= super::SPENT_BATCH {
                    self.hand_back(batch);
                }
            }
            Recycle::Inside => let_go_last(task),
            _ => {}
        }
    }

    /// Adds the finished tasks in `batch` (gathered by [`retire`](Self::retire)) to
    /// [`spent`](RtInner::spent), as many as it has room for; the others are freed here.
    /// Leaves `batch` empty.
    #[inline]
    pub(crate) fn hand_back(&self, batch: &mut Vec<TaskPtr>) {
        if !batch.is_empty() {
            self.add_spent(batch);
        }
    }

    #[cold]
    fn add_spent(&self, batch: &mut Vec<TaskPtr>) {
        {
            let mut spent = self.spent.tasks.lock();
            let room = super::SPENT - spent.len();
            let over = batch.len().saturating_sub(room);
            spent.extend(batch.drain(over..));
            self.spent.len.store(spent.len(), Ordering::Relaxed);
        }
        // What did not fit is freed here, outside the pool's lock.
        batch.clear();
    }

    /// Takes one task from [`spent`](RtInner::spent) for a spawn outside the drivers to
    /// write its own task into.
    ///
    /// The thread takes tasks from the pool [`SPENT_BATCH`](super::SPENT_BATCH) at a time
    /// (into [`REUSE`]), so it takes the pool's lock, which drivers adding batches take too,
    /// once a batch rather than once a spawn.
    ///
    /// One spawn ahead: the task reused is the one taken at this thread's previous spawn,
    /// and the one taken now has its memory fetched into this core's cache for writing
    /// meanwhile. (Its lines were last written by the driver that finished it, on another
    /// core; fetched only when the new task is written into them, each would stall the
    /// spawn.) It is returned emptied, for this spawn's task of type `C`, when its cell has
    /// that size and alignment ([`reuse_as`]); it is freed otherwise (before this spawn
    /// allocates, which the allocator then serves from this thread's cache).
    ///
    /// A spawn that reuses a task saves a free and an allocation, and the free of a task
    /// allocated on another thread as well: spawning from `block_on` in a loop, where a
    /// driver finishes each task, allocates nothing once the first tasks came back.
    ///
    /// `inside`: the spawn is made by a task, on a driver's thread. It takes only what that
    /// thread kept itself ([`let_go_last`]), never the pool, which is for spawns outside the
    /// drivers.
    #[inline]
    pub(crate) fn reuse_spent<C>(&self, inside: bool) -> Option<TaskArc<MaybeUninit<C>>> {
        let prev = REUSE
            .try_with(|r| {
                let mut r = r.borrow_mut();
                if inside {
                    r.serve(self.id);
                // (Only a spawn that may find some takes the lock.)
                } else if r.rt != self.id
                    || (r.taken.is_empty() && self.spent.len.load(Ordering::Relaxed) != 0)
                {
                    self.take_spent(&mut r);
                }
                let next = r.taken.pop();
                if let Some(t) = &next {
                    prefetch_for_write(t);
                }
                std::mem::replace(&mut r.prefetched, next)
            })
            .ok()
            .flatten()?;
        reuse_as::<C>(prev).ok()
    }

    /// Takes a batch of tasks from [`spent`](RtInner::spent) into `r`, when it holds none
    /// (freeing those taken from another runtime first).
    #[cold]
    #[inline(never)]
    fn take_spent(&self, r: &mut Reuse) {
        r.serve(self.id);
        if r.taken.is_empty() {
            let mut spent = self.spent.tasks.lock();
            let from = spent.len().saturating_sub(super::SPENT_BATCH);
            r.taken.extend(spent.drain(from..));
            self.spent.len.store(spent.len(), Ordering::Relaxed);
        }
    }

    /// Waits (up to 30 s, then panics) until no driver of the runtime runs: each hands back
    /// the finished tasks it gathered before it leaves.
    #[cfg(all(test, not(parla_loom)))]
    pub(crate) fn wait_for_drivers_to_leave(&self) {
        let waited = std::time::Instant::now();
        while self.inject.active() > 0 {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(30),
                "drivers never left"
            );
            std::thread::yield_now();
        }
    }

    /// How many spent tasks of this runtime the calling thread took for its next spawns.
    #[cfg(all(test, not(parla_loom)))]
    pub(crate) fn taken_here(&self) -> usize {
        REUSE.with(|r| {
            let r = r.borrow();
            if r.rt == self.id { r.taken.len() } else { 0 }
        })
    }

    /// Frees what the calling thread took or kept for its next spawns.
    #[cfg(all(test, not(parla_loom)))]
    pub(crate) fn drop_taken_here(&self) {
        let taken = REUSE.with(|r| std::mem::take(&mut r.borrow_mut().taken));
        drop(taken);
    }

    /// Picks the device slot of a task among its mask: the policy chooses among the devices
    /// that have not failed (all of them if every one failed). A panicking policy is
    /// reported once and replaced by the first candidate that fits now.
    #[inline(always)]
    fn map(&self, h: &Header, data: Option<&crate::data::Accesses>) -> usize {
        if h.mask.is_power_of_two() {
            return h.mask.trailing_zeros() as usize;
        }
        self.choose(h, data)
    }

    /// [`map`](Self::map) of a task that may go to more than one device: out of line, so
    /// that the callers' frames stay small for tasks with one (most of them).
    #[inline(never)]
    fn choose(&self, h: &Header, data: Option<&crate::data::Accesses>) -> usize {
        let data_bytes = data.map_or(0, |acc| acc.bytes());
        let in_mask = |s: usize| h.mask & (1 << s) != 0;
        let healthy =
            (0..self.devices.len()).any(|s| in_mask(s) && self.devices[s].failed.get().is_none());
        let mut slots: SmallVec<[usize; 8]> = SmallVec::new();
        let mut cands: SmallVec<[Candidate; 8]> = SmallVec::new();
        for (slot, dev) in self.devices.iter().enumerate() {
            if !in_mask(slot) || (healthy && dev.failed.get().is_some()) {
                continue;
            }
            slots.push(slot);
            cands.push(Candidate {
                device: dev.device,
                demand: Demand {
                    vcu: dev.vcu_for(h.vcu),
                    mem: h.mem,
                },
                usage: dev.usage(),
                memory_capacity: dev.admission.mem_capacity(),
                running: dev.running(),
                slots: dev.slots,
                data_bytes,
                data_resident: data.map_or(0, |acc| {
                    acc.items
                        .iter()
                        .filter(|i| i.obj.valid_on(dev.device))
                        .map(|i| i.obj.bytes())
                        .sum()
                }),
            });
        }
        let i = match catch_unwind(AssertUnwindSafe(|| self.policy.choose(&cands))) {
            Ok(i) => i.min(cands.len().saturating_sub(1)),
            Err(p) => {
                static REPORTED: std::sync::Once = std::sync::Once::new();
                REPORTED.call_once(|| {
                    eprintln!(
                        "parla: the mapping policy panicked ({}); mapping to the first device where the task fits",
                        graph::cell::panic_message(&*p)
                    )
                });
                cands.iter().position(Candidate::fits_now).unwrap_or(0)
            }
        };
        slots[i]
    }

    /// Makes the tasks in `l.admitted` runnable: each takes a busy token (a resumed one
    /// takes back the VCUs it lent), the first goes to this thread's driver if one polls
    /// here (its next-task slot; a task it displaces there goes to the injector), the rest
    /// to the injector.
    #[inline(always)]
    pub(crate) fn launch(self: &Arc<Self>, l: &mut Local) {
        // (Inline: half the calls find nothing admitted - a spawn whose task waits.)
        if !l.admitted.is_empty() {
            self.launch_admitted(l);
        }
    }

    /// [`launch`](Self::launch) of at least one task.
    fn launch_admitted(self: &Arc<Self>, l: &mut Local) {
        let n = l.admitted.len();
        if n == 1
            && let Some(t) = l.admitted.pop()
        {
            self.admitted(&t);
            return self.launch_one(t, &mut l.busy);
        }
        for t in &l.admitted {
            self.admitted(t);
        }
        let mut tokens = n as i64;
        let mut rest = l.admitted.drain(..);
        let (in_slot, first) = rest
            .next()
            .map_or((false, None), |t| context::place_next(self.id, t));
        if in_slot && l.busy < 0 {
            // This driver runs it next, in place of a task it finished whose token is
            // still counted.
            l.busy += 1;
            tokens -= 1;
        }
        // Counted before any other thread can see the tasks.
        self.check_counted();
        self.counters.add(0, tokens);
        let mut pushed = 0;
        for t in first.into_iter().chain(rest) {
            self.inject.push(t);
            pushed += 1;
        }
        if pushed > 0 {
            self.start_drivers(pushed);
        }
        trim(&mut l.admitted);
    }

    /// (Debug builds.) A driver launches tasks only while the busy count is above zero: it
    /// acts for a task that holds a token (the one it polls, or one it finished, whose
    /// token goes at the end of the poll). A launch at zero means the tasks were admitted
    /// by a token that went before they were counted: for that moment the runtime looked
    /// stalled with VCUs reserved that nothing runs, and the stall resolver could fail an
    /// await of them. (Threads outside the drivers may launch at zero: a future started
    /// with `tokio::spawn`, which keeps the resolver away while it lives, or a thread
    /// entering through the resolver's gate.)
    #[inline]
    fn check_counted(&self) {
        debug_assert!(
            !context::in_driver() || self.counters.load().1 > 0,
            "a driver launched tasks with the busy count at zero"
        );
    }

    /// Bookkeeping of a task admission let through.
    #[inline]
    fn admitted(&self, t: &TaskPtr) {
        let h = t.header();
        if h.lent() > 0 {
            h.reclaim();
        } else {
            // A first admission: the task counts as running on its device.
            self.devices[h.slot()].started(1);
            // (The memory reserved: the task's own, and the bytes its arrays lacked on the
            // device, which their copies take.)
            crate::trace::step!(
                self,
                h,
                "admitted",
                mem = h.demand().mem
                    + t.accesses()
                        .map_or(0, |a| a.reserved.load(Ordering::Relaxed))
            );
        }
    }

    /// [`launch`](Self::launch) of one task; `busy`: the caller's deferred busy count.
    fn launch_one(self: &Arc<Self>, t: TaskPtr, busy: &mut i64) {
        let (in_slot, push) = context::place_next(self.id, t);
        if in_slot && *busy < 0 {
            // Runs next on this driver, in place of a finished task still counted.
            *busy += 1;
        } else {
            self.check_counted();
            self.counters.add(0, 1);
        }
        // (A task it displaced holds its token already.)
        if let Some(t) = push {
            self.inject.push(t);
            self.start_drivers(1);
        }
    }

    /// Starts up to `n` drivers (as many as free slots allow).
    pub(crate) fn start_drivers(self: &Arc<Self>, n: usize) {
        let k = self.inject.drivers_wanted(n);
        for _ in 0..k {
            self.counters.ours.fetch_add(1, Ordering::SeqCst);
            self.tokio.spawn(Driver::new(self.clone()));
        }
        if k > 0 {
            context::note_handoff(self.id);
            if context::in_task_poll() || (!context::in_driver() && context::on_pool_of(self)) {
                // Started during a task's poll, which may go on computing: Tokio puts a
                // task spawned on a worker in that worker's LIFO slot, which no other
                // worker takes from, so the driver would wait for the poll to end. A task
                // spawned after it takes the slot instead, and the driver goes to the
                // worker's run queue, where an idle worker finds it. (On a thread that
                // `tokio::task::block_in_place` let go of, both go to the shared queue.)
                // So for one started on a worker outside the drivers - a timer that fired
                // as the worker parked, a Tokio task: the worker may run a task from
                // Tokio's shared queue before its LIFO slot, a driver that runs a task
                // for long. (A driver that started another yields before its next task:
                // see `Driver::poll`.)
                self.tokio.spawn(async {});
            }
        }
    }

    /// Queues a runnable task (which holds its token) for a driver.
    pub(crate) fn push_runnable(self: &Arc<Self>, t: TaskPtr) {
        if let (_, Some(t)) = context::place_next(self.id, t) {
            self.inject.push(t);
            self.start_drivers(1);
        }
    }

    /// A task that waited was woken (its activity is NOTIFIED now). It runs again once it
    /// has its VCUs back: at once if they fit (no waker involved), else through the resume
    /// lane of its device, ahead of waiting tasks.
    pub(crate) fn schedule_woken(self: &Arc<Self>, task: TaskPtr, took_token: bool) {
        if took_token {
            self.counters.add(0, 1);
        }
        let h = task.header();
        let lent = h.lent();
        if lent == 0 {
            self.push_runnable(task);
            return;
        }
        let slot = h.slot();
        if context::take_gift(self.id, slot, lent) {
            // The VCUs of the task whose completion woke it: reserved already.
            h.reclaim();
            self.push_runnable(task);
            return;
        }
        if slot == Device::CPU.slot() && context::polling_task(self.id) {
            // (Skipped for a while after the CPU was found full: see `skip_fit_check`.)
            if !context::skip_fit_check() {
                #[cfg(all(test, not(parla_loom)))]
                self.fit_checks.fetch_add(1, Ordering::Relaxed);
                if self.devices[slot]
                    .admission
                    .resume_now_as(lent, h.lent_outside())
                {
                    h.reclaim();
                    self.push_runnable(task);
                    return;
                }
                context::note_no_fit();
            }
            // Woken by a task polling on this thread, which may pass it its VCUs.
            match context::defer_resume(self.id, task, lent, || self.cpu_waiting()) {
                Ok(()) => return,
                // (At the waiting tasks' turn, behind them.)
                Err((t, turn)) => return self.resume_lent_as(t, slot, lent, turn),
            }
        }
        self.resume_lent_as(task, slot, lent, context::take_turn());
    }

    /// The second step of [`schedule_woken`](Self::schedule_woken) for `task`, which lent
    /// `lent` VCUs of device `slot` and holds its busy token: it takes them back at once if
    /// they fit, else it waits in the resume lane.
    pub(crate) fn resume_lent(self: &Arc<Self>, task: TaskPtr, slot: usize, lent: u32) {
        self.resume_lent_as(task, slot, lent, false);
    }

    /// [`resume_lent`](Self::resume_lent); `after_tasks`: queued, it takes its turn among
    /// the tasks that wait instead of going ahead of them (`Admission::resume_after_tasks`).
    /// (A task that lent its VCUs while it waited on something outside the runtime goes
    /// ahead of them a bounded number of times in a row: `Admission::resume_outside`.)
    fn resume_lent_as(self: &Arc<Self>, task: TaskPtr, slot: usize, lent: u32, after_tasks: bool) {
        let dev = &self.devices[slot];
        let resumed = self.with_local(|l| {
            if after_tasks {
                dev.admission
                    .resume_after_tasks(task, lent, &mut l.admitted)
            } else if task.header().lent_outside() {
                dev.admission.resume_outside(task, lent, &mut l.admitted)
            } else {
                dev.admission.resume(task, lent, &mut l.admitted)
            }
        });
        match resumed {
            Resumed::Granted(t) => {
                t.header().reclaim();
                self.push_runnable(t);
            }
            // It waits in the resume lane and holds no token meanwhile (launched above if
            // this very call admitted it). It gives its token up last: what the loans of
            // the tasks that kept their VCUs admit now is launched, its tokens counted,
            // first. (The other way round, the busy count could read zero with tasks
            // admitted and not launched yet, and the stall resolver fail what awaits them.)
            Resumed::Waiting => {
                self.with_local(|l| self.lend_held_for(slot, &mut l.admitted));
                self.counters.add(0, -1);
            }
            // Its handle aborted it: it fails without taking its VCUs back (and gives up its
            // token, as a resume that waits does, last).
            Resumed::Aborted(t) => {
                let err = t.header().aborted_error();
                self.fail_waiting_item(&t, err, Lane::Resume);
                self.counters.add(0, -1);
            }
        }
    }

    /// Passes the reservation `d` of a task that finished on device `slot` to a task it
    /// made ready (in `l`'s effects) that goes to that device alone and asks for exactly
    /// `d`: that task is admitted on it, into `l.admitted`, without the device's admission
    /// (its lanes' lock, the usage word), and this thread runs it next. Returns whether one
    /// was found; the caller releases `d` otherwise.
    ///
    /// [`complete`](Self::complete) keeps the reservation for this only while equal tasks
    /// wait for the CPU (no resume, no task with data), and at most [`PASS_ON`] times in a
    /// row on a thread. Such a task then goes ahead of the tasks that wait: a wavefront of
    /// tasks that tasks spawned, running on a full CPU, otherwise takes the lanes' lock
    /// twice per task on every worker (queued, then admitted by a release), and runs at
    /// the pace of that lock whatever the number of workers. Nothing waits longer for it
    /// than [`PASS_ON`] of a thread's tasks: what is reserved never grows by it, and each
    /// thread releases one reservation per `PASS_ON + 1` tasks it finishes, so a waiting
    /// task that asks for more (a whole device) sees the usage fall until it fits, and
    /// equal ones are admitted in their order as before.
    fn pass_on(self: &Arc<Self>, slot: usize, d: Demand, l: &mut Local) -> bool {
        let dev = &self.devices[slot];
        let Some(i) = l.fx.ready.iter().position(|t| {
            let th = t.header();
            th.mask == 1 << slot
                && t.accesses().is_none()
                && Demand {
                    vcu: dev.vcu_for(th.vcu),
                    mem: th.mem,
                } == d
        }) else {
            return false;
        };
        // (Mostly the last, often the only one: taken without `remove`'s call to move the
        // rest, which it makes even when there is no rest.)
        let t = if i + 1 == l.fx.ready.len() {
            l.fx.ready.pop().expect("position found")
        } else {
            l.fx.ready.remove(i)
        };
        let h = t.header();
        crate::trace::step!(self, h, "ready");
        h.set_device(dev.device, d.vcu);
        self.trace_mapped(h, dev.device, d.vcu, d.mem);
        l.passed_on += 1;
        l.admitted.push(t);
        true
    }

    /// Completes a task whose run token the caller holds: releases its resources, publishes
    /// `outcome`, and applies what follows. `token`: the task holds a busy token; `pended`:
    /// it waited at least once (it is in the poller set).
    pub(crate) fn complete(
        self: &Arc<Self>,
        task: &TaskPtr,
        outcome: Outcome,
        token: bool,
        pended: bool,
        l: &mut Local,
    ) {
        let h = task.header();
        // (The slot of the device it was mapped to: the CPU's is 0.)
        let slot = h.slot();
        let dev = &self.devices[slot];
        let mut d = h.demand();
        // Awaited while tasks wait on the device: its VCUs are released only once the
        // tasks it wakes were scheduled. A parent that lent as many takes them at once
        // (`schedule_woken`); one that needs more queues its resume first, and resumes go
        // ahead of waiting tasks - so a fork-join parent gets its VCUs back before a task
        // from elsewhere in the tree does. Not while resumes wait: those take the VCUs in
        // their order (a parent awaiting child after child in a loop would otherwise keep
        // them from a task woken by a timer for good), and not every time while tasks
        // spawned from outside wait (see `context::gift_turn`).
        let joined = d.vcu > 0 && h.join_awaited() && dev.admission.has_waiting();
        let giftable = joined && dev.admission.no_resumes_waiting();
        // The turns count while resumes wait too: parents looping on children that take
        // their VCUs back through the resume lane, one behind the other, keep it from ever
        // emptying, and the tasks waiting behind it from ever starting; a turn sends the
        // parent this completion wakes behind them.
        let turn = joined && context::gift_turn() && {
            let wait = dev.admission.central_tasks_waiting(&mut l.admitted);
            context::turn_taken(wait);
            wait
        };
        let gift = (giftable && !turn).then(|| {
            let g = context::Gift {
                rt_id: self.id,
                slot,
                vcu: std::mem::take(&mut d.vcu),
            };
            (g, context::offer_gift(g))
        });
        // Tasks wait for the CPU: the reservation may pass on to a task this one makes
        // ready (see `pass_on`), decided once the outcome is published.
        let keep = gift.is_none()
            && slot == Device::CPU.slot()
            && d.vcu > 0
            && l.passed_on < PASS_ON
            && task.accesses().is_none()
            && dev.admission.has_waiting()
            && dev.admission.no_resumes_waiting()
            && dev.data.queued() == 0;
        if !keep {
            l.passed_on = 0;
            dev.admission.release(d, &mut l.admitted);
        }
        if let Some(acc) = task.accesses() {
            self.data_done(slot, acc, &mut l.admitted);
        }
        self.pump(slot, &mut l.admitted);
        dev.finished();
        if pended {
            // (A task finished in its first poll needs no mark: a waker cloned meanwhile
            // finds it RUNNING, which schedules nothing.)
            h.act.finish();
            self.pollers.remove(task);
        }
        // A device that failed is marked so before the outcome is published: whoever the
        // outcome wakes (an awaiter mapping its next task) must not pick the device again.
        if matches!(outcome, Err(ref e) if matches!(**e, TaskError::Device { .. })) {
            self.check_device(dev.device);
        }
        self.trace_gpu(h);
        self.trace_outcome(h, &outcome);
        graph::finish(task, outcome, &mut l.fx);
        if keep && !self.pass_on(slot, d, l) {
            l.passed_on = 0;
            dev.admission.release(d, &mut l.admitted);
        }
        l.live -= 1;
        if token {
            l.busy -= 1;
        }
        self.apply(l);
        if turn {
            // (A turn's mark not taken by a wake of this completion goes.)
            context::take_turn();
        }
        if let Some((g, prev)) = gift
            && context::end_gift(prev)
        {
            // Nobody took it.
            let d = Demand { vcu: g.vcu, mem: 0 };
            dev.admission.release(d, &mut l.admitted);
            self.launch(l);
        }
    }

    /// One busy token, counted in the runtime's counters before the caller hands it to a
    /// task other threads can see: from the tokens `l` counted ahead, counting
    /// [`BUSY_CREDIT`] more at once when it has none left.
    #[inline]
    pub(crate) fn take_busy_credit(&self, l: &mut Local) {
        if l.busy_credit == 0 {
            self.counters.add(0, BUSY_CREDIT);
            l.busy_credit = BUSY_CREDIT;
        }
        l.busy_credit -= 1;
    }

    /// A GPU task's fence finished with `status`: complete the task (if nobody else did).
    pub(crate) fn complete_fenced(self: &Arc<Self>, task: &TaskPtr, status: FenceStatus) {
        self.with_local(|l| self.complete_fenced_in(task, status, l));
    }

    /// [`complete_fenced`](Self::complete_fenced) with the caller's `l` (which the caller
    /// flushes).
    pub(crate) fn complete_fenced_in(
        self: &Arc<Self>,
        task: &TaskPtr,
        status: FenceStatus,
        l: &mut Local,
    ) {
        let h = task.header();
        if !h.transition_to_completing() {
            return;
        }
        let outcome = match status {
            FenceStatus::Failed(message) => Err(Arc::new(TaskError::Device {
                task: h.name.to_string(),
                device: h.device().unwrap_or(Device::CPU).to_string(),
                message,
            })),
            FenceStatus::Done | FenceStatus::Pending => Ok(()),
        };
        self.complete(task, outcome, true, false, l);
    }

    /// After a device error: if the backend says the device can no longer run tasks, mark
    /// it failed and fail every task waiting for it.
    pub(crate) fn check_device(self: &Arc<Self>, device: Device) {
        let dev = &self.devices[device.slot()];
        let Some((backend, index)) = &dev.gpu else {
            return;
        };
        let Ok(Some(message)) = catch_unwind(AssertUnwindSafe(|| backend.device_error(*index)))
        else {
            return;
        };
        if dev.failed.set(message.clone()).is_err() {
            return;
        }
        #[cfg(feature = "tracing")]
        tracing::error!(target: "parla::gpu", device = %device, "device failed: {message}");
        let err = |t: &TaskPtr| TaskError::Device {
            task: t.header().name.to_string(),
            device: device.to_string(),
            message: format!("the device failed earlier: {message}"),
        };
        let waiting = self.with_local(|l| dev.admission.take_waiting(&mut l.admitted));
        for (t, _, lane) in waiting {
            self.fail_waiting_item(&t, err(&t), lane);
        }
    }

    /// Takes `task`, whose abort was just requested, out of the admission lane it waits in
    /// (for its VCUs or memory, or to take back the VCUs it lent), and fails it at once:
    /// an aborted task does not wait for resources it will not use. Returns whether it did
    /// (a task that waits in no lane is failed by its next poll, or by the queuer that
    /// finds it aborted: see [`Admission::take_aborted`](admission::Admission::take_aborted)).
    ///
    /// `incoming`: what [`admission::mark_aborted`], called first, returned.
    pub(crate) fn abort_waiting(self: &Arc<Self>, task: &TaskPtr, incoming: bool) -> bool {
        #[cfg(all(test, not(parla_loom)))]
        self.abort_lookups.fetch_add(1, Ordering::Relaxed);
        // (On its way into a lane without the lock: its device's, mapped before.)
        let slots = if incoming {
            let s = task.header().slot();
            s..s + 1
        } else {
            0..self.devices.len()
        };
        for slot in slots {
            let admission = &self.devices[slot].admission;
            let taken =
                self.with_local(|l| admission.take_aborted(task, incoming, &mut l.admitted));
            if let Some((t, lane)) = taken {
                let err = t.header().aborted_error();
                self.fail_waiting_item(&t, err, lane);
                return true;
            }
        }
        false
    }

    /// Fails an item taken out of an admission lane: a task that never ran, or a task that
    /// waited for its lent VCUs (its body is dropped, what it holds released).
    pub(crate) fn fail_waiting_item(self: &Arc<Self>, t: &TaskPtr, err: TaskError, lane: Lane) {
        self.with_local(|l| match lane {
            Lane::Task => graph::fail_held(t, err, &mut l.fx),
            Lane::Resume => {
                // SAFETY: taken out of the resume lane, the only holder of its run token.
                unsafe { t.drop_body() };
                // SAFETY: as above; the run state goes with the body.
                drop(unsafe { t.header().take_run() });
                // It holds no VCUs (they are lent): completing it releases its memory.
                self.complete(t, Err(Arc::new(err)), false, true, l);
            }
        });
    }

    /// Describes what `h` (unfinished) waits for, for error messages.
    pub(crate) fn describe_wait(&self, h: &Header) -> String {
        if h.is_waiting() {
            return format!("{} waits for its dependencies", h.name);
        }
        if h.is_fenced() {
            return format!("{} waits for its GPU work", h.name);
        }
        if h.act.is_parked() {
            return format!("{} awaits other tasks", h.name);
        }
        match h.device() {
            Some(d) => {
                let u = self.devices[d.slot()].usage();
                // A task with data on a GPU also waits for room for the copies it lacks
                // there, which are counted only once it is admitted.
                let data = if h.has_data && d.arch() != Arch::Cpu {
                    " and room for its data"
                } else {
                    ""
                };
                format!(
                    "{} waits on {d} for {} VCUs and {} bytes{data}; {} VCUs and {} bytes are \
                     in use there, by tasks that wait themselves",
                    h.name,
                    vcu_float(self.devices[d.slot()].vcu_for(h.vcu)),
                    h.mem,
                    vcu_float(u.vcu),
                    u.mem
                )
            }
            None => format!("{} is not running", h.name),
        }
    }
}

#[cfg(all(test, not(parla_loom)))]
mod recycle_test {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::runtime::Runtime;
    use crate::task;

    /// Counts the drops of a task's output.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn runtime() -> Runtime {
        Runtime::builder().cpu_threads(2).build().unwrap()
    }

    /// A thread's scratch gives back what a burst made it hold, and keeps small capacity.
    #[test]
    fn scratch_gives_back_a_burst() {
        let mut l = super::Local::default();
        l.admitted.reserve(100_000);
        l.fx.ready.reserve(100_000);
        l.fx.wake.reserve(100_000);
        l.trim();
        assert!(l.admitted.capacity() <= 1024, "{}", l.admitted.capacity());
        assert!(l.fx.ready.capacity() <= 1024, "{}", l.fx.ready.capacity());
        assert!(l.fx.wake.capacity() <= 1024, "{}", l.fx.wake.capacity());
        l.admitted.reserve(100);
        let kept = l.admitted.capacity();
        l.trim();
        assert_eq!(l.admitted.capacity(), kept);
    }

    /// Detached tasks spawned from `block_on` hand their memory back when they finish (up
    /// to the bound), and the next spawn there frees one; their outputs are still dropped
    /// when they complete.
    #[test]
    fn detached_tasks_from_block_on_hand_their_memory_back_and_drop_their_output_on_completion() {
        let rt = runtime();
        let drops = Arc::new(AtomicUsize::new(0));
        let n = 2 * super::super::SPENT;
        rt.block_on(async {
            for _ in 0..n {
                let d = drops.clone();
                task(async move { Counted(d) }).spawn();
            }
        });
        // `block_on` returned: every task finished, and its output was dropped then.
        assert_eq!(drops.load(Ordering::SeqCst), n);
        let inner = rt.inner.clone();
        inner.wait_for_drivers_to_leave();
        // In the pool, or taken by this thread for its next spawns.
        let spent = inner.spent.tasks.lock().len() + inner.taken_here();
        assert!(spent > 0, "no finished task handed its memory back");
        assert!(spent <= super::super::SPENT + super::super::SPENT_BATCH);
        rt.block_on(async {
            // Nothing else runs, and a task whose handle is held is never handed back.
            let h = task(async {}).spawn();
            assert_eq!(
                inner.spent.tasks.lock().len() + inner.taken_here(),
                spent - 1,
                "a spawn did not free one first"
            );
            h.await.unwrap();
        });
    }

    /// Drivers gather finished tasks in batches, and hand back a batch they did not fill
    /// when they run out of work.
    #[test]
    fn drivers_hand_back_a_partial_batch_when_they_run_out_of_work() {
        let rt = runtime();
        let n = super::super::SPENT_BATCH / 2;
        rt.block_on(async {
            for _ in 0..n {
                task(async {}).spawn();
            }
        });
        let inner = rt.inner.clone();
        inner.wait_for_drivers_to_leave();
        let pool = inner.spent.tasks.lock().len();
        assert_eq!(inner.spent.len.load(Ordering::SeqCst), pool);
        // In the pool, or taken by this thread for its next spawns (a spawn may take what a
        // driver that ran out of work meanwhile handed back).
        let spent = pool + inner.taken_here();
        assert!(spent > 0 && spent <= n, "{spent} of {n} handed back");
    }

    /// Spawns `n` detached empty tasks from `block_on`, all after a gate task that holds
    /// one worker until every one of them is spawned (so that none finishes before its
    /// handle is dropped), and returns once they all finished.
    fn spawn_gated(rt: &Runtime, n: usize) {
        rt.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let gate = task(async move { rx.recv().unwrap() }).spawn();
            for _ in 0..n {
                task(async {}).after(&gate).spawn();
            }
            tx.send(()).unwrap();
            gate.await.unwrap();
        });
    }

    /// Tasks that all finish after they were spawned fill the pool; the drivers free the
    /// rest while it is full. Spawns take the pool's tasks a batch at a time, and once it
    /// has room the drivers hand finished tasks back again.
    #[test]
    fn drivers_hand_tasks_back_while_the_pool_has_room() {
        use std::sync::atomic::Ordering::Relaxed;
        let rt = runtime();
        let spent = super::super::SPENT;
        let batch = super::super::SPENT_BATCH;
        spawn_gated(&rt, 3 * spent);
        let inner = rt.inner.clone();
        inner.wait_for_drivers_to_leave();
        // The gate went to whichever let go of it last: this thread, which keeps it for its
        // next spawn, when its handle was the last reference; the pool, when the driver
        // that ran it held the last one (one of the pool's first batch then, the pool
        // still full below); or neither, freed at once, when the two let go at once.
        assert!(inner.taken_here() <= 1, "{}", inner.taken_here());
        inner.drop_taken_here();
        assert_eq!(inner.spent.tasks.lock().len(), spent);
        assert_eq!(inner.spent.len.load(Relaxed), spent);
        rt.block_on(async {
            // Handles held: none of these is handed back.
            let mut held = vec![task(async {}).spawn()];
            // The first spawn took a batch, and reused one of it.
            assert_eq!(inner.spent.tasks.lock().len(), spent - batch);
            assert_eq!(inner.spent.len.load(Relaxed), spent - batch);
            assert_eq!(inner.taken_here(), batch - 1);
            for _ in 1..spent {
                held.push(task(async {}).spawn());
            }
            assert_eq!(inner.spent.tasks.lock().len(), 0);
            assert_eq!(inner.taken_here(), 0);
            for h in held {
                h.await.unwrap();
            }
        });
        inner.wait_for_drivers_to_leave();
        // The handles dropped above went to this thread, for its next spawns (the tasks
        // whose driver let go of them last went to the pool): the spawns below take
        // those, and none from the pool.
        let kept = inner.taken_here();
        assert!(kept > 4 * batch + 1, "{kept}");
        let before = inner.spent.tasks.lock().len();
        // Detached and gated: the drivers let go of them last, and the pool has room for
        // them all.
        spawn_gated(&rt, 4 * batch);
        inner.wait_for_drivers_to_leave();
        let after = inner.spent.tasks.lock().len();
        assert!(
            after >= before + 4 * batch,
            "drivers handed back {} of {} tasks to a pool with room",
            after.saturating_sub(before),
            4 * batch
        );
    }

    /// A thread spawning into two runtimes in turn reuses each one's spent tasks only for
    /// that runtime: what it took from one is freed when it spawns into the other.
    #[test]
    fn spent_tasks_taken_from_one_runtime_are_not_used_for_another() {
        let a = runtime();
        let b = runtime();
        // Until tasks are left in the pool: on a loaded machine the spawning thread may
        // have taken every one handed back by the time the last task finished.
        let fill = |rt: &Runtime| {
            for _ in 0..100 {
                rt.block_on(async {
                    for _ in 0..2 * super::super::SPENT {
                        task(async {}).spawn();
                    }
                });
                rt.inner.wait_for_drivers_to_leave();
                if !rt.inner.spent.tasks.lock().is_empty() {
                    return;
                }
            }
            panic!("no finished task was handed back");
        };
        fill(&a);
        fill(&b);
        // A spawn into `a` takes a batch of `a`'s. (Handles held until the checks: no task
        // is handed back meanwhile.)
        a.block_on(async {
            let h = task(async {}).spawn();
            assert!(a.inner.taken_here() > 0, "nothing taken from a's pool");
            h.await.unwrap();
        });
        // A spawn into `b` frees those and takes a batch of `b`'s.
        let pool_b = b.inner.spent.tasks.lock().len();
        let batch = pool_b.min(super::super::SPENT_BATCH);
        assert!(batch > 0, "b's pool is empty");
        b.block_on(async {
            let h = task(async {}).spawn();
            assert_eq!(a.inner.taken_here(), 0);
            assert_eq!(b.inner.spent.tasks.lock().len(), pool_b - batch);
            assert_eq!(b.inner.taken_here(), batch - 1);
            h.await.unwrap();
        });
    }

    /// A task whose last handle is dropped outside the drivers (a row of handles dropped at
    /// once) is kept for the thread's next spawns, which take one each (here, of another
    /// size, to free before they allocate); up to a bound. Its output is dropped with the handle, and a handle that is
    /// not the last reference keeps nothing.
    #[test]
    fn tasks_let_go_of_by_their_last_handle_are_freed_at_the_next_spawns() {
        let rt = runtime();
        let inner = rt.inner.clone();
        let drops = Arc::new(AtomicUsize::new(0));
        let n = super::KEPT + 100;
        let row = rt.block_on(async {
            let row: Vec<_> = (0..n)
                .map(|_| {
                    let d = drops.clone();
                    task(async move { Counted(d) }).spawn()
                })
                .collect();
            // One awaited by reference: finished, its handle still held.
            let mut last = task(async {}).spawn();
            (&mut last).await.unwrap();
            (row, last)
        });
        inner.wait_for_drivers_to_leave();
        inner.drop_taken_here();
        let (row, last) = row;
        assert_eq!(drops.load(Ordering::SeqCst), 0, "outputs are the handles'");
        drop(row);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            n,
            "an output outlived its handle"
        );
        assert_eq!(inner.taken_here(), super::KEPT, "not kept up to the bound");
        // Another reference held (the node's): the handle keeps nothing.
        let node = last.node();
        drop(last);
        assert_eq!(inner.taken_here(), super::KEPT);
        drop(node);
        rt.block_on(async {
            let h = task(async {}).spawn();
            assert_eq!(
                inner.taken_here(),
                super::KEPT - 1,
                "a spawn did not free one"
            );
            h.await.unwrap();
        });
    }

    /// Tasks a space lets go of when a dependency lookup finds them succeeded (their
    /// handles gone) are kept for this thread's next spawns as well, and taken there; one
    /// its handle still holds is not.
    #[test]
    fn tasks_settled_by_a_dependency_lookup_are_freed_at_the_next_spawns() {
        use crate::space::TaskSpace;
        let rt = runtime();
        let inner = rt.inner.clone();
        let t = TaskSpace::new("T");
        let n = 64;
        let held = rt.block_on(async {
            for i in 0..n {
                task(async {}).id(t.at(i)).spawn();
            }
            let held = task(async {}).id(t.at(n)).spawn();
            for i in 0..=n {
                t.at(i).await.unwrap();
            }
            // (In an `Option`: a handle is a future, which the block would yield.)
            Some(held)
        });
        inner.wait_for_drivers_to_leave();
        inner.drop_taken_here();
        rt.block_on(async {
            let deps: Vec<_> = (0..=n).map(|i| t.at(i)).collect();
            let b = task(async {}).after(deps);
            assert_eq!(inner.taken_here(), n as usize, "settled tasks not kept");
            let h = b.spawn();
            assert_eq!(
                inner.taken_here(),
                n as usize - 1,
                "a spawn did not free one"
            );
            h.await.unwrap();
        });
        // Settled all the same: the ids read as finished.
        assert!(t.at(0).is_finished() && t.at(n).is_finished());
        drop(held);
    }

    /// Tasks spawned by tasks, and tasks too large for the allocator's caches, are freed
    /// where they finish.
    #[test]
    fn only_small_tasks_spawned_outside_the_drivers_are_handed_back() {
        let rt = runtime();
        rt.block_on(async {
            let p = task(async {
                for _ in 0..64 {
                    task(async {}).spawn();
                }
            })
            .spawn();
            p.await.unwrap();
        });
        // (The parent may be: its handle may go before its driver lets go of it.)
        let spent = rt.inner.spent.tasks.lock().len();
        assert!(spent <= 1, "{spent}");
        let rt = runtime();
        rt.block_on(async {
            for _ in 0..64 {
                // (Above the 1,008 bytes recycled, below the 2 KiB from which a debug build
                // boxes a future at its spawn: a boxed one makes a small task.)
                let big = [1u8; 1500];
                task(async move { std::hint::black_box(big)[0] }).spawn();
            }
        });
        assert_eq!(rt.inner.spent.tasks.lock().len(), 0);
    }
}
