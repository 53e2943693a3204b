//! GPU latency and throughput of parla tasks against raw cudarc, in the same run.
//!
//! ```text
//! cargo bench --bench gpu                  # on a machine with a CUDA GPU
//! cargo bench --bench gpu -- --quick       # fewer repetitions
//! cargo bench --bench gpu -- --chain       # the chain rows (2) alone
//! cargo bench --bench gpu -- --chain --pairs 61   # ... with 61 pairs each
//! ```
//!
//! 1. Completion-to-wake latency: an empty kernel, then wait for it. Raw: launch, record an
//!    event, `cuEventSynchronize`. parla: inside a GPU task, launch, then
//!    `gpu.synchronize().await` (the runtime's event bridge). Also the whole round trip of a
//!    GPU task spawned and awaited from `block_on`, and from a CPU task. Median and p99. An
//!    awaiter spins on a fence for up to `parla::fences::AWAIT_SPIN` (50 us) before it
//!    parks, and a driver that ran GPU tasks lingers as long for more work and for their
//!    fences, so these rows time that spin, not the path from a finished event to a woken awaiter: the
//!    `woken by the poller` rows do, with a kernel that runs 300 us (longer than the spin),
//!    against the raw launch, record and `cuEventSynchronize` of the same kernel.
//! 2. A dependent chain of 1,000 tiny kernels: raw, one launch loop on one stream and one
//!    synchronize; parla, 1,000 GPU tasks each after the previous (runahead: the host never
//!    waits between them). The launch inside the tasks is timed in separate chains, so the
//!    clock reads are not part of the chain timed against the raw loop.
//!    The two alternate, 15 pairs (7 with `--quick`, N with `--pairs N`); besides the
//!    ratio of their medians, the median of each pair's ratio, which the drift of the
//!    launch loop's own speed between calls does not move. Then the same pairs from one
//!    thread: the chain on a runtime with one worker, against the raw loop inside a CPU
//!    task on that worker (the main thread and the worker that runs a chain sit on
//!    different cores, and how fast a core launches differs from core to core). And the
//!    chain with an empty CPU task after each GPU task, by pairs against the raw loop:
//!    there something waits on every fence (the CPU tasks), which sets the fence poller's
//!    short pace, and the time runs until the CPU tasks finished.
//! 3. 10,000 independent GPU tasks, each launching an empty kernel, against raw launches
//!    round-robin over 8 streams.
//!
//! Without a CUDA GPU it says so and exits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parla::gpu::cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use parla::prelude::*;

const KERNELS: &str = r#"
extern "C" __global__ void empty() {}
extern "C" __global__ void tiny(unsigned int *x) { if (threadIdx.x == 0) { x[blockIdx.x] += 1; } }
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < ns);
}
"#;

/// Kernels in a chain (row 2).
const CHAIN: usize = 1000;

/// How long the kernel of the `woken by the poller` rows runs.
const SPIN_NS: u64 = 300_000;

fn launch_spin(s: &CudaStream, f: &CudaFunction) {
    let mut b = s.launch_builder(f);
    b.arg(&SPIN_NS);
    // SAFETY: `spin` takes one `unsigned long long`.
    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.expect("launch");
}

fn launch_empty(s: &CudaStream, f: &CudaFunction) {
    let mut b = s.launch_builder(f);
    // SAFETY: `empty` takes no arguments.
    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.expect("launch");
}

fn launch_tiny(s: &CudaStream, f: &CudaFunction, x: &mut CudaSlice<u32>) {
    let mut b = s.launch_builder(f);
    b.arg(x);
    // SAFETY: `tiny` takes one `unsigned int*`; one block touches x[0] only.
    unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.expect("launch");
}

/// The raw chain: `CHAIN` launches of `tiny` on `s`, then one synchronize; microseconds
/// per kernel.
fn raw_launch_loop(s: &CudaStream, f: &CudaFunction, x: &mut CudaSlice<u32>) -> f64 {
    let t = Instant::now();
    for _ in 0..CHAIN {
        launch_tiny(s, f, x);
    }
    s.synchronize().expect("sync");
    t.elapsed().as_secs_f64() * 1e6 / CHAIN as f64
}

/// Spawns a chain of `n` GPU tasks made by `body`, each after the previous, and waits for
/// the last; returns microseconds per task.
async fn gpu_chain<F>(n: usize, body: impl Fn() -> F) -> f64
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    chain_on(Placement::Gpu(0), n, false, body).await
}

