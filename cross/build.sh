#!/usr/bin/env bash
# Builds static edge-agent binaries for ARM gateways:
#   cross/build.sh [aarch64|armv7|x86_64|all] [--profile NAME] [--features LIST|--no-default-features]
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

# Debian's musl has no libunwind.a; gcc's libgcc_eh.a provides the same symbols. Used when
# std is built here (armv7).
libunwind_dir() {
  local dir=$(pwd)/target/$1-libunwind
  mkdir -p "$dir"
  ln -sf "$($2 -print-file-name=libgcc_eh.a)" "$dir/libunwind.a"
  echo "$dir"
}

# std is built with the profile when it is built here, so it follows its panic strategy.
std_panic() { if [ "$PROFILE" = release-arm-small ]; then echo panic_abort; else echo panic_unwind; fi; }
# std features when it is built here: cargo's defaults, or EDGE_STD_FEATURES (a comma list for
# -Zbuild-std-features).
STD_FEATURES=()
[ -n "${EDGE_STD_FEATURES:-}" ] && STD_FEATURES=("-Zbuild-std-features=$EDGE_STD_FEATURES")

# Is rustup's prebuilt std for this target installed?
have_prebuilt_std() {
  compgen -G "$(rustc --print target-libdir --target "$1")/libstd-*.rlib" >/dev/null
}

build_aarch64() {
  if [ "${EDGE_AARCH64_STD:-}" = source ] || ! have_prebuilt_std aarch64-unknown-linux-musl; then
    echo "cross/build.sh: building std for aarch64 from rust-src (fallback route)" >&2
    build_aarch64_std_from_source
    return
  fi
  # rustup's prebuilt std for aarch64-unknown-linux-musl, linked with its own musl.
  cargo "${CFG[@]}" build -p edge-agent --bin edge-agent --target aarch64-unknown-linux-musl \
    --profile "$PROFILE" "${EXTRA[@]}"
}

# Fallback when rustup's prebuilt aarch64 std cannot be fetched (or EDGE_AARCH64_STD=source):
# std is built here from rust-src, as for armv7, and linked against Debian's musl by
# aarch64-linux-musl-gcc. gcc's libgcc_eh.a stands in for libunwind.a; Debian builds it for
# glibc's _dl_find_object, which musl lacks, so cross/dl_find_object.c (an answer from musl's
# dl_iterate_phdr) goes into the same archive.
build_aarch64_std_from_source() {
  local dir
  dir=$(pwd)/target/aarch64-libunwind
  rm -rf "$dir" && mkdir -p "$dir/obj"
  (cd "$dir/obj" && aarch64-linux-gnu-ar x "$(aarch64-linux-gnu-gcc -print-file-name=libgcc_eh.a)")
  aarch64-linux-musl-gcc -O2 -fPIC -c cross/dl_find_object.c -o "$dir/obj/dl_find_object.o"
  aarch64-linux-gnu-ar rcs "$dir/libunwind.a" "$dir"/obj/*.o
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C link-self-contained=no -L $dir" \
    cargo "${CFG[@]}" --config 'target.aarch64-unknown-linux-musl.linker="aarch64-linux-musl-gcc"' \
    build -Z build-std=std,"$(std_panic)" "${STD_FEATURES[@]}" -p edge-agent --bin edge-agent \
    --target aarch64-unknown-linux-musl --profile "$PROFILE" "${EXTRA[@]}"
}

# The same static build for x86_64 gateways, and to measure the ARM build's footprint natively
# (same profile, same allocator, no emulator in the way).
build_x86_64() {
  cargo "${CFG[@]}" build -p edge-agent --bin edge-agent --target x86_64-unknown-linux-musl \
    --profile "$PROFILE" "${EXTRA[@]}"
}

build_armv7() {
  local dir
  dir=$(libunwind_dir armv7 arm-linux-gnueabihf-gcc)
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C link-self-contained=no -L $dir" \
    cargo "${CFG[@]}" build -Z build-std=std,"$(std_panic)" "${STD_FEATURES[@]}" -p edge-agent --bin edge-agent \
    --target armv7-unknown-linux-musleabihf --profile "$PROFILE" "${EXTRA[@]}"
}

case "$WHICH" in
  aarch64) build_aarch64 ;;
  armv7) build_armv7 ;;
  x86_64) build_x86_64 ;;
  all) build_aarch64; build_armv7 ;;
  *) echo "usage: cross/build.sh [aarch64|armv7|x86_64|all] [--profile NAME] [cargo args]" >&2; exit 2 ;;
esac
