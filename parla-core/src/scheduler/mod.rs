//! The scheduler pipeline: spawn -> dependencies met -> map -> reserve -> launch -> complete.
//!
//! Everything here is bookkeeping on the task headers, the device admission queues and the
//! runtime's counters; running tasks is the drivers' job (`runtime::driver`). See
//! `README.md` beside this file for the design.
//!
//! # Invariants
//! - The runtime's `live` count includes every spawned task that has not finished; it is
//!   incremented before the task can be seen by any other thread, so it never underflows.
//! - A task holds one `busy` token from the moment it is admitted until it finishes or its
//!   driver parks on another task; admitted tasks are counted before they are handed to a
//!   driver, in the same atomic update that retires the task whose completion admitted them.
//! - Cascades (a failure failing its dependents, and theirs) run iteratively, never by
//!   recursion, so a chain of any length cannot overflow the stack.

pub mod mapping;
pub(crate) mod stall;

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

use crate::device::backend::{Fence, FenceStatus};
use crate::device::{Demand, Device, SlotMask, resolve, vcu_fixed, vcu_float};
use crate::error::TaskError;
use crate::runtime::RtInner;
use crate::task::header::{Added, DEFAULT_VCU, Dependent, Header, Kind, Name, Outcome, Ready};
use crate::task::{Join, Task, TaskBuilder, TaskCell, TaskHandle};

/// Tasks admitted to run, in order; the first usually runs on the current driver.
pub(crate) type Launch = SmallVec<[Arc<dyn Task>; 4]>;

static NEXT_ANON: AtomicU64 = AtomicU64::new(0);

/// Changes to the runtime's counters, applied in one atomic update.
#[derive(Default)]
pub(crate) struct Delta {
    pub(crate) live: i64,
    pub(crate) busy: i64,
}

fn name_of<F>(b: &TaskBuilder<F>) -> Name {
    match &b.id {
        Some(r) => Name::Id(r.space.name_arc(), r.key.clone()),
        None => Name::Anon(NEXT_ANON.fetch_add(1, Ordering::Relaxed)),
    }
}

