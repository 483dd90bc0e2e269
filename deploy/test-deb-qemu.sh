#!/usr/bin/env bash
# The gateway packages (arm64, armhf) built, unpacked and run under qemu-user:
#   1. deploy/cross.sh ARCH --deb: the release build for the architecture and its .deb;
#   2. the package says the right architecture and holds what the amd64 package installs (the
#      binary for that architecture, the configuration, the unit, the sysusers file, the docs);
#   3. the packaged binary, unpacked with dpkg-deb, passes deploy/smoke-qemu.sh: check-config,
#      100 MQTT readings into Kafka exactly once, /readyz, /metrics, inspect, a clean SIGTERM.
#
#   deploy/test-deb-qemu.sh aarch64|armv7
#
# What this does not do: run the maintainer scripts (they are the same `sh` scripts for every
# architecture, and deploy/test-deb.sh runs them by installing the amd64 package with dpkg), or
# boot systemd. Needs the services running (tests/services/services.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
arch="${1:-}"
case "$arch" in
aarch64) target=aarch64-unknown-linux-gnu debarch=arm64 elf="ARM aarch64" ;;
armv7) target=armv7-unknown-linux-gnueabihf debarch=armhf elf="ARM, EABI5" ;;
*) echo "usage: $0 aarch64|armv7" >&2; exit 2 ;;
esac
command -v file >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq file; }

bash deploy/cross.sh "$arch" --deb
deb="$(ls -t "${CARGO_TARGET_DIR:-target}/$target"/debian/edge-agent_*_"$debarch".deb | head -1)"
echo "== $deb ($(stat -c %s "$deb") bytes)"
[ "$(dpkg-deb --field "$deb" Architecture)" = "$debarch" ] \
    || { echo "package architecture is $(dpkg-deb --field "$deb" Architecture), not $debarch" >&2; exit 1; }

unpacked="$(mktemp -d)"
trap 'rm -rf "$unpacked"' EXIT
dpkg-deb -x "$deb" "$unpacked"
unit="$unpacked/lib/systemd/system/edge-agent.service"
[ -f "$unit" ] || unit="$unpacked/usr/lib/systemd/system/edge-agent.service"
for f in usr/bin/edge-agent etc/edge-agent/agent.toml usr/lib/sysusers.d/edge-agent.conf \
    usr/share/doc/edge-agent/OPERATIONS.md; do
    [ -e "$unpacked/$f" ] || { echo "the package lacks /$f" >&2; exit 1; }
done
[ -f "$unit" ] || { echo "the package lacks the unit" >&2; exit 1; }
cmp "$unit" deploy/systemd/edge-agent.service
# (Not `tee /dev/stderr`: that reopens a log file CI redirects into, truncating it.)
kind="$(file "$unpacked/usr/bin/edge-agent")"
echo "$kind"
grep -q "$elf" <<<"$kind" || { echo "the packaged binary is not $elf" >&2; exit 1; }
[ "$(stat -c %a "$unpacked/usr/bin/edge-agent")" = 755 ]
[ "$(stat -c %a "$unpacked/etc/edge-agent/agent.toml")" = 640 ]

bash deploy/smoke-qemu.sh "$arch" "$unpacked/usr/bin/edge-agent"
echo "package $debarch: OK"
