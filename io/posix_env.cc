// PosixEnv: files of the local file system, batches through io/rings.h.

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vector>

#include "io/file.h"
#include "io/rings.h"

namespace goldcache::io {

Status File::ReadAt(uint64_t offset, std::span<char> out) {
  Request r{offset, out.data(), out.size(), false};
  return Run(std::span(&r, 1));
}

Status File::WriteAt(uint64_t offset, std::span<const char> data) {
  Request r{offset, const_cast<char*>(data.data()), data.size(), true};
  return Run(std::span(&r, 1));
}

namespace {

class PosixFile final : public File {
 public:
  PosixFile(int fd, std::string path, IoRings& rings)
      : fd_(fd), path_(std::move(path)), rings_(rings) {}
  ~PosixFile() override { ::close(fd_); }

  Status Run(std::span<Request> requests) override {
    std::vector<IoRequest> reqs;
    reqs.reserve(requests.size());
    for (const Request& r : requests) reqs.push_back({fd_, r.offset, r.buf, r.len, r.write});
    Status st = rings_.Run(reqs);
    if (!st.ok()) return Status::Error(st.code(), path_ + ": " + st.message(), st.os_errno());
    return st;
  }

  Status Sync() override {
    if (::fdatasync(fd_) != 0) return Status::FromErrno(errno, "syncing " + path_);
    return Status::Ok();
  }

  Status Punch(uint64_t offset, uint64_t length) override {
    if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                    static_cast<off_t>(length)) != 0) {
      return Status::FromErrno(errno, "punching " + std::to_string(length) + " bytes at " +
                                          std::to_string(offset) + " of " + path_);
    }
    return Status::Ok();
  }

  Status Truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return Status::FromErrno(errno, "sizing " + path_);
    }
    return Status::Ok();
  }

  const std::string& path() const override { return path_; }

 private:
  const int fd_;
  const std::string path_;
  IoRings& rings_;
};

class Posix final : public Env {
 public:
  Result<std::unique_ptr<File>> Open(const std::string& path, bool create, bool truncate) override {
    int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0) | (truncate ? O_TRUNC : 0);
    int fd = ::open(path.c_str(), flags, 0600);
    if (fd < 0) return Status::FromErrno(errno, "opening " + path);
    return std::unique_ptr<File>(new PosixFile(fd, path, rings_));
  }

  Status Remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return Status::FromErrno(errno, "removing " + path);
    }
    return Status::Ok();
  }

  Status SyncDir(const std::string& dir) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, "opening " + dir);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    return rc == 0 ? Status::Ok() : Status::FromErrno(err, "syncing " + dir);
  }

  IoRings& rings() { return rings_; }

  Result<struct statvfs> StatFs(const std::string& path) override {
    struct statvfs st;
    if (::statvfs(path.c_str(), &st) != 0) return Status::FromErrno(errno, "statvfs " + path);
    return st;
  }

 private:
  IoRings rings_;
};

}  // namespace

namespace {
Posix& ThePosix() {
  static Posix* env = new Posix();  // never destroyed: files may outlive static destruction
  return *env;
}
}  // namespace

Env& PosixEnv() { return ThePosix(); }

void CountIoUringFailuresIn(metrics::Counter* counter) {
  ThePosix().rings().CountFailuresIn(counter);
}

}  // namespace goldcache::io
