#!/usr/bin/env bash
# The long fault runs (RELIABILITY.md): a fleet server outage and a soak of the whole loop
# (agent + Mosquitto + fleet server + model updates) through the user-space netem, with the
# release binaries. The test suite runs the same tests for 20 s / 60 s.
#
#   tests/soak.sh [OUTAGE_SECS] [SOAK_SECS]     # default: 3600 3600
#
# Samples of RSS, file descriptors and disk use: target/soak/*.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
outage=${1:-3600}
soak=${2:-3600}
tests/peers/setup.sh
export EDGE_PEERS_DIR=${EDGE_PEERS_DIR:-$PWD/tests/.peers}
cargo build --release --workspace --bins
EDGE_OUTAGE_SECS=$outage EDGE_SOAK_SECS=$soak cargo test --release -p interop-tests --test faults \
  -- --nocapture --test-threads 2
