//! End-to-end: the real `ors serve` on a free loopback port, over HTTP.

mod e2e;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{Value, json};

const COUNTER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" xmlns:ors="urn:x-ors:scxml"
    version="1.0" datamodel="ecmascript" _sendSessionRecovered="true">
  <datamodel>
    <data id="n" expr="0"/><data id="greeting" expr="'none'"/><data id="recovered" expr="0"/>
    <data id="last" expr="null"/><data id="fired" expr="0"/>
  </datamodel>
  <state id="idle">
    <transition event="inc"><assign location="n" expr="n + 1"/><assign location="last" expr="_event.data"/></transition>
    <transition event="session.recovered"><assign location="recovered" expr="recovered + 1"/></transition>
    <transition event="arm"><send event="ring" delay="1500ms" id="alarm"/></transition>
    <transition event="disarm"><cancel sendid="alarm"/></transition>
    <transition event="ring"><assign location="fired" expr="fired + 1"/></transition>
    <transition event="ask">
      <ors:response requestid="_event.sendid" type="positive" resultcode="'ok'">
        <ors:param name="n" expr="n"/><ors:param name="echo" expr="_event.data.q"/>
      </ors:response>
    </transition>
    <transition event="ask-no"/>
    <transition event="finish" target="done"/>
  </state>
  <final id="done"/>
</scxml>"#;

fn setup(config: &str, extra: &[&str]) -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("counter.scxml"), COUNTER).unwrap();
    std::fs::write(
        docs.join("broken.scxml"),
        "<scxml xmlns='http://www.w3.org/2005/07/scxml' version='1.0'>\n<state id='a'>\n  <transition target='nowhere'/>\n</state></scxml>",
    )
    .unwrap();
    let s = Server::start(&tmp.path().join("data"), &docs, config, extra);
    (tmp, s)
}

const FAST: &str =
    "[sessions]\nlease_ttl_ms = 1000\nrequest_timeout_secs = 1\n[limits]\nmax_body_bytes = 4096\n";

