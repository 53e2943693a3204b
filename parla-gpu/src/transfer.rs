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

/// Page-locked (pinned) host memory holding `len` values of `T`: copies between it and any
/// GPU of the process are asynchronous and run at full bandwidth. Pinning is slow (about
/// 0.3-0.5 s per GiB): make these once and keep them.
pub struct PinnedVec<T> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
}

// SAFETY: `PinnedVec` owns its allocation like a `Vec` does; access goes through `&self` /
// `&mut self`.
unsafe impl<T: Send> Send for PinnedVec<T> {}
// SAFETY: as above: shared access is read-only.
unsafe impl<T: Sync> Sync for PinnedVec<T> {}

impl<T> std::fmt::Debug for PinnedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedVec").field("len", &self.len).finish()
    }
}

impl<T: DeviceRepr + Copy> PinnedVec<T> {
    /// A page-locked copy of `data`. Call it inside a GPU task (a CUDA context must be
    /// current).
    pub fn from_slice(data: &[T]) -> Result<Self> {
        // SAFETY: inside a GPU task the device's context is current (the caller's part);
        // the memory is initialised right below before anything reads it.
        let ptr = unsafe { crate::raw::alloc_host::<T>(data.len()) }?;
        // SAFETY: `ptr` holds `data.len()` values of `T` (allocated above), distinct from
        // `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), data.len()) };
        Ok(PinnedVec {
            ptr,
            len: data.len(),
        })
    }
}

impl<T> PinnedVec<T> {
    /// The number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values.
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialised values owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The values, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for PinnedVec<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by `alloc_host`, freed once; copies reading or writing it were
        // ordered before the owner let go of it (the owner's contract with the device).
        unsafe { crate::raw::free_host(self.ptr) };
    }
}

/// A GPU of the runtime, usable outside its tasks: for copies that do not belong to a task
/// (reading device data for a CPU task, writing back an evicted copy). Cheap to clone.
#[derive(Clone)]
pub struct GpuHandle(Arc<crate::runtime::GpuDevice>);

impl std::fmt::Debug for GpuHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GpuHandle").field(&self.0.device()).finish()
    }
}

impl GpuHandle {
    /// The runtime's name for the GPU.
    pub fn device(&self) -> parla_core::Device {
        self.0.device()
    }

    /// The device's copy stream, made on first use.
    fn copy_stream(&self) -> Result<&Arc<CudaStream>> {
        if let Some(s) = self.0.copy.get() {
            return Ok(s);
        }
        crate::raw::make_current(&self.0.ctx)?;
        let s = self.0.ctx.new_stream()?;
        Ok(self.0.copy.get_or_init(|| s))
    }

    /// Page-locked host memory for `len` values, uninitialised, allocated with this GPU's
    /// context (usable from any thread).
    ///
    /// # Safety
    /// The caller writes every value (a download into it, say) before reading any.
    pub unsafe fn pinned_uninit<T: DeviceRepr>(&self, len: usize) -> Result<PinnedVec<T>> {
        crate::raw::make_current(&self.0.ctx)?;
        // SAFETY: this GPU's context is current (just above); the contents are written
        // before they are read (this function's contract).
        let res = unsafe { crate::raw::alloc_host::<T>(len) };
        if let Some(gpu) = crate::current() {
            crate::raw::make_current(gpu.context())?;
        }
        Ok(PinnedVec { ptr: res?, len })
    }

