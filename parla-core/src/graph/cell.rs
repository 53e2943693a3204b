//! The allocation behind a task: its [`Header`] and its future (later its output), in one
//! [`TaskArc`].
//!
//! # Invariants
//! - The future is polled only by the holder of the task's run token: the one reference
//!   handed from admission (or a wake) to a driver. Exactly one run token exists per task
//!   at a time, so two polls never overlap.
//! - The stage is written (output stored, or future dropped) before the outcome is published
//!   under the header's `links` lock; the join handle reads the stage only after it saw the
//!   outcome under that lock.
//! - The output is taken or dropped exactly once, as the header's join protocol decides.
//! - A [`TaskArc`] has no weak references: a task whose count is one has one reference,
//!   and nothing can make another ([`reuse_as`] relies on it).

use std::cell::UnsafeCell;
use std::future::Future;
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::arc::{TaskArc, TaskPtr};
use super::node::{Header, Outcome, Task};
use crate::error::TaskError;

/// A task whose output a handle can take.
pub(crate) trait Join<T>: Task {
    /// Takes the output of a task whose outcome is `Ok`.
    ///
    /// # Safety
    /// The caller is the task's one handle, it saw the `Ok` outcome published, and it
    /// takes the output at most once.
    unsafe fn take_output(&self) -> Option<T>;
}

enum Stage<F: Future> {
    Running(F),
    Finished(F::Output),
    Empty,
}

impl<T: 'static> dyn Join<T> {
    /// The task's header without a virtual call (see `<dyn Task>::header`).
    #[inline(always)]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: a `Join` is a `TaskCell`, `#[repr(C)]` with its header first, so the data
        // pointer is the header's address, valid as long as the cell.
        let h = unsafe { &*(self as *const dyn Join<T> as *const Header) };
        debug_assert!(std::ptr::eq(h, self.node_header()));
        h
    }
}

/// Where a task cell keeps its declared data accesses: nothing for most tasks.
pub(crate) trait DataSlot: Send + Sync + 'static {
    fn get(&self) -> Option<&crate::data::Accesses>;
}

impl DataSlot for () {
    #[inline(always)]
    fn get(&self) -> Option<&crate::data::Accesses> {
        None
    }
}

impl DataSlot for Arc<crate::data::Accesses> {
    #[inline(always)]
    fn get(&self) -> Option<&crate::data::Accesses> {
        Some(self)
    }
}

/// A failure of the runtime's own work inside a task's poll (making its data valid),
/// raised with `resume_unwind` and turned into a [`TaskError::Device`].
pub(crate) struct DeviceFailure {
    pub(crate) device: String,
    pub(crate) message: String,
}

#[repr(C)]
pub(crate) struct TaskCell<F: Future, D = ()> {
    header: Header,
    stage: UnsafeCell<Stage<F>>,
    data: D,
}

// SAFETY: the stage is only touched by one thread at a time (the run-token holder while
// running, then whoever the join protocol names), per the module invariants, so sharing the
// cell needs only that the future and output can move between threads.
unsafe impl<F: Future + Send, D: Sync> Sync for TaskCell<F, D> where F::Output: Send {}

impl<F: Future, D> TaskCell<F, D> {
    pub(crate) fn new(header: Header, fut: F, data: D) -> Self {
        TaskCell {
            header,
            stage: UnsafeCell::new(Stage::Running(fut)),
            data,
        }
    }

    /// A new cell, written field by field into its allocation: `init` writes the header
    /// there, where building the cell on the stack and moving it would copy it over (two
    /// calls to `memcpy` per spawn).
    ///
    /// `reused`: the allocation of a finished task to write the cell into (see
    /// [`reuse_as`]), rather than a new one.
    #[inline(always)]
    pub(crate) fn new_arc(
        reused: Option<TaskArc<MaybeUninit<Self>>>,
        init: impl FnOnce(&mut MaybeUninit<Header>),
        fut: F,
        data: D,
    ) -> TaskArc<Self> {
        let cell = match reused {
            Some(cell) => cell,
            None => TaskArc::new_uninit(),
        };
        let p = TaskArc::as_ptr(&cell).cast_mut().cast::<Self>();
        // SAFETY: `cell` is the only reference to its allocation: a new one, or one
        // `reuse_as` checked (and tasks have no weak references), so nothing else can see
        // it, and no reference to the value lives while it is written. `init` gets the
        // header's place as a `MaybeUninit`, which it can only write, and writes all of it
        // (its callers use `MaybeUninit::write`); the other fields are written here, so
        // every field is initialized before `assume_init`. If `init` panics, the
        // allocation is freed without dropping anything in it (a header it wrote is
        // leaked; `fut` and `data` are still the caller's, dropped as it unwinds).
        unsafe {
            init(&mut *(&raw mut (*p).header).cast::<MaybeUninit<Header>>());
            (&raw mut (*p).stage).write(UnsafeCell::new(Stage::Running(fut)));
            (&raw mut (*p).data).write(data);
            cell.assume_init()
        }
    }
}

