#!/usr/bin/env bash
# The benchmark suite: every benchmark program of the project (serial link, ingest, Modbus TCP
# polling of firmware-sim, windows, forwarder drain, end-to-end latency, consumer, consumer
# recovery after a broker restart) against the real test brokers (the recovery benchmark on a
# private broker of its own), one table, JSON with machine info, each figure with the target an
# issue set for it (where one did). Benchmarks print figures; nothing here is a timed test.
#
#   scripts/bench.sh [--quick] [--update-readme] [--out FILE] [--only ID,ID]
#
#   --quick          short durations and small counts (a few minutes after the build), for CI
#   --update-readme  regenerate README.md's performance table (between <!-- bench:begin --> and
#                    <!-- bench:end -->); full runs without failures only
#   --out FILE       where the JSON goes (default target/bench/results.json)
#   --only ID,ID     run only these benchmarks (ids as in target/bench/results.json)
#
# 1. Starts the test brokers unless they run (tests/services/services.sh start: idempotent; this
#    script never stops them) and reads their addresses from .services/env.
# 2. Builds the runner (bench/, edge-bench), the benchmark programs and the edge-agent binary in
#    release mode, saving cargo's JSON messages (where each executable is) to
#    target/bench/artifacts.jsonl.
# 3. Runs target/release/edge-bench: progress on stderr, the table on stdout, each program's
#    output in target/bench/logs/ID.out and .err. Exit status 1 when a benchmark failed (the
#    others still run and the table shows it as failed, with its error).
#
# The formats (BENCH lines, the JSON file) are documented in bench/src/line.rs and
# bench/src/report.rs.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash tests/services/services.sh start >&2
# shellcheck disable=SC1091
. .services/env

mkdir -p target/bench
echo "bench: building the benchmark programs (release)" >&2
cargo build --locked --release --message-format=json-render-diagnostics \
  -p edge-bench -p edge-agent -p edge-consumer -p firmware-sim \
  --bin edge-bench --bin edge-agent \
  --example ingest_bench --example bench_window --example bench_forward \
  --example bench_forward_latency --example bench_consumer --example bench_recovery \
  --example bench_modbus --example bench_restart --bench link \
  >target/bench/artifacts.jsonl

EDGE_BENCH_COMMAND="scripts/bench.sh${*:+ $*}" exec target/release/edge-bench "$@"
