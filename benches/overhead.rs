//! Per-task overhead of parla-rs against plain Tokio, and memory per pending task.
//!
//! Graphs of empty tasks (and one of busy ones) are built and run by parla-rs and by plain
//! Tokio in the same process, the implementations alternating round by round (1 warm-up and
//! 5 timed rounds by default):
//!
//! - `independent`: 100,000 tasks, no dependencies;
//! - `chain`: 100,000 tasks, each after the previous;
//! - `reduction`: a binary tree with 65,536 leaves (131,071 tasks), each inner node after its
//!   two children;
//! - `wavefront`: a 300 x 300 grid, task (i, j) after (i-1, j) and (i, j-1); parla names the
//!   tasks in a `TaskSpace` (`t.at((i, j))`), so this also measures task spaces;
//! - `wavefront-h`: the same grid, parla's dependencies given as `&TaskHandle`s;
//! - `wavefront-rows`: the grid with ids, each row spawned by a task of its own (300 tasks
//!   naming ids in one space on all workers at once; they are not counted as grid tasks);
//! - `fork-join`: a binary tree of depth 17 (262,143 tasks) where every inner task spawns its
//!   two children and awaits them (default VCUs: the parents lend theirs while they wait);
//! - `round-trip`: 10,000 tasks spawned from `block_on` one at a time, each awaited before
//!   the next is spawned: the latency from a spawn outside the workers to the awaiter woken;
//! - `busy`: 50,000 independent tasks that each work 5 us (a spin on the clock), spawned at
//!   once: more tasks are ready than the workers run, so with default VCUs most of them
//!   wait for admission, and every task that finishes admits the next (the path of a
//!   device kept full).
//! - `waves`: 200 rounds of one task per worker thread that works 1 ms (a spin on the clock),
//!   spawned at once from `block_on` and all awaited before the next round: whether each
//!   wave's tasks run side by side, one per worker, or some wait behind others (the ideal
//!   is a ratio of 1.0: the work, not the runtime, takes the time).
//! - `steps`: 10,000 steps of 8 empty tasks named `t.at((step, k))` in one space for the
//!   whole run, each step awaited through the whole space (`(&t).await`, the barrier of a
//!   Parla program) before the next is spawned, never retired: whether a wait on a space
//!   costs what is in flight, not every id named so far.
//! - `from-tokio`: 50,000 futures `tokio::spawn`ed from `block_on` at once, each spawning
//!   a parla task and awaiting it (a Tokio application's handlers calling into parla), then
//!   all awaited: whether the runtime's drivers leave Tokio's workers to Tokio's work (with
//!   one worker, `--threads 1`, each future waited for a driver's whole linger).
//! - `channels`: 200,000 messages between pairs of tasks that ping-pong over two unbounded
//!   `tokio::sync::mpsc` channels, three pairs per worker thread: more tasks want to run
//!   than the CPU admits with default VCUs, so every message wakes a task that lent its
//!   VCUs while it waited (the figures are per message, not per task).
//! - `waiting`: 200,000 tasks spawned from `block_on` at once, each waiting on a
//!   `tokio::sync::oneshot` that is sent once all are spawned, then all awaited: more tasks
//!   than the CPU admits at once wait outside the runtime, keeping their VCUs until a spawn
//!   waits for them (each spawn looked at every task waiting so far: quadratic).
//! - `block-on`: 100,000 calls of `rt.block_on(async {})` one after the other (a program
//!   entering the runtime for each request or step; the figures are per call).
//! - `abort`: 100,000 empty tasks spawned from `block_on` at once while a task per worker
//!   thread spins (holding every worker and, with default VCUs, the whole CPU), so that all
//!   wait; then each aborted, every seventh round and round (from the front, the middle and
//!   the back of what waits), the spinners let go, and each awaited (it fails as aborted).
//!   Timed from the first abort to the last await.
//!
//! parla-rs is used as a user would: `task(async {}).spawn()`, `.after(&handle)`,
//! `.after([t.at((i - 1, j)), t.at((i, j - 1))])`, default VCUs, inside `Runtime::block_on`. The Tokio baseline is the faster (by
//! median) of two honest ways to write each graph in plain Tokio, on a multi-thread runtime
//! with the same number of worker threads:
//!
//! - (a) every task `tokio::spawn`ed up front, awaiting its predecessors' `JoinHandle`s. A
//!   `JoinHandle` has one consumer, which suffices for the chain and the tree (each node has
//!   one successor). In the grid a node has two successors: its `JoinHandle` goes to its right
//!   neighbour, and a `tokio::sync::oneshot` channel (one consumer as well) signals the node
//!   below.
//! - (b) a per-node atomic count of unfinished predecessors: the sources are spawned up front
//!   and a finishing task spawns each successor whose count it brought to zero.
//!
//! Time runs from just before the first spawn until the sink completed (`independent`: until
//! every task completed; for parla this is when `block_on` returns, measured outside it, so it
//! includes `block_on`'s final wait), and is reported per task (median and minimum of the
//! timed rounds).
//!
//! For `fork-join` the Tokio baselines are the same tree with `tokio::spawn`: (a) awaiting
//! the two `JoinHandle`s one after the other, (b) with `tokio::join!`. For `round-trip`:
//! `tokio::spawn` from `block_on`, (a) awaiting the `JoinHandle`, (b) awaiting a `oneshot`
//! the task sends on. For `busy`: those of `independent`, each task doing the same work. For
//! `waves`: `tokio::spawn` of the same tasks, awaiting (a) each wave's `JoinHandle`s in
//! order, (b) a `JoinSet` of them; for `steps`, the same of each step's tasks. For
//! `from-tokio`: the same futures, each awaiting a task it gives `tokio::spawn`, (a) by its
//! `JoinHandle`, (b) by a `oneshot` the task sends on. For
//! `wavefront-rows`: those of the grid. For `channels`: the same pairs with `tokio::spawn`,
//! over (a) bounded channels of one message, (b) the same unbounded channels as parla's.
//! For `waiting`: the same with `tokio::spawn`, awaiting (a) each `JoinHandle`, (b) a
//! `oneshot` each task sends its value on. For `block-on`: (a) `Runtime::block_on`, (b)
//! `Handle::block_on`, of the same empty future. For `abort`: the same with `tokio::spawn`,
//! (a) each task's `JoinHandle` aborted in the same order and awaited, (b) the tasks in a
//! `JoinSet`, `abort_all` and then `join_next` to the end.
//! (The channel's own work is about two thirds of a message's instructions in Tokio, and the
//! bounded one's semaphore adds about 290 per message: parla's pairs use the channel of the
//! faster baseline, so that the ratio compares the runtimes.)
//!
//! Service: 10,000,000 parla tasks named in one task space (`t.at(i)`, chains of 8), in
//! batches of 100,000, each batch awaited and then retired (`TaskSpace::retire_finished`); the
//! counting allocator gives the bytes still allocated after each batch, which must stay flat.
//!
//! Memory: 1,000,000 parla tasks are spawned `.after(&gate)`, where the gate task waits on a
//! `oneshot` that is only sent after all are spawned, so they are all pending at once. A
//! counting global allocator gives the bytes allocated per pending task (target: <= 250), the
//! spawn time per task, and the bytes still allocated (net) once all of them ran. It runs in a
//! runtime of its own, so that finished tasks the graphs before left for reuse are not freed
//! during the count. Then the same count with ids: 1,000,000 tasks named `t.at(i)` in one
//! space, each after `t.at(i - 1)` (`t.at(0)` after the gate), spawned from the first id up
//! (`forward`) and from the last down (`reverse`: every dependency a forward reference),
//! against DESIGN.md's bound of a million pending tasks in under 500 MB.
//!
//! ```sh
//! cargo bench --bench overhead                       # everything, default sizes
//! cargo bench --bench overhead -- --runs 1 --warmup 0 --scale 0.01   # a quick check
//! cargo bench --bench overhead -- --graph chain --threads 4
//! valgrind --tool=callgrind target/release/deps/overhead-<hash> --only parla --graph chain --scale 0.1
//! benches/callgrind.sh            # instructions per task, parla and both Tokio ways, every graph
//! ```
//!
//! Options: `--scale F` (multiplies the task counts; the grid's side by `sqrt(F)`), `--runs N`
//! (timed rounds, default 5), `--warmup N` (default 1), `--threads N` (worker threads of both
//! runtimes, default the machine's available parallelism), `--graph NAME` (one of the graphs
//! above or `memory`), `--only parla|tokio-a|tokio-b` (that implementation alone, a single
//! pass, printing the wall time per task: for profilers; `--passes N` makes it N passes, the
//! last one printed, so that a sampling profiler sees mostly warm ones). Unknown arguments (such as the
//! `--bench` that `cargo bench` adds) are ignored.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parla::prelude::*;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

