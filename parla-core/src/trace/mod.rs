//! Task traces: a Perfetto / Chrome trace file of every task, streamed to disk as tasks
//! finish (memory stays bounded however long the program runs) and closed at shutdown.
//!
//! Enabled with [`Builder::trace`](crate::Builder::trace) or the `PARLA_TRACE` environment
//! variable. Each task becomes a complete event (`"ph": "X"`) on its device's track, from
//! the moment it started to the moment it finished (zero length for a task that never
//! ran), with its outcome and the time it waited for its dependencies and for admission in
//! its arguments. Open the file in <https://ui.perfetto.dev> or `chrome://tracing`.

pub(crate) mod profile;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use serde_json::json;

use crate::device::{Device, vcu_float};
use crate::graph::node::Header;
use crate::runtime::RtInner;

struct Writer {
    out: BufWriter<File>,
    /// Events written so far (a separator goes before the next).
    events: u64,
    failed: bool,
}

pub(crate) struct Recorder {
    path: PathBuf,
    writer: Mutex<Option<Writer>>,
}

fn thread_id() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() % 10_000
}

impl Recorder {
    /// Opens the trace file. `None` (with a message on stderr) if it cannot be created: a
    /// trace is a diagnostic, and must not stop the program.
    pub(crate) fn new(path: PathBuf) -> Option<Recorder> {
        let file = match File::create(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("parla: cannot write trace {}: {e}", path.display());
                return None;
            }
        };
        let mut out = BufWriter::new(file);
        let failed = out
            .write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")
            .is_err();
        Some(Recorder {
            path,
            writer: Mutex::new(Some(Writer {
                out,
                events: 0,
                failed,
            })),
        })
    }

    fn write(&self, event: serde_json::Value) {
        let mut w = self.writer.lock();
        let Some(w) = w.as_mut() else { return };
        if w.failed {
            return;
        }
        let sep: &[u8] = if w.events == 0 { b"" } else { b",\n" };
        let r = w
            .out
            .write_all(sep)
            .and_then(|()| serde_json::to_writer(&mut w.out, &event).map_err(Into::into));
        match r {
            Ok(()) => w.events += 1,
            Err(e) => {
                w.failed = true;
                eprintln!("parla: cannot write trace {}: {e}", self.path.display());
            }
        }
    }

    /// Records a finished task (`ran`: its body was polled).
    pub(crate) fn record(&self, h: &Header, device: Device, end: u64, ran: bool) {
        let t = |i: usize| h.times.as_ref().map_or(0, |t| t[i].load(Ordering::Relaxed));
        let (spawn, ready) = (t(0), t(1).max(t(0)));
        let start = if ran { t(2).max(ready) } else { end };
        let us = |ns: u64| ns as f64 / 1000.0;
        let outcome = match h.outcome() {
            Some(Ok(())) => "ok".to_string(),
            Some(Err(e)) => e.to_string(),
            None => "cancelled".to_string(),
        };
        self.write(json!({
            "name": h.name.to_string(),
            "cat": "task",
            "ph": "X",
            "ts": us(start),
            "dur": us(end.saturating_sub(start)),
            "pid": device.slot(),
            "tid": thread_id(),
            "args": {
                "device": device.to_string(),
                "vcus": vcu_float(h.demand().vcu),
                "memory": h.mem,
                "wait_deps_us": us(ready.saturating_sub(spawn)),
                "wait_admission_us": if ran { us(start.saturating_sub(ready)) } else { 0.0 },
                "ran": ran,
                "failed": !matches!(h.outcome(), Some(Ok(()))),
                "outcome": outcome,
            },
        }));
    }

    /// Names the device tracks and closes the file (at shutdown).
    pub(crate) fn finish(&self, rt: &RtInner) {
        for d in rt.devices.iter() {
            self.write(json!({
                "name": "process_name",
                "ph": "M",
                "pid": d.device.slot(),
                "args": { "name": format!("{} ({})", d.device, d.name) },
            }));
        }
        let Some(mut w) = self.writer.lock().take() else {
            return;
        };
        if w.failed {
            return;
        }
        if let Err(e) = w.out.write_all(b"\n]}\n").and_then(|()| w.out.flush()) {
            eprintln!("parla: cannot write trace {}: {e}", self.path.display());
        }
    }
}
