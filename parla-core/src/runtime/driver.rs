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
use super::bridge::{Bridge, Watch};
use crate::context;
use crate::device::backend::GpuExec;
use crate::device::{Demand, Device};
use crate::error::TaskError;
use crate::scheduler::{self, Delta, Launch};
use crate::task::header::{Header, Kind, Name, Outcome};
use crate::task::{Resume, Task};
use crate::trace::profile::Phase;
use std::time::Instant;

/// Tasks a driver completes in one poll before it yields to Tokio.
const BUDGET: u32 = 128;

struct Running {
    task: Arc<dyn Task>,
    device: Device,
    /// VCUs lent to the device while the task waits on other tasks (0: none).
    lent: u32,
    /// The pending request to take the lent VCUs back.
    resume: Option<Arc<Resume>>,
    /// GPU tasks: the backend's execution state (stream, context).
    exec: Option<Box<dyn GpuExec>>,
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
    /// Counter changes not applied yet: completions whose effects stayed on this driver
    /// (see `dispatch`); applied before this poll ends.
    deferred: Delta,
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
            deferred: Delta::default(),
        }
    }

    /// Sets a task up to run: on a GPU, the backend gives it a stream that waits on its GPU
    /// dependencies. Fails the task if the backend cannot.
    fn start(&self, task: Arc<dyn Task>) -> Result<Running, (Arc<dyn Task>, Device, TaskError)> {
        let h = task.header();
        let device = h.device().unwrap_or(Device::CPU);
        self.rt.stamp(h, 2);
        let exec = match &self.rt.devices[device.slot()].gpu {
            None => None,
            Some((backend, index)) => {
                let waits = h.take_waits();
                match backend.begin(*index, &h.name.to_string(), &waits) {
                    Ok(e) => Some(e),
                    Err(message) => {
                        let err = TaskError::Device {
                            task: h.name.to_string(),
                            device: device.to_string(),
                            message,
                        };
                        return Err((task, device, err));
                    }
                }
            }
        };
        #[cfg(feature = "tracing")]
        let span = tracing::trace_span!(
            target: "parla::task",
            "task",
            task.id = %h.name,
            device = %device,
            vcu = crate::device::vcu_float(h.demand().vcu),
            mem.bytes = h.mem,
        );
        Ok(Running {
            task,
            device,
            lent: 0,
            resume: None,
            exec,
            #[cfg(feature = "tracing")]
            span,
        })
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

    /// Hands what a completion admitted on: the first task runs here next, unless others
    /// queued earlier (first come, first served).
    /// Applies the deferred counter changes.
    fn flush(&mut self) {
        let d = std::mem::take(&mut self.deferred);
        self.rt.counters.add(d.live, d.busy);
    }

    fn dispatch(&mut self, delta: Delta, mut launch: Launch) {
        let rt = &self.rt;
        if delta.busy <= 0
            && delta.live <= 0
            && launch.len() <= 1
            && launch.first().is_none_or(|t| t.as_resume().is_none())
            && rt.injector.is_empty()
        {
            // Nothing becomes visible to another thread, and the change only lowers the
            // counts: it can wait for the end of this poll (the counts are then overstated,
            // never understated, so no quiescence is seen early). A GPU task whose body
            // returned keeps its token while its dependent takes one: that rise is applied
            // at once.
            self.deferred.live += delta.live;
            self.deferred.busy += delta.busy;
            self.next = launch.pop();
            return;
        }
        self.flush();
        let rt = &self.rt;
        rt.counters.add(delta.live, delta.busy);
        if rt.injector.is_empty() {
            let mut it = launch.into_iter().filter_map(|t| rt.route(t));
            self.next = it.next();
            rt.push_all(it);
        } else {
            rt.push_all(launch.into_iter());
        }
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let r = this.poll_tasks(cx);
        this.flush();
        r
    }
}

