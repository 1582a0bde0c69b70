#include "cache/slru.h"

#include <gtest/gtest.h>

namespace goldcache::cache {
namespace {

using index::ChunkKey;
auto Always = [](const ChunkKey&) { return true; };

TEST(Slru, EvictsColdestProbationEntryFirst) {
  SlruPolicy p(8);
  for (uint64_t i = 0; i < 4; ++i) p.Insert(ChunkKey{1, i});
  auto v = p.PickVictims(2, Always);
  EXPECT_EQ(v, (std::vector<ChunkKey>{{1, 0}, {1, 1}}));
  EXPECT_EQ(p.size(), 2u);
}

TEST(Slru, OnePassScanDoesNotFlushTheReusedWorkingSet) {
  SlruPolicy p(4);
  // The boot working set: read twice, so promoted to protected.
  for (uint64_t i = 0; i < 4; ++i) p.Insert(ChunkKey{1, i});
  for (uint64_t i = 0; i < 4; ++i) p.Touch(ChunkKey{1, i});
  // A scan of 100 chunks, each read once, with eviction keeping size at 8.
  for (uint64_t i = 0; i < 100; ++i) {
    p.Insert(ChunkKey{2, i});
    if (p.size() > 8) p.PickVictims(p.size() - 8, Always);
  }
  for (uint64_t i = 0; i < 4; ++i) EXPECT_TRUE(p.Contains(ChunkKey{1, i})) << i;
}

TEST(Slru, ProtectedOverflowIsDemotedNotDropped) {
  SlruPolicy p(2);
  for (uint64_t i = 0; i < 3; ++i) {
    p.Insert(ChunkKey{1, i});
    p.Touch(ChunkKey{1, i});
  }
  EXPECT_EQ(p.protected_size(), 2u);
  EXPECT_EQ(p.size(), 3u);
  // The demoted one (chunk 0) is now the coldest candidate.
  EXPECT_EQ(p.PickVictims(1, Always), (std::vector<ChunkKey>{{1, 0}}));
}

TEST(Slru, NeverPicksAnEntryTheCallerSaysIsBusy) {
  SlruPolicy p(8);
  for (uint64_t i = 0; i < 3; ++i) p.Insert(ChunkKey{1, i});
  auto v = p.PickVictims(3, [](const ChunkKey& k) { return k.chunk != 0; });
  EXPECT_EQ(v.size(), 2u);
  EXPECT_TRUE(p.Contains(ChunkKey{1, 0}));
}

TEST(Slru, EraseForgetsTheKey) {
  SlruPolicy p(8);
  p.Insert(ChunkKey{1, 1});
  p.Touch(ChunkKey{1, 1});
  p.Erase(ChunkKey{1, 1});
  EXPECT_EQ(p.size(), 0u);
  EXPECT_TRUE(p.PickVictims(1, Always).empty());
}

}  // namespace
}  // namespace goldcache::cache
