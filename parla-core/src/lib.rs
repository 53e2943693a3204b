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

pub mod device;
mod error;
mod graph;
mod key;
mod loom;
mod runtime;
pub mod scheduler;
mod space;
mod task;
mod trace;

pub use device::{Arch, Device, IntoPlacements, Placement, Placements};
pub use error::{Error, Result, TaskError};
pub use runtime::context::{TaskInfo, current_device, current_task};
pub use runtime::{Builder, EnterGuard, Handle, Hold, Runtime};
pub use scheduler::mapping::{Candidate, MappingPolicy, MostFree};
pub use space::{
    IntoKey, IntoPart, Key, KeyRange, Part, RangeWait, RefWait, SpaceWait, TaskRange, TaskRef,
    TaskSpace,
};
pub use task::{DepList, Deps, IntoDeps, TaskBuilder, TaskHandle, deps, task};
