#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod schema;

use std::sync::Arc;

use async_trait::async_trait;
use cdrs_tokio::authenticators::{
    NoneAuthenticatorProvider, SaslAuthenticatorProvider, StaticPasswordAuthenticatorProvider,
};
use cdrs_tokio::cluster::session::{Session, SessionBuilder, TcpSessionBuilder};
use cdrs_tokio::cluster::{NodeTcpConfigBuilder, TcpConnectionManager};
use cdrs_tokio::consistency::Consistency;
use cdrs_tokio::frame::message_response::ResponseBody;
use cdrs_tokio::load_balancing::RoundRobinLoadBalancingStrategy;
use cdrs_tokio::query::QueryValues;
use cdrs_tokio::statement::StatementParamsBuilder;
use cdrs_tokio::transport::TransportTcp;
use cdrs_tokio::types::IntoRustByName;
use cdrs_tokio::types::blob::Blob;
use cdrs_tokio::types::rows::Row;
use cdrs_tokio::types::value::Value;
use ors_store::{
    Fence, Lease, Member, Result, ScheduleEntry, ScheduleKind, SessionRecord, SessionStore,
    SessionWrite, StoreError, node_lease, now_ms,
};

pub use schema::{CassandraConfig, Statements};

type CqlSession = Session<
    TransportTcp,
    TcpConnectionManager,
    RoundRobinLoadBalancingStrategy<TransportTcp, TcpConnectionManager>,
>;

/// A [`SessionStore`] on Apache Cassandra. Compare-and-set and leases are lightweight
/// transactions (Paxos, `SERIAL`); other reads and writes use `QUORUM`. Lease expiry uses
/// the clients' clocks, so keep the nodes' clocks synchronised (as ORS requires too).
#[derive(Clone)]
pub struct CassandraStore {
    session: Arc<CqlSession>,
    st: Arc<Statements>,
    keyspace: String,
    shards: u32,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("cassandra: {e}"))
}

fn v<T: Into<Value>>(x: T) -> Value {
    x.into()
}

fn blob(b: &[u8]) -> Value {
    Blob::from(b.to_vec()).into()
}

fn col<T>(row: &Row, name: &str) -> Option<T>
where
    Row: IntoRustByName<T>,
{
    row.get_by_name(name).ok().flatten()
}

