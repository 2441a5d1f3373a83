//! `ors serve`: configuration (defaults < TOML file < environment < flags), logging, the
//! store, the runtime and the HTTP server, with graceful shutdown on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

/// The configuration file's shape; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub documents_dir: Option<PathBuf>,
    pub node_id: Option<String>,
    pub instance: Option<String>,
    pub advertise_url: Option<String>,
    pub external_url: Option<String>,
    pub data_center: Option<String>,
    pub workers: Option<usize>,
    pub log_format: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
    pub sessions: SessionsConfig,
    pub http: HttpSection,
    pub inspector: InspectorSection,
    pub interactions: InteractionsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InteractionsSection {
    /// The Redis holding the interaction feed (unset: no feed); a Redis Cluster as
    /// `redis-cluster://host:port?node=host:port&node=...`.
    pub redis_url: Option<String>,
    /// The feed's stream key (default `ors:interactions`).
    pub stream: Option<String>,
    /// How long the reserved node waits for the assigned one (ORS's
    /// `call-watching-timeout`, 1,000 to 300,000 ms, default 5,000).
    pub call_watching_timeout_ms: Option<u64>,
    /// A pulled interaction its node has not acknowledged for this long is taken over by
    /// another node (default 30,000 ms).
    pub reclaim_after_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InspectorSection {
    /// Serve the web inspector at `/inspector` (default off).
    pub enabled: Option<bool>,
    /// Entries of each in-memory session's ring of recent happenings (default 32).
    pub history: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (default), `redis` or `cassandra`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub redis_urls: Option<Vec<String>>,
    pub redis_cluster: Option<bool>,
    pub redis_username: Option<String>,
    pub redis_password: Option<String>,
    pub redis_tls: Option<bool>,
    pub redis_key_prefix: Option<String>,
    pub redis_pool_size: Option<usize>,
    pub redis_timeout_ms: Option<u64>,
    /// Page cache of the embedded store, MiB (default 64).
    pub embedded_cache_mb: Option<usize>,
    /// Cassandra contact points, ORS's `cassandra-nodes` form (`host1;host2:9043`).
    pub cassandra_nodes: Option<String>,
    pub cassandra_port: Option<u16>,
    pub cassandra_keyspace: Option<String>,
    pub cassandra_strategy_class: Option<String>,
    pub cassandra_strategy_options: Option<String>,
    pub cassandra_username: Option<String>,
    pub cassandra_password: Option<String>,
    pub cassandra_create_schema: Option<bool>,
    pub cassandra_record_ttl_secs: Option<u64>,
    pub cassandra_connect_timeout_ms: Option<u64>,
    pub cassandra_schedule_shards: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_body_bytes: Option<usize>,
    pub max_document_bytes: Option<usize>,
    pub max_sessions: Option<usize>,
    pub max_queue: Option<usize>,
    pub max_concurrent_requests: Option<usize>,
    pub js_loop_iterations: Option<u64>,
    pub js_recursion: Option<usize>,
    pub macrostep_time_ms: Option<u64>,
    pub macrostep_memory_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    pub persistence_default: Option<bool>,
    pub idle_timeout_secs: Option<u64>,
    pub max_lifetime_secs: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub finished_retention_secs: Option<u64>,
    pub lease_ttl_ms: Option<u64>,
    pub hot_standby: Option<bool>,
    pub quarantine_after_crashes: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub heartbeat_backup_status: Option<u16>,
    pub tokens_file: Option<PathBuf>,
    pub auth_heartbeat: Option<bool>,
    pub outbound_allow: Option<Vec<String>>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub auth_metrics: Option<bool>,
    pub cookie: Option<String>,
    pub request_timeout_secs: Option<u64>,
}

/// Flags; each also reads an `ORS_*` environment variable.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ORS_LISTEN")]
    pub listen: Option<String>,
    /// Where the embedded store keeps its file.
    #[arg(long, env = "ORS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Documents named by relative paths or file: URLs are served from here only.
    #[arg(long, env = "ORS_DOCUMENTS_DIR")]
    pub documents_dir: Option<PathBuf>,
    /// A TOML configuration file (see docs/configuration.md).
    #[arg(long, env = "ORS_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (letters, digits, _), embedded in session ids.
    #[arg(long, env = "ORS_NODE_ID")]
    pub node_id: Option<String>,
    /// This process's name among its node's processes: two processes with the same
    /// node id and different instances are a primary and its backup (default `main`).
    #[arg(long, env = "ORS_INSTANCE")]
    pub instance: Option<String>,
    /// Where this process is reached; backups redirect to their primary's (default: the
    /// listen address).
    #[arg(long, env = "ORS_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Where the node is reached from outside (its load balancer; the BasicHTTP
    /// addresses in `_ioprocessors`). Default: the listen address.
    #[arg(long, env = "ORS_EXTERNAL_URL")]
    pub external_url: Option<String>,
    /// This process's data center, listed in the cluster's membership.
    #[arg(long, env = "ORS_DATA_CENTER")]
    pub data_center: Option<String>,
    /// A file of bearer tokens (one per line) the API requires; the first is also what
    /// this process presents to the other processes of its cluster. Tokens can also come
    /// from `ORS_API_TOKENS` (comma-separated).
    #[arg(long, env = "ORS_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "ORS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "ORS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// `embedded`, `redis` or `cassandra`.
    #[arg(long, env = "ORS_STORE")]
    pub store: Option<String>,
    /// Redis URL(s), comma-separated (several: a Redis Cluster).
    #[arg(long, env = "ORS_REDIS_URL", value_delimiter = ',')]
    pub redis_url: Option<Vec<String>>,
    /// Cassandra contact points, `host1;host2[:port]` (ORS's `cassandra-nodes`).
    #[arg(long, env = "ORS_CASSANDRA_NODES")]
    pub cassandra_nodes: Option<String>,
    /// The Cassandra keyspace (default `orchestration`).
    #[arg(long, env = "ORS_CASSANDRA_KEYSPACE")]
    pub cassandra_keyspace: Option<String>,
    /// `human` or `json`.
    #[arg(long, env = "ORS_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Worker threads running sessions (default: one per core).
    #[arg(long, env = "ORS_WORKERS")]
    pub workers: Option<usize>,
    /// Send traces to this OpenTelemetry collector (OTLP over HTTP, its base URL such as
    /// http://127.0.0.1:4318; traces go to /v1/traces). The standard
    /// OTEL_EXPORTER_OTLP_ENDPOINT works too. Off when neither is set.
    #[arg(long, env = "ORS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Serve the web inspector at /inspector (its data needs the API's token).
    #[arg(long, env = "ORS_INSPECTOR")]
    pub inspector: bool,
}

