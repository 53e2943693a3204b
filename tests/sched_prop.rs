//! Property test over random task graphs: random dependencies (forward references
//! included), random placement on the CPU and two virtual GPUs, random VCUs and memory.
//! Every task runs exactly once, after all of its dependencies; the VCUs in use on a device
//! never exceed 1.0; reserved memory never exceeds the budget; `block_on` returns. And
//! random trees of tasks awaiting the children they spawn: parents lend their VCUs while
//! they wait (to the child they await first) and get them back, and the VCUs of the tasks
//! running code on a device still never exceed 1.0. And random CPU tasks waiting on one
//! another through channels, spawned in a random order: a waiting task keeps its VCUs only
//! until a task waits for them, so every task runs.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parla::prelude::*;
use proptest::prelude::*;

const BUDGET: u64 = 1000;
const DEVICES: usize = 3;

#[derive(Debug, Clone)]
struct Node {
    deps: Vec<usize>,
    placement: usize,
    vcus: Option<f64>,
    memory: u64,
    by_handle: bool,
    yields: u8,
}

#[derive(Debug, Clone)]
struct Graph {
    threads: usize,
    nodes: Vec<Node>,
}

fn placements(i: usize) -> Vec<Placement> {
    match i {
        0 => vec![Placement::Cpu],
        1 => vec![Placement::AnyGpu],
        2 => vec![Placement::Gpu(0)],
        3 => vec![Placement::Gpu(1)],
        4 => vec![Placement::Cpu, Placement::AnyGpu],
        _ => vec![Placement::Cpu, Placement::Gpu(1)],
    }
}

fn graph() -> impl Strategy<Value = Graph> {
    (1usize..=200, 1usize..=4).prop_flat_map(|(n, threads)| {
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        let node = (
            proptest::collection::vec(0..n, 0..4),
            0usize..6,
            prop_oneof![
                Just(None),
                Just(Some(0.0)),
                Just(Some(0.25)),
                Just(Some(0.5)),
                Just(Some(1.0)),
                (0.0f64..=1.0).prop_map(Some)
            ],
            prop_oneof![Just(0u64), 0..=BUDGET],
            any::<bool>(),
            0u8..3,
        );
        (order, proptest::collection::vec(node, n)).prop_map(move |(order, raw)| {
            // rank[i]: position of task i in a topological order; deps only go to lower ranks,
            // so the graph is acyclic while spawn order (by index) makes forward references.
            let mut rank = vec![0; n];
            for (pos, &i) in order.iter().enumerate() {
                rank[i] = pos;
            }
            let nodes = raw
                .into_iter()
                .enumerate()
                .map(|(i, (deps, placement, vcus, memory, by_handle, yields))| {
                    let mut deps: Vec<usize> =
                        deps.into_iter().filter(|&j| rank[j] < rank[i]).collect();
                    deps.sort_unstable();
                    deps.dedup();
                    Node {
                        deps,
                        placement,
                        vcus,
                        memory,
                        by_handle,
                        yields,
                    }
                })
                .collect();
            Graph { threads, nodes }
        })
    })
}

struct Check {
    runs: Vec<AtomicUsize>,
    done: Vec<AtomicBool>,
    vcu: [AtomicU64; DEVICES],
    mem: [AtomicU64; DEVICES],
    early: AtomicUsize,
    over_vcu: AtomicUsize,
    over_mem: AtomicUsize,
}

