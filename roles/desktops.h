// The nonpersistent role of one datastore view (docs/design.md §3
// "nonpersistent"): desktops' disks, whose writes live in an overlay on this
// host and never reach the datastore (invariant 4).
//
//  - All open handles of one path share one overlay (a session). Reads merge
//    it over the datastore file, read through the chunk cache (the base).
//    With reset policy kOnLastClose the overlay of a datastore file is
//    discarded when its last handle closes ("the VM shut down"); with
//    kManual it stays until Reset().
//  - A reset is immediate (invariant 8): the kernel's cached attributes and
//    pages of the file are dropped before the next open is answered. The
//    kernel sends a handle's RELEASE after close(2) returned, so a VM
//    restarted at once can open the file again while the old session still
//    counts as open: when every handle of the session has had its
//    descriptor closed (FLUSH) by the process that opened it, with no
//    change since, the open waits (at
//    most kReleaseWait) for their release and starts a new session; a
//    handle that is still in use elsewhere (dup, fork, mmap) shows it by a
//    write, or by outliving the wait, and the open joins it. (Reads do not
//    show it: the kernel's readahead of a closed descriptor can still
//    arrive.)
//  - Files created in a nonpersistent area exist only on this host: they
//    survive close, can be renamed and unlinked, and are gone on Reset() or
//    unlink. They are listed in their directory alongside datastore entries.
//  - fsync returns at once: the data is in the overlay, non-persistent by
//    contract.
//
// Locking: mu_ guards the registry and sessions' bookkeeping; it is never
// held across overlay IO, a datastore call or a kernel notification, so one
// desktop's disk never makes another desktop (or a lookup) wait.
//
// Thread safety: safe for concurrent use.
#pragma once

#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "backing/backing.h"
#include "fuse/filesystem.h"
#include "overlay/overlay.h"
#include "roles/io_counters.h"
#include "roles/role_metrics.h"
#include "roles/templates.h"

namespace goldcache::roles {

enum class ResetPolicy { kOnLastClose, kManual };

class Desktops {
 public:
  // How long an open waits for the release of a session whose every handle
  // was closed.
  static constexpr std::chrono::milliseconds kReleaseWait{2000};

  // All references must outlive this object.
  Desktops(Templates& templates, backing::Backing& backing, overlay::OverlayStore& overlays,
           ResetPolicy reset, RoleMetrics& metrics);
  ~Desktops();

  // Opens (create_mode: creates, on this host only, if it is not on the
  // datastore) the desktop at `path`, joining or starting its session.
  Result<std::unique_ptr<fuse::OpenFile>> Open(const std::string& path, int flags,
                                               std::optional<mode_t> create_mode);
  // Attributes of a live session (as its handles see them); nullopt when
  // `path` has none.
  std::optional<struct stat> Attr(const std::string& path) const;
  // Replaces the attributes of entries with live sessions and adds the
  // host-only files of directory `dir`.
  void MergeListing(const std::string& dir, std::vector<fuse::DirEntry>& entries) const;
  // Unlinks a host-only file; false when `path` is none (then it is the
  // datastore's, and the caller decides).
  bool UnlinkHostOnly(const std::string& path);
  // Renames host-only file `from` to `to` (within the role). kReadOnly when
  // either name is a datastore file; `to_on_datastore` says whether the
  // datastore has a file at `to` (asked by the caller, outside any lock).
  Status RenameHostOnly(const std::string& from, const std::string& to, unsigned flags,
                        bool to_on_datastore);
  // setattr of a desktop: size to the overlay, the rest to its attributes on
  // this host. kReadOnly for a datastore file no one has open (the change
  // would be undone by its reset at once).
  Result<struct stat> SetAttr(const std::string& path, const fuse::SetAttrRequest& req,
                              fuse::OpenFile* file);

  // Discards the overlay of `path`: the next open reads the pristine
  // datastore file; a file created on this host is deleted. Refused with
  // EBUSY while it is open, unless `force` (open handles then read the
  // pristine content). kNotFound when there is nothing to reset.
  Status Reset(const std::string& path, bool force);

  struct Info {
    std::string path;
    bool local_only;  // created through the mount; no datastore file
    uint64_t size;
    uint64_t overlay_ram_bytes;
    uint64_t overlay_disk_bytes;
    int open_handles;
    IoCounts io;  // since the session began (its first open after a reset)
  };
  std::vector<Info> List() const;

  void AttachKernelCache(fuse::KernelCache* kernel);

 private:
  class DesktopFile;
  struct Desktop;

  // A new session for `path` (outside mu_: asks the datastore), or the
  // status that says why there is none.
  Result<std::shared_ptr<Desktop>> NewDesktop(const std::string& path, bool exclusive,
                                              std::optional<mode_t> create_mode);
  void OnClosed(const std::shared_ptr<Desktop>& desktop, bool was_idle);
  // Ends a session that left desktops_: its overlay goes, the kernel forgets
  // what it cached of the file, and waiting opens go on.
  void Discard(const std::shared_ptr<Desktop>& desktop);
  // fuse::KernelCache::InvalidateFile, if a mount is attached.
  void InvalidateKernel(const std::string& path);
  static struct stat AttrOf(const Desktop& d);  // REQUIRES: mu_ held
  // Every handle's descriptor was closed by its opener and the session ends
  // at the coming RELEASE. REQUIRES: mu_ held.
  bool Closing(const Desktop& d) const;
  Status ReadOnly(const std::string& path) const;

  Templates& templates_;
  backing::Backing& backing_;
  overlay::OverlayStore& overlays_;
  const ResetPolicy reset_policy_;
  RoleMetrics& metrics_;

  std::shared_mutex kernel_mu_;          // shared while calling kernel_
  fuse::KernelCache* kernel_ = nullptr;  // GUARDED_BY(kernel_mu_)

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // a session's handles changed (with mu_)
  // Live sessions by datastore-relative path.
  std::unordered_map<std::string, std::shared_ptr<Desktop>> desktops_;  // GUARDED_BY(mu_)
  uint64_t next_local_ino_ = 1;                                         // GUARDED_BY(mu_)
};

}  // namespace goldcache::roles
