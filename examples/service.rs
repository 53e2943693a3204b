//! A long-running service on parla-rs: requests arrive on a channel from threads that are
//! not the runtime's, a service task turns each into a task named by its request number,
//! finished ids are retired batch by batch (so the task space stays small however long the
//! service runs), and a shutdown id ends the loop.
//!
//! ```sh
//! cargo run --release --example service [-- requests]
//! ```

use std::time::{Duration, Instant};

use parla::prelude::*;

const USAGE: &str = "usage: service [REQUESTS]   (default 200000)";

fn main() -> std::process::ExitCode {
    let requests = match std::env::args().nth(1).as_deref() {
        None => 200_000,
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Some(a) => match a.parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("error: REQUESTS must be a number, got {a:?}\n{USAGE}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    match serve(requests) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(requests: u64) -> parla::Result<()> {
    let rt = parla::Runtime::new()?;
    let handle = rt.handle();
    let start = Instant::now();
    let (served, live_ids, retired) = rt.block_on(async move {
        let jobs = TaskSpace::new("Job");
        let control = TaskSpace::new("Control");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();

        // Clients: two plain threads, sending with pauses.
        let clients: Vec<_> = (0..2u64)
            .map(|c| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in (c..requests).step_by(2) {
                        tx.send(i).expect("the service is up");
                        if i % 20_000 < 2 {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                })
            })
            .collect();
        drop(tx);

        // The service: waits on the shutdown id and on the channel at once.
        let (j, c) = (jobs.clone(), control.clone());
        let service = task(async move {
            let (mut served, mut retired) = (0u64, 0usize);
            // Each request is a task named by its number; every 8th starts a new chain,
            // the others follow the request before them (which may arrive later).
            let mut serve = |i: u64| {
                let mut b = task(async move { i * 2 }).id(j.at(i));
                if !i.is_multiple_of(8) {
                    b = b.after(j.at(i - 1));
                }
                b.spawn();
                served += 1;
                if served % 50_000 == 0 {
                    retired += j.retire_finished();
                }
            };
            loop {
                tokio::select! {
                    _ = c.at("shutdown") => {
                        // Serve what is still queued, then stop.
                        rx.close();
                        while let Some(i) = rx.recv().await {
                            serve(i);
                        }
                        break;
                    }
                    req = rx.recv() => match req {
                        Some(i) => serve(i),
                        None => break,
                    },
                }
            }
            (served, retired)
        })
        .spawn();

        // Another thread asks for the shutdown once the clients are done (holding stall
        // detection off meanwhile: it will spawn the id the service waits on).
        let hold = handle.hold();
        std::thread::spawn(move || {
            for c in clients {
                c.join().expect("client");
            }
            let _hold = hold;
            std::thread::sleep(Duration::from_millis(5));
            handle.spawn(task(async {}).id(control.at("shutdown")));
        });

        let (served, mut retired) = service.await.expect("the service task");
        (&jobs).await.expect("every job");
        retired += jobs.retire_finished();
        (served, jobs.len() - retired, retired)
    });
    println!(
        "served {served} requests in {:.2} s; {retired} ids retired, {live_ids} still held in the space",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
