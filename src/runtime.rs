//! The facade's [`Runtime`] and [`Builder`]: the engine's, with the CUDA backend plugged in
//! (feature `cuda`, on by default). A machine with no CUDA driver or device gets a CPU-only
//! runtime, with no error.

use std::ops::Deref;
use std::path::PathBuf;

use parla_core::device::backend::GpuBackendFactory;

use crate::{MappingPolicy, Result};

/// A parla runtime: worker threads, devices (the CPU, and the GPUs found), the scheduler.
///
/// ```
/// let rt = parla::Runtime::builder().cpu_threads(2).build()?;
/// let v = rt.block_on(async { parla::task(async { 6 * 7 }).await })?;
/// assert_eq!(v, 42);
/// # Ok::<_, parla::Error>(())
/// ```
///
/// Everything but construction is [`parla_core::Runtime`]'s, reached through `Deref`:
/// [`block_on`](parla_core::Runtime::block_on), [`devices`](parla_core::Runtime::devices),
/// [`gpus`](parla_core::Runtime::gpus), ... Dropping it stops its workers (see
/// [`parla_core::Runtime`]'s "Dropping": also from a Tokio application's `async fn`).
#[derive(Debug)]
pub struct Runtime(parla_core::Runtime);

impl Runtime {
    /// A builder with default settings: every CUDA device found, one worker thread per core.
    pub fn builder() -> Builder {
        Builder {
            inner: parla_core::Runtime::builder(),
            backend: None,
        }
    }

    /// A runtime with default settings.
    pub fn new() -> Result<Runtime> {
        Self::builder().build()
    }
}

impl Deref for Runtime {
    type Target = parla_core::Runtime;
    fn deref(&self) -> &parla_core::Runtime {
        &self.0
    }
}

impl From<parla_core::Runtime> for Runtime {
    fn from(rt: parla_core::Runtime) -> Runtime {
        Runtime(rt)
    }
}

/// Configures and builds a [`Runtime`]; see [`parla_core::Builder`] for each setting.
///
/// ```
/// let rt = parla::Runtime::builder()
///     .cpu_threads(2)
///     .virtual_gpus(2, 1 << 30)
///     .build()?;
/// assert_eq!(rt.gpus(), 2);
/// # Ok::<_, parla::Error>(())
/// ```
#[derive(Debug)]
pub struct Builder {
    inner: parla_core::Builder,
    backend: Option<GpuBackendFactory>,
}

macro_rules! forward {
    ($($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        $(#[$m])*
        pub fn $name(self, $($arg: $ty),*) -> Self {
            Builder { inner: self.inner.$name($($arg),*), backend: self.backend }
        }
    )*};
}

impl Builder {
    forward! {
        /// Worker threads (default: available parallelism).
        fn cpu_threads(n: usize);
        /// `n` simulated GPUs with `memory` bytes each, in place of real ones.
        fn virtual_gpus(n: usize, memory: u64);
        /// CUDA streams per GPU (default 8).
        fn streams_per_gpu(n: usize);
        /// The fraction of each GPU's memory tasks may reserve (default 0.95).
        fn gpu_memory_fraction(fraction: f64);
        /// The CPU device's memory budget in bytes.
        fn cpu_memory(bytes: u64);
        /// Prints a profile at shutdown (also `PARLA_PROFILE=1`).
        fn profile(on: bool);
    }

    /// Which GPUs to use, by CUDA ordinal (`.gpus([0, 1])`, `.gpus([])` for none). GPUs
    /// named must exist: `build` fails naming the first missing one, also on a machine
    /// without a CUDA driver, and where `virtual_gpus` is set as well.
    ///
    /// ```
    /// // Builds wherever CUDA is absent or has fewer than 64 devices: an error naming it.
    /// let e = parla::Runtime::builder().gpus([63]).build().err().unwrap();
    /// assert!(e.to_string().contains("GPU 63"));
    /// ```
    pub fn gpus(self, ordinals: impl IntoIterator<Item = usize>) -> Self {
        Builder {
            inner: self.inner.gpus(ordinals),
            backend: self.backend,
        }
    }

    /// Streams a Perfetto/Chrome trace of every task to `path` as they run, the file closed
    /// when the runtime shuts down (also `PARLA_TRACE`; see `parla_core::Builder::trace`).
    pub fn trace(self, path: impl Into<PathBuf>) -> Self {
        Builder {
            inner: self.inner.trace(path),
            backend: self.backend,
        }
    }

    /// The mapping policy for list placements.
    pub fn mapping_policy(self, policy: impl MappingPolicy) -> Self {
        Builder {
            inner: self.inner.mapping_policy(policy),
            backend: self.backend,
        }
    }

    /// A GPU backend other than the built-in CUDA one.
    pub fn gpu_backend(self, factory: GpuBackendFactory) -> Self {
        Builder {
            inner: self.inner,
            backend: Some(factory),
        }
    }

    /// Builds the runtime: finds the GPUs (CUDA, unless virtual GPUs or another backend were
    /// asked for) and starts the worker threads.
    ///
    /// The first runtime that uses a CUDA GPU makes the GPU's context, which takes the
    /// driver tens to hundreds of milliseconds. The context then stays for the rest of the
    /// process, as the CUDA runtime API keeps it, so runtimes built after that one is
    /// dropped (one per test, say) start in about a millisecond. `.gpus([])` builds a
    /// runtime that does not touch CUDA at all.
    pub fn build(self) -> Result<Runtime> {
        let mut inner = self.inner;
        if let Some(f) = self.backend {
            inner = inner.gpu_backend(f);
        } else {
            #[cfg(feature = "cuda")]
            {
                inner = inner.gpu_backend(parla_gpu::discover);
            }
        }
        Ok(Runtime(inner.build()?))
    }
}
