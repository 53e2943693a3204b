//! VCU and memory admission for one device: a plain state machine with two lanes.
//!
//! Items are typed by lane: a *task* asking for its VCUs and memory for the first time,
//! or a *resume* - a task that lent its VCUs back while it waited (on other tasks, or a
//! CPU task on anything once others waited for VCUs: `idle`) and takes them back before it
//! runs on. Resumes have a lane of their own and go first: a task taking back its own VCUs
//! never waits behind work it is blocking (the children it awaits). Resumes of tasks that
//! waited on something outside the runtime let the waiting tasks go first every so often
//! ([`Admission::resume_outside`]), and the resumes that give the waiting tasks a turn
//! take their turn among them, in a lane of their own whose entries take tickets of the
//! task lane ([`Admission::resume_after_tasks`]). Whatever an operation admits is pushed to
//! `out`; the caller (the executor) runs it.
//!
//! The task lane has a central part, under the same lock as the resume lane (entries may
//! also arrive through a queue of their own, `incoming`, without the lock, and every
//! holder of the lock moves them to the lane first), and shards for the tasks a running
//! task spawns (which it may claim: see [`Admission::lend`]), one per thread that queues
//! them (while there are no more threads than shards), each under a
//! lock of its own on a cache line of its own: a fork-join tree queues its children
//! without touching what other threads queue. Each task lane entry takes a ticket from one
//! counter, and drains admit by ticket across the parts, so the lane as a whole stays
//! FIFO.
//!
//! # Invariants
//! - The VCUs and memory reserved on a device never exceed its capacity (1.0 VCU, the memory
//!   budget): every reservation is one compare-and-swap that checks the sum first.
//! - Each reservation is released exactly once, by the holder of what was admitted.
//! - No lost wake-up: an item waits only while it does not fit. Whoever queues one in a
//!   shard pushes it, counts it in `sharded`, stores the shard's length and then
//!   increments `waiting`, under the shard's lock, then has a drain made if the item fits
//!   in what is free. Whoever queues one centrally with the lock
//!   ([`queue`](Admission::queue)) increments `waiting` and drains under it. Whoever
//!   queues one centrally without it ([`queue_unlocked`](Admission::queue_unlocked))
//!   increments `waiting`, pushes it to `incoming`, reads `waiting` again with a
//!   read-modify-write, and then has a drain made if it fits (a resume that finds the
//!   lock taken does the same through `incoming_resumes`). Whoever releases resources
//!   returns them and then reads `waiting` with a read-modify-write, and has a drain made
//!   (below) when it is non-zero. Read-modify-writes of `waiting` are totally ordered. If
//!   the releaser's comes before the queuer's last one (the increment, in a shard or
//!   under the lock; the second read, without it), that acquires it, so the queuer sees
//!   the released resources and drains, or has a drain made if its item fits. If it comes
//!   after, it reads what that one wrote, and through it the push (and `sharded` and the
//!   shard's length, so the drain does not skip the shard). An item that does not fit when
//!   queued waits for a release, which has a drain made. (A queuer without the lock counts
//!   its item before pushing it, so that no drain takes it before it is counted; hence its
//!   second read.) (No `SeqCst` reasoning needed, which loom checks.) A releaser may
//!   instead hand its reservation to the first waiting item when that asks for exactly as
//!   much and nothing is ahead of it (no resume, no shard entry): under the central lock,
//!   `used` unchanged, so no other item fits that did not fit before; it then drains as
//!   any holder of the lock does, without a second look at `incoming` (an entry pushed
//!   there since its first look fits no better than when its queuer checked, and a drain
//!   its queuer asks for is counted after this holder's first read of `drains` - else the
//!   push would have been seen - so it is served as every request is, below).
//! - A releaser never waits for the central lock (with many workers finishing tasks while
//!   others wait, each would queue for it, and sleep there). It has a drain made through
//!   a *request*: it counts one in `drains`, then tries the lock and drains if it gets it.
//!   Every holder of the lock reads `drains` after taking it and again after unlocking;
//!   while the count moved, it takes the lock again (if it is free) and drains. These are
//!   all read-modify-writes of `drains`, so they are totally ordered, and every request is
//!   served. Take the holder whose lock made the releaser's try fail. Had its last read
//!   come before the request in that order, the request would read what that read wrote
//!   (or a later value), so the holder's unlock, which precedes its last read, would happen
//!   before the request and so before the try, which could then not see the lock held by
//!   that holder. So its last read comes after the request: either its drain followed a
//!   read that counted the request (and sees the resources returned before it), or it sees
//!   the count moved and drains again, or it leaves that to the holder that took the lock
//!   from it, for which the same holds. (A holder keeps what it admits for others in its
//!   `out`, which its caller runs or queues for the workers.)
//! - Drains hold the central lock throughout, then lock the shards they look at, in
//!   order; a queuer in a shard holds only that shard's lock while it pushes. So drains
//!   are serialized, and no thread waits on a shard lock while holding another.
//! - The task lane is FIFO: a newcomer queues behind waiting items even when it would fit,
//!   so a large task is never starved by a stream of small ones; drains admit the lowest
//!   ticket among the fronts (tickets grow in each part: taken under its lock in a shard,
//!   and put in order as `incoming` is moved to the central part; two items queued
//!   centrally at the same time may still be admitted in either order).
//!   Two exceptions admit out of order: the stall resolver's
//!   [`backfill`](Admission::backfill), when nothing else can move, and a
//!   [`lend`](Admission::lend) to the task the lender awaits, which only takes what the
//!   lender gives up (as if the lender ran it on its own VCUs). Resumes are admitted
//!   first-fit, before any task, except that after [`OUTSIDE_TURNS`] resumes of tasks that
//!   waited outside the runtime passed waiting tasks, a drain admits the tasks first (and
//!   if the first does not fit for want of VCUs alone, those resumes wait until it does:
//!   VCUs come back as tasks end or wait; memory a waiting resume holds would not).
//!   Resumes that take their turn among the tasks (`yields`)
//!   keep their order, take their tickets from the task lane's counter under the central
//!   lock (so their lane is sorted), and are admitted with the task lane's fronts in
//!   ticket order, except that a task at the front that does not fit does not hold them
//!   back. So tasks woken from outside in a loop do not keep a task that never started
//!   waiting for ever, nor does a stream of new tasks keep a resume that gives them a
//!   turn waiting for ever. Items that need nothing bypass the lanes. (Outside the lanes, a CPU task
//!   that finishes may pass its reservation on to a task it made ready that asks for as
//!   much, past the waiting tasks, a bounded number of times in a row on a thread; what is
//!   reserved does not change: see `RtInner::pass_on`.)
//! - No aborted item waits: an aborter takes its item out of whichever lane holds it
//!   ([`Admission::take_aborted`]), and a queuer that finds its item aborted hands it back
//!   instead of queueing it; the two meet under the lanes' locks, or through the item's
//!   claim word for a queuer without the lock (see `take_aborted`). An aborted entry in
//!   the middle of the resume lane or the central part of the task lane stays as a
//!   tombstone (`Entry::is_dead`), which drains drop as they meet it, and which every look
//!   at the lane's front passes by (the hand-over of a release, a drain's first check,
//!   `central_tasks_waiting`).

use std::collections::VecDeque;

use crossbeam_utils::CachePadded;
use smallvec::SmallVec;

use crate::loom::sync::{AtomicU8, AtomicU64, AtomicUsize, Mutex, Ordering, Queue, yield_now};

/// One VCU (a whole device) in fixed point: VCUs are counted in millionths.
pub const VCU_ONE: u32 = 1_000_000;

const VCU_BITS: u32 = 20;
const VCU_MASK: u64 = (1 << VCU_BITS) - 1;
/// The largest memory budget admission can track (2^44 - 1 bytes, a byte short of 16 TiB:
/// the rest of the word counts VCUs); larger budgets are clamped.
pub const MAX_MEMORY: u64 = (1 << (64 - VCU_BITS)) - 1;

/// The most task lane shards a device has.
pub(crate) const MAX_SHARDS: usize = 16;

/// What a task reserves on its device while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    /// VCUs in millionths (`VCU_ONE` is a whole device).
    pub vcu: u32,
    /// Bytes of workspace.
    pub mem: u64,
}

impl Demand {
    fn is_zero(self) -> bool {
        self.vcu == 0 && self.mem == 0
    }
    /// Whether a task asking for this can run on `vcu` VCUs lent by a task awaiting it: no
    /// more VCUs, and no memory (a loan is VCUs only).
    pub(crate) fn within_loan(self, vcu: u32) -> bool {
        self.mem == 0 && self.vcu <= vcu
    }
    fn packed(self) -> u64 {
        (self.mem << VCU_BITS) | self.vcu as u64
    }
}

/// Resources in use on a device at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// VCUs in use, in millionths.
    pub vcu: u32,
    /// Bytes reserved.
    pub mem: u64,
    /// Tasks waiting for the device: for admission (both lanes), or, with data, in its
    /// data queue.
    pub waiting: usize,
}

/// Which lane a waiting item is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// A task asking for its resources for the first time.
    Task,
    /// A parked task taking back the VCUs it lent.
    Resume,
}

/// A lane entry.
struct Entry<T> {
    item: T,
    /// What it asks for.
    d: Demand,
    /// Whether a lender may claim it (its claim word is set: see [`Admission::queue`]).
    claimable: bool,
    /// Its place in its lane's order. In the resume lane, a count of the lane's entries
    /// shifted left by two, and [`OUTSIDE_RESUME`] kept; in the lane of resumes that take
    /// their turn among the tasks, a ticket of the task lane (see [`push_resume`]). (On
    /// its way to either, [`YIELDS`], [`OUTSIDE_RESUME`] or 0: where it goes.)
    ticket: u64,
}

impl<T> Entry<T> {
    /// Whether this is an entry of the central part of the task lane, or of the resume
    /// lane, whose item an aborter took out (see [`Admission::take_aborted`]): a
    /// tombstone, which every look at a lane's front passes by. Its demand is zero
    /// ([`take_entry`]), which no waiting item's is (items that need nothing bypass the
    /// lanes): a release never hands its reservation over to it (it asks for exactly as
    /// much), and a drain's first check finds that it fits, so that the drain looks past
    /// it.
    #[inline(always)]
    fn is_dead(&self) -> bool {
        self.d.is_zero()
    }
}

/// The ticket of a resume on its way to the lane of resumes that take their turn among the
/// tasks (see [`Admission::resume_after_tasks`]), until [`push_resume`] gives it its own.
const YIELDS: u64 = 1;

/// A bit of a resume lane entry's ticket: a resume of a task that waited on something
/// outside the runtime (see [`Admission::resume_outside`]).
const OUTSIDE_RESUME: u64 = 2;

/// How many resumes of tasks that waited outside the runtime a device's drains admit
/// ahead of waiting tasks before one drain admits the tasks first (see
/// [`Admission::resume_outside`]). (Tokio's workers look at their shared queue every 61
/// tasks they take from their own.)
const OUTSIDE_TURNS: u32 = 32;

/// What the central lock holds. (The task lane first: with the lock, on one cache line.)
#[repr(C)]
struct Central<T> {
    /// Task lane entries that are not claimable.
    tasks: VecDeque<Entry<T>>,
    /// The resume lane (never claimable).
    resumes: VecDeque<Entry<T>>,
    /// Resumes that take their turn among the tasks (never claimable): each has a ticket
    /// of the task lane, taken as it is pushed, and is admitted in ticket order with the
    /// task lane's entries (see [`Admission::resume_after_tasks`]).
    yields: VecDeque<Entry<T>>,
    /// No resume asks for less VCUs, nor for less memory (a bound: kept while items leave,
    /// reset when the lane empties).
    resume_min: Demand,
    /// Entries pushed to the resume lane so far: their tickets (see [`push_resume`]).
    resumed: u64,
    /// Resumes of tasks that waited outside the runtime admitted while tasks waited, since
    /// a drain last let the tasks go first (see [`Admission::resume_outside`]).
    passed: u32,
    /// Tombstones left in `tasks`, `resumes` and `yields` since each was last compacted
    /// (see [`take_entry`]; some may be gone since, dropped by drains).
    dead: [usize; 3],
}

/// One shard of the task lane (claimable entries).
struct Shard<T> {
    /// The lane's length, stored under its lock after every change (see the module
    /// invariants): drains skip empty shards without locking them.
    len: AtomicUsize,
    lane: Mutex<VecDeque<Entry<T>>>,
}

/// Whether the item whose claim word is `word` waits claimable in a shard of a task lane
/// (a hint: it may be claimed or admitted as the caller looks).
#[inline]
pub(crate) fn queued_in_shard(word: &AtomicU8) -> bool {
    word.load(Ordering::Acquire) & STATE == QUEUED
}

/// A poller that lends no VCUs (a `block_on` future, a future started with `tokio::spawn`)
/// awaits the item whose claim word is `word`, so no lender will claim it: returns `true`
/// if it waits claimable in a shard now (the caller moves it: [`Admission::unshard`]),
/// else marks it [`OUTSIDE`], and a queuer that would place it in a shard later queues it
/// centrally instead ([`Admission::queue`]). (Both read-modify-write the word, so one of
/// the two sees the other.)
pub(crate) fn mark_outside(word: &AtomicU8) -> bool {
    let mut cur = word.load(Ordering::Acquire);
    loop {
        if cur & STATE == QUEUED {
            return true;
        }
        if cur & OUTSIDE != 0 {
            return false;
        }
        match word.compare_exchange_weak(cur, cur | OUTSIDE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return false,
            Err(now) => cur = now,
        }
    }
}

/// Whether `e` is a task lane entry whose item is gone (a tombstone): claimed, or taken out
/// of the central part by an aborter.
#[inline]
fn is_tombstone<T: Claim>(e: &Entry<T>) -> bool {
    e.is_dead()
        || e.claimable
            && e.item
                .claim_word()
                .is_some_and(|c| c.load(Ordering::Acquire) & STATE == CLAIMED)
}

