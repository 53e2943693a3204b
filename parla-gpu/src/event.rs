//! CUDA events as the scheduler's fences, recycled through a per-device pool.
//!
//! A fence on one of the device's pooled streams takes a *ticket* there (the stream's count
//! of fences so far), after the work it stands for was enqueued. Its event may be recorded
//! later: any event recorded on the stream after the ticket was taken comes after that work,
//! so one event serves every fence whose ticket it covers. A GPU task's fence is deferred
//! that way (its event is chosen at the first question about it): a chain of tasks on one stream records an event only
//! when something asks about one of their fences (the poller, an awaiter, a dependent on
//! another stream), not once per task.
//!
//! # Invariants
//! - A stream's `covered` slot holds the latest event recorded for fences there and the
//!   last ticket it covers. It is only replaced under its lock, by an event recorded after
//!   the ticket count it covers was read, so it covers at least that many tickets.
//! - A fence's event, once chosen, covers its ticket, and never changes.
//! - An event goes back to the pool only once it is known complete (and its device has not
//!   failed): re-recording a pending event would make its waiters wait on newer work. It is
//!   known complete when a query saw it so, or when an event of its stream covering at
//!   least as many tickets was (`PooledStream::done_through`): the events recorded for a
//!   stream's fences cover strictly more tickets in the order they are recorded (each is
//!   recorded under the `covered` lock, for a ticket the one before does not cover), and a
//!   stream's events complete in the order they were recorded.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaEvent, CudaStream};
use parla_core::device::backend::{Fence, FenceStatus};

use crate::error::{describe, is_sticky};
use crate::runtime::GpuDevice;
use crate::stream::PooledStream;

/// Events made because the device's pool had none left, in this process (for tests: a
/// pool that events do not come back to shows as a count that grows with the tasks).
static EVENTS_MADE: AtomicU64 = AtomicU64::new(0);

/// How many events the runtime made because a device's pool of events was empty, in this
/// process so far. (A diagnostic, for tests.)
#[doc(hidden)]
pub fn events_made() -> u64 {
    EVENTS_MADE.load(Ordering::Relaxed)
}

/// An event recorded on a stream, shared by the fences it covers.
pub(crate) struct Recorded {
    event: Option<CudaEvent>,
    device: Arc<GpuDevice>,
    /// Seen complete by a query (so it can go back to the pool).
    done: AtomicBool,
    /// On a pooled stream, for fences: the stream's count of tickets known done, and how
    /// many tickets this event covers (see the module invariants).
    through: Option<(Arc<AtomicU64>, u64)>,
}

impl Recorded {
    /// Records an event from the device's pool on `stream`. `current`: the device's context
    /// is current on this thread (a task's driver thread), which saves binding it.
    fn record(
        device: &Arc<GpuDevice>,
        stream: &CudaStream,
        current: bool,
    ) -> crate::Result<Recorded> {
        let event = match device.events.pop() {
            Some(e) => e,
            None => {
                EVENTS_MADE.fetch_add(1, Ordering::Relaxed);
                device.ctx.new_event(None)?
            }
        };
        if current {
            // SAFETY: the caller made the device's context current on this thread (it
            // entered the task whose stream this is); the event comes from the same device.
            unsafe { crate::raw::record_current(&event, stream) }?;
        } else {
            crate::raw::record_anywhere(&device.ctx, &event, stream)?;
        }
        Ok(Recorded {
            event: Some(event),
            device: device.clone(),
            done: AtomicBool::new(false),
            through: None,
        })
    }

