//! Spawning: a builder becomes a task node, wired into the graph and (once ready) handed to
//! the executor.

use std::future::Future;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{TaskBuilder, TaskHandle};
use crate::data::Accesses;
use crate::device::{Arch, Demand, Placements, SlotMask, resolve, vcu_fixed};
use crate::error::TaskError;
use crate::graph::arc::{TaskArc, TaskPtr};
use crate::graph::cell::{Join, TaskCell};
use crate::graph::node::{
    Consume, DEFAULT_VCU, Dependent, Header, Kind, Name, Recycle, Task, vt_of,
};
use crate::graph::{self, Effects};
use crate::runtime::data::WithData;
use crate::runtime::{RtInner, context};

static NEXT_ANON: AtomicU64 = AtomicU64::new(0);

/// The largest task allocation handed back for reuse (`RtInner::retire`): what the
/// allocator's per-thread caches hold (glibc's tcache: chunks up to 1032 bytes), and a
/// bound on the memory the runtime keeps that way.
const RECYCLE_BYTES: usize = 1008;

#[inline]
fn name_of(id: &Option<crate::space::TaskRef>) -> Name {
    match id {
        Some(r) => Name::Id(r.space.name_arc(), r.key.clone()),
        None => Name::Anon(next_anon()),
    }
}

/// How many anonymous task numbers a thread takes from [`NEXT_ANON`] at a time.
const ANON_BLOCK: u64 = 1024;

