//! The trace layer: a `tracing-subscriber` layer that turns the tasks' pipeline events into
//! a Perfetto / Chrome trace and a [`Summary`].
//!
//! The trace has a process per device class: `CPU workers` (pid 0, a thread per worker)
//! and one per GPU (pid `n + 1`, a thread per stream). Each task is one complete slice
//! (`"cat": "task"`):
//! - a CPU task (or a virtual GPU's) that finished in one poll: on the worker that polled
//!   it, from that poll to its completion;
//! - a CPU task that suspended (its body awaited something not ready): from its first poll
//!   to its completion, on a `tasks that waited` track (tids from 2^20; slices there never
//!   overlap), each of its polls a `poll` slice on the worker that ran it. So the slices
//!   on a worker's track never overlap but nest, as trace viewers expect;
//! - a GPU task: on its stream, timed by CUDA events around its work, with its host side
//!   as a `launch` slice on the worker;
//! - a task that never ran: a zero-length slice on its device's `never ran` track (tid 0);
//!   one never mapped to a device (its placement cannot be met, a dependency failed
//!   first) has a `device` of null and goes on the CPU's.
//!
//! Dependencies are flow arrows, drawn from a dependency that finished before its
//! dependent; user spans inside a task body are slices nested in its poll, and one whose
//! guard is held across an `.await` an asynchronous slice (`b` and `e`) of its own.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::ThreadId;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use super::now_ns;
use super::summary::{Stats, Summary, TaskTimes};
use super::writer::Writer;

const TASK_TARGET: &str = "parla::task";
const SCHED_TARGET: &str = "parla::sched";
/// The CPU workers' process.
const CPU_PID: u64 = 0;
/// The device of a task mapped nowhere yet.
const CPU_DEVICE: &str = "cpu:0";
/// A device's track for tasks that never ran.
const NOT_RUN_TID: u64 = 0;
/// The first track of the CPU workers' process for tasks that suspended (after the
/// workers' own, numbered from 1).
const WAITED_TID: u64 = 1 << 20;

/// Options of a [`TraceLayer`]: a trace file, a summary printed at the end, or both.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    file: Option<PathBuf>,
    print: bool,
}

impl Trace {
    /// A layer that keeps a summary only (see [`TraceGuard::summary`]).
    pub fn new() -> Trace {
        Trace::default()
    }

    /// Streams a Perfetto / Chrome trace to `path` (open it in <https://ui.perfetto.dev>,
    /// or draw it with `parla-timeline`).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Trace {
        self.file = Some(path.into());
        self
    }

    /// Prints the summary on standard error when the guard is dropped.
    pub fn summary(mut self, print: bool) -> Trace {
        self.print = print;
        self
    }

    /// The layer, and the guard that closes the file when dropped (keep it until the
    /// runtime has shut down).
    pub fn build(self) -> std::io::Result<(TraceLayer, TraceGuard)> {
        let out = self
            .file
            .as_deref()
            .map(|p| {
                Writer::create(p).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot create the trace file {}: {e}", p.display()),
                    )
                })
            })
            .transpose()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out,
                tracks: HashMap::new(),
                named: HashSet::new(),
                waited: Vec::new(),
                sourced: HashSet::new(),
                orphaned: HashSet::new(),
                stats: Stats::default(),
            }),
            edges: AtomicU64::new(1),
        });
        if shared.state.lock().out.is_some() {
            flush_every(FLUSH_EVERY, Arc::downgrade(&shared))?;
        }
        Ok((
            TraceLayer {
                shared: shared.clone(),
            },
            TraceGuard {
                shared,
                print: self.print,
            },
        ))
    }
}

/// How often the trace file gets what was recorded (at most this much of a trace is lost
/// when the program ends without dropping the guard).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Starts the thread that flushes the trace file of `shared` every `period` until its guard
/// closes it (or nothing holds the trace any more).
fn flush_every(
    period: std::time::Duration,
    shared: std::sync::Weak<Shared>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("parla-trace-flush".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let mut s = shared.state.lock();
                match s.out.as_mut() {
                    Some(w) => w.flush(),
                    None => return,
                }
            }
        })?;
    Ok(())
}

