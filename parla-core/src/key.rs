//! Task keys: integers, strings and tuples of up to four of them.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// One component of a [`Key`].
///
/// Integers compare by value whatever their Rust type: `0usize`, `0i32` and `0u8` are the
/// same part.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// An integer that fits in `i64`.
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// A string.
    Str(Arc<str>),
}

/// A part displays as it is: `3`, `cpu`. A string that would read as something else is
/// quoted: one that reads as an integer (`"1"`, not `1`), holds a separator, bracket, quote
/// or control character (`"a, b"`, one part, not two), is empty, or begins or ends with
/// whitespace.
impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Int(v) => write!(f, "{v}"),
            Part::UInt(v) => write!(f, "{v}"),
            Part::Str(s) if plain(s) => f.write_str(s),
            Part::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Whether string part `s` displays unquoted (see [`Part`]'s `Display`).
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.parse::<i128>().is_err()
        && !s.starts_with(char::is_whitespace)
        && !s.ends_with(char::is_whitespace)
        && !s
            .chars()
            .any(|c| matches!(c, ',' | '[' | ']' | '(' | ')' | '"' | '\\') || c.is_control())
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Str(s) => write!(f, "{s:?}"),
            other => fmt::Display::fmt(other, f),
        }
    }
}

/// Converts a value into one key [`Part`].
pub trait IntoPart {
    /// The part.
    fn into_part(self) -> Part;

    /// The part as an `i64`, if it is an integer that fits: keys of such parts are built
    /// without a [`Part`] made for each. (`None` by default: the key takes
    /// [`into_part`](Self::into_part).)
    #[doc(hidden)]
    #[inline(always)]
    fn as_i64(&self) -> Option<i64> {
        None
    }
}

macro_rules! signed_part {
    ($($t:ty),*) => {$(
        impl IntoPart for $t {
            #[inline]
            fn into_part(self) -> Part { Part::Int(self as i64) }
            #[inline(always)]
            fn as_i64(&self) -> Option<i64> { Some(*self as i64) }
        }
    )*};
}
signed_part!(i8, i16, i32, i64, isize, u8, u16, u32);

macro_rules! unsigned_part {
    ($($t:ty),*) => {$(
        impl IntoPart for $t {
            #[inline]
            fn into_part(self) -> Part {
                match i64::try_from(self) {
                    Ok(v) => Part::Int(v),
                    Err(_) => Part::UInt(self as u64),
                }
            }
            #[inline(always)]
            fn as_i64(&self) -> Option<i64> { i64::try_from(*self).ok() }
        }
    )*};
}
unsigned_part!(u64, usize);

impl IntoPart for &str {
    fn into_part(self) -> Part {
        Part::Str(Arc::from(self))
    }
}
impl IntoPart for String {
    fn into_part(self) -> Part {
        Part::Str(Arc::from(self))
    }
}
impl IntoPart for &String {
    fn into_part(self) -> Part {
        Part::Str(Arc::from(self.as_str()))
    }
}
impl IntoPart for Arc<str> {
    fn into_part(self) -> Part {
        Part::Str(self)
    }
}
impl IntoPart for Part {
    fn into_part(self) -> Part {
        self
    }
}

/// The most parts a key can have.
pub const MAX_PARTS: usize = 4;

/// A task's key inside its [`TaskSpace`](crate::TaskSpace): one to four [`Part`]s.
///
/// Built from an integer, a string, or a tuple of up to four of those:
/// `t.at(3)`, `t.at("sum")`, `t.at(("cpu", i))`, `t.at((i, j, k))`. Keys of integers (that
/// fit in `i64`) are stored inline in 40 bytes and never allocate; keys with a string share
/// one allocation.
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    /// Every part an `Int`: the canonical form whenever possible, so that a key equals
    /// another only within the same form. The parts are the last `len` of `v` (the ones
    /// before are zero): a key's last part, which names its slot in its block (see
    /// [`Key::block`]), is at the same place whatever its length.
    Ints { len: u8, v: [i64; MAX_PARTS] },
    /// At least one part is a string or a large unsigned integer.
    Parts(Arc<[Part]>),
}

