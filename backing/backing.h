// backing/ — access to a datastore: the shared NFS storage that holds VM disk
// files. Every byte goldcache reads from or writes to shared storage passes
// through a Backing, which makes it the one place to count datastore traffic
// and the one place that could write shared storage (invariant 4: the
// nonpersistent role only ever opens datastore files read-only).
//
// Paths are relative to the datastore root: "" is the root, components are
// separated by '/', there is never a leading '/', "." or "..".
//
// Thread safety: a Backing and a BackingFile are safe for concurrent use from
// many threads without external synchronization (positional IO only).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "util/status.h"

namespace goldcache::backing {

// What identifies a datastore file's content from outside: a file whose
// version changed may have other bytes.
struct FileVersion {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint64_t ino = 0;
  bool operator==(const FileVersion&) const = default;
};
FileVersion VersionOf(const struct stat& st);

// An open file on the datastore.
class BackingFile {
 public:
  virtual ~BackingFile() = default;
  BackingFile() = default;
  BackingFile(const BackingFile&) = delete;
  BackingFile& operator=(const BackingFile&) = delete;

  // Reads up to buf.size() bytes at `offset`. Returns the byte count, which is
  // short only at end of file. Retries short reads and EINTR internally.
  virtual Result<size_t> ReadAt(uint64_t offset, std::span<char> buf) = 0;
  // ReadAt, and the file's version right after the read where that costs
  // no extra round trip to the filer: NFS READ replies carry it; a local
  // fstat is cheap. nullopt where it is not known.
  virtual Result<size_t> ReadAtVersioned(uint64_t offset, std::span<char> buf,
                                         std::optional<FileVersion>* after) {
    *after = std::nullopt;
    return ReadAt(offset, buf);
  }
  // Writes all of `buf` at `offset`. kReadOnly when opened without write access.
  virtual Result<size_t> WriteAt(uint64_t offset, std::span<const char> buf) = 0;
  // Attributes of the open file (fstat): what the datastore says now.
  virtual Result<struct stat> Stat() = 0;
  virtual Status Sync(bool datasync) = 0;
  // What close(2) of the file would report: a kernel NFS mount writes back
  // dirty pages at close and reports ENOSPC, EDQUOT or EIO there; nfs://
  // commits unstable writes. Nothing to do (Ok) for a file opened read-only.
  virtual Status Flush() = 0;
  virtual Status Truncate(uint64_t size) = 0;
  virtual Status Allocate(int mode, uint64_t offset, uint64_t length) = 0;
};

struct DirEntry {
  std::string name;
  struct stat st;  // lstat of the entry
};

class Backing {
 public:
  virtual ~Backing() = default;
  Backing() = default;
  Backing(const Backing&) = delete;
  Backing& operator=(const Backing&) = delete;

  // lstat semantics: a symlink is reported as a symlink.
  virtual Result<struct stat> Stat(const std::string& path) = 0;
  // Entries of a directory, without "." and "..".
  virtual Result<std::vector<DirEntry>> ReadDir(const std::string& path) = 0;
  virtual Result<std::string> ReadLink(const std::string& path) = 0;
  // `flags` are open(2) flags; O_DIRECT, O_CREAT and O_EXCL are ignored here
  // (the local page cache of an NFS mount is the datastore's business).
  virtual Result<std::unique_ptr<BackingFile>> Open(const std::string& path, int flags) = 0;
  // Creates a regular file (O_CREAT is implied; O_EXCL honoured) and opens it.
  virtual Result<std::unique_ptr<BackingFile>> Create(const std::string& path, int flags,
                                                      mode_t mode) = 0;
  virtual Status Mkdir(const std::string& path, mode_t mode) = 0;
  virtual Status Unlink(const std::string& path) = 0;
  virtual Status Rmdir(const std::string& path) = 0;
  // `flags` as renameat2(2): 0, RENAME_NOREPLACE or RENAME_EXCHANGE.
  virtual Status Rename(const std::string& from, const std::string& to, unsigned flags) = 0;
  virtual Status Symlink(const std::string& target, const std::string& path) = 0;
  virtual Status Link(const std::string& existing, const std::string& path) = 0;
  virtual Status Truncate(const std::string& path, uint64_t size) = 0;
  virtual Status Chmod(const std::string& path, mode_t mode) = 0;
  virtual Status Chown(const std::string& path, uid_t uid, gid_t gid) = 0;
  // times[0] = atime, times[1] = mtime; UTIME_NOW / UTIME_OMIT honoured.
  virtual Status Utimens(const std::string& path, const struct timespec times[2]) = 0;
  virtual Result<struct statvfs> StatFs() = 0;
  // For logs and /stats, e.g. "posix:/mnt/nfs/ds1".
  virtual std::string Describe() const = 0;
};

// Rejects what the paths above never are (absolute, "." or "..", empty or
// trailing components), so a bug elsewhere cannot reach outside the
// datastore. kInvalidArgument (EINVAL) naming the path.
Status CheckDatastorePath(const std::string& path);

// A datastore that is a local directory, in production a kernel NFS mount.
// Fails with kNotFound / kInvalidArgument when `root` is missing or not a
// directory; the message names `root`.
Result<std::unique_ptr<Backing>> OpenPosixBacking(const std::string& root);

}  // namespace goldcache::backing
