//! The in-memory backend passes the conformance suite.

use ors_store::MemoryStore;
use ors_store::testkit::Harness;

struct Memory;

#[async_trait::async_trait]
impl Harness for Memory {
    type Store = MemoryStore;
    async fn fresh(&self) -> MemoryStore {
        MemoryStore::new()
    }
    async fn another_client(&self, store: &MemoryStore) -> MemoryStore {
        store.clone()
    }
    async fn corrupt_session(&self, _: &MemoryStore, _: &str) -> bool {
        false
    }
}

ors_store::conformance_tests!(Memory);
