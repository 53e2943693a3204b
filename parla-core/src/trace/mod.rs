//! Task traces: a Perfetto / Chrome trace file of every task, written at shutdown.
//!
//! Enabled with [`Builder::trace`](crate::Builder::trace) or the `PARLA_TRACE` environment
//! variable. Each task becomes a complete event (`"ph": "X"`) on its device's track, from
//! the moment it started to the moment it finished, with the time it waited for its
//! dependencies and for admission in its arguments. Open the file in
//! <https://ui.perfetto.dev> or `chrome://tracing`.

pub(crate) mod profile;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::device::{Device, vcu_float};
use crate::runtime::RtInner;
use crate::task::header::Header;

/// One finished task.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    name: String,
    device: Device,
    spawn: u64,
    ready: u64,
    start: u64,
    end: u64,
    vcus: f64,
    mem: u64,
    failed: bool,
    thread: u64,
}

pub(crate) struct Recorder {
    path: PathBuf,
    records: Mutex<Vec<Record>>,
}

fn thread_id() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() % 10_000
}

impl Recorder {
    pub(crate) fn new(path: PathBuf) -> Self {
        Recorder {
            path,
            records: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn record(&self, h: &Header, device: Device, end: u64, failed: bool) {
        let t = |i: usize| h.times.as_ref().map_or(0, |t| t[i].load(Ordering::Relaxed));
        let start = if failed { end } else { t(2) };
        let r = Record {
            name: h.name.to_string(),
            device,
            spawn: t(0),
            ready: t(1).max(t(0)),
            start,
            end,
            vcus: vcu_float(h.demand().vcu),
            mem: h.mem,
            failed,
            thread: thread_id(),
        };
        self.records.lock().push(r);
    }

    /// Writes the trace file. Errors are reported on stderr: a trace is a diagnostic, and
    /// failing to write one must not fail the program at shutdown.
    pub(crate) fn write(&self, rt: &RtInner) {
        let records = std::mem::take(&mut *self.records.lock());
        let json = chrome_json(&records, rt);
        let res = std::fs::File::create(&self.path).and_then(|mut f| f.write_all(json.as_bytes()));
        if let Err(e) = res {
            eprintln!("parla: cannot write trace {}: {e}", self.path.display());
        }
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn chrome_json(records: &[Record], rt: &RtInner) -> String {
    let mut s = String::from("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n");
    let mut first = true;
    let mut sep = |s: &mut String| {
        if !first {
            s.push_str(",\n");
        }
        first = false;
    };
    for d in rt.devices.iter() {
        sep(&mut s);
        let _ = write!(
            s,
            "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":{},\"args\":{{\"name\":\"{} ({})\"}}}}",
            d.device.slot(),
            d.device,
            escape(&d.name)
        );
    }
    for r in records {
        sep(&mut s);
        let us = |ns: u64| ns as f64 / 1000.0;
        let _ = write!(
            s,
            "{{\"name\":\"{}\",\"cat\":\"task\",\"ph\":\"X\",\"ts\":{:.3},\"dur\":{:.3},\"pid\":{},\"tid\":{},\"args\":{{\"device\":\"{}\",\"vcus\":{},\"memory\":{},\"wait_deps_us\":{:.3},\"wait_admission_us\":{:.3},\"failed\":{}}}}}",
            escape(&r.name),
            us(r.start),
            us(r.end.saturating_sub(r.start)),
            r.device.slot(),
            r.thread,
            r.device,
            r.vcus,
            r.mem,
            us(r.ready.saturating_sub(r.spawn)),
            us(r.start.saturating_sub(r.ready)),
            r.failed
        );
    }
    s.push_str("\n]}\n");
    s
}
