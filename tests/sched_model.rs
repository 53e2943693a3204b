//! Random programs against a sequential reference model.
//!
//! A program is a set of tasks spawned in random order (so dependencies on ids make forward
//! references), some depending on ids that are never spawned, some with constraints no
//! device meets, some panicking, some awaiting an id inside their body (plainly, or in a
//! `select!` or `join!` with a timer), some spawning children and awaiting them in a loop
//! (fork-join, default VCUs), on the CPU and two virtual GPUs with random VCUs and memory.
//! The model computes what every handle and every await inside a body must resolve to; the
//! run must agree, with VCUs and memory within each device's capacity at every instant
//! (lending included), every task run at most once and only after its dependencies, and
//! nothing hanging (each case runs under a deadline).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use parla::prelude::*;
use proptest::prelude::*;

const BUDGET: i64 = 1000;
const DEVICES: usize = 3;

/// How a task waits for an id inside its body.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wait {
    Plain(usize),
    /// `select!` between the id and a timer that keeps firing.
    Select(usize),
    /// `join!` of the id and a timer.
    Join(usize),
}

#[derive(Debug, Clone)]
struct Spec {
    deps: Vec<usize>,
    panics: bool,
    unsatisfiable: bool,
    placement: usize,
    vcus: Option<f64>,
    memory: i64,
    /// Children spawned and awaited one after the other; `true`: the child panics.
    children: Vec<bool>,
    wait: Option<Wait>,
}

#[derive(Debug, Clone)]
struct Program {
    threads: usize,
    /// Ids `0..tasks.len()` are spawned; ids from `tasks.len()` up never are.
    tasks: Vec<Spec>,
    order: Vec<usize>,
}

fn placements(i: usize) -> Vec<Placement> {
    match i {
        0 => vec![Placement::Cpu],
        1 => vec![Placement::AnyGpu],
        2 => vec![Placement::Gpu(1)],
        _ => vec![Placement::Cpu, Placement::AnyGpu],
    }
}

const GHOSTS: usize = 3;

fn program() -> impl Strategy<Value = Program> {
    (1usize..=40, 1usize..=3).prop_flat_map(|(n, threads)| {
        let spec = (
            proptest::collection::vec(0..n + GHOSTS, 0..3),
            proptest::bool::weighted(0.1),
            proptest::bool::weighted(0.05),
            0usize..4,
            prop_oneof![
                3 => Just(None),
                1 => Just(Some(0.0)),
                1 => Just(Some(0.5)),
                1 => Just(Some(1.0)),
            ],
            0..=BUDGET,
            proptest::collection::vec(proptest::bool::weighted(0.15), 0..3),
            proptest::option::weighted(0.3, (0..n + GHOSTS, 0u8..3)),
        );
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        let rank = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        (order, rank, proptest::collection::vec(spec, n)).prop_map(move |(order, rank, raw)| {
            // Dependencies and awaits go to lower ranks (or ghosts): no cycles, while the
            // spawn order makes forward references.
            let lower = |i: usize, j: usize| j >= n || rank[j] < rank[i];
            let tasks = raw
                .into_iter()
                .enumerate()
                .map(
                    |(
                        i,
                        (deps, panics, unsatisfiable, placement, vcus, memory, children, wait),
                    )| {
                        let mut deps: Vec<usize> =
                            deps.into_iter().filter(|&j| lower(i, j)).collect();
                        deps.sort_unstable();
                        deps.dedup();
                        let wait = wait
                            .filter(|&(j, _)| lower(i, j))
                            .map(|(j, how)| match how {
                                0 => Wait::Plain(j),
                                1 => Wait::Select(j),
                                _ => Wait::Join(j),
                            });
                        // Memory only for tasks that wait on nothing inside their body: a task
                        // holding memory while it waits could starve what it waits for, and the
                        // model does not predict deadlocks.
                        let leaf = children.is_empty() && wait.is_none();
                        Spec {
                            deps,
                            panics,
                            unsatisfiable,
                            placement,
                            vcus,
                            memory: if leaf { memory } else { 0 },
                            children,
                            wait,
                        }
                    },
                )
                .collect();
            Program {
                threads,
                tasks,
                order,
            }
        })
    })
}

/// What a handle or an await resolves to, as the model sees it.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// The task's value: how many of its children succeeded.
    Ok(usize),
    Panicked,
    Unsatisfiable,
    NeverSpawned,
    /// A dependency failed; the root is one of these ids.
    DepFailed(BTreeSet<usize>),
}

struct Model {
    out: Vec<Expect>,
    /// Whether the id's outcome can only come from the stall resolver (it involves an id
    /// never spawned): a timer loop waiting on it would keep the runtime busy for good.
    ghostly: Vec<bool>,
}

