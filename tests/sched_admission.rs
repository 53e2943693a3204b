//! VCU and memory admission, and mapping of list placements.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parla::prelude::*;

/// Tracks how many bodies run at once and the most that ever did.
#[derive(Default)]
struct Overlap {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Overlap {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn exit(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `n` tasks that each sleep (blocking their worker) and returns the peak overlap.
fn peak(
    rt: &parla::Runtime,
    n: usize,
    configure: impl Fn(usize) -> Option<f64>,
    mem: u64,
) -> usize {
    let o = Arc::new(Overlap::default());
    let o2 = o.clone();
    rt.block_on(async move {
        for i in 0..n {
            let o = o2.clone();
            let mut b = task(async move {
                o.enter();
                std::thread::sleep(Duration::from_millis(40));
                o.exit();
            })
            .memory(mem);
            if let Some(v) = configure(i) {
                b = b.vcus(v);
            }
            b.spawn();
        }
    });
    o.max.load(Ordering::SeqCst)
}

#[test]
fn half_vcus_run_two_at_a_time() {
    let rt = support::cpu(4);
    let p = support::within(60, move || peak(&rt, 8, |_| Some(0.5), 0));
    assert_eq!(p, 2);
}

#[test]
fn whole_vcus_run_serially() {
    let rt = support::cpu(4);
    let p = support::within(60, move || peak(&rt, 5, |_| Some(1.0), 0));
    assert_eq!(p, 1);
}

/// The tutorial's `12_task_constraints` with its tasks spawned by a task (with its default
/// VCUs, or none), as a program whose main is itself a task does: tasks that wait for the
/// CPU start in the order they were spawned. (On one worker, where the parent's default
/// VCUs are the whole CPU, awaiting the space lent them to one member after another in the
/// order of the space's table: 4, 0, 3, 1, 2 of five.)
#[test]
fn tasks_spawned_by_a_task_start_in_spawn_order() {
    for (workers, parent_vcus) in [(2, None), (2, Some(0.0)), (2, Some(0.5)), (1, None)] {
        let order = support::on_cpu(workers, move || async move {
            let spawner = task(async {
                let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
                let t = TaskSpace::new("T");
                for i in 0..6 {
                    let o = order.clone();
                    task(async move {
                        o.lock().push(i);
                        std::thread::sleep(Duration::from_millis(1));
                    })
                    .id(t.at(i))
                    .vcus(1.0)
                    .spawn();
                }
                t.await.map(|()| order.lock().clone())
            });
            match parent_vcus {
                Some(v) => spawner.vcus(v).await,
                None => spawner.await,
            }
        });
        let order = order.and_then(|r| r);
        assert_eq!(
            order,
            Ok((0..6).collect()),
            "{workers} workers, parent vcus {parent_vcus:?}"
        );
    }
}

/// A parent that spawns children and then computes before it awaits them (fork, work,
/// join), with default VCUs on workers that have nothing else to do: the children start
/// while it computes, all but the last it spawned (which, as in Tokio, runs next on the
/// parent's worker). Before, the first child waited on the parent's worker holding the
/// VCUs its siblings needed, and none started until the parent awaited.
///
/// With `pause`, the parent waits after its second child until the first one ran (and
/// 20 ms more for it to finish) before it spawns the rest: the third then fits on the
/// VCUs the first gave back, while the second waits held for the parent's poll. Before, the
/// third waited on the parent's worker too, and the rest of the children behind the two.
#[test]
fn children_start_while_their_parent_computes() {
    for pause in [false, true] {
        for workers in [2, 4] {
            for children in [2, 3, 6] {
                let started = support::on_cpu(workers, move || {
                    task(async move {
                        let started = Arc::new(AtomicUsize::new(0));
                        let spin_until = |n: usize| {
                            let t0 = std::time::Instant::now();
                            while started.load(Ordering::SeqCst) < n
                                && t0.elapsed() < Duration::from_secs(20)
                            {
                                std::hint::spin_loop();
                            }
                        };
                        let mut handles = Vec::new();
                        for i in 0..children {
                            if pause && i == 2 {
                                spin_until(1);
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            let s = started.clone();
                            handles.push(
                                task(async move {
                                    s.fetch_add(1, Ordering::SeqCst);
                                })
                                .spawn(),
                            );
                        }
                        // The parent's own work: it spins until all but one child started,
                        // or gives up after 20 s (the assertion below then fails).
                        spin_until(children - 1);
                        let during = started.load(Ordering::SeqCst);
                        for h in handles {
                            h.await.unwrap();
                        }
                        during
                    })
                });
                let started = started.unwrap();
                assert!(
                    started >= children - 1,
                    "{workers} workers, {children} children, pause {pause}: {started} started"
                );
            }
        }
    }
}

#[test]
fn default_vcus_are_one_workers_share() {
    let rt = support::cpu(3);
    let p = support::within(60, move || peak(&rt, 9, |_| None, 0));
    assert_eq!(p, 3);
}

/// A device kept full: many short tasks with default VCUs, spawned at once from `block_on`
/// and from tasks (half of the latter after another task, so queued by the driver that
/// finishes it), finish on many workers at the same time, each admitting a waiting one
/// (or leaving that to whoever holds the admission lock). Every task runs, and no more run
/// at once than the workers. (That no release is lost when it finds the lock taken is
/// model-checked by admission's loom tests.)
#[test]
fn a_device_kept_full_admits_every_waiting_task() {
    let rt = support::cpu(8);
    let (ran, peak) = support::within(120, move || {
        let o = Arc::new(Overlap::default());
        let ran = Arc::new(AtomicUsize::new(0));
        let (o2, ran2) = (o.clone(), ran.clone());
        rt.block_on(async move {
            let body = move |o: Arc<Overlap>, ran: Arc<AtomicUsize>| async move {
                o.enter();
                std::hint::black_box((0..200).sum::<u64>());
                ran.fetch_add(1, Ordering::SeqCst);
                o.exit();
            };
            let mut spawners = Vec::new();
            for _ in 0..8 {
                let (o, ran) = (o2.clone(), ran2.clone());
                spawners.push(
                    task(async move {
                        // Pairs: the second becomes ready when the first finishes, and the
                        // driver that finished it queues it.
                        for _ in 0..500 {
                            let first = task(body(o.clone(), ran.clone())).spawn();
                            task(body(o.clone(), ran.clone())).after(&first).spawn();
                        }
                    })
                    .spawn(),
                );
            }
            for _ in 0..12_000 {
                task(body(o2.clone(), ran2.clone())).spawn();
            }
            for s in spawners {
                s.await.expect("spawner");
            }
        });
        (ran.load(Ordering::SeqCst), o.max.load(Ordering::SeqCst))
    });
    assert_eq!(ran, 20_000, "every task ran");
    assert!(peak <= 8, "{peak} ran at once on 8 workers' VCUs");
}

#[test]
fn zero_vcus_are_unlimited() {
    let rt = support::cpu(2);
    let o = Arc::new(Overlap::default());
    let o2 = o.clone();
    support::within(60, move || {
        rt.block_on(async move {
            for _ in 0..8 {
                let o = o2.clone();
                task(async move {
                    o.enter();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    o.exit();
                })
                .vcus(0.0)
                .spawn();
            }
        })
    });
    assert_eq!(
        o.max.load(Ordering::SeqCst),
        8,
        "waiting tasks do not hold workers"
    );
}

#[test]
fn memory_budget_limits_concurrency() {
    let rt = parla::Runtime::builder()
        .cpu_threads(4)
        .cpu_memory(100)
        .build()
        .unwrap();
    let rt = Arc::new(rt);
    let r2 = rt.clone();
    let p60 = support::within(60, move || peak(&r2, 4, |_| Some(0.0), 60));
    let r3 = rt.clone();
    let p50 = support::within(60, move || peak(&r3, 6, |_| Some(0.0), 50));
    assert_eq!(p60, 1);
    assert_eq!(p50, 2);
}

#[test]
fn gpu_tasks_wait_for_the_virtual_gpu_memory_budget() {
    let rt = support::vgpu(4, 1, 1000);
    let o = Arc::new(Overlap::default());
    let o2 = o.clone();
    let devs = support::within(60, move || {
        rt.block_on(async move {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let o = o2.clone();
                    task(async move {
                        o.enter();
                        std::thread::sleep(Duration::from_millis(30));
                        o.exit();
                        current_device()
                    })
                    .placement(Placement::AnyGpu)
                    .memory(600)
                    .spawn()
                })
                .collect();
            let mut v = Vec::new();
            for h in hs {
                v.push(h.await.unwrap());
            }
            v
        })
    });
    assert!(devs.iter().all(|d| d.to_string() == "gpu:0"));
    assert_eq!(o.max.load(Ordering::SeqCst), 1);
}

#[test]
fn placement_on_virtual_gpus() {
    let rt = support::vgpu(2, 2, 1 << 30);
    let (one, any, either) = support::within(60, move || {
        rt.block_on(async {
            let one = task(async { current_device() })
                .placement(Placement::Gpu(1))
                .await
                .unwrap();
            let any = task(async { current_device() })
                .placement(Placement::AnyGpu)
                .await
                .unwrap();
            let either = task(async { current_device() })
                .placement([Placement::Cpu, Placement::AnyGpu])
                .await
                .unwrap();
            (one, any, either)
        })
    });
    assert_eq!(one.to_string(), "gpu:1");
    assert_eq!(any.arch(), Arch::Gpu);
    assert_eq!(either.arch(), Arch::Gpu, "GPUs are preferred on ties");
}

#[test]
fn any_gpu_spreads_over_busy_gpus() {
    let rt = support::vgpu(4, 2, 1 << 30);
    let devs = support::within(60, move || {
        rt.block_on(async {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    task(async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        current_device().index()
                    })
                    .placement(Placement::AnyGpu)
                    .spawn()
                })
                .collect();
            let mut v = Vec::new();
            for h in hs {
                v.push(h.await.unwrap());
            }
            v
        })
    });
    assert!(devs.contains(&0) && devs.contains(&1), "{devs:?}");
}