impl Key {
    #[inline]
    fn from_parts<const N: usize>(mut parts: [Part; N]) -> Key {
        const { assert!(N >= 1 && N <= MAX_PARTS) };
        for p in &mut parts {
            // One form for an integer whatever its spelling (`Part::UInt(5)` is `5`).
            if let Part::UInt(u) = *p
                && let Ok(i) = i64::try_from(u)
            {
                *p = Part::Int(i);
            }
        }
        // Right-aligned: the last part at `v[MAX_PARTS - 1]` whatever the length (see
        // `Repr::Ints`).
        let mut v = [0i64; MAX_PARTS];
        for (slot, p) in v[MAX_PARTS - N..].iter_mut().zip(&parts) {
            match p {
                Part::Int(i) => *slot = *i,
                _ => return Key(Repr::Parts(Arc::from(parts))),
            }
        }
        Key(Repr::Ints { len: N as u8, v })
    }

    /// A key of integer parts `v`.
    #[inline(always)]
    fn from_ints<const N: usize>(v: [i64; N]) -> Key {
        const { assert!(N >= 1 && N <= MAX_PARTS) };
        let mut all = [0i64; MAX_PARTS];
        all[MAX_PARTS - N..].copy_from_slice(&v);
        Key(Repr::Ints {
            len: N as u8,
            v: all,
        })
    }

    /// The key's parts, if every one is an integer that fits `i64` (the key's inline form).
    #[inline]
    pub(crate) fn as_ints(&self) -> Option<&[i64]> {
        match &self.0 {
            Repr::Ints { len, v } => Some(&v[MAX_PARTS - *len as usize..]),
            Repr::Parts(_) => None,
        }
    }

