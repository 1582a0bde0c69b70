#!/usr/bin/env bash
# Cold full read of a 1 GiB template through goldcached over a real NFS
# datastore (nfs-ganesha on loopback, NFSv3) against nfs-cat of the same file
# directly, plus the warm read, as ratios measured in the same run. See
# docs/benchmarks.md. Needs a built tree (./scripts/setup.sh), root (FUSE), fio,
# nfs-ganesha and libnfs-utils. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOLDCACHE_BIN="${GOLDCACHE_BIN:-$PWD/build/agent/goldcached}"
exec /usr/bin/python3 bench/nfs_cold.py "$@"
