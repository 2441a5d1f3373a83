//! A worker thread: the async shell around a [`SessionHost`]. It owns its sessions (and
//! their JS state), feeds the host the commands waiting for it, carries out the host's
//! outputs (loading sessions and documents, routing to other workers), persists the batch
//! with [`persist`], and only then acknowledges and releases what the batch produced.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ors_scheduler::Job;
use ors_scxml::event::{BASIC_HTTP_PROCESSOR, SendTarget};
use ors_scxml::host::{CANCELLED, Hosted, Output, ParentLink, PushError, SessionHost};
use ors_scxml::session::QueueError;
use ors_scxml::{Document, Event, InvokeSource, Session, SessionLimits, SystemVars};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::persist::{Plan, SnapshotWrite, StoredSession, persist};
use crate::workers::{Inbox, shard_of};
use crate::{QueryResult, ResponseData, RuntimeError, Shared, now_ms, owner_node};

type Reply<T> = oneshot::Sender<Result<T, RuntimeError>>;

/// Commands in at most one batch; more wait for the next.
const MAX_BATCH: usize = 1024;
/// Macrosteps in one batch before the worker persists what it has and takes new commands
/// (sessions that keep each other busy cannot starve the others).
const MAX_STEPS: usize = 100_000;

pub(crate) enum Command {
    /// Start a session: a new one, or a child invoked by a session of another worker.
    Start {
        sid: String,
        doc: Arc<Document>,
        /// The document's key in the store (a content hash, or `<parent>#<path>` for an
        /// inline child document).
        document: String,
        params: Vec<(String, Value)>,
        parent: Option<ParentLink>,
        reply: Option<Reply<()>>,
    },
    /// An external event from outside; acknowledged once durable.
    Event {
        sid: String,
        event: Event,
        reply: Reply<()>,
    },
    /// An event from session `from` (on another worker) to `to`.
    Deliver {
        from: String,
        to: String,
        event: Event,
    },
    /// A send of `from` could not be delivered: raise `error.communication` in it.
    Undeliverable {
        from: String,
        sendid: Option<String>,
        reason: String,
    },
    Query {
        sid: String,
        reply: Reply<QueryResult>,
    },
    Terminate {
        sid: String,
        reply: Option<Reply<()>>,
    },
    /// A delayed send is due; answered once its effect is durable.
    FireTimer {
        sid: String,
        timer: u64,
        reply: Reply<()>,
    },
    Recover {
        sid: String,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// What the worker keeps per session beside the engine's state.
pub(crate) struct Slot {
    /// The document's key in the store.
    document: String,
    /// Store version; `None` until first written.
    version: Option<u64>,
    persist: bool,
    last_active: Instant,
}

/// What a batch produced that waits for its durable write. Work for elsewhere is tagged
/// with the session that produced it and released only if that session's state is
/// durable (otherwise the session rolls back and will produce it again).
#[derive(Default)]
struct Batch {
    acks: Vec<(String, Reply<()>)>,
    plan: Plan,
    ended: Vec<String>,
    /// `(origin session or None, target session, command)`.
    remote: Vec<(Option<String>, String, Command)>,
    /// `(from, target URL, event)`: BasicHTTP sends to other servers.
    http: Vec<(String, String, Event)>,
}

struct Worker {
    shared: Arc<Shared>,
    me: usize,
    host: SessionHost<Slot>,
    /// The main runtime, where store calls run (see [`Worker::on_main`]).
    main: tokio::runtime::Handle,
    /// Schedule entries whose removal failed; retried with the next batch.
    removals_left: Vec<String>,
}

pub(crate) fn run(shared: Arc<Shared>, me: usize, mut inbox: Inbox, main: tokio::runtime::Handle) {
    ors_ecmascript::configure_thread(shared.cfg.js);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime");
    let workers = shared.workers.count();
    let node = shared.cfg.node_id.clone();
    let ids = shared.clone();
    let host = SessionHost::new(
        Box::new(move |sid| owner_node(sid) == Some(node.as_str()) && shard_of(sid, workers) == me),
        Box::new(move || ids.new_session_id()),
    );
    let mut w = Worker {
        shared,
        me,
        host,
        main,
        removals_left: Vec::new(),
    };
    rt.block_on(async {
        let mut idle_scan = tokio::time::interval(Duration::from_secs(1));
        loop {
            let mut commands = Vec::new();
            // Sessions left ready by a batch that hit MAX_STEPS run on without waiting.
            if !w.host.has_ready() {
                tokio::select! {
                    biased;
                    c = inbox.internal.recv() => commands.extend(c),
                    c = inbox.api.recv() => commands.extend(c),
                    _ = idle_scan.tick() => {
                        w.deactivate_idle();
                        continue;
                    }
                }
            }
            while commands.len() < MAX_BATCH
                && let Ok(c) = inbox.internal.try_recv()
            {
                commands.push(c);
            }
            while commands.len() < MAX_BATCH
                && let Ok(c) = inbox.api.try_recv()
            {
                commands.push(c);
            }
            if w.batch(commands).await {
                break;
            }
        }
    });
    // Drop sessions (and their JS values) before the thread's JS runtime.
    w.host.retain(|_, _| false);
    w.shared.workers.set_live(w.me, 0);
    ors_ecmascript::release_thread();
}

impl Worker {
    /// Runs one batch: commands, macrosteps, the durable write, then acknowledgements.
    /// Returns `true` when the worker was asked to stop.
    async fn batch(&mut self, commands: Vec<Command>) -> bool {
        let mut batch = Batch::default();
        let mut stop = Vec::new();
        for cmd in commands {
            match cmd {
                Command::Shutdown { reply } => stop.push(reply),
                other => self.handle(other, &mut batch).await,
            }
        }
        self.drive(&mut batch).await;
        self.flush(batch).await;
        let stopping = !stop.is_empty();
        for r in stop {
            let _ = r.send(());
        }
        stopping
    }

    fn holds(&self, sid: &str) -> bool {
        owner_node(sid) == Some(self.shared.cfg.node_id.as_str())
            && self.shared.workers.shard(sid) == self.me
    }

    /// A session of this runtime, new or restored: its limits and the host's hooks.
    fn prepare(&self, s: Session) -> Session {
        let mut s = s.with_limits(SessionLimits {
            max_queue: self.shared.cfg.max_queue,
            ..SessionLimits::default()
        });
        let own = self.shared.basichttp_location(s.id());
        s.set_loopback(Box::new(move |target, event| {
            (target == own).then(|| crate::basichttp::loopback(target, event))
        }));
        // Session ids carry their node: a target on another node (or malformed) can be
        // refused at once; whether a local id exists is known only on delivery.
        let node = self.shared.cfg.node_id.clone();
        s.set_target_check(Box::new(move |target| match SendTarget::parse(target) {
            SendTarget::Session(id) => owner_node(id) == Some(node.as_str()),
            _ => true,
        }));
        s
    }

    fn datamodel(&self, sid: &str, doc: &Arc<Document>) -> Box<dyn ors_scxml::Datamodel> {
        let http = self.shared.basichttp_location(sid);
        ors_ecmascript::datamodel_for(doc, &SystemVars::new(sid, doc, Some(&http)))
    }

    /// Runs a store call on the main runtime and waits for it.
    ///
    /// Why there: the store clients (fred's connections, cdrs-tokio's sessions) are
    /// created on the main runtime, whose threads drive their I/O; this worker's
    /// current-thread runtime only runs while the worker is not busy with JS.
    async fn on_main<T: Send + 'static>(
        &self,
        call: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        self.main
            .spawn(call)
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))
    }

    /// Reads a session of this worker from the store and restores it.
    async fn load(&self, sid: &str) -> Result<Hosted<Slot>, RuntimeError> {
        self.shared.check_owner(sid)?;
        let store = self.shared.store.clone();
        let id = sid.to_string();
        let rec = self
            .on_main(async move { store.read_session(&id).await })
            .await??
            .ok_or_else(|| RuntimeError::NotFound(sid.to_string()))?;
        if rec.node != self.shared.cfg.node_id {
            return Err(RuntimeError::WrongNode {
                session: sid.into(),
                node: rec.node,
            });
        }
        let stored = StoredSession::decode(&rec.snapshot).map_err(|e| {
            RuntimeError::Internal(format!("session {sid} has a corrupt snapshot: {e}"))
        })?;
        let doc = self.shared.docs.get(&rec.document).await?;
        let dm = self.datamodel(sid, &doc);
        let session = Session::restore(doc, dm, &stored.snapshot).map_err(|e| {
            RuntimeError::Internal(format!("session {sid} cannot be restored: {e}"))
        })?;
        Ok(Hosted {
            session: self.prepare(session),
            parent: stored.parent_link(),
            children: stored.children,
            meta: Slot {
                document: rec.document,
                version: Some(rec.version),
                persist: stored.persist,
                last_active: Instant::now(),
            },
        })
    }

    /// Makes sure a session of this worker is in memory.
    async fn ensure_loaded(&mut self, sid: &str) -> Result<(), RuntimeError> {
        if self.host.contains(sid) {
            return Ok(());
        }
        let hosted = self.load(sid).await?;
        self.host.insert(hosted);
        Ok(())
    }

    /// `NotFound` for a session that ended recently says so.
    fn explain(&self, sid: &str, e: RuntimeError) -> RuntimeError {
        match e {
            RuntimeError::NotFound(_) if self.shared.finished.get(sid).is_some() => {
                RuntimeError::NotFound(format!("{sid} (it has ended)"))
            }
            e => e,
        }
    }

    fn start(
        &mut self,
        sid: String,
        doc: Arc<Document>,
        document: String,
        params: &[(String, Value)],
        parent: Option<ParentLink>,
        batch: &mut Batch,
    ) {
        let dm = self.datamodel(&sid, &doc);
        let session = self.prepare(Session::new(doc.clone(), dm, sid.clone()));
        let slot = Slot {
            document,
            version: None,
            persist: doc.persist.unwrap_or(self.shared.cfg.persistence_default),
            last_active: Instant::now(),
        };
        if self.host.start(session, params, parent, slot, now_ms())
            && let Some(life) = self.shared.cfg.max_session_lifetime
        {
            let job = Job::Lifetime {
                session: sid.clone(),
            };
            let due = now_ms() + life.as_millis() as u64;
            batch.plan.schedule_puts.push((sid, job.entry(due)));
        }
    }

    async fn handle(&mut self, cmd: Command, batch: &mut Batch) {
        match cmd {
            Command::Start {
                sid,
                doc,
                document,
                params,
                parent,
                reply,
            } => {
                self.start(sid.clone(), doc, document, &params, parent, batch);
                if let Some(r) = reply {
                    batch.acks.push((sid, r));
                }
            }
            Command::Event { sid, event, reply } => {
                if let Err(e) = self.ensure_loaded(&sid).await {
                    let _ = reply.send(Err(self.explain(&sid, e)));
                    return;
                }
                match self.host.push(&sid, event) {
                    Ok(()) => {
                        if let Some(h) = self.host.get_mut(&sid) {
                            h.meta.last_active = Instant::now();
                        }
                        batch.acks.push((sid, reply));
                    }
                    Err(PushError::Queue(QueueError::Ended)) => {
                        let _ = reply
                            .send(Err(RuntimeError::NotFound(format!("{sid} (it has ended)"))));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RuntimeError::Overloaded(e.to_string())));
                    }
                }
            }
            Command::Deliver { from, to, event } => {
                let sendid = event.sendid.clone();
                let result = match self.ensure_loaded(&to).await {
                    Ok(()) => self.host.push(&to, event).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(reason) = result {
                    let back = Command::Undeliverable {
                        from: from.clone(),
                        sendid,
                        reason,
                    };
                    batch.remote.push((None, from, back));
                }
            }
            Command::Undeliverable {
                from,
                sendid,
                reason,
            } => {
                if self.ensure_loaded(&from).await.is_ok() {
                    self.host.report_undeliverable(&from, sendid, &reason);
                }
            }
            Command::Query { sid, reply } => {
                let r = match self.ensure_loaded(&sid).await {
                    Ok(()) => {
                        let h = self.host.get_mut(&sid).expect("loaded");
                        Ok(QueryResult {
                            sessionid: sid.clone(),
                            configuration: h.session.active_atomic_states(),
                            active_states: h.session.active_states(),
                            datamodel: h.session.datamodel_json().unwrap_or(Value::Null),
                            done: h.session.is_done(),
                        })
                    }
                    Err(e) => match self.shared.finished.get(&sid) {
                        Some(conf) => Ok(QueryResult::finished(&sid, conf)),
                        None => Err(e),
                    },
                };
                let _ = reply.send(r);
            }
            Command::Terminate { sid, reply } => match self.ensure_loaded(&sid).await {
                Ok(()) => {
                    self.host.cancel(&sid, now_ms());
                    if let Some(r) = reply {
                        batch.acks.push((sid, r));
                    }
                }
                Err(e) => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(e));
                    }
                }
            },
            Command::FireTimer { sid, timer, reply } => match self.ensure_loaded(&sid).await {
                Ok(()) => {
                    self.host.fire_timer(&sid, timer, now_ms());
                    batch.acks.push((sid, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Recover { sid } => match self.ensure_loaded(&sid).await {
                Ok(()) => {
                    let h = self.host.get(&sid).expect("loaded");
                    if h.session.document().send_session_recovered {
                        let _ = self
                            .host
                            .push(&sid, Event::external("session.recovered", None));
                    }
                }
                Err(e) => tracing::warn!(session = %sid, error = %e, "could not recover session"),
            },
            Command::Shutdown { .. } => unreachable!("handled by the batch"),
        }
    }

    /// Runs the host until it is quiet, carrying out its outputs.
    async fn drive(&mut self, batch: &mut Batch) {
        let mut steps = 0;
        loop {
            steps += self.host.run(now_ms(), MAX_STEPS - steps);
            let mut any = false;
            while let Some(out) = self.host.poll_output() {
                any = true;
                self.carry_out(out, batch).await;
            }
            if steps >= MAX_STEPS {
                tracing::warn!("sessions on this worker keep each other busy; persisting first");
                return;
            }
            if !any && !self.host.has_ready() {
                return;
            }
        }
    }

    async fn carry_out(&mut self, out: Output, batch: &mut Batch) {
        match out {
            Output::Forward { from, to, event } => {
                if owner_node(&to) == Some(self.shared.cfg.node_id.as_str()) {
                    let cmd = Command::Deliver {
                        from: from.clone(),
                        to: to.clone(),
                        event,
                    };
                    batch.remote.push((Some(from), to, cmd));
                } else {
                    let msg = format!("session {to} is not on this node");
                    self.host.report_undeliverable(&from, event.sendid, &msg);
                }
            }
            Output::Load { session } => match self.load(&session).await {
                Ok(h) => self.host.insert(h),
                Err(e) => self.host.abandon(&session, &e.to_string()),
            },
            Output::Send {
                from,
                target,
                type_,
                event,
            } => {
                if type_ != BASIC_HTTP_PROCESSOR {
                    let msg = format!("no {type_} event processor");
                    self.host.report_undeliverable(&from, event.sendid, &msg);
                } else if let Some(to) =
                    crate::basichttp::local_target(&self.shared.cfg.external_url, &target)
                {
                    // A session of this server: delivered directly, in send order.
                    let event = crate::basichttp::loopback(&target, &event);
                    self.host.deliver(&from, &to, event);
                } else {
                    batch.http.push((from, target, event));
                }
            }
            Output::Invoke {
                parent,
                child,
                request,
            } => match self.child_document(&parent, &request.source).await {
                Ok((document, doc)) => {
                    let link = ParentLink {
                        session: parent.clone(),
                        invokeid: request.invokeid,
                    };
                    if self.holds(&child) {
                        self.start(child, doc, document, &request.params, Some(link), batch);
                    } else {
                        let cmd = Command::Start {
                            sid: child.clone(),
                            doc,
                            document,
                            params: request.params,
                            parent: Some(link),
                            reply: None,
                        };
                        batch.remote.push((Some(parent), child, cmd));
                    }
                }
                Err(e) => self.host.invoke_failed(&parent, &child, &e.to_string()),
            },
            Output::CancelElsewhere { session } => {
                if !self.holds(&session) {
                    let cmd = Command::Terminate {
                        sid: session.clone(),
                        reply: None,
                    };
                    batch.remote.push((None, session, cmd));
                } else if self.ensure_loaded(&session).await.is_ok() {
                    self.host.cancel(&session, now_ms());
                }
            }
            Output::SetTimer {
                session,
                timer,
                due_ms,
            } => {
                let job = Job::Timer {
                    session: session.clone(),
                    timer,
                };
                batch.plan.schedule_puts.push((session, job.entry(due_ms)));
            }
            Output::CancelTimer { session, timer } => {
                let id = Job::timer_id(&session, timer);
                batch.plan.schedule_removals.push((session, id));
            }
            Output::Response {
                session,
                requestid,
                positive,
                resultcode,
                params,
            } => {
                let response = ResponseData {
                    positive,
                    resultcode,
                    params,
                };
                if !self.shared.requests.answer(&requestid, response) {
                    tracing::debug!(%session, requestid, "response to no waiting request");
                }
            }
            Output::Log {
                session,
                label,
                message,
            } => tracing::info!(target: "scxml", %session, %label, "{message}"),
            Output::Ended { session, reason } => {
                if let Some(reason) = reason.filter(|r| r != CANCELLED) {
                    tracing::warn!(%session, "session aborted: {reason}");
                }
                batch.ended.push(session);
            }
        }
    }

    /// The document of an invoked child and its key in the store.
    async fn child_document(
        &self,
        parent: &str,
        source: &InvokeSource,
    ) -> Result<(String, Arc<Document>), RuntimeError> {
        match source {
            InvokeSource::Document(d) => {
                let p = self.host.get(parent).ok_or_else(|| {
                    RuntimeError::Internal(format!("the invoking session {parent} is gone"))
                })?;
                let path =
                    crate::documents::inline_path(p.session.document(), d).ok_or_else(|| {
                        RuntimeError::Internal("inline document not found in its parent".into())
                    })?;
                let key = format!("{}#{path}", p.meta.document);
                self.shared.docs.remember(&key, d.clone());
                Ok((key, d.clone()))
            }
            InvokeSource::Uri(u) => self.shared.docs.load(u).await,
            InvokeSource::Text(t) => {
                self.shared
                    .docs
                    .compile_text("<invoke content>", None, t.clone())
                    .await
            }
        }
    }

    fn deactivate_idle(&mut self) {
        let limit = self.shared.cfg.idle_timeout;
        let gone = self.host.retain(|_, h| {
            !(h.meta.persist && h.meta.version.is_some() && h.meta.last_active.elapsed() > limit)
        });
        if gone > 0 {
            tracing::debug!(sessions = gone, "deactivated idle sessions");
        }
        self.shared.workers.set_live(self.me, self.host.len());
    }

    /// Makes the batch durable, then acknowledges it and releases what it produced.
    async fn flush(&mut self, mut batch: Batch) {
        let ended: HashSet<String> = batch.ended.iter().cloned().collect();
        let mut failed: HashMap<String, RuntimeError> = HashMap::new();
        for sid in self.host.take_changed() {
            let Some(h) = self.host.get_mut(&sid) else {
                continue;
            };
            if ended.contains(&sid) {
                if h.meta.version.is_some() {
                    batch.plan.deletions.push(sid);
                }
                continue;
            }
            if !h.meta.persist {
                continue;
            }
            match StoredSession::of(h, true) {
                Ok(bytes) => batch.plan.snapshots.push(SnapshotWrite {
                    document: h.meta.document.clone(),
                    expected: h.meta.version,
                    session: sid,
                    bytes,
                }),
                Err(e) => {
                    let e = RuntimeError::Internal(format!("snapshot failed: {e}"));
                    failed.insert(sid, e);
                }
            }
        }
        batch.plan.retried_removals = std::mem::take(&mut self.removals_left);
        let store = self.shared.store.clone();
        let node = self.shared.cfg.node_id.clone();
        let fence = self.shared.fence();
        let plan = std::mem::take(&mut batch.plan);
        let outcome = match self
            .on_main(async move { persist(&*store, &node, fence, plan).await })
            .await
        {
            Ok(o) => o,
            Err(e) => {
                // The store task died: nothing of this batch is known to be durable.
                for (_, r) in batch.acks {
                    let _ = r.send(Err(e.clone()));
                }
                return;
            }
        };
        for (sid, version) in outcome.versions {
            if let Some(h) = self.host.get_mut(&sid) {
                h.meta.version = Some(version);
            }
        }
        for (sid, e) in outcome.failed {
            // Not durable: forget our copy, so the next use reloads the stored state (or
            // finds that another node owns the session now).
            tracing::error!(session = %sid, error = %e, "session write failed; dropping it from memory");
            self.host.remove(&sid);
            failed.insert(sid, e.into());
        }
        for sid in batch.ended {
            if failed.contains_key(&sid) {
                continue;
            }
            if let Some(h) = self.host.remove(&sid) {
                self.shared
                    .finished
                    .record(&sid, h.session.active_atomic_states());
            }
        }
        self.removals_left = outcome.removals_left;
        for (sid, r) in batch.acks {
            let _ = r.send(match failed.get(&sid) {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            });
        }
        for due in outcome.due {
            self.shared.scheduler.wake_at(due);
        }
        for (origin, to, cmd) in batch.remote {
            if origin.is_none_or(|o| !failed.contains_key(&o)) {
                self.shared.workers.send_internal(&to, cmd);
            }
        }
        for (from, target, event) in batch.http {
            if !failed.contains_key(&from) {
                let shared = self.shared.clone();
                self.main.spawn(async move {
                    if let Err(reason) = crate::basichttp::post(&shared.http, &target, &event).await
                    {
                        tracing::info!(session = %from, "{reason}");
                        let cmd = Command::Undeliverable {
                            from: from.clone(),
                            sendid: event.sendid,
                            reason,
                        };
                        shared.workers.send_internal(&from, cmd);
                    }
                });
            }
        }
        self.shared.workers.set_live(self.me, self.host.len());
    }
}
