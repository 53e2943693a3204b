//! Futures that wait for ids, ranges and whole spaces.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

use super::{TaskRange, TaskRef, TaskSpace};
use crate::error::TaskError;
use crate::runtime::parked::AwaitRegistration;
use crate::task::Task;
use crate::task::header::{Dependent, Outcome};

/// Waits for one node, registering one waiter on it the first time it must.
struct NodeWait {
    node: Arc<dyn Task>,
    waker: Option<Arc<AtomicWaker>>,
    hurried: bool,
    parked: Option<AwaitRegistration>,
}

impl NodeWait {
    fn new(node: Arc<dyn Task>) -> Self {
        NodeWait {
            node,
            waker: None,
            hurried: false,
            parked: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let h = self.node.header();
        if let Some(o) = h.outcome() {
            return Poll::Ready(o);
        }
        if let Some(e) = AwaitRegistration::failure(&self.parked) {
            return Poll::Ready(Err(Arc::new(e)));
        }
        match &self.waker {
            Some(w) => w.register(cx.waker()),
            None => {
                if crate::scheduler::spin_fenced(&self.node)
                    && let Some(o) = h.outcome()
                {
                    return Poll::Ready(o);
                }
                let w = Arc::new(AtomicWaker::new());
                w.register(cx.waker());
                if let Some(o) = h.add_dependent(Dependent::Waiter(w.clone())) {
                    return Poll::Ready(o);
                }
                self.waker = Some(w);
            }
        }
        if let Some(o) = h.outcome() {
            return Poll::Ready(o);
        }
        if !self.hurried {
            self.hurried = crate::scheduler::hurry(&self.node, cx.waker());
        }
        AwaitRegistration::park(&mut self.parked, &self.node, cx.waker());
        crate::context::note_blocked();
        Poll::Pending
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
        let this = &mut *self;
        if this.wait.is_none() {
            let node =
                crate::context::with_rt(|rt| this.r.space.node(&this.r.key, rt.map(|r| &**r)));
            match node {
                Some(n) => this.wait = Some(NodeWait::new(n)),
                None => {
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
/// failure in key order once all finished, else `Ok(())`.
#[must_use = "futures do nothing unless awaited"]
pub struct RangeWait {
    range: TaskRange,
    next: i128,
    current: Option<RefWait>,
    first_err: Option<TaskError>,
}

impl RangeWait {
    pub(crate) fn new(range: TaskRange) -> Self {
        let next = range.start;
        RangeWait {
            range,
            next,
            current: None,
            first_err: None,
        }
    }
}

impl Future for RangeWait {
    type Output = Result<(), TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            if this.current.is_none() {
                if this.next >= this.range.end {
                    return Poll::Ready(this.first_err.take().map_or(Ok(()), Err));
                }
                let r = this.range.space.at(super::int_part(this.next));
                this.next += 1;
                this.current = Some(RefWait::new(r));
            }
            let Some(cur) = this.current.as_mut() else {
                continue;
            };
            match Pin::new(cur).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    this.current = None;
                    if let Err(e) = r {
                        this.first_err.get_or_insert(e);
                    }
                }
            }
        }
    }
}

/// Waits for every task spawned into a [`TaskSpace`] before the await began; made by
/// awaiting the space. Resolves to the first failure found once all finished, else `Ok(())`.
#[must_use = "futures do nothing unless awaited"]
pub struct SpaceWait {
    nodes: Vec<Arc<dyn Task>>,
    current: Option<NodeWait>,
    first_err: Option<TaskError>,
}

impl SpaceWait {
    pub(crate) fn new(space: &TaskSpace) -> Self {
        let mut nodes = space.tasks();
        nodes.retain(|n| n.header().outcome().is_none_or(|o| o.is_err()));
        SpaceWait {
            nodes,
            current: None,
            first_err: None,
        }
    }
}

impl Future for SpaceWait {
    type Output = Result<(), TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            if this.current.is_none() {
                match this.nodes.pop() {
                    Some(n) => this.current = Some(NodeWait::new(n)),
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
