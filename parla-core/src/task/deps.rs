//! Dependencies as [`TaskBuilder::after`](super::TaskBuilder::after) takes them.

use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

use super::TaskHandle;
use crate::graph::arc::TaskPtr;
use crate::graph::node::Kind;
use crate::runtime::RtInner;
use crate::space::{TaskRange, TaskRef, TaskSpace};

/// One dependency as given to `after`, resolved when the task is spawned.
pub(crate) enum Dep {
    Ref(TaskRef),
    Range(TaskRange),
    Space(TaskSpace),
}

/// The dependencies collected by [`TaskBuilder::after`](super::TaskBuilder::after); opaque.
///
/// Ids are looked up (or their placeholders made) when `after` is called inside a runtime,
/// so the builder carries task nodes, not keys (none for an id whose task succeeded
/// already); outside a runtime they wait for `spawn`. An id next to the builder's own (in
/// its block of the space's table: `t.at(i - 1)` for a task named `t.at(i)`) is kept as a
/// bit and looked up at `spawn`, in the same lookup as the one that records the task's own
/// id.
/// Dropping a list that was never spawned lets go of the placeholders it made.
#[derive(Default)]
pub struct DepList {
    nodes: SmallVec<[TaskPtr; 2]>,
    /// Dependencies given outside a runtime, resolved at `spawn`. (Boxed: rare, and the
    /// builder, which moves by value, holds 8 bytes for them instead of a vector's 24.)
    #[allow(clippy::box_collection)]
    later: Option<Box<Vec<Dep>>>,
    /// Ids in the block of the builder's own id, a bit per slot (see
    /// [`TaskRef::near_slot`]): looked up when the task is spawned, by
    /// [`TaskSpace::insert`](crate::space::TaskSpace).
    near: u8,
    /// The runtime of the tasks left out because they succeeded already (0: none; see
    /// [`skip_succeeded`](Self::skip_succeeded)): the spawn checks that it is its own.
    skipped_rt: u32,
}

impl DepList {
    fn push(&mut self, d: Dep) {
        crate::runtime::context::with_rt(|rt| match rt {
            Some(rt) if d.resolves_in(rt) => d.resolve(rt, &mut self.nodes),
            _ => self.push_later(d),
        })
    }

    /// Keeps `d` to be resolved at `spawn`, in the runtime that spawns the task.
    #[cold]
    #[inline(never)]
    fn push_later(&mut self, d: Dep) {
        self.later.get_or_insert_default().push(d);
    }

    /// [`push`](Self::push) of a task node (a handle's task): kept as it is, inline.
    #[inline]
    pub(crate) fn push_node(&mut self, n: TaskPtr) {
        self.nodes.push(n);
    }

    /// [`push_ref`](Self::push_ref) of `r`, or its slot kept for `spawn` when it is next to
    /// `id`, the builder's own (see [`TaskRef::near_slot`]).
    #[inline(always)]
    fn push_ref_near(&mut self, r: &TaskRef, id: Option<&TaskRef>) -> bool {
        match id.and_then(|id| id.near_slot(r)) {
            Some(slot) => {
                self.near |= 1 << slot;
                true
            }
            None => false,
        }
    }

    /// Whether a dependency on a task of runtime `rt_id` that succeeded already can be left
    /// out. The list remembers the runtime of the tasks it leaves out (one runtime: a task
    /// of another that succeeded is kept, for the wiring to reject), and the spawn checks
    /// that it is the spawning runtime ([`skipped_runtime`](Self::skipped_runtime)). (The
    /// check at the spawn, where the runtime is at hand, rather than here: from the
    /// caller's crate, reading the current runtime here is a call to a thread-local's
    /// accessor for every handle given.)
    #[inline(always)]
    pub(crate) fn skip_succeeded(&mut self, rt_id: u32) -> bool {
        if self.skipped_rt == 0 {
            self.skipped_rt = rt_id;
        }
        self.skipped_rt == rt_id
    }

    /// The runtime of the tasks left out by [`skip_succeeded`](Self::skip_succeeded) (0:
    /// none).
    #[inline(always)]
    pub(crate) fn skipped_runtime(&self) -> u32 {
        self.skipped_rt
    }

    /// Whether the list keeps slots (see [`push_ref_near`](Self::push_ref_near)).
    #[inline(always)]
    pub(crate) fn keeps_near(&self) -> bool {
        self.near != 0
    }

