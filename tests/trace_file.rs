//! The Perfetto/Chrome trace and the profile summary, as users get them from the builder.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use parla::prelude::*;
use serde_json::Value;

/// The trace's events, parsed.
fn events(path: &std::path::Path) -> Vec<Value> {
    let json = std::fs::read_to_string(path).expect("trace written");
    let v: Value = serde_json::from_str(&json).expect("the trace is valid JSON");
    v["traceEvents"]
        .as_array()
        .expect("a traceEvents list")
        .clone()
}

/// A traced runtime of two workers and one virtual GPU of 1 MiB.
fn traced_with_a_gpu(path: &std::path::Path) -> parla::Runtime {
    parla::Runtime::builder()
        .cpu_threads(2)
        .virtual_gpus(1, 1 << 20)
        .trace(path)
        .build()
        .unwrap()
}

/// The task slices by name (each must be unique).
fn task_slices(ev: &[Value]) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for e in ev.iter().filter(|e| e["ph"] == "X" && e["cat"] == "task") {
        let name = e["name"].as_str().unwrap().to_string();
        assert!(
            out.insert(name.clone(), e.clone()).is_none(),
            "two slices for {name}"
        );
    }
    out
}

fn spin(d: Duration) {
    let t = std::time::Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// On every track, the trace's slices nest or are apart, never overlap in part (trace
/// viewers draw a track's slices as a stack).
fn assert_tracks_nest(ev: &[Value]) {
    // Each track's slices: start, end, and what it is.
    type Slice = (f64, f64, String);
    let mut tracks: HashMap<(u64, u64), Vec<Slice>> = HashMap::new();
    for e in ev.iter().filter(|e| e["ph"] == "X") {
        let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
        let key = (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap());
        let what = format!("{} {}", e["cat"], e["name"]);
        tracks.entry(key).or_default().push((ts, ts + dur, what));
    }
    // (Times are in microseconds with three decimals.)
    const EPS: f64 = 0.002;
    for (track, slices) in &tracks {
        for (k, a) in slices.iter().enumerate() {
            for b in &slices[k + 1..] {
                let apart = a.1 <= b.0 + EPS || b.1 <= a.0 + EPS;
                let nested = (a.0 <= b.0 + EPS && b.1 <= a.1 + EPS)
                    || (b.0 <= a.0 + EPS && a.1 <= b.1 + EPS);
                assert!(
                    apart || nested,
                    "on track {track:?}, {a:?} and {b:?} overlap"
                );
            }
        }
    }
}

/// Four tasks, `t.at(10 + 4 * i)` and on, that each spin 300 us: work for the workers
/// between the polls of a task that suspends.
fn spawn_busy(t: &TaskSpace, i: u64) {
    for j in 0..4 {
        task(async { spin(Duration::from_micros(300)) })
            .id(t.at(10 + 4 * i + j))
            .spawn();
    }
}

/// The trace of `body`, run by `block_on` on a traced runtime of 2 workers that is then
/// dropped, parsed (its file removed).
fn trace_of<F>(name: &str, body: impl FnOnce() -> F + Send + 'static) -> Vec<Value>
where
    F: std::future::Future<Output = ()>,
{
    let path = support::trace_path(name);
    let rt = support::traced(2, &path);
    support::within(30, move || {
        rt.block_on(body());
        drop(rt);
    });
    let ev = events(&path);
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
    ev
}

#[test]
fn a_trace_has_one_slice_per_task_with_its_outcome_and_arrows() {
    let path = support::trace_path("trace");
    let rt = traced_with_a_gpu(&path);
    support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("Traced");
            for i in 0..3 {
                task(async { spin(Duration::from_millis(1)) })
                    .id(t.at(i))
                    .spawn();
            }
            task(async {})
                .id(t.at("gpu"))
                .placement(Placement::Gpu(0))
                .after(t.range(0..3))
                .spawn();
            task(async { panic!("traced failure") })
                .id(t.at("bad"))
                .after(t.at(0))
                .spawn();
            task(async {}).id(t.at("orphan")).after(t.at("bad")).spawn();
            t.await.ok();
        });
        drop(rt);
    });
    let ev = events(&path);
    let slices = task_slices(&ev);
    assert_eq!(slices.len(), 6, "one slice per task: {slices:?}");
    for i in 0..3 {
        let s = &slices[&format!("Traced[{i}]")];
        assert_eq!(s["args"]["outcome"], "ok");
        assert_eq!(s["args"]["device"], "cpu:0");
        assert_eq!(s["pid"], 0, "CPU tasks are on the workers' process");
        assert!(s["tid"].as_u64().unwrap() >= 1, "on a worker's track");
        assert!(
            s["dur"].as_f64().unwrap() >= 1000.0,
            "it spun for 1 ms: {s}"
        );
    }
    let gpu = &slices["Traced[gpu]"];
    assert_eq!(gpu["args"]["device"], "gpu:0");
    assert_eq!(gpu["args"]["outcome"], "ok");
    let bad = &slices["Traced[bad]"];
    assert_eq!(bad["args"]["outcome"], "failed");
    assert!(
        bad["args"]["error"]
            .as_str()
            .unwrap()
            .contains("traced failure"),
        "{bad}"
    );
    let orphan = &slices["Traced[orphan]"];
    assert_eq!(orphan["args"]["outcome"], "never ran");
    assert_eq!(orphan["tid"], 0, "on the never-ran track");
    assert!(orphan["args"]["device"].is_null(), "never mapped: {orphan}");
    assert_eq!(orphan["dur"].as_f64().unwrap(), 0.0);
    assert!(
        orphan["args"]["error"]
            .as_str()
            .unwrap()
            .contains("Traced[bad]")
    );

    // Arrows: an "s" end on the dependency's slice, an "f" end on the dependent's.
    let at =
        |e: &Value, s: &Value| e["pid"] == s["pid"] && e["tid"] == s["tid"] && e["ts"] == s["ts"];
    let flows = |ph: &str| -> Vec<&Value> { ev.iter().filter(|e| e["ph"] == ph).collect() };
    let (starts, ends) = (flows("s"), flows("f"));
    let edge = |from: &str, to: &str| {
        let (a, b) = (&slices[from], &slices[to]);
        starts.iter().any(|s| {
            at(s, a)
                && ends
                    .iter()
                    .any(|f| f["id"] == s["id"] && at(f, b) && f["ts"].as_f64() >= s["ts"].as_f64())
        })
    };
    for i in 0..3 {
        assert!(
            edge(&format!("Traced[{i}]"), "Traced[gpu]"),
            "arrow {i} -> gpu"
        );
    }
    assert!(edge("Traced[0]", "Traced[bad]"));
    assert!(
        !edge("Traced[gpu]", "Traced[0]"),
        "arrows point from dependency to dependent"
    );
    assert_eq!(
        starts.len(),
        5,
        "one arrow per dependency that ran: {starts:?}"
    );
    let names: Vec<_> = ev
        .iter()
        .filter(|e| e["ph"] == "M")
        .map(|e| &e["args"]["name"])
        .collect();
    assert!(names.iter().any(|n| *n == "CPU workers"), "{names:?}");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn a_user_span_inside_a_task_nests_in_its_slice() {
    let path = support::trace_path("nest");
    let rt = support::traced(2, &path);
    support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("Outer");
            task(async {
                spin(Duration::from_micros(200));
                tracing::info_span!("inner step").in_scope(|| spin(Duration::from_millis(1)));
                spin(Duration::from_micros(200));
            })
            .id(t.at(0))
            .await
        })
        .unwrap();
        drop(rt);
    });
    let ev = events(&path);
    let outer = &task_slices(&ev)["Outer[0]"];
    let inner: Vec<_> = ev
        .iter()
        .filter(|e| e["ph"] == "X" && e["name"] == "inner step")
        .collect();
    assert_eq!(inner.len(), 1, "{ev:?}");
    let inner = inner[0];
    assert_eq!(inner["cat"], "user");
    assert_eq!(
        (&inner["pid"], &inner["tid"]),
        (&outer["pid"], &outer["tid"]),
        "same track"
    );
    let (o0, od) = (
        outer["ts"].as_f64().unwrap(),
        outer["dur"].as_f64().unwrap(),
    );
    let (i0, id) = (
        inner["ts"].as_f64().unwrap(),
        inner["dur"].as_f64().unwrap(),
    );
    assert!(
        i0 >= o0 && i0 + id <= o0 + od,
        "nested: outer {outer} inner {inner}"
    );
    assert!(id >= 1000.0);
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn the_summary_counts_the_tasks_run() {
    let rt = parla::Runtime::builder()
        .cpu_threads(2)
        .virtual_gpus(1, 1 << 20)
        .profile(true)
        .build()
        .unwrap();
    let rt = support::within(30, move || {
        rt.block_on(async {
            let mut hs = Vec::new();
            for _ in 0..5 {
                hs.push(task(async {}).spawn());
            }
            for _ in 0..3 {
                hs.push(task(async {}).placement(Placement::Gpu(0)).spawn());
            }
            // A chain of three 2 ms tasks: the critical path is at least 6 ms.
            let c = TaskSpace::new("Chain");
            for i in 0..3 {
                let mut b = task(async { spin(Duration::from_millis(2)) }).id(c.at(i));
                if i > 0 {
                    b = b.after(c.at(i - 1));
                }
                hs.push(b.spawn());
            }
            let bad = task(async { panic!("counted") }).spawn();
            let never = task(async {}).after(&bad).spawn();
            for h in hs {
                h.await.unwrap();
            }
            assert!(bad.await.is_err());
            assert!(never.await.is_err());
        });
        rt
    });
    let s = rt.profile_summary().expect("profiling is on");
    assert_eq!(s.tasks_run, 12, "{s}");
    assert_eq!(s.tasks_failed, 1, "{s}");
    assert_eq!(s.tasks_never_ran, 1, "{s}");
    let dev = |n: &str| {
        s.devices
            .iter()
            .find(|d| d.device == n)
            .unwrap_or_else(|| panic!("{s}"))
    };
    assert_eq!(dev("cpu:0").tasks, 9, "{s}");
    assert_eq!(dev("cpu:0").failed, 1, "{s}");
    assert_eq!(dev("gpu:0").tasks, 3, "{s}");
    assert!(s.critical_path >= Duration::from_millis(6), "{s}");
    assert!(s.makespan >= s.critical_path, "{s}");
    assert!(dev("cpu:0").busy > 0.0 && dev("cpu:0").busy <= 1.0, "{s}");
    assert_eq!(s.wait_dependencies.count, 12, "{s}");
    assert!(s.overhead_per_task.is_some(), "{s}");
    let text = s.to_string();
    assert!(
        text.contains("12 tasks run (1 failed), 1 never ran"),
        "{text}"
    );
    assert!(text.contains("critical path"), "{text}");
    let off = support::cpu(1);
    assert!(off.profile_summary().is_none());
}

