//! `TaskHandle::abort`: a task stopped where it awaits, failed before it starts, or left
//! alone once finished; its dependents fail, and nothing hangs.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parla::prelude::*;

/// Sets its flag when dropped: shows that a future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn aborted<T: std::fmt::Debug>(r: &Result<T, TaskError>) -> bool {
    matches!(r, Err(TaskError::Aborted { .. }))
}

fn failed_by_abort<T: std::fmt::Debug>(r: &Result<T, TaskError>) -> bool {
    matches!(r, Err(TaskError::DependencyFailed { cause, .. })
        if matches!(**cause, TaskError::Aborted { .. }))
}

/// The outcomes of a task aborted while it waited on a dependency, of one aborted while it
/// ran, and of that dependency (which returns `true` once it is let go).
type TwoAbortedAndDependency<A, B> = (
    Result<A, TaskError>,
    Result<B, TaskError>,
    Result<bool, TaskError>,
);

fn both_aborted_dependency_ran<A: std::fmt::Debug, B: std::fmt::Debug>(
    r: &TwoAbortedAndDependency<A, B>,
) {
    assert!(aborted(&r.0), "the waiting task: {:?}", r.0);
    assert!(aborted(&r.1), "the running task: {:?}", r.1);
    assert_eq!(r.2, Ok(true), "the dependency runs on");
}

#[test]
fn abort_stops_a_task_suspended_on_a_channel() {
    each_config!(|rt| {
        let dropped = Arc::new(AtomicBool::new(false));
        let d = dropped.clone();
        let (stuck, by_handle, by_id) = rt.block_on(async move {
            let t = TaskSpace::new("A");
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            let stuck = task(async move {
                let _guard = DropFlag(d);
                rx.await.unwrap_or(0)
            })
            .id(t.at(0))
            .spawn();
            let by_handle = task(async {}).after(&stuck).spawn();
            let by_id = task(async {}).after(t.at(0)).spawn();
            // Let it start and suspend on the channel.
            tokio::time::sleep(Duration::from_millis(20)).await;
            stuck.abort();
            let r = (stuck.await, by_handle.await, by_id.await);
            // The sender lives until here: only the abort ended the task.
            drop(tx);
            r
        });
        assert!(aborted(&stuck), "{stuck:?}");
        assert!(failed_by_abort(&by_handle), "{by_handle:?}");
        assert!(failed_by_abort(&by_id), "{by_id:?}");
        assert!(dropped.load(Ordering::SeqCst), "the body was dropped");
    });
}

#[test]
fn abort_fails_a_task_waiting_on_its_dependencies_at_once() {
    each_config!(|rt| {
        let ran = Arc::new(AtomicUsize::new(0));
        let r2 = ran.clone();
        let (waiting, dep, dependent, dep_done_first) = rt.block_on(async move {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let dep = task(async move { rx.await.is_ok() }).spawn();
            let waiting = task(async move {
                r2.fetch_add(1, Ordering::SeqCst);
            })
            .after(&dep)
            .spawn();
            let dependent = task(async {}).after(&waiting).spawn();
            waiting.abort();
            // Resolved while its dependency still runs.
            let waiting = waiting.await;
            let dep_done_first = dep.is_finished();
            tx.send(()).unwrap();
            (waiting, dep.await, dependent.await, dep_done_first)
        });
        assert!(aborted(&waiting), "{waiting:?}");
        assert!(!dep_done_first, "the abort did not wait for the dependency");
        assert_eq!(dep, Ok(true), "the dependency runs on");
        assert!(failed_by_abort(&dependent), "{dependent:?}");
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the aborted body never ran");
    });
}

#[test]
fn an_abort_handle_stops_a_task_awaited_elsewhere() {
    each_config!(|rt| {
        let (in_task, handles_done) = rt.block_on(async {
            let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
            let h = task(async move { rx.await.ok() }).spawn();
            let stop = h.abort_handle();
            let again = stop.clone();
            // The handle is awaited by another task; the abort handle stops it from here.
            let awaiting = task(h).spawn();
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(!stop.is_finished());
            stop.abort();
            again.abort(); // a second request changes nothing
            let r = awaiting.await.unwrap();
            (r, stop.is_finished() && again.is_finished())
        });
        assert!(aborted(&in_task), "{in_task:?}");
        assert!(handles_done);
    });
}