/// A layer writing a trace to `path`: `Trace::new().file(path).build()`.
pub fn layer(path: impl Into<PathBuf>) -> std::io::Result<(TraceLayer, TraceGuard)> {
    Trace::new().file(path).build()
}

/// The `tracing-subscriber` layer that records tasks (see the [module docs](super)).
#[derive(Clone)]
pub struct TraceLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for TraceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceLayer").finish_non_exhaustive()
    }
}

/// Closes the trace file when dropped (and prints the summary, if asked to).
pub struct TraceGuard {
    shared: Arc<Shared>,
    print: bool,
}

impl fmt::Debug for TraceGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceGuard")
            .field("print", &self.print)
            .finish_non_exhaustive()
    }
}

impl TraceGuard {
    /// The summary of the tasks recorded so far.
    pub fn summary(&self) -> Summary {
        self.shared.state.lock().stats.summary()
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        let mut s = self.shared.state.lock();
        if let Some(w) = s.out.take() {
            w.finish();
        }
        if self.print {
            eprint!("{}", s.stats.summary());
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// The next flow (dependency arrow) id.
    edges: AtomicU64,
}

struct State {
    out: Option<Writer>,
    /// Worker threads and their track ids.
    tracks: HashMap<ThreadId, u64>,
    /// Processes (`(pid, u64::MAX)`) and threads already named in the file.
    named: HashSet<(u64, u64)>,
    /// The tracks of tasks that suspended: where the last slice written on each ends.
    waited: Vec<u64>,
    /// Dependency arrows whose start is written and whose end is not yet (the dependent
    /// has not finished).
    sourced: HashSet<u64>,
    /// Arrows left out: the dependent finished (failed by another dependency, aborted)
    /// before the dependency did, and the arrow would point back in time.
    orphaned: HashSet<u64>,
    stats: Stats,
}

impl State {
    /// The track of the calling thread in the CPU workers' process.
    fn thread_track(&mut self) -> u64 {
        let t = std::thread::current();
        if let Some(&k) = self.tracks.get(&t.id()) {
            return k;
        }
        let k = self.tracks.len() as u64 + 1;
        self.tracks.insert(t.id(), k);
        let name = format!("{} {k}", t.name().unwrap_or("thread"));
        self.name_track(CPU_PID, k, || name);
        k
    }

    /// A track of tasks that suspended with room for a slice from `ts` to `to`, for a task
    /// finishing now: every slice written so far ends by now, so a track whose last slice
    /// ends by `ts` has none that overlaps.
    fn waited_track(&mut self, ts: u64, to: u64) -> u64 {
        let i = match self.waited.iter().position(|&end| end <= ts) {
            Some(i) => i,
            None => {
                self.waited.push(0);
                self.waited.len() - 1
            }
        };
        self.waited[i] = to;
        WAITED_TID + i as u64
    }

    /// The start of arrow `edge`, at its dependency's slice, unless its dependent finished
    /// first (the arrow is left out).
    fn arrow_from(&mut self, edge: u64, at: Placed) {
        if self.out.is_none() {
            return;
        }
        if !self.orphaned.remove(&edge) {
            self.sourced.insert(edge);
            self.write(|| flow("s", edge, at));
        }
    }

    /// The end of arrow `edge`, at its dependent's slice, if its start was written;
    /// otherwise the arrow is left out (its dependency has not finished).
    fn arrow_to(&mut self, edge: u64, at: Placed) {
        if self.out.is_none() {
            return;
        }
        if self.sourced.remove(&edge) {
            self.write(|| flow("f", edge, at));
        } else {
            self.orphaned.insert(edge);
        }
    }

    /// Writes the names of process `pid` and its thread `tid` the first time they appear.
    fn name_track(&mut self, pid: u64, tid: u64, name: impl FnOnce() -> String) {
        let Some(out) = self.out.as_mut() else { return };
        if self.named.insert((pid, u64::MAX)) {
            let process = if pid == CPU_PID {
                "CPU workers".to_string()
            } else {
                format!("gpu:{}", pid - 1)
            };
            out.write(&json!({"name": "process_name", "ph": "M", "pid": pid,
                              "args": {"name": process}}));
            out.write(&json!({"name": "process_sort_index", "ph": "M", "pid": pid,
                              "args": {"sort_index": pid}}));
        }
        if self.named.insert((pid, tid)) {
            out.write(
                &json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                              "args": {"name": name()}}),
            );
        }
    }

