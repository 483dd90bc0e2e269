#!/usr/bin/env bash
# Builds the amd64 Debian packages, installs each on this machine (dpkg -i) and runs it from the
# package: the installed binary, as the installed user, on the installed configuration with its
# addresses and names pointed at the loopback brokers of tests/services/services.sh (the agent's
# as shipped otherwise: SASL_SSL to the secured Kafka of `start --secure`, secrets from the unit's
# EnvironmentFile; no systemd needed: the binary is started directly; the installed unit is
# checked with systemd-analyze verify and security).
#
#   deploy/test-deb.sh [agent] [consumer]     (default: both)
#
# For each package the same checks (build, install, user, permissions, unit, check-config),
# then its own run: the agent connects MQTT and Kafka and drains on SIGTERM; the consumer
# merges partials produced as the gateways send them (tests/examples/deb_consumer.rs) into
# finals equal to the reference, counts them in /metrics and stops on SIGTERM.
#
# Needs root (dpkg), the services running, and cargo-deb (installed when missing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(agent consumer)
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
# shellcheck disable=SC1091
. "$root/.services/env"
target="${CARGO_TARGET_DIR:-$root/target}"
work="$(mktemp -d)"
chmod 755 "$work"
pid=""
# Files this script provisions outside the package (the agent's CA files and secrets): removed
# at exit, pass or fail, so the machine is left as unprovisioned as it was (the check-config
# suite expects the example's files to be missing here).
provisioned=()
trap '[ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true; rm -rf "$work" "${provisioned[@]}"' EXIT

# install PKG: build the package with cargo deb (the release build included) and dpkg -i it.
install() {
    local pkg=$1 start deb
    start=$(date +%s)
    cargo deb -p "$pkg"
    echo "cargo deb -p $pkg (release build + package) took $(($(date +%s) - start)) s"
    deb="$(ls -t "$target"/debian/"$pkg"_*_amd64.deb | head -1)"
    echo "== install $deb ($(stat -c %s "$deb") bytes)"
    dpkg -i "$deb"
}

# installed PKG CONF: what every package installs: binary, unit, user, a configuration only
# root and the service read; the unit verifies; the installed configuration is valid.
installed() {
    local pkg=$1 conf=$2 unit
    echo "== what $pkg installed"
    test -x "/usr/bin/$pkg"
    unit="/lib/systemd/system/$pkg.service"
    [ -f "$unit" ] || unit="/usr/lib/systemd/system/$pkg.service"
    test -f "$unit"
    test -f "/usr/lib/sysusers.d/$pkg.conf"
    getent passwd "$pkg"
    stat -c '%U:%G %a %n' "/etc/$pkg" "/etc/$pkg/$conf"
    [ "$(stat -c '%U:%G %a' "/etc/$pkg")" = "root:$pkg 750" ]
    [ "$(stat -c '%U:%G %a' "/etc/$pkg/$conf")" = "root:$pkg 640" ]
    systemd-analyze verify "$unit"
    echo "unit verifies; exposure: $(systemd-analyze security --offline=true "$unit" 2>/dev/null | tail -1)"
    # The agent's installed example names secrets and devices this machine does not have: the
    # file only (the adjusted copy below is checked with this machine too).
    local only_file=()
    [ "$pkg" = edge-agent ] && only_file=(--no-environment)
    "/usr/bin/$pkg" check-config "${only_file[@]}" "/etc/$pkg/$conf"
}

