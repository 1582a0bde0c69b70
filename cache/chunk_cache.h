// cache/ — the host's read cache of template chunks (docs/design.md §3
// "template", invariants 1, 2, 3, 5, 7, 9, 10).
//
// A template generation is cut into fixed-size chunks. A read is served from
// the local store when the chunk is cached and proves good against its
// checksums; otherwise the chunk is fetched once from the datastore however
// many readers want it at that moment (single-flight), handed to them, and
// stored behind their backs.
//
// Promises:
//  - A byte served is a byte the datastore had for that generation: every
//    4 KiB block read from the local store is checked; a mismatch drops the
//    chunk, counts goldcache_cache_checksum_failures_total and refetches.
//  - Crash safety: chunk data is made durable before the index record that
//    names it; a slot is reused only after the delete of its previous chunk is
//    durable. After a crash (the RUNNING marker is still there at Open) every
//    loaded record is re-proved against its checksum table. A failed sync of
//    the store is final: nothing more is cached until a restart re-proves it.
//  - Concurrent misses on one chunk cause one datastore read; its readers
//    get the bytes as soon as they arrive (one wakeup per fetch), and the
//    checksumming and the local write happen afterwards, in a bounded
//    write-behind queue. Fetches of the pool wait for room in it (so the
//    datastore is read at the pace the local disk can store); a reader's own
//    thread waits at most kReaderQueueWait and then serves the chunk
//    uncached rather than wait for a stuck local disk.
//  - The chunks of one request are fetched in parallel; a reader's
//    sequential run fetches the next chunks ahead of it (bounded, dropped
//    when the run ends), never before a reader's own misses.
//  - Eviction (cache/eviction.h) runs in batches, never takes a chunk being
//    read, keeps what every boot reads through a one-pass sweep, and its
//    order survives a restart.
//  - Hits never wait for RocksDB or for another reader's miss: the map and
//    the eviction lists are sharded, and no lock is held across IO. A hit
//    whose checksum table was verified before reads only its data (the
//    tables are kept in RAM, ~1 KiB per cached MiB, bounded).
//  - When the local store cannot take a chunk (disk full, all slots busy,
//    the write-behind queue full), or the source says its bytes are not yet
//    cacheable, the read is still served, uncached, and counted.
//  - Content addressing: every stored chunk has a SHA-256 digest (in its
//    index record), and the store holds each distinct content once: a chunk
//    whose digest is already stored (a full clone's, an unchanged chunk of a
//    patched template) names the same slot, which goes only when the last
//    chunk naming it does. With a manifest attached to a generation
//    (index/manifest.h), a miss whose manifest digest is stored is served
//    from that slot without reading the datastore; every chunk fetched for
//    that generation is checked against the manifest, and one mismatch
//    distrusts it (detached for good, the generation's chunks dropped,
//    counted and logged). Chunks of a superseded generation leave first.
//  - Boot traces: the order of a generation's first reads is recorded
//    (while asked, for trace_window after its first read) and kept in the
//    index; PrefetchTrace fetches along a trace ahead of the readers, at
//    most max_prefetch at a time and only while no reader's fetch waits
//    (cache/fetch_pool.h), so it never delays a demand miss.
//
// Thread safety: all methods are safe to call concurrently.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cache/chunk_store.h"
#include "cache/eviction.h"
#include "cache/fetch_pool.h"
#include "index/chunk_index.h"
#include "index/manifest.h"
#include "io/file.h"
#include "metrics/metrics.h"
#include "util/log_limit.h"
#include "util/status.h"

namespace rocksdb {
class Env;
}