    /// Writes the event `event` makes, if there is a trace file (a profile alone has none:
    /// the events are not even made).
    fn write(&mut self, event: impl FnOnce() -> Value) {
        if let Some(out) = self.out.as_mut() {
            out.write(&event());
        }
    }
}

/// Microseconds, the trace format's unit.
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Where a finished task's slice is.
#[derive(Clone, Copy)]
struct Placed {
    pid: u64,
    tid: u64,
    ts: u64,
    /// The longest chain of tasks ending with this one.
    chain: u64,
}

/// What the layer keeps on a task's span.
struct TaskRec {
    name: String,
    spawn: u64,
    ready: Option<u64>,
    admitted: Option<u64>,
    started: Option<u64>,
    body_end: Option<u64>,
    /// The worker track of its first poll.
    track: Option<u64>,
    /// Polls that ended. The first is kept here (start, end, track) until a second shows
    /// that the task suspended; from then on each is written as it ends.
    polls: u64,
    first_poll: Option<(u64, u64, u64)>,
    device: Option<String>,
    vcu: Option<f64>,
    mem: Option<u64>,
    /// GPU start, end and stream.
    gpu: Option<(u64, u64, u64)>,
    /// Arrows into it, drawn when it finishes.
    ins: Vec<u64>,
    /// Arrows out of it, and the dependents' longest chain of dependencies.
    outs: Vec<(u64, Arc<AtomicU64>)>,
    /// The longest chain among its finished dependencies.
    deps_chain: Arc<AtomicU64>,
    done: Option<Placed>,
}

/// A user span under a task: its open entries.
struct UserRec {
    /// Its open entries: when, and how many polls its task had finished then.
    enters: Vec<(u64, Option<u64>)>,
}

/// How many polls the task that `span` is inside had finished, if it is inside one.
fn task_polls<S>(span: &SpanRef<'_, S>) -> Option<u64>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    span.scope()
        .skip(1)
        .find_map(|p| p.extensions().get::<TaskRec>().map(|r| r.polls))
}