fn run(g: Graph) -> Result<(), TestCaseError> {
    let n = g.nodes.len();
    let check = Arc::new(Check {
        runs: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        done: (0..n).map(|_| AtomicBool::new(false)).collect(),
        vcu: Default::default(),
        mem: Default::default(),
        early: AtomicUsize::new(0),
        over_vcu: AtomicUsize::new(0),
        over_mem: AtomicUsize::new(0),
    });
    let rt = parla::Runtime::builder()
        .cpu_threads(g.threads)
        .cpu_memory(BUDGET)
        .virtual_gpus(2, BUDGET)
        .build()
        .unwrap();
    let c = check.clone();
    let nodes = g.nodes.clone();
    let results = support::within(20, move || {
        rt.block_on(async move {
            let t = TaskSpace::new("P");
            let mut handles: Vec<TaskHandle<()>> = Vec::with_capacity(n);
            for (i, node) in nodes.iter().enumerate() {
                let c = c.clone();
                let deps = node.deps.clone();
                let yields = node.yields;
                let body = async move {
                    let info = current_task().expect("inside a task");
                    let dev = support::slot(current_device());
                    let v = (info.vcus() * 1e6).round() as u64;
                    let m = info.memory();
                    // VCUs are held while the task is polled (a CPU task lends them
                    // while it waits, a yield included); memory while it runs at all.
                    let enter = |c: &Check| {
                        if c.vcu[dev].fetch_add(v, Ordering::SeqCst) + v > 1_000_000 {
                            c.over_vcu.fetch_add(1, Ordering::SeqCst);
                        }
                    };
                    enter(&c);
                    if c.mem[dev].fetch_add(m, Ordering::SeqCst) + m > BUDGET {
                        c.over_mem.fetch_add(1, Ordering::SeqCst);
                    }
                    if deps.iter().any(|&j| !c.done[j].load(Ordering::SeqCst)) {
                        c.early.fetch_add(1, Ordering::SeqCst);
                    }
                    for _ in 0..yields {
                        c.vcu[dev].fetch_sub(v, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        enter(&c);
                    }
                    c.runs[i].fetch_add(1, Ordering::SeqCst);
                    c.vcu[dev].fetch_sub(v, Ordering::SeqCst);
                    c.mem[dev].fetch_sub(m, Ordering::SeqCst);
                    c.done[i].store(true, Ordering::SeqCst);
                };
                let mut b = task(body)
                    .id(t.at(i))
                    .placement(placements(node.placement))
                    .memory(node.memory);
                if let Some(v) = node.vcus {
                    b = b.vcus(v);
                }
                for &j in &node.deps {
                    if j < i && node.by_handle {
                        b = b.after(&handles[j]);
                    } else {
                        b = b.after(t.at(j));
                    }
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
    for (i, r) in results.iter().enumerate() {
        prop_assert!(r.is_ok(), "task {i}: {r:?}");
        prop_assert_eq!(
            check.runs[i].load(Ordering::SeqCst),
            1,
            "task {} ran once",
            i
        );
    }
    prop_assert_eq!(
        check.early.load(Ordering::SeqCst),
        0,
        "a task ran before a dependency"
    );
    prop_assert_eq!(check.over_vcu.load(Ordering::SeqCst), 0, "VCUs over 1.0");
    prop_assert_eq!(
        check.over_mem.load(Ordering::SeqCst),
        0,
        "memory over budget"
    );
    Ok(())
}

proptest! {
    #![proptest_config(support::prop_config(48))]

    #[test]
    fn random_dags(g in graph()) {
        run(g)?;
    }
}

/// A graph where some tasks panic, and some tasks await an earlier task inside their body.
#[derive(Debug, Clone)]
struct Faulty {
    threads: usize,
    deps: Vec<Vec<usize>>,
    panics: Vec<bool>,
    awaits: Vec<Option<usize>>,
    vcus: Vec<f64>,
}

fn faulty() -> impl Strategy<Value = Faulty> {
    (1usize..=120, 1usize..=3).prop_flat_map(|(n, threads)| {
        (
            proptest::collection::vec(proptest::collection::vec(0..n, 0..3), n),
            proptest::collection::vec(proptest::bool::weighted(0.1), n),
            proptest::collection::vec(proptest::option::weighted(0.2, 0..n), n),
            proptest::collection::vec(prop_oneof![Just(0.25), Just(0.5), Just(1.0)], n),
        )
            .prop_map(move |(deps, panics, awaits, vcus)| Faulty {
                threads,
                // Dependencies and awaits only on earlier tasks: no cycles.
                deps: deps
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| d.into_iter().filter(|&j| j < i).collect())
                    .collect(),
                panics,
                awaits: awaits
                    .into_iter()
                    .enumerate()
                    .map(|(i, a)| a.filter(|&j| j < i))
                    .collect(),
                vcus,
            })
    })
}

proptest! {
    #![proptest_config(support::prop_config(32))]

    /// A task runs exactly when none of its transitive dependencies panicked; every handle
    /// resolves (tasks awaiting others inside their bodies lend their VCUs and never
    /// deadlock); failures name the root.
    #[test]
    fn failures_propagate_and_awaits_inside_tasks_finish(g in faulty()) {
        let n = g.deps.len();
        // Expected: a task fails if it panics or any dependency fails.
        let mut fails = vec![false; n];
        for i in 0..n {
            fails[i] = g.panics[i] || g.deps[i].iter().any(|&j| fails[j]);
        }
        let ran: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
        // An await of an earlier task can only end in that task's outcome: no stall, so no
        // `Deadlock`.
        let deadlocks = Arc::new(AtomicUsize::new(0));
        let dl = deadlocks.clone();
        let rt = parla::Runtime::builder().cpu_threads(g.threads).gpus([]).build().unwrap();
        let (r2, g2) = (ran.clone(), g.clone());
        let results = support::within(20, move || {
            rt.block_on(async move {
                let t = TaskSpace::new("F");
                let mut hs = Vec::with_capacity(n);
                for i in 0..n {
                    let (ran, t2, dl) = (r2.clone(), t.clone(), dl.clone());
                    let (panic, wait) = (g2.panics[i], g2.awaits[i]);
                    let h = task(async move {
                        ran[i].store(true, Ordering::SeqCst);
                        if let Some(j) = wait {
                            // The awaited task may fail; this task does not care.
                            if let Err(TaskError::Deadlock { .. }) = t2.at(j).await {
                                dl.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        if panic {
                            panic!("task {i} fails on purpose");
                        }
                    })
                    .id(t.at(i))
                    .vcus(g2.vcus[i])
                    .after(g2.deps[i].iter().map(|&j| t.at(j)).collect::<Vec<_>>())
                    .spawn();
                    hs.push(h);
                }
                let mut out = Vec::with_capacity(n);
                for h in hs {
                    out.push(h.await);
                }
                out
            })
        });
        prop_assert_eq!(deadlocks.load(Ordering::SeqCst), 0, "an await failed with Deadlock");
        for i in 0..n {
            prop_assert_eq!(results[i].is_err(), fails[i], "task {}: {:?}", i, results[i]);
            let should_run = !g.deps[i].iter().any(|&j| fails[j]);
            prop_assert_eq!(ran[i].load(Ordering::SeqCst), should_run, "task {} ran", i);
            if let Err(TaskError::DependencyFailed { dependency, cause, .. }) = &results[i] {
                let panicked = matches!(**cause, TaskError::Panicked { .. });
                prop_assert!(panicked, "root cause {:?}", cause);
                prop_assert!(dependency.starts_with("F["));
            }
        }
    }
}

/// A random tree of tasks that spawn their children and await them (one by one, all at
/// once, or by id), with random VCUs and placement.
#[derive(Debug, Clone)]
struct Tree {
    threads: usize,
    /// Node `i > 0`'s parent (an earlier node); node 0 is the root.
    parent: Vec<usize>,
    vcus: Vec<Option<f64>>,
    placement: Vec<usize>,
    /// 0: await the children one by one, 1: all at once (`join_all`), 2: by id.
    mode: Vec<u8>,
}

fn tree() -> impl Strategy<Value = Tree> {
    (1usize..=120, 1usize..=4).prop_flat_map(|(n, threads)| {
        (
            proptest::collection::vec(any::<proptest::sample::Index>(), n),
            proptest::collection::vec(
                prop_oneof![
                    Just(None),
                    Just(Some(0.25)),
                    Just(Some(0.5)),
                    Just(Some(1.0)),
                    (0.0f64..=1.0).prop_map(Some)
                ],
                n,
            ),
            proptest::collection::vec(prop_oneof![Just(0usize), Just(0), Just(4), Just(1)], n),
            proptest::collection::vec(0u8..3, n),
        )
            .prop_map(move |(parent, vcus, placement, mode)| Tree {
                threads,
                parent: parent
                    .iter()
                    .enumerate()
                    .map(|(i, p)| if i == 0 { 0 } else { p.index(i) })
                    .collect(),
                vcus,
                placement,
                mode,
            })
    })
}

/// Per device: the VCUs of the tasks running code now (polled: not awaiting, not yielded),
/// and whether that ever went over 1.0.
#[derive(Default)]
struct InUse {
    vcu: [AtomicU64; DEVICES],
    over: AtomicUsize,
    ran: AtomicUsize,
}

impl InUse {
    fn enter(&self) -> (usize, u64) {
        let info = current_task().expect("inside a task");
        let (dev, v) = (
            support::slot(current_device()),
            (info.vcus() * 1e6).round() as u64,
        );
        if self.vcu[dev].fetch_add(v, Ordering::SeqCst) + v > 1_000_000 {
            self.over.fetch_add(1, Ordering::SeqCst);
        }
        (dev, v)
    }
    fn exit(&self, (dev, v): (usize, u64)) {
        self.vcu[dev].fetch_sub(v, Ordering::SeqCst);
    }
}

/// A yield inside a task: the task is not polled meanwhile, so its VCUs leave the count
/// (a CPU task lends them) and come back with the next poll.
async fn pause(u: &InUse, me: (usize, u64)) -> (usize, u64) {
    u.exit(me);
    tokio::task::yield_now().await;
    u.enter()
}

fn tree_node(
    i: usize,
    g: Arc<Tree>,
    t: TaskSpace,
    u: Arc<InUse>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        let mut me = u.enter();
        u.ran.fetch_add(1, Ordering::SeqCst);
        let kids: Vec<usize> = (1..g.parent.len()).filter(|&k| g.parent[k] == i).collect();
        let mut hs = Vec::new();
        for &k in &kids {
            let mut b = task(tree_node(k, g.clone(), t.clone(), u.clone()))
                .id(t.at(k))
                .placement(placements(g.placement[k]));
            if let Some(v) = g.vcus[k] {
                b = b.vcus(v);
            }
            hs.push(b.spawn());
            me = pause(&u, me).await;
        }
        // Awaiting, the task lends its VCUs; it has them back when the await returns.
        u.exit(me);
        match g.mode[i] {
            0 => {
                for h in hs {
                    h.await.unwrap();
                    me = u.enter();
                    me = pause(&u, me).await;
                    u.exit(me);
                }
            }
            1 => {
                for r in futures_util::future::join_all(hs).await {
                    r.unwrap();
                }
            }
            _ => {
                drop(hs);
                for &k in &kids {
                    t.at(k).await.unwrap();
                }
            }
        }
        me = u.enter();
        me = pause(&u, me).await;
        u.exit(me);
    })
}

proptest! {
    #![proptest_config(support::prop_config(48))]

    /// Parents lend their VCUs to the children they await and get them back: every task
    /// runs, and the VCUs of the tasks running code on a device never exceed 1.0.
    #[test]
    fn awaiting_children_never_oversubscribes_vcus(g in tree()) {
        let n = g.parent.len();
        let rt = parla::Runtime::builder()
            .cpu_threads(g.threads)
            .virtual_gpus(2, BUDGET)
            .build()
            .unwrap();
        let u = Arc::new(InUse::default());
        let (g2, u2) = (Arc::new(g.clone()), u.clone());
        let root = support::within(20, move || {
            rt.block_on(async move {
                let t = TaskSpace::new("T");
                let mut b = task(tree_node(0, g2.clone(), t.clone(), u2)).id(t.at(0));
                if let Some(v) = g2.vcus[0] {
                    b = b.vcus(v);
                }
                b.await
            })
        });
        prop_assert!(root.is_ok(), "{:?}", root);
        prop_assert_eq!(u.ran.load(Ordering::SeqCst), n, "every task ran");
        prop_assert_eq!(u.over.load(Ordering::SeqCst), 0, "VCUs over 1.0");
    }
}

/// Random CPU tasks that wait on one another through channels: task `i` awaits a message
/// from each of its senders (earlier tasks), then sends to the later tasks that await it.
/// They are spawned in a random order, with random VCUs, so a receiver often holds VCUs
/// that a sender waits for.
#[derive(Debug, Clone)]
struct Talk {
    threads: usize,
    /// Task `i`'s senders (tasks before it).
    from: Vec<Vec<usize>>,
    vcus: Vec<Option<f64>>,
    /// The order the tasks are spawned in.
    order: Vec<usize>,
    /// Task `i` sleeps on a timer before it sends.
    sleeps: Vec<bool>,
}

fn talk() -> impl Strategy<Value = Talk> {
    (1usize..=40, 1usize..=4).prop_flat_map(|(n, threads)| {
        (
            proptest::collection::vec(
                proptest::collection::vec(any::<proptest::sample::Index>(), 0..=3),
                n,
            ),
            proptest::collection::vec(
                prop_oneof![
                    Just(None),
                    Just(None),
                    Just(Some(0.5)),
                    Just(Some(1.0)),
                    (0.0f64..=1.0).prop_map(Some)
                ],
                n,
            ),
            Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
            proptest::collection::vec(any::<bool>(), n),
        )
            .prop_map(move |(from, vcus, order, sleeps)| Talk {
                threads,
                from: from
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let mut f: Vec<usize> =
                            f.iter().filter(|_| i > 0).map(|x| x.index(i)).collect();
                        f.sort_unstable();
                        f.dedup();
                        f
                    })
                    .collect(),
                vcus,
                order,
                sleeps,
            })
    })
}

proptest! {
    #![proptest_config(support::prop_config(48))]

    /// Tasks waiting on channels keep their VCUs only while no task waits for them: every
    /// task runs and `block_on` returns (no task waits for good behind a waiting one), and
    /// the VCUs of the tasks running code never exceed 1.0.
    #[test]
    fn tasks_waiting_on_channels_never_keep_out_their_senders(g in talk()) {
        let n = g.from.len();
        let rt = parla::Runtime::builder()
            .cpu_threads(g.threads)
            .build()
            .unwrap();
        let u = Arc::new(InUse::default());
        let u2 = u.clone();
        // (`within` fails the case if `block_on` has not returned after 20 s.)
        support::within(20, move || {
            rt.block_on(async move {
                let mut tx: Vec<Vec<tokio::sync::oneshot::Sender<()>>> =
                    (0..n).map(|_| Vec::new()).collect();
                let mut rx: Vec<Vec<tokio::sync::oneshot::Receiver<()>>> =
                    (0..n).map(|_| Vec::new()).collect();
                for (i, f) in g.from.iter().enumerate() {
                    for &j in f {
                        let (s, r) = tokio::sync::oneshot::channel();
                        tx[j].push(s);
                        rx[i].push(r);
                    }
                }
                let mut bodies: Vec<Option<_>> = tx
                    .into_iter()
                    .zip(rx)
                    .enumerate()
                    .map(|(i, (tx, rx))| {
                        let (u, sleeps) = (u2.clone(), g.sleeps[i]);
                        Some(async move {
                            let mut me = u.enter();
                            for r in rx {
                                u.exit(me);
                                r.await.expect("sender dropped");
                                me = u.enter();
                            }
                            if sleeps {
                                u.exit(me);
                                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                                me = u.enter();
                            }
                            for s in tx {
                                let _ = s.send(());
                            }
                            u.ran.fetch_add(1, Ordering::SeqCst);
                            u.exit(me);
                        })
                    })
                    .collect();
                let mut hs = Vec::new();
                for &i in &g.order {
                    let mut b = task(bodies[i].take().expect("spawned once"));
                    if let Some(v) = g.vcus[i] {
                        b = b.vcus(v);
                    }
                    hs.push(b.spawn());
                }
                for h in hs {
                    h.await.unwrap();
                }
            })
        });
        prop_assert_eq!(u.ran.load(Ordering::SeqCst), n, "every task ran");
        prop_assert_eq!(u.over.load(Ordering::SeqCst), 0, "VCUs over 1.0");
    }
}