fn secs(v: Option<u64>) -> Option<Duration> {
    v.map(Duration::from_secs)
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("in {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let log_format = args
        .log_format
        .clone()
        .or(file.log_format.clone())
        .unwrap_or_else(|| "human".into());
    // One TLS crypto provider for every client in the process (reqwest, fred, the OTLP
    // exporter's), before any of them is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let otlp = args.otlp_endpoint.clone().or(file.otlp_endpoint.clone());
    let tracing = crate::telemetry::init(&log_format, otlp.as_deref())?;

    let listen = args
        .listen
        .clone()
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen}: expected ADDR:PORT"))?;
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(|| "data".into());
    let documents_dir = args
        .documents_dir
        .clone()
        .or(file.documents_dir.clone())
        .unwrap_or_else(|| ".".into());
    let node_id = args
        .node_id
        .clone()
        .or(file.node_id.clone())
        .unwrap_or_else(|| "node1".into());

    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let store_kind = args
        .store
        .clone()
        .or(file.store.kind.clone())
        .unwrap_or_else(|| "embedded".into());
    let store: Arc<dyn ors_store::SessionStore> = match store_kind.as_str() {
        "embedded" => {
            if args.instance.is_some() || file.instance.is_some() {
                anyhow::bail!(
                    "--instance makes this process a primary or a backup of its node, which \
                     needs a store shared by processes: use --store redis or --store cassandra \
                     (the embedded store is a file one process opens at a time)"
                );
            }
            let path = data_dir.join("ors.redb");
            Arc::new(
                ors_store_embedded::EmbeddedStore::open_with_cache(
                    &path,
                    file.store.embedded_cache_mb.unwrap_or(64) << 20,
                )
                .with_context(|| format!("opening the embedded store {}", path.display()))?,
            )
        }
        "redis" => {
            let d = ors_store_redis::RedisConfig::default();
            let s = &file.store;
            let cfg = ors_store_redis::RedisConfig {
                urls: args
                    .redis_url
                    .clone()
                    .or(s.redis_urls.clone())
                    .unwrap_or(d.urls),
                cluster: s.redis_cluster.unwrap_or(false),
                username: s.redis_username.clone(),
                password: s.redis_password.clone(),
                tls: s.redis_tls.unwrap_or(false),
                key_prefix: s.redis_key_prefix.clone().unwrap_or(d.key_prefix),
                pool_size: s.redis_pool_size.unwrap_or(d.pool_size),
                command_timeout: s
                    .redis_timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(d.command_timeout),
                ..d
            };
            Arc::new(
                ors_store_redis::RedisStore::connect(&cfg)
                    .await
                    .context("connecting to Redis")?,
            )
        }
        "cassandra" => {
            let cfg = cassandra_config(&args, &file.store);
            let nodes = cfg.contact_points().join(",");
            Arc::new(
                ors_store_cassandra::CassandraStore::connect(&cfg)
                    .await
                    .with_context(|| format!("connecting to Cassandra at {nodes}"))?,
            )
        }
        other => {
            anyhow::bail!("unknown store type \"{other}\" (use embedded, redis or cassandra)")
        }
    };

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let local = listener.local_addr()?;
    let tokens = api_tokens(&args, &file)?;
    let tls = match (
        args.tls_cert.as_ref().or(file.http.tls_cert.as_ref()),
        args.tls_key.as_ref().or(file.http.tls_key.as_ref()),
    ) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some(crate::tls::server_config(cert, key)?)
        }
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both --tls-cert and --tls-key"),
    };
    if !local.ip().is_loopback() {
        if tokens.is_empty() {
            tracing::warn!(%local, "the API listens beyond this machine without authentication: set --api-tokens-file or ORS_API_TOKENS, or put an authenticating proxy in front");
        }
        if tls.is_none() {
            tracing::warn!(%local, "the API listens beyond this machine without TLS: set --tls-cert and --tls-key, or put a TLS-terminating proxy in front");
        }
    }
    let outbound = ors_runtime::outbound::OutboundPolicy::parse(
        file.http.outbound_allow.as_deref().unwrap_or_default(),
    )
    .map_err(|e| anyhow::anyhow!("http.outbound_allow: {e}"))?;
    let d = ors_runtime::RuntimeConfig::default();
    let (l, ss) = (&file.limits, &file.sessions);
    let inspector = args.inspector || file.inspector.enabled.unwrap_or(false);
    let rcfg = ors_runtime::RuntimeConfig {
        node_id,
        workers: args.workers.or(file.workers).unwrap_or(0),
        documents_dir: Some(documents_dir.clone()),
        persistence_default: ss.persistence_default.unwrap_or(d.persistence_default),
        external_url: args
            .external_url
            .clone()
            .or(file.external_url.clone())
            .unwrap_or_else(|| format!("http://{local}")),
        instance: args
            .instance
            .clone()
            .or(file.instance.clone())
            .unwrap_or(d.instance.clone()),
        advertise_url: args
            .advertise_url
            .clone()
            .or(file.advertise_url.clone())
            .unwrap_or_else(|| format!("http://{local}")),
        hot_standby: ss.hot_standby.unwrap_or(d.hot_standby),
        quarantine_after: ss.quarantine_after_crashes.unwrap_or(d.quarantine_after),
        state_dir: Some(data_dir.clone()),
        data_center: args
            .data_center
            .clone()
            .or(file.data_center.clone())
            .unwrap_or_default(),
        max_document_bytes: l.max_document_bytes.unwrap_or(d.max_document_bytes),
        max_sessions: l.max_sessions.unwrap_or(d.max_sessions),
        max_queue: l.max_queue.unwrap_or(d.max_queue),
        idle_timeout: secs(ss.idle_timeout_secs).unwrap_or(d.idle_timeout),
        max_session_lifetime: secs(ss.max_lifetime_secs),
        request_timeout: secs(ss.request_timeout_secs).unwrap_or(d.request_timeout),
        finished_retention: secs(ss.finished_retention_secs).unwrap_or(d.finished_retention),
        lease_ttl: ss
            .lease_ttl_ms
            .map(Duration::from_millis)
            .unwrap_or(d.lease_ttl),
        js: ors_ecmascript::RuntimeOptions {
            loop_iteration_limit: l.js_loop_iterations.unwrap_or(d.js.loop_iteration_limit),
            recursion_limit: l.js_recursion.unwrap_or(d.js.recursion_limit),
            // 0 switches a bound off.
            budget: ors_ecmascript::Budget {
                time: match l.macrostep_time_ms {
                    None => d.js.budget.time,
                    Some(0) => None,
                    Some(ms) => Some(Duration::from_millis(ms)),
                },
                memory: match l.macrostep_memory_mb {
                    None => d.js.budget.memory,
                    Some(0) => None,
                    Some(mb) => Some(mb << 20),
                },
            },
        },
        peer_token: tokens.first().cloned(),
        outbound: Arc::new(outbound),
        // The ring is kept only for the inspector.
        history: match inspector {
            true => file.inspector.history.unwrap_or(32),
            false => 0,
        },
        ..d
    };
    let hd = ors_http::HttpConfig::default();
    let mut hcfg = ors_http::HttpConfig {
        max_body_bytes: l.max_body_bytes.unwrap_or(hd.max_body_bytes),
        max_concurrent_requests: l
            .max_concurrent_requests
            .unwrap_or(hd.max_concurrent_requests),
        heartbeat_backup_status: file
            .http
            .heartbeat_backup_status
            .unwrap_or(hd.heartbeat_backup_status),
        cookie: file.http.cookie.clone().unwrap_or(hd.cookie),
        request_timeout: secs(file.http.request_timeout_secs).unwrap_or(hd.request_timeout),
        auth: ors_http::ApiAuth::new(
            tokens,
            file.http.auth_heartbeat.unwrap_or(false),
            file.http.auth_metrics.unwrap_or(true),
        )
        .map(Arc::new),
        inspector,
        extra_routes: None,
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let rt = ors_runtime::Runtime::start(rcfg, store.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(url) = &file.interactions.redis_url {
        let i = &file.interactions;
        let cwt = i.call_watching_timeout_ms.unwrap_or(5_000);
        if !ors_interactions::CALL_WATCHING_RANGE.contains(&cwt) {
            anyhow::bail!(
                "interactions.call_watching_timeout_ms is {cwt}: it must be from 1000 to 300000"
            );
        }
        let stream = i
            .stream
            .clone()
            .unwrap_or_else(|| "ors:interactions".into());
        let feed = Arc::new(
            ors_interactions::Feed::connect(url, &stream)
                .await
                .with_context(|| format!("connecting to the interaction feed at {url}"))?,
        );
        let settings = ors_interactions::Settings {
            call_watching_timeout: Duration::from_millis(cwt),
            reclaim_after: Duration::from_millis(i.reclaim_after_ms.unwrap_or(30_000).max(100)),
            ..Default::default()
        };
        hcfg.extra_routes = Some(ors_interactions::router(feed.clone(), store.clone()));
        tokio::spawn(ors_interactions::run(
            rt.clone(),
            store.clone(),
            feed,
            settings,
        ));
    }
    let app = ors_http::router(rt.clone(), hcfg, Some(metrics));
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%local, store = %store_kind, documents = %documents_dir.display(), node = %rt.node_id(), role = ?rt.role(), scheme, "ors listening");
    // Tests and scripts read this line to find the port.
    println!("ors listening on {scheme}://{local}");
    match tls {
        Some(tls) => crate::tls::serve(listener, app, tls, shutdown_signal())
            .await
            .context("serving HTTPS")?,
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTP")?,
    }
    tracing::info!("stopping: finishing in-flight macrosteps and flushing");
    rt.shutdown().await;
    tracing::info!("stopped");
    // The exporter's last batch goes out over a blocking client.
    let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    Ok(())
}

