//! Where task memory comes from: blocks cut one after the other from a thread's current
//! chunk, each chunk freed when the last of its blocks is.
//!
//! A spawn takes its task's block from the spawning thread's chunk by moving a cursor, and a
//! task's last reference, dropped on whatever thread, gives the block back to the chunk's
//! count (one atomic decrement for the blocks of a chunk that a thread frees in a row).
//! The global allocator sees one allocation per chunk of [`CHUNK`] bytes rather than one
//! per task: a malloc and a free per task (on two threads, the free under the spawning
//! thread's arena lock) were the largest single cost of a task's life.
//!
//! A block is never reused on its own (the task cache of `runtime::exec` reuses whole task
//! allocations instead); its memory goes back with its chunk's. So a task that outlives
//! the tasks cut around it keeps their memory: a thread whose chunks hold more than
//! [`DEAD_LIMIT`] freed blocks takes its tasks' memory from the global allocator until
//! they hold fewer ([`Owner`]).
//!
//! # Invariants
//! - A chunk's `live` count starts at [`CHARGE`]. Each block freed takes one off; the
//!   thread cutting blocks from the chunk takes off `CHARGE - cut` when it moves on (at its
//!   next chunk, or when it exits), where `cut` counts the blocks it cut. So the count
//!   reaches zero exactly once, after every block was freed and the thread moved on, and
//!   whoever brings it there frees the chunk. (`cut` stays far below `CHARGE`.)
//! - A thread may hold the shares of blocks it freed and take them off later, together
//!   ([`Cutter::note_free`]): the chunk stays live meanwhile, as it would with the blocks.
//! - Each decrement releases, and the one that reaches zero acquires (a fence) before
//!   freeing: every access to every block of the chunk happens before its memory goes back.
//! - A block cut from a chunk lies in it, and chunks are aligned to their size, [`CHUNK`]:
//!   the chunk of a block is its address rounded down to that, so tasks do not store it
//!   (only whether they were cut from one, which [`alloc_block`] says). A block larger than
//!   [`MAX_BLOCK`], aligned to more than [`CHUNK_ALIGN`], asked for after the thread's
//!   chunk destructor ran, or past the dead-block limit, comes from the global allocator.
//! - An [`Owner`]'s count of dead blocks is the blocks freed (taken off a count) in its
//!   thread's chunks that are still allocated: each put adds the blocks it frees before its
//!   decrement, and the put that frees a chunk takes off all its blocks after its fence.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::cell::{Cell, OnceCell};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use crate::loom::sync::{AtomicUsize, Ordering, fence};
use crate::scheduler::SlottedCount;

/// Bytes per chunk, its count included, and its alignment.
pub(crate) const CHUNK: usize = 16 * 1024;
/// The largest alignment a block cut from a chunk may ask for.
pub(crate) const CHUNK_ALIGN: usize = 64;
/// The largest block cut from a chunk (a chunk holds at least 15 of them).
pub(crate) const MAX_BLOCK: usize = 1024;
/// A chunk's count when made (see the module invariants).
const CHARGE: usize = 1 << (usize::BITS - 2);
/// How many freed blocks the chunks a thread cut may hold before the thread stops cutting
/// new ones (see [`Owner`]): 16 MiB of tasks of 250 bytes. (The reduction of
/// `benches/overhead.rs`, whose finished tasks the runtime's pools of spent tasks keep a
/// few of from many chunks, reaches about 50,000.)
const DEAD_LIMIT: usize = 1 << 16;

/// What the chunks one thread cut share: how many of their blocks were freed while their
/// chunk stays allocated for the others. A chunk goes back only when all its blocks are
/// freed, so tasks that live much longer than the tasks spawned around them keep the
/// memory of those; past [`DEAD_LIMIT`] such blocks the thread takes its tasks' memory
/// from the global allocator instead, until enough of those chunks went back.
///
/// Every worker frees a spawning thread's tasks, so the count is a [`SlottedCount`].
pub(crate) struct Owner {
    dead: SlottedCount,
}

impl Owner {
    fn new() -> Self {
        Owner {
            dead: SlottedCount::new(16),
        }
    }
}

