//! The Redis backend passes the conformance suite against a real 3-master Redis Cluster.

mod support;
use support::RedisHarness;

ors_store::conformance_tests!(RedisHarness::cluster());
