//! `cargo run -p ors-example-custom-store -- DIR`: writes a session into a FileStore in
//! DIR, updates it with compare-and-set, and shows a fencing token at work.

use ors_example_custom_store::FileStore;
use ors_store::{SessionStore, SessionWrite, StoreError};

#[tokio::main]
async fn main() -> Result<(), StoreError> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "file-store-demo".into());
    let store = FileStore::open(&dir)?;
    let lease = store
        .acquire_lease("node-1", "me", 10_000)
        .await?
        .expect("free on a new store");
    let id = format!("node-1-{}", lease.token);
    let w = |expected, snapshot: &'static [u8], fence| SessionWrite {
        id: &id,
        node: "node-1",
        document: "hash-of-doc",
        snapshot,
        expected_version: expected,
        fence,
    };
    let v1 = store.write_session(w(None, b"first", lease.token)).await?;
    let v2 = store
        .write_session(w(Some(v1), b"second", lease.token))
        .await?;
    println!("wrote {id} versions {v1} and {v2} in {dir}");
    match store
        .write_session(w(Some(v1), b"stale", lease.token))
        .await
    {
        Err(e) => println!("a stale update is refused: {e}"),
        Ok(_) => unreachable!("a conditional write on an old version must fail"),
    }
    println!("node-1 owns {:?}", store.node_sessions("node-1").await?);
    store.release_lease(&lease).await
}