/// `System`, counting the net bytes allocated while [`COUNTING`] is on.
///
/// Counting is switched on only around the memory measurement: a counter updated on every
/// allocation by every thread would be a contended cache line taxing the timed graphs (parla
/// and Tokio alike). The net change between two instants is exact either way: it is the sum of
/// the allocations minus the deallocations made in between, whenever the freed blocks were
/// allocated.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static NET_BYTES: AtomicIsize = AtomicIsize::new(0);

impl CountingAlloc {
    #[inline]
    fn count(delta: isize) {
        if COUNTING.load(Ordering::Relaxed) {
            NET_BYTES.fetch_add(delta, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`, so the allocator keeps
// `System`'s guarantees; the counting only touches atomics and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `GlobalAlloc::alloc`'s contract, which is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, hence by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        Self::count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` with `layout`; our caller upholds the rest of
        // `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Starts counting from zero.
fn start_counting() {
    NET_BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
}

/// Net bytes allocated since [`start_counting`].
fn counted_bytes() -> isize {
    NET_BYTES.load(Ordering::Relaxed)
}

fn stop_counting() {
    COUNTING.store(false, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// Options and graphs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Graph {
    Independent,
    Chain,
    Reduction,
    Wavefront,
    WavefrontH,
    WavefrontRows,
    ForkJoin,
    RoundTrip,
    Busy,
    Waves,
    Steps,
    FromTokio,
    Channels,
    Waiting,
    BlockOn,
    Abort,
}

impl Graph {
    const ALL: [Graph; 16] = [
        Graph::Independent,
        Graph::Chain,
        Graph::Reduction,
        Graph::Wavefront,
        Graph::WavefrontH,
        Graph::WavefrontRows,
        Graph::ForkJoin,
        Graph::RoundTrip,
        Graph::Busy,
        Graph::Waves,
        Graph::Steps,
        Graph::FromTokio,
        Graph::Channels,
        Graph::Waiting,
        Graph::BlockOn,
        Graph::Abort,
    ];

    fn name(self) -> &'static str {
        match self {
            Graph::Independent => "independent",
            Graph::Chain => "chain",
            Graph::Reduction => "reduction",
            Graph::Wavefront => "wavefront",
            Graph::WavefrontH => "wavefront-h",
            Graph::WavefrontRows => "wavefront-rows",
            Graph::ForkJoin => "fork-join",
            Graph::RoundTrip => "round-trip",
            Graph::Busy => "busy",
            Graph::Waves => "waves",
            Graph::Steps => "steps",
            Graph::FromTokio => "from-tokio",
            Graph::Channels => "channels",
            Graph::Waiting => "waiting",
            Graph::BlockOn => "block-on",
            Graph::Abort => "abort",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imp {
    Parla,
    TokioA,
    TokioB,
}

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Parla => "parla",
            Imp::TokioA => "tokio-a",
            Imp::TokioB => "tokio-b",
        }
    }
}

/// Graph sizes after `--scale`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Tasks of `independent` and of `chain`.
    flat: usize,
    /// Leaves of the reduction tree.
    leaves: usize,
    /// Side of the wavefront grid.
    side: usize,
    /// Depth of the fork-join tree (`2^(depth+1) - 1` tasks).
    depth: u32,
    /// Round trips from `block_on`.
    trips: usize,
    /// Tasks of `busy`.
    busy: usize,
    /// Rounds of `waves`.
    waves: usize,
    /// Tasks of each wave: one per worker thread.
    width: usize,
    /// Steps of `steps`.
    steps: usize,
    /// Futures of `from-tokio`.
    futures: usize,
    /// Messages of `channels`.
    messages: usize,
    /// Ping-pong pairs of `channels`.
    pairs: usize,
    /// Tasks of `waiting`.
    waiting: usize,
    /// `block_on` calls of `block-on`.
    calls: usize,
    /// Tasks of `abort`.
    aborted: usize,
    /// Pending tasks in the memory measurement.
    memory: usize,
    /// Batches of the service measurement.
    batches: usize,
}

impl Sizes {
    fn new(scale: f64) -> Sizes {
        let scaled = |n: f64| ((n * scale).round() as usize).max(1);
        Sizes {
            flat: scaled(100_000.0),
            leaves: scaled(65_536.0),
            side: ((300.0 * scale.sqrt()).round() as usize).max(1),
            depth: (17.0 + scale.log2()).round().max(1.0) as u32,
            trips: scaled(10_000.0),
            busy: scaled(50_000.0),
            waves: scaled(200.0),
            width: 1,
            steps: scaled(10_000.0),
            futures: scaled(50_000.0),
            messages: scaled(200_000.0),
            pairs: 0,
            waiting: scaled(200_000.0),
            calls: scaled(100_000.0),
            aborted: scaled(100_000.0),
            memory: scaled(1_000_000.0),
            batches: scaled(100.0),
        }
    }

    /// Round trips per pair of `channels`.
    fn rounds(&self) -> usize {
        (self.messages / (2 * self.pairs)).max(1)
    }

    fn tasks(&self, g: Graph) -> usize {
        match g {
            Graph::Independent | Graph::Chain => self.flat,
            Graph::Reduction => 2 * self.leaves - 1,
            Graph::Wavefront | Graph::WavefrontH | Graph::WavefrontRows => self.side * self.side,
            Graph::ForkJoin => (1 << (self.depth + 1)) - 1,
            Graph::RoundTrip => self.trips,
            Graph::Busy => self.busy,
            Graph::Waves => self.waves * self.width,
            Graph::Steps => self.steps * STEP,
            Graph::FromTokio => self.futures,
            Graph::Channels => self.rounds() * 2 * self.pairs,
            Graph::Waiting => self.waiting,
            Graph::BlockOn => self.calls,
            Graph::Abort => self.aborted,
        }
    }
}

#[derive(Debug)]
struct Options {
    scale: f64,
    runs: usize,
    warmup: usize,
    threads: usize,
    /// `None`: every graph and the memory measurement.
    graph: Option<String>,
    only: Option<Imp>,
    /// Passes of `--only`'s implementation (a profiler then sees mostly warm ones).
    passes: usize,
}

fn parse_options() -> Options {
    fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
        match v.as_deref().map(str::parse) {
            Some(Ok(x)) => x,
            _ => fail(&format!("{flag} needs a valid value")),
        }
    }
    let mut o = Options {
        scale: 1.0,
        runs: 5,
        warmup: 1,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        graph: None,
        only: None,
        passes: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scale" => o.scale = value(&a, args.next()),
            "--runs" => o.runs = value(&a, args.next()),
            "--warmup" => o.warmup = value(&a, args.next()),
            "--threads" => o.threads = value(&a, args.next()),
            "--passes" => o.passes = value(&a, args.next()),
            "--graph" => o.graph = Some(value(&a, args.next())),
            "--only" => {
                let v: String = value(&a, args.next());
                o.only = Some(match v.as_str() {
                    "parla" => Imp::Parla,
                    "tokio-a" => Imp::TokioA,
                    "tokio-b" => Imp::TokioB,
                    _ => fail("--only takes parla, tokio-a or tokio-b"),
                });
            }
            _ => {} // `--bench` from cargo, and anything else we do not know
        }
    }
    if !(o.scale > 0.0 && o.scale.is_finite()) {
        fail("--scale must be positive");
    }
    if o.runs == 0 || o.threads == 0 || o.passes == 0 {
        fail("--runs, --threads and --passes must be at least 1");
    }
    if let Some(g) = &o.graph
        && g != "memory"
        && g != "service"
        && !Graph::ALL.iter().any(|x| x.name() == g)
    {
        fail(
            "--graph takes independent, chain, reduction, wavefront, wavefront-h, wavefront-rows, fork-join, round-trip, busy, waves, steps, from-tokio, channels, waiting, block-on, abort, service or memory",
        );
    }
    o
}

fn fail(msg: &str) -> ! {
    eprintln!("overhead: {msg}");
    std::process::exit(2)
}

// ---------------------------------------------------------------------------------------------
// parla-rs
// ---------------------------------------------------------------------------------------------

fn parla_independent(rt: &Runtime, n: usize) -> Duration {
    let start = rt.block_on(async move {
        let start = Instant::now();
        for _ in 0..n {
            task(async {}).spawn(); // the handle is dropped: the task runs on, detached
        }
        start
    });
    // `block_on` returns once every task spawned in it finished.
    start.elapsed()
}

/// Works for `d`: a spin on the clock (the work of the tasks of `busy` and `waves`).
fn spin_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// What each task of `busy` does: [`BUSY`] of work.
fn busy_work() {
    spin_for(BUSY);
}

/// The work of each task of `busy`.
const BUSY: Duration = Duration::from_micros(5);

fn parla_busy(rt: &Runtime, n: usize) -> Duration {
    let start = rt.block_on(async move {
        let start = Instant::now();
        for _ in 0..n {
            task(async { busy_work() }).spawn();
        }
        start
    });
    start.elapsed()
}

/// The work of each task of `waves`.
const WAVE: Duration = Duration::from_millis(1);

/// `rounds` waves of `width` tasks doing [`WAVE`] of work, each wave awaited before the
/// next.
fn parla_waves(rt: &Runtime, rounds: usize, width: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        for _ in 0..rounds {
            let wave: Vec<TaskHandle<()>> = (0..width)
                .map(|_| task(async { spin_for(WAVE) }).spawn())
                .collect();
            for h in wave {
                h.await.expect("wave task failed");
            }
        }
        start.elapsed()
    })
}

