//! What `#[parla::main]` prints when `main` returns an error: the error's message and its
//! sources (as `anyhow` does), not its `Debug` form.

use std::error::Error as StdError;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

#[allow(unused_imports)]
use parla::__private::{
    MainOutput, ReportDerefError as _, ReportDisplay as _, ReportOther as _, ReportStdError as _,
    report_error,
};
use parla::{Error, TaskError};

/// What the generated `main` prints for its return value (`None`: nothing, `main` returns it).
macro_rules! report {
    ($v:expr) => {
        (&&&&MainOutput(&$v)).parla_report()
    };
}

fn dependency_failed() -> Error {
    Error::Task(TaskError::DependencyFailed {
        task: "T[1]".into(),
        dependency: "T[0]".into(),
        cause: Arc::new(TaskError::Panicked {
            task: "T[0]".into(),
            message: "boom".into(),
        }),
    })
}

const DEPENDENCY_FAILED: &str =
    "Error: task T[1] did not run: its dependency T[0] failed (task T[0] panicked: boom)";

#[test]
fn a_parla_error_prints_its_message() {
    let s = report_error(&dependency_failed());
    assert_eq!(s, DEPENDENCY_FAILED);
    assert!(!s.contains("DependencyFailed"), "{s}");
}

/// An error with a source, like one with `anyhow` context.
#[derive(Debug)]
struct Context(&'static str, Option<Box<dyn StdError + Send + Sync>>);

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for Context {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.1.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

#[test]
fn sources_are_printed_as_anyhow_does() {
    let one = Context("reading the input", Some(Box::new(dependency_failed())));
    assert_eq!(
        report_error(&one),
        format!(
            "Error: reading the input\n\nCaused by:\n    {}",
            &DEPENDENCY_FAILED["Error: ".len()..]
        )
    );
    let two = Context(
        "starting",
        Some(Box::new(Context(
            "line one\nline two",
            Some(Box::new(Context("root", None))),
        ))),
    );
    assert_eq!(
        report_error(&two),
        "Error: starting\n\nCaused by:\n    0: line one\n       line two\n    1: root"
    );
}

/// Shaped like `anyhow::Error`: not a `std` error, but dereferences to one.
struct Report(Box<dyn StdError + Send + Sync>);

impl Deref for Report {
    type Target = dyn StdError + Send + Sync;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[derive(Debug)]
struct DebugOnly;

#[test]
fn each_return_type_is_reported_by_its_message() {
    let r: parla::Result<()> = Err(dependency_failed());
    assert_eq!(report!(r).as_deref(), Some(DEPENDENCY_FAILED));
    let r: Result<(), TaskError> = Err(TaskError::Cancelled { task: "T".into() });
    assert_eq!(
        report!(r).as_deref(),
        Some("Error: task T was cancelled: the runtime shut down")
    );

    let r: Result<(), Box<dyn StdError>> = Err(Box::new(dependency_failed()));
    assert_eq!(report!(r).as_deref(), Some(DEPENDENCY_FAILED));
    let r: Result<(), Box<dyn StdError + Send + Sync>> = Err(Box::new(Context(
        "outer",
        Some(Box::new(dependency_failed())),
    )));
    let s = report!(r).unwrap();
    assert!(
        s.starts_with("Error: outer\n\nCaused by:\n    task T[1]"),
        "{s}"
    );

    let r: Result<(), Report> = Err(Report(Box::new(Context(
        "outer",
        Some(Box::new(Context("inner", None))),
    ))));
    assert_eq!(
        report!(r).as_deref(),
        Some("Error: outer\n\nCaused by:\n    inner")
    );

    let r: Result<(), String> = Err("plain text".into());
    assert_eq!(report!(r).as_deref(), Some("Error: plain text"));

    // Left to `std`, which prints `Debug` as before.
    let r: Result<(), DebugOnly> = Err(DebugOnly);
    assert_eq!(report!(r), None);
    // Successes and non-`Result` values print nothing.
    let r: parla::Result<()> = Ok(());
    assert_eq!(report!(r), None);
    let r: Result<(), Box<dyn StdError>> = Ok(());
    assert_eq!(report!(r), None);
    assert_eq!(report!(()), None);
    assert_eq!(report!(std::process::ExitCode::SUCCESS), None);
}
