//! Drivers: Tokio tasks that pull runnable tasks and poll them.
//!
//! A driver takes the next task from its thread's next-task slot (a task this driver just
//! made runnable: a dependent of the task it completed, a task it woke) or from the
//! injector, polls it once, and goes on. A task that returns `Pending` is not tied to the
//! driver: its activity word records whether it waits on something outside the runtime
//! (IDLE) or on tasks alone (PARKED), and whoever wakes it schedules it again, on any
//! driver. So at most `cpu_threads` drivers exist at once, one per worker thread, and a
//! waiting task costs no Tokio task.
//!
//! A task that waits on other tasks lends its VCUs to its device until it is woken; it then
//! takes them back before it runs again (`exec::schedule_woken`), so a parent awaiting its
//! children never starves them. The child it awaits gets the VCUs first if it waits for
//! admission, and gives them back to the parent when it completes (`exec::complete`): a
//! fork-join tree runs depth first, instead of in the order the device's queue has its
//! tasks. A CPU task that waits on anything else keeps its VCUs while no task waits for
//! VCUs on the CPU, and lends them once one does (`scheduler::idle`).
//!
//! The first task that a poll makes ready (a spawn, mostly) and that does not fit on its
//! device now is held on the driver's thread until the poll ends (`context::stash`): if the
//! polled task then awaits it, it runs on the VCUs it lends, with no admission at all;
//! otherwise it is queued. The others are queued at once, and a lend claims the awaited one
//! there without the queue's lock.
//!
//! A driver that runs out of CPU work lingers too, up to one driver per four workers at a
//! time (one to four), for up to `CPU_LINGER`, each looking at the injector every
//! `CPU_LOOK`: work spawned from outside the drivers meanwhile (`block_on` spawning task
//! after task) is taken by them, with no driver to start and no thread to wake per spawn.
//! While one runs a task it found, the others stand in for it. (A task pushed while they
//! linger waits for their next look: a longer interval for each of several lingering
//! drivers, keeping the looks as frequent as one driver's, made a spawn-and-await round
//! trip from `block_on` on 16 workers take 26-29 us instead of 13-14: the `round-trip` row
//! of `benches/overhead.rs`.) Where the workers fill every core, a lingering driver that
//! sees a `block_on` thread woken and not running yet (`Counters::any_main_woken`) yields its
//! core at each look: that thread was most likely woken by the task the driver just ran, and
//! the spin kept it from running (on 2 cores, a `block_on` spawning two tasks and awaiting
//! them took 54 us against Tokio's 14 with another program busy on the machine).
//!
//! A driver that ran GPU tasks and runs out of work lingers for up to `AWAIT_SPIN` before it
//! leaves: it polls the injector and the runtime's fences, so the next GPU task spawned by an
//! awaiter, or a parent woken by its child's fence, runs at once, with no thread to wake.
//!
//! # Invariants
//! - A driver holds at most one task's run token at a time (the one it polls), and polls it
//!   only from its own `poll`: a task is never polled concurrently.
//! - A task's run state (GPU stream, span) is stored in its header before its activity
//!   leaves RUNNING, and read back only by the next holder of its run token.
//! - The next-task slot is thread-local: it is emptied into the injector before the
//!   driver's poll returns, so no task is left on a thread that no driver polls (the slot
//!   holds a raw strong reference and has no destructor). So are the other thread-local
//!   references a task's poll leaves: the task it awaited (`context::Slots::take_awaited`,
//!   taken after each poll that returns `Pending` and dropped before the driver's poll
//!   returns) and the stashed task (queued at the end of each task's poll). The slot and
//!   the stash are emptied earlier, during the poll, when the task may block its thread
//!   until another task ran (`RtInner::release_held_here`): it awaits a task through a
//!   waker not its own, or spawns through a `Handle`. The slot is, too, when a later task
//!   the poll makes ready waits for its device (the slot's task holds VCUs it needs), and
//!   a driver started during a task's poll is pushed out of Tokio's LIFO slot
//!   (`RtInner::start_drivers`), so that idle workers run them while the poll computes.
//! - A GPU task whose fence nobody waits on (no awaiter, no CPU dependent, nothing queued
//!   for its device) may have its watch deferred: the driver keeps up to [`WATCH_BATCH`]
//!   of them and hands them to the poller together, before it polls anything but the
//!   first poll of a GPU task, before it lingers, and before its poll returns. So they
//!   wait at most for the first polls of a few GPU tasks (which enqueue work and return),
//!   and never across a driver's poll. The task holds its busy token meanwhile, as any
//!   fenced task does.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use super::bridge::{Bridge, Watch};
use super::exec::Local;
use super::{RtInner, context, stall, waker};
use crate::device::{Demand, Device};
use crate::error::TaskError;
use crate::graph;
use crate::graph::activity::EndPoll;
use crate::graph::arc::TaskPtr;
use crate::graph::cell::panic_message;
use crate::graph::node::{Outcome, RunState};

/// Tasks a driver polls in one poll before it yields to Tokio.
const BUDGET: u32 = 128;

/// The most watches of GPU tasks nobody waits on that a driver defers (see the module
/// invariants). Handing a watch to the poller takes the watch list's lock and updates the
/// pending count, lines the poller thread reads and writes as it polls: in a chain of GPU
/// tasks on one driver, that was one of the costliest steps of each task (145-220 ns on an
/// H200 host). Handed over together, they cost one lock round and one count.
const WATCH_BATCH: usize = 8;

/// How many tasks a driver polls between two looks at the clock once it has run this many
/// (see [`looks_at_clock`]).
const CLOCK_EVERY: u32 = 32;

/// How long a driver's poll runs tasks before it yields to Tokio behind the wakes Tokio
/// puts off, whatever is left of its [`BUDGET`]. Tokio looks at its timers and I/O between
/// its tasks' polls, every 61 of them or when a worker runs out of tasks, and a driver's
/// poll is one of them: with tasks that compute for 50 us each, 128 tasks took 6.4 ms, and a
/// timer a task slept on beside them fired about 60 ms late (16 ticks of a 1 ms sleep in a
/// second, against 277 with the same tasks on Tokio alone). Yielding behind the put-off
/// wakes, the driver is polled again once its worker looked at them.
const LONG_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// What a poll that ended waiting outside the runtime (on a channel, a timer, I/O) takes
/// of the driver's [`BUDGET`], where any other poll takes one: such a task most likely spent
/// some of Tokio's cooperative budget (the message it received before it waited again),
/// which all the tasks of a driver's poll share. So the driver yields after 32 of them,
/// before Tokio's budget (128 operations) runs out in the middle of a task, which would
/// then wait until its worker has nothing else to run (see [`Linger::Behind`]).
const OUTSIDE_COST: u32 = 4;

