#include "agent/datastore_fs.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <chrono>

namespace goldcache::agent {
namespace {

index::GenerationKey GenerationKeyOf(const std::string& datastore, const std::string& path,
                                     const struct stat& st) {
  return index::GenerationKey{
      datastore + ":" + path,
      static_cast<uint64_t>(st.st_size),
      int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec,
      int64_t{st.st_ctim.tv_sec} * 1'000'000'000 + st.st_ctim.tv_nsec,
      static_cast<uint64_t>(st.st_ino),
  };
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

struct DatastoreFs::Counters {
  explicit Counters(metrics::Registry& r)
      : read_cache(r.GetCounter("goldcache_read_bytes_total",
                                "Bytes returned to readers, by where they came from.",
                                {{"source", "cache"}})),
        read_datastore(r.GetCounter("goldcache_read_bytes_total",
                                    "Bytes returned to readers, by where they came from.",
                                    {{"source", "datastore"}})),
        latency_cache(r.GetHistogram("goldcache_read_latency_seconds",
                                     "Latency of reads through the mount, by source.",
                                     {{"source", "cache"}}, metrics::LatencyBuckets())),
        latency_datastore(r.GetHistogram("goldcache_read_latency_seconds",
                                         "Latency of reads through the mount, by source.",
                                         {{"source", "datastore"}}, metrics::LatencyBuckets())),
        generation_changes(r.GetCounter(
            "goldcache_template_generation_changes_total",
            "Opens that found a template changed on the datastore (a new generation).")),
        changed_while_open(
            r.GetCounter("goldcache_template_changed_while_open_total",
                         "Templates changed on the datastore while desktops had them open.")),
        stale_reads(r.GetCounter("goldcache_errors_total", "Errors by kind.",
                                 {{"kind", "stale_generation"}})),
        read_errors(r.GetCounter("goldcache_errors_total", "Errors by kind.", {{"kind", "read"}})),
        readonly_refusals(r.GetCounter("goldcache_readonly_refusals_total",
                                       "Changes refused (EROFS) because of a file's role.")) {}
  metrics::Counter& read_cache;
  metrics::Counter& read_datastore;
  metrics::Histogram& latency_cache;
  metrics::Histogram& latency_datastore;
  metrics::Counter& generation_changes;
  metrics::Counter& changed_while_open;
  metrics::Counter& stale_reads;
  metrics::Counter& read_errors;
  metrics::Counter& readonly_refusals;
};

// A template or nonpersistent file: datastore content of one generation,
// read through the chunk cache. Read-only until the overlay exists.
class DatastoreFs::CachedFile : public fuse::OpenFile, public cache::ChunkSource {
 public:
  CachedFile(DatastoreFs& fs, std::string path, index::GenerationKey key, index::GenerationId gen,
             std::unique_ptr<backing::BackingFile> file, bool keep_cache)
      : fs_(fs),
        path_(std::move(path)),
        key_(std::move(key)),
        gen_(gen),
        file_(std::move(file)),
        keep_cache_(keep_cache) {}

  Result<size_t> Read(uint64_t offset, std::span<char> buf) override {
    auto start = std::chrono::steady_clock::now();
    auto r = fs_.cache_.Read(gen_, key_.size, offset, buf, *this);
    Counters& c = *fs_.counters_;
    if (!r.ok()) {
      (r.status().code() == Code::kStale ? c.stale_reads : c.read_errors).Add();
      spdlog::error("{}: read of {} bytes at {} failed: {}", path_, buf.size(), offset,
                    r.status().ToString());
      return r.status();
    }
    c.read_datastore.Add(r->from_datastore);
    c.read_cache.Add(r->bytes - r->from_datastore);
    (r->from_datastore ? c.latency_datastore : c.latency_cache).Observe(SecondsSince(start));
    return r->bytes;
  }

  // ChunkSource: the datastore bytes of exactly this generation, or kStale.
  Result<size_t> ReadAt(uint64_t offset, std::span<char> buf) override {
    auto n = file_->ReadAt(offset, buf);
    if (!n.ok()) return n;
    // Checked after the read: if the file changed before or during it, the
    // attributes say so now, and the bytes are not used.
    auto st = file_->Stat();
    if (!st.ok()) return st.status();
    if (!(GenerationKeyOf(fs_.name_, path_, *st) == key_)) {
      if (!reported_change_.exchange(true)) {
        fs_.counters_->changed_while_open.Add();
        spdlog::error(
            "{}: the template changed on the datastore while open (generation {}); this handle "
            "keeps its generation, uncached reads on it fail with EIO until it is reopened",
            path_, gen_);
      }
      return Status::Error(Code::kStale, path_ + " changed on the datastore while open");
    }
    return n;
  }

  Result<size_t> Write(uint64_t, std::span<const char>) override { return ReadOnly(); }
  Status Fsync(bool) override { return Status::Ok(); }
  Status Fallocate(int, uint64_t, uint64_t) override { return ReadOnly(); }
  Status Truncate(uint64_t) override { return ReadOnly(); }
  Result<struct stat> Stat() override {
    auto st = file_->Stat();
    if (!st.ok()) return st;
    st->st_size = static_cast<off_t>(key_.size);  // this handle's generation
    return st;
  }
  bool KeepCache() const override { return keep_cache_; }
  void Release() override { fs_.OnCachedFileClosed(path_, gen_); }

 private:
  Status ReadOnly() {
    fs_.counters_->readonly_refusals.Add();
    return Status::Error(Code::kReadOnly, path_ + " is read-only through goldcache (" +
                                              RoleName(fs_.rules_.RoleOf(path_)) + ")");
  }

  DatastoreFs& fs_;
  const std::string path_;
  const index::GenerationKey key_;
  const index::GenerationId gen_;
  const std::unique_ptr<backing::BackingFile> file_;
  const bool keep_cache_;
  std::atomic<bool> reported_change_{false};
};

// Everything else: the datastore file itself.
class DatastoreFs::PassthroughFile : public fuse::OpenFile {
 public:
  PassthroughFile(DatastoreFs& fs, std::unique_ptr<backing::BackingFile> file)
      : fs_(fs), file_(std::move(file)) {}
  Result<size_t> Read(uint64_t offset, std::span<char> buf) override {
    auto start = std::chrono::steady_clock::now();
    auto n = file_->ReadAt(offset, buf);
    if (n.ok()) {
      fs_.counters_->read_datastore.Add(*n);
      fs_.counters_->latency_datastore.Observe(SecondsSince(start));
    }
    return n;
  }
  Result<size_t> Write(uint64_t offset, std::span<const char> buf) override {
    return file_->WriteAt(offset, buf);
  }
  Status Fsync(bool datasync) override { return file_->Sync(datasync); }
  Status Fallocate(int mode, uint64_t offset, uint64_t length) override {
    return file_->Allocate(mode, offset, length);
  }
  Result<struct stat> Stat() override { return file_->Stat(); }
  Status Truncate(uint64_t size) override { return file_->Truncate(size); }
  bool KeepCache() const override { return false; }
  void Release() override {}

 private:
  DatastoreFs& fs_;
  const std::unique_ptr<backing::BackingFile> file_;
};

DatastoreFs::DatastoreFs(std::string name, backing::Backing& backing, RuleSet rules,
                         cache::ChunkCache& cache, metrics::Registry& registry)
    : name_(std::move(name)),
      backing_(backing),
      rules_(std::move(rules)),
      cache_(cache),
      counters_(std::make_unique<Counters>(registry)) {}

DatastoreFs::~DatastoreFs() = default;

Status DatastoreFs::RequireMutable(const std::string& path) const {
  Role role = rules_.RoleOf(path);
  if (role == Role::kPassthrough) return Status::Ok();
  counters_->readonly_refusals.Add();
  return Status::Error(Code::kReadOnly,
                       path + " is read-only through goldcache (" + RoleName(role) + ")");
}

Result<struct stat> DatastoreFs::GetAttr(const std::string& path) { return backing_.Stat(path); }

Result<std::vector<fuse::DirEntry>> DatastoreFs::ReadDir(const std::string& path) {
  auto entries = backing_.ReadDir(path);
  if (!entries.ok()) return entries.status();
  std::vector<fuse::DirEntry> out;
  out.reserve(entries->size());
  for (auto& e : *entries) out.push_back(fuse::DirEntry{std::move(e.name), e.st});
  return out;
}

Result<std::string> DatastoreFs::ReadLink(const std::string& path) {
  return backing_.ReadLink(path);
}

Result<std::unique_ptr<fuse::OpenFile>> DatastoreFs::Open(const std::string& path, int flags) {
  if (rules_.RoleOf(path) != Role::kPassthrough) return OpenCached(path, flags);
  auto file = backing_.Open(path, flags);
  if (!file.ok()) return file.status();
  return std::unique_ptr<fuse::OpenFile>(new PassthroughFile(*this, std::move(file).value()));
}

Result<std::unique_ptr<fuse::OpenFile>> DatastoreFs::OpenCached(const std::string& path,
                                                                int flags) {
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) {
    GC_RETURN_IF_ERROR(RequireMutable(path));
  }
  // Structurally read-only: whatever the caller asked, the datastore file is
  // opened O_RDONLY.
  auto file = backing_.Open(path, O_RDONLY);
  if (!file.ok()) return file.status();
  auto st = (*file)->Stat();
  if (!st.ok()) return st.status();
  if (!S_ISREG(st->st_mode)) {
    return Status::Error(Code::kInvalidArgument, path + " is not a regular file");
  }
  index::GenerationKey key = GenerationKeyOf(name_, path, *st);
  auto binding = cache_.BindGeneration(key);
  if (!binding.ok()) return binding.status();

  bool keep_cache = true;
  {
    std::lock_guard lock(mu_);
    PathState& ps = paths_[path];
    if (ps.current != 0 && ps.current != binding->id) {
      keep_cache = false;  // the kernel may hold pages of the previous generation
      for (const auto& [gen, handles] : ps.open_handles) {
        if (gen != binding->id && handles > 0) {
          counters_->changed_while_open.Add();
          spdlog::error(
              "{}: template changed on the datastore while {} handle(s) of generation {} are "
              "open; new opens get generation {}, open ones keep theirs",
              path, handles, gen, binding->id);
        }
      }
    }
    if (binding->changed || (ps.current != 0 && ps.current != binding->id)) {
      counters_->generation_changes.Add();
      spdlog::info("{}: new template generation {} (size {})", path, binding->id, key.size);
    }
    ps.current = binding->id;
    ++ps.open_handles[binding->id];
  }
  return std::unique_ptr<fuse::OpenFile>(new CachedFile(*this, path, std::move(key), binding->id,
                                                        std::move(file).value(), keep_cache));
}

void DatastoreFs::OnCachedFileClosed(const std::string& path, index::GenerationId gen) {
  std::lock_guard lock(mu_);
  auto it = paths_.find(path);
  if (it == paths_.end()) return;
  if (--it->second.open_handles[gen] <= 0) it->second.open_handles.erase(gen);
}

Result<std::unique_ptr<fuse::OpenFile>> DatastoreFs::Create(const std::string& path, int flags,
                                                            mode_t mode) {
  GC_RETURN_IF_ERROR(RequireMutable(path));
  auto file = backing_.Create(path, flags, mode);
  if (!file.ok()) return file.status();
  return std::unique_ptr<fuse::OpenFile>(new PassthroughFile(*this, std::move(file).value()));
}

Result<struct stat> DatastoreFs::Mkdir(const std::string& path, mode_t mode) {
  GC_RETURN_IF_ERROR(RequireMutable(path));
  GC_RETURN_IF_ERROR(backing_.Mkdir(path, mode));
  return backing_.Stat(path);
}

Status DatastoreFs::Unlink(const std::string& path) {
  GC_RETURN_IF_ERROR(RequireMutable(path));
  return backing_.Unlink(path);
}

Status DatastoreFs::Rmdir(const std::string& path) {
  GC_RETURN_IF_ERROR(RequireMutable(path));
  return backing_.Rmdir(path);
}

Status DatastoreFs::Rename(const std::string& from, const std::string& to, unsigned flags) {
  GC_RETURN_IF_ERROR(RequireMutable(from));
  GC_RETURN_IF_ERROR(RequireMutable(to));
  return backing_.Rename(from, to, flags);
}

Result<struct stat> DatastoreFs::Symlink(const std::string& target, const std::string& path) {
  GC_RETURN_IF_ERROR(RequireMutable(path));
  GC_RETURN_IF_ERROR(backing_.Symlink(target, path));
  return backing_.Stat(path);
}

Result<struct stat> DatastoreFs::Link(const std::string& existing, const std::string& path) {
  GC_RETURN_IF_ERROR(RequireMutable(existing));
  GC_RETURN_IF_ERROR(RequireMutable(path));
  GC_RETURN_IF_ERROR(backing_.Link(existing, path));
  return backing_.Stat(path);
}

Result<struct stat> DatastoreFs::SetAttr(const std::string& path, const fuse::SetAttrRequest& req,
                                         fuse::OpenFile* file) {
  GC_RETURN_IF_ERROR(RequireMutable(path));
  if (req.mode) GC_RETURN_IF_ERROR(backing_.Chmod(path, *req.mode));
  if (req.uid || req.gid) {
    GC_RETURN_IF_ERROR(backing_.Chown(path, req.uid.value_or(static_cast<uid_t>(-1)),
                                      req.gid.value_or(static_cast<gid_t>(-1))));
  }
  if (req.size) {
    GC_RETURN_IF_ERROR(file ? file->Truncate(*req.size) : backing_.Truncate(path, *req.size));
  }
  if (req.atime || req.mtime) {
    struct timespec times[2];
    times[0] = req.atime.value_or(timespec{0, UTIME_OMIT});
    times[1] = req.mtime.value_or(timespec{0, UTIME_OMIT});
    GC_RETURN_IF_ERROR(backing_.Utimens(path, times));
  }
  return file ? file->Stat() : backing_.Stat(path);
}

Result<struct statvfs> DatastoreFs::StatFs() { return backing_.StatFs(); }

}  // namespace goldcache::agent
