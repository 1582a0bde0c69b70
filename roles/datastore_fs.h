// roles/ — the data path between the FUSE adapter and the caches: every path
// of a datastore view gets its role from the rules, and each operation goes
// where that role says (docs/design.md §3).
//
//   template       read through the chunk cache; any change is EROFS
//                  (roles/templates.h: generations, settling, page cache,
//                  datastore outages)
//   nonpersistent  a desktop: reads merge its overlay (on this host) over the
//                  datastore file read through the chunk cache; writes,
//                  truncates, extends and hole punches go to the overlay
//                  (roles/desktops.h: sessions, resets, host-only files)
//   passthrough    straight to the datastore
//
// Files of the template and nonpersistent roles are opened on the datastore
// read-only: this room has no way to write them (invariant 4). What would
// change the datastore in a nonpersistent area fails with EROFS: unlinking or
// renaming a datastore file, mkdir/rmdir, symlinks, hard links,
// chmod/chown/utimes of a datastore file no one has open, and changing its
// size. chmod/chown/utimes of an open desktop change its attributes on this
// host only, like its data (docs/operations.md has the operator's view).
//
// Thread safety: safe for concurrent use, as fuse::FileSystem requires. No
// lock of this room is held across datastore, overlay or kernel IO.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backing/backing.h"
#include "cache/chunk_cache.h"
#include "fuse/filesystem.h"
#include "metrics/metrics.h"
#include "overlay/overlay.h"
#include "roles/desktops.h"
#include "roles/role_metrics.h"
#include "roles/rules.h"
#include "roles/templates.h"

namespace goldcache::roles {

class DatastoreFs : public fuse::FileSystem {
 public:
  struct Options {
    ResetPolicy reset = ResetPolicy::kOnLastClose;
    Templates::Options templates;
  };

  // `name` identifies the datastore in generation keys; it must be stable
  // across restarts for the cache to be reused. All references must outlive
  // this object.
  DatastoreFs(std::string name, backing::Backing& backing, RuleSet rules, cache::ChunkCache& cache,
              overlay::OverlayStore& overlays, const Options& options, metrics::Registry& registry);
  ~DatastoreFs() override;

  Result<struct stat> GetAttr(const std::string& path) override;
  // Templates: they change only on the datastore (fuse::FileSystem::Versioned).
  bool Versioned(const std::string& path) override;
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

  // See Desktops::Reset.
  Status Reset(const std::string& path, bool force) { return desktops_.Reset(path, force); }
  std::vector<Desktops::Info> ListDesktops() const { return desktops_.List(); }
  std::vector<Templates::Info> ListTemplates() const { return templates_.List(); }
  // See Templates::Warm; kInvalidArgument for a passthrough path (not cached).
  Result<Templates::WarmReport> Warm(const std::string& path, uint64_t rate, bool boot_set,
                                     const std::function<bool(uint64_t, uint64_t)>& progress);
  // See Templates::Publish; kInvalidArgument for a passthrough path.
  Result<Templates::PublishReport> Publish(const std::string& path,
                                           const std::function<bool(uint64_t, uint64_t)>& progress);

 private:
  class PassthroughFile;

  // kReadOnly unless the path is passthrough: the role forbids changes.
  Status RequireMutable(const std::string& path) const;
  Status ReadOnly(const std::string& path, const char* why) const;

  backing::Backing& backing_;
  const RuleSet rules_;
  RoleMetrics metrics_;
  Templates templates_;
  Desktops desktops_;
};

}  // namespace goldcache::roles
