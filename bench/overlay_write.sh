#!/usr/bin/env bash
# Write performance of a nonpersistent desktop through goldcached (4K randwrite
# QD32, 1M sequential write) as ratios against the local disk written directly,
# with the default RAM tier and a small one that forces the spill path.
# See docs/benchmarks.md. Needs a built tree (./scripts/setup.sh) and root
# (FUSE). Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOLDCACHE_BIN="${GOLDCACHE_BIN:-$PWD/build/agent/goldcached}"
exec /usr/bin/python3 bench/overlay_write.py "$@"