/// Tasks of each step of `steps`.
const STEP: usize = 8;

/// `steps` steps of [`STEP`] empty tasks named `(step, k)` in one space, each step awaited
/// through the whole space before the next.
fn parla_steps(rt: &Runtime, steps: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let t = TaskSpace::new("S");
        for step in 0..steps {
            for k in 0..STEP {
                task(async {}).id(t.at((step, k))).spawn();
            }
            (&t).await.expect("step task failed");
        }
        start.elapsed()
    })
}

/// `n` futures given `tokio::spawn` from `block_on`, each awaiting a parla task it spawns.
fn parla_from_tokio(rt: &Runtime, n: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let futures: Vec<JoinHandle<usize>> = (0..n)
            .map(|i| {
                tokio::spawn(async move { task(async move { i }).await.expect("task failed") })
            })
            .collect();
        for f in futures {
            f.await.expect("future failed");
        }
        start.elapsed()
    })
}

/// [`parla_from_tokio`] in plain Tokio: each future awaits a task it gives `tokio::spawn`,
/// by its `JoinHandle` (a), or by a `oneshot` the task sends on (b).
fn tokio_from_tokio(rt: &tokio::runtime::Runtime, n: usize, oneshot: bool) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let futures: Vec<JoinHandle<usize>> = (0..n)
            .map(|i| {
                tokio::spawn(async move {
                    if oneshot {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        tokio::spawn(async move {
                            let _ = tx.send(i);
                        });
                        rx.await.expect("sent")
                    } else {
                        tokio::spawn(async move { i }).await.expect("task failed")
                    }
                })
            })
            .collect();
        for f in futures {
            f.await.expect("future failed");
        }
        start.elapsed()
    })
}

/// [`parla_waves`] with `tokio::spawn`: each wave's `JoinHandle`s awaited in order (a), or
/// a `JoinSet` (b).
fn tokio_waves(
    rt: &tokio::runtime::Runtime,
    rounds: usize,
    width: usize,
    join_set: bool,
) -> Duration {
    tokio_rounds(rt, rounds, width, join_set, || spin_for(WAVE))
}

/// `rounds` rounds of `width` tasks doing `work` with `tokio::spawn`, each round awaited
/// before the next: its `JoinHandle`s in order (a), or a `JoinSet` (b). The baselines of
/// `waves` and of `steps`.
fn tokio_rounds(
    rt: &tokio::runtime::Runtime,
    rounds: usize,
    width: usize,
    join_set: bool,
    work: impl Fn() + Copy + Send + 'static,
) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        for _ in 0..rounds {
            if join_set {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..width {
                    set.spawn(async move { work() });
                }
                while let Some(r) = set.join_next().await {
                    r.expect("round task failed");
                }
            } else {
                let wave: Vec<JoinHandle<()>> = (0..width)
                    .map(|_| tokio::spawn(async move { work() }))
                    .collect();
                for h in wave {
                    h.await.expect("round task failed");
                }
            }
        }
        start.elapsed()
    })
}

/// `pairs` pairs of parla tasks (default VCUs), each sending `rounds` messages to the other
/// and awaiting each reply.
fn parla_channels(rt: &Runtime, pairs: usize, rounds: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let mut hs = Vec::with_capacity(2 * pairs);
        for _ in 0..pairs {
            let (to_b, mut b_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
            let (to_a, mut a_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
            hs.push(
                task(async move {
                    for i in 0..rounds {
                        to_b.send(i).expect("channel closed");
                        a_rx.recv().await.expect("channel closed");
                    }
                })
                .spawn(),
            );
            hs.push(
                task(async move {
                    while let Some(i) = b_rx.recv().await {
                        to_a.send(i).expect("channel closed");
                    }
                })
                .spawn(),
            );
        }
        for h in hs {
            h.await.expect("channel task failed");
        }
        start.elapsed()
    })
}

fn parla_chain(rt: &Runtime, n: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let mut prev = task(async {}).spawn();
        for _ in 1..n {
            prev = task(async {}).after(&prev).spawn();
        }
        prev.await.expect("chain task failed");
        start.elapsed()
    })
}

