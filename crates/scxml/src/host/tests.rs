//! The host on its own: routing, the session tree and the error events, with the null
//! datamodel and a test driver that answers outputs the way an embedder would.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use super::*;
use crate::datamodel::NullDatamodel;
use crate::event::{BASIC_HTTP_PROCESSOR, InvokeSource};
use crate::model::Document;
use crate::{CompileOptions, compile};

fn doc(body: &str) -> Arc<Document> {
    let text = format!(
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="null">{body}</scxml>"#
    );
    compile(&text, &CompileOptions::default()).expect("a valid test document")
}

fn session(id: &str, doc: &Arc<Document>) -> Session {
    Session::new(doc.clone(), Box::new(NullDatamodel::new(doc.clone())), id)
}

/// A host whose sessions are the ids starting with `here-`, and an embedder that starts
/// inline children at once, fails other invokes, and records every other output.
struct Rig {
    host: SessionHost<()>,
    outputs: Vec<Output>,
}

impl Rig {
    fn new() -> Rig {
        let n = Rc::new(Cell::new(0));
        let new_id = move || {
            n.set(n.get() + 1);
            format!("here-child{}", n.get())
        };
        Rig {
            host: SessionHost::new(Box::new(|id| id.starts_with("here-")), Box::new(new_id)),
            outputs: Vec::new(),
        }
    }

    fn start(&mut self, id: &str, d: &Arc<Document>) {
        assert!(self.host.start(session(id, d), &[], None, (), 0));
        self.settle();
    }

    fn push(&mut self, id: &str, name: &str) {
        self.host.push(id, Event::external(name, None)).unwrap();
        self.settle();
    }

    /// Runs until nothing is ready and every output is answered or recorded.
    fn settle(&mut self) {
        loop {
            self.host.run(0, 10_000);
            let mut any = false;
            while let Some(out) = self.host.poll_output() {
                any = true;
                match out {
                    Output::Invoke {
                        parent,
                        child,
                        request,
                    } => match &request.source {
                        InvokeSource::Document(d) => {
                            let link = ParentLink {
                                session: parent,
                                invokeid: request.invokeid.clone(),
                            };
                            self.host.start(session(&child, d), &[], Some(link), (), 0);
                        }
                        _ => self.host.invoke_failed(&parent, &child, "cannot load"),
                    },
                    other => self.outputs.push(other),
                }
            }
            if !any && !self.host.has_ready() {
                return;
            }
        }
    }

    fn states(&self, id: &str) -> Vec<String> {
        self.host
            .get(id)
            .expect("in the host")
            .session
            .active_atomic_states()
    }

    fn ended(&self, id: &str) -> Option<Option<String>> {
        self.outputs.iter().find_map(|o| match o {
            Output::Ended { session, reason } if session == id => Some(reason.clone()),
            _ => None,
        })
    }
}

const CHILD_SAYS_HELLO: &str = r##"
    <state id="talking" initial="wait">
      <invoke id="kid"><content>
        <scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="null">
          <state id="c0">
            <onentry><send target="#_parent" event="hello"/></onentry>
            <transition event="bye" target="cdone"/>
          </state>
          <final id="cdone"/>
        </scxml>
      </content></invoke>
      <state id="wait"><transition event="hello" target="greeted"/></state>
      <state id="greeted">
        <onentry><send target="#_kid" event="bye"/></onentry>
        <transition event="done.invoke.kid" target="over"/>
      </state>
    </state>
    <state id="over"/>"##;

#[test]
fn parent_and_child_talk_and_the_child_reports_done() {
    let mut rig = Rig::new();
    rig.start("here-p", &doc(CHILD_SAYS_HELLO));
    assert_eq!(rig.states("here-p"), ["over"], "{:?}", rig.outputs);
    assert_eq!(rig.ended("here-child1"), Some(None));
    assert!(
        rig.host.get("here-p").unwrap().children.is_empty(),
        "a child that is done is forgotten by its parent"
    );
    let changed = rig.host.take_changed();
    assert_eq!(changed, ["here-child1", "here-p"]);
    assert!(rig.host.take_changed().is_empty());
}