    /// How many parts the key has.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Ints { len, .. } => *len as usize,
            Repr::Parts(p) => p.len(),
        }
    }

    /// Keys have at least one part; this is always `false`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key's parts.
    pub fn parts(&self) -> impl Iterator<Item = Part> + '_ {
        let (ints, parts): (&[i64], &[Part]) = match &self.0 {
            Repr::Ints { len, v } => (&v[MAX_PARTS - *len as usize..], &[]),
            Repr::Parts(p) => (&[], p),
        };
        ints.iter()
            .map(|&i| Part::Int(i))
            .chain(parts.iter().cloned())
    }

    /// The integer value of a one-part integer key, if it is one.
    pub fn as_int(&self) -> Option<i128> {
        match &self.0 {
            Repr::Ints { len: 1, v } => Some(v[MAX_PARTS - 1] as i128),
            Repr::Parts(p) => match &p[..] {
                [Part::UInt(v)] => Some(*v as i128),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Key {
    /// The key's block in a task space's table, and its slot in the block.
    ///
    /// Keys that differ only in the low bits of a last integer part share a block of
    /// [`BLOCK`] slots: consecutive integers, or `(i, j)` for consecutive `j`, which
    /// programs spawn one after the other, so that their inserts and lookups find the
    /// block in cache instead of each missing on a line of its own. Any other key (one
    /// ending in a string or a large unsigned integer) has a block of its own, at slot 0.
    /// The hash is the block's (Fx mixing), computed once per lookup.
    #[inline(always)]
    pub(crate) fn block(&self) -> (u64, usize) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        match &self.0 {
            Repr::Ints { len, v } => {
                // All four integers (unused ones are zero), the last one's low bits dropped:
                // a fixed number of rounds, without branches.
                let mut w = *v;
                w[LAST] >>= BLOCK_SHIFT;
                let mut h = *len as u64;
                for i in w {
                    h = (h.rotate_left(26) ^ i as u64).wrapping_mul(K);
                }
                (h, (v[LAST] & BLOCK_MASK) as usize)
            }
            Repr::Parts(p) => {
                let mut s = rustc_hash::FxHasher::default();
                match p.split_last() {
                    Some((Part::Int(last), prefix)) => {
                        prefix.hash(&mut s);
                        s.write_i64(last >> BLOCK_SHIFT);
                        (s.finish(), (last & BLOCK_MASK) as usize)
                    }
                    _ => {
                        s.write_u8(0xff);
                        p.hash(&mut s);
                        (s.finish(), 0)
                    }
                }
            }
        }
    }

    /// The key of slot `slot` in this key's block.
    pub(crate) fn in_block(&self, slot: usize) -> Key {
        let with_slot = |i: i64| (i & !BLOCK_MASK) | (slot as i64 & BLOCK_MASK);
        match &self.0 {
            Repr::Ints { len, v } => {
                let mut v = *v;
                v[LAST] = with_slot(v[LAST]);
                Key(Repr::Ints { len: *len, v })
            }
            Repr::Parts(p) => match p.split_last() {
                Some((Part::Int(last), prefix)) => {
                    let mut parts = prefix.to_vec();
                    parts.push(Part::Int(with_slot(*last)));
                    Key(Repr::Parts(parts.into()))
                }
                _ => self.clone(),
            },
        }
    }

    /// The key's slot in its block (see [`block`](Self::block)).
    #[inline(always)]
    pub(crate) fn slot(&self) -> usize {
        match &self.0 {
            Repr::Ints { v, .. } => (v[LAST] & BLOCK_MASK) as usize,
            Repr::Parts(p) => match p.last() {
                Some(Part::Int(last)) => (last & BLOCK_MASK) as usize,
                _ => 0,
            },
        }
    }

    /// The slot of `other` when it is another key of this key's block (see
    /// [`block`](Self::block)).
    #[inline(always)]
    pub(crate) fn near_slot(&self, other: &Key) -> Option<usize> {
        match (&self.0, &other.0) {
            (Repr::Ints { len: a, v: x }, Repr::Ints { len: b, v: y }) => {
                (a == b && same_ints_block(x, y) && x[LAST] != y[LAST])
                    .then_some((y[LAST] & BLOCK_MASK) as usize)
            }
            _ => (self.same_block(other) && self != other).then(|| other.slot()),
        }
    }

    /// Whether `other` is in this key's block (see [`block`](Self::block)).
    #[inline(always)]
    pub(crate) fn same_block(&self, other: &Key) -> bool {
        match (&self.0, &other.0) {
            (Repr::Ints { len: a, v: x }, Repr::Ints { len: b, v: y }) => {
                a == b && same_ints_block(x, y)
            }
            (Repr::Parts(x), Repr::Parts(y)) => match (x.split_last(), y.split_last()) {
                (Some((Part::Int(i), xp)), Some((Part::Int(j), yp))) => {
                    i >> BLOCK_SHIFT == j >> BLOCK_SHIFT && xp == yp
                }
                _ => x == y,
            },
            _ => false,
        }
    }
}

/// Whether integer keys of one length with parts `x` and `y` share a block: unused parts
/// are zero in both, so comparing all four is exact; the last parts agree on their block
/// when their bits above the low ones do.
#[inline(always)]
fn same_ints_block(x: &[i64; MAX_PARTS], y: &[i64; MAX_PARTS]) -> bool {
    let diff = (x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | ((x[LAST] ^ y[LAST]) >> BLOCK_SHIFT);
    diff == 0
}

/// The slots of a block whose bits are set in `bits` (a bit per slot), in order.
#[inline(always)]
pub(crate) fn block_slots(mut bits: u8) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let slot = bits.trailing_zeros() as usize;
        bits &= bits.wrapping_sub(1);
        (slot < BLOCK).then_some(slot)
    })
}

/// Slots per block of a task space's table (see [`Key::block`]).
pub(crate) const BLOCK: usize = 1 << BLOCK_SHIFT;
const BLOCK_SHIFT: u32 = 3;
const BLOCK_MASK: i64 = BLOCK as i64 - 1;
/// Where an integer key's last part is (see `Repr::Ints`).
const LAST: usize = MAX_PARTS - 1;
const _: () = assert!(BLOCK <= u8::BITS as usize);

