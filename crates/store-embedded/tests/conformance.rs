//! The embedded backend passes the conformance suite.

use std::sync::atomic::{AtomicUsize, Ordering};

use ors_store::testkit::Harness;
use ors_store_embedded::EmbeddedStore;

struct Embedded {
    dir: tempfile::TempDir,
    n: AtomicUsize,
}

fn harness() -> Embedded {
    Embedded {
        dir: tempfile::tempdir().unwrap(),
        n: AtomicUsize::new(0),
    }
}

#[async_trait::async_trait]
impl Harness for Embedded {
    type Store = EmbeddedStore;
    async fn fresh(&self) -> EmbeddedStore {
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        EmbeddedStore::open(self.dir.path().join(format!("store-{n}.redb"))).unwrap()
    }
    async fn another_client(&self, store: &EmbeddedStore) -> EmbeddedStore {
        // One process holds a file once; another client is another handle to it.
        store.clone()
    }
    async fn corrupt_session(&self, store: &EmbeddedStore, id: &str) -> bool {
        store
            .overwrite_session_bytes(id, b"\x00garbage\xff".to_vec())
            .await
            .unwrap();
        true
    }
}

ors_store::conformance_tests!(harness());
