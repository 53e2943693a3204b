//! A task's completion is traced before its outcome can be seen, whether it ran or failed
//! without running: a program that awaits its tasks and drops the runtime at once (which
//! closes the runtime's own trace, from an asynchronous context without waiting for the
//! workers) finds every task in the trace.
//! (Its own test binary: it sets the process's global subscriber.)

mod support;

use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parla::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// The space whose tasks the layer looks up.
static SPACE: OnceLock<TaskSpace> = OnceLock::new();

/// A task span's `task.id` (`T[3]`), or an event's `step`.
struct Text {
    field: &'static str,
    value: Option<String>,
}

impl Visit for Text {
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == self.field {
            self.value = Some(v.to_string());
        }
    }

    fn record_debug(&mut self, f: &Field, v: &dyn Debug) {
        if f.name() == self.field {
            self.value = Some(format!("{v:?}"));
        }
    }
}

/// The text of `field`, from what `record` records.
fn text_of(field: &'static str, record: impl FnOnce(&mut Text)) -> Option<String> {
    let mut t = Text { field, value: None };
    record(&mut t);
    t.value
}

/// At each task's "completed" step: whether an await of its id could see it finished.
struct Order {
    completed: Arc<AtomicUsize>,
    visible_before: Arc<AtomicUsize>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Order {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != "parla::task" {
            return;
        }
        let name = text_of("task.id", |t| attrs.record(t));
        if let (Some(span), Some(name)) = (ctx.span(id), name) {
            span.extensions_mut().insert(name);
        }
    }

    fn on_event(&self, e: &Event<'_>, ctx: Context<'_, S>) {
        if e.metadata().target() != "parla::task" {
            return;
        }
        if text_of("step", |t| e.record(t)).as_deref() != Some("completed") {
            return;
        }
        let Some(span) = ctx.event_span(e) else {
            return;
        };
        let key = span.extensions().get::<String>().and_then(|n| {
            let i = n.strip_prefix("T[")?.strip_suffix(']')?;
            i.parse::<usize>().ok()
        });
        if let (Some(i), Some(t)) = (key, SPACE.get()) {
            self.completed.fetch_add(1, Ordering::SeqCst);
            if t.at(i).is_finished() {
                self.visible_before.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[test]
fn a_task_is_traced_as_completed_before_its_outcome_is_published() {
    let completed = Arc::new(AtomicUsize::new(0));
    let visible_before = Arc::new(AtomicUsize::new(0));
    tracing_subscriber::registry()
        .with(Order {
            completed: completed.clone(),
            visible_before: visible_before.clone(),
        })
        .init();
    let t = SPACE.get_or_init(|| TaskSpace::new("T"));
    let rt = parla::Runtime::builder().cpu_threads(2).build().unwrap();
    support::within(30, move || {
        rt.block_on(async {
            for i in 0..50 {
                task(async move { i }).id(t.at(i)).spawn();
            }
            t.range(0..50).await.unwrap();
            // Tasks that never run: one aborted while it waits for a gate, and a chain
            // after it that fails with it (each failed by the thread that fails the one
            // before, as its outcome is published).
            let (open, gate) = tokio::sync::oneshot::channel::<()>();
            let gate = task(async move { gate.await.is_ok() }).id(t.at(50)).spawn();
            let first = task(async {}).id(t.at(51)).after([t.at(50)]).spawn();
            for i in 52..60 {
                task(async {}).id(t.at(i)).after([t.at(i - 1)]).spawn();
            }
            first.abort();
            open.send(()).unwrap();
            assert!(gate.await.unwrap());
            let e = t.at(59).await.unwrap_err();
            assert!(
                matches!(e, TaskError::DependencyFailed { .. }),
                "the chain fails with the aborted task: {e}"
            );
        });
        drop(rt);
    });
    assert_eq!(completed.load(Ordering::SeqCst), 60, "every task traced");
    assert_eq!(
        visible_before.load(Ordering::SeqCst),
        0,
        "an await could see a task finished before its completion was traced"
    );
}
