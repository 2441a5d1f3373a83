//! `ors-load-bench --ors target/release/ors [--idle 100000] [--nodes 1,2,3] [--relay]`
//!
//! Starts the given `ors` binary (embedded store, then Redis if `redis-server` is
//! installed) on loopback and reports, with 64 concurrent HTTP clients:
//! sessions started/s, acknowledged (durable) events/s over 1,000 sessions with p50/p99
//! latency; then the server's resident memory with `--idle` idle sessions. The clients
//! run on the same 2-core machine as the server, so they take CPU from it.
//!
//! `--relay`: only the figures for events between sessions: every event a client sends
//! makes its session send one to the next session (a ring over the 1,000 sessions, so
//! about half of them cross workers, through the outbox). Reports acknowledged events/s
//! and checks, once the relays are done, that each was run exactly once.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DOC: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="n" expr="0"/></datamodel>
  <state id="s">
    <transition event="inc" cond="n &gt;= 0"><assign location="n" expr="n + 1"/></transition>
  </state>
</scxml>"#;

/// For `--relay`: each `inc` sends `relayed` to the session's peer.
const RELAY_DOC: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="n" expr="0"/><data id="got" expr="0"/><data id="peer" expr="''"/></datamodel>
  <state id="s">
    <transition event="peer"><assign location="peer" expr="_event.data.to"/></transition>
    <transition event="inc"><assign location="n" expr="n + 1"/><send event="relayed" targetexpr="'#_scxml_' + peer"/></transition>
    <transition event="relayed"><assign location="got" expr="got + 1"/></transition>
  </state>
</scxml>"#;

const CLIENTS: usize = 64;
const SESSIONS: usize = 1_000;

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: &str, data: &Path, docs: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .arg("--documents-dir")
        .arg(docs)
        .args(extra)
        .env("ORS_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the ors binary runs");
    let url = ors_testsupport::ors_listening_url(&mut child);
    Server { child, url }
}

/// CPU time (user + system) the process has used so far, in seconds (`/proc`, in ticks of
/// USER_HZ, which is 100 on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

