//! Tasks: [`task`] makes a [`TaskBuilder`], `spawn` makes a [`TaskHandle`].

mod cell;
pub(crate) mod header;

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smallvec::SmallVec;

pub(crate) use cell::{Join, Placeholder, Resume, Task, TaskCell};

use crate::device::{IntoPlacements, Placements};
use crate::error::TaskError;
use crate::space::{TaskRange, TaskRef, TaskSpace};

/// Starts describing a task that runs `fut`.
///
/// Nothing runs until [`spawn`](TaskBuilder::spawn) (or `.await`, which spawns and waits).
/// Defaults: placement [`Placement::Cpu`](crate::Placement::Cpu), VCUs one CPU worker's share on the CPU and 0 on
/// GPUs, no workspace memory, no id, no dependencies.
///
/// ```
/// # let rt = parla_core::Runtime::builder().cpu_threads(2).build().unwrap();
/// # rt.block_on(async {
/// use parla_core::{TaskSpace, task};
/// let t = TaskSpace::new("T");
/// let a = task(async { 20 }).id(t.at(0)).spawn();
/// let b = task(async { 1 }).id(t.at(1)).after(t.at(0)).spawn();
/// assert_eq!(a.await? + b.await?, 21);
/// # Ok::<_, parla_core::TaskError>(()) }).unwrap();
/// ```
pub fn task<F>(fut: F) -> TaskBuilder<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    TaskBuilder {
        fut,
        id: None,
        deps: DepList::default(),
        placement: Placements::CPU,
        vcus: None,
        memory: 0,
    }
}

/// A task being described: its future, id, dependencies and constraints.
///
/// Built by [`task`] (or by a `#[task]` function). [`spawn`](Self::spawn) starts it; awaiting
/// the builder spawns it and waits for its result.
#[must_use = "a task does nothing until it is spawned or awaited"]
pub struct TaskBuilder<F> {
    pub(crate) fut: F,
    pub(crate) id: Option<TaskRef>,
    pub(crate) deps: DepList,
    pub(crate) placement: Placements,
    pub(crate) vcus: Option<f64>,
    pub(crate) memory: u64,
}

impl<F> TaskBuilder<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// Gives the task an id in a task space: `.id(t.at(("cpu", i)))`. Tasks (and awaits)
    /// can refer to the id before the task is spawned.
    pub fn id(mut self, id: TaskRef) -> Self {
        self.id = Some(id);
        self
    }

    /// Adds dependencies: the task starts only after each of them completed successfully.
    /// Calls accumulate. Takes a [`TaskRef`], a `&`[`TaskHandle`], a [`TaskRange`], a
    /// `&`[`TaskSpace`] (every task spawned into it so far), or an array, `Vec` or iterator of
    /// those.
    pub fn after(mut self, deps: impl IntoDeps) -> Self {
        deps.push_deps(&mut self.deps);
        self
    }

    /// Where the task may run: one [`Placement`](crate::Placement) or a list. The mapping policy picks among a
    /// list (by default the device with the most free capacity, GPUs on ties).
    pub fn placement(mut self, p: impl IntoPlacements) -> Self {
        self.placement = p.into_placements();
        self
    }

    /// The fraction of its device the task uses, `0.0..=1.0`. Tasks on one device run
    /// together only while their VCUs sum to at most 1; 0 means unlimited.
    pub fn vcus(mut self, vcus: f64) -> Self {
        self.vcus = Some(vcus);
        self
    }

    /// Bytes of workspace the task reserves on its device while it runs. The task waits
    /// while the device's budget is taken.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = bytes;
        self
    }

    /// Spawns the task. Never blocks. The handle resolves to the task's output, or to the
    /// [`TaskError`] that stopped it; dropping the handle does not cancel the task.
    ///
    /// Outside a parla runtime the handle resolves to [`TaskError::NoRuntime`].
    pub fn spawn(self) -> TaskHandle<F::Output> {
        crate::context::with_rt(|rt| match rt {
            Some(rt) => crate::scheduler::spawn(rt, self),
            None => crate::scheduler::spawn_detached_error(self),
        })
    }
}

