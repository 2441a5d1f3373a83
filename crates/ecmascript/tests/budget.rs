//! A macrostep over its time or memory budget aborts its session, whatever the script
//! does (catch the error, hide the work in a callback, recurse instead of loop), and the
//! next session on the thread runs normally.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::session;
use ors_alloc_meter::CountingAlloc;
use ors_ecmascript::{Budget, RuntimeOptions};
use ors_scxml::{CompileOptions, Document, Effect, Event, Session, compile};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::system();

const TIME: Duration = Duration::from_millis(200);
const MEMORY: u64 = 64 << 20;

fn doc(script: &str) -> Arc<Document> {
    let text = format!(
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" initial="s">
  <datamodel><data id="n" expr="0"/></datamodel>
  <state id="s">
    <transition event="go"><script><![CDATA[{script}]]></script></transition>
    <transition event="count"><assign location="n" expr="n + 1"/></transition>
  </state></scxml>"#
    );
    compile(&text, &CompileOptions::default()).expect("test documents compile")
}

fn send(s: &mut Session, name: &str) -> Vec<Effect> {
    s.push_external(Event::external(name, None)).unwrap();
    s.run(0)
}

fn budgeted() {
    with_time_budget(TIME);
}

/// Memory tests allow much more time: a debug build of boa is slow to allocate.
fn with_time_budget(time: Duration) {
    ors_ecmascript::configure_thread(RuntimeOptions {
        budget: Budget {
            time: Some(time),
            memory: Some(MEMORY),
        },
        ..RuntimeOptions::default()
    });
}

/// Runs `script` on `go` and returns why the session was aborted, after checking it took
/// a bounded time and another session still runs.
fn aborted_by(script: &str) -> String {
    aborted_within(script, TIME)
}

fn aborted_within(script: &str, time: Duration) -> String {
    with_time_budget(time);
    let d = doc(script);
    let mut bomb = session(&d, "bomb");
    let t = Instant::now();
    let fx = send(&mut bomb, "go");
    let took = t.elapsed();
    let reason = fx
        .iter()
        .find_map(|e| match e {
            Effect::Aborted { reason } => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("not aborted: {script}\n{fx:?}"));
    assert!(took < time * 10, "{script}: took {took:?}");
    assert!(!bomb.is_running());
    let mut next = session(&d, "next");
    send(&mut next, "count");
    assert_eq!(
        next.datamodel_json().unwrap()["n"],
        1,
        "the next session runs"
    );
    reason
}

#[test]
fn exponential_recursion_runs_out_of_time() {
    let r = aborted_by("function f(n) { if (n > 0) { f(n - 1); f(n - 1); } } f(60);");
    assert!(r.contains("longer than 200 ms"), "{r}");
}

#[test]
fn catching_the_error_does_not_help() {
    let r = aborted_by(
        "function f(n) { if (n > 0) { f(n - 1); f(n - 1); } } \
         for (;;) { try { f(60); } catch (e) {} }",
    );
    assert!(r.contains("budget exceeded"), "{r}");
}

#[test]
fn work_hidden_in_a_callback_runs_out_of_time() {
    let r = aborted_by(
        "[1, 2].forEach(function () { var g = (n) => n > 0 ? g(n - 1) + g(n - 1) : 1; g(60); });",
    );
    assert!(r.contains("longer than"), "{r}");
}

#[test]
fn nested_loops_run_out_of_time() {
    let r = aborted_by(
        "var x = 0; for (var i = 0; i < 900000; i++) { for (var k in {a: 1, b: 2}) { \
         (function () { for (var j = 0; j < 900000; j++) x++; })(); } }",
    );
    assert!(r.contains("longer than"), "{r}");
}

#[test]
fn keeping_what_it_allocates_runs_out_of_memory() {
    let r = aborted_within(
        "var a = []; for (;;) a.push('x'.repeat(1 << 19) + a.length);",
        Duration::from_secs(60),
    );
    assert!(r.contains("more than 64 MiB"), "{r}");
}

#[test]
fn one_native_call_cannot_do_unbounded_work() {
    budgeted();
    for (script, error) in [
        (
            "var a = []; for (var i = 0; i < 200; i++) { a.push(new Array(10000000)); a[i].fill(1); }",
            "more than 1048576 elements",
        ),
        (
            "new Array(2 ** 32 - 1).indexOf(1)",
            "more than 1048576 elements",
        ),
        ("Array.from({ length: 1e9 })", "more than 1048576 elements"),
        (
            "[].concat(new Array(600000), new Array(600000))",
            "more than 1048576",
        ),
        ("new Uint8Array(1 << 30)", ""),
        ("'ab'.repeat(1 << 29)", "longer than"),
    ] {
        let d = doc(&format!(
            "try {{ {script}; n = 'no error'; }} catch (e) {{ n = String(e); }}"
        ));
        let mut s = session(&d, "native");
        let t = Instant::now();
        let fx = send(&mut s, "go");
        assert!(t.elapsed() < TIME * 10, "{script}: took {:?}", t.elapsed());
        assert!(
            !fx.iter().any(|e| matches!(e, Effect::Aborted { .. })),
            "{script}: {fx:?}"
        );
        let n = s.datamodel_json().unwrap()["n"].clone();
        let n = n.as_str().unwrap_or_default();
        assert!(
            n.contains("RangeError") && n.contains(error),
            "{script}: {n}"
        );
    }
}

#[test]
fn doubling_a_string_runs_out_of_memory() {
    let r = aborted_within("var s = 'x'; while (true) s += s;", Duration::from_secs(60));
    assert!(r.contains("more than 64 MiB"), "{r}");
}

#[test]
fn garbage_is_not_counted() {
    with_time_budget(Duration::from_secs(60));
    // Some 450 Mi characters allocated in total, never more than a few Mi alive.
    let d = doc(
        "for (var i = 0; i < 300; i++) { var t = 'y'.repeat(1 << 19); t = t + t; } n = t.length;",
    );
    let mut s = session(&d, "garbage");
    let fx = send(&mut s, "go");
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Aborted { .. })),
        "{fx:?}"
    );
    assert_eq!(s.datamodel_json().unwrap()["n"], 1 << 20, "{fx:?}");
}

#[test]
fn code_from_strings_is_refused() {
    budgeted();
    let d = doc("n = eval('1 + 1');");
    let mut s = session(&d, "eval");
    send(&mut s, "go");
    assert_eq!(s.datamodel_json().unwrap()["n"], 0);
}
