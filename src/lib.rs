//! # parla
//!
//! A task-parallel runtime for machines with CPUs and NVIDIA GPUs, on Tokio: task spaces,
//! dependencies, placement on CPU or GPU, VCU and memory constraints, and function variants,
//! with tasks as Rust futures.
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
//! - [`task`] makes a [`TaskBuilder`]: `.id`, `.after`, `.placement`, `.vcus`, `.memory`,
//!   then `.spawn()` for a [`TaskHandle`], or `.await` for the result. `#[parla::task]` turns
//!   an `async fn` into a preset builder.
//! - [`TaskSpace`]: named task ids (`t.at(i)`, `t.range(0..n)`), awaitable.
//! - [`current_task`] and [`current_device`] inside a task.

#![warn(missing_docs)]

pub use parla_core::{
    Arch, Builder, Candidate, DepList, Deps, Device, Error, IntoDeps, IntoKey, IntoPart,
    IntoPlacements, Key, KeyRange, MappingPolicy, MostFree, Part, Placement, Placements, RangeWait,
    RefWait, Result, Runtime, SpaceWait, TaskBuilder, TaskError, TaskHandle, TaskInfo, TaskRange,
    TaskRef, TaskSpace, current_device, current_task, deps, task,
};
pub use parla_macros::{main, task};

/// Device types and the admission constants.
pub mod device {
    pub use parla_core::device::*;
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
