//! Copies for tasks: host to device (staged through page-locked memory, so the copy is
//! asynchronous on the task's stream), device to device (same GPU, or another one), and
//! device to host.
//!
//! Ordering between streams is cudarc's: a `CudaSlice` remembers its last write and read
//! (events), and a copy on another stream waits for them on the GPU.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut, DeviceRepr};
use parking_lot::Mutex;

use crate::context::GpuContext;
use crate::error::Result;
use crate::raw::Pinned;

/// Staging buffers kept per device for reuse.
const KEEP: usize = 8;
/// Bytes of staging kept per device for reuse (buffers beyond it are freed when idle).
const KEEP_BYTES: usize = 1 << 30;
/// Staging sizes are multiples of this.
const GRAIN: usize = 64 << 10;

/// A device's page-locked staging buffers. A buffer is handed out only when the copies out
/// of it finished; a new one is allocated when none fits (page-locking is slow, so buffers
/// are kept: at most [`KEEP`] and [`KEEP_BYTES`], besides those still being copied from).
#[derive(Default)]
pub(crate) struct Staging {
    bufs: Mutex<Vec<Pinned>>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("buffers", &self.bufs.lock().len())
            .finish()
    }
}

impl Staging {
    /// An idle buffer of at least `bytes` (the smallest that fits), or a new one.
    fn take(&self, ctx: &Arc<cudarc::driver::CudaContext>, bytes: usize) -> Result<Pinned> {
        {
            let mut bufs = self.bufs.lock();
            let best = bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= bytes && b.idle())
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Ok(bufs.swap_remove(i));
            }
        }
        Ok(Pinned::new(ctx, bytes.max(GRAIN).next_multiple_of(GRAIN))?)
    }

    /// Returns a buffer (its copy may still be running); frees idle ones beyond the limits.
    fn give(&self, buf: Pinned) {
        let mut freed = Vec::new();
        {
            let mut bufs = self.bufs.lock();
            bufs.push(buf);
            loop {
                let total: usize = bufs.iter().map(Pinned::capacity).sum();
                if bufs.len() <= KEEP && total <= KEEP_BYTES {
                    break;
                }
                // The largest idle buffer goes (freeing a busy one would wait for its copy).
                let Some(i) = bufs
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.idle())
                    .max_by_key(|(_, b)| b.capacity())
                    .map(|(i, _)| i)
                else {
                    break;
                };
                freed.push(bufs.swap_remove(i));
            }
        }
        // Freed outside the lock: `cuMemFreeHost` may wait for the device.
        drop(freed);
    }
}

/// Whether two buffers' contexts are the same.
fn same_context(a: &cudarc::driver::CudaContext, b: &cudarc::driver::CudaContext) -> bool {
    a.cu_ctx() == b.cu_ctx()
}

impl GpuContext {
    /// A copy of host data in a new buffer on the task's device, enqueued on the task's
    /// stream. The host data is copied into page-locked staging memory before this returns
    /// (so `src` may change right after), and from there to the device asynchronously: the
    /// call does not wait for the device, and kernels enqueued after it on the task's stream
    /// see the data.
    ///
    /// ```no_run
    /// # fn f() -> parla_gpu::Result<()> {
    /// let gpu = parla_gpu::current().expect("inside a GPU task");
    /// let x = gpu.upload(&[1.0f64, 2.0, 3.0])?;
    /// # drop(x); Ok(()) }
    /// ```
    pub fn upload<T: DeviceRepr>(&self, src: &[T]) -> Result<CudaSlice<T>> {
        let stream = self.stream();
        // SAFETY: uninitialised device memory, written in full by the copy enqueued below
        // on the same stream before anything else on it can read it.
        let mut dst = unsafe { stream.alloc::<T>(src.len()) }?;
        if src.is_empty() {
            return Ok(dst);
        }
        let dev = self.gpu_device();
        let mut stage = dev.staging.take(&dev.ctx, std::mem::size_of_val(src))?;
        let res = {
            let (ptr, _written) = dst.device_ptr_mut(stream);
            // SAFETY: `dst` holds `src.len()` `T`s of the stream's context, which is current
            // (cudarc's `alloc` bound it), and is freed, if ever, in that stream's order.
            unsafe { stage.upload(src, ptr, stream) }
        };
        dev.staging.give(stage);
        res?;
        Ok(dst)
    }

    /// A copy of a device buffer on the task's device, enqueued on the task's stream after
    /// the buffer's last write: a device-to-device copy on the same GPU, a peer copy from
    /// another GPU. Does not wait for the device.
    pub fn copy_from<T: DeviceRepr>(&self, src: &CudaSlice<T>) -> Result<CudaSlice<T>> {
        let copy = self.stream().clone_dtod(src);
        if !same_context(src.context(), self.context()) {
            // The peer copy bound the source's context to this thread on the way.
            crate::raw::make_current(self.context())?;
        }
        Ok(copy?)
    }

    /// A device buffer's contents on the host, copied on the task's stream; waits for the
    /// copy (and so for the work enqueued before it on that stream).
    pub fn download<T: DeviceRepr>(&self, src: &CudaSlice<T>) -> Result<Vec<T>> {
        let host = self.stream().clone_dtoh(src);
        if !same_context(src.context(), self.context()) {
            crate::raw::make_current(self.context())?;
        }
        Ok(host?)
    }
}

/// Copy streams for device-to-host copies outside GPU tasks, one per CUDA context.
static COPY_STREAMS: Mutex<Vec<Arc<CudaStream>>> = Mutex::new(Vec::new());

/// A device buffer's contents on the host, from anywhere: inside a GPU task on the buffer's
/// device, on the task's stream ([`GpuContext::download`]); elsewhere (CPU tasks, outside
/// tasks) on a copy stream of the buffer's device, after the buffer's last write. Waits for
/// the copy: the data is on the host when this returns.
pub fn to_host<T: DeviceRepr>(src: &CudaSlice<T>) -> Result<Vec<T>> {
    if let Some(gpu) = crate::current()
        && same_context(gpu.context(), src.context())
    {
        return gpu.download(src);
    }
    let stream = {
        let mut streams = COPY_STREAMS.lock();
        match streams
            .iter()
            .find(|s| same_context(s.context(), src.context()))
        {
            Some(s) => s.clone(),
            None => {
                let s = src.context().new_stream()?;
                streams.push(s.clone());
                s
            }
        }
    };
    let host = stream.clone_dtoh(src);
    if let Some(gpu) = crate::current() {
        crate::raw::make_current(gpu.context())?;
    }
    Ok(host?)
}
