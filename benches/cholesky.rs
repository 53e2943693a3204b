//! Tiled Cholesky (`parla::linalg::cholesky`) against the vendor libraries, in the same run.
//!
//! - CPU: parla-rs tiles (faer kernels, one task each, on the runtime's workers) against
//!   faer's own Cholesky of the whole matrix (parallel, every core).
//! - One GPU: parla-rs tiles on GPU 0 (cuSOLVER potrf, cuBLAS trsm / syrk / gemm, one task
//!   each) against one cuSOLVER `dpotrf` call on the whole matrix. Both start with the
//!   matrix already on the GPU; parla-rs is timed from the first spawn until every task
//!   completed, cuSOLVER around the call and a stream synchronisation.
//! - Several GPUs: parla-rs tiles 2-D block-cyclic on 2 (and 4) GPUs against parla-rs on
//!   one GPU, at the largest n that fits one GPU well (98304 on an H200), each
//!   configuration in a fresh process.
//!
//! Medians of several runs after a warm-up; the matrix is regenerated (in place, where its
//! tiles live) before each run.
//!
//! ```text
//! cargo bench --bench cholesky
//! CHOLESKY_N=8192,16384 CHOLESKY_BLOCK=1024 cargo bench --bench cholesky   # other sizes
//! ```
//!
//! Settings (environment): `CHOLESKY_N` (GPU sizes, default 8192,16384,32768),
//! `CHOLESKY_BLOCK` (GPU tile size, default by n), `CHOLESKY_MULTI_N` (the multi-GPU size,
//! default the largest multiple of 16384 using at most 60% of a GPU's memory), `CHOLESKY_CPU_N` / `CHOLESKY_CPU_BLOCK` (4096 / 256),
//! `CHOLESKY_REPS` (3), `CHOLESKY_STREAMS` (streams per GPU), `CHOLESKY_TRACE=FILE` (a trace
//! of the GPU runs), `CHOLESKY_KERNELS=1` (each tile kernel alone first),
//! `CHOLESKY_SKIP_CPU=1`.

use std::time::{Duration, Instant};

use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use parla::Placements;
use parla::linalg::cholesky::{
    cholesky, cholesky_flops, cholesky_residual, fill_spd_tiles, spd_matrix, spd_tiles,
};

const SEED: u64 = 3;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn gflops(n: usize, t: Duration) -> f64 {
    cholesky_flops(n) / t.as_secs_f64() / 1e9
}