fn model(p: &Program) -> Model {
    let n = p.tasks.len();
    let total = n + GHOSTS;
    let mut out = vec![Expect::NeverSpawned; total];
    let mut roots: Vec<BTreeSet<usize>> = (0..total).map(|i| BTreeSet::from([i])).collect();
    let mut ghostly = vec![true; total];
    let mut done = vec![false; n];
    // Tasks in an order where dependencies and awaits come first.
    let mut left: Vec<usize> = (0..n).collect();
    while !left.is_empty() {
        let pos = left
            .iter()
            .position(|&i| {
                let s = &p.tasks[i];
                let ready = |j: usize| j >= n || done[j];
                s.deps.iter().all(|&j| ready(j)) && s.wait.is_none_or(|w| ready(target(w)))
            })
            .expect("acyclic");
        let i = left.remove(pos);
        let s = &p.tasks[i];
        let failed: Vec<usize> = s
            .deps
            .iter()
            .copied()
            .filter(|&j| !matches!(out[j], Expect::Ok(_)))
            .collect();
        ghostly[i] =
            s.deps.iter().any(|&j| ghostly[j]) || s.wait.is_some_and(|w| ghostly[target(w)]);
        out[i] = if s.unsatisfiable {
            Expect::Unsatisfiable
        } else if !failed.is_empty() {
            let r: BTreeSet<usize> = failed.iter().flat_map(|&j| roots[j].clone()).collect();
            roots[i] = r.clone();
            Expect::DepFailed(r)
        } else if s.panics {
            Expect::Panicked
        } else {
            Expect::Ok(s.children.iter().filter(|&&c| !c).count())
        };
        done[i] = true;
    }
    Model { out, ghostly }
}

fn target(w: Wait) -> usize {
    match w {
        Wait::Plain(j) | Wait::Select(j) | Wait::Join(j) => j,
    }
}

/// Whether an error matches what the model expects of id `j`.
fn matches(e: &TaskError, want: &Expect, m: &Model, p: &Program, j: usize) -> bool {
    let name = |k: usize| format!("M[{k}]");
    match (e, want) {
        (TaskError::Panicked { .. }, Expect::Panicked) => true,
        (TaskError::Unsatisfiable { .. }, Expect::Unsatisfiable) => true,
        (TaskError::NeverSpawned { id }, Expect::NeverSpawned) => *id == name(j),
        (
            TaskError::DependencyFailed {
                dependency, cause, ..
            },
            Expect::DepFailed(r),
        ) => {
            r.iter().any(|&k| *dependency == name(k))
                && match &**cause {
                    TaskError::Panicked { .. } => r.iter().any(|&k| m.out[k] == Expect::Panicked),
                    TaskError::Unsatisfiable { .. } => {
                        r.iter().any(|&k| m.out[k] == Expect::Unsatisfiable)
                    }
                    TaskError::NeverSpawned { .. } => r.iter().any(|&k| k >= p.tasks.len()),
                    _ => false,
                }
        }
        _ => false,
    }
}

struct Check {
    runs: Vec<AtomicUsize>,
    done: Vec<AtomicBool>,
    vcu: [AtomicI64; DEVICES],
    mem: [AtomicI64; DEVICES],
    early: AtomicUsize,
    over: AtomicUsize,
}

/// A stretch of a body that runs (between awaits): its VCUs and memory count on its device.
struct Segment<'a> {
    c: &'a Check,
    dev: usize,
    vcu: i64,
    mem: i64,
}

fn segment(c: &Check, mem: i64) -> Segment<'_> {
    let info = current_task().expect("inside a task");
    let dev = support::slot(current_device());
    let vcu = (info.vcus() * 1e6).round() as i64;
    if c.vcu[dev].fetch_add(vcu, Ordering::SeqCst) + vcu > 1_000_000 {
        c.over.fetch_add(1, Ordering::SeqCst);
    }
    if c.mem[dev].fetch_add(mem, Ordering::SeqCst) + mem > BUDGET {
        c.over.fetch_add(1, Ordering::SeqCst);
    }
    Segment { c, dev, vcu, mem }
}

impl Drop for Segment<'_> {
    fn drop(&mut self) {
        self.c.vcu[self.dev].fetch_sub(self.vcu, Ordering::SeqCst);
        self.c.mem[self.dev].fetch_sub(self.mem, Ordering::SeqCst);
    }
}

async fn wait_for(t: &TaskSpace, w: Wait) -> Result<(), TaskError> {
    match w {
        Wait::Plain(j) => t.at(j).await,
        Wait::Select(j) => {
            let r = t.at(j);
            loop {
                tokio::select! {
                    v = &r => break v,
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                }
            }
        }
        Wait::Join(j) => {
            let (v, ()) = tokio::join!(t.at(j), tokio::time::sleep(Duration::from_millis(1)));
            v
        }
    }
}

type Seen = Option<Result<(), TaskError>>;

