//! The scheduler's GPU path on machines without CUDA: a simulated backend whose fences
//! finish a little after they are recorded drives the same code as the CUDA backend
//! (stream waits behind fences, runahead, the event bridge, busy accounting). The CUDA
//! backend itself is tested on a GPU (tests/gpu_*.rs).

mod support;

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parla::device::backend::{Fence, FenceStatus, GpuBackend, GpuExec, GpuInfo, GpuOptions};
use parla::prelude::*;

/// Done a lag (`LAG` unless a test says otherwise) after it was recorded, in order on its
/// (single) queue.
struct TimedFence(Instant, Duration);

const LAG: Duration = Duration::from_micros(30);

impl Fence for TimedFence {
    fn status(&self) -> FenceStatus {
        if self.0.elapsed() >= self.1 {
            FenceStatus::Done
        } else {
            FenceStatus::Pending
        }
    }
    fn gpu(&self) -> usize {
        0
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn queue(&self) -> Option<u64> {
        Some(0)
    }
}

/// The backend: its fences finish this long after they are recorded.
struct Timed(Duration);
struct Exec(Duration);

impl GpuExec for Exec {
    fn enter(&mut self) {}
    fn exit(&mut self) {}
    fn finish(self: Box<Self>) -> Result<Arc<dyn Fence>, String> {
        Ok(Arc::new(TimedFence(Instant::now(), self.0)))
    }
}

impl GpuBackend for Timed {
    fn devices(&self) -> Vec<GpuInfo> {
        support::one_gpu("timed fences")
    }
    fn begin(
        &self,
        _: usize,
        _: &dyn std::fmt::Display,
        _: &[Arc<dyn Fence>],
        _: u8,
    ) -> Result<Box<dyn GpuExec>, String> {
        Ok(Box::new(Exec(self.0)))
    }
    fn device_error(&self, _: usize) -> Option<String> {
        None
    }
}

/// The backend factory: fences finish `US` microseconds after they are recorded.
fn timed<const US: u64>(_: &GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String> {
    Ok(Some(Arc::new(Timed(Duration::from_micros(US)))))
}

type Factory = fn(&GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String>;

fn rt(threads: usize) -> parla::Runtime {
    rt_with(threads, timed::<{ LAG.as_micros() as u64 }>)
}

fn rt_with(threads: usize, backend: Factory) -> parla::Runtime {
    parla::Runtime::builder()
        .cpu_threads(threads)
        .gpu_backend(backend)
        .build()
        .unwrap()
}

/// GPU tasks spawned and awaited one at a time, from `block_on` and from a CPU task, as a
/// latency-bound program does: the awaiter spins for the fence, the driver that ran the
/// task lingers for the next one and polls fences, and both race to complete the task.
/// Every await resolves to its task's value, with fences shorter and longer than the spin,
/// and with pauses longer than the linger (so drivers leave and start again between tasks).
#[test]
fn gpu_round_trips_from_block_on_and_from_tasks_resolve() {
    for threads in [1, 2] {
        let lags: [(Factory, &str); 3] = [
            (timed::<0>, "0"),
            (timed::<{ LAG.as_micros() as u64 }>, "LAG"),
            (timed::<300>, "300 us"),
        ];
        for (backend, lag) in lags {
            let rt = rt_with(threads, backend);
            let sums = support::within(60, move || {
                rt.block_on(async {
                    let trips = |n: usize| async move {
                        let mut sum = 0;
                        for i in 0..n {
                            sum += task(async move { i })
                                .placement(Placement::Gpu(0))
                                .await
                                .unwrap();
                            if i % 50 == 49 {
                                // Longer than the linger: the driver leaves.
                                tokio::time::sleep(Duration::from_micros(200)).await;
                            }
                        }
                        sum
                    };
                    let from_block_on = trips(300).await;
                    let from_task = task(trips(300)).await.unwrap();
                    (from_block_on, from_task)
                })
            });
            let want = (0..300).sum::<usize>();
            assert_eq!(sums, (want, want), "{threads} threads, lag {lag}");
        }
    }
}

#[test]
fn fenced_tasks_keep_the_runtime_busy_until_their_fences_finish() {
    for threads in [1, 2, 4] {
        let rt = rt(threads);
        let (last, ahead) = support::within(60, move || {
            rt.block_on(async {
                let t = TaskSpace::new("G");
                let ahead = Arc::new(AtomicUsize::new(0));
                for i in 0..2000usize {
                    let (t2, ahead) = (t.clone(), ahead.clone());
                    let mut b = task(async move {
                        if i > 0 && !t2.at(i - 1).is_finished() {
                            ahead.fetch_add(1, Ordering::Relaxed);
                        }
                        i
                    })
                    .id(t.at(i))
                    .placement(Placement::Gpu(0));
                    if i > 0 {
                        b = b.after(t.at(i - 1));
                    }
                    b.spawn();
                }
                // Awaited from block_on: a false stall would fail this await.
                let last = task(async { 1 }).after(t.at(1999)).await;
                (last, ahead.load(Ordering::Relaxed))
            })
        });
        assert_eq!(last, Ok(1), "{threads} threads");
        assert!(
            ahead > 0,
            "runahead: a dependent started behind a pending fence"
        );
    }
}

#[test]
fn cpu_dependents_of_fenced_tasks_wait_for_the_fence() {
    let rt = rt(2);
    let seen = support::within(60, move || {
        rt.block_on(async {
            let g = task(async { Instant::now() })
                .placement(Placement::Gpu(0))
                .spawn();
            let gpu_started = g.await.unwrap();
            let h = task(async {}).placement(Placement::Gpu(0)).spawn();
            let cpu = task(async { Instant::now() }).after(&h).await.unwrap();
            (gpu_started, cpu)
        })
    });
    // The CPU task ran after the GPU task's fence was done (LAG after its body).
    assert!(
        seen.1.duration_since(seen.0) >= LAG,
        "{:?}",
        seen.1 - seen.0
    );
}

/// A device that finishes its fences strictly in the order of their places (one queue), a
/// place about every ten microseconds, on a thread of its own.
struct InOrder {
    /// Places taken so far (the last one given).
    issued: AtomicU64,
    /// Fences done so far: those whose place is at most this.
    completed: AtomicU64,
    /// The place each task's fence took, by task name.
    places: parking_lot::Mutex<std::collections::HashMap<String, u64>>,
    stop: AtomicBool,
}

struct Placed(u64, Arc<InOrder>);

impl Fence for Placed {
    fn status(&self) -> FenceStatus {
        if self.0 <= self.1.completed.load(Ordering::SeqCst) {
            FenceStatus::Done
        } else {
            FenceStatus::Pending
        }
    }
    fn gpu(&self) -> usize {
        0
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn queue(&self) -> Option<u64> {
        Some(0)
    }
    fn place(&self) -> Option<u64> {
        Some(self.0)
    }
}

struct InOrderExec(String, Arc<InOrder>);

impl GpuExec for InOrderExec {
    fn enter(&mut self) {}
    fn exit(&mut self) {}
    fn finish(self: Box<Self>) -> Result<Arc<dyn Fence>, String> {
        let place = self.1.issued.fetch_add(1, Ordering::SeqCst) + 1;
        self.1.places.lock().insert(self.0, place);
        // Now and then a thread is held up after its fence took its place (preempted, say),
        // so that a later fence, finished on another thread, reaches the runtime first.
        if place.is_multiple_of(4) {
            spin_for(Duration::from_micros(50));
        }
        Ok(Arc::new(Placed(place, self.1)))
    }
}

struct InOrderBackend(Arc<InOrder>);

impl GpuBackend for InOrderBackend {
    fn devices(&self) -> Vec<GpuInfo> {
        support::one_gpu("in-order fences")
    }
    fn begin(
        &self,
        _: usize,
        task: &dyn std::fmt::Display,
        _: &[Arc<dyn Fence>],
        _: u8,
    ) -> Result<Box<dyn GpuExec>, String> {
        Ok(Box::new(InOrderExec(task.to_string(), self.0.clone())))
    }
    fn device_error(&self, _: usize) -> Option<String> {
        None
    }
}

fn spin_for(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

static IN_ORDER: std::sync::OnceLock<Arc<InOrder>> = std::sync::OnceLock::new();

fn in_order(_: &GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String> {
    let dev = IN_ORDER.get().expect("device made by the test").clone();
    Ok(Some(Arc::new(InOrderBackend(dev))))
}

/// GPU tasks finishing on several drivers at once take their places on one queue in one
/// order and may hand their fences to the runtime in another: a task is complete only
/// once its own fence is done, so a CPU task after it never runs before the device reached
/// that task's place.
#[test]
fn gpu_tasks_finished_on_several_drivers_complete_in_their_queue_order() {
    let dev = IN_ORDER
        .get_or_init(|| {
            Arc::new(InOrder {
                issued: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                places: parking_lot::Mutex::new(Default::default()),
                stop: AtomicBool::new(false),
            })
        })
        .clone();
    let d2 = dev.clone();
    let device = std::thread::spawn(move || {
        while !d2.stop.load(Ordering::SeqCst) {
            let c = d2.completed.load(Ordering::SeqCst);
            if c < d2.issued.load(Ordering::SeqCst) {
                d2.completed.store(c + 1, Ordering::SeqCst);
            }
            spin_for(Duration::from_micros(10));
        }
    });
    let rt = rt_with(4, in_order);
    let d3 = dev.clone();
    let early = support::within(60, move || {
        rt.block_on(async move {
            let mut early = 0;
            for _ in 0..4 {
                let mut checks = Vec::new();
                for _ in 0..2000 {
                    let g = task(async {}).placement(Placement::Gpu(0)).spawn();
                    let (name, dev) = (g.name(), d3.clone());
                    checks.push(
                        task(async move {
                            let place = dev.places.lock()[&name];
                            place > dev.completed.load(Ordering::SeqCst)
                        })
                        .after(&g)
                        .spawn(),
                    );
                }
                for c in checks {
                    early += usize::from(c.await.unwrap());
                }
            }
            early
        })
    });
    dev.stop.store(true, Ordering::SeqCst);
    device.join().unwrap();
    assert_eq!(
        early, 0,
        "CPU tasks ran before their GPU dependency's fence was done"
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn graph() -> impl Strategy<Value = (usize, Vec<(Vec<usize>, bool)>)> {
        (1usize..=150, 1usize..=3).prop_flat_map(|(n, threads)| {
            proptest::collection::vec((proptest::collection::vec(0..n, 0..3), any::<bool>()), n)
                .prop_map(move |raw| {
                    let nodes = raw
                        .into_iter()
                        .enumerate()
                        .map(|(i, (d, gpu))| (d.into_iter().filter(|&j| j < i).collect(), gpu))
                        .collect();
                    (threads, nodes)
                })
        })
    }

    proptest! {
        #![proptest_config(support::prop_config(32))]

        /// Random graphs of CPU and fenced GPU tasks: every task runs once, a CPU task only
        /// after its dependencies finished (GPU ones: their fences done), and every handle
        /// awaited from `block_on` resolves to its value (no false stall).
        #[test]
        fn cpu_and_fenced_gpu_tasks((threads, nodes) in graph()) {
            let n = nodes.len();
            let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
            let early = Arc::new(AtomicUsize::new(0));
            let rt = rt(threads);
            let (r2, e2, nodes2) = (runs.clone(), early.clone(), nodes.clone());
            let results = support::within(20, move || {
                rt.block_on(async move {
                    let t = TaskSpace::new("P");
                    let mut hs = Vec::with_capacity(n);
                    for (i, (deps, gpu)) in nodes2.iter().enumerate() {
                        let (runs, early, t2, deps2, gpu) =
                            (r2.clone(), e2.clone(), t.clone(), deps.clone(), *gpu);
                        let b = task(async move {
                            runs[i].fetch_add(1, Ordering::SeqCst);
                            if !gpu && deps2.iter().any(|&j| !t2.at(j).is_finished()) {
                                early.fetch_add(1, Ordering::SeqCst);
                            }
                            i
                        })
                        .id(t.at(i))
                        .placement(if gpu { Placement::Gpu(0) } else { Placement::Cpu })
                        .after(deps.iter().map(|&j| t.at(j)).collect::<Vec<_>>());
                        hs.push(b.spawn());
                    }
                    let mut out = Vec::with_capacity(n);
                    for h in hs {
                        out.push(h.await);
                    }
                    out
                })
            });
            for (i, r) in results.iter().enumerate() {
                prop_assert_eq!(r, &Ok(i));
                prop_assert_eq!(runs[i].load(Ordering::SeqCst), 1);
            }
            prop_assert_eq!(early.load(Ordering::SeqCst), 0, "a CPU task ran before a dependency finished");
        }
    }
}
