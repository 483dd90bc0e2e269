#!/usr/bin/env bash
# Builds the amd64 Debian package, installs it on this machine (dpkg -i) and starts the agent
# from it: the installed binary, as the installed user, on the installed configuration adjusted
# to the loopback brokers of tests/services/services.sh (no systemd needed: the binary is started
# directly; the installed unit is checked with systemd-analyze verify).
#
#   deploy/test-deb.sh [path/to/edge-agent_*.deb]     (default: build it with cargo deb)
#
# Needs root (dpkg), the services running, and cargo-deb (installed when missing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
deb="${1:-}"
if [ -z "$deb" ]; then
    command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
    start=$(date +%s)
    cargo deb -p edge-agent
    echo "cargo deb (release build + package) took $(($(date +%s) - start)) s"
    deb="$(ls -t target/debian/edge-agent_*_amd64.deb | head -1)"
fi
echo "== install $deb ($(stat -c %s "$deb") bytes)"
dpkg -i "$deb"

echo "== what the package installed"
test -x /usr/bin/edge-agent
unit=/lib/systemd/system/edge-agent.service
[ -f "$unit" ] || unit=/usr/lib/systemd/system/edge-agent.service
test -f "$unit"
getent passwd edge-agent
id -nG edge-agent | grep -qw dialout
stat -c '%U:%G %a %n' /etc/edge-agent /etc/edge-agent/agent.toml /var/lib/edge-agent
[ "$(stat -c '%U:%G %a' /etc/edge-agent/agent.toml)" = "root:edge-agent 640" ]
[ "$(stat -c '%U:%G %a' /var/lib/edge-agent)" = "edge-agent:edge-agent 750" ]
systemd-analyze verify "$unit"
echo "unit verifies; exposure: $(systemd-analyze security --offline=true "$unit" 2>/dev/null | tail -1)"
/usr/bin/edge-agent check-config /etc/edge-agent/agent.toml

echo "== start the installed agent on the installed config, adjusted to loopback brokers"
# shellcheck disable=SC1091
. "$root/.services/env"
run_id="deb-test-$$-$(date +%s)"
work="$(mktemp -d)"
chmod 755 "$work"
port=$((20000 + RANDOM % 20000))
cat >"$work/adjust.py" <<'PY'
import re, sys
run_id, mqtt, kafka, port = sys.argv[1:]
out, table = [], ""
for line in sys.stdin:
    m = re.match(r"^\[+([^\]]+)\]+", line)
    if m:
        table = m.group(1)
    key = line.split("=")[0].strip()
    if table == "kafka.client" and not m:
        continue  # the example's SASL/TLS settings
    if table == "mqtt" and key in ("username", "password_env", "password_file", "ca_file"):
        continue
    if table == "agent" and key == "id":
        line = f'id = "{run_id}"\n'
    elif table == "mqtt" and key == "url":
        line = f'url = "{mqtt}"\n'
    elif table == "mqtt" and key == "client_id":
        line = f'client_id = "{run_id}"\n'
    elif table == "ops" and key == "metrics_listen":
        line = f'metrics_listen = "127.0.0.1:{port}"\n'
    elif table == "kafka" and key == "bootstrap_servers":
        line = f'bootstrap_servers = "{kafka}"\n'
    elif table == "kafka" and key == "replication_factor":
        line = "replication_factor = 1\n"  # one loopback broker
    elif table == "kafka.topics" and key in ("partials", "readings", "late", "dead_letters", "progress"):
        line = f'{key} = "{run_id}.{key}"\n'
    out.append(line)
sys.stdout.write("".join(out))
PY
python3 "$work/adjust.py" "$run_id" "$MQTT_URL" "$KAFKA_BOOTSTRAP" "$port" \
    </etc/edge-agent/agent.toml >"$work/agent.toml"
chgrp edge-agent "$work/agent.toml"
chmod 640 "$work/agent.toml"
/usr/bin/edge-agent check-config "$work/agent.toml"
setpriv --reuid edge-agent --regid edge-agent --init-groups \
    /usr/bin/edge-agent run --config "$work/agent.toml" --log-format json 2>"$work/agent.log" &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$work"' EXIT
ok=""
for _ in $(seq 1 60); do
    if curl -fs "127.0.0.1:$port/metrics" | grep -q '^edge_mqtt_connects_total{source="plant-broker"} [1-9]' &&
        grep -q 'forwarder: session started' "$work/agent.log"; then
        ok=yes
        break
    fi
    sleep 0.5
done
curl -s "127.0.0.1:$port/healthz"
curl -s "127.0.0.1:$port/metrics" | grep -E '^edge_(source_connected|kafka_session_errors_total)'
/usr/bin/edge-agent inspect --data-dir /var/lib/edge-agent --agent "127.0.0.1:$port" | head -3
kill -TERM $pid
status=0
wait $pid || status=$?
echo "SIGTERM: exit $status"
head -c 600 "$work/agent.log"
echo
[ -n "$ok" ] && [ "$status" = 0 ] || { cat "$work/agent.log"; echo "deb test FAILED" >&2; exit 1; }
test -f /var/lib/edge-agent/ingest.redb
[ "$(stat -c %U /var/lib/edge-agent/ingest.redb)" = edge-agent ]
echo "deb test OK: installed agent ran as edge-agent, connected MQTT and Kafka, drained on SIGTERM"
