#!/usr/bin/env bash
# Release build of edge-agent for a gateway architecture, with Debian's cross compilers.
#
#   deploy/cross.sh aarch64|armv7 [--deb]
#
# Self-contained: installs the cross toolchain (apt, needs root or sudo) and the rustup target
# when missing. Prints the build time and the stripped size; the binary is
# target/<triple>/release/edge-agent. With --deb it also builds the Debian package for that
# architecture (cargo-deb, installed when missing).
#
# Why the environment below: the bundled librdkafka's ./configure reads the plain CC, CXX, AR,
# LD, NM, RANLIB and STRIP (not only cc-rs's CC_<target>), so they point at the cross tools; the
# host's build scripts keep the host compiler through CC_x86_64_unknown_linux_gnu. After
# changing any of them, `cargo clean -p rdkafka-sys --target <triple> --release`.
set -euo pipefail

arch="${1:-}"
case "$arch" in
aarch64) target=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu ;;
armv7) target=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf ;;
*)
    echo "usage: $0 aarch64|armv7 [--deb]" >&2
    exit 2
    ;;
esac
deb="${2:-}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v "$gnu-gcc" >/dev/null || ! command -v "$gnu-g++" >/dev/null; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "gcc-$gnu" "g++-$gnu" make perl
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

export CC="$gnu-gcc" CXX="$gnu-g++" AR="$gnu-ar" LD="$gnu-ld" NM="$gnu-nm" \
    RANLIB="$gnu-ranlib" STRIP="$gnu-strip"
export "CC_${target//-/_}=$gnu-gcc" "CXX_${target//-/_}=$gnu-g++" "AR_${target//-/_}=$gnu-ar"
upper="$(echo "$target" | tr 'a-z-' 'A-Z_')"
export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc"
export CC_x86_64_unknown_linux_gnu=gcc CXX_x86_64_unknown_linux_gnu=g++ AR_x86_64_unknown_linux_gnu=ar

start=$(date +%s)
cargo build --release --locked -p edge-agent --bin edge-agent --target "$target"
took=$(($(date +%s) - start))
bin="${CARGO_TARGET_DIR:-target}/$target/release/edge-agent"
"$gnu-strip" -o "$bin.stripped" "$bin"
size=$(stat -c %s "$bin.stripped")
echo "built $bin in ${took}s; stripped: $size bytes ($((size / 1024)) KiB)"
file "$bin" 2>/dev/null || true

if [ "$deb" = "--deb" ]; then
    command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
    start=$(date +%s)
    cargo deb -p edge-agent --no-build --target "$target" --no-strip
    echo "packaged in $(($(date +%s) - start))s: $(ls -t "${CARGO_TARGET_DIR:-target}/$target"/debian/*.deb | head -1)"
fi
