#include "fuse/adapter.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <new>
#include <span>
#include <vector>

#include "fuse/errno_map.h"

namespace goldcache::fuse {
namespace {

// The kernel and glibc treat d_ino == 0 as "no entry" (glibc's readdir skips
// such entries), so a FileSystem that leaves st_ino unset still needs a
// non-zero value in listings.
constexpr ino_t kUnknownIno = ~static_cast<ino_t>(0);

// What the desktop sees as st_ino: the FileSystem's when it has one (stable
// across remounts, what `ls -i` and hard-link detection expect), else our id.
struct stat WithIno(struct stat st, NodeId node) {
  if (st.st_ino == 0) st.st_ino = node;
  return st;
}

void ReplyStatus(fuse_req_t req, const Status& status) { fuse_reply_err(req, ToErrno(status)); }

void ReplyNoPath(fuse_req_t req) {
  // The node was unlinked (or an ancestor removed) and has no open handle
  // that could answer instead: to the caller the name is gone.
  fuse_reply_err(req, ENOENT);
}

// The thread group (process) of the thread that sent `req`; 0 if unknown
// (the thread is gone, or the request came from another pid namespace).
pid_t ProcessOf(fuse_req_t req) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  if (ctx == nullptr || ctx->pid <= 0) return 0;
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/status", static_cast<int>(ctx->pid));
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return 0;
  pid_t tgid = 0;
  char line[256];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "Tgid: %d", &tgid) == 1) break;
  }
  std::fclose(f);
  return tgid;
}

FileHandle* HandleOf(const fuse_file_info* fi) {
  return reinterpret_cast<FileHandle*>(static_cast<uintptr_t>(fi->fh));
}

// Directory listing captured at opendir. Offsets handed to the kernel are
// indexes + 1 into `entries`, so a listing is stable however it is paged and
// whatever changes in the directory meanwhile (POSIX allows either view).
struct DirHandle {
  std::vector<DirEntry> entries;  // "." and ".." first
};

DirHandle* DirHandleOf(const fuse_file_info* fi) {
  return reinterpret_cast<DirHandle*>(static_cast<uintptr_t>(fi->fh));
}

bool IsDotOrDotDot(const std::string& name) { return name == "." || name == ".."; }

// Creations run as the caller, as on a network file system: the new file,
// directory or symlink belongs to the process that made it (the worker
// thread's fsuid/fsgid, which are per thread), not to the root agent, and the
// datastore's permission check sees the caller's supplementary groups, as the
// kernel's check on the mount did (a directory writable through a team's
// group). Only where the datastore is reached through the kernel (a directory
// or an NFS mount); libnfs speaks with the agent's credentials.
//
// Groups are set with the raw syscall: it changes the calling thread only,
// where glibc's setgroups() changes every thread of the process.
class AsCaller {
 public:
  explicit AsCaller(fuse_req_t req) {
    const fuse_ctx* ctx = fuse_req_ctx(req);
    if (ctx == nullptr || geteuid() != 0 || (ctx->uid == 0 && ctx->gid == 0)) return;
    // The caller's groups (from /proc; none if it is gone already: the
    // primary group alone then, never the agent's).
    std::vector<gid_t> groups(32);
    int n = fuse_req_getgroups(req, static_cast<int>(groups.size()), groups.data());
    if (n > static_cast<int>(groups.size())) {
      groups.resize(n);
      n = fuse_req_getgroups(req, n, groups.data());
    }
    groups.resize(std::clamp(n, 0, static_cast<int>(groups.size())));
    const int old_n = getgroups(0, nullptr);
    old_groups_.resize(std::max(old_n, 0));
    if (old_n < 0 || getgroups(old_n, old_groups_.data()) != old_n ||
        syscall(SYS_setgroups, groups.size(), groups.data()) != 0) {
      spdlog::warn(
          "fuse: cannot take the caller's groups (uid {}): {}; creating with its "
          "primary group only",
          ctx->uid, std::strerror(errno));
      (void)syscall(SYS_setgroups, 0, nullptr);
    }
    old_gid_ = setfsgid(ctx->gid);
    old_uid_ = setfsuid(ctx->uid);
    active_ = true;
  }
  ~AsCaller() {
    if (!active_) return;
    setfsuid(old_uid_);
    setfsgid(old_gid_);
    (void)syscall(SYS_setgroups, old_groups_.size(), old_groups_.data());
  }
  AsCaller(const AsCaller&) = delete;
  AsCaller& operator=(const AsCaller&) = delete;