impl PartialEq for Key {
    #[inline]
    fn eq(&self, other: &Key) -> bool {
        match (&self.0, &other.0) {
            (Repr::Ints { len: a, v: x }, Repr::Ints { len: b, v: y }) => {
                // Unused slots are zero in both, so comparing all four is exact.
                a == b && x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3]
            }
            (Repr::Parts(x), Repr::Parts(y)) => x == y,
            _ => false,
        }
    }
}
impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match &self.0 {
            Repr::Ints { len, v } => {
                for i in &v[MAX_PARTS - *len as usize..] {
                    state.write_i64(*i);
                }
            }
            Repr::Parts(p) => {
                state.write_u8(0xff);
                p.hash(state);
            }
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.parts().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            fmt::Display::fmt(&p, f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, p) in self.parts().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            fmt::Debug::fmt(&p, f)?;
        }
        f.write_str(")")
    }
}

/// Converts a value into a [`Key`]: integers, strings, [`Part`]s, and tuples of up to four.
pub trait IntoKey {
    /// The key.
    fn into_key(self) -> Key;
}

impl IntoKey for Key {
    fn into_key(self) -> Key {
        self
    }
}
impl IntoKey for &Key {
    fn into_key(self) -> Key {
        self.clone()
    }
}

impl<T: IntoPart> IntoKey for T {
    #[inline]
    fn into_key(self) -> Key {
        match self.as_i64() {
            Some(i) => Key::from_ints([i]),
            None => Key::from_parts([self.into_part()]),
        }
    }
}

macro_rules! tuple_key {
    ($($name:ident),+) => {
        impl<$($name: IntoPart),+> IntoKey for ($($name,)+) {
            #[inline]
            #[allow(non_snake_case)]
            fn into_key(self) -> Key {
                let ($($name,)+) = self;
                if let ($(Some($name),)+) = ($($name.as_i64(),)+) {
                    return Key::from_ints([$($name),+]);
                }
                Key::from_parts([$($name.into_part()),+])
            }
        }
    };
}
tuple_key!(A);
tuple_key!(A, B);
tuple_key!(A, B, C);
tuple_key!(A, B, C, D);

#[cfg(test)]
mod test {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn h(k: &Key) -> u64 {
        let mut s = DefaultHasher::new();
        k.hash(&mut s);
        s.finish()
    }

    #[test]
    fn integers_compare_by_value() {
        assert_eq!(0usize.into_key(), 0i32.into_key());
        assert_eq!(h(&7u8.into_key()), h(&7i64.into_key()));
        assert_eq!((1u16, 2i64).into_key(), (1usize, 2u32).into_key());
        assert_ne!(1.into_key(), 2.into_key());
        assert_eq!(u64::MAX.into_key().as_int(), Some(u64::MAX as i128));
        assert_ne!(u64::MAX.into_key(), (-1i64).into_key());
        // Built from integers directly or from parts, a key has one form.
        assert_eq!(
            (2u64, 3i8).into_key(),
            (Part::Int(2), Part::Int(3)).into_key()
        );
        assert_eq!(
            h(&(2u64, 3i8).into_key()),
            h(&(Part::Int(2), Part::Int(3)).into_key())
        );
        assert_eq!(
            (1u8, u64::MAX).into_key(),
            (Part::Int(1), Part::UInt(u64::MAX)).into_key()
        );
        assert_eq!(Part::UInt(5).into_key(), 5.into_key());
        assert_eq!(("a", Part::UInt(5)).into_key(), ("a", 5).into_key());
        assert_eq!((7usize, 1, 2, 3).into_key().to_string(), "7, 1, 2, 3");
    }

    #[test]
    fn strings_and_tuples() {
        assert_eq!("a".into_key(), String::from("a").into_key());
        assert_ne!(("a", 1).into_key(), ("a", 1, 0).into_key());
        assert_ne!("1".into_key(), 1.into_key());
        assert_eq!(("cpu", 0).into_key().to_string(), "cpu, 0");
        assert_eq!(format!("{:?}", ("cpu", 0).into_key()), "(\"cpu\", 0)");
        assert_eq!((1, 2, 3, 4).into_key().len(), 4);
        assert_eq!(std::mem::size_of::<Key>(), 40);
    }

