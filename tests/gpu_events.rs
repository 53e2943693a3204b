//! The CUDA backend's pool of events, on a real GPU. The event recorded for a fence goes
//! back to the pool once it is known complete, so a long run of GPU tasks whose fences are
//! recorded one by one (each has a CPU task after it) makes no new events. A test binary
//! of its own: the count it reads is the whole process's. Run on a GPU machine with
//! `--include-ignored`.

mod support;

use parla::gpu::cudarc::driver::LaunchConfig;
use parla::prelude::*;
use support::gpu::{KERNELS, real};

/// A chain of `n` GPU tasks, each launching an empty kernel, each with an empty CPU task
/// after it: something waits on every fence, so each is recorded as its task ends.
async fn chain_with_cpu_tasks(n: usize) {
    let mut prev: Option<TaskHandle<()>> = None;
    let mut cpu = Vec::with_capacity(n);
    for _ in 0..n {
        let mut b = task(async {
            let g = parla::gpu::current().expect("a GPU task");
            let f = g.kernel(KERNELS, "empty").expect("kernel");
            let mut l = g.stream().launch_builder(&f);
            // SAFETY: `empty` takes no arguments.
            unsafe { l.launch(LaunchConfig::for_num_elems(1)) }.expect("launch");
        })
        .placement(Placement::Gpu(0));
        if let Some(p) = &prev {
            b = b.after(p);
        }
        let h = b.spawn();
        cpu.push(task(async {}).after(&h).spawn());
        prev = Some(h);
    }
    prev.expect("chain").await.expect("GPU task");
    for h in cpu {
        h.await.expect("CPU task");
    }
}

/// The poller finds a run of fences done by querying its ends only. The events of the
/// others are complete too (a later event of their stream was), and must go back to the
/// pool: destroyed instead, they made the pool run dry, and every record after that made
/// a new event (about a third of them, on an H200 host).
#[test]
#[ignore = "needs a CUDA GPU"]
fn events_of_fences_found_done_go_back_to_the_pool() {
    const N: usize = 3000;
    let rt = real().expect("this test needs a CUDA GPU");
    let made = support::within(300, move || {
        rt.block_on(async {
            // The kernel compiled and the streams made.
            chain_with_cpu_tasks(100).await;
            let before = parla::gpu::event::events_made();
            chain_with_cpu_tasks(N).await;
            parla::gpu::event::events_made() - before
        })
    });
    assert!(
        made <= (N / 10) as u64,
        "{made} events made for {N} GPU tasks: recorded events do not come back to the pool"
    );
}
