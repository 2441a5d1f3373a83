//! The conformance suite every [`SessionStore`] must pass (feature `testkit`).
//!
//! Implement [`Harness`] for your backend and invoke [`conformance_tests!`] in a test
//! file; it generates one test per property:
//!
//! ```text
//! struct MyHarness;
//! #[async_trait::async_trait]
//! impl ors_store::testkit::Harness for MyHarness { /* ... */ }
//! ors_store::conformance_tests!(MyHarness);
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proptest::prelude::*;

use crate::*;

/// How the suite gets stores.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The backend under test.
    type Store: SessionStore;
    /// A client of a fresh, empty namespace (a new file, a new key prefix, ...).
    async fn fresh(&self) -> Self::Store;
    /// Another client of the same namespace as `store` (with its own connections where the
    /// backend has connections), to race against the first.
    async fn another_client(&self, store: &Self::Store) -> Self::Store;
    /// Overwrites the stored bytes of session `id` with garbage, as corruption on disk or
    /// a foreign writer would. Returns `false` for a backend that stores typed values and
    /// so has no bytes to corrupt (the in-memory one); the check is then skipped.
    async fn corrupt_session(&self, store: &Self::Store, id: &str) -> bool;
}

/// Generates one `#[tokio::test]` per conformance property for a harness expression.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        mod conformance {
            use super::*;
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        $crate::testkit::$name(&$harness).await;
                    }
                };
            }
            case!(documents);
            case!(session_lifecycle);
            case!(fencing);
            case!(node_fencing);
            case!(membership);
            case!(node_index);
            case!(node_index_pages);
            case!(create_race);
            case!(update_race);
            case!(schedules);
            case!(schedule_claim_race);
            case!(leases);
            case!(lease_expiry_and_takeover);
            case!(large_snapshot);
            case!(batch_writes);
            case!(corrupt_bytes);
            #[test]
            fn model_check() {
                $crate::testkit::model_check(&$harness, 24);
            }
        }
    };
}

fn write<'a>(
    id: &'a str,
    node: &'a str,
    snap: &'a [u8],
    expected: Option<u64>,
    fence: Fence,
) -> SessionWrite<'a> {
    SessionWrite {
        id,
        node,
        document: "doc-hash",
        snapshot: snap,
        expected_version: expected,
        fence,
    }
}

/// Documents: stored by hash, idempotent puts, missing ones are `None`.
pub async fn documents<H: Harness>(h: &H) {
    let s = h.fresh().await;
    assert_eq!(s.get_document("h1").await.unwrap(), None);
    s.put_document("h1", b"<scxml/>").await.unwrap();
    s.put_document("h1", b"<scxml/>").await.unwrap(); // idempotent
    s.put_document("h2", &[0, 159, 146, 150]).await.unwrap();
    assert_eq!(
        s.get_document("h1").await.unwrap().as_deref(),
        Some(&b"<scxml/>"[..])
    );
    assert_eq!(
        s.get_document("h2").await.unwrap().as_deref(),
        Some(&[0u8, 159, 146, 150][..])
    );
}

