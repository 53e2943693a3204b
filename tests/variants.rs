//! Function variants and `clone_here` without CUDA: which body runs where (outside tasks,
//! CPU tasks, virtual GPUs, code a task hands to `tokio::spawn`, after awaits), host data
//! staying in place, and `eigh`'s default body.

#![deny(unused_braces)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ndarray::{Array1, Array2, Array3, ArrayView2, Ix2, s};
use parla::array::{Here, clone_here};
use parla::linalg::{eigh, eigh_residual, random_symmetric};
use parla::prelude::*;

#[parla::specialize]
fn which(tag: u32) -> (&'static str, u32) {
    ("default", tag)
}

#[parla::variant(which, cpu)]
fn which_cpu(tag: u32) -> (&'static str, u32) {
    ("cpu", tag)
}

#[parla::variant(which, gpu)]
fn which_gpu(tag: u32) -> (&'static str, u32) {
    ("gpu", tag)
}

/// A one-line default body: the expansion must not warn that its braces are unnecessary
/// (denied in this file).
#[rustfmt::skip]
#[parla::specialize]
fn twice(x: u32) -> u32 { x * 2 }

/// A function with a GPU variant only: the CPU runs the default.
#[parla::specialize]
fn gpu_only() -> &'static str {
    "default"
}

#[parla::variant(gpu_only, gpu)]
fn gpu_only_gpu() -> &'static str {
    "gpu"
}

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers every call to the system allocator; the count is a thread-local `Cell`
// with a const initialiser (no allocation, no lazy registration on access).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is `GlobalAlloc::alloc`'s, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[test]
fn dispatch_allocates_nothing() {
    let rt = support::vgpu(2, 1, 1 << 30);
    let calls = || {
        allocations(|| {
            for i in 0..1000 {
                std::hint::black_box(which(std::hint::black_box(i)));
                std::hint::black_box(gpu_only());
            }
        })
    };
    let outside = calls();
    let (cpu, vgpu) = support::within(60, move || {
        rt.block_on(async move {
            let cpu = task(async move { calls() }).await.unwrap();
            let vgpu = task(async move { calls() })
                .placement(Placement::AnyGpu)
                .await
                .unwrap();
            (cpu, vgpu)
        })
    });
    assert_eq!((outside, cpu, vgpu), (0, 0, 0));
}

#[test]
fn dispatch_follows_the_running_task() {
    let rt = support::vgpu(2, 1, 1 << 30);
    assert_eq!(which(1), ("default", 1), "outside the runtime");
    assert_eq!(twice(21), 42);
    let seen = support::within(60, move || {
        rt.block_on(async {
            let outside = which(2);
            let cpu = task(async { (which(3), gpu_only()) }).await.unwrap();
            let vgpu = task(async { (which(4), gpu_only()) })
                .placement(Placement::AnyGpu)
                .await
                .unwrap();
            (outside, cpu, vgpu)
        })
    });
    assert_eq!(seen.0, ("default", 2), "in block_on, outside tasks");
    assert_eq!(seen.1, (("cpu", 3), "default"), "CPU task");
    assert_eq!(
        seen.2,
        (("default", 4), "default"),
        "virtual GPUs run the default"
    );
}

#[test]
fn dispatch_survives_awaits_and_leaves_spawned_code_alone() {
    let rt = support::vgpu(2, 1, 1 << 30);
    let seen = support::within(60, move || {
        rt.block_on(async {
            task(async {
                let mut seen = vec![which(0).0];
                // A child on the virtual GPU, awaited in a loop: the parent's device is
                // back in place each time it resumes.
                for i in 0..5 {
                    let child = task(async move { which(i).0 })
                        .placement(Placement::AnyGpu)
                        .await
                        .unwrap();
                    seen.push(child);
                    seen.push(which(i).0);
                }
                // Code handed to Tokio runs outside any task: the default.
                let spawned = tokio::spawn(async { which(9).0 }).await.unwrap();
                seen.push(spawned);
                seen
            })
            .await
            .unwrap()
        })
    });
    let mut want = vec!["cpu"];
    for _ in 0..5 {
        want.extend(["default", "cpu"]);
    }
    want.push("default");
    assert_eq!(seen, want);
}

