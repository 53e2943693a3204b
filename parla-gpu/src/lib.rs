//! # parla-gpu
//!
//! The CUDA backend of parla-rs, on [`cudarc`] with dynamic loading: the crate builds on
//! machines without CUDA, and loads libcuda, NVRTC, cuBLAS and cuSOLVER when it runs. With no
//! driver or no device, [`discover`] finds nothing and the runtime runs on the CPU alone.
//!
//! What a GPU task gets (through the `parla` facade, `parla::gpu::current()`): its device
//! made current on the worker thread, a stream from the device's pool, and cuBLAS / cuSOLVER
//! handles bound to that stream, created on first use and reused. When the task's body
//! returns, an event is recorded on its stream and the task completes when the event fires;
//! tasks that depend on it and run on GPUs do not wait for the host to see that: their
//! streams wait on the event (runahead).
//!
//! Layers (as in cudarc itself):
//!
//! | module | what |
//! | --- | --- |
//! | `raw` | the few `unsafe` calls into cudarc's `sys`/`result` layers, each with its `# Safety` |
//! | [`stream`], [`event`] | owned safe types: the per-device stream pool, events as fences |
//! | [`blas`], [`solver`] | cuBLAS and cuSOLVER handles bound to a pooled stream; `syevd` |
//! | [`transfer`] | host/device copies: uploads staged through page-locked memory, peer copies |
//! | [`context`] | [`GpuContext`], what a task sees |
//! | `runtime` | the backend the scheduler drives ([`CudaBackend`]) and [`discover`] |

#![warn(missing_docs, missing_debug_implementations)]

pub mod blas;
pub mod context;
mod error;
pub mod event;
mod raw;
mod runtime;
pub mod solver;
pub mod stream;
mod timing;
pub mod transfer;

pub use context::{GpuContext, current};
pub use cudarc;
pub use error::{Error, Result};
pub use runtime::{CudaBackend, discover};