thread_local! {
    /// This thread's block of anonymous task numbers: the next one, and the end.
    static ANON: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// A number for an anonymous task, unique in the process: from this thread's block, so
/// that threads spawning tasks at once (a fork-join on every worker) do not update one
/// shared counter per task.
#[inline]
fn next_anon() -> u64 {
    ANON.with(|c| {
        let (mut next, mut end) = c.get();
        if next == end {
            next = NEXT_ANON.fetch_add(ANON_BLOCK, Ordering::Relaxed);
            end = next + ANON_BLOCK;
        }
        c.set((next + 1, end));
        next
    })
}

/// Whether these are the default constraints (the CPU, its default share, no workspace),
/// which always fit: checked inline on the spawn path.
#[inline(always)]
fn is_default(placement: &Placements, vcus: Option<f64>, mem: u64) -> bool {
    placement.is_cpu_only() && vcus.is_none() && mem == 0
}

/// Checks the constraints against the devices. Returns the slots that can ever hold the
/// task and the fixed-point VCUs asked for. `data`: bytes of declared data, which a GPU must
/// hold besides the workspace (the host holds it in place).
fn constraints(
    rt: &RtInner,
    placement: &Placements,
    vcus: Option<f64>,
    mem: u64,
    data: u64,
) -> Result<(SlotMask, u32), String> {
    if is_default(placement, vcus, mem) {
        return Ok((1, DEFAULT_VCU));
    }
    let vcu = match vcus {
        None => DEFAULT_VCU,
        Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => vcu_fixed(v),
        Some(v) => {
            return Err(format!(
                "vcus = {v}: a task uses between 0.0 and 1.0 of a device"
            ));
        }
    };
    let mask = resolve(placement, rt.gpus).map_err(|e| {
        // (Why the runtime has no GPU, where the placement asked for one.)
        if rt.gpus == 0 && !placement.is_empty() {
            format!("{e} ({})", rt.no_gpu_why)
        } else {
            e
        }
    })?;
    if mem == 0 && data == 0 {
        // Every device holds a task of at most one VCU and no memory (a GPU task with the
        // default constraints, mostly): no need to ask each one.
        return Ok((mask, vcu));
    }
    let mut fits = 0;
    let mut biggest = 0;
    // Whether a candidate counts the data in its budget (the host's copies are not counted).
    let mut data_counted = false;
    for (slot, dev) in rt.devices.iter().enumerate() {
        if mask & (1 << slot) == 0 {
            continue;
        }
        biggest = biggest.max(dev.admission.mem_capacity());
        let on_device = if dev.device.arch() == Arch::Cpu {
            0
        } else {
            data_counted = true;
            data
        };
        let d = Demand {
            vcu: dev.vcu_for(vcu),
            mem: mem.saturating_add(on_device),
        };
        if dev.admission.can_ever_fit(d) {
            fits |= 1 << slot;
        }
    }
    if fits == 0 {
        let names: Vec<String> = (0..rt.devices.len())
            .filter(|s| mask & (1 << s) != 0)
            .map(|s| rt.devices[s].device.to_string())
            .collect();
        let what = if data > 0 && data_counted {
            format!("memory = {mem} bytes and {data} bytes of data exceed")
        } else {
            format!("memory = {mem} bytes exceeds")
        };
        return Err(format!(
            "{what} the largest budget among [{}] ({biggest} bytes)",
            names.join(", ")
        ));
    }
    Ok((fits, vcu))
}

/// Spawns a task on `rt`. See [`TaskBuilder::spawn`].
pub(crate) fn spawn<F>(rt: &Arc<RtInner>, b: TaskBuilder<F>) -> TaskHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let TaskBuilder {
        fut,
        id,
        deps,
        placement,
        vcus,
        memory,
        priority,
        data,
    } = b;
    let Some(data) = data.filter(|d| !d.is_empty()) else {
        // A small task is written into the memory of one that finished, when it has the
        // same size: outside the drivers, one a driver finished; inside, one this thread
        // let go of (see `RtInner::reuse_spent`).
        let recycle = if size_of::<TaskCell<F>>() > RECYCLE_BYTES {
            Recycle::No
        } else if context::in_driver() {
            Recycle::Inside
        } else {
            Recycle::Outside
        };
        let reused = match recycle {
            Recycle::No => None,
            Recycle::Outside => rt.reuse_spent::<TaskCell<F>>(false),
            Recycle::Inside => rt.reuse_spent::<TaskCell<F>>(true),
        };
        let checked = if is_default(&placement, vcus, memory) {
            Ok((1, DEFAULT_VCU))
        } else {
            constraints(rt, &placement, vcus, memory, 0)
        };
        let init = |h: &mut MaybeUninit<Header>| {
            let header = init_header::<TaskCell<F>>(h, rt, &id, &checked, memory, priority);
            if header.trace.is_none() {
                header.recycle = recycle;
            }
        };
        let cell = TaskCell::new_arc(reused, init, fut, ());
        return spawn_cell(rt, cell, id, deps, checked, None);
    };
    let acc = Arc::new(Accesses::new(*data));
    let checked = constraints(rt, &placement, vcus, memory, acc.bytes());
    let init = |h: &mut MaybeUninit<Header>| {
        type C<F> = TaskCell<WithData<F>, Arc<Accesses>>;
        init_header::<C<F>>(h, rt, &id, &checked, memory, priority).has_data = true;
    };
    let cell = TaskCell::new_arc(None, init, WithData::new(fut, acc.clone()), acc.clone());
    spawn_cell(rt, cell, id, deps, checked, Some(&acc))
}

/// Puts the new task `cell` in the graph ([`wire_spawned`]) and returns its handle. The
/// wiring borrows the one reference that becomes the handle's, and clones it only to hand
/// the task on, so a task that waits costs no reference taken and dropped again.
#[inline(always)]
fn spawn_cell<C, T>(
    rt: &Arc<RtInner>,
    cell: TaskArc<C>,
    id: Option<crate::space::TaskRef>,
    deps: crate::task::DepList,
    checked: Result<(SlotMask, u32), String>,
    data: Option<&Accesses>,
) -> TaskHandle<T>
where
    C: Join<T> + 'static,
    T: 'static,
{
    let task: TaskPtr = cell.into_task();
    wire_spawned(rt, &task, id, deps, checked, data);
    // SAFETY: `task` is `cell`, unsized (the same reference, moved): the pointer `into_raw`
    // gives back is that allocation's, with its reference, and `C` is its type.
    let cell: TaskArc<C> = unsafe { TaskArc::from_raw(TaskArc::into_raw(task).cast::<C>()) };
    TaskHandle::new(cell.into_join())
}

