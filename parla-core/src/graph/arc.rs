//! [`TaskArc`]: the reference-counted pointer to a task, an `Arc` whose memory comes from
//! the task [`arena`](super::arena) rather than from a malloc per task.
//!
//! It keeps what the runtime used of `Arc`: clones, the count, pointer equality, raw
//! pointers for wakers, a cell written in place into uninitialized memory, and conversions
//! to `dyn Task` and `dyn Join<T>`. It has no weak references.
//!
//! Unlike `Arc`, a reference points to the value, not to the start of its allocation, and
//! the count sits in the word just before the value, whatever the value's alignment. So a
//! `TaskArc<dyn Task>` reaches its task's header (the first field of every task) and its
//! count at fixed offsets: no look at the vtable for the value's offset, which `Arc<dyn _>`
//! makes at every access (see [`block_layout`]).
//!
//! # Invariants
//! - A `TaskArc<T>` points to a live `T` in a block allocated by [`arena::alloc_block`]
//!   with [`block_layout`] of the value's layout, [`prefix`] bytes before the value. The
//!   word before the value (its count: [`TaskArc::refs`]) counts, below [`IN_CHUNK`] (which
//!   is set for the life of a block cut from a chunk of the arena), the `TaskArc`s (and raw
//!   pointers taken with `into_raw`) referring to it.
//! - The count is changed as `Arc` changes it: relaxed increments, releasing decrements, and
//!   the decrement that reaches zero acquires (a fence) before the value is dropped and the
//!   block given back, so every access through any reference happens before.

use std::alloc::Layout;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ops::Deref;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering, fence};

use super::arena;
use super::cell::Join;
use super::node::Task;

/// A counted reference to a task (see the module docs).
pub(crate) struct TaskArc<T: ?Sized> {
    /// The value (its count is the word before it).
    ptr: NonNull<T>,
    _owns: PhantomData<T>,
}

/// A counted reference to a task of any type.
pub(crate) type TaskPtr = TaskArc<dyn Task>;

/// A [`TaskPtr`] given up with [`TaskArc::into_non_null`], as a plain pointer.
pub(crate) type RawTask = NonNull<dyn Task>;

// SAFETY: as for `Arc<T>`: the value is shared between the threads holding references
// (`Sync`) and dropped by whichever drops the last one (`Send`); the count is atomic.
unsafe impl<T: ?Sized + Send + Sync> Send for TaskArc<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send + Sync> Sync for TaskArc<T> {}

// A reference moves freely whatever the task (as `Arc`): the task itself never moves.
impl<T: ?Sized> Unpin for TaskArc<T> {}

/// The bit of the count that says the block was cut from a chunk of the arena (what
/// [`arena::free_block`] needs to know); the bits below count the references.
const IN_CHUNK: usize = 1 << (usize::BITS - 2);
/// The bits of the count that count.
const COUNT: usize = IN_CHUNK - 1;

/// More references than this abort the process, as `Arc` does (they cannot be made without
/// leaking them, and the count stays clear of [`IN_CHUNK`]).
const MAX_REFS: usize = COUNT / 2;

/// The bytes of a block before a value aligned to `align`: room for the count, rounded up
/// to the alignment (a power of two: a multiple of the count's size, or a divisor of it).
#[inline(always)]
const fn prefix(align: usize) -> usize {
    if align > size_of::<AtomicUsize>() {
        align
    } else {
        size_of::<AtomicUsize>()
    }
}

/// The size and alignment of the block holding a value of layout `value`: [`prefix`] bytes
/// (the count in the last word), then the value, aligned for both.
#[inline(always)]
fn block_size_align(value: Layout) -> (usize, usize) {
    (
        prefix(value.align()) + value.size(),
        value.align().max(align_of::<AtomicUsize>()),
    )
}

/// The layout of the block holding a value of layout `value` ([`block_size_align`]).
#[inline(always)]
fn block_layout(value: Layout) -> Layout {
    let (size, align) = block_size_align(value);
    // The sum is too large for a layout only for values no allocation could hold: those
    // end as an allocation that fails does.
    Layout::from_size_align(size, align).unwrap_or_else(|_| std::alloc::handle_alloc_error(value))
}

