#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod scripts;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::config::{ClusterDiscoveryPolicy, ServerConfig};
use ors_store::{
    Fence, Lease, Member, Result, ScheduleEntry, ScheduleKind, SessionRecord, SessionStore,
    SessionWrite, StoreError, node_lease,
};

/// Connection settings. Mirrors ORS's `persistence` options (`redis-nodes`, `username`,
/// `password`, `tls-enabled`) plus what a client needs (prefix, pool, timeouts).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port` (or `rediss://`) URLs. One URL and `cluster == false`: a
    /// standalone server; otherwise the seed nodes of a Redis Cluster.
    pub urls: Vec<String>,
    /// Several URLs name the masters of a Redis Cluster; set this to talk cluster protocol.
    pub cluster: bool,
    /// ACL user name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// TLS with the system's root certificates.
    pub tls: bool,
    /// Every key starts with this (ORS uses `ORS:<cluster name>`).
    pub key_prefix: String,
    /// Connections (each pipelines many commands).
    pub pool_size: usize,
    /// A command that gets no answer in this time fails with [`StoreError::Unavailable`].
    pub command_timeout: Duration,
    /// Giving up on connecting after this long.
    pub connect_timeout: Duration,
    /// Delay between reconnection attempts (forever).
    pub reconnect_delay: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            username: None,
            password: None,
            tls: false,
            key_prefix: "ors".into(),
            pool_size: 2,
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            reconnect_delay: Duration::from_millis(200),
        }
    }
}

/// A [`SessionStore`] on Redis. Clones share connections.
///
/// Key layout (`P` = key prefix; `{...}` is the cluster hash tag):
/// - `P:doc:{hash}` — document bytes
/// - `P:sess:{id}` — hash: `node`, `doc`, `ver`, `fence`, `snap`; `P:sess:{id}:sched` — set
///   of the session's schedule ids (same slot, so a session is deleted atomically)
/// - `P:node:{node}` — set of session ids; written before the session record and
///   filtered against it when read, so a crash leaves at most a stale entry, never a
///   missing one
/// - `P:sch:{id}` — hash of a schedule entry and its claim; `P:due` — sorted set by due time
/// - `P:members` — hash `<node>/<instance>` → `<heartbeat>|<expiry>|<entry>` (server clock)
/// - `P:lease:{name}` — hash `holder`, `token`, `expires` with a PX TTL;
///   `P:lease:{name}:token` — the fencing token counter (never deleted)
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    prefix: String,
    /// Talking to a Redis Cluster: a session's key and its node's token counter live in
    /// different slots, so scripts get the counter's value read just before instead of
    /// its key (the node-wide fence check is then one round trip short of atomic).
    clustered: bool,
}

/// The SHA-1 of a script, computed once per script.
fn script_sha(script: &'static str) -> &'static str {
    static SHAS: std::sync::OnceLock<std::sync::Mutex<HashMap<usize, &'static str>>> =
        std::sync::OnceLock::new();
    let mut shas = SHAS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    shas.entry(script.as_ptr() as usize)
        .or_insert_with(|| Box::leak(fred::util::sha1_hash(script).into_boxed_str()))
}

fn unavailable(e: Error) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn map_err(key: &str) -> impl Fn(Error) -> StoreError + '_ {
    move |e: Error| {
        if e.details().contains("WRONGTYPE") {
            StoreError::Corrupt {
                key: key.to_string(),
                detail: e.details().to_string(),
            }
        } else {
            unavailable(e)
        }
    }
}