#[test]
fn a_custom_mapping_policy_decides() {
    struct LastDevice;
    impl parla::MappingPolicy for LastDevice {
        fn choose(&self, c: &[parla::Candidate]) -> usize {
            c.len() - 1
        }
    }
    let rt = parla::Runtime::builder()
        .cpu_threads(2)
        .virtual_gpus(3, 1 << 20)
        .mapping_policy(LastDevice)
        .build()
        .unwrap();
    assert_eq!(support::either_device(&rt).to_string(), "gpu:2");
}

#[test]
fn builder_rejects_bad_configuration() {
    let e = parla::Runtime::builder()
        .cpu_threads(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("cpu_threads"), "{e}");
    let e = parla::Runtime::builder()
        .streams_per_gpu(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("streams_per_gpu"), "{e}");
    let e = parla::Runtime::builder()
        .streams_per_gpu(65)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("between 1 and 64"), "{e}");
    let e = parla::Runtime::builder()
        .virtual_gpus(100, 1)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("100 GPUs"), "{e}");
    // Refused before anything is made for them (a huge count built every GPU first: a
    // second and 316 MB for ten million, and ran out of memory beyond).
    let e = parla::Runtime::builder()
        .virtual_gpus(usize::MAX, 1)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("at most 63"), "{e}");
    // (Tokio panicked on such a count.)
    let e = parla::Runtime::builder()
        .cpu_threads(usize::MAX)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("cpu_threads"), "{e}");
}