namespace goldcache::cache {

using index::ChunkKey;
using index::GenerationId;

// Where misses come from: the datastore file of one generation.
class ChunkSource {
 public:
  virtual ~ChunkSource() = default;
  // Reads up to buf.size() bytes at `offset`; short only at end of file.
  // Called from several threads at once (parallel and readahead fetches).
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
  io::Env* env = nullptr;                 // the store's files; null: io::PosixEnv()
  // The index's files (RocksDB's Env); null: private files on the local disk.
  // Tests give index::NewFaultFilesEnv over the same FaultEnv as `env`.
  std::shared_ptr<rocksdb::Env> index_env;
  unsigned fetch_threads = 8;                 // datastore fetches beside the readers' own
  unsigned max_prefetch = 4;                  // of which readahead at most
  unsigned readahead_chunks = 4;              // how far a sequential run fetches ahead
  uint64_t write_behind_bytes = 64ull << 20;  // fetched chunks waiting to be stored
  uint64_t table_cache_bytes = 64ull << 20;   // verified checksum tables kept in RAM
  // How long after a generation's first read its first reads count as its
  // boot (RecordTrace).
  std::chrono::milliseconds trace_window{std::chrono::seconds(60)};
};

// How one read was served, for the caller's per-source accounting.
struct ReadOutcome {
  size_t bytes = 0;           // copied into the caller's buffer
  size_t from_datastore = 0;  // of which this read waited on the datastore for
};

class ChunkCache;

// One reader's view of its reads: an open handle keeps one, so that the
// cache can tell a sequential run (to fetch ahead, and to recognise a
// one-pass sweep) and one pass over a chunk from another (to count uses).
// Thread safety: a stream may be used by concurrent reads of its handle.
class ReadStream {
 public:
  ReadStream();
  ~ReadStream();  // ends the run: readahead still queued for it is dropped
  ReadStream(const ReadStream&) = delete;
  ReadStream& operator=(const ReadStream&) = delete;

  // For the cache: what the stream does now, after a read of [offset, end).
  struct Run {
    uint64_t epoch;      // changes when a run ends
    uint64_t run_bytes;  // length of the current sequential run
  };

 private:
  friend class ChunkCache;
  struct State;
  Run Note(uint64_t offset, uint64_t end);
  const std::shared_ptr<State> state_;
};

class ChunkCache {
 public:
  // In the cache dir while a cache is open: found at Open, the last one did
  // not close cleanly and every cached chunk is re-proved.
  static constexpr char kRunningMarker[] = "RUNNING";
  // A sequential run this long is a sweep (cache/eviction.h).
  static constexpr uint64_t kScanRunBytes = 32ull << 20;

  // Opens the cache in options.dir, loading (and after a crash re-proving)
  // what an earlier run cached. A cache made with another chunk size or an
  // older format is discarded and started afresh (logged).
  static Result<std::unique_ptr<ChunkCache>> Open(const CacheOptions& options);
  // Waits for queued stores, commits the index and the eviction order, and
  // removes the RUNNING marker: the next Open trusts what it finds.
  ~ChunkCache();
  ChunkCache(const ChunkCache&) = delete;
  ChunkCache& operator=(const ChunkCache&) = delete;

  // See index::ChunkIndex::BindGeneration. When the path had another current
  // generation, that one's chunks become the first to be evicted (those
  // that the new generation shares by digest stay, with the new one).
  Result<index::GenerationBinding> BindGeneration(const index::GenerationKey& key);

  // Content addressing. Attaches `manifest` to `gen` (whose key it must
  // describe; see Manifest::Describes): from now on misses of `gen` whose
  // digest is stored are served without the datastore. False (nothing
  // attached) when it does not describe gen, or it is the very manifest
  // (same bytes) that gen distrusted before, on this host, before a restart
  // too; a manifest published again is attached. Replaces a manifest
  // attached earlier. ManifestDistrusted: gen's last manifest lied.
  bool AttachManifest(GenerationId gen, std::shared_ptr<const index::Manifest> manifest);
  bool HasManifest(GenerationId gen) const;
  bool ManifestDistrusted(GenerationId gen) const;

  // Boot traces. RecordTrace starts recording the chunks of `gen` in the
  // order they are first read (reads of a sweep excepted), for trace_window
  // after the first read and up to half the cache's chunks (a no-op when gen
  // has a trace or records already); the trace is saved in
  // the index when the window closes (and at shutdown). TraceOf: gen's
  // trace, being recorded or saved on this host, else the one its attached
  // manifest carries (empty when none).
  void RecordTrace(GenerationId gen);
  // Gives up the trace prefetches and readahead not yet fetched and waits
  // until no background fetch runs: they read through ChunkSources whose
  // owner (roles::Templates) is about to go. Later ones start as usual.
  void DrainFetches();
  std::vector<uint64_t> TraceOf(GenerationId gen) const;
  // Fetches the chunks of `trace` not cached yet, in order (its first half
  // cache's worth), at most max_prefetch at a time, only while no demand
  // fetch waits. They are the first to be evicted until a reader uses them. `source` is
  // kept until the last is fetched. A no-op while one runs for gen already.
  void PrefetchTrace(GenerationId gen, uint64_t file_size, std::vector<uint64_t> trace,
                     std::shared_ptr<ChunkSource> source);
  // Saves every trace still being recorded (tests, shutdown).
  void SaveTraces();

