//! Function variants (the Parla tutorial's `13_function_variants`): one function with a
//! default implementation and a GPU variant, called by a CPU task and by a GPU task, each
//! on [`clone_here`] of its input - the same matrix, on the host for the one, copied to
//! its GPU for the other.
//!
//! ```text
//! cargo run --release --example variants
//! ```
//!
//! Both eigendecompositions are checked: `||A V - V diag(w)|| / ||A||` below `1e-10`, and
//! the two sets of eigenvalues equal to `1e-8`. On a machine without CUDA the GPU task runs
//! on a virtual GPU (simulated, on the host), where the default implementation runs; the
//! example says so.

use ndarray::Ix2;
use parla::array::{Here, clone_here};
use parla::linalg::{Eigh, eigh_cpu, eigh_residual, random_symmetric};
use parla::prelude::*;

/// The size of the matrix.
const N: usize = 1000;

#[parla::specialize]
fn function(a: &Here<'_, f64, Ix2>) -> parla::Result<Eigh> {
    println!("Running Default Implementation");
    eigh_cpu(a)
}

#[cfg(feature = "cuda")]
#[parla::variant(function, gpu)]
fn function_gpu(a: &Here<'_, f64, Ix2>) -> parla::Result<Eigh> {
    println!("Running GPU Implementation");
    parla::linalg::eigh_gpu(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rt = parla::Runtime::builder().build()?;
    if rt.gpus() == 0 {
        println!(
            "No CUDA GPU found: the GPU task runs on a virtual GPU (simulated, on the host), \
             with the default implementation."
        );
        rt = parla::Runtime::builder()
            .virtual_gpus(1, 16 << 30)
            .build()?;
    }
    let a = random_symmetric(N, 13);
    let b = a.clone();
    let (cpu, gpu) = rt.block_on(async {
        let t = TaskSpace::new("T");
        let t0 = task(async move {
            println!("Running CPU Task");
            let a_local = clone_here(&a)?;
            let c = function(&a_local)?;
            println!("Completed CPU Task");
            c.into_host()
        })
        .id(t.at(0))
        .placement(Placement::Cpu)
        .spawn();
        let t1 = task(async move {
            println!("Running GPU Task");
            let b_local = clone_here(&b)?;
            let c = function(&b_local)?;
            println!("Completed GPU Task");
            c.into_host()
        })
        .id(t.at(1))
        .after(t.at(0))
        .placement(Placement::AnyGpu)
        .spawn();
        (t0.await, t1.await)
    });
    let ((w_cpu, v_cpu), (w_gpu, v_gpu)) = (cpu??, gpu??);

    let a = random_symmetric(N, 13);
    let r_cpu = eigh_residual(a.view(), w_cpu.view(), v_cpu.view())?;
    let r_gpu = eigh_residual(a.view(), w_gpu.view(), v_gpu.view())?;
    let dw = w_cpu
        .iter()
        .zip(&w_gpu)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    println!("residual ||A V - V diag(w)|| / ||A||: CPU task {r_cpu:.2e}, GPU task {r_gpu:.2e}");
    println!("largest eigenvalue difference between the two: {dw:.2e}");
    if r_cpu >= 1e-10 || r_gpu >= 1e-10 || dw >= 1e-8 {
        return Err("the eigendecompositions do not meet the bounds (1e-10, 1e-8)".into());
    }
    Ok(())
}
