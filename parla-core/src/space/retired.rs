//! The compact record of a space's retired ids: which keys were used, and the failures.
//!
//! Keys ending in an integer are kept as runs of consecutive integers per prefix (the
//! parts before the last), so a service retiring `t.at(i)` batch after batch keeps one run;
//! other keys are kept one by one, and so are failures (to answer awaits with the error).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::error::TaskError;
use crate::graph::node::Outcome;
use crate::key::{Key, Part};

#[derive(Default)]
pub(super) struct Retired {
    /// Per prefix: runs `start -> last` (inclusive, so that a run can end at `i64::MAX`) of
    /// the last integer part.
    runs: HashMap<Vec<Part>, BTreeMap<i64, i64>>,
    /// Retired keys not ending in an integer that fits `i64`.
    other: HashSet<Key>,
    /// Retired tasks that failed.
    failed: HashMap<Key, Arc<TaskError>>,
    /// The failure retired first (what an await of the whole space reports).
    first_failed: Option<Arc<TaskError>>,
    count: usize,
}

/// The prefix and last integer of a key ending in one.
fn split(key: &Key) -> Option<(Vec<Part>, i64)> {
    let mut parts: Vec<Part> = key.parts().collect();
    match parts.pop() {
        Some(Part::Int(i)) => Some((parts, i)),
        _ => None,
    }
}

impl Retired {
    /// Retired tasks so far.
    pub(super) fn count(&self) -> usize {
        self.count
    }

    pub(super) fn insert(&mut self, key: &Key, outcome: Outcome) {
        self.count += 1;
        if let Err(e) = outcome {
            self.first_failed.get_or_insert_with(|| e.clone());
            self.failed.insert(key.clone(), e);
        }
        let Some((prefix, i)) = split(key) else {
            self.other.insert(key.clone());
            return;
        };
        let runs = self.runs.entry(prefix).or_default();
        let (mut start, mut last) = (i, i);
        // Merge with a run ending right before `i` (or covering it), and one starting right
        // after.
        if let Some((&s, &l)) = runs.range(..=i).next_back()
            && l.saturating_add(1) >= i
        {
            start = s;
            last = last.max(l);
            runs.remove(&s);
        }
        if let Some(next) = last.checked_add(1)
            && let Some(l) = runs.remove(&next)
        {
            last = l;
        }
        runs.insert(start, last);
    }

    /// The failure retired first, if any retired task failed.
    pub(super) fn first_failure(&self) -> Option<Arc<TaskError>> {
        self.first_failed.clone()
    }

    /// The outcome of retired `key`, if it was retired.
    pub(super) fn get(&self, key: &Key) -> Option<Outcome> {
        if let Some(e) = self.failed.get(key) {
            return Some(Err(e.clone()));
        }
        let used = match split(key) {
            Some((prefix, i)) => self
                .runs
                .get(&prefix)
                .and_then(|r| r.range(..=i).next_back())
                .is_some_and(|(_, &l)| l >= i),
            None => self.other.contains(key),
        };
        used.then_some(Ok(()))
    }

    /// Runs and keys held (for tests of the record's size).
    #[cfg(test)]
    fn pieces(&self) -> usize {
        self.runs.values().map(BTreeMap::len).sum::<usize>() + self.other.len()
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::key::IntoKey;

    #[test]
    fn consecutive_integers_make_one_run() {
        let mut r = Retired::default();
        for i in (0..1000).rev().step_by(2).chain((0..1000).step_by(2)) {
            r.insert(&("step", i).into_key(), Ok(()));
        }
        assert_eq!(r.pieces(), 1);
        assert_eq!(r.count(), 1000);
        assert_eq!(r.get(&("step", 999).into_key()), Some(Ok(())));
        assert_eq!(r.get(&("step", 1000).into_key()), None);
        assert_eq!(r.get(&("other", 1).into_key()), None);
        r.insert(&"name".into_key(), Ok(()));
        assert_eq!(r.get(&"name".into_key()), Some(Ok(())));
    }

    #[test]
    fn runs_reach_both_ends_of_the_integers() {
        let mut r = Retired::default();
        for i in [i64::MAX, i64::MIN, i64::MAX - 1, i64::MIN + 1, 0] {
            r.insert(&i.into_key(), Ok(()));
            r.insert(&(3, i).into_key(), Ok(()));
        }
        assert_eq!(
            r.pieces(),
            6,
            "one run at each end and one at 0, for each prefix"
        );
        for i in [i64::MAX, i64::MIN, i64::MAX - 1, i64::MIN + 1, 0] {
            assert_eq!(r.get(&i.into_key()), Some(Ok(())), "{i}");
            assert_eq!(r.get(&(3, i).into_key()), Some(Ok(())), "{i}");
        }
        for i in [i64::MAX - 2, i64::MIN + 2, 1, -1] {
            assert_eq!(r.get(&i.into_key()), None, "{i}");
        }
        r.insert(&1.into_key(), Ok(()));
        r.insert(&(-1).into_key(), Ok(()));
        assert_eq!(r.pieces(), 6, "-1, 0 and 1 merge");
        assert_eq!(r.get(&(-1).into_key()), Some(Ok(())));
    }

    #[test]
    fn failures_are_kept() {
        let mut r = Retired::default();
        let e = Arc::new(TaskError::NoRuntime { task: "x".into() });
        r.insert(&3.into_key(), Err(e.clone()));
        r.insert(&5.into_key(), Ok(()));
        assert_eq!(r.pieces(), 2);
        assert!(matches!(r.get(&3.into_key()), Some(Err(_))));
        r.insert(&4.into_key(), Ok(()));
        assert_eq!(r.pieces(), 1, "3, 4 and 5 merge");
        assert!(matches!(r.get(&3.into_key()), Some(Err(_))));
    }
}
