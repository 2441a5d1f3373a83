#!/usr/bin/env bash
# Plays COUNT calls into a running cluster: each arrives (POST /interactions), then, after
# HOLD seconds, is released (an event of the same interaction, which reaches its session
# on whichever node runs it). Any node's URL will do; TOKEN if the API needs one.
#
#   examples/interactions/produce.sh [URL] [COUNT] [HOLD]
#
# The same with redis-cli, straight into the stream:
#   redis-cli XADD ors:interactions '*' id call-1 kind new src call.scxml data '{"ani":"5550100"}'
#   redis-cli XADD ors:interactions '*' id call-1 kind event event released data '{}'
set -euo pipefail
URL="${1:-http://127.0.0.1:8080}"
COUNT="${2:-10}"
HOLD="${3:-2}"
AUTH=()
if [ -n "${TOKEN:-}" ]; then AUTH=(-H "Authorization: Bearer $TOKEN"); fi
post() { curl -sf "${AUTH[@]}" -H 'content-type: application/json' -d "$1" "$URL/interactions" >/dev/null; }
run="$(date +%s)"
for i in $(seq 1 "$COUNT"); do
  post "{\"id\":\"call-$run-$i\",\"src\":\"call.scxml\",\"data\":{\"ani\":\"555-$i\"}}"
done
echo "$COUNT calls arrived; releasing them in $HOLD s"
sleep "$HOLD"
for i in $(seq 1 "$COUNT"); do
  curl -sf "${AUTH[@]}" "$URL/interactions/call-$run-$i" | sed 's/^/  /'
  echo
  post "{\"id\":\"call-$run-$i\",\"kind\":\"event\",\"event\":\"released\"}"
done
echo "released"
