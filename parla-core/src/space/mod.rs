//! Task spaces: named collections of task ids that tasks and awaits refer to.
//!
//! # Invariants
//! - A key maps to at most one live entry: a placeholder (referenced, not spawned yet) or
//!   the task spawned under it. Spawning over a placeholder replaces the entry with the task
//!   and makes the placeholder the task's dependent, so everything already waiting on the
//!   placeholder is told when the task finishes.
//! - A key is used once: a second spawn under it is a `DuplicateId`, also after the first
//!   task was retired ([`TaskSpace::retire_finished`] keeps a compact record of retired
//!   keys: runs of consecutive integers, and the failures).
//! - A task that succeeded is let go of when a task spawned after its id or after the whole
//!   space, or an await of the whole space, finds it so (it is *settled*:
//!   [`TaskSpace::dependency`], [`TaskSpace::settle`]): its slot keeps one bit instead, and
//!   the id reads as used and succeeded, exactly as a retired one does.
//! - A placeholder nobody refers to any more (no dependent, no builder, no await) is
//!   removed, so references that were dropped leave nothing behind.
//! - A space belongs to one runtime at a time: the first that uses it, until that runtime
//!   is dropped. Using it from another runtime is a `WrongRuntime` error.

mod retired;
mod spare;
mod wait;

use std::any::Any;
use std::fmt;
use std::future::IntoFuture;
use std::ops::{Range, RangeInclusive};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::Mutex;

use crate::graph;
use crate::graph::arc::{TaskArc, TaskPtr};
use crate::key::{BLOCK, block_slots};
pub use crate::key::{IntoKey, IntoPart, Key, Part};
use crate::loom::sync::{SpinGuard, SpinLock};
pub(crate) use spare::flush as flush_spare_refs;
pub use wait::{RangeWait, RefWait, SpaceWait};

use crate::error::TaskError;
use crate::graph::node::{Kind, Name, Outcome, Placeholder, prefetch_for_write};
use crate::runtime::RtInner;
use crate::task::DepList;
use retired::Retired;

const SHARDS: usize = 16;

/// One shard: blocks found by their hash ([`Key::block`]), computed once per operation,
/// and where the block found last is.
#[derive(Default)]
struct Map {
    table: HashTable<Block>,
    /// The bucket of the block found or inserted last in this shard: a guess, checked
    /// before it is used (an insert or a removal since may have moved the block). Programs
    /// name ids in order (`t.at(i)` for consecutive `i`, `t.at((i - 1, j))` for
    /// consecutive `j`), so the next lookup in a shard mostly wants the same block, and
    /// finds it without the table's probe.
    hint: usize,
    /// Once the whole space was waited on ([`tracking`](Self::tracking)), the blocks that
    /// may hold a node (each with its hash): every block with a task or a placeholder in a
    /// slot is here, [`listed`](Block::listed). A wait on the whole space
    /// ([`TaskSpace::settle`]) looks at these alone, not at the blocks that keep only
    /// settled bits: a program that awaits its space after each step, and never retires,
    /// would otherwise pay for every id it ever named at each await. An entry may outlive
    /// its block (retired, or pruned), or name a block listed again since; the
    /// [`sweep`](Self::sweep)s drop those.
    open: Vec<(u64, Key)>,
    /// Whether [`open`](Self::open) is kept: from the first wait on the whole space on
    /// (which lists the blocks then), so that a program that never waits on it pays
    /// nothing for the list.
    tracking: bool,
    /// The length of `open` at which an insert sweeps it (twice what the last sweep left,
    /// at least [`OPEN_MIN`]): the list stays within twice the blocks that hold nodes, for
    /// a constant cost per insert.
    sweep_at: usize,
    /// Counts sweeps (wrapping): a block visited by this one has [`mark`](Block::mark) equal.
    pass: u8,
}

/// The least length of [`Map::open`] at which an insert sweeps it.
const OPEN_MIN: usize = 64;

impl std::ops::Deref for Map {
    type Target = HashTable<Block>;
    #[inline]
    fn deref(&self) -> &HashTable<Block> {
        &self.table
    }
}

impl std::ops::DerefMut for Map {
    #[inline]
    fn deref_mut(&mut self) -> &mut HashTable<Block> {
        &mut self.table
    }
}

impl Map {
    /// The block (of hash `h`) that `is` tells, trying the [`hint`](Self::hint) first.
    #[inline(always)]
    fn find_mut(&mut self, h: u64, is: impl Fn(&Block) -> bool) -> Option<&mut Block> {
        let i = match self.table.get_bucket(self.hint) {
            Some(b) if is(b) => self.hint,
            _ => {
                let i = self.table.find_bucket_index(h, &is)?;
                self.hint = i;
                i
            }
        };
        // SAFETY: bucket `i` holds a block: `get_bucket` or `find_bucket_index` found one
        // there just now, and the table was not changed since (it is borrowed mutably here).
        Some(unsafe { self.table.get_bucket_unchecked_mut(i) })
    }

    /// Lists the block of `key` (hash `h`), which a slot was just filled in, in
    /// [`open`](Self::open) (kept only while [`tracking`](Self::tracking)).
    #[inline(never)]
    fn list_tracked(&mut self, h: u64, key: &Key) {
        self.open.push((h, key.clone()));
        if self.open.len() >= self.sweep_at {
            self.sweep(|_| {});
        }
    }

    /// Starts keeping [`open`](Self::open): lists every block that holds a node.
    #[cold]
    fn track(&mut self) {
        self.tracking = true;
        for b in self.table.iter_mut() {
            b.listed = b.holds_node();
            if b.listed {
                self.open.push((b.hash, b.key.clone()));
            }
        }
    }

    /// Goes over the [`open`](Self::open) blocks, calling `visit` on each once, and drops
    /// the entries of blocks gone, of blocks listed twice, and of blocks that hold no node
    /// (after `visit`), which are no longer listed.
    #[cold]
    #[inline(never)]
    fn sweep(&mut self, mut visit: impl FnMut(&mut Block)) {
        self.pass = self.pass.wrapping_add(1);
        let pass = self.pass;
        let mut i = 0;
        while i < self.open.len() {
            let (h, key) = &self.open[i];
            let h = *h;
            let keep = match self.table.find_mut(h, |b| b.is(h, key)) {
                Some(b) if b.mark != pass => {
                    b.mark = pass;
                    visit(b);
                    b.listed = b.holds_node();
                    b.listed
                }
                // Gone, or visited already under another entry.
                _ => false,
            };
            if keep {
                i += 1;
            } else {
                self.open.swap_remove(i);
            }
        }
        self.sweep_at = (self.open.len() * 2).max(OPEN_MIN);
        if self.open.capacity() > self.sweep_at * 2 {
            self.open.shrink_to(self.sweep_at);
        }
    }
}

/// The nodes of the keys that share a block (see [`Key::block`]): consecutive integer keys
/// share one, so a program spawning them in order touches one entry of the table per
/// block of keys. Each node is named by its key (`Name::Id`).
struct Block {
    hash: u64,
    /// A key of the block (the one it was made for): what identifies the block.
    key: Key,
    slots: [Option<TaskPtr>; BLOCK],
    /// The slots whose task succeeded and was let go (a bit per slot; the slot is `None`):
    /// a dependency on it is met already, and its id stays used (see
    /// [`TaskSpace::dependency`]).
    settled: u8,
    /// Whether the block is in its shard's [`open`](Map::open) list (it is whenever a slot
    /// holds a node, once the shard [tracks](Map::tracking) them).
    listed: bool,
    /// The [`pass`](Map::pass) of the sweep that visited the block last.
    mark: u8,
}

impl Block {
    /// A block with `node` in `slot`, for a map at sweep `pass`, which the caller lists it in.
    fn new(pass: u8, hash: u64, key: &Key, slot: usize, node: TaskPtr) -> Block {
        let mut slots: [Option<TaskPtr>; BLOCK] = Default::default();
        slots[slot] = Some(node);
        Block {
            hash,
            key: key.clone(),
            slots,
            settled: 0,
            listed: true,
            // (Not the next sweep's pass.)
            mark: pass,
        }
    }

    /// Whether the task of `slot` succeeded and was let go.
    #[inline]
    fn is_settled(&self, slot: usize) -> bool {
        self.settled & (1 << slot) != 0
    }

    /// Whether this is the block of `key` (whose block hash is `hash`).
    #[inline]
    fn is(&self, hash: u64, key: &Key) -> bool {
        self.hash == hash && self.key.same_block(key)
    }

    fn is_empty(&self) -> bool {
        self.settled == 0 && !self.holds_node()
    }

    /// Whether a slot holds a task or a placeholder.
    fn holds_node(&self) -> bool {
        self.slots.iter().any(Option::is_some)
    }

    /// Settles the task of `slot` (see [`settles`]): the slot keeps one bit instead.
    /// Returns the task let go of, for the caller to drop once the shard is unlocked.
    #[inline]
    fn let_go(&mut self, slot: usize) -> Option<TaskPtr> {
        self.settled |= 1 << slot;
        self.slots[slot].take()
    }