fn run(p: Program) -> Result<(), TestCaseError> {
    let n = p.tasks.len();
    let m = model(&p);
    // A timer loop on an id only the stall resolver can settle would keep the runtime busy
    // for good (correctly: the runtime waits while a timer can still fire): not generated.
    let p = {
        let mut p = p;
        for s in &mut p.tasks {
            if let Some(w @ (Wait::Select(_) | Wait::Join(_))) = s.wait
                && m.ghostly[target(w)]
            {
                s.wait = Some(Wait::Plain(target(w)));
            }
        }
        p
    };
    let check = Arc::new(Check {
        runs: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        done: (0..n).map(|_| AtomicBool::new(false)).collect(),
        vcu: Default::default(),
        mem: Default::default(),
        early: AtomicUsize::new(0),
        over: AtomicUsize::new(0),
    });
    let rt = parla::Runtime::builder()
        .cpu_threads(p.threads)
        .cpu_memory(BUDGET as u64)
        .virtual_gpus(2, BUDGET as u64)
        .build()
        .unwrap();
    let (c, p2) = (check.clone(), p.clone());
    let results = support::within(30, move || {
        rt.block_on(async move {
            let t = TaskSpace::new("M");
            let mut handles: Vec<Option<TaskHandle<(Seen, usize)>>> =
                (0..n).map(|_| None).collect();
            for &i in &p2.order {
                let s = p2.tasks[i].clone();
                let (c, t2) = (c.clone(), t.clone());
                let deps = s.deps.clone();
                let body = async move {
                    c.runs[i].fetch_add(1, Ordering::SeqCst);
                    let seg = segment(&c, s.memory);
                    if deps
                        .iter()
                        .any(|&j| j < n && !c.done[j].load(Ordering::SeqCst))
                    {
                        c.early.fetch_add(1, Ordering::SeqCst);
                    }
                    drop(seg);
                    let seen = match s.wait {
                        Some(w) => Some(wait_for(&t2, w).await),
                        None => None,
                    };
                    let mut ok = 0;
                    for &panics in &s.children {
                        let c2 = c.clone();
                        let kid = task(async move {
                            let _seg = segment(&c2, 0);
                            if panics {
                                panic!("a child fails on purpose");
                            }
                        })
                        .spawn();
                        if kid.await.is_ok() {
                            ok += 1;
                        }
                    }
                    let _seg = segment(&c, s.memory);
                    c.done[i].store(true, Ordering::SeqCst);
                    if s.panics {
                        panic!("task {i} fails on purpose");
                    }
                    (seen, ok)
                };
                let mut b = task(body)
                    .id(t.at(i))
                    .placement(placements(s.placement))
                    .memory(s.memory as u64)
                    .after(
                        p2.tasks[i]
                            .deps
                            .iter()
                            .map(|&j| t.at(j))
                            .collect::<Vec<_>>(),
                    );
                if s.unsatisfiable {
                    b = b.vcus(2.0);
                } else if let Some(v) = s.vcus {
                    b = b.vcus(v);
                }
                handles[i] = Some(b.spawn());
            }
            let mut out = Vec::with_capacity(n);
            for h in handles {
                out.push(h.expect("spawned").await);
            }
            out
        })
    });
    for (i, r) in results.iter().enumerate() {
        let want = &m.out[i];
        match r {
            Ok((seen, ok)) => {
                prop_assert_eq!(&Expect::Ok(*ok), want, "task {}", i);
                if let Some(w) = p.tasks[i].wait {
                    let j = target(w);
                    let seen = seen.as_ref().expect("the body waited");
                    match (seen, &m.out[j]) {
                        (Ok(()), Expect::Ok(_)) => {}
                        (Err(e), exp) => prop_assert!(
                            matches(e, exp, &m, &p, j),
                            "task {} awaited M[{}]: {:?}, expected {:?}",
                            i,
                            j,
                            e,
                            exp
                        ),
                        (seen, exp) => prop_assert!(
                            false,
                            "task {} awaited M[{}]: {:?}, expected {:?}",
                            i,
                            j,
                            seen,
                            exp
                        ),
                    }
                }
            }
            Err(e) => prop_assert!(
                matches(e, want, &m, &p, i),
                "task {}: {:?}, expected {:?}",
                i,
                e,
                want
            ),
        }
        let should_run = !matches!(want, Expect::Unsatisfiable | Expect::DepFailed(_));
        prop_assert_eq!(
            check.runs[i].load(Ordering::SeqCst),
            usize::from(should_run),
            "task {} ran",
            i
        );
    }
    prop_assert_eq!(
        check.early.load(Ordering::SeqCst),
        0,
        "a task ran before a dependency"
    );
    prop_assert_eq!(
        check.over.load(Ordering::SeqCst),
        0,
        "VCUs or memory over capacity"
    );
    Ok(())
}

proptest! {
    #![proptest_config(support::prop_config(32))]

    #[test]
    fn random_programs_agree_with_the_model(p in program()) {
        run(p)?;
    }
}
