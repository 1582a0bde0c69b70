#!/usr/bin/env bash
# Builds goldcache, then shows a boot storm: 8 desktops read one 256 MiB
# template through a goldcached mount, twice, with the datastore's share of the
# reads printed from /metrics. The datastore is real NFS: NFSv3 from a
# user-space nfs-ganesha on loopback (GOLDCACHE_DEMO_DATASTORE=dir: a plain
# directory instead). Everything is stopped, unmounted and removed afterwards,
# also on Ctrl-C or failure (see scripts/demo.py). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export GOLDCACHE_BIN="${GOLDCACHE_BIN:-$PWD/build/agent/goldcached}"
exec /usr/bin/python3 scripts/demo.py "$@"
