//! Every task is a `tracing` span (target `parla::task`) with its id, and its device, VCUs
//! and memory once mapped; each step of its pipeline is an event in it.

mod support;

use std::sync::{Arc, Mutex};

use parla::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A span's target and fields.
type Span = (String, Vec<(String, String)>);

/// Records every span's target and fields (as made, then as recorded), and every event's
/// target and fields.
#[derive(Default)]
struct Capture {
    spans: Mutex<Vec<Span>>,
    events: Mutex<Vec<Span>>,
}

struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
}

#[derive(Clone)]
struct Shared(Arc<Capture>);

impl Subscriber for Shared {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut f = Fields(Vec::new());
        attrs.record(&mut f);
        let mut spans = self.0.spans.lock().unwrap();
        spans.push((attrs.metadata().target().to_string(), f.0));
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, id: &Id, values: &Record<'_>) {
        let mut f = Fields(Vec::new());
        values.record(&mut f);
        self.0.spans.lock().unwrap()[id.into_u64() as usize - 1]
            .1
            .extend(f.0);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut f = Fields(Vec::new());
        e.record(&mut f);
        self.0
            .events
            .lock()
            .unwrap()
            .push((e.metadata().target().to_string(), f.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn every_task_is_a_span_with_its_constraints() {
    let cap = Arc::new(Capture::default());
    tracing::subscriber::set_global_default(Shared(cap.clone())).unwrap();
    let rt = support::vgpu(2, 1, 1 << 20);
    support::within(30, move || {
        rt.block_on(async {
            let t = TaskSpace::new("S");
            task(async {})
                .id(t.at(7))
                .vcus(0.25)
                .memory(123)
                .await
                .unwrap();
            task(async {})
                .id(t.at("g"))
                .placement(Placement::Gpu(0))
                .await
                .unwrap();
        })
    });
    let spans = cap.spans.lock().unwrap();
    let task_spans: Vec<_> = spans.iter().filter(|(t, _)| t == "parla::task").collect();
    assert_eq!(task_spans.len(), 2, "{spans:?}");
    // The last value recorded for a field.
    let field = |s: &Span, k: &str| {
        s.1.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let cpu = task_spans
        .iter()
        .find(|s| field(s, "task.id") == "S[7]")
        .unwrap();
    assert_eq!(field(cpu, "device"), "cpu:0");
    assert_eq!(field(cpu, "vcu"), "0.25");
    assert_eq!(field(cpu, "mem.bytes"), "123");
    let gpu = task_spans
        .iter()
        .find(|s| field(s, "task.id") == "S[g]")
        .unwrap();
    assert_eq!(field(gpu, "device"), "gpu:0");
    assert_eq!(field(gpu, "vcu"), "0.0");
    let events = cap.events.lock().unwrap();
    let steps: Vec<String> = events
        .iter()
        .filter(|e| e.0 == "parla::task")
        .map(|e| field(e, "step"))
        .collect();
    for step in [
        "spawned",
        "ready",
        "mapped",
        "admitted",
        "started",
        "body_finished",
        "completed",
    ] {
        assert_eq!(
            steps.iter().filter(|s| *s == step).count(),
            2,
            "{step} once per task: {steps:?}"
        );
    }
    let mapped = events
        .iter()
        .find(|e| field(e, "step") == "mapped" && field(e, "device") == "gpu:0");
    assert!(mapped.is_some(), "{events:?}");
    assert!(
        events.iter().any(|e| e.0 == "parla::sched"),
        "workers report their time"
    );
}
