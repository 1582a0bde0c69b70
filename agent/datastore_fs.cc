#include "agent/datastore_fs.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
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

uint64_t NanosSince(std::chrono::steady_clock::time_point start) {
  auto elapsed = std::chrono::steady_clock::now() - start;
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count());
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
        read_overlay(r.GetCounter("goldcache_read_bytes_total",
                                  "Bytes returned to readers, by where they came from.",
                                  {{"source", "overlay"}})),
        desktop_resets(r.GetCounter("goldcache_desktop_resets_total",
                                    "Overlays discarded, by reason.", {{"reason", "last_close"}})),
        desktop_manual_resets(r.GetCounter("goldcache_desktop_resets_total",
                                           "Overlays discarded, by reason.",
                                           {{"reason", "command"}})),
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
                                       "Changes refused (EROFS) because of a file's role.")),
        release_waits(r.GetCounter(
            "goldcache_desktop_release_waits_total",
            "Opens of a desktop whose every descriptor was closed, which waited for the "
            "kernel's release of that session so as to start a pristine one.")),
        outage_attrs(r.GetCounter(
            "goldcache_datastore_outage_fallbacks_total",
            "Requests answered from what goldcache knew while the datastore timed out.",
            {{"what", "attributes"}})),
        outage_opens(r.GetCounter(
            "goldcache_datastore_outage_fallbacks_total",
            "Requests answered from what goldcache knew while the datastore timed out.",
            {{"what", "open"}})) {}
  metrics::Counter& read_cache;
  metrics::Counter& read_datastore;
  metrics::Counter& read_overlay;
  metrics::Counter& desktop_resets;
  metrics::Counter& desktop_manual_resets;
  metrics::Histogram& latency_cache;
  metrics::Histogram& latency_datastore;
  metrics::Counter& generation_changes;
  metrics::Counter& changed_while_open;
  metrics::Counter& stale_reads;
  metrics::Counter& read_errors;
  metrics::Counter& readonly_refusals;
  metrics::Counter& release_waits;
  metrics::Counter& outage_attrs;
  metrics::Counter& outage_opens;
};

// The datastore file of one generation, as the chunk cache's source of
// misses: bytes of exactly that generation, or kStale.
class DatastoreFs::GenerationSource : public cache::ChunkSource {
 public:
  GenerationSource(DatastoreFs& fs, std::string path, index::GenerationKey key,
                   index::GenerationId gen, const struct stat& attr,
                   std::unique_ptr<backing::BackingFile> file)
      : fs_(fs),
        path_(std::move(path)),
        key_(std::move(key)),
        gen_(gen),
        attr_(attr),
        file_(std::move(file)) {}

  Result<size_t> ReadAt(uint64_t offset, std::span<char> buf) override {
    backing::BackingFile* file;
    {
      // Opened at the first miss when the open itself found the datastore down.
      std::lock_guard lock(file_mu_);
      if (!file_) {
        auto opened = fs_.backing_.Open(path_, O_RDONLY);
        if (!opened.ok()) return opened.status();
        file_ = std::move(opened).value();
      }
      file = file_.get();
    }
    auto n = file->ReadAt(offset, buf);
    if (!n.ok()) return n;
    // Checked after the read: if the file changed before or during it, the
    // attributes say so now, and the bytes are not used.
    auto st = file->Stat();
    if (!st.ok()) return st.status();
    if (!(GenerationKeyOf(fs_.name_, path_, *st) == key_)) {
      if (!reported_change_.exchange(true)) {
        fs_.counters_->changed_while_open.Add();
        spdlog::error(
            "{}: the file changed on the datastore while open (generation {}); this handle "
            "keeps its generation, uncached reads on it fail with EIO until it is reopened",
            path_, gen_);
      }
      return Status::Error(Code::kStale, path_ + " changed on the datastore while open");
    }
    return n;
  }

  bool Cacheable() override {
    if (settled_.load(std::memory_order_relaxed)) return true;
    if (fs_.Settled(key_)) {
      settled_.store(true, std::memory_order_relaxed);
      return true;
    }
    std::lock_guard lock(fs_.mu_);
    auto& reported = fs_.paths_[path_].unsettled_reported;
    if (reported != gen_) {
      reported = gen_;
      spdlog::info(
          "{}: changed on the datastore less than {} ms ago (generation {}); it may still be "
          "being written, so its reads are not cached until it is that old",
          path_, fs_.settle_.count(), gen_);
    }
    return false;
  }

