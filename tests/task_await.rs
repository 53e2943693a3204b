//! Awaiting tasks the way programs do, with the defaults they get: parents awaiting their
//! children in a loop (default VCUs), `select!` / `join!` / `timeout` / `FuturesUnordered`
//! mixing tasks with timers and channels, service loops. None of these may hang, spin, or
//! fail a task that a correct program would finish.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use parla::prelude::*;

/// Counts how often the inner future is polled.
struct Counted<F> {
    inner: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.inner.as_mut().poll(cx)
    }
}

fn counted<F: Future>(f: F, polls: &Arc<AtomicUsize>) -> Counted<F> {
    Counted {
        inner: Box::pin(f),
        polls: polls.clone(),
    }
}

#[test]
fn a_parent_with_default_vcus_awaits_children_in_a_loop_without_spinning() {
    each_config!(|rt| {
        let polls = Arc::new(AtomicUsize::new(0));
        let p = polls.clone();
        let sum = rt
            .block_on(async move {
                task(counted(
                    async {
                        let mut sum = 0;
                        for i in 0..20u64 {
                            // Each child sleeps, so the parent really waits.
                            let kid = task(async move {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                i
                            })
                            .spawn();
                            sum += kid.await.unwrap();
                        }
                        sum
                    },
                    &p,
                ))
                .await
            })
            .unwrap();
        assert_eq!(sum, (0..20).sum::<u64>());
        // One poll to start, one per child finished (a spurious wake here and there is
        // fine); a parent that spins would be polled thousands of times.
        let n = polls.load(Ordering::SeqCst);
        assert!(n <= 60, "the parent was polled {n} times for 20 awaits");
    });
}

#[test]
fn fork_join_trees_with_default_vcus_finish() {
    fn tree(depth: u32) -> std::pin::Pin<Box<dyn Future<Output = u64> + Send>> {
        Box::pin(async move {
            if depth == 0 {
                return 1;
            }
            let l = task(tree(depth - 1)).spawn();
            let r = task(tree(depth - 1)).spawn();
            l.await.unwrap() + r.await.unwrap()
        })
    }
    each_config!(|rt| {
        let n = rt.block_on(async { task(tree(10)).await }).unwrap();
        assert_eq!(n, 1024);
    });
}

/// A fork-join tree with default VCUs runs depth first, whether a parent awaits its
/// children one after the other or both at once (`join!`): a parent's VCUs go to a child
/// it awaits while it waits, and back to the parent when that child is done. On one worker
/// (the default VCUs: the whole CPU) this is exact, so the tasks spawned and not finished
/// stay within two per level; breadth first (children admitted in spawn order, as the
/// device's queue has them) they would number in the thousands.
#[test]
fn fork_join_trees_with_default_vcus_run_depth_first() {
    #[derive(Default)]
    struct Live {
        now: AtomicUsize,
        max: AtomicUsize,
    }
    fn tree(depth: u32, live: Arc<Live>, join: bool) -> Pin<Box<dyn Future<Output = u64> + Send>> {
        Box::pin(async move {
            let n = if depth == 0 {
                1
            } else {
                let spawn = |live: &Arc<Live>| {
                    let n = live.now.fetch_add(1, Ordering::SeqCst) + 1;
                    live.max.fetch_max(n, Ordering::SeqCst);
                    task(tree(depth - 1, live.clone(), join)).spawn()
                };
                let l = spawn(&live);
                let r = spawn(&live);
                if join {
                    // Both awaited in one poll.
                    let (l, r) = tokio::join!(l, r);
                    l.unwrap() + r.unwrap()
                } else {
                    l.await.unwrap() + r.await.unwrap()
                }
            };
            live.now.fetch_sub(1, Ordering::SeqCst);
            n
        })
    }
    let rt = support::cpu(1);
    support::within(60, move || {
        for join in [false, true] {
            let live = Arc::new(Live::default());
            let l = live.clone();
            let n = rt
                .block_on(async move { task(tree(12, l, join)).await })
                .unwrap();
            assert_eq!(n, 4096);
            let max = live.max.load(Ordering::SeqCst);
            assert!(
                max <= 2 * 12,
                "{max} tasks alive at once (join! {join}): the tree did not run depth first"
            );
        }
    });
}

/// A parent that spawns children while its device is full and returns without awaiting
/// them: every child runs (the first, held on the driver's thread for a parent that might
/// await it, is queued when the parent's poll ends), and so do children awaited only by id.
#[test]
fn children_spawned_while_the_device_is_full_run_whether_awaited_or_not() {
    each_config!(|rt| {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        rt.block_on(async move {
            let t = TaskSpace::new("K");
            let mut parents = Vec::new();
            for p in 0..4usize {
                let (r, t) = (r.clone(), t.clone());
                parents.push(
                    task(async move {
                        for k in 0..8usize {
                            let r = r.clone();
                            task(async move {
                                std::thread::sleep(Duration::from_millis(1));
                                r.fetch_add(1, Ordering::SeqCst);
                            })
                            .id(t.at((p, k)))
                            .spawn();
                        }
                        // Odd parents await their last child by id; even ones return.
                        if p % 2 == 1 {
                            t.at((p, 7usize)).await.unwrap();
                        }
                    })
                    .spawn(),
                );
            }
            for h in parents {
                h.await.unwrap();
            }
        });
        assert_eq!(ran.load(Ordering::SeqCst), 32);
    });
}

