//! cuSOLVER for GPU tasks: [`GpuContext::solver`](crate::GpuContext::solver) gives a dense
//! handle bound to the task's stream.
//!
//! cudarc wraps the handle only; the LAPACK-style calls are `cudarc::cusolver::sys`
//! functions taking `handle.cu()`.

pub use cudarc::cusolver::DnHandle;

use cudarc::driver::{CudaSlice, DevicePtrMut};

use crate::context::GpuContext;
use crate::error::{Error, Result};

/// Which triangle of a symmetric matrix a solver reads (in column-major terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Triangle {
    /// The lower triangle.
    Lower,
    /// The upper triangle.
    Upper,
}

/// Eigenvalues and eigenvectors of the symmetric `n x n` matrix `a` (column-major), with
/// cuSOLVER's `syevd` on the task's stream and solver handle: `a` is overwritten by the
/// eigenvectors (column `j` for eigenvalue `j`), and the eigenvalues (ascending) and
/// cuSOLVER's status word (`0`: converged) are returned as device buffers. Enqueues the
/// work and returns; read the status (for example with [`crate::transfer::to_host`]) to
/// know the solve converged.
pub fn syevd(
    gpu: &GpuContext,
    a: &mut CudaSlice<f64>,
    n: usize,
    triangle: Triangle,
) -> Result<(CudaSlice<f64>, CudaSlice<i32>)> {
    let n32 = i32::try_from(n)
        .ok()
        .filter(|_| n.checked_mul(n) == Some(a.len()))
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "syevd: a buffer of {} elements is not a {n} x {n} matrix",
                a.len()
            ))
        })?;
    let solver = gpu.solver()?;
    let stream = gpu.stream();
    // SAFETY: uninitialised device memory that the solve writes in full before anything
    // on the stream reads it.
    let mut w = unsafe { stream.alloc::<f64>(n.max(1)) }?;
    // SAFETY: as for `w`: the solve writes the status word.
    let mut info = unsafe { stream.alloc::<i32>(1) }?;
    if n == 0 {
        stream.memset_zeros(&mut info)?;
        return Ok((w, info));
    }
    {
        let (a_ptr, _a) = a.device_ptr_mut(stream);
        let (w_ptr, _w) = w.device_ptr_mut(stream);
        let (info_ptr, _i) = info.device_ptr_mut(stream);
        crate::raw::make_current(stream.context())?;
        // SAFETY: `a` holds `n * n` f64s (checked above), `w` `n`, `info` one i32, all
        // allocated in the handle's stream's context (the task's), which is current; the
        // buffers outlive the enqueued solve or are freed after it in that stream's order.
        unsafe {
            crate::raw::dsyevd(
                solver,
                triangle == Triangle::Lower,
                n32,
                a_ptr,
                w_ptr,
                info_ptr,
            )
        }?;
    }
    Ok((w, info))
}

/// The Cholesky factorisation of the symmetric positive definite `n x n` matrix in `a`
/// (column-major, leading dimension `lda`), with cuSOLVER's `potrf` on the handle's stream:
/// the `triangle` of `a` is overwritten by the factor (`L` with `A = L L^T` for
/// [`Triangle::Lower`], `U` with `A = U^T U` for [`Triangle::Upper`]); the other triangle is
/// not touched. cuSOLVER's status goes to `info[0]`: `0`, or the order `i` of the first
/// leading minor that is not positive definite. Enqueues the work and returns.
///
/// Works with any handle: a GPU task's ([`GpuContext::solver`]) or one of your own.
///
/// Errors: `a` too small for `n` and `lda`, `info` empty (nothing is enqueued), a cuSOLVER
/// error.
pub fn potrf(
    handle: &DnHandle,
    triangle: Triangle,
    n: usize,
    a: &mut CudaSlice<f64>,
    lda: usize,
    info: &mut CudaSlice<i32>,
) -> Result<()> {
    let (n32, lda32) = match (i32::try_from(n), i32::try_from(lda)) {
        (Ok(n), Ok(lda)) => (n, lda),
        _ => {
            return Err(Error::Unavailable(format!(
                "potrf: n = {n}, lda = {lda} do not fit cuSOLVER's 32-bit sizes"
            )));
        }
    };
    crate::blas::check_matrix("potrf A", a.len(), n32, n32, lda32)?;
    if info.is_empty() {
        return Err(Error::Unavailable(
            "potrf: the status buffer is empty".into(),
        ));
    }
    let stream = handle.stream();
    if n == 0 {
        stream.memset_zeros(info)?;
        return Ok(());
    }
    let (a_ptr, _a) = a.device_ptr_mut(stream);
    let (info_ptr, _i) = info.device_ptr_mut(stream);
    crate::raw::make_current(stream.context())?;
    // SAFETY: the sizes were checked above; both buffers are device memory that the
    // borrows keep allocated until the call is enqueued; cudarc allocates a slice in its
    // stream's context, and the handle's stream's context is made current. (A buffer of
    // another context would be a CUDA error, not undefined behaviour: unified addressing.)
    unsafe {
        crate::raw::dpotrf(
            handle,
            triangle == Triangle::Lower,
            n32,
            a_ptr,
            lda32,
            info_ptr,
        )
    }
}
