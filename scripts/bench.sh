#!/usr/bin/env bash
# The benchmark suite: every benchmark program of the project (serial link, ingest, Modbus TCP
# polling of firmware-sim, windows, forwarder drain, end-to-end latency, agent CPU per reading,
# consumer, consumer recovery after a broker restart) against the real test brokers (the recovery benchmark on a
# private broker of its own), one table, JSON with machine info, each figure with the target an
# issue set for it (where one did). Benchmarks print figures; nothing here is a timed test.
#
#   scripts/bench.sh [--quick] [--update-readme] [--out FILE] [--only ID,ID] [--peers]
#
#   --quick          short durations and small counts (a few minutes after the build), for CI;
#                    built without LTO (faster to build, figures not for the table)
#   --update-readme  regenerate README.md's performance table (between <!-- bench:begin --> and
#                    <!-- bench:end -->); full runs without failures only
#   --out FILE       where the JSON goes (default target/bench/results.json)
#   --only ID,ID     run only these benchmarks (ids as in target/bench/results.json)
#   --peers          also the peer run: Telegraf's CPU per reading (job peer_telegraf) beside the
#                    agent's (job cpu), same Mosquitto, Kafka and load. Builds Telegraf 1.37
#                    (telegraf_version below) from its Go module with the build tags below into
#                    target/peers/ (once: an existing target/peers/telegraf-VERSION is reused);
#                    without `go` on PATH it says so in one line and runs the rest.
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
# Telegraf: `go install` of github.com/influxdata/telegraf/cmd/telegraf@vVERSION with
# the tags custom,inputs.mqtt_consumer,aggregators.basicstats,outputs.kafka,parsers.json_v2,
# serializers.json (only those plugins compiled in) and CGO_ENABLED=0 as Telegraf's own builds;
# the version is stamped in with -ldflags as its Makefile does. Its go.mod needs Go 1.25.5.
#
# The formats (BENCH lines, the JSON file) are documented in bench/src/line.rs and
# bench/src/report.rs.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# --peers is this script's: edge-bench gets `--peers PATH` (the Telegraf binary) instead.
# --quick goes on to edge-bench and also chooses the build profile below.
peers=false
quick=false
args=()
for arg in "$@"; do
  if [[ "$arg" == --peers ]]; then peers=true; else args+=("$arg"); fi
  if [[ "$arg" == --quick ]]; then quick=true; fi
done

# The newest 1.37.x the Go module proxy served on 2026-12-07 (pinned: the cached binary and the
# figures name it).
telegraf_version=1.37.2
telegraf_tags=custom,inputs.mqtt_consumer,aggregators.basicstats,outputs.kafka,parsers.json_v2,serializers.json
telegraf=target/peers/telegraf-$telegraf_version
if $peers; then
  if [[ -x "$telegraf" ]]; then
    echo "bench: --peers: $telegraf (built before)" >&2
    args+=(--peers "$telegraf")
  elif ! command -v go >/dev/null; then
    echo "bench: --peers: go not found; the Telegraf run is skipped" >&2
  else
    echo "bench: --peers: building Telegraf $telegraf_version with $(go version | cut -d' ' -f3) (several minutes the first time)" >&2
    mkdir -p target/peers
    gobin=$(mktemp -d "$root/target/peers/gobin.XXXXXX")
    if GOBIN="$gobin" CGO_ENABLED=0 go install -tags "$telegraf_tags" \
      -ldflags "-X github.com/influxdata/telegraf/internal.Version=$telegraf_version" \
      "github.com/influxdata/telegraf/cmd/telegraf@v$telegraf_version" >target/peers/build.log 2>&1; then
      mv "$gobin/telegraf" "$telegraf"
      args+=(--peers "$telegraf")
    else
      tail -n 20 target/peers/build.log >&2
      echo "bench: --peers: building Telegraf failed (log: target/peers/build.log); the Telegraf run is skipped" >&2
    fi
    rm -rf "$gobin"
  fi
fi

bash tests/services/services.sh start >&2
# shellcheck disable=SC1091
. .services/env

mkdir -p target/bench
# A quick run checks that every benchmark runs; its figures go into no table. It builds the
# release profile without link-time optimization and with 16 codegen units: the project's own
# crates then build in about 2 minutes instead of 6 on the 2-core CI machine. (Cargo keeps these
# artifacts beside the full profile's, so neither rebuilds the other's dependencies.)
profile_note="release"
if $quick; then
  export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16
  profile_note="release without LTO, 16 codegen units: quick run"
fi
echo "bench: building the benchmark programs ($profile_note)" >&2
cargo build --locked --release --message-format=json-render-diagnostics \
  -p edge-bench -p edge-agent -p edge-consumer -p firmware-sim \
  --bin edge-bench --bin edge-agent \
  --example ingest_bench --example bench_window --example bench_forward \
  --example bench_forward_latency --example bench_cpu --example bench_consumer \
  --example bench_recovery --example bench_modbus --example bench_restart --bench link \
  >target/bench/artifacts.jsonl

EDGE_BENCH_COMMAND="scripts/bench.sh${*:+ $*}" exec target/release/edge-bench "${args[@]}"
