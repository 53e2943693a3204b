//! Scheduling decisions as plain state machines: [`mapping`] (which device a task goes to)
//! and admission (whether its VCUs and memory fit now). Neither runs anything nor names the
//! executor: admission returns what it admitted, and the executor launches it. How the
//! pieces fit together is in `README.md` beside this file.

pub(crate) mod admission;
pub(crate) mod idle;
pub mod mapping;
pub(crate) mod turn;

use std::cell::Cell;

/// The number the next thread to ask for one takes.
static NEXT_THREAD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// This thread's number (`usize::MAX`: none yet).
    static THREAD_NUMBER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's number, taken the first time it asks: distinct for the first
/// threads, for sharded structures where each thread takes a shard as its own (its number
/// modulo the shard count).
#[inline]
pub(crate) fn thread_number() -> usize {
    THREAD_NUMBER.with(|n| {
        let v = n.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_THREAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        n.set(v);
        v
    })
}
