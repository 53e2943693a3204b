//! Draws a parla-rs trace as an SVG timeline.
//!
//! ```sh
//! PARLA_TRACE=trace.json cargo run --release --example constraints
//! cargo run --bin parla-timeline -- trace.json timeline.svg
//! ```
//!
//! One row per track of the trace (CPU workers, then each GPU's streams, then tasks that
//! never ran), tasks as bars coloured by their task space (anonymous tasks share a colour),
//! failed tasks outlined in red, spans opened inside tasks drawn inside them, and a GPU
//! task's host-side launch as a thin grey bar on its worker. Options: `--width PX` (default
//! 1600), `--from MS` / `--to MS` (a time window, in ms from the start of the trace).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

const LABEL: f64 = 190.0;
const LANE: f64 = 16.0;
const GAP: f64 = 6.0;
const TOP: f64 = 40.0;
/// Colour-blind friendly palette (Okabe-Ito, then Tableau).
const PALETTE: [&str; 12] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#4E79A7",
    "#59A14F", "#B07AA1", "#9C755F", "#76B7B2",
];

#[derive(Debug)]
struct Options {
    input: String,
    output: String,
    width: f64,
    from_ms: Option<f64>,
    to_ms: Option<f64>,
}

fn usage() -> String {
    "usage: parla-timeline TRACE.json OUT.svg [--width PX] [--from MS] [--to MS]".into()
}

/// The options, or `None` when help was asked for.
fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut pos = Vec::new();
    let (mut width, mut from_ms, mut to_ms) = (1600.0, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<f64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{name}: not a non-negative number: {v}"))
        };
        match a.as_str() {
            "--width" => width = num("--width")?.max(LABEL + 200.0),
            "--from" => from_ms = Some(num("--from")?),
            "--to" => to_ms = Some(num("--to")?),
            "-h" | "--help" => return Ok(None),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{}", usage())),
            s => pos.push(s.to_string()),
        }
    }
    let [input, output] = <[String; 2]>::try_from(pos).map_err(|_| usage())?;
    Ok(Some(Options {
        input,
        output,
        width,
        from_ms,
        to_ms,
    }))
}

/// A bar to draw.
struct Bar {
    name: String,
    cat: String,
    ts: f64,
    dur: f64,
    failed: bool,
    outcome: String,
}