#[test]
fn abort_of_a_finished_task_changes_nothing() {
    each_config!(|rt| {
        let r = rt.block_on(async {
            let h = task(async { 7 }).spawn();
            let after = task(async { 8 }).after(&h).spawn();
            while !h.is_finished() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            h.abort();
            (h.await, after.await)
        });
        assert_eq!(r, (Ok(7), Ok(8)));
    });
}

#[test]
fn abort_works_from_a_thread_of_the_programs_own() {
    each_config!(|rt| {
        let r = rt.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let dep = task(async move { rx.await.is_ok() }).spawn();
            let waiting = task(async { 1 }).after(&dep).spawn();
            let (tx2, rx2) = tokio::sync::oneshot::channel::<()>();
            let running = task(async move { rx2.await.is_ok() }).spawn();
            tokio::time::sleep(Duration::from_millis(10)).await;
            // Moved to a plain thread, aborted there, and handed back.
            let (waiting, running) = std::thread::spawn(move || {
                waiting.abort();
                running.abort();
                (waiting, running)
            })
            .join()
            .unwrap();
            let r = (waiting.await, running.await);
            tx.send(()).unwrap();
            drop(tx2);
            (r.0, r.1, dep.await)
        });
        both_aborted_dependency_ran(&r);
    });
}

#[test]
fn abort_after_the_runtime_is_gone_changes_nothing() {
    let rt = support::cpu(2);
    let h = rt.handle();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = h.spawn(task(async move { rx.await.is_ok() }));
    let waiting = h.spawn(task(async { 1 }).after(&running));
    std::thread::sleep(Duration::from_millis(10));
    drop(rt);
    // No runtime left to act in: the requests find the tasks cancelled.
    running.abort();
    waiting.abort();
    drop(tx);
    let r = support::within(30, move || {
        let local = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        local.block_on(async move { (running.await, waiting.await) })
    });
    assert!(matches!(r.0, Err(TaskError::Cancelled { .. })), "{:?}", r.0);
    assert!(
        matches!(r.1, Err(TaskError::DependencyFailed { .. })),
        "{:?}",
        r.1
    );
}

#[test]
fn a_task_aborted_while_it_waits_for_vcus_resolves_without_running() {
    let rt = support::cpu(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let r2 = ran.clone();
    let r = support::within(30, move || {
        rt.block_on(async move {
            // A whole CPU's VCUs, held while it blocks its worker until the abort was
            // asked for.
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let full = task(async move {
                let _ = rx.recv();
            })
            .vcus(1.0)
            .spawn();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let queued = task(async move {
                r2.fetch_add(1, Ordering::SeqCst);
            })
            .vcus(1.0)
            .spawn();
            queued.abort();
            tx.send(()).unwrap();
            (full.await, queued.await)
        })
    });
    assert_eq!(r.0, Ok(()));
    assert!(aborted(&r.1), "{:?}", r.1);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the aborted body never ran");
}

/// A GPU task asking for three quarters of a gigabyte (and a tenth of the GPU).
fn big_on_gpu<F>(b: parla::TaskBuilder<F>) -> parla::TaskBuilder<F>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    b.placement(Placement::AnyGpu).vcus(0.1).memory(3 << 28)
}

/// Spawns a task (default VCUs, or [`big_on_gpu`] with `gpu`) that blocks its worker,
/// spinning until `release` is set; returns once it runs. On a runtime of one worker, no
/// other task can be polled until `release`.
fn occupy_the_worker(release: &Arc<AtomicBool>, gpu: bool) -> TaskHandle<()> {
    let running = Arc::new(AtomicUsize::new(0));
    let (r, n) = (release.clone(), running.clone());
    let b = task(async move {
        n.fetch_add(1, Ordering::SeqCst);
        while !r.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
    });
    let h = if gpu {
        big_on_gpu(b).spawn()
    } else {
        b.spawn()
    };
    wait_for(&running, 1);
    h
}