/// Checks the constraints against the devices. Returns the slots that can ever hold the
/// task and the fixed-point VCUs asked for.
fn constraints(
    rt: &RtInner,
    placement: &crate::Placements,
    vcus: Option<f64>,
    mem: u64,
) -> Result<(SlotMask, u32), String> {
    if placement.is_cpu_only() && vcus.is_none() && mem == 0 {
        // The default: the CPU's default share always fits.
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
    let mask = resolve(placement, rt.gpus)?;
    let mut fits = 0;
    let mut biggest = 0;
    for (slot, dev) in rt.devices.iter().enumerate() {
        if mask & (1 << slot) == 0 {
            continue;
        }
        biggest = biggest.max(dev.admission.mem_capacity());
        let d = Demand {
            vcu: if vcu == DEFAULT_VCU {
                dev.default_vcu
            } else {
                vcu
            },
            mem,
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
        return Err(format!(
            "memory = {mem} bytes exceeds the largest budget among [{}] ({biggest} bytes)",
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
    let name = name_of(&b);
    let checked = constraints(rt, &b.placement, b.vcus, b.memory);
    let (mask, vcu) = checked.as_ref().map_or((0, 0), |&(m, v)| (m, v));
    let mut header = Header::new(name, Kind::Task, mask, vcu, b.memory);
    if rt.trace.is_some() {
        header.times = Some(Box::default());
    }
    let cell = Arc::new(TaskCell::new(header, b.fut));
    let task: Arc<dyn Task> = cell.clone();
    let handle = TaskHandle {
        task: cell as Arc<dyn Join<F::Output>>,
        spun: false,
        hurried: false,
        parked: None,
        _t: PhantomData,
    };
    let h = task.header();
    rt.stamp(h, 0);
    // Counted before any other thread can see the task.
    crate::context::take_live_credit(rt);

    let mut placeholder = None;
    if let Some(id) = &b.id {
        match id.space.insert(&id.key, &task) {
            Ok(p) => placeholder = p,
            Err(()) => {
                let err = TaskError::DuplicateId { id: id.to_string() };
                fail_now(rt, &task, err);
                return handle;
            }
        }
    }

    if let Err(reason) = checked {
        let err = TaskError::Unsatisfiable {
            task: h.name.to_string(),
            reason,
        };
        fail_now(rt, &task, err);
        return handle;
    }

    let mut failed: Option<(Arc<dyn Task>, Arc<TaskError>)> = None;
    let mut cycle = false;
    {
        let mut add = |node: Arc<dyn Task>| {
            // Depending on itself: through its handle, or through the placeholder of its id
            // that it just replaced.
            if Arc::ptr_eq(&node, &task)
                || placeholder.as_ref().is_some_and(|p| Arc::ptr_eq(p, &node))
            {
                cycle = true;
                return;
            }
            h.add_pending();
            match node.header().add_task_dependent(&task) {
                Added::Registered => {}
                Added::Done(o) => {
                    // Finished already: undo (the spawn guard keeps the count above zero).
                    let _ = h.dependency_done();
                    if let Err(e) = o {
                        failed.get_or_insert((node, e));
                    }
                }
                Added::Fenced(f) => {
                    // Its GPU work is enqueued: this GPU task's stream will wait on it.
                    let _ = h.dependency_done();
                    h.add_wait(f);
                }
            }
        };
        let rtr: &RtInner = rt;
        let mut nodes = b.deps.nodes;
        for d in b.deps.later {
            d.resolve(rtr, &mut nodes);
        }
        for n in nodes {
            add(n);
        }
    }
    if let Some(p) = placeholder {
        // The forward reference now follows this task. The task cannot have finished yet:
        // the spawn guard is still held.
        let _ = h.add_dependent(Dependent::Task(p));
    }
    if cycle {
        let err = TaskError::Cycle {
            ids: vec![h.name.to_string(), h.name.to_string()],
        };
        fail_now(rt, &task, err);
        return handle;
    }
    if let Some((dep, e)) = failed {
        let err = dependency_failed(h, dep.header(), &e);
        fail_now(rt, &task, err);
        return handle;
    }
    if let Ready::Now = h.dependency_done() {
        let mut launch = Launch::new();
        let mut delta = Delta::default();
        on_ready(rt, task, &mut launch, &mut delta);
        rt.counters.add(delta.live, delta.busy);
        rt.launch_detached(launch);
    }
    handle
}

/// The handle of a task spawned outside any runtime: it fails at once with `NoRuntime`.
pub(crate) fn spawn_detached_error<F>(b: TaskBuilder<F>) -> TaskHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let name = name_of(&b);
    let cell = Arc::new(TaskCell::new(Header::new(name, Kind::Task, 0, 0, 0), b.fut));
    let h = cell.header();
    if h.transition_to_failed() {
        // SAFETY: this call won the transition to DONE; nobody else has the task.
        unsafe { cell.drop_body() };
        let err = TaskError::NoRuntime {
            task: h.name.to_string(),
        };
        let _ = h.publish(Err(Arc::new(err)));
    }
    TaskHandle {
        task: cell as Arc<dyn Join<F::Output>>,
        spun: false,
        hurried: false,
        parked: None,
        _t: PhantomData,
    }
}

/// The error of `task`, whose dependency `dep` failed with `e`.
fn dependency_failed(task: &Header, dep: &Header, e: &Arc<TaskError>) -> TaskError {
    let (dependency, cause) = match &**e {
        TaskError::DependencyFailed {
            dependency, cause, ..
        } => (dependency.clone(), cause.clone()),
        _ => (dep.name.to_string(), e.clone()),
    };
    TaskError::DependencyFailed {
        task: task.name.to_string(),
        dependency,
        cause,
    }
}

/// Fails a task that never ran (still WAITING), and everything that depends on it.
pub(crate) fn fail_now(rt: &Arc<RtInner>, task: &Arc<dyn Task>, err: TaskError) {
    let mut launch = Launch::new();
    let mut delta = Delta::default();
    fail_waiting(rt, task, Arc::new(err), &mut launch, &mut delta);
    rt.counters.add(delta.live, delta.busy);
    rt.launch_detached(launch);
}

/// Fails a WAITING task (if it still is one) with `err` and cascades.
pub(crate) fn fail_waiting(
    rt: &RtInner,
    task: &Arc<dyn Task>,
    err: Arc<TaskError>,
    launch: &mut Launch,
    delta: &mut Delta,
) {
    if claim_waiting(rt, task, delta) {
        finish(rt, task, Err(err), launch, delta);
    }
}

/// Takes a WAITING task to DONE without running it, so that no cascade can fail it with
/// another error. Returns whether this call won; the caller then `finish`es it.
pub(crate) fn claim_waiting(rt: &RtInner, task: &Arc<dyn Task>, delta: &mut Delta) -> bool {
    let h = task.header();
    if !h.transition_to_failed() {
        return false;
    }
    // SAFETY: this call won WAITING -> DONE, so the body never ran and never will.
    unsafe { task.drop_body() };
    if h.kind == Kind::Task {
        delta.live -= 1;
        rt.trace_failed(h);
    }
    true
}

/// Marks a task that ran as finished with `outcome`: releases what it reserved, notifies
/// its dependents and awaiters, and pushes whatever became runnable to `launch`. Returns the
/// counter changes (the caller applies them before launching).
pub(crate) fn complete(
    rt: &RtInner,
    task: &Arc<dyn Task>,
    device: Device,
    outcome: Outcome,
    launch: &mut Launch,
) -> Delta {
    let h = task.header();
    let dev = &rt.devices[device.slot()];
    let before = launch.len();
    dev.release(h.demand(), launch);
    dev.finished();
    let mut delta = Delta {
        live: -1,
        busy: (launch.len() - before) as i64 - 1,
    };
    finish(rt, task, outcome, launch, &mut delta);
    delta
}

/// Publishes `outcome` for `task` and notifies everything waiting on it, cascading failures
/// and placeholder mirrors iteratively.
pub(crate) fn finish(
    rt: &RtInner,
    task: &Arc<dyn Task>,
    outcome: Outcome,
    launch: &mut Launch,
    delta: &mut Delta,
) {
    let mut work: SmallVec<[(Arc<dyn Task>, Outcome); 4]> = SmallVec::new();
    work.push((task.clone(), outcome));
    while let Some((t, o)) = work.pop() {
        let h = t.header();
        let dependents = h.publish(o.clone());
        h.transition_to_done();
        h.join.wake();
        for d in dependents {
            match d {
                Dependent::Waiter(w) => w.wake(),
                Dependent::Task(d) => {
                    let dh = d.header();
                    if dh.kind == Kind::Placeholder {
                        // A forward reference mirrors the task spawned under its id.
                        if dh.transition_to_failed() {
                            work.push((d, o.clone()));
                        }
                        continue;
                    }
                    match &o {
                        Ok(()) => {
                            if let Ready::Now = dh.dependency_done() {
                                on_ready(rt, d, launch, delta);
                            }
                        }
                        Err(e) => {
                            if dh.transition_to_failed() {
                                // SAFETY: won WAITING -> DONE: the body never runs.
                                unsafe { d.drop_body() };
                                delta.live -= 1;
                                rt.trace_failed(dh);
                                let err = Arc::new(dependency_failed(dh, h, e));
                                work.push((d, Err(err)));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A task's dependencies are met: map it to a device and try to reserve its resources.
/// What this admits is pushed to `launch` and counted in `delta`.
pub(crate) fn on_ready(rt: &RtInner, task: Arc<dyn Task>, launch: &mut Launch, delta: &mut Delta) {
    let h = task.header();
    rt.stamp(h, 1);
    let slot = if h.mask.is_power_of_two() {
        h.mask.trailing_zeros() as usize
    } else {
        mapping::choose(rt, h)
    };
    let dev = &rt.devices[slot];
    let vcu = if h.vcu == DEFAULT_VCU {
        dev.default_vcu
    } else {
        h.vcu
    };
    h.set_device(dev.device, vcu);
    if let Some(message) = dev.failed.get() {
        let err = TaskError::Device {
            task: h.name.to_string(),
            device: dev.device.to_string(),
            message: message.clone(),
        };
        finish_queued(rt, &task, Arc::new(err), launch, delta);
        return;
    }
    let mem = h.mem;
    #[cfg(feature = "tracing")]
    tracing::trace!(target: "parla::sched", { task.id = %h.name, device = %dev.device, vcu = vcu_float(vcu), mem.bytes = mem }, "mapped");
    let before = launch.len();
    dev.admit(task, Demand { vcu, mem }, launch);
    delta.busy += (launch.len() - before) as i64;
}

/// A GPU task's body returned and its work is enqueued behind `fence`: its GPU-only
/// dependents need not wait for the host to see the fence (runahead): they become ready
/// now, and their streams will wait on the fence. The task itself keeps its resources and
/// its busy token until the fence is done. Also returns whether anything else waits on the
/// task's completion (a dependent that is not GPU-only, tasks queued for its device).
pub(crate) fn body_done(
    rt: &RtInner,
    task: &Arc<dyn Task>,
    fence: Arc<dyn Fence>,
    launch: &mut Launch,
) -> (Delta, bool) {
    let h = task.header();
    h.transition_to_fenced();
    let mut delta = Delta::default();
    let (early, others) = h.set_fence(fence.clone());
    let queued = h
        .device()
        .is_some_and(|d| rt.devices[d.slot()].admission.usage().waiting > 0);
    for d in early {
        let dh = d.header();
        dh.add_wait(fence.clone());
        if let Ready::Now = dh.dependency_done() {
            on_ready(rt, d, launch, &mut delta);
        }
    }
    (delta, others || queued || h.is_awaited())
}

/// An awaiter of `task` is about to park: if the task's GPU work is in flight, ask the fence
/// poller to wake it promptly when the fence is done. Returns whether it did.
pub(crate) fn hurry(task: &Arc<dyn Task>, waker: &std::task::Waker) -> bool {
    let Some(fence) = task.header().fence() else {
        return false;
    };
    crate::context::with_rt(|rt| match rt {
        Some(rt) => {
            let w = Arc::new(atomic_waker::AtomicWaker::new());
            w.register(waker);
            crate::runtime::bridge::Bridge::watch(
                rt,
                crate::runtime::bridge::Watch::Waker(fence, w),
            );
            true
        }
        None => false,
    })
}

/// A GPU task's fence finished with `status`: complete the task (if nobody else did).
pub(crate) fn complete_fenced(rt: &Arc<RtInner>, task: &Arc<dyn Task>, status: FenceStatus) {
    let h = task.header();
    if !h.transition_to_completing() {
        return;
    }
    let device = h.device().unwrap_or(Device::CPU);
    let outcome = match status {
        FenceStatus::Failed(message) => Err(Arc::new(TaskError::Device {
            task: h.name.to_string(),
            device: device.to_string(),
            message,
        })),
        FenceStatus::Done | FenceStatus::Pending => Ok(()),
    };
    let failed = outcome.is_err();
    let mut launch = Launch::new();
    let delta = complete(rt, task, device, outcome, &mut launch);
    rt.stamp_end(task, device);
    rt.counters.add(delta.live, delta.busy);
    rt.launch_detached(launch);
    if failed {
        check_device(rt, device);
    }
}

/// An awaiter of `task`: if the task's GPU work is pending behind a fence, spin on it
/// briefly and complete the task here if it finishes. Returns whether the task is done.
pub(crate) fn spin_fenced(task: &Arc<dyn Task>) -> bool {
    let Some(fence) = task.header().fence() else {
        return false;
    };
    match crate::runtime::bridge::spin(&*fence, crate::runtime::bridge::AWAIT_SPIN) {
        FenceStatus::Pending => false,
        status => crate::context::with_rt(|rt| match rt {
            Some(rt) => {
                complete_fenced(rt, task, status);
                true
            }
            None => false,
        }),
    }
}

/// After a device error: if the backend says the device can no longer run tasks, mark it
/// failed and fail every task waiting for it.
pub(crate) fn check_device(rt: &Arc<RtInner>, device: Device) {
    let dev = &rt.devices[device.slot()];
    let Some((backend, index)) = &dev.gpu else {
        return;
    };
    let Some(message) = backend.device_error(*index) else {
        return;
    };
    if dev.failed.set(message.clone()).is_err() {
        return;
    }
    #[cfg(feature = "tracing")]
    tracing::error!(target: "parla::gpu", device = %device, "device failed: {message}");
    let mut launch = Launch::new();
    let mut delta = Delta::default();
    for (t, _) in dev.admission.take_waiting() {
        let err = TaskError::Device {
            task: t.header().name.to_string(),
            device: device.to_string(),
            message: format!("the device failed earlier: {message}"),
        };
        finish_queued(rt, &t, Arc::new(err), &mut launch, &mut delta);
    }
    rt.counters.add(delta.live, delta.busy);
    rt.launch_detached(launch);
}

/// Fails a task taken out of an admission queue: it reserved nothing and holds no token.
pub(crate) fn finish_queued(
    rt: &RtInner,
    task: &Arc<dyn Task>,
    err: Arc<TaskError>,
    launch: &mut Launch,
    delta: &mut Delta,
) {
    if let Some(r) = task.as_resume() {
        // A driver waiting to take its VCUs back, which nothing will free: it fails its
        // task itself (it holds the task).
        r.deny();
        return;
    }
    // SAFETY: the caller took the task out of its admission queue, the only place that
    // held it: no driver has it, so this is the run token.
    unsafe { task.drop_body() };
    delta.live -= 1;
    rt.trace_failed(task.header());
    finish(rt, task, Err(err), launch, delta);
}

/// Cancels admitted tasks that never started (in the injector, or a driver's next slot),
/// and whatever their released resources admit in turn.
pub(crate) fn cancel_admitted(rt: &RtInner, tasks: impl IntoIterator<Item = Arc<dyn Task>>) {
    let mut todo: Vec<Arc<dyn Task>> = tasks.into_iter().collect();
    let mut total = Delta::default();
    while let Some(t) = todo.pop() {
        // SAFETY: admitted tasks are owned by whoever took them from the injector or the
        // driver slot: that is the caller, so this is the run token.
        unsafe { t.drop_body() };
        let err = Arc::new(TaskError::Cancelled {
            task: t.header().name.to_string(),
        });
        let device = t.header().device().unwrap_or(Device::CPU);
        let mut launch = Launch::new();
        let d = complete(rt, &t, device, Err(err), &mut launch);
        total.live += d.live;
        total.busy += d.busy;
        todo.extend(launch);
    }
    rt.counters.add(total.live, total.busy);
}