# adjusted PKG CONF 'table.key=value'...: the installed configuration with those keys set (TOML
# values, only keys the file sets) and the keys named '-table.key' ('-table.*': every key of the
# table) dropped, readable by the service's user; prints its path.
adjusted() {
    local pkg=$1 conf=$2 out="$work/$2"
    shift 2
    cat >"$work/adjust.py" <<'PY'
import re, sys
sets, drops = {}, set()
for arg in sys.argv[1:]:
    if arg.startswith("-"):
        drops.add(arg[1:])
    else:
        key, value = arg.split("=", 1)
        sets[key] = value
table = ""
for line in sys.stdin:
    m = re.match(r"^\[+([^\]]+)\]+", line)
    if m:
        table = m.group(1)
    elif "=" in line and not line.lstrip().startswith("#"):
        name = line.split("=")[0].strip().strip('"')
        key = f"{table}.{name}"
        if key in drops or f"{table}.*" in drops:
            continue
        if key in sets:
            line = f"{key.rsplit('.', 1)[1]} = {sets[key]}\n"
    sys.stdout.write(line)
PY
    python3 "$work/adjust.py" "$@" <"/etc/$pkg/$conf" >"$out" || return 1
    chgrp "$pkg" "$out"
    chmod 640 "$out"
    "/usr/bin/$pkg" check-config "$out" >&2
    echo "$out"
}

# run_as USER CMD...: runs CMD in the background as the package's user (its pid in $pid).
run_as() {
    local user=$1
    shift
    setpriv --reuid "$user" --regid "$user" --init-groups "$@" &
    pid=$!
}

# stopped LOG: SIGTERM to $pid; fails (with the log) unless it exits 0.
stopped() {
    local status=0
    kill -TERM "$pid"
    wait "$pid" || status=$?
    pid=""
    echo "SIGTERM: exit $status"
    [ "$status" = 0 ] || { cat "$1"; return 1; }
}

test_agent() {
    install edge-agent
    installed edge-agent agent.toml
    id -nG edge-agent | grep -qw dialout
    [ "$(stat -c '%U:%G %a' /var/lib/edge-agent)" = "edge-agent:edge-agent 750" ]
    echo "== start the installed agent on the installed config as shipped (SASL_SSL + SCRAM-SHA-512 to"
    echo "   Kafka, TLS + password to MQTT), its addresses and names pointed at the loopback brokers"
    : "${KAFKA_SECURE_SASL:?the secured Kafka is not running: tests/services/services.sh start --secure}"
    local run_id port config log ok=""
    run_id="gw-a-deb-$$-$(date +%s)"
    port=$((20000 + RANDOM % 20000))
    # Provisioning, as OPERATIONS.md says: the CA files the example names, and the secrets in
    # the unit's EnvironmentFile (root:edge-agent 0640). agent-a's ACLs cover agent ids gw-a*
    # and topics edge.partials*, edge.readings*, ... (tests/services/services.sh).
    provisioned+=(/etc/edge-agent/kafka-ca.pem /etc/edge-agent/plant-ca.pem /etc/edge-agent/env)
    command install -m 0640 -o root -g edge-agent "$KAFKA_SECURE_CA" /etc/edge-agent/kafka-ca.pem
    command install -m 0640 -o root -g edge-agent "$MQTT_CA" /etc/edge-agent/plant-ca.pem
    command install -m 0640 -o root -g edge-agent /dev/null /etc/edge-agent/env
    printf 'EDGE_KAFKA_PASSWORD=%s\nEDGE_MQTT_PASSWORD=%s\n' \
        "$(cat "$KAFKA_SECURE_CLIENTS/agent-a.password")" "anonymous-listener-ignores-it" >/etc/edge-agent/env
    set -a
    # shellcheck disable=SC1091
    . /etc/edge-agent/env
    set +a
    config=$(adjusted edge-agent agent.toml \
        "agent.id=\"$run_id\"" "mqtt.url=\"$MQTTS_URL\"" "mqtt.client_id=\"$run_id\"" \
        "ops.metrics_listen=\"127.0.0.1:$port\"" "kafka.bootstrap_servers=\"$KAFKA_SECURE_SASL\"" \
        'kafka.replication_factor=1' 'kafka.security.username="agent-a"' \
        "kafka.topics.partials=\"edge.partials.$run_id\"" \
        "kafka.topics.readings=\"edge.readings.$run_id.{pipeline}\"" \
        "kafka.topics.late=\"edge.late.$run_id\"" "kafka.topics.dead_letters=\"edge.dead-letters.$run_id\"" \
        "kafka.topics.progress=\"edge.progress.$run_id\"")
    # Nothing of the shipped file is dropped: the same keys, other values.
    diff <(grep -Eo '^[a-z_]+ *=' "/etc/edge-agent/agent.toml") <(grep -Eo '^[a-z_]+ *=' "$config")
    log="$work/agent.log"
    run_as edge-agent /usr/bin/edge-agent run --config "$config" --log-format json 2>"$log"
    for _ in $(seq 1 60); do
        if curl -fs "127.0.0.1:$port/metrics" | grep -q '^edge_mqtt_connects_total{source="plant-broker"} [1-9]' &&
            grep -q 'forwarder: session started' "$log"; then
            ok=yes
            break
        fi
        sleep 0.5
    done
    curl -s "127.0.0.1:$port/healthz"
    curl -s "127.0.0.1:$port/metrics" | grep -E '^edge_(source_connected|kafka_session_errors_total)'
    /usr/bin/edge-agent inspect --data-dir /var/lib/edge-agent --agent "127.0.0.1:$port" | head -3
    stopped "$log"
    head -c 600 "$log"
    echo
    [ -n "$ok" ] || { cat "$log"; echo "agent deb test FAILED" >&2; return 1; }
    test -f /var/lib/edge-agent/ingest.redb
    [ "$(stat -c %U /var/lib/edge-agent/ingest.redb)" = edge-agent ]
    echo "agent deb test OK: installed agent ran as edge-agent on the shipped config, connected MQTT (TLS) and Kafka (SASL_SSL, SCRAM-SHA-512), drained on SIGTERM"
}

