#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine, skipping what is there:
# Mosquitto, kcat, jq, OpenSSL, a JDK 17+ and Maven (for the Kafka test broker), socat and a Python
# virtualenv with pymodbus (the Modbus peer of the tests, see tests/peers/), a second one with
# Google's protobuf and grpcio-tools (the Sparkplug B payload producer of the tests), and the
# Rust components and targets the checks use. Needs root (or sudo) for apt-get.
#
# The virtualenvs live in the project's cache (EDGE_CACHE, default ~/.cache/edge-ingest, as
# Kafka's jars do): $EDGE_CACHE/pymodbus-<version>/bin/python and
# $EDGE_CACHE/sparkplug-protobuf-<version>/bin/python, made once and reused; the tests find them
# there (edge_tests::modbus, edge_tests::sparkplug).
#
#   scripts/install-deps.sh             everything the tests need
#   scripts/install-deps.sh --runtime   only what the demo needs (brokers and a C toolchain)
set -euo pipefail
runtime_only=0
[[ ${1:-} == --runtime ]] && runtime_only=1

need=()
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
command -v openssl >/dev/null || need+=(openssl)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v cc >/dev/null || need+=(build-essential)
command -v cmake >/dev/null || need+=(cmake)
if ((!runtime_only)); then
  command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
  command -v kcat >/dev/null || need+=(kcat)
  command -v systemd-analyze >/dev/null || need+=(systemd)   # verifies the unit in deploy/
  command -v socat >/dev/null || need+=(socat)                # pty pairs for the Modbus RTU test
  command -v jq >/dev/null || need+=(jq)                      # parses finals in the engines test
  /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
fi

if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  echo "install-deps: apt-get install ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

if ((!runtime_only)) && command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
  rustup target list --installed | grep -qx thumbv7em-none-eabihf \
    || rustup target add thumbv7em-none-eabihf >&2
fi

# The Modbus peer: pymodbus in a virtualenv of its own (pinned; Debian's python3 is enough).
pymodbus_version=3.16.1
if ((!runtime_only)); then
  cache="${EDGE_CACHE:-$HOME/.cache/edge-ingest}"
  venv="$cache/pymodbus-$pymodbus_version"
  if ! "$venv/bin/python" -c 'import pymodbus, serial' 2>/dev/null; then
    echo "install-deps: pymodbus $pymodbus_version into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "pymodbus==$pymodbus_version" "pyserial==3.5" >&2
  fi
fi

# The Sparkplug B producer: Google's protobuf, and protoc from grpcio-tools (a wheel: no apt
# protobuf-compiler needed), pinned, in a virtualenv of its own.
protobuf_version=6.33.1
if ((!runtime_only)); then
  cache="${EDGE_CACHE:-$HOME/.cache/edge-ingest}"
  venv="$cache/sparkplug-protobuf-$protobuf_version"
  if ! "$venv/bin/python" -c 'import google.protobuf, grpc_tools.protoc' 2>/dev/null; then
    echo "install-deps: protobuf $protobuf_version and grpcio-tools into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "protobuf==$protobuf_version" "grpcio-tools==1.76.0" "grpcio==1.76.0" >&2
  fi
fi

# cargo-deny (scripts/deny.sh: licences, sources, advisories), pinned, built once.
cargo_deny_version=0.20.2
if ((!runtime_only)) && ! cargo deny --version 2>/dev/null | grep -q "$cargo_deny_version"; then
  echo "install-deps: cargo-deny $cargo_deny_version (cargo install, a few minutes)" >&2
  cargo install --quiet --locked cargo-deny --version "$cargo_deny_version" >&2
fi

# The RustSec advisory database for cargo-deny: GitHub is not reachable from the machines here,
# so it is copied from a local snapshot when the machine has one (EDGE_ADVISORY_DB_SOURCE, a git
# repository; default: the library's mirror). Without one, scripts/deny.sh says it skipped
# advisories.
advisory_source=${EDGE_ADVISORY_DB_SOURCE:-/work/.mirror/rustsec+advisory-db/repo}
if ((!runtime_only)) && [[ -d $advisory_source ]]; then
  cache="${EDGE_CACHE:-$HOME/.cache/edge-ingest}"
  # cargo-deny's directory name for the default database URL (github.com/rustsec/advisory-db).
  db="$cache/advisory-db/advisory-db-3157b0e258782691"
  if [[ ! -d $db/.git ]] || [[ $(git -C "$db" rev-parse HEAD) != $(git -C "$advisory_source" rev-parse HEAD) ]]; then
    echo "install-deps: RustSec advisory database from $advisory_source" >&2
    rm -rf "$db"
    mkdir -p "$(dirname "$db")"
    git clone --quiet "$advisory_source" "$db" >&2
  fi
fi
