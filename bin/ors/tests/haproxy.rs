//! Two nodes, each a primary and a backup, on a real redis-server, behind a real HAProxy
//! with `examples/haproxy/haproxy.cfg` (health checks on `/heartbeat`, stickiness on
//! `ORSSESSIONID`). Clients talk to HAProxy only and follow `307`s. The primary of node1
//! is killed with SIGKILL while the clients send events: every event answered `200` is in
//! its session afterwards, and none is applied twice.

mod e2e;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::*;
use ors_testsupport::{HaProxy, RedisServer, free_port};

const COUNTER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0"
    datamodel="ecmascript">
  <datamodel><data id="n" expr="0"/></datamodel>
  <state id="s"><transition event="inc"><assign location="n" expr="n + 1"/></transition></state>
</scxml>"#;

const CONFIG: &str = "[sessions]\nlease_ttl_ms = 1000\n";
const SESSIONS: usize = 12;

fn addr(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// Per session: events answered 200, and events sent (answered or not).
struct Tally {
    acked: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_primary_behind_haproxy_loses_no_acknowledged_event() {
    let redis = RedisServer::start(false);
    let redis_url: &str = Box::leak(redis.url().into_boxed_str());
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("counter.scxml"), COUNTER).unwrap();
    let (lb, lb1, lb2) = (free_port(), free_port(), free_port());
    let node_lb =
        |p: u16| -> &'static str { Box::leak(format!("http://127.0.0.1:{p}").into_boxed_str()) };
    let ors = |dir: &str, node: &'static str, instance: &'static str, external: &'static str| {
        Server::start(
            &tmp.path().join(dir),
            &docs,
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
                "--external-url",
                external,
            ],
        )
    };
    let mut n1a = ors("1a", "node1", "a", node_lb(lb1));
    let n1b = ors("1b", "node1", "b", node_lb(lb1));
    let n2a = ors("2a", "node2", "a", node_lb(lb2));
    let n2b = ors("2b", "node2", "b", node_lb(lb2));
    let cfg = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/haproxy/haproxy.cfg"
    );
    let env = [
        ("ORS_LB", format!("127.0.0.1:{lb}")),
        ("ORS_NODE1_LB", format!("127.0.0.1:{lb1}")),
        ("ORS_NODE2_LB", format!("127.0.0.1:{lb2}")),
        ("ORS_NODE1A", addr(&n1a)),
        ("ORS_NODE1B", addr(&n1b)),
        ("ORS_NODE2A", addr(&n2a)),
        ("ORS_NODE2B", addr(&n2b)),
    ];
    let listens = [env[0].1.clone(), env[1].1.clone(), env[2].1.clone()];
    let _haproxy = HaProxy::start(std::path::Path::new(cfg), &env, &listens);
    let lb_url = format!("http://127.0.0.1:{lb}");
    let c = client(); // follows redirects

    // Wait until HAProxy's health checks found the primaries.
    let t = Instant::now();
    while get(&c, &format!("{lb_url}/heartbeat")).await.0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no primary behind HAProxy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sessions through the load balancer land on both nodes.
    let mut sids = Vec::new();
    for _ in 0..SESSIONS {
        let (st, body) = post(
            &c,
            &format!("{lb_url}/scxml/session/start"),
            &[("src", "counter.scxml")],
        )
        .await;
        assert_eq!(st, 200, "{body}");
        sids.push(body["sessionid"].as_str().unwrap().to_string());
    }
    let on_node1 = sids.iter().filter(|s| s.starts_with("node1-")).count();
    assert!(
        on_node1 > 0 && on_node1 < SESSIONS,
        "round robin over the nodes: {sids:?}"
    );

    // Clients send events to every session through HAProxy while node1's primary dies.
    let tally = Arc::new(Tally {
        acked: (0..SESSIONS).map(|_| AtomicU64::new(0)).collect(),
        sent: (0..SESSIONS).map(|_| AtomicU64::new(0)).collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for w in 0..4 {
        let (c, sids, tally, stop, lb_url) = (
            client(),
            sids.clone(),
            tally.clone(),
            stop.clone(),
            lb_url.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let k = i % SESSIONS;
                i += 4;
                tally.sent[k].fetch_add(1, Ordering::SeqCst);
                let r = c
                    .post(format!("{lb_url}/scxml/session/{}/event/inc", sids[k]))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 200) {
                    tally.acked[k].fetch_add(1, Ordering::SeqCst);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    n1a.kill9();
    let killed = Instant::now();
    // Node1 serves again through its external URL once its backup took over.
    let (mut first_ok, node1_sid) = (None, sids.iter().find(|s| s.starts_with("node1-")).unwrap());
    while first_ok.is_none() {
        let url = format!("http://127.0.0.1:{lb1}/scxml/session/{node1_sid}/query");
        if get(&c, &url).await.0 == 200 {
            first_ok = Some(killed.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "node1 did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "node1 served again {:?} after kill -9 of its primary",
        first_ok.unwrap()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for h in clients {
        h.await.unwrap();
    }

    let mut total_acked = 0;
    for (k, sid) in sids.iter().enumerate() {
        let (st, q) = get(&c, &format!("{lb_url}/scxml/session/{sid}/query")).await;
        assert_eq!(st, 200, "{q}");
        let n = q["datamodel"]["n"].as_u64().unwrap();
        let (acked, sent) = (
            tally.acked[k].load(Ordering::SeqCst),
            tally.sent[k].load(Ordering::SeqCst),
        );
        assert!(
            n >= acked,
            "{sid}: {acked} events were acknowledged but it counted {n}"
        );
        assert!(
            n <= sent,
            "{sid}: {sent} events were sent but it counted {n}"
        );
        total_acked += acked;
    }
    eprintln!("{total_acked} acknowledged events over {SESSIONS} sessions, none lost");
    assert!(total_acked > 50, "the clients got through: {total_acked}");
    drop((n1b, n2a, n2b));
}