/// Blocks until `count` reaches `n`. (Not a Tokio sleep: with every worker blocked, nothing
/// would drive its timer.)
fn wait_for(count: &AtomicUsize, n: usize) {
    while count.load(Ordering::SeqCst) < n {
        std::thread::yield_now();
    }
}

/// A task that waits for its VCUs behind a task that holds the whole CPU (and its one
/// worker) resolves as soon as it is aborted: taken out of the admission queue, not left
/// there until the CPU frees up. (Left there, it could not even be polled: no worker is
/// free.)
#[test]
fn a_task_aborted_while_the_cpu_is_full_resolves_at_once() {
    let rt = support::cpu(1);
    let ran = Arc::new(AtomicUsize::new(0));
    let r2 = ran.clone();
    let r = support::within(30, move || {
        rt.block_on(async move {
            let release = Arc::new(AtomicBool::new(false));
            let busy = occupy_the_worker(&release, false);
            let queued: Vec<_> = (0..3)
                .map(|_| {
                    let r2 = r2.clone();
                    task(async move {
                        r2.fetch_add(1, Ordering::SeqCst);
                    })
                    .spawn()
                })
                .collect();
            // The middle one, then the others.
            queued[1].abort();
            queued[0].abort();
            queued[2].abort();
            let mut outcomes = Vec::new();
            for q in queued {
                outcomes.push(q.await);
            }
            release.store(true, Ordering::SeqCst);
            busy.await.unwrap();
            outcomes
        })
    });
    assert!(r.iter().all(aborted), "{r:?}");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "no aborted body ran");
}

/// A task that lent its VCUs while it awaited a channel, woken while the CPU is full, waits
/// to take them back; aborted then, it resolves at once. So does one aborted while it is
/// still parked (the abort's wake would send it to take its VCUs back).
#[test]
fn a_parked_task_aborted_while_the_cpu_is_full_resolves_at_once() {
    let rt = support::cpu(1);
    let r = support::within(30, move || {
        rt.block_on(async move {
            let past = Arc::new(AtomicUsize::new(0));
            let started = Arc::new(AtomicUsize::new(0));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let parked = |rx: tokio::sync::oneshot::Receiver<()>| {
                let (past, started) = (past.clone(), started.clone());
                task(async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _ = rx.await;
                    past.fetch_add(1, Ordering::SeqCst);
                })
                .spawn()
            };
            let woken = parked(rx);
            let (_keep, never) = tokio::sync::oneshot::channel::<()>();
            let still = parked(never);
            wait_for(&started, 2);
            // The parked tasks lend their VCUs (the first to the second, then the second to
            // this one) once another waits for them.
            let release = Arc::new(AtomicBool::new(false));
            let busy = occupy_the_worker(&release, false);
            tx.send(()).unwrap();
            woken.abort();
            still.abort();
            let r = (woken.await, still.await);
            release.store(true, Ordering::SeqCst);
            busy.await.unwrap();
            (r, past.load(Ordering::SeqCst))
        })
    });
    let ((woken, still), past) = r;
    assert!(aborted(&woken), "{woken:?}");
    assert!(aborted(&still), "{still:?}");
    assert_eq!(past, 0, "neither ran past its await");
}

/// A task that declared data (an array it reads) waits in its device's queue for tasks with
/// data; aborted while the CPU is full, it resolves at once, and the array is still there.
#[test]
fn a_task_with_data_aborted_while_the_cpu_is_full_resolves_at_once() {
    use ndarray::Array1;
    use parla::array::PArray;
    let rt = support::cpu(1);
    let r = support::within(30, move || {
        rt.block_on(async move {
            let a = PArray::from(Array1::from_elem(8, 1.0f64));
            let release = Arc::new(AtomicBool::new(false));
            let busy = occupy_the_worker(&release, false);
            let b = a.clone();
            let reader = task(async move { b.read().unwrap().sum() })
                .reads(&a)
                .spawn();
            reader.abort();
            let r = reader.await;
            release.store(true, Ordering::SeqCst);
            busy.await.unwrap();
            (r, a.to_host().await.map(|h| h.sum()))
        })
    });
    assert!(aborted(&r.0), "{:?}", r.0);
    assert_eq!(
        r.1.ok(),
        Some(8.0),
        "a reader that did not run leaves the array as it was"
    );
}

