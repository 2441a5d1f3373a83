//! What a worker writes for a batch, and in which order: the only code that decides
//! which store writes an acknowledgement depends on.
//!
//! A session's acknowledgements depend on its own writes only: the schedule entries its
//! batch created (timers, lifetime), then its snapshot (or, once it ended, the deletion of
//! its record). Removing schedule entries (cancelled timers) is housekeeping: a leftover
//! entry fires as a no-op, so a failed removal is retried later and fails nobody.

use std::collections::{BTreeMap, HashMap, HashSet};

use ors_scxml::Snapshot;
use ors_scxml::host::{Hosted, ParentLink};
use ors_store::{Fence, ScheduleEntry, SessionStore, SessionWrite, StoreError};
use serde::{Deserialize, Serialize};

use crate::outbox::Outgoing;

/// What is stored for a session: the engine snapshot plus its place in the session tree.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredSession {
    pub snapshot: Snapshot,
    /// `(parent session, invokeid)`.
    pub parent: Option<(String, String)>,
    /// `invokeid` -> child session.
    pub children: BTreeMap<String, String>,
    pub persist: bool,
    /// Crashes of the process while this session's code ran, since its last completed
    /// macrostep (see `quarantine.rs`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crashes: u32,
    /// Idempotency keys of the events it ran recently, with when (see `idempotency.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<(String, u64)>,
    /// Why the session is quarantined: it is never run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
    /// Events it sent that are not known to be delivered (see `outbox.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Outgoing>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl StoredSession {
    /// The bytes of a session (only persisted sessions are stored, so `persist` is true).
    pub fn of<M>(
        h: &mut Hosted<M>,
        keys: Vec<(String, u64)>,
        outbox: Vec<Outgoing>,
    ) -> Result<Vec<u8>, String> {
        let snapshot = h.session.snapshot().map_err(|e| e.to_string())?;
        let stored = StoredSession {
            snapshot,
            parent: h.parent.clone().map(|p| (p.session, p.invokeid)),
            children: h.children.clone(),
            persist: true,
            // Written after a completed macrostep: any run of crashes is over.
            crashes: 0,
            keys,
            quarantined: None,
            outbox,
        };
        stored.encode()
    }

    /// The stored bytes.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|e| e.to_string())
    }

    pub fn decode(bytes: &[u8]) -> Result<StoredSession, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub fn parent_link(&self) -> Option<ParentLink> {
        self.parent
            .clone()
            .map(|(session, invokeid)| ParentLink { session, invokeid })
    }
}

/// A snapshot to write.
pub(crate) struct SnapshotWrite {
    pub session: String,
    pub document: String,
    pub bytes: Vec<u8>,
    /// The version it replaces (`None`: a new session).
    pub expected: Option<u64>,
}

/// The store work of one batch.
#[derive(Default)]
pub(crate) struct Plan {
    /// `(session, entry)`: entries the session needs before its snapshot is written (or
    /// its record deleted: an ended session's undelivered events, see `outbox.rs`).
    pub schedule_puts: Vec<(String, ScheduleEntry)>,
    pub snapshots: Vec<SnapshotWrite>,
    /// Ended sessions whose records exist.
    pub deletions: Vec<String>,
    /// `(session, entry id)`: entries to remove once the session's state is durable.
    pub schedule_removals: Vec<(String, String)>,
    /// Removals that failed in an earlier batch.
    pub retried_removals: Vec<String>,
}

/// What came of a [`Plan`].
#[derive(Default)]
pub(crate) struct Outcome {
    /// Sessions whose state is not durable, with why.
    pub failed: HashMap<String, StoreError>,
    /// New store versions of the snapshots written.
    pub versions: Vec<(String, u64)>,
    /// Due times of the entries put (to wake the scheduler).
    pub due: Vec<u64>,
    /// Entry removals to retry later.
    pub removals_left: Vec<String>,
}

