#include "roles/templates.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "index/digest.h"
#include "index/manifest.h"
#include "roles/rules.h"

namespace goldcache::roles {
namespace {

static_assert(kOwnFileSuffix == std::string_view(index::kManifestSuffix),
              "the rules must know the manifests' name as publish writes it");

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

}  // namespace

// ---------------------------------------------------------------------------
// GenerationSource

GenerationSource::GenerationSource(Templates& templates, std::string path, index::GenerationKey key,
                                   index::GenerationId gen, const struct stat& attr,
                                   std::unique_ptr<backing::BackingFile> file)
    : t_(templates),
      path_(std::move(path)),
      key_(std::move(key)),
      gen_(gen),
      attr_(attr),
      file_(std::move(file)) {}

Result<size_t> GenerationSource::ReadAt(uint64_t offset, std::span<char> buf) {
  backing::BackingFile* file;
  {
    // Opened at the first miss when the open itself found the datastore down.
    std::lock_guard lock(file_mu_);
    if (!file_) {
      auto opened = t_.backing_.Open(path_, O_RDONLY);
      if (!opened.ok()) return opened.status();
      file_ = std::move(opened).value();
    }
    file = file_.get();
  }
  // The version comes with the read (NFS READ replies, a local fstat): if
  // the file changed before or during it, it says so, and the bytes are not
  // used. Where it does not come, the generation was checked at open and a
  // replaced file fails the read (kStale).
  std::optional<backing::FileVersion> after;
  auto n = file->ReadAtVersioned(offset, buf, &after);
  if (!n.ok()) return n;
  if (after &&
      !(*after == backing::FileVersion{key_.size, key_.mtime_ns, key_.ctime_ns, key_.ino})) {
    if (!reported_change_.exchange(true)) {
      t_.metrics_.changed_while_open.Add();
      spdlog::error(
          "{}: the file changed on the datastore while open (generation {}); this handle "
          "keeps its generation, uncached reads on it fail with EIO until it is reopened",
          path_, gen_);
    }
    return Status::Error(Code::kStale, path_ + " changed on the datastore while open");
  }
  return n;
}

bool GenerationSource::Cacheable() {
  if (settled_.load(std::memory_order_relaxed)) return true;
  if (t_.Settled(key_)) {
    settled_.store(true, std::memory_order_relaxed);
    return true;
  }
  t_.ReportUnsettled(path_, gen_);
  return false;
}

Result<cache::ReadOutcome> GenerationSource::Read(uint64_t offset, std::span<char> buf,
                                                  cache::ReadStream* stream) {
  Result<cache::ReadOutcome> r = cache::ReadOutcome{};
  if (t_.read_cache_) {
    r = t_.cache_.Read(gen_, key_.size, offset, buf, *this, stream, shared_from_this());
  } else if (offset < key_.size) {
    // The read cache is off: straight from the datastore, within the generation.
    auto n = ReadAt(offset, buf.first(std::min<uint64_t>(buf.size(), key_.size - offset)));
    r = n.ok() ? Result<cache::ReadOutcome>(cache::ReadOutcome{*n, *n}) : n.status();
  }
  if (!r.ok()) {
    (r.status().code() == Code::kStale ? t_.metrics_.stale_reads : t_.metrics_.read_errors).Add();
    spdlog::error("{}: read of {} bytes at {} failed: {}", path_, buf.size(), offset,
                  r.status().ToString());
  }
  return r;
}

// ---------------------------------------------------------------------------
// A template handle: datastore content of one generation, read through the
// chunk cache, read-only.

class Templates::CachedFile : public fuse::OpenFile {
 public:
  CachedFile(Templates& t, std::string path, std::shared_ptr<GenerationSource> source,
             fuse::PageCache page_cache, std::shared_ptr<IoCounters> io)
      : t_(t),
        path_(std::move(path)),
        source_(std::move(source)),
        page_cache_(page_cache),
        io_(std::move(io)) {}

  Result<size_t> Read(uint64_t offset, std::span<char> buf) override {
    const auto start = std::chrono::steady_clock::now();
    auto r = source_->Read(offset, buf, &stream_);
    if (!r.ok()) return r.status();
    t_.metrics_.CountRead(r->bytes - r->from_datastore, r->from_datastore, 0,
                          std::chrono::steady_clock::now() - start);
    io_->CountRead(r->bytes, r->from_datastore, NanosSince(start));
    return r->bytes;
  }
  Result<size_t> Write(uint64_t, std::span<const char>) override { return ReadOnly(); }
  Status Fsync(bool) override { return Status::Ok(); }
  Status Fallocate(int, uint64_t, uint64_t) override { return ReadOnly(); }
  Status Truncate(uint64_t) override { return ReadOnly(); }
  Result<struct stat> Stat() override { return source_->attr(); }
  fuse::PageCache PageCachePolicy() const override { return page_cache_; }
  void Release() override {
    t_.OnClosed(path_, source_->generation(), page_cache_ != fuse::PageCache::kBypass);
  }

