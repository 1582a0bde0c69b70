#include "cache/chunk_cache.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "cache/checksum.h"

namespace goldcache::cache {
namespace {

constexpr int kMaxAttempts = 3;
constexpr char kRunningMarker[] = "RUNNING";
constexpr char kFormatVersion[] = "1";

Status SyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "opening " + dir);
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  return rc == 0 ? Status::Ok() : Status::FromErrno(err, "syncing " + dir);
}

}  // namespace

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
                         "Reads that waited for another reader's fetch of the same chunk.")),
        uncached(
            r.GetCounter("goldcache_cache_uncached_fills_total",
                         "Fetched chunks served without being stored (no slot or store error).")),
        unsettled(r.GetCounter(
            "goldcache_cache_unsettled_fills_total",
            "Fetched chunks served without being stored because their generation changed on the "
            "datastore less than [cache] settle ago (it may still be being written).")),
        store_errors(
            r.GetCounter("goldcache_errors_total", "Errors by kind.", {{"kind", "local_store"}})),
        recovered_dropped(
            r.GetCounter("goldcache_cache_recovery_dropped_total",
                         "Chunks dropped at startup because they could not be proved good.")) {}
  metrics::Counter& hits;
  metrics::Counter& misses;
  metrics::Counter& evictions;
  metrics::Counter& checksum_failures;
  metrics::Counter& single_flight_waits;
  metrics::Counter& uncached;
  metrics::Counter& unsettled;
  metrics::Counter& store_errors;
  metrics::Counter& recovered_dropped;
};

ChunkCache::ChunkCache(const CacheOptions& options)
    : options_(options), chunk_size_(options.chunk_size), m_(new Metrics(*options.registry)) {}

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
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::Error(Code::kIoError, "creating cache dir " + dir + ": " + ec.message());
  const std::string marker = dir + "/" + kRunningMarker;
  recovered_from_crash_ = std::filesystem::exists(marker);
  if (recovered_from_crash_) {
    spdlog::warn("cache {}: the previous agent did not stop cleanly; re-proving every cached chunk",
                 dir);
  }

  index::ChunkIndex::Options io;
  io.dir = dir + "/index";
  io.flush_interval = options_.index_flush_interval;
  io.before_commit = [this] { return store_->Sync(); };
  auto index = index::ChunkIndex::Open(io);
  if (!index.ok()) return index.status();
  index_ = std::move(index).value();

  auto stored_chunk = index_->GetMeta("chunk_size");
  if (!stored_chunk.ok()) return stored_chunk.status();
  if (stored_chunk->has_value() && **stored_chunk != std::to_string(chunk_size_)) {
    spdlog::warn("cache {} was made with chunk size {}, now {}: discarding it", dir, **stored_chunk,
                 chunk_size_);
    index_.reset();
    std::filesystem::remove_all(io.dir, ec);
    std::filesystem::remove(dir + "/chunks.dat", ec);
    std::filesystem::remove(dir + "/sums.dat", ec);
    index = index::ChunkIndex::Open(io);
    if (!index.ok()) return index.status();
    index_ = std::move(index).value();
  }
  GC_RETURN_IF_ERROR(index_->PutMeta("chunk_size", std::to_string(chunk_size_)));
  GC_RETURN_IF_ERROR(index_->PutMeta("format", kFormatVersion));

  slots_ = options_.capacity_bytes / chunk_size_;
  auto store = ChunkStore::Open(dir, chunk_size_, slots_, rings_);
  if (!store.ok()) return store.status();
  store_ = std::move(store).value();
  policy_ = std::make_unique<SlruPolicy>(std::max<uint64_t>(1, slots_ * 8 / 10));
  slot_pins_.assign(slots_, 0);

  GC_RETURN_IF_ERROR(LoadRecords(recovered_from_crash_));
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
  int fd = open(marker.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "creating " + marker);
  close(fd);
  GC_RETURN_IF_ERROR(SyncDir(dir));

  auto& r = *options_.registry;
  r.AddCallbackGauge("goldcache_cache_used_bytes", "Bytes of template data in the local cache.", {},
                     [this] { return static_cast<double>(used_bytes()); });
  r.AddCallbackGauge("goldcache_cache_capacity_bytes", "Capacity of the local cache in bytes.", {},
                     [this] { return static_cast<double>(capacity_bytes()); });
  r.AddCallbackGauge("goldcache_index_pending_records",
                     "Index changes not yet durable in RocksDB (committed every flush interval).",
                     {}, [this] { return static_cast<double>(index_->pending()); });
  spdlog::info("cache {}: {} of {} slots in use, chunk size {}, io_uring {}", dir, entries_.size(),
               slots_, chunk_size_, rings_.uses_io_uring() ? "on" : "off");
  return Status::Ok();
}

