//! Values out of tasks, captured data in.
//!
//! ```text
//! cargo run --release --example returns
//! ```

use std::sync::Arc;

use parla::prelude::*;

#[parla::main]
async fn main() -> parla::Result<()> {
    // Data moves into a task's future; shared data goes in through an `Arc`.
    let data: Arc<Vec<f64>> = Arc::new((1..=1000).map(f64::from).collect());

    let halves: Vec<TaskHandle<f64>> = [0..500, 500..1000]
        .into_iter()
        .map(|r| {
            let data = data.clone();
            task(async move { data[r].iter().sum::<f64>() }).spawn()
        })
        .collect();

    // A handle is a future of the task's value.
    let mut total = 0.0;
    for h in halves {
        total += h.await?;
    }
    println!("sum of 1..=1000 computed by two tasks: {total}");

    // Awaiting a builder spawns the task and waits for its value.
    let mean = task(async move { total / data.len() as f64 }).await?;
    println!("mean: {mean}");

    // Failures come back as values too.
    match task(async { "not a number".parse::<i32>() }).await? {
        Ok(v) => println!("parsed {v}"),
        Err(e) => println!("the task returned an error value: {e}"),
    }
    match task(async { panic!("this task panics") }).await {
        Ok(()) => {}
        Err(e) => println!("the task failed: {e}"),
    }
    Ok(())
}
