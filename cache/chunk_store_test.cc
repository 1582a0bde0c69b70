#include "cache/chunk_store.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "cache/checksum.h"

namespace goldcache::cache {
namespace {

class ChunkStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gc-store-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
  io::IoRings rings_;
};

TEST_F(ChunkStoreTest, WritesAndReadsBackSlotsIndependently) {
  auto store = std::move(ChunkStore::Open(dir_, 64 * 1024, 4, rings_)).value();
  std::vector<char> a(64 * 1024, 'a'), b(10000, 'b');
  auto ta = ComputeTable(a), tb = ComputeTable(b);
  ASSERT_TRUE(store->Write(1, a, ta).ok());
  ASSERT_TRUE(store->Write(3, b, tb).ok());
  ASSERT_TRUE(store->Sync().ok());
  std::vector<char> out(8192);
  std::vector<uint32_t> table(tb.size());
  ASSERT_TRUE(store->Read(3, 4096, out, table).ok());
  EXPECT_EQ(table, tb);
  EXPECT_EQ(std::string(out.begin(), out.begin() + 5904), std::string(5904, 'b'));
  ASSERT_TRUE(store->Read(1, 0, out, table).ok());
  EXPECT_EQ(std::string(out.begin(), out.end()), std::string(8192, 'a'));
}

TEST_F(ChunkStoreTest, RejectsOutOfRangeSlots) {
  auto store = std::move(ChunkStore::Open(dir_, 4096, 2, rings_)).value();
  std::vector<char> d(4096);
  EXPECT_FALSE(store->Write(2, d, ComputeTable(d)).ok());
  EXPECT_FALSE(ChunkStore::Open(dir_, 1000, 2, rings_).ok());  // not a 4 KiB multiple
}

TEST(Checksum, TableHashDependsOnChunkIdentity) {
  std::vector<char> d(8192, 'x');
  auto t = ComputeTable(d);
  EXPECT_NE(TableHash(t, {1, 0}, 8192), TableHash(t, {1, 1}, 8192));
  EXPECT_NE(TableHash(t, {1, 0}, 8192), TableHash(t, {2, 0}, 8192));
  EXPECT_NE(TableHash(t, {1, 0}, 8192), TableHash(t, {1, 0}, 8191));
}

}  // namespace
}  // namespace goldcache::cache
