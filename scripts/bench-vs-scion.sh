#!/usr/bin/env bash
# Our engine and SCION (@scion-scxml/scxml 4.3.27, on Node's V8) on the same document, side
# by side in one run: events per CPU-second through one session, `runs` times each,
# alternating, then the ratio of the medians.
#
#   scripts/bench-vs-scion.sh [FILE] [EVENT] [COUNT] [RUNS]
#
# Defaults: examples/pingpong.scxml, tick, 100000, 3. Installs SCION with npm into
# .bench/ (git ignores it) and builds `ors` in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
FILE="${1:-examples/pingpong.scxml}"
EVENT="${2:-tick}"
COUNT="${3:-100000}"
RUNS="${4:-3}"
SCION_VERSION="4.3.27"

if [ ! -f .bench/node_modules/@scion-scxml/scxml/package.json ]; then
  echo "== installing @scion-scxml/scxml@$SCION_VERSION with npm into .bench/" >&2
  mkdir -p .bench
  (cd .bench && npm install --silent --no-save "@scion-scxml/scxml@$SCION_VERSION" >/dev/null)
fi
cargo build --release --quiet -p ors
ORS="${CARGO_TARGET_DIR:-target}/release/ors"

ours=()
theirs=()
for _ in $(seq "$RUNS"); do
  o=$("$ORS" bench "$FILE" --event "$EVENT" --count "$COUNT" --sessions 0)
  t=$(NODE_PATH=.bench/node_modules node scripts/scion/bench.js "$FILE" "$EVENT" "$COUNT")
  echo "ors:   $o"
  echo "scion: $t"
  ours+=("$(echo "$o" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events_per_cpu_second"])')")
  theirs+=("$(echo "$t" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events_per_cpu_second"])')")
done
python3 - "${ours[*]}" "${theirs[*]}" <<'PY'
import statistics, sys
ours = [float(x) for x in sys.argv[1].split()]
theirs = [float(x) for x in sys.argv[2].split()]
o, t = statistics.median(ours), statistics.median(theirs)
print(f"median events per CPU-second: ors {o:,.0f}, SCION {t:,.0f}: {o / t:.2f}x")
PY
