//! A pipeline of CPU tasks connected by channels, with more stages than the CPU runs at
//! once: each stage is a task with the default VCUs (one worker's share), so only as many
//! stages as there are workers hold VCUs at a time. A stage waiting on its channel lends
//! its VCUs to the stages that need them, and a stage woken by the one before it takes
//! over that one's VCUs when it waits in turn - nothing hangs, and items keep flowing.
//!
//! ```sh
//! cargo run --release --example pipeline [-- items [stages]]
//! ```

use std::time::Instant;

use parla::prelude::*;
use tokio::sync::mpsc;

/// A little work per item and stage, so that the stages are not empty.
fn step(x: u64) -> u64 {
    x.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 1
}

const USAGE: &str =
    "usage: pipeline [ITEMS [STAGES]]   (default 100000 items, 4 stages per worker)";

/// Argument `i` (from 1) as a number of at least 1, if given.
fn count(args: &[String], i: usize, what: &str) -> Result<Option<u64>, String> {
    match args.get(i) {
        None => Ok(None),
        Some(a) => match a.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!("{what} must be a number of at least 1, got {a:?}")),
        },
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    let parsed = count(&args, 1, "ITEMS").and_then(|items| {
        let stages = count(&args, 2, "STAGES")?;
        if args.len() > 3 {
            return Err(format!("unexpected argument {:?}", args[3]));
        }
        Ok((items.unwrap_or(100_000), stages))
    });
    let (items, stages) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(items, stages) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(items: u64, stages: Option<u64>) -> parla::Result<()> {
    let rt = parla::Runtime::new()?;
    let workers = rt.cpu_threads();
    let stages = stages.map_or(4 * workers, |s| s as usize);
    let start = Instant::now();
    let (sum, expected) = rt.block_on(async move {
        // Stage k reads from rxs[k] and writes to the next stage's channel.
        let (first_tx, mut rx) = mpsc::channel::<u64>(16);
        let mut stage_handles = Vec::with_capacity(stages);
        for _ in 0..stages {
            let (tx, next_rx) = mpsc::channel::<u64>(16);
            let mut input = std::mem::replace(&mut rx, next_rx);
            stage_handles.push(
                task(async move {
                    while let Some(x) = input.recv().await {
                        if tx.send(step(x)).await.is_err() {
                            break;
                        }
                    }
                })
                .spawn(),
            );
        }
        let source = task(async move {
            for i in 0..items {
                first_tx.send(i).await.expect("the pipeline is up");
            }
        })
        .spawn();
        let sink = task(async move {
            let mut sum = 0u64;
            while let Some(x) = rx.recv().await {
                sum = sum.wrapping_add(x);
            }
            sum
        })
        .spawn();
        source.await?;
        for h in stage_handles {
            h.await?;
        }
        let sum = sink.await?;
        let expected = (0..items)
            .map(|i| (0..stages).fold(i, |x, _| step(x)))
            .fold(0u64, u64::wrapping_add);
        Ok::<_, TaskError>((sum, expected))
    })?;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(sum, expected, "every item went through every stage");
    println!(
        "{items} items through {stages} stages on {workers} workers in {secs:.2} s \
         ({:.0} ns per item and stage); checksum {sum:#x} ok",
        secs * 1e9 / (items as f64 * stages as f64)
    );
    Ok(())
}
