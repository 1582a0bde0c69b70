// The FUSE view of one datastore: every path gets its role from the rules,
// and each operation goes where that role says (DESIGN §3).
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
//  - All open handles of one path share one overlay. With reset policy
//    kOnLastClose the overlay of a datastore file is discarded when its last
//    handle closes ("the VM shut down"); with kManual it stays until Reset().
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
#include <memory>
#include <mutex>
#include <optional>
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
  };

  DatastoreFs(std::string name, backing::Backing& backing, RuleSet rules, cache::ChunkCache& cache,
              overlay::OverlayStore& overlays, const Options& options,
              metrics::Registry& registry);
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

  // Discards the overlay of nonpersistent file `path` (datastore-relative):
  // the next open reads the pristine datastore file; a file created on this
  // host is deleted. Refused with EBUSY while it is open, unless `force`
  // (open handles then read the pristine content). kNotFound when there is
  // nothing to reset.
  Status Reset(const std::string& path, bool force);

  struct DesktopInfo {
    std::string path;
    bool local_only;  // created through the mount; no datastore file
    uint64_t size;
    uint64_t overlay_ram_bytes;
    uint64_t overlay_disk_bytes;
    int open_handles;
  };
  std::vector<DesktopInfo> Desktops() const;

  struct TemplateInfo {
    std::string path;
    index::GenerationId generation;  // of the latest open
    uint64_t size;
    uint64_t cached_bytes;               // of that generation, in the local cache
    int open_handles;                    // all generations
    uint64_t read_bytes;                 // read through the mount since the agent started
    uint64_t read_bytes_from_datastore;  // of which the datastore had to serve
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
  // Bytes read from one template, updated by its handles without a lock.
  struct ReadCounts {
    std::atomic<uint64_t> bytes{0};
    std::atomic<uint64_t> from_datastore{0};
  };
  struct PathState {
    index::GenerationId current = 0;  // generation of the latest open
    uint64_t size = 0;                // of that generation
    std::shared_ptr<ReadCounts> reads = std::make_shared<ReadCounts>();
    std::unordered_map<index::GenerationId, int> open_handles;
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
  void OnCachedFileClosed(const std::string& path, index::GenerationId gen);
  Result<std::unique_ptr<fuse::OpenFile>> OpenDesktop(const std::string& path, int flags,
                                                      std::optional<mode_t> create_mode);
  void OnDesktopClosed(const std::shared_ptr<Desktop>& desktop);
  std::shared_ptr<Desktop> FindDesktop(const std::string& path) const;
  static struct stat DesktopAttr(const Desktop& d);

  const std::string name_;
  backing::Backing& backing_;
  const RuleSet rules_;
  cache::ChunkCache& cache_;
  overlay::OverlayStore& overlays_;
  const ResetPolicy reset_policy_;
  const bool read_cache_;
  std::unique_ptr<Counters> counters_;

  mutable std::mutex mu_;                             // lock order: mu_ before any Desktop::mu
  std::unordered_map<std::string, PathState> paths_;  // GUARDED_BY(mu_)
  // Live overlays by datastore-relative path.
  std::unordered_map<std::string, std::shared_ptr<Desktop>> desktops_;  // GUARDED_BY(mu_)
  uint64_t next_local_ino_ = 1;                                         // GUARDED_BY(mu_)
  // Attributes of templates and directories as last seen on the datastore.
  std::unordered_map<std::string, struct stat> last_attr_;  // GUARDED_BY(mu_)
};

}  // namespace goldcache::agent
