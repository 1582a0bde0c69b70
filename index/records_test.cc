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
  ChunkRecord rec{123456789, 1048576, 0xDEADBEEFCAFEF00Dull};
  EXPECT_EQ(DecodeChunkRecord(EncodeChunkRecord(rec)), rec);
}

TEST(Records, GenerationKeyRoundTripsWithNegativeTimes) {
  GenerationKey key{"ds1:templates/win11.img", 1ull << 40, -5, 1700000000123456789, 42};
  EXPECT_EQ(DecodeGenerationKey(EncodeGenerationKey(key)), key);
}

TEST(Records, RejectsTruncatedOrForeignBytes) {
  std::string rec = EncodeChunkRecord(ChunkRecord{1, 2, 3});
  EXPECT_FALSE(DecodeChunkRecord(rec.substr(0, rec.size() - 1)));
  rec[0] = 99;  // unknown format version
  EXPECT_FALSE(DecodeChunkRecord(rec));
  EXPECT_FALSE(DecodeChunkKey("g12345678abcdefgh"));
  EXPECT_FALSE(DecodeGenerationKey("x"));
  EXPECT_FALSE(DecodeU64("1234567"));
}

}  // namespace
}  // namespace goldcache::index
