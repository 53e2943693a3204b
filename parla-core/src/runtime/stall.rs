//! The stall resolver: what to do when nothing can make progress on its own.
//!
//! The runtime is stalled when no poller holds a busy token (`graph::activity`), no
//! `Handle::hold` guard lives, no Tokio task other than the runtime's own is alive (a
//! future started with `tokio::spawn` may still spawn tasks or ids), and Tokio's pool has no
//! thread beyond its workers (one made for `spawn_blocking` may run a closure that spawns,
//! or idle after one: `RtInner::foreign_tasks`). Then what is left can
//! never move unless something is failed. The resolver acts one step at a time, and after
//! each step the runtime looks again - a failed await may let its task finish and free what
//! others wait for - so it fails the fewest tasks it can. In order:
//!
//! 0. *backfill*: an item waiting for admission that fits now (behind a head that does
//!    not) is admitted - nothing is failed;
//! 1. the oldest id (of those whose keys' hashes share its list in the runtime's registry)
//!    that was referenced, is waited on, and was never spawned fails with
//!    `NeverSpawned` (its dependents with `DependencyFailed`, its awaits with
//!    `NeverSpawned`);
//! 2. the dependency cycles fail with `Cycle`, each naming its ids (every cycle passes
//!    through a forward reference, so the search starts from those; a task on a cycle
//!    waits for itself, so they fail together);
//! 3. one await inside a task fails with `Deadlock`: the task blocked last (tasks awaiting
//!    each other, or a parent holding memory its child needs). The task handles the error
//!    and may finish, freeing what it held;
//! 4. one task waiting for resources (or a parked task for its VCUs) fails with `Deadlock`;
//! 5. one await of a `block_on` future fails with `Deadlock`.
//!
//! A monitor task runs the resolver whenever the busy count reaches zero; while user Tokio
//! tasks are alive it looks again at a slowly growing interval instead, and warns (after
//! [`FIRST_WARNING`], then after twice as long each time) of ids waited on and never
//! spawned that those tasks keep from failing. Steps 3 to 5 wait
//! until the stall has lasted [`CONFIRM`] (the busy count did not leave zero meanwhile): a
//! zero count that is a moment between two updates of it - tasks admitted by a token that
//! goes before they are counted - must not fail a correct program. The runtime is written
//! so that it never is (a driver checks it in debug builds: `RtInner::check_counted`);
//! one such gap failed a tree of tasks awaiting their spaces about 1 run in 100 of a debug
//! build on a loaded machine (a CPU task lending the VCUs it kept while it waited outside
//! gave its token back before the tasks the loan admitted were launched), and the wait
//! keeps a gap not found yet from failing a program.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use super::RtInner;
use super::exec::Local;
use crate::device::vcu_float;
use crate::error::TaskError;
use crate::graph;
use crate::graph::activity::Woken;
use crate::graph::arc::TaskPtr;
use crate::graph::node::Kind;
use crate::scheduler::admission::Lane;

/// Whether the runtime is stalled now.
fn stalled(rt: &RtInner) -> bool {
    rt.counters.load().1 == 0 && rt.foreign_tasks() == 0
}

/// What one call of the resolver did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// It failed (or admitted) something: look again once things settle.
    Acted,
    /// Stalled, with nothing to resolve.
    Nothing,
    /// Not stalled when it looked.
    NotStalled,
    /// Stalled, and the next step would fail a task or an await: look again once the
    /// stall lasted (see [`Monitor`]). The count of the busy count's zeros when it looked.
    Confirm(u64),
}

/// Resolves one cause of a stall. `found`: the count of the busy count's zeros when the
/// monitor found this stall before ([`Resolved::Confirm`]); the steps that fail a task or
/// an await act only if the count is still that (the stall lasted: the busy count did not
/// leave zero since). (Read after the stall is seen, so that no zero between the two looks
/// goes unseen.)
pub(crate) fn resolve(rt: &Arc<RtInner>, found: Option<u64>) -> Resolved {
    let _gate = rt.gate.write();
    if !stalled(rt) || rt.shutdown.load(Ordering::SeqCst) {
        return Resolved::NotStalled;
    }
    let zeros = rt.counters.zeros();
    match resolve_step(rt, found == Some(zeros)) {
        Some(true) => Resolved::Acted,
        Some(false) => Resolved::Nothing,
        None => Resolved::Confirm(zeros),
    }
}

