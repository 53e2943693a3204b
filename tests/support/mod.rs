//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on its own thread and fails the test if it does not finish within `secs`
/// seconds: a hang fails the test instead of hanging CI.
pub fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => {
            let _ = h.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => panic!("test thread ended without a result"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hung: no result within {secs} s"),
    }
}

/// A path for a trace file, `trace.json` in a fresh directory named after `name` and the
/// process (remove it with `std::fs::remove_dir_all(path.parent())`).
pub fn trace_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("parla-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("trace.json")
}

/// A CPU-only runtime with `threads` workers (GPUs left out even where there are some).
pub fn cpu(threads: usize) -> parla::Runtime {
    parla::Runtime::builder()
        .cpu_threads(threads)
        .gpus([])
        .build()
        .expect("runtime")
}

/// Runs the future (or task builder) that `f` makes on a new CPU-only runtime of `threads`
/// workers ([`cpu`]), under [`within`]'s timeout of a minute, and returns its output.
pub fn on_cpu<T, F>(threads: usize, f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::IntoFuture<Output = T>,
{
    within(60, move || cpu(threads).block_on(f()))
}

/// A runtime with `threads` workers (and the machine's GPUs) that writes its trace to `path`
/// (see [`trace_path`]).
pub fn traced(threads: usize, path: &std::path::Path) -> parla::Runtime {
    parla::Runtime::builder()
        .cpu_threads(threads)
        .trace(path)
        .build()
        .expect("runtime")
}

/// A GPU backend factory, as `Builder::gpu_backend` takes it.
pub type Factory =
    fn(
        &parla::device::backend::GpuOptions,
    ) -> Result<Option<std::sync::Arc<dyn parla::device::backend::GpuBackend>>, String>;

/// A runtime with `threads` workers on the GPUs of `backend` (a test's own backend).
pub fn rt_with(threads: usize, backend: Factory) -> parla::Runtime {
    parla::Runtime::builder()
        .cpu_threads(threads)
        .gpu_backend(backend)
        .build()
        .expect("runtime")
}

/// A runtime with `threads` workers and `gpus` virtual GPUs of `mem` bytes each.
pub fn vgpu(threads: usize, gpus: usize, mem: u64) -> parla::Runtime {
    parla::Runtime::builder()
        .cpu_threads(threads)
        .virtual_gpus(gpus, mem)
        .build()
        .expect("runtime")
}

/// Where a task placed on `[cpu, gpu]` runs on `rt`.
pub fn either_device(rt: &parla::Runtime) -> parla::Device {
    use parla::Placement;
    rt.block_on(async {
        parla::task(async { parla::current_device() })
            .placement([Placement::Cpu, Placement::AnyGpu])
            .await
    })
    .expect("a task placed on [cpu, gpu]")
}

/// The property tests' configuration: `default_cases` cases (`PROPTEST_CASES=N` for a
/// longer search), short shrinking (`PROPTEST_MAX_SHRINK_ITERS=N` to change it), no
/// persistence files.
pub fn prop_config(default_cases: u32) -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        cases: env_or("PROPTEST_CASES", default_cases),
        max_shrink_iters: env_or("PROPTEST_MAX_SHRINK_ITERS", 64),
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    }
}

/// The number in environment variable `name`, or `default` when it is unset or not one.
fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A named way to make a runtime.
pub type Config = (&'static str, fn() -> parla::Runtime);

/// The runtimes every configuration-independent test runs on: CPU only, CPU with two
/// virtual GPUs, and 16 workers (more than this machine may have: several drivers then
/// linger for work at once).
pub fn configs() -> Vec<Config> {
    vec![
        ("cpu-only", || cpu(2)),
        ("virtual-gpus", || vgpu(2, 2, 1 << 30)),
        ("sixteen-workers", || cpu(16)),
    ]
}

/// Runs the body once per configuration from [`configs`], each under a timeout:
/// `each_config!(|rt| { ... })`.
#[macro_export]
macro_rules! each_config {
    (|$rt:ident| $body:block) => {
        for (name, make) in support::configs() {
            eprintln!("config: {name}");
            support::within(60, move || {
                let $rt = make();
                $body
            });
        }
    };
}

pub mod gpu;
pub mod timed;

/// A device's index in per-device tables of the tests: the CPU 0, GPU `i` at `1 + i`.
pub fn slot(d: parla::Device) -> usize {
    match d.arch() {
        parla::Arch::Cpu => 0,
        parla::Arch::Gpu => 1 + d.index() as usize,
    }
}

/// What a fake GPU backend in the tests reports: one GPU named `name`, with 1 GiB.
pub fn one_gpu(name: &str) -> Vec<parla::device::backend::GpuInfo> {
    vec![parla::device::backend::GpuInfo {
        name: name.into(),
        memory_budget: 1 << 30,
        memory_total: 1 << 30,
    }]
}
