//! `cargo run --release -p ors-store-bench`: for each backend available on this machine
//! (in-memory, embedded, Redis if `redis-server` is installed), the rate of 4 KiB session
//! snapshot writes (conditional, fenced) and their p50/p99 latency, with 1 and with 64
//! concurrent writers. Each writer updates its own session, as sessions do.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ors_store::{MemoryStore, SessionStore, SessionWrite};
use ors_store_embedded::EmbeddedStore;
use ors_store_redis::{RedisConfig, RedisStore};

const SNAPSHOT: usize = 4096;

async fn run(
    store: Arc<dyn SessionStore>,
    writers: usize,
    per_writer: usize,
) -> (f64, Duration, Duration) {
    let snapshot = vec![7u8; SNAPSHOT];
    for w in 0..writers {
        let id = format!("bench-{writers}-{w}");
        store
            .write_session(SessionWrite {
                id: &id,
                node: "n1",
                document: "d",
                snapshot: &snapshot,
                expected_version: None,
                fence: 1,
            })
            .await
            .expect("create");
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let snapshot = snapshot.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("bench-{writers}-{w}");
            let mut version = 1;
            let mut lat = Vec::with_capacity(per_writer);
            for _ in 0..per_writer {
                let t = Instant::now();
                version = store
                    .write_session(SessionWrite {
                        id: &id,
                        node: "n1",
                        document: "d",
                        snapshot: &snapshot,
                        expected_version: Some(version),
                        fence: 1,
                    })
                    .await
                    .expect("write");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / secs, pct(0.50), pct(0.99))
}

async fn report(name: &str, store: Arc<dyn SessionStore>, budget: usize) {
    for writers in [1usize, 64] {
        let per = (budget / writers).max(20);
        let (rate, p50, p99) = run(store.clone(), writers, per).await;
        println!(
            "{name:<10} writers={writers:<3} writes={:<6} {rate:>9.0} writes/s  p50 {:>9.1} us  p99 {:>9.1} us",
            per * writers,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
}

fn start_redis(port: u16, dir: &std::path::Path) -> Option<Child> {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
        ])
        .args(["--appendfsync", "everysec", "--dir", dir.to_str()?])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(child)
}

#[tokio::main]
async fn main() {
    println!("4 KiB snapshots, conditional fenced writes, each writer on its own session");
    report("memory", Arc::new(MemoryStore::new()), 200_000).await;

    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(dir.path().join("bench.redb")).unwrap();
    report("embedded", Arc::new(embedded), 3_000).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(mut redis) = start_redis(port, dir.path()) else {
        println!("redis      not available (redis-server not installed)");
        return;
    };
    let cfg = RedisConfig {
        urls: vec![format!("redis://127.0.0.1:{port}")],
        ..RedisConfig::default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match RedisStore::connect(&cfg).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("redis did not start: {e}"),
        }
    };
    report("redis", Arc::new(store), 50_000).await;
    let _ = redis.kill();
    let _ = redis.wait();
}