Status ChunkCache::LoadRecords(bool verify) {
  std::vector<bool> claimed(slots_, false);
  std::vector<ChunkKey> drop;
  std::vector<uint32_t> table;
  Status st = index_->ForEachChunk([&](const ChunkKey& key, const index::ChunkRecord& rec) {
    bool good = rec.slot < slots_ && !claimed[rec.slot] && rec.length > 0 &&
                rec.length <= chunk_size_ && index_->GenerationOf(key.gen).has_value();
    if (good && verify) {
      table.resize(BlocksFor(rec.length));
      good = store_->ReadTable(rec.slot, table).ok() &&
             TableHash(table, key, rec.length) == rec.table_hash;
    }
    if (!good) {
      drop.push_back(key);
      return;
    }
    claimed[rec.slot] = true;
    entries_[key] = Entry{rec};
    policy_->Insert(key);
    used_bytes_ += rec.length;
    bytes_by_generation_[key.gen] += rec.length;
  });
  GC_RETURN_IF_ERROR(st);
  for (const ChunkKey& key : drop) index_->Delete(key);
  if (!drop.empty()) {
    m_->recovered_dropped.Add(drop.size());
    spdlog::warn("cache {}: dropped {} chunk records that could not be proved good", options_.dir,
                 drop.size());
    GC_RETURN_IF_ERROR(index_->Flush());
  }
  for (uint64_t s = slots_; s-- > 0;) {
    if (!claimed[s]) free_slots_.push_back(s);  // lowest slot on top: the file stays compact
  }
  return Status::Ok();
}

ChunkCache::~ChunkCache() {
  if (!index_) return;
  Status st = index_->Flush();
  index_.reset();  // stops the committer
  if (!st.ok()) {
    spdlog::error("cache {}: final index commit failed, next start re-proves chunks: {}",
                  options_.dir, st.ToString());
    return;
  }
  std::error_code ec;
  std::filesystem::remove(options_.dir + "/" + kRunningMarker, ec);
  (void)SyncDir(options_.dir);
}

Result<index::GenerationBinding> ChunkCache::BindGeneration(const index::GenerationKey& key) {
  return index_->BindGeneration(key);
}

Status ChunkCache::FlushIndex() { return index_->Flush(); }

uint64_t ChunkCache::capacity_bytes() const {
  std::lock_guard lock(mu_);
  return (slots_ - lent_slots_.size()) * chunk_size_;
}

uint64_t ChunkCache::LendSpace(uint64_t bytes) {
  const uint64_t want = (bytes + chunk_size_ - 1) / chunk_size_;
  std::vector<uint64_t> taken;
  for (int round = 0; round < 2 && taken.size() < want; ++round) {
    {
      std::lock_guard lock(mu_);
      ReclaimLocked();
      // Keep two slots: the cache still has to be able to serve a miss.
      const uint64_t keep = 2;
      uint64_t lendable = slots_ - lent_slots_.size() - taken.size();
      lendable = lendable > keep ? lendable - keep : 0;
      uint64_t n = std::min<uint64_t>(want - taken.size(), lendable);
      if (free_slots_.size() < n) EvictLocked(n - free_slots_.size());
      ReclaimLocked();
      while (taken.size() < want && lendable > 0 && !free_slots_.empty()) {
        taken.push_back(free_slots_.back());
        free_slots_.pop_back();
        --lendable;
      }
      if (taken.size() >= want || pending_free_.empty()) break;
    }
    // Evicted slots become free once their deletes are durable.
    Status st = index_->Flush();
    if (!st.ok())
      spdlog::error("cache: index commit failed while lending space: {}", st.ToString());
  }
  for (uint64_t slot : taken) {
    Status st = store_->Punch(slot);
    if (!st.ok()) spdlog::warn("cache: {}", st.ToString());  // lent all the same: never reused
  }
  std::lock_guard lock(mu_);
  lent_slots_.insert(lent_slots_.end(), taken.begin(), taken.end());
  if (!taken.empty()) {
    spdlog::debug("cache: lent {} bytes to overlays (capacity now {} bytes)",
                  taken.size() * chunk_size_, (slots_ - lent_slots_.size()) * chunk_size_);
  }
  return taken.size() * chunk_size_;
}

