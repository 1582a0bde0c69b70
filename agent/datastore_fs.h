// The FUSE view of one datastore: every path gets its role from the rules,
// and each operation goes where that role says (docs/design.md §3).
//
//   template       read through the chunk cache; any change is EROFS
//   nonpersistent  a desktop: reads merge its overlay (on this host) over the
//                  datastore file read through the chunk cache; writes,
//                  truncates, extends and hole punches go to the overlay
//   passthrough    straight to the datastore
//
// Files of the template and nonpersistent roles are opened on the datastore
// read-only: this room has no way to write them (invariant 4).
//
// Nonpersistent details (docs/operations.md has the operator's view):
//  - All open handles of one path share one overlay (a session). With reset
//    policy kOnLastClose the overlay of a datastore file is discarded when
//    its last handle closes ("the VM shut down"); with kManual it stays until
//    Reset(). A reset is immediate (invariant 8): the kernel's cached
//    attributes and pages of the file are dropped before the next open is
//    answered. The kernel sends a handle's RELEASE after close(2) returned,
//    so a VM restarted at once can open the file again while the old
//    session still counts as open: when every handle of the session has had
//    its descriptor closed (FLUSH) with no IO since, the open waits (at most
//    kReleaseWait) for their release and starts a new session; a handle that
//    is still in use elsewhere (dup, fork, mmap) shows it by its IO, or by
//    outliving the wait, and the open joins it.
//  - Files created in a nonpersistent area exist only on this host: they
//    survive close, can be renamed and unlinked, and are gone on Reset() or
//    unlink. They are listed in their directory alongside datastore entries.
//  - What would change the datastore in a nonpersistent area fails with
//    EROFS: unlinking or renaming a datastore file, mkdir/rmdir, symlinks,
//    hard links, chmod/chown/utimes of datastore files, and changing the size
//    of a datastore file that no one has open.
//  - fsync returns at once: the data is in the overlay, non-persistent by
//    contract.
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
// a generation other than the one whose pages the kernel may hold drops
// them first (fuse::PageCache).
//
// Datastore outage (invariant 6): when the datastore does not answer in
// time, lookups of templates and directories are answered from the
// attributes last seen, and a template opens as its last known generation
// (from memory, or from the index after a restart): cached chunks keep
// serving, misses fail with EIO after the datastore timeout, and everything
// works again by itself when the datastore is back.
//
// Thread safety: safe for concurrent use, as fuse::FileSystem requires.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/rules.h"
#include "backing/backing.h"
#include "cache/chunk_cache.h"
#include "fuse/filesystem.h"
#include "metrics/metrics.h"
#include "overlay/overlay.h"

namespace goldcache::agent {

class DatastoreFs : public fuse::FileSystem {
 public:
  // `name` identifies the datastore in generation keys and metrics; it must be
  // stable across restarts for the cache to be reused. All references must
  // outlive this object.
  enum class ResetPolicy { kOnLastClose, kManual };
  struct Options {
    ResetPolicy reset = ResetPolicy::kOnLastClose;
    // False: reads of templates and desktops' bases go to the datastore
    // every time, never through the chunk cache (a baseline for benchmarks).
    bool read_cache = true;
    // See "Settling" above.
    std::chrono::milliseconds settle{std::chrono::seconds(10)};
  };
  // How long an open waits for the release of a session whose every handle
  // was closed (see the nonpersistent details above).
  static constexpr std::chrono::milliseconds kReleaseWait{2000};

  DatastoreFs(std::string name, backing::Backing& backing, RuleSet rules, cache::ChunkCache& cache,
              overlay::OverlayStore& overlays, const Options& options, metrics::Registry& registry);
  ~DatastoreFs() override;

  Result<struct stat> GetAttr(const std::string& path) override;
  Result<std::vector<fuse::DirEntry>> ReadDir(const std::string& path) override;
  Result<std::string> ReadLink(const std::string& path) override;
  Result<std::unique_ptr<fuse::OpenFile>> Open(const std::string& path, int flags) override;
  Result<std::unique_ptr<fuse::OpenFile>> Create(const std::string& path, int flags,
                                                 mode_t mode) override;
  Result<struct stat> Mkdir(const std::string& path, mode_t mode) override;
  Status Unlink(const std::string& path) override;
  Status Rmdir(const std::string& path) override;
  Status Rename(const std::string& from, const std::string& to, unsigned flags) override;
  Result<struct stat> Symlink(const std::string& target, const std::string& path) override;
  Result<struct stat> Link(const std::string& existing, const std::string& path) override;
  Result<struct stat> SetAttr(const std::string& path, const fuse::SetAttrRequest& req,
                              fuse::OpenFile* file) override;
  Result<struct statvfs> StatFs() override;
  void AttachKernelCache(fuse::KernelCache* kernel) override;

  // Discards the overlay of nonpersistent file `path` (datastore-relative):
  // the next open reads the pristine datastore file; a file created on this
  // host is deleted. Refused with EBUSY while it is open, unless `force`
  // (open handles then read the pristine content). kNotFound when there is
  // nothing to reset.
  Status Reset(const std::string& path, bool force);

  // IO through the mount on one file, counted by its open handles: what
  // `goldcache top` turns into rates. Latencies are sums over the operations
  // (divide by the ops for a mean). Failed operations are not counted.
  struct IoCounts {
    uint64_t read_ops = 0;
    uint64_t read_bytes = 0;
    uint64_t read_bytes_from_datastore = 0;  // of read_bytes, what the datastore served
    uint64_t read_latency_ns = 0;
    uint64_t write_ops = 0;
    uint64_t write_bytes = 0;
    uint64_t write_latency_ns = 0;
  };