/// The allocation of the finished task `task`, emptied, for a new cell of type `C` to be
/// written into ([`TaskCell::new_arc`]): when `task` is the last reference to it (no weak
/// one either) and its cell has `C`'s size and alignment. Handed back otherwise, to be
/// dropped as usual.
///
/// This saves a free and an allocation per spawn: a thread spawning tasks of one type in
/// a loop writes each into the memory of one that finished.
#[inline]
pub(crate) fn reuse_as<C>(task: TaskPtr) -> Result<TaskArc<MaybeUninit<C>>, TaskPtr> {
    let fits = size_of_val::<dyn Task>(&*task) == size_of::<C>()
        && align_of_val::<dyn Task>(&*task) == align_of::<C>();
    // The only reference: no other one, and tasks have no weak references, so none can be
    // made meanwhile. The fence pairs with the release of the other references' drops,
    // so their accesses to the task happen before it is emptied and written over here.
    if !fits || TaskArc::strong_count(&task) != 1 {
        return Err(task);
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    let raw = TaskArc::into_raw(task).cast_mut();
    // SAFETY: `raw` is the value of the task's only reference, and nothing else can reach
    // it: dropping it in place is the drop the last reference would have done, and
    // nothing reads it afterwards. (Should a destructor panic, the allocation leaks: the
    // reference is already given up, so nothing is dropped twice.) `from_raw` then takes
    // the allocation back as one of an uninitialized `C`: the value has the size and
    // alignment of `C` (checked above), as `from_raw` requires, so its block has the layout
    // of a `C`'s, which is what the reference gives back when it drops.
    unsafe {
        std::ptr::drop_in_place(raw);
        Ok(TaskArc::from_raw(raw.cast::<MaybeUninit<C>>()))
    }
}

/// The text of a panic payload: a string, an error (`panic_any(Box<dyn Error>)`, as
/// `anyhow`-style code raises), or a number, as it displays; of any other type, that it had
/// none (the payload itself is dropped: a task's error is `Clone`, a payload is not).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    macro_rules! shown {
        ($($t:ty),*) => {
            $(if let Some(v) = p.downcast_ref::<$t>() {
                return v.to_string();
            })*
        };
    }
    if let Some(s) = p.downcast_ref::<&str>() {
        return (*s).to_string();
    }
    shown!(
        String,
        Box<dyn std::error::Error + Send + Sync>,
        Box<dyn std::error::Error + Send>,
        i32,
        i64,
        u32,
        u64,
        usize,
        isize
    );
    "non-string panic payload".to_string()
}

/// Replaces `stage` with `Empty`, dropping what it held; a panicking destructor is caught.
fn clear<F: Future>(stage: &mut Stage<F>) {
    let _ = catch_unwind(AssertUnwindSafe(|| *stage = Stage::Empty));
}

impl<F, D: DataSlot> Task for TaskCell<F, D>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn node_header(&self) -> &Header {
        &self.header
    }

    fn data(&self) -> Option<&crate::data::Accesses> {
        self.data.get()
    }

    unsafe fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        // SAFETY: the caller holds the run token (this method's contract), so no other
        // reference to the stage exists while this one lives.
        let stage = unsafe { &mut *self.stage.get() };
        let Stage::Running(fut) = stage else {
            // Not reachable under the contract; finishing is the safe answer.
            return Poll::Ready(Ok(()));
        };
        if self.header.abort_requested() {
            // Its handle aborted it: the body is dropped where it stands, as if it
            // panicked at this poll.
            clear(stage);
            return Poll::Ready(Err(Arc::new(self.header.aborted_error())));
        }
        // SAFETY: the future lives inside the `Arc`ed cell and is never moved until it is
        // dropped in place, so pinning it is sound.
        let fut = unsafe { Pin::new_unchecked(fut) };
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                // Dropping the finished future in place may panic; the output is kept
                // either way.
                clear(stage);
                *stage = Stage::Finished(v);
                Poll::Ready(Ok(()))
            }
            Err(payload) => {
                let err = match payload.downcast_ref::<DeviceFailure>() {
                    Some(f) => TaskError::Device {
                        task: self.header.name.to_string(),
                        device: f.device.clone(),
                        message: f.message.clone(),
                    },
                    None => TaskError::Panicked {
                        task: self.header.name.to_string(),
                        message: panic_message(&*payload),
                    },
                };
                clear(stage);
                drop(catch_unwind(AssertUnwindSafe(move || drop(payload))));
                Poll::Ready(Err(Arc::new(err)))
            }
        }
    }

    unsafe fn drop_body(&self) {
        // SAFETY: the caller has exclusive access by this method's contract.
        clear(unsafe { &mut *self.stage.get() });
    }

    unsafe fn drop_output(&self) {
        // SAFETY: the caller won the output by the join protocol: nobody else touches the
        // stage any more.
        clear(unsafe { &mut *self.stage.get() });
    }
}

impl<F, D: DataSlot> Join<F::Output> for TaskCell<F, D>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    unsafe fn take_output(&self) -> Option<F::Output> {
        // SAFETY: the outcome was published under the `links` lock after the runner stored
        // the output, and the runner never touches the stage again; the caller's lock of
        // `links` made its writes visible. The one handle is the only reader.
        let stage = unsafe { &mut *self.stage.get() };
        match std::mem::replace(stage, Stage::Empty) {
            Stage::Finished(v) => Some(v),
            _ => None,
        }
    }
}
