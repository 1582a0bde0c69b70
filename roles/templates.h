// The template role of one datastore view (docs/design.md §3 "template"):
// template generations, reads through the chunk cache, what the kernel's page
// cache may keep, and what to answer while the datastore is down.
//
// Generations: each open of a cached file binds the datastore file's current
// generation (path, size, mtime, ctime, inode). A handle serves only its own
// generation; if the datastore file changes under an open handle, misses on
// that handle fail with EIO (kStale) rather than mix two generations, and the
// change is logged and counted.
//
// Settling: a file rewritten in place keeps the mtime its write got when it
// started, so a generation whose ctime or mtime is younger than
// Options::settle may still be being written: its reads go to the datastore
// and are not cached (the chunk cache, and the kernel's page cache: its
// handles bypass it), until the generation is that old.
//
// The kernel's page cache is shared by every handle of a file, whatever
// generation each serves. A template handle uses it only while no handle of
// another generation does (otherwise it bypasses it), and the first handle of
// a generation other than the one whose pages the kernel may hold drops them
// first (fuse::PageCache).
//
// Datastore outage (invariant 6): when the datastore does not answer in time,
// lookups of templates and directories are answered from the attributes last
// seen, and a template opens as its last known generation (from memory, or
// from the index after a restart): cached chunks keep serving, misses fail
// with EIO after the datastore timeout, and everything works again by itself
// when the datastore is back.
//
// Content addressing and boot traces: the first open of a generation looks
// for its manifest beside the file (PATH + index::kManifestSuffix, again at
// most every kManifestRecheck while there is none) and attaches it to the
// cache; a generation not fully cached is prefetched along its boot trace
// (its own, its manifest's, or its path's previous generation's: a patch
// moves few chunks), and its first reads are recorded as its trace.
//
// Files of this role are opened on the datastore read-only: this room has no
// way to write them (invariant 4). Its one datastore write is Publish's
// manifest, a file of its own beside the template, on the operator's command.
//
// Thread safety: safe for concurrent use. The mutex guards per-path state
// only; it is never held across datastore, cache or kernel calls.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backing/backing.h"
#include "cache/chunk_cache.h"
#include "fuse/filesystem.h"
#include "roles/io_counters.h"
#include "roles/role_metrics.h"
#include "roles/rules.h"

namespace goldcache::roles {

class Templates;

// The datastore file of one generation: the chunk cache's source of misses
// (bytes of exactly that generation, or kStale), and the reads of a handle
// through the cache. Shared by the template role and desktops' bases.
class GenerationSource : public cache::ChunkSource,
                         public std::enable_shared_from_this<GenerationSource> {
 public:
  // `file` may be null: opened at the first miss (the datastore was down).
  GenerationSource(Templates& templates, std::string path, index::GenerationKey key,
                   index::GenerationId gen, const struct stat& attr,
                   std::unique_ptr<backing::BackingFile> file);

  // cache::ChunkSource
  Result<size_t> ReadAt(uint64_t offset, std::span<char> buf) override;
  bool Cacheable() override;

  // Reads through the chunk cache (or straight from the datastore when the
  // read cache is off), logging and counting failures. `stream` is the
  // reading handle's (its sequential runs are read ahead). REQUIRES: owned
  // by a shared_ptr (readahead keeps it alive).
  Result<cache::ReadOutcome> Read(uint64_t offset, std::span<char> buf,
                                  cache::ReadStream* stream = nullptr);

  // What the datastore said at open: a handle's view is its generation, and
  // answering from it keeps fstat working while the datastore is down.
  const struct stat& attr() const { return attr_; }
  uint64_t size() const { return key_.size; }
  index::GenerationId generation() const { return gen_; }
  const index::GenerationKey& key() const { return key_; }
  const std::string& path() const { return path_; }

 private:
  Templates& t_;
  const std::string path_;
  const index::GenerationKey key_;
  const index::GenerationId gen_;
  const struct stat attr_;
  std::mutex file_mu_;
  std::unique_ptr<backing::BackingFile> file_;  // GUARDED_BY(file_mu_); null until needed
  std::atomic<bool> reported_change_{false};
  std::atomic<bool> settled_{false};  // once settled, always settled
};

class Templates {
 public:
  struct Options {
    // False: reads go to the datastore every time, never through the chunk
    // cache (a baseline for benchmarks).
    bool read_cache = true;
    // See "Settling" above.
    std::chrono::milliseconds settle{std::chrono::seconds(10)};
  };

  // `datastore` prefixes generation keys ("<datastore>:<path>"); it must be
  // stable across restarts for the cache to be reused. All references must
  // outlive this object.
  Templates(std::string datastore, backing::Backing& backing, const RuleSet& rules,
            cache::ChunkCache& cache, const Options& options, RoleMetrics& metrics);
  // Waits for the cache's background fetches (boot-trace prefetch,
  // readahead): they read through this object's generation sources.
  ~Templates();

