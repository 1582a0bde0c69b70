#include "roles/desktops.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <spdlog/spdlog.h>
#include <sys/fsuid.h>
#include <unistd.h>

#include <algorithm>

namespace goldcache::roles {

// One session of a desktop file: its overlay, shared by every open handle.
struct Desktops::Desktop {
  std::string path;  // GUARDED_BY(Desktops::mu_): renames move it
  bool local_only = false;
  std::shared_ptr<GenerationSource> base;  // null when local_only
  std::unique_ptr<overlay::Overlay> overlay;
  struct stat attr {};   // GUARDED_BY(Desktops::mu_); st_size comes from the overlay
  int open_handles = 0;  // GUARDED_BY(Desktops::mu_)
  // Handles whose descriptor was closed (FLUSH) with no IO since: when it
  // is all of them, their RELEASE is on its way.
  int idle_handles = 0;    // GUARDED_BY(Desktops::mu_)
  bool discarded = false;  // GUARDED_BY(Desktops::mu_): left desktops_, overlay gone
  IoCounters io;
};

class Desktops::DesktopFile : public fuse::OpenFile {
 public:
  DesktopFile(Desktops& desktops, std::shared_ptr<Desktop> desktop, fuse::PageCache page_cache)
      : ds_(desktops), d_(std::move(desktop)), page_cache_(page_cache) {}

  Result<size_t> Read(uint64_t offset, std::span<char> buf) override {
    const auto start = std::chrono::steady_clock::now();
    // The base under the overlay: the datastore file through the chunk cache.
    struct Base : overlay::BaseReader {
      GenerationSource* source = nullptr;
      cache::ReadStream* stream = nullptr;
      uint64_t bytes = 0, from_datastore = 0;
      Result<size_t> ReadBase(uint64_t offset, std::span<char> out) override {
        if (source == nullptr) return size_t{0};
        auto r = source->Read(offset, out, stream);
        if (!r.ok()) return r.status();
        bytes += r->bytes;
        from_datastore += r->from_datastore;
        return r->bytes;
      }
    } base;
    base.source = d_->base.get();
    base.stream = &stream_;
    auto n = d_->overlay->Read(offset, buf, base);
    if (!n.ok()) return n;
    ds_.metrics_.CountRead(base.bytes - base.from_datastore, base.from_datastore,
                           *n - std::min<uint64_t>(*n, base.bytes),
                           std::chrono::steady_clock::now() - start);
    d_->io.CountRead(*n, base.from_datastore, NanosSince(start));
    return n;
  }
  Result<size_t> Write(uint64_t offset, std::span<const char> buf) override {
    MarkActive();
    const auto start = std::chrono::steady_clock::now();
    GC_RETURN_IF_ERROR(d_->overlay->Write(offset, buf));
    d_->io.CountWrite(buf.size(), NanosSince(start));
    return buf.size();
  }
  // Non-persistent by contract: in the overlay is as durable as it gets.
  Status Fsync(bool) override {
    MarkActive();
    return Status::Ok();
  }
  Status Fallocate(int mode, uint64_t offset, uint64_t length) override {
    MarkActive();
    const uint64_t end = offset + length;
    const bool keep_size = mode & FALLOC_FL_KEEP_SIZE;
    switch (mode & ~FALLOC_FL_KEEP_SIZE) {
      case 0:  // reserve: nothing to reserve in an overlay, but the size grows
        if (!keep_size && end > d_->overlay->size()) return d_->overlay->Truncate(end);
        return Status::Ok();
      case FALLOC_FL_PUNCH_HOLE:  // guest TRIM (QEMU discard=unmap)
        return d_->overlay->PunchHole(offset, length);
      case FALLOC_FL_ZERO_RANGE:
        if (!keep_size && end > d_->overlay->size()) {
          GC_RETURN_IF_ERROR(d_->overlay->Truncate(end));
        }
        return d_->overlay->PunchHole(offset, length);
      default:
        return Status::Error(Code::kNotSupported, "fallocate mode " + std::to_string(mode));
    }
  }
  Result<struct stat> Stat() override {
    std::lock_guard lock(ds_.mu_);
    return AttrOf(*d_);
  }
  Status Truncate(uint64_t size) override {
    MarkActive();
    return d_->overlay->Truncate(size);
  }
  // A new session drops what the kernel cached of an earlier one; handles
  // joining a session share its pages (writes are not cached in the kernel).
  fuse::PageCache PageCachePolicy() const override { return page_cache_; }
  Status Flush(bool by_opener) override {
    // A forked child closing its inherited copy (close-on-exec, exit) says
    // nothing about the opener's descriptor.
    if (!by_opener) return Status::Ok();
    bool closing;
    std::string path;
    {
      std::lock_guard lock(ds_.mu_);
      if (!idle_.exchange(true)) ++d_->idle_handles;
      ds_.cv_.notify_all();
      closing = ds_.Closing(*d_);
      path = d_->path;
    }
    // The last descriptor of the session: what the kernel cached of it (the
    // attributes of the last ftruncate or write, for the attribute timeout)
    // must not answer a stat made before the RELEASE arrives; the stat then
    // asks, and Attr() waits for the release.
    if (closing) ds_.InvalidateKernel(path);
    return Status::Ok();
  }
  void Release() override { ds_.OnClosed(d_, idle_.load()); }

