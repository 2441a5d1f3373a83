//! The web inspector in a real headless Chromium against a real server with API tokens:
//! the page shows the statechart with the active states lit, and the highlight moves
//! live (server-sent events, no reload) when an event is sent through the API or through
//! the page's own form. A screenshot is left in the target directory. Then the list page,
//! and a two-node cluster on a real redis-server where one node's inspector shows a
//! session of the other.

mod browser;
mod e2e;

use std::time::Duration;

use browser::Browser;
use e2e::*;
use serde_json::Value;

const CALL: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" name="call-flow" initial="call">
  <datamodel><data id="count" expr="0"/></datamodel>
  <state id="call" initial="ringing">
    <transition event="hangup" target="ended"/>
    <transition event="boom"><assign location="count" expr="no_such_variable + 1"/></transition>
    <state id="ringing">
      <onentry><send event="timeout" delay="300s" id="ring-timer"/></onentry>
      <transition event="answer" target="talking"><assign location="count" expr="count + 1"/></transition>
    </state>
    <parallel id="talking">
      <state id="media" initial="audio">
        <state id="audio"><transition event="hold" target="held"/></state>
        <state id="held"><transition event="resume" target="audio"/></state>
      </state>
      <state id="recording" initial="rec_off">
        <state id="rec_off"><transition event="record" target="rec_on"/></state>
        <state id="rec_on"><transition event="record" target="rec_off"/></state>
      </state>
    </parallel>
  </state>
  <final id="ended"/>
</scxml>"#;

const TOKEN: &str = "inspector-token";

const ACTIVE: &str = "return [...document.querySelectorAll('#chart g.state.active')].map(g => g.dataset.state).sort()";

