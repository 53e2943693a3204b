//! A minimal GPU task: host data in, result out. `y = a * x + y` on a GPU (an NVRTC-compiled
//! kernel), with a CPU variant of the same function so the program runs anywhere.
//!
//! ```text
//! cargo run --release --example saxpy
//! ```

use parla::prelude::*;

const SAXPY: &str = r#"
extern "C" __global__ void saxpy(float a, const float *x, float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { y[i] = a * x[i] + y[i]; }
}
"#;

/// `a * x + y`, on the GPU when the task runs on one, else on the CPU.
async fn saxpy(a: f32, x: Vec<f32>, mut y: Vec<f32>) -> Result<Vec<f32>, parla::gpu::Error> {
    use parla::gpu::cudarc::driver::{LaunchConfig, PushKernelArg};
    let Some(gpu) = parla::gpu::current() else {
        for (yi, xi) in y.iter_mut().zip(&x) {
            *yi += a * xi;
        }
        return Ok(y);
    };
    let s = gpu.stream();
    let dx = s.clone_htod(&x)?;
    let mut dy = s.clone_htod(&y)?;
    let f = gpu.kernel(SAXPY, "saxpy")?;
    let n = x.len() as i32;
    {
        let mut launch = s.launch_builder(&f);
        launch.arg(&a).arg(&dx).arg(&mut dy).arg(&n);
        // SAFETY: the arguments match the kernel's (float, const float*, float*, int), and
        // both buffers hold n elements.
        unsafe { launch.launch(LaunchConfig::for_num_elems(n as u32)) }?;
    }
    // Wait for the GPU without blocking the worker, then copy the result back.
    gpu.synchronize().await?;
    s.clone_dtoh(&dy).map_err(Into::into)
}

#[parla::main]
async fn main() -> parla::Result<()> {
    let n = 1 << 20;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let y = vec![1.0f32; n];
    let a = 2.0;
    let (out, device) = task(async move {
        let out = saxpy(a, x, y).await;
        (out, current_device())
    })
    .placement([Placement::AnyGpu, Placement::Cpu])
    .await?;
    let out = match out {
        Ok(v) => v,
        Err(e) => {
            eprintln!("saxpy failed on {device}: {e}");
            std::process::exit(1);
        }
    };
    let wrong = out
        .iter()
        .enumerate()
        .filter(|&(i, &v)| v != a * i as f32 + 1.0)
        .count();
    println!(
        "saxpy of {n} elements ran on {device}: y[0] = {}, y[{}] = {}, {wrong} wrong",
        out[0],
        n - 1,
        out[n - 1]
    );
    if wrong > 0 {
        std::process::exit(1);
    }
    Ok(())
}