test_consumer() {
    install edge-consumer
    installed edge-consumer consumer.toml
    [ "$(id -nG edge-consumer)" = edge-consumer ]
    echo "== run the installed consumer on the installed config, adjusted to the loopback Kafka"
    local run_id port config log feed ok=""
    run_id="deb-consumer-$$-$(date +%s)"
    port=$((20000 + RANDOM % 20000))
    config=$(adjusted edge-consumer consumer.toml \
        "kafka.bootstrap_servers=\"$KAFKA_BOOTSTRAP\"" "kafka.group_id=\"$run_id\"" \
        "kafka.instance_id=\"$run_id\"" "topics.inputs=[\"$run_id.partials\"]" \
        "topics.finals=\"$run_id.finals\"" "topics.changelog=\"$run_id.changelog\"" \
        "topics.dead_letters=\"$run_id.dead-letters\"" "ops.metrics_listen=\"127.0.0.1:$port\"")
    feed=(cargo run -q --locked -p edge-tests --example deb_consumer --)
    "${feed[@]}" create "$KAFKA_BOOTSTRAP" "$run_id.partials"
    log="$work/consumer.log"
    run_as edge-consumer /usr/bin/edge-consumer run --config "$config" --log-format json 2>"$log"
    for _ in $(seq 1 120); do
        if [ "$(curl -s "127.0.0.1:$port/readyz")" = ready ]; then
            ok=yes
            break
        fi
        sleep 0.5
    done
    [ -n "$ok" ] || { cat "$log"; echo "consumer deb test FAILED: never ready" >&2; return 1; }
    "${feed[@]}" feed "$KAFKA_BOOTSTRAP" "$run_id.partials" "$run_id.finals" ||
        { cat "$log"; echo "consumer deb test FAILED: finals" >&2; return 1; }
    local metrics
    metrics=$(curl -s "127.0.0.1:$port/metrics")
    grep -E '^edge_consumer_(merged|finals|transactions|dead_letters)_total' <<<"$metrics"
    grep -q '^edge_consumer_merged_total 12$' <<<"$metrics"
    grep -q '^edge_consumer_transactions_total [1-9]' <<<"$metrics"
    stopped "$log"
    head -c 600 "$log"
    echo
    echo "consumer deb test OK: installed consumer ran as edge-consumer, merged 12 partials into exact finals, stopped on SIGTERM"
}

for p in "${packages[@]}"; do
    start=$(date +%s)
    case "$p" in
        agent) test_agent ;;
        consumer) test_consumer ;;
        *) echo "usage: $0 [agent] [consumer]" >&2; exit 2 ;;
    esac
    echo "== $p: $(($(date +%s) - start)) s"
done
