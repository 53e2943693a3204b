//! Futures that wait for ids, ranges and whole spaces.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

use super::{Lookup, TaskRange, TaskRef, TaskSpace};
use crate::error::TaskError;
use crate::graph::arc::TaskPtr;
use crate::graph::node::{Dependent, Kind, Outcome};
use crate::runtime::{bridge, waker};

/// Waits for one node, registering one waiter on it the first time it must, and
/// deregistering it when dropped before the node finished.
struct NodeWait {
    /// (Taken out in `drop`: a placeholder's last references must be gone when it is
    /// released, see [`Drop`](#impl-Drop-for-NodeWait).)
    node: ManuallyDrop<TaskPtr>,
    waiter: Option<Arc<AtomicWaker>>,
    hurried: bool,
    /// Whether the poller's loan may go to this task first, if it waits for admission (see
    /// `Awaiting::pending_on`): not for a member of a space awaited as a whole, which is
    /// awaited in no particular order.
    claims: bool,
}

impl NodeWait {
    fn new(node: TaskPtr) -> Self {
        NodeWait {
            node: ManuallyDrop::new(node),
            waiter: None,
            hurried: false,
            claims: true,
        }
    }

    /// A wait for one member of a space awaited as a whole: the poller's loan goes to its
    /// device, whose waiting tasks take it in their order.
    fn member(node: TaskPtr) -> Self {
        let mut w = NodeWait::new(node);
        w.claims = false;
        w
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let h = self.node.header();
        if let Some(o) = h.outcome() {
            return Poll::Ready(o);
        }
        let awaiting = waker::Awaiting::now();
        let w = awaiting.waker(cx, h.rt_id);
        match &self.waiter {
            Some(aw) => aw.register(&w),
            None => {
                if bridge::may_spin(h)
                    && bridge::spin_fenced(&self.node)
                    && let Some(o) = h.outcome()
                {
                    return Poll::Ready(o);
                }
                let aw = Arc::new(AtomicWaker::new());
                aw.register(&w);
                if let Some(o) = h.add_dependent(Dependent::Waiter(aw.clone())) {
                    return Poll::Ready(o);
                }
                self.waiter = Some(aw);
            }
        }
        if let Some(o) = h.outcome() {
            return Poll::Ready(o);
        }
        if awaiting.failed() {
            return Poll::Ready(Err(Arc::new(crate::task::await_deadlock(h))));
        }
        if !self.hurried {
            self.hurried = bridge::hurry(h, cx.waker());
        }
        // (A placeholder is nobody's to claim: the poller's loan goes to the device, and the
        // poll keeps no reference to it, which would keep it in its space once given up.)
        let claims = self.claims && h.kind != Kind::Placeholder;
        awaiting.pending_on(h.rt_id, || TaskPtr::clone(&self.node), claims);
        Poll::Pending
    }
}

impl Drop for NodeWait {
    /// Deregisters the waiter, and releases a placeholder with this wait's reference to it:
    /// the space removes a placeholder only once nothing else refers to it, so a wait that
    /// kept its own reference meanwhile would leave every id it gave up on in the space.
    fn drop(&mut self) {
        // SAFETY: `node` is not used again: this is the wait's drop, and the field is
        // taken once, here.
        let node = unsafe { ManuallyDrop::take(&mut self.node) };
        let h = node.header();
        if let Some(w) = self.waiter.take()
            && !h.is_done()
        {
            h.remove_waiter(&w);
        }
        if h.kind == Kind::Placeholder {
            super::release_placeholder(node);
        }
    }
}

fn result(o: Outcome) -> Result<(), TaskError> {
    o.map_err(|e| (*e).clone())
}

/// Waits for the task behind a [`TaskRef`]; made by awaiting the reference.
#[must_use = "futures do nothing unless awaited"]
pub struct RefWait {
    r: TaskRef,
    wait: Option<NodeWait>,
}

impl RefWait {
    pub(crate) fn new(r: TaskRef) -> Self {
        RefWait { r, wait: None }
    }
}

impl Future for RefWait {
    type Output = Result<(), TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        waker::cooperative(cx, |cx| self.poll_ref(cx))
    }
}

