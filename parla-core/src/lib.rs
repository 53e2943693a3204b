//! # parla-core
//!
//! The engine of parla-rs: task spaces, dependencies, devices, VCU and memory admission,
//! and the scheduler that runs tasks as futures on Tokio. Users normally depend on the
//! `parla` facade, which re-exports all of this together with the macros and the CUDA
//! backend.
//!
//! ```
//! use parla_core::{Runtime, TaskSpace, task};
//!
//! let rt = Runtime::builder().cpu_threads(2).build()?;
//! let sum = rt.block_on(async {
//!     let t = TaskSpace::new("T");
//!     for i in 0..4u64 {
//!         task(async move { i }).id(t.at(i)).spawn();
//!     }
//!     task(async { 6 }).after(t.range(0..4)).await
//! })?;
//! assert_eq!(sum, 6);
//! # Ok::<_, parla_core::Error>(())
//! ```

#![warn(missing_docs, missing_debug_implementations)]

pub mod data;
pub mod device;
/// Waiting on GPU fences without blocking a worker (for GPU backends and GPU tasks).
pub mod fences {
    pub use crate::runtime::bridge::{AWAIT_SPIN, FenceWait, poll_fence_for, wait_fence};
}
mod error;
mod graph;
mod key;
mod loom;
mod runtime;
pub mod scheduler;
mod space;
mod task;
pub mod trace;
pub mod variants;

pub use device::{Arch, Device, IntoPlacements, Placement, Placements};
pub use error::{Error, Result, TaskError};
pub use runtime::context::{TaskInfo, current_device, current_task};
pub use runtime::{Builder, EnterGuard, Handle, Hold, Runtime};
pub use scheduler::mapping::{Candidate, MappingPolicy, MostFree};
pub use space::{
    IntoKey, IntoPart, Key, KeyRange, Part, RangeWait, RefWait, SpaceWait, TaskRange, TaskRef,
    TaskSpace,
};
pub use task::{AbortHandle, DepList, Deps, IntoDeps, TaskBuilder, TaskHandle, deps, task};

/// The layering of the crate: the pure core (the task graph, scheduling decisions, devices,
/// keys, errors) never names the executor or the API built on it, so it can be tested
/// without a runtime and no import cycle runs between them.
#[cfg(all(test, not(parla_loom)))]
mod layering {
    const CORE: [(&str, &str); 12] = [
        ("graph/mod.rs", include_str!("graph/mod.rs")),
        ("graph/node.rs", include_str!("graph/node.rs")),
        ("graph/cell.rs", include_str!("graph/cell.rs")),
        ("graph/activity.rs", include_str!("graph/activity.rs")),
        ("scheduler/mod.rs", include_str!("scheduler/mod.rs")),
        (
            "scheduler/admission.rs",
            include_str!("scheduler/admission.rs"),
        ),
        ("scheduler/mapping.rs", include_str!("scheduler/mapping.rs")),
        ("device/mod.rs", include_str!("device/mod.rs")),
        ("device/backend.rs", include_str!("device/backend.rs")),
        ("device/fence.rs", include_str!("device/fence.rs")),
        ("key.rs", include_str!("key.rs")),
        ("error.rs", include_str!("error.rs")),
    ];

    #[test]
    fn the_core_does_not_name_the_executor_or_the_api() {
        for (file, text) in CORE {
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for layer in [
                    "crate::runtime",
                    "crate::task",
                    "crate::space",
                    "crate::trace",
                ] {
                    assert!(
                        !code.contains(layer),
                        "{file}:{}: the core names {layer}: {line}",
                        n + 1
                    );
                }
                assert!(!code.contains("tokio"), "{file}:{}: {line}", n + 1);
            }
        }
    }
}
