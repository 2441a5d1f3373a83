//! `ors-conformance w3c DIR`: runs every automated test of the W3C SCXML IRP suite for
//! the ECMAScript datamodel (as packaged in `@scion-scxml/test-framework`, folder
//! `test/w3c-ecma`) and prints `w3c-ecma: N passed, M failed, K skipped`.
//!
//! A test passes when its session ends in the final state `pass`. Tests run in-process
//! (virtual time) except those that need the BasicHTTP Event I/O Processor: with
//! `--server PATH-TO-ors` they run through a real `ors serve` over HTTP, without it they
//! are skipped; with `--all` every test runs through the server (real time). Manual tests
//! are skipped. Exit status 1 when any test failed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ors::files::{FileFactory, FileLoader, compile_file};
use ors_scxml::host::LocalHost;

const BASIC_HTTP: &str = "BasicHTTPEventProcessor";
/// Virtual milliseconds a test may run (delays in the suite are at most a few seconds).
const VIRTUAL_LIMIT_MS: u64 = 60_000;

enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some("w3c"), Some(dir)) = (args.get(1).map(String::as_str), args.get(2)) else {
        eprintln!("usage: ors-conformance w3c DIR [--server PATH-TO-ors [--all]] [TEST-ID...]");
        return ExitCode::from(2);
    };
    let mut rest: Vec<&str> = args[3..].iter().map(String::as_str).collect();
    let server_bin = match rest.iter().position(|a| *a == "--server") {
        Some(i) if i + 1 < rest.len() => {
            let b = rest[i + 1].to_string();
            rest.drain(i..=i + 1);
            Some(b)
        }
        _ => None,
    };
    let all = match rest.iter().position(|a| *a == "--all") {
        Some(i) => {
            rest.remove(i);
            true
        }
        None => false,
    };
    if all && server_bin.is_none() {
        eprintln!("--all needs --server");
        return ExitCode::from(2);
    }
    let only = rest;
    let dir = PathBuf::from(dir);
    let manifest = match std::fs::read_to_string(dir.join("manifest.xml")) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cannot read {}/manifest.xml: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    let xml = match roxmltree::Document::parse(&manifest) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("manifest.xml: {e}");
            return ExitCode::from(2);
        }
    };
    let mut server = match &server_bin {
        Some(bin) => match OrsServer::start(bin, &dir) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("cannot start the server: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut report = Vec::new();
    for t in xml.descendants().filter(|n| n.has_tag_name("test")) {
        let id = t.attribute("id").unwrap_or("?");
        if !only.is_empty() && !only.contains(&id) {
            continue;
        }
        let outcome = if t.attribute("manual") == Some("true") {
            Outcome::Skip("manual test".into())
        } else {
            run_test(&dir, id, server.as_mut(), all)
        };
        match outcome {
            Outcome::Pass => passed += 1,
            Outcome::Fail(why) => {
                failed += 1;
                report.push(format!("FAILED  {id}: {why}"));
            }
            Outcome::Skip(why) => {
                skipped += 1;
                report.push(format!("SKIPPED {id}: {why}"));
            }
        }
    }
    for line in &report {
        println!("{line}");
    }
    println!("w3c-ecma: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The files of one manifest entry: `testN.txml.scxml`, or `testNa`, `testNb`, ... when
/// the test comes in parts (all must pass). A `.scxml_` suffix (disabled upstream) counts.
fn test_files(dir: &Path, id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&format!("test{id}")) else {
            continue;
        };
        let part_ok = rest.starts_with(".txml.scxml")
            || (rest.len() > 1
                && rest.as_bytes()[0].is_ascii_lowercase()
                && rest[1..].starts_with(".txml.scxml"));
        if part_ok && (rest.ends_with(".scxml") || rest.ends_with(".scxml_")) {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

fn run_test(
    dir: &Path,
    id: &str,
    server: Option<&mut OrsServer>,
    all_through_server: bool,
) -> Outcome {
    let files = test_files(dir, id);
    if files.is_empty() {
        return Outcome::Fail("no test file found".into());
    }
    let needs_http = all_through_server
        || files.iter().any(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .contains(BASIC_HTTP)
        });
    if needs_http {
        let Some(server) = server else {
            return Outcome::Skip(
                "needs the BasicHTTP Event I/O Processor (run with --server)".into(),
            );
        };
        for f in &files {
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if let Err(why) = server.run(&name) {
                return Outcome::Fail(format!("{name} (through the server): {why}"));
            }
        }
        return Outcome::Pass;
    }
    for f in files {
        if let Err(why) = run_file(&f) {
            return Outcome::Fail(format!(
                "{}: {why}",
                f.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
    }
    Outcome::Pass
}

fn run_file(path: &Path) -> Result<(), String> {
    let doc = compile_file(path, None)?;
    let factory = FileFactory {
        loader: FileLoader::for_document(path),
    };
    let mut host = LocalHost::new(factory, "w3c-");
    let sid = host.start(doc, &[]);
    host.run_virtual(VIRTUAL_LIMIT_MS);
    let s = host.session(&sid).ok_or("session vanished")?;
    let conf = s.active_atomic_states();
    if s.is_done() && conf.iter().any(|c| c == "pass") {
        Ok(())
    } else {
        let why = host.ended.get(&sid).cloned().flatten().unwrap_or_default();
        Err(format!(
            "ended={} configuration={conf:?} {why}",
            s.is_done()
        ))
    }
}

/// A real `ors serve` whose documents directory is the test directory.
struct OrsServer {
    child: Child,
    addr: String,
    _data: PathBuf,
}

impl Drop for OrsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client (one request per connection): the runner needs nothing more.
fn http(addr: &str, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed HTTP response")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

impl OrsServer {
    fn start(bin: &str, dir: &Path) -> Result<OrsServer, String> {
        let data = std::env::temp_dir().join(format!("ors-w3c-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--documents-dir")
            .arg(dir)
            .env("ORS_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{bin}: {e}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let addr = line
            .trim()
            .strip_prefix("ors listening on http://")
            .ok_or_else(|| format!("unexpected first line from the server: {line:?}"))?
            .to_string();
        Ok(OrsServer {
            child,
            addr,
            _data: data,
        })
    }

    fn run(&mut self, file: &str) -> Result<(), String> {
        let (st, body) = http(
            &self.addr,
            "POST",
            "/scxml/session/start",
            &format!("src={file}"),
        )?;
        if st != 200 {
            return Err(format!("start answered {st}: {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let sid = v["sessionid"].as_str().ok_or("no sessionid")?.to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (st, body) = http(
                &self.addr,
                "GET",
                &format!("/scxml/session/{sid}/query"),
                "",
            )?;
            let q: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if st == 200 && q["done"] == true {
                let conf = &q["configuration"];
                return if conf
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s == "pass"))
                {
                    Ok(())
                } else {
                    Err(format!("ended in {conf}"))
                };
            }
            if Instant::now() > deadline {
                return Err(format!("not done after 60 s: {st} {body}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
