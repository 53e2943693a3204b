//! Scheduling decisions as plain state machines: [`mapping`] (which device a task goes to)
//! and admission (whether its VCUs and memory fit now). Neither runs anything nor names the
//! executor: admission returns what it admitted, and the executor launches it. How the
//! pieces fit together is in `README.md` beside this file.

pub(crate) mod admission;
pub(crate) mod idle;
pub mod mapping;
pub(crate) mod turn;

use std::cell::Cell;

use crossbeam_utils::CachePadded;

use crate::loom::sync::{AtomicUsize, Ordering};

/// The number the next thread to ask for one takes.
static NEXT_THREAD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// This thread's number (`usize::MAX`: none yet).
    static THREAD_NUMBER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// A count that many threads change: a slot per thread (its [`thread_number`] modulo the
/// slots), each on a cache line of its own, summed when read. Each thread writes only its
/// slot's line, where one shared count would move between the cores at every change. A
/// value added on one thread and taken off on another leaves one slot above and one below
/// (slots wrap): only the sum means anything, and a sum read while changes land can be off
/// for a moment (one below zero reads as zero).
pub(crate) struct SlottedCount {
    slots: Box<[CachePadded<AtomicUsize>]>,
}

impl SlottedCount {
    /// A count of zero over `slots` slots (at least one).
    pub(crate) fn new(slots: usize) -> Self {
        SlottedCount {
            slots: (0..slots.max(1))
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
        }
    }

    /// The calling thread's slot.
    #[inline]
    fn slot(&self) -> &AtomicUsize {
        &self.slots[thread_number() % self.slots.len()]
    }

    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: usize) {
        self.slot().fetch_add(n, Ordering::Relaxed);
    }

    /// Takes `n` off.
    #[inline]
    pub(crate) fn sub(&self, n: usize) {
        self.slot().fetch_sub(n, Ordering::Relaxed);
    }

    /// The count (a snapshot, see the type's docs).
    pub(crate) fn sum(&self) -> usize {
        let sum = self
            .slots
            .iter()
            .fold(0usize, |s, c| s.wrapping_add(c.load(Ordering::Relaxed)));
        if (sum as isize) < 0 { 0 } else { sum }
    }
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