  const std::shared_ptr<Desktop>& desktop() const { return d_; }

 private:
  // A change through a handle whose descriptor was closed: it lives on
  // elsewhere (a dup, a fork), so its session is not closing. Reads do not
  // count: the kernel's readahead for a descriptor can arrive after its
  // close; a handle that only reads outlives the release wait instead.
  void MarkActive() {
    if (!idle_.load(std::memory_order_acquire)) return;
    std::lock_guard lock(ds_.mu_);
    if (idle_.exchange(false)) {
      --d_->idle_handles;
      ds_.cv_.notify_all();
    }
  }

  Desktops& ds_;
  const std::shared_ptr<Desktop> d_;
  const fuse::PageCache page_cache_;
  std::atomic<bool> idle_{false};  // changes under ds_.mu_; read without it
  cache::ReadStream stream_;       // this handle's reads of the base
};

Desktops::Desktops(Templates& templates, backing::Backing& backing, overlay::OverlayStore& overlays,
                   ResetPolicy reset, RoleMetrics& metrics)
    : templates_(templates),
      backing_(backing),
      overlays_(overlays),
      reset_policy_(reset),
      metrics_(metrics) {}

Desktops::~Desktops() = default;

void Desktops::AttachKernelCache(fuse::KernelCache* kernel) {
  std::unique_lock lock(kernel_mu_);
  kernel_ = kernel;
}

void Desktops::InvalidateKernel(const std::string& path) {
  std::shared_lock lock(kernel_mu_);
  if (kernel_ != nullptr) kernel_->InvalidateFile(path);
}

Status Desktops::ReadOnly(const std::string& path) const {
  metrics_.readonly_refusals.Add();
  return Status::Error(Code::kReadOnly,
                       path +
                           " is read-only through goldcache (a datastore file in a "
                           "nonpersistent area)");
}

struct stat Desktops::AttrOf(const Desktop& d) {
  struct stat st = d.attr;
  const uint64_t size = d.overlay->size();  // lock-free: never waits for the overlay's IO
  st.st_size = static_cast<off_t>(size);
  st.st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  return st;
}

bool Desktops::Closing(const Desktop& d) const {
  return reset_policy_ == ResetPolicy::kOnLastClose && !d.local_only && d.open_handles > 0 &&
         d.idle_handles == d.open_handles;
}

std::optional<struct stat> Desktops::Attr(const std::string& path) const {
  std::unique_lock lock(mu_);
  auto it = desktops_.find(path);
  if (it == desktops_.end()) return std::nullopt;
  if (Closing(*it->second)) {
    // Every descriptor was closed and the RELEASE is on its way: a stat now
    // (qemu-img info before the next boot) must see what the next open will,
    // the datastore's file, not the session that is ending. As long as an
    // open waits; a descriptor that lives on elsewhere answers after that.
    std::shared_ptr<Desktop> closing = it->second;
    metrics_.release_waits.Add();
    cv_.wait_for(lock, kReleaseWait, [&] { return closing->discarded || !Closing(*closing); });
    it = desktops_.find(path);
    if (it == desktops_.end()) return std::nullopt;
  }
  return AttrOf(*it->second);
}

void Desktops::MergeListing(const std::string& dir, std::vector<fuse::DirEntry>& entries) const {
  std::lock_guard lock(mu_);
  for (auto& e : entries) {
    auto it = desktops_.find(dir.empty() ? e.name : dir + "/" + e.name);
    // A closing session's file is the datastore's again (Attr() above).
    if (it != desktops_.end() && !Closing(*it->second)) e.st = AttrOf(*it->second);
  }
  // Files created on this host live in the listing of their directory.
  for (const auto& [p, d] : desktops_) {
    if (!d->local_only) continue;
    auto slash = p.rfind('/');
    std::string parent = slash == std::string::npos ? "" : p.substr(0, slash);
    if (parent == dir) entries.push_back(fuse::DirEntry{p.substr(slash + 1), AttrOf(*d)});
  }
}

Result<std::shared_ptr<Desktops::Desktop>> Desktops::NewDesktop(const std::string& path,
                                                                bool exclusive,
                                                                std::optional<mode_t> create_mode) {
  std::shared_ptr<GenerationSource> base;
  struct stat attr {};
  auto st = backing_.Stat(path);
  if (st.ok()) {
    if (exclusive) return Status::Error(Code::kExists, path + " exists");
    auto source = templates_.OpenGeneration(path);
    if (!source.ok()) return source.status();
    base = std::move(source).value();
    attr = *st;
  } else if (st.status().code() != Code::kNotFound || !create_mode) {
    return st.status();
  } else {
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    const auto secs = std::chrono::duration_cast<std::chrono::seconds>(now);
    attr.st_mode = S_IFREG | (*create_mode & 07777);
    attr.st_nlink = 1;
    // The creator: the FUSE adapter creates as the caller (this thread's
    // fsuid/fsgid); setfs*id(-1) changes nothing and returns the current one.
    attr.st_uid = static_cast<uid_t>(setfsuid(static_cast<uid_t>(-1)));
    attr.st_gid = static_cast<gid_t>(setfsgid(static_cast<gid_t>(-1)));
    attr.st_blksize = 4096;
    attr.st_atim = attr.st_mtim =
        attr.st_ctim = {secs.count(), static_cast<long>((now - secs).count() % 1'000'000'000)};
  }
  auto d = std::make_shared<Desktop>();
  d->path = path;
  d->local_only = base == nullptr;
  d->overlay = overlays_.Create(path, base ? base->size() : 0);
  d->base = std::move(base);
  d->attr = attr;
  return d;
}

Result<std::unique_ptr<fuse::OpenFile>> Desktops::Open(const std::string& path, int flags,
                                                       std::optional<mode_t> create_mode) {
  const bool exclusive = create_mode && (flags & O_EXCL);
  std::shared_ptr<Desktop> d;
  bool fresh = false;
  std::shared_ptr<Desktop> made;  // our new session, if no live one is found
  for (;;) {
    {
      std::unique_lock lock(mu_);
      auto it = desktops_.find(path);
      if (it != desktops_.end() && Closing(*it->second)) {
        // Every descriptor of the session was closed: this is the next boot
        // arriving before the kernel's RELEASE of the last one.
        std::shared_ptr<Desktop> closing = it->second;
        metrics_.release_waits.Add();
        cv_.wait_for(lock, kReleaseWait, [&] { return closing->discarded || !Closing(*closing); });
        it = desktops_.find(path);
      }
      if (it != desktops_.end()) {
        if (exclusive) return Status::Error(Code::kExists, path + " exists");
        d = it->second;
        ++d->open_handles;
        break;
      }
      if (made) {
        d = std::move(made);
        if (d->local_only) {
          // Own inode numbers, apart from the datastore's (st_dev 0).
          d->attr.st_dev = 0;
          d->attr.st_ino = (uint64_t{1} << 62) | next_local_ino_++;
          spdlog::info("{}: created on this host only (nonpersistent area)", path);
        }
        desktops_.emplace(path, d);
        ++d->open_handles;
        fresh = true;
        break;
      }
    }
    // Not live: find out what is on the datastore, outside the lock, then
    // look again (another open may have made the session meanwhile).
    auto nd = NewDesktop(path, exclusive, create_mode);
    if (!nd.ok()) return nd.status();
    made = std::move(nd).value();
  }
  auto file = std::make_unique<DesktopFile>(
      *this, d, fresh ? fuse::PageCache::kDrop : fuse::PageCache::kKeep);
  if (flags & O_TRUNC) {
    Status st = d->overlay->Truncate(0);
    if (!st.ok()) {
      file->Release();
      return st;
    }
  }
  return std::unique_ptr<fuse::OpenFile>(std::move(file));
}

void Desktops::OnClosed(const std::shared_ptr<Desktop>& d, bool was_idle) {
  std::shared_ptr<Desktop> discarded;
  {
    std::lock_guard lock(mu_);
    if (was_idle) --d->idle_handles;
    cv_.notify_all();
    if (--d->open_handles > 0 || d->local_only || reset_policy_ != ResetPolicy::kOnLastClose) {
      return;
    }
    auto it = desktops_.find(d->path);
    if (it == desktops_.end() || it->second != d) return;
    discarded = std::move(it->second);
    desktops_.erase(it);
  }
  metrics_.desktop_resets.Add();
  spdlog::info("{}: last handle closed: overlay discarded ({} bytes in RAM, {} on disk)",
               discarded->path, discarded->overlay->ram_bytes(), discarded->overlay->disk_bytes());
  Discard(discarded);
}

void Desktops::Discard(const std::shared_ptr<Desktop>& d) {
  // Space comes back now, not when the last reference to the handle goes.
  d->overlay->Reset();
  std::string path;
  {
    std::lock_guard lock(mu_);
    path = d->path;
  }
  // Before any open that waits for this reset goes on: it must see the
  // datastore file's size and bytes, not what the kernel cached.
  InvalidateKernel(path);
  {
    std::lock_guard lock(mu_);
    d->discarded = true;
  }
  cv_.notify_all();
}

Status Desktops::Reset(const std::string& path, bool force) {
  std::shared_ptr<Desktop> target;
  bool keep_session;
  {
    std::lock_guard lock(mu_);
    auto it = desktops_.find(path);
    if (it == desktops_.end()) {
      return Status::Error(Code::kNotFound, path + " has no overlay on this host");
    }
    target = it->second;
    if (target->open_handles > 0 && !force) {
      return Status::Error(Code::kOsError,
                           path + " is open (" + std::to_string(target->open_handles) +
                               " handle(s)): shut the desktop down first, or use --force",
                           EBUSY);
    }
    // Open handles of a datastore file read the pristine file from now on;
    // everything else leaves the registry.
    keep_session = target->open_handles > 0 && !target->local_only;
    if (!keep_session) desktops_.erase(it);
  }
  if (keep_session) {
    target->overlay->Reset();
    InvalidateKernel(path);
  } else {
    Discard(target);
  }
  metrics_.desktop_manual_resets.Add();
  spdlog::info("{}: reset by command{}", path, force ? " (forced)" : "");
  return Status::Ok();
}

bool Desktops::UnlinkHostOnly(const std::string& path) {
  std::lock_guard lock(mu_);
  auto it = desktops_.find(path);
  if (it == desktops_.end() || !it->second->local_only) return false;
  // Open handles keep the file until they close, as unlink(2) promises.
  desktops_.erase(it);
  return true;
}

Status Desktops::RenameHostOnly(const std::string& from, const std::string& to, unsigned flags,
                                bool to_on_datastore) {
  std::shared_ptr<Desktop> replaced;  // destroyed outside the lock
  std::lock_guard lock(mu_);
  auto src = desktops_.find(from);
  if (src == desktops_.end() || !src->second->local_only) return ReadOnly(from);
  if (flags & RENAME_EXCHANGE) {
    return Status::Error(Code::kNotSupported, "RENAME_EXCHANGE of host-only files");
  }
  auto dst = desktops_.find(to);
  bool on_datastore = (dst != desktops_.end() && !dst->second->local_only) ||
                      (dst == desktops_.end() && to_on_datastore);
  if (on_datastore) return ReadOnly(to);
  if (dst != desktops_.end()) {
    if (flags & RENAME_NOREPLACE) return Status::Error(Code::kExists, to + " exists");
    replaced = std::move(dst->second);
    desktops_.erase(dst);
  }
  std::shared_ptr<Desktop> d = std::move(desktops_.at(from));
  desktops_.erase(from);
  d->path = to;
  desktops_.emplace(to, std::move(d));
  return Status::Ok();
}

Result<struct stat> Desktops::SetAttr(const std::string& path, const fuse::SetAttrRequest& req,
                                      fuse::OpenFile* file) {
  auto* desktop_file = dynamic_cast<DesktopFile*>(file);
  std::shared_ptr<Desktop> d;
  if (desktop_file != nullptr) {
    d = desktop_file->desktop();
  } else {
    std::lock_guard lock(mu_);
    if (auto it = desktops_.find(path); it != desktops_.end()) d = it->second;
  }
  // Changing a datastore file no one has open would be undone at once by
  // the reset on last close: refuse it rather than pretend.
  if (!d) return ReadOnly(path);
  if (req.size) GC_RETURN_IF_ERROR(d->overlay->Truncate(*req.size));
  std::lock_guard lock(mu_);
  // Attributes change on this host only, like the data.
  if (req.mode) d->attr.st_mode = (d->attr.st_mode & S_IFMT) | (*req.mode & 07777);
  if (req.uid) d->attr.st_uid = *req.uid;
  if (req.gid) d->attr.st_gid = *req.gid;
  auto now = [] {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts;
  };
  if (req.atime) d->attr.st_atim = req.atime->tv_nsec == UTIME_NOW ? now() : *req.atime;
  if (req.mtime) d->attr.st_mtim = req.mtime->tv_nsec == UTIME_NOW ? now() : *req.mtime;
  return AttrOf(*d);
}

std::vector<Desktops::Info> Desktops::List() const {
  std::lock_guard lock(mu_);
  std::vector<Info> out;
  for (const auto& [path, d] : desktops_) {
    out.push_back(Info{path, d->local_only, d->overlay->size(), d->overlay->ram_bytes(),
                       d->overlay->disk_bytes(), d->open_handles, d->io.Snapshot()});
  }
  std::sort(out.begin(), out.end(), [](const Info& a, const Info& b) { return a.path < b.path; });
  return out;
}

}  // namespace goldcache::roles