/// The tree in heap layout: node `k < leaves - 1` is after nodes `2k + 1` and `2k + 2`; the
/// root 0 is the sink. Spawned from the leaves up.
fn parla_reduction(rt: &Runtime, leaves: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let n = 2 * leaves - 1;
        let mut h: Vec<Option<TaskHandle<()>>> = (0..n).map(|_| None).collect();
        for k in (0..n).rev() {
            let t = if k >= leaves - 1 {
                task(async {}).spawn()
            } else {
                let (l, r) = (h[2 * k + 1].take(), h[2 * k + 2].take());
                task(async {}).after([l.as_ref(), r.as_ref()]).spawn()
            };
            h[k] = Some(t);
        }
        let root = h[0].take().expect("root spawned");
        root.await.expect("reduction task failed");
        start.elapsed()
    })
}

/// Spawns task (i, j) of the grid with ids: after `t.at((i-1, j))` and `t.at((i, j-1))`.
fn spawn_tile(t: &TaskSpace, i: usize, j: usize) -> TaskHandle<()> {
    let up = (i > 0).then(|| t.at((i - 1, j)));
    let left = (j > 0).then(|| t.at((i, j - 1)));
    task(async {}).id(t.at((i, j))).after([up, left]).spawn()
}

/// The grid with ids in a task space, spawned from `block_on` ([`spawn_tile`]).
fn parla_wavefront(rt: &Runtime, side: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let t = TaskSpace::new("W");
        let mut last = None;
        for i in 0..side {
            for j in 0..side {
                last = Some(spawn_tile(&t, i, j));
            }
        }
        last.expect("grid not empty")
            .await
            .expect("wavefront task failed");
        start.elapsed()
    })
}

/// The grid with ids ([`spawn_tile`]), each row spawned by a task of its own, which refer
/// to ids of other rows whether those were spawned yet or not.
fn parla_wavefront_rows(rt: &Runtime, side: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let t = TaskSpace::new("W");
        let rows: Vec<TaskHandle<()>> = (0..side)
            .map(|i| {
                let t = t.clone();
                task(async move {
                    for j in 0..side {
                        spawn_tile(&t, i, j);
                    }
                })
                .spawn()
            })
            .collect();
        for r in rows {
            r.await.expect("row task failed");
        }
        t.at((side - 1, side - 1))
            .await
            .expect("wavefront task failed");
        start.elapsed()
    })
}

/// The grid with handles: a row of handles above and the row being built.
fn parla_wavefront_h(rt: &Runtime, side: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let mut above: Vec<TaskHandle<()>> = Vec::new();
        for _ in 0..side {
            let mut row: Vec<TaskHandle<()>> = Vec::with_capacity(side);
            for j in 0..side {
                let t = task(async {}).after(above.get(j)).after(row.last()).spawn();
                row.push(t);
            }
            above = row;
        }
        let sink = above.pop().expect("grid not empty");
        sink.await.expect("wavefront task failed");
        start.elapsed()
    })
}

type Boxed = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A fork-join node: spawns its two children and awaits them, one after the other.
fn parla_fork(depth: u32) -> Boxed {
    Box::pin(async move {
        if depth == 0 {
            return;
        }
        let l = task(parla_fork(depth - 1)).spawn();
        let r = task(parla_fork(depth - 1)).spawn();
        l.await.expect("fork-join task failed");
        r.await.expect("fork-join task failed");
    })
}

fn parla_fork_join(rt: &Runtime, depth: u32) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        task(parla_fork(depth))
            .await
            .expect("fork-join task failed");
        start.elapsed()
    })
}

// ---------------------------------------------------------------------------------------------
// Tokio (a): spawned up front, awaiting the predecessors' join handles
// ---------------------------------------------------------------------------------------------

fn tokio_a_independent(rt: &tokio::runtime::Runtime, n: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            handles.push(tokio::spawn(async {}));
        }
        for h in handles {
            h.await.expect("task failed");
        }
        start.elapsed()
    })
}

fn tokio_a_busy(rt: &tokio::runtime::Runtime, n: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            handles.push(tokio::spawn(async { busy_work() }));
        }
        for h in handles {
            h.await.expect("task failed");
        }
        start.elapsed()
    })
}

/// [`parla_channels`] with `tokio::spawn`, over bounded channels (a) or unbounded ones (b).
fn tokio_channels(
    rt: &tokio::runtime::Runtime,
    pairs: usize,
    rounds: usize,
    unbounded: bool,
) -> Duration {
    use tokio::sync::mpsc;
    rt.block_on(async move {
        let start = Instant::now();
        let mut hs = Vec::with_capacity(2 * pairs);
        for _ in 0..pairs {
            if unbounded {
                let (to_b, mut b_rx) = mpsc::unbounded_channel::<usize>();
                let (to_a, mut a_rx) = mpsc::unbounded_channel::<usize>();
                hs.push(tokio::spawn(async move {
                    for i in 0..rounds {
                        to_b.send(i).expect("channel closed");
                        a_rx.recv().await.expect("channel closed");
                    }
                }));
                hs.push(tokio::spawn(async move {
                    while let Some(i) = b_rx.recv().await {
                        to_a.send(i).expect("channel closed");
                    }
                }));
            } else {
                let (to_b, mut b_rx) = mpsc::channel::<usize>(1);
                let (to_a, mut a_rx) = mpsc::channel::<usize>(1);
                hs.push(tokio::spawn(async move {
                    for i in 0..rounds {
                        to_b.send(i).await.expect("channel closed");
                        a_rx.recv().await.expect("channel closed");
                    }
                }));
                hs.push(tokio::spawn(async move {
                    while let Some(i) = b_rx.recv().await {
                        to_a.send(i).await.expect("channel closed");
                    }
                }));
            }
        }
        for h in hs {
            h.await.expect("channel task failed");
        }
        start.elapsed()
    })
}

fn tokio_a_chain(rt: &tokio::runtime::Runtime, n: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let mut prev = tokio::spawn(async {});
        for _ in 1..n {
            let p = prev;
            prev = tokio::spawn(async move { p.await.expect("chain task failed") });
        }
        prev.await.expect("chain task failed");
        start.elapsed()
    })
}

/// Same heap layout as [`parla_reduction`]; each node is its children's only consumer.
fn tokio_a_reduction(rt: &tokio::runtime::Runtime, leaves: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let n = 2 * leaves - 1;
        let mut h: Vec<Option<JoinHandle<()>>> = (0..n).map(|_| None).collect();
        for k in (0..n).rev() {
            let t = if k >= leaves - 1 {
                tokio::spawn(async {})
            } else {
                let l = h[2 * k + 1].take().expect("child spawned");
                let r = h[2 * k + 2].take().expect("child spawned");
                tokio::spawn(async move {
                    l.await.expect("reduction task failed");
                    r.await.expect("reduction task failed");
                })
            };
            h[k] = Some(t);
        }
        let root = h[0].take().expect("root spawned");
        root.await.expect("reduction task failed");
        start.elapsed()
    })
}

