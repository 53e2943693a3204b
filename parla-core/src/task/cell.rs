//! The allocation behind a task: its [`Header`] and its future (later its output), in one
//! `Arc`.
//!
//! # Invariants
//! - The future is polled only by the holder of the task's run token: the one `Arc` handed
//!   from admission to a driver. Exactly one run token exists per task, and it exists only
//!   after the READY transition, so two polls never overlap.
//! - The stage is written (output stored, or future dropped) before the outcome is published
//!   under the header's `links` lock; the join handle reads the stage only after it saw the
//!   outcome under that lock.
//! - Only the one `TaskHandle` takes the output, so the output is moved out at most once.

use std::cell::UnsafeCell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::header::{Header, Outcome};
use crate::error::TaskError;

/// A task as the scheduler sees it: a header and a body to poll.
pub(crate) trait Task: Send + Sync + 'static {
    fn header(&self) -> &Header;

    /// Polls the body once. Returns `Ready` with the outcome when the body finished (or
    /// panicked); the output is kept for the join handle.
    ///
    /// # Safety
    /// The caller holds the task's run token, and the task is not DONE.
    unsafe fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Outcome>;

    /// Drops the body without running it (the task failed before it ran, or was cancelled).
    ///
    /// # Safety
    /// The caller won the transition to DONE (or holds the run token), so nobody polls the
    /// body now or later.
    unsafe fn drop_body(&self);

    /// The resume request, if this is one.
    fn as_resume(&self) -> Option<&Resume> {
        None
    }
}

/// A task whose output a [`TaskHandle`](super::TaskHandle) can take.
pub(crate) trait Join<T>: Task {
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<T, TaskError>>;
}

enum Stage<F: Future> {
    Running(F),
    Finished(F::Output),
    Empty,
}

pub(crate) struct TaskCell<F: Future> {
    header: Header,
    stage: UnsafeCell<Stage<F>>,
}

// SAFETY: the stage is only touched by one thread at a time (the run-token holder while
// running, then the join handle after the outcome is published, per the module
// invariants), so sharing the cell needs only that the future and output can move between
// threads.
unsafe impl<F: Future + Send> Sync for TaskCell<F> where F::Output: Send {}

impl<F: Future> TaskCell<F> {
    pub(crate) fn new(header: Header, fut: F) -> Self {
        TaskCell {
            header,
            stage: UnsafeCell::new(Stage::Running(fut)),
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl<F> Task for TaskCell<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn header(&self) -> &Header {
        &self.header
    }

    unsafe fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        // SAFETY: the caller holds the run token (this method's contract), so no other
        // reference to the stage exists while this one lives.
        let stage = unsafe { &mut *self.stage.get() };
        let Stage::Running(fut) = stage else {
            // Not reachable under the contract; finishing is the safe answer.
            return Poll::Ready(Ok(()));
        };
        // SAFETY: the future lives inside the `Arc`ed cell and is never moved until it is
        // dropped in place below, so pinning it is sound.
        let fut = unsafe { Pin::new_unchecked(fut) };
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                *stage = Stage::Finished(v);
                Poll::Ready(Ok(()))
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                // Dropping the future may panic too; that must not escape either.
                let _ = catch_unwind(AssertUnwindSafe(|| *stage = Stage::Empty));
                drop(catch_unwind(AssertUnwindSafe(move || drop(payload))));
                Poll::Ready(Err(Arc::new(TaskError::Panicked {
                    task: self.header.name.to_string(),
                    message,
                })))
            }
        }
    }

    unsafe fn drop_body(&self) {
        // SAFETY: the caller has exclusive access by this method's contract.
        let stage = unsafe { &mut *self.stage.get() };
        let _ = catch_unwind(AssertUnwindSafe(|| *stage = Stage::Empty));
    }
}

impl<F> Join<F::Output> for TaskCell<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<F::Output, TaskError>> {
        let outcome = match self.header.outcome() {
            Some(o) => o,
            None => {
                self.header.join.register(cx.waker());
                self.header.set_awaited();
                match self.header.outcome() {
                    Some(o) => o,
                    None => {
                        crate::context::note_blocked();
                        return Poll::Pending;
                    }
                }
            }
        };
        if let Err(e) = outcome {
            return Poll::Ready(Err((*e).clone()));
        }
        // SAFETY: the outcome is published under the `links` lock after the runner stored the
        // output, and the runner never touches the stage again; taking the lock above made
        // its writes visible. The one `TaskHandle` (which owns this call) is the only reader.
        let stage = unsafe { &mut *self.stage.get() };
        match std::mem::replace(stage, Stage::Empty) {
            Stage::Finished(v) => Poll::Ready(Ok(v)),
            _ => Poll::Ready(Err(TaskError::Cancelled {
                task: self.header.name.to_string(),
            })),
        }
    }
}

/// A node standing for an id that was referenced before any task was spawned under it.
/// When the task is spawned, the placeholder becomes its dependent and mirrors its outcome.
pub(crate) struct Placeholder {
    header: Header,
}

impl Placeholder {
    pub(crate) fn new(header: Header) -> Self {
        Placeholder { header }
    }
}

impl Task for Placeholder {
    fn header(&self) -> &Header {
        &self.header
    }

    unsafe fn poll_body(&self, _cx: &mut Context<'_>) -> Poll<Outcome> {
        Poll::Ready(Ok(()))
    }

    unsafe fn drop_body(&self) {}
}

/// A request from a driver whose task lent its VCUs while it waited on other tasks: it
/// queues for admission like a task, and admission wakes the driver instead of running it.
pub(crate) struct Resume {
    header: Header,
    /// 0: waiting, `GRANTED`, or `DENIED`.
    state: std::sync::atomic::AtomicU8,
    waker: std::task::Waker,
}

const GRANTED: u8 = 1;
const DENIED: u8 = 2;

impl Resume {
    pub(crate) fn new(header: Header, waker: std::task::Waker) -> Self {
        Resume {
            header,
            state: std::sync::atomic::AtomicU8::new(0),
            waker,
        }
    }

    fn settle(&self, s: u8) {
        self.state.store(s, std::sync::atomic::Ordering::Release);
        self.waker.wake_by_ref();
    }

    /// The VCUs are reserved again: let the driver go on.
    pub(crate) fn grant(&self) {
        self.settle(GRANTED);
    }

    /// The VCUs will never come back (the runtime is stalled or shutting down): the driver
    /// fails the task.
    pub(crate) fn deny(&self) {
        self.settle(DENIED);
    }

    pub(crate) fn is_granted(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::Acquire) == GRANTED
    }

    pub(crate) fn is_denied(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::Acquire) == DENIED
    }
}

impl Task for Resume {
    fn header(&self) -> &Header {
        &self.header
    }

    unsafe fn poll_body(&self, _cx: &mut Context<'_>) -> Poll<Outcome> {
        Poll::Ready(Ok(()))
    }

    unsafe fn drop_body(&self) {}

    fn as_resume(&self) -> Option<&Resume> {
        Some(self)
    }
}
