//! PArray copies against raw cudarc copies, in the same run: host to device, device to
//! host and GPU to GPU bandwidth through tasks that only declare their accesses, and a
//! pipeline of tiles in which copies overlap compute.
//!
//! ```text
//! cargo bench --bench arrays                 # 64 MiB, 256 MiB, 1 GiB
//! cargo bench --bench arrays -- 16 64        # sizes in MiB
//! PARLA_TRACE=arrays.json cargo bench --bench arrays   # the pipeline in a Perfetto trace
//! ```
//!
//! Each PArray row times a batch of tasks, one per array, from spawn to completion: GPU
//! tasks reading their arrays (copies from page-locked host memory on their streams), CPU
//! tasks reading arrays GPU tasks wrote (copies to the host, awaited without blocking a
//! worker), tasks on GPU 1 reading what tasks on GPU 0 wrote (peer copies). Between runs,
//! untimed, tasks write the arrays where the next run must copy them from. The raw rows
//! make the same copies with cudarc, enqueued on one stream of their own (page-locked host
//! memory, peer access on, a fresh device buffer each time, as the PArray rows get) and
//! wait for them.

use std::time::{Duration, Instant};

use ndarray::Array1;
use parla::array::PArray;
use parla::gpu::cudarc::driver::{CudaContext, PushKernelArg};
use parla::prelude::*;

type Arr = PArray<f64, ndarray::Ix1>;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

const REPS: usize = 7;

/// Median of `REPS` timed runs of `run` (after one warm-up), each after an untimed `prep`.
fn time(mut prep: impl FnMut(), mut run: impl FnMut()) -> Duration {
    prep();
    run();
    median(
        (0..REPS)
            .map(|_| {
                prep();
                let t = Instant::now();
                run();
                t.elapsed()
            })
            .collect(),
    )
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Arrays copied at once in a bandwidth row.
const BATCH: usize = 4;

/// A task on `place` that only declares `access` to `a`.
fn touch(rt: &parla::Runtime, a: &Arr, place: Placement, write: bool) {
    touch_all(rt, std::slice::from_ref(a), place, write);
}

/// One task per array, on `place`, each only declaring a read or a write of its array;
/// spawned together and awaited.
fn touch_all(rt: &parla::Runtime, arrays: &[Arr], place: Placement, write: bool) {
    rt.block_on(async {
        let hs: Vec<_> = arrays
            .iter()
            .map(|a| {
                let t = task(async {}).placement(place);
                if write { t.writes(a) } else { t.reads(a) }.spawn()
            })
            .collect();
        for h in hs {
            h.await.expect("task");
        }
    });
}

const SCALE: &str = r#"
extern "C" __global__ void scale(double *x, double k, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (long)gridDim.x * blockDim.x) { x[i] = x[i] * k + 1.0; }
}
"#;

