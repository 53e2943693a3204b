//! Without CUDA (this runs in CI), the default runtime has the CPU only, and GPU tasks
//! resolve to a clear `Unsatisfiable`. On a GPU machine it checks the GPUs are real.

mod support;

use parla::device::backend::GpuOptions;
use parla::prelude::*;

#[test]
fn the_default_runtime_builds_with_or_without_cuda() {
    let rt = parla::Runtime::builder().cpu_threads(2).build().unwrap();
    let opts = GpuOptions {
        ordinals: None,
        streams_per_gpu: 2,
        memory_fraction: 0.95,
    };
    let found = parla::gpu::discover(&opts).unwrap();
    if rt.has_real_gpus() {
        assert!(found.is_some());
        assert!(rt.gpus() >= 1);
        return;
    }
    assert!(
        found.is_none(),
        "no driver or no device: nothing found, no error"
    );
    assert_eq!(rt.gpus(), 0);
    assert_eq!(rt.devices(), vec![Device::CPU]);
    let r = support::within(30, move || {
        rt.block_on(async {
            let gpu_only = task(async {}).placement(Placement::AnyGpu).await;
            let either = task(async { current_device() })
                .placement([Placement::Cpu, Placement::AnyGpu])
                .await;
            (gpu_only, either)
        })
    });
    let e = r.0.unwrap_err();
    assert!(matches!(e, TaskError::Unsatisfiable { .. }), "{e:?}");
    assert!(e.to_string().contains("no GPU"), "{e}");
    assert!(e.to_string().contains("no CUDA device found"), "{e}");
    assert_eq!(r.1.unwrap(), Device::CPU);
}

/// A runtime with no GPU says why with a GPU task's error: asked for none, it does not
/// blame CUDA.
#[test]
fn a_gpu_task_on_a_runtime_given_no_gpu_says_why() {
    let gpu_task_error = |rt: parla::Runtime| {
        support::within(30, move || {
            rt.block_on(async { task(async {}).placement(Placement::AnyGpu).await })
        })
        .unwrap_err()
        .to_string()
    };
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .virtual_gpus(0, 1 << 20)
        .build()
        .unwrap();
    let e = gpu_task_error(rt);
    assert!(e.contains("virtual_gpus(0, ..) gave it none"), "{e}");
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .gpus([])
        .build()
        .unwrap();
    let e = gpu_task_error(rt);
    assert!(e.contains("gpus([]) named none"), "{e}");
    // An empty placement list asks for no GPU: its error says nothing of GPUs.
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .gpus([])
        .build()
        .unwrap();
    let e = support::within(30, move || {
        rt.block_on(async { task(async {}).placement(Vec::<Placement>::new()).await })
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("empty placement list"), "{e}");
    assert!(!e.contains("gpus([])"), "{e}");
}

#[test]
fn asking_for_a_gpu_that_does_not_exist_is_a_build_error() {
    // With CUDA: no device 63. Without a driver or a device: no GPU at all.
    let e = parla::Runtime::builder()
        .cpu_threads(1)
        .gpus([63])
        .build()
        .expect_err("GPU 63 does not exist");
    assert!(e.to_string().contains("GPU 63"), "{e}");
    // More GPUs than a runtime manages, as a range too long to collect: an error, not an
    // allocation that aborts the process.
    let e = parla::Runtime::builder()
        .cpu_threads(1)
        .gpus(0..usize::MAX)
        .build()
        .expect_err("more GPUs than a runtime manages");
    assert!(e.to_string().contains("more than 63 GPUs"), "{e}");
    // A GPU named twice would count its memory twice.
    let e = parla::Runtime::builder()
        .cpu_threads(1)
        .gpus([0, 1, 0])
        .build()
        .expect_err("GPU 0 named twice");
    assert!(e.to_string().contains("GPU 0 twice"), "{e}");
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .gpus([])
        .build()
        .unwrap();
    assert_eq!(rt.gpus(), 0, ".gpus([]) means none");
    // Real GPUs named beside virtual ones: which to run on is unclear.
    let e = parla::Runtime::builder()
        .cpu_threads(1)
        .virtual_gpus(1, 1 << 20)
        .gpus([0])
        .build()
        .expect_err("real and virtual GPUs both asked for");
    assert!(e.to_string().contains("virtual_gpus(1, ..)"), "{e}");
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .virtual_gpus(1, 1 << 20)
        .gpus([])
        .build()
        .unwrap();
    assert_eq!(rt.gpus(), 1, "no real GPU named: the virtual one");
}