async fn start_sessions(c: &reqwest::Client, url: &str, n: usize) -> (Vec<String>, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (c, url, next) = (c.clone(), url.to_string(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let r = c
                    .post(format!("{url}/scxml/session/start"))
                    .form(&[("src", "bench.scxml")])
                    .send()
                    .await
                    .expect("start");
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.unwrap();
                ids.push(v["sessionid"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let rate = ids.len() as f64 / t.elapsed().as_secs_f64();
    (ids, rate)
}

/// Runs the clients for `secs` against the event URLs, round robin; events/s, p50, p99.
async fn events(c: &reqwest::Client, targets: Vec<String>, secs: u64) -> (f64, Duration, Duration) {
    let targets = Arc::new(targets);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let (c, targets) = (c.clone(), targets.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = k;
            while Instant::now() < deadline {
                let target = &targets[i % targets.len()];
                i += CLIENTS;
                let s = Instant::now();
                let r = c.post(target).send().await.expect("event");
                assert_eq!(r.status(), 200, "{:?}", r.text().await);
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / t.elapsed().as_secs_f64();
    all.sort();
    let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (rate, p(0.5), p(0.99))
}

fn event_urls(url: &str, ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|sid| format!("{url}/scxml/session/{sid}/event/inc"))
        .collect()
}

/// `n` nodes (`node1`...), one process each, on one new redis-server, serving `DOC` as
/// `bench.scxml`; the server and the directory live as long as the returned guards.
fn redis_cluster(
    bin: &str,
    n: usize,
) -> (ors_testsupport::RedisServer, tempfile::TempDir, Vec<Server>) {
    let redis = ors_testsupport::RedisServer::start(false);
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bench.scxml"), DOC).unwrap();
    let servers = (1..=n)
        .map(|k| {
            let node = format!("node{k}");
            let args = ["--store", "redis", "--redis-url", &url, "--node-id", &node];
            start_server(bin, &dir.path().join(&node), dir.path(), &args)
        })
        .collect();
    (redis, dir, servers)
}

/// `n` nodes (one process each) on one redis-server; each session's events go to its
/// own node. The clients and every node share this machine's cores.
async fn nodes(bin: &str, n: usize) {
    let (_redis, _dir, servers) = redis_cluster(bin, n);
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let mut targets = Vec::new();
    for s in &servers {
        let (ids, _) = start_sessions(&c, &s.url, SESSIONS / n).await;
        targets.extend(event_urls(&s.url, &ids));
    }
    let (rate, p50, p99) = events(&c, targets, 10).await;
    println!(
        "redis, {n} node(s)  durable events/s {rate:>8.0}  p50 {:>6.2} ms  p99 {:>6.2} ms  ({CLIENTS} clients, {SESSIONS} sessions)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

/// `--drain N`: N sessions started on node1 of a three-node cluster on one redis-server,
/// then `POST /cluster/drain` to node1: how long until they all run on node2 and node3.
/// Afterwards one event per session is sent through node1 (following its `307`) and must
/// be answered, so every session was moved whole.
async fn drain(bin: &str, n: usize) {
    let (_redis, _dir, servers) = redis_cluster(bin, 3);
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    // Every node must see the others as members first.
    loop {
        let m: serde_json::Value = c
            .get(format!("{}/cluster/members", servers[0].url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["members"].as_array().map_or(0, |a| a.len()) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ids, started) = start_sessions(&c, &servers[0].url, n).await;
    let t = Instant::now();
    let r = c
        .post(format!("{}/cluster/drain", servers[0].url))
        .send()
        .await
        .expect("drain");
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(report["kept_count"], 0, "{report}");
    // One event each through node1, redirected to the session's new node.
    let targets = event_urls(&servers[0].url, &ids);
    let next = Arc::new(AtomicUsize::new(0));
    let targets = Arc::new(targets);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (c, next, targets) = (c.clone(), next.clone(), targets.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(url) = targets.get(i) else { break };
                let r = c.post(url).send().await.expect("event");
                assert_eq!(r.status(), 200, "{url}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "drain     {n} sessions from node1 to node2 and node3 in {secs:.2} s ({:.0} sessions/s; moved {}); started {started:.0}/s; every moved session answered an event through node1",
        n as f64 / secs,
        report["moved"]
    );
}

/// The `--relay` figures on one store.
async fn relay(name: &str, bin: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bench.scxml"), RELAY_DOC).unwrap();
    let s = start_server(bin, &dir.path().join("data"), dir.path(), extra);
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let (ids, _) = start_sessions(&c, &s.url, SESSIONS).await;
    for (i, sid) in ids.iter().enumerate() {
        let to = &ids[(i + 1) % ids.len()];
        let r = c
            .post(format!("{}/scxml/session/{sid}/event/peer", s.url))
            .form(&[("to", to.as_str())])
            .send()
            .await
            .expect("peer");
        assert_eq!(r.status(), 200);
    }
    let (rate, p50, p99) = events(&c, event_urls(&s.url, &ids), 10).await;
    // Every relay lands, once: the sum of `got` reaches the sum of `n` and stays there.
    let t = Instant::now();
    let totals = || async {
        let (mut sent, mut got) = (0u64, 0u64);
        for sid in &ids {
            let q: serde_json::Value = c
                .get(format!("{}/scxml/session/{sid}/query", s.url))
                .send()
                .await
                .expect("query")
                .json()
                .await
                .expect("json");
            sent += q["datamodel"]["n"].as_u64().unwrap_or(0);
            got += q["datamodel"]["got"].as_u64().unwrap_or(0);
        }
        (sent, got)
    };
    let (sent, got) = loop {
        let (sent, got) = totals().await;
        if got >= sent || t.elapsed() > Duration::from_secs(60) {
            break (sent, got);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "{name:<9} relay: durable events/s {rate:>8.0}  p50 {:>6.2} ms  p99 {:>6.2} ms | {sent} relays sent, {got} run ({})",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        if got == sent {
            "exactly once"
        } else {
            "MISMATCH"
        }
    );
    assert_eq!(got, sent, "every relay runs exactly once");
}

async fn run(name: &str, bin: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bench.scxml"), DOC).unwrap();
    let s = start_server(bin, &dir.path().join("data"), dir.path(), extra);
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let (ids, started) = start_sessions(&c, &s.url, SESSIONS).await;
    let cpu_before = cpu_seconds(s.child.id());
    let (rate, p50, p99) = events(&c, event_urls(&s.url, &ids), 10).await;
    // The server's CPU per event is steadier than events/s on a shared machine.
    let cpu_us = (cpu_seconds(s.child.id()) - cpu_before) * 1e6 / (rate * 10.0);
    println!(
        "{name:<9} sessions started/s {started:>8.0} | durable events/s {rate:>8.0}  p50 {:>6.2} ms  p99 {:>6.2} ms  server CPU {cpu_us:>5.1} us/event  ({CLIENTS} clients, {SESSIONS} sessions)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| ors_testsupport::flag_value(&args, name);
    let bin = arg("--ors").unwrap_or_else(|| "target/release/ors".into());
    let idle: usize = arg("--idle")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    if args.iter().any(|a| a == "--relay") {
        relay("embedded", &bin, &[]).await;
        let redis = ors_testsupport::RedisServer::start(false);
        let url = redis.url();
        relay("redis", &bin, &["--store", "redis", "--redis-url", &url]).await;
        return;
    }
    if let Some(n) = arg("--drain").and_then(|v| v.parse::<usize>().ok()) {
        drain(&bin, n).await;
        return;
    }
    // `--nodes 1,2,3`: only the cluster figures.
    if let Some(list) = arg("--nodes") {
        for n in list.split(',').filter_map(|n| n.parse::<usize>().ok()) {
            nodes(&bin, n.max(1)).await;
        }
        return;
    }

    run("embedded", &bin, &[]).await;
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        let redis = ors_testsupport::RedisServer::start(false);
        let url = redis.url();
        run("redis", &bin, &["--store", "redis", "--redis-url", &url]).await;
    } else {
        println!("redis     not installed; skipped");
    }

    // Memory: idle sessions stay in memory (idle timeout 600 s by default).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bench.scxml"), DOC).unwrap();
    let s = start_server(&bin, &dir.path().join("data"), dir.path(), &[]);
    let before = rss_mib(s.child.id());
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let (ids, started) = start_sessions(&c, &s.url, idle).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_mib(s.child.id());
    println!(
        "memory    {} idle sessions: server RSS {before:.0} MiB -> {after:.0} MiB ({:.2} KiB per session); started {started:.0}/s",
        ids.len(),
        (after - before) * 1024.0 / ids.len() as f64
    );
}
