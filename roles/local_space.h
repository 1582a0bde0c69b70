// The host's local disk (the cache dir), shared by the read cache and the
// overlays' disk tier, in the order invariant 5 sets: overlays (live desktop
// state) outrank the read cache, and the file system's real free space
// outranks both.
//
// The budget (--cache-size) starts with the read cache. Overlays draw from
// a pool of space that the read cache lends ahead of need, in increments of
// `step`, on the lender's own thread: a spill takes its bytes from the pool
// with a compare-and-swap, never waiting on the cache's evictions, its index
// commits or its hole punching. Only when the pool runs dry does a writer
// wait for the lender (at most kAcquireWait), and it gets "no" (ENOSPC) only
// when the read cache has nothing left to lend. Space the overlays give
// back returns to the pool, and what the pool holds beyond 2 * step goes
// back to the read cache.
//
// Real free space: the budget is what goldcache may use, not what the disk
// has. Every second (and whenever the pool is short) the lender compares the
// file system's free space with kReserve; when it is below, the read cache
// gives back (evicts and punches) enough to restore it, and keeps that much
// unused until the free space is back. So a disk filled by something else
// (the index, another program, a budget larger than the disk) never leaves
// desktops stuck at ENOSPC after their own writes are gone.
//
// Thread safety: safe for concurrent use.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "cache/chunk_cache.h"
#include "io/file.h"
#include "metrics/metrics.h"
#include "overlay/overlay.h"

namespace goldcache::roles {

// What LocalSpace needs of the read cache (cache::ChunkCache has it).
class ReadCacheSpace {
 public:
  virtual ~ReadCacheSpace() = default;
  // See cache::ChunkCache::LendSpace / ReturnSpace / capacity_bytes.
  virtual uint64_t LendSpace(uint64_t bytes) = 0;
  virtual uint64_t ReturnSpace(uint64_t bytes) = 0;
  virtual uint64_t capacity_bytes() const = 0;
  // See cache::ChunkCache::GiveBackDisk: lends bytes that the file system
  // really gets back.
  virtual uint64_t GiveBackDisk(uint64_t bytes) = 0;
};

// The read cache itself, as LocalSpace sees it.
class ChunkCacheSpace : public ReadCacheSpace {
 public:
  explicit ChunkCacheSpace(cache::ChunkCache& cache) : cache_(cache) {}
  uint64_t LendSpace(uint64_t bytes) override { return cache_.LendSpace(bytes); }
  uint64_t ReturnSpace(uint64_t bytes) override { return cache_.ReturnSpace(bytes); }
  uint64_t capacity_bytes() const override { return cache_.capacity_bytes(); }
  uint64_t GiveBackDisk(uint64_t bytes) override { return cache_.GiveBackDisk(bytes); }

 private:
  cache::ChunkCache& cache_;
};

class LocalSpace : public overlay::DiskSpace {
 public:
  // Free bytes the file system of the cache dir keeps, whatever the budget.
  static constexpr uint64_t kReserve = 64ull << 20;
  static constexpr std::chrono::milliseconds kAcquireWait{5000};

  struct Options {
    uint64_t total = 0;                     // the budget (--cache-size)
    uint64_t step = 0;                      // 0: min(256 MiB, max(total / 16, 4 MiB))
    std::string dir;                        // the cache dir, whose file system's free space counts
    io::Env* env = nullptr;                 // statvfs; null: io::PosixEnv()
    metrics::Registry* registry = nullptr;  // may be null
    std::chrono::milliseconds check_interval{1000};
  };

  LocalSpace(const Options& options, ReadCacheSpace& cache);
  ~LocalSpace() override;  // stops the lender
  LocalSpace(const LocalSpace&) = delete;
  LocalSpace& operator=(const LocalSpace&) = delete;

  bool Acquire(uint64_t bytes) override;
  void Release(uint64_t bytes) override;
  // The file system refused an overlay write the budget allowed: the read
  // cache gives back at least kReserve of real disk now (held until the
  // free space is back, as for the reserve).
  bool MakeRoom(uint64_t bytes) override;

  uint64_t overlay_bytes() const { return overlay_.load(); }
  uint64_t pool_bytes() const { return pool_.load(); }
  // Lent by the read cache to keep the file system's reserve.
  uint64_t held_for_disk_bytes() const;
  // Waits until the lender has looked at the file system and the pool once
  // more (tests).
  void Settle();

 private:
  void Lend();
  void Wake();
  void ShowPool();
  uint64_t Step() const { return step_; }

  const Options options_;
  const uint64_t step_;
  ReadCacheSpace& cache_;
  io::Env& env_;
  metrics::Gauge* held_gauge_ = nullptr;
  metrics::Gauge* pool_gauge_ = nullptr;
  metrics::Counter* waits_ = nullptr;

  std::atomic<uint64_t> pool_{0};     // lent by the cache, not used by overlays
  std::atomic<uint64_t> overlay_{0};  // used by overlays

  mutable std::mutex mu_;
  std::condition_variable cv_;           // the lender's work, and its answers
  uint64_t wanted_ = 0;                  // GUARDED_BY(mu_): a writer waits for this much
  uint64_t round_ = 0;                   // GUARDED_BY(mu_): lender rounds done
  bool exhausted_ = false;               // GUARDED_BY(mu_): the cache had nothing to lend
  bool wake_ = false;                    // GUARDED_BY(mu_)
  bool stop_ = false;                    // GUARDED_BY(mu_)
  std::atomic<uint64_t> held_extra_{0};  // given back by MakeRoom, not yet in held_for_disk_
  uint64_t held_for_disk_ = 0;           // lender thread only (and Settle's reader, under mu_)
  std::thread lender_;
};

}  // namespace goldcache::roles
