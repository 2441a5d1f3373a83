//! A CPU bomb and a memory bomb on a one-worker server with 1 GiB of address space: each
//! is stopped by its macrostep's budget, its session is aborted, the process stays up,
//! and another session on the same worker answers within a second while the bomb runs.
//! Then the issue's crash loop (the bomb behind a delayed send): stopped the first time.

mod e2e;

use std::time::{Duration, Instant};

use e2e::*;

const DOC: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="n" expr="0"/></datamodel>
  <state id="s">
    <transition event="cpu"><script>function f(n) { if (n &gt; 0) { f(n - 1); f(n - 1); } } f(60);</script></transition>
    <transition event="memory"><script>var s = 'x'; for (;;) { try { s = s + s; } catch (e) {} }</script></transition>
    <transition event="inc"><assign location="n" expr="n + 1"/></transition>
    <transition event="arm"><send event="boom" delay="300ms"/></transition>
    <transition event="boom"><script>var a = []; for (var i = 0; i &lt; 200; i++) { a.push(new Array(1000000)); a[i].fill(1); }</script></transition>
  </state>
</scxml>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_are_stopped_by_their_budget_and_the_worker_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("bomb.scxml"), DOC).unwrap();
    let mut s = Server::start_limited(
        &tmp.path().join("data"),
        &docs,
        "",
        &["--workers", "1"],
        1 << 20,
    );
    let c = client();
    let innocent = start(&c, &s, "bomb.scxml", &[]).await;
    for bomb_event in ["cpu", "memory"] {
        let bomb = start(&c, &s, "bomb.scxml", &[]).await;
        let url = format!("{}/scxml/session/{bomb}/event/{bomb_event}", s.url);
        let (c2, url2) = (c.clone(), url.clone());
        let running = tokio::spawn(async move { post(&c2, &url2, &[]).await });
        // While the bomb runs (or right after), the innocent session answers.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let (st, body) = post(
            &c,
            &format!("{}/scxml/session/{innocent}/event/inc", s.url),
            &[],
        )
        .await;
        let took = t.elapsed();
        assert_eq!(st, 200, "{body}");
        assert!(took < Duration::from_secs(1), "{bomb_event}: took {took:?}");
        let (st, body) = running.await.unwrap();
        eprintln!("{bomb_event} bomb answered {st}: {body}");
        wait_for(&c, &s, &bomb, 10, |_, q| q["done"] == true).await;
        assert!(s.exited().is_none(), "the process is up");
    }
    // The issue's crash loop: the bomb reached by a delayed send, from a durable timer.
    // The budget stops it the first time; nothing crashes, nothing runs it again.
    let bomb = start(&c, &s, "bomb.scxml", &[]).await;
    let url = format!("{}/scxml/session/{bomb}/event/arm", s.url);
    assert_eq!(post(&c, &url, &[]).await.0, 200);
    wait_for(&c, &s, &bomb, 30, |_, q| q["done"] == true).await;
    assert!(s.exited().is_none(), "the process is up");
    let (_, q) = query(&c, &s, &innocent).await;
    assert_eq!(q["datamodel"]["n"], 2, "{q}");
    let (_, metrics) = get(&c, &format!("{}/metrics", s.url)).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("ors_sessions_aborted_total{cause=\"budget\"} 3"),
        "{metrics}"
    );
}
