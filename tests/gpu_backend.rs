//! The CUDA backend on a real GPU: placement, the GPU context, VCUs, memory admission,
//! runahead, synchronisation. Run on a GPU machine with `--include-ignored`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parla::gpu::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use parla::prelude::*;
use support::gpu::{KERNELS, real};

/// Spawns task `i` of a chain in `t` on GPU 0, after task `i - 1`.
fn spawn_in_chain(t: &TaskSpace, i: usize, body: impl Future<Output = ()> + Send + 'static) {
    let mut b = task(body).id(t.at(i)).placement(Placement::Gpu(0));
    if i > 0 {
        b = b.after(t.at(i - 1));
    }
    b.spawn();
}

fn rt() -> parla::Runtime {
    real().expect("this test needs a CUDA GPU")
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn placement_and_gpu_context() {
    let rt = rt();
    support::within(120, move || {
        rt.block_on(async {
            let t = TaskSpace::new("Device");
            let gpu = task(async {
                let g = parla::gpu::current().expect("GPU tasks have a GPU context");
                (
                    current_device(),
                    g.device(),
                    current_task().unwrap().to_string(),
                )
            })
            .id(t.at(("gpu", 0)))
            .placement(Placement::Gpu(0))
            .await
            .unwrap();
            assert_eq!(gpu.0, Device::gpu(0));
            assert_eq!(gpu.1, Device::gpu(0));
            assert_eq!(gpu.2, "Task(Device[gpu, 0])");
            let cpu = task(async { (current_device(), parla::gpu::current().is_none()) })
                .await
                .unwrap();
            assert_eq!(cpu, (Device::CPU, true));
            let either = task(async { current_device().arch() })
                .placement([Placement::Cpu, Placement::AnyGpu])
                .await
                .unwrap();
            assert_eq!(either, Arch::Gpu, "an idle GPU wins the tie");
        })
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_gpu_task_computes_and_synchronizes() {
    let rt = rt();
    let out = support::within(120, move || {
        rt.block_on(async {
            task(async {
                let g = parla::gpu::current().unwrap();
                let s = g.stream();
                let mut x = s.alloc_zeros::<u32>(1).unwrap();
                let f = g.kernel(KERNELS, "increment").unwrap();
                for _ in 0..10 {
                    let mut b = s.launch_builder(&f);
                    b.arg(&mut x);
                    // SAFETY: `increment` takes one `unsigned int*`; x holds one element.
                    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
                }
                g.synchronize().await.unwrap();
                s.clone_dtoh(&x).unwrap()[0]
            })
            .placement(Placement::AnyGpu)
            .await
            .unwrap()
        })
    });
    assert_eq!(out, 10);
}

/// Two sources with kernels of the same names, writing different values.
const SETS_A: &str = r#"
extern "C" __global__ void set1(unsigned int *x) { x[0] = 1; }
extern "C" __global__ void set2(unsigned int *x) { x[0] = 2; }
extern "C" __global__ void set3(unsigned int *x) { x[0] = 3; }
"#;
const SETS_B: &str = r#"
extern "C" __global__ void set1(unsigned int *x) { x[0] = 11; }
extern "C" __global__ void set2(unsigned int *x) { x[0] = 12; }
extern "C" __global__ void set3(unsigned int *x) { x[0] = 13; }
"#;

/// One worker thread looks up six kernels in turn (more than a thread remembers), two of
/// each name from two sources: every lookup gives the kernel of its source and name.
#[test]
#[ignore = "needs a CUDA GPU"]
fn kernels_are_found_by_source_and_name() {
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .build()
        .expect("runtime");
    assert!(rt.has_real_gpus(), "this test needs a CUDA GPU");
    let got = support::within(120, move || {
        rt.block_on(async {
            let mut got = Vec::new();
            for _round in 0..3 {
                for (src, name) in [
                    (SETS_A, "set1"),
                    (SETS_B, "set1"),
                    (SETS_A, "set2"),
                    (SETS_B, "set2"),
                    (SETS_A, "set3"),
                    (SETS_B, "set3"),
                ] {
                    let v = task(async move {
                        let g = parla::gpu::current().unwrap();
                        let s = g.stream();
                        let mut x = s.alloc_zeros::<u32>(1).unwrap();
                        let f = g.kernel(src, name).unwrap();
                        {
                            let mut b = s.launch_builder(&f);
                            b.arg(&mut x);
                            // SAFETY: every `set` kernel takes one `unsigned int*`; x holds
                            // one element.
                            unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
                        }
                        g.synchronize().await.unwrap();
                        s.clone_dtoh(&x).unwrap()[0]
                    })
                    .placement(Placement::Gpu(0))
                    .await
                    .unwrap();
                    got.push(v);
                }
            }
            got
        })
    });
    assert_eq!(got, [1, 11, 2, 12, 3, 13].repeat(3));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cublas_and_cusolver_handles_are_bound_and_reused() {
    let rt = rt();
    support::within(120, move || {
        rt.block_on(async {
            task(async {
                let g = parla::gpu::current().unwrap();
                let b1 = g.blas().unwrap() as *const _;
                let b2 = g.blas().unwrap() as *const _;
                assert_eq!(b1, b2, "one handle per stream, reused");
                let s = g.solver().unwrap();
                assert_eq!(s.stream().cu_stream(), g.stream().cu_stream());
                // A dgemm through the handle: C = A * B with 2x2 matrices.
                use parla::gpu::blas::{Gemm, GemmConfig};
                use parla::gpu::cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N;
                let st = g.stream();
                let a = st.clone_htod(&[1.0f64, 2.0, 3.0, 4.0]).unwrap();
                let bm = st.clone_htod(&[1.0f64, 0.0, 0.0, 1.0]).unwrap();
                let mut c = st.alloc_zeros::<f64>(4).unwrap();
                let cfg = GemmConfig {
                    transa: CUBLAS_OP_N,
                    transb: CUBLAS_OP_N,
                    m: 2,
                    n: 2,
                    k: 2,
                    alpha: 1.0,
                    lda: 2,
                    ldb: 2,
                    beta: 0.0,
                    ldc: 2,
                };
                // SAFETY: a, b and c hold 2x2 column-major matrices as the config says.
                unsafe { g.blas().unwrap().gemm(cfg, &a, &bm, &mut c) }.unwrap();
                assert_eq!(st.clone_dtoh(&c).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
            })
            .placement(Placement::Gpu(0))
            .await
            .unwrap()
        })
    });
}

/// Runs `n` GPU tasks that each keep the GPU busy for `ms` and returns the peak number whose
/// bodies overlapped.
fn gpu_overlap(rt: &parla::Runtime, n: usize, vcus: f64, ms: u64) -> usize {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (now2, peak2) = (now.clone(), peak.clone());
    rt.block_on(async move {
        for _ in 0..n {
            let (now, peak) = (now2.clone(), peak2.clone());
            task(async move {
                let k = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(k, Ordering::SeqCst);
                let g = parla::gpu::current().unwrap();
                let f = g.kernel(KERNELS, "spin").unwrap();
                let ns: u64 = ms * 1_000_000;
                let null: u64 = 0;
                {
                    let mut b = g.stream().launch_builder(&f);
                    b.arg(&ns).arg(&null);
                    // SAFETY: `spin` takes (unsigned long long, unsigned int*); a null flag
                    // is allowed by the kernel.
                    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
                }
                g.synchronize().await.unwrap();
                now.fetch_sub(1, Ordering::SeqCst);
            })
            .placement(Placement::Gpu(0))
            .vcus(vcus)
            .spawn();
        }
    });
    peak.load(Ordering::SeqCst)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn half_vcus_let_exactly_two_gpu_tasks_overlap() {
    let rt = Arc::new(rt());
    let r2 = rt.clone();
    let half = support::within(120, move || gpu_overlap(&r2, 6, 0.5, 30));
    let r3 = rt.clone();
    let whole = support::within(120, move || gpu_overlap(&r3, 4, 1.0, 30));
    assert_eq!(half, 2);
    assert_eq!(whole, 1);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn memory_admission_against_the_real_budget() {
    let rt = rt();
    let budget = rt.memory_budget(Device::gpu(0)).unwrap();
    let r = support::within(120, move || {
        rt.block_on(async {
            // More than the whole device: unsatisfiable at once, with the numbers.
            let too_big = task(async {})
                .placement(Placement::Gpu(0))
                .memory(budget + 1)
                .await
                .unwrap_err();
            // Tasks of 60% of the budget run one at a time.
            let now = Arc::new(AtomicUsize::new(0));
            let peak = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = (0..3)
                .map(|_| {
                    let (now, peak) = (now.clone(), peak.clone());
                    task(async move {
                        let k = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(k, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        now.fetch_sub(1, Ordering::SeqCst);
                    })
                    .placement(Placement::Gpu(0))
                    .memory(budget / 10 * 6)
                    .spawn()
                })
                .collect();
            for h in hs {
                h.await.unwrap();
            }
            (too_big, peak.load(Ordering::SeqCst))
        })
    });
    assert!(matches!(r.0, TaskError::Unsatisfiable { .. }), "{}", r.0);
    assert!(
        r.0.to_string().contains(&(budget + 1).to_string()),
        "{}",
        r.0
    );
    assert_eq!(r.1, 1);
}

/// A counter on GPU 0, zero, for tasks to increment in turn. cudarc's own cross-stream
/// tracking is off for it, so only the runtime orders the tasks that use it.
async fn untracked_counter() -> Counter {
    task(async {
        let g = parla::gpu::current().unwrap();
        // SAFETY: disables cudarc's per-allocation events for allocations made after this
        // call on this context; the tests order every access themselves.
        unsafe { g.context().disable_event_tracking() };
        let x: CudaSlice<u32> = g.stream().alloc_zeros(1).unwrap();
        g.synchronize().await.unwrap();
        Arc::new(parking_lot::Mutex::new(x))
    })
    .placement(Placement::Gpu(0))
    .await
    .unwrap()
}

/// The counter's value, read by a task on GPU 0.
async fn read_counter(x: Counter) -> u32 {
    task(async move {
        let g = parla::gpu::current().unwrap();
        g.stream().clone_dtoh(&*x.lock()).unwrap()[0]
    })
    .placement(Placement::Gpu(0))
    .await
    .unwrap()
}

type Counter = Arc<parking_lot::Mutex<CudaSlice<u32>>>;

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_chain_of_1000_gpu_tasks_runs_ahead_without_host_syncs() {
    const N: usize = 1000;
    let rt = rt();
    let (value, ran_ahead) = support::within(300, move || {
        rt.block_on(async {
            // One counter on the device, incremented by each task in turn. cudarc's own
            // cross-stream tracking is off for it, so only the runtime orders the tasks
            // (which run on different streams of the pool).
            let x = untracked_counter().await;
            let t = TaskSpace::new("Chain");
            let ahead = Arc::new(AtomicUsize::new(0));
            for i in 0..N {
                let (x, ahead, t2) = (x.clone(), ahead.clone(), t.clone());
                spawn_in_chain(&t, i, async move {
                    // The predecessor's GPU work is still queued: the host did not wait.
                    if i > 0 && !t2.at(i - 1).is_finished() {
                        ahead.fetch_add(1, Ordering::Relaxed);
                    }
                    let g = parla::gpu::current().unwrap();
                    let spin = g.kernel(KERNELS, "spin").unwrap();
                    let inc = g.kernel(KERNELS, "increment").unwrap();
                    let (ns, null): (u64, u64) = (20_000, 0);
                    let s = g.stream();
                    let mut b = s.launch_builder(&spin);
                    b.arg(&ns).arg(&null);
                    // SAFETY: `spin` takes (unsigned long long, unsigned int*), null allowed.
                    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
                    let mut xg = x.lock();
                    let mut b = s.launch_builder(&inc);
                    b.arg(&mut *xg);
                    // SAFETY: `increment` takes one `unsigned int*`; x holds one element.
                    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
                });
            }
            t.at(N - 1).await.unwrap();
            let v = read_counter(x).await;
            (v, ahead.load(Ordering::Relaxed))
        })
    });
    assert_eq!(value, N as u32, "every increment ran, in order");
    eprintln!(
        "{ran_ahead} of {} tasks started before their predecessor finished",
        N - 1
    );
    assert!(
        ran_ahead >= N / 2,
        "runahead: dependents should start behind their predecessor's fence, {ran_ahead} did"
    );
}

/// Each task of a chain runs on the other class of streams than its predecessor (priority
/// 0, then 1, ...), so each must wait on its predecessor's fence, whose event the backend
/// records only when asked (here: by the dependent, on another stream). Nothing awaits the
/// tasks themselves: the space's await sees them complete through the fence poller alone.
#[test]
#[ignore = "needs a CUDA GPU"]
fn deferred_fences_order_dependents_on_other_streams() {
    const N: usize = 200;
    let rt = rt();
    let (value, streams) = support::within(300, move || {
        rt.block_on(async {
            let x = untracked_counter().await;
            let t = TaskSpace::new("Alternate");
            let urgent = Arc::new(AtomicUsize::new(0));
            for i in 0..N {
                let (x, urgent) = (x.clone(), urgent.clone());
                let mut b = task(async move {
                    let g = parla::gpu::current().unwrap();
                    if g.stream_priority() < 0 {
                        urgent.fetch_add(1, Ordering::Relaxed);
                    }
                    let inc = g.kernel(KERNELS, "slow_increment").unwrap();
                    let ns: u64 = 20_000;
                    let mut xg = x.lock();
                    let mut b = g.stream().launch_builder(&inc);
                    b.arg(&ns).arg(&mut *xg);
                    // SAFETY: `slow_increment` takes (unsigned long long, unsigned int*); x
                    // holds one element.
                    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
                })
                .id(t.at(i))
                .placement(Placement::Gpu(0))
                .priority((i % 2) as u8);
                if i > 0 {
                    b = b.after(t.at(i - 1));
                }
                drop(b.spawn());
            }
            (&t).await.unwrap();
            let v = read_counter(x).await;
            (v, urgent.load(Ordering::Relaxed))
        })
    });
    assert_eq!(
        streams,
        N / 2,
        "every other task ran on a high-priority stream"
    );
    assert_eq!(value, N as u32, "every increment ran, one after the other");
}

/// A GPU task's slice in the trace is timed on the device: a 2 ms kernel shows as about
/// 2 ms, inside the task's host window, and a chain's kernels follow each other.
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_trace_times_gpu_tasks_with_cuda_events() {
    if real().is_none() {
        return;
    }
    let path = support::trace_path("gpu-trace");
    let rt = support::traced(4, &path);
    rt.block_on(async {
        let t = TaskSpace::new("Kernel");
        for i in 0..4 {
            spawn_in_chain(&t, i, async {
                launch_spin(&parla::gpu::current().unwrap(), 2_000_000);
            });
        }
        t.await.unwrap();
    });
    drop(rt);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("valid JSON");
    let ev = v["traceEvents"].as_array().unwrap();
    let slice = |i: usize| {
        ev.iter()
            .find(|e| e["ph"] == "X" && e["cat"] == "task" && e["name"] == format!("Kernel[{i}]"))
            .unwrap_or_else(|| panic!("no slice for Kernel[{i}]"))
    };
    let f = |e: &serde_json::Value, k: &str| e[k].as_f64().unwrap();
    for i in 0..4 {
        let s = slice(i);
        assert!(s["pid"].as_u64().unwrap() >= 1, "on a GPU's track: {s}");
        let (ts, dur) = (f(s, "ts"), f(s, "dur"));
        assert!((1900.0..4000.0).contains(&dur), "a 2 ms kernel: {s}");
        // The host window, with room for the clock's alignment (a few us).
        let (h0, h1) = (f(&s["args"], "host_start_us"), f(&s["args"], "host_end_us"));
        assert!(
            ts >= h0 - 50.0 && ts + dur <= h1 + 50.0,
            "inside its task's window: {s}"
        );
        if i > 0 {
            let p = slice(i - 1);
            assert!(
                ts >= f(p, "ts") + f(p, "dur") - 5.0,
                "after its dependency: {p} {s}"
            );
        }
    }
    let launches = ev.iter().filter(|e| e["cat"] == "launch").count();
    assert_eq!(launches, 4, "each GPU task's host side");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

/// A task with a priority above 0 runs on a high-priority stream; others on default ones.
#[test]
#[ignore = "needs a CUDA GPU"]
fn urgent_tasks_run_on_high_priority_streams() {
    let Some(rt) = real() else {
        return;
    };
    let prio = |level: u8| {
        rt.block_on(async move {
            task(async { parla::gpu::current().unwrap().stream_priority() })
                .placement(Placement::Gpu(0))
                .priority(level)
                .await
                .unwrap()
        })
    };
    let (normal, urgent) = (prio(0), prio(1));
    assert_eq!(normal, 0);
    assert!(
        urgent < 0,
        "the device's highest priority is below 0 on every CUDA GPU: {urgent}"
    );
}

/// Launches `spin` for `ns` nanoseconds of GPU time on the task's stream (no flag).
fn launch_spin(c: &parla::gpu::GpuContext, ns: u64) {
    let spin = c.kernel(KERNELS, "spin").unwrap();
    let null: u64 = 0;
    let mut b = c.stream().launch_builder(&spin);
    b.arg(&ns).arg(&null);
    // SAFETY: `spin` takes (unsigned long long, unsigned int*); a null flag is allowed.
    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
}

/// A GPU task named `g.at(n)` that spins `ns` nanoseconds on GPU 0 in a kernel that then
/// writes 1 to a buffer of its own, waits for it (`synchronize().await`), counts itself
/// in `ran` and returns what the kernel wrote.
fn spin_task(g: &TaskSpace, n: &mut usize, ran: &Arc<AtomicUsize>, ns: u64) -> TaskHandle<u32> {
    *n += 1;
    let ran = ran.clone();
    task(async move {
        let c = parla::gpu::current().unwrap();
        let spin = c.kernel(KERNELS, "spin").unwrap();
        let mut flag: CudaSlice<u32> = c.stream().alloc_zeros(1).unwrap();
        {
            let mut b = c.stream().launch_builder(&spin);
            b.arg(&ns).arg(&mut flag);
            // SAFETY: `spin` takes (unsigned long long, unsigned int*); `flag` holds one.
            unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
        }
        c.synchronize().await.unwrap();
        let v = c.stream().clone_dtoh(&flag).unwrap()[0];
        ran.fetch_add(1, Ordering::Relaxed);
        v
    })
    .id(g.at(*n))
    .placement(Placement::Gpu(0))
    .spawn()
}

/// The ways programs await tasks, with GPU tasks whose kernels are in flight: `select!`
/// against a timer and against a channel (the losing handle dropped while its kernel runs),
/// `timeout`, `join!` with a CPU task, `tokio::spawn` inside a CPU task, a GPU task whose
/// body awaits a channel and a CPU child between its launches, and handles dropped at once;
/// in a loop, with the default VCUs. Every GPU task runs its kernel once and every await
/// sees it done.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_tasks_under_select_timeout_join_and_tokio_spawn() {
    const ROUNDS: usize = 100;
    let rt = rt();
    let (spawned, ran, seen) = support::within(300, move || {
        rt.block_on(async {
            let g = TaskSpace::new("G");
            let ran = Arc::new(AtomicUsize::new(0));
            let (mut n, mut seen) = (0, 0);
            for round in 0..ROUNDS {
                // `select!` against a timer: either may win; the loser is dropped.
                let a = spin_task(&g, &mut n, &ran, 20_000);
                tokio::select! {
                    v = a => { assert_eq!(v, Ok(1)); seen += 1; }
                    _ = tokio::time::sleep(Duration::from_micros(50)) => {}
                }
                // `select!` against a channel a CPU task fills: the GPU task loses.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let cpu = task(async move { tx.send(round).unwrap() }).spawn();
                let b = spin_task(&g, &mut n, &ran, 20_000_000);
                tokio::select! {
                    v = rx => assert_eq!(v, Ok(round)),
                    v = b => panic!("a 20 ms kernel beat a channel: {v:?}"),
                }
                cpu.await.unwrap();
                // `timeout`.
                let c = spin_task(&g, &mut n, &ran, 10_000);
                let v = tokio::time::timeout(Duration::from_secs(10), c).await;
                assert_eq!(v, Ok(Ok(1)));
                seen += 1;
                // `join!` of two GPU tasks and a CPU task.
                let (d, e) = (
                    spin_task(&g, &mut n, &ran, 5_000),
                    spin_task(&g, &mut n, &ran, 15_000),
                );
                let (d, e, f) = tokio::join!(d, e, task(async { 7 }));
                assert_eq!((d, e, f), (Ok(1), Ok(1), Ok(7)));
                seen += 2;
                // `tokio::spawn` inside a CPU task spawns and awaits a GPU task.
                let h = spin_task(&g, &mut n, &ran, 5_000);
                let v = task(async move { tokio::spawn(h).await.unwrap() }).await;
                assert_eq!(v, Ok(Ok(1)));
                seen += 1;
                // A GPU body awaiting a channel and a CPU child between two launches.
                let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
                let waits = {
                    let ran = ran.clone();
                    n += 1;
                    task(async move {
                        let c = parla::gpu::current().unwrap();
                        let inc = c.kernel(KERNELS, "increment").unwrap();
                        let mut x: CudaSlice<u32> = c.stream().alloc_zeros(1).unwrap();
                        let launch = |x: &mut CudaSlice<u32>| {
                            let mut b = c.stream().launch_builder(&inc);
                            b.arg(x);
                            // SAFETY: `increment` takes one `unsigned int*`; x holds one.
                            unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.unwrap();
                        };
                        launch(&mut x);
                        let sent = rx.await.unwrap();
                        let child = task(async move { sent + 1 }).await.unwrap();
                        launch(&mut x);
                        c.synchronize().await.unwrap();
                        ran.fetch_add(1, Ordering::Relaxed);
                        c.stream().clone_dtoh(&x).unwrap()[0] + child
                    })
                    .id(g.at(n))
                    .placement(Placement::Gpu(0))
                    .spawn()
                };
                task(async move {
                    tokio::time::sleep(Duration::from_micros(100)).await;
                    tx.send(40).unwrap();
                })
                .spawn();
                assert_eq!(waits.await, Ok(2 + 41));
                seen += 1;
                // Handles dropped at once.
                drop(spin_task(&g, &mut n, &ran, 5_000));
            }
            // Every task, the dropped and the beaten included, finishes.
            (&g).await.unwrap();
            (n, ran.load(Ordering::Relaxed), seen)
        })
    });
    assert_eq!(ran, spawned, "every GPU task ran to its end once");
    assert!(
        seen >= ROUNDS * 5,
        "every await but the races saw its task: {seen}"
    );
}

/// `abort` on GPU tasks: one whose body awaits a channel after a launch (stopped there,
/// its kernel finishing on the device), one waiting for it (failed at once), and one whose
/// body returned (left to finish). The GPU then runs the next task as before.
#[test]
#[ignore = "needs a CUDA GPU"]
fn abort_stops_gpu_tasks_and_the_gpu_runs_on() {
    let rt = rt();
    let r = support::within(120, move || {
        rt.block_on(async {
            let ran = Arc::new(AtomicUsize::new(0));
            let g = TaskSpace::new("G");
            let mut n = 0;
            let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
            let stuck = task(async move {
                launch_spin(&parla::gpu::current().unwrap(), 1_000_000);
                rx.await.ok();
                unreachable!("aborted while it awaits the channel");
            })
            .placement(Placement::Gpu(0))
            .spawn();
            let waiting = task(async {})
                .after(&stuck)
                .placement(Placement::Gpu(0))
                .spawn();
            // Launches a 50 ms kernel and returns: fenced, not finished, when aborted.
            let returned = task(async {
                launch_spin(&parla::gpu::current().unwrap(), 50_000_000);
                7
            })
            .placement(Placement::Gpu(0))
            .spawn();
            tokio::time::sleep(Duration::from_millis(20)).await;
            stuck.abort();
            waiting.abort();
            // Its body returned; its kernel still runs.
            returned.abort();
            let (stuck, waiting, returned) = (stuck.await, waiting.await, returned.await);
            let next = spin_task(&g, &mut n, &ran, 10_000).await;
            (stuck, waiting, returned, next, ran.load(Ordering::Relaxed))
        })
    });
    assert!(matches!(r.0, Err(TaskError::Aborted { .. })), "{:?}", r.0);
    assert!(matches!(r.1, Err(TaskError::Aborted { .. })), "{:?}", r.1);
    assert_eq!(r.2, Ok(7), "a GPU task whose body returned finishes");
    assert_eq!(r.3, Ok(1));
    assert_eq!(r.4, 1);
}
