//! CUDA events as the scheduler's fences, recycled through a per-device pool.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::{CudaEvent, CudaStream};
use parla_core::device::backend::{Fence, FenceStatus};

use crate::error::{describe, is_sticky};
use crate::runtime::GpuDevice;

/// An event recorded on a stream: done when the work enqueued before it finished.
pub struct CudaFence {
    event: Option<CudaEvent>,
    device: Arc<GpuDevice>,
    /// The pooled stream it was recorded on, if any.
    stream: Option<usize>,
    /// Seen complete (so the event can go back to the pool without another query).
    done: AtomicBool,
    /// Timing events around the task's work, when it is traced.
    timing: Option<crate::timing::Timing>,
}

impl std::fmt::Debug for CudaFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaFence")
            .field("gpu", &self.device.index)
            .finish_non_exhaustive()
    }
}

impl CudaFence {
    /// Records a fence on `stream` (an event from the device's pool); `pooled` is the
    /// stream's index in the device's pool, if it is a pooled stream.
    pub(crate) fn record(
        device: &Arc<GpuDevice>,
        stream: &CudaStream,
        pooled: Option<usize>,
    ) -> crate::Result<CudaFence> {
        let event = match device.events.pop() {
            Some(e) => e,
            None => device.ctx.new_event(None)?,
        };
        if pooled.is_some() {
            // SAFETY: pooled streams are recorded on by the task's driver thread, where the
            // device's context was made current when the task was entered; the event comes
            // from the same device.
            unsafe { crate::raw::record_current(&event, stream) }?;
        } else {
            event.record(stream)?;
        }
        Ok(CudaFence {
            event: Some(event),
            device: device.clone(),
            stream: pooled,
            done: AtomicBool::new(false),
            timing: None,
        })
    }

    /// The fence of a traced task, with the timing events around its work (recorded
    /// before the fence).
    pub(crate) fn with_timing(mut self, timing: Option<crate::timing::Timing>) -> CudaFence {
        self.timing = timing;
        self
    }

    /// The device and pooled stream the fence was recorded on.
    pub(crate) fn origin(&self) -> (usize, Option<usize>) {
        (self.device.index, self.stream)
    }

    /// The CUDA event.
    pub fn event(&self) -> Option<&CudaEvent> {
        self.event.as_ref()
    }
}

impl Fence for CudaFence {
    fn status(&self) -> FenceStatus {
        let Some(ev) = &self.event else {
            return FenceStatus::Done;
        };
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

    fn gpu(&self) -> usize {
        self.device.index
    }

    fn queue(&self) -> Option<u64> {
        self.stream
            .map(|s| ((self.device.index as u64) << 32) | s as u64)
    }

    fn mark_done(&self) {
        self.done.store(true, Ordering::Relaxed);
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
        if let Some(e) = self.event.take() {
            // Re-recording a completed event is fine; an incomplete one would make later
            // waiters wait on newer work, so only events seen complete go back to the pool.
            if self.done.load(Ordering::Relaxed) && self.device.failed().is_none() {
                self.device.events.push(e);
                if let Some(t) = self.timing.take() {
                    t.recycle(&self.device);
                }
            }
        }
    }
}