/// (i, j)'s `JoinHandle` is awaited by (i, j+1), its one consumer; (i, j) tells (i+1, j) it
/// finished through a `oneshot` channel. The handles of the last column are dropped (those
/// tasks run on, detached), except the sink's.
fn tokio_a_wavefront(rt: &tokio::runtime::Runtime, side: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let mut from_above: Vec<Option<oneshot::Receiver<()>>> = (0..side).map(|_| None).collect();
        let mut last = None;
        for i in 0..side {
            let mut left: Option<JoinHandle<()>> = None;
            for slot in from_above.iter_mut() {
                let up = slot.take();
                let below = if i + 1 < side {
                    let (tx, rx) = oneshot::channel();
                    *slot = Some(rx);
                    Some(tx)
                } else {
                    None
                };
                let prev = left.take();
                left = Some(tokio::spawn(async move {
                    if let Some(up) = up {
                        up.await.expect("wavefront task failed");
                    }
                    if let Some(prev) = prev {
                        prev.await.expect("wavefront task failed");
                    }
                    if let Some(below) = below {
                        let _ = below.send(());
                    }
                }));
            }
            last = left;
        }
        let sink = last.expect("grid not empty");
        sink.await.expect("wavefront task failed");
        start.elapsed()
    })
}

/// `block-on`: `n` calls of `block_on` with an empty future, one after the other.
fn parla_block_on(rt: &Runtime, n: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        rt.block_on(async {});
    }
    start.elapsed()
}

/// [`parla_block_on`] with Tokio's (a) `Runtime::block_on`, (b) `Handle::block_on`.
fn tokio_block_on(rt: &tokio::runtime::Runtime, n: usize, by_handle: bool) -> Duration {
    let start = Instant::now();
    if by_handle {
        let h = rt.handle();
        for _ in 0..n {
            h.block_on(async {});
        }
    } else {
        for _ in 0..n {
            rt.block_on(async {});
        }
    }
    start.elapsed()
}

/// What holds the workers during `abort`: how many spinners started, and whether they may
/// stop.
#[derive(Default)]
struct Hold {
    started: AtomicUsize,
    go: AtomicBool,
}

/// A spinner of `abort`: holds its worker until let go.
async fn hold(h: Arc<Hold>) {
    h.started.fetch_add(1, Ordering::AcqRel);
    while !h.go.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
}

/// Starts a spinner per worker (`spawn_hold`) and waits until each runs.
async fn hold_workers<S>(
    workers: usize,
    spawn_hold: impl Fn(Arc<Hold>) -> S,
) -> (Arc<Hold>, Vec<S>) {
    let h = Arc::new(Hold::default());
    let holders = (0..workers).map(|_| spawn_hold(h.clone())).collect();
    while h.started.load(Ordering::Acquire) < workers {
        tokio::task::yield_now().await;
    }
    (h, holders)
}

/// The order of `abort`'s aborts: every seventh of `n`, round and round (each once while
/// `n` is not a multiple of 7).
fn abort_order(n: usize) -> impl Iterator<Item = usize> {
    let step = if n.is_multiple_of(7) { 1 } else { 7 };
    (0..n).map(move |k| k * step % n)
}

/// The timed part of `abort`: aborts `tasks` (`abort`) in [`abort_order`], lets the
/// spinners (`h`) go, and awaits each.
async fn abort_each<H, T, E>(tasks: Vec<H>, abort: impl Fn(&H), h: &Hold) -> Duration
where
    H: std::future::IntoFuture<Output = Result<T, E>>,
    T: std::fmt::Debug,
{
    let start = Instant::now();
    for i in abort_order(tasks.len()) {
        abort(&tasks[i]);
    }
    h.go.store(true, Ordering::Release);
    for t in tasks {
        t.await.expect_err("an aborted task ran");
    }
    start.elapsed()
}

/// `abort`: `n` tasks spawned from `block_on` while spinners hold the `workers`, aborted
/// in [`abort_order`], the spinners let go, and each awaited.
fn parla_abort(rt: &Runtime, n: usize, workers: usize) -> Duration {
    rt.block_on(async move {
        let (h, holders) = hold_workers(workers, |h| task(hold(h)).spawn()).await;
        let tasks: Vec<TaskHandle<()>> = (0..n).map(|_| task(async {}).spawn()).collect();
        let time = abort_each(tasks, TaskHandle::abort, &h).await;
        for t in holders {
            t.await.expect("spinner failed");
        }
        time
    })
}

/// [`parla_abort`] with `tokio::spawn`: (a) each `JoinHandle` aborted in the same order and
/// awaited, (b) the tasks in a `JoinSet`, `abort_all`, then `join_next` to the end.
fn tokio_abort(rt: &tokio::runtime::Runtime, n: usize, workers: usize, set: bool) -> Duration {
    rt.block_on(async move {
        let (h, holders) = hold_workers(workers, |h| tokio::spawn(hold(h))).await;
        let time = if set {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..n {
                tasks.spawn(async {});
            }
            let start = Instant::now();
            tasks.abort_all();
            h.go.store(true, Ordering::Release);
            while let Some(r) = tasks.join_next().await {
                r.expect_err("an aborted task ran");
            }
            start.elapsed()
        } else {
            let tasks: Vec<JoinHandle<()>> = (0..n).map(|_| tokio::spawn(async {})).collect();
            abort_each(tasks, JoinHandle::abort, &h).await
        };
        for t in holders {
            t.await.expect("spinner failed");
        }
        time
    })
}

/// Spawns `n` tasks from `block_on` one at a time, awaiting each before the next.
fn parla_round_trip(rt: &Runtime, n: usize) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        for _ in 0..n {
            task(async {})
                .spawn()
                .await
                .expect("round-trip task failed");
        }
        start.elapsed()
    })
}

/// The same with `tokio::spawn`: awaiting the `JoinHandle` (a), or a `oneshot` the task
/// sends on (b).
/// `waiting`: `n` tasks spawned at once from `block_on`, each waiting on a `oneshot` sent
/// once all are spawned, then all awaited.
fn parla_waiting(rt: &Runtime, n: usize) -> Duration {
    rt.block_on(waiting(n, |rx| {
        task(async move { rx.await.expect("sender kept") }).spawn()
    }))
}

/// [`parla_waiting`] with `tokio::spawn`: awaiting (a) the `JoinHandle`s, (b) a `oneshot`
/// each task sends its value on.
fn tokio_waiting(rt: &tokio::runtime::Runtime, n: usize, by_oneshot: bool) -> Duration {
    if by_oneshot {
        rt.block_on(waiting(n, |rx| {
            let (back, result) = oneshot::channel::<u32>();
            tokio::spawn(async move {
                let _ = back.send(rx.await.expect("sender kept"));
            });
            result
        }))
    } else {
        rt.block_on(waiting(n, |rx| {
            tokio::spawn(async move { rx.await.expect("sender kept") })
        }))
    }
}

/// The body of `waiting`: `n` tasks started by `spawn`, each given the receiving end of a
/// `oneshot`, which are all sent on once every task is started; then each task's result
/// awaited.
async fn waiting<W, E>(n: usize, mut spawn: impl FnMut(oneshot::Receiver<u32>) -> W) -> Duration
where
    W: std::future::IntoFuture<Output = Result<u32, E>>,
    E: std::fmt::Debug,
{
    let start = Instant::now();
    let mut senders = Vec::with_capacity(n);
    let results: Vec<W> = (0..n)
        .map(|_| {
            let (tx, rx) = oneshot::channel::<u32>();
            senders.push(tx);
            spawn(rx)
        })
        .collect();
    for tx in senders {
        tx.send(1).expect("the task waits");
    }
    for r in results {
        r.await.expect("waiting task failed");
    }
    start.elapsed()
}

fn tokio_round_trip(rt: &tokio::runtime::Runtime, n: usize, oneshot: bool) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        for _ in 0..n {
            if oneshot {
                let (tx, rx) = oneshot::channel();
                tokio::spawn(async move {
                    let _ = tx.send(());
                });
                rx.await.expect("round-trip task failed");
            } else {
                tokio::spawn(async {})
                    .await
                    .expect("round-trip task failed");
            }
        }
        start.elapsed()
    })
}

