#!/usr/bin/env bash
# Runs every cargo-fuzz target of edge-protocol for N seconds each (default 30); exits non-zero on
# a crash (libFuzzer writes the input to protocol/fuzz/artifacts/<target>/).
#
# Needs a nightly toolchain for cargo-fuzz. If none can be had, says so and falls back to the
# property tests over arbitrary bytes (protocol/tests/link_props.rs) for the same time budget.
#
#   protocol/fuzz/run.sh [seconds]
set -euo pipefail

secs="${1:-30}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

fallback() {
    echo "run.sh: $1"
    echo "run.sh: FALLBACK: no cargo-fuzz run; running the proptests over arbitrary bytes for ${secs}s instead"
    cd "$root"
    local end=$((SECONDS + secs)) rounds=0
    while :; do
        # Each round draws fresh random cases; a failure is saved in protocol/proptest-regressions/.
        PROPTEST_CASES=1000 cargo test -q --release -p edge-protocol --test link_props -- any_byte_stream
        rounds=$((rounds + 1))
        [ "$SECONDS" -lt "$end" ] || break
    done
    echo "run.sh: FALLBACK passed: $rounds rounds of 2 x 1000 arbitrary byte streams (release build)"
    exit 0
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "run.sh: no nightly toolchain; trying: rustup toolchain install nightly --profile minimal"
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 \
        || fallback "no nightly toolchain can be installed here"
    cargo +nightly --version >/dev/null 2>&1 || fallback "nightly toolchain still unusable"
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$here"
targets="$(cargo +nightly fuzz list)"
for t in $targets; do
    mkdir -p "corpus/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    echo "run.sh: fuzzing $t for ${secs}s"
    # New inputs go to corpus/<target> (not committed); seeds/<target> holds the golden frames.
    cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" -print_final_stats=1
done
echo "run.sh: all targets ran ${secs}s without a crash: $targets"
