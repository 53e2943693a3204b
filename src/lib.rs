//! # parla
//!
//! A task-parallel runtime for machines with CPUs and NVIDIA GPUs, on Tokio: task spaces,
//! dependencies, placement on CPU or GPU, VCU and memory constraints, with tasks as Rust
//! futures.
//!
//! ```
//! use parla::prelude::*;
//!
//! let rt = parla::Runtime::builder().cpu_threads(2).build()?;
//! rt.block_on(async {
//!     let t = TaskSpace::new("T");
//!     for i in 0..4 {
//!         task(async move { i * i }).id(t.at(i)).spawn();
//!     }
//!     let total = task(async { "all four done" }).after(t.range(0..4)).await?;
//!     assert_eq!(total, "all four done");
//!     Ok::<_, TaskError>(())
//! })?;
//! # Ok::<_, parla::Error>(())
//! ```
//!
//! The pieces:
//! - [`Runtime`] / [`Builder`]: worker threads, devices (the CPU, GPUs, virtual GPUs);
//!   `#[parla::main]` builds one around an `async fn main`.
//! - [`task()`] makes a [`TaskBuilder`]: `.id`, `.after`, `.placement`, `.vcus`, `.memory`,
//!   then `.spawn()` for a [`TaskHandle`], or `.await` for the result. `#[parla::task]` turns
//!   an `async fn` into a preset builder.
//! - [`TaskSpace`]: named task ids (`t.at(i)`, `t.range(0..n)`), awaitable.
//! - [`current_task`] and [`current_device`] inside a task.

#![warn(missing_docs)]

mod runtime;

pub use runtime::{Builder, Runtime};

pub use parla_core::{
    Arch, Candidate, DepList, Deps, Device, EnterGuard, Error, Handle, Hold, IntoDeps, IntoKey,
    IntoPart, IntoPlacements, Key, KeyRange, MappingPolicy, MostFree, Part, Placement, Placements,
    RangeWait, RefWait, Result, SpaceWait, TaskBuilder, TaskError, TaskHandle, TaskInfo, TaskRange,
    TaskRef, TaskSpace, current_device, current_task, deps, task,
};
pub use parla_macros::{main, task};

/// Device types, the admission constants, and the GPU backend interface.
pub mod device {
    pub use parla_core::device::*;
}

/// The CUDA backend: inside a GPU task, [`gpu::current()`] gives the task's device, stream,
/// and cuBLAS / cuSOLVER handles. `None` on the CPU and on virtual GPUs.
#[cfg(feature = "cuda")]
pub mod gpu {
    pub use parla_gpu::*;
}

/// What most programs need: `use parla::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Arch, Device, Placement, Runtime, TaskError, TaskHandle, TaskRef, TaskSpace,
        current_device, current_task, task,
    };
}

/// The README's code blocks compile and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
