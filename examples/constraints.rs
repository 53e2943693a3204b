//! Task constraints (the Parla tutorial's `12_task_constraints`): five matrix-vector products
//! of size N = 10000 and a sum, with VCUs limiting how many run at once. Run with vcus = 1
//! (serial) and vcus = 0.25 (up to four at once), printing the start and finish order and
//! the elapsed time of each.
//!
//! ```text
//! cargo run --release --example constraints            # N = 10000 (800 MB per matrix)
//! cargo run --release --example constraints -- 2000    # a smaller N
//! ```

use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array1, Array2};
use parla::prelude::*;

const TASKS: usize = 5;

/// `len` deterministic pseudo-random numbers in [0, 1) (xorshift), so runs are comparable.
fn random(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// Generates the inputs in parallel, one task per array.
async fn inputs(n: usize) -> Result<(Vec<Array1<f64>>, Vec<Array2<f64>>), TaskError> {
    let vs: Vec<_> = (0..TASKS)
        .map(|i| task(async move { Array1::from_vec(random(n, i as u64 + 1)) }).spawn())
        .collect();
    let ms: Vec<_> = (0..TASKS)
        .map(|i| {
            task(async move {
                Array2::from_shape_vec((n, n), random(n * n, i as u64 + 100))
                    .expect("n * n elements")
            })
            .spawn()
        })
        .collect();
    let mut vectors = Vec::new();
    for h in vs {
        vectors.push(h.await?);
    }
    let mut matrices = Vec::new();
    for h in ms {
        matrices.push(h.await?);
    }
    Ok((vectors, matrices))
}

async fn run(
    cost: f64,
    vectors: Arc<Vec<Array1<f64>>>,
    matrices: Arc<Vec<Array2<f64>>>,
) -> Result<f64, TaskError> {
    let t = TaskSpace::new("T");
    let start = Instant::now();
    for i in 0..TASKS {
        let (v, m) = (vectors.clone(), matrices.clone());
        task(async move {
            println!("Starting: {}", current_task().expect("task"));
            let out = m[i].dot(&v[i]);
            println!("Completed: {}", current_task().expect("task"));
            out
        })
        .id(t.at(i))
        .placement(Placement::Cpu)
        .vcus(cost)
        .spawn();
    }
    let v = vectors.clone();
    let sum = task(async move {
        println!("Starting sum");
        let s: Array1<f64> = v.iter().fold(Array1::zeros(v[0].len()), |acc, x| acc + x);
        println!("Finished sum");
        s.sum()
    })
    .id(t.at("sum"))
    .after(t.range(0..TASKS))
    .vcus(cost)
    .spawn();
    let total = sum.await?;
    t.await?;
    let elapsed = start.elapsed().as_secs_f64();
    println!("Elapsed Time: {elapsed:.3} s (sum of the vectors: {total:.1})");
    Ok(elapsed)
}

const USAGE: &str = "usage: constraints [N]   (N: the vectors' length, default 10000)";

fn main() -> std::process::ExitCode {
    if let Some(extra) = std::env::args().nth(2) {
        eprintln!("error: unexpected argument {extra:?}\n{USAGE}");
        return std::process::ExitCode::FAILURE;
    }
    let n = match std::env::args().nth(1).as_deref() {
        None => 10_000,
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Some(a) => match a.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("error: N must be a positive number, got {a:?}\n{USAGE}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    match run_all(n) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_all(n: usize) -> parla::Result<()> {
    let rt = parla::Runtime::builder().build()?;
    // The inputs: TASKS matrices of n x n and TASKS vectors of n, 8 bytes an element.
    let bytes = n
        .checked_mul(n)
        .and_then(|e| e.checked_add(n))
        .and_then(|e| e.checked_mul(TASKS * 8));
    let budget = rt.memory_budget(Device::CPU).unwrap_or(u64::MAX);
    match bytes {
        Some(b) if b as u64 <= budget => {}
        _ => {
            return Err(parla::Error::InvalidArgument(format!(
                "N = {n}: the inputs take {} bytes, more than the host's budget of {budget}",
                bytes.map_or("more than 2^64".to_string(), |b| b.to_string())
            )));
        }
    }
    println!("N = {n}, {} CPU worker threads", rt.cpu_threads());
    let gen_start = Instant::now();
    let (vectors, matrices) = rt.block_on(inputs(n))?;
    let (vectors, matrices) = (Arc::new(vectors), Arc::new(matrices));
    println!(
        "generated the inputs in {:.2} s",
        gen_start.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for cost in [1.0, 0.25] {
        println!("\n--- vcus = {cost} ---");
        let t = rt.block_on(run(cost, vectors.clone(), matrices.clone()))?;
        times.push((cost, t));
    }
    println!();
    for (cost, t) in &times {
        println!("vcus = {cost:<5} elapsed {t:.3} s");
    }
    Ok(())
}
