#!/usr/bin/env bash
# Licences, sources and advisories of every dependency (cargo-deny, rules in deny.toml), and the
# project's own licence: LICENSE is the Apache License 2.0 text and every workspace crate says
# `license = "Apache-2.0"` (Cargo.toml). Exits non-zero on any finding.
#
#   scripts/deny.sh
#
# Advisories need the RustSec database (github.com/rustsec/advisory-db), which the machines here
# cannot fetch. scripts/install-deps.sh puts a copy in $EDGE_CACHE/advisory-db when the machine
# holds a snapshot of it (EDGE_ADVISORY_DB_SOURCE, a git repository); its date is printed. With
# no copy the advisories check is skipped with a line saying so, and the rest still runs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cache=${EDGE_CACHE:-$HOME/.cache/edge-ingest}
status=0

# The project's licence: the file and every crate's manifest agree.
if head -3 LICENSE | grep -q "Apache License" && grep -q "Version 2.0, January 2004" LICENSE; then
  echo "deny: LICENSE is the Apache License 2.0"
else
  echo "deny: LICENSE is not the Apache License 2.0 text that Cargo.toml declares" >&2
  status=1
fi
mismatched=$(cargo metadata --format-version 1 --locked --no-deps \
  | jq -r '.packages[] | select(.license != "Apache-2.0") | "\(.name): \(.license)"')
if [[ -n $mismatched ]]; then
  echo "deny: workspace crates whose licence is not LICENSE's (Apache-2.0): $mismatched" >&2
  status=1
else
  echo "deny: every workspace crate is Apache-2.0, as LICENSE"
fi

if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "deny: cargo-deny is missing (scripts/install-deps.sh installs it)" >&2
  exit 1
fi
db=$cache/advisory-db
export EDGE_ADVISORY_DB_PATH=$db
# cargo-deny reads the metadata of every platform's dependencies (windows-sys too) offline; a
# build only downloads the host's, so on a fresh machine fetch the rest from crates.io first.
cargo fetch --locked --quiet
cargo deny --offline --locked check licenses bans sources || status=1

if [[ -d $db/advisory-db-3157b0e258782691/.git ]]; then
  echo "deny: advisories from the RustSec database as of $(git -C "$db/advisory-db-3157b0e258782691" log -1 --format=%cs)"
  cargo deny --offline --locked check advisories || status=1
else
  echo "deny: advisories SKIPPED: no copy of the RustSec database in $db (GitHub is not reachable here)"
fi
exit "$status"
