//! A worker thread: owns its sessions (and their JS state), runs commands in batches and
//! persists each batch with one store call before acknowledging any of it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ors_scxml::event::{BASIC_HTTP_PROCESSOR, SCXML_PROCESSOR, SendTarget};
use ors_scxml::{
    Document, Effect, Event, InvokeSource, Session, SessionLimits, Snapshot, SystemVars,
};
use ors_store::{ScheduleEntry, ScheduleKind, SessionWrite, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::{ApiError, QueryResult, ResponseData, Shared, now_ms};

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

pub(crate) enum Command {
    Start {
        sid: String,
        doc: Arc<Document>,
        hash: String,
        params: Vec<(String, Value)>,
        /// `(parent session, invokeid)` for invoked children.
        parent: Option<(String, String)>,
        reply: Option<Reply<()>>,
    },
    Event {
        sid: String,
        event: Event,
        reply: Option<Reply<()>>,
    },
    Query {
        sid: String,
        reply: Reply<QueryResult>,
    },
    Terminate {
        sid: String,
        reply: Option<Reply<()>>,
    },
    FireTimer {
        sid: String,
        timer: u64,
        schedule_id: String,
    },
    Recover {
        sid: String,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// What is stored for a session: the engine snapshot plus what the runtime keeps.
#[derive(Serialize, Deserialize)]
struct Stored {
    snapshot: Snapshot,
    parent: Option<(String, String)>,
    children: BTreeMap<String, String>,
    persist: bool,
}

struct Slot {
    session: Session,
    hash: String,
    /// Store version; `None` until first written.
    version: Option<u64>,
    persist: bool,
    parent: Option<(String, String)>,
    children: BTreeMap<String, String>,
    last_active: Instant,
}

/// Work a batch produced that must wait for (or follow) the durable write.
#[derive(Default)]
struct Outbox {
    dirty: Vec<String>,
    acks: Vec<(String, Reply<()>)>,
    finished: Vec<(String, Vec<String>)>,
    schedule_puts: Vec<ScheduleEntry>,
    schedule_deletes: Vec<String>,
    remote: Vec<(String, Command)>,
    http: Vec<(String, String, Event)>,
}

struct Worker {
    shared: Arc<Shared>,
    me: usize,
    sessions: HashMap<String, Slot>,
    ready: VecDeque<String>,
}

pub(crate) fn run(shared: Arc<Shared>, me: usize, mut rx: mpsc::Receiver<Command>) {
    ors_ecmascript::configure_thread(shared.cfg.js);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime");
    let mut w = Worker {
        shared,
        me,
        sessions: HashMap::new(),
        ready: VecDeque::new(),
    };
    rt.block_on(async {
        let mut idle_scan = tokio::time::interval(Duration::from_secs(1));
        loop {
            let first = tokio::select! {
                c = rx.recv() => match c { Some(c) => c, None => break },
                _ = idle_scan.tick() => { w.deactivate_idle(); continue; }
            };
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut out = Outbox::default();
            let mut shutdown = Vec::new();
            for cmd in batch {
                match cmd {
                    Command::Shutdown { reply } => shutdown.push(reply),
                    other => w.handle(other, &mut out).await,
                }
            }
            w.run_ready(&mut out).await;
            w.flush(out).await;
            if !shutdown.is_empty() {
                for r in shutdown {
                    let _ = r.send(());
                }
                break;
            }
        }
    });
    // Drop sessions (and their JS values) before the thread's JS runtime.
    let n = w.sessions.len();
    w.sessions.clear();
    w.shared.live.fetch_sub(n, Ordering::Relaxed);
    ors_ecmascript::release_thread();
}

fn system_vars(shared: &Shared, sid: &str, doc: &Document) -> SystemVars {
    let http = format!(
        "{}/scxml/session/{sid}/basichttp",
        shared.cfg.external_url.trim_end_matches('/')
    );
    SystemVars {
        sessionid: sid.to_string(),
        name: doc.name.as_deref().map(String::from),
        ioprocessors: json!({
            SCXML_PROCESSOR: { "location": format!("#_scxml_{sid}") },
            "scxml": { "location": format!("#_scxml_{sid}") },
            BASIC_HTTP_PROCESSOR: { "location": http },
            "basichttp": { "location": http },
        }),
    }
}

impl Worker {
    fn datamodel(&self, sid: &str, doc: &Arc<Document>) -> Box<dyn ors_scxml::Datamodel> {
        ors_ecmascript::datamodel_for(doc, &system_vars(&self.shared, sid, doc))
    }

    fn new_session(&self, sid: &str, doc: &Arc<Document>) -> Session {
        self.prepare(Session::new(doc.clone(), self.datamodel(sid, doc), sid))
    }

    /// What every session of this runtime gets, new or restored: its limits and the
    /// host's routing hooks.
    fn prepare(&self, s: Session) -> Session {
        let mut s = s.with_limits(SessionLimits {
            max_queue: self.shared.cfg.max_queue,
            ..SessionLimits::default()
        });
        let own = format!(
            "{}/scxml/session/{}/basichttp",
            self.shared.cfg.external_url.trim_end_matches('/'),
            s.id()
        );
        s.set_loopback(Box::new(move |target, event| {
            (target == own).then(|| crate::basichttp::loopback(target, event))
        }));
        // Session ids carry their node: a target on another node (or malformed) can be
        // refused at once; whether a local id exists is known only on delivery.
        let node = self.shared.cfg.node_id.clone();
        s.set_target_check(Box::new(move |target| match SendTarget::parse(target) {
            SendTarget::Session(id) => crate::owner_node(id) == Some(node.as_str()),
            _ => true,
        }));
        s
    }

    fn persist_flag(&self, doc: &Document) -> bool {
        doc.persist.unwrap_or(self.shared.cfg.persistence_default)
    }

    /// Loads a session from the store into this worker (if it is not in memory).
    async fn ensure_loaded(&mut self, sid: &str) -> Result<(), ApiError> {
        if self.sessions.contains_key(sid) {
            return Ok(());
        }
        self.shared.check_owner(sid)?;
        let store = self.shared.store.clone();
        let id = sid.to_string();
        let rec = self
            .shared
            .handle
            .spawn(async move { store.read_session(&id).await })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
        let Some(rec) = rec else {
            return Err(ApiError::NotFound(sid.to_string()));
        };
        if rec.node != self.shared.cfg.node_id {
            return Err(ApiError::WrongNode {
                session: sid.into(),
                node: rec.node,
            });
        }
        let stored: Stored = serde_json::from_slice(&rec.snapshot).map_err(|e| {
            ApiError::Internal(format!("session {sid} has a corrupt snapshot: {e}"))
        })?;
        let doc = self.shared.docs.get(&rec.document).await?;
        let dm = self.datamodel(sid, &doc);
        let session = Session::restore(doc, dm, &stored.snapshot)
            .map_err(|e| ApiError::Internal(format!("session {sid} cannot be restored: {e}")))?;
        let session = self.prepare(session);
        self.sessions.insert(
            sid.to_string(),
            Slot {
                session,
                hash: rec.document,
                version: Some(rec.version),
                persist: stored.persist,
                parent: stored.parent,
                children: stored.children,
                last_active: Instant::now(),
            },
        );
        self.shared.live.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn handle(&mut self, cmd: Command, out: &mut Outbox) {
        match cmd {
            Command::Start {
                sid,
                doc,
                hash,
                params,
                parent,
                reply,
            } => {
                let mut session = self.new_session(&sid, &doc);
                let persist = self.persist_flag(&doc);
                let fx = session.start(now_ms(), &params);
                self.sessions.insert(
                    sid.clone(),
                    Slot {
                        session,
                        hash,
                        version: None,
                        persist,
                        parent,
                        children: BTreeMap::new(),
                        last_active: Instant::now(),
                    },
                );
                self.shared.live.fetch_add(1, Ordering::Relaxed);
                if let Some(life) = self.shared.cfg.max_session_lifetime {
                    out.schedule_puts.push(ScheduleEntry {
                        id: format!("{sid}#lifetime"),
                        session: Some(sid.clone()),
                        due_ms: now_ms() + life.as_millis() as u64,
                        kind: ScheduleKind::TerminateSession,
                        payload: Vec::new(),
                    });
                }
                out.dirty.push(sid.clone());
                // Events the session sent itself while starting run in this batch too.
                self.ready.push_back(sid.clone());
                self.effects(&sid, fx, out).await;
                if let Some(r) = reply {
                    out.acks.push((sid, r));
                }
            }
            Command::Event { sid, event, reply } => match self.ensure_loaded(&sid).await {
                Ok(()) => {
                    let slot = self.sessions.get_mut(&sid).expect("loaded");
                    slot.last_active = Instant::now();
                    match slot.session.push_external(event) {
                        Ok(()) => {
                            self.ready.push_back(sid.clone());
                            if let Some(r) = reply {
                                out.acks.push((sid, r));
                            }
                        }
                        Err(e) => {
                            if let Some(r) = reply {
                                let _ = r.send(Err(ApiError::Overloaded(e.to_string())));
                            }
                        }
                    }
                }
                Err(e) => {
                    let e = match (e, self.shared.finished(&sid)) {
                        (ApiError::NotFound(_), Some(_)) => {
                            ApiError::NotFound(format!("{sid} (it has ended)"))
                        }
                        (e, _) => e,
                    };
                    if let Some(r) = reply {
                        let _ = r.send(Err(e));
                    }
                }
            },
            Command::Query { sid, reply } => {
                let r = match self.ensure_loaded(&sid).await {
                    Ok(()) => {
                        let slot = self.sessions.get_mut(&sid).expect("loaded");
                        let datamodel = slot.session.datamodel_json().unwrap_or(Value::Null);
                        Ok(QueryResult {
                            sessionid: sid.clone(),
                            configuration: slot.session.active_atomic_states(),
                            active_states: slot.session.active_states(),
                            datamodel,
                            done: slot.session.is_done(),
                        })
                    }
                    Err(e) => match self.shared.finished(&sid) {
                        Some(conf) => Ok(QueryResult {
                            sessionid: sid.clone(),
                            configuration: conf,
                            active_states: Vec::new(),
                            datamodel: Value::Null,
                            done: true,
                        }),
                        None => Err(e),
                    },
                };
                let _ = reply.send(r);
            }
            Command::Terminate { sid, reply } => match self.ensure_loaded(&sid).await {
                Ok(()) => {
                    let slot = self.sessions.get_mut(&sid).expect("loaded");
                    // A terminated (or cancelled) session sends its parent nothing more.
                    slot.parent = None;
                    let fx = slot.session.cancel(now_ms());
                    self.effects(&sid, fx, out).await;
                    if let Some(r) = reply {
                        out.acks.push((sid, r));
                    }
                }
                Err(e) => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(e));
                    }
                }
            },
            Command::FireTimer {
                sid,
                timer,
                schedule_id,
            } => {
                match self.ensure_loaded(&sid).await {
                    Ok(()) => {
                        let slot = self.sessions.get_mut(&sid).expect("loaded");
                        let fx = slot.session.fire_timer(timer, now_ms());
                        self.ready.push_back(sid.clone());
                        out.dirty.push(sid.clone());
                        self.effects(&sid, fx, out).await;
                    }
                    Err(e) => {
                        tracing::debug!(session = %sid, error = %e, "timer for a session that is gone")
                    }
                }
                out.schedule_deletes.push(schedule_id);
            }
            Command::Recover { sid } => match self.ensure_loaded(&sid).await {
                Ok(()) => {
                    let slot = self.sessions.get_mut(&sid).expect("loaded");
                    if slot.session.document().send_session_recovered {
                        let _ = slot
                            .session
                            .push_external(Event::external("session.recovered", None));
                        self.ready.push_back(sid.clone());
                    }
                }
                Err(e) => tracing::warn!(session = %sid, error = %e, "could not recover session"),
            },
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    /// Runs sessions with queued events (one macrostep per event) until none is left.
    async fn run_ready(&mut self, out: &mut Outbox) {
        let mut guard = 0;
        while let Some(sid) = self.ready.pop_front() {
            guard += 1;
            if guard > 100_000 {
                tracing::warn!("sessions on this worker keep each other busy; yielding");
                break;
            }
            let Some(slot) = self.sessions.get_mut(&sid) else {
                continue;
            };
            if slot.session.queued() == 0 {
                continue;
            }
            let fx = slot.session.run(now_ms());
            out.dirty.push(sid.clone());
            self.effects(&sid, fx, out).await;
        }
    }

    /// Queues an event for a session of this node: here, or on its worker after the flush.
    async fn deliver(&mut self, from: &str, to: &str, event: Event, out: &mut Outbox) {
        if self.shared.shard(to) != self.me {
            out.remote.push((
                to.to_string(),
                Command::Event {
                    sid: to.to_string(),
                    event,
                    reply: None,
                },
            ));
            return;
        }
        let result = match self.ensure_loaded(to).await {
            Ok(()) => self
                .sessions
                .get_mut(to)
                .expect("loaded")
                .session
                .push_external(event.clone())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => self.ready.push_back(to.to_string()),
            Err(msg) => {
                if let Some(s) = self.sessions.get_mut(from) {
                    let _ = s
                        .session
                        .push_external(Event::error_communication(event.sendid.clone(), &msg));
                    self.ready.push_back(from.to_string());
                }
            }
        }
    }

    async fn effects(&mut self, sid: &str, effects: Vec<Effect>, out: &mut Outbox) {
        for fx in effects {
            match fx {
                Effect::Send {
                    target,
                    type_,
                    event,
                } => {
                    if type_ == BASIC_HTTP_PROCESSOR {
                        match crate::basichttp::local_target(&self.shared, &target) {
                            // A session of this server: deliver now, in send order.
                            Some(to) => {
                                let ev = crate::basichttp::loopback(&target, &event);
                                Box::pin(self.deliver(sid, &to, ev, out)).await;
                            }
                            None => out.http.push((sid.to_string(), target, event)),
                        }
                        continue;
                    }
                    let (to, event) = match self.resolve_target(sid, &target, event) {
                        Ok(x) => x,
                        Err((msg, sendid)) => {
                            if let Some(s) = self.sessions.get_mut(sid) {
                                let _ = s
                                    .session
                                    .push_external(Event::error_communication(sendid, &msg));
                                self.ready.push_back(sid.to_string());
                            }
                            continue;
                        }
                    };
                    Box::pin(self.deliver(sid, &to, event, out)).await;
                }
                Effect::SetTimer { timer, due_ms } => {
                    out.schedule_puts.push(ScheduleEntry {
                        id: format!("{sid}#t{timer}"),
                        session: Some(sid.to_string()),
                        due_ms,
                        kind: ScheduleKind::DelayedSend,
                        payload: timer.to_string().into_bytes(),
                    });
                }
                Effect::CancelTimer { timer } => {
                    out.schedule_deletes.push(format!("{sid}#t{timer}"))
                }
                Effect::Invoke(req) => {
                    if let Err(e) = Box::pin(self.invoke(sid, req, out)).await
                        && let Some(s) = self.sessions.get_mut(sid)
                    {
                        let _ = s.session.push_external(Event::error_communication(
                            None,
                            &format!("invoke failed: {e}"),
                        ));
                        self.ready.push_back(sid.to_string());
                    }
                }
                Effect::CancelInvoke { invokeid } => {
                    let child = self
                        .sessions
                        .get_mut(sid)
                        .and_then(|s| s.children.remove(&invokeid));
                    if let Some(child) = child {
                        let cmd = Command::Terminate {
                            sid: child.clone(),
                            reply: None,
                        };
                        if self.shared.shard(&child) == self.me {
                            Box::pin(self.handle(cmd, out)).await;
                        } else {
                            out.remote.push((child, cmd));
                        }
                    }
                }
                Effect::Log { label, message } => {
                    tracing::info!(target: "scxml", session = %sid, label = %label, "{message}");
                }
                Effect::Response {
                    requestid,
                    positive,
                    resultcode,
                    params,
                } => {
                    let waiting = self
                        .shared
                        .requests
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&requestid);
                    match waiting {
                        Some(tx) => {
                            let _ = tx.send(ResponseData {
                                positive,
                                resultcode,
                                params,
                            });
                        }
                        None => {
                            tracing::debug!(session = %sid, requestid, "response to no waiting request")
                        }
                    }
                }
                Effect::Done { data } => {
                    let Some(slot) = self.sessions.get(sid) else {
                        continue;
                    };
                    let conf = slot.session.active_atomic_states();
                    if let Some((psid, invokeid)) = slot.parent.clone() {
                        let ev = Event::done_invoke(&invokeid, sid, data);
                        Box::pin(self.deliver(sid, &psid, ev, out)).await;
                    }
                    out.finished.push((sid.to_string(), conf));
                }
                Effect::Aborted { reason } => {
                    tracing::warn!(session = %sid, "session aborted: {reason}");
                }
            }
        }
    }

    fn resolve_target(
        &self,
        sid: &str,
        target: &str,
        mut event: Event,
    ) -> Result<(String, Event), (String, Option<String>)> {
        let slot = self.sessions.get(sid);
        let sendid = event.sendid.clone();
        match SendTarget::parse(target) {
            SendTarget::Parent => match slot.and_then(|s| s.parent.clone()) {
                Some((p, invokeid)) => {
                    event.invokeid = Some(invokeid);
                    Ok((p, event))
                }
                None => Err(("the session has no parent".into(), sendid)),
            },
            SendTarget::Session(id) => Ok((id.to_string(), event)),
            SendTarget::Invoked(inv) => match slot.and_then(|s| s.children.get(inv)) {
                Some(c) => Ok((c.clone(), event)),
                None => Err((format!("no invoked session \"{inv}\""), sendid)),
            },
            SendTarget::Other(t) => Err((format!("unknown target \"{t}\""), sendid)),
        }
    }

    async fn invoke(
        &mut self,
        parent: &str,
        req: ors_scxml::InvokeRequest,
        out: &mut Outbox,
    ) -> Result<(), ApiError> {
        let parent_hash = self
            .sessions
            .get(parent)
            .map(|s| s.hash.clone())
            .unwrap_or_default();
        let (hash, doc) = match req.source {
            InvokeSource::Document(d) => {
                let pdoc = self
                    .sessions
                    .get(parent)
                    .map(|s| s.session.document().clone());
                let path = pdoc
                    .and_then(|p| crate::documents::inline_path(&p, &d))
                    .ok_or_else(|| {
                        ApiError::Internal("inline document not found in its parent".into())
                    })?;
                let hash = format!("{parent_hash}#{path}");
                self.shared.docs.remember(&hash, d.clone());
                (hash, d)
            }
            InvokeSource::Uri(u) => self.shared.docs.load(&u).await?,
            InvokeSource::Text(t) => {
                self.shared
                    .docs
                    .compile_text("<invoke content>", None, t)
                    .await?
            }
        };
        let child = self.shared.new_session_id();
        if let Some(s) = self.sessions.get_mut(parent) {
            s.children.insert(req.invokeid.clone(), child.clone());
        }
        let cmd = Command::Start {
            sid: child.clone(),
            doc,
            hash,
            params: req.params,
            parent: Some((parent.to_string(), req.invokeid)),
            reply: None,
        };
        if self.shared.shard(&child) == self.me {
            Box::pin(self.handle(cmd, out)).await;
        } else {
            out.remote.push((child, cmd));
        }
        Ok(())
    }

    fn deactivate_idle(&mut self) {
        let limit = self.shared.cfg.idle_timeout;
        let before = self.sessions.len();
        self.sessions
            .retain(|_, s| !(s.persist && s.version.is_some() && s.last_active.elapsed() > limit));
        let gone = before - self.sessions.len();
        if gone > 0 {
            self.shared.live.fetch_sub(gone, Ordering::Relaxed);
            tracing::debug!(sessions = gone, "deactivated idle sessions");
        }
    }

    /// Makes the batch durable, then acknowledges it and sends what it produced.
    async fn flush(&mut self, mut out: Outbox) {
        let shared = self.shared.clone();
        let fence = shared.fence();
        let finished: std::collections::HashSet<String> =
            out.finished.iter().map(|(s, _)| s.clone()).collect();
        out.dirty.sort();
        out.dirty.dedup();
        // Snapshots of persisted, still-running sessions.
        let mut encoded: Vec<(String, String, Vec<u8>, Option<u64>)> = Vec::new();
        let mut failed: HashMap<String, ApiError> = HashMap::new();
        for sid in &out.dirty {
            if finished.contains(sid) {
                continue;
            }
            let Some(slot) = self.sessions.get_mut(sid) else {
                continue;
            };
            if !slot.persist {
                continue;
            }
            match slot.session.snapshot() {
                Ok(snapshot) => {
                    let stored = Stored {
                        snapshot,
                        parent: slot.parent.clone(),
                        children: slot.children.clone(),
                        persist: true,
                    };
                    let bytes = serde_json::to_vec(&stored).expect("snapshots serialise");
                    encoded.push((sid.clone(), slot.hash.clone(), bytes, slot.version));
                }
                Err(e) => {
                    failed.insert(
                        sid.clone(),
                        ApiError::Internal(format!("snapshot failed: {e}")),
                    );
                }
            }
        }
        let puts = std::mem::take(&mut out.schedule_puts);
        let wakes: Vec<u64> = puts.iter().map(|e| e.due_ms).collect();
        let deletes = std::mem::take(&mut out.schedule_deletes);
        let finished_ids: Vec<(String, bool)> = out
            .finished
            .iter()
            .map(|(s, _)| {
                (
                    s.clone(),
                    self.sessions.get(s).is_some_and(|x| x.version.is_some()),
                )
            })
            .collect();
        let node = shared.cfg.node_id.clone();
        let store = shared.store.clone();
        let write_meta: Vec<(String, Option<u64>)> =
            encoded.iter().map(|e| (e.0.clone(), e.3)).collect();
        let result = shared
            .handle
            .spawn(async move {
                // Timers first: an entry without its snapshot fires as a no-op; a snapshot
                // without its entry would never fire.
                for e in &puts {
                    store.put_schedule(e).await?;
                }
                let writes: Vec<SessionWrite> = encoded
                    .iter()
                    .map(|(id, hash, bytes, version)| SessionWrite {
                        id,
                        node: &node,
                        document: hash,
                        snapshot: bytes,
                        expected_version: *version,
                        fence,
                    })
                    .collect();
                let results = store.write_sessions(&writes).await;
                for (id, stored) in &finished_ids {
                    if *stored {
                        store.delete_session(id, fence).await?;
                    }
                }
                for d in &deletes {
                    store.delete_schedule(d).await?;
                }
                Ok::<_, StoreError>(results)
            })
            .await;
        let results = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let err = ApiError::from(e);
                for (sid, r) in out.acks {
                    let _ = r.send(Err(err.clone()));
                    tracing::error!(session = %sid, error = %err, "store write failed");
                }
                return;
            }
            Err(e) => {
                for (_, r) in out.acks {
                    let _ = r.send(Err(ApiError::Internal(e.to_string())));
                }
                return;
            }
        };
        for ((sid, _), r) in write_meta.iter().zip(results) {
            match r {
                Ok(v) => {
                    if let Some(s) = self.sessions.get_mut(sid) {
                        s.version = Some(v);
                    }
                }
                Err(e) => {
                    // Someone else owns it now (or the store failed): forget our copy.
                    tracing::error!(session = %sid, error = %e, "session write refused; dropping it from memory");
                    if self.sessions.remove(sid).is_some() {
                        self.shared.live.fetch_sub(1, Ordering::Relaxed);
                    }
                    failed.insert(sid.clone(), ApiError::from(e));
                }
            }
        }
        for (sid, conf) in out.finished {
            if self.sessions.remove(&sid).is_some() {
                self.shared.live.fetch_sub(1, Ordering::Relaxed);
            }
            self.shared.finish(&sid, conf);
        }
        for (sid, r) in out.acks {
            let _ = r.send(match failed.get(&sid) {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            });
        }
        for due in wakes {
            let _ = self.shared.wake_scheduler.send(due);
        }
        for (to, cmd) in out.remote {
            let _ = self.shared.send(&to, cmd).await;
        }
        for (from, target, event) in out.http {
            crate::basichttp::send(self.shared.clone(), from, target, event);
        }
    }
}