/// A fork-join node in Tokio: the children's `JoinHandle`s, awaited one after the other (a)
/// or with `tokio::join!` (b).
fn tokio_fork(depth: u32, join: bool) -> Boxed {
    Box::pin(async move {
        if depth == 0 {
            return;
        }
        let l = tokio::spawn(tokio_fork(depth - 1, join));
        let r = tokio::spawn(tokio_fork(depth - 1, join));
        if join {
            let (a, b) = tokio::join!(l, r);
            a.expect("fork-join task failed");
            b.expect("fork-join task failed");
        } else {
            l.await.expect("fork-join task failed");
            r.await.expect("fork-join task failed");
        }
    })
}

fn tokio_fork_join(rt: &tokio::runtime::Runtime, depth: u32, join: bool) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        tokio::spawn(tokio_fork(depth, join))
            .await
            .expect("fork-join task failed");
        start.elapsed()
    })
}

// ---------------------------------------------------------------------------------------------
// Tokio (b): per-node atomic dependency counters, a task spawned by its last predecessor
// ---------------------------------------------------------------------------------------------

/// A graph in closed form, as a hand-written Tokio program would have it.
trait Dag: Send + Sync + 'static {
    fn len(&self) -> usize;
    fn indegree(&self, v: usize) -> u32;
    fn for_each_successor(&self, v: usize, f: impl FnMut(usize));
    fn for_each_source(&self, f: impl FnMut(usize));
    /// The node whose completion ends the run; `None`: every node's.
    fn sink(&self) -> Option<usize>;
    /// Whether each node's body does [`busy_work`] (else it is empty).
    fn busy(&self) -> bool {
        false
    }
}

/// `n` nodes; each does [`busy_work`] if `busy` (else nothing).
struct Independent {
    n: usize,
    busy: bool,
}
struct Chain(usize);
/// Heap layout, as in [`parla_reduction`].
struct Tree {
    leaves: usize,
}
/// Node (i, j) is `i * side + j`.
struct Grid {
    side: usize,
}

impl Dag for Independent {
    fn len(&self) -> usize {
        self.n
    }
    fn indegree(&self, _: usize) -> u32 {
        0
    }
    fn for_each_successor(&self, _: usize, _: impl FnMut(usize)) {}
    fn for_each_source(&self, f: impl FnMut(usize)) {
        (0..self.n).for_each(f);
    }
    fn sink(&self) -> Option<usize> {
        None
    }
    fn busy(&self) -> bool {
        self.busy
    }
}

impl Dag for Chain {
    fn len(&self) -> usize {
        self.0
    }
    fn indegree(&self, v: usize) -> u32 {
        u32::from(v > 0)
    }
    fn for_each_successor(&self, v: usize, mut f: impl FnMut(usize)) {
        if v + 1 < self.0 {
            f(v + 1);
        }
    }
    fn for_each_source(&self, mut f: impl FnMut(usize)) {
        f(0);
    }
    fn sink(&self) -> Option<usize> {
        Some(self.0 - 1)
    }
}

impl Dag for Tree {
    fn len(&self) -> usize {
        2 * self.leaves - 1
    }
    fn indegree(&self, v: usize) -> u32 {
        if v < self.leaves - 1 { 2 } else { 0 }
    }
    fn for_each_successor(&self, v: usize, mut f: impl FnMut(usize)) {
        if v > 0 {
            f((v - 1) / 2);
        }
    }
    fn for_each_source(&self, f: impl FnMut(usize)) {
        (self.leaves - 1..self.len()).for_each(f);
    }
    fn sink(&self) -> Option<usize> {
        Some(0)
    }
}

impl Dag for Grid {
    fn len(&self) -> usize {
        self.side * self.side
    }
    fn indegree(&self, v: usize) -> u32 {
        let (i, j) = (v / self.side, v % self.side);
        u32::from(i > 0) + u32::from(j > 0)
    }
    fn for_each_successor(&self, v: usize, mut f: impl FnMut(usize)) {
        let (i, j) = (v / self.side, v % self.side);
        if i + 1 < self.side {
            f(v + self.side);
        }
        if j + 1 < self.side {
            f(v + 1);
        }
    }
    fn for_each_source(&self, mut f: impl FnMut(usize)) {
        f(0);
    }
    fn sink(&self) -> Option<usize> {
        Some(self.len() - 1)
    }
}

/// One run's state: the graph, its counters, and the completion signal.
struct Counted<G> {
    dag: G,
    /// Unfinished predecessors of each node.
    pending: Box<[AtomicU32]>,
    /// Unfinished nodes, when the graph has no sink.
    remaining: AtomicUsize,
    done: Notify,
}

/// Spawns node `v`: the task body (empty, or [`busy_work`]), then [`finished`].
fn spawn_node<G: Dag>(st: Arc<Counted<G>>, v: usize) {
    tokio::spawn(async move {
        if st.dag.busy() {
            busy_work();
        }
        finished(st, v)
    });
}

/// Node `v` finished: signal the end, or decrement each successor's counter and spawn those it
/// brought to zero. The last one spawned inherits this task's `Arc` (so a chain or a tree
/// makes no reference count traffic).
fn finished<G: Dag>(st: Arc<Counted<G>>, v: usize) {
    let last = match st.dag.sink() {
        Some(s) => v == s,
        None => st.remaining.fetch_sub(1, Ordering::AcqRel) == 1,
    };
    if last {
        st.done.notify_one();
        return;
    }
    let mut ready = None;
    st.dag.for_each_successor(v, |s| {
        if st.pending[s].fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(r) = ready.replace(s)
        {
            spawn_node(st.clone(), r);
        }
    });
    if let Some(r) = ready {
        spawn_node(st, r);
    }
}

fn tokio_b<G: Dag>(rt: &tokio::runtime::Runtime, dag: G) -> Duration {
    rt.block_on(async move {
        let start = Instant::now();
        let st = Arc::new(Counted {
            pending: (0..dag.len())
                .map(|v| AtomicU32::new(dag.indegree(v)))
                .collect(),
            remaining: AtomicUsize::new(dag.len()),
            done: Notify::new(),
            dag,
        });
        st.dag.for_each_source(|v| spawn_node(st.clone(), v));
        st.done.notified().await; // `notify_one` keeps a permit if it came first
        start.elapsed()
    })
}

// ---------------------------------------------------------------------------------------------
// Running and reporting
// ---------------------------------------------------------------------------------------------

/// The runtimes, built once, outside every timed region.
struct Env {
    parla: Option<Runtime>,
    tokio: Option<tokio::runtime::Runtime>,
    sizes: Sizes,
}

