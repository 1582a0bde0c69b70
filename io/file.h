// io/ — the host's local files, behind one replaceable layer (leveldb's Env
// and RocksDB's FileSystem are the model). The local store and the overlay
// disk tier open every file through an Env, so that a test can swap in one
// that fails a chosen call, holds it on a latch, or cuts the power (see
// io/fault_env.h); the index reaches the same faults through its RocksDB
// adapter.
//
// Files are opened read-write, 0600, close-on-exec. Requests are positional;
// a batch given to File::Run goes to the kernel in one io_uring submission
// where io_uring works (PosixEnv), else one pread/pwrite each.
//
// Durability: a write is durable once a Sync() that started after it
// returned ok. A failed Sync() says some writes since the last good one may
// be lost; on Linux a later Sync() can report success without having
// written them, so callers treat a failed Sync as final (leveldb's
// background error), never retry and hope.
//
// Thread safety: Env and File methods are safe to call concurrently; callers
// keep concurrent writes to one range apart.
#pragma once

#include <sys/statvfs.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "metrics/metrics.h"
#include "util/status.h"

namespace goldcache::io {

// One positional read or write within a file.
struct Request {
  uint64_t offset = 0;
  void* buf = nullptr;
  size_t len = 0;
  bool write = false;
};

class File {
 public:
  virtual ~File() = default;
  File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  // Performs every request completely (short transfers are resumed). Returns
  // the first error; requests are independent, so others may have completed.
  // A read past the end of the file fails (kIoError).
  virtual Status Run(std::span<Request> requests) = 0;
  // See "Durability" above.
  virtual Status Sync() = 0;
  // Gives [offset, offset + length) back to the file system; it reads as zeros.
  virtual Status Punch(uint64_t offset, uint64_t length) = 0;
  virtual Status Truncate(uint64_t size) = 0;
  virtual const std::string& path() const = 0;

  Status ReadAt(uint64_t offset, std::span<char> out);
  Status WriteAt(uint64_t offset, std::span<const char> data);
};

class Env {
 public:
  virtual ~Env() = default;

  // `create`: make the file if it is missing; `truncate`: empty it.
  virtual Result<std::unique_ptr<File>> Open(const std::string& path, bool create,
                                             bool truncate) = 0;
  // Removing a file that is not there is ok.
  virtual Status Remove(const std::string& path) = 0;
  // Makes the directory's entries (files created, removed, renamed) durable.
  virtual Status SyncDir(const std::string& dir) = 0;
  virtual Result<struct statvfs> StatFs(const std::string& path) = 0;
};

// The real file system, with a pool of io_uring rings. Process-wide.
Env& PosixEnv();
// Where PosixEnv counts io_uring submissions or waits that failed (each is
// then done with pread/pwrite, and its ring discarded).
void CountIoUringFailuresIn(metrics::Counter* counter);

}  // namespace goldcache::io