impl CassandraStore {
    /// Connects and, when `create_schema` is set, creates the keyspace and tables.
    pub async fn connect(cfg: &CassandraConfig) -> Result<CassandraStore> {
        let st = Statements::new(cfg)?;
        let auth: Arc<dyn SaslAuthenticatorProvider + Send + Sync> =
            match (&cfg.username, &cfg.password) {
                (Some(u), Some(p)) => Arc::new(StaticPasswordAuthenticatorProvider::new(u, p)),
                _ => Arc::new(NoneAuthenticatorProvider),
            };
        let mut contact = Vec::new();
        for c in cfg.contact_points() {
            contact.push(c.into());
        }
        let build = async {
            let node_cfg = NodeTcpConfigBuilder::new()
                .with_contact_points(contact)
                .with_authenticator_provider(auth)
                .build()
                .await
                .map_err(unavailable)?;
            TcpSessionBuilder::new(RoundRobinLoadBalancingStrategy::new(), node_cfg)
                .build()
                .await
                .map_err(unavailable)
        };
        // Session building waits forever for an unreachable cluster: bound it.
        let session = tokio::time::timeout(cfg.connect_timeout, build)
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "cassandra: no connection to {} within {:?}",
                    cfg.contact_points().join(","),
                    cfg.connect_timeout
                ))
            })??;
        let store = CassandraStore {
            session: Arc::new(session),
            st: Arc::new(st),
            keyspace: cfg.keyspace.clone(),
            shards: cfg.schedule_shards.max(1),
        };
        if cfg.create_schema {
            for stmt in store.st.create.clone() {
                store.session.query(stmt).await.map_err(unavailable)?;
            }
        }
        Ok(store)
    }

    /// The CQL this store runs.
    pub fn statements(&self) -> &Statements {
        &self.st
    }

    async fn run(&self, stmt: &str, values: Vec<Value>) -> Result<Vec<Row>> {
        let params = StatementParamsBuilder::new()
            .with_values(QueryValues::SimpleValues(values))
            .with_consistency(Consistency::Quorum)
            .with_serial_consistency(Consistency::Serial)
            .build();
        let envelope = self
            .session
            .query_with_params(stmt, params)
            .await
            .map_err(unavailable)?;
        match envelope.response_body().map_err(unavailable)? {
            ResponseBody::Result(r) => Ok(r.into_rows().unwrap_or_default()),
            _ => Ok(Vec::new()),
        }
    }

    /// Runs a lightweight transaction: `Ok(None)` when applied, `Ok(Some(row))` with the
    /// current values when not (the row has no other columns when the record is missing).
    async fn lwt(&self, stmt: &str, values: Vec<Value>) -> Result<Option<Row>> {
        let mut rows = self.run(stmt, values).await?;
        if rows.is_empty() {
            return Err(StoreError::Other(
                "lightweight transaction returned no row".into(),
            ));
        }
        let row = rows.remove(0);
        let applied: bool = row.get_r_by_name("[applied]").map_err(unavailable)?;
        Ok(if applied { None } else { Some(row) })
    }

    /// Overwrites a session's fields with values that cannot be valid. Only for testing.
    #[doc(hidden)]
    pub async fn corrupt_session_for_tests(&self, id: &str) -> Result<()> {
        let stmt = format!(
            "UPDATE {}.sessions SET version = -1 WHERE id = ?",
            self.keyspace
        );
        self.run(&stmt, vec![v(id)]).await.map(|_| ())
    }

    async fn read_schedule(&self, id: &str) -> Result<Option<(ScheduleEntry, String, u64)>> {
        let rows = self.run(&self.st.read_schedule, vec![v(id)]).await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let corrupt = |d: &str| StoreError::Corrupt {
            key: format!("schedule {id}"),
            detail: d.into(),
        };
        let due: i64 = col(r, "due").ok_or_else(|| corrupt("no due time"))?;
        let kind: String = col(r, "kind").ok_or_else(|| corrupt("no kind"))?;
        let payload: Option<Blob> = col(r, "payload");
        let session: Option<String> = col(r, "session");
        let entry = ScheduleEntry {
            id: id.to_string(),
            session: session.filter(|s| !s.is_empty()),
            due_ms: due.max(0) as u64,
            kind: ScheduleKind::parse(&kind),
            payload: payload.map(Blob::into_vec).unwrap_or_default(),
        };
        let claimed: String = col(r, "claimed_by").unwrap_or_default();
        let until: i64 = col(r, "claim_until").unwrap_or(0);
        Ok(Some((entry, claimed, until.max(0) as u64)))
    }

    /// Refuses `fence` if it is older than the newest token of `node`'s lease. Cassandra
    /// cannot make this read and a session's conditional write (another partition) one
    /// atomic step: the check is one round trip short of atomic (see the crate docs).
    async fn check_node_fence(&self, node: &str, fence: Fence) -> Result<()> {
        let rows = self
            .run(&self.st.read_lease, vec![v(node_lease(node).as_str())])
            .await?;
        let token = rows
            .first()
            .and_then(|r| col::<i64>(r, "token"))
            .unwrap_or(0);
        if (fence as i64) < token {
            return Err(StoreError::StaleFence {
                key: format!("node {node}"),
                given: fence,
                current: token as u64,
            });
        }
        Ok(())
    }

    fn session_conflict(
        &self,
        id: &str,
        row: &Row,
        expected: Option<u64>,
        fence: Fence,
    ) -> StoreError {
        let key = format!("session {id}");
        let cur_fence: Option<i64> = col(row, "fence");
        let cur_version: Option<i64> = col(row, "version");
        match (cur_version, cur_fence) {
            (Some(_), Some(f)) if (fence as i64) < f => StoreError::StaleFence {
                key,
                given: fence,
                current: f as u64,
            },
            (found, _) => StoreError::VersionConflict {
                key,
                expected,
                found: found.map(|x| x as u64),
            },
        }
    }
}

