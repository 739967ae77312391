#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted or operator input (libFuzzer through
# cargo-fuzz, nightly). Targets: fuzz/src/lib.rs (`TARGETS`); harness: fuzz/libfuzzer/.
#
#   tests/fuzz.sh [SECONDS] [TARGET...]    # default: 600 s (10 CPU-minutes) per target, all
#   FUZZ_JOBS=2 tests/fuzz.sh 600          # two targets at a time (one core each)
#
# Each target starts from its committed corpus (fuzz/corpus/<target>/, seeded by
# `cargo run -p edge-fuzz --example seed_corpora`); inputs that add coverage are merged back
# into it, so the corpus only grows by what is new. A crash stops that target, its input is
# kept in fuzz/artifacts/<target>/ and the script exits non-zero: fix the bug, then copy the
# input into fuzz/corpus/<target>/ so the stable replay test (fuzz/tests/replay.rs, part of
# tests/run.sh) keeps it fixed. A summary per target (runs, CPU seconds, coverage, corpus)
# goes to target/fuzz-report.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-600}
shift || true
jobs=${FUZZ_JOBS:-1}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
tools=${EDGE_TOOLS_DIR:-$HOME/.cache/edge-inference/tools}
export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked --root "$tools" cargo-fuzz@0.13.2
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/libfuzzer/Cargo.toml | grep -v '^edge-fuzz')
fi

cargo run -q -p edge-fuzz --example seed_corpora
# The harness resolves the workspace's exact versions.
cp Cargo.lock fuzz/libfuzzer/Cargo.lock
tdir=$root/target/fuzz
# No sanitizer: the code under test is safe Rust (forbid(unsafe_code) in the parsers'
# crates); coverage guidance and debug assertions (overflow checks) are what find bugs here.
(cd fuzz/libfuzzer && cargo +nightly fuzz build --fuzz-dir . -s none --debug-assertions --target-dir "$tdir")
bin=$tdir/x86_64-unknown-linux-gnu/release
report=$root/target/fuzz-report.tsv
[ -f "$report" ] || printf 'date\ttarget\tseconds\truns\tcpu_s\tcov\tft\tcorpus\tresult\n' >"$report"

fuzz_one() {
    local t=$1 work=$root/target/fuzz-work/$1 arts=$root/fuzz/artifacts/$1 log
    mkdir -p "$work" "$arts"
    cp -n "$root/fuzz/corpus/$t/"* "$work/" 2>/dev/null || true
    log=$root/target/fuzz-work/$t.log
    local result=ok
    # -rss_limit_mb: a parser that allocates without bound is a finding too.
    /usr/bin/time -f '%U %S' -o "$work.time" "$bin/$t" "$work" \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -timeout=20 \
        -artifact_prefix="$arts/" -print_final_stats=1 >"$log" 2>&1 || result=CRASH
    local cpu runs cov ft corp
    cpu=$(awk '{printf "%.0f", $1+$2}' "$work.time" 2>/dev/null || echo "?")
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    # The committed corpus becomes the smallest set of inputs covering everything seen so
    # far (libFuzzer's set-cover merge), plus the named seeds and every input that once crashed.
    local fresh=$root/target/fuzz-work/$t.merged
    rm -rf "$fresh" && mkdir -p "$fresh"
    if "$bin/$t" -set_cover_merge=1 "$fresh" "$root/fuzz/corpus/$t" "$work" >/dev/null 2>&1; then
        find "$root/fuzz/corpus/$t" -type f ! -name 'seed-*' ! -name 'crash-*' -delete
        cp "$fresh"/* "$root/fuzz/corpus/$t/" 2>/dev/null || true
    fi
    corp=$(ls "$root/fuzz/corpus/$t" | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$secs" "${runs:-?}" \
        "$cpu" "${cov:-?}" "${ft:-?}" "$corp" "$result" >>"$report"
    echo "fuzz $t: $result, ${runs:-?} runs in ${cpu}s CPU, cov ${cov:-?}, corpus $corp"
    if [ "$result" != ok ]; then
        tail -40 "$log"
        return 1
    fi
}

status=0
running=0
for t in "${targets[@]}"; do
    fuzz_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || status=1
        running=$((running - 1))
    fi
done
while [ "$running" -gt 0 ]; do
    wait -n || status=1
    running=$((running - 1))
done
column -t -s $'\t' "$report" | tail -n $(( ${#targets[@]} + 1 ))
exit $status
