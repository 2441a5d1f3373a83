#!/usr/bin/env bash
# API fuzzing: runs schemathesis against a real `ors serve` (embedded store, loopback,
# a free port) using the server's own OpenAPI document. Fails on a 5xx the document does
# not allow, an undocumented status code or content type, a response that violates its
# schema, or a request that hangs.
# Usage: scripts/api-fuzz.sh PATH-TO-ors
set -euo pipefail
ORS_BIN="$1"
# schemathesis's command: on PATH, or where pip put it (a fresh pyenv has no shim yet).
ST="$(command -v st || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/st")"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/docs" "$work/data"
cp "$here/../examples/hello.scxml" "$work/docs/"
# /request waits for a <response> at most this long.
printf '[sessions]\nrequest_timeout_secs = 1\n' > "$work/ors.toml"
ORS_LOG=error "$ORS_BIN" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
  --documents-dir "$work/docs" --config "$work/ors.toml" > "$work/out" &
pid=$!
for _ in $(seq 100); do
  url=$(sed -n 's/^ors listening on \(http:[^ ]*\).*/\1/p' "$work/out")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "ors serve did not start"; exit 1; }
# From the scratch directory: schemathesis leaves its cache in the current one.
cd "$work"
"$ST" --config-file "$here/schemathesis.toml" run "$url/ors/help" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${ORS_API_FUZZ_EXAMPLES:-50}" --request-timeout 10 --seed 1
