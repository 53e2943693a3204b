//! Tasks: [`task`] makes a [`TaskBuilder`], `spawn` makes a [`TaskHandle`].

mod deps;
mod handle;
mod spawn;

use std::fmt;
use std::future::{Future, IntoFuture};

pub use deps::{DepList, Deps, IntoDeps, deps};
pub(crate) use handle::await_deadlock;
pub use handle::{AbortHandle, TaskHandle};

use crate::device::{IntoPlacements, Placements};
use crate::error::TaskError;
use crate::space::TaskRef;

/// Data accesses as a builder collects them.
type Accesses = Vec<(
    std::sync::Arc<dyn crate::data::DataObject>,
    crate::data::Access,
)>;

/// Starts describing a task that runs `fut`.
///
/// Nothing runs until [`spawn`](TaskBuilder::spawn) (or `.await`, which spawns and waits).
/// Defaults: placement [`Placement::Cpu`](crate::Placement::Cpu), VCUs one CPU worker's share on the CPU and 0 on
/// GPUs, no workspace memory, no id, no dependencies.
///
/// Errors, traces and profiles name a task by its id (`T[3]`); one without an id is `#n`, a
/// number unique in the process (each thread takes its numbers in blocks of 1,024, so
/// tasks spawned from several threads are not numbered in the order they were spawned):
/// give a task an id to find it by name.
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
        priority: 0,
        data: None,
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
    pub(crate) priority: u8,
    /// Declared data accesses (boxed: most tasks have none, and the builder moves by value).
    pub(crate) data: Option<Box<Accesses>>,
}

