#![doc = include_str!("../README.md")]
//!
//! Sessions are single-owner actors on a fixed set of worker threads (the JS engine is not
//! `Send`); a session lives on worker `hash(id) % workers`. Every external event runs to
//! the end of its macrostep; then the session's snapshot is written to the store, and only
//! then is the event acknowledged. A worker takes all the commands waiting for it, runs
//! them, and writes every changed session in one `write_sessions` call (group commit), so
//! no acknowledgement precedes its durable write.
//!
//! Delayed `<send>`s, scheduled starts and lifetime limits are store schedule entries fired
//! by the scheduler task, so they survive restarts. On start-up the node takes its lease
//! (the fencing token for every write), reloads the sessions it owns and re-arms nothing
//! by hand: their timers are already in the store.

mod basichttp;
mod config;
mod documents;
mod error;
mod scheduler;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ors_scxml::Event;
use ors_store::{Lease, ScheduleEntry, ScheduleKind, SessionStore};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub use basichttp::receive as basichttp_event;
pub use config::RuntimeConfig;
pub use error::ApiError;

use documents::Documents;
use worker::Command;

/// What `/query` shows.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    pub sessionid: String,
    /// Active atomic states, sorted (the final ones once done).
    pub configuration: Vec<String>,
    /// Every active state in document order.
    pub active_states: Vec<String>,
    pub datamodel: Value,
    pub done: bool,
}

/// A `<response>` to a `/request`.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseData {
    pub positive: bool,
    pub resultcode: Option<String>,
    pub params: serde_json::Map<String, Value>,
}

/// What a session start needs.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub src: String,
    /// Values for `<data>` items of the same id.
    pub params: Vec<(String, Value)>,
    /// Epoch milliseconds: a scheduled start.
    pub idealtime: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct ScheduledStart {
    sessionid: String,
    document: String,
    params: Vec<(String, Value)>,
}

struct Finished {
    at: Instant,
    configuration: Vec<String>,
}

pub(crate) struct Shared {
    cfg: RuntimeConfig,
    store: Arc<dyn SessionStore>,
    docs: Documents,
    workers: Vec<mpsc::Sender<Command>>,
    fence: AtomicU64,
    requests: Mutex<HashMap<String, oneshot::Sender<ResponseData>>>,
    finished: Mutex<HashMap<String, Finished>>,
    wake_scheduler: mpsc::UnboundedSender<u64>,
    http: reqwest::Client,
    handle: tokio::runtime::Handle,
    live: AtomicUsize,
    next_id: AtomicU64,
}

impl Shared {
    fn shard(&self, sid: &str) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in sid.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % self.workers.len() as u64) as usize
    }

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

    async fn send(&self, sid: &str, cmd: Command) -> Result<(), ApiError> {
        let tx = &self.workers[self.shard(sid)];
        tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ApiError::Overloaded("worker queue is full".into())
            }
            mpsc::error::TrySendError::Closed(_) => ApiError::ShuttingDown,
        })
    }

    fn finish(&self, sid: &str, configuration: Vec<String>) {
        let mut f = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        let keep = self.cfg.finished_retention;
        f.retain(|_, v| v.at.elapsed() < keep);
        f.insert(
            sid.to_string(),
            Finished {
                at: Instant::now(),
                configuration,
            },
        );
    }

    fn finished(&self, sid: &str) -> Option<Vec<String>> {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sid)
            .filter(|f| f.at.elapsed() < self.cfg.finished_retention)
            .map(|f| f.configuration.clone())
    }

    fn check_owner(&self, sid: &str) -> Result<(), ApiError> {
        match owner_node(sid) {
            Some(node) if node == self.cfg.node_id => Ok(()),
            Some(node) => Err(ApiError::WrongNode {
                session: sid.into(),
                node: node.into(),
            }),
            None => Err(ApiError::NotFound(sid.into())),
        }
    }
}

/// The node a session id names (`<node>-<unique>`), if it is well formed.
pub(crate) fn owner_node(sid: &str) -> Option<&str> {
    sid.rsplit_once('-').map(|(node, _)| node)
}

