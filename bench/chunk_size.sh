#!/usr/bin/env bash
# Chunk-size trade-off: cold boot-storm time vs warm 4K random reads for
# 256KiB, 1MiB and 4MiB chunks. See docs/benchmarks.md.
# Needs a built tree (./scripts/setup.sh) and root (FUSE). Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOLDCACHE_BIN="${GOLDCACHE_BIN:-$PWD/build/agent/goldcached}"
exec /usr/bin/python3 bench/chunk_size.py "$@"
