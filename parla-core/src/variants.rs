//! Function variants: one function name, a default body, and bodies for an architecture,
//! chosen by the device of the task that calls it.
//!
//! Written with the macros of the `parla` crate:
//!
//! ```ignore
//! #[parla::specialize]
//! fn norm(x: &[f64]) -> f64 { /* the default body */ }
//!
//! #[parla::variant(norm, gpu)]
//! fn norm_gpu(x: &[f64]) -> f64 { /* on a task running on a GPU */ }
//! ```
//!
//! A call of `norm` runs `norm_gpu` inside a task running on a (real) GPU, a `cpu` variant if
//! there is one inside a task on the CPU, and the default body everywhere else - outside
//! tasks, and on virtual GPUs (which run on the host). The choice costs a thread-local read
//! and a branch: no allocation, no lock, no table lookup (the variants are found at compile
//! time).
//!
//! This module holds what the macros expand to; it is public only for them.
//!
//! # How variants are found
//! `#[specialize]` on `norm` makes a marker type and an alias of its signature (`fn(&[f64])
//! -> f64`). Each variant implements [`HasVariant`] (for the marker) for a reference to the
//! [`Slot`] of (marker, architecture, signature); the dispatcher asks `(&&slot).variant()`, which finds
//! that implementation when it exists and falls back to [`NoVariant`] (no variant) when it
//! does not - resolved by the compiler, for each architecture.

use std::marker::PhantomData;

pub use crate::Arch;

/// The `cpu` architecture, as a type.
#[derive(Debug)]
pub struct Cpu;

/// The `gpu` architecture, as a type.
#[derive(Debug)]
pub struct Gpu;

/// Where the variant of specialized function `M` for architecture `K` with signature `F`
/// is found.
pub struct Slot<M, K, F>(PhantomData<Markers<M, K, F>>);

/// `Slot`'s type parameters, held without owning or borrowing anything.
type Markers<M, K, F> = fn() -> (M, K, F);

impl<M, K, F> Slot<M, K, F> {
    /// The slot.
    pub const NEW: Self = Slot(PhantomData);
}

impl<M, K, F> std::fmt::Debug for Slot<M, K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

/// A slot with no variant: the default body runs.
pub trait NoVariant<F> {
    /// `None`.
    fn variant(&self) -> Option<F>;
}

impl<M, K, F> NoVariant<F> for Slot<M, K, F> {
    #[inline(always)]
    fn variant(&self) -> Option<F> {
        None
    }
}

/// A slot with a variant (implemented by `#[parla::variant]` for `&Slot<M, ..>`; `M`, the
/// specialized function's marker, makes the implementation local to its crate).
pub trait HasVariant<M> {
    /// The specialized function's signature.
    type Signature;
    /// The variant.
    fn variant(&self) -> Option<Self::Signature>;
}

/// A variant's signature is the default's.
#[diagnostic::on_unimplemented(
    message = "this function cannot be the variant: its signature `{Self}` differs from the default's `{S}`",
    label = "a variant takes the same arguments and returns the same type as the default",
    note = "the default's signature is `{S}`"
)]
pub trait VariantOf<S> {
    /// The variant as the default's function pointer type.
    fn signature(self) -> S;
}

impl<S> VariantOf<S> for S {
    #[inline(always)]
    fn signature(self) -> S {
        self
    }
}

/// The architecture to dispatch on now: `Some(Arch::Cpu)` inside a task on the CPU,
/// `Some(Arch::Gpu)` inside a task on a GPU of a backend (CUDA), `None` outside tasks and on
/// virtual GPUs.
#[inline]
pub fn arch() -> Option<Arch> {
    crate::runtime::context::variant_arch()
}
