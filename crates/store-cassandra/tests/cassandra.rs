//! The Cassandra backend. No Cassandra server can be installed on the project's
//! machines, so the conformance suite runs only when `ORS_TEST_CASSANDRA_NODES` names a
//! reachable cluster (e.g. `127.0.0.1` or `10.0.0.5;10.0.0.6`); otherwise it says it was
//! skipped. The statements and schema are unit-tested in `src/schema.rs` always, and the
//! connection path is exercised below against a port where nothing listens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ors_store::StoreError;
use ors_store::testkit::{self, Harness};
use ors_store_cassandra::{CassandraConfig, CassandraStore};

const NODES_ENV: &str = "ORS_TEST_CASSANDRA_NODES";

struct Cassandra {
    nodes: String,
    n: AtomicUsize,
}

#[async_trait::async_trait]
impl Harness for Cassandra {
    type Store = CassandraStore;
    async fn fresh(&self) -> CassandraStore {
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        let cfg = CassandraConfig {
            nodes: CassandraConfig::parse_nodes(&self.nodes),
            keyspace: format!("ors_test_{}_{n}", std::process::id()),
            ..Default::default()
        };
        CassandraStore::connect(&cfg).await.unwrap()
    }
    async fn another_client(&self, _store: &CassandraStore) -> CassandraStore {
        // Keyspaces are per namespace; connect to the most recent one again.
        let n = self.n.load(Ordering::SeqCst) - 1;
        let cfg = CassandraConfig {
            nodes: CassandraConfig::parse_nodes(&self.nodes),
            keyspace: format!("ors_test_{}_{n}", std::process::id()),
            create_schema: false,
            ..Default::default()
        };
        CassandraStore::connect(&cfg).await.unwrap()
    }
    async fn corrupt_session(&self, store: &CassandraStore, id: &str) -> bool {
        store.corrupt_session_for_tests(id).await.unwrap();
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_against_a_real_cluster() {
    let Ok(nodes) = std::env::var(NODES_ENV) else {
        eprintln!(
            "SKIPPED: Cassandra conformance suite ({NODES_ENV} is not set; no Cassandra server here)"
        );
        return;
    };
    let h = Cassandra {
        nodes,
        n: AtomicUsize::new(0),
    };
    testkit::documents(&h).await;
    testkit::session_lifecycle(&h).await;
    testkit::fencing(&h).await;
    testkit::node_index(&h).await;
    testkit::node_index_pages(&h).await;
    testkit::create_race(&h).await;
    testkit::update_race(&h).await;
    testkit::schedules(&h).await;
    testkit::schedule_claim_race(&h).await;
    testkit::leases(&h).await;
    testkit::lease_expiry_and_takeover(&h).await;
    testkit::large_snapshot(&h).await;
    testkit::batch_writes(&h).await;
    testkit::corrupt_bytes(&h).await;
}

#[tokio::test]
async fn an_unreachable_cluster_fails_fast_with_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = CassandraConfig {
        nodes: vec!["127.0.0.1".into()],
        port,
        connect_timeout: Duration::from_millis(700),
        ..Default::default()
    };
    let t = Instant::now();
    let err = CassandraStore::connect(&cfg)
        .await
        .err()
        .expect("nothing listens there");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn bad_configuration_is_refused_before_connecting() {
    let cfg = CassandraConfig {
        strategy_class: "NetworkTopologyStrategy".into(),
        strategy_options: "replication_factor:2".into(),
        keyspace: "bad-name".into(),
        ..Default::default()
    };
    assert!(matches!(
        CassandraStore::connect(&cfg).await,
        Err(StoreError::Invalid(_))
    ));
}
