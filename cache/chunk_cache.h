// cache/ — the host's read cache of template chunks (docs/design.md §3
// "template"; §4, contracts 1, 2, 3, 5, 7).
//
// A template generation is cut into fixed-size chunks. A read is served from
// the local store when the chunk is cached and proves good against its
// checksums; otherwise the chunk is fetched once from the datastore however
// many readers want it at that moment (single-flight), stored, and served.
//
// Promises:
//  - A byte served is a byte the datastore had for that generation: every
//    4 KiB block read from the local store is checked; a mismatch drops the
//    chunk, counts goldcache_cache_checksum_failures_total and refetches.
//  - Crash safety: chunk data is made durable before the index record that
//    names it; a slot is reused only after the delete of its previous chunk is
//    durable. After a crash (the RUNNING marker is still there at Open) every
//    loaded record is re-proved against its checksum table.
//  - Concurrent misses on one chunk cause one datastore read.
//  - Eviction (segmented LRU, scan resistant) runs in batches and never takes
//    a chunk that is being read.
//  - Hits never wait for RocksDB; misses rarely do (only when every slot's
//    previous delete is still uncommitted).
//  - When the local store cannot take a chunk (disk full, all slots busy),
//    or the source says its bytes are not yet cacheable, the read is still
//    served, uncached, and counted.
//
// Thread safety: all methods are safe to call concurrently.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cache/chunk_store.h"
#include "io/rings.h"
#include "cache/slru.h"
#include "index/chunk_index.h"
#include "metrics/metrics.h"
#include "util/status.h"

namespace goldcache::cache {

using index::ChunkKey;
using index::GenerationId;

// Where misses come from: the datastore file of one generation.
class ChunkSource {
 public:
  virtual ~ChunkSource() = default;
  // Reads up to buf.size() bytes at `offset`; short only at end of file.
  virtual Result<size_t> ReadAt(uint64_t offset, std::span<char> buf) = 0;
  // Whether bytes read from now on may be stored: false while the file may
  // still be being written (a generation younger than the settle time).
  // Asked once before each fetch.
  virtual bool Cacheable() { return true; }
};

struct CacheOptions {
  std::string dir;                        // created if missing
  uint64_t capacity_bytes = 10ull << 30;  // local store limit
  uint32_t chunk_size = 1u << 20;         // multiple of 4 KiB
  std::chrono::milliseconds index_flush_interval{100};
  metrics::Registry* registry = nullptr;  // required; must outlive the cache
};

// How one read was served, for the caller's per-source accounting.
struct ReadOutcome {
  size_t bytes = 0;           // copied into the caller's buffer
  size_t from_datastore = 0;  // of which fetched from the datastore by this read
};

class ChunkCache {
 public:
  // Opens the cache in options.dir, loading (and after a crash re-proving)
  // what an earlier run cached. A cache made with another chunk size is
  // discarded and started afresh (logged).
  static Result<std::unique_ptr<ChunkCache>> Open(const CacheOptions& options);
  // Commits the index and removes the RUNNING marker: the next Open trusts it.
  ~ChunkCache();
  ChunkCache(const ChunkCache&) = delete;
  ChunkCache& operator=(const ChunkCache&) = delete;

  // See index::ChunkIndex::BindGeneration.
  Result<index::GenerationBinding> BindGeneration(const index::GenerationKey& key);

  // Copies [offset, offset + out.size()) of generation `gen`, whose file is
  // `file_size` bytes, into `out`. Short only at end of file. Misses read from
  // `source` (which must serve exactly that generation).
  Result<ReadOutcome> Read(GenerationId gen, uint64_t file_size, uint64_t offset,
                           std::span<char> out, ChunkSource& source);

  // Commits index changes now (tests, clean shutdown).
  Status FlushIndex();

  // Space order (invariant 5): overlays outrank the read cache. LendSpace
  // shrinks the cache by up to `bytes`, rounded up to whole chunks, evicting
  // as it must (never a chunk being read) and punching the lent slots out of
  // chunks.dat. Returns the bytes lent, which may be less than asked (or
  // more, by the rounding). ReturnSpace lets the cache grow back by up to
  // `bytes`, in whole chunks; returns the bytes taken back.
  uint64_t LendSpace(uint64_t bytes);
  uint64_t ReturnSpace(uint64_t bytes);

