//! Spare references to a space handle, kept by a thread for its next [`TaskRef`](super::TaskRef)s.
//!
//! Every [`TaskRef`](super::TaskRef) holds a strong reference to the handle it was made from
//! (`t.at(key)`): the handle must live as long as the reference, which may be awaited, sent
//! to another thread or kept anywhere. Most references live a moment, though: a loop
//! spawning named tasks makes three per task (`.id(t.at((i, j)))`,
//! `.after([t.at((i - 1, j)), t.at((i, j - 1))])`) and drops them in the same spawn. Each
//! count taken and given back is a locked read-modify-write on the spawning thread: with
//! the spares below, the grid with ids of `benches/overhead.rs` took about a tenth less
//! time per task on 16 workers (an H100 host; `benches/NOTES.md`, twenty-second stop).
//!
//! So a reference dropped inside a runtime's scope (a driver's poll, a poll of
//! `block_on`'s future, an entered handle) keeps its count as a spare of this thread, up to
//! [`MAX`] of one handle, and the next reference made from that handle on this thread takes
//! one instead of counting anew. The spares are real strong counts: the handle lives while
//! a thread keeps one. They are given back (counted down):
//! - at the end of each poll of `block_on`'s future and of each runtime scope (see
//!   `context::RtGuard`), so a thread keeps them no longer than the poll or scope it
//!   dropped them in;
//! - when a [`TaskSpace`](super::TaskSpace) value of that handle is dropped on this thread, so that dropping
//!   a space lets go of it at once (as without spares) where its references were dropped
//!   on the same thread.
//!
//! Outside a runtime's scope, nothing would give them back, so a dropped reference counts
//! down as usual.

use std::cell::Cell;
use std::ptr;
use std::sync::Arc;

use super::SpaceHandle;

/// The most spare counts a thread keeps (of one handle).
const MAX: u32 = 8;

thread_local! {
    /// The handle this thread keeps spare counts of, and how many (none: any handle).
    static SPARE: Cell<(*const SpaceHandle, u32)> = const { Cell::new((ptr::null(), 0)) };
}

/// A reference to `h`: one of this thread's spare counts of it, or a new count.
#[inline]
pub(super) fn take(h: &Arc<SpaceHandle>) -> Arc<SpaceHandle> {
    let p = Arc::as_ptr(h);
    let spare = SPARE.with(|c| {
        let (q, n) = c.get();
        let spare = n > 0 && q == p;
        if spare {
            c.set((q, n - 1));
        }
        spare
    });
    if spare {
        // SAFETY: the thread kept a strong count of `p` (left by `Arc::into_raw` in
        // `give_back`, so `p` came from an `Arc<SpaceHandle>`); the count moves to the
        // returned `Arc`, and the spare count was taken off above.
        unsafe { Arc::from_raw(p) }
    } else {
        Arc::clone(h)
    }
}

/// Lets go of reference `h`: kept as a spare count of this thread where it can be given
/// back later (inside a runtime's scope), dropped otherwise.
#[inline(always)]
pub(super) fn give_back(h: Arc<SpaceHandle>) {
    let p = Arc::into_raw(h);
    let kept = !crate::runtime::context::entered_rt().is_null()
        && SPARE.with(|c| {
            let (q, n) = c.get();
            let keep = n < MAX && (n == 0 || q == p);
            if keep {
                c.set((p, n + 1));
            }
            keep
        });
    if !kept {
        release(p);
    }
}

/// Drops the reference `p` (made by `Arc::into_raw`).
#[inline(never)]
fn release(p: *const SpaceHandle) {
    // SAFETY: `p` is a strong count of an `Arc<SpaceHandle>` made by `Arc::into_raw` in
    // `give_back`, which handed it here to drop, once.
    drop(unsafe { Arc::from_raw(p) });
}

/// Gives back every spare count of this thread.
#[inline]
pub(crate) fn flush() {
    if SPARE.with(|c| c.get().1) != 0 {
        flush_all();
    }
}

#[cold]
#[inline(never)]
fn flush_all() {
    // Cleared first: dropping the last count drops the handle, and maybe the space and its
    // tasks, whose drops may make and drop references of their own.
    let (p, n) = SPARE.with(|c| c.replace((ptr::null(), 0)));
    for _ in 0..n {
        // SAFETY: each of the `n` spare counts is a strong count of `p`, made by
        // `Arc::into_raw` in `give_back` and not taken since (the thread's record was
        // cleared above); each is dropped once, here.
        drop(unsafe { Arc::from_raw(p) });
    }
}

/// Gives back this thread's spare counts if they are of handle `p` (a [`TaskSpace`](super::TaskSpace) value of
/// it is being dropped).
#[inline]
pub(super) fn flush_of(p: *const SpaceHandle) {
    let (q, n) = SPARE.with(|c| c.get());
    if n != 0 && q == p {
        flush_all();
    }
}

/// How many spare counts this thread keeps (for tests).
#[cfg(all(test, not(parla_loom)))]
pub(super) fn kept() -> u32 {
    SPARE.with(|c| c.get().1)
}