  // Reads through the chunk cache, counting where the bytes came from.
  Result<cache::ReadOutcome> Read(uint64_t offset, std::span<char> buf) {
    auto r = fs_.read_cache_ ? fs_.cache_.Read(gen_, key_.size, offset, buf, *this)
                             : ReadUncached(offset, buf);
    if (!r.ok()) {
      Counters& c = *fs_.counters_;
      (r.status().code() == Code::kStale ? c.stale_reads : c.read_errors).Add();
      spdlog::error("{}: read of {} bytes at {} failed: {}", path_, buf.size(), offset,
                    r.status().ToString());
    }
    return r;
  }

  // The read cache is off: straight from the datastore, within the generation.
  Result<cache::ReadOutcome> ReadUncached(uint64_t offset, std::span<char> buf) {
    if (offset >= key_.size) return cache::ReadOutcome{};
    auto n = ReadAt(offset, buf.first(std::min<uint64_t>(buf.size(), key_.size - offset)));
    if (!n.ok()) return n.status();
    return cache::ReadOutcome{*n, *n};
  }

  // What the datastore said at open: a handle's view is its generation, and
  // answering from it keeps fstat working while the datastore is down.
  Result<struct stat> Stat() const { return attr_; }
  uint64_t size() const { return key_.size; }
  index::GenerationId generation() const { return gen_; }
  const index::GenerationKey& key() const { return key_; }

 private:
  DatastoreFs& fs_;
  const std::string path_;
  const index::GenerationKey key_;
  const index::GenerationId gen_;
  const struct stat attr_;
  std::mutex file_mu_;
  std::unique_ptr<backing::BackingFile> file_;  // GUARDED_BY(file_mu_); null until needed
  std::atomic<bool> reported_change_{false};
  std::atomic<bool> settled_{false};  // once settled, always settled
};

// A template: datastore content of one generation, read through the chunk
// cache, read-only.
class DatastoreFs::CachedFile : public fuse::OpenFile {
 public:
  CachedFile(DatastoreFs& fs, std::string path, std::unique_ptr<GenerationSource> source,
             fuse::PageCache page_cache, std::shared_ptr<IoCounters> io)
      : fs_(fs),
        path_(std::move(path)),
        source_(std::move(source)),
        page_cache_(page_cache),
        io_(std::move(io)) {}

  Result<size_t> Read(uint64_t offset, std::span<char> buf) override {
    auto start = std::chrono::steady_clock::now();
    auto r = source_->Read(offset, buf);
    if (!r.ok()) return r.status();
    Counters& c = *fs_.counters_;
    c.read_datastore.Add(r->from_datastore);
    c.read_cache.Add(r->bytes - r->from_datastore);
    const uint64_t ns = NanosSince(start);
    (r->from_datastore ? c.latency_datastore : c.latency_cache).Observe(ns * 1e-9);
    io_->CountRead(r->bytes, r->from_datastore, ns);
    return r->bytes;
  }
  Result<size_t> Write(uint64_t, std::span<const char>) override { return ReadOnly(); }
  Status Fsync(bool) override { return Status::Ok(); }
  Status Fallocate(int, uint64_t, uint64_t) override { return ReadOnly(); }
  Status Truncate(uint64_t) override { return ReadOnly(); }
  Result<struct stat> Stat() override { return source_->Stat(); }
  fuse::PageCache PageCachePolicy() const override { return page_cache_; }
  void Release() override {
    fs_.OnCachedFileClosed(path_, source_->generation(), page_cache_ != fuse::PageCache::kBypass);
  }

 private:
  Status ReadOnly() { return fs_.ReadOnly(path_, "a template"); }

  DatastoreFs& fs_;
  const std::string path_;
  const std::unique_ptr<GenerationSource> source_;
  const fuse::PageCache page_cache_;
  const std::shared_ptr<IoCounters> io_;
};

