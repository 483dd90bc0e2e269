#!/usr/bin/env bash
# Test brokers on loopback: Apache Kafka (KRaft, from Maven Central) and Mosquitto (Debian).
#
#   tests/services/services.sh start [kafka|mqtt] [--nodes 3]   start (idempotent), wait until ready
#   tests/services/services.sh stop  [kafka|mqtt] [--node N]    stop by PID (SIGTERM, then SIGKILL)
#   tests/services/services.sh kill  kafka [--node N]           SIGKILL the broker(s): a crash, for fault tests
#   (start again restarts stopped nodes with their data: a broker restart)
#   tests/services/services.sh clean                            stop all, delete broker data
#   tests/services/services.sh status                           what runs, where its logs are
#   tests/services/services.sh env                              print the env file
#   tests/services/services.sh console-consumer ARGS...         Kafka's own kafka-console-consumer (same jars)
#   tests/services/services.sh console-producer ARGS...         Kafka's own kafka-console-producer (same jars)
#   tests/services/services.sh start --secure                   also the secured broker and Mosquitto's mTLS listener
#                                                               (a running Mosquitto without it is restarted, once)
#   tests/services/services.sh start|stop|kill secure           the secured broker (start: and the mTLS listener)
#   tests/services/services.sh acl ARGS...                      Kafka's AclCommand against the secured broker, as admin
#   tests/services/services.sh topics ARGS...                   Kafka's TopicCommand against the secured broker, as admin
#   tests/services/services.sh configs ARGS...                  Kafka's ConfigCommand (kafka-configs: SCRAM users) there, as admin
#   tests/services/services.sh secure-config                    print the path of the secured broker's admin client config
#
# Addresses (written to .services/env at the workspace root, sourceable, read by edge-tests):
#   KAFKA_BOOTSTRAP=127.0.0.1:19092      (3 nodes: 127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092)
#   MQTT_URL=mqtt://127.0.0.1:18830      anonymous, plain
#   MQTTS_URL=mqtts://127.0.0.1:18831    TLS, certificate signed by a throw-away CA made at start
#   MQTT_CA=.services/mqtt/tls/ca.crt
#   MQTT_AUTH_URL=mqtt://127.0.0.1:18832  username edge-test, password in MQTT_AUTH_PASSWORD_FILE
#
# With --secure (written only while the secured broker runs; `start` without it leaves a running
# secured broker and its lines alone):
#   KAFKA_SECURE_SASL=127.0.0.1:19095    SASL_SSL, SCRAM-SHA-512 only
#   KAFKA_SECURE_MTLS=127.0.0.1:19096    SSL, client certificate required (ssl.client.auth=required)
#   KAFKA_SECURE_CA=.services/kafka-secure/tls/ca.crt          the throw-away CA of broker and clients
#   KAFKA_SECURE_CLIENTS=.services/kafka-secure/clients        <name>.password (SCRAM), <name>.crt,
#                                        <name>.key (CN=<name>, PKCS#8, 0600) for agent-a, agent-b,
#                                        consumer, admin; rogue.crt/.key signed by another CA
#   KAFKA_SECURE_ADMIN_CONFIG=.services/kafka-secure/admin.properties   for Kafka's own tools
#   MQTT_MTLS_URL=mqtts://127.0.0.1:18833 TLS, client certificate required, CN is the username
#   MQTT_MTLS_CA, MQTT_MTLS_CERT, MQTT_MTLS_KEY (CN=edge-test-client), MQTT_MTLS_ROGUE_CERT/_KEY
#                                        (.services/mqtt/tls: the CA of the TLS listener; the rogue
#                                        certificate's CA is not)
# The secured broker is a separate single-node KRaft broker (.services/kafka-secure, its own
# cluster id; controller :19097, broker-internal :19098, both mTLS as User:broker). A certificate
# CN=agent-a and the SCRAM user agent-a are both principal User:agent-a. StandardAuthorizer, no
# ACL = denied; super users admin and broker. Its ACLs (PREFIXED patterns, re-added at each start
# of the broker) are listed in kafka_secure_acls below. `stop` stops it too, `clean` deletes it;
# `stop kafka` and `kill kafka` are about the main broker(s) only. Ports move with
# EDGE_KAFKA_PORT_OFFSET (secured: 19095-19098 + offset) and EDGE_MQTT_PORT (mTLS: + 3).
# SCRAM clients need librdkafka 2.6.1 or later (or Java): older ones, Debian's kcat among them,
# are refused by Kafka 4.x as "invalid credentials" (librdkafka PR 4895); they work over mTLS.
#
# Kafka's jars are assembled by Maven from tests/services/pom.xml into a cache
# (EDGE_CACHE, default ~/.cache/edge-ingest) and reused. Broker data survives stop/start (a
# restarted broker keeps its topics); `clean` stops everything and deletes it. Mosquitto starts
# empty each time. Needs: java 17+, mvn, mosquitto, openssl.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
state="${EDGE_SERVICES_DIR:-$root/.services}"
cache="${EDGE_CACHE:-$HOME/.cache/edge-ingest}"
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
# One jar set per pom.xml content: a changed pom gets a fresh directory (a running broker keeps
# the jars it was started with).
pom_hash=$(sha256sum "$here/pom.xml" | cut -c1-12)
jars="$cache/kafka-$kafka_version-$pom_hash/libs"
# EDGE_MQTT_PORT moves Mosquitto (TLS on the next port), so a second copy of the suite can run
# beside a running one (with EDGE_SERVICES_DIR and EDGE_KAFKA_PORT_OFFSET set too).
mqtt_port=${EDGE_MQTT_PORT:-18830}
mqtts_port=$((mqtt_port + 1))
mqtt_auth_port=$((mqtt_port + 2))
mqtt_mtls_port=$((mqtt_port + 3))
ready_timeout=${EDGE_READY_TIMEOUT:-90}

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_port() { # port seconds what logfile pidfile
  local deadline=$((SECONDS + $2))
  until port_open "$1"; do
    pid_alive "$5" || { tail -n 30 "$4" >&2 || true; die "$3 exited during start-up (log: $4)"; }
    ((SECONDS < deadline)) || { tail -n 30 "$4" >&2 || true; die "$3 not ready on 127.0.0.1:$1 after $2 s (log: $4)"; }
    sleep 0.2
  done
  pid_alive "$5" || { tail -n 30 "$4" >&2 || true; die "$3 exited during start-up (log: $4)"; }
}

