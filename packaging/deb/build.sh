#!/usr/bin/env bash
# Builds the Debian package of edge-agent for one architecture from an already built binary:
#   packaging/deb/build.sh amd64|arm64|armhf BINARY [OUTDIR]
# (amd64: target/release/edge-agent; arm64/armhf: the static binaries of cross/build.sh.)
# The package installs the binary, the hardened systemd unit, a starting config in
# /etc/edge-agent (a conffile: upgrades keep local edits), the examples and README, and a
# system user `edge-agent` (in group dialout for Modbus RTU). State in /var/lib/edge-agent
# (outbox, bundles, keys) survives upgrades and removal; only `purge` deletes it.
set -euo pipefail
ARCH=${1:?arch: amd64|arm64|armhf}
BIN=${2:?path to the edge-agent binary}
OUT=${3:-$(pwd)/target/deb}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
VERSION=${DEB_VERSION:-$VERSION}
STAGE=$(mktemp -d)
chmod 0755 "$STAGE"
trap 'rm -rf "$STAGE"' EXIT

install -D -m 0755 "$BIN" "$STAGE/usr/bin/edge-agent"
install -D -m 0644 "$ROOT/systemd/edge-agent.service" "$STAGE/lib/systemd/system/edge-agent.service"
install -D -m 0640 "$HERE/agent.toml" "$STAGE/etc/edge-agent/agent.toml"
install -D -m 0644 "$ROOT/README.md" "$STAGE/usr/share/doc/edge-agent/README.md"
for doc in install config sources outputs models bundles commands; do
  install -D -m 0644 "$ROOT/docs/$doc.md" "$STAGE/usr/share/doc/edge-agent/docs/$doc.md"
done
install -D -m 0644 "$ROOT/systemd/README.md" "$STAGE/usr/share/doc/edge-agent/systemd.md"
mkdir -p "$STAGE/usr/share/doc/edge-agent/examples"
cp "$ROOT"/examples/*.toml "$STAGE/usr/share/doc/edge-agent/examples/"
install -D -m 0644 "$HERE/copyright" "$STAGE/usr/share/doc/edge-agent/copyright"

mkdir -p "$STAGE/DEBIAN"
SIZE=$(du -sk "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CTRL
Package: edge-agent
Version: $VERSION
Architecture: $ARCH
Maintainer: edge-inference maintainers <edge-inference@localhost>
Installed-Size: $SIZE
Depends: adduser
Section: net
Priority: optional
Homepage: https://example.invalid/edge-inference
Description: edge inference agent for industrial gateways
 Reads sensors over OPC-UA, Modbus TCP/RTU and MQTT, computes windowed features, runs
 ONNX models locally, and publishes results to SCADA systems and historians over MQTT
 (plain JSON and Sparkplug B) through a crash-safe outbox.
CTRL
echo "/etc/edge-agent/agent.toml" > "$STAGE/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  install -m 0755 "$HERE/$s" "$STAGE/DEBIAN/$s"
done
mkdir -p "$OUT"
DEB="$OUT/edge-agent_${VERSION}_${ARCH}.deb"
# DEB_COMPRESS=none speeds up test builds of large (debug) binaries.
dpkg-deb --root-owner-group "-Z${DEB_COMPRESS:-xz}" --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
