#!/usr/bin/env bash
# The demo: edge-ingest end to end on this machine, with faults, and an account of every reading.
#
#   ./demo.sh                      60 s of 3 MQTT + 3 serial devices (2 channels, 20 readings/s each)
#                                  and 1 Modbus TCP device (2 channels, polled twice a second)
#   ./demo.sh --duration 120 --devices 10 --rate 100
#   ./demo.sh --kafka host:9092 --mqtt mqtt://host:1883    use running brokers (no Kafka outage then)
#   ./demo.sh --help                                       every flag
#
# It installs missing Debian packages (Mosquitto, a JDK and Maven for the Kafka broker: needs
# root or sudo), builds the agent, the consumer, the device simulator and the demo (debug
# profile: quick to build; EDGE_DEMO_PROFILE=release for optimised binaries), starts its own
# Kafka (KRaft, assembled from Maven Central on first use) and Mosquitto on ports of their own
# (19692 and 18860: the test brokers are not touched), and runs `edge-demo`. Exit status 0 only
# when every reading sent was finalized exactly once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

for arg in "$@"; do
  if [[ $arg == -h || $arg == --help || $arg == -V || $arg == --version ]]; then help=1; fi
done
if [[ -z ${help:-} ]]; then
  bash scripts/install-deps.sh --runtime
fi

profile=${EDGE_DEMO_PROFILE:-debug}
flags=(--locked -p edge-agent -p edge-consumer -p firmware-sim -p edge-demo)
[[ $profile == release ]] && flags+=(--release)
echo "demo: building (cargo build ${flags[*]}) ..." >&2
cargo build --quiet "${flags[@]}"
exec "target/$profile/edge-demo" "$@"
