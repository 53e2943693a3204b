//! Synchronisation primitives, swapped for loom's model-checked ones under `--cfg parla_loom`.
//!
//! Only the lock-free and lock-based protocols that loom models exercise go through here
//! (device admission); the rest of the crate uses `std` and `parking_lot` directly.

#[cfg(not(parla_loom))]
pub(crate) mod sync {
    pub(crate) use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

    /// A mutex with the same surface as loom's.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Mutex(parking_lot::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
            self.0.lock()
        }
    }
}

#[cfg(parla_loom)]
pub(crate) mod sync {
    pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

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
    }
}