/// Takes a lane entry's item for admission (under the lock): `false` if a lender claimed it
/// first.
#[inline]
fn take_queued<T: Claim>(e: &Entry<T>) -> bool {
    !e.claimable
        || e.item.claim_word().is_none_or(|c| {
            c.compare_exchange(QUEUED, OUT, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
}

/// What [`Admission::admit_entry`] did with a lane entry.
enum Step {
    Admitted,
    /// Not admitted: it does not fit now (it stays).
    NoFit,
    /// Dropped: a tombstone.
    Dropped,
    /// Dropped: a lender claimed it meanwhile; the reservation made for it went back.
    Lost,
}

/// The `min` of an empty resume lane.
const NO_MIN: Demand = Demand {
    vcu: u32::MAX,
    mem: u64::MAX,
};

/// Where a task lane item stands, in its claim word (see [`Claim`]): not in the lane.
pub(crate) const OUT: u8 = 0;
/// Waiting in the task lane.
const QUEUED: u8 = 1;
/// Claimed by a lender ([`Admission::lend`]): its lane entry is a tombstone, dropped when a
/// drain meets it.
const CLAIMED: u8 = 2;
/// The bits of a claim word that say where its item stands (`OUT`, `QUEUED`, `CLAIMED`).
const STATE: u8 = 3;
/// A flag of a claim word: its item is on its way into a lane through a queue without the
/// lanes' lock (`incoming`, `incoming_resumes`), until a holder of the lock moves it in.
const INCOMING: u8 = 4;
/// A flag of a claim word: an aborter found the item in no lane (see [`mark_aborted`]).
const ABORTED: u8 = 8;
/// A flag of a claim word: a poller that lends no VCUs awaits the item, which was in no
/// lane then (see [`mark_outside`]); a queuer that finds the flag queues it centrally.
const OUTSIDE: u8 = 16;
/// A flag of a claim word: the item was held for a poll that may claim it, to be queued
/// claimable when that poll ends (see [`mark_held`]). Cleared when it is queued so.
const HELD: u8 = 32;

/// The item whose claim word is `word` is held for the poll that made it ready, to be
/// queued claimable when the poll ends (a task's stash).
#[inline]
pub(crate) fn mark_held(word: &AtomicU8) {
    word.fetch_or(HELD, Ordering::AcqRel);
}

/// Whether the item whose claim word is `word` is, or may soon be, claimable: held for a
/// poll ([`mark_held`]) or queued in a shard (a hint).
#[inline]
pub(crate) fn may_be_claimable(word: &AtomicU8) -> bool {
    let w = word.load(Ordering::Acquire);
    w & HELD != 0 || w & STATE == QUEUED
}

/// An admission item: a task lane item may have a claim word (`OUT` while the item is not
/// in the task lane), through which a lender awaiting the item claims it without the lanes'
/// lock (see [`Admission::lend`]), and through which an aborter meets a queuer that places
/// the item without the lock (see [`Admission::take_aborted`]).
pub(crate) trait Claim: Sized {
    /// The item's claim word, if it has one.
    fn claim_word(&self) -> Option<&AtomicU8>;

    /// Whether the item is `other`.
    fn is(&self, other: &Self) -> bool;

    /// Whether the item was aborted: a queuer that finds it so under a lane's lock hands it
    /// back instead of queueing it (see [`Admission::take_aborted`]).
    #[inline]
    fn aborted(&self) -> bool {
        false
    }

    /// Drops the item of a tombstone (its lender took the item's own reference): the
    /// last reference to a finished item, often.
    #[inline]
    fn let_go(self) {}

    /// Keeps the low bits of the ticket of the item's entry in a lane sorted by ticket (the
    /// central part of the task lane, or the resume lane), for
    /// [`ticket_hint`](Self::ticket_hint). (Nothing by default.)
    #[inline]
    fn note_ticket(&self, _ticket: u64) {}

    /// The low bits of the ticket [`note_ticket`](Self::note_ticket) kept, if the item
    /// keeps them: an aborter finds the item's entry by them, in a lane sorted by ticket,
    /// instead of looking at every entry (see [`find_entry`]). An item without them is
    /// looked for entry by entry.
    #[inline]
    fn ticket_hint(&self) -> Option<u16> {
        None
    }
}

/// Drops the tombstone `e` (see [`Claim::let_go`]).
#[inline]
fn drop_tombstone<T: Claim>(e: Option<Entry<T>>) {
    if let Some(e) = e {
        e.item.let_go();
    }
}

#[cfg(test)]
impl Claim for u8 {
    fn claim_word(&self) -> Option<&AtomicU8> {
        None
    }
    fn is(&self, other: &u8) -> bool {
        self == other
    }
}

/// An aborter's first step (its task's abort flag set already, so that [`Claim::aborted`]
/// holds): marks `item`'s claim word `ABORTED` unless it is queued in a shard (where
/// [`Admission::take_aborted`] claims it as a lender would). Returns whether the item is on
/// its way into a lane without the lock (`INCOMING`): a queuer marked it so before this
/// mark, and the aborter then waits for it in its device's queues. A queuer that marks it
/// after this finds it `ABORTED` and does not queue it. (Both are read-modify-writes of
/// the word, so one of the two sees the other's mark.)
pub(crate) fn mark_aborted<T: Claim>(item: &T) -> bool {
    let Some(w) = item.claim_word() else {
        return false;
    };
    let mut cur = w.load(Ordering::Acquire);
    loop {
        if cur & STATE == QUEUED {
            return false;
        }
        match w.compare_exchange_weak(cur, cur | ABORTED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return cur & INCOMING != 0,
            Err(now) => cur = now,
        }
    }
}

/// A queuer's mark of an item it placed in a shard (under the shard's lock): `QUEUED`,
/// from then on claimable, unless [`mark_outside`] came first (`false`: it goes centrally).
#[inline]
fn mark_queued(word: &AtomicU8) -> bool {
    let mut cur = word.load(Ordering::Acquire);
    loop {
        if cur & OUTSIDE != 0 {
            return false;
        }
        match word.compare_exchange_weak(cur, QUEUED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

/// A queuer's mark before it places `item` without the lock: `false` when an aborter
/// marked it first (the queuer hands it back instead; see [`mark_aborted`]).
#[inline]
fn mark_incoming<T: Claim>(item: &T) -> bool {
    item.claim_word()
        .is_none_or(|w| w.fetch_or(INCOMING, Ordering::AcqRel) & ABORTED == 0)
}

/// What [`Admission::resume`] did with a resume.
#[derive(Debug, PartialEq)]
pub(crate) enum Resumed<T> {
    /// Its VCUs fitted at once: the item is handed back to run.
    Granted(T),
    /// It waits in the resume lane (or this very call admitted it, into `out`).
    Waiting,
    /// It was aborted: it did not queue, and is handed back (see [`Claim::aborted`]).
    Aborted(T),
}

/// The admission state of one device.
///
/// Each count that changes is on a cache line of its own (`CachePadded`), apart from the
/// fields that never change after construction. Every worker spawning, finishing,
/// lending and resuming tasks updates or reads these counts, and on one line they were a
/// single point that all cores took turns on: with 16 workers running a fork-join tree
/// (`benches/overhead.rs`), about four fifths of the workers' samples sat on that line.
pub(crate) struct Admission<T> {
    mem_capacity: u64,
    /// The task lane's shards.
    shards: Box<[CachePadded<Shard<T>>]>,
    used: CachePadded<AtomicU64>,
    /// Items in both lanes.
    waiting: CachePadded<AtomicUsize>,
    /// Tickets of the task lane, taken in order.
    tickets: CachePadded<AtomicU64>,
    /// Entries in the shards (tombstones included): drains skip the shards while it is 0.
    sharded: CachePadded<AtomicUsize>,
    /// Items in the resume lane (not those that take their turn among the tasks, in
    /// `yields`: see [`resume_entry`](Self::resume_entry)).
    resuming: CachePadded<AtomicUsize>,
    /// Drain requests so far: releasers that found the central lock taken count one here
    /// and leave the drain to its holder (see [`unlock`](Self::unlock)).
    drains: CachePadded<AtomicU64>,
    /// The resume lane and the central task lane; its lock also serializes drains.
    central: CachePadded<Mutex<Central<T>>>,
    /// Central task lane entries queued without the lock, which holders move to the lane
    /// (see [`absorb`](Self::absorb)).
    incoming: Queue<Entry<T>>,
    /// Resumes queued without the lock, which holders move to the resume lane likewise.
    incoming_resumes: Queue<Entry<T>>,
}

impl<T: Claim> std::fmt::Debug for Admission<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("usage", &self.usage())
            .field("mem_capacity", &self.mem_capacity)
            .finish_non_exhaustive()
    }
}

impl<T: Claim> Admission<T> {
    /// A device with `mem_capacity` bytes, whose task lane has `shards` shards (at least
    /// one, at most [`MAX_SHARDS`]): about one per thread that queues claimable tasks there.
    pub(crate) fn new(mem_capacity: u64, shards: usize) -> Self {
        Admission {
            mem_capacity: mem_capacity.min(MAX_MEMORY),
            shards: (0..shards.clamp(1, MAX_SHARDS))
                .map(|_| {
                    CachePadded::new(Shard {
                        len: AtomicUsize::new(0),
                        lane: Mutex::new(VecDeque::new()),
                    })
                })
                .collect(),
            used: CachePadded::new(AtomicU64::new(0)),
            waiting: CachePadded::new(AtomicUsize::new(0)),
            tickets: CachePadded::new(AtomicU64::new(0)),
            sharded: CachePadded::new(AtomicUsize::new(0)),
            resuming: CachePadded::new(AtomicUsize::new(0)),
            drains: CachePadded::new(AtomicU64::new(0)),
            central: CachePadded::new(Mutex::new(Central {
                tasks: VecDeque::new(),
                resumes: VecDeque::new(),
                yields: VecDeque::new(),
                resume_min: NO_MIN,
                resumed: 0,
                passed: 0,
                dead: [0; 3],
            })),
            incoming: Queue::new(),
            incoming_resumes: Queue::new(),
        }
    }

    pub(crate) fn mem_capacity(&self) -> u64 {
        self.mem_capacity
    }

    /// Whether `d` fits on an empty device.
    pub(crate) fn can_ever_fit(&self, d: Demand) -> bool {
        d.vcu <= VCU_ONE && d.mem <= self.mem_capacity
    }

    pub(crate) fn usage(&self) -> Usage {
        let u = self.used.load(Ordering::Relaxed);
        Usage {
            vcu: (u & VCU_MASK) as u32,
            mem: u >> VCU_BITS,
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Whether no resume waits in the resume lane (a snapshot; those that take their turn
    /// among the tasks do not count).
    #[inline]
    pub(crate) fn no_resumes_waiting(&self) -> bool {
        self.resuming.load(Ordering::Acquire) == 0
    }

    /// Whether tasks wait in the central part of the task lane (spawned outside any task's
    /// poll, detached, or made ready by a finished dependency). A snapshot, under the
    /// central lock: a look that gave up on a taken lock said "none" most times while
    /// parents spawning detached tasks kept the lock busy, and their tasks piled up.
    /// (Drains requested while it held the lock are served, into `out`.)
    pub(crate) fn central_tasks_waiting(&self, out: &mut Vec<T>) -> bool {
        if !self.incoming.is_empty() {
            return true;
        }
        let (mut c, seen) = self.lock_central();
        drop_dead_fronts(&mut c.tasks);
        let waiting = !c.tasks.is_empty();
        self.unlock(c, seen, out);
        waiting
    }

    /// Whether items wait in either lane (a snapshot).
    #[inline]
    pub(crate) fn has_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Reserves `d` now if it fits, whoever waits (for a queue of the caller's own, served
    /// in order). Returns whether it did.
    pub(crate) fn reserve_now(&self, d: Demand) -> bool {
        d.is_zero() || self.try_reserve(d)
    }

    /// The usage word `cur` with `d` added, if that stays within the device's capacity.
    #[inline]
    fn with_added(&self, cur: u64, d: Demand) -> Option<u64> {
        let vcu = (cur & VCU_MASK) + d.vcu as u64;
        let mem = (cur >> VCU_BITS).saturating_add(d.mem);
        (vcu <= VCU_ONE as u64 && mem <= self.mem_capacity).then_some((mem << VCU_BITS) | vcu)
    }

    fn try_reserve(&self, d: Demand) -> bool {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            let Some(next) = self.with_added(cur, d) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// A task asks for `d`: admitted if it fits now and nobody waits, else queued in the
    /// task lane (claimable, in shard `home`, if it has a claim word; centrally otherwise).
    /// Everything admitted by this call (the item, or items queued before it) is pushed to
    /// `out`. Returns whether `item` itself was admitted at once.
    #[cfg(test)]
    pub(crate) fn admit_in(&self, home: usize, item: T, d: Demand, out: &mut Vec<T>) -> bool {
        match self.admit_now(item, d, out) {
            Ok(()) => true,
            Err(item) if item.claim_word().is_some() => {
                let back = self.queue_in(home, item, d, out);
                assert!(back.is_none(), "an aborted item handed back");
                false
            }
            Err(item) => {
                let back = self.queue(item, d, false, out);
                assert!(back.is_none(), "an aborted item handed back");
                false
            }
        }
    }

    /// [`admit_in`](Self::admit_in) the first shard.
    #[cfg(test)]
    pub(crate) fn admit(&self, item: T, d: Demand, out: &mut Vec<T>) -> bool {
        self.admit_in(0, item, d, out)
    }

    /// The first step of an admission: admits `item` (into `out`) if it fits now and
    /// nobody waits; hands it back otherwise, for the caller to [`queue`](Self::queue).
    #[inline]
    pub(crate) fn admit_now(&self, item: T, d: Demand, out: &mut Vec<T>) -> Result<(), T> {
        if d.is_zero() || (self.waiting.load(Ordering::Acquire) == 0 && self.try_reserve(d)) {
            push_out(out, item);
            Ok(())
        } else {
            Err(item)
        }
    }

    /// The second step, for an item handed back by [`admit_now`](Self::admit_now): queues
    /// it in the task lane, then admits what fits. `claimable`: a lender may claim it (a
    /// task spawned by a running task, which may await it); only then is its claim word
    /// set, and it goes to the calling thread's shard of the lane.
    ///
    /// An item found aborted ([`Claim::aborted`]) is not queued but handed back, for the
    /// caller to fail (see [`take_aborted`](Self::take_aborted)).
    #[must_use]
    #[inline(always)]
    pub(crate) fn queue(&self, item: T, d: Demand, claimable: bool, out: &mut Vec<T>) -> Option<T> {
        if claimable && item.claim_word().is_some() {
            return self.queue_in(super::thread_number(), item, d, out);
        }
        let (c, seen) = self.lock_central();
        self.queue_locked(c, seen, item, d, out)
    }

    /// Queues `item` in the central part of the task lane under the lock `c` (taken when the
    /// drain requests stood at `seen`), drains, and unlocks. Hands an aborted item back.
    /// (Inline in both callers: as a call, each queued task paid for a second frame and
    /// its arguments passed on.)
    #[inline(always)]
    fn queue_locked<'a>(
        &'a self,
        mut c: CentralGuard<'a, T>,
        seen: u64,
        item: T,
        d: Demand,
        out: &mut Vec<T>,
    ) -> Option<T> {
        if item.aborted() {
            self.unlock(c, seen, out);
            return Some(item);
        }
        // (Entries queued without the lock before it are moved in ahead of it, by ticket,
        // as the drain starts.)
        c.tasks.push_back(self.central_entry(item, d));
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.drain(&mut c, out);
        self.unlock(c, seen, out);
        None
    }

    /// [`queue`](Self::queue) of an item that is not claimable, in the central part of the
    /// task lane, without waiting for the central lock: for drivers queueing the dependents
    /// of the tasks they finish, many at once while the device is full. If the lock is
    /// taken, the item is counted first (so that no drain takes it before it is counted),
    /// pushed to `incoming`, and the count is read again with a read-modify-write before
    /// the item is checked against what is free (see the module invariants). Hands an
    /// aborted item back, as [`queue`](Self::queue) does.
    #[must_use]
    pub(crate) fn queue_unlocked(&self, item: T, d: Demand, out: &mut Vec<T>) -> Option<T> {
        // The lock when it is free, as `queue` does (cheaper than the queue's push and pop).
        if let Some((c, seen)) = self.try_lock_central() {
            return self.queue_locked(c, seen, item, d, out);
        }
        self.queue_incoming(item, d, out)
    }

    /// [`queue_unlocked`](Self::queue_unlocked)'s way without the lock: through `incoming`.
    fn queue_incoming(&self, item: T, d: Demand, out: &mut Vec<T>) -> Option<T> {
        if !mark_incoming(&item) {
            return Some(item);
        }
        self.push_unlocked(&self.incoming, || self.central_entry(item, d), d, out);
        None
    }

    /// Queues the entry `entry` makes (asking for `d`) through `queue` (`incoming` or
    /// `incoming_resumes`), without the central lock: counted before it is pushed (so that
    /// no drain takes it uncounted), then the count read again with a read-modify-write,
    /// then a drain requested if it fits (see the module invariants).
    fn push_unlocked(
        &self,
        queue: &Queue<Entry<T>>,
        entry: impl FnOnce() -> Entry<T>,
        d: Demand,
        out: &mut Vec<T>,
    ) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        queue.push(entry());
        self.waiting.fetch_add(0, Ordering::AcqRel);
        if self.could_fit(d) {
            self.request_drain(out);
        }
    }

    /// A central task lane entry for `item`, with the next ticket (which the item keeps
    /// the low bits of, for an aborter: [`Claim::note_ticket`]).
    #[inline]
    fn central_entry(&self, item: T, d: Demand) -> Entry<T> {
        debug_assert!(!d.is_zero(), "an item that needs nothing waits");
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        item.note_ticket(ticket);
        Entry {
            item,
            d,
            claimable: false,
            ticket,
        }
    }

    /// Puts `e`, a resume ([`YIELDS`], [`OUTSIDE_RESUME`] or 0 as its ticket), at the back
    /// of its lane in `c` with a ticket, which the item keeps the low bits of for an
    /// aborter ([`Claim::note_ticket`]): each lane is sorted by ticket, as the central part
    /// of the task lane is. In the resume lane, the next of the lane's own (keeping its
    /// bound); in the lane of those that take their turn among the tasks, the next of the
    /// task lane: taken under the central lock, so that lane is sorted too.
    #[inline]
    fn push_resume(&self, c: &mut Central<T>, mut e: Entry<T>) {
        debug_assert!(!e.d.is_zero(), "an item that needs nothing waits");
        if e.ticket & YIELDS != 0 {
            e.ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
            e.item.note_ticket(e.ticket);
            c.yields.push_back(e);
            return;
        }
        c.resume_min = Demand {
            vcu: c.resume_min.vcu.min(e.d.vcu),
            mem: c.resume_min.mem.min(e.d.mem),
        };
        e.ticket = c.resumed << 2 | (e.ticket & OUTSIDE_RESUME);
        c.resumed += 1;
        e.item.note_ticket(e.ticket);
        c.resumes.push_back(e);
    }

    /// Moves the entries queued without the lock to the central task lane, in ticket order
    /// (a queuer takes its ticket before it pushes, so one may push after another that took
    /// a later ticket). Called by every holder of the central lock before it looks at the
    /// lane.
    ///
    /// Resumes queued without the lock go to the back of the resume lane.
    #[inline(always)]
    fn absorb(&self, c: &mut Central<T>) {
        // (Mostly empty: a look at their ends, inline, costs less than a call or a pop that
        // finds nothing.)
        if !self.incoming_resumes.is_empty() || !self.incoming.is_empty() {
            self.absorb_queued(c);
        }
    }

    /// [`absorb`](Self::absorb) when something was queued without the lock.
    #[inline(never)]
    fn absorb_queued(&self, c: &mut Central<T>) {
        // (Each entry's word loses its `INCOMING` mark: in its lane, an aborter finds it.)
        let arrived = |e: &Entry<T>| {
            if let Some(w) = e.item.claim_word() {
                w.fetch_and(!INCOMING, Ordering::AcqRel);
            }
        };
        while let Some(e) = self.incoming_resumes.pop() {
            arrived(&e);
            self.push_resume(c, e);
        }
        while let Some(e) = self.incoming.pop() {
            arrived(&e);
            if c.tasks.back().is_none_or(|b| b.ticket < e.ticket) {
                c.tasks.push_back(e);
            } else {
                let at = c.tasks.partition_point(|x| x.ticket < e.ticket);
                c.tasks.insert(at, e);
            }
        }
    }

    /// [`queue`](Self::queue) of a claimable item (with a claim word) in shard `home`
    /// (modulo the shard count). Hands an aborted item back.
    fn queue_in(&self, home: usize, item: T, d: Demand, out: &mut Vec<T>) -> Option<T> {
        let shard = &self.shards[home % self.shards.len()];
        {
            let mut lane = shard.lane.lock();
            if item.aborted() {
                return Some(item);
            }
            // Tombstones at the back go at once (a claimed child is often the last queued).
            let mut dropped = 0;
            while lane.back().is_some_and(is_tombstone) {
                drop_tombstone(lane.pop_back());
                dropped += 1;
            }
            // `sharded` counts the entry pushed below and the tombstones dropped, in one
            // update (none for one in, one out).
            match dropped {
                0 => _ = self.sharded.fetch_add(1, Ordering::AcqRel),
                1 => {}
                n => _ = self.sharded.fetch_sub(n - 1, Ordering::AcqRel),
            }
            // Under the shard's lock: its tickets grow from front to back.
            let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
            lane.push_back(Entry {
                item,
                d,
                claimable: true,
                ticket,
            });
            shard.len.store(lane.len(), Ordering::Release);
            // Counted after the length and `sharded` are stored (a drain that sees the count
            // sees the entry), and before a lender can claim it.
            self.waiting.fetch_add(1, Ordering::AcqRel);
            if let Some(c) = lane.back().and_then(|e| e.item.claim_word())
                && !mark_queued(c)
            {
                // Awaited by a poller that lends nothing: taken back out (no drain saw it,
                // under the shard's lock) and queued centrally.
                let e = lane.pop_back().expect("the entry just pushed");
                shard.len.store(lane.len(), Ordering::Release);
                self.sharded.fetch_sub(1, Ordering::AcqRel);
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                drop(lane);
                return self.queue(e.item, d, false, out);
            }
        }
        // Not fitting now, it waits for a release (which drains: see the module
        // invariants). Fitting, it is admitted unless items queued before it wait.
        if self.could_fit(d) {
            let (mut c, seen) = self.lock_central();
            self.drain(&mut c, out);
            self.unlock(c, seen, out);
        }
        None
    }

    /// [`resume`](Self::resume)'s way without queueing: takes `vcu` VCUs back if they fit
    /// now and no other resume waits.
    #[inline]
    pub(crate) fn resume_now(&self, vcu: u32) -> bool {
        let d = Demand { vcu, mem: 0 };
        d.is_zero() || (self.no_resumes_waiting() && self.try_reserve(d))
    }

    /// [`resume_now`](Self::resume_now), or with `outside`,
    /// [`resume_outside`](Self::resume_outside)'s way without queueing: only while nothing
    /// waits - else the drains decide, which count such resumes while tasks wait, and give
    /// the tasks their turn.
    #[inline]
    pub(crate) fn resume_now_as(&self, vcu: u32, outside: bool) -> bool {
        (!outside || !self.has_waiting()) && self.resume_now(vcu)
    }

    /// A parked task takes back `vcu` VCUs. Granted at once (the item is handed back) when
    /// they fit and no other resume waits - waiting tasks do not hold it back. Otherwise it
    /// queues in the resume lane (ahead of every waiting task); it may have been admitted by
    /// this very call, into `out`. An aborted item is handed back instead of queued.
    ///
    /// It never waits for the central lock: finding it taken, it queues through
    /// `incoming_resumes` as [`queue_incoming`](Self::queue_incoming) does. (Resumes come
    /// from wakers, mostly called inside another task's poll - a channel's sender waking
    /// its receiver. With more such tasks than the device admits, every wake resumes while
    /// every wait releases, and a resume that slept in the lock stalled the waker's worker
    /// and the task it ran.)
    pub(crate) fn resume(&self, item: T, vcu: u32, out: &mut Vec<T>) -> Resumed<T> {
        self.resume_entry(item, vcu, 0, out)
    }

    /// [`resume`](Self::resume) of a task that lent its VCUs while it waited on something
    /// outside the runtime (a channel, a timer, `yield_now`: `scheduler::idle`). Queued, it
    /// goes ahead of the waiting tasks as any resume does - a task woken by a timer runs
    /// soon on a full device - except that once drains admitted [`OUTSIDE_TURNS`] such
    /// resumes while tasks waited, the next drain admits the tasks first; if the first of
    /// them does not fit then, for want of VCUs alone, such resumes wait until it does
    /// (the tasks holding the VCUs give them back as they end or wait). None is granted
    /// at once while anything waits, so that the drains see them all. Tasks woken from
    /// outside in a loop (yielding, passing messages) would otherwise keep the tasks that
    /// never started from ever starting: on one worker, a thousand tasks yielding in a loop
    /// took every turn among themselves, and a task asking for the whole CPU never found
    /// it free while they took back each share as it was lent.
    pub(crate) fn resume_outside(&self, item: T, vcu: u32, out: &mut Vec<T>) -> Resumed<T> {
        self.resume_entry(item, vcu, OUTSIDE_RESUME, out)
    }

    /// [`resume`](Self::resume) of an item that, queued, takes its turn among the tasks
    /// instead of going ahead of them: it takes a ticket of the task lane, and the tasks
    /// queued before it that fit go first, while those queued after it wait for it. A
    /// task at the front that does not fit in what is free does not hold it back (as it
    /// holds back no resume: the resume may hold memory that the task waits for), and
    /// these resumes keep their order among themselves.
    ///
    /// For the turns a task passing messages or awaiting child after child gives the tasks
    /// that wait (`context::defer_resume`, `context::take_turn`). Resumes go first
    /// otherwise: two tasks passing messages on a device they fill would keep a resume
    /// waiting at every drain, and a task spawned from outside would not start until they
    /// ended. (Letting every task that fits go first instead, a stream of new tasks kept
    /// such a resume waiting for ever.)
    pub(crate) fn resume_after_tasks(&self, item: T, vcu: u32, out: &mut Vec<T>) -> Resumed<T> {
        self.resume_entry(item, vcu, YIELDS, out)
    }

    /// [`resume`](Self::resume), the entry's ticket `ticket` (0, [`OUTSIDE_RESUME`] or
    /// [`YIELDS`]: where it waits).
    fn resume_entry(&self, item: T, vcu: u32, ticket: u64, out: &mut Vec<T>) -> Resumed<T> {
        if self.resume_now_as(vcu, ticket & OUTSIDE_RESUME != 0) {
            return Resumed::Granted(item);
        }
        let d = Demand { vcu, mem: 0 };
        let e = Entry {
            item,
            d,
            claimable: false,
            ticket,
        };
        // Counted before it is pushed (either way), so that no drain takes it uncounted.
        // (Not one that takes its turn among the tasks: it does not go ahead of them, nor
        // keep a finishing task from giving its VCUs to the parent it wakes, which
        // `no_resumes_waiting` is for. Parents awaiting child after child then took back
        // their VCUs through the resume lane, and no turn came for the waiting tasks.)
        let counted = usize::from(ticket & YIELDS == 0);
        self.resuming.fetch_add(counted, Ordering::AcqRel);
        if let Some((mut c, seen)) = self.try_lock_central() {
            if e.item.aborted() {
                self.resuming.fetch_sub(counted, Ordering::AcqRel);
                self.unlock(c, seen, out);
                return Resumed::Aborted(e.item);
            }
            self.push_resume(&mut c, e);
            self.waiting.fetch_add(1, Ordering::AcqRel);
            self.drain(&mut c, out);
            self.unlock(c, seen, out);
            return Resumed::Waiting;
        }
        if !mark_incoming(&e.item) {
            self.resuming.fetch_sub(counted, Ordering::AcqRel);
            return Resumed::Aborted(e.item);
        }
        self.push_unlocked(&self.incoming_resumes, || e, d, out);
        Resumed::Waiting
    }

    /// Releases what an admitted item reserved, and admits waiting items that now fit.
    ///
    /// When items wait, the first of them asks for exactly `d` (tasks with the default
    /// constraints, mostly) and it is next in line (no resume waits, nothing is queued in
    /// the shards), the reservation passes to it as it is: `used` is left alone, which
    /// saves two read-modify-writes of a line every worker and queuer touches. Then the
    /// drain goes on as after any release (what fitted before still fits).
    ///
    /// A releaser never waits for the central lock: finding it taken, it leaves the drain
    /// to the holder (see [`unlock`](Self::unlock)). With many workers finishing tasks while
    /// others wait, each release would otherwise queue for the lock (and sleep in it).
    pub(crate) fn release(&self, d: Demand, out: &mut Vec<T>) {
        if d.is_zero() {
            return;
        }
        // With items waiting, the lock is tried first, for the hand-over.
        if self.waiting.load(Ordering::Acquire) > 0
            && let Some((mut c, seen)) = self.try_lock_central()
        {
            self.absorb(&mut c);
            if c.resumes.is_empty()
                && c.yields.is_empty()
                && self.sharded.load(Ordering::Acquire) == 0
                && c.tasks.front().is_some_and(|e| e.d == d)
                && let Some(e) = c.tasks.pop_front()
            {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                push_out(out, e.item);
                // (No second look at what was queued without the lock: nothing was
                // returned, so an entry queued there since the first look fits no better
                // than when its queuer checked, and a drain it asks for is served as any
                // request is: see the module invariants.)
                self.drain_absorbed(&mut c, out);
            } else {
                self.used.fetch_sub(d.packed(), Ordering::AcqRel);
                // A read-modify-write, not a load: see the module invariants.
                self.waiting.fetch_add(0, Ordering::AcqRel);
                // (Absorbing again: an entry queued without the lock since the first look
                // is found by this drain, after the read-modify-write above: module
                // invariants.)
                self.drain(&mut c, out);
            }
            return self.unlock(c, seen, out);
        }
        self.used.fetch_sub(d.packed(), Ordering::AcqRel);
        // A read-modify-write, not a load: see the module invariants.
        if self.waiting.fetch_add(0, Ordering::AcqRel) > 0 {
            self.request_drain(out);
        }
    }

    /// Resources came back while items wait: counts a drain request, then drains if the
    /// central lock is free; otherwise its holder drains after it unlocks.
    fn request_drain(&self, out: &mut Vec<T>) {
        self.drains.fetch_add(1, Ordering::AcqRel);
        if let Some((mut c, seen)) = self.try_lock_central() {
            self.drain(&mut c, out);
            self.unlock(c, seen, out);
        }
    }

    /// Takes the central lock, and reads the drain requests counted so far (see
    /// [`unlock`](Self::unlock)).
    #[inline]
    fn lock_central(&self) -> (CentralGuard<'_, T>, u64) {
        let c = self.central.lock();
        let seen = self.drains.fetch_add(0, Ordering::AcqRel);
        (c, seen)
    }

    /// [`lock_central`](Self::lock_central) if the lock is free.
    #[inline]
    fn try_lock_central(&self) -> Option<(CentralGuard<'_, T>, u64)> {
        let c = self.central.try_lock()?;
        let seen = self.drains.fetch_add(0, Ordering::AcqRel);
        Some((c, seen))
    }

    /// Unlocks the central lock, taken when the drain requests stood at `seen`, and serves
    /// the requests counted since: while the count moved, takes the lock again if it is
    /// free and drains. Finding it taken, it leaves them to that holder, which checks the
    /// count in turn once it unlocks (see the module invariants).
    #[inline(always)]
    fn unlock<'a>(&'a self, c: CentralGuard<'a, T>, seen: u64, out: &mut Vec<T>) {
        drop(c);
        let now = self.drains.fetch_add(0, Ordering::AcqRel);
        if now != seen {
            self.serve_drains(now, out);
        }
    }

    /// [`unlock`](Self::unlock) when drain requests came meanwhile (the count moved to
    /// `now`): serves them, as long as it finds the lock free.
    #[inline(never)]
    fn serve_drains(&self, mut now: u64, out: &mut Vec<T>) {
        loop {
            let Some(mut c) = self.central.try_lock() else {
                return;
            };
            let seen = now;
            self.drain(&mut c, out);
            drop(c);
            now = self.drains.fetch_add(0, Ordering::AcqRel);
            if now == seen {
                return;
            }
        }
    }

    /// A running task lends `d` (its VCUs) while it awaits `awaited` (an item, and what it
    /// asks for): like [`release`](Self::release), except that if the awaited item waits
    /// in the task lane and asks for no more VCUs than `d` and no memory, the lender claims
    /// it - without any lock - and it is admitted on the lender's VCUs (into `out`), out of
    /// order; the rest of `d` is released.
    ///
    /// That is as if the lender kept its VCUs and ran the task it waits for on them, so a
    /// waiting task is no worse off than without the loan - and a parent awaiting its
    /// children one by one runs its tree depth first, instead of the lane's order
    /// expanding it breadth first.
    pub(crate) fn lend(&self, d: Demand, awaited: Option<(&T, Demand)>, out: &mut Vec<T>)
    where
        T: Clone,
    {
        if let Some((item, c)) = awaited
            && c.within_loan(d.vcu)
            && self.claim(item)
        {
            return self.admit_on_loan(d, item.clone(), c, out);
        }
        self.release(d, out);
    }

    /// Claims `item` if it waits claimable in a shard, without any lock: its entry stays in
    /// the lane as a tombstone, and the caller has the item. Returns whether it did.
    #[inline]
    fn claim(&self, item: &T) -> bool {
        let claimed = item.claim_word().is_some_and(|w| {
            w.compare_exchange(QUEUED, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if claimed {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        claimed
    }

    /// Moves `item`, queued claimable in a shard, to the central part of the task lane,
    /// asking for `d`, as a task nobody will claim (see `Header::claimable`): it takes the
    /// item as a lender would (its shard entry stays as a tombstone) and queues it anew,
    /// behind the entries queued so far. What that admits goes to `out`. Hands the item back
    /// if it was aborted meanwhile, for the caller to fail; does nothing to an item not
    /// queued in a shard (claimed, admitted, or waiting in the central part already).
    #[must_use]
    pub(crate) fn unshard(&self, item: &T, d: Demand, out: &mut Vec<T>) -> Option<T>
    where
        T: Clone,
    {
        if !self.claim(item) {
            return None;
        }
        self.queue(item.clone(), d, false, out)
    }

    /// `item`, asking for `c` (within the loan: [`Demand::within_loan`]), runs on the VCUs
    /// `d` that a task awaiting it lends: it is admitted (into `out`) with no change to what
    /// is reserved, and the rest of `d` is released.
    pub(crate) fn admit_on_loan(&self, d: Demand, item: T, c: Demand, out: &mut Vec<T>) {
        debug_assert!(c.within_loan(d.vcu));
        out.push(item);
        let rest = Demand {
            vcu: d.vcu - c.vcu,
            mem: 0,
        };
        self.release(rest, out);
    }

    /// The shards that hold entries (all of them with `all`), as a bit mask.
    #[inline]
    fn occupied(&self, all: bool) -> u32 {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| all || s.len.load(Ordering::Acquire) > 0)
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// Locks the shards in `mask`, in order.
    fn lock_shards(&self, mask: u32) -> SmallVec<[Option<Locked<'_, T>>; MAX_SHARDS]> {
        self.shards
            .iter()
            .enumerate()
            .map(|(i, s)| (mask & 1 << i != 0).then(|| s.lane.lock()))
            .collect()
    }

    /// Stores the lengths of the shards `locked` (and takes what left them off `sharded`),
    /// lets a burst of waiting tasks give back its queue's memory, and unlocks them: taken
    /// by value, so that no caller still holds a shard when it goes on to unlock the
    /// central lock (whose drains for others lock shards again).
    fn unlock_shards(&self, mut locked: SmallVec<[Option<Locked<'_, T>>; MAX_SHARDS]>) {
        let mut left = 0;
        for (s, lane) in self.shards.iter().zip(locked.iter_mut()) {
            if let Some(lane) = lane {
                shrink(lane);
                left += s.len.load(Ordering::Relaxed) - lane.len();
                s.len.store(lane.len(), Ordering::Release);
            }
        }
        if left > 0 {
            self.sharded.fetch_sub(left, Ordering::AcqRel);
        }
    }

    /// Admits what fits: resumes first-fit, then tasks in ticket order up to the first that
    /// does not fit. `c`: the central lock's contents (holding it serializes drains).
    ///
    /// The shards looked at are those that hold entries when the drain starts; an item
    /// queued in another shard meanwhile is left to its queuer's own drain, or to the next
    /// release's.
    #[inline(always)]
    fn drain(&self, c: &mut Central<T>, out: &mut Vec<T>) {
        self.absorb(c);
        self.drain_absorbed(c, out);
    }

    /// [`drain`](Self::drain) by a holder of the central lock that moved the entries
    /// queued without it to the lane already.
    #[inline(always)]
    fn drain_absorbed(&self, c: &mut Central<T>, out: &mut Vec<T>) {
        // Mostly there is nothing to admit: no resume waits, the shards are empty, and the
        // first central entry does not fit (a device kept full by tasks spawned faster than
        // it runs them), or there is none. Checked inline: every queue and release drains.
        if c.resumes.is_empty()
            && c.yields.is_empty()
            && self.sharded.load(Ordering::Acquire) == 0
            && c.tasks.front().is_none_or(|e| !self.could_fit(e.d))
        {
            shrink(&mut c.tasks);
            return;
        }
        self.drain_some(c, out);
    }

    /// [`drain`](Self::drain) when something may be admitted.
    #[inline(never)]
    fn drain_some(&self, c: &mut Central<T>, out: &mut Vec<T>) {
        let mut hold = false;
        if c.passed >= OUTSIDE_TURNS {
            // The waiting tasks' turn (see `resume_outside`).
            let before = out.len();
            let blocked = self.drain_tasks(c, out);
            if out.len() > before {
                c.passed = 0;
            } else if let Some(d) = blocked {
                // The first task does not fit. If only for VCUs, the resumes from outside
                // wait until it does (the tasks that hold the VCUs give them back as they
                // end or wait); taking back each VCU a task lends, they kept a task that
                // asks for more than one task's share out for ever.
                hold = self.mem_fits(d);
            }
        }
        self.drain_resumes(c, hold, out);
        self.drain_tasks(c, out);
    }

    /// [`drain_some`](Self::drain_some)'s tasks (and the resumes that take their turn among
    /// them). Returns what the task it stopped at asks for, if it stopped at one that does
    /// not fit.
    #[inline]
    fn drain_tasks(&self, c: &mut Central<T>, out: &mut Vec<T>) -> Option<Demand> {
        if self.sharded.load(Ordering::Acquire) != 0 {
            return self.drain_all(c, self.occupied(false), out);
        }
        if !c.yields.is_empty() {
            // Central entries and the resumes that take their turn among them.
            return self.drain_all(c, 0, out);
        }
        // Central entries alone (not claimable).
        let mut blocked = None;
        while let Some(e) = c.tasks.front() {
            if e.is_dead() {
                drop_dead_fronts(&mut c.tasks);
                continue;
            }
            if !self.try_reserve(e.d) {
                blocked = Some(e.d);
                break;
            }
            if let Some(e) = c.tasks.pop_front() {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                push_out(out, e.item);
            }
        }
        shrink(&mut c.tasks);
        blocked
    }

    /// [`drain`](Self::drain)'s tasks when the shards in `mask` hold entries, or resumes
    /// wait to take their turn among the tasks (`yields`): in ticket order across the
    /// shards, the central part and those resumes. A task at the front that does not fit
    /// in what is free holds back the tasks behind it, not those resumes (see
    /// [`resume_after_tasks`](Self::resume_after_tasks)). Returns what the task it stopped
    /// at asks for, if it stopped at one that does not fit.
    #[inline(never)]
    fn drain_all(&self, c: &mut Central<T>, mask: u32, out: &mut Vec<T>) -> Option<Demand> {
        let mut locked = self.lock_shards(mask);
        let mut blocked = None;
        loop {
            drop_dead_fronts(&mut c.yields);
            let lane = first_lane(&mut locked, &mut c.tasks);
            if let Some(y) = c.yields.front()
                && lane
                    .as_ref()
                    .is_none_or(|l| l.front().is_none_or(|e| y.ticket < e.ticket))
            {
                // A resume queued before every task that waits: next, if it fits.
                if !self.admit_yield(&mut c.yields, out) {
                    break;
                }
                continue;
            }
            let Some(lane) = lane else {
                break;
            };
            let d = lane.front().map(|e| e.d);
            match self.admit_entry(lane, 0, out) {
                Step::NoFit => {
                    blocked = d;
                    while self.admit_yield(&mut c.yields, out) {}
                    break;
                }
                Step::Admitted | Step::Dropped => {}
                // The reservation it gave back may fit a resume.
                Step::Lost => {
                    self.drain_resumes(c, false, out);
                }
            }
        }
        shrink(&mut c.tasks);
        shrink(&mut c.yields);
        self.unlock_shards(locked);
        blocked
    }

    /// Admits the first resume of `yields` (the lane of those that take their turn among
    /// the tasks) into `out` if it fits, past the tombstones before it. Returns whether it
    /// did.
    fn admit_yield(&self, yields: &mut VecDeque<Entry<T>>, out: &mut Vec<T>) -> bool {
        while !yields.is_empty() {
            match self.admit_entry(yields, 0, out) {
                Step::Admitted => return true,
                Step::Dropped => {}
                Step::NoFit | Step::Lost => return false,
            }
        }
        false
    }

    /// Admits the entry at `i` of `lane` (into `out`) if it fits: drops it if it is a
    /// tombstone, or if a lender claimed it meanwhile (its reservation goes back).
    fn admit_entry(&self, lane: &mut VecDeque<Entry<T>>, i: usize, out: &mut Vec<T>) -> Step {
        if is_tombstone(&lane[i]) {
            drop_tombstone(lane.remove(i));
            return Step::Dropped;
        }
        let d = lane[i].d;
        if !self.try_reserve(d) {
            return Step::NoFit;
        }
        let Some(e) = lane.remove(i) else {
            return Step::NoFit;
        };
        if take_queued(&e) {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            out.push(e.item);
            Step::Admitted
        } else {
            self.used.fetch_sub(d.packed(), Ordering::AcqRel);
            Step::Lost
        }
    }

    /// Admits the resumes of the resume lane that fit, first-fit, counting those of tasks
    /// that waited outside the runtime admitted while tasks wait (see
    /// [`resume_outside`](Self::resume_outside)); with `hold`, it stops at the first of
    /// those instead (the waiting tasks' turn).
    #[inline]
    fn drain_resumes(&self, c: &mut Central<T>, hold: bool, out: &mut Vec<T>) {
        if c.resumes.is_empty() {
            return;
        }
        let mut outside = 0;
        let n = self.admit_fitting_counting(&mut c.resumes, c.resume_min, hold, &mut outside, out);
        if outside > 0
            && (!c.tasks.is_empty()
                || !c.yields.is_empty()
                || self.sharded.load(Ordering::Acquire) != 0)
        {
            c.passed = c.passed.saturating_add(outside);
        }
        self.resumes_left(c, n);
    }

    /// `n` items left the resume lane (`c`): they are taken off its count, and its bound
    /// is reset once it is empty.
    #[inline]
    fn resumes_left(&self, c: &mut Central<T>, n: usize) {
        if c.resumes.is_empty() {
            c.resume_min = NO_MIN;
        }
        self.resuming.fetch_sub(n, Ordering::AcqRel);
    }

    /// Admits every item of `lane` that fits, in order, keeping the others in their order
    /// (in place). `min`: no item asks for less (a bound): the pass stops as soon as not even
    /// that fits any more, so a release with many resumes waiting for the same share (a
    /// fork-join tree's parents) admits the first and stops, instead of trying them all.
    /// Returns how many it admitted.
    fn admit_fitting(&self, lane: &mut VecDeque<Entry<T>>, min: Demand, out: &mut Vec<T>) -> usize {
        self.admit_fitting_counting(lane, min, false, &mut 0, out)
    }

    /// [`admit_fitting`](Self::admit_fitting), adding to `outside` how many of those it
    /// admitted are resumes of tasks that waited outside the runtime ([`OUTSIDE_RESUME`]),
    /// and stopping at the first of those if `hold`.
    fn admit_fitting_counting(
        &self,
        lane: &mut VecDeque<Entry<T>>,
        min: Demand,
        hold: bool,
        outside: &mut u32,
        out: &mut Vec<T>,
    ) -> usize {
        let mut admitted = 0;
        let mut i = 0;
        while i < lane.len() && self.could_fit(min) {
            let from_outside = lane[i].ticket & OUTSIDE_RESUME != 0;
            if hold && from_outside && !lane[i].is_dead() {
                break;
            }
            match self.admit_entry(lane, i, out) {
                Step::Admitted => {
                    admitted += 1;
                    *outside += u32::from(from_outside);
                }
                Step::Dropped | Step::Lost => {}
                Step::NoFit => i += 1,
            }
        }
        admitted
    }

    /// Whether the memory `d` asks for fits in what is free now (whatever its VCUs).
    fn mem_fits(&self, d: Demand) -> bool {
        self.could_fit(Demand { vcu: 0, ..d })
    }

    /// Whether `d` fits in what is free now.
    fn could_fit(&self, d: Demand) -> bool {
        self.with_added(self.used.load(Ordering::Acquire), d)
            .is_some()
    }

    /// At a stall (nothing running can release anything): admits every waiting item that
    /// fits, out of order. Returns how many it admitted.
    pub(crate) fn backfill(&self, out: &mut Vec<T>) -> usize {
        let (mut c, seen) = self.lock_central();
        self.absorb(&mut c);
        let before = out.len();
        self.drain_resumes(&mut c, false, out);
        self.admit_fitting(&mut c.yields, Demand::default(), out);
        let mut locked = self.lock_shards(self.occupied(false));
        for lane in locked.iter_mut().flatten() {
            self.admit_fitting(lane, Demand::default(), out);
        }
        self.unlock_shards(locked);
        self.admit_fitting(&mut c.tasks, Demand::default(), out);
        // Counted after the unlock: the drains it serves for releasers that found the lock
        // taken admit items too.
        self.unlock(c, seen, out);
        out.len() - before
    }

    /// Removes and returns the first waiting item (resumes first), for the stall resolver.
    /// (`out`: what drains requested meanwhile admit.)
    pub(crate) fn take_first_waiting(&self, out: &mut Vec<T>) -> Option<(T, Demand, Lane)> {
        let (mut c, seen) = self.lock_central();
        self.absorb(&mut c);
        drop_dead_fronts(&mut c.resumes);
        drop_dead_fronts(&mut c.yields);
        let first = match c.resumes.pop_front() {
            Some(e) => {
                self.resumes_left(&mut c, 1);
                Some(e)
            }
            None => c.yields.pop_front(),
        };
        if let Some(e) = first {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.unlock(c, seen, out);
            return Some((e.item, e.d, Lane::Resume));
        }
        let mut locked = self.lock_shards(self.occupied(false));
        let mut first = None;
        while let Some(e) = first_lane(&mut locked, &mut c.tasks).and_then(VecDeque::pop_front) {
            if take_queued(&e) {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                first = Some((e.item, e.d, Lane::Task));
                break;
            }
        }
        self.unlock_shards(locked);
        self.unlock(c, seen, out);
        first
    }

    /// Removes and returns every waiting item, resumes first, then tasks in ticket order
    /// (at shutdown, or when the device fails). (`out`: what drains requested meanwhile
    /// admit: items queued after this took the lanes.)
    pub(crate) fn take_waiting(&self, out: &mut Vec<T>) -> Vec<(T, Demand, Lane)> {
        let (mut c, seen) = self.lock_central();
        self.absorb(&mut c);
        let mut resumes = std::mem::take(&mut c.resumes);
        resumes.retain(|e| !e.is_dead());
        // (Those that take their turn among the tasks are not counted in `resuming`.)
        let n_resumes = resumes.len();
        resumes.extend(
            std::mem::take(&mut c.yields)
                .into_iter()
                .filter(|e| !e.is_dead()),
        );
        c.resume_min = NO_MIN;
        let mut locked = self.lock_shards(self.occupied(true));
        let mut tasks: Vec<Entry<T>> = locked
            .iter_mut()
            .flatten()
            .flat_map(|lane| std::mem::take(&mut **lane))
            .chain(std::mem::take(&mut c.tasks))
            .filter(|e| !e.is_dead() && take_queued(e))
            .collect();
        self.unlock_shards(locked);
        tasks.sort_by_key(|e| e.ticket);
        let all: Vec<_> = resumes
            .into_iter()
            .map(|e| (e.item, e.d, Lane::Resume))
            .chain(tasks.into_iter().map(|e| (e.item, e.d, Lane::Task)))
            .collect();
        // (Lenders claim task lane items without the lock, each taking its own off the count.)
        self.resuming.fetch_sub(n_resumes, Ordering::AcqRel);
        self.waiting.fetch_sub(all.len(), Ordering::AcqRel);
        self.unlock(c, seen, out);
        all
    }

    /// Takes `item`, aborted, out of the lane it waits in, if it waits in one here; then
    /// admits what its leaving lets through (into `out`). The caller set the item's abort
    /// flag ([`Claim::aborted`]) and then called [`mark_aborted`], which returned
    /// `incoming`. Returns the item and its lane, for the caller to fail.
    ///
    /// Nothing aborted waits once every device's admission was asked (the one the item is
    /// mapped to, when `incoming`):
    /// - An item queued under a lane's lock is queued before this call takes that lock (the
    ///   central one, then every shard's), and this call finds it there (a shard's entry
    ///   is claimed first, as a lender does: one a lender claimed is the lender's, and
    ///   runs). Or it is queued after, and its queuer, taking the same lock, sees the abort
    ///   flag set before this call took it: it hands the item back instead.
    /// - An item queued without the lock was marked `INCOMING` before it was pushed. Marked
    ///   before [`mark_aborted`]'s mark, it makes `incoming` true, and this call moves the
    ///   queues' entries to the lanes (holding the central lock, so that no other holder
    ///   does) until the item's mark is gone, which its push ends shortly; then it finds
    ///   it in its lane. Marked after, its queuer sees `ABORTED` and hands it back.
    ///
    /// It looks through no lane: in the resume lane and the central part of the task lane it
    /// finds the item by its ticket ([`find_entry`]; the entry stays as a tombstone unless
    /// it is at an end: [`take_entry`]), and in a shard it claims it by its claim word, in
    /// whichever shard it is.
    pub(crate) fn take_aborted(
        &self,
        item: &T,
        incoming: bool,
        out: &mut Vec<T>,
    ) -> Option<(T, Lane)>
    where
        T: Clone,
    {
        let (mut c, seen) = self.lock_central();
        self.absorb(&mut c);
        if incoming && let Some(w) = item.claim_word() {
            while w.load(Ordering::Acquire) & INCOMING != 0 {
                yield_now();
                self.absorb(&mut c);
            }
        }
        let mut found = None;
        // (Queued in a shard: not looked for in the central part.)
        let in_shard = item.claim_word().is_some_and(queued_in_shard);
        let lanes = &mut *c;
        if let Some(i) = find_entry(&lanes.resumes, item) {
            let t = take_entry(&mut lanes.resumes, i, &mut lanes.dead[1]);
            found = Some((t, Lane::Resume));
            self.resumes_left(&mut c, 1);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        } else if let Some(i) = find_entry(&lanes.yields, item) {
            let t = take_entry(&mut lanes.yields, i, &mut lanes.dead[2]);
            found = Some((t, Lane::Resume));
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        } else if let Some(i) = (!in_shard)
            .then(|| find_entry(&lanes.tasks, item))
            .flatten()
        {
            found = Some((
                take_entry(&mut lanes.tasks, i, &mut lanes.dead[0]),
                Lane::Task,
            ));
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        } else {
            // In a shard: claimed as a lender claims it (its entry stays, a tombstone, for
            // the drains; the claim takes it off the count), once every shard is locked, so
            // that a queuer that placed it there before the abort flag was set is done.
            let locked = self.lock_shards(self.occupied(true));
            if self.claim(item) {
                found = Some((item.clone(), Lane::Task));
            }
            self.unlock_shards(locked);
        }
        if found.is_some() {
            // It may have held back the items behind it.
            self.drain(&mut c, out);
        }
        self.unlock(c, seen, out);
        found
    }
}

/// The index of `item`'s entry in `lane`, the central part of a task lane or the resume
/// lane (each sorted by ticket), if it is there: found by the low bits of its ticket that
/// the item kept ([`Claim::ticket_hint`]), a binary search for each ticket between the
/// first and the last that has them, from the last (one, while the lane spans fewer than
/// 65,536 tickets), or a look at each entry when there are fewer entries than such
/// tickets. Aborting every task of a long lane looked through the lane for each, which
/// took seconds for a few hundred thousand.
fn find_entry<T: Claim>(lane: &VecDeque<Entry<T>>, item: &T) -> Option<usize> {
    let here = |e: &Entry<T>| !e.is_dead() && e.item.is(item);
    let Some(hint) = item.ticket_hint() else {
        return lane.iter().position(here);
    };
    let (first, last) = (lane.front()?.ticket, lane.back()?.ticket);
    if (last - first) >> u16::BITS >= lane.len() as u64 {
        // Fewer entries than tickets with those bits between the first and the last (a
        // short lane behind an entry waiting since long ago): a look at each is cheaper.
        return lane.iter().position(here);
    }
    let mut found = None;
    // The last ticket up to `last` whose low bits are `hint`, then every 65,536th before
    // it down to `first`: the entry looked for is most likely a recent one.
    let mut t = last.checked_sub(u64::from((last as u16).wrapping_sub(hint)));
    while let Some(at) = t.filter(|&at| at >= first) {
        let i = lane.partition_point(|e| e.ticket < at);
        if lane.get(i).is_some_and(|e| e.ticket == at && here(e)) {
            found = Some(i);
            break;
        }
        t = at.checked_sub(1 << u16::BITS);
    }
    debug_assert!(
        lane.len() > 32 || found == lane.iter().position(here),
        "an entry not found by its ticket"
    );
    found
}

/// Takes the item of entry `i` of `lane` (the central part of a task lane, or the resume
/// lane) out for an aborter: at either end, the entry goes; in between, it stays as a
/// tombstone (its demand made zero: [`Entry::is_dead`]; it holds a reference to the item
/// until a drain, or a look at the front that finds it there, drops it), since removing it
/// there moves half the lane. `dead` counts the tombstones left since the lane was last
/// compacted: once they outnumber its length's other half, the lane is compacted. Behind
/// a waiting entry that does not move (a task waiting for more than is free), they would
/// pile up with their tasks' memory, and the first drain to move would walk them all. (A
/// compaction's pass over the lane is paid for by the aborts since the last one: more
/// than half its length.)
fn take_entry<T: Claim + Clone>(lane: &mut VecDeque<Entry<T>>, i: usize, dead: &mut usize) -> T {
    if i + 1 == lane.len() {
        return lane.pop_back().expect("entry i is the last").item;
    }
    if i == 0 {
        return lane.pop_front().expect("entry i is the first").item;
    }
    lane[i].d = Demand::default();
    let item = lane[i].item.clone();
    *dead += 1;
    if *dead * 2 > lane.len() {
        compact(lane);
        *dead = 0;
    }
    item
}

/// Drops the tombstones of aborted entries from `lane` (see [`take_entry`]), each as
/// drains drop them ([`drop_tombstone`]).
#[cold]
#[inline(never)]
fn compact<T: Claim>(lane: &mut VecDeque<Entry<T>>) {
    let mut kept = 0;
    for i in 0..lane.len() {
        if !lane[i].is_dead() {
            lane.swap(kept, i);
            kept += 1;
        }
    }
    for e in lane.drain(kept..) {
        drop_tombstone(Some(e));
    }
}

/// Drops the tombstones of aborted entries at the front of a lane, if any.
#[inline]
fn drop_dead_fronts<T: Claim>(lane: &mut VecDeque<Entry<T>>) {
    if lane.front().is_some_and(Entry::is_dead) {
        drop_dead_run(lane);
    }
}

#[cold]
#[inline(never)]
fn drop_dead_run<T: Claim>(lane: &mut VecDeque<Entry<T>>) {
    while lane.front().is_some_and(Entry::is_dead) {
        drop_tombstone(lane.pop_front());
    }
}

/// The lane whose front has the lowest ticket among the shards `locked` and the central
/// part, dropping the tombstones at the fronts on the way.
fn first_lane<'a, T: Claim>(
    locked: &'a mut [Option<Locked<'_, T>>],
    central: &'a mut VecDeque<Entry<T>>,
) -> Option<&'a mut VecDeque<Entry<T>>> {
    let lanes = locked.iter_mut().flatten().map(|g| &mut **g);
    let mut best: Option<(&'a mut VecDeque<Entry<T>>, u64)> = None;
    for lane in lanes.chain(std::iter::once(central)) {
        while lane.front().is_some_and(is_tombstone) {
            drop_tombstone(lane.pop_front());
        }
        if let Some(t) = lane.front().map(|e| e.ticket)
            && best.as_ref().is_none_or(|(_, b)| t < *b)
        {
            best = Some((lane, t));
        }
    }
    best.map(|(lane, _)| lane)
}

/// Lets a lane that held a burst of waiting tasks give back its memory once it is empty.
fn shrink<T>(lane: &mut VecDeque<Entry<T>>) {
    if lane.is_empty() && lane.capacity() > 4096 {
        lane.shrink_to(64);
    }
}

/// Pushes `item` to `out`, inline: admitting a task while others wait is a push on every
/// release, and `Vec::push` stays a call there (about 25 instructions).
#[inline(always)]
fn push_out<T>(out: &mut Vec<T>, item: T) {
    if out.len() == out.capacity() {
        out.reserve(1);
    }
    let len = out.len();
    // SAFETY: `len < capacity` (reserved above if needed), so the slot after the last item
    // is allocated and holds no item: it is written, then counted.
    unsafe {
        out.as_mut_ptr().add(len).write(item);
        out.set_len(len + 1);
    }
}

/// The central lock, held.
#[cfg(not(parla_loom))]
type CentralGuard<'a, T> = parking_lot::MutexGuard<'a, Central<T>>;
#[cfg(parla_loom)]
type CentralGuard<'a, T> = loom::sync::MutexGuard<'a, Central<T>>;

/// A locked task lane shard.
#[cfg(not(parla_loom))]
type Locked<'a, T> = parking_lot::MutexGuard<'a, VecDeque<Entry<T>>>;
#[cfg(parla_loom)]
type Locked<'a, T> = loom::sync::MutexGuard<'a, VecDeque<Entry<T>>>;

/// An item with a claim word, for the unit tests and the loom models.
#[cfg(test)]
mod claim_item {
    #[cfg(parla_loom)]
    use loom::sync::Arc;
    #[cfg(not(parla_loom))]
    use std::sync::Arc;

    use super::{Claim, OUT};
    use crate::loom::sync::{AtomicBool, AtomicU8, AtomicU16, Ordering};

    pub(super) struct Item {
        pub(super) id: u8,
        pub(super) word: AtomicU8,
        /// The abort flag of a task.
        pub(super) aborted: AtomicBool,
        /// The low bits of its lane entry's ticket, as a task keeps them.
        ticket: AtomicU16,
    }

    impl Claim for Arc<Item> {
        fn claim_word(&self) -> Option<&AtomicU8> {
            Some(&self.word)
        }
        fn is(&self, other: &Self) -> bool {
            #[cfg(not(parla_loom))]
            COMPARED.with(|c| c.set(c.get() + 1));
            Arc::ptr_eq(self, other)
        }
        fn aborted(&self) -> bool {
            self.aborted.load(Ordering::Acquire)
        }
        fn note_ticket(&self, ticket: u64) {
            self.ticket.store(ticket as u16, Ordering::Relaxed);
        }
        fn ticket_hint(&self) -> Option<u16> {
            Some(self.ticket.load(Ordering::Relaxed))
        }
    }

    #[cfg(not(parla_loom))]
    thread_local! {
        /// How many times this thread compared items ([`Claim::is`]): what looking for
        /// items in the lanes costs.
        pub(super) static COMPARED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    pub(super) fn item(id: u8) -> Arc<Item> {
        Arc::new(Item {
            id,
            word: AtomicU8::new(OUT),
            aborted: AtomicBool::new(false),
            ticket: AtomicU16::new(0),
        })
    }
}

#[cfg(all(test, not(parla_loom)))]
mod test {
    use super::claim_item::{Item, item};
    use super::*;
    use std::sync::Arc;

    fn d(vcu: u32, mem: u64) -> Demand {
        Demand { vcu, mem }
    }

    #[test]
    fn vcus_limit_concurrency() {
        let a = Admission::new(100, 2);
        let mut out = Vec::new();
        assert!(a.admit(1, d(VCU_ONE / 2, 0), &mut out));
        assert!(a.admit(2, d(VCU_ONE / 2, 0), &mut out));
        assert!(!a.admit(3, d(VCU_ONE / 2, 0), &mut out));
        assert_eq!(out, vec![1, 2]);
        assert_eq!(a.usage().waiting, 1);
        a.release(d(VCU_ONE / 2, 0), &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        assert_eq!(a.usage().vcu, VCU_ONE);
    }

    /// A release that hands its reservation to the first waiting item (which asks for
    /// exactly as much) drains on: an item behind it that fitted already, on what an earlier
    /// release freed, is admitted too rather than left for the next release.
    #[test]
    fn a_release_handed_over_drains_on() {
        let (half, quarter) = (d(VCU_ONE / 2, 0), d(VCU_ONE / 4, 0));
        let a = Admission::new(0, 2);
        let mut out = Vec::new();
        assert!(a.admit(1, half, &mut out));
        assert!(a.admit(2, quarter, &mut out));
        assert!(a.admit(3, quarter, &mut out));
        assert!(!a.admit(4, half, &mut out));
        assert!(!a.admit(5, quarter, &mut out), "queues behind 4");
        a.release(quarter, &mut out);
        assert_eq!(out, vec![1, 2, 3], "4 does not fit in three quarters");
        a.release(half, &mut out);
        assert_eq!(out, vec![1, 2, 3, 4, 5]);
        let u = a.usage();
        assert_eq!((u.vcu, u.mem, u.waiting), (VCU_ONE, 0, 0));
        // Nothing waits: a release returns what it held.
        a.release(quarter, &mut out);
        assert_eq!(a.usage().vcu, VCU_ONE / 4 * 3);
    }

    /// Only tasks waiting in the central part of the task lane count for
    /// `central_tasks_waiting` (the tasks spawned outside any task's poll): not the claimable
    /// ones in the shards, nor resumes.
    #[test]
    fn central_tasks_waiting_sees_the_central_part_alone() {
        let half = d(VCU_ONE / 2, 0);
        let a: Admission<Arc<Item>> = Admission::new(0, 2);
        let mut out = Vec::new();
        assert!(a.admit(item(0), d(VCU_ONE, 0), &mut out));
        assert!(!a.central_tasks_waiting(&mut Vec::new()), "nothing waits");
        assert!(!a.admit_in(1, item(1), half, &mut out));
        assert!(
            !a.central_tasks_waiting(&mut Vec::new()),
            "a claimable task waits in a shard"
        );
        assert!(matches!(
            a.resume(item(2), VCU_ONE / 2, &mut out),
            Resumed::Waiting
        ));
        assert!(!a.central_tasks_waiting(&mut Vec::new()), "a resume waits");
        assert!(a.queue(item(3), half, false, &mut out).is_none());
        assert!(a.central_tasks_waiting(&mut Vec::new()));
        a.release(d(VCU_ONE, 0), &mut out);
        let ids: Vec<u8> = out.iter().map(|i| i.id).collect();
        assert_eq!(ids, [0, 2, 1], "the resume first, then the lane in order");
        assert!(
            a.central_tasks_waiting(&mut Vec::new()),
            "the central task still waits"
        );
        a.release(half, &mut out);
        assert_eq!(out.last().map(|i| i.id), Some(3));
        assert!(!a.central_tasks_waiting(&mut Vec::new()));
    }

    /// A release does not hand its reservation over past a waiting resume (resumes go
    /// first), nor to a first item that asks for something else.
    #[test]
    fn resumes_and_other_demands_are_not_handed_over_to() {
        let half = d(VCU_ONE / 2, 0);
        let a = Admission::new(100, 2);
        let mut out = Vec::new();
        assert!(a.admit(1, half, &mut out));
        assert!(a.admit(2, half, &mut out));
        assert!(!a.admit(3, half, &mut out));
        assert_eq!(a.resume(4, VCU_ONE / 2, &mut out), Resumed::Waiting);
        a.release(half, &mut out);
        assert_eq!(out, vec![1, 2, 4], "the resume first");
        assert!(!a.admit(5, d(VCU_ONE / 2, 10), &mut out));
        a.release(half, &mut out);
        assert_eq!(out, vec![1, 2, 4, 3]);
        a.release(half, &mut out);
        assert_eq!(out, vec![1, 2, 4, 3, 5]);
        let u = a.usage();
        assert_eq!((u.vcu, u.mem, u.waiting), (VCU_ONE, 10, 0));
    }

    /// A resume queued with `resume_after_tasks` lets the head of the central task lane go
    /// first when that fits, and is admitted after it; when the head does not fit in what
    /// is free, it is not held back for it. Other resumes still go first.
    #[test]
    fn a_yielding_resume_lets_the_central_head_go_first() {
        let (half, one) = (d(VCU_ONE / 2, 0), d(VCU_ONE, 0));
        let a = Admission::new(100, 2);
        let mut out = Vec::new();
        assert!(a.admit(1, one, &mut out));
        assert!(!a.admit(2, half, &mut out), "waits in the central part");
        assert_eq!(
            a.resume_after_tasks(3, VCU_ONE / 2, &mut out),
            Resumed::Waiting
        );
        assert_eq!(a.resume(4, VCU_ONE / 2, &mut out), Resumed::Waiting);
        a.release(one, &mut out);
        assert_eq!(out, vec![1, 4, 2], "the plain resume, then the task");
        a.release(half, &mut out);
        assert_eq!(out, vec![1, 4, 2, 3], "then the yielding resume");

        // The head needs more than is free: the yielding resume takes what is.
        let b = Admission::new(100, 2);
        let mut out = Vec::new();
        assert!(b.admit(1, half, &mut out));
        assert!(b.admit(2, half, &mut out));
        assert!(!b.admit(3, one, &mut out));
        assert_eq!(
            b.resume_after_tasks(4, VCU_ONE / 2, &mut out),
            Resumed::Waiting
        );
        b.release(half, &mut out);
        assert_eq!(out, vec![1, 2, 4]);
        let u = b.usage();
        assert_eq!((u.vcu, u.waiting), (VCU_ONE, 1));
    }

    /// Resumes of tasks that waited outside the runtime go ahead of a waiting task, but once
    /// `OUTSIDE_TURNS` of them passed it, a drain admits it first. Plain resumes (tasks
    /// taking back what they lent while they awaited tasks) always go first. Two resumes
    /// take turns on the device, each waiting again as soon as it is admitted, as tasks
    /// yielding in a loop do.
    #[test]
    fn resumes_from_outside_let_a_waiting_task_in_every_so_often() {
        let one = d(VCU_ONE, 0);
        for outside in [true, false] {
            let a = Admission::new(0, 2);
            let mut out = Vec::new();
            assert!(a.admit(0, one, &mut out));
            assert!(!a.admit(1, one, &mut out));
            let resume = |i: u8, out: &mut Vec<u8>| {
                let r = if outside {
                    a.resume_outside(i, VCU_ONE, out)
                } else {
                    a.resume(i, VCU_ONE, out)
                };
                assert_eq!(r, Resumed::Waiting);
            };
            resume(2, &mut out);
            resume(3, &mut out);
            let mut releases = 0;
            while !out.contains(&1) && releases < 100 {
                a.release(one, &mut out);
                releases += 1;
                let admitted = *out.last().expect("a release admits one");
                if admitted != 1 {
                    resume(admitted, &mut out);
                }
            }
            if outside {
                assert_eq!(releases, OUTSIDE_TURNS as usize + 1, "the task's turn");
            } else {
                assert!(!out.contains(&1), "plain resumes go first");
            }
        }
    }

    /// A waiting task that asks for more than each resume from outside frees (the whole
    /// device, while two tasks take turns on halves of it, each lending its half and taking
    /// it back as tasks yielding in a loop do) gets in too: once its turn comes and it does
    /// not fit, the resumes from outside wait until it does.
    #[test]
    fn resumes_from_outside_let_a_larger_waiting_task_in() {
        let (half, one) = (d(VCU_ONE / 2, 0), d(VCU_ONE, 0));
        let a = Admission::new(0, 2);
        let mut running = Vec::new();
        assert!(a.admit(1, half, &mut running));
        assert!(a.admit(2, half, &mut running));
        assert!(!a.admit(3, one, &mut running));
        let mut steps = 0;
        let mut admitted = Vec::new();
        while !admitted.contains(&3) && steps < 100 {
            steps += 1;
            // The first running one lends its half and, woken, takes it back.
            let r = running.remove(0);
            a.release(half, &mut admitted);
            assert_eq!(
                a.resume_outside(r, VCU_ONE / 2, &mut admitted),
                Resumed::Waiting,
                "a task waits: no resume is granted at once"
            );
            running.extend(admitted.iter().filter(|&&i| i != 3));
            admitted.retain(|&i| i == 3);
        }
        assert!(admitted.contains(&3), "the whole-device task got in");
        assert!(steps <= OUTSIDE_TURNS as usize + 2, "{steps} steps");
        assert!(running.is_empty(), "it runs alone: {running:?}");
        assert_eq!(a.usage().vcu, VCU_ONE);
    }

    /// ... but not when the waiting task lacks memory that one of those resumes holds (a
    /// resume gives back only VCUs): they go on, and nothing waits for ever.
    #[test]
    fn resumes_from_outside_holding_memory_a_waiting_task_needs_go_on() {
        let half = VCU_ONE / 2;
        let a = Admission::new(100, 2);
        let mut running = Vec::new();
        assert!(a.admit(1, d(half, 60), &mut running));
        assert!(a.admit(2, d(half, 0), &mut running));
        assert!(!a.admit(3, d(VCU_ONE, 60), &mut running));
        let mut admitted = Vec::new();
        for step in 0..100 {
            assert!(!running.is_empty(), "step {step}: nothing runs");
            let r = running.remove(0);
            a.release(d(half, 0), &mut admitted);
            assert_eq!(a.resume_outside(r, half, &mut admitted), Resumed::Waiting);
            running.append(&mut admitted);
        }
        assert!(!running.contains(&3));
    }

    /// A resume queued with `resume_after_tasks` takes its turn among the tasks by ticket:
    /// the tasks queued before it go first, and those queued after it wait for it, even
    /// when they would fit and it does not; such resumes keep their order among
    /// themselves. So tasks woken from outside in a loop do not keep a task that never
    /// started waiting for ever, nor does a stream of new tasks keep them waiting.
    #[test]
    fn a_yielding_resume_keeps_its_turn_among_the_tasks() {
        let (half, one) = (d(VCU_ONE / 2, 0), d(VCU_ONE, 0));
        let a = Admission::new(100, 2);
        let mut out = Vec::new();
        assert!(a.admit(1, one, &mut out));
        assert!(!a.admit(2, half, &mut out));
        let yielding = |a: &Admission<u8>, i, out: &mut Vec<u8>| {
            assert_eq!(a.resume_after_tasks(i, VCU_ONE / 2, out), Resumed::Waiting);
        };
        yielding(&a, 3, &mut out);
        assert!(!a.admit(4, half, &mut out));
        yielding(&a, 5, &mut out);
        a.release(one, &mut out);
        assert_eq!(out, vec![1, 2, 3], "the task queued first, then the resume");
        a.release(half, &mut out);
        assert_eq!(out, vec![1, 2, 3, 4]);
        a.release(half, &mut out);
        assert_eq!(out, vec![1, 2, 3, 4, 5]);
        assert_eq!(a.usage().waiting, 0);

        // A resume that does not fit holds back the tasks queued after it.
        let b = Admission::new(100, 2);
        let mut out = Vec::new();
        assert!(b.admit(1, half, &mut out));
        assert!(b.admit(2, half, &mut out));
        assert_eq!(b.resume_after_tasks(3, VCU_ONE, &mut out), Resumed::Waiting);
        assert!(!b.admit(4, half, &mut out));
        b.release(half, &mut out);
        assert_eq!(out, vec![1, 2], "4 would fit, and waits for 3");
        b.release(half, &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        b.release(one, &mut out);
        assert_eq!(out, vec![1, 2, 3, 4]);
    }

    #[test]
    fn fifo_and_memory() {
        let a = Admission::new(100, 2);
        let mut out = Vec::new();
        assert!(a.admit(1, d(0, 60), &mut out));
        assert!(!a.admit(2, d(0, 60), &mut out));
        // Fits, but queues behind 2.
        assert!(!a.admit(3, d(0, 10), &mut out));
        assert!(a.admit(4, d(0, 0), &mut out), "zero demand bypasses");
        a.release(d(0, 60), &mut out);
        assert_eq!(out, vec![1, 4, 2, 3]);
        assert_eq!(
            a.usage(),
            Usage {
                vcu: 0,
                mem: 70,
                waiting: 0
            }
        );
        assert!(a.can_ever_fit(d(VCU_ONE, 100)));
        assert!(!a.can_ever_fit(d(VCU_ONE + 1, 0)));
        assert!(!a.can_ever_fit(d(0, 101)));
    }

    #[test]
    fn thirds_fit_three_times() {
        let a = Admission::<u8>::new(0, 2);
        let third = (VCU_ONE as f64 / 3.0).floor() as u32;
        let mut out = Vec::new();
        for i in 0..3 {
            assert!(a.admit(i, d(third, 0), &mut out));
        }
        assert!(!a.admit(3, d(third, 0), &mut out));
    }

    #[test]
    fn resumes_pass_waiting_tasks() {
        let a = Admission::new(100, 2);
        let mut out = Vec::new();
        // A parent holds memory and lent its VCUs; a task needing memory waits.
        assert!(a.admit(1, d(VCU_ONE / 2, 60), &mut out));
        a.release(d(VCU_ONE / 2, 0), &mut out);
        assert!(!a.admit(2, d(VCU_ONE / 2, 60), &mut out));
        // The parent takes its VCUs back at once: the waiting task does not hold it back.
        assert_eq!(a.resume(1, VCU_ONE / 2, &mut out), Resumed::Granted(1));
        assert_eq!(a.usage().vcu, VCU_ONE / 2);
        out.clear();
        // A second resume that does not fit queues, ahead of the waiting tasks.
        assert!(!a.admit(3, d(VCU_ONE / 2, 0), &mut out), "behind task 2");
        assert_eq!(a.resume(9, VCU_ONE, &mut out), Resumed::Waiting);
        assert!(out.is_empty());
        a.release(d(VCU_ONE / 2, 0), &mut out);
        assert_eq!(out, vec![9], "the resume goes first");
        assert_eq!(a.usage().waiting, 2);
    }

    /// Resumes are admitted first-fit, in order: a release admits the first that fits
    /// (a smaller one behind a larger one that does not fit), and the others keep their
    /// order for the next release.
    #[test]
    fn resumes_are_admitted_first_fit_in_order() {
        let a = Admission::new(100, 2);
        let mut out = Vec::new();
        let quarter = VCU_ONE / 4;
        assert!(a.admit(0, d(VCU_ONE, 0), &mut out));
        out.clear();
        // Parked parents taking back their VCUs: all wait while task 0 holds everything.
        for (item, vcu) in [(1, VCU_ONE / 2), (2, quarter), (3, quarter), (4, quarter)] {
            assert_eq!(a.resume(item, vcu, &mut out), Resumed::Waiting);
        }
        assert!(out.is_empty());
        // A quarter frees: 1 does not fit, 2 does; 3 and 4 wait.
        a.release(d(quarter, 0), &mut out);
        assert_eq!(out, vec![2]);
        // Three quarters more: 1 (a half) then 3 (a quarter) fit; 4 waits, alone.
        a.release(d(3 * quarter, 0), &mut out);
        assert_eq!(out, vec![2, 1, 3]);
        assert_eq!(a.usage().waiting, 1);
        assert_eq!(a.usage().vcu, VCU_ONE);
        a.release(d(quarter, 0), &mut out);
        assert_eq!(out, vec![2, 1, 3, 4]);
        assert_eq!(a.usage().waiting, 0);
    }

    fn items(n: u8) -> Vec<Arc<Item>> {
        (0..n).map(item).collect()
    }

    fn claimable(mem: u64) -> Admission<Arc<Item>> {
        Admission::new(mem, 2)
    }

    fn ids(out: &[Arc<Item>]) -> Vec<u8> {
        out.iter().map(|i| i.id).collect()
    }

    #[test]
    fn a_lend_admits_the_awaited_task_first_within_the_loan() {
        let half = VCU_ONE / 2;
        let a = claimable(100);
        let it = items(7);
        let mut out = Vec::new();
        assert!(a.admit(it[1].clone(), d(half, 0), &mut out));
        assert!(a.admit(it[2].clone(), d(half, 0), &mut out));
        // Waiting: 3 (first), the awaited 4, 5 needing memory, 6 needing more VCUs.
        for (i, dm) in [
            (3, d(half, 0)),
            (4, d(half, 0)),
            (5, d(half, 10)),
            (6, d(VCU_ONE, 0)),
        ] {
            assert!(!a.admit(it[i].clone(), dm, &mut out));
        }
        out.clear();
        // Awaiting 1 (running, not in the lane): a plain release.
        a.lend(d(half, 0), Some((&it[1], d(half, 0))), &mut out);
        assert_eq!(ids(&out), vec![3]);
        // 2 lends its half while it awaits 4: 4 goes next, out of order, on 2's VCUs.
        a.lend(d(half, 0), Some((&it[4], d(half, 0))), &mut out);
        assert_eq!(ids(&out), vec![3, 4]);
        assert_eq!(a.usage().vcu, VCU_ONE);
        assert_eq!(a.usage().waiting, 2);
        // Awaiting 5 (memory) or 6 (more than the loan): the lane's order.
        a.lend(d(half, 0), Some((&it[5], d(half, 10))), &mut out);
        assert_eq!(ids(&out), vec![3, 4, 5], "4's tombstone skipped");
        a.lend(d(half, 0), Some((&it[6], d(VCU_ONE, 0))), &mut out);
        assert_eq!(ids(&out), vec![3, 4, 5]);
        assert_eq!(
            a.usage(),
            Usage {
                vcu: half,
                mem: 10,
                waiting: 1
            }
        );
        a.release(d(half, 10), &mut out);
        assert_eq!(ids(&out), vec![3, 4, 5, 6]);
        assert!(it.iter().all(|i| i.word.load(Ordering::SeqCst) != QUEUED));
    }

    #[test]
    fn claimed_items_are_never_taken_again() {
        let half = VCU_ONE / 2;
        let a = claimable(0);
        let it = items(4);
        let mut out = Vec::new();
        assert!(a.admit(it[0].clone(), d(VCU_ONE, 0), &mut out));
        for i in &it[1..] {
            assert!(!a.admit(i.clone(), d(half, 0), &mut out));
        }
        out.clear();
        a.lend(d(VCU_ONE, 0), Some((&it[2], d(half, 0))), &mut out);
        // 2 on the loan, 1 on the rest; 3 and 2's tombstone left.
        assert_eq!(ids(&out), vec![2, 1]);
        let w = a.take_waiting(&mut Vec::new());
        assert_eq!(w.iter().map(|(i, _, _)| i.id).collect::<Vec<_>>(), vec![3]);
        assert_eq!(a.usage().waiting, 0);
        assert_eq!(
            a.take_first_waiting(&mut Vec::new()).map(|(i, _, _)| i.id),
            None
        );
    }

    /// An item moved out of its shard (nobody will claim it) waits in the central part,
    /// behind what was queued there before the move; a lender awaiting it no longer claims
    /// it, and an item not queued in a shard, or aborted, is left to its caller.
    #[test]
    fn an_unsharded_item_waits_centrally_in_its_new_turn() {
        let half = VCU_ONE / 2;
        let a = claimable(0);
        let it = items(5);
        let mut out = Vec::new();
        assert!(a.admit(it[0].clone(), d(VCU_ONE, 0), &mut out));
        assert!(!a.admit_in(0, it[1].clone(), d(half, 0), &mut out));
        assert!(
            a.queue(it[2].clone(), d(half, 0), false, &mut out)
                .is_none()
        );
        assert!(!a.admit_in(1, it[3].clone(), d(half, 0), &mut out));
        out.clear();
        assert!(a.unshard(&it[1], d(half, 0), &mut out).is_none());
        assert_eq!(a.usage().waiting, 3, "moved, not lost");
        // Not queued in a shard (central already, or not queued): nothing happens.
        assert!(a.unshard(&it[2], d(half, 0), &mut out).is_none());
        assert!(a.unshard(&it[4], d(half, 0), &mut out).is_none());
        assert_eq!(a.usage().waiting, 3);
        // A lender awaiting 1 lends to the lane's order instead of claiming it: 3 was
        // queued before 1 moved.
        a.lend(d(VCU_ONE, 0), Some((&it[1], d(half, 0))), &mut out);
        assert_eq!(ids(&out), vec![2, 3]);
        a.release(d(half, 0), &mut out);
        assert_eq!(ids(&out), vec![2, 3, 1]);
        assert_eq!(a.usage().waiting, 0);
        // An aborted item is handed back, not queued.
        let b = claimable(0);
        let x = item(7);
        assert!(b.admit(item(8), d(VCU_ONE, 0), &mut out));
        assert!(!b.admit_in(0, x.clone(), d(half, 0), &mut out));
        x.aborted.store(true, Ordering::SeqCst);
        assert_eq!(b.unshard(&x, d(half, 0), &mut out).map(|i| i.id), Some(7));
        assert_eq!(b.usage().waiting, 0);
    }

    /// An item a poller that lends nothing awaits before it is queued goes to the central
    /// part when queued as claimable: a lender no longer claims it.
    #[test]
    fn an_item_awaited_from_outside_is_queued_centrally() {
        let half = VCU_ONE / 2;
        let a = claimable(0);
        let it = items(2);
        let mut out = Vec::new();
        assert!(a.admit(it[0].clone(), d(VCU_ONE, 0), &mut out));
        assert!(!mark_outside(&it[1].word), "not queued yet");
        assert!(!a.admit_in(0, it[1].clone(), d(half, 0), &mut out));
        assert!(a.central_tasks_waiting(&mut Vec::new()));
        assert!(!queued_in_shard(&it[1].word));
        out.clear();
        a.lend(d(VCU_ONE, 0), Some((&it[1], d(half, 0))), &mut out);
        assert_eq!(ids(&out), vec![1], "admitted from the central part");
        assert_eq!(a.usage().vcu, half);
    }

    /// Items queued from different threads (shards), and centrally, are admitted in the
    /// order they were queued, and a large one at the front holds back smaller ones queued
    /// after it everywhere.
    #[test]
    fn the_task_lane_is_fifo_across_shards() {
        let a = claimable(100);
        let it = items(8);
        let mut out = Vec::new();
        assert!(a.admit_in(0, it[0].clone(), d(VCU_ONE, 0), &mut out));
        for (shard, i, vcu) in [
            (1, 1, VCU_ONE / 4),
            (2, 2, VCU_ONE),
            (0, 3, VCU_ONE / 4),
            (1, 4, VCU_ONE / 4),
        ] {
            assert!(!a.admit_in(shard, it[i].clone(), d(vcu, 0), &mut out));
        }
        // Not claimable: the central part.
        assert!(
            a.queue(it[5].clone(), d(VCU_ONE / 2, 0), false, &mut out)
                .is_none()
        );
        out.clear();
        // 1 fits; 2 (the whole device) does not, and 3, 4 and 5 wait behind it.
        a.release(d(VCU_ONE, 0), &mut out);
        assert_eq!(ids(&out), vec![1]);
        a.release(d(VCU_ONE / 4, 0), &mut out);
        assert_eq!(ids(&out), vec![1, 2]);
        a.release(d(VCU_ONE, 0), &mut out);
        assert_eq!(ids(&out), vec![1, 2, 3, 4, 5]);
        assert_eq!(a.usage().waiting, 0);
        assert_eq!(a.usage().vcu, VCU_ONE);
        // Shards wrap: any thread number has one.
        assert!(!a.admit_in(7, it[6].clone(), d(VCU_ONE / 4, 0), &mut out));
        assert!(!a.admit_in(1, it[7].clone(), d(VCU_ONE / 4, 0), &mut out));
        let w = a.take_waiting(&mut Vec::new());
        assert_eq!(
            w.iter().map(|(i, _, _)| i.id).collect::<Vec<_>>(),
            vec![6, 7]
        );
        assert_eq!(a.usage().waiting, 0);
    }

    #[test]
    fn backfill_admits_around_a_blocked_head() {
        let a = Admission::new(100, 2);
        let mut out = Vec::new();
        assert!(a.admit(1, d(0, 60), &mut out));
        assert!(
            !a.admit(2, d(0, 60), &mut out),
            "head: needs memory held by 1"
        );
        assert!(
            !a.admit(3, d(VCU_ONE / 2, 0), &mut out),
            "fits, but behind 2"
        );
        out.clear();
        assert_eq!(a.backfill(&mut out), 1);
        assert_eq!(out, vec![3]);
        assert_eq!(a.usage().waiting, 1);
        let (t, dd, lane) = a.take_first_waiting(&mut Vec::new()).unwrap();
        assert_eq!((t, dd, lane), (2, d(0, 60), Lane::Task));
        assert!(a.take_first_waiting(&mut Vec::new()).is_none());
    }

    /// A resume that takes its turn among the tasks does so across the shards too: a task
    /// queued in a shard before it goes first, one queued in another after it waits for
    /// it. An aborted one leaves its lane as a resume.
    #[test]
    fn a_yielding_resume_keeps_its_turn_among_the_tasks_in_the_shards() {
        let half = VCU_ONE / 2;
        let a = claimable(0);
        let it = items(6);
        let mut out = Vec::new();
        let yielding = |i: &Arc<Item>, out: &mut Vec<Arc<Item>>| {
            assert!(matches!(
                a.resume_after_tasks(i.clone(), half, out),
                Resumed::Waiting
            ));
        };
        assert!(a.admit(it[0].clone(), d(VCU_ONE, 0), &mut out));
        assert!(a.queue_in(1, it[1].clone(), d(half, 0), &mut out).is_none());
        yielding(&it[2], &mut out);
        yielding(&it[3], &mut out);
        yielding(&it[4], &mut out);
        assert!(a.queue_in(0, it[5].clone(), d(half, 0), &mut out).is_none());
        assert_eq!(abort(&a, &it[3], &mut out), Some(Lane::Resume));
        a.release(d(VCU_ONE, 0), &mut out);
        assert_eq!(ids(&out), vec![0, 1, 2], "in ticket order");
        a.release(d(half, 0), &mut out);
        assert_eq!(ids(&out), vec![0, 1, 2, 4], "past the aborted one");
        a.release(d(half, 0), &mut out);
        assert_eq!(ids(&out), vec![0, 1, 2, 4, 5]);
        assert_eq!(a.usage().waiting, 0);
    }

    /// Aborts `i`, as a task's handle does: its flag, then its word, then its device.
    fn abort(a: &Admission<Arc<Item>>, i: &Arc<Item>, out: &mut Vec<Arc<Item>>) -> Option<Lane> {
        i.aborted.store(true, Ordering::Release);
        let incoming = mark_aborted(i);
        a.take_aborted(i, incoming, out).map(|(t, lane)| {
            assert!(Arc::ptr_eq(&t, i));
            lane
        })
    }

    /// An aborted item leaves whichever lane it waits in (the central part, a shard, the
    /// resume lane), and what it held back behind it is admitted at once.
    #[test]
    fn aborted_items_leave_their_lanes() {
        let half = VCU_ONE / 2;
        let a = claimable(0);
        let it = items(6);
        let mut out = Vec::new();
        assert!(a.admit(it[0].clone(), d(half, 0), &mut out));
        // 1 (the whole device) heads the lane, centrally; 2 (half) waits behind it in a
        // shard, 3 (half) centrally; 4 resumes.
        assert!(
            a.queue(it[1].clone(), d(VCU_ONE, 0), false, &mut out)
                .is_none()
        );
        assert!(a.queue_in(1, it[2].clone(), d(half, 0), &mut out).is_none());
        assert!(
            a.queue(it[3].clone(), d(half, 0), false, &mut out)
                .is_none()
        );
        assert!(
            a.queue(it[5].clone(), d(half, 0), false, &mut out)
                .is_none()
        );
        assert_eq!(ids(&out), vec![0]);
        out.clear();
        assert_eq!(abort(&a, &it[1], &mut out), Some(Lane::Task));
        assert_eq!(ids(&out), vec![2], "the head gone, the next one fits");
        assert_eq!(a.usage().waiting, 2);
        assert_eq!(
            abort(&a, &it[2], &mut out),
            None,
            "admitted already: it runs"
        );
        assert_eq!(abort(&a, &it[3], &mut out), Some(Lane::Task));
        assert!(matches!(
            a.resume(it[4].clone(), half, &mut out),
            Resumed::Waiting
        ));
        assert_eq!(abort(&a, &it[4], &mut out), Some(Lane::Resume));
        assert_eq!(a.usage().waiting, 1);
        a.release(d(half, 0), &mut out);
        assert_eq!(ids(&out), vec![2, 5]);
        assert_eq!(a.usage().waiting, 0);
        assert_eq!(a.usage().vcu, VCU_ONE);
    }

    /// Aborted items in the middle of the central part of a long lane stay there as
    /// tombstones, found by their tickets (also when the lane spans more tickets than
    /// their kept low bits tell apart): the drains, the hand-over of a release, the
    /// stall resolver's takes and a shutdown's all pass them by.
    #[test]
    fn aborted_items_in_a_long_central_lane_are_passed_by() {
        let half = d(VCU_ONE / 2, 0);
        let a = claimable(0);
        let mut out = Vec::new();
        let it = items(8);
        assert!(a.admit(it[0].clone(), d(VCU_ONE, 0), &mut out));
        for (n, i) in it[1..].iter().enumerate() {
            assert!(a.queue(i.clone(), half, false, &mut out).is_none());
            if n == 2 {
                // Items 4 and after take tickets 65,536 and more after the others': one
                // with the same low bits as item 1's comes first in the lane then.
                a.tickets.fetch_add(1 << 16, Ordering::Relaxed);
            }
        }
        assert_eq!(ids(&out), vec![0]);
        out.clear();
        // In the middle (2, 5), at the back (7), both far apart in tickets.
        for i in [2, 5, 7] {
            assert_eq!(abort(&a, &it[i], &mut out), Some(Lane::Task), "item {i}");
        }
        assert_eq!(abort(&a, &it[5], &mut out), None, "taken out once");
        assert_eq!(a.usage().waiting, 4);
        assert!(out.is_empty());
        // The hand-over of a release admits 1, the drain after it 3 (past 2's tombstone).
        a.release(d(VCU_ONE, 0), &mut out);
        assert_eq!(ids(&out), vec![1, 3]);
        assert_eq!(a.usage().waiting, 2);
        // 4 at the front now; aborted there, the tombstone of 5 behind it goes too.
        assert_eq!(abort(&a, &it[4], &mut out), Some(Lane::Task));
        let first = a.take_first_waiting(&mut out).map(|(t, _, _)| t.id);
        assert_eq!(first, Some(6));
        assert_eq!(a.usage().waiting, 0);
        assert!(a.take_waiting(&mut out).is_empty());
        let mut out = Vec::new();
        assert!(!a.central_tasks_waiting(&mut out));
    }

    /// Aborting items that wait in long lanes, centrally, in a shard and in the resume
    /// lane, in an order other than theirs, looks at a few entries per abort, not through
    /// the lanes: each abort compared its item with those ahead of it (and with every
    /// resume), millions of comparisons here.
    #[test]
    fn aborts_in_long_lanes_look_at_few_entries() {
        use super::claim_item::COMPARED;
        let n = 2000;
        let a = claimable(0);
        let mut out = Vec::new();
        assert!(a.admit(item(0), d(VCU_ONE, 0), &mut out));
        let central: Vec<_> = (0..n).map(|i| item(i as u8)).collect();
        let sharded: Vec<_> = (0..n).map(|i| item(i as u8)).collect();
        let resumed: Vec<_> = (0..n).map(|i| item(i as u8)).collect();
        for ((c, s), r) in central.iter().zip(&sharded).zip(&resumed) {
            assert!(matches!(
                a.resume(r.clone(), VCU_ONE / 4, &mut out),
                Resumed::Waiting
            ));
            assert!(
                a.queue(c.clone(), d(VCU_ONE / 4, 0), false, &mut out)
                    .is_none()
            );
            assert!(
                a.queue_in(1, s.clone(), d(VCU_ONE / 4, 0), &mut out)
                    .is_none()
            );
        }
        COMPARED.with(|c| c.set(0));
        // Every 7th, round and round: from the back, the middle and the front.
        let order = (0..n).map(|k| k * 7 % n);
        for i in order {
            assert_eq!(abort(&a, &central[i], &mut out), Some(Lane::Task));
            assert_eq!(abort(&a, &sharded[i], &mut out), Some(Lane::Task));
            assert_eq!(abort(&a, &resumed[i], &mut out), Some(Lane::Resume));
        }
        let compared = COMPARED.with(|c| c.get());
        assert!(
            compared <= 6 * n,
            "{compared} comparisons for {} aborts",
            3 * n
        );
        assert!(a.no_resumes_waiting());
        assert_eq!(a.usage().waiting, 0);
        assert_eq!(out.len(), 1, "nothing admitted");
        a.release(d(VCU_ONE, 0), &mut out);
        assert_eq!(out.len(), 1, "nothing left to admit");
        assert!(a.take_waiting(&mut out).is_empty());
    }

    /// Queues `task` centrally and `resume` in the resume lane, each asking for `vcu`, on a
    /// device where neither fits.
    fn wait_centrally_and_resuming(
        a: &Admission<Arc<Item>>,
        task: &Arc<Item>,
        resume: &Arc<Item>,
        vcu: u32,
        out: &mut Vec<Arc<Item>>,
    ) {
        assert!(a.queue(task.clone(), d(vcu, 0), false, out).is_none());
        assert!(matches!(
            a.resume(resume.clone(), vcu, out),
            Resumed::Waiting
        ));
    }

    /// Tombstones of aborted items behind a waiting item that does not move (it asks for
    /// more than is free) do not pile up, holding their items: the lane is compacted once
    /// they outnumber the rest, in the central part of the task lane and in the resume
    /// lane alike.
    #[test]
    fn tombstones_behind_a_waiting_item_are_compacted() {
        let a = claimable(0);
        let mut out = Vec::new();
        assert!(a.admit(item(0), d(VCU_ONE, 0), &mut out));
        wait_centrally_and_resuming(&a, &item(1), &item(2), VCU_ONE / 2, &mut out);
        let n = 1000;
        let tasks: Vec<_> = (0..n).map(|i| item(i as u8)).collect();
        let resumes: Vec<_> = (0..n).map(|i| item(i as u8)).collect();
        for (t, r) in tasks.iter().zip(&resumes) {
            wait_centrally_and_resuming(&a, t, r, VCU_ONE / 4, &mut out);
        }
        for i in (0..n).map(|k| k * 7 % n) {
            assert_eq!(abort(&a, &tasks[i], &mut out), Some(Lane::Task));
            assert_eq!(abort(&a, &resumes[i], &mut out), Some(Lane::Resume));
        }
        {
            let c = a.central.lock();
            assert!(
                c.tasks.len() <= 3,
                "{} entries left for 1 waiting",
                c.tasks.len()
            );
            assert!(
                c.resumes.len() <= 3,
                "{} resumes left for 1",
                c.resumes.len()
            );
        }
        // The aborted items' references went with their tombstones.
        assert!(
            tasks
                .iter()
                .chain(&resumes)
                .all(|i| Arc::strong_count(i) == 1)
        );
        assert_eq!(a.usage().waiting, 2);
        a.release(d(VCU_ONE, 0), &mut out);
        assert_eq!(ids(&out), vec![0, 2, 1]);
    }

    /// A queuer that finds its item aborted hands it back, whichever way it queues.
    #[test]
    fn queuers_hand_aborted_items_back() {
        let a = claimable(0);
        let it = items(6);
        let mut out = Vec::new();
        assert!(a.admit(it[0].clone(), d(VCU_ONE, 0), &mut out));
        for i in &it[1..] {
            i.aborted.store(true, Ordering::Release);
        }
        let back = |t: Option<Arc<Item>>| t.map(|t| t.id);
        assert_eq!(
            back(a.queue(it[1].clone(), d(1, 0), false, &mut out)),
            Some(1)
        );
        assert_eq!(
            back(a.queue(it[2].clone(), d(1, 0), true, &mut out)),
            Some(2)
        );
        assert_eq!(
            back(a.queue_unlocked(it[3].clone(), d(1, 0), &mut out)),
            Some(3)
        );
        // Marked by its aborter first, the one without the lock sees the mark.
        assert!(!mark_aborted(&it[4]));
        assert_eq!(
            back(a.queue_incoming(it[4].clone(), d(1, 0), &mut out)),
            Some(4)
        );
        assert!(matches!(
            a.resume(it[5].clone(), 1, &mut out),
            Resumed::Aborted(i) if i.id == 5
        ));
        assert_eq!(a.usage().waiting, 0);
        assert_eq!(ids(&out), vec![0]);
    }

    /// An item queued without the lock before its aborter's mark is found in its lane.
    #[test]
    fn an_item_queued_without_the_lock_is_found() {
        let a = claimable(0);
        let it = items(2);
        let mut out = Vec::new();
        assert!(a.admit(it[0].clone(), d(VCU_ONE, 0), &mut out));
        assert!(a.queue_incoming(it[1].clone(), d(1, 0), &mut out).is_none());
        it[1].aborted.store(true, Ordering::Release);
        assert!(mark_aborted(&it[1]), "on its way in");
        let got = a
            .take_aborted(&it[1], true, &mut out)
            .map(|(i, l)| (i.id, l));
        assert_eq!(got, Some((1, Lane::Task)));
        assert_eq!(a.usage().waiting, 0);
    }
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::claim_item::{Item, item};
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const HALF: Demand = Demand {
        vcu: VCU_ONE / 2,
        mem: 0,
    };
    const FULL: Demand = Demand {
        vcu: VCU_ONE,
        mem: 0,
    };

    /// Runs `f` on the admission on a thread of its own; joins with what it admitted.
    fn on_thread<T: Claim + Send + Sync + 'static>(
        a: &Arc<Admission<T>>,
        f: impl FnOnce(&Admission<T>, &mut Vec<T>) + Send + 'static,
    ) -> thread::JoinHandle<Vec<T>> {
        let a = a.clone();
        thread::spawn(move || {
            let mut out = Vec::new();
            f(&a, &mut out);
            out
        })
    }

    /// A release racing with a queueing admit never strands the queued item.
    #[test]
    fn release_vs_admit_no_lost_wakeup() {
        loom::model(|| {
            let a = Arc::new(Admission::new(0, 2));
            let mut out = Vec::new();
            assert!(a.admit(0u8, HALF, &mut out));
            let t = on_thread(&a, |a, out| {
                a.release(HALF, out);
            });
            let mut mine = Vec::new();
            a.admit(1u8, FULL, &mut mine);
            let theirs = t.join().unwrap();
            let admitted: Vec<u8> = mine.into_iter().chain(theirs).collect();
            assert_eq!(admitted, vec![1]);
            assert_eq!(a.usage().vcu, VCU_ONE);
        });
    }

    /// Items `held` are admitted and `waiting` (id, demand) wait; then `theirs` runs on
    /// another thread while `mine` runs on this one. Returns the ids admitted, sorted.
    fn race(
        held: &[(u8, Demand)],
        waiting: &[(u8, Demand)],
        theirs: fn(&Admission<u8>, &mut Vec<u8>),
        mine: impl FnOnce(&Admission<u8>, &mut Vec<u8>),
    ) -> (Arc<Admission<u8>>, Vec<u8>) {
        let a = Arc::new(Admission::new(0, 2));
        let mut out = Vec::new();
        for &(id, d) in held {
            assert!(a.admit(id, d, &mut out));
        }
        for &(id, d) in waiting {
            assert!(!a.admit(id, d, &mut out));
        }
        let t = on_thread(&a, theirs);
        let mut all = Vec::new();
        mine(&a, &mut all);
        all.extend(t.join().unwrap());
        all.sort_unstable();
        (a, all)
    }

    /// Items 0 and 9 hold half the device each and `waiting` (id, demand) wait; both halves
    /// are released at once, one on another thread. Returns the ids admitted, sorted.
    fn two_releases(waiting: &'static [(u8, Demand)]) -> (Arc<Admission<u8>>, Vec<u8>) {
        let release = |a: &Admission<u8>, out: &mut Vec<u8>| a.release(HALF, out);
        race(&[(0, HALF), (9, HALF)], waiting, release, release)
    }

    /// Two releases at once, with two items waiting: the one that finds the central lock
    /// taken leaves its drain to the holder, and both items are admitted, once each.
    #[test]
    fn releases_that_find_the_lock_taken_are_served() {
        loom::model(|| {
            let (a, all) = two_releases(&[(1, HALF), (2, HALF)]);
            assert_eq!(all, vec![1, 2], "each waiting item admitted once");
            assert_eq!(a.usage().vcu, VCU_ONE);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A waiting item that asks for the whole device (no hand-over): what the two releases
    /// free together admits it, once.
    #[test]
    fn releases_without_hand_over_are_served() {
        loom::model(|| {
            let (a, all) = two_releases(&[(1, FULL)]);
            assert_eq!(all, vec![1], "admitted once");
            assert_eq!(a.usage().vcu, VCU_ONE);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// `releases` releases of half the device, each on a thread of its own, racing with
    /// item 1 asking for `d` and queued by `queue` if it does not fit at once. Items 0 and
    /// 9 hold half the device each (9 only with two releases, and item 2 waits then).
    /// Checks that every waiting item is admitted once and the device ends full.
    fn releases_vs_queue(
        releases: usize,
        d: Demand,
        queue: fn(&Admission<u8>, u8, Demand, &mut Vec<u8>) -> Option<u8>,
    ) {
        let a = Arc::new(Admission::new(0, 2));
        let mut out = Vec::new();
        assert!(a.admit(0u8, HALF, &mut out));
        if releases == 2 {
            assert!(a.admit(9u8, HALF, &mut out));
            assert!(!a.admit(2u8, HALF, &mut out));
        }
        let threads: Vec<_> = (0..releases)
            .map(|_| on_thread(&a, |a, out| a.release(HALF, out)))
            .collect();
        let mut all = Vec::new();
        if let Err(item) = a.admit_now(1u8, d, &mut all) {
            assert_eq!(queue(&a, item, d, &mut all), None);
        }
        for t in threads {
            all.extend(t.join().unwrap());
        }
        all.sort_unstable();
        let want = if releases == 2 { vec![1, 2] } else { vec![1] };
        assert_eq!(all, want, "each waiting item admitted once");
        assert_eq!(a.usage().vcu, VCU_ONE);
        assert_eq!(a.usage().waiting, 0);
    }

    /// A release racing with an item queued through `incoming` (what a driver does when it
    /// finds the lock taken): the item is admitted, once.
    #[test]
    fn release_vs_incoming_queue_no_lost_wakeup() {
        loom::model(|| releases_vs_queue(1, FULL, Admission::queue_incoming));
    }

    /// Two releases racing with an item queued without the lock (a driver queueing a
    /// dependent) while another item waits: the queuer finds the lock taken by one
    /// release and goes without it, and both items are admitted, once each.
    #[test]
    fn releases_vs_unlocked_queue_no_lost_wakeup() {
        loom::model(|| releases_vs_queue(2, HALF, Admission::queue_unlocked));
    }

    /// Item 0 holds the whole device and `waiting` (id, demand) wait; its release, on
    /// another thread, races with the resume of item 1 (half the device), which takes its
    /// turn among the tasks if `yields` (`resume_after_tasks`). Returns the ids admitted
    /// (the resume included if granted at once), sorted.
    fn release_vs_resume(
        waiting: &'static [(u8, Demand)],
        yields: bool,
    ) -> (Arc<Admission<u8>>, Vec<u8>) {
        race(
            &[(0, FULL)],
            waiting,
            |a, out| a.release(FULL, out),
            move |a, out| {
                let resumed = if yields {
                    a.resume_after_tasks(1u8, VCU_ONE / 2, out)
                } else {
                    a.resume(1u8, VCU_ONE / 2, out)
                };
                if let Resumed::Granted(i) = resumed {
                    out.push(i);
                }
            },
        )
    }

    /// A release racing with a queueing resume: the resume is granted exactly once.
    #[test]
    fn release_vs_resume_no_lost_wakeup() {
        loom::model(|| {
            let (a, granted) = release_vs_resume(&[], false);
            assert_eq!(granted, vec![1]);
            assert_eq!(a.usage().vcu, VCU_ONE / 2);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A resume that finds the central lock taken by a release (which drains for item 2,
    /// waiting for the other half) queues without it: both are admitted, once each. Also
    /// for a resume that takes its turn among the tasks (in a lane of its own, merged with
    /// the task lane by ticket), whichever of it and item 2 queued first.
    #[test]
    fn release_vs_unlocked_resume_no_lost_wakeup() {
        for yields in [false, true] {
            loom::model(move || {
                let (a, all) = release_vs_resume(&[(2, HALF)], yields);
                assert_eq!(all, vec![1, 2], "each admitted once");
                assert_eq!(a.usage().vcu, VCU_ONE);
                assert_eq!(a.usage().waiting, 0);
            });
        }
    }

    /// A device (two shards) that a parent (0) and another task (9) hold, each half of it,
    /// and the parent's child (1, returned) waiting in shard 0.
    fn held_with_waiting_child() -> (Arc<Admission<Arc<Item>>>, Arc<Item>) {
        let a = Arc::new(Admission::<Arc<Item>>::new(0, 2));
        let mut out = Vec::new();
        assert!(a.admit(item(0), HALF, &mut out));
        assert!(a.admit(item(9), HALF, &mut out));
        let child = item(1);
        assert!(!a.admit(child.clone(), HALF, &mut out));
        (a, child)
    }

    /// The ids of `mine` and then `theirs`.
    fn ids(mine: &[Arc<Item>], theirs: &[Arc<Item>]) -> Vec<u8> {
        mine.iter().chain(theirs).map(|i| i.id).collect()
    }

    /// The stall resolver's backfill racing with a release while a child waits in a shard:
    /// the backfill finds nothing that fits, the release's drain request comes to it, and
    /// its drain after unlocking takes the shard it looked at (which it gave back first).
    /// The child is admitted once.
    #[test]
    fn backfill_vs_release_admits_the_shard_entry() {
        loom::model(|| {
            let (a, _child) = held_with_waiting_child();
            let t = on_thread(&a, |a, out| a.release(HALF, out));
            let mut mine = Vec::new();
            a.backfill(&mut mine);
            let all = ids(&mine, &t.join().unwrap());
            assert_eq!(all, vec![1], "admitted once");
            assert_eq!(a.usage().vcu, VCU_ONE);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A lender claiming the item it awaits races with a release draining the lane: the item
    /// is admitted exactly once, and what is reserved is what runs.
    #[test]
    fn claim_vs_drain_admits_once() {
        loom::model(|| {
            let (a, child) = held_with_waiting_child();
            let t = on_thread(&a, |a, out| {
                a.release(HALF, out);
            });
            let mut mine = Vec::new();
            a.lend(HALF, Some((&child, HALF)), &mut mine);
            let all = ids(&mine, &t.join().unwrap());
            assert_eq!(all, vec![1], "admitted exactly once");
            assert_eq!(a.usage().vcu, VCU_ONE / 2, "the child's half, no more");
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A lend racing with a queueing admit: the newcomer is admitted on what the lend
    /// releases.
    #[test]
    fn lend_vs_admit_no_lost_wakeup() {
        loom::model(|| {
            let a = Arc::new(Admission::new(0, 2));
            let mut out = Vec::new();
            assert!(a.admit(0u8, FULL, &mut out));
            let t = on_thread(&a, |a, out| {
                a.admit(2u8, HALF, out);
            });
            let mut mine = Vec::new();
            a.lend(FULL, None, &mut mine);
            let all: Vec<u8> = mine.into_iter().chain(t.join().unwrap()).collect();
            assert_eq!(all, vec![2]);
            assert_eq!(a.usage().vcu, VCU_ONE / 2);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// Items queued on two shards race with a release: each is admitted exactly once.
    #[test]
    fn queues_on_two_shards_vs_release() {
        loom::model(|| {
            let a = Arc::new(Admission::<Arc<Item>>::new(0, 2));
            let mut out = Vec::new();
            assert!(a.admit_in(0, item(0), FULL, &mut out));
            let t = on_thread(&a, |a, out| {
                a.admit_in(1, item(1), HALF, out);
            });
            let mut mine = Vec::new();
            a.admit_in(0, item(2), HALF, &mut mine);
            a.release(FULL, &mut mine);
            let mut all = ids(&mine, &t.join().unwrap());
            all.sort();
            assert_eq!(all, vec![1, 2]);
            assert_eq!(a.usage().vcu, VCU_ONE);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A task moved out of its shard (nobody will claim it) races with a lender awaiting
    /// it: it is admitted exactly once, on the loan or from the central part.
    #[test]
    fn unshard_vs_claim_admits_once() {
        loom::model(|| {
            let (a, child) = held_with_waiting_child();
            let c = child.clone();
            let t = on_thread(&a, move |a, out| {
                assert!(a.unshard(&c, HALF, out).is_none());
            });
            let mut mine = Vec::new();
            a.lend(HALF, Some((&child, HALF)), &mut mine);
            let all = ids(&mine, &t.join().unwrap());
            assert_eq!(all, vec![1], "admitted exactly once");
            assert_eq!(a.usage().vcu, VCU_ONE);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A queuer placing an item in its shard races with a poller that lends nothing
    /// awaiting it: whichever comes first, the item is never left claimable, and a release
    /// admits it once.
    #[test]
    fn queue_vs_outside_awaiter_leaves_nothing_claimable() {
        loom::model(|| {
            let a = Arc::new(Admission::<Arc<Item>>::new(0, 2));
            let mut out = Vec::new();
            assert!(a.admit(item(0), FULL, &mut out));
            let child = item(1);
            let c = child.clone();
            let t = on_thread(&a, move |a, out| {
                assert!(!a.admit_in(0, c, HALF, out));
            });
            let mut mine = Vec::new();
            if mark_outside(&child.word) {
                assert!(a.unshard(&child, HALF, &mut mine).is_none());
            }
            let theirs = t.join().unwrap();
            assert_ne!(
                child.word.load(Ordering::SeqCst) & STATE,
                QUEUED,
                "left claimable"
            );
            a.release(FULL, &mut mine);
            assert_eq!(ids(&mine, &theirs), vec![1], "admitted once");
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A task moved out of its shard races with a release draining the lane: it is
    /// admitted exactly once, whichever takes it.
    #[test]
    fn unshard_vs_release_admits_once() {
        loom::model(|| {
            let (a, child) = held_with_waiting_child();
            let t = on_thread(&a, |a, out| a.release(HALF, out));
            let mut mine = Vec::new();
            assert!(a.unshard(&child, HALF, &mut mine).is_none());
            let all = ids(&mine, &t.join().unwrap());
            assert_eq!(all, vec![1], "admitted exactly once");
            assert_eq!(a.usage().vcu, VCU_ONE);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A claim on one shard races with a drain started from another shard's queue: the
    /// claimed item is admitted once, on the loan, and the other where it fits.
    #[test]
    fn claim_vs_queue_on_another_shard() {
        loom::model(|| {
            let (a, child) = held_with_waiting_child();
            let t = on_thread(&a, |a, out| {
                a.admit_in(1, item(2), HALF, out);
                a.release(HALF, out);
            });
            let mut mine = Vec::new();
            a.lend(HALF, Some((&child, HALF)), &mut mine);
            let mut all = ids(&mine, &t.join().unwrap());
            all.sort();
            assert_eq!(all, vec![1, 2], "each admitted exactly once");
            assert_eq!(a.usage().vcu, VCU_ONE);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A device (two shards) that items 0 and 1 hold, each half of it.
    fn held_by_two_halves() -> Arc<Admission<u8>> {
        let a = Arc::new(Admission::new(0, 2));
        let mut out = Vec::new();
        assert!(a.admit(0u8, HALF, &mut out));
        assert!(a.admit(1u8, HALF, &mut out));
        a
    }

    /// A release handing its reservation to the waiting item races with a newcomer: the
    /// newcomer queues (the device stays full) and the next release admits it; each item
    /// once, never more than the device.
    #[test]
    fn hand_over_vs_admit() {
        loom::model(|| {
            let a = held_by_two_halves();
            assert!(!a.admit(2u8, HALF, &mut Vec::new()));
            let t = on_thread(&a, |a, out| {
                a.release(HALF, out);
            });
            let mut mine = Vec::new();
            a.admit(3u8, HALF, &mut mine);
            let theirs = t.join().unwrap();
            let mut all: Vec<u8> = mine.into_iter().chain(theirs).collect();
            assert!(a.usage().vcu <= VCU_ONE);
            assert_eq!(all.len() + a.usage().waiting, 2);
            a.release(HALF, &mut all);
            all.sort();
            assert_eq!(all, vec![2, 3]);
            assert_eq!(a.usage().vcu, VCU_ONE);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// A release handing its reservation to the waiting item (2) races with a queuer
    /// without the lock (3), which then releases the other half: the hand-over's drain
    /// does not look at the queue without the lock again, and still each item is admitted
    /// exactly once, within the device.
    #[test]
    fn hand_over_vs_unlocked_queue_and_release() {
        loom::model(|| {
            let a = held_by_two_halves();
            assert!(!a.admit(2u8, HALF, &mut Vec::new()));
            let t = on_thread(&a, |a, out| a.release(HALF, out));
            let mut mine = Vec::new();
            if let Err(item) = a.admit_now(3u8, HALF, &mut mine) {
                assert_eq!(a.queue_unlocked(item, HALF, &mut mine), None);
            }
            a.release(HALF, &mut mine);
            let mut all: Vec<u8> = mine.into_iter().chain(t.join().unwrap()).collect();
            all.sort_unstable();
            assert_eq!(all, vec![2, 3], "each admitted once");
            assert_eq!(a.usage().vcu, VCU_ONE);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// Two releases and two queued items: both items end up admitted exactly once.
    #[test]
    fn two_releasers_two_waiters() {
        loom::model(|| {
            let a = held_by_two_halves();
            let t = on_thread(&a, |a, out| {
                a.admit(2u8, HALF, out);
                a.release(HALF, out);
            });
            let mut mine = Vec::new();
            a.admit(3u8, HALF, &mut mine);
            a.release(HALF, &mut mine);
            let mut all: Vec<u8> = mine.into_iter().chain(t.join().unwrap()).collect();
            all.sort();
            assert_eq!(all, vec![2, 3]);
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// Aborts `i` as a task's handle does: its flag, its word, then its device's lanes.
    /// Returns the item if this call took it out of a lane.
    fn abort(a: &Admission<Arc<Item>>, i: &Arc<Item>, out: &mut Vec<Arc<Item>>) -> Option<u8> {
        i.aborted.store(true, Ordering::Release);
        let incoming = mark_aborted(i);
        a.take_aborted(i, incoming, out).map(|(t, _)| t.id)
    }

    /// How a model's queuer puts an item in a lane: returns it if it was handed back.
    type QueueFn = fn(&Admission<Arc<Item>>, Arc<Item>, &mut Vec<Arc<Item>>) -> Option<Arc<Item>>;

    /// An abort racing with a queuer on a full device, while a third thread takes the lock
    /// (a backfill, which finds nothing that fits): the queuer may find the lock taken by
    /// either and queue without it, before or after the aborter's mark. The item ends up
    /// either taken out by the aborter or handed back by its queuer, never left waiting.
    fn abort_vs_queuer(queue: QueueFn) {
        loom::model(move || {
            let a = Arc::new(Admission::<Arc<Item>>::new(0, 2));
            let mut out = Vec::new();
            assert!(a.admit(item(0), FULL, &mut out));
            let one = item(1);
            let queued = one.clone();
            let t = thread::spawn({
                let a = a.clone();
                move || {
                    let mut out = Vec::new();
                    let back = queue(&a, queued, &mut out).map(|i| i.id);
                    (back, out.len())
                }
            });
            let other = on_thread(&a, |a, out| _ = a.backfill(out));
            let mut mine = Vec::new();
            let taken = abort(&a, &one, &mut mine);
            let (back, admitted) = t.join().unwrap();
            let others = other.join().unwrap().len();
            assert_eq!((mine.len(), admitted, others), (0, 0, 0), "nothing fits");
            assert!(
                (taken == Some(1)) != (back == Some(1)),
                "taken {taken:?}, handed back {back:?}"
            );
            assert_eq!(a.usage().waiting, 0, "nothing aborted waits");
            assert_eq!(a.usage().vcu, VCU_ONE);
        });
    }

    /// An abort racing with a queuer that goes without the lock when it finds it taken.
    #[test]
    fn abort_vs_unlocked_queue() {
        abort_vs_queuer(|a, i, out| a.queue_unlocked(i, HALF, out));
    }

    /// An abort racing with a resume (which also goes without the lock when it finds it
    /// taken).
    #[test]
    fn abort_vs_resume() {
        abort_vs_queuer(|a, i, out| match a.resume(i, VCU_ONE / 2, out) {
            Resumed::Aborted(i) => Some(i),
            Resumed::Waiting => None,
            Resumed::Granted(_) => panic!("the device is full"),
        });
    }

    /// An abort racing with a release that admits the aborted item: it is admitted (and
    /// runs, to see its abort there) or taken out, once, and what is reserved follows.
    #[test]
    fn abort_vs_release() {
        loom::model(|| {
            let a = Arc::new(Admission::<Arc<Item>>::new(0, 2));
            let mut out = Vec::new();
            assert!(a.admit(item(0), FULL, &mut out));
            let one = item(1);
            assert!(!a.admit(one.clone(), HALF, &mut out));
            let t = on_thread(&a, |a, out| a.release(FULL, out));
            let mut mine = Vec::new();
            let taken = abort(&a, &one, &mut mine);
            let admitted = ids(&mine, &t.join().unwrap());
            match taken {
                Some(_) => assert_eq!((admitted, a.usage().vcu), (vec![], 0)),
                None => assert_eq!((admitted, a.usage().vcu), (vec![1], VCU_ONE / 2)),
            }
            assert_eq!(a.usage().waiting, 0);
        });
    }

    /// An abort racing with a lender claiming the same waiting child: the child runs on the
    /// loan or is taken out, once.
    #[test]
    fn abort_vs_lend() {
        loom::model(|| {
            let (a, child) = held_with_waiting_child();
            let claimed = child.clone();
            let t = on_thread(&a, move |a, out| a.lend(HALF, Some((&claimed, HALF)), out));
            let mut mine = Vec::new();
            let taken = abort(&a, &child, &mut mine);
            let admitted = ids(&mine, &t.join().unwrap());
            match taken {
                Some(_) => assert_eq!((admitted, a.usage().vcu), (vec![], VCU_ONE / 2)),
                None => assert_eq!((admitted, a.usage().vcu), (vec![1], VCU_ONE)),
            }
            assert_eq!(a.usage().waiting, 0);
        });
    }
}