impl<T> TaskArc<T> {
    /// A task allocation holding `value`.
    #[inline]
    pub(crate) fn new(value: T) -> Self {
        let this = Self::new_uninit();
        // SAFETY: the new allocation is this reference's alone; its value is written
        // whole before it is assumed initialized.
        unsafe {
            TaskArc::as_ptr(&this).cast_mut().cast::<T>().write(value);
            this.assume_init()
        }
    }

    /// [`new`](Self::new), the allocation taken from the global allocator rather than cut
    /// from the thread's chunk: for a node that dies long before the tasks cut around it
    /// would (a placeholder, freed as soon as its task is spawned), whose block would
    /// otherwise keep their chunk's memory as long as they live.
    pub(crate) fn new_alone(value: T) -> Self {
        let p = arena::alone(block_layout(Layout::new::<T>()));
        let this = Self::at_block(p, false);
        // SAFETY: as in `new`.
        unsafe {
            TaskArc::as_ptr(&this).cast_mut().cast::<T>().write(value);
            this.assume_init()
        }
    }

    /// A task allocation whose value is not written yet.
    #[inline(always)]
    pub(crate) fn new_uninit() -> TaskArc<MaybeUninit<T>> {
        let (p, in_chunk) = arena::alloc_block(block_layout(Layout::new::<T>()));
        Self::at_block(p, in_chunk)
    }

    /// The reference of a fresh block `p` of `block_layout` for `T` (cut from a chunk if
    /// `in_chunk`), its value not written yet.
    #[inline(always)]
    fn at_block(p: NonNull<u8>, in_chunk: bool) -> TaskArc<MaybeUninit<T>> {
        let refs = if in_chunk { IN_CHUNK | 1 } else { 1 };
        // SAFETY: `p` is a fresh block of `block_layout`: the value starts `prefix` bytes
        // in (aligned: the block and the prefix are), the count in the word before it
        // (aligned for a word: the prefix is a multiple of one). The count is written here;
        // the value may stay uninitialized (`MaybeUninit`).
        unsafe {
            let value = p.byte_add(prefix(align_of::<T>())).cast::<MaybeUninit<T>>();
            value
                .cast::<AtomicUsize>()
                .sub(1)
                .write(AtomicUsize::new(refs));
            // The count just written is this reference's.
            TaskArc::from_non_null(value)
        }
    }

    /// Takes back a reference given up with [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    /// `p` came from `into_raw` of a `TaskArc<U>` whose value has `T`'s size and alignment
    /// (`U` may be unsized), and that reference is taken back once.
    #[inline(always)]
    pub(crate) unsafe fn from_raw(p: *const T) -> Self {
        // SAFETY: `p` is the value of a live reference, not null, whose reference the
        // caller gives; the block's layout is the one `T` gives (same size and alignment).
        unsafe { Self::from_non_null(NonNull::new_unchecked(p.cast_mut())) }
    }

    /// Adds a reference to the task `p` points to, as a clone would.
    ///
    /// # Safety
    /// `p` came from [`as_ptr`](Self::as_ptr) or `into_raw` of a live `TaskArc<T>` (or of
    /// one of another type whose value has `T`'s size and alignment).
    #[inline(always)]
    pub(crate) unsafe fn increment_strong_count(p: *const T) {
        // SAFETY: per the contract; the reference made is given up at once, the count
        // kept.
        let r = ManuallyDrop::new(unsafe { Self::from_raw(p) });
        std::mem::forget(TaskArc::clone(&r));
    }

    /// Drops a reference to the task `p` points to.
    ///
    /// # Safety
    /// As [`increment_strong_count`](Self::increment_strong_count), and the caller owns the
    /// reference it drops.
    #[inline(always)]
    pub(crate) unsafe fn decrement_strong_count(p: *const T) {
        // SAFETY: per the contract.
        drop(unsafe { Self::from_raw(p) });
    }
}

