//! Isolation between the sessions of one thread, which share one JS context: whatever a
//! script of one session does, no value, binding, prototype change or global it creates
//! is visible to another session. Each case runs a hostile script in many sessions, then
//! checks in as many fresh sessions of the same document (interleaved on this thread)
//! that nothing of it shows.

mod common;

use std::sync::Arc;

use common::session;
use ors_scxml::{CompileOptions, Document, Event, Session, compile};
use serde_json::json;

fn doc(setup: &str, write: &str, check: &str) -> Arc<Document> {
    let check = check.replace('&', "&amp;").replace('<', "&lt;");
    let text = format!(
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" initial="s">
  <datamodel><data id="d"><node a="1"/></data></datamodel>
  <script><![CDATA[{setup}]]></script>
  <state id="s">
    <transition event="write"><script><![CDATA[{write}]]></script></transition>
    <transition event="check" cond="{check}" target="pass"/>
    <transition event="check" target="fail"/>
  </state>
  <final id="pass"/><final id="fail"/>
</scxml>"#
    );
    compile(&text, &CompileOptions::default()).expect("test documents compile")
}

fn send(s: &mut Session, name: &str, data: serde_json::Value) {
    s.push_external(Event::external(name, Some(data))).unwrap();
    s.run(1);
}

/// `write` runs in 10 sessions (with `_event.data.v` = their number); then `check` must
/// hold in 10 fresh sessions, created before the writes and checked after them.
fn isolated(setup: &str, write: &str, check: &str) {
    let d = doc(setup, write, check);
    let mut sessions: Vec<Session> = (0..20).map(|i| session(&d, &format!("s-{i}"))).collect();
    for (i, s) in sessions.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
        send(s, "write", json!({ "v": i }));
    }
    for (i, s) in sessions.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
        send(s, "check", json!({}));
        assert_eq!(
            s.active_atomic_states(),
            ["pass"],
            "session {i} saw what another session's script did: `{write}`"
        );
    }
}

#[test]
fn top_level_lexical_declarations_are_per_session() {
    // The issue's case: a top-level `let` in one session, read from another.
    isolated(
        "",
        "let secret = _event.data.v;",
        "typeof secret === 'undefined'",
    );
    isolated(
        "",
        "const k = 1; class C {}",
        "typeof k === 'undefined' && typeof C === 'undefined'",
    );
    // Declared in a document-level script: every session has its own.
    isolated("let counter = 0;", "counter = 100;", "counter === 0");
}

#[test]
fn a_session_keeps_its_own_top_level_bindings() {
    let d = doc(
        "let mine = _sessionid; class Box { constructor(v) { this.v = v; } }",
        "var b = new Box(mine);",
        "mine === _sessionid && b.v === _sessionid",
    );
    let mut a = session(&d, "a");
    let mut b = session(&d, "b");
    for s in [&mut a, &mut b] {
        send(s, "write", json!({}));
    }
    for s in [&mut a, &mut b] {
        send(s, "check", json!({}));
        assert_eq!(s.active_atomic_states(), ["pass"]);
    }
}

#[test]
fn globals_created_any_way_are_per_session() {
    isolated(
        "",
        "var g1 = 1; implicit = 2;",
        "typeof g1 === 'undefined' && typeof implicit === 'undefined'",
    );
    isolated(
        "",
        "globalThis.viaThis = 3;",
        "typeof viaThis === 'undefined'",
    );
    isolated(
        "",
        "Object.defineProperty(globalThis, 'fixed', { value: 4, writable: false, configurable: false });",
        "typeof fixed === 'undefined'",
    );
    isolated(
        "",
        "this.viaScriptThis = 5;",
        "typeof viaScriptThis === 'undefined'",
    );
    isolated(
        "",
        "(0, eval)('var viaEval = 6');",
        "typeof viaEval === 'undefined'",
    );
    isolated(
        "",
        "new Function('viaFunction = 7')();",
        "typeof viaFunction === 'undefined'",
    );
}

#[test]
fn built_ins_cannot_be_changed() {
    isolated("", "Array.prototype.leak = 1;", "[].leak === undefined");
    isolated("", "Object.prototype.leak = 1;", "({}).leak === undefined");
    isolated(
        "",
        "Object.defineProperty(Object.prototype, 'leak2', { get: function () { return 1; } });",
        "({}).leak2 === undefined",
    );
    isolated(
        "",
        "String.prototype.trim = function () { return 'evil'; };",
        "' a '.trim() === 'a'",
    );
    isolated(
        "",
        "Math.secret = 1; JSON.stringify = function () { return 'evil'; };",
        "Math.secret === undefined && JSON.stringify(1) === '1'",
    );
    isolated(
        "",
        "Function.prototype.call = null;",
        "typeof Function.prototype.call === 'function'",
    );
    isolated(
        "",
        "parseInt = function () { return 42; }; Array = null;",
        "parseInt('7') === 7 && Array !== null",
    );
    isolated("", "delete globalThis.Map;", "typeof Map === 'function'");
    isolated(
        "",
        "Object.setPrototypeOf(Object.prototype, {leak: 1});",
        "({}).leak === undefined",
    );
    isolated(
        "",
        "Object.getPrototypeOf(function* () {}).leak = 1;",
        "Object.getPrototypeOf(function* () {}).leak === undefined",
    );
    isolated(
        "",
        "Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]())).leak = 1;",
        "Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]())).leak === undefined",
    );
    // The DOM of XML data shares its prototype between sessions.
    isolated(
        "",
        "Object.getPrototypeOf(d).getAttribute = function () { return 'evil'; };",
        "d.documentElement === null || d.getElementsByTagName('node')[0].getAttribute('a') === '1'",
    );
}