fn env_list(name: &str) -> Option<Vec<usize>> {
    let v = std::env::var(name).ok()?;
    Some(v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
}

/// The first number of setting `name`.
fn env_one(name: &str) -> Option<usize> {
    env_list(name).and_then(|v| v.first().copied())
}

fn reps() -> usize {
    env_one("CHOLESKY_REPS").unwrap_or(3)
}

/// parla-rs: generates the tiles where `place` puts them, then times `reps` factorisations
/// (after a warm-up), refilling the tiles before each. Returns the median and the tiles of
/// the last run.
fn parla_runs<P>(
    rt: &parla::Runtime,
    n: usize,
    block: usize,
    place: P,
) -> (Duration, parla::array::Tiles<f64>)
where
    P: Fn(usize, usize) -> Placements + Clone,
{
    rt.block_on(async {
        let tiles = spd_tiles(n, block, SEED, place.clone()).await?;
        let mut times = Vec::new();
        for rep in 0..=reps() {
            if rep > 0 {
                fill_spd_tiles(&tiles, SEED, place.clone()).await?;
            }
            let t0 = Instant::now();
            cholesky(&tiles, place.clone(), |_, _| {}).await?;
            if rep > 0 {
                times.push(t0.elapsed());
            }
        }
        Ok::<_, parla::Error>((median(times), tiles))
    })
    .expect("parla-rs cholesky")
}

fn cpu_rows(rows: &mut Vec<[String; 6]>) {
    let n = env_one("CHOLESKY_CPU_N").unwrap_or(4096);
    let block = env_one("CHOLESKY_CPU_BLOCK").unwrap_or(256);
    let rt = parla::Runtime::builder().gpus([]).build().expect("runtime");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (t_parla, tiles) = parla_runs(&rt, n, block, |_, _| Placements::CPU);
    let a = spd_matrix(n, SEED);
    let l = rt
        .block_on(async { tiles.to_host().await })
        .expect("gather L");
    let r = cholesky_residual(a.view(), l.view()).expect("residual");
    assert!(r < 1e-12, "parla-rs residual {r:.2e}");
    // faer on the whole matrix, every core.
    let whole = faer::Mat::<f64>::from_fn(n, n, |i, j| a[(i, j)]);
    let mut times = Vec::new();
    for rep in 0..=reps() {
        let mut m = whole.clone();
        let par = faer::Par::rayon(0);
        let mut mem = faer::dyn_stack::MemBuffer::new(cholesky_in_place_scratch::<f64>(
            n,
            par,
            Default::default(),
        ));
        let t0 = Instant::now();
        cholesky_in_place(
            m.as_mut(),
            Default::default(),
            par,
            faer::dyn_stack::MemStack::new(&mut mem),
            Default::default(),
        )
        .expect("positive definite");
        if rep > 0 {
            times.push(t0.elapsed());
        }
    }
    let t_faer = median(times);
    rows.push([
        format!("cpu ({cores} cores)"),
        n.to_string(),
        format!("{block}"),
        format!("{:.1}", gflops(n, t_parla)),
        format!("faer {:.1}", gflops(n, t_faer)),
        format!("{:.2}", t_faer.as_secs_f64() / t_parla.as_secs_f64()),
    ]);
    println!("cpu: parla-rs residual {r:.2e}");
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use parla::Placement;
    use parla::linalg::cholesky::{block_cyclic, fill_spd_raw};
    use parla::prelude::*;

    /// The multi-GPU rows' size: the largest multiple of 16384 whose matrix takes at most
    /// 60% of one GPU's memory budget (the one-GPU baseline holds all of it, with the
    /// diagonal inverses and the kernels' workspace): 98304 on an H200, 65536 on an H100.
    fn largest_n(budget: u64) -> usize {
        let mut n = 16384;
        while ((n + 16384) as f64).powi(2) * 8.0 <= 0.6 * budget as f64 {
            n += 16384;
        }
        n
    }

    /// The tile size for `n` on a GPU.
    pub fn block_for(n: usize) -> usize {
        if let Some(b) = env_one("CHOLESKY_BLOCK") {
            return b;
        }
        // Chosen from sweeps of 1024, 2048 and 4096 on an H200 (see the README).
        match n {
            0..=8192 => 1024,
            8193..=32768 => 2048,
            _ => 4096,
        }
    }

    /// One cuSOLVER `dpotrf` on the whole matrix on GPU 0, in one task: the matrix made on
    /// the GPU, then each run timed around the call and a stream synchronisation. Returns the
    /// median, and the factor's last `tail x tail` diagonal block (row-major lower).
    pub fn cusolver(rt: &parla::Runtime, n: usize, tail: usize) -> (Duration, Vec<f64>) {
        rt.block_on(
            task(async move {
                let gpu = parla::gpu::current().expect("a GPU task");
                let stream = gpu.stream().clone();
                // SAFETY: filled by the kernel below before the factorisation reads it.
                let mut a = unsafe { gpu.alloc_uninit::<f64>(n * n) }?;
                let mut info = gpu.alloc_zeros::<i32>(1)?;
                let mut times = Vec::new();
                for rep in 0..=reps() {
                    fill_spd_raw(&gpu, &mut a, (n, n), (0, 0), n, SEED)?;
                    stream.synchronize().map_err(parla::gpu::Error::from)?;
                    let t0 = Instant::now();
                    parla::gpu::solver::potrf(
                        gpu.solver()?,
                        parla::gpu::solver::Triangle::Lower,
                        n,
                        &mut a,
                        n,
                        &mut info,
                    )?;
                    stream.synchronize().map_err(parla::gpu::Error::from)?;
                    if rep > 0 {
                        times.push(t0.elapsed());
                    }
                }
                let status = gpu.download(&info)?[0];
                assert_eq!(status, 0, "cuSOLVER potrf status");
                // Column-major lower L: element (i, j) at j * n + i; the last `tail` columns
                // are the buffer's end.
                let s = n - tail;
                let cols = stream
                    .clone_dtoh(&a.slice(s * n..))
                    .map_err(parla::gpu::Error::from)?;
                let mut block = vec![0.0; tail * tail];
                for i in 0..tail {
                    for j in 0..=i {
                        block[i * tail + j] = cols[j * n + s + i];
                    }
                }
                Ok::<_, parla::Error>((median(times), block))
            })
            .placement(Placement::Gpu(0)),
        )
        .expect("task")
        .expect("cuSOLVER potrf")
    }

    /// Largest difference between two lower triangles, relative to the largest entry.
    fn lower_diff(a: &[f64], b: &[f64], t: usize) -> f64 {
        let (mut d, mut m) = (0.0f64, 0.0f64);
        for i in 0..t {
            for j in 0..=i {
                d = d.max((a[i * t + j] - b[i * t + j]).abs());
                m = m.max(a[i * t + j].abs());
            }
        }
        d / m
    }

    /// Each tile kernel alone on GPU 0 (`CHOLESKY_KERNELS=1`): ms and TFLOP/s per call.
    pub fn kernels(rt: &parla::Runtime) {
        use parla::gpu::blas::{GemmConfig, Side, SyrkConfig, Triangle, TrsmConfig};
        use parla::gpu::cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        for b in [512usize, 1024, 2048, 4096] {
            let out = rt
                .block_on(
                    task(async move {
                        let gpu = parla::gpu::current().expect("a GPU task");
                        let s = gpu.stream().clone();
                        let mut a = gpu.alloc_zeros::<f64>(b * b)?;
                        let mut l = gpu.alloc_zeros::<f64>(b * b)?;
                        let mut c = gpu.alloc_zeros::<f64>(b * b)?;
                        let mut info = gpu.alloc_zeros::<i32>(1)?;
                        let bi = b as i32;
                        let time = |f: &mut dyn FnMut() -> parla::Result<()>| {
                            let mut ts = Vec::new();
                            for _ in 0..6 {
                                s.synchronize().map_err(parla::gpu::Error::from)?;
                                let t0 = Instant::now();
                                f()?;
                                s.synchronize().map_err(parla::gpu::Error::from)?;
                                ts.push(t0.elapsed());
                            }
                            Ok::<_, parla::Error>(median(ts[1..].to_vec()))
                        };
                        fill_spd_raw(&gpu, &mut l, (b, b), (0, 0), b, 1)?;
                        let potrf = time(&mut || {
                            fill_spd_raw(&gpu, &mut a, (b, b), (0, 0), b, 1)?;
                            s.synchronize().map_err(parla::gpu::Error::from)?;
                            parla::gpu::solver::potrf(
                                gpu.solver()?,
                                Triangle::Upper,
                                b,
                                &mut a,
                                b,
                                &mut info,
                            )?;
                            Ok(())
                        })?;
                        let trsm = time(&mut || {
                            let cfg = TrsmConfig {
                                side: Side::Left,
                                triangle: Triangle::Upper,
                                transpose: true,
                                unit_diagonal: false,
                                m: bi,
                                n: bi,
                                alpha: 1.0,
                                lda: bi,
                                ldb: bi,
                            };
                            parla::gpu::blas::trsm(&gpu, &cfg, &a, &mut c)?;
                            Ok(())
                        })?;
                        let syrk = time(&mut || {
                            let cfg = SyrkConfig {
                                triangle: Triangle::Upper,
                                transpose: true,
                                n: bi,
                                k: bi,
                                alpha: -1.0,
                                lda: bi,
                                beta: 1.0,
                                ldc: bi,
                            };
                            parla::gpu::blas::syrk(&gpu, &cfg, &l, &mut c)?;
                            Ok(())
                        })?;
                        let gemm = time(&mut || {
                            let cfg = GemmConfig {
                                transa: CUBLAS_OP_T,
                                transb: CUBLAS_OP_N,
                                m: bi,
                                n: bi,
                                k: bi,
                                alpha: -1.0,
                                lda: bi,
                                ldb: bi,
                                beta: 1.0,
                                ldc: bi,
                            };
                            parla::gpu::blas::gemm(&gpu, cfg, &l, &a, &mut c)?;
                            Ok(())
                        })?;
                        Ok::<_, parla::Error>([potrf, trsm, syrk, gemm])
                    })
                    .placement(Placement::Gpu(0)),
                )
                .expect("task")
                .expect("kernels");
            let f = (b as f64).powi(3);
            let names = ["potrf", "trsm", "syrk", "gemm"];
            let flops = [f / 3.0, f, f, 2.0 * f];
            let line: Vec<String> = (0..4)
                .map(|i| {
                    format!(
                        "{} {:.3} ms {:.1} TF",
                        names[i],
                        out[i].as_secs_f64() * 1e3,
                        flops[i] / out[i].as_secs_f64() / 1e12
                    )
                })
                .collect();
            println!("kernel b = {b}: {}", line.join(", "));
        }
    }

    /// Times the tiled Cholesky of order `n` on `gpus` GPUs in a child process (this
    /// benchmark again, told by `CHOLESKY_CHILD`).
    fn multi_in_child(n: usize, block: usize, gpus: usize) -> Duration {
        let exe = std::env::current_exe().expect("the benchmark's path");
        let out = std::process::Command::new(exe)
            .env("CHOLESKY_CHILD", format!("{n},{block},{gpus}"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("start the child run");
        let text = String::from_utf8_lossy(&out.stdout);
        let secs = text
            .lines()
            .find_map(|l| l.strip_prefix("child seconds: "))
            .and_then(|s| s.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("the child run on {gpus} GPUs failed: {text}"));
        Duration::from_secs_f64(secs)
    }

    /// The child's side of [`multi_in_child`]: `n,block,gpus`.
    pub fn child(spec: &str) {
        let v: Vec<usize> = spec.split(',').filter_map(|s| s.parse().ok()).collect();
        let [n, block, gpus] = v[..] else {
            panic!("CHOLESKY_CHILD must be n,block,gpus, got {spec}");
        };
        let mut b = parla::Runtime::builder();
        if let Some(s) = env_one("CHOLESKY_STREAMS") {
            b = b.streams_per_gpu(s);
        }
        let rt = b.build().expect("runtime");
        let (t, tiles) = parla_runs(&rt, n, block, block_cyclic(gpus));
        drop(tiles);
        println!("child seconds: {}", t.as_secs_f64());
    }

    pub fn rows(rows: &mut Vec<[String; 6]>, notes: &mut Vec<String>) {
        let mut b = parla::Runtime::builder();
        if let Some(s) = env_one("CHOLESKY_STREAMS") {
            b = b.streams_per_gpu(s);
        }
        if let Ok(path) = std::env::var("CHOLESKY_TRACE") {
            b = b.trace(path);
        }
        let rt = b.build().expect("runtime");
        if rt.has_real_gpus() && std::env::var_os("CHOLESKY_KERNELS").is_some() {
            kernels(&rt);
        }
        if !rt.has_real_gpus() {
            notes.push("no CUDA GPU: GPU rows skipped".into());
            return;
        }
        let card = rt
            .block_on(
                task(async {
                    let gpu = parla::gpu::current().expect("a GPU task");
                    gpu.context().name().map_err(parla::gpu::Error::from)
                })
                .placement(Placement::Gpu(0)),
            )
            .expect("task")
            .expect("name");
        notes.push(format!("GPU rows: {} x {card}", rt.gpus()));
        let sizes = env_list("CHOLESKY_N").unwrap_or_else(|| vec![8192, 16384, 32768]);
        for &n in &sizes {
            let block = block_for(n);
            let (t_parla, tiles) = parla_runs(&rt, n, block, block_cyclic(1));
            // The last diagonal tile of parla-rs's factor against cuSOLVER's.
            let t = tiles.rows();
            let last = tiles.get(t - 1, t - 1).clone();
            let tail = last.shape()[0];
            let mine = rt
                .block_on(async move { last.to_host().await })
                .expect("read the last tile");
            drop(tiles);
            let (t_cusolver, theirs) = cusolver(&rt, n, tail);
            let diff = lower_diff(&theirs, mine.as_slice().expect("standard layout"), tail);
            notes.push(format!(
                "n = {n}: last diagonal tile of L, parla-rs against cuSOLVER: max relative difference {diff:.1e}"
            ));
            assert!(diff < 1e-10, "the factors differ: {diff:.1e}");
            rows.push([
                "1 GPU".into(),
                n.to_string(),
                block.to_string(),
                format!("{:.0}", gflops(n, t_parla)),
                format!("cuSOLVER {:.0}", gflops(n, t_cusolver)),
                format!("{:.2}", t_cusolver.as_secs_f64() / t_parla.as_secs_f64()),
            ]);
        }
        let gpus = rt.gpus();
        if gpus < 2 {
            notes.push("one GPU: no multi-GPU rows".into());
            return;
        }
        let budget = rt.memory_budget(Device::gpu(0)).unwrap_or(0);
        let n = env_one("CHOLESKY_MULTI_N").unwrap_or_else(|| largest_n(budget));
        let block = block_for(n);
        // Each configuration in a process of its own, started with nothing on the GPUs: in
        // one process the second configuration found device memory that the first had left
        // in the driver's pools (at n = 98304, 77 GB on GPU 0), and ran slower.
        drop(rt);
        let t_one = multi_in_child(n, block, 1);
        for g in [2, 4].into_iter().filter(|&g| g <= gpus) {
            let t_g = multi_in_child(n, block, g);
            rows.push([
                format!("{g} GPUs"),
                n.to_string(),
                block.to_string(),
                format!("{:.0}", gflops(n, t_g)),
                format!("parla-rs 1 GPU {:.0}", gflops(n, t_one)),
                format!("{:.2}", t_one.as_secs_f64() / t_g.as_secs_f64()),
            ]);
        }
    }
}

fn main() {
    #[cfg(feature = "cuda")]
    if let Ok(spec) = std::env::var("CHOLESKY_CHILD") {
        gpu::child(&spec);
        return;
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if std::env::var_os("CHOLESKY_SKIP_CPU").is_none() {
        cpu_rows(&mut rows);
    }
    #[cfg(feature = "cuda")]
    gpu::rows(&mut rows, &mut notes);
    println!();
    println!(
        "{:<14} {:>6} {:>6} {:>16} {:>24} {:>8}",
        "devices", "n", "block", "parla-rs GFLOP/s", "baseline GFLOP/s", "ratio"
    );
    for r in &rows {
        println!(
            "{:<14} {:>6} {:>6} {:>16} {:>24} {:>8}",
            r[0], r[1], r[2], r[3], r[4], r[5]
        );
    }
    println!("(ratio: baseline time / parla-rs time; above 1 means parla-rs is faster)");
    for n in notes {
        println!("{n}");
    }
}
