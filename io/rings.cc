#include "io/rings.h"

#include <liburing.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

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
  Status st = RunOnRing(ring.get(), requests);
  ReleaseRing(std::move(ring));
  return st;
}

Status IoRings::RunOnRing(io_uring* ring, std::span<IoRequest> requests) {
  for (size_t i = 0; i < requests.size(); ++i) {
    const IoRequest& r = requests[i];
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    if (r.write) {
      io_uring_prep_write(sqe, r.fd, r.buf, r.len, r.offset);
    } else {
      io_uring_prep_read(sqe, r.fd, r.buf, r.len, r.offset);
    }
    io_uring_sqe_set_data64(sqe, i);
  }
  int submitted = io_uring_submit_and_wait(ring, static_cast<unsigned>(requests.size()));
  if (submitted < 0) return Status::FromErrno(-submitted, "io_uring submit");
  Status first_error;
  std::vector<IoRequest> remainders;
  for (size_t done = 0; done < requests.size(); ++done) {
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_wait_cqe(ring, &cqe);
    if (rc < 0) return Status::FromErrno(-rc, "io_uring wait");
    const IoRequest& r = requests[io_uring_cqe_get_data64(cqe)];
    int res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
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
