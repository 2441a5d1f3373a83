#!/usr/bin/env bash
# Runs an ors cluster on this machine: two nodes, each a primary and a backup, on one
# redis-server, behind HAProxy (examples/haproxy/haproxy.cfg). Ctrl-C stops everything.
#
#   clients (start sessions)  http://127.0.0.1:8080
#   node1's external URL      http://127.0.0.1:8081   (processes 127.0.0.1:9011, :9012)
#   node2's external URL      http://127.0.0.1:8082   (processes 127.0.0.1:9021, :9022)
#   redis-server              127.0.0.1:6390
#
# Needs redis-server and haproxy (Debian: apt-get install redis-server haproxy).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p ors
ORS=target/release/ors
DIR=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT INT TERM

redis-server --port 6390 --bind 127.0.0.1 --save '' --dir "$DIR" >"$DIR/redis.log" 2>&1 &
PIDS+=($!)
until redis-cli -p 6390 ping >/dev/null 2>&1; do sleep 0.1; done

start() { # node instance port node-lb-port
  ORS_LOG=warn "$ORS" serve --listen "127.0.0.1:$3" --store redis --redis-url redis://127.0.0.1:6390 \
    --node-id "$1" --instance "$2" --external-url "http://127.0.0.1:$4" \
    --documents-dir examples --data-dir "$DIR/$1$2" >/dev/null &
  PIDS+=($!)
}
start node1 a 9011 8081
start node1 b 9012 8081
start node2 a 9021 8082
start node2 b 9022 8082

ORS_LB=127.0.0.1:8080 ORS_NODE1_LB=127.0.0.1:8081 ORS_NODE2_LB=127.0.0.1:8082 \
ORS_NODE1A=127.0.0.1:9011 ORS_NODE1B=127.0.0.1:9012 \
ORS_NODE2A=127.0.0.1:9021 ORS_NODE2B=127.0.0.1:9022 \
  haproxy -db -f examples/haproxy/haproxy.cfg &
PIDS+=($!)

echo "cluster up: http://127.0.0.1:8080 (Ctrl-C stops it)"
echo "  primaries: $(curl -s 127.0.0.1:9011/heartbeat) $(curl -s 127.0.0.1:9021/heartbeat)"
wait
