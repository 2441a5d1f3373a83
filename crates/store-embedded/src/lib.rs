#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use ors_store::record::{self, StoredSchedule, check_fence, check_move, check_write};
use ors_store::{
    Fence, Lease, Member, Result, ScheduleEntry, SessionRecord, SessionStore, SessionWrite,
    StoreError, node_lease, now_ms,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const BY_NODE: TableDefinition<(&str, &str), ()> = TableDefinition::new("sessions_by_node");
const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
const DUE: TableDefinition<(u64, &str), ()> = TableDefinition::new("schedules_by_due");
const BY_SESSION: TableDefinition<(&str, &str), ()> = TableDefinition::new("schedules_by_session");
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
const LEASE_TOKENS: TableDefinition<&str, u64> = TableDefinition::new("lease_tokens");
const MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("members");

/// A [`SessionStore`] in one redb file: crash-safe (every call returns after its fsync),
/// for one process at a time. Session writes from concurrent callers share commits: see
/// `Committer` in the source.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    committer: Arc<Committer>,
}

/// Group commit of session writes across callers. One thread owns the commits of
/// `write_sessions`: it takes every batch queued while the previous commit was syncing,
/// applies them in arrival order in one transaction (each write checked on its own
/// against the state the ones before it left), commits once, and answers every caller.
/// Under load a commit carries the batches of every worker instead of one, so the fsync
/// and the B-tree pages it rewrites are paid once for all of them; alone, a batch is
/// committed at once, as before.
struct Committer {
    /// `None` only while dropping (closing it ends the thread).
    queue: Option<std::sync::mpsc::Sender<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Batch {
    writes: Vec<OwnedWrite>,
    reply: tokio::sync::oneshot::Sender<Vec<Result<u64>>>,
}

impl Committer {
    fn start(db: Arc<Database>) -> Committer {
        let (tx, rx) = std::sync::mpsc::channel::<Batch>();
        let thread = std::thread::Builder::new()
            .name("ors-embedded-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batches = vec![first];
                    batches.extend(rx.try_iter());
                    commit_batches(&db, batches);
                }
            })
            .expect("spawning the commit thread");
        Committer {
            queue: Some(tx),
            thread: Some(thread),
        }
    }

    async fn submit(&self, writes: Vec<OwnedWrite>) -> Vec<Result<u64>> {
        let n = writes.len();
        let gone = || {
            let e = StoreError::Unavailable("the embedded store's commit thread stopped".into());
            vec![Err(e); n]
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = self
            .queue
            .as_ref()
            .is_some_and(|q| q.send(Batch { writes, reply }).is_ok());
        if !sent {
            return gone();
        }
        answer.await.unwrap_or_else(|_| gone())
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has answered what it holds; waiting
        // for it releases the database file before the store is gone (so it can be opened
        // again at once).
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One transaction for every queued batch; each caller gets its own results, or the
/// commit's error for each of its writes.
fn commit_batches(db: &Database, batches: Vec<Batch>) {
    let applied = (|| {
        let txn = db.begin_write().map_err(other)?;
        let results: Vec<Vec<Result<u64>>> = batches
            .iter()
            .map(|b| b.writes.iter().map(|w| apply_write(&txn, w)).collect())
            .collect();
        txn.commit().map_err(other)?;
        Ok::<_, StoreError>(results)
    })();
    match applied {
        Ok(results) => {
            for (b, r) in batches.into_iter().zip(results) {
                let _ = b.reply.send(r);
            }
        }
        Err(e) => {
            for b in batches {
                let _ = b.reply.send(vec![Err(e.clone()); b.writes.len()]);
            }
        }
    }
}

fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store file, creating its tables, with a 64 MiB page cache.
    pub fn open(path: impl AsRef<Path>) -> Result<EmbeddedStore> {
        Self::open_with_cache(path, 64 << 20)
    }

    /// Like [`EmbeddedStore::open`] with a page cache of `cache_bytes` (redb's own default
    /// is 1 GiB, which a server holding many idle sessions cannot spare).
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: usize) -> Result<EmbeddedStore> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(other)?;
        {
            txn.open_table(DOCS).map_err(other)?;
            txn.open_table(SESSIONS).map_err(other)?;
            txn.open_table(BY_NODE).map_err(other)?;
            txn.open_table(SCHEDULES).map_err(other)?;
            txn.open_table(DUE).map_err(other)?;
            txn.open_table(BY_SESSION).map_err(other)?;
            txn.open_table(LEASES).map_err(other)?;
            txn.open_table(LEASE_TOKENS).map_err(other)?;
            txn.open_table(MEMBERS).map_err(other)?;
        }
        txn.commit().map_err(other)?;
        let db = Arc::new(db);
        Ok(EmbeddedStore {
            committer: Arc::new(Committer::start(db.clone())),
            db,
        })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(other)?;
            let out = f(&txn)?;
            txn.commit().map_err(other)?;
            Ok(out)
        })
        .await
        .map_err(other)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(other)?;
            f(&txn)
        })
        .await
        .map_err(other)?
    }

    /// Overwrites a session's stored bytes. Only for testing corruption handling.
    #[doc(hidden)]
    pub async fn overwrite_session_bytes(&self, id: &str, bytes: Vec<u8>) -> Result<()> {
        let id = id.to_string();
        self.write(move |txn| {
            txn.open_table(SESSIONS)
                .map_err(other)?
                .insert(id.as_str(), bytes.as_slice())
                .map_err(other)?;
            Ok(())
        })
        .await
    }
}

