#!/usr/bin/env bash
# The quick-start demo: a fleet server with its operator console (embedded storage in
# target/fleet-demo/fleet) and three edge agents (examples/fleet-demo/*.toml: simulated
# plants, one with a wearing bearing, one with a drifting temperature sensor, one healthy)
# running the shipped, signed anomaly model and syncing with the server over mutual TLS.
# Prints the console URL and a demo login. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p edge-agent -p fleet-server
BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug
D=$PWD/target/fleet-demo
PORT=${FLEET_DEMO_PORT:-8443}
mkdir -p "$D"
fleet() { "$BIN/fleet-server" --data-dir "$D/fleet" --by demo "$@"; }
fleet serve --listen "127.0.0.1:$PORT" --checkin-s 5 --history-every 10s 2> "$D/fleet-server.log" &
SERVER=$!
AGENTS=()
stop() {
  for a in "${AGENTS[@]}"; do kill -TERM "$a" 2>/dev/null || true; done
  for a in "${AGENTS[@]}"; do wait "$a" 2>/dev/null || true; done
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
# A demo login (loopback only). Real deployments: `fleet-server user add NAME --role admin`
# prints a generated password.
DEMO_PASSWORD=demo-console-password
fleet user list | grep -q '^demo ' ||
  fleet user add demo --role admin --password-stdin <<< "$DEMO_PASSWORD" 2> /dev/null

start_agent() { # name, labels...
  local name=$1; shift
  local labels=()
  for l in "$@"; do labels+=(--label "$l"); done
  local data=$D/$name
  mkdir -p "$data"
  [ -f "$data/pump-anomaly.bundle" ] || cp examples/demo/pump-anomaly.bundle "$data/"
  local token=unused
  [ -f "$data/sync/device.json" ] || token=$(fleet device enroll "${labels[@]}" 2> /dev/null)
  cp "examples/fleet-demo/$name.toml" "$D/$name.toml"
  cat >> "$D/$name.toml" <<TOML

[sync]
server = "https://127.0.0.1:$PORT"
server_ca = "$D/fleet/ca/ca.pem"
enroll_token = "$token"
interval = "5s"
TOML
  "$BIN/edge-agent" run --config "$D/$name.toml" 2> "$D/$name.log" &
  AGENTS+=($!)
}
start_agent gateway-north-1 site=north canary
start_agent gateway-north-2 site=north
start_agent gateway-south-1 site=south

cat <<MSG

  fleet console:  https://127.0.0.1:$PORT/console/
  demo login:     demo / $DEMO_PASSWORD
  (the server's certificate is from its own fleet CA, $D/fleet/ca/ca.pem:
   your browser asks you to accept it once)

  three gateways sync every 5 s: gateway-north-1 (bearing wear from 30 s: model alarm and
  feature drift), gateway-north-2 (healthy), gateway-south-1 (temperature sensor drift from 1 min).
  logs: $D/*.log   CLI: $BIN/fleet-server --data-dir $D/fleet device list
  Ctrl-C stops everything.
MSG
wait "${AGENTS[@]}"
