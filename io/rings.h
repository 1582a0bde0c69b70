// Local-store IO through io_uring: a caller hands a small batch of positional
// reads or writes (a chunk's data range plus its checksum table, say), and
// they go to the kernel in one submission.
//
// Rings are pooled: a call takes a free ring (creating one if none is free),
// so FUSE worker threads never share a ring and never wait for each other.
// Where io_uring is unavailable (old kernel, seccomp), the same calls fall
// back to pread/pwrite and uses_io_uring() says so.
//
// A ring whose submit or wait fails is never used again: it may hold SQEs
// the kernel never took or CQEs nobody reaped, which a later batch would
// take for its own. Run() first waits for every request the kernel did take
// (the caller's buffers must not be written after Run returns), then
// destroys the ring, does the rest with pread/pwrite, and counts the ring in
// the failure counter (goldcache_errors_total{kind="io_uring"}). A signal
// interrupting the wait is not a failure: the wait goes on.
//
// Thread safety: Run() is safe to call concurrently.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "metrics/metrics.h"
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
  // Where discarded rings are counted (none by default). `counter` must
  // outlive this object.
  void CountFailuresIn(metrics::Counter* counter) { failures_ = counter; }
  // Rings discarded after a failed submit or wait, since construction.
  uint64_t discarded_rings() const { return discarded_.load(std::memory_order_relaxed); }

 private:
  std::unique_ptr<io_uring> Acquire();
  void ReleaseRing(std::unique_ptr<io_uring> ring);
  // Sets *ring_failure when the ring must not be used again.
  Status RunOnRing(io_uring* ring, std::span<IoRequest> requests, Status* ring_failure);
  void DiscardRing(std::unique_ptr<io_uring> ring, const Status& why);

  const unsigned depth_;
  bool use_uring_ = true;
  std::mutex mu_;
  std::vector<std::unique_ptr<io_uring>> free_;  // GUARDED_BY(mu_)
  std::atomic<metrics::Counter*> failures_{nullptr};
  std::atomic<uint64_t> discarded_{0};
};

// Synchronous fallback, also used for the remainder of a short transfer.
Status RunWithSyscalls(std::span<IoRequest> requests);

}  // namespace goldcache::io
