//! The runtime from outside and from Tokio: `Handle` (spawn from any thread, `enter`,
//! `hold`), futures started with `tokio::spawn` inside tasks, and what belongs to which
//! runtime when a program has two.

mod support;

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parla::device::backend::{Fence, GpuBackend, GpuExec, GpuInfo, GpuOptions};
use parla::prelude::*;

#[test]
fn a_handle_spawns_from_other_threads() {
    each_config!(|rt| {
        let h = rt.handle();
        let sum = rt.block_on(async move {
            let t = TaskSpace::new("H");
            let hold = h.hold();
            let threads: Vec<_> = (0..4)
                .map(|k| {
                    let (h, t) = (h.clone(), t.clone());
                    std::thread::spawn(move || {
                        for i in 0..50 {
                            h.spawn(task(async move { k * 50 + i }).id(t.at(k * 50 + i)));
                        }
                    })
                })
                .collect();
            for th in threads {
                th.join().unwrap();
            }
            drop(hold);
            t.range(0..200).await.unwrap();
            t.len()
        });
        assert_eq!(sum, 200);
    });
}

#[test]
fn enter_makes_spawning_work_on_a_plain_thread() {
    let rt = support::cpu(2);
    let h = rt.handle();
    let v = support::within(30, move || {
        let _g = h.enter();
        let handle = task(async { 41 + 1 }).spawn();
        futures_executor_block_on(handle)
    });
    assert_eq!(v, Ok(42));
    drop(rt);
}

/// Awaits a future on the current (non-runtime) thread.
/// A guard taken from a temporary handle (`rt.handle().enter()`, the handle dropped at the
/// end of the statement) keeps its runtime current: the guard pointed into the handle, and
/// the spawn read freed memory (a segmentation fault, every run).
#[test]
fn a_guard_outlives_the_handle_it_came_from() {
    let rt = support::cpu(1);
    // (A guard that borrowed its handle would not compile here: the handle is a temporary,
    // and the guard is used after it, by the explicit drop.)
    let g = rt.handle().enter();
    // Spawned with an id and a dependency: both look the runtime up.
    let t = TaskSpace::new("G");
    task(async {}).id(t.at(0)).spawn();
    let (h, id) = (
        task(async { 7 }).id(t.at(1)).after(t.at(0)).spawn(),
        t.at(1),
    );
    drop(g);
    let r = support::within(30, move || rt.block_on(async move { (h.await, id.await) }));
    assert!(matches!(r, (Ok(7), Ok(()))), "{r:?}");
}

/// Guards of two runtimes dropped in the order they were taken (the outer one first): the
/// inner one's runtime stays current until it drops, and then none is.
#[test]
fn guards_dropped_out_of_order_leave_the_inner_runtime_current() {
    let (rt1, rt2) = (support::cpu(1), support::cpu(1));
    let (h1, h2) = (rt1.handle(), rt2.handle());
    let outer = h1.enter();
    let inner = h2.enter();
    drop(outer);
    let on_second = task(async { parla::Handle::current().is_some() }).spawn();
    drop(inner);
    let outside = task(async {}).spawn();
    let r = support::within(30, move || rt2.block_on(on_second));
    assert!(matches!(r, Ok(true)), "{r:?}");
    let r = rt1.block_on(outside);
    assert!(matches!(r, Err(TaskError::NoRuntime { .. })), "{r:?}");
}

fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(f)
}

#[test]
fn handle_current_is_the_runtime_of_the_code_that_asks() {
    assert!(parla::Handle::current().is_none(), "outside any runtime");
    let a = support::cpu(2);
    let b = support::cpu(2);
    let r = support::within(30, move || {
        // A space of runtime `a`, and one of `b`.
        let sa = TaskSpace::new("A");
        a.block_on(task(async {}).id(sa.at(0))).unwrap();
        let hb = b.handle();
        let entered = std::thread::spawn(move || {
            let _g = hb.enter();
            parla::Handle::current()
        });
        b.block_on(async move {
            let sb = TaskSpace::new("B");
            task(async {}).id(sb.at(0)).await.unwrap();
            let found = vec![
                ("block_on", parla::Handle::current()),
                (
                    "a task",
                    task(async { parla::Handle::current() }).await.unwrap(),
                ),
                (
                    "tokio::spawn in a task",
                    task(async { tokio::spawn(async { parla::Handle::current() }).await })
                        .await
                        .unwrap()
                        .unwrap(),
                ),
                (
                    "spawn_blocking in a task",
                    task(async { tokio::task::spawn_blocking(parla::Handle::current).await })
                        .await
                        .unwrap()
                        .unwrap(),
                ),
                ("a thread inside enter", entered.join().unwrap()),
            ];
            let plain = std::thread::spawn(parla::Handle::current).join().unwrap();
            let mut out = Vec::new();
            for (place, h) in found {
                let Some(h) = h else {
                    out.push((place, false, false, false));
                    continue;
                };
                // `b`'s own: its space works, `a`'s is another runtime's.
                let own = h.spawn(task(async {}).after(sb.at(0))).await;
                let other = h.spawn(task(async {}).after(sa.at(0))).await;
                let wrong = matches!(other, Err(TaskError::WrongRuntime { .. }));
                out.push((place, true, own.is_ok(), wrong));
            }
            (plain.is_none(), out)
        })
    });
    assert!(r.0, "a thread of the program's own has no current runtime");
    for (place, some, own, wrong) in r.1 {
        assert!(some, "{place}: a handle");
        assert!(
            own && wrong,
            "{place}: the handle is not the runtime's it ran in"
        );
    }
}