    /// What the block holds for the dependency on `slot`: the node there, or that it is met
    /// (settled, or settled now when `settle` and its task succeeded: the task let go of
    /// is handed back, for the caller to drop once the shard is unlocked), or nothing.
    ///
    /// A placeholder that failed (never spawned, or cancelled by its runtime's drop) is
    /// nothing: it stays in its slot only while something that waited on it refers to it,
    /// and a dependency or an await named now waits for a task spawned later, under a new
    /// placeholder (which the caller puts in its place).
    #[inline(always)]
    fn dependency(&mut self, slot: usize, settle: bool) -> InSlot {
        if let Some(n) = &self.slots[slot] {
            let h = n.header();
            if h.kind == Kind::Task {
                if settle && h.succeeded_untraced() {
                    return InSlot::Met(self.let_go(slot));
                }
                return InSlot::Node(n.clone());
            }
            if h.is_done() {
                return InSlot::Empty;
            }
            return InSlot::Node(n.clone());
        }
        if self.is_settled(slot) {
            InSlot::Met(None)
        } else {
            InSlot::Empty
        }
    }

    fn nodes(&self) -> impl Iterator<Item = &TaskPtr> {
        self.slots.iter().flatten()
    }
}

/// What [`Block::dependency`] found in a slot.
enum InSlot {
    /// The task or placeholder there (a new reference).
    Node(TaskPtr),
    /// The dependency is met; with the task the lookup settled, if it did.
    Met(Option<TaskPtr>),
    /// Nothing: the id was not named (or was retired).
    Empty,
}

/// Whether a space lets go of `node` (settles it): a task that succeeded and is not traced
/// ([`succeeded_untraced`](crate::graph::node::Header::succeeded_untraced)).
#[inline]
fn settles(node: &TaskPtr) -> bool {
    let h = node.header();
    h.kind == Kind::Task && h.succeeded_untraced()
}

/// The key a node of a space is named by.
fn key_of(node: &TaskPtr) -> Option<&Key> {
    match &node.header().name {
        Name::Id(_, k) => Some(k),
        Name::Anon(_) => None,
    }
}

struct SpaceInner {
    /// (A thin pointer: every named task's name holds a clone.)
    name: Arc<String>,
    /// Each on cache lines of its own: tasks spawning ids on every worker lock different
    /// shards at once, which would otherwise share lines (a lock and a table's header take
    /// 40 bytes).
    shards: [CachePadded<SpinLock<Map>>; SHARDS],
    /// The runtime the space belongs to (0: none yet).
    rt: AtomicU32,
    /// Whether anything was retired (skips the record's lock otherwise).
    has_retired: AtomicBool,
    retired: Mutex<Retired>,
}

/// What a key stands for in a space.
pub(crate) enum Lookup {
    /// A task, or a placeholder.
    Node(TaskPtr),
    /// A retired task and its outcome.
    Retired(Outcome),
    /// Nothing spawned or referenced yet.
    Missing,
}

/// A named space of task ids: `TaskSpace::new("T")`, then `t.at(i)`, `t.at(("cpu", i))`.
///
/// A `Clone` handle: clones share the same ids. Await a space (by value or by
/// reference) to wait for every task spawned into it so far.
///
/// ```
/// # let rt = parla_core::Runtime::builder().cpu_threads(2).build().unwrap();
/// # rt.block_on(async {
/// use parla_core::{TaskSpace, task};
/// let t = TaskSpace::new("T");
/// for i in 0..4 {
///     task(async move { i * 2 }).id(t.at(i)).spawn();
/// }
/// // A task after all four, by range.
/// task(async {}).id(t.at("sum")).after(t.range(0..4)).spawn();
/// t.at("sum").await?;
/// (&t).await?;
/// // Long-running programs forget finished tasks (their ids stay used).
/// assert_eq!(t.retire_finished(), 5);
/// assert!(t.at(2).is_finished());
/// # Ok::<_, parla_core::TaskError>(()) }).unwrap();
/// ```
///
/// # Cost
///
/// Each id is a lookup (or an insert) in the space's table, under a lock: a loop spawning
/// very many tiny tasks from one thread spends noticeably more per task naming them than
/// passing dependencies as `&TaskHandle`s (`.after(&h)`), which need no lookup. Ids pay off
/// where a task is named before it exists (forward references), by many tasks, or across
/// the program. Integer keys that differ only in the low bits of their last part (`t.at(i)`
/// for `i` in `8k..8k + 8`, `t.at((i, j))` likewise in `j`) share an entry of the table: a
/// task given its id first and then dependencies on such neighbours
/// (`.id(t.at(i)).after(t.at(i - 1))`) looks them up together with its own insert.
///
/// A clone is a new handle to the space (one small allocation, and two more at its first
/// spawn under an id, for its own copy of the space's name, which its tasks hold), and the
/// [`TaskRef`]s made from a handle count their references there: tasks that each captured
/// a clone of the space name ids on all workers at once without each reference updating
/// one count that every core shares.
pub struct TaskSpace {
    inner: Arc<SpaceHandle>,
}

/// What a [`TaskSpace`] value points to: the space, behind a reference count of its own.
///
/// `t.at(..)` counts a reference to the handle it is called on, and dropping the
/// [`TaskRef`] gives it back. Were every handle the space itself, threads naming ids
/// through their own clones would all update the space's count, one line bouncing
/// between their cores on every id; each clone being a handle of its own, each thread
/// counts on its own handle's line.
///
/// Every named task holds a reference to the space's name as well, for the same reason a
/// copy of it per handle: made at the handle's first named spawn (two allocations), so a
/// clone that names no task costs nothing more. With one name shared by every handle, the
/// grid of `benches/overhead.rs` spawned by row tasks on 16 workers spent a tenth of its
/// spawns' time on that reference count (on an H200 host).
struct SpaceHandle {
    space: Arc<SpaceInner>,
    /// The name its tasks hold (the space's own for the first handle; a copy for a clone).
    name_copy: OnceLock<Arc<String>>,
}

impl std::ops::Deref for SpaceHandle {
    type Target = SpaceInner;
    #[inline]
    fn deref(&self) -> &SpaceInner {
        &self.space
    }
}

impl Drop for TaskSpace {
    #[inline]
    fn drop(&mut self) {
        // Dropping a space lets go of it at once: not held by this thread's spare counts.
        spare::flush_of(Arc::as_ptr(&self.inner));
    }
}

impl Clone for TaskSpace {
    /// A new handle to the same space (see [`TaskSpace`]).
    fn clone(&self) -> TaskSpace {
        TaskSpace::of(self.inner.space.clone())
    }
}

impl TaskSpace {
    /// A new, empty space.
    pub fn new(name: impl Into<String>) -> TaskSpace {
        let name = Arc::new(name.into());
        let t = TaskSpace::of(Arc::new(SpaceInner {
            name: name.clone(),
            shards: std::array::from_fn(|_| CachePadded::new(SpinLock::new(Map::default()))),
            rt: AtomicU32::new(0),
            has_retired: AtomicBool::new(false),
            retired: Mutex::new(Retired::default()),
        }));
        let _ = t.inner.name_copy.set(name);
        t
    }

    /// A new handle to `inner`.
    fn of(inner: Arc<SpaceInner>) -> TaskSpace {
        TaskSpace {
            inner: Arc::new(SpaceHandle {
                space: inner,
                name_copy: OnceLock::new(),
            }),
        }
    }

    /// This handle once more, for a reference made from it (no new handle).
    #[inline]
    pub(crate) fn share(&self) -> TaskSpace {
        TaskSpace {
            inner: self.inner.clone(),
        }
    }