fn session_meta(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<SessionRecord>> {
    match t.get(id).map_err(other)? {
        None => Ok(None),
        Some(v) => record::decode_session(id, v.value()).map(Some),
    }
}

struct OwnedWrite {
    id: String,
    node: String,
    document: String,
    snapshot: Vec<u8>,
    expected: Option<u64>,
    fence: Fence,
}

impl From<&SessionWrite<'_>> for OwnedWrite {
    fn from(w: &SessionWrite<'_>) -> Self {
        OwnedWrite {
            id: w.id.to_string(),
            node: w.node.to_string(),
            document: w.document.to_string(),
            snapshot: w.snapshot.to_vec(),
            expected: w.expected_version,
            fence: w.fence,
        }
    }
}

/// The newest token issued for `node`'s lease (0 if none was).
fn node_fence(txn: &redb::WriteTransaction, node: &str) -> Result<Fence> {
    let t = txn.open_table(LEASE_TOKENS).map_err(other)?;
    let token = t.get(node_lease(node).as_str()).map_err(other)?;
    Ok(token.map_or(0, |v| v.value()))
}

fn apply_write(txn: &redb::WriteTransaction, w: &OwnedWrite) -> Result<u64> {
    let node_fence = node_fence(txn, &w.node)?;
    let mut t = txn.open_table(SESSIONS).map_err(other)?;
    // Only the head of the current record: its snapshot is not needed, nor copied.
    let cur = match t.get(w.id.as_str()).map_err(other)? {
        None => None,
        Some(v) => Some(record::decode_session_head(&w.id, v.value())?),
    };
    let sw = SessionWrite {
        id: &w.id,
        node: &w.node,
        document: &w.document,
        snapshot: &w.snapshot,
        expected_version: w.expected,
        fence: w.fence,
    };
    check_write(cur.as_ref().map(|r| (r.version, r.fence)), node_fence, &sw)?;
    let head = record::SessionHead {
        node: w.node.clone(),
        document: w.document.clone(),
        version: cur.as_ref().map_or(1, |r| r.version + 1),
        fence: w.fence,
    };
    t.insert(
        w.id.as_str(),
        record::encode_session_parts(&head, &w.snapshot).as_slice(),
    )
    .map_err(other)?;
    drop(t);
    // The index changes only when the session is new or changes node; rewriting it on
    // every write would dirty one more page per commit.
    if cur.as_ref().is_none_or(|old| old.node != w.node) {
        let mut idx = txn.open_table(BY_NODE).map_err(other)?;
        if let Some(old) = &cur {
            idx.remove((old.node.as_str(), w.id.as_str()))
                .map_err(other)?;
        }
        idx.insert((w.node.as_str(), w.id.as_str()), ())
            .map_err(other)?;
    }
    Ok(head.version)
}

