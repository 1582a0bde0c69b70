// The chunk cache's machinery (the contract is chunk_cache.h):
//
//   Read    pieces per chunk -> each shard's map: hit (pin the slot), a flight
//           in progress (join it), or a miss (lead a new flight). Led
//           fetches go to the fetch pool, in parallel; then hits are read
//           from the store and flights waited for (a flight whose task no
//           pool thread has started yet is run by its waiter, so a reader
//           never queues behind other work). A sequential run then queues
//           readahead.
//   Flight  one fetch of one chunk: its bytes, once there, serve every
//           waiter and every reader that comes while it is stored.
//   Store   write-behind threads checksum and digest the bytes; a digest
//           already stored names that slot (one more reference), else they
//           take a slot (evicting in batches) and write data and checksums;
//           then publish the entry and queue its index record; the index
//           commits records only after the store is synced (data durable
//           before the index names it).
//   Reuse   a miss of a generation with a manifest whose digest is stored
//           becomes an entry naming that slot, served as a hit.
//   Trace   the first reads of a recording generation, in order; a trace
//           prefetch keeps max_prefetch of its chunks in flight, each
//           finished fetch queueing the next.
//
// Locks: each shard's mu guards its map, flights, eviction lists and table
// cache; manifest_mu_ the manifests; cas_mu_ the slots' references and the
// digest map; space_mu_ the free slots; gen_mu_ the per-generation byte
// counts; pin_mu_ the pinned generations; trace_mu_ the traces. Order: shard
// mu, then manifest_mu_, cas_mu_, space_mu_ (or gen_mu_, pin_mu_; never two
// shards at once; trace_mu_ alone). None is held across IO, a RocksDB write
// or a wait for a flight.

#include "cache/chunk_cache.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <list>

#include "cache/checksum.h"
#include "index/digest.h"
#include "util/log_limit.h"
#include "util/private_dir.h"

namespace goldcache::cache {
namespace {

constexpr int kMaxAttempts = 3;
// 3: records carry the chunk's digest, table hashes are seeded with it, and
// a slot may be named by many records (2: one store.dat of slots with their
// checksums; 1: chunks.dat + sums.dat).
constexpr char kFormatVersion[] = "3";
constexpr char kTraceMetaPrefix[] = "trace.";
constexpr char kOrderMeta[] = "eviction_order";
// How far behind or ahead of a run's end a read may land and still continue
// it: the queue of one reader reorders its reads a little.
constexpr uint64_t kRunSlackBehind = 2ull << 20;
constexpr uint64_t kRunSlackAhead = 1ull << 20;
constexpr auto kOrderCheckpoint = std::chrono::seconds(30);
// How long a reader's thread, holding its bytes already, waits for room in
// the write-behind queue before the chunk goes uncached.
constexpr auto kReaderQueueWait = std::chrono::milliseconds(500);

std::atomic<uint32_t> next_stream_id{1};

}  // namespace

// ---------------------------------------------------------------------------
// ReadStream

struct ReadStream::State {
  const uint32_t id = next_stream_id.fetch_add(1, std::memory_order_relaxed);
  std::mutex mu;
  bool has_run = false;          // GUARDED_BY(mu)
  uint64_t run_start = 0;        // GUARDED_BY(mu)
  uint64_t run_high = 0;         // GUARDED_BY(mu)
  uint64_t readahead_until = 0;  // GUARDED_BY(mu): chunks below this were queued in this run
  std::atomic<uint64_t> epoch{1};
};

ReadStream::ReadStream() : state_(std::make_shared<State>()) {}

ReadStream::~ReadStream() { state_->epoch.fetch_add(1, std::memory_order_relaxed); }

ReadStream::Run ReadStream::Note(uint64_t offset, uint64_t end) {
  std::lock_guard lock(state_->mu);
  State& s = *state_;
  const bool continues =
      s.has_run && offset + kRunSlackBehind >= s.run_high && offset <= s.run_high + kRunSlackAhead;
  if (!continues) {
    s.epoch.fetch_add(1, std::memory_order_relaxed);
    s.has_run = true;
    s.run_start = offset;
    s.run_high = end;
    s.readahead_until = 0;
  } else {
    s.run_high = std::max(s.run_high, end);
  }
  return Run{s.epoch.load(std::memory_order_relaxed), s.run_high - s.run_start};
}

// ---------------------------------------------------------------------------
// Internals

struct ChunkCache::Metrics {
  explicit Metrics(metrics::Registry& r)
      : hits(r.GetCounter("goldcache_cache_hits_total",
                          "Chunk lookups served from the local cache.")),
        misses(r.GetCounter("goldcache_cache_misses_total",
                            "Chunk lookups that were not in the local cache.")),
        evictions(r.GetCounter("goldcache_cache_evictions_total",
                               "Chunks evicted from the local cache to make room.")),
        checksum_failures(r.GetCounter(
            "goldcache_cache_checksum_failures_total",
            "Cached chunks that failed checksum verification (dropped and refetched).")),
        single_flight_waits(
            r.GetCounter("goldcache_cache_single_flight_waits_total",
                         "Reads that were served by another reader's fetch of the same chunk.")),
        uncached(
            r.GetCounter("goldcache_cache_uncached_fills_total",
                         "Fetched chunks served without being stored (no slot or store error).")),
        unsettled(r.GetCounter(
            "goldcache_cache_unsettled_fills_total",
            "Fetched chunks served without being stored because their generation changed on the "
            "datastore less than [cache] settle ago (it may still be being written).")),
        write_behind_full(r.GetCounter(
            "goldcache_cache_write_behind_full_total",
            "Fetched chunks served without being stored because the write-behind queue was "
            "full (the local disk is slower than the datastore).")),
        readahead(r.GetCounter("goldcache_cache_readahead_chunks_total",
                               "Chunks fetched ahead of a sequential reader.")),
        readahead_late(r.GetCounter(
            "goldcache_cache_readahead_late_total",
            "Reads that found the chunk they need still being fetched ahead of them.")),
        store_errors(
            r.GetCounter("goldcache_errors_total", "Errors by kind.", {{"kind", "local_store"}})),
        recovered_dropped(
            r.GetCounter("goldcache_cache_recovery_dropped_total",
                         "Chunks dropped at startup because they could not be proved good.")),
        reused_manifest(r.GetCounter(
            "goldcache_cache_reused_chunks_total",
            "Chunks found in the local store by content digest instead of being stored again "
            "(store: fetched, and its bytes were stored already) or fetched at all (manifest: "
            "the generation's manifest named a digest the store holds).",
            {{"by", "manifest"}})),
        reused_store(r.GetCounter("goldcache_cache_reused_chunks_total", "", {{"by", "store"}})),
        reused_manifest_bytes(r.GetCounter(
            "goldcache_cache_reused_bytes_total",
            "Bytes of the chunks in goldcache_cache_reused_chunks_total.", {{"by", "manifest"}})),
        reused_store_bytes(
            r.GetCounter("goldcache_cache_reused_bytes_total", "", {{"by", "store"}})),
        manifest_hits(r.GetCounter(
            "goldcache_manifest_chunks_total",
            "Misses of generations with a manifest: hit (its digest was stored, no datastore "
            "read) or miss (fetched).",
            {{"result", "hit"}})),
        manifest_misses(r.GetCounter("goldcache_manifest_chunks_total", "", {{"result", "miss"}})),
        manifest_distrusts(r.GetCounter(
            "goldcache_manifest_distrusts_total",
            "Manifests detached because a chunk fetched for their generation had another digest "
            "(the manifest is wrong, or the file changed without its attributes showing it).")),
        prefetch_bytes(r.GetCounter("goldcache_cache_prefetch_bytes_total",
                                    "Bytes fetched ahead of readers along a boot trace.")),
        prefetch_in_time(
            r.GetCounter("goldcache_cache_prefetch_in_time_total",
                         "Reads that found a chunk prefetched along a boot trace already stored.")),
        prefetch_late(r.GetCounter(
            "goldcache_cache_prefetch_late_total",
            "Reads that found a chunk prefetched along a boot trace still being fetched.")),
        traces_recorded(r.GetCounter(
            "goldcache_cache_traces_recorded_total",
            "Boot traces recorded (a generation's first reads, in order) and saved in the index.")),
        write_behind_bytes(r.GetGauge(
            "goldcache_cache_write_behind_bytes",
            "Bytes of fetched chunks handed to readers and waiting to be stored locally.")) {}
  metrics::Counter& hits;
  metrics::Counter& misses;
  metrics::Counter& evictions;
  metrics::Counter& checksum_failures;
  metrics::Counter& single_flight_waits;
  metrics::Counter& uncached;
  metrics::Counter& unsettled;
  metrics::Counter& write_behind_full;
  metrics::Counter& readahead;
  metrics::Counter& readahead_late;
  metrics::Counter& store_errors;
  metrics::Counter& recovered_dropped;
  metrics::Counter& reused_manifest;
  metrics::Counter& reused_store;
  metrics::Counter& reused_manifest_bytes;
  metrics::Counter& reused_store_bytes;
  metrics::Counter& manifest_hits;
  metrics::Counter& manifest_misses;
  metrics::Counter& manifest_distrusts;
  metrics::Counter& prefetch_bytes;
  metrics::Counter& prefetch_in_time;
  metrics::Counter& prefetch_late;
  metrics::Counter& traces_recorded;
  metrics::Gauge& write_behind_bytes;
};

struct ChunkCache::Entry {
  index::ChunkRecord rec;
  // The checksum table, once verified against rec.table_hash; with its
  // place in the shard's table LRU.
  std::shared_ptr<const std::vector<uint32_t>> table;
  std::list<ChunkKey>::iterator table_it;
  bool prefetched = false;  // stored by a trace prefetch, not read since
};

// Who uses a slot: the content it holds and how many entries name it.
struct ChunkCache::SlotUse {
  index::Digest digest{};
  uint64_t table_hash = 0;
  uint32_t length = 0;
  uint32_t refs = 0;       // entries naming the slot (0: free, lent or being written)
  bool shareable = false;  // in by_digest_: new chunks with its digest may name it
};

struct ChunkCache::TraceRecorder {
  std::mutex mu;
  std::vector<uint64_t> order;                    // GUARDED_BY(mu)
  std::unordered_set<uint64_t> seen;              // GUARDED_BY(mu)
  std::chrono::steady_clock::time_point start{};  // GUARDED_BY(mu): of the first read
  bool started = false;                           // GUARDED_BY(mu)
  bool closed = false;                            // GUARDED_BY(mu)
};

struct ChunkCache::TracePrefetch {
  GenerationId gen = 0;
  uint64_t file_size = 0;
  std::vector<uint64_t> trace;
  std::shared_ptr<ChunkSource> source;
  std::mutex mu;
  size_t next = 0;       // GUARDED_BY(mu): in trace
  unsigned running = 0;  // GUARDED_BY(mu): fetches in flight
};

// Chunk-sized buffers for flights, kept for reuse: a fresh 1 MiB buffer
// per miss costs a zero-fill and 256 page faults, more than its checksum.
class ChunkCache::BufferPool {
 public:
  BufferPool(uint32_t size, size_t keep) : size_(size), keep_(keep) {}
  std::unique_ptr<char[]> Take() {
    {
      std::lock_guard lock(mu_);
      if (!free_.empty()) {
        auto b = std::move(free_.back());
        free_.pop_back();
        return b;
      }
    }
    return std::unique_ptr<char[]>(new char[size_]);  // not zeroed: always filled first
  }
  void Give(std::unique_ptr<char[]> b) {
    std::lock_guard lock(mu_);
    if (free_.size() < keep_) free_.push_back(std::move(b));
  }

