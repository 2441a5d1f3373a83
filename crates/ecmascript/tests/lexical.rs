//! Top-level `let`/`const`/`class` in `<script>` live in the thread's shared JS context,
//! not on the global object the datamodel swaps per session, so sessions on one thread
//! share them. This pins that documented limitation (`var`, `function` and `<data>` are
//! per session, as the isolation test in hostile.rs checks).

use ors_scxml::{CompileOptions, Event, Session, SystemVars, compile};
use serde_json::json;

#[test]
fn top_level_let_is_shared_between_sessions_on_a_thread() {
    let doc = compile(
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <script>let shared = 1;</script>
  <state id="s">
    <transition event="bump"><script>shared = 5;</script></transition>
    <transition event="go" cond="shared === 1" target="ok"/><transition event="go" target="bad"/></state>
  <final id="ok"/><final id="bad"/>
</scxml>"#,
        &CompileOptions::default(),
    )
    .unwrap();
    let new = |id: &str| {
        let vars = SystemVars {
            sessionid: id.into(),
            name: None,
            ioprocessors: json!({}),
        };
        let mut s = Session::new(doc.clone(), ors_ecmascript::datamodel_for(&doc, &vars), id);
        s.start(0, &[]);
        s
    };
    let mut a = new("a");
    let mut b = new("b");
    a.push_external(Event::external("bump", None)).unwrap();
    a.run(1);
    b.push_external(Event::external("go", None)).unwrap();
    b.run(1);
    // B sees A's value: the limitation. If this starts failing, lexical declarations became
    // per session; update docs/ARCHITECTURE.md and this test.
    assert_eq!(b.active_atomic_states(), ["bad"]);
}
