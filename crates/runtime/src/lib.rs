#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
//!
//! Sessions are single-owner actors on a fixed set of worker threads (the JS engine is not
//! `Send`); a session lives on worker `hash(id) % workers`. Each worker drives an
//! [`ors_scxml::host::SessionHost`] (the sans-IO host shared with `ors run`): it takes all
//! the commands waiting for it, runs them, writes every changed session in one
//! `write_sessions` call (group commit), and only then acknowledges and releases what the
//! batch produced, so no acknowledgement precedes its durable write.
//!
//! Delayed `<send>`s, scheduled starts and lifetime limits are jobs of `ors-scheduler`,
//! fired by the runtime's `Fire` implementation (`jobs.rs`). On start-up the node takes its lease (the
//! fencing token for every session write), reloads the sessions it owns and re-arms
//! nothing by hand: their timers are already in the store.

mod basichttp;
mod config;
mod documents;
mod error;
mod idempotency;
mod inspect;
mod jobs;
mod moves;
mod nodes;
pub mod outbound;
mod outbox;
mod ownership;
pub use moves::{
    ADOPT_PATH, AdoptAnswer, AdoptRequest, DRAIN_PATH, DrainReport, DrainRequest, RebalanceReport,
};
pub use outbox::Failure as DeliveryFailure;
mod persist;
mod quarantine;
mod recovery;
mod standby;
pub mod trace_context;
mod worker;
mod workers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ors_cluster::{Cluster, Identity, Role, Roles, Timing};
use ors_scheduler::{Job, ScheduledStart, Scheduler, SchedulerConfig};
use ors_scxml::Event;
use ors_store::SessionStore;
use ownership::Place;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::Instrument as _;

pub use basichttp::receive as basichttp_event;
pub use config::RuntimeConfig;
pub use error::RuntimeError;
pub use inspect::{Happening, Inspection, PendingSend, SessionWatch, What};
pub use ors_cluster::Role as NodeRole;
/// Test hooks (`ORS_FAILPOINT`), for crates that add their own crash points.
pub use outbox::crash_at;
pub use standby::{
    ChangesAnswer, NEXT as CHANGES_NEXT, RESYNC as CHANGES_RESYNC, TERM as CHANGES_TERM,
};

use documents::Documents;
use worker::Command;
use workers::Workers;

/// What `/query` shows.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    /// The session's id.
    pub sessionid: String,
    /// Active atomic states, sorted (the final ones once done).
    pub configuration: Vec<String>,
    /// Every active state in document order.
    pub active_states: Vec<String>,
    /// The datamodel's variables (`null` once the session is done).
    pub datamodel: Value,
    /// Whether the session has ended.
    pub done: bool,
    /// Why the session is quarantined (it crashed the process again and again and is
    /// never run again; its stored state is kept). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
}

/// One page of the cluster's sessions, from the store (see [`Runtime::list_sessions`]).
#[derive(Debug, Clone, Serialize)]
pub struct SessionPage {
    /// Sessions in id order: `{"sessionid", "node"}`.
    pub sessions: Vec<ListedSession>,
    /// The id to pass as `after` for the next page (`None`: this was the last one).
    pub next: Option<String>,
}

/// A session in a [`SessionPage`].
#[derive(Debug, Clone, Serialize)]
pub struct ListedSession {
    /// Its id.
    pub sessionid: String,
    /// The node that owns it, as the store says.
    pub node: String,
}

/// A session as the store holds it, for lists (see [`Runtime::session_summary`]).
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    /// Its id.
    pub sessionid: String,
    /// The node that owns it.
    pub node: String,
    /// Its document's `name`, or the document's source when it has none.
    pub document: String,
    /// Every active state, in document order, as of its last durable write.
    pub active_states: Vec<String>,
    /// Whether it is quarantined (never run again).
    pub quarantined: bool,
}

/// A `<response>` to a `/request`.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseData {
    /// `true` unless the document said `type="failure"` (or similar).
    pub positive: bool,
    /// The document's `resultcode`, if any.
    pub resultcode: Option<String>,
    /// The `<ors:param>`s.
    pub params: serde_json::Map<String, Value>,
}

/// What a session start needs.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// The document: a path or `file:` URL inside the documents directory, or an
    /// `http(s)://` URL.
    pub src: String,
    /// Values for `<data>` items of the same id.
    pub params: Vec<(String, Value)>,
    /// Epoch milliseconds: a scheduled start.
    pub idealtime: Option<u64>,
    /// The client's `Idempotency-Key`: the session's id is derived from it (and `src`),
    /// so a retried start finds the session of the first attempt instead of starting
    /// another.
    pub idempotency_key: Option<String>,
}

