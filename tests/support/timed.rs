//! A GPU backend for tests on machines without CUDA: each fence is done a fixed time after
//! it is recorded, in order on its one queue.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parla::device::backend::{Fence, FenceStatus, GpuBackend, GpuExec, GpuInfo, GpuOptions};

/// Done a lag after it was recorded, in order on its (single) queue.
struct TimedFence(Instant, Duration);

impl Fence for TimedFence {
    fn status(&self) -> FenceStatus {
        done_or_pending(self.0.elapsed() >= self.1)
    }
    fn gpu(&self) -> usize {
        0
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn queue(&self) -> Option<u64> {
        Some(0)
    }
}

/// `Done` or `Pending`.
pub fn done_or_pending(done: bool) -> FenceStatus {
    if done {
        FenceStatus::Done
    } else {
        FenceStatus::Pending
    }
}

/// The backend: its fences finish this long after they are recorded.
struct Timed(Duration);
struct Exec(Duration);

impl GpuExec for Exec {
    fn enter(&mut self) {}
    fn exit(&mut self) {}
    fn finish(self: Box<Self>) -> Result<Arc<dyn Fence>, String> {
        Ok(Arc::new(TimedFence(Instant::now(), self.0)))
    }
}

impl GpuBackend for Timed {
    fn devices(&self) -> Vec<GpuInfo> {
        super::one_gpu("timed fences")
    }
    fn begin(
        &self,
        _: usize,
        _: &dyn std::fmt::Display,
        _: &[Arc<dyn Fence>],
        _: u8,
    ) -> Result<Box<dyn GpuExec>, String> {
        Ok(Box::new(Exec(self.0)))
    }
    fn device_error(&self, _: usize) -> Option<String> {
        None
    }
}

/// The backend factory: fences finish `US` microseconds after they are recorded (`0`: as
/// soon as they are asked about).
pub fn timed<const US: u64>(_: &GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String> {
    Ok(Some(Arc::new(Timed(Duration::from_micros(US)))))
}