    /// Which list of the runtime's registry of forward references holds this space's
    /// placeholders of block hash `h`: the space's address mixed in, so that the same keys
    /// in many spaces (`t.at(0)` in each) are spread over the lists too.
    #[inline]
    fn registry_hash(&self, h: u64) -> u64 {
        let at = Arc::as_ptr(&self.inner.space) as usize as u64;
        h ^ (at >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// The space's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A reference to the task with this key, spawned or not (yet).
    #[inline(always)]
    pub fn at(&self, key: impl IntoKey) -> TaskRef {
        let key = key.into_key();
        TaskRef {
            space: RefSpace::of(self),
            key,
        }
    }

    /// The tasks with integer keys in `range`: `t.range(0..n)`, `t.range(1..=n)`.
    pub fn range(&self, range: impl KeyRange) -> TaskRange {
        let (start, end) = range.bounds();
        TaskRange {
            space: self.share(),
            start,
            end,
        }
    }

    /// How many tasks were spawned into the space (retired ones included, placeholders
    /// not).
    pub fn len(&self) -> usize {
        // Every shard held at once, then the record (the order a retirement takes them in,
        // one shard at a time): no task moves from the table to the record while counted,
        // which would count it twice.
        let maps: Vec<_> = self.inner.shards.iter().map(|s| s.lock()).collect();
        let live: usize = maps
            .iter()
            .map(|m| {
                m.iter()
                    .map(|b| {
                        let live = b.nodes().filter(|n| n.header().kind == Kind::Task).count();
                        live + b.settled.count_ones() as usize
                    })
                    .sum::<usize>()
            })
            .sum();
        let retired = self.inner.retired.lock().count();
        drop(maps);
        live + retired
    }

    /// Whether no task was spawned into the space yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every finished task of the space, keeping only a compact record that its id
    /// was used (a second spawn under it is still a `DuplicateId`, and awaiting it still
    /// gives its outcome; an await of the whole space still reports a retired failure, as
    /// it did before). Returns how many tasks it retired.
    ///
    /// A long-running program that names its tasks calls this between batches, so that
    /// its spaces hold only the tasks in flight: retired ids that are runs of consecutive
    /// integers (`t.at(i)`, `t.at(("step", i))`) take a few bytes per run, and keys of
    /// several integers are kept as nested runs, consecutive values holding the same runs
    /// after them sharing one (`t.at((step, i))` or `t.at((step, i, j))` for the same rows
    /// and columns step after step: one run of steps for them all, however many steps);
    /// failures are kept one by one.
    pub fn retire_finished(&self) -> usize {
        let mut n = 0;
        // Runs of ids that succeeded (the first key and how many follow it in its block),
        // and the failures, one by one.
        let mut runs: Vec<(Key, usize)> = Vec::new();
        let mut failed: Vec<(Key, Outcome)> = Vec::new();
        for s in &self.inner.shards {
            let mut map = s.lock();
            map.retain(|b| {
                let mut ok = b.settled;
                b.settled = 0;
                for (i, slot) in b.slots.iter_mut().enumerate() {
                    let Some(t) = slot else { continue };
                    let th = t.header();
                    if !th.is_done() {
                        continue;
                    }
                    // A placeholder failed as never spawned is let go of, not recorded: the
                    // id was never used, and a task may still be spawned under it.
                    if th.kind == Kind::Task {
                        // A task failed without running (a dependency failed, an abort) is
                        // done before its outcome is published (a failure spreading to many
                        // dependents publishes them one by one): it stays until it is, to
                        // be recorded with it.
                        let Some(o) = th.outcome() else { continue };
                        match o {
                            Ok(()) => ok |= 1 << i,
                            Err(_) => failed.extend(key_of(t).map(|k| (k.clone(), o))),
                        }
                    }
                    *slot = None;
                }
                // Each run of consecutive slots recorded at once.
                while ok != 0 {
                    let at = ok.trailing_zeros();
                    let len = (ok >> at).trailing_ones();
                    runs.push((b.key.in_block(at as usize), len as usize));
                    ok &= !(((1u16 << len) - 1) << at) as u8;
                }
                !b.is_empty()
            });
            if map.tracking {
                // (Drops the entries of the blocks retired.)
                map.sweep(|_| {});
            }
            shrink(&mut map);
            if !runs.is_empty() || !failed.is_empty() {
                // Recorded before the shard is unlocked (shard, then record: the order in
                // which lookups take them), so a lookup finds a retired id in one of the two.
                let mut r = self.inner.retired.lock();
                for (k, len) in runs.drain(..) {
                    n += len;
                    r.insert_run(&k, len);
                }
                for (k, o) in failed.drain(..) {
                    n += 1;
                    r.insert(&k, o);
                }
                self.inner.has_retired.store(true, Ordering::Release);
            }
        }
        n
    }

    /// The name a task spawned under an id of this handle holds (see [`SpaceHandle`]).
    #[inline]
    pub(crate) fn name_arc(&self) -> Arc<String> {
        self.inner
            .name_copy
            .get_or_init(|| Arc::new(String::clone(&self.inner.space.name)))
            .clone()
    }

    fn shard(&self, hash: u64) -> &SpinLock<Map> {
        // Middle bits: the table uses the low bits for buckets and the top ones for tags.
        &self.inner.shards[(hash >> 32) as usize % SHARDS]
    }

    /// Binds the space to `rt` (its first runtime, or a new one once that one is gone).
    /// Returns the runtime it belongs to otherwise.
    fn bind(&self, rt: &RtInner) -> Result<(), u32> {
        let cur = self.inner.rt.load(Ordering::Acquire);
        if cur == rt.id {
            return Ok(());
        }
        if cur != 0 && crate::runtime::runtime_alive(cur) {
            return Err(cur);
        }
        match self
            .inner
            .rt
            .compare_exchange(cur, rt.id, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(now) if now == rt.id => Ok(()),
            Err(now) => Err(now),
        }
    }

    /// The outcome of `key`'s task if it was retired. (The check whether anything was is
    /// inline: most spaces never retire, and each insert of a new id asks.)
    #[inline]
    fn retired(&self, key: &Key) -> Option<Outcome> {
        if !self.inner.has_retired.load(Ordering::Acquire) {
            return None;
        }
        self.retired_in_record(key)
    }

    #[inline(never)]
    fn retired_in_record(&self, key: &Key) -> Option<Outcome> {
        self.inner.retired.lock().get(key)
    }

    /// The failure retired first, and its task's key, if a retired task failed.
    pub(crate) fn retired_failure(&self) -> Option<(Key, Arc<TaskError>)> {
        if !self.inner.has_retired.load(Ordering::Acquire) {
            return None;
        }
        self.inner.retired.lock().first_failure()
    }

    /// How many integer ids from `start` on (below `end`) are known to have succeeded:
    /// settled, held by a task that succeeded, or retired as such. One look at a block of
    /// ids (one lock) for up to [`BLOCK`] of them, one at the record for a retired run: an
    /// await of a range skips them so, instead of an await of each.
    pub(crate) fn succeeded_from(&self, start: i128, end: i128) -> i128 {
        let mut at = start;
        while at < end {
            let Ok(x) = i64::try_from(at) else { break };
            let key = x.into_key();
            let (h, slot) = key.block();
            let in_block = self.shard(h).lock().find(h, |b| b.is(h, &key)).map(|b| {
                (slot..BLOCK)
                    .take(usize::try_from(end - at).unwrap_or(BLOCK))
                    .take_while(|&s| {
                        b.is_settled(s)
                            || b.slots[s].as_ref().is_some_and(|n| {
                                let nh = n.header();
                                nh.kind == Kind::Task && matches!(nh.outcome(), Some(Ok(())))
                            })
                    })
                    .count() as i128
            });
            let (n, whole) = match in_block {
                Some(n) => (n, n == (BLOCK - slot) as i128),
                None if self.inner.has_retired.load(Ordering::Acquire) => {
                    let n = self.inner.retired.lock().succeeded_from(x);
                    let n = n.min(end - at);
                    (n, true)
                }
                None => (0, false),
            };
            at += n;
            if n == 0 || !whole {
                break;
            }
        }
        at - start
    }

    /// What `key` stands for, without making anything.
    pub(crate) fn lookup(&self, key: &Key) -> Lookup {
        let (h, slot) = key.block();
        let found = self
            .shard(h)
            .lock()
            .find(h, |b| b.is(h, key))
            .map(|b| (b.slots[slot].clone(), b.is_settled(slot)));
        match found {
            Some((Some(n), _)) => return Lookup::Node(n),
            Some((None, true)) => return Lookup::Retired(Ok(())),
            _ => {}
        }
        match self.retired(key) {
            Some(o) => Lookup::Retired(o),
            None => Lookup::Missing,
        }
    }

    /// What an await of `key` in `rt` waits for: the task or placeholder there, a finished
    /// stand-in for a retired id, or a new placeholder (registered with `rt` for the stall
    /// resolver). In a space of another runtime, what `key` stands for there
    /// ([`lookup`](Self::lookup), as for an await outside any runtime): a task of another
    /// runtime can be awaited, but its ids are not this runtime's to wait for.
    pub(crate) fn awaited(&self, key: &Key, rt: &RtInner) -> Lookup {
        if self.bind(rt).is_err() {
            return self.lookup(key);
        }
        Lookup::Node(match self.find(key, rt, false) {
            Some(n) => n,
            // An id settled by a dependency lookup: a finished stand-in.
            None => self.detached(key, rt.id, Some(Ok(()))),
        })
    }

    /// The node a task spawned in `rt` after `key` depends on, as [`awaited`](Self::awaited), or
    /// `None` when the task under `key` succeeded (retired or not): the dependency is met
    /// already. Such a task is *settled* on the way: the space lets go of it and keeps one
    /// bit that its id was used (and succeeded), so that a program naming every task (a
    /// wavefront over `t.at((i, j))`) does not keep each finished task's memory until the
    /// space is dropped, and its dependents do not wire themselves to finished tasks. A
    /// traced task is kept
    /// ([`succeeded_untraced`](crate::graph::node::Header::succeeded_untraced)).
    #[inline]
    pub(crate) fn dependency(&self, key: &Key, rt: &RtInner) -> Option<TaskPtr> {
        // Inline for a space of this runtime (the common case); `find` binds a space
        // first used here, or makes the stand-in of another runtime's.
        if !self.bound_to(rt) {
            return self.find(key, rt, true);
        }
        self.dependency_bound(key, rt)
    }

    /// Whether the space is bound to `rt` (a task was spawned into it there, or one of its
    /// ids looked up).
    #[inline(always)]
    pub(crate) fn bound_to(&self, rt: &RtInner) -> bool {
        self.inner.rt.load(Ordering::Acquire) == rt.id
    }

    /// [`dependency`](Self::dependency) in a space [bound](Self::bound_to) to `rt`.
    #[inline(always)]
    pub(crate) fn dependency_bound(&self, key: &Key, rt: &RtInner) -> Option<TaskPtr> {
        let (h, slot) = key.block();
        let is = |b: &Block| b.is(h, key);
        match Self::in_table(self.shard(h).lock(), h, is, slot, true) {
            Ok(found) => found,
            Err(map) => self.not_in_table(map, h, key, slot, rt, true),
        }
    }

    /// [`awaited`](Self::awaited) and [`dependency`](Self::dependency): `None` for a settled id
    /// (`settle`: or one whose task succeeded, which it settles, or a retired id that
    /// succeeded).
    #[inline(never)]
    fn find(&self, key: &Key, rt: &RtInner, settle: bool) -> Option<TaskPtr> {
        if let Err(other) = self.bind(rt) {
            // Another runtime's space: a stand-in of that runtime, which the dependent's
            // wiring rejects with `WrongRuntime`.
            return Some(self.detached(key, other, None));
        }
        let (h, slot) = key.block();
        let is = |b: &Block| b.is(h, key);
        match Self::in_table(self.shard(h).lock(), h, is, slot, settle) {
            Ok(found) => found,
            Err(map) => self.not_in_table(map, h, key, slot, rt, settle),
        }
    }

    /// [`find`](Self::find) of a key (of block hash `h`, at `slot`) that the table of this
    /// space, bound to `rt`, has nothing for, its shard still locked (`map`): a stand-in
    /// for a retired id (none for one that succeeded, when `settle`), or a new placeholder
    /// (registered with `rt` for the stall resolver).
    #[inline(never)]
    fn not_in_table(
        &self,
        mut map: SpinGuard<'_, Map>,
        h: u64,
        key: &Key,
        slot: usize,
        rt: &RtInner,
        settle: bool,
    ) -> Option<TaskPtr> {
        if let Some(o) = self.retired(key) {
            drop(map);
            // (A dependency on a retired id that succeeded is met: no stand-in needed.)
            return (!settle || o.is_err()).then(|| self.detached(key, rt.id, Some(o)));
        }
        let origin: Weak<dyn Any + Send + Sync> = Arc::downgrade(&self.inner.space) as Weak<_>;
        // (Not cut from the thread's chunk: freed when its task is spawned, it would keep
        // the chunk's memory for as long as the tasks cut around it live.)
        let p: TaskPtr = TaskArc::new_alone(Placeholder::new(
            Name::Id(self.name_arc(), key.clone()),
            rt.id,
            Some((origin, key.clone())),
        ))
        .into_task();
        // (A failed placeholder it replaces is dropped once the shard is unlocked.)
        let mut stale = None;
        let list = match map.find_mut(h, |b| b.is(h, key)) {
            Some(b) => {
                stale = b.slots[slot].replace(p.clone());
                !std::mem::replace(&mut b.listed, true)
            }
            None => {
                let b = Block::new(map.pass, h, key, slot, p.clone());
                map.insert_unique(h, b, |b| b.hash);
                true
            }
        };
        if list && map.tracking {
            map.list_tracked(h, key);
        }
        // Registered before the shard is unlocked: a placeholder found in the table is in
        // the registry, so that `insert` knows its references (see there).
        let gone = rt.register_forward(&p, self.registry_hash(h));
        drop(map);
        drop(gone);
        drop(stale);
        Some(p)
    }

    /// The lookup of a key (of block hash `h`, at `slot`; `is` tells its block) in its
    /// shard's table, `map`: `Ok` with what [`find`](Self::find) returns when the table has
    /// its task or placeholder, or has it settled (`settle`: settling a task that
    /// succeeded, which is let go of once `map` is unlocked); `Err(map)`, still locked,
    /// when the table has nothing for it ([`not_in_table`](Self::not_in_table) then).
    /// (`is` comes from each caller: the table's search is then a function of its own in
    /// each, and inlined in each.)
    #[inline(always)]
    fn in_table<'m>(
        mut map: SpinGuard<'m, Map>,
        h: u64,
        is: impl Fn(&Block) -> bool,
        slot: usize,
        settle: bool,
    ) -> Result<Option<TaskPtr>, SpinGuard<'m, Map>> {
        let Some(b) = map.find_mut(h, is) else {
            return Err(map);
        };
        match b.dependency(slot, settle) {
            InSlot::Node(n) => Ok(Some(n)),
            InSlot::Met(settled) => {
                if settle && let Some(Some(next)) = b.slots.get(slot + 1) {
                    // Programs walk ids in order (`t.at((i - 1, j))` for each `j` of a
                    // row): the next key's task is most likely the next dependency looked
                    // up, and, this one having finished, most likely finished too. It
                    // finished on another core, which wrote its memory last; fetched now,
                    // the next lookup finds it in cache, to settle and free it. (Not when
                    // this one is still to run: the next one most likely is too, and stays.)
                    prefetch_for_write(next);
                }
                drop(map);
                if let Some(n) = settled {
                    // Often the last reference (the task finished, its handle is gone): its
                    // memory is reused (or freed) by one of the spawning thread's next
                    // spawns.
                    crate::runtime::let_go_last(n);
                }
                Ok(None)
            }
            InSlot::Empty => Err(map),
        }
    }

