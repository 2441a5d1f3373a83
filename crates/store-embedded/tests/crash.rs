//! What a call acknowledged survives `kill -9`: a child process writes a session version
//! after version, printing each acknowledged one; the parent kills it with SIGKILL
//! mid-stream, reopens the file and finds at least the last acknowledged version.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ors_store::{SessionStore, SessionWrite};
use ors_store_embedded::EmbeddedStore;

const CHILD_ENV: &str = "ORS_EMBEDDED_CRASH_CHILD";

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        return child(&path).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_writes_survive_sigkill",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut last_acked = 0u64;
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(v) = line.strip_prefix("acked ") {
            last_acked = v.trim().parse().unwrap();
            if last_acked >= 200 {
                break;
            }
        }
    }
    // SIGKILL: no destructors, no flush.
    let pid = c.id() as i32;
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let _ = c.wait();
    assert!(
        last_acked >= 200,
        "the child acknowledged only {last_acked} writes"
    );

    let store = EmbeddedStore::open(&path).expect("the file opens after a crash");
    let r = store
        .read_session("crashy")
        .await
        .unwrap()
        .expect("the session is there");
    assert!(
        r.version >= last_acked,
        "acknowledged version {last_acked} lost, found {}",
        r.version
    );
    assert_eq!(r.snapshot, format!("state {}", r.version).into_bytes());
}

async fn child(path: &str) {
    let store = EmbeddedStore::open(path).unwrap();
    let mut version = None;
    for i in 1.. {
        let body = format!("state {i}");
        let v = store
            .write_session(SessionWrite {
                id: "crashy",
                node: "n1",
                document: "d",
                snapshot: body.as_bytes(),
                expected_version: version,
                fence: 1,
            })
            .await
            .unwrap();
        version = Some(v);
        println!("acked {v}");
    }
}
