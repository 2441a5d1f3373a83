//! One running SCXML session: the algorithm of the W3C SCXML 1.0 Recommendation,
//! Appendix D, driven by the host.
//!
//! A session never blocks, sleeps or does I/O. The host calls [`Session::start`], queues
//! external events with [`Session::push_external`], runs them with [`Session::run`], fires
//! timers with [`Session::fire_timer`], and carries out the [`Effect`]s it gets back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use crate::compile::parse_delay;
use crate::datamodel::{AssignFrom, Datamodel, DmError};
use crate::event::*;
use crate::model::*;
use crate::snapshot::{PendingTimer, Snapshot};
use crate::trace::{Microstep, TransitionRef};

/// Per-session limits that keep a hostile or broken document from hanging its thread.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Microsteps plus internal events in one macrostep before the session is aborted.
    pub max_microsteps: u32,
    /// Pending delayed sends.
    pub max_timers: usize,
    /// Events waiting in the external queue.
    pub max_queue: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_microsteps: 10_000,
            max_timers: 10_000,
            max_queue: 10_000,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ActiveInvoke {
    pub invokeid: String,
    pub state: StateId,
    /// Index into the state's `invokes`.
    pub index: usize,
}

/// Why an event was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the session's event queue is full ({0} events)")]
    /// It holds its maximum number of events.
    Full(usize),
    #[error("the session has ended")]
    /// It reached a final state or was cancelled.
    Ended,
}

/// A running SCXML session: see the [module documentation](self).
pub struct Session {
    pub(crate) doc: Arc<Document>,
    pub(crate) dm: Box<dyn Datamodel>,
    pub(crate) sessionid: String,
    pub(crate) limits: SessionLimits,
    /// Active states, sorted in document order; `active` mirrors it by index.
    pub(crate) config: Vec<StateId>,
    pub(crate) active: Vec<bool>,
    pub(crate) history: BTreeMap<StateId, Vec<StateId>>,
    pub(crate) internal: VecDeque<Event>,
    pub(crate) external: VecDeque<Event>,
    pub(crate) running: bool,
    pub(crate) started: bool,
    pub(crate) states_to_invoke: Vec<StateId>,
    pub(crate) invokes: Vec<ActiveInvoke>,
    pub(crate) timers: BTreeMap<u64, PendingTimer>,
    /// Late binding: states whose data has been initialised.
    pub(crate) data_done: Vec<bool>,
    pub(crate) next_id: u64,
    pub(crate) now_ms: u64,
    pub(crate) effects: Vec<Effect>,
    /// The active atomic states at the moment the session ended.
    pub(crate) final_configuration: Vec<String>,
    pub(crate) target_check: Option<TargetCheck>,
    pub(crate) loopback: Option<Loopback>,
    /// Microsteps recorded since the last [`Session::take_microsteps`], when recording.
    pub(crate) microsteps: Option<Vec<Microstep>>,
    /// `error.*` events processed since the last [`Session::take_errors`], when recording
    /// microsteps (an error no transition handles leaves no microstep), each with the
    /// number of microsteps recorded before it.
    errors: Vec<(usize, Event)>,
    /// `(dropped, kept)` by the last conflict removal, when recording.
    pub(crate) preempted: Vec<(TransitionId, TransitionId)>,
}

/// Tells a session at `<send>` time whether the host can deliver to a target (`#_parent`,
/// `#_scxml_<id>`, a URL), so that `error.communication` is raised at once, as the spec
/// asks. A host that cannot know synchronously answers `true` and reports failures later
/// with [`Event::error_communication`].
pub type TargetCheck = Box<dyn Fn(&str) -> bool>;

/// Turns a BasicHTTP send addressed to this very session into the event its receiving
/// end would produce (`None`: not addressed to this session). The session queues it at
/// once, so it keeps its order against the session's other sends to itself.
pub type Loopback = Box<dyn Fn(&str, &Event) -> Option<Event>>;

enum Target {
    SelfExternal,
    Internal,
    Host { target: String, type_: String },
}

impl Session {
    /// A session of `doc` with id `sessionid` (which should carry the owning node's id).
    pub fn new(doc: Arc<Document>, dm: Box<dyn Datamodel>, sessionid: impl Into<String>) -> Self {
        let n = doc.states.len();
        Session {
            doc,
            dm,
            sessionid: sessionid.into(),
            limits: SessionLimits::default(),
            config: Vec::new(),
            active: vec![false; n],
            history: BTreeMap::new(),
            internal: VecDeque::new(),
            external: VecDeque::new(),
            running: false,
            started: false,
            states_to_invoke: Vec::new(),
            invokes: Vec::new(),
            timers: BTreeMap::new(),
            data_done: vec![false; n],
            next_id: 1,
            now_ms: 0,
            effects: Vec::new(),
            final_configuration: Vec::new(),
            target_check: None,
            loopback: None,
            microsteps: None,
            errors: Vec::new(),
            preempted: Vec::new(),
        }
    }

    /// Installs the host's BasicHTTP loopback (see [`Loopback`]).
    pub fn set_loopback(&mut self, loopback: Loopback) {
        self.loopback = Some(loopback);
    }

    /// Installs the host's synchronous reachability check (see [`TargetCheck`]).
    pub fn set_target_check(&mut self, check: TargetCheck) {
        self.target_check = Some(check);
    }

