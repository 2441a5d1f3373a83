//! The example backend passes the same conformance suite as the built-in ones.

use std::sync::atomic::{AtomicUsize, Ordering};

use ors_example_custom_store::FileStore;
use ors_store::testkit::Harness;

struct Files {
    dir: tempfile::TempDir,
    n: AtomicUsize,
}

fn harness() -> Files {
    Files {
        dir: tempfile::tempdir().unwrap(),
        n: AtomicUsize::new(0),
    }
}

#[async_trait::async_trait]
impl Harness for Files {
    type Store = FileStore;
    async fn fresh(&self) -> FileStore {
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        FileStore::open(self.dir.path().join(n.to_string())).unwrap()
    }
    async fn another_client(&self, store: &FileStore) -> FileStore {
        store.clone()
    }
    async fn corrupt_session(&self, store: &FileStore, id: &str) -> bool {
        store.corrupt(id).unwrap();
        true
    }
}

ors_store::conformance_tests!(harness());