  // Copies [offset, offset + out.size()) of generation `gen`, whose file is
  // `file_size` bytes, into `out`. Short only at end of file. Misses read from
  // `source` (which must serve exactly that generation and outlive every
  // fetch of it: Read waits for the fetches it started; readahead for
  // `stream` holds `source_ref`). `stream` (may be null) is the reader's.
  Result<ReadOutcome> Read(GenerationId gen, uint64_t file_size, uint64_t offset,
                           std::span<char> out, ChunkSource& source, ReadStream* stream = nullptr,
                           std::shared_ptr<ChunkSource> source_ref = nullptr);

  // Reads the whole generation through the cache with `parallel` fetches in
  // flight (goldcache warm). `progress(done, total)` is called now and then
  // from this thread; returning false stops. `rate` bytes/s, 0: unlimited.
  // `only` (may be null): just these chunks, in this order (a boot trace).
  struct WarmReport {
    uint64_t bytes = 0;           // of the generation, read through the cache
    uint64_t from_datastore = 0;  // of which fetched now
    uint64_t reused = 0;          // of which found by digest (another file's or generation's)
  };
  Result<WarmReport> Warm(GenerationId gen, uint64_t file_size, ChunkSource& source,
                          unsigned parallel, uint64_t rate,
                          const std::function<bool(uint64_t, uint64_t)>& progress,
                          const std::vector<uint64_t>* only = nullptr);

  // Commits index changes now (tests, clean shutdown).
  Status FlushIndex();
  // Waits until every fetched chunk queued for storing is stored (or
  // dropped) and no readahead is queued or running (tests, shutdown).
  void WaitIdle();

  // Space order (invariant 5): overlays outrank the read cache, pinned
  // templates included. Space is counted in chunk bytes (a slot also keeps
  // the chunk's checksums, 4 KiB per MiB, on top). LendSpace shrinks the
  // cache by up to `bytes`, rounded up to whole chunks, evicting as it must (never a chunk being
  // read) and punching the lent slots out of the store. Returns the bytes lent, which may be less
  // than asked (or more, by the rounding). No lock is held across its IO. ReturnSpace lets the
  // cache grow back by up to `bytes`, in whole slots; returns the bytes taken back.
  uint64_t LendSpace(uint64_t bytes);
  uint64_t ReturnSpace(uint64_t bytes);
  // Like LendSpace, but the bytes come out of cached chunks (the coldest
  // first), so the file system really gets them back: for a disk fuller than
  // the budget knows (LendSpace takes never-written slots first, which frees
  // nothing on a sparse store).
  uint64_t GiveBackDisk(uint64_t bytes);

  // The key of a known generation (no datastore needed).
  std::optional<index::GenerationKey> GenerationKeyOf(GenerationId gen) const;
  // Every generation the index knows for `path` (GenerationKey::path).
  std::vector<GenerationId> GenerationsOf(const std::string& path) const;
  // Drops every cached chunk of `gen` (chunks being read keep their slots
  // until their reads end) and unpins it. Returns bytes dropped.
  uint64_t Evict(GenerationId gen);
  // Pinned generations are evicted last, only for overlays' space (warm
  // --pin); durable across restarts.
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
  // Bytes of local disk one cached chunk may take (data and checksums).
  uint64_t slot_bytes() const { return store_->stride(); }
  uint64_t capacity_bytes() const;  // chunk bytes in slots not lent
  uint64_t used_bytes() const;      // chunk bytes stored (each distinct content once)
  uint64_t cached_bytes_of(GenerationId gen) const;  // of gen's chunks, shared or not
  bool recovered_from_crash() const { return recovered_from_crash_; }
  // Which eviction list a cached chunk is in, and its record (tests,
  // introspection).
  std::optional<EvictionPolicy::List> ListOf(const ChunkKey& key) const;
  std::optional<index::ChunkRecord> RecordOf(const ChunkKey& key) const;

 private:
  struct Entry;
  class BufferPool;
  struct Flight;
  struct Shard;
  struct Metrics;
  struct StoreJob;
  struct SlotUse;
  struct TraceRecorder;
  struct TracePrefetch;
  // A part of a Read: one chunk's range and how it will be served.
  struct Piece;

  explicit ChunkCache(const CacheOptions& options);
  Status Init();
  Status LoadRecords(bool verify);
  void RestoreOrder();
  Status SaveOrder();

