//! Tiled Cholesky factorisation (`A = L L^T`) of a symmetric positive definite matrix on the
//! task graph: one task per tile kernel (POTRF, TRTRI, TRSM, SYRK, GEMM), tiles as PArrays, the
//! kernels as function variants (faer on the CPU, cuSOLVER / cuBLAS on a GPU). The
//! algorithm is `parla::linalg::cholesky::cholesky`; this program runs it and reports.
//!
//! ```text
//! cargo run --release --example cholesky -- [--n 4096] [--block B] [--gpus G]
//!     [--placement any|cpu|gpu] [--check] [--trace trace.json] [--seed S] [--reps R]
//! ```
//!
//! - `--placement any` (the default): each task may run on the CPU or on its tile's GPU;
//!   the mapping policy picks. `cpu`: the CPU only. `gpu`: the GPUs only.
//! - With several GPUs (`--gpus`, default all), tiles are distributed 2-D block-cyclic and
//!   every task runs where the tile it writes lives; tiles it reads from another GPU are
//!   copied peer to peer, after the writer's event, on the task's stream.
//! - `--check` gathers `L` on the host and prints `||A - L L^T||_F / ||A||_F` (< 1e-12).
//! - `--trace FILE` writes a Perfetto / Chrome trace of every task.
//! - `--reps R` factors the matrix R times (regenerated in place before each run) and
//!   prints each time: the first run also loads cuBLAS / cuSOLVER and creates their
//!   handles.
//!
//! The matrix is generated where its tiles live (a kernel on a GPU), so the timing is the
//! factorisation alone, with the data already on the devices.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parla::linalg::cholesky::{
    block_cyclic, cholesky, cholesky_flops, cholesky_residual, fill_spd_tiles, spd_matrix,
    spd_tiles,
};
use parla::{Device, Placement, Placements};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Where {
    Any,
    Cpu,
    Gpu,
}

#[derive(Debug)]
struct Options {
    n: usize,
    block: Option<usize>,
    gpus: Option<usize>,
    place: Where,
    check: bool,
    trace: Option<String>,
    seed: u64,
    reps: usize,
}

const USAGE: &str = "usage: cholesky [--n N] [--block B] [--gpus G] [--placement any|cpu|gpu] \
                     [--check] [--trace FILE] [--seed S] [--reps R]";