impl<F> IntoFuture for TaskBuilder<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = Result<F::Output, TaskError>;
    type IntoFuture = TaskHandle<F::Output>;

    fn into_future(self) -> TaskHandle<F::Output> {
        self.spawn()
    }
}

impl<F> fmt::Debug for TaskBuilder<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("id", &self.id)
            .field("deps", &self.deps.len())
            .field("placement", &self.placement)
            .field("vcus", &self.vcus)
            .field("memory", &self.memory)
            .finish()
    }
}

/// A spawned task: a future of its result.
///
/// Await it (by value) for `Result<T, TaskError>`; pass `&handle` to
/// [`TaskBuilder::after`] to depend on it. Dropping it lets the task run on, detached.
pub struct TaskHandle<T> {
    pub(crate) task: Arc<dyn Join<T>>,
    /// Whether this handle already spun on the task's GPU fence.
    pub(crate) spun: bool,
    /// Whether this handle asked the fence poller to hurry.
    pub(crate) hurried: bool,
    /// Registered while it waits (the stall resolver fails awaits that can never finish).
    pub(crate) parked: Option<crate::runtime::parked::AwaitRegistration>,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T: 'static> TaskHandle<T> {
    /// Whether the task finished (successfully or not).
    pub fn is_finished(&self) -> bool {
        self.task.header().outcome().is_some()
    }

    /// The task's name: `T[cpu, 0]`, or `#<n>` for a task without an id.
    pub fn name(&self) -> String {
        self.task.header().name.to_string()
    }

    pub(crate) fn node(&self) -> Arc<dyn Task> {
        self.task.clone()
    }
}

impl<T: 'static> Future for TaskHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.spun {
            // A GPU task whose work is in flight: see its fence at the latency of a poll
            // loop rather than through the poller thread.
            self.spun = true;
            let node = self.node();
            crate::scheduler::spin_fenced(&node);
        }
        let r = self.task.poll_join(cx);
        if r.is_ready() {
            self.parked = None;
            return r;
        }
        if let Some(e) = crate::runtime::parked::AwaitRegistration::failure(&self.parked) {
            self.parked = None;
            return Poll::Ready(Err(e));
        }
        let node = self.node();
        if !self.hurried {
            self.hurried = crate::scheduler::hurry(&node, cx.waker());
        }
        let this = &mut *self;
        crate::runtime::parked::AwaitRegistration::park(&mut this.parked, &node, cx.waker());
        r
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

/// One dependency as given to `after`, resolved when the task is spawned.
pub(crate) enum Dep {
    Node(Arc<dyn Task>),
    Ref(TaskRef),
    Range(TaskRange),
    Space(TaskSpace),
}

/// The dependencies collected by [`TaskBuilder::after`]; opaque.
///
/// Ids are looked up (or their placeholders made) when `after` is called inside a runtime,
/// so the builder carries task nodes, not keys; outside a runtime they wait for `spawn`.
#[derive(Default)]
pub struct DepList {
    pub(crate) nodes: SmallVec<[Arc<dyn Task>; 2]>,
    pub(crate) later: Vec<Dep>,
}

impl DepList {
    fn push(&mut self, d: Dep) {
        if let Dep::Node(n) = d {
            self.nodes.push(n);
            return;
        }
        crate::context::with_rt(|rt| match rt {
            Some(rt) => d.resolve(rt, &mut self.nodes),
            None => self.later.push(d),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len() + self.later.len()
    }
}

impl Dep {
    /// The nodes this dependency stands for, looked up in `rt` (placeholders are made for
    /// ids not spawned yet).
    pub(crate) fn resolve(
        self,
        rt: &crate::runtime::RtInner,
        out: &mut SmallVec<[Arc<dyn Task>; 2]>,
    ) {
        match self {
            Dep::Node(n) => out.push(n),
            Dep::Ref(r) => out.extend(r.space.node(&r.key, Some(rt))),
            Dep::Range(range) => {
                for r in range.iter() {
                    out.extend(r.space.node(&r.key, Some(rt)));
                }
            }
            Dep::Space(s) => out.extend(s.tasks()),
        }
    }
}

impl fmt::Debug for DepList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DepList({})", self.len())
    }
}

/// What [`TaskBuilder::after`] accepts.
pub trait IntoDeps {
    /// Appends the dependencies to `out`.
    #[doc(hidden)]
    fn push_deps(self, out: &mut DepList);
}