    /// Whether the event is known complete (see the module invariants). A run of fences
    /// that the poller found done by bisection was queried at its ends only: the events of
    /// the others are known complete this way, and go back to the pool, where they used to
    /// be destroyed (and new ones made for the next records, on the recording thread).
    fn known_done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
            || self
                .through
                .as_ref()
                .is_some_and(|(done, covers)| *covers <= done.load(Ordering::Acquire))
    }

    /// Queries the event without blocking.
    fn status(&self) -> FenceStatus {
        let Some(ev) = &self.event else {
            return FenceStatus::Done;
        };
        if self.done.load(Ordering::Relaxed) {
            return FenceStatus::Done;
        }
        let mut r = ev.try_is_complete();
        if matches!(&r, Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_INVALID_CONTEXT)
        {
            // A query needs no current context on the drivers seen so far; if one does,
            // make the event's context current and ask again.
            if let Err(e) = crate::raw::make_current(&self.device.ctx) {
                return FenceStatus::Failed(describe(&e));
            }
            r = ev.try_is_complete();
        }
        match r {
            Ok(true) => {
                self.done.store(true, Ordering::Relaxed);
                if let Some((done, covers)) = &self.through {
                    done.fetch_max(*covers, Ordering::AcqRel);
                }
                FenceStatus::Done
            }
            Ok(false) => FenceStatus::Pending,
            Err(e) => {
                if is_sticky(&e) {
                    self.device.fail(describe(&e));
                }
                FenceStatus::Failed(describe(&e))
            }
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(e) = self.event.take()
            && self.known_done()
            && self.device.failed().is_none()
        {
            self.device.events.push(e);
        }
    }
}

/// Where a fence's event comes from.
enum Source {
    /// Recorded when the fence was made, on a stream outside the pool.
    Unpooled,
    /// Ticket `ticket` on a pooled stream: the event is the first one recorded there for
    /// fences once somebody asks.
    Pooled {
        stream: Arc<PooledStream>,
        ticket: u64,
    },
}

/// A point in a stream's work: done when the work enqueued on the stream before it
/// finished.
pub struct CudaFence {
    device: Arc<GpuDevice>,
    source: Source,
    /// The event covering the fence, once chosen (or why none could be recorded).
    event: OnceLock<Result<Arc<Recorded>, String>>,
    /// Known done: seen so, or a later fence of its stream was (`mark_done`).
    done: AtomicBool,
    /// Timing events around the task's work, when it is traced.
    timing: Option<crate::timing::Timing>,
}

impl std::fmt::Debug for CudaFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaFence")
            .field("gpu", &self.device.index)
            .field("stream", &self.origin().1)
            .finish_non_exhaustive()
    }
}

impl CudaFence {
    /// A fence after the work enqueued so far on `stream`, a stream outside the device's
    /// pool: its event is recorded now.
    pub(crate) fn record(device: &Arc<GpuDevice>, stream: &CudaStream) -> crate::Result<CudaFence> {
        let ev = Recorded::record(device, stream, false)?;
        Ok(CudaFence {
            device: device.clone(),
            source: Source::Unpooled,
            event: OnceLock::from(Ok(Arc::new(ev))),
            done: AtomicBool::new(false),
            timing: None,
        })
    }

    /// A fence after the work enqueued so far on the pooled `stream`, whose event is
    /// recorded when somebody first asks about the fence (or about a later one of the
    /// stream), possibly shared with other fences of the stream.
    pub(crate) fn deferred(device: &Arc<GpuDevice>, stream: &Arc<PooledStream>) -> CudaFence {
        CudaFence::after(device.clone(), stream.clone(), CudaFence::ticket(stream))
    }

