#!/usr/bin/env bash
# Smoke test of a cross-built gateway binary (aarch64 or armv7) under qemu-user, against the
# loopback Mosquitto and Kafka of tests/services/services.sh:
#   1. `edge-agent check-config` on configs/agent.example.toml;
#   2. a short real pipeline: MQTT -> ingest log -> pass-through -> Kafka (transactional);
#      100 QoS 1 messages must arrive in Kafka exactly once (kcat, read_committed);
#   3. /readyz, /metrics and `inspect` answer; SIGTERM drains and exits 0.
#
#   deploy/smoke-qemu.sh [aarch64|armv7] [path/to/edge-agent]      (default aarch64)
#
# Installs qemu-user, mosquitto-clients, kcat and curl when missing (apt). Needs the services
# running (tests/services/services.sh) and the binary built (deploy/cross.sh ARCH).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
arch="${1:-aarch64}"
case "$arch" in
aarch64) target=aarch64-unknown-linux-gnu qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
armv7) target=armv7-unknown-linux-gnueabihf qemu=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
*) echo "usage: $0 [aarch64|armv7] [path/to/edge-agent]" >&2; exit 2 ;;
esac
bin="${2:-${CARGO_TARGET_DIR:-$root/target}/$target/release/edge-agent}"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v "${qemu[0]}" >/dev/null || missing+=(qemu-user)
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
command -v kcat >/dev/null || missing+=(kcat)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
[ -x "$bin" ] || { echo "no binary at $bin: run deploy/cross.sh $arch" >&2; exit 1; }
# shellcheck disable=SC1091
. "$root/.services/env"
mqtt_host="${MQTT_URL#mqtt://}"
mqtt_port="${mqtt_host##*:}"
mqtt_host="${mqtt_host%:*}"

echo "== check-config ($arch under qemu)"
"${qemu[@]}" "$bin" --version
"${qemu[@]}" "$bin" check-config --no-environment "$root/configs/agent.example.toml"

work="$(mktemp -d)"
agent_pid=""
cleanup() {
    [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
run_id="qemu-smoke-$$-$(date +%s)"
port=$((20000 + RANDOM % 20000))
cat >"$work/agent.toml" <<TOML
[agent]
id = "$run_id"
data_dir = "$work/data"

[ops]
metrics_listen = "127.0.0.1:$port"

[[mqtt]]
name = "broker"
url = "$MQTT_URL"
client_id = "$run_id"
payload = { format = "json", value = "/v", timestamp = "/ts" }
subscribe = [{ topic = "$run_id/+/v", qos = 1 }]

[[sensor]]
source = "broker"
topic = "$run_id/{dev}/v"
id = "{dev}"

[[pipeline]]
name = "p"
sensors = ["*"]

[kafka]
bootstrap_servers = "$KAFKA_BOOTSTRAP"
transaction_timeout_ms = 10000

[kafka.topics]
readings = "$run_id.readings"
partials = "$run_id.partials"
late = "$run_id.late"
dead_letters = "$run_id.dead"
progress = "$run_id.progress"
TOML

echo "== run ($arch under qemu)"
start=$(date +%s)
"${qemu[@]}" "$bin" run --config "$work/agent.toml" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 1 120); do
    curl -fs "127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fs "127.0.0.1:$port/readyz" || { cat "$work/agent.log"; echo "not ready" >&2; exit 1; }
echo "ready after $(($(date +%s) - start)) s"
for i in $(seq 0 99); do
    echo "{\"v\":$i,\"ts\":$((1700000000000 + i))}"
done | mosquitto_pub -h "$mqtt_host" -p "$mqtt_port" -q 1 -t "$run_id/d$((RANDOM % 4))/v" -l
count=0
for _ in $(seq 1 120); do
    count=$(kcat -C -b "$KAFKA_BOOTSTRAP" -t "$run_id.readings" -X isolation.level=read_committed \
        -e -q -f '%s\n' 2>/dev/null | grep -c '"value"' || true)
    [ "$count" -ge 100 ] && break
    sleep 0.5
done
distinct=$(kcat -C -b "$KAFKA_BOOTSTRAP" -t "$run_id.readings" -X isolation.level=read_committed \
    -e -q -f '%s\n' | sed 's/.*"value":\([0-9.]*\).*/\1/' | sort -u | wc -l)
echo "kafka: $count records, $distinct distinct values (want 100 and 100)"
curl -fs "127.0.0.1:$port/metrics" | grep -E '^edge_(ingest_accepted|kafka_transactions_committed)_total'
kill -TERM "$agent_pid"
status=0
wait "$agent_pid" || status=$?
agent_pid=""
echo "SIGTERM: exit $status"
"${qemu[@]}" "$bin" inspect --data-dir "$work/data"
[ "$count" -eq 100 ] && [ "$distinct" -eq 100 ] && [ "$status" -eq 0 ] || {
    cat "$work/agent.log"
    echo "qemu smoke ($arch) FAILED" >&2
    exit 1
}
echo "qemu smoke ($arch) OK in $(($(date +%s) - start)) s"
