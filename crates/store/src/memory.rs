//! The in-memory backend: for tests, and the reference model other backends are checked
//! against. Cloning gives another handle to the same data (a "second client").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::record::{StoredSchedule, check_fence, check_move, check_write};
use crate::*;

#[derive(Default)]
struct Inner {
    documents: BTreeMap<String, Vec<u8>>,
    sessions: BTreeMap<String, SessionRecord>,
    by_node: BTreeSet<(String, String)>,
    schedules: BTreeMap<String, StoredSchedule>,
    leases: BTreeMap<String, Lease>,
    lease_tokens: BTreeMap<String, Fence>,
    members: BTreeMap<(String, String), Member>,
}

/// A [`SessionStore`] in process memory, using this machine's clock for leases.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    clock: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose lease clock is `clock` (milliseconds), for deterministic tests.
    pub fn with_clock(clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        MemoryStore {
            inner: Arc::default(),
            clock: Some(Arc::new(clock)),
        }
    }

    fn now(&self) -> u64 {
        self.clock.as_ref().map_or_else(now_ms, |c| c())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated (every
        // update is a single insert/remove after its checks), so poison is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// The newest token issued for `node`'s lease (0 if none was).
    fn node_fence(&self, node: &str) -> Fence {
        self.lease_tokens
            .get(&node_lease(node))
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    /// Calls do no I/O.
    fn runtime_independent(&self) -> bool {
        true
    }

    async fn put_document(&self, hash: &str, body: &[u8]) -> Result<()> {
        self.lock()
            .documents
            .entry(hash.to_string())
            .or_insert_with(|| body.to_vec());
        Ok(())
    }

    async fn get_document(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().documents.get(hash).cloned())
    }

    async fn write_session(&self, w: SessionWrite<'_>) -> Result<u64> {
        let mut g = self.lock();
        let cur = g.sessions.get(w.id).map(|r| (r.version, r.fence));
        check_write(cur, g.node_fence(w.node), &w)?;
        let version = cur.map_or(1, |(v, _)| v + 1);
        if let Some(old) = g.sessions.get(w.id).map(|r| r.node.clone()) {
            g.by_node.remove(&(old, w.id.to_string()));
        }
        g.by_node.insert((w.node.to_string(), w.id.to_string()));
        g.sessions.insert(
            w.id.to_string(),
            SessionRecord {
                id: w.id.to_string(),
                node: w.node.to_string(),
                document: w.document.to_string(),
                version,
                fence: w.fence,
                snapshot: w.snapshot.to_vec(),
            },
        );
        Ok(version)
    }

    async fn read_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        Ok(self.lock().sessions.get(id).cloned())
    }

    async fn delete_session(&self, id: &str, fence: Fence) -> Result<()> {
        let mut g = self.lock();
        let Some(r) = g.sessions.get(id) else {
            return Ok(());
        };
        check_fence(id, &r.node, fence, g.node_fence(&r.node), Some(r.fence))?;
        let node = r.node.clone();
        g.sessions.remove(id);
        g.by_node.remove(&(node, id.to_string()));
        g.schedules
            .retain(|_, s| s.entry.session.as_deref() != Some(id));
        Ok(())
    }

    async fn node_sessions(&self, node: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .by_node
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn node_sessions_page(
        &self,
        node: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let from = (node.to_string(), after.unwrap_or("").to_string());
        Ok(self
            .lock()
            .by_node
            .range(from..)
            .take_while(|(n, _)| n == node)
            .filter(|(_, s)| after.is_none_or(|a| s.as_str() > a))
            .take(limit)
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn move_session(&self, id: &str, to_node: &str, fence: Fence) -> Result<()> {
        let mut g = self.lock();
        let r = g
            .sessions
            .get(id)
            .ok_or_else(|| StoreError::NotFound(format!("session {id}")))?;
        check_move(id, &r.node, to_node, fence, g.node_fence(to_node), r.fence)?;
        let old = r.node.clone();
        g.by_node.remove(&(old, id.to_string()));
        g.by_node.insert((to_node.to_string(), id.to_string()));
        let r = g.sessions.get_mut(id).expect("checked above");
        r.node = to_node.to_string();
        r.fence = fence;
        r.version += 1;
        Ok(())
    }

    async fn put_schedule(&self, entry: &ScheduleEntry) -> Result<()> {
        self.lock().schedules.insert(
            entry.id.clone(),
            StoredSchedule {
                entry: entry.clone(),
                claimed_by: None,
                claim_until_ms: 0,
            },
        );
        Ok(())
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<ScheduleEntry>> {
        let g = self.lock();
        let mut v: Vec<&StoredSchedule> = g
            .schedules
            .values()
            .filter(|s| s.entry.due_ms <= now_ms && s.is_claimable(now_ms))
            .collect();
        v.sort_by(|a, b| (a.entry.due_ms, &a.entry.id).cmp(&(b.entry.due_ms, &b.entry.id)));
        Ok(v.into_iter().take(limit).map(|s| s.entry.clone()).collect())
    }

    async fn claim_schedule(
        &self,
        id: &str,
        claimer: &str,
        now_ms: u64,
        claim_ms: u64,
    ) -> Result<bool> {
        let mut g = self.lock();
        let Some(s) = g.schedules.get_mut(id) else {
            return Ok(false);
        };
        if !s.is_claimable(now_ms) {
            return Ok(false);
        }
        s.claimed_by = Some(claimer.to_string());
        s.claim_until_ms = now_ms.saturating_add(claim_ms);
        Ok(true)
    }

    async fn delete_schedule(&self, id: &str) -> Result<()> {
        self.lock().schedules.remove(id);
        Ok(())
    }

    async fn session_schedules(&self, session: &str) -> Result<Vec<ScheduleEntry>> {
        Ok(self
            .lock()
            .schedules
            .values()
            .filter(|s| s.entry.session.as_deref() == Some(session))
            .map(|s| s.entry.clone())
            .collect())
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<Option<Lease>> {
        let now = self.now();
        let mut g = self.lock();
        if g.leases.get(name).is_some_and(|l| l.expires_at_ms > now) {
            return Ok(None);
        }
        let token = g.lease_tokens.get(name).copied().unwrap_or(0) + 1;
        g.lease_tokens.insert(name.to_string(), token);
        let lease = Lease {
            name: name.to_string(),
            holder: holder.to_string(),
            token,
            expires_at_ms: now.saturating_add(ttl_ms),
        };
        g.leases.insert(name.to_string(), lease.clone());
        Ok(Some(lease))
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        let now = self.now();
        let mut g = self.lock();
        match g.leases.get_mut(&lease.name) {
            Some(l)
                if l.token == lease.token && l.holder == lease.holder && l.expires_at_ms > now =>
            {
                l.expires_at_ms = now.saturating_add(ttl_ms);
                Ok(l.clone())
            }
            _ => Err(StoreError::lease_lost(lease)),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let mut g = self.lock();
        if g.leases
            .get(&lease.name)
            .is_some_and(|l| l.token == lease.token)
        {
            g.leases.remove(&lease.name);
        }
        Ok(())
    }

    async fn read_lease(&self, name: &str) -> Result<Option<Lease>> {
        let now = self.now();
        Ok(self
            .lock()
            .leases
            .get(name)
            .filter(|l| l.expires_at_ms > now)
            .cloned())
    }

    async fn announce(&self, member: &Member, ttl_ms: u64) -> Result<()> {
        let now = self.now();
        let m = member.stamped(now, ttl_ms);
        self.lock()
            .members
            .insert((m.node.clone(), m.instance.clone()), m);
        Ok(())
    }

    async fn members(&self) -> Result<Vec<Member>> {
        let now = self.now();
        let mut g = self.lock();
        g.members.retain(|_, m| m.expires_at_ms > now);
        Ok(g.members.values().cloned().collect())
    }

    async fn withdraw(&self, node: &str, instance: &str) -> Result<()> {
        self.lock()
            .members
            .remove(&(node.to_string(), instance.to_string()));
        Ok(())
    }
}