/// The options, or `None` for `--help`.
fn parse() -> Result<Option<Options>, String> {
    let mut o = Options {
        n: 4096,
        block: None,
        gpus: None,
        place: Where::Any,
        check: false,
        trace: None,
        seed: 1,
        reps: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        let number = |name: &str, v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{name} takes a number, not {v:?}\n{USAGE}"))
        };
        match a.as_str() {
            "--n" => o.n = number("--n", value("--n")?)?,
            "--block" => o.block = Some(number("--block", value("--block")?)?),
            "--gpus" => o.gpus = Some(number("--gpus", value("--gpus")?)?),
            "--seed" => o.seed = number("--seed", value("--seed")?)? as u64,
            "--reps" => o.reps = number("--reps", value("--reps")?)?.max(1),
            "--placement" => {
                o.place = match value("--placement")?.as_str() {
                    "any" => Where::Any,
                    "cpu" => Where::Cpu,
                    "gpu" => Where::Gpu,
                    other => {
                        return Err(format!("--placement takes any, cpu or gpu, not {other:?}"));
                    }
                }
            }
            "--check" => o.check = true,
            "--trace" => o.trace = Some(value("--trace")?),
            "--help" | "-h" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.n == 0 || o.block == Some(0) {
        return Err("--n and --block take positive numbers".into());
    }
    Ok(Some(o))
}

/// The tile size used when `--block` is not given: large enough that each kernel keeps
/// its device busy, small enough that the graph has parallelism.
fn default_block(n: usize, gpus: bool) -> usize {
    if gpus {
        match n {
            0..=4096 => 512,
            4097..=8192 => 1024,
            8193..=32768 => 2048,
            _ => 4096,
        }
    } else {
        match n {
            0..=1024 => 128,
            _ => 256,
        }
    }
    .min(n)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let Some(o) = parse()? else {
        println!("{USAGE}");
        return Ok(());
    };
    let mut b = parla::Runtime::builder();
    match (o.place, o.gpus) {
        (Where::Cpu, _) => b = b.gpus([]),
        (_, Some(g)) => b = b.gpus(0..g),
        (_, None) => {}
    }
    if let Some(path) = &o.trace {
        b = b.trace(path);
    }
    let rt = b.build().map_err(|e| match o.gpus {
        // (The GPUs asked for by count: say which option asked.)
        Some(g) if o.place != Where::Cpu => format!("--gpus {g}: {e}"),
        _ => e.to_string(),
    })?;
    let gpus = rt.gpus();
    if let Some(g) = o.gpus
        && g > gpus
    {
        return Err(format!("--gpus {g}: this machine has {gpus} CUDA GPU(s)").into());
    }
    if o.place == Where::Gpu && gpus == 0 {
        return Err(
            "--placement gpu needs a CUDA GPU; this machine has none (try --placement cpu)".into(),
        );
    }
    // The matrix is made on the host: it must fit there (and the counts below in a usize).
    let budget = rt.memory_budget(parla::Device::CPU).unwrap_or(u64::MAX);
    let bytes = o.n.checked_mul(o.n).and_then(|e| e.checked_mul(8));
    if !matches!(bytes, Some(b) if b as u64 <= budget) {
        return Err(format!(
            "--n {}: the matrix takes {} bytes, more than the host's budget of {budget}",
            o.n,
            bytes.map_or("more than 2^64".to_string(), |b| b.to_string())
        )
        .into());
    }
    // (A tile larger than the matrix is the matrix.)
    let block = o
        .block
        .unwrap_or_else(|| default_block(o.n, gpus > 0))
        .min(o.n);
    let t = o.n.div_ceil(block);
    let owner = block_cyclic(gpus);
    let place = move |i: usize, j: usize| -> Placements {
        match o.place {
            Where::Cpu => Placements::CPU,
            Where::Gpu => owner(i, j),
            Where::Any if gpus == 0 => Placements::CPU,
            Where::Any => owner(i, j).with(Placement::Cpu),
        }
    };
    let devices: Vec<String> = rt.devices().iter().map(|d| d.to_string()).collect();
    println!(
        "tiled Cholesky: n = {}, {block} x {block} tiles ({t} x {t}), placement {}, devices {}",
        o.n,
        match o.place {
            Where::Any => "cpu or the tile's gpu",
            Where::Cpu => "cpu",
            Where::Gpu => "the tile's gpu (2-D block-cyclic)",
        },
        devices.join(", ")
    );
    let (panel, gemms) = (t * (t - 1) / 2, t * (t - 1) * t.saturating_sub(2) / 6);
    let tasks = 2 * t + 2 * panel + gemms;
    println!("tasks: {tasks} ({t} potrf, {t} trtri, {panel} trsm, {panel} syrk, {gemms} gemm)");
    let (n, seed) = (o.n, o.seed);
    let reps = o.reps;
    let (elapsed, l, homes) = rt.block_on(async move {
        let tiles = spd_tiles(n, block, seed, &place).await?;
        let mut elapsed = Duration::ZERO;
        for rep in 1..=reps {
            if rep > 1 {
                fill_spd_tiles(&tiles, seed, &place).await?;
            }
            // The bar appears for runs longer than a second.
            let bar =
                ProgressBar::with_draw_target(Some(tasks as u64), ProgressDrawTarget::hidden());
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} tasks, {elapsed}")
                    .map_err(|e| parla::Error::InvalidArgument(e.to_string()))?,
            );
            let t0 = Instant::now();
            cholesky(&tiles, &place, |done, _| {
                if bar.is_hidden() && t0.elapsed() > Duration::from_secs(1) {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                }
                bar.set_position(done as u64);
            })
            .await?;
            elapsed = t0.elapsed();
            bar.finish_and_clear();
            if reps > 1 {
                let secs = elapsed.as_secs_f64();
                println!(
                    "run {rep}: {secs:.3} s, {:.1} GFLOP/s{}",
                    cholesky_flops(n) / secs / 1e9,
                    if rep == 1 && gpus > 0 {
                        " (loads cuBLAS and cuSOLVER)"
                    } else {
                        ""
                    }
                );
            }
        }
        // Where each tile of L was written last (where it is valid).
        let mut homes: Vec<(Device, usize)> = Vec::new();
        for i in 0..t {
            for j in 0..=i {
                let d = tiles.get(i, j).valid_devices()[0];
                match homes.iter_mut().find(|(h, _)| *h == d) {
                    Some((_, c)) => *c += 1,
                    None => homes.push((d, 1)),
                }
            }
        }
        let l = if o.check {
            Some(tiles.to_host().await?)
        } else {
            None
        };
        Ok::<_, parla::Error>((elapsed, l, homes))
    })?;
    let secs = elapsed.as_secs_f64();
    println!(
        "factorised in {:.3} s: {:.1} GFLOP/s",
        secs,
        cholesky_flops(n) / secs / 1e9
    );
    let homes: Vec<String> = homes.iter().map(|(d, c)| format!("{d} {c}")).collect();
    println!("tiles of L by device: {}", homes.join(", "));
    if let Some(l) = l {
        let r = cholesky_residual(spd_matrix(n, seed).view(), l.view())?;
        println!("check: ||A - L L^T||_F / ||A||_F = {r:.2e} (bound 1e-12)");
        if r.is_nan() || r >= 1e-12 {
            return Err(format!("the residual {r:.2e} is over 1e-12").into());
        }
    }
    if let Some(path) = &o.trace {
        drop(rt);
        println!("trace written to {path} (open it in https://ui.perfetto.dev)");
    }
    Ok(())
}