/// Sessions: create, conditional replace, read, delete; versions 1, 2, 3, ...
pub async fn session_lifecycle<H: Harness>(h: &H) {
    let s = h.fresh().await;
    assert_eq!(s.read_session("a").await.unwrap(), None);
    assert_eq!(
        s.write_session(write("a", "n1", b"one", None, 1))
            .await
            .unwrap(),
        1
    );
    match s.write_session(write("a", "n1", b"dup", None, 1)).await {
        Err(StoreError::VersionConflict {
            expected: None,
            found: Some(1),
            ..
        }) => {}
        other => panic!("creating an existing session must conflict, got {other:?}"),
    }
    assert_eq!(
        s.write_session(write("a", "n1", b"two", Some(1), 1))
            .await
            .unwrap(),
        2
    );
    match s.write_session(write("a", "n1", b"old", Some(1), 1)).await {
        Err(StoreError::VersionConflict {
            expected: Some(1),
            found: Some(2),
            ..
        }) => {}
        other => panic!("a stale version must conflict, got {other:?}"),
    }
    match s
        .write_session(write("missing", "n1", b"x", Some(1), 1))
        .await
    {
        Err(StoreError::VersionConflict { found: None, .. }) => {}
        other => panic!("updating a missing session must conflict, got {other:?}"),
    }
    let r = s.read_session("a").await.unwrap().expect("written");
    assert_eq!(
        r,
        SessionRecord {
            id: "a".into(),
            node: "n1".into(),
            document: "doc-hash".into(),
            version: 2,
            fence: 1,
            snapshot: b"two".to_vec()
        }
    );
    s.delete_session("a", 1).await.unwrap();
    assert_eq!(s.read_session("a").await.unwrap(), None);
    s.delete_session("a", 1).await.unwrap(); // deleting a missing session is fine
    // Recreating after delete starts over at version 1.
    assert_eq!(
        s.write_session(write("a", "n1", b"again", None, 1))
            .await
            .unwrap(),
        1
    );
}

/// Fencing: a write, delete or move with an older token than the record's is refused
/// (a move to another node: see below).
pub async fn fencing<H: Harness>(h: &H) {
    let s = h.fresh().await;
    s.write_session(write("f", "n1", b"x", None, 5))
        .await
        .unwrap();
    match s.write_session(write("f", "n1", b"y", Some(1), 3)).await {
        Err(StoreError::StaleFence {
            given: 3,
            current: 5,
            ..
        }) => {}
        other => panic!("an older fence must be refused, got {other:?}"),
    }
    assert_eq!(
        s.write_session(write("f", "n1", b"y", Some(1), 5))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.write_session(write("f", "n2", b"z", Some(2), 9))
            .await
            .unwrap(),
        3
    );
    assert!(matches!(
        s.write_session(write("f", "n1", b"late", Some(3), 5)).await,
        Err(StoreError::StaleFence {
            given: 5,
            current: 9,
            ..
        })
    ));
    assert!(matches!(
        s.delete_session("f", 8).await,
        Err(StoreError::StaleFence { .. })
    ));
    // A move within the record's node: the record's token counts.
    assert!(matches!(
        s.move_session("f", "n2", 8).await,
        Err(StoreError::StaleFence { .. })
    ));
    assert_eq!(s.read_session("f").await.unwrap().unwrap().snapshot, b"z");
    // A move to another node (a drain): tokens of different nodes' leases are not
    // comparable, so only the new node's lease counts, and its holder may well have a
    // smaller token than the old node's last writer.
    s.move_session("f", "n1", 2).await.unwrap();
    let moved = s.read_session("f").await.unwrap().unwrap();
    assert_eq!(
        (moved.node.as_str(), moved.version, moved.fence),
        ("n1", 4, 2)
    );
    assert_eq!(
        s.write_session(write("f", "n1", b"w", Some(4), 2))
            .await
            .unwrap(),
        5
    );
    s.delete_session("f", 2).await.unwrap();
}

