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

// The macros name `::parla`; inside this crate too.
extern crate self as parla;

pub mod array;
pub mod linalg;
mod runtime;

pub use array::clone_here;
pub use runtime::{Builder, Runtime};

pub use parla_core::{
    AbortHandle, Arch, Candidate, DepList, Deps, Device, EnterGuard, Error, Handle, Hold, IntoDeps,
    IntoKey, IntoPart, IntoPlacements, Key, KeyRange, MappingPolicy, MostFree, Part, Placement,
    Placements, RangeWait, RefWait, Result, SpaceWait, TaskBuilder, TaskError, TaskHandle,
    TaskInfo, TaskRange, TaskRef, TaskSpace, current_device, current_task, deps, task,
};
pub use parla_core::{data, trace, variants};
pub use parla_macros::{main, specialize, task, variant};

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
        AbortHandle, Arch, Device, Placement, Runtime, TaskError, TaskHandle, TaskRef, TaskSpace,
        clone_here, current_device, current_task, task,
    };
}

/// What the macros' generated code calls; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::error::Error as StdError;
    use std::fmt::{Display, Write as _};
    use std::ops::Deref;

    /// What `#[parla::main]` prints for an error, in `anyhow`'s format: `Error: ` and the
    /// error's message, then, if it has sources, a blank line, `Caused by:` and one indented
    /// line per source (numbered when there are several).
    pub fn report_error<E: StdError + ?Sized>(e: &E) -> String {
        let mut out = format!("Error: {e}");
        let causes: Vec<_> = std::iter::successors(e.source(), |&c| c.source()).collect();
        if !causes.is_empty() {
            out.push_str("\n\nCaused by:");
        }
        for (i, c) in causes.iter().enumerate() {
            let (head, indent) = if causes.len() == 1 {
                (String::from("    "), "    ")
            } else {
                (format!("{i:>5}: "), "       ")
            };
            let text = c.to_string().replace('\n', &format!("\n{indent}"));
            let _ = write!(out, "\n{head}{text}");
        }
        out
    }

    /// The value an `async fn main` returned. `(&&&&MainOutput(&v)).parla_report()`, with
    /// the four traits below in scope, picks by autoref the first of them whose bounds hold:
    /// a `std` error with its sources; a pointer to one (`Box<dyn Error>`, `anyhow::Error`)
    /// likewise; an error that is only `Display`; otherwise nothing, and `main` returns the
    /// value for `std` to report as it does.
    pub struct MainOutput<'a, R>(pub &'a R);

    /// `Err(e)` where `e` is a [`std::error::Error`].
    pub trait ReportStdError {
        /// The report of an error; `None` for a success.
        fn parla_report(&self) -> Option<String>;
    }
    impl<T, E: StdError> ReportStdError for &&&MainOutput<'_, Result<T, E>> {
        fn parla_report(&self) -> Option<String> {
            self.0.as_ref().err().map(report_error)
        }
    }

    /// `Err(e)` where `e` dereferences to a [`std::error::Error`].
    pub trait ReportDerefError {
        /// The report of an error; `None` for a success.
        fn parla_report(&self) -> Option<String>;
    }
    impl<T, E> ReportDerefError for &&MainOutput<'_, Result<T, E>>
    where
        E: Deref,
        E::Target: StdError,
    {
        fn parla_report(&self) -> Option<String> {
            self.0.as_ref().err().map(|e| report_error(&**e))
        }
    }

    /// `Err(e)` where `e` is only [`Display`].
    pub trait ReportDisplay {
        /// The report of an error; `None` for a success.
        fn parla_report(&self) -> Option<String>;
    }
    impl<T, E: Display> ReportDisplay for &MainOutput<'_, Result<T, E>> {
        fn parla_report(&self) -> Option<String> {
            self.0.as_ref().err().map(|e| format!("Error: {e}"))
        }
    }

    /// Anything else: left to `std`.
    pub trait ReportOther {
        /// Always `None`.
        fn parla_report(&self) -> Option<String>;
    }
    impl<R> ReportOther for MainOutput<'_, R> {
        fn parla_report(&self) -> Option<String> {
            None
        }
    }
}

/// The README's code blocks compile and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