 private:
  Status ReadOnly() {
    t_.metrics_.readonly_refusals.Add();
    return Status::Error(Code::kReadOnly, path_ + " is read-only through goldcache (a template)");
  }

  Templates& t_;
  const std::string path_;
  const std::shared_ptr<GenerationSource> source_;
  const fuse::PageCache page_cache_;
  const std::shared_ptr<IoCounters> io_;
  cache::ReadStream stream_;  // this handle's reads, one reader to the cache
};

// ---------------------------------------------------------------------------
// Templates

Templates::Templates(std::string datastore, backing::Backing& backing, const RuleSet& rules,
                     cache::ChunkCache& cache, const Options& options, RoleMetrics& metrics)
    : datastore_(std::move(datastore)),
      backing_(backing),
      rules_(rules),
      cache_(cache),
      read_cache_(options.read_cache),
      settle_(options.settle),
      metrics_(metrics) {}

Templates::~Templates() { cache_.DrainFetches(); }

bool Templates::Settled(const index::GenerationKey& key) const {
  if (settle_.count() == 0) return true;
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  const int64_t now_ns = int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
  const int64_t changed_ns = std::max(key.mtime_ns, key.ctime_ns);
  return now_ns - changed_ns >= std::chrono::nanoseconds(settle_).count();
}

void Templates::ReportUnsettled(const std::string& path, index::GenerationId gen) {
  {
    std::lock_guard lock(mu_);
    auto& reported = paths_[path].unsettled_reported;
    if (reported == gen) return;
    reported = gen;
  }
  spdlog::info(
      "{}: changed on the datastore less than {} ms ago (generation {}); it may still be "
      "being written, so its reads are not cached until it is that old",
      path, settle_.count(), gen);
}

Result<struct stat> Templates::StatWithFallback(const std::string& path) {
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
    metrics_.outage_attrs.Add();
    return *known;
  }
  return st;
}

std::optional<struct stat> Templates::LastKnownAttr(const std::string& path) const {
  {
    std::lock_guard lock(mu_);
    if (auto it = last_attr_.find(path); it != last_attr_.end()) return it->second;
  }
  if (rules_.RoleOf(path) != Role::kTemplate) return std::nullopt;
  // After a restart: the index still knows the template's last generation.
  auto gens = cache_.GenerationsOf(datastore_ + ":" + path);
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

Result<std::shared_ptr<GenerationSource>> Templates::OpenGeneration(const std::string& path) {
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
    metrics_.outage_opens.Add();
    spdlog::warn("{}: datastore not answering; opening the last known generation", path);
    st = *known;
  } else {
    return st.status();
  }
  if (!S_ISREG(st->st_mode)) {
    return Status::Error(Code::kInvalidArgument, path + " is not a regular file");
  }
  index::GenerationKey key = GenerationKeyOf(datastore_, path, *st);
  auto binding = cache_.BindGeneration(key);
  if (!binding.ok()) return binding.status();
  if (binding->changed) {
    metrics_.generation_changes.Add();
    spdlog::info("{}: changed on the datastore: new generation {} (size {})", path, binding->id,
                 key.size);
  }
  {
    std::lock_guard lock(mu_);
    last_attr_[path] = *st;
  }
  const bool datastore_up = opened != nullptr;
  auto source = std::make_shared<GenerationSource>(*this, path, std::move(key), binding->id, *st,
                                                   std::move(opened));
  if (read_cache_ && datastore_up) Prepare(source);
  return source;
}

void Templates::Prepare(const std::shared_ptr<GenerationSource>& source) {
  const index::GenerationId gen = source->generation();
  const std::string& path = source->path();
  bool first = false, look = false;
  {
    std::lock_guard lock(mu_);
    PathState& ps = paths_[path];
    const auto now = std::chrono::steady_clock::now();
    first = ps.prepared != gen;
    if (first) ps.prepared = gen;
    // (A distrusted one is looked for again too: it may have been published again.)
    look = (first || now - ps.manifest_looked >= kManifestRecheck) && !cache_.HasManifest(gen);
    if (look) ps.manifest_looked = now;
  }
  if (look) LoadManifest(path, source->key(), gen);
  if (!first || cache_.cached_bytes_of(gen) >= source->size()) return;
  std::vector<uint64_t> trace = TraceFor(source->key().path, gen);
  cache_.RecordTrace(gen);  // this boot's own order, unless it has one
  if (!trace.empty()) cache_.PrefetchTrace(gen, source->size(), std::move(trace), source);
}

