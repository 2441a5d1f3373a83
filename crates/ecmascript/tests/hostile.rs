//! Hostile and broken documents end in `error.execution` or a clean abort, never a hang
//! or a panic.

use std::sync::Arc;

use ors_scxml::{CompileOptions, Document, Effect, Event, Session, SystemVars, compile};
use serde_json::json;

fn doc(body: &str) -> Arc<Document> {
    let text = format!(
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" initial="s">{body}
           <final id="pass"/><final id="fail"/></scxml>"#
    );
    compile(&text, &CompileOptions::default()).expect("test documents compile")
}

fn run(doc: &Arc<Document>) -> (Session, Vec<Effect>) {
    let vars = SystemVars {
        sessionid: "t-1".into(),
        name: None,
        ioprocessors: json!({}),
    };
    let mut s = Session::new(
        doc.clone(),
        ors_ecmascript::datamodel_for(doc, &vars),
        "t-1",
    );
    let fx = s.start(0, &[]);
    (s, fx)
}

fn ends_in(doc_body: &str, state: &str) {
    // These pin boa's own limits: without the macrostep budget (`budget.rs` has its
    // tests), which a slow debug build could reach first.
    ors_ecmascript::configure_thread(ors_ecmascript::RuntimeOptions {
        budget: ors_ecmascript::Budget::default(),
        ..Default::default()
    });
    let (s, _) = run(&doc(doc_body));
    assert!(
        s.is_done(),
        "session still running in {:?}",
        s.active_atomic_states()
    );
    assert_eq!(s.active_atomic_states(), [state]);
}

#[test]
fn endless_loop_in_a_script_raises_error_execution() {
    ends_in(
        r#"<state id="s"><onentry><script>while (true) {}</script></onentry>
           <transition event="error.execution" target="pass"/><transition event="*" target="fail"/></state>"#,
        "pass",
    );
}

#[test]
fn endless_loop_inside_try_catch_still_stops() {
    ends_in(
        r#"<state id="s"><onentry><script>try { for (;;) {} } catch (e) {}</script></onentry>
           <transition event="error.execution" target="pass"/><transition event="*" target="fail"/></state>"#,
        "pass",
    );
}

#[test]
fn deep_recursion_raises_error_execution() {
    ends_in(
        r#"<state id="s"><onentry><script>function f(n) { return f(n + 1) + 1; } f(0);</script></onentry>
           <transition event="error.execution" target="pass"/><transition event="*" target="fail"/></state>"#,
        "pass",
    );
}

#[test]
fn huge_string_repeat_raises_error_execution() {
    ends_in(
        r#"<datamodel><data id="x"/></datamodel>
           <state id="s"><onentry><assign location="x" expr="'x'.repeat(1 &lt;&lt; 30)"/></onentry>
           <transition event="error.execution" target="pass"/><transition event="*" target="fail"/></state>"#,
        "pass",
    );
}

#[test]
fn endless_eventless_loop_aborts_the_session() {
    let d = doc(
        r#"<state id="s"><transition target="t"/></state><state id="t"><transition target="s"/></state>"#,
    );
    let (s, fx) = run(&d);
    assert!(s.is_done());
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Aborted { reason } if reason.contains("microsteps"))),
        "{fx:?}"
    );
}

#[test]
fn endless_raise_loop_aborts_the_session() {
    let d = doc(
        r#"<state id="s"><onentry><raise event="go"/></onentry><transition event="go" target="s"/></state>"#,
    );
    let (s, fx) = run(&d);
    assert!(s.is_done());
    assert!(fx.iter().any(|e| matches!(e, Effect::Aborted { .. })));
}

#[test]
fn self_sending_loop_is_bounded_by_the_queue() {
    // Each event sends two more to itself: the queue limit stops the growth.
    let d = doc(
        r#"<state id="s"><transition event="go"><send event="go"/><send event="go"/></transition></state>"#,
    );
    let (mut s, _) = run(&d);
    s.push_external(Event::external("go", None)).unwrap();
    for _ in 0..100 {
        s.step(0);
    }
    assert!(s.queued() <= 10_000);
}

#[test]
fn sessions_on_one_thread_do_not_see_each_others_variables() {
    let d = doc(
        r#"<datamodel><data id="mine" expr="_sessionid"/></datamodel>
           <state id="s"><onentry><script>var leaked = 1; implicit = 2;</script></onentry>
             <transition event="check" cond="typeof other === 'undefined' &amp;&amp; mine === _sessionid" target="pass"/>
             <transition event="check" target="fail"/></state>"#,
    );
    let other = doc(r#"<datamodel><data id="other" expr="1"/></datamodel>
           <state id="s"><transition event="check" cond="typeof leaked === 'undefined' &amp;&amp; typeof implicit === 'undefined' &amp;&amp; typeof mine === 'undefined'" target="pass"/>
           <transition event="check" target="fail"/></state>"#);
    let (mut a, _) = run(&d);
    let (mut b, _) = run(&other);
    for s in [&mut a, &mut b] {
        s.push_external(Event::external("check", None)).unwrap();
        s.run(1);
        assert_eq!(s.active_atomic_states(), ["pass"]);
    }
}

#[test]
fn assigning_to_system_variables_or_undeclared_names_fails() {
    ends_in(
        r#"<state id="s"><onentry><assign location="_sessionid" expr="'x'"/></onentry>
           <transition event="error.execution" cond="_sessionid === 't-1'" target="pass"/><transition event="*" target="fail"/></state>"#,
        "pass",
    );
    ends_in(
        r#"<state id="s"><onentry><assign location="nosuchvar" expr="1"/></onentry>
           <transition event="error.execution" target="pass"/><transition event="*" target="fail"/></state>"#,
        "pass",
    );
}

#[test]
fn garbage_input_never_panics() {
    let samples = [
        "",
        "<",
        "<scxml/>",
        "<scxml xmlns='http://www.w3.org/2005/07/scxml'/>",
        "<scxml xmlns='http://www.w3.org/2005/07/scxml'><state id='a' initial='a'/></scxml>",
        "<scxml xmlns='http://www.w3.org/2005/07/scxml'><history/></scxml>",
        "<scxml xmlns='http://www.w3.org/2005/07/scxml'><state><initial/></state></scxml>",
        "<scxml xmlns='http://www.w3.org/2005/07/scxml'><parallel id='p'><transition target='p p'/></parallel></scxml>",
        "<scxml xmlns='http://www.w3.org/2005/07/scxml'><final><donedata><content/><param name='x'/></donedata></final></scxml>",
        "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;'>]><lolz>&lol2;</lolz>",
        "\u{0}\u{1}\u{2}",
    ];
    for text in samples {
        let _ = compile(text, &CompileOptions::default());
    }
}
