//! The compact record of a space's retired ids: which keys were used, and the failures.
//!
//! A key's trailing integer parts (all of `(step, i, j)`, the `i` of `("cpu", i)`) are kept
//! in a set per head (the parts before them) and per count of them, as nested ranges: the
//! values of the first integer in ranges, each range with the set of what follows it that
//! every value in it holds; neighbouring ranges holding the same set are one. So a service
//! retiring `t.at(i)` batch after batch keeps one range, a solver retiring `t.at((step, i))`
//! or `t.at((step, i, j))` step after step keeps one range of steps (with the rows and
//! columns of one), not an entry per step. Other keys are kept one by one, and so are
//! failures (to answer awaits with the error).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::error::TaskError;
use crate::graph::node::Outcome;
use crate::key::{Key, MAX_PARTS, Part};

/// Integers in ranges `first -> (last, rest)` (inclusive, so that a range can end at
/// `i64::MAX`): every value of a range was used with each of the integers `rest` holds
/// after it (`None`: the value was the key's last part). Neighbouring ranges differ in
/// `rest`.
#[derive(Clone, Default, PartialEq, Debug)]
struct Ranges(BTreeMap<i64, (i64, Option<Box<Ranges>>)>);

impl Ranges {
    /// The first value of the range holding `x`.
    fn range_of(&self, x: i64) -> Option<i64> {
        self.0
            .range(..=x)
            .next_back()
            .filter(|(_, (last, _))| *last >= x)
            .map(|(&first, _)| first)
    }

    /// Adds the integers `prefix` followed by each of `lo..=hi` (`lo <= hi`): a run of
    /// consecutive last parts, added at the cost of one.
    fn insert_run(&mut self, prefix: &[i64], lo: i64, hi: i64) {
        let Some((&x, rest)) = prefix.split_first() else {
            return self.insert_last(lo, hi);
        };
        // What `x` holds: the set of its range (which is split around `x`), or nothing yet.
        let mut held = match self.range_of(x) {
            Some(first) => {
                let (last, held) = self.0.remove(&first).expect("range found");
                if first < x {
                    self.0.insert(first, (x - 1, held.clone()));
                }
                if x < last {
                    self.0.insert(x + 1, (last, held.clone()));
                }
                held
            }
            None => None,
        };
        held.get_or_insert_default().insert_run(rest, lo, hi);
        // Joined with the ranges before and after it where they hold the same.
        let (mut first, mut last) = (x, x);
        if let Some(b) = x.checked_sub(1)
            && let Some(f) = self.range_of(b)
            && self.0[&f].1 == held
        {
            first = f;
            self.0.remove(&f);
        }
        if let Some(a) = x.checked_add(1)
            && self.0.get(&a).is_some_and(|(_, h)| *h == held)
        {
            last = self.0.remove(&a).expect("range found").0;
        }
        self.0.insert(first, (last, held));
    }

    /// Adds the last parts `lo..=hi` (`lo <= hi`) at the level of keys' last parts (where
    /// no range holds a set): one range with every range it overlaps or touches.
    fn insert_last(&mut self, lo: i64, hi: i64) {
        let (mut first, mut last) = (lo, hi);
        // Ranges are disjoint and sorted: the ones to join start at or before `hi + 1`
        // and end at or after `lo - 1`, going down from `hi + 1`.
        let above = hi.saturating_add(1);
        let below = lo.saturating_sub(1);
        while let Some((&f, &(l, _))) = self.0.range(..=above).next_back() {
            if l < below {
                break;
            }
            self.0.remove(&f);
            first = first.min(f);
            last = last.max(l);
        }
        self.0.insert(first, (last, None));
    }

    /// Whether the integers `ints` were added.
    fn contains(&self, ints: &[i64]) -> bool {
        let Some(first) = self.range_of(ints[0]) else {
            return false;
        };
        match (&self.0[&first].1, &ints[1..]) {
            (None, []) => true,
            (Some(h), rest) if !rest.is_empty() => h.contains(rest),
            _ => false,
        }
    }

    /// How many integers from `x` on are in the range holding `x` (at the level of
    /// keys' last parts), if one does.
    fn run_from(&self, x: i64) -> i128 {
        self.0
            .range(..=x)
            .next_back()
            .filter(|(_, (last, _))| *last >= x)
            .map_or(0, |(_, (last, _))| *last as i128 - x as i128 + 1)
    }

    /// Ranges held, at every level.
    #[cfg(test)]
    fn pieces(&self) -> usize {
        self.0
            .values()
            .map(|(_, h)| 1 + h.as_ref().map_or(0, |h| h.pieces()))
            .sum()
    }
}

#[derive(Default)]
pub(super) struct Retired {
    /// Keys of integers only, per count of them less one: the integers used. (Looked up
    /// at every spawn under an id once the space retired some: without a hash or a copy.)
    all_ints: [Ranges; MAX_PARTS],
    /// Per head (the parts before the trailing integers, at least one) and count of
    /// trailing integers: the trailing integers used.
    ints: FxHashMap<(Vec<Part>, usize), Ranges>,
    /// Retired keys not ending in an integer that fits `i64`.
    other: FxHashSet<Key>,
    /// Retired tasks that failed.
    failed: FxHashMap<Key, Arc<TaskError>>,
    /// The failure retired first (what an await of the whole space reports).
    first_failed: Option<(Key, Arc<TaskError>)>,
    count: usize,
}

