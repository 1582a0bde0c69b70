#!/usr/bin/env bash
# Installs what goldcache needs on Debian 12 (bookworm) and builds it.
#
#   ./scripts/setup.sh                       -> build/       (RelWithDebInfo): everything
#   GOLDCACHE_SANITIZE=1 ./scripts/setup.sh  -> build-asan/  (ASan + UBSan, GCC): unit tests
#   GOLDCACHE_TSAN=1 ./scripts/setup.sh      -> build-tsan/  (TSan, clang): the concurrent
#                                               modules' unit tests (GOLDCACHE_TSAN_TESTS)
#   GOLDCACHE_FUZZ=1 ./scripts/setup.sh      -> build-fuzz/  (libFuzzer + ASan + UBSan, clang):
#                                               the fuzz/ targets
#
# The sanitizer trees build only what their tests need, at -O1 with line
# tables only (-g1): enough for symbolized reports, a fraction of the time
# of -O2 -g (see CMakeLists.txt). The clang trees also check the locking
# annotations (-Werror=thread-safety).
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
  libcpp-httplib-dev libcli11-dev libtomlplusplus-dev libssl-dev
  libnfs-dev libnfs-utils nfs-ganesha nfs-ganesha-vfs rpcbind
  qemu-utils fio python3 python3-pytest python3-prometheus-client python3-matplotlib dpkg-dev systemd
  procps util-linux ca-certificates file netbase
  lintian prometheus python3-yaml
  clang-14 libclang-rt-14-dev llvm-14
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

target=all
if [[ "${GOLDCACHE_SANITIZE:-0}" == 1 ]]; then
  build_dir=build-asan
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DGOLDCACHE_SANITIZE=ON)
  target=unit_tests
elif [[ "${GOLDCACHE_TSAN:-0}" == 1 ]]; then
  build_dir=build-tsan
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DGOLDCACHE_TSAN=ON -DCMAKE_CXX_COMPILER=clang++-14)
  target=unit_tests
elif [[ "${GOLDCACHE_FUZZ:-0}" == 1 ]]; then
  build_dir=build-fuzz
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DGOLDCACHE_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++-14)
  target=fuzzers
else
  build_dir=build
  flags=(-DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}")
fi
# Keep whatever generator an existing build tree was made with.
[[ -f "$build_dir/CMakeCache.txt" ]] || flags+=(-G Ninja)

step "configure $build_dir/ (${flags[*]})"
cmake -S . -B "$build_dir" "${flags[@]}" >/dev/null
step "build $build_dir/ (target $target) with $(nproc) jobs"
cmake --build "$build_dir" --target "$target" -j "$(nproc)"
step "done: $build_dir/"
