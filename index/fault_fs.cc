#include "index/fault_fs.h"

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <string>

#include "index/private_env.h"
#include "io/fault_env.h"

namespace goldcache::index {
namespace {

using rocksdb::FileOptions;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Slice;

// What the faults say of a call on `path`, as RocksDB's status.
IOStatus Checked(io::FaultEnv& faults, io::Op op, const std::string& path) {
  Status st = faults.Check(op, path);
  return st.ok() ? IOStatus::OK() : IOStatus::IOError(st.ToString());
}

// What a power cut keeps of each file written through the Env.
class Ledger {
 public:
  struct File {
    uint64_t size = 0;    // bytes appended
    uint64_t synced = 0;  // of which covered by a sync
  };
  void Start(const std::string& path, uint64_t size) {
    std::lock_guard lock(mu_);
    files_[path] = File{size, size};
  }
  void Appended(const std::string& path, uint64_t n) {
    std::lock_guard lock(mu_);
    files_[path].size += n;
  }
  void Truncated(const std::string& path, uint64_t size) {
    std::lock_guard lock(mu_);
    File& f = files_[path];
    f.size = size;
    f.synced = std::min(f.synced, size);
  }
  void Synced(const std::string& path) {
    std::lock_guard lock(mu_);
    File& f = files_[path];
    f.synced = f.size;
  }
  void Renamed(const std::string& from, const std::string& to) {
    std::lock_guard lock(mu_);
    auto it = files_.find(from);
    if (it == files_.end()) return;
    files_[to] = it->second;
    files_.erase(from);
  }
  void Removed(const std::string& path) {
    std::lock_guard lock(mu_);
    files_.erase(path);
  }
  // The power cut: each file back to what its syncs covered.
  void Cut() {
    std::lock_guard lock(mu_);
    for (const auto& [path, f] : files_) {
      if (f.size > f.synced) (void)::truncate(path.c_str(), static_cast<off_t>(f.synced));
    }
  }

 private:
  std::mutex mu_;
  std::map<std::string, File> files_;  // GUARDED_BY(mu_)
};

class FaultWritableFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultWritableFile(std::unique_ptr<rocksdb::FSWritableFile> file, std::string path,
                    io::FaultEnv& faults, Ledger& ledger)
      : FSWritableFileOwnerWrapper(std::move(file)),
        path_(std::move(path)),
        faults_(faults),
        ledger_(ledger) {}

  IOStatus Append(const Slice& data, const IOOptions& o, IODebugContext* dbg) override {
    return Appending(data.size(), [&] { return target()->Append(data, o, dbg); });
  }
  IOStatus Append(const Slice& data, const IOOptions& o, const rocksdb::DataVerificationInfo& info,
                  IODebugContext* dbg) override {
    return Appending(data.size(), [&] { return target()->Append(data, o, info, dbg); });
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& o,
                            IODebugContext* dbg) override {
    return Appending(data.size(), [&] { return target()->PositionedAppend(data, offset, o, dbg); });
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& o,
                            const rocksdb::DataVerificationInfo& info,
                            IODebugContext* dbg) override {
    return Appending(data.size(),
                     [&] { return target()->PositionedAppend(data, offset, o, info, dbg); });
  }
  IOStatus Truncate(uint64_t size, const IOOptions& o, IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kTruncate, path_); !c.ok()) return c;
    IOStatus s = target()->Truncate(size, o, dbg);
    if (s.ok()) ledger_.Truncated(path_, size);
    return s;
  }
  IOStatus Sync(const IOOptions& o, IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kSync, path_); !c.ok()) return c;
    IOStatus s = target()->Sync(o, dbg);
    if (s.ok()) ledger_.Synced(path_);
    return s;
  }
  IOStatus Fsync(const IOOptions& o, IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kSync, path_); !c.ok()) return c;
    IOStatus s = target()->Fsync(o, dbg);
    if (s.ok()) ledger_.Synced(path_);
    return s;
  }
  // A range sync is a hint (sync_file_range): it promises nothing durable.
  IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const IOOptions& o,
                     IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kSync, path_); !c.ok()) return c;
    return target()->RangeSync(offset, nbytes, o, dbg);
  }

 private:
  // Every append: as the faults say, then `n` more bytes not yet synced.
  template <typename Write>
  IOStatus Appending(size_t n, Write&& write) {
    if (IOStatus c = Checked(faults_, io::Op::kWrite, path_); !c.ok()) return c;
    IOStatus s = write();
    if (s.ok()) ledger_.Appended(path_, n);
    return s;
  }

  const std::string path_;
  io::FaultEnv& faults_;
  Ledger& ledger_;
};

