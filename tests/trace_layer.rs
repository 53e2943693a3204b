//! `parla::trace::layer` composed with a user's own layer in one global subscriber: both
//! see what happens inside tasks. (Its own test binary: a global subscriber is set once per
//! process.)

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parla::prelude::*;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::prelude::*;

/// The user's layer: counts the events this test emits.
struct Count(Arc<AtomicUsize>);

impl<S: Subscriber> Layer<S> for Count {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if e.metadata().target() == module_path!() {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn the_trace_layer_composes_with_a_user_layer() {
    let path = support::trace_path("layer");
    let (layer, guard) = parla::trace::layer(&path).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    tracing_subscriber::registry()
        .with(layer)
        .with(Count(seen.clone()))
        .init();
    let rt = parla::Runtime::builder().cpu_threads(2).build().unwrap();
    support::within(30, move || {
        rt.block_on(async {
            let hs: Vec<_> = (0..10)
                .map(|i| {
                    task(async move {
                        tracing::info!(i, "inside a task");
                        let _s = tracing::info_span!("work").entered();
                    })
                    .spawn()
                })
                .collect();
            for h in hs {
                h.await.unwrap();
            }
        });
        drop(rt);
    });
    assert_eq!(
        seen.load(Ordering::SeqCst),
        10,
        "the user's layer saw every event"
    );
    let s = guard.summary();
    assert_eq!(s.tasks_run, 10, "{s}");
    drop(guard);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("valid JSON");
    let ev = v["traceEvents"].as_array().unwrap();
    let count = |cat: &str| {
        ev.iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == cat)
            .count()
    };
    assert_eq!(count("task"), 10);
    assert_eq!(count("user"), 10, "each task's span is in the trace");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

/// A trace file that cannot be created is an error from `layer`, not a panic.
#[test]
fn a_trace_file_that_cannot_be_created_is_an_error() {
    let path = std::env::temp_dir()
        .join(format!("parla-no-such-dir-{}", std::process::id()))
        .join("trace.json");
    let err = parla::trace::layer(&path).expect_err("no such directory");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    let text = err.to_string();
    assert!(text.contains("cannot create the trace file"), "{text}");
    assert!(
        text.contains(&path.display().to_string()),
        "names it: {text}"
    );
}