#[test]
fn a_hold_keeps_stall_detection_off_until_the_thread_spawns() {
    each_config!(|rt| {
        let h = rt.handle();
        let r = rt.block_on(async move {
            let t = TaskSpace::new("L");
            let (h2, t2) = (h.clone(), t.clone());
            let hold = h.hold();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                h2.spawn(task(async { 3 }).id(t2.at(0)));
                drop(hold);
            });
            // Nothing else runs meanwhile; without the hold, T[0] would be never spawned.
            t.at(0).await
        });
        assert_eq!(r, Ok(()));
    });
}

#[test]
fn tokio_spawn_inside_a_task_can_spawn_and_await_tasks() {
    each_config!(|rt| {
        let r = rt.block_on(async {
            task(async {
                let t = TaskSpace::new("K");
                let t2 = t.clone();
                let j = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let a = task(async { 20 }).id(t2.at("a")).spawn();
                    let b = task(async { 22 }).after(t2.at("a")).spawn();
                    a.await.unwrap() + b.await.unwrap()
                });
                // Awaiting an id a Tokio task will spawn: not failed as never spawned.
                t.at("a").await.unwrap();
                j.await.unwrap()
            })
            .await
        });
        assert_eq!(r, Ok(42));
    });
}

/// A `block_on` inside another's future on the same runtime (through Tokio's
/// `block_in_place`, which lets the thread block) returns once every task finished, the
/// outer future's included: it used to wait for good once the outer future had spawned a
/// task, for the live counts that future's poll had taken ahead for its spawns.
#[test]
fn a_block_on_nested_in_block_in_place_returns_once_the_tasks_finished() {
    for round in 0..20 {
        let r = support::within(30, move || {
            let rt = support::cpu(2);
            rt.block_on(async {
                let h = task(async { 40 }).spawn();
                let inner = tokio::task::block_in_place(|| {
                    rt.block_on(async { task(async { 2 }).await.unwrap() })
                });
                h.await.unwrap() + inner
            })
        });
        assert_eq!(r, 42, "round {round}");
    }
}

/// How a task inside `tokio::task::block_in_place` gets a task it spawned (before the
/// call, or inside it) and waits for it there.
#[derive(Clone, Copy, Debug)]
enum BlockingWait {
    /// Spawned before the call, waited for with Tokio's `Handle::block_on`.
    SpawnedBefore,
    /// Spawned inside with `task(..).spawn()`, waited for with `Handle::block_on`.
    Spawned,
    /// Spawned inside through the runtime's `Handle`, waited for with `Handle::block_on`.
    HandleSpawned,
    /// Spawned inside through the runtime's `Handle`; its body sends its result on a
    /// standard channel, which the blocking code receives from.
    HandleSpawnedChannel,
}

fn wait_in_block_in_place(how: BlockingWait, ran: Arc<AtomicBool>) -> i32 {
    let child = move || {
        let ran = ran.clone();
        task(async move {
            ran.store(true, Ordering::SeqCst);
            42
        })
    };
    let block_on = |h| tokio::runtime::Handle::current().block_on(h);
    match how {
        BlockingWait::SpawnedBefore => {
            let h = child().spawn();
            tokio::task::block_in_place(|| block_on(h)).unwrap()
        }
        BlockingWait::Spawned => tokio::task::block_in_place(|| block_on(child().spawn())).unwrap(),
        BlockingWait::HandleSpawned => {
            let rt = parla::Handle::current().unwrap();
            tokio::task::block_in_place(|| block_on(rt.spawn(child()))).unwrap()
        }
        BlockingWait::HandleSpawnedChannel => {
            let rt = parla::Handle::current().unwrap();
            tokio::task::block_in_place(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                let send = child();
                rt.spawn(task(async move { tx.send(send.await.unwrap()).unwrap() }));
                rx.recv().unwrap()
            })
        }
    }
}

#[test]
fn a_task_blocking_in_place_may_wait_for_a_task_it_spawned() {
    // With default VCUs, the child fits beside its parent on two workers. It used to wait on
    // the parent's thread, for the parent's poll to end, which the wait inside
    // `block_in_place` kept from ending.
    for how in [
        BlockingWait::SpawnedBefore,
        BlockingWait::Spawned,
        BlockingWait::HandleSpawned,
        BlockingWait::HandleSpawnedChannel,
    ] {
        for round in 0..5 {
            let ran = Arc::new(AtomicBool::new(false));
            let r = support::within(30, {
                let ran = ran.clone();
                move || {
                    let rt = support::cpu(2);
                    rt.block_on(task(async move { wait_in_block_in_place(how, ran) }))
                }
            });
            assert_eq!(r, Ok(42), "{how:?}, round {round}");
            assert!(ran.load(Ordering::SeqCst), "{how:?}, round {round}");
        }
    }
}

/// As many tasks as workers block in `block_in_place` at once, each waiting there for a
/// child it spawned: holding no VCUs (`.vcus(0.0)`, as the README says such a task must,
/// for its child to fit beside it), they each keep their worker, and their driver's slot
/// went to a driver for the children. (Every slot's driver blocked, the children waited
/// for good.)
#[test]
fn as_many_tasks_as_workers_may_block_in_place_waiting_for_children() {
    for (workers, parents) in [(1, 1), (2, 2), (2, 3)] {
        for how in [BlockingWait::Spawned, BlockingWait::HandleSpawned] {
            let r = support::within(30, move || {
                let rt = support::cpu(workers);
                rt.block_on(async move {
                    let parents: Vec<_> = (0..parents)
                        .map(|_| {
                            task(async move {
                                let ran = Arc::new(AtomicBool::new(false));
                                let v = wait_in_block_in_place(how, ran.clone());
                                (v, ran.load(Ordering::SeqCst))
                            })
                            .vcus(0.0)
                            .spawn()
                        })
                        .collect();
                    futures_util::future::join_all(parents).await
                })
            });
            for p in r {
                assert_eq!(p, Ok((42, true)), "{workers} workers, {how:?}");
            }
        }
    }
    // With default VCUs on one worker the child never fits beside its blocked parent (the
    // README's limit): the program is stuck, and dropping its runtime still returns (it
    // waited for the blocked thread, which waited for the child), resolving the handles.
    let parent = support::within(30, || {
        let rt = support::cpu(1);
        let (tx, rx) = std::sync::mpsc::channel();
        let parent = rt.handle().spawn(task(async move {
            let child = task(async {}).spawn();
            tokio::task::block_in_place(|| {
                tx.send(()).unwrap();
                futures_executor_block_on(child)
            })
        }));
        rx.recv().unwrap();
        drop(rt);
        futures_executor_block_on(parent)
    });
    // The drop cancelled the child; the parent's wait for it ended with that, and the
    // parent finished (or was cancelled once its poll ended).
    assert!(
        matches!(
            parent,
            Ok(Err(TaskError::Cancelled { .. })) | Err(TaskError::Cancelled { .. })
        ),
        "{parent:?}"
    );
}

