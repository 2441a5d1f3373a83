//! The `ors validate` and `ors run` commands, run as a user would run them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn write_doc(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ors-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn ors(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ors"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect()
}

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/hello.scxml");

#[test]
fn validate_accepts_good_and_reports_bad_documents() {
    let o = ors(&["validate", HELLO], "");
    assert!(o.status.success(), "{o:?}");
    let bad = write_doc(
        "bad.scxml",
        "<scxml xmlns='http://www.w3.org/2005/07/scxml' version='1.0'>\n<state id='a'>\n  <transition target='nowhere' cond='1 +'/>\n</state>\n<state id='a'/></scxml>",
    );
    let o = ors(&["validate", bad.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    let p = bad.display();
    assert!(
        out.contains(&format!(
            "{p}:3:3: <transition>: unknown transition target \"nowhere\""
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{p}:3:3: <transition>: malformed expression \"1 +\""
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{p}:5:1: <state>: duplicate state id \"a\"")),
        "{out}"
    );
}

#[test]
fn validate_reports_malformed_xml_without_panicking() {
    let bad = write_doc(
        "broken.scxml",
        "<scxml xmlns='http://www.w3.org/2005/07/scxml'><state>",
    );
    let o = ors(&["validate", bad.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("malformed XML"));
}

#[test]
fn run_prints_the_configuration_after_each_event() {
    let o = ors(
        &["run", HELLO],
        "{\"name\":\"tick\"}\nnot json\n{\"name\":\"tick\"}\n{\"name\":\"tick\"}\n",
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        lines(&o),
        [
            r#"{"configuration":["a"],"done":false}"#,
            r#"{"configuration":["b"],"done":false}"#,
            r#"{"configuration":["a"],"done":false}"#,
            r#"{"configuration":["done"],"done":true}"#,
        ]
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("ignoring input line"));
}

#[test]
fn run_passes_event_data() {
    let doc = write_doc(
        "data.scxml",
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <state id="s"><transition event="go" cond="_event.data.n === 42" target="yes"/><transition event="go" target="no"/></state>
  <final id="yes"/><final id="no"/></scxml>"#,
    );
    let o = ors(
        &["run", doc.to_str().unwrap()],
        "{\"name\":\"go\",\"data\":{\"n\":42}}\n",
    );
    assert_eq!(
        lines(&o).last().unwrap(),
        r#"{"configuration":["yes"],"done":true}"#
    );
}

const DELAYED: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <state id="s"><onentry><send event="later" delay="DELAY"/></onentry><transition event="later" target="end"/></state>
  <final id="end"/></scxml>"#;

#[test]
fn run_fires_delayed_sends_on_the_wall_clock() {
    let doc = write_doc("delay-real.scxml", &DELAYED.replace("DELAY", "300ms"));
    let t = std::time::Instant::now();
    let o = ors(&["run", doc.to_str().unwrap()], "");
    assert!(o.status.success(), "{o:?}");
    assert!(t.elapsed().as_millis() >= 300, "fired early");
    assert_eq!(
        lines(&o).last().unwrap(),
        r#"{"configuration":["end"],"done":true}"#
    );
}

#[test]
fn run_with_virtual_time_fires_long_delays_at_once() {
    let doc = write_doc("delay-virtual.scxml", &DELAYED.replace("DELAY", "3600s"));
    let o = ors(
        &[
            "run",
            "--virtual-time",
            "--timeout-ms",
            "7200000",
            doc.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(lines(&o), [r#"{"configuration":["end"],"done":true}"#]);
}

#[test]
fn run_times_out_when_the_session_cannot_finish() {
    let doc = write_doc("delay-long.scxml", &DELAYED.replace("DELAY", "3600s"));
    let o = ors(&["run", "--timeout-ms", "200", doc.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(3), "{o:?}");
}

#[test]
fn run_exits_when_stdin_closes_and_nothing_is_pending() {
    let o = ors(&["run", HELLO], "{\"name\":\"tick\"}\n");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        lines(&o).last().unwrap(),
        r#"{"configuration":["b"],"done":false}"#
    );
}

#[test]
fn run_refuses_an_invalid_document() {
    let bad = write_doc(
        "invalid.scxml",
        "<scxml xmlns='http://www.w3.org/2005/07/scxml'><state id='a'><transition target='b'/></state></scxml>",
    );
    let o = ors(&["run", bad.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown transition target"));
}

#[test]
fn run_reports_an_aborted_session() {
    let doc = write_doc(
        "endless.scxml",
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <state id="s"><transition cond="true"/></state></scxml>"#,
    );
    let o = ors(&["run", doc.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("microsteps"));
}

/// `--store cassandra` is selected like the other stores (flag, `ORS_*` variable, TOML
/// keys); without a reachable cluster the server stops at once with a clear error. The
/// scenarios against a real cluster run in `server.rs` when `ORS_TEST_CASSANDRA_NODES` is
/// set.
#[test]
fn serve_on_cassandra_reports_an_unreachable_cluster() {
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nowhere.local_addr().unwrap().port();
    drop(nowhere);
    let config = write_doc(
        "cassandra.toml",
        "[store]\ncassandra_connect_timeout_ms = 300\ncassandra_keyspace = \"ors_cli\"\n",
    );
    let data = std::env::temp_dir().join(format!("ors-cli-data-{}", std::process::id()));
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ors"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .env("ORS_STORE", "cassandra")
        .env("ORS_CASSANDRA_NODES", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("connecting to Cassandra at 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        err.contains("within 300ms"),
        "the TOML timeout applies: {err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// Primary and backup processes need a store they can share: the embedded store refuses
/// `--instance` with a clear error instead of starting a lone node.
#[test]
fn serve_refuses_a_primary_backup_pair_on_the_embedded_store() {
    let data = std::env::temp_dir().join(format!("ors-cli-instance-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ors"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--instance",
            "b",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a store shared by processes"), "{err}");
}

const PINGPONG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/pingpong.scxml");

#[test]
fn bench_prints_one_json_line_of_figures() {
    let o = ors(
        &["bench", PINGPONG, "--count", "101", "--sessions", "20"],
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = lines(&o);
    assert_eq!(l.len(), 1, "{l:?}");
    let v: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
    assert_eq!(v["events"], 101);
    // 101 ticks from `a`: the last one leaves the session in `b`.
    assert_eq!(v["configuration_after_events"], serde_json::json!(["b"]));
    assert_eq!(v["sessions"], 20);
    assert!(v["events_per_cpu_second"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["starts_per_cpu_second"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["heap_bytes_per_session"].as_u64().unwrap() > 100, "{v}");
    // A session that ends stops the count: the document's max is 100,000.
    let o = ors(
        &["bench", PINGPONG, "--count", "100005", "--sessions", "0"],
        "",
    );
    let v: serde_json::Value = serde_json::from_str(&lines(&o)[0]).unwrap();
    assert_eq!(v["events"], 100_000);
    assert_eq!(v["configuration_after_events"], serde_json::json!(["done"]));
    let bad = ors(&["bench", PINGPONG, "--data", "{nope"], "");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--data must be JSON"));
}

#[test]
fn run_trace_prints_each_microstep_without_colours_when_piped() {
    // Both regions take `go`; their exit sets meet, so r1's transition (selected first,
    // in document order) wins and b's is dropped (removeConflictingTransitions).
    let doc = write_doc(
        "conflict.scxml",
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" initial="p">
  <parallel id="p">
    <state id="r1"><transition event="go" target="x"/><state id="a"/></state>
    <state id="r2"><state id="b"><transition event="go" target="y"/></state></state>
  </parallel>
  <state id="x"/>
  <state id="y"/>
</scxml>"#,
    );
    let o = ors(
        &["run", "--trace", doc.to_str().unwrap()],
        "{\"name\":\"go\"}\n",
    );
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains('\x1b'), "colours on a pipe: {err:?}");
    let expected = "trace run-1: microstep on start\n  enter   p r1 a r2 b\n\
        trace run-1: microstep on event go\n  dropped b[0] (conflicts with r1[0])\n  \
        exit    b r2 a r1 p\n  take    r1[0]\n  enter   x\n";
    assert_eq!(err, expected);
    assert_eq!(
        lines(&o),
        [
            r#"{"configuration":["a","b"],"done":false}"#,
            r#"{"configuration":["x"],"done":false}"#
        ]
    );
}

#[test]
fn run_trace_prints_errors_where_they_happened() {
    // The assign fails inside the transition's content: error.execution is raised after
    // the microstep that took `a[0]`, and no transition handles it.
    let doc = write_doc(
        "failing.scxml",
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <state id="a"><transition event="go"><assign location="x" expr="nope + 1"/></transition></state>
</scxml>"#,
    );
    let o = ors(
        &["run", "--trace", doc.to_str().unwrap()],
        "{\"name\":\"go\"}\n",
    );
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    let expected_start = "trace run-1: microstep on start\n  enter   a\n\
        trace run-1: microstep on event go\n  take    a[0]\n\
        trace run-1: error.execution ReferenceError: nope is not defined";
    assert!(err.starts_with(expected_start), "{err}");
}

#[test]
fn validate_colours_only_where_asked() {
    let bad = write_doc(
        "colours.scxml",
        "<scxml xmlns='http://www.w3.org/2005/07/scxml' version='1.0'><state id='a'><transition target='nowhere'/></state></scxml>",
    );
    let run = |force: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ors"));
        c.args(["validate", bad.to_str().unwrap()])
            .env_remove("NO_COLOR");
        if force {
            // What anstream honours for a terminal it cannot see (as on CI logs).
            c.env("CLICOLOR_FORCE", "1");
        } else {
            c.env_remove("CLICOLOR_FORCE");
        }
        String::from_utf8(c.output().unwrap().stdout).unwrap()
    };
    let plain = run(false);
    let coloured = run(true);
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert!(coloured.contains("\x1b[1m"), "{coloured:?}");
    let stripped: String = {
        // Remove `ESC [ ... m` sequences: what is left is the plain text.
        let mut out = String::new();
        let mut chars = coloured.chars();
        while let Some(ch) = chars.next() {
            if ch == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(ch);
            }
        }
        out
    };
    assert_eq!(stripped, plain);
}