/// Reads a trace: a JSON object with `traceEvents`, or a bare event list; a file cut off
/// before its closing brackets, or inside its last event (a program that did not shut
/// down), is read as far as it goes.
fn read_events(text: &str) -> Result<Vec<Value>, String> {
    let parse = |t: &str| serde_json::from_str::<Value>(t);
    let v = match parse(text) {
        Ok(v) => v,
        Err(e) => {
            // Closed where it ends, or, if it ends inside an event (one event per line),
            // before that event.
            let text = text.trim_end();
            let whole = text.rfind('\n').map_or(text, |i| &text[..i]);
            [text, whole]
                .into_iter()
                .map(|t| t.trim_end().trim_end_matches(','))
                .find_map(|cut| {
                    parse(&format!("{cut}\n]}}"))
                        .or_else(|_| parse(&format!("{cut}\n]")))
                        .ok()
                })
                .ok_or_else(|| format!("not a JSON trace: {e}"))?
        }
    };
    match v {
        Value::Array(a) => Ok(a),
        Value::Object(mut o) => match o.remove("traceEvents") {
            Some(Value::Array(a)) => Ok(a),
            _ => Err("no traceEvents list in the trace".into()),
        },
        _ => Err("not a trace: expected an object or a list".into()),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            // XML has no way to write most control characters, even as references: they
            // are shown as Rust writes them (`\u{1b}`).
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// The kind of a task, for its colour: its task space and the first part of its key when
/// that is a word (`cholesky[gemm, 3, 1, 0]` is `cholesky[gemm]`), or `task` for anonymous
/// tasks.
fn kind(name: &str) -> String {
    let Some(open) = name.find('[').filter(|&i| i > 0) else {
        return "task".into();
    };
    let space = &name[..open];
    let key = &name[open + 1..];
    let first = key.split([',', ']']).next().unwrap_or("").trim();
    if first.chars().any(|c| c.is_alphabetic()) {
        format!("{space}[{first}]")
    } else {
        space.to_string()
    }
}

/// Whether a bar is drawn inside a task's bar: a span opened in the task, or the host-side
/// launch of a GPU task on its worker.
fn inside(b: &Bar) -> bool {
    matches!(b.cat.as_str(), "user" | "launch")
}

/// Assigns each bar (sorted by start) the first lane where it overlaps nothing; a span or
/// launch goes in the lane of the task bar that holds it, if one does.
fn lanes(bars: &[Bar]) -> (Vec<usize>, usize) {
    // Per lane: where its last bar ends, and the last task bar's extent.
    let mut ends: Vec<f64> = Vec::new();
    let mut tasks: Vec<(f64, f64)> = Vec::new();
    let mut out = Vec::with_capacity(bars.len());
    for b in bars {
        let end = b.ts + b.dur;
        if inside(b)
            && let Some(l) = tasks.iter().position(|&(s, e)| s <= b.ts && end <= e)
        {
            out.push(l);
            continue;
        }
        let lane = match ends.iter().position(|&e| e <= b.ts) {
            Some(l) => l,
            None => {
                ends.push(0.0);
                tasks.push((f64::NAN, f64::NAN));
                ends.len() - 1
            }
        };
        ends[lane] = end;
        if !inside(b) {
            tasks[lane] = (b.ts, end);
        }
        out.push(lane);
    }
    (out, ends.len().max(1))
}

/// The track of a device's tasks that never ran (drawn after its workers or streams).
const NOT_RUN_TID: u64 = 0;

fn draw(events: &[Value], o: &Options) -> Result<String, String> {
    let mut process: BTreeMap<u64, String> = BTreeMap::new();
    let mut thread: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut tracks: BTreeMap<(u64, u64), Vec<Bar>> = BTreeMap::new();
    for e in events {
        let (pid, tid) = (
            e["pid"].as_u64().unwrap_or(0),
            e["tid"].as_u64().unwrap_or(0),
        );
        let name = e["name"].as_str().unwrap_or("").to_string();
        match e["ph"].as_str() {
            Some("M") if name == "process_name" => {
                process.insert(pid, e["args"]["name"].as_str().unwrap_or("").into());
            }
            Some("M") if name == "thread_name" => {
                thread.insert((pid, tid), e["args"]["name"].as_str().unwrap_or("").into());
            }
            Some("X") => {
                let outcome = e["args"]["outcome"].as_str().unwrap_or("ok").to_string();
                // (A slice's start and length are numbers, the length not negative: a trace
                // that says otherwise was not written by the runtime, or was damaged.)
                let (Some(ts), Some(dur)) = (e["ts"].as_f64(), e["dur"].as_f64()) else {
                    return Err(format!(
                        "slice {name:?}: its \"ts\" and \"dur\" must be numbers (got {} and {})",
                        e["ts"], e["dur"]
                    ));
                };
                if dur < 0.0 {
                    return Err(format!("slice {name:?}: negative \"dur\" ({dur})"));
                }
                tracks.entry((pid, tid)).or_default().push(Bar {
                    name,
                    cat: e["cat"].as_str().unwrap_or("").into(),
                    ts,
                    dur,
                    failed: outcome != "ok",
                    outcome,
                });
            }
            _ => {}
        }
    }
    if tracks.is_empty() {
        // (A run that spawned nothing, or whose trace was cut off before its first task: a
        // picture that says so, as a script drawing every run expects one.)
        return Ok(no_slices(o));
    }
    let t_min = tracks
        .values()
        .flatten()
        .map(|b| b.ts)
        .fold(f64::INFINITY, f64::min);
    let t_max = tracks
        .values()
        .flatten()
        .map(|b| b.ts + b.dur)
        .fold(f64::NEG_INFINITY, f64::max);
    let from = o.from_ms.map_or(t_min, |ms| t_min + ms * 1000.0);
    // (A trace whose slices all have no length, of tasks that never ran alone: 1 us wide.)
    let to = o
        .to_ms
        .map_or(t_max.max(t_min + 1.0), |ms| t_min + ms * 1000.0);
    if !(t_min.is_finite() && t_max.is_finite()) {
        return Err(format!(
            "the trace's times are out of range (slices from {t_min:e} to {t_max:e} us)"
        ));
    }
    if !(from.is_finite() && to.is_finite()) {
        return Err("the time window is out of range of the trace's times".into());
    }
    if to <= from {
        return Err(format!(
            "empty time window: the trace spans {:.3} ms",
            (t_max - t_min) / 1000.0
        ));
    }
    let plot = o.width - LABEL - 20.0;
    let x = |t: f64| LABEL + (t - from) / (to - from) * plot;

    // Colours by kind, in order of first appearance.
    let mut colours: Vec<(String, &str)> = Vec::new();
    let mut colour = |k: &str| -> &str {
        if let Some((_, c)) = colours.iter().find(|(n, _)| n == k) {
            return c;
        }
        let c = PALETTE[colours.len() % PALETTE.len()];
        colours.push((k.to_string(), c));
        c
    };

    let mut body = String::new();
    let mut seen_cats = std::collections::HashSet::new();
    let mut any_failed = false;
    let mut y = TOP;
    let mut last_pid = None;
    let mut tracks: Vec<((u64, u64), Vec<Bar>)> = tracks.into_iter().collect();
    tracks.sort_by_key(|&((pid, tid), _)| (pid, tid == NOT_RUN_TID, tid));
    for ((pid, tid), bars) in tracks.iter_mut() {
        let (pid, tid) = (*pid, *tid);
        bars.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        let (lane_of, n) = lanes(bars);
        let h = n as f64 * LANE;
        if last_pid.is_some_and(|p| p != pid) {
            y += GAP;
            let _ = writeln!(
                body,
                r##"<line x1="0" x2="{}" y1="{y}" y2="{y}" stroke="#999"/>"##,
                o.width
            );
            y += GAP;
        }
        last_pid = Some(pid);
        let label = format!(
            "{} / {}",
            process.get(&pid).map_or("?", |s| s.as_str()),
            thread.get(&(pid, tid)).map_or("?", |s| s.as_str())
        );
        let _ = writeln!(
            body,
            r##"<text x="6" y="{}" font-size="11">{}</text>"##,
            y + LANE * 0.75,
            escape(&label)
        );
        let _ = writeln!(
            body,
            r##"<rect x="{LABEL}" y="{y}" width="{plot}" height="{h}" fill="#f4f4f4"/>"##
        );
        for (b, lane) in bars.iter().zip(lane_of) {
            if b.ts + b.dur < from || b.ts > to {
                continue;
            }
            let x0 = x(b.ts.max(from));
            let w = (x(b.ts + b.dur).min(x(to)) - x0).max(0.5);
            let top = y + lane as f64 * LANE;
            let title = format!(
                "{} ({}): {:.1} us at {:.3} ms, {}",
                b.name,
                b.cat,
                b.dur,
                (b.ts - t_min) / 1000.0,
                b.outcome
            );
            let (fill, inset) = match b.cat.as_str() {
                "launch" => ("#bbbbbb", 5.0),
                "user" => ("#333333", 3.0),
                _ => (colour(&kind(&b.name)), 1.0),
            };
            // A thin white edge tells apart bars that touch.
            let stroke = if b.failed {
                r##" stroke="#d00" stroke-width="1.5""##
            } else {
                r##" stroke="white" stroke-width="0.5""##
            };
            seen_cats.insert(b.cat.clone());
            any_failed |= b.failed;
            let _ = writeln!(
                body,
                r##"<rect x="{x0:.2}" y="{:.1}" width="{w:.2}" height="{:.1}" fill="{fill}"{stroke}><title>{}</title></rect>"##,
                top + inset,
                LANE - 2.0 * inset,
                escape(&title)
            );
        }
        y += h;
    }

    // Time axis.
    let span_ms = (to - from) / 1000.0;
    let step = nice_step(span_ms / 10.0);
    let mut axis = String::new();
    // (Counted, not summed: a step too small to move a large time must not loop.)
    let ticks = ((span_ms + 1e-9) / step).floor().min(1000.0) as usize;
    for k in 0..=ticks {
        let t = k as f64 * step;
        let px = x(from + t * 1000.0);
        let _ = writeln!(
            axis,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{}" y2="{y}" stroke="#ddd"/><text x="{px:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"##,
            TOP - 4.0,
            TOP - 8.0,
            fmt_ms(t + (from - t_min) / 1000.0)
        );
    }
    // Legend.
    let mut legend = String::new();
    let ly = y + 24.0;
    let mut lx = LABEL;
    let extra = [
        ("launch", "launch (host side of a GPU task)", "#bbbbbb"),
        ("user", "span inside a task", "#333333"),
    ];
    let extra = extra
        .into_iter()
        .filter(|(cat, _, _)| seen_cats.contains(*cat))
        .map(|(_, k, c)| (k, c));
    for (k, c) in colours.iter().map(|(k, c)| (k.as_str(), *c)).chain(extra) {
        let _ = writeln!(
            legend,
            r##"<rect x="{lx}" y="{}" width="12" height="12" fill="{c}"/><text x="{}" y="{}" font-size="11">{}</text>"##,
            ly - 10.0,
            lx + 16.0,
            ly,
            escape(k)
        );
        lx += 30.0 + 7.0 * k.len() as f64;
    }
    if any_failed {
        let _ = writeln!(
            legend,
            r##"<rect x="{lx}" y="{}" width="12" height="12" fill="white" stroke="#d00" stroke-width="1.5"/><text x="{}" y="{ly}" font-size="11">failed or never ran</text>"##,
            ly - 10.0,
            lx + 16.0
        );
    }
    let height = ly + 16.0;
    Ok(format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="6" y="16" font-size="13" font-weight="bold">{title}</text>
<text x="{LABEL}" y="16" font-size="11">{tasks} tasks, {span}</text>
{axis}{body}{legend}</svg>
"##,
        w = o.width,
        title = escape(&title(o)),
        tasks = tracks
            .iter()
            .flat_map(|(_, bars)| bars)
            .filter(|b| b.cat == "task")
            .count(),
        span = fmt_ms(span_ms),
    ))
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_step(x: f64) -> f64 {
    let p = 10f64.powf(x.max(1e-6).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= x)
        .unwrap_or(10.0 * p)
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} us", ms * 1000.0)
    }
}

