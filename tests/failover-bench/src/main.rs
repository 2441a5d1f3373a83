//! `ors-failover-bench --ors target/release/ors [--cycles 20] [--lease-ms 1000]`
//!
//! One node served by two `ors serve` processes (instances a and b) on a real
//! `redis-server`, all on loopback. Clients send events to 20 sessions without pause and
//! arm a delayed send now and then. Each cycle kills the primary with SIGKILL, measures
//! the time until the backup answers 200 for an existing session, and restarts the
//! killed process (it rejoins as a backup). At the end it compares every session with
//! what the clients saw: events acknowledged but missing (lost), events counted more
//! often than sent (applied twice), timers fired more often than armed. Prints one JSON
//! line and a summary, and exits 1 if anything acknowledged was lost or applied twice.
//! The clients run on the same machine as the servers.

use ors_testsupport::percentile;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const DOC: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="n" expr="0"/><data id="fired" expr="0"/></datamodel>
  <state id="s">
    <transition event="inc"><assign location="n" expr="n + 1"/></transition>
    <transition event="arm"><send event="ring" delay="700ms"/></transition>
    <transition event="ring"><assign location="fired" expr="fired + 1"/></transition>
  </state>
</scxml>"#;

const SESSIONS: usize = 20;
const CLIENTS: usize = 8;

/// What the clients saw, per session.
struct Seen {
    acked: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
    armed_sent: Vec<AtomicU64>,
    armed_acked: Vec<AtomicU64>,
    failed: AtomicU64,
}

fn per_session() -> Vec<AtomicU64> {
    (0..SESSIONS).map(|_| AtomicU64::new(0)).collect()
}

/// Sends to whichever process answers: a backup redirects (307, followed) to its
/// primary; a dead one refuses the connection and the other is tried next time.
async fn send(c: &reqwest::Client, urls: &[String; 2], turn: usize, path: &str) -> bool {
    let url = &urls[turn % 2];
    matches!(c.post(format!("{url}{path}")).send().await, Ok(r) if r.status() == 200)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| ors_testsupport::flag_value(&args, name);
    let bin = arg("--ors").unwrap_or_else(|| "target/release/ors".into());
    let cycles: usize = arg("--cycles").map_or(20, |v| v.parse().unwrap());
    let lease_ms: u64 = arg("--lease-ms").map_or(1000, |v| v.parse().unwrap());
    let _ = rustls::crypto::ring::default_provider().install_default();

    let redis = ors_testsupport::RedisServer::start(false);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bench.scxml"), DOC).unwrap();
    std::fs::write(
        tmp.path().join("ors.toml"),
        format!("[sessions]\nlease_ttl_ms = {lease_ms}\n"),
    )
    .unwrap();
    let mut procs = ["a", "b"]
        .map(|i| ors_testsupport::OrsInstance::start(&bin, &redis.url(), tmp.path(), i, "error"));
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut sids = Vec::new();
    for _ in 0..SESSIONS {
        let r = c
            .post(format!("{}/scxml/session/start", procs[0].url))
            .form(&[("src", "bench.scxml")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "process a starts as the primary");
        let v: serde_json::Value = r.json().await.unwrap();
        sids.push(v["sessionid"].as_str().unwrap().to_string());
    }
    let sids = Arc::new(sids);
    let seen = Arc::new(Seen {
        acked: per_session(),
        sent: per_session(),
        armed_sent: per_session(),
        armed_acked: per_session(),
        failed: AtomicU64::new(0),
    });
    let urls = Arc::new(std::sync::RwLock::new([
        procs[0].url.clone(),
        procs[1].url.clone(),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for w in 0..CLIENTS {
        let (c, sids, seen, urls, stop) = (
            c.clone(),
            sids.clone(),
            seen.clone(),
            urls.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let (mut i, mut turn) = (w, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let k = i % SESSIONS;
                i += CLIENTS;
                let arm = i % 50 == w;
                let event = if arm { "arm" } else { "inc" };
                let (sent, acked) = if arm {
                    (&seen.armed_sent[k], &seen.armed_acked[k])
                } else {
                    (&seen.sent[k], &seen.acked[k])
                };
                sent.fetch_add(1, Ordering::SeqCst);
                let u = urls.read().unwrap().clone();
                let path = format!("/scxml/session/{}/event/{event}", sids[k]);
                if send(&c, &u, turn, &path).await {
                    acked.fetch_add(1, Ordering::SeqCst);
                } else {
                    seen.failed.fetch_add(1, Ordering::Relaxed);
                    turn += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }

    let mut failovers = Vec::new();
    let probe = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut primary = 0;
    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        procs[primary].kill9();
        let killed = Instant::now();
        let backup = 1 - primary;
        let query = format!(
            "{}/scxml/session/{}/query",
            procs[backup].url,
            sids[cycle % SESSIONS]
        );
        loop {
            if matches!(probe.get(&query).send().await, Ok(r) if r.status() == 200) {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no takeover");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = killed.elapsed().as_secs_f64() * 1000.0;
        failovers.push(took);
        eprintln!("cycle {cycle}: failover {took:.0} ms");
        procs[primary].respawn();
        urls.write().unwrap()[primary] = procs[primary].url.clone();
        primary = backup;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }
    // Let the last timers fire (a claim of a killed primary ends after 2 leases).
    tokio::time::sleep(Duration::from_millis(2 * lease_ms + 2000)).await;
    let (mut lost, mut twice, mut timers_twice, mut timers_lost, mut acked) = (0, 0, 0, 0, 0);
    for (k, sid) in sids.iter().enumerate() {
        let r = c
            .get(format!("{}/scxml/session/{sid}/query", procs[primary].url))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        let n = v["datamodel"]["n"].as_u64().unwrap();
        let fired = v["datamodel"]["fired"].as_u64().unwrap();
        let a = seen.acked[k].load(Ordering::SeqCst);
        let s = seen.sent[k].load(Ordering::SeqCst);
        acked += a;
        lost += a.saturating_sub(n);
        twice += n.saturating_sub(s);
        let (armed_acked, armed_sent) = (
            seen.armed_acked[k].load(Ordering::SeqCst),
            seen.armed_sent[k].load(Ordering::SeqCst),
        );
        timers_lost += armed_acked.saturating_sub(fired);
        timers_twice += fired.saturating_sub(armed_sent);
    }
    failovers.sort_by(f64::total_cmp);
    let failed = seen.failed.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "cycles": cycles,
            "lease_ms": lease_ms,
            "failover_ms": { "p50": percentile(&failovers, 0.5), "p99": percentile(&failovers, 0.99),
                             "max": failovers.last() },
            "events_acknowledged": acked,
            "acknowledged_lost": lost,
            "applied_more_than_sent": twice,
            "timers_lost": timers_lost,
            "timers_fired_more_than_armed": timers_twice,
            "client_requests_failed": failed,
        })
    );
    eprintln!(
        "failover p50 {:.0} ms, p99 {:.0} ms over {cycles} kill -9 cycles (lease {lease_ms} ms); \
         {acked} events acknowledged, {lost} lost, {twice} applied more often than sent; \
         timers: {timers_lost} lost, {timers_twice} fired more often than armed; {failed} client requests failed",
        percentile(&failovers, 0.5),
        percentile(&failovers, 0.99)
    );
    // The guarantees, not the timings, decide the exit status (CI runs a short version).
    if lost > 0 || twice > 0 || timers_lost > 0 || timers_twice > 0 {
        eprintln!("FAILED: something acknowledged was lost or applied twice");
        std::process::exit(1);
    }
}
