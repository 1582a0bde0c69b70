// The FUSE view of one datastore: every path gets its role from the rules,
// and each operation goes where that role says (DESIGN §3).
//
//   template       read through the chunk cache; any change is EROFS
//   nonpersistent  read through the chunk cache like a template; changes are
//                  EROFS until the overlay lands (never to the datastore)
//   passthrough    straight to the datastore
//
// Files of the template and nonpersistent roles are opened on the datastore
// read-only: this room has no way to write them (invariant 4).
//
// Generations: each open of a cached file binds the datastore file's current
// generation (path, size, mtime, ctime, inode). A handle serves only its own
// generation; if the datastore file changes under an open handle, misses on
// that handle fail with EIO (kStale) rather than mix two generations, and the
// change is logged and counted.
//
// Thread safety: safe for concurrent use, as fuse::FileSystem requires.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "agent/rules.h"
#include "backing/backing.h"
#include "cache/chunk_cache.h"
#include "fuse/filesystem.h"
#include "metrics/metrics.h"

namespace goldcache::agent {

class DatastoreFs : public fuse::FileSystem {
 public:
  // `name` identifies the datastore in generation keys and metrics; it must be
  // stable across restarts for the cache to be reused. All references must
  // outlive this object.
  DatastoreFs(std::string name, backing::Backing& backing, RuleSet rules,
              cache::ChunkCache& cache, metrics::Registry& registry);
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

  struct Counters;  // metrics shared with the open files

 private:
  class CachedFile;
  class PassthroughFile;
  struct PathState {
    index::GenerationId current = 0;  // generation of the latest open
    std::unordered_map<index::GenerationId, int> open_handles;
  };

  // kReadOnly unless every path is passthrough: the role that forbids changes.
  Status RequireMutable(const std::string& path) const;
  Result<std::unique_ptr<fuse::OpenFile>> OpenCached(const std::string& path, int flags);
  void OnCachedFileClosed(const std::string& path, index::GenerationId gen);

  const std::string name_;
  backing::Backing& backing_;
  const RuleSet rules_;
  cache::ChunkCache& cache_;
  std::unique_ptr<Counters> counters_;

  std::mutex mu_;
  std::unordered_map<std::string, PathState> paths_;  // GUARDED_BY(mu_)
};

}  // namespace goldcache::agent