/// Bodies that block their worker (`std::thread::sleep`, blocking I/O) count as bodies for
/// as long as they block: the runtime's own time per task stays what it is, not zero.
#[test]
fn the_overhead_is_not_hidden_by_bodies_that_block() {
    let rt = parla::Runtime::builder()
        .cpu_threads(2)
        .profile(true)
        .build()
        .unwrap();
    let rt = support::within(30, move || {
        rt.block_on(async {
            let hs: Vec<_> = (0..20)
                .map(|_| task(async { std::thread::sleep(Duration::from_millis(2)) }).spawn())
                .collect();
            for h in hs {
                h.await.unwrap();
            }
        });
        rt
    });
    let s = rt.profile_summary().expect("profiling is on");
    assert_eq!(s.tasks_run, 20, "{s}");
    let overhead = s.overhead_per_task.expect("workers reported");
    assert!(overhead > Duration::ZERO, "{s}");
}

#[test]
fn a_trace_file_that_cannot_be_created_is_an_error_naming_it() {
    let dir = support::trace_path("uncreatable");
    let root = dir.parent().unwrap().to_path_buf();
    let path = root.join("no such directory").join("trace.json");
    let r = parla::Runtime::builder()
        .cpu_threads(1)
        .trace(&path)
        .build();
    let _ = std::fs::remove_dir_all(&root);
    let e = r.expect_err("the trace's directory does not exist");
    assert!(matches!(e, parla::Error::Config(_)), "{e:?}");
    assert!(e.to_string().contains("no such directory"), "{e}");
}

