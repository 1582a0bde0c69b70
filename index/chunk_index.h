// index/ — the durable record of what the local cache holds: template
// generations and chunk records, kept in RocksDB.
//
// Durability: generation bindings are written synchronously (they happen at
// open, rarely). Chunk puts and deletes are queued and committed in batches by
// a background thread every `flush_interval`, so the read path never waits for
// RocksDB (invariant 7). Before each commit that names new chunks, the
// `before_commit` hook runs and must make those chunks' data durable: a record
// never becomes durable before the data it names (invariant 2). A crash loses
// at most the uncommitted tail of the queue, never correctness.
//
// Every change gets a sequence number; durable_sequence() says how far the
// commits have reached. The cache uses it to reuse a slot only once the delete
// of its previous chunk is durable.
//
// Thread safety: all methods are safe to call concurrently.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "index/records.h"
#include "util/status.h"

namespace rocksdb {
class DB;
class Env;
}  // namespace rocksdb

namespace goldcache::index {

struct GenerationBinding {
  GenerationId id = 0;
  // True when the path had an earlier generation with a different key: the
  // datastore file changed since goldcache last saw it.
  bool changed = false;
  // When changed: the path's generation before (0 when unknown).
  GenerationId previous = 0;
};

class ChunkIndex {
 public:
  struct Options {
    std::string dir;  // RocksDB directory; created if missing
    std::chrono::milliseconds flush_interval{100};
    // Runs (on the committing thread) before any batch holding puts is written.
    std::function<Status()> before_commit;
    // RocksDB's Env; null: PrivateFilesEnv(). Tests give index/fault_fs.h's.
    std::shared_ptr<rocksdb::Env> env;
  };

  // Opens or creates the index. A database that cannot be opened (e.g.
  // corrupt) is reported, not repaired here: the caller decides to rebuild.
  static Result<std::unique_ptr<ChunkIndex>> Open(Options options);
  ~ChunkIndex();  // stops the committer after a final commit
  ChunkIndex(const ChunkIndex&) = delete;
  ChunkIndex& operator=(const ChunkIndex&) = delete;

  // Returns the generation for `key`: the same id as before when the path's
  // current generation has this exact key, otherwise a new id that becomes
  // the path's current generation. Durable when it returns.
  Result<GenerationBinding> BindGeneration(const GenerationKey& key);
  // The key of a known generation.
  std::optional<GenerationKey> GenerationOf(GenerationId id) const;
  // Every known generation of `path` (as in GenerationKey::path), oldest first.
  std::vector<GenerationId> GenerationsOfPath(const std::string& path) const;

  // Visits every durable chunk record (used once at startup).
  Status ForEachChunk(const std::function<void(const ChunkKey&, const ChunkRecord&)>& fn) const;

  // Queue a change; returns its sequence number. Durable once
  // durable_sequence() >= that number.
  uint64_t Put(const ChunkKey& key, const ChunkRecord& rec);
  uint64_t Delete(const ChunkKey& key);
  uint64_t durable_sequence() const;
  // Changes not yet durable: queued, or in a commit that has not finished.
  size_t pending() const;
  // Commits everything queued so far and waits for it.
  Status Flush();
  // Wakes the committer without waiting.
  void RequestCommit();

  // Small metadata values (format version, chunk size), written synchronously.
  Result<std::optional<std::string>> GetMeta(const std::string& name) const;
  Status PutMeta(const std::string& name, const std::string& value);

 private:
  struct Change {
    uint64_t seq;
    ChunkKey key;
    std::optional<ChunkRecord> rec;  // nullopt = delete
  };
  ChunkIndex(std::unique_ptr<rocksdb::DB> db, Options options);
  void CommitLoop();
  // REQUIRES: commit_mu_ held.
  Status CommitPending();

  std::shared_ptr<rocksdb::Env> env_;  // before db_: it outlives the DB
  std::unique_ptr<rocksdb::DB> db_;
  const Options options_;

  // Serializes writes to RocksDB: commits (the committer thread, Flush
  // callers), generations and metadata.
  std::mutex commit_mu_;

  std::mutex bind_mu_;     // one new generation written at a time
  mutable std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::vector<Change> queue_;         // GUARDED_BY(mu_)
  size_t committing_ = 0;             // GUARDED_BY(mu_): changes taken by the commit under way
  uint64_t next_seq_ = 1;             // GUARDED_BY(mu_)
  uint64_t durable_seq_ = 0;          // GUARDED_BY(mu_)
  bool stop_ = false;                 // GUARDED_BY(mu_)
  bool commit_requested_ = false;     // GUARDED_BY(mu_)
  GenerationId next_generation_ = 1;  // GUARDED_BY(mu_)
  std::unordered_map<GenerationId, GenerationKey> generations_;    // GUARDED_BY(mu_)
  std::unordered_map<std::string, GenerationId> current_by_path_;  // GUARDED_BY(mu_)

  std::thread committer_;
};

}  // namespace goldcache::index