 private:
  bool active_ = false;
  int old_uid_ = 0;
  int old_gid_ = 0;
  std::vector<gid_t> old_groups_;
};

// A creation through the mount never makes a set-user-ID file, nor a
// set-group-ID file; a directory keeps set-group-ID (its files inherit the
// group, which gives no privilege).
mode_t CreationMode(mode_t mode, bool directory) {
  mode &= ~static_cast<mode_t>(S_ISUID);
  if (!directory) mode &= ~static_cast<mode_t>(S_ISGID);
  return mode;
}

// A handler that throws (bad_alloc under memory pressure, a library's
// exception) fails its request instead of terminating the agent, which would
// take every desktop's disk with it. Handlers reply last, so a throw means
// no reply was sent yet. Not for forget/forget_multi (they have no reply).
template <auto Fn>
struct Guarded;
template <typename... Args, void (*Fn)(fuse_req_t, Args...)>
struct Guarded<Fn> {
  static void Call(fuse_req_t req, Args... args) {
    try {
      Fn(req, args...);
    } catch (const std::bad_alloc&) {
      spdlog::error("fuse: out of memory serving a request; failed it with ENOMEM");
      fuse_reply_err(req, ENOMEM);
    } catch (const std::exception& e) {
      spdlog::error("fuse: a request failed with an unexpected error ({}); failed it with EIO",
                    e.what());
      fuse_reply_err(req, EIO);
    }
  }
};

}  // namespace

static_assert(sizeof(fuse_ino_t) >= sizeof(NodeId), "node ids are passed as fuse_ino_t");
static_assert(sizeof(uint64_t) >= sizeof(uintptr_t), "handles are passed in fi->fh");
static_assert(kRootNodeId == FUSE_ROOT_ID);

Adapter::Adapter(FileSystem& fs, const AdapterOptions& options) : fs_(fs), options_(options) {}

Adapter& Adapter::Self(fuse_req_t req) { return *static_cast<Adapter*>(fuse_req_userdata(req)); }

const fuse_lowlevel_ops& Adapter::Ops() {
  static const fuse_lowlevel_ops ops = [] {
    fuse_lowlevel_ops o;
    std::memset(&o, 0, sizeof(o));
    o.init = &Adapter::Init;
    o.lookup = &Guarded<&Adapter::Lookup>::Call;
    o.forget = &Adapter::Forget;
    o.forget_multi = &Adapter::ForgetMulti;
    o.getattr = &Guarded<&Adapter::GetAttr>::Call;
    o.setattr = &Guarded<&Adapter::SetAttr>::Call;
    o.readlink = &Guarded<&Adapter::ReadLink>::Call;
    o.mkdir = &Guarded<&Adapter::Mkdir>::Call;
    o.unlink = &Guarded<&Adapter::Unlink>::Call;
    o.rmdir = &Guarded<&Adapter::Rmdir>::Call;
    o.symlink = &Guarded<&Adapter::Symlink>::Call;
    o.rename = &Guarded<&Adapter::Rename>::Call;
    o.link = &Guarded<&Adapter::Link>::Call;
    o.open = &Guarded<&Adapter::Open>::Call;
    o.read = &Guarded<&Adapter::Read>::Call;
    o.write = &Guarded<&Adapter::Write>::Call;
    o.flush = &Guarded<&Adapter::Flush>::Call;
    o.release = &Guarded<&Adapter::Release>::Call;
    o.fsync = &Guarded<&Adapter::Fsync>::Call;
    o.opendir = &Guarded<&Adapter::OpenDir>::Call;
    o.readdir = &Guarded<&Adapter::ReadDir>::Call;
    o.readdirplus = &Guarded<&Adapter::ReadDirPlus>::Call;
    o.releasedir = &Guarded<&Adapter::ReleaseDir>::Call;
    o.statfs = &Guarded<&Adapter::StatFs>::Call;
    o.create = &Guarded<&Adapter::Create>::Call;
    o.fallocate = &Guarded<&Adapter::Fallocate>::Call;
    return o;
  }();
  return ops;
}

