#!/usr/bin/env bash
# The project's test command (README "Quick start", .ci/run): installs the independent test
# peers if needed, starts a throwaway PostgreSQL server, then runs every test of the
# workspace — unit, interop and end-to-end — and runs the fleet server's own tests and the
# fleet sync and console end-to-end suites a second time on PostgreSQL (the first run uses
# the embedded SQLite default). Arguments go to the first `cargo test` (e.g. a test name).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/peers/setup.sh
export EDGE_PEERS_DIR=${EDGE_PEERS_DIR:-$PWD/tests/.peers}
PGDIR=$(mktemp -d /tmp/fleet-test-pg.XXXXXX)
cleanup() { tests/peers/postgres.sh stop "$PGDIR"; rm -rf "$PGDIR"; }
trap cleanup EXIT
FLEET_TEST_POSTGRES=$(tests/peers/postgres.sh start "$PGDIR")
export FLEET_TEST_POSTGRES
echo "test PostgreSQL: $FLEET_TEST_POSTGRES"
# The end-to-end tests drive the real binaries: two variants of the agent for the agent
# update test first (they overwrite target/debug/edge-agent), then the normal build.
tests/agent-variants.sh
cargo build --workspace --bins
status=0
cargo test --workspace --no-fail-fast "$@" || status=1
if [ $# -eq 0 ]; then
  echo "--- again on PostgreSQL: fleet-server's tests, fleet sync and console end-to-end"
  FLEET_TEST_BACKEND=postgres cargo test -p fleet-server --no-fail-fast || status=1
  FLEET_TEST_BACKEND=postgres cargo test -p interop-tests --no-fail-fast \
    --test fleet_sync --test console || status=1
fi
exit $status
