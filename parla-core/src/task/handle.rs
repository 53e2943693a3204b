//! [`TaskHandle`]: the future of a spawned task's result.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::TaskError;
use crate::graph::arc::{TaskArc, TaskPtr};
use crate::graph::cell::Join;
use crate::graph::node::{Header, Outcome};
use crate::runtime::{bridge, let_go_last, waker};

/// A spawned task: a future of its result.
///
/// Await it (by value) for `Result<T, TaskError>`; pass `&handle` to
/// [`TaskBuilder::after`](crate::TaskBuilder::after) to depend on it. Dropping it lets the
/// task run on, detached, and its output is dropped as soon as it finishes (as Tokio's
/// `JoinHandle`).
pub struct TaskHandle<T: 'static> {
    /// Dropped by hand, in `Drop` (see there).
    task: ManuallyDrop<TaskArc<dyn Join<T>>>,
    /// Whether this handle already spun on the task's GPU fence.
    spun: bool,
    /// Whether this handle asked the fence poller to hurry.
    hurried: bool,
    /// Whether this handle gave the task a waker (`register_join`), for its drop to take
    /// back.
    registered: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T: 'static> TaskHandle<T> {
    pub(crate) fn new(task: TaskArc<dyn Join<T>>) -> Self {
        TaskHandle {
            task: ManuallyDrop::new(task),
            spun: false,
            hurried: false,
            registered: false,
            _t: PhantomData,
        }
    }

    /// Whether the task finished (successfully or not).
    pub fn is_finished(&self) -> bool {
        self.task.header().outcome().is_some()
    }

    /// Aborts the task, as Tokio's `JoinHandle::abort` does: it resolves to
    /// [`TaskError::Aborted`] unless it finished already, and its dependents to
    /// [`TaskError::DependencyFailed`] naming it.
    ///
    /// - A task still waiting for its dependencies is failed at once, without running.
    /// - A task that started is stopped at its next poll: its future is dropped where it
    ///   awaits (a task suspended on a channel or a timer is woken for that).
    /// - A task whose dependencies are met but that waits for its device's VCUs or memory,
    ///   or a task that lent its VCUs while it awaited and waits to take them back, is
    ///   taken out of the device's queue and fails at once: it does not wait for resources
    ///   it will not use.
    /// - A GPU task whose body returned already finishes as it would have: its work is on
    ///   the device.
    /// - As after a task that panicked, the tasks that access an array after an aborted
    ///   writer of it (in the order of their declared accesses) fail too.
    ///
    /// Works from any thread. Awaiting the handle afterwards gives the outcome.
    ///
    /// ```
    /// # let rt = parla_core::Runtime::builder().cpu_threads(2).build().unwrap();
    /// # rt.block_on(async {
    /// use parla_core::{TaskError, task};
    /// let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
    /// let stuck = task(async move { rx.await.ok() }).spawn();
    /// let after = task(async {}).after(&stuck).spawn();
    /// stuck.abort();
    /// assert!(matches!(stuck.await, Err(TaskError::Aborted { .. })));
    /// assert!(matches!(after.await, Err(TaskError::DependencyFailed { .. })));
    /// # });
    /// ```
    pub fn abort(&self) {
        abort(&self.node());
    }

    /// A handle that can [`abort`](AbortHandle::abort) the task, cloneable and usable
    /// while this handle is awaited elsewhere (Tokio's `JoinHandle::abort_handle`).
    ///
    /// ```
    /// # let rt = parla_core::Runtime::builder().cpu_threads(2).build().unwrap();
    /// # rt.block_on(async {
    /// use parla_core::{TaskError, task};
    /// let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
    /// let h = task(async move { rx.await.ok() }).spawn();
    /// let stop = h.abort_handle();
    /// let waiter = tokio::spawn(h); // the handle is awaited elsewhere
    /// stop.abort();
    /// assert!(matches!(waiter.await.unwrap(), Err(TaskError::Aborted { .. })));
    /// assert!(stop.is_finished());
    /// # });
    /// ```
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle { task: self.node() }
    }

    /// The task's name: `T[cpu, 0]`, or `#<n>` for a task without an id.
    pub fn name(&self) -> String {
        self.task.header().name.to_string()
    }

    pub(crate) fn node(&self) -> TaskPtr {
        TaskArc::clone(&self.task).into_task()
    }

    /// The task's header.
    pub(crate) fn header(&self) -> &crate::graph::node::Header {
        self.task.header()
    }

    fn ready(&self, o: Outcome) -> Poll<Result<T, TaskError>> {
        Poll::Ready(match o {
            Err(e) => Err((*e).clone()),
            // SAFETY: this is the task's one handle, and it saw the `Ok` outcome published
            // (under the links lock). The output is gone only if this handle took it (the
            // runtime drops it only once the handle is gone): awaited again after `Ready`.
            Ok(()) => unsafe { self.task.take_output() }
                .ok_or_else(|| TaskError::OutputTaken { task: self.name() }),
        })
    }
}

