#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod clock;
mod memory;
pub mod record;
#[cfg(feature = "testkit")]
pub mod testkit;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use clock::now_ms;
pub use memory::MemoryStore;

/// A fencing token. Tokens come from [`SessionStore::acquire_lease`] and only grow. A
/// session write for node `N` carrying a token lower than the newest token issued for
/// `N`'s lease ([`node_lease`]) is refused, so a process that lost its node's lease can
/// write nothing more for that node, whatever it believes and however late its writes
/// arrive; a token lower than the one that last wrote the same record is refused too.
pub type Fence = u64;

/// The name of node `node`'s lease: its holder is the node's primary, and the tokens it
/// issues fence every session write for the node.
pub fn node_lease(node: &str) -> String {
    format!("node:{node}")
}

/// What can go wrong. Every backend maps its failures onto these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A conditional write found another version (`None`: the record does not exist).
    #[error("version conflict on {key}: expected {expected:?}, found {found:?}")]
    VersionConflict {
        /// The record (`session <id>`, ...).
        key: String,
        /// The version the writer expected.
        expected: Option<u64>,
        /// The version found.
        found: Option<u64>,
    },
    /// The write carried a fencing token older than the record's (`key` = `session <id>`)
    /// or than the newest token of the node's lease (`key` = `node <id>`).
    #[error("stale fencing token on {key}: {given} is older than {current}")]
    StaleFence {
        /// The record.
        key: String,
        /// The token the write carried.
        given: Fence,
        /// The newer token: the record's last writer's, or the node lease's.
        current: Fence,
    },
    #[error("{0} not found")]
    /// The named thing does not exist (where that is an error).
    NotFound(String),
    /// The lease is no longer held with that token (expired and taken, or released).
    #[error("lease {name} is no longer held by {holder} with token {token}")]
    LeaseLost {
        /// The lease's name.
        name: String,
        /// Who thought they held it.
        holder: String,
        /// The token they held it with.
        token: Fence,
    },
    /// Stored bytes that cannot be decoded.
    #[error("corrupt data in {key}: {detail}")]
    Corrupt {
        /// The record.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The store cannot be reached (connection refused, timed out, ...). Retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("invalid argument: {0}")]
    /// The caller passed something the store cannot take.
    Invalid(String),
    #[error("store error: {0}")]
    /// Anything else the backend reports.
    Other(String),
}

impl StoreError {
    /// A write to session `id` carrying fence `given`, older than the record's `current`.
    pub fn stale_fence(id: &str, given: Fence, current: Fence) -> StoreError {
        StoreError::StaleFence {
            key: format!("session {id}"),
            given,
            current,
        }
    }
}

impl StoreError {
    /// `lease` is no longer held with its token.
    pub fn lease_lost(lease: &Lease) -> StoreError {
        StoreError::LeaseLost {
            name: lease.name.clone(),
            holder: lease.holder.clone(),
            token: lease.token,
        }
    }
}

/// A store call's result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A session's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's id (`<node>-<unique>`).
    pub id: String,
    /// The node that owns (runs) the session.
    pub node: String,
    /// Content hash of the session's document (see [`SessionStore::put_document`]).
    pub document: String,
    /// Assigned by the store: 1 on creation, +1 on every write.
    pub version: u64,
    /// Token of the last writer.
    pub fence: Fence,
    /// Opaque engine snapshot.
    pub snapshot: Vec<u8>,
}

/// A conditional session write.
#[derive(Debug, Clone, Copy)]
pub struct SessionWrite<'a> {
    /// The session's id.
    pub id: &'a str,
    /// The node that owns it (indexed for recovery).
    pub node: &'a str,
    /// Content hash of its document.
    pub document: &'a str,
    /// The opaque engine snapshot.
    pub snapshot: &'a [u8],
    /// `None`: create, the session must not exist. `Some(v)`: replace version `v`.
    pub expected_version: Option<u64>,
    /// The writer's fencing token.
    pub fence: Fence,
}

/// What a schedule entry does when it fires (the server interprets it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleKind {
    /// A delayed `<send>` of a session.
    DelayedSend,
    /// A session start at `idealtime`.
    StartSession,
    /// Termination of a session that ran too long.
    TerminateSession,
    /// An event from one session to another, until it is delivered.
    DeliverEvent,
    /// A kind of a newer or foreign writer, kept as written.
    Other(String),
}