/// A program that ends without dropping its runtime (`std::process::exit`, a signal, a
/// watchdog killing a hung program) still leaves the tasks recorded up to a moment before:
/// the file gets them while the runtime lives, whole events at a time.
#[test]
fn a_trace_gets_its_events_while_the_runtime_lives() {
    let path = support::trace_path("live");
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .trace(&path)
        .build()
        .unwrap();
    rt.block_on(async {
        let t = TaskSpace::new("Live");
        for i in 0..3 {
            task(async {}).id(t.at(i)).await.unwrap();
        }
    });
    // The runtime, and the trace, stay open: the file has the three slices within a while
    // (a bound, not a timing: the flush comes every 100 ms).
    let t0 = std::time::Instant::now();
    let mut text = String::new();
    while t0.elapsed() < Duration::from_secs(20) {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if (0..3).all(|i| text.contains(&format!("\"Live[{i}]\""))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        (0..3).all(|i| text.contains(&format!("\"Live[{i}]\""))),
        "the live trace lacks tasks: {text}"
    );
    assert!(!text.trim_end().ends_with("]}"), "still open");
    // It ends at a whole event: closing it makes valid JSON.
    let closed = format!("{}\n]}}", text.trim_end().trim_end_matches(','));
    assert!(
        serde_json::from_str::<Value>(&closed).is_ok(),
        "cut inside an event: {text}"
    );
    drop(rt);
    let slices = task_slices(&events(&path));
    assert!(slices.contains_key("Live[2]"));
}

/// A trace's file holds its header as soon as the runtime is built, so that a program
/// that exits before the first flush (every 100 ms) leaves a trace readers open, with the
/// events written so far: none here. (The file was empty.)
#[test]
fn a_trace_file_has_its_header_from_the_start() {
    let path = support::trace_path("header");
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .trace(&path)
        .build()
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let closed = format!("{}\n]}}", text.trim_end());
    let v: Value = serde_json::from_str(&closed).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(v["traceEvents"].is_array(), "{text}");
    drop(rt);
    assert!(serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap()).is_ok());
}