uint64_t ChunkCache::ReturnSpace(uint64_t bytes) {
  std::lock_guard lock(mu_);
  uint64_t n = std::min<uint64_t>(bytes / chunk_size_, lent_slots_.size());
  for (uint64_t i = 0; i < n; ++i) {
    free_slots_.push_back(lent_slots_.back());
    lent_slots_.pop_back();
  }
  return n * chunk_size_;
}

uint64_t ChunkCache::used_bytes() const {
  std::lock_guard lock(mu_);
  return used_bytes_;
}

uint64_t ChunkCache::cached_bytes_of(GenerationId gen) const {
  std::lock_guard lock(mu_);
  auto it = bytes_by_generation_.find(gen);
  return it == bytes_by_generation_.end() ? 0 : it->second;
}

Result<ReadOutcome> ChunkCache::Read(GenerationId gen, uint64_t file_size, uint64_t offset,
                                     std::span<char> out, ChunkSource& source) {
  ReadOutcome outcome;
  if (offset >= file_size) return outcome;
  const uint64_t end = std::min<uint64_t>(offset + out.size(), file_size);
  for (uint64_t pos = offset; pos < end;) {
    const uint64_t chunk = pos / chunk_size_;
    const uint64_t chunk_start = chunk * chunk_size_;
    const auto chunk_len =
        static_cast<uint32_t>(std::min<uint64_t>(chunk_size_, file_size - chunk_start));
    const auto in_off = static_cast<uint32_t>(pos - chunk_start);
    const auto n = static_cast<uint32_t>(std::min<uint64_t>(end - pos, chunk_len - in_off));
    GC_RETURN_IF_ERROR(ReadChunkRange(ChunkKey{gen, chunk}, chunk_start, chunk_len, in_off, n,
                                      out.data() + (pos - offset), source, outcome));
    pos += n;
    outcome.bytes += n;
  }
  return outcome;
}

Status ChunkCache::ReadChunkRange(const ChunkKey& key, uint64_t chunk_start, uint32_t chunk_len,
                                  uint32_t in_off, uint32_t n, char* dst, ChunkSource& source,
                                  ReadOutcome& outcome) {
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    std::optional<index::ChunkRecord> rec;
    std::shared_ptr<Flight> flight;
    bool leader = false;
    {
      std::lock_guard lock(mu_);
      if (auto it = entries_.find(key); it != entries_.end()) {
        rec = it->second.rec;
        ++slot_pins_[rec->slot];
        policy_->Touch(key);
      } else if (auto f = flights_.find(key); f != flights_.end()) {
        flight = f->second;
      } else {
        flight = std::make_shared<Flight>();
        flights_.emplace(key, flight);
        leader = true;
      }
    }

    if (rec) {
      Status st = ReadFromStore(key, *rec, in_off, n, dst);
      std::lock_guard lock(mu_);
      --slot_pins_[rec->slot];
      if (st.ok()) {
        m_->hits.Add();
        return st;
      }
      if (st.code() == Code::kCorruption) {
        m_->checksum_failures.Add();
        spdlog::warn("cache: chunk {} of generation {} failed its checksum ({}); refetching",
                     key.chunk, key.gen, st.message());
      } else {
        m_->store_errors.Add();
        spdlog::error("cache: reading chunk {} of generation {} failed: {}; refetching", key.chunk,
                      key.gen, st.ToString());
      }
      DropLocked(key, *rec);
      continue;
    }

    m_->misses.Add();
    if (leader) {
      FetchAndStore(key, chunk_start, chunk_len, source, *flight);
      if (flight->status.ok()) outcome.from_datastore += n;
    } else {
      m_->single_flight_waits.Add();
      std::unique_lock lock(mu_);
      flight_cv_.wait(lock, [&] { return flight->done; });
    }
    // The flight is done: its fields no longer change.
    GC_RETURN_IF_ERROR(flight->status);
    std::memcpy(dst, flight->data.data() + in_off, n);
    return Status::Ok();
  }
  return Status::Error(Code::kIoError, "chunk " + std::to_string(key.chunk) +
                                           " kept failing verification after refetch");
}

