//! Procedural macros of parla-rs. Use them through the `parla` crate:
//! `#[parla::task]`, `#[parla::main]`, `#[parla::specialize]`, `#[parla::variant]`.
//!
//! Each macro parses its attribute, validates it (errors point at the offending token), and
//! emits plain calls to the `parla` API, so what a macro does can always be written by hand.

#![warn(missing_docs)]

use proc_macro::TokenStream;

mod args;
mod body;
mod main_attr;
mod task_attr;
mod variant;

/// Turns an `async fn` into a function returning a preset [`TaskBuilder`]:
///
/// ```ignore
/// #[parla::task(placement = [cpu, gpu], vcus = 0.5, memory = 1 << 20)]
/// async fn matvec(m: Arc<Array2<f64>>, v: Arc<Array1<f64>>) -> Array1<f64> {
///     m.dot(&*v)
/// }
/// let y = matvec(m, v).id(t.at(i)).after([t.at(i - 1)]).spawn();
/// ```
///
/// Arguments (all optional): `placement` (`cpu`, `gpu`, `gpu(i)`, or a list of these),
/// `vcus` (a number literal in `0.0..=1.0`), `memory` (bytes, any integer expression;
/// arithmetic on literals is computed as `u64`, so `4 << 30` is 4 GiB; a float literal of a
/// whole number, `1e9`, is taken too, and one with a fraction is an error), and the data
/// accesses `reads`, `writes`, `reads_writes`, each naming parameters that are
/// `parla::array::PArray`s (`reads = [a, b]`, or one name): the builder declares them
/// (`.reads(&a)`, ...), so calls are ordered by the data they touch.
/// Callers can still add `.id`, `.after`, or override the constraints.
///
/// As in an `async fn`, the body's value and its `return`s coerce to the declared return
/// type (`return Box::new(e)` in a function returning `Box<dyn Error>`); a `return` that a
/// macro in the body expands to is not seen by the attribute, and coerces only where the
/// type needs none.
///
/// [`TaskBuilder`]: https://docs.rs/parla/latest/parla/struct.TaskBuilder.html
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    task_attr::expand(attr.into(), item.into())
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

/// Runs an `async fn main` on a parla runtime:
///
/// ```ignore
/// #[parla::main(cpu_threads = 4, virtual_gpus = 2)]
/// async fn main() -> parla::Result<()> { ... }
/// ```
///
/// Arguments (all optional): `cpu_threads = N`, `virtual_gpus = N` or
/// `virtual_gpus = (N, bytes)` (16 GiB each by default), `streams_per_gpu = N`,
/// `trace = "path.json"`. If the runtime cannot start, the program prints why and exits
/// with status 1. If `main` returns an error, the program prints `Error: ` and the error's
/// message (for a `std` error, `Box<dyn Error>` or `anyhow::Error`, then its sources, as
/// `anyhow` does) rather than its `Debug` form, and exits with status 1, as soon as `main`
/// returns it: the tasks still running are cancelled, as the runtime is dropped (a `main`
/// that returns `Ok` waits for every task, as `Runtime::block_on` does). The `bytes` are
/// computed as `u64`: `(2, 16 << 30)` is 16 GiB.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item: proc_macro2::TokenStream = item.into();
    main_attr::expand(attr.into(), item.clone())
        .unwrap_or_else(|e| main_attr::with_stub(e, item))
        .into()
}

/// Makes a function specializable: its body is the default, and variants attached with
/// [`macro@variant`] replace it inside tasks running on their architecture.
///
/// ```ignore
/// #[parla::specialize]
/// fn scale(x: &[f32]) -> f32 { /* default body: outside tasks, on the CPU, virtual GPUs */ }
///
/// #[parla::variant(scale, gpu)]
/// fn scale_gpu(x: &[f32]) -> f32 { /* inside tasks on a (CUDA) GPU */ }
/// ```
///
/// A call dispatches on the device of the task that makes it (`parla::current_device()`):
/// a `gpu` variant on a real GPU, a `cpu` variant on the CPU, the default body everywhere
/// else. The choice is made at compile time per architecture and costs a thread-local read
/// at run time. The function may have lifetime parameters but no type or const parameters,
/// no `self`, no `impl Trait` and no `async`: variants are called through function pointers.
#[proc_macro_attribute]
pub fn specialize(attr: TokenStream, item: TokenStream) -> TokenStream {
    variant::expand_specialize(attr.into(), item.into())
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

/// Attaches a function as the variant of a [`macro@specialize`]d function for an
/// architecture, `cpu` or `gpu`: `#[parla::variant(scale, gpu)]` (or a path:
/// `#[parla::variant(crate::math::scale, gpu)]`).
///
/// Checked at compile time: the variant's signature must be the default's, the
/// architecture must be `cpu` or `gpu`, and a function has one variant per architecture.
///
/// A variant lives in the crate of the function it specializes (Rust's orphan rule keeps
/// another crate from adding one), and names the function by the path it is defined at,
/// not by a name brought in with `use`.
#[proc_macro_attribute]
pub fn variant(attr: TokenStream, item: TokenStream) -> TokenStream {
    variant::expand_variant(attr.into(), item.into())
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}
