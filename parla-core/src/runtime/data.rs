//! The executor's side of declared data accesses: admission of tasks with data (a FIFO
//! queue per device, whose head reserves the bytes it lacks, evicting unused copies when the
//! device is full), the ledger data objects report freed bytes to, and the wrapper that
//! makes a task's data valid before its body runs and releases it after.
//!
//! # Invariants
//! - A device's data queue is served in order, by one thread at a time, taking turns
//!   without waiting (`scheduler::turn`: a thread that finds another serving leaves the
//!   work to it, and no request is lost - loom-checked):
//!   the head's missing bytes are computed and its valid copies pinned at the moment it is
//!   admitted, never earlier, so nothing a waiting task holds can block another.
//! - No aborted task waits in the queue: its aborter takes it out under the queue's lock
//!   ([`RtInner::abort_data_waiting`]), and a server that meets an aborted task there (one
//!   that came in after the aborter looked, which then saw the abort flag) fails it
//!   instead of admitting it.
//! - Lock order: a device's queue, then a data object's lock, then the device's map of
//!   resident objects (never the other way: the map is read into a list before objects are
//!   asked anything).
//! - The head waits only while running tasks hold what it needs: when nothing runs on the
//!   device, every copy there is unpinned and evictable, and the head fits (its data and
//!   workspace fit the budget, or it was refused at spawn).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::RtInner;
use super::bridge::{FenceWait, wait_fence};
use super::context;
use crate::data::{Accesses, DataObject, Ledger, LedgerSink};
use crate::device::{Arch, Demand, Device};
use crate::graph::arc::{TaskArc, TaskPtr};
use crate::graph::cell::DeviceFailure;

/// A device's tasks with data waiting for admission, and the objects with a copy there.
#[derive(Default)]
pub(crate) struct DeviceData {
    /// Tasks just made ready, in order (pushed without a lock, so that any thread, even one
    /// serving the queue, can add to it).
    incoming: crossbeam_queue::SegQueue<TaskPtr>,
    /// Tasks waiting, in order; its lock is held by the one thread serving the queue (or
    /// by an aborter taking its task out).
    queue: Mutex<VecDeque<TaskPtr>>,
    /// Tasks in `incoming` and `queue`.
    queued: AtomicUsize,
    /// Who serves the queue (one thread at a time, nobody waiting).
    turn: crate::scheduler::turn::Turn,
    resident: Mutex<FxHashMap<usize, Weak<dyn DataObject>>>,
    /// The copies that were evictable when the resident objects were last looked over,
    /// least recently used first, with the time of their last use then: evictions take
    /// them in turn (passing over one used since, whose place the next look gives), and
    /// look the objects over again only once it is used up. (Each eviction looked every
    /// copy on the device over and sorted them: quadratic for a working set that is a
    /// share of the device's memory.) Used by the thread serving the queue.
    order: Mutex<VecDeque<(u64, Weak<dyn DataObject>)>>,
}

impl DeviceData {
    /// Tasks waiting in the queue.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The queue, locked, with the tasks that came in meanwhile moved to its back.
    fn lock_queue(&self) -> parking_lot::MutexGuard<'_, VecDeque<TaskPtr>> {
        let mut q = self.queue.lock();
        while let Some(t) = self.incoming.pop() {
            q.push_back(t);
        }
        q
    }
}

/// The ledger of a runtime (what [`Ledger`] reports to).
pub(crate) struct RtLedger(pub(crate) Weak<RtInner>, pub(crate) u32);

impl LedgerSink for RtLedger {
    fn freed(&self, device: Device, bytes: u64) {
        if let Some(rt) = self.0.upgrade()
            && let Some(dev) = rt.devices.get(device.slot())
        {
            rt.with_local(|l| {
                dev.admission
                    .release(Demand { vcu: 0, mem: bytes }, &mut l.admitted);
                rt.pump(device.slot(), &mut l.admitted);
            });
        }
    }

    fn resident(&self, device: Device, obj: Weak<dyn DataObject>) {
        if let Some(rt) = self.0.upgrade()
            && let Some(dev) = rt.devices.get(device.slot())
            && let Some(o) = obj.upgrade()
        {
            let mut r = dev.data.resident.lock();
            if r.len() > 64 && r.len().is_power_of_two() {
                r.retain(|_, w| w.strong_count() > 0);
            }
            r.insert(o.key(), obj);
        }
    }

