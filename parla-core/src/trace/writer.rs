//! The trace file: Chrome / Perfetto JSON, streamed event by event so that memory stays
//! bounded however long the program runs.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde_json::Value;

use super::numbered;

/// The trace files that writers of this process have open (absolute paths): two runtimes
/// given one path (a `.trace("trace.json")` in each test of a suite that runs in parallel)
/// would otherwise write into one file, and leave it invalid.
static OPEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(crate) struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    /// Events written so far (a separator goes before the next).
    events: u64,
    failed: bool,
}

impl Writer {
    /// A trace written to `path`; or, while another writer of this process has that file
    /// open, to the first of `NAME.2.EXT`, `NAME.3.EXT` and so on that none has open (said on
    /// stderr).
    pub(crate) fn create(path: &Path) -> std::io::Result<Writer> {
        let asked = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let own = {
            let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
            let mut own = asked.clone();
            let mut n = 1;
            while open.contains(&own) {
                n += 1;
                own = numbered(&asked, n);
            }
            open.push(own.clone());
            own
        };
        let opened = File::create(&own).and_then(|f| {
            let mut out = BufWriter::new(f);
            out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
            // On disk at once: a program that exits before the first periodic flush leaves
            // a trace that readers open (with no events), not an empty file.
            out.flush()?;
            Ok(out)
        });
        let out = match opened {
            Ok(out) => out,
            Err(e) => {
                close(&own);
                return Err(e);
            }
        };
        if own != asked {
            eprintln!(
                "parla: the trace {} is open for another runtime of this process; this one \
                 writes {}",
                path.display(),
                own.display()
            );
        }
        Ok(Writer {
            path: own,
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

    /// The file written.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
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

impl Drop for Writer {
    fn drop(&mut self) {
        close(&self.path);
    }
}

/// Takes `path` off the files open for writing.
fn close(path: &Path) {
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(i) = open.iter().position(|p| p == path) {
        open.swap_remove(i);
    }
}

#[cfg(test)]
mod test {
    use super::Writer;
    use crate::trace::numbered;
    use std::path::Path;

    /// Two writers of one file at once: the second writes a numbered one, and the name is
    /// free again once the first is done.
    #[test]
    fn a_file_open_for_another_writer_is_not_written_twice() {
        let dir = std::env::temp_dir().join(format!("parla-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.json");
        let a = Writer::create(&path).unwrap();
        let b = Writer::create(&path).unwrap();
        let c = Writer::create(&path).unwrap();
        assert_eq!(a.path(), std::path::absolute(&path).unwrap());
        assert_eq!(b.path(), dir.join("t.2.json"));
        assert_eq!(c.path(), dir.join("t.3.json"));
        a.finish();
        let d = Writer::create(&path).unwrap();
        assert_eq!(d.path(), std::path::absolute(&path).unwrap());
        for w in [b, c, d] {
            let p = w.path().to_owned();
            w.finish();
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                "{text}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(numbered(Path::new("a/trace"), 4), Path::new("a/trace.4"));
    }
}