/// Node-wide fencing: once a node's lease is taken with a newer token, no write for that
/// node with an older token lands, even on a session the new holder has not written yet;
/// other nodes are not affected.
pub async fn node_fencing<H: Harness>(h: &H) {
    let s = h.fresh().await;
    let old = h.another_client(&s).await;
    let l1 = old
        .acquire_lease(&node_lease("n1"), "a", 60_000)
        .await
        .unwrap()
        .expect("free");
    for id in ["untouched", "gone", "moving"] {
        old.write_session(write(id, "n1", b"old", None, l1.token))
            .await
            .unwrap();
    }
    old.write_session(write("elsewhere", "n2", b"old", None, l1.token))
        .await
        .unwrap();
    // A successor takes the lease (the old holder released it, as a paused or
    // partitioned one would lose it to expiry).
    old.release_lease(&l1).await.unwrap();
    let l2 = s
        .acquire_lease(&node_lease("n1"), "b", 60_000)
        .await
        .unwrap()
        .expect("released");
    assert!(l2.token > l1.token);
    let fenced = |r: Result<()>, what: &str| match r {
        Err(StoreError::StaleFence {
            key,
            given,
            current,
        }) if key == "node n1" && given == l1.token && current == l2.token => {}
        other => panic!("{what}: a deposed holder's write must be fenced, got {other:?}"),
    };
    fenced(
        old.write_session(write("untouched", "n1", b"late", Some(1), l1.token))
            .await
            .map(drop),
        "replace",
    );
    fenced(
        old.write_session(write("fresh", "n1", b"late", None, l1.token))
            .await
            .map(drop),
        "create",
    );
    fenced(old.delete_session("gone", l1.token).await, "delete");
    fenced(old.move_session("elsewhere", "n1", l1.token).await, "move");
    let batch = old
        .write_sessions(&[
            write("untouched", "n1", b"late", Some(1), l1.token),
            write("fresh", "n1", b"late", None, l1.token),
        ])
        .await;
    for r in batch {
        fenced(r.map(drop), "batch");
    }
    for id in ["untouched", "gone", "moving"] {
        assert_eq!(s.read_session(id).await.unwrap().unwrap().snapshot, b"old");
    }
    assert_eq!(s.read_session("fresh").await.unwrap(), None);
    // The successor writes with its token; another node's sessions are not fenced by
    // n1's lease.
    s.write_session(write("untouched", "n1", b"new", Some(1), l2.token))
        .await
        .unwrap();
    old.write_session(write("elsewhere", "n2", b"still", Some(1), l1.token))
        .await
        .unwrap();
    assert_eq!(s.node_sessions("n1").await.unwrap().len(), 3);
}

/// Membership: entries are keyed by node and instance, refreshed by announcing again,
/// listed in order until they expire, and removed by `withdraw`.
pub async fn membership<H: Harness>(h: &H) {
    let s = h.fresh().await;
    let other = h.another_client(&s).await;
    assert!(s.members().await.unwrap().is_empty());
    let member = |node: &str, instance: &str, role: &str| Member {
        node: node.into(),
        instance: instance.into(),
        role: role.into(),
        advertise_url: format!("http://{node}-{instance}"),
        external_url: format!("http://{node}"),
        data_center: "dc1".into(),
        heartbeat_ms: 0,
        expires_at_ms: 0,
    };
    let before = now_ms();
    s.announce(&member("n2", "a", "primary"), 60_000)
        .await
        .unwrap();
    other
        .announce(&member("n1", "b", "backup"), 60_000)
        .await
        .unwrap();
    s.announce(&member("n1", "a", "backup"), 60_000)
        .await
        .unwrap();
    // Announcing again replaces the entry.
    s.announce(&member("n1", "a", "primary"), 60_000)
        .await
        .unwrap();
    // A short-lived entry that nobody refreshes.
    s.announce(&member("n3", "gone", "primary"), 300)
        .await
        .unwrap();
    let listed = other.members().await.unwrap();
    let keys: Vec<_> = listed
        .iter()
        .map(|m| (m.node.as_str(), m.instance.as_str(), m.role.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("n1", "a", "primary"),
            ("n1", "b", "backup"),
            ("n2", "a", "primary"),
            ("n3", "gone", "primary"),
        ]
    );
    let n1a = &listed[0];
    assert_eq!(
        (n1a.advertise_url.as_str(), n1a.external_url.as_str()),
        ("http://n1-a", "http://n1")
    );
    assert_eq!(n1a.data_center, "dc1");
    // The store's clock may differ from ours a little; it may not be far off.
    assert!(n1a.heartbeat_ms + 5_000 >= before, "{n1a:?}");
    assert!(n1a.expires_at_ms >= n1a.heartbeat_ms + 59_000, "{n1a:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.members().await.unwrap().iter().any(|m| m.node == "n3") {
        assert!(
            Instant::now() < deadline,
            "an expired entry is still listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    other.withdraw("n1", "b").await.unwrap();
    other.withdraw("n1", "never").await.unwrap();
    let left: Vec<_> = s
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.node, m.instance))
        .collect();
    assert_eq!(left, [("n1".into(), "a".into()), ("n2".into(), "a".into())]);
}

