//! The crate's error type.

use cudarc::cublas::result::CublasError;
use cudarc::cusolver::result::CusolverError;
use cudarc::driver::DriverError;

/// A CUDA error, named.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CUDA driver returned an error.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] DriverError),
    /// cuBLAS returned an error.
    #[error("cuBLAS error: {0:?}")]
    Blas(CublasError),
    /// cuSOLVER returned an error.
    #[error("cuSOLVER error: {0:?}")]
    Solver(CusolverError),
    /// NVRTC could not compile a kernel.
    #[error("NVRTC could not compile `{name}`: {log}")]
    Compile {
        /// The kernel's name.
        name: String,
        /// The compiler's log.
        log: String,
    },
    /// A library or device is not available.
    #[error("{0}")]
    Unavailable(String),
    /// The device reported an error while the host waited on it.
    #[error("device error: {0}")]
    Device(String),
}

impl From<CublasError> for Error {
    fn from(e: CublasError) -> Self {
        Error::Blas(e)
    }
}

impl From<CusolverError> for Error {
    fn from(e: CusolverError) -> Self {
        Error::Solver(e)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The text of a driver error: its name and description.
pub(crate) fn describe(e: &DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned());
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned());
    match (name, text) {
        (Ok(n), Ok(t)) => format!("{n} ({t})"),
        (Ok(n), Err(_)) => n,
        _ => format!("{:?}", e.0),
    }
}

/// Whether a driver error leaves the context unusable (every later call fails).
pub(crate) fn is_sticky(e: &DriverError) -> bool {
    use cudarc::driver::sys::CUresult::*;
    matches!(
        e.0,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_ECC_UNCORRECTABLE
            | CUDA_ERROR_UNKNOWN
    )
}

/// A CUDA error surfaced through the runtime's error type (so `?` works in tasks returning
/// `parla::Result`).
impl From<Error> for parla_core::Error {
    fn from(e: Error) -> Self {
        parla_core::Error::Device(e.to_string())
    }
}
