#!/usr/bin/env bash
# Regenerates the demo bundle shipped in this folder: records the demo plant healthy (faster
# than real time: six simulated days, so the reference holds several days of load wander),
# featurizes, trains the IsolationForest of examples/ml-workflow, and packs it
# signed with a throwaway demo key (demo.pub.pem is trusted by examples/demo.toml; the private
# key is deleted — a real deployment keeps its signing key off devices and out of git).
# Usage: make-bundle.sh   (EDGE_AGENT and PYTHON as in examples/ml-workflow/run.sh)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
EDGE_AGENT=${EDGE_AGENT:-edge-agent}
PYTHON=${PYTHON:-python3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
sed -e 's/^# time_scale_for_recording$/time_scale = 60/' -e '/^\[\[sources.simulated.faults\]\]/,$d' \
    -e "s|^data_dir = .*|data_dir = \"$W/state\"|" "$HERE/../demo.toml" > "$W/record.toml"
cat >> "$W/record.toml" <<TOML
[[outputs.file]]
name = "rec"
path = "$W/healthy.csv"
format = "csv"
TOML
"$EDGE_AGENT" run --config "$W/record.toml" 2> "$W/record.log" & pid=$!
for _ in $(seq 1 600); do grep -q "simulated plant starting" "$W/record.log" && break; sleep 0.1; done
sleep 60; kill -TERM $pid; wait $pid   # 60 s at 60x: six simulated days (day_length 10m)
"$EDGE_AGENT" featurize --spec "$HERE/../ml-workflow/pack.toml" --input "$W/healthy.csv" --output "$W/features.csv"
"$PYTHON" "$HERE/../ml-workflow/train.py" "$W/features.csv" "$W/model.onnx"
"$EDGE_AGENT" bundle keygen --out "$W/demo"
"$EDGE_AGENT" bundle pack --spec "$HERE/../ml-workflow/pack.toml" --model "$W/model.onnx" --train "$W/healthy.csv" \
  --key "$W/demo.key.pem" --out "$HERE/pump-anomaly.bundle"
cp "$W/demo.pub.pem" "$HERE/demo.pub.pem"
"$EDGE_AGENT" bundle verify "$HERE/pump-anomaly.bundle" --key "$HERE/demo.pub.pem"