/// The `Deadlock` error of an await the stall resolver failed: `awaited` can never finish.
pub(crate) fn await_deadlock(awaited: &Header) -> TaskError {
    let by = crate::current_task().map_or_else(|| "block_on".to_string(), |t| t.name());
    if crate::runtime::context::is_running(awaited) {
        return TaskError::Deadlock {
            task: by,
            device: crate::current_device().to_string(),
            reason: "it awaits itself (its own id, or a range or space that holds it), \
                     which cannot finish before the task does"
                .to_string(),
        };
    }
    let why = crate::runtime::context::with_rt(|rt| match rt {
        Some(rt) => rt.describe_wait(awaited),
        None => format!("{} is not finished", awaited.name),
    });
    TaskError::Deadlock {
        task: by,
        device: crate::current_device().to_string(),
        reason: format!(
            "it awaits {}, and nothing left could finish it ({why})",
            awaited.name
        ),
    }
}

impl<T: 'static> Future for TaskHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.registered && self.task.header().outcome().is_some() {
            // Finished before the first poll (no wait at all): one operation of Tokio's
            // budget. (A poll after a wait comes after a yield; charging every poll cost
            // fork-join 66 instructions per task.)
            return waker::cooperative(cx, |cx| self.poll_join(cx));
        }
        self.poll_join(cx)
    }
}

impl<T: 'static> TaskHandle<T> {
    /// [`poll`](Future::poll) without Tokio's budget.
    #[inline(always)]
    fn poll_join(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, TaskError>> {
        let this = self;
        let h = this.task.header();
        if let Some(o) = h.outcome() {
            return this.ready(o);
        }
        // (Before the spin below: a GPU task whose body returns meanwhile has its fence
        // recorded by its driver, which sees it awaited, instead of by this spin's query.)
        h.set_join_awaited();
        if !this.spun {
            // A GPU task whose work is in flight: see its fence at the latency of a poll
            // loop rather than through the poller thread.
            this.spun = true;
            if bridge::may_spin(h)
                && bridge::spin_fenced(&this.node())
                && let Some(o) = h.outcome()
            {
                return this.ready(o);
            }
        }
        this.registered = true;
        let awaiting = waker::Awaiting::now();
        if let Some(o) = h.register_join(awaiting.waker(cx, h.rt_id)) {
            return this.ready(o);
        }
        if awaiting.failed() {
            return Poll::Ready(Err(await_deadlock(h)));
        }
        if !this.hurried {
            this.hurried = bridge::hurry(h, cx.waker());
        }
        awaiting.pending_on(h.rt_id, || this.node(), true);
        Poll::Pending
    }
}

impl<T: 'static> Drop for TaskHandle<T> {
    fn drop(&mut self) {
        let h = self.task.header();
        if self.registered {
            drop(h.unregister_join());
        }
        // An output without drop glue needs no owner: the handle leaves the join state alone
        // (one atomic update fewer on a line the task's driver may be writing), and the
        // completer then leaves the output in place, which is as good as dropping it. But a
        // handle of a task without an id that is, or may be, claimable (held for the poll
        // that spawned it, or queued in a shard), dropped in a task's poll before its task
        // completed, says so whatever the output: a task nobody holds is no lender's to
        // claim (`Header::claimable`). (A program spawning from `block_on` and dropping the
        // handles pays a look at a thread-local: those tasks are never claimable.)
        let detach = crate::runtime::context::in_task_poll()
            && h.detach_on_drop()
            && crate::scheduler::admission::may_be_claimable(&h.lane);
        if (std::mem::needs_drop::<T>() || detach) && h.join_drop() {
            // SAFETY: by the join protocol the task completed and its completer left the
            // output to this handle, which does not take it any more.
            unsafe { self.task.drop_output() };
        }
        if detach {
            waker::unclaimed(&self.node());
        }
        // SAFETY: the field is taken once, here, and not used after.
        let task = unsafe { ManuallyDrop::take(&mut self.task) };
        // The last reference to a finished task spawned outside the drivers, dropped there
        // too (a program dropping a row of handles at once): its memory is freed at one of
        // this thread's next spawns instead, for the allocation to reuse it.
        let_go_last(task.into_task());
    }
}

