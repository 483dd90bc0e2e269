#!/usr/bin/env bash
# Runs every cargo-fuzz target of the project (protocol/fuzz, agent/fuzz) for N seconds each
# (default 30) and exits non-zero on a crash; libFuzzer writes the input to
# <crate>/fuzz/artifacts/<target>/. Seeds in <crate>/fuzz/seeds/<target>/ are committed; the
# corpus grows in <crate>/fuzz/corpus/ (not committed).
#
#   scripts/fuzz.sh [seconds] [protocol|agent]
#
# Needs a nightly toolchain for cargo-fuzz (installed with rustup if missing). If none can be
# had, it runs the property tests over arbitrary bytes for the same budget and then FAILS (exit
# 1): property tests are not fuzzing, and CI must not pass without fuzzing. Set
# EDGE_FUZZ_ALLOW_FALLBACK=1 to accept the property tests alone (exit 0) on a machine that
# cannot fuzz.
#
# EDGE_FUZZ_TARGET_DIR=DIR builds each fuzz crate in DIR/<crate> instead of <crate>/fuzz/target:
# tests/run.sh points it into the project's cache, so CI on a fresh clone rebuilds only the
# workspace crates, not librdkafka and every dependency with the nightly compiler (minutes).
#
# agent/fuzz builds with `--sanitizer none` (coverage-guided, no AddressSanitizer): the agent links
# the bundled librdkafka, whose ./configure cannot link its probes against sanitizer-instrumented
# C libraries. The agent has `forbid(unsafe_code)`, so ASan would add little there.
set -euo pipefail

secs="${1:-30}"
only="${2:-}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [seconds] [protocol|agent]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

fallback() {
    echo "fuzz: $1"
    echo "fuzz: FALLBACK: no cargo-fuzz run; running the proptests over arbitrary bytes for ${secs}s instead"
    cd "$root"
    local end=$((SECONDS + secs)) rounds=0
    while :; do
        PROPTEST_CASES=2000 cargo test -q --release -p edge-protocol -- arbitrary any_byte_stream
        cargo test -q --release -p edge-agent --lib -- arbitrary_bytes
        rounds=$((rounds + 1))
        [ "$SECONDS" -lt "$end" ] || break
    done
    echo "fuzz: FALLBACK passed: $rounds rounds"
    if [[ ${EDGE_FUZZ_ALLOW_FALLBACK:-} == 1 ]]; then
        exit 0
    fi
    echo "fuzz: FAILED: nothing was fuzzed ($1); EDGE_FUZZ_ALLOW_FALLBACK=1 accepts the property tests alone"
    exit 1
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain; trying: rustup toolchain install nightly --profile minimal"
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 \
        || fallback "no nightly toolchain can be installed here"
    cargo +nightly --version >/dev/null 2>&1 || fallback "nightly toolchain still unusable"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

for crate in protocol agent; do
    [[ -z $only || $only == "$crate" ]] || continue
    dir="$root/$crate/fuzz"
    flags=()
    [[ $crate == agent ]] && flags=(--sanitizer none)
    [[ -n ${EDGE_FUZZ_TARGET_DIR:-} ]] && flags+=(--target-dir "$EDGE_FUZZ_TARGET_DIR/$crate")
    cd "$dir"
    for t in $(cargo +nightly fuzz list); do
        mkdir -p "corpus/$t"
        seeds=()
        [ -d "seeds/$t" ] && seeds=("seeds/$t")
        echo "fuzz: $crate/$t for ${secs}s"
        cargo +nightly fuzz run "${flags[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
            -max_total_time="$secs" -print_final_stats=1 2>&1 \
            | grep -E '^(stat::number_of_executed_units|Done|==|SUMMARY)|panicked|ERROR' || true
        [[ ${PIPESTATUS[0]} == 0 ]] || { echo "fuzz: $crate/$t CRASHED (input in $dir/artifacts/$t/)"; exit 1; }
    done
done
echo "fuzz: every target ran ${secs}s without a crash"
