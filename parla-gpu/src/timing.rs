//! Device-side times of traced tasks: CUDA events with timing around a task's work, read
//! against a reference event whose host time is known, so a trace shows when kernels ran
//! rather than when they were enqueued.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};
use parking_lot::Mutex;

use crate::runtime::GpuDevice;

/// A reference older than this is replaced: `cuEventElapsedTime` gives milliseconds as an
/// `f32`, so offsets from an old reference lose precision (about 0.5 us at 5 s).
const REFRESH_NS: u64 = 5_000_000_000;

/// A timing event recorded on an idle stream, and the trace-clock time it ran at.
pub(crate) struct Reference {
    event: CudaEvent,
    host_ns: u64,
}

/// A device's trace clock: the current reference, the stream it is recorded on, and the
/// timing events for reuse.
#[derive(Default)]
pub(crate) struct Clock {
    current: Mutex<Option<(Arc<Reference>, Arc<CudaStream>)>>,
    events: crossbeam_queue::SegQueue<CudaEvent>,
}

impl Clock {
    /// The reference to time a task against: recorded before the task's start event, so
    /// every offset from it is positive.
    fn reference(&self, dev: &GpuDevice) -> crate::Result<Arc<Reference>> {
        let mut cur = self.current.lock();
        let now = parla_core::trace::now_ns();
        if let Some((r, _)) = cur.as_ref()
            && now.saturating_sub(r.host_ns) < REFRESH_NS
        {
            return Ok(r.clone());
        }
        let stream = match cur.take() {
            Some((_, s)) => s,
            None => dev.ctx.new_stream()?,
        };
        let event = dev.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        // The stream is idle: the event runs as soon as the device sees it, between the two
        // host readings.
        let before = parla_core::trace::now_ns();
        event.record(&stream)?;
        event.synchronize()?;
        let after = parla_core::trace::now_ns();
        let r = Arc::new(Reference {
            event,
            host_ns: before + (after - before) / 2,
        });
        *cur = Some((r.clone(), stream));
        Ok(r)
    }

    fn event(&self, dev: &GpuDevice) -> crate::Result<CudaEvent> {
        match self.events.pop() {
            Some(e) => Ok(e),
            None => Ok(dev.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?),
        }
    }
}

/// The start marker of a traced task, recorded on its stream when the task first takes
/// its stream (or cuBLAS / cuSOLVER handle) to enqueue work, so the slice starts where its
/// work can, not while the host still prepares it.
#[derive(Default)]
pub(crate) struct Marks {
    marked: AtomicBool,
    start: Mutex<Option<(Arc<Reference>, CudaEvent)>>,
}

impl Marks {
    /// Records the start marker on `stream`, once.
    #[inline]
    pub(crate) fn start(&self, dev: &GpuDevice, stream: &CudaStream) {
        if self.marked.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.start.lock();
        if s.is_none() {
            // A trace without the GPU's times is still a trace: a failure here only leaves
            // them out.
            *s = (|| {
                let reference = dev.clock.reference(dev).ok()?;
                let start = dev.clock.event(dev).ok()?;
                start.record(stream).ok()?;
                Some((reference, start))
            })();
        }
        self.marked.store(true, Ordering::Release);
    }

    /// The body returned: marks the end of its work (a task that enqueued nothing gets an
    /// empty slice there).
    pub(crate) fn finish(&self, dev: &GpuDevice, stream: &CudaStream) -> Option<Timing> {
        self.start(dev, stream);
        let (reference, start) = self.start.lock().take()?;
        let end = dev.clock.event(dev).ok()?;
        end.record(stream).ok()?;
        Some(Timing {
            reference,
            start,
            end,
        })
    }
}

/// The timing events of one traced task.
pub(crate) struct Timing {
    reference: Arc<Reference>,
    start: CudaEvent,
    end: CudaEvent,
}

impl Timing {
    /// The start and end on the trace clock; call once the end event completed.
    pub(crate) fn times(&self) -> Option<(u64, u64)> {
        let end = &self.end;
        let to_start = self.reference.event.elapsed_ms(&self.start).ok()?;
        let took = self.start.elapsed_ms(end).ok()?;
        let ns = |ms: f32| (ms.max(0.0) as f64 * 1e6) as u64;
        let start = self.reference.host_ns + ns(to_start);
        Some((start, start + ns(took)))
    }

    /// Gives the events back to the device's pool (they completed).
    pub(crate) fn recycle(self, dev: &GpuDevice) {
        dev.clock.events.push(self.start);
        dev.clock.events.push(self.end);
    }
}