    /// The slots kept by [`push_ref_near`](Self::push_ref_near), taken out: the caller
    /// looks them up in the block of the builder's id.
    #[inline]
    pub(crate) fn take_near(&mut self) -> u8 {
        std::mem::take(&mut self.near)
    }

    /// Before the builder's id changes from `id`: looks its kept slots up as ids of their
    /// own (the new id's block is another).
    #[cold]
    pub(crate) fn unkeep_near(&mut self, id: Option<&TaskRef>) {
        let near = self.take_near();
        let Some(id) = id else { return };
        for slot in crate::key::block_slots(near) {
            self.push_ref(TaskRef {
                space: crate::space::RefSpace::of(&id.space),
                key: id.key.in_block(slot),
            });
        }
    }

    /// [`push`](Self::push) of an id, looked up at once inside a runtime (without a [`Dep`]
    /// built and matched for it: about 30 instructions per id).
    #[inline]
    fn push_ref(&mut self, r: TaskRef) {
        // The entered runtime is read here, inline, before `with_rt` (which reads it first
        // too): through `with_rt` alone the grid of `benches/overhead.rs` with ids counts
        // about 60 more instructions per task under callgrind.
        let rt = crate::runtime::context::entered_rt();
        // SAFETY: a non-null pointer was set by the guard of the scope this thread is in
        // (a driver's poll, `block_on`), which outlives this call (see `entered_rt`).
        if let Some(rt) = unsafe { rt.as_ref() } {
            return self.push_found(r, rt);
        }
        crate::runtime::context::with_rt(|rt| match rt {
            Some(rt) => self.push_found(r, rt),
            None => self.push_later(Dep::Ref(r)),
        })
    }

    /// Looks `r` up in `rt` and keeps the node it stands for, unless its task succeeded
    /// already (see [`TaskSpace::dependency`](crate::space::TaskSpace)). An id of a space
    /// not bound to `rt` is kept for `spawn` instead (see [`Dep::resolves_in`]).
    #[inline]
    fn push_found(&mut self, r: TaskRef, rt: &Arc<RtInner>) {
        if !r.space.bound_to(rt) {
            return self.push_later(Dep::Ref(r));
        }
        if let Some(n) = r.space.dependency_bound(&r.key, rt) {
            self.nodes.push(n);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
            + self.later.as_ref().map_or(0, |l| l.len())
            + self.near.count_ones() as usize
    }

    /// Whether no dependency was given.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.later.is_none() && self.near == 0
    }

    /// Lets go of a list that holds nothing, skipping its drop glue: an empty list has
    /// nothing to release, and never held anything, so has no memory to free either (no
    /// method takes items out of a list but these two, which use it up).
    #[inline]
    pub(crate) fn forget_empty(self) {
        debug_assert!(self.is_empty() && !self.nodes.spilled());
        std::mem::forget(self);
    }

    /// The nodes, every id looked up in `rt` (placeholders made for ids not spawned yet);
    /// the list is used up, with nothing left to release.
    #[inline(always)]
    pub(crate) fn into_nodes(mut self, rt: &RtInner) -> SmallVec<[TaskPtr; 2]> {
        debug_assert_eq!(self.near, 0, "kept slots are looked up with the task's id");
        let mut nodes = std::mem::take(&mut self.nodes);
        let later = std::mem::take(&mut self.later);
        // Both fields are empty now: skipping the drop leaks nothing.
        std::mem::forget(self);
        if let Some(later) = later {
            resolve_later(*later, rt, &mut nodes);
        }
        nodes
    }
}

/// Resolves dependencies given outside a runtime, at `spawn`, into `nodes`.
#[cold]
#[inline(never)]
fn resolve_later(later: Vec<Dep>, rt: &RtInner, nodes: &mut SmallVec<[TaskPtr; 2]>) {
    for d in later {
        d.resolve(rt, nodes);
    }
}

impl Drop for DepList {
    fn drop(&mut self) {
        if self.nodes.is_empty() {
            return;
        }
        for n in self.nodes.drain(..) {
            if n.header().kind == Kind::Placeholder {
                crate::space::release_placeholder(n);
            }
        }
    }
}

impl Dep {
    /// Whether `after`, called inside runtime `rt`, looks the dependency up at once. An id
    /// (or a range of ids) of a space that `rt` has not used yet, or that another runtime
    /// uses, waits for `spawn` instead: the builder may be spawned in another runtime
    /// (through its [`Handle`](crate::Handle)), which the space may be bound to, or which a
    /// new space is then bound to - looked up here, the id would bind it to `rt`, or stand
    /// for a task of another runtime that never finishes there. (A space's tasks so far are
    /// what they are in any runtime: a task of another runtime's fails at its wiring.)
    fn resolves_in(&self, rt: &RtInner) -> bool {
        match self {
            Dep::Ref(r) => r.space.bound_to(rt),
            Dep::Range(range) => range.space.bound_to(rt),
            Dep::Space(_) => true,
        }
    }

