//! Engine benchmark: prints events/s in one session, session starts/s and memory per
//! live idle session, for the document the engine issue specifies; then events/s for a
//! document whose transition runs a loop (what the budget checks cost). Run with
//! `cargo bench -p ors-ecmascript --bench engine` (release build, one thread, with the
//! counting allocator `ors serve` uses).

use std::sync::Arc;
use std::time::Instant;

use ors_scxml::{CompileOptions, Document, Event, Session, SystemVars, compile};
use serde_json::json;

const DOC: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" initial="a">
  <datamodel>
    <data id="counter" expr="0"/>
    <data id="limit" expr="1000000000"/>
  </datamodel>
  <state id="a">
    <transition event="tick" cond="counter &lt; limit" target="b"><assign location="counter" expr="counter + 1"/></transition>
    <transition event="tick" target="end"/>
  </state>
  <state id="b">
    <transition event="tick" cond="counter &lt; limit" target="a"><assign location="counter" expr="counter + 1"/></transition>
    <transition event="tick" target="end"/>
  </state>
  <final id="end"/>
</scxml>"#;

/// A transition that loops and calls a function: 100 budget checks per event.
const LOOPING: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" initial="a">
  <datamodel><data id="acc" expr="0"/></datamodel>
  <state id="a">
    <transition event="tick"><script><![CDATA[
      function add(x) { return x + 1; }
      for (var i = 0; i < 50; i++) acc = add(acc);
    ]]></script></transition>
  </state>
</scxml>"#;

#[global_allocator]
static ALLOC: ors_alloc_meter::CountingAlloc = ors_alloc_meter::CountingAlloc::system();

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn session(doc: &Arc<Document>, n: usize) -> Session {
    let id = format!("bench-{n}");
    let vars = SystemVars {
        sessionid: id.clone(),
        name: None,
        ioprocessors: json!({}),
    };
    Session::new(doc.clone(), ors_ecmascript::datamodel_for(doc, &vars), id)
}

fn main() {
    let doc = compile(DOC, &CompileOptions::default()).expect("benchmark document compiles");
    let tick = Event::external("tick", None);

    // Warm up the thread's JS context and the compiled expressions.
    let mut s = session(&doc, 0);
    s.start(0, &[]);
    for _ in 0..10_000 {
        s.push_external(tick.clone()).unwrap();
        s.step(0);
    }

    // 1. External events per second, one session, one core.
    let n_events = 1_000_000u32;
    let t = Instant::now();
    for _ in 0..n_events {
        s.push_external(tick.clone()).unwrap();
        s.step(0);
    }
    let secs = t.elapsed().as_secs_f64();
    let counter = s.datamodel_json().unwrap()["counter"].as_u64().unwrap();
    assert_eq!(
        counter,
        10_000 + n_events as u64,
        "every tick must have counted"
    );
    println!(
        "events:   {n_events} ticks in {secs:.3} s = {:.0} events/s",
        n_events as f64 / secs
    );
    drop(s);

    // 2. Session starts per second and 3. memory per live idle session.
    let n_sessions = 10_000usize;
    let before = rss_bytes();
    let t = Instant::now();
    let mut live = Vec::with_capacity(n_sessions);
    for i in 0..n_sessions {
        let mut s = session(&doc, i + 1);
        s.start(0, &[]);
        live.push(s);
    }
    let secs = t.elapsed().as_secs_f64();
    let after = rss_bytes();
    println!(
        "starts:   {n_sessions} sessions in {secs:.3} s = {:.0} starts/s",
        n_sessions as f64 / secs
    );
    // Every session must be alive and answering.
    for s in live.iter_mut().step_by(997) {
        s.push_external(tick.clone()).unwrap();
        s.step(0);
        assert_eq!(s.active_atomic_states(), ["b"]);
    }
    let per = (after.saturating_sub(before)) as f64 / n_sessions as f64;
    println!(
        "memory:   {n_sessions} live idle sessions: RSS +{:.1} MiB = {:.1} KiB per session",
        (after - before) as f64 / (1 << 20) as f64,
        per / 1024.0
    );
    drop(live);

    // 4. A looping script.
    let looping = compile(LOOPING, &CompileOptions::default()).expect("looping document compiles");
    let mut s = session(&looping, 0);
    s.start(0, &[]);
    let n_events = 100_000u32;
    let t = Instant::now();
    for _ in 0..n_events {
        s.push_external(tick.clone()).unwrap();
        s.step(0);
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        s.datamodel_json().unwrap()["acc"].as_u64().unwrap(),
        50 * n_events as u64
    );
    println!(
        "looping:  {n_events} events of 50 iterations and 50 calls in {secs:.3} s = {:.0} events/s",
        n_events as f64 / secs
    );
    drop(s);
    ors_ecmascript::release_thread();
}