void Adapter::Init(void* userdata, fuse_conn_info* conn) {
  auto* self = static_cast<Adapter*>(userdata);
  auto want = [conn](unsigned cap) {
    if (conn->capable & cap) conn->want |= cap;
  };
  want(FUSE_CAP_ASYNC_READ);       // several reads of one file in flight (QEMU, readahead)
  want(FUSE_CAP_PARALLEL_DIROPS);  // lookups and readdir in one directory run in parallel
  want(FUSE_CAP_READDIRPLUS);      // `ls -l` of a datastore folder: one round trip, not N+1
  want(FUSE_CAP_READDIRPLUS_AUTO);
  want(FUSE_CAP_ASYNC_DIO);  // QEMU cache=none AIO: its queue depth reaches us
  // The kernel must not cache writes: a nonpersistent desktop's write is
  // acknowledged by the overlay, and ENOSPC must reach the writer (QEMU pauses
  // the VM) instead of surfacing later in writeback where it is lost.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;

  // libfuse 3.14 derives max_pages (the kernel's request size cap, 32 pages
  // by default) from max_write; 256 pages needs max_write = 1 MiB. Reads are
  // also capped by max_read, which libfuse requires to equal the max_read
  // mount option that Mount passes.
  conn->max_write = kMaxRequestBytes;
  conn->max_read = kMaxRequestBytes;
  // The kernel also caps readahead at the bdi's read_ahead_kb, which Mount
  // raises to match.
  conn->max_readahead = kMaxRequestBytes;
  // Async reads and AIO direct IO are "background" requests in the kernel;
  // its default of 12 in flight would cap a QEMU queue depth of 32.
  conn->max_background = self->options_.max_background;
  conn->congestion_threshold = self->options_.max_background * 3 / 4;
  spdlog::debug("fuse: init, kernel protocol {}.{}, want {:#x} of capable {:#x}", conn->proto_major,
                conn->proto_minor, conn->want, conn->capable);
}

void Adapter::ReplyEntry(fuse_req_t req, NodeId parent, const char* name, const std::string& path,
                         struct stat st) {
  NodeId node = inodes_.Lookup(parent, name, st, fs_.Versioned(path));
  if (node == 0) {
    fuse_reply_err(req, ESTALE);
    return;
  }
  fuse_entry_param e;
  std::memset(&e, 0, sizeof(e));
  e.ino = node;
  e.generation = 0;  // node ids are never reused
  e.attr = WithIno(st, node);
  e.attr_timeout = options_.attr_timeout;
  e.entry_timeout = options_.entry_timeout;
  // A reply that fails means the request was interrupted and the kernel will
  // not remember this entry, so neither does the table.
  if (fuse_reply_entry(req, &e) != 0) inodes_.Forget(node, 1);
}

void Adapter::Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Adapter& self = Self(req);
  std::optional<std::string> path = self.inodes_.ChildPath(parent, name);
  if (!path) return ReplyNoPath(req);
  Result<struct stat> st = self.fs_.GetAttr(*path);
  if (!st.ok()) {
    // Forget a name that vanished behind our back, so that it cannot be the
    // path used for a node that still has other names.
    if (st.status().code() == Code::kNotFound) self.inodes_.RemoveName(parent, name);
    return ReplyStatus(req, st.status());
  }
  self.ReplyEntry(req, parent, name, *path, *st);
}

void Adapter::Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Self(req).inodes_.Forget(ino, nlookup);
  fuse_reply_none(req);
}

void Adapter::ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  Adapter& self = Self(req);
  for (size_t i = 0; i < count; ++i) self.inodes_.Forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

Result<struct stat> Adapter::StatDetached(NodeId node) {
  std::shared_ptr<FileHandle> handle = inodes_.AnyHandle(node);
  if (handle == nullptr) return Status::Error(Code::kNotFound, "node has no path", ENOENT);
  std::lock_guard lock(handle->release_mu);
  if (handle->released) return Status::Error(Code::kNotFound, "node has no path", ENOENT);
  return handle->file->Stat();
}