fn remove_schedule(txn: &redb::WriteTransaction, id: &str) -> Result<()> {
    let mut t = txn.open_table(SCHEDULES).map_err(other)?;
    let old = match t.remove(id).map_err(other)? {
        Some(v) => record::decode_schedule(id, v.value()).ok(),
        None => None,
    };
    drop(t);
    if let Some(old) = old {
        txn.open_table(DUE)
            .map_err(other)?
            .remove((old.entry.due_ms, id))
            .map_err(other)?;
        if let Some(s) = &old.entry.session {
            txn.open_table(BY_SESSION)
                .map_err(other)?
                .remove((s.as_str(), id))
                .map_err(other)?;
        }
    }
    Ok(())
}

#[async_trait]
impl SessionStore for EmbeddedStore {
    /// Calls only hand work to the commit thread or the blocking pool.
    fn runtime_independent(&self) -> bool {
        true
    }

    async fn put_document(&self, hash: &str, body: &[u8]) -> Result<()> {
        let (hash, body) = (hash.to_string(), body.to_vec());
        self.write(move |txn| {
            let mut t = txn.open_table(DOCS).map_err(other)?;
            if t.get(hash.as_str()).map_err(other)?.is_none() {
                t.insert(hash.as_str(), body.as_slice()).map_err(other)?;
            }
            Ok(())
        })
        .await
    }

