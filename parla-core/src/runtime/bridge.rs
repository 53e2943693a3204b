//! The event-to-waker bridge: how the host learns that GPU work finished.
//!
//! Fences are polled, never waited on: no Tokio worker blocks on the GPU, and no driver
//! callback (`cuLaunchHostFunc` measured at ~3.5x the latency of a poll here) is involved.
//! Three pollers, fastest first:
//! - whoever awaits a GPU task (its handle, its id) or synchronizes a stream spins on that
//!   one fence for a few microseconds before it parks, so a short kernel is seen at the
//!   latency of a query loop, with no thread hop;
//! - otherwise the fence goes to the runtime's poller thread, which polls every pending fence
//!   in a loop: spinning while fences complete, then yielding, then sleeping in short steps
//!   while nothing does, and parking when there is nothing to watch;
//! - whichever poller sees a task's fence done first completes the task (the task's state
//!   moves FENCED -> COMPLETING once, so only one of them does).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{JoinHandle, Thread};

use atomic_waker::AtomicWaker;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::RtInner;
use crate::device::backend::{Fence, FenceStatus};
use crate::task::Task;

/// How long an awaiter spins on a fence before it parks.
pub(crate) const AWAIT_SPIN: Duration = Duration::from_micros(50);

/// Something waiting for a fence.
pub(crate) enum Watch {
    /// A GPU task whose body returned: complete it.
    Task(Arc<dyn Task>, Arc<dyn Fence>),
    /// A future waiting on a fence: wake it.
    Waker(Arc<dyn Fence>, Arc<AtomicWaker>),
}

impl Watch {
    fn fence(&self) -> &Arc<dyn Fence> {
        match self {
            Watch::Task(_, f) | Watch::Waker(f, _) => f,
        }
    }
}

#[derive(Default)]
pub(crate) struct Bridge {
    entries: Mutex<Vec<Watch>>,
    pending: AtomicUsize,
    shutdown: AtomicBool,
    thread: Mutex<Option<(JoinHandle<()>, Thread)>>,
}

impl Bridge {
    /// Hands `w` to the poller thread (started on first use).
    pub(crate) fn watch(rt: &Arc<RtInner>, w: Watch) {
        let b = &rt.bridge;
        b.entries.lock().push(w);
        b.pending.fetch_add(1, Ordering::AcqRel);
        let mut t = b.thread.lock();
        match &*t {
            Some((_, th)) => th.unpark(),
            None => {
                let rt2 = rt.clone();
                let spawned = std::thread::Builder::new()
                    .name("parla-fences".into())
                    .spawn(move || poll_loop(&rt2));
                match spawned {
                    Ok(h) => {
                        let th = h.thread().clone();
                        *t = Some((h, th));
                    }
                    Err(e) => {
                        // Without a thread, fences are still seen by awaiters and by
                        // `block_on`'s idle polling; say why latency may suffer.
                        eprintln!("parla: cannot start the fence poller thread: {e}");
                    }
                }
            }
        }
    }

    /// Whether fences are being watched.
    pub(crate) fn is_busy(&self) -> bool {
        self.pending.load(Ordering::Acquire) > 0
    }

    /// Stops and joins the poller thread.
    pub(crate) fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        let t = self.thread.lock().take();
        if let Some((h, th)) = t {
            th.unpark();
            let _ = h.join();
        }
    }

    /// Takes every task still waiting on a fence (at shutdown).
    pub(crate) fn take_tasks(&self) -> Vec<Arc<dyn Task>> {
        let all = std::mem::take(&mut *self.entries.lock());
        self.pending.store(0, Ordering::Release);
        all.into_iter()
            .filter_map(|w| match w {
                Watch::Task(t, _) => Some(t),
                Watch::Waker(..) => None,
            })
            .collect()
    }

    /// Polls every watched fence once; acts on the finished ones. Returns how many finished.
    pub(crate) fn poll_once(rt: &Arc<RtInner>) -> usize {
        let b = &rt.bridge;
        let batch = std::mem::take(&mut *b.entries.lock());
        if batch.is_empty() {
            return 0;
        }
        let mut keep = Vec::new();
        let mut done = Vec::new();
        for w in batch {
            match w.fence().status() {
                FenceStatus::Pending => keep.push(w),
                s => done.push((w, s)),
            }
        }
        if !keep.is_empty() {
            b.entries.lock().extend(keep);
        }
        let n = done.len();
        b.pending.fetch_sub(n, Ordering::AcqRel);
        for (w, s) in done {
            match w {
                Watch::Waker(_, waker) => waker.wake(),
                Watch::Task(t, _) => crate::scheduler::complete_fenced(rt, &t, s),
            }
        }
        n
    }
}

fn poll_loop(rt: &Arc<RtInner>) {
    let _rt = crate::context::enter_rt(rt);
    let mut idle_since: Option<Instant> = None;
    loop {
        if rt.bridge.shutdown.load(Ordering::Acquire) {
            return;
        }
        if !rt.bridge.is_busy() {
            idle_since = None;
            std::thread::park_timeout(Duration::from_millis(10));
            continue;
        }
        if Bridge::poll_once(rt) > 0 {
            idle_since = None;
            continue;
        }
        // Nothing finished: spin for a while (short kernels), then yield, then sleep in
        // short steps (long kernels), waking at once for new fences.
        let idle = idle_since.get_or_insert_with(Instant::now).elapsed();
        if idle < Duration::from_micros(200) {
            std::hint::spin_loop();
        } else if idle < Duration::from_millis(2) {
            std::thread::yield_now();
        } else {
            std::thread::park_timeout(Duration::from_micros(50));
        }
    }
}

/// Spins on `fence` for up to `budget`. Returns its status at the end.
pub(crate) fn spin(fence: &dyn Fence, budget: Duration) -> FenceStatus {
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        let s = fence.status();
        if s != FenceStatus::Pending {
            return s;
        }
        n += 1;
        if n.is_multiple_of(16) && start.elapsed() >= budget {
            return s;
        }
        std::hint::spin_loop();
    }
}
