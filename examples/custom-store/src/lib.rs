//! A tiny [`SessionStore`]: one file per record in a directory. It shows what a backend
//! must do; it is not built for speed (one lock serialises every call).
//!
//! Durability: each file is written to a temporary name, fsynced, and renamed over the
//! old one, so a crash leaves either the old or the new record, never half of one.
//! Atomicity: a mutex makes every check-then-write one step. Names are hex-encoded, so
//! no id can escape the directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ors_store::record::{self, StoredSchedule, check_fence, check_move, check_write};
use ors_store::{
    Fence, Lease, Member, Result, ScheduleEntry, SessionRecord, SessionStore, SessionWrite,
    StoreError, node_lease, now_ms,
};
use tokio::sync::Mutex;

#[derive(Clone)]
pub struct FileStore {
    dir: Arc<PathBuf>,
    lock: Arc<Mutex<()>>,
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

impl FileStore {
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        for sub in [
            "documents",
            "sessions",
            "schedules",
            "leases",
            "tokens",
            "members",
        ] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io)?;
        }
        Ok(FileStore {
            dir: Arc::new(dir),
            lock: Arc::new(Mutex::new(())),
        })
    }

    /// The newest token issued for lease `name` (0 if none was).
    fn token(&self, name: &str) -> Result<Fence> {
        let Some(b) = self.read("tokens", name)? else {
            return Ok(0);
        };
        String::from_utf8_lossy(&b)
            .parse::<u64>()
            .map_err(|e| StoreError::Corrupt {
                key: format!("lease token {name}"),
                detail: e.to_string(),
            })
    }

    fn path(&self, kind: &str, name: &str) -> PathBuf {
        self.dir.join(kind).join(hex(name))
    }

    fn read(&self, kind: &str, name: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(kind, name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    fn write(&self, kind: &str, name: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let path = self.path(kind, name);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    fn remove(&self, kind: &str, name: &str) -> Result<()> {
        match std::fs::remove_file(self.path(kind, name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        }
    }

    fn names(&self, kind: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.join(kind)).map_err(io)? {
            let name = e.map_err(io)?.file_name().to_string_lossy().to_string();
            if let Some(n) = unhex(&name) {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    fn session(&self, id: &str) -> Result<Option<SessionRecord>> {
        self.read("sessions", id)?
            .map(|b| record::decode_session(id, &b))
            .transpose()
    }

    fn schedule(&self, id: &str) -> Result<Option<StoredSchedule>> {
        self.read("schedules", id)?
            .map(|b| record::decode_schedule(id, &b))
            .transpose()
    }

    fn schedules(&self) -> Result<Vec<StoredSchedule>> {
        let mut out = Vec::new();
        for id in self.names("schedules")? {
            out.extend(self.schedule(&id)?);
        }
        Ok(out)
    }

    /// Overwrites a session file with garbage (for the conformance suite's corruption check).
    pub fn corrupt(&self, id: &str) -> Result<()> {
        std::fs::write(self.path("sessions", id), b"not a record").map_err(io)
    }
}

// The trait's methods run file I/O inline for brevity; a production backend would move
// it to `tokio::task::spawn_blocking`.
#[async_trait]
impl SessionStore for FileStore {
    async fn put_document(&self, hash: &str, body: &[u8]) -> Result<()> {
        let _g = self.lock.lock().await;
        if self.read("documents", hash)?.is_none() {
            self.write("documents", hash, body)?;
        }
        Ok(())
    }

    async fn get_document(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        self.read("documents", hash)
    }

    async fn write_session(&self, w: SessionWrite<'_>) -> Result<u64> {
        let _g = self.lock.lock().await;
        let cur = self.session(w.id)?;
        let node_fence = self.token(&node_lease(w.node))?;
        check_write(cur.as_ref().map(|r| (r.version, r.fence)), node_fence, &w)?;
        let version = cur.map_or(1, |r| r.version + 1);
        let rec = SessionRecord {
            id: w.id.into(),
            node: w.node.into(),
            document: w.document.into(),
            version,
            fence: w.fence,
            snapshot: w.snapshot.to_vec(),
        };
        self.write("sessions", w.id, &record::encode_session(&rec))?;
        Ok(version)
    }

    async fn read_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let _g = self.lock.lock().await;
        self.session(id)
    }

    async fn delete_session(&self, id: &str, fence: Fence) -> Result<()> {
        let _g = self.lock.lock().await;
        let Some(cur) = self.session(id)? else {
            return Ok(());
        };
        let node_fence = self.token(&node_lease(&cur.node))?;
        check_fence(id, &cur.node, fence, node_fence, Some(cur.fence))?;
        self.remove("sessions", id)?;
        for s in self.schedules()? {
            if s.entry.session.as_deref() == Some(id) {
                self.remove("schedules", &s.entry.id)?;
            }
        }
        Ok(())
    }

    async fn node_sessions(&self, node: &str) -> Result<Vec<String>> {
        // The index is derived by scanning: simple, and never out of date.
        let _g = self.lock.lock().await;
        let mut out = Vec::new();
        for id in self.names("sessions")? {
            if self.session(&id)?.is_some_and(|r| r.node == node) {
                out.push(id);
            }
        }
        Ok(out)
    }

    async fn move_session(&self, id: &str, to_node: &str, fence: Fence) -> Result<()> {
        let _g = self.lock.lock().await;
        let mut r = self
            .session(id)?
            .ok_or_else(|| StoreError::NotFound(format!("session {id}")))?;
        let node_fence = self.token(&node_lease(to_node))?;
        check_move(id, &r.node, to_node, fence, node_fence, r.fence)?;
        r.node = to_node.into();
        r.fence = fence;
        r.version += 1;
        self.write("sessions", id, &record::encode_session(&r))
    }

    async fn put_schedule(&self, entry: &ScheduleEntry) -> Result<()> {
        let _g = self.lock.lock().await;
        let s = StoredSchedule {
            entry: entry.clone(),
            claimed_by: None,
            claim_until_ms: 0,
        };
        self.write("schedules", &entry.id, &record::encode_schedule(&s))
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<ScheduleEntry>> {
        let _g = self.lock.lock().await;
        let mut v: Vec<ScheduleEntry> = self
            .schedules()?
            .into_iter()
            .filter(|s| s.entry.due_ms <= now_ms && s.is_claimable(now_ms))
            .map(|s| s.entry)
            .collect();
        v.sort_by(|a, b| (a.due_ms, &a.id).cmp(&(b.due_ms, &b.id)));
        v.truncate(limit);
        Ok(v)
    }

    async fn claim_schedule(
        &self,
        id: &str,
        claimer: &str,
        now_ms: u64,
        claim_ms: u64,
    ) -> Result<bool> {
        let _g = self.lock.lock().await;
        let Some(mut s) = self.schedule(id)? else {
            return Ok(false);
        };
        if !s.is_claimable(now_ms) {
            return Ok(false);
        }
        s.claimed_by = Some(claimer.into());
        s.claim_until_ms = now_ms.saturating_add(claim_ms);
        self.write("schedules", id, &record::encode_schedule(&s))?;
        Ok(true)
    }

    async fn delete_schedule(&self, id: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        self.remove("schedules", id)
    }

    async fn session_schedules(&self, session: &str) -> Result<Vec<ScheduleEntry>> {
        let _g = self.lock.lock().await;
        Ok(self
            .schedules()?
            .into_iter()
            .filter(|s| s.entry.session.as_deref() == Some(session))
            .map(|s| s.entry)
            .collect())
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<Option<Lease>> {
        let _g = self.lock.lock().await;
        let now = now_ms();
        if let Some(b) = self.read("leases", name)?
            && record::decode_lease(name, &b)?.expires_at_ms > now
        {
            return Ok(None);
        }
        let token = self.token(name)? + 1;
        self.write("tokens", name, token.to_string().as_bytes())?;
        let lease = Lease {
            name: name.into(),
            holder: holder.into(),
            token,
            expires_at_ms: now.saturating_add(ttl_ms),
        };
        self.write("leases", name, &record::encode_lease(&lease))?;
        Ok(Some(lease))
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        let _g = self.lock.lock().await;
        let now = now_ms();
        let lost = || StoreError::lease_lost(lease);
        let cur = self.read("leases", &lease.name)?.ok_or_else(lost)?;
        let cur = record::decode_lease(&lease.name, &cur)?;
        if cur.token != lease.token || cur.holder != lease.holder || cur.expires_at_ms <= now {
            return Err(lost());
        }
        let renewed = Lease {
            expires_at_ms: now.saturating_add(ttl_ms),
            ..cur
        };
        self.write("leases", &lease.name, &record::encode_lease(&renewed))?;
        Ok(renewed)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let _g = self.lock.lock().await;
        if let Some(b) = self.read("leases", &lease.name)?
            && record::decode_lease(&lease.name, &b)?.token == lease.token
        {
            self.remove("leases", &lease.name)?;
        }
        Ok(())
    }

    async fn read_lease(&self, name: &str) -> Result<Option<Lease>> {
        let _g = self.lock.lock().await;
        match self.read("leases", name)? {
            None => Ok(None),
            Some(b) => {
                let l = record::decode_lease(name, &b)?;
                Ok((l.expires_at_ms > now_ms()).then_some(l))
            }
        }
    }

    async fn announce(&self, member: &Member, ttl_ms: u64) -> Result<()> {
        let _g = self.lock.lock().await;
        let now = now_ms();
        let m = member.stamped(now, ttl_ms);
        let key = record::member_key(&m.node, &m.instance);
        self.write("members", &key, &record::encode_member(&m))
    }

    async fn members(&self) -> Result<Vec<Member>> {
        let _g = self.lock.lock().await;
        let now = now_ms();
        let mut out = Vec::new();
        for key in self.names("members")? {
            if let Some(b) = self.read("members", &key)? {
                let m = record::decode_member(&key, &b)?;
                if m.expires_at_ms > now {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    async fn withdraw(&self, node: &str, instance: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        self.remove("members", &record::member_key(node, instance))
    }
}