/// The order tasks ran in.
type Log = Arc<std::sync::Mutex<Vec<String>>>;

/// Spawns from `block_on`, on a CPU kept full by a first task that spins until everything
/// is spawned: a chain `A1` -> ... -> `An` (`A1` the spinner), then `waiting` tasks `B1`..
/// that do not depend on it (they wait for the CPU), then, with `whole`, a task `W` asking
/// for the whole CPU (waiting behind them). Returns the order the tasks ran in.
fn chain_and_waiting_tasks(
    rt: &parla::Runtime,
    n: usize,
    waiting: usize,
    whole: bool,
) -> Vec<String> {
    let log: Log = Arc::default();
    let go = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let note = |log: &Log, s: String| log.lock().unwrap().push(s);
    rt.block_on(async {
        let (l, g) = (log.clone(), go.clone());
        let mut prev = task(async move {
            while !g.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            note(&l, "A1".into());
        })
        .spawn();
        for k in 2..=n {
            let l = log.clone();
            prev = task(async move { note(&l, format!("A{k}")) })
                .after(&prev)
                .spawn();
        }
        let mut others: Vec<_> = (1..=waiting)
            .map(|k| {
                let l = log.clone();
                task(async move { note(&l, format!("B{k}")) }).spawn()
            })
            .collect();
        if whole {
            let l = log.clone();
            others.push(task(async move { note(&l, "W".into()) }).vcus(1.0).spawn());
        }
        go.store(true, Ordering::Release);
        prev.await.unwrap();
        for t in others {
            t.await.unwrap();
        }
    });
    log.lock().unwrap().clone()
}

/// Where `name` ran in `order`.
fn ran_at(order: &[String], name: &str) -> usize {
    order
        .iter()
        .position(|s| s == name)
        .unwrap_or_else(|| panic!("{name} never ran: {order:?}"))
}

/// A task that finishes while equal tasks wait for the CPU passes its VCUs on to the task
/// it made ready, which runs next, ahead of them - a bounded number of times in a row: then
/// the waiting tasks get the VCUs, in their order.
#[test]
fn a_finished_task_passes_its_vcus_on_to_the_task_it_made_ready_a_few_times_in_a_row() {
    let rt = support::cpu(1);
    let order = support::within(60, move || chain_and_waiting_tasks(&rt, 30, 4, false));
    let at = |name: &str| ran_at(&order, name);
    assert_eq!(order.len(), 34, "{order:?}");
    // Passed on: A2 runs right after A1, before the tasks that waited.
    assert_eq!(at("A2"), 1, "{order:?}");
    // Boundedly: the waiting tasks run before the chain ends, in their order.
    assert!(at("B1") < at("A30"), "the chain kept the CPU: {order:?}");
    assert!(
        at("B1") < at("B2") && at("B2") < at("B3") && at("B3") < at("B4"),
        "{order:?}"
    );
}

/// Passing VCUs on never starves a task that asks for more: a whole-CPU task waiting while
/// a chain runs on half of it runs before the chain ends.
#[test]
fn passing_vcus_on_does_not_starve_a_task_that_asks_for_more() {
    let rt = support::cpu(2);
    let order = support::within(60, move || chain_and_waiting_tasks(&rt, 40, 0, true));
    assert_eq!(order.len(), 41, "{order:?}");
    assert!(
        ran_at(&order, "W") < ran_at(&order, "A40"),
        "the chain kept the CPU: {order:?}"
    );
}