    fn same(&self, other: &dyn LedgerSink) -> bool {
        self.1 == other.id()
    }

    fn id(&self) -> u32 {
        self.1
    }
}

impl RtInner {
    /// A task with data is ready on device `slot`: it queues there and the queue is served.
    pub(crate) fn data_ready(
        self: &Arc<Self>,
        slot: usize,
        task: TaskPtr,
        out: &mut super::exec::Launch,
    ) {
        let dev = &self.devices[slot];
        dev.data.queued.fetch_add(1, Ordering::AcqRel);
        dev.data.incoming.push(task);
        self.pump(slot, out);
        self.lend_held_for(slot, out);
    }

    /// Admits the device's data tasks in order while the head fits (evicting for it).
    ///
    /// One thread serves at a time; a thread that finds another serving leaves the work to
    /// it (the server looks again before it leaves), so serving never waits on a lock and
    /// may be asked for from anywhere, even from inside a serve (an object dropped while
    /// evicting reports its freed bytes).
    ///
    /// (Whether any wait is checked inline: drivers ask after every task they finish, and
    /// most devices have no data tasks waiting.)
    #[inline]
    pub(crate) fn pump(self: &Arc<Self>, slot: usize, out: &mut super::exec::Launch) {
        if self.devices[slot].data.queued() != 0 {
            self.pump_queued(slot, out);
        }
    }

    #[inline(never)]
    fn pump_queued(self: &Arc<Self>, slot: usize, out: &mut super::exec::Launch) {
        let dev = &self.devices[slot];
        let mut aborted = Vec::new();
        dev.data.turn.request(|| {
            // Only the server locks it (and, rarely, an aborter).
            let mut q = dev.data.lock_queue();
            while let Some(t) = q.front() {
                let abort = t.header().abort_requested();
                if !abort && !self.admit_data(slot, t, out) {
                    break;
                }
                if let Some(t) = q.pop_front() {
                    dev.data.queued.fetch_sub(1, Ordering::AcqRel);
                    if abort {
                        aborted.push(t);
                    } else {
                        out.push(t);
                    }
                }
            }
        });
        if !aborted.is_empty() {
            self.fail_aborted_data(aborted);
        }
    }

    /// Takes `task`, whose abort was just requested, out of the data queue it waits in, if
    /// any, and fails it at once (see the module invariants). Returns whether it did.
    pub(crate) fn abort_data_waiting(self: &Arc<Self>, task: &TaskPtr) -> bool {
        if task.accesses().is_none() {
            return false;
        }
        for (slot, dev) in self.devices.iter().enumerate() {
            if dev.data.queued() == 0 {
                continue;
            }
            let taken = {
                let mut q = dev.data.lock_queue();
                let at = q.iter().position(|t| TaskArc::ptr_eq(t, task));
                at.and_then(|i| q.remove(i))
            };
            if let Some(t) = taken {
                dev.data.queued.fetch_sub(1, Ordering::AcqRel);
                self.fail_aborted_data(vec![t]);
                // It may have held back the tasks behind it.
                self.with_local(|l| self.pump(slot, &mut l.admitted));
                return true;
            }
        }
        false
    }

    /// Fails aborted tasks taken out of a data queue (they never ran, and hold nothing).
    #[cold]
    fn fail_aborted_data(self: &Arc<Self>, tasks: Vec<TaskPtr>) {
        self.with_local(|l| {
            for t in tasks {
                let err = t.header().aborted_error();
                crate::graph::fail_held(&t, err, &mut l.fx);
            }
        });
    }

    /// Tries to admit `t` (a task with data) on `slot`: pins the valid copies there and
    /// reserves VCUs, workspace and the bytes of the missing copies, evicting unpinned
    /// copies of other objects when memory is short.
    fn admit_data(&self, slot: usize, t: &TaskPtr, out: &mut super::exec::Launch) -> bool {
        let dev = &self.devices[slot];
        let h = t.header();
        let Some(acc) = t.data() else {
            return dev.admission.reserve_now(h.demand());
        };
        let device = dev.device;
        loop {
            let mut missing = 0;
            if device.arch() != Arch::Cpu {
                for i in &acc.items {
                    let pinned = i.obj.pin_valid(device);
                    i.pinned.store(pinned, Ordering::Relaxed);
                    if !pinned {
                        missing += i.obj.bytes();
                    }
                }
            }
            let base = h.demand();
            let d = Demand {
                vcu: base.vcu,
                mem: base.mem + missing,
            };
            if dev.admission.reserve_now(d) {
                acc.reserved.store(missing, Ordering::Relaxed);
                return true;
            }
            for i in &acc.items {
                if i.pinned.swap(false, Ordering::Relaxed) {
                    // SAFETY: the runtime undoes the pin its admission took (the flag was
                    // set by it, and is cleared once).
                    unsafe { i.obj.unpin(device) };
                }
            }
            let u = dev.admission.usage();
            let cap = dev.admission.mem_capacity();
            if u.mem + d.mem <= cap {
                // VCUs are short: a completion on the device serves the queue again.
                return false;
            }
            let need = u.mem + d.mem - cap;
            if self.evict(slot, need, acc, out) == 0 {
                return false;
            }
        }
    }

