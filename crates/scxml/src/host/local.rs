//! [`LocalHost`]: a tree of sessions in one process, on a caller-driven clock.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;
use std::sync::Arc;

use serde_json::Value;

use super::{Output, ParentLink, SessionHost};
use crate::datamodel::{Datamodel, SystemVars};
use crate::event::{Event, InvokeSource, SendTarget};
use crate::model::Document;
use crate::session::Session;

/// What [`LocalHost`] needs from its embedder.
pub trait SessionFactory {
    /// The datamodel of a new session.
    fn datamodel(&self, doc: &Arc<Document>, vars: &SystemVars) -> Box<dyn Datamodel>;
    /// Loads and compiles the document an `<invoke src>` names.
    fn load(&self, uri: &str) -> Result<Arc<Document>, String>;
    /// Compiles document text from `<invoke><content expr>`.
    fn compile(&self, text: &str) -> Result<Arc<Document>, String>;
}

/// A log line from a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The session that logged.
    pub sessionid: String,
    /// The `label` attribute.
    pub label: String,
    /// The evaluated `expr`.
    pub message: String,
}

/// Most macrosteps one call runs before it gives up on sessions that keep each other
/// busy forever (the caller's timeout then decides).
const MAX_STEPS: usize = 10_000_000;

/// Runs a tree of sessions (parents and invoked children) in one process, with no
/// Event I/O Processor but SCXML's. It is still sans-IO: the caller supplies the clock
/// ([`LocalHost::advance_to`], or [`LocalHost::run_virtual`] for virtual time) and a
/// [`SessionFactory`] that makes datamodels and loads documents. `ors run` and the W3C
/// runner are built on it.
pub struct LocalHost<F: SessionFactory> {
    factory: F,
    host: SessionHost<()>,
    /// `(due, order set, session, timer)`, earliest first.
    timers: BinaryHeap<Reverse<(u64, u64, String, u64)>>,
    now_ms: u64,
    seq: u64,
    prefix: String,
    next_session: Rc<Cell<u64>>,
    /// Every `<log>` so far, in order (drain it as you go).
    pub logs: Vec<LogLine>,
    /// Ids of running sessions, shared with each session's target check.
    live: Rc<RefCell<BTreeSet<String>>>,
    /// Sessions that ended, with their reason (`None`: reached a final state).
    pub ended: BTreeMap<String, Option<String>>,
    /// Sessions created from now on record their microsteps (read them with
    /// [`LocalHost::take_microsteps`]).
    pub record_microsteps: bool,
}

impl<F: SessionFactory> LocalHost<F> {
    /// `prefix` starts every session id (put the node id in it).
    pub fn new(factory: F, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let next_session = Rc::new(Cell::new(1));
        let (p, n) = (prefix.clone(), next_session.clone());
        let new_id = move || {
            let id = format!("{p}{}", n.get());
            n.set(n.get() + 1);
            id
        };
        LocalHost {
            factory,
            host: SessionHost::new(Box::new(|_| true), Box::new(new_id)),
            timers: BinaryHeap::new(),
            now_ms: 0,
            seq: 0,
            prefix,
            next_session,
            logs: Vec::new(),
            live: Rc::default(),
            ended: BTreeMap::new(),
            record_microsteps: false,
        }
    }

    /// The microsteps a session made since the last call, when
    /// [`LocalHost::record_microsteps`] was set before it started.
    pub fn take_microsteps(&mut self, id: &str) -> Vec<crate::Microstep> {
        self.host
            .get_mut(id)
            .map(|h| h.session.take_microsteps())
            .unwrap_or_default()
    }

    /// The microsteps and `error.*` events of a session since the last call, in order
    /// (see [`crate::interleave`]).
    pub fn take_happenings(&mut self, id: &str) -> Vec<crate::Happened> {
        self.host
            .get_mut(id)
            .map(|h| {
                let errors = h.session.take_errors();
                crate::interleave(h.session.take_microsteps(), errors)
            })
            .unwrap_or_default()
    }

    /// The host's clock.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// A session of the host (running or ended).
    pub fn session(&self, id: &str) -> Option<&Session> {
        self.host.get(id).map(|h| &h.session)
    }