#[async_trait]
impl SessionStore for CassandraStore {
    async fn put_document(&self, hash: &str, body: &[u8]) -> Result<()> {
        self.lwt(&self.st.put_document, vec![v(hash), blob(body)])
            .await
            .map(|_| ())
    }

    async fn get_document(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        let rows = self.run(&self.st.get_document, vec![v(hash)]).await?;
        Ok(rows
            .first()
            .and_then(|r| col::<Blob>(r, "body"))
            .map(Blob::into_vec))
    }

    async fn write_session(&self, w: SessionWrite<'_>) -> Result<u64> {
        self.check_node_fence(w.node, w.fence).await?;
        // Index first; reads filter entries whose session lives elsewhere.
        self.run(&self.st.index_session, vec![v(w.node), v(w.id)])
            .await?;
        let old = self.read_session(w.id).await.ok().flatten().map(|r| r.node);
        let (conflict, version) = match w.expected_version {
            None => (
                self.lwt(
                    &self.st.create_session,
                    vec![
                        v(w.id),
                        v(w.node),
                        v(w.document),
                        v(w.fence as i64),
                        blob(w.snapshot),
                    ],
                )
                .await?,
                1,
            ),
            Some(exp) => (
                self.lwt(
                    &self.st.update_session,
                    vec![
                        v(w.node),
                        v(w.document),
                        v(exp as i64 + 1),
                        v(w.fence as i64),
                        blob(w.snapshot),
                        v(w.id),
                        v(exp as i64),
                        v(w.fence as i64),
                    ],
                )
                .await?,
                exp + 1,
            ),
        };
        if let Some(row) = conflict {
            return Err(self.session_conflict(w.id, &row, w.expected_version, w.fence));
        }
        if let Some(old) = old.filter(|o| o != w.node) {
            self.run(&self.st.unindex_session, vec![v(old), v(w.id)])
                .await?;
        }
        Ok(version)
    }

