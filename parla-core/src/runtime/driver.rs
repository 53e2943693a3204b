//! Drivers: Tokio tasks that run parla tasks.
//!
//! A driver runs one task at a time. When a task finishes, the driver completes it, and if
//! that admitted other tasks (a dependent became ready, a waiting task got the freed VCUs),
//! the driver runs the first of them itself, without a fresh spawn, and pushes the rest to
//! the runtime's injector queue. When nothing is left, the driver ends. At most
//! `cpu_threads` drivers pull from the injector at once; a driver whose task waits on
//! something leaves that count, so a waiting task never holds others back.
//!
//! A task that waits on other tasks (awaits a handle, an id or a space) lends its VCUs to
//! the device while it waits, and takes them back through admission before it is polled
//! again: a parent awaiting its children never starves them of the VCUs it holds.
//!
//! # Invariants
//! - A driver holds at most one task (the run token), and polls it only from its own
//!   `poll`, so a task is never polled concurrently.
//! - No lost wake-up between pushing to the injector and a driver leaving: pushers push and
//!   then read the active-driver count; a leaving driver decrements the count and then reads
//!   the queue, with `SeqCst` fences between, so one of them sees the other.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::task::{Context, Poll, Waker};

use super::RtInner;
use super::activity::Activity;
use crate::context;
use crate::device::Demand;
use crate::device::Device;
use crate::scheduler::{self, Launch};
use crate::task::header::{Header, Kind, Name};
use crate::task::{Resume, Task};

/// Tasks a driver completes in one poll before it yields to Tokio.
const BUDGET: u32 = 128;

struct Running {
    task: Arc<dyn Task>,
    device: Device,
    /// VCUs lent to the device while the task waits on other tasks (0: none).
    lent: u32,
    /// The pending request to take the lent VCUs back.
    resume: Option<Arc<Resume>>,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

pub(crate) struct Driver {
    rt: Arc<RtInner>,
    activity: Arc<Activity>,
    waker: Waker,
    current: Option<Running>,
    next: Option<Arc<dyn Task>>,
    /// Counted among the runtime's active drivers.
    active: bool,
}

impl Driver {
    /// A driver counted as active (the caller reserved the slot).
    pub(crate) fn new(rt: Arc<RtInner>, first: Option<Arc<dyn Task>>) -> Self {
        let activity = Arc::new(Activity::new(rt.counters.clone()));
        let waker = Waker::from(activity.clone());
        Driver {
            rt,
            activity,
            waker,
            current: None,
            next: first,
            active: true,
        }
    }

    fn start(&self, task: Arc<dyn Task>) -> Running {
        let h = task.header();
        let device = h.device().unwrap_or(Device::CPU);
        self.rt.stamp(h, 2);
        #[cfg(feature = "tracing")]
        let span = tracing::trace_span!(
            target: "parla::task",
            "task",
            task.id = %h.name,
            device = %device,
            vcu = crate::device::vcu_float(h.demand().vcu),
            mem.bytes = h.mem,
        );
        Running {
            task,
            device,
            lent: 0,
            resume: None,
            #[cfg(feature = "tracing")]
            span,
        }
    }

