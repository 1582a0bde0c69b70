#include "roles/datastore_fs.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>

namespace goldcache::roles {

// Everything else: the datastore file itself.
class DatastoreFs::PassthroughFile : public fuse::OpenFile {
 public:
  PassthroughFile(RoleMetrics& metrics, std::unique_ptr<backing::BackingFile> file)
      : metrics_(metrics), file_(std::move(file)) {}
  Result<size_t> Read(uint64_t offset, std::span<char> buf) override {
    const auto start = std::chrono::steady_clock::now();
    auto n = file_->ReadAt(offset, buf);
    if (n.ok()) metrics_.CountRead(0, *n, 0, std::chrono::steady_clock::now() - start);
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
  fuse::PageCache PageCachePolicy() const override { return fuse::PageCache::kDrop; }
  // Persistent data: close(2) reports what the datastore reports.
  Status Flush(bool by_opener) override { return file_->Flush(); }
  void Release() override {}

 private:
  RoleMetrics& metrics_;
  const std::unique_ptr<backing::BackingFile> file_;
};

DatastoreFs::DatastoreFs(std::string name, backing::Backing& backing, RuleSet rules,
                         cache::ChunkCache& cache, overlay::OverlayStore& overlays,
                         const Options& options, metrics::Registry& registry)
    : backing_(backing),
      rules_(std::move(rules)),
      metrics_(registry),
      templates_(std::move(name), backing, rules_, cache, options.templates, metrics_),
      desktops_(templates_, backing, overlays, options.reset, metrics_) {}

DatastoreFs::~DatastoreFs() = default;

void DatastoreFs::AttachKernelCache(fuse::KernelCache* kernel) {
  desktops_.AttachKernelCache(kernel);
}

Status DatastoreFs::ReadOnly(const std::string& path, const char* why) const {
  metrics_.readonly_refusals.Add();
  return Status::Error(Code::kReadOnly, path + " is read-only through goldcache (" + why + ")");
}

Status DatastoreFs::RequireMutable(const std::string& path) const {
  switch (rules_.RoleOf(path)) {
    case Role::kPassthrough:
      return Status::Ok();
    case Role::kTemplate:
      return ReadOnly(path, "a template");
    case Role::kNonpersistent:
      break;
  }
  return ReadOnly(path, "a nonpersistent area: this would change the datastore");
}

Result<struct stat> DatastoreFs::GetAttr(const std::string& path) {
  if (rules_.RoleOf(path) == Role::kNonpersistent) {
    if (auto attr = desktops_.Attr(path)) return *attr;
  }
  return templates_.StatWithFallback(path);
}

bool DatastoreFs::Versioned(const std::string& path) {
  return rules_.RoleOf(path) == Role::kTemplate;
}

Result<std::vector<fuse::DirEntry>> DatastoreFs::ReadDir(const std::string& path) {
  auto entries = backing_.ReadDir(path);
  if (!entries.ok()) return entries.status();
  std::vector<fuse::DirEntry> out;
  out.reserve(entries->size());
  for (auto& e : *entries) out.push_back(fuse::DirEntry{std::move(e.name), e.st});
  desktops_.MergeListing(path, out);
  return out;
}

Result<std::string> DatastoreFs::ReadLink(const std::string& path) {
  return backing_.ReadLink(path);
}

Result<std::unique_ptr<fuse::OpenFile>> DatastoreFs::Open(const std::string& path, int flags) {
  switch (rules_.RoleOf(path)) {
    case Role::kTemplate:
      return templates_.Open(path, flags);
    case Role::kNonpersistent:
      return desktops_.Open(path, flags, std::nullopt);
    case Role::kPassthrough:
      break;
  }
  auto file = backing_.Open(path, flags);
  if (!file.ok()) return file.status();
  return std::unique_ptr<fuse::OpenFile>(new PassthroughFile(metrics_, std::move(file).value()));
}

Result<std::unique_ptr<fuse::OpenFile>> DatastoreFs::Create(const std::string& path, int flags,
                                                            mode_t mode) {
  if (rules_.RoleOf(path) == Role::kNonpersistent) return desktops_.Open(path, flags, mode);
  GC_RETURN_IF_ERROR(RequireMutable(path));
  auto file = backing_.Create(path, flags, mode);
  if (!file.ok()) return file.status();
  return std::unique_ptr<fuse::OpenFile>(new PassthroughFile(metrics_, std::move(file).value()));
}

Result<struct stat> DatastoreFs::Mkdir(const std::string& path, mode_t mode) {
  GC_RETURN_IF_ERROR(RequireMutable(path));
  GC_RETURN_IF_ERROR(backing_.Mkdir(path, mode));
  return backing_.Stat(path);
}

Status DatastoreFs::Unlink(const std::string& path) {
  if (rules_.RoleOf(path) == Role::kNonpersistent && desktops_.UnlinkHostOnly(path)) {
    return Status::Ok();
  }
  GC_RETURN_IF_ERROR(RequireMutable(path));
  return backing_.Unlink(path);
}

Status DatastoreFs::Rmdir(const std::string& path) {
  GC_RETURN_IF_ERROR(RequireMutable(path));
  return backing_.Rmdir(path);
}

Status DatastoreFs::Rename(const std::string& from, const std::string& to, unsigned flags) {
  if (rules_.RoleOf(from) == Role::kNonpersistent && rules_.RoleOf(to) == Role::kNonpersistent) {
    // Asked before any lock is taken: the datastore may be slow or down.
    const bool to_on_datastore = backing_.Stat(to).ok();
    return desktops_.RenameHostOnly(from, to, flags, to_on_datastore);
  }
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
  if (rules_.RoleOf(path) == Role::kNonpersistent) return desktops_.SetAttr(path, req, file);
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

namespace {

Status NotCached(const std::string& path) {
  return Status::Error(Code::kInvalidArgument,
                       path +
                           " is passed through, not cached: no template or desktop rule "
                           "matches it");
}

}  // namespace

Result<Templates::WarmReport> DatastoreFs::Warm(
    const std::string& path, uint64_t rate, bool boot_set,
    const std::function<bool(uint64_t, uint64_t)>& progress) {
  if (rules_.RoleOf(path) == Role::kPassthrough) return NotCached(path);
  return templates_.Warm(path, rate, boot_set, progress);
}

Result<Templates::PublishReport> DatastoreFs::Publish(
    const std::string& path, const std::function<bool(uint64_t, uint64_t)>& progress) {
  if (rules_.RoleOf(path) == Role::kPassthrough) return NotCached(path);
  return templates_.Publish(path, progress);
}

}  // namespace goldcache::roles