    /// Evicts unpinned copies on `slot`, least recently used first, until `need` bytes were
    /// freed or nothing more can go; never a copy of `keep`'s objects. Returns the bytes
    /// freed (given back to admission).
    fn evict(&self, slot: usize, need: u64, keep: &Accesses, out: &mut super::exec::Launch) -> u64 {
        let dev = &self.devices[slot];
        let device = dev.device;
        let mut freed = 0;
        let mut looked = false;
        // Copies of `keep`'s objects met on the way: put back in front, in order.
        let mut kept = Vec::new();
        while freed < need {
            let next = dev.data.order.lock().pop_front();
            let Some((t, w)) = next else {
                if looked {
                    break;
                }
                looked = true;
                let order = self.eviction_order(slot);
                *dev.data.order.lock() = order;
                continue;
            };
            let Some(o) = w.upgrade() else { continue };
            if keep.items.iter().any(|i| i.obj.key() == o.key()) {
                kept.push((t, w));
                continue;
            }
            // Used since (newer than every copy still in the order), evicted, or pinned:
            // the next look finds it where it belongs.
            if o.last_use(device) != Some(t) {
                continue;
            }
            // SAFETY: the runtime evicts, to make room for a task it admits; the object
            // keeps a copy that is pinned or borrowed.
            let f = unsafe { o.evict(device) };
            if f > 0 {
                dev.data.resident.lock().remove(&o.key());
                freed += f;
            }
        }
        if !kept.is_empty() {
            let mut order = dev.data.order.lock();
            for k in kept.into_iter().rev() {
                order.push_front(k);
            }
        }
        if freed > 0 {
            dev.admission.release(Demand { vcu: 0, mem: freed }, out);
        }
        freed
    }

    /// The copies on `slot` that can be evicted, least recently used first (see
    /// [`DeviceData::order`]).
    fn eviction_order(&self, slot: usize) -> VecDeque<(u64, Weak<dyn DataObject>)> {
        let dev = &self.devices[slot];
        // Taken out of the map before asking the objects: an object's lock is held while
        // it registers a copy here, so the map's lock is never held while taking one.
        let objects: Vec<Arc<dyn DataObject>> = {
            let mut r = dev.data.resident.lock();
            r.retain(|_, w| w.strong_count() > 0);
            r.values().filter_map(Weak::upgrade).collect()
        };
        let mut order: Vec<(u64, Weak<dyn DataObject>)> = objects
            .iter()
            .filter_map(|o| o.last_use(dev.device).map(|t| (t, Arc::downgrade(o))))
            .collect();
        order.sort_by_key(|(t, _)| *t);
        order.into()
    }

    /// At shutdown, once no task runs: every copy the runtime's GPUs hold goes (a sole valid
    /// one written back to the host first), so that the objects can be used by tasks of
    /// another runtime, whose devices these are not.
    pub(crate) fn evict_all(&self) {
        for dev in self.devices.iter().filter(|d| d.device.arch() == Arch::Gpu) {
            dev.data.order.lock().clear();
            let objects: Vec<Arc<dyn DataObject>> = std::mem::take(&mut *dev.data.resident.lock())
                .into_values()
                .filter_map(|w| w.upgrade())
                .collect();
            for o in objects {
                // SAFETY: the runtime evicts at its shutdown, with no task running.
                unsafe { o.evict(dev.device) };
            }
        }
    }

