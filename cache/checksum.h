// Per-block checksums of cached chunks (invariant 1).
//
// A chunk is checksummed in 4 KiB blocks so that a 4 KiB read verifies 4 KiB,
// not the whole chunk. The table of block checksums is itself hashed, seeded
// with the chunk's identity and length, and that hash is what the index
// record carries: a table (or data) written to the wrong slot, a torn write or
// a flipped bit all fail verification and turn into a miss. The seed is the
// chunk's content digest, not its place in a file: one slot may serve many
// chunks with the same bytes, under one table hash.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "index/records.h"

namespace goldcache::cache {

inline constexpr uint32_t kBlockSize = 4096;

inline uint32_t BlocksFor(uint64_t length) {
  return static_cast<uint32_t>((length + kBlockSize - 1) / kBlockSize);
}

uint32_t BlockChecksum(std::span<const char> block);
// One checksum per 4 KiB block of `data` (the last block may be short).
std::vector<uint32_t> ComputeTable(std::span<const char> data);
uint64_t TableHash(std::span<const uint32_t> table, const index::Digest& digest, uint32_t length);

}  // namespace goldcache::cache