// A nonpersistent file: one overlay, shared by every open handle of the path.
struct DatastoreFs::Desktop {
  std::string path;  // GUARDED_BY(DatastoreFs::mu_): renames move it
  bool local_only = false;
  std::unique_ptr<GenerationSource> base;  // null when local_only
  std::unique_ptr<overlay::Overlay> overlay;
  struct stat attr {};   // GUARDED_BY(DatastoreFs::mu_); st_size comes from the overlay
  int open_handles = 0;  // GUARDED_BY(DatastoreFs::mu_)
  // Handles whose descriptor was closed (FLUSH) with no IO since: when it
  // is all of them, their RELEASE is on its way.
  int idle_handles = 0;    // GUARDED_BY(DatastoreFs::mu_)
  bool discarded = false;  // GUARDED_BY(DatastoreFs::mu_): left desktops_, overlay gone
  IoCounters io;
};

class DatastoreFs::DesktopFile : public fuse::OpenFile {
 public:
  DesktopFile(DatastoreFs& fs, std::shared_ptr<Desktop> desktop, fuse::PageCache page_cache)
      : fs_(fs), d_(std::move(desktop)), page_cache_(page_cache) {}

  Result<size_t> Read(uint64_t offset, std::span<char> buf) override {
    MarkActive();
    auto start = std::chrono::steady_clock::now();
    // The base under the overlay: the datastore file through the chunk cache.
    struct Base : overlay::BaseReader {
      GenerationSource* source = nullptr;
      uint64_t bytes = 0, from_datastore = 0;
      Result<size_t> ReadBase(uint64_t offset, std::span<char> out) override {
        if (source == nullptr) return size_t{0};
        auto r = source->Read(offset, out);
        if (!r.ok()) return r.status();
        bytes += r->bytes;
        from_datastore += r->from_datastore;
        return r->bytes;
      }
    } base;
    base.source = d_->base.get();
    auto n = d_->overlay->Read(offset, buf, base);
    if (!n.ok()) return n;
    Counters& c = *fs_.counters_;
    c.read_overlay.Add(*n - std::min<uint64_t>(*n, base.bytes));
    c.read_cache.Add(base.bytes - base.from_datastore);
    c.read_datastore.Add(base.from_datastore);
    const uint64_t ns = NanosSince(start);
    (base.from_datastore ? c.latency_datastore : c.latency_cache).Observe(ns * 1e-9);
    d_->io.CountRead(*n, base.from_datastore, ns);
    return n;
  }
  Result<size_t> Write(uint64_t offset, std::span<const char> buf) override {
    MarkActive();
    auto start = std::chrono::steady_clock::now();
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
    std::lock_guard lock(fs_.mu_);
    return DesktopAttr(*d_);
  }
  Status Truncate(uint64_t size) override {
    MarkActive();
    return d_->overlay->Truncate(size);
  }
  // A new session drops what the kernel cached of an earlier one; handles
  // joining a session share its pages (writes are not cached in the kernel).
  fuse::PageCache PageCachePolicy() const override { return page_cache_; }
  Status Flush() override {
    std::lock_guard lock(fs_.mu_);
    if (!idle_.exchange(true)) ++d_->idle_handles;
    fs_.desktop_cv_.notify_all();
    return Status::Ok();
  }
  void Release() override { fs_.OnDesktopClosed(d_, idle_.load()); }

  const std::shared_ptr<Desktop>& desktop() const { return d_; }

 private:
  // IO on a handle whose descriptor was closed: it lives on elsewhere
  // (a dup, a fork), so its session is not closing.
  void MarkActive() {
    if (!idle_.load(std::memory_order_acquire)) return;
    std::lock_guard lock(fs_.mu_);
    if (idle_.exchange(false)) {
      --d_->idle_handles;
      fs_.desktop_cv_.notify_all();
    }
  }

  DatastoreFs& fs_;
  const std::shared_ptr<Desktop> d_;
  const fuse::PageCache page_cache_;
  std::atomic<bool> idle_{false};  // changes under fs_.mu_; read without it
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
  fuse::PageCache PageCachePolicy() const override { return fuse::PageCache::kDrop; }
  // Persistent data: close(2) reports what the datastore reports.
  Status Flush() override { return file_->Flush(); }
  void Release() override {}

 private:
  DatastoreFs& fs_;
  const std::unique_ptr<backing::BackingFile> file_;
};

