//! The only module that reaches below cudarc's safe API. Every function here is a thin
//! wrapper with its preconditions stated; the rest of the crate calls these.

use cudarc::driver::result;
use cudarc::driver::{CudaContext, DriverError};

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