    /// Keys share a block exactly when they differ only in the low bits of a last integer,
    /// and keys that share one have the same hash and distinct slots (`slot` agreeing with
    /// `block`).
    #[test]
    fn blocks() {
        let keys: Vec<Key> = [
            (0..140).map(|i| i.into_key()).collect::<Vec<_>>(),
            (-9..9).map(|i| (3, i).into_key()).collect(),
            (0..12).map(|i| (4, i).into_key()).collect(),
            (-9..18)
                .flat_map(|i| (-9..18).map(move |j| (i, j).into_key()))
                .collect(),
            (0..18).map(|i| (1, i, 2).into_key()).collect(),
            (0..18).map(|i| (2, i, 2).into_key()).collect(),
            (0..18).map(|i| (0, 1, i, 2).into_key()).collect(),
            (0..70).map(|i| ("row", i).into_key()).collect(),
            (0..12).map(|i| ("col", i).into_key()).collect(),
            vec![
                "a".into_key(),
                "b".into_key(),
                (1, "a").into_key(),
                u64::MAX.into_key(),
                (u64::MAX - 1).into_key(),
                ("row", u64::MAX).into_key(),
            ],
        ]
        .concat();
        // A block: keys with the same parts but for the low bits of an integer last part;
        // any other key alone.
        let block_of = |k: &Key| -> Option<Vec<Part>> {
            let mut p: Vec<Part> = k.parts().collect();
            match p.pop() {
                Some(Part::Int(i)) => {
                    p.push(Part::Int(i.div_euclid(BLOCK as i64)));
                    Some(p)
                }
                _ => None,
            }
        };
        let mut in_block = std::collections::HashMap::<(u64, Vec<Part>), u8>::new();
        for a in &keys {
            let (ha, sa) = a.block();
            assert!(sa < BLOCK);
            assert_eq!(a.slot(), sa, "{a:?}");
            assert_eq!(&a.in_block(sa), a, "{a:?}");
            assert!(a.in_block((sa + 1) % BLOCK).same_block(a), "{a:?}");
            if let Some(b) = block_of(a) {
                *in_block.entry((ha, b)).or_default() |= 1 << sa;
            }
            for b in &keys {
                let same = a.same_block(b);
                assert_eq!(same, b.same_block(a), "{a:?} {b:?}");
                let near = (same && a != b).then(|| b.slot());
                assert_eq!(a.near_slot(b), near, "{a:?} {b:?}");
                let (hb, sb) = b.block();
                if same {
                    assert_eq!(ha, hb, "{a:?} {b:?}");
                    assert_eq!(sa == sb, a == b, "{a:?} {b:?}");
                    assert_eq!(&a.in_block(sb), b, "{a:?} {b:?}");
                }
                let expected = match (block_of(a), block_of(b)) {
                    (Some(x), Some(y)) => x == y,
                    _ => a == b,
                };
                assert_eq!(same, expected, "{a:?} {b:?}");
            }
        }
        // Full blocks: 8 consecutive integers.
        assert_eq!(in_block.values().map(|s| s.count_ones()).max(), Some(8));
        assert!(7.into_key().same_block(&0.into_key()));
        assert!(!8.into_key().same_block(&7.into_key()));
        assert!((-1).into_key().same_block(&(-8).into_key()));
        assert!(!(-1).into_key().same_block(&0.into_key()));
        assert!((3, 0).into_key().same_block(&(3, 7).into_key()));
        assert!(!(3, 7).into_key().same_block(&(3, 8).into_key()));
        assert!(!(3, 7).into_key().same_block(&(4, 7).into_key()));
        assert!((5, 7, 7).into_key().same_block(&(5, 7, 0).into_key()));
        assert!(!(5, 7, 7).into_key().same_block(&(5, 6, 7).into_key()));
    }
}