/// One step of the resolution (see the module docs). Returns whether it acted, or `None`
/// when the next step would fail a task or an await of a stall that has not `lasted`.
fn resolve_step(rt: &Arc<RtInner>, lasted: bool) -> Option<bool> {
    // 0. Backfill.
    for dev in rt.devices.iter() {
        if rt.with_local(|l| dev.admission.backfill(&mut l.admitted)) > 0 {
            return Some(true);
        }
    }
    // 1. Never spawned. (Taken out of the registry one at a time, not read whole: a
    // program waiting on N ids never spawned is resolved in N steps.)
    while let Some(p) = rt.take_unspawned_waited() {
        let err = TaskError::NeverSpawned {
            id: p.header().name.to_string(),
        };
        if rt.with_local(|l| graph::fail_unrun(&p, err, &mut l.fx)) {
            return Some(true);
        }
    }
    // 2. Cycles: every one the search finds, at once. (A task on a cycle waits for itself:
    // nothing the failure of another could do lets it run, unlike an id never spawned.)
    let cycles = graph::find_cycles(&rt.forward_refs());
    if !cycles.is_empty() {
        let mut failing = Vec::new();
        for cycle in &cycles {
            let tasks: Vec<&TaskPtr> = cycle
                .iter()
                .filter(|t| t.header().kind == Kind::Task)
                .collect();
            let err = Arc::new(TaskError::Cycle {
                ids: tasks.iter().map(|t| t.header().name.to_string()).collect(),
            });
            failing.extend(tasks.into_iter().map(|t| (t, err.clone())));
        }
        fail_claimed_first(rt, failing);
        return Some(true);
    }
    // The steps below fail a task or an await: the stall must last first (see the module
    // docs).
    if !lasted {
        return None;
    }
    // 3. An await inside a task.
    if let Some(t) = rt.pollers.newest_parked() {
        let h = t.header();
        h.act.fail_one_await();
        if let Woken::Schedule { took_token } = h.act.wake() {
            rt.schedule_woken(t, took_token);
        }
        return Some(true);
    }
    // 4. A resource wait.
    for dev in rt.devices.iter() {
        let used = dev.usage();
        let first = rt.with_local(|l| dev.admission.take_first_waiting(&mut l.admitted));
        if let Some((t, d, lane)) = first {
            let what = match lane {
                Lane::Task => "needs",
                Lane::Resume => "waits to take back",
            };
            let err = TaskError::Deadlock {
                task: t.header().name.to_string(),
                device: dev.device.to_string(),
                reason: format!(
                    "it {what} {} VCUs and {} bytes; {} VCUs and {} bytes are held by tasks waiting on other tasks",
                    vcu_float(d.vcu),
                    d.mem,
                    vcu_float(used.vcu),
                    used.mem
                ),
            };
            rt.fail_waiting_item(&t, err, lane);
            return Some(true);
        }
    }
    // 5. An await of `block_on`.
    if let Some(m) = rt.pollers.parked_main() {
        m.act.fail_one_await();
        if let Woken::Schedule { took_token } = m.act.wake() {
            if took_token {
                rt.counters.add(0, 1);
            }
            m.thread.wake();
        }
        return Some(true);
    }
    Some(false)
}

/// Starts the task that runs the resolver whenever the runtime goes quiescent.
pub(crate) fn start_monitor(rt: &Arc<RtInner>) {
    rt.counters.ours.fetch_add(1, Ordering::SeqCst);
    rt.tokio.spawn(Monitor {
        rt: Arc::downgrade(rt),
        recheck: None,
        pause: MIN_RECHECK,
        found: None,
        quiet_since: None,
        warn_after: FIRST_WARNING,
    });
}

/// How long the runtime waits, stalled but for Tokio tasks the program started, before it
/// warns of ids waited on and never spawned (then after twice as long each time).
const FIRST_WARNING: Duration = Duration::from_secs(5);

/// Warns (target `parla::stall`) that ids are waited on and were never spawned while
/// nothing but `foreign` Tokio tasks (or `spawn_blocking` threads) of the program might
/// still spawn them: the runtime waits for those, as it cannot tell a Tokio task that will
/// spawn an id from one that never will.
fn warn_unspawned(rt: &RtInner, waited: Duration, foreign: usize) {
    const SHOWN: usize = 5;
    let ids: Vec<String> = rt
        .forward_refs()
        .iter()
        .filter(|p| {
            let h = p.header();
            h.is_unspawned_id() && h.has_dependents()
        })
        .map(|p| p.header().name.to_string())
        .collect();
    if ids.is_empty() {
        return;
    }
    let more = match ids.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let message = format!(
        "nothing has run for {} s while {} {} waited on and never spawned: {}{more}; {foreign} \
         Tokio task{} or blocking thread{} the program started {} still alive and may spawn \
         {}, so the runtime keeps waiting (ids never spawned fail with NeverSpawned once \
         nothing else is alive)",
        waited.as_secs(),
        ids.len(),
        if ids.len() == 1 { "id is" } else { "ids are" },
        ids[..ids.len().min(SHOWN)].join(", "),
        if foreign == 1 { "" } else { "s" },
        if foreign == 1 { "" } else { "s" },
        if foreign == 1 { "is" } else { "are" },
        if ids.len() == 1 { "it" } else { "them" },
    );
    #[cfg(feature = "tracing")]
    rt.in_trace(|| tracing::warn!(target: "parla::stall", "{message}"));
    #[cfg(not(feature = "tracing"))]
    let _ = message;
}