/// The same on a virtual GPU whose memory a running task holds: a task waiting for that
/// memory resolves as soon as it is aborted.
#[test]
fn a_task_aborted_while_it_waits_for_gpu_memory_resolves_at_once() {
    let rt = support::vgpu(1, 1, 1 << 30);
    let r = support::within(30, move || {
        rt.block_on(async move {
            let release = Arc::new(AtomicBool::new(false));
            // One task holds three quarters of the memory, and the one worker; the next
            // that asks for as much memory waits.
            let busy = occupy_the_worker(&release, true);
            let waiting = big_on_gpu(task(async {})).spawn();
            waiting.abort();
            let r = waiting.await;
            release.store(true, Ordering::SeqCst);
            busy.await.unwrap();
            r
        })
    });
    assert!(aborted(&r), "{r:?}");
}

#[test]
fn an_aborted_parent_lets_its_children_run_on() {
    each_config!(|rt| {
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        // The last child waits for it, so the parent is still waiting when it is aborted
        // (however long the sleep below takes on a busy machine).
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let (parent, children) = rt.block_on(async move {
            let kids = TaskSpace::new("Kids");
            let k = kids.clone();
            let parent = task(async move {
                // Awaits its children one by one, with the default VCUs (it lends them).
                let hs: Vec<_> = (0..8)
                    .map(|i| {
                        let (d, g) = (d.clone(), g.clone());
                        task(async move {
                            tokio::time::sleep(Duration::from_millis(5 * (i + 1))).await;
                            if i == 7 {
                                g.notified().await;
                            }
                            d.fetch_add(1, Ordering::SeqCst);
                        })
                        .id(k.at(i))
                        .spawn()
                    })
                    .collect();
                for h in hs {
                    h.await.unwrap();
                }
            })
            .spawn();
            tokio::time::sleep(Duration::from_millis(12)).await;
            parent.abort();
            gate.notify_one();
            let parent = parent.await;
            // The children were detached with the parent's future; they finish.
            (parent, (&kids).await)
        });
        assert!(aborted(&parent), "{parent:?}");
        assert_eq!(children, Ok(()));
        assert_eq!(done.load(Ordering::SeqCst), 8);
    });
}

#[test]
fn abort_on_virtual_gpus_before_and_after_the_start() {
    let rt = support::vgpu(2, 2, 1 << 30);
    let r = support::within(30, move || {
        rt.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let dep = task(async move { rx.await.is_ok() })
                .placement(Placement::AnyGpu)
                .spawn();
            let waiting = task(async {})
                .after(&dep)
                .placement(Placement::AnyGpu)
                .spawn();
            let (_tx2, rx2) = tokio::sync::oneshot::channel::<()>();
            let running = task(async move { rx2.await.is_ok() })
                .placement(Placement::AnyGpu)
                .vcus(0.5)
                .memory(1 << 20)
                .spawn();
            tokio::time::sleep(Duration::from_millis(10)).await;
            waiting.abort();
            running.abort();
            let r = (waiting.await, running.await);
            tx.send(()).unwrap();
            (r.0, r.1, dep.await)
        })
    });
    both_aborted_dependency_ran(&r);
}

