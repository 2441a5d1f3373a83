use std::path::PathBuf;
use std::time::Duration;

/// Everything the runtime can be told. Every field has a default (see [`Default`]).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// This node's id; it is embedded in every session id (`<node>-<random>`). Letters,
    /// digits and `_`.
    pub node_id: String,
    /// Worker threads that run sessions (each has its own JS context). 0: one per core.
    pub workers: usize,
    /// Where `file:` and relative `src` documents are looked up; nothing outside it is
    /// served. `None`: file documents are refused.
    pub documents_dir: Option<PathBuf>,
    /// Persist sessions whose `<scxml>` has no `_persist` attribute (ORS's
    /// `persistence-default`).
    pub persistence_default: bool,
    /// How the node is reached from outside: the load balancer or VIP in front of its
    /// processes (ORS's `external-url`; the BasicHTTP locations in `_ioprocessors`).
    pub external_url: String,
    /// This process's name among the processes of its node (a primary and its backups).
    pub instance: String,
    /// Where this very process is reached; a backup redirects requests (`307`) to its
    /// primary's. Empty: the same as `external_url`.
    pub advertise_url: String,
    /// This process's data center, recorded in its membership entry (empty: none).
    pub data_center: String,
    /// As a backup, follow the primary and keep the node's sessions in memory, so a
    /// takeover reads only what changed (hot standby). Off: a takeover reads every
    /// session from the store (warm standby).
    pub hot_standby: bool,
    /// Where this process keeps its breadcrumb file (which session's code each worker
    /// runs, read back after a crash); `None`: poison sessions are not detected.
    pub state_dir: Option<std::path::PathBuf>,
    /// Crashes in a row while a session's code ran after which it is quarantined.
    pub quarantine_after: u32,
    /// Where documents may make this process connect (fetching `http(s)` documents,
    /// BasicHTTP `<send>`s): public addresses unless it allows more.
    pub outbound: std::sync::Arc<crate::outbound::OutboundPolicy>,
    /// The bearer token this process presents to the other processes of the cluster
    /// (events between nodes, a hot standby's polls) when their API requires one.
    pub peer_token: Option<String>,
    /// Largest document (bytes) fetched or compiled.
    pub max_document_bytes: usize,
    /// How long fetching a document (or a BasicHTTP POST) may take.
    pub fetch_timeout: Duration,
    /// Sessions in memory on this node before starts are refused as overloaded.
    pub max_sessions: usize,
    /// Events waiting per session.
    pub max_queue: usize,
    /// Commands waiting per worker before callers get "overloaded".
    pub worker_queue: usize,
    /// Sessions idle this long leave memory (persisted ones come back on their next event).
    pub idle_timeout: Duration,
    /// Sessions are terminated after running this long (`None`: never).
    pub max_session_lifetime: Option<Duration>,
    /// `_event`-less `/request` calls wait this long for a `<response>`.
    pub request_timeout: Duration,
    /// A scheduled start or stop whose time is at most this far in the future runs at once
    /// (ORS's 5-second processing allowance).
    pub schedule_allowance: Duration,
    /// How often the scheduler polls the store when it knows of nothing due sooner.
    pub schedule_poll: Duration,
    /// The node lease (fencing token source): a primary that cannot renew it for this
    /// long steps down; a backup takes over once it expired.
    pub lease_ttl: Duration,
    /// JS limits per worker.
    pub js: ors_ecmascript::RuntimeOptions,
    /// Finished sessions stay queryable this long.
    pub finished_retention: Duration,
    /// Entries of the ring of recent happenings (events received, microsteps) each
    /// session in memory keeps for the inspector; 0: no ring and no recording.
    pub history: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            node_id: "node1".into(),
            workers: 0,
            documents_dir: None,
            persistence_default: true,
            external_url: "http://127.0.0.1:8080".into(),
            instance: "main".into(),
            advertise_url: String::new(),
            data_center: String::new(),
            hot_standby: false,
            state_dir: None,
            quarantine_after: 3,
            peer_token: None,
            outbound: Default::default(),
            max_document_bytes: 4 << 20,
            fetch_timeout: Duration::from_secs(10),
            max_sessions: 1_000_000,
            max_queue: 1_000,
            worker_queue: 10_000,
            idle_timeout: Duration::from_secs(600),
            max_session_lifetime: None,
            request_timeout: Duration::from_secs(30),
            schedule_allowance: Duration::from_secs(5),
            schedule_poll: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(10),
            js: ors_ecmascript::RuntimeOptions::default(),
            finished_retention: Duration::from_secs(300),
            history: 0,
        }
    }
}
