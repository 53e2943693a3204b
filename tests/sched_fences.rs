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
use support::timed::{done_or_pending, timed};
use support::{Factory, rt_with};

/// How long after it was recorded a fence of the tests' backend is done, unless a test
/// says otherwise.
const LAG: Duration = Duration::from_micros(30);

fn rt(threads: usize) -> parla::Runtime {
    rt_with(threads, timed::<{ LAG.as_micros() as u64 }>)
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

/// A driver defers the watches of GPU tasks nobody waits on, and hands them to the poller
/// before it polls anything but a GPU task's first poll. Here the only worker runs a few
/// such GPU tasks, then a CPU task that spins, without yielding, until their handles say
/// they finished: only the poller thread can complete them meanwhile, and it can only if
/// their watches were handed over before the CPU task's poll (or, if the CPU task ran
/// first and yielded, before its second one).
#[test]
fn deferred_watches_are_handed_over_before_a_cpu_task_runs() {
    let lags: [(Factory, &str); 3] = [
        (timed::<0>, "0"),
        (timed::<{ LAG.as_micros() as u64 }>, "LAG"),
        (timed::<300>, "300 us"),
    ];
    for (factory, lag) in lags {
        let rt = rt_with(1, factory);
        let seen = support::within(60, move || {
            rt.block_on(async {
                let ran = Arc::new(AtomicUsize::new(0));
                let gpu: Vec<TaskHandle<()>> = (0..3)
                    .map(|_| {
                        let ran = ran.clone();
                        task(async move {
                            ran.fetch_add(1, Ordering::SeqCst);
                        })
                        .placement(Placement::Gpu(0))
                        .spawn()
                    })
                    .collect();
                task(async move {
                    while ran.load(Ordering::SeqCst) < 3 {
                        tokio::task::yield_now().await;
                    }
                    // (A bound, so that the failure is an answer, not a hang.)
                    let start = Instant::now();
                    while !gpu.iter().all(TaskHandle::is_finished) {
                        if start.elapsed() > Duration::from_secs(10) {
                            return gpu.iter().filter(|h| h.is_finished()).count();
                        }
                        std::hint::spin_loop();
                    }
                    gpu.len()
                })
                .await
                .unwrap()
            })
        });
        assert_eq!(seen, 3, "lag {lag}: GPU tasks seen finished");
    }
}

/// Drivers count the busy tokens of fenced tasks ahead, a batch at a time, and give back
/// what they did not use when their poll ends: after chains of fenced GPU tasks (longer than
/// a batch), from `block_on` and from inside a task, the runtime still goes idle, so an
/// await of an id nobody spawns is still told so (a token never given back would keep the
/// runtime busy, and the await would hang).
#[test]
fn a_stall_after_fenced_tasks_is_still_detected() {
    for threads in [1, 2, 4] {
        let rt = rt(threads);
        let (from_block_on, from_task) = support::within(60, move || {
            rt.block_on(async {
                let chain = |name: &'static str| async move {
                    let t = TaskSpace::new(name);
                    for i in 0..100usize {
                        let mut b = task(async move { i })
                            .id(t.at(i))
                            .placement(Placement::Gpu(0));
                        if i > 0 {
                            b = b.after(t.at(i - 1));
                        }
                        b.spawn();
                    }
                    t.at(99).await.expect("chain");
                    t.at("never").await
                };
                let from_block_on = chain("B").await;
                let from_task = task(chain("T")).await.expect("the CPU task");
                (from_block_on, from_task)
            })
        });
        for (r, id) in [(from_block_on, "B[never]"), (from_task, "T[never]")] {
            match r {
                Err(TaskError::NeverSpawned { id: got }) => assert_eq!(got, id),
                other => panic!("{threads} threads: {other:?}"),
            }
        }
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

/// A simulated device with in-order queues (streams): each queue's fences finish strictly
/// in the order of their places, each only once the fences it waits on (on other queues)
/// finished, one step about every ten microseconds on a thread of its own. What a fence
/// reports is the device's truth, which the runtime's view of a task is checked against.
struct SimDevice {
    queues: Vec<SimQueue>,
    /// The fences of other queues each fence waits on, by (queue, place); places are taken
    /// under this lock, so the device never passes a fence before its waits are known.
    waits: parking_lot::Mutex<std::collections::HashMap<SimPlace, Vec<SimPlace>>>,
    /// Each GPU task's fence (queue, place), by task name, and the other way round.
    fences: parking_lot::Mutex<std::collections::HashMap<String, SimPlace>>,
    names: parking_lot::Mutex<std::collections::HashMap<SimPlace, String>>,
    /// The GPU tasks each task depends on, by name (set by the test before it spawns).
    deps: parking_lot::Mutex<std::collections::HashMap<String, Vec<String>>>,
    /// Fences the device finished before those of the task's GPU dependencies: work run
    /// before the work it depends on.
    out_of_order: AtomicUsize,
    next_queue: AtomicUsize,
    stop: AtomicBool,
}

/// A fence on the simulated device: its queue and its place there.
type SimPlace = (usize, u64);

struct SimQueue {
    /// Places taken so far (the last one given).
    issued: AtomicU64,
    /// Fences done so far: those whose place is at most this.
    completed: AtomicU64,
}

impl SimDevice {
    fn new(queues: usize) -> Arc<SimDevice> {
        Arc::new(SimDevice {
            queues: (0..queues)
                .map(|_| SimQueue {
                    issued: AtomicU64::new(0),
                    completed: AtomicU64::new(0),
                })
                .collect(),
            waits: parking_lot::Mutex::new(Default::default()),
            fences: parking_lot::Mutex::new(Default::default()),
            names: parking_lot::Mutex::new(Default::default()),
            deps: parking_lot::Mutex::new(Default::default()),
            out_of_order: AtomicUsize::new(0),
            next_queue: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        })
    }

    fn done(&self, (q, place): SimPlace) -> bool {
        self.queues[q].completed.load(Ordering::SeqCst) >= place
    }

    /// Whether the GPU task named `name` ran and the device finished its work.
    fn finished(&self, name: &str) -> bool {
        let f = self.fences.lock().get(name).copied();
        f.is_some_and(|f| self.done(f))
    }

    /// The fence `f` is about to finish: its task's GPU dependencies must have.
    fn check_order(&self, f: SimPlace) {
        let Some(name) = self.names.lock().get(&f).cloned() else {
            return;
        };
        let deps = self.deps.lock().get(&name).cloned().unwrap_or_default();
        if deps.iter().any(|d| !self.finished(d)) {
            self.out_of_order.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Starts the device's thread; it runs until the returned guard is dropped.
    fn start(self: &Arc<Self>) -> SimRunning {
        let d = self.clone();
        let thread = std::thread::spawn(move || {
            while !d.stop.load(Ordering::SeqCst) {
                for (q, queue) in d.queues.iter().enumerate() {
                    let waits = d.waits.lock();
                    let next = queue.completed.load(Ordering::SeqCst) + 1;
                    if next <= queue.issued.load(Ordering::SeqCst)
                        && waits
                            .get(&(q, next))
                            .is_none_or(|ws| ws.iter().all(|&w| d.done(w)))
                    {
                        d.check_order((q, next));
                        queue.completed.store(next, Ordering::SeqCst);
                    }
                }
                spin_for(Duration::from_micros(10));
            }
        });
        SimRunning(self.clone(), Some(thread))
    }
}

/// The simulated device while its thread runs: dropping it (at the end of a test, or when
/// a failed case unwinds) stops and joins the thread.
struct SimRunning(Arc<SimDevice>, Option<std::thread::JoinHandle<()>>);

impl std::ops::Deref for SimRunning {
    type Target = Arc<SimDevice>;
    fn deref(&self) -> &Arc<SimDevice> {
        &self.0
    }
}

impl Drop for SimRunning {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

struct SimFence(usize, u64, Arc<SimDevice>);

impl Fence for SimFence {
    fn status(&self) -> FenceStatus {
        done_or_pending(self.2.done((self.0, self.1)))
    }
    fn gpu(&self) -> usize {
        0
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn queue(&self) -> Option<u64> {
        Some(self.0 as u64)
    }
    fn place(&self) -> Option<u64> {
        Some(self.1)
    }
}

/// A task on the simulated device: its name, queue, and the fences it waits on.
struct SimExec(String, usize, Vec<SimPlace>, Arc<SimDevice>);

impl GpuExec for SimExec {
    fn enter(&mut self) {}
    fn exit(&mut self) {}
    fn finish(self: Box<Self>) -> Result<Arc<dyn Fence>, String> {
        let SimExec(name, q, waits, dev) = *self;
        let place = {
            let mut w = dev.waits.lock();
            let place = dev.queues[q].issued.fetch_add(1, Ordering::SeqCst) + 1;
            if !waits.is_empty() {
                w.insert((q, place), waits);
            }
            // (Under the lock too: the device looks the name up before it finishes the
            // fence.)
            dev.names.lock().insert((q, place), name.clone());
            dev.fences.lock().insert(name, (q, place));
            place
        };
        // Now and then a thread is held up after its fence took its place (preempted, say),
        // so that a later fence, finished on another thread, reaches the runtime first.
        if place.is_multiple_of(4) {
            spin_for(Duration::from_micros(50));
        }
        Ok(Arc::new(SimFence(q, place, dev)))
    }
}

/// The backend: a task after a GPU task takes that task's queue (stream order stands in
/// for a wait, as with CUDA streams), any other the next queue in turn; queues are shared
/// by tasks running at once. It waits on the fences of its dependencies on other queues.
struct SimBackend(Arc<SimDevice>);

impl GpuBackend for SimBackend {
    fn devices(&self) -> Vec<GpuInfo> {
        support::one_gpu("simulated in-order queues")
    }
    fn begin(
        &self,
        _: usize,
        task: &dyn std::fmt::Display,
        after: &[Arc<dyn Fence>],
        _: u8,
    ) -> Result<Box<dyn GpuExec>, String> {
        let deps: Vec<SimPlace> = after
            .iter()
            .filter_map(|f| f.as_any().downcast_ref::<SimFence>())
            .map(|f| (f.0, f.1))
            .collect();
        let n = self.0.queues.len();
        let q = deps.first().map_or_else(
            || self.0.next_queue.fetch_add(1, Ordering::SeqCst) % n,
            |d| d.0,
        );
        let waits = deps.into_iter().filter(|d| d.0 != q).collect();
        Ok(Box::new(SimExec(
            task.to_string(),
            q,
            waits,
            self.0.clone(),
        )))
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

thread_local! {
    /// The device the next runtime built on this thread gets (see [`sim_rt`]).
    static SIM: std::cell::RefCell<Option<Arc<SimDevice>>> = const { std::cell::RefCell::new(None) };
}

fn sim_backend(_: &GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String> {
    let dev = SIM
        .with(|s| s.borrow().clone())
        .expect("a device made by the test");
    Ok(Some(Arc::new(SimBackend(dev))))
}

/// A runtime of `threads` workers on a simulated device with `queues` queues, and the
/// device (its thread started).
fn sim_rt(threads: usize, queues: usize) -> (parla::Runtime, SimRunning) {
    let dev = SimDevice::new(queues);
    SIM.with(|s| *s.borrow_mut() = Some(dev.clone()));
    let rt = rt_with(threads, sim_backend);
    (rt, dev.start())
}

/// GPU tasks finishing on several drivers at once take their places on one queue in one
/// order and may hand their fences to the runtime in another: a task is complete only
/// once its own fence is done, so a CPU task after it never runs before the device reached
/// that task's place.
#[test]
fn gpu_tasks_finished_on_several_drivers_complete_in_their_queue_order() {
    let (rt, dev) = sim_rt(4, 1);
    let d3 = Arc::clone(&dev);
    let early = support::within(60, move || {
        rt.block_on(async move {
            let mut early = 0;
            for _ in 0..4 {
                let mut checks = Vec::new();
                for _ in 0..2000 {
                    let g = task(async {}).placement(Placement::Gpu(0)).spawn();
                    let (name, dev) = (g.name(), d3.clone());
                    checks.push(task(async move { !dev.finished(&name) }).after(&g).spawn());
                }
                for c in checks {
                    early += usize::from(c.await.unwrap());
                }
            }
            early
        })
    });
    assert_eq!(
        early, 0,
        "CPU tasks ran before their GPU dependency's fence was done"
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// A tree of tasks: each on a GPU or not, with the children it spawns and awaits.
    #[derive(Debug, Clone)]
    struct Tree(bool, Vec<Tree>);

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = any::<bool>().prop_map(|gpu| Tree(gpu, Vec::new()));
        leaf.prop_recursive(3, 40, 4, |inner| {
            (any::<bool>(), proptest::collection::vec(inner, 0..4))
                .prop_map(|(gpu, children)| Tree(gpu, children))
        })
    }

    /// Runs `t` as a task on the simulated device: it spawns its children, then awaits
    /// them one by one (or all at once, `join`), checking after each await that the device
    /// finished a GPU child's work. Returns how many tasks of the tree ran.
    fn run(
        t: Tree,
        dev: Arc<SimDevice>,
        early: Arc<AtomicUsize>,
        join: bool,
    ) -> parla::TaskHandle<usize> {
        let Tree(gpu, children) = t;
        task(async move {
            let hs: Vec<_> = children
                .into_iter()
                .map(|c| {
                    let gpu = c.0;
                    let h = run(c, dev.clone(), early.clone(), join);
                    (gpu, h.name(), h)
                })
                .collect();
            let mut ran = 1;
            let check = |gpu: bool, name: &str| {
                if gpu && !dev.finished(name) {
                    early.fetch_add(1, Ordering::SeqCst);
                }
            };
            if join {
                let names: Vec<_> = hs.iter().map(|(g, n, _)| (*g, n.clone())).collect();
                let outs = futures_util::future::join_all(hs.into_iter().map(|(_, _, h)| h)).await;
                for ((g, n), o) in names.into_iter().zip(outs) {
                    check(g, &n);
                    ran += o.unwrap();
                }
            } else {
                for (g, n, h) in hs {
                    let o = h.await.unwrap();
                    check(g, &n);
                    ran += o;
                }
            }
            ran
        })
        .placement(if gpu {
            Placement::Gpu(0)
        } else {
            Placement::Cpu
        })
        .spawn()
    }

    fn size(t: &Tree) -> usize {
        1 + t.1.iter().map(size).sum::<usize>()
    }

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

        /// Random trees of CPU and GPU tasks that spawn their children and await them (one
        /// by one, or all at once) on a simulated device with two in-order queues: every
        /// task runs, and no await of a GPU task resolves before the device finished its
        /// work.
        #[test]
        fn tasks_awaiting_gpu_children_on_in_order_queues(
            t in tree(), threads in 1usize..=4, join in any::<bool>()
        ) {
            let n = size(&t);
            let (rt, dev) = sim_rt(threads, 2);
            let (d2, t2) = (Arc::clone(&dev), t.clone());
            let (ran, early) = support::within(30, move || {
                rt.block_on(async move {
                    let early = Arc::new(AtomicUsize::new(0));
                    let gpu = t2.0;
                    let root = run(t2, d2.clone(), early.clone(), join);
                    let name = root.name();
                    let ran = root.await.unwrap();
                    if gpu && !d2.finished(&name) {
                        early.fetch_add(1, Ordering::SeqCst);
                    }
                    (ran, early.load(Ordering::SeqCst))
                })
            });
            prop_assert_eq!(ran, n);
            prop_assert_eq!(early, 0, "an await of a GPU task went ahead of the device");
        }

        /// Random graphs of CPU and GPU tasks on a simulated device with three in-order
        /// queues, checked against the device's truth: no CPU task runs, and no handle
        /// resolves, before the device finished the GPU work it depends on, and the device
        /// never finishes a GPU task's work before that of its GPU dependencies (the
        /// runtime starts a dependent early, behind the fences it passes to the backend).
        #[test]
        fn cpu_and_gpu_tasks_on_in_order_queues((threads, nodes) in graph()) {
            let n = nodes.len();
            let (rt, dev) = sim_rt(threads, 3);
            let space = TaskSpace::new("S");
            let names: Vec<String> = (0..n).map(|i| space.at(i).to_string()).collect();
            // Each task's GPU dependencies, by name: for the device's order check, and for
            // the task's own.
            let gpu_deps: Vec<Vec<String>> = nodes
                .iter()
                .map(|(ds, _)| ds.iter().filter(|&&j| nodes[j].1).map(|&j| names[j].clone()).collect())
                .collect();
            dev.deps.lock().extend(names.iter().cloned().zip(gpu_deps.iter().cloned()));
            let (d2, nodes2, names2) = (Arc::clone(&dev), nodes.clone(), names.clone());
            let (results, early) = support::within(30, move || {
                rt.block_on(async move {
                    let early = Arc::new(AtomicUsize::new(0));
                    let mut hs = Vec::with_capacity(n);
                    for ((i, (ds, gpu)), gpu_deps) in nodes2.iter().enumerate().zip(gpu_deps) {
                        let (dev, early, gpu) = (d2.clone(), early.clone(), *gpu);
                        let b = task(async move {
                            if !gpu && gpu_deps.iter().any(|d| !dev.finished(d)) {
                                early.fetch_add(1, Ordering::SeqCst);
                            }
                            i
                        })
                        .id(space.at(i))
                        .placement(if gpu { Placement::Gpu(0) } else { Placement::Cpu })
                        .after(ds.iter().map(|&j| space.at(j)).collect::<Vec<_>>());
                        hs.push(b.spawn());
                    }
                    let mut out = Vec::with_capacity(n);
                    for (i, h) in hs.into_iter().enumerate() {
                        let r = h.await;
                        if nodes2[i].1 && !d2.finished(&names2[i]) {
                            early.fetch_add(1, Ordering::SeqCst);
                        }
                        out.push(r);
                    }
                    (out, early.load(Ordering::SeqCst))
                })
            });
            for (i, r) in results.iter().enumerate() {
                prop_assert_eq!(r, &Ok(i));
            }
            prop_assert_eq!(early, 0, "a CPU task or an await went ahead of the device");
            prop_assert_eq!(dev.out_of_order.load(Ordering::SeqCst), 0, "GPU work ran before work it depends on");
        }

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