    /// A placeholder not in the space: finished with `outcome` if given.
    fn detached(&self, key: &Key, rt_id: u32, outcome: Option<Outcome>) -> TaskPtr {
        let p: TaskPtr = TaskArc::new(Placeholder::new(
            Name::Id(self.name_arc(), key.clone()),
            rt_id,
            None,
        ))
        .into_task();
        if let Some(o) = outcome {
            p.header().claim_unrun();
            crate::graph::finish(&p, o, &mut crate::graph::Effects::default());
        }
        p
    }

    /// Records `task` (of `rt`) under `key`. Returns the placeholder it replaces, if the id
    /// was referenced before and something else than the space still refers to it (see
    /// [`replace_placeholder`](Self::replace_placeholder)): it follows the task.
    ///
    /// The ids of `key`'s block that the task depends on and that its builder kept as slots
    /// (see [`TaskRef::near_slot`]) are looked up in the same lookup of the block, their
    /// nodes added to `deps` (as [`dependency`](Self::dependency) would: none for a task
    /// that succeeded, which is settled).
    pub(crate) fn insert(
        &self,
        rt: &RtInner,
        key: &Key,
        task: &TaskPtr,
        deps: &mut DepList,
    ) -> Result<Option<TaskPtr>, TaskError> {
        let id = || format!("{}[{}]", self.inner.name, key);
        if self.bind(rt).is_err() {
            return Err(TaskError::WrongRuntime {
                task: id(),
                reason: format!(
                    "its task space {} belongs to another parla runtime",
                    self.inner.name
                ),
            });
        }
        let near = deps.take_near();
        let (h, slot) = key.block();
        let mut guard = self.shard(h).lock();
        let map = &mut *guard;
        let hinted = matches!(map.table.get_bucket(map.hint), Some(b) if b.is(h, key));
        let i = if hinted {
            map.hint
        } else {
            // One probe: the slot found is where the task goes if the key is new.
            match map.table.entry(h, |b| b.is(h, key), |b| b.hash) {
                hashbrown::hash_table::Entry::Vacant(v) => {
                    if self.retired(key).is_some() {
                        return Err(TaskError::DuplicateId { id: id() });
                    }
                    debug_assert_eq!(TaskArc::strong_count(task), 1);
                    // SAFETY: `task` is being spawned and not published anywhere yet: this
                    // table is the first place to hold it (`insert`'s one caller,
                    // `wire_spawned`, calls it before anything else sees the task; the
                    // assertion checks that its reference is the only one), and the
                    // shard's unlock publishes it.
                    let mine = unsafe { task.clone_unshared() };
                    let b = Block::new(map.pass, h, key, slot, mine);
                    map.hint = v.insert(b).bucket_index();
                    if map.tracking {
                        map.list_tracked(h, key);
                    }
                    drop(guard);
                    if near != 0 {
                        // The block is new: none of its other ids was named before.
                        self.near_missing(near, key, rt, deps);
                    }
                    return Ok(None);
                }
                hashbrown::hash_table::Entry::Occupied(o) => o.bucket_index(),
            }
        };
        map.hint = i;
        // SAFETY: bucket `i` holds a block: the hint was checked, or the probe found it,
        // just now, and the table was not changed since (it is borrowed mutably here).
        let e = unsafe { map.table.get_bucket_unchecked_mut(i) };
        let settled = e.is_settled(slot);
        match &mut e.slots[slot] {
            s @ None => {
                if settled || self.retired(key).is_some() {
                    return Err(TaskError::DuplicateId { id: id() });
                }
                debug_assert_eq!(TaskArc::strong_count(task), 1);
                // SAFETY: as for a new block above.
                *s = Some(unsafe { task.clone_unshared() });
                if map.tracking && !e.listed {
                    // (Listed without a sweep: the next insert of a new block, or wait on
                    // the space, sweeps.)
                    e.listed = true;
                    map.open.push((h, key.clone()));
                }
            }
            Some(n) => {
                if n.header().kind == Kind::Placeholder {
                    return self.replace_placeholder(guard, i, slot, near, key, rt, task, deps);
                }
                return Err(TaskError::DuplicateId { id: id() });
            }
        }
        if near != 0 {
            let (missing, settled) = Self::near_in(e, near, deps);
            drop(guard);
            self.near_unlocked(missing, settled, key, rt, deps);
        }
        Ok(None)
    }

