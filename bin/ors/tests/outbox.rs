//! Events between sessions survive a `kill -9` at the worst moments, and arrive once:
//! - after the sender's macrostep is durable, before anything is delivered (failpoint
//!   `sender-written`): delivered after the restart;
//! - after the receiver ran the event durably, before the sender's outbox entry is
//!   removed (failpoint `receiver-written`): the entry fires again after the restart, and
//!   the receiver, which holds the event's key, does not run it twice.
//!
//! The failpoints abort the process (`ORS_FAILPOINT`, read at start), as `kill -9` would
//! at exactly that point. Sessions are spread over two workers, so some receivers are on
//! the sender's worker and some are not; only sends across workers or nodes go through
//! the outbox.

mod e2e;

use std::time::{Duration, Instant};

use e2e::*;

const SENDER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <state id="s">
    <transition event="go"><send event="ping" targetexpr="'#_scxml_' + _event.data.to"/></transition>
  </state>
</scxml>"#;

const RECEIVER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="n" expr="0"/></datamodel>
  <state id="s"><transition event="ping"><assign location="n" expr="n + 1"/></transition></state>
</scxml>"#;

const RECEIVERS: usize = 16;

async fn pings(c: &reqwest::Client, s: &Server, sid: &str) -> Option<u64> {
    let (st, q) = query(c, s, sid).await;
    (st == 200).then(|| q["datamodel"]["n"].as_u64()).flatten()
}

/// Sends one `go` per receiver with `failpoint` set until the process aborts at it,
/// restarts it without, sends the rest, and checks that every receiver got exactly one
/// ping (also after the outbox entries had time to fire again).
async fn crash_at(failpoint: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("sender.scxml"), SENDER).unwrap();
    std::fs::write(docs.join("receiver.scxml"), RECEIVER).unwrap();
    let mut s = Server::start(
        &tmp.path().join("data"),
        &docs,
        "[sessions]\nlease_ttl_ms = 1000\n",
        &["--workers", "2"],
    );
    let c = client();
    let sender = start(&c, &s, "sender.scxml", &[]).await;
    let mut receivers = Vec::new();
    for _ in 0..RECEIVERS {
        receivers.push(start(&c, &s, "receiver.scxml", &[]).await);
    }
    // Set the failpoint: restart with it (the sessions are persisted).
    s.envs = vec![("ORS_FAILPOINT".into(), failpoint.into())];
    s.restart();
    // The new process takes the node's lease over first (503 until then).
    s.until_primary();
    let go = |s: &Server, to: &str| {
        let url = format!("{}/scxml/session/{sender}/event/go", s.url);
        let c = c.clone();
        let to = to.to_string();
        async move {
            c.post(url)
                .form(&[("to", to.as_str())])
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    let mut next = 0;
    let mut crashed = false;
    while next < receivers.len() {
        let r = go(&s, &receivers[next]).await;
        next += 1;
        // The abort may come a moment after the answer (on the receiver's worker).
        tokio::time::sleep(Duration::from_millis(100)).await;
        if r.is_err() || s.exited().is_some() {
            crashed = true;
            break;
        }
        assert_eq!(r.unwrap(), 200);
    }
    assert!(crashed, "the failpoint {failpoint} was never reached");
    s.envs.clear();
    s.respawn();
    s.until_primary();
    for to in &receivers[next..] {
        assert_eq!(go(&s, to).await.unwrap(), 200, "go to {to}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for to in &receivers {
        loop {
            match pings(&c, &s, to).await {
                Some(1) => break,
                Some(n) if n > 1 => panic!("{to} got {n} pings"),
                _ => {
                    assert!(Instant::now() < deadline, "{to} never got its ping");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // Long enough for every outbox entry to have fired again (RETRY_AFTER is 3 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    for to in &receivers {
        assert_eq!(pings(&c, &s, to).await, Some(1), "{to}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_senders_write_and_the_delivery_delivers_once() {
    crash_at("sender-written").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_delivery_before_its_cleanup_does_not_deliver_twice() {
    crash_at("receiver-written").await;
}