/// Writes the header of a new task of cell type `C` into `h` (its place in the task's
/// allocation: [`TaskCell::new_arc`]), and returns it.
#[inline(always)]
fn init_header<'h, C: Task>(
    h: &'h mut MaybeUninit<Header>,
    rt: &RtInner,
    id: &Option<crate::space::TaskRef>,
    checked: &Result<(SlotMask, u32), String>,
    memory: u64,
    priority: u8,
) -> &'h mut Header {
    let (mask, vcu) = checked.as_ref().map_or((0, 0), |&(m, v)| (m, v));
    let header = h.write(Header::new(
        vt_of::<C>(),
        name_of(id),
        Kind::Task,
        rt.id,
        mask,
        vcu,
        memory,
    ));
    header.priority = priority;
    header.prepare_gpu();
    #[cfg(feature = "tracing")]
    if rt.trace.is_some() || crate::trace::may_trace() {
        *header.trace = crate::trace::cold(|| task_span(rt, &header.name));
    }
    header
}

/// The span of a new task, if a subscriber wants it.
#[cfg(feature = "tracing")]
fn task_span(rt: &RtInner, name: &Name) -> Option<Box<crate::graph::node::TaskTrace>> {
    use tracing::field::Empty;
    let span = rt.in_trace(|| {
        tracing::trace_span!(
            target: "parla::task",
            parent: None,
            "task",
            task.id = %name,
            device = Empty,
            vcu = Empty,
            mem.bytes = Empty,
        )
    });
    (!span.is_disabled()).then(|| Box::new(crate::graph::node::TaskTrace { span }))
}

/// Traces the dependencies of a new task (the ones with spans).
#[inline(always)]
fn trace_dependencies(rt: &RtInner, h: &Header, nodes: &[TaskPtr]) {
    #[cfg(feature = "tracing")]
    if h.trace.is_some() {
        crate::trace::cold(|| {
            for n in nodes {
                if let Some(id) = n.header().trace.as_ref().and_then(|t| t.span.id()) {
                    crate::trace::step!(rt, h, "dependency", dep = id.into_u64());
                }
            }
        });
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (rt, h, nodes);
}

/// Wires a new task into the graph: its id, its dependencies (given, and those its data
/// accesses imply), and hands it on if it is ready (or failed).
///
/// Inline in each `spawn` (about 2.4 KB of code more per type of task): as a call, its
/// arguments were copied once more and its frame set up and torn down, 30 instructions
/// per task on a chain and 60 on independent tasks.
#[inline(always)]
fn wire_spawned(
    rt: &Arc<RtInner>,
    task: &TaskPtr,
    id: Option<crate::space::TaskRef>,
    mut deps: crate::task::DepList,
    checked: Result<(SlotMask, u32), String>,
    data: Option<&Accesses>,
) {
    let h = task.header();
    crate::trace::step!(rt, h, "spawned");
    // Counted before any other thread can see the task.
    context::take_live_credit(rt);

    // (A block, not a closure: a closure would copy the list and the check it captures.)
    let wired = 'wired: {
        let mut placeholder = None;
        if let Some(id) = &id {
            placeholder = match id.space.insert(rt, &id.key, task, &mut deps) {
                Ok(p) => p,
                Err(e) => break 'wired Err(failed_at_spawn(task, data, e)),
            };
            if let Some(p) = &placeholder {
                // The forward reference follows this task from now on, whatever becomes of
                // it (even a failure right here).
                let _ = h.add_dependent(Dependent::Task(p.clone()));
            }
        }
        let skipped = deps.skipped_runtime();
        if skipped != 0 && skipped != rt.id {
            break 'wired Err(failed_at_spawn(task, data, skipped_of_another_runtime(h)));
        }
        if let Err(reason) = checked {
            let e = TaskError::Unsatisfiable {
                task: h.name.to_string(),
                reason,
            };
            break 'wired Err(failed_at_spawn(task, data, e));
        }
        if let Some(e) = data.and_then(|acc| acc.held_elsewhere(rt.id, h)) {
            // Not recorded in its data's order (as `failed_at_spawn` would): the data goes on
            // for the runtime that holds it.
            break 'wired Err(e);
        }
        let mut implied = Vec::new();
        // (The readers of data it writes: the last `readers` of `implied`.)
        let mut readers = 0;
        if let Some(acc) = data {
            let mut after = Vec::new();
            acc.order(task, &mut implied, &mut after);
            readers = after.len();
            implied.append(&mut after);
        }
        if deps.is_empty() && implied.is_empty() {
            deps.forget_empty();
            if id.is_none() && data.is_none() {
                // No other thread can see the task yet.
                h.ready_unshared();
                break 'wired Ok(true);
            }
            // Nothing to wire: drop the spawn guard.
            break 'wired Ok(h.dependency_done());
        }
        let mut nodes = deps.into_nodes(rt);
        if !implied.is_empty() {
            nodes.extend(implied);
        }
        if readers > 0
            && let Some(acc) = data
        {
            let (others, readers) = nodes.split_at(nodes.len() - readers);
            acc.set_follows(readers, others);
        }
        trace_dependencies(rt, h, &nodes);
        graph::wire(task, placeholder.as_ref(), Consume::new(nodes))
    };
    match wired {
        Ok(false) => {}
        Ok(true) => rt.with_local(|l| rt.admit_ready(task.clone(), l)),
        Err(e) => rt.with_local(|l| {
            graph::fail_unrun(task, e, &mut l.fx);
        }),
    }
    // An anonymous task's `None` is let go of without a call to the id's drop glue (which
    // the compiler does not inline: 10 instructions per task).
    if id.is_some() {
        drop(id);
    } else {
        std::mem::forget(id);
    }
}

