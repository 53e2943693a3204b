//! Data that moves itself (the Parla tutorial's PArray): one array updated in turn by a CPU
//! task, a GPU task and a second GPU task. Each task only declares what it reads and
//! writes; the runtime orders the tasks by those accesses, copies the array to where each
//! runs, and keeps one coherent value. After each step the example prints where valid
//! copies are, and at the end it checks the values.
//!
//! ```text
//! cargo run --release --example arrays
//! ```
//!
//! On a GPU the update is a CUDA kernel on the task's copy; elsewhere (the CPU, virtual GPUs
//! on a machine without CUDA) a host loop: one function with a GPU variant. Without CUDA
//! the example uses two virtual GPUs, which keep copies of their own in host memory, and
//! says so.

use ndarray::{Array1, Ix1};
use parla::array::PArray;
use parla::prelude::*;

/// Elements in the array.
const N: usize = 1 << 20;

/// Adds `k` to every element of the running task's copy of `a`.
#[parla::specialize]
fn add(a: &PArray<f64, Ix1>, k: f64) -> parla::Result<()> {
    a.write()?.mapv_inplace(|x| x + k);
    Ok(())
}

#[cfg(feature = "cuda")]
const ADD: &str = r#"
extern "C" __global__ void add(double *x, double k, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { x[i] += k; }
}
"#;

#[cfg(feature = "cuda")]
#[parla::variant(add, gpu)]
fn add_gpu(a: &PArray<f64, Ix1>, k: f64) -> parla::Result<()> {
    use parla::gpu::cudarc::driver::{LaunchConfig, PushKernelArg};
    let gpu = parla::gpu::current().expect("a GPU task");
    let f = gpu.kernel(ADD, "add")?;
    let mut x = a.device_mut()?;
    let n = a.len() as i32;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&mut *x).arg(&k).arg(&n);
    // SAFETY: the arguments match the kernel's (double*, double, int), and the buffer
    // holds n doubles.
    unsafe { launch.launch(LaunchConfig::for_num_elems(n as u32)) }
        .map_err(parla::gpu::Error::from)?;
    Ok(())
}

fn where_valid(a: &PArray<f64, Ix1>) -> String {
    let v: Vec<String> = a.valid_devices().iter().map(|d| d.to_string()).collect();
    v.join(", ")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rt = parla::Runtime::builder().build()?;
    if rt.gpus() == 0 {
        println!("No CUDA GPU found: using 2 virtual GPUs (simulated devices, run on the host).");
        rt = parla::Runtime::builder().virtual_gpus(2, 1 << 30).build()?;
    }
    let second = if rt.gpus() > 1 { 1 } else { 0 };
    let a = PArray::from(Array1::from_shape_fn(N, |i| i as f64));
    println!("start: valid on {}", where_valid(&a));
    let steps = [
        ("a CPU task adds 1", Placement::Cpu, 1.0),
        ("a GPU task adds 10", Placement::Gpu(0), 10.0),
        ("a second GPU task adds 100", Placement::Gpu(second), 100.0),
    ];
    let host = rt.block_on(async {
        for (what, place, k) in steps {
            let b = a.clone();
            let ran_on = task(async move {
                add(&b, k)?;
                Ok::<_, parla::Error>(current_device())
            })
            .reads_writes(&a)
            .placement(place)
            .await??;
            println!("{what} on {ran_on}: valid on {}", where_valid(&a));
        }
        // Back on the host: a read task, ordered after the last write.
        let host = a.to_host().await?;
        println!("read back: valid on {}", where_valid(&a));
        Ok::<_, parla::Error>(host)
    })?;
    let wrong = host
        .iter()
        .enumerate()
        .filter(|&(i, &x)| x != i as f64 + 111.0)
        .count();
    println!("{N} elements, each i + 111: {wrong} wrong");
    if wrong > 0 {
        return Err(format!("{wrong} elements differ from i + 111").into());
    }
    Ok(())
}
