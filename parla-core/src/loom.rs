//! Synchronisation primitives, swapped for loom's model-checked ones under `--cfg parla_loom`.
//!
//! The protocols that loom models exercise go through here: device admission, activity
//! words, node state and links, and the driver/injector handshake. The rest of the crate uses `std` and
//! `parking_lot` directly.

#[cfg(not(parla_loom))]
pub(crate) mod sync {
    pub(crate) use std::sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering,
        fence,
    };

    /// A mutex with the same surface as loom's.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Mutex(parking_lot::Mutex::new(v))
        }
        #[inline]
        pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
            self.0.lock()
        }
        #[inline]
        pub(crate) fn try_lock(&self) -> Option<parking_lot::MutexGuard<'_, T>> {
            self.0.try_lock()
        }
    }

    /// A multi-producer multi-consumer queue.
    #[derive(Debug)]
    pub(crate) struct Queue<T>(crossbeam_queue::SegQueue<T>);

    impl<T> Queue<T> {
        pub(crate) fn new() -> Self {
            Queue(crossbeam_queue::SegQueue::new())
        }
        #[inline]
        pub(crate) fn push(&self, v: T) {
            self.0.push(v)
        }
        #[inline]
        pub(crate) fn pop(&self) -> Option<T> {
            self.0.pop()
        }
        #[inline]
        pub(crate) fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }
}

#[cfg(parla_loom)]
pub(crate) mod sync {
    pub(crate) use loom::sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering,
        fence,
    };

    /// loom's mutex, unwrapped like parking_lot's.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Mutex(loom::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
        pub(crate) fn try_lock(&self) -> Option<loom::sync::MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
    }

    /// The queue as a locked deque, so that loom sees every access.
    #[derive(Debug)]
    pub(crate) struct Queue<T>(loom::sync::Mutex<std::collections::VecDeque<T>>);

    impl<T> Queue<T> {
        pub(crate) fn new() -> Self {
            Queue(loom::sync::Mutex::new(std::collections::VecDeque::new()))
        }
        pub(crate) fn push(&self, v: T) {
            self.0.lock().unwrap().push_back(v)
        }
        pub(crate) fn pop(&self) -> Option<T> {
            self.0.lock().unwrap().pop_front()
        }
        pub(crate) fn is_empty(&self) -> bool {
            self.0.lock().unwrap().is_empty()
        }
    }
}
