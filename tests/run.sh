#!/usr/bin/env bash
# The test command: every check the project has, against real brokers.
#
#   tests/run.sh              install missing packages, start the test brokers, then:
#                             cargo fmt --check, clippy -D warnings, cargo deny, no_std builds for a
#                             bare-metal target, all tests, a short fuzz run, the deploy checks,
#                             the README's commands
#
# Brokers started here are stopped at the end (set EDGE_KEEP_SERVICES=1 to keep them); brokers
# that were already running are left running. EDGE_FUZZ_SECONDS (default 20) bounds each fuzz
# target. EDGE_SKIP_DEPLOY=1 skips the deploy checks (the arm64 and armhf packages built and run
# under qemu, the amd64 package installed with dpkg; about 10 minutes with a warm cache). Then the benchmark suite runs once on small
# inputs (scripts/bench.sh --quick) and every command of the README runs as written
# (tests/readme.sh: the demo three ways, about 3 minutes). The last line sums up every `cargo test`
# result: "tests: N passed, N failed".
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
services=tests/services/services.sh

started=$SECONDS
step() { printf '\n== %s (at %d s)\n' "$*" $((SECONDS - started)) >&2; }

step "dependencies"
bash scripts/install-deps.sh

step "test brokers"
started_here=0
if ! bash "$services" status >/dev/null 2>&1; then started_here=1; fi
bash "$services" start --secure
if ((started_here)) && [[ ${EDGE_KEEP_SERVICES:-0} != 1 ]]; then
  trap 'bash "$services" stop' EXIT
fi

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docs (rustdoc, broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "licences, sources and advisories of the dependencies (scripts/deny.sh)"
bash scripts/deny.sh

step "no_std builds for thumbv7em-none-eabihf (firmware-ready)"
cargo build --locked -p edge-protocol --target thumbv7em-none-eabihf
cargo build --locked -p firmware-sim --no-default-features --lib --target thumbv7em-none-eabihf

step "tests"
log=$(mktemp)
tests_started=$(mktemp)
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# A librdkafka CONFWARN means a client was handed a setting it does not read (issue 16): none
# in the consumers' logs of this run (target/consumer-test-logs; the output above has the rest).
warned=$( { find target/consumer-test-logs -name '*.log' -newer "$tests_started" -exec grep -l CONFWARN {} + 2>/dev/null; grep -c CONFWARN "$log" | grep -v '^0$' | sed 's/^/test output: /'; } || true)
rm -f "$tests_started"
if [[ -n $warned ]]; then
  echo "tests: librdkafka CONFWARN in: $warned" >&2
  status=1
fi

step "fuzz (${EDGE_FUZZ_SECONDS:-20} s per target)"
# The fuzz crates' builds (nightly, librdkafka included) are kept in the cache between runs.
EDGE_FUZZ_TARGET_DIR=${EDGE_FUZZ_TARGET_DIR:-${EDGE_CACHE:-$HOME/.cache/edge-ingest}/fuzz-target} \
  bash scripts/fuzz.sh "${EDGE_FUZZ_SECONDS:-20}" || status=1

if [[ ${EDGE_SKIP_DEPLOY:-0} != 1 ]]; then
  step "deploy: arm64 and armhf packages run under qemu, amd64 package installed and run, unit verified"
  # The cross builds (librdkafka and OpenSSL for each architecture) are kept in the cache too.
  cross_target=${EDGE_CACHE:-$HOME/.cache/edge-ingest}/cross-target
  { CARGO_TARGET_DIR=$cross_target bash deploy/test-deb-qemu.sh aarch64 \
      && CARGO_TARGET_DIR=$cross_target bash deploy/test-deb-qemu.sh armv7 \
      && bash deploy/test-deb.sh; } || status=1
fi

step "benchmarks, quick (scripts/bench.sh --quick: every benchmark on small inputs, one table)"
bash scripts/bench.sh --quick || status=1

step "README: every command as written (tests/readme.sh)"
bash tests/readme.sh || status=1

read -r passed failed < <(awk '/^test result: /{for(i=1;i<=NF;i++){if($i~/^passed;?$/)p+=$(i-1);if($i~/^failed;?$/)f+=$(i-1)}} END{print p+0, f+0}' "$log")
rm -f "$log"
step "done"
echo "tests: $passed passed, $failed failed"
exit "$status"