/// A task that runs another runtime's `block_on` (inside `block_in_place`): the future given
/// to it runs outside any task, whatever device the task that called it runs on. (Before,
/// it saw the calling task as its own, and a specialized function called there looked the
/// virtual GPU's slot up among the other runtime's devices: an index out of bounds.)
#[test]
fn another_runtimes_block_on_inside_a_task_runs_outside_tasks() {
    let a = support::vgpu(2, 2, 1 << 30);
    let b = std::sync::Arc::new(support::cpu(1));
    let seen = support::within(60, move || {
        a.block_on(async move {
            let mut seen = Vec::new();
            for place in [Placement::Gpu(1), Placement::Cpu] {
                let b = b.clone();
                let r = task(async move {
                    let inner = tokio::task::block_in_place(|| {
                        b.block_on(async {
                            let outside = (
                                which(1).0,
                                parla::current_task().is_none(),
                                parla::current_device(),
                            );
                            // A task of the inner runtime, awaited there.
                            let child = task(async { (which(2).0, parla::current_device()) })
                                .await
                                .unwrap();
                            (outside, child)
                        })
                    });
                    // Back in the task: its own context again.
                    (inner, which(3).0, parla::current_task().is_some())
                })
                .placement(place)
                .await
                .unwrap();
                seen.push(r);
            }
            seen
        })
    });
    let cpu = parla::Device::CPU;
    for (r, task_body) in seen.iter().zip(["default", "cpu"]) {
        assert_eq!(r.0, (("default", true, cpu), ("cpu", cpu)), "{r:?}");
        assert_eq!((r.1, r.2), (task_body, true), "{r:?}");
    }
}

/// Whether `here` is host data borrowed from the array at `ptr` (no copy).
fn borrowed<D: ndarray::Dimension>(here: &Here<'_, f64, D>, ptr: *const f64) -> bool {
    match here {
        Here::Host(a) => a.is_view() && std::ptr::eq(a.as_ptr(), ptr),
        Here::Device(_) => false,
    }
}

#[test]
fn host_data_stays_in_place_on_the_host() {
    let rt = support::vgpu(2, 1, 1 << 30);
    let out = support::within(60, move || {
        rt.block_on(async {
            let check = || {
                let m = Array2::from_shape_fn((4, 6), |(i, j)| (i * 10 + j) as f64);
                let cube = Array3::from_shape_fn((2, 3, 4), |(i, j, k)| (i + j + k) as f64);
                let v: Vec<f64> = (0..7).map(f64::from).collect();
                let strided = m.slice(s![.., ..;2]);
                let fortran = m.t();
                let here = [
                    borrowed(&clone_here(&m).unwrap(), m.as_ptr()),
                    borrowed(&clone_here(&cube).unwrap(), cube.as_ptr()),
                    borrowed(&clone_here(&v).unwrap(), v.as_ptr()),
                    borrowed(&clone_here(&v[2..]).unwrap(), v[2..].as_ptr()),
                    borrowed(&clone_here(&strided).unwrap(), strided.as_ptr()),
                    borrowed(&clone_here(&fortran).unwrap(), fortran.as_ptr()),
                ];
                let again = clone_here(&m).unwrap();
                let twice = clone_here(&again).unwrap();
                let values_kept = twice.to_host().unwrap() == m
                    && clone_here(&strided).unwrap().into_host().unwrap() == strided;
                (here, borrowed(&twice, m.as_ptr()), values_kept)
            };
            let outside = check();
            let cpu = task(async move { check() }).await.unwrap();
            let vgpu = task(async move { check() })
                .placement(Placement::AnyGpu)
                .await
                .unwrap();
            [outside, cpu, vgpu]
        })
    });
    for (at, (here, twice, kept)) in ["outside", "cpu", "virtual gpu"].iter().zip(out) {
        assert_eq!(here, [true; 6], "{at}: every host input borrowed");
        assert!(twice, "{at}: clone_here of a Here borrows the same data");
        assert!(kept, "{at}: values unchanged");
    }
}

fn check_eigh(a: ArrayView2<'_, f64>, w: &Array1<f64>, v: &Array2<f64>) {
    let r = eigh_residual(a, w.view(), v.view()).unwrap();
    assert!(r < 1e-10, "residual {r:e}");
    assert!(w.windows(2).into_iter().all(|p| p[0] <= p[1]), "ascending");
    let gram = v.t().dot(v) - Array2::<f64>::eye(v.nrows());
    let off = gram.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(off < 1e-10, "orthonormal eigenvectors: {off:e}");
}

