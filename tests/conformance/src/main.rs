//! `ors-conformance w3c DIR`: runs every automated test of the W3C SCXML IRP suite for
//! the ECMAScript datamodel (as packaged in `@scion-scxml/test-framework`, folder
//! `test/w3c-ecma`) and prints `w3c-ecma: N passed, M failed, K skipped`.
//!
//! A test passes when its session ends in the final state `pass`. Manual tests and the
//! tests that need the BasicHTTP Event I/O Processor (which only the server has) are
//! skipped, with the reason printed. Exit status 1 when any test failed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
        eprintln!("usage: ors-conformance w3c DIR [TEST-ID...]");
        return ExitCode::from(2);
    };
    let only: Vec<&str> = args[3..].iter().map(String::as_str).collect();
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
            run_test(&dir, id)
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

fn run_test(dir: &Path, id: &str) -> Outcome {
    let files = test_files(dir, id);
    if files.is_empty() {
        return Outcome::Fail("no test file found".into());
    }
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if text.contains(BASIC_HTTP) {
            return Outcome::Skip("needs the BasicHTTP Event I/O Processor (server only)".into());
        }
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