DatastoreFs::DatastoreFs(std::string name, backing::Backing& backing, RuleSet rules,
                         cache::ChunkCache& cache, overlay::OverlayStore& overlays,
                         const Options& options, metrics::Registry& registry)
    : name_(std::move(name)),
      backing_(backing),
      rules_(std::move(rules)),
      cache_(cache),
      overlays_(overlays),
      reset_policy_(options.reset),
      read_cache_(options.read_cache),
      settle_(options.settle),
      counters_(std::make_unique<Counters>(registry)) {}

DatastoreFs::~DatastoreFs() = default;

void DatastoreFs::AttachKernelCache(fuse::KernelCache* kernel) {
  std::unique_lock lock(kernel_mu_);
  kernel_ = kernel;
}

void DatastoreFs::InvalidateKernel(const std::string& path) {
  std::shared_lock lock(kernel_mu_);
  if (kernel_ != nullptr) kernel_->InvalidateFile(path);
}

bool DatastoreFs::Settled(const index::GenerationKey& key) const {
  if (settle_.count() == 0) return true;
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  const int64_t now_ns = int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
  const int64_t changed_ns = std::max(key.mtime_ns, key.ctime_ns);
  return now_ns - changed_ns >= std::chrono::nanoseconds(settle_).count();
}

Status DatastoreFs::ReadOnly(const std::string& path, const char* why) const {
  counters_->readonly_refusals.Add();
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

std::shared_ptr<DatastoreFs::Desktop> DatastoreFs::FindDesktop(const std::string& path) const {
  std::lock_guard lock(mu_);
  auto it = desktops_.find(path);
  return it == desktops_.end() ? nullptr : it->second;
}

struct stat DatastoreFs::DesktopAttr(const Desktop& d) {
  struct stat st = d.attr;
  st.st_size = static_cast<off_t>(d.overlay->size());
  st.st_blocks = static_cast<blkcnt_t>((d.overlay->size() + 511) / 512);
  return st;
}

Result<struct stat> DatastoreFs::GetAttr(const std::string& path) {
  if (rules_.RoleOf(path) == Role::kNonpersistent) {
    std::lock_guard lock(mu_);
    if (auto it = desktops_.find(path); it != desktops_.end()) return DesktopAttr(*it->second);
  }
  return StatWithFallback(path);
}

Result<struct stat> DatastoreFs::StatWithFallback(const std::string& path) {
  auto st = backing_.Stat(path);
  if (st.ok()) {
    if (S_ISDIR(st->st_mode) || rules_.RoleOf(path) == Role::kTemplate) {
      std::lock_guard lock(mu_);
      if (last_attr_.size() < 1'000'000) last_attr_[path] = *st;
    }
    return st;
  }
  if (st.status().code() != Code::kTimedOut) return st;
  if (auto known = LastKnownAttr(path)) {
    counters_->outage_attrs.Add();
    return *known;
  }
  return st;
}

std::optional<struct stat> DatastoreFs::LastKnownAttr(const std::string& path) const {
  {
    std::lock_guard lock(mu_);
    if (auto it = last_attr_.find(path); it != last_attr_.end()) return it->second;
  }
  if (rules_.RoleOf(path) != Role::kTemplate) return std::nullopt;
  // After a restart: the index still knows the template's last generation.
  auto gens = cache_.GenerationsOf(name_ + ":" + path);
  if (gens.empty()) return std::nullopt;
  auto key = cache_.GenerationKeyOf(gens.back());
  if (!key) return std::nullopt;
  struct stat st {};
  st.st_mode = S_IFREG | 0444;
  st.st_nlink = 1;
  st.st_size = static_cast<off_t>(key->size);
  st.st_ino = key->ino;
  st.st_blksize = 4096;
  st.st_mtim = {key->mtime_ns / 1'000'000'000, key->mtime_ns % 1'000'000'000};
  st.st_ctim = {key->ctime_ns / 1'000'000'000, key->ctime_ns % 1'000'000'000};
  st.st_atim = st.st_mtim;
  return st;
}

Result<std::vector<fuse::DirEntry>> DatastoreFs::ReadDir(const std::string& path) {
  auto entries = backing_.ReadDir(path);
  if (!entries.ok()) return entries.status();
  std::vector<fuse::DirEntry> out;
  out.reserve(entries->size());
  std::lock_guard lock(mu_);
  for (auto& e : *entries) {
    std::string child = path.empty() ? e.name : path + "/" + e.name;
    auto it = desktops_.find(child);
    out.push_back(
        fuse::DirEntry{std::move(e.name), it == desktops_.end() ? e.st : DesktopAttr(*it->second)});
  }
  // Files created on this host live in the listing of their directory.
  for (const auto& [p, d] : desktops_) {
    if (!d->local_only) continue;
    auto slash = p.rfind('/');
    std::string parent = slash == std::string::npos ? "" : p.substr(0, slash);
    if (parent == path) out.push_back(fuse::DirEntry{p.substr(slash + 1), DesktopAttr(*d)});
  }
  return out;
}

Result<std::string> DatastoreFs::ReadLink(const std::string& path) {
  return backing_.ReadLink(path);
}

Result<std::unique_ptr<fuse::OpenFile>> DatastoreFs::Open(const std::string& path, int flags) {
  switch (rules_.RoleOf(path)) {
    case Role::kTemplate:
      return OpenCached(path, flags);
    case Role::kNonpersistent:
      return OpenDesktop(path, flags, std::nullopt);
    case Role::kPassthrough:
      break;
  }
  auto file = backing_.Open(path, flags);
  if (!file.ok()) return file.status();
  return std::unique_ptr<fuse::OpenFile>(new PassthroughFile(*this, std::move(file).value()));
}

Result<std::unique_ptr<DatastoreFs::GenerationSource>> DatastoreFs::OpenGeneration(
    const std::string& path) {
  // Structurally read-only: the datastore file is opened O_RDONLY, always.
  auto file = backing_.Open(path, O_RDONLY);
  Result<struct stat> st = Status::Error(Code::kTimedOut, "");
  if (file.ok()) {
    st = (*file)->Stat();
  } else if (file.status().code() != Code::kTimedOut) {
    return file.status();
  }
  std::unique_ptr<backing::BackingFile> opened;
  if (st.ok()) {
    opened = std::move(file).value();
  } else if (st.status().code() != Code::kTimedOut) {
    return st.status();
  } else if (auto known =
                 rules_.RoleOf(path) == Role::kTemplate ? LastKnownAttr(path) : std::nullopt) {
    // The datastore is down: open the last known generation; cached chunks
    // serve, misses reach for the datastore again (and time out meanwhile).
    counters_->outage_opens.Add();
    spdlog::warn("{}: datastore not answering; opening the last known generation", path);
    st = *known;
  } else {
    return st.status();
  }
  if (!S_ISREG(st->st_mode)) {
    return Status::Error(Code::kInvalidArgument, path + " is not a regular file");
  }
  index::GenerationKey key = GenerationKeyOf(name_, path, *st);
  auto binding = cache_.BindGeneration(key);
  if (!binding.ok()) return binding.status();
  if (binding->changed) {
    counters_->generation_changes.Add();
    spdlog::info("{}: changed on the datastore: new generation {} (size {})", path, binding->id,
                 key.size);
  }
  {
    std::lock_guard lock(mu_);
    last_attr_[path] = *st;
  }
  return std::make_unique<GenerationSource>(*this, path, std::move(key), binding->id, *st,
                                            std::move(opened));
}

Result<std::unique_ptr<fuse::OpenFile>> DatastoreFs::OpenCached(const std::string& path,
                                                                int flags) {
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) return ReadOnly(path, "a template");
  auto source = OpenGeneration(path);
  if (!source.ok()) return source.status();
  const index::GenerationId gen = (*source)->generation();
  const bool settled = !read_cache_ || Settled((*source)->key());
  fuse::PageCache page_cache;
  std::shared_ptr<IoCounters> io;
  {
    std::lock_guard lock(mu_);
    PathState& ps = paths_[path];
    if (ps.current != 0 && ps.current != gen) {
      for (const auto& [old, handles] : ps.open_handles) {
        if (old == gen || handles <= 0) continue;
        counters_->changed_while_open.Add();
        spdlog::error(
            "{}: template changed on the datastore while {} handle(s) of generation {} are "
            "open; new opens get generation {}, open ones keep theirs",
            path, handles, old, gen);
      }
    }
    bool other_generation_cached = false;
    for (const auto& [other, handles] : ps.page_cache_handles) {
      if (other != gen && handles > 0) other_generation_cached = true;
    }
    if (!settled || other_generation_cached) {
      // The page cache is the file's, not the generation's: while it may
      // hold another generation's pages (or this one is still being
      // written), this handle reads around it.
      page_cache = fuse::PageCache::kBypass;
    } else if (ps.page_cache_gen == gen) {
      page_cache = fuse::PageCache::kKeep;
    } else {
      page_cache = fuse::PageCache::kDrop;
      ps.page_cache_gen = gen;
    }
    if (page_cache != fuse::PageCache::kBypass) ++ps.page_cache_handles[gen];
    ps.current = gen;
    ps.size = (*source)->size();
    ++ps.open_handles[gen];
    io = ps.io;
  }
  return std::unique_ptr<fuse::OpenFile>(
      new CachedFile(*this, path, std::move(source).value(), page_cache, std::move(io)));
}

