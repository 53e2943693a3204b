//! Synchronisation primitives, swapped for loom's model-checked ones under `--cfg parla_loom`.
//!
//! The protocols that loom models exercise go through here: device admission, activity
//! words, node state and links, and the driver/injector handshake. The rest of the crate uses `std` and
//! `parking_lot` directly (and [`sync::SpinLock`] for a task space's shards).

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

    /// A spin lock, for the locks held a few instructions at a time on every task's path
    /// (a task's links, a task space's shards): unlocked by a plain store, where
    /// `parking_lot`'s unlock is a locked compare-and-swap (it checks for parked threads).
    /// Same surface as [`Mutex`]. A thread that finds it taken spins a while, then yields
    /// its core between tries ([`SpinThenYield`]).
    pub(crate) struct SpinLock<T>(spin::mutex::SpinMutex<T, SpinThenYield>);

    /// A [`SpinLock`]'s guard.
    pub(crate) type SpinGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T, SpinThenYield>;

    impl<T> SpinLock<T> {
        pub(crate) fn new(v: T) -> Self {
            SpinLock(spin::mutex::SpinMutex::new(v))
        }
        #[inline]
        pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
            self.0.lock()
        }
        #[inline]
        pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
            self.0.try_lock()
        }
        /// Runs `f` on the value, which `&mut self` reaches without locking.
        #[inline]
        pub(crate) fn with_mut<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
            f(self.0.get_mut())
        }
    }

    /// How a thread waits for a [`SpinLock`]: [`SPINS_PER_YIELD`] spin hints, then one
    /// yield of its core, so that a holder that lost its core (more threads than cores)
    /// gets it back soon.
    pub(crate) struct SpinThenYield;

    /// The spin hints between two yields of a thread waiting for a [`SpinLock`].
    const SPINS_PER_YIELD: u32 = 64;

    thread_local! {
        /// Spin hints since this thread last yielded waiting for a [`SpinLock`].
        static SPINS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    impl spin::RelaxStrategy for SpinThenYield {
        #[inline]
        fn relax() {
            let n = SPINS.with(|c| {
                let n = c.get() + 1;
                c.set(if n >= SPINS_PER_YIELD { 0 } else { n });
                n
            });
            if n >= SPINS_PER_YIELD {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
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
        /// How many items it holds (a snapshot).
        pub(crate) fn len(&self) -> usize {
            self.0.len()
        }
    }

    /// Lets other threads run while this one waits for one of them (a spin's pause).
    #[inline]
    pub(crate) fn yield_now() {
        std::thread::yield_now();
    }
}

#[cfg(parla_loom)]
pub(crate) mod sync {
    /// loom models a spin lock as its mutex.
    pub(crate) type SpinLock<T> = Mutex<T>;
    /// A [`SpinLock`]'s guard.
    pub(crate) type SpinGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
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
        pub(crate) fn with_mut<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
            f(&mut self.lock())
        }
    }

    /// The queue as loom sees it: a lock-free stack of loom atomics whose push and pop
    /// synchronize only through its head, updated `SeqCst` as `SegQueue`'s indices are. A
    /// pop or `is_empty` that finds it empty acquires nothing more, as with the real queue
    /// (a locked deque would order it after every push before it, which the real queue
    /// does not, and so could hide a missed wake-up). Items come out last in, first out:
    /// no protocol modelled relies on their order. Nodes are freed when it is dropped.
    pub(crate) struct Queue<T> {
        head: loom::sync::atomic::AtomicPtr<Node<T>>,
        nodes: std::sync::Mutex<Vec<NodePtr<T>>>,
        /// How many items it holds: changed in the same step as the head's exchange (loom
        /// switches threads only at its own operations, and this counter is not one), so
        /// it is exact where the real queue's length is a snapshot, at no cost in the
        /// interleavings explored.
        len: std::sync::atomic::AtomicUsize,
    }

    impl<T> std::fmt::Debug for Queue<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Queue")
        }
    }

    struct Node<T> {
        value: std::cell::UnsafeCell<Option<T>>,
        next: *mut Node<T>,
    }

    struct NodePtr<T>(*mut Node<T>);

    // SAFETY: a node is reached through the stack's head, which hands it from the pushing
    // thread to the popping one; its value moves with it, never shared.
    unsafe impl<T: Send> Send for NodePtr<T> {}
    // SAFETY: as above: the stack moves values between threads, never shares them.
    unsafe impl<T: Send> Sync for Queue<T> {}
    // SAFETY: as above.
    unsafe impl<T: Send> Send for Queue<T> {}

    impl<T> Queue<T> {
        pub(crate) fn new() -> Self {
            Queue {
                head: loom::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
                nodes: std::sync::Mutex::new(Vec::new()),
                len: std::sync::atomic::AtomicUsize::new(0),
            }
        }

        pub(crate) fn push(&self, v: T) {
            use loom::sync::atomic::Ordering::SeqCst;
            let n = Box::into_raw(Box::new(Node {
                value: std::cell::UnsafeCell::new(Some(v)),
                next: std::ptr::null_mut(),
            }));
            self.nodes.lock().unwrap().push(NodePtr(n));
            let mut head = self.head.load(SeqCst);
            loop {
                // SAFETY: `n` is this call's own node until the exchange publishes it.
                unsafe { (*n).next = head };
                match self.head.compare_exchange(head, n, SeqCst, SeqCst) {
                    Ok(_) => {
                        self.len.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    Err(h) => head = h,
                }
            }
        }

        pub(crate) fn pop(&self) -> Option<T> {
            use loom::sync::atomic::Ordering::SeqCst;
            let mut head = self.head.load(SeqCst);
            loop {
                if head.is_null() {
                    return None;
                }
                // SAFETY: nodes are freed only when the stack is dropped, and `head` was
                // published by a push that this load synchronizes with.
                let next = unsafe { (*head).next };
                match self.head.compare_exchange(head, next, SeqCst, SeqCst) {
                    Ok(_) => {
                        self.len.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        // SAFETY: the exchange took `head` off the stack, so this call alone
                        // reaches its value (a node is pushed once: no ABA).
                        return unsafe { (*(*head).value.get()).take() };
                    }
                    Err(h) => head = h,
                }
            }
        }

        pub(crate) fn is_empty(&self) -> bool {
            self.head
                .load(loom::sync::atomic::Ordering::SeqCst)
                .is_null()
        }

        /// How many items it holds.
        pub(crate) fn len(&self) -> usize {
            self.len.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    impl<T> Drop for Queue<T> {
        fn drop(&mut self) {
            for NodePtr(n) in self.nodes.get_mut().unwrap().drain(..) {
                // SAFETY: every node came from `Box::into_raw` in `push`, and `&mut self`
                // means no other thread reaches any of them.
                drop(unsafe { Box::from_raw(n) });
            }
        }
    }

    /// Lets other threads run while this one waits for one of them (a spin's pause).
    pub(crate) fn yield_now() {
        loom::thread::yield_now();
    }
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use super::sync::SpinLock;

    /// More threads than cores (CI has two) take one spin lock in turn: each increment is
    /// seen (the lock excludes), and threads whose holder lost its core get on (they yield
    /// between tries), so the test ends.
    #[test]
    fn a_spin_lock_excludes_and_lets_more_threads_than_cores_through() {
        const THREADS: usize = 8;
        const EACH: usize = 20_000;
        let lock = SpinLock::new(0usize);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for _ in 0..EACH {
                        let mut n = lock.lock();
                        // A read and a write apart: a second holder would lose increments.
                        let v = *n;
                        std::hint::black_box(&v);
                        *n = v + 1;
                    }
                });
            }
        });
        assert_eq!(*lock.lock(), THREADS * EACH);
        let mut lock = lock;
        assert_eq!(lock.with_mut(|n| *n), THREADS * EACH);
        assert!(lock.try_lock().is_some());
    }
}
