//! Task placement (the Parla tutorial's `11_task_placement`): CPU tasks, GPU tasks and tasks
//! that may run on either, each printing where it ran.
//!
//! ```text
//! cargo run --release --example devices
//! ```
//!
//! On a machine without CUDA the runtime has no GPU; this example then uses two virtual
//! GPUs, and says so.

use parla::prelude::*;

fn main() -> parla::Result<()> {
    let mut rt = parla::Runtime::builder().build()?;
    if rt.gpus() == 0 {
        println!("No CUDA GPU found: using 2 virtual GPUs (simulated devices, run on the host).");
        rt = parla::Runtime::builder()
            .virtual_gpus(2, 16 << 30)
            .build()?;
    }
    for d in rt.describe_devices() {
        println!("device {d}");
    }
    rt.block_on(async {
        let t = TaskSpace::new("Device");
        for i in 0..2 {
            task(async { hello() })
                .id(t.at(("cpu", i)))
                .placement(Placement::Cpu)
                .spawn();
            task(async { hello() })
                .id(t.at(("gpu", i)))
                .placement(Placement::AnyGpu)
                .spawn();
            task(async { hello() })
                .id(t.at(("either", i)))
                .placement([Placement::Cpu, Placement::AnyGpu])
                .spawn();
        }
        t.await
    })?;
    Ok(())
}

fn hello() {
    println!(
        "Hello from {}, running on {}",
        current_task().expect("inside a task"),
        current_device()
    );
}