Status ChunkCache::ReadFromStore(const ChunkKey& key, const index::ChunkRecord& rec,
                                 uint32_t in_off, uint32_t n, char* dst) {
  if (static_cast<uint64_t>(in_off) + n > rec.length) {
    return Status::Error(Code::kCorruption, "record shorter than the file's chunk");
  }
  const uint32_t first = in_off / kBlockSize;
  const uint32_t span_off = first * kBlockSize;
  const uint32_t span_end =
      std::min<uint32_t>(rec.length, (in_off + n + kBlockSize - 1) / kBlockSize * kBlockSize);
  const uint32_t span_len = span_end - span_off;
  thread_local std::vector<char> scratch;
  thread_local std::vector<uint32_t> table;
  // Aligned requests (QEMU O_DIRECT, kernel readahead) land in place; others
  // are read whole-block into scratch and copied.
  const bool in_place = span_off == in_off && span_len == n;
  char* buf = dst;
  if (!in_place) {
    scratch.resize(span_len);
    buf = scratch.data();
  }
  table.resize(BlocksFor(rec.length));
  GC_RETURN_IF_ERROR(store_->Read(rec.slot, span_off, std::span<char>(buf, span_len), table));
  if (TableHash(table, key, rec.length) != rec.table_hash) {
    return Status::Error(Code::kCorruption, "checksum table does not match its record");
  }
  for (uint32_t off = 0, b = first; off < span_len; off += kBlockSize, ++b) {
    uint32_t len = std::min<uint32_t>(kBlockSize, span_len - off);
    if (BlockChecksum(std::span<const char>(buf + off, len)) != table[b]) {
      return Status::Error(Code::kCorruption, "block " + std::to_string(b) + " mismatch");
    }
  }
  if (!in_place) std::memcpy(dst, buf + (in_off - span_off), n);
  return Status::Ok();
}

void ChunkCache::FetchAndStore(const ChunkKey& key, uint64_t chunk_start, uint32_t chunk_len,
                               ChunkSource& source, Flight& flight) {
  Status status;
  std::optional<index::ChunkRecord> stored;
  flight.data.resize(chunk_len);
  // Asked before the read: bytes read after the file settled are whole.
  const bool cacheable = source.Cacheable();
  auto got = source.ReadAt(chunk_start, flight.data);
  if (!got.ok()) {
    status = got.status();
  } else if (*got != chunk_len) {
    status = Status::Error(Code::kStale, "datastore file is shorter than its generation says");
  } else if (!cacheable) {
    m_->unsettled.Add();
  } else {
    std::vector<uint32_t> table = ComputeTable(flight.data);
    if (auto slot = AllocateSlot()) {
      Status st = store_->Write(*slot, flight.data, table);
      if (st.ok()) {
        stored = index::ChunkRecord{*slot, chunk_len, TableHash(table, key, chunk_len)};
      } else {
        m_->store_errors.Add();
        m_->uncached.Add();
        spdlog::error("cache: storing chunk {} of generation {} failed: {}", key.chunk, key.gen,
                      st.ToString());
        std::lock_guard lock(mu_);
        free_slots_.push_back(*slot);
      }
    } else {
      m_->uncached.Add();
    }
  }
  {
    // Publishing the entry and retiring the flight in one critical section
    // leaves no moment where a new reader would start a second fetch.
    std::lock_guard lock(mu_);
    if (stored) {
      entries_[key] = Entry{*stored};
      policy_->Insert(key);
      used_bytes_ += stored->length;
      bytes_by_generation_[key.gen] += stored->length;
      index_->Put(key, *stored);
    }
    flight.status = status;
    flight.done = true;
    flights_.erase(key);
  }
  flight_cv_.notify_all();
}

size_t ChunkCache::LowWatermark() const {
  return static_cast<size_t>(std::clamp<uint64_t>(slots_ / 64, 1, 256));
}

std::optional<uint64_t> ChunkCache::AllocateSlot() {
  for (int round = 0; round < 2; ++round) {
    {
      std::lock_guard lock(mu_);
      ReclaimLocked();
      if (free_slots_.empty()) EvictLocked(LowWatermark());
      if (!free_slots_.empty()) {
        uint64_t slot = free_slots_.back();
        free_slots_.pop_back();
        // Evict ahead, so that by the time the free list runs dry the deletes
        // have been committed and their slots can be reused without waiting.
        if (free_slots_.size() + pending_free_.size() < LowWatermark()) {
          EvictLocked(LowWatermark());
          index_->RequestCommit();
        }
        return slot;
      }
      if (pending_free_.empty()) return std::nullopt;  // everything is being read
    }
    // Every candidate slot waits on an uncommitted delete: commit now.
    Status st = index_->Flush();
    if (!st.ok()) {
      spdlog::error("cache: index commit failed while making room: {}", st.ToString());
      return std::nullopt;
    }
  }
  return std::nullopt;
}

