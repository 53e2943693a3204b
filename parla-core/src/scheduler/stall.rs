//! The stall resolver: what to do when nothing can make progress on its own.
//!
//! The runtime is stalled when no poller holds a busy token: no task is admitted and
//! running (or runnable), and every `block_on` future either finished or waits only on
//! tasks. Then the tasks still pending can never run unless something is failed. In order:
//!
//! 1. ids that were referenced but never spawned fail with `NeverSpawned` (their
//!    dependents with `DependencyFailed`, their awaiters with `NeverSpawned`);
//! 2. dependency cycles fail with `Cycle`, naming the ids on the cycle. Every cycle passes
//!    through an id that was referenced before it was spawned (an edge to a task spawned
//!    later can only be made through its id), so the search starts from those;
//! 3. tasks waiting for device resources that tasks blocked on them hold fail with
//!    `Deadlock`;
//! 4. awaits of tasks made inside tasks that are left fail with `Deadlock` (tasks awaiting
//!    each other in their bodies form a cycle no dependency edge shows); if there are none,
//!    `block_on`'s own awaits do.
//!
//! Each call does the first step that applies and returns; `block_on` calls again while
//! the runtime stays stalled.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Delta, Launch, cancel_admitted, claim_waiting, fail_waiting, finish, finish_queued};
use crate::device::vcu_float;
use crate::error::TaskError;
use crate::runtime::RtInner;
use crate::task::Task;
use crate::task::header::{Dependent, Kind};

/// Resolves one cause of a stall. Returns whether it changed anything.
pub(crate) fn resolve(rt: &Arc<RtInner>) -> bool {
    let Some(_guard) = rt.resolver.try_lock() else {
        return false;
    };
    if rt.counters.load().1 != 0 {
        return false;
    }
    let forward = rt.forward_refs();
    let mut launch = Launch::new();
    let mut delta = Delta::default();

    // 1. Never spawned.
    let mut changed = false;
    for p in &forward {
        let h = p.header();
        if !h.is_resolved() && h.has_dependents() {
            let err = TaskError::NeverSpawned {
                id: h.name.to_string(),
            };
            fail_waiting(rt, p, Arc::new(err), &mut launch, &mut delta);
            changed = true;
        }
    }

    // 2. Cycles.
    if !changed && let Some(cycle) = find_cycle(&forward) {
        let ids: Vec<String> = cycle
            .iter()
            .filter(|t| t.header().kind == Kind::Task)
            .map(|t| t.header().name.to_string())
            .collect();
        let err = Arc::new(TaskError::Cycle { ids });
        // Claim every task on the cycle first, so that each fails with `Cycle` rather
        // than with the failure of its neighbour.
        let claimed: Vec<&Arc<dyn Task>> = cycle
            .iter()
            .filter(|t| t.header().kind == Kind::Task)
            .filter(|t| claim_waiting(rt, t, &mut delta))
            .collect();
        for t in claimed {
            finish(rt, t, Err(err.clone()), &mut launch, &mut delta);
        }
        changed = true;
    }

    // 3. Resource deadlock.
    if !changed {
        for dev in rt.devices.iter() {
            let used = dev.admission.usage();
            for (t, d) in dev.admission.take_waiting() {
                let err = TaskError::Deadlock {
                    task: t.header().name.to_string(),
                    device: dev.device.to_string(),
                    reason: format!(
                        "needs {} VCUs and {} bytes; {} VCUs and {} bytes are held by tasks waiting on other tasks",
                        vcu_float(d.vcu),
                        d.mem,
                        vcu_float(used.vcu),
                        used.mem
                    ),
                };
                finish_queued(rt, &t, Arc::new(err), &mut launch, &mut delta);
                changed = true;
            }
        }
    }
    // 4. Awaits that can never finish.
    if !changed && rt.parked.fail_stuck() > 0 {
        changed = true;
    }
    rt.counters.add(delta.live, delta.busy);
    rt.launch_detached(launch);
    changed
}

/// The unfinished tasks a node's completion would notify.
fn successors(t: &Arc<dyn Task>) -> Vec<Arc<dyn Task>> {
    let l = t.header().links.lock();
    l.dependents
        .iter()
        .filter_map(|d| match d {
            Dependent::Task(t) if !t.header().is_done() => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// A node of the depth-first search, its successors, and the next successor to visit.
type Frame = (Arc<dyn Task>, Vec<Arc<dyn Task>>, usize);

/// A cycle of unfinished nodes reachable from `roots`, in dependency order.
fn find_cycle(roots: &[Arc<dyn Task>]) -> Option<Vec<Arc<dyn Task>>> {
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let key = |t: &Arc<dyn Task>| Arc::as_ptr(t) as *const () as usize;
    let mut color: HashMap<usize, u8> = HashMap::new();
    for root in roots {
        if root.header().is_done() || color.contains_key(&key(root)) {
            continue;
        }
        // (node, its successors, next successor to visit)
        let mut stack: Vec<Frame> = Vec::new();
        color.insert(key(root), GREY);
        stack.push((root.clone(), successors(root), 0));
        while let Some((_, succ, i)) = stack.last_mut() {
            if *i == succ.len() {
                let (n, _, _) = stack.pop()?;
                color.insert(key(&n), BLACK);
                continue;
            }
            let next = succ[*i].clone();
            *i += 1;
            match color.get(&key(&next)) {
                Some(&GREY) => {
                    let at = stack.iter().position(|(n, _, _)| key(n) == key(&next))?;
                    return Some(stack.drain(at..).map(|(n, _, _)| n).collect());
                }
                Some(_) => {}
                None => {
                    color.insert(key(&next), GREY);
                    let s = successors(&next);
                    stack.push((next, s, 0));
                }
            }
        }
    }
    None
}

/// At shutdown: fails everything still queued or waiting, so no handle awaited elsewhere
/// hangs.
pub(crate) fn cancel_all(rt: &Arc<RtInner>) {
    let mut launch = Launch::new();
    let mut delta = Delta::default();
    for dev in rt.devices.iter() {
        for (t, _) in dev.admission.take_waiting() {
            let err = Arc::new(TaskError::Cancelled {
                task: t.header().name.to_string(),
            });
            finish_queued(rt, &t, err, &mut launch, &mut delta);
        }
    }
    for p in rt.forward_refs() {
        if !p.header().is_resolved() {
            let err = TaskError::NeverSpawned {
                id: p.header().name.to_string(),
            };
            fail_waiting(rt, &p, Arc::new(err), &mut launch, &mut delta);
        }
    }
    rt.counters.add(delta.live, delta.busy);
    // GPU tasks whose fences nobody will poll any more: the device work may be done or not;
    // their results cannot be delivered.
    for t in rt.bridge.take_tasks() {
        if t.header().transition_to_completing() {
            let device = t.header().device().unwrap_or(crate::device::Device::CPU);
            let err = Arc::new(TaskError::Cancelled {
                task: t.header().name.to_string(),
            });
            let mut more = Launch::new();
            let d = super::complete(rt, &t, device, Err(err), &mut more);
            rt.counters.add(d.live, d.busy);
            launch.extend(more);
        }
    }
    let mut admitted: Vec<Arc<dyn Task>> = launch.into_iter().collect();
    while let Some(t) = rt.injector.pop() {
        admitted.push(t);
    }
    cancel_admitted(rt, admitted);
}