/// Where the record keeps a key.
enum Place<'k> {
    /// A key of integers only (borrowed from the key in its inline form): the set for
    /// their count, in `all_ints`.
    Ints(Cow<'k, [i64]>),
    /// A head of at least one part and the integers after it: the set for the head and
    /// their count, in `ints`.
    Headed(Vec<Part>, Vec<i64>),
    /// A key not ending in an integer that fits `i64`: in `other`.
    Other,
}

/// Where the record keeps `key`: a key of integers is looked at without a copy (inline:
/// each spawn under an id asks the record once the space retired some).
#[inline(always)]
fn place(key: &Key) -> Place<'_> {
    match key.as_ints() {
        Some(ints) => Place::Ints(Cow::Borrowed(ints)),
        None => place_of_parts(key),
    }
}

/// [`place`] of a key with a string or a large unsigned part.
fn place_of_parts(key: &Key) -> Place<'static> {
    let mut head: Vec<Part> = key.parts().collect();
    let mut ints = Vec::new();
    while let Some(Part::Int(i)) = head.last() {
        ints.push(*i);
        head.pop();
    }
    ints.reverse();
    match (head.is_empty(), ints.is_empty()) {
        (_, true) => Place::Other,
        (true, false) => Place::Ints(Cow::Owned(ints)),
        (false, false) => Place::Headed(head, ints),
    }
}

impl Retired {
    /// Retired tasks so far.
    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// Records the `n` keys from `first` on that differ only in their last part, an
    /// integer counting up from `first`'s (`n` is 1 for a key not ending in one), as used
    /// by tasks that succeeded.
    pub(super) fn insert_run(&mut self, first: &Key, n: usize) {
        debug_assert!(n >= 1);
        let (ranges, ints) = match place(first) {
            Place::Ints(ints) => (&mut self.all_ints[ints.len() - 1], ints),
            Place::Headed(head, ints) => {
                let k = ints.len();
                (self.ints.entry((head, k)).or_default(), Cow::Owned(ints))
            }
            Place::Other => {
                debug_assert_eq!(n, 1, "a key not ending in an integer is a run of one");
                self.count += 1;
                self.other.insert(first.clone());
                return;
            }
        };
        self.count += n;
        let (lo, prefix) = ints.split_last().expect("at least one integer");
        ranges.insert_run(prefix, *lo, lo.saturating_add(n as i64 - 1));
    }

    /// Records `key` as used by a task with `outcome`.
    pub(super) fn insert(&mut self, key: &Key, outcome: Outcome) {
        if let Err(e) = outcome {
            self.first_failed
                .get_or_insert_with(|| (key.clone(), e.clone()));
            self.failed.insert(key.clone(), e);
        }
        self.insert_run(key, 1);
    }

    /// How many keys of one integer from `x` on were retired, all of them by tasks that
    /// succeeded (0 while any retired task failed: those are found one by one).
    pub(super) fn succeeded_from(&self, x: i64) -> i128 {
        if !self.failed.is_empty() {
            return 0;
        }
        self.all_ints[0].run_from(x)
    }

    /// The failure retired first, and its task's key, if any retired task failed.
    pub(super) fn first_failure(&self) -> Option<(Key, Arc<TaskError>)> {
        self.first_failed.clone()
    }

    /// The outcome of retired `key`, if it was retired.
    pub(super) fn get(&self, key: &Key) -> Option<Outcome> {
        if !self.failed.is_empty()
            && let Some(e) = self.failed.get(key)
        {
            return Some(Err(e.clone()));
        }
        let used = match place(key) {
            Place::Ints(ints) => self.all_ints[ints.len() - 1].contains(&ints),
            Place::Headed(head, ints) => {
                let k = ints.len();
                self.ints.get(&(head, k)).is_some_and(|r| r.contains(&ints))
            }
            Place::Other => self.other.contains(key),
        };
        used.then_some(Ok(()))
    }

    /// Ranges and keys held (for tests of the record's size).
    #[cfg(test)]
    fn pieces(&self) -> usize {
        self.all_ints
            .iter()
            .chain(self.ints.values())
            .map(Ranges::pieces)
            .sum::<usize>()
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
            7,
            "one range at each end and one at 0 for the keys of one integer; one of 3 for the \
             keys of two, with those three"
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
        assert_eq!(r.pieces(), 7, "-1, 0 and 1 merge");
        assert_eq!(r.get(&(-1).into_key()), Some(Ok(())));
    }

