#include "cache/checksum.h"

#include <xxhash.h>

namespace goldcache::cache {

uint32_t BlockChecksum(std::span<const char> block) {
  return static_cast<uint32_t>(XXH3_64bits(block.data(), block.size()));
}

std::vector<uint32_t> ComputeTable(std::span<const char> data) {
  std::vector<uint32_t> table(BlocksFor(data.size()));
  for (size_t i = 0; i < table.size(); ++i) {
    size_t off = i * kBlockSize;
    table[i] = BlockChecksum(data.subspan(off, std::min<size_t>(kBlockSize, data.size() - off)));
  }
  return table;
}

uint64_t TableHash(std::span<const uint32_t> table, const index::Digest& digest, uint32_t length) {
  uint64_t seed = index::DigestHash{}(digest) ^ (uint64_t{length} << 32);
  return XXH3_64bits_withSeed(table.data(), table.size_bytes(), seed);
}

}  // namespace goldcache::cache
