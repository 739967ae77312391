#!/usr/bin/env bash
# The quick-start demo: a fleet server (embedded storage in target/fleet-demo/fleet) and an
# edge agent (examples/demo.toml: the simulated plant and the shipped, signed anomaly model)
# enrolled with it over mutual TLS. The agent uploads its outbox to the server and would take
# model rollouts from it. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p edge-agent -p fleet-server
BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug
D=$PWD/target/fleet-demo
mkdir -p "$D"
fleet() { "$BIN/fleet-server" --data-dir "$D/fleet" --by demo "$@"; }
fleet serve --listen 127.0.0.1:8443 2> "$D/fleet-server.log" &
SERVER=$!
AGENT=
stop() {
  [ -n "$AGENT" ] && kill -TERM $AGENT 2>/dev/null && wait $AGENT 2>/dev/null
  kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true
}
trap stop EXIT
trap 'exit 0' INT TERM
for _ in $(seq 1 100); do
  [ -f "$D/fleet/ca/ca.pem" ] && grep -q listening "$D/fleet-server.log" && break
  kill -0 $SERVER 2>/dev/null || { cat "$D/fleet-server.log"; exit 1; }
  sleep 0.1
done
fleet model trust examples/demo/demo.pub.pem > /dev/null
fleet model push examples/demo/pump-anomaly.bundle > /dev/null
TOKEN=unused
[ -f "$D/agent/sync/device.json" ] || TOKEN=$(fleet device enroll --label site=demo 2> /dev/null)
sed -e "s|^data_dir = .*|data_dir = \"$D/agent\"|" examples/demo.toml > "$D/agent.toml"
cat >> "$D/agent.toml" <<TOML

[sync]
server = "https://127.0.0.1:8443"
server_ca = "$D/fleet/ca/ca.pem"
enroll_token = "$TOKEN"
interval = "10s"
TOML
cat <<MSG
fleet server: https://127.0.0.1:8443 (log: $D/fleet-server.log, data: $D/fleet)
agent config: $D/agent.toml; predictions and samples: target/edge-agent-demo/
try, in another terminal:
  $BIN/fleet-server --data-dir $D/fleet device list
  $BIN/fleet-server --data-dir $D/fleet device show <id>     # status, backlog, records stored
  $BIN/fleet-server --data-dir $D/fleet audit
metrics: http://127.0.0.1:9898/metrics (edge_sync_*). Ctrl-C stops both.
MSG
"$BIN/edge-agent" run --config "$D/agent.toml" &
AGENT=$!
wait $AGENT
