//! VCUs on a GPU: four tasks, each running a 50 ms NVRTC kernel on its own stream, with
//! vcus = 0.5 (two run at once) and vcus = 1 (one at a time). The overlap is measured on
//! the GPU, from CUDA event timestamps, and printed.
//!
//! ```text
//! cargo run --release --example gpu_vcus
//! ```

use std::sync::Arc;

use parla::gpu::cudarc::driver::sys::CUevent_flags;
use parla::gpu::cudarc::driver::{CudaEvent, LaunchConfig, PushKernelArg};
use parla::prelude::*;

const SPIN: &str = r#"
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < ns);
}
"#;

const TASKS: usize = 4;
const KERNEL_MS: u64 = 50;

/// A timing event recorded on the current task's stream.
fn stamp(g: &parla::gpu::GpuContext) -> Result<CudaEvent, parla::gpu::Error> {
    let e = g
        .context()
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    e.record(g.stream())?;
    Ok(e)
}

/// Runs the tasks with `vcus` each; returns each kernel's (start, end) in ms on the GPU.
async fn run(vcus: f64) -> Result<Vec<(f32, f32)>, Box<dyn std::error::Error + Send + Sync>> {
    // A reference point on the GPU's clock.
    let origin = task(async {
        let g = parla::gpu::current().expect("a GPU task");
        let e = stamp(&g)?;
        g.synchronize().await?;
        Ok::<_, parla::gpu::Error>(e)
    })
    .placement(Placement::Gpu(0))
    .await??;
    let origin = Arc::new(origin);
    let handles: Vec<_> = (0..TASKS)
        .map(|_| {
            task(async move {
                let g = parla::gpu::current().expect("a GPU task");
                let f = g.kernel(SPIN, "spin")?;
                let start = stamp(&g)?;
                {
                    let ns = KERNEL_MS * 1_000_000;
                    let mut b = g.stream().launch_builder(&f);
                    b.arg(&ns);
                    // SAFETY: `spin` takes one unsigned long long.
                    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }?;
                }
                let end = stamp(&g)?;
                g.synchronize().await?;
                Ok::<_, parla::gpu::Error>((start, end))
            })
            .placement(Placement::Gpu(0))
            .vcus(vcus)
            .spawn()
        })
        .collect();
    let mut spans = Vec::new();
    for h in handles {
        let (s, e) = h.await??;
        spans.push((origin.elapsed_ms(&s)?, origin.elapsed_ms(&e)?));
    }
    Ok(spans)
}

/// The most kernels running at one instant.
fn max_overlap(spans: &[(f32, f32)]) -> usize {
    let mut edges: Vec<(f32, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0, 0);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let rt = parla::Runtime::builder().build()?;
    if !rt.has_real_gpus() {
        println!("gpu_vcus needs a CUDA GPU (none found): nothing to show on this machine.");
        return Ok(());
    }
    println!("{}", rt.describe_devices()[1]);
    for vcus in [0.5, 1.0] {
        let spans = rt.block_on(run(vcus))?;
        println!("\nvcus = {vcus}: {TASKS} tasks, {KERNEL_MS} ms kernels, times on the GPU clock");
        for (i, (s, e)) in spans.iter().enumerate() {
            println!("  task {i}: kernel from {s:8.2} ms to {e:8.2} ms");
        }
        let first = spans.iter().map(|s| s.0).fold(f32::MAX, f32::min);
        let last = spans.iter().map(|s| s.1).fold(f32::MIN, f32::max);
        println!(
            "  at most {} kernels ran at once; all done in {:.1} ms",
            max_overlap(&spans),
            last - first
        );
    }
    Ok(())
}