fn states(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn send(c: &reqwest::Client, url: &str, sid: &str, event: &str) {
    let r = c
        .post(format!("{url}/scxml/session/{sid}/event/{event}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn start_call(c: &reqwest::Client, url: &str) -> String {
    start_with_token(c, url, TOKEN, "call.scxml").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_shows_the_active_states_and_follows_them_live() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("call.scxml"), CALL).unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let server = Server::start(
        &tmp.path().join("data"),
        &docs,
        "[inspector]\nenabled = true\nhistory = 16\n",
        &["--api-tokens-file", tokens.to_str().unwrap()],
    );
    server.until_primary();
    let c = client();
    let sid = start_call(&c, &server.url).await;

    // The page carries no data: it is open. Its data needs the token.
    let (status, _) = get(&c, &format!("{}/inspector", server.url)).await;
    assert_eq!(status, 200);
    let (status, _) = get(&c, &format!("{}/inspector/api/sessions", server.url)).await;
    assert_eq!(status, 401);

    let b = Browser::start().await;
    b.open(&format!(
        "{}/inspector/session/{sid}#token={TOKEN}",
        server.url
    ))
    .await;
    b.until("the initial configuration lit", 20, ACTIVE, |v| {
        states(v) == ["call", "ringing"]
    })
    .await;
    let timers = b
        .run("return document.getElementById('timers').textContent")
        .await;
    assert!(timers.as_str().unwrap().contains("ring-timer"), "{timers}");

    // An event through the API: the page (not reloaded) follows.
    send(&c, &server.url, &sid, "answer").await;
    b.until("the highlight moved to talking", 20, ACTIVE, |v| {
        states(v) == ["audio", "call", "media", "rec_off", "recording", "talking"]
    })
    .await;
    b.until(
        "the transition taken marked",
        10,
        "return [...document.querySelectorAll('#chart g.transition.recent')].map(g => g.dataset.transition)",
        |v| states(v) == ["ringing[0]"],
    )
    .await;
    b.until(
        "the datamodel shown",
        10,
        "return JSON.parse(document.getElementById('datamodel').textContent).count",
        |v| v == 1,
    )
    .await;

    // An event through the page's own form.
    b.run(
        "document.getElementById('event-name').value = 'hold'; \
         document.querySelector('#send button').click(); return true",
    )
    .await;
    b.until("the highlight moved to held", 20, ACTIVE, |v| {
        states(v).contains(&"held".to_string()) && !states(v).contains(&"audio".to_string())
    })
    .await;
    b.until(
        "the history lists what happened",
        10,
        "return document.getElementById('history').textContent",
        |v| {
            let t = v.as_str().unwrap_or("");
            t.contains("hold: audio[0]") && t.contains("answer: ringing[0]")
        },
    )
    .await;
    // An error no transition handles shows in the history too.
    send(&c, &server.url, &sid, "boom").await;
    b.until(
        "the history shows the error",
        10,
        "return [...document.querySelectorAll('#history li.error')].map(li => li.textContent).join(' ')",
        |v| {
            let t = v.as_str().unwrap_or("");
            t.contains("error.execution") && t.contains("no_such_variable")
        },
    )
    .await;
    let png = b.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("inspector.png");
    std::fs::write(&shot, &png).unwrap();
    println!("inspector screenshot: {}", shot.display());

    // The list: the session with its document and active states; a filter that matches
    // nothing shows nothing.
    b.open(&format!("{}/inspector?document=call", server.url))
        .await;
    b.until(
        "the list shows the session",
        20,
        "return document.getElementById('sessions').textContent",
        |v| {
            let t = v.as_str().unwrap_or("");
            t.contains(&sid) && t.contains("call-flow") && t.contains("held")
        },
    )
    .await;
    b.open(&format!("{}/inspector?state=nowhere", server.url))
        .await;
    b.until(
        "a filter that matches nothing",
        20,
        "return document.getElementById('main').textContent",
        |v| v.as_str().unwrap_or("").contains("No sessions."),
    )
    .await;

    // The end of the session reaches an open page too.
    b.open(&format!("{}/inspector/session/{sid}", server.url))
        .await;
    b.until(
        "the page is live",
        20,
        "return document.getElementById('status').textContent",
        |v| v == "live",
    )
    .await;
    send(&c, &server.url, &sid, "hangup").await;
    b.until(
        "the page saw the end",
        20,
        "return document.getElementById('status').textContent",
        |v| v == "ended",
    )
    .await;
    b.quit().await;
}

/// In a cluster, any node's inspector shows every session: the list reads the store,
/// and a session of another node is asked of that node (with the caller's token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_nodes_inspector_shows_every_session_of_the_cluster() {
    let redis = ors_testsupport::RedisServer::start(false);
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = redis_pair(
        tmp.path(),
        &redis.url(),
        &[TOKEN],
        "[sessions]\nlease_ttl_ms = 1000\n[inspector]\nenabled = true\n",
        &[("call.scxml", CALL)],
    );
    let c = client();
    let on_two = start_call(&c, &two.url).await;
    send(&c, &two.url, &on_two, "answer").await;
    let on_one = start_call(&c, &one.url).await;

    let list = get_with_token(&c, &format!("{}/inspector/api/sessions", one.url), TOKEN).await;
    let listed: Vec<(&str, &str)> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["sessionid"].as_str().unwrap(),
                s["node"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(listed.contains(&(on_one.as_str(), "node1")), "{list}");
    assert!(listed.contains(&(on_two.as_str(), "node2")), "{list}");

    let detail = |token: Option<&'static str>| {
        let c = c.clone();
        let url = format!("{}/inspector/api/session/{on_two}?chart=1", one.url);
        async move {
            let mut r = c.get(url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = detail(Some(TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["node"], "node2");
    assert_eq!(v["configuration"], serde_json::json!(["audio", "rec_off"]));
    assert!(
        v["chart"]
            .as_str()
            .unwrap()
            .contains(r#"data-state="talking""#)
    );
    let (status, _) = detail(None).await;
    assert_eq!(status, 401);

    // A live stream on node1 of the session on node2 sees it change.
    let mut live = c
        .get(format!("{}/inspector/api/session/{on_two}/live", one.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let mut seen = String::new();
    let until = |seen: &String, needle: &str| seen.contains(needle);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut sent = false;
    while !until(&seen, "\"held\"") {
        let chunk = tokio::time::timeout_at(deadline, live.chunk())
            .await
            .expect("the live stream showed the change in time")
            .unwrap()
            .expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if !sent && until(&seen, "event: update") {
            send(&c, &two.url, &on_two, "hold").await;
            sent = true;
        }
    }
}
