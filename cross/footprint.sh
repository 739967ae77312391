#!/usr/bin/env bash
# Agent footprint: RSS and CPU of a running agent with 300 tags at 10 Hz over 3 simulated
# sources (60 pumps; the shipped demo model watches one of them), measured from /proc after a
# warm-up. Prints one table row per variant (without and with the model), RSS split into
# anonymous memory (heap, stacks) and file-backed pages (the binary's code touched).
#   cross/footprint.sh [BINARY] [RUNNER]     e.g. cross/footprint.sh target/release/edge-agent
#   cross/footprint.sh "$CARGO_TARGET_DIR/aarch64-unknown-linux-musl/release-arm/edge-agent" qemu-aarch64-static
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/edge-agent}
RUNNER=${2:-}
WARM=${WARM:-25}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
gen() {
  local with_model=$1
  echo "[agent]"; echo "id = \"footprint\""; echo "data_dir = \"$WORK/data\""
  for s in 0 1 2; do
    echo "[[sources.simulated]]"; echo "name = \"plant$s\""; echo "sample_interval = \"100ms\""; echo "seed = $((s + 1))"
    for a in $(seq 0 19); do
      echo "[[sources.simulated.assets]]"
      # The model reads the tags of plant0's first pump ("pump1.*", as the demo bundle expects).
      if [ "$s$a" = 00 ]; then echo 'name = "pump1"'; else echo "name = \"p${s}a$a\""; fi
      echo 'kind = "pump"'
    done
  done
  if [ "$with_model" = 1 ]; then
    echo "[bundles]"; echo "trusted_keys = [\"$PWD/examples/demo/demo.pub.pem\"]"
    echo "[[models]]"; echo 'name = "pump1-anomaly"'; echo "bundle = \"$PWD/examples/demo/pump-anomaly.bundle\""
  fi
}
echo "| variant | tags | RSS MB | anonymous MB | file-backed MB | peak RSS MB | CPU % (one core) |"
echo "|---|---|---|---|---|---|---|"
for m in 0 1; do
  gen $m > "$WORK/agent.toml"
  $RUNNER "$BIN" run --config "$WORK/agent.toml" 2> "$WORK/agent.log" &
  pid=$!
  sleep "$WARM"
  # Under qemu-user the measured process is qemu running the binary.
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  anon=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status")
  file=$(awk '/RssFile/ {print $2}' "/proc/$pid/status")
  peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat"); sleep 10; t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill -TERM "$pid"; wait "$pid" || true
  tags=$(grep -o 'tags=[0-9]*' "$WORK/agent.log" | cut -d= -f2 | awk '{s += $1} END {print s}')
  label="no model"; [ $m = 1 ] && label="+ demo model (IsolationForest)"
  awk -v l="$label" -v t="$tags" -v r="$rss" -v a="$anon" -v f="$file" -v p="$peak" -v c="$((t1 - t0))" \
    'BEGIN {printf "| %s | %s | %.1f | %.1f | %.1f | %.1f | %.2f |\n", l, t, r / 1024, a / 1024, f / 1024, p / 1024, c / 10}' 
done
