//! Hosting sessions: the part of an SCXML platform between the interpreter and the world.
//!
//! [`SessionHost`] is a sans-IO state machine in the shape of quinn-proto: the embedder
//! feeds it inputs ([`SessionHost::start`], [`SessionHost::push`],
//! [`SessionHost::fire_timer`], [`SessionHost::cancel`], ...), calls
//! [`SessionHost::run`] to run queued events, and drains [`Output`]s with
//! [`SessionHost::poll_output`]. It owns what every host of this crate shares and must
//! agree on:
//! - the session tree (`#_parent`, `#_<invokeid>`, `done.invoke.<id>` to the parent,
//!   cancelling children);
//! - routing through the SCXML Event I/O Processor (`#_scxml_<id>`), including to
//!   sessions it does not hold (an [`Output::Forward`]) or holds but has not loaded (an
//!   [`Output::Load`], with events buffered in order until the embedder answers);
//! - the error events the Recommendation prescribes: a send the host cannot deliver
//!   raises `error.communication` in the sender; an `<invoke>` whose child cannot be
//!   created raises `error.execution` in the parent;
//! - which sessions changed (what a durable embedder snapshots after a batch).
//!
//! It never blocks, sleeps, reads a clock, loads documents or touches a store: timers are
//! [`Output::SetTimer`] requests, documents of `<invoke>` are [`Output::Invoke`] requests
//! answered with [`SessionHost::start`] or [`SessionHost::invoke_failed`].
//!
//! Two embedders drive it: [`LocalHost`] (in-process, a caller-driven clock; `ors run` and
//! the W3C runner) and the server's worker threads (durable, in `ors-runtime`).

mod local;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::Value;

use crate::event::{Effect, Event, InvokeRequest, SCXML_PROCESSOR, SendTarget};
use crate::session::{QueueError, Session};

pub use local::{LocalHost, LogLine, SessionFactory};

/// The session that invoked a child, and the `<invoke>` id it knows the child by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLink {
    /// The parent's id.
    pub session: String,
    /// The `<invoke>` id.
    pub invokeid: String,
}

/// A session in a host, with its place in the session tree and the embedder's own data.
pub struct Hosted<M> {
    /// The engine's session.
    pub session: Session,
    /// Set for invoked sessions; cleared when the parent cancels the child.
    pub parent: Option<ParentLink>,
    /// `invokeid` -> child session id, for the children this session invoked.
    pub children: BTreeMap<String, String>,
    /// Whatever the embedder keeps per session (a store version, a document hash, ...).
    pub meta: M,
}

/// What the host asks its embedder to do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Deliver `event` to session `to`, which this host does not hold (another worker or
    /// node). If it cannot be delivered, answer with [`SessionHost::report_undeliverable`].
    Forward {
        /// The sending session.
        from: String,
        /// The receiving session.
        to: String,
        /// The event, as the receiver gets it.
        event: Event,
    },
    /// Session `session` belongs to this host but is not in memory. Answer with
    /// [`SessionHost::insert`] or [`SessionHost::abandon`]; events for it wait meanwhile.
    Load {
        /// The session to load.
        session: String,
    },
    /// A send through an Event I/O Processor other than SCXML's (BasicHTTP, ...).
    Send {
        /// The sending session.
        from: String,
        /// The target URI.
        target: String,
        /// The processor's type URI.
        type_: String,
        /// The event.
        event: Event,
    },
    /// Create child session `child` of `parent` from `request.source`: answer with
    /// [`SessionHost::start`] (with a [`ParentLink`]) or [`SessionHost::invoke_failed`]. A
    /// child this host does not hold is started wherever the embedder puts it.
    Invoke {
        /// The invoking session.
        parent: String,
        /// The id the child must get.
        child: String,
        /// The engine's request (document source, parameters).
        request: InvokeRequest,
    },
    /// Cancel session `session`, an invoked child that is not in this host's memory.
    CancelElsewhere {
        /// The child to cancel.
        session: String,
    },
    /// Call [`SessionHost::fire_timer`] for `session`'s `timer` at `due_ms`.
    SetTimer {
        /// The session that set it.
        session: String,
        /// The engine's timer number.
        timer: u64,
        /// When it is due, on the embedder's clock.
        due_ms: u64,
    },
    /// The timer must not fire (firing it anyway is harmless: the session forgot it).
    CancelTimer {
        /// The session that set it.
        session: String,
        /// The timer number from [`Output::SetTimer`].
        timer: u64,
    },
    /// ORS `<response>` to the request whose event had `sendid == requestid`.
    Response {
        /// The responding session.
        session: String,
        /// The request's id (its event's `sendid`).
        requestid: String,
        /// `false` for a failure response.
        positive: bool,
        /// The document's `resultcode`.
        resultcode: Option<String>,
        /// The response's parameters.
        params: serde_json::Map<String, Value>,
    },
    /// `<log>`.
    Log {
        /// The logging session.
        session: String,
        /// The `label` attribute.
        label: String,
        /// The evaluated `expr`.
        message: String,
    },
    /// The session is over: it reached a top-level final state (`reason: None`), was
    /// cancelled, or was aborted for breaking a limit. It stays in the host, not running,
    /// until the embedder removes it.
    Ended {
        /// The session.
        session: String,
        /// `None` for a normal end, else why (see [`CANCELLED`]).
        reason: Option<String>,
    },
}

