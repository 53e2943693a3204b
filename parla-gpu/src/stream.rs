//! The per-device stream pool, and the library handles bound to each stream.
//!
//! # Invariants
//! - Each pooled stream is handed to at most one running task at a time while free streams
//!   remain (a lock-free [`FreeSet`] per priority holds the free ones); when all are taken,
//!   streams are shared round-robin (work on a shared stream is serialised, never lost).
//! - cuBLAS and cuSOLVER handles are created on first use, bound to their stream for life,
//!   and destroyed with it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::cusolver::DnHandle;
use cudarc::driver::{CudaContext, CudaStream};
use parking_lot::Mutex;
use parla_core::device::backend::{FreeSet, MAX_SLOTS};

use crate::error::{Error, Result};

/// One stream of a device's pool, with its library handles.
pub struct PooledStream {
    pub(crate) index: usize,
    /// Its CUDA priority (lower numbers are more urgent).
    pub(crate) priority: i32,
    stream: Arc<CudaStream>,
    blas: OnceLock<CudaBlas>,
    solver: OnceLock<DnHandle>,
    /// Fences taken on the stream so far (their tickets: `crate::event`).
    pub(crate) issued: AtomicU64,
    /// The latest event recorded for fences on the stream, and the last ticket it covers.
    pub(crate) covered: Mutex<Option<(u64, Arc<crate::event::Recorded>)>>,
    /// The most tickets an event recorded for fences here was seen complete covering:
    /// every event recorded here covering no more is complete too (see `crate::event`).
    pub(crate) done_through: Arc<AtomicU64>,
}

impl std::fmt::Debug for PooledStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledStream")
            .field("index", &self.index)
            .field("blas", &self.blas.get().is_some())
            .field("solver", &self.solver.get().is_some())
            .finish()
    }
}

impl PooledStream {
    /// The CUDA stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The cuBLAS handle bound to this stream, created on first use.
    pub fn blas(&self) -> Result<&CudaBlas> {
        if let Some(b) = self.blas.get() {
            return Ok(b);
        }
        if !crate::raw::cublas_present() {
            return Err(Error::Unavailable(
                "cuBLAS (libcublas) cannot be loaded".into(),
            ));
        }
        crate::raw::make_current(self.stream.context())?;
        let b = CudaBlas::new(self.stream.clone())?;
        Ok(self.blas.get_or_init(|| b))
    }

    /// The cuSOLVER dense handle bound to this stream, created on first use.
    pub fn solver(&self) -> Result<&DnHandle> {
        if let Some(s) = self.solver.get() {
            return Ok(s);
        }
        if !crate::raw::cusolver_present() {
            return Err(Error::Unavailable(
                "cuSOLVER (libcusolver) cannot be loaded".into(),
            ));
        }
        crate::raw::make_current(self.stream.context())?;
        let s = DnHandle::new(self.stream.clone())?;
        Ok(self.solver.get_or_init(|| s))
    }
}

impl Drop for PooledStream {
    fn drop(&mut self) {
        // cudarc's handle destructors unwrap their destroy calls; a destroy can fail once the
        // context is broken. That must not take the process down at shutdown.
        let blas = self.blas.take();
        let solver = self.solver.take();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            drop(solver);
            drop(blas);
        }));
    }
}

/// Streams of one priority.
struct Class {
    /// Indices into the pool's streams.
    range: std::ops::Range<usize>,
    /// Which of them no running task holds (slot `i`: stream `range.start + i`), taken in
    /// turn (see [`StreamPool::acquire`]).
    free: FreeSet,
    next: AtomicUsize,
}

/// A device's streams: `n` at the default priority (indices `0..n`), and `n / 2` (at least
/// one) at the device's highest priority for urgent tasks (indices `n..`).
pub(crate) struct StreamPool {
    streams: Vec<Arc<PooledStream>>,
    normal: Class,
    urgent: Class,
}

impl StreamPool {
    /// A pool of `n` streams (at most [`MAX_SLOTS`]: the runtime's builder checks) and half
    /// as many urgent ones.
    pub(crate) fn new(ctx: &Arc<CudaContext>, n: usize) -> Result<StreamPool> {
        if !(1..=MAX_SLOTS).contains(&n) {
            return Err(Error::Unavailable(format!(
                "{n} streams per GPU: a pool holds 1 to {MAX_SLOTS}"
            )));
        }
        let urgent = (n / 2).max(1);
        // Lower numbers are higher priorities; (0, 0) where the device has none.
        let (_, greatest) = cudarc::driver::result::stream::get_priority_range().unwrap_or((0, 0));
        let mut streams = Vec::with_capacity(n + urgent);
        for index in 0..n + urgent {
            let (stream, priority) = if index < n {
                (ctx.new_stream()?, 0)
            } else {
                (ctx.new_stream_with_priority(greatest)?, greatest)
            };
            streams.push(Arc::new(PooledStream {
                index,
                priority,
                stream,
                blas: OnceLock::new(),
                solver: OnceLock::new(),
                issued: AtomicU64::new(0),
                covered: Mutex::new(None),
                done_through: Arc::new(AtomicU64::new(0)),
            }));
        }
        let class = |range: std::ops::Range<usize>| Class {
            free: FreeSet::new(range.len()),
            range,
            next: AtomicUsize::new(0),
        };
        Ok(StreamPool {
            streams,
            normal: class(0..n),
            urgent: class(n..n + urgent),
        })
    }

    fn class(&self, urgent: bool) -> &Class {
        if urgent { &self.urgent } else { &self.normal }
    }

    /// Whether stream `index` is one of the high-priority ones.
    pub(crate) fn is_urgent(&self, index: usize) -> bool {
        self.urgent.range.contains(&index)
    }

    /// A stream for a task (`urgent`: a high-priority one): a free one, taken in turn (the
    /// first free after the one taken last), if any, else the next in turn (shared). (A
    /// stream is given back when its task's body returns, usually with its work still
    /// queued: taking the one given back last would queue task after task on one stream,
    /// each behind the last, with the other streams idle.)
    pub(crate) fn acquire(&self, urgent: bool) -> (Arc<PooledStream>, bool) {
        let c = self.class(urgent);
        if let Some(i) = c.free.take_any() {
            return (self.streams[c.range.start + i].clone(), true);
        }
        let k = c.next.fetch_add(1, Ordering::Relaxed) % c.range.len();
        (self.streams[c.range.start + k].clone(), false)
    }

    /// Stream `index` if it is free (taken, owned), else `None`.
    pub(crate) fn acquire_free(&self, index: usize) -> Option<Arc<PooledStream>> {
        let c = self.class(self.is_urgent(index));
        c.free
            .take(index - c.range.start)
            .then(|| self.streams[index].clone())
    }

    /// Gives back a stream taken with `owned == true`.
    pub(crate) fn release(&self, s: &PooledStream) {
        let c = self.class(self.is_urgent(s.index));
        c.free.put(s.index - c.range.start);
    }
}