    /// The same session with other limits.
    pub fn with_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The session's document.
    pub fn document(&self) -> &Arc<Document> {
        &self.doc
    }
    /// From now on, record what each microstep does (see [`Microstep`]); read it with
    /// [`Session::take_microsteps`]. Recording costs an allocation per microstep.
    pub fn record_microsteps(&mut self) {
        self.microsteps.get_or_insert_with(Vec::new);
    }
    /// The `error.*` events the session processed since the last call, handled or not
    /// (empty unless recording microsteps), each with its place among the microsteps:
    /// `(i, error)` came after the first `i` of those [`Session::take_microsteps`] returns
    /// (take both together).
    pub fn take_errors(&mut self) -> Vec<(usize, Event)> {
        std::mem::take(&mut self.errors)
    }
    /// Keeps an `error.*` event for [`Session::take_errors`] when recording.
    fn note_error(&mut self, ev: &Event) {
        if let Some(steps) = &self.microsteps
            && ev.name.starts_with("error.")
        {
            self.errors.push((steps.len(), ev.clone()));
        }
    }
    /// The microsteps recorded since the last call (empty unless recording).
    pub fn take_microsteps(&mut self) -> Vec<Microstep> {
        self.microsteps
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
    /// The session's id.
    pub fn id(&self) -> &str {
        &self.sessionid
    }
    /// True until the session reaches a top-level final state or is cancelled.
    pub fn is_running(&self) -> bool {
        self.running || !self.started
    }
    /// True once the session has ended.
    pub fn is_done(&self) -> bool {
        self.started && !self.running
    }
    /// The host's clock at the session's last call (0 before its start).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }
    /// Events queued and not yet processed.
    pub fn queued(&self) -> usize {
        self.external.len()
    }
    /// Ids of the active atomic states, sorted; once the session has ended, those that
    /// were active when it ended.
    pub fn active_atomic_states(&self) -> Vec<String> {
        if self.is_done() {
            return self.final_configuration.clone();
        }
        self.atomic_configuration()
    }

    fn atomic_configuration(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .config
            .iter()
            .filter(|&&s| self.doc.state(s).is_atomic())
            .map(|&s| self.doc.state(s).id.to_string())
            .collect();
        v.sort();
        v
    }
    /// Ids of every active state, in document order (excluding `<scxml>`).
    pub fn active_states(&self) -> Vec<String> {
        self.config
            .iter()
            .filter(|&&s| s != 0)
            .map(|&s| self.doc.state(s).id.to_string())
            .collect()
    }
    /// Pending delayed sends: `(timer, due_ms)`, for a host re-arming timers after restore.
    pub fn pending_timers(&self) -> Vec<(u64, u64)> {
        self.timers.iter().map(|(&k, t)| (k, t.due_ms)).collect()
    }
    /// Pending delayed sends with their timer numbers, in timer-number order.
    pub fn timers(&self) -> impl Iterator<Item = (u64, &crate::snapshot::PendingTimer)> {
        self.timers.iter().map(|(&k, t)| (k, t))
    }
    /// The datamodel's variables as JSON.
    pub fn datamodel_json(&mut self) -> Result<Value, DmError> {
        self.dm.begin();
        let r = self.dm.snapshot();
        self.dm.end();
        r
    }

    /// Starts the session: initialises the datamodel (`params` override `<data>` items of
    /// the same id), runs the global script, enters the initial configuration and runs to
    /// the end of the first macrostep.
    pub fn start(&mut self, now_ms: u64, params: &[(String, Value)]) -> Vec<Effect> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        self.running = true;
        self.now_ms = now_ms;
        self.dm.begin();
        self.dm.begin_macrostep();
        let doc = self.doc.clone();
        match doc.binding {
            Binding::Early => {
                for item in doc.all_data() {
                    self.init_item(item, params);
                }
                self.data_done.iter_mut().for_each(|d| *d = true);
            }
            Binding::Late => {
                for item in doc.all_data() {
                    if let Err(e) = self.dm.declare(item) {
                        self.error_execution(None, e.0);
                    }
                }
                // Top-level data is bound at start in either mode.
                for item in &doc.states[0].data {
                    self.init_item(item, params);
                }
                self.data_done[0] = true;
            }
        }
        if !doc.global_script.is_empty() {
            self.exec_block(&doc.global_script);
        }
        let init = doc.states[0].initial.expect("compiled documents have one");
        if let Some(steps) = &mut self.microsteps {
            steps.push(Microstep::default());
        }
        self.enter_states(&[init]);
        self.stabilize();
        self.dm.end();
        std::mem::take(&mut self.effects)
    }

    fn init_item(&mut self, item: &DataItem, params: &[(String, Value)]) {
        let v = params
            .iter()
            .rev()
            .find(|(k, _)| **k == *item.id)
            .map(|(_, v)| v);
        if let Err(e) = self.dm.init_data(item, v) {
            self.error_execution(None, e.0);
        }
    }

    /// Queues an external event; it runs on the next [`Session::run`].
    pub fn push_external(&mut self, event: Event) -> Result<(), QueueError> {
        if self.started && !self.running {
            return Err(QueueError::Ended);
        }
        if self.external.len() >= self.limits.max_queue {
            return Err(QueueError::Full(self.limits.max_queue));
        }
        self.external.push_back(event);
        Ok(())
    }

    /// Processes queued external events, one macrostep each, until the queue is empty or
    /// the session ends.
    pub fn run(&mut self, now_ms: u64) -> Vec<Effect> {
        self.now_ms = now_ms;
        if !self.started || !self.running || self.external.is_empty() {
            return std::mem::take(&mut self.effects);
        }
        self.dm.begin();
        while self.running {
            let Some(ev) = self.external.pop_front() else {
                break;
            };
            self.external_event(ev);
        }
        self.dm.end();
        std::mem::take(&mut self.effects)
    }

    /// Processes at most one queued external event (one macrostep).
    pub fn step(&mut self, now_ms: u64) -> Vec<Effect> {
        self.now_ms = now_ms;
        if self.started
            && self.running
            && let Some(ev) = self.external.pop_front()
        {
            self.dm.begin();
            self.external_event(ev);
            self.dm.end();
        }
        std::mem::take(&mut self.effects)
    }