impl RefWait {
    /// [`poll`](Future::poll) without Tokio's budget.
    fn poll_ref(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TaskError>> {
        let this = self;
        if this.wait.is_none() {
            let node = crate::runtime::context::with_rt(|rt| match rt {
                Some(rt) => this.r.space.awaited(&this.r.key, rt),
                None => this.r.space.lookup(&this.r.key),
            });
            match node {
                Lookup::Node(n) => this.wait = Some(NodeWait::new(n)),
                Lookup::Retired(o) => return Poll::Ready(result(o)),
                Lookup::Missing => {
                    return Poll::Ready(Err(TaskError::NeverSpawned {
                        id: this.r.to_string(),
                    }));
                }
            }
        }
        match this.wait.as_mut() {
            Some(w) => w.poll(cx).map(result),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Waits for every id of a [`TaskRange`]; made by awaiting the range. Resolves to the first
/// failure in key order once all finished, else `Ok(())`. Once one of its ids was found never
/// spawned (the runtime had nothing left to run), the ids after it that were not spawned by
/// then are not waited for: each would be another such finding, one stall of the runtime
/// apiece, and the range fails all the same.
#[must_use = "futures do nothing unless awaited"]
pub struct RangeWait {
    range: TaskRange,
    next: i128,
    current: Option<RefWait>,
    first_err: Option<TaskError>,
    /// One of its ids failed with `NeverSpawned`.
    never_spawned: bool,
    /// Once one did, where the rest of the range is long against the ids the space holds:
    /// the ids of the rest that the space holds then, to wait for in turn (a walk of every
    /// integer left, looking each up, took a poll as long as the range: `0..u64::MAX` never
    /// ended).
    held: Option<std::vec::IntoIter<i128>>,
}

/// The length of the rest of a range, in ids per block the space holds, above which the
/// ids left to wait for once one was never spawned are found in the space's blocks rather
/// than by looking each id of the range up.
const WALK_PER_BLOCK: i128 = 8;

impl RangeWait {
    pub(crate) fn new(range: TaskRange) -> Self {
        let next = range.start;
        RangeWait {
            range,
            next,
            current: None,
            first_err: None,
            never_spawned: false,
            held: None,
        }
    }
}

impl Future for RangeWait {
    type Output = Result<(), TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        waker::cooperative(cx, |cx| this.poll_range(cx))
    }
}

impl RangeWait {
    /// [`poll`](Future::poll) without Tokio's budget (one unit per poll, not per id).
    fn poll_range(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TaskError>> {
        let this = self;
        loop {
            if this.current.is_none() {
                if let Some(held) = this.held.as_mut() {
                    match held.next() {
                        Some(i) => {
                            let r = this.range.space.at(super::int_part(i));
                            this.current = Some(RefWait::new(r));
                        }
                        None => return Poll::Ready(this.first_err.take().map_or(Ok(()), Err)),
                    }
                    continue;
                }
                if !this.never_spawned {
                    // The ids known to have succeeded, skipped a block at a time.
                    this.next += (this.range.space).succeeded_from(this.next, this.range.end);
                }
                if this.next >= this.range.end {
                    return Poll::Ready(this.first_err.take().map_or(Ok(()), Err));
                }
                let r = this.range.space.at(super::int_part(this.next));
                this.next += 1;
                if this.never_spawned && matches!(r.space.lookup(&r.key), Lookup::Missing) {
                    continue;
                }
                this.current = Some(RefWait::new(r));
            }
            let Some(cur) = this.current.as_mut() else {
                continue;
            };
            match cur.poll_ref(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    this.current = None;
                    if let Err(e) = r {
                        if !this.never_spawned && matches!(e, TaskError::NeverSpawned { .. }) {
                            this.never_spawned = true;
                            let space = &this.range.space;
                            let left = this.range.end - this.next;
                            if left > WALK_PER_BLOCK * space.blocks() as i128 {
                                let held = space.held_ints(this.next, this.range.end);
                                this.held = Some(held.into_iter());
                            }
                        }
                        this.first_err.get_or_insert(e);
                    }
                }
            }
        }
    }
}

/// Waits for every task spawned into a [`TaskSpace`] before the await began (when the
/// future was made, by `.await` or `into_future()`): a task spawned later, by this thread or
/// another, is not waited for; made by awaiting the space. Resolves to the first failure found once all finished, else `Ok(())`:
/// a retired task that failed counts (the one retired first), as the ones still held do.
#[must_use = "futures do nothing unless awaited"]
pub struct SpaceWait {
    nodes: Vec<TaskPtr>,
    current: Option<NodeWait>,
    first_err: Option<TaskError>,
}

impl SpaceWait {
    pub(crate) fn new(space: &TaskSpace) -> Self {
        // (The space lets go of the tasks that succeeded already.)
        let mut nodes = space.settle();
        nodes.retain(|n| n.header().outcome().is_none_or(|o| o.is_err()));
        SpaceWait {
            nodes,
            current: None,
            first_err: space.retired_failure().map(|(_, e)| (*e).clone()),
        }
    }
}

impl Future for SpaceWait {
    type Output = Result<(), TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        waker::cooperative(cx, |cx| this.poll_space(cx))
    }
}

impl SpaceWait {
    /// [`poll`](Future::poll) without Tokio's budget (one unit per poll, not per task).
    fn poll_space(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TaskError>> {
        let this = self;
        loop {
            if this.current.is_none() {
                match this.nodes.pop() {
                    Some(n) => this.current = Some(NodeWait::member(n)),
                    None => return Poll::Ready(this.first_err.take().map_or(Ok(()), Err)),
                }
            }
            let Some(cur) = this.current.as_mut() else {
                continue;
            };
            match cur.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(o) => {
                    this.current = None;
                    if let Err(e) = o {
                        this.first_err.get_or_insert((*e).clone());
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for RefWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RefWait({})", self.r)
    }
}

impl std::fmt::Debug for RangeWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RangeWait({:?}, next {})", self.range, self.next)
    }
}

impl std::fmt::Debug for SpaceWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SpaceWait({} left)",
            self.nodes.len() + self.current.is_some() as usize
        )
    }
}