    async fn read_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let rows = self.run(&self.st.read_session, vec![v(id)]).await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let corrupt = |d: &str| StoreError::Corrupt {
            key: format!("session {id}"),
            detail: d.into(),
        };
        let version: i64 = col(r, "version").ok_or_else(|| corrupt("no version"))?;
        let fence: i64 = col(r, "fence").ok_or_else(|| corrupt("no fence"))?;
        if version < 1 || fence < 0 {
            return Err(corrupt("negative version or fence"));
        }
        Ok(Some(SessionRecord {
            id: id.to_string(),
            node: col(r, "node").ok_or_else(|| corrupt("no node"))?,
            document: col(r, "document").ok_or_else(|| corrupt("no document"))?,
            version: version as u64,
            fence: fence as u64,
            snapshot: col::<Blob>(r, "snapshot")
                .map(Blob::into_vec)
                .unwrap_or_default(),
        }))
    }

    async fn delete_session(&self, id: &str, fence: Fence) -> Result<()> {
        let Some(cur) = self.read_session(id).await? else {
            return Ok(());
        };
        self.check_node_fence(&cur.node, fence).await?;
        if let Some(row) = self
            .lwt(&self.st.delete_session, vec![v(id), v(fence as i64)])
            .await?
        {
            let current: Option<i64> = col(&row, "fence");
            if let Some(c) = current {
                return Err(StoreError::stale_fence(id, fence, c as u64));
            }
            return Ok(()); // deleted meanwhile
        }
        self.run(&self.st.unindex_session, vec![v(cur.node), v(id)])
            .await?;
        for e in self.session_schedules(id).await? {
            self.delete_schedule(&e.id).await?;
        }
        Ok(())
    }

    async fn node_sessions(&self, node: &str) -> Result<Vec<String>> {
        let rows = self.run(&self.st.node_sessions, vec![v(node)]).await?;
        let mut out = Vec::new();
        for r in rows {
            let Some(id) = col::<String>(&r, "session") else {
                continue;
            };
            match self.read_session(&id).await? {
                Some(s) if s.node == node => out.push(id),
                _ => {
                    self.run(&self.st.unindex_session, vec![v(node), v(id.as_str())])
                        .await?;
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn move_session(&self, id: &str, to_node: &str, fence: Fence) -> Result<()> {
        let cur = self
            .read_session(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("session {id}")))?;
        self.check_node_fence(to_node, fence).await?;
        ors_store::record::check_move(id, &cur.node, to_node, fence, 0, cur.fence)?;
        self.run(&self.st.index_session, vec![v(to_node), v(id)])
            .await?;
        let vals = vec![
            v(to_node),
            v(fence as i64),
            v(cur.version as i64 + 1),
            v(id),
            v(cur.version as i64),
        ];
        // The version condition keeps the record as read (and checked) above.
        if let Some(row) = self.lwt(&self.st.move_session, vals).await? {
            return Err(self.session_conflict(id, &row, Some(cur.version), fence));
        }
        if cur.node != to_node {
            self.run(&self.st.unindex_session, vec![v(cur.node), v(id)])
                .await?;
        }
        Ok(())
    }

    async fn put_schedule(&self, e: &ScheduleEntry) -> Result<()> {
        if let Some((old, _, _)) = self.read_schedule(&e.id).await? {
            self.run(
                &self.st.unindex_due,
                vec![
                    v(schema::shard_of(&e.id, self.shards)),
                    v(old.due_ms as i64),
                    v(e.id.as_str()),
                ],
            )
            .await?;
        }
        self.run(
            &self.st.put_schedule,
            vec![
                v(e.id.as_str()),
                v(e.session.as_deref().unwrap_or("")),
                v(e.due_ms as i64),
                v(e.kind.as_str()),
                blob(&e.payload),
            ],
        )
        .await?;
        self.run(
            &self.st.index_due,
            vec![
                v(schema::shard_of(&e.id, self.shards)),
                v(e.due_ms as i64),
                v(e.id.as_str()),
            ],
        )
        .await?;
        if let Some(s) = &e.session {
            self.run(
                &self.st.index_session_schedule,
                vec![v(s.as_str()), v(e.id.as_str())],
            )
            .await?;
        }
        Ok(())
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<ScheduleEntry>> {
        let mut candidates: Vec<(u64, String)> = Vec::new();
        // Claimed entries stay in the index; read enough to fill `limit` past them.
        let per_shard = (limit * 4).max(64) as i32;
        for shard in 0..self.shards as i32 {
            for r in self
                .run(&self.st.due, vec![v(shard), v(now_ms as i64), v(per_shard)])
                .await?
            {
                if let (Some(due), Some(id)) = (col::<i64>(&r, "due"), col::<String>(&r, "id")) {
                    candidates.push((due.max(0) as u64, id));
                }
            }
        }
        candidates.sort();
        let mut out = Vec::new();
        for (due, id) in candidates {
            if out.len() >= limit {
                break;
            }
            if let Some((e, claimed, until)) = self.read_schedule(&id).await?
                && e.due_ms == due
                && (claimed.is_empty() || until <= now_ms)
            {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn claim_schedule(
        &self,
        id: &str,
        claimer: &str,
        now_ms: u64,
        claim_ms: u64,
    ) -> Result<bool> {
        let until = now_ms.saturating_add(claim_ms) as i64;
        let r = self
            .lwt(
                &self.st.claim_schedule,
                vec![v(claimer), v(until), v(id), v(now_ms as i64)],
            )
            .await?;
        Ok(r.is_none())
    }

    async fn delete_schedule(&self, id: &str) -> Result<()> {
        let Some((e, _, _)) = self.read_schedule(id).await? else {
            return Ok(());
        };
        self.run(&self.st.delete_schedule, vec![v(id)]).await?;
        self.run(
            &self.st.unindex_due,
            vec![
                v(schema::shard_of(id, self.shards)),
                v(e.due_ms as i64),
                v(id),
            ],
        )
        .await?;
        if let Some(s) = &e.session {
            self.run(
                &self.st.unindex_session_schedule,
                vec![v(s.as_str()), v(id)],
            )
            .await?;
        }
        Ok(())
    }

    async fn session_schedules(&self, session: &str) -> Result<Vec<ScheduleEntry>> {
        let rows = self
            .run(&self.st.session_schedules, vec![v(session)])
            .await?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(id) = col::<String>(&r, "id")
                && let Some((e, _, _)) = self.read_schedule(&id).await?
            {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<Option<Lease>> {
        let now = now_ms();
        let expires = now.saturating_add(ttl_ms);
        let Some(row) = self
            .lwt(
                &self.st.create_lease,
                vec![v(name), v(holder), v(expires as i64)],
            )
            .await?
        else {
            return Ok(Some(Lease {
                name: name.into(),
                holder: holder.into(),
                token: 1,
                expires_at_ms: expires,
            }));
        };
        let token: i64 = col(&row, "token").unwrap_or(0);
        let cur_expires: i64 = col(&row, "expires").unwrap_or(0);
        if cur_expires as u64 > now {
            return Ok(None);
        }
        let next = token + 1;
        let vals = vec![
            v(holder),
            v(next),
            v(expires as i64),
            v(name),
            v(token),
            v(now as i64),
        ];
        Ok(match self.lwt(&self.st.take_lease, vals).await? {
            None => Some(Lease {
                name: name.into(),
                holder: holder.into(),
                token: next as u64,
                expires_at_ms: expires,
            }),
            Some(_) => None, // someone else took it first
        })
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        let now = now_ms();
        let expires = now.saturating_add(ttl_ms);
        let vals = vec![
            v(expires as i64),
            v(lease.name.as_str()),
            v(lease.token as i64),
            v(lease.holder.as_str()),
            v(now as i64),
        ];
        match self.lwt(&self.st.renew_lease, vals).await? {
            None => Ok(Lease {
                expires_at_ms: expires,
                ..lease.clone()
            }),
            Some(_) => Err(StoreError::lease_lost(lease)),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.lwt(
            &self.st.release_lease,
            vec![v(lease.name.as_str()), v(lease.token as i64)],
        )
        .await
        .map(|_| ())
    }

    async fn read_lease(&self, name: &str) -> Result<Option<Lease>> {
        let rows = self.run(&self.st.read_lease, vec![v(name)]).await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let expires: i64 = col(r, "expires").unwrap_or(0);
        if expires as u64 <= now_ms() {
            return Ok(None);
        }
        Ok(Some(Lease {
            name: name.into(),
            holder: col(r, "holder").unwrap_or_default(),
            token: col::<i64>(r, "token").unwrap_or(0) as u64,
            expires_at_ms: expires as u64,
        }))
    }

    async fn announce(&self, member: &Member, ttl_ms: u64) -> Result<()> {
        // Cassandra has no server clock to read: the entry's times are this client's.
        let now = now_ms();
        let m = member.stamped(now, ttl_ms);
        let key = ors_store::record::member_key(&m.node, &m.instance);
        let ttl_s = ttl_ms.div_ceil(1000).max(1) as i32;
        self.run(
            &self.st.announce,
            vec![
                v(key.as_str()),
                blob(&ors_store::record::encode_member(&m)),
                v(ttl_s),
            ],
        )
        .await?;
        Ok(())
    }

    async fn members(&self) -> Result<Vec<Member>> {
        let now = now_ms();
        let mut out = Vec::new();
        for r in self.run(&self.st.members, vec![]).await? {
            let key: String = col(&r, "member").unwrap_or_default();
            let body = col::<Blob>(&r, "body")
                .map(Blob::into_vec)
                .unwrap_or_default();
            let m = ors_store::record::decode_member(&key, &body)?;
            if m.expires_at_ms > now {
                out.push(m);
            }
        }
        out.sort_by(|a, b| (&a.node, &a.instance).cmp(&(&b.node, &b.instance)));
        Ok(out)
    }

    async fn withdraw(&self, node: &str, instance: &str) -> Result<()> {
        let key = ors_store::record::member_key(node, instance);
        self.run(&self.st.withdraw, vec![v(key.as_str())]).await?;
        Ok(())
    }
}