impl<T> TaskArc<MaybeUninit<T>> {
    /// The allocation as one of an initialized `T`.
    ///
    /// # Safety
    /// The value was written whole.
    #[inline(always)]
    pub(crate) unsafe fn assume_init(self) -> TaskArc<T> {
        // SAFETY: the same value and reference; `MaybeUninit<T>` has `T`'s layout, so the
        // blocks do too.
        unsafe { TaskArc::from_non_null(Self::into_non_null(self).cast()) }
    }
}

impl<T: ?Sized> TaskArc<T> {
    /// The count (module invariants).
    #[inline(always)]
    fn refs(&self) -> &AtomicUsize {
        // SAFETY: the word before a live reference's value is its count, initialized when
        // the block was made and live as long as the value (module invariants).
        unsafe { &*self.ptr.as_ptr().cast::<AtomicUsize>().sub(1) }
    }

    /// The value's address.
    #[inline(always)]
    pub(crate) fn as_ptr(this: &Self) -> *const T {
        this.ptr.as_ptr()
    }

    /// Gives up the reference without dropping it: returns the value's address, for
    /// [`from_raw`](Self::from_raw).
    #[inline(always)]
    pub(crate) fn into_raw(this: Self) -> *const T {
        Self::into_non_null(this).as_ptr()
    }

    /// Gives up the reference without dropping it: returns the value's address, for
    /// [`from_non_null`](Self::from_non_null).
    #[inline(always)]
    pub(crate) fn into_non_null(this: Self) -> NonNull<T> {
        ManuallyDrop::new(this).ptr
    }

    /// Takes back a reference given up with [`into_non_null`](Self::into_non_null).
    ///
    /// # Safety
    /// `p` is the value of a live block whose count holds a reference nothing else owns
    /// (one given up with `into_non_null`, or just counted), and that reference is taken
    /// over once.
    #[inline(always)]
    pub(crate) unsafe fn from_non_null(p: NonNull<T>) -> Self {
        TaskArc {
            ptr: p,
            _owns: PhantomData,
        }
    }

    /// How many references there are. A count of one read by that one reference stays
    /// one: there are no weak references that could make another.
    #[inline(always)]
    pub(crate) fn strong_count(this: &Self) -> usize {
        this.refs().load(Ordering::Acquire) & COUNT
    }

    /// Whether `a` and `b` refer to the same task.
    #[inline(always)]
    pub(crate) fn ptr_eq(a: &Self, b: &Self) -> bool {
        ptr::addr_eq(a.ptr.as_ptr(), b.ptr.as_ptr())
    }

    /// The count's address and the bytes from it to the value's end, for prefetching.
    #[inline(always)]
    pub(crate) fn memory(this: &Self) -> (*const u8, usize) {
        (
            this.refs() as *const AtomicUsize as *const u8,
            size_of::<AtomicUsize>() + size_of_val(&**this),
        )
    }

    #[cold]
    #[inline(never)]
    unsafe fn drop_slow(&mut self) {
        let value = Layout::for_value::<T>(self);
        let in_chunk = self.refs().load(Ordering::Relaxed) & IN_CHUNK != 0;
        // SAFETY: this was the last reference (the caller saw the count reach zero and
        // acquired), so nothing else reaches the value or the block: the value is dropped
        // once, then the block (`prefix` bytes before the value: module invariants) given
        // back with the layout it was allocated with (what `block_layout` made of the
        // value's layout, which it found valid then), and what `alloc_block` said of it
        // (kept in the count).
        unsafe {
            ptr::drop_in_place(self.ptr.as_ptr());
            let block = self.ptr.cast::<u8>().byte_sub(prefix(value.align()));
            // (Unchecked: `block_layout` checked this layout when the block was made.)
            let (size, align) = block_size_align(value);
            let layout = Layout::from_size_align_unchecked(size, align);
            arena::free_block(block, layout, in_chunk);
        }
    }
}

impl<T: Task> TaskArc<T> {
    /// The reference as one to a task of any type.
    #[inline(always)]
    pub(crate) fn into_task(self) -> TaskPtr {
        let p: NonNull<dyn Task> = Self::into_non_null(self);
        // SAFETY: the reference just given up, with its value's vtable.
        unsafe { TaskArc::from_non_null(p) }
    }

