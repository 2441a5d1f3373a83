//! `ors-takeover-bench --ors target/release/ors [--sessions 100000] [--hot]`
//!
//! One node served by two `ors serve` processes (instances a and b) on a real
//! `redis-server`, all on loopback. It starts `--sessions` sessions on the primary, then
//! kills the primary with SIGKILL and measures, on the backup that takes over:
//! - `first_ms`: from the kill to the first `200` for an existing session;
//! - `queries`: latency of queries to 2,000 random sessions sent (16 at a time) right
//!   after that, and how long they took in all;
//! - `all_loaded_ms`: from the kill until the new primary has every session of the node
//!   in memory (`recovering` reaches 0 in its `/heartbeat`);
//! - the resident memory of both processes just before the kill.
//!
//! `--hot` runs the backup as a hot standby (`sessions.hot_standby = true`): it follows
//! the primary's writes and keeps the sessions in memory; the bench then waits until the
//! backup follows every session before the kill. Prints one JSON line.

use ors_testsupport::{OrsInstance, percentile};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DOC: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="n" expr="0"/><data id="who" expr="'someone'"/></datamodel>
  <state id="s">
    <transition event="inc"><assign location="n" expr="n + 1"/></transition>
  </state>
</scxml>"#;

/// Resident memory of a process, in MiB (Linux).
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

async fn heartbeat(c: &reqwest::Client, p: &OrsInstance) -> serde_json::Value {
    match c.get(format!("{}/heartbeat", p.url)).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// A small deterministic generator, so runs pick the same sessions.
fn pick(state: &mut u64, n: usize) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % n as u64) as usize
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| ors_testsupport::flag_value(&args, name);
    let bin = arg("--ors").unwrap_or_else(|| "target/release/ors".into());
    let sessions: usize = arg("--sessions").map_or(100_000, |v| v.parse().unwrap());
    let hot = args.iter().any(|a| a == "--hot");
    let _ = rustls::crypto::ring::default_provider().install_default();

    let redis = ors_testsupport::RedisServer::start(false);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bench.scxml"), DOC).unwrap();
    let config = if hot {
        "[sessions]\nhot_standby = true\n"
    } else {
        ""
    };
    std::fs::write(tmp.path().join("ors.toml"), config).unwrap();
    let log = std::env::var("ORS_LOG").unwrap_or_else(|_| "warn".into());
    let start = |i: &str| OrsInstance::start(&bin, &redis.url(), tmp.path(), i, &log);
    let (mut a, b) = (start("a"), start("b"));
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Start the sessions, 64 at a time.
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (c, next, url) = (c.clone(), next.clone(), a.url.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < sessions {
                let r = c
                    .post(format!("{url}/scxml/session/start"))
                    .form(&[("src", "bench.scxml")])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "process a starts as the primary");
                let v: serde_json::Value = r.json().await.unwrap();
                mine.push(v["sessionid"].as_str().unwrap().to_string());
            }
            mine
        }));
    }
    let mut sids = Vec::with_capacity(sessions);
    for t in tasks {
        sids.extend(t.await.unwrap());
    }
    let started_s = t.elapsed().as_secs_f64();
    eprintln!("{sessions} sessions started in {started_s:.1} s");
    if hot {
        let t = Instant::now();
        loop {
            let h = heartbeat(&c, &b).await;
            if h["following"].as_u64() == Some(sessions as u64) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "the backup never caught up: {h}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "the hot standby follows every session after {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = |p: &OrsInstance| p.pid().map_or(f64::NAN, rss_mib);
    let (primary_rss, backup_rss) = (rss(&a), rss(&b));

    a.kill9();
    let killed = Instant::now();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let probe = sids[pick(&mut rng, sids.len())].clone();
    loop {
        let r = c
            .get(format!("{}/scxml/session/{probe}/query", b.url))
            .send()
            .await;
        if matches!(r, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "no takeover");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_ms = killed.elapsed().as_secs_f64() * 1000.0;

    let sample: Vec<String> = (0..2000)
        .map(|_| sids[pick(&mut rng, sids.len())].clone())
        .collect();
    let sample = Arc::new(sample);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, next, sample, url) = (c.clone(), next.clone(), sample.clone(), b.url.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(sid) = sample.get(i) else { break };
                let q = Instant::now();
                let r = c
                    .get(format!("{url}/scxml/session/{sid}/query"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                lat.push(q.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let queries_ms = t.elapsed().as_secs_f64() * 1000.0;
    lat.sort_by(f64::total_cmp);

    let all_loaded_ms = loop {
        let h = heartbeat(&c, &b).await;
        if h["role"] == "primary" && h["recovering"].as_u64() == Some(0) {
            break killed.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(600),
            "recovery never ended: {h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "{}",
        serde_json::json!({
            "standby": if hot { "hot" } else { "warm" },
            "sessions": sessions,
            "first_ms": first_ms.round(),
            "queries": { "count": lat.len(), "p50_ms": percentile(&lat, 0.5),
                         "p99_ms": percentile(&lat, 0.99), "max_ms": lat.last(),
                         "all_ms": queries_ms.round() },
            "all_loaded_ms": all_loaded_ms.round(),
            "rss_mib_before_kill": { "primary": primary_rss.round(), "backup": backup_rss.round() },
        })
    );
}