impl RedisStore {
    /// Connects (waiting at most `connect_timeout` for the first connection).
    pub async fn connect(cfg: &RedisConfig) -> Result<RedisStore> {
        let first = cfg
            .urls
            .first()
            .ok_or_else(|| StoreError::Invalid("no Redis URL configured".into()))?;
        let mut config =
            Config::from_url(first).map_err(|e| StoreError::Invalid(format!("{first}: {e}")))?;
        let clustered = cfg.cluster || cfg.urls.len() > 1;
        if clustered {
            let mut hosts = Vec::new();
            for u in &cfg.urls {
                let c =
                    Config::from_url(u).map_err(|e| StoreError::Invalid(format!("{u}: {e}")))?;
                hosts.extend(c.server.hosts());
            }
            config.server = ServerConfig::Clustered {
                hosts,
                policy: ClusterDiscoveryPolicy::default(),
            };
        }
        if cfg.username.is_some() {
            config.username = cfg.username.clone();
        }
        if cfg.password.is_some() {
            config.password = cfg.password.clone();
        }
        if cfg.tls {
            config.tls = Some(
                fred::types::config::TlsConnector::default_rustls()
                    .map_err(|e| StoreError::Invalid(format!("TLS: {e}")))?
                    .into(),
            );
        }
        config.fail_fast = true;
        let pool = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = cfg.command_timeout)
            .with_connection_config(|c| {
                c.connection_timeout = cfg.connect_timeout;
                c.internal_command_timeout = cfg.command_timeout;
                c.max_command_attempts = 2;
            })
            .set_policy(ReconnectPolicy::new_constant(
                0,
                cfg.reconnect_delay.as_millis() as u32,
            ))
            .build_pool(cfg.pool_size.max(1))
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        match tokio::time::timeout(cfg.connect_timeout, pool.init()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => {
                let _ = pool.quit().await;
                return Err(StoreError::Unavailable(format!(
                    "redis: no connection to {} within {:?}",
                    cfg.urls.join(","),
                    cfg.connect_timeout
                )));
            }
        }
        Ok(RedisStore {
            pool,
            prefix: cfg.key_prefix.clone(),
            clustered,
        })
    }

    /// The key prefix this store uses.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// Closes the connections.
    pub async fn close(&self) {
        let _ = self.pool.quit().await;
    }

    fn k_doc(&self, hash: &str) -> String {
        format!("{}:doc:{{{hash}}}", self.prefix)
    }
    fn k_sess(&self, id: &str) -> String {
        format!("{}:sess:{{{id}}}", self.prefix)
    }
    fn k_sess_sched(&self, id: &str) -> String {
        format!("{}:sess:{{{id}}}:sched", self.prefix)
    }
    fn k_node(&self, node: &str) -> String {
        format!("{}:node:{{{node}}}", self.prefix)
    }
    fn k_sch(&self, id: &str) -> String {
        format!("{}:sch:{{{id}}}", self.prefix)
    }
    fn k_members(&self) -> String {
        format!("{}:members", self.prefix)
    }
    fn k_due(&self) -> String {
        format!("{}:due", self.prefix)
    }
    fn k_lease(&self, name: &str) -> String {
        format!("{}:lease:{{{name}}}", self.prefix)
    }
    fn k_lease_token(&self, name: &str) -> String {
        format!("{}:lease:{{{name}}}:token", self.prefix)
    }

    /// What a script needs to check `node`'s fence: on a standalone server the key of
    /// the node lease's token counter (read inside the script, atomically with the
    /// write); on a cluster its value, read now.
    async fn node_fence_check(&self, node: &str) -> Result<(Vec<String>, Value)> {
        let key = self.k_lease_token(&node_lease(node));
        if !self.clustered {
            return Ok((vec![key], str_arg("")));
        }
        let token: Option<i64> = self.pool.next().get(&key).await.map_err(map_err(&key))?;
        Ok((Vec::new(), Value::from(token.unwrap_or(0))))
    }

    /// Runs one of the scripts by its SHA-1 (`EVALSHA`), so its text crosses the wire
    /// once per server rather than with every call; a server that does not have it yet
    /// (`NOSCRIPT`: new, restarted, flushed) gets it with a plain `EVAL`, which caches it.
    async fn eval(
        &self,
        script: &'static str,
        keys: Vec<String>,
        args: Vec<Value>,
        what: &str,
    ) -> Result<Value> {
        let client = self.pool.next();
        let sha = script_sha(script);
        match client
            .evalsha::<Value, _, _, _>(sha, keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {}
            r => return r.map_err(map_err(what)),
        }
        client
            .eval::<Value, _, _, _>(script, keys, args)
            .await
            .map_err(map_err(what))
    }

    /// The outcome of a session write from its script's reply (`WRITE_SESSION`'s or one
    /// write's part of `WRITE_SESSIONS`'s): the new version, after taking the session out
    /// of the index of the node it moved from.
    async fn written(&self, w: &SessionWrite<'_>, reply: &[Value]) -> Result<u64> {
        if text(reply.first()).as_deref() != Some("ok") {
            return Err(session_error(
                w.id,
                w.node,
                reply,
                w.expected_version,
                w.fence,
            ));
        }
        let version =
            num(reply.get(1)).ok_or_else(|| StoreError::Other("no version in reply".into()))?;
        if let Some(old) = text(reply.get(2)).filter(|o| !o.is_empty() && o != w.node) {
            let ok = self.k_node(&old);
            self.pool
                .next()
                .srem::<i64, _, _>(&ok, w.id)
                .await
                .map_err(map_err(&ok))?;
        }
        Ok(version)
    }

    /// Overwrites a session's key with a non-hash value. Only for testing corruption.
    #[doc(hidden)]
    pub async fn overwrite_session_raw(&self, id: &str, bytes: &[u8]) -> Result<()> {
        let k = self.k_sess(id);
        self.pool
            .next()
            .del::<i64, _>(&k)
            .await
            .map_err(unavailable)?;
        self.pool
            .next()
            .set::<(), _, _>(&k, Bytes::copy_from_slice(bytes), None, None, false)
            .await
            .map_err(unavailable)
    }

    async fn read_schedule(
        &self,
        id: &str,
    ) -> Result<Option<(ScheduleEntry, Option<String>, u64)>> {
        let key = self.k_sch(id);
        let h: HashMap<String, Value> = self
            .pool
            .next()
            .hgetall(&key)
            .await
            .map_err(map_err(&key))?;
        if h.is_empty() {
            return Ok(None);
        }
        let corrupt = |d: &str| StoreError::Corrupt {
            key: key.clone(),
            detail: d.to_string(),
        };
        let due = num(h.get("due")).ok_or_else(|| corrupt("no due time"))?;
        let kind = text(h.get("kind")).ok_or_else(|| corrupt("no kind"))?;
        let entry = ScheduleEntry {
            id: id.to_string(),
            session: text(h.get("session")).filter(|s| !s.is_empty()),
            due_ms: due,
            kind: ScheduleKind::parse(&kind),
            payload: bytes_of(h.get("payload")).unwrap_or_default(),
        };
        let claimed = text(h.get("claimed_by")).filter(|s| !s.is_empty());
        Ok(Some((
            entry,
            claimed,
            num(h.get("claim_until")).unwrap_or(0),
        )))
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

fn num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Integer(i) => u64::try_from(*i).ok(),
        other => text(Some(other))?.parse().ok(),
    }
}