#[test]
fn an_aborted_writer_fails_the_later_accesses_of_its_array() {
    use ndarray::Array1;
    use parla::array::PArray;
    let rt = support::vgpu(2, 2, 1 << 30);
    let r = support::within(30, move || {
        rt.block_on(async {
            let a = PArray::from(Array1::from_elem(1000, 1.0f64));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let add = |k: f64, place: Placement| {
                let b = a.clone();
                task(async move {
                    b.write().unwrap().mapv_inplace(|x| x + k);
                })
                .reads_writes(&a)
                .placement(place)
                .spawn()
            };
            // A writer on GPU 0 held up by a channel, so that the next writers wait on it.
            let b = a.clone();
            let first = task(async move {
                rx.await.ok();
                b.write().unwrap().mapv_inplace(|x| x + 1.0);
            })
            .reads_writes(&a)
            .placement(Placement::Gpu(0))
            .spawn();
            let second = add(10.0, Placement::Gpu(1));
            let third = add(100.0, Placement::Cpu);
            tokio::time::sleep(Duration::from_millis(10)).await;
            // The second waits on the first (in the array's order): aborted before it runs.
            second.abort();
            let second = second.await;
            tx.send(()).unwrap();
            let (first, third) = (first.await, third.await);
            // As after a writer that panicked: what comes after it in the array's order
            // fails, and nothing hangs.
            let later = a.to_host().await;
            (first, second, third, later)
        })
    });
    assert_eq!(r.0, Ok(()));
    assert!(aborted(&r.1), "{:?}", r.1);
    assert!(failed_by_abort(&r.2), "{:?}", r.2);
    assert!(
        matches!(&r.3, Err(parla::Error::Task(e)) if matches!(e.root(), TaskError::Aborted { .. })),
        "{:?}",
        r.3
    );
}

/// A random graph, and which tasks to abort when.
#[derive(Debug, Clone)]
struct Aborting {
    threads: usize,
    /// Dependencies on earlier tasks; by handle or by id.
    deps: Vec<(Vec<usize>, bool)>,
    /// 0: CPU, 1: any GPU, 2: either.
    placement: Vec<usize>,
    vcus: Vec<f64>,
    /// How the body waits: yields, or sleeps of 0-2 ms.
    waits: Vec<(u8, bool)>,
    /// Task `k` is aborted just before task `at` is spawned (`at == n`: after every spawn,
    /// and a yield).
    aborts: Vec<(usize, usize)>,
}

fn aborting() -> impl Strategy<Value = Aborting> {
    (1usize..=80, 1usize..=3).prop_flat_map(|(n, threads)| {
        (
            proptest::collection::vec((proptest::collection::vec(0..n, 0..3), any::<bool>()), n),
            proptest::collection::vec(0usize..3, n),
            proptest::collection::vec(prop_oneof![Just(0.25), Just(0.5), Just(1.0)], n),
            proptest::collection::vec((0u8..3, any::<bool>()), n),
            proptest::collection::vec((0..n, 0..=n), 0..=n / 3 + 1),
        )
            .prop_map(move |(deps, placement, vcus, waits, aborts)| Aborting {
                threads,
                deps: deps
                    .into_iter()
                    .enumerate()
                    .map(|(i, (d, h))| (d.into_iter().filter(|&j| j < i).collect(), h))
                    .collect(),
                placement,
                vcus,
                waits,
                // A task is aborted after it was spawned.
                aborts: aborts.into_iter().filter(|&(k, at)| k < at).collect(),
            })
    })
}

use proptest::prelude::*;

