//! A node served by a primary and a backup process on a real redis-server: roles,
//! `/heartbeat`, `307` from the backup, takeover after `kill -9` of the primary with
//! nothing acknowledged lost and the timer firing once, and the old primary rejoining as
//! a backup. (Routing between nodes, HAProxy and the failover benchmark are not built
//! yet; see issue 7.)

mod e2e;

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

const COUNTER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0"
    datamodel="ecmascript" _sendSessionRecovered="true">
  <datamodel><data id="n" expr="0"/><data id="fired" expr="0"/><data id="recovered" expr="0"/></datamodel>
  <state id="s">
    <transition event="inc"><assign location="n" expr="n + 1"/></transition>
    <transition event="arm"><send event="ring" delay="2s"/></transition>
    <transition event="ring"><assign location="fired" expr="fired + 1"/></transition>
    <transition event="session.recovered"><assign location="recovered" expr="recovered + 1"/></transition>
  </state>
</scxml>"#;

const CONFIG: &str = "[sessions]\nlease_ttl_ms = 1000\n";

/// `(node, instance, role, data center)` of every member `s` lists, in order.
async fn members(c: &reqwest::Client, s: &Server) -> Vec<(String, String, String, String)> {
    let (st, body) = get(c, &format!("{}/cluster/members", s.url)).await;
    assert_eq!(st, 200, "{body}");
    let field = |m: &Value, k: &str| m[k].as_str().unwrap_or_default().to_string();
    body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let ids = (field(m, "node"), field(m, "instance"));
            (ids.0, ids.1, field(m, "role"), field(m, "data_center"))
        })
        .collect()
}