impl Env {
    fn run(&self, g: Graph, imp: Imp) -> Duration {
        let s = &self.sizes;
        match imp {
            Imp::Parla => {
                let rt = self.parla.as_ref().expect("parla runtime built");
                match g {
                    Graph::Independent => parla_independent(rt, s.flat),
                    Graph::Chain => parla_chain(rt, s.flat),
                    Graph::Reduction => parla_reduction(rt, s.leaves),
                    Graph::Wavefront => parla_wavefront(rt, s.side),
                    Graph::WavefrontH => parla_wavefront_h(rt, s.side),
                    Graph::WavefrontRows => parla_wavefront_rows(rt, s.side),
                    Graph::ForkJoin => parla_fork_join(rt, s.depth),
                    Graph::RoundTrip => parla_round_trip(rt, s.trips),
                    Graph::Busy => parla_busy(rt, s.busy),
                    Graph::Waves => parla_waves(rt, s.waves, s.width),
                    Graph::Steps => parla_steps(rt, s.steps),
                    Graph::FromTokio => parla_from_tokio(rt, s.futures),
                    Graph::Channels => parla_channels(rt, s.pairs, s.rounds()),
                    Graph::Waiting => parla_waiting(rt, s.waiting),
                    Graph::BlockOn => parla_block_on(rt, s.calls),
                    Graph::Abort => parla_abort(rt, s.aborted, s.width),
                }
            }
            Imp::TokioA => {
                let rt = self.tokio.as_ref().expect("tokio runtime built");
                match g {
                    Graph::Independent => tokio_a_independent(rt, s.flat),
                    Graph::Chain => tokio_a_chain(rt, s.flat),
                    Graph::Reduction => tokio_a_reduction(rt, s.leaves),
                    Graph::Wavefront | Graph::WavefrontH | Graph::WavefrontRows => {
                        tokio_a_wavefront(rt, s.side)
                    }
                    Graph::ForkJoin => tokio_fork_join(rt, s.depth, false),
                    Graph::RoundTrip => tokio_round_trip(rt, s.trips, false),
                    Graph::Busy => tokio_a_busy(rt, s.busy),
                    Graph::Waves => tokio_waves(rt, s.waves, s.width, false),
                    Graph::Steps => tokio_rounds(rt, s.steps, STEP, false, || {}),
                    Graph::FromTokio => tokio_from_tokio(rt, s.futures, false),
                    Graph::Channels => tokio_channels(rt, s.pairs, s.rounds(), false),
                    Graph::Waiting => tokio_waiting(rt, s.waiting, false),
                    Graph::BlockOn => tokio_block_on(rt, s.calls, false),
                    Graph::Abort => tokio_abort(rt, s.aborted, s.width, false),
                }
            }
            Imp::TokioB => {
                let rt = self.tokio.as_ref().expect("tokio runtime built");
                match g {
                    Graph::Independent => tokio_b(
                        rt,
                        Independent {
                            n: s.flat,
                            busy: false,
                        },
                    ),
                    Graph::Chain => tokio_b(rt, Chain(s.flat)),
                    Graph::Reduction => tokio_b(rt, Tree { leaves: s.leaves }),
                    Graph::Wavefront | Graph::WavefrontH | Graph::WavefrontRows => {
                        tokio_b(rt, Grid { side: s.side })
                    }
                    Graph::ForkJoin => tokio_fork_join(rt, s.depth, true),
                    Graph::RoundTrip => tokio_round_trip(rt, s.trips, true),
                    Graph::Busy => tokio_b(
                        rt,
                        Independent {
                            n: s.busy,
                            busy: true,
                        },
                    ),
                    Graph::Waves => tokio_waves(rt, s.waves, s.width, true),
                    Graph::Steps => tokio_rounds(rt, s.steps, STEP, true, || {}),
                    Graph::FromTokio => tokio_from_tokio(rt, s.futures, true),
                    Graph::Channels => tokio_channels(rt, s.pairs, s.rounds(), true),
                    Graph::Waiting => tokio_waiting(rt, s.waiting, true),
                    Graph::BlockOn => tokio_block_on(rt, s.calls, true),
                    Graph::Abort => tokio_abort(rt, s.aborted, s.width, true),
                }
            }
        }
    }

    /// Nanoseconds per task of one run.
    fn ns_per_task(&self, g: Graph, imp: Imp) -> f64 {
        self.run(g, imp).as_nanos() as f64 / self.sizes.tasks(g) as f64
    }
}

/// Median and minimum.
fn stats(xs: &[f64]) -> (f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    };
    (median, v[0])
}

/// Alternates the three implementations on `g` (rotating their order every round) and prints
/// the table row.
fn bench_graph(env: &Env, o: &Options, g: Graph) {
    const IMPS: [Imp; 3] = [Imp::Parla, Imp::TokioA, Imp::TokioB];
    let mut ns: [Vec<f64>; 3] = Default::default();
    for round in 0..o.warmup + o.runs {
        for k in 0..3 {
            let i = (round + k) % 3;
            let x = env.ns_per_task(g, IMPS[i]);
            if round >= o.warmup {
                ns[i].push(x);
            }
        }
    }
    let (p, a, b) = (stats(&ns[0]), stats(&ns[1]), stats(&ns[2]));
    let (best, which, other) = if a.0 <= b.0 {
        (a, "a", b.0)
    } else {
        (b, "b", a.0)
    };
    println!(
        "{:<14} {:>6} | {:>8.1} {:>8.1} | {:>8.1} {:>8.1} {:>4} {:>9.1} | {:>6.2}",
        g.name(),
        env.sizes.tasks(g),
        p.0,
        p.1,
        best.0,
        best.1,
        which,
        other,
        p.0 / best.0
    );
    let _ = std::io::stdout().flush();
}

/// A task that finishes once the sender is used (or dropped), and that sender.
fn closed_gate() -> (oneshot::Sender<()>, TaskHandle<()>) {
    let (open, gate) = oneshot::channel::<()>();
    let gate = task(async move {
        let _ = gate.await;
    })
    .spawn();
    (open, gate)
}

/// Spawns `n` parla tasks all waiting on a gate, and returns the net bytes allocated by the
/// spawning, and those still allocated once everything ran.
fn parla_memory(rt: &Runtime, n: usize) -> (isize, isize, Duration) {
    let (pending, spawn_time) = rt.block_on(async move {
        let (open, gate) = closed_gate();
        start_counting();
        let start = Instant::now();
        for _ in 0..n {
            task(async {}).after(&gate).spawn();
        }
        let spawn_time = start.elapsed();
        let pending = counted_bytes();
        let _ = open.send(());
        gate.await.expect("gate failed");
        (pending, spawn_time)
    });
    // `block_on` returned: all `n` tasks ran.
    let left = counted_bytes();
    stop_counting();
    (pending, left, spawn_time)
}

/// How the tasks of [`parla_memory_ids`] name each other.
#[derive(Clone, Copy)]
enum IdOrder {
    /// Task `i` is after task `i - 1`, spawned before it (task 0 after the gate).
    Forward,
    /// Spawned from the last id down: task `i` is after task `i - 1`, not spawned yet (a
    /// forward reference), and task 0 after the gate.
    Reverse,
}

/// [`parla_memory`] with ids: `n` tasks `t.at(i)` of one space, in a chain behind a closed
/// gate, spawned in `order`. Returns the net bytes allocated by the spawning (the space's
/// table included), and those still allocated once everything ran and the space is gone.
fn parla_memory_ids(rt: &Runtime, n: usize, order: IdOrder) -> (isize, isize, Duration) {
    let (pending, spawn_time) = rt.block_on(async move {
        let (open, gate) = closed_gate();
        start_counting();
        let start = Instant::now();
        let t = TaskSpace::new("Memory");
        let spawn_one = |i: usize| {
            let b = task(async {}).id(t.at(i));
            if i == 0 {
                b.after(&gate).spawn()
            } else {
                b.after(t.at(i - 1)).spawn()
            }
        };
        match order {
            IdOrder::Forward => (0..n).for_each(|i| drop(spawn_one(i))),
            IdOrder::Reverse => (0..n).rev().for_each(|i| drop(spawn_one(i))),
        }
        let spawn_time = start.elapsed();
        let pending = counted_bytes();
        let _ = open.send(());
        (&t).await.expect("memory task failed");
        drop(t);
        (pending, spawn_time)
    });
    let left = counted_bytes();
    stop_counting();
    (pending, left, spawn_time)
}