fn run_aborting(g: Aborting) -> Result<(), TestCaseError> {
    let n = g.deps.len();
    let finished: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let early = Arc::new(AtomicUsize::new(0));
    let over = Arc::new(AtomicUsize::new(0));
    let vcu: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let rt = parla::Runtime::builder()
        .cpu_threads(g.threads)
        .virtual_gpus(2, 1 << 30)
        .build()
        .unwrap();
    let (f, e, o, v) = (finished.clone(), early.clone(), over.clone(), vcu.clone());
    let g2 = g.clone();
    let results = support::within(30, move || {
        rt.block_on(async move {
            let t = TaskSpace::new("R");
            let mut handles: Vec<TaskHandle<()>> = Vec::with_capacity(n);
            for i in 0..=n {
                for &(k, _) in g2.aborts.iter().filter(|&&(_, at)| at == i) {
                    if i == n {
                        tokio::task::yield_now().await;
                    }
                    handles[k].abort();
                }
                if i == n {
                    break;
                }
                let (deps, by_handle) = g2.deps[i].clone();
                let (waits, sleeps) = g2.waits[i];
                let (f, e, o, v) = (f.clone(), e.clone(), o.clone(), v.clone());
                let deps2 = deps.clone();
                let body = async move {
                    let dev = support::slot(current_device());
                    let units = (current_task().unwrap().vcus() * 1e6).round() as usize;
                    if deps2.iter().any(|&j| f[j].load(Ordering::SeqCst) != 1) {
                        e.fetch_add(1, Ordering::SeqCst);
                    }
                    for w in 0..waits {
                        if v[dev].fetch_add(units, Ordering::SeqCst) + units > 1_000_000 {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                        v[dev].fetch_sub(units, Ordering::SeqCst);
                        if sleeps {
                            tokio::time::sleep(Duration::from_micros(700 * w as u64)).await;
                        } else {
                            tokio::task::yield_now().await;
                        }
                    }
                    f[i].fetch_add(1, Ordering::SeqCst);
                };
                let mut b =
                    task(body)
                        .id(t.at(i))
                        .vcus(g2.vcus[i])
                        .placement(match g2.placement[i] {
                            0 => vec![Placement::Cpu],
                            1 => vec![Placement::AnyGpu],
                            _ => vec![Placement::Cpu, Placement::AnyGpu],
                        });
                for &j in &deps {
                    b = if by_handle {
                        b.after(&handles[j])
                    } else {
                        b.after(t.at(j))
                    };
                }
                handles.push(b.spawn());
            }
            let mut out = Vec::with_capacity(n);
            for h in handles {
                out.push(h.await);
            }
            out
        })
    });
    let aborted: Vec<bool> = (0..n)
        .map(|i| g.aborts.iter().any(|&(k, _)| k == i))
        .collect();
    for (i, r) in results.iter().enumerate() {
        let ran = finished[i].load(Ordering::SeqCst);
        let deps_ok = g.deps[i].0.iter().all(|&j| results[j].is_ok());
        match r {
            Ok(()) => {
                prop_assert_eq!(ran, 1, "task {} succeeded: its body ran to its end once", i);
                prop_assert!(deps_ok, "task {} succeeded after a failed dependency", i);
            }
            Err(TaskError::Aborted { .. }) => {
                prop_assert!(aborted[i], "task {} aborted without being asked", i);
                prop_assert_eq!(ran, 0, "task {} aborted after its body finished", i);
            }
            Err(TaskError::DependencyFailed { cause, .. }) => {
                prop_assert!(!deps_ok, "task {} failed with every dependency fine", i);
                prop_assert!(
                    matches!(**cause, TaskError::Aborted { .. }),
                    "task {}: {:?}",
                    i,
                    cause
                );
                prop_assert_eq!(ran, 0, "task {} ran after a dependency failed", i);
            }
            other => prop_assert!(false, "task {}: {:?}", i, other),
        }
        if !aborted[i] && deps_ok {
            prop_assert!(r.is_ok(), "task {}: {:?}", i, r);
        }
    }
    prop_assert_eq!(
        early.load(Ordering::SeqCst),
        0,
        "a body started before a dependency finished"
    );
    prop_assert_eq!(over.load(Ordering::SeqCst), 0, "VCUs over 1.0");
    Ok(())
}

proptest! {
    #![proptest_config(support::prop_config(48))]

    /// Random graphs with random tasks aborted at random points of the spawning: every
    /// handle resolves; a task succeeds exactly when it was not aborted (or finished
    /// first) and its dependencies succeeded; an aborted task's dependents fail naming
    /// the abort; no body runs early, and VCUs stay within 1.0.
    #[test]
    fn random_graphs_with_aborts(g in aborting()) {
        run_aborting(g)?;
    }
}
