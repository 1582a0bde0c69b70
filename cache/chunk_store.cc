#include "cache/chunk_store.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include "cache/checksum.h"

namespace goldcache::cache {
namespace {

Result<int> OpenSized(const std::string& path, uint64_t size) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "opening " + path);
  // Sparse: grows or shrinks the address space, not the space used.
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    close(fd);
    return Status::FromErrno(err, "sizing " + path);
  }
  return fd;
}

}  // namespace

Result<std::unique_ptr<ChunkStore>> ChunkStore::Open(const std::string& dir, uint32_t chunk_size,
                                                     uint64_t slots, io::IoRings& rings) {
  if (chunk_size == 0 || chunk_size % kBlockSize != 0) {
    return Status::Error(
        Code::kInvalidArgument,
        "chunk size must be a positive multiple of 4 KiB, got " + std::to_string(chunk_size));
  }
  auto data = OpenSized(dir + "/chunks.dat", slots * chunk_size);
  if (!data.ok()) return data.status();
  auto sums = OpenSized(dir + "/sums.dat", slots * BlocksFor(chunk_size) * sizeof(uint32_t));
  if (!sums.ok()) {
    close(*data);
    return sums.status();
  }
  return std::unique_ptr<ChunkStore>(new ChunkStore(*data, *sums, chunk_size, slots, rings));
}

ChunkStore::ChunkStore(int data_fd, int sums_fd, uint32_t chunk_size, uint64_t slots,
                       io::IoRings& rings)
    : data_fd_(data_fd), sums_fd_(sums_fd), chunk_size_(chunk_size), slots_(slots), rings_(rings) {}

ChunkStore::~ChunkStore() {
  close(data_fd_);
  close(sums_fd_);
}

uint64_t ChunkStore::TableOffset(uint64_t slot) const {
  return slot * BlocksFor(chunk_size_) * sizeof(uint32_t);
}

Status ChunkStore::Write(uint64_t slot, std::span<const char> data,
                         std::span<const uint32_t> table) {
  if (slot >= slots_ || data.size() > chunk_size_ || table.size() != BlocksFor(data.size())) {
    return Status::Error(Code::kInvalidArgument, "chunk store write out of range");
  }
  io::IoRequest reqs[2] = {
      {data_fd_, slot * chunk_size_, const_cast<char*>(data.data()), data.size(), true},
      {sums_fd_, TableOffset(slot), const_cast<uint32_t*>(table.data()), table.size_bytes(), true},
  };
  GC_RETURN_IF_ERROR(rings_.Run(reqs));
  // Counted once complete: Sync() promises durability for returned writes.
  writes_.fetch_add(1);
  return Status::Ok();
}

Status ChunkStore::Read(uint64_t slot, uint32_t offset, std::span<char> out,
                        std::span<uint32_t> table) {
  if (slot >= slots_ || offset + out.size() > chunk_size_ ||
      table.size() > BlocksFor(chunk_size_)) {
    return Status::Error(Code::kInvalidArgument, "chunk store read out of range");
  }
  io::IoRequest reqs[2] = {
      {data_fd_, slot * chunk_size_ + offset, out.data(), out.size(), false},
      {sums_fd_, TableOffset(slot), table.data(), table.size_bytes(), false},
  };
  return rings_.Run(reqs);
}

Status ChunkStore::ReadTable(uint64_t slot, std::span<uint32_t> table) {
  io::IoRequest req{sums_fd_, TableOffset(slot), table.data(), table.size_bytes(), false};
  return rings_.Run(std::span<io::IoRequest>(&req, 1));
}

Status ChunkStore::Punch(uint64_t slot) {
  if (fallocate(data_fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                static_cast<off_t>(slot * chunk_size_), chunk_size_) != 0) {
    return Status::FromErrno(errno, "punching slot " + std::to_string(slot) + " of chunks.dat");
  }
  return Status::Ok();
}

Status ChunkStore::Sync() {
  uint64_t target = writes_.load();
  if (synced_writes_.load() >= target) return Status::Ok();
  if (fdatasync(data_fd_) != 0) return Status::FromErrno(errno, "syncing chunks.dat");
  if (fdatasync(sums_fd_) != 0) return Status::FromErrno(errno, "syncing sums.dat");
  uint64_t prev = synced_writes_.load();
  while (prev < target && !synced_writes_.compare_exchange_weak(prev, target)) {
  }
  return Status::Ok();
}

}  // namespace goldcache::cache