#[test]
fn a_data_item_named_like_a_built_in_shadows_it_for_its_session_only() {
    let text = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" initial="s">
  <datamodel><data id="Date" expr="5"/></datamodel>
  <state id="s"><transition event="check" cond="Date === 5" target="pass"/><transition event="check" target="fail"/></state>
  <final id="pass"/><final id="fail"/></scxml>"#;
    let shadowing = compile(text, &CompileOptions::default()).unwrap();
    let plain = doc(
        "",
        "",
        "typeof Date === 'function' && typeof Date.now() === 'number'",
    );
    let mut a = session(&shadowing, "a");
    let mut b = session(&plain, "b");
    send(&mut a, "check", json!({}));
    send(&mut b, "check", json!({}));
    assert_eq!(a.active_atomic_states(), ["pass"]);
    assert_eq!(b.active_atomic_states(), ["pass"]);
}

#[test]
fn ordinary_code_still_works_on_frozen_built_ins() {
    // Assigning a name or a message to an error, or toString to an object, defines it on
    // the object (the frozen prototypes do not get in the way).
    let d = doc(
        "",
        r#"var e = new Error('x'); e.name = 'Mine'; e.message = 'changed';
           var o = {}; o.toString = function () { return 'o!'; };
           function F() {} F.prototype.constructor = F; var arr = [3, 1, 2]; arr.sort();
           var m = new Map([[1, 2]]); m.set(3, 4);"#,
        "e.name === 'Mine' && e.message === 'changed' && String(o) === 'o!' && arr.join() === '1,2,3' && m.size === 2",
    );
    let mut s = session(&d, "a");
    send(&mut s, "write", json!({}));
    send(&mut s, "check", json!({}));
    assert_eq!(s.active_atomic_states(), ["pass"]);
}

#[test]
fn globals_created_by_expressions_of_a_document_without_scripts_are_per_session() {
    // Strict expressions reach the global object only through a few names; each way.
    // Code from strings is refused outright (it would escape the budget checks).
    for (reach, runs) in [
        ("globalThis", true),
        ("Function('return this')()", false),
        ("({}).constructor.constructor('return this')()", false),
        ("(0, eval)('this')", false),
    ] {
        let text = format!(
            r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" initial="s">
  <datamodel><data id="y"/></datamodel>
  <state id="s">
    <transition event="write"><assign location="y" expr="({reach}.viaExpr = _event.data.v)"/></transition>
    <transition event="check" cond="typeof viaExpr === 'undefined'" target="pass"/>
    <transition event="check" target="fail"/>
  </state>
  <final id="pass"/><final id="fail"/></scxml>"#
        );
        let d = compile(&text, &CompileOptions::default()).unwrap();
        let mut a = session(&d, "a");
        let mut b = session(&d, "b");
        send(&mut a, "write", json!({ "v": 1 }));
        assert_eq!(
            a.datamodel_json().unwrap()["y"] == 1,
            runs,
            "{reach}: the write ran or was refused"
        );
        send(&mut b, "check", json!({}));
        assert_eq!(b.active_atomic_states(), ["pass"], "{reach}");
    }
}

/// A session's variables stay in the context between its calls while no other session
/// runs: they are neither lost nor seen by the next session, whether that one starts,
/// runs, or only reads a datamodel; nor after their owner is dropped.
#[test]
fn variables_left_in_the_context_go_back_before_another_session_runs() {
    let d = doc(
        "",
        "var v = _event.data.v; w = v + 1;",
        "typeof v === 'undefined' && typeof w === 'undefined'",
    );
    let mut a = session(&d, "a");
    send(&mut a, "write", json!({ "v": 7 }));
    // Twice in a row: nothing swapped out between, nothing lost.
    assert_eq!(a.datamodel_json().unwrap()["w"], 8);
    send(&mut a, "write", json!({ "v": 9 }));
    assert_eq!(a.datamodel_json().unwrap()["v"], 9);
    // Another session: a start, a datamodel read, a check.
    let mut b = session(&d, "b");
    assert!(b.datamodel_json().unwrap().get("v").is_none());
    send(&mut b, "check", json!({}));
    assert_eq!(b.active_atomic_states(), ["pass"]);
    // Back to the first: its variables came back with it.
    assert_eq!(a.datamodel_json().unwrap()["w"], 10);
    send(&mut a, "write", json!({ "v": 1 }));
    assert_eq!(a.datamodel_json().unwrap()["w"], 2);
    // Dropped while its variables are in the context: they leave with it.
    drop(a);
    let mut c = session(&d, "c");
    send(&mut c, "check", json!({}));
    assert_eq!(c.active_atomic_states(), ["pass"]);
}
