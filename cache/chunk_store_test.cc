#include "cache/chunk_store.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "cache/checksum.h"
#include "index/digest.h"

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
  std::unique_ptr<ChunkStore> Open(uint32_t chunk, uint64_t slots) {
    auto s = ChunkStore::Open(io::PosixEnv(), dir_, chunk, slots);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s).value() : nullptr;
  }
  std::string dir_;
};

TEST_F(ChunkStoreTest, WritesAndReadsBackSlotsIndependently) {
  auto store = Open(64 * 1024, 4);
  std::vector<char> a(64 * 1024, 'a'), b(10000, 'b');
  auto ta = ComputeTable(a), tb = ComputeTable(b);
  ASSERT_TRUE(
      store->Write(1, {1, 1}, TableHash(ta, index::ComputeDigest(a), a.size()), a, ta).ok());
  ASSERT_TRUE(
      store->Write(3, {1, 3}, TableHash(tb, index::ComputeDigest(b), b.size()), b, tb).ok());
  ASSERT_TRUE(store->Sync().ok());
  std::vector<char> out(8192);
  std::vector<uint32_t> table(tb.size());
  ASSERT_TRUE(store->Read(3, 4096, out, table).ok());
  EXPECT_EQ(table, tb);
  EXPECT_EQ(std::string(out.begin(), out.begin() + 5904), std::string(5904, 'b'));
  ASSERT_TRUE(store->Read(1, 0, out, {}).ok());  // data only
  EXPECT_EQ(std::string(out.begin(), out.end()), std::string(8192, 'a'));
}

TEST_F(ChunkStoreTest, SlotsKeepTheirPlaceWhenTheStoreGrows) {
  std::vector<char> a(4096, 'z');
  auto ta = ComputeTable(a);
  {
    auto store = Open(4096, 2);
    ASSERT_TRUE(store->Write(1, {2, 0}, 0, a, ta).ok());
  }
  auto bigger = Open(4096, 8);
  std::vector<char> out(4096);
  std::vector<uint32_t> table(1);
  ASSERT_TRUE(bigger->Read(1, 0, out, table).ok());
  EXPECT_EQ(out, a);
  EXPECT_EQ(table, ta);
}

TEST_F(ChunkStoreTest, PunchedSlotReadsZeros) {
  auto store = Open(4096, 2);
  std::vector<char> a(4096, 'q');
  ASSERT_TRUE(store->Write(0, {1, 0}, 0, a, ComputeTable(a)).ok());
  ASSERT_TRUE(store->Punch(0).ok());
  std::vector<char> out(4096, 'x');
  ASSERT_TRUE(store->Read(0, 0, out, {}).ok());
  EXPECT_EQ(out, std::vector<char>(4096, 0));
}

TEST_F(ChunkStoreTest, RejectsOutOfRangeSlots) {
  auto store = Open(4096, 2);
  std::vector<char> d(4096);
  EXPECT_FALSE(store->Write(2, {1, 0}, 0, d, ComputeTable(d)).ok());
  EXPECT_FALSE(ChunkStore::Open(io::PosixEnv(), dir_, 1000, 2).ok());  // not a 4 KiB multiple
}

TEST(Checksum, TableHashDependsOnContentIdentityAndLength) {
  std::vector<char> d(8192, 'x');
  auto t = ComputeTable(d);
  const index::Digest a = index::ComputeDigest(std::string("a"));
  const index::Digest b = index::ComputeDigest(std::string("b"));
  EXPECT_NE(TableHash(t, a, 8192), TableHash(t, b, 8192));
  EXPECT_NE(TableHash(t, a, 8192), TableHash(t, a, 8191));
  EXPECT_EQ(TableHash(t, a, 8192), TableHash(t, a, 8192));
}

}  // namespace
}  // namespace goldcache::cache
