//! Interactions fed into a real three-node cluster on a real redis-server (the store and
//! the feed): every interaction gets exactly one session, spread evenly; with the
//! assigned node killed or paused, its reserved node creates the sessions after the
//! call-watching timeout, never two for one interaction; later events reach the session;
//! pulled interactions a dead node held are reclaimed.

mod e2e;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use e2e::*;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

const CALL: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="interaction"/><data id="ani"/></datamodel>
  <state id="active"><transition event="released" target="done"/></state>
  <final id="done"/>
</scxml>"#;

const TOKEN: &str = "t";

/// The nodes' configuration: the feed on `redis`, call watching after `watch_ms`.
fn config(redis: &str, watch_ms: u64) -> String {
    format!(
        "[sessions]\nlease_ttl_ms = 1000\n[interactions]\nredis_url = \"{redis}\"\ncall_watching_timeout_ms = {watch_ms}\n"
    )
}

/// Three nodes on a new redis-server (store and feed) with call watching after
/// `watch_ms`, serving `call.scxml`; the guards, and the nodes' URLs.
fn three_nodes(
    watch_ms: u64,
) -> (
    ors_testsupport::RedisServer,
    tempfile::TempDir,
    Vec<Server>,
    Vec<String>,
) {
    let redis = ors_testsupport::RedisServer::start(false);
    let tmp = tempfile::tempdir().unwrap();
    let nodes = redis_nodes(
        tmp.path(),
        &redis.url(),
        &[TOKEN],
        &config(&redis.url(), watch_ms),
        &[("call.scxml", CALL)],
        3,
    );
    let urls = nodes.iter().map(|s| s.url.clone()).collect();
    (redis, tmp, nodes, urls)
}