/// The head of a chunk, on a cache line of its own (the blocks after it are written by
/// their tasks' threads, the count by every thread freeing one).
#[repr(C, align(64))]
pub(crate) struct Chunk {
    /// The count (module invariants).
    live: AtomicUsize,
    /// How many blocks were cut from it, written by the cutting thread as it moves on.
    cut: AtomicUsize,
    /// The cutting thread's [`Owner`] (a reference from `Arc::into_raw`, the chunk's own).
    owner: *const Owner,
}

fn chunk_layout() -> Layout {
    // (Constant arguments: valid, and folded at compile time.)
    Layout::from_size_align(CHUNK, CHUNK).unwrap()
}

impl Chunk {
    /// A new chunk, charged, cut by the thread of `owner`.
    fn new(owner: Arc<Owner>) -> NonNull<Chunk> {
        let layout = chunk_layout();
        // SAFETY: the layout's size is not zero.
        let p = unsafe { alloc(layout) }.cast::<Chunk>();
        let Some(p) = NonNull::new(p) else {
            handle_alloc_error(layout)
        };
        // SAFETY: `p` is a fresh allocation of `CHUNK` bytes aligned for a `Chunk`.
        unsafe {
            p.as_ptr().write(Chunk {
                live: AtomicUsize::new(CHARGE),
                cut: AtomicUsize::new(0),
                owner: Arc::into_raw(owner),
            })
        };
        p
    }

    /// Takes `n` off the count of `chunk`, and frees it when that brings the count to zero.
    /// `freed`: how many blocks that gives back (`n` for blocks, 0 for the cutting
    /// thread's charge), counted in the owner's dead blocks until the chunk goes.
    ///
    /// # Safety
    /// `chunk` is live, and the caller owns `n` of its count: the blocks it frees (`n` =
    /// `freed`), or the cutting thread's charge (`n` = `CHARGE - cut`, after it wrote
    /// `cut`). It does not touch the chunk or those blocks afterwards.
    ///
    /// Returns whether it freed the chunk.
    #[inline]
    pub(crate) unsafe fn put(chunk: NonNull<Chunk>, n: usize, freed: usize) -> bool {
        // SAFETY: live per the contract.
        let c = unsafe { chunk.as_ref() };
        // SAFETY: the chunk holds a reference to its owner while it lives.
        let owner = unsafe { &*c.owner };
        if freed != 0 {
            owner.dead.add(freed);
        }
        if c.live.fetch_sub(n, Ordering::Release) != n {
            return false;
        }
        fence(Ordering::Acquire);
        // Its blocks, all freed, leave the owner's dead ones with it. (Each was added
        // before its put, which happens before this one's fence: the count cannot go
        // below zero.)
        owner.dead.sub(c.cut.load(Ordering::Relaxed));
        // SAFETY: the count reached zero: every block was freed and the cutting thread
        // moved on (module invariants), so nothing else refers to the chunk; it was
        // allocated with `chunk_layout` by `Chunk::new`, and its head written there, with
        // the owner's reference from `Arc::into_raw`, given back here once.
        unsafe {
            drop(Arc::from_raw(c.owner));
            ptr::drop_in_place(chunk.as_ptr());
            dealloc(chunk.as_ptr().cast(), chunk_layout());
        }
        true
    }
}

/// A thread's chunk and how far it has cut it.
struct Cutter {
    chunk: Cell<Option<NonNull<Chunk>>>,
    /// The next free byte, and the end of the chunk (addresses).
    next: Cell<usize>,
    end: Cell<usize>,
    /// Blocks cut from `chunk` so far.
    cut: Cell<usize>,
    /// What the thread's chunks share (made with the first).
    owner: OnceCell<Arc<Owner>>,
    /// The chunk of the blocks this thread freed last, and how many of them it has not
    /// taken off that chunk's count yet.
    freed: Cell<Option<NonNull<Chunk>>>,
    unput: Cell<usize>,
}

impl Cutter {
    /// Moves on from the current chunk (if any), giving up the thread's charge on it.
    fn retire(&self) {
        if let Some(c) = self.chunk.take() {
            let cut = self.cut.replace(0);
            self.next.set(0);
            self.end.set(0);
            // SAFETY: the chunk is live while the thread holds its charge, which it gives
            // up here, once (the chunk is taken out of `self.chunk`), after writing `cut`.
            unsafe {
                c.as_ref().cut.store(cut, Ordering::Relaxed);
                Chunk::put(c, CHARGE - cut, 0);
            }
        }
    }

