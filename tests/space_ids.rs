//! Task spaces: keys, forward references, ranges, awaiting ids, ranges and whole spaces.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parla::prelude::*;

/// Spawns tasks `0..n` into `t`, each adding one to `count`.
fn spawn_counting(t: &TaskSpace, n: usize, count: &Arc<AtomicUsize>) {
    for i in 0..n {
        let c = count.clone();
        task(async move {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .id(t.at(i))
        .spawn();
    }
}

#[test]
fn integer_keys_compare_by_value_whatever_their_type() {
    let t = TaskSpace::new("T");
    assert_eq!(t.at(0usize), t.at(0i32));
    assert_eq!(t.at((1u8, 2i64)), t.at((1usize, 2u16)));
    assert_ne!(t.at(0), TaskSpace::new("T").at(0), "different spaces");
    assert_eq!(t.at(("cpu", 3)).to_string(), "T[cpu, 3]");
    assert_eq!(t.at((1, 2, 3, 4)).key().len(), 4);

    let rt = support::cpu(2);
    let v = rt.block_on(async move {
        task(async { 7 }).id(t.at(3u64)).spawn();
        let r = task(async { 1 }).after(t.at(3i8)).await.unwrap();
        t.at(3usize).await.unwrap();
        r
    });
    assert_eq!(v, 1);
}

/// Ids that are different keys display differently: a string that would read as an integer,
/// or as more than one part, is quoted.
#[test]
fn names_tell_string_keys_from_integer_keys() {
    let t = TaskSpace::new("T");
    assert_eq!(t.at(1).to_string(), "T[1]");
    assert_eq!(t.at("1").to_string(), r#"T["1"]"#);
    assert_eq!(t.at(("a, b", 1)).to_string(), r#"T["a, b", 1]"#);
    assert_eq!(t.at(("a", "b", 1)).to_string(), "T[a, b, 1]");
    assert_eq!(t.at("").to_string(), r#"T[""]"#);
    assert_eq!(t.at(("gpu 0", -2)).to_string(), "T[gpu 0, -2]");

    let rt = support::cpu(2);
    let e = rt.block_on(async move {
        task(async {}).id(t.at("1")).spawn();
        task(async {}).after(t.at(1)).await.unwrap_err()
    });
    let text = e.to_string();
    assert!(text.contains("T[1] was never spawned"), "{text}");
}

#[test]
fn forward_references_wait_for_the_later_spawn() {
    each_config!(|rt| {
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let o = order.clone();
        rt.block_on(async move {
            let t = TaskSpace::new("F");
            let (o1, o2) = (o.clone(), o.clone());
            // Depends on an id nobody spawned yet.
            let late = task(async move { o1.lock().push("dependent") })
                .id(t.at("dependent"))
                .after(t.at("first"))
                .spawn();
            task(async move {
                std::thread::sleep(std::time::Duration::from_millis(10));
                o2.lock().push("first")
            })
            .id(t.at("first"))
            .spawn();
            late.await.unwrap();
        });
        assert_eq!(*order.lock(), vec!["first", "dependent"]);
    });
}

#[test]
fn awaiting_an_id_before_it_is_spawned() {
    each_config!(|rt| {
        let v = rt.block_on(async {
            let t = TaskSpace::new("W");
            let t2 = t.clone();
            let waiter = task(async move { t2.at(9).await.map(|()| "seen") })
                .vcus(0.0)
                .spawn();
            task(async {}).id(t.at(9)).spawn();
            waiter.await.unwrap()
        });
        assert_eq!(v, Ok("seen"));
    });
}

#[test]
fn ranges_depend_and_await() {
    each_config!(|rt| {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let seen = rt.block_on(async move {
            let t = TaskSpace::new("R");
            spawn_counting(&t, 8, &n2);
            let n3 = n2.clone();
            let after = task(async move { n3.load(Ordering::SeqCst) })
                .after(t.range(0..8))
                .spawn();
            t.range(0..=7).await.unwrap();
            (&t.range(0..8)).await.unwrap();
            assert_eq!(t.range(0..8).len(), 8);
            // More ids than a `usize` counts: as many as it can say, and not empty.
            assert_eq!(t.range(0..=u64::MAX).len(), usize::MAX);
            assert!(!t.range(0..=u64::MAX).is_empty());
            assert_eq!(t.range(i64::MIN..i64::MAX).len(), usize::MAX);
            assert!(t.range(5..5).is_empty());
            assert_eq!(t.range(5..5).len(), 0);
            assert_eq!(t.range(0..8).iter().count(), 8);
            after.await.unwrap()
        });
        assert_eq!(seen, 8, "the range dependency waited for all eight");
        assert_eq!(n.load(Ordering::SeqCst), 8);
    });
}

/// A range over most of the integers, with an id never spawned early in it, fails with
/// that id and still waits for the ids after it that were spawned, without a walk of every
/// integer left (`0..u64::MAX` never ended); from `block_on` and from a task.
#[test]
fn a_huge_range_with_an_id_never_spawned_ends() {
    each_config!(|rt| {
        for in_task in [false, true] {
            let (r, late_done) = rt.block_on(async move {
                let t = TaskSpace::new("H");
                for i in 0..3u64 {
                    task(async move { i }).id(t.at(i)).spawn();
                }
                let late = task(async {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                })
                .id(t.at(u64::MAX - 2))
                .spawn();
                let range = t.range(0..u64::MAX);
                let r = if in_task {
                    task(async move { range.await }).await.unwrap()
                } else {
                    range.await
                };
                (r, late.is_finished())
            });
            assert!(
                matches!(&r, Err(TaskError::NeverSpawned { id }) if id == "H[3]"),
                "in a task {in_task}: {r:?}"
            );
            assert!(
                late_done,
                "in a task {in_task}: H[u64::MAX - 2] was waited for"
            );
        }
    });
}

#[test]
fn awaiting_a_space_waits_for_everything_spawned_so_far() {
    each_config!(|rt| {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let len = rt.block_on(async move {
            let t = TaskSpace::new("S");
            for i in 0..20 {
                let n = n2.clone();
                task(async move {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    n.fetch_add(1, Ordering::SeqCst);
                })
                .id(t.at(i))
                .spawn();
            }
            t.clone().await.unwrap();
            assert_eq!(n2.load(Ordering::SeqCst), 20);
            (&t).await.unwrap();
            t.len()
        });
        assert_eq!(len, 20);
    });
}

#[test]
fn awaiting_a_space_reports_a_failure() {
    let rt = support::cpu(2);
    let r = rt.block_on(async {
        let t = TaskSpace::new("S");
        task(async {}).id(t.at(0)).spawn();
        task(async { panic!("bad") }).id(t.at(1)).spawn();
        t.await
    });
    assert!(matches!(r, Err(TaskError::Panicked { .. })), "{r:?}");
}

/// An await of a space covers the tasks spawned into it before the await began: one made
/// before a task failed under another of its ids, on this thread or on a thread of the
/// program's own, still succeeds; a new await reports the failure.
#[test]
fn awaiting_a_space_covers_the_tasks_spawned_before_it_began() {
    let rt = support::cpu(2);
    let h = rt.handle();
    rt.block_on(async move {
        let t = TaskSpace::new("S");
        task(async {}).id(t.at(0)).spawn();
        let before = (&t).into_future();
        task(async { panic!("spawned after the await began") })
            .id(t.at(1))
            .spawn();
        let t2 = t.clone();
        let from_thread = std::thread::spawn(move || {
            h.spawn(task(async { panic!("spawned by a thread") }).id(t2.at(2)))
        })
        .join()
        .unwrap();
        assert!(from_thread.await.is_err());
        assert_eq!(before.await, Ok(()));
        let after = (&t).await;
        assert!(
            matches!(&after, Err(TaskError::Panicked { task, .. }) if task.contains("S[")),
            "{after:?}"
        );
    });
}

#[test]
fn whole_space_as_a_dependency() {
    let rt = support::cpu(2);
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let seen = rt.block_on(async move {
        let t = TaskSpace::new("S");
        spawn_counting(&t, 10, &n2);
        let n3 = n2.clone();
        task(async move { n3.load(Ordering::SeqCst) })
            .after(&t)
            .await
            .unwrap()
    });
    assert_eq!(seen, 10);
}

#[test]
fn dependencies_accumulate_and_accept_many_forms() {
    let rt = support::cpu(2);
    let v = rt.block_on(async {
        let t = TaskSpace::new("D");
        let h = task(async { 1 }).spawn();
        for i in 0..6 {
            task(async {}).id(t.at(i)).spawn();
        }
        let refs = vec![t.at(0), t.at(1)];
        task(async { 2 })
            .after(&h)
            .after([t.at(2), t.at(3)])
            .after(refs)
            .after((4..6).map(|i| t.at(i)))
            .after(parla::deps([t.at(0)]))
            .after(Some(t.at(1)))
            .after(t.range(0..2))
            .await
            .unwrap()
    });
    assert_eq!(v, 2);
}

#[test]
fn task_refs_await_by_value_and_by_reference() {
    let rt = support::cpu(1);
    rt.block_on(async {
        let t = TaskSpace::new("A");
        task(async {}).id(t.at("x")).spawn();
        let r = t.at("x");
        (&r).await.unwrap();
        r.clone().await.unwrap();
        assert!(r.is_finished());
        assert!(!t.at("y").is_finished());
    });
}

/// Neighbouring integer keys (which a space keeps together): spawned tasks, forward
/// references that are dropped, a pending task and retired ones among them, and keys
/// with a string prefix, each keeps its own state.
#[test]
fn neighbouring_keys_keep_their_own_state() {
    let t = TaskSpace::new("N");
    let t2 = t.clone();
    // (A lost id would leave an await pending: fail instead of hanging.)
    let rt = support::within(60, move || {
        let rt = support::cpu(2);
        rt.block_on(async move {
            let t = t2;
            let (open, gate) = tokio::sync::oneshot::channel::<()>();
            for i in [0, 2, 4, 9, -1, -8] {
                task(async {}).id(t.at(i)).spawn();
            }
            task(async move {
                let _ = gate.await;
            })
            .id(t.at(6))
            .spawn();
            for i in 0..3 {
                task(async {}).id(t.at(("row", i))).spawn();
            }
            // Forward references to 1 and 3, dropped unspawned.
            drop(task(async {}).after([t.at(1), t.at(3)]));
            for i in [0, 2, 4, 9, -1, -8] {
                t.at(i).await.unwrap();
            }
            for i in 0..3 {
                t.at(("row", i)).await.unwrap();
            }
            assert_eq!(t.len(), 10);
            for i in [1, 3, 5, 7, -2] {
                assert!(!t.at(i).is_finished(), "{i}");
            }
            // 6 is pending: the others retire, 6 stays.
            assert_eq!(t.retire_finished(), 9);
            assert!(!t.at(6).is_finished());
            assert_eq!(t.len(), 10);
            for i in [0, 2, 4, 9, -1, -8] {
                assert!(t.at(i).is_finished(), "{i}");
                let again = task(async {}).id(t.at(i)).spawn().await;
                assert!(matches!(again, Err(TaskError::DuplicateId { .. })), "{i}");
            }
            // Ids next to retired ones are still free, and 6 still completes.
            task(async {}).id(t.at(1)).spawn().await.unwrap();
            task(async {}).id(t.at(("row", 3))).spawn().await.unwrap();
            let waiting = task(async {}).after(t.at(6)).spawn();
            open.send(()).unwrap();
            waiting.await.unwrap();
            t.at(6).await.unwrap();
            assert_eq!(t.retire_finished(), 3);
            assert_eq!(t.len(), 12);
        });
        rt
    });
    assert!(t.at(1).is_finished());
    drop(rt);
}

/// Retiring while another thread looks ids up: a finished id is always found finished,
/// in the table or in the record of retired ids, never in neither.
#[test]
fn ids_being_retired_stay_finished_to_concurrent_lookups() {
    let t = TaskSpace::new("R");
    let n: usize = 20_000;
    let t2 = t.clone();
    let missed = support::within(120, move || {
        let rt = support::cpu(2);
        rt.block_on(async {
            for i in 0..n {
                task(async {}).id(t2.at(i)).spawn();
            }
            (&t2).await.unwrap();
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (t3, stop2) = (t2.clone(), stop.clone());
        let looker = std::thread::spawn(move || {
            let mut missed = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                for i in (0..n).step_by(97) {
                    if !t3.at(i).is_finished() {
                        missed.push(i);
                    }
                }
            }
            missed
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(t2.retire_finished(), n);
        stop.store(true, Ordering::SeqCst);
        looker.join().unwrap()
    });
    assert!(
        missed.is_empty(),
        "{} lookups saw an id unfinished while it was retired (first: {:?})",
        missed.len(),
        &missed[..missed.len().min(8)]
    );
    assert!((0..n).all(|i| t.at(i).is_finished()));
}

/// Retiring while a failure spreads: a task failed by its dependency is done before its
/// outcome is published (a fan-out publishes its dependents one by one), and a retirement
/// in between let go of the id without recording it, which then read as never spawned
/// (and could be spawned again). Every dependent still reports the failure, and keeps its
/// id used.
#[test]
fn ids_retired_while_their_failure_spreads_keep_it() {
    let n: i64 = 5_000;
    let (wrong, again) = support::within(120, move || {
        let rt = support::cpu(2);
        let t = TaskSpace::new("F");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let retirer = {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    t.retire_finished();
                }
            })
        };
        let wrong = rt.block_on(async {
            let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
            let root = task(async move {
                let _ = rx.await;
            })
            .id(t.at(-1))
            .spawn();
            for i in 0..n {
                task(async {}).id(t.at(i)).after(t.at(-1)).spawn();
            }
            root.abort();
            let mut wrong = Vec::new();
            for i in 0..n {
                match t.at(i).await {
                    Err(TaskError::DependencyFailed { .. }) => {}
                    other => wrong.push((i, other)),
                }
            }
            wrong
        });
        stop.store(true, Ordering::Relaxed);
        retirer.join().unwrap();
        t.retire_finished();
        let again = rt.block_on(task(async {}).id(t.at(n / 2)));
        (wrong, again)
    });
    assert!(
        wrong.is_empty(),
        "{} of {n} dependents lost their failure (first: {:?})",
        wrong.len(),
        wrong.first()
    );
    assert!(
        matches!(again, Err(TaskError::DuplicateId { .. })),
        "{again:?}"
    );
}

/// A task after the whole space fails when a task of the space failed, whether that task
/// was retired or not (as an await of the space does).
#[test]
fn a_task_after_the_space_sees_a_retired_failure() {
    for retire in [false, true] {
        let r = support::on_cpu(2, move || async move {
            let t = TaskSpace::new("S");
            let _ = task(async { panic!("boom") }).id(t.at(0)).spawn().await;
            task(async {}).id(t.at(1)).spawn().await.unwrap();
            if retire {
                assert_eq!(t.retire_finished(), 2);
            }
            let after = task(async {}).after(&t).spawn().await;
            (after, (&t).await.is_err())
        });
        let (after, space_failed) = r;
        assert!(space_failed, "retire = {retire}");
        match after {
            Err(TaskError::DependencyFailed {
                dependency, cause, ..
            }) => {
                assert_eq!(dependency, "S[0]", "retire = {retire}");
                assert!(matches!(*cause, TaskError::Panicked { .. }), "{cause:?}");
            }
            other => panic!("retire = {retire}: {other:?}"),
        }
    }
}

/// `len` while another thread retires: each task counted once, in the table or in the
/// record, never in both.
#[test]
fn the_length_of_a_space_being_retired_counts_each_task_once() {
    let n: i64 = 20_000;
    let over = support::within(120, move || {
        let rt = support::cpu(2);
        let mut over = Vec::new();
        for _ in 0..5 {
            let t = TaskSpace::new("L");
            rt.block_on(async {
                for i in 0..n {
                    task(async {}).id(t.at(i)).spawn();
                }
                (&t).await.unwrap();
            });
            let t2 = t.clone();
            let retirer = std::thread::spawn(move || t2.retire_finished());
            while !retirer.is_finished() {
                let len = t.len();
                if len != n as usize {
                    over.push(len);
                }
            }
            assert_eq!(retirer.join().unwrap(), n as usize);
            assert_eq!(t.len(), n as usize);
        }
        over
    });
    assert!(
        over.is_empty(),
        "len read {:?}, for {n} tasks",
        &over[..over.len().min(8)]
    );
}

/// An id whose forward reference failed (never spawned, here) may still be spawned
/// later, and a dependency or an await named after that failure waits for it, whether
/// the failed placeholder is still referred to or was retired.
#[test]
fn a_forward_reference_made_after_one_failed_waits_for_the_later_spawn() {
    for retire in [false, true] {
        let r = support::on_cpu(2, move || async move {
            let t = TaskSpace::new("P");
            // Fails as never spawned once the runtime finds nothing else to run.
            let first = task(async {}).after(t.at(1)).spawn().await;
            if retire {
                t.retire_finished();
            }
            let after = task(async { 5 }).after(t.at(1)).spawn();
            let id = t.at(1);
            let awaited = task(async move { id.await }).spawn();
            task(async {}).id(t.at(1)).spawn().await.unwrap();
            (first, after.await, awaited.await.unwrap())
        });
        let (first, after, awaited) = r;
        assert!(
            matches!(&first, Err(TaskError::DependencyFailed { cause, .. })
                if matches!(**cause, TaskError::NeverSpawned { .. })),
            "{first:?}"
        );
        assert_eq!(after, Ok(5), "retire = {retire}");
        assert_eq!(awaited, Ok(()), "retire = {retire}");
    }
}

/// Checks that the id `k` of a task that succeeded is still used, whether the space holds
/// the task, a mark that it succeeded, or the record of retired ids.
async fn assert_used_and_succeeded(k: &TaskRef) {
    assert!(k.is_finished(), "{k}");
    k.await.unwrap();
    let again = task(async {}).id(k.clone()).spawn().await;
    assert!(
        matches!(again, Err(TaskError::DuplicateId { .. })),
        "{k}: {again:?}"
    );
    // A dependency on it is met.
    task(async {}).after(k).spawn().await.unwrap();
    task(async {}).after([k.clone()]).spawn().await.unwrap();
}

/// A task spawned after an id whose task succeeded already has nothing to wait for, and
/// the space lets go of that task, keeping only that the id was used: the id still awaits
/// to `Ok`, counts in `len`, is a `DuplicateId` when spawned again and retires with the
/// others, for every form of key. A failed task is kept with its error.
#[test]
fn ids_of_succeeded_tasks_stay_used_once_their_dependents_let_go_of_them() {
    support::within(60, || {
        let rt = support::cpu(2);
        rt.block_on(async {
            let t = TaskSpace::new("S");
            let keys = [
                t.at(0),
                t.at(7),
                t.at(8),
                t.at(-3),
                t.at((2, 5)),
                t.at((-1, 9)),
                t.at(("row", 4)),
                t.at(("row", -12)),
                t.at("name"),
                t.at(u64::MAX),
            ];
            for k in &keys {
                task(async {}).id(k.clone()).spawn().await.unwrap();
            }
            let bad = t.at(100);
            let failed = task(async { panic!("task 100 fails") })
                .id(bad.clone())
                .spawn()
                .await;
            assert!(failed.is_err());
            // The first dependents: the space lets go of the tasks here.
            for k in &keys {
                task(async {}).after(k).spawn().await.unwrap();
            }
            let after_bad = task(async {}).after(&bad).spawn().await;
            assert!(
                matches!(after_bad, Err(TaskError::DependencyFailed { .. })),
                "{after_bad:?}"
            );
            assert_eq!(t.len(), keys.len() + 1);
            for k in &keys {
                assert_used_and_succeeded(k).await;
            }
            assert_eq!(t.retire_finished(), keys.len() + 1);
            assert_eq!(t.len(), keys.len() + 1);
            for k in &keys {
                assert_used_and_succeeded(k).await;
            }
            assert!(bad.clone().await.is_err());
            // Their neighbours' ids are still free.
            for k in [t.at(1), t.at(9), t.at(-4), t.at((2, 4)), t.at(("row", 5))] {
                task(async {}).id(k).spawn().await.unwrap();
            }
        });
        drop(rt);
    });
}

/// A grid spawned by its row tasks, each holding a clone of the space, on four workers with
/// default VCUs: rows reference ids of rows that may not be spawned yet, tasks await an id
/// two rows up from a `tokio::spawn`ed future, and one tile panics. Every task finishes,
/// the tiles the failure reaches fail naming it, the others succeed.
#[test]
fn a_grid_spawned_by_its_row_tasks_through_clones_of_the_space() {
    let (rows, cols) = (40usize, 30usize);
    let (bad_i, bad_j) = (3usize, 4usize);
    support::within(120, move || {
        let rt = support::cpu(4);
        rt.block_on(async move {
            let t = TaskSpace::new("G");
            let spawners: Vec<_> = (0..rows)
                .map(|i| {
                    let t = t.clone();
                    task(async move {
                        for j in 0..cols {
                            let up = (i > 0).then(|| t.at((i - 1, j)));
                            let left = (j > 0).then(|| t.at((i, j - 1)));
                            let above = t.clone();
                            task(async move {
                                assert!((i, j) != (bad_i, bad_j), "bad tile");
                                if i > 1 {
                                    let r = above.at((i - 2, j));
                                    tokio::spawn(async move { r.await.is_ok() }).await.unwrap();
                                }
                            })
                            .id(t.at((i, j)))
                            .after([up, left])
                            .spawn();
                        }
                    })
                    .spawn()
                })
                .collect();
            for s in spawners {
                s.await.unwrap();
            }
            let e = (&t).await.unwrap_err();
            assert!(e.to_string().contains("G[3, 4]"), "{e}");
            for i in 0..rows {
                for j in 0..cols {
                    let r = t.at((i, j));
                    assert!(r.is_finished(), "{r}");
                    let reached = i >= bad_i && j >= bad_j;
                    match r.await {
                        Ok(()) => assert!(!reached, "G[{i}, {j}] ran after the failure"),
                        Err(e) => {
                            assert!(reached, "G[{i}, {j}] failed: {e}");
                            assert!(e.to_string().contains("G[3, 4]"), "{e}");
                        }
                    }
                }
            }
        });
    });
}

/// Ids named in an order that jumps between the blocks of a space's table (and its shards),
/// each task after two lower ids that are mostly not spawned yet, while the tables grow,
/// then are retired and refilled: every task runs after its dependencies, every id reads as
/// used and finished afterwards, and ids never named are still free. (Each shard tries the
/// block it found last before its table's probe: a guess that growing, retiring and
/// pruning make stale, which must never be trusted.)
#[test]
fn ids_stay_right_while_the_space_tables_grow_and_are_retired() {
    use std::sync::atomic::AtomicBool;
    support::within(120, || {
        let rt = support::cpu(2);
        rt.block_on(async {
            let t = TaskSpace::new("G");
            let n: i64 = 3000;
            for round in 0..2i64 {
                let done: Arc<Vec<AtomicBool>> =
                    Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
                let wrong = Arc::new(AtomicUsize::new(0));
                // 7919 is prime to n: each id once, in an order far from the keys'.
                for i in (0..n).map(|k| (k * 7919) % n) {
                    let deps: Vec<i64> = [i - 1, i - 9].into_iter().filter(|d| *d >= 0).collect();
                    let (done, wrong) = (done.clone(), wrong.clone());
                    let before = deps.clone();
                    task(async move {
                        if before
                            .iter()
                            .any(|d| !done[*d as usize].load(Ordering::SeqCst))
                        {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        done[i as usize].store(true, Ordering::SeqCst);
                    })
                    .id(t.at((round, i)))
                    .after(
                        deps.into_iter()
                            .map(|d| t.at((round, d)))
                            .collect::<Vec<_>>(),
                    )
                    .spawn();
                }
                (&t).await.unwrap();
                assert_eq!(
                    wrong.load(Ordering::SeqCst),
                    0,
                    "a task ran before a dependency"
                );
                assert!(done.iter().all(|d| d.load(Ordering::SeqCst)));
                for i in (0..n).step_by(37) {
                    assert_used_and_succeeded(&t.at((round, i))).await;
                }
                // (With the id past the end named after the last round's retirement.)
                assert_eq!(t.retire_finished(), (n + round) as usize);
                for i in (0..n).step_by(41) {
                    assert_used_and_succeeded(&t.at((round, i))).await;
                }
                // Never named: free.
                assert!(!t.at((round, n)).is_finished());
                task(async {}).id(t.at((round, n))).spawn().await.unwrap();
            }
        });
        drop(rt);
    });
}

/// A plain thread spawns a task after an id, then (later, holding nothing in between) the
/// id itself: the runtime may fail the first as `NeverSpawned` meanwhile, but the id's
/// first task still runs - it is no duplicate.
#[test]
fn the_first_task_under_an_id_failed_as_never_spawned_still_runs() {
    let rt = support::cpu(2);
    let h = rt.handle();
    let r = support::within(60, move || {
        let t = TaskSpace::new("N");
        let waiter = h.spawn(task(async { 1 }).after(t.at(1)));
        // Nothing holds the runtime: it resolves the wait on N[1].
        while !waiter.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let late = h.spawn(task(async { 2 }).id(t.at(1)));
        while !late.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let now = futures_util::FutureExt::now_or_never;
        (now(waiter), now(late))
    });
    assert!(
        matches!(&r.0, Some(Err(TaskError::DependencyFailed { cause, .. }))
            if matches!(**cause, TaskError::NeverSpawned { .. })),
        "{:?}",
        r.0
    );
    assert_eq!(r.1, Some(Ok(2)));
}

/// A task looping on awaits of tasks that finished long ago (an id, a range, a space)
/// spends Tokio's cooperative budget as awaits of Tokio's resources do: on one worker, the
/// task that ends its loop - woken by a timer - still runs. (Those awaits never returned
/// `Pending`, and the loop kept the worker for good.)
#[test]
fn a_loop_of_awaits_that_find_their_tasks_finished_lets_the_worker_go() {
    for what in ["id", "range", "space"] {
        let loops = support::on_cpu(1, move || async move {
            let t = TaskSpace::new("S");
            task(async {}).id(t.at(0)).await.unwrap();
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let iterations = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let (d, i) = (done.clone(), iterations.clone());
            // (It sleeps until the loop went round once: the loop may start more than a
            // millisecond after it on a busy machine.)
            let setter = task(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    if i.load(Ordering::SeqCst) > 0 {
                        break;
                    }
                }
                d.store(true, Ordering::SeqCst);
            })
            .spawn();
            let looper = task(async move {
                let mut n = 0u64;
                while !done.load(Ordering::SeqCst) {
                    match what {
                        "id" => t.at(0).await.unwrap(),
                        "range" => t.range(0..1).await.unwrap(),
                        _ => (&t).await.unwrap(),
                    }
                    n += 1;
                    iterations.store(n, Ordering::SeqCst);
                }
                n
            })
            .spawn();
            setter.await.unwrap();
            looper.await
        });
        assert!(loops.as_ref().is_ok_and(|&n| n > 0), "{what}: {loops:?}");
    }
}

/// Parla's `T[0:n, j]`, a column of a 2-D space, as the README writes it: `deps` over the
/// column's references. The task after it runs once every task of the column finished,
/// whether they were spawned before it or after.
#[test]
fn a_column_of_a_two_dimensional_space_is_a_dependency_list() {
    let rt = support::cpu(2);
    let done = Arc::new(AtomicUsize::new(0));
    let seen = support::within(60, move || {
        rt.block_on(async move {
            let t = TaskSpace::new("T");
            let d = done.clone();
            let after = task(async move { d.load(Ordering::SeqCst) })
                .after(parla::deps((0..4).map(|i| t.at((i, 1)))))
                .spawn();
            for i in 0..4 {
                for j in 0..2 {
                    let d = done.clone();
                    task(async move {
                        tokio::task::yield_now().await;
                        if j == 1 {
                            d.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                    .id(t.at((i, j)))
                    .spawn();
                }
            }
            after.await.expect("the task after the column")
        })
    });
    assert_eq!(seen, 4);
}

/// `retire_finished` records tasks only: a forward reference that failed as never spawned
/// is let go of, neither counted nor kept, and a task may still be spawned under its id.
/// Ids at the ends of the integers are retired like any other.
#[test]
fn retiring_records_tasks_only_and_ids_at_the_ends_of_the_integers() {
    let r = support::on_cpu(2, || async {
        let t = TaskSpace::new("NR");
        let waiter = task(async {}).id(t.at((0, 0))).after(t.at((0, 1))).await;
        for k in [i64::MAX, i64::MIN] {
            task(async {}).id(t.at(k)).await.unwrap();
            task(async {}).id(t.at((3, k))).await.unwrap();
        }
        let retired = t.retire_finished();
        let len = t.len();
        let mut ends = Vec::new();
        for k in [i64::MAX, i64::MIN] {
            ends.push(t.at(k).is_finished());
            ends.push(t.at((3, k)).is_finished());
            let again = task(async {}).id(t.at(k)).await;
            ends.push(matches!(again, Err(TaskError::DuplicateId { .. })));
            ends.push(task(async {}).after(t.at((3, k))).await.is_ok());
        }
        let late = task(async { 5 }).id(t.at((0, 1))).await;
        (waiter, retired, len, ends, late)
    });
    let (waiter, retired, len, ends, late) = r;
    assert!(
        matches!(&waiter, Err(TaskError::DependencyFailed { cause, .. })
            if matches!(**cause, TaskError::NeverSpawned { .. })),
        "{waiter:?}"
    );
    assert_eq!(retired, 5, "the waiter and the four tasks at the ends");
    assert_eq!(len, 5);
    assert_eq!(ends, vec![true; 8]);
    assert_eq!(late, Ok(5), "the id never spawned is free");
}

mod range_model {
    use super::support;
    use parla::prelude::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(support::prop_config(24))]
        /// An await of a range resolves as awaits of its ids one by one, in key order,
        /// would: the first failure, else `Ok`. Ids that succeeded (retired or not, held
        /// by their tasks or settled) are skipped a block at a time; a failed one, an
        /// aborted one, one never spawned, or one retired among failures are each
        /// awaited.
        #[test]
        fn a_range_awaits_as_its_ids_one_by_one(
            states in proptest::collection::vec(0u8..4, 1..40),
            retire in any::<bool>(),
            lo in -2i64..40,
            len in 0i64..45,
        ) {
            let rt = Runtime::new().unwrap();
            let (whole, one_by_one) = rt.block_on(async move {
                let t = TaskSpace::new("R");
                let (_keep, never) = tokio::sync::oneshot::channel::<()>();
                let gate = task(async move {
                    let _ = never.await;
                })
                .spawn();
                for (i, s) in states.iter().enumerate() {
                    let b = task(async {}).id(t.at(i));
                    match s {
                        // Succeeded.
                        0 | 1 => _ = b.spawn(),
                        // Failed: its dependency was aborted.
                        2 => _ = b.after(&gate).spawn(),
                        // Never spawned.
                        _ => {}
                    }
                }
                gate.abort();
                // Every task spawned is done before the range is awaited.
                for (i, s) in states.iter().enumerate() {
                    if *s != 3 {
                        let _ = t.at(i).await;
                    }
                }
                if retire {
                    t.retire_finished();
                }
                let whole = t.range(lo..lo + len).await.map_err(|e| e.to_string());
                let mut one_by_one = Ok(());
                for i in lo..lo + len {
                    if let Err(e) = t.at(i).await {
                        one_by_one = Err(e.to_string());
                        break;
                    }
                }
                (whole, one_by_one)
            });
            prop_assert_eq!(whole, one_by_one);
        }
    }
}
