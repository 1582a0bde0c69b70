#include "roles/local_space.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace goldcache::roles {

LocalSpace::LocalSpace(const Options& options, ReadCacheSpace& cache)
    : options_(options),
      step_(options.step != 0
                ? options.step
                : std::min<uint64_t>(256ull << 20,
                                     std::max<uint64_t>(options.total / 16, 4ull << 20))),
      cache_(cache),
      env_(options.env != nullptr ? *options.env : io::PosixEnv()) {
  if (options.registry != nullptr) {
    held_gauge_ = &options.registry->GetGauge(
        "goldcache_cache_held_for_disk_bytes",
        "Read-cache space left unused because the cache dir's file system had less free space "
        "than its reserve (something else filled it).");
    pool_gauge_ = &options.registry->GetGauge(
        "goldcache_overlay_space_pool_bytes",
        "Local-disk space the read cache has lent ahead to the overlays' disk tier that they "
        "have not used yet (counted in neither the cache's capacity nor the overlays' bytes).");
    waits_ = &options.registry->GetCounter(
        "goldcache_overlay_space_waits_total",
        "Overlay spills that found no space lent ahead and waited for the read cache.");
  }
  lender_ = std::thread([this] { Lend(); });
  Wake();  // lend the first step ahead of any desktop
}

LocalSpace::~LocalSpace() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  lender_.join();
}

void LocalSpace::Wake() {
  {
    std::lock_guard lock(mu_);
    wake_ = true;
  }
  cv_.notify_all();
}

bool LocalSpace::Acquire(uint64_t bytes) {
  if (bytes == 0) return true;
  for (bool waited = false;; waited = true) {
    uint64_t p = pool_.load();
    while (p >= bytes) {
      if (pool_.compare_exchange_weak(p, p - bytes)) {
        overlay_ += bytes;
        ShowPool();
        if (p - bytes < step_ / 2) Wake();  // lend the next step before it is needed
        return true;
      }
    }
    if (waited) return false;
    std::unique_lock lock(mu_);
    if (waits_ != nullptr) waits_->Add();
    const uint64_t start = round_;
    wanted_ = std::max(wanted_, bytes);
    wake_ = true;
    cv_.notify_all();
    cv_.wait_for(lock, kAcquireWait,
                 [&] { return stop_ || pool_.load() >= bytes || (round_ > start && exhausted_); });
  }
}

void LocalSpace::Release(uint64_t bytes) {
  overlay_ -= std::min(bytes, overlay_.load());
  const uint64_t p = pool_ += bytes;
  ShowPool();
  if (p > 2 * step_) Wake();
}

bool LocalSpace::MakeRoom(uint64_t bytes) {
  const uint64_t got = cache_.GiveBackDisk(std::max(bytes, kReserve));
  if (got == 0) return false;
  held_extra_ += got;
  spdlog::warn(
      "local disk of {}: full before goldcache's budget was; the read cache gave back {} MiB "
      "for desktops' writes",
      options_.dir, got >> 20);
  Wake();  // the lender shows it and gives it back once the disk has room
  return true;
}

void LocalSpace::ShowPool() {
  // Concurrent updates may publish out of order; the lender's next round
  // (at most check_interval later) sets it right.
  if (pool_gauge_ != nullptr) pool_gauge_->Set(static_cast<int64_t>(pool_.load()));
}

uint64_t LocalSpace::held_for_disk_bytes() const {
  std::lock_guard lock(mu_);
  return held_for_disk_;
}

void LocalSpace::Settle() {
  std::unique_lock lock(mu_);
  const uint64_t target = round_ + 2;  // one that started after this call
  wake_ = true;
  cv_.notify_all();
  cv_.wait(lock, [&] { return stop_ || round_ >= target; });
}

void LocalSpace::Lend() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, options_.check_interval, [&] { return stop_ || wake_; });
    if (stop_) break;
    wake_ = false;
    const uint64_t wanted = std::exchange(wanted_, 0);
    uint64_t held = held_for_disk_ + held_extra_.exchange(0);
    lock.unlock();

    // 1. The file system's own reserve comes first.
    if (auto fs = env_.StatFs(options_.dir); fs.ok()) {
      const uint64_t free = uint64_t{fs->f_bavail} * fs->f_frsize;
      if (free < kReserve) {
        const uint64_t got = cache_.GiveBackDisk(kReserve - free);
        if (got > 0) {
          held += got;
          spdlog::warn(
              "local disk of {}: {} MiB free, less than the {} MiB reserve; the read cache "
              "gave back {} MiB (now {} MiB held back). Something other than goldcache's "
              "budget is filling the disk, or the budget ([cache] size) is larger than it.",
              options_.dir, free >> 20, kReserve >> 20, got >> 20, held >> 20);
        }
      } else if (held > 0 && free > 2 * kReserve) {
        held -= cache_.ReturnSpace(std::min(held, free - 2 * kReserve));
      }
    }
    // 2. The pool: a step ahead of the overlays, and what a writer waits for.
    bool exhausted = false;
    const uint64_t target = std::max(step_, wanted);
    uint64_t p = pool_.load();
    if (p < target) {
      const uint64_t need = target - p + (wanted > 0 ? step_ : 0);
      const uint64_t lent = cache_.LendSpace(need);
      pool_ += lent;
      exhausted = pool_.load() < std::max<uint64_t>(wanted, 1);
    } else if (p > 2 * step_ + wanted) {
      const uint64_t give = p - step_;
      if (pool_.compare_exchange_strong(p, p - give)) {
        const uint64_t back = cache_.ReturnSpace(give);
        pool_ += give - back;  // what the cache could not take (rounding)
      }
    }
    if (held_gauge_ != nullptr) held_gauge_->Set(static_cast<int64_t>(held));
    ShowPool();

    lock.lock();
    held_for_disk_ = held;
    exhausted_ = exhausted;
    ++round_;
    cv_.notify_all();
  }
}

}  // namespace goldcache::roles