void Templates::LoadManifest(const std::string& path, const index::GenerationKey& key,
                             index::GenerationId gen) {
  const std::string name = path + index::kManifestSuffix;
  auto file = backing_.Open(name, O_RDONLY);
  if (!file.ok()) {
    if (file.status().code() != Code::kNotFound) {
      spdlog::warn("{}: cannot open its manifest {}: {}", path, name, file.status().ToString());
    }
    return;
  }
  auto st = (*file)->Stat();
  if (!st.ok()) return;
  const auto bytes = static_cast<uint64_t>(st->st_size);
  std::string why;
  std::optional<index::Manifest> manifest;
  if (bytes > index::kMaxManifestBytes) {
    why = "larger than any manifest";
  } else {
    std::string buf(bytes, '\0');
    auto n = (*file)->ReadAt(0, std::span<char>(buf.data(), buf.size()));
    if (!n.ok()) {
      spdlog::warn("{}: reading its manifest {}: {}", path, name, n.status().ToString());
      return;
    }
    buf.resize(*n);
    manifest = index::DecodeManifest(buf, &why);
  }
  if (!manifest) {
    metrics_.manifest_damaged.Add();
    spdlog::error("{}: its manifest {} is damaged ({}); ignoring it: publish the file again", path,
                  name, why);
    return;
  }
  if (!manifest->Describes(key, cache_.chunk_size())) {
    metrics_.manifest_stale.Add();
    spdlog::warn(
        "{}: its manifest {} describes another version of the file (size {}, chunk size {}; the "
        "file is {} bytes, changed since it was published?); ignoring it: publish the file again",
        path, name, manifest->size, manifest->chunk_size, key.size);
    return;
  }
  const size_t chunks = manifest->digests.size(), traced = manifest->trace.size();
  if (!cache_.AttachManifest(gen, std::make_shared<const index::Manifest>(std::move(*manifest)))) {
    return;  // distrusted before
  }
  metrics_.manifest_loaded.Add();
  spdlog::info("{}: using its manifest for generation {} ({} chunks, boot trace of {})", path, gen,
               chunks, traced);
}

std::vector<uint64_t> Templates::TraceFor(const std::string& cache_path,
                                          index::GenerationId gen) const {
  std::vector<uint64_t> trace = cache_.TraceOf(gen);
  if (!trace.empty()) return trace;
  // A patched template reads much as before: the last generation's trace.
  auto gens = cache_.GenerationsOf(cache_path);
  for (auto it = gens.rbegin(); it != gens.rend() && trace.empty(); ++it) {
    if (*it < gen) trace = cache_.TraceOf(*it);
  }
  return trace;
}

Result<std::unique_ptr<fuse::OpenFile>> Templates::Open(const std::string& path, int flags) {
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) {
    metrics_.readonly_refusals.Add();
    return Status::Error(Code::kReadOnly, path + " is read-only through goldcache (a template)");
  }
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
        metrics_.changed_while_open.Add();
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

void Templates::OnClosed(const std::string& path, index::GenerationId gen, bool used_page_cache) {
  std::lock_guard lock(mu_);
  auto it = paths_.find(path);
  if (it == paths_.end()) return;
  if (--it->second.open_handles[gen] <= 0) it->second.open_handles.erase(gen);
  if (used_page_cache && --it->second.page_cache_handles[gen] <= 0) {
    it->second.page_cache_handles.erase(gen);
  }
}

Result<Templates::WarmReport> Templates::Warm(
    const std::string& path, uint64_t rate, bool boot_set,
    const std::function<bool(uint64_t, uint64_t)>& progress) {
  if (!read_cache_) {
    return Status::Error(Code::kInvalidArgument, "the read cache is off ([cache] read_cache)");
  }
  auto source = OpenGeneration(path);
  if (!source.ok()) return source.status();
  if (!Settled((*source)->key())) {
    return Status::Error(Code::kInvalidArgument,
                         path + " changed on the datastore less than " +
                             std::to_string(settle_.count()) +
                             " ms ago and may still be being written: warm it once it settles");
  }
  if (rules_.RoleOf(path) == Role::kTemplate) {
    std::lock_guard lock(mu_);
    PathState& ps = paths_[path];  // listed, as an open would list it
    ps.current = (*source)->generation();
    ps.size = (*source)->size();
  }
  std::vector<uint64_t> trace;
  if (boot_set) {
    trace = TraceFor((*source)->key().path, (*source)->generation());
    if (trace.empty()) {
      return Status::Error(Code::kInvalidArgument,
                           path +
                               " has no boot trace yet: one is recorded in the first minute a "
                               "cold generation is read, or comes with its manifest "
                               "(goldcache publish); warm it whole instead");
    }
  }
  auto r = cache_.Warm((*source)->generation(), (*source)->size(), **source, kWarmParallel, rate,
                       progress, boot_set ? &trace : nullptr);
  if (!r.ok()) return r.status();
  return WarmReport{(*source)->generation(), r->bytes, r->from_datastore, r->reused};
}