/// `/request` calls waiting for their session's `<response>`, by request id.
#[derive(Default)]
struct PendingRequests(Mutex<HashMap<String, oneshot::Sender<ResponseData>>>);

impl PendingRequests {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<ResponseData>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn wait(&self, id: &str) -> oneshot::Receiver<ResponseData> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.to_string(), tx);
        rx
    }
    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
    /// Answers a waiting request; `false` if nobody waits for it (any more).
    fn answer(&self, id: &str, response: ResponseData) -> bool {
        match self.lock().remove(id) {
            Some(tx) => tx.send(response).is_ok(),
            None => false,
        }
    }
}

/// Sessions that ended recently, so `/query` can still tell their final configuration.
struct FinishedSessions {
    retention: Duration,
    ended: Mutex<HashMap<String, (Instant, Vec<String>)>>,
}

impl FinishedSessions {
    fn record(&self, sid: &str, configuration: Vec<String>) {
        let mut f = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        let keep = self.retention;
        f.retain(|_, (at, _)| at.elapsed() < keep);
        f.insert(sid.to_string(), (Instant::now(), configuration));
    }

    fn get(&self, sid: &str) -> Option<Vec<String>> {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sid)
            .filter(|(at, _)| at.elapsed() < self.retention)
            .map(|(_, conf)| conf.clone())
    }
}

/// What the runtime's parts share: set up once by [`Runtime::start`].
pub(crate) struct Shared {
    cfg: RuntimeConfig,
    store: Arc<dyn SessionStore>,
    docs: Documents,
    workers: Workers,
    /// The node lease's fencing token, carried by every session write.
    fence: AtomicU64,
    /// Set once this process is primary and its fencing token is in `fence`; cleared when
    /// it steps down (the coordinator's role changes before the runtime has acted on it).
    primary: std::sync::atomic::AtomicBool,
    /// The coordinator, set once it runs (see [`Shared::holds_lease`]).
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    requests: PendingRequests,
    finished: FinishedSessions,
    /// Who watches which session (the inspector's live pages).
    watchers: Arc<inspect::Watchers>,
    recovery: recovery::Recovery,
    /// This process's changes, for a hot standby that follows it (when primary).
    feed: standby::Feed,
    /// The node's sessions as followed from the primary (when a hot-standby backup).
    standby: standby::Standby,
    /// The workers' breadcrumb file (see `quarantine.rs`), if there is a state directory.
    breadcrumbs: Option<Arc<std::fs::File>>,
    /// Sessions whose code ran when this instance's previous process died: a crash is
    /// counted against each when this process becomes primary.
    suspects: Mutex<Vec<String>>,
    scheduler: ors_scheduler::Waker,
    /// The BasicHTTP processor's client.
    http: reqwest::Client,
    /// The client for other processes of the cluster (events between nodes, a hot
    /// standby's polls): it follows no redirect on its own, so the peer token is never
    /// sent anywhere but to a peer (see [`Shared::peer_request`]).
    peer_http: reqwest::Client,
    next_id: AtomicU64,
    /// Which sessions run here beyond those whose id names this node (`ownership.rs`).
    ownership: ownership::Ownership,
}

impl Shared {
    fn fence(&self) -> u64 {
        self.fence.load(Ordering::SeqCst)
    }

