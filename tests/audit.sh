#!/usr/bin/env bash
# Dependency audit, offline: advisories (RustSec snapshot), licences, bans (no OpenSSL, no
# aws-lc), sources. Config and every accepted finding with its reason: deny.toml.
#
#   tests/audit.sh            # audit Cargo.lock
#   EDGE_ADVISORY_DB=DIR      # the snapshot (default ../shared/advisory-db beside the repo)
#
# cargo-deny reads its database from a git repository under deny.toml's db-path; the snapshot
# is plain files, so it is copied into one here (target/advisory-db, rebuilt each run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# cargo-deny is installed once into a cache outside the clone (CI reuses it).
tools=${EDGE_TOOLS_DIR:-$HOME/.cache/edge-inference/tools}
export PATH="$tools/bin:$PATH"
if ! cargo deny --version 2>/dev/null | grep -q "0.20"; then
    echo "audit: installing cargo-deny 0.20.2 into $tools (once)" >&2
    cargo install --locked --root "$tools" cargo-deny@0.20.2 >&2
fi

src=${EDGE_ADVISORY_DB:-$root/../shared/advisory-db}
checks=(licenses bans sources)
if [ -d "$src/crates" ]; then
    db=$root/target/advisory-db/advisory-db-3157b0e258782691
    rm -rf "$root/target/advisory-db"
    mkdir -p "$db"
    cp -r "$src/crates" "$src/rust" "$db/" 2>/dev/null || cp -r "$src/crates" "$db/"
    (
        cd "$db"
        git init -q
        git add -A
        GIT_AUTHOR_DATE=2026-08-21T00:00:00Z GIT_COMMITTER_DATE=2026-08-21T00:00:00Z \
            git -c user.name=audit -c user.email=audit@localhost commit -qm "RustSec snapshot"
    )
    checks=(advisories "${checks[@]}")
    echo "audit: advisories from $src ($(find "$src/crates" -name 'RUSTSEC-*.md' | wc -l) advisories)"
else
    # Not a pass: say loudly what was not checked.
    echo "audit: WARNING: no RustSec snapshot at $src: advisories NOT checked (licences, bans, sources only)" >&2
fi

cargo deny --offline --locked check "${checks[@]}"
