//! The only module that reaches below cudarc's safe API. Every function here is a thin
//! wrapper with its preconditions stated; the rest of the crate calls these.

use cudarc::driver::result;
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
