//! A worker thread: the async shell around a [`SessionHost`]. It owns its sessions (and
//! their JS state), feeds the host the commands waiting for it (`commands.rs`), carries
//! out the host's outputs (`outputs.rs`: loading sessions and documents, routing to other
//! workers), persists the batch with [`persist`], and only then acknowledges and releases
//! what the batch produced. `sessions.rs` makes and restores sessions.

mod commands;
mod outputs;
mod sessions;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ors_scxml::host::{ParentLink, SessionHost};
use ors_scxml::{Document, Event};
use ors_store::StoreError;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::persist::{Plan, SnapshotWrite, StoredSession, persist};
use crate::standby::Change;
use crate::workers::{Inbox, shard_of};
use crate::{QueryResult, RuntimeError, Shared, now_ms};

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
        /// The client's `Idempotency-Key`: an event whose key the session holds is not
        /// run again.
        key: Option<String>,
        reply: Reply<()>,
        /// The caller's span: the parent of the event's macrostep span.
        span: tracing::Span,
    },
    /// An event from session `from` (on another worker) to `to`, with its outbox key.
    Deliver {
        from: String,
        to: String,
        event: Event,
        key: String,
    },
    /// The event `key` of `from`'s outbox reached its receiver durably.
    Delivered {
        from: String,
        key: String,
    },
    /// The event `key` of `from`'s outbox could not be delivered.
    DeliveryFailed {
        from: String,
        key: String,
        failure: crate::outbox::Failure,
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
    Inspect {
        sid: String,
        reply: Reply<crate::Inspection>,
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
        /// Its version in the store when the takeover listed it: a hot standby's copy of
        /// exactly that version is used instead of a read.
        version: u64,
    },
    /// This process stepped down: forget every session (the new primary owns them).
    Evict,
    /// These sessions (all of this worker) are moving to another node: drop them from
    /// memory once this batch is durable. Each is answered `Ok` (its record is its whole
    /// state now) or with why it stays (`moves.rs`).
    Release {
        sids: Vec<String>,
        reply: oneshot::Sender<Vec<(String, Result<(), String>)>>,
    },
    /// This node adopted the session (its record was moved here): load it, so its
    /// outbox is delivered and it is ready for its events.
    Adopt {
        sid: String,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

impl Command {
    /// What the sender of outbox event `key` hears of its delivery.
    pub(crate) fn delivery(
        from: String,
        key: String,
        result: Result<(), crate::outbox::Failure>,
    ) -> Command {
        match result {
            Ok(()) => Command::Delivered { from, key },
            Err(failure) => Command::DeliveryFailed { from, key, failure },
        }
    }
}

/// What the worker keeps per session beside the engine's state.
pub(crate) struct Slot {
    /// The document's key in the store.
    document: String,
    /// Store version; `None` until first written.
    version: Option<u64>,
    persist: bool,
    last_active: Instant,
    /// Idempotency keys of the events it ran recently.
    keys: crate::idempotency::RecentKeys,
    /// Events it sent that are not known to be delivered (see `outbox.rs`).
    outbox: Vec<crate::outbox::Outgoing>,
    /// What it did lately, for the inspector (`None`: the ring is off).
    history: Option<Box<crate::inspect::History>>,
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
    /// `(sender, event)`: SCXML sends to sessions of other nodes.
    other_nodes: Vec<(String, crate::outbox::Outgoing)>,
    /// `(session, span)`: a span per event from outside, open until the batch is durable
    /// (its store write and its BasicHTTP sends are children of it).
    spans: Vec<(String, tracing::Span)>,
}

/// The id of the span of a batch's event for `sid`, if it had one (`None` makes a child
/// span a root, as a worker thread has no current span anyway).
fn span_of(spans: &[(String, tracing::Span)], sid: &str) -> Option<tracing::Id> {
    spans
        .iter()
        .find(|(s, _)| s == sid)
        .and_then(|(_, span)| span.id())
}

struct Worker {
    shared: Arc<Shared>,
    me: usize,
    host: SessionHost<Slot>,
    /// The main runtime, where network stores' calls run (see [`Worker::store_call`]).
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
    let here = shared.clone();
    let ids = shared.clone();
    let mut host = SessionHost::new(
        Box::new(move |sid| here.ownership.is_here(sid) && shard_of(sid, workers) == me),
        Box::new(move || ids.new_session_id()),
    );
    if let Some(file) = shared.breadcrumbs.clone() {
        let crumb = crate::quarantine::Breadcrumb::new(file, me);
        host.set_probe(Box::new(move |sid| crumb.set(sid)));
    }
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
        let mut evict = false;
        let mut releases = Vec::new();
        for cmd in commands {
            match cmd {
                Command::Shutdown { reply } => stop.push(reply),
                Command::Evict => evict = true,
                Command::Release { sids, reply } => releases.push((sids, reply)),
                other => self.handle(other, &mut batch).await,
            }
        }
        self.drive(&mut batch).await;
        self.flush(batch).await;
        // After the flush: what a released session did in this batch is in its record.
        for (sids, reply) in releases {
            let answers = sids
                .into_iter()
                .map(|sid| {
                    let r = self.release(&sid);
                    (sid, r)
                })
                .collect();
            self.shared.workers.set_live(self.me, self.host.len());
            let _ = reply.send(answers);
        }
        if evict {
            // After the flush: this batch's replies depend on its writes, which carry the
            // old fencing token and are refused if a successor wrote since.
            let n = self.host.retain(|_, _| false);
            self.shared.workers.set_live(self.me, 0);
            tracing::info!(
                sessions = n,
                "stepped down: dropped every session from memory"
            );
        }
        let stopping = !stop.is_empty();
        for r in stop {
            let _ = r.send(());
        }
        stopping
    }

    /// Drops a session that is moving away from memory. A session in an invoke tree
    /// stays: its parent or children would lose their links to it.
    fn release(&mut self, sid: &str) -> Result<(), String> {
        if let Some(h) = self.host.get(sid) {
            if h.parent.is_some() || !h.children.is_empty() {
                return Err("it is part of an invoke tree (a parent or a child)".into());
            }
            self.host.remove(sid);
        }
        Ok(())
    }

    fn holds(&self, sid: &str) -> bool {
        self.shared.ownership.is_here(sid) && self.shared.workers.shard(sid) == self.me
    }

    /// Runs a store call and waits for it: on the main runtime, unless the store is
    /// [`SessionStore::runtime_independent`](ors_store::SessionStore::runtime_independent).
    ///
    /// Why the main runtime: network stores' clients (fred's connections, cdrs-tokio's
    /// sessions) are created there, and its threads drive their I/O; this worker's
    /// current-thread runtime only runs while the worker is not busy with JS. A store that
    /// only hands work to threads of its own (the embedded store) is awaited here, which
    /// saves two thread crossings per batch (`docs/benchmarks.md`: +20 % durable events/s).
    async fn store_call<T: Send + 'static>(
        &self,
        call: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        if self.shared.store.runtime_independent() {
            return Ok(call.await);
        }
        self.main
            .spawn(call)
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))
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

    fn deactivate_idle(&mut self) {
        let limit = self.shared.cfg.idle_timeout;
        // A session with events in flight stays: it hears of their delivery.
        let gone = self.host.retain(|_, h| {
            !(h.meta.persist
                && h.meta.version.is_some()
                && h.meta.outbox.is_empty()
                && h.meta.last_active.elapsed() > limit)
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
        let changed = self.host.take_changed();
        let watched: Vec<String> = if self.shared.watchers.any() {
            changed.clone()
        } else {
            Vec::new()
        };
        for sid in changed {
            let Some(h) = self.host.get_mut(&sid) else {
                continue;
            };
            if let Some(history) = &mut h.meta.history {
                let at = now_ms();
                let errors = h.session.take_errors();
                for happened in ors_scxml::interleave(h.session.take_microsteps(), errors) {
                    history.push(at, happened.into());
                }
            }
            if ended.contains(&sid) {
                // Its outbox goes with its record: what is in flight gets entries, which
                // a session needs before its record is deleted like before a snapshot.
                for o in h.meta.outbox.iter().filter(|o| !o.scheduled) {
                    let entry = o.retry_entry(&sid);
                    batch.plan.schedule_puts.push((sid.clone(), entry));
                }
                if h.meta.version.is_some() {
                    batch.plan.deletions.push(sid);
                }
                continue;
            }
            if !h.meta.persist {
                continue;
            }
            let keys = h.meta.keys.to_stored();
            let outbox = h.meta.outbox.clone();
            match StoredSession::of(h, keys, outbox) {
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
        // What a hot standby following this primary gets, once it is durable.
        let followed = self.shared.feed.followed(now_ms()).then(|| {
            let puts: Vec<_> = plan
                .snapshots
                .iter()
                .map(|w| (w.session.clone(), w.document.clone(), w.bytes.clone()))
                .collect();
            (puts, plan.deletions.clone())
        });
        // One write for the batch: a child of its first event's span, following the others.
        let spans = std::mem::take(&mut batch.spans);
        let first = spans.first().and_then(|(_, s)| s.id());
        let write_span =
            tracing::debug_span!(parent: first, "store.write", sessions = plan.snapshots.len());
        for (_, s) in spans.iter().skip(1) {
            write_span.follows_from(s);
        }
        let outcome = match self
            .store_call(
                async move { persist(&*store, &node, fence, plan).await }.instrument(write_span),
            )
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
        if let Some((puts, deletions)) = followed {
            let mut changes = Vec::with_capacity(puts.len() + deletions.len());
            let versions: HashMap<&str, u64> = outcome
                .versions
                .iter()
                .map(|(sid, v)| (sid.as_str(), *v))
                .collect();
            for (sid, document, snapshot) in puts {
                if let Some(&version) = versions.get(sid.as_str()) {
                    changes.push(Change::Put {
                        sid,
                        version,
                        document,
                        snapshot,
                    });
                }
            }
            for sid in deletions {
                if !outcome.failed.contains_key(&sid) {
                    changes.push(Change::Gone { sid });
                }
            }
            self.shared.feed.push(changes, now_ms());
        }
        for (sid, version) in outcome.versions {
            if let Some(h) = self.host.get_mut(&sid) {
                h.meta.version = Some(version);
            }
        }
        // A sender's state is durable; its events are not delivered, nothing is
        // acknowledged yet.
        crate::outbox::crash_at("sender-written", || {
            !batch.other_nodes.is_empty()
                || batch
                    .remote
                    .iter()
                    .any(|(_, _, c)| matches!(c, Command::Deliver { .. }))
        });

        if outcome
            .failed
            .values()
            .any(|e| matches!(e, StoreError::StaleFence { key, .. } if key.starts_with("node ")))
        {
            // The node's lease has a newer holder: this process is deposed. Step down now
            // rather than at the next renewal.
            self.shared.deposed(fence);
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
            self.shared.ownership.forget(&sid);
        }
        self.removals_left = outcome.removals_left;
        if !self.shared.holds_lease() && !batch.acks.is_empty() {
            let e = RuntimeError::NotPrimary {
                primary: self.shared.primary_url(),
            };
            tracing::error!(
                acks = batch.acks.len(),
                "the lease may have run out during this batch; no acknowledgement is given"
            );
            for (_, r) in batch.acks.drain(..) {
                let _ = r.send(Err(e.clone()));
            }
        }
        // Before the answers: a client that starts another session once its start is
        // answered must find this one counted against the session limit.
        self.shared.workers.set_live(self.me, self.host.len());
        for (sid, r) in batch.acks {
            let _ = r.send(match failed.get(&sid) {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            });
        }
        for due in outcome.due {
            self.shared.scheduler.wake_at(due);
        }
        // A receiver's state (with the event's key) is durable; its sender does not know
        // yet.
        crate::outbox::crash_at("receiver-written", || {
            batch
                .remote
                .iter()
                .any(|(_, _, c)| matches!(c, Command::Delivered { .. }))
        });
        for (origin, to, cmd) in batch.remote {
            match (origin.and_then(|o| failed.get(&o).map(|e| (o, e))), cmd) {
                (None, cmd) => self.shared.workers.send_internal(&to, cmd),
                // The receiver's write failed: its sender must not wait for word that
                // will not come; it keeps the event and has it delivered again.
                (Some((receiver, e)), Command::Delivered { from, key }) => {
                    let failure = crate::outbox::Failure::Transient(format!(
                        "session {receiver} could not store the event: {e}"
                    ));
                    let cmd = Command::DeliveryFailed { from, key, failure };
                    self.shared.workers.send_internal(&to, cmd);
                }
                (Some(_), _) => {}
            }
        }
        for (from, outgoing) in batch.other_nodes {
            if !failed.contains_key(&from) {
                let parent = span_of(&spans, &from);
                let span = tracing::debug_span!(parent: parent, "node.deliver", "session.id" = %from, "target.session" = %outgoing.to, "otel.kind" = "client");
                let deliver = crate::nodes::deliver(self.shared.clone(), from, outgoing);
                self.main.spawn(deliver.instrument(span));
            }
        }
        for (from, target, event) in batch.http {
            if !failed.contains_key(&from) {
                let shared = self.shared.clone();
                let parent = span_of(&spans, &from);
                let span = tracing::debug_span!(parent: parent, "basichttp.send", "session.id" = %from, "url.full" = %target, "otel.kind" = "client");
                self.main.spawn(async move {
                    let sent =
                        crate::basichttp::post(&shared.http, &shared.cfg.outbound, &target, &event);
                    if let Err(reason) = sent.instrument(span).await {
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
        if !watched.is_empty() {
            self.shared
                .watchers
                .changed(watched.iter().map(String::as_str));
        }
    }
}
