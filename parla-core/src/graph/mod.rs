//! The task graph as a plain state machine: wiring a spawned task to its dependencies,
//! publishing an outcome and cascading it to dependents, releasing GPU dependents early.
//!
//! Nothing here runs a task, touches a counter of the runtime or names the executor: every
//! operation records what must happen next in an [`Effects`] value (tasks that became
//! ready, wakers to wake, tasks that finished without running), and the executor applies it.
//! So the graph can be unit- and property-tested without a runtime.
//!
//! # Invariants
//! - Cascades (a failure failing its dependents, and theirs) run iteratively over a work
//!   list, never by recursion: a chain of any length cannot overflow the stack.
//! - A node's outcome is published once; every dependent registered before the publication
//!   is told exactly once, and every one registering after it sees the outcome at once
//!   (`node` module invariants).
//! - A task that fails before running is claimed (WAITING -> DONE) before its outcome is
//!   published, so a cascade never fails it twice with different errors.

pub(crate) mod activity;
pub(crate) mod arc;
pub(crate) mod arena;
pub(crate) mod cell;
pub(crate) mod node;

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Waker;

use crate::device::backend::Fence;
use crate::error::TaskError;
use arc::{TaskArc, TaskPtr};
use node::{Added, Dependent, Header, Kind, Outcome, Published};

/// What a graph operation asks the executor to do. (The executor keeps one per driver and
/// reuses it, so its vectors keep their capacity: no allocation per step.)
#[derive(Default)]
pub(crate) struct Effects {
    /// Tasks whose dependencies are all met: map them and admit them.
    pub(crate) ready: Vec<TaskPtr>,
    /// Wakers of handles and awaits of nodes that finished.
    pub(crate) wake: Vec<Waker>,
    /// How many tasks finished without running (each was live).
    pub(crate) unrun: u32,
}

