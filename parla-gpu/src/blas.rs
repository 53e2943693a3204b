//! cuBLAS for GPU tasks: [`GpuContext::blas`](crate::GpuContext::blas) gives a handle bound
//! to the task's stream, so its calls are ordered with the task's other work.
//!
//! The handle is cudarc's [`CudaBlas`]; use its traits (`Gemm`, `Gemv`) directly. This
//! module adds the level-3 calls cudarc does not wrap that tiled factorisations need,
//! [`trsm`] and [`syrk`], and a [`gemm`] for `f64` with its sizes checked. All are
//! column-major, as cuBLAS is.

pub use crate::solver::Triangle;
pub use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, Gemv, GemvConfig};

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use crate::context::GpuContext;
use crate::error::{Error, Result};

/// Which side of the unknown a triangular matrix stands on in [`trsm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `op(A) X = alpha B`.
    Left,
    /// `X op(A) = alpha B`.
    Right,
}

/// A triangular solve with many right-hand sides (`dtrsm`), column-major: `X` overwrites
/// the `m x n` matrix `B`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrsmConfig {
    /// Where `A` stands.
    pub side: Side,
    /// Which triangle of `A` holds it (the other is not read).
    pub triangle: Triangle,
    /// Solve with `A^T` instead of `A`.
    pub transpose: bool,
    /// `A`'s diagonal is all ones (and not read).
    pub unit_diagonal: bool,
    /// Rows of `B`.
    pub m: i32,
    /// Columns of `B`.
    pub n: i32,
    /// The scale of `B`.
    pub alpha: f64,
    /// `A`'s leading dimension.
    pub lda: i32,
    /// `B`'s leading dimension.
    pub ldb: i32,
}

/// A symmetric rank-k update (`dsyrk`), column-major: `C = alpha op(A) op(A)^T + beta C` on
/// one triangle of the `n x n` `C`, where `op(A)` is `n x k` (`A^T` when `transpose`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyrkConfig {
    /// The triangle of `C` that is updated (the other is not touched).
    pub triangle: Triangle,
    /// `op(A) = A^T`: `A` is `k x n`.
    pub transpose: bool,
    /// The order of `C`.
    pub n: i32,
    /// The inner dimension.
    pub k: i32,
    /// The scale of the product.
    pub alpha: f64,
    /// `A`'s leading dimension.
    pub lda: i32,
    /// The scale of `C`.
    pub beta: f64,
    /// `C`'s leading dimension.
    pub ldc: i32,
}

/// Whether a buffer of `len` elements holds a column-major `rows x cols` matrix with leading
/// dimension `ld`; an error naming `what` if not.
pub(crate) fn check_matrix(what: &str, len: usize, rows: i32, cols: i32, ld: i32) -> Result<()> {
    let ok = rows >= 0
        && cols >= 0
        && ld >= rows.max(1)
        && (cols == 0 || rows == 0 || {
            let need = (ld as usize) * (cols as usize - 1) + rows as usize;
            len >= need
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "{what}: a buffer of {len} elements does not hold a {rows} x {cols} matrix with leading dimension {ld}"
        )))
    }
}

/// `op(A) X = alpha B` or `X op(A) = alpha B` for the triangular `A`, on the task's stream
/// and cuBLAS handle; `X` overwrites `b`.
///
/// Errors: a buffer too small for the sizes in `cfg` (nothing is enqueued), a cuBLAS error.
pub fn trsm(
    gpu: &GpuContext,
    cfg: &TrsmConfig,
    a: &CudaSlice<f64>,
    b: &mut CudaSlice<f64>,
) -> Result<()> {
    let order = match cfg.side {
        Side::Left => cfg.m,
        Side::Right => cfg.n,
    };
    check_matrix("trsm A", a.len(), order, order, cfg.lda)?;
    check_matrix("trsm B", b.len(), cfg.m, cfg.n, cfg.ldb)?;
    if cfg.m == 0 || cfg.n == 0 {
        return Ok(());
    }
    let blas = gpu.blas()?;
    let stream = gpu.stream();
    let (a_ptr, _ra) = a.device_ptr(stream);
    let (b_ptr, _rb) = b.device_ptr_mut(stream);
    crate::raw::make_current(stream.context())?;
    // SAFETY: the sizes were checked against the buffers above; both are device memory of
    // the task's context (made current), on the handle's stream (the task's), and the
    // borrows keep them allocated until the call is enqueued; `b` is borrowed mutably, so
    // it does not alias `a`.
    unsafe { crate::raw::dtrsm(blas, cfg, a_ptr, b_ptr) }
}

/// `C = alpha op(A) op(A)^T + beta C` on one triangle of `c`, on the task's stream and
/// cuBLAS handle.
///
/// Errors: a buffer too small for the sizes in `cfg` (nothing is enqueued), a cuBLAS error.
pub fn syrk(
    gpu: &GpuContext,
    cfg: &SyrkConfig,
    a: &CudaSlice<f64>,
    c: &mut CudaSlice<f64>,
) -> Result<()> {
    let (rows, cols) = if cfg.transpose {
        (cfg.k, cfg.n)
    } else {
        (cfg.n, cfg.k)
    };
    check_matrix("syrk A", a.len(), rows, cols, cfg.lda)?;
    check_matrix("syrk C", c.len(), cfg.n, cfg.n, cfg.ldc)?;
    if cfg.n == 0 {
        return Ok(());
    }
    let blas = gpu.blas()?;
    let stream = gpu.stream();
    let (a_ptr, _ra) = a.device_ptr(stream);
    let (c_ptr, _rc) = c.device_ptr_mut(stream);
    crate::raw::make_current(stream.context())?;
    // SAFETY: as in `trsm`: sizes checked, the task's context current, the task's stream.
    unsafe { crate::raw::dsyrk(blas, cfg, a_ptr, c_ptr) }
}

/// `C = alpha op(A) op(B) + beta C` (`dgemm`), on the task's stream and cuBLAS handle, with
/// the buffers' sizes checked against `cfg` first.
///
/// Errors: a buffer too small for the sizes in `cfg` (nothing is enqueued), a cuBLAS error.
pub fn gemm(
    gpu: &GpuContext,
    cfg: GemmConfig<f64>,
    a: &CudaSlice<f64>,
    b: &CudaSlice<f64>,
    c: &mut CudaSlice<f64>,
) -> Result<()> {
    use cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N;
    let shape = |op, rows, cols| {
        if op == CUBLAS_OP_N {
            (rows, cols)
        } else {
            (cols, rows)
        }
    };
    let (ar, ac) = shape(cfg.transa, cfg.m, cfg.k);
    let (br, bc) = shape(cfg.transb, cfg.k, cfg.n);
    check_matrix("gemm A", a.len(), ar, ac, cfg.lda)?;
    check_matrix("gemm B", b.len(), br, bc, cfg.ldb)?;
    check_matrix("gemm C", c.len(), cfg.m, cfg.n, cfg.ldc)?;
    if cfg.m == 0 || cfg.n == 0 {
        return Ok(());
    }
    crate::raw::make_current(gpu.stream().context())?;
    // SAFETY: the sizes were checked against the buffers above; all three are device memory
    // of the task's context (current), and cudarc orders the call on the handle's stream.
    unsafe { gpu.blas()?.gemm(cfg, a, b, c) }?;
    Ok(())
}