/// Pages of the node index: in id order, after the cursor, no more than asked, other
/// nodes' sessions never mixed in, and a moved session on its new node's pages.
pub async fn node_index_pages<H: Harness>(h: &H) {
    let s = h.fresh().await;
    for (id, node) in [
        ("s4", "n1"),
        ("s1", "n1"),
        ("s3", "n2"),
        ("s2", "n1"),
        ("s5", "n1"),
    ] {
        s.write_session(write(id, node, b"x", None, 1))
            .await
            .unwrap();
    }
    assert_eq!(
        s.node_sessions_page("n1", None, 2).await.unwrap(),
        ["s1", "s2"]
    );
    assert_eq!(
        s.node_sessions_page("n1", Some("s2"), 2).await.unwrap(),
        ["s4", "s5"]
    );
    assert!(
        s.node_sessions_page("n1", Some("s5"), 2)
            .await
            .unwrap()
            .is_empty()
    );
    // A cursor that is not itself an id of the node.
    assert_eq!(
        s.node_sessions_page("n1", Some("s3"), 10).await.unwrap(),
        ["s4", "s5"]
    );
    assert_eq!(s.node_sessions_page("n2", None, 10).await.unwrap(), ["s3"]);
    assert!(
        s.node_sessions_page("n9", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    s.move_session("s1", "n2", 2).await.unwrap();
    assert_eq!(
        s.node_sessions_page("n2", None, 10).await.unwrap(),
        ["s1", "s3"]
    );
    assert_eq!(s.node_sessions_page("n1", None, 1).await.unwrap(), ["s2"]);
}

/// The session-to-node index follows creates, moves and deletes.
pub async fn node_index<H: Harness>(h: &H) {
    let s = h.fresh().await;
    for (id, node) in [("s1", "n1"), ("s2", "n1"), ("s3", "n2")] {
        s.write_session(write(id, node, b"x", None, 1))
            .await
            .unwrap();
    }
    let mut n1 = s.node_sessions("n1").await.unwrap();
    n1.sort();
    assert_eq!(n1, ["s1", "s2"]);
    assert_eq!(s.node_sessions("n2").await.unwrap(), ["s3"]);
    assert!(s.node_sessions("n9").await.unwrap().is_empty());
    s.move_session("s1", "n2", 2).await.unwrap();
    let r = s.read_session("s1").await.unwrap().unwrap();
    assert_eq!((r.node.as_str(), r.fence), ("n2", 2));
    assert_eq!(s.node_sessions("n1").await.unwrap(), ["s2"]);
    let mut n2 = s.node_sessions("n2").await.unwrap();
    n2.sort();
    assert_eq!(n2, ["s1", "s3"]);
    // A write that changes the node moves the index entry too.
    let v = r.version;
    s.write_session(write("s1", "n3", b"y", Some(v), 2))
        .await
        .unwrap();
    assert_eq!(s.node_sessions("n3").await.unwrap(), ["s1"]);
    assert_eq!(s.node_sessions("n2").await.unwrap(), ["s3"]);
    // With versions: s1 was created, moved and rewritten.
    assert_eq!(
        s.node_session_versions("n3").await.unwrap(),
        [("s1".to_string(), 3)]
    );
    assert!(s.node_session_versions("n9").await.unwrap().is_empty());
    s.delete_session("s2", 1).await.unwrap();
    assert!(s.node_sessions("n1").await.unwrap().is_empty());
    assert!(matches!(
        s.move_session("nope", "n1", 1).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Runs `n` racing writers (half on a second client) and returns how many succeeded.
async fn race<H: Harness>(h: &H, s: H::Store, n: usize, expected: Option<u64>) -> usize {
    let other = Arc::new(h.another_client(&s).await);
    let s = Arc::new(s);
    let wins = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..n {
        let client: Arc<dyn SessionStore> = if i % 2 == 0 { s.clone() } else { other.clone() };
        let wins = wins.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!("writer {i}");
            match client
                .write_session(write("raced", "n1", body.as_bytes(), expected, 1))
                .await
            {
                Ok(_) => {
                    wins.fetch_add(1, Ordering::SeqCst);
                }
                Err(StoreError::VersionConflict { .. }) => {}
                Err(e) => panic!("unexpected error in a race: {e}"),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wins.load(Ordering::SeqCst)
}

/// Racing creates of one session: exactly one wins.
pub async fn create_race<H: Harness>(h: &H) {
    let s = h.fresh().await;
    assert_eq!(
        race(h, s, 32, None).await,
        1,
        "exactly one creator must win"
    );
}

/// Racing replaces of one version: exactly one wins.
pub async fn update_race<H: Harness>(h: &H) {
    let s = h.fresh().await;
    s.write_session(write("raced", "n1", b"v1", None, 1))
        .await
        .unwrap();
    let check = h.another_client(&s).await;
    assert_eq!(
        race(h, s, 32, Some(1)).await,
        1,
        "exactly one updater must win"
    );
    assert_eq!(
        check.read_session("raced").await.unwrap().unwrap().version,
        2
    );
}

fn entry(id: &str, session: Option<&str>, due_ms: u64) -> ScheduleEntry {
    ScheduleEntry {
        id: id.into(),
        session: session.map(Into::into),
        due_ms,
        kind: ScheduleKind::DelayedSend,
        payload: id.as_bytes().to_vec(),
    }
}

/// Schedule entries: due order, claims, claim expiry, per-session listing, deletion with the session.
pub async fn schedules<H: Harness>(h: &H) {
    let s = h.fresh().await;
    s.write_session(write("sess", "n1", b"x", None, 1))
        .await
        .unwrap();
    s.put_schedule(&entry("c", Some("sess"), 300))
        .await
        .unwrap();
    s.put_schedule(&entry("a", Some("sess"), 100))
        .await
        .unwrap();
    s.put_schedule(&entry("b", None, 200)).await.unwrap();
    s.put_schedule(&ScheduleEntry {
        kind: ScheduleKind::Other("custom".into()),
        ..entry("d", None, 5_000)
    })
    .await
    .unwrap();
    let due: Vec<String> = due_ids(&s, 250).await;
    assert_eq!(due, ["a", "b"], "due entries, earliest first");
    assert_eq!(s.due_schedules(250, 1).await.unwrap().len(), 1, "limit");
    assert_eq!(
        s.due_schedules(250, 10).await.unwrap()[0],
        entry("a", Some("sess"), 100)
    );
    assert!(s.claim_schedule("a", "n1", 250, 1_000).await.unwrap());
    assert!(
        !s.claim_schedule("a", "n2", 260, 1_000).await.unwrap(),
        "claimed twice"
    );
    let due: Vec<String> = due_ids(&s, 260).await;
    assert_eq!(due, ["b"], "a claimed entry is not due");
    // The claim expires: the entry is due and claimable again.
    let due: Vec<String> = due_ids(&s, 1_250).await;
    assert_eq!(due, ["a", "b", "c"]);
    assert!(s.claim_schedule("a", "n2", 1_250, 1_000).await.unwrap());
    assert!(
        !s.claim_schedule("missing", "n2", 1_250, 1_000)
            .await
            .unwrap()
    );
    s.delete_schedule("a").await.unwrap();
    s.delete_schedule("a").await.unwrap();
    let mut mine: Vec<String> = s
        .session_schedules("sess")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    mine.sort();
    assert_eq!(mine, ["c"]);
    let d = s.due_schedules(10_000, 10).await.unwrap();
    assert_eq!(
        d.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["b", "c", "d"]
    );
    assert_eq!(d[2].kind, ScheduleKind::Other("custom".into()));
    // Deleting a session deletes its schedule entries.
    s.delete_session("sess", 1).await.unwrap();
    assert!(s.session_schedules("sess").await.unwrap().is_empty());
    let d: Vec<String> = due_ids(&s, 10_000).await;
    assert_eq!(d, ["b", "d"]);
    // An entry put again for no session (or another) no longer goes with the first one:
    // found by `model_check` on Redis.
    s.write_session(write("s2", "n1", b"x", None, 1))
        .await
        .unwrap();
    s.put_schedule(&entry("e", Some("s2"), 100)).await.unwrap();
    s.put_schedule(&entry("e", None, 100)).await.unwrap();
    assert!(s.session_schedules("s2").await.unwrap().is_empty());
    s.delete_session("s2", 1).await.unwrap();
    let d: Vec<String> = due_ids(&s, 10_000).await;
    assert_eq!(d, ["e", "b", "d"], "earliest first");
}

/// The ids of the entries due at `now`, earliest first (at most 10).
async fn due_ids(s: &impl SessionStore, now: u64) -> Vec<String> {
    s.due_schedules(now, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Racing claimers of due entries: each entry is won exactly once.
pub async fn schedule_claim_race<H: Harness>(h: &H) {
    let s = h.fresh().await;
    let n = 40;
    for i in 0..n {
        s.put_schedule(&entry(&format!("e{i:03}"), None, 10))
            .await
            .unwrap();
    }
    let other = Arc::new(h.another_client(&s).await);
    let s = Arc::new(s);
    let fired: Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..6 {
        let client: Arc<dyn SessionStore> = if w % 2 == 0 { s.clone() } else { other.clone() };
        let fired = fired.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let due = client.due_schedules(100, 8).await.unwrap();
                if due.is_empty() {
                    break;
                }
                for e in due {
                    if client
                        .claim_schedule(&e.id, &format!("worker{w}"), 100, 60_000)
                        .await
                        .unwrap()
                    {
                        *fired.lock().unwrap().entry(e.id.clone()).or_default() += 1;
                        client.delete_schedule(&e.id).await.unwrap();
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fired = fired.lock().unwrap();
    assert_eq!(fired.len(), n, "every entry fired");
    assert!(
        fired.values().all(|&c| c == 1),
        "an entry fired twice: {fired:?}"
    );
}

/// Leases: acquire, renew, release, and tokens that only grow.
pub async fn leases<H: Harness>(h: &H) {
    let s = h.fresh().await;
    let b = h.another_client(&s).await;
    assert_eq!(s.read_lease("primary").await.unwrap(), None);
    let l1 = s
        .acquire_lease("primary", "node-a", 30_000)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(l1.holder, "node-a");
    assert!(
        b.acquire_lease("primary", "node-b", 30_000)
            .await
            .unwrap()
            .is_none(),
        "held"
    );
    assert_eq!(
        b.read_lease("primary").await.unwrap().map(|l| l.token),
        Some(l1.token)
    );
    let r = s.renew_lease(&l1, 60_000).await.unwrap();
    assert_eq!(r.token, l1.token);
    assert!(r.expires_at_ms >= l1.expires_at_ms);
    // Renewing with the wrong token fails.
    let forged = Lease {
        token: l1.token + 100,
        ..l1.clone()
    };
    assert!(matches!(
        s.renew_lease(&forged, 1_000).await,
        Err(StoreError::LeaseLost { .. })
    ));
    b.release_lease(&forged).await.unwrap(); // wrong token: no effect
    assert!(b.read_lease("primary").await.unwrap().is_some());
    s.release_lease(&l1).await.unwrap();
    assert_eq!(s.read_lease("primary").await.unwrap(), None);
    let l2 = b
        .acquire_lease("primary", "node-b", 30_000)
        .await
        .unwrap()
        .expect("released");
    assert!(l2.token > l1.token, "tokens only grow");
    assert!(matches!(
        s.renew_lease(&l1, 1_000).await,
        Err(StoreError::LeaseLost { .. })
    ));
    // Independent names.
    assert!(
        s.acquire_lease("other", "node-a", 30_000)
            .await
            .unwrap()
            .is_some()
    );
}

/// An expired lease is taken over with a larger token, which fences out the old holder.
pub async fn lease_expiry_and_takeover<H: Harness>(h: &H) {
    let s = h.fresh().await;
    let b = h.another_client(&s).await;
    let l1 = s
        .acquire_lease("node-1", "primary", 300)
        .await
        .unwrap()
        .expect("free");
    let deadline = Instant::now() + Duration::from_secs(10);
    let l2 = loop {
        if let Some(l) = b.acquire_lease("node-1", "backup", 30_000).await.unwrap() {
            break l;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(l2.token > l1.token, "a takeover gets a larger token");
    assert!(matches!(
        s.renew_lease(&l1, 300).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(
        s.read_lease("node-1").await.unwrap().map(|l| l.holder),
        Some("backup".into())
    );
    // The old holder's writes are fenced off.
    b.write_session(write("x", "node-1", b"new", None, l2.token))
        .await
        .unwrap();
    assert!(matches!(
        s.write_session(write("x", "node-1", b"old", Some(1), l1.token))
            .await,
        Err(StoreError::StaleFence { .. })
    ));
}

/// A 1 MiB snapshot goes in and comes back whole.
pub async fn large_snapshot<H: Harness>(h: &H) {
    let s = h.fresh().await;
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    s.write_session(write("big", "n1", &big, None, 1))
        .await
        .unwrap();
    let other = h.another_client(&s).await;
    assert_eq!(
        other.read_session("big").await.unwrap().unwrap().snapshot,
        big
    );
}

/// Batch writes: each write is checked and applied on its own, results in order.
pub async fn batch_writes<H: Harness>(h: &H) {
    let s = h.fresh().await;
    s.write_session(write("b1", "n1", b"x", None, 1))
        .await
        .unwrap();
    let r = s
        .write_sessions(&[
            write("b1", "n1", b"y", Some(1), 1),    // ok -> 2
            write("b2", "n1", b"new", None, 1),     // ok -> 1
            write("b1", "n1", b"z", Some(1), 1),    // conflict: the first write made it 2
            write("b3", "n1", b"late", Some(4), 1), // conflict: missing
            write("b1", "n1", b"w", Some(2), 1),    // ok -> 3
        ])
        .await;
    let summary: Vec<String> = r.iter().map(|x| outcome(x.clone())).collect();
    assert_eq!(
        summary,
        [
            "ok 2",
            "ok 1",
            "conflict Some(1) Some(2)",
            "conflict Some(4) None",
            "ok 3"
        ]
    );
    assert_eq!(s.read_session("b1").await.unwrap().unwrap().snapshot, b"w");
    assert!(s.write_sessions(&[]).await.is_empty());
}

/// Corrupt stored bytes are an error, never a panic (when the harness can corrupt them).
pub async fn corrupt_bytes<H: Harness>(h: &H) {
    let s = h.fresh().await;
    s.write_session(write("bad", "n1", b"fine", None, 1))
        .await
        .unwrap();
    if !h.corrupt_session(&s, "bad").await {
        return;
    }
    match s.read_session("bad").await {
        Err(StoreError::Corrupt { key, .. }) => assert!(key.contains("bad"), "{key}"),
        other => panic!("corrupt bytes must be reported as Corrupt, got {other:?}"),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        id: u8,
        node: u8,
        expected: Option<u64>,
        fence: Fence,
    },
    Read {
        id: u8,
    },
    Delete {
        id: u8,
        fence: Fence,
    },
    Move {
        id: u8,
        node: u8,
        fence: Fence,
    },
    List {
        node: u8,
    },
    PutSchedule {
        id: u8,
        session: Option<u8>,
        due: u64,
    },
    Due {
        now: u64,
    },
    Claim {
        id: u8,
        now: u64,
    },
    DeleteSchedule {
        id: u8,
    },
    /// Takes and gives back a node's lease: its token grows, fencing older writers.
    CycleNodeLease {
        node: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, 0..2u8, prop::option::of(1..4u64), 0..3u64)
            .prop_map(|(id, node, expected, fence)| Op::Write { id, node, expected, fence }),
        2 => (0..3u8).prop_map(|id| Op::Read { id }),
        1 => (0..3u8, 0..3u64).prop_map(|(id, fence)| Op::Delete { id, fence }),
        1 => (0..3u8, 0..2u8, 0..3u64).prop_map(|(id, node, fence)| Op::Move { id, node, fence }),
        1 => (0..2u8).prop_map(|node| Op::List { node }),
        2 => (0..4u8, prop::option::of(0..3u8), 0..50u64)
            .prop_map(|(id, session, due)| Op::PutSchedule { id, session, due }),
        1 => (0..60u64).prop_map(|now| Op::Due { now }),
        1 => (0..4u8, 0..60u64).prop_map(|(id, now)| Op::Claim { id, now }),
        1 => (0..4u8).prop_map(|id| Op::DeleteSchedule { id }),
        1 => (0..2u8).prop_map(|node| Op::CycleNodeLease { node }),
    ]
}

fn outcome<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        // Compare the kind of error and its numbers, not backend-specific wording.
        Err(StoreError::VersionConflict {
            expected, found, ..
        }) => format!("conflict {expected:?} {found:?}"),
        Err(StoreError::StaleFence { given, current, .. }) => format!("stale {given} {current}"),
        Err(StoreError::NotFound(_)) => "not found".into(),
        Err(e) => format!("other error: {e}"),
    }
}

async fn apply(s: &dyn SessionStore, op: &Op) -> String {
    let sid = |i: u8| format!("s{i}");
    let node = |i: u8| format!("n{i}");
    match op {
        Op::Write {
            id,
            node: n,
            expected,
            fence,
        } => {
            let body = format!("{op:?}");
            outcome(
                s.write_session(SessionWrite {
                    id: &sid(*id),
                    node: &node(*n),
                    document: "d",
                    snapshot: body.as_bytes(),
                    expected_version: *expected,
                    fence: *fence,
                })
                .await,
            )
        }
        Op::Read { id } => outcome(s.read_session(&sid(*id)).await),
        Op::Delete { id, fence } => outcome(s.delete_session(&sid(*id), *fence).await),
        Op::Move { id, node: n, fence } => {
            outcome(s.move_session(&sid(*id), &node(*n), *fence).await)
        }
        Op::List { node: n } => outcome(s.node_sessions(&node(*n)).await.map(|mut v| {
            v.sort();
            v
        })),
        Op::PutSchedule { id, session, due } => outcome(
            s.put_schedule(&ScheduleEntry {
                id: format!("e{id}"),
                session: session.map(sid),
                due_ms: *due,
                kind: ScheduleKind::StartSession,
                payload: vec![*id],
            })
            .await,
        ),
        Op::Due { now } => outcome(s.due_schedules(*now, 100).await),
        Op::Claim { id, now } => outcome(s.claim_schedule(&format!("e{id}"), "me", *now, 10).await),
        Op::DeleteSchedule { id } => outcome(s.delete_schedule(&format!("e{id}")).await),
        Op::CycleNodeLease { node: n } => {
            let lease = s.acquire_lease(&node_lease(&node(*n)), "me", 60_000).await;
            let token = lease
                .as_ref()
                .ok()
                .and_then(|l| l.as_ref())
                .map(|l| l.token);
            if let Ok(Some(l)) = &lease {
                let _ = s.release_lease(l).await;
            }
            outcome(lease.map(|_| token))
        }
    }
}

/// Model-based check: random operation sequences give the same results on the backend as
/// on [`MemoryStore`], the reference model. Runs its own runtime (call it from a plain
/// `#[test]`).
pub fn model_check<H: Harness>(h: &H, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..Default::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..40), |ops| {
            rt.block_on(async {
                let model = MemoryStore::new();
                let real = h.fresh().await;
                for (i, op) in ops.iter().enumerate() {
                    let want = apply(&model, op).await;
                    let got = apply(&real, op).await;
                    prop_assert_eq!(&got, &want, "operation {} {:?}", i, op);
                }
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("the backend disagrees with the model: {e}"));
}
