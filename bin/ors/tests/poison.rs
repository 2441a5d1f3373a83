//! A poison session: a delayed event whose script allocates until the process aborts
//! (under a memory limit, so the test is safe on any machine). Without quarantine every
//! restart fires the durable timer again and dies again: a crash loop. With it, after
//! three crashes in a row the session is quarantined and the node stays up, and another
//! session on the same worker works throughout.

mod e2e;

use std::time::{Duration, Instant};

use e2e::*;

const POISON: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="n" expr="0"/></datamodel>
  <state id="s">
    <transition event="arm"><send event="boom" delay="300ms"/></transition>
    <transition event="boom"><script>var s = 'x'; for (var i = 0; i &lt; 40; i++) { s = s + s; }</script></transition>
    <transition event="inc"><assign location="n" expr="n + 1"/></transition>
  </state>
</scxml>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_keeps_crashing_the_node_is_quarantined_and_the_node_stays_up() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("poison.scxml"), POISON).unwrap();
    // The budgets would stop the script before it crashes anything: switched off, they
    // stand for whatever a budget misses.
    let config = "[sessions]\nlease_ttl_ms = 1000\n[limits]\nmacrostep_memory_mb = 0\nmacrostep_time_ms = 0\n";
    let mut s = Server::start_limited(
        &tmp.path().join("data"),
        &docs,
        config,
        &["--workers", "1"],
        1 << 20, // 1 GiB of address space
    );
    let c = client();
    let victim = start(&c, &s, "poison.scxml", &[]).await;
    let innocent = start(&c, &s, "poison.scxml", &[]).await;
    let inc = |sid: &str, url: &str| format!("{url}/scxml/session/{sid}/event/inc");
    assert_eq!(post(&c, &inc(&innocent, &s.url), &[]).await.0, 200);
    let (st, body) = post(
        &c,
        &format!("{}/scxml/session/{victim}/event/arm", s.url),
        &[],
    )
    .await;
    assert_eq!(st, 200, "{body}");

    // Play the supervisor: restart the process whenever it dies, until the victim is
    // quarantined.
    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "never quarantined ({crashes} crashes)"
        );
        if let Some(status) = s.exited() {
            crashes += 1;
            eprintln!("crash {crashes}: {status}");
            assert!(crashes <= 3, "still crashing after {crashes} crashes");
            s.respawn();
            continue;
        }
        // The process may die while we ask: that is the next turn's business.
        let asked = c
            .get(format!("{}/scxml/session/{victim}/query", s.url))
            .send()
            .await;
        if let Ok(r) = asked
            && let Ok(q) = r.json::<serde_json::Value>().await
            && q.get("quarantined").is_some()
        {
            eprintln!("quarantined: {}", q["quarantined"]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(crashes, 3, "quarantined after three crashes in a row");

    // The node stays up (the timer is not fired again), the victim is refused with the
    // reason, and the other session of the same worker goes on.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(s.exited().is_none(), "the node died again");
    let (st, body) = post(&c, &inc(&victim, &s.url), &[]).await;
    assert_eq!(st, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("quarantined"),
        "{body}"
    );
    assert_eq!(post(&c, &inc(&innocent, &s.url), &[]).await.0, 200);
    assert_eq!(query(&c, &s, &innocent).await.1["datamodel"]["n"], 2);
}