/// The API's bearer tokens, in order: the tokens file's lines (blank lines and `#`
/// comments skipped), then `ORS_API_TOKENS` (comma-separated).
fn api_tokens(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::new();
    if let Some(path) = args
        .api_tokens_file
        .as_ref()
        .or(file.http.tokens_file.as_ref())
    {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the API tokens file {}", path.display()))?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
        if tokens.is_empty() {
            anyhow::bail!("the API tokens file {} has no token", path.display());
        }
    }
    if let Ok(env) = std::env::var("ORS_API_TOKENS") {
        tokens.extend(
            env.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from),
        );
    }
    Ok(tokens)
}

fn cassandra_config(args: &ServeArgs, s: &StoreConfig) -> ors_store_cassandra::CassandraConfig {
    let d = ors_store_cassandra::CassandraConfig::default();
    let nodes = args.cassandra_nodes.as_ref().or(s.cassandra_nodes.as_ref());
    ors_store_cassandra::CassandraConfig {
        nodes: nodes.map_or(d.nodes, |n| {
            ors_store_cassandra::CassandraConfig::parse_nodes(n)
        }),
        port: s.cassandra_port.unwrap_or(d.port),
        keyspace: args
            .cassandra_keyspace
            .clone()
            .or(s.cassandra_keyspace.clone())
            .unwrap_or(d.keyspace),
        strategy_class: s
            .cassandra_strategy_class
            .clone()
            .unwrap_or(d.strategy_class),
        strategy_options: s
            .cassandra_strategy_options
            .clone()
            .unwrap_or(d.strategy_options),
        username: s.cassandra_username.clone(),
        password: s.cassandra_password.clone(),
        create_schema: s.cassandra_create_schema.unwrap_or(d.create_schema),
        record_ttl: secs(s.cassandra_record_ttl_secs).or(d.record_ttl),
        connect_timeout: s
            .cassandra_connect_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(d.connect_timeout),
        schedule_shards: s.cassandra_schedule_shards.unwrap_or(d.schedule_shards),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
