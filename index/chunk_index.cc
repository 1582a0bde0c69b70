#include "index/chunk_index.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "index/private_env.h"

namespace goldcache::index {
namespace {

Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return Status::Ok();
  Code code = s.IsCorruption() ? Code::kCorruption
              : s.IsNoSpace()  ? Code::kNoSpace
                               : Code::kIoError;
  return Status::Error(code, what + ": " + s.ToString());
}

}  // namespace

Result<std::unique_ptr<ChunkIndex>> ChunkIndex::Open(Options options) {
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  // Files 0600: the index names datastore paths.
  db_options.env = options.env ? options.env.get() : PrivateFilesEnv();
  db_options.paranoid_checks = true;
  // The index is small (tens of bytes per MiB cached): keep RocksDB modest.
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 4;
  db_options.max_log_file_size = 8 << 20;
  // RocksDB preallocates its WAL (1.1 x write_buffer_size, 64 MiB by
  // default) and its MANIFEST (4 MiB) outside goldcache's budget: on a small
  // cache disk that alone filled it. A few MiB of memtable holds tens of
  // thousands of records, far more than flush_interval collects.
  db_options.write_buffer_size = 4 << 20;
  db_options.manifest_preallocation_size = 256 << 10;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.dir, &raw);
  if (!s.ok()) return FromRocks(s, "opening the cache index at " + options.dir);
  std::unique_ptr<ChunkIndex> index(new ChunkIndex(std::unique_ptr<rocksdb::DB>(raw), options));

  // Load generations; chunk records are visited by the cache via ForEachChunk.
  std::unique_ptr<rocksdb::Iterator> it(index->db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("g"); it->Valid() && it->key().starts_with("g"); it->Next()) {
    auto id = DecodeGenerationIdKey(it->key().ToStringView());
    auto key = DecodeGenerationKey(it->value().ToStringView());
    if (!id || !key) {
      return Status::Error(Code::kCorruption, "undecodable generation record in " + options.dir);
    }
    index->generations_[*id] = *key;
    index->next_generation_ = std::max(index->next_generation_, *id + 1);
  }
  for (it->Seek("p"); it->Valid() && it->key().starts_with("p"); it->Next()) {
    auto id = DecodeU64(it->value().ToStringView());
    if (!id) return Status::Error(Code::kCorruption, "undecodable path record in " + options.dir);
    index->current_by_path_[it->key().ToString().substr(1)] = *id;
  }
  GC_RETURN_IF_ERROR(FromRocks(it->status(), "reading the cache index"));
  index->committer_ = std::thread([raw_index = index.get()] { raw_index->CommitLoop(); });
  return index;
}

ChunkIndex::ChunkIndex(std::unique_ptr<rocksdb::DB> db, Options options)
    : env_(options.env), db_(std::move(db)), options_(std::move(options)) {}

ChunkIndex::~ChunkIndex() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (committer_.joinable()) committer_.join();
  Status st = Flush();
  if (!st.ok()) spdlog::error("final index commit failed: {}", st.ToString());
  db_->Close().PermitUncheckedError();
}

Result<GenerationBinding> ChunkIndex::BindGeneration(const GenerationKey& key) {
  GenerationBinding binding;
  // The usual case, the current generation again: no write, no wait.
  auto current = [&]() -> bool {
    auto cur = current_by_path_.find(key.path);
    if (cur == current_by_path_.end()) return false;
    auto gen = generations_.find(cur->second);
    if (gen != generations_.end() && gen->second == key) {
      binding.id = cur->second;
      return true;
    }
    binding.changed = true;
    binding.previous = cur->second;
    return false;
  };
  {
    std::lock_guard lock(mu_);
    if (current()) return binding;
  }
  // A new generation: one bind at a time decides and writes it, and mu_ (which
  // misses recording chunks need) is not held across the synced write.
  std::lock_guard bind(bind_mu_);
  {
    std::lock_guard lock(mu_);
    binding.changed = false;
    binding.previous = 0;
    if (current()) return binding;  // bound meanwhile
    // An older generation of this path may match again (a file restored to
    // an earlier state keeps its ctime moving, so in practice this is rare).
    binding.id = next_generation_++;
  }
  rocksdb::WriteBatch batch;
  batch.Put(EncodeGenerationIdKey(binding.id), EncodeGenerationKey(key));
  batch.Put(EncodePathKey(key.path), EncodeU64(binding.id));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  {
    // One writer at a time (see PutMeta).
    std::lock_guard write(commit_mu_);
    GC_RETURN_IF_ERROR(FromRocks(db_->Write(wo, &batch), "recording a template generation"));
  }
  std::lock_guard lock(mu_);
  generations_[binding.id] = key;
  current_by_path_[key.path] = binding.id;
  return binding;
}

