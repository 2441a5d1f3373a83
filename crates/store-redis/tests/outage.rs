//! Connection loss, for real: the server is killed mid-run; calls fail fast with
//! `Unavailable`, nothing panics or exits, and once the server is back the same store
//! works again without being recreated.

mod support;

use std::time::{Duration, Instant};

use ors_store::{SessionStore, SessionWrite, StoreError};
use ors_store_redis::{RedisConfig, RedisStore};
use support::RedisServer;

fn write(id: &str) -> SessionWrite<'_> {
    SessionWrite {
        id,
        node: "n1",
        document: "d",
        snapshot: b"snap",
        expected_version: None,
        fence: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_server_outage() {
    let mut server = RedisServer::start(false);
    let cfg = RedisConfig {
        urls: vec![server.url()],
        command_timeout: Duration::from_millis(500),
        reconnect_delay: Duration::from_millis(50),
        ..RedisConfig::default()
    };
    let store = RedisStore::connect(&cfg).await.unwrap();
    store.write_session(write("before")).await.unwrap();

    server.stop();
    let t = Instant::now();
    let err = store
        .read_session("before")
        .await
        .expect_err("the server is down");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?} to fail",
        t.elapsed()
    );
    assert!(matches!(
        store.write_session(write("during")).await,
        Err(StoreError::Unavailable(_))
    ));

    // Data is not persisted by this test server (--save ''), so a restart comes back
    // empty; what matters is that the same client recovers on its own.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.write_session(write("after")).await {
            Ok(v) => {
                assert_eq!(v, 1);
                break;
            }
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("did not recover: {e}"),
        }
    }
    assert!(store.read_session("after").await.unwrap().is_some());
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast() {
    let port = support::free_port();
    let cfg = RedisConfig {
        urls: vec![format!("redis://127.0.0.1:{port}")],
        connect_timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    };
    let t = Instant::now();
    let err = RedisStore::connect(&cfg)
        .await
        .err()
        .expect("nothing listens there");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
}
