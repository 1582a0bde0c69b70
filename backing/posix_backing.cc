// A datastore that is a directory of this host (in production a kernel NFS
// mount). Every operation resolves its path with an *at() call relative to
// one O_PATH descriptor of the root, so the datastore stays the same
// directory even if the mount point is later shadowed or renamed, and the
// last component of a path is never followed when it is a symlink.
//
// Limitation: symlinks in intermediate components are still followed by the
// kernel. The FUSE layer never produces such paths (it looks paths up one
// component at a time, with lstat semantics), so this is not a way out of the
// datastore for desktops; it only matters for callers that build paths by hand.

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <utility>

#include "backing/backing.h"

namespace goldcache::backing {
namespace {

// Flags the datastore must not see from a desktop's open():
// - O_DIRECT: alignment rules are the kernel NFS client's business, and the
//   cache reads in its own chunk sizes anyway;
// - O_APPEND: our IO is positional (pwrite ignores the offset under O_APPEND);
// - O_CREAT/O_EXCL: Open never creates, Create says so explicitly;
// - O_NOCTTY/O_NONBLOCK/O_ASYNC: meaningless for datastore files.
constexpr int kStrippedOpenFlags =
    O_DIRECT | O_APPEND | O_CREAT | O_EXCL | O_NOCTTY | O_NONBLOCK | O_ASYNC;

// "" names the root; *at() calls spell that ".".
const char* AtPath(const std::string& path) { return path.empty() ? "." : path.c_str(); }

class PosixFile final : public BackingFile {
 public:
  PosixFile(int fd, bool writable, std::string name)
      : fd_(fd), writable_(writable), name_(std::move(name)) {}
  ~PosixFile() override { ::close(fd_); }

  Result<size_t> ReadAt(uint64_t offset, std::span<char> buf) override {
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n =
          ::pread(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Error("read", errno);
      }
      if (n == 0) break;  // end of file
      done += static_cast<size_t>(n);
    }
    return done;
  }

  Result<size_t> ReadAtVersioned(uint64_t offset, std::span<char> buf,
                                 std::optional<FileVersion>* after) override {
    auto n = ReadAt(offset, buf);
    if (!n.ok()) return n;
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Error("fstat", errno);
    *after = VersionOf(st);
    return n;
  }

  Result<size_t> WriteAt(uint64_t offset, std::span<const char> buf) override {
    if (!writable_) {
      return Status::Error(Code::kReadOnly, "write " + name_ + ": opened read-only", EBADF);
    }
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n =
          ::pwrite(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Error("write", errno);
      }
      // pwrite returning 0 for a non-empty buffer would loop forever.
      if (n == 0) return Error("write", EIO);
      done += static_cast<size_t>(n);
    }
    return done;
  }

  Result<struct stat> Stat() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Error("fstat", errno);
    return st;
  }

  Status Sync(bool datasync) override {
    int rc = datasync ? ::fdatasync(fd_) : ::fsync(fd_);
    return rc == 0 ? Status::Ok() : Error(datasync ? "fdatasync" : "fsync", errno);
  }

  Status Flush() override {
    if (!writable_) return Status::Ok();
    // close(2) of a duplicate runs the file system's flush (NFS: write back
    // and report) without giving up our descriptor.
    int dup_fd = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) return Error("dup", errno);
    if (::close(dup_fd) != 0 && errno != EINTR) return Error("close", errno);
    return Status::Ok();
  }

  Status Truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) return Error("ftruncate", errno);
    return Status::Ok();
  }

  Status Allocate(int mode, uint64_t offset, uint64_t length) override {
    if (::fallocate(fd_, mode, static_cast<off_t>(offset), static_cast<off_t>(length)) != 0) {
      return Error("fallocate", errno);
    }
    return Status::Ok();
  }

 private:
  Status Error(const char* op, int err) const {
    return Status::FromErrno(err, std::string(op) + " " + name_);
  }

  const int fd_;
  const bool writable_;
  const std::string name_;  // "<path> on posix:<root>", for messages
};

class PosixBacking final : public Backing {
 public:
  PosixBacking(int root_fd, std::string root) : root_fd_(root_fd), root_(std::move(root)) {}
  ~PosixBacking() override { ::close(root_fd_); }

  Result<struct stat> Stat(const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    struct stat st;
    if (::fstatat(root_fd_, AtPath(path), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      return Error("stat", path, errno);
    }
    return st;
  }

  Result<std::vector<DirEntry>> ReadDir(const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    // An O_PATH descriptor cannot be read, so the directory gets its own.
    int fd = ::openat(root_fd_, AtPath(path), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return Error("opendir", path, errno);
    DIR* dir = ::fdopendir(fd);
    if (dir == nullptr) {
      int err = errno;
      ::close(fd);
      return Error("opendir", path, err);
    }
    std::vector<DirEntry> entries;
    Status status;
    while (true) {
      errno = 0;
      struct dirent* de = ::readdir(dir);
      if (de == nullptr) {
        if (errno != 0) status = Error("readdir", path, errno);
        break;
      }
      std::string_view name = de->d_name;
      if (name == "." || name == "..") continue;
      DirEntry entry;
      entry.name = de->d_name;
      if (::fstatat(::dirfd(dir), de->d_name, &entry.st, AT_SYMLINK_NOFOLLOW) != 0) {
        // Unlinked between readdir and lstat: as if it was never listed.
        if (errno == ENOENT) continue;
        status = Error("stat", Join(path, entry.name), errno);
        break;
      }
      entries.push_back(std::move(entry));
    }
    ::closedir(dir);
    if (!status.ok()) return status;
    return entries;
  }

  Result<std::string> ReadLink(const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    std::string target(256, '\0');
    while (true) {
      ssize_t n = ::readlinkat(root_fd_, AtPath(path), target.data(), target.size());
      if (n < 0) return Error("readlink", path, errno);
      if (static_cast<size_t>(n) < target.size()) {
        target.resize(static_cast<size_t>(n));
        return target;
      }
      target.resize(target.size() * 2);  // possibly truncated: retry larger
    }
  }

  Result<std::unique_ptr<BackingFile>> Open(const std::string& path, int flags) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    return OpenFile("open", path, (flags & ~kStrippedOpenFlags) | O_NOFOLLOW | O_CLOEXEC, 0);
  }

  Result<std::unique_ptr<BackingFile>> Create(const std::string& path, int flags,
                                              mode_t mode) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    if (path.empty()) return Error("create", path, EISDIR);
    int excl = flags & O_EXCL;
    return OpenFile("create", path,
                    (flags & ~kStrippedOpenFlags) | excl | O_CREAT | O_NOFOLLOW | O_CLOEXEC, mode);
  }