#[test]
fn a_child_that_cannot_be_created_raises_error_execution_in_the_parent() {
    let mut rig = Rig::new();
    let d = doc(r#"
        <state id="s">
          <invoke id="kid" src="nowhere.scxml"/>
          <transition event="error.execution" target="exec"/>
          <transition event="error.communication" target="comm"/>
        </state>
        <state id="exec"/><state id="comm"/>"#);
    rig.start("here-p", &d);
    assert_eq!(rig.states("here-p"), ["exec"]);
    assert!(rig.host.get("here-p").unwrap().children.is_empty());
}

#[test]
fn undeliverable_sends_raise_error_communication_in_the_sender() {
    // A send to a session of this host that is not in memory asks for a load; when the
    // embedder cannot load it, the sender gets error.communication.
    let mut rig = Rig::new();
    let d = doc(r##"
        <state id="s">
          <onentry><send target="#_scxml_here-gone" event="x"/></onentry>
          <transition event="error.communication" target="comm"/>
        </state>
        <state id="comm"/>"##);
    rig.start("here-a", &d);
    assert!(matches!(&rig.outputs[..], [Output::Load { session }] if session == "here-gone"));
    assert_eq!(rig.states("here-a"), ["s"]);
    rig.host.abandon("here-gone", "no such session");
    rig.settle();
    assert_eq!(rig.states("here-a"), ["comm"]);
}

#[test]
fn a_send_to_an_ended_session_raises_error_communication() {
    let mut rig = Rig::new();
    rig.start("here-b", &doc(r#"<final id="f"/>"#));
    assert_eq!(rig.ended("here-b"), Some(None));
    let d = doc(r##"
        <state id="s">
          <onentry><send target="#_scxml_here-b" event="x"/></onentry>
          <transition event="error.communication" target="comm"/>
        </state>
        <state id="comm"/>"##);
    rig.start("here-a", &d);
    assert_eq!(rig.states("here-a"), ["comm"]);
}

#[test]
fn events_for_sessions_elsewhere_are_forwarded_in_order() {
    let mut rig = Rig::new();
    let d = doc(r##"
        <state id="s">
          <onentry>
            <send target="#_scxml_there-1" event="one"/>
            <send target="#_scxml_there-1" event="two"/>
          </onentry>
        </state>"##);
    rig.start("here-a", &d);
    let forwarded: Vec<(&str, &str, &str)> = rig
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Forward { from, to, event } => Some((&**from, &**to, &*event.name)),
            _ => None,
        })
        .collect();
    assert_eq!(
        forwarded,
        [("here-a", "there-1", "one"), ("here-a", "there-1", "two")]
    );
}

#[test]
fn events_wait_in_order_while_their_session_loads() {
    let mut rig = Rig::new();
    let sender = doc(r##"
        <state id="s">
          <onentry>
            <send target="#_scxml_here-b" event="one"/>
            <send target="#_scxml_here-b" event="two"/>
          </onentry>
        </state>"##);
    rig.start("here-a", &sender);
    let loads = rig
        .outputs
        .iter()
        .filter(|o| matches!(o, Output::Load { .. }))
        .count();
    assert_eq!(loads, 1, "one load, however many events wait");
    let receiver = doc(r#"
        <state id="r0"><transition event="one" target="r1"/></state>
        <state id="r1"><transition event="two" target="r2"/></state>
        <state id="r2"/>"#);
    let mut b = session("here-b", &receiver);
    b.start(0, &[]);
    rig.host.insert(Hosted {
        session: b,
        parent: None,
        children: Default::default(),
        meta: (),
    });
    rig.settle();
    assert_eq!(rig.states("here-b"), ["r2"]);
}

#[test]
fn other_event_processors_are_the_embedders() {
    let mut rig = Rig::new();
    let d = doc(r##"
        <state id="s">
          <onentry><send type="http://www.w3.org/TR/scxml/#BasicHTTPEventProcessor"
                         target="http://example.invalid/x" event="out"/></onentry>
          <transition event="error.communication" target="comm"/>
        </state>
        <state id="comm"/>"##);
    rig.start("here-a", &d);
    let send = rig.outputs.iter().find_map(|o| match o {
        Output::Send {
            from,
            target,
            type_,
            event,
        } => Some((
            from.clone(),
            target.clone(),
            type_.clone(),
            event.name.clone(),
        )),
        _ => None,
    });
    assert_eq!(
        send,
        Some((
            "here-a".into(),
            "http://example.invalid/x".into(),
            BASIC_HTTP_PROCESSOR.into(),
            "out".into()
        ))
    );
    // The embedder could not deliver it.
    rig.host
        .report_undeliverable("here-a", None, "connection refused");
    rig.settle();
    assert_eq!(rig.states("here-a"), ["comm"]);
}

#[test]
fn timers_are_requests_and_fire_when_the_embedder_says() {
    let mut rig = Rig::new();
    let d = doc(r#"
        <state id="s">
          <onentry><send event="later" delay="5s"/></onentry>
          <transition event="later" target="t"/>
        </state>
        <state id="t"/>"#);
    rig.start("here-a", &d);
    let (timer, due) = rig
        .outputs
        .iter()
        .find_map(|o| match o {
            Output::SetTimer {
                session,
                timer,
                due_ms,
            } if session == "here-a" => Some((*timer, *due_ms)),
            _ => None,
        })
        .expect("a timer request");
    assert_eq!(due, 5_000);
    assert_eq!(rig.states("here-a"), ["s"]);
    assert!(rig.host.fire_timer("here-a", timer, 5_000));
    rig.settle();
    assert_eq!(rig.states("here-a"), ["t"]);
    assert!(!rig.host.fire_timer("here-nobody", timer, 5_000));
}

#[test]
fn leaving_the_invoking_state_cancels_the_child_without_done_invoke() {
    let mut rig = Rig::new();
    let d = doc(r#"
        <state id="s">
          <invoke id="kid"><content>
            <scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="null">
              <state id="c0"/>
            </scxml>
          </content></invoke>
          <transition event="leave" target="t"/>
        </state>
        <state id="t"><transition event="done.invoke.kid" target="wrong"/></state>
        <state id="wrong"/>"#);
    rig.start("here-p", &d);
    assert_eq!(rig.states("here-child1"), ["c0"]);
    rig.push("here-p", "leave");
    assert_eq!(rig.ended("here-child1"), Some(Some(CANCELLED.into())));
    assert_eq!(rig.states("here-p"), ["t"]);
}

#[test]
fn a_child_cancelled_before_it_started_is_not_started() {
    let mut host: SessionHost<()> =
        SessionHost::new(Box::new(|_| true), Box::new(|| "here-late".to_string()));
    let d = doc(r#"
        <state id="s">
          <invoke id="kid" src="slow.scxml"/>
          <transition event="leave" target="t"/>
        </state>
        <state id="t"/>"#);
    host.start(session("here-p", &d), &[], None, (), 0);
    host.run(0, 100);
    let Some(Output::Invoke { child, request, .. }) = host.poll_output() else {
        panic!("an invoke request");
    };
    // The parent moves on before the embedder has the child's document.
    host.push("here-p", Event::external("leave", None)).unwrap();
    host.run(0, 100);
    let child_doc = doc(r#"<state id="c0"/>"#);
    let link = ParentLink {
        session: "here-p".into(),
        invokeid: request.invokeid,
    };
    assert!(!host.start(session(&child, &child_doc), &[], Some(link), (), 0));
    assert!(!host.contains("here-late"));
}

#[test]
fn terminating_a_session_ends_it_as_cancelled() {
    let mut rig = Rig::new();
    rig.start("here-a", &doc(r#"<state id="s"/>"#));
    rig.host.take_changed();
    assert!(rig.host.cancel("here-a", 10));
    rig.settle();
    assert_eq!(rig.ended("here-a"), Some(Some(CANCELLED.into())));
    assert_eq!(rig.host.take_changed(), ["here-a"]);
    assert_eq!(
        rig.host.push("here-a", Event::external("x", None)),
        Err(PushError::Queue(QueueError::Ended))
    );
    assert_eq!(
        rig.host.push("here-zz", Event::external("x", None)),
        Err(PushError::NotHere)
    );
}

#[test]
fn the_probe_is_told_which_session_runs_and_when_it_is_done() {
    let seen: Rc<std::cell::RefCell<Vec<Option<String>>>> = Rc::default();
    let mut rig = Rig::new();
    let log = seen.clone();
    rig.host.set_probe(Box::new(move |sid| {
        log.borrow_mut().push(sid.map(str::to_string))
    }));
    let d = doc(r#"<state id="s"><transition event="go" target="s"/></state>"#);
    rig.start("here-a", &d);
    rig.push("here-a", "go");
    rig.host.cancel("here-a", 0);
    let seen = seen.borrow();
    // Start, its first macrostep, the event's macrostep, the cancellation: each bracketed.
    assert!(seen.len() >= 6 && seen.len().is_multiple_of(2), "{seen:?}");
    for pair in seen.chunks(2) {
        assert_eq!(pair, [Some("here-a".to_string()), None]);
    }
}

/// While recording, a session keeps every `error.*` event it processes, handled or not,
/// from its internal queue and from outside; it keeps nothing when not recording.
#[test]
fn recorded_sessions_keep_their_error_events() {
    let d = doc(r#"<state id="s">
        <onentry><raise event="error.handled"/><raise event="error.unhandled"/></onentry>
        <transition event="error.handled" target="t"/>
      </state>
      <state id="t"/>"#);
    let mut s = session("here-1", &d);
    s.record_microsteps();
    s.start(0, &[]);
    let errors = s.take_errors();
    let names: Vec<&str> = errors.iter().map(|(_, e)| e.name.as_ref()).collect();
    assert_eq!(names, ["error.handled", "error.unhandled"]);
    // In order among the microsteps: the initial entry, error.handled and the step it
    // took, then error.unhandled (which took none).
    let order: Vec<String> = crate::interleave(s.take_microsteps(), errors)
        .into_iter()
        .map(|h| match h {
            crate::Happened::Step(m) => format!("step {:?}", m.event),
            crate::Happened::Error(e) => format!("error {}", e.name),
        })
        .collect();
    assert_eq!(
        order,
        [
            "step None",
            "error error.handled",
            "step Some(\"error.handled\")",
            "error error.unhandled"
        ]
    );
    assert!(s.take_errors().is_empty(), "taken once");
    s.push_external(Event::error_communication(
        Some("s1".into()),
        "no such target",
    ))
    .unwrap();
    s.run(1);
    let e = s.take_errors();
    assert_eq!(
        (
            e[0].1.name.as_ref(),
            e[0].1.sendid.as_deref(),
            e[0].1.message()
        ),
        ("error.communication", Some("s1"), Some("no such target"))
    );

    let mut quiet = session("here-2", &d);
    quiet.start(0, &[]);
    assert!(quiet.take_errors().is_empty());
}
