// fuse/ — the FUSE low-level adapter. It owns the kernel side: inode numbers,
// lookup counts, request decoding, errno, mount options. It knows nothing of
// roles, caching or RocksDB: it serves a FileSystem, a path-level view that
// the agent implements by dispatching every path to its role.
//
// Paths given to a FileSystem are relative to the mount root: "" is the root,
// components separated by '/', no leading '/'.
//
// Thread safety: the adapter calls a FileSystem and its OpenFiles from many
// threads at once; implementations synchronize internally. The adapter never
// calls an OpenFile after Release() returned.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "util/status.h"

namespace goldcache::fuse {

// How the kernel's page cache may serve one open handle.
enum class PageCache {
  kKeep,    // pages cached by earlier opens of the file are still good
  kDrop,    // the file's cached pages and attributes are dropped before this
            // open is answered; the handle then uses the page cache
  kBypass,  // the handle never uses the page cache (direct_io): every read
            // reaches the FileSystem; pages other handles cached stay
};

// An open file: one per successful open/create, released once.
class OpenFile {
 public:
  virtual ~OpenFile() = default;
  OpenFile() = default;
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;

  // Reads up to buf.size() bytes at `offset`; short only at end of file.
  virtual Result<size_t> Read(uint64_t offset, std::span<char> buf) = 0;
  // Writes all of `buf` at `offset`; returns buf.size() on success.
  virtual Result<size_t> Write(uint64_t offset, std::span<const char> buf) = 0;
  virtual Status Fsync(bool datasync) = 0;
  // fallocate(2) with `mode` (0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE|KEEP_SIZE, ...).
  virtual Status Fallocate(int mode, uint64_t offset, uint64_t length) = 0;
  // Attributes as seen through this handle (size may differ from the datastore's).
  virtual Result<struct stat> Stat() = 0;
  virtual Status Truncate(uint64_t size) = 0;
  // Decided at open, for the handle's whole life (e.g. kDrop for a new
  // template generation, kBypass while two generations are open at once).
  virtual PageCache PageCachePolicy() const = 0;
  // close(2) of a file descriptor of this handle (every close, also of a
  // dup'ed descriptor; the handle lives on until Release). Its error is
  // close(2)'s result: a datastore that reports a lost write at close
  // (ENOSPC, EDQUOT, EIO on NFS) must say so here. `by_opener`: the closing
  // process is the one that opened the handle (false for a descriptor that
  // a forked child inherited and closed, at exec or exit: the handle is
  // still open in its opener).
  virtual Status Flush(bool by_opener) { return Status::Ok(); }
  // Called once when the last reference from the kernel goes away. The
  // kernel sends it after close(2) returned, so an open of the same file may
  // arrive before it.
  virtual void Release() = 0;
};

struct DirEntry {
  std::string name;
  struct stat st;  // as GetAttr would return; st_mode 0 if unknown (name-only entry)
};

// What setattr asks for; unset members stay unchanged.
struct SetAttrRequest {
  std::optional<mode_t> mode;
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  std::optional<uint64_t> size;
  std::optional<struct timespec> atime;  // tv_nsec may be UTIME_NOW
  std::optional<struct timespec> mtime;  // tv_nsec may be UTIME_NOW
};

// What a FileSystem may ask of the kernel's caches, through the adapter.
// Thread safety: safe to call from any thread.
class KernelCache {
 public:
  virtual ~KernelCache() = default;
  // Drops the kernel's cached attributes and page-cache contents of the file
  // at `path`, if the kernel knows that file; returns once the kernel did.
  // Must not be called while handling a request on that file that the kernel
  // serves under the file's inode lock (write, setattr); open, flush,
  // release and requests on other files are fine.
  virtual void InvalidateFile(const std::string& path) = 0;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // The mount attaches its KernelCache once the kernel can be told things,
  // and detaches it (nullptr) before it goes away.
  virtual void AttachKernelCache(KernelCache* kernel) {}

  // lstat semantics. The adapter assigns node ids but recognizes a file by
  // (st_dev, st_ino): two live files must not share a non-zero pair, and one
  // file should keep its pair (hard links share it). st_ino 0: "unknown".
  virtual Result<struct stat> GetAttr(const std::string& path) = 0;
  // Whether the file at `path` changes only behind the mount, never through
  // it (a template): then any change of its size, mtime or ctime makes it
  // another file for the kernel, a new node, so that handles open on the old
  // version keep its size and pages and new opens get the new one. Cheap and
  // pure (no IO). False: one node follows the file through its changes.
  virtual bool Versioned(const std::string& path) { return false; }
  virtual Result<std::vector<DirEntry>> ReadDir(const std::string& path) = 0;
  virtual Result<std::string> ReadLink(const std::string& path) = 0;
  // `flags` are the open(2) flags the kernel passed (O_ACCMODE, O_TRUNC, O_DIRECT, ...).
  virtual Result<std::unique_ptr<OpenFile>> Open(const std::string& path, int flags) = 0;
  virtual Result<std::unique_ptr<OpenFile>> Create(const std::string& path, int flags,
                                                   mode_t mode) = 0;
  virtual Result<struct stat> Mkdir(const std::string& path, mode_t mode) = 0;
  virtual Status Unlink(const std::string& path) = 0;
  virtual Status Rmdir(const std::string& path) = 0;
  virtual Status Rename(const std::string& from, const std::string& to, unsigned flags) = 0;
  virtual Result<struct stat> Symlink(const std::string& target, const std::string& path) = 0;
  virtual Result<struct stat> Link(const std::string& existing, const std::string& path) = 0;
  // `file` is the open handle when the kernel supplied one (ftruncate), else null.
  virtual Result<struct stat> SetAttr(const std::string& path, const SetAttrRequest& req,
                                      OpenFile* file) = 0;
  virtual Result<struct statvfs> StatFs() = 0;
};

}  // namespace goldcache::fuse