    async fn get_document(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        let hash = hash.to_string();
        self.read(move |txn| {
            let t = txn.open_table(DOCS).map_err(other)?;
            Ok(t.get(hash.as_str())
                .map_err(other)?
                .map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn write_session(&self, w: SessionWrite<'_>) -> Result<u64> {
        let mut r = self.write_sessions(&[w]).await;
        r.pop()
            .unwrap_or_else(|| Err(StoreError::Other("no result".into())))
    }

    /// All writes in one transaction and one fsync, shared with the batches of other
    /// callers queued meanwhile (see `Committer` in the source); each is checked on its own against
    /// the state left by the ones before it.
    async fn write_sessions(&self, writes: &[SessionWrite<'_>]) -> Vec<Result<u64>> {
        self.committer
            .submit(writes.iter().map(OwnedWrite::from).collect())
            .await
    }

    async fn read_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let id = id.to_string();
        self.read(move |txn| session_meta(&txn.open_table(SESSIONS).map_err(other)?, &id))
            .await
    }

    async fn delete_session(&self, id: &str, fence: Fence) -> Result<()> {
        let id = id.to_string();
        self.write(move |txn| {
            let mut t = txn.open_table(SESSIONS).map_err(other)?;
            let Some(cur) = session_meta(&t, &id)? else {
                return Ok(());
            };
            check_fence(
                &id,
                &cur.node,
                fence,
                node_fence(txn, &cur.node)?,
                Some(cur.fence),
            )?;
            t.remove(id.as_str()).map_err(other)?;
            drop(t);
            txn.open_table(BY_NODE)
                .map_err(other)?
                .remove((cur.node.as_str(), id.as_str()))
                .map_err(other)?;
            let ids: Vec<String> = {
                let t = txn.open_table(BY_SESSION).map_err(other)?;
                let mut v = Vec::new();
                for r in t.range((id.as_str(), "")..).map_err(other)? {
                    let (k, _) = r.map_err(other)?;
                    let (s, e) = k.value();
                    if s != id {
                        break;
                    }
                    v.push(e.to_string());
                }
                v
            };
            for e in ids {
                remove_schedule(txn, &e)?;
            }
            Ok(())
        })
        .await
    }

    async fn node_sessions(&self, node: &str) -> Result<Vec<String>> {
        let node = node.to_string();
        self.read(move |txn| {
            let t = txn.open_table(BY_NODE).map_err(other)?;
            let mut v = Vec::new();
            for r in t.range((node.as_str(), "")..).map_err(other)? {
                let (k, _) = r.map_err(other)?;
                let (n, s) = k.value();
                if n != node {
                    break;
                }
                v.push(s.to_string());
            }
            Ok(v)
        })
        .await
    }

    async fn node_sessions_page(
        &self,
        node: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let (node, after) = (node.to_string(), after.map(str::to_string));
        self.read(move |txn| {
            let t = txn.open_table(BY_NODE).map_err(other)?;
            let from = after.as_deref().unwrap_or("");
            let mut v = Vec::new();
            for r in t.range((node.as_str(), from)..).map_err(other)? {
                let (k, _) = r.map_err(other)?;
                let (n, s) = k.value();
                if n != node || v.len() == limit {
                    break;
                }
                if after.as_deref() != Some(s) {
                    v.push(s.to_string());
                }
            }
            Ok(v)
        })
        .await
    }

    async fn move_session(&self, id: &str, to_node: &str, fence: Fence) -> Result<()> {
        let (id, to) = (id.to_string(), to_node.to_string());
        self.write(move |txn| {
            let mut t = txn.open_table(SESSIONS).map_err(other)?;
            let mut rec = session_meta(&t, &id)?
                .ok_or_else(|| StoreError::NotFound(format!("session {id}")))?;
            check_move(&id, &rec.node, &to, fence, node_fence(txn, &to)?, rec.fence)?;
            let old = std::mem::replace(&mut rec.node, to.clone());
            rec.fence = fence;
            rec.version += 1;
            t.insert(id.as_str(), record::encode_session(&rec).as_slice())
                .map_err(other)?;
            drop(t);
            let mut idx = txn.open_table(BY_NODE).map_err(other)?;
            idx.remove((old.as_str(), id.as_str())).map_err(other)?;
            idx.insert((to.as_str(), id.as_str()), ()).map_err(other)?;
            Ok(())
        })
        .await
    }

    async fn put_schedule(&self, entry: &ScheduleEntry) -> Result<()> {
        let entry = entry.clone();
        self.write(move |txn| {
            remove_schedule(txn, &entry.id)?;
            let stored = StoredSchedule {
                entry: entry.clone(),
                claimed_by: None,
                claim_until_ms: 0,
            };
            let id = entry.id.as_str();
            txn.open_table(SCHEDULES)
                .map_err(other)?
                .insert(id, record::encode_schedule(&stored).as_slice())
                .map_err(other)?;
            txn.open_table(DUE)
                .map_err(other)?
                .insert((entry.due_ms, id), ())
                .map_err(other)?;
            if let Some(s) = &entry.session {
                txn.open_table(BY_SESSION)
                    .map_err(other)?
                    .insert((s.as_str(), id), ())
                    .map_err(other)?;
            }
            Ok(())
        })
        .await
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<ScheduleEntry>> {
        self.read(move |txn| {
            let due = txn.open_table(DUE).map_err(other)?;
            let t = txn.open_table(SCHEDULES).map_err(other)?;
            let mut out = Vec::new();
            for r in due.range((0u64, "")..).map_err(other)? {
                if out.len() >= limit {
                    break;
                }
                let (k, _) = r.map_err(other)?;
                let (at, id) = k.value();
                if at > now_ms {
                    break;
                }
                if let Some(v) = t.get(id).map_err(other)? {
                    let s = record::decode_schedule(id, v.value())?;
                    if s.is_claimable(now_ms) {
                        out.push(s.entry);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn claim_schedule(
        &self,
        id: &str,
        claimer: &str,
        now_ms: u64,
        claim_ms: u64,
    ) -> Result<bool> {
        let (id, claimer) = (id.to_string(), claimer.to_string());
        self.write(move |txn| {
            let mut t = txn.open_table(SCHEDULES).map_err(other)?;
            let cur = match t.get(id.as_str()).map_err(other)? {
                None => return Ok(false),
                Some(v) => record::decode_schedule(&id, v.value())?,
            };
            if !cur.is_claimable(now_ms) {
                return Ok(false);
            }
            let claimed = StoredSchedule {
                claimed_by: Some(claimer),
                claim_until_ms: now_ms.saturating_add(claim_ms),
                ..cur
            };
            t.insert(id.as_str(), record::encode_schedule(&claimed).as_slice())
                .map_err(other)?;
            Ok(true)
        })
        .await
    }

    async fn delete_schedule(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.write(move |txn| remove_schedule(txn, &id)).await
    }

    async fn session_schedules(&self, session: &str) -> Result<Vec<ScheduleEntry>> {
        let session = session.to_string();
        self.read(move |txn| {
            let idx = txn.open_table(BY_SESSION).map_err(other)?;
            let t = txn.open_table(SCHEDULES).map_err(other)?;
            let mut out = Vec::new();
            for r in idx.range((session.as_str(), "")..).map_err(other)? {
                let (k, _) = r.map_err(other)?;
                let (s, id) = k.value();
                if s != session {
                    break;
                }
                if let Some(v) = t.get(id).map_err(other)? {
                    out.push(record::decode_schedule(id, v.value())?.entry);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<Option<Lease>> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.write(move |txn| {
            let now = now_ms();
            let mut t = txn.open_table(LEASES).map_err(other)?;
            if let Some(v) = t.get(name.as_str()).map_err(other)? {
                let cur = record::decode_lease(&name, v.value())?;
                if cur.expires_at_ms > now {
                    return Ok(None);
                }
            }
            let mut tokens = txn.open_table(LEASE_TOKENS).map_err(other)?;
            let token = tokens
                .get(name.as_str())
                .map_err(other)?
                .map_or(0, |v| v.value())
                + 1;
            tokens.insert(name.as_str(), token).map_err(other)?;
            let lease = Lease {
                name: name.clone(),
                holder,
                token,
                expires_at_ms: now.saturating_add(ttl_ms),
            };
            t.insert(name.as_str(), record::encode_lease(&lease).as_slice())
                .map_err(other)?;
            Ok(Some(lease))
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        let lease = lease.clone();
        self.write(move |txn| {
            let now = now_ms();
            let mut t = txn.open_table(LEASES).map_err(other)?;
            let cur = match t.get(lease.name.as_str()).map_err(other)? {
                Some(v) => record::decode_lease(&lease.name, v.value())?,
                None => return Err(StoreError::lease_lost(&lease)),
            };
            if cur.token != lease.token || cur.holder != lease.holder || cur.expires_at_ms <= now {
                return Err(StoreError::lease_lost(&lease));
            }
            let renewed = Lease {
                expires_at_ms: now.saturating_add(ttl_ms),
                ..cur
            };
            t.insert(
                lease.name.as_str(),
                record::encode_lease(&renewed).as_slice(),
            )
            .map_err(other)?;
            Ok(renewed)
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.write(move |txn| {
            let mut t = txn.open_table(LEASES).map_err(other)?;
            let held = match t.get(lease.name.as_str()).map_err(other)? {
                Some(v) => record::decode_lease(&lease.name, v.value())?.token == lease.token,
                None => false,
            };
            if held {
                t.remove(lease.name.as_str()).map_err(other)?;
            }
            Ok(())
        })
        .await
    }

    async fn read_lease(&self, name: &str) -> Result<Option<Lease>> {
        let name = name.to_string();
        self.read(move |txn| {
            let t = txn.open_table(LEASES).map_err(other)?;
            match t.get(name.as_str()).map_err(other)? {
                None => Ok(None),
                Some(v) => {
                    let l = record::decode_lease(&name, v.value())?;
                    Ok((l.expires_at_ms > now_ms()).then_some(l))
                }
            }
        })
        .await
    }

    async fn announce(&self, member: &Member, ttl_ms: u64) -> Result<()> {
        let now = now_ms();
        let m = member.stamped(now, ttl_ms);
        self.write(move |txn| {
            let key = record::member_key(&m.node, &m.instance);
            txn.open_table(MEMBERS)
                .map_err(other)?
                .insert(key.as_str(), record::encode_member(&m).as_slice())
                .map_err(other)?;
            Ok(())
        })
        .await
    }

    async fn members(&self) -> Result<Vec<Member>> {
        self.read(move |txn| {
            let t = txn.open_table(MEMBERS).map_err(other)?;
            let now = now_ms();
            let mut out = Vec::new();
            for r in t.iter().map_err(other)? {
                let (k, v) = r.map_err(other)?;
                let m = record::decode_member(k.value(), v.value())?;
                if m.expires_at_ms > now {
                    out.push(m);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn withdraw(&self, node: &str, instance: &str) -> Result<()> {
        let key = record::member_key(node, instance);
        self.write(move |txn| {
            txn.open_table(MEMBERS)
                .map_err(other)?
                .remove(key.as_str())
                .map_err(other)?;
            Ok(())
        })
        .await
    }
}
