//! Cancelling tasks: several searches race, the first to find an answer wins and the others
//! are aborted through their `AbortHandle`s; a report task after every search fails without
//! running, naming the aborted search. Then a deadline: a task that takes too long is
//! aborted by a watchdog, while it waits on a channel nobody fills.
//!
//! ```sh
//! cargo run --release --example cancel
//! ```

use std::time::{Duration, Instant};

use parla::prelude::*;

/// Searches `seed`'s sequence for a multiple of `target`, yielding between steps so that an
/// abort can stop it at any step. Returns the step it found one at.
async fn search(seed: u64, target: u64) -> u64 {
    let mut x = seed;
    for step in 0.. {
        // A 64-bit linear congruential generator.
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        if (x >> 33).is_multiple_of(target) {
            return step;
        }
        if step.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    unreachable!()
}

fn main() -> parla::Result<()> {
    let rt = parla::Runtime::new()?;
    rt.block_on(async {
        // The race: eight searches, the first to return wins.
        let start = Instant::now();
        let searches: Vec<TaskHandle<u64>> = (0..8u64)
            .map(|seed| task(search(seed, 2_000_003)).spawn())
            .collect();
        let stops: Vec<AbortHandle> = searches.iter().map(|s| s.abort_handle()).collect();
        // A report after all of them, which would run only if every search succeeded.
        let report = task(async { println!("every search finished") })
            .after(&searches)
            .spawn();
        let mut racing: futures_util::stream::FuturesUnordered<_> = searches
            .into_iter()
            .enumerate()
            .map(|(i, s)| async move { (i, s.await) })
            .collect();
        use futures_util::StreamExt;
        let (winner, steps) = match racing.next().await {
            Some((i, found)) => (i, found?),
            None => unreachable!("eight searches"),
        };
        for s in &stops {
            s.abort();
        }
        println!(
            "search {winner} found one after {steps} steps in {:.1} ms; the others are aborted",
            start.elapsed().as_secs_f64() * 1e3
        );
        let mut aborted = 0;
        while let Some((_, r)) = racing.next().await {
            match r {
                Err(TaskError::Aborted { .. }) => aborted += 1,
                // A search may have finished before its abort arrived.
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
        println!("{aborted} searches ended aborted");
        match report.await {
            Err(TaskError::DependencyFailed { dependency, .. }) => {
                println!("the report did not run: its dependency {dependency} was aborted")
            }
            other => println!("the report: {other:?}"),
        }

        // A deadline: the task waits on a channel nobody fills; a watchdog aborts it.
        let (_never, rx) = tokio::sync::oneshot::channel::<()>();
        let slow = task(async move { rx.await.is_ok() }).spawn();
        let stop = slow.abort_handle();
        task(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.abort();
        })
        .spawn();
        match slow.await {
            Err(e @ TaskError::Aborted { .. }) => println!("the slow task: {e}"),
            other => println!("the slow task: {other:?}"),
        }
        Ok(())
    })
}