    /// Notes a block of `chunk` freed: its share of the count is taken off with the next
    /// ones of the same chunk, in one decrement, when the thread frees a block of another
    /// chunk or exits. (Tasks spawned one after the other share a chunk, and mostly finish
    /// one after the other: a decrement per task would move the count's line between the
    /// cores finishing them, once per task.)
    #[inline]
    fn note_free(&self, chunk: NonNull<Chunk>) {
        if self.freed.get() == Some(chunk) {
            self.unput.set(self.unput.get() + 1);
        } else {
            self.put_freed();
            self.freed.set(Some(chunk));
            self.unput.set(1);
        }
    }

    /// Takes what this thread freed off its chunk's count.
    fn put_freed(&self) {
        if let Some(c) = self.freed.take() {
            let n = self.unput.replace(0);
            // SAFETY: the chunk is live while the thread holds the shares of its freed
            // blocks (`n`, at least one), given up here, once (the chunk is taken out of
            // `self.freed`).
            unsafe { Chunk::put(c, n, n) };
        }
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.retire();
        self.put_freed();
    }
}

thread_local! {
    static CUTTER: Cutter = const {
        Cutter {
            chunk: Cell::new(None),
            next: Cell::new(0),
            end: Cell::new(0),
            cut: Cell::new(0),
            owner: OnceCell::new(),
            freed: Cell::new(None),
            unput: Cell::new(0),
        }
    };
}

/// Whether blocks of `layout` are cut from chunks.
#[inline(always)]
fn small(layout: Layout) -> bool {
    // (Under loom a chunk's count is a model object, which cannot outlive one run of a
    // model, as a thread's chunk would: tasks there take their memory alone, and the
    // chunk protocol has a model of its own.)
    layout.size() <= MAX_BLOCK && layout.align() <= CHUNK_ALIGN && !cfg!(parla_loom)
}

/// A block of `layout` (whose size is not zero), uninitialized, and whether it was cut
/// from a chunk (to tell [`free_block`]).
#[inline]
pub(crate) fn alloc_block(layout: Layout) -> (NonNull<u8>, bool) {
    if small(layout)
        && let Ok(Some(b)) = CUTTER.try_with(|c| cut(c, layout))
    {
        return (b, true);
    }
    (alone(layout), false)
}

/// Cuts a block of `layout` from the thread's chunk, moving to a new chunk when the block
/// does not fit in what is left; `None` when the thread's chunks hold too many freed
/// blocks to cut a new one ([`Owner`]).
#[inline]
fn cut(c: &Cutter, layout: Layout) -> Option<NonNull<u8>> {
    let start = (c.next.get() + layout.align() - 1) & !(layout.align() - 1);
    let end = start + layout.size();
    if c.chunk.get().is_none() || end > c.end.get() {
        return next_chunk(c, layout);
    }
    c.next.set(end);
    c.cut.set(c.cut.get() + 1);
    // SAFETY: `start` lies inside the thread's live chunk (past its head), so not null.
    Some(unsafe { NonNull::new_unchecked(start as *mut u8) })
}

#[cold]
#[inline(never)]
fn next_chunk(c: &Cutter, layout: Layout) -> Option<NonNull<u8>> {
    c.retire();
    let owner = c.owner.get_or_init(|| Arc::new(Owner::new()));
    if owner.dead.sum() > DEAD_LIMIT {
        return None;
    }
    let chunk = Chunk::new(owner.clone());
    let base = chunk.as_ptr() as usize;
    c.chunk.set(Some(chunk));
    c.next.set(base + size_of::<Chunk>());
    c.end.set(base + CHUNK);
    // A block of at most `MAX_BLOCK` bytes aligned to at most `CHUNK_ALIGN` fits in a
    // fresh chunk.
    cut(c, layout)
}

/// A block of `layout` from the global allocator, not cut from a chunk (whatever its
/// size): for nodes whose lives are unlike their thread's tasks' (see
/// [`TaskArc::new_alone`](super::arc::TaskArc::new_alone)). [`free_block`] takes it with
/// `in_chunk` false.
#[cold]
pub(crate) fn alone(layout: Layout) -> NonNull<u8> {
    // SAFETY: the caller's layout has a size that is not zero.
    let p = unsafe { alloc(layout) };
    let Some(ptr) = NonNull::new(p) else {
        handle_alloc_error(layout)
    };
    ptr
}

