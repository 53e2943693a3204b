//! Every task is a `tracing` span (target `parla::task`) with its id, device, VCUs and
//! memory; mapping is an event (target `parla::sched`).

mod support;

use std::sync::{Arc, Mutex};

use parla::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A span's target and fields.
type Span = (String, Vec<(String, String)>);

/// Records every span's target and fields, and every event's target.
#[derive(Default)]
struct Capture {
    spans: Mutex<Vec<Span>>,
    events: Mutex<Vec<String>>,
    next: std::sync::atomic::AtomicU64,
}

struct Fields(Vec<(String, String)>);

impl Visit for Fields {
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
        self.0
            .spans
            .lock()
            .unwrap()
            .push((attrs.metadata().target().to_string(), f.0));
        Id::from_u64(
            1 + self
                .0
                .next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        )
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        self.0
            .events
            .lock()
            .unwrap()
            .push(e.metadata().target().to_string());
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
    let field = |s: &Span, k: &str| {
        s.1.iter()
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
    assert!(
        cap.events
            .lock()
            .unwrap()
            .iter()
            .any(|t| t == "parla::sched")
    );
}
