//! Spawning: a builder becomes a task node, wired into the graph and (once ready) handed to
//! the executor.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{TaskBuilder, TaskHandle};
use crate::device::{Demand, Placements, SlotMask, resolve, vcu_fixed};
use crate::error::TaskError;
use crate::graph::cell::TaskCell;
use crate::graph::node::{DEFAULT_VCU, Dependent, Header, Kind, Name, Task, vt_of};
use crate::graph::{self, Effects};
use crate::runtime::{RtInner, context};

static NEXT_ANON: AtomicU64 = AtomicU64::new(0);

fn name_of(id: &Option<crate::space::TaskRef>) -> Name {
    match id {
        Some(r) => Name::Id(r.space.name_arc(), r.key.clone()),
        None => Name::Anon(NEXT_ANON.fetch_add(1, Ordering::Relaxed)),
    }
}

/// Checks the constraints against the devices. Returns the slots that can ever hold the
/// task and the fixed-point VCUs asked for.
fn constraints(
    rt: &RtInner,
    placement: &Placements,
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
    let TaskBuilder {
        fut,
        id,
        deps,
        placement,
        vcus,
        memory,
    } = b;
    let checked = constraints(rt, &placement, vcus, memory);
    let (mask, vcu) = checked.as_ref().map_or((0, 0), |&(m, v)| (m, v));
    let mut header = Header::new(
        vt_of::<TaskCell<F>>(),
        name_of(&id),
        Kind::Task,
        rt.id,
        mask,
        vcu,
        memory,
    );
    if rt.trace.is_some() {
        header.times = Some(Box::default());
    }
    let cell = Arc::new(TaskCell::new(header, fut));
    let task: Arc<dyn Task> = cell.clone();
    let handle = TaskHandle::new(cell);
    let h = task.header();
    rt.stamp(h, 0);
    // Counted before any other thread can see the task.
    context::take_live_credit(rt);

    let wired = (|| {
        let mut placeholder = None;
        if let Some(id) = &id {
            placeholder = id.space.insert(rt, &id.key, &task)?;
            if let Some(p) = &placeholder {
                // The forward reference follows this task from now on, whatever becomes of
                // it (even a failure right here).
                let _ = h.add_dependent(Dependent::Task(p.clone()));
            }
        }
        if let Err(reason) = checked {
            return Err(TaskError::Unsatisfiable {
                task: h.name.to_string(),
                reason,
            });
        }
        if deps.is_empty() {
            // Nothing to wire: drop the spawn guard.
            return Ok(h.dependency_done());
        }
        let nodes = deps.into_nodes(rt);
        graph::wire(&task, placeholder.as_ref(), nodes)
    })();
    match wired {
        Ok(false) => {}
        Ok(true) => rt.with_local(|l| l.fx.ready.push(task)),
        Err(e) => rt.with_local(|l| {
            graph::fail_unrun(&task, e, &mut l.fx);
        }),
    }
    handle
}

/// The handle of a task spawned outside any runtime: it fails at once with `NoRuntime`.
pub(crate) fn spawn_outside<F>(b: TaskBuilder<F>) -> TaskHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let TaskBuilder { fut, id, .. } = b;
    let header = Header::new(vt_of::<TaskCell<F>>(), name_of(&id), Kind::Task, 0, 0, 0, 0);
    let cell = Arc::new(TaskCell::new(header, fut));
    let task: Arc<dyn Task> = cell.clone();
    let err = TaskError::NoRuntime {
        task: task.header().name.to_string(),
    };
    graph::fail_unrun(&task, err, &mut Effects::default());
    TaskHandle::new(cell)
}