    /// A timer from [`Effect::SetTimer`] is due: dispatch its delayed send. The event may land
    /// in this session's own queue; call [`Session::run`] afterwards.
    pub fn fire_timer(&mut self, timer: u64, now_ms: u64) -> Vec<Effect> {
        self.now_ms = now_ms;
        if let Some(t) = self.timers.remove(&timer) {
            match t.target {
                None => {
                    if self.running {
                        self.external.push_back(t.event);
                    }
                }
                Some((target, type_)) => self.effects.push(Effect::Send {
                    target,
                    type_,
                    event: t.event,
                }),
            }
        }
        std::mem::take(&mut self.effects)
    }

    /// Cancels the session (as a parent cancels an invoked child): exits every state,
    /// running `onexit` handlers, without a done event.
    pub fn cancel(&mut self, now_ms: u64) -> Vec<Effect> {
        self.now_ms = now_ms;
        if self.running {
            self.dm.begin();
            self.running = false;
            self.exit_interpreter(false);
            self.dm.end();
        }
        std::mem::take(&mut self.effects)
    }

    // ----- the main loop -----

    fn external_event(&mut self, ev: Event) {
        self.note_error(&ev);
        self.dm.begin_macrostep();
        self.dm.set_event(&ev);
        let doc = self.doc.clone();
        for k in 0..self.invokes.len() {
            let Some(ai) = self.invokes.get(k).cloned() else {
                break;
            };
            let inv = &doc.state(ai.state).invokes[ai.index];
            if ev.invokeid.as_deref() == Some(&ai.invokeid) && !inv.finalize.is_empty() {
                self.exec_block(&inv.finalize);
            }
            if inv.autoforward {
                self.effects.push(Effect::Send {
                    target: format!("#_{}", ai.invokeid),
                    type_: SCXML_PROCESSOR.to_string(),
                    event: ev.clone(),
                });
            }
        }
        let enabled = self.select_transitions(Some(&ev));
        if !enabled.is_empty() {
            self.microstep(&enabled, Some(&ev));
        }
        self.stabilize();
    }

    /// Ends the session at once, without a done event, for `reason`.
    fn abort(&mut self, reason: String) {
        self.effects.push(Effect::Aborted { reason });
        self.running = false;
        self.internal.clear();
        self.exit_interpreter(false);
    }

    /// Runs eventless transitions and internal events to completion, then invokes, and
    /// repeats while invoking raised internal events. Ends the session when it stopped.
    fn stabilize(&mut self) {
        let mut budget = self.limits.max_microsteps;
        loop {
            while self.running {
                if let Some(reason) = self.dm.exceeded() {
                    self.abort(reason);
                    return;
                }
                let mut enabled = self.select_transitions(None);
                let mut event = None;
                if enabled.is_empty() {
                    match self.internal.pop_front() {
                        None => break,
                        Some(ev) => {
                            self.note_error(&ev);
                            self.dm.set_event(&ev);
                            enabled = self.select_transitions(Some(&ev));
                            event = Some(ev);
                        }
                    }
                }
                if !enabled.is_empty() {
                    self.microstep(&enabled, event.as_ref());
                }
                budget = budget.saturating_sub(1);
                if budget == 0 {
                    self.abort(format!(
                        "more than {} microsteps in one macrostep (an endless eventless loop?)",
                        self.limits.max_microsteps
                    ));
                    return;
                }
            }
            if !self.running {
                self.exit_interpreter(true);
                return;
            }
            let to_invoke = std::mem::take(&mut self.states_to_invoke);
            let mut sorted = to_invoke;
            sorted.sort_unstable();
            sorted.dedup();
            for s in sorted {
                for i in 0..self.doc.state(s).invokes.len() {
                    self.invoke(s, i);
                }
            }
            if self.internal.is_empty() {
                return;
            }
        }
    }

    fn exit_interpreter(&mut self, done_event: bool) {
        self.final_configuration = self.atomic_configuration();
        let mut exit: Vec<StateId> = self.config.clone();
        exit.reverse();
        let doc = self.doc.clone();
        let mut done_data = None;
        for s in exit {
            let st = doc.state(s);
            for b in &st.onexit {
                self.exec_block(b);
            }
            self.cancel_invokes_of(s);
            self.set_active(s, false);
            if done_event && st.kind == StateKind::Final && st.parent == Some(0) {
                done_data = Some(st.donedata.as_ref().and_then(|dd| self.eval_donedata(dd)));
            }
        }
        for (t, _) in std::mem::take(&mut self.timers) {
            self.effects.push(Effect::CancelTimer { timer: t });
        }
        self.effects.push(Effect::Done {
            data: done_data.flatten(),
        });
    }

    // ----- transition selection -----