const MIN_RECHECK: Duration = Duration::from_millis(1);
const MAX_RECHECK: Duration = Duration::from_millis(50);

struct Monitor {
    rt: Weak<RtInner>,
    /// While user Tokio tasks are alive at a quiescent moment: when to look again.
    recheck: Option<Pin<Box<tokio::time::Sleep>>>,
    pause: Duration,
    /// A stall found whose next step fails something ([`Resolved::Confirm`]): the count of
    /// the busy count's zeros then. Found again after [`CONFIRM`] with the same count, the
    /// stall lasted, and the step acts.
    found: Option<u64>,
    /// Since when the runtime is stalled but for Tokio tasks of the program, which the
    /// resolver waits for (see [`warn_unspawned`]).
    quiet_since: Option<std::time::Instant>,
    /// How long that must last before the next warning.
    warn_after: Duration,
}

/// How long a stall must last before the resolver fails a task or an await for it.
const CONFIRM: Duration = Duration::from_millis(2);

impl Monitor {
    /// Nothing keeps the resolver waiting (the runtime is busy, or no Tokio task of the
    /// program is alive): the next such wait is warned of after [`FIRST_WARNING`] again.
    fn calm(&mut self) {
        self.quiet_since = None;
        self.warn_after = FIRST_WARNING;
    }
}