fn bytes_of(v: Option<&Value>) -> Option<Vec<u8>> {
    match v? {
        Value::Bytes(b) => Some(b.to_vec()),
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Null => None,
        other => text(Some(other)).map(String::into_bytes),
    }
}

/// The reply of a script as a list of values.
fn list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

fn str_arg(s: &str) -> Value {
    Value::from(s)
}

fn session_error(
    id: &str,
    node: &str,
    reply: &[Value],
    expected: Option<u64>,
    fence: Fence,
) -> StoreError {
    let key = format!("session {id}");
    match text(reply.first()).as_deref() {
        Some("fenced") => StoreError::StaleFence {
            key: format!("node {node}"),
            given: fence,
            current: num(reply.get(1)).unwrap_or(0),
        },
        Some("stale") => StoreError::StaleFence {
            key,
            given: fence,
            current: num(reply.get(1)).unwrap_or(0),
        },
        Some("conflict") => StoreError::VersionConflict {
            key,
            expected,
            found: num(reply.get(1)),
        },
        Some("notfound") => StoreError::NotFound(key),
        Some("corrupt") => StoreError::Corrupt {
            key,
            detail: "unparsable version or fence".into(),
        },
        other => StoreError::Other(format!("unexpected script reply {other:?}")),
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn put_document(&self, hash: &str, body: &[u8]) -> Result<()> {
        let k = self.k_doc(hash);
        self.pool
            .next()
            .set::<(), _, _>(
                &k,
                Bytes::copy_from_slice(body),
                None,
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(map_err(&k))
    }

    async fn get_document(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        let k = self.k_doc(hash);
        let v: Option<Bytes> = self.pool.next().get(&k).await.map_err(map_err(&k))?;
        Ok(v.map(|b| b.to_vec()))
    }

    async fn write_session(&self, w: SessionWrite<'_>) -> Result<u64> {
        // Index first: a crash after this leaves a stale entry that reads filter out.
        let nk = self.k_node(w.node);
        self.pool
            .next()
            .sadd::<i64, _, _>(&nk, w.id)
            .await
            .map_err(map_err(&nk))?;
        let expected = w
            .expected_version
            .map(|v| v.to_string())
            .unwrap_or_default();
        let (fence_key, node_fence) = self.node_fence_check(w.node).await?;
        let mut keys = vec![self.k_sess(w.id)];
        keys.extend(fence_key);
        let reply = list(
            self.eval(
                scripts::WRITE_SESSION,
                keys,
                vec![
                    str_arg(&expected),
                    Value::from(w.fence as i64),
                    str_arg(w.node),
                    str_arg(w.document),
                    Value::Bytes(Bytes::copy_from_slice(w.snapshot)),
                    node_fence,
                ],
                &format!("session {}", w.id),
            )
            .await?,
        );
        self.written(&w, &reply).await
    }

    /// Standalone: the whole batch in one script, applied whole or not at all (so a
    /// crash of the caller never leaves half a batch: two sessions that exchanged events
    /// in it are both written, or neither), in one round trip. A cluster spreads the
    /// sessions over slots, which one script cannot touch: one by one there.
    async fn write_sessions(&self, writes: &[SessionWrite<'_>]) -> Vec<Result<u64>> {
        let Some(first) = writes.first() else {
            return Vec::new();
        };
        let one_node = writes
            .iter()
            .all(|w| w.node == first.node && w.fence == first.fence);
        if self.clustered || !one_node {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(self.write_session(*w).await);
            }
            return out;
        }
        let node = first.node;
        let mut keys = vec![self.k_lease_token(&node_lease(node)), self.k_node(node)];
        let mut args = vec![Value::from(first.fence as i64), str_arg(node)];
        for w in writes {
            keys.push(self.k_sess(w.id));
            let expected = w
                .expected_version
                .map(|v| v.to_string())
                .unwrap_or_default();
            args.extend([
                str_arg(w.id),
                str_arg(&expected),
                str_arg(w.document),
                Value::Bytes(Bytes::copy_from_slice(w.snapshot)),
            ]);
        }
        let what = format!("{} sessions of node {node}", writes.len());
        let reply = match self.eval(scripts::WRITE_SESSIONS, keys, args, &what).await {
            Ok(r) => list(r),
            Err(e) => return writes.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut out = Vec::with_capacity(writes.len());
        for (w, r) in writes.iter().zip(reply.chunks(3)) {
            out.push(self.written(w, r).await);
        }
        if out.len() < writes.len() {
            let e = StoreError::Other("a short reply to a batch write".into());
            out.resize(writes.len(), Err(e));
        }
        out
    }

    async fn read_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let key = self.k_sess(id);
        let h: HashMap<String, Value> = self
            .pool
            .next()
            .hgetall(&key)
            .await
            .map_err(map_err(&format!("session {id}")))?;
        if h.is_empty() {
            return Ok(None);
        }
        let corrupt = |d: &str| StoreError::Corrupt {
            key: format!("session {id}"),
            detail: d.to_string(),
        };
        Ok(Some(SessionRecord {
            id: id.to_string(),
            node: text(h.get("node")).ok_or_else(|| corrupt("no node"))?,
            document: text(h.get("doc")).ok_or_else(|| corrupt("no document"))?,
            version: num(h.get("ver")).ok_or_else(|| corrupt("bad version"))?,
            fence: num(h.get("fence")).ok_or_else(|| corrupt("bad fence"))?,
            snapshot: bytes_of(h.get("snap")).unwrap_or_default(),
        }))
    }

    async fn delete_session(&self, id: &str, fence: Fence) -> Result<()> {
        // The script must be given the owning node's fence, so it learns the node first
        // and refuses (`moved`) if the session changed node meanwhile.
        let reply = loop {
            let owner: Option<String> = self
                .pool
                .next()
                .hget(self.k_sess(id), "node")
                .await
                .map_err(map_err(&format!("session {id}")))?;
            let Some(owner) = owner else { return Ok(()) };
            let (fence_key, node_fence) = self.node_fence_check(&owner).await?;
            let mut keys = vec![self.k_sess(id), self.k_sess_sched(id)];
            keys.extend(fence_key);
            let reply = list(
                self.eval(
                    scripts::DELETE_SESSION,
                    keys,
                    vec![Value::from(fence as i64), str_arg(&owner), node_fence],
                    &format!("session {id}"),
                )
                .await?,
            );
            match text(reply.first()).as_deref() {
                Some("ok") => break reply,
                Some("missing") => return Ok(()),
                Some("moved") => continue,
                _ => return Err(session_error(id, &owner, &reply, None, fence)),
            }
        };
        let node = text(reply.get(1)).unwrap_or_default();
        let nk = self.k_node(&node);
        self.pool
            .next()
            .srem::<i64, _, _>(&nk, id)
            .await
            .map_err(map_err(&nk))?;
        for e in reply.iter().skip(2).filter_map(|v| text(Some(v))) {
            // An entry put again since for another session (or none) is not this one's.
            let of: Option<String> = self
                .pool
                .next()
                .hget(self.k_sch(&e), "session")
                .await
                .map_err(unavailable)?;
            if of.as_deref() != Some(id) {
                continue;
            }
            self.pool
                .next()
                .del::<i64, _>(self.k_sch(&e))
                .await
                .map_err(unavailable)?;
            self.pool
                .next()
                .zrem::<i64, _, _>(self.k_due(), e)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn node_sessions(&self, node: &str) -> Result<Vec<String>> {
        Ok(self
            .node_session_versions(node)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The index is a set: its members are read and sorted, but only the page's owners
    /// are checked (not every session's, as [`SessionStore::node_sessions`] does).
    async fn node_sessions_page(
        &self,
        node: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let nk = self.k_node(node);
        let mut ids: Vec<String> = self.pool.next().smembers(&nk).await.map_err(map_err(&nk))?;
        ids.retain(|id| after.is_none_or(|a| id.as_str() > a));
        ids.sort_unstable();
        let mut out = Vec::with_capacity(limit.min(ids.len()));
        for chunk in ids.chunks(limit.max(1)) {
            let pipeline = self.pool.next().pipeline();
            for id in chunk {
                pipeline
                    .hget::<(), _, _>(self.k_sess(id), "node")
                    .await
                    .map_err(unavailable)?;
            }
            let owners: Vec<Option<String>> = pipeline.all().await.map_err(map_err(&nk))?;
            for (id, owner) in chunk.iter().zip(owners) {
                // A leftover of an interrupted write or move is skipped here and cleaned
                // up by the next full read of the index.
                if owner.as_deref() == Some(node) && out.len() < limit {
                    out.push(id.clone());
                }
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    async fn node_session_versions(&self, node: &str) -> Result<Vec<(String, u64)>> {
        let nk = self.k_node(node);
        let ids: Vec<String> = self.pool.next().smembers(&nk).await.map_err(map_err(&nk))?;
        let mut out = Vec::new();
        // Owners and versions are read in pipelines: a round trip per chunk, not per
        // session.
        for chunk in ids.chunks(1000) {
            let pipeline = self.pool.next().pipeline();
            for id in chunk {
                pipeline
                    .hmget::<(), _, _>(self.k_sess(id), vec!["node", "ver"])
                    .await
                    .map_err(unavailable)?;
            }
            let rows: Vec<(Option<String>, Option<u64>)> =
                pipeline.all().await.map_err(map_err(&nk))?;
            for (id, (owner, version)) in chunk.iter().zip(rows) {
                match (owner, version) {
                    (Some(o), Some(v)) if o == node => out.push((id.clone(), v)),
                    _ => {
                        // A leftover of an interrupted write or move: clean it up.
                        self.pool
                            .next()
                            .srem::<i64, _, _>(&nk, id)
                            .await
                            .map_err(map_err(&nk))?;
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn move_session(&self, id: &str, to_node: &str, fence: Fence) -> Result<()> {
        let nk = self.k_node(to_node);
        self.pool
            .next()
            .sadd::<i64, _, _>(&nk, id)
            .await
            .map_err(map_err(&nk))?;
        let (fence_key, node_fence) = self.node_fence_check(to_node).await?;
        let mut keys = vec![self.k_sess(id)];
        keys.extend(fence_key);
        let reply = list(
            self.eval(
                scripts::MOVE_SESSION,
                keys,
                vec![str_arg(to_node), Value::from(fence as i64), node_fence],
                &format!("session {id}"),
            )
            .await?,
        );
        if text(reply.first()).as_deref() != Some("ok") {
            return Err(session_error(id, to_node, &reply, None, fence));
        }
        if let Some(old) = text(reply.get(1)).filter(|o| o != to_node) {
            let ok = self.k_node(&old);
            self.pool
                .next()
                .srem::<i64, _, _>(&ok, id)
                .await
                .map_err(map_err(&ok))?;
        }
        Ok(())
    }

    async fn put_schedule(&self, e: &ScheduleEntry) -> Result<()> {
        // Put again for another session (or none): no longer in the old one's set.
        let before: Option<String> = self
            .pool
            .next()
            .hget(self.k_sch(&e.id), "session")
            .await
            .map_err(map_err(&format!("schedule {}", e.id)))?;
        if let Some(old) = before.filter(|o| !o.is_empty() && Some(o) != e.session.as_ref()) {
            let k = self.k_sess_sched(&old);
            self.pool
                .next()
                .srem::<i64, _, _>(&k, &e.id)
                .await
                .map_err(map_err(&k))?;
        }
        if let Some(s) = &e.session {
            let k = self.k_sess_sched(s);
            self.pool
                .next()
                .sadd::<i64, _, _>(&k, &e.id)
                .await
                .map_err(map_err(&k))?;
        }
        self.eval(
            scripts::PUT_SCHEDULE,
            vec![self.k_sch(&e.id)],
            vec![
                Value::from(e.due_ms as i64),
                str_arg(e.session.as_deref().unwrap_or("")),
                str_arg(e.kind.as_str()),
                Value::Bytes(Bytes::copy_from_slice(&e.payload)),
            ],
            &format!("schedule {}", e.id),
        )
        .await?;
        let dk = self.k_due();
        self.pool
            .next()
            .zadd::<i64, _, _>(
                &dk,
                None,
                None,
                false,
                false,
                (e.due_ms as f64, e.id.as_str()),
            )
            .await
            .map_err(map_err(&dk))?;
        Ok(())
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<ScheduleEntry>> {
        let dk = self.k_due();
        let page = (limit * 2).max(64) as i64;
        let mut offset = 0i64;
        let mut out = Vec::new();
        loop {
            let ids: Vec<String> = self
                .pool
                .next()
                .zrangebyscore(&dk, "-inf", now_ms as f64, false, Some((offset, page)))
                .await
                .map_err(map_err(&dk))?;
            let n = ids.len() as i64;
            for id in ids {
                match self.read_schedule(&id).await? {
                    Some((entry, claimed, until)) => {
                        if claimed.is_none() || until <= now_ms {
                            out.push(entry);
                            if out.len() >= limit {
                                return Ok(out);
                            }
                        }
                    }
                    None => {
                        // Deleted between the index and the entry: clean up.
                        self.pool
                            .next()
                            .zrem::<i64, _, _>(&dk, &id)
                            .await
                            .map_err(map_err(&dk))?;
                        offset -= 1;
                    }
                }
            }
            if n < page {
                return Ok(out);
            }
            offset += n;
        }
    }

    async fn claim_schedule(
        &self,
        id: &str,
        claimer: &str,
        now_ms: u64,
        claim_ms: u64,
    ) -> Result<bool> {
        let r = self
            .eval(
                scripts::CLAIM_SCHEDULE,
                vec![self.k_sch(id)],
                vec![
                    str_arg(claimer),
                    Value::from(now_ms as i64),
                    Value::from(now_ms.saturating_add(claim_ms) as i64),
                ],
                &format!("schedule {id}"),
            )
            .await?;
        Ok(num(Some(&r)) == Some(1))
    }

    async fn delete_schedule(&self, id: &str) -> Result<()> {
        let session: Option<String> = self
            .pool
            .next()
            .hget(self.k_sch(id), "session")
            .await
            .map_err(map_err(&format!("schedule {id}")))?;
        self.pool
            .next()
            .del::<i64, _>(self.k_sch(id))
            .await
            .map_err(unavailable)?;
        self.pool
            .next()
            .zrem::<i64, _, _>(self.k_due(), id)
            .await
            .map_err(unavailable)?;
        if let Some(s) = session.filter(|s| !s.is_empty()) {
            self.pool
                .next()
                .srem::<i64, _, _>(self.k_sess_sched(&s), id)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn session_schedules(&self, session: &str) -> Result<Vec<ScheduleEntry>> {
        let k = self.k_sess_sched(session);
        let ids: Vec<String> = self.pool.next().smembers(&k).await.map_err(map_err(&k))?;
        let mut out = Vec::new();
        for id in ids {
            if let Some((e, _, _)) = self.read_schedule(&id).await? {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<Option<Lease>> {
        let reply = list(
            self.eval(
                scripts::ACQUIRE_LEASE,
                vec![self.k_lease(name), self.k_lease_token(name)],
                vec![str_arg(holder), Value::from(ttl_ms.max(1) as i64)],
                &format!("lease {name}"),
            )
            .await?,
        );
        if reply.is_empty() {
            return Ok(None);
        }
        Ok(Some(Lease {
            name: name.to_string(),
            holder: holder.to_string(),
            token: num(reply.first())
                .ok_or_else(|| StoreError::Other("no token in reply".into()))?,
            expires_at_ms: num(reply.get(1)).unwrap_or(0),
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        let reply = self
            .eval(
                scripts::RENEW_LEASE,
                vec![self.k_lease(&lease.name)],
                vec![
                    str_arg(&lease.holder),
                    Value::from(lease.token as i64),
                    Value::from(ttl_ms.max(1) as i64),
                ],
                &format!("lease {}", lease.name),
            )
            .await?;
        match num(Some(&reply)) {
            Some(expires) => Ok(Lease {
                expires_at_ms: expires,
                ..lease.clone()
            }),
            None => Err(StoreError::lease_lost(lease)),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.eval(
            scripts::RELEASE_LEASE,
            vec![self.k_lease(&lease.name)],
            vec![Value::from(lease.token as i64)],
            &format!("lease {}", lease.name),
        )
        .await?;
        Ok(())
    }

    async fn read_lease(&self, name: &str) -> Result<Option<Lease>> {
        let k = self.k_lease(name);
        let h: HashMap<String, Value> = self.pool.next().hgetall(&k).await.map_err(map_err(&k))?;
        if h.is_empty() {
            return Ok(None);
        }
        let corrupt = |d: &str| StoreError::Corrupt {
            key: k.clone(),
            detail: d.into(),
        };
        Ok(Some(Lease {
            name: name.to_string(),
            holder: text(h.get("holder")).ok_or_else(|| corrupt("no holder"))?,
            token: num(h.get("token")).ok_or_else(|| corrupt("no token"))?,
            expires_at_ms: num(h.get("expires")).ok_or_else(|| corrupt("no expiry"))?,
        }))
    }

    async fn announce(&self, member: &Member, ttl_ms: u64) -> Result<()> {
        let key = ors_store::record::member_key(&member.node, &member.instance);
        self.eval(
            scripts::ANNOUNCE,
            vec![self.k_members()],
            vec![
                str_arg(&key),
                Value::from(ttl_ms as i64),
                Value::Bytes(Bytes::from(ors_store::record::encode_member(member))),
            ],
            &format!("member {key}"),
        )
        .await?;
        Ok(())
    }

    async fn members(&self) -> Result<Vec<Member>> {
        let k = self.k_members();
        let reply = list(
            self.eval(scripts::MEMBERS, vec![k.clone()], vec![], &k)
                .await?,
        );
        let mut out = Vec::new();
        for pair in reply.chunks(2) {
            let key = text(pair.first()).unwrap_or_default();
            let value = bytes_of(pair.get(1)).unwrap_or_default();
            let corrupt = || StoreError::Corrupt {
                key: format!("member {key}"),
                detail: "no heartbeat or expiry".into(),
            };
            let mut parts = value.splitn(3, |b| *b == b'|');
            let mut time = || {
                parts
                    .next()
                    .and_then(|p| std::str::from_utf8(p).ok()?.parse::<u64>().ok())
            };
            let (heartbeat_ms, expires_at_ms) = (time(), time());
            let (Some(heartbeat_ms), Some(expires_at_ms), Some(entry)) =
                (heartbeat_ms, expires_at_ms, parts.next())
            else {
                return Err(corrupt());
            };
            out.push(Member {
                heartbeat_ms,
                expires_at_ms,
                ..ors_store::record::decode_member(&key, entry)?
            });
        }
        out.sort_by(|a, b| (&a.node, &a.instance).cmp(&(&b.node, &b.instance)));
        Ok(out)
    }

    async fn withdraw(&self, node: &str, instance: &str) -> Result<()> {
        let k = self.k_members();
        self.pool
            .next()
            .hdel::<i64, _, _>(&k, ors_store::record::member_key(node, instance))
            .await
            .map_err(map_err(&k))?;
        Ok(())
    }
}