/// Scales the task's copy of `a` on its GPU, `passes` times (a kernel of some length).
fn scale(a: &Arr, passes: usize) -> parla::Result<()> {
    use parla::gpu::cudarc::driver::LaunchConfig;
    let gpu = parla::gpu::current().expect("a GPU task");
    let f = gpu.kernel(SCALE, "scale")?;
    let mut x = a.device_mut()?;
    let (k, n) = (0.5f64, a.len() as i64);
    for _ in 0..passes {
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(&mut *x).arg(&k).arg(&n);
        let cfg = LaunchConfig {
            grid_dim: (1024, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's (double*, double, long); the buffer
        // holds n doubles.
        unsafe { l.launch(cfg) }.map_err(parla::gpu::Error::from)?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<usize> = {
        let a: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if a.is_empty() { vec![64, 256, 1024] } else { a }
    };
    let rt = parla::Runtime::new()?;
    if !rt.has_real_gpus() {
        println!("arrays: no CUDA GPU found; this benchmark measures GPU copies, skipped.");
        return Ok(());
    }
    let gpus = rt.gpus();
    // Raw cudarc, on streams of its own (the runtime enabled peer access between the GPUs).
    let ctx0 = CudaContext::new(0)?;
    let s0 = ctx0.new_stream()?;
    let s1 = if gpus > 1 {
        Some(CudaContext::new(1)?.new_stream()?)
    } else {
        None
    };

    println!(
        "PArray copies vs raw cudarc: {BATCH} arrays copied at once (GB/s, median of {REPS}); {gpus} GPU(s)"
    );
    println!(
        "{:<18} {:>9} | {:>9} {:>9} | {:>6}",
        "copy", "MiB each", "PArray", "raw", "ratio"
    );
    for &mib in &sizes {
        let n = mib * (1 << 20) / 8;
        let bytes = BATCH * n * 8;
        let arrays: Vec<Arr> = (0..BATCH)
            .map(|_| PArray::from(Array1::from_elem(n, 1.0)))
            .collect();
        // Host to device: the host copies are valid, tasks on GPU 0 read them.
        let p = time(
            || touch_all(&rt, &arrays, Placement::Cpu, true),
            || touch_all(&rt, &arrays, Placement::Gpu(0), false),
        );
        let mut pinned = Vec::new();
        for _ in 0..BATCH {
            // SAFETY: a fresh page-locked buffer, written in full right below.
            let mut p = unsafe { ctx0.alloc_pinned_with_flags::<f64>(n, 0) }?;
            p.as_mut_slice()?.fill(1.0);
            pinned.push(p);
        }
        let r = time(
            || {},
            || {
                let mut ds = Vec::new();
                for p in &pinned {
                    // SAFETY: written in full by the copy right after.
                    let mut d = unsafe { s0.alloc::<f64>(n) }.expect("alloc");
                    s0.memcpy_htod(p, &mut d).expect("copy");
                    ds.push(d);
                }
                s0.synchronize().expect("sync");
            },
        );
        row("host -> gpu", mib, bytes, p, r);
        // Device to host: tasks on GPU 0 wrote, CPU tasks read.
        let p = time(
            || touch_all(&rt, &arrays, Placement::Gpu(0), true),
            || touch_all(&rt, &arrays, Placement::Cpu, false),
        );
        let srcs: Vec<_> = (0..BATCH)
            .map(|_| s0.alloc_zeros::<f64>(n).expect("alloc"))
            .collect();
        let r = time(
            || {},
            || {
                for (d, p) in srcs.iter().zip(pinned.iter_mut()) {
                    s0.memcpy_dtoh(d, p).expect("copy");
                }
                s0.synchronize().expect("sync");
            },
        );
        row("gpu -> host", mib, bytes, p, r);
        // GPU to GPU: tasks on GPU 0 wrote, tasks on GPU 1 read.
        if let Some(s1) = &s1 {
            let p = time(
                || touch_all(&rt, &arrays, Placement::Gpu(0), true),
                || touch_all(&rt, &arrays, Placement::Gpu(1), false),
            );
            let r = time(
                || {},
                || {
                    let mut ds = Vec::new();
                    for d in &srcs {
                        // SAFETY: written in full by the copy right after.
                        let mut to = unsafe { s1.alloc::<f64>(n) }.expect("alloc");
                        s1.memcpy_dtod(d, &mut to).expect("copy");
                        ds.push(to);
                    }
                    s1.synchronize().expect("sync");
                },
            );
            row("gpu 0 -> gpu 1", mib, bytes, p, r);
        }
    }

    // A pipeline of tiles: each tile copied in, scaled on GPU 0, read back on the CPU.
    // Spawned all at once, the copies of one tile overlap the kernels of others; awaited one
    // tile at a time, nothing overlaps.
    let tiles = 16;
    let n = 16 * (1 << 20) / 8;
    let passes = 8;
    let parts: Vec<Arr> = (0..tiles)
        .map(|_| PArray::from(Array1::from_elem(n, 1.0)))
        .collect();
    let run_tile = |a: &Arr| {
        let b = a.clone();
        let gpu = task(async move { scale(&b, passes) })
            .reads_writes(a)
            .placement(Placement::Gpu(0));
        let c = a.clone();
        let back = task(async move { Ok::<_, parla::Error>(c.read()?[0]) }).reads(a);
        (gpu, back)
    };
    let reset = || {
        for a in &parts {
            touch(&rt, a, Placement::Cpu, true);
        }
    };
    let serial = time(reset, || {
        rt.block_on(async {
            for a in &parts {
                let (g, b) = run_tile(a);
                g.await.expect("task").expect("scale");
                b.await.expect("task").expect("read");
            }
        })
    });
    let pipelined = time(reset, || {
        rt.block_on(async {
            let hs: Vec<_> = parts
                .iter()
                .map(|a| {
                    let (g, b) = run_tile(a);
                    (g.spawn(), b.spawn())
                })
                .collect();
            for (g, b) in hs {
                g.await.expect("task").expect("scale");
                b.await.expect("task").expect("read");
            }
        })
    });
    println!(
        "pipeline: {tiles} tiles of 16 MiB (copy in, {passes} kernels, copy out): one at a time {:.1} ms, all spawned {:.1} ms: {:.2}x",
        serial.as_secs_f64() * 1e3,
        pipelined.as_secs_f64() * 1e3,
        serial.as_secs_f64() / pipelined.as_secs_f64()
    );
    Ok(())
}

fn row(what: &str, mib: usize, bytes: usize, parla: Duration, raw: Duration) {
    let (p, r) = (gbps(bytes, parla), gbps(bytes, raw));
    println!("{what:<18} {mib:>9} | {p:>9.1} {r:>9.1} | {:>6.2}", p / r);
}