/// A driver's word while it waits behind the wakes Tokio puts off (see [`revoke_put_off`]),
/// holding its slot and counted as lingering (out of work).
const PUT_OFF_LINGERING: u8 = 0;
/// Revoked by a driver on the same worker: its slot (and lingering) were given up for it.
const PUT_OFF_REVOKED: u8 = 1;
/// It is back (polled again, or dropped).
const PUT_OFF_BACK: u8 = 2;
/// As `PUT_OFF_LINGERING`, not lingering (it yielded for want of Tokio's budget).
const PUT_OFF_HOLDING: u8 = 3;

/// A driver that stopped lingering with a task, and saw more work waiting, asks for drivers
/// for all of it: pushers count on every lingering driver, each for its own task, so the
/// tasks pushed while drivers lingered may be many more than the lingering drivers. (Asking
/// for one, a wave of tasks spawned at once from `block_on` got one driver more than the
/// drivers that lingered, which ran the rest one after the other.) Drivers still lingering
/// stand in for some of them (`start_drivers`). (So does a poll that gives its driver's slot
/// up while work waits: `RtInner::release_held`.)
pub(super) fn ask_for_drivers(rt: &Arc<RtInner>) {
    rt.start_drivers(rt.inject.queued().max(1));
}

/// A lingering driver stops lingering, with the task its last look found, if any
/// (`found`). If work waits (pushers counted on this driver for it, maybe many pushers on
/// this one driver), it takes a task - `found`, else one from the queue - and asks for
/// drivers for the rest if more waits: the task it takes may run for long (a CPU task
/// computing, or one waiting for another to run). Returns the task it takes, and whether
/// it asked for drivers.
fn stop_lingering_with(rt: &Arc<RtInner>, found: Option<TaskPtr>) -> (Option<TaskPtr>, bool) {
    if !rt.inject.stop_lingering() {
        return (found, false);
    }
    let task = found.or_else(|| rt.inject.pop());
    let more = task.is_some() && rt.inject.has_work();
    if more {
        ask_for_drivers(rt);
    }
    (task, more)
}