impl Future for Monitor {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            let Some(rt) = this.rt.upgrade() else {
                return Poll::Ready(());
            };
            if rt.shutdown.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            rt.counters.stall.register(cx.waker());
            if rt.counters.load().1 != 0 {
                this.recheck = None;
                this.pause = MIN_RECHECK;
                this.found = None;
                this.calm();
                return Poll::Pending;
            }
            // A user's Tokio task may still spawn what others wait for (and a driver that
            // just ended is counted by Tokio a little longer than here): look again later.
            // So does a resolver that found the runtime not stalled after all.
            let foreign = rt.foreign_tasks();
            if foreign == 0 {
                this.calm();
            }
            if foreign > 0 || this.recheck.is_some() {
                let sleep = this
                    .recheck
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.pause)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.recheck = None;
                this.pause = (this.pause * 2).min(MAX_RECHECK);
                if foreign > 0 {
                    let since = *this.quiet_since.get_or_insert_with(std::time::Instant::now);
                    let waited = since.elapsed();
                    if waited >= this.warn_after {
                        warn_unspawned(&rt, waited, foreign);
                        this.warn_after = waited * 2;
                    }
                }
                continue;
            }
            match resolve(&rt, this.found) {
                Resolved::Acted => {
                    this.found = None;
                    continue;
                }
                Resolved::Nothing => return Poll::Pending,
                // Busy again (the next zero wakes this task), or a count in flux: look
                // again shortly.
                Resolved::NotStalled => {
                    this.found = None;
                    this.recheck = Some(Box::pin(tokio::time::sleep(this.pause)));
                }
                Resolved::Confirm(zeros) => {
                    this.found = Some(zeros);
                    this.recheck = Some(Box::pin(tokio::time::sleep(CONFIRM)));
                }
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.upgrade() {
            rt.counters.ours.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

thread_local! {
    /// The runtime whose [`cancel_all`] this thread is in (0: none), and whether a call
    /// for it came in meanwhile.
    static CANCELLING: std::cell::Cell<(u32, bool)> = const { std::cell::Cell::new((0, false)) };
}

/// At shutdown: fails everything still waiting, so no handle awaited elsewhere hangs.
///
/// A call made inside another for the same runtime, on the same thread, returns at once
/// and has the outer one pass over everything again: a task cancelled wakes what awaited
/// it, whose driver, spawned on the Tokio runtime going down, is dropped at once and calls
/// this again; nested, a chain of 3,000 tasks each awaiting the next overflowed the stack.
pub(crate) fn cancel_all(rt: &Arc<RtInner>) {
    let nested = CANCELLING.with(|c| {
        let (id, _) = c.get();
        if id == rt.id {
            c.set((id, true));
        }
        id == rt.id
    });
    if nested {
        return;
    }
    /// Puts back the runtime this thread was cancelling before (another one's, or none),
    /// also if a pass panics.
    struct Restore((u32, bool));
    impl Drop for Restore {
        fn drop(&mut self) {
            CANCELLING.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CANCELLING.with(|c| c.replace((rt.id, false))));
    // The bodies dropped here run their `Drop`s with the runtime current, as through a
    // handle's guard: `Handle::current()` there gives the runtime's handle, and a task
    // they spawn is cancelled at once (as one spawned through a handle after the drop),
    // not refused as spawned outside any runtime. (Where a runtime is entered already, a
    // task's poll on this thread, that one stays current.)
    let _scope = super::context::entered_rt()
        .is_null()
        .then(|| super::context::enter_handle(rt));
    loop {
        cancel_pass(rt);
        if !CANCELLING.with(|c| c.replace((rt.id, false)).1) {
            break;
        }
    }
}

/// One pass of [`cancel_all`] over what is left.
fn cancel_pass(rt: &Arc<RtInner>) {
    let cancelled = |t: &TaskPtr| TaskError::Cancelled {
        task: t.header().name.to_string(),
    };
    for dev in rt.devices.iter() {
        let waiting = rt.with_local(|l| dev.admission.take_waiting(&mut l.admitted));
        for (t, _, lane) in waiting {
            rt.fail_waiting_item(&t, cancelled(&t), lane);
        }
    }
    // GPU tasks whose fences nobody will poll any more: the device work may be done or not;
    // their results cannot be delivered.
    for t in rt.bridge.take_tasks() {
        if t.header().transition_to_completing() {
            rt.with_local(|l| rt.complete(&t, Err(Arc::new(cancelled(&t))), true, false, l));
        }
    }
    // Runnable tasks no driver will poll, and tasks that wait on something.
    loop {
        let any = rt.with_local(|l| {
            let mut any = false;
            while let Some(t) = rt.inject.pop().or_else(super::context::take_next) {
                any = true;
                cancel_started(rt, &t, true, l);
            }
            for t in rt.pollers.take_all() {
                any |= cancel_waiting(rt, &t, l);
            }
            any
        });
        if !any {
            break;
        }
    }
    // Ids referred to and not spawned: the shutdown, not the program, keeps them from
    // being spawned, so what waits on them is cancelled as the tasks are (their
    // dependents fail with `DependencyFailed`, its cause `Cancelled`).
    for p in rt.forward_refs() {
        if p.header().is_unspawned_id() {
            let err = TaskError::Cancelled {
                task: p.header().name.to_string(),
            };
            rt.with_local(|l| graph::fail_unrun(&p, err, &mut l.fx));
        }
    }
    // Tasks on dependency cycles the stall resolver had not failed yet (a thread held the
    // runtime): none of the passes above reaches them, each waiting for another, and their
    // handles waited for good. Every cycle passes through a forward reference. Each is
    // `Cancelled`, not failed by its neighbour.
    let cycles = graph::find_cycles(&rt.forward_refs());
    if !cycles.is_empty() {
        let failing = cycles
            .iter()
            .flatten()
            .filter(|t| t.header().kind == Kind::Task)
            .map(|t| (t, Arc::new(cancelled(t))));
        fail_claimed_first(rt, failing);
    }
}

/// Fails each task of `failing` with its error, claiming every one before it finishes any:
/// tasks that wait on each other (a cycle) then each fail with their own error rather than
/// with the failure of a neighbour (a task listed twice: the first error).
fn fail_claimed_first<'a>(
    rt: &Arc<RtInner>,
    failing: impl IntoIterator<Item = (&'a TaskPtr, Arc<TaskError>)>,
) {
    rt.with_local(|l| {
        let claimed: Vec<_> = failing
            .into_iter()
            .filter(|(t, err)| graph::claim(t, err, &mut l.fx))
            .collect();
        for (t, err) in claimed {
            graph::finish(t, Err(err), &mut l.fx);
        }
    });
}

/// Cancels task `t` if it waits between polls (at shutdown): claims it out of its waiting
/// state, and with it the run token. Returns whether it did (it may run, be notified or
/// have finished).
pub(crate) fn cancel_waiting(rt: &Arc<RtInner>, t: &TaskPtr, l: &mut Local) -> bool {
    let Some(token) = t.header().act.claim_waiting() else {
        return false;
    };
    cancel_started(rt, t, token, l);
    true
}

/// Cancels a task whose run token the caller holds (admitted, or started and waiting).
fn cancel_started(rt: &Arc<RtInner>, t: &TaskPtr, token: bool, l: &mut Local) {
    // SAFETY: the caller holds the run token (the injector gave it, or the activity was
    // claimed out of a waiting state).
    unsafe {
        t.drop_body();
        drop(t.header().take_run());
    }
    let err = TaskError::Cancelled {
        task: t.header().name.to_string(),
    };
    rt.complete(t, Err(Arc::new(err)), token, false, l);
}
