//! The injector: tasks ready to run (admitted, or woken) waiting for a driver, and the
//! count of drivers pulling from it.
//!
//! At most `max` drivers pull at once (one per worker thread). Whoever pushes work claims
//! driver slots for it and starts that many drivers; a driver that finds the queue empty
//! gives its slot back and ends.
//!
//! # Invariants
//! - No task is stranded: pushers push and then claim (reading the active count); leaving
//!   drivers decrement the count and then read the queue; `SeqCst` fences between the two
//!   steps on each side mean one of them sees the other - the pusher starts a driver, or the
//!   leaving driver stays. If the pusher's claim fails because other drivers are active,
//!   the last of those to leave sees the work. Checked by loom (`loom_test` below).
//! - `active` never exceeds `max`: slots are taken by compare-and-swap only.
//! - A lingering driver (one that found the queue empty and polls it a little longer, see
//!   `driver`) stands in for one driver a pusher would start. The same fences make the
//!   pusher see it lingering or the driver, as it stops lingering, see the work. Whether it
//!   started lingering with [`linger`](Injector::linger) or, if fewer than the allowed
//!   number of drivers lingered, with [`linger_for_cpu`](Injector::linger_for_cpu), makes
//!   no difference to that.
//! - A driver that stops lingering because it found work, and sees more work waiting, asks
//!   for drivers as a pusher does, one per task waiting: drivers still lingering stand in
//!   for some. Many pushers may count on the same lingering drivers, and the task each
//!   takes may run for long (a CPU task computing, or one waiting for another to run): it
//!   takes one task and asks for drivers for the rest, whether it found the task in a look
//!   or as it gave up lingering. So does a driver polled again after it lingered behind
//!   Tokio's work, whether its look found the task or the task came before it stopped
//!   lingering.
//! - A lingering driver revoked (given up for, by another driver on its worker) leaves the
//!   revoker to ask for drivers for all the work queued, not one per driver revoked: two
//!   revokers on two workers would each count on the other's driver, still lingering, and
//!   start one driver for the work both were counted on for.

use crate::loom::sync::{AtomicUsize, Ordering, Queue, fence};

pub(crate) struct Injector<T> {
    queue: Queue<T>,
    active: AtomicUsize,
    /// Drivers (holding slots) that poll the empty queue before they leave.
    lingering: AtomicUsize,
    max: usize,
    /// How many drivers out of CPU work may linger at once.
    cpu_lingerers: usize,
}

