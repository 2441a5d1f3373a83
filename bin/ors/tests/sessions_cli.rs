//! `ors sessions` against a real two-node cluster on a real redis-server, with API
//! tokens: any node lists every session, and `show`/`send`/`terminate` reach a session
//! on the other node through its `307`, token included.

mod e2e;

use std::process::Command;

use e2e::*;
use serde_json::Value;

const COUNTER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <datamodel><data id="n" expr="0"/></datamodel>
  <state id="s"><transition event="inc"><assign location="n" expr="n + _event.data.by"/></transition></state>
</scxml>"#;

const CONFIG: &str = "[sessions]\nlease_ttl_ms = 1000\n";

/// Runs `ors sessions ARGS` against `url` with `token`; (exit code, stdout, stderr).
fn cli(url: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ors"));
    c.arg("sessions").args(args).env("ORS_URL", url);
    match token {
        Some(t) => c.env("ORS_TOKEN", t),
        None => c.env_remove("ORS_TOKEN"),
    };
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cli_lists_shows_sends_and_terminates_across_a_cluster() {
    let redis = ors_testsupport::RedisServer::start(false);
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = redis_pair(
        tmp.path(),
        &redis.url(),
        &["peer-token", "client-token"],
        CONFIG,
        &[("counter.scxml", COUNTER)],
    );

    // Three sessions on node1, two on node2, started with the token.
    let c = client();
    let mut ids = Vec::new();
    for (s, n) in [(&one, 3), (&two, 2)] {
        for _ in 0..n {
            ids.push(start_with_token(&c, &s.url, "client-token", "counter.scxml").await);
        }
    }
    let tok = Some("client-token");

    // No token: refused, with the server's message and a non-zero exit.
    let (code, _, err) = cli(&one.url, None, &["list"]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");

    // node1 lists all five, in id order, a page of two at a time.
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["--json", "list", "--limit", "2"];
        if let Some(a) = &after {
            args.extend(["--after", a]);
        }
        let (code, out, err) = cli(&one.url, tok, &args);
        assert_eq!(code, 0, "{err}");
        let page = json(&out);
        for s in page["sessions"].as_array().unwrap() {
            listed.push(s["sessionid"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);
    // The table, every page at once, with each session's node.
    let (code, out, _) = cli(&two.url, tok, &["list", "--all"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["SESSION", "NODE"]
    );
    assert_eq!(lines.len(), 6, "{out}");
    for id in &ids {
        let node = &id[..5];
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [id.as_str(), node]),
            "{id} on {node} in {out}"
        );
    }
    // --node narrows it.
    let (_, out, _) = cli(&one.url, tok, &["--json", "list", "--node", "node2"]);
    let only: Vec<String> = json(&out)["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sessionid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(only.len(), 2);
    assert!(only.iter().all(|id| id.starts_with("node2-")));

    // A node2 session driven through node1: send (with data), show, terminate.
    let far = ids.iter().find(|id| id.starts_with("node2-")).unwrap();
    let (code, out, err) = cli(
        &one.url,
        tok,
        &["send", far, "inc", "--data", r#"{"by":5}"#],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("{far} inc: processed"));
    let (_, out, _) = cli(&one.url, tok, &["--json", "show", far]);
    let q = json(&out);
    assert_eq!(q["datamodel"]["n"], 5);
    assert_eq!(q["configuration"], serde_json::json!(["s"]));
    let (_, out, _) = cli(&one.url, tok, &["show", far]);
    assert!(out.contains("configuration  s"), "{out}");
    assert!(out.contains("\"n\": 5"), "{out}");
    let (code, _, err) = cli(&one.url, tok, &["send", far, "inc", "--data", "[1]"]);
    assert_ne!(code, 0);
    assert!(err.contains("JSON object"), "{err}");
    let (code, out, _) = cli(&one.url, tok, &["terminate", far]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("{far} terminated"));
    let (_, out, _) = cli(&one.url, tok, &["--json", "show", far]);
    assert_eq!(json(&out)["done"], true);
    // An unknown session: the server's 404, not a panic.
    let (code, _, err) = cli(&one.url, tok, &["show", "node1-nosuch"]);
    assert_ne!(code, 0);
    assert!(err.contains("404"), "{err}");
}