require_free() { # port what
  if port_open "$1"; then
    die "port 127.0.0.1:$1 for $2 is taken by another process (another broker? \`ss -ltnp | grep $1\`)"
  fi
}

stop_pid() { # pidfile what
  local pidfile=$1 pid
  [[ -f "$pidfile" ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$2 did not stop in 10 s; SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
    log "stopped $2 (pid $pid)"
  fi
  rm -f "$pidfile"
}

# ---------------------------------------------------------------- Kafka

kafka_jars() {
  if [[ -f "$jars/.complete" ]]; then return; fi
  command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven)"
  log "assembling Kafka $kafka_version jars from Maven Central into $jars"
  rm -rf "$jars" && mkdir -p "$jars"
  mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$jars" >&2
  touch "$jars/.complete"
}

kafka_nodes_file="$state/kafka/nodes"
# Node N listens on 127.0.0.1:(N*10000 + 9092 + offset), its controller on the next port. A
# second cluster (a fault test's own) runs beside the shared one with its own state dir and
# EDGE_KAFKA_PORT_OFFSET (e.g. 100: 19192, 29192, 39192).
port_offset=${EDGE_KAFKA_PORT_OFFSET:-0}
kport() { echo $(( $1 * 10000 + 9092 + port_offset )); }
cport() { echo $(( $1 * 10000 + 9093 + port_offset )); }

kafka_props() { # node_id nodes dir
  local id=$1 nodes=$2 dir=$3 port cport rf=1 isr=1
  port=$(kport "$id"); cport=$(cport "$id")
  if ((nodes == 3)); then rf=3; isr=2; fi
  cat <<PROPS
process.roles=broker,controller
node.id=$id
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=2097152
auto.create.topics.enable=false
PROPS
  if ((nodes == 3)); then
    echo "controller.quorum.voters=1@127.0.0.1:$(cport 1),2@127.0.0.1:$(cport 2),3@127.0.0.1:$(cport 3)"
  else
    echo "controller.quorum.bootstrap.servers=127.0.0.1:$(cport 1)"
  fi
}

kafka_log4j() {
  cat <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
XML
}

kafka_bootstrap() {
  local nodes=$1 list=()
  for id in $(seq 1 "$nodes"); do list+=("127.0.0.1:$(kport "$id")"); done
  (IFS=,; echo "${list[*]}")
}

kafka_start() {
  local nodes=$1
  command -v java >/dev/null || die "java not found: install a JDK 17+ (apt-get install openjdk-17-jre-headless)"
  if [[ -f "$kafka_nodes_file" ]] && pid_alive "$state/kafka/node1/pid"; then
    local running; running=$(cat "$kafka_nodes_file")
    ((running == nodes)) || die "Kafka runs with $running node(s); stop it before starting $nodes"
    # Restart any node that died (a test may have killed one); the others keep running.
  fi
  kafka_jars
  mkdir -p "$state/kafka"
  # One cluster id for the life of .services/kafka: a restarted node keeps its data and rejoins
  # (broker-restart fault tests rely on that). `clean` throws it all away.
  [[ -f "$state/kafka/cluster-id" ]] \
    || java -cp "$jars/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 > "$state/kafka/cluster-id"
  local cluster_id; cluster_id=$(cat "$state/kafka/cluster-id")
  echo "$nodes" > "$kafka_nodes_file"
  kafka_log4j > "$state/kafka/log4j2.xml"
  local t0=$SECONDS started=()
  for id in $(seq 1 "$nodes"); do
    local dir="$state/kafka/node$id" port; port=$(kport "$id")
    if pid_alive "$dir/pid"; then continue; fi
    require_free "$port" "Kafka node $id"
    require_free "$(cport "$id")" "Kafka node $id (controller)"
    mkdir -p "$dir"
    kafka_props "$id" "$nodes" "$dir" > "$dir/server.properties"
    if [[ ! -f "$dir/data/meta.properties" ]]; then
      rm -rf "$dir/data"
      local quorum=(); ((nodes == 1)) && quorum=(--standalone)
      java -cp "$jars/*" kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$dir/server.properties" "${quorum[@]}" > "$dir/format.log" 2>&1 \
        || { cat "$dir/format.log" >&2; die "formatting Kafka node $id failed"; }
    fi
    # New process group (setsid), so a test's Ctrl-C does not reach the broker.
    setsid java -Xms256m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Dlog4j2.configurationFile="$state/kafka/log4j2.xml" \
      -cp "$jars/*" kafka.Kafka "$dir/server.properties" \
      > "$dir/server.log" 2>&1 < /dev/null &
    echo $! > "$dir/pid"
    started+=("$id")
  done
  for id in "${started[@]}"; do
    wait_port "$(kport "$id")" "$ready_timeout" "Kafka node $id" \
      "$state/kafka/node$id/server.log" "$state/kafka/node$id/pid"
  done
  if ((${#started[@]})); then
    log "Kafka $kafka_version ready on $(kafka_bootstrap "$nodes") in $((SECONDS - t0)) s (logs: $state/kafka/node*/server.log)"
  else
    log "Kafka already running on $(kafka_bootstrap "$nodes")"
  fi
}

kafka_stop() { # signal: TERM or KILL; node id, or empty for all
  local nodes=1 ids
  [[ -f "$kafka_nodes_file" ]] && nodes=$(cat "$kafka_nodes_file")
  ids=${2:-$(seq 1 "$nodes")}
  for id in $ids; do
    local pidfile="$state/kafka/node$id/pid"
    if [[ $1 == KILL ]]; then
      if pid_alive "$pidfile"; then kill -9 "$(cat "$pidfile")"; log "killed Kafka node $id (SIGKILL)"; fi
      rm -f "$pidfile"
    else
      stop_pid "$pidfile" "Kafka node $id"
    fi
  done
}

# ---------------------------------------------------------------- secured Kafka (start --secure)

# A second, separate single-node broker: TLS everywhere, SCRAM-SHA-512 and mTLS clients, ACLs.
# Its ports move with EDGE_KAFKA_PORT_OFFSET like the others.
secure_dir="$state/kafka-secure"
secure_clients="$secure_dir/clients"
secure_sasl_port=$((19095 + port_offset))
secure_mtls_port=$((19096 + port_offset))
secure_controller_port=$((19097 + port_offset))
secure_internal_port=$((19098 + port_offset))
secure_principals=(agent-a agent-b consumer admin)

# A Kafka command-line tool from the same jars (small heap, quick start).
kafka_tool() { # class args...
  local class=$1; shift
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$jars/*" "$class" "$@"
}

make_ca() { # dir common-name
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$2" \
    -keyout "$1/ca.key" -out "$1/ca.crt" 2>/dev/null || die "openssl could not make the CA $2"
}

# A certificate CN=<cn> signed by the CA in <ca-dir>: <out>.crt and <out>.key (unencrypted
# PKCS#8 PEM, mode 0600). Server certificates name 127.0.0.1 and localhost.
make_cert() { # ca-dir cn out server|client
  local ca=$1 cn=$2 out=$3 ext
  ext=$(mktemp)
  if [[ $4 == server ]]; then
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' > "$ext"
  else
    printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > "$ext"
  fi
  (umask 077 && openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" \
    -keyout "$out.key" -out "$out.csr" 2>/dev/null) || die "openssl could not make a key for $cn"
  openssl x509 -req -in "$out.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" -CAcreateserial \
    -days 30 -extfile "$ext" -out "$out.crt" 2>/dev/null || die "openssl could not sign $cn"
  rm -f "$out.csr" "$ext"
  chmod 600 "$out.key"
  chmod 644 "$out.crt"
}

random_secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# CA, broker keystore, client certificates and SCRAM passwords: made once per data directory
# (the SCRAM credentials live in the formatted metadata).
kafka_secure_material() {
  local tls="$secure_dir/tls" rogue="$secure_dir/rogue-ca"
  command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
  mkdir -p "$tls" "$rogue" "$secure_clients"
  chmod 700 "$secure_dir" "$secure_clients"
  make_ca "$tls" "edge-ingest secured Kafka test CA"
  make_cert "$tls" broker "$tls/broker" server
  random_secret > "$tls/keystore.password"
  chmod 600 "$tls/keystore.password" "$tls/ca.key"
  openssl pkcs12 -export -in "$tls/broker.crt" -inkey "$tls/broker.key" -certfile "$tls/ca.crt" \
    -name broker -passout "file:$tls/keystore.password" -out "$tls/broker.p12" 2>/dev/null \
    || die "openssl could not write the broker keystore"
  chmod 600 "$tls/broker.p12"
  for name in "${secure_principals[@]}"; do
    make_cert "$tls" "$name" "$secure_clients/$name" client
    (umask 077 && random_secret > "$secure_clients/$name.password")
  done
  # Signed by a CA the broker does not trust: for "unknown CA refused" tests.
  make_ca "$rogue" "edge-ingest rogue test CA"
  make_cert "$rogue" agent-a "$secure_clients/rogue" client
  chmod 700 "$rogue"
  chmod 600 "$rogue/ca.key"
  local admin_password; admin_password=$(cat "$secure_clients/admin.password")
  (umask 077 && cat > "$secure_dir/admin.properties" <<PROPS
# The secured test broker's super user, over SASL_SSL (bootstrap 127.0.0.1:$secure_sasl_port).
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_password";
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.crt
PROPS
  )
}

kafka_secure_props() {
  local tls="$secure_dir/tls"
  cat <<PROPS
process.roles=broker,controller
node.id=1
listeners=SASL_SSL://127.0.0.1:$secure_sasl_port,MTLS://127.0.0.1:$secure_mtls_port,CONTROLLER://127.0.0.1:$secure_controller_port,INTERNAL://127.0.0.1:$secure_internal_port
advertised.listeners=SASL_SSL://127.0.0.1:$secure_sasl_port,MTLS://127.0.0.1:$secure_mtls_port,CONTROLLER://127.0.0.1:$secure_controller_port,INTERNAL://127.0.0.1:$secure_internal_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:SSL,INTERNAL:SSL
controller.quorum.bootstrap.servers=127.0.0.1:$secure_controller_port
# TLS on every listener; a client certificate is required everywhere but on SASL_SSL. The broker
# talks to its controller with its own certificate (CN=broker: User:broker, a super user).
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$(cat "$tls/keystore.password")
ssl.key.password=$(cat "$tls/keystore.password")
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.crt
ssl.client.auth=required
listener.name.sasl_ssl.ssl.client.auth=none
# CN=agent-a is User:agent-a, the same principal as the SCRAM user agent-a.
ssl.principal.mapping.rules=RULE:^CN=([^,]+)\$/\$1/,DEFAULT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:broker
log.dirs=$secure_dir/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=2097152
auto.create.topics.enable=false
PROPS
}

# The ACLs of the secured broker, one AclCommand --add per line (PREFIXED patterns: a test's
# topic edge.partials.<unique> is covered by edge.partials). Adding an existing ACL is a no-op.
kafka_secure_acls() {
  local agents=(--allow-principal User:agent-a --allow-principal User:agent-b)
  local c=(--allow-principal User:consumer)
  cat <<ACLS
${agents[*]} --operation Write --operation Describe --operation Create --topic edge.partials --topic edge.late --topic edge.dead-letters --topic edge.readings --topic edge.progress
${agents[*]} --operation Read --topic edge.progress
--allow-principal User:agent-a --operation Write --operation Describe --transactional-id edge-agent.gw-a
--allow-principal User:agent-a --operation Read --operation Describe --group edge-agent.gw-a
--allow-principal User:agent-b --operation Write --operation Describe --transactional-id edge-agent.gw-b
--allow-principal User:agent-b --operation Read --operation Describe --group edge-agent.gw-b
${c[*]} --operation Read --operation Describe --topic edge.partials
${c[*]} --operation Read --operation Write --operation Describe --operation Create --operation DescribeConfigs --topic edge.finals --topic edge.consumer
${c[*]} --operation Read --operation Describe --group edge-consumer
${c[*]} --operation Write --operation Describe --transactional-id edge-consumer
ACLS
}

kafka_secure_apply_acls() {
  local line n=0 pids=() logs=() failed=0
  # In parallel: each is a JVM start; one after the other they take half a minute.
  while read -r line; do
    n=$((n + 1))
    local out="$secure_dir/acl-$n.log"
    # shellcheck disable=SC2086 # the line is a list of words
    kafka_tool org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$secure_sasl_port" \
      --command-config "$secure_dir/admin.properties" --add --force \
      --resource-pattern-type prefixed $line > "$out" 2>&1 &
    pids+=($!); logs+=("$out")
  done < <(kafka_secure_acls)
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then cat "${logs[$i]}" >&2; failed=1; fi
  done
  ((failed == 0)) || die "adding the secured broker's ACLs failed (logs: $secure_dir/acl-*.log)"
  rm -f "${logs[@]}"
}

kafka_secure_start() {
  command -v java >/dev/null || die "java not found: install a JDK 17+ (apt-get install openjdk-17-jre-headless)"
  if pid_alive "$secure_dir/pid"; then
    log "secured Kafka already running on SASL_SSL 127.0.0.1:$secure_sasl_port, mTLS :$secure_mtls_port"
    return
  fi
  kafka_jars
  for port in "$secure_sasl_port" "$secure_mtls_port" "$secure_controller_port" "$secure_internal_port"; do
    require_free "$port" "the secured Kafka"
  done
  local t0=$SECONDS
  if [[ ! -f "$secure_dir/data/meta.properties" || ! -f "$secure_dir/admin.properties" ]]; then
    rm -rf "$secure_dir"
    mkdir -p "$secure_dir"
    kafka_secure_material
    kafka_tool kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 > "$secure_dir/cluster-id"
    kafka_secure_props > "$secure_dir/server.properties"
    chmod 600 "$secure_dir/server.properties"
    local scram=()
    for name in "${secure_principals[@]}"; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=$name,password=$(cat "$secure_clients/$name.password")]")
    done
    kafka_tool kafka.tools.StorageTool format -t "$(cat "$secure_dir/cluster-id")" \
      -c "$secure_dir/server.properties" --standalone "${scram[@]}" > "$secure_dir/format.log" 2>&1 \
      || { cat "$secure_dir/format.log" >&2; die "formatting the secured Kafka failed"; }
  else
    kafka_secure_props > "$secure_dir/server.properties"
  fi
  kafka_log4j > "$secure_dir/log4j2.xml"
  setsid java -Xms256m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$secure_dir/log4j2.xml" \
    -cp "$jars/*" kafka.Kafka "$secure_dir/server.properties" \
    > "$secure_dir/server.log" 2>&1 < /dev/null &
  echo $! > "$secure_dir/pid"
  wait_port "$secure_sasl_port" "$ready_timeout" "the secured Kafka" "$secure_dir/server.log" "$secure_dir/pid"
  wait_port "$secure_mtls_port" "$ready_timeout" "the secured Kafka (mTLS)" "$secure_dir/server.log" "$secure_dir/pid"
  kafka_secure_apply_acls
  log "secured Kafka $kafka_version ready on SASL_SSL 127.0.0.1:$secure_sasl_port, mTLS :$secure_mtls_port, ACLs added, in $((SECONDS - t0)) s (log: $secure_dir/server.log)"
}

kafka_secure_stop() { # TERM or KILL
  if [[ $1 == KILL ]]; then
    if pid_alive "$secure_dir/pid"; then kill -9 "$(cat "$secure_dir/pid")"; log "killed the secured Kafka (SIGKILL)"; fi
    rm -f "$secure_dir/pid"
  else
    stop_pid "$secure_dir/pid" "the secured Kafka"
  fi
}

# ---------------------------------------------------------------- Mosquitto

mqtt_tls() {
  local tls="$state/mqtt/tls"
  [[ -f "$tls/server.crt" ]] && return
  command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=edge-ingest test CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$tls/ext.cnf"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 30 -extfile "$tls/ext.cnf" -out "$tls/server.crt" 2>/dev/null
  chmod 644 "$tls"/*
}

mqtt_conf() {
  local dir="$state/mqtt"
  cat <<CONF
# Test broker for edge-ingest. The queue limits are set on purpose: Mosquitto's default
# max_queued_messages (1000) silently drops QoS 1 messages for a subscriber that falls behind,
# which is exactly what an agent applying backpressure is. 0 = no limit (bounded by memory).
# Run as whoever starts it: started as root, Mosquitto would otherwise switch to user
# "mosquitto", which cannot reach a checkout under a private directory (mktemp -d is 0700).
user $(id -un)
per_listener_settings true
persistence true
persistence_location $dir/data/
autosave_interval 1
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 20
log_dest file $dir/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true

listener $mqtt_port 127.0.0.1
allow_anonymous true

listener $mqtts_port 127.0.0.1
allow_anonymous true
cafile $dir/tls/ca.crt
certfile $dir/tls/server.crt
keyfile $dir/tls/server.key

# Username and password required (user edge-test, password in $dir/password).
listener $mqtt_auth_port 127.0.0.1
allow_anonymous false
password_file $dir/passwd
CONF
  if ((secure)); then
    cat <<CONF

# (start --secure) TLS with a client certificate required, signed by the CA above; the
# certificate's CN is the username. No certificate, or one from another CA: refused.
listener $mqtt_mtls_port 127.0.0.1
allow_anonymous false
cafile $dir/tls/ca.crt
certfile $dir/tls/server.crt
keyfile $dir/tls/server.key
require_certificate true
use_identity_as_username true
CONF
  fi
}

# Client certificates for the mTLS listener: CN=edge-test-client signed by the CA of mqtt_tls,
# and a rogue one (same CN) signed by a CA Mosquitto does not know.
mqtt_mtls_certs() {
  local tls="$state/mqtt/tls"
  [[ -f "$tls/client.crt" && -f "$tls/rogue.crt" ]] && return
  mkdir -p "$tls/rogue-ca"
  make_cert "$tls" edge-test-client "$tls/client" client
  make_ca "$tls/rogue-ca" "edge-ingest rogue MQTT test CA"
  make_cert "$tls/rogue-ca" edge-test-client "$tls/rogue" client
  chmod 600 "$tls/rogue-ca/ca.key"
}

# Whether the running Mosquitto has the mTLS listener.
mqtt_has_mtls() { grep -q "^listener $mqtt_mtls_port " "$state/mqtt/mosquitto.conf" 2>/dev/null; }

mqtt_start() {
  local dir="$state/mqtt"
  if pid_alive "$dir/pid"; then
    if ((secure)) && ! mqtt_has_mtls; then
      # The listener is added by a restart (Mosquitto starts empty anyway).
      log "restarting Mosquitto to add the mTLS listener on $mqtt_mtls_port"
      stop_pid "$dir/pid" "Mosquitto"
    else
      log "Mosquitto already running on $mqtt_port/$mqtts_port$(mqtt_has_mtls && echo ", mTLS $mqtt_mtls_port")"
      return
    fi
  fi
  command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] \
    || die "mosquitto not found: apt-get install mosquitto"
  local bin; bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  require_free "$mqtt_port" "Mosquitto"
  require_free "$mqtts_port" "Mosquitto (TLS)"
  require_free "$mqtt_auth_port" "Mosquitto (password)"
  ((secure == 0)) || require_free "$mqtt_mtls_port" "Mosquitto (mTLS)"
  rm -rf "$dir/data" && mkdir -p "$dir/data"
  mqtt_tls
  ((secure == 0)) || mqtt_mtls_certs
  command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd not found: apt-get install mosquitto"
  (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' > "$dir/password")
  rm -f "$dir/passwd"
  mosquitto_passwd -b -c "$dir/passwd" edge-test "$(cat "$dir/password")" >/dev/null 2>&1 \
    || die "mosquitto_passwd could not write $dir/passwd"
  mqtt_conf > "$dir/mosquitto.conf"
  : > "$dir/mosquitto.log"
  local t0=$SECONDS
  setsid "$bin" -c "$dir/mosquitto.conf" > "$dir/stdout.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  wait_port "$mqtt_port" 20 "Mosquitto" "$dir/mosquitto.log" "$dir/pid"
  wait_port "$mqtts_port" 20 "Mosquitto (TLS)" "$dir/mosquitto.log" "$dir/pid"
  wait_port "$mqtt_auth_port" 20 "Mosquitto (password)" "$dir/mosquitto.log" "$dir/pid"
  ((secure == 0)) || wait_port "$mqtt_mtls_port" 20 "Mosquitto (mTLS)" "$dir/mosquitto.log" "$dir/pid"
  log "Mosquitto $("$bin" -h 2>/dev/null | sed -n 's/^mosquitto version //p') ready on 127.0.0.1:$mqtt_port, TLS :$mqtts_port and password :$mqtt_auth_port$( ((secure == 0)) || echo ", mTLS :$mqtt_mtls_port") in $((SECONDS - t0)) s (log: $dir/mosquitto.log)"
}

# ---------------------------------------------------------------- env and status

write_env() {
  local nodes=1
  [[ -f "$kafka_nodes_file" ]] && nodes=$(cat "$kafka_nodes_file")
  mkdir -p "$state"
  cat > "$state/env" <<ENV
# Written by tests/services/services.sh; source it: . .services/env
export KAFKA_BOOTSTRAP=$(kafka_bootstrap "$nodes")
export MQTT_URL=mqtt://127.0.0.1:$mqtt_port
export MQTTS_URL=mqtts://127.0.0.1:$mqtts_port
export MQTT_CA=$state/mqtt/tls/ca.crt
export MQTT_AUTH_URL=mqtt://127.0.0.1:$mqtt_auth_port
export MQTT_AUTH_USER=edge-test
export MQTT_AUTH_PASSWORD_FILE=$state/mqtt/password
ENV
  if pid_alive "$secure_dir/pid"; then
    cat >> "$state/env" <<ENV
# The secured broker (start --secure)
export KAFKA_SECURE_SASL=127.0.0.1:$secure_sasl_port
export KAFKA_SECURE_MTLS=127.0.0.1:$secure_mtls_port
export KAFKA_SECURE_CA=$secure_dir/tls/ca.crt
export KAFKA_SECURE_CLIENTS=$secure_clients
export KAFKA_SECURE_ADMIN_CONFIG=$secure_dir/admin.properties
ENV
  fi
  if pid_alive "$state/mqtt/pid" && mqtt_has_mtls; then
    cat >> "$state/env" <<ENV
# Mosquitto's listener that requires a client certificate (start --secure)
export MQTT_MTLS_URL=mqtts://127.0.0.1:$mqtt_mtls_port
export MQTT_MTLS_CA=$state/mqtt/tls/ca.crt
export MQTT_MTLS_CERT=$state/mqtt/tls/client.crt
export MQTT_MTLS_KEY=$state/mqtt/tls/client.key
export MQTT_MTLS_ROGUE_CERT=$state/mqtt/tls/rogue.crt
export MQTT_MTLS_ROGUE_KEY=$state/mqtt/tls/rogue.key
ENV
  fi
}

status() {
  local nodes=1 rc=0
  [[ -f "$kafka_nodes_file" ]] && nodes=$(cat "$kafka_nodes_file")
  for id in $(seq 1 "$nodes"); do
    local port; port=$(kport "$id")
    if pid_alive "$state/kafka/node$id/pid" && port_open "$port"; then
      echo "kafka node $id: up on 127.0.0.1:$port (pid $(cat "$state/kafka/node$id/pid"), log $state/kafka/node$id/server.log)"
    else echo "kafka node $id: down"; rc=1; fi
  done
  # The secured broker is optional (start --secure): only one that died on its own (its pid file
  # is still there) makes status fail; stopped or killed by this script, it is just listed.
  if pid_alive "$secure_dir/pid" && port_open "$secure_sasl_port" && port_open "$secure_mtls_port"; then
    echo "kafka secure: up on SASL_SSL 127.0.0.1:$secure_sasl_port, mTLS :$secure_mtls_port (pid $(cat "$secure_dir/pid"), log $secure_dir/server.log)"
  elif [[ -f "$secure_dir/pid" ]]; then echo "kafka secure: down (log $secure_dir/server.log)"; rc=1
  elif [[ -d "$secure_dir/data" ]]; then echo "kafka secure: stopped (start --secure restarts it with its data)"
  else echo "kafka secure: not started (start --secure)"; fi
  if pid_alive "$state/mqtt/pid" && port_open "$mqtt_port"; then
    echo "mosquitto: up on 127.0.0.1:$mqtt_port, TLS :$mqtts_port, password :$mqtt_auth_port$(mqtt_has_mtls && echo ", mTLS :$mqtt_mtls_port") (pid $(cat "$state/mqtt/pid"), log $state/mqtt/mosquitto.log)"
  else echo "mosquitto: down"; rc=1; fi
  return $rc
}

cmd=${1:-status}; shift || true
if [[ $cmd == console-consumer || $cmd == console-producer ]]; then
  # Its arguments are the tool's own (--bootstrap-server, --topic, --isolation-level, ...).
  kafka_jars
  class=org.apache.kafka.tools.consumer.ConsoleConsumer
  [[ $cmd == console-producer ]] && class=org.apache.kafka.tools.ConsoleProducer
  exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$jars/*" "$class" "$@"
fi
if [[ $cmd == acl || $cmd == topics || $cmd == configs ]]; then
  # Kafka's kafka-acls / kafka-topics as the secured broker's admin; the arguments are the tool's
  # own (--add/--remove/--list, --allow-principal, --topic, --create, ...).
  [[ -f "$secure_dir/admin.properties" ]] || die "no secured broker in $state: run \`$0 start --secure\`"
  pid_alive "$secure_dir/pid" || die "the secured broker is not running: run \`$0 start --secure\`"
  kafka_jars
  class=org.apache.kafka.tools.AclCommand
  [[ $cmd == topics ]] && class=org.apache.kafka.tools.TopicCommand
  [[ $cmd == configs ]] && class=kafka.admin.ConfigCommand
  exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$jars/*" "$class" \
    --bootstrap-server "127.0.0.1:$secure_sasl_port" --command-config "$secure_dir/admin.properties" "$@"
fi
if [[ $cmd == secure-config ]]; then
  [[ -f "$secure_dir/admin.properties" ]] || die "no secured broker in $state: run \`$0 start --secure\`"
  echo "$secure_dir/admin.properties"
  exit 0
fi
what=all nodes="" node="" secure=0
while (($#)); do
  case $1 in
    kafka|mqtt|all|secure) what=$1 ;;
    --secure) secure=1 ;;
    --nodes) nodes=${2:?--nodes needs 1 or 3}; shift ;;
    --nodes=*) nodes=${1#--nodes=} ;;
    --node) node=${2:?--node needs a node id}; shift ;;
    *) die "unknown argument: $1 (see the header of $0)" ;;
  esac
  shift
done
# Without --nodes: as many as run now, else 1.
[[ -n $nodes ]] || { [[ -f "$kafka_nodes_file" ]] && nodes=$(cat "$kafka_nodes_file") || nodes=1; }
[[ $nodes == 1 || $nodes == 3 ]] || die "--nodes must be 1 or 3"

case $cmd in
  start)
    mkdir -p "$state"
    [[ $what == secure ]] && secure=1
    [[ $what == mqtt || $what == secure ]] || kafka_start "$nodes"
    if ((secure)) && [[ $what != mqtt ]]; then kafka_secure_start; fi
    [[ $what == kafka ]] || mqtt_start
    write_env
    log "addresses in $state/env"
    ;;
  stop)
    [[ $what == mqtt || $what == secure ]] || kafka_stop TERM "$node"
    [[ $what == all || $what == secure ]] && kafka_secure_stop TERM
    [[ $what == kafka || $what == secure ]] || stop_pid "$state/mqtt/pid" "Mosquitto"
    ;;
  kill)
    if [[ $what == secure ]]; then kafka_secure_stop KILL
    else
      [[ $what == kafka ]] || die "kill takes: kafka [--node N] | secure"
      kafka_stop KILL "$node"
    fi
    ;;
  clean)
    kafka_stop TERM
    kafka_secure_stop TERM
    stop_pid "$state/mqtt/pid" "Mosquitto"
    rm -rf "$state/kafka" "$state/kafka-secure" "$state/mqtt" "$state/env"
    log "removed broker data in $state"
    ;;
  status) status ;;
  env) cat "$state/env" ;;
  *) die "unknown command: $cmd (start|stop|kill|clean|status|env|console-consumer|console-producer|acl|topics|secure-config)" ;;
esac
