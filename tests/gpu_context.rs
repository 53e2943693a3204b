//! A GPU's CUDA context outlives the runtime that made it, so that the runtimes a program
//! builds after it (a test suite builds one per test) start in about a millisecond instead
//! of making the context again (70-370 ms on an H200 host).
//!
//! In its own test binary, and with no GPU task before the check: once a GPU task has run
//! in a process, the context stayed for the rest of it on an H200 host even without the
//! runtime keeping it (something below the runtime holds it then), and the check could not
//! fail. Run this way, it fails on a build that does not keep the context.

mod support;

use std::time::Duration;

use parla::gpu::cudarc::driver::{result, sys};
use parla::prelude::*;
use support::gpu::real;

/// Whether GPU 0's primary context exists (someone holds a reference to it).
fn primary_context_active() -> bool {
    let dev = result::device::get(0).expect("GPU 0");
    let (mut flags, mut active) = (0u32, 0i32);
    // SAFETY: `dev` is a valid device handle and both pointers are to live locals.
    unsafe { sys::cuDevicePrimaryCtxGetState(dev, &mut flags, &mut active) }
        .result()
        .expect("cuDevicePrimaryCtxGetState");
    active != 0
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_gpu_context_outlives_the_runtime_for_the_next_one() {
    for round in 0..3 {
        // A runtime on a GPU host that runs CPU tasks only still makes (or retains) the
        // GPU's context when it is built.
        let rt = real().expect("this test needs a CUDA GPU");
        let sum = support::within(120, move || {
            rt.block_on(async { task(async { 2 + 2 }).await }).unwrap()
        });
        assert_eq!(sum, 4, "round {round}");
        // The runtime's last references to the context may go a moment after `drop` (with
        // the threads that held them): the context must still be there after that.
        for _ in 0..200 {
            assert!(
                primary_context_active(),
                "round {round}: GPU 0's context went with its runtime"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // The runtime after those runs GPU tasks on the context kept.
    let rt = real().expect("this test needs a CUDA GPU");
    let on = support::within(120, move || {
        rt.block_on(async {
            task(async { parla::gpu::current().map(|g| g.device()) })
                .placement(Placement::Gpu(0))
                .await
                .unwrap()
        })
    });
    assert_eq!(on, Some(Device::gpu(0)));
}