    /// Takes the next ticket on the pooled `stream`, after the work it stands for was
    /// enqueued (by this thread).
    pub(crate) fn ticket(stream: &PooledStream) -> u64 {
        stream.issued.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The deferred fence of `ticket` on the pooled `stream` ([`deferred`](Self::deferred)
    /// with the ticket taken already), keeping the references it is given: a task's
    /// fence takes over those of the task's context rather than counting new ones.
    pub(crate) fn after(
        device: Arc<GpuDevice>,
        stream: Arc<PooledStream>,
        ticket: u64,
    ) -> CudaFence {
        CudaFence {
            device,
            source: Source::Pooled { stream, ticket },
            event: OnceLock::new(),
            done: AtomicBool::new(false),
            timing: None,
        }
    }

    /// A fence on the pooled `stream` whose event is recorded now (on the thread that runs
    /// the stream's task, its device's context current). It covers the stream's deferred
    /// fences so far too.
    pub(crate) fn recorded(
        device: &Arc<GpuDevice>,
        stream: &Arc<PooledStream>,
    ) -> crate::Result<CudaFence> {
        let f = CudaFence::deferred(device, stream);
        if let Err(m) = f.chosen(true) {
            return Err(crate::Error::Device(m.to_string()));
        }
        Ok(f)
    }

    /// The fence of a traced task, with the timing events around its work (recorded
    /// before the fence).
    pub(crate) fn with_timing(mut self, timing: Option<crate::timing::Timing>) -> CudaFence {
        self.timing = timing;
        self
    }

    /// The device and pooled stream the fence is on.
    pub(crate) fn origin(&self) -> (usize, Option<usize>) {
        match &self.source {
            Source::Unpooled => (self.device.index, None),
            Source::Pooled { stream, .. } => (self.device.index, Some(stream.index)),
        }
    }

    /// The CUDA event the fence is done with (recorded now if the fence's recording was
    /// deferred and no later event of its stream covers it yet); `None` if it could not be
    /// recorded.
    pub fn event(&self) -> Option<&CudaEvent> {
        self.covering().ok()
    }

    /// The event covering the fence: recorded now if there is none yet (from any thread:
    /// the context is bound for the call), or why it could not be.
    pub(crate) fn covering(&self) -> Result<&CudaEvent, &str> {
        self.chosen(false)?
            .event
            .as_ref()
            .ok_or("the fence's event is gone")
    }

    /// The recorded event that covers the fence, chosen by whoever asks first (recorded
    /// then if need be; `current`: the device's context is current on this thread, which
    /// saves binding it).
    fn chosen(&self, current: bool) -> Result<&Recorded, &str> {
        let chosen = match self.event.get() {
            Some(c) => c,
            None => {
                let found = self.find_event(current);
                // Another thread may have chosen meanwhile: its event covers the fence too.
                let _ = self.event.set(found);
                self.event.get().expect("set above")
            }
        };
        chosen.as_deref().map_err(String::as_str)
    }

    /// The latest event recorded for fences on the fence's stream if it covers the fence's
    /// ticket, else a new one.
    fn find_event(&self, current: bool) -> Result<Arc<Recorded>, String> {
        let Source::Pooled { stream, ticket } = &self.source else {
            return Err("the fence has no event".into());
        };
        let mut covered = stream.covered.lock();
        if let Some((last, ev)) = &*covered
            && *last >= *ticket
        {
            return Ok(ev.clone());
        }
        // Every ticket counted here was taken after its work was enqueued, so the event
        // recorded next comes after all of it.
        let last = stream.issued.load(Ordering::Acquire);
        let mut ev = Recorded::record(&self.device, stream.stream(), current).map_err(|e| {
            if let crate::Error::Driver(d) = &e
                && is_sticky(d)
            {
                self.device.fail(describe(d));
            }
            e.to_string()
        })?;
        ev.through = Some((stream.done_through.clone(), last));
        let ev = Arc::new(ev);
        *covered = Some((last, ev.clone()));
        Ok(ev)
    }
}

impl Fence for CudaFence {
    fn status(&self) -> FenceStatus {
        if self.done.load(Ordering::Relaxed) {
            return FenceStatus::Done;
        }
        let s = match self.chosen(false) {
            Ok(ev) => ev.status(),
            Err(m) => return FenceStatus::Failed(m.to_string()),
        };
        if s == FenceStatus::Done {
            self.done.store(true, Ordering::Relaxed);
        }
        s
    }

    fn gpu(&self) -> usize {
        self.device.index
    }

    fn queue(&self) -> Option<u64> {
        self.origin()
            .1
            .map(|s| ((self.device.index as u64) << 32) | s as u64)
    }

    fn place(&self) -> Option<u64> {
        match &self.source {
            Source::Pooled { ticket, .. } => Some(*ticket),
            Source::Unpooled => None,
        }
    }

    fn mark_done(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    fn flush(&self) {
        // (On the task's driver thread, its device's context current. A failure shows in
        // the next query.)
        let _ = self.chosen(true);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn times(&self) -> Option<(u64, u64)> {
        if !self.done.load(Ordering::Relaxed) {
            return None;
        }
        self.timing.as_ref()?.times()
    }
}

impl Drop for CudaFence {
    fn drop(&mut self) {
        if let Some(t) = self.timing.take()
            && self.done.load(Ordering::Relaxed)
            && self.device.failed().is_none()
        {
            t.recycle(&self.device);
        }
    }
}