impl<T: 'static> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("task", &self.name())
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Aborts a task from anywhere, without its result: see [`TaskHandle::abort_handle`].
///
/// Cheap to clone; it keeps the task's memory until it is dropped.
#[derive(Clone)]
pub struct AbortHandle {
    task: TaskPtr,
}

impl AbortHandle {
    /// Aborts the task, as [`TaskHandle::abort`] does.
    pub fn abort(&self) {
        abort(&self.task);
    }

    /// Whether the task finished (successfully or not).
    pub fn is_finished(&self) -> bool {
        self.task.header().outcome().is_some()
    }
}

impl fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortHandle")
            .field("task", &self.task.header().name.to_string())
            .field("finished", &self.is_finished())
            .finish()
    }
}

thread_local! {
    /// The aborts asked for on this thread while it aborts a task, in order (`None` while
    /// it aborts none): see [`abort`].
    static NESTED: std::cell::RefCell<Option<std::collections::VecDeque<TaskPtr>>> =
        const { std::cell::RefCell::new(None) };
}

/// Ends [`abort`]'s run of nested aborts, however it ends (a drop that panics included:
/// the aborts it left are dropped, not made).
struct NestedGuard;

impl Drop for NestedGuard {
    fn drop(&mut self) {
        let left = NESTED.try_with(|n| n.borrow_mut().take()).ok().flatten();
        drop(left);
    }
}

/// [`TaskHandle::abort`] of `task`.
///
/// Aborting a task that never ran drops its future here, and the future's drop may abort
/// another task (a guard that aborts on drop), whose future's drop aborts a third: made
/// one inside the other, a chain of 10,000 such tasks overflowed the main thread's stack
/// (3,000 a worker's). An abort asked for while this thread aborts a task is queued
/// instead, and made once that one is done (as Tokio drops an aborted task's future on a
/// worker, later), before the outermost `abort` returns.
fn abort(task: &TaskPtr) {
    let queued = NESTED
        .try_with(|n| match n.borrow_mut().as_mut() {
            Some(q) => {
                q.push_back(task.clone());
                true
            }
            None => false,
        })
        .unwrap_or(false);
    if queued {
        return;
    }
    let outermost = NESTED
        .try_with(|n| *n.borrow_mut() = Some(Default::default()))
        .is_ok();
    let _guard = outermost.then_some(NestedGuard);
    abort_one(task);
    while let Some(next) = NESTED
        .try_with(|n| n.borrow_mut().as_mut().and_then(|q| q.pop_front()))
        .ok()
        .flatten()
    {
        abort_one(&next);
    }
}

/// [`abort`] of one task.
fn abort_one(task: &TaskPtr) {
    let h = task.header();
    if h.outcome().is_some() || !h.request_abort() {
        return;
    }
    if h.is_waiting() {
        let failed = crate::runtime::in_runtime(h.rt_id, |rt| {
            rt.with_local(|l| crate::graph::fail_unrun(task, h.aborted_error(), &mut l.fx))
        });
        if failed == Some(true) {
            return;
        }
    }
    // Marked aborted in its admission word first: from here on, a queuer that would put it
    // in a device's lane (for its first admission, or its VCUs back) hands it back instead
    // (`admission::mark_aborted`), the wake below included.
    let incoming = crate::scheduler::admission::mark_aborted(task);
    // Started, or about to: its next poll sees the request. A wake makes sure there is one
    // (a spurious wake to a task that runs or was never polled does nothing); the touch
    // before it is the aborter's half of the handshake in `Header::abort_seen_after_poll`.
    // A parked task that the wake sends to take its VCUs back fails there instead
    // (`RtInner::resume_lent`).
    let due = h.act.touch();
    waker::task_poll_waker(task).wake_by_ref();
    // Waiting for its resources (its first admission, or its VCUs back), in a device's
    // queue: it fails now. Only a task due for a poll at the touch (never polled, or woken
    // since) can wait in a lane: one that ran, waited, or ended was in none, and whoever
    // would queue it since (a wake, after the touch in the activity word's order) finds
    // the mark above. (Every abort of a task waiting outside the runtime looked through
    // every lane: aborting 50,000 of 500,000 tasks waiting on channels, while the others'
    // wakes filled the resume lane, took 10 s instead of 1.)
    crate::runtime::in_runtime(h.rt_id, |rt| {
        (due && rt.abort_waiting(task, incoming)) || rt.abort_data_waiting(task)
    });
}

#[cfg(all(test, not(parla_loom)))]
mod abort_test {
    use crate::{TaskError, task};
    use std::sync::atomic::Ordering;

