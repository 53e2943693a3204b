//! Spawning, awaiting, values in and out, handles as dependencies.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parla::prelude::*;

#[test]
fn spawn_and_await_values() {
    each_config!(|rt| {
        let v = rt.block_on(async {
            let h: TaskHandle<f64> = task(async { 2.0 }).spawn();
            let s = task(async { String::from("hi") }).await.unwrap();
            (h.await.unwrap(), s)
        });
        assert_eq!(v, (2.0, "hi".to_string()));
    });
}

#[test]
fn captured_data_moves_in() {
    each_config!(|rt| {
        let data = Arc::new(vec![1u64, 2, 3]);
        let d2 = data.clone();
        let sum = rt
            .block_on(async move { task(async move { d2.iter().sum::<u64>() }).await })
            .unwrap();
        assert_eq!(sum, 6);
        assert_eq!(
            Arc::strong_count(&data),
            1,
            "the task's capture was dropped"
        );
    });
}

#[test]
fn handles_as_dependencies_order_execution() {
    each_config!(|rt| {
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let l = log.clone();
        rt.block_on(async move {
            let (l1, l2, l3) = (l.clone(), l.clone(), l.clone());
            let a = task(async move {
                std::thread::sleep(std::time::Duration::from_millis(20));
                l1.lock().push("a");
            })
            .spawn();
            let b = task(async move { l2.lock().push("b") }).after(&a).spawn();
            let c = task(async move { l3.lock().push("c") })
                .after(&a)
                .after(&b)
                .spawn();
            c.await.unwrap();
        });
        assert_eq!(*log.lock(), vec!["a", "b", "c"]);
    });
}

#[test]
fn block_on_waits_for_detached_tasks() {
    each_config!(|rt| {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        rt.block_on(async move {
            for _ in 0..1000 {
                let n = n2.clone();
                task(async move {
                    n.fetch_add(1, Ordering::Relaxed);
                })
                .spawn();
            }
        });
        assert_eq!(n.load(Ordering::Relaxed), 1000);
    });
}

#[test]
fn tasks_spawn_tasks() {
    each_config!(|rt| {
        let total = rt.block_on(async {
            task(async {
                let hs: Vec<_> = (0..10u64).map(|i| task(async move { i }).spawn()).collect();
                let mut s = 0;
                for h in hs {
                    s += h.await.unwrap();
                }
                s
            })
            .vcus(0.0)
            .await
            .unwrap()
        });
        assert_eq!(total, 45);
    });
}

/// A handle awaited again after an await took its value (through `&mut`, as a completed
/// `timeout` leaves it) says so: `OutputTaken`. (It said `Cancelled`: "the runtime shut
/// down".) A failed task's handle gives its error again.
#[test]
fn a_handle_awaited_again_after_its_value_was_taken_says_so() {
    let rt = parla::Runtime::builder().cpu_threads(2).build().unwrap();
    let (first, again, failed_twice) = rt.block_on(async {
        let mut h = task(async { 1 }).spawn();
        let first = tokio::time::timeout(std::time::Duration::from_secs(30), &mut h)
            .await
            .expect("the task finishes");
        let again = h.await;
        let mut f = task(async { panic!("a failing task") }).spawn();
        let _ = (&mut f).await;
        (first, again, f.await)
    });
    assert_eq!(first, Ok(1));
    assert!(
        matches!(&again, Err(TaskError::OutputTaken { task }) if task.starts_with('#')),
        "{again:?}"
    );
    assert!(
        matches!(failed_twice, Err(TaskError::Panicked { .. })),
        "{failed_twice:?}"
    );
}

#[test]
fn current_task_and_device() {
    each_config!(|rt| {
        let (inside, outside, dev) = rt.block_on(async {
            let t = TaskSpace::new("T");
            let inside = task(async { current_task().map(|c| c.to_string()) })
                .id(t.at(("cpu", 0)))
                .await
                .unwrap();
            let dev = task(async { current_device().to_string() }).await.unwrap();
            (inside, current_task().map(|c| c.to_string()), dev)
        });
        assert_eq!(inside.as_deref(), Some("Task(T[cpu, 0])"));
        assert_eq!(outside, None);
        assert_eq!(dev, "cpu:0");
        assert_eq!(current_device().to_string(), "cpu:0");
        assert_eq!(current_device().arch(), Arch::Cpu);
    });
}

#[test]
fn anonymous_tasks_have_numbered_names() {
    let rt = support::cpu(1);
    let name = rt.block_on(async {
        task(async { current_task().unwrap().name() })
            .await
            .unwrap()
    });
    assert!(name.starts_with('#'), "{name}");
}

#[test]
fn a_long_chain_completes() {
    each_config!(|rt| {
        let last = rt.block_on(async {
            let mut prev = task(async { 0u32 }).spawn();
            for i in 1..=10_000u32 {
                prev = task(async move { i }).after(&prev).spawn();
            }
            prev.await.unwrap()
        });
        assert_eq!(last, 10_000);
    });
}

#[test]
fn runtime_is_reusable_and_handles_outlive_block_on() {
    let rt = support::cpu(2);
    let h = rt.block_on(async {
        let h = task(async { 5 }).spawn();
        Some(h)
    });
    let h = h.unwrap();
    assert!(h.is_finished());
    let v = rt.block_on(h).unwrap();
    assert_eq!(v, 5);
    assert_eq!(rt.block_on(async { task(async { 6 }).await }).unwrap(), 6);
}

