//! `ors-interactions-bench --ors target/release/ors [--nodes 1,2,3] [--count 10000]
//! [--watch-ms 1000] [--samples 20]`
//!
//! For each node count: that many `ors serve` processes (one per node) on one
//! `redis-server` holding the store and the feed; `--count` interactions posted to the
//! nodes in turn (64 at a time), then as many pulled ones; the rate is interactions over
//! the time from the first post to the last session existing. Then, with three nodes and
//! a call-watching timeout of `--watch-ms`, node2 is killed (`kill -9`) and `--samples`
//! interactions placed on node2 are posted one at a time: the time from each post to its
//! session on the reserved node, less the timeout, is the reserved node's delay.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};

const DOC: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="interaction"/></datamodel>
  <state id="active"><transition event="released" target="done"/></state>
  <final id="done"/>
</scxml>"#;

struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nodes(
    bin: &str,
    dir: &std::path::Path,
    redis: &str,
    n: usize,
    watch_ms: u64,
) -> Vec<Node> {
    std::fs::write(dir.join("call.scxml"), DOC).unwrap();
    let config = dir.join("ors.toml");
    std::fs::write(
        &config,
        format!("[sessions]\nlease_ttl_ms = 1000\n[interactions]\nredis_url = \"{redis}\"\ncall_watching_timeout_ms = {watch_ms}\nreclaim_after_ms = 2000\n"),
    )
    .unwrap();
    (1..=n)
        .map(|k| {
            let node = format!("node{k}");
            let mut child = Command::new(bin)
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--store",
                    "redis",
                    "--redis-url",
                    redis,
                ])
                .args(["--node-id", &node])
                .arg("--data-dir")
                .arg(dir.join(&node))
                .arg("--documents-dir")
                .arg(dir)
                .arg("--config")
                .arg(&config)
                .env("ORS_LOG", "error")
                .stdout(Stdio::piped())
                .spawn()
                .expect("the ors binary runs");
            let url = ors_testsupport::ors_listening_url(&mut child);
            Node { child, url }
        })
        .collect()
}

async fn session_count(c: &reqwest::Client, url: &str) -> usize {
    let mut n = 0;
    let mut after: Option<String> = None;
    loop {
        let from = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let page: Value = c
            .get(format!("{url}/scxml/sessions?limit=1000{from}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        n += page["sessions"].as_array().map_or(0, |a| a.len());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return n,
        }
    }
}

/// Posts `ids` to the nodes in turn and waits until the cluster holds `expect` sessions;
/// interactions per second.
async fn feed(
    c: &reqwest::Client,
    urls: &[String],
    ids: &[String],
    pull: bool,
    expect: usize,
) -> f64 {
    let t = Instant::now();
    futures_util::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let mut body = json!({ "id": id, "src": "call.scxml" });
            if pull {
                body["mode"] = json!("pull");
            }
            let req = c
                .post(format!("{}/interactions", urls[i % urls.len()]))
                .json(&body);
            async move {
                let r = req.send().await.expect("post");
                assert_eq!(r.status(), 202);
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while session_count(c, &urls[0]).await < expect {
        assert!(Instant::now() < deadline, "sessions did not appear");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ids.len() as f64 / t.elapsed().as_secs_f64()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    ors_testsupport::flag_value(args, name)
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let bin = arg(&args, "--ors").unwrap_or_else(|| "target/release/ors".into());
    let count: usize = arg(&args, "--count")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let watch_ms: u64 = arg(&args, "--watch-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let samples: usize = arg(&args, "--samples")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let counts: Vec<usize> = arg(&args, "--nodes")
        .unwrap_or_else(|| "1,2,3".into())
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    for &n in &counts {
        let redis = ors_testsupport::RedisServer::start(false);
        let dir = tempfile::tempdir().unwrap();
        // The default call-watching timeout: the rate is the assigned nodes' own.
        let nodes = start_nodes(&bin, dir.path(), &redis.url(), n.max(1), 5_000);
        let urls: Vec<String> = nodes.iter().map(|s| s.url.clone()).collect();
        let shared: Vec<String> = (0..count).map(|i| format!("call-{i}")).collect();
        let fed = feed(&c, &urls, &shared, false, count).await;
        let pulled: Vec<String> = (0..count).map(|i| format!("chat-{i}")).collect();
        let pulled_rate = feed(&c, &urls, &pulled, true, 2 * count).await;
        println!(
            "{n} node(s): shared feed {fed:>7.0} interactions/s, pulled {pulled_rate:>7.0} interactions/s ({count} each, one Redis, same 2 cores)"
        );
    }

    // The reserved node's delay after the assigned node's death.
    let redis = ors_testsupport::RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(&bin, dir.path(), &redis.url(), 3, watch_ms);
    let three: Vec<ors_interactions::Candidate> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| ors_interactions::Candidate {
            node: n.to_string(),
            data_center: String::new(),
        })
        .collect();
    // Every node reads the feed before node2 dies.
    let warm = vec!["warm-up".to_string()];
    feed(&c, &[nodes[0].url.clone()], &warm, false, 1).await;
    let _ = nodes[1].child.kill();
    let _ = nodes[1].child.wait();
    let on_node2: Vec<String> = (0..)
        .map(|i| format!("late-{i}"))
        .filter(|id| ors_interactions::place(id, &three).unwrap().assigned == "node2")
        .take(samples)
        .collect();
    // All at once, right after the kill: while the membership still lists node2, its
    // interactions wait for the call-watching timeout on their reserved nodes; once node2
    // has left it, they are placed on the runner-up directly (no wait).
    let (c1, first, third) = (&c, nodes[0].url.clone(), nodes[2].url.clone());
    let latencies: Vec<f64> = futures_util::stream::iter(&on_node2)
        .map(|id| {
            let (first, third) = (first.clone(), third.clone());
            async move {
                let t = Instant::now();
                let r = c1
                    .post(format!("{first}/interactions"))
                    .json(&json!({ "id": id, "src": "call.scxml" }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                loop {
                    let r = c1
                        .get(format!("{third}/interactions/{id}"))
                        .send()
                        .await
                        .unwrap();
                    if r.status() == 200 {
                        return t.elapsed().as_secs_f64() * 1e3;
                    }
                    assert!(t.elapsed() < Duration::from_secs(60), "{id} got no session");
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        })
        .buffer_unordered(samples)
        .collect()
        .await;
    let mut delays: Vec<f64> = latencies
        .iter()
        .filter(|&&l| l >= watch_ms as f64)
        .map(|l| l - watch_ms as f64)
        .collect();
    let direct = latencies.len() - delays.len();
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "dead assigned node: the reserved node's session {:.0} ms (p50) / {:.0} ms (max) after the {watch_ms} ms call-watching timeout ({} interactions; {direct} more placed directly once node2 had left the membership)",
        ors_testsupport::percentile(&delays, 0.5),
        delays.last().copied().unwrap_or(0.0),
        delays.len()
    );
}