 private:
  const uint32_t size_;
  const size_t keep_;
  std::mutex mu_;
  std::vector<std::unique_ptr<char[]>> free_;  // GUARDED_BY(mu_)
};

struct ChunkCache::Flight {
  enum State : int { kFetching, kReady, kFailed };
  explicit Flight(BufferPool& buffers) : pool(buffers) {}
  ~Flight() {
    if (buf) pool.Give(std::move(buf));
  }
  std::span<char> data() { return std::span<char>(buf.get(), chunk_len); }
  BufferPool& pool;
  ChunkKey key;
  uint64_t chunk_start = 0;
  uint32_t chunk_len = 0;
  bool prefetch = false;
  EvictionPolicy::Use use;  // of the reader that started it: how it enters the lists
  bool traced = false;      // a trace prefetch
  // The manifest's digest of the chunk (set before the flight is visible):
  // the fetched bytes are checked against it before anyone gets them, and
  // readers of other files with that digest may join the flight.
  std::optional<index::Digest> expected;
  index::Digest digest{};        // of the fetched bytes, when `digested`
  bool digested = false;         // set before state leaves kFetching
  bool digest_mismatch = false;  // likewise: not `expected` (not for other files)
  std::atomic<int> state{kFetching};
  std::atomic<bool> demanded{false};      // a reader waits for it: never abandoned
  bool cacheable = false;                 // decided before the fetch
  Status status;                          // set before state leaves kFetching
  std::unique_ptr<char[]> buf;            // the chunk: valid, and never changed, once kReady
  std::shared_ptr<FetchPool::Task> task;  // set before the flight is visible to others
  std::mutex mu;
  std::condition_variable cv;
};

struct ChunkCache::Shard {
  Shard(size_t capacity, size_t tables)
      : policy(capacity), table_limit(std::max<size_t>(tables, 1)) {}
  std::mutex mu;
  std::unordered_map<ChunkKey, Entry, index::ChunkKeyHash> entries;  // GUARDED_BY(mu)
  std::unordered_map<ChunkKey, std::shared_ptr<Flight>, index::ChunkKeyHash>
      flights;                    // GUARDED_BY(mu)
  EvictionPolicy policy;          // GUARDED_BY(mu)
  std::list<ChunkKey> table_lru;  // GUARDED_BY(mu): entries with a table, front = recent
  const size_t table_limit;
  std::atomic<size_t> size{0};  // entries.size(), read without mu to pick eviction shards
};

struct ChunkCache::Piece {
  ChunkKey key;
  uint64_t chunk_start = 0;
  uint32_t chunk_len = 0;
  uint32_t in_off = 0;
  uint32_t n = 0;
  char* dst = nullptr;
  bool done = false;
  int attempts = 0;
  // Another file's fetch of this content it joined did not bring it: it
  // fetches its own from then on.
  bool no_join = false;
  // A hit: its record and (if verified before) table; the slot is pinned.
  std::optional<index::ChunkRecord> rec;
  std::shared_ptr<const std::vector<uint32_t>> table;
  // Else a flight, which this reader may lead.
  std::shared_ptr<Flight> flight;
  bool leader = false;
};

// ---------------------------------------------------------------------------
// Open and close

ChunkCache::ChunkCache(const CacheOptions& options)
    : options_(options),
      env_(options.env != nullptr ? *options.env : io::PosixEnv()),
      chunk_size_(options.chunk_size),
      m_(new Metrics(*options.registry)) {}

Result<std::unique_ptr<ChunkCache>> ChunkCache::Open(const CacheOptions& options) {
  if (options.registry == nullptr) {
    return Status::Error(Code::kInvalidArgument, "cache needs a metrics registry");
  }
  if (options.chunk_size == 0 || options.chunk_size % kBlockSize != 0) {
    return Status::Error(Code::kInvalidArgument,
                         "chunk size must be a positive multiple of 4KiB, got " +
                             std::to_string(options.chunk_size));
  }
  if (options.capacity_bytes / options.chunk_size < 2) {
    return Status::Error(Code::kInvalidArgument, "cache size must hold at least two chunks (" +
                                                     std::to_string(2ull * options.chunk_size) +
                                                     " bytes)");
  }
  std::unique_ptr<ChunkCache> cache(new ChunkCache(options));
  GC_RETURN_IF_ERROR(cache->Init());
  return cache;
}

Status ChunkCache::Init() {
  const std::string& dir = options_.dir;
  std::error_code ec;
  // Owner-only (0700, files 0600): the index names datastore paths and the
  // overlays hold desktops' data. A cache dir made by an older agent is
  // tightened, and says so.
  Result<size_t> loosened = MakePrivateTree(dir);
  if (!loosened.ok()) {
    return Status::Error(Code::kIoError, "cache dir: " + loosened.status().message());
  }
  if (*loosened > 0) {
    options_.registry
        ->GetCounter("goldcache_errors_total", "Errors by kind.", {{"kind", "cache_permissions"}})
        .Add(*loosened);
    spdlog::warn(
        "cache {}: {} files and directories were readable by other users; made them owner-only "
        "(0700/0600)",
        dir, *loosened);
  }
  const std::string marker = dir + "/" + kRunningMarker;
  recovered_from_crash_ = std::filesystem::exists(marker);
  if (recovered_from_crash_) {
    spdlog::warn("cache {}: the previous agent did not stop cleanly; re-proving every cached chunk",
                 dir);
  }

  index::ChunkIndex::Options io;
  io.dir = dir + "/index";
  io.flush_interval = options_.index_flush_interval;
  io.env = options_.index_env;
  io.before_commit = [this]() -> Status {
    if (store_failed_.load()) {
      return Status::Error(Code::kIoError, "the local store failed to sync earlier");
    }
    Status st = store_->Sync();
    if (!st.ok()) {
      // After a failed fsync Linux may report a later one as success: this
      // store can no longer prove what it wrote. Cache nothing more.
      if (!store_failed_.exchange(true)) {
        m_->store_errors.Add();
        spdlog::error(
            "cache {}: syncing the local store failed ({}); nothing more is cached until the "
            "agent restarts and re-proves every chunk. Check the local disk.",
            options_.dir, st.ToString());
      }
    }
    return st;
  };
  // The store's slots mean nothing without the index that names them.
  auto remove_store = [&] {
    for (const char* f : {"chunks.dat", "sums.dat", ChunkStore::kFileName}) {
      std::filesystem::remove(dir + "/" + f, ec);
    }
  };
  auto index = index::ChunkIndex::Open(io);
  if (!index.ok() && index.status().code() == Code::kCorruption) {
    // It is a cache: a damaged index must not keep the agent (and every
    // desktop's disk) down. Set it aside for a post-mortem and start empty.
    const std::string aside = dir + "/index.damaged";
    std::filesystem::remove_all(aside, ec);
    std::filesystem::rename(io.dir, aside, ec);
    if (ec) {
      return Status::Error(Code::kIoError, index.status().message() + "; setting it aside as " +
                                               aside + " failed: " + ec.message());
    }
    remove_store();
    options_.registry
        ->GetCounter("goldcache_errors_total", "Errors by kind.", {{"kind", "index_damaged"}})
        .Add();
    spdlog::error(
        "cache {}: the index is damaged ({}); it was set aside as {} and the cache starts "
        "empty: templates are fetched from the datastore again, and pinned templates need "
        "`goldcache warm --pin` again. If this repeats, check the local disk.",
        dir, index.status().message(), aside);
    index = index::ChunkIndex::Open(io);
  }
  if (!index.ok()) return index.status();
  index_ = std::move(index).value();

  auto stored_chunk = index_->GetMeta("chunk_size");
  if (!stored_chunk.ok()) return stored_chunk.status();
  auto stored_format = index_->GetMeta("format");
  if (!stored_format.ok()) return stored_format.status();
  const bool other_chunk =
      stored_chunk->has_value() && **stored_chunk != std::to_string(chunk_size_);
  const bool other_format = stored_format->has_value() && **stored_format != kFormatVersion;
  if (other_chunk || other_format) {
    spdlog::warn("cache {} was made with {} {}, now {}: discarding it", dir,
                 other_chunk ? "chunk size" : "format",
                 other_chunk ? **stored_chunk : **stored_format,
                 other_chunk ? std::to_string(chunk_size_) : std::string(kFormatVersion));
    index_.reset();
    std::filesystem::remove_all(io.dir, ec);
    remove_store();
    index = index::ChunkIndex::Open(io);
    if (!index.ok()) return index.status();
    index_ = std::move(index).value();
  }
  GC_RETURN_IF_ERROR(index_->PutMeta("chunk_size", std::to_string(chunk_size_)));
  GC_RETURN_IF_ERROR(index_->PutMeta("format", kFormatVersion));

  // The budget counts chunk bytes; each slot's checksums (4 KiB per MiB)
  // come on top.
  slots_ = options_.capacity_bytes / chunk_size_;
  io::CountIoUringFailuresIn(&options_.registry->GetCounter(
      "goldcache_errors_total", "Errors by kind.", {{"kind", "io_uring"}}));
  auto store = ChunkStore::Open(env_, dir, chunk_size_, slots_);
  if (!store.ok()) return store.status();
  store_ = std::move(store).value();
  slot_pins_.reset(new std::atomic<uint32_t>[slots_]);
  for (uint64_t i = 0; i < slots_; ++i) slot_pins_[i].store(0);
  slot_use_.resize(slots_);

  // Shards: enough that hits of many readers rarely meet on one lock, few
  // enough that each keeps a meaningful share of the eviction lists.
  size_t nshards = 1;
  while (nshards < 16 && slots_ / (nshards * 2) >= 64) nshards *= 2;
  const size_t tables = options_.table_cache_bytes /
                        (uint64_t{BlocksFor(chunk_size_)} * sizeof(uint32_t) + 64) / nshards;
  for (size_t i = 0; i < nshards; ++i) {
    shards_.push_back(std::make_unique<Shard>((slots_ + nshards - 1) / nshards, tables));
  }

  GC_RETURN_IF_ERROR(LoadRecords(recovered_from_crash_));
  RestoreOrder();
  auto pins = index_->GetMeta("pinned_generations");
  if (!pins.ok()) return pins.status();
  if (pins->has_value()) {
    std::string_view list = **pins;
    while (!list.empty()) {
      auto comma = list.find(',');
      pinned_.insert(std::stoull(std::string(list.substr(0, comma))));
      list = comma == std::string_view::npos ? "" : list.substr(comma + 1);
    }
  }

  // The marker goes down only once the loaded state is consistent.
  auto marker_file = env_.Open(marker, /*create=*/true, /*truncate=*/false);
  if (!marker_file.ok()) return marker_file.status();
  marker_file->reset();
  GC_RETURN_IF_ERROR(env_.SyncDir(dir));

  // Enough kept for the fetches in flight; what a full write-behind queue
  // held beyond that goes back to the system, or a storm's peak stays in the
  // agent's RSS for good (64 MiB at 1 MiB chunks, on top of the overlays').
  buffers_ = std::make_unique<BufferPool>(chunk_size_, options_.fetch_threads + 4);
  pool_ = std::make_unique<FetchPool>(options_.fetch_threads, options_.max_prefetch);
  for (int i = 0; i < 2; ++i) wb_threads_.emplace_back([this] { StoreLoop(); });

  auto& r = *options_.registry;
  r.AddCallbackGauge("goldcache_cache_used_bytes", "Bytes of template data in the local cache.", {},
                     [this] { return static_cast<double>(used_bytes()); });
  r.AddCallbackGauge("goldcache_cache_capacity_bytes", "Capacity of the local cache in bytes.", {},
                     [this] { return static_cast<double>(capacity_bytes()); });
  r.AddCallbackGauge("goldcache_index_pending_records",
                     "Index changes not yet durable in RocksDB (committed every flush interval).",
                     {}, [this] { return static_cast<double>(index_->pending()); });
  size_t cached = 0;
  for (const auto& s : shards_) cached += s->size.load();
  spdlog::info("cache {}: {} of {} slots in use, chunk size {}, {} shards", dir, cached, slots_,
               chunk_size_, shards_.size());
  return Status::Ok();
}

Status ChunkCache::LoadRecords(bool verify) {
  std::vector<ChunkKey> drop;
  std::vector<uint32_t> table;
  std::vector<char> scratch(verify ? chunk_size_ : 0);
  // After a crash each slot is proved once, however many records name it.
  std::vector<int8_t> proved(verify ? slots_ : 0, -1);  // -1 not yet, 0 bad, 1 good
  auto prove = [&](const index::ChunkRecord& rec) {
    table.assign(BlocksFor(rec.length), 0);
    Status st = store_->Read(rec.slot, 0, std::span<char>(scratch.data(), rec.length), table);
    bool good = st.ok() && TableHash(table, rec.digest, rec.length) == rec.table_hash;
    for (uint32_t b = 0; good && b < table.size(); ++b) {
      const uint32_t off = b * kBlockSize;
      const uint32_t len = std::min<uint32_t>(kBlockSize, rec.length - off);
      good = BlockChecksum(std::span<const char>(scratch.data() + off, len)) == table[b];
    }
    return good;
  };
  GC_RETURN_IF_ERROR(index_->ForEachChunk([&](const ChunkKey& key, const index::ChunkRecord& rec) {
    bool good = rec.slot < slots_ && rec.length > 0 && rec.length <= chunk_size_;
    SlotUse* use = good ? &slot_use_[rec.slot] : nullptr;
    // A slot named before must be named for the same content.
    if (good && use->refs > 0) {
      good = use->digest == rec.digest && use->table_hash == rec.table_hash &&
             use->length == rec.length;
    }
    if (good && verify) {
      if (proved[rec.slot] < 0) proved[rec.slot] = prove(rec) ? 1 : 0;
      good = proved[rec.slot] == 1;
    }
    if (!good) {
      drop.push_back(key);
      return;
    }
    if (use->refs++ == 0) {
      use->digest = rec.digest;
      use->table_hash = rec.table_hash;
      use->length = rec.length;
      use->shareable = by_digest_.emplace(rec.digest, rec.slot).second;
      used_bytes_ += rec.length;
    }
    Shard& shard = ShardOf(key);
    shard.entries[key] = Entry{rec, nullptr, {}, false};
    shard.size.store(shard.entries.size());
    bytes_by_generation_[key.gen] += rec.length;
  }));
  for (const ChunkKey& key : drop) index_->Delete(key);
  if (!drop.empty()) {
    m_->recovered_dropped.Add(drop.size());
    spdlog::warn("cache {}: dropped {} chunk record(s) that could not be proved good", options_.dir,
                 drop.size());
    GC_RETURN_IF_ERROR(index_->Flush());
  }
  for (uint64_t s = slots_; s-- > 0;) {
    if (slot_use_[s].refs == 0) free_slots_.push_back(s);  // lowest on top: the file stays compact
  }
  return Status::Ok();
}

// The eviction order is one metadata value: per chunk, its list (1 byte) and
// key (8 + 8 bytes, big-endian as the index keys), coldest first.
Status ChunkCache::SaveOrder() {
  std::string blob;
  for (const auto& shard : shards_) {
    std::vector<std::pair<ChunkKey, EvictionPolicy::List>> order;
    {
      std::lock_guard lock(shard->mu);
      order = shard->policy.Order();
    }
    for (const auto& [key, list] : order) {
      blob.push_back(static_cast<char>(list));
      blob += index::EncodeChunkKey(key).substr(1);
    }
  }
  return index_->PutMeta(kOrderMeta, blob);
}

void ChunkCache::RestoreOrder() {
  auto blob = index_->GetMeta(kOrderMeta);
  std::vector<std::pair<ChunkKey, EvictionPolicy::List>> saved;
  if (blob.ok() && blob->has_value()) {
    std::string_view b = **blob;
    for (; b.size() >= 17; b.remove_prefix(17)) {
      const auto list = static_cast<uint8_t>(b[0]);
      auto key = index::DecodeChunkKey("c" + std::string(b.substr(1, 16)));
      if (!key || list > 2) continue;
      saved.emplace_back(*key, static_cast<EvictionPolicy::List>(list));
    }
  }
  // Chunks the saved order does not know (stored after it was saved) are
  // the coldest of probation; then the saved order, coldest first.
  std::unordered_set<ChunkKey, index::ChunkKeyHash> known;
  for (const auto& [key, list] : saved) known.insert(key);
  for (const auto& shard : shards_) {
    for (const auto& [key, entry] : shard->entries) {
      if (!known.count(key)) shard->policy.Restore(key, EvictionPolicy::List::kProbation);
    }
  }
  for (const auto& [key, list] : saved) {
    Shard& shard = ShardOf(key);
    if (shard.entries.count(key) && !shard.policy.Contains(key)) shard.policy.Restore(key, list);
  }
}

ChunkCache::~ChunkCache() {
  if (!index_) return;
  stopping_.store(true);  // trace prefetches queue nothing more
  for (;;) {              // and the ones under way end (their tasks use pool_)
    {
      std::shared_lock lock(trace_mu_);
      if (prefetching_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  pool_.reset();  // runs or finishes every fetch still queued
  {
    std::lock_guard lock(wb_mu_);
    wb_stop_ = true;
  }
  wb_cv_.notify_all();
  for (auto& t : wb_threads_) t.join();
  SaveTraces();
  Status order = SaveOrder();
  if (!order.ok())
    spdlog::warn("cache {}: saving the eviction order: {}", options_.dir, order.ToString());
  Status st = index_->Flush();
  index_.reset();  // stops the committer
  if (!st.ok() || store_failed_.load()) {
    spdlog::error("cache {}: final index commit failed, next start re-proves chunks: {}",
                  options_.dir, st.ok() ? "the local store failed to sync" : st.ToString());
    return;
  }
  (void)env_.Remove(options_.dir + "/" + kRunningMarker);
  (void)env_.SyncDir(options_.dir);
}

// ---------------------------------------------------------------------------
// Small accessors

ChunkCache::Shard& ChunkCache::ShardOf(const ChunkKey& key) {
  return *shards_[index::ChunkKeyHash{}(key) % shards_.size()];
}

Result<index::GenerationBinding> ChunkCache::BindGeneration(const index::GenerationKey& key) {
  auto binding = index_->BindGeneration(key);
  if (binding.ok() && binding->changed && binding->previous != 0) {
    // The file changed: what only its old generation needs goes first
    // (open handles of the old generation still hit; a touch keeps it).
    size_t retired = 0;
    for (auto& shard : shards_) {
      std::lock_guard lock(shard->mu);
      for (const auto& [k, entry] : shard->entries) {
        if (k.gen != binding->previous) continue;
        shard->policy.Retire(k);
        ++retired;
      }
    }
    if (retired > 0) {
      spdlog::info("cache: {} chunk(s) of superseded generation {} of {} will be evicted first",
                   retired, binding->previous, key.path);
    }
  }
  return binding;
}

Status ChunkCache::FlushIndex() { return index_->Flush(); }

uint64_t ChunkCache::capacity_bytes() const {
  std::lock_guard lock(space_mu_);
  return (slots_ - lent_slots_) * chunk_size_;
}

std::optional<index::ChunkRecord> ChunkCache::RecordOf(const ChunkKey& key) const {
  Shard& shard = const_cast<ChunkCache*>(this)->ShardOf(key);
  std::lock_guard lock(shard.mu);
  auto it = shard.entries.find(key);
  if (it == shard.entries.end()) return std::nullopt;
  return it->second.rec;
}

uint64_t ChunkCache::used_bytes() const { return used_bytes_.load(); }

uint64_t ChunkCache::cached_bytes_of(GenerationId gen) const {
  std::lock_guard lock(gen_mu_);
  auto it = bytes_by_generation_.find(gen);
  return it == bytes_by_generation_.end() ? 0 : it->second;
}

std::optional<EvictionPolicy::List> ChunkCache::ListOf(const ChunkKey& key) const {
  Shard& shard = const_cast<ChunkCache*>(this)->ShardOf(key);
  std::lock_guard lock(shard.mu);
  return shard.policy.ListOf(key);
}

void ChunkCache::AddBytes(GenerationId gen, int64_t delta) {
  std::lock_guard lock(gen_mu_);
  uint64_t& v = bytes_by_generation_[gen];
  v += static_cast<uint64_t>(delta);
  if (v == 0) bytes_by_generation_.erase(gen);
}

EvictionPolicy::Use ChunkCache::UseOf(ReadStream* stream, bool scan) const {
  const auto now = std::chrono::steady_clock::now() - epoch_;
  return EvictionPolicy::Use{
      stream != nullptr ? stream->state_->id : 0u, scan,
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(now).count())};
}

// ---------------------------------------------------------------------------
// Reads

Result<ReadOutcome> ChunkCache::Read(GenerationId gen, uint64_t file_size, uint64_t offset,
                                     std::span<char> out, ChunkSource& source, ReadStream* stream,
                                     std::shared_ptr<ChunkSource> source_ref) {
  ReadOutcome outcome;
  if (offset >= file_size || out.empty()) return outcome;
  const uint64_t end = std::min<uint64_t>(offset + out.size(), file_size);
  ReadStream::Run run{0, 0};
  if (stream != nullptr) run = stream->Note(offset, end);
  const EvictionPolicy::Use use = UseOf(stream, run.run_bytes >= kScanRunBytes);

  std::vector<Piece> pieces;
  for (uint64_t pos = offset; pos < end;) {
    Piece p;
    const uint64_t chunk = pos / chunk_size_;
    p.key = ChunkKey{gen, chunk};
    p.chunk_start = chunk * chunk_size_;
    p.chunk_len = static_cast<uint32_t>(std::min<uint64_t>(chunk_size_, file_size - p.chunk_start));
    p.in_off = static_cast<uint32_t>(pos - p.chunk_start);
    p.n = static_cast<uint32_t>(std::min<uint64_t>(end - pos, p.chunk_len - p.in_off));
    p.dst = out.data() + (pos - offset);
    pos += p.n;
    pieces.push_back(std::move(p));
  }
  // A sweep is not a boot: its reads are not part of the trace.
  if (recording_count_.load(std::memory_order_relaxed) > 0 && !use.scan) {
    NoteFirstRead(gen, offset / chunk_size_, (end - 1) / chunk_size_);
  }

  Status result;
  std::vector<std::shared_ptr<Flight>> led;  // fetches this read started: they use `source`
  for (bool pending = true; pending && result.ok();) {
    pending = false;
    // 1. Look every piece up, under its shard's lock only.
    std::vector<Piece*> leaders;
    for (Piece& p : pieces) {
      if (p.done) continue;
      if (++p.attempts > kMaxAttempts) {
        result = Status::Error(Code::kIoError, "chunk " + std::to_string(p.key.chunk) +
                                                   " kept failing verification after refetch");
        break;
      }
      Shard& shard = ShardOf(p.key);
      std::lock_guard lock(shard.mu);
      Lookup(shard, p, use);
      if (p.leader) {
        leaders.push_back(&p);
        led.push_back(p.flight);
      }
    }
    // 2. Start this read's own fetches in the pool (in parallel; storing
    // them may then wait for room there, never here). WaitFlight runs any
    // that no pool thread has taken yet on this thread.
    for (Piece* leader : leaders) {
      auto flight = leader->flight;
      if (!result.ok()) {
        flight->status = result;
        Finish(flight);
        continue;
      }
      Shard& shard = ShardOf(flight->key);
      auto task = pool_->Submit([this, flight, &source] { Fetch(flight, source); });
      std::lock_guard lock(shard.mu);  // joiners read it under the lock
      flight->task = std::move(task);
    }
    // 3. Hits from the store, then the flights. Every piece looked up is
    // settled here (slots unpinned, flights waited for), whatever fails.
    for (Piece& p : pieces) {
      if (p.done || (!p.rec && !p.flight)) continue;
      Status st = p.rec ? ServeHit(p) : WaitFlight(p, outcome);
      if (st.code() == Code::kCorruption || st.code() == Code::kAborted) {
        pending = true;  // dropped or abandoned: look it up again
        continue;
      }
      if (!st.ok() && result.ok()) result = st;
      p.done = st.ok();
    }
  }
  for (const auto& flight : led) {
    if (flight->task) pool_->RunOrWait(flight->task);
  }
  GC_RETURN_IF_ERROR(result);
  outcome.bytes = end - offset;

  // 4. A sequential run fetches its next chunks ahead of it.
  if (stream != nullptr && source_ref != nullptr && options_.readahead_chunks > 0 &&
      run.run_bytes >= 2ull * chunk_size_) {
    Readahead(gen, file_size, (end - 1) / chunk_size_ + 1, *stream, run, source_ref);
  }
  return outcome;
}

void ChunkCache::Lookup(Shard& shard, Piece& p, const EvictionPolicy::Use& use) {
  p.rec.reset();
  p.table.reset();
  p.flight.reset();
  p.leader = false;
  if (auto it = shard.entries.find(p.key); it != shard.entries.end()) {
    p.rec = it->second.rec;
    p.table = it->second.table;
    slot_pins_[p.rec->slot].fetch_add(1);
    shard.policy.Touch(p.key, use);
    if (p.table)
      shard.table_lru.splice(shard.table_lru.begin(), shard.table_lru, it->second.table_it);
    if (it->second.prefetched) {
      it->second.prefetched = false;
      m_->prefetch_in_time.Add();
    }
    return;
  }
  if (auto f = shard.flights.find(p.key); f != shard.flights.end()) {
    m_->misses.Add();
    p.flight = f->second;
    p.flight->demanded.store(true);
    m_->single_flight_waits.Add();
    if (p.flight->traced && p.flight->state.load() == Flight::kFetching) m_->prefetch_late.Add();
    return;
  }
  Reuse reuse = ReuseLocked(shard, p.key, p.chunk_len, use, !p.no_join);
  if (reuse.rec) {
    p.rec = reuse.rec;
    slot_pins_[reuse.rec->slot].fetch_add(1);
    return;  // served as a hit
  }
  m_->misses.Add();
  if (reuse.join) {
    p.flight = std::move(reuse.join);
    p.flight->demanded.store(true);
    m_->single_flight_waits.Add();
    return;
  }
  p.flight = NewFlightLocked(shard, p.key, p.chunk_len, use, false, false, reuse.digest);
  p.leader = true;
}

Status ChunkCache::ServeHit(Piece& p) {
  const index::ChunkRecord rec = *p.rec;
  auto unpin = [&] {
    slot_pins_[rec.slot].fetch_sub(1);
    p.rec.reset();
  };
  Status st;
  if (static_cast<uint64_t>(p.in_off) + p.n > rec.length) {
    st = Status::Error(Code::kCorruption, "record shorter than the file's chunk");
  }
  const uint32_t first = p.in_off / kBlockSize;
  const uint32_t span_off = first * kBlockSize;
  const uint32_t span_end =
      std::min<uint32_t>(rec.length, (p.in_off + p.n + kBlockSize - 1) / kBlockSize * kBlockSize);
  const uint32_t span_len = span_end - span_off;
  thread_local std::vector<char> scratch;
  thread_local std::vector<uint32_t> fresh_table;
  // Block-aligned requests (QEMU O_DIRECT, kernel readahead) land in place;
  // others are read whole-block into scratch and copied.
  const bool in_place = span_off == p.in_off && span_len == p.n;
  char* buf = p.dst;
  if (st.ok() && !in_place) {
    scratch.resize(span_len);
    buf = scratch.data();
  }
  const std::vector<uint32_t>* table = p.table.get();
  if (st.ok()) {
    if (table != nullptr) {
      // The table was proved before: only the data is read.
      st = store_->Read(rec.slot, span_off, std::span<char>(buf, span_len), {});
    } else {
      fresh_table.resize(BlocksFor(rec.length));
      st = store_->Read(rec.slot, span_off, std::span<char>(buf, span_len), fresh_table);
      if (st.ok() && TableHash(fresh_table, rec.digest, rec.length) != rec.table_hash) {
        st = Status::Error(Code::kCorruption, "checksum table does not match its record");
      }
      table = &fresh_table;
    }
  }
  for (uint32_t off = 0, b = first; st.ok() && off < span_len; off += kBlockSize, ++b) {
    const uint32_t len = std::min<uint32_t>(kBlockSize, span_len - off);
    if (BlockChecksum(std::span<const char>(buf + off, len)) != (*table)[b]) {
      st = Status::Error(Code::kCorruption, "block " + std::to_string(b) + " mismatch");
    }
  }
  Shard& shard = ShardOf(p.key);
  if (st.ok()) {
    if (!in_place) std::memcpy(p.dst, buf + (p.in_off - span_off), p.n);
    m_->hits.Add();
    if (p.table == nullptr) {
      // Keep the proved table: the next hit of this chunk reads data only.
      auto kept = std::make_shared<const std::vector<uint32_t>>(fresh_table);
      std::lock_guard lock(shard.mu);
      auto it = shard.entries.find(p.key);
      if (it != shard.entries.end() && it->second.rec == rec && !it->second.table) {
        it->second.table = std::move(kept);
        shard.table_lru.push_front(p.key);
        it->second.table_it = shard.table_lru.begin();
        while (shard.table_lru.size() > shard.table_limit) {
          auto cold = shard.entries.find(shard.table_lru.back());
          cold->second.table.reset();
          shard.table_lru.pop_back();
        }
      }
    }
    unpin();
    return st;
  }
  if (st.code() == Code::kCorruption) {
    m_->checksum_failures.Add();
    spdlog::warn("cache: chunk {} of generation {} failed its checksum ({}); refetching",
                 p.key.chunk, p.key.gen, st.message());
  } else {
    m_->store_errors.Add();
    spdlog::error("cache: reading chunk {} of generation {} failed: {}; refetching", p.key.chunk,
                  p.key.gen, st.ToString());
  }
  // No new chunk may name this slot; the others naming it drop it on their
  // own hits (each fails the same way) and refetch.
  Unshare(rec);
  {
    std::lock_guard lock(shard.mu);
    auto it = shard.entries.find(p.key);
    if (it != shard.entries.end() && it->second.rec == rec) DropLocked(shard, p.key, true);
  }
  unpin();
  return Status::Error(Code::kCorruption, "dropped a damaged chunk");
}

void ChunkCache::Fetch(const std::shared_ptr<Flight>& flight, ChunkSource& source) {
  flight->cacheable = source.Cacheable() && !store_failed_.load();
  flight->buf = buffers_->Take();
  auto got = source.ReadAt(flight->chunk_start, flight->data());
  if (!got.ok()) {
    flight->status = got.status();
  } else if (*got != flight->chunk_len) {
    flight->status =
        Status::Error(Code::kStale, "datastore file is shorter than its generation says");
  } else if (flight->expected) {
    // Before anyone gets the bytes: readers of other files may have joined
    // on the manifest's word. This file's own readers get its bytes anyway.
    flight->digest = index::ComputeDigest(flight->data());
    flight->digested = true;
    if (flight->digest != *flight->expected) {
      flight->digest_mismatch = true;
      {
        // No reader of another file may join it from now on (those that
        // have are told when it finishes, and fetch their own).
        std::lock_guard lock(cas_mu_);
        auto d = digest_flights_.find(*flight->expected);
        if (d != digest_flights_.end() && d->second == flight) digest_flights_.erase(d);
      }
      Distrust(flight->key, flight->digest);
    }
  }
  Finish(flight);
}

void ChunkCache::Finish(const std::shared_ptr<Flight>& flight) {
  const bool ok = flight->status.ok();
  {
    std::lock_guard lock(flight->mu);
    flight->state.store(ok ? Flight::kReady : Flight::kFailed, std::memory_order_release);
  }
  flight->cv.notify_all();  // the one wakeup of this flight's readers
  // A pool thread waits for room in the write-behind queue (fetches then go
  // at the pace of the local disk); a reader's own thread, which already
  // has its bytes, waits a little at most: a stuck local disk must not hold
  // a desktop's read.
  if (ok && flight->cacheable &&
      Enqueue(flight,
              FetchPool::OnPoolThread() ? std::chrono::milliseconds::max() : kReaderQueueWait)) {
    return;
  }
  if (ok && !flight->cacheable) (store_failed_.load() ? m_->uncached : m_->unsettled).Add();
  Shard& shard = ShardOf(flight->key);
  std::lock_guard lock(shard.mu);
  RetireLocked(shard, flight);
}

void ChunkCache::RetireLocked(Shard& shard, const std::shared_ptr<Flight>& flight) {
  auto it = shard.flights.find(flight->key);
  if (it != shard.flights.end() && it->second == flight) shard.flights.erase(it);
  if (flight->expected) {
    std::lock_guard lock(cas_mu_);
    auto d = digest_flights_.find(*flight->expected);
    if (d != digest_flights_.end() && d->second == flight) digest_flights_.erase(d);
  }
}

std::shared_ptr<ChunkCache::Flight> ChunkCache::NewFlightLocked(
    Shard& shard, const ChunkKey& key, uint32_t len, const EvictionPolicy::Use& use, bool prefetch,
    bool traced, const std::optional<index::Digest>& expected) {
  auto flight = std::make_shared<Flight>(*buffers_);
  flight->key = key;
  flight->chunk_start = key.chunk * chunk_size_;
  flight->chunk_len = len;
  flight->use = use;
  flight->prefetch = prefetch;
  flight->traced = traced;
  flight->expected = expected;
  flight->demanded.store(!prefetch);
  shard.flights.emplace(key, flight);
  if (expected) {
    std::lock_guard lock(cas_mu_);
    digest_flights_.emplace(*expected, flight);  // the first one for this content
  }
  return flight;
}

Status ChunkCache::WaitFlight(Piece& p, ReadOutcome& outcome) {
  Flight& f = *p.flight;
  // Bytes this read waited on the datastore for: its own fetch, or another
  // reader's (or readahead's) still under way.
  const bool waited = p.leader || f.state.load(std::memory_order_acquire) == Flight::kFetching;
  if (waited) {
    std::shared_ptr<FetchPool::Task> task;
    {
      Shard& shard = ShardOf(f.key);
      std::lock_guard lock(shard.mu);
      task = f.task;
    }
    if (task) {
      if (f.prefetch && !p.leader) m_->readahead_late.Add();
      pool_->RunOrWait(task);  // not started yet: this reader runs it
    }
    std::unique_lock lock(f.mu);
    f.cv.wait(lock, [&] { return f.state.load(std::memory_order_acquire) != Flight::kFetching; });
  }
  if (f.key != p.key &&
      (f.state.load(std::memory_order_acquire) == Flight::kFailed || f.digest_mismatch)) {
    // Another file's fetch of the same content (by the manifests) that
    // failed, or whose bytes were not that content: fetch our own.
    p.flight.reset();
    p.no_join = true;
    --p.attempts;  // not this file's failure
    return Status::Error(Code::kAborted, "the shared fetch did not bring the content");
  }
  if (f.state.load(std::memory_order_acquire) == Flight::kFailed) {
    Status st = f.status;
    p.flight.reset();
    return st;
  }
  std::memcpy(p.dst, f.buf.get() + p.in_off, p.n);
  if (waited) outcome.from_datastore += p.n;
  p.flight.reset();
  return Status::Ok();
}

std::shared_ptr<ChunkCache::Flight> ChunkCache::StartFetch(
    const ChunkKey& key, uint64_t file_size, const EvictionPolicy::Use& use, bool prefetch,
    bool traced, std::function<void(const std::shared_ptr<Flight>&)> body) {
  Shard& shard = ShardOf(key);
  std::lock_guard lock(shard.mu);
  if (shard.entries.count(key) || shard.flights.count(key)) return nullptr;
  const auto len = static_cast<uint32_t>(
      std::min<uint64_t>(chunk_size_, file_size - key.chunk * uint64_t{chunk_size_}));
  Reuse reuse = ReuseLocked(shard, key, len, use);
  if (reuse.rec || reuse.join) return nullptr;  // stored, or coming for another file
  auto flight = NewFlightLocked(shard, key, len, use, prefetch, traced, reuse.digest);
  // Its task is there before any reader can find the flight (under this
  // lock): a reader that needs the chunk runs it itself, rather than wait
  // for the pool's prefetch queue behind every demand fetch.
  flight->task = pool_->SubmitPrefetch([body = std::move(body), flight] { body(flight); });
  return flight;
}

void ChunkCache::Readahead(GenerationId gen, uint64_t file_size, uint64_t next_chunk,
                           ReadStream& stream, const ReadStream::Run& run,
                           const std::shared_ptr<ChunkSource>& source) {
  const uint64_t chunks = (file_size + chunk_size_ - 1) / chunk_size_;
  uint64_t from, to;
  {
    std::lock_guard lock(stream.state_->mu);
    if (stream.state_->epoch.load() != run.epoch) return;  // the run already moved on
    // As far ahead as the run has come, up to readahead_chunks: a short
    // run (a boot's 2-3 chunks, then a jump) fetches little it will not
    // read; a long one soon reaches the whole window.
    const uint64_t window = std::min<uint64_t>(options_.readahead_chunks,
                                               std::max<uint64_t>(1, run.run_bytes / chunk_size_));
    from = std::max(next_chunk, stream.state_->readahead_until);
    to = std::min<uint64_t>(chunks, next_chunk + window);
    if (from >= to) return;
    stream.state_->readahead_until = to;
  }
  const EvictionPolicy::Use use = UseOf(&stream, run.run_bytes >= kScanRunBytes);
  std::shared_ptr<ReadStream::State> state = stream.state_;
  for (uint64_t c = from; c < to; ++c) {
    const uint64_t epoch = run.epoch;
    StartFetch(ChunkKey{gen, c}, file_size, use, /*prefetch=*/true, /*traced=*/false,
               [this, source, state, epoch](const std::shared_ptr<Flight>& flight) {
                 if (!flight->demanded.load() && (state->epoch.load() != epoch || Stopping())) {
                   // The run ended before this was fetched: give the slot in
                   // the queue up, and let a later reader lead its own fetch.
                   flight->status = Status::Error(Code::kAborted, "readahead no longer wanted");
                   Finish(flight);
                   return;
                 }
                 m_->readahead.Add();
                 Fetch(flight, *source);
               });
  }
}

// ---------------------------------------------------------------------------
// Write-behind

bool ChunkCache::Enqueue(const std::shared_ptr<Flight>& flight, std::chrono::milliseconds wait) {
  {
    std::unique_lock lock(wb_mu_);
    auto room = [&] { return wb_bytes_ + flight->chunk_len <= options_.write_behind_bytes; };
    if (wait == std::chrono::milliseconds::max()) {
      wb_cv_.wait(lock, [&] { return wb_stop_ || room(); });
    } else if (wait.count() > 0) {
      wb_cv_.wait_for(lock, wait, [&] { return wb_stop_ || room(); });
    }
    if (!room() || wb_stop_) {
      m_->write_behind_full.Add();
      return false;
    }
    wb_bytes_ += flight->chunk_len;
    wb_queue_.push_back(flight);
  }
  m_->write_behind_bytes.Add(flight->chunk_len);
  wb_cv_.notify_all();  // a store thread (and never only a waiting enqueuer)
  return true;
}

void ChunkCache::StoreLoop() {
  std::unique_lock lock(wb_mu_);
  for (;;) {
    wb_cv_.wait(lock, [&] { return wb_stop_ || !wb_queue_.empty(); });
    if (wb_queue_.empty()) return;  // stopping, and everything queued is stored
    auto flight = std::move(wb_queue_.front());
    wb_queue_.pop_front();
    lock.unlock();
    Store(flight);
    m_->write_behind_bytes.Add(-static_cast<int64_t>(flight->chunk_len));
    lock.lock();
    wb_bytes_ -= flight->chunk_len;
    wb_cv_.notify_all();  // WaitIdle
  }
}

void ChunkCache::Store(const std::shared_ptr<Flight>& flight) {
  const ChunkKey& key = flight->key;
  Shard& shard = ShardOf(key);
  auto retire = [&] {
    std::lock_guard lock(shard.mu);
    RetireLocked(shard, flight);
  };
  if (store_failed_.load()) {
    m_->uncached.Add();
    retire();
    return;
  }
  // A flight with a manifest digest was digested (and compared) when fetched.
  const index::Digest digest =
      flight->digested ? flight->digest : index::ComputeDigest(flight->data());
  if (!flight->digested) {
    if (auto listed = ManifestDigest(key); listed && *listed != digest) Distrust(key, digest);
  }
  auto table = std::make_shared<const std::vector<uint32_t>>(ComputeTable(flight->data()));
  // The same bytes stored already (a full clone's chunk, an unchanged chunk
  // of a template's earlier generation): name that slot, write nothing.
  std::optional<index::ChunkRecord> rec = Adopt(digest, flight->chunk_len);
  if (rec) {
    m_->reused_store.Add();
    m_->reused_store_bytes.Add(flight->chunk_len);
  } else {
    std::optional<uint64_t> slot = AllocateSlot();
    if (!slot) {
      m_->uncached.Add();
      retire();
      return;
    }
    const uint64_t hash = TableHash(*table, digest, flight->chunk_len);
    Status st = store_->Write(*slot, key, hash, flight->data(), *table);
    if (!st.ok()) {
      m_->store_errors.Add();
      m_->uncached.Add();
      // A full or failing disk fails every chunk: one line per 10 s says so.
      if (auto held = store_error_log_.Allow()) {
        spdlog::error(
            "cache: storing chunk {} of generation {} failed: {}; the chunk is served "
            "uncached{}",
            key.chunk, key.gen, st.ToString(),
            *held ? fmt::format(" ({} more store failures since the last line)", *held) : "");
      }
      {
        std::lock_guard lock(space_mu_);
        free_slots_.push_back(*slot);
      }
      retire();
      return;
    }
    bool ours = false;
    {
      std::lock_guard lock(cas_mu_);
      auto [it, inserted] = by_digest_.emplace(digest, *slot);
      if (inserted) {
        slot_use_[*slot] = SlotUse{digest, hash, flight->chunk_len, 1, true};
        ours = true;
        rec = index::ChunkRecord{*slot, flight->chunk_len, hash, digest};
      } else {
        // Stored by another chunk meanwhile: name that one.
        SlotUse& other = slot_use_[it->second];
        ++other.refs;
        rec = index::ChunkRecord{it->second, other.length, other.table_hash, digest};
      }
    }
    if (ours) {
      used_bytes_ += flight->chunk_len;
    } else {
      // No record ever named the slot just written: free at once.
      std::lock_guard lock(space_mu_);
      free_slots_.push_back(*slot);
    }
  }
  {
    // Publishing the entry and retiring the flight in one critical section
    // leaves no moment where a new reader would start a second fetch.
    std::lock_guard lock(shard.mu);
    Entry& e = shard.entries[key];
    e.rec = *rec;
    e.table = table;
    e.prefetched = flight->traced && !flight->demanded.load();
    shard.table_lru.push_front(key);
    e.table_it = shard.table_lru.begin();
    while (shard.table_lru.size() > shard.table_limit) {
      shard.entries.find(shard.table_lru.back())->second.table.reset();
      shard.table_lru.pop_back();
    }
    // A prefetched chunk waits in the scan list (first to go, no ghost)
    // until a reader uses it; one a reader waited for is in use already.
    EvictionPolicy::Use use = flight->use;
    if (flight->traced && flight->demanded.load()) use.scan = false;
    shard.policy.Insert(key, use);
    shard.size.store(shard.entries.size());
    RetireLocked(shard, flight);
    AddBytes(key.gen, rec->length);
    index_->Put(key, *rec);
  }
}

void ChunkCache::WaitIdle() {
  {
    std::unique_lock lock(wb_mu_);
    wb_cv_.wait(lock, [&] { return wb_bytes_ == 0; });
  }
  while (pool_->prefetch_load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::unique_lock lock(wb_mu_);
  wb_cv_.wait(lock, [&] { return wb_bytes_ == 0; });
}

// ---------------------------------------------------------------------------
// Space

size_t ChunkCache::LowWatermark() const {
  return static_cast<size_t>(std::clamp<uint64_t>(slots_ / 64, 1, 256));
}

void ChunkCache::ReclaimLocked() {
  if (pending_free_.empty()) return;
  const uint64_t durable = index_->durable_sequence();
  auto keep = std::partition(pending_free_.begin(), pending_free_.end(), [&](const PendingFree& p) {
    return p.seq > durable || slot_pins_[p.slot].load() != 0;
  });
  for (auto it = keep; it != pending_free_.end(); ++it) free_slots_.push_back(it->slot);
  pending_free_.erase(keep, pending_free_.end());
}

bool ChunkCache::DropLocked(Shard& shard, const ChunkKey& key, bool to_policy) {
  auto it = shard.entries.find(key);
  if (it == shard.entries.end()) return false;
  const index::ChunkRecord rec = it->second.rec;
  if (it->second.table) shard.table_lru.erase(it->second.table_it);
  shard.entries.erase(it);
  shard.size.store(shard.entries.size());
  if (to_policy) shard.policy.Erase(key);
  AddBytes(key.gen, -static_cast<int64_t>(rec.length));
  const uint64_t seq = index_->Delete(key);
  if (!Release(rec)) return false;  // other chunks still name the slot
  used_bytes_ -= rec.length;
  std::lock_guard lock(space_mu_);
  pending_free_.push_back(PendingFree{seq, rec.slot});
  return true;
}

// ---------------------------------------------------------------------------
// Content addressing

std::optional<index::ChunkRecord> ChunkCache::Adopt(const index::Digest& digest, uint32_t len) {
  std::lock_guard lock(cas_mu_);
  auto it = by_digest_.find(digest);
  if (it == by_digest_.end()) return std::nullopt;
  SlotUse& use = slot_use_[it->second];
  if (use.length != len || use.refs == 0) return std::nullopt;
  ++use.refs;
  return index::ChunkRecord{it->second, use.length, use.table_hash, digest};
}

bool ChunkCache::Release(const index::ChunkRecord& rec) {
  std::lock_guard lock(cas_mu_);
  SlotUse& use = slot_use_[rec.slot];
  if (use.refs > 1) {
    --use.refs;
    return false;
  }
  if (use.shareable) {
    auto it = by_digest_.find(use.digest);
    if (it != by_digest_.end() && it->second == rec.slot) by_digest_.erase(it);
  }
  use = SlotUse{};
  return true;
}

void ChunkCache::Unshare(const index::ChunkRecord& rec) {
  std::lock_guard lock(cas_mu_);
  SlotUse& use = slot_use_[rec.slot];
  if (!use.shareable || use.digest != rec.digest) return;
  auto it = by_digest_.find(use.digest);
  if (it != by_digest_.end() && it->second == rec.slot) by_digest_.erase(it);
  use.shareable = false;
}

std::optional<index::Digest> ChunkCache::ManifestDigest(const ChunkKey& key) const {
  std::shared_lock lock(manifest_mu_);
  auto it = manifests_.find(key.gen);
  if (it == manifests_.end() || key.chunk >= it->second->digests.size()) return std::nullopt;
  return it->second->digests[key.chunk];
}

ChunkCache::Reuse ChunkCache::ReuseLocked(Shard& shard, const ChunkKey& key, uint32_t len,
                                          const EvictionPolicy::Use& use, bool may_join) {
  Reuse reuse;
  reuse.digest = ManifestDigest(key);
  if (!reuse.digest) return reuse;
  auto rec = Adopt(*reuse.digest, len);
  if (!rec) {
    {
      // Not stored, but maybe on its way for another file (a full clone
      // booting beside its template): one fetch for both.
      std::lock_guard lock(cas_mu_);
      auto f = may_join ? digest_flights_.find(*reuse.digest) : digest_flights_.end();
      if (f != digest_flights_.end() && f->second->chunk_len == len &&
          f->second->state.load() != Flight::kFailed) {
        reuse.join = f->second;
      }
    }
    (reuse.join ? m_->manifest_hits : m_->manifest_misses).Add();
    return reuse;
  }
  reuse.rec = rec;
  m_->manifest_hits.Add();
  m_->reused_manifest.Add();
  m_->reused_manifest_bytes.Add(len);
  Entry& e = shard.entries[key];
  e.rec = *rec;
  shard.policy.Insert(key, use);
  shard.size.store(shard.entries.size());
  AddBytes(key.gen, rec->length);
  index_->Put(key, *rec);  // durable after the store's sync, like any other
  return reuse;
}

namespace {
constexpr char kDistrustMetaPrefix[] = "distrust.";
// A manifest's identity: the SHA-256 of its encoding (what `publish` wrote).
std::string ManifestId(const index::Manifest& m) {
  const index::Digest d = index::ComputeDigest(index::EncodeManifest(m));
  return std::string(reinterpret_cast<const char*>(d.data()), d.size());
}
}  // namespace

bool ChunkCache::AttachManifest(GenerationId gen, std::shared_ptr<const index::Manifest> manifest) {
  auto key = index_->GenerationOf(gen);
  if (!manifest || !key || !manifest->Describes(*key, chunk_size_)) return false;
  const std::string id = ManifestId(*manifest);
  // The very manifest this host caught lying, also before a restart, is
  // never used again; a manifest published again (other bytes) is.
  auto saved = index_->GetMeta(kDistrustMetaPrefix + std::to_string(gen));
  std::unique_lock lock(manifest_mu_);
  if (saved.ok() && saved->has_value() && **saved == id) distrusted_[gen] = id;
  if (auto d = distrusted_.find(gen); d != distrusted_.end()) {
    if (d->second == id) return false;
    distrusted_.erase(d);
  }
  manifests_[gen] = std::move(manifest);
  return true;
}

bool ChunkCache::HasManifest(GenerationId gen) const {
  std::shared_lock lock(manifest_mu_);
  return manifests_.count(gen) != 0;
}

bool ChunkCache::ManifestDistrusted(GenerationId gen) const {
  std::shared_lock lock(manifest_mu_);
  return distrusted_.count(gen) != 0;
}

void ChunkCache::Distrust(const ChunkKey& key, const index::Digest& got) {
  std::optional<index::Digest> listed;
  std::string id;
  {
    std::unique_lock lock(manifest_mu_);
    auto it = manifests_.find(key.gen);
    if (it == manifests_.end()) return;  // distrusted meanwhile
    if (key.chunk < it->second->digests.size()) listed = it->second->digests[key.chunk];
    id = ManifestId(*it->second);
    manifests_.erase(it);
    distrusted_[key.gen] = id;
  }
  m_->manifest_distrusts.Add();
  // Remembered across restarts (a synced RocksDB write: off this thread).
  if (!Stopping()) {
    pool_->SubmitPrefetch([this, gen = key.gen, id] {
      Status st = index_->PutMeta(kDistrustMetaPrefix + std::to_string(gen), id);
      if (!st.ok()) spdlog::warn("cache: remembering a distrusted manifest: {}", st.ToString());
    });
  }
  // What the manifest let this generation name may be other bytes: drop
  // all of it (chunks being read keep their slots until their reads end);
  // from now on every miss of the generation reads the datastore.
  size_t dropped = 0;
  for (auto& shard : shards_) {
    std::lock_guard lock(shard->mu);
    std::vector<ChunkKey> victims;
    for (const auto& [k, entry] : shard->entries) {
      if (k.gen == key.gen && k != key) victims.push_back(k);
    }
    for (const ChunkKey& k : victims) DropLocked(*shard, k, true);
    dropped += victims.size();
  }
  index_->RequestCommit();
  auto gen_key = index_->GenerationOf(key.gen);
  spdlog::error(
      "{}: its manifest says chunk {} has digest {}, the datastore's bytes have {}: the manifest "
      "is wrong or the file changed without its size, mtime or ctime showing it. Not using the "
      "manifest for generation {} on this host any more; dropped its {} cached chunk(s). "
      "Publish the file again (goldcache publish) once it is final.",
      gen_key ? gen_key->path : std::to_string(key.gen), key.chunk,
      listed ? index::DigestHex(*listed) : "(none)", index::DigestHex(got), key.gen, dropped);
}

// ---------------------------------------------------------------------------
// Boot traces

void ChunkCache::RecordTrace(GenerationId gen) {
  {
    std::shared_lock lock(trace_mu_);
    if (recording_.count(gen)) return;
  }
  auto saved = index_->GetMeta(kTraceMetaPrefix + std::to_string(gen));
  if (!saved.ok() || saved->has_value()) return;  // traced before (or the index cannot say)
  std::unique_lock lock(trace_mu_);
  if (recording_.emplace(gen, std::make_shared<TraceRecorder>()).second) {
    recording_count_.store(recording_.size());
  }
}

void ChunkCache::NoteFirstRead(GenerationId gen, uint64_t first, uint64_t last) {
  std::shared_ptr<TraceRecorder> rec;
  {
    std::shared_lock lock(trace_mu_);
    auto it = recording_.find(gen);
    if (it == recording_.end()) return;
    rec = it->second;
  }
  std::vector<uint64_t> finished;
  {
    std::lock_guard lock(rec->mu);
    if (rec->closed) return;
    const auto now = std::chrono::steady_clock::now();
    if (!rec->started) {
      rec->started = true;
      rec->start = now;
    }
    if (now - rec->start <= options_.trace_window && rec->order.size() < TraceLimit()) {
      for (uint64_t c = first; c <= last && rec->order.size() < TraceLimit(); ++c) {
        if (rec->seen.insert(c).second) rec->order.push_back(c);
      }
      return;
    }
    rec->closed = true;  // the boot is over: save what it read
    finished = std::move(rec->order);
  }
  {
    std::unique_lock lock(trace_mu_);
    recording_.erase(gen);
    recording_count_.store(recording_.size());
  }
  // A synced RocksDB write: not on the reader's thread (invariant 7).
  if (!stopping_.load()) {
    pool_->SubmitPrefetch([this, gen, trace = std::move(finished)] { SaveTrace(gen, trace); });
  }
}

size_t ChunkCache::TraceLimit() const {
  return std::max<size_t>(1, capacity_bytes() / chunk_size_ / 2);
}

void ChunkCache::SaveTrace(GenerationId gen, const std::vector<uint64_t>& trace) {
  if (trace.empty()) return;
  Status st = index_->PutMeta(kTraceMetaPrefix + std::to_string(gen), index::EncodeTrace(trace));
  if (!st.ok()) {
    spdlog::warn("cache: saving the boot trace of generation {}: {}", gen, st.ToString());
    return;
  }
  m_->traces_recorded.Add();
  spdlog::info("cache: recorded the boot trace of generation {}: {} chunk(s)", gen, trace.size());
}

void ChunkCache::SaveTraces() {
  std::unordered_map<GenerationId, std::shared_ptr<TraceRecorder>> all;
  {
    std::unique_lock lock(trace_mu_);
    all.swap(recording_);
    recording_count_.store(0);
  }
  for (auto& [gen, rec] : all) {
    std::vector<uint64_t> order;
    {
      std::lock_guard lock(rec->mu);
      rec->closed = true;
      order = std::move(rec->order);
    }
    SaveTrace(gen, order);
  }
}

std::vector<uint64_t> ChunkCache::TraceOf(GenerationId gen) const {
  {
    std::shared_lock lock(trace_mu_);
    if (auto it = recording_.find(gen); it != recording_.end()) {
      std::lock_guard rec_lock(it->second->mu);
      return it->second->order;
    }
  }
  auto saved = index_->GetMeta(kTraceMetaPrefix + std::to_string(gen));
  if (saved.ok() && saved->has_value()) {
    if (auto trace = index::DecodeTrace(**saved)) return *trace;
  }
  // Else the one its manifest carries (another host's first boots).
  std::shared_lock lock(manifest_mu_);
  if (auto it = manifests_.find(gen); it != manifests_.end()) return it->second->trace;
  return {};
}

void ChunkCache::PrefetchTrace(GenerationId gen, uint64_t file_size, std::vector<uint64_t> trace,
                               std::shared_ptr<ChunkSource> source) {
  if (trace.empty() || source == nullptr || Stopping()) return;
  // What the cache cannot keep would only push out what it holds.
  if (trace.size() > TraceLimit()) trace.resize(TraceLimit());
  auto job = std::make_shared<TracePrefetch>();
  job->gen = gen;
  job->file_size = file_size;
  job->trace = std::move(trace);
  job->source = std::move(source);
  {
    std::unique_lock lock(trace_mu_);
    if (!prefetching_.emplace(gen, job).second) return;  // one runs already
  }
  PumpTrace(job);
}

void ChunkCache::PumpTrace(const std::shared_ptr<TracePrefetch>& job) {
  const uint64_t chunks = (job->file_size + chunk_size_ - 1) / chunk_size_;
  // Into the scan list until a reader uses them (see Store): a trace
  // fetched for nobody must not leave ghosts that promote a later sweep.
  const EvictionPolicy::Use use = UseOf(nullptr, true);
  for (;;) {
    std::shared_ptr<Flight> flight;
    {
      std::lock_guard lock(job->mu);
      if (job->running >= std::max(1u, options_.max_prefetch)) return;
      while (!flight && job->next < job->trace.size() && !Stopping()) {
        const uint64_t c = job->trace[job->next++];
        if (c < chunks) {
          // Its task waits for job->mu (held here) before it counts itself out.
          flight = StartFetch(ChunkKey{job->gen, c}, job->file_size, use, true, /*traced=*/true,
                              [this, job](const std::shared_ptr<Flight>& f) { RunTraced(job, f); });
        }
      }
      if (!flight) {
        if (job->running > 0) return;  // the last one to finish ends the job
        std::unique_lock trace_lock(trace_mu_);
        auto it = prefetching_.find(job->gen);
        if (it != prefetching_.end() && it->second == job) prefetching_.erase(it);
        return;
      }
      ++job->running;
    }
  }
}

void ChunkCache::RunTraced(const std::shared_ptr<TracePrefetch>& job,
                           const std::shared_ptr<Flight>& flight) {
  if (Stopping() && !flight->demanded.load()) {
    flight->status = Status::Error(Code::kAborted, "shutting down");
    Finish(flight);
  } else {
    Fetch(flight, *job->source);
    if (flight->status.ok()) m_->prefetch_bytes.Add(flight->chunk_len);
  }
  {
    std::lock_guard lock(job->mu);
    --job->running;
  }
  PumpTrace(job);
}

void ChunkCache::DrainFetches() {
  draining_.fetch_add(1);
  for (;;) {
    {
      std::shared_lock lock(trace_mu_);
      if (prefetching_.empty() && pool_->prefetch_load() == 0) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  draining_.fetch_sub(1);
}

size_t ChunkCache::EvictSome(size_t n, bool even_pinned) {
  size_t evicted = 0;
  const size_t nshards = shards_.size();
  // The fullest shards first, so that every shard keeps its share.
  std::vector<size_t> order(nshards);
  for (size_t i = 0; i < nshards; ++i) order[i] = (evict_cursor_.load() + i) % nshards;
  evict_cursor_.fetch_add(1);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return shards_[a]->size.load() > shards_[b]->size.load();
  });
  const size_t per_shard = std::max<size_t>(1, (n + nshards - 1) / nshards);
  // A victim whose slot other chunks share frees nothing yet: more passes,
  // until enough slots are free or nothing is left to take (so pinned
  // chunks go only when no unpinned record is left: invariant 5).
  size_t dropped = 0;
  for (size_t pass = 0; evicted < n; ++pass) {
    size_t dropped_before = dropped;
    for (size_t i : order) {
      if (evicted >= n) break;
      Shard& shard = *shards_[i];
      std::lock_guard lock(shard.mu);
      std::shared_lock pins(pin_mu_);
      auto victims = shard.policy.PickVictims(
          std::min(per_shard * (pass + 1), n - evicted), [&](const ChunkKey& key) {
            return slot_pins_[shard.entries.at(key).rec.slot].load() == 0 &&
                   (even_pinned || !pinned_.count(key.gen));
          });
      for (const ChunkKey& key : victims) evicted += DropLocked(shard, key, false) ? 1 : 0;
      dropped += victims.size();
    }
    if (dropped == dropped_before) break;  // nothing left to take
  }
  m_->evictions.Add(dropped);
  return evicted;
}

std::optional<uint64_t> ChunkCache::AllocateSlot() {
  for (int round = 0; round < 3; ++round) {
    std::optional<uint64_t> slot;
    bool evict_ahead = false;
    bool waiting_deletes = false;
    {
      std::lock_guard lock(space_mu_);
      ReclaimLocked();
      if (!free_slots_.empty()) {
        slot = free_slots_.back();
        free_slots_.pop_back();
        evict_ahead = free_slots_.size() + pending_free_.size() < LowWatermark();
      }
      waiting_deletes = !pending_free_.empty();
    }
    if (slot) {
      if (evict_ahead) {
        // Evict ahead, so that by the time the free list runs dry the
        // deletes are committed and their slots reusable without waiting.
        EvictSome(LowWatermark(), false);
        index_->RequestCommit();
      }
      return slot;
    }
    if (EvictSome(LowWatermark(), false) == 0 && !waiting_deletes) {
      return std::nullopt;  // everything is being read, pinned or lent
    }
    // The victims' slots are free once their deletes are durable: commit now
    // (on this write-behind thread, holding no lock).
    Status st = index_->Flush();
    if (!st.ok()) {
      spdlog::error("cache: index commit failed while making room: {}", st.ToString());
      return std::nullopt;
    }
  }
  return std::nullopt;
}

uint64_t ChunkCache::GiveBackDisk(uint64_t bytes) {
  const uint64_t want = (bytes + chunk_size_ - 1) / chunk_size_;
  size_t evicted = EvictSome(want, false);
  if (evicted < want) evicted += EvictSome(want - evicted, true);
  if (Status st = index_->Flush(); !st.ok()) {
    spdlog::error("cache: index commit failed while giving disk back: {}", st.ToString());
    return 0;
  }
  // The evicted slots rejoin the free list last, and LendSpace takes (and
  // punches) from its end: the space lent is the space just evicted.
  return LendSpace(std::min(bytes, evicted * chunk_size_));
}

uint64_t ChunkCache::LendSpace(uint64_t bytes) {
  const uint64_t stride = chunk_size_;  // the budget counts chunk bytes
  const uint64_t want = (bytes + stride - 1) / stride;
  // Keep two slots: the cache still has to be able to serve a miss.
  constexpr uint64_t kKeep = 2;
  std::vector<uint64_t> taken;
  for (int round = 0; round < 3 && taken.size() < want; ++round) {
    uint64_t short_by = 0;
    {
      std::lock_guard lock(space_mu_);
      ReclaimLocked();
      const uint64_t in_cache = slots_ - lent_slots_ - taken.size();
      uint64_t lendable = in_cache > kKeep ? in_cache - kKeep : 0;
      while (taken.size() < want && lendable > 0 && !free_slots_.empty()) {
        taken.push_back(free_slots_.back());
        free_slots_.pop_back();
        --lendable;
      }
      const uint64_t still = want - taken.size();
      const uint64_t waiting = pending_free_.size();
      short_by = std::min(lendable, still > waiting ? still - waiting : 0);
    }
    if (taken.size() >= want) break;
    // Overlays outrank the read cache, pinned templates too (invariant 5);
    // pinned chunks go only when nothing else is left.
    if (short_by > 0 && EvictSome(short_by, false) < short_by) {
      const size_t pinned_evicted = EvictSome(short_by, true);
      if (pinned_evicted > 0) {
        spdlog::warn(
            "cache: evicted {} chunk(s) of pinned templates to give desktops' writes room; "
            "the local disk is too small for both",
            pinned_evicted);
      }
    }
    // Evicted slots become free once their deletes are durable.
    Status st = index_->Flush();
    if (!st.ok()) {
      spdlog::error("cache: index commit failed while lending space: {}", st.ToString());
      break;
    }
  }
  for (uint64_t slot : taken) {
    Status st = store_->Punch(slot);
    if (!st.ok()) spdlog::warn("cache: {}", st.ToString());  // lent all the same: never reused
  }
  std::lock_guard lock(space_mu_);
  lent_slots_ += taken.size();
  lent_list_.insert(lent_list_.end(), taken.begin(), taken.end());
  if (!taken.empty()) {
    spdlog::debug("cache: lent {} bytes to overlays (capacity now {} bytes)", taken.size() * stride,
                  (slots_ - lent_slots_) * stride);
  }
  return taken.size() * stride;
}

uint64_t ChunkCache::ReturnSpace(uint64_t bytes) {
  std::lock_guard lock(space_mu_);
  const uint64_t n = std::min<uint64_t>(bytes / chunk_size_, lent_list_.size());
  for (uint64_t i = 0; i < n; ++i) {
    free_slots_.push_back(lent_list_.back());
    lent_list_.pop_back();
  }
  lent_slots_ -= n;
  return n * chunk_size_;
}

// ---------------------------------------------------------------------------
// Generations, eviction by command, pins, check, warm

std::optional<index::GenerationKey> ChunkCache::GenerationKeyOf(GenerationId gen) const {
  return index_->GenerationOf(gen);
}

std::vector<GenerationId> ChunkCache::GenerationsOf(const std::string& path) const {
  return index_->GenerationsOfPath(path);
}

uint64_t ChunkCache::Evict(GenerationId gen) {
  uint64_t bytes = 0, chunks = 0;
  for (auto& shard : shards_) {
    std::lock_guard lock(shard->mu);
    std::vector<ChunkKey> victims;
    for (const auto& [key, entry] : shard->entries) {
      if (key.gen == gen) victims.push_back(key);
    }
    // A chunk being read keeps its slot until the read ends (slot pins).
    for (const ChunkKey& key : victims) {
      bytes += shard->entries.at(key).rec.length;
      DropLocked(*shard, key, true);
    }
    chunks += victims.size();
  }
  m_->evictions.Add(chunks);
  if (pinned(gen)) (void)Pin(gen, false);
  index_->RequestCommit();
  return bytes;
}

Status ChunkCache::Pin(GenerationId gen, bool pin) {
  std::string list;
  {
    std::unique_lock lock(pin_mu_);
    if (pin) {
      pinned_.insert(gen);
    } else {
      pinned_.erase(gen);
    }
    std::vector<GenerationId> sorted(pinned_.begin(), pinned_.end());
    std::sort(sorted.begin(), sorted.end());
    for (GenerationId g : sorted) list += (list.empty() ? "" : ",") + std::to_string(g);
  }
  return index_->PutMeta("pinned_generations", list);
}

bool ChunkCache::pinned(GenerationId gen) const {
  std::shared_lock lock(pin_mu_);
  return pinned_.count(gen) != 0;
}

Result<ChunkCache::CheckReport> ChunkCache::Check(
    const std::function<bool(uint64_t, uint64_t)>& progress) {
  std::vector<ChunkKey> all;
  for (auto& shard : shards_) {
    std::lock_guard lock(shard->mu);
    for (const auto& [key, entry] : shard->entries) all.push_back(key);
  }
  CheckReport report;
  std::vector<char> buf(chunk_size_);
  for (size_t i = 0; i < all.size(); ++i) {
    Piece p;
    p.key = all[i];
    {
      Shard& shard = ShardOf(p.key);
      std::lock_guard lock(shard.mu);
      auto it = shard.entries.find(p.key);
      if (it == shard.entries.end()) continue;  // gone meanwhile
      p.rec = it->second.rec;
      slot_pins_[p.rec->slot].fetch_add(1);
    }
    // Check reads the table from disk again: the point is the disk's state.
    p.chunk_len = p.rec->length;
    p.n = p.rec->length;
    p.dst = buf.data();
    const uint32_t length = p.rec->length;
    Status st = ServeHit(p);
    ++report.chunks;
    report.bytes += length;
    if (!st.ok()) {
      ++report.bad;
      spdlog::warn("cache check: chunk {} of generation {} dropped: {}", p.key.chunk, p.key.gen,
                   st.ToString());
    }
    if (progress && (i % 64 == 63 || i + 1 == all.size()) && !progress(i + 1, all.size())) {
      break;
    }
  }
  index_->RequestCommit();
  return report;
}

Result<ChunkCache::WarmReport> ChunkCache::Warm(
    GenerationId gen, uint64_t file_size, ChunkSource& source, unsigned parallel, uint64_t rate,
    const std::function<bool(uint64_t, uint64_t)>& progress, const std::vector<uint64_t>* only) {
  WarmReport report;
  const uint64_t file_chunks = (file_size + chunk_size_ - 1) / chunk_size_;
  std::vector<uint64_t> order;
  if (only != nullptr) {
    for (uint64_t c : *only) {
      if (c < file_chunks) order.push_back(c);
    }
  }
  const uint64_t chunks = only != nullptr ? order.size() : file_chunks;
  uint64_t total = 0;
  for (uint64_t i = 0; i < chunks; ++i) {
    const uint64_t c = only != nullptr ? order[i] : i;
    total += std::min<uint64_t>(chunk_size_, file_size - c * chunk_size_);
  }
  const EvictionPolicy::Use use = UseOf(nullptr, false);        // wanted: probation, not a sweep
  std::deque<std::pair<std::shared_ptr<Flight>, bool>> window;  // (flight, we lead it)
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  Status result;
  auto retire_oldest = [&]() {
    std::shared_ptr<Flight> flight = std::move(window.front().first);
    const bool led = window.front().second;
    window.pop_front();
    std::shared_ptr<FetchPool::Task> task;
    {
      std::lock_guard lock(ShardOf(flight->key).mu);  // a reader may be setting it
      task = flight->task;
    }
    if (task) pool_->RunOrWait(task);
    std::unique_lock lock(flight->mu);
    flight->cv.wait(lock, [&] { return flight->state.load() != Flight::kFetching; });
    if (flight->state.load() == Flight::kFailed && result.ok()) result = flight->status;
    if (led && flight->state.load() == Flight::kReady) report.from_datastore += flight->chunk_len;
  };
  for (uint64_t i = 0; i < chunks && result.ok(); ++i) {
    const uint64_t c = only != nullptr ? order[i] : i;
    const ChunkKey key{gen, c};
    const uint64_t len = std::min<uint64_t>(chunk_size_, file_size - c * chunk_size_);
    std::shared_ptr<Flight> flight;
    bool led = false;
    {
      Shard& shard = ShardOf(key);
      std::lock_guard lock(shard.mu);
      if (auto it = shard.entries.find(key); it != shard.entries.end()) {
        shard.policy.Touch(key, use);
      } else if (auto f = shard.flights.find(key); f != shard.flights.end()) {
        flight = f->second;
        flight->demanded.store(true);
      } else if (Reuse reuse = ReuseLocked(shard, key, static_cast<uint32_t>(len), use);
                 reuse.rec) {
        report.reused += len;
      } else {
        // (Another file's fetch of the content is not joined: warm wants
        // this file's chunks stored under it, and its own errors.)
        flight = NewFlightLocked(shard, key, static_cast<uint32_t>(len), use, false, false,
                                 reuse.digest);
        flight->task = pool_->Submit([this, flight, &source] { Fetch(flight, source); });
        led = true;
      }
    }
    if (flight) window.emplace_back(std::move(flight), led);
    while (window.size() >= std::max(parallel, 1u)) retire_oldest();
    report.bytes += len;
    if (rate > 0) {  // hold the average at `rate` bytes per second
      std::this_thread::sleep_until(
          start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                      std::chrono::duration<double>(static_cast<double>(report.bytes) / rate)));
    }
    const auto now = std::chrono::steady_clock::now();
    if (progress && (now - last_report > std::chrono::milliseconds(200) || i + 1 == chunks)) {
      last_report = now;
      if (!progress(report.bytes, total)) {
        result = Status::Error(Code::kAborted, "warm stopped");
      }
    }
  }
  while (!window.empty()) retire_oldest();  // they use `source`
  GC_RETURN_IF_ERROR(result);
  // Warm means cached: done once what it fetched is stored.
  std::unique_lock lock(wb_mu_);
  wb_cv_.wait(lock, [&] { return wb_bytes_ == 0; });
  return report;
}

}  // namespace goldcache::cache