#[test]
fn a_missing_id_behind_a_waiting_parent_fails_instead_of_hanging() {
    each_config!(|rt| {
        let r = rt.block_on(async {
            task(async {
                let t = TaskSpace::new("M");
                for _ in 0..3 {
                    task(async {}).spawn().await.unwrap();
                }
                task(async {}).after(t.at("missing")).await
            })
            .await
        });
        match r {
            Ok(Err(TaskError::DependencyFailed { cause, .. })) => {
                assert!(
                    matches!(*cause, TaskError::NeverSpawned { .. }),
                    "{cause:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn timeout_over_a_task_that_never_comes_times_out() {
    each_config!(|rt| {
        let r = rt.block_on(async {
            task(async {
                let t = TaskSpace::new("T");
                tokio::time::timeout(Duration::from_millis(30), t.at("never")).await
            })
            .await
        });
        // The timer fires: the id is not declared never spawned while the timer runs.
        assert!(matches!(r, Ok(Err(_))), "{r:?}");
    });
}

#[test]
fn join_of_an_id_and_the_future_that_spawns_it_later() {
    each_config!(|rt| {
        let r = rt.block_on(async {
            task(async {
                let t = TaskSpace::new("J");
                let t2 = t.clone();
                let (a, b) = tokio::join!(t.at(1), async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    task(async { 5 }).id(t2.at(1)).await
                });
                (a, b)
            })
            .await
        });
        assert_eq!(r, Ok((Ok(()), Ok(5))));
    });
}

#[test]
fn a_service_loop_selects_over_a_shutdown_id_and_a_channel_fed_by_another_thread() {
    each_config!(|rt| {
        let h = rt.handle();
        let served = rt.block_on(async move {
            let t = TaskSpace::new("S");
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
            let t2 = t.clone();
            let service = task(async move {
                let mut served = 0u32;
                loop {
                    tokio::select! {
                        _ = t2.at("stop") => break,
                        v = rx.recv() => match v {
                            Some(v) => served += v,
                            None => break,
                        },
                    }
                }
                served
            })
            .spawn();
            // Another thread feeds the channel with pauses (the service is idle between
            // messages), then asks it to stop.
            let feeder = std::thread::spawn(move || {
                for _ in 0..10 {
                    std::thread::sleep(Duration::from_millis(3));
                    tx.send(1).unwrap();
                }
                let _hold = h.hold();
                std::thread::sleep(Duration::from_millis(3));
                h.spawn(task(async {}).id(t.at("stop")));
                drop(tx);
            });
            let served = service.await;
            feeder.join().unwrap();
            served
        });
        assert_eq!(served, Ok(10));
    });
}

#[test]
fn futures_unordered_mixing_handles_and_channels() {
    each_config!(|rt| {
        let r = rt.block_on(async {
            task(async {
                let (tx, rx) = tokio::sync::oneshot::channel::<u64>();
                let mut set: FuturesUnordered<Pin<Box<dyn Future<Output = u64> + Send>>> =
                    FuturesUnordered::new();
                for i in 0..4u64 {
                    set.push(Box::pin(
                        async move { task(async move { i }).await.unwrap() },
                    ));
                }
                set.push(Box::pin(async move { rx.await.unwrap() }));
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    tx.send(100).unwrap();
                });
                let mut sum = 0;
                while let Some(v) = set.next().await {
                    sum += v;
                }
                sum
            })
            .await
        });
        assert_eq!(r, Ok(106));
    });
}

#[test]
fn block_on_may_select_over_tasks_and_timers() {
    each_config!(|rt| {
        let r = rt.block_on(async {
            let t = TaskSpace::new("B");
            let mut ticks = 0;
            loop {
                tokio::select! {
                    _ = t.at("late") => break,
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {
                        ticks += 1;
                        if ticks == 5 {
                            task(async {}).id(t.at("late")).spawn();
                        }
                    }
                }
            }
            ticks
        });
        // The id resolves after the fifth tick (a busy machine may fit more ticks in
        // before the spawned task ran): the select loop ends through the task, not a timer.
        assert!(r >= 5, "{r}");
    });
}

#[test]
fn tasks_awaiting_each_other_fail_one_await_only() {
    each_config!(|rt| {
        let (a, b) = rt.block_on(async {
            let t = TaskSpace::new("W");
            let (ta, tb) = (t.clone(), t.clone());
            // Default VCUs: the waiting tasks lend theirs.
            let a = task(async move { ta.at("b").await }).id(t.at("a")).spawn();
            let b = task(async move { tb.at("a").await }).id(t.at("b")).spawn();
            (a.await, b.await)
        });
        let deadlocks = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Ok(Err(TaskError::Deadlock { .. }))))
            .count();
        // One await is failed; its task finishes, which lets the other await succeed.
        assert_eq!(deadlocks, 1, "{a:?} {b:?}");
        assert!(a == Ok(Ok(())) || b == Ok(Ok(())), "{a:?} {b:?}");
    });
}

