//! Making and restoring the sessions of a worker: limits, hooks, datamodels, loading from
//! the store.

use std::sync::Arc;
use std::time::Instant;

use ors_scheduler::Job;
use ors_scxml::event::SendTarget;
use ors_scxml::host::{Hosted, ParentLink};
use ors_scxml::{Document, Session, SessionLimits, SystemVars};
use ors_store::SessionRecord;
use serde_json::Value;

use super::{Batch, Slot, Worker};
use crate::persist::StoredSession;
use crate::{RuntimeError, now_ms, owner_node};

impl Worker {
    /// A session of this runtime, new or restored: its limits and the host's hooks.
    pub(super) fn prepare(&self, s: Session) -> Session {
        let mut s = s.with_limits(SessionLimits {
            max_queue: self.shared.cfg.max_queue,
            ..SessionLimits::default()
        });
        if self.shared.cfg.history > 0 {
            s.record_microsteps();
        }
        let own = self.shared.basichttp_location(s.id());
        s.set_loopback(Box::new(move |target, event| {
            (target == own).then(|| crate::basichttp::loopback(target, event))
        }));
        // Session ids carry their node: a malformed one can be refused at once; whether
        // a session exists (here or on another node) is known only on delivery.
        s.set_target_check(Box::new(move |target| match SendTarget::parse(target) {
            SendTarget::Session(id) => owner_node(id).is_some_and(crate::valid_node_id),
            _ => true,
        }));
        s
    }

    /// A session's ring of recent happenings, when the inspector keeps one.
    fn new_history(&self) -> Option<Box<crate::inspect::History>> {
        let capacity = self.shared.cfg.history;
        (capacity > 0).then(|| Box::new(crate::inspect::History::new(capacity)))
    }

    pub(super) fn datamodel(
        &self,
        sid: &str,
        doc: &Arc<Document>,
    ) -> Box<dyn ors_scxml::Datamodel> {
        let http = self.shared.basichttp_location(sid);
        ors_ecmascript::datamodel_for(doc, &SystemVars::new(sid, doc, Some(&http)))
    }

    /// Reads a session of this worker from the store and restores it.
    pub(super) async fn load(&self, sid: &str) -> Result<Hosted<Slot>, RuntimeError> {
        self.shared.check_owner(sid)?;
        let store = self.shared.store.clone();
        let id = sid.to_string();
        let rec = self
            .store_call(async move { store.read_session(&id).await })
            .await??
            .ok_or_else(|| RuntimeError::NotFound(sid.to_string()))?;
        if rec.node != self.shared.cfg.node_id {
            // Moved away (a drain): requests for it go there from now on.
            self.shared.ownership.learn(sid, &rec.node);
            return Err(RuntimeError::WrongNode {
                session: sid.into(),
                node: rec.node,
            });
        }
        self.restore(rec).await
    }

    /// Restores a session from its stored record.
    async fn restore(&self, rec: SessionRecord) -> Result<Hosted<Slot>, RuntimeError> {
        let sid = rec.id.as_str();
        let mut stored = StoredSession::decode(&rec.snapshot).map_err(|e| {
            RuntimeError::Internal(format!("session {sid} has a corrupt snapshot: {e}"))
        })?;
        if let Some(reason) = stored.quarantined {
            return Err(RuntimeError::Quarantined {
                session: sid.to_string(),
                reason,
            });
        }
        let doc = self.shared.docs.get(&rec.document).await?;
        let dm = self.datamodel(sid, &doc);
        let session = Session::restore(doc, dm, &stored.snapshot).map_err(|e| {
            RuntimeError::Internal(format!("session {sid} cannot be restored: {e}"))
        })?;
        let mut outbox = std::mem::take(&mut stored.outbox);
        if !outbox.is_empty() {
            // Events in flight when a process died (or not yet known to be delivered):
            // their entries deliver them again, due at once; a receiver that has one
            // already does not run it twice.
            let store = self.shared.store.clone();
            let entries: Vec<_> = outbox
                .iter()
                .map(|o| o.entry(sid, crate::now_ms()))
                .collect();
            self.store_call(async move {
                for e in &entries {
                    store.put_schedule(e).await?;
                }
                Ok::<_, ors_store::StoreError>(())
            })
            .await??;
            self.shared.scheduler.wake_at(crate::now_ms());
            outbox.iter_mut().for_each(|o| o.scheduled = true);
        }
        Ok(Hosted {
            session: self.prepare(session),
            parent: stored.parent_link(),
            children: stored.children,
            meta: Slot {
                document: rec.document,
                version: Some(rec.version),
                persist: stored.persist,
                last_active: Instant::now(),
                keys: crate::idempotency::RecentKeys::from_stored(stored.keys),
                outbox,
                history: self.new_history(),
            },
        })
    }

    /// A takeover's load of a session the store listed at `version`: from the hot
    /// standby's copy when it holds exactly that version, else from the store.
    pub(super) async fn ensure_recovered(
        &mut self,
        sid: &str,
        version: u64,
    ) -> Result<(), RuntimeError> {
        if self.host.contains(sid) {
            return Ok(());
        }
        self.shared.check_owner(sid)?;
        let held = self
            .shared
            .standby
            .take(sid, &self.shared.cfg.node_id, version);
        let (hosted, from) = match held {
            Some(rec) => (self.restore(rec).await?, "standby"),
            None => (self.load(sid).await?, "store"),
        };
        metrics::counter!("ors_recovered_sessions_total", "from" => from).increment(1);
        self.host.insert(hosted);
        Ok(())
    }

    /// Makes sure a session of this worker is in memory.
    pub(super) async fn ensure_loaded(&mut self, sid: &str) -> Result<(), RuntimeError> {
        if self.host.contains(sid) {
            return Ok(());
        }
        let hosted = self.load(sid).await?;
        self.host.insert(hosted);
        Ok(())
    }

    pub(super) fn start(
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
            keys: Default::default(),
            outbox: Vec::new(),
            history: self.new_history(),
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
}