/// The fields of a parla event or span.
#[derive(Default)]
struct Fields {
    step: String,
    task_id: Option<String>,
    device: Option<String>,
    error: Option<String>,
    vcu: Option<f64>,
    mem: Option<u64>,
    dep: Option<u64>,
    gpu_start: Option<u64>,
    gpu_end: Option<u64>,
    stream: Option<u64>,
    /// When a poll began (a `polled` step).
    since: Option<u64>,
    driver_ns: Option<u64>,
    body_ns: Option<u64>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set_text(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set_text(field, format!("{value:?}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let slot = match field.name() {
            "mem" => &mut self.mem,
            "dep" => &mut self.dep,
            "gpu_start" => &mut self.gpu_start,
            "gpu_end" => &mut self.gpu_end,
            "stream" => &mut self.stream,
            "driver_ns" => &mut self.driver_ns,
            "since" => &mut self.since,
            "body_ns" => &mut self.body_ns,
            _ => return,
        };
        *slot = Some(value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "vcu" {
            self.vcu = Some(value);
        }
    }
}

impl Fields {
    fn set_text(&mut self, field: &Field, value: String) {
        match field.name() {
            "step" => self.step = value,
            "task.id" => self.task_id = Some(value),
            "device" => self.device = Some(value),
            "error" => self.error = Some(value),
            _ => {}
        }
    }
}

impl<S> Layer<S> for TraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let meta = attrs.metadata();
        if meta.target() == TASK_TARGET && meta.name() == "task" {
            let mut f = Fields::default();
            attrs.record(&mut f);
            let spawn = now_ns();
            self.shared.state.lock().stats.spawned(spawn);
            span.extensions_mut().insert(TaskRec {
                name: f.task_id.unwrap_or_default(),
                spawn,
                ready: None,
                admitted: None,
                started: None,
                body_end: None,
                track: None,
                polls: 0,
                first_poll: None,
                device: None,
                vcu: None,
                mem: None,
                gpu: None,
                ins: Vec::new(),
                outs: Vec::new(),
                deps_chain: Arc::new(AtomicU64::new(0)),
                done: None,
            });
            return;
        }
        // A user span inside a task's body (or inside such a span).
        let under_task = span.parent().is_some_and(|p| {
            let e = p.extensions();
            e.get::<TaskRec>().is_some() || e.get::<UserRec>().is_some()
        });
        if under_task {
            span.extensions_mut().insert(UserRec { enters: Vec::new() });
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if span.extensions().get::<UserRec>().is_none() {
            return;
        }
        let polls = task_polls(&span);
        if let Some(u) = span.extensions_mut().get_mut::<UserRec>() {
            u.enters.push((now_ns(), polls));
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some((from, polls)) = span
            .extensions_mut()
            .get_mut::<UserRec>()
            .and_then(|u| u.enters.pop())
        else {
            return;
        };
        let to = now_ns();
        let meta = span.metadata();
        let mut s = self.shared.state.lock();
        if task_polls(&span) != polls {
            // Entered in one poll of its task and left in a later one (a guard held across
            // an `.await`): the worker ran other tasks in between, so the span is no slice
            // of a worker's track but an asynchronous one of its own.
            let id = span.id().into_u64();
            for (ph, ts) in [("b", from), ("e", to)] {
                s.write(|| {
                    json!({
                        "name": meta.name(), "cat": "user", "ph": ph, "id": id, "pid": CPU_PID,
                        "ts": us(ts), "args": {"target": meta.target()},
                    })
                });
            }
            return;
        }
        let tid = s.thread_track();
        s.write(|| {
            json!({
                "name": meta.name(), "cat": "user", "ph": "X", "pid": CPU_PID, "tid": tid,
                "ts": us(from), "dur": us(to - from),
                "args": {"target": meta.target()},
            })
        });
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let target = event.metadata().target();
        if target != SCHED_TARGET && target != TASK_TARGET {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        if target == SCHED_TARGET {
            if let (Some(d), Some(b)) = (f.driver_ns, f.body_ns) {
                self.shared.state.lock().stats.driver(d, b);
            }
            return;
        }
        let Some(span) = event.parent().and_then(|id| ctx.span(id)) else {
            return;
        };
        let now = now_ns();
        match f.step.as_str() {
            "dependency" => self.dependency(&span, f.dep, &ctx),
            "completed" => self.completed(&span, f.error, now),
            step => {
                let mut e = span.extensions_mut();
                let Some(r) = e.get_mut::<TaskRec>() else {
                    return;
                };
                match step {
                    "ready" => r.ready = Some(now),
                    "mapped" => {
                        r.device = f.device;
                        r.vcu = f.vcu;
                        r.mem = f.mem;
                    }
                    "admitted" => {
                        r.admitted = Some(now);
                        // (With the bytes of its arrays' copies, which `mapped` does not know.)
                        if f.mem.is_some() {
                            r.mem = f.mem;
                        }
                    }
                    "started" => {
                        r.started = Some(now);
                        r.track = Some(self.shared.state.lock().thread_track());
                    }
                    "body_finished" => r.body_end = Some(now),
                    "polled" => {
                        if let Some(from) = f.since {
                            self.polled(r, from, now);
                        }
                    }
                    "gpu_finished" => {
                        if let (Some(a), Some(b), Some(s)) = (f.gpu_start, f.gpu_end, f.stream) {
                            r.gpu = Some((a, b.max(a), s));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

impl TraceLayer {
    /// `span`'s task depends on the task whose span id is `dep`: an arrow from it, drawn
    /// now if it finished already, else when it does.
    fn dependency<S>(&self, span: &SpanRef<'_, S>, dep: Option<u64>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let Some(dep) = dep.and_then(|d| ctx.span(&Id::from_u64(d))) else {
            return;
        };
        let Some(mine) = span
            .extensions()
            .get::<TaskRec>()
            .map(|r| r.deps_chain.clone())
        else {
            return;
        };
        let edge = self.shared.edges.fetch_add(1, Ordering::Relaxed);
        {
            let mut e = dep.extensions_mut();
            let Some(d) = e.get_mut::<TaskRec>() else {
                return;
            };
            match d.done {
                Some(p) => {
                    mine.fetch_max(p.chain, Ordering::Relaxed);
                    self.shared.state.lock().arrow_from(edge, p);
                }
                None => d.outs.push((edge, mine)),
            }
        }
        if let Some(r) = span.extensions_mut().get_mut::<TaskRec>() {
            r.ins.push(edge);
        }
    }

    /// A poll of `r`'s body ran from `from` to `to` on this thread: kept if it is the
    /// first, else written, with the first if this is the second (the task suspended: see
    /// the module's docs).
    fn polled(&self, r: &mut TaskRec, from: u64, to: u64) {
        let mut s = self.shared.state.lock();
        let poll = (from.min(to), to, s.thread_track());
        r.polls += 1;
        if r.polls == 1 {
            r.first_poll = Some(poll);
            return;
        }
        if let Some(first) = r.first_poll.take() {
            write_poll(&mut s, r, 1, first);
        }
        write_poll(&mut s, r, r.polls, poll);
    }

    /// The task finished (`error`: how it failed): writes its slice and arrows, and counts
    /// it.
    fn completed<S>(&self, span: &SpanRef<'_, S>, error: Option<String>, end: u64)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let mut e = span.extensions_mut();
        let Some(r) = e.get_mut::<TaskRec>() else {
            return;
        };
        let ran = r.started.is_some();
        // (A task never mapped has no device: its slice goes on the CPU's `never ran`
        // track, and its `device` is null.)
        let mapped = r.device.clone();
        let device = mapped.clone().unwrap_or_else(|| CPU_DEVICE.into());
        let gpu_pid = device
            .strip_prefix("gpu:")
            .and_then(|n| n.parse::<u64>().ok())
            .map(|n| n + 1);
        // Suspended: polled again, or stopped (aborted, cancelled) after a poll that left it
        // waiting.
        let suspended = r.polls > 1 || (r.polls == 1 && r.body_end.is_none());
        let mut s = self.shared.state.lock();
        if suspended && let Some(first) = r.first_poll.take() {
            write_poll(&mut s, r, 1, first);
        }
        // Where the task's slice goes and what it covers.
        let (pid, tid, ts, to) = match (r.started, r.gpu, gpu_pid) {
            (Some(_), Some((a, b, stream)), Some(pid)) => (pid, (stream & 0xffff_ffff) + 1, a, b),
            (Some(a), _, _) if suspended => (CPU_PID, s.waited_track(a, end), a, end),
            (Some(a), _, _) => (CPU_PID, r.track.unwrap_or(0), a, end),
            (None, _, _) => (gpu_pid.unwrap_or(CPU_PID), NOT_RUN_TID, end, end),
        };
        let chain = r.deps_chain.load(Ordering::Relaxed) + (to - ts);
        let placed = Placed {
            pid,
            tid,
            ts,
            chain,
        };
        r.done = Some(placed);
        let outs = std::mem::take(&mut r.outs);
        for (_, c) in &outs {
            c.fetch_max(chain, Ordering::Relaxed);
        }
        let outcome = match (&error, ran) {
            (_, false) => "never ran",
            (None, true) => "ok",
            (Some(_), true) => "failed",
        };
        let track_name = || match (pid, tid) {
            (_, NOT_RUN_TID) => "never ran".to_string(),
            (CPU_PID, t) if t >= WAITED_TID => format!("tasks that waited {}", t - WAITED_TID + 1),
            (CPU_PID, t) => format!("worker {t}"),
            (_, t) => format!("stream {}", t - 1),
        };
        s.name_track(pid, tid, track_name);
        s.write(|| {
            let gap = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => json!(us(b.saturating_sub(a))),
                _ => Value::Null,
            };
            let mut args = json!({
                "device": mapped,
                "vcus": r.vcu,
                "memory": r.mem,
                "outcome": outcome,
                "wait_deps_us": gap(Some(r.spawn), r.ready),
                "wait_admission_us": gap(r.ready, r.admitted),
                "wait_worker_us": gap(r.admitted, r.started),
            });
            if let Some(err) = &error {
                args["error"] = json!(err);
            }
            if r.gpu.is_some() {
                // The host's view of a GPU task: from its first poll to its completion.
                args["host_start_us"] = json!(r.started.map(us));
                args["host_end_us"] = json!(us(end));
            }
            json!({
                "name": r.name, "cat": "task", "ph": "X", "pid": pid, "tid": tid,
                "ts": us(ts), "dur": us(to - ts), "args": args,
            })
        });
        if gpu_pid.is_some()
            && r.gpu.is_some()
            && !suspended
            && let (Some(a), Some(track)) = (r.started, r.track)
        {
            let b = r.body_end.unwrap_or(end).max(a);
            s.write(|| {
                json!({
                    "name": format!("{} (launch)", r.name), "cat": "launch", "ph": "X",
                    "pid": CPU_PID, "tid": track, "ts": us(a), "dur": us(b - a),
                })
            });
        }
        for &edge in &r.ins {
            s.arrow_to(edge, placed);
        }
        for (edge, _) in outs {
            s.arrow_from(edge, placed);
        }
        s.stats.task(TaskTimes {
            device: &device,
            ran,
            failed: error.is_some(),
            spawn: r.spawn,
            ready: r.ready,
            admitted: r.admitted,
            started: r.started,
            end,
            // (A suspended task on the CPU: its polls, counted as they were written.)
            busy: (ran && !(suspended && on_cpu(r))).then_some((ts, to)),
            chain,
        });
    }
}

/// Writes poll `k` (from 1) of a task that suspended, `(start, end, worker track)`: a
/// `poll` slice on the worker; on the CPU, counted as busy time too.
fn write_poll(s: &mut State, r: &TaskRec, k: u64, (from, to, track): (u64, u64, u64)) {
    s.write(|| {
        json!({
            "name": r.name, "cat": "poll", "ph": "X", "pid": CPU_PID, "tid": track,
            "ts": us(from), "dur": us(to.saturating_sub(from)), "args": {"poll": k},
        })
    });
    if on_cpu(r) {
        s.stats
            .busy(r.device.as_deref().unwrap_or(CPU_DEVICE), from, to);
    }
}

/// Whether `r`'s task runs on the CPU (a GPU task's busy time is its GPU work).
fn on_cpu(r: &TaskRec) -> bool {
    !r.device.as_deref().is_some_and(|d| d.starts_with("gpu:"))
}

/// One end of a dependency arrow (`"s"` at the dependency, `"f"` at the dependent), bound
/// to the slice starting at `at.ts` on its track.
fn flow(ph: &str, id: u64, at: Placed) -> Value {
    json!({
        "name": "dependency", "cat": "dependency", "ph": ph, "id": id, "bp": "e",
        "pid": at.pid, "tid": at.tid, "ts": us(at.ts),
    })
}