void Adapter::GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Adapter& self = Self(req);
  Result<struct stat> st = [&]() -> Result<struct stat> {
    if (fi != nullptr) return HandleOf(fi)->file->Stat();
    std::optional<std::string> path = self.inodes_.Path(ino);
    if (!path) return self.StatDetached(ino);
    Result<struct stat> now = self.fs_.GetAttr(*path);
    if (now.ok() && self.inodes_.Matches(ino, *now)) return now;
    if (!now.ok() && now.status().code() != Code::kNotFound) return now;
    // The name is gone from the datastore, or names another file now
    // (renamed over, or a template changed in place), while the kernel still
    // holds this node. Its open handles (fstat of a held disk) answer for
    // the file they hold, never the other one's size; with none, ESTALE
    // makes the kernel look the name up again (stat(2) retries by itself).
    Result<struct stat> held = self.StatDetached(ino);
    if (held.ok() || !now.ok()) return held;
    return Status::Error(Code::kStale, *path + " names another file now", ESTALE);
  }
  ();
  if (!st.ok()) return ReplyStatus(req, st.status());
  struct stat out = WithIno(*st, ino);
  fuse_reply_attr(req, &out, self.options_.attr_timeout);
}

void Adapter::SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                      fuse_file_info* fi) {
  Adapter& self = Self(req);
  SetAttrRequest r;
  if (to_set & FUSE_SET_ATTR_MODE) r.mode = attr->st_mode & 07777;
  if (to_set & FUSE_SET_ATTR_UID) r.uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) r.gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_SIZE) r.size = static_cast<uint64_t>(attr->st_size);
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
    r.atime = timespec{0, UTIME_NOW};
  } else if (to_set & FUSE_SET_ATTR_ATIME) {
    r.atime = attr->st_atim;
  }
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    r.mtime = timespec{0, UTIME_NOW};
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    r.mtime = attr->st_mtim;
  }
  // FUSE_SET_ATTR_CTIME accompanies the others; the FileSystem sets ctime as
  // a side effect of any change, as the OS does.
  OpenFile* file = fi != nullptr ? HandleOf(fi)->file.get() : nullptr;

  Result<struct stat> st = [&]() -> Result<struct stat> {
    if (std::optional<std::string> path = self.inodes_.Path(ino)) {
      return self.fs_.SetAttr(*path, r, file);
    }
    // ftruncate() of a file unlinked while open: only the handle can do it.
    if (file != nullptr && r.size && !r.mode && !r.uid && !r.gid && !r.atime && !r.mtime) {
      GC_RETURN_IF_ERROR(file->Truncate(*r.size));
      return file->Stat();
    }
    return Status::Error(Code::kNotFound, "node has no path", ENOENT);
  }
  ();
  if (!st.ok()) return ReplyStatus(req, st.status());
  struct stat out = WithIno(*st, ino);
  fuse_reply_attr(req, &out, self.options_.attr_timeout);
}

void Adapter::ReadLink(fuse_req_t req, fuse_ino_t ino) {
  Adapter& self = Self(req);
  std::optional<std::string> path = self.inodes_.Path(ino);
  if (!path) return ReplyNoPath(req);
  Result<std::string> target = self.fs_.ReadLink(*path);
  if (!target.ok()) return ReplyStatus(req, target.status());
  fuse_reply_readlink(req, target->c_str());
}

void Adapter::Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Adapter& self = Self(req);
  std::optional<std::string> path = self.inodes_.ChildPath(parent, name);
  if (!path) return ReplyNoPath(req);
  Result<struct stat> st = [&] {
    AsCaller as_caller(req);
    return self.fs_.Mkdir(*path, CreationMode(mode, /*directory=*/true));
  }();
  if (!st.ok()) return ReplyStatus(req, st.status());
  self.ReplyEntry(req, parent, name, *path, *st);
}

void Adapter::Unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Adapter& self = Self(req);
  std::optional<std::string> path = self.inodes_.ChildPath(parent, name);
  if (!path) return ReplyNoPath(req);
  Status s = self.fs_.Unlink(*path);
  if (s.ok()) self.inodes_.RemoveName(parent, name);
  ReplyStatus(req, s);
}

void Adapter::Rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Adapter& self = Self(req);
  std::optional<std::string> path = self.inodes_.ChildPath(parent, name);
  if (!path) return ReplyNoPath(req);
  Status s = self.fs_.Rmdir(*path);
  if (s.ok()) self.inodes_.RemoveName(parent, name);
  ReplyStatus(req, s);
}

void Adapter::Symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  Adapter& self = Self(req);
  std::optional<std::string> path = self.inodes_.ChildPath(parent, name);
  if (!path) return ReplyNoPath(req);
  Result<struct stat> st = [&] {
    AsCaller as_caller(req);
    return self.fs_.Symlink(target, *path);
  }();
  if (!st.ok()) return ReplyStatus(req, st.status());
  self.ReplyEntry(req, parent, name, *path, *st);
}