/// The picture of a trace without slices: its name, and that no task is in it.
fn no_slices(o: &Options) -> String {
    let w = o.width;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="60" viewBox="0 0 {w} 60" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="6" y="16" font-size="13" font-weight="bold">{}</text>
<text x="{LABEL}" y="16" font-size="11">0 tasks: the trace has no slices</text>
</svg>
"##,
        escape(&title(o))
    )
}

/// The picture's title: the trace's file name.
fn title(o: &Options) -> String {
    std::path::Path::new(&o.input)
        .file_name()
        .map_or(o.input.clone(), |f| f.to_string_lossy().into_owned())
}

fn run(args: &[String]) -> Result<(), String> {
    let Some(o) = parse_args(args)? else {
        println!("{}", usage());
        return Ok(());
    };
    let text = std::fs::read_to_string(&o.input).map_err(|e| format!("{}: {e}", o.input))?;
    let events = read_events(&text).map_err(|e| format!("{}: {e}", o.input))?;
    let svg = draw(&events, &o)?;
    std::fs::write(&o.output, svg).map_err(|e| format!("{}: {e}", o.output))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parla-timeline: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options of a command line that asks for a picture.
    fn options(args: &[&str]) -> Options {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .expect("not a call for help")
    }

    /// Task names come from users' keys, control characters included (`t.at("a\u{1b}b")`):
    /// the SVG stays well-formed XML.
    #[test]
    fn names_with_control_characters_are_written_as_text() {
        let e = escape("a\u{1b}[1m<b>&\"q\"\u{0}\tz");
        assert_eq!(e, "a\\u{1b}[1m&lt;b&gt;&amp;&quot;q&quot;\\u{0}\tz");
        assert!(!e.chars().any(|c| c.is_control() && c != '\t'));
    }

    #[test]
    fn kinds_come_from_the_space_and_a_word_key() {
        assert_eq!(kind("cholesky[gemm, 3, 1, 0]"), "cholesky[gemm]");
        assert_eq!(kind("T[3]"), "T");
        assert_eq!(kind("#12"), "task");
    }

    #[test]
    fn overlapping_bars_get_their_own_lanes() {
        let bar = |ts: f64, dur: f64| Bar {
            name: String::new(),
            cat: "task".into(),
            ts,
            dur,
            failed: false,
            outcome: "ok".into(),
        };
        let (l, n) = lanes(&[bar(0.0, 10.0), bar(2.0, 3.0), bar(6.0, 1.0), bar(10.0, 1.0)]);
        assert_eq!((l, n), (vec![0, 1, 1, 0], 2));
    }

    #[test]
    fn spans_and_launches_go_inside_their_task_and_the_never_ran_row_last() {
        let bar = |cat: &str, ts: f64, dur: f64| Bar {
            name: "T[0]".into(),
            cat: cat.into(),
            ts,
            dur,
            failed: false,
            outcome: "ok".into(),
        };
        // A span inside the first task, a launch inside the second, a span outside both.
        let bars = [
            bar("task", 0.0, 10.0),
            bar("user", 2.0, 3.0),
            bar("task", 10.0, 5.0),
            bar("launch", 10.0, 1.0),
            bar("user", 20.0, 1.0),
        ];
        assert_eq!(lanes(&bars), (vec![0, 0, 0, 0, 0], 1));

        let events: Vec<Value> = serde_json::from_str(
            r#"[{"ph":"M","name":"thread_name","pid":0,"tid":0,"args":{"name":"never ran"}},
                {"ph":"M","name":"thread_name","pid":0,"tid":1,"args":{"name":"worker 0"}},
                {"ph":"X","cat":"task","name":"A","pid":0,"tid":1,"ts":0,"dur":100},
                {"ph":"X","cat":"user","name":"inner","pid":0,"tid":1,"ts":10,"dur":20},
                {"ph":"X","cat":"task","name":"B","pid":0,"tid":0,"ts":100,"dur":0,
                 "args":{"outcome":"DependencyFailed"}}]"#,
        )
        .unwrap();
        let o = options(&["t.json", "t.svg"]);
        let svg = draw(&events, &o).unwrap();
        let worker = svg.find("worker 0").unwrap();
        let never = svg.find("never ran<").unwrap();
        assert!(worker < never, "the never-ran row comes last");
    }

    #[test]
    fn a_trace_of_tasks_that_never_ran_alone_is_drawn() {
        let events: Vec<Value> = serde_json::from_str(
            r#"[{"ph":"X","cat":"task","name":"A","pid":0,"tid":0,"ts":5,"dur":0,
                 "args":{"outcome":"Cancelled"}}]"#,
        )
        .unwrap();
        let o = options(&["t.json", "t.svg"]);
        let svg = draw(&events, &o).unwrap();
        assert!(svg.contains("stroke=\"#d00\""), "outlined as failed");
    }

    #[test]
    fn bad_arguments_are_errors_that_say_why() {
        let args = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(args(&["t.json"]).unwrap_err().starts_with("usage"));
        assert!(
            args(&["a", "b", "--width"])
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            args(&["a", "b", "--from", "-3"])
                .unwrap_err()
                .contains("not a non-negative")
        );
        assert!(
            args(&["a", "b", "--frob"])
                .unwrap_err()
                .contains("unknown option --frob")
        );
        let o = options(&["a", "b", "--from", "5", "--to", "2"]);
        let events: Vec<Value> = serde_json::from_str(
            r#"[{"ph":"X","cat":"task","name":"A","pid":0,"tid":1,"ts":0,"dur":10000}]"#,
        )
        .unwrap();
        assert!(draw(&events, &o).unwrap_err().contains("empty time window"));
        assert!(args(&["--help"]).unwrap().is_none(), "help is not an error");
        assert!(args(&["a", "b", "-h"]).unwrap().is_none());
    }

    /// A window or a trace whose times overflow to infinity is an error, not a loop: the
    /// axis once added ticks until memory ran out.
    #[test]
    fn times_out_of_range_are_errors() {
        let events: Vec<Value> = serde_json::from_str(
            r#"[{"ph":"X","cat":"task","name":"A","pid":0,"tid":1,"ts":0,"dur":10}]"#,
        )
        .unwrap();
        let e = draw(&events, &options(&["a", "b", "--to", "1e306"])).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let huge: Vec<Value> = serde_json::from_str(
            r#"[{"ph":"X","cat":"task","name":"A","pid":0,"tid":1,"ts":1e308,"dur":1e308}]"#,
        )
        .unwrap();
        let e = draw(&huge, &options(&["a", "b"])).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        assert!(e.len() < 200, "the times are written short: {e}");
        // A slice without numbers for its times, or with a negative length: an error
        // naming it, not a bar drawn at 0.
        for bad in [
            r#"[{"ph":"X","name":"A","ts":"x","dur":null}]"#,
            r#"[{"ph":"X","name":"A","ts":0}]"#,
            r#"[{"ph":"X","name":"A","ts":5,"dur":-1}]"#,
        ] {
            let events: Vec<Value> = serde_json::from_str(bad).unwrap();
            let e = draw(&events, &options(&["a", "b"])).unwrap_err();
            assert!(e.contains("slice \"A\""), "{bad}: {e}");
        }
        // Large but finite: drawn, with a bounded axis.
        let far: Vec<Value> = serde_json::from_str(
            r#"[{"ph":"X","cat":"task","name":"A","pid":0,"tid":1,"ts":1e300,"dur":1e299}]"#,
        )
        .unwrap();
        let svg = draw(&far, &options(&["a", "b"])).unwrap();
        assert!(svg.matches("<line").count() < 1100);
    }

    #[test]
    fn a_trace_cut_short_is_read_as_far_as_it_goes() {
        let text = "{\"traceEvents\":[\n{\"ph\":\"X\",\"name\":\"a\",\"ts\":1,\"dur\":2},";
        assert_eq!(read_events(text).unwrap().len(), 1);
        // Cut inside its second event (a program killed while the file was written).
        let cut_inside = format!("{text}\n{{\"ph\":\"X\",\"na");
        assert_eq!(read_events(&cut_inside).unwrap().len(), 1);
        assert!(read_events("not json").is_err());
    }

    #[test]
    fn a_trace_draws_a_row_per_track_and_a_bar_per_slice() {
        let events: Vec<Value> = serde_json::from_str(
            r#"[{"ph":"M","name":"process_name","pid":0,"args":{"name":"CPU workers"}},
                {"ph":"X","cat":"task","name":"A[0]","pid":0,"tid":1,"ts":0,"dur":5,"args":{"outcome":"ok"}},
                {"ph":"X","cat":"task","name":"A[1]","pid":0,"tid":2,"ts":5,"dur":5,"args":{"outcome":"failed"}}]"#,
        )
        .unwrap();
        let o = options(&["t.json", "t.svg"]);
        let svg = draw(&events, &o).unwrap();
        assert_eq!(svg.matches("<title>A[").count(), 2);
        assert!(svg.contains("CPU workers / ?"));
        assert!(
            svg.contains("stroke=\"#d00\""),
            "the failed task is outlined"
        );
        // A trace without slices (a run that spawned nothing) is drawn, saying so.
        let empty = draw(&[], &o).unwrap();
        assert!(
            empty.contains("0 tasks: the trace has no slices"),
            "{empty}"
        );
        assert!(empty.starts_with("<svg") && empty.trim_end().ends_with("</svg>"));
    }
}