/// `err`, for a task that fails at its spawn before it is wired: a task with data is still
/// recorded in its data's order (the last writer, or a reader), so that the tasks after it
/// see its failure rather than the data from before it.
#[cold]
#[inline(never)]
fn failed_at_spawn(task: &TaskPtr, data: Option<&Accesses>, err: TaskError) -> TaskError {
    if let Some(acc) = data {
        acc.order(task, &mut Vec::new(), &mut Vec::new());
    }
    err
}

/// The error of a task given, by its handle, a dependency of another runtime that had
/// succeeded already (see `DepList::skip_succeeded`).
#[cold]
#[inline(never)]
fn skipped_of_another_runtime(h: &crate::graph::node::Header) -> TaskError {
    TaskError::WrongRuntime {
        task: h.name.to_string(),
        reason: "a dependency given by its handle belongs to another parla runtime".into(),
    }
}

/// The handle of a task spawned outside any runtime: it fails at once with `NoRuntime`.
pub(crate) fn spawn_outside<F>(b: TaskBuilder<F>) -> TaskHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let TaskBuilder { fut, id, .. } = b;
    let header = Header::new(vt_of::<TaskCell<F>>(), name_of(&id), Kind::Task, 0, 0, 0, 0);
    let cell = TaskArc::new(TaskCell::new(header, fut, ()));
    let task: TaskPtr = cell.clone().into_task();
    let err = TaskError::NoRuntime {
        task: task.header().name.to_string(),
    };
    graph::fail_unrun(&task, err, &mut Effects::default());
    TaskHandle::new(cell.into_join())
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    /// Threads take blocks of numbers: across blocks and threads, no number is given twice.
    #[test]
    fn anonymous_task_numbers_are_unique_across_threads() {
        let all: Vec<u64> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..3000).map(|_| super::next_anon()).collect::<Vec<_>>()))
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().expect("thread"))
                .collect()
        });
        let distinct: std::collections::HashSet<u64> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "a number was given twice");
    }
}