Result<Templates::PublishReport> Templates::Publish(
    const std::string& path, const std::function<bool(uint64_t, uint64_t)>& progress) {
  auto file = backing_.Open(path, O_RDONLY);
  if (!file.ok()) return file.status();
  auto st = (*file)->Stat();
  if (!st.ok()) return st.status();
  if (!S_ISREG(st->st_mode)) {
    return Status::Error(Code::kInvalidArgument, path + " is not a regular file");
  }
  const index::GenerationKey key = GenerationKeyOf(datastore_, path, *st);
  if (!Settled(key)) {
    return Status::Error(Code::kInvalidArgument,
                         path + " changed on the datastore less than " +
                             std::to_string(settle_.count()) +
                             " ms ago and may still be being written: publish it once it settles");
  }
  auto binding = cache_.BindGeneration(key);
  if (!binding.ok()) return binding.status();
  const backing::FileVersion version{key.size, key.mtime_ns, key.ctime_ns, key.ino};
  auto changed = [&] {
    return Status::Error(Code::kStale, path +
                                           " changed on the datastore while it was being "
                                           "published; nothing was written: publish it again "
                                           "once it is final");
  };
  index::Manifest m;
  m.chunk_size = cache_.chunk_size();
  m.size = key.size;
  m.mtime_ns = key.mtime_ns;
  m.ctime_ns = key.ctime_ns;
  m.ino = key.ino;
  // Straight from the datastore: a manifest says what the file holds, not
  // what this host's cache believes it holds.
  std::vector<char> buf(m.chunk_size);
  auto last_report = std::chrono::steady_clock::now();
  for (uint64_t off = 0; off < key.size; off += m.chunk_size) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(m.chunk_size, key.size - off));
    std::optional<backing::FileVersion> after;
    auto n = (*file)->ReadAtVersioned(off, std::span<char>(buf.data(), len), &after);
    if (!n.ok()) return n.status();
    if (*n != len || (after && !(*after == version))) return changed();
    m.digests.push_back(index::ComputeDigest(std::span<const char>(buf.data(), len)));
    const auto now = std::chrono::steady_clock::now();
    if (progress && (now - last_report > std::chrono::milliseconds(200) || off + len == key.size)) {
      last_report = now;
      if (!progress(off + len, key.size)) return Status::Error(Code::kAborted, "publish stopped");
    }
  }
  auto again = (*file)->Stat();
  if (!again.ok()) return again.status();
  if (!(backing::VersionOf(*again) == version)) return changed();
  m.trace = TraceFor(key.path, binding->id);

  const std::string name = path + index::kManifestSuffix;
  const std::string tmp = name + ".tmp";
  const std::string bytes = index::EncodeManifest(m);
  auto write = [&]() -> Status {
    auto out = backing_.Create(tmp, O_WRONLY | O_TRUNC, 0644);
    if (!out.ok()) return out.status();
    auto n = (*out)->WriteAt(0, std::span<const char>(bytes.data(), bytes.size()));
    if (!n.ok()) return n.status();
    GC_RETURN_IF_ERROR((*out)->Sync(false));
    GC_RETURN_IF_ERROR((*out)->Flush());
    return backing_.Rename(tmp, name, 0);
  };
  if (Status w = write(); !w.ok()) {
    (void)backing_.Unlink(tmp);
    return Status::Error(w.code(), "writing the manifest " + name + ": " + w.message());
  }
  metrics_.manifests_published.Add();
  PublishReport report{binding->id, key.size, m.digests.size(), m.trace.size(), name};
  if (read_cache_) {
    cache_.AttachManifest(binding->id, std::make_shared<const index::Manifest>(std::move(m)));
  }
  spdlog::info("{}: published its manifest {} for generation {} ({} chunks, boot trace of {})",
               path, name, report.generation, report.chunks, report.trace_chunks);
  return report;
}

std::vector<Templates::Info> Templates::List() const {
  std::vector<Info> out;
  {
    std::lock_guard lock(mu_);
    for (const auto& [path, ps] : paths_) {
      if (ps.current == 0) continue;  // only ever reported as unsettled (a desktop's base)
      int handles = 0;
      for (const auto& [gen, n] : ps.open_handles) handles += n;
      out.push_back(Info{path, ps.current, ps.size, 0, handles, ps.io->Snapshot()});
    }
  }
  for (Info& t : out) t.cached_bytes = cache_.cached_bytes_of(t.generation);
  std::sort(out.begin(), out.end(), [](const Info& a, const Info& b) { return a.path < b.path; });
  return out;
}

}  // namespace goldcache::roles