/// Gives back `block`, of `layout`; `in_chunk` is what [`alloc_block`] said of it.
///
/// # Safety
/// `block` came from [`alloc_block`] with `layout`, is given back once, and nothing refers
/// to its memory any more.
#[inline(always)]
pub(crate) unsafe fn free_block(block: NonNull<u8>, layout: Layout, in_chunk: bool) {
    if !in_chunk {
        // SAFETY: allocated by `alone` with `layout`.
        unsafe { dealloc(block.as_ptr(), layout) };
        return;
    }
    let c = chunk_of(block);
    if CUTTER.try_with(|t| t.note_free(c)).is_err() {
        // SAFETY: the block's chunk is live while the block is, and the block owns one of
        // its count.
        unsafe { Chunk::put(c, 1, 1) };
    }
}

/// The chunk a block cut from one lies in.
#[inline(always)]
fn chunk_of(block: NonNull<u8>) -> NonNull<Chunk> {
    let at = block
        .as_ptr()
        .map_addr(|a| a & !(CHUNK - 1))
        .cast::<Chunk>();
    // SAFETY: a chunk's address, not null.
    unsafe { NonNull::new_unchecked(at) }
}

/// Whether this thread is cutting blocks from the chunk that `p` points into (tests).
#[cfg(all(test, not(parla_loom)))]
pub(crate) fn in_current_chunk(p: *const u8) -> bool {
    CUTTER.with(|c| {
        c.chunk.get().is_some_and(|ch| {
            let base = ch.as_ptr() as usize;
            (base..base + CHUNK).contains(&(p as usize))
        })
    })
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use super::*;

    #[test]
    fn blocks_are_cut_in_order_aligned_and_the_chunk_goes_when_the_last_one_does() {
        let l = Layout::from_size_align(200, 16).unwrap();
        let (a, _) = alloc_block(l);
        let (b, in_chunk) = alloc_block(l);
        assert!(in_chunk);
        let chunk = chunk_of(a);
        assert_eq!(chunk_of(b), chunk);
        assert!(in_current_chunk(a.as_ptr()));
        assert_eq!(a.as_ptr() as usize % 16, 0);
        assert!(b.as_ptr() as usize >= a.as_ptr() as usize + 200);
        // Fill the chunk: the thread moves to another one.
        let mut blocks = vec![a, b];
        while chunk_of(*blocks.last().unwrap()) == chunk {
            blocks.push(alloc_block(l).0);
        }
        assert!(blocks.len() >= CHUNK / 208 - 1);
        let live = || {
            // SAFETY: the first chunk is live while any of its blocks is (read below only
            // while some are).
            unsafe { chunk.as_ref() }.live.load(Ordering::Relaxed)
        };
        // The thread moved on: only the cut blocks hold the chunk.
        let cut = blocks.len() - 1;
        assert_eq!(live(), cut);
        let last = blocks.pop().unwrap();
        let (first_two, rest) = blocks.split_at(2);
        for b in first_two {
            // SAFETY: each block was allocated above with `l`, and is freed once.
            unsafe { free_block(*b, l, true) };
        }
        // Noted, not yet taken off the count...
        assert_eq!(live(), cut);
        // ...until the thread frees a block of another chunk.
        // SAFETY: as above.
        unsafe { free_block(last, l, true) };
        assert_eq!(live(), cut - 2);
        for b in rest {
            // SAFETY: as above.
            unsafe { free_block(*b, l, true) };
        }
    }

    #[test]
    fn large_or_overaligned_blocks_come_from_the_global_allocator() {
        for l in [
            Layout::from_size_align(MAX_BLOCK + 1, 8).unwrap(),
            Layout::from_size_align(64, 128).unwrap(),
        ] {
            let (b, in_chunk) = alloc_block(l);
            assert!(!in_chunk && !in_current_chunk(b.as_ptr()));
            assert_eq!(b.as_ptr() as usize % l.align(), 0);
            // SAFETY: allocated above with `l`, freed once.
            unsafe { free_block(b, l, false) };
        }
    }

    /// Blocks freed while their chunk stays (a task outliving its neighbours) count as
    /// dead for the thread that cut them; past the limit it takes memory from the global
    /// allocator, and cuts chunks again once they went back.
    #[test]
    fn a_thread_whose_chunks_hold_too_many_freed_blocks_stops_cutting_new_ones() {
        std::thread::spawn(|| {
            let l = Layout::from_size_align(240, 8).unwrap();
            let dead = || {
                CUTTER.with(|c| {
                    let owner = c.owner.get();
                    owner.map_or(0, |o| o.dead.sum())
                })
            };
            // One block of each chunk kept, the others freed (and taken off: each chunk's
            // run of frees is put when the next chunk's begins).
            let mut kept = Vec::new();
            let mut chunks = 0;
            while dead() <= DEAD_LIMIT {
                let (first, in_chunk) = alloc_block(l);
                assert!(in_chunk, "cut while the dead blocks stay under the limit");
                kept.push(first);
                let mut rest = Vec::new();
                loop {
                    let (b, _) = alloc_block(l);
                    if chunk_of(b) != chunk_of(first) {
                        // SAFETY: a block of a new chunk, not used.
                        unsafe { free_block(b, l, true) };
                        break;
                    }
                    rest.push(b);
                }
                for b in rest {
                    // SAFETY: allocated above with `l`, freed once.
                    unsafe { free_block(b, l, true) };
                }
                chunks += 1;
            }
            assert!(chunks > 1);
            // Past the limit: the rest of the current chunk, then the global allocator.
            let mut rest = Vec::new();
            let alone = loop {
                let (b, in_chunk) = alloc_block(l);
                if !in_chunk {
                    break b;
                }
                rest.push(b);
                assert!(rest.len() <= CHUNK / 240, "a new chunk past the limit");
            };
            // SAFETY: allocated above with `l`, freed once.
            unsafe { free_block(alone, l, false) };
            kept.extend(rest);
            for k in kept {
                // SAFETY: as above.
                unsafe { free_block(k, l, true) };
            }
            // A block of another chunk, to put the last run of frees.
            let (b, in_chunk) = alloc_block(l);
            assert!(in_chunk, "the chunks went back: cut again");
            // SAFETY: as above.
            unsafe { free_block(b, l, true) };
            CUTTER.with(|c| c.put_freed());
            assert!(dead() < 64, "{} dead blocks left", dead());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn blocks_freed_on_other_threads_free_the_chunk_once() {
        let l = Layout::from_size_align(512, 8).unwrap();
        let blocks: Vec<_> = (0..200).map(|_| alloc_block(l).0).collect();
        assert!(in_current_chunk(blocks.last().unwrap().as_ptr()));
        struct Send(Vec<NonNull<u8>>);
        // SAFETY: the blocks are plain memory owned by this test; freeing from another
        // thread is what the arena supports.
        unsafe impl std::marker::Send for Send {}
        let (x, y) = blocks.split_at(100);
        let hs: Vec<_> = [Send(x.to_vec()), Send(y.to_vec())]
            .into_iter()
            .map(|part| {
                std::thread::spawn(move || {
                    let part = part;
                    for b in part.0 {
                        // SAFETY: allocated above with `l`, freed once.
                        unsafe { free_block(b, l, true) };
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    struct Ptr(NonNull<Chunk>);
    // SAFETY: the chunk's count is atomic; the threads only call `Chunk::put`.
    unsafe impl Send for Ptr {}

    /// Two blocks freed on two threads while the cutting thread moves on: the chunk is
    /// freed exactly once, by the last of the three.
    #[test]
    fn loom_test_chunk_freed_once_after_its_blocks_and_its_cutter() {
        loom::model(|| {
            let owner = std::sync::Arc::new(Owner::new());
            let chunk = Chunk::new(owner.clone());
            let cut = 2;
            // SAFETY: the chunk is live until the puts below; written before the cutting
            // thread's put, as `Cutter::retire` does.
            unsafe { chunk.as_ref() }.cut.store(cut, Ordering::Relaxed);
            let freed = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = (0..cut)
                .map(|_| {
                    let p = Ptr(chunk);
                    let freed = freed.clone();
                    thread::spawn(move || {
                        let p = p;
                        // SAFETY: each thread owns one block's share of the count.
                        if unsafe { Chunk::put(p.0, 1, 1) } {
                            freed.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            // SAFETY: the cutting thread's charge, given up once.
            if unsafe { Chunk::put(chunk, CHARGE - cut, 0) } {
                freed.fetch_add(1, Ordering::Relaxed);
            }
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(freed.load(Ordering::Relaxed), 1);
            assert_eq!(owner.dead.sum(), 0, "no dead block left");
        });
    }
}