impl IntoDeps for TaskRef {
    fn push_deps(self, out: &mut DepList) {
        out.push(Dep::Ref(self));
    }
}
impl IntoDeps for &TaskRef {
    fn push_deps(self, out: &mut DepList) {
        out.push(Dep::Ref(self.clone()));
    }
}
impl<T: 'static> IntoDeps for &TaskHandle<T> {
    fn push_deps(self, out: &mut DepList) {
        out.push(Dep::Node(self.node()));
    }
}
impl IntoDeps for &TaskSpace {
    fn push_deps(self, out: &mut DepList) {
        out.push(Dep::Space(self.clone()));
    }
}
impl IntoDeps for TaskSpace {
    fn push_deps(self, out: &mut DepList) {
        out.push(Dep::Space(self));
    }
}
impl IntoDeps for &TaskRange {
    fn push_deps(self, out: &mut DepList) {
        out.push(Dep::Range(self.clone()));
    }
}
impl IntoDeps for TaskRange {
    fn push_deps(self, out: &mut DepList) {
        out.push(Dep::Range(self));
    }
}
impl<D: IntoDeps, const N: usize> IntoDeps for [D; N] {
    fn push_deps(self, out: &mut DepList) {
        for d in self {
            d.push_deps(out);
        }
    }
}
impl<D: IntoDeps> IntoDeps for Vec<D> {
    fn push_deps(self, out: &mut DepList) {
        for d in self {
            d.push_deps(out);
        }
    }
}
impl<'a, D> IntoDeps for &'a [D]
where
    &'a D: IntoDeps,
{
    fn push_deps(self, out: &mut DepList) {
        for d in self {
            d.push_deps(out);
        }
    }
}
impl<'a, D> IntoDeps for &'a Vec<D>
where
    &'a D: IntoDeps,
{
    fn push_deps(self, out: &mut DepList) {
        self.as_slice().push_deps(out)
    }
}
impl<D: IntoDeps> IntoDeps for Option<D> {
    fn push_deps(self, out: &mut DepList) {
        if let Some(d) = self {
            d.push_deps(out);
        }
    }
}
impl IntoDeps for () {
    fn push_deps(self, _out: &mut DepList) {}
}

/// Wraps any iterator of dependencies: `.after(deps((0..n).map(|i| t.at(i))))`.
pub fn deps<I>(iter: I) -> Deps<I::IntoIter>
where
    I: IntoIterator,
    I::Item: IntoDeps,
{
    Deps(iter.into_iter())
}

/// An iterator of dependencies, made by [`deps`].
#[derive(Debug, Clone)]
pub struct Deps<I>(I);

impl<I> IntoDeps for Deps<I>
where
    I: Iterator,
    I::Item: IntoDeps,
{
    fn push_deps(self, out: &mut DepList) {
        for d in self.0 {
            d.push_deps(out);
        }
    }
}

macro_rules! iter_deps {
    ($($it:ident<$($g:ident),*>),*) => {$(
        impl<$($g),*> IntoDeps for std::iter::$it<$($g),*>
        where
            std::iter::$it<$($g),*>: Iterator,
            <std::iter::$it<$($g),*> as Iterator>::Item: IntoDeps,
        {
            fn push_deps(self, out: &mut DepList) {
                for d in self {
                    d.push_deps(out);
                }
            }
        }
    )*};
}
iter_deps!(Map<I, F>, Filter<I, P>, FilterMap<I, F>, Chain<A, B>, Take<I>, Skip<I>, StepBy<I>, Rev<I>, Cloned<I>);

#[cfg(test)]
mod size_test {
    use super::*;

    /// The per-task memory budget (500 bytes per pending task) rests on these sizes; a
    /// change that grows them should be deliberate.
    #[test]
    fn task_structures_stay_small() {
        assert!(std::mem::size_of::<header::Header>() <= 200);
        assert!(std::mem::size_of::<TaskCell<std::future::Ready<()>>>() <= 208);
        assert!(std::mem::size_of::<TaskBuilder<std::future::Ready<()>>>() <= 168);
        assert_eq!(std::mem::size_of::<Placements>(), 24);
    }
}