void Adapter::Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
                     const char* new_name, unsigned int flags) {
  Adapter& self = Self(req);
  std::optional<std::string> from = self.inodes_.ChildPath(parent, name);
  std::optional<std::string> to = self.inodes_.ChildPath(new_parent, new_name);
  if (!from || !to) return ReplyNoPath(req);
  Status s = self.fs_.Rename(*from, *to, flags);
  if (s.ok()) {
    self.inodes_.Rename(parent, name, new_parent, new_name, (flags & RENAME_EXCHANGE) != 0);
  }
  ReplyStatus(req, s);
}

void Adapter::Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t new_parent, const char* new_name) {
  Adapter& self = Self(req);
  std::optional<std::string> existing = self.inodes_.Path(ino);
  std::optional<std::string> path = self.inodes_.ChildPath(new_parent, new_name);
  if (!existing || !path) return ReplyNoPath(req);
  Result<struct stat> st = self.fs_.Link(*existing, *path);
  if (!st.ok()) return ReplyStatus(req, st.status());
  // The new name resolves, through (st_dev, st_ino), to the node `ino`, as
  // the kernel expects of a hard link.
  self.ReplyEntry(req, new_parent, new_name, *path, *st);
}

void Adapter::InvalidateFile(const std::string& path) {
  fuse_session* se = session_.load(std::memory_order_acquire);
  if (se == nullptr) return;
  std::optional<NodeId> node = inodes_.NodeOfPath(path);
  if (!node) return;  // the kernel holds nothing of it
  // -ENOENT: the kernel forgot the node meanwhile; nothing is cached then.
  int rc = fuse_lowlevel_notify_inval_inode(se, *node, 0, 0);
  if (rc != 0 && rc != -ENOENT && rc != -ENOTCONN) {
    spdlog::warn("fuse: invalidating the kernel's cache of {} failed: {}", path,
                 std::strerror(-rc));
  }
}

bool Adapter::ReplyOpen(fuse_req_t req, NodeId node, std::unique_ptr<OpenFile> file,
                        fuse_file_info* fi, const fuse_entry_param* entry) {
  const PageCache page_cache = file->PageCachePolicy();
  auto handle = std::make_shared<FileHandle>(node, std::move(file), ProcessOf(req));
  if (!inodes_.AddHandle(handle)) {
    // Only a kernel/adapter disagreement about node ids gets here.
    handle->file->Release();
    fuse_reply_err(req, ESTALE);
    return false;
  }
  fi->fh = reinterpret_cast<uintptr_t>(handle.get());
  // Outside kBypass, the page cache may serve repeated reads of template
  // blocks, and O_DIRECT opens (QEMU cache=none) bypass it on their own.
  fi->direct_io = page_cache == PageCache::kBypass ? 1 : 0;
  // Without keep_cache the kernel drops the file's pages at this open; a
  // bypassing handle leaves them to the handles that use them.
  fi->keep_cache = page_cache != PageCache::kDrop ? 1 : 0;
  if (page_cache == PageCache::kDrop) {
    // keep_cache=0 alone drops pages only after this reply, while another
    // handle's reads could still be served stale pages: drop them first.
    // No lock of this inode is held for an open (no O_TRUNC with writeback
    // caching here), so the kernel can act on the notification now.
    if (fuse_session* se = session_.load(std::memory_order_acquire)) {
      fuse_lowlevel_notify_inval_inode(se, node, 0, 0);
    }
  }
  // fuse_file_info in libfuse 3.14 has no parallel_direct_writes bit; the
  // kernel serializes direct writes per file until libfuse exposes it.
  int rc = entry != nullptr ? fuse_reply_create(req, entry, fi) : fuse_reply_open(req, fi);
  if (rc == 0) return true;
  // Interrupted: the kernel never saw the handle and will not release it.
  ReleaseHandle(handle.get());
  return false;
}

void Adapter::ReleaseHandle(FileHandle* handle) {
  std::shared_ptr<FileHandle> owned = inodes_.RemoveHandle(handle);
  if (owned == nullptr) return;
  std::lock_guard lock(owned->release_mu);
  owned->released = true;
  owned->file->Release();
  // The OpenFile is destroyed with the last reference: here, or by a
  // StatDetached() that borrowed the handle and has not yet returned.
}

