//! Draining a node under load, three real nodes on a real redis-server: node1's sessions
//! move to node2 and node3 while clients keep sending events through node1, and each
//! event makes its session send one to another session (moving too); no acknowledged
//! event is lost or run twice, no event between sessions either, every pending timer
//! fires exactly once (on the node the session moved to), node1's index ends empty, and
//! requests for a moved session follow `307`s to its new node, from node1 and, once node1
//! is gone, from any node (the store's record, not the id, says where it lives).

mod e2e;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::*;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

/// Counts `inc` events, each of which sends `ping` to the session `_event.data.peer`, and
/// counts pings; a delayed send set on entry fires `tick` once.
const COUNTER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="n" expr="0"/><data id="pings" expr="0"/><data id="ticks" expr="0"/></datamodel>
  <state id="s">
    <onentry><send event="tick" delay="6s"/></onentry>
    <transition event="inc">
      <assign location="n" expr="n + 1"/>
      <send event="ping" targetexpr="'#_scxml_' + _event.data.peer"/>
    </transition>
    <transition event="ping"><assign location="pings" expr="pings + 1"/></transition>
    <transition event="tick"><assign location="ticks" expr="ticks + 1"/></transition>
  </state>
</scxml>"#;

const TOKEN: &str = "t";
const CONFIG: &str = "[sessions]\nlease_ttl_ms = 1000\n";
const SESSIONS: usize = 2000;
const CLIENTS: usize = 16;