    /// The next task to run, or `None` when this driver should end.
    fn next_task(&mut self) -> Option<Arc<dyn Task>> {
        if let Some(t) = self.next.take() {
            if self.active || self.rt.try_activate() {
                self.active = true;
                return Some(t);
            }
            // Too many drivers pull already: hand the task to them.
            self.rt.push(t);
            return None;
        }
        if !self.active {
            if !self.rt.try_activate() {
                return None;
            }
            self.active = true;
        }
        loop {
            if let Some(t) = self.rt.injector.pop() {
                return Some(t);
            }
            self.rt.drivers.fetch_sub(1, Ordering::SeqCst);
            self.active = false;
            fence(Ordering::SeqCst);
            if self.rt.injector.is_empty() || !self.rt.try_activate() {
                return None;
            }
            self.active = true;
        }
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.activity.waker.register(cx.waker());
        this.activity.begin_poll();
        let rt = this.rt.clone();
        let _rt = context::enter_rt(&rt);
        let mut budget = BUDGET;
        loop {
            if this.current.is_none() {
                match this.next_task() {
                    Some(t) => this.current = Some(this.start(t)),
                    None => return Poll::Ready(()),
                }
            }
            let Some(r) = this.current.as_mut() else {
                continue;
            };
            if r.lent > 0 && !reacquire(&rt, r, &this.waker) {
                // Wait for admission (parked: admission wakes this driver).
                this.activity.end_poll(true);
                if this.active {
                    this.active = false;
                    rt.deactivate();
                }
                return Poll::Pending;
            }
            let r = &*r;
            context::take_blocked();
            let poll = {
                let _task = context::enter_task(&r.task, r.device);
                #[cfg(feature = "tracing")]
                let _span = r.span.enter();
                // SAFETY: this driver holds the task's run token (it came from admission
                // through `next`/the injector, exactly once), and the task is not finished.
                unsafe { r.task.poll_body(&mut Context::from_waker(&this.waker)) }
            };
            match poll {
                Poll::Pending => {
                    let blocked = context::take_blocked();
                    if let (true, Some(r)) = (blocked, this.current.as_mut()) {
                        lend(&rt, r);
                    }
                    this.activity.end_poll(blocked);
                    if this.active {
                        // Let other drivers pull while this task waits.
                        this.active = false;
                        rt.deactivate();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(outcome) => {
                    let Some(r) = this.current.take() else {
                        continue;
                    };
                    let mut launch = Launch::new();
                    let delta = scheduler::complete(&rt, &r.task, r.device, outcome, &mut launch);
                    rt.stamp_end(&r.task, r.device);
                    rt.counters.add(delta.live, delta.busy);
                    if rt.injector.is_empty() {
                        // Run the first admitted task here, without a round trip.
                        let mut it = launch.into_iter().filter_map(|t| rt.route(t));
                        this.next = it.next();
                        rt.push_all(it);
                    } else {
                        // Others were admitted earlier: keep first-come, first-served.
                        rt.push_all(launch.into_iter());
                    }
                }
            }
            budget -= 1;
            if budget == 0 {
                // Let other Tokio tasks on this worker run.
                this.activity.end_poll(false);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

/// The task waits on other tasks: give its VCUs back to the device meanwhile.
fn lend(rt: &Arc<RtInner>, r: &mut Running) {
    let h = r.task.header();
    let vcu = h.demand().vcu;
    if vcu == 0 || r.lent > 0 {
        return;
    }
    h.set_reserved_vcu(0);
    r.lent = vcu;
    let mut launch = Launch::new();
    rt.devices[r.device.slot()].release(Demand { vcu, mem: 0 }, &mut launch);
    rt.counters.add(0, launch.len() as i64);
    rt.push_all(launch.into_iter());
}

/// Takes lent VCUs back. Returns whether the task holds them again; if not, a resume
/// request waits in the device's admission queue and will wake the driver.
fn reacquire(rt: &Arc<RtInner>, r: &mut Running, waker: &Waker) -> bool {
    let granted = match &r.resume {
        Some(req) => req.is_granted(),
        None => {
            let req = Arc::new(Resume::new(
                Header::new(Name::Anon(0), Kind::Resume, 0, r.lent, 0),
                waker.clone(),
            ));
            let mut launch = Launch::new();
            rt.devices[r.device.slot()].admit(
                req.clone(),
                Demand {
                    vcu: r.lent,
                    mem: 0,
                },
                &mut launch,
            );
            rt.counters.add(0, launch.len() as i64);
            rt.push_all(launch.into_iter());
            let granted = req.is_granted();
            r.resume = Some(req);
            granted
        }
    };
    if granted {
        r.task.header().set_reserved_vcu(r.lent);
        r.lent = 0;
        r.resume = None;
    }
    granted
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Only at shutdown: Tokio drops drivers that still hold tasks.
        let held = self
            .current
            .take()
            .map(|r| r.task)
            .into_iter()
            .chain(self.next.take());
        scheduler::cancel_admitted(&self.rt, held);
        if self.active {
            self.rt.drivers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
