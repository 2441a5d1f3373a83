//! Snapshot/restore is invisible: a session that is snapshotted (through JSON text) and
//! restored at random macrostep boundaries produces the same observable trace as one that
//! never is.

use std::sync::Arc;

use ors_scxml::{CompileOptions, Document, Effect, Event, Session, Snapshot, SystemVars, compile};
use proptest::prelude::*;
use serde_json::json;

const DOC: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" initial="main">
  <datamodel>
    <data id="n" expr="0"/>
    <data id="seen" expr="[]"/>
    <data id="obj" expr="({ deep: { list: [1, 'two', null], flag: true } })"/>
  </datamodel>
  <parallel id="main">
    <state id="left" initial="l1">
      <history id="lh" type="deep"><transition target="l1"/></history>
      <state id="l1">
        <transition event="a" target="l2"><assign location="n" expr="n + 1"/></transition>
      </state>
      <state id="l2" initial="l2a">
        <state id="l2a"><transition event="b" target="l2b"/></state>
        <state id="l2b"><transition event="a" target="l1"/></state>
        <transition event="c" target="lout"/>
      </state>
      <state id="lout"><transition event="d" target="lh"/></state>
    </state>
    <state id="right" initial="r1">
      <state id="r1">
        <onentry><send event="t" delay="1s" id="tm"/><send event="u" delayexpr="(n % 3 + 1) + 's'"/></onentry>
        <transition event="t" target="r2"/>
        <transition event="b" target="r2"><cancel sendid="tm"/></transition>
      </state>
      <state id="r2">
        <onentry><raise event="inner"/><script>seen.push(n); obj.deep.flag = !obj.deep.flag;</script></onentry>
        <transition event="inner" cond="n &gt; 2"><log label="inner" expr="'n=' + n"/></transition>
        <transition event="c" target="r1"/>
        <transition event="u" target="r3"/>
      </state>
      <state id="r3">
        <transition event="d" target="r1"><send event="self" /></transition>
        <transition event="self" target="r2"/>
      </state>
    </state>
    <transition event="e" target="main"><assign location="seen" expr="seen.concat(['reset'])"/></transition>
  </parallel>
</scxml>"#;

#[derive(Debug, Clone)]
enum Step {
    Event(&'static str),
    /// Fire the earliest pending timer.
    FireTimer,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "c", "d", "e", "zzz"]).prop_map(Step::Event),
        1 => Just(Step::FireTimer),
    ]
}

fn new_session(doc: &Arc<Document>) -> Session {
    let vars = SystemVars {
        sessionid: "n1-7".into(),
        name: None,
        ioprocessors: json!({}),
    };
    Session::new(
        doc.clone(),
        ors_ecmascript::datamodel_for(doc, &vars),
        "n1-7",
    )
}

fn observe(s: &mut Session, effects: &[Effect]) -> String {
    let fx: Vec<String> = effects
        .iter()
        .map(|e| match e {
            Effect::Log { label, message } => format!("log {label} {message}"),
            Effect::SetTimer { timer, due_ms } => format!("set {timer} {due_ms}"),
            Effect::CancelTimer { timer } => format!("cancel {timer}"),
            other => format!("{other:?}"),
        })
        .collect();
    format!(
        "{:?} {} {:?} {:?}",
        s.active_states(),
        s.datamodel_json().unwrap(),
        s.pending_timers(),
        fx
    )
}

fn apply(s: &mut Session, step: &Step, now: u64) -> Vec<Effect> {
    match step {
        Step::Event(name) => {
            s.push_external(Event::external(*name, None)).unwrap();
            s.run(now)
        }
        Step::FireTimer => {
            let Some((timer, due)) = s.pending_timers().into_iter().min_by_key(|t| (t.1, t.0))
            else {
                return Vec::new();
            };
            let mut fx = s.fire_timer(timer, due.max(now));
            fx.extend(s.run(due.max(now)));
            fx
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn snapshot_restore_does_not_change_the_trace(
        steps in prop::collection::vec(step_strategy(), 1..40),
        cuts in prop::collection::vec(any::<bool>(), 40),
    ) {
        let doc = compile(DOC, &CompileOptions::default()).unwrap();
        let mut plain = new_session(&doc);
        let mut cut = new_session(&doc);
        let a = plain.start(0, &[]);
        let b = cut.start(0, &[]);
        prop_assert_eq!(observe(&mut plain, &a), observe(&mut cut, &b));
        for (i, step) in steps.iter().enumerate() {
            let now = (i as u64 + 1) * 700;
            if cuts[i] {
                let text = serde_json::to_string(&cut.snapshot().unwrap()).unwrap();
                let snap: Snapshot = serde_json::from_str(&text).unwrap();
                let vars = SystemVars { sessionid: "n1-7".into(), name: None, ioprocessors: json!({}) };
                let dm = ors_ecmascript::datamodel_for(&doc, &vars);
                drop(cut);
                cut = Session::restore(doc.clone(), dm, &snap).unwrap();
            }
            let a = apply(&mut plain, step, now);
            let b = apply(&mut cut, step, now);
            prop_assert_eq!(observe(&mut plain, &a), observe(&mut cut, &b), "after step {} {:?}", i, step);
        }
    }
}

#[test]
fn restore_rejects_a_snapshot_of_another_document() {
    let doc = compile(DOC, &CompileOptions::default()).unwrap();
    let mut s = new_session(&doc);
    s.start(0, &[]);
    let mut snap = s.snapshot().unwrap();
    snap.configuration.push("no-such-state".into());
    let vars = SystemVars {
        sessionid: "x".into(),
        name: None,
        ioprocessors: json!({}),
    };
    let err = Session::restore(
        doc.clone(),
        ors_ecmascript::datamodel_for(&doc, &vars),
        &snap,
    )
    .err()
    .expect("unknown state must be rejected");
    assert!(err.to_string().contains("no-such-state"), "{err}");
}