#[test]
fn a_task_awaiting_its_own_id_or_space_is_told_it_awaits_itself() {
    let r = support::on_cpu(2, || async {
        let t = TaskSpace::new("S");
        let (t1, t2) = (t.clone(), t.clone());
        let own_id = task(async move { t1.at(0).await }).id(t.at(0)).await;
        let own_space = task(async move { (&t2).await }).id(t.at(1)).await;
        (own_id, own_space)
    });
    for (r, name) in [(&r.0, "S[0]"), (&r.1, "S[1]")] {
        match r {
            Ok(Err(TaskError::Deadlock { task, reason, .. })) => {
                assert_eq!(task, name);
                assert!(reason.contains("awaits itself"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A task awaits the `JoinHandle` of a future it started with `tokio::spawn`, and that
/// future awaits a task the first one spawned: with default VCUs and more such tasks than
/// workers, the awaiting tasks lend their VCUs (they are not polled meanwhile), so the
/// children they wait for through the futures run.
#[test]
fn tasks_awaiting_tokio_spawned_futures_that_await_their_children_fill_no_device() {
    each_config!(|rt| {
        let n = 3 * rt.cpu_threads() as u64;
        let sum = rt.block_on(async move {
            let outer: Vec<_> = (0..n)
                .map(|i| {
                    task(async move {
                        let child = task(async move { i * 2 }).spawn();
                        let j = tokio::spawn(async move { child.await.unwrap() + 1 });
                        j.await.unwrap()
                    })
                    .spawn()
                })
                .collect();
            let mut sum = 0;
            for h in outer {
                sum += h.await.unwrap();
            }
            sum
        });
        assert_eq!(sum, (0..n).map(|i| i * 2 + 1).sum::<u64>());
    });
}

/// Producers fill a small channel and block on it while their consumer waits to be
/// admitted: with default VCUs and as many producers as workers (or more), the blocked
/// producers lend their VCUs, so the consumer runs - also when it is spawned only after
/// every producer already blocked.
#[test]
fn producers_blocked_on_a_full_channel_let_their_consumer_run() {
    each_config!(|rt| {
        let producers = rt.cpu_threads().max(2);
        for late in [false, true] {
            let got = rt.block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<usize>(2);
                let hs: Vec<_> = (0..producers)
                    .map(|p| {
                        let tx = tx.clone();
                        task(async move {
                            for k in 0..50 {
                                tx.send(p * 100 + k).await.unwrap();
                            }
                        })
                        .spawn()
                    })
                    .collect();
                drop(tx);
                if late {
                    // The producers fill the channel and block first.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let consumer = task(async move {
                    let mut got = 0;
                    while rx.recv().await.is_some() {
                        got += 1;
                    }
                    got
                })
                .spawn();
                for h in hs {
                    h.await.unwrap();
                }
                consumer.await.unwrap()
            });
            assert_eq!(got, producers * 50, "late consumer: {late}");
        }
    });
}

/// A CPU task waiting on a channel keeps its VCUs while no task waits for them (a wait
/// costs no update of the device's usage), and lends them as soon as one does: here the
/// task that sends on the channel, which needs the whole device's VCUs, queued after the
/// waiter, which holds them all.
#[test]
fn a_waiting_task_keeps_its_vcus_until_a_task_needs_them() {
    each_config!(|rt| {
        let rt = &rt;
        let (kept, got, after) = rt.block_on(async move {
            let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            let waiter = task(async move {
                started_tx.send(()).unwrap();
                rx.await.unwrap()
            })
            .vcus(1.0)
            .spawn();
            started_rx.await.unwrap();
            // Running or waiting, it holds the whole device.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let kept = rt.usage(Device::CPU).unwrap().vcu;
            let sender = task(async move { tx.send(7).unwrap() }).vcus(1.0).spawn();
            sender.await.unwrap();
            let got = waiter.await.unwrap();
            (kept, got, rt.usage(Device::CPU).unwrap())
        });
        assert_eq!(kept, 1_000_000, "the waiting task kept its VCUs");
        assert_eq!(got, 7);
        assert_eq!((after.vcu, after.waiting), (0, 0), "everything given back");
    });
}

/// Two tasks asking for the whole CPU pass messages: each reply wakes a task that lent its
/// VCUs, while the task that woke it still holds them. The woken task does not queue for
/// them: it takes them over once the waker waits (`context::defer_resume`), so a task
/// looking right after its send sees nothing waiting. Checks too that the VCUs of the
/// tasks running never exceed the device.
#[test]
fn a_task_woken_while_the_cpu_is_full_takes_over_the_wakers_vcus() {
    each_config!(|rt| {
        let rt = Arc::new(rt);
        let (usage, waiting) = {
            let rt2 = rt.clone();
            rt.block_on(async move {
                let (to_b, mut b_rx) = tokio::sync::mpsc::channel::<u32>(1);
                let (to_a, mut a_rx) = tokio::sync::mpsc::channel::<u32>(1);
                let b = task(async move {
                    while let Some(i) = b_rx.recv().await {
                        to_a.send(i + 1).await.unwrap();
                    }
                })
                .vcus(1.0)
                .spawn();
                let a = task(async move {
                    let mut waiting = Vec::new();
                    let mut usage = Vec::new();
                    for i in 0..6 {
                        to_b.send(i).await.unwrap();
                        let u = rt2.usage(Device::CPU).unwrap();
                        usage.push(u.vcu);
                        waiting.push(u.waiting);
                        assert_eq!(a_rx.recv().await, Some(i + 1));
                    }
                    (usage, waiting)
                })
                .vcus(1.0)
                .spawn();
                let r = a.await.unwrap();
                b.await.unwrap();
                r
            })
        };
        assert!(usage.iter().all(|&v| v == 1_000_000), "{usage:?}");
        // (The first send may find `b` not admitted yet.)
        let queued = waiting[1..].iter().filter(|&&w| w > 0).count();
        assert!(queued <= 1, "woken tasks queued for VCUs: {waiting:?}");
    });
}

/// A one-message mailbox outside Tokio (so no cooperative budget makes its receiver yield
/// now and then): `put` stores a value and wakes the receiver, `take` waits for one.
#[derive(Default)]
struct Mailbox(parking_lot::Mutex<(Option<u32>, Option<std::task::Waker>)>);

impl Mailbox {
    fn put(&self, v: u32) {
        let w = {
            let mut m = self.0.lock();
            m.0 = Some(v);
            m.1.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }

    fn take(&self) -> impl Future<Output = u32> + '_ {
        std::future::poll_fn(move |cx| {
            let mut m = self.0.lock();
            match m.0.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    m.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }
}

/// Tasks passing messages over Tokio channels (default VCUs, as many pairs as workers or
/// more), and a task spawned from `block_on` once they run, which ends the exchange: it
/// starts while they pass them. (On one worker it did not start until they ended: every
/// 32nd hand-over went through the resume lane, which goes ahead of waiting tasks, and at
/// every release a resume of the pair waited there.)
#[test]
fn a_task_spawned_beside_tasks_passing_messages_starts_while_they_pass_them() {
    for (workers, pairs) in [(1, 1), (1, 2), (2, 1), (2, 4)] {
        let ended_by_it = support::on_cpu(workers, move || async move {
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let rounds = Arc::new(AtomicUsize::new(0));
            let t0 = std::time::Instant::now();
            let mut pair_tasks = Vec::new();
            for _ in 0..pairs {
                let (to_b, mut from_a) = tokio::sync::mpsc::channel::<u64>(1);
                let (to_a, mut from_b) = tokio::sync::mpsc::channel::<u64>(1);
                let (d, r) = (done.clone(), rounds.clone());
                pair_tasks.push(
                    task(async move {
                        while !d.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(20) {
                            to_b.send(1).await.unwrap();
                            from_b.recv().await.unwrap();
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                        d.load(Ordering::SeqCst)
                    })
                    .spawn(),
                );
                pair_tasks.push(
                    task(async move {
                        while let Some(v) = from_a.recv().await {
                            if to_a.send(v).await.is_err() {
                                break;
                            }
                        }
                        true
                    })
                    .spawn(),
                );
            }
            while rounds.load(Ordering::SeqCst) < 100 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let d = done.clone();
            task(async move { d.store(true, Ordering::SeqCst) }).spawn();
            all_true(pair_tasks).await
        });
        assert!(
            ended_by_it,
            "{workers} workers, {pairs} pairs: the exchange ran out its 20 s"
        );
    }
}

/// As many parents as workers (default VCUs) await child after child in a loop until a flag
/// is set; a task spawned inside a task and detached sets it: spawned by a task that ends
/// at once, or by one of the parents before its loop. It starts while they loop, as a task
/// spawned with `tokio::spawn` would. (It did not start until the loops ended: it waited
/// where only a task awaiting it could take it, and nobody would.)
#[test]
fn a_detached_task_spawned_inside_a_task_starts_while_parents_loop_on_children() {
    for workers in [1, 2, 4] {
        for by_a_parent in [false, true] {
            let ended_by_it = support::on_cpu(workers, move || async move {
                let done = Arc::new(AtomicBool::new(false));
                let set = |d: Arc<AtomicBool>| {
                    // Detached: the handle is dropped at once.
                    task(async move { d.store(true, Ordering::SeqCst) }).spawn();
                };
                let d = done.clone();
                let first = by_a_parent.then_some(move || set(d));
                let parents = looping_parents(workers, &done, first);
                if !by_a_parent {
                    let d = done.clone();
                    task(async move { set(d) }).spawn();
                }
                all_true(parents).await
            });
            assert!(
                ended_by_it,
                "{workers} workers, spawned by {}: the loops ran out their 20 s",
                if by_a_parent {
                    "a parent"
                } else {
                    "a task ending at once"
                }
            );
        }
    }
}

/// As many parents as workers (default VCUs) spawn a detached task at every step of a loop
/// that awaits a child per step: the detached tasks run while the loops go, and do not
/// pile up to run after them (as they did, 255 of every 256, with the memory of each: a
/// million steps took 250 to 356 MB where Tokio takes 4).
#[test]
fn detached_tasks_spawned_at_every_step_of_looping_parents_keep_up() {
    const STEPS: usize = 5_000;
    for workers in [1, 2, 4] {
        let behind = support::on_cpu(workers, move || async move {
            let ran = Arc::new(AtomicUsize::new(0));
            let spawned = Arc::new(AtomicUsize::new(0));
            let parents: Vec<_> = (0..workers)
                .map(|_| {
                    let (ran, spawned) = (ran.clone(), spawned.clone());
                    task(async move {
                        for i in 0..STEPS {
                            let r = ran.clone();
                            // (Counted first: each count of `ran` follows one of `spawned`.)
                            spawned.fetch_add(1, Ordering::SeqCst);
                            task(async move { r.fetch_add(1, Ordering::SeqCst) }).spawn();
                            assert_eq!(task(async move { i }).await.unwrap(), i);
                        }
                        // How many detached tasks had not run when this loop ended. (`ran`
                        // read first, so that it never exceeds what `spawned` reads.)
                        let ran = ran.load(Ordering::SeqCst);
                        spawned.load(Ordering::SeqCst) - ran
                    })
                    .spawn()
                })
                .collect();
            let mut behind = 0;
            for p in parents {
                behind = behind.max(p.await.unwrap());
            }
            behind
        });
        assert!(
            behind <= workers * STEPS / 4,
            "{workers} workers: {behind} of {} detached tasks waited for the loops to end",
            workers * STEPS
        );
    }
}

/// `parents` parents (default VCUs) awaiting child after child in a loop until `done` is
/// set, or for 20 s; the first runs `first` before its loop. Each resolves to whether it
/// saw `done` set.
fn looping_parents(
    parents: usize,
    done: &Arc<AtomicBool>,
    first: Option<impl FnOnce() + Send + 'static>,
) -> Vec<TaskHandle<bool>> {
    let t0 = std::time::Instant::now();
    let mut first = first;
    (0..parents)
        .map(|_| {
            let (d, f) = (done.clone(), first.take());
            task(async move {
                if let Some(f) = f {
                    f();
                }
                while !d.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(20) {
                    task(async { 1 }).await.unwrap();
                }
                d.load(Ordering::SeqCst)
            })
            .spawn()
        })
        .collect()
}

/// Whether every task of `hs` resolved to `true`.
async fn all_true(hs: Vec<TaskHandle<bool>>) -> bool {
    let mut all = true;
    for h in hs {
        all &= h.await.unwrap();
    }
    all
}

/// More parents than workers (default VCUs) await child after child in a loop until a flag
/// is set, which `block_on` sets once 2,000 tasks it spawned after them have run: they run
/// while the parents loop, in the turns that the parents' children give the waiting tasks.
/// (With two parents more than workers they waited until a loop ended: the parents that did
/// not run took their VCUs back ahead of the tasks, and a turn's resume waiting behind the
/// tasks kept the children from handing their VCUs to their parents, which is where the
/// turns are counted.)
#[test]
fn tasks_spawned_from_outside_run_while_more_parents_than_workers_loop_on_children() {
    for workers in [1, 2] {
        for extra in [1, 2] {
            let ended_by_it = support::on_cpu(workers, move || async move {
                let done = Arc::new(AtomicBool::new(false));
                let parents = looping_parents(workers + extra, &done, None::<fn()>);
                let tasks: Vec<_> = (0..2_000).map(|i| task(async move { i }).spawn()).collect();
                for (i, t) in tasks.into_iter().enumerate() {
                    assert_eq!(t.await.unwrap(), i);
                }
                done.store(true, Ordering::SeqCst);
                all_true(parents).await
            });
            assert!(
                ended_by_it,
                "{workers} workers, {extra} parents more: the loops ran out their 20 s"
            );
        }
    }
}

/// Two parents (default VCUs, one worker) await child after child in a loop until a flag is
/// set, the second spawned once the first loops alone; then `block_on` spawns tasks, and
/// sets the flag once they ran. The tasks run while the parents loop, whenever the second
/// parent came. (It failed about one run in ten of the whole file: where the second parent
/// took the worker's VCUs as a child of the first gave them back, the parents then took
/// turns through the resume lane, which goes ahead of the tasks, and no task started until
/// the loops ended.)
#[test]
fn tasks_spawned_from_outside_run_while_parents_that_came_one_by_one_loop_on_children() {
    const ROUNDS: u64 = 40;
    for round in 0..ROUNDS {
        let ended_by_it = support::on_cpu(1, move || async move {
            let done = Arc::new(AtomicBool::new(false));
            let mut parents = looping_parents(1, &done, None::<fn()>);
            // The first loops alone for a while, a little longer each round.
            tokio::time::sleep(Duration::from_micros(200 + 25 * round)).await;
            parents.extend(looping_parents(1, &done, None::<fn()>));
            tokio::time::sleep(Duration::from_micros(200)).await;
            let tasks: Vec<_> = (0..200).map(|i| task(async move { i }).spawn()).collect();
            for (i, t) in tasks.into_iter().enumerate() {
                assert_eq!(t.await.unwrap(), i);
            }
            done.store(true, Ordering::SeqCst);
            all_true(parents).await
        });
        assert!(ended_by_it, "round {round}: the loops ran out their 20 s");
    }
}

/// As many parents as workers (default VCUs) await child after child in a loop until a flag
/// is set; a task spawned inside a task sets it, and nobody will claim it from where it
/// waits: its handle dropped in a later poll of the task that spawned it, or handed to
/// `block_on`, or to a future started with `tokio::spawn`, which await it. It starts while
/// the parents loop. (It did not start until the loops ended: a handle that leaves the
/// poll that spawned its task left the task where only a task awaiting it takes it.)
#[test]
fn a_child_whose_handle_leaves_its_spawner_starts_while_parents_loop_on_children() {
    #[derive(Clone, Copy, Debug)]
    enum Shape {
        DroppedLater,
        AwaitedByBlockOn,
        AwaitedByTokioSpawn,
    }
    for workers in [1, 2, 4] {
        for shape in [
            Shape::DroppedLater,
            Shape::AwaitedByBlockOn,
            Shape::AwaitedByTokioSpawn,
        ] {
            let ended_by_it = support::on_cpu(workers, move || async move {
                let done = Arc::new(AtomicBool::new(false));
                let d = done.clone();
                let setter = task(async move {
                    let h = task(async move { d.store(true, Ordering::SeqCst) }).spawn();
                    match shape {
                        Shape::DroppedLater => {
                            // An await of a task first: the handle is dropped in a later poll.
                            task(async {}).await.unwrap();
                            drop(h);
                            None
                        }
                        Shape::AwaitedByBlockOn => Some(h),
                        Shape::AwaitedByTokioSpawn => {
                            tokio::spawn(async move { h.await.unwrap() });
                            None
                        }
                    }
                })
                .spawn();
                let parents = looping_parents(workers, &done, None::<fn()>);
                if let Some(h) = setter.await.unwrap() {
                    h.await.unwrap();
                }
                all_true(parents).await
            });
            assert!(
                ended_by_it,
                "{workers} workers, {shape:?}: the loops ran out their 20 s"
            );
        }
    }
}

/// As many parents as workers (default VCUs) each spawn a child they keep, then loop:
/// `select!` the child (its handle, or its id; polled first, or second) against a new step
/// task, until the child wins. The child runs while they loop, as with `tokio::spawn`. (It
/// never ran: each poll awaited both, and its loan went to the step task, awaited last.)
#[test]
fn a_child_selected_against_a_new_step_in_a_loop_runs() {
    #[derive(Clone, Copy, Debug)]
    enum Shape {
        HandleFirst,
        IdFirst,
        HandleSecond,
    }
    for workers in [1, 2, 4] {
        for shape in [Shape::HandleFirst, Shape::IdFirst, Shape::HandleSecond] {
            let won = support::on_cpu(workers, move || async move {
                let t0 = std::time::Instant::now();
                let space = TaskSpace::new("stop");
                let mut parents = Vec::new();
                for k in 0..workers {
                    let space = space.clone();
                    parents.push(
                        task(async move {
                            let mut stop = task(async {}).id(space.at(k)).spawn();
                            while t0.elapsed() < Duration::from_secs(20) {
                                match shape {
                                    Shape::HandleFirst => tokio::select! {
                                        biased;
                                        r = &mut stop => return r.is_ok(),
                                        r = task(async { 1 }) => assert_eq!(r.unwrap(), 1),
                                    },
                                    Shape::IdFirst => tokio::select! {
                                        biased;
                                        r = space.at(k) => return r.is_ok(),
                                        r = task(async { 1 }) => assert_eq!(r.unwrap(), 1),
                                    },
                                    Shape::HandleSecond => tokio::select! {
                                        biased;
                                        r = task(async { 1 }) => assert_eq!(r.unwrap(), 1),
                                        r = &mut stop => return r.is_ok(),
                                    },
                                }
                            }
                            false
                        })
                        .spawn(),
                    );
                }
                all_true(parents).await
            });
            assert!(
                won,
                "{workers} workers, {shape:?}: the loop ran out its 20 s"
            );
        }
    }
}

/// Two tasks asking for the whole CPU pass messages (through mailboxes outside Tokio),
/// taking over each other's VCUs at every wake, until a third task has run; that one waits
/// for its VCUs in the resume lane (woken by `block_on`'s future while the pair runs). The
/// pair's hand-overs give way to it now and then: were they to go on for good, the pair
/// would never stop.
#[test]
fn tasks_passing_messages_let_a_waiting_task_in() {
    each_config!(|rt| {
        let rounds = rt.block_on(async move {
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let rounds = Arc::new(AtomicUsize::new(0));
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
            let d = done.clone();
            let third = task(async move {
                go_rx.await.unwrap();
                d.store(true, Ordering::SeqCst);
            })
            .vcus(1.0)
            .spawn();
            let (to_a, to_b) = (Arc::new(Mailbox::default()), Arc::new(Mailbox::default()));
            let (a_box, b_box) = (to_a.clone(), to_b.clone());
            let b = task(async move {
                // 0 ends the exchange.
                loop {
                    let i = b_box.take().await;
                    to_a.put(i);
                    if i == 0 {
                        break;
                    }
                }
            })
            .vcus(1.0)
            .spawn();
            let (d, r) = (done.clone(), rounds.clone());
            let a = task(async move {
                while !d.load(Ordering::SeqCst) {
                    to_b.put(1);
                    a_box.take().await;
                    r.fetch_add(1, Ordering::SeqCst);
                }
                to_b.put(0);
            })
            .vcus(1.0)
            .spawn();
            // Once the pair runs, the third task is woken: its VCUs are the pair's.
            while rounds.load(Ordering::SeqCst) < 100 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            go_tx.send(()).unwrap();
            third.await.unwrap();
            a.await.unwrap();
            b.await.unwrap();
            rounds.load(Ordering::SeqCst)
        });
        assert!(rounds >= 100);
    });
}

/// More tasks than the device's VCUs admit at once meet at a `tokio::sync::Barrier`: the
/// ones waiting there lend their VCUs, so the rest are admitted and the barrier opens.
#[test]
fn a_barrier_across_more_tasks_than_workers_opens() {
    each_config!(|rt| {
        let n = 3 * rt.cpu_threads() + 1;
        let leaders = rt.block_on(async move {
            let b = Arc::new(tokio::sync::Barrier::new(n));
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    let b = b.clone();
                    task(async move { b.wait().await.is_leader() }).spawn()
                })
                .collect();
            let mut leaders = 0;
            for h in hs {
                leaders += h.await.unwrap() as usize;
            }
            leaders
        });
        assert_eq!(leaders, 1);
    });
}

/// Tasks taking turns on a Tokio mutex, each turn followed by `yield_now` and by a future
/// given to `tokio::spawn` and awaited, with default VCUs and more tasks than workers: the
/// wakes Tokio puts off and the spawned futures queue on the workers that run the tasks,
/// and the drivers there wait behind them. Every turn is taken, on one, two and four
/// workers.
#[test]
fn tasks_taking_turns_on_a_tokio_mutex_with_yields_and_spawned_futures_all_finish() {
    for threads in [1, 2, 4] {
        let count = support::on_cpu(threads, || async {
            let m = Arc::new(tokio::sync::Mutex::new(0usize));
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let m = m.clone();
                    task(async move {
                        for i in 0..200usize {
                            *m.lock().await += 1;
                            tokio::task::yield_now().await;
                            assert_eq!(tokio::spawn(async move { i }).await.unwrap(), i);
                        }
                    })
                    .spawn()
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
            *m.lock().await
        });
        assert_eq!(count, 8 * 200, "{threads} workers");
    }
}

/// Long-running loops that poll a flag and `yield_now` between looks, more of them than
/// the device's VCUs admit at once, with default VCUs: a task spawned after them sets the
/// flag. A yielding task lends its VCUs as soon as a task waits for them, as any CPU task
/// waiting on something outside the runtime does, so the setter is admitted and every loop
/// ends, on one, two and four workers.
#[test]
fn loops_yielding_until_a_later_task_sets_their_flag_all_end() {
    for threads in [1, 2, 4] {
        let ended = support::on_cpu(threads, move || async move {
            let flag = Arc::new(AtomicBool::new(false));
            let loops = yielding_until(&flag, 2 * threads + 2, Duration::ZERO);
            task(async move { flag.store(true, Ordering::Release) })
                .spawn()
                .await
                .expect("setter");
            all_ended(loops).await
        });
        assert_eq!(ended, 2 * threads + 2, "{threads} workers");
    }
}

/// A hundred loops that compute a little and `yield_now` until a task spawned after them
/// sets their flag, with default VCUs, while that task asks for the whole CPU
/// (`.vcus(1.0)`): each loop lends its VCUs as it yields and takes them back ahead of the
/// waiting tasks, but every so often the waiting tasks' turn comes, and when the first of
/// them does not fit then, the loops wait until it does. (Before, taking back each share
/// as it was lent, the loops kept it out for ever.)
#[test]
fn loops_yielding_until_a_task_asking_for_the_whole_cpu_sets_their_flag_all_end() {
    for threads in [2, 4] {
        let ended = support::on_cpu(threads, move || async move {
            let flag = Arc::new(AtomicBool::new(false));
            let loops = yielding_until(&flag, 100, Duration::from_micros(200));
            task(async move { flag.store(true, Ordering::Release) })
                .vcus(1.0)
                .await
                .expect("setter");
            all_ended(loops).await
        });
        assert_eq!(ended, 100, "{threads} workers");
    }
}

/// `n` tasks (default VCUs) that compute for `work` and `yield_now` in a loop until `flag`
/// is set.
fn yielding_until(flag: &Arc<AtomicBool>, n: usize, work: Duration) -> Vec<TaskHandle<()>> {
    (0..n)
        .map(|_| {
            let flag = flag.clone();
            task(async move {
                while !flag.load(Ordering::Acquire) {
                    let t0 = std::time::Instant::now();
                    while t0.elapsed() < work {
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                }
            })
            .spawn()
        })
        .collect()
}

/// Awaits each of `tasks`, which must succeed; returns how many there were.
async fn all_ended(tasks: Vec<TaskHandle<()>>) -> usize {
    let mut ended = 0;
    for t in tasks {
        t.await.expect("task");
        ended += 1;
    }
    ended
}

/// Thousands of loops that `yield_now` until every one of them has started, with default
/// VCUs, spawned from `block_on` (they wait in the central part of the task lane) or from a
/// task (in its thread's shard): a looping task lends its VCUs once others wait for them,
/// and when woken it takes its turn behind the tasks queued before it, so the loops that
/// never ran start too, as they would on Tokio. (Before, a woken loop took its VCUs back
/// ahead of every task that had not started, so on one worker the loops that ran kept the
/// device among themselves: 1,953 of 2,500 started, the others never did.)
#[test]
fn loops_yielding_until_all_have_started_all_start() {
    const N: usize = 2_500;
    for threads in [1, 2] {
        for from_task in [false, true] {
            let ended = support::on_cpu(threads, move || async move {
                let started = Arc::new(AtomicUsize::new(0));
                let spawn_all = move || {
                    (0..N)
                        .map(|_| {
                            let started = started.clone();
                            task(async move {
                                started.fetch_add(1, Ordering::AcqRel);
                                while started.load(Ordering::Acquire) < N {
                                    tokio::task::yield_now().await;
                                }
                            })
                            .spawn()
                        })
                        .collect::<Vec<_>>()
                };
                if from_task {
                    // (The parent awaits them too: they stay in its thread's shard.)
                    task(async move { all_ended(spawn_all()).await })
                        .await
                        .expect("parent")
                } else {
                    all_ended(spawn_all()).await
                }
            });
            assert_eq!(
                ended, N,
                "{threads} workers, spawned from a task: {from_task}"
            );
        }
    }
}

/// A service's rounds on four workers: tasks parked on channels, then one task per worker
/// that spins until a task runs on every worker (so each must get a driver of its own, on
/// a worker of its own), then the messages that wake the parked tasks, then the awaits.
/// Drivers put off behind Tokio's deferred wakes on a worker that then runs a spinner are
/// given up for, and the tasks their pushers counted on them for need other drivers.
/// (Before, one spinner stayed queued with driver slots free, within a few hundred rounds,
/// and the others spun for good.)
#[test]
fn rounds_of_a_spinning_task_per_worker_beside_tasks_parked_on_channels_all_end() {
    const WORKERS: usize = 4;
    const ROUNDS: u64 = 1_000;
    let ended = support::on_cpu(WORKERS, || async {
        let spinning = Arc::new(AtomicUsize::new(0));
        let mut ended = 0;
        for round in 0..ROUNDS {
            let mut senders = Vec::new();
            let parked: Vec<_> = (0..16u64)
                .map(|i| {
                    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1);
                    senders.push(tx);
                    task(async move { rx.recv().await.map_or(0, |v| v + i) }).spawn()
                })
                .collect();
            spinning.store(0, Ordering::SeqCst);
            let spinners: Vec<_> = (0..WORKERS)
                .map(|_| {
                    let spinning = spinning.clone();
                    task(async move {
                        spinning.fetch_add(1, Ordering::SeqCst);
                        while spinning.load(Ordering::SeqCst) < WORKERS {
                            std::hint::spin_loop();
                        }
                    })
                    .spawn()
                })
                .collect();
            for tx in &senders {
                tx.send(round).await.expect("the parked task is alive");
            }
            for s in spinners {
                s.await.expect("spinner");
            }
            for (i, p) in parked.into_iter().enumerate() {
                assert_eq!(p.await.expect("parked"), round + i as u64);
            }
            ended += 1;
        }
        ended
    });
    assert_eq!(ended, ROUNDS);
}

#[test]
fn rounds_of_tasks_that_sleep_and_then_spin_until_all_woke_all_end() {
    // Each round, one task per worker sleeps (a timer) and then spins until all have woken.
    // A timer fires only on a worker that parks, and a driver started for a woken task on
    // a worker outside the drivers went to that worker's LIFO slot: a worker that then
    // took a driver from Tokio's shared queue first ran a spinner there, and the woken
    // task waited behind it for good. Once all but one spin, the last may be left to a
    // worker parked where no timer fires (the worker that held Tokio's timers woke and
    // spins): the nudger wakes it. Before both fixes this test hung in 7 debug runs of 8
    // (and 2,000 release rounds on 2 workers in 3 runs of 5; Tokio alone hangs too).
    const WORKERS: usize = 2;
    const ROUNDS: u64 = 500;
    let ended = support::on_cpu(WORKERS, || async {
        let mut ended = 0;
        for _ in 0..ROUNDS {
            let woke = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..WORKERS)
                .map(|_| {
                    let woke = woke.clone();
                    task(async move {
                        tokio::time::sleep(Duration::from_micros(100)).await;
                        woke.fetch_add(1, Ordering::SeqCst);
                        while woke.load(Ordering::SeqCst) < WORKERS {
                            std::hint::spin_loop();
                        }
                    })
                    .spawn()
                })
                .collect();
            for t in tasks {
                t.await.expect("a task that slept and spun");
            }
            ended += 1;
        }
        ended
    });
    assert_eq!(ended, ROUNDS);
}

#[test]
fn a_parent_awaiting_all_its_children_at_once_is_never_failed() {
    // The parent awaits its children through `FuturesUnordered` or `join_all`: a poll may
    // end without any child pending (it keeps its VCUs, as a wait outside the runtime does)
    // and lend them once children queue for the CPU, which a wake may race.
    for round in 0..20u64 {
        let n = 1000u64;
        let r = support::on_cpu(2, move || {
            task(async move {
                let children: Vec<_> = (0..n).map(|i| task(async move { i }).spawn()).collect();
                let results: Vec<Result<u64, TaskError>> = if round % 2 == 0 {
                    children
                        .into_iter()
                        .collect::<FuturesUnordered<_>>()
                        .collect()
                        .await
                } else {
                    futures_util::future::join_all(children).await
                };
                results.into_iter().collect::<Result<Vec<u64>, _>>()
            })
        });
        let values = r.and_then(|r| r);
        assert_eq!(
            values.map(|v| v.iter().sum::<u64>()),
            Ok(n * (n - 1) / 2),
            "round {round}"
        );
    }
}

/// The sum of two tasks' values, awaited through a `FuturesUnordered`.
async fn both_unordered(a: TaskHandle<u64>, b: TaskHandle<u64>) -> u64 {
    let mut set: FuturesUnordered<_> = [a, b].into_iter().collect();
    let mut sum = 0;
    while let Some(v) = set.next().await {
        sum += v.unwrap();
    }
    sum
}

/// GPU tasks of half a device each, awaiting their children through `FuturesUnordered` two
/// levels deep. Once one child finished, the parent's next poll polls only that one (a
/// `FuturesUnordered` polls what was woken), and a GPU task keeps its VCUs while it waits
/// on anything but tasks: the parent and its child kept the whole device from the
/// grandchildren, and the tree waited for good. A task whose combinator holds awaits of
/// unfinished tasks awaits tasks, and lends its VCUs.
#[test]
fn tasks_awaiting_children_through_futures_unordered_lend_their_vcus() {
    fn half<F: Future<Output = u64> + Send + 'static>(f: F, gpu: bool) -> TaskHandle<u64> {
        let b = task(f).vcus(0.5);
        if gpu {
            b.placement(Placement::Gpu(0)).spawn()
        } else {
            b.spawn()
        }
    }
    for gpu in [true, false] {
        let rt = support::vgpu(1, 1, 1 << 20);
        let v = support::within(30, move || {
            rt.block_on(async move {
                half(
                    async move {
                        let a = half(
                            async move {
                                both_unordered(half(async { 1 }, gpu), half(async { 2 }, gpu)).await
                            },
                            gpu,
                        );
                        both_unordered(a, half(async { 4 }, gpu)).await
                    },
                    gpu,
                )
                .await
            })
        });
        assert_eq!(v, Ok(7), "on the {}", if gpu { "GPU" } else { "CPU" });
    }
}

/// A parent holding its whole GPU awaits two children through a `FuturesUnordered`: one
/// finishes at once, the other (half the GPU) awaits a grandchild of its own later. Every
/// await the combinator registered must count, not only the first of the poll (the first
/// let the driver go of the thread, and the second then went uncounted): otherwise the
/// parent, once the first child finished, took the whole GPU back and kept it, and the
/// grandchild never ran.
#[test]
fn every_await_a_combinator_registers_in_a_poll_counts() {
    let rt = support::vgpu(2, 1, 1 << 20);
    let v = support::within(30, move || {
        rt.block_on(async move {
            task(async move {
                let quick = task(async { 1u64 }).placement(Placement::Gpu(0)).spawn();
                let slow = task(async {
                    std::thread::sleep(Duration::from_millis(20));
                    let g = task(async { 2u64 })
                        .placement(Placement::Gpu(0))
                        .vcus(0.5)
                        .spawn();
                    g.await.unwrap() + 1
                })
                .placement(Placement::Gpu(0))
                .vcus(0.5)
                .spawn();
                let mut set: FuturesUnordered<_> = [quick, slow].into_iter().collect();
                let mut sum = 0;
                while let Some(v) = set.next().await {
                    sum += v.unwrap();
                }
                sum
            })
            .placement(Placement::Gpu(0))
            .vcus(1.0)
            .await
        })
    });
    assert_eq!(v, Ok(4));
}

/// The sum of the tasks' values, each awaited in turn.
async fn sum_of(handles: Vec<TaskHandle<u64>>) -> u64 {
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    sum
}

/// Parents that each await child after child in a loop, as many as the workers, with
/// default VCUs, and a task woken by a timer meanwhile: the woken task gets its VCUs back
/// and ends the loops. (A finished child passed its VCUs straight back to its parent, past
/// the woken task waiting to take its own back, which then waited for good.)
#[test]
fn a_task_woken_by_a_timer_runs_beside_parents_awaiting_children_in_a_loop() {
    for workers in [1, 2, 3] {
        let rounds = support::on_cpu(workers, move || async move {
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let (d, r) = (done.clone(), rounds.clone());
            // (It sleeps until a parent went round once: the parents may start more than a
            // millisecond after it on a busy machine.)
            let setter = task(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if r.load(Ordering::SeqCst) > 0 {
                        break;
                    }
                }
                d.store(true, Ordering::SeqCst);
            })
            .spawn();
            let parents: Vec<_> = (0..workers)
                .map(|_| {
                    let (done, rounds) = (done.clone(), rounds.clone());
                    task(async move {
                        let mut n = 0u64;
                        while !done.load(Ordering::SeqCst) {
                            n += task(async { 1 }).await.unwrap();
                            rounds.fetch_add(1, Ordering::SeqCst);
                        }
                        n
                    })
                    .spawn()
                })
                .collect();
            setter.await.unwrap();
            sum_of(parents).await
        });
        assert!(rounds > 0, "{workers} workers: {rounds} rounds");
    }
}

