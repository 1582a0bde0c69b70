#include "io/rings.h"

#include <liburing.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace goldcache::io {

IoRings::IoRings(unsigned depth) : depth_(depth) {
  auto ring = Acquire();
  if (ring) {
    ReleaseRing(std::move(ring));
  } else {
    use_uring_ = false;
    spdlog::warn("io_uring is unavailable; the local store uses pread/pwrite");
  }
}

IoRings::~IoRings() {
  for (auto& ring : free_) io_uring_queue_exit(ring.get());
}

std::unique_ptr<io_uring> IoRings::Acquire() {
  {
    std::lock_guard lock(mu_);
    if (!free_.empty()) {
      auto ring = std::move(free_.back());
      free_.pop_back();
      return ring;
    }
  }
  auto ring = std::make_unique<io_uring>();
  int rc = io_uring_queue_init(depth_, ring.get(), 0);
  if (rc < 0) {
    spdlog::debug("io_uring_queue_init: {}", std::strerror(-rc));
    return nullptr;
  }
  return ring;
}

void IoRings::ReleaseRing(std::unique_ptr<io_uring> ring) {
  std::lock_guard lock(mu_);
  free_.push_back(std::move(ring));
}

Status IoRings::Run(std::span<IoRequest> requests) {
  if (!use_uring_ || requests.size() > depth_) return RunWithSyscalls(requests);
  auto ring = Acquire();
  if (!ring) return RunWithSyscalls(requests);
  Status ring_failure;
  Status st = RunOnRing(ring.get(), requests, &ring_failure);
  if (ring_failure.ok()) {
    ReleaseRing(std::move(ring));
  } else {
    DiscardRing(std::move(ring), ring_failure);
  }
  return st;
}

void IoRings::DiscardRing(std::unique_ptr<io_uring> ring, const Status& why) {
  io_uring_queue_exit(ring.get());
  uint64_t n = discarded_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (metrics::Counter* counter = failures_.load()) counter->Add();
  spdlog::warn(
      "local store: {}; destroyed that io_uring ring and did its requests with pread/pwrite "
      "({} rings discarded so far: goldcache_errors_total{{kind=\"io_uring\"}})",
      why.message(), n);
}

Status IoRings::RunOnRing(io_uring* ring, std::span<IoRequest> requests, Status* ring_failure) {
  for (size_t i = 0; i < requests.size(); ++i) {
    const IoRequest& r = requests[i];
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    if (sqe == nullptr) {
      // Cannot happen on a ring that only ever ran whole batches; nothing
      // was submitted yet.
      *ring_failure = Status::Error(Code::kIoError, "io_uring ring has no free SQE");
      return RunWithSyscalls(requests);
    }
    if (r.write) {
      io_uring_prep_write(sqe, r.fd, r.buf, r.len, r.offset);
    } else {
      io_uring_prep_read(sqe, r.fd, r.buf, r.len, r.offset);
    }
    io_uring_sqe_set_data64(sqe, i);
  }
  // Submit, then wait: a signal can then only interrupt a wait, which
  // resumes (submit_and_wait would hide how far it got).
  int submitted;
  do {
    submitted = io_uring_submit(ring);
  } while (submitted == -EINTR);
  const size_t in_flight = submitted > 0 ? static_cast<size_t>(submitted) : 0;
  if (submitted < 0) {
    *ring_failure = Status::FromErrno(-submitted, "io_uring submit failed");
  } else if (in_flight < requests.size()) {
    *ring_failure =
        Status::Error(Code::kIoError, "io_uring submit took " + std::to_string(in_flight) + " of " +
                                          std::to_string(requests.size()) + " requests");
  }

  // Every request the kernel took is reaped before returning: until then it
  // may write into the caller's buffer.
  Status first_error;
  std::vector<IoRequest> remainders;
  std::vector<bool> completed(requests.size(), false);
  for (size_t done = 0; done < in_flight; ++done) {
    io_uring_cqe* cqe = nullptr;
    int rc;
    do {
      rc = io_uring_wait_cqe(ring, &cqe);
    } while (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY);
    if (rc < 0) {
      *ring_failure = Status::FromErrno(-rc, "io_uring wait failed");
      spdlog::critical(
          "local store: io_uring wait failed with {} requests in flight ({}); the kernel may "
          "still complete them into memory the agent reuses",
          in_flight - done, std::strerror(-rc));
      return Status::FromErrno(-rc, "io_uring wait");
    }
    const uint64_t index = io_uring_cqe_get_data64(cqe);
    const int res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    if (index >= requests.size() || completed[index]) {
      *ring_failure = Status::Error(Code::kIoError, "io_uring returned a completion of no request");
      return Status::Error(Code::kIoError, "local store: io_uring returned a foreign completion");
    }
    completed[index] = true;
    const IoRequest& r = requests[index];
    if (res < 0) {
      if (first_error.ok()) {
        first_error = Status::FromErrno(-res, r.write ? "local store write" : "local store read");
      }
    } else if (static_cast<size_t>(res) < r.len) {
      IoRequest rest = r;
      rest.offset += res;
      rest.buf = static_cast<char*>(r.buf) + res;
      rest.len -= res;
      remainders.push_back(rest);
    }
  }
  // What the kernel never took (its SQEs die with the ring).
  for (size_t i = 0; i < requests.size(); ++i) {
    if (!completed[i] && i >= in_flight) remainders.push_back(requests[i]);
  }
  GC_RETURN_IF_ERROR(first_error);
  return RunWithSyscalls(remainders);
}

Status RunWithSyscalls(std::span<IoRequest> requests) {
  for (const IoRequest& r : requests) {
    size_t done = 0;
    while (done < r.len) {
      char* p = static_cast<char*>(r.buf) + done;
      ssize_t n = r.write ? pwrite(r.fd, p, r.len - done, r.offset + done)
                          : pread(r.fd, p, r.len - done, r.offset + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, r.write ? "local store write" : "local store read");
      }
      if (n == 0) {
        return Status::Error(Code::kIoError, "local store: unexpected end of file at offset " +
                                                 std::to_string(r.offset + done));
      }
      done += static_cast<size_t>(n);
    }
  }
  return Status::Ok();
}

}  // namespace goldcache::io