#[test]
fn a_task_blocking_in_place_may_wait_for_many_tasks_that_yield() {
    // Fifty tasks spawned before the call, half of them yielding once, waited for inside it
    // (the space at once, or each id in turn). Tasks woken on the blocked thread (Tokio
    // runs the wakes it put off there as `block_in_place` begins) used to wait there, for
    // the poll to end: 9 runs in 10 hung within 20 rounds.
    for whole_space in [true, false] {
        let rounds = support::within(60, move || {
            let rt = support::cpu(3);
            rt.block_on(task(async move {
                for round in 0..20u64 {
                    let t = TaskSpace::new(format!("S{round}"));
                    for i in 0..50u64 {
                        task(async move {
                            if i % 2 == 0 {
                                tokio::task::yield_now().await;
                            }
                        })
                        .id(t.at(i))
                        .spawn();
                    }
                    let h = tokio::runtime::Handle::current();
                    tokio::task::block_in_place(|| {
                        if whole_space {
                            h.block_on((&t).into_future())
                        } else {
                            (0..50u64).try_for_each(|i| h.block_on(t.at(i).into_future()))
                        }
                    })?;
                    assert!((0..50u64).all(|i| t.at(i).is_finished()));
                }
                Ok::<_, TaskError>(20)
            }))
        });
        assert_eq!(rounds, Ok(Ok(20)), "whole space: {whole_space}");
    }
}

/// Awaits `D[0]` from `block_on` after a task that hands `start` the space `D` and
/// finishes at once: what `start` begins must spawn `D[0]`, and nothing keeps its handle.
fn await_what_a_detached_start_spawns(
    rt: &parla::Runtime,
    start: impl FnOnce(TaskSpace) + Send + 'static,
) -> Result<(), TaskError> {
    rt.block_on(async {
        let t = TaskSpace::new("D");
        let t1 = t.clone();
        task(async move { start(t1) }).await.unwrap();
        t.at(0).await
    })
}

#[test]
fn detached_tokio_and_blocking_tasks_may_spawn_what_others_await() {
    each_config!(|rt| {
        // Nothing of the runtime runs meanwhile: without counting what each starts, the id
        // would fail as never spawned.
        let tokio_task = await_what_a_detached_start_spawns(&rt, |t| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                task(async { 1 }).id(t.at(0)).spawn();
            });
        });
        assert_eq!(tokio_task, Ok(()));
        let blocking = await_what_a_detached_start_spawns(&rt, |t| {
            tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_millis(50));
                task(async { 2 }).id(t.at(0)).spawn();
            });
        });
        assert_eq!(blocking, Ok(()));
    });
}

#[test]
fn a_stuck_program_that_used_spawn_blocking_still_gets_its_error() {
    let rt = support::cpu(2);
    let r = support::within(30, move || {
        rt.block_on(async {
            let v = task(async { tokio::task::spawn_blocking(|| 5).await.unwrap() })
                .await
                .unwrap();
            // The blocking thread idles on; the id is never spawned all the same.
            (v, TaskSpace::new("S").at(0).await)
        })
    });
    assert_eq!(r.0, 5);
    assert!(
        matches!(r.1, Err(TaskError::NeverSpawned { .. })),
        "{:?}",
        r.1
    );
}

#[test]
fn a_task_of_another_runtime_is_an_outside_event_to_await_and_an_error_to_depend_on() {
    let a = support::cpu(2);
    let b = support::cpu(2);
    let r = support::within(30, move || {
        let slow = a.handle().spawn(task(async {
            std::thread::sleep(Duration::from_millis(20));
            7
        }));
        b.block_on(async move {
            let dep = task(async {}).after(&slow).await;
            // Once it succeeded, too.
            while !slow.is_finished() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let after_done = task(async {}).after(&slow).await;
            (dep, after_done, slow.await)
        })
    });
    for dep in [&r.0, &r.1] {
        assert!(
            matches!(dep, Err(TaskError::WrongRuntime { .. })),
            "{dep:?}"
        );
    }
    assert_eq!(r.2, Ok(7));
}

