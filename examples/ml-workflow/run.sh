#!/usr/bin/env bash
# The ML engineer's loop, end to end, with the simulated plant standing in for a real one:
#   record (healthy) -> featurize -> train (Python) -> sign + pack -> verify -> run on a
#   plant whose pump1 bearing starts wearing -> predictions with alarms.
# Usage: run.sh WORKDIR   (EDGE_AGENT: the binary, PYTHON: a python with scikit-learn+skl2onnx)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=${1:?work dir}
EDGE_AGENT=${EDGE_AGENT:-edge-agent}
PYTHON=${PYTHON:-python3}
mkdir -p "$W"
cd "$W"

plant() {  # plant NAME SECONDS FAULTS OUTPUTS
  cat > "$1.toml" <<TOML
[agent]
id = "workflow"
data_dir = "$W/state"
[[sources.simulated]]
name = "plant"
seed = 5
time_scale = 30            # half an hour of plant time per minute
[[sources.simulated.assets]]
name = "pump1"
$3
$4
TOML
  "$EDGE_AGENT" run --config "$1.toml" 2> "$1.log" & local pid=$!
  # Run for $2 seconds of plant time once the plant is up (loading a model takes a moment).
  for _ in $(seq 1 600); do grep -q "simulated plant starting" "$1.log" && break; sleep 0.1; done
  sleep "$2"; kill -TERM $pid; wait $pid
}

echo "== 1. record a healthy plant"
plant record 10 "" "[[outputs.file]]
name = \"rec\"
path = \"$W/healthy.csv\"
format = \"csv\""
echo "   $(($(wc -l < healthy.csv) - 1)) samples"

echo "== 2. featurize with the device's own code"
"$EDGE_AGENT" featurize --spec "$HERE/pack.toml" --input healthy.csv --output features.csv

echo "== 3. train"
"$PYTHON" "$HERE/train.py" features.csv model.onnx

echo "== 4. sign and pack"
[ -f ml.key.pem ] || "$EDGE_AGENT" bundle keygen --out ml
"$EDGE_AGENT" bundle pack --spec "$HERE/pack.toml" --model model.onnx --train healthy.csv --key ml.key.pem --out pump.bundle
"$EDGE_AGENT" bundle inspect pump.bundle

echo "== 5. verify as a device would"
"$EDGE_AGENT" bundle verify pump.bundle --key ml.pub.pem

echo "== 6. run on a plant whose bearing wears out"
plant serve 10 "[[sources.simulated.faults]]
asset = \"pump1\"
kind = \"bearing_wear\"
start = \"2m\"
ramp = \"2m\"
magnitude = 4.0" "[bundles]
trusted_keys = [\"$W/ml.pub.pem\"]
[[models]]
name = \"pump1\"
bundle = \"$W/pump.bundle\"
[[outputs.file]]
name = \"predictions\"
path = \"$W/predictions.jsonl\"
records = [\"predictions\"]"
echo "   $(wc -l < predictions.jsonl) predictions, $(grep -c '"alarm":true' predictions.jsonl || true) alarms"