/// A handle to the running runtime; cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    lease: Arc<Mutex<Option<Lease>>>,
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
    ) -> Result<Runtime, ApiError> {
        if cfg.node_id.is_empty()
            || !cfg
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(ApiError::BadRequest(format!(
                "node id \"{}\" must be letters, digits and _",
                cfg.node_id
            )));
        }
        // reqwest needs a process-wide TLS crypto provider; install ring's unless the
        // embedding program chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let lease = acquire_node_lease(&store, &cfg).await?;
        let n = if cfg.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            cfg.workers
        };
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(cfg.worker_queue.max(1));
            senders.push(tx);
            receivers.push(rx);
        }
        let docs = Documents::new(
            store.clone(),
            cfg.documents_dir.clone(),
            cfg.max_document_bytes,
            cfg.fetch_timeout,
        );
        let shared = Arc::new(Shared {
            http: reqwest::Client::builder()
                .timeout(cfg.fetch_timeout)
                .build()
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            cfg,
            store,
            docs,
            workers: senders,
            fence: AtomicU64::new(lease.token),
            requests: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashMap::new()),
            wake_scheduler: wake_tx,
            handle: tokio::runtime::Handle::current(),
            live: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for (i, rx) in receivers.into_iter().enumerate() {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ors-worker-{i}"))
                    .spawn(move || worker::run(s, i, rx))
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            );
        }
        let rt = Runtime {
            shared: shared.clone(),
            threads: Arc::new(Mutex::new(threads)),
            lease: Arc::new(Mutex::new(Some(lease))),
        };
        tokio::spawn(scheduler::run(rt.clone(), wake_rx));
        tokio::spawn(renew_lease(rt.clone()));
        // Recovery: every session this node owns is reloaded (and told session.recovered
        // where its document asks); requests meanwhile load sessions on demand.
        let ids = shared.store.node_sessions(&shared.cfg.node_id).await?;
        tracing::info!(sessions = ids.len(), node = %shared.cfg.node_id, "recovering sessions");
        for sid in ids {
            let s = shared.clone();
            let cmd = Command::Recover { sid: sid.clone() };
            let tx = s.workers[s.shard(&sid)].clone();
            let _ = tx.send(cmd).await;
        }
        Ok(rt)
    }

    pub fn node_id(&self) -> &str {
        &self.shared.cfg.node_id
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.cfg
    }

    /// Sessions in memory on this node.
    pub fn live_sessions(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Starts a session (now, or at `idealtime`); returns its id once it is durable.
    pub async fn start_session(&self, req: StartRequest) -> Result<String, ApiError> {
        if req.src.trim().is_empty() {
            return Err(ApiError::BadRequest("src is required".into()));
        }
        if self.live_sessions() >= self.shared.cfg.max_sessions {
            return Err(ApiError::Overloaded(format!(
                "this node runs its maximum of {} sessions",
                self.shared.cfg.max_sessions
            )));
        }
        let (hash, doc) = self.shared.docs.load(&req.src).await?;
        let sid = self.shared.new_session_id();
        let allowance = self.shared.cfg.schedule_allowance.as_millis() as u64;
        if let Some(at) = req.idealtime
            && at > now_ms() + allowance
        {
            let payload = serde_json::to_vec(&ScheduledStart {
                sessionid: sid.clone(),
                document: hash,
                params: req.params,
            })
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            self.shared
                .store
                .put_schedule(&ScheduleEntry {
                    id: format!("{sid}#start"),
                    session: None,
                    due_ms: at,
                    kind: ScheduleKind::StartSession,
                    payload,
                })
                .await?;
            let _ = self.shared.wake_scheduler.send(at);
            return Ok(sid);
        }
        self.start_prepared(sid.clone(), hash, doc, req.params)
            .await?;
        Ok(sid)
    }

    async fn start_prepared(
        &self,
        sid: String,
        hash: String,
        doc: Arc<ors_scxml::Document>,
        params: Vec<(String, Value)>,
    ) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Start {
            sid: sid.clone(),
            doc,
            hash,
            params,
            parent: None,
            reply: Some(tx),
        };
        self.shared.send(&sid, cmd).await?;
        rx.await.map_err(|_| ApiError::ShuttingDown)?
    }

    /// Queues an event; returns once its macrostep ran and the result is durable.
    pub async fn send_event(&self, sid: &str, event: Event) -> Result<(), ApiError> {
        self.shared.check_owner(sid)?;
        if event.name.is_empty() || event.name.split('.').any(str::is_empty) {
            return Err(ApiError::BadRequest(format!(
                "\"{}\" is not a valid event name",
                event.name
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.shared
            .send(
                sid,
                Command::Event {
                    sid: sid.to_string(),
                    event,
                    reply: Some(tx),
                },
            )
            .await?;
        rx.await.map_err(|_| ApiError::ShuttingDown)?
    }

    /// Sends an event and waits for the session's `<response>` to it.
    pub async fn request(
        &self,
        sid: &str,
        mut event: Event,
        timeout: Option<Duration>,
    ) -> Result<ResponseData, ApiError> {
        let requestid = format!("req-{}", self.shared.new_session_id());
        event.sendid = Some(requestid.clone());
        let (tx, rx) = oneshot::channel();
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(requestid.clone(), tx);
        let forget = || {
            self.shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&requestid);
        };
        if let Err(e) = self.send_event(sid, event).await {
            forget();
            return Err(e);
        }
        let wait = timeout.unwrap_or(self.shared.cfg.request_timeout);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ApiError::ShuttingDown),
            Err(_) => {
                forget();
                Err(ApiError::Timeout(format!(
                    "no <response> to {requestid} within {wait:?}"
                )))
            }
        }
    }

    pub async fn query(&self, sid: &str) -> Result<QueryResult, ApiError> {
        self.shared.check_owner(sid)?;
        if let Some(conf) = self.shared.finished(sid) {
            return Ok(QueryResult {
                sessionid: sid.into(),
                configuration: conf,
                active_states: Vec::new(),
                datamodel: Value::Null,
                done: true,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.shared
            .send(
                sid,
                Command::Query {
                    sid: sid.to_string(),
                    reply: tx,
                },
            )
            .await?;
        rx.await.map_err(|_| ApiError::ShuttingDown)?
    }

    pub async fn terminate(&self, sid: &str) -> Result<(), ApiError> {
        self.shared.check_owner(sid)?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .send(
                sid,
                Command::Terminate {
                    sid: sid.to_string(),
                    reply: Some(tx),
                },
            )
            .await?;
        rx.await.map_err(|_| ApiError::ShuttingDown)?
    }

    /// Stops the workers after they finish what they have; flushes; releases the lease.
    pub async fn shutdown(&self) {
        for tx in &self.shared.workers {
            let (rtx, rrx) = oneshot::channel();
            if tx.send(Command::Shutdown { reply: rtx }).await.is_ok() {
                let _ = rrx.await;
            }
        }
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(l) = lease {
            let _ = self.shared.store.release_lease(&l).await;
        }
    }
}

async fn acquire_node_lease(
    store: &Arc<dyn SessionStore>,
    cfg: &RuntimeConfig,
) -> Result<Lease, ApiError> {
    let name = format!("node:{}", cfg.node_id);
    let holder = format!("{}:{}", cfg.node_id, std::process::id());
    let ttl = cfg.lease_ttl.as_millis() as u64;
    let deadline = Instant::now() + cfg.lease_ttl + Duration::from_secs(2);
    loop {
        if let Some(l) = store.acquire_lease(&name, &holder, ttl).await? {
            return Ok(l);
        }
        if Instant::now() > deadline {
            return Err(ApiError::Store(format!(
                "the lease {name} is held by another process; is node {} running elsewhere?",
                cfg.node_id
            )));
        }
        tracing::info!(lease = %name, "waiting for the previous holder's lease to expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn renew_lease(rt: Runtime) {
    let every = rt.shared.cfg.lease_ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let Some(cur) = rt.lease.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        match rt
            .shared
            .store
            .renew_lease(&cur, rt.shared.cfg.lease_ttl.as_millis() as u64)
            .await
        {
            Ok(l) => *rt.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(l),
            Err(e) => tracing::error!(error = %e, "could not renew the node lease"),
        }
    }
}
