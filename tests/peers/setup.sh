#!/usr/bin/env bash
# Installs the independent peers the interop tests run against, into $EDGE_PEERS_DIR
# (default: tests/.peers). Idempotent; needs root for apt on a fresh Debian 12.
#   apt:  mosquitto (MQTT broker), socat (serial pty pairs for Modbus RTU), openssl (test certs),
#         systemd (systemd-analyze verify/security on the unit files), adduser + binutils
#         (the Debian package install test)
#   pip:  asyncua (OPC-UA server), pymodbus (Modbus TCP/RTU server), paho-mqtt, protobuf +
#         pysparkplug's generated Sparkplug B schema (the independent Sparkplug decoder/encoder,
#         tests/peers/spb_decode.py), and the ML reference stack: numpy, onnx, onnxruntime,
#         scikit-learn, skl2onnx
#   data: pvanalytics 0.2.2 wheel data (NREL PV series with labelled faults) for the drift test
#   console: Debian's chromium (apt) and, from npm, playwright-core + axe-core (tests/console,
#         pinned by its package-lock.json) for the browser test of the fleet console
#   sparkplug-js: Eclipse Tahu's JavaScript decoder from npm (sparkplug-payload, tests/sparkplug-js),
#         the decoder behind Node-RED's Sparkplug nodes
#   sqlite3 (the SQLite client: tests read and alter what the fleet server stored)
#   scale-out: postgresql (a throwaway server per test run, tests/peers/postgres.sh) and
#         haproxy (TCP load balancer in front of fleet-server replicas)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${EDGE_PEERS_DIR:-$HERE/../.peers}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
T0=$(date +%s)
step() { echo "[peers +$(( $(date +%s) - T0 ))s] $*"; }

need_apt=()
for bin in mosquitto:mosquitto mosquitto_pub:mosquitto-clients socat:socat openssl:openssl systemd-analyze:systemd adduser:adduser strip:binutils dpkg-deb:dpkg chromium:chromium node:nodejs npm:npm sqlite3:sqlite3; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || need_apt+=("${bin##*:}")
done
# PostgreSQL (the fleet server's scale-out backend; tests run their own throwaway server,
# tests/peers/postgres.sh) and HAProxy (the load balancer in front of fleet-server replicas).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "apt install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || { sleep 5; $SUDO apt-get update -qq; } || echo "WARN: apt-get update had errors; trying cached lists"
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The distribution's broker service is not ours: tests start their own brokers on free ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  systemctl stop mosquitto 2>/dev/null || true
fi

step "python venv"
[ -x "$DIR/venv/bin/python" ] || python3 -m venv "$DIR/venv"
PIP_PKGS=(asyncua==2.1.0 'pymodbus[serial]==3.16.1' paho-mqtt==2.2.0 protobuf==7.36.2
  numpy==2.4.6 onnx==1.23.2 onnxruntime==1.32.0 scikit-learn==1.9.1 skl2onnx==1.20.0)
if ! "$DIR/venv/bin/python" -c "import asyncua, pymodbus, paho.mqtt, numpy, onnx, onnxruntime, sklearn, skl2onnx" 2>/dev/null; then
  "$DIR/venv/bin/pip" install -q --disable-pip-version-check "${PIP_PKGS[@]}"
fi
# Only pysparkplug's generated sparkplug_b_pb2.py is used (its own deps pin paho-mqtt<2).
if ! "$DIR/venv/bin/python" -c "import importlib.util as u, google.protobuf; assert u.find_spec('pysparkplug')" 2>/dev/null; then
  "$DIR/venv/bin/pip" install -q --disable-pip-version-check --no-deps pysparkplug==0.6.1
fi

# Real sensor data with labelled faults (NREL PV series shipped inside the pvanalytics wheel):
# the drift end-to-end test replays one through the agent.
step "pvanalytics data"
if [ ! -f "$DIR/data/pvanalytics/pvlib_data_shift.csv" ]; then
  rm -rf "$DIR/data/whl" && mkdir -p "$DIR/data"
  "$DIR/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$DIR/data/whl" pvanalytics==0.2.2
  "$DIR/venv/bin/python" - "$DIR/data" <<'PY'
import glob, os, sys, zipfile
out = os.path.join(sys.argv[1], "pvanalytics")
os.makedirs(out, exist_ok=True)
z = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], "whl", "pvanalytics-*.whl"))[0])
for n in z.namelist():
    if n.startswith("pvanalytics/data/") and n.endswith(".csv"):
        with open(os.path.join(out, os.path.basename(n)), "wb") as f:
            f.write(z.read(n))
PY
  rm -rf "$DIR/data/whl"
fi

step "console browser test (npm ci in tests/console)"
CONSOLE=$HERE/../console
if [ ! -f "$CONSOLE/node_modules/.package-lock.json" ] ||
   ! cmp -s "$CONSOLE/package-lock.json" "$CONSOLE/node_modules/.installed-lock.json"; then
  (cd "$CONSOLE" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$CONSOLE/package-lock.json" "$CONSOLE/node_modules/.installed-lock.json"
fi

step "Eclipse Tahu's JavaScript Sparkplug decoder (npm ci in tests/sparkplug-js)"
SPBJS=$HERE/../sparkplug-js
if [ ! -f "$SPBJS/node_modules/.package-lock.json" ] ||
   ! cmp -s "$SPBJS/package-lock.json" "$SPBJS/node_modules/.installed-lock.json"; then
  (cd "$SPBJS" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$SPBJS/package-lock.json" "$SPBJS/node_modules/.installed-lock.json"
fi

step "test certificates"
if [ ! -f "$DIR/certs/ca.crt" ]; then
  mkdir -p "$DIR/certs"
  (cd "$DIR/certs" && sh "$HERE/gen-certs.sh" .)
fi
chmod 755 "$DIR" "$DIR/certs"

step "ready in $DIR"