/// Before a driver runs a task on a thread where another driver waits behind the wakes
/// Tokio puts off: revokes that driver (gives up its slot, and its lingering, for it, and
/// asks for drivers for all the work queued if any waits).
///
/// All of it, not one driver per driver revoked: with drivers put off on two workers that
/// both go on to run tasks without end, pushers counted on both for their tasks, and each
/// revoker, counting on the other's driver still lingering, started one driver for two
/// tasks (a service's rounds on four workers, each with a task per worker that spins until
/// all four run, stopped within a few hundred rounds).
///
/// Tokio runs those wakes, and that driver after them, only once the worker has nothing
/// else to poll, and nothing can take the driver elsewhere meanwhile. A task run here may
/// take long (a CPU task computing, or waiting for another task to run beside it), and the
/// pushers that counted on the lingering driver would wait as long, with other workers
/// idle. Revoked, the driver takes a slot again when it is back, if work waits and one is
/// free, and ends otherwise.
#[cold]
fn revoke_put_off(rt: &Arc<RtInner>) {
    let mut work = false;
    for s in context::take_put_off(rt.id) {
        let was = s.load(Ordering::Acquire);
        if matches!(was, PUT_OFF_LINGERING | PUT_OFF_HOLDING)
            && s.compare_exchange(was, PUT_OFF_REVOKED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            && rt.inject.revoke(was == PUT_OFF_LINGERING)
        {
            work = true;
        }
    }
    if work {
        ask_for_drivers(rt);
    }
}

pub(crate) struct Driver {
    rt: Arc<RtInner>,
    /// Holds one of the injector's driver slots.
    active: bool,
    /// Deferred counter changes and scratch space, kept across the tasks it runs.
    local: Local,
    /// It ran a task on a backed GPU since it last lingered: when it runs out of work it
    /// lingers (see [`linger`](Self::linger)).
    lingers: bool,
    /// A task it polled waits on something outside the runtime, and it has not left since:
    /// a driver out of work then lingers behind Tokio's other work rather than spinning
    /// (see [`linger`](Self::linger)).
    waited_outside: bool,
    /// It yielded, counted as lingering, behind what Tokio runs first on its worker (see
    /// [`Linger::Behind`]); it stops lingering when polled next.
    behind: bool,
    /// How many times it lingered behind Tokio's work since it last ran a task (two at
    /// most: then it leaves).
    behind_rounds: u8,
    /// Its word while it waits behind the wakes Tokio puts off (`PUT_OFF_LINGERING` or
    /// `PUT_OFF_HOLDING`; made the first time), through which a driver on the same worker
    /// revokes it (see [`revoke_put_off`]).
    put_off: Option<Arc<AtomicU8>>,
    /// It waits behind the wakes Tokio puts off now (`put_off` is noted on its thread).
    put_off_now: bool,
    /// Watches of GPU tasks nobody waits on, not yet handed to the poller (see the module
    /// invariants).
    watches: Vec<Watch>,
    /// Nanoseconds spent in task bodies in this poll, when workers report their time.
    #[cfg(feature = "tracing")]
    body_ns: Option<u64>,
}

/// Whether a driver's poll looks at the clock after its `ran`-th task (see [`LONG_POLL`]):
/// after the 4th, 8th and 16th, then every [`CLOCK_EVERY`]. The first look starts the count,
/// so tasks that compute for long (half a millisecond each) have the driver yield after eight
/// of them, while a poll of short tasks reads the clock about once per 32, and a poll of at
/// most three tasks never does. (Every 32 from the first, the driver yielded after 64 such
/// tasks: 32 ms.)
#[inline(always)]
fn looks_at_clock(ran: u32) -> bool {
    (ran >= 4 && ran.is_power_of_two()) || ran.is_multiple_of(CLOCK_EVERY)
}

/// A `block_on` thread woken (by the task a lingering driver just ran, mostly) waits for a
/// core that the workers fill: it gets the lingering driver's (see the module docs).
#[inline]
fn yield_to_woken_main(rt: &RtInner) {
    if rt.counters.any_main_woken() {
        std::thread::yield_now();
    }
}

/// Whether a driver's poll has run tasks for [`LONG_POLL`] since its first look at the
/// clock (`first`, which the first look sets).
#[inline(never)]
fn ran_long(first: &mut Option<std::time::Instant>) -> bool {
    let now = std::time::Instant::now();
    match *first {
        None => {
            *first = Some(now);
            false
        }
        Some(t) => now.duration_since(t) >= LONG_POLL,
    }
}

/// Has Tokio poll the driver whose poll this is again: through Tokio's own deferral
/// (`put_off`: once its worker ran what it had queued, and the wakes it put off until
/// then), or from the back of the worker's queue.
fn yield_to_tokio(cx: &mut Context<'_>, put_off: bool) {
    if put_off {
        let mut behind = std::pin::pin!(tokio::task::yield_now());
        let _ = behind.as_mut().poll(cx);
    } else {
        cx.waker().wake_by_ref();
    }
}

/// What a driver out of work does next ([`Driver::linger`]).
enum Linger {
    /// Runs this task it found.
    Found(TaskPtr),
    /// Yields to Tokio, counted as lingering, and looks again when polled next: behind the
    /// wakes Tokio put off (`put_off`), or behind what its worker has queued.
    Behind { put_off: bool },
    /// Leaves.
    Leave,
}

/// How long a driver that ran GPU tasks polls for more work (and for their fences) before it
/// leaves: about the time a short kernel takes, so that the next task spawned after an
/// awaited GPU task, or a parent woken by its child's fence, runs without waking a thread.
const LINGER: std::time::Duration = super::bridge::AWAIT_SPIN;

/// How long one driver (one at a time) that ran out of CPU work waits for more before it
/// leaves. Starting a driver for each task spawned from outside the drivers costs a Tokio
/// task and a thread wake-up per spawn; on 16 cores that made such spawns two to three
/// times slower than Tokio's own.
const CPU_LINGER: std::time::Duration = std::time::Duration::from_micros(20);

/// How often a driver lingering for CPU work looks at the injector: about the latency of
/// waking a thread, so a task pushed meanwhile waits no longer than a wake-up would take.
/// (Looking at it flat out would slow every push down: the queue's cache lines would move
/// to the lingering driver and back for each one.)
const CPU_LOOK: std::time::Duration = std::time::Duration::from_micros(5);

/// Whether Tokio has work in its workers' shared queue (see [`Driver::linger`]).
fn tokio_queued(rt: &RtInner) -> bool {
    rt.tokio_metrics.global_queue_depth() > 0
}

impl Driver {
    /// A driver holding a slot (the caller claimed it) and counted in `ours`.
    pub(crate) fn new(rt: Arc<RtInner>) -> Self {
        #[cfg(all(test, not(parla_loom)))]
        rt.drivers_made.fetch_add(1, Ordering::Relaxed);
        Driver {
            rt,
            active: true,
            local: Local::default(),
            lingers: false,
            waited_outside: false,
            behind: false,
            behind_rounds: 0,
            put_off: None,
            put_off_now: false,
            watches: Vec::new(),
            #[cfg(feature = "tracing")]
            body_ns: None,
        }
    }

    /// Hands the deferred watches to the poller (see the module invariants).
    #[inline]
    fn hand_watches(&mut self, rt: &Arc<RtInner>) {
        if !self.watches.is_empty() {
            Bridge::watch_all(rt, &mut self.watches);
        }
    }

    /// Notes this driver as waiting behind the wakes Tokio puts off on this thread, where a
    /// driver on the same worker may revoke it ([`revoke_put_off`]); `lingering`: it is
    /// counted as lingering.
    fn note_put_off(&mut self, rt: &RtInner, lingering: bool) {
        let s = self
            .put_off
            .get_or_insert_with(|| Arc::new(AtomicU8::new(PUT_OFF_BACK)));
        let word = if lingering {
            PUT_OFF_LINGERING
        } else {
            PUT_OFF_HOLDING
        };
        s.store(word, Ordering::Release);
        context::note_put_off(rt.id, s);
        self.put_off_now = true;
    }

    /// Ends a driver whose task's poll gave its slot up and found none free to take back:
    /// what it holds (its effects, then its next-task slot) goes to the injector, for the
    /// drivers holding the slots.
    #[cold]
    #[inline(never)]
    fn end_without_slot(&mut self, rt: &Arc<RtInner>) {
        rt.flush(&mut self.local);
        rt.release_next();
    }

    /// Back from waiting behind the wakes Tokio put off (polled again, or dropped): whether
    /// it was revoked meanwhile (it then holds no slot and does not linger).
    fn back_from_put_off(&mut self) -> bool {
        if !std::mem::take(&mut self.put_off_now) {
            return false;
        }
        let Some(s) = &self.put_off else {
            return false;
        };
        context::forget_put_off(s);
        let revoked = s.swap(PUT_OFF_BACK, Ordering::AcqRel) == PUT_OFF_REVOKED;
        if revoked {
            self.active = false;
        }
        revoked
    }

    /// Out of work after running GPU tasks: polls the injector and the runtime's fences for
    /// up to [`LINGER`] before leaving, so that what the GPU work releases (an awaiter's next
    /// spawn, a parent woken by its child's fence, a dependent) runs here at once instead of
    /// waiting for a thread to wake. Out of CPU work: if fewer than the injector's
    /// [`cpu_lingerers`](super::inject::Injector::cpu_lingerers) drivers linger, looks at
    /// the injector every [`CPU_LOOK`] for up to [`CPU_LINGER`]. Out of work after a task it
    /// polled waited outside the runtime, or after it yielded for want of Tokio's budget:
    /// lingers behind Tokio's work instead ([`Linger::Behind`]), twice at most, and then
    /// leaves. Pushers count on a lingering driver instead of starting one.
    fn linger(&mut self, rt: &Arc<RtInner>) -> Linger {
        self.hand_watches(rt);
        let gpu = std::mem::take(&mut self.lingers);
        // Tasks this worker's Tokio resources refused for want of budget are woken only
        // once this driver's poll returns (see `context::note_coop_yield`). And what a task
        // waits on outside the runtime may be work for this very worker: a future it gave
        // `tokio::spawn` (queued on this worker, run once this driver's poll returns), the
        // wake of a `yield_now` (which Tokio puts off likewise), I/O or a timer this worker
        // drives. Spinning here would keep the worker from that work, and the task from
        // its wake: linger behind it instead. First behind what the worker has queued (a
        // spawned future), then behind the wakes Tokio puts off until its queue is empty
        // (first there when Tokio's budget ran out), then leave.
        let coop = context::take_coop_yield();
        if coop || (self.waited_outside && !gpu) {
            let round = if coop { 1 } else { self.behind_rounds };
            if round >= 2 {
                self.waited_outside = false;
                return Linger::Leave;
            }
            self.behind_rounds = round + 1;
            rt.inject.linger();
            return Linger::Behind {
                put_off: round == 1,
            };
        }
        self.waited_outside = false;
        let alone = rt.tokio_metrics.num_workers() == 1;
        if alone && tokio_queued(rt) {
            // (Tokio's work first: see the looks below.)
            return Linger::Leave;
        }
        if gpu {
            rt.inject.linger();
        } else if rt.bridge.is_busy() || !rt.inject.linger_for_cpu() {
            // (With GPU work in flight, lingering is left to the drivers that ran it: they
            // poll flat out, for the latency of the next GPU task.)
            return Linger::Leave;
        }
        rt.flush(&mut self.local);
        let limit = if gpu { LINGER } else { CPU_LINGER };
        // (With at least as many workers as cores.)
        let yields = !gpu && rt.cpu_threads >= rt.cores;
        if yields {
            yield_to_woken_main(rt);
        }
        let start = std::time::Instant::now();
        let mut next_look = CPU_LOOK;
        let mut n = 0u32;
        // Whether Tokio's shared queue held work at the last look.
        let mut queued_before = false;
        loop {
            let found = rt.inject.pop().or_else(|| {
                // Completing a fenced task puts what it releases in this thread's next-task
                // slot.
                (rt.bridge.is_busy() && Bridge::poll_once(rt) > 0)
                    .then(context::take_next)
                    .flatten()
            });
            if let Some(t) = found {
                if rt.inject.stop_lingering() {
                    // More work than this driver: others take it (or drivers still
                    // lingering: `start_drivers` counts on those).
                    ask_for_drivers(rt);
                }
                return Linger::Found(t);
            }
            // Until the next look: for GPU work the next spin (the clock read every 16th),
            // for CPU work the next `CPU_LOOK`. Work queued for Tokio's workers in general
            // (futures given `tokio::spawn` outside them, a driver started from outside)
            // ends the lingering, as time running out does, when this is Tokio's only worker
            // or the work was there at the look before too (no other worker took it): the
            // worker this driver holds would run it (with one worker, each such future
            // waited for a whole linger, 27 us instead of 1). Other workers take such work
            // while one lingers, mostly: on two workers, leaving at once took a fifth more
            // time than lingering on.
            let over = loop {
                n += 1;
                std::hint::spin_loop();
                if gpu && !n.is_multiple_of(16) {
                    break false;
                }
                let now = start.elapsed();
                if now >= limit {
                    break true;
                }
                let look = if gpu {
                    n.is_multiple_of(256)
                } else if now >= next_look {
                    next_look += CPU_LOOK;
                    true
                } else {
                    false
                };
                if look {
                    if yields {
                        yield_to_woken_main(rt);
                    }
                    let queued = tokio_queued(rt);
                    if queued && (alone || queued_before) {
                        break true;
                    }
                    queued_before = queued;
                }
                if gpu || look {
                    break false;
                }
            };
            if over {
                // Work pushed by someone who counted on this driver is taken here.
                if let (Some(t), _) = stop_lingering_with(rt, None) {
                    return Linger::Found(t);
                }
                #[cfg(all(test, not(parla_loom)))]
                rt.futile_lingers.fetch_add(1, Ordering::Relaxed);
                return Linger::Leave;
            }
        }
    }

    /// Sets a task up for its first poll: on a GPU, the backend gives it a stream that waits
    /// on its GPU dependencies.
    fn start(&self, task: &TaskPtr, slot: usize) -> Result<RunState, TaskError> {
        let rt = &self.rt;
        let h = task.header();
        crate::trace::step!(rt, h, "started");
        let dev = &rt.devices[slot];
        let exec = match &dev.gpu {
            None => None,
            Some((backend, index)) => {
                let waits = h.take_waits();
                let begun = catch_unwind(AssertUnwindSafe(|| {
                    backend.begin(*index, &h.name, &waits, h.priority)
                }));
                let device_err = |message: String| TaskError::Device {
                    task: h.name.to_string(),
                    device: dev.device.to_string(),
                    message,
                };
                match begun {
                    Ok(Ok(mut e)) => {
                        if h.trace.is_some() {
                            let _ = catch_unwind(AssertUnwindSafe(|| e.time()));
                        }
                        Some(e)
                    }
                    Ok(Err(message)) => return Err(device_err(message)),
                    Err(p) => {
                        return Err(device_err(format!(
                            "the GPU backend panicked: {}",
                            panic_message(&*p)
                        )));
                    }
                }
            }
        };
        Ok(RunState { exec })
    }

    /// Polls `task` (whose run token this driver holds) once, and handles what follows.
    /// Returns what the poll takes of the driver's [`BUDGET`] (see [`OUTSIDE_COST`]).
    /// (`rt`: the driver's runtime, borrowed from the caller: cloning the `Arc` for every
    /// task would update one reference count from every worker. `slots`: this thread's,
    /// looked up once per driver poll.)
    #[inline(always)]
    fn run(&mut self, rt: &Arc<RtInner>, task: TaskPtr, slots: &context::Slots) -> u32 {
        let h = task.header();
        // (The slot of the device it was mapped to: the CPU's is 0.)
        let slot = h.slot();
        // SAFETY: this driver holds the task's run token.
        let saved = unsafe { h.take_run() };
        let (mut run, pended) = match saved {
            Some(r) => (r, true),
            None => match self.start(&task, slot) {
                Ok(r) => (r, false),
                Err(err) => {
                    rt.complete(&task, Err(Arc::new(err)), true, false, &mut self.local);
                    return 1;
                }
            },
        };
        if pended || run.exec.is_none() {
            // Only the first poll of a GPU task is polled with watches deferred.
            self.hand_watches(rt);
        }
        if pended {
            h.act.begin_poll();
            if slot == Device::CPU.slot() {
                // It may have kept its VCUs while it waited (`scheduler::idle`).
                rt.pollers.unhold(&task);
            }
        } else {
            h.act.begin_first_poll();
        }
        self.lingers |= run.exec.is_some();
        if !pended && run.exec.is_some() {
            // (The dependents' heads were asked for as the task started: see `take_waits`.)
            h.prefetch_gpu_dependents();
        }
        slots.take_blocked();
        slots.mark_poll();
        let poll = {
            let _task = context::enter_task(&task);
            let waker = waker::task_poll_waker(&task);
            let entered = match run.exec.as_mut() {
                Some(e) => catch_unwind(AssertUnwindSafe(|| e.enter())).is_ok(),
                None => true,
            };
            let p = if entered {
                self.poll_body(&task, &waker)
            } else {
                Poll::Ready(Err(Arc::new(TaskError::Device {
                    task: h.name.to_string(),
                    device: rt.devices[slot].device.to_string(),
                    message: "the GPU backend panicked entering the device".into(),
                })))
            };
            if let Some(e) = run.exec.as_mut() {
                let _ = catch_unwind(AssertUnwindSafe(|| e.exit()));
            }
            p
        };
        slots.mark_poll();
        if slots.take_let_go() {
            // The poll let go of this thread (it may have blocked it), and of the driver's
            // slot (`RtInner::release_held`): the thread is the driver's again, and the
            // driver takes a slot again if one is free, or ends once this poll is dealt
            // with (see `poll`).
            context::take_back_driver(rt.id);
            rt.let_go_polls.fetch_sub(1, Ordering::SeqCst);
            self.active = rt.inject.claim();
        }
        // An await failure the resolver set and no await took stays with this poll.
        h.act.take_await_failure();
        let cost = self.end_poll(rt, task, run, poll, pended, slot, slots);
        if let Some(t) = context::take_woken() {
            // A task this poll woke that waits for its VCUs and did not get the polled
            // task's (`pass_vcus`): through the resume lane.
            let lent = t.header().lent();
            rt.resume_lent(t, Device::CPU.slot(), lent);
        }
        if context::has_stash() {
            // A task this poll made ready that waits for its device is queued now.
            rt.flush_stash(&mut self.local);
        }
        cost
    }

    /// What follows a poll of `task` that returned `poll`; returns what the poll takes of
    /// the driver's [`BUDGET`].
    #[allow(clippy::too_many_arguments)]
    fn end_poll(
        &mut self,
        rt: &Arc<RtInner>,
        task: TaskPtr,
        run: RunState,
        poll: Poll<Outcome>,
        pended: bool,
        slot: usize,
        slots: &context::Slots,
    ) -> u32 {
        let h = task.header();
        match poll {
            Poll::Ready(outcome) => {
                crate::trace::step!(rt, h, "body_finished");
                self.finish_running(rt, &task, run, outcome, pended);
                rt.retire(task, &mut self.local.spent);
                1
            }
            Poll::Pending => {
                let awaited = slots.take_awaited();
                // (A task whose poll did not poll the awaits of tasks a combinator holds
                // still awaits them: `waker::Combined`.)
                let awaits = slots.take_blocked() || h.awaits_combined();
                if awaits {
                    // A task awaiting tasks lends its VCUs while it waits.
                    self.lend(&task, slot, awaited);
                } else {
                    self.waited_outside = true;
                }
                // A CPU task waiting on anything else (a channel, a timer, I/O, the
                // `JoinHandle` of a future it started with `tokio::spawn`) keeps them while
                // nothing waits for VCUs on the CPU, and lends them once something does:
                // what it waits for may be a task that needs them - a consumer its
                // producers fill a channel for, a task awaited by a future it spawned
                // (`scheduler::idle`). (A GPU task keeps them: its GPU work may still run.
                // A task woken during its poll runs again at once.)
                let holds = !awaits
                    && slot == Device::CPU.slot()
                    && h.demand().vcu > 0
                    && !h.act.is_notified();
                // SAFETY: still the run-token holder: the activity is RUNNING until
                // `end_poll` below, and nobody schedules the task before that.
                unsafe { h.save_run(&rt.waking, run) };
                if !pended {
                    rt.pollers.insert(&task);
                }
                // A task this poll woke that waits for VCUs takes this one's instead.
                let holds = holds && !self.pass_vcus(rt, &task);
                if holds {
                    rt.pollers.hold(&task);
                }
                match h.act.end_poll(awaits) {
                    // Woken during its poll: it keeps its token and runs again.
                    EndPoll::Notified => rt.schedule_woken(task, false),
                    ended => {
                        if ended == EndPoll::Parked {
                            self.local.busy -= 1;
                        } else if holds && rt.pollers.held.lend_now(|| rt.cpu_waiting()) {
                            rt.lend_held(&task, &mut self.local.admitted);
                            rt.launch(&mut self.local);
                        }
                        if h.abort_seen_after_poll() {
                            // Aborted during the poll: the next one aborts it (see there).
                            waker::task_poll_waker(&task).wake_by_ref();
                        }
                        if rt.shutdown.load(Ordering::SeqCst) {
                            self.cancel_at_shutdown(rt, &task);
                        }
                    }
                }
                if awaits { 1 } else { OUTSIDE_COST }
            }
        }
    }

    /// The runtime was dropped while `task` was in a poll that then returned `Pending` (the
    /// task dropped it itself, or a thread did meanwhile): the drop's cancellation may
    /// have found it running, and nothing would poll or cancel it later, so it is
    /// cancelled here (see `Activity::end_poll` for why one of the two does).
    #[cold]
    #[inline(never)]
    fn cancel_at_shutdown(&mut self, rt: &Arc<RtInner>, task: &TaskPtr) {
        rt.pollers.remove(task);
        stall::cancel_waiting(rt, task, &mut self.local);
    }

    /// Polls the body of `task` (whose run token this driver holds) once: inside its span
    /// and timed when it is traced.
    fn poll_body(&mut self, task: &TaskPtr, waker: &std::task::Waker) -> Poll<Outcome> {
        let mut cx = Context::from_waker(waker);
        #[cfg(feature = "tracing")]
        if let Some(t) = task.header().trace.as_deref() {
            return crate::trace::cold(|| self.poll_traced(task, t, &mut cx));
        }
        // SAFETY: this driver holds the task's run token (from admission or a wake, through
        // the injector or the next-task slot, exactly once), and the task is not finished.
        unsafe { task.poll_body(&mut cx) }
    }

    /// [`poll_body`](Self::poll_body) of a traced task: inside its span, timed.
    #[cfg(feature = "tracing")]
    fn poll_traced(
        &mut self,
        task: &TaskPtr,
        t: &crate::graph::node::TaskTrace,
        cx: &mut Context<'_>,
    ) -> Poll<Outcome> {
        // (The monotonic clock, as for the whole poll, and only when this poll's time is
        // reported: see `trace::add_traced`.)
        let outer = crate::trace::traced_from();
        let mut body = 0;
        let p = self.rt.in_trace(|| {
            let since = crate::trace::now_ns();
            let p = {
                let _span = t.span.enter();
                let from = outer.map(|_| crate::trace::now_ns());
                // SAFETY: as in `poll_body`.
                let p = unsafe { task.poll_body(cx) };
                if let Some(from) = from {
                    body = crate::trace::now_ns().saturating_sub(from);
                }
                p
            };
            // Each poll, with when it began: the trace draws a task that suspends poll by
            // poll (see `trace::layer`).
            tracing::trace!(target: "parla::task", parent: &t.span, step = "polled", since);
            p
        });
        // Entering the span is the trace's time, not the runtime's.
        crate::trace::add_traced(outer, body);
        if let Some(b) = self.body_ns.as_mut() {
            *b += body;
        }
        p
    }

    /// The task waits on other tasks (`awaited`: the one it awaited last): its VCUs go back
    /// to its device meanwhile.
    fn lend(&mut self, task: &TaskPtr, slot: usize, awaited: Option<TaskPtr>) {
        let vcu = task.header().lend();
        if vcu == 0 {
            return;
        }
        let admission = &self.rt.devices[slot].admission;
        let loan = Demand { vcu, mem: 0 };
        // The task it awaits (last) goes first, if it waits for admission there.
        let awaited = awaited.filter(|a| a.header().mapped_to(slot));
        let out = &mut self.local.admitted;
        if let Some(a) = &awaited
            && let Some(c) = context::unstash(a, vcu)
        {
            // Made ready in this poll and held here: no admission needed at all.
            admission.admit_on_loan(loan, a.clone(), c, out);
        } else {
            let here = awaited.as_ref().map(|a| (a, a.header().demand()));
            admission.lend(loan, here, out);
        }
        // Tasks with data waiting for VCUs there may fit now too.
        self.rt.pump(slot, &mut self.local.admitted);
        self.rt.launch(&mut self.local);
    }

    /// `task`, a CPU task whose poll just returned `Pending` without awaiting tasks (it
    /// would keep its VCUs: `scheduler::idle`), passes them to the task its poll woke that
    /// waits to take back as many (see [`context::defer_resume`]), if there is one: that
    /// task runs next on this thread, and `task` has lent its VCUs (it takes them back
    /// through the resume lane once woken, as after any loan). Returns whether it did. The
    /// caller holds `task`'s run token (it is RUNNING), so nothing schedules it meanwhile.
    fn pass_vcus(&mut self, rt: &Arc<RtInner>, task: &TaskPtr) -> bool {
        let Some(woken) = context::take_woken() else {
            return false;
        };
        let need = woken.header().lent();
        if need == 0 || need > task.header().demand().vcu {
            rt.resume_lent(woken, Device::CPU.slot(), need);
            return false;
        }
        let have = task.header().lend_outside();
        woken.header().reclaim();
        if have > need {
            let rest = Demand {
                vcu: have - need,
                mem: 0,
            };
            let admission = &rt.devices[Device::CPU.slot()].admission;
            admission.release(rest, &mut self.local.admitted);
            rt.pump(Device::CPU.slot(), &mut self.local.admitted);
            rt.launch(&mut self.local);
        }
        // Next on this thread. (It holds the busy token its wake took.)
        rt.push_runnable(woken);
        true
    }

    /// The body of `task` returned `outcome`. A CPU (or virtual GPU) task completes now. A
    /// GPU task's backend records a fence after the work the body enqueued: its GPU-only
    /// dependents may start behind the fence (runahead), and the task completes when the
    /// fence is seen done.
    fn finish_running(
        &mut self,
        rt: &Arc<RtInner>,
        task: &TaskPtr,
        run: RunState,
        outcome: Outcome,
        pended: bool,
    ) {
        let h = task.header();
        let Some(exec) = run.exec else {
            rt.complete(task, outcome, true, pended, &mut self.local);
            return;
        };
        let device = h.device().unwrap_or(Device::CPU);
        let fenced = catch_unwind(AssertUnwindSafe(|| exec.finish()))
            .unwrap_or_else(|p| Err(format!("the GPU backend panicked: {}", panic_message(&*p))));
        let outcome = match (outcome, fenced) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(message)) => Err(Arc::new(TaskError::Device {
                task: h.name.to_string(),
                device: device.to_string(),
                message,
            })),
            (Ok(()), Ok(f)) => {
                // No query here: querying a fence just recorded makes the driver submit the
                // work queued so far at once (microseconds, on every task). The pollers
                // query it later, or an awaiter spins on it.
                // Once the fence is published, an awaiter or the poller may complete the
                // task (dropping its token) before the dependents it releases are counted:
                // hold a token meanwhile (one this driver counted ahead: the counters' line
                // is the one the poller writes as it completes fenced tasks).
                rt.take_busy_credit(&mut self.local);
                if pended {
                    rt.pollers.remove(task);
                }
                // Somebody waits on the fence: a backend that defers recording records it
                // here, where the device's context is current, rather than at the first
                // query (an awaiter may spin on it as soon as it is published).
                let flush = || {
                    let _ = catch_unwind(AssertUnwindSafe(|| f.flush()));
                };
                if h.join_awaited() {
                    flush();
                }
                let others = graph::body_fenced(task, &f, &mut self.local.fx);
                rt.apply(&mut self.local);
                let queued = rt.devices[device.slot()].usage().waiting > 0;
                let urgent = others || queued || h.join_awaited();
                if urgent {
                    // (Done already if it was awaited above: a second flush costs nothing.)
                    flush();
                }
                if urgent {
                    // (Behind the deferred ones, which came first.)
                    self.hand_watches(rt);
                    Bridge::watch(rt, Watch::Task(task.clone(), f, true));
                } else {
                    self.watches.push(Watch::Task(task.clone(), f, false));
                    if self.watches.len() >= WATCH_BATCH {
                        self.hand_watches(rt);
                    }
                }
                self.local.busy -= 1;
                return;
            }
        };
        rt.complete(task, outcome, true, pended, &mut self.local);
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let rt = this.rt.clone();
        let _rt = context::enter_rt(&rt);
        let _driver = context::enter_driver(rt.id);
        let mut budget = BUDGET;
        // Tasks run in this poll, and when it first looked at the clock (see `LONG_POLL`).
        let (mut ran, mut clock) = (0u32, None);
        // (A hand-off mark left by a driver that ended on this thread is stale.)
        let (_, put_off_here) = context::take_marks();
        #[cfg(feature = "tracing")]
        let report = this.start_report();
        let mut first = None;
        // Whether this driver may have started another since it last yielded, before the
        // task it takes next (see the hand-off below).
        let mut started = false;
        let mut ended = false;
        let revoked = this.back_from_put_off();
        if std::mem::take(&mut this.behind) && !revoked {
            // Back from lingering behind Tokio's work (`Linger::Behind`).
            // (Work may come after the look, before it stops lingering.)
            (first, started) = stop_lingering_with(&rt, rt.inject.pop());
        }
        if revoked {
            if rt.inject.has_work() && rt.inject.claim() {
                // Revoked meanwhile (see `revoke_put_off`): it takes a slot again for the
                // work that waits, and asks for drivers for more of it.
                this.active = true;
                first = rt.inject.pop();
                if first.is_some() && rt.inject.has_work() {
                    ask_for_drivers(&rt);
                    started = true;
                }
            } else {
                // The drivers holding the slots take the work.
                ended = true;
            }
        }
        if put_off_here && !ended {
            revoke_put_off(&rt);
            started = true;
        }
        // (The loop reads this thread's slots through one lookup: see `context::Slots`.)
        let slots = context::slots();
        let result = loop {
            if ended {
                break Poll::Ready(());
            }
            if rt.shutdown.load(Ordering::Relaxed) {
                // The runtime is being dropped: its drop cancels what is left once Tokio's
                // workers stopped, which they do once they have nothing to run (a worker
                // looks for the shutdown only every 61 polls otherwise, and each of this
                // driver's polls may run tasks for a millisecond and more). So this driver
                // stops here, without a wake.
                for t in first.take().into_iter().chain(slots.take_next()) {
                    rt.inject.push(t);
                }
                break Poll::Pending;
            }
            let next = first
                .take()
                .or_else(|| slots.take_next())
                .or_else(|| rt.inject.pop());
            let task = match next {
                Some(t) => t,
                None => match this.linger(&rt) {
                    Linger::Found(t) => {
                        started = true;
                        t
                    }
                    Linger::Behind { put_off } => {
                        // Counted as lingering (pushers count on it instead of starting a
                        // driver), it yields (and flushes, below).
                        this.behind = true;
                        if put_off {
                            this.note_put_off(&rt, true);
                        }
                        yield_to_tokio(cx, put_off);
                        break Poll::Pending;
                    }
                    Linger::Leave => {
                        rt.flush(&mut this.local);
                        if rt.inject.leave() {
                            continue;
                        }
                        this.active = false;
                        break Poll::Ready(());
                    }
                },
            };
            this.behind_rounds = 0;
            if std::mem::take(&mut started) && context::take_handoff() {
                // This driver just started another (it found more work than drivers), which
                // waits in this worker's LIFO slot until this one yields. The new one takes
                // `task` (queued for any driver: the next-task slot is empty when a poll
                // returns, and Tokio may run the new driver elsewhere) while this one,
                // yielding, goes where an idle worker steals it. Running `task` first would
                // keep the new driver from every other worker for as long as `task` runs: a
                // task that computes for a second, or spins until another task runs.
                rt.inject.push(task);
                yield_to_tokio(cx, false);
                break Poll::Pending;
            }
            budget = budget.saturating_sub(this.run(&rt, task, slots));
            if !this.active {
                // The poll gave the slot up and none was free to take back: the drivers
                // holding them take what this one holds, as from a pusher.
                this.end_without_slot(&rt);
                break Poll::Ready(());
            }
            ran += 1;
            let long = looks_at_clock(ran) && ran_long(&mut clock);
            // Tokio's cooperative budget is the driver's: once the tasks it ran used it up,
            // Tokio resources answer `Pending` until the driver yields. A driver that
            // started another yields too: the new one waits in this worker's LIFO slot
            // until this one yields, and this one, yielding, goes to the worker's run
            // queue, where an idle worker is woken to steal it - so both run.
            let (mut handoff, put_off_here) = context::take_marks();
            if put_off_here {
                revoke_put_off(&rt);
                handoff |= context::take_handoff();
            }
            let coop = !tokio::task::coop::has_budget_remaining();
            if handoff || budget == 0 || coop || long {
                // Let other Tokio tasks on this worker run; the next task goes where any
                // driver finds it.
                if let Some(t) = slots.take_next() {
                    rt.inject.push(t);
                }
                // The Tokio resources that refused a task for want of budget wake it once
                // this worker has nothing else to poll: this driver goes behind them, and
                // the tasks they wake are queued when it polls next. Woken at once, it
                // would find no work, and linger in their way.
                // So does one whose poll ran long: Tokio looks at its timers and I/O before
                // it runs the wakes it put off.
                let put_off = (coop || long) && !handoff;
                if put_off {
                    context::note_coop_yield();
                    this.note_put_off(&rt, false);
                }
                #[cfg(all(test, not(parla_loom)))]
                if coop {
                    rt.coop_yields.fetch_add(1, Ordering::Relaxed);
                }
                yield_to_tokio(cx, put_off);
                break Poll::Pending;
            }
        };
        // A task noted as awaited in a poll that then finished is not needed any more (and
        // the thread-local holding it has no destructor).
        drop(slots.take_awaited());
        this.hand_watches(&rt);
        rt.flush(&mut this.local);
        this.local.trim();
        #[cfg(feature = "tracing")]
        this.report(report);
        result
    }
}