impl ScheduleKind {
    /// The stored name of the kind.
    pub fn as_str(&self) -> &str {
        match self {
            ScheduleKind::DelayedSend => "delayed-send",
            ScheduleKind::StartSession => "start-session",
            ScheduleKind::TerminateSession => "terminate-session",
            ScheduleKind::DeliverEvent => "deliver-event",
            ScheduleKind::Other(s) => s,
        }
    }
    /// The kind a stored name stands for.
    pub fn parse(s: &str) -> ScheduleKind {
        match s {
            "delayed-send" => ScheduleKind::DelayedSend,
            "start-session" => ScheduleKind::StartSession,
            "terminate-session" => ScheduleKind::TerminateSession,
            "deliver-event" => ScheduleKind::DeliverEvent,
            other => ScheduleKind::Other(other.to_string()),
        }
    }
}

/// A timed entry that exactly one of several claimers fires (see [`SessionStore::claim_schedule`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleEntry {
    /// Unique across the store.
    pub id: String,
    /// The session it belongs to, if any (deleted with it).
    pub session: Option<String>,
    /// When it is due, in milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// What it does.
    pub kind: ScheduleKind,
    /// Its parameters, encoded by the scheduler that wrote it.
    pub payload: Vec<u8>,
}

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease's name (`node:<id>` for a node's lease).
    pub name: String,
    /// Who holds it (`<node>:<pid>`).
    pub holder: String,
    /// Grows with every acquisition, across expiries and releases.
    pub token: Fence,
    /// Milliseconds since the Unix epoch, by the store's clock.
    pub expires_at_ms: u64,
}

/// One process of the cluster as it last announced itself ([`SessionStore::announce`]):
/// the membership other processes find nodes by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node it serves.
    pub node: String,
    /// Its name among the node's processes (unique within the node).
    pub instance: String,
    /// `primary` or `backup`, as it saw itself when it announced.
    pub role: String,
    /// Where the process itself is reached.
    pub advertise_url: String,
    /// Where its node is reached from outside (the node's load balancer).
    pub external_url: String,
    /// Its data center (empty if not configured).
    pub data_center: String,
    /// When it last announced itself, in milliseconds since the Unix epoch (set by the
    /// store; by the store's clock where the backend has one).
    pub heartbeat_ms: u64,
    /// Until when the entry counts without another announcement (set by the store).
    pub expires_at_ms: u64,
}

impl Member {
    /// The entry as a store keeps it after an announcement at `now_ms` for `ttl_ms`.
    pub fn stamped(&self, now_ms: u64, ttl_ms: u64) -> Member {
        Member {
            heartbeat_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            ..self.clone()
        }
    }
}

