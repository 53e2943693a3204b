//! Symmetric eigendecomposition, three ways, in the same run: faer on the CPU
//! (`parla::linalg::eigh_cpu`), cuSOLVER `syevd` through a parla GPU task
//! (`clone_here` + `parla::linalg::eigh` in a task placed on the GPU), and raw cuSOLVER with
//! no runtime (cudarc: a copy to the GPU, `syevd`, a read of its status).
//!
//! Each GPU row times the same work from the host's side: the matrix copied from host
//! memory, the solve, its status read back; results stay on the GPU. Medians over several
//! runs after a warm-up.
//!
//! ```text
//! cargo bench --bench eigh            # n = 1000, 2000, 4000
//! cargo bench --bench eigh -- 500 1500
//! ```

use std::time::{Duration, Instant};

use ndarray::Array2;
use parla::array::{Here, clone_here};
use parla::gpu::cudarc::cusolver::{DnHandle, sys};
use parla::gpu::cudarc::driver::{CudaContext, CudaStream, DevicePtrMut};
use parla::linalg::{eigh, eigh_cpu, random_symmetric};
use parla::prelude::*;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Times `reps` runs of `f` after one warm-up run.
fn time(reps: usize, mut f: impl FnMut()) -> Duration {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Raw cuSOLVER: the row-major matrix copied to the GPU, `syevd` on the upper triangle (the
/// lower one of the row-major matrix, as `parla::linalg::eigh` reads), its status read.
fn raw_syevd(stream: &std::sync::Arc<CudaStream>, solver: &DnHandle, a: &Array2<f64>) {
    let n = a.nrows();
    let host = a.as_slice().expect("standard layout");
    let mut d_a = stream.clone_htod(host).expect("copy");
    let mut w = stream.alloc_zeros::<f64>(n).expect("alloc");
    let mut info = stream.alloc_zeros::<i32>(1).expect("alloc");
    let jobz = sys::cusolverEigMode_t::CUSOLVER_EIG_MODE_VECTOR;
    let uplo = sys::cublasFillMode_t::CUBLAS_FILL_MODE_UPPER;
    let n32 = n as i32;
    let (a_ptr, _ra) = d_a.device_ptr_mut(stream);
    let (w_ptr, _rw) = w.device_ptr_mut(stream);
    let (info_ptr, _ri) = info.device_ptr_mut(stream);
    let mut lwork = 0i32;
    // SAFETY: a size query on live device buffers of `n * n` and `n` f64s.
    unsafe {
        sys::cusolverDnDsyevd_bufferSize(
            solver.cu(),
            jobz,
            uplo,
            n32,
            a_ptr as *const f64,
            n32,
            w_ptr as *const f64,
            &mut lwork,
        )
    }
    .result()
    .expect("bufferSize");
    let mut work = stream.alloc_zeros::<f64>(lwork as usize).expect("alloc");
    let (work_ptr, _rk) = work.device_ptr_mut(stream);
    // SAFETY: every buffer is live, of the sizes syevd reads and writes (`n * n`, `n`,
    // `lwork`, 1), in the handle's stream's context; they outlive the stream sync below.
    unsafe {
        sys::cusolverDnDsyevd(
            solver.cu(),
            jobz,
            uplo,
            n32,
            a_ptr as *mut f64,
            n32,
            w_ptr as *mut f64,
            work_ptr as *mut f64,
            lwork,
            info_ptr as *mut i32,
        )
    }
    .result()
    .expect("syevd");
    drop((_ra, _rw, _ri, _rk));
    let status = stream.clone_dtoh(&info).expect("status")[0];
    assert_eq!(status, 0, "syevd converged");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() {
            vec![1000, 2000, 4000]
        } else {
            args
        }
    };
    let rt = parla::Runtime::new()?;
    if !rt.has_real_gpus() {
        println!("eigh: no CUDA GPU found; this benchmark compares CPU and GPU, skipped.");
        return Ok(());
    }
    let ctx = CudaContext::new(0)?;
    let stream = ctx.new_stream()?;
    let solver = DnHandle::new(stream.clone())?;
    println!(
        "eigh (symmetric, eigenvalues and eigenvectors), median ms; {} CPU workers",
        rt.cpu_threads()
    );
    println!(
        "{:>6} | {:>10} | {:>16} | {:>13} | {:>10} | {:>9}",
        "n", "faer CPU", "parla GPU task", "raw cuSOLVER", "parla/raw", "faer/raw"
    );
    for n in sizes {
        let a = std::sync::Arc::new(random_symmetric(n, n as u64));
        let (reps_gpu, reps_cpu) = match n {
            0..=1500 => (9, 3),
            1501..=3000 => (5, 2),
            _ => (3, 1),
        };
        let raw = time(reps_gpu, || raw_syevd(&stream, &solver, &a));
        let parla_gpu = time(reps_gpu, || {
            let a = a.clone();
            rt.block_on(async {
                task(async move {
                    let e = eigh(&clone_here(&*a)?)?;
                    assert!(!e.vectors.is_host(), "the GPU variant ran");
                    Ok::<_, parla::Error>(())
                })
                .placement(Placement::Gpu(0))
                .await
            })
            .expect("task")
            .expect("eigh");
        });
        let faer = time(reps_cpu, || {
            eigh_cpu(&Here::Host(a.view().into())).expect("eigh");
        });
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:>6} | {:>10.1} | {:>16.1} | {:>13.1} | {:>10.3} | {:>9.2}",
            n,
            ms(faer),
            ms(parla_gpu),
            ms(raw),
            ms(parla_gpu) / ms(raw),
            ms(faer) / ms(raw)
        );
    }
    Ok(())
}