    /// The reference as one to a task whose output a handle takes.
    #[inline(always)]
    pub(crate) fn into_join<O>(self) -> TaskArc<dyn Join<O>>
    where
        T: Join<O>,
    {
        let p: NonNull<dyn Join<O>> = Self::into_non_null(self);
        // SAFETY: as above.
        unsafe { TaskArc::from_non_null(p) }
    }
}

impl<O: 'static> TaskArc<dyn Join<O>> {
    /// The reference as one to a task of any type.
    #[inline(always)]
    pub(crate) fn into_task(self) -> TaskPtr {
        let p: NonNull<dyn Task> = Self::into_non_null(self);
        // SAFETY: as above (the vtable is `dyn Task`'s part of the `dyn Join` one).
        unsafe { TaskArc::from_non_null(p) }
    }
}

impl<T: ?Sized> Clone for TaskArc<T> {
    #[inline(always)]
    fn clone(&self) -> Self {
        // (Relaxed, as `Arc`: a new reference is made from an existing one, which keeps
        // the task alive meanwhile.)
        let old = self.refs().fetch_add(1, Ordering::Relaxed);
        if old & COUNT > MAX_REFS {
            std::process::abort();
        }
        // SAFETY: the reference just counted.
        unsafe { TaskArc::from_non_null(self.ptr) }
    }
}

impl<T: ?Sized> TaskArc<T> {
    /// A new reference to a task that no other thread can reach yet (a task being spawned,
    /// before it is published): counted by a plain read and write, not a locked
    /// instruction.
    ///
    /// # Safety
    /// No other thread holds a reference to the task or can reach one (through a table, a
    /// list, a queue) until something publishes it after this call, with release ordering
    /// (a lock's unlock, say), so that no other count update races this one.
    #[inline(always)]
    pub(crate) unsafe fn clone_unshared(&self) -> Self {
        let refs = self.refs();
        let old = refs.load(Ordering::Relaxed);
        if old & COUNT > MAX_REFS {
            std::process::abort();
        }
        refs.store(old + 1, Ordering::Relaxed);
        // SAFETY: the reference just counted.
        unsafe { TaskArc::from_non_null(self.ptr) }
    }
}

impl<T: ?Sized> Drop for TaskArc<T> {
    #[inline]
    fn drop(&mut self) {
        if self.refs().fetch_sub(1, Ordering::Release) & COUNT != 1 {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: the count reached zero here: the last reference, after every other
        // reference's accesses (the fence).
        unsafe { self.drop_slow() }
    }
}

impl<T: ?Sized> Deref for TaskArc<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: the value is live while a reference is (module invariants).
        unsafe { self.ptr.as_ref() }
    }
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use super::*;
    use std::sync::Arc;

    struct Counted(Arc<()>);

    #[test]
    fn the_value_is_dropped_once_with_the_last_reference() {
        let token = Arc::new(());
        let a = TaskArc::new(Counted(token.clone()));
        let b = a.clone();
        assert_eq!(TaskArc::strong_count(&a), 2);
        assert!(TaskArc::ptr_eq(&a, &b));
        drop(a);
        assert_eq!(Arc::strong_count(&token), 2);
        let raw = TaskArc::into_raw(b);
        // SAFETY: `raw` came from `into_raw` of a live reference.
        unsafe { TaskArc::increment_strong_count(raw) };
        // SAFETY: the two references `raw` stands for, each taken back once.
        let (c, d) = unsafe { (TaskArc::from_raw(raw), TaskArc::from_raw(raw)) };
        assert_eq!(c.0.as_ref(), &());
        drop(c);
        assert_eq!(Arc::strong_count(&token), 2);
        drop(d);
        assert_eq!(Arc::strong_count(&token), 1);
    }

    #[test]
    fn large_and_overaligned_values_work_too() {
        #[repr(align(256))]
        struct Aligned(u8);
        let a = TaskArc::new(Aligned(7));
        assert_eq!(TaskArc::as_ptr(&a) as usize % 256, 0);
        assert_eq!(a.0, 7);
        let big = TaskArc::new([3u8; 4000]);
        assert!(big.iter().all(|&x| x == 3));
    }
}