void DatastoreFs::OnCachedFileClosed(const std::string& path, index::GenerationId gen,
                                     bool used_page_cache) {
  std::lock_guard lock(mu_);
  auto it = paths_.find(path);
  if (it == paths_.end()) return;
  if (--it->second.open_handles[gen] <= 0) it->second.open_handles.erase(gen);
  if (used_page_cache && --it->second.page_cache_handles[gen] <= 0) {
    it->second.page_cache_handles.erase(gen);
  }
}

Result<std::shared_ptr<DatastoreFs::Desktop>> DatastoreFs::NewDesktop(
    const std::string& path, bool exclusive, std::optional<mode_t> create_mode) {
  std::unique_ptr<GenerationSource> base;
  struct stat attr {};
  auto st = backing_.Stat(path);
  if (st.ok()) {
    if (exclusive) return Status::Error(Code::kExists, path + " exists");
    auto source = OpenGeneration(path);
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
    attr.st_uid = getuid();
    attr.st_gid = getgid();
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

Result<std::unique_ptr<fuse::OpenFile>> DatastoreFs::OpenDesktop(
    const std::string& path, int flags, std::optional<mode_t> create_mode) {
  const bool exclusive = create_mode && (flags & O_EXCL);
  std::shared_ptr<Desktop> d;
  bool fresh = false;
  std::shared_ptr<Desktop> made;  // our new session, if no live one is found
  for (;;) {
    {
      std::unique_lock lock(mu_);
      auto it = desktops_.find(path);
      if (it != desktops_.end() && reset_policy_ == ResetPolicy::kOnLastClose &&
          !it->second->local_only && it->second->open_handles > 0 &&
          it->second->idle_handles == it->second->open_handles) {
        // Every descriptor of the session was closed: this is the next boot
        // arriving before the kernel's RELEASE of the last one.
        std::shared_ptr<Desktop> closing = it->second;
        counters_->release_waits.Add();
        desktop_cv_.wait_for(lock, kReleaseWait, [&] {
          return closing->discarded || closing->idle_handles < closing->open_handles;
        });
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

void DatastoreFs::OnDesktopClosed(const std::shared_ptr<Desktop>& d, bool was_idle) {
  std::shared_ptr<Desktop> discarded;
  {
    std::lock_guard lock(mu_);
    if (was_idle) --d->idle_handles;
    desktop_cv_.notify_all();
    if (--d->open_handles > 0 || d->local_only || reset_policy_ != ResetPolicy::kOnLastClose) {
      return;
    }
    auto it = desktops_.find(d->path);
    if (it == desktops_.end() || it->second != d) return;
    discarded = std::move(it->second);
    desktops_.erase(it);
  }
  counters_->desktop_resets.Add();
  spdlog::info("{}: last handle closed: overlay discarded ({} bytes in RAM, {} on disk)",
               discarded->path, discarded->overlay->ram_bytes(), discarded->overlay->disk_bytes());
  DiscardSession(discarded);
}

void DatastoreFs::DiscardSession(const std::shared_ptr<Desktop>& d) {
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
  desktop_cv_.notify_all();
}

Status DatastoreFs::Reset(const std::string& path, bool force) {
  std::shared_ptr<Desktop> discarded;
  {
    std::lock_guard lock(mu_);
    auto it = desktops_.find(path);
    if (it == desktops_.end()) {
      return Status::Error(Code::kNotFound, path + " has no overlay on this host");
    }
    const std::shared_ptr<Desktop>& d = it->second;
    if (d->open_handles > 0 && !force) {
      return Status::Error(Code::kOsError,
                           path + " is open (" + std::to_string(d->open_handles) +
                               " handle(s)): shut the desktop down first, or use --force",
                           EBUSY);
    }
    if (d->open_handles > 0 && !d->local_only) {
      d->overlay->Reset();  // open handles now read the pristine datastore file
    } else {
      discarded = std::move(it->second);
      desktops_.erase(it);
    }
  }
  if (discarded) {
    DiscardSession(discarded);
  } else {
    InvalidateKernel(path);
  }
  counters_->desktop_manual_resets.Add();
  spdlog::info("{}: reset by command{}", path, force ? " (forced)" : "");
  return Status::Ok();
}

std::vector<DatastoreFs::DesktopInfo> DatastoreFs::Desktops() const {
  std::lock_guard lock(mu_);
  std::vector<DesktopInfo> out;
  for (const auto& [path, d] : desktops_) {
    out.push_back(DesktopInfo{path, d->local_only, d->overlay->size(), d->overlay->ram_bytes(),
                              d->overlay->disk_bytes(), d->open_handles, d->io.Snapshot()});
  }
  std::sort(out.begin(), out.end(),
            [](const DesktopInfo& a, const DesktopInfo& b) { return a.path < b.path; });
  return out;
}

std::vector<DatastoreFs::TemplateInfo> DatastoreFs::Templates() const {
  std::vector<TemplateInfo> out;
  {
    std::lock_guard lock(mu_);
    for (const auto& [path, ps] : paths_) {
      int handles = 0;
      for (const auto& [gen, n] : ps.open_handles) handles += n;
      out.push_back(TemplateInfo{path, ps.current, ps.size, 0, handles, ps.io->Snapshot()});
    }
  }
  for (TemplateInfo& t : out) t.cached_bytes = cache_.cached_bytes_of(t.generation);
  std::sort(out.begin(), out.end(),
            [](const TemplateInfo& a, const TemplateInfo& b) { return a.path < b.path; });
  return out;
}

Result<std::unique_ptr<fuse::OpenFile>> DatastoreFs::Create(const std::string& path, int flags,
                                                            mode_t mode) {
  if (rules_.RoleOf(path) == Role::kNonpersistent) return OpenDesktop(path, flags, mode);
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
  if (rules_.RoleOf(path) == Role::kNonpersistent) {
    std::lock_guard lock(mu_);
    auto it = desktops_.find(path);
    if (it != desktops_.end() && it->second->local_only) {
      // Open handles keep the file until they close, as unlink(2) promises.
      desktops_.erase(it);
      return Status::Ok();
    }
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
    // Asked before taking mu_: the datastore may be slow or down.
    const bool to_on_datastore = backing_.Stat(to).ok();
    std::shared_ptr<Desktop> replaced;  // destroyed outside the lock
    std::lock_guard lock(mu_);
    auto src = desktops_.find(from);
    if (src == desktops_.end() || !src->second->local_only) {
      return ReadOnly(from, "a datastore file in a nonpersistent area");
    }
    if (flags & RENAME_EXCHANGE) {
      return Status::Error(Code::kNotSupported, "RENAME_EXCHANGE of host-only files");
    }
    auto dst = desktops_.find(to);
    bool on_datastore = (dst != desktops_.end() && !dst->second->local_only) ||
                        (dst == desktops_.end() && to_on_datastore);
    if (on_datastore) return ReadOnly(to, "a datastore file in a nonpersistent area");
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
  if (rules_.RoleOf(path) == Role::kNonpersistent) {
    auto* desktop_file = dynamic_cast<DesktopFile*>(file);
    std::shared_ptr<Desktop> d = desktop_file ? desktop_file->desktop() : FindDesktop(path);
    // Changing a datastore file no one has open would be undone at once by
    // the reset on last close: refuse it rather than pretend.
    if (!d) return ReadOnly(path, "a nonpersistent datastore file that is not open");
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
    return DesktopAttr(*d);
  }
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
