#!/usr/bin/env bash
# run_fuzzer.sh FUZZER SEED_DIR SECONDS [DICT]: fuzzes for SECONDS, starting
# from the seeds (which stay as they are: new inputs go to a scratch copy).
# Exits non-zero when the fuzzer finds a crash, a leak, a timeout or runs out
# of memory, after printing the input that did it (hex and base64) and the
# command that reproduces it.
set -euo pipefail
fuzzer="$1"
seeds="$2"
seconds="$3"
dict="${4:-}"
name="$(basename "$fuzzer")"

work="$(mktemp -d "/tmp/goldcache-${name}.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$work/artifacts"

args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536
      -print_final_stats=1 -artifact_prefix="$work/artifacts/")
[[ -n "$dict" ]] && args+=(-dict="$dict")

rc=0
"$fuzzer" "${args[@]}" "$work/corpus" "$seeds" >"$work/log" 2>&1 || rc=$?
if ((rc == 0)); then
  grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|Done [0-9]+ runs)' "$work/log" || true
  echo "$name: no crash in ${seconds}s ($(ls "$work/corpus" | wc -l) new inputs)"
  exit 0
fi

echo "$name: FAILED (exit $rc); the fuzzer's report:"
grep -vE '^#[0-9]+\s+(NEW|REDUCE|pulse|INITED)' "$work/log" | tail -n 80
for input in "$work"/artifacts/*; do
  [[ -f "$input" ]] || continue
  echo "--- crashing input $(basename "$input") ($(stat -c %s "$input") bytes), hex:"
  head -c 4096 "$input" | od -A x -t x1z -v
  echo "--- base64 (to reproduce: base64 -d > crash; $fuzzer crash):"
  head -c 65536 "$input" | base64 -w 0
  echo
done
exit 1