#[test]
fn eigh_default_body_on_cpu_and_virtual_gpu() {
    let rt = support::vgpu(2, 1, 1 << 30);
    let a = random_symmetric(120, 1);
    let a2 = a.clone();
    let (cpu, vgpu) = support::within(120, move || {
        rt.block_on(async move {
            let a3 = a2.clone();
            let cpu = task(async move { eigh(&clone_here(&a2)?)?.into_host() });
            let vgpu = task(async move {
                let e = eigh(&clone_here(&a3)?)?;
                assert!(e.vectors.is_host(), "virtual GPUs compute on the host");
                e.into_host()
            })
            .placement(Placement::AnyGpu);
            (cpu.await, vgpu.await)
        })
    });
    let (w, v) = cpu.unwrap().unwrap();
    check_eigh(a.view(), &w, &v);
    let (w2, v2) = vgpu.unwrap().unwrap();
    check_eigh(a.view(), &w2, &v2);
    assert_eq!(w, w2, "the same body on the same data");
}

#[test]
fn eigh_reads_the_lower_triangle_in_any_layout() {
    let a = random_symmetric(40, 2);
    // Garbage above the diagonal: only the lower triangle counts.
    let mut lower = a.clone();
    for i in 0..40 {
        for j in i + 1..40 {
            lower[(i, j)] = 1e6 + (i * j) as f64;
        }
    }
    let (w, v) = eigh(&Here::Host(lower.view().into()))
        .unwrap()
        .into_host()
        .unwrap();
    check_eigh(a.view(), &w, &v);
    // Column-major storage of the same matrix.
    let fortran = lower.t().as_standard_layout().into_owned().reversed_axes();
    assert!(!fortran.is_standard_layout());
    let (w2, _) = eigh(&clone_here(&fortran).unwrap())
        .unwrap()
        .into_host()
        .unwrap();
    let dw = (&w - &w2).iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(dw < 1e-12, "{dw:e}");
}

#[test]
fn eigh_rejects_bad_input_with_errors() {
    let rect = Array2::<f64>::zeros((3, 4));
    let err = eigh(&clone_here(&rect).unwrap()).unwrap_err();
    assert!(
        matches!(err, parla::Error::InvalidArgument(ref m) if m.contains("square")),
        "{err}"
    );
    let mut nan = random_symmetric(5, 3);
    nan[(3, 1)] = f64::NAN;
    let err = eigh(&clone_here(&nan).unwrap()).unwrap_err();
    assert!(
        matches!(err, parla::Error::InvalidArgument(ref m) if m.contains("(3, 1)")),
        "{err}"
    );
    // An infinity above the diagonal is not read.
    nan[(3, 1)] = 0.5;
    nan[(1, 3)] = f64::INFINITY;
    assert!(eigh(&clone_here(&nan).unwrap()).is_ok());
    let empty = Array2::<f64>::zeros((0, 0));
    let e = eigh(&clone_here(&empty).unwrap())
        .unwrap()
        .into_host()
        .unwrap();
    assert_eq!((e.0.len(), e.1.dim()), (0, (0, 0)));
    let bad = eigh_residual(rect.view(), Array1::zeros(3).view(), rect.view());
    assert!(matches!(bad, Err(parla::Error::InvalidArgument(_))));
    // Finite, with eigenvalues past f64::MAX (+-1.414e308 and an overflow on the way).
    let huge = ndarray::array![[1e308, 1e308], [1e308, 1e308]];
    let huge = clone_here(&huge).unwrap();
    let over = eigh(&huge);
    assert!(
        matches!(over, Err(parla::Error::InvalidArgument(ref m)) if m.contains("overflows")),
        "{:?}",
        over.map(|e| e.into_host().map(|(w, _)| w))
    );
    #[cfg(feature = "cuda")]
    {
        let outside = parla::linalg::eigh_gpu(&clone_here(&random_symmetric(3, 4)).unwrap());
        assert!(
            matches!(outside, Err(parla::Error::InvalidArgument(ref m)) if m.contains("GPU")),
            "{outside:?}"
        );
    }
}

#[test]
fn block_on_takes_a_task_builder() {
    let rt = support::cpu(2);
    let m: Array2<f64> = Array2::eye(3);
    let got = rt
        .block_on(task(async move {
            let here = clone_here(&m)?;
            Ok::<_, parla::Error>(here.to_host()?.sum())
        }))
        .unwrap()
        .unwrap();
    assert_eq!(got, 3.0);
}

/// `Here`'s side, shape and conversions.
#[test]
fn here_reports_its_side() {
    let m = Array2::from_shape_fn((2, 3), |(i, j)| (i + j) as f64);
    let h: Here<'_, f64, Ix2> = clone_here(&m).unwrap();
    assert!(h.is_host());
    assert_eq!(h.device(), Device::CPU);
    assert_eq!(h.shape(), &[2, 3]);
    assert_eq!(h.into_host().unwrap(), m);
}