impl<T> Injector<T> {
    /// An injector for `max` drivers (one per worker thread). Drivers out of CPU work
    /// linger one per four workers, one to four of them: with one alone, the work pushed
    /// while it runs a task it found starts a driver each time (a Tokio task and a thread
    /// woken, on the pushing thread). On 16 workers, four ran a reduction tree spawned from
    /// `block_on` about 15 percent faster (`benches/overhead.rs`). More would look at the
    /// queue more often, which slows every push.
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(1);
        Injector {
            queue: Queue::new(),
            active: AtomicUsize::new(0),
            lingering: AtomicUsize::new(0),
            max,
            cpu_lingerers: (max / 4).clamp(1, 4),
        }
    }

    /// Takes a driver slot if one is free.
    pub(crate) fn claim(&self) -> bool {
        increment_below(&self.active, self.max)
    }

    /// Queues a task. The caller then calls [`drivers_wanted`](Self::drivers_wanted).
    #[inline]
    pub(crate) fn push(&self, t: T) {
        self.queue.push(t);
    }

    /// After pushing `n` tasks: claims up to `n` driver slots, less the drivers lingering
    /// (they take the work). Returns how many drivers the caller must start.
    pub(crate) fn drivers_wanted(&self, n: usize) -> usize {
        fence(Ordering::SeqCst);
        let n = n.saturating_sub(self.lingering.load(Ordering::SeqCst));
        let mut k = 0;
        while k < n && self.claim() {
            k += 1;
        }
        k
    }

    #[inline]
    pub(crate) fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    /// A driver found the queue empty: it gives its slot back, unless work arrived
    /// meanwhile and it could take a slot again. Returns whether the driver goes on.
    pub(crate) fn leave(&self) -> bool {
        self.active.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        !self.queue.is_empty() && self.claim()
    }

    /// A driver holding a slot found the queue empty and polls it a while longer: pushers
    /// count on it instead of starting a driver, until [`stop_lingering`](Self::stop_lingering).
    pub(crate) fn linger(&self) {
        self.lingering.fetch_add(1, Ordering::SeqCst);
    }

    /// Like [`linger`](Self::linger), but only if fewer drivers linger than
    /// [`cpu_lingerers`](Self::cpu_lingerers). Returns whether the caller lingers now.
    pub(crate) fn linger_for_cpu(&self) -> bool {
        increment_below(&self.lingering, self.cpu_lingerers)
    }

    /// How many drivers out of CPU work may linger at once.
    #[cfg(test)]
    pub(crate) fn cpu_lingerers(&self) -> usize {
        self.cpu_lingerers
    }

    /// The lingering driver stops polling (it found work, or gives up). Returns whether work
    /// waits in the queue: then it must take it, even if it was giving up.
    pub(crate) fn stop_lingering(&self) -> bool {
        self.lingering.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        !self.queue.is_empty()
    }

    /// A driver holding a slot (and lingering, with `lingering`) gives its slot back and
    /// stops lingering, done by another thread on its behalf (the driver is put off where it
    /// may not run for long: see `driver`). Returns whether work waits in the queue: then the
    /// caller asks for drivers for all of it (see the module invariants). (The steps of
    /// [`stop_lingering`](Self::stop_lingering) and [`leave`](Self::leave), so a pusher
    /// sees the driver gone or the caller the work.)
    pub(crate) fn revoke(&self, lingering: bool) -> bool {
        if lingering {
            self.lingering.fetch_sub(1, Ordering::SeqCst);
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        !self.queue.is_empty()
    }

    /// Whether tasks wait in the queue (a snapshot).
    pub(crate) fn has_work(&self) -> bool {
        !self.queue.is_empty()
    }

    /// How many tasks wait in the queue (a snapshot).
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A driver holding a slot stops for good (at shutdown).
    pub(crate) fn release(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// Drivers holding a slot now.
    #[cfg(test)]
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

/// Adds one to `count` if it is below `limit` (compare-and-swap only, so it never goes
/// above). Returns whether it did.
fn increment_below(count: &AtomicUsize, limit: usize) -> bool {
    let mut n = count.load(Ordering::SeqCst);
    while n < limit {
        match count.compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return true,
            Err(actual) => n = actual,
        }
    }
    false
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// A driver's run: pop until the queue is empty and the driver leaves.
    fn drive(inj: &Injector<u8>, ran: &mut Vec<u8>) {
        loop {
            while let Some(t) = inj.pop() {
                ran.push(t);
            }
            if !inj.leave() {
                return;
            }
        }
    }

    /// A thread that pushes `t` and drives if it has to start a driver; joins with what it
    /// ran.
    fn push_and_drive(inj: &Arc<Injector<u8>>, t: u8) -> thread::JoinHandle<Vec<u8>> {
        let inj = inj.clone();
        thread::spawn(move || {
            inj.push(t);
            let mut ran = Vec::new();
            if inj.drivers_wanted(1) == 1 {
                drive(&inj, &mut ran);
            }
            ran
        })
    }

    /// A task pushed while the only driver leaves is run by somebody.
    #[test]
    fn push_vs_leave_strands_nothing() {
        loom::model(|| {
            let inj = Arc::new(Injector::new(1));
            assert!(inj.claim());
            inj.push(0);
            let pusher = push_and_drive(&inj, 1);
            let mut ran = Vec::new();
            drive(&inj, &mut ran);
            ran.extend(pusher.join().unwrap());
            ran.sort();
            assert_eq!(ran, vec![0, 1], "every task ran exactly once");
            assert_eq!(inj.active(), 0);
        });
    }

    /// A task pushed while the only driver stops lingering and leaves is run by somebody:
    /// the pusher starts a driver, or the lingering driver sees the task.
    #[test]
    fn push_vs_stop_lingering_strands_nothing() {
        push_vs_stop_lingering(false);
    }

    /// The same, for a driver that lingers alone (for CPU work).
    #[test]
    fn push_vs_stop_lingering_alone_strands_nothing() {
        push_vs_stop_lingering(true);
    }

    fn push_vs_stop_lingering(alone: bool) {
        loom::model(move || {
            let inj = Arc::new(Injector::new(2));
            assert!(inj.claim());
            if alone {
                assert!(inj.linger_for_cpu());
                assert!(!inj.linger_for_cpu(), "one driver lingers alone at a time");
            } else {
                inj.linger();
            }
            let pusher = push_and_drive(&inj, 1);
            let mut ran = Vec::new();
            // Work seen as it stops lingering: it keeps its slot; else it leaves (taking a
            // slot back if work arrived meanwhile).
            if inj.stop_lingering() || inj.leave() {
                drive(&inj, &mut ran);
            }
            ran.extend(pusher.join().unwrap());
            assert_eq!(ran, vec![1], "the task ran exactly once");
            assert_eq!(inj.active(), 0);
        });
    }

    /// One look of a lingering driver, then what follows: it found a task (runs it, asks for
    /// a driver if more waits, and drives on) or gives up (taking work that arrived, or
    /// leaving).
    fn linger_once(inj: &Injector<u8>, ran: &mut Vec<u8>) {
        match inj.pop() {
            Some(t) => {
                ran.push(t);
                if inj.stop_lingering() && inj.drivers_wanted(1) == 1 {
                    // The driver it starts: this thread, in the model.
                    drive(inj, ran);
                }
                drive(inj, ran);
            }
            None => {
                if inj.stop_lingering() || inj.leave() {
                    drive(inj, ran);
                }
            }
        }
    }

    /// Two drivers lingering for CPU work (the most an injector of eight allows) and a
    /// pusher counting on them for two tasks: every task runs exactly once, whichever of
    /// them finds work first, and every slot is given back.
    #[test]
    fn two_lingering_drivers_strand_nothing() {
        loom::model(|| {
            let inj = Arc::new(Injector::new(8));
            assert_eq!(inj.cpu_lingerers(), 2);
            assert!(inj.claim() && inj.claim());
            assert!(inj.linger_for_cpu() && inj.linger_for_cpu());
            assert!(!inj.linger_for_cpu(), "at most two linger");
            let i2 = inj.clone();
            let other = thread::spawn(move || {
                let mut ran = Vec::new();
                linger_once(&i2, &mut ran);
                ran
            });
            let i3 = inj.clone();
            let pusher = thread::spawn(move || {
                i3.push(1);
                i3.push(2);
                let mut ran = Vec::new();
                for _ in 0..i3.drivers_wanted(2) {
                    drive(&i3, &mut ran);
                }
                ran
            });
            let mut ran = Vec::new();
            linger_once(&inj, &mut ran);
            ran.extend(other.join().unwrap());
            ran.extend(pusher.join().unwrap());
            ran.sort();
            assert_eq!(ran, vec![1, 2], "every task ran exactly once");
            assert_eq!(inj.active(), 0);
        });
    }

    /// A driver lingering alone, and a pusher of two tasks (each pushed, then asked for) that
    /// may count on it for both. The lingering driver takes one task, in a look (`look`) or
    /// as it gives up, and then runs it without end (it drives no more): the other task
    /// runs anyway, on a driver the pusher or the lingering driver starts.
    fn lingerer_taking_a_task_that_runs_on(look: bool) {
        loom::model(move || {
            let inj = Arc::new(Injector::new(2));
            assert!(inj.claim());
            assert!(inj.linger_for_cpu());
            let i2 = inj.clone();
            let pusher = thread::spawn(move || {
                let mut ran = Vec::new();
                for t in [1, 2] {
                    i2.push(t);
                    if i2.drivers_wanted(1) == 1 {
                        drive(&i2, &mut ran);
                    }
                }
                ran
            });
            let mut ran = Vec::new();
            // A task found in a look, or taken as it gives up (after a look that found
            // nothing), and whether more work waits then.
            let mut found = None;
            if look {
                found = inj.pop().map(|t| (t, inj.stop_lingering()));
            }
            if found.is_none() {
                if inj.stop_lingering() {
                    found = inj.pop().map(|t| (t, inj.has_work()));
                }
                if found.is_none() && inj.leave() {
                    drive(&inj, &mut ran);
                }
            }
            let blocked = found.map(|(t, more)| {
                if more && inj.drivers_wanted(1) == 1 {
                    // The driver it starts (on another worker): this thread, in the model.
                    drive(&inj, &mut ran);
                }
                t
            });
            ran.extend(pusher.join().unwrap());
            ran.extend(blocked);
            ran.sort();
            assert_eq!(
                ran,
                vec![1, 2],
                "every task ran, none behind the blocked one"
            );
        });
    }

    #[test]
    fn a_lingerer_that_finds_a_task_and_runs_on_strands_nothing() {
        lingerer_taking_a_task_that_runs_on(true);
    }

    #[test]
    fn a_lingerer_that_gives_up_with_a_task_and_runs_on_strands_nothing() {
        lingerer_taking_a_task_that_runs_on(false);
    }

    /// A driver lingering (it holds a slot) is put off where it never runs again, and a
    /// pusher counts on it: another driver revokes it, and the task runs anyway, on a
    /// driver the pusher or the revoker starts.
    #[test]
    fn a_revoked_lingerer_strands_nothing() {
        loom::model(|| {
            let inj = Arc::new(Injector::new(2));
            // The put-off driver, and the one that revokes it (running a task).
            assert!(inj.claim() && inj.claim());
            inj.linger();
            let pusher = push_and_drive(&inj, 1);
            let mut ran = Vec::new();
            if inj.revoke(true) && inj.drivers_wanted(1) == 1 {
                drive(&inj, &mut ran);
            }
            ran.extend(pusher.join().unwrap());
            assert_eq!(ran, vec![1], "the task ran exactly once");
            assert_eq!(inj.active(), 1, "the revoker's slot");
        });
    }

    /// What a driver started for the work queued does in the models below: it takes one
    /// task and runs it without end (a task that spins until others run beside it), so it
    /// drives no more. It leaves if it finds none (taking a slot back if work arrived).
    fn run_one(inj: &Injector<u8>) -> Option<u8> {
        loop {
            if let Some(t) = inj.pop() {
                return Some(t);
            }
            if !inj.leave() {
                return None;
            }
        }
    }

    /// A pusher of two tasks, each pushed and then asked for (the drivers it starts run
    /// one task each: [`run_one`]); joins with what they ran.
    fn push_two(inj: &Arc<Injector<u8>>) -> thread::JoinHandle<Vec<u8>> {
        let inj = inj.clone();
        thread::spawn(move || {
            let mut ran = Vec::new();
            for t in [1, 2] {
                inj.push(t);
                for _ in 0..inj.drivers_wanted(1) {
                    ran.extend(run_one(&inj));
                }
            }
            ran
        })
    }

    /// Asks for drivers for all the work queued, as `driver::ask_for_drivers` does (each
    /// runs one task: [`run_one`]).
    fn ask_for_all(inj: &Injector<u8>, ran: &mut Vec<u8>) {
        for _ in 0..inj.drivers_wanted(inj.queued().max(1)) {
            ran.extend(run_one(inj));
        }
    }

    /// Two drivers lingering behind the wakes Tokio put off, on two workers that each go on
    /// to run a task without end, and a pusher of two tasks (each pushed, then asked for)
    /// that may count on them for both. The driver that runs the task on each worker
    /// revokes the one put off there and asks for drivers for all the work queued: every
    /// task gets a driver of its own. (Asking for one driver per driver revoked, each
    /// revoker counted on the other, still lingering: one driver for two tasks.)
    #[test]
    fn two_revoked_lingerers_leave_no_task_without_a_driver() {
        loom::model(|| {
            let inj = Arc::new(Injector::new(4));
            // The two put-off drivers, and the two that revoke them.
            for _ in 0..4 {
                assert!(inj.claim());
            }
            inj.linger();
            inj.linger();
            let pusher = push_two(&inj);
            let revoke = |inj: &Injector<u8>| {
                let mut ran = Vec::new();
                if inj.revoke(true) {
                    ask_for_all(inj, &mut ran);
                }
                ran
            };
            let i3 = inj.clone();
            let other = thread::spawn(move || revoke(&i3));
            let mut ran = revoke(&inj);
            ran.extend(other.join().unwrap());
            ran.extend(pusher.join().unwrap());
            ran.sort();
            assert_eq!(ran, vec![1, 2], "every task has a driver of its own");
        });
    }

    /// A driver lingering behind Tokio's work (it yielded, counted as lingering) is polled
    /// again, looks once, stops lingering, and runs the task it got without end; a pusher of
    /// two tasks may count on it for both. If it found none at its look but work arrived
    /// before it stopped lingering, it takes a task then, and asks for drivers for the rest
    /// as when its look found one. (It asked only when the look found one: the task pushed
    /// after its look waited behind the one it ran.)
    #[test]
    fn a_lingerer_back_from_behind_tokio_work_strands_nothing() {
        loom::model(|| {
            let inj = Arc::new(Injector::new(2));
            assert!(inj.claim());
            inj.linger();
            let pusher = push_two(&inj);
            let mut ran = Vec::new();
            let mut first = inj.pop();
            if inj.stop_lingering() {
                first = first.or_else(|| inj.pop());
                if first.is_some() && inj.has_work() {
                    ask_for_all(&inj, &mut ran);
                }
            }
            match first {
                // It runs the task without end.
                Some(t) => ran.push(t),
                None => ran.extend(run_one(&inj)),
            }
            ran.extend(pusher.join().unwrap());
            ran.sort();
            assert_eq!(ran, vec![1, 2], "every task has a driver of its own");
        });
    }

    /// Two drivers at the limit and a pusher whose claim fails: the last driver to leave
    /// runs the task.
    #[test]
    fn full_slots_hand_work_to_the_last_leaver() {
        loom::model(|| {
            let inj = Arc::new(Injector::new(2));
            assert!(inj.claim());
            assert!(inj.claim());
            let i2 = inj.clone();
            let other = thread::spawn(move || {
                let mut ran = Vec::new();
                drive(&i2, &mut ran);
                ran
            });
            let pusher = push_and_drive(&inj, 7);
            let mut ran = Vec::new();
            drive(&inj, &mut ran);
            ran.extend(other.join().unwrap());
            ran.extend(pusher.join().unwrap());
            assert_eq!(ran, vec![7]);
            assert_eq!(inj.active(), 0);
        });
    }
}
