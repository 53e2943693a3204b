//! Tiled Cholesky factorisation on the task graph: `A = L L^T` for a symmetric positive
//! definite matrix held as [`Tiles`], one task per tile kernel.
//!
//! The tile kernels are function variants: faer on the CPU (and on virtual GPUs), cuSOLVER
//! `potrf` and cuBLAS `trsm` / `syrk` / `gemm` on the task's stream and handles on a GPU.
//! Each step factors its diagonal tile ([`potrf`]), inverts the factor ([`trtri`]), solves
//! the panel below it ([`trsm`]: on a GPU a product with the inverse) and updates the
//! trailing matrix ([`syrk`], [`gemm`]). [`cholesky`] spawns the right-looking algorithm's tasks in order; each declares
//! the tiles it reads and writes, so the runtime orders them (the classic tile DAG follows
//! from the accesses), moves tiles to where each task runs, and, between GPUs, makes a
//! task's stream wait on the events of the tasks it depends on instead of the host.
//!
//! ```
//! use parla::linalg::cholesky::{cholesky, cholesky_residual, spd_matrix, spd_tiles};
//! use parla::prelude::*;
//!
//! let rt = parla::Runtime::builder().cpu_threads(2).build()?;
//! let (n, block) = (200, 64);
//! let l = rt.block_on(async {
//!     let cpu = |_: usize, _: usize| parla::Placements::CPU;
//!     let tiles = spd_tiles(n, block, 7, cpu).await?;
//!     cholesky(&tiles, cpu, |_, _| {}).await?;
//!     tiles.to_host().await
//! })?;
//! let r = cholesky_residual(spd_matrix(n, 7).view(), l.view())?;
//! assert!(r < 1e-12, "||A - L L^T|| / ||A|| = {r}");
//! # Ok::<_, parla::Error>(())
//! ```
//!
//! # Layout
//! Tiles are row-major, as `ndarray`'s default. cuBLAS and cuSOLVER read a row-major tile
//! `X` as the column-major `X^T`: the lower triangle of a tile is the upper triangle of what
//! they see, so the GPU kernels run on the transposed problem (`potrf` on the upper
//! triangle, `trsm` with `U^T`, `syrk` and `gemm` with the transposed operands) and no data
//! is ever transposed.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatMut, MatRef, Par};
use ndarray::{Array1, Array2, ArrayView2, Ix1, Ix2};

use crate::array::{Here, PArray, Tiles};
use crate::{Error, Placements, Result, TaskSpace, task};

/// What a tile factorisation reports: `0`, or the order (within the tile, from 1) of the
/// first leading minor that is not positive definite. On the host for the CPU kernel; a
/// status word cuSOLVER writes, on the GPU, for the GPU kernel (read it once the task
/// finished: [`Here::into_host`]).
pub type Status = Here<'static, i32, Ix1>;

/// Entry `(i, j)` of the symmetric positive definite test matrix of order `n` that
/// [`spd_matrix`] and [`spd_tiles`] build: a hash of `(max(i, j), min(i, j), seed)` mapped
/// to `[0, 1)`, plus `n` on the diagonal (so the matrix is strictly diagonally dominant,
/// hence positive definite). The GPU kernel computes the same bits.
pub fn spd_entry(i: usize, j: usize, n: usize, seed: u64) -> f64 {
    let (r, c) = if i >= j { (i, j) } else { (j, i) };
    let h = mix(seed ^ mix(((r as u64) << 32) | c as u64));
    let u = (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    if i == j { u + n as f64 } else { u }
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The whole `n x n` test matrix on the host ([`spd_entry`]).
pub fn spd_matrix(n: usize, seed: u64) -> Array2<f64> {
    Array2::from_shape_fn((n, n), |(i, j)| spd_entry(i, j, n, seed))
}

/// Fills `tile`, the part of the test matrix of order `n` whose first element is
/// `origin`, with [`spd_entry`]. A function variant: a CUDA kernel on a GPU, a host loop
/// elsewhere. Call it in a task that declared the tile written.
#[crate::specialize]
pub fn fill_spd(
    tile: &PArray<f64, Ix2>,
    origin: (usize, usize),
    n: usize,
    seed: u64,
) -> Result<()> {
    let mut t = tile.write()?;
    for ((r, c), x) in t.indexed_iter_mut() {
        *x = spd_entry(origin.0 + r, origin.1 + c, n, seed);
    }
    Ok(())
}

/// The test matrix's entries (the same bits as [`spd_entry`]) into a row-major tile; the
/// identity matrix.
#[cfg(feature = "cuda")]
const FILL_SPD: &str = r#"
__device__ unsigned long long mix(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
extern "C" __global__ void eye(double *a, long long n) {
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n * n;
         idx += (long long)gridDim.x * blockDim.x) {
        a[idx] = idx / n == idx % n ? 1.0 : 0.0;
    }
}
extern "C" __global__ void fill_spd(double *a, long long rows, long long cols,
                                    long long i0, long long j0, long long n,
                                    unsigned long long seed) {
    long long total = rows * cols;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        long long i = i0 + idx / cols, j = j0 + idx % cols;
        unsigned long long r = i >= j ? i : j, c = i >= j ? j : i;
        unsigned long long h = mix(seed ^ mix((r << 32) | c));
        double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);
        a[idx] = i == j ? u + (double)n : u;
    }
}
"#;