  Status Mkdir(const std::string& path, mode_t mode) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    if (::mkdirat(root_fd_, AtPath(path), mode) != 0) return Error("mkdir", path, errno);
    return Status::Ok();
  }

  Status Unlink(const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    if (::unlinkat(root_fd_, AtPath(path), 0) != 0) return Error("unlink", path, errno);
    return Status::Ok();
  }

  Status Rmdir(const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    if (::unlinkat(root_fd_, AtPath(path), AT_REMOVEDIR) != 0) return Error("rmdir", path, errno);
    return Status::Ok();
  }

  Status Rename(const std::string& from, const std::string& to, unsigned flags) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(from));
    GC_RETURN_IF_ERROR(CheckDatastorePath(to));
    if (::renameat2(root_fd_, AtPath(from), root_fd_, AtPath(to), flags) != 0) {
      return Error("rename", from + "\" -> \"" + to, errno);
    }
    return Status::Ok();
  }

  Status Symlink(const std::string& target, const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    // `target` is the link's content, not a path we resolve: stored verbatim.
    if (::symlinkat(target.c_str(), root_fd_, AtPath(path)) != 0) {
      return Error("symlink", path, errno);
    }
    return Status::Ok();
  }

  Status Link(const std::string& existing, const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(existing));
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    if (::linkat(root_fd_, AtPath(existing), root_fd_, AtPath(path), 0) != 0) {
      return Error("link", existing + "\" -> \"" + path, errno);
    }
    return Status::Ok();
  }

  Status Truncate(const std::string& path, uint64_t size) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    // There is no truncateat(); an O_NONBLOCK open cannot hang on a FIFO.
    int fd = ::openat(root_fd_, AtPath(path), O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return Error("truncate", path, errno);
    int rc = ::ftruncate(fd, static_cast<off_t>(size));
    int err = errno;
    ::close(fd);
    if (rc != 0) return Error("truncate", path, err);
    return Status::Ok();
  }

  Status Chmod(const std::string& path, mode_t mode) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    // NOFOLLOW so a symlink on the datastore can never redirect a chmod to a
    // file of this host; Linux answers EOPNOTSUPP for the symlink itself.
    if (::fchmodat(root_fd_, AtPath(path), mode, AT_SYMLINK_NOFOLLOW) != 0) {
      return Error("chmod", path, errno);
    }
    return Status::Ok();
  }

  Status Chown(const std::string& path, uid_t uid, gid_t gid) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    if (::fchownat(root_fd_, AtPath(path), uid, gid, AT_SYMLINK_NOFOLLOW) != 0) {
      return Error("chown", path, errno);
    }
    return Status::Ok();
  }

  Status Utimens(const std::string& path, const struct timespec times[2]) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    if (::utimensat(root_fd_, AtPath(path), times, AT_SYMLINK_NOFOLLOW) != 0) {
      return Error("utimens", path, errno);
    }
    return Status::Ok();
  }

  Result<struct statvfs> StatFs() override {
    struct statvfs st;
    if (::fstatvfs(root_fd_, &st) != 0) return Status::FromErrno(errno, "statfs " + Describe());
    return st;
  }

  std::string Describe() const override { return "posix:" + root_; }

 private:
  static std::string Join(const std::string& dir, const std::string& name) {
    return dir.empty() ? name : dir + "/" + name;
  }

  std::string Name(const std::string& path) const { return "\"" + path + "\" on " + Describe(); }

  Status Error(const char* op, const std::string& path, int err) const {
    return Status::FromErrno(err, std::string(op) + " " + Name(path));
  }

  Result<std::unique_ptr<BackingFile>> OpenFile(const char* op, const std::string& path, int flags,
                                                mode_t mode) {
    int fd;
    do {
      fd = ::openat(root_fd_, AtPath(path), flags, mode);
    } while (fd < 0 && errno == EINTR);  // NFS opens can be interrupted
    if (fd < 0) return Error(op, path, errno);
    bool writable = (flags & O_ACCMODE) != O_RDONLY;
    return std::unique_ptr<BackingFile>(std::make_unique<PosixFile>(fd, writable, Name(path)));
  }

  const int root_fd_;  // O_PATH | O_DIRECTORY
  const std::string root_;
};

}  // namespace

Result<std::unique_ptr<Backing>> OpenPosixBacking(const std::string& root) {
  if (root.empty()) {
    return Status::Error(Code::kInvalidArgument, "datastore root is empty", EINVAL);
  }
  int fd = ::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOTDIR) {
      return Status::Error(Code::kInvalidArgument,
                           "datastore root \"" + root + "\" is not a directory", err);
    }
    return Status::FromErrno(err, "open datastore root \"" + root + "\"");
  }
  return std::unique_ptr<Backing>(std::make_unique<PosixBacking>(fd, root));
}

}  // namespace goldcache::backing