impl Effects {
    /// Counts `t`, about to be published with `err` without having run, and traces its
    /// completion now: whoever its outcome wakes, or an await that finds it done, may drop
    /// the runtime (and close its trace) at once.
    fn unrun(&mut self, t: &TaskPtr, err: &TaskError) {
        self.unrun += 1;
        #[cfg(feature = "tracing")]
        if let Some(trace) = t.header().trace.as_deref() {
            trace.completed_unrun(err);
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (t, err);
    }
}

/// The error of `task`, whose dependency `dep` failed with `e`: it names the root failure.
pub(crate) fn dependency_failed(task: &Header, dep: &Header, e: &Arc<TaskError>) -> TaskError {
    dependency_failed_of(&task.name.to_string(), dep, e)
}

/// [`dependency_failed`] for a task (or other reader) named `task`.
pub(crate) fn dependency_failed_of(task: &str, dep: &Header, e: &Arc<TaskError>) -> TaskError {
    let (dependency, cause) = match &**e {
        TaskError::DependencyFailed {
            dependency, cause, ..
        } => (dependency.clone(), cause.clone()),
        // Named as the task under the id, which it is not: the original may have succeeded.
        TaskError::DuplicateId { .. } => {
            (format!("{} (a duplicate, refused)", dep.name), e.clone())
        }
        _ => (dep.name.to_string(), e.clone()),
    };
    TaskError::DependencyFailed {
        task: task.to_string(),
        dependency,
        cause,
    }
}

/// Wires `task` (WAITING, its spawn guard held) to `deps`. `placeholder`: the forward
/// reference of the task's id that it replaced (depending on it is depending on itself).
/// `rt_id`: the task's runtime; a dependency on a node of another runtime is an error.
///
/// Returns `Ok(true)` when the task became ready (its guard is dropped here), `Ok(false)`
/// while dependencies are pending, or the error the task must fail with (the caller then
/// calls [`fail_unrun`]; the guard is left for it).
pub(crate) fn wire<I>(
    task: &TaskPtr,
    placeholder: Option<&TaskPtr>,
    deps: I,
) -> Result<bool, TaskError>
where
    I: IntoIterator<Item = TaskPtr>,
    I::IntoIter: ExactSizeIterator,
{
    let h = task.header();
    let deps = deps.into_iter();
    // All counted up front (one write instead of one atomic update per dependency); those
    // that need no waiting are given back with the guard, in one update at the end.
    h.count_dependencies(deps.len() as u32);
    let mut unneeded = 0;
    for node in deps {
        if TaskArc::ptr_eq(&node, task) || placeholder.is_some_and(|p| TaskArc::ptr_eq(p, &node)) {
            return Err(TaskError::Cycle {
                ids: vec![h.name.to_string()],
            });
        }
        let nh = node.header();
        if nh.rt_id != h.rt_id {
            if let Some(Err(e)) = nh.outcome() {
                // (Failed: what the task inherits, of whichever runtime.)
                return Err(dependency_failed(h, nh, &e));
            }
            return Err(TaskError::WrongRuntime {
                task: h.name.to_string(),
                reason: format!(
                    "its dependency {} belongs to another parla runtime",
                    nh.name
                ),
            });
        }
        if nh.succeeded() {
            // Finished already: nothing to wait for.
            unneeded += 1;
            continue;
        }
        match nh.add_task_dependent(task) {
            Added::Registered => {}
            Added::Done(o) => {
                // Finished already (the spawn guard keeps the count above zero).
                unneeded += 1;
                if let Err(e) = o
                    && !follows_only(task, &node)
                {
                    return Err(dependency_failed(h, nh, &e));
                }
            }
            Added::Fenced(f) => {
                // Its GPU work is enqueued: this GPU task's stream will wait on it.
                unneeded += 1;
                h.add_wait(f);
            }
        }
    }
    Ok(h.dependencies_done(unneeded + 1))
}

/// Whether `task` only follows `dep` (a reader of data it writes: `Accesses::follows`),
/// so that a failure of `dep` counts as its completion.
#[cold]
fn follows_only(task: &TaskPtr, dep: &TaskPtr) -> bool {
    task.accesses().is_some_and(|a| a.follows(dep))
}

/// Fails a node that never ran (WAITING) with `err`, and cascades. Returns whether this
/// call failed it (it may have finished or failed already).
pub(crate) fn fail_unrun(task: &TaskPtr, err: TaskError, fx: &mut Effects) -> bool {
    if !claim(task, &err, fx) {
        return false;
    }
    finish(task, Err(Arc::new(err)), fx);
    true
}

/// Fails a task that became ready and never ran, whose run token the caller holds (taken
/// out of admission, or failed at mapping): its body is dropped and the failure cascades.
pub(crate) fn fail_held(task: &TaskPtr, err: TaskError, fx: &mut Effects) {
    // SAFETY: the caller holds the run token of a task that never ran.
    unsafe { task.drop_body() };
    fx.unrun(task, &err);
    finish(task, Err(Arc::new(err)), fx);
}

/// Claims a WAITING node for failing (WAITING -> DONE, its body dropped) so that no cascade
/// fails it with another error; the caller then [`finish`]es it with `err`. Returns whether
/// this call won.
pub(crate) fn claim(task: &TaskPtr, err: &TaskError, fx: &mut Effects) -> bool {
    let h = task.header();
    if !h.claim_unrun() {
        return false;
    }
    // SAFETY: this call won WAITING -> DONE, so the body never ran and never will.
    unsafe { task.drop_body() };
    if h.kind == Kind::Task {
        fx.unrun(task, err);
    }
    true
}

/// Publishes `outcome` for `task` (which ran, or was claimed) and tells everything waiting
/// on it: dependents become ready or fail, placeholders mirror it, waiters and the handle
/// are woken.
pub(crate) fn finish(task: &TaskPtr, outcome: Outcome, fx: &mut Effects) {
    // Nodes failed or mirrored on the way, to publish in turn (allocated only for a
    // cascade).
    let mut work: Vec<(TaskPtr, Outcome)> = Vec::new();
    publish(task, outcome, fx, &mut work);
    if work.capacity() == 0 {
        // No cascade: the list never held anything, so it has nothing to drop (checked
        // here rather than in a call to its drop, for every task).
        std::mem::forget(work);
        return;
    }
    cascade(work, fx);
}

/// Publishes the outcomes of a cascade (nodes failed or mirrored on the way), and theirs.
#[inline(never)]
fn cascade(mut work: Vec<(TaskPtr, Outcome)>, fx: &mut Effects) {
    while let Some((t, o)) = work.pop() {
        publish(&t, o, fx, &mut work);
    }
}

/// Publishes one node's outcome; dependents it fails (and placeholders that mirror it) go
/// to `work`.
fn publish(t: &TaskPtr, o: Outcome, fx: &mut Effects, work: &mut Vec<(TaskPtr, Outcome)>) {
    let h = t.header();
    let Published {
        dependents,
        join,
        drop_output,
    } = h.publish(o.clone());
    h.transition_to_done();
    if h.kind == Kind::Task && drop_output {
        // SAFETY: by the join protocol, the handle is gone and will not take it.
        unsafe { t.drop_output() };
    }
    if let Some(w) = join {
        fx.wake.push(w);
    }
    if dependents.is_empty() {
        // (Dropped inline: most tasks finish with no dependents.)
        return;
    }
    for d in dependents {
        match d {
            Dependent::Waiter(w) => {
                if let Some(w) = w.take() {
                    fx.wake.push(w);
                }
            }
            Dependent::Task(d) => {
                let dh = d.header();
                if dh.kind == Kind::Placeholder {
                    // A forward reference mirrors the task spawned under its id.
                    if dh.claim_unrun() {
                        work.push((d, o.clone()));
                    }
                    continue;
                }
                match &o {
                    Ok(()) => {
                        if dh.dependency_done() {
                            fx.ready.push(d);
                        }
                    }
                    Err(_) if follows_only(&d, t) => {
                        if dh.dependency_done() {
                            fx.ready.push(d);
                        }
                    }
                    Err(e) => {
                        // (The error is made before the claim, which traces it: a
                        // dependent claimed already is rare, and this is a failure's path.)
                        let err = dependency_failed(dh, h, e);
                        if claim(&d, &err, fx) {
                            work.push((d, Err(Arc::new(err))));
                        }
                    }
                }
            }
        }
    }
}

/// Task `task`, spawned under the id placeholder `p` stood for and seen by no other thread
/// yet, takes `p`'s place: `p`'s dependents become `task`'s own, and `p` finishes with
/// nothing left to tell. So a forward reference costs nothing once its task is spawned,
/// instead of a node that waits for the task and mirrors its outcome.
///
/// The caller makes sure nothing can register on `p` any more: the only references to it
/// are the space's (whose shard the caller holds locked, and which now names `task`) and
/// the runtime's registry of forward references, which registers nothing. Returns false,
/// leaving `p` alone, when `p` finished already (the stall resolver failed it).
pub(crate) fn take_over(p: &TaskPtr, task: &TaskPtr) -> bool {
    let ph = p.header();
    if !ph.claim_unrun() {
        return false;
    }
    task.header().adopt_dependents(ph.hand_over_dependents());
    true
}

/// A GPU task's body returned and its work is enqueued behind `fence`: its GPU-only
/// dependents need not wait for the host to see the fence (runahead) - they become ready
/// now, and their streams will wait on the fence. Returns whether anything else waits on
/// the task's completion (a dependent that is not GPU-only, a handle awaiting it).
pub(crate) fn body_fenced(task: &TaskPtr, fence: &Arc<dyn Fence>, fx: &mut Effects) -> bool {
    let h = task.header();
    h.transition_to_fenced();
    let (early, others) = h.set_fence(fence.clone());
    for d in early {
        let dh = d.header();
        dh.add_wait(fence.clone());
        if dh.dependency_done() {
            fx.ready.push(d);
        }
    }
    others
}

/// A node of the depth-first search, its successors, and the next successor to visit.
type Frame = (TaskPtr, Vec<TaskPtr>, usize);

/// Cycles of unfinished nodes reachable from `roots` along dependent edges, each in
/// dependency order: one for each edge back to a node on the search's path (every cycle
/// has a node with such an edge; cycles that share nodes may come as one). (Every
/// dependency cycle passes through an id referenced before it was spawned - an edge to a
/// task spawned later can only be made through its id - so the roots are the forward
/// references.)
pub(crate) fn find_cycles(roots: &[TaskPtr]) -> Vec<Vec<TaskPtr>> {
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let key = |t: &TaskPtr| TaskArc::as_ptr(t) as *const () as usize;
    let mut color: HashMap<usize, u8> = HashMap::new();
    let mut cycles = Vec::new();
    for root in roots {
        if root.header().is_done() || color.contains_key(&key(root)) {
            continue;
        }
        let mut stack: Vec<Frame> = Vec::new();
        color.insert(key(root), GREY);
        stack.push((root.clone(), root.header().task_dependents(), 0));
        while let Some((_, succ, i)) = stack.last_mut() {
            if *i == succ.len() {
                let Some((n, _, _)) = stack.pop() else { break };
                color.insert(key(&n), BLACK);
                continue;
            }
            let next = succ[*i].clone();
            *i += 1;
            match color.get(&key(&next)) {
                Some(&GREY) => {
                    if let Some(at) = stack.iter().position(|(n, _, _)| key(n) == key(&next)) {
                        cycles.push(stack[at..].iter().map(|(n, _, _)| n.clone()).collect());
                    }
                }
                Some(_) => {}
                None => {
                    color.insert(key(&next), GREY);
                    let s = next.header().task_dependents();
                    stack.push((next, s, 0));
                }
            }
        }
    }
    cycles
}

#[cfg(all(test, not(parla_loom)))]
mod test;
