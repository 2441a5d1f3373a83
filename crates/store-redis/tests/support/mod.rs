//! The Redis conformance harness: one server (or cluster) per test, a key prefix per
//! namespace.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

use ors_store::testkit::Harness;
use ors_store_redis::{RedisConfig, RedisStore};
#[allow(unused_imports)]
pub use ors_testsupport::{RedisCluster, RedisServer, free_port};

static NAMESPACE: AtomicUsize = AtomicUsize::new(0);

/// A conformance harness: one server (or cluster) per test, a key prefix per namespace.
pub struct RedisHarness {
    pub config: RedisConfig,
    _standalone: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

impl RedisHarness {
    pub fn standalone() -> RedisHarness {
        let server = RedisServer::start(false);
        RedisHarness {
            config: RedisConfig {
                urls: vec![server.url()],
                ..RedisConfig::default()
            },
            _standalone: Some(server),
            _cluster: None,
        }
    }

    pub fn cluster() -> RedisHarness {
        let cluster = RedisCluster::start();
        RedisHarness {
            config: RedisConfig {
                urls: cluster.urls(),
                cluster: true,
                ..RedisConfig::default()
            },
            _standalone: None,
            _cluster: Some(cluster),
        }
    }
}

#[async_trait::async_trait]
impl Harness for RedisHarness {
    type Store = RedisStore;
    async fn fresh(&self) -> RedisStore {
        let n = NAMESPACE.fetch_add(1, Ordering::SeqCst);
        let cfg = RedisConfig {
            key_prefix: format!("test{}-{n}", std::process::id()),
            ..self.config.clone()
        };
        RedisStore::connect(&cfg).await.unwrap()
    }
    async fn another_client(&self, store: &RedisStore) -> RedisStore {
        let cfg = RedisConfig {
            key_prefix: store.key_prefix().to_string(),
            ..self.config.clone()
        };
        RedisStore::connect(&cfg).await.unwrap()
    }
    async fn corrupt_session(&self, store: &RedisStore, id: &str) -> bool {
        store
            .overwrite_session_raw(id, b"\x00garbage")
            .await
            .unwrap();
        true
    }
}
