#!/usr/bin/env bash
# Builds the two extra edge-agent binaries the agent software update test
# (tests/tests/agent_update.rs) rolls out: v2 differs from the normal build only in its
# version string, v3 also exits at the start of `run` (EDGE_AGENT_FAULT_EXIT_AT_START, a
# build-time switch that is unset in every real build). Only the edge-agent binary crate
# is rebuilt for each (main.rs reads both variables); tests/run.sh builds the normal
# binaries again afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
out="$target/debug/agent-variants"
mkdir -p "$out"
EDGE_AGENT_VERSION=2.0.0-update-test cargo build -p edge-agent --bin edge-agent
cp "$target/debug/edge-agent" "$out/edge-agent-v2.tmp" && mv "$out/edge-agent-v2.tmp" "$out/edge-agent-v2"
EDGE_AGENT_VERSION=3.0.0-update-test EDGE_AGENT_FAULT_EXIT_AT_START=1 \
  cargo build -p edge-agent --bin edge-agent
cp "$target/debug/edge-agent" "$out/edge-agent-v3.tmp" && mv "$out/edge-agent-v3.tmp" "$out/edge-agent-v3"
"$out/edge-agent-v2" --version
"$out/edge-agent-v3" --version
