//! The only module that reaches below cudarc's safe API. Every function here is a thin
//! wrapper with its preconditions stated; the rest of the crate calls these.

use cudarc::driver::result;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError};

/// Whether libcuda can be loaded. Must be checked before any driver call: with dynamic
/// loading, cudarc panics on the first call if the library is missing.
///
/// Looked for once per process: each look tries about 30 names of the library in every
/// directory the loader searches, which made building a runtime without CUDA take 0.75 ms
/// (7 times Tokio's), for every runtime a program or a test suite builds.
pub(crate) fn driver_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: `is_culib_present` dlopens libcuda (running its initialisers, which is what
    // any use of CUDA does) and closes it again; it has no other precondition.
    *PRESENT.get_or_init(|| unsafe { cudarc::driver::sys::is_culib_present() })
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

/// Records `event` on `stream` from any thread: `ctx` (the event's and the stream's context)
/// is made current for the call, and the context that was current before is made current
/// again (the thread may be running a task on another device).
pub(crate) fn record_anywhere(
    ctx: &CudaContext,
    event: &CudaEvent,
    stream: &CudaStream,
) -> Result<(), DriverError> {
    let cu = ctx.cu_ctx();
    let before = result::ctx::get_current()?;
    if before != Some(cu) {
        // SAFETY: `cu` is the live context owned by `ctx`, borrowed for the call.
        unsafe { result::ctx::set_current(cu) }?;
    }
    // SAFETY: both handles are live (borrowed) and belong to `ctx`, current now.
    let r = unsafe { result::event::record(event.cu_event(), stream.cu_stream()) };
    if before != Some(cu) {
        // SAFETY: `before` was current on this thread until this call (or null: none). The
        // runtime's contexts live as long as the runtime, and a context the caller made
        // current is alive while it is current.
        unsafe { result::ctx::set_current(before.unwrap_or(std::ptr::null_mut())) }?;
    }
    r
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
    let uplo = solver_fill(lower);
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

/// `cusolverDnDpotrf` (Cholesky factorisation of a symmetric positive definite matrix):
/// the workspace size, then the factorisation, enqueued on the handle's stream. The `uplo`
/// triangle of `a` is overwritten by the factor; `info` receives cuSOLVER's status (`0`,
/// or the order `i` of the leading minor that is not positive definite).
///
/// # Safety
/// `a` holds a column-major `n x n` matrix with leading dimension `lda >= n` (at least
/// `lda * (n - 1) + n` `f64`s) and `info` one `i32`, device memory of the handle's stream's
/// context, allocated until the factorisation ran in that stream's order; that context is
/// current.
pub(crate) unsafe fn dpotrf(
    handle: &cudarc::cusolver::DnHandle,
    lower: bool,
    n: i32,
    a: cudarc::driver::sys::CUdeviceptr,
    lda: i32,
    info: cudarc::driver::sys::CUdeviceptr,
) -> Result<(), crate::Error> {
    use cudarc::cusolver::sys;
    let uplo = solver_fill(lower);
    let mut lwork: i32 = 0;
    // SAFETY: a size query; `a` is valid as stated (not accessed), `lwork` a live
    // out-parameter.
    unsafe {
        sys::cusolverDnDpotrf_bufferSize(handle.cu(), uplo, n, a as *mut f64, lda, &mut lwork)
    }
    .result()?;
    let stream = handle.stream();
    // SAFETY: uninitialised scratch that only cuSOLVER writes; freed (stream-ordered, on the
    // same stream) when it drops after the factorisation was enqueued.
    let mut work = unsafe { stream.alloc::<f64>(lwork.max(1) as usize) }?;
    let (work_ptr, _record) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut work, stream);
    // SAFETY: every pointer is valid for the sizes cuSOLVER reads and writes (this
    // function's contract; `work` holds `lwork` elements); ordered on the handle's stream.
    unsafe {
        sys::cusolverDnDpotrf(
            handle.cu(),
            uplo,
            n,
            a as *mut f64,
            lda,
            work_ptr as *mut f64,
            lwork,
            info as *mut i32,
        )
    }
    .result()?;
    Ok(())
}

/// The cuBLAS fill mode of a triangle.
fn fill(lower: bool) -> cudarc::cublas::sys::cublasFillMode_t {
    if lower {
        cudarc::cublas::sys::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER
    } else {
        cudarc::cublas::sys::cublasFillMode_t::CUBLAS_FILL_MODE_UPPER
    }
}

/// The cuSOLVER fill mode of a triangle (cuSOLVER declares the enum anew).
fn solver_fill(lower: bool) -> cudarc::cusolver::sys::cublasFillMode_t {
    if lower {
        cudarc::cusolver::sys::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER
    } else {
        cudarc::cusolver::sys::cublasFillMode_t::CUBLAS_FILL_MODE_UPPER
    }
}

/// The cuBLAS operation: the matrix itself or its transpose.
fn op(transpose: bool) -> cudarc::cublas::sys::cublasOperation_t {
    if transpose {
        cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N
    }
}

/// `cublasDtrsm`: `op(A) X = alpha B` (left) or `X op(A) = alpha B` (right) for the
/// triangular `A`; `X` overwrites `B` (`m x n`, column-major). Enqueued on the handle's
/// stream.
///
/// # Safety
/// `a` holds a column-major triangular matrix of order `m` (left) or `n` (right) with
/// leading dimension `t.lda`, `b` an `m x n` matrix with leading dimension `t.ldb` (each
/// at least `ld * (cols - 1) + rows` `f64`s), device memory of the handle's context,
/// allocated until the call ran in the handle's stream's order; that context is current;
/// `b` does not overlap `a`.
pub(crate) unsafe fn dtrsm(
    handle: &cudarc::cublas::CudaBlas,
    t: &crate::blas::TrsmConfig,
    a: cudarc::driver::sys::CUdeviceptr,
    b: cudarc::driver::sys::CUdeviceptr,
) -> Result<(), crate::Error> {
    use cudarc::cublas::sys;
    let side = match t.side {
        crate::blas::Side::Left => sys::cublasSideMode_t::CUBLAS_SIDE_LEFT,
        crate::blas::Side::Right => sys::cublasSideMode_t::CUBLAS_SIDE_RIGHT,
    };
    let diag = if t.unit_diagonal {
        sys::cublasDiagType_t::CUBLAS_DIAG_UNIT
    } else {
        sys::cublasDiagType_t::CUBLAS_DIAG_NON_UNIT
    };
    // SAFETY: the pointers and sizes are valid as stated (this function's contract); the
    // scalar is read on the host (cuBLAS's default pointer mode) before the call returns.
    unsafe {
        sys::cublasDtrsm_v2(
            *handle.handle(),
            side,
            fill(t.triangle == crate::solver::Triangle::Lower),
            op(t.transpose),
            diag,
            t.m,
            t.n,
            &t.alpha,
            a as *const f64,
            t.lda,
            b as *mut f64,
            t.ldb,
        )
    }
    .result()?;
    Ok(())
}

/// `cublasDsyrk`: `C = alpha op(A) op(A)^T + beta C` on the `triangle` of the symmetric
/// `n x n` `C` (`op(A)` is `n x k`). Enqueued on the handle's stream.
///
/// # Safety
/// `a` holds `op(A)`'s matrix (`n x k`, or `k x n` transposed) with leading dimension
/// `t.lda`, `c` an `n x n` matrix with leading dimension `t.ldc`, as for [`dtrsm`]; the
/// context is current; `c` does not overlap `a`.
pub(crate) unsafe fn dsyrk(
    handle: &cudarc::cublas::CudaBlas,
    t: &crate::blas::SyrkConfig,
    a: cudarc::driver::sys::CUdeviceptr,
    c: cudarc::driver::sys::CUdeviceptr,
) -> Result<(), crate::Error> {
    use cudarc::cublas::sys;
    // SAFETY: as stated (this function's contract); the scalars are read on the host.
    unsafe {
        sys::cublasDsyrk_v2(
            *handle.handle(),
            fill(t.triangle == crate::solver::Triangle::Lower),
            op(t.transpose),
            t.n,
            t.k,
            &t.alpha,
            a as *const f64,
            t.lda,
            &t.beta,
            c as *mut f64,
            t.ldc,
        )
    }
    .result()?;
    Ok(())
}

/// Page-locked host memory for `len` values of `T`, portable (pinned for every context), not
/// write-combined (the host reads it too). Uninitialised.
///
/// # Safety
/// A context is current on this thread (the allocation needs one). The caller initialises
/// the memory before reading it.
pub(crate) unsafe fn alloc_host<T>(len: usize) -> Result<std::ptr::NonNull<T>, DriverError> {
    let bytes = len.max(1).saturating_mul(std::mem::size_of::<T>().max(1));
    // SAFETY: a plain allocation with a current context (the contract).
    let p = unsafe { result::malloc_host(bytes, cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE) }?;
    std::ptr::NonNull::new(p.cast::<T>()).ok_or(DriverError(
        cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
    ))
}

/// Frees what [`alloc_host`] returned.
///
/// # Safety
/// `p` came from `alloc_host`, is freed once, and no copy reads or writes it any more.
pub(crate) unsafe fn free_host<T>(p: std::ptr::NonNull<T>) {
    // SAFETY: the contract.
    let _ = unsafe { result::free_host(p.as_ptr().cast()) };
}

/// Enqueues a host-to-device copy of `src` to `dst` on `stream`.
///
/// # Safety
/// `src` is page-locked and stays untouched until the copy ran (in stream order); `dst`
/// holds at least `size_of_val(src)` bytes of the stream's context, allocated until then.
pub(crate) unsafe fn htod_async<T>(
    dst: cudarc::driver::sys::CUdeviceptr,
    src: &[T],
    stream: &CudaStream,
) -> Result<(), DriverError> {
    // SAFETY: the contract.
    unsafe {
        cudarc::driver::sys::cuMemcpyHtoDAsync_v2(
            dst,
            src.as_ptr().cast(),
            std::mem::size_of_val(src),
            stream.cu_stream(),
        )
    }
    .result()
}

/// Enqueues a device-to-host copy of `src` into `dst` on `stream`.
///
/// # Safety
/// `dst` is page-locked, not read or written by the host until the copy ran; `src` holds at
/// least `size_of_val(dst)` bytes of the stream's context, allocated until then.
pub(crate) unsafe fn dtoh_async<T>(
    dst: &mut [T],
    src: cudarc::driver::sys::CUdeviceptr,
    stream: &CudaStream,
) -> Result<(), DriverError> {
    // SAFETY: the contract.
    unsafe {
        cudarc::driver::sys::cuMemcpyDtoHAsync_v2(
            dst.as_mut_ptr().cast(),
            src,
            std::mem::size_of_val(dst),
            stream.cu_stream(),
        )
    }
    .result()
}

/// Lets every device in `ctxs` reach every other's memory directly, where the hardware
/// allows: peer access between the contexts, and access to each device's default memory
/// pool (buffers from `cuMemAllocAsync` come from it, and peer access alone does not cover
/// them). Returns the pairs `(from, to)` (indices into `ctxs`) that were enabled.
pub(crate) fn enable_peer_access(ctxs: &[Arc<CudaContext>]) -> Vec<(usize, usize)> {
    use cudarc::driver::sys;
    let mut enabled = Vec::new();
    for (i, a) in ctxs.iter().enumerate() {
        for (j, b) in ctxs.iter().enumerate() {
            if i == j {
                continue;
            }
            let mut can = 0;
            // SAFETY: a query on two valid device handles into a live out-parameter.
            let ok = unsafe { sys::cuDeviceCanAccessPeer(&mut can, a.cu_device(), b.cu_device()) };
            if ok != sys::CUresult::CUDA_SUCCESS || can == 0 {
                continue;
            }
            if make_current(a).is_err() {
                continue;
            }
            // SAFETY: `a`'s context is current and `b`'s context is live (borrowed); flags
            // must be 0. Already enabled is not an error for us.
            let r = unsafe { sys::cuCtxEnablePeerAccess(b.cu_ctx(), 0) };
            if r != sys::CUresult::CUDA_SUCCESS
                && r != sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
            {
                continue;
            }
            // Device `a` may access `b`'s default pool.
            let mut pool = std::ptr::null_mut();
            // SAFETY: a query on a valid device into a live out-parameter.
            let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, b.cu_device()) };
            if r == sys::CUresult::CUDA_SUCCESS && !pool.is_null() {
                let desc = sys::CUmemAccessDesc {
                    location: sys::CUmemLocation {
                        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                        id: a.ordinal() as i32,
                    },
                    flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
                };
                // SAFETY: `pool` is the live default pool of device `b`; one descriptor.
                let _ = unsafe { sys::cuMemPoolSetAccess(pool, &desc, 1) };
            }
            enabled.push((i, j));
        }
    }
    enabled
}
