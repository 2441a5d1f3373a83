//! A small in-process host: runs a tree of sessions (parents and invoked children), routes
//! events between them through the SCXML Event I/O Processor and keeps their timers.
//!
//! It is still sans-IO: it never sleeps or reads files itself. The caller supplies the
//! clock ([`LocalHost::advance_to`], or [`LocalHost::run_virtual`] for virtual time) and a
//! [`SessionFactory`] that makes datamodels and loads documents. The `ors run` command and
//! the W3C test runner are built on it; the server has its own, durable host.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::datamodel::{Datamodel, SystemVars};
use crate::event::*;
use crate::model::Document;
use crate::session::Session;

/// What the host needs from its embedder.
pub trait SessionFactory {
    fn datamodel(&self, doc: &Arc<Document>, vars: &SystemVars) -> Box<dyn Datamodel>;
    /// Loads and compiles the document an `<invoke src>` names.
    fn load(&self, uri: &str) -> Result<Arc<Document>, String>;
    /// Compiles document text from `<invoke><content expr>`.
    fn compile(&self, text: &str) -> Result<Arc<Document>, String>;
}

struct Entry {
    session: Session,
    /// `(parent session id, invokeid)` for invoked sessions.
    parent: Option<(String, String)>,
    /// invokeid -> child session id.
    children: BTreeMap<String, String>,
}

/// A log line from a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub sessionid: String,
    pub label: String,
    pub message: String,
}

pub struct LocalHost<F: SessionFactory> {
    factory: F,
    sessions: BTreeMap<String, Entry>,
    timers: BinaryHeap<Reverse<(u64, u64, String, u64)>>,
    ready: VecDeque<String>,
    now_ms: u64,
    seq: u64,
    next_session: u64,
    prefix: String,
    pub logs: Vec<LogLine>,
    /// Ids of running sessions, shared with each session's target check.
    live: Rc<RefCell<BTreeSet<String>>>,
    /// Sessions that ended, with their reason (`None`: reached a final state).
    pub ended: BTreeMap<String, Option<String>>,
}

impl<F: SessionFactory> LocalHost<F> {
    /// `prefix` starts every session id (put the node id in it).
    pub fn new(factory: F, prefix: impl Into<String>) -> Self {
        LocalHost {
            factory,
            sessions: BTreeMap::new(),
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            now_ms: 0,
            seq: 0,
            next_session: 1,
            prefix: prefix.into(),
            logs: Vec::new(),
            live: Rc::default(),
            ended: BTreeMap::new(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id).map(|e| &e.session)
    }

    fn new_session(&mut self, doc: Arc<Document>, has_parent: bool) -> Session {
        let sid = format!("{}{}", self.prefix, self.next_session);
        self.next_session += 1;
        let vars = SystemVars {
            sessionid: sid.clone(),
            name: doc.name.as_deref().map(String::from),
            ioprocessors: json!({
                "http://www.w3.org/TR/scxml/#SCXMLEventProcessor": { "location": format!("#_scxml_{sid}") },
                "scxml": { "location": format!("#_scxml_{sid}") },
            }),
        };
        let dm = self.factory.datamodel(&doc, &vars);
        self.live.borrow_mut().insert(sid.clone());
        let live = self.live.clone();
        let mut s = Session::new(doc, dm, sid);
        s.set_target_check(Box::new(move |target| match target.strip_prefix("#_") {
            Some("parent") => has_parent,
            Some(t) => t
                .strip_prefix("scxml_")
                .is_some_and(|id| live.borrow().contains(id)),
            None => false, // no BasicHTTP here
        }));
        s
    }

    /// Starts a top-level session and runs it to its first stable configuration.
    pub fn start(&mut self, doc: Arc<Document>, params: &[(String, Value)]) -> String {
        let mut s = self.new_session(doc, false);
        let sid = s.id().to_string();
        let fx = s.start(self.now_ms, params);
        self.sessions.insert(
            sid.clone(),
            Entry {
                session: s,
                parent: None,
                children: BTreeMap::new(),
            },
        );
        self.apply(&sid, fx);
        self.ready.push_back(sid.clone());
        self.run_until_idle();
        sid
    }

    /// Queues an external event for a session and runs until nothing is left to do now.
    pub fn send(&mut self, sid: &str, event: Event) -> Result<(), String> {
        self.deliver(sid, event)?;
        self.run_until_idle();
        Ok(())
    }

    fn deliver(&mut self, sid: &str, event: Event) -> Result<(), String> {
        let e = self
            .sessions
            .get_mut(sid)
            .ok_or_else(|| format!("no session {sid}"))?;
        e.session.push_external(event).map_err(|e| e.to_string())?;
        self.ready.push_back(sid.to_string());
        Ok(())
    }

    /// Runs every session with queued events until all queues are empty.
    pub fn run_until_idle(&mut self) {
        let mut guard = 0u64;
        while let Some(sid) = self.ready.pop_front() {
            guard += 1;
            if guard > 10_000_000 {
                break; // sessions ping-ponging forever; the caller's timeout decides
            }
            let now = self.now_ms;
            let Some(e) = self.sessions.get_mut(&sid) else {
                continue;
            };
            if e.session.queued() == 0 {
                continue;
            }
            let fx = e.session.step(now);
            let more = e.session.queued() > 0 && e.session.is_running();
            self.apply(&sid, fx);
            if more {
                self.ready.push_back(sid);
            }
        }
    }

    /// The earliest pending timer.
    pub fn next_due(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((due, ..))| *due)
    }

