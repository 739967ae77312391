#!/usr/bin/env bash
# The project's test command (README "Quick start", .ci/run): installs the independent test
# peers if needed, then runs every test of the workspace — unit, interop and end-to-end.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/peers/setup.sh
export EDGE_PEERS_DIR=${EDGE_PEERS_DIR:-$PWD/tests/.peers}
# The end-to-end tests drive the real binaries.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
