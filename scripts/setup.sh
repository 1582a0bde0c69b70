#!/usr/bin/env bash
# Installs what goldcache needs on Debian 12 (bookworm) and builds it.
#
#   ./scripts/setup.sh                       -> build/       (RelWithDebInfo)
#   GOLDCACHE_SANITIZE=1 ./scripts/setup.sh  -> build-asan/  (ASan + UBSan)
#
# Idempotent: installs only missing packages (apt-get update once, first), and
# re-running on a built tree is a no-op build. Run as root from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf 'setup: %s\n' "$*"; }

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libfuse3-dev fuse3 librocksdb-dev liburing-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libsystemd-dev libxxhash-dev nlohmann-json3-dev
  libcpp-httplib-dev libcli11-dev libtomlplusplus-dev
  libnfs-dev libnfs-utils nfs-ganesha nfs-ganesha-vfs rpcbind
  qemu-utils fio python3 python3-pytest python3-prometheus-client dpkg-dev systemd
  procps util-linux ca-certificates file netbase
  lintian prometheus python3-yaml
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
  if [[ "$(id -u)" != 0 ]]; then
    echo "setup: missing packages: ${missing[*]}; run this script as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  step "apt-get update"
  apt-get update -q >/dev/null
  step "apt-get install ${missing[*]}"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
  step "all ${#PACKAGES[@]} packages already installed"
fi

# What every installed Debian has but a bare (debootstrap, container) one may
# lack, and the NFS test server needs: nfs-ganesha's VFS backend finds an
# export's file system in /etc/mtab, and libtirpc registers with rpcbind
# through "localhost" over IPv4 (and the "sunrpc" service from netbase).
if [[ ! -e /etc/mtab ]]; then
  step "link /etc/mtab -> ../proc/self/mounts"
  ln -s ../proc/self/mounts /etc/mtab
fi
if ! getent ahostsv4 localhost >/dev/null; then
  step "add localhost to /etc/hosts"
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >>/etc/hosts
fi

if [[ "${GOLDCACHE_SANITIZE:-0}" == 1 ]]; then
  build_dir=build-asan
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DGOLDCACHE_SANITIZE=ON)
else
  build_dir=build
  flags=(-DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}")
fi
# Keep whatever generator an existing build tree was made with.
[[ -f "$build_dir/CMakeCache.txt" ]] || flags+=(-G Ninja)

step "configure $build_dir/ (${flags[*]})"
cmake -S . -B "$build_dir" "${flags[@]}" >/dev/null
step "build $build_dir/ with $(nproc) jobs"
cmake --build "$build_dir" -j "$(nproc)"
step "done: $build_dir/"
