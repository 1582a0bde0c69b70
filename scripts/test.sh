#!/usr/bin/env bash
# Sets up and builds goldcache, then runs every test:
#   1. build/       unit + integration tests (real FUSE mounts; needs root)
#   2. build-asan/  unit tests under AddressSanitizer + UndefinedBehaviorSanitizer (GCC)
#   3. build-tsan/  the concurrent modules' unit tests under ThreadSanitizer (clang,
#                   which also checks the locking annotations at compile time)
#   4. build-fuzz/  each libFuzzer target of fuzz/ for GOLDCACHE_FUZZ_SECONDS (default 25)
#                   on its seed corpus; a crash fails, and the crashing input is printed
# Each stage says how long it took. Exits non-zero if anything fails; the
# last line is "summary: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="$(nproc)"
logs="$(mktemp -d /tmp/goldcache-ctest.XXXXXX)"
trap 'rm -rf "$logs"' EXIT

passed=0
failed=0
broken=()  # stages that failed
times=()   # "stage MmSSs", in order

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
  else
    broken+=("$name(no-result)")
  fi
}

stage_start=0
begin_stage() { stage_start=$SECONDS; }
end_stage() {
  local took=$((SECONDS - stage_start))
  times+=("$1 $((took / 60))m$(printf '%02d' $((took % 60)))s")
  printf 'test: stage %s took %dm%02ds\n' "$1" $((took / 60)) $((took % 60))
}

# 1. Everything, unit and integration.
begin_stage main
./scripts/setup.sh
run_ctest main --test-dir build --output-on-failure -j "$jobs"
end_stage main

# 2. Unit tests under ASan + UBSan.
begin_stage asan
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"
if GOLDCACHE_SANITIZE=1 ./scripts/setup.sh; then
  run_ctest asan --test-dir build-asan -L unit --output-on-failure -j "$jobs"
else
  broken+=(asan-build)
fi
end_stage asan

# 3. The concurrent modules' unit tests under TSan: the first race fails the
# test, with both stacks.
begin_stage tsan
if GOLDCACHE_TSAN=1 ./scripts/setup.sh; then
  TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan.supp}" \
    run_ctest tsan --test-dir build-tsan -L unit --output-on-failure -j "$jobs"
else
  broken+=(tsan-build)
fi
end_stage tsan

# 4. Fuzzing, bounded in time.
begin_stage fuzz
if GOLDCACHE_FUZZ=1 ./scripts/setup.sh; then
  ASAN_OPTIONS="detect_leaks=1" run_ctest fuzz --test-dir build-fuzz -L fuzz --output-on-failure -j "$jobs"
else
  broken+=(fuzz-build)
fi
end_stage fuzz

printf 'test: stage times: %s\n' "$(IFS=,; echo "${times[*]}" | sed 's/,/, /g')"
if ((${#broken[@]})); then
  printf 'test: FAILED stages: %s\n' "${broken[*]}"
else
  printf 'test: all stages passed (build/: unit + integration, build-asan/: unit, build-tsan/: concurrent unit, build-fuzz/: fuzz)\n'
fi
printf 'summary: %d passed, %d failed\n' "$passed" "$failed"
((${#broken[@]} == 0))