std::optional<GenerationKey> ChunkIndex::GenerationOf(GenerationId id) const {
  std::lock_guard lock(mu_);
  auto it = generations_.find(id);
  if (it == generations_.end()) return std::nullopt;
  return it->second;
}

std::vector<GenerationId> ChunkIndex::GenerationsOfPath(const std::string& path) const {
  std::lock_guard lock(mu_);
  std::vector<GenerationId> out;
  for (const auto& [id, key] : generations_) {
    if (key.path == path) out.push_back(id);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Status ChunkIndex::ForEachChunk(
    const std::function<void(const ChunkKey&, const ChunkRecord&)>& fn) const {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("c"); it->Valid() && it->key().starts_with("c"); it->Next()) {
    auto key = DecodeChunkKey(it->key().ToStringView());
    auto rec = DecodeChunkRecord(it->value().ToStringView());
    if (!key || !rec) {
      spdlog::warn("skipping an undecodable chunk record in the cache index");
      continue;
    }
    fn(*key, *rec);
  }
  return FromRocks(it->status(), "reading the cache index");
}

uint64_t ChunkIndex::Put(const ChunkKey& key, const ChunkRecord& rec) {
  std::lock_guard lock(mu_);
  uint64_t seq = next_seq_++;
  queue_.push_back(Change{seq, key, rec});
  return seq;
}

uint64_t ChunkIndex::Delete(const ChunkKey& key) {
  std::lock_guard lock(mu_);
  uint64_t seq = next_seq_++;
  queue_.push_back(Change{seq, key, std::nullopt});
  return seq;
}

uint64_t ChunkIndex::durable_sequence() const {
  std::lock_guard lock(mu_);
  return durable_seq_;
}

size_t ChunkIndex::pending() const {
  std::lock_guard lock(mu_);
  return queue_.size() + committing_;
}

void ChunkIndex::RequestCommit() {
  {
    std::lock_guard lock(mu_);
    commit_requested_ = true;
  }
  cv_.notify_all();
}

Status ChunkIndex::Flush() {
  std::lock_guard commit_lock(commit_mu_);
  return CommitPending();
}

Status ChunkIndex::CommitPending() {
  std::vector<Change> changes;
  {
    std::lock_guard lock(mu_);
    changes.swap(queue_);
    committing_ = changes.size();
  }
  if (changes.empty()) return Status::Ok();
  bool has_puts = false;
  rocksdb::WriteBatch batch;
  for (const Change& c : changes) {
    if (c.rec) {
      has_puts = true;
      batch.Put(EncodeChunkKey(c.key), EncodeChunkRecord(*c.rec));
    } else {
      batch.Delete(EncodeChunkKey(c.key));
    }
  }
  Status st = Status::Ok();
  if (has_puts && options_.before_commit) st = options_.before_commit();
  if (st.ok()) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    st = FromRocks(db_->Write(wo, &batch), "committing the cache index");
  }
  std::lock_guard lock(mu_);
  committing_ = 0;
  if (!st.ok()) {
    // Keep the changes, in order, ahead of anything queued meanwhile.
    changes.insert(changes.end(), std::make_move_iterator(queue_.begin()),
                   std::make_move_iterator(queue_.end()));
    queue_.swap(changes);
    return st;
  }
  durable_seq_ = changes.back().seq;
  return Status::Ok();
}

void ChunkIndex::CommitLoop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, options_.flush_interval, [this] { return stop_ || commit_requested_; });
    commit_requested_ = false;
    if (stop_) break;
    if (queue_.empty()) continue;
    lock.unlock();
    Status st;
    {
      std::lock_guard commit_lock(commit_mu_);
      st = CommitPending();
    }
    if (!st.ok()) spdlog::error("cache index commit failed (will retry): {}", st.ToString());
    lock.lock();
  }
}

Result<std::optional<std::string>> ChunkIndex::GetMeta(const std::string& name) const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), EncodeMetaKey(name), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  GC_RETURN_IF_ERROR(FromRocks(s, "reading index metadata " + name));
  return std::optional<std::string>(std::move(value));
}

Status ChunkIndex::PutMeta(const std::string& name, const std::string& value) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  // One writer at a time: RocksDB merges concurrent writers' batches in
  // its write group, synchronised in ways ThreadSanitizer cannot see in
  // Debian's uninstrumented librocksdb.a (reported as races), and the
  // writes are rare and synced anyway.
  std::lock_guard write(commit_mu_);
  return FromRocks(db_->Put(wo, EncodeMetaKey(name), value), "writing index metadata " + name);
}

}  // namespace goldcache::index