    /// At completion of a task with data on `slot`: the bytes it reserved for copies it did
    /// not make go back.
    pub(crate) fn data_done(&self, slot: usize, acc: &Accesses, out: &mut super::exec::Launch) {
        let unused = acc
            .reserved
            .load(Ordering::Relaxed)
            .saturating_sub(acc.allocated.load(Ordering::Relaxed));
        if unused > 0 {
            self.devices[slot].admission.release(
                Demand {
                    vcu: 0,
                    mem: unused,
                },
                out,
            );
        }
    }
}

/// A task's future with its data: before the body, each declared object is made valid on
/// the task's device (waiting, without blocking, for copies to the host); when the body is
/// done (or dropped), each is released.
pub(crate) struct WithData<F> {
    acc: Arc<Accesses>,
    device: Option<Device>,
    /// The task's key (see `current_task_key`).
    key: usize,
    /// Items acquired so far (released at the end).
    acquired: usize,
    wait: Option<FenceWait>,
    released: bool,
    /// Dropped before the data is released (see `Drop`).
    fut: std::mem::ManuallyDrop<F>,
}

impl<F> WithData<F> {
    pub(crate) fn new(fut: F, acc: Arc<Accesses>) -> Self {
        WithData {
            acc,
            device: None,
            key: 0,
            acquired: 0,
            wait: None,
            released: false,
            fut: std::mem::ManuallyDrop::new(fut),
        }
    }

    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        if let Some(device) = self.device.or_else(|| self.acc.device()) {
            for i in &self.acc.items[..self.acquired] {
                // SAFETY: the runtime releases what it acquired for this task, once
                // (`released`), after the body returned or was dropped.
                unsafe { i.obj.release(self.key, device, i.access) };
            }
            // Pins of admission on items never acquired.
            for i in &self.acc.items[self.acquired..] {
                if i.pinned.swap(false, Ordering::Relaxed) {
                    // SAFETY: as above; the pin admission took, undone once.
                    unsafe { i.obj.unpin(device) };
                }
            }
        }
    }
}

fn fail(device: Device, message: String) -> ! {
    std::panic::resume_unwind(Box::new(DeviceFailure {
        device: device.to_string(),
        message,
    }))
}

impl<F: Future> Future for WithData<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of `self` (only
        // polled in place below and dropped in place by `Drop`); the other fields are not
        // pinned.
        let this = unsafe { self.get_unchecked_mut() };
        if this.device.is_none() {
            this.device = Some(this.acc.device().unwrap_or_else(context::current_device));
            this.key = context::current_task_key().unwrap_or(0);
        }
        let device = this.device.unwrap_or(Device::CPU);
        loop {
            if let Some(w) = &mut this.wait {
                match Pin::new(w).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(m)) => fail(device, m),
                    Poll::Ready(Ok(())) => this.wait = None,
                }
            }
            if this.acquired == this.acc.items.len() {
                break;
            }
            let ledger = context::with_rt(|rt| rt.map(|rt| rt.ledger.clone()));
            let Some(ledger) = ledger else {
                fail(device, "data accesses need a parla runtime".into())
            };
            let i = &this.acc.items[this.acquired];
            let pinned = i.pinned.load(Ordering::Relaxed);
            // SAFETY: the runtime acquires, in the task the object's order granted the
            // access to (it runs once its dependencies, those of the order too, finished).
            match unsafe { i.obj.acquire(&ledger, this.key, device, i.access, pinned) } {
                Ok(a) => {
                    this.acquired += 1;
                    this.acc.allocated.fetch_add(a.allocated, Ordering::Relaxed);
                    if let Some(f) = a.ready {
                        this.wait = Some(wait_fence(f));
                    }
                }
                Err(m) => fail(device, m),
            }
        }
        // SAFETY: see above; `fut` stays in place.
        let fut = unsafe { Pin::new_unchecked(&mut *this.fut) };
        match fut.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(v) => {
                this.release();
                Poll::Ready(v)
            }
        }
    }
}

impl<F> Drop for WithData<F> {
    fn drop(&mut self) {
        // The body first, with the views of the data it holds (an aborted task's, a
        // panicked one's): a view still borrowed when the data is released outlived its
        // task, and the data object leaves its memory to it.
        let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: dropped in place (as a pinned field must be), once: `fut` is not used
            // after this.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.fut) }
        }));
        self.release();
        if let Err(p) = body {
            std::panic::resume_unwind(p);
        }
    }
}

/// A new ledger of `rt` for data objects.
pub(crate) fn ledger(rt: Weak<RtInner>, id: u32) -> Ledger {
    Ledger(Arc::new(RtLedger(rt, id)))
}
