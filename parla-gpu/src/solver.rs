//! cuSOLVER for GPU tasks: [`GpuContext::solver`](crate::GpuContext::solver) gives a dense
//! handle bound to the task's stream.
//!
//! cudarc wraps the handle only; the LAPACK-style calls are `cudarc::cusolver::sys`
//! functions taking `handle.cu()`.

pub use cudarc::cusolver::DnHandle;
