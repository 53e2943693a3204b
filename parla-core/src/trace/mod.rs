//! Profiling: every task is a [`tracing`] span, and each step of its pipeline an event in
//! it; a [`TraceLayer`] turns them into a Perfetto / Chrome trace and a [`Summary`].
//!
//! # The events
//! A task's span (target `parla::task`, name `task`, field `task.id`) is made when the task
//! is spawned and has no parent, so user spans made inside the task's body nest under it.
//! Its steps are `TRACE` events in that span, target `parla::task`, with a `step` field:
//!
//! | `step` | when | fields |
//! | --- | --- | --- |
//! | `spawned` | the task was spawned | |
//! | `dependency` | per dependency that has a span | `dep` (the dependency's span id) |
//! | `ready` | its dependencies finished | |
//! | `mapped` | a device was chosen | `device`, `vcu`, `mem` |
//! | `admitted` | its VCUs and memory were reserved | `mem` (with the bytes its arrays' copies take on the device) |
//! | `started` | a worker starts its first poll | |
//! | `polled` | after each poll of its body | `since` (ns, [`now_ns`] clock: when the poll began) |
//! | `body_finished` | its body returned | |
//! | `gpu_finished` | its GPU work finished (GPU tasks) | `gpu_start`, `gpu_end` (ns, [`now_ns`] clock, from CUDA events), `stream` |
//! | `completed` | its outcome is published (also for a task that never ran) | `error`, when it failed |
//!
//! Workers report their own time as events of target `parla::sched` (`driver_ns`,
//! `body_ns`, `tasks`), from which the summary derives the runtime's overhead per task.
//! Nothing is timed or formatted unless a subscriber wants these events: with no
//! subscriber the cost is a branch per step.
//!
//! # Getting a trace
//! The simplest way is [`Builder::trace`](crate::Builder::trace) (or `PARLA_TRACE=file`)
//! and [`Builder::profile`](crate::Builder::profile) (or `PARLA_PROFILE=1`): the runtime
//! then sends its events, and the spans its tasks open, to a subscriber of its own. To keep
//! your own subscriber as well, compose the layer into it instead:
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//!
//! let (layer, guard) = parla_core::trace::layer("trace.json")?;
//! tracing_subscriber::registry().with(layer).init();
//! let rt = parla_core::Runtime::builder().build()?;
//! rt.block_on(async {
//!     parla_core::task(async {
//!         let _s = tracing::info_span!("my step").entered(); // nested in the task's slice
//!     })
//!     .await
//! })?;
//! drop(rt);
//! eprintln!("{}", guard.summary());
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! Give filters to your other layers (`fmt::layer().with_filter(...)`), not to the whole
//! subscriber: a global filter at `INFO` hides the `TRACE` events the trace is made of.
//!
//! Set yours as the global default, as above. The steps of a task are events sent from the
//! runtime's worker threads, where a subscriber set with `tracing::subscriber::with_default`
//! around `block_on` is not the default: such a subscriber gets no slices. (A task gets a
//! span when its runtime has a subscriber of its own, or else when the thread that spawns
//! it has one: its default, or the global one.)

#[cfg(feature = "tracing")]
mod layer;
#[cfg(feature = "tracing")]
mod summary;
#[cfg(feature = "tracing")]
mod writer;

#[cfg(feature = "tracing")]
pub use layer::{Trace, TraceGuard, TraceLayer, layer};
#[cfg(feature = "tracing")]
pub use summary::{DeviceSummary, Percentiles, Summary};

use std::sync::OnceLock;
use std::time::Instant;

/// `path` numbered `n`: `NAME.n.EXT` (`NAME.n` without an extension; `trace.n` for a path
/// without a file name).
pub(crate) fn numbered(path: &std::path::Path, n: usize) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "trace".into(), |s| s.to_string_lossy());
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{n}"),
    };
    path.with_file_name(name)
}

/// Nanoseconds since the process's trace clock started (its first use): the time base of
/// every timestamp in a trace, host and GPU alike.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The runtime's own subscriber, when it was built with a trace file or a profile.
#[cfg(feature = "tracing")]
pub(crate) struct RtTrace {
    pub(crate) dispatch: tracing::Dispatch,
    /// Taken (closing the file) when the runtime shuts down.
    pub(crate) guard: parking_lot::Mutex<Option<TraceGuard>>,
}

