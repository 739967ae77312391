#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests (Debian's `postgresql` package; no system
# service is used or changed):
#   postgres.sh start DIR   initdb into DIR/data (as the `postgres` user when run as root:
#                           initdb refuses root), start on a free loopback port, print the
#                           server's base URL (postgres://edge@127.0.0.1:PORT)
#   postgres.sh stop DIR    stop it (DIR stays; remove it yourself)
# Test settings: trust authentication on loopback, fsync off (a test database need not
# survive a power cut; the benchmarks in BENCHMARKS.md start theirs with PG_FSYNC=on).
set -euo pipefail
cmd=${1:?usage: postgres.sh start|stop DIR}
dir=${2:?usage: postgres.sh start|stop DIR}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "PostgreSQL is not installed (apt-get install postgresql): run tests/peers/setup.sh" >&2; exit 1; }
as=()
if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); fi
case $cmd in
  start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U edge -E UTF8 --locale=C.UTF-8 >/dev/null
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-off} -c max_connections=300" start >/dev/null
    echo "postgres://edge@127.0.0.1:$port"
    ;;
  stop)
    [ -d "$dir/data" ] && "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    ;;
  *) echo "usage: postgres.sh start|stop DIR" >&2; exit 2 ;;
esac