    fn select_transitions(&mut self, ev: Option<&Event>) -> Vec<TransitionId> {
        let doc = self.doc.clone();
        let mut enabled: Vec<TransitionId> = Vec::new();
        let atomic: Vec<StateId> = self
            .config
            .iter()
            .copied()
            .filter(|&s| doc.state(s).is_atomic())
            .collect();
        for s in atomic {
            let mut cur = Some(s);
            'states: while let Some(st) = cur {
                for &t in &doc.state(st).transitions {
                    let tr = doc.transition(t);
                    let event_ok = match ev {
                        None => tr.events.is_empty(),
                        Some(e) => !tr.events.is_empty() && tr.matches(&e.name),
                    };
                    if event_ok && self.condition(tr.cond) {
                        if !enabled.contains(&t) {
                            enabled.push(t);
                        }
                        break 'states;
                    }
                }
                cur = doc.state(st).parent;
            }
        }
        if enabled.len() > 1 {
            let (kept, preempted) = self.remove_conflicts(enabled);
            if self.microsteps.is_some() {
                // For the microstep these transitions are about to make.
                self.preempted = preempted;
            }
            kept
        } else {
            enabled
        }
    }

    fn condition(&mut self, cond: Option<ExprId>) -> bool {
        match cond {
            None => true,
            Some(c) => match self.dm.eval_cond(c) {
                Ok(b) => b,
                Err(e) => {
                    self.error_execution(None, e.0);
                    false
                }
            },
        }
    }

    /// `removeConflictingTransitions`: the transitions kept, and `(dropped, kept)` pairs.
    fn remove_conflicts(
        &self,
        enabled: Vec<TransitionId>,
    ) -> (Vec<TransitionId>, Vec<(TransitionId, TransitionId)>) {
        let mut filtered: Vec<(TransitionId, Vec<StateId>)> = Vec::new();
        let mut preempted = Vec::new();
        for t1 in enabled {
            let x1 = self.exit_set(&[t1]);
            let mut dropped = None;
            let mut remove = Vec::new();
            for (i, (t2, x2)) in filtered.iter().enumerate() {
                if x1.iter().any(|s| x2.contains(s)) {
                    let s1 = self.doc.transition(t1).source;
                    let s2 = self.doc.transition(*t2).source;
                    if self.doc.is_descendant(s1, s2) {
                        remove.push(i);
                    } else {
                        dropped = Some(*t2);
                        break;
                    }
                }
            }
            match dropped {
                Some(kept) => preempted.push((t1, kept)),
                None => {
                    for i in remove.into_iter().rev() {
                        preempted.push((filtered[i].0, t1));
                        filtered.remove(i);
                    }
                    filtered.push((t1, x1));
                }
            }
        }
        (filtered.into_iter().map(|(t, _)| t).collect(), preempted)
    }

    fn transition_ref(&self, t: TransitionId) -> TransitionRef {
        let source = self.doc.transition(t).source;
        let st = self.doc.state(source);
        TransitionRef {
            source: st.id.to_string(),
            index: st.transitions.iter().position(|&x| x == t),
        }
    }

    // ----- microstep -----

    fn microstep(&mut self, enabled: &[TransitionId], event: Option<&Event>) {
        if self.microsteps.is_some() {
            let step = Microstep {
                event: event.map(|e| e.name.to_string()),
                transitions: enabled.iter().map(|&t| self.transition_ref(t)).collect(),
                preempted: std::mem::take(&mut self.preempted)
                    .into_iter()
                    .map(|(d, k)| (self.transition_ref(d), self.transition_ref(k)))
                    .collect(),
                ..Microstep::default()
            };
            if let Some(steps) = &mut self.microsteps {
                steps.push(step);
            }
        }
        self.exit_states(enabled);
        let doc = self.doc.clone();
        for &t in enabled {
            self.exec_block(&doc.transition(t).actions);
        }
        self.enter_states(enabled);
    }

    fn exit_set(&self, ts: &[TransitionId]) -> Vec<StateId> {
        let mut out: Vec<StateId> = Vec::new();
        for &t in ts {
            if self.doc.transition(t).targets.is_empty() {
                continue;
            }
            if let Some(domain) = self.transition_domain(t) {
                for &s in &self.config {
                    if self.doc.is_descendant(s, domain) && !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
        }
        out
    }

    fn exit_states(&mut self, enabled: &[TransitionId]) {
        let mut exit = self.exit_set(enabled);
        self.states_to_invoke.retain(|s| !exit.contains(s));
        exit.sort_unstable_by(|a, b| b.cmp(a));
        let doc = self.doc.clone();
        for &s in &exit {
            for &h in &doc.state(s).history {
                let deep = doc.state(h).kind == StateKind::DeepHistory;
                let v: Vec<StateId> = self
                    .config
                    .iter()
                    .copied()
                    .filter(|&s0| {
                        if deep {
                            doc.state(s0).is_atomic() && doc.is_descendant(s0, s)
                        } else {
                            doc.state(s0).parent == Some(s)
                        }
                    })
                    .collect();
                self.history.insert(h, v);
            }
        }
        if let Some(step) = self.microsteps.as_mut().and_then(|m| m.last_mut()) {
            step.exited = exit.iter().map(|&s| doc.state(s).id.to_string()).collect();
        }
        for s in exit {
            for b in &doc.state(s).onexit {
                self.exec_block(b);
            }
            self.cancel_invokes_of(s);
            self.set_active(s, false);
        }
    }

    fn enter_states(&mut self, enabled: &[TransitionId]) {
        let mut to_enter: Vec<StateId> = Vec::new();
        let mut default_entry: Vec<StateId> = Vec::new();
        let mut default_history: BTreeMap<StateId, TransitionId> = BTreeMap::new();
        for &t in enabled {
            let tr = self.doc.transition(t);
            for &s in &tr.targets {
                self.add_descendants(s, &mut to_enter, &mut default_entry, &mut default_history);
            }
            let ancestor = self.transition_domain(t);
            for s in self.effective_targets(t) {
                self.add_ancestors(
                    s,
                    ancestor,
                    &mut to_enter,
                    &mut default_entry,
                    &mut default_history,
                );
            }
        }
        to_enter.sort_unstable();
        let doc = self.doc.clone();
        if let Some(step) = self.microsteps.as_mut().and_then(|m| m.last_mut()) {
            step.entered = to_enter
                .iter()
                .map(|&s| doc.state(s).id.to_string())
                .collect();
        }
        for s in to_enter {
            self.set_active(s, true);
            self.states_to_invoke.push(s);
            let st = doc.state(s);
            if !self.data_done[s as usize] {
                self.data_done[s as usize] = true;
                for item in &st.data {
                    self.init_item(item, &[]);
                }
            }
            for b in &st.onentry {
                self.exec_block(b);
            }
            if default_entry.contains(&s)
                && let Some(t) = st.initial
            {
                self.exec_block(&doc.transition(t).actions);
            }
            if let Some(&t) = default_history.get(&s) {
                self.exec_block(&doc.transition(t).actions);
            }
            if st.kind == StateKind::Final {
                let parent = st.parent.expect("final states have a parent");
                if parent == 0 {
                    self.running = false;
                } else {
                    let data = st.donedata.as_ref().and_then(|dd| self.eval_donedata(dd));
                    let pid = doc.state(parent).id.to_string();
                    self.internal
                        .push_back(Event::internal(format!("done.state.{pid}"), data));
                    if let Some(gp) = doc.state(parent).parent
                        && doc.state(gp).kind == StateKind::Parallel
                        && doc.state(gp).children.iter().all(|&c| self.in_final(c))
                    {
                        self.internal.push_back(Event::internal(
                            format!("done.state.{}", doc.state(gp).id),
                            None,
                        ));
                    }
                }
            }
        }
    }

    fn add_descendants(
        &self,
        s: StateId,
        to_enter: &mut Vec<StateId>,
        default_entry: &mut Vec<StateId>,
        default_history: &mut BTreeMap<StateId, TransitionId>,
    ) {
        let doc = &self.doc;
        let st = doc.state(s);
        if st.is_history() {
            let parent = st.parent.expect("history has a parent");
            if let Some(h) = self.history.get(&s) {
                for &x in h {
                    self.add_descendants(x, to_enter, default_entry, default_history);
                }
                for &x in h {
                    self.add_ancestors(x, Some(parent), to_enter, default_entry, default_history);
                }
            } else if let Some(t) = st.initial {
                default_history.insert(parent, t);
                for &x in &doc.transition(t).targets {
                    self.add_descendants(x, to_enter, default_entry, default_history);
                }
                for &x in &doc.transition(t).targets {
                    self.add_ancestors(x, Some(parent), to_enter, default_entry, default_history);
                }
            }
            return;
        }
        if !to_enter.contains(&s) {
            to_enter.push(s);
        }
        match st.kind {
            StateKind::Compound => {
                if !default_entry.contains(&s) {
                    default_entry.push(s);
                }
                if let Some(t) = st.initial {
                    for &x in &doc.transition(t).targets {
                        self.add_descendants(x, to_enter, default_entry, default_history);
                    }
                    for &x in &doc.transition(t).targets {
                        self.add_ancestors(x, Some(s), to_enter, default_entry, default_history);
                    }
                }
            }
            StateKind::Parallel => {
                for &c in &st.children {
                    if !to_enter.iter().any(|&e| e == c || doc.is_descendant(e, c)) {
                        self.add_descendants(c, to_enter, default_entry, default_history);
                    }
                }
            }
            _ => {}
        }
    }

    fn add_ancestors(
        &self,
        s: StateId,
        ancestor: Option<StateId>,
        to_enter: &mut Vec<StateId>,
        default_entry: &mut Vec<StateId>,
        default_history: &mut BTreeMap<StateId, TransitionId>,
    ) {
        let doc = &self.doc;
        let mut cur = doc.state(s).parent;
        while let Some(anc) = cur {
            if Some(anc) == ancestor {
                break;
            }
            if !to_enter.contains(&anc) {
                to_enter.push(anc);
            }
            if doc.state(anc).kind == StateKind::Parallel {
                for &c in &doc.state(anc).children {
                    if !to_enter.iter().any(|&e| e == c || doc.is_descendant(e, c)) {
                        self.add_descendants(c, to_enter, default_entry, default_history);
                    }
                }
            }
            cur = doc.state(anc).parent;
        }
    }

    fn in_final(&self, s: StateId) -> bool {
        let st = self.doc.state(s);
        match st.kind {
            StateKind::Compound => st
                .children
                .iter()
                .any(|&c| self.doc.state(c).kind == StateKind::Final && self.active[c as usize]),
            StateKind::Parallel => st.children.iter().all(|&c| self.in_final(c)),
            _ => false,
        }
    }

    fn effective_targets(&self, t: TransitionId) -> Vec<StateId> {
        let mut out = Vec::new();
        for &s in &self.doc.transition(t).targets {
            let st = self.doc.state(s);
            if st.is_history() {
                match self.history.get(&s) {
                    Some(h) => out.extend(h.iter().copied()),
                    None => {
                        if let Some(dt) = st.initial {
                            out.extend(self.effective_targets(dt));
                        }
                    }
                }
            } else {
                out.push(s);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn transition_domain(&self, t: TransitionId) -> Option<StateId> {
        let targets = self.effective_targets(t);
        if targets.is_empty() {
            return None;
        }
        let tr = self.doc.transition(t);
        let src = tr.source;
        if tr.internal
            && self.doc.state(src).kind == StateKind::Compound
            && targets.iter().all(|&s| self.doc.is_descendant(s, src))
        {
            return Some(src);
        }
        // findLCCA([source] + targets)
        let mut cur = self.doc.state(src).parent;
        while let Some(anc) = cur {
            let k = self.doc.state(anc).kind;
            if matches!(k, StateKind::Compound | StateKind::Root)
                && targets.iter().all(|&s| self.doc.is_descendant(s, anc))
            {
                return Some(anc);
            }
            cur = self.doc.state(anc).parent;
        }
        Some(0)
    }

    fn set_active(&mut self, s: StateId, on: bool) {
        if self.active[s as usize] == on {
            return;
        }
        self.active[s as usize] = on;
        match self.config.binary_search(&s) {
            Ok(i) if !on => {
                self.config.remove(i);
            }
            Err(i) if on => self.config.insert(i, s),
            _ => {}
        }
        if self.doc.uses_in {
            self.dm.set_active(s, on);
        }
    }

    // ----- executable content -----

    fn error_execution(&mut self, sendid: Option<String>, message: String) {
        self.internal
            .push_back(Event::platform("error.execution", sendid, Some(message)));
    }

    /// Runs a block; the first error raises `error.execution` and ends the block.
    fn exec_block(&mut self, block: &[Action]) {
        for a in block {
            if let Err((sendid, e)) = self.exec(a) {
                self.error_execution(sendid, e);
                return;
            }
        }
    }

    fn exec(&mut self, a: &Action) -> Result<(), (Option<String>, String)> {
        let plain = |e: DmError| (None, e.0);
        match a {
            Action::Raise { event } => {
                self.internal
                    .push_back(Event::internal(event.to_string(), None));
            }
            Action::Log { label, expr } => {
                let message = match expr {
                    Some(e) => self.dm.eval_string(*e).map_err(plain)?,
                    None => String::new(),
                };
                self.effects.push(Effect::Log {
                    label: label.as_deref().unwrap_or("").to_string(),
                    message,
                });
            }
            Action::Assign { location, value } => {
                let from = match value {
                    AssignValue::Expr(e) => AssignFrom::Expr(*e),
                    AssignValue::Content(c) => AssignFrom::Content(c),
                };
                self.dm.assign(*location, from).map_err(plain)?;
            }
            Action::If { branches } => {
                for (cond, block) in branches {
                    let take = match cond {
                        None => true,
                        Some(c) => self.dm.eval_cond(*c).map_err(plain)?,
                    };
                    if take {
                        for a in block {
                            self.exec(a)?;
                        }
                        break;
                    }
                }
            }
            Action::Foreach {
                array,
                item,
                index,
                body,
            } => {
                let n = self.dm.foreach_begin(*array).map_err(plain)?;
                let mut result = Ok(());
                'items: for i in 0..n {
                    if let Err(e) = self.dm.foreach_bind(*item, *index, i) {
                        result = Err((None, e.0));
                        break;
                    }
                    for a in body {
                        if let Err(e) = self.exec(a) {
                            result = Err(e);
                            break 'items;
                        }
                    }
                }
                self.dm.foreach_end();
                result?;
            }
            Action::Script { body } => self.dm.exec_script(*body).map_err(plain)?,
            Action::Send(s) => self.send(s)?,
            Action::Cancel { sendid } => {
                let id = self.text(sendid).map_err(plain)?;
                let gone: Vec<u64> = self
                    .timers
                    .iter()
                    .filter(|(_, t)| t.sendid.as_deref() == Some(&id))
                    .map(|(&k, _)| k)
                    .collect();
                for k in gone {
                    self.timers.remove(&k);
                    self.effects.push(Effect::CancelTimer { timer: k });
                }
            }
            Action::Response(r) => {
                let requestid = self.dm.eval_string(r.requestid).map_err(plain)?;
                let positive = match &r.type_ {
                    None => true,
                    Some(t) => match self.text(t).map_err(plain)?.as_str() {
                        "positive" => true,
                        "negative" => false,
                        o => {
                            return Err((
                                None,
                                format!("response type must be positive or negative, not {o}"),
                            ));
                        }
                    },
                };
                let resultcode = match &r.resultcode {
                    None => None,
                    Some(t) => Some(self.text(t).map_err(plain)?),
                };
                let mut params = serde_json::Map::new();
                for p in &r.params {
                    params.insert(
                        p.name.to_string(),
                        self.dm.eval_value(p.expr).map_err(plain)?,
                    );
                }
                self.effects.push(Effect::Response {
                    requestid,
                    positive,
                    resultcode,
                    params,
                });
            }
            Action::Fail { message } => return Err((None, message.to_string())),
        }
        Ok(())
    }

    fn text(&mut self, t: &Text) -> Result<String, DmError> {
        match t {
            Text::Literal(s) => Ok(s.to_string()),
            Text::Expr(e) => self.dm.eval_string(*e),
        }
    }

    fn gen_id(&mut self, prefix: &str) -> String {
        let n = self.next_id;
        self.next_id += 1;
        format!("{prefix}{n}")
    }

    fn send(&mut self, s: &Send) -> Result<(), (Option<String>, String)> {
        // The id is known (and stored) before anything can fail, so errors carry it.
        let sendid = match (&s.id, s.idlocation) {
            (Some(id), _) => Some(id.to_string()),
            (None, Some(loc)) => {
                let id = self.gen_id(&format!("{}.send.", self.sessionid));
                self.dm
                    .assign(loc, AssignFrom::Value(&Value::String(id.clone())))
                    .map_err(|e| (None, e.0))?;
                Some(id)
            }
            (None, None) => None,
        };
        let err = |e: DmError| (sendid.clone(), e.0);
        let name = match &s.event {
            Some(t) => Some(self.text(t).map_err(err)?),
            None => None,
        };
        let target = match &s.target {
            Some(t) => Some(self.text(t).map_err(err)?),
            None => None,
        };
        let type_ = match &s.type_ {
            Some(t) => Some(self.text(t).map_err(err)?),
            None => None,
        };
        let delay_ms = match &s.delay {
            None => 0,
            Some(t) => {
                let d = self.text(t).map_err(err)?;
                parse_delay(&d).ok_or_else(|| (sendid.clone(), format!("invalid delay \"{d}\"")))?
            }
        };
        let data = self.payload(&s.namelist, &s.params, &s.body).map_err(err)?;
        let type_uri = match type_.as_deref() {
            None | Some("scxml") | Some(SCXML_PROCESSOR) => SCXML_PROCESSOR,
            Some("basichttp") | Some(BASIC_HTTP_PROCESSOR) => BASIC_HTTP_PROCESSOR,
            Some(other) => {
                return Err((
                    sendid,
                    format!("unsupported event I/O processor type \"{other}\""),
                ));
            }
        };
        let dest = match (type_uri, target.as_deref()) {
            (SCXML_PROCESSOR, None) => Target::SelfExternal,
            (SCXML_PROCESSOR, Some("#_internal")) => Target::Internal,
            (SCXML_PROCESSOR, Some(t)) if t == format!("#_scxml_{}", self.sessionid) => {
                Target::SelfExternal
            }
            (SCXML_PROCESSOR, Some(t)) if t.starts_with("#_") && t.len() > 2 => Target::Host {
                target: t.to_string(),
                type_: SCXML_PROCESSOR.to_string(),
            },
            (SCXML_PROCESSOR, Some(t)) => {
                return Err((
                    sendid,
                    format!("invalid target \"{t}\" for the SCXML event processor"),
                ));
            }
            (_, None) => {
                // Nowhere to deliver it: a communication error, not an execution error.
                self.internal.push_back(Event::error_communication(
                    sendid,
                    "the BasicHTTP event processor needs a target URL",
                ));
                return Ok(());
            }
            (_, Some(t)) => Target::Host {
                target: t.to_string(),
                type_: BASIC_HTTP_PROCESSOR.to_string(),
            },
        };
        if delay_ms > 0 && matches!(dest, Target::Internal) {
            return Err((sendid, "a send to #_internal cannot be delayed".into()));
        }
        let name = match name {
            Some(n) => n,
            None if type_uri == BASIC_HTTP_PROCESSOR => String::new(),
            None => return Err((sendid, "<send> has no event name".into())),
        };
        let event = Event {
            name,
            kind: if matches!(dest, Target::Internal) {
                EventType::Internal
            } else {
                EventType::External
            },
            sendid: sendid.clone(),
            origin: Some(format!("#_scxml_{}", self.sessionid)),
            origintype: Some(SCXML_PROCESSOR.to_string()),
            invokeid: None,
            data,

            raw: None,
        };
        if delay_ms > 0 {
            if self.timers.len() >= self.limits.max_timers {
                return Err((
                    sendid,
                    format!("more than {} pending delayed sends", self.limits.max_timers),
                ));
            }
            let timer = self.next_id;
            self.next_id += 1;
            let due_ms = self.now_ms.saturating_add(delay_ms);
            let target = match dest {
                Target::Host { target, type_ } => Some((target, type_)),
                _ => None,
            };
            self.timers.insert(
                timer,
                PendingTimer {
                    sendid,
                    due_ms,
                    target,
                    event,
                },
            );
            self.effects.push(Effect::SetTimer { timer, due_ms });
            return Ok(());
        }
        if delay_ms == 0
            && let Target::Host { target, type_ } = &dest
            && type_ == BASIC_HTTP_PROCESSOR
            && let Some(ev) = self.loopback.as_ref().and_then(|lb| lb(target, &event))
        {
            self.external.push_back(ev);
            return Ok(());
        }
        if let Target::Host { target, .. } = &dest
            && !self.reachable(target)
        {
            self.internal.push_back(Event::error_communication(
                sendid,
                &format!("cannot deliver to \"{target}\""),
            ));
            return Ok(());
        }
        match dest {
            Target::Internal => self.internal.push_back(event),
            Target::SelfExternal => self.external.push_back(event),
            Target::Host { target, type_ } => self.effects.push(Effect::Send {
                target,
                type_,
                event,
            }),
        }
        Ok(())
    }

    fn reachable(&self, target: &str) -> bool {
        if let SendTarget::Invoked(inv) = SendTarget::parse(target) {
            return self.invokes.iter().any(|i| i.invokeid == inv);
        }
        self.target_check.as_ref().is_none_or(|check| check(target))
    }

    /// The data of a send, done event or invoke: namelist and params make an object,
    /// `<content>` stands alone.
    fn payload(
        &mut self,
        namelist: &[(Box<str>, ExprId)],
        params: &[Param],
        body: &Body,
    ) -> Result<Option<Content>, DmError> {
        match body {
            Body::Content(c) => return Ok(Some(c.clone())),
            Body::ContentExpr(e) => return Ok(Some(self.dm.eval_content(*e)?)),
            Body::None => {}
        }
        if namelist.is_empty() && params.is_empty() {
            return Ok(None);
        }
        let mut m = serde_json::Map::new();
        for (name, loc) in namelist {
            m.insert(name.to_string(), self.dm.eval_value(*loc)?);
        }
        for p in params {
            m.insert(p.name.to_string(), self.dm.eval_value(p.expr)?);
        }
        Ok(Some(Content::Json(Value::Object(m))))
    }

    fn eval_donedata(&mut self, dd: &DoneData) -> Option<Content> {
        match self.payload(&[], &dd.params, &dd.body) {
            Ok(c) => c,
            Err(e) => {
                self.error_execution(None, e.0);
                None
            }
        }
    }

    // ----- invoke -----

    fn invoke(&mut self, s: StateId, index: usize) {
        let doc = self.doc.clone();
        let inv = &doc.state(s).invokes[index];
        let invokeid = match (&inv.id, inv.idlocation) {
            (Some(id), _) => id.to_string(),
            (None, loc) => {
                let id = format!("{}.{}", doc.state(s).id, self.gen_id(""));
                if let Some(loc) = loc
                    && let Err(e) = self
                        .dm
                        .assign(loc, AssignFrom::Value(&Value::String(id.clone())))
                {
                    self.error_execution(None, e.0);
                    return;
                }
                id
            }
        };
        match self.invoke_request(inv, invokeid.clone()) {
            Ok(req) => {
                self.invokes.push(ActiveInvoke {
                    invokeid,
                    state: s,
                    index,
                });
                self.effects.push(Effect::Invoke(req));
            }
            Err(e) => self.error_execution(None, e.0),
        }
    }

    fn invoke_request(&mut self, inv: &Invoke, invokeid: String) -> Result<InvokeRequest, DmError> {
        let type_ = match &inv.type_ {
            None => SCXML_INVOKE_TYPE.to_string(),
            Some(t) => self.text(t)?,
        };
        let type_ = match type_.trim_end_matches('/') {
            "http://www.w3.org/TR/scxml" | "scxml" | SCXML_PROCESSOR => {
                SCXML_INVOKE_TYPE.to_string()
            }
            _ => return Err(DmError::new(format!("unsupported invoke type \"{type_}\""))),
        };
        let source = match (&inv.src, &inv.content) {
            (Some(t), _) => InvokeSource::Uri(self.text(t)?),
            (None, InvokeContent::Document(d)) => InvokeSource::Document(d.clone()),
            (None, InvokeContent::Expr(e)) => match self.dm.eval_content(*e)? {
                Content::Xml(x) | Content::Text(x) => InvokeSource::Text(x.to_string()),
                Content::Json(Value::String(s)) => InvokeSource::Text(s),
                Content::Json(other) => InvokeSource::Text(other.to_string()),
            },
            (None, InvokeContent::None) => {
                return Err(DmError::new("<invoke> has neither src nor content"));
            }
        };
        let mut params = Vec::new();
        for (name, loc) in &inv.namelist {
            params.push((name.to_string(), self.dm.eval_value(*loc)?));
        }
        for p in &inv.params {
            params.push((p.name.to_string(), self.dm.eval_value(p.expr)?));
        }
        Ok(InvokeRequest {
            invokeid,
            type_,
            source,
            params,
            autoforward: inv.autoforward,
        })
    }

    fn cancel_invokes_of(&mut self, s: StateId) {
        let mut i = 0;
        while i < self.invokes.len() {
            if self.invokes[i].state == s {
                let ai = self.invokes.remove(i);
                self.effects.push(Effect::CancelInvoke {
                    invokeid: ai.invokeid,
                });
            } else {
                i += 1;
            }
        }
    }

    // ----- snapshots -----

    /// The session's complete state between macrosteps, serialisable with serde.
    pub fn snapshot(&mut self) -> Result<Snapshot, DmError> {
        let vars = self.datamodel_json()?;
        let name = |s: StateId| self.doc.state(s).id.to_string();
        Ok(Snapshot {
            version: Snapshot::VERSION,
            sessionid: self.sessionid.clone(),
            started: self.started,
            running: self.running,
            configuration: self
                .config
                .iter()
                .filter(|&&s| s != 0)
                .map(|&s| name(s))
                .collect(),
            history: self
                .history
                .iter()
                .map(|(&h, v)| (name(h), v.iter().map(|&s| name(s)).collect()))
                .collect(),
            data_initialized: self
                .data_done
                .iter()
                .enumerate()
                .filter(|(_, d)| **d)
                .map(|(i, _)| name(i as StateId))
                .collect(),
            datamodel: vars,
            internal_queue: self.internal.iter().cloned().collect(),
            external_queue: self.external.iter().cloned().collect(),
            invokes: self
                .invokes
                .iter()
                .map(|i| (i.invokeid.clone(), name(i.state), i.index))
                .collect(),
            timers: self.timers.iter().map(|(&k, t)| (k, t.clone())).collect(),
            next_id: self.next_id,
        })
    }

    /// Rebuilds a session from a snapshot taken of a session of the same document.
    pub fn restore(
        doc: Arc<Document>,
        dm: Box<dyn Datamodel>,
        snap: &Snapshot,
    ) -> Result<Session, crate::snapshot::RestoreError> {
        use crate::snapshot::RestoreError;
        if snap.version != Snapshot::VERSION {
            return Err(RestoreError::Version(snap.version));
        }
        let mut s = Session::new(doc.clone(), dm, snap.sessionid.clone());
        let lookup = |n: &str| {
            doc.state_by_name(n)
                .ok_or_else(|| RestoreError::UnknownState(n.to_string()))
        };
        s.started = snap.started;
        s.running = snap.running;
        s.dm.begin();
        let r = s.dm.restore(&snap.datamodel);
        if let Err(e) = r {
            s.dm.end();
            return Err(RestoreError::Datamodel(e.0));
        }
        let mut ids = vec![0];
        for n in &snap.configuration {
            ids.push(lookup(n)?);
        }
        if snap.started {
            for id in ids {
                s.set_active(id, true);
            }
        }
        s.dm.end();
        for (h, v) in &snap.history {
            let v: Result<Vec<StateId>, _> = v.iter().map(|n| lookup(n)).collect();
            s.history.insert(lookup(h)?, v?);
        }
        s.data_done.iter_mut().for_each(|d| *d = false);
        for n in &snap.data_initialized {
            s.data_done[lookup(n)? as usize] = true;
        }
        s.internal = snap.internal_queue.iter().cloned().collect();
        s.external = snap.external_queue.iter().cloned().collect();
        for (id, st, index) in &snap.invokes {
            let state = lookup(st)?;
            if *index >= doc.state(state).invokes.len() {
                return Err(RestoreError::UnknownState(format!("{st} (invoke {index})")));
            }
            s.invokes.push(ActiveInvoke {
                invokeid: id.clone(),
                state,
                index: *index,
            });
        }
        s.timers = snap.timers.iter().cloned().collect();
        s.next_id = snap.next_id;
        Ok(s)
    }
}