    /// What [`near_in`](Self::near_in) left for after the shard is unlocked: the task it
    /// settled let go of, and the slots it found nothing for looked up one by one.
    #[inline(always)]
    fn near_unlocked(
        &self,
        missing: u8,
        settled: Option<TaskPtr>,
        key: &Key,
        rt: &RtInner,
        deps: &mut DepList,
    ) {
        if let Some(n) = settled {
            // Often the last reference: its memory is kept for the next spawns.
            crate::runtime::let_go_last(n);
        }
        if missing != 0 {
            self.near_missing(missing, key, rt, deps);
        }
    }

    /// [`insert`](Self::insert) of `task` under `key`, whose slot (`slot` of the block in
    /// bucket `i` of the table, locked by `guard`) holds a placeholder: the id was
    /// referenced before. The task takes the placeholder over (see [`graph::take_over`])
    /// when nothing but the table and the runtime's registry refers to it; otherwise the
    /// placeholder is returned, to follow the task.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn replace_placeholder(
        &self,
        mut guard: SpinGuard<'_, Map>,
        i: usize,
        slot: usize,
        near: u8,
        key: &Key,
        rt: &RtInner,
        task: &TaskPtr,
        deps: &mut DepList,
    ) -> Result<Option<TaskPtr>, TaskError> {
        // SAFETY: bucket `i` holds a block: `insert` found it there, and the table was not
        // changed since (its shard's lock is held since, by `guard`).
        let e = unsafe { guard.table.get_bucket_unchecked_mut(i) };
        let hash = e.hash;
        let duplicate = || TaskError::DuplicateId {
            id: format!("{}[{}]", self.inner.name, key),
        };
        // (`insert` found the placeholder in the slot.)
        let Some(s) = &mut e.slots[slot] else {
            return Err(duplicate());
        };
        let sh = s.header();
        let mut taken = None;
        let placed = if !sh.is_done() && sh.resolve() {
            let p = std::mem::replace(s, task.clone());
            // Referred to by this table (through `p` now) and the runtime's registry alone
            // (it was registered before the shard was unlocked, by the thread that made it:
            // `not_in_table`): nothing can register on it any more (a lookup would need this
            // shard's lock), so the task takes it over.
            if TaskArc::strong_count(&p) <= 2 && graph::take_over(&p, task) {
                taken = Some(p);
                None
            } else {
                Some(p)
            }
        } else if sh.is_done() {
            // A forward reference the stall resolver failed as never spawned (no thread held
            // the runtime while it was waited on): what waited on it failed, and this is
            // still the first task under the id.
            *s = task.clone();
            None
        } else {
            return Err(duplicate());
        };
        let (missing, settled) = if near != 0 {
            Self::near_in(e, near, deps)
        } else {
            (0, None)
        };
        drop(guard);
        if let Some(p) = taken {
            rt.forward_taken_over(p, task, self.registry_hash(hash));
        }
        self.near_unlocked(missing, settled, key, rt, deps);
        Ok(placed)
    }

    /// [`insert`](Self::insert)'s lookup of the slots `near` of block `b`, its shard locked:
    /// each as [`in_table`](Self::in_table) does it ([`Block::dependency`]). Returns the
    /// slots `b` has nothing for, and a task settled, which the caller lets go of once the
    /// shard is unlocked (any other goes to `deps`, where the wiring finds it succeeded and
    /// drops it).
    #[inline(always)]
    fn near_in(b: &mut Block, near: u8, deps: &mut DepList) -> (u8, Option<TaskPtr>) {
        let mut missing = 0;
        let mut settled = None;
        for slot in block_slots(near) {
            match b.dependency(slot, true) {
                InSlot::Node(n) => deps.push_node(n),
                InSlot::Met(Some(n)) if settled.is_none() => settled = Some(n),
                InSlot::Met(Some(n)) => deps.push_node(n),
                InSlot::Met(None) => {}
                InSlot::Empty => missing |= 1 << slot,
            }
        }
        (missing, settled)
    }

    /// The slots `near` of `key`'s block looked up one by one
    /// ([`dependency`](Self::dependency)): ids not named yet (placeholders), or retired.
    #[inline(never)]
    fn near_missing(&self, near: u8, key: &Key, rt: &RtInner, deps: &mut DepList) {
        for slot in block_slots(near) {
            if let Some(n) = self.dependency(&key.in_block(slot), rt) {
                deps.push_node(n);
            }
        }
    }

    /// The integer ids in `start..end` (keys of one integer) whose task or placeholder the
    /// space holds now, in order.
    pub(crate) fn held_ints(&self, start: i128, end: i128) -> Vec<i128> {
        let mut out = Vec::new();
        for s in &self.inner.shards {
            let map = s.lock();
            out.extend(
                map.iter()
                    .flat_map(Block::nodes)
                    .filter_map(|n| key_of(n)?.as_int())
                    .filter(|i| (start..end).contains(i)),
            );
        }
        out.sort_unstable();
        out
    }

    /// How many blocks of ids the space holds (each up to [`BLOCK`] ids).
    pub(crate) fn blocks(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Every task spawned into the space so far (and not retired).
    pub(crate) fn tasks(&self) -> Vec<TaskPtr> {
        let mut out = Vec::new();
        for s in &self.inner.shards {
            out.extend(
                s.lock()
                    .iter()
                    .flat_map(Block::nodes)
                    .filter(|n| n.header().kind == Kind::Task)
                    .cloned(),
            );
        }
        out
    }

    /// What a task spawned in `rt` after the whole space waits for: every task spawned into
    /// it so far that has not succeeded ([`settle`](Self::settle)), and a failed stand-in
    /// for the first retired task that failed, if one did (as an await of the space reports
    /// it). In another runtime's space nothing is settled: all its tasks are returned, and
    /// the dependent's wiring fails with `WrongRuntime`.
    pub(crate) fn dependencies(&self, rt: &RtInner) -> Vec<TaskPtr> {
        if self.inner.rt.load(Ordering::Acquire) != rt.id {
            return self.tasks();
        }
        let mut nodes = self.settle();
        // (After the table: a failure retired meanwhile is in the record by now.)
        if let Some((key, e)) = self.retired_failure() {
            nodes.push(self.detached(&key, rt.id, Some(Err(e))));
        }
        nodes
    }

    /// The tasks spawned into the space so far that have not succeeded (running, waiting,
    /// or failed), and those that succeeded but are traced. The others are settled on the
    /// way (see [`dependency`](Self::dependency)): a wait on the whole space, or a task
    /// after it, lets go of them. Only the blocks that hold nodes are looked at (see
    /// [`Map::open`]): its cost is that of the tasks not settled before, not of every id.
    pub(crate) fn settle(&self) -> Vec<TaskPtr> {
        let mut out = Vec::new();
        let mut settled = Vec::new();
        for s in &self.inner.shards {
            let mut map = s.lock();
            if !map.tracking {
                map.track();
            }
            map.sweep(|b| {
                for i in 0..BLOCK {
                    let Some(n) = &b.slots[i] else { continue };
                    if settles(n) {
                        settled.extend(b.let_go(i));
                    } else if n.header().kind == Kind::Task {
                        out.push(n.clone());
                    }
                }
            });
            drop(map);
            // (Freed outside the shard's lock.)
            settled.clear();
        }
        out
    }

    /// Removes the placeholder under `key` if nothing refers to it any more.
    fn prune(&self, key: &Key) {
        let (h, slot) = key.block();
        let mut map = self.shard(h).lock();
        if let Ok(mut e) = map.find_entry(h, |b| b.is(h, key)) {
            let b = e.get_mut();
            if let Some(t) = &b.slots[slot] {
                let th = t.header();
                // Held by this map and the runtime's forward registry alone.
                if th.is_unspawned_id() && TaskArc::strong_count(t) <= 2 && !th.has_dependents() {
                    b.slots[slot] = None;
                }
            }
            if b.is_empty() {
                e.remove();
                shrink(&mut map);
            }
        }
    }
}

/// Gives a shard's memory back once most of it is unused.
fn shrink(map: &mut Map) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        let keep = map.len() * 2;
        map.shrink_to(keep, |e| e.hash);
    }
}

/// A reference to placeholder `node` is dropped (a builder never spawned, an await given
/// up): the placeholder leaves its space if nothing else refers to it.
pub(crate) fn release_placeholder(node: TaskPtr) {
    let Some((space, key)) = node.origin().map(|(s, k)| (s.clone(), k.clone())) else {
        return;
    };
    drop(node);
    if let Some(space) = space.upgrade()
        && let Ok(inner) = space.downcast::<SpaceInner>()
    {
        TaskSpace::of(inner).prune(&key);
    }
}

impl fmt::Debug for TaskSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSpace")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for TaskSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for TaskSpace {
    fn eq(&self, other: &TaskSpace) -> bool {
        Arc::ptr_eq(&self.inner.space, &other.inner.space)
    }
}
impl Eq for TaskSpace {}

