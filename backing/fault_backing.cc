#include "backing/fault_backing.h"

#include <cerrno>
#include <string>
#include <utility>
#include <vector>

namespace goldcache::backing {
namespace {

using io::Op;

class FaultFile final : public BackingFile {
 public:
  FaultFile(std::unique_ptr<BackingFile> inner, std::string path, io::FaultEnv& faults)
      : inner_(std::move(inner)), path_(std::move(path)), faults_(faults) {}

  Result<size_t> ReadAt(uint64_t offset, std::span<char> buf) override {
    return Read(buf, [&](std::span<char> b) { return inner_->ReadAt(offset, b); });
  }
  Result<size_t> ReadAtVersioned(uint64_t offset, std::span<char> buf,
                                 std::optional<FileVersion>* after) override {
    *after = std::nullopt;
    return Read(buf, [&](std::span<char> b) { return inner_->ReadAtVersioned(offset, b, after); });
  }
  Result<size_t> WriteAt(uint64_t offset, std::span<const char> buf) override {
    const io::FaultEnv::Action a = faults_.Decide(Op::kWrite, path_);
    if (a.short_write) {
      // Half of it reaches the datastore: what a filer that fills up leaves.
      if (buf.size() / 2 > 0) (void)inner_->WriteAt(offset, buf.first(buf.size() / 2));
      return io::FaultEnv::ErrorFor(Op::kWrite, path_, a.error != 0 ? a.error : ENOSPC);
    }
    if (a.error != 0) return io::FaultEnv::ErrorFor(Op::kWrite, path_, a.error);
    return inner_->WriteAt(offset, buf);
  }
  Result<struct stat> Stat() override { return inner_->Stat(); }
  Status Sync(bool datasync) override {
    GC_RETURN_IF_ERROR(faults_.Check(Op::kSync, path_));
    return inner_->Sync(datasync);
  }
  Status Flush() override {
    GC_RETURN_IF_ERROR(faults_.Check(Op::kSync, path_));
    return inner_->Flush();
  }
  Status Truncate(uint64_t size) override { return inner_->Truncate(size); }
  Status Allocate(int mode, uint64_t offset, uint64_t length) override {
    return inner_->Allocate(mode, offset, length);
  }

 private:
  template <typename Fn>
  Result<size_t> Read(std::span<char> buf, Fn read) {
    const io::FaultEnv::Action a = faults_.Decide(Op::kRead, path_);
    if (a.error != 0) return io::FaultEnv::ErrorFor(Op::kRead, path_, a.error);
    Result<size_t> n = read(buf);
    // Short: the bytes are real, only fewer, as where the file ended there.
    if (n.ok() && a.short_write) return *n / 2;
    return n;
  }

  const std::unique_ptr<BackingFile> inner_;
  const std::string path_;
  io::FaultEnv& faults_;
};

class FaultBacking final : public Backing {
 public:
  FaultBacking(std::unique_ptr<Backing> inner, io::FaultEnv& faults)
      : inner_(std::move(inner)), faults_(faults) {}

  Result<std::unique_ptr<BackingFile>> Open(const std::string& path, int flags) override {
    GC_RETURN_IF_ERROR(faults_.Check(Op::kOpen, path));
    return Wrap(path, inner_->Open(path, flags));
  }
  Result<std::unique_ptr<BackingFile>> Create(const std::string& path, int flags,
                                              mode_t mode) override {
    GC_RETURN_IF_ERROR(faults_.Check(Op::kOpen, path));
    return Wrap(path, inner_->Create(path, flags, mode));
  }

  Result<struct stat> Stat(const std::string& path) override { return inner_->Stat(path); }
  Result<std::vector<DirEntry>> ReadDir(const std::string& path) override {
    return inner_->ReadDir(path);
  }
  Result<std::string> ReadLink(const std::string& path) override { return inner_->ReadLink(path); }
  Status Mkdir(const std::string& path, mode_t mode) override { return inner_->Mkdir(path, mode); }
  Status Unlink(const std::string& path) override { return inner_->Unlink(path); }
  Status Rmdir(const std::string& path) override { return inner_->Rmdir(path); }
  Status Rename(const std::string& from, const std::string& to, unsigned flags) override {
    return inner_->Rename(from, to, flags);
  }
  Status Symlink(const std::string& target, const std::string& path) override {
    return inner_->Symlink(target, path);
  }
  Status Link(const std::string& existing, const std::string& path) override {
    return inner_->Link(existing, path);
  }
  Status Truncate(const std::string& path, uint64_t size) override {
    return inner_->Truncate(path, size);
  }
  Status Chmod(const std::string& path, mode_t mode) override { return inner_->Chmod(path, mode); }
  Status Chown(const std::string& path, uid_t uid, gid_t gid) override {
    return inner_->Chown(path, uid, gid);
  }
  Status Utimens(const std::string& path, const struct timespec times[2]) override {
    return inner_->Utimens(path, times);
  }
  Result<struct statvfs> StatFs() override { return inner_->StatFs(); }
  std::string Describe() const override { return "faults+" + inner_->Describe(); }

 private:
  Result<std::unique_ptr<BackingFile>> Wrap(const std::string& path,
                                            Result<std::unique_ptr<BackingFile>> r) {
    if (!r.ok()) return r;
    return std::unique_ptr<BackingFile>(std::make_unique<FaultFile>(std::move(*r), path, faults_));
  }

  const std::unique_ptr<Backing> inner_;
  io::FaultEnv& faults_;
};

}  // namespace

std::unique_ptr<Backing> MakeFaultBacking(std::unique_ptr<Backing> inner, io::FaultEnv& faults) {
  return std::make_unique<FaultBacking>(std::move(inner), faults);
}

}  // namespace goldcache::backing
