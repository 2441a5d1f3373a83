#!/usr/bin/env bash
# The differential run: random statecharts through our engine, SCION 4.3.27 and Qt SCXML
# 6.4.2, failing on any disagreement that no known peer bug explains (see
# docs/differential.md). First checks the hand-adjudicated cases in
# tests/differential/cases/: our engine gives each its Appendix D trace and each peer still
# shows its known bug.
#
#   scripts/differential.sh [COUNT] [SEED]      (defaults: 300 documents from seed 1)
#
# Installs what it needs on a fresh Debian machine: qt6-scxml-dev (the driver links Qt
# SCXML; its ECMAScript datamodel runs on Qt's QJSEngine, which comes with it) and g++
# with apt, and SCION with npm into .differential/ (git ignores it).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-300}"
SEED="${2:-1}"
SCION_VERSION="4.3.27"
TARGET="${CARGO_TARGET_DIR:-target}"

if ! pkg-config --exists Qt6Scxml 2>/dev/null || ! command -v g++ >/dev/null; then
  echo "== installing Qt SCXML 6 (qt6-scxml-dev) and g++ with apt"
  apt-get update -qq && apt-get install -y -qq qt6-scxml-dev g++ pkg-config >/dev/null
fi
if [ ! -f .differential/node_modules/@scion-scxml/scxml/package.json ]; then
  echo "== installing @scion-scxml/scxml@$SCION_VERSION with npm into .differential/"
  if ! command -v npm >/dev/null; then
    apt-get update -qq && apt-get install -y -qq npm >/dev/null
  fi
  mkdir -p .differential
  (cd .differential && npm install --silent --no-save "@scion-scxml/scxml@$SCION_VERSION" >/dev/null)
fi

QT_DRIVER="$TARGET/differential/qt-driver"
SOURCE=tests/differential/peers/qt/driver.cpp
if [ ! -x "$QT_DRIVER" ] || [ "$SOURCE" -nt "$QT_DRIVER" ]; then
  echo "== building the Qt SCXML driver"
  mkdir -p "$TARGET/differential"
  # shellcheck disable=SC2046 # pkg-config prints several flags
  g++ -std=c++17 -O1 -fPIC "$SOURCE" -o "$QT_DRIVER" $(pkg-config --cflags --libs Qt6Scxml Qt6Core)
fi

cargo build --quiet -p ors-differential
HARNESS="$TARGET/debug/ors-differential"
PEERS=(--scion "node tests/differential/peers/scion.js" --qt "$QT_DRIVER")
export NODE_PATH="$PWD/.differential/node_modules"
echo "== known peer bugs: the adjudicated cases"
"$HARNESS" --cases tests/differential/cases "${PEERS[@]}"
echo "== $COUNT random statecharts from seed $SEED"
"$HARNESS" --count "$COUNT" --seed "$SEED" --out "$TARGET/differential" "${PEERS[@]}"
