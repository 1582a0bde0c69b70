#!/usr/bin/env bash
# Sets up and builds goldcache, then runs every test:
#   1. build/       unit + integration tests (real FUSE mounts; needs root)
#   2. build-asan/  unit tests under AddressSanitizer + UndefinedBehaviorSanitizer
# Exits non-zero if anything fails; the last line is "summary: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="$(nproc)"
logs="$(mktemp -d /tmp/goldcache-ctest.XXXXXX)"
trap 'rm -rf "$logs"' EXIT

passed=0
failed=0
broken=()  # stages that failed

# run_ctest NAME ARGS...: runs ctest, keeps its log, adds to the counts.
run_ctest() {
  local name="$1"
  shift
  printf 'test: ctest %s\n' "$*"
  if ! ctest "$@" 2>&1 | tee "$logs/$name.log"; then
    broken+=("$name")
  fi
  # "95% tests passed, 1 tests failed out of 20"
  local line
  line="$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$logs/$name.log" | tail -n1 || true)"
  if [[ -n "$line" ]]; then
    local f t
    f="$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")"
    t="$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$line")"
    passed=$((passed + t - f))
    failed=$((failed + f))
  fi
}

./scripts/setup.sh
run_ctest main --test-dir build --output-on-failure -j "$jobs"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"
if GOLDCACHE_SANITIZE=1 ./scripts/setup.sh; then
  run_ctest asan --test-dir build-asan -L unit --output-on-failure -j "$jobs"
else
  broken+=(asan-build)
fi

if ((${#broken[@]})); then
  printf 'test: FAILED stages: %s\n' "${broken[*]}"
else
  printf 'test: all stages passed (build/: unit + integration, build-asan/: unit)\n'
fi
printf 'summary: %d passed, %d failed\n' "$passed" "$failed"
((${#broken[@]} == 0))
