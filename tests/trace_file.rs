//! The Perfetto/Chrome trace written at shutdown.

mod support;

use parla::prelude::*;

#[test]
fn a_trace_file_lists_every_task_with_its_device() {
    let dir = std::env::temp_dir().join(format!("parla-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.json");
    {
        let rt = parla::Runtime::builder()
            .cpu_threads(2)
            .virtual_gpus(1, 1 << 20)
            .trace(&path)
            .build()
            .unwrap();
        support::within(30, move || {
            rt.block_on(async {
                let t = TaskSpace::new("Traced");
                for i in 0..3 {
                    task(async {}).id(t.at(i)).spawn();
                }
                task(async {})
                    .id(t.at("gpu"))
                    .placement(Placement::Gpu(0))
                    .after(t.range(0..3))
                    .spawn();
                task(async { panic!("traced failure") })
                    .id(t.at("bad"))
                    .spawn();
                t.await.ok();
            });
            drop(rt);
        });
    }
    let json = std::fs::read_to_string(&path).expect("trace written at shutdown");
    assert!(json.starts_with("{\"displayTimeUnit\""), "{json}");
    assert!(json.contains("\"traceEvents\":["));
    for i in 0..3 {
        assert!(
            json.contains(&format!("\"name\":\"Traced[{i}]\"")),
            "{json}"
        );
    }
    assert!(json.contains("\"name\":\"Traced[gpu]\""));
    assert!(json.contains("\"device\":\"gpu:0\""));
    assert!(json.contains("\"process_name\""));
    let events = json.matches("\"ph\":\"X\"").count();
    assert_eq!(events, 5, "one event per task");
    assert_eq!(
        json.matches('{').count(),
        json.matches('}').count(),
        "balanced JSON"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_profile_counts_tasks_per_device() {
    let rt = parla::Runtime::builder()
        .cpu_threads(2)
        .virtual_gpus(1, 1 << 20)
        .profile(true)
        .build()
        .unwrap();
    let rt = support::within(30, move || {
        rt.block_on(async {
            for _ in 0..5 {
                task(async {}).spawn();
            }
            for _ in 0..3 {
                task(async {}).placement(Placement::Gpu(0)).spawn();
            }
        });
        rt
    });
    let s = rt.profile_summary().expect("profiling is on");
    assert!(s.contains("cpu:0: 5 tasks"), "{s}");
    assert!(s.contains("gpu:0: 3 tasks"), "{s}");
    assert!(s.contains("scheduler, ns per task: start"), "{s}");
    let off = support::cpu(1);
    assert!(off.profile_summary().is_none());
}
