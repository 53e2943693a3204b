//! Every error of the semantics: each resolves at once or at quiescence, never hangs, never
//! aborts. Each test runs under a timeout, so a hang fails the test.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parla::prelude::*;

fn assert_send_sync_error<E: std::error::Error + Send + Sync + 'static>() {}

#[test]
fn task_error_is_a_send_sync_error() {
    assert_send_sync_error::<TaskError>();
    assert_send_sync_error::<parla::Error>();
}

/// A panic with an error or a number as its payload (`std::panic::panic_any`) keeps its
/// text in the task's error; of another type, the error says it had none.
#[test]
fn panics_with_errors_or_numbers_keep_their_text() {
    let rt = support::cpu(2);
    let message = |r: Result<(), TaskError>| match r {
        Err(TaskError::Panicked { message, .. }) => message,
        other => panic!("{other:?}"),
    };
    let (err, num, other) = rt.block_on(async {
        let err = task(async {
            let e: Box<dyn std::error::Error + Send + Sync> = "disk full".into();
            std::panic::panic_any(e);
        })
        .await;
        let num = task(async { std::panic::panic_any(42i32) }).await;
        let other = task(async { std::panic::panic_any(vec![1u8]) }).await;
        (err, num, other)
    });
    assert_eq!(message(err), "disk full");
    assert_eq!(message(num), "42");
    assert_eq!(message(other), "non-string panic payload");
}