/// The kernel chain: `n` GPU tasks, each after the previous, each looking up the `tiny`
/// kernel and launching it on the buffer in `shared` (allocated by a first task on the
/// device); microseconds per task. With `probe`, each task adds the nanoseconds its launch
/// took there. With `cpu_after`, each GPU task also has an empty CPU task after it (a
/// result used on the host, say), so that something waits on every fence; the time then
/// runs until the CPU tasks finished too.
async fn kernel_chain(
    n: usize,
    shared: Arc<parking_lot::Mutex<Option<CudaSlice<u32>>>>,
    probe: Option<Arc<std::sync::atomic::AtomicU64>>,
    cpu_after: bool,
) -> f64 {
    let sh = shared.clone();
    task(async move {
        let g = parla::gpu::current().expect("GPU task");
        let mut s = sh.lock();
        if s.is_none() {
            *s = Some(g.stream().alloc_zeros::<u32>(1).expect("alloc"));
        }
    })
    .placement(Placement::Gpu(0))
    .await
    .expect("setup");
    chain_on(Placement::Gpu(0), n, cpu_after, || {
        let (sh, probe) = (shared.clone(), probe.clone());
        async move {
            let g = parla::gpu::current().expect("GPU task");
            let f = g.kernel(KERNELS, "tiny").expect("kernel");
            let mut s = sh.lock();
            let buf = s.as_mut().expect("buffer");
            match probe {
                None => launch_tiny(g.stream(), &f, buf),
                Some(p) => {
                    let t = Instant::now();
                    launch_tiny(g.stream(), &f, buf);
                    p.fetch_add(
                        t.elapsed().as_nanos() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            }
        }
    })
    .await
}

/// A chain of `n` tasks on `place`; microseconds per task. With `cpu_after`, each task of
/// the chain has an empty CPU task after it, and the time runs until those finished too.
async fn chain_on<F>(place: Placement, n: usize, cpu_after: bool, body: impl Fn() -> F) -> f64
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let t = Instant::now();
    let mut prev: Option<TaskHandle<()>> = None;
    let mut after = Vec::with_capacity(if cpu_after { n } else { 0 });
    for _ in 0..n {
        let mut b = task(body()).placement(place);
        if let Some(p) = &prev {
            b = b.after(p);
        }
        let h = b.spawn();
        if cpu_after {
            after.push(task(async {}).placement(Placement::Cpu).after(&h).spawn());
        }
        prev = Some(h);
    }
    prev.expect("chain").await.expect("chain");
    for h in after {
        h.await.expect("CPU task after the chain's");
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// The number of chain pairs `--pairs N` asks for (at least 1).
fn pairs_wanted() -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--pairs")?;
    match args.get(at + 1).and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if n > 0 => Some(n),
        _ => {
            eprintln!("--pairs takes a positive number of pairs");
            std::process::exit(2);
        }
    }
}

/// `n` pairs of timings `(parla, raw)` from `pair`, after one pair of warm-up: the median
/// of each side and the median of the pairs' own ratios.
fn pairs(n: usize, mut pair: impl FnMut() -> (f64, f64)) -> (f64, f64, f64) {
    pair();
    let (p, r): (Vec<f64>, Vec<f64>) = (0..n).map(|_| pair()).unzip();
    let paired = median(p.iter().zip(&r).map(|(p, r)| p / r).collect());
    (median(p), median(r), paired)
}

/// Times `n` calls of `f` after 100 warm-up calls.
fn samples(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        f();
        if i >= 100 {
            v.push(t.elapsed());
        }
    }
    v
}

/// Times `n` runs of `f` after `warm` warm-up runs: `samples` for futures.
async fn samples_async<F>(n: usize, warm: usize, mut f: impl FnMut() -> F) -> Vec<Duration>
where
    F: std::future::Future<Output = ()>,
{
    let mut v = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t = Instant::now();
        f().await;
        if i >= warm {
            v.push(t.elapsed());
        }
    }
    v
}

/// How a row launches its kernel.
type Launch = fn(&CudaStream, &CudaFunction);

/// Raw: `launch` on `stream`, record `ev`, `cuEventSynchronize`; median and p99 (us).
fn raw_waits(
    n: usize,
    stream: &CudaStream,
    ev: &parla::gpu::cudarc::driver::CudaEvent,
    f: &CudaFunction,
    launch: Launch,
) -> (f64, f64) {
    stats(samples(n, || {
        launch(stream, f);
        ev.record(stream).expect("record");
        ev.synchronize().expect("sync");
    }))
}