    /// Enqueues a copy of `src` (on this GPU) into `dst` on the device's copy stream, after
    /// `src`'s last write, and returns a fence that fires when it finished. Does not wait.
    ///
    /// # Safety
    /// The host must not read, write or free `dst` until the fence fired (the copy writes
    /// it meanwhile). (`src` may be dropped: a `CudaSlice` is freed in stream order, after
    /// the copy.)
    pub unsafe fn download_async<T: DeviceRepr>(
        &self,
        src: &CudaSlice<T>,
        dst: &mut PinnedVec<T>,
    ) -> Result<Arc<dyn parla_core::device::backend::Fence>> {
        if src.len() < dst.len {
            return Err(crate::Error::Unavailable(format!(
                "download of {} values into {}",
                src.len(),
                dst.len
            )));
        }
        let stream = self.copy_stream()?.clone();
        crate::raw::make_current(&self.0.ctx)?;
        let res = (|| {
            let (ptr, _read) = cudarc::driver::DevicePtr::device_ptr(src, &stream);
            // SAFETY: `dst` is page-locked and, by this method's contract, untouched by the
            // host until the fence fires; `src` holds at least `dst.len` values of this
            // context and is freed, if at all, after the copy in stream order.
            unsafe { crate::raw::dtoh_async(dst.as_mut_slice(), ptr, &stream) }?;
            let fence = crate::event::CudaFence::record(&self.0, &stream)?;
            Ok(Arc::new(fence) as Arc<dyn parla_core::device::backend::Fence>)
        })();
        if let Some(gpu) = crate::current() {
            crate::raw::make_current(gpu.context())?;
        }
        res
    }
}

impl GpuContext {
    /// The task's GPU, as a handle usable outside the task.
    pub fn handle(&self) -> GpuHandle {
        GpuHandle(self.gpu_device().clone())
    }

    /// Enqueues a copy of `src` into `dst` (on this task's GPU) on the task's stream. Does
    /// not wait.
    ///
    /// # Safety
    /// The host must not write or free `src` until the task's work finished (the copy
    /// reads it meanwhile; in a task graph: no task writes it before this one completed).
    pub unsafe fn upload_pinned<T: DeviceRepr>(
        &self,
        src: &PinnedVec<T>,
        dst: &mut CudaSlice<T>,
    ) -> Result<()> {
        if dst.len() < src.len {
            return Err(crate::Error::Unavailable(format!(
                "upload of {} values into {}",
                src.len,
                dst.len()
            )));
        }
        let stream = self.stream();
        let (ptr, _written) = dst.device_ptr_mut(stream);
        // SAFETY: `src` is page-locked and left untouched until the copy ran (this method's
        // contract); `dst` holds at least `src.len` values of the task's context, which is
        // current, and is freed (if ever) in stream order after the copy.
        unsafe { crate::raw::htod_async(ptr, src.as_slice(), stream) }?;
        Ok(())
    }

    /// Enqueues a copy of `src` (on this or another GPU) into `dst` (on this task's GPU) on
    /// the task's stream, after `src`'s last write. Direct between GPUs where peer access is
    /// on. Does not wait.
    pub fn copy_into<T: DeviceRepr>(
        &self,
        src: &CudaSlice<T>,
        dst: &mut CudaSlice<T>,
    ) -> Result<()> {
        let res = self.stream().memcpy_dtod(src, dst);
        if !same_context(src.context(), self.context()) {
            crate::raw::make_current(self.context())?;
        }
        Ok(res?)
    }

    /// Makes the task's stream wait (on the GPU, not the host) for `fence`, a fence of this
    /// backend on any of its GPUs.
    pub fn wait_on(&self, fence: &dyn parla_core::device::backend::Fence) -> Result<()> {
        if let Some(f) = fence.as_any().downcast_ref::<crate::event::CudaFence>() {
            let e = f
                .covering()
                .map_err(|m| crate::Error::Device(m.to_string()))?;
            self.stream().wait(e)?;
        }
        Ok(())
    }

    /// A new buffer of `len` values on the task's device, allocated in the task's stream
    /// order, its contents unspecified (for a buffer about to be written in full).
    ///
    /// # Safety
    /// Nothing reads the buffer before it was written: device memory that was never
    /// written holds whatever was there before (of this process).
    pub unsafe fn alloc_uninit<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the caller's contract: the contents are written before they are read.
        Ok(unsafe { self.stream().alloc(len) }?)
    }

    /// A new buffer of `len` values on the task's device, allocated in the task's stream
    /// order, every byte zero.
    pub fn alloc_zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        Ok(self.stream().alloc_zeros(len)?)
    }
}