/// Ids of another runtime's space, awaited from `block_on` and from a task: finished ones
/// give their outcome, one still running is waited for, and one never spawned is
/// `NeverSpawned` (as outside any runtime) - none of them hangs.
#[test]
fn ids_of_another_runtime_can_be_awaited() {
    let a = support::cpu(2);
    let b = support::cpu(2);
    let t = TaskSpace::new("A");
    let r = support::within(30, move || {
        let (open, gate) = std::sync::mpsc::channel::<()>();
        a.block_on(async {
            task(async {}).id(t.at(0)).await.unwrap();
            let failed = task(async { panic!("bad") }).id(t.at(1)).await;
            assert!(failed.is_err());
        });
        let ha = a.handle();
        let t2 = t.clone();
        ha.spawn(
            task(async move {
                let _ = gate.recv();
            })
            .id(t2.at(2)),
        );
        let t3 = t.clone();
        let r = b.block_on(async move {
            let here = (
                t.at(0).await,
                t.at(1).await,
                t.range(0..2).await,
                t.at(9).await,
            );
            let in_task = task(async move { (t3.at(0).await, t3.at(1).await) }).await;
            open.send(()).unwrap();
            (here, in_task, t.at(2).await, (&t).await)
        });
        drop(a);
        r
    });
    let ((ok, failed, range, missing), in_task, running, space) = r;
    assert_eq!(ok, Ok(()));
    assert!(
        matches!(failed, Err(TaskError::Panicked { .. })),
        "{failed:?}"
    );
    assert!(
        matches!(range, Err(TaskError::Panicked { .. })),
        "{range:?}"
    );
    assert!(
        matches!(missing, Err(TaskError::NeverSpawned { .. })),
        "{missing:?}"
    );
    let (ok, failed) = in_task.expect("the task awaiting them");
    assert_eq!(ok, Ok(()));
    assert!(
        matches!(failed, Err(TaskError::Panicked { .. })),
        "{failed:?}"
    );
    assert_eq!(running, Ok(()));
    assert!(
        matches!(space, Err(TaskError::Panicked { .. })),
        "{space:?}"
    );
}