/// Why [`SessionHost::push`] did not queue an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the session is not in this host")]
    /// The host does not have that session in memory.
    NotHere,
    #[error(transparent)]
    /// The session refused it (its queue is full, or it ended).
    Queue(#[from] QueueError),
}

/// Tells whether a session id belongs to this host (in memory or not).
pub type Holds = Box<dyn Fn(&str) -> bool>;
/// Makes the id of a new child session.
pub type NewSessionId = Box<dyn FnMut() -> String>;

/// The reason [`Output::Ended`] gives for a session its parent (or a terminate) cancelled.
pub const CANCELLED: &str = "cancelled";

/// A sans-IO host for a set of sessions. See the [module documentation](self).
pub struct SessionHost<M> {
    sessions: HashMap<String, Hosted<M>>,
    /// Sessions with queued events, in the order they became ready (a session may appear
    /// more than once; each turn runs one macrostep).
    ready: VecDeque<String>,
    /// Sessions the embedder is loading or starting, with the events that arrived for
    /// them meanwhile (sender, event), in order.
    awaiting: HashMap<String, Vec<(String, Event)>>,
    outputs: VecDeque<Output>,
    /// An output that needs an answer (load, invoke) was produced: stop running until the
    /// embedder has drained the outputs, so a child starts right after its parent's step.
    blocked: bool,
    changed: Vec<String>,
    holds: Holds,
    new_session_id: NewSessionId,
    probe: Option<Probe>,
}

/// Told which session's code is about to run (`Some`) and when it is done (`None`); see
/// [`SessionHost::set_probe`].
pub type Probe = Box<dyn FnMut(Option<&str>)>;

impl<M> SessionHost<M> {
    /// `holds` says which session ids are this host's (all of them, for a host alone in
    /// its process); `new_session_id` names invoked children.
    pub fn new(holds: Holds, new_session_id: NewSessionId) -> Self {
        SessionHost {
            sessions: HashMap::new(),
            ready: VecDeque::new(),
            awaiting: HashMap::new(),
            outputs: VecDeque::new(),
            blocked: false,
            changed: Vec::new(),
            holds,
            new_session_id,
            probe: None,
        }
    }

    /// Installs a probe that is told, around every call into a session's code (its start,
    /// a macrostep, its cancellation), which session runs. An embedder uses it to know,
    /// after a crash, which session was running (a crash inside a script cannot be caught).
    pub fn set_probe(&mut self, probe: Probe) {
        self.probe = Some(probe);
    }

    fn probe(&mut self, sid: Option<&str>) {
        if let Some(p) = self.probe.as_mut() {
            p(sid);
        }
    }

    /// A session in memory.
    pub fn get(&self, sid: &str) -> Option<&Hosted<M>> {
        self.sessions.get(sid)
    }

    /// A session in memory, to change.
    pub fn get_mut(&mut self, sid: &str) -> Option<&mut Hosted<M>> {
        self.sessions.get_mut(sid)
    }

    /// Whether a session is in memory.
    pub fn contains(&self, sid: &str) -> bool {
        self.sessions.contains_key(sid)
    }

