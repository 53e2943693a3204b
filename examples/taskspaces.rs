//! Task spaces: ids, dependencies, barriers, awaiting a space, forward references.
//!
//! ```text
//! cargo run --release --example taskspaces
//! ```

use std::time::Duration;

use parla::prelude::*;

#[parla::main(cpu_threads = 4)]
async fn main() -> parla::Result<()> {
    // A chain: each task starts after the previous one finished.
    let chain = TaskSpace::new("Chain");
    for i in 0..4 {
        let mut b = task(async move { println!("chain step {i}") }).id(chain.at(i));
        if i > 0 {
            b = b.after(chain.at(i - 1));
        }
        b.spawn();
    }
    chain.at(3).await?;

    // A barrier: one task after a whole range, awaited through its id.
    let stage = TaskSpace::new("Stage");
    for i in 0..4 {
        task(async move {
            tokio::time::sleep(Duration::from_millis(10 * (4 - i))).await;
            println!("stage 1, part {i} done");
        })
        .id(stage.at(("part", i)))
        .vcus(0.25)
        .spawn();
    }
    task(async { println!("barrier: every part of stage 1 is done") })
        .id(stage.at("barrier"))
        .after((0..4).map(|i| stage.at(("part", i))))
        .spawn();
    stage.at("barrier").await?;

    // Forward references: a task may depend on an id that is spawned later.
    let fwd = TaskSpace::new("Forward");
    let consumer = task(async { println!("consumer runs after the producer, spawned later") })
        .id(fwd.at("consumer"))
        .after(fwd.at("producer"))
        .spawn();
    task(async { println!("producer runs first") })
        .id(fwd.at("producer"))
        .spawn();
    consumer.await?;

    // Awaiting a space waits for every task spawned into it so far.
    let many = TaskSpace::new("Many");
    for i in 0..16 {
        task(async move { i * i }).id(many.at(i)).spawn();
    }
    many.await?;
    println!("all 16 tasks of space Many are done");
    Ok(())
}