#[cfg(feature = "tracing")]
impl Driver {
    /// When workers report their time (a subscriber wants `parla::sched` events): the time
    /// at the start of this poll and the time already spent tracing on this thread (one
    /// clock for both, and for the bodies: see `trace::add_traced`).
    fn start_report(&mut self) -> Option<(u64, u64)> {
        let on = self.rt.trace.is_some()
            || tracing::enabled!(target: "parla::sched", tracing::Level::TRACE);
        self.body_ns = on.then_some(0);
        on.then(|| {
            crate::trace::set_reporting(true);
            (crate::trace::now_ns(), crate::trace::traced_ns())
        })
    }

    /// Reports this poll's time: in task bodies, and in the runtime (time spent writing
    /// the trace left out).
    fn report(&mut self, start: Option<(u64, u64)>) {
        let (Some((t0, traced)), Some(body_ns)) = (start, self.body_ns.take()) else {
            return;
        };
        crate::trace::set_reporting(false);
        let spent = crate::trace::now_ns().saturating_sub(t0);
        let driver_ns = spent.saturating_sub(crate::trace::traced_ns() - traced);
        self.rt
            .in_trace(|| tracing::trace!(target: "parla::sched", driver_ns, body_ns));
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // (Empty between polls: see the module invariants.)
        let rt = self.rt.clone();
        self.hand_watches(&rt);
        let revoked = self.back_from_put_off();
        if self.behind && !revoked {
            // (Dropped while lingering behind Tokio's work, as Tokio drops its tasks when it
            // shuts down.)
            self.rt.inject.stop_lingering();
        }
        if self.active {
            self.rt.inject.release();
        }
        self.rt.counters.ours.fetch_sub(1, Ordering::SeqCst);
        // Dropped by Tokio's shutdown after the runtime's drop cancelled what it found: a
        // task this driver was polling meanwhile, and which waits again (on a timer of the
        // Tokio runtime going down with it), was running then, so nothing cancelled it, and
        // nothing would ever run it again: its handle waited for good (a runtime dropped in
        // a Tokio application's `async fn`, a few drops in a thousand). Cancelled now.
        rt.cancel_if_shut_down();
    }
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use super::*;
    use crate::runtime::Runtime;