    /// Aborting tasks that wait on channels (they ran, and wait outside the runtime) fails
    /// each without a look through the devices' lanes, which every such abort made (one
    /// pass over every waiting task per abort); a task queued for its first admission is
    /// still looked for there, and fails at once.
    #[test]
    fn aborting_tasks_that_wait_outside_the_runtime_looks_in_no_lane() {
        let rt = crate::Runtime::builder().cpu_threads(2).build().unwrap();
        let n = 200;
        let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (results, looked) = rt.block_on(async {
            let mut keep = Vec::new();
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
                    keep.push(tx);
                    let started = started.clone();
                    task(async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        rx.await.unwrap_or(0)
                    })
                    .spawn()
                })
                .collect();
            while started.load(Ordering::SeqCst) < n {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let inner = crate::runtime::context::with_rt(|rt| rt.cloned()).unwrap();
            let before = inner.abort_lookups.load(Ordering::Relaxed);
            for h in &hs {
                h.abort();
            }
            let looked = inner.abort_lookups.load(Ordering::Relaxed) - before;
            let mut results = Vec::new();
            for h in hs {
                results.push(h.await);
            }
            drop(keep);
            (results, looked)
        });
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(TaskError::Aborted { .. }))),
            "{results:?}"
        );
        assert_eq!(looked, 0, "aborts looked through the lanes");
        // A task that never ran, queued behind a task that holds the whole CPU: looked
        // for, and failed at once.
        let (r, looked) = rt.block_on(async {
            let hold = task(async { std::thread::sleep(std::time::Duration::from_millis(200)) })
                .vcus(1.0)
                .spawn();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let queued = task(async { 1 }).spawn();
            let inner = crate::runtime::context::with_rt(|rt| rt.cloned()).unwrap();
            let before = inner.abort_lookups.load(Ordering::Relaxed);
            queued.abort();
            let looked = inner.abort_lookups.load(Ordering::Relaxed) - before;
            let r = queued.await;
            assert!(!hold.is_finished(), "the queued task waited for the CPU");
            hold.await.unwrap();
            (r, looked)
        });
        assert!(matches!(r, Err(TaskError::Aborted { .. })), "{r:?}");
        assert_eq!(looked, 1);
    }

    /// Aborts on drop.
    struct AbortOnDrop(Option<crate::AbortHandle>);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            if let Some(h) = self.0.take() {
                h.abort();
            }
        }
    }

    /// A chain of tasks waiting for the CPU, each holding a guard that aborts the next when
    /// dropped, aborted at its head, from `block_on` and from a task: each abort drops the
    /// next body, whose guard aborts the one after. Every task ends aborted, none runs, and
    /// the aborts are made one after the other, not one inside the other (which overflowed
    /// the test thread's stack, 2 MiB, at about 2,500 tasks).
    #[test]
    fn a_chain_of_aborts_on_drop_does_not_nest() {
        // Two workers held (their VCUs the whole CPU), one left for the aborting task.
        let rt = crate::Runtime::builder().cpu_threads(3).build().unwrap();
        let n = 20_000;
        for from_task in [false, true] {
            let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let results = rt.block_on(async {
                let go = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let holds: Vec<_> = (0..2)
                    .map(|_| {
                        let go = go.clone();
                        task(async move {
                            while !go.load(Ordering::Acquire) {
                                std::hint::spin_loop();
                            }
                        })
                        .vcus(0.5)
                        .spawn()
                    })
                    .collect();
                let mut next = None;
                let mut hs: Vec<_> = (0..n)
                    .rev()
                    .map(|i| {
                        let guard = AbortOnDrop(next.take());
                        let ran = ran.clone();
                        let h = task(async move {
                            let _guard = guard;
                            ran.fetch_add(1, Ordering::SeqCst);
                            i
                        })
                        .spawn();
                        next = Some(h.abort_handle());
                        h
                    })
                    .collect();
                hs.reverse();
                let head = hs[0].abort_handle();
                if from_task {
                    task(async move { head.abort() }).vcus(0.0).await.unwrap();
                } else {
                    head.abort();
                }
                let mut results = Vec::new();
                for h in hs {
                    results.push(h.await);
                }
                go.store(true, Ordering::Release);
                for h in holds {
                    h.await.unwrap();
                }
                results
            });
            assert_eq!(ran.load(Ordering::SeqCst), 0, "an aborted task ran");
            let aborted = results
                .iter()
                .filter(|r| matches!(r, Err(TaskError::Aborted { .. })))
                .count();
            assert_eq!(aborted, n, "from a task: {from_task}");
        }
    }
}
