// Local-store IO through io_uring: a caller hands a small batch of positional
// reads or writes (a chunk's data range plus its checksum table, say), and
// they go to the kernel in one submission.
//
// Rings are pooled: a call takes a free ring (creating one if none is free),
// so FUSE worker threads never share a ring and never wait for each other.
// Where io_uring is unavailable (old kernel, seccomp), the same calls fall
// back to pread/pwrite and uses_io_uring() says so.
//
// Thread safety: Run() is safe to call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "util/status.h"

struct io_uring;

namespace goldcache::io {

struct IoRequest {
  int fd = -1;
  uint64_t offset = 0;
  void* buf = nullptr;
  size_t len = 0;
  bool write = false;
};

class IoRings {
 public:
  explicit IoRings(unsigned depth = 32);
  ~IoRings();
  IoRings(const IoRings&) = delete;
  IoRings& operator=(const IoRings&) = delete;

  // Performs every request completely (short transfers are resumed). Returns
  // the first error; requests are independent, so others may have completed.
  Status Run(std::span<IoRequest> requests);
  bool uses_io_uring() const { return use_uring_; }

 private:
  std::unique_ptr<io_uring> Acquire();
  void ReleaseRing(std::unique_ptr<io_uring> ring);
  Status RunOnRing(io_uring* ring, std::span<IoRequest> requests);

  const unsigned depth_;
  bool use_uring_ = true;
  std::mutex mu_;
  std::vector<std::unique_ptr<io_uring>> free_;  // GUARDED_BY(mu_)
};

// Synchronous fallback, also used for the remainder of a short transfer.
Status RunWithSyscalls(std::span<IoRequest> requests);

}  // namespace goldcache::io
