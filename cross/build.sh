#!/usr/bin/env bash
# Builds static edge-agent binaries for ARM gateways:
#   cross/build.sh [aarch64|armv7|all] [--profile NAME] [--features LIST|--no-default-features]
# Output: target/<triple>/<profile>/edge-agent (static, stripped). Default profile:
# `release-arm` (size-optimized, see Cargo.toml). Needs cross/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH=${1:-all}; shift || true
PROFILE=release-arm
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=$2; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
CFG=(--config cross/cargo-config.toml)

build_aarch64() {
  cargo "${CFG[@]}" build -p edge-agent --bin edge-agent --target aarch64-unknown-linux-musl \
    --profile "$PROFILE" "${EXTRA[@]}"
}

build_armv7() {
  # Debian's armhf musl has no libunwind.a; gcc's libgcc_eh.a provides the same symbols.
  local dir
  dir=$(pwd)/target/armv7-libunwind
  mkdir -p "$dir"
  local eh
  eh=$(arm-linux-gnueabihf-gcc -print-file-name=libgcc_eh.a)
  ln -sf "$eh" "$dir/libunwind.a"
  # std is built with the profile too, so it follows its panic strategy.
  local panic=panic_unwind
  [ "$PROFILE" = release-arm-small ] && panic=panic_abort
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C link-self-contained=no -L $dir" \
    cargo "${CFG[@]}" build -Z build-std=std,$panic -p edge-agent --bin edge-agent \
    --target armv7-unknown-linux-musleabihf --profile "$PROFILE" "${EXTRA[@]}"
}

case "$WHICH" in
  aarch64) build_aarch64 ;;
  armv7) build_armv7 ;;
  all) build_aarch64; build_armv7 ;;
  *) echo "usage: cross/build.sh [aarch64|armv7|all] [--profile NAME] [cargo args]" >&2; exit 2 ;;
esac