    /// `<node>-<time><counter>`: unique per node, and any node can tell the owner.
    fn new_session_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{}-{:x}{:06x}", self.cfg.node_id, t, n & 0xff_ffff)
    }

    fn is_primary(&self) -> bool {
        self.primary.load(Ordering::SeqCst)
    }

    /// The advertise URL of the node's primary, as the coordinator last learned it.
    fn primary_url(&self) -> Option<String> {
        let primary = self.cluster.get()?.primary()?;
        Some(primary.advertise_url).filter(|u| !u.is_empty())
    }

    /// Checked before a batch is acknowledged: this process is primary and its lease
    /// surely still holds. After a pause past the lease (SIGSTOP, ...) the batch's writes
    /// may have gone through, but no `200` is given for a node this process may no longer
    /// serve.
    fn holds_lease(&self) -> bool {
        self.is_primary() && self.cluster.get().is_none_or(|c| c.holds_lease())
    }

    /// A request to another process of the cluster, with this process's peer token when
    /// the API requires one.
    fn peer_request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.peer_http.request(method, url);
        match &self.cfg.peer_token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// The store fenced a write carrying `token`: another process holds the node's lease.
    fn deposed(&self, token: u64) {
        if let Some(c) = self.cluster.get() {
            c.fenced(token);
        }
    }

    /// `Ok` when this process serves its node's sessions (it is the primary).
    fn serving(&self) -> Result<(), RuntimeError> {
        if self.holds_lease() {
            return Ok(());
        }
        Err(RuntimeError::NotPrimary {
            primary: self.primary_url(),
        })
    }

    fn check_owner(&self, sid: &str) -> Result<(), RuntimeError> {
        self.serving()?;
        match self.ownership.locate(sid) {
            Some(Place::Here) => Ok(()),
            Some(Place::Moving) => Err(RuntimeError::Moving(sid.into())),
            Some(Place::Node(node)) => Err(RuntimeError::WrongNode {
                session: sid.into(),
                node,
            }),
            None => Err(RuntimeError::NotFound(sid.into())),
        }
    }

    /// Where `sid` runs and that node's URL. The id's node, or what this process learned,
    /// is tried first; when that node has no primary (a drained node that was stopped),
    /// the store's record says where the session is now. `Ok(None)` for the URL: that node
    /// has no primary either.
    async fn whereabouts(&self, sid: &str) -> Result<Whereabouts, RuntimeError> {
        let node = match self.ownership.locate(sid) {
            None => return Err(RuntimeError::NotFound(sid.into())),
            Some(Place::Here) => return Ok(Whereabouts::Here),
            Some(Place::Moving) => return Ok(Whereabouts::Moving),
            Some(Place::Node(node)) => node,
        };
        // Right after a takeover, the sessions moved to this node are known only once
        // the node's index has been listed: until then the record decides, or a request
        // for one would go to the node its id names and be sent back here.
        let recovering = self.recovery.pending() > 0;
        if !recovering && let Some(url) = self.node_url(&node).await? {
            return Ok(Whereabouts::Node {
                node,
                url: Some(url),
            });
        }
        let Some(rec) = self.store.read_session(sid).await? else {
            let url = self.node_url(&node).await?;
            return Ok(Whereabouts::Node { node, url });
        };
        self.ownership.learn(sid, &rec.node);
        if rec.node == self.cfg.node_id {
            return Ok(Whereabouts::Here);
        }
        let url = self.node_url(&rec.node).await?;
        Ok(Whereabouts::Node {
            node: rec.node,
            url,
        })
    }

    async fn node_url(&self, node: &str) -> Result<Option<String>, RuntimeError> {
        match self.cluster.get() {
            Some(c) => Ok(c.node_url(node).await?),
            None => Ok(None),
        }
    }

    /// The BasicHTTP location of a session of this server.
    fn basichttp_location(&self, sid: &str) -> String {
        format!(
            "{}/scxml/session/{sid}/basichttp",
            self.cfg.external_url.trim_end_matches('/')
        )
    }
}

/// The id of the session a start of `src` with `Idempotency-Key` `key` creates on node
/// `node` (the same on every process: a retried start finds the first one's session).
pub fn keyed_session_id(node: &str, key: &str, src: &str) -> String {
    idempotency::session_id(node, key, src)
}