/// [`fill_spd`] on a GPU: one kernel on the task's stream.
#[cfg(feature = "cuda")]
#[crate::variant(fill_spd, gpu)]
pub fn fill_spd_gpu(
    tile: &PArray<f64, Ix2>,
    origin: (usize, usize),
    n: usize,
    seed: u64,
) -> Result<()> {
    let gpu = gpu_context("fill_spd")?;
    let mut buf = tile.device_mut()?;
    let (rows, cols) = (tile.shape()[0], tile.shape()[1]);
    fill_spd_raw(&gpu, &mut buf, (rows, cols), origin, n, seed)
}

/// Launches the fill kernel on `gpu`'s stream over a row-major `shape` block of the test
/// matrix starting at `origin`, written to `buf` (also used for a whole column-major
/// matrix: the matrix is symmetric).
#[cfg(feature = "cuda")]
pub fn fill_spd_raw(
    gpu: &parla_gpu::GpuContext,
    buf: &mut parla_gpu::cudarc::driver::CudaSlice<f64>,
    shape: (usize, usize),
    origin: (usize, usize),
    n: usize,
    seed: u64,
) -> Result<()> {
    use parla_gpu::cudarc::driver::PushKernelArg;
    let total = shape.0 * shape.1;
    if buf.len() < total {
        return Err(Error::InvalidArgument(format!(
            "fill_spd: a buffer of {} elements for a {} x {} block",
            buf.len(),
            shape.0,
            shape.1
        )));
    }
    if total == 0 {
        return Ok(());
    }
    let f = gpu.kernel(FILL_SPD, "fill_spd")?;
    let [rows, cols, i0, j0, n] = [shape.0, shape.1, origin.0, origin.1, n].map(|x| x as i64);
    let cfg = grid_stride(total);
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(&mut *buf)
        .arg(&rows)
        .arg(&cols)
        .arg(&i0)
        .arg(&j0)
        .arg(&n)
        .arg(&seed);
    // SAFETY: the arguments match the kernel's parameters (double*, five long long, an
    // unsigned long long), and the buffer holds `rows * cols` doubles (checked above), the
    // most the grid-stride loop writes.
    unsafe { launch.launch(cfg) }.map_err(parla_gpu::Error::from)?;
    Ok(())
}