fn bench_memory(env: &Env, threads: usize) {
    let n = env.sizes.memory;
    // In a runtime of its own, on a thread of its own: the finished tasks that the graphs
    // before left for reuse (in the runtime's pool, and in the main thread's list, freed
    // by the next spawns there) are not freed during the count.
    let rt = Runtime::builder()
        .cpu_threads(threads)
        .build()
        .expect("parla runtime");
    let (pending, left, spawn_time) = std::thread::scope(|s| {
        s.spawn(|| parla_memory(&rt, n))
            .join()
            .expect("memory row panicked")
    });
    let per_task = pending as f64 / n as f64;
    println!();
    println!("memory: {n} parla tasks pending at once (each .after(&gate), gate closed)");
    println!(
        "{:>10} | {:>12} | {:>8} | {:>12} | {:>16}",
        "tasks", "bytes/task", "target", "spawn ns/task", "bytes left after"
    );
    println!(
        "{:>10} | {:>12.1} | {:>8} | {:>12.1} | {:>16}",
        n,
        per_task,
        if per_task <= 250.0 {
            "<=250 ok"
        } else {
            "<=250 NO"
        },
        spawn_time.as_nanos() as f64 / n as f64,
        left
    );
    println!();
    println!(
        "memory with ids: {n} tasks t.at(i) pending at once, each after t.at(i - 1) (t.at(0) after the gate, closed)"
    );
    println!(
        "{:>10} | {:>12} | {:>12} | {:>12} | {:>16}",
        "order", "bytes/task", "target", "spawn ns/task", "bytes left after"
    );
    for (name, order) in [("forward", IdOrder::Forward), ("reverse", IdOrder::Reverse)] {
        let (pending, left, spawn_time) = std::thread::scope(|s| {
            s.spawn(|| parla_memory_ids(&rt, n, order))
                .join()
                .expect("memory row panicked")
        });
        let per_task = pending as f64 / n as f64;
        println!(
            "{:>10} | {:>12.1} | {:>12} | {:>12.1} | {:>16}",
            name,
            per_task,
            // DESIGN.md: a million pending tasks in under 500 MB.
            if per_task < 500.0 {
                "<500 ok"
            } else {
                "<500 NO"
            },
            spawn_time.as_nanos() as f64 / n as f64,
            left
        );
    }
}

/// A service run in batches of id'd tasks, retiring each batch: the bytes still allocated
/// after each batch (counting starts after the first one, once the runtime's own buffers
/// reached their working size).
fn parla_service(rt: &Runtime, batches: usize, per_batch: usize) -> Vec<(usize, isize)> {
    let t = TaskSpace::new("Service");
    let mut rows = Vec::new();
    for b in 0..batches {
        if b == 1 {
            start_counting();
        }
        let t = t.clone();
        rt.block_on(async move {
            let base = b * per_batch;
            for i in base..base + per_batch {
                let mut builder = task(async {}).id(t.at(i));
                if i % 8 != 0 {
                    builder = builder.after(t.at(i - 1));
                }
                builder.spawn();
            }
            t.range(base..base + per_batch)
                .await
                .expect("service task failed");
            t.retire_finished();
        });
        let done = b + 1;
        if b >= 1 && (done.is_power_of_two() || done == batches || done % 25 == 0) {
            rows.push((done * per_batch, counted_bytes()));
        }
    }
    stop_counting();
    rows
}

fn bench_service(env: &Env) {
    let rt = env.parla.as_ref().expect("parla runtime built");
    let batches = env.sizes.batches.max(2);
    let per_batch = 100_000;
    let start = Instant::now();
    let rows = parla_service(rt, batches, per_batch);
    let ns = start.elapsed().as_nanos() as f64 / (batches * per_batch) as f64;
    println!();
    println!(
        "service: {} id'd tasks in batches of {per_batch} (chains of 8), each batch awaited and retired; {ns:.1} ns/task",
        batches * per_batch
    );
    println!(
        "{:>12} | {:>28}",
        "tasks so far", "bytes allocated since batch 1"
    );
    for (tasks, bytes) in &rows {
        println!("{tasks:>12} | {bytes:>28}");
    }
    let first = rows.first().map_or(0, |r| r.1);
    let last = rows.last().map_or(0, |r| r.1);
    println!(
        "growth from the first row to the last: {} bytes ({})",
        last - first,
        if (last - first).abs() < 1 << 20 {
            "flat"
        } else {
            "GROWING"
        }
    );
}

fn main() {
    let o = parse_options();
    let sizes = Sizes {
        pairs: 3 * o.threads,
        width: o.threads,
        ..Sizes::new(o.scale)
    };
    let graphs: Vec<Graph> = match &o.graph {
        None => Graph::ALL.to_vec(),
        Some(name) => Graph::ALL
            .into_iter()
            .filter(|g| g.name() == name)
            .collect(),
    };
    // The memory and service measurements run by default, and with `--graph memory` or
    // `--graph service` (alone or `--only parla`).
    let memory = matches!(
        (o.graph.as_deref(), o.only),
        (None, None) | (Some("memory"), None | Some(Imp::Parla))
    );
    let service = matches!(
        (o.graph.as_deref(), o.only),
        (None, None) | (Some("service"), None | Some(Imp::Parla))
    );
    let need_parla = o.only.is_none_or(|i| i == Imp::Parla);
    let need_tokio = o.only.is_none_or(|i| i != Imp::Parla);
    let env = Env {
        parla: need_parla.then(|| {
            Runtime::builder()
                .cpu_threads(o.threads)
                .build()
                .expect("parla runtime")
        }),
        tokio: need_tokio.then(|| {
            // The same configuration as the Tokio runtime inside parla.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(o.threads)
                .enable_all()
                .build()
                .expect("tokio runtime")
        }),
        sizes,
    };

    if let Some(imp) = o.only {
        // One implementation, one pass by default (e.g. under `valgrind --tool=callgrind`);
        // with `--passes N` the last of N is printed.
        for &g in &graphs {
            let mut ns = env.ns_per_task(g, imp);
            for _ in 1..o.passes {
                ns = env.ns_per_task(g, imp);
            }
            println!(
                "{} {}: {} tasks, {:.1} ns/task",
                g.name(),
                imp.name(),
                sizes.tasks(g),
                ns
            );
        }
        if memory {
            bench_memory(&env, o.threads);
        }
        if service {
            bench_service(&env);
        }
        return;
    }

    if !graphs.is_empty() {
        println!(
            "overhead of empty tasks: {} worker threads, scale {}, {} warm-up + {} timed runs; ns/task",
            o.threads, o.scale, o.warmup, o.runs
        );
        println!(
            "{:<14} {:>6} | {:>17} | {:>32} | {:>6}",
            "graph", "tasks", "parla", "tokio (faster of a/b)", "ratio"
        );
        println!(
            "{:<14} {:>6} | {:>8} {:>8} | {:>8} {:>8} {:>4} {:>9} | {:>6}",
            "", "", "median", "min", "median", "min", "best", "other med", "p/t"
        );
        for &g in &graphs {
            bench_graph(&env, &o, g);
        }
    }
    if memory {
        bench_memory(&env, o.threads);
    }
    if service {
        bench_service(&env);
    }
}
