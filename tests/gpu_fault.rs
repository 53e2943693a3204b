//! CUDA errors inside tasks end in clear task errors, and a broken device fails its
//! later tasks instead of hanging. In its own test binary: a kernel fault breaks the CUDA
//! context for the rest of the process.

mod support;

use parla::gpu::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use parla::prelude::*;
use support::gpu::{KERNELS, real};

/// Launches the test kernel `name` (it takes one `unsigned int*`) on `x`, on the current
/// GPU task's stream.
fn launch(name: &str, x: &mut CudaSlice<u32>) {
    let g = parla::gpu::current().unwrap();
    let f = g.kernel(KERNELS, name).unwrap();
    let mut b = g.stream().launch_builder(&f);
    b.arg(x);
    // SAFETY: the test kernels take one `unsigned int*`, and `x` holds one element (`fault`
    // writes through a bad address on purpose).
    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn out_of_memory_and_kernel_fault_end_in_clear_errors() {
    let rt = real().expect("this test needs a CUDA GPU");
    let (oom, fault, after) = support::within(120, move || {
        rt.block_on(async {
            // Allocating far more than the device has: the CUDA error names itself.
            let oom = task(async {
                let g = parla::gpu::current().unwrap();
                let _huge = g.stream().alloc_zeros::<u8>(1 << 50).unwrap();
            })
            .placement(Placement::Gpu(0))
            .await
            .unwrap_err();
            // A kernel that writes through a bad address: the task's fence reports it.
            let fault = task(async {
                let g = parla::gpu::current().unwrap();
                let mut x = g.stream().alloc_zeros::<u32>(1).unwrap();
                launch("fault", &mut x);
            })
            .placement(Placement::Gpu(0))
            .await
            .unwrap_err();
            // The context is broken for good: later tasks on the device fail at once.
            let after = task(async {})
                .placement(Placement::Gpu(0))
                .await
                .unwrap_err();
            (oom, fault, after)
        })
    });
    eprintln!("oom: {oom}\nfault: {fault}\nafter: {after}");
    assert!(matches!(oom, TaskError::Panicked { .. }), "{oom:?}");
    assert!(oom.to_string().contains("OUT_OF_MEMORY"), "{oom}");
    assert!(matches!(fault, TaskError::Device { .. }), "{fault:?}");
    assert!(fault.to_string().contains("CUDA_ERROR"), "{fault}");
    assert!(matches!(after, TaskError::Device { .. }), "{after:?}");
    // A runtime built after the fault (the one that saw it is gone): the driver keeps the
    // device broken for the process, so building it fails with the CUDA error; were the
    // device usable again, its GPU tasks would have to compute right.
    match parla::Runtime::builder().cpu_threads(2).build() {
        Err(e) => assert!(e.to_string().contains("CUDA_ERROR"), "{e}"),
        Ok(rt) => {
            let again = support::within(120, move || {
                rt.block_on(async {
                    task(async {
                        let g = parla::gpu::current().unwrap();
                        let mut x = g.stream().alloc_zeros::<u32>(1).unwrap();
                        launch("increment", &mut x);
                        g.synchronize().await.unwrap();
                        g.stream().clone_dtoh(&x).unwrap()[0]
                    })
                    .placement(Placement::Gpu(0))
                    .await
                })
            });
            match again {
                Ok(v) => assert_eq!(v, 1, "a runtime after the fault computed wrong"),
                Err(e) => assert!(e.to_string().contains("CUDA_ERROR"), "{e}"),
            }
        }
    }
}
