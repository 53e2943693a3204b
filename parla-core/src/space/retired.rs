//! The compact record of a space's retired ids: which keys were used, and the failures.
//!
//! Keys ending in an integer are kept as runs of consecutive integers per prefix (the
//! parts before the last), so a service retiring `t.at(i)` batch after batch keeps one run;
//! other keys are kept one by one, and so are failures (to answer awaits with the error).
//! Prefixes that themselves end in an integer (keys `(step, i)`, `(s, i, j)`) are rows:
//! consecutive rows with the same runs fold into one band, so a solver retiring
//! `t.at((step, i))` step after step keeps one band, not a row per step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::error::TaskError;
use crate::graph::node::Outcome;
use crate::key::{Key, Part};

/// Runs `start -> last` (inclusive, so that a run can end at `i64::MAX`) of an integer.
type Runs = BTreeMap<i64, i64>;

#[derive(Default)]
pub(super) struct Retired {
    /// Per prefix: the runs of the last integer part (a prefix ending in an integer that is
    /// in a band of `bands` has no entry here).
    runs: HashMap<Vec<Part>, Runs>,
    /// Per outer prefix (the parts before the last two): bands `first -> (last, runs)` of
    /// consecutive values of the second-last integer part whose rows all hold `runs`.
    bands: HashMap<Vec<Part>, BTreeMap<i64, (i64, Runs)>>,
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

/// The row of a prefix ending in an integer: the parts before it, and the integer.
fn row_of(prefix: &[Part]) -> Option<(&[Part], i64)> {
    match prefix.split_last() {
        Some((Part::Int(x), outer)) => Some((outer, *x)),
        _ => None,
    }
}

/// Adds `i` to `runs`, merged with the runs next to it.
fn add_to_runs(runs: &mut Runs, i: i64) {
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

/// Whether `runs` covers `i`.
fn covers(runs: &Runs, i: i64) -> bool {
    runs.range(..=i).next_back().is_some_and(|(_, &l)| l >= i)
}

/// Takes the row `x` of `outer` out of `rows` (the rows kept on their own), if it holds
/// `runs` (to fold it into a band).
fn take_row(rows: &mut HashMap<Vec<Part>, Runs>, outer: &[Part], x: i64, runs: &Runs) -> bool {
    let mut row = outer.to_vec();
    row.push(Part::Int(x));
    let same = rows.get(&row) == Some(runs);
    if same {
        rows.remove(&row);
    }
    same
}

/// The band of `bands` that holds row `x`: its first row.
fn band_of(bands: &BTreeMap<i64, (i64, Runs)>, x: i64) -> Option<i64> {
    bands
        .range(..=x)
        .next_back()
        .filter(|(_, (last, _))| *last >= x)
        .map(|(&first, _)| first)
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
        let Some((outer, x)) = row_of(&prefix) else {
            add_to_runs(self.runs.entry(prefix).or_default(), i);
            return;
        };
        let bands = self.bands.entry(outer.to_vec()).or_default();
        let mut runs = match (self.runs.remove(&prefix), band_of(bands, x)) {
            (Some(runs), _) => runs,
            (None, Some(first)) => {
                // The row leaves its band (whose other rows keep their runs).
                let (last, runs) = bands.remove(&first).expect("band found");
                if first < x {
                    bands.insert(first, (x - 1, runs.clone()));
                }
                if x < last {
                    bands.insert(x + 1, (last, runs.clone()));
                }
                runs
            }
            (None, None) => Runs::new(),
        };
        add_to_runs(&mut runs, i);
        // Folded into the band or row before it and the one after it, where they hold the
        // same runs.
        let (mut first, mut last) = (x, x);
        if let Some(b) = x.checked_sub(1) {
            if let Some(f) = band_of(bands, b).filter(|f| bands[f].1 == runs) {
                first = f;
                bands.remove(&f);
            } else if take_row(&mut self.runs, outer, b, &runs) {
                first = b;
            }
        }
        if let Some(a) = x.checked_add(1) {
            if bands.get(&a).is_some_and(|(_, r)| *r == runs) {
                last = bands.remove(&a).expect("band found").0;
            } else if take_row(&mut self.runs, outer, a, &runs) {
                last = a;
            }
        }
        if (first, last) != (x, x) {
            bands.insert(first, (last, runs));
            return;
        }
        if bands.is_empty() {
            self.bands.remove(outer);
        }
        self.runs.insert(prefix, runs);
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
            Some((prefix, i)) => match self.runs.get(&prefix) {
                Some(runs) => covers(runs, i),
                None => row_of(&prefix).is_some_and(|(outer, x)| {
                    self.bands.get(outer).is_some_and(|bands| {
                        band_of(bands, x).is_some_and(|f| covers(&bands[&f].1, i))
                    })
                }),
            },
            None => self.other.contains(key),
        };
        used.then_some(Ok(()))
    }