  Shard& ShardOf(const ChunkKey& key);
  EvictionPolicy::Use UseOf(ReadStream* stream, bool scan) const;
  // Looks a chunk up: a hit pins its slot, a flight is joined, a miss starts
  // one (`leader`). REQUIRES: shard lock held.
  void Lookup(Shard& shard, Piece& piece, const EvictionPolicy::Use& use);
  // Reads a pinned hit from the store and unpins it; kCorruption (the chunk
  // was dropped) when it failed its checksums or could not be read.
  Status ServeHit(Piece& piece);
  // Fetches a flight's chunk from the datastore and hands it over.
  void Fetch(const std::shared_ptr<Flight>& flight, ChunkSource& source);
  void Finish(const std::shared_ptr<Flight>& flight);
  Status WaitFlight(Piece& piece, ReadOutcome& outcome);
  void Readahead(GenerationId gen, uint64_t file_size, uint64_t next_chunk, ReadStream& stream,
                 const ReadStream::Run& run, const std::shared_ptr<ChunkSource>& source);
  // Publishes a flight for `key` nobody waits for yet (readahead); null when
  // it is cached (or found by digest) or already in flight.
  // `body` is its task, submitted to the pool's prefetch queue.
  std::shared_ptr<Flight> StartFetch(const ChunkKey& key, uint64_t file_size,
                                     const EvictionPolicy::Use& use, bool prefetch, bool traced,
                                     std::function<void(const std::shared_ptr<Flight>&)> body);

  // Content addressing. REQUIRES: shard lock held, key neither cached nor in
  // flight. When gen's manifest names a digest the store holds, makes `key`
  // an entry naming that slot (rec; the slot not pinned); else when a fetch
  // of another file brings that digest, that flight (join).
  struct Reuse {
    std::optional<index::ChunkRecord> rec;
    std::shared_ptr<Flight> join;
    std::optional<index::Digest> digest;  // the manifest's, if any
  };
  Reuse ReuseLocked(Shard& shard, const ChunkKey& key, uint32_t len, const EvictionPolicy::Use& use,
                    bool may_join = true);
  // REQUIRES: shard lock held. A new flight for `key`, published (and, with
  // `expected`, findable by that digest).
  std::shared_ptr<Flight> NewFlightLocked(Shard& shard, const ChunkKey& key, uint32_t len,
                                          const EvictionPolicy::Use& use, bool prefetch,
                                          bool traced,
                                          const std::optional<index::Digest>& expected);
  // REQUIRES: shard lock held. The flight is no longer findable.
  void RetireLocked(Shard& shard, const std::shared_ptr<Flight>& flight);
  // A reference to the slot holding `digest`, if any.
  std::optional<index::ChunkRecord> Adopt(const index::Digest& digest, uint32_t len);
  // Gives up one reference to rec's slot; true when it was the last (the
  // slot is then free once its delete is durable).
  bool Release(const index::ChunkRecord& rec);
  // A damaged slot: no new chunk may adopt it.
  void Unshare(const index::ChunkRecord& rec);
  // The manifest digest of `key`, if gen has a manifest.
  std::optional<index::Digest> ManifestDigest(const ChunkKey& key) const;
  // A fetched chunk of `gen` disagreed with its manifest.
  void Distrust(const ChunkKey& key, const index::Digest& got);
  // A reader's read of chunks [first, last] (not noted for a sweep).
  void NoteFirstRead(GenerationId gen, uint64_t first_chunk, uint64_t last_chunk);
  void SaveTrace(GenerationId gen, const std::vector<uint64_t>& trace);
  // Chunks a trace holds at most: half the cache (a boot set it can keep).
  size_t TraceLimit() const;
  void PumpTrace(const std::shared_ptr<TracePrefetch>& job);
  // A trace prefetch flight's task.
  void RunTraced(const std::shared_ptr<TracePrefetch>& job, const std::shared_ptr<Flight>& flight);

  // Queues a fetched chunk for storing; false when the queue is still full
  // after waiting `wait` for room (max(): as long as it takes).
  bool Enqueue(const std::shared_ptr<Flight>& flight, std::chrono::milliseconds wait);
  void StoreLoop();
  void Store(const std::shared_ptr<Flight>& flight);