/// Two runtimes alive at once and given one trace path (a `.trace("trace.json")` in each test
/// of a suite that runs its tests in parallel) each write a whole trace: the second into
/// `NAME.2.EXT`, as it says on stderr.
#[test]
fn runtimes_given_one_trace_path_at_once_write_a_file_each() {
    let path = support::trace_path("shared");
    let second = path.with_file_name(format!(
        "{}.2.json",
        path.file_stem().unwrap().to_string_lossy()
    ));
    let build = || {
        parla::Runtime::builder()
            .cpu_threads(1)
            .trace(&path)
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    for (rt, name) in [(&a, "A"), (&b, "B")] {
        rt.block_on(async move {
            let t = TaskSpace::new(name);
            for i in 0..20 {
                task(async {}).id(t.at(i)).spawn();
            }
            t.await.unwrap();
        });
    }
    drop((a, b));
    let (first, other) = (task_slices(&events(&path)), task_slices(&events(&second)));
    assert!(first.contains_key("A[19]") && !first.contains_key("B[0]"));
    assert!(other.contains_key("B[19]") && !other.contains_key("A[0]"));
    let _ = std::fs::remove_file(&second);
}

/// Tasks that suspend (they sleep, and await a channel) among tasks that finish in one
/// poll: on every track, slices nest or are apart, never overlap in part (trace viewers
/// draw a track's slices as a stack); each task is one `task` slice, and a suspended
/// one's polls are `poll` slices on the workers. (The slice of a task that suspended ran
/// from its first poll to its completion on its first worker's track, across the tasks
/// that worker ran meanwhile.)
#[test]
fn slices_on_a_track_nest_when_tasks_suspend() {
    let ev = trace_of("suspend", || async {
        let t = TaskSpace::new("S");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        task(async move { rx.await.is_ok() }).id(t.at(100)).spawn();
        for i in 0..8 {
            task(async move {
                spin(Duration::from_micros(100));
                tokio::time::sleep(Duration::from_millis(2 + i % 3)).await;
                spin(Duration::from_micros(100));
            })
            .id(t.at(i))
            .spawn();
            spawn_busy(&t, i);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        tx.send(()).unwrap();
        (&t).await.unwrap();
    });
    let tasks = task_slices(&ev);
    assert_eq!(tasks.len(), 8 + 32 + 1, "one slice per task");
    let polls = |name: &str| {
        ev.iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == "poll" && e["name"] == name)
            .count()
    };
    for i in (0..8).chain([100]) {
        assert!(polls(&format!("S[{i}]")) >= 2, "S[{i}] suspended: {ev:?}");
    }
    assert_eq!(
        polls("S[10]"),
        0,
        "a task done in one poll has no poll slices"
    );
    assert_tracks_nest(&ev);
}

/// A CPU task that waits (a sleep between two short spins) keeps the CPU busy only while
/// it is polled: the summary's busy time is its polls, not its whole life.
#[test]
fn a_task_that_waits_is_not_busy_while_it_waits() {
    let rt = parla::Runtime::builder()
        .cpu_threads(1)
        .profile(true)
        .build()
        .unwrap();
    let rt = support::within(30, move || {
        rt.block_on(async {
            task(async {
                spin(Duration::from_millis(1));
                tokio::time::sleep(Duration::from_millis(100)).await;
                spin(Duration::from_millis(1));
            })
            .await
            .unwrap();
        });
        rt
    });
    let s = rt.profile_summary().expect("profiling is on");
    let cpu = s.devices.iter().find(|d| d.device == "cpu:0").expect("cpu");
    assert_eq!(cpu.tasks, 1, "{s}");
    assert!(s.makespan >= Duration::from_millis(100), "{s}");
    assert!(cpu.busy > 0.0 && cpu.busy < 0.5, "busy while it slept: {s}");
}

/// A future that a task starts with `tokio::spawn` inside the task's span
/// (`in_current_span`) enters that span as it runs, after the task finished too: the trace
/// still counts only the task's own polls. The task, done in one poll, stays on its
/// worker's track with no `poll` slices.
#[test]
fn futures_in_a_tasks_span_are_not_its_polls() {
    use tracing::Instrument;
    let ev = trace_of("in-span", || async {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let t = TaskSpace::new("Parent");
        let child = task(async move {
            let h = tokio::spawn(
                async move {
                    for _ in 0..3 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let _ = tx.send(());
                }
                .in_current_span(),
            );
            drop(h);
        })
        .id(t.at(0))
        .spawn();
        child.await.unwrap();
        rx.await.unwrap();
    });
    let parent = &task_slices(&ev)["Parent[0]"];
    assert!(
        parent["tid"].as_u64().unwrap() < 1 << 20,
        "on a worker's track: {parent}"
    );
    let polls = ev
        .iter()
        .filter(|e| e["cat"] == "poll" && e["name"] == "Parent[0]")
        .count();
    assert_eq!(polls, 0, "{ev:?}");
}

/// A dependent that fails early (another of its dependencies panicked) while one of its
/// dependencies has not started yet: no arrow points back in time, and every arrow has
/// both ends. (The late dependency's arrow started after the dependent's end.)
#[test]
fn dependency_arrows_never_point_back_in_time() {
    let ev = trace_of("arrows", || async {
        let t = TaskSpace::new("B");
        let (open, shut) = tokio::sync::oneshot::channel::<()>();
        task(async move { shut.await.is_ok() })
            .id(t.at("gate"))
            .spawn();
        task(async {}).id(t.at("late")).after(t.at("gate")).spawn();
        task(async { panic!("early failure") })
            .id(t.at("bad"))
            .spawn();
        let dependent = task(async {})
            .id(t.at("dependent"))
            .after([t.at("late"), t.at("bad")])
            .await;
        assert!(dependent.is_err());
        // Only now does the late dependency run.
        open.send(()).unwrap();
        let _ = (&t).await;
    });
    let ends = |ph: &str| -> HashMap<u64, f64> {
        ev.iter()
            .filter(|e| e["ph"] == ph)
            .map(|e| (e["id"].as_u64().unwrap(), e["ts"].as_f64().unwrap()))
            .collect()
    };
    let (from, to) = (ends("s"), ends("f"));
    let mut ids: Vec<_> = from.keys().collect();
    ids.sort();
    let mut ends_at: Vec<_> = to.keys().collect();
    ends_at.sort();
    assert_eq!(ids, ends_at, "every arrow has both ends: {ev:?}");
    assert!(!ids.is_empty(), "the arrows of the tasks that ran: {ev:?}");
    for (id, s) in &from {
        assert!(
            *s <= to[id] + 0.002,
            "arrow {id} points back in time: {ev:?}"
        );
    }
}

/// A span entered in a task and left after an `.await` (its guard held across it), while
/// other tasks run on the workers: it is an asynchronous slice of its own (`b` and `e`),
/// not a slice of a worker's track reaching over the tasks run in between; a span entered
/// and left in one poll stays a slice nested in that poll.
#[test]
fn a_span_held_across_an_await_is_no_slice_of_a_worker() {
    let ev = trace_of("guard", || async {
        let t = TaskSpace::new("G");
        for i in 0..4 {
            task(async move {
                let span = tracing::info_span!("held");
                let _g = span.enter();
                spin(Duration::from_micros(100));
                tokio::time::sleep(Duration::from_millis(2)).await;
                spin(Duration::from_micros(100));
                drop(_g);
                tracing::info_span!("inside").in_scope(|| spin(Duration::from_micros(50)));
            })
            .id(t.at(i))
            .spawn();
            spawn_busy(&t, i);
        }
        (&t).await.unwrap();
    });
    assert_tracks_nest(&ev);
    let count = |ph: &str, name: &str| {
        ev.iter()
            .filter(|e| e["ph"] == ph && e["name"] == name)
            .count()
    };
    assert_eq!((count("b", "held"), count("e", "held")), (4, 4), "{ev:?}");
    assert_eq!(count("X", "held"), 0, "{ev:?}");
    assert_eq!(count("X", "inside"), 4, "{ev:?}");
}

/// A task's `memory` in the trace is what its admission reserved: its own bytes and those
/// of its arrays' copies on its device (it left the copies out: 0 for a task that only
/// read an 8 KiB array on a GPU).
#[test]
fn a_tasks_memory_in_the_trace_counts_its_arrays_copies() {
    let path = support::trace_path("trace-data");
    let rt = traced_with_a_gpu(&path);
    support::within(30, move || {
        rt.block_on(async {
            let a = parla::array::PArray::from(ndarray::Array1::<u8>::zeros(8192));
            let b = a.clone();
            task(async move { b.read().map(|v| v.len()) })
                .id(TaskSpace::new("D").at("gpu"))
                .placement(Placement::Gpu(0))
                .memory(100)
                .reads(&a)
                .await
                .unwrap()
                .unwrap();
        });
        drop(rt);
    });
    let slices = task_slices(&events(&path));
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
    assert_eq!(slices["D[gpu]"]["args"]["memory"], 100 + 8192);
}