    /// Runs, bands and keys held (for tests of the record's size).
    #[cfg(test)]
    fn pieces(&self) -> usize {
        self.runs.values().map(BTreeMap::len).sum::<usize>()
            + self.bands.values().map(BTreeMap::len).sum::<usize>()
            + self.other.len()
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

    /// Rows `(step, i)` retired step after step fold into one band however many steps
    /// there are; a key retired later into a row of a band takes the row out of it (the
    /// rows around keep theirs), and the row folds back once its neighbours catch up.
    #[test]
    fn rows_with_the_same_runs_fold_into_one_band() {
        let mut r = Retired::default();
        for step in 0..10_000i64 {
            for i in (0..8).rev() {
                r.insert(&(step, i).into_key(), Ok(()));
            }
        }
        assert_eq!(r.pieces(), 1, "one band of 10,000 rows");
        assert_eq!(r.count(), 80_000);
        for (k, used) in [((0, 0), true), ((9_999, 7), true), ((5_000, 3), true)]
            .into_iter()
            .chain([((10_000, 0), false), ((5_000, 8), false), ((-1, 0), false)])
        {
            assert_eq!(r.get(&k.into_key()).is_some(), used, "{k:?}");
        }
        // Row 5,000 gets one more: three pieces (two bands, one row with two runs' worth).
        r.insert(&(5_000i64, 9i64).into_key(), Ok(()));
        assert_eq!(r.get(&(5_000, 9).into_key()), Some(Ok(())));
        assert_eq!(r.get(&(5_000, 8).into_key()), None);
        assert_eq!(r.get(&(5_000, 7).into_key()), Some(Ok(())));
        assert_eq!(r.get(&(4_999, 9).into_key()), None);
        assert_eq!(r.get(&(5_001, 9).into_key()), None);
        assert_eq!(r.pieces(), 4, "two bands and the row's two runs");
        for step in [4_999i64, 5_001] {
            r.insert(&(step, 9i64).into_key(), Ok(()));
        }
        r.insert(&(5_000i64, 8i64).into_key(), Ok(()));
        assert_eq!(
            r.pieces(),
            5,
            "bands [0, 4998], [4999], [5001], [5002, 9999]; row 5000"
        );
        // Rows out of order and keys of three parts, one band per outer prefix.
        let mut r = Retired::default();
        for s in 0..3i64 {
            for x in (0..50i64).rev().chain(100..150) {
                for j in 0..4i64 {
                    r.insert(&(s, x, j).into_key(), Ok(()));
                }
            }
        }
        assert_eq!(r.pieces(), 6, "two bands for each of three outer prefixes");
        assert_eq!(r.get(&(2, 120, 3).into_key()), Some(Ok(())));
        assert_eq!(r.get(&(2, 75, 3).into_key()), None);
        assert_eq!(r.get(&(3, 0, 0).into_key()), None);
        // A column `(i, 0)`: one band.
        let mut r = Retired::default();
        for i in 0..1000i64 {
            r.insert(&(i, 0i64).into_key(), Ok(()));
        }
        assert_eq!(r.pieces(), 1);
        // Rows at the ends of the integers.
        let mut r = Retired::default();
        for x in [i64::MAX, i64::MIN, i64::MAX - 1] {
            r.insert(&(x, 0i64).into_key(), Ok(()));
        }
        assert_eq!(r.pieces(), 2);
        assert_eq!(r.get(&(i64::MAX, 0).into_key()), Some(Ok(())));
        assert_eq!(r.get(&(i64::MIN + 1, 0).into_key()), None);
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