async fn rest_api_end_to_end(extra: &[&str]) {
    let (_tmp, s) = setup(FAST, extra);
    let c = client();
    // Start: form body; parameters fill <data> of the same id; the cookie names the session.
    let r = c
        .post(format!("{}/scxml/session/start", s.url))
        .form(&[("src", "counter.scxml"), ("greeting", "hello")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let sid = r.json::<Value>().await.unwrap()["sessionid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sid.starts_with("node1-"), "{sid}");
    assert_eq!(cookie, format!("ORSSESSIONID={sid}; Path=/"));
    // Start with a JSON body too.
    let r = c
        .post(format!("{}/scxml/session/start", s.url))
        .json(&json!({ "src": "counter.scxml", "n": 41 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sid2 = r.json::<Value>().await.unwrap()["sessionid"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, q) = query(&c, &s, &sid2).await;
    assert_eq!(q["datamodel"]["n"], 41, "JSON keeps types: {q}");

    // Events: parameters are _event.data.
    let (st, _) = post(
        &c,
        &format!("{}/scxml/session/{sid}/event/inc", s.url),
        &[("who", "me")],
    )
    .await;
    assert_eq!(st, 200);
    let (st, q) = query(&c, &s, &sid).await;
    assert_eq!(st, 200);
    assert_eq!(q["configuration"], json!(["idle"]));
    assert_eq!(q["datamodel"]["n"], 1);
    assert_eq!(q["datamodel"]["greeting"], "hello");
    assert_eq!(q["datamodel"]["last"], json!({ "who": "me" }));
    assert_eq!(q["done"], false);
    // POST /query works too.
    let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/query", s.url), &[]).await;
    assert_eq!(st, 200);

    // Terminate; afterwards the session reads as done and takes no events.
    let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/terminate", s.url), &[]).await;
    assert_eq!(st, 200);
    let (_, q) = query(&c, &s, &sid).await;
    assert_eq!(q["done"], true);
    let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/event/inc", s.url), &[]).await;
    assert_eq!(st, 404);

    // Errors are JSON with a message.
    let (st, body) = post(
        &c,
        &format!("{}/scxml/session/node1-ffff/event/inc", s.url),
        &[],
    )
    .await;
    assert_eq!(st, 404);
    assert!(
        body["error"].as_str().unwrap().contains("not found"),
        "{body}"
    );
    let (st, body) = post(&c, &format!("{}/scxml/session/start", s.url), &[]).await;
    assert_eq!(
        (st, body["error"].as_str().unwrap()),
        (400, "src is required")
    );
    let (st, body) = post(
        &c,
        &format!("{}/scxml/session/start", s.url),
        &[("src", "broken.scxml")],
    )
    .await;
    assert_eq!(st, 400);
    let d = &body["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["col"].as_u64()),
        (Some(3), Some(3)),
        "{body}"
    );
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("unknown transition target \"nowhere\"")
    );
    let (st, body) = post(
        &c,
        &format!("{}/scxml/session/start", s.url),
        &[("src", "../outside.scxml")],
    )
    .await;
    assert_eq!(st, 400, "{body}");
    let (st, _) = post(
        &c,
        &format!("{}/scxml/session/start", s.url),
        &[("src", "counter.scxml"), ("idealtime", "soon")],
    )
    .await;
    assert_eq!(st, 400);
    let big = "x".repeat(10_000);
    let (st, _) = post(
        &c,
        &format!("{}/scxml/session/{sid2}/event/inc", s.url),
        &[("big", &big)],
    )
    .await;
    assert_eq!(st, 413);
    let (st, _) = post(
        &c,
        &format!("{}/scxml/session/{sid2}/event/bad..name", s.url),
        &[],
    )
    .await;
    assert_eq!(st, 400);

    // Heartbeat, metrics, help.
    let (st, hb) = get(&c, &format!("{}/heartbeat", s.url)).await;
    assert_eq!((st, hb["role"].as_str()), (200, Some("primary")));
    let (st, m) = get(&c, &format!("{}/metrics", s.url)).await;
    assert_eq!(st, 200);
    assert!(
        m.as_str().unwrap().contains("ors_http_requests_total"),
        "{m}"
    );
    let (st, h) = get(&c, &format!("{}/ors/help", s.url)).await;
    assert_eq!(st, 200);
    assert!(h["paths"]["/scxml/session/start"].is_object());
}

async fn request_is_answered_by_response_or_times_out(extra: &[&str]) {
    let (_tmp, s) = setup(FAST, extra);
    let c = client();
    let sid = start(&c, &s, "counter.scxml", &[]).await;
    post(&c, &format!("{}/scxml/session/{sid}/event/inc", s.url), &[]).await;
    let (st, r) = post(
        &c,
        &format!("{}/scxml/session/{sid}/request/ask", s.url),
        &[("q", "ping")],
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r,
        json!({ "type": "positive", "resultcode": "ok", "params": { "n": 1, "echo": "ping" } })
    );
    let t = Instant::now();
    let (st, _) = post(
        &c,
        &format!("{}/scxml/session/{sid}/request/ask-no", s.url),
        &[],
    )
    .await;
    assert_eq!(st, 504);
    assert!(t.elapsed() < Duration::from_secs(5));
}

async fn scheduled_start_and_delayed_send(extra: &[&str]) {
    let (_tmp, s) = setup(FAST, extra);
    let c = client();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Beyond the 5-second allowance: scheduled.
    let at = (now + 6_500).to_string();
    let sid = start(&c, &s, "counter.scxml", &[("idealtime", &at)]).await;
    let (st, _) = query(&c, &s, &sid).await;
    assert_eq!(st, 404, "not started before its time");
    let t = Instant::now();
    wait_for(&c, &s, &sid, 20, |st, _| st == 200).await;
    assert!(
        t.elapsed() >= Duration::from_secs(5),
        "started too early: {:?}",
        t.elapsed()
    );
    // Within the allowance: at once.
    let soon = (now + 1_000).to_string();
    let sid2 = start(&c, &s, "counter.scxml", &[("idealtime", &soon)]).await;
    assert_eq!(query(&c, &s, &sid2).await.0, 200);
    // A delayed send fires once, on time.
    post(
        &c,
        &format!("{}/scxml/session/{sid2}/event/arm", s.url),
        &[],
    )
    .await;
    let t = Instant::now();
    wait_for(&c, &s, &sid2, 10, |_, q| q["datamodel"]["fired"] == 1).await;
    assert!(
        t.elapsed() >= Duration::from_millis(1_400),
        "fired early: {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(query(&c, &s, &sid2).await.1["datamodel"]["fired"], 1);
}

/// Many clients send events; the server is killed with SIGKILL mid-stream and restarted.
/// Every event answered 200 must have taken effect; an event not answered may or may not
/// have. Timers armed before the crash fire exactly once after it, and every session is
/// told `session.recovered` once.
async fn kill9_under_load(config: &str, extra: &[&str]) {
    let (_tmp, mut s) = setup(config, extra);
    let c = client();
    let mut sids = Vec::new();
    for _ in 0..20 {
        sids.push(start(&c, &s, "counter.scxml", &[]).await);
    }
    // Arm a timer in half of them: it is due after the restart.
    for sid in sids.iter().step_by(2) {
        post(&c, &format!("{}/scxml/session/{sid}/event/arm", s.url), &[]).await;
    }
    let acked: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for k in 0..32 {
        let (c, url, sids, acked, stop) = (
            c.clone(),
            s.url.clone(),
            sids.clone(),
            acked.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut i = k;
            while !stop.load(Ordering::SeqCst) {
                let sid = &sids[i % sids.len()];
                i += 1;
                match c
                    .post(format!("{url}/scxml/session/{sid}/event/inc"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        *acked.lock().unwrap().entry(sid.clone()).or_default() += 1
                    }
                    _ => {}
                }
            }
        }));
    }
    // Let load build up, then pull the plug.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().values().sum::<u64>() < 500 {
        assert!(Instant::now() < deadline, "no load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.kill9();
    stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total: u64 = acked.values().sum();
    s.restart();
    for (i, sid) in sids.iter().enumerate() {
        let q = wait_for(&c, &s, sid, 20, |st, q| {
            st == 200 && q["datamodel"]["recovered"] == 1
        })
        .await;
        let n = q["datamodel"]["n"].as_u64().unwrap();
        let a = acked.get(sid).copied().unwrap_or(0);
        // At most one unanswered event per client can have been in flight.
        assert!(
            n >= a && n <= a + 32,
            "session {sid}: {n} events applied, {a} acknowledged"
        );
        if i % 2 == 0 {
            wait_for(&c, &s, sid, 10, |_, q| q["datamodel"]["fired"] == 1).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    for (i, sid) in sids.iter().enumerate() {
        let q = query(&c, &s, sid).await.1;
        assert_eq!(
            q["datamodel"]["fired"],
            if i % 2 == 0 { 1 } else { 0 },
            "{sid}: {q}"
        );
        assert_eq!(q["datamodel"]["recovered"], 1);
    }
    eprintln!(
        "kill -9 under load: {total} acknowledged events over {} sessions, none lost",
        sids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_under_load_embedded_store() {
    kill9_under_load(FAST, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_under_load_redis_store() {
    let redis = ors_testsupport::RedisServer::start(false);
    let url = redis.url();
    kill9_under_load(FAST, &["--store", "redis", "--redis-url", &url]).await;
    drop(redis);
}

async fn sigterm_stops_cleanly_and_keeps_state(extra: &[&str]) {
    let (_tmp, mut s) = setup(FAST, extra);
    let c = client();
    let sid = start(&c, &s, "counter.scxml", &[]).await;
    for _ in 0..5 {
        post(&c, &format!("{}/scxml/session/{sid}/event/inc", s.url), &[]).await;
    }
    let status = s.sigterm();
    assert!(status.success(), "{status:?}");
    s.restart();
    let q = wait_for(&c, &s, &sid, 10, |st, _| st == 200).await;
    assert_eq!(q["datamodel"]["n"], 5);
}

async fn cancelled_delayed_send_never_fires(extra: &[&str]) {
    let (_tmp, s) = setup(FAST, extra);
    let c = client();
    let sid = start(&c, &s, "counter.scxml", &[]).await;
    post(&c, &format!("{}/scxml/session/{sid}/event/arm", s.url), &[]).await;
    post(
        &c,
        &format!("{}/scxml/session/{sid}/event/disarm", s.url),
        &[],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(query(&c, &s, &sid).await.1["datamodel"]["fired"], 0);
}

async fn idle_sessions_leave_memory_and_come_back(extra: &[&str]) {
    let cfg = FAST.replace(
        "lease_ttl_ms = 1000",
        "lease_ttl_ms = 1000\nidle_timeout_secs = 1",
    );
    let (_tmp, s) = setup(&cfg, extra);
    let c = client();
    let sid = start(&c, &s, "counter.scxml", &[]).await;
    post(&c, &format!("{}/scxml/session/{sid}/event/inc", s.url), &[]).await;
    let live = |m: &Value| {
        m.as_str()
            .and_then(|t| t.lines().find(|l| l.starts_with("ors_live_sessions ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(
        live(&get(&c, &format!("{}/metrics", s.url)).await.1),
        Some(1.0)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while live(&get(&c, &format!("{}/metrics", s.url)).await.1) != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "the idle session stayed in memory"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It comes back, with its state, on the next event.
    let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/event/inc", s.url), &[]).await;
    assert_eq!(st, 200);
    assert_eq!(query(&c, &s, &sid).await.1["datamodel"]["n"], 2);
}

async fn lifetime_limit_and_session_limit(extra: &[&str]) {
    let cfg = FAST
        .replace("[sessions]\n", "[sessions]\nmax_lifetime_secs = 1\n")
        .replace("[limits]\n", "[limits]\nmax_sessions = 2\n");
    let (_tmp, s) = setup(&cfg, extra);
    let c = client();
    let a = start(&c, &s, "counter.scxml", &[]).await;
    let _b = start(&c, &s, "counter.scxml", &[]).await;
    let (st, body) = post(
        &c,
        &format!("{}/scxml/session/start", s.url),
        &[("src", "counter.scxml")],
    )
    .await;
    assert_eq!(st, 503, "{body}");
    // Both are terminated after their lifetime, which frees room for new sessions.
    wait_for(&c, &s, &a, 10, |_, q| q["done"] == true).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _) = post(
            &c,
            &format!("{}/scxml/session/start", s.url),
            &[("src", "counter.scxml")],
        )
        .await;
        if st == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after the lifetime ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A document fetched over HTTP is stored with the session: after the URL is gone and the
/// node restarts, the session is restored from the stored copy.
async fn http_documents_outlive_their_url(extra: &[&str]) {
    // The document server is on loopback, which the outbound policy refuses unless told.
    let config = format!("{FAST}[http]\noutbound_allow = [\"127.0.0.1\"]\n");
    let (tmp, mut s) = setup(&config, extra);
    let port = ors_testsupport::free_port();
    let mut web = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "--directory",
        ])
        .arg(tmp.path().join("docs"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 is installed");
    let c = client();
    let src = format!("http://127.0.0.1:{port}/counter.scxml");
    let deadline = Instant::now() + Duration::from_secs(10);
    let sid = loop {
        let (st, body) = post(
            &c,
            &format!("{}/scxml/session/start", s.url),
            &[("src", &src)],
        )
        .await;
        if st == 200 {
            break body["sessionid"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "document server did not come up: {st} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    post(&c, &format!("{}/scxml/session/{sid}/event/inc", s.url), &[]).await;
    let _ = web.kill();
    let _ = web.wait();
    let (st, _) = post(
        &c,
        &format!("{}/scxml/session/start", s.url),
        &[("src", &src)],
    )
    .await;
    assert_eq!(st, 400, "the URL is gone");
    s.restart();
    let q = wait_for(&c, &s, &sid, 10, |st, _| st == 200).await;
    assert_eq!(q["datamodel"]["n"], 1);
    let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/event/inc", s.url), &[]).await;
    assert_eq!(st, 200);
}

const INVOKES_MISSING: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0"
    datamodel="ecmascript" initial="s">
  <state id="s">
    <invoke src="missing.scxml"/>
    <transition event="error.execution" target="execution"/>
    <transition event="error.communication" target="communication"/>
  </state>
  <state id="execution"/>
  <state id="communication"/>
</scxml>"#;

const SENDS_TO_NOBODY: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0"
    datamodel="ecmascript" initial="s">
  <datamodel><data id="to" expr="''"/><data id="errors" expr="0"/></datamodel>
  <state id="s">
    <onentry><send event="hello" targetexpr="'#_scxml_' + to"/></onentry>
    <transition event="error.communication"><assign location="errors" expr="errors + 1"/></transition>
  </state>
</scxml>"#;

/// The error events the Recommendation prescribes, on the server as in `ors run`: a child
/// that cannot be created raises error.execution in its parent; a send to a session that
/// does not exist raises error.communication in the sender, whichever worker would own
/// that session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_and_send_failures_raise_the_prescribed_errors() {
    let (tmp, s) = setup(FAST, &["--workers", "4"]);
    std::fs::write(tmp.path().join("docs/invoker.scxml"), INVOKES_MISSING).unwrap();
    std::fs::write(tmp.path().join("docs/sender.scxml"), SENDS_TO_NOBODY).unwrap();
    let c = client();
    let sid = start(&c, &s, "invoker.scxml", &[]).await;
    let q = wait_for(&c, &s, &sid, 10, |_, q| q["configuration"] != json!(["s"])).await;
    assert_eq!(q["configuration"], json!(["execution"]));
    let mut senders = Vec::new();
    for i in 0..8 {
        let to = format!("node1-nosuch{i}");
        senders.push(start(&c, &s, "sender.scxml", &[("to", &to)]).await);
    }
    for sid in senders {
        wait_for(&c, &s, &sid, 10, |_, q| q["datamodel"]["errors"] == 1).await;
    }
}

/// Each scenario runs on the embedded store and on a real redis-server, and on Cassandra
/// when `ORS_TEST_CASSANDRA_NODES` names a cluster (none can run here).
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&[]).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let redis = ors_testsupport::RedisServer::start(false);
                    let url = redis.url();
                    super::$name(&["--store", "redis", "--redis-url", &url]).await;
                }
            )*
        }
        mod cassandra {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Ok(nodes) = std::env::var("ORS_TEST_CASSANDRA_NODES") else {
                        eprintln!("SKIPPED: ORS_TEST_CASSANDRA_NODES is not set");
                        return;
                    };
                    // A keyspace per test, so tests and runs do not see each other.
                    let keyspace = format!(
                        "ors_e2e_{}_{}",
                        std::process::id(),
                        stringify!($name)
                    );
                    super::$name(&[
                        "--store", "cassandra", "--cassandra-nodes", &nodes,
                        "--cassandra-keyspace", &keyspace,
                    ])
                    .await;
                }
            )*
        }
    };
}

on_both_stores!(
    rest_api_end_to_end,
    request_is_answered_by_response_or_times_out,
    scheduled_start_and_delayed_send,
    cancelled_delayed_send_never_fires,
    idle_sessions_leave_memory_and_come_back,
    lifetime_limit_and_session_limit,
    http_documents_outlive_their_url,
    sigterm_stops_cleanly_and_keeps_state,
);

/// The data leak reported in issue 8, through a real server with one worker: session A's
/// top-level `let` must not be seen by other sessions of the same document, and each
/// session keeps its own value (also across a restart, as it is in the snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_top_level_let_is_not_seen_by_other_sessions() {
    const LEAKY: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="seen"/></datamodel>
  <state id="s">
    <transition event="keep"><script>let secret = _event.data.v;</script></transition>
    <transition event="look"><assign location="seen" expr="typeof secret === 'undefined' ? 'nothing' : secret"/></transition>
  </state>
</scxml>"#;
    let (tmp, mut s) = setup(FAST, &["--workers", "1"]);
    std::fs::write(tmp.path().join("docs").join("leaky.scxml"), LEAKY).unwrap();
    let c = client();
    let a = start(&c, &s, "leaky.scxml", &[]).await;
    let (st, body) = post(
        &c,
        &format!("{}/scxml/session/{a}/event/keep", s.url),
        &[("v", "A-secret")],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let mut others = Vec::new();
    for _ in 0..6 {
        let b = start(&c, &s, "leaky.scxml", &[]).await;
        let (st, _) = post(&c, &format!("{}/scxml/session/{b}/event/look", s.url), &[]).await;
        assert_eq!(st, 200);
        others.push(b);
    }
    for b in &others {
        assert_eq!(query(&c, &s, b).await.1["datamodel"]["seen"], "nothing");
    }
    s.restart();
    s.until_primary();
    let (st, _) = post(&c, &format!("{}/scxml/session/{a}/event/look", s.url), &[]).await;
    assert_eq!(st, 200);
    assert_eq!(query(&c, &s, &a).await.1["datamodel"]["seen"], "A-secret");
}

/// `Idempotency-Key`: retried starts and events (also after the process died and came
/// back) are applied once and get the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_an_idempotency_key_apply_once() {
    let (_tmp, mut s) = setup(FAST, &[]);
    let c = client();
    let keyed_start = |key: &'static str| {
        let c = c.clone();
        let url = format!("{}/scxml/session/start", s.url);
        async move {
            let r = c
                .post(url)
                .header("Idempotency-Key", key)
                .form(&[("src", "counter.scxml")])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["sessionid"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let sid = keyed_start("start-1").await;
    assert_eq!(
        keyed_start("start-1").await,
        sid,
        "a retried start finds the session"
    );
    assert_ne!(
        keyed_start("start-2").await,
        sid,
        "another key, another session"
    );
    let inc = |key: &'static str| {
        let c = c.clone();
        let url = format!("{}/scxml/session/{sid}/event/inc", s.url);
        async move {
            let r = c
                .post(url)
                .header("Idempotency-Key", key)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    for _ in 0..3 {
        assert_eq!(inc("event-1").await, 200);
    }
    assert_eq!(inc("event-2").await, 200);
    assert_eq!(query(&c, &s, &sid).await.1["datamodel"]["n"], 2);
    // The keys are durable with the session: after kill -9 a retry is still recognised.
    s.restart();
    s.until_primary();
    let (st, _) = post(&c, &format!("{}/scxml/session/{sid}/query", s.url), &[]).await;
    assert_eq!(st, 200);
    let retry = c
        .post(format!("{}/scxml/session/{sid}/event/inc", s.url))
        .header("Idempotency-Key", "event-1")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(query(&c, &s, &sid).await.1["datamodel"]["n"], 2);
    let again = c
        .post(format!("{}/scxml/session/start", s.url))
        .header("Idempotency-Key", "start-1")
        .form(&[("src", "counter.scxml")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.json::<Value>().await.unwrap()["sessionid"],
        sid.as_str()
    );
    // A key that cannot be one is refused.
    let bad = c
        .post(format!("{}/scxml/session/{sid}/event/inc", s.url))
        .header("Idempotency-Key", "has space")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// With a tokens file the API answers 401 (with `WWW-Authenticate: Bearer`) unless a
/// request carries one of the tokens; `/heartbeat` stays open and `/metrics` does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_requires_a_bearer_token_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, "first\n\n# a comment\nsecond\n").unwrap();
    let (_t, s) = setup(FAST, &["--api-tokens-file", tokens.to_str().unwrap()]);
    let c = client();
    let start_with = |token: Option<&'static str>| {
        let mut r = c
            .post(format!("{}/scxml/session/start", s.url))
            .form(&[("src", "counter.scxml")]);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap() }
    };
    let r = start_with(None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(start_with(Some("wrong")).await.status(), 401);
    assert_eq!(start_with(Some("# a comment")).await.status(), 401);
    let r = start_with(Some("second")).await;
    assert_eq!(r.status(), 200);
    let sid = r.json::<Value>().await.unwrap()["sessionid"]
        .as_str()
        .unwrap()
        .to_string();
    let q = format!("{}/scxml/session/{sid}/query", s.url);
    assert_eq!(c.get(&q).send().await.unwrap().status(), 401);
    assert_eq!(
        c.get(&q)
            .bearer_auth("first")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(get(&c, &format!("{}/heartbeat", s.url)).await.0, 200);
    assert_eq!(get(&c, &format!("{}/metrics", s.url)).await.0, 401);
}

/// A document cannot make the server connect to its own network: fetching a document
/// from loopback and a BasicHTTP `<send>` to a link-local or private address are refused
/// (unless `http.outbound_allow` says otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_requests_to_private_addresses_are_refused() {
    const PROBE: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="errors" expr="0"/></datamodel>
  <state id="s">
    <transition event="probe">
      <send type="http://www.w3.org/TR/scxml/#BasicHTTPEventProcessor" targetexpr="_event.data.url" event="x"/>
    </transition>
    <transition event="error.communication"><assign location="errors" expr="errors + 1"/></transition>
  </state>
</scxml>"#;
    let (tmp, s) = setup(FAST, &[]);
    std::fs::write(tmp.path().join("docs").join("probe.scxml"), PROBE).unwrap();
    let c = client();
    let (st, body) = post(
        &c,
        &format!("{}/scxml/session/start", s.url),
        &[("src", "http://127.0.0.1:9/x.scxml")],
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(body.to_string().contains("outbound policy"), "{body}");
    // A listener on loopback that counts who connects to it.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = reached.clone();
    tokio::spawn(async move {
        while let Ok((_conn, _)) = sink.accept().await {
            r.fetch_add(1, Ordering::SeqCst);
        }
    });
    let sid = start(&c, &s, "probe.scxml", &[]).await;
    let by_name = format!("http://localhost:{sink_port}/");
    let by_address = format!("http://127.0.0.1:{sink_port}/");
    for (i, url) in [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1:6379/",
        by_name.as_str(),
        by_address.as_str(),
    ]
    .iter()
    .enumerate()
    {
        let (st, _) = post(
            &c,
            &format!("{}/scxml/session/{sid}/event/probe", s.url),
            &[("url", url)],
        )
        .await;
        assert_eq!(st, 200);
        wait_for(&c, &s, &sid, 10, |_, q| q["datamodel"]["errors"] == i + 1).await;
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the loopback listener was reached"
    );
}

/// A session id whose node part is not a node id names no session: 404, not a 503 as if
/// its node were down (found by schemathesis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_that_names_no_node_is_not_found() {
    let (_tmp, s) = setup(FAST, &[]);
    let c = client();
    for id in ["%C3%94-M", "no-de-x", "-x", "nodash"] {
        let (st, body) = get(&c, &format!("{}/scxml/session/{id}/query", s.url)).await;
        assert_eq!(st, 404, "{id}: {body}");
    }
}

/// `--tls-cert`/`--tls-key`: the API is served over HTTPS (a certificate made for the
/// test with `openssl`), and plain HTTP on that port gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_https_with_a_certificate() {
    // A test CA and a server certificate it signs for 127.0.0.1.
    let tmp = tempfile::tempdir().unwrap();
    let p = |f: &str| tmp.path().join(f).to_str().unwrap().to_string();
    let (cert, key) = (p("cert.pem"), p("key.pem"));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ca_key = p("ca.key");
    let ca = p("ca.pem");
    let csr = p("leaf.csr");
    let ext = p("ext.cnf");
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ors-test-ca",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ],
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
        vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ],
    ] {
        let ok = std::process::Command::new("openssl")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(ok.success(), "openssl {args:?}");
    }
    let (_t, s) = setup(FAST, &["--tls-cert", &cert, "--tls-key", &key]);
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let trusted = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let sid = start(&trusted, &s, "counter.scxml", &[]).await;
    let (st, _) = post(
        &trusted,
        &format!("{}/scxml/session/{sid}/event/inc", s.url),
        &[],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(query(&trusted, &s, &sid).await.1["datamodel"]["n"], 1);
    // Without trusting the certificate, or without TLS, nothing gets through.
    assert!(
        client()
            .get(format!("{}/heartbeat", s.url))
            .send()
            .await
            .is_err()
    );
    let plain = s.url.replace("https://", "http://");
    assert!(
        client()
            .get(format!("{plain}/heartbeat"))
            .send()
            .await
            .is_err()
    );
}