/// A reference to one task id: `t.at(key)`. The task need not be spawned yet.
///
/// Await it (by value or by reference) to wait for the task: `Ok(())` once it completed,
/// its error if it failed. Use it in [`TaskBuilder::id`](crate::TaskBuilder::id) to name a
/// task, and in [`TaskBuilder::after`](crate::TaskBuilder::after) to depend on one.
#[derive(PartialEq, Eq)]
pub struct TaskRef {
    pub(crate) space: RefSpace,
    pub(crate) key: Key,
}

impl Clone for TaskRef {
    fn clone(&self) -> TaskRef {
        TaskRef {
            space: RefSpace::of(&self.space),
            key: self.key.clone(),
        }
    }
}

/// The handle a [`TaskRef`] holds: a reference counted on it, taken from and given back to
/// this thread's spare counts where it can be (see [`spare`]).
pub(crate) struct RefSpace(std::mem::ManuallyDrop<TaskSpace>);

impl RefSpace {
    /// A reference to the handle `t`.
    #[inline(always)]
    pub(crate) fn of(t: &TaskSpace) -> RefSpace {
        RefSpace(std::mem::ManuallyDrop::new(TaskSpace {
            inner: spare::take(&t.inner),
        }))
    }
}

impl std::ops::Deref for RefSpace {
    type Target = TaskSpace;
    #[inline(always)]
    fn deref(&self) -> &TaskSpace {
        &self.0
    }
}

impl Drop for RefSpace {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the handle's reference is read out once, here, and `self.0` is not used
        // again (nor dropped: it is a `ManuallyDrop`), so the reference has one owner.
        let inner = unsafe { std::ptr::read(&self.0.inner) };
        spare::give_back(inner);
    }
}

impl PartialEq for RefSpace {
    fn eq(&self, other: &RefSpace) -> bool {
        **self == **other
    }
}
impl Eq for RefSpace {}

impl TaskRef {
    /// The slot of `dep` in this id's block when a task spawned under this id looks `dep`
    /// up together with its own insert (see [`TaskSpace::insert`]): an id of the same space
    /// and block, in another slot (a task after its neighbour, `t.at(i)` after
    /// `t.at(i - 1)`).
    #[inline(always)]
    pub(crate) fn near_slot(&self, dep: &TaskRef) -> Option<usize> {
        let slot = self.key.near_slot(&dep.key)?;
        Arc::ptr_eq(&self.space.inner.space, &dep.space.inner.space).then_some(slot)
    }

    /// The space of the id.
    pub fn space(&self) -> &TaskSpace {
        &self.space
    }

    /// The key of the id.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Whether a task was spawned under this id and finished.
    pub fn is_finished(&self) -> bool {
        match self.space.lookup(&self.key) {
            Lookup::Node(t) => t.header().kind == Kind::Task && t.header().outcome().is_some(),
            Lookup::Retired(_) => true,
            Lookup::Missing => false,
        }
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.space.name(), self.key)
    }
}

impl fmt::Debug for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskRef({self})")
    }
}

impl IntoFuture for TaskRef {
    type Output = Result<(), crate::TaskError>;
    type IntoFuture = RefWait;
    fn into_future(self) -> RefWait {
        RefWait::new(self)
    }
}

impl IntoFuture for &TaskRef {
    type Output = Result<(), crate::TaskError>;
    type IntoFuture = RefWait;
    fn into_future(self) -> RefWait {
        RefWait::new(self.clone())
    }
}

impl IntoFuture for TaskSpace {
    type Output = Result<(), crate::TaskError>;
    type IntoFuture = SpaceWait;
    fn into_future(self) -> SpaceWait {
        SpaceWait::new(&self)
    }
}

impl IntoFuture for &TaskSpace {
    type Output = Result<(), crate::TaskError>;
    type IntoFuture = SpaceWait;
    fn into_future(self) -> SpaceWait {
        SpaceWait::new(self)
    }
}

/// The ids with integer keys `start..end` of one space: `t.range(0..n)`.
///
/// Iterate it for [`TaskRef`]s, depend on it, or await it (every id in the range).
#[derive(PartialEq, Eq)]
pub struct TaskRange {
    pub(crate) space: TaskSpace,
    pub(crate) start: i128,
    pub(crate) end: i128,
}

impl Clone for TaskRange {
    fn clone(&self) -> TaskRange {
        TaskRange {
            space: self.space.share(),
            start: self.start,
            end: self.end,
        }
    }
}

impl TaskRange {
    /// How many ids the range covers (`usize::MAX` for more than that).
    pub fn len(&self) -> usize {
        usize::try_from((self.end - self.start).max(0)).unwrap_or(usize::MAX)
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The references in the range.
    pub fn iter(&self) -> impl Iterator<Item = TaskRef> + '_ {
        (self.start..self.end).map(|i| self.space.at(int_part(i)))
    }
}

pub(crate) fn int_part(i: i128) -> Part {
    match i64::try_from(i) {
        Ok(v) => Part::Int(v),
        Err(_) => Part::UInt(i as u64),
    }
}

impl IntoIterator for TaskRange {
    type Item = TaskRef;
    type IntoIter = std::vec::IntoIter<TaskRef>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter().collect::<Vec<_>>().into_iter()
    }
}

impl fmt::Debug for TaskRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TaskRange({}[{}..{}])",
            self.space.name(),
            self.start,
            self.end
        )
    }
}

impl IntoFuture for TaskRange {
    type Output = Result<(), crate::TaskError>;
    type IntoFuture = RangeWait;
    fn into_future(self) -> RangeWait {
        RangeWait::new(self)
    }
}

impl IntoFuture for &TaskRange {
    type Output = Result<(), crate::TaskError>;
    type IntoFuture = RangeWait;
    fn into_future(self) -> RangeWait {
        RangeWait::new(self.clone())
    }
}

/// Integer ranges that [`TaskSpace::range`] takes: `a..b` and `a..=b` of any integer type.
pub trait KeyRange {
    /// Start (inclusive) and end (exclusive).
    fn bounds(self) -> (i128, i128);
}

macro_rules! key_range {
    ($($t:ty),*) => {$(
        impl KeyRange for Range<$t> {
            fn bounds(self) -> (i128, i128) {
                (self.start as i128, self.end as i128)
            }
        }
        impl KeyRange for RangeInclusive<$t> {
            fn bounds(self) -> (i128, i128) {
                (*self.start() as i128, *self.end() as i128 + 1)
            }
        }
    )*};
}
key_range!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

#[cfg(all(test, not(parla_loom)))]
mod test {
    use super::TaskSpace;
    use crate::{Runtime, TaskError, task};
    use std::sync::Arc;
    use std::time::Duration;

