#!/usr/bin/env bash
# Installs what the ARM builds need on a fresh Debian 12 (amd64), idempotently:
#   - the C cross compilers and musl for arm64 and armhf (for ring, zstd and tract's kernels):
#     gcc-aarch64-linux-gnu + musl-dev:arm64 give `aarch64-linux-musl-gcc`,
#     gcc-arm-linux-gnueabihf + musl-dev:armhf give `arm-linux-musleabihf-gcc`;
#   - qemu-user-static to run the ARM binaries here;
#   - the prebuilt Rust std for aarch64-unknown-linux-musl (and x86_64-unknown-linux-musl,
#     for footprint measurements), and rust-src for armv7, whose musl std is not distributed
#     prebuilt and is built with `-Z build-std` (and for aarch64 too when its prebuilt std
#     cannot be fetched: build.sh's fallback route).
# Needs root (or sudo) for apt.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
T0=$(date +%s)
step() { echo "[cross +$(( $(date +%s) - T0 ))s] $*"; }

have_all() {
  command -v aarch64-linux-musl-gcc >/dev/null && command -v arm-linux-musleabihf-gcc >/dev/null \
    && command -v qemu-aarch64-static >/dev/null && command -v qemu-arm-static >/dev/null
}
if ! have_all; then
  step "apt: cross compilers, musl for arm64/armhf, qemu-user-static"
  for a in arm64 armhf; do
    dpkg --print-foreign-architectures | grep -qx "$a" || $SUDO dpkg --add-architecture "$a"
  done
  # A mirror that lacks the foreign architectures makes `update` report errors while the
  # main archive still serves them: retry once, then go on with what was fetched.
  $SUDO apt-get update -qq || { sleep 5; $SUDO apt-get update -qq; } \
    || echo "WARN: apt-get update had errors; trying with the lists it fetched"
  $SUDO apt-get install -y -qq --no-install-recommends \
    gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross \
    musl-dev:arm64 musl-dev:armhf musl-tools qemu-user-static file binutils-aarch64-linux-gnu \
    binutils-arm-linux-gnueabihf >/dev/null
fi

step "rust targets"
# Without it, cross/build.sh builds std for aarch64 from rust-src (its fallback route).
rustup target list --installed | grep -qx aarch64-unknown-linux-musl \
  || rustup target add aarch64-unknown-linux-musl \
  || echo "WARN: no prebuilt std for aarch64-unknown-linux-musl; build.sh will build it from rust-src"
# Only for `cross/build.sh x86_64` (footprint measurements): not fatal.
rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl || echo "WARN: no x86_64-unknown-linux-musl std"
rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src

step "ready: $(aarch64-linux-musl-gcc --version | head -1); $(arm-linux-musleabihf-gcc --version | head -1)"