    fn new_session(&mut self, sid: String, doc: Arc<Document>, has_parent: bool) -> Session {
        let vars = SystemVars::new(&sid, &doc, None);
        let dm = self.factory.datamodel(&doc, &vars);
        self.live.borrow_mut().insert(sid.clone());
        let live = self.live.clone();
        let mut s = Session::new(doc, dm, sid);
        if self.record_microsteps {
            s.record_microsteps();
        }
        // Known at send time, so error.communication is raised at once, as the spec asks.
        s.set_target_check(Box::new(move |target| match SendTarget::parse(target) {
            SendTarget::Parent => has_parent,
            SendTarget::Session(id) => live.borrow().contains(id),
            SendTarget::Invoked(_) => true,
            SendTarget::Other(_) => false, // no BasicHTTP here
        }));
        s
    }

    /// Starts a top-level session and runs it to its first stable configuration.
    pub fn start(&mut self, doc: Arc<Document>, params: &[(String, Value)]) -> String {
        let n = self.next_session.get();
        self.next_session.set(n + 1);
        let sid = format!("{}{n}", self.prefix);
        let session = self.new_session(sid.clone(), doc, false);
        self.host.start(session, params, None, (), self.now_ms);
        self.run_until_idle();
        sid
    }

    /// Queues an external event for a session and runs until nothing is left to do now.
    pub fn send(&mut self, sid: &str, event: Event) -> Result<(), String> {
        self.host
            .push(sid, event)
            .map_err(|e| format!("{sid}: {e}"))?;
        self.run_until_idle();
        Ok(())
    }

    /// Runs every session with queued events until all queues are empty.
    pub fn run_until_idle(&mut self) {
        let mut steps = 0;
        loop {
            steps += self.host.run(self.now_ms, MAX_STEPS - steps);
            let mut any = false;
            while let Some(out) = self.host.poll_output() {
                any = true;
                self.carry_out(out);
            }
            if steps >= MAX_STEPS || (!any && !self.host.has_ready()) {
                break;
            }
        }
    }

    fn carry_out(&mut self, out: Output) {
        match out {
            // Every id is this host's: one not in memory is not running.
            Output::Load { session } | Output::Forward { to: session, .. } => {
                self.host
                    .abandon(&session, &format!("session \"{session}\" is not running"));
            }
            Output::Send {
                from, type_, event, ..
            } => self.host.report_undeliverable(
                &from,
                event.sendid,
                &format!("this host has no {type_} event processor"),
            ),
            Output::Invoke {
                parent,
                child,
                request,
            } => {
                let doc = match &request.source {
                    InvokeSource::Document(d) => Ok(d.clone()),
                    InvokeSource::Uri(u) => self.factory.load(u),
                    InvokeSource::Text(t) => self.factory.compile(t),
                };
                match doc {
                    Ok(doc) => {
                        let session = self.new_session(child, doc, true);
                        let link = ParentLink {
                            session: parent,
                            invokeid: request.invokeid,
                        };
                        self.host
                            .start(session, &request.params, Some(link), (), self.now_ms);
                    }
                    Err(msg) => self.host.invoke_failed(&parent, &child, &msg),
                }
            }
            Output::CancelElsewhere { .. } => {}
            Output::SetTimer {
                session,
                timer,
                due_ms,
            } => {
                self.seq += 1;
                self.timers
                    .push(Reverse((due_ms, self.seq, session, timer)));
            }
            Output::CancelTimer { .. } => {} // the session forgot it; firing is a no-op
            Output::Response { .. } => {}
            Output::Log {
                session,
                label,
                message,
            } => self.logs.push(LogLine {
                sessionid: session,
                label,
                message,
            }),
            Output::Ended { session, reason } => {
                self.live.borrow_mut().remove(&session);
                self.ended.entry(session).or_insert(reason);
            }
        }
    }

    /// The earliest pending timer.
    pub fn next_due(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((due, ..))| *due)
    }

    /// Moves the clock to `now_ms`, firing every timer due by then in order.
    pub fn advance_to(&mut self, now_ms: u64) {
        while let Some(Reverse((due, ..))) = self.timers.peek() {
            if *due > now_ms {
                break;
            }
            let Reverse((due, _, sid, timer)) = self.timers.pop().expect("peeked");
            self.now_ms = self.now_ms.max(due);
            self.host.fire_timer(&sid, timer, self.now_ms);
            self.run_until_idle();
        }
        self.now_ms = self.now_ms.max(now_ms);
        self.run_until_idle();
    }

    /// Virtual time: fires timers in order, at once, until none is left or the clock
    /// passes `limit_ms`.
    pub fn run_virtual(&mut self, limit_ms: u64) {
        self.run_until_idle();
        while let Some(due) = self.next_due() {
            if due > limit_ms {
                break;
            }
            self.advance_to(due);
        }
    }
}
