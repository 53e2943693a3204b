//! `PARLA_TRACE` with several runtimes in one process (alone in its test binary: the
//! variable is read by every runtime the process builds).

mod support;

use parla::prelude::*;
use serde_json::Value;

/// The names of the task slices in the trace at `path` (which must be valid JSON).
fn task_names(path: &std::path::Path) -> Vec<String> {
    let json = std::fs::read_to_string(path).expect("trace written");
    let v: Value = serde_json::from_str(&json).expect("the trace is valid JSON");
    let mut names: Vec<String> = v["traceEvents"]
        .as_array()
        .expect("a traceEvents list")
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "task")
        .map(|e| e["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

/// Two runtimes alive at once, then a third: each writes a file of its own, whole. Then
/// the variables set empty, which count as unset.
#[test]
fn each_runtime_traced_through_the_environment_writes_its_own_file() {
    let path = support::trace_path("env");
    let dir = path.parent().unwrap().to_path_buf();
    // SAFETY: this test binary runs this one test; no other thread reads the environment.
    unsafe { std::env::set_var("PARLA_TRACE", &path) };
    let run = |rt: &parla::Runtime, space: &'static str, n: i64| {
        rt.block_on(async move {
            let t = TaskSpace::new(space);
            for i in 0..n {
                task(async {}).id(t.at(i)).spawn();
            }
            t.await
        })
    };
    let (a, b) = (support::cpu(2), support::cpu(2));
    run(&a, "A", 5).unwrap();
    run(&b, "B", 3).unwrap();
    drop((a, b));
    let c = support::cpu(1);
    run(&c, "C", 2).unwrap();
    drop(c);
    // SAFETY: as above.
    unsafe { std::env::remove_var("PARLA_TRACE") };
    let files = [
        path.clone(),
        dir.join("trace.2.json"),
        dir.join("trace.3.json"),
    ];
    let names: Vec<Vec<String>> = files.iter().map(|f| task_names(f)).collect();
    let _ = std::fs::remove_dir_all(&dir);
    let want = |s: &str, n: i64| (0..n).map(|i| format!("{s}[{i}]")).collect::<Vec<_>>();
    assert_eq!(names[0], want("A", 5));
    assert_eq!(names[1], want("B", 3));
    assert_eq!(names[2], want("C", 2));

    // Set empty, the variables count as unset: no trace, no profile.
    // SAFETY: as above.
    unsafe {
        std::env::set_var("PARLA_TRACE", "");
        std::env::set_var("PARLA_PROFILE", "");
    }
    let d = support::cpu(1);
    let traced = d.profile_summary().is_some();
    run(&d, "D", 2).unwrap();
    drop(d);
    // SAFETY: as above.
    unsafe {
        std::env::remove_var("PARLA_TRACE");
        std::env::remove_var("PARLA_PROFILE");
    }
    assert!(!traced, "PARLA_PROFILE= (empty) asked for a profile");

    // The ways of saying off turn the profile off; anything else turns it on.
    for (value, on) in [
        ("0", false),
        ("off", false),
        ("FALSE", false),
        ("no", false),
        (" ", false),
        ("\t", false),
        ("1", true),
        ("yes", true),
    ] {
        // SAFETY: as above.
        unsafe { std::env::set_var("PARLA_PROFILE", value) };
        let rt = support::cpu(1);
        let profiled = rt.profile_summary().is_some();
        // (Its summary printed on drop is the test's output.)
        drop(rt);
        assert_eq!(profiled, on, "PARLA_PROFILE={value}");
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var("PARLA_PROFILE") };

    // A directory: no runtime can write it (each says so and runs untraced), and none
    // writes a numbered file next to it instead (`DIR.2`, `DIR.3`: the first runtime ran
    // untraced, the later ones wrote files nobody named).
    let parent = support::trace_path("env-dir")
        .parent()
        .unwrap()
        .to_path_buf();
    let named = parent.join("traces");
    std::fs::create_dir_all(&named).unwrap();
    // SAFETY: as above.
    unsafe { std::env::set_var("PARLA_TRACE", &named) };
    for space in ["E", "F"] {
        let rt = support::cpu(1);
        run(&rt, space, 2).unwrap();
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var("PARLA_TRACE") };
    let mut left: Vec<_> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let _ = std::fs::remove_dir_all(&parent);
    assert_eq!(
        left,
        ["traces"],
        "files written next to the directory named"
    );
}
