//! Several GPUs: `gpu(i)` placement, list placements spanning devices, and a cross-device
//! dependency ordered on the GPUs (the dependent's stream waits on the other device's event;
//! the host does not). Needs a machine with two or more GPUs.

mod support;

use std::sync::Arc;

use parla::gpu::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use parla::prelude::*;
use support::gpu::{KERNELS, real};

type Stamp = Arc<parking_lot::Mutex<CudaSlice<u64>>>;

fn two_gpus() -> Option<parla::Runtime> {
    let rt = real()?;
    if rt.gpus() < 2 {
        eprintln!("skipped: needs 2 GPUs, found {}", rt.gpus());
        return None;
    }
    Some(rt)
}

#[test]
#[ignore = "needs two CUDA GPUs"]
fn placement_spans_devices() {
    let Some(rt) = two_gpus() else { return };
    let n = rt.gpus();
    let seen = support::within(120, move || {
        rt.block_on(async move {
            let mut each = Vec::new();
            for i in 0..n {
                let d = task(async { parla::gpu::current().unwrap().device() })
                    .placement(Placement::Gpu(i))
                    .await
                    .unwrap();
                each.push(d);
            }
            // Busy tasks on any GPU spread over all of them.
            let hs: Vec<_> = (0..4 * n)
                .map(|_| {
                    task(async {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        current_device().index()
                    })
                    .placement(Placement::AnyGpu)
                    .spawn()
                })
                .collect();
            let mut spread = std::collections::BTreeSet::new();
            for h in hs {
                spread.insert(h.await.unwrap());
            }
            (each, spread.len())
        })
    });
    for (i, d) in seen.0.iter().enumerate() {
        assert_eq!(*d, Device::gpu(i as u32));
    }
    assert_eq!(seen.1, n, "AnyGpu tasks used every GPU");
}

#[test]
#[ignore = "needs two CUDA GPUs"]
fn a_cross_device_dependency_is_ordered_on_the_gpus() {
    let Some(rt) = two_gpus() else { return };
    let (a_end, b_start, ran_ahead) = support::within(120, move || {
        rt.block_on(async {
            let alloc = |gpu: usize| {
                task(async {
                    let g = parla::gpu::current().unwrap();
                    let s: CudaSlice<u64> = g.stream().alloc_zeros(1).unwrap();
                    g.synchronize().await.unwrap();
                    Arc::new(parking_lot::Mutex::new(s))
                })
                .placement(Placement::Gpu(gpu))
            };
            let a_out: Stamp = alloc(0).await.unwrap();
            let b_out: Stamp = alloc(1).await.unwrap();
            let t = TaskSpace::new("X");
            let a2 = a_out.clone();
            task(async move {
                let g = parla::gpu::current().unwrap();
                let f = g.kernel(KERNELS, "spin_then_stamp").unwrap();
                let ns: u64 = 50_000_000;
                let mut out = a2.lock();
                let mut b = g.stream().launch_builder(&f);
                b.arg(&ns).arg(&mut *out);
                // SAFETY: (unsigned long long, unsigned long long*), one element.
                unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
            })
            .id(t.at("a"))
            .placement(Placement::Gpu(0))
            .spawn();
            let (b2, t2) = (b_out.clone(), t.clone());
            let b = task(async move {
                // Runahead across devices: this body runs while A's kernel still spins.
                let ahead = !t2.at("a").is_finished();
                let g = parla::gpu::current().unwrap();
                let f = g.kernel(KERNELS, "stamp").unwrap();
                let mut out = b2.lock();
                let mut b = g.stream().launch_builder(&f);
                b.arg(&mut *out);
                // SAFETY: (unsigned long long*), one element.
                unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
                ahead
            })
            .id(t.at("b"))
            .after(t.at("a"))
            .placement(Placement::Gpu(1))
            .spawn();
            let ran_ahead = b.await.unwrap();
            let read = |gpu: usize, x: Stamp| {
                task(async move {
                    let g = parla::gpu::current().unwrap();
                    g.stream().clone_dtoh(&*x.lock()).unwrap()[0]
                })
                .placement(Placement::Gpu(gpu))
            };
            let a_end = read(0, a_out).await.unwrap();
            let b_start = read(1, b_out).await.unwrap();
            (a_end, b_start, ran_ahead)
        })
    });
    eprintln!("A ended at {a_end} ns, B started at {b_start} ns, B's body ran ahead: {ran_ahead}");
    assert!(a_end > 0 && b_start > 0);
    // The GPUs' global timers agree to well under the 50 ms A spins for.
    assert!(
        b_start + 1_000_000 >= a_end,
        "B's kernel started {} ms before A's ended",
        (a_end - b_start) as f64 / 1e6
    );
    assert!(ran_ahead, "B's host part should not wait for A's GPU work");
}