/// A launch of the grid-stride kernels in [`FILL_SPD`] over `total` elements: blocks of
/// 256 threads, at most 2^20 blocks (each thread then loops).
#[cfg(feature = "cuda")]
fn grid_stride(total: usize) -> parla_gpu::cudarc::driver::LaunchConfig {
    parla_gpu::cudarc::driver::LaunchConfig {
        grid_dim: (total.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The running GPU task's context, or an error naming the kernel.
#[cfg(feature = "cuda")]
fn gpu_context(what: &str) -> Result<parla_gpu::GpuContext> {
    parla_gpu::current()
        .ok_or_else(|| Error::InvalidArgument(format!("{what}'s GPU variant runs in a GPU task")))
}

/// `n x n` test-matrix tiles of `block x block` (the last row and column of tiles take
/// what remains), each filled by a task placed by `place(i, j)` - on a GPU the data is
/// made there and never crosses the bus. Call it inside the runtime.
///
/// Errors: `block` is 0; a fill task failed.
pub async fn spd_tiles<P>(n: usize, block: usize, seed: u64, place: P) -> Result<Tiles<f64>>
where
    P: Fn(usize, usize) -> Placements,
{
    let tiles = Tiles::zeros((n, n), (block, block))?;
    fill_spd_tiles(&tiles, seed, place).await?;
    Ok(tiles)
}

/// Refills `tiles` (square, as [`spd_tiles`] makes them) with the test matrix, one task per
/// tile placed by `place(i, j)`; returns once every tile is written.
pub async fn fill_spd_tiles<P>(tiles: &Tiles<f64>, seed: u64, place: P) -> Result<()>
where
    P: Fn(usize, usize) -> Placements,
{
    let n = tiles.shape().0;
    let (br, bc) = tiles.tile_shape();
    let mut handles = Vec::with_capacity(tiles.rows() * tiles.cols());
    for i in 0..tiles.rows() {
        for j in 0..tiles.cols() {
            let t = tiles.get(i, j).clone();
            handles.push(
                task(async move { fill_spd(&t, (i * br, j * bc), n, seed) })
                    .writes(tiles.get(i, j))
                    .placement(place(i, j))
                    .spawn(),
            );
        }
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// `a` as a faer view (any strides), without a copy.
fn view<'a>(a: &'a ArrayView2<'_, f64>) -> MatRef<'a, f64> {
    let (rows, cols) = a.dim();
    let s = a.strides();
    // SAFETY: the pointer, shape and strides (in elements) are those of a live ndarray view
    // borrowed for the result's lifetime; every in-shape index reaches one of its elements,
    // and nothing writes them while it is borrowed.
    unsafe { MatRef::from_raw_parts(a.as_ptr(), rows, cols, s[0], s[1]) }
}

/// `a` as a mutable faer view, without a copy.
fn view_mut<'a>(a: &'a mut ndarray::ArrayViewMut2<'_, f64>) -> MatMut<'a, f64> {
    let (rows, cols) = a.dim();
    let s = a.strides().to_vec();
    // SAFETY: as in `view`, for a view borrowed mutably (so nothing else reads or writes
    // its elements meanwhile); ndarray views never alias two indices to one element.
    unsafe { MatMut::from_raw_parts_mut(a.as_mut_ptr(), rows, cols, s[0], s[1]) }
}

/// The side of a square tile, or an error.
fn side(what: &str, a: &PArray<f64, Ix2>) -> Result<usize> {
    match a.shape() {
        [n, m] if n == m => Ok(*n),
        s => Err(Error::InvalidArgument(format!(
            "{what} takes a square tile, not one of shape {s:?}"
        ))),
    }
}

/// Sizes as cuBLAS takes them.
#[cfg(feature = "cuda")]
fn int(x: usize) -> Result<i32> {
    i32::try_from(x)
        .map_err(|_| Error::InvalidArgument(format!("a tile side of {x} is over cuBLAS's limit")))
}

/// Factors the symmetric positive definite tile `a` in place: its lower triangle becomes
/// `L` with `a = L L^T` (the strict upper triangle is left as it was). A function variant:
/// faer on the CPU, cuSOLVER `potrf` on a GPU. Both report a tile that is not positive
/// definite the same way, in the [`Status`] (as cuSOLVER does: the GPU does not stop to
/// tell the host).
///
/// Errors: `a` not square.
#[crate::specialize]
pub fn potrf(a: &PArray<f64, Ix2>) -> Result<Status> {
    let n = side("potrf", a)?;
    let mut w = a.write()?;
    let par = Par::Seq;
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    let res = cholesky_in_place(
        view_mut(&mut w.view_mut()),
        Default::default(),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    );
    // As cuSOLVER: the order of the failing minor, from 1 (0: factored).
    let info = match res {
        Ok(_) => 0,
        Err(faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index }) => {
            i32::try_from(index + 1).unwrap_or(i32::MAX)
        }
    };
    Ok(Here::Host(Array1::from_elem(1, info).into()))
}

/// [`potrf`] on a GPU: cuSOLVER on the task's stream; the status stays on the GPU.
#[cfg(feature = "cuda")]
#[crate::variant(potrf, gpu)]
pub fn potrf_gpu(a: &PArray<f64, Ix2>) -> Result<Status> {
    use parla_gpu::solver::Triangle;
    let n = side("potrf", a)?;
    let gpu = gpu_context("potrf")?;
    let mut buf = a.device_mut()?;
    let mut info = gpu.alloc_zeros::<i32>(1)?;
    // Row-major lower = column-major upper.
    parla_gpu::solver::potrf(gpu.solver()?, Triangle::Upper, n, &mut buf, n, &mut info)?;
    Ok(Here::Device(crate::array::DeviceArray::from_buffer(
        info,
        1,
        ndarray::Order::RowMajor,
    )?))
}

/// `w = L^{-1}` for the factored diagonal tile `l` (its lower triangle `L`): `w` becomes
/// lower triangular, its strict upper triangle zero. The panel solves of the step then
/// multiply by it ([`trsm`]). A function variant: faer on the CPU, cuBLAS `trsm` against
/// the identity on a GPU.
///
/// Errors: `l` not square, or `w` not of its shape.
#[crate::specialize]
pub fn trtri(l: &PArray<f64, Ix2>, w: &PArray<f64, Ix2>) -> Result<()> {
    inverse_side("trtri", l, w)?;
    let l = l.read()?;
    let mut w = w.write()?;
    w.fill(0.0);
    faer::linalg::triangular_inverse::invert_lower_triangular(
        view_mut(&mut w.view_mut()),
        view(&l.view()),
        Par::Seq,
    );
    Ok(())
}

/// [`trtri`] on a GPU: the identity, then cuBLAS `trsm` on the task's stream.
#[cfg(feature = "cuda")]
#[crate::variant(trtri, gpu)]
pub fn trtri_gpu(l: &PArray<f64, Ix2>, w: &PArray<f64, Ix2>) -> Result<()> {
    use parla_gpu::blas::{Side, Triangle, TrsmConfig};
    use parla_gpu::cudarc::driver::PushKernelArg;
    let k = inverse_side("trtri", l, w)?;
    let gpu = gpu_context("trtri")?;
    let (lb, mut wb) = (l.device()?, w.device_mut()?);
    let f = gpu.kernel(FILL_SPD, "eye")?;
    let n = k as i64;
    let cfg = grid_stride(k * k);
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&mut *wb).arg(&n);
    // SAFETY: the arguments match the kernel's (double*, long long); the buffer holds
    // `k * k` doubles (the shape was checked), the most the grid-stride loop writes.
    unsafe { launch.launch(cfg) }.map_err(parla_gpu::Error::from)?;
    // Column-major: X = U^{-1} with U = L^T stored as the upper triangle; X read row-major
    // is X^T = L^{-1}.
    let cfg = TrsmConfig {
        side: Side::Left,
        triangle: Triangle::Upper,
        transpose: false,
        unit_diagonal: false,
        m: int(k)?,
        n: int(k)?,
        alpha: 1.0,
        lda: int(k)?,
        ldb: int(k)?,
    };
    parla_gpu::blas::trsm(&gpu, &cfg, &lb, &mut wb)?;
    Ok(())
}

/// `a = a L^{-T}` for the factored diagonal tile `l` (its lower triangle `L`) and its
/// inverse `w` ([`trtri`]): the panel solve. A function variant: on the CPU a triangular
/// solve with `L` (faer); on a GPU a product with `w` (cuBLAS `gemm`): one inversion per
/// step and a GEMM per tile run several times faster than a `trsm` per tile, at an error
/// bounded by `cond(L) ε` instead of `ε` - as MAGMA's `trsm` does with inverted diagonal
/// blocks.
///
/// Errors: `l` not square, `w` not of its shape, or `a` without as many columns.
#[crate::specialize]
pub fn trsm(l: &PArray<f64, Ix2>, w: &PArray<f64, Ix2>, a: &PArray<f64, Ix2>) -> Result<()> {
    let k = inverse_side("trsm", l, w)?;
    panel("trsm", a, k)?;
    let l = l.read()?;
    let mut a = a.write()?;
    let mut at = a.view_mut().reversed_axes();
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(
        view(&l.view()),
        view_mut(&mut at),
        Par::Seq,
    );
    Ok(())
}

/// The side `k` of the square tile `l`, when `w` (its inverse) is `k x k` too.
fn inverse_side(what: &str, l: &PArray<f64, Ix2>, w: &PArray<f64, Ix2>) -> Result<usize> {
    let k = side(what, l)?;
    if w.shape() != [k, k] {
        return Err(Error::InvalidArgument(format!(
            "{what}: an inverse of shape {:?} for a tile of side {k}",
            w.shape()
        )));
    }
    Ok(k)
}

/// Checks that `a` has `k` columns.
fn panel(what: &str, a: &PArray<f64, Ix2>, k: usize) -> Result<usize> {
    match a.shape() {
        [r, c] if *c == k => Ok(*r),
        s => Err(Error::InvalidArgument(format!(
            "{what}: a tile of shape {s:?} against a diagonal tile of side {k}"
        ))),
    }
}

/// [`trsm`] on a GPU: `a w^T` with cuBLAS `gemm` on the task's stream, into a new buffer
/// that then replaces `a`'s.
#[cfg(feature = "cuda")]
#[crate::variant(trsm, gpu)]
pub fn trsm_gpu(l: &PArray<f64, Ix2>, w: &PArray<f64, Ix2>, a: &PArray<f64, Ix2>) -> Result<()> {
    use parla_gpu::blas::GemmConfig;
    use parla_gpu::cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let k = inverse_side("trsm", l, w)?;
    let r = panel("trsm", a, k)?;
    let gpu = gpu_context("trsm")?;
    let (wb, mut ab) = (w.device()?, a.device_mut()?);
    // SAFETY: the product below writes every element before anything reads the buffer.
    let mut out = unsafe { gpu.alloc_uninit::<f64>(ab.len()) }?;
    // Column-major, the tile reads as A^T (k x r) and `w` as W^T: the new A^T is W A^T,
    // (W^T)^T A^T.
    let cfg = GemmConfig {
        transa: CUBLAS_OP_T,
        transb: CUBLAS_OP_N,
        m: int(k)?,
        n: int(r)?,
        k: int(k)?,
        alpha: 1.0,
        lda: int(k)?,
        ldb: int(k)?,
        beta: 0.0,
        ldc: int(k)?,
    };
    parla_gpu::blas::gemm(&gpu, cfg, &wb, &ab, &mut out)?;
    // The product is the tile's new value; the old buffer is freed in stream order after
    // the product read it (cudarc records the read).
    std::mem::swap(&mut *ab, &mut out);
    Ok(())
}

/// `c = c - a a^T` on the lower triangle of the square `c`: the diagonal update.
/// A function variant: faer on the CPU, cuBLAS `syrk` on a GPU.
///
/// Errors: `c` not square or with another number of rows than `a`.
#[crate::specialize]
pub fn syrk(a: &PArray<f64, Ix2>, c: &PArray<f64, Ix2>) -> Result<()> {
    update_shapes("syrk", a, c)?;
    let a = a.read()?;
    let mut c = c.write()?;
    let av = a.view();
    faer::linalg::matmul::triangular::matmul(
        view_mut(&mut c.view_mut()),
        BlockStructure::TriangularLower,
        Accum::Add,
        view(&av),
        BlockStructure::Rectangular,
        view(&av).transpose(),
        BlockStructure::Rectangular,
        -1.0,
        Par::Seq,
    );
    Ok(())
}

/// `(rows of c, columns of a)` when `c` is square with as many rows as `a`.
fn update_shapes(what: &str, a: &PArray<f64, Ix2>, c: &PArray<f64, Ix2>) -> Result<(usize, usize)> {
    let r = side(what, c)?;
    match a.shape() {
        [ar, k] if *ar == r => Ok((r, *k)),
        s => Err(Error::InvalidArgument(format!(
            "{what}: a tile of shape {s:?} against a diagonal tile of side {r}"
        ))),
    }
}

/// [`syrk`] on a GPU: cuBLAS on the task's stream.
#[cfg(feature = "cuda")]
#[crate::variant(syrk, gpu)]
pub fn syrk_gpu(a: &PArray<f64, Ix2>, c: &PArray<f64, Ix2>) -> Result<()> {
    use parla_gpu::blas::{SyrkConfig, Triangle};
    let (r, k) = update_shapes("syrk", a, c)?;
    let gpu = gpu_context("syrk")?;
    let (ab, mut cb) = (a.device()?, c.device_mut()?);
    // Column-major: C^T = C^T - (A^T)^T A^T on the upper triangle; A^T is k x r.
    let cfg = SyrkConfig {
        triangle: Triangle::Upper,
        transpose: true,
        n: int(r)?,
        k: int(k)?,
        alpha: -1.0,
        lda: int(k)?,
        beta: 1.0,
        ldc: int(r)?,
    };
    parla_gpu::blas::syrk(&gpu, &cfg, &ab, &mut cb)?;
    Ok(())
}

/// `c = c - a b^T`: the trailing update of tile `(i, j)` from `a = L(i, k)` and
/// `b = L(j, k)`. A function variant: faer on the CPU, cuBLAS `gemm` on a GPU.
///
/// Errors: shapes that do not fit together.
#[crate::specialize]
pub fn gemm(a: &PArray<f64, Ix2>, b: &PArray<f64, Ix2>, c: &PArray<f64, Ix2>) -> Result<()> {
    gemm_shapes(a, b, c)?;
    let (a, b) = (a.read()?, b.read()?);
    let mut c = c.write()?;
    faer::linalg::matmul::matmul(
        view_mut(&mut c.view_mut()),
        Accum::Add,
        view(&a.view()),
        view(&b.view()).transpose(),
        -1.0,
        Par::Seq,
    );
    Ok(())
}

/// `(m, n, k)` of `c (m x n) -= a (m x k) b^T (k x n)`, or an error.
fn gemm_shapes(
    a: &PArray<f64, Ix2>,
    b: &PArray<f64, Ix2>,
    c: &PArray<f64, Ix2>,
) -> Result<(usize, usize, usize)> {
    match (a.shape(), b.shape(), c.shape()) {
        ([m, k], [n, k2], [m2, n2]) if k == k2 && m == m2 && n == n2 => Ok((*m, *n, *k)),
        (a, b, c) => Err(Error::InvalidArgument(format!(
            "gemm: c {c:?} -= a {a:?} b^T {b:?} does not fit together"
        ))),
    }
}

/// [`gemm`] on a GPU: cuBLAS on the task's stream.
#[cfg(feature = "cuda")]
#[crate::variant(gemm, gpu)]
pub fn gemm_gpu(a: &PArray<f64, Ix2>, b: &PArray<f64, Ix2>, c: &PArray<f64, Ix2>) -> Result<()> {
    use parla_gpu::blas::GemmConfig;
    use parla_gpu::cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let (m, n, k) = gemm_shapes(a, b, c)?;
    let gpu = gpu_context("gemm")?;
    let (ab, bb, mut cb) = (a.device()?, b.device()?, c.device_mut()?);
    // Column-major: C^T (n x m) = C^T - (B^T)^T A^T, with B^T k x n and A^T k x m.
    let cfg = GemmConfig {
        transa: CUBLAS_OP_T,
        transb: CUBLAS_OP_N,
        m: int(n)?,
        n: int(m)?,
        k: int(k)?,
        alpha: -1.0,
        lda: int(k)?,
        ldb: int(k)?,
        beta: 1.0,
        ldc: int(n)?,
    };
    parla_gpu::blas::gemm(&gpu, cfg, &bb, &ab, &mut cb)?;
    Ok(())
}

/// Tiles on GPUs `0..gpus`, 2-D block-cyclic: the GPUs form a `p x q` grid (`p * q = gpus`,
/// `p >= q`, as square as it gets), tile columns are dealt cyclically over the grid's `q`
/// columns, and tile rows over its `p` rows back and forth (`0, 1, .., p-1, p-1, .., 1, 0,
/// 0, 1, ..`): tile `(i, j)` goes to GPU `r * q + j % q` with `r = i % p` in even rounds of
/// `p` rows and `p - 1 - i % p` in odd ones. With one GPU every tile is on GPU 0; with two,
/// rows go to GPUs 0, 1, 1, 0, 0, 1, ...; with four, a 2 x 2 grid.
///
/// (The lower triangle's rows grow longer downwards: dealt plainly, the last GPU of each
/// round gets the longest rows, 10% more work than the first at 16 x 16 tiles; back and
/// forth, the rounds even out. On two H200s at n = 65536 that took the speed-up over one GPU
/// from 1.75x to 1.82x. Rows rather than columns, as a task updating tile `(i, j)` then
/// finds `L(i, k)` on its own GPU: alternate columns reached 1.23x at n = 32768.)
pub fn block_cyclic(gpus: usize) -> impl Fn(usize, usize) -> Placements + Clone + Send + Sync {
    let gpus = gpus.max(1);
    let q = (1..=gpus)
        .filter(|q| gpus.is_multiple_of(*q) && q * q <= gpus)
        .max()
        .unwrap_or(1);
    let p = gpus / q;
    move |i, j| {
        let r = if (i / p) % 2 == 1 {
            p - 1 - i % p
        } else {
            i % p
        };
        Placements::default().with(crate::Placement::Gpu(r * q + j % q))
    }
}

/// Number of floating-point operations of a Cholesky factorisation of order `n`
/// (`n^3 / 3`, the convention for GFLOP/s figures).
pub fn cholesky_flops(n: usize) -> f64 {
    (n as f64).powi(3) / 3.0
}

/// Factors the symmetric positive definite matrix held as `tiles` in place: the lower
/// triangle of the tiles on and below the diagonal becomes `L` with `A = L L^T` (the tiles
/// above the diagonal, and the strict upper triangles of diagonal tiles, are not read or
/// written).
///
/// Spawns the right-looking algorithm's tasks in a [`TaskSpace`] named `cholesky`, keyed by
/// kernel and tile indices - `("potrf", k)`, `("trtri", k)`, `("trsm", i, k)`,
/// `("syrk", i, k)`, `("gemm", i, j, k)` - each placed where the tile it writes is placed
/// (`place(i, j)`; the inverse of step `k` with tile `(k, k)`), and each declaring the tiles
/// it reads and writes: the runtime orders them by those accesses.
/// `progress(done, total)` is called as tasks finish. Returns once every task finished.
///
/// Errors: `tiles` not square with square tiles ([`Error::InvalidArgument`]); the matrix
/// not positive definite, or holding NaN or infinity in its lower triangle
/// ([`Error::InvalidArgument`], naming the order of the first leading minor that is not,
/// where the factorization met it); a task's error.
pub async fn cholesky<P, G>(tiles: &Tiles<f64>, place: P, mut progress: G) -> Result<()>
where
    P: Fn(usize, usize) -> Placements,
    G: FnMut(usize, usize),
{
    let (n, m) = tiles.shape();
    let (b, b2) = tiles.tile_shape();
    if n != m || b != b2 {
        return Err(Error::InvalidArgument(format!(
            "cholesky takes a square matrix in square tiles, not {n} x {m} in {b} x {b2} tiles"
        )));
    }
    let t = tiles.rows();
    let space = TaskSpace::new("cholesky");
    // potrf and trtri: 2 t; trsm and syrk: t (t - 1); gemm: t (t - 1) (t - 2) / 6.
    let mut handles =
        Vec::with_capacity(t * t + t + t * t.saturating_sub(1) * t.saturating_sub(2) / 6);
    let tile = |i: usize, j: usize| tiles.get(i, j).clone();
    // The inverses of the diagonal factors, for the panel solves.
    let inverses: Vec<PArray<f64, Ix2>> = (0..t)
        .map(|k| {
            let s = tiles.get(k, k).shape()[0];
            PArray::zeros((s, s))
        })
        .collect();
    // The critical path - each step's panel, and the updates of the column that the next
    // panel factors - runs at a higher priority: on a GPU, on high-priority streams, so it
    // never queues behind the bulk of the updates (5% to 10% faster on two H200s).
    let urgent = 1;
    // The panel of step k: factor the diagonal tile, invert the factor, solve the tiles
    // below it.
    let spawn_panel = |k: usize, handles: &mut Vec<_>| {
        let akk = tile(k, k);
        let b = task(async move { potrf(&akk).map(|status| Some((k, status))) })
            .id(space.at(("potrf", k)))
            .reads_writes(tiles.get(k, k))
            .priority(urgent)
            .placement(place(k, k));
        handles.push(b.spawn());
        let (l, w) = (tile(k, k), inverses[k].clone());
        let b = task(async move { trtri(&l, &w).map(|()| None) })
            .id(space.at(("trtri", k)))
            .reads(tiles.get(k, k))
            .writes(&inverses[k])
            .priority(urgent)
            .placement(place(k, k));
        handles.push(b.spawn());
        for i in k + 1..t {
            let (l, w, a) = (tile(k, k), inverses[k].clone(), tile(i, k));
            let b = task(async move { trsm(&l, &w, &a).map(|()| None) })
                .id(space.at(("trsm", i, k)))
                .reads(tiles.get(k, k))
                .reads(&inverses[k])
                .reads_writes(tiles.get(i, k))
                .priority(urgent)
                .placement(place(i, k));
            handles.push(b.spawn());
        }
    };
    // The updates of column j (j > k) from the panel of step k.
    let spawn_update = |j: usize, k: usize, handles: &mut Vec<_>| {
        let lookahead = if j == k + 1 { urgent } else { 0 };
        let (a, c) = (tile(j, k), tile(j, j));
        let b = task(async move { syrk(&a, &c).map(|()| None) })
            .id(space.at(("syrk", j, k)))
            .reads(tiles.get(j, k))
            .reads_writes(tiles.get(j, j))
            .priority(lookahead)
            .placement(place(j, j));
        handles.push(b.spawn());
        for i in j + 1..t {
            let (a, b, c) = (tile(i, k), tile(j, k), tile(i, j));
            let bld = task(async move { gemm(&a, &b, &c).map(|()| None) })
                .id(space.at(("gemm", i, j, k)))
                .reads(tiles.get(i, k))
                .reads(tiles.get(j, k))
                .reads_writes(tiles.get(i, j))
                .priority(lookahead)
                .placement(place(i, j));
            handles.push(bld.spawn());
        }
    };
    // Spawned with a lookahead of one step: after the panel of step k, the updates of
    // column k + 1 and the panel of step k + 1, then the rest of step k's updates. Each
    // tile's writers stay in step order (the data flow is that of the plain loop), but
    // the next panel - the critical path - is queued before the bulk of the updates.
    if t > 0 {
        spawn_panel(0, &mut handles);
    }
    for k in 0..t {
        if k + 1 < t {
            spawn_update(k + 1, k, &mut handles);
            spawn_panel(k + 1, &mut handles);
        }
        for j in k + 2..t {
            spawn_update(j, k, &mut handles);
        }
    }
    let total = handles.len();
    let mut statuses = Vec::with_capacity(t);
    let mut first_err = None;
    for (done, h) in handles.into_iter().enumerate() {
        match h.await.map_err(Error::from).and_then(|r| r) {
            Ok(Some(status)) => statuses.push(status),
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        progress(done + 1, total);
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    for (k, status) in statuses {
        let info = status.into_host()?.first().copied().unwrap_or(0);
        if info != 0 {
            return Err(Error::InvalidArgument(format!(
                "the matrix is not positive definite (or holds NaN or infinity): its leading minor of order {} is not",
                k * b + info as usize
            )));
        }
    }
    Ok(())
}

/// `||A - L L^T||_F / ||A||_F` on the host, reading the lower triangles of the symmetric
/// `a` and of the factor `l` (what [`cholesky`] leaves above the diagonal is ignored).
/// Computed with faer, in parallel.
///
/// Errors: shapes that differ or are not square ([`Error::InvalidArgument`]).
pub fn cholesky_residual(a: ArrayView2<'_, f64>, l: ArrayView2<'_, f64>) -> Result<f64> {
    let n = a.nrows();
    if a.dim() != (n, n) || l.dim() != (n, n) {
        return Err(Error::InvalidArgument(format!(
            "cholesky_residual: A of shape {:?} and L of shape {:?}",
            a.shape(),
            l.shape()
        )));
    }
    let lower = faer::Mat::<f64>::from_fn(n, n, |i, j| if j <= i { l[(i, j)] } else { 0.0 });
    let sym = faer::Mat::<f64>::from_fn(n, n, |i, j| if j <= i { a[(i, j)] } else { a[(j, i)] });
    let mut r = sym.clone();
    faer::linalg::matmul::matmul(
        r.as_mut(),
        Accum::Add,
        lower.as_ref(),
        lower.as_ref().transpose(),
        -1.0,
        faer::get_global_parallelism(),
    );
    let norm = sym.norm_l2();
    Ok(if norm == 0.0 {
        r.norm_l2()
    } else {
        r.norm_l2() / norm
    })
}
