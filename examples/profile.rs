//! Profiling a task graph: parla-rs's trace layer next to your own logs, spans inside task
//! bodies nested in the tasks' slices, and the summary.
//!
//! ```sh
//! cargo run --release --example profile -- trace.json
//! cargo run --release --bin parla-timeline -- trace.json timeline.svg
//! ```
//!
//! Open `trace.json` in <https://ui.perfetto.dev> for the same picture with the dependency
//! arrows; `RUST_LOG`-style filtering is left out to keep the example short: the `fmt` layer
//! here prints `INFO` and above.

use std::time::{Duration, Instant};

use parla::prelude::*;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

/// Work that takes `d` of CPU time.
fn busy(d: Duration) -> u64 {
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < d {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    x
}

const USAGE: &str = "usage: profile [TRACE_FILE]   (default trace.json)";

fn main() -> std::process::ExitCode {
    if let Some(extra) = std::env::args().nth(2) {
        eprintln!("error: unexpected argument {extra:?}\n{USAGE}");
        return std::process::ExitCode::FAILURE;
    }
    let path = match std::env::args().nth(1) {
        None => "trace.json".to_string(),
        Some(a) if a == "-h" || a == "--help" => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Some(a) if a.starts_with('-') => {
            eprintln!("error: unknown option {a:?}\n{USAGE}");
            return std::process::ExitCode::FAILURE;
        }
        Some(a) => a,
    };
    match run(&path) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    // parla-rs's layer takes the task events (TRACE level); the fmt layer gets its own
    // filter, so that it prints only the program's INFO logs.
    let (trace, guard) = parla::trace::layer(path)?;
    tracing_subscriber::registry()
        .with(trace)
        .with(tracing_subscriber::fmt::layer().with_filter(LevelFilter::INFO))
        .init();

    let rt = parla::Runtime::builder().build()?;
    rt.block_on(async {
        let load = TaskSpace::new("load");
        let work = TaskSpace::new("work");
        for i in 0..8 {
            task(async move { busy(Duration::from_millis(5 + i)) })
                .id(load.at(i))
                .spawn();
            task(async move {
                // A span of yours: it shows inside this task's slice.
                let parsed = tracing::info_span!("parse", part = i)
                    .in_scope(|| busy(Duration::from_millis(3)));
                tracing::info!(part = i, "parsed");
                parsed ^ busy(Duration::from_millis(4))
            })
            .id(work.at(i))
            .after(load.at(i))
            .spawn();
        }
        let total = task(async { busy(Duration::from_millis(2)) })
            .after(work.range(0..8))
            .await?;
        tracing::info!(total, "reduced");
        Ok::<_, TaskError>(())
    })?;
    drop(rt);
    println!("{}", guard.summary());
    drop(guard);
    println!(
        "trace written to {path}; draw it with parla-timeline, or open it in https://ui.perfetto.dev"
    );
    Ok(())
}