#[test]
fn panic_resolves_to_panicked_and_dependents_do_not_run() {
    each_config!(|rt| {
        let ran = Arc::new(AtomicBool::new(false));
        let r2 = ran.clone();
        let (a, b, c) = rt.block_on(async move {
            let t = TaskSpace::new("T");
            let a = task(async {
                panic!("boom");
            })
            .id(t.at(0))
            .spawn();
            let r3 = r2.clone();
            let b = task(async move { r3.store(true, Ordering::SeqCst) })
                .id(t.at(1))
                .after(t.at(0))
                .spawn();
            let c = task(async move { r2.store(true, Ordering::SeqCst) })
                .id(t.at(2))
                .after(t.at(1))
                .spawn();
            (a.await, b.await, c.await)
        });
        match a {
            Err(TaskError::Panicked { task, message }) => {
                assert_eq!(task, "T[0]");
                assert_eq!(message, "boom");
            }
            other => panic!("{other:?}"),
        }
        for r in [b, c] {
            match r {
                Err(TaskError::DependencyFailed {
                    dependency, cause, ..
                }) => {
                    assert_eq!(dependency, "T[0]", "names the task that failed first");
                    assert!(matches!(*cause, TaskError::Panicked { .. }));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            !ran.load(Ordering::SeqCst),
            "a dependent of a failed task ran"
        );
    });
}

#[test]
fn dependent_spawned_after_the_failure_fails_too() {
    let rt = support::cpu(2);
    support::within(30, move || {
        let r = rt.block_on(async {
            let bad = task(async { panic!("early") }).spawn();
            while !bad.is_finished() {
                tokio::task::yield_now().await;
            }
            task(async {}).after(&bad).await
        });
        assert!(
            matches!(r, Err(TaskError::DependencyFailed { .. })),
            "{r:?}"
        );
    });
}

#[test]
fn a_failing_chain_head_fails_a_long_chain_without_overflow() {
    let rt = support::cpu(2);
    support::within(60, move || {
        let r = rt.block_on(async {
            let gate = task(async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                panic!("head")
            })
            .spawn();
            let mut prev = task(async {}).after(&gate).spawn();
            for _ in 0..100_000 {
                prev = task(async {}).after(&prev).spawn();
            }
            prev.await
        });
        assert!(matches!(r, Err(TaskError::DependencyFailed { .. })));
    });
}

#[test]
fn unsatisfiable_constraints_resolve_at_once() {
    each_config!(|rt| {
        let gpus = rt.gpus();
        let errs = rt.block_on(async move {
            let vcus = task(async {}).vcus(1.5).await.unwrap_err();
            let neg = task(async {}).vcus(-0.1).await.unwrap_err();
            let nan = task(async {}).vcus(f64::NAN).await.unwrap_err();
            let mem = task(async {}).memory(u64::MAX / 2).await.unwrap_err();
            let gpu7 = task(async {})
                .placement(Placement::Gpu(7))
                .await
                .unwrap_err();
            let any = task(async {}).placement(Placement::AnyGpu).await;
            let empty = task(async {})
                .placement(Vec::<Placement>::new())
                .await
                .unwrap_err();
            (vcus, neg, nan, mem, gpu7, any, empty)
        });
        let text = |e: &TaskError| e.to_string();
        assert!(matches!(errs.0, TaskError::Unsatisfiable { .. }));
        assert!(text(&errs.0).contains("vcus = 1.5"), "{}", errs.0);
        assert!(text(&errs.1).contains("-0.1"), "{}", errs.1);
        assert!(text(&errs.2).contains("NaN"), "{}", errs.2);
        assert!(
            text(&errs.3).contains(&(u64::MAX / 2).to_string()),
            "names the bytes asked for: {}",
            errs.3
        );
        assert!(text(&errs.4).contains("gpu(7)"), "{}", errs.4);
        assert!(text(&errs.4).contains(&format!("{gpus} GPU")), "{}", errs.4);
        if gpus == 0 {
            let e = errs.5.unwrap_err();
            assert!(e.to_string().contains("no GPU"), "{e}");
        } else {
            assert!(errs.5.is_ok());
        }
        assert!(matches!(errs.6, TaskError::Unsatisfiable { .. }));
    });
}

#[test]
fn memory_over_one_device_but_under_another_goes_to_the_other() {
    let rt = parla::Runtime::builder()
        .cpu_threads(2)
        .cpu_memory(1 << 20)
        .virtual_gpus(1, 1 << 30)
        .build()
        .unwrap();
    let dev = rt
        .block_on(async {
            task(async { current_device() })
                .placement([Placement::Cpu, Placement::AnyGpu])
                .memory(1 << 25)
                .await
        })
        .unwrap();
    assert_eq!(dev.to_string(), "gpu:0");
}

#[test]
fn duplicate_id() {
    each_config!(|rt| {
        let (first, second, after) = rt.block_on(async {
            let t = TaskSpace::new("T");
            let a = task(async { 1 }).id(t.at(5)).spawn();
            let mut b = task(async { 2 }).id(t.at(5usize)).spawn();
            // A task after the refused one names it apart from the task under the id.
            let after = task(async { 3 }).after(&b).await;
            (a.await, (&mut b).await, after)
        });
        assert_eq!(first.unwrap(), 1, "the first task is unaffected");
        match second {
            Err(TaskError::DuplicateId { id }) => assert_eq!(id, "T[5]"),
            other => panic!("{other:?}"),
        }
        match after {
            Err(TaskError::DependencyFailed {
                dependency, cause, ..
            }) => {
                assert_eq!(dependency, "T[5] (a duplicate, refused)");
                assert!(matches!(*cause, TaskError::DuplicateId { .. }));
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn never_spawned_fails_dependents_and_awaits_at_quiescence() {
    each_config!(|rt| {
        let (dep, awaited) = rt.block_on(async {
            let t = TaskSpace::new("T");
            let d = task(async {}).id(t.at(1)).after(t.at(0)).spawn();
            let w = t.at(99).await;
            (d.await, w)
        });
        match dep {
            Err(TaskError::DependencyFailed {
                dependency, cause, ..
            }) => {
                assert_eq!(dependency, "T[0]");
                assert!(matches!(*cause, TaskError::NeverSpawned { .. }));
            }
            other => panic!("{other:?}"),
        }
        match awaited {
            Err(TaskError::NeverSpawned { id }) => assert_eq!(id, "T[99]"),
            other => panic!("{other:?}"),
        }
    });
}

/// Forward references made by tasks on every worker at once: at quiescence the ones never
/// spawned fail their dependents, and the ones spawned later resolve.
#[test]
fn forward_references_made_on_many_workers_are_all_resolved_or_failed() {
    let rt = support::cpu(8);
    let outcomes = support::within(60, move || {
        rt.block_on(async {
            let t = TaskSpace::new("T");
            let makers: Vec<_> = (0..64)
                .map(|i| {
                    let t = t.clone();
                    task(async move {
                        // A dependent of an id nobody spawns, and one spawned right after.
                        let lost = task(async {}).after(t.at(("never", i))).spawn();
                        let found = task(async move { i }).after(t.at(("later", i))).spawn();
                        task(async {}).id(t.at(("later", i))).spawn();
                        (lost.await, found.await)
                    })
                    .spawn()
                })
                .collect();
            let mut out = Vec::new();
            for m in makers {
                out.push(m.await.expect("maker task"));
            }
            out
        })
    });
    for (i, (lost, found)) in outcomes.into_iter().enumerate() {
        match lost {
            Err(TaskError::DependencyFailed { cause, .. }) => {
                assert!(
                    matches!(*cause, TaskError::NeverSpawned { .. }),
                    "{cause:?}"
                );
            }
            other => panic!("task {i}: {other:?}"),
        }
        assert_eq!(found.expect("spawned later"), i);
    }
}

#[test]
fn never_spawned_when_main_returns_without_awaiting() {
    let rt = support::cpu(2);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let h = support::within(30, move || {
        rt.block_on(async move {
            let t = TaskSpace::new("T");
            let h = task(async move { r.store(true, Ordering::SeqCst) })
                .after(t.at("missing"))
                .spawn();
            Some(h)
        })
        .unwrap()
    });
    assert!(!ran.load(Ordering::SeqCst));
    assert!(h.is_finished());
}

#[test]
fn forward_reference_spawned_later_by_a_sleeping_main_is_not_failed() {
    let rt = support::cpu(2);
    let r = support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("T");
            let d = task(async { 1 }).after(t.at("late")).spawn();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            task(async {}).id(t.at("late")).spawn();
            d.await
        })
    });
    assert_eq!(r.unwrap(), 1);
}

#[test]
fn dependency_cycle() {
    each_config!(|rt| {
        let (a, b, c) = rt.block_on(async {
            let t = TaskSpace::new("T");
            let a = task(async {}).id(t.at("a")).after(t.at("b")).spawn();
            let b = task(async {}).id(t.at("b")).after(t.at("a")).spawn();
            let c = task(async {}).id(t.at("c")).after(t.at("b")).spawn();
            (a.await, b.await, c.await)
        });
        for r in [&a, &b] {
            match r {
                Err(TaskError::Cycle { ids }) => {
                    let mut sorted = ids.clone();
                    sorted.sort();
                    assert_eq!(sorted, vec!["T[a]", "T[b]"]);
                    let shown = r.as_ref().unwrap_err().to_string();
                    let loop_ = format!("dependency cycle: {} -> {} -> {}", ids[0], ids[1], ids[0]);
                    assert_eq!(shown, loop_);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            matches!(c, Err(TaskError::DependencyFailed { .. })),
            "{c:?}"
        );
    });
}

/// Many cycles at once (the stall resolver fails every cycle its search finds in one
/// step): each task fails with the cycle it is on, naming that cycle's ids alone.
#[test]
fn many_cycles_each_fail_naming_their_own_ids() {
    let rt = support::cpu(2);
    let results = support::within(60, move || {
        rt.block_on(async {
            let t = TaskSpace::new("C");
            let mut handles = Vec::new();
            for i in 0..200 {
                for (me, other) in [(0, 1), (1, 0)] {
                    let h = task(async {})
                        .id(t.at((i, me)))
                        .after(t.at((i, other)))
                        .spawn();
                    handles.push((i, h));
                }
            }
            let mut out = Vec::new();
            for (i, h) in handles {
                out.push((i, h.await));
            }
            out
        })
    });
    for (i, r) in results {
        match r {
            Err(TaskError::Cycle { ids }) => {
                let mut ids = ids.clone();
                ids.sort();
                assert_eq!(ids, vec![format!("C[{i}, 0]"), format!("C[{i}, 1]")]);
            }
            other => panic!("pair {i}: {other:?}"),
        }
    }
}

#[test]
fn self_dependency_is_a_cycle() {
    let rt = support::cpu(1);
    let r = support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("T");
            task(async {}).id(t.at(0)).after(t.at(0)).await
        })
    });
    assert!(
        matches!(&r, Err(TaskError::Cycle { ids }) if ids == &["T[0]"]),
        "{r:?}"
    );
    assert_eq!(r.unwrap_err().to_string(), "dependency cycle: T[0] -> T[0]");
    // The same through a forward reference: the stall resolver finds it.
    let rt = support::cpu(1);
    let r = support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("T");
            let later = task(async {}).id(t.at(1)).after(t.at(2)).spawn();
            task(async {}).id(t.at(2)).after(t.at(2)).spawn();
            later.await
        })
    });
    assert!(
        matches!(&r, Err(TaskError::DependencyFailed { .. })),
        "{r:?}"
    );
}