    /// Rows `(step, i)` retired step after step fold into one range of steps however many
    /// steps there are; a key retired later into a row of a range takes the row out of it
    /// (the rows around keep theirs), and the row folds back once its neighbours catch up.
    #[test]
    fn rows_with_the_same_runs_fold_into_one_band() {
        let mut r = Retired::default();
        for step in 0..10_000i64 {
            for i in (0..8).rev() {
                r.insert(&(step, i).into_key(), Ok(()));
            }
        }
        assert_eq!(r.pieces(), 2, "one range of 10,000 steps, holding one of 8");
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
        assert_eq!(
            r.pieces(),
            7,
            "three ranges of steps, holding one, two (0 to 7 and 9) and one"
        );
        for step in [4_999i64, 5_001] {
            r.insert(&(step, 9i64).into_key(), Ok(()));
        }
        r.insert(&(5_000i64, 8i64).into_key(), Ok(()));
        assert_eq!(
            r.pieces(),
            12,
            "steps [0, 4998], [4999], [5000], [5001], [5002, 9999], holding 1, 2, 1, 2, 1"
        );
        for step in [4_999i64, 5_001] {
            r.insert(&(step, 8i64).into_key(), Ok(()));
        }
        assert_eq!(
            r.pieces(),
            6,
            "steps [0, 4998], [4999, 5001], [5002, 9999] (the row back in one range)"
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
        assert_eq!(
            r.pieces(),
            5,
            "one range of steps, holding two of rows, each holding one of columns"
        );
        assert_eq!(r.get(&(2, 120, 3).into_key()), Some(Ok(())));
        assert_eq!(r.get(&(2, 75, 3).into_key()), None);
        assert_eq!(r.get(&(3, 0, 0).into_key()), None);
        // A column `(i, 0)`: one range.
        let mut r = Retired::default();
        for i in 0..1000i64 {
            r.insert(&(i, 0i64).into_key(), Ok(()));
        }
        assert_eq!(r.pieces(), 2);
        // Rows at the ends of the integers.
        let mut r = Retired::default();
        for x in [i64::MAX, i64::MIN, i64::MAX - 1] {
            r.insert(&(x, 0i64).into_key(), Ok(()));
        }
        assert_eq!(r.pieces(), 4);
        assert_eq!(r.get(&(i64::MAX, 0).into_key()), Some(Ok(())));
        assert_eq!(r.get(&(i64::MIN + 1, 0).into_key()), None);
    }

    /// Keys `(step, i, j)` of a stencil's tiles, retired step after step (the rows and
    /// columns in any order), keep one range of steps: the record does not grow with the
    /// steps (it kept one band of rows per step, about 0.9 KB a step). Keys with a name
    /// before their integers, or with another count of them, have sets of their own.
    #[test]
    fn three_integer_keys_fold_over_the_outer_one() {
        let mut r = Retired::default();
        for step in 0..20_000i64 {
            for i in [2i64, 0, 3, 1] {
                for j in [1i64, 3, 0, 2] {
                    r.insert(&(step, i, j).into_key(), Ok(()));
                }
            }
            if step % 5_000 == 0 {
                assert_eq!(r.pieces(), 3, "step {step}");
            }
        }
        assert_eq!(r.pieces(), 3, "steps, rows, columns: one range each");
        for (k, used) in [
            ((0, 0, 0), true),
            ((19_999, 3, 3), true),
            ((20_000, 0, 0), false),
            ((7, 4, 0), false),
            ((7, 0, 4), false),
        ] {
            assert_eq!(r.get(&k.into_key()).is_some(), used, "{k:?}");
        }
        assert_eq!(r.get(&(7, 0).into_key()), None, "two integers: another set");
        r.insert(&("halo", 7, 0, 1).into_key(), Ok(()));
        assert_eq!(r.get(&("halo", 7, 0, 1).into_key()), Some(Ok(())));
        assert_eq!(r.get(&("halo", 7, 0, 0).into_key()), None);
        assert_eq!(r.get(&(7, 0, 1).into_key()), Some(Ok(())));
        assert_eq!(r.pieces(), 6);
    }

    proptest::proptest! {
        // (No file of failing cases written into the source tree, as the workspace's
        // other property tests.)
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]
        /// A run recorded at once leaves the record as its keys recorded one by one would:
        /// the same ranges at every level (so the same keys used, and as few pieces),
        /// whatever runs came before, overlapping, touching or apart, near the ends of the
        /// integers too.
        #[test]
        fn a_run_is_recorded_as_its_keys_one_by_one(
            runs in proptest::collection::vec(
                (0i64..3, 0i64..3, proptest::prop_oneof![0i64..40, i64::MAX - 40..=i64::MAX], 1usize..12),
                1..40,
            ),
        ) {
            let (mut at_once, mut one_by_one) = (Retired::default(), Retired::default());
            for (depth, row, lo, n) in runs {
                let n = n.min((i64::MAX - lo) as usize + 1);
                let key = |x: i64| match depth {
                    0 => x.into_key(),
                    1 => (row, x).into_key(),
                    _ => ("tile", row, 7, x).into_key(),
                };
                at_once.insert_run(&key(lo), n);
                for x in lo..=lo + (n as i64 - 1) {
                    one_by_one.insert(&key(x), Ok(()));
                }
            }
            proptest::prop_assert_eq!(at_once.count(), one_by_one.count());
            proptest::prop_assert_eq!(&at_once.ints, &one_by_one.ints);
            proptest::prop_assert_eq!(&at_once.all_ints, &one_by_one.all_ints);
        }
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
