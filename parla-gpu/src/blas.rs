//! cuBLAS for GPU tasks: [`GpuContext::blas`](crate::GpuContext::blas) gives a handle bound
//! to the task's stream, so its calls are ordered with the task's other work.
//!
//! The handle is cudarc's [`CudaBlas`]; use its traits (`Gemm`, `Gemv`) directly.

pub use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, Gemv, GemvConfig};