    /// The nodes this dependency stands for, looked up in `rt`. (Out of line: its id
    /// lookups are inline, and the spawn path that resolves dependencies given outside a
    /// runtime stays small.)
    #[inline(never)]
    fn resolve(self, rt: &RtInner, out: &mut SmallVec<[TaskPtr; 2]>) {
        match self {
            Dep::Ref(r) => out.extend(r.space.dependency(&r.key, rt)),
            Dep::Range(range) => {
                for r in range.iter() {
                    out.extend(r.space.dependency(&r.key, rt));
                }
            }
            Dep::Space(s) => out.extend(s.dependencies(rt)),
        }
    }
}

impl fmt::Debug for DepList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DepList({})", self.len())
    }
}

/// What [`TaskBuilder::after`](super::TaskBuilder::after) accepts.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a dependency that `.after(..)` takes",
    label = "not a dependency",
    note = "dependencies are task ids (`t.at(i)`), task handles by reference (`.after(&h)`), \
            ranges (`t.range(0..n)`), spaces (`&t`), and arrays, `Vec`s, slices and the \
            standard library's iterators of those; `parla::deps(..)` takes any other iterator"
)]
pub trait IntoDeps {
    /// Appends the dependencies to `out`.
    #[doc(hidden)]
    fn push_deps(self, out: &mut DepList);

    /// Appends the dependencies to `out`, for a task with the id `id`.
    #[doc(hidden)]
    #[inline(always)]
    fn push_deps_near(self, out: &mut DepList, id: Option<&TaskRef>)
    where
        Self: Sized,
    {
        let _ = id;
        self.push_deps(out);
    }
}

