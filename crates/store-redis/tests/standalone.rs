//! The Redis backend passes the conformance suite against a real standalone server.

mod support;
use support::RedisHarness;

ors_store::conformance_tests!(RedisHarness::standalone());