  struct DesktopInfo {
    std::string path;
    bool local_only;  // created through the mount; no datastore file
    uint64_t size;
    uint64_t overlay_ram_bytes;
    uint64_t overlay_disk_bytes;
    int open_handles;
    IoCounts io;  // since the overlay was created (its first open after a reset)
  };
  std::vector<DesktopInfo> Desktops() const;

  struct TemplateInfo {
    std::string path;
    index::GenerationId generation;  // of the latest open
    uint64_t size;
    uint64_t cached_bytes;  // of that generation, in the local cache
    int open_handles;       // all generations
    IoCounts io;            // reads since the agent started, all generations
  };
  // Templates opened since the agent started.
  std::vector<TemplateInfo> Templates() const;

  struct Counters;  // metrics shared with the open files

 private:
  class GenerationSource;
  class CachedFile;
  class PassthroughFile;
  class DesktopFile;
  struct Desktop;
  // IoCounts as a file's handles update them: without a lock.
  class IoCounters {
   public:
    void CountRead(uint64_t bytes, uint64_t from_datastore, uint64_t ns) {
      read_ops_.fetch_add(1, std::memory_order_relaxed);
      read_bytes_.fetch_add(bytes, std::memory_order_relaxed);
      read_from_datastore_.fetch_add(from_datastore, std::memory_order_relaxed);
      read_ns_.fetch_add(ns, std::memory_order_relaxed);
    }
    void CountWrite(uint64_t bytes, uint64_t ns) {
      write_ops_.fetch_add(1, std::memory_order_relaxed);
      write_bytes_.fetch_add(bytes, std::memory_order_relaxed);
      write_ns_.fetch_add(ns, std::memory_order_relaxed);
    }
    IoCounts Snapshot() const {
      constexpr auto kRelaxed = std::memory_order_relaxed;
      IoCounts c;
      c.read_ops = read_ops_.load(kRelaxed);
      c.read_bytes = read_bytes_.load(kRelaxed);
      c.read_bytes_from_datastore = read_from_datastore_.load(kRelaxed);
      c.read_latency_ns = read_ns_.load(kRelaxed);
      c.write_ops = write_ops_.load(kRelaxed);
      c.write_bytes = write_bytes_.load(kRelaxed);
      c.write_latency_ns = write_ns_.load(kRelaxed);
      return c;
    }

   private:
    std::atomic<uint64_t> read_ops_{0}, read_bytes_{0}, read_from_datastore_{0}, read_ns_{0};
    std::atomic<uint64_t> write_ops_{0}, write_bytes_{0}, write_ns_{0};
  };
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
  };

  // kReadOnly unless the path is passthrough: the role forbids changes.
  Status RequireMutable(const std::string& path) const;
  Status ReadOnly(const std::string& path, const char* why) const;
  // Opens `path` on the datastore read-only and binds its generation; while
  // the datastore times out, binds the last generation known for it.
  Result<std::unique_ptr<GenerationSource>> OpenGeneration(const std::string& path);
  // backing_.Stat, remembering what templates and directories look like, and
  // answering from that memory while the datastore times out.
  Result<struct stat> StatWithFallback(const std::string& path);
  std::optional<struct stat> LastKnownAttr(const std::string& path) const;
  Result<std::unique_ptr<fuse::OpenFile>> OpenCached(const std::string& path, int flags);
  void OnCachedFileClosed(const std::string& path, index::GenerationId gen, bool used_page_cache);
  Result<std::unique_ptr<fuse::OpenFile>> OpenDesktop(const std::string& path, int flags,
                                                      std::optional<mode_t> create_mode);
  // A new session for `path` (outside mu_: asks the datastore), or the
  // status that says why there is none.
  Result<std::shared_ptr<Desktop>> NewDesktop(const std::string& path, bool exclusive,
                                              std::optional<mode_t> create_mode);
  void OnDesktopClosed(const std::shared_ptr<Desktop>& desktop, bool was_idle);
  // Ends a session that left desktops_: its overlay goes, the kernel forgets
  // what it cached of the file, and waiting opens go on.
  void DiscardSession(const std::shared_ptr<Desktop>& desktop);
  // fuse::KernelCache::InvalidateFile, if a mount is attached.
  void InvalidateKernel(const std::string& path);
  // True when the generation's ctime and mtime are older than the settle time.
  bool Settled(const index::GenerationKey& key) const;
  std::shared_ptr<Desktop> FindDesktop(const std::string& path) const;
  static struct stat DesktopAttr(const Desktop& d);

  const std::string name_;
  backing::Backing& backing_;
  const RuleSet rules_;
  cache::ChunkCache& cache_;
  overlay::OverlayStore& overlays_;
  const ResetPolicy reset_policy_;
  const bool read_cache_;
  const std::chrono::milliseconds settle_;
  std::shared_mutex kernel_mu_;          // shared while calling kernel_
  fuse::KernelCache* kernel_ = nullptr;  // GUARDED_BY(kernel_mu_)
  std::unique_ptr<Counters> counters_;

  mutable std::mutex mu_;                             // lock order: mu_ before any Desktop::mu
  std::condition_variable desktop_cv_;                // a session's handles changed (with mu_)
  std::unordered_map<std::string, PathState> paths_;  // GUARDED_BY(mu_)
  // Live overlays by datastore-relative path.
  std::unordered_map<std::string, std::shared_ptr<Desktop>> desktops_;  // GUARDED_BY(mu_)
  uint64_t next_local_ino_ = 1;                                         // GUARDED_BY(mu_)
  // Attributes of templates and directories as last seen on the datastore.
  std::unordered_map<std::string, struct stat> last_attr_;  // GUARDED_BY(mu_)
};

}  // namespace goldcache::agent