    /// The placeholders (forward references) the space holds.
    fn placeholders(t: &TaskSpace) -> usize {
        t.inner
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .iter()
                    .flat_map(super::Block::nodes)
                    .filter(|n| n.header().kind == super::Kind::Placeholder)
                    .count()
            })
            .sum()
    }

    /// A range awaited where most ids were never spawned fails with the first of them and
    /// does not wait for the others (each a stall of the runtime, and a placeholder: 10,000
    /// left 9,995 placeholders; a million took 19 s and 545 MB), from `block_on` and from a
    /// task; ids after it that were spawned are still waited for.
    #[test]
    fn a_range_of_ids_never_spawned_fails_with_the_first_alone() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        for in_task in [false, true] {
            let (r, left, late) = rt.block_on(async move {
                let t = TaskSpace::new("E");
                for i in 0..5u64 {
                    task(async move { i }).id(t.at(i)).spawn();
                }
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let late = task(async move {
                    let _ = rx.await;
                })
                .id(t.at(9_000))
                .spawn();
                task(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    let _ = tx.send(());
                })
                .spawn();
                let range = t.range(0..10_000);
                let r = if in_task {
                    task(async move { range.await }).await.unwrap()
                } else {
                    range.await
                };
                (r, placeholders(&t), late.is_finished())
            });
            assert!(
                matches!(&r, Err(TaskError::NeverSpawned { id }) if id == "E[5]"),
                "in a task {in_task}: {r:?}"
            );
            assert!(left <= 1, "in a task {in_task}: {left} placeholders left");
            assert!(
                late,
                "in a task {in_task}: E[9000], spawned, was waited for"
            );
        }
    }

    /// The kinds of the nodes in the runtime's registry of forward references.
    fn registry() -> Vec<super::Kind> {
        crate::runtime::context::with_rt(|rt| {
            let rt = rt.expect("inside the runtime");
            rt.forward_refs().iter().map(|n| n.header().kind).collect()
        })
    }

    /// The order in which tasks ran.
    type Log = Arc<parking_lot::Mutex<Vec<&'static str>>>;

    /// A task that adds `what` to `log` (once `gate` opens, if given).
    fn logs(
        log: &Log,
        gate: Option<tokio::sync::oneshot::Receiver<()>>,
        what: &'static str,
    ) -> crate::TaskBuilder<impl std::future::Future<Output = ()> + Send + 'static> {
        let log = log.clone();
        task(async move {
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            log.lock().push(what);
        })
    }

    /// A task spawned under an id that only its dependents named before takes its
    /// placeholder over: the placeholder is freed (the task stands in its place in the
    /// registry), and the dependents wait for the task itself, and fail with it. (Each such
    /// id kept a placeholder alive as long as its task was pending: a million named tasks
    /// spawned in reverse order took 569 MB, 293 MB now.)
    #[test]
    fn a_task_takes_over_the_placeholder_only_its_dependents_referred_to() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        let (kinds, order, failed) = rt.block_on(async {
            let t = TaskSpace::new("F");
            let order = Log::default();
            let (open, gate) = tokio::sync::oneshot::channel::<()>();
            let after = logs(&order, None, "after").after(t.at(1)).spawn();
            assert_eq!(registry(), [super::Kind::Placeholder]);
            let first = logs(&order, Some(gate), "first").id(t.at(1)).spawn();
            let kinds = registry();
            let _ = open.send(());
            after.await.unwrap();
            first.await.unwrap();
            let order = order.lock().clone();
            // A failure reaches the dependents the same way.
            let after = task(async {}).after(t.at(2)).spawn();
            let failing = task(async { panic!("fails") }).id(t.at(2)).spawn();
            assert!(failing.await.is_err());
            (kinds, order, after.await)
        });
        assert_eq!(kinds, [super::Kind::Task]);
        assert_eq!(order, ["first", "after"]);
        match failed {
            Err(TaskError::DependencyFailed { dependency, .. }) => assert_eq!(dependency, "F[2]"),
            other => panic!("{other:?}"),
        }
    }

    /// A placeholder something else holds (a builder not spawned yet) is not taken over: it
    /// waits for the task and mirrors its outcome, for what waits on it later.
    #[test]
    fn a_placeholder_held_elsewhere_follows_its_task() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        let (kinds, order) = rt.block_on(async {
            let t = TaskSpace::new("G");
            // (Used first: `after` looks ids up at once in a space its runtime uses, and
            // leaves those of a new space to `spawn`.)
            task(async {}).id(t.at(0)).await.unwrap();
            let order = Log::default();
            let (open, gate) = tokio::sync::oneshot::channel::<()>();
            let later = logs(&order, None, "later").after(t.at(1));
            let first = logs(&order, Some(gate), "first").id(t.at(1)).spawn();
            let kinds = registry();
            let later = later.spawn();
            let _ = open.send(());
            later.await.unwrap();
            first.await.unwrap();
            let order = order.lock().clone();
            (kinds, order)
        });
        assert_eq!(kinds, [super::Kind::Placeholder]);
        assert_eq!(order, ["first", "later"]);
    }

    /// The blocks a wait on the whole space looks at ([`super::Map::open`]).
    fn open_blocks(t: &TaskSpace) -> usize {
        t.inner.shards.iter().map(|s| s.lock().open.len()).sum()
    }

    /// A program that awaits its space after each step, and never retires, waits for the
    /// tasks not settled yet, not for every id it ever named: the blocks a wait looks at
    /// stay few (each wait cost time in proportion to every id spawned so far: 40,000 such
    /// steps took 7.3 s, each 10,000 slower than the last).
    #[test]
    fn a_wait_on_the_whole_space_looks_at_the_blocks_not_settled_alone() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        let (most, sum) = rt.block_on(async {
            let t = TaskSpace::new("S");
            let sum = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut most = 0;
            for step in 0..5_000u64 {
                let s = sum.clone();
                task(async move {
                    s.fetch_add(step, std::sync::atomic::Ordering::Relaxed);
                })
                .id(t.at((step, 0)))
                .spawn();
                (&t).await.unwrap();
                most = most.max(open_blocks(&t));
            }
            (most, sum.load(std::sync::atomic::Ordering::Relaxed))
        });
        assert_eq!(sum, (0..5_000).sum::<u64>());
        assert!(
            most <= 2 * super::OPEN_MIN,
            "{most} blocks looked at by one wait"
        );
    }

    /// Blocks stay listed while they hold a task not finished, across the sweeps of the
    /// inserts of many new blocks and of waits, and are listed again when an id of theirs is
    /// spawned after they were swept out: a wait on the whole space still waits for those.
    #[test]
    fn a_wait_on_the_whole_space_finds_tasks_in_blocks_swept_before() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        rt.block_on(async {
            let t = TaskSpace::new("S");
            task(async {}).id(t.at(0)).spawn();
            (&t).await.unwrap();
            // Block 0..8 is swept out (its one task settled); a gated task in it now.
            let (open, gate) = tokio::sync::oneshot::channel::<()>();
            let gated = task(async move { gate.await.is_ok() }).id(t.at(1)).spawn();
            let mut batch = Vec::new();
            for i in 1..2_000u64 {
                batch.push(task(async {}).id(t.at(8 * i)).spawn());
                if i % 400 == 0 {
                    // (Everything else finished: only the gated task can keep it waiting.)
                    for h in batch.drain(..) {
                        h.await.unwrap();
                    }
                    let wait = tokio::time::timeout(Duration::from_millis(20), &t).await;
                    assert!(
                        wait.is_err(),
                        "a wait on the space finished before a task in it"
                    );
                }
            }
            assert!(!gated.is_finished());
            open.send(()).unwrap();
            (&t).await.unwrap();
            assert!(gated.is_finished());
            assert!(gated.await.unwrap());
        });
    }

    /// A task after a whole space waits only for the tasks not finished yet, and the space
    /// lets go of those that succeeded, as awaiting the space does; their ids stay used.
    #[test]
    fn a_space_as_a_dependency_or_awaited_settles_the_tasks_that_succeeded() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        rt.block_on(async {
            let t = TaskSpace::new("B");
            for i in 0..20 {
                task(async {}).id(t.at(i)).spawn().await.unwrap();
            }
            let (open, gate) = std::sync::mpsc::channel::<()>();
            let pending = task(async move {
                let _ = gate.recv();
            })
            .id(t.at(20))
            .spawn();
            let after = task(async {}).after(&t);
            assert_eq!(after.deps.len(), 1, "only the pending task is waited for");
            assert_eq!(settled_in(&t), 20);
            assert_eq!(t.len(), 21);
            let after = after.spawn();
            assert!(!after.is_finished());
            open.send(()).unwrap();
            after.await.unwrap();
            pending.await.unwrap();
            // Awaiting the space settles the rest.
            (&t).await.unwrap();
            assert_eq!(settled_in(&t), 21);
            assert_eq!(t.len(), 21);
            assert_eq!(t.retire_finished(), 21);
            assert_eq!(t.len(), 21);
        });
    }

    /// References dropped inside a runtime's scope keep their counts on the handle as this
    /// thread's spares, which the next references take; the spares are given back at the end
    /// of the poll, or when a value of the handle is dropped on the thread, so a space
    /// dropped is let go of as before: at once where its references were dropped on the same
    /// thread, at the end of the poll where its last handle went elsewhere. Outside a
    /// runtime nothing is kept.
    #[test]
    fn references_keep_spare_counts_until_the_poll_ends_or_the_space_is_dropped() {
        use super::spare::kept;
        use std::sync::Arc;
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        rt.block_on(async {
            let t = TaskSpace::new("S");
            let handles = Arc::strong_count(&t.inner);
            drop((t.at(1), t.at(2), t.at(3)));
            assert_eq!(kept(), 3);
            // Still counted on the handle, as the thread's.
            assert_eq!(Arc::strong_count(&t.inner), handles + 3);
            let r = t.at(4);
            assert_eq!((kept(), Arc::strong_count(&t.inner)), (2, handles + 3));
            drop(r);
            // Spawns under ids take and give them back likewise.
            for i in 10..20 {
                task(async {}).id(t.at(i)).after([t.at(i - 1)]).spawn();
            }
            assert!(kept() > 0);
            // A yield ends this poll of `block_on`'s future: the spares are given back.
            tokio::task::yield_now().await;
            assert_eq!((kept(), Arc::strong_count(&t.inner)), (0, handles));

            // Dropped on this thread: the space goes at once.
            let space = Arc::downgrade(&t.inner.space);
            drop(t.at(1));
            assert_eq!(kept(), 1);
            drop(t);
            assert_eq!(kept(), 0);
            assert!(
                space.upgrade().is_none(),
                "the space outlived its last handle"
            );

            // Its last handle dropped on another thread: the space goes when the poll ends.
            let t = TaskSpace::new("T");
            let space = Arc::downgrade(&t.inner.space);
            drop(t.at(1));
            std::thread::spawn(move || drop(t)).join().unwrap();
            assert!(space.upgrade().is_some());
            tokio::task::yield_now().await;
            assert!(space.upgrade().is_none(), "kept past the end of the poll");

            // Inside a task, on a clone: given back as the task drops its clone.
            let t = TaskSpace::new("U");
            let space = Arc::downgrade(&t.inner.space);
            let c = t.clone();
            task(async move {
                drop((c.at(1), c.at(2)));
                assert_eq!(kept(), 2);
            })
            .await
            .unwrap();
            drop(t);
            assert!(space.upgrade().is_none(), "a worker kept the clone alive");
        });
        // Outside a runtime: counted down at once.
        let t = TaskSpace::new("V");
        let handles = Arc::strong_count(&t.inner);
        drop(t.at(1));
        assert_eq!((kept(), Arc::strong_count(&t.inner)), (0, handles));
    }

    /// Clones are handles of one space: ids made, spawned and awaited through different
    /// handles meet, and a task keeps its name after the handle it was named through is
    /// gone. References made from a handle are counted on it, not on the space (the count
    /// every core would share).
    #[test]
    fn clones_are_handles_of_one_space() {
        use std::sync::Arc;
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        rt.block_on(async {
            let t = TaskSpace::new("H");
            let spaces = Arc::strong_count(&t.inner.space);
            let r = t.at(1);
            let range = t.range(0..4);
            assert_eq!(Arc::strong_count(&t.inner), 3);
            assert_eq!(Arc::strong_count(&t.inner.space), spaces);
            let c = t.clone();
            assert_eq!(Arc::strong_count(&t.inner.space), spaces + 1);
            assert!(!Arc::ptr_eq(&t.inner, &c.inner));
            assert!(c == t && c.at(1) == r && r.clone() == c.at(1));
            drop(range);

            // Referenced through one handle (a placeholder), spawned through another, and
            // awaited through a third that is dropped meanwhile.
            let waiter = {
                let w = t.clone();
                task(async move { w.at(1).await }).spawn()
            };
            let (open, gate) = std::sync::mpsc::channel::<()>();
            let failing = {
                let s = c.clone();
                task(async move {
                    let _ = gate.recv();
                    panic!("boom");
                })
                .id(s.at(1))
                .spawn()
            };
            drop(c);
            open.send(()).unwrap();
            let e = failing.await.unwrap_err();
            assert!(e.to_string().contains("H[1]"), "{e}");
            let e = waiter.await.unwrap().unwrap_err();
            assert!(e.to_string().contains("H[1]"), "{e}");
            assert!(r.is_finished());
            assert_eq!(Arc::strong_count(&t.inner.space), spaces);
        });
    }

    /// A dependency on an id takes what the space holds for it, whichever way the lookup
    /// goes (inline when the table has the id's block and something in its slot, or its
    /// slot settled; `find` otherwise): the task while it has not finished, nothing once it
    /// succeeded (settling it) or was settled, and a placeholder for an id not spawned yet,
    /// in a block the table has or not, which the task spawned under it then stands in for.
    #[test]
    fn a_dependency_on_an_id_finds_its_task_placeholder_or_settled_slot() {
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        rt.block_on(async {
            let t = TaskSpace::new("D");
            let (open, gate) = std::sync::mpsc::channel::<()>();
            let pending = task(async move {
                let _ = gate.recv();
            })
            .id(t.at(0))
            .spawn();
            task(async {}).id(t.at(1)).spawn().await.unwrap();
            let after = task(async {})
                .after(t.at(0)) // running: its task
                .after(t.at(1)) // succeeded: met, and settled
                .after(t.at(1)) // settled: met
                .after(t.at(2)) // not spawned, its block there: a placeholder
                .after(t.at(1000)); // not spawned, no block: a placeholder
            assert_eq!(after.deps.len(), 3);
            assert_eq!(settled_in(&t), 1);
            let after = after.spawn();
            task(async {}).id(t.at(2)).spawn();
            task(async {}).id(t.at(1000)).spawn();
            assert!(!after.is_finished());
            open.send(()).unwrap();
            after.await.unwrap();
            pending.await.unwrap();
            assert_eq!(t.len(), 4);
        });
    }

    /// Ids next to the task's own (in its block of the table) are kept by the builder and
    /// looked up with the task's insert ([`TaskRef::near_slot`]): they order the task as
    /// lookups one by one would (a running task waited for, one that succeeded settled and
    /// met, one not spawned yet waited for through its placeholder, a failed one failing
    /// the task), and an id changed afterwards gets them looked up on their own.
    #[test]
    fn ids_next_to_the_tasks_own_are_looked_up_with_its_insert() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        rt.block_on(async {
            let t = TaskSpace::new("N");
            let ran: Arc<[AtomicBool; 4]> = Arc::new(Default::default());
            let mark = |k: usize| {
                let ran = ran.clone();
                async move { ran[k].store(true, SeqCst) }
            };
            let (open, gate) = std::sync::mpsc::channel::<()>();
            let first = mark(0);
            let pending = task(async move {
                let _ = gate.recv();
                first.await
            })
            .id(t.at(0))
            .spawn();
            task(async {}).id(t.at(1)).spawn().await.unwrap();
            let seen = ran.clone();
            let one = t.at(1);
            let after = task(async move { [0, 2, 3].map(|k| seen[k].load(SeqCst)) })
                .id(t.at(7))
                .after(t.at(0)) // running
                .after(&one) // succeeded
                .after([t.at(5), t.at(6)]) // not spawned yet
                .after(t.at(70)); // another block: looked up at once (a placeholder)
            assert_eq!(after.deps.len(), 5);
            assert_eq!(settled_in(&t), 0, "kept ids are looked up at spawn");
            let after = after.spawn();
            assert_eq!(settled_in(&t), 1, "the one that succeeded is settled");
            task(mark(2)).id(t.at(5)).spawn();
            task(mark(3)).id(t.at(6)).spawn();
            task(async {}).id(t.at(70)).spawn();
            open.send(()).unwrap();
            assert_eq!(after.await, Ok([true; 3]));
            pending.await.unwrap();

            let failed = task(async { panic!("a failing neighbour") })
                .id(t.at(2))
                .spawn();
            assert!(failed.await.is_err());
            let r = task(async {}).id(t.at(3)).after(t.at(2)).await;
            assert!(
                matches!(r, Err(TaskError::DependencyFailed { .. })),
                "{r:?}"
            );

            // Kept for the block of 16..24, then named 100: looked up as ids of their own.
            let (open, gate) = std::sync::mpsc::channel::<()>();
            let late = task(async move { gate.recv().is_ok() }).id(t.at(17));
            let b = task(async {}).id(t.at(16)).after(t.at(17)).id(t.at(100));
            assert_eq!(b.deps.len(), 1);
            let b = b.spawn();
            let late = late.spawn();
            open.send(()).unwrap();
            b.await.unwrap();
            assert!(late.is_finished(), "the task waited for its dependency");
            assert_eq!(late.await, Ok(true));
            assert!(t.at(100).is_finished());
            assert!(!t.at(16).is_finished());
        });
    }

    #[test]
    fn ids_of_a_grid_are_found_in_the_tasks_block_and_out_of_it() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let rt = Runtime::builder().cpu_threads(2).build().unwrap();
        rt.block_on(async {
            let t = TaskSpace::new("G");
            let (open, gate) = std::sync::mpsc::channel::<()>();
            let running = task(async move { gate.recv().is_ok() })
                .id(t.at((2, 3)))
                .spawn();
            task(async {}).id(t.at((3, 2))).spawn().await.unwrap();
            let b = task(async {}).id(t.at((3, 3))).after([
                t.at((2, 3)), // above, running: another block
                t.at((3, 2)), // left, succeeded: the block's
                t.at((3, 4)), // right, not spawned yet: the block's
                t.at((3, 8)), // the next block: looked up at once (a placeholder)
            ]);
            assert_eq!(b.deps.len(), 4);
            assert!(
                b.deps.keeps_near(),
                "ids of the block are kept for the insert"
            );
            assert_eq!(settled_in(&t), 0);
            let b = b.spawn();
            assert_eq!(settled_in(&t), 1, "the one that succeeded is settled");
            task(async {}).id(t.at((3, 4))).spawn();
            task(async {}).id(t.at((3, 8))).spawn();
            assert!(!b.is_finished());
            open.send(()).unwrap();
            b.await.unwrap();
            assert!(running.is_finished(), "the task waited for the one above");
            assert_eq!(running.await, Ok(true));

            // A wavefront across blocks: each task finds the ones above and to its left
            // finished; a failure fails what is after it, in its block and beyond.
            let g = TaskSpace::new("W");
            let n = 20;
            let done: Arc<Vec<AtomicBool>> = Arc::new((0..n * n).map(|_| false.into()).collect());
            for i in 0..n {
                for j in 0..n {
                    let done = done.clone();
                    let up = (i > 0).then(|| g.at((i - 1, j)));
                    let left = (j > 0).then(|| g.at((i, j - 1)));
                    task(async move {
                        assert!(i == 0 || done[(i - 1) * n + j].load(SeqCst));
                        assert!(j == 0 || done[i * n + j - 1].load(SeqCst));
                        assert!((i, j) != (9, 9), "a failing task");
                        done[i * n + j].store(true, SeqCst);
                    })
                    .id(g.at((i, j)))
                    .after([up, left])
                    .spawn();
                }
            }
            assert!(g.at((n - 1, n - 1)).await.is_err());
            for (i, j) in [(9, 10), (10, 9), (15, 15), (16, 16)] {
                let r = g.at((i, j)).await;
                assert!(
                    matches!(r, Err(TaskError::DependencyFailed { .. })),
                    "{r:?}"
                );
            }
            for (i, j) in [(8, 9), (9, 8), (0, 19), (19, 0), (8, 19)] {
                assert_eq!(g.at((i, j)).await, Ok(()), "({i}, {j})");
            }
        });
    }

    fn settled_in(t: &TaskSpace) -> u32 {
        t.inner
            .shards
            .iter()
            .map(|s| s.lock().iter().map(|b| b.settled.count_ones()).sum::<u32>())
            .sum()
    }
}