impl<F> TaskBuilder<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// Gives the task an id in a task space: `.id(t.at(("cpu", i)))`. Tasks (and awaits)
    /// can refer to the id before the task is spawned. Given before
    /// [`after`](Self::after), ids next to it there (see [`TaskSpace`](crate::TaskSpace)'s
    /// costs) are looked up along with the task's own when it is spawned. A task has one
    /// id: called again, `.id` replaces the one given before (which stays unspawned).
    #[inline(always)]
    pub fn id(self, id: TaskRef) -> Self {
        // (The id and the list moved out and back: see `after`.)
        let TaskBuilder {
            id: old, mut deps, ..
        } = self;
        if deps.keeps_near() {
            // Ids kept as slots of the old id's block are looked up on their own now.
            deps.unkeep_near(old.as_ref());
        }
        drop(old);
        TaskBuilder {
            id: Some(id),
            deps,
            ..self
        }
    }

    /// Adds dependencies: the task starts only after each of them completed successfully.
    /// Calls accumulate. Takes a [`TaskRef`], a `&`[`TaskHandle`], a
    /// [`TaskRange`](crate::TaskRange), a `&`[`TaskSpace`](crate::TaskSpace) (every task
    /// spawned into it so far), or an array, `Vec`, slice or iterator of those: the
    /// standard library's (`handles.iter()`, `map.values()`, `(0..n).map(|i| t.at(i))`)
    /// as they are, any other through [`deps`](crate::deps).
    #[inline(always)]
    pub fn after(self, deps: impl IntoDeps) -> Self {
        // The list and the id are moved out of the builder and back, rather than changed in
        // place (`&mut self.deps`): a builder whose own memory was lent to a call (the
        // list's growth, or its drop should that call unwind) is copied whole, all 168
        // bytes, on its way back to the caller. (Under callgrind, `benches/overhead.rs`:
        // 9 instructions per task fewer on the chain, 25 on the grid with handles.)
        let TaskBuilder {
            id, deps: mut list, ..
        } = self;
        deps.push_deps_near(&mut list, id.as_ref());
        TaskBuilder {
            id,
            deps: list,
            ..self
        }
    }

    /// Where the task may run: one [`Placement`](crate::Placement) or a list. The mapping policy picks among a
    /// list (by default the device with the most free capacity, GPUs on ties).
    pub fn placement(mut self, p: impl IntoPlacements) -> Self {
        self.placement = p.into_placements();
        self
    }

    /// The fraction of its device the task uses, `0.0..=1.0`. Tasks on one device run
    /// together only while their VCUs sum to at most 1; 0 means unlimited. A task that
    /// awaits other tasks lends its VCUs back while it waits. A CPU task waiting on anything
    /// else (a channel, a timer, a `JoinHandle`) keeps them while no task waits for VCUs on
    /// the CPU, and lends them as soon as one does: whenever tasks wait for VCUs on the CPU,
    /// VCUs bound the tasks being polled at once.
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

    /// How urgent the task is: 0 (the default) or more. On a GPU, a task above 0 runs on
    /// one of the device's high-priority streams, so its kernels go ahead of the work other
    /// tasks queued as soon as its inputs are ready, and it never waits in a stream behind
    /// them. Meant for the tasks on a graph's critical path (a tiled factorisation's panel).
    ///
    /// ```
    /// # let rt = parla_core::Runtime::builder().cpu_threads(1).build()?;
    /// # rt.block_on(async {
    /// parla_core::task(async { /* the next panel */ }).priority(1).await
    /// # })?;
    /// # Ok::<_, parla_core::Error>(())
    /// ```
    pub fn priority(mut self, level: u8) -> Self {
        self.priority = level;
        self
    }

    /// Declares that the task reads `data`. The task runs after the last task spawned
    /// before it that writes `data` (and alongside other readers); before its body runs,
    /// `data` is valid on its device (copied there on the task's stream if it was not).
    /// Inside, the task reads it (a host view on the CPU, a device buffer on a GPU); writing
    /// it is an error.
    pub fn reads(mut self, data: &impl crate::data::AsData) -> Self {
        self.access(data, crate::data::Access::Read);
        self
    }

    /// Declares that the task overwrites `data` without reading it: it runs after every
    /// task spawned before it that reads or writes `data`; no copy is made for it, and its
    /// copy becomes the only valid one when its body returns.
    pub fn writes(mut self, data: &impl crate::data::AsData) -> Self {
        self.access(data, crate::data::Access::Write);
        self
    }

    /// Declares that the task reads and writes `data`: ordered as a write, made valid as a
    /// read; its copy becomes the only valid one when its body returns.
    pub fn reads_writes(mut self, data: &impl crate::data::AsData) -> Self {
        self.access(data, crate::data::Access::ReadWrite);
        self
    }

    fn access(&mut self, data: &impl crate::data::AsData, access: crate::data::Access) {
        self.data
            .get_or_insert_with(Default::default)
            // SAFETY: the runtime declares the task's access.
            .push((unsafe { data.as_data() }, access));
    }

    /// Spawns the task. Never blocks. The handle resolves to the task's output, or to the
    /// [`TaskError`] that stopped it; dropping the handle does not cancel the task.
    ///
    /// Outside a parla runtime the handle resolves to [`TaskError::NoRuntime`].
    ///
    /// A future larger than 16 KiB (2 KiB in debug builds) is moved to the heap first, as
    /// `tokio::spawn` does, so that the spawn's own frames never hold a copy of it: a task
    /// keeping a large buffer across an await is spawned inside another task's poll, on a
    /// worker thread's stack, as it is from `block_on`.
    #[inline(always)]
    pub fn spawn(self) -> TaskHandle<F::Output> {
        // (A constant of the future's type: the build of a small future's spawn has no
        // trace of the other branch, which would change what is inlined around it.)
        if const { size_of::<F>() > BOX_FUTURE_THRESHOLD } {
            return self.boxed().spawn_here();
        }
        self.spawn_here()
    }

    /// The builder with its future on the heap.
    #[inline(never)]
    fn boxed(self) -> TaskBuilder<std::pin::Pin<Box<F>>> {
        let TaskBuilder {
            fut,
            id,
            deps,
            placement,
            vcus,
            memory,
            priority,
            data,
        } = self;
        TaskBuilder {
            fut: Box::pin(fut),
            id,
            deps,
            placement,
            vcus,
            memory,
            priority,
            data,
        }
    }

    /// [`spawn`](Self::spawn), the future as it is.
    #[inline(always)]
    fn spawn_here(self) -> TaskHandle<F::Output> {
        let rt = crate::runtime::context::entered_rt();
        // SAFETY: a non-null pointer was set by the guard of the scope this thread is in
        // (a driver's poll, `block_on`), which outlives this call (see `entered_rt`).
        if let Some(rt) = unsafe { rt.as_ref() } {
            // (Not through `with_rt`: a closure that captured the builder would copy it once
            // more on the way.)
            return spawn::spawn(rt, self);
        }
        crate::runtime::context::with_rt(|rt| match rt {
            Some(rt) if crate::runtime::context::in_handle_scope() => {
                let task = spawn::spawn(rt, self);
                // No driver runs a task spawned into a runtime that was dropped: it is
                // cancelled at once, as one spawned through `Handle::spawn` is.
                rt.cancel_if_shut_down();
                task
            }
            Some(rt) => spawn::spawn(rt, self),
            None => spawn::spawn_outside(self),
        })
    }
}

/// Futures larger than this many bytes are spawned boxed (see [`TaskBuilder::spawn`]); the
/// same bound as Tokio's.
const BOX_FUTURE_THRESHOLD: usize = if cfg!(debug_assertions) { 2048 } else { 16384 };

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

#[cfg(test)]
mod size_test {
    use super::*;
    use crate::graph::cell::TaskCell;
    use crate::graph::node::Header;

    /// The per-task memory budget (250 bytes per pending task) rests on these sizes; a
    /// change that grows them should be deliberate.
    #[test]
    fn task_structures_stay_small() {
        let h = std::mem::size_of::<Header>();
        let c = std::mem::size_of::<TaskCell<std::future::Ready<()>>>();
        let b = std::mem::size_of::<TaskBuilder<std::future::Ready<()>>>();
        assert!(h <= 208, "header {h}");
        assert!(c <= 216, "cell {c}");
        // 160 bytes, and 8 for the (boxed) data accesses.
        assert!(b <= 168, "builder {b}");
        assert_eq!(std::mem::size_of::<Placements>(), 24);
    }
}
