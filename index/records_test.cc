#include "index/records.h"

#include <gtest/gtest.h>

namespace goldcache::index {
namespace {

TEST(Records, ChunkKeyRoundTripsAndSortsByGenerationThenChunk) {
  ChunkKey a{7, 3}, b{7, 256}, c{8, 0};
  EXPECT_EQ(DecodeChunkKey(EncodeChunkKey(a)), a);
  EXPECT_LT(EncodeChunkKey(a), EncodeChunkKey(b));
  EXPECT_LT(EncodeChunkKey(b), EncodeChunkKey(c));
}

TEST(Records, ChunkRecordRoundTrips) {
  ChunkRecord rec{123456789, 1048576, 0xDEADBEEFCAFEF00Dull, {}};
  for (size_t i = 0; i < rec.digest.size(); ++i) rec.digest[i] = static_cast<uint8_t>(i * 7 + 1);
  EXPECT_EQ(DecodeChunkRecord(EncodeChunkRecord(rec)), rec);
}

TEST(Records, TraceRoundTripsForwardAndBackwardJumps) {
  std::vector<uint64_t> trace{0, 1, 2, 3, 900, 4, 5, 0, ~uint64_t{0}, 17};
  auto encoded = EncodeTrace(trace);
  EXPECT_EQ(DecodeTrace(encoded), trace);
  EXPECT_EQ(DecodeTrace(EncodeTrace({})), std::vector<uint64_t>{});
  // A run costs a byte per chunk.
  EXPECT_EQ(EncodeTrace({10, 11, 12, 13}).size(), 5u);
}

TEST(Records, TraceRejectsCutAndNonCanonicalBytes) {
  std::string encoded = EncodeTrace({1000000});
  EXPECT_FALSE(DecodeTrace(encoded.substr(0, encoded.size() - 1)));
  EXPECT_FALSE(DecodeTrace(std::string("\x01\x80\x00", 3)));  // zero padded: not canonical
  EXPECT_FALSE(DecodeTrace(""));
  EXPECT_FALSE(DecodeTrace(std::string("\x09", 1)));  // unknown format
}

TEST(Records, GenerationKeyRoundTripsWithNegativeTimes) {
  GenerationKey key{"ds1:templates/win11.img", 1ull << 40, -5, 1700000000123456789, 42};
  EXPECT_EQ(DecodeGenerationKey(EncodeGenerationKey(key)), key);
}

TEST(Records, RejectsTruncatedOrForeignBytes) {
  std::string rec = EncodeChunkRecord(ChunkRecord{1, 2, 3, {}});
  EXPECT_FALSE(DecodeChunkRecord(rec.substr(0, rec.size() - 1)));
  rec[0] = 99;  // unknown format version
  EXPECT_FALSE(DecodeChunkRecord(rec));
  EXPECT_FALSE(DecodeChunkKey("g12345678abcdefgh"));
  EXPECT_FALSE(DecodeGenerationKey("x"));
  EXPECT_FALSE(DecodeU64("1234567"));
}

}  // namespace
}  // namespace goldcache::index
