// The local store of chunk data: two files in the cache dir.
//   chunks.dat  slot i holds one chunk's bytes at i * chunk_size
//   sums.dat    slot i's checksum table (one uint32 per 4 KiB block) at
//               i * table_bytes
// Slots are fixed-size, so there is no allocator state on disk: which slot
// holds which chunk is the index's record alone. Files are sparse; space is
// used as slots are first written.
//
// Durability: Write() is not durable until Sync() returns. The index calls
// Sync() before committing records that name newly written slots.
//
// Thread safety: all methods are safe to call concurrently; callers make sure
// no two writers write one slot at the same time (the cache owns slot use).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "io/rings.h"
#include "util/status.h"

namespace goldcache::cache {

class ChunkStore {
 public:
  static Result<std::unique_ptr<ChunkStore>> Open(const std::string& dir, uint32_t chunk_size,
                                                  uint64_t slots, io::IoRings& rings);
  ~ChunkStore();
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  uint32_t chunk_size() const { return chunk_size_; }
  uint64_t slots() const { return slots_; }

  // Writes `data` (at most chunk_size bytes) and its checksum `table` to `slot`.
  Status Write(uint64_t slot, std::span<const char> data, std::span<const uint32_t> table);
  // Reads `len` bytes at `offset` within the slot into `out`, and the slot's
  // first table.size() checksums into `table`, in one submission.
  Status Read(uint64_t slot, uint32_t offset, std::span<char> out, std::span<uint32_t> table);
  Status ReadTable(uint64_t slot, std::span<uint32_t> table);
  // Gives a slot's disk space back to the file system; the slot reads as zeros.
  Status Punch(uint64_t slot);
  // Makes every Write that returned before this call durable.
  Status Sync();

 private:
  ChunkStore(int data_fd, int sums_fd, uint32_t chunk_size, uint64_t slots, io::IoRings& rings);
  uint64_t TableOffset(uint64_t slot) const;

  const int data_fd_;
  const int sums_fd_;
  const uint32_t chunk_size_;
  const uint64_t slots_;
  io::IoRings& rings_;
  std::atomic<uint64_t> writes_{0};         // Writes completed
  std::atomic<uint64_t> synced_writes_{0};  // Writes known durable
};

}  // namespace goldcache::cache