impl Driver {
    fn poll_tasks(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let this = self;
        this.activity.waker.register(cx.waker());
        this.activity.begin_poll();
        let rt = this.rt.clone();
        let _rt = context::enter_rt(&rt);
        let mut budget = BUDGET;
        loop {
            if this.current.is_none() {
                let Some(t) = this.next_task() else {
                    return Poll::Ready(());
                };
                let t0 = rt.profile.as_ref().map(|_| Instant::now());
                let started = this.start(t);
                if let (Some(p), Some(t0)) = (&rt.profile, t0) {
                    p.add(Phase::Start, t0, Instant::now());
                }
                match started {
                    Ok(r) => this.current = Some(r),
                    Err((task, device, err)) => {
                        let mut launch = Launch::new();
                        let delta = scheduler::complete(
                            &rt,
                            &task,
                            device,
                            Err(Arc::new(err)),
                            &mut launch,
                        );
                        scheduler::check_device(&rt, device);
                        this.dispatch(delta, launch);
                        continue;
                    }
                }
            }
            let Some(r) = this.current.as_mut() else {
                continue;
            };
            if r.lent > 0 {
                match reacquire(&rt, r, &this.waker) {
                    Reacquired::Yes => {}
                    Reacquired::Waiting => {
                        // Wait for admission (parked: admission wakes this driver).
                        this.activity.end_poll(true);
                        if this.active {
                            this.active = false;
                            rt.deactivate();
                        }
                        return Poll::Pending;
                    }
                    Reacquired::Never => {
                        let Some(r) = this.current.take() else {
                            continue;
                        };
                        // SAFETY: this driver holds the run token of its current task.
                        unsafe { r.task.drop_body() };
                        let err = TaskError::Deadlock {
                            task: r.task.header().name.to_string(),
                            device: r.device.to_string(),
                            reason: format!(
                                "it waited to take back {} VCUs after awaiting other tasks, and nothing left could free them",
                                crate::device::vcu_float(r.lent)
                            ),
                        };
                        let mut launch = Launch::new();
                        let delta = finish_running(&rt, r, Err(Arc::new(err)), &mut launch);
                        this.dispatch(delta, launch);
                        continue;
                    }
                }
            }
            context::take_blocked();
            let t0 = rt.profile.as_ref().map(|_| Instant::now());
            let poll = {
                let _task = context::enter_task(&r.task, r.device);
                #[cfg(feature = "tracing")]
                let _span = r.span.enter();
                if let Some(e) = r.exec.as_mut() {
                    e.enter();
                }
                // SAFETY: this driver holds the task's run token (it came from admission
                // through `next`/the injector, exactly once), and the task is not finished.
                let p = unsafe { r.task.poll_body(&mut Context::from_waker(&this.waker)) };
                if let Some(e) = r.exec.as_mut() {
                    e.exit();
                }
                p
            };
            let t1 = rt.profile.as_ref().map(|_| Instant::now());
            if let (Some(p), Some(t0), Some(t1)) = (&rt.profile, t0, t1) {
                p.poll(r.device.slot(), t0, t1);
            }
            match poll {
                Poll::Pending => {
                    let blocked = context::take_blocked();
                    if blocked {
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
                    let slot = r.device.slot();
                    let delta = finish_running(&rt, r, outcome, &mut launch);
                    let t2 = rt.profile.as_ref().map(|_| Instant::now());
                    this.dispatch(delta, launch);
                    if let (Some(p), Some(t1), Some(t2)) = (&rt.profile, t1, t2) {
                        p.add(Phase::Finish, t1, t2);
                        p.add(Phase::Dispatch, t2, Instant::now());
                        p.task_done(slot);
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

/// The body of `r` returned `outcome`. A CPU (or virtual GPU) task completes now. A GPU
/// task's backend records a fence after the work the body enqueued: its GPU-only dependents
/// may start behind the fence (runahead), and the task completes when the fence is seen
/// done.
fn finish_running(rt: &Arc<RtInner>, r: Running, outcome: Outcome, launch: &mut Launch) -> Delta {
    let Running {
        task, device, exec, ..
    } = r;
    let Some(exec) = exec else {
        let d = scheduler::complete(rt, &task, device, outcome, launch);
        rt.stamp_end(&task, device);
        return d;
    };
    let t0 = rt.profile.as_ref().map(|_| Instant::now());
    let fenced = exec.finish();
    let t1 = rt.profile.as_ref().map(|_| Instant::now());
    let outcome = match (outcome, fenced) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(message)) => Err(Arc::new(TaskError::Device {
            task: task.header().name.to_string(),
            device: device.to_string(),
            message,
        })),
        (Ok(()), Ok(f)) => {
            // No query here: querying a fence just recorded makes the driver submit the
            // work queued so far at once (microseconds, on every task). The pollers query it
            // later, or an awaiter spins on it.
            // Once the fence is published, an awaiter or the poller may complete the task
            // (dropping its token) before this driver counted the dependents it releases:
            // hold a token meanwhile, so the busy count cannot read zero in between.
            rt.counters.add(0, 1);
            let (mut d, urgent) = scheduler::body_done(rt, &task, f.clone(), launch);
            d.busy -= 1;
            let t2 = rt.profile.as_ref().map(|_| Instant::now());
            Bridge::watch(rt, Watch::Task(task, f, urgent));
            if let (Some(p), Some(t0), Some(t1), Some(t2)) = (&rt.profile, t0, t1, t2) {
                p.add(Phase::Fence, t0, t1);
                p.add(Phase::Runahead, t1, t2);
                p.add(Phase::Watch, t2, Instant::now());
            }
            return d;
        }
    };
    let failed = outcome.is_err();
    let d = scheduler::complete(rt, &task, device, outcome, launch);
    rt.stamp_end(&task, device);
    if failed {
        scheduler::check_device(rt, device);
    }
    d
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

/// Whether a task got its lent VCUs back.
enum Reacquired {
    Yes,
    /// A resume request waits in the device's admission queue and will wake the driver.
    Waiting,
    /// The request was denied: the runtime stalled with nothing to free the VCUs.
    Never,
}

/// Takes lent VCUs back.
fn reacquire(rt: &Arc<RtInner>, r: &mut Running, waker: &Waker) -> Reacquired {
    if r.resume.as_ref().is_some_and(|q| q.is_denied()) {
        return Reacquired::Never;
    }
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
        Reacquired::Yes
    } else {
        Reacquired::Waiting
    }
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