/// The session store. Every backend implements this and passes the suite of the `testkit` feature.
///
/// Guarantees every implementation gives:
/// - A call that returned `Ok` is durable (as durable as the backend is configured to be).
/// - Conditional writes are atomic: of many racing writers with the same expected version,
///   exactly one wins; the others get [`StoreError::VersionConflict`].
/// - A session write (create, replace, delete, move) whose fence is older than the newest
///   token issued for its node's lease ([`node_lease`]: the record's node for a delete,
///   the new node for a write or move), or older than the record's, is refused
///   ([`StoreError::StaleFence`]). Backends that cannot check the node's token in the
///   same atomic step as the write say so in their docs.
/// - Of many racing [`SessionStore::claim_schedule`] calls for one entry, exactly one
///   returns `true` (until the claim expires).
/// - Lease tokens only grow.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Whether this store's futures may be awaited on any tokio runtime, including a
    /// current-thread runtime that is polled only between other work: true when every
    /// call only hands its work to threads the store owns and waits for the answer (the
    /// embedded store's commit thread and blocking pool; the in-memory store). A caller
    /// may then skip a hop to another runtime on its hot path. The default, `false`, is
    /// right for network clients, whose connections are driven by the runtime that made
    /// them (and a connection made inside a call would belong to the caller's runtime).
    fn runtime_independent(&self) -> bool {
        false
    }

    /// Stores a document under its content hash. Idempotent.
    async fn put_document(&self, hash: &str, body: &[u8]) -> Result<()>;
    /// The document stored under `hash`, if any.
    async fn get_document(&self, hash: &str) -> Result<Option<Vec<u8>>>;

    /// Creates or replaces a session (see [`SessionWrite`]) and indexes it under its node.
    /// Returns the new version.
    async fn write_session(&self, w: SessionWrite<'_>) -> Result<u64>;
    /// Several writes at once, each checked and applied on its own (one failing does not
    /// stop the others); results in order. Backends that can commit many writes in one
    /// durable step (group commit) override this; the default writes one by one.
    async fn write_sessions(&self, writes: &[SessionWrite<'_>]) -> Vec<Result<u64>> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(self.write_session(*w).await);
        }
        out
    }
    /// The session's record, if it exists.
    async fn read_session(&self, id: &str) -> Result<Option<SessionRecord>>;
    /// Removes a session's record, index entry and schedule entries. Deleting a missing
    /// session is not an error.
    async fn delete_session(&self, id: &str, fence: Fence) -> Result<()>;
    /// The sessions a node owns.
    async fn node_sessions(&self, node: &str) -> Result<Vec<String>>;
    /// A page of [`SessionStore::node_sessions`]: at most `limit` ids after `after`, in
    /// id order (for listings over a million sessions). The default reads the whole index
    /// and sorts it; backends with an ordered index override it with a range read.
    async fn node_sessions_page(
        &self,
        node: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut ids = self.node_sessions(node).await?;
        ids.retain(|id| after.is_none_or(|a| id.as_str() > a));
        ids.sort_unstable();
        ids.truncate(limit);
        Ok(ids)
    }
    /// The sessions a node owns with their versions (a standby checks what it holds
    /// against them). The default reads each record; backends override it with a cheaper
    /// read.
    async fn node_session_versions(&self, node: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for id in self.node_sessions(node).await? {
            if let Some(r) = self.read_session(&id).await?
                && r.node == node
            {
                out.push((id, r.version));
            }
        }
        Ok(out)
    }
    /// Moves a session to another node (for a takeover).
    async fn move_session(&self, id: &str, to_node: &str, fence: Fence) -> Result<()>;

    /// Adds or replaces a schedule entry.
    async fn put_schedule(&self, entry: &ScheduleEntry) -> Result<()>;
    /// Up to `limit` entries due at `now_ms` that are not claimed (or whose claim
    /// expired), earliest first.
    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<ScheduleEntry>>;
    /// Claims an entry for `claim_ms`: `true` for exactly one of racing claimers. The
    /// winner fires the entry and deletes it; if it dies first, the claim expires and the
    /// entry is due again.
    async fn claim_schedule(
        &self,
        id: &str,
        claimer: &str,
        now_ms: u64,
        claim_ms: u64,
    ) -> Result<bool>;
    /// Removes an entry (removing a missing one is not an error).
    async fn delete_schedule(&self, id: &str) -> Result<()>;
    /// The entries of one session.
    async fn session_schedules(&self, session: &str) -> Result<Vec<ScheduleEntry>>;

    /// Acquires a lease if it is free or expired; `None` while someone else holds it.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<Option<Lease>>;
    /// Extends a lease still held with this token; [`StoreError::LeaseLost`] otherwise.
    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease>;
    /// Gives a lease up (a no-op if it is no longer held with this token).
    async fn release_lease(&self, lease: &Lease) -> Result<()>;
    /// The current holder, if the lease is held and not expired.
    async fn read_lease(&self, name: &str) -> Result<Option<Lease>>;

    /// Records or refreshes a process's membership entry (keyed by node and instance) for
    /// `ttl_ms`; the store sets `heartbeat_ms` and `expires_at_ms`, ignoring the values
    /// given.
    async fn announce(&self, member: &Member, ttl_ms: u64) -> Result<()>;
    /// Every membership entry that has not expired, ordered by node and instance.
    async fn members(&self) -> Result<Vec<Member>>;
    /// Removes a process's membership entry (a graceful stop); a no-op if there is none.
    async fn withdraw(&self, node: &str, instance: &str) -> Result<()>;
}
