//! `ors bench FILE`: the engine's speed and memory on one document, in process, printed
//! as one JSON line.
//!
//! - events: one session of the document gets `--count` external events `--event`
//!   (with `--data`), one macrostep each, until the count is reached or the session ends
//!   (after a warm-up of up to 10,000 events on another session);
//! - starts: `--sessions` sessions of the document are started and kept alive;
//! - memory: what those live sessions hold, from the allocator's count (heap bytes) and
//!   from the resident set.
//!
//! Rates are per CPU-second of the thread that runs them.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use ors::files::compile_file;
use ors_scxml::{Document, Event, Session, SystemVars};
use serde_json::{Value, json};

/// What `ors bench` was asked.
pub struct BenchArgs<'a> {
    pub file: &'a Path,
    pub event: &'a str,
    pub count: u64,
    pub sessions: usize,
    pub data: Option<Value>,
}

/// Time this thread spends on a CPU (`CLOCK_THREAD_CPUTIME_ID`, precise to the
/// nanosecond; `/proc/.../schedstat` only moves at scheduler ticks).
struct Clock(cpu_time::ThreadTime);

impl Clock {
    fn start() -> Clock {
        Clock(cpu_time::ThreadTime::now())
    }

    fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn session(doc: &Arc<Document>, n: usize) -> Session {
    let id = format!("bench-{n}");
    let vars = SystemVars::new(&id, doc, None);
    Session::new(doc.clone(), ors_ecmascript::datamodel_for(doc, &vars), id)
}

pub fn bench(a: BenchArgs<'_>) -> anyhow::Result<ExitCode> {
    let doc = compile_file(a.file, Some(&ors_ecmascript::SyntaxChecker))
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("compiling {}", a.file.display()))?;
    let event = Event::external(a.event, a.data.clone());

    // Warm up: the thread's JS context and the document's compiled expressions are made
    // on first use (SCION's bench warms V8 up the same way).
    let mut warm = session(&doc, 0);
    warm.start(0, &[]);
    for _ in 0..a.count.min(10_000) {
        if !warm.is_running() || warm.push_external(event.clone()).is_err() {
            break;
        }
        warm.step(0);
    }
    drop(warm);

    // 1. Events through one session.
    let mut s = session(&doc, 0);
    s.start(0, &[]);
    let clock = Clock::start();
    let mut events = 0u64;
    while events < a.count && s.is_running() {
        s.push_external(event.clone())
            .map_err(|e| anyhow::anyhow!("the session refused an event: {e}"))?;
        s.step(0);
        events += 1;
    }
    let event_seconds = clock.seconds();
    let configuration = s.active_atomic_states();
    drop(s);

    // 2. Starts, and 3. what the live sessions hold.
    let heap_before = ors_alloc_meter::thread_net_bytes();
    let rss_before = rss_bytes();
    let clock = Clock::start();
    let mut live = Vec::with_capacity(a.sessions);
    for i in 0..a.sessions {
        let mut s = session(&doc, i + 1);
        s.start(0, &[]);
        live.push(s);
    }
    let start_seconds = clock.seconds();
    let per_session = |total: i64| {
        (a.sessions > 0).then(|| (total.max(0) as f64 / a.sessions as f64).round() as u64)
    };
    let heap = per_session(ors_alloc_meter::thread_net_bytes() - heap_before);
    let rss = rss_before
        .zip(rss_bytes())
        .and_then(|(b, a)| per_session(a as i64 - b as i64));
    drop(live);
    ors_ecmascript::release_thread();

    let rate = |n: f64, secs: f64| (secs > 0.0).then(|| (n / secs).round());
    println!(
        "{}",
        json!({
            "document": a.file.display().to_string(),
            "clock": "thread-cpu",
            "event": a.event,
            "events": events,
            "events_per_cpu_second": rate(events as f64, event_seconds),
            "configuration_after_events": configuration,
            "sessions": a.sessions,
            "starts_per_cpu_second": rate(a.sessions as f64, start_seconds),
            "heap_bytes_per_session": heap,
            "rss_bytes_per_session": rss,
        })
    );
    Ok(ExitCode::SUCCESS)
}
