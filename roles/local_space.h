// The host's local disk budget (--cache-size), shared by the read cache and
// the overlays' disk tier, in the order invariant 5 sets: overlays (live
// desktop state) outrank the read cache. When the disk tier needs room, the
// read cache lends it (evicting); when the tier shrinks, the cache grows
// back. Only when the cache has nothing left to lend does an overlay get a
// "no" — and its writer ENOSPC.
//
// Thread safety: safe for concurrent use.
#pragma once

#include <mutex>

#include "cache/chunk_cache.h"
#include "overlay/overlay.h"

namespace goldcache::roles {

class LocalSpace : public overlay::DiskSpace {
 public:
  // `total`: the whole local budget; the cache starts with all of it.
  LocalSpace(uint64_t total, cache::ChunkCache& cache) : total_(total), cache_(cache) {}

  bool Acquire(uint64_t bytes) override {
    std::lock_guard lock(mu_);
    if (Fits(bytes)) {
      overlay_bytes_ += bytes;
      return true;
    }
    cache_.LendSpace(overlay_bytes_ + bytes + cache_.capacity_bytes() - total_);
    if (!Fits(bytes)) return false;
    overlay_bytes_ += bytes;
    return true;
  }

  void Release(uint64_t bytes) override {
    std::lock_guard lock(mu_);
    overlay_bytes_ -= std::min(bytes, overlay_bytes_);
    uint64_t in_use = overlay_bytes_ + cache_.capacity_bytes();
    if (in_use < total_) cache_.ReturnSpace(total_ - in_use);
  }

  uint64_t overlay_bytes() const {
    std::lock_guard lock(mu_);
    return overlay_bytes_;
  }

 private:
  // REQUIRES: mu_ held.
  bool Fits(uint64_t bytes) const {
    return overlay_bytes_ + bytes + cache_.capacity_bytes() <= total_;
  }

  const uint64_t total_;
  cache::ChunkCache& cache_;
  mutable std::mutex mu_;
  uint64_t overlay_bytes_ = 0;  // GUARDED_BY(mu_)
};

}  // namespace goldcache::roles