#[test]
fn tokio_facilities_work_inside_tasks() {
    let rt = support::cpu(2);
    let v = rt.block_on(async {
        task(async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            7
        })
        .await
    });
    assert_eq!(v.unwrap(), 7);
}

/// Tasks made ready together by a finishing task run on two workers at once: each of the
/// two children blocks its worker until it met the other. (A worker that starts a second
/// driver must let it go to an idle worker; were the children run one after the other on
/// one worker, neither would meet the other before its deadline.)
#[test]
fn tasks_made_ready_by_a_task_run_on_every_worker() {
    use std::sync::mpsc;
    use std::time::Duration;
    let rt = support::cpu(2);
    let met = support::within(60, move || {
        rt.block_on(async {
            let t = TaskSpace::new("T");
            let (tx_a, rx_a) = mpsc::channel::<()>();
            let (tx_b, rx_b) = mpsc::channel::<()>();
            let meet = |tx: mpsc::Sender<()>, rx: mpsc::Receiver<()>| {
                move || {
                    let _ = tx.send(());
                    rx.recv_timeout(Duration::from_secs(10)).is_ok()
                }
            };
            let (a, b) = (meet(tx_a, rx_b), meet(tx_b, rx_a));
            let a = task(async move { a() }).after(t.at(0)).spawn();
            let b = task(async move { b() }).after(t.at(0)).spawn();
            // Spawned last: its completion, on a worker, makes both children ready.
            task(async {}).id(t.at(0)).spawn();
            (a.await, b.await)
        })
    });
    assert_eq!((met.0.ok(), met.1.ok()), (Some(true), Some(true)));
}

/// A future that keeps a large buffer across an await.
async fn holds<const N: usize>() -> usize {
    let mut buf = [0u8; N];
    tokio::task::yield_now().await;
    std::hint::black_box(&mut buf);
    buf.iter().filter(|&&b| b == 0).count()
}

/// A task whose future is large (a buffer kept across an await) is spawned inside another
/// task, on a worker thread's 2 MiB stack, as `tokio::spawn` takes it there: the spawn
/// boxes it before its own frames copy it. (Release builds overflowed that stack from
/// 512 KiB up and abort the process; with the box, 1 MiB runs. In this debug build the
/// caller's own frames hold more copies: the unboxed spawn overflowed from 160 KiB, the
/// boxed one runs up to 224 KiB.)
#[test]
fn a_large_future_is_spawned_inside_a_task() {
    const N: usize = 176 << 10;
    let rt = support::cpu(2);
    let n = support::within(60, move || {
        rt.block_on(async {
            task(async { task(holds::<N>()).await.expect("spawned inside a task") })
                .await
                .expect("the parent")
        })
    });
    assert_eq!(n, N);
}

/// Iterators of the standard library over dependencies go to `.after` as they are: a
/// vector's, a deque's and a map's handles by reference, a vector of references by value,
/// and adapters over them. Each dependent runs after all of its dependencies.
#[test]
fn iterators_of_handles_are_dependencies() {
    use std::collections::{BTreeMap, HashMap, VecDeque};
    let rt = support::cpu(2);
    let bad = support::within(30, move || {
        rt.block_on(async {
            let done = Arc::new(AtomicUsize::new(0));
            let mut bad = 0;
            let batch = |n: usize| -> Vec<TaskHandle<()>> {
                (0..n)
                    .map(|_| {
                        let d = done.clone();
                        task(async move {
                            tokio::task::yield_now().await;
                            d.fetch_add(1, Ordering::SeqCst);
                        })
                        .spawn()
                    })
                    .collect()
            };
            let check =
                |d: Arc<AtomicUsize>, want: usize| async move { d.load(Ordering::SeqCst) >= want };
            let mut want = 0;
            macro_rules! after {
                ($hs:ident = $made:expr, $n:expr, $deps:expr) => {{
                    let $hs = $made;
                    want += $n;
                    let ok = task(check(done.clone(), want)).after($deps).await;
                    if ok != Ok(true) {
                        bad += 1;
                    }
                }};
            }
            after!(hs = batch(4), 4, hs.iter());
            after!(hs = batch(4), 4, hs.iter().skip(1).chain(hs.iter().take(1)));
            after!(
                hs = batch(4).into_iter().collect::<VecDeque<_>>(),
                4,
                hs.iter()
            );
            after!(
                hs = batch(4).into_iter().enumerate().collect::<HashMap<_, _>>(),
                4,
                hs.values()
            );
            after!(
                hs = batch(4).into_iter().enumerate().collect::<BTreeMap<_, _>>(),
                4,
                hs.values()
            );
            after!(
                hs = [batch(2), batch(2)],
                4,
                hs.iter().flat_map(|v| v.iter())
            );
            after!(hs = batch(4), 4, hs.iter().collect::<Vec<_>>().into_iter());
            let one = batch(1);
            want += 1;
            let ok = task(check(done.clone(), want))
                .after(std::iter::once(&one[0]))
                .await;
            bad + usize::from(ok != Ok(true))
        })
    });
    assert_eq!(bad, 0, "a dependent ran before its dependencies");
}

/// A `#[parla::task]` body that is a `return` alone builds without warnings, clippy's
/// included (the workspace's clippy run denies them), and runs.
#[allow(clippy::needless_return)]
#[parla::task]
async fn only_a_return(n: i32) -> i32 {
    return n + 1;
}

#[test]
fn a_task_function_whose_body_is_a_return_runs() {
    let rt = support::cpu(1);
    assert_eq!(rt.block_on(only_a_return(1)).unwrap(), 2);
}