/// Waits until `s` lists exactly `want` as (node, instance, role).
async fn until_members(c: &reqwest::Client, s: &Server, want: &[(&str, &str, &str)]) {
    let t = Instant::now();
    loop {
        let got = members(c, s).await;
        let got: Vec<_> = got
            .iter()
            .map(|(n, i, r, _)| (n.as_str(), i.as_str(), r.as_str()))
            .collect();
        if got == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "members {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn heartbeat(c: &reqwest::Client, s: &Server) -> (u16, Value) {
    get(c, &format!("{}/heartbeat", s.url)).await
}

/// Waits (at most 10 s) until the heartbeat's `field` is `want`.
async fn until_heartbeat(c: &reqwest::Client, s: &Server, field: &str, want: Value) {
    let t = Instant::now();
    loop {
        let (_, body) = heartbeat(c, s).await;
        if body[field] == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} never had {field} = {want}: {body}",
            s.url
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_primary(c: &reqwest::Client, s: &Server, secs: u64) -> Duration {
    let t = Instant::now();
    loop {
        if heartbeat(c, s).await.0 == 200 {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{} did not become primary",
            s.url
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real redis-server and a documents directory for the processes of one test.
struct Rig {
    redis: ors_testsupport::RedisServer,
    tmp: tempfile::TempDir,
    docs: std::path::PathBuf,
}

impl Rig {
    fn new(docs: &[(&str, &str)]) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("docs");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in docs {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Rig {
            redis: ors_testsupport::RedisServer::start(false),
            tmp,
            docs: dir,
        }
    }

    /// `ors serve` on this rig's redis-server, with `flags` (`--instance a`, ...).
    fn serve(&self, name: &str, config: &str, flags: &[&str]) -> Server {
        self.serve_via(&self.redis.url(), name, config, flags)
    }

    /// The same, reaching the store at `redis_url` (through a proxy, say).
    fn serve_via(&self, redis_url: &str, name: &str, config: &str, flags: &[&str]) -> Server {
        let mut args = vec!["--store", "redis", "--redis-url", redis_url];
        args.extend_from_slice(flags);
        Server::start(&self.tmp.path().join(name), &self.docs, config, &args)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_redirects_and_takes_over_after_kill_9() {
    let rig = Rig::new(&[("counter.scxml", COUNTER)]);
    let mut a = rig.serve("a", CONFIG, &["--instance", "a"]);
    let b = rig.serve("b", CONFIG, &["--instance", "b"]);
    let c = no_redirects(Duration::from_secs(10));

    // Roles: the first process is the primary, the second its backup; both are listed
    // in the membership, which either answers.
    until_members(
        &c,
        &b,
        &[("node1", "a", "primary"), ("node1", "b", "backup")],
    )
    .await;
    assert_eq!(
        heartbeat(&c, &a).await,
        (
            200,
            serde_json::json!({"role": "primary", "store": "up", "recovering": 0})
        )
    );
    let (st, body) = heartbeat(&c, &b).await;
    assert_eq!(st, 503);
    assert_eq!(body["role"], "backup");
    assert_eq!(body["primary"], a.url.as_str());

    // The backup sends requests to its primary with 307 (method and body kept).
    let r = c
        .post(format!("{}/scxml/session/start?x=1", b.url))
        .form(&[("src", "counter.scxml")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{}/scxml/session/start?x=1", a.url)
    );
    // A client that follows redirects gets its session through the backup.
    let following = client();
    let r = following
        .post(format!("{}/scxml/session/start", b.url))
        .form(&[("src", "counter.scxml")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.json::<Value>().await.unwrap()["sessionid"]
        .as_str()
        .unwrap()
        .to_string();

    for _ in 0..5 {
        let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[]).await;
        assert_eq!(st, 200);
    }
    let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/event/arm", a.url), &[]).await;
    assert_eq!(st, 200);

    // kill -9 the primary: the backup takes over once the lease expires (TTL 1 s).
    a.kill9();
    let took = until_primary(&c, &b, 10).await;
    eprintln!("takeover after kill -9: {took:?}");
    let q = wait_for(&c, &b, &sid, 10, |st, _| st == 200).await;
    assert_eq!(q["datamodel"]["n"], 5, "every acknowledged event survived");
    // The timer armed on the old primary fires once, from the new one.
    let q = wait_for(&c, &b, &sid, 10, |_, q| q["datamodel"]["fired"] == 1).await;
    assert_eq!(q["datamodel"]["recovered"], 1, "one session.recovered");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(query(&c, &b, &sid).await.1["datamodel"]["fired"], 1);
    // The dead process drops out of the membership when its entry expires.
    until_members(&c, &b, &[("node1", "b", "primary")]).await;

    // The old primary comes back as a backup of the new one.
    a.restart();
    let (st, body) = heartbeat(&c, &a).await;
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["primary"], b.url.as_str());
    let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[]).await;
    assert_eq!(st, 307);
    let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/event/inc", b.url), &[]).await;
    assert_eq!(st, 200);
    assert_eq!(query(&c, &b, &sid).await.1["datamodel"]["n"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_the_node_over_at_once() {
    let rig = Rig::new(&[("counter.scxml", COUNTER)]);
    // A long lease: only the hand-over can explain a quick takeover.
    let config = "[sessions]\nlease_ttl_ms = 30000\n";
    let mut a = rig.serve("a", config, &["--instance", "a"]);
    let b = rig.serve("b", config, &["--instance", "b"]);
    let c = no_redirects(Duration::from_secs(10));
    let sid = start(&c, &a, "counter.scxml", &[]).await;
    post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[]).await;
    assert!(a.sigterm().success());
    let took = until_primary(&c, &b, 5).await;
    assert!(took < Duration::from_secs(3), "hand-over took {took:?}");
    let q = wait_for(&c, &b, &sid, 10, |st, _| st == 200).await;
    assert_eq!(q["datamodel"]["n"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_another_nodes_session_are_redirected_to_that_node() {
    let rig = Rig::new(&[("counter.scxml", COUNTER)]);
    let one = rig.serve("1", CONFIG, &["--node-id", "node1"]);
    let two = rig.serve("2", CONFIG, &["--node-id", "node2", "--data-center", "dc2"]);
    let c = no_redirects(Duration::from_secs(10));
    // Each node finds the other in the membership.
    until_members(
        &c,
        &one,
        &[("node1", "main", "primary"), ("node2", "main", "primary")],
    )
    .await;
    let listed = members(&c, &one).await;
    assert_eq!((listed[0].3.as_str(), listed[1].3.as_str()), ("", "dc2"));
    let sid = start(&c, &one, "counter.scxml", &[]).await;
    assert!(sid.starts_with("node1-"));
    // Asked of node2: 307 to node1's external URL (its listen address here), with the
    // session cookie; the query string is kept.
    let r = c
        .post(format!("{}/scxml/session/{sid}/event/inc?k=v", two.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{}/scxml/session/{sid}/event/inc?k=v", one.url)
    );
    assert_eq!(
        r.headers()["set-cookie"].to_str().unwrap(),
        format!("ORSSESSIONID={sid}; Path=/")
    );
    // A client that follows redirects reaches the session through either node.
    let following = client();
    for via in [&one, &two] {
        let r = following
            .post(format!("{}/scxml/session/{sid}/event/inc", via.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(query(&following, &two, &sid).await.1["datamodel"]["n"], 2);
    // A node that has no primary: 503, not a redirect to nowhere.
    let (st, body) = post(
        &c,
        &format!("{}/scxml/session/node9-abc/event/inc", two.url),
        &[],
    )
    .await;
    assert_eq!(st, 503, "{body}");
}

/// A primary paused (SIGSTOP) past its lease: the backup takes over; when the old
/// primary runs again it answers no `200` for the node it no longer serves, steps down,
/// and nothing it held in memory overwrites what its successor did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_is_replaced_and_never_acknowledges_after_it() {
    // plain.scxml has no _sendSessionRecovered: the new primary does not write it on
    // takeover, so only node-wide fencing (not the record's) refuses the old primary's
    // write.
    let plain = COUNTER.replace(" _sendSessionRecovered=\"true\"", "");
    let rig = Rig::new(&[("counter.scxml", COUNTER), ("plain.scxml", &plain)]);
    let a = rig.serve("a", CONFIG, &["--instance", "a"]);
    let b = rig.serve("b", CONFIG, &["--instance", "b"]);
    let c = no_redirects(Duration::from_secs(10));
    let sid = start(&c, &a, "counter.scxml", &[]).await;
    let quiet = start(&c, &a, "plain.scxml", &[]).await;
    assert_eq!(
        post(
            &c,
            &format!("{}/scxml/session/{quiet}/event/inc", a.url),
            &[]
        )
        .await
        .0,
        200
    );
    for _ in 0..3 {
        assert_eq!(
            post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[])
                .await
                .0,
            200
        );
    }
    a.signal("STOP");
    until_primary(&c, &b, 10).await;
    for _ in 0..2 {
        assert_eq!(
            post(&c, &format!("{}/scxml/session/{sid}/event/inc", b.url), &[])
                .await
                .0,
            200
        );
    }
    // A request to the paused process waits in its socket until it runs again.
    let late = {
        let (c, url) = (
            c.clone(),
            format!("{}/scxml/session/{sid}/event/inc", a.url),
        );
        tokio::spawn(async move { c.post(url).send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal("CONT");
    let status = late.await.unwrap().unwrap();
    assert_ne!(
        status, 200,
        "the old primary acknowledged an event after losing the node"
    );
    // It steps down and points at its successor.
    let t = Instant::now();
    loop {
        let (st, body) = heartbeat(&c, &a).await;
        if st == 503 && body["primary"] == b.url.as_str() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{st} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(query(&c, &b, &sid).await.1["datamodel"]["n"], 5);
    assert_eq!(
        post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[])
            .await
            .0,
        307
    );
}

/// The store stops answering (redis CLIENT PAUSE, longer than the lease): `/heartbeat`
/// says so, the primary steps down, and when the store answers again the node serves
/// again without a restart, with its sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_rides_out_a_store_outage() {
    let rig = Rig::new(&[("counter.scxml", COUNTER)]);
    let a = rig.serve("a", CONFIG, &["--instance", "a"]);
    let c = no_redirects(Duration::from_secs(10));
    let sid = start(&c, &a, "counter.scxml", &[]).await;
    assert_eq!(
        post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[])
            .await
            .0,
        200
    );
    let paused = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &rig.redis.port.to_string(),
            "client",
            "pause",
            "3000",
            "all",
        ])
        .output()
        .unwrap();
    assert!(paused.status.success());
    let t = Instant::now();
    let mut saw_down = false;
    let mut stepped_down = false;
    while t.elapsed() < Duration::from_millis(2500) {
        let (st, body) = heartbeat(&c, &a).await;
        saw_down |= body["store"] == "down";
        stepped_down |= st == 503 && body["role"] == "backup";
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_down, "/heartbeat reported the outage");
    assert!(stepped_down, "the primary stepped down without its lease");
    until_primary(&c, &a, 10).await;
    assert_eq!(heartbeat(&c, &a).await.1["store"], "up");
    assert_eq!(
        post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[])
            .await
            .0,
        200
    );
    assert_eq!(query(&c, &a, &sid).await.1["datamodel"]["n"], 2);
}

/// The backup watches its primary's process: after `kill -9` it takes over at once,
/// long before the primary's (30 s) lease would expire, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_before_its_lease_expires() {
    let rig = Rig::new(&[("counter.scxml", COUNTER)]);
    let config = "[sessions]\nlease_ttl_ms = 30000\n";
    let mut a = rig.serve("a", config, &["--instance", "a"]);
    let b = rig.serve("b", config, &["--instance", "b"]);
    let c = no_redirects(Duration::from_secs(10));
    let sid = start(&c, &a, "counter.scxml", &[]).await;
    for _ in 0..4 {
        assert_eq!(
            post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[])
                .await
                .0,
            200
        );
    }
    // Let the backup's watch on the primary settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill9();
    let took = until_primary(&c, &b, 10).await;
    eprintln!("takeover after kill -9 with a 30 s lease: {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: the lease expiry, not the watch"
    );
    let q = wait_for(&c, &b, &sid, 10, |st, _| st == 200).await;
    assert_eq!(q["datamodel"]["n"], 4);
}

const PINGER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="peer" expr="''"/><data id="pongs" expr="0"/><data id="errors" expr="0"/></datamodel>
  <state id="s">
    <onentry><send event="ping" targetexpr="'#_scxml_' + peer"/></onentry>
    <transition event="pong"><assign location="pongs" expr="pongs + 1"/></transition>
    <transition event="error.communication"><assign location="errors" expr="errors + 1"/></transition>
  </state>
</scxml>"#;

const PONGER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="pings" expr="0"/></datamodel>
  <state id="s">
    <transition event="ping"><assign location="pings" expr="pings + 1"/>
      <send event="pong" targetexpr="_event.origin"/></transition>
  </state>
</scxml>"#;

/// `<send target="#_scxml_<id>">` to a session of another node reaches it (and the reply
/// comes back to `_event.origin`); a session that does not exist there, or a node with no
/// primary, raises error.communication in the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_different_nodes_send_each_other_events() {
    let rig = Rig::new(&[("pinger.scxml", PINGER), ("ponger.scxml", PONGER)]);
    let one = rig.serve("1", CONFIG, &["--node-id", "node1"]);
    let two = rig.serve("2", CONFIG, &["--node-id", "node2"]);
    let c = no_redirects(Duration::from_secs(10));
    let ponger = start(&c, &two, "ponger.scxml", &[]).await;
    let pinger = start(&c, &one, "pinger.scxml", &[("peer", &ponger)]).await;
    wait_for(&c, &one, &pinger, 10, |_, q| q["datamodel"]["pongs"] == 1).await;
    assert_eq!(query(&c, &two, &ponger).await.1["datamodel"]["pings"], 1);
    for nobody in ["node2-nosuch", "node9-x"] {
        let sid = start(&c, &one, "pinger.scxml", &[("peer", nobody)]).await;
        let q = wait_for(&c, &one, &sid, 10, |_, q| q["datamodel"]["errors"] == 1).await;
        assert_eq!(q["datamodel"]["pongs"], 0);
    }
}

/// A TCP proxy the test can cut and restore: connections through it break at once while
/// it is cut, and new ones are refused.
struct Proxy {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            std::sync::Arc::default();
        let (o, cs) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                cs.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            port,
            open,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The primary loses the store (a TCP proxy between them is cut) while its backup still
/// reaches it: the primary steps down, the backup takes over when the lease expires (the
/// primary's process is alive, so the watch gives no evidence), nothing the cut-off
/// process tried is applied, and when the link comes back it stays a backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_from_the_store_steps_down_and_its_backup_takes_over() {
    let rig = Rig::new(&[("counter.scxml", COUNTER)]);
    let proxy = Proxy::start(format!("127.0.0.1:{}", rig.redis.port)).await;
    let through = format!("redis://127.0.0.1:{}", proxy.port);
    let a = rig.serve_via(&through, "a", CONFIG, &["--instance", "a"]);
    let b = rig.serve("b", CONFIG, &["--instance", "b"]);
    let c = no_redirects(Duration::from_secs(10));
    let sid = start(&c, &a, "counter.scxml", &[]).await;
    for _ in 0..3 {
        assert_eq!(
            post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[])
                .await
                .0,
            200
        );
    }
    proxy.cut();
    let cut = Instant::now();
    // The cut-off process tries to work while it still believes it is primary.
    let mut from_a = 0;
    let took = loop {
        let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[]).await;
        assert_ne!(
            st, 200,
            "a process cut off from the store acknowledged an event"
        );
        from_a += 1;
        if heartbeat(&c, &b).await.0 == 200 {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "the backup did not take over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "backup took over {took:?} after the cut ({from_a} refused attempts on the old primary)"
    );
    let (st, body) = heartbeat(&c, &a).await;
    assert_eq!((st, &body["role"]), (503, &Value::from("backup")), "{body}");
    for _ in 0..2 {
        assert_eq!(
            post(&c, &format!("{}/scxml/session/{sid}/event/inc", b.url), &[])
                .await
                .0,
            200
        );
    }
    proxy.restore();
    // Whatever the old primary's client still had queued must not land.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        query(&c, &b, &sid).await.1["datamodel"]["n"],
        5,
        "no write of the fenced process was applied"
    );
    let (st, body) = heartbeat(&c, &a).await;
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["primary"], b.url.as_str());
    assert_eq!(body["store"], "up");
}

/// The value of a Prometheus counter line starting with `prefix` (0 if absent).
async fn counter(c: &reqwest::Client, s: &Server, prefix: &str) -> u64 {
    let text = c
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A hot standby follows its primary (sessions written before it started come from the
/// store, later ones from the primary's feed) and takes over from memory; what it missed
/// (here: events acknowledged while it was paused, just before the primary died) is read
/// from the store, because its version no longer matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_standby_takes_over_from_memory_and_reads_only_what_it_missed() {
    let rig = Rig::new(&[("counter.scxml", COUNTER)]);
    let hot = format!("{CONFIG}hot_standby = true\n");
    let mut a = rig.serve("a", &hot, &["--instance", "a"]);
    let c = no_redirects(Duration::from_secs(10));
    let mut sids = Vec::new();
    for _ in 0..10 {
        sids.push(start(&c, &a, "counter.scxml", &[]).await);
    }
    let b = rig.serve("b", &hot, &["--instance", "b"]);
    for _ in 0..10 {
        sids.push(start(&c, &a, "counter.scxml", &[]).await);
    }
    for sid in &sids {
        for _ in 0..3 {
            let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[]).await;
            assert_eq!(st, 200);
        }
    }
    let absorber = start(&c, &a, "counter.scxml", &[]).await;
    // The backup holds every session: the first ten read in its resync, all at their
    // latest version through the feed.
    until_heartbeat(&c, &b, "following", serde_json::json!(21)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Paused, it misses one more event on each of five sessions; then the primary dies.
    // A long poll of the backup's may be under way: answered (into the stopped process's
    // socket) by one more event on another session first, it brings none of the five.
    b.signal("STOP");
    let (st, _) = post(
        &c,
        &format!("{}/scxml/session/{absorber}/event/inc", a.url),
        &[],
    )
    .await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for sid in &sids[..5] {
        let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/event/inc", a.url), &[]).await;
        assert_eq!(st, 200);
    }
    a.kill9();
    b.signal("CONT");
    until_primary(&c, &b, 10).await;
    until_heartbeat(&c, &b, "recovering", serde_json::json!(0)).await;
    for (i, sid) in sids.iter().enumerate() {
        let q = query(&c, &b, sid).await.1;
        let want = if i < 5 { 4 } else { 3 };
        assert_eq!(
            q["datamodel"]["n"], want,
            "session {i}: every acknowledged event"
        );
        assert_eq!(
            q["datamodel"]["recovered"], 1,
            "session {i}: one session.recovered"
        );
    }
    // The five from the store; the fifteen others from memory; the absorber either way.
    let standby = counter(&c, &b, "ors_recovered_sessions_total{from=\"standby\"}").await;
    let store = counter(&c, &b, "ors_recovered_sessions_total{from=\"store\"}").await;
    assert_eq!(standby + store, 21);
    assert!(
        (15..=16).contains(&standby) && (5..=6).contains(&store),
        "{standby} from memory, {store} read"
    );
}

/// With API tokens the cluster still talks to itself (events between nodes, a hot
/// standby's polls: both fail without the peer token), and nobody else gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_requires_tokens_still_talks_to_itself() {
    let rig = Rig::new(&[("pinger.scxml", PINGER), ("ponger.scxml", PONGER)]);
    let tokens = rig.tmp.path().join("tokens");
    std::fs::write(
        &tokens,
        "# the cluster's token first\ns3cret-peer\ns3cret-client\n",
    )
    .unwrap();
    let t = tokens.to_str().unwrap();
    let hot = format!("{CONFIG}hot_standby = true\n");
    let auth = ["--api-tokens-file", t];
    let one = rig.serve("1", CONFIG, &[&auth[..], &["--node-id", "node1"]].concat());
    let mut two_a = rig.serve(
        "2a",
        &hot,
        &[&auth[..], &["--node-id", "node2", "--instance", "a"]].concat(),
    );
    let two_b = rig.serve(
        "2b",
        &hot,
        &[&auth[..], &["--node-id", "node2", "--instance", "b"]].concat(),
    );
    // Nobody else gets in: no token, a wrong one; the heartbeat stays open.
    let anonymous = no_redirects(Duration::from_secs(10));
    let (st, _) = post(
        &anonymous,
        &format!("{}/scxml/session/start", one.url),
        &[("src", "ponger.scxml")],
    )
    .await;
    assert_eq!(st, 401);
    assert_eq!(
        get(&anonymous, &format!("{}/cluster/members", one.url))
            .await
            .0,
        401
    );
    assert_eq!(
        get(&anonymous, &format!("{}/cluster/changes", two_a.url))
            .await
            .0,
        401
    );
    assert_eq!(heartbeat(&anonymous, &one).await.0, 200);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", "Bearer s3cret-client".parse().unwrap());
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Node1's session pings node2's: the peer token goes along.
    let ponger = start(&c, &two_a, "ponger.scxml", &[]).await;
    let pinger = start(&c, &one, "pinger.scxml", &[("peer", &ponger)]).await;
    wait_for(&c, &one, &pinger, 10, |_, q| q["datamodel"]["pongs"] == 1).await;
    // The hot standby follows with the token, and takes over from memory.
    until_heartbeat(&c, &two_b, "following", serde_json::json!(1)).await;
    two_a.kill9();
    until_primary(&c, &two_b, 10).await;
    assert_eq!(query(&c, &two_b, &ponger).await.1["datamodel"]["pings"], 1);
}