/// As above, with the task that ends the loops spawned after the parents (it waits for the
/// CPU, which the parents hold), plain or sleeping first: it starts while they loop. (Each
/// finished child passed its VCUs straight back to its parent, as long as no woken task
/// waited to take its own back, and the waiting task did not start until the loops ended:
/// here, after 20 s.)
#[test]
fn a_task_spawned_after_parents_awaiting_children_in_a_loop_starts_while_they_loop() {
    for sleeps in [false, true] {
        for workers in [1, 2, 4] {
            let ended_by_it = support::on_cpu(workers, move || async move {
                let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let t0 = std::time::Instant::now();
                let parents: Vec<_> = (0..workers)
                    .map(|_| {
                        let done = done.clone();
                        task(async move {
                            while !done.load(Ordering::SeqCst)
                                && t0.elapsed() < Duration::from_secs(20)
                            {
                                task(async { 1 }).await.unwrap();
                            }
                            done.load(Ordering::SeqCst)
                        })
                        .spawn()
                    })
                    .collect();
                let d = done.clone();
                let setter = task(async move {
                    if sleeps {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    d.store(true, Ordering::SeqCst);
                })
                .spawn();
                let mut ended_by_it = true;
                for p in parents {
                    ended_by_it &= p.await.unwrap();
                }
                setter.await.unwrap();
                ended_by_it
            });
            assert!(
                ended_by_it,
                "{workers} workers, setter sleeps {sleeps}: the loops ran out their 20 s"
            );
        }
    }
}

/// Parents that each await child after child in a loop, the children computing for 200 us
/// each, and a task sleeping 1 ms on a Tokio timer beside them: its timer fires while they
/// loop, after tens of children, not thousands. (A driver's poll, which runs up to 128
/// tasks, is one poll of a Tokio task, and Tokio looks at its timers only every 61 such
/// polls or when its worker is idle: the timer fired after about 3,900 children. A
/// driver's poll that runs for a millisecond now yields behind Tokio's timers.)
#[test]
fn a_timer_fires_beside_tasks_that_compute() {
    for workers in [1, 2] {
        let children = support::on_cpu(workers, move || async move {
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let d = done.clone();
            let sleeper = task(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                d.store(true, Ordering::SeqCst);
            })
            .spawn();
            let parents: Vec<_> = (0..workers)
                .map(|_| {
                    let done = done.clone();
                    task(async move {
                        let mut n = 0u64;
                        while !done.load(Ordering::SeqCst) && n < 100_000 {
                            task(async {
                                let t0 = std::time::Instant::now();
                                while t0.elapsed() < Duration::from_micros(200) {
                                    std::hint::spin_loop();
                                }
                            })
                            .await
                            .unwrap();
                            n += 1;
                        }
                        n
                    })
                    .spawn()
                })
                .collect();
            sleeper.await.unwrap();
            sum_of(parents).await
        });
        assert!(
            children < 1_000,
            "{workers} workers: {children} children ran before a 1 ms timer fired"
        );
    }
}

