//! Dense linear algebra as function variants: one name, a default body on the CPU with
//! [`faer`], a GPU variant with cuSOLVER on the task's stream, chosen by the device of the
//! task that calls it.
//!
//! ```
//! use parla::array::clone_here;
//! use parla::prelude::*;
//!
//! let rt = parla::Runtime::builder().cpu_threads(2).build()?;
//! let a = ndarray::array![[2.0, 1.0], [1.0, 2.0]];
//! let w = rt.block_on(task(async move {
//!     let e = parla::linalg::eigh(&clone_here(&a)?)?;
//!     e.values.into_host()
//! }))??;
//! assert!((w[0] - 1.0).abs() < 1e-12 && (w[1] - 3.0).abs() < 1e-12);
//! # Ok::<_, parla::Error>(())
//! ```

pub mod cholesky;

use faer::{MatRef, Side};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, CowArray, Ix1, Ix2};

use crate::array::Here;
use crate::{Error, Result};

/// An eigendecomposition `A = V diag(w) V^T`: eigenvalues ascending, eigenvector `j` in
/// column `j` of `vectors`. Each on the side where it was computed.
#[derive(Debug, Clone)]
pub struct Eigh {
    /// The eigenvalues `w`, ascending.
    pub values: Here<'static, f64, Ix1>,
    /// The eigenvectors `V`, one per column, orthonormal.
    pub vectors: Here<'static, f64, Ix2>,
}

impl Eigh {
    /// Both parts on the host (copies from a GPU wait for the data).
    pub fn into_host(self) -> Result<(Array1<f64>, Array2<f64>)> {
        Ok((self.values.into_host()?, self.vectors.into_host()?))
    }
}

/// The eigenvalues and eigenvectors of the symmetric matrix `a`, reading its lower
/// triangle (as LAPACK's `uplo = 'L'` and NumPy's `eigh`).
///
/// A function variant: in a task on a real GPU it is [`eigh_gpu`] (cuSOLVER `syevd` on the
/// task's stream; results stay on the GPU); everywhere else - CPU tasks, outside tasks,
/// virtual GPUs - the default body, [`eigh_cpu`] (faer; results on the host).
///
/// Errors: `a` not square, or with a value that is not finite in its lower triangle
/// ([`Error::InvalidArgument`]); no convergence; on the host, a solution that overflows
/// `f64` (finite values near `f64::MAX`).
#[crate::specialize]
pub fn eigh(a: &Here<'_, f64, Ix2>) -> Result<Eigh> {
    eigh_cpu(a)
}

/// The side of a square matrix, or an error naming the shape.
fn square(shape: &[usize]) -> Result<usize> {
    match shape {
        [n, m] if n == m => Ok(*n),
        _ => Err(Error::InvalidArgument(format!(
            "eigh takes a square matrix, not one of shape {shape:?}"
        ))),
    }
}

/// Rejects a lower triangle holding a NaN or an infinity (the solvers would not converge).
fn finite_lower(a: ArrayView2<'_, f64>) -> Result<()> {
    for ((i, j), x) in a.indexed_iter() {
        if j <= i && !x.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "eigh: element ({i}, {j}) is {x}"
            )));
        }
    }
    Ok(())
}

/// `a` as a faer matrix view, without a copy.
fn faer_view<'a>(a: &'a ArrayView2<'_, f64>) -> MatRef<'a, f64> {
    let (rows, cols) = a.dim();
    let strides = a.strides();
    // SAFETY: the pointer, shape and strides (in elements) are those of a live ndarray view
    // borrowed for `'a`: every in-shape index (i, j) reaches `ptr + i*s0 + j*s1`, an
    // element of that view, and nothing writes the view while it is borrowed.
    unsafe { MatRef::from_raw_parts(a.as_ptr(), rows, cols, strides[0], strides[1]) }
}

/// [`eigh`]'s default body, on the host with faer (parallel with rayon): host data is read
/// in place; device data is copied to the host first.
pub fn eigh_cpu(a: &Here<'_, f64, Ix2>) -> Result<Eigh> {
    let n = square(a.shape())?;
    if n == 0 {
        return Ok(Eigh {
            values: Here::Host(Array1::zeros(0).into()),
            vectors: Here::Host(Array2::zeros((0, 0)).into()),
        });
    }
    let a: CowArray<'_, f64, Ix2> = a.to_host()?;
    let a = a.view();
    finite_lower(a)?;
    let e = faer_view(&a)
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::InvalidArgument(format!("eigh did not converge: {e:?}")))?;
    let (u, s) = (e.U(), e.S().column_vector());
    let values = Array1::from_shape_fn(n, |i| s[i]);
    let vectors = Array2::from_shape_fn((n, n), |(i, j)| u[(i, j)]);
    // Finite input near `f64::MAX` may have eigenvalues (or intermediate values) that
    // overflow: an error, rather than infinities or NaN as results.
    if !values.iter().chain(vectors.iter()).all(|x| x.is_finite()) {
        return Err(Error::InvalidArgument(
            "eigh: the solution overflows f64 (values near f64::MAX): scale the matrix down".into(),
        ));
    }
    Ok(Eigh {
        values: Here::Host(values.into()),
        vectors: Here::Host(vectors.into()),
    })
}

