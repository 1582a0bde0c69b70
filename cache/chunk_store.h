// The local store of chunk data: one file, store.dat, in the cache dir, cut
// into fixed slots. Slot i starts at i * stride and holds
//
//   [meta: header, then the chunk's checksum table, padded to 4 KiB]
//   [data: up to chunk_size bytes]
//
// so a slot's position never depends on how many slots there are (the cache
// size can change without moving any), its data is 4 KiB aligned, and its
// meta and data go to the disk in one submission. The header names what the
// slot holds (chunk identity, length, table hash): what a rebuild of a lost
// index would need; today the index's record alone says which slot holds
// which chunk, and a slot is trusted only through it. The file is sparse;
// space is used as slots are first written, and given back by Punch.
//
// Durability: Write() is not durable until Sync() returns. The index calls
// Sync() before committing records that name newly written slots.
//
// Thread safety: all methods are safe to call concurrently; callers make sure
// no two writers write one slot at the same time (the cache owns slot use).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "index/records.h"
#include "io/file.h"
#include "util/status.h"

namespace goldcache::cache {

class ChunkStore {
 public:
  static constexpr char kFileName[] = "store.dat";

  // Opens (creating it if missing) the store in `dir`, sized for `slots`.
  static Result<std::unique_ptr<ChunkStore>> Open(io::Env& env, const std::string& dir,
                                                  uint32_t chunk_size, uint64_t slots);
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  uint32_t chunk_size() const { return chunk_size_; }
  uint64_t slots() const { return slots_; }
  // Bytes of local disk a slot takes at most (its meta and data).
  uint64_t stride() const { return stride_; }

  // Writes `data` (at most chunk_size bytes), its checksum `table` and a
  // header naming `key` and `table_hash` to `slot`.
  Status Write(uint64_t slot, const index::ChunkKey& key, uint64_t table_hash,
               std::span<const char> data, std::span<const uint32_t> table);
  // Reads `out.size()` bytes at `offset` within the slot's data into `out`,
  // and, unless `table` is empty, the slot's first table.size() checksums,
  // in one submission.
  Status Read(uint64_t slot, uint32_t offset, std::span<char> out, std::span<uint32_t> table);
  // Gives a slot's disk space back to the file system; the slot reads as zeros.
  Status Punch(uint64_t slot);
  // Makes every Write that returned before this call durable.
  Status Sync();

 private:
  ChunkStore(std::unique_ptr<io::File> file, uint32_t chunk_size, uint64_t slots);
  uint64_t Base(uint64_t slot) const { return slot * stride_; }

  const std::unique_ptr<io::File> file_;
  const uint32_t chunk_size_;
  const uint64_t slots_;
  const uint32_t meta_bytes_;
  const uint64_t stride_;
};

}  // namespace goldcache::cache