/// parla, inside one GPU task: `launch` the task's copy of `kernel`, then
/// `gpu.synchronize().await`; median and p99 (us) of `n` after `warm`.
fn waits_in_task(
    rt: &parla::Runtime,
    n: usize,
    warm: usize,
    kernel: &'static str,
    launch: Launch,
) -> (f64, f64) {
    rt.block_on(async move {
        task(async move {
            let g = parla::gpu::current().expect("GPU task");
            let f = g.kernel(KERNELS, kernel).expect("kernel");
            let (g, f) = (&g, &f);
            let v = samples_async(n, warm, || async move {
                launch(g.stream(), f);
                g.synchronize().await.expect("sync");
            })
            .await;
            stats(v)
        })
        .placement(Placement::Gpu(0))
        .await
    })
    .expect("GPU task")
}

/// parla: spawn a GPU task that `launch`es `kernel`, and await it, from `block_on` or (with
/// `in_task`) from a CPU task; median and p99 (us) of `n` after `warm`.
fn round_trips(
    rt: &parla::Runtime,
    n: usize,
    warm: usize,
    kernel: &'static str,
    launch: Launch,
    in_task: bool,
) -> (f64, f64) {
    let trips = async move {
        let v = samples_async(n, warm, || async move {
            task(async move {
                let g = parla::gpu::current().expect("GPU task");
                let f = g.kernel(KERNELS, kernel).expect("kernel");
                launch(g.stream(), &f);
            })
            .placement(Placement::Gpu(0))
            .await
            .expect("task");
        })
        .await;
        stats(v)
    };
    rt.block_on(async move {
        if in_task {
            task(trips).await.expect("CPU task")
        } else {
            trips.await
        }
    })
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let med = us(v[v.len() / 2]);
    let p99 = us(v[(v.len() * 99 / 100).min(v.len() - 1)]);
    (med, p99)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The latency rows (1): medians and p99s in microseconds.
struct Latency {
    raw: (f64, f64),
    raw_query: (f64, f64),
    parla: (f64, f64),
    raw_spin: (f64, f64),
    woken_in_task: (f64, f64),
    woken_round_trip: (f64, f64),
    round_trip: (f64, f64),
    round_trip_task: (f64, f64),
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // The chain rows alone (2 and 2b), for profiling them.
    let chain_only = std::env::args().any(|a| a == "--chain");
    let (lat_n, reps) = if quick { (300, 3) } else { (3000, 7) };
    let chain_pairs = pairs_wanted();
    let rt = parla::Runtime::builder().build().expect("runtime");
    if !rt.has_real_gpus() {
        println!("benches/gpu needs a CUDA GPU; none found.");
        return;
    }
    let card = rt.describe_devices()[1].clone();

    // Raw cudarc: its own context handle, stream and module on device 0.
    let ctx = CudaContext::new(0).expect("context");
    let stream = ctx.new_stream().expect("stream");
    let module = ctx
        .load_module(parla::gpu::cudarc::nvrtc::compile_ptx(KERNELS).expect("nvrtc"))
        .expect("module");
    let empty = module.load_function("empty").expect("empty");
    let tiny = module.load_function("tiny").expect("tiny");

    // 0. What single driver calls cost here (context for the other figures).
    let calls = {
        let n = 20_000;
        let ev = ctx.new_event(None).expect("event");
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        };
        let get_current = time(&mut || {
            let _ = parla::gpu::cudarc::driver::result::ctx::get_current();
        });
        let record = time(&mut || ev.record(&stream).expect("record"));
        stream.synchronize().expect("sync");
        let query = time(&mut || {
            let _ = ev.try_is_complete();
        });
        let launch = time(&mut || launch_empty(&stream, &empty));
        stream.synchronize().expect("sync");
        let create = time(&mut || drop(ctx.new_event(None).expect("event")));
        (get_current, record, query, launch, create)
    };

    // 1. Latency.
    let latency = (!chain_only).then(|| {
        let ev = ctx.new_event(None).expect("event");
        let raw_lat = raw_waits(lat_n, &stream, &ev, &empty, launch_empty);
        let raw_query_lat = stats(samples(lat_n, || {
            launch_empty(&stream, &empty);
            ev.record(&stream).expect("record");
            while !ev.try_is_complete().expect("query") {
                std::hint::spin_loop();
            }
        }));
        let parla_lat = waits_in_task(&rt, lat_n, 100, "empty", launch_empty);
        // 1b. The path from a finished event to a woken awaiter: the kernel outlasts the
        //     awaiter's spin, so the fence poller wakes it.
        let spin = module.load_function("spin").expect("spin");
        let spin_n = lat_n / 10;
        let raw_spin = raw_waits(spin_n, &stream, &ev, &spin, launch_spin);
        let woken_in_task = waits_in_task(&rt, spin_n, 10, "spin", launch_spin);
        let woken_round_trip = round_trips(&rt, spin_n, 10, "spin", launch_spin, false);
        let round_trip = round_trips(&rt, lat_n / 3, 30, "empty", launch_empty, false);
        let round_trip_task = round_trips(&rt, lat_n / 3, 30, "empty", launch_empty, true);
        Latency {
            raw: raw_lat,
            raw_query: raw_query_lat,
            parla: parla_lat,
            raw_spin,
            woken_in_task,
            woken_round_trip,
            round_trip,
            round_trip_task,
        }
    });

    // 2. Chain of 1,000 tiny kernels.
    let mut x = stream.alloc_zeros::<u32>(1).expect("alloc");
    let shared: Arc<parking_lot::Mutex<Option<CudaSlice<u32>>>> =
        Arc::new(parking_lot::Mutex::new(None));
    // Time spent launching inside the parla tasks (ns, in separate chains), to tell the
    // launch itself from the runtime's work around it.
    let in_launch = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // More pairs than the other rows take (a pair takes about 10 ms): the launch loop's own
    // speed moves by a third from one call to the next here, and the ratio of adjacent
    // pairs follows the drift that the ratio of the two medians does not.
    let chain_reps = chain_pairs.unwrap_or(2 * reps + 1);
    let (parla_chain_med, raw_chain_med, paired_chain) = pairs(chain_reps, || {
        let raw = raw_launch_loop(&stream, &tiny, &mut x);
        (
            rt.block_on(kernel_chain(CHAIN, shared.clone(), None, false)),
            raw,
        )
    });
    // The launch alone, timed inside each task of separate chains (the clock reads would
    // add to the chain timed above).
    for _ in 0..reps {
        rt.block_on(kernel_chain(
            CHAIN,
            shared.clone(),
            Some(in_launch.clone()),
            false,
        ));
    }
    let launch_in_tasks =
        in_launch.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e3 / (reps * CHAIN) as f64;
    // 2c. The chain with a CPU task after each GPU task: somebody waits on every fence.
    let with_cpu = pairs(chain_reps, || {
        let raw = raw_launch_loop(&stream, &tiny, &mut x);
        (
            rt.block_on(kernel_chain(CHAIN, shared.clone(), None, true)),
            raw,
        )
    });
    // 2a. The same pairs from one thread: a runtime with one worker runs the chain, and the
    //     raw loop inside a CPU task, on that worker. The raw loop above runs on the main
    //     thread and the chain on whichever worker takes it, on another core; how fast a
    //     core launches differs by up to a third here, which the pairs above do not see.
    let rt1 = parla::Runtime::builder()
        .cpu_threads(1)
        .build()
        .expect("runtime");
    let shared1: Arc<parking_lot::Mutex<Option<CudaSlice<u32>>>> =
        Arc::new(parking_lot::Mutex::new(None));
    let x1 = Arc::new(parking_lot::Mutex::new(
        stream.alloc_zeros::<u32>(1).expect("alloc"),
    ));
    let one_thread = pairs(chain_reps, || {
        let (s, f, x1) = (stream.clone(), tiny.clone(), x1.clone());
        let raw = rt1
            .block_on(
                task(async move { raw_launch_loop(&s, &f, &mut x1.lock()) })
                    .placement(Placement::Cpu),
            )
            .expect("raw loop in a task");
        (
            rt1.block_on(kernel_chain(CHAIN, shared1.clone(), None, false)),
            raw,
        )
    });

    // 2b. What the chain costs without kernels (parla only), and the raw loop with one event
    //     recorded per launch (what a fence per task costs in the raw loop).
    let mut empty_chain = Vec::new();
    let mut cpu_chain = Vec::new();
    let mut empty_chain_2 = Vec::new();
    let rt2 = parla::Runtime::builder()
        .cpu_threads(2)
        .build()
        .expect("runtime");
    let mut raw_record_chain = Vec::new();
    let ev = ctx.new_event(None).expect("event");
    for _ in 0..reps + 1 {
        let t = Instant::now();
        for _ in 0..CHAIN {
            launch_tiny(&stream, &tiny, &mut x);
            ev.record(&stream).expect("record");
        }
        stream.synchronize().expect("sync");
        raw_record_chain.push(t.elapsed().as_secs_f64() * 1e6 / CHAIN as f64);
        let us = rt.block_on(gpu_chain(CHAIN, || async {}));
        empty_chain.push(us);
        cpu_chain.push(rt.block_on(chain_on(Placement::Cpu, CHAIN, false, || async {})));
        empty_chain_2.push(rt2.block_on(gpu_chain(CHAIN, || async {})));
    }
    empty_chain.remove(0);
    cpu_chain.remove(0);
    empty_chain_2.remove(0);
    raw_record_chain.remove(0);

    // 3. 10,000 independent tiny tasks against round-robin launches over 8 streams.
    let independent = (!chain_only).then(|| {
        const INDEP: usize = 10_000;
        let streams: Vec<Arc<CudaStream>> =
            (0..8).map(|_| ctx.new_stream().expect("stream")).collect();
        let mut raw_indep = Vec::new();
        let mut parla_indep = Vec::new();
        for _ in 0..reps + 1 {
            let t = Instant::now();
            for i in 0..INDEP {
                launch_empty(&streams[i % streams.len()], &empty);
            }
            for s in &streams {
                s.synchronize().expect("sync");
            }
            raw_indep.push(t.elapsed().as_secs_f64() * 1e6 / INDEP as f64);

            let us = rt.block_on(async move {
                let t = Instant::now();
                let hs: Vec<_> = (0..INDEP)
                    .map(|_| {
                        task(async {
                            let g = parla::gpu::current().expect("GPU task");
                            let f = g.kernel(KERNELS, "empty").expect("kernel");
                            launch_empty(g.stream(), &f);
                        })
                        .placement(Placement::Gpu(0))
                        .spawn()
                    })
                    .collect();
                for h in hs {
                    h.await.expect("task");
                }
                t.elapsed().as_secs_f64() * 1e6 / INDEP as f64
            });
            parla_indep.push(us);
        }
        raw_indep.remove(0);
        parla_indep.remove(0);
        (median(parla_indep), median(raw_indep))
    });

    println!("\nGPU benchmark on {card}");
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "measure", "parla (us)", "raw (us)", "ratio"
    );
    // A row whose ratio is given (not parla / raw of the medians shown).
    let row_with = |name: &str, p: f64, r: f64, ratio: f64| {
        println!("{name:<44} {p:>12.2} {r:>12.2} {ratio:>8.2}");
    };
    let row = |name: &str, p: f64, r: f64| row_with(name, p, r, p / r);
    // A measure's median and p99 rows.
    let rows = |name: &str, p: (f64, f64), r: (f64, f64)| {
        row(&format!("{name}, median"), p.0, r.0);
        row(&format!("{name}, p99"), p.1, r.1);
    };
    if let Some(l) = &latency {
        rows("latency: empty kernel + wait", l.parla, l.raw);
        row(
            "  raw spinning on cuEventQuery instead, median",
            l.raw_query.0,
            l.raw.0,
        );
        rows("round trip: spawn GPU task + await", l.round_trip, l.raw);
        rows("  from a CPU task", l.round_trip_task, l.raw);
        rows(
            "woken by the poller: 300 us kernel + wait",
            l.woken_in_task,
            l.raw_spin,
        );
        rows(
            "  spawn GPU task + await from block_on",
            l.woken_round_trip,
            l.raw_spin,
        );
    }
    row(
        "chain of 1,000 tiny kernels, per kernel",
        parla_chain_med,
        raw_chain_med,
    );
    row_with(
        &format!("  median ratio of the {chain_reps} adjacent pairs"),
        parla_chain_med,
        raw_chain_med,
        paired_chain,
    );
    row_with(
        "  1 worker, against the loop in a task there",
        one_thread.0,
        one_thread.1,
        one_thread.2,
    );
    row_with(
        "  a CPU task after each, by pairs",
        with_cpu.0,
        with_cpu.1,
        with_cpu.2,
    );
    row(
        "  the launch alone, timed inside each task",
        launch_in_tasks,
        raw_chain_med,
    );
    row(
        "  chain of 1,000 GPU tasks, no kernels, per task",
        median(empty_chain),
        raw_chain_med,
    );
    row(
        "  chain of GPU tasks, no kernels, 2 workers",
        median(empty_chain_2),
        raw_chain_med,
    );
    row(
        "  chain of 1,000 CPU tasks (reference)",
        median(cpu_chain),
        raw_chain_med,
    );
    row(
        "  raw chain with an event recorded per launch",
        median(raw_record_chain),
        raw_chain_med,
    );
    if let Some((parla_indep, raw_indep)) = independent {
        row(
            "10,000 independent GPU tasks, per task",
            parla_indep,
            raw_indep,
        );
    }
    println!(
        "(raw: cuEventSynchronize after each launch; one stream launch loop; 8-stream round robin)"
    );
    println!(
        "driver calls, us each: cuCtxGetCurrent {:.3}, record event {:.3}, query event {:.3}, launch empty kernel {:.3}, create+destroy event {:.3}",
        calls.0, calls.1, calls.2, calls.3, calls.4
    );
}