    /// A `block_on` thread woken by its tasks, by a timer, or by a waker after its future
    /// panicked is counted as woken until it runs again: none is left counted once the
    /// calls return (a count left over would have every lingering driver yield its core at
    /// each look, for good).
    #[test]
    fn no_block_on_thread_is_left_counted_as_woken() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        for i in 0..200u64 {
            let v = rt.block_on(async move {
                let h = crate::task(async move { i }).spawn();
                tokio::time::sleep(std::time::Duration::from_micros(50)).await;
                h.await.unwrap() + crate::task(async move { i }).await.unwrap()
            });
            assert_eq!(v, 2 * i);
            assert!(!rt.inner.counters.any_main_woken(), "round {i}");
        }
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async {
                crate::task(async { 1 }).await.unwrap();
                panic!("the future panics");
            })
        }));
        assert!(panicked.is_err());
        assert!(!rt.inner.counters.any_main_woken());
    }

    /// A poll of a few tasks never reads the clock; one of many reads it at 4, 8, 16, then
    /// every 32 tasks.
    #[test]
    fn a_driver_looks_at_the_clock_early_then_every_32_tasks() {
        let looks: Vec<u32> = (1..=160).filter(|&n| looks_at_clock(n)).collect();
        assert_eq!(looks, [4, 8, 16, 32, 64, 96, 128, 160]);
    }

    /// Runs `body` as a task (default VCUs) on a runtime of `threads` workers; returns its
    /// output and the runtime, for its counters.
    fn in_task<T: Send + 'static>(
        threads: usize,
        body: impl std::future::Future<Output = T> + Send + 'static,
    ) -> (T, Arc<RtInner>) {
        let rt = Runtime::builder().cpu_threads(threads).build().unwrap();
        let out = rt.block_on(async { crate::task(body).await.unwrap() });
        (out, rt.inner.clone())
    }

    /// Asserts that the drivers of `rt` lingered for CPU work and found nothing only a few
    /// times over `what` (once the last task is done nothing comes after it, and a busy
    /// machine may delay a wake past a linger), where each step used to cost one.
    fn few_futile_lingers(rt: &RtInner, what: &str) {
        let futile = rt.futile_lingers.load(Ordering::Relaxed);
        assert!(futile <= 5, "{futile} lingers found nothing in {what}");
    }

    /// A task whose Tokio resources (here the budget alone) refuse it every 128 steps: Tokio
    /// wakes it only once its worker has nothing else to poll. On one worker, the driver
    /// that yielded must not come back, find nothing and spin in the way.
    #[test]
    fn a_task_out_of_tokio_budget_does_not_leave_its_driver_lingering() {
        let (steps, rt) = in_task(1, async {
            let mut steps = 0u32;
            for _ in 0..128 * 50 {
                tokio::task::coop::consume_budget().await;
                steps += 1;
            }
            steps
        });
        assert_eq!(steps, 128 * 50);
        few_futile_lingers(&rt, "50 budget yields");
    }

    /// The future a task gives `tokio::spawn` waits in the queue of the worker that runs the
    /// task's driver, and runs once the driver's poll returns: a driver out of work there
    /// must not spin in its way.
    #[test]
    fn a_task_awaiting_what_it_gave_tokio_spawn_does_not_leave_its_driver_lingering() {
        let (sum, rt) = in_task(1, async {
            let mut sum = 0;
            for i in 0..200u64 {
                sum += tokio::spawn(async move { i }).await.unwrap();
            }
            sum
        });
        assert_eq!(sum, (0..200).sum::<u64>());
        few_futile_lingers(&rt, "200 spawns");
    }

    /// `yield_now` puts the task's wake off until its worker has run what it queued: its
    /// driver, out of work meanwhile, lingers behind that work and takes the task again,
    /// instead of leaving and a new driver starting for each yield.
    ///
    /// On one worker, where the order of the worker's steps alone decides it: with two,
    /// whether a wake came before the driver gave up lingering depended on the machine's
    /// load (up to 164 drivers were made on 16 cores running 19 test binaries at once).
    #[test]
    fn a_task_yielding_to_tokio_in_a_loop_keeps_its_driver() {
        let ((), rt) = in_task(1, async {
            for _ in 0..200 {
                tokio::task::yield_now().await;
            }
        });
        // (201 without lingering; 1 in every one of 120 runs with it, on an idle machine and
        // on a loaded one.)
        let made = rt.drivers_made.load(Ordering::Relaxed);
        assert!(made <= 5, "{made} drivers made for 200 yields");
        few_futile_lingers(&rt, "200 yields");
    }

    /// Two pairs of tasks passing `rounds` messages each over channels, on one worker (which
    /// admits one task at a time): `a` sends, `b` answers. With `spend`, each poll takes a
    /// second step of Tokio's budget after its message. Returns the runtime, for its
    /// counters, once every answer came back.
    fn pairs_on_one_worker(rounds: usize, spend: bool) -> Arc<RtInner> {
        let step = move || async move {
            if spend {
                tokio::task::coop::consume_budget().await;
            }
        };
        let (sums, rt) = in_task(1, async move {
            let pairs: Vec<_> = (0..2)
                .map(|_| {
                    let (to_b, mut b_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
                    let (to_a, mut a_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
                    let b = crate::task(async move {
                        while let Some(i) = b_rx.recv().await {
                            step().await;
                            to_a.send(i + 1).unwrap();
                        }
                    })
                    .spawn();
                    let a = crate::task(async move {
                        let mut sum = 0;
                        for i in 0..rounds {
                            to_b.send(i).unwrap();
                            sum += a_rx.recv().await.unwrap();
                            step().await;
                        }
                        sum
                    })
                    .spawn();
                    (a, b)
                })
                .collect();
            let mut sums = Vec::new();
            for (a, b) in pairs {
                sums.push(a.await.unwrap());
                b.await.unwrap();
            }
            sums
        });
        assert_eq!(sums, vec![(1..=rounds).sum::<usize>(); 2]);
        rt
    }

    /// Pairs of tasks passing messages on one worker, which admits one task at a time: a
    /// woken receiver never fits back at once, and takes over its sender's VCUs when the
    /// sender waits. After a wake finds the CPU full, the next wakes on that worker skip
    /// the check (a read of a line every admission writes), so only a few of them make it.
    #[test]
    fn wakes_on_a_full_cpu_mostly_skip_the_check_whether_they_fit() {
        let rt = pairs_on_one_worker(200, false);
        // Each message wakes its receiver: 800 wakes, each of which checked before.
        let checks = rt.fit_checks.load(Ordering::Relaxed);
        assert!(
            checks <= 200,
            "{checks} of 800 wakes checked whether they fit"
        );
    }

    /// Tasks passing messages over channels, each poll taking two steps of Tokio's budget
    /// (a message, and one more step), all on one worker. The budget is the driver's, shared
    /// by every task it polls in one poll: the driver yields before it runs out, rather
    /// than a task's channel refusing it in the middle of its poll (which puts the task
    /// off until its worker has nothing else to run).
    #[test]
    fn tasks_waiting_on_channels_do_not_run_their_driver_out_of_tokio_budget() {
        let rt = pairs_on_one_worker(2000, true);
        // 8,000 polls of two steps each: the budget ran out every 64 polls before.
        let refused = rt.coop_yields.load(Ordering::Relaxed);
        assert!(
            refused <= 10,
            "Tokio's budget ran out {refused} times in 8,000 polls"
        );
    }

    /// On 16 workers up to four drivers linger for CPU work at once: bursts spawned from
    /// `block_on` with gaps between them (in which drivers run out of work and linger) all
    /// run, and the drivers leave once the work stops.
    #[test]
    fn several_lingering_drivers_run_bursts_from_block_on_and_then_leave() {
        use std::sync::atomic::AtomicUsize;
        let rt = Runtime::builder().cpu_threads(16).build().unwrap();
        let inner = rt.inner.clone();
        assert_eq!(inner.inject.cpu_lingerers(), 4);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        rt.block_on(async move {
            for _ in 0..50 {
                for _ in 0..20 {
                    let r = r.clone();
                    crate::task(async move {
                        r.fetch_add(1, Ordering::SeqCst);
                    })
                    .spawn();
                }
                // (Blocks `block_on`'s thread: no await, so only the drivers take work.)
                std::thread::sleep(std::time::Duration::from_micros(30));
            }
        });
        assert_eq!(ran.load(Ordering::SeqCst), 1000);
        inner.wait_for_drivers_to_leave();
    }

    /// A gate opening on many tasks readies them all on the driver that completes the gate:
    /// that driver's scratch gives back what the burst made it hold when its poll ends,
    /// rather than keeping it for as long as the driver runs.
    #[test]
    fn a_driver_gives_back_what_a_burst_made_its_scratch_hold() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        let inner = rt.inner.clone();
        // As `start_drivers` does: a slot claimed, the driver counted.
        assert!(inner.inject.claim());
        inner.counters.ours.fetch_add(1, Ordering::SeqCst);
        let mut d = Driver::new(inner.clone());
        d.local.fx.ready.reserve(100_000);
        d.local.admitted.reserve(100_000);
        let caps = rt.block_on(async move {
            // Polled on a worker, as drivers are; with nothing to run, the poll ends.
            let polled = inner.tokio.spawn(async move {
                std::future::poll_fn(|cx| Pin::new(&mut d).poll(cx)).await;
                (d.local.fx.ready.capacity(), d.local.admitted.capacity())
            });
            polled.await.unwrap()
        });
        assert!(
            caps.0 <= 1024 && caps.1 <= 1024,
            "capacities kept: {caps:?}"
        );
    }
}
