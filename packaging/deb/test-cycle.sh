#!/usr/bin/env bash
# Install -> upgrade -> remove -> purge cycle of the edge-agent package on this machine (root):
# the system user appears, the binary runs, a local config edit and the state directory
# survive the upgrade, the state directory survives `remove`, and `purge` deletes it.
#   packaging/deb/test-cycle.sh BINARY      (builds two versions of the amd64 package)
set -euo pipefail
BIN=${1:?binary}
[ "$(id -u)" = 0 ] || { echo "needs root (dpkg -i)"; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
V1=$(DEB_VERSION=0.0.1~test1 "$HERE/build.sh" amd64 "$BIN" "$OUT")
V2=$(DEB_VERSION=0.0.1~test2 "$HERE/build.sh" amd64 "$BIN" "$OUT")
dpkg -P edge-agent >/dev/null 2>&1 || true

dpkg -i "$V1" >/dev/null
getent passwd edge-agent >/dev/null || fail "no system user"
/usr/bin/edge-agent --version
/usr/bin/edge-agent check --config /etc/edge-agent/agent.toml >/dev/null || fail "shipped config does not check"
[ -f /lib/systemd/system/edge-agent.service ] || fail "no unit"
# What a running service leaves behind, and an operator's edit.
mkdir -p /var/lib/edge-agent/outbox
echo undelivered > /var/lib/edge-agent/outbox/marker
sed -i 's/^id = "gateway-1"/id = "line-7"/' /etc/edge-agent/agent.toml

dpkg -i --force-confold "$V2" >/dev/null
[ "$(dpkg-query -W -f '${Version}' edge-agent)" = "0.0.1~test2" ] || fail "not upgraded"
grep -q 'id = "line-7"' /etc/edge-agent/agent.toml || fail "upgrade lost the config edit"
[ -f /var/lib/edge-agent/outbox/marker ] || fail "upgrade lost the state directory"

dpkg -r edge-agent >/dev/null
[ ! -e /usr/bin/edge-agent ] || fail "binary left after remove"
[ -f /var/lib/edge-agent/outbox/marker ] || fail "remove deleted the state directory"

dpkg -P edge-agent >/dev/null
[ ! -e /var/lib/edge-agent ] || fail "purge left the state directory"
[ ! -e /etc/edge-agent/agent.toml ] || fail "purge left the config"
echo "install/upgrade/remove/purge: OK"
