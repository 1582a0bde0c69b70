#!/usr/bin/env bash
# Cache-hit read performance through the goldcache mount (4K randread QD1 and
# QD32, 1M seqread) as ratios against the local disk and a no-cache FUSE
# passthrough, all measured in this run. See docs/benchmarks.md.
# Needs a built tree (./scripts/setup.sh) and root (FUSE). Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOLDCACHE_BIN="${GOLDCACHE_BIN:-$PWD/build/agent/goldcached}"
exec /usr/bin/python3 bench/run.py "$@"
