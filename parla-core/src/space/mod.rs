//! Task spaces: named collections of task ids that tasks and awaits refer to.
//!
//! # Invariants
//! - A key maps to at most one entry: a placeholder (referenced, not spawned yet) or the
//!   task spawned under it. Spawning over a placeholder replaces the entry with the task
//!   and makes the placeholder the task's dependent, so everything already waiting on the
//!   placeholder is told when the task finishes.
//! - Entries are never removed while the space lives: a finished id stays finished, and a
//!   second spawn under it is a `DuplicateId`.

mod key;
mod wait;

use std::fmt;
use std::future::IntoFuture;
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::Mutex;

pub use key::{IntoKey, IntoPart, Key, Part};
pub use wait::{RangeWait, RefWait, SpaceWait};

use crate::runtime::RtInner;
use crate::task::header::{Header, Kind, Name};
use crate::task::{Placeholder, Task};

const SHARDS: usize = 16;

/// One shard: entries found by the key's hash, computed once per operation.
type Map = HashTable<(Key, Arc<dyn Task>)>;

struct SpaceInner {
    name: Arc<str>,
    shards: [Mutex<Map>; SHARDS],
}

/// A named space of task ids: `TaskSpace::new("T")`, then `t.at(i)`, `t.at(("cpu", i))`.
///
/// A cheap `Clone` handle: clones share the same ids. Await a space (by value or by
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
/// # Ok::<_, parla_core::TaskError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct TaskSpace {
    inner: Arc<SpaceInner>,
}

impl TaskSpace {
    /// A new, empty space.
    pub fn new(name: impl Into<String>) -> TaskSpace {
        let name: String = name.into();
        TaskSpace {
            inner: Arc::new(SpaceInner {
                name: Arc::from(name),
                shards: Default::default(),
            }),
        }
    }

    /// The space's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A reference to the task with this key, spawned or not (yet).
    pub fn at(&self, key: impl IntoKey) -> TaskRef {
        TaskRef {
            space: self.clone(),
            key: key.into_key(),
        }
    }

    /// The tasks with integer keys in `range`: `t.range(0..n)`, `t.range(1..=n)`.
    pub fn range(&self, range: impl KeyRange) -> TaskRange {
        let (start, end) = range.bounds();
        TaskRange {
            space: self.clone(),
            start,
            end,
        }
    }

    /// How many tasks were spawned into the space (placeholders not counted).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .iter()
                    .filter(|(_, t)| t.header().kind == Kind::Task)
                    .count()
            })
            .sum()
    }

    /// Whether no task was spawned into the space yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn name_arc(&self) -> Arc<str> {
        self.inner.name.clone()
    }

    fn shard(&self, hash: u64) -> &Mutex<Map> {
        // Middle bits: the table uses the low bits for buckets and the top ones for tags.
        &self.inner.shards[(hash >> 32) as usize % SHARDS]
    }

    /// The entry for `key`, creating a placeholder (registered with `rt` for the stall
    /// resolver) if nothing was spawned or referenced under it yet.
    pub(crate) fn node(&self, key: &Key, rt: Option<&RtInner>) -> Option<Arc<dyn Task>> {
        let h = key.fx();
        let mut map = self.shard(h).lock();
        if let Some((_, t)) = map.find(h, |(k, _)| k == key) {
            return Some(t.clone());
        }
        let rt = rt?;
        let p: Arc<dyn Task> = Arc::new(Placeholder::new(Header::new(
            Name::Id(self.inner.name.clone(), key.clone()),
            Kind::Placeholder,
            0,
            0,
            0,
        )));
        map.insert_unique(h, (key.clone(), p.clone()), |(k, _)| k.fx());
        drop(map);
        rt.register_forward(p.clone());
        Some(p)
    }

    /// Records `task` under `key`. Returns the placeholder it replaces, if the id was
    /// referenced before, or `Err` if a task was already spawned under it.
    pub(crate) fn insert(
        &self,
        key: &Key,
        task: &Arc<dyn Task>,
    ) -> Result<Option<Arc<dyn Task>>, ()> {
        let h = key.fx();
        let mut map = self.shard(h).lock();
        match map.find_mut(h, |(k, _)| k == key) {
            None => {
                map.insert_unique(h, (key.clone(), task.clone()), |(k, _)| k.fx());
                Ok(None)
            }
            Some((_, e)) if e.header().kind == Kind::Placeholder && e.header().resolve() => {
                Ok(Some(std::mem::replace(e, task.clone())))
            }
            Some(_) => Err(()),
        }
    }

    /// Every task spawned into the space so far.
    pub(crate) fn tasks(&self) -> Vec<Arc<dyn Task>> {
        let mut out = Vec::new();
        for s in &self.inner.shards {
            out.extend(
                s.lock()
                    .iter()
                    .filter(|(_, t)| t.header().kind == Kind::Task)
                    .map(|(_, t)| t.clone()),
            );
        }
        out
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
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
impl Eq for TaskSpace {}

/// A reference to one task id: `t.at(key)`. The task need not be spawned yet.
///
/// Await it (by value or by reference) to wait for the task: `Ok(())` once it completed,
/// its error if it failed. Use it in [`TaskBuilder::id`](crate::TaskBuilder::id) to name a
/// task, and in [`TaskBuilder::after`](crate::TaskBuilder::after) to depend on one.
#[derive(Clone, PartialEq, Eq)]
pub struct TaskRef {
    pub(crate) space: TaskSpace,
    pub(crate) key: Key,
}

impl TaskRef {
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
        self.space
            .node(&self.key, None)
            .is_some_and(|t| t.header().kind == Kind::Task && t.header().outcome().is_some())
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
#[derive(Clone, PartialEq, Eq)]
pub struct TaskRange {
    pub(crate) space: TaskSpace,
    pub(crate) start: i128,
    pub(crate) end: i128,
}

impl TaskRange {
    /// How many ids the range covers.
    pub fn len(&self) -> usize {
        (self.end - self.start).max(0) as usize
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
