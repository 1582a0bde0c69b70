// Mount: one FUSE mount serving a FileSystem, from mount(2) to unmount.
//
// Typical use (the agent, one Mount per datastore):
//
//   auto mount = fuse::Mount::Create(filesystem, {.mountpoint = "/run/goldcache/ds1"});
//   if (!mount.ok()) return mount.status();
//   Status s = (*mount)->Run();   // blocks until SIGTERM/SIGINT/SIGHUP or Exit()
//
// The kernel sends requests of up to 1 MiB (reads and writes); the kernel page
// cache may hold file data (no direct_io), writes are never cached in the
// kernel (no writeback cache), and O_DIRECT opens reach the FileSystem as such.
// Permission checks are the kernel's (default_permissions) against the modes
// the FileSystem reports.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "fuse/filesystem.h"
#include "util/status.h"

struct fuse_session;

namespace goldcache::fuse {

class Adapter;

struct MountOptions {
  std::string mountpoint;             // an existing directory
  std::string fsname = "goldcache";   // first column of /proc/mounts (e.g. the datastore)
  std::string subtype = "goldcache";  // type shows as "fuse.<subtype>"
  double entry_timeout = 1.0;         // seconds the kernel trusts a name -> node mapping
  double attr_timeout = 1.0;          // seconds the kernel trusts attributes
  bool allow_other = true;            // QEMU runs as another user than the agent
  unsigned max_idle_threads = 64;     // libfuse worker threads kept when idle
  unsigned max_threads = 64;          // upper bound on libfuse worker threads
  bool debug = false;                 // libfuse traces every request to the log
};

// Thread safety: Exit() may be called from any thread at any time. Create(),
// Run() and the destructor are called by the owner; Run() at most once, and
// the Mount must not be destroyed while Run() is executing.
class Mount {
 public:
  // Mounts `fs` (which must outlive the Mount) at options.mountpoint.
  // A stale mount left there by a crashed agent (the directory answers
  // ENOTCONN) is detached first, with a warning. Fails, naming the
  // mountpoint, if it does not exist, is not a directory or is already a
  // live mount. When Create returns ok the mount exists (the kernel queues
  // requests until Run() serves them).
  static Result<std::unique_ptr<Mount>> Create(FileSystem& fs, const MountOptions& options);

  // Serves requests on libfuse's multi-threaded loop until SIGTERM, SIGINT or
  // SIGHUP, Exit(), or an external unmount, then unmounts. Signal handlers
  // are installed for the duration of Run() for each of those signals whose
  // disposition is the default (a handler the process installed itself is
  // left alone; it should call Exit()). A signal stops every running Mount of
  // the process. Returns Ok on a clean stop.
  Status Run();

  // Asks Run() to stop: in-flight requests finish, then Run() unmounts and
  // returns. Before Run() starts, makes Run() return at once. Not
  // async-signal-safe (use the signal handling of Run() instead).
  void Exit();

  // Unmounts if still mounted and destroys the FUSE session. Requests still
  // queued in the kernel then fail with ENOTCONN.
  ~Mount();

  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  const std::string& mountpoint() const { return mountpoint_; }
  // Nodes (files and directories) the kernel currently holds, root included:
  // a gauge for metrics, and how tests prove lookup counting.
  size_t node_count() const;

 private:
  Mount(std::string mountpoint, const MountOptions& options, std::unique_ptr<Adapter> adapter);
  void Unmount();
  // Runs on `watcher_` during Run(): turns wake-ups (signal or Exit) into a
  // stopped session.
  void Watch(int wake_fd);

  const std::string mountpoint_;  // canonical absolute path
  const MountOptions options_;
  std::unique_ptr<Adapter> adapter_;
  FileSystem* fs_ = nullptr;  // detached from the adapter before it goes
  fuse_session* session_ = nullptr;
  bool mounted_ = false;

  std::mutex mu_;
  bool exit_requested_ = false;  // GUARDED_BY(mu_)
  bool ran_ = false;             // GUARDED_BY(mu_)
  int wake_write_fd_ = -1;       // GUARDED_BY(mu_); valid while Run() executes
  std::thread watcher_;
};

}  // namespace goldcache::fuse