  // The key of a known generation (no datastore needed).
  std::optional<index::GenerationKey> GenerationKeyOf(GenerationId gen) const;
  // Every generation the index knows for `path` (GenerationKey::path).
  std::vector<GenerationId> GenerationsOf(const std::string& path) const;
  // Drops every cached chunk of `gen` (chunks being read go when their reads
  // end... and are simply skipped here) and unpins it. Returns bytes dropped.
  uint64_t Evict(GenerationId gen);
  // Pinned generations are never evicted (warm --pin); durable across restarts.
  Status Pin(GenerationId gen, bool pinned);
  bool pinned(GenerationId gen) const;

  struct CheckReport {
    uint64_t chunks = 0;  // verified
    uint64_t bytes = 0;
    uint64_t bad = 0;  // failed and dropped
  };
  // Reads and verifies every cached chunk, dropping those that fail.
  // `progress(done, total)` is called now and then; returning false stops.
  Result<CheckReport> Check(const std::function<bool(uint64_t, uint64_t)>& progress);

  uint32_t chunk_size() const { return chunk_size_; }
  uint64_t capacity_bytes() const;
  uint64_t used_bytes() const;
  uint64_t cached_bytes_of(GenerationId gen) const;
  bool recovered_from_crash() const { return recovered_from_crash_; }

 private:
  struct Entry {
    index::ChunkRecord rec;
  };
  struct Flight {
    bool done = false;
    Status status;
    std::vector<char> data;
  };
  struct PendingFree {
    uint64_t seq;  // index sequence of the delete that must be durable first
    uint64_t slot;
  };
  struct Metrics;

  explicit ChunkCache(const CacheOptions& options);
  Status Init();
  Status LoadRecords(bool verify);

  Status ReadChunkRange(const ChunkKey& key, uint64_t chunk_start, uint32_t chunk_len,
                        uint32_t in_off, uint32_t n, char* dst, ChunkSource& source,
                        ReadOutcome& outcome);
  Status ReadFromStore(const ChunkKey& key, const index::ChunkRecord& rec, uint32_t in_off,
                       uint32_t n, char* dst);
  void FetchAndStore(const ChunkKey& key, uint64_t chunk_start, uint32_t chunk_len,
                     ChunkSource& source, Flight& flight);
  std::optional<uint64_t> AllocateSlot();
  // REQUIRES: mu_ held.
  void DropLocked(const ChunkKey& key, const index::ChunkRecord& rec);
  void EvictLocked(size_t n);
  void ReclaimLocked();
  size_t LowWatermark() const;

  const CacheOptions options_;
  const uint32_t chunk_size_;
  uint64_t slots_ = 0;
  bool recovered_from_crash_ = false;
  std::unique_ptr<Metrics> m_;
  io::IoRings rings_;
  std::unique_ptr<ChunkStore> store_;
  std::unique_ptr<index::ChunkIndex> index_;

  mutable std::mutex mu_;  // guards everything below; never held across IO
  std::condition_variable flight_cv_;
  std::unordered_map<ChunkKey, Entry, index::ChunkKeyHash> entries_;  // GUARDED_BY(mu_)
  std::unordered_map<ChunkKey, std::shared_ptr<Flight>, index::ChunkKeyHash>
      flights_;                            // GUARDED_BY(mu_)
  std::unique_ptr<SlruPolicy> policy_;     // GUARDED_BY(mu_)
  std::vector<uint32_t> slot_pins_;        // GUARDED_BY(mu_) readers of each slot
  std::vector<uint64_t> free_slots_;       // GUARDED_BY(mu_)
  std::vector<PendingFree> pending_free_;  // GUARDED_BY(mu_)
  std::vector<uint64_t> lent_slots_;       // GUARDED_BY(mu_) space lent to overlays
  std::unordered_map<GenerationId, uint64_t> bytes_by_generation_;  // GUARDED_BY(mu_)
  std::unordered_set<GenerationId> pinned_;                         // GUARDED_BY(mu_)
  uint64_t used_bytes_ = 0;                                         // GUARDED_BY(mu_)
};

}  // namespace goldcache::cache