impl IntoDeps for TaskRef {
    fn push_deps(self, out: &mut DepList) {
        out.push_ref(self);
    }
    #[inline(always)]
    fn push_deps_near(self, out: &mut DepList, id: Option<&TaskRef>) {
        if !out.push_ref_near(&self, id) {
            out.push_ref(self);
        }
    }
}
impl IntoDeps for &TaskRef {
    fn push_deps(self, out: &mut DepList) {
        out.push_ref(self.clone());
    }
    #[inline(always)]
    fn push_deps_near(self, out: &mut DepList, id: Option<&TaskRef>) {
        if !out.push_ref_near(self, id) {
            out.push_ref(self.clone());
        }
    }
}
impl<T: 'static> IntoDeps for &TaskHandle<T> {
    #[inline(always)]
    fn push_deps(self, out: &mut DepList) {
        let h = self.header();
        // A task that succeeded already orders nothing: left out without a new reference to
        // it (its count shares a line with the state the worker that ran it wrote last). Its
        // runtime is checked at the spawn (see `skip_succeeded`).
        if h.succeeded_untraced() && out.skip_succeeded(h.rt_id) {
            return;
        }
        out.push_node(self.node());
    }
}
impl IntoDeps for &TaskSpace {
    fn push_deps(self, out: &mut DepList) {
        out.push(Dep::Space(self.share()));
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
        self.push_deps_near(out, None);
    }
    #[inline(always)]
    fn push_deps_near(self, out: &mut DepList, id: Option<&TaskRef>) {
        // Each element read out in place: through the array's by-value iterator, the array
        // is copied into the iterator first, and its drop of what is left is a call (about
        // 30 instructions for `[Option<TaskRef>; 2]`).
        let items = std::mem::ManuallyDrop::new(self);
        for d in items.iter() {
            // SAFETY: each element is read exactly once (the loop visits each once) and the
            // array is never dropped (`ManuallyDrop`), so every element is moved out once
            // and dropped once, by its `push_deps_near`. Should one of those panic, the
            // elements not read yet are leaked, not dropped twice.
            let d = unsafe { std::ptr::read(d) };
            d.push_deps_near(out, id);
        }
    }
}
impl<D: IntoDeps> IntoDeps for Vec<D> {
    fn push_deps(self, out: &mut DepList) {
        self.push_deps_near(out, None);
    }
    fn push_deps_near(self, out: &mut DepList, id: Option<&TaskRef>) {
        for d in self {
            d.push_deps_near(out, id);
        }
    }
}
impl<'a, D> IntoDeps for &'a [D]
where
    &'a D: IntoDeps,
{
    fn push_deps(self, out: &mut DepList) {
        self.push_deps_near(out, None);
    }
    fn push_deps_near(self, out: &mut DepList, id: Option<&TaskRef>) {
        for d in self {
            d.push_deps_near(out, id);
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
    fn push_deps_near(self, out: &mut DepList, id: Option<&TaskRef>) {
        self.as_slice().push_deps_near(out, id)
    }
}
impl<D: IntoDeps> IntoDeps for Option<D> {
    fn push_deps(self, out: &mut DepList) {
        self.push_deps_near(out, None);
    }
    #[inline(always)]
    fn push_deps_near(self, out: &mut DepList, id: Option<&TaskRef>) {
        if let Some(d) = self {
            d.push_deps_near(out, id);
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
        self.push_deps_near(out, None);
    }
    fn push_deps_near(self, out: &mut DepList, id: Option<&TaskRef>) {
        for d in self.0 {
            d.push_deps_near(out, id);
        }
    }
}

/// `IntoDeps` for iterator types of the standard library whose items are dependencies, so
/// that `.after(handles.iter())` and `.after((0..n).map(|i| t.at(i)))` need no [`deps`]
/// around them. (A blanket impl over every iterator would overlap the impls for `Vec`,
/// `Option` and arrays; any other iterator goes through [`deps`].)
macro_rules! iter_deps {
    ($([$($g:tt)*] $it:ty;)*) => {$(
        impl<$($g)*> IntoDeps for $it
        where
            $it: Iterator,
            <$it as Iterator>::Item: IntoDeps,
        {
            fn push_deps(self, out: &mut DepList) {
                self.push_deps_near(out, None);
            }
            fn push_deps_near(self, out: &mut DepList, id: Option<&TaskRef>) {
                for d in self {
                    d.push_deps_near(out, id);
                }
            }
        }
    )*};
}
iter_deps! {
    [I, F] std::iter::Map<I, F>;
    [I, P] std::iter::Filter<I, P>;
    [I, F] std::iter::FilterMap<I, F>;
    [A, B] std::iter::Chain<A, B>;
    [I] std::iter::Take<I>;
    [I] std::iter::Skip<I>;
    [I] std::iter::StepBy<I>;
    [I] std::iter::Rev<I>;
    [I] std::iter::Cloned<I>;
    [I] std::iter::Copied<I>;
    [I] std::iter::Fuse<I>;
    [I: Iterator] std::iter::Peekable<I>;
    [I, F] std::iter::Inspect<I, F>;
    [I, P] std::iter::TakeWhile<I, P>;
    [I, P] std::iter::SkipWhile<I, P>;
    [I: Iterator<Item: IntoIterator>] std::iter::Flatten<I>;
    [I, U: IntoIterator, F] std::iter::FlatMap<I, U, F>;
    [D] std::iter::Once<D>;
    ['a, D] std::slice::Iter<'a, D>;
    [D] std::vec::IntoIter<D>;
    [D, const N: usize] std::array::IntoIter<D, N>;
    ['a, D] std::collections::vec_deque::Iter<'a, D>;
    [D] std::collections::vec_deque::IntoIter<D>;
    ['a, K, D] std::collections::hash_map::Values<'a, K, D>;
    [K, D] std::collections::hash_map::IntoValues<K, D>;
    ['a, K, D] std::collections::btree_map::Values<'a, K, D>;
    [K, D] std::collections::btree_map::IntoValues<K, D>;
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use crate::{Runtime, TaskError, task};

    fn wait_finished<T: 'static>(h: &crate::TaskHandle<T>) {
        while !h.is_finished() {
            std::thread::yield_now();
        }
    }

    /// A handle whose task succeeded already adds nothing to wait for; one that failed
    /// still fails its dependents.
    #[test]
    fn a_dependency_that_succeeded_already_is_left_out() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        rt.block_on(async {
            let done = task(async { 1 }).spawn();
            wait_finished(&done);
            let after = task(async { 2 }).after(&done);
            assert_eq!(after.deps.len(), 0);
            assert_eq!(after.await, Ok(2));
            let failed = task(async { panic!("a failing dependency") }).spawn();
            wait_finished(&failed);
            let after = task(async {}).after(&failed);
            assert_eq!(after.deps.len(), 1);
            assert!(matches!(
                after.await,
                Err(TaskError::DependencyFailed { .. })
            ));
            assert_eq!(done.await, Ok(1));
        });
    }
}