/// Tasks that compute for half a millisecond each, spawned together from `block_on`, and a
/// task spawned before them that sleeps 1 ms on a Tokio timer: the timer fires after a few
/// of them on each worker. (A driver looked at the clock first after 32 tasks and yielded
/// after 64: the sleeper woke after 126 to 128 of 200 such tasks on two workers.)
#[test]
fn a_timer_fires_after_a_few_long_tasks_spawned_together() {
    for workers in [1, 2] {
        let (ran_before, total) = support::on_cpu(workers, move || async move {
            let ran = Arc::new(AtomicUsize::new(0));
            let r = ran.clone();
            let sleeper = task(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                r.load(Ordering::SeqCst)
            })
            .spawn();
            let computing: Vec<_> = (0..200)
                .map(|_| {
                    let ran = ran.clone();
                    task(async move {
                        let t0 = std::time::Instant::now();
                        while t0.elapsed() < Duration::from_micros(500) {
                            std::hint::spin_loop();
                        }
                        ran.fetch_add(1, Ordering::SeqCst);
                    })
                    .spawn()
                })
                .collect();
            let ran_before = sleeper.await.unwrap();
            for c in computing {
                c.await.unwrap();
            }
            (ran_before, ran.load(Ordering::SeqCst))
        });
        assert_eq!(total, 200);
        assert!(
            ran_before < 60,
            "{workers} workers: {ran_before} tasks of 500 us ran before a 1 ms timer fired"
        );
    }
}

