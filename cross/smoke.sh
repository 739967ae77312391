#!/usr/bin/env bash
# Runs the ARM binaries under qemu-user-static: --version, `check` on every example config,
# and a short run on the simulated plant with the shipped demo bundle (real inference), which
# must produce predictions. Also checks the binary is static and reports its size.
#   cross/smoke.sh [aarch64|armv7|all] [--profile NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH=${1:-all}; shift || true
PROFILE=release-arm
[ "${1:-}" = "--profile" ] && PROFILE=$2
TARGET_DIR=${CARGO_TARGET_DIR:-target}

smoke() {
  local triple=$1 qemu=$2
  local bin=$TARGET_DIR/$triple/$PROFILE/edge-agent
  [ -x "$bin" ] || { echo "missing $bin: run cross/build.sh first" >&2; exit 1; }
  echo "== $triple: $(file -b "$bin" | cut -d, -f1-2), $(stat -c %s "$bin") bytes"
  file -b "$bin" | grep -Eq "statically linked|static-pie linked" \
    || { echo "FAIL: $bin is not static: $(file -b "$bin")" >&2; exit 1; }
  # Size guard for the shipped profile: a dependency or feature that grows the binary fails
  # CI instead of slipping through (limits in bytes; measured sizes in BENCHMARKS.md).
  if [ "$PROFILE" = release-arm ]; then
    local size limit
    size=$(stat -c %s "$bin")
    case "$triple" in
      aarch64-*) limit=${EDGE_SIZE_LIMIT_AARCH64:-16000000} ;;
      *) limit=${EDGE_SIZE_LIMIT_ARMV7:-16000000} ;;
    esac
    [ "$size" -le "$limit" ] \
      || { echo "FAIL: $bin is $size bytes, over its $limit-byte limit" >&2; exit 1; }
    echo "size: $size bytes (limit $limit)"
  fi
  "$qemu" "$bin" --version
  # Panic isolation needs a working unwinder (libgcc_eh / LLVM libunwind, per route).
  "$qemu" "$bin" __check-unwind
  for cfg in examples/*.toml; do
    "$qemu" "$bin" check --config "$cfg" >/dev/null \
      || { echo "FAIL: check $cfg under $qemu" >&2; exit 1; }
  done
  echo "check: every example config is valid"
  local work
  work=$(mktemp -d)
  cat > "$work/agent.toml" <<TOML
[agent]
id = "qemu-smoke"
data_dir = "$work/data"
[[sources.simulated]]
name = "plant"
sample_interval = "100ms"
time_scale = 5.0
[bundles]
trusted_keys = ["examples/demo/demo.pub.pem"]
[[models]]
name = "pump1-anomaly"
bundle = "examples/demo/pump-anomaly.bundle"
[[outputs.file]]
name = "ml"
path = "$work/predictions.jsonl"
records = ["predictions"]
TOML
  "$qemu" "$bin" run --config "$work/agent.toml" 2> "$work/agent.log" &
  local pid=$!
  local n=0
  for _ in $(seq 1 60); do
    sleep 1
    n=$(grep -c '"kind":"prediction"' "$work/predictions.jsonl" 2>/dev/null || true)
    [ "${n:-0}" -ge 3 ] && break
  done
  kill -TERM "$pid"; wait "$pid" || { echo "FAIL: unclean exit"; cat "$work/agent.log"; exit 1; }
  if [ "${n:-0}" -lt 3 ]; then
    echo "FAIL: no predictions under $qemu"; cat "$work/agent.log"; exit 1
  fi
  echo "run: $n predictions from the shipped bundle under $qemu; clean exit on SIGTERM"
  head -c 300 "$work/predictions.jsonl"; echo
  rm -rf "$work"
}

case "$WHICH" in
  aarch64) smoke aarch64-unknown-linux-musl qemu-aarch64-static ;;
  armv7) smoke armv7-unknown-linux-musleabihf qemu-arm-static ;;
  all) smoke aarch64-unknown-linux-musl qemu-aarch64-static
       smoke armv7-unknown-linux-musleabihf qemu-arm-static ;;
  *) echo "usage: cross/smoke.sh [aarch64|armv7|all]" >&2; exit 2 ;;
esac