/// Node ids are letters, digits and `_` (so `<node>-<unique>` splits at the last `-`).
pub(crate) fn valid_node_id(node: &str) -> bool {
    !node.is_empty() && node.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The node a session id names (`<node>-<unique>`), if it is well formed (a node id is
/// letters, digits and `_`, so anything else names no session of any node).
pub fn owner_node(sid: &str) -> Option<&str> {
    sid.rsplit_once('-')
        .map(|(node, _)| node)
        .filter(|node| valid_node_id(node))
}

/// Where a session runs, from this process's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whereabouts {
    /// This process serves it.
    Here,
    /// This node is moving it to another right now: retry shortly.
    Moving,
    /// Another node runs it.
    Node {
        /// That node.
        node: String,
        /// Its primary's external URL; `None` when it has no primary now.
        url: Option<String>,
    },
}

/// A handle to the running runtime; cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    scheduler: Arc<Mutex<Option<Scheduler>>>,
    /// The hot standby's follower task, if configured.
    follower: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// What the runtime does when the cluster coordinator changes this process's role.
struct RuntimeRoles {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl Roles for RuntimeRoles {
    async fn became_primary(&self, token: u64) {
        let shared = &self.shared;
        shared.fence.store(token, Ordering::SeqCst);
        // Before anything can run again (requests, timers, recovery): count the crash
        // against the sessions that ran when this instance's previous process died (a
        // handful at most: one per worker).
        let suspects =
            std::mem::take(&mut *shared.suspects.lock().unwrap_or_else(|p| p.into_inner()));
        for sid in suspects {
            quarantine::strike(shared, &sid).await;
        }
        shared.primary.store(true, Ordering::SeqCst);
        // Recovery: every session this node owns is reloaded (and told session.recovered
        // where its document asks); requests meanwhile load sessions on demand. The
        // node's timers fire from here on (the scheduler's `owns` asks `is_primary`).
        // The listing runs on its own task: the coordinator's task, which called this,
        // must go on renewing the lease however many sessions there are.
        shared.recovery.begin();
        // Whatever this process knew of moves is rebuilt from the node's index below.
        shared.ownership.reset();
        let shared = shared.clone();
        tokio::spawn(async move {
            match shared
                .store
                .node_session_versions(&shared.cfg.node_id)
                .await
            {
                Ok(listed) => {
                    tracing::info!(
                        sessions = listed.len(),
                        held = shared.standby.len(),
                        node = %shared.cfg.node_id,
                        "recovering sessions"
                    );
                    shared.recovery.add(listed.len() as u64);
                    // What the standby holds beyond the listed sessions is stale.
                    shared.standby.begin_resync();
                    for (sid, version) in &listed {
                        shared.standby.confirm(sid, *version);
                    }
                    shared.standby.end_resync();
                    for (sid, version) in listed {
                        // Sessions moved here keep their ids, which name other nodes.
                        shared.ownership.adopt(&sid);
                        let cmd = Command::Recover {
                            sid: sid.clone(),
                            version,
                        };
                        shared.workers.send_internal(&sid, cmd);
                    }
                }
                // They load on demand.
                Err(e) => {
                    shared.standby.clear();
                    tracing::error!(error = %e, "cannot list this node's sessions to recover them")
                }
            }
            shared.recovery.one_done();
        });
    }

    async fn stepped_down(&self, _reason: &str) {
        self.shared.primary.store(false, Ordering::SeqCst);
        self.shared.workers.broadcast_internal(|| Command::Evict);
    }
}

fn now_ms() -> u64 {
    ors_store::now_ms()
}

impl Runtime {
    /// Takes the node lease, starts the workers and the scheduler, and begins recovering
    /// the sessions this node owns. Must be called inside a multi-threaded tokio runtime.
    pub async fn start(
        cfg: RuntimeConfig,
        store: Arc<dyn SessionStore>,
    ) -> Result<Runtime, RuntimeError> {
        if !valid_node_id(&cfg.node_id) {
            return Err(RuntimeError::BadRequest(format!(
                "node id \"{}\" must be letters, digits and _",
                cfg.node_id
            )));
        }
        // reqwest needs a process-wide TLS crypto provider; install ring's unless the
        // embedding program chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let n = if cfg.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            cfg.workers
        };
        let (workers, inboxes) = Workers::new(n, cfg.worker_queue);
        let (waker, wakes) = ors_scheduler::waker();
        let finished_retention = cfg.finished_retention;
        let docs = Documents::new(
            store.clone(),
            cfg.documents_dir.clone(),
            cfg.max_document_bytes,
            cfg.fetch_timeout,
            cfg.outbound.clone(),
        );
        // Poison sessions: what ran when this instance's previous process died.
        let (breadcrumbs, suspects) = match &cfg.state_dir {
            Some(dir) => {
                let path = quarantine::path(dir, &cfg.node_id, &cfg.instance);
                let suspects = quarantine::take_suspects(&path);
                if !suspects.is_empty() {
                    tracing::warn!(
                        ?suspects,
                        "the previous process of this instance died while these sessions ran"
                    );
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| {
                        RuntimeError::Internal(format!("cannot open {}: {e}", path.display()))
                    })?;
                (Some(Arc::new(file)), suspects)
            }
            None => (None, Vec::new()),
        };
        let shared = Arc::new(Shared {
            http: cfg
                .outbound
                .client_builder()
                .timeout(cfg.fetch_timeout)
                .build()
                .map_err(|e| RuntimeError::Internal(e.to_string()))?,
            peer_http: reqwest::Client::builder()
                .timeout(cfg.fetch_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| RuntimeError::Internal(e.to_string()))?,
            ownership: ownership::Ownership::new(&cfg.node_id),
            cfg,
            store,
            docs,
            workers,
            fence: AtomicU64::new(0),
            primary: std::sync::atomic::AtomicBool::new(false),
            cluster: std::sync::OnceLock::new(),
            requests: PendingRequests::default(),
            recovery: Default::default(),
            feed: Default::default(),
            standby: Default::default(),
            breadcrumbs,
            suspects: Mutex::new(suspects),
            finished: FinishedSessions {
                retention: finished_retention,
                ended: Mutex::default(),
            },
            watchers: Default::default(),
            scheduler: waker.clone(),
            next_id: AtomicU64::new(0),
        });
        let main = tokio::runtime::Handle::current();
        let mut threads = Vec::new();
        for (i, inbox) in inboxes.into_iter().enumerate() {
            let s = shared.clone();
            let main = main.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ors-worker-{i}"))
                    .spawn(move || worker::run(s, i, inbox, main))
                    .map_err(|e| RuntimeError::Internal(e.to_string()))?,
            );
        }
        let rt = Runtime {
            shared: shared.clone(),
            threads: Arc::new(Mutex::new(threads)),
            scheduler: Arc::default(),
            follower: Arc::default(),
        };
        let scheduler = Scheduler::spawn(
            shared.store.clone(),
            Arc::new(jobs::JobRunner::new(rt.clone())),
            SchedulerConfig {
                claimer: format!("{}/{}", shared.cfg.node_id, shared.cfg.instance),
                poll: shared.cfg.schedule_poll,
                // A claim of a primary that died comes back after this (2 to 5 s): a
                // takeover must not wait long for the dead primary's timers. Firing twice
                // is harmless (jobs are idempotent); a claim only keeps a slow firing
                // from being started a second time.
                claim: (shared.cfg.lease_ttl * 2)
                    .clamp(Duration::from_secs(2), Duration::from_secs(5)),
                ..SchedulerConfig::default()
            },
            waker,
            wakes,
        );
        *rt.scheduler.lock().unwrap_or_else(|p| p.into_inner()) = Some(scheduler);
        let cfg = &shared.cfg;
        let identity = Identity {
            node: cfg.node_id.clone(),
            instance: cfg.instance.clone(),
            advertise_url: if cfg.advertise_url.is_empty() {
                cfg.external_url.clone()
            } else {
                cfg.advertise_url.clone()
            },
            external_url: cfg.external_url.clone(),
            data_center: cfg.data_center.clone(),
        };
        let roles = Arc::new(RuntimeRoles {
            shared: shared.clone(),
        });
        let cluster = Cluster::start(
            shared.store.clone(),
            identity,
            Timing::for_ttl(cfg.lease_ttl),
            roles,
        )
        .await;
        if cluster.role() == Role::Backup {
            let primary = cluster.primary().map(|p| p.instance);
            tracing::info!(node = %cfg.node_id, instance = %cfg.instance, ?primary, "this process is a backup");
        }
        let _ = shared.cluster.set(Arc::new(cluster));
        if cfg.hot_standby {
            let task = tokio::spawn(standby::follow(shared.clone()));
            *rt.follower.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        Ok(rt)
    }

    /// Whether this process is its node's primary (serves it) or a backup.
    pub fn role(&self) -> NodeRole {
        if self.shared.is_primary() {
            NodeRole::Primary
        } else {
            NodeRole::Backup
        }
    }

    /// Where requests for the sessions of node `node` go: that node's external URL, from
    /// the cluster's membership (`None`: the node has no live primary now).
    pub async fn node_url(&self, node: &str) -> Result<Option<String>, RuntimeError> {
        self.shared.node_url(node).await
    }

    /// Where session `sid` runs, and the URL of that node's primary (see
    /// `ownership.rs`: the id's node is a hint; the store's record is the truth when the
    /// hinted node has no primary).
    pub async fn whereabouts(&self, sid: &str) -> Result<Whereabouts, RuntimeError> {
        self.shared.whereabouts(sid).await
    }

    /// A hot standby's poll of this primary's changes (`GET /cluster/changes`): from
    /// number `since` of term `term`, waiting up to a second for some.
    pub async fn changes(
        &self,
        term: u64,
        since: u64,
    ) -> Result<standby::ChangesAnswer, RuntimeError> {
        self.shared.serving()?;
        let current = self.shared.fence();
        Ok(self
            .shared
            .feed
            .poll(term, current, since, standby::POLL_WAIT, now_ms())
            .await)
    }

    /// Sessions a hot-standby backup holds in memory (0 on a primary or a warm backup).
    pub fn following(&self) -> usize {
        self.shared.standby.len()
    }

    /// Sessions of the node still to be loaded after this process became primary.
    pub fn recovery_pending(&self) -> u64 {
        self.shared.recovery.pending()
    }

    /// The cluster's live processes, from the store's membership.
    pub async fn members(&self) -> Result<Arc<Vec<ors_store::Member>>, RuntimeError> {
        match self.shared.cluster.get() {
            Some(c) => Ok(c.members().await?),
            None => Ok(Arc::default()),
        }
    }

    /// A page of the sessions the store holds, over every node (or only `node`), in id
    /// order after `after`, at most `limit`. Reads the store's per-node index, so any
    /// node of a cluster lists every session: a page of each node's
    /// ([`SessionStore::node_sessions_page`]: a range read on the embedded store, the
    /// whole index on stores without an ordered one), merged.
    pub async fn list_sessions(
        &self,
        node: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SessionPage, RuntimeError> {
        let mut nodes: Vec<String> = match node {
            Some(n) => vec![n.to_string()],
            None => {
                let mut v: Vec<String> = self
                    .members()
                    .await?
                    .iter()
                    .map(|m| m.node.clone())
                    .collect();
                v.push(self.shared.cfg.node_id.clone());
                v
            }
        };
        nodes.sort();
        nodes.dedup();
        let limit = limit.max(1);
        let mut all: Vec<ListedSession> = Vec::new();
        for n in &nodes {
            // One more than the page: whether there is a next page.
            for id in self
                .shared
                .store
                .node_sessions_page(n, after, limit + 1)
                .await?
            {
                all.push(ListedSession {
                    sessionid: id,
                    node: n.clone(),
                });
            }
        }
        all.sort_by(|a, b| a.sessionid.cmp(&b.sessionid));
        let next = (all.len() > limit).then(|| all[limit - 1].sessionid.clone());
        all.truncate(limit);
        Ok(SessionPage {
            sessions: all,
            next,
        })
    }

    /// Session `sid` as of its last durable write, read from the store (so any node
    /// answers for every session, and nothing is loaded into memory); `None` if the store
    /// has no such session.
    pub async fn session_summary(&self, sid: &str) -> Result<Option<SessionSummary>, RuntimeError> {
        let Some(rec) = self.shared.store.read_session(sid).await? else {
            return Ok(None);
        };
        let stored = persist::StoredSession::decode(&rec.snapshot).map_err(|e| {
            RuntimeError::Internal(format!("session {sid} has a corrupt snapshot: {e}"))
        })?;
        let document = match self.shared.docs.get(&rec.document).await {
            Ok(d) => d.display_name().to_string(),
            Err(_) => rec.document.clone(),
        };
        Ok(Some(SessionSummary {
            sessionid: rec.id,
            node: rec.node,
            document,
            active_states: stored.snapshot.configuration,
            quarantined: stored.quarantined.is_some(),
        }))
    }

    /// Whether the store answered this process's last lease call (renewed every third of
    /// the lease TTL by a primary, more often by a backup).
    pub fn store_up(&self) -> bool {
        self.shared.cluster.get().is_none_or(|c| c.store_up())
    }

    /// The advertise URL of the node's primary, if known (this process's when primary).
    pub fn primary_url(&self) -> Option<String> {
        self.shared.primary_url()
    }

    /// This node's id (the prefix of its session ids).
    pub fn node_id(&self) -> &str {
        &self.shared.cfg.node_id
    }

    /// The configuration the runtime was started with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.cfg
    }

    /// Sessions in memory on this node.
    pub fn live_sessions(&self) -> usize {
        self.shared.workers.live_sessions()
    }

    /// Starts a session (now, or at `idealtime`); returns its id once it is durable.
    pub async fn start_session(&self, req: StartRequest) -> Result<String, RuntimeError> {
        self.shared.serving()?;
        if req.src.trim().is_empty() {
            return Err(RuntimeError::BadRequest("src is required".into()));
        }
        if self.live_sessions() >= self.shared.cfg.max_sessions {
            return Err(RuntimeError::Overloaded(format!(
                "this node runs its maximum of {} sessions",
                self.shared.cfg.max_sessions
            )));
        }
        let sid = match &req.idempotency_key {
            Some(k) => {
                idempotency::check(k)?;
                let sid = idempotency::session_id(&self.shared.cfg.node_id, k, &req.src);
                // A retry: the first attempt's session exists (or ended already).
                if self.shared.finished.get(&sid).is_some()
                    || self.shared.store.read_session(&sid).await?.is_some()
                {
                    return Ok(sid);
                }
                sid
            }
            None => self.shared.new_session_id(),
        };
        let (document, doc) = self.shared.docs.load(&req.src).await?;
        let allowance = self.shared.cfg.schedule_allowance.as_millis() as u64;
        if let Some(at) = req.idealtime
            && at > now_ms() + allowance
        {
            let job = Job::Start(ScheduledStart {
                session: sid.clone(),
                document,
                params: req.params,
            });
            self.shared.store.put_schedule(&job.entry(at)).await?;
            self.shared.scheduler.wake_at(at);
            return Ok(sid);
        }
        self.start_prepared(sid.clone(), document, doc, req.params)
            .await?;
        Ok(sid)
    }

    async fn start_prepared(
        &self,
        sid: String,
        document: String,
        doc: Arc<ors_scxml::Document>,
        params: Vec<(String, Value)>,
    ) -> Result<(), RuntimeError> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Start {
            sid: sid.clone(),
            doc,
            document,
            params,
            parent: None,
            reply: Some(tx),
        };
        self.shared.workers.send(&sid, cmd)?;
        rx.await.map_err(|_| RuntimeError::ShuttingDown)?
    }

    /// Queues an event; returns once its macrostep ran and the result is durable.
    pub async fn send_event(&self, sid: &str, event: Event) -> Result<(), RuntimeError> {
        self.send_event_once(sid, event, None).await
    }

    /// [`Runtime::send_event`] with the client's `Idempotency-Key`: if the session already
    /// ran an event with this key (a retry after a timeout or failover), it is not run
    /// again and the answer is the same.
    pub async fn send_event_once(
        &self,
        sid: &str,
        event: Event,
        key: Option<String>,
    ) -> Result<(), RuntimeError> {
        if let Some(k) = &key {
            idempotency::check(k)?;
        }
        self.event_with_key(sid, event, key).await
    }

    /// An event another session sent `sid` (through another node, or again from the
    /// sender's outbox), with the sender's outbox key: run once, however often it comes
    /// (see `outbox.rs`). Answered once durable.
    pub async fn deliver_event(
        &self,
        sid: &str,
        event: Event,
        key: String,
    ) -> Result<(), RuntimeError> {
        idempotency::check_delivery(&key)?;
        self.event_with_key(sid, event, Some(key)).await
    }

    /// Delivers `event` to session `sid` wherever it runs: here, or POSTed to its node as
    /// events between sessions are (`/deliver`), so a session that moves meanwhile still
    /// gets it, once: `key` is a reserved delivery key (it has a `#`), recorded with the
    /// macrostep that runs the event, and a second delivery with it does not run it again.
    /// A [`DeliveryFailure::Transient`] is worth trying again.
    pub async fn deliver_anywhere(
        &self,
        sid: &str,
        event: Event,
        key: String,
    ) -> Result<(), DeliveryFailure> {
        match self.shared.ownership.is_here(sid) {
            true => self
                .deliver_event(sid, event, key)
                .await
                .map_err(|e| DeliveryFailure::of(&e)),
            false => nodes::post(&self.shared, sid, &event, &key).await,
        }
    }

    async fn event_with_key(
        &self,
        sid: &str,
        event: Event,
        key: Option<String>,
    ) -> Result<(), RuntimeError> {
        self.shared.check_owner(sid)?;
        if event.name.is_empty() || event.name.split('.').any(str::is_empty) {
            return Err(RuntimeError::BadRequest(format!(
                "\"{}\" is not a valid event name",
                event.name
            )));
        }
        // From here to the acknowledgement; the worker's macrostep span is its child.
        let span =
            tracing::debug_span!("session.event", "session.id" = sid, "event.name" = %event.name);
        let (tx, rx) = oneshot::channel();
        self.shared.workers.send(
            sid,
            Command::Event {
                sid: sid.to_string(),
                event,
                key,
                reply: tx,
                span: span.clone(),
            },
        )?;
        rx.instrument(span)
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?
    }

    /// Sends an event and waits for the session's `<response>` to it.
    pub async fn request(
        &self,
        sid: &str,
        mut event: Event,
        timeout: Option<Duration>,
    ) -> Result<ResponseData, RuntimeError> {
        let requestid = format!("req-{}", self.shared.new_session_id());
        event.sendid = Some(requestid.clone());
        let response = self.shared.requests.wait(&requestid);
        if let Err(e) = self.send_event(sid, event).await {
            self.shared.requests.forget(&requestid);
            return Err(e);
        }
        let wait = timeout.unwrap_or(self.shared.cfg.request_timeout);
        match tokio::time::timeout(wait, response).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(RuntimeError::ShuttingDown),
            Err(_) => {
                self.shared.requests.forget(&requestid);
                Err(RuntimeError::Timeout(format!(
                    "no <response> to {requestid} within {wait:?}"
                )))
            }
        }
    }

    /// The session's active states and datamodel (or its final configuration if it ended
    /// recently).
    pub async fn query(&self, sid: &str) -> Result<QueryResult, RuntimeError> {
        self.shared.check_owner(sid)?;
        if let Some(conf) = self.shared.finished.get(sid) {
            return Ok(QueryResult::finished(sid, conf));
        }
        let (tx, rx) = oneshot::channel();
        self.shared.workers.send(
            sid,
            Command::Query {
                sid: sid.to_string(),
                reply: tx,
            },
        )?;
        match rx.await.map_err(|_| RuntimeError::ShuttingDown)? {
            Err(RuntimeError::Quarantined { reason, .. }) => {
                Ok(QueryResult::quarantined(sid, reason))
            }
            r => r,
        }
    }

    /// What the inspector shows of a session: its query, pending delayed sends, recent
    /// history (see [`RuntimeConfig::history`]) and document.
    pub async fn inspect(&self, sid: &str) -> Result<Inspection, RuntimeError> {
        self.shared.check_owner(sid)?;
        let capacity = self.shared.cfg.history;
        if let Some(conf) = self.shared.finished.get(sid) {
            let q = QueryResult::finished(sid, conf);
            return Ok(Inspection::of_query(q, self.node_id(), capacity));
        }
        let (tx, rx) = oneshot::channel();
        self.shared.workers.send(
            sid,
            Command::Inspect {
                sid: sid.to_string(),
                reply: tx,
            },
        )?;
        match rx.await.map_err(|_| RuntimeError::ShuttingDown)? {
            Err(RuntimeError::Quarantined { reason, .. }) => {
                let q = QueryResult::quarantined(sid, reason);
                Ok(Inspection::of_query(q, self.node_id(), capacity))
            }
            r => r,
        }
    }

    /// A watch that wakes after every durable change of session `sid` on this process
    /// (its macrosteps, its end) until dropped. Costs the workers nothing while no watch
    /// is open.
    pub fn watch(&self, sid: &str) -> SessionWatch {
        self.shared.watchers.watch(sid)
    }

    /// Ends the session (as `<cancel>` of an invoked child would); returns once durable.
    pub async fn terminate(&self, sid: &str) -> Result<(), RuntimeError> {
        self.shared.check_owner(sid)?;
        let (tx, rx) = oneshot::channel();
        self.shared.workers.send(
            sid,
            Command::Terminate {
                sid: sid.to_string(),
                reply: Some(tx),
            },
        )?;
        rx.await.map_err(|_| RuntimeError::ShuttingDown)?
    }

    /// Stops the scheduler, then the workers after they finish what they have; flushes;
    /// releases the lease (so a backup takes over at once).
    pub async fn shutdown(&self) {
        let follower = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(f) = follower {
            f.abort();
        }
        drop(
            self.scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        self.shared.workers.shutdown().await;
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // Hand the lease over at once: a backup takes over without waiting for expiry.
        if let Some(c) = self.shared.cluster.get() {
            c.resign().await;
        }
    }
}

impl QueryResult {
    /// A session that is quarantined: never run again, its stored state kept.
    fn quarantined(sid: &str, reason: String) -> QueryResult {
        QueryResult {
            quarantined: Some(reason),
            done: false,
            ..QueryResult::finished(sid, Vec::new())
        }
    }

    fn finished(sid: &str, configuration: Vec<String>) -> QueryResult {
        QueryResult {
            sessionid: sid.into(),
            configuration,
            active_states: Vec::new(),
            datamodel: Value::Null,
            done: true,
            quarantined: None,
        }
    }
}