class FaultFileSystem : public rocksdb::FileSystemWrapper {
 public:
  FaultFileSystem(std::shared_ptr<rocksdb::FileSystem> base, io::FaultEnv& faults)
      : FileSystemWrapper(std::move(base)), faults_(faults), ledger_(std::make_shared<Ledger>()) {
    // The FaultEnv outlives the test's caches; the ledger outlives both.
    faults_.OnPowerCut([ledger = ledger_] { ledger->Cut(); });
  }
  const char* Name() const override { return "GoldcacheFaultFileSystem"; }

  IOStatus NewWritableFile(const std::string& f, const FileOptions& o,
                           std::unique_ptr<rocksdb::FSWritableFile>* r,
                           IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kOpen, f); !c.ok()) return c;
    IOStatus s = target()->NewWritableFile(f, o, r, dbg);
    if (s.ok()) Wrap(f, 0, r);
    return s;
  }
  IOStatus ReopenWritableFile(const std::string& f, const FileOptions& o,
                              std::unique_ptr<rocksdb::FSWritableFile>* r,
                              IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kOpen, f); !c.ok()) return c;
    uint64_t size = 0;
    (void)target()->GetFileSize(f, IOOptions(), &size, dbg);
    IOStatus s = target()->ReopenWritableFile(f, o, r, dbg);
    if (s.ok()) Wrap(f, size, r);
    return s;
  }
  IOStatus ReuseWritableFile(const std::string& f, const std::string& old, const FileOptions& o,
                             std::unique_ptr<rocksdb::FSWritableFile>* r,
                             IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kOpen, f); !c.ok()) return c;
    IOStatus s = target()->ReuseWritableFile(f, old, o, r, dbg);
    if (s.ok()) {
      ledger_->Removed(old);
      Wrap(f, 0, r);
    }
    return s;
  }
  IOStatus NewSequentialFile(const std::string& f, const FileOptions& o,
                             std::unique_ptr<rocksdb::FSSequentialFile>* r,
                             IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kOpen, f); !c.ok()) return c;
    return target()->NewSequentialFile(f, o, r, dbg);
  }
  IOStatus NewRandomAccessFile(const std::string& f, const FileOptions& o,
                               std::unique_ptr<rocksdb::FSRandomAccessFile>* r,
                               IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kOpen, f); !c.ok()) return c;
    return target()->NewRandomAccessFile(f, o, r, dbg);
  }
  IOStatus DeleteFile(const std::string& f, const IOOptions& o, IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kRemove, f); !c.ok()) return c;
    IOStatus s = target()->DeleteFile(f, o, dbg);
    if (s.ok()) ledger_->Removed(f);
    return s;
  }
  IOStatus RenameFile(const std::string& from, const std::string& to, const IOOptions& o,
                      IODebugContext* dbg) override {
    if (IOStatus c = Checked(faults_, io::Op::kSyncDir, to); !c.ok())
      return c;  // a directory change, as a dir sync is
    IOStatus s = target()->RenameFile(from, to, o, dbg);
    if (s.ok()) ledger_->Renamed(from, to);
    return s;
  }

 private:
  void Wrap(const std::string& path, uint64_t size, std::unique_ptr<rocksdb::FSWritableFile>* r) {
    ledger_->Start(path, size);
    *r = std::make_unique<FaultWritableFile>(std::move(*r), path, faults_, *ledger_);
  }

  io::FaultEnv& faults_;
  std::shared_ptr<Ledger> ledger_;
};

}  // namespace

std::shared_ptr<rocksdb::Env> NewFaultFilesEnv(io::FaultEnv& faults) {
  auto fs = std::make_shared<FaultFileSystem>(PrivateFileSystem(), faults);
  return std::shared_ptr<rocksdb::Env>(rocksdb::NewCompositeEnv(fs).release());
}

}  // namespace goldcache::index
