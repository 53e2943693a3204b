//! A lock-free set of free slots (up to 64), taken in turn: what a GPU backend's stream pool
//! keeps of its free streams.
//!
//! # Invariants
//! - A slot is held by at most one taker at a time: taking it is one read-modify-write that
//!   clears its bit and reports whether the bit was set, so of several takers racing for a
//!   slot exactly one sees it set. Putting it back sets the bit (only its holder does).
//! - Puts release and takes acquire: what the holder did with the slot happens before
//!   whatever the next holder does with it.
//! - [`take_any`](FreeSet::take_any) searches from a cursor one past the slot taken last,
//!   wrapping around, so that slots are handed out in turn rather than the same one again
//!   and again (a stream given back with its work still queued would otherwise take task
//!   after task while the others stay idle). The cursor is a hint: a stale one only changes
//!   which free slot is taken.
//!
//! Checked by loom (`loom_test` below).

use crate::loom::sync::{AtomicU64, AtomicUsize, Ordering};

/// The most slots a [`FreeSet`] holds.
pub const MAX_SLOTS: usize = 64;

/// A set of free slots `0..len` (at most [`MAX_SLOTS`]), all free at first.
///
/// ```
/// use parla_core::device::backend::FreeSet;
/// let s = FreeSet::new(3);
/// assert_eq!(s.take_any(), Some(0));
/// assert_eq!(s.take_any(), Some(1));
/// assert!(!s.take(1)); // held
/// s.put(0);
/// assert_eq!(s.take_any(), Some(2)); // in turn: after the slot taken last
/// assert_eq!(s.take_any(), Some(0));
/// assert_eq!(s.take_any(), None);
/// ```
#[derive(Debug)]
pub struct FreeSet {
    /// Bit `i`: slot `i` is free.
    free: AtomicU64,
    /// Where the next search starts: one past the slot taken last (a hint).
    cursor: AtomicUsize,
    len: usize,
}

impl FreeSet {
    /// A set of `len` free slots.
    ///
    /// # Panics
    /// If `len` is 0 or more than [`MAX_SLOTS`] (a backend checks its pool sizes first:
    /// the runtime's builder refuses more streams per GPU than that).
    pub fn new(len: usize) -> FreeSet {
        assert!(
            (1..=MAX_SLOTS).contains(&len),
            "a free set holds 1 to {MAX_SLOTS} slots, not {len}"
        );
        let all = if len == MAX_SLOTS {
            u64::MAX
        } else {
            (1 << len) - 1
        };
        FreeSet {
            free: AtomicU64::new(all),
            cursor: AtomicUsize::new(0),
            len,
        }
    }

    /// Takes a free slot, the first at or after the one after the slot taken last
    /// (wrapping around), if any is free.
    pub fn take_any(&self) -> Option<usize> {
        let mut free = self.free.load(Ordering::Acquire);
        while free != 0 {
            let start = self.cursor.load(Ordering::Relaxed) % self.len;
            let ahead = free & (u64::MAX << start);
            let i = if ahead != 0 { ahead } else { free }.trailing_zeros() as usize;
            let bit = 1 << i;
            let was = self.free.fetch_and(!bit, Ordering::AcqRel);
            if was & bit != 0 {
                self.cursor.store(i + 1, Ordering::Relaxed);
                return Some(i);
            }
            // Somebody took it first: look again at what is free now.
            free = was & !bit;
        }
        None
    }

    /// Takes slot `i` if it is free. Returns whether it did.
    pub fn take(&self, i: usize) -> bool {
        debug_assert!(i < self.len);
        let bit = 1 << i;
        // (Looked at first: a held slot costs no write of the line other takers share.)
        self.free.load(Ordering::Relaxed) & bit != 0
            && self.free.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// Gives back slot `i`, which the caller took.
    pub fn put(&self, i: usize) {
        debug_assert!(i < self.len);
        let was = self.free.fetch_or(1 << i, Ordering::AcqRel);
        debug_assert!(was & (1 << i) == 0, "slot {i} was free already");
    }
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use super::*;

    #[test]
    fn slots_are_taken_in_turn() {
        let s = FreeSet::new(4);
        assert_eq!(s.take_any(), Some(0));
        assert_eq!(s.take_any(), Some(1));
        s.put(0);
        // The search starts after the slot taken last, not at the one given back.
        assert_eq!(s.take_any(), Some(2));
        assert_eq!(s.take_any(), Some(3));
        assert_eq!(s.take_any(), Some(0));
        assert_eq!(s.take_any(), None);
        s.put(1);
        assert_eq!(s.take_any(), Some(1));
    }

    #[test]
    fn a_slot_is_taken_only_while_free() {
        let s = FreeSet::new(MAX_SLOTS);
        assert!(s.take(63));
        assert!(!s.take(63));
        s.put(63);
        assert!(s.take(63));
        for _ in 0..63 {
            assert!(s.take_any().is_some());
        }
        assert_eq!(s.take_any(), None);
    }

    #[test]
    #[should_panic(expected = "1 to 64 slots")]
    fn more_than_64_slots_is_refused() {
        let _ = FreeSet::new(65);
    }

    /// Threads taking and giving back slots at once never hold one slot together.
    #[test]
    fn takers_never_share_a_slot() {
        let s = FreeSet::new(3);
        let held: Vec<std::sync::atomic::AtomicBool> = (0..3)
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect();
        std::thread::scope(|sc| {
            for t in 0..4 {
                let (s, held) = (&s, &held);
                sc.spawn(move || {
                    for k in 0..20_000 {
                        let got = if (k + t) % 3 == 0 {
                            s.take(k % 3).then_some(k % 3)
                        } else {
                            s.take_any()
                        };
                        if let Some(i) = got {
                            assert!(!held[i].swap(true, Ordering::AcqRel), "slot {i} shared");
                            held[i].store(false, Ordering::Release);
                            s.put(i);
                        }
                    }
                });
            }
        });
        assert_eq!(s.take_any().into_iter().count(), 1);
    }
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    /// Two takers racing for two slots, one by `take_any` and one by `take`, each writing the
    /// slot it holds (loom reports a write that races with another holder's), then giving it
    /// back: never both hold a slot, and every slot ends free.
    #[test]
    fn takers_never_share_a_slot() {
        loom::model(|| {
            let s = Arc::new(FreeSet::new(2));
            let cells = Arc::new([UnsafeCell::new(0u32), UnsafeCell::new(0u32)]);
            let other = {
                let (s, cells) = (s.clone(), cells.clone());
                thread::spawn(move || {
                    if s.take(1) {
                        // SAFETY: slot 1 is held here (in the model).
                        cells[1].with_mut(|v| unsafe { *v += 1 });
                        s.put(1);
                    }
                })
            };
            for _ in 0..2 {
                if let Some(i) = s.take_any() {
                    // SAFETY: slot `i` is held here (in the model).
                    cells[i].with_mut(|v| unsafe { *v += 1 });
                    s.put(i);
                }
            }
            other.join().unwrap();
            assert!(s.take(0) && s.take(1), "every slot ends free");
        });
    }
}
