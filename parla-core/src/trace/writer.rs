//! The trace file: Chrome / Perfetto JSON, streamed event by event so that memory stays
//! bounded however long the program runs.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

pub(crate) struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    /// Events written so far (a separator goes before the next).
    events: u64,
    failed: bool,
}

impl Writer {
    pub(crate) fn create(path: &Path) -> std::io::Result<Writer> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
        Ok(Writer {
            path: path.to_owned(),
            out,
            events: 0,
            failed: false,
        })
    }

    /// Appends one event. A write error is reported once; the trace then stops (it is a
    /// diagnostic and must not stop the program).
    pub(crate) fn write(&mut self, event: &Value) {
        if self.failed {
            return;
        }
        let sep: &[u8] = if self.events == 0 { b"" } else { b",\n" };
        let r = self
            .out
            .write_all(sep)
            .and_then(|()| serde_json::to_writer(&mut self.out, event).map_err(Into::into));
        match r {
            Ok(()) => self.events += 1,
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        self.failed = true;
        eprintln!("parla: cannot write trace {}: {e}", self.path.display());
    }

    /// Writes what is buffered to the file (whole events: the caller holds the lock under
    /// which events are written), so that a program that ends without closing the trace
    /// (`std::process::exit`, a signal) leaves a file that ends at an event.
    pub(crate) fn flush(&mut self) {
        if self.failed {
            return;
        }
        if let Err(e) = self.out.flush() {
            self.fail(e);
        }
    }

    /// Closes the event list and flushes.
    pub(crate) fn finish(mut self) {
        if self.failed {
            return;
        }
        if let Err(e) = self
            .out
            .write_all(b"\n]}\n")
            .and_then(|()| self.out.flush())
        {
            self.fail(e);
        }
    }
}