/// One call, following `307`s (with the token); the final status, its body, and the
/// redirects taken.
async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    form: &[(&str, &str)],
) -> Result<(u16, Value, Vec<String>), reqwest::Error> {
    let mut url = url.to_string();
    let mut hops = Vec::new();
    loop {
        let mut req = c.request(method.clone(), &url).bearer_auth(TOKEN);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        if !form.is_empty() {
            req = req.form(form);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        if status == 307 && hops.len() < 5 {
            url = r.headers()["location"].to_str().unwrap().to_string();
            hops.push(url.clone());
            continue;
        }
        let text = r.text().await?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        return Ok((status, v, hops));
    }
}

/// `ors sessions --url URL --token T --json COMMAND`: its JSON output.
async fn ors_sessions_cli(url: &str, command: &'static str) -> Value {
    let url = url.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ors"))
            .args([
                "sessions", "--url", &url, "--token", TOKEN, "--json", command,
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_nodes_sessions_move_under_load_with_their_events_and_timers() {
    let redis = ors_testsupport::RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = redis_nodes(
        dir.path(),
        &redis.url(),
        &[TOKEN],
        CONFIG,
        &[("counter.scxml", COUNTER)],
        3,
    );
    // Redirects are followed by `call`, so that the token goes along to the next node.
    let c = no_redirects(Duration::from_secs(30));
    let node1 = nodes[0].url.clone();
    let sids: Vec<String> = futures_util::stream::iter(0..SESSIONS)
        .map(|_| start_with_token(&c, &node1, TOKEN, "counter.scxml"))
        .buffer_unordered(32)
        .collect()
        .await;
    let sids = Arc::new(sids);

    // Load through node1 all along: each event has its own Idempotency-Key and is retried
    // until answered 200 (a 503 while its session moves, a dropped connection).
    let stop = Arc::new(AtomicBool::new(false));
    // Per session: `inc`s acknowledged, and pings it is owed by them.
    let acked: Arc<std::sync::Mutex<HashMap<String, u64>>> = Arc::default();
    let owed: Arc<std::sync::Mutex<HashMap<String, u64>>> = Arc::default();
    let retries = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    // Waits until the clients have had `n` events acknowledged in all.
    let until_answered = |n: usize| {
        let answered = answered.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while answered.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut clients = Vec::new();
    for w in 0..CLIENTS {
        let (c, sids, stop, acked, owed, retries, answered, node1) = (
            c.clone(),
            sids.clone(),
            stop.clone(),
            acked.clone(),
            owed.clone(),
            retries.clone(),
            answered.clone(),
            node1.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let sid = &sids[i % sids.len()];
                let peer = &sids[(i * 7 + 1) % sids.len()];
                let key = format!("w{w}-{i}");
                let url = format!("{node1}/scxml/session/{sid}/event/inc");
                let form = [("peer", peer.as_str())];
                loop {
                    match call(&c, reqwest::Method::POST, &url, Some(&key), &form).await {
                        Ok((200, _, _)) => break,
                        Ok((503, _, _)) | Err(_) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Ok((status, body, _)) => panic!("{sid} inc: {status} {body}"),
                    }
                }
                *acked.lock().unwrap().entry(sid.clone()).or_default() += 1;
                *owed.lock().unwrap().entry(peer.clone()).or_default() += 1;
                answered.fetch_add(1, Ordering::Relaxed);
                i += CLIENTS;
            }
        }));
    }
    // The load runs before, during and after the drain.
    until_answered(250).await;

    // The drain, through the CLI (`POST /cluster/drain`).
    let report = ors_sessions_cli(&node1, "drain").await;
    let moved: u64 = report["moved"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(moved as usize, SESSIONS, "{report}");
    assert_eq!(report["kept_count"], 0, "{report}");
    for node in ["node2", "node3"] {
        assert!(
            report["moved"][node].as_u64().unwrap() > 0,
            "both other nodes take some: {report}"
        );
    }
    until_answered(answered.load(Ordering::Relaxed) + 250).await;
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let owed = owed.lock().unwrap().clone();
    let sent: u64 = acked.values().sum();
    eprintln!(
        "drain: {} ms; {sent} events acknowledged, {} answered 503 and retried",
        report["elapsed_ms"],
        retries.load(Ordering::Relaxed)
    );
    assert!(sent >= 500, "the load ran: {sent} events");

    // node1 keeps none; the others hold them all.
    let (_, page, _) = call(
        &c,
        reqwest::Method::GET,
        &format!("{node1}/scxml/sessions?node=node1"),
        None,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(page["sessions"].as_array().unwrap().len(), 0, "{page}");

    // Every acknowledged event ran exactly once, and the timer fired once, on the new
    // node (it was due 6 s after the start, after the drain).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut owners: HashMap<String, String> = HashMap::new();
    for sid in sids.iter() {
        loop {
            let url = format!("{node1}/scxml/session/{sid}/query");
            let (status, q, hops) = call(&c, reqwest::Method::GET, &url, None, &[])
                .await
                .unwrap();
            assert_eq!(status, 200, "{sid}: {q}");
            assert_eq!(
                hops.len(),
                1,
                "node1 redirects {sid} to its new node: {hops:?}"
            );
            let dm = &q["datamodel"];
            let want = acked.get(sid).copied().unwrap_or(0);
            assert_eq!(dm["n"], json!(want), "{sid}: acknowledged events");
            let pings = dm["pings"].as_u64().unwrap();
            let owed = owed.get(sid).copied().unwrap_or(0);
            assert!(
                pings <= owed,
                "{sid}: {pings} pings, {owed} sent: one ran twice"
            );
            let ticks = dm["ticks"].as_u64().unwrap();
            assert!(ticks <= 1, "{sid}: the timer fired {ticks} times");
            if ticks == 1 && pings == owed {
                let owner = nodes
                    .iter()
                    .position(|n| hops[0].starts_with(&n.url))
                    .expect("a node's URL");
                owners.insert(sid.clone(), format!("node{}", owner + 1));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{sid}: the timer fired {ticks} times, and {pings} of {owed} pings arrived"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(owners.values().all(|n| n == "node2" || n == "node3"));

    // With node1 gone, node3 finds node2's sessions from the store's record.
    nodes[0].kill9();
    let on_node2 = owners
        .iter()
        .find(|(_, n)| *n == "node2")
        .map(|(s, _)| s.clone())
        .unwrap();
    let url = format!("{}/scxml/session/{on_node2}/query", nodes[2].url);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Until node1's membership entry expires, node3 sends it to node1, which is dead.
        let answer = call(&c, reqwest::Method::GET, &url, None, &[]).await;
        if let Ok((200, q, hops)) = &answer {
            assert!(hops.last().unwrap().starts_with(&nodes[1].url), "{hops:?}");
            assert_eq!(q["datamodel"]["ticks"], json!(1));
            break;
        }
        assert!(Instant::now() < deadline, "{answer:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing more fires: the timers are gone from the store.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, q, _) = call(&c, reqwest::Method::GET, &url, None, &[])
        .await
        .unwrap();
    assert_eq!(q["datamodel"]["ticks"], json!(1));
}

/// One more process, of `node` as `instance`, in the layout [`redis_nodes`] made in `dir`
/// (its documents and tokens).
fn serve_node(dir: &std::path::Path, redis_url: &str, node: &str, instance: &str) -> Server {
    let tokens = dir.join("tokens");
    Server::start(
        &dir.join(format!("{node}-{instance}")),
        &dir.join("docs"),
        CONFIG,
        &[
            "--store",
            "redis",
            "--redis-url",
            redis_url,
            "--node-id",
            node,
            "--instance",
            instance,
            "--api-tokens-file",
            tokens.to_str().unwrap(),
        ],
    )
}

/// Waits until `url` lists `n` members.
async fn until_members(c: &reqwest::Client, url: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = format!("{url}/cluster/members");
        let (_, m, _) = call(c, reqwest::Method::GET, &list, None, &[])
            .await
            .unwrap();
        if m["members"].as_array().unwrap().len() == n {
            return;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sessions of a node per the store's index, through any node.
async fn count_on(c: &reqwest::Client, url: &str, node: &str) -> usize {
    let mut n = 0;
    let mut after = String::new();
    loop {
        let page_url = format!("{url}/scxml/sessions?node={node}&limit=1000&after={after}");
        let (status, page, _) = call(c, reqwest::Method::GET, &page_url, None, &[])
            .await
            .unwrap();
        assert_eq!(status, 200, "{page}");
        let list = page["sessions"].as_array().unwrap();
        n += list.len();
        match page["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => return n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_joins_gets_its_share_by_a_rebalance() {
    let redis = ors_testsupport::RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let nodes = redis_nodes(
        dir.path(),
        &redis.url(),
        &[TOKEN],
        CONFIG,
        &[("counter.scxml", COUNTER)],
        2,
    );
    // Redirects are followed by `call`, so that the token goes along to the next node.
    let c = no_redirects(Duration::from_secs(30));
    let start_on = |url: String, n: usize| {
        let c = c.clone();
        async move {
            futures_util::stream::iter(0..n)
                .map(|_| start_with_token(&c, &url, TOKEN, "counter.scxml"))
                .buffer_unordered(16)
                .collect::<Vec<String>>()
                .await
        }
    };
    let mut sids = start_on(nodes[0].url.clone(), 300).await;
    sids.extend(start_on(nodes[1].url.clone(), 100).await);

    // node3 joins.
    let node3 = serve_node(dir.path(), &redis.url(), "node3", "a");
    node3.until_primary();
    until_members(&c, &nodes[1].url, 3).await;

    // Asked of node2 (any node), through the CLI.
    let report = ors_sessions_cli(&nodes[1].url, "rebalance").await;
    assert_eq!(
        report["before"],
        json!({"node1": 300, "node2": 100, "node3": 0})
    );

    // 400 over three: at most 134 each; node1 gave 166 (34 to node2, 132 to node3 or so).
    let mut counts = Vec::new();
    for node in ["node1", "node2", "node3"] {
        counts.push(count_on(&c, &nodes[0].url, node).await);
    }
    assert_eq!(counts.iter().sum::<usize>(), 400, "{counts:?} {report}");
    assert!(
        counts.iter().all(|n| (132..=134).contains(n)),
        "{counts:?} {report}"
    );

    // Every session still answers, through node1, wherever it runs now.
    for sid in &sids {
        let url = format!("{}/scxml/session/{sid}/event/inc", nodes[0].url);
        let peer = [("peer", sid.as_str())];
        let (status, body, _) = call(&c, reqwest::Method::POST, &url, None, &peer)
            .await
            .unwrap();
        assert_eq!(status, 200, "{sid}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_moved_to_a_node_survive_its_primarys_kill_9() {
    let redis = ors_testsupport::RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("counter.scxml"), COUNTER).unwrap();
    std::fs::write(dir.path().join("tokens"), TOKEN).unwrap();
    let serve = |node: &str, instance: &str| serve_node(dir.path(), &redis.url(), node, instance);
    let node1 = serve("node1", "a");
    node1.until_primary();
    let mut node2a = serve("node2", "a");
    node2a.until_primary();
    let node2b = serve("node2", "b");
    // Redirects are followed by `call`, so that the token goes along to the next node.
    let c = no_redirects(Duration::from_secs(30));
    // node1 must see node2 before it can drain to it.
    until_members(&c, &node1.url, 3).await;
    let sids: Vec<String> = futures_util::stream::iter(0..200)
        .map(|_| start_with_token(&c, &node1.url, TOKEN, "counter.scxml"))
        .buffer_unordered(16)
        .collect()
        .await;
    let report = ors_sessions_cli(&node1.url, "drain").await;
    assert_eq!(report["moved"], json!({"node2": 200}), "{report}");

    // node2's primary dies; its backup takes the node over, the moved sessions with it.
    node2a.kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    for sid in &sids {
        let url = format!("{}/scxml/session/{sid}/event/inc", node1.url);
        loop {
            let answer = call(
                &c,
                reqwest::Method::POST,
                &url,
                Some("once"),
                &[("peer", sid)],
            )
            .await;
            match answer {
                Ok((200, _, hops)) => {
                    assert!(hops.last().unwrap().starts_with(&node2b.url), "{hops:?}");
                    break;
                }
                other => {
                    assert!(Instant::now() < deadline, "{sid}: {other:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // Each ran its event once, got its own ping, and its timer fires once, on node2b.
    for sid in &sids {
        let url = format!("{}/scxml/session/{sid}/query", node2b.url);
        loop {
            let (status, q, _) = call(&c, reqwest::Method::GET, &url, None, &[])
                .await
                .unwrap();
            assert_eq!(status, 200, "{sid}: {q}");
            let dm = &q["datamodel"];
            assert_eq!(dm["n"], json!(1), "{sid}");
            let done = dm["ticks"] == json!(1) && dm["pings"] == json!(1);
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "{sid}: {dm}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