void Adapter::Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Adapter& self = Self(req);
  std::optional<std::string> path = self.inodes_.Path(ino);
  if (!path) return ReplyNoPath(req);
  Result<std::unique_ptr<OpenFile>> file = self.fs_.Open(*path, fi->flags);
  if (!file.ok()) return ReplyStatus(req, file.status());
  if (self.inodes_.Versioned(ino)) {
    // The kernel reached this node through a name it still caches; if the
    // name now opens another version, ESTALE makes the kernel look it up
    // again (open(2) retries by itself) and open the new version's node,
    // instead of serving new bytes through the old inode or old bytes by a
    // name that no longer has them.
    Result<struct stat> st = (*file)->Stat();
    if (st.ok() && !self.inodes_.Matches(ino, *st)) {
      (*file)->Release();
      return (void)fuse_reply_err(req, ESTALE);
    }
  }
  self.ReplyOpen(req, ino, std::move(*file), fi, nullptr);
}

void Adapter::Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                     fuse_file_info* fi) {
  Adapter& self = Self(req);
  std::optional<std::string> path = self.inodes_.ChildPath(parent, name);
  if (!path) return ReplyNoPath(req);
  Result<std::unique_ptr<OpenFile>> file = [&] {
    AsCaller as_caller(req);
    return self.fs_.Create(*path, fi->flags, CreationMode(mode, /*directory=*/false));
  }();
  if (!file.ok()) return ReplyStatus(req, file.status());
  Result<struct stat> st = (*file)->Stat();
  if (!st.ok()) {
    (*file)->Release();
    return ReplyStatus(req, st.status());
  }
  NodeId node = self.inodes_.Lookup(parent, name, *st, self.fs_.Versioned(*path));
  if (node == 0) {
    (*file)->Release();
    return (void)fuse_reply_err(req, ESTALE);
  }
  fuse_entry_param e;
  std::memset(&e, 0, sizeof(e));
  e.ino = node;
  e.attr = WithIno(*st, node);
  e.attr_timeout = self.options_.attr_timeout;
  e.entry_timeout = self.options_.entry_timeout;
  if (!self.ReplyOpen(req, node, std::move(*file), fi, &e)) self.inodes_.Forget(node, 1);
}

void Adapter::Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  // One buffer per worker thread, grown to the largest request it served
  // (at most kMaxRequestBytes): no allocation on the read path.
  thread_local std::vector<char> buffer;
  if (buffer.size() < size) buffer.resize(size);
  Result<size_t> n =
      HandleOf(fi)->file->Read(static_cast<uint64_t>(off), std::span<char>(buffer.data(), size));
  if (!n.ok()) return ReplyStatus(req, n.status());
  fuse_reply_buf(req, buffer.data(), *n);
}

void Adapter::Write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
                    fuse_file_info* fi) {
  Result<size_t> n =
      HandleOf(fi)->file->Write(static_cast<uint64_t>(off), std::span<const char>(buf, size));
  if (!n.ok()) return ReplyStatus(req, n.status());
  fuse_reply_write(req, *n);
}

void Adapter::Flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  // Writes are not cached in the kernel, so there is nothing of ours to
  // push; the file says what close(2) should report (a datastore's lost
  // write, say) and learns that a descriptor closed, and whether by the
  // process that opened it.
  const FileHandle& handle = *HandleOf(fi);
  const pid_t closer = ProcessOf(req);
  ReplyStatus(req,
              handle.file->Flush(handle.opener == 0 || closer == 0 || closer == handle.opener));
}

void Adapter::Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Self(req).ReleaseHandle(HandleOf(fi));
  fuse_reply_err(req, 0);
}

void Adapter::Fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  ReplyStatus(req, HandleOf(fi)->file->Fsync(datasync != 0));
}

void Adapter::Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                        fuse_file_info* fi) {
  ReplyStatus(req, HandleOf(fi)->file->Fallocate(mode, static_cast<uint64_t>(offset),
                                                 static_cast<uint64_t>(length)));
}