/// A node of a tree whose inner tasks await their space, then take each child's value
/// through `now_or_never` (`nested`: `futures::executor`-style, through a waker that is
/// not the task's own) - each child is finished by then.
fn space_tree(depth: u32) -> Pin<Box<dyn Future<Output = u32> + Send>> {
    Box::pin(async move {
        if depth == 0 {
            tokio::time::sleep(Duration::from_micros(100)).await;
            return 1;
        }
        let t = TaskSpace::new("n");
        let hs: Vec<_> = (0..3u32)
            .map(|k| task(space_tree(depth - 1)).id(t.at(k)).spawn())
            .collect();
        (&t).await.unwrap();
        let mut sum = 0;
        for h in hs {
            assert!(h.is_finished());
            sum += futures_util::FutureExt::now_or_never(h)
                .expect("a finished task's handle is ready")
                .unwrap();
        }
        sum
    })
}

/// A handle whose task finished is ready through any waker, even when the budget Tokio
/// gives the worker's tasks ran out in that poll. (Awaits of finished tasks spend that
/// budget; refused for want of it, a poll through another waker returned `Pending`, and
/// an executor nested in the task's poll was never woken: a tree like this one hung in 15
/// runs of 15.)
#[test]
fn finished_handles_are_ready_through_any_waker() {
    for workers in [1, 2, 4] {
        let leaves = support::on_cpu(workers, || task(space_tree(5)));
        assert_eq!(leaves, Ok(243), "{workers} workers");
    }
}