void ChunkCache::EvictLocked(size_t n) {
  // Never a chunk being read, never a pinned template (warm --pin).
  auto victims = policy_->PickVictims(n, [this](const ChunkKey& key) {
    return slot_pins_[entries_.at(key).rec.slot] == 0 && !pinned_.count(key.gen);
  });
  for (const ChunkKey& key : victims) {
    auto it = entries_.find(key);
    const index::ChunkRecord rec = it->second.rec;
    entries_.erase(it);
    used_bytes_ -= rec.length;
    if ((bytes_by_generation_[key.gen] -= rec.length) == 0) bytes_by_generation_.erase(key.gen);
    pending_free_.push_back(PendingFree{index_->Delete(key), rec.slot});
  }
  m_->evictions.Add(victims.size());
}

void ChunkCache::DropLocked(const ChunkKey& key, const index::ChunkRecord& rec) {
  auto it = entries_.find(key);
  if (it == entries_.end() || !(it->second.rec == rec)) return;  // someone else already did
  entries_.erase(it);
  policy_->Erase(key);
  used_bytes_ -= rec.length;
  if ((bytes_by_generation_[key.gen] -= rec.length) == 0) bytes_by_generation_.erase(key.gen);
  pending_free_.push_back(PendingFree{index_->Delete(key), rec.slot});
}

std::optional<index::GenerationKey> ChunkCache::GenerationKeyOf(GenerationId gen) const {
  return index_->GenerationOf(gen);
}

std::vector<GenerationId> ChunkCache::GenerationsOf(const std::string& path) const {
  return index_->GenerationsOfPath(path);
}

uint64_t ChunkCache::Evict(GenerationId gen) {
  uint64_t bytes = 0;
  {
    std::lock_guard lock(mu_);
    std::vector<std::pair<ChunkKey, index::ChunkRecord>> victims;
    for (const auto& [key, entry] : entries_) {
      if (key.gen == gen) victims.emplace_back(key, entry.rec);
    }
    // A chunk being read keeps its slot until the read ends (slot pins).
    for (const auto& [key, rec] : victims) {
      DropLocked(key, rec);
      bytes += rec.length;
    }
    m_->evictions.Add(victims.size());
  }
  if (pinned(gen)) (void)Pin(gen, false);
  index_->RequestCommit();
  return bytes;
}

Status ChunkCache::Pin(GenerationId gen, bool pin) {
  std::string list;
  {
    std::lock_guard lock(mu_);
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
  std::lock_guard lock(mu_);
  return pinned_.count(gen) != 0;
}

Result<ChunkCache::CheckReport> ChunkCache::Check(
    const std::function<bool(uint64_t, uint64_t)>& progress) {
  std::vector<std::pair<ChunkKey, index::ChunkRecord>> all;
  {
    std::lock_guard lock(mu_);
    all.reserve(entries_.size());
    for (const auto& [key, entry] : entries_) all.emplace_back(key, entry.rec);
  }
  CheckReport report;
  std::vector<char> buf(chunk_size_);
  for (size_t i = 0; i < all.size(); ++i) {
    const auto& [key, rec] = all[i];
    {
      std::lock_guard lock(mu_);
      auto it = entries_.find(key);
      if (it == entries_.end() || !(it->second.rec == rec)) continue;  // gone meanwhile
      ++slot_pins_[rec.slot];
    }
    Status st = ReadFromStore(key, rec, 0, rec.length, buf.data());
    std::lock_guard lock(mu_);
    --slot_pins_[rec.slot];
    ++report.chunks;
    report.bytes += rec.length;
    if (!st.ok()) {
      ++report.bad;
      if (st.code() == Code::kCorruption) m_->checksum_failures.Add();
      spdlog::warn("cache check: chunk {} of generation {} dropped: {}", key.chunk, key.gen,
                   st.ToString());
      DropLocked(key, rec);
    }
    if (progress && (i % 64 == 63 || i + 1 == all.size()) && !progress(i + 1, all.size())) {
      break;
    }
  }
  index_->RequestCommit();
  return report;
}

void ChunkCache::ReclaimLocked() {
  if (pending_free_.empty()) return;
  const uint64_t durable = index_->durable_sequence();
  auto keep = std::partition(pending_free_.begin(), pending_free_.end(), [&](const PendingFree& p) {
    return p.seq > durable || slot_pins_[p.slot] != 0;
  });
  for (auto it = keep; it != pending_free_.end(); ++it) free_slots_.push_back(it->slot);
  pending_free_.erase(keep, pending_free_.end());
}

}  // namespace goldcache::cache