/// Handles of tasks that succeeded, of two runtimes, given to one builder (in either order,
/// or built outside any runtime): the spawn on either runtime is a `WrongRuntime` error,
/// and handles of the spawning runtime alone are met dependencies.
#[test]
fn succeeded_dependencies_of_two_runtimes_are_an_error_whichever_comes_first() {
    let a = support::cpu(2);
    let b = support::cpu(2);
    let r = support::within(30, move || {
        let ta = a.handle().spawn(task(async {}));
        let tb = b.handle().spawn(task(async {}));
        // Both succeeded before any builder below is made.
        while !(ta.is_finished() && tb.is_finished()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Built outside any runtime, spawned in `b`.
        let outside = task(async {}).after(&ta);
        let outside_own = task(async {}).after(&tb);
        b.block_on(async {
            let a_first = task(async {}).after(&ta).after(&tb).await;
            let b_first = task(async {}).after(&tb).after(&ta).await;
            let own = task(async { 5 }).after(&tb).after([&tb]).await;
            (a_first, b_first, own, outside.await, outside_own.await)
        })
    });
    for dep in [&r.0, &r.1, &r.3] {
        assert!(
            matches!(dep, Err(TaskError::WrongRuntime { .. })),
            "{dep:?}"
        );
    }
    assert_eq!(r.2, Ok(5));
    assert_eq!(r.4, Ok(()));
}

#[test]
fn a_space_belongs_to_one_runtime_at_a_time() {
    let t = TaskSpace::new("Shared");
    let a = support::cpu(2);
    let t1 = t.clone();
    let first = support::within(30, move || {
        let t0 = t1.clone();
        let r = a.block_on(async move { task(async { 1 }).id(t0.at(0)).await });
        // While `a` lives, another runtime cannot use the space.
        let b = support::cpu(2);
        let t2 = t1.clone();
        let other = b.block_on(async move { task(async { 2 }).id(t2.at(1)).await });
        drop(a);
        // Once `a` is gone, the space can move on.
        let t3 = t1.clone();
        let later = b.block_on(async move { task(async { 3 }).id(t3.at(2)).await });
        (r, other, later)
    });
    assert_eq!(first.0, Ok(1));
    assert!(
        matches!(first.1, Err(TaskError::WrongRuntime { .. })),
        "{:?}",
        first.1
    );
    assert_eq!(first.2, Ok(3));
}

/// A task spawned through another runtime's `Handle` from inside a runtime (its
/// `block_on`, or one of its tasks) depends on ids in the runtime that spawns it: an id
/// spawned there before, one spawned after (a forward reference in a new space), and ids
/// of a range. (Looked up in the runtime the code ran in, the first never finished and the
/// second bound the new space to the wrong runtime: `WrongRuntime`.)
#[test]
fn a_task_spawned_through_another_runtimes_handle_depends_on_ids_there() {
    let a = support::cpu(1);
    let b = support::cpu(1);
    let hb = b.handle();
    let r = support::within(30, move || {
        a.block_on(async move {
            let t = TaskSpace::new("F");
            let x = hb.spawn(task(async { 1 }).id(t.at("x")));
            let y = hb.spawn(task(async { 2 }).id(t.at("y")).after(t.at("x")));
            // A new space's first use: a forward reference.
            let u = TaskSpace::new("G");
            let w = hb.spawn(task(async { 4 }).id(u.at(1)).after(u.at(0)));
            let v = hb.spawn(task(async { 3 }).id(u.at(0)));
            let all = hb.spawn(task(async { 5 }).after(u.range(0..2)));
            // From a task of `a`, with ids of a space `b` uses.
            let hb2 = hb.clone();
            let t2 = t.clone();
            let z = task(async move {
                hb2.spawn(task(async { 6 }).after(t2.at("y")).after(t2.at("x")))
                    .await
            })
            .await;
            (
                x.await,
                y.await,
                v.await,
                w.await,
                all.await,
                z.ok().and_then(|r| r.ok()),
            )
        })
    });
    assert_eq!(r, (Ok(1), Ok(2), Ok(3), Ok(4), Ok(5), Some(6)));
}

/// A backend with one GPU that fails for good after its first task.
struct Failing {
    failed: AtomicBool,
}

struct FailingExec(Arc<Failing>);

impl GpuExec for FailingExec {
    fn enter(&mut self) {}
    fn exit(&mut self) {}
    fn finish(self: Box<Self>) -> Result<Arc<dyn Fence>, String> {
        self.0.failed.store(true, Ordering::SeqCst);
        Err("simulated sticky device error".into())
    }
}

struct FailingBackend(Arc<Failing>);

impl GpuBackend for FailingBackend {
    fn devices(&self) -> Vec<GpuInfo> {
        support::one_gpu("failing GPU")
    }
    fn begin(
        &self,
        _: usize,
        _: &dyn std::fmt::Display,
        _: &[Arc<dyn Fence>],
        _: u8,
    ) -> Result<Box<dyn GpuExec>, String> {
        Ok(Box::new(FailingExec(self.0.clone())))
    }
    fn device_error(&self, _: usize) -> Option<String> {
        self.0
            .failed
            .load(Ordering::SeqCst)
            .then(|| "simulated sticky device error".to_string())
    }
}

fn failing(_: &GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String> {
    Ok(Some(Arc::new(FailingBackend(Arc::new(Failing {
        failed: AtomicBool::new(false),
    })))))
}

/// A backend whose `begin` panics.
struct Panicking;
impl GpuBackend for Panicking {
    fn devices(&self) -> Vec<GpuInfo> {
        support::one_gpu("panicking GPU")
    }
    fn begin(
        &self,
        _: usize,
        _: &dyn std::fmt::Display,
        _: &[Arc<dyn Fence>],
        _: u8,
    ) -> Result<Box<dyn GpuExec>, String> {
        panic!("backend bug")
    }
    fn device_error(&self, _: usize) -> Option<String> {
        None
    }
}

#[test]
fn a_failed_gpu_no_longer_attracts_tasks_that_may_run_elsewhere() {
    let rt = support::rt_with(2, failing);
    let r = support::within(30, move || {
        rt.block_on(async {
            let first = task(async {}).placement(Placement::Gpu(0)).await;
            let mut elsewhere = Vec::new();
            for _ in 0..10 {
                elsewhere.push(
                    task(async { current_device() })
                        .placement([Placement::Cpu, Placement::AnyGpu])
                        .await,
                );
            }
            let only_gpu = task(async {}).placement(Placement::Gpu(0)).await;
            (first, elsewhere, only_gpu)
        })
    });
    assert!(matches!(r.0, Err(TaskError::Device { .. })), "{:?}", r.0);
    for d in r.1 {
        assert_eq!(d, Ok(Device::CPU));
    }
    match r.2 {
        Err(TaskError::Device { message, .. }) => {
            assert!(message.contains("failed earlier"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_panicking_backend_fails_its_task_and_the_graph_goes_on() {
    fn panicking(_: &GpuOptions) -> Result<Option<Arc<dyn GpuBackend>>, String> {
        Ok(Some(Arc::new(Panicking)))
    }
    let rt = support::rt_with(2, panicking);
    let r = support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("G");
            task(async {})
                .id(t.at(0))
                .placement(Placement::Gpu(0))
                .spawn();
            let after = task(async {}).after(t.at(0)).spawn();
            let cpu = task(async { 1 }).await;
            (t.at(0).await, after.await, cpu)
        })
    });
    match r.0 {
        Err(TaskError::Device { message, .. }) => {
            assert!(message.contains("panicked"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(r.1, Err(TaskError::DependencyFailed { .. })));
    assert_eq!(r.2, Ok(1));
}

/// Sets its flag when dropped: tells that the future holding it was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Waits (up to a minute, for a loaded machine) until `flag` is set.
fn wait_for(flag: &AtomicBool) -> bool {
    for _ in 0..6000 {
        if flag.load(Ordering::Acquire) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// In an asynchronous context: makes a runtime, gets a task's result through its handle,
/// leaves a task running that sets `dropped` when its future is dropped, and drops the
/// runtime there. Returns the result.
async fn use_a_runtime_and_drop_it(dropped: Arc<AtomicBool>) -> i32 {
    let rt = support::cpu(2);
    let h = rt.handle();
    let v = h.spawn(task(async { 6 * 7 })).await.unwrap();
    let flag = DropFlag(dropped);
    let _pending = h.spawn(task(async move {
        let _flag = flag;
        std::future::pending::<()>().await
    }));
    drop(rt);
    v
}

/// Dropping a runtime whose tasks compute, then yield, in endless loops: the tasks stop at
/// once, polled hardly again after the drop began, and resolve to `Cancelled`. (The
/// drivers went on running them until Tokio's workers looked for the shutdown, which they
/// do every 61 polls of their own tasks: 100 such tasks of 1 ms took 0.7 s to drop, against
/// 40 ms for Tokio, polled about 15 more times each.)
#[test]
fn a_runtime_dropped_while_its_tasks_yield_in_loops_stops_them_at_once() {
    const TASKS: usize = 32;
    let (after_drop, outcomes) = support::within(60, || {
        let rt = support::cpu(2);
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = (0..TASKS)
            .map(|_| {
                let polls = polls.clone();
                rt.handle().spawn(task(async move {
                    loop {
                        polls.fetch_add(1, Ordering::SeqCst);
                        let t = std::time::Instant::now();
                        while t.elapsed() < Duration::from_millis(1) {
                            std::hint::spin_loop();
                        }
                        tokio::task::yield_now().await;
                    }
                }))
            })
            .collect();
        while polls.load(Ordering::SeqCst) < 4 * TASKS {
            std::thread::sleep(Duration::from_millis(1));
        }
        let before = polls.load(Ordering::SeqCst);
        drop(rt);
        let after_drop = polls.load(Ordering::SeqCst) - before;
        let outcomes: Vec<_> = handles
            .into_iter()
            .map(futures_util::FutureExt::now_or_never)
            .collect();
        (after_drop, outcomes)
    });
    // The poll each worker was in and one each may have begun as the drop began - more if
    // this thread was descheduled between its count and the drop - but not one per task.
    assert!(
        after_drop < TASKS,
        "{after_drop} polls after the drop began"
    );
    for o in outcomes {
        assert!(matches!(o, Some(Err(TaskError::Cancelled { .. }))), "{o:?}");
    }
}

#[test]
fn a_runtime_dropped_in_a_tokio_applications_async_fn_stops_its_workers() {
    // A Tokio application that uses a parla runtime through its handle, and drops it in an
    // `async fn`, where a blocking wait for the workers is not allowed.
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let v = support::within(60, move || {
        let app = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        app.block_on(use_a_runtime_and_drop_it(d))
    });
    assert_eq!(v, 42);
    assert!(
        wait_for(&dropped),
        "the unfinished task was dropped with its runtime's workers"
    );
}

/// Dropped in an `async fn`, the runtime tells its workers to stop and returns: a task
/// that one of them was polling meanwhile, and that waits again on a timer, was neither
/// cancelled by the drop (it was running) nor run again (its workers were going), and its
/// handle waited for good, in about 1 drop in 200. Every handle resolves now: to its value,
/// or to `Cancelled`.
#[test]
fn every_handle_resolves_when_a_runtime_is_dropped_in_an_async_fn_with_tasks_in_flight() {
    let unresolved = support::within(120, || {
        let app = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut unresolved = Vec::new();
        for round in 0..500u64 {
            let left = app.block_on(async move {
                let rt = support::cpu(6);
                let h = rt.handle();
                let handles: Vec<_> = (0..20u64)
                    .map(|i| {
                        h.spawn(task(async move {
                            let us = (i * 997 + round * 131) % 2000;
                            tokio::time::sleep(Duration::from_micros(us)).await;
                            i
                        }))
                    })
                    .collect();
                tokio::time::sleep(Duration::from_micros((round * 373) % 2000)).await;
                drop(rt);
                let mut left = 0;
                for h in handles {
                    match tokio::time::timeout(Duration::from_secs(10), h).await {
                        Ok(Ok(_) | Err(TaskError::Cancelled { .. })) => {}
                        Ok(Err(e)) => panic!("round {round}: {e}"),
                        Err(_) => left += 1,
                    }
                }
                left
            });
            if left > 0 {
                unresolved.push((round, left));
            }
        }
        unresolved
    });
    assert!(
        unresolved.is_empty(),
        "(round, handles unresolved): {unresolved:?}"
    );
}

/// A runtime of one worker dropped from a plain thread while a task waits on a channel
/// nobody sends on, keeping its VCUs, and tasks queued behind it borrow them: the drop's
/// cancellation could find that task claimed for the loan (as if it ran) and leave it, and
/// nothing cancelled it afterwards; its handle waited for good, a few drops in a hundred on
/// a loaded machine. Every handle resolves now.
#[test]
fn every_handle_resolves_when_a_runtime_is_dropped_while_a_waiting_task_lends_its_vcus() {
    let unresolved = support::within(120, || {
        let waiter = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut unresolved = Vec::new();
        for round in 0..300u64 {
            let rt = support::cpu(1);
            let h = rt.handle();
            let t = TaskSpace::new("L");
            let mut senders = Vec::new();
            let mut handles = Vec::new();
            for i in 0..10u64 {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                senders.push(tx);
                let mut b = task(async move {
                    match (i + round) % 3 {
                        0 => drop(rx.await),
                        1 => tokio::time::sleep(Duration::from_micros(200 + i * 50)).await,
                        _ => tokio::task::yield_now().await,
                    }
                    i
                })
                .id(t.at(i));
                if i % 2 == 1 {
                    b = b.after(t.at(i - 1));
                }
                handles.push(h.spawn(b));
            }
            std::thread::sleep(Duration::from_micros((round * 37) % 400));
            drop(rt);
            let left = handles
                .into_iter()
                .map(|h| {
                    waiter.block_on(async { tokio::time::timeout(Duration::from_secs(5), h).await })
                })
                .filter(|r| match r {
                    Ok(
                        Ok(_)
                        | Err(TaskError::Cancelled { .. } | TaskError::DependencyFailed { .. }),
                    ) => false,
                    Ok(Err(e)) => panic!("round {round}: {e}"),
                    Err(_) => true,
                })
                .count();
            drop(senders);
            if left > 0 {
                // (One such round is enough: each handle left took 5 s.)
                unresolved.push((round, left));
                break;
            }
        }
        unresolved
    });
    assert!(
        unresolved.is_empty(),
        "(round, handles unresolved): {unresolved:?}"
    );
}

#[test]
fn a_runtime_dropped_inside_a_task_of_another_stops_its_workers() {
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let v = support::on_cpu(2, move || task(use_a_runtime_and_drop_it(d)));
    assert_eq!(v.unwrap(), 42);
    assert!(
        wait_for(&dropped),
        "the unfinished task was dropped with its runtime's workers"
    );
}

/// Two tasks waiting on each other, which the stall resolver did not fail as a `Cycle` (a
/// thread held the runtime), when the runtime is dropped: nothing the drop cancelled led
/// to them, and their handles waited for good. Both are cancelled now.
#[test]
fn a_dependency_cycle_is_cancelled_when_the_runtime_is_dropped() {
    let rt = support::cpu(2);
    let h = rt.handle();
    let t = TaskSpace::new("C");
    let hold = h.hold();
    let a = h.spawn(task(async { 1 }).id(t.at("a")).after(t.at("b")));
    let b = h.spawn(task(async { 2 }).id(t.at("b")).after(t.at("a")));
    drop(rt);
    drop(hold);
    for (name, x) in [("a", a), ("b", b)] {
        let r = wait_elsewhere(10, x);
        assert!(
            matches!(&r, Some(Err(TaskError::Cancelled { task })) if task == &format!("C[{name}]")),
            "{name}: {r:?}"
        );
    }
}

/// Waits for `fut` on a Tokio runtime of its own (a thread outside the parla runtime), for
/// at most `secs` seconds.
fn wait_elsewhere<F: std::future::Future + Send + 'static>(secs: u64, fut: F) -> Option<F::Output>
where
    F::Output: Send + 'static,
{
    support::within(secs + 30, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                tokio::time::timeout(Duration::from_secs(secs), fut)
                    .await
                    .ok()
            })
    })
}

/// A task that drops its own runtime (taken out of a shared slot) and then waits: the
/// drop, made inside the task's poll, found it running; once the poll returned `Pending`
/// nothing polled or cancelled it, and its handle never resolved.
#[test]
fn a_task_that_drops_its_own_runtime_and_then_waits_is_cancelled() {
    let rt = support::cpu(2);
    let h = rt.handle();
    let slot = Arc::new(parking_lot::Mutex::new(Some(rt)));
    let s = slot.clone();
    let (_open, shut) = tokio::sync::oneshot::channel::<()>();
    let other = h.spawn(task(async move { shut.await.is_ok() }));
    let dropper = h.spawn(task(async move {
        drop(s.lock().take());
        tokio::time::sleep(Duration::from_millis(10)).await;
        5
    }));
    let r = wait_elsewhere(30, async move { (dropper.await, other.await) });
    let (dropper, other) = r.expect("both handles resolved");
    assert!(
        matches!(dropper, Err(TaskError::Cancelled { .. })),
        "{dropper:?}"
    );
    assert!(
        matches!(other, Err(TaskError::Cancelled { .. })),
        "{other:?}"
    );
    assert!(slot.lock().is_none());
}

/// The runtime dropped from a Tokio application's `async fn` (the drop does not wait for
/// the workers there) while a task is in the middle of a poll: once that poll returns
/// `Pending`, the task is cancelled (its handle never resolved).
#[test]
fn a_task_in_its_poll_while_the_runtime_is_dropped_elsewhere_is_cancelled() {
    let rt = support::cpu(2);
    let started = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let (s, d) = (started.clone(), dropped.clone());
    let busy = rt.handle().spawn(task(async move {
        s.store(true, Ordering::Release);
        while !d.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        2
    }));
    assert!(wait_for(&started), "the task started");
    let r = wait_elsewhere(30, async move {
        drop(rt);
        dropped.store(true, Ordering::Release);
        busy.await
    });
    let busy = r.expect("the handle resolved");
    assert!(matches!(busy, Err(TaskError::Cancelled { .. })), "{busy:?}");
}

/// A task waiting on an id not spawned yet, while another task keeps the runtime busy: the
/// drop finds it unfinished and cancels it (its dependency, the id, is cancelled), as it
/// does a task waiting on a task. (The drop failed the id as `NeverSpawned`, blaming the
/// program for what the shutdown did.)
#[test]
fn a_task_waiting_on_an_id_not_spawned_yet_is_cancelled_by_the_drop() {
    let r = support::within(30, || {
        let rt = support::cpu(2);
        let t = TaskSpace::new("P");
        let (_open, shut) = tokio::sync::oneshot::channel::<()>();
        let (busy, on_id, on_busy) = {
            let h = rt.handle();
            let _in = h.enter();
            let busy = task(async move { shut.await.is_ok() }).spawn();
            let on_id = task(async {}).after(t.at("later")).spawn();
            let on_busy = task(async {}).after(&busy).spawn();
            (busy, on_id, on_busy)
        };
        let id = t.at("later").into_future();
        drop(rt);
        futures_util::FutureExt::now_or_never(async {
            (busy.await, on_id.await, on_busy.await, id.await)
        })
    });
    let (busy, on_id, on_busy, id) = r.expect("every wait resolved by the drop");
    assert!(matches!(busy, Err(TaskError::Cancelled { .. })), "{busy:?}");
    for dependent in [on_id, on_busy] {
        assert!(
            matches!(&dependent, Err(TaskError::DependencyFailed { cause, .. })
                if matches!(**cause, TaskError::Cancelled { .. })),
            "{dependent:?}"
        );
    }
    assert!(
        matches!(&id, Err(TaskError::Cancelled { task }) if task == "P[later]"),
        "{id:?}"
    );
}

/// A handle kept after its runtime was dropped: what it spawns (directly, or under its
/// `enter` guard) resolves to `Cancelled` instead of never resolving, and a task after an
/// id nobody spawned fails as that id does: cancelled, the shutdown keeping it from being
/// spawned.
#[test]
fn tasks_spawned_through_the_handle_of_a_dropped_runtime_are_cancelled() {
    let r = support::within(30, || {
        let rt = support::cpu(2);
        let h = rt.handle();
        let t = TaskSpace::new("Gone");
        rt.block_on(async { task(async {}).id(t.at(0)).await.unwrap() });
        drop(rt);
        let direct = h.spawn(task(async { 1 }));
        let after_id = h.spawn(task(async { 2 }).after(t.at(1)));
        let wait = |th: TaskHandle<i32>| futures_util::FutureExt::now_or_never(th);
        let (entered, in_scope) = {
            let _guard = h.enter();
            let entered = task(async { 3 }).spawn();
            // Awaited while the guard lives: it must not wait for the guard to drop (it
            // waited for good).
            let in_scope = wait(task(async { 4 }).spawn());
            (entered, in_scope)
        };
        (wait(direct), wait(after_id), wait(entered), in_scope)
    });
    assert!(
        matches!(r.0, Some(Err(TaskError::Cancelled { .. }))),
        "{:?}",
        r.0
    );
    assert!(
        matches!(&r.1, Some(Err(TaskError::DependencyFailed { cause, .. }))
            if matches!(**cause, TaskError::Cancelled { .. })),
        "{:?}",
        r.1
    );
    assert!(
        matches!(r.2, Some(Err(TaskError::Cancelled { .. }))),
        "{:?}",
        r.2
    );
    assert!(
        matches!(r.3, Some(Err(TaskError::Cancelled { .. }))),
        "a task spawned inside the guard is cancelled at once: {:?}",
        r.3
    );
}

/// A task of one runtime runs another's `block_on` (inside `block_in_place`), whose future
/// spawns a task into the first through its handle and awaits it: the thread is blocked in
/// the first task's poll, and the spawned task must run elsewhere (it waited for that poll
/// to end, for good, once the future no longer counted as inside the task).
#[test]
fn a_block_on_inside_a_task_awaits_a_task_it_spawns_into_the_outer_runtime() {
    let a = support::cpu(2);
    let b = std::sync::Arc::new(support::cpu(1));
    let ha = a.handle();
    let r = support::within(60, move || {
        a.block_on(async move {
            task(async move {
                tokio::task::block_in_place(|| {
                    b.block_on(async move {
                        let by_handle = ha.spawn(task(async { 5 }).vcus(0.5)).await;
                        let entered = {
                            let _g = ha.enter();
                            task(async { 6 }).vcus(0.5).spawn()
                        };
                        (by_handle, entered.await)
                    })
                })
            })
            .vcus(0.5)
            .await
        })
    });
    let (by_handle, entered) = r.unwrap();
    assert_eq!((by_handle.unwrap(), entered.unwrap()), (5, 6));
}

/// A task that calls `block_on` of its own runtime, plainly, inside `block_in_place`, or
/// in a `spawn_blocking` closure it awaits, fails with a panic that says why, and the
/// runtime goes on. (Inside `block_in_place` or `spawn_blocking`, the call waited for every
/// task of the runtime, the caller too: it hung.)
#[test]
fn block_on_from_a_thread_of_its_own_runtime_panics_instead_of_hanging() {
    let rt = Arc::new(support::cpu(2));
    let outcomes = support::within(60, {
        let rt = rt.clone();
        move || {
            let inner = rt.clone();
            rt.block_on(async move {
                let mut out = Vec::new();
                for how in 0..3 {
                    let rt = inner.clone();
                    out.push(
                        task(async move {
                            match how {
                                0 => rt.block_on(async { 1 }),
                                1 => tokio::task::block_in_place(|| rt.block_on(async { 2 })),
                                _ => tokio::task::spawn_blocking(move || rt.block_on(async { 3 }))
                                    .await
                                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
                            }
                        })
                        .await,
                    );
                }
                out
            })
        }
    });
    for (how, r) in outcomes.iter().enumerate() {
        match r {
            Err(TaskError::Panicked { message, .. }) => assert!(
                message.contains("same runtime"),
                "way {how}: the panic does not say why: {message}"
            ),
            other => panic!("way {how}: {other:?}"),
        }
    }
    // The runtime goes on, and `block_on` from this thread works.
    assert_eq!(rt.block_on(task(async { 7 })).unwrap(), 7);
}

/// Dropping a runtime under a long chain of tasks that each await the one before in their
/// bodies (the first never finishes): every handle resolves, and the drop does not
/// overflow the stack. It cancelled the chain recursively (each task cancelled woke the
/// next, whose driver, dropped at once by the Tokio runtime going down, cancelled again):
/// 3,000 such tasks overflowed a main thread's stack.
#[test]
fn dropping_a_runtime_under_a_long_chain_of_awaits_cancels_it_without_recursion() {
    let n = 5_000;
    let r = support::within(120, move || {
        let rt = support::cpu(2);
        let h = rt.handle();
        let mut prev = h.spawn(task(std::future::pending::<u64>()));
        for _ in 1..n {
            let p = prev;
            prev = h.spawn(task(async move { p.await.unwrap_or(0) + 1 }));
        }
        std::thread::sleep(Duration::from_millis(200));
        drop(rt);
        futures_executor_block_on(prev)
    });
    assert!(matches!(r, Err(TaskError::Cancelled { .. })), "{r:?}");
    // The same through recursion: each task spawns its child and awaits it.
    fn nest(depth: u32) -> std::pin::Pin<Box<dyn std::future::Future<Output = u32> + Send>> {
        Box::pin(async move {
            if depth == 0 {
                return std::future::pending().await;
            }
            task(nest(depth - 1)).spawn().await.unwrap_or(0) + 1
        })
    }
    let r = support::within(120, move || {
        let rt = support::cpu(2);
        let top = rt.handle().spawn(task(nest(n)));
        std::thread::sleep(Duration::from_millis(300));
        drop(rt);
        futures_executor_block_on(top)
    });
    assert!(matches!(r, Err(TaskError::Cancelled { .. })), "{r:?}");
}

/// A body the runtime's drop cancels is dropped with the runtime current: a task its
/// `Drop` spawns (a guard that spawns its release work) resolves to `Cancelled`, as one
/// spawned through a handle after the drop does, and `Handle::current()` there is the
/// runtime's handle. (It was `NoRuntime`, "spawned outside a parla runtime", and `None`.)
#[test]
fn a_task_spawned_by_a_body_the_drop_cancels_is_cancelled() {
    type Seen = (bool, TaskHandle<()>);
    struct Cleanup(std::sync::mpsc::Sender<Seen>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let current = parla::Handle::current().is_some();
            let _ = self.0.send((current, task(async {}).spawn()));
        }
    }
    let rt = Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (_keep, never) = tokio::sync::oneshot::channel::<()>();
    let guard = Cleanup(tx);
    let _waiting = rt.handle().spawn(task(async move {
        let _guard = guard;
        started_tx.send(()).unwrap();
        let _ = never.await;
    }));
    started.recv().unwrap();
    // Parked on the channel by then, so that the drop's own pass cancels it on this
    // thread (one still in its poll is cancelled by its driver, with the runtime current
    // there already).
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(rt);
    let (current, spawned) = rx.recv().unwrap();
    assert!(current, "Handle::current() in the Drop of a cancelled body");
    let r = futures_util::FutureExt::now_or_never(spawned);
    assert!(
        matches!(r, Some(Err(TaskError::Cancelled { .. }))),
        "a task spawned there: {r:?}"
    );
}