#[cfg(feature = "tracing")]
impl RtTrace {
    /// A subscriber writing `file` and keeping a summary (printed at shutdown if `print`).
    /// Fails when the file cannot be created.
    pub(crate) fn new(file: Option<std::path::PathBuf>, print: bool) -> std::io::Result<RtTrace> {
        use tracing_subscriber::layer::SubscriberExt;
        // (A subscriber of the program's own: a global default, or one set around this
        // call. `has_been_set` would also be true once another runtime set its own
        // subscriber for a moment.)
        let theirs =
            tracing::dispatcher::get_default(|d| !d.is::<tracing::subscriber::NoSubscriber>());
        if theirs {
            eprintln!(
                "parla: a global tracing subscriber is set; the runtime's trace and profile \
                 take task events from its workers, so events inside tasks will not reach \
                 yours. Add parla::trace::layer to your subscriber to keep both."
            );
        }
        let mut b = Trace::new().summary(print);
        if let Some(f) = file {
            b = b.file(f);
        }
        let (layer, guard) = b.build()?;
        Ok(RtTrace {
            dispatch: tracing::Dispatch::new(tracing_subscriber::registry().with(layer)),
            guard: parking_lot::Mutex::new(Some(guard)),
        })
    }
}

#[cfg(feature = "tracing")]
thread_local! {
    /// Nanoseconds this thread spent handing events to subscribers, counted while it
    /// [reports](REPORTING).
    static TRACED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Whether this thread is a worker in a poll whose time it reports (see
    /// [`set_reporting`]): the time spent tracing is measured only then.
    static REPORTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Nanoseconds this thread has spent handing events to subscribers (left out of the
/// runtime's overhead in the summary).
#[cfg(feature = "tracing")]
pub(crate) fn traced_ns() -> u64 {
    TRACED.with(|c| c.get())
}

/// Marks the calling worker as in a poll whose time it reports (or no longer).
#[cfg(feature = "tracing")]
pub(crate) fn set_reporting(on: bool) {
    REPORTING.with(|c| c.set(on));
}

/// A [`now_ns`] reading to time a span of tracing work from, if the thread reports its
/// time ([`add_traced`] counts it then); `None` otherwise, without reading the clock.
#[cfg(feature = "tracing")]
#[inline]
pub(crate) fn traced_from() -> Option<u64> {
    REPORTING.with(|c| c.get()).then(now_ns)
}

/// Counts time spent handing events to subscribers since `from` (a [`traced_from`]
/// reading), less `not` (time spent elsewhere meanwhile).
///
/// A worker's poll, the task bodies it ran and the spans inside it (an event handed to
/// subscribers) are all timed with one clock, the monotonic one ([`now_ns`]), and only on
/// a thread that reports its time: the overhead is the poll's time less the others, which
/// only means something when they are read from the same clock. (With the poll in the
/// thread's CPU time, a body that blocked, in `std::thread::sleep` or blocking I/O, counted
/// its whole wall time against CPU time it did not use, and the summary's overhead fell to
/// zero. The thread's CPU time is also a system call, about 1 us on some virtual machines.)
#[cfg(feature = "tracing")]
pub(crate) fn add_traced(from: Option<u64>, not: u64) {
    if let Some(from) = from {
        let ns = now_ns().saturating_sub(from).saturating_sub(not);
        TRACED.with(|c| c.set(c.get() + ns));
    }
}

/// Runs `f` out of line: tracing code stays out of the hot paths it sits in.
#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
pub(crate) fn cold<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Whether a subscriber may want `TRACE` spans from this thread: a static check and one
/// load, then, only when those allow `TRACE`, whether the thread has a subscriber at all (its
/// default, or the global one). The runtime makes task spans only then, unless it has a
/// subscriber of its own.
///
/// The level hint alone is not enough: `tracing` caches it, and each callsite's interest,
/// from the subscribers registered when it last rebuilt them, and keeps them after those
/// subscribers are gone. Once a traced runtime (`Builder::trace`) has existed, the task
/// span's callsite reads as always enabled, so another runtime's threads, whose default is
/// no subscriber at all, would make spans that go nowhere, and pay for them on every task
/// (a space also keeps traced tasks instead of letting go of them).
#[cfg(feature = "tracing")]
#[inline]
pub(crate) fn may_trace() -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    tracing::Level::TRACE <= STATIC_MAX_LEVEL
        && tracing::Level::TRACE <= LevelFilter::current()
        && cold(|| {
            tracing::dispatcher::get_default(|d| !d.is::<tracing::subscriber::NoSubscriber>())
        })
}

/// Emits pipeline step `$step` of the task with header `$h` (if it is traced), through the
/// runtime's subscriber if it has one.
macro_rules! step {
    ($rt:expr, $h:expr, $step:literal $(, $($f:tt)+)?) => {{
        #[cfg(feature = "tracing")]
        if let Some(t) = $h.trace.as_deref() {
            $crate::trace::cold(|| {
                let from = $crate::trace::traced_from();
                $rt.in_trace(|| {
                    tracing::trace!(target: "parla::task", parent: &t.span, step = $step $(, $($f)+)?)
                });
                $crate::trace::add_traced(from, 0);
            });
        }
    }};
}
pub(crate) use step;
