//! The only module that reaches below cudarc's safe API. Every function here is a thin
//! wrapper with its preconditions stated; the rest of the crate calls these.

use cudarc::driver::result;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError};

/// Whether libcuda can be loaded. Must be checked before any driver call: with dynamic
/// loading, cudarc panics on the first call if the library is missing.
pub(crate) fn driver_present() -> bool {
    // SAFETY: `is_culib_present` dlopens libcuda (running its initialisers, which is what
    // any use of CUDA does) and closes it again; it has no other precondition.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded.
pub(crate) fn nvrtc_present() -> bool {
    // SAFETY: as for `driver_present`: a dlopen of the library and nothing else.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether cuBLAS can be loaded.
pub(crate) fn cublas_present() -> bool {
    // SAFETY: as for `driver_present`.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// Whether cuSOLVER (and the libraries it links) can be loaded.
pub(crate) fn cusolver_present() -> bool {
    // SAFETY: as for `driver_present`.
    unsafe { cudarc::cusolver::sys::is_culib_present() }
}

/// Makes `ctx` current on this thread. Unlike `CudaContext::bind_to_thread` this does not
/// consume the context's recorded error (which belongs to whoever checks it next).
pub(crate) fn make_current(ctx: &CudaContext) -> Result<(), DriverError> {
    let cu = ctx.cu_ctx();
    if result::ctx::get_current()? != Some(cu) {
        // SAFETY: `cu` is the live context owned by `ctx`, which the caller borrows for the
        // duration of the call; setting a valid context current has no other precondition.
        unsafe { result::ctx::set_current(cu) }?;
    }
    Ok(())
}

/// Records `event` on `stream` without re-binding the context (cudarc's `CudaEvent::record`
/// binds first: one more driver call, on the path of every GPU task).
///
/// # Safety
/// The event's context must be current on this thread (the caller made it current for the
/// task it runs), and `event` and `stream` must belong to that context.
pub(crate) unsafe fn record_current(
    event: &CudaEvent,
    stream: &CudaStream,
) -> Result<(), DriverError> {
    // SAFETY: both handles are live (borrowed), of the same context, which is current
    // (this function's contract).
    unsafe { result::event::record(event.cu_event(), stream.cu_stream()) }
}

/// Page-locked, write-combined host memory that stages uploads: a copy from it to the device
/// is asynchronous (from pageable memory the driver would copy through its own staging
/// first, holding the host). `done` fires when the last copy out of it finished; until then
/// the buffer is not written.
pub(crate) struct Pinned {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
    done: CudaEvent,
}

// SAFETY: `Pinned` owns its allocation (no other pointer to it escapes); the host writes it
// only through `&mut self`, after `done` fired, so moving it between threads is sound.
unsafe impl Send for Pinned {}

impl Pinned {
    /// `cap` bytes of page-locked memory in `ctx`.
    pub(crate) fn new(ctx: &Arc<CudaContext>, cap: usize) -> Result<Pinned, DriverError> {
        let done = ctx.new_event(Some(
            cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING,
        ))?;
        // SAFETY: a plain allocation of `cap.max(1)` bytes; the context was made current by
        // `new_event` above. The memory is uninitialised; it is only written (by `upload`)
        // and copied from for as many bytes as were written.
        let ptr = unsafe {
            result::malloc_host(
                cap.max(1),
                cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED,
            )
        }?;
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or(DriverError(
            cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        ))?;
        Ok(Pinned { ptr, cap, done })
    }

    /// The size in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// Whether the last copy out of the buffer finished (a query; does not wait).
    pub(crate) fn idle(&self) -> bool {
        self.done.is_complete()
    }

    /// Copies `src` into the buffer, enqueues its copy to `dst` on `stream`, and marks the
    /// buffer busy until that copy ran.
    ///
    /// # Safety
    /// `dst` is device memory of `stream`'s context, at least `size_of_val(src)` bytes, that
    /// stays allocated until the copy ran in stream order (a `CudaSlice` freed later on the
    /// same stream, or not freed before it). The stream's context is current.
    pub(crate) unsafe fn upload<T: cudarc::driver::DeviceRepr>(
        &mut self,
        src: &[T],
        dst: cudarc::driver::sys::CUdeviceptr,
        stream: &CudaStream,
    ) -> Result<(), DriverError> {
        let bytes = std::mem::size_of_val(src);
        assert!(bytes <= self.cap, "staging buffer too small");
        // A no-op when idle (the pool hands out idle buffers only); otherwise the host must
        // not overwrite what the device is still reading.
        self.done.synchronize()?;
        // SAFETY: `ptr` holds `cap >= bytes` bytes owned by `self`, which no copy is reading
        // any more (`done` fired); `src` is a distinct host slice of `bytes` bytes. Copied
        // as raw bytes (padding included), never read as `u8`s on the host.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr().cast::<u8>(), self.ptr.as_ptr(), bytes)
        };
        // SAFETY: the source is `bytes` page-locked bytes that stay untouched until `done`
        // fires (recorded right after on the same stream); `dst` is valid for as many bytes
        // (this function's contract).
        unsafe {
            cudarc::driver::sys::cuMemcpyHtoDAsync_v2(
                dst,
                self.ptr.as_ptr().cast(),
                bytes,
                stream.cu_stream(),
            )
            .result()?;
            result::event::record(self.done.cu_event(), stream.cu_stream())
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // The device may still be copying out of the buffer: wait for that before freeing.
        let _ = self.done.synchronize();
        // SAFETY: `ptr` came from `cuMemHostAlloc` and is freed once, here, after the last
        // copy reading it finished.
        let _ = unsafe { result::free_host(self.ptr.as_ptr().cast()) };
    }
}

/// `cusolverDnDsyevd` (eigenvalues and eigenvectors of a symmetric matrix): the workspace
/// size, then the solve, enqueued on the handle's stream. `a` is overwritten by the
/// eigenvectors (column-major), `w` receives the eigenvalues, `info` cuSOLVER's status.
///
/// # Safety
/// `a` holds `n * n` `f64`s (leading dimension `n`), `w` `n` `f64`s and `info` one `i32`,
/// all device memory of the handle's stream's context, allocated until the solve ran in
/// that stream's order; that context is current.
pub(crate) unsafe fn dsyevd(
    handle: &cudarc::cusolver::DnHandle,
    lower: bool,
    n: i32,
    a: cudarc::driver::sys::CUdeviceptr,
    w: cudarc::driver::sys::CUdeviceptr,
    info: cudarc::driver::sys::CUdeviceptr,
) -> Result<(), crate::Error> {
    use cudarc::cusolver::sys;
    let jobz = sys::cusolverEigMode_t::CUSOLVER_EIG_MODE_VECTOR;
    let uplo = if lower {
        sys::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER
    } else {
        sys::cublasFillMode_t::CUBLAS_FILL_MODE_UPPER
    };
    let mut lwork: i32 = 0;
    // SAFETY: a size query; `a` and `w` are valid as stated (not accessed), `lwork` is a
    // live out-parameter.
    unsafe {
        sys::cusolverDnDsyevd_bufferSize(
            handle.cu(),
            jobz,
            uplo,
            n,
            a as *const f64,
            n,
            w as *const f64,
            &mut lwork,
        )
    }
    .result()?;
    let stream = handle.stream();
    // SAFETY: uninitialised scratch that only cuSOLVER writes; freed (stream-ordered, on the
    // same stream) when it drops after the solve was enqueued.
    let mut work = unsafe { stream.alloc::<f64>(lwork.max(1) as usize) }?;
    let (work_ptr, _record) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut work, stream);
    // SAFETY: every pointer is valid for the sizes cuSOLVER reads and writes (this
    // function's contract; `work` holds `lwork` elements); the solve is ordered on the
    // handle's stream.
    unsafe {
        sys::cusolverDnDsyevd(
            handle.cu(),
            jobz,
            uplo,
            n,
            a as *mut f64,
            n,
            w as *mut f64,
            work_ptr as *mut f64,
            lwork,
            info as *mut i32,
        )
    }
    .result()?;
    Ok(())
}
