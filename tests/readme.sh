#!/usr/bin/env bash
# Runs every command of README.md's ```sh blocks as written, in order, from the repository root:
# the README promises that each one works, and this is the check. A command another CI step
# already runs is not run twice; it is listed with the step that covers it.
#
#   tests/readme.sh           run them (the test brokers must be up: tests/services/services.sh start)
#   tests/readme.sh --list    print each command and what this script would do with it
#
# Each command's output goes to target/readme/NN.log; a failure prints its tail and the script
# goes on with the next command, then exits non-zero. EDGE_README_TIMEOUT (default 900) bounds
# each command in seconds.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
limit=${EDGE_README_TIMEOUT:-900}
logs=target/readme
mkdir -p "$logs"

# Commands (the text before a trailing "# comment") covered by another step, and which.
declare -A elsewhere=(
  ["tests/run.sh"]="the test command itself: CI runs it, and it runs this script"
  ["scripts/bench.sh --update-readme"]="the full benchmark suite, which rewrites the README table: tests/run.sh runs scripts/bench.sh --quick, the same programs on small inputs"
)

started_at=$(mktemp)  # the demo's run directories newer than this one come from this script
trap 'rm -f "$started_at"' EXIT

mapfile -t lines < <(awk '/^```sh$/{on=1; next} /^```$/{on=0} on' README.md)
status=0 n=0 ran=0 skipped=0
for line in "${lines[@]}"; do
  cmd=$(sed -E 's/[[:space:]]+#.*$//; s/[[:space:]]+$//' <<<"$line")
  [[ -z $cmd ]] && continue
  n=$((n + 1))
  if [[ -n ${elsewhere[$cmd]:-} ]]; then
    printf 'readme: [%02d] %s\n        covered elsewhere: %s\n' "$n" "$cmd" "${elsewhere[$cmd]}" >&2
    skipped=$((skipped + 1))
    continue
  fi
  if [[ ${1:-} == --list ]]; then
    printf 'readme: [%02d] %s\n        runs here\n' "$n" "$cmd" >&2
    continue
  fi
  log=$(printf '%s/%02d.log' "$logs" "$n")
  printf 'readme: [%02d] %s ... ' "$n" "$cmd" >&2
  started=$SECONDS
  if timeout "$limit" bash -c "$cmd" </dev/null >"$log" 2>&1; then
    printf 'ok (%d s)\n' $((SECONDS - started)) >&2
    ran=$((ran + 1))
  else
    code=$?
    printf 'FAILED (exit %d after %d s); the end of %s:\n' "$code" $((SECONDS - started)) "$log" >&2
    tail -n 25 "$log" | sed 's/^/    /' >&2
    status=1
  fi
done
if [[ ${1:-} != --list ]]; then
  # A librdkafka CONFWARN means a client was handed a setting it does not read (issue 16: the
  # consumer's producer got session.timeout.ms): none in any log of the demo runs above.
  warned=$(find target/demo -name '*.log' -newer "$started_at" -exec grep -l CONFWARN {} + 2>/dev/null || true)
  if [[ -n $warned ]]; then
    echo "readme: librdkafka CONFWARN in: $warned" >&2
    status=1
  fi
  # A demo run with a Kafka outage prints when the finals resumed after it (issue 16).
  for f in $(find "$logs" -name '*.log' -newer "$started_at"); do
    if grep -q "FAULT  Kafka broker stopped" "$f" && ! grep -q "finals resumed .* s after Kafka was back" "$f"; then
      echo "readme: $f: a Kafka outage, but no line saying when the finals resumed" >&2
      status=1
    fi
  done
  echo "readme: $n commands: $ran run and passed, $((n - ran - skipped)) failed, $skipped covered elsewhere" >&2
fi
exit "$status"