/// Carries out a plan. Timers first: an entry without its snapshot fires as a no-op; a
/// snapshot without its entry would never fire.
pub(crate) async fn persist(
    store: &dyn SessionStore,
    node: &str,
    fence: Fence,
    plan: Plan,
) -> Outcome {
    let mut out = Outcome::default();
    for (sid, entry) in &plan.schedule_puts {
        if out.failed.contains_key(sid) {
            continue;
        }
        match store.put_schedule(entry).await {
            Ok(()) => out.due.push(entry.due_ms),
            Err(e) => {
                out.failed.insert(sid.clone(), e);
            }
        }
    }
    let snapshots: Vec<&SnapshotWrite> = plan
        .snapshots
        .iter()
        .filter(|w| !out.failed.contains_key(&w.session))
        .collect();
    let writes: Vec<SessionWrite> = snapshots
        .iter()
        .map(|w| SessionWrite {
            id: &w.session,
            node,
            document: &w.document,
            snapshot: &w.bytes,
            expected_version: w.expected,
            fence,
        })
        .collect();
    let results = store.write_sessions(&writes).await;
    for (w, r) in snapshots.iter().zip(results) {
        match r {
            Ok(v) => out.versions.push((w.session.clone(), v)),
            Err(e) => {
                out.failed.insert(w.session.clone(), e);
            }
        }
    }
    for sid in &plan.deletions {
        if out.failed.contains_key(sid) {
            continue;
        }
        if let Err(e) = store.delete_session(sid, fence).await {
            out.failed.insert(sid.clone(), e);
        }
    }
    // Housekeeping, only for sessions whose new state is durable: a session that is
    // rolled back may still need the timer its lost step cancelled.
    let durable: HashSet<&str> = plan
        .schedule_removals
        .iter()
        .map(|(sid, _)| sid.as_str())
        .filter(|sid| !out.failed.contains_key(*sid))
        .collect();
    let removals = plan
        .schedule_removals
        .iter()
        .filter(|(sid, _)| durable.contains(sid.as_str()))
        .map(|(_, id)| id)
        .chain(&plan.retried_removals);
    for id in removals {
        if let Err(e) = store.delete_schedule(id).await {
            tracing::warn!(entry = %id, error = %e, "cannot remove a schedule entry; will retry");
            out.removals_left.push(id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use ors_store::{Lease, MemoryStore, Result, ScheduleKind, SessionRecord};

    /// A store that refuses what its flags say, and otherwise is a `MemoryStore`.
    #[derive(Default)]
    struct Flaky {
        inner: MemoryStore,
        refuse_schedule_puts: bool,
        refuse_schedule_deletes: bool,
        refuse_session: Option<String>,
    }

    fn unavailable() -> StoreError {
        StoreError::Unavailable("test".into())
    }

    #[async_trait]
    impl SessionStore for Flaky {
        async fn put_document(&self, h: &str, b: &[u8]) -> Result<()> {
            self.inner.put_document(h, b).await
        }
        async fn get_document(&self, h: &str) -> Result<Option<Vec<u8>>> {
            self.inner.get_document(h).await
        }
        async fn write_session(&self, w: SessionWrite<'_>) -> Result<u64> {
            if self.refuse_session.as_deref() == Some(w.id) {
                return Err(unavailable());
            }
            self.inner.write_session(w).await
        }
        async fn read_session(&self, id: &str) -> Result<Option<SessionRecord>> {
            self.inner.read_session(id).await
        }
        async fn delete_session(&self, id: &str, f: Fence) -> Result<()> {
            self.inner.delete_session(id, f).await
        }
        async fn node_sessions(&self, n: &str) -> Result<Vec<String>> {
            self.inner.node_sessions(n).await
        }
        async fn move_session(&self, id: &str, to: &str, f: Fence) -> Result<()> {
            self.inner.move_session(id, to, f).await
        }
        async fn put_schedule(&self, e: &ScheduleEntry) -> Result<()> {
            if self.refuse_schedule_puts {
                return Err(unavailable());
            }
            self.inner.put_schedule(e).await
        }
        async fn due_schedules(&self, now: u64, limit: usize) -> Result<Vec<ScheduleEntry>> {
            self.inner.due_schedules(now, limit).await
        }
        async fn claim_schedule(&self, id: &str, c: &str, now: u64, ms: u64) -> Result<bool> {
            self.inner.claim_schedule(id, c, now, ms).await
        }
        async fn delete_schedule(&self, id: &str) -> Result<()> {
            if self.refuse_schedule_deletes {
                return Err(unavailable());
            }
            self.inner.delete_schedule(id).await
        }
        async fn session_schedules(&self, s: &str) -> Result<Vec<ScheduleEntry>> {
            self.inner.session_schedules(s).await
        }
        async fn acquire_lease(&self, n: &str, h: &str, ttl: u64) -> Result<Option<Lease>> {
            self.inner.acquire_lease(n, h, ttl).await
        }
        async fn renew_lease(&self, l: &Lease, ttl: u64) -> Result<Lease> {
            self.inner.renew_lease(l, ttl).await
        }
        async fn release_lease(&self, l: &Lease) -> Result<()> {
            self.inner.release_lease(l).await
        }
        async fn read_lease(&self, n: &str) -> Result<Option<Lease>> {
            self.inner.read_lease(n).await
        }
        async fn announce(&self, m: &ors_store::Member, ttl: u64) -> Result<()> {
            self.inner.announce(m, ttl).await
        }
        async fn members(&self) -> Result<Vec<ors_store::Member>> {
            self.inner.members().await
        }
        async fn withdraw(&self, node: &str, instance: &str) -> Result<()> {
            self.inner.withdraw(node, instance).await
        }
    }

    fn entry(id: &str, session: &str) -> ScheduleEntry {
        ScheduleEntry {
            id: id.into(),
            session: Some(session.into()),
            due_ms: 1,
            kind: ScheduleKind::DelayedSend,
            payload: b"1".to_vec(),
        }
    }

    fn snapshot(session: &str) -> SnapshotWrite {
        SnapshotWrite {
            session: session.into(),
            document: "doc".into(),
            bytes: b"{}".to_vec(),
            expected: None,
        }
    }

    #[tokio::test]
    async fn a_failed_removal_fails_nobody_and_is_kept_for_later() {
        let store = Flaky {
            refuse_schedule_deletes: true,
            ..Flaky::default()
        };
        let plan = Plan {
            snapshots: vec![snapshot("n-a")],
            schedule_removals: vec![("n-a".into(), "n-a#t1".into())],
            retried_removals: vec!["n-old#t9".into()],
            ..Plan::default()
        };
        let out = persist(&store, "n", 1, plan).await;
        assert!(out.failed.is_empty());
        assert_eq!(out.versions, [("n-a".to_string(), 1)]);
        assert_eq!(out.removals_left, ["n-a#t1", "n-old#t9"]);
    }

    #[tokio::test]
    async fn one_sessions_failure_is_its_own() {
        let store = Flaky {
            refuse_session: Some("n-b".into()),
            ..Flaky::default()
        };
        let plan = Plan {
            snapshots: vec![snapshot("n-a"), snapshot("n-b")],
            schedule_removals: vec![
                ("n-a".into(), "n-a#t1".into()),
                ("n-b".into(), "n-b#t1".into()),
            ],
            ..Plan::default()
        };
        store
            .inner
            .put_schedule(&entry("n-a#t1", "n-a"))
            .await
            .unwrap();
        store
            .inner
            .put_schedule(&entry("n-b#t1", "n-b"))
            .await
            .unwrap();
        let out = persist(&store, "n", 1, plan).await;
        assert_eq!(out.failed.keys().collect::<Vec<_>>(), ["n-b"]);
        assert_eq!(out.versions, [("n-a".to_string(), 1)]);
        // n-b rolls back to a state that may still need its timer: the entry stays.
        assert!(
            store
                .inner
                .session_schedules("n-a")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.inner.session_schedules("n-b").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_session_whose_timer_cannot_be_stored_is_not_written() {
        let store = Flaky {
            refuse_schedule_puts: true,
            ..Flaky::default()
        };
        let plan = Plan {
            schedule_puts: vec![("n-a".into(), entry("n-a#t1", "n-a"))],
            snapshots: vec![snapshot("n-a"), snapshot("n-c")],
            ..Plan::default()
        };
        let out = persist(&store, "n", 1, plan).await;
        assert!(matches!(
            out.failed.get("n-a"),
            Some(StoreError::Unavailable(_))
        ));
        assert!(store.inner.read_session("n-a").await.unwrap().is_none());
        assert_eq!(out.versions, [("n-c".to_string(), 1)]);
    }

    #[tokio::test]
    async fn an_ending_session_whose_undelivered_events_cannot_be_kept_is_not_deleted() {
        let store = Flaky {
            refuse_schedule_puts: true,
            ..Flaky::default()
        };
        store
            .inner
            .write_session(SessionWrite {
                id: "n-ended",
                node: "n",
                document: "doc",
                snapshot: b"{}",
                expected_version: None,
                fence: 1,
            })
            .await
            .unwrap();
        let plan = Plan {
            deletions: vec!["n-ended".into()],
            schedule_puts: vec![("n-ended".into(), entry("n-ended#o1", "n-ended"))],
            ..Plan::default()
        };
        let out = persist(&store, "n", 1, plan).await;
        // Deleting the record would forget the event: the session rolls back instead.
        assert!(out.failed.contains_key("n-ended"));
        assert!(store.inner.read_session("n-ended").await.unwrap().is_some());
    }
}
