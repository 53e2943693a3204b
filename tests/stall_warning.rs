//! An id waited on and never spawned while a Tokio task the program started is alive: the
//! runtime cannot tell whether that task will spawn it, so it keeps waiting, and warns.
//! (A test binary of its own: it installs the process's global `tracing` subscriber.)

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parla::prelude::*;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Keeps the messages of the `parla::stall` events.
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "parla::stall" {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        self.0.lock().unwrap().push(m.0);
    }
}

#[test]
fn an_id_never_spawned_that_a_tokio_task_waits_on_is_warned_of() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(Warnings(seen.clone())),
    )
    .unwrap();
    let rt = support::cpu(2);
    let t = TaskSpace::new("T");
    let (waited, heartbeat) = rt.block_on(async move {
        // A heartbeat, as services have: alive for good.
        let heartbeat = tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let waited = tokio::spawn(async move { t.at("typo").await });
        (waited, heartbeat)
    });
    let start = Instant::now();
    while seen.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = seen.lock().unwrap().clone();
    assert!(!waited.is_finished(), "the runtime keeps waiting");
    let w = seen.first().expect("a warning within a minute");
    assert!(w.contains("T[typo]"), "{w}");
    assert!(w.contains("never spawned"), "{w}");
    assert!(w.contains("2 Tokio tasks"), "{w}");
    heartbeat.abort();
    drop(rt);
}
