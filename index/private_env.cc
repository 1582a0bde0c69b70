#include "index/private_env.h"

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

namespace goldcache::index {
namespace {

using rocksdb::FileOptions;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;

// chmod after create: RocksDB's POSIX file system picks the mode itself.
// The file lives in the cache dir, which is 0700 already, so the moment in
// between exposes nothing.
IOStatus MakePrivate(const std::string& path, mode_t mode, IOStatus created) {
  if (created.ok() && chmod(path.c_str(), mode) != 0) {
    return IOStatus::IOError("cannot make " + path + " owner-only: " + std::strerror(errno));
  }
  return created;
}

class PrivateFs : public rocksdb::FileSystemWrapper {
 public:
  explicit PrivateFs(const std::shared_ptr<rocksdb::FileSystem>& base) : FileSystemWrapper(base) {}
  const char* Name() const override { return "GoldcachePrivateFileSystem"; }

  IOStatus NewWritableFile(const std::string& f, const FileOptions& o,
                           std::unique_ptr<rocksdb::FSWritableFile>* r,
                           IODebugContext* dbg) override {
    return MakePrivate(f, 0600, target()->NewWritableFile(f, o, r, dbg));
  }
  IOStatus ReopenWritableFile(const std::string& f, const FileOptions& o,
                              std::unique_ptr<rocksdb::FSWritableFile>* r,
                              IODebugContext* dbg) override {
    return MakePrivate(f, 0600, target()->ReopenWritableFile(f, o, r, dbg));
  }
  IOStatus ReuseWritableFile(const std::string& f, const std::string& old, const FileOptions& o,
                             std::unique_ptr<rocksdb::FSWritableFile>* r,
                             IODebugContext* dbg) override {
    return MakePrivate(f, 0600, target()->ReuseWritableFile(f, old, o, r, dbg));
  }
  IOStatus NewRandomRWFile(const std::string& f, const FileOptions& o,
                           std::unique_ptr<rocksdb::FSRandomRWFile>* r,
                           IODebugContext* dbg) override {
    return MakePrivate(f, 0600, target()->NewRandomRWFile(f, o, r, dbg));
  }
  IOStatus LockFile(const std::string& f, const IOOptions& o, rocksdb::FileLock** l,
                    IODebugContext* dbg) override {
    return MakePrivate(f, 0600, target()->LockFile(f, o, l, dbg));
  }
  IOStatus NewLogger(const std::string& f, const IOOptions& o, std::shared_ptr<rocksdb::Logger>* r,
                     IODebugContext* dbg) override {
    return MakePrivate(f, 0600, target()->NewLogger(f, o, r, dbg));
  }
  IOStatus CreateDir(const std::string& d, const IOOptions& o, IODebugContext* dbg) override {
    return MakePrivate(d, 0700, target()->CreateDir(d, o, dbg));
  }
  IOStatus CreateDirIfMissing(const std::string& d, const IOOptions& o,
                              IODebugContext* dbg) override {
    return MakePrivate(d, 0700, target()->CreateDirIfMissing(d, o, dbg));
  }
};

}  // namespace

std::shared_ptr<rocksdb::FileSystem> PrivateFileSystem() {
  static auto fs = std::make_shared<PrivateFs>(rocksdb::FileSystem::Default());
  return fs;
}

rocksdb::Env* PrivateFilesEnv() {
  static rocksdb::Env* env = rocksdb::NewCompositeEnv(PrivateFileSystem()).release();
  return env;
}

}  // namespace goldcache::index
