#include "cache/eviction.h"

#include <gtest/gtest.h>

#include <set>

namespace goldcache::cache {
namespace {

using List = EvictionPolicy::List;

index::ChunkKey K(uint64_t chunk, uint64_t gen = 1) { return index::ChunkKey{gen, chunk}; }
auto Any = [](const index::ChunkKey&) { return true; };

// A clock the test advances by hand.
struct Clock {
  uint64_t now = 0;
  EvictionPolicy::Use Reader(uint32_t stream, bool scan = false) { return {stream, scan, now}; }
};

TEST(EvictionTest, ManyTouchesOfOnePassAreOneUse) {
  EvictionPolicy p(100);
  Clock c;
  p.Insert(K(1), c.Reader(7));
  for (int i = 0; i < 16; ++i) {  // 16 x 64 KiB of one chunk, one burst
    c.now += 1;
    p.Touch(K(1), c.Reader(7));
  }
  EXPECT_EQ(p.ListOf(K(1)), List::kProbation);
  c.now += EvictionPolicy::kUseWindowMs + 1;  // the next pass of the same reader
  p.Touch(K(1), c.Reader(7));
  EXPECT_EQ(p.ListOf(K(1)), List::kProtected);
}

TEST(EvictionTest, RetiredChunksGoFirstWhateverTheirList) {
  EvictionPolicy p(100);
  Clock c;
  p.Insert(K(1), c.Reader(1));
  c.now += EvictionPolicy::kUseWindowMs + 1;
  p.Touch(K(1), c.Reader(2));
  ASSERT_EQ(p.ListOf(K(1)), List::kProtected);
  p.Insert(K(2), c.Reader(1, /*scan=*/true));
  p.Insert(K(3), c.Reader(1));
  p.Retire(K(1));
  p.Retire(K(9));  // absent: nothing happens
  EXPECT_EQ(p.PickVictims(1, Any), std::vector<index::ChunkKey>{K(1)});
  EXPECT_EQ(p.ghosts(), 0u);  // retired: not missed when it goes
  EXPECT_EQ(p.PickVictims(1, Any), std::vector<index::ChunkKey>{K(2)});
}

TEST(EvictionTest, AnotherReaderIsAnotherUse) {
  EvictionPolicy p(100);
  Clock c;
  p.Insert(K(1), c.Reader(7));
  p.Touch(K(1), c.Reader(8));
  EXPECT_EQ(p.ListOf(K(1)), List::kProtected);
}

TEST(EvictionTest, SweepsNeverPromoteAndGoFirst) {
  EvictionPolicy p(100);
  Clock c;
  p.Insert(K(1), c.Reader(1));  // a boot's chunk, used once
  for (uint32_t s = 10; s < 20; ++s) {
    c.now += 5000;
    if (!p.Contains(K(2))) p.Insert(K(2), c.Reader(s, true));
    p.Touch(K(2), c.Reader(s, true));  // ten desktops' sweeps
  }
  EXPECT_EQ(p.ListOf(K(2)), List::kScan);
  auto v = p.PickVictims(1, Any);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0], K(2));  // the swept chunk goes before the boot's
  p.Insert(K(3), c.Reader(1, true));
  p.Touch(K(3), c.Reader(2));  // a real use of a swept chunk: probation
  EXPECT_EQ(p.ListOf(K(3)), List::kProbation);
}

TEST(EvictionTest, BootSetReadTwiceSurvivesASweepTwiceTheCapacity) {
  const size_t capacity = 64;
  EvictionPolicy p(capacity);
  Clock c;
  std::set<uint64_t> cached;
  auto access = [&](uint64_t chunk, uint32_t stream, bool scan) {
    const auto key = K(chunk);
    if (p.Contains(key)) {
      p.Touch(key, c.Reader(stream, scan));
      return;
    }
    if (cached.size() >= capacity) {
      for (const auto& victim : p.PickVictims(1, Any)) cached.erase(victim.chunk);
    }
    p.Insert(key, c.Reader(stream, scan));
    cached.insert(chunk);
  };
  for (int pass = 0; pass < 2; ++pass) {  // the boot set, 24 chunks, in two passes
    c.now += 10000;
    for (uint64_t b = 0; b < 24; ++b) access(b, 1 + pass, false);
  }
  for (uint64_t s = 1000; s < 1000 + 2 * capacity; ++s) {  // one sweep, twice the cache
    c.now += 1;
    access(s, 99, true);
  }
  for (uint64_t b = 0; b < 24; ++b) EXPECT_TRUE(p.Contains(K(b))) << "boot chunk " << b;
}

TEST(EvictionTest, EvictedInUseComesBackProtected) {
  EvictionPolicy p(4);
  Clock c;
  p.Insert(K(1), c.Reader(1));
  ASSERT_EQ(p.PickVictims(1, Any), std::vector<index::ChunkKey>{K(1)});
  EXPECT_EQ(p.ghosts(), 1u);
  p.Insert(K(1), c.Reader(2));  // the next boot wants it again
  EXPECT_EQ(p.ListOf(K(1)), List::kProtected);
  EXPECT_EQ(p.ghosts(), 0u);
}

TEST(EvictionTest, ProtectedIsCappedAndOverflowDemotes) {
  EvictionPolicy p(4);  // at most 3 protected
  Clock c;
  for (uint64_t k = 0; k < 4; ++k) {
    p.Insert(K(k), c.Reader(1));
    p.Touch(K(k), c.Reader(2));
  }
  EXPECT_EQ(p.size(List::kProtected), 3u);
  EXPECT_EQ(p.ListOf(K(0)), List::kProbation);  // the coldest protected went back
}

TEST(EvictionTest, PicksOnlyEvictableAndInOrder) {
  EvictionPolicy p(10);
  Clock c;
  for (uint64_t k = 0; k < 5; ++k) p.Insert(K(k), c.Reader(1));
  auto v = p.PickVictims(3, [](const index::ChunkKey& k) { return k.chunk != 0; });
  EXPECT_EQ(v, (std::vector<index::ChunkKey>{K(1), K(2), K(3)}));
  EXPECT_TRUE(p.Contains(K(0)));
  p.Erase(K(0));
  EXPECT_FALSE(p.Contains(K(0)));
  EXPECT_EQ(p.ghosts(), 3u);  // erased by command: no ghost
}

TEST(EvictionTest, OrderRestoresTheSameLists) {
  EvictionPolicy p(10);
  Clock c;
  p.Insert(K(1), c.Reader(1, true));
  p.Insert(K(2), c.Reader(1));
  p.Insert(K(3), c.Reader(1));
  p.Touch(K(3), c.Reader(2));
  p.Insert(K(4), c.Reader(1));
  EvictionPolicy q(10);
  for (const auto& [key, list] : p.Order()) q.Restore(key, list);
  EXPECT_EQ(q.Order(), p.Order());
  EXPECT_EQ(q.PickVictims(4, Any), p.PickVictims(4, Any));
}

}  // namespace
}  // namespace goldcache::cache