    /// Sessions in memory (running or ended but not yet removed).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is in memory.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Takes a session out of the host (after it ended, or to evict it from memory).
    pub fn remove(&mut self, sid: &str) -> Option<Hosted<M>> {
        self.sessions.remove(sid)
    }

    /// Keeps only the sessions `keep` accepts; returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &Hosted<M>) -> bool) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|id, h| keep(id, h));
        before - self.sessions.len()
    }

    /// True while some session has events waiting to run.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Starts a session and runs it to its first stable configuration. Events that were
    /// waiting for it (it was an [`Output::Invoke`]'s child) are queued after that.
    /// Returns `false`, and drops the session, if it is a child its parent has cancelled
    /// meanwhile.
    pub fn start(
        &mut self,
        mut session: Session,
        params: &[(String, Value)],
        parent: Option<ParentLink>,
        meta: M,
        now_ms: u64,
    ) -> bool {
        let sid = session.id().to_string();
        if let Some(p) = &parent
            && let Some(ph) = self.sessions.get(&p.session)
            && ph.children.get(&p.invokeid) != Some(&sid)
        {
            self.awaiting.remove(&sid);
            return false;
        }
        self.probe(Some(&sid));
        let effects = session.start(now_ms, params);
        self.probe(None);
        self.sessions.insert(
            sid.clone(),
            Hosted {
                session,
                parent,
                children: BTreeMap::new(),
                meta,
            },
        );
        self.changed.push(sid.clone());
        self.ready.push_back(sid.clone());
        self.apply(&sid, effects);
        self.release_awaiting(&sid);
        true
    }

    /// Puts a session restored by the embedder into the host (the answer to an
    /// [`Output::Load`], or a load of its own). Events that waited for it are queued.
    pub fn insert(&mut self, hosted: Hosted<M>) {
        let sid = hosted.session.id().to_string();
        if hosted.session.queued() > 0 {
            self.ready.push_back(sid.clone());
        }
        self.sessions.insert(sid.clone(), hosted);
        self.release_awaiting(&sid);
    }

    /// The session an [`Output::Load`] asked for cannot be had: each event that waited for
    /// it raises `error.communication` in its sender.
    pub fn abandon(&mut self, sid: &str, reason: &str) {
        for (from, event) in self.awaiting.remove(sid).unwrap_or_default() {
            self.report_undeliverable(&from, event.sendid, reason);
        }
    }

    /// The child of an [`Output::Invoke`] could not be created (its document cannot be
    /// loaded or compiled): the parent gets `error.execution`, as for any other failure
    /// of executable content, and forgets the child.
    pub fn invoke_failed(&mut self, parent: &str, child: &str, reason: &str) {
        if let Some(p) = self.sessions.get_mut(parent) {
            p.children.retain(|_, c| c != child);
            let error = Event::platform("error.execution", None, Some(reason.to_string()));
            if p.session.push_external(error).is_ok() {
                self.ready.push_back(parent.to_string());
            }
        }
        self.abandon(child, &format!("session {child} could not be started"));
    }

    /// Queues an external event for a session in memory; it runs on the next
    /// [`SessionHost::run`].
    pub fn push(&mut self, sid: &str, event: Event) -> Result<(), PushError> {
        let h = self.sessions.get_mut(sid).ok_or(PushError::NotHere)?;
        h.session.push_external(event)?;
        self.ready.push_back(sid.to_string());
        Ok(())
    }

    /// Delivers an event from session `from` to session `to` as the SCXML Event I/O
    /// Processor does: to a session in memory, to one being loaded (it waits), or out as
    /// [`Output::Load`] / [`Output::Forward`]. A failure raises `error.communication` in
    /// `from`.
    pub fn deliver(&mut self, from: &str, to: &str, event: Event) {
        if let Some(h) = self.sessions.get_mut(to) {
            let sendid = event.sendid.clone();
            let queued = if h.session.is_running() {
                h.session.push_external(event).map_err(|e| e.to_string())
            } else {
                Err(format!("session {to} is not running"))
            };
            match queued {
                Ok(()) => self.ready.push_back(to.to_string()),
                Err(msg) => self.report_undeliverable(from, sendid, &msg),
            }
        } else if let Some(waiting) = self.awaiting.get_mut(to) {
            waiting.push((from.to_string(), event));
        } else if (self.holds)(to) {
            self.awaiting
                .insert(to.to_string(), vec![(from.to_string(), event)]);
            self.outputs.push_back(Output::Load {
                session: to.to_string(),
            });
            self.blocked = true;
        } else {
            self.outputs.push_back(Output::Forward {
                from: from.to_string(),
                to: to.to_string(),
                event,
            });
        }
    }

    /// A send of `from` could not be delivered: `error.communication` (with the send's
    /// id) goes to `from`'s external queue, if `from` is here and still running.
    pub fn report_undeliverable(&mut self, from: &str, sendid: Option<String>, reason: &str) {
        if let Some(h) = self.sessions.get_mut(from)
            && h.session
                .push_external(Event::error_communication(sendid, reason))
                .is_ok()
        {
            self.ready.push_back(from.to_string());
        }
    }

    /// A timer from [`Output::SetTimer`] is due. Returns `false` if the session is not in
    /// memory (load it and call again, or drop the timer if it is gone for good).
    pub fn fire_timer(&mut self, sid: &str, timer: u64, now_ms: u64) -> bool {
        let Some(h) = self.sessions.get_mut(sid) else {
            return false;
        };
        let effects = h.session.fire_timer(timer, now_ms);
        if h.session.queued() > 0 {
            self.ready.push_back(sid.to_string());
        }
        self.changed.push(sid.to_string());
        self.apply(sid, effects);
        true
    }

    /// Cancels a session (a terminate request, or its parent leaving the invoking state):
    /// it exits every state, running `onexit`, and sends its parent nothing more. Returns
    /// `false` if it is not in memory.
    pub fn cancel(&mut self, sid: &str, now_ms: u64) -> bool {
        let Some(h) = self.sessions.get_mut(sid) else {
            return false;
        };
        h.parent = None;
        if !h.session.is_running() {
            return true;
        }
        if let Some(p) = self.probe.as_mut() {
            p(Some(sid));
        }
        let effects = h.session.cancel(now_ms);
        self.probe(None);
        self.changed.push(sid.to_string());
        self.apply_with_reason(sid, effects, Some(CANCELLED.to_string()));
        true
    }

    /// Runs ready sessions, one macrostep per turn, until none is ready, an output needs
    /// an answer first, or `max_steps` macrosteps ran. Returns the macrosteps run.
    pub fn run(&mut self, now_ms: u64, max_steps: usize) -> usize {
        let mut steps = 0;
        while steps < max_steps && !self.blocked {
            let Some(sid) = self.ready.pop_front() else {
                break;
            };
            let Some(h) = self.sessions.get_mut(&sid) else {
                continue;
            };
            if h.session.queued() == 0 {
                continue;
            }
            if let Some(p) = self.probe.as_mut() {
                p(Some(&sid));
            }
            let effects = h.session.step(now_ms);
            let more = h.session.queued() > 0 && h.session.is_running();
            self.probe(None);
            steps += 1;
            self.changed.push(sid.clone());
            self.apply(&sid, effects);
            if more {
                self.ready.push_back(sid);
            }
        }
        steps
    }

    /// The next thing the embedder must do, in the order the sessions asked.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front();
        if self.outputs.is_empty() {
            self.blocked = false;
        }
        out
    }

    /// The embedder changed what it keeps with session `sid` (its `meta`): the session is
    /// among the next [`SessionHost::take_changed`], to be written again.
    pub fn mark_changed(&mut self, sid: &str) {
        if self.sessions.contains_key(sid) {
            self.changed.push(sid.to_string());
        }
    }

    /// The sessions that started, ran, fired a timer or ended since the last call, each
    /// once, sorted: what a durable embedder snapshots (or deletes) before acknowledging.
    pub fn take_changed(&mut self) -> Vec<String> {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    fn release_awaiting(&mut self, sid: &str) {
        for (from, event) in self.awaiting.remove(sid).unwrap_or_default() {
            self.deliver(&from, sid, event);
        }
    }

    fn apply(&mut self, sid: &str, effects: Vec<Effect>) {
        self.apply_with_reason(sid, effects, None);
    }

    /// Carries out a session's effects. `reason` is why it ends if one of them is `Done`
    /// (an `Aborted` effect before it overrides it).
    fn apply_with_reason(&mut self, sid: &str, effects: Vec<Effect>, mut reason: Option<String>) {
        for effect in effects {
            match effect {
                Effect::Send {
                    target,
                    type_,
                    event,
                } => {
                    if type_ == SCXML_PROCESSOR {
                        self.route(sid, &target, event);
                    } else {
                        self.outputs.push_back(Output::Send {
                            from: sid.to_string(),
                            target,
                            type_,
                            event,
                        });
                    }
                }
                Effect::SetTimer { timer, due_ms } => self.outputs.push_back(Output::SetTimer {
                    session: sid.to_string(),
                    timer,
                    due_ms,
                }),
                Effect::CancelTimer { timer } => self.outputs.push_back(Output::CancelTimer {
                    session: sid.to_string(),
                    timer,
                }),
                Effect::Invoke(request) => {
                    let child = (self.new_session_id)();
                    if let Some(h) = self.sessions.get_mut(sid) {
                        h.children.insert(request.invokeid.clone(), child.clone());
                    }
                    if (self.holds)(&child) {
                        self.awaiting.insert(child.clone(), Vec::new());
                    }
                    self.outputs.push_back(Output::Invoke {
                        parent: sid.to_string(),
                        child,
                        request,
                    });
                    self.blocked = true;
                }
                Effect::CancelInvoke { invokeid } => self.cancel_child(sid, &invokeid),
                Effect::Log { label, message } => self.outputs.push_back(Output::Log {
                    session: sid.to_string(),
                    label,
                    message,
                }),
                Effect::Response {
                    requestid,
                    positive,
                    resultcode,
                    params,
                } => self.outputs.push_back(Output::Response {
                    session: sid.to_string(),
                    requestid,
                    positive,
                    resultcode,
                    params,
                }),
                Effect::Aborted { reason: why } => reason = Some(why),
                Effect::Done { data } => {
                    let parent = self.sessions.get(sid).and_then(|h| h.parent.clone());
                    if let Some(p) = parent {
                        let event = Event::done_invoke(&p.invokeid, sid, data);
                        self.deliver(sid, &p.session, event);
                        if let Some(ph) = self.sessions.get_mut(&p.session) {
                            ph.children.remove(&p.invokeid);
                        }
                    }
                    self.changed.push(sid.to_string());
                    self.outputs.push_back(Output::Ended {
                        session: sid.to_string(),
                        reason: reason.take(),
                    });
                }
            }
        }
    }

    /// Routes a send through the SCXML Event I/O Processor.
    fn route(&mut self, from: &str, target: &str, mut event: Event) {
        let sender = self.sessions.get(from);
        let to = match SendTarget::parse(target) {
            SendTarget::Parent => match sender.and_then(|h| h.parent.as_ref()) {
                Some(p) => {
                    event.invokeid = Some(p.invokeid.clone());
                    Ok(p.session.clone())
                }
                None => Err("the session has no parent".to_string()),
            },
            SendTarget::Session(id) => Ok(id.to_string()),
            SendTarget::Invoked(inv) => sender
                .and_then(|h| h.children.get(inv).cloned())
                .ok_or_else(|| format!("no invoked session \"{inv}\"")),
            SendTarget::Other(t) => Err(format!("unknown target \"{t}\"")),
        };
        match to {
            Ok(to) => self.deliver(from, &to, event),
            Err(msg) => self.report_undeliverable(from, event.sendid, &msg),
        }
    }

    fn cancel_child(&mut self, parent: &str, invokeid: &str) {
        let Some(h) = self.sessions.get_mut(parent) else {
            return;
        };
        let now = h.session.now_ms();
        let Some(child) = h.children.remove(invokeid) else {
            return;
        };
        if self.sessions.contains_key(&child) {
            self.cancel(&child, now);
        } else if self.awaiting.remove(&child).is_none() {
            // Not started here yet (its start now finds the link gone) or held elsewhere.
            self.outputs
                .push_back(Output::CancelElsewhere { session: child });
        }
    }
}