#[test]
fn longer_cycle_through_many_forward_references() {
    let rt = support::cpu(2);
    let rs = support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("R");
            let n = 50;
            let hs: Vec<_> = (0..n)
                .map(|i| task(async {}).id(t.at(i)).after(t.at((i + 1) % n)).spawn())
                .collect();
            let mut out = Vec::new();
            for h in hs {
                out.push(h.await);
            }
            out
        })
    });
    for r in rs {
        match r {
            Err(TaskError::Cycle { ids }) => assert_eq!(ids.len(), 50),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn spawn_outside_a_runtime_is_an_error_not_a_panic() {
    let h = task(async { 1 }).spawn();
    let rt = support::cpu(1);
    match rt.block_on(h) {
        Err(TaskError::NoRuntime { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn panics_inside_many_tasks_do_not_poison_the_runtime() {
    let rt = support::cpu(2);
    let ok = Arc::new(AtomicUsize::new(0));
    let ok2 = ok.clone();
    support::within(30, move || {
        rt.block_on(async move {
            let mut hs = Vec::new();
            for i in 0..200 {
                let ok = ok2.clone();
                hs.push(
                    task(async move {
                        if i % 3 == 0 {
                            panic!("task {i}");
                        }
                        ok.fetch_add(1, Ordering::SeqCst);
                    })
                    .spawn(),
                );
            }
            for h in hs {
                let _ = h.await;
            }
        });
    });
    assert_eq!(ok.load(Ordering::SeqCst), 200 - 67);
}

#[test]
fn parent_awaiting_children_with_all_vcus_taken_does_not_hang() {
    // Two parents take both CPU workers' VCUs, then wait for children that need VCUs too.
    let rt = support::cpu(2);
    let r = support::within(30, move || {
        rt.block_on(async {
            let parents: Vec<_> = (0..2)
                .map(|_| {
                    task(async {
                        let kid = task(async { 1 }).spawn();
                        kid.await
                    })
                    .spawn()
                })
                .collect();
            let mut out = Vec::new();
            for p in parents {
                out.push(p.await);
            }
            out
        })
    });
    // The parents lend their VCUs to the children while they wait.
    for x in r {
        assert_eq!(x, Ok(Ok(1)));
    }
}

#[test]
fn memory_held_by_a_waiting_parent_is_reported_as_a_deadlock() {
    let rt = parla::Runtime::builder()
        .cpu_threads(2)
        .cpu_memory(100)
        .build()
        .unwrap();
    let r = support::within(30, move || {
        rt.block_on(async {
            task(async { task(async {}).memory(60).await })
                .memory(60)
                .await
        })
    });
    match r {
        Ok(Err(TaskError::Deadlock {
            task,
            device,
            reason,
        })) => {
            assert!(task.starts_with('#'));
            assert_eq!(device, "cpu:0");
            assert!(reason.contains("60 bytes"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_list_with_gpu_runs_on_the_cpu_when_there_is_no_gpu() {
    assert_eq!(support::either_device(&support::cpu(2)), Device::CPU);
}

#[test]
fn dependents_of_a_task_that_failed_at_spawn_see_its_error() {
    let rt = support::cpu(2);
    let r = support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("T");
            task(async {}).id(t.at(0)).vcus(2.0).spawn();
            task(async {}).after(t.at(0)).await
        })
    });
    match r {
        Err(TaskError::DependencyFailed {
            dependency, cause, ..
        }) => {
            assert_eq!(dependency, "T[0]");
            assert!(matches!(*cause, TaskError::Unsatisfiable { .. }));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tasks_awaiting_each_other_inside_their_bodies_do_not_hang() {
    let rt = support::cpu(2);
    let (a, b) = support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("W");
            let (ta, tb) = (t.clone(), t.clone());
            let a = task(async move { ta.at("b").await })
                .id(t.at("a"))
                .vcus(0.0)
                .spawn();
            let b = task(async move { tb.at("a").await })
                .id(t.at("b"))
                .vcus(0.0)
                .spawn();
            (a.await, b.await)
        })
    });
    // Each awaits the other: when nothing else can run, the awaits inside the tasks fail
    // with `Deadlock` and the tasks finish with what they made of it (an await that sees
    // its task finished first reports that instead); block_on's awaits then succeed.
    let mut deadlocks = 0;
    for r in [a, b] {
        match r {
            Ok(Err(TaskError::Deadlock { reason, .. })) => {
                assert!(reason.contains("awaits W["), "{reason}");
                deadlocks += 1;
            }
            Ok(Ok(())) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(deadlocks >= 1);
}

#[test]
fn a_forward_reference_to_a_task_that_fails_at_spawn_fails_its_dependents_and_awaits() {
    each_config!(|rt| {
        let (dependent, awaited) = rt.block_on(async {
            let t = TaskSpace::new("F");
            // Depended on and awaited before it exists...
            let dependent = task(async {}).after(t.at(0)).spawn();
            let t2 = t.clone();
            let waiter = task(async move { t2.at(0).await }).spawn();
            tokio::time::sleep(Duration::from_millis(5)).await;
            // ...then spawned with constraints no device meets.
            task(async {}).id(t.at(0)).vcus(2.0).spawn();
            (dependent.await, waiter.await)
        });
        match dependent {
            Err(TaskError::DependencyFailed {
                dependency, cause, ..
            }) => {
                assert_eq!(dependency, "F[0]");
                assert!(
                    matches!(*cause, TaskError::Unsatisfiable { .. }),
                    "{cause:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(awaited, Ok(Err(TaskError::Unsatisfiable { .. }))),
            "{awaited:?}"
        );
    });
}

#[test]
fn a_child_that_only_needs_free_vcus_passes_a_task_waiting_for_memory() {
    // The parent holds 60 of 100 bytes and waits for its child; a task needing 60 bytes
    // queued before the child. The child needs only VCUs, which are free: it runs, the
    // parent finishes, and the task waiting for memory runs last. Nothing fails.
    let rt = parla::Runtime::builder()
        .cpu_threads(2)
        .cpu_memory(100)
        .build()
        .unwrap();
    let (parent, big) = support::within(30, move || {
        rt.block_on(async {
            let parent = task(async {
                let big = task(async { "big" }).memory(60).spawn();
                tokio::task::yield_now().await;
                let child = task(async { "child" }).spawn();
                (child.await, big)
            })
            .memory(60)
            .spawn();
            let (child, big) = parent.await.unwrap();
            (child, big.await)
        })
    });
    assert_eq!(parent, Ok("child"));
    assert_eq!(big, Ok("big"));
}

#[test]
fn a_panic_of_the_block_on_future_leaves_the_runtime_usable() {
    let rt = support::cpu(2);
    let rt = std::panic::AssertUnwindSafe(rt);
    let r = support::within(30, move || {
        let caught = std::panic::catch_unwind(|| {
            rt.block_on(async {
                task(async {}).await.unwrap();
                panic!("the main future panics");
            })
        });
        assert!(caught.is_err());
        // Stall detection still works: a missing id fails instead of hanging.
        rt.block_on(async {
            let t = TaskSpace::new("P");
            t.at("missing").await
        })
    });
    assert!(matches!(r, Err(TaskError::NeverSpawned { .. })), "{r:?}");
}

#[test]
fn a_panicking_mapping_policy_does_not_stop_the_graph() {
    struct Panics;
    impl parla::MappingPolicy for Panics {
        fn choose(&self, _: &[parla::Candidate]) -> usize {
            panic!("policy bug")
        }
    }
    let rt = parla::Runtime::builder()
        .cpu_threads(2)
        .virtual_gpus(2, 1 << 20)
        .mapping_policy(Panics)
        .build()
        .unwrap();
    let r = support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("P");
            for i in 0..20 {
                task(async move { i })
                    .id(t.at(i))
                    .placement([Placement::Cpu, Placement::AnyGpu])
                    .after((i > 0).then(|| t.at(i - 1)))
                    .spawn();
            }
            t.at(19).await
        })
    });
    assert_eq!(r, Ok(()));
}

#[test]
fn a_list_naming_a_missing_gpu_runs_on_the_devices_that_exist() {
    let rt = support::cpu(2);
    let r = support::within(30, move || {
        rt.block_on(async {
            let listed = task(async { current_device() })
                .placement([Placement::Cpu, Placement::Gpu(0)])
                .await;
            let alone = task(async {}).placement(Placement::Gpu(0)).await;
            (listed, alone)
        })
    });
    assert_eq!(r.0, Ok(Device::CPU));
    assert!(
        matches!(r.1, Err(TaskError::Unsatisfiable { .. })),
        "{:?}",
        r.1
    );
}