void Adapter::OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Adapter& self = Self(req);
  std::optional<std::string> path = self.inodes_.Path(ino);
  if (!path) return ReplyNoPath(req);
  Result<std::vector<DirEntry>> listing = self.fs_.ReadDir(*path);
  if (!listing.ok()) return ReplyStatus(req, listing.status());
  auto dir = std::make_unique<DirHandle>();
  dir->entries.reserve(listing->size() + 2);
  for (const char* dot : {".", ".."}) {
    DirEntry e;
    e.name = dot;
    std::memset(&e.st, 0, sizeof(e.st));
    e.st.st_mode = S_IFDIR;
    e.st.st_ino = kUnknownIno;
    dir->entries.push_back(std::move(e));
  }
  for (DirEntry& e : *listing) {
    if (IsDotOrDotDot(e.name)) continue;
    dir->entries.push_back(std::move(e));
  }
  fi->fh = reinterpret_cast<uintptr_t>(dir.get());
  if (fuse_reply_open(req, fi) == 0) dir.release();  // owned by the kernel until releasedir
}

void Adapter::DoReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
                        bool plus) {
  const DirHandle& dir = *DirHandleOf(fi);
  thread_local std::vector<char> buffer;
  if (buffer.size() < size) buffer.resize(size);
  size_t used = 0;
  std::vector<NodeId> counted;  // nodes whose lookup count this reply raised
  for (size_t i = static_cast<size_t>(std::max<off_t>(off, 0)); i < dir.entries.size(); ++i) {
    const DirEntry& entry = dir.entries[i];
    const off_t next = static_cast<off_t>(i + 1);
    char* out = buffer.data() + used;
    const size_t room = size - used;
    size_t len;
    if (!plus) {
      struct stat st = entry.st;
      if (st.st_ino == 0) st.st_ino = kUnknownIno;
      len = fuse_add_direntry(req, out, room, entry.name.c_str(), &st, next);
      if (len > room) break;
    } else {
      // Measure first: the lookup count may only be raised for an entry
      // that is really in the reply.
      len = fuse_add_direntry_plus(req, nullptr, 0, entry.name.c_str(), nullptr, next);
      if (len > room) break;
      fuse_entry_param e;
      std::memset(&e, 0, sizeof(e));
      // "." and ".." are never looked up (the kernel ignores them), and an
      // entry without attributes (st_mode 0) is passed as name only (ino 0):
      // the kernel then sends a LOOKUP of its own when it needs the entry.
      if (IsDotOrDotDot(entry.name) || entry.st.st_mode == 0) {
        e.attr.st_ino = entry.st.st_ino == 0 ? kUnknownIno : entry.st.st_ino;
        e.attr.st_mode = entry.st.st_mode;
      } else {
        // Attributes only for nodes the kernel does not know yet. For a known
        // node the snapshot may be older than what the kernel saw since (a
        // desktop extended its disk), and stale attributes would shrink its
        // i_size and drop its page cache; the kernel revalidates those itself.
        const std::optional<std::string> child = inodes_.ChildPath(ino, entry.name);
        const bool versioned = child && fs_.Versioned(*child);
        NodeId node = inodes_.LookupIfUnknown(ino, entry.name, entry.st, versioned);
        if (node != 0) {
          counted.push_back(node);
          e.ino = node;
          e.attr = WithIno(entry.st, node);
          e.attr_timeout = options_.attr_timeout;
          e.entry_timeout = options_.entry_timeout;
        } else {
          e.attr.st_ino = kUnknownIno;
          e.attr.st_mode = entry.st.st_mode;
        }
      }
      len = fuse_add_direntry_plus(req, out, room, entry.name.c_str(), &e, next);
    }
    used += len;
  }
  if (fuse_reply_buf(req, buffer.data(), used) != 0) {
    for (NodeId node : counted) inodes_.Forget(node, 1);
  }
}

void Adapter::ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Self(req).DoReadDir(req, ino, size, off, fi, /*plus=*/false);
}

void Adapter::ReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                          fuse_file_info* fi) {
  Self(req).DoReadDir(req, ino, size, off, fi, /*plus=*/true);
}

void Adapter::ReleaseDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  delete DirHandleOf(fi);
  fuse_reply_err(req, 0);
}

void Adapter::StatFs(fuse_req_t req, fuse_ino_t ino) {
  Adapter& self = Self(req);
  Result<struct statvfs> st = self.fs_.StatFs();
  if (st.ok()) {
    fuse_reply_statfs(req, &*st);
  } else {
    ReplyStatus(req, st.status());
  }
  // Mount::Exit wakes the session loop with a statfs(2) of the mountpoint;
  // ending the session only after replying keeps that caller from hanging.
  if (fuse_session* se = self.exit_session_.load(std::memory_order_acquire)) {
    fuse_session_exit(se);
  }
}

}  // namespace goldcache::fuse