/// [`eigh`]'s GPU variant: cuSOLVER `syevd` on the task's stream and solver handle. Host
/// data is copied to the GPU first (asynchronously); device data is copied (the solver
/// overwrites its input). Waits for the solve to read its status (as CuPy's `eigh` does);
/// the results stay on the GPU ([`Here::Device`], eigenvectors column-major).
///
/// Errors: called outside a task on a real GPU, a shape or value as for [`eigh`], a CUDA
/// or cuSOLVER failure, no convergence.
#[cfg(feature = "cuda")]
#[crate::variant(eigh, gpu)]
pub fn eigh_gpu(a: &Here<'_, f64, Ix2>) -> Result<Eigh> {
    use crate::array::DeviceArray;
    use ndarray::Order;
    use parla_gpu::solver::{Triangle, syevd};

    let gpu = parla_gpu::current().ok_or_else(|| {
        Error::InvalidArgument(
            "eigh_gpu runs inside a task on a CUDA GPU (not on the CPU or a virtual GPU)"
                .to_string(),
        )
    })?;
    let n = square(a.shape())?;
    if n == 0 {
        return eigh_cpu(a);
    }
    let (mut buf, column_major) = match a {
        Here::Host(h) => {
            finite_lower(h.view())?;
            let d = crate::array::upload(&gpu, h.view())?;
            let column_major = d.is_column_major();
            match d.into_buffer() {
                Ok(buf) => (buf, column_major),
                Err(d) => (gpu.copy_from(d.buffer())?, column_major),
            }
        }
        Here::Device(d) => (gpu.copy_from(d.buffer())?, d.is_column_major()),
    };
    // cuSOLVER reads column-major: row-major data reads as the transpose, whose upper
    // triangle is the matrix's lower one.
    let triangle = if column_major {
        Triangle::Lower
    } else {
        Triangle::Upper
    };
    let (w, info) = syevd(&gpu, &mut buf, n, triangle)?;
    let status = gpu.download(&info)?[0];
    if status != 0 {
        return Err(Error::Device(format!(
            "cuSOLVER syevd did not converge (status {status})"
        )));
    }
    Ok(Eigh {
        values: Here::Device(DeviceArray::from_buffer(w, n, Order::RowMajor)?),
        vectors: Here::Device(DeviceArray::from_buffer(buf, (n, n), Order::ColumnMajor)?),
    })
}

/// `||A V - V diag(w)||_F / ||A||_F` for a decomposition of the symmetric `a` (its lower
/// triangle, as [`eigh`] reads it): how far `values` and `vectors` are from being its
/// eigenpairs. Host arrays; computed with faer.
///
/// Errors: shapes that do not fit together ([`Error::InvalidArgument`]).
pub fn eigh_residual(
    a: ArrayView2<'_, f64>,
    values: ArrayView1<'_, f64>,
    vectors: ArrayView2<'_, f64>,
) -> Result<f64> {
    let n = square(a.shape())?;
    if values.len() != n || vectors.dim() != (n, n) {
        return Err(Error::InvalidArgument(format!(
            "a {n} x {n} matrix with {} eigenvalues and eigenvectors of shape {:?}",
            values.len(),
            vectors.shape()
        )));
    }
    // The symmetric matrix the lower triangle stands for.
    let sym = faer::Mat::<f64>::from_fn(n, n, |i, j| if j <= i { a[(i, j)] } else { a[(j, i)] });
    let v = faer_view(&vectors);
    let mut r = &sym * v;
    for j in 0..n {
        for i in 0..n {
            r[(i, j)] -= v[(i, j)] * values[j];
        }
    }
    let norm = sym.norm_l2();
    Ok(if norm == 0.0 {
        r.norm_l2()
    } else {
        r.norm_l2() / norm
    })
}

/// A deterministic pseudo-random symmetric `n x n` matrix with entries in `[0, 1)` (the
/// mean of a random matrix and its transpose, as `(R + R^T) / 2` with NumPy's `rand`), for
/// examples, tests and benchmarks: the same `seed` gives the same matrix everywhere.
pub fn random_symmetric(n: usize, seed: u64) -> Array2<f64> {
    // SplitMix64: a fixed, well-mixed sequence without a dependency.
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let r = Array2::from_shape_fn((n, n), |_| next());
    Array2::from_shape_fn((n, n), |(i, j)| 0.5 * (r[(i, j)] + r[(j, i)]))
}