  // Space.
  std::optional<uint64_t> AllocateSlot();
  // Evicts chunks across shards, oldest first in each, until `n` slots are
  // freed (or nothing more can go); pinned generations only with
  // `even_pinned`. Returns the slots freed.
  size_t EvictSome(size_t n, bool even_pinned);
  // REQUIRES: shard lock held. Removes the entry, queues its delete;
  // true when that freed its slot (no other chunk shares it).
  bool DropLocked(Shard& shard, const ChunkKey& key, bool to_policy);
  void ReclaimLocked();  // REQUIRES: space_mu_ held
  size_t LowWatermark() const;
  void AddBytes(GenerationId gen, int64_t delta);

  const CacheOptions options_;
  io::Env& env_;
  const uint32_t chunk_size_;
  uint64_t slots_ = 0;
  bool recovered_from_crash_ = false;
  std::unique_ptr<Metrics> m_;
  std::unique_ptr<ChunkStore> store_;
  std::unique_ptr<index::ChunkIndex> index_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::unique_ptr<std::atomic<uint32_t>[]> slot_pins_;  // readers of each slot
  std::atomic<bool> store_failed_{false};               // a sync failed: cache nothing more
  LogLimit store_error_log_{std::chrono::seconds(10)};  // chunk writes failing one by one

  // Free space. Lock order: a shard's mu before space_mu_.
  mutable std::mutex space_mu_;
  struct PendingFree {
    uint64_t seq;  // index sequence of the delete that must be durable first
    uint64_t slot;
  };
  std::vector<uint64_t> free_slots_;       // GUARDED_BY(space_mu_)
  std::vector<PendingFree> pending_free_;  // GUARDED_BY(space_mu_)
  uint64_t lent_slots_ = 0;                // GUARDED_BY(space_mu_): lent to overlays
  std::vector<uint64_t> lent_list_;        // GUARDED_BY(space_mu_): which ones
  std::atomic<uint64_t> used_bytes_{0};
  std::atomic<size_t> evict_cursor_{0};

  // Content addressing. Lock order: a shard's mu, manifest_mu_, cas_mu_,
  // space_mu_.
  mutable std::mutex cas_mu_;
  std::vector<SlotUse> slot_use_;  // GUARDED_BY(cas_mu_): per slot
  std::unordered_map<index::Digest, uint64_t, index::DigestHash> by_digest_;  // GUARDED_BY(cas_mu_)
  // Flights whose manifest digest is known: misses of other files with that
  // digest join them.
  std::unordered_map<index::Digest, std::shared_ptr<Flight>, index::DigestHash>
      digest_flights_;  // GUARDED_BY(cas_mu_)
  mutable std::shared_mutex manifest_mu_;
  std::unordered_map<GenerationId, std::shared_ptr<const index::Manifest>>
      manifests_;  // GUARDED_BY(manifest_mu_)
  // Generations whose manifest lied, and that manifest's identity.
  std::unordered_map<GenerationId, std::string> distrusted_;  // GUARDED_BY(manifest_mu_)

  // Boot traces.
  mutable std::shared_mutex trace_mu_;
  std::unordered_map<GenerationId, std::shared_ptr<TraceRecorder>>
      recording_;                           // GUARDED_BY(trace_mu_)
  std::atomic<size_t> recording_count_{0};  // recording_.size(), read without the lock
  std::unordered_map<GenerationId, std::shared_ptr<TracePrefetch>>
      prefetching_;  // GUARDED_BY(trace_mu_)
  std::atomic<bool> stopping_{false};
  std::atomic<int> draining_{0};  // DrainFetches under way
  bool Stopping() const { return stopping_.load() || draining_.load() > 0; }

  mutable std::mutex gen_mu_;
  std::unordered_map<GenerationId, uint64_t> bytes_by_generation_;  // GUARDED_BY(gen_mu_)
  mutable std::shared_mutex pin_mu_;
  std::unordered_set<GenerationId> pinned_;  // GUARDED_BY(pin_mu_)

  // Write-behind queue.
  std::mutex wb_mu_;
  std::condition_variable wb_cv_;
  std::deque<std::shared_ptr<Flight>> wb_queue_;  // GUARDED_BY(wb_mu_)
  uint64_t wb_bytes_ = 0;                         // GUARDED_BY(wb_mu_): queued or being stored
  bool wb_stop_ = false;                          // GUARDED_BY(wb_mu_)
  std::vector<std::thread> wb_threads_;

  std::unique_ptr<BufferPool> buffers_;  // before pool_: flights outlive fetches, not buffers
  std::unique_ptr<FetchPool> pool_;
  const std::chrono::steady_clock::time_point epoch_ = std::chrono::steady_clock::now();
};

}  // namespace goldcache::cache
