#!/usr/bin/env bash
# Builds static edge-agent binaries for ARM gateways:
#   cross/build.sh [aarch64|armv7|x86_64|all] [--profile NAME] [--features LIST|--no-default-features]
# (default features here: opcua,modbus,mqtt — the gateway binary, without `authoring`)
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
# Gateway builds: every source, no model authoring (`bundle keygen|pack`, the `authoring`
# feature: signing keys never belong on a gateway). Any --features/--no-default-features
# given replaces this.
if ! printf '%s\n' "${EXTRA[@]}" | grep -q -- '--features\|--no-default-features'; then
  EXTRA+=(--no-default-features --features opcua,modbus,mqtt)
fi

# Debian's musl has no libunwind.a; gcc's libgcc_eh.a provides the same symbols. Used when
# std is built here: libunwind_dir NAME GCC [C_SHIM] prints a directory holding libunwind.a,
# either gcc's archive itself or, with C_SHIM, its objects plus that file compiled by the musl
# wrapper (aarch64, see build_aarch64_std_from_source).
libunwind_dir() {
  local dir=$(pwd)/target/$1-libunwind eh
  eh=$($2 -print-file-name=libgcc_eh.a)
  rm -rf "$dir" && mkdir -p "$dir"
  if [ -z "${3:-}" ]; then
    ln -s "$eh" "$dir/libunwind.a"
  else
    mkdir "$dir/obj"
    (cd "$dir/obj" && "${2%gcc}ar" x "$eh")
    "${2/linux-gnu/linux-musl}" -O2 -fPIC -c "$3" -o "$dir/obj/shim.o"
    "${2%gcc}ar" rcs "$dir/libunwind.a" "$dir"/obj/*.o
  fi
  echo "$dir"
}

# std is built with the profile when it is built here, so it follows its panic strategy.
std_panic() { if [ "$PROFILE" = release-arm-small ]; then echo panic_abort; else echo panic_unwind; fi; }
# std features when it is built here: cargo's defaults, or EDGE_STD_FEATURES (a comma list for
# -Zbuild-std-features).
STD_FEATURES=()
[ -n "${EDGE_STD_FEATURES:-}" ] && STD_FEATURES=("-Zbuild-std-features=$EDGE_STD_FEATURES")

# build_std TRIPLE LIBUNWIND_DIR [cargo args]: the agent with std built here from rust-src,
# linked against Debian's musl (not rustc's self-contained copy).
build_std() {
  local triple=$1 dir=$2
  shift 2
  # RUSTFLAGS replaces the config's target rustflags: -z norelro again (cargo-config.toml).
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C link-self-contained=no -L $dir -C link-arg=-Wl,-z,norelro" \
    cargo "${CFG[@]}" "$@" build -Z build-std=std,"$(std_panic)" "${STD_FEATURES[@]}" \
    -p edge-agent --bin edge-agent --target "$triple" --profile "$PROFILE" "${EXTRA[@]}"
}

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
  dir=$(libunwind_dir aarch64 aarch64-linux-gnu-gcc cross/dl_find_object.c)
  build_std aarch64-unknown-linux-musl "$dir" \
    --config 'target.aarch64-unknown-linux-musl.linker="aarch64-linux-musl-gcc"'
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
  build_std armv7-unknown-linux-musleabihf "$dir"
}

case "$WHICH" in
  aarch64) build_aarch64 ;;
  armv7) build_armv7 ;;
  x86_64) build_x86_64 ;;
  all) build_aarch64; build_armv7 ;;
  *) echo "usage: cross/build.sh [aarch64|armv7|x86_64|all] [--profile NAME] [cargo args]" >&2; exit 2 ;;
esac