  // Opens `path` on the datastore read-only and binds its generation; while
  // the datastore times out, a template binds the last generation known.
  Result<std::shared_ptr<GenerationSource>> OpenGeneration(const std::string& path);
  // A read-only handle of template `path`; kReadOnly for write access or
  // O_TRUNC.
  Result<std::unique_ptr<fuse::OpenFile>> Open(const std::string& path, int flags);
  // The datastore's lstat of `path`, remembering what templates and
  // directories look like and answering from that memory while the
  // datastore times out.
  Result<struct stat> StatWithFallback(const std::string& path);
  // True when the generation's ctime and mtime are older than the settle time.
  bool Settled(const index::GenerationKey& key) const;

  // Reads the current generation of `path` (a template or a desktop's
  // datastore file) through the cache, kWarmParallel fetches at a time, so
  // that the next boot storm finds it there (goldcache warm). `progress` and
  // `rate` as cache::ChunkCache::Warm.
  static constexpr unsigned kWarmParallel = 4;
  // `boot_set`: only the chunks of the generation's boot trace (an error
  // when it has none).
  struct WarmReport {
    index::GenerationId generation = 0;
    uint64_t bytes = 0;
    uint64_t from_datastore = 0;
    uint64_t reused = 0;  // found by digest (the manifest named bytes the host holds)
  };
  Result<WarmReport> Warm(const std::string& path, uint64_t rate, bool boot_set,
                          const std::function<bool(uint64_t, uint64_t)>& progress);

  // goldcache publish: reads the current generation of `path` from the
  // datastore, digests every chunk, and writes its manifest beside it
  // (written to a temporary name, synced, renamed over the old one), with
  // the boot trace this host knows for it. kInvalidArgument while it has not
  // settled; kStale when it changed while being read. `progress` as Warm.
  static constexpr auto kManifestRecheck = std::chrono::seconds(60);
  struct PublishReport {
    index::GenerationId generation = 0;
    uint64_t bytes = 0;
    uint64_t chunks = 0;
    uint64_t trace_chunks = 0;
    std::string manifest;  // its datastore path
  };
  Result<PublishReport> Publish(const std::string& path,
                                const std::function<bool(uint64_t, uint64_t)>& progress);

  struct Info {
    std::string path;
    index::GenerationId generation;  // of the latest open
    uint64_t size;
    uint64_t cached_bytes;  // of that generation, in the local cache
    int open_handles;       // all generations
    IoCounts io;            // reads since the agent started, all generations
  };
  // Templates opened since the agent started, by path.
  std::vector<Info> List() const;

  RoleMetrics& metrics() { return metrics_; }
  bool read_cache() const { return read_cache_; }
  cache::ChunkCache& cache() { return cache_; }

 private:
  friend class GenerationSource;
  class CachedFile;
  struct PathState {
    index::GenerationId current = 0;  // generation of the latest open
    uint64_t size = 0;                // of that generation
    std::shared_ptr<IoCounters> io = std::make_shared<IoCounters>();
    std::unordered_map<index::GenerationId, int> open_handles;
    // Generation whose pages the kernel's page cache may hold (0: none), and
    // the open handles of each generation that use the page cache.
    index::GenerationId page_cache_gen = 0;
    std::unordered_map<index::GenerationId, int> page_cache_handles;
    index::GenerationId unsettled_reported = 0;  // logged once per generation
    // The generation whose manifest and trace were last looked for, and when.
    index::GenerationId prepared = 0;
    std::chrono::steady_clock::time_point manifest_looked{};
  };

  std::optional<struct stat> LastKnownAttr(const std::string& path) const;
  void OnClosed(const std::string& path, index::GenerationId gen, bool used_page_cache);
  // Logs (once per generation) that `gen` is served uncached while it settles.
  void ReportUnsettled(const std::string& path, index::GenerationId gen);
  // At an open: the manifest, the trace prefetch and the trace recording of
  // the source's generation (see the top of this file).
  void Prepare(const std::shared_ptr<GenerationSource>& source);
  void LoadManifest(const std::string& path, const index::GenerationKey& key,
                    index::GenerationId gen);
  // gen's boot trace, or else that of the path's latest earlier generation.
  std::vector<uint64_t> TraceFor(const std::string& cache_path, index::GenerationId gen) const;

  const std::string datastore_;
  backing::Backing& backing_;
  const RuleSet rules_;
  cache::ChunkCache& cache_;
  const bool read_cache_;
  const std::chrono::milliseconds settle_;
  RoleMetrics& metrics_;

  mutable std::mutex mu_;
  std::unordered_map<std::string, PathState> paths_;  // GUARDED_BY(mu_)
  // Attributes of templates and directories as last seen on the datastore.
  std::unordered_map<std::string, struct stat> last_attr_;  // GUARDED_BY(mu_)
};

}  // namespace goldcache::roles