    /// Moves the clock to `now_ms`, firing every timer due by then in order.
    pub fn advance_to(&mut self, now_ms: u64) {
        while let Some(Reverse((due, _, _, _))) = self.timers.peek() {
            if *due > now_ms {
                break;
            }
            let Reverse((due, _, sid, timer)) = self.timers.pop().expect("peeked");
            self.now_ms = self.now_ms.max(due);
            if let Some(e) = self.sessions.get_mut(&sid) {
                let fx = e.session.fire_timer(timer, self.now_ms);
                if e.session.queued() > 0 {
                    self.ready.push_back(sid.clone());
                }
                self.apply(&sid, fx);
            }
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

    fn apply(&mut self, sid: &str, effects: Vec<Effect>) {
        let mut work: VecDeque<(String, Effect)> =
            effects.into_iter().map(|e| (sid.to_string(), e)).collect();
        while let Some((sid, fx)) = work.pop_front() {
            match fx {
                Effect::Send {
                    target,
                    type_,
                    event,
                } => {
                    let sendid = event.sendid.clone();
                    if let Err(msg) = self.route(&sid, &target, &type_, event) {
                        let err = Event::error_communication(sendid, &msg);
                        let _ = self.deliver(&sid, err);
                    }
                }
                Effect::SetTimer { timer, due_ms } => {
                    self.seq += 1;
                    self.timers
                        .push(Reverse((due_ms, self.seq, sid.clone(), timer)));
                }
                Effect::CancelTimer { .. } => {} // the session forgot it; firing is a no-op
                Effect::Invoke(req) => {
                    for fx in self.invoke(&sid, req) {
                        work.push_back(fx);
                    }
                }
                Effect::CancelInvoke { invokeid } => {
                    let child = self
                        .sessions
                        .get_mut(&sid)
                        .and_then(|e| e.children.remove(&invokeid));
                    if let Some(child) = child
                        && let Some(mut c) = self.sessions.remove(&child)
                    {
                        let fx = c.session.cancel(self.now_ms);
                        self.live.borrow_mut().remove(&child);
                        self.ended.insert(child.clone(), Some("cancelled".into()));
                        // Effects of the cancelled child other than logs go nowhere.
                        for f in fx {
                            if let Effect::Log { label, message } = f {
                                self.logs.push(LogLine {
                                    sessionid: child.clone(),
                                    label,
                                    message,
                                });
                            }
                        }
                    }
                }
                Effect::Log { label, message } => self.logs.push(LogLine {
                    sessionid: sid.clone(),
                    label,
                    message,
                }),
                Effect::Response { .. } => {}
                Effect::Done { data } => {
                    self.ended.entry(sid.clone()).or_insert(None);
                    self.live.borrow_mut().remove(&sid);
                    let parent = self.sessions.get(&sid).and_then(|e| e.parent.clone());
                    if let Some((psid, invokeid)) = parent {
                        let ev = Event::done_invoke(&invokeid, &sid, data);
                        let _ = self.deliver(&psid, ev);
                        if let Some(p) = self.sessions.get_mut(&psid) {
                            p.children.remove(&invokeid);
                        }
                    }
                }
                Effect::Aborted { reason } => {
                    self.ended.insert(sid.clone(), Some(reason));
                }
            }
        }
    }

    fn route(
        &mut self,
        from: &str,
        target: &str,
        type_: &str,
        mut event: Event,
    ) -> Result<(), String> {
        if type_ != SCXML_PROCESSOR {
            return Err(format!("this host has no {type_} event processor"));
        }
        let dest = match SendTarget::parse(target) {
            SendTarget::Parent => {
                let (p, invokeid) = self
                    .sessions
                    .get(from)
                    .and_then(|e| e.parent.clone())
                    .ok_or("the session has no parent")?;
                event.invokeid = Some(invokeid);
                p
            }
            SendTarget::Session(id) => id.to_string(),
            SendTarget::Invoked(inv) => self
                .sessions
                .get(from)
                .and_then(|e| e.children.get(inv).cloned())
                .ok_or_else(|| format!("no invoked session \"{inv}\""))?,
            SendTarget::Other(t) => return Err(format!("unknown target \"{t}\"")),
        };
        match self.sessions.get(&dest) {
            Some(e) if e.session.is_running() => self.deliver(&dest, event),
            _ => Err(format!("session \"{dest}\" is not running")),
        }
    }

    fn invoke(&mut self, parent: &str, req: InvokeRequest) -> Vec<(String, Effect)> {
        let doc = match &req.source {
            InvokeSource::Document(d) => Ok(d.clone()),
            InvokeSource::Uri(u) => self.factory.load(u),
            InvokeSource::Text(t) => self.factory.compile(t),
        };
        let doc = match doc {
            Ok(d) => d,
            Err(msg) => {
                let ev = Event::platform("error.execution", None, Some(msg));
                let _ = self.deliver(parent, ev);
                return Vec::new();
            }
        };
        let mut child = self.new_session(doc, true);
        let csid = child.id().to_string();
        if let Some(p) = self.sessions.get_mut(parent) {
            p.children.insert(req.invokeid.clone(), csid.clone());
        }
        let fx = child.start(self.now_ms, &req.params);
        self.sessions.insert(
            csid.clone(),
            Entry {
                session: child,
                parent: Some((parent.to_string(), req.invokeid)),
                children: BTreeMap::new(),
            },
        );
        self.ready.push_back(csid.clone());
        fx.into_iter().map(|f| (csid.clone(), f)).collect()
    }
}