/// Feeds interactions `ids` through `POST /interactions`, round-robin over `urls`.
async fn feed(c: &reqwest::Client, urls: &[String], ids: &[String]) {
    futures_util::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let url = format!("{}/interactions", urls[i % urls.len()]);
            let body =
                json!({ "id": id, "src": "call.scxml", "data": { "ani": format!("555-{i}") } });
            let c = c.clone();
            async move {
                let r = c
                    .post(url)
                    .bearer_auth(TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// Every session of the cluster, from `url`: (session id, node).
async fn all_sessions(c: &reqwest::Client, url: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let from = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let page =
            get_with_token(c, &format!("{url}/scxml/sessions?limit=1000{from}"), TOKEN).await;
        for s in page["sessions"].as_array().unwrap() {
            out.push((
                s["sessionid"].as_str().unwrap().to_string(),
                s["node"].as_str().unwrap().to_string(),
            ));
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return out,
        }
    }
}

/// Waits until the cluster holds `n` sessions (or panics after `secs`), then returns them.
async fn until_sessions(
    c: &reqwest::Client,
    url: &str,
    n: usize,
    secs: u64,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let all = all_sessions(c, url).await;
        if all.len() >= n {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} sessions after {secs} s",
            all.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The session of each interaction, as `GET /interactions/{id}` says.
async fn sessions_of(c: &reqwest::Client, url: &str, ids: &[String]) -> HashMap<String, String> {
    futures_util::stream::iter(ids)
        .map(|id| {
            let c = c.clone();
            let u = format!("{url}/interactions/{id}");
            async move {
                let r = c.get(u).bearer_auth(TOKEN).send().await.unwrap();
                assert_eq!(r.status(), 200, "interaction {id} has no session");
                let v: Value = r.json().await.unwrap();
                (id.clone(), v["sessionid"].as_str().unwrap().to_string())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fed_interaction_gets_exactly_one_session_spread_evenly() {
    const N: usize = 10_000;
    // The ORS default of 5 s: with a shorter one, a reserved node takes over what a busy
    // assigned node has not reached yet, which is right but skews the spread.
    let (_redis, _tmp, _nodes, urls) = three_nodes(5_000);
    let c = client();
    let ids: Vec<String> = (0..N).map(|i| format!("call-{i}")).collect();
    feed(&c, &urls, &ids).await;
    until_sessions(&c, &urls[0], N, 180).await;
    // Longer than the call-watching timeout: a reserved node that wrongly created a
    // second session would have done it by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let all = all_sessions(&c, &urls[0]).await;
    assert_eq!(all.len(), N, "one session per interaction, no more");
    let by_interaction = sessions_of(&c, &urls[1], &ids).await;
    let distinct: HashSet<&String> = by_interaction.values().collect();
    assert_eq!(distinct.len(), N);
    let listed: HashSet<&String> = all.iter().map(|(s, _)| s).collect();
    assert!(
        distinct.iter().all(|s| listed.contains(s)),
        "a claimed session is missing"
    );
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for (_, node) in &all {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    for (node, n) in &per_node {
        let off = (*n as f64 - N as f64 / 3.0).abs() / (N as f64 / 3.0);
        assert!(off < 0.05, "{node} runs {n} of {N} sessions: {per_node:?}");
    }
    println!("sessions per node: {per_node:?}");

    // Later events reach the session, on whichever node it runs.
    let released: Vec<String> = ids.iter().take(30).cloned().collect();
    for (i, id) in released.iter().enumerate() {
        let r = c
            .post(format!("{}/interactions", urls[i % 3]))
            .bearer_auth(TOKEN)
            .json(&json!({ "id": id, "kind": "event", "event": "released" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &released {
        let sid = &by_interaction[id];
        // Asked of its own node: a redirect would drop the token (another origin).
        let node: usize = ors_runtime_owner(sid)["node".len()..].parse().unwrap();
        loop {
            let url = format!("{}/scxml/session/{sid}/query", urls[node - 1]);
            let v = get_with_token(&c, &url, TOKEN).await;
            if v["done"] == true {
                break;
            }
            assert!(Instant::now() < deadline, "{id}'s session did not end: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_assigned_nodes_interactions_go_to_their_reserved_nodes_once() {
    const N: usize = 300;
    let (_redis, _tmp, mut nodes, _) = three_nodes(1_000);
    let c = client();
    // Every node has read the feed's position before node2 dies.
    let warm: Vec<String> = vec!["warm-up".into()];
    feed(&c, &[nodes[0].url.clone()], &warm).await;
    until_sessions(&c, &nodes[0].url, 1, 20).await;

    nodes[1].kill9();
    let killed = Instant::now();
    let alive = vec![nodes[0].url.clone(), nodes[2].url.clone()];
    let ids: Vec<String> = (0..N).map(|i| format!("dead-{i}")).collect();
    feed(&c, &alive, &ids).await;
    let all = until_sessions(&c, &nodes[0].url, N + 1, 60).await;
    let took = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all_after = all_sessions(&c, &nodes[0].url).await;
    assert_eq!(
        all_after.len(),
        N + 1,
        "no second session for any interaction"
    );
    assert!(all.iter().all(|(_, node)| node != "node2"));

    // Placed over the three nodes (node2's death is not yet in the membership, or is:
    // rendezvous hashing gives its interactions to the runner-up either way), node2's
    // interactions run on their reserved node.
    let three: Vec<ors_interactions::Candidate> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| ors_interactions::Candidate {
            node: n.to_string(),
            data_center: String::new(),
        })
        .collect();
    let by_interaction = sessions_of(&c, &nodes[0].url, &ids).await;
    let mut moved = 0;
    for id in &ids {
        let p = ors_interactions::place(id, &three).unwrap();
        let owner = ors_runtime_owner(&by_interaction[id]);
        let reserved = p.reserved.unwrap();
        if p.assigned == "node2" {
            moved += 1;
            assert_eq!(owner, reserved, "{id}, node2's, runs on {owner}");
        } else {
            // Its assigned node, or its reserved node if the assigned one was slower than
            // the call-watching timeout (a loaded machine): never a third node.
            assert!(
                owner == p.assigned || owner == reserved,
                "{id} runs on {owner}: neither {} nor {reserved}",
                p.assigned
            );
        }
    }
    assert!(moved > 50, "only {moved} of {N} were node2's");
    println!(
        "{moved} interactions of the dead node created by their reserved nodes; all {N} sessions {took:?} after the kill"
    );
}

/// The node part of a session id.
fn ors_runtime_owner(sid: &str) -> String {
    sid.rsplit_once('-')
        .map(|(n, _)| n.to_string())
        .unwrap_or_default()
}

/// Pulled interactions (the multimedia model): node1 pulls a batch and dies holding it
/// unacknowledged (a failpoint aborts it there, as `kill -9` would); node2, started
/// afterwards, takes the entries over once they have been idle for `reclaim_after_ms`,
/// creates one session for each and acknowledges them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_interactions_of_a_dead_node_are_reclaimed_once() {
    const N: usize = 200;
    let redis = ors_testsupport::RedisServer::start(false);
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("call.scxml"), CALL).unwrap();
    std::fs::write(tmp.path().join("tokens"), TOKEN).unwrap();
    let config = format!("{}reclaim_after_ms = 1000\n", config(&redis.url(), 1_000));
    let url = redis.url();
    let tokens = tmp.path().join("tokens");
    let args = |node: &'static str| {
        vec![
            "--store".to_string(),
            "redis".into(),
            "--redis-url".into(),
            url.clone(),
            "--node-id".into(),
            node.into(),
            "--api-tokens-file".into(),
            tokens.to_str().unwrap().to_string(),
        ]
    };
    let a1 = args("node1");
    let a1: Vec<&str> = a1.iter().map(String::as_str).collect();
    let mut one = Server::start_with_env(
        &tmp.path().join("1"),
        &docs,
        &config,
        &a1,
        &[("ORS_FAILPOINT", "pulled-unacknowledged")],
    );
    one.until_primary();
    let c = client();
    let ids: Vec<String> = (0..N).map(|i| format!("chat-{i}")).collect();
    futures_util::stream::iter(&ids)
        .map(|id| {
            let c = c.clone();
            let u = format!("{}/interactions", one.url);
            async move {
                let body = json!({ "id": id, "src": "call.scxml", "mode": "pull" });
                let r = c.post(u).bearer_auth(TOKEN).json(&body).send().await;
                // node1 may die while these arrive; what was not appended is not counted.
                r.ok().filter(|r| r.status() == 202).map(|_| id.clone())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while one.exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "node1 did not reach its failpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the stream holds is what must get a session: count it there.
    let appended = redis_cli(&url, &["XLEN", "ors:interactions:pulled"]);
    let appended: usize = appended.trim().parse().unwrap();
    assert!(appended > 0);
    let pending_before = redis_cli(&url, &["XPENDING", "ors:interactions:pulled", "ors"]);
    assert_ne!(
        pending_before.lines().next(),
        Some("0"),
        "node1 held none: {pending_before}"
    );

    let a2 = args("node2");
    let a2: Vec<&str> = a2.iter().map(String::as_str).collect();
    let two = Server::start(&tmp.path().join("2"), &docs, &config, &a2);
    two.until_primary();
    let revived = Instant::now();
    let all = until_sessions(&c, &two.url, appended, 60).await;
    let took = revived.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all_after = all_sessions(&c, &two.url).await;
    assert_eq!(
        all_after.len(),
        appended,
        "one session per pulled interaction"
    );
    assert!(all.iter().all(|(_, node)| node == "node2"));
    let pending = redis_cli(&url, &["XPENDING", "ors:interactions:pulled", "ors"]);
    assert_eq!(
        pending.lines().next(),
        Some("0"),
        "all acknowledged: {pending}"
    );
    println!("{appended} pulled interactions reclaimed from the dead node in {took:?}");
}

/// `redis-cli -u URL ARGS...`'s output.
fn redis_cli(url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The assigned node paused (`SIGSTOP`) while interactions arrive: its reserved nodes
/// create the sessions after the call-watching timeout; resumed (`SIGCONT`), node2 reads
/// the entries it missed, finds them claimed, and creates no second session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_assigned_node_resumes_without_creating_a_second_session() {
    const N: usize = 200;
    let (redis, _tmp, nodes, _) = three_nodes(1_000);
    let c = client();
    let warm: Vec<String> = vec!["warm-up".into()];
    feed(&c, &[nodes[0].url.clone()], &warm).await;
    until_sessions(&c, &nodes[0].url, 1, 20).await;

    nodes[1].signal("STOP");
    let alive = vec![nodes[0].url.clone(), nodes[2].url.clone()];
    let ids: Vec<String> = (0..N).map(|i| format!("paused-{i}")).collect();
    feed(&c, &alive, &ids).await;
    until_sessions(&c, &nodes[0].url, N + 1, 60).await;
    nodes[1].signal("CONT");
    // node2 comes back (as primary again, or deposed and back after its lease ran out)
    // and reads what it missed; give it time to, then count.
    nodes[1].until_primary();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pos = redis_cli(&redis.url(), &["GET", "ors:interactions:pos:node2"]);
        let last = redis_cli(
            &redis.url(),
            &["XREVRANGE", "ors:interactions", "+", "-", "COUNT", "1"],
        );
        if last.lines().next().is_some_and(|l| l.trim() == pos.trim()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node2 did not catch up with the feed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = all_sessions(&c, &nodes[0].url).await;
    assert_eq!(all.len(), N + 1, "no second session after node2 resumed");
    let by_interaction = sessions_of(&c, &nodes[0].url, &ids).await;
    let distinct: HashSet<&String> = by_interaction.values().collect();
    assert_eq!(distinct.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_events_reach_sessions_that_a_drain_moves() {
    const N: usize = 300;
    let (_redis, _tmp, _nodes, urls) = three_nodes(1_000);
    let c = client();
    let ids: Vec<String> = (0..N).map(|i| format!("moved-{i}")).collect();
    feed(&c, &urls, &ids).await;
    let before = until_sessions(&c, &urls[0], N, 60).await;
    let on_node1 = before.iter().filter(|(_, n)| n == "node1").count();
    assert!(on_node1 > 0, "{before:?}");

    // node1 is drained while every interaction's `released` event is fed.
    let drain = {
        let (c, url) = (c.clone(), urls[0].clone());
        tokio::spawn(async move {
            let r = c
                .post(format!("{url}/cluster/drain"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        })
    };
    futures_util::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let url = format!("{}/interactions", urls[i % 3]);
            let c = c.clone();
            async move {
                let body = json!({ "id": id, "kind": "event", "event": "released" });
                let r = c.post(url).bearer_auth(TOKEN).json(&body).send().await;
                assert_eq!(r.unwrap().status(), 202);
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let report = drain.await.unwrap();
    assert_eq!(report["kept_count"], 0, "{report}");

    // Every session ended: each event reached its session, wherever it ran then.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = all_sessions(&c, &urls[1]).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} sessions never got their event: {:?}",
            left.len(),
            &left[..left.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_can_live_on_a_redis_cluster() {
    const N: usize = 300;
    let store = ors_testsupport::RedisServer::start(false);
    let feed_cluster = ors_testsupport::RedisCluster::start();
    // fred's URL of a cluster: one node, and the others as `node=` parameters.
    let urls = feed_cluster.urls();
    let others: Vec<String> = urls[1..]
        .iter()
        .map(|u| format!("node={}", u.trim_start_matches("redis://")))
        .collect();
    let feed_url = format!(
        "redis-cluster://{}?{}",
        urls[0].trim_start_matches("redis://"),
        others.join("&")
    );
    let tmp = tempfile::tempdir().unwrap();
    let nodes = redis_nodes(
        tmp.path(),
        &store.url(),
        &[TOKEN],
        &config(&feed_url, 1_000),
        &[("call.scxml", CALL)],
        3,
    );
    let urls: Vec<String> = nodes.iter().map(|s| s.url.clone()).collect();
    let c = client();
    let ids: Vec<String> = (0..N).map(|i| format!("clustered-{i}")).collect();
    feed(&c, &urls, &ids).await;
    until_sessions(&c, &urls[0], N, 60).await;
    // And the pull queue, a consumer group on the cluster.
    let pulled: Vec<String> = (0..100).map(|i| format!("pulled-{i}")).collect();
    for (i, id) in pulled.iter().enumerate() {
        let body = json!({ "id": id, "src": "call.scxml", "mode": "pull" });
        let r = c
            .post(format!("{}/interactions", urls[i % 3]))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    until_sessions(&c, &urls[0], N + pulled.len(), 60).await;
    let mut all = ids.clone();
    all.extend(pulled);
    let by_interaction = sessions_of(&c, &urls[1], &all).await;
    let distinct: HashSet<&String> = by_interaction.values().collect();
    assert_eq!(distinct.len(), all.len(), "one session per interaction");
}
