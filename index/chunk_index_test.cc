#include "index/chunk_index.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

namespace goldcache::index {
namespace {

class ChunkIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gc-index-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::unique_ptr<ChunkIndex> OpenIndex(std::function<Status()> hook = nullptr) {
    ChunkIndex::Options options;
    options.dir = dir_ + "/db";
    options.flush_interval = std::chrono::hours(1);  // commits only when asked
    options.before_commit = std::move(hook);
    auto index = ChunkIndex::Open(options);
    EXPECT_TRUE(index.ok()) << index.status().ToString();
    return index.ok() ? std::move(index).value() : nullptr;
  }
  std::string dir_;
};

TEST_F(ChunkIndexTest, SameKeyIsSameGenerationAcrossReopen) {
  GenerationKey key{"ds:t.img", 100, 1, 2, 3};
  GenerationId id;
  {
    auto index = OpenIndex();
    auto b = index->BindGeneration(key);
    ASSERT_TRUE(b.ok());
    EXPECT_FALSE(b->changed);
    id = b->id;
    EXPECT_EQ(index->BindGeneration(key)->id, id);
  }
  auto index = OpenIndex();
  auto b = index->BindGeneration(key);
  EXPECT_EQ(b->id, id);
  EXPECT_FALSE(b->changed);
  EXPECT_EQ(index->GenerationOf(id), key);
}

TEST_F(ChunkIndexTest, ChangedFileIsNewGenerationAndReportedAsChange) {
  auto index = OpenIndex();
  GenerationKey key{"ds:t.img", 100, 1, 2, 3};
  GenerationId first = index->BindGeneration(key)->id;
  key.mtime_ns = 99;
  auto second = index->BindGeneration(key);
  EXPECT_NE(second->id, first);
  EXPECT_TRUE(second->changed);
  // Another path is independent.
  EXPECT_FALSE(index->BindGeneration(GenerationKey{"ds:u.img", 1, 1, 1, 1})->changed);
}

TEST_F(ChunkIndexTest, ChunksBecomeDurableOnlyAfterDataHookAndCommit) {
  std::vector<std::string> order;
  {
    auto index = OpenIndex([&] {
      order.push_back("data-durable");
      return Status::Ok();
    });
    uint64_t s1 = index->Put(ChunkKey{1, 0}, ChunkRecord{5, 4096, 77});
    uint64_t s2 = index->Put(ChunkKey{1, 1}, ChunkRecord{6, 100, 78});
    EXPECT_LT(index->durable_sequence(), s1);
    EXPECT_EQ(index->pending(), 2u);
    ASSERT_TRUE(index->Flush().ok());
    EXPECT_GE(index->durable_sequence(), s2);
    EXPECT_EQ(order, std::vector<std::string>{"data-durable"});
    index->Delete(ChunkKey{1, 0});
    ASSERT_TRUE(index->Flush().ok());
    // A batch of deletes alone needs no data to be durable.
    EXPECT_EQ(order.size(), 1u);
  }
  auto index = OpenIndex();
  std::vector<std::pair<ChunkKey, ChunkRecord>> seen;
  ASSERT_TRUE(index->ForEachChunk([&](auto& k, auto& r) { seen.emplace_back(k, r); }).ok());
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].first, (ChunkKey{1, 1}));
  EXPECT_EQ(seen[0].second, (ChunkRecord{6, 100, 78}));
}

TEST_F(ChunkIndexTest, FailedDataHookKeepsRecordsOutOfTheIndex) {
  bool fail = true;
  {
    auto index = OpenIndex(
        [&] { return fail ? Status::Error(Code::kIoError, "fsync failed") : Status::Ok(); });
    index->Put(ChunkKey{2, 9}, ChunkRecord{1, 1, 1});
    EXPECT_FALSE(index->Flush().ok());
    EXPECT_EQ(index->durable_sequence(), 0u);
    EXPECT_EQ(index->pending(), 1u);  // kept for the next attempt
    fail = false;
    ASSERT_TRUE(index->Flush().ok());
    EXPECT_EQ(index->pending(), 0u);
  }
  auto index = OpenIndex();
  int n = 0;
  ASSERT_TRUE(index->ForEachChunk([&](auto&, auto&) { ++n; }).ok());
  EXPECT_EQ(n, 1);
}

TEST_F(ChunkIndexTest, BackgroundCommitterFlushesWhenAsked) {
  ChunkIndex::Options options;
  options.dir = dir_ + "/db";
  options.flush_interval = std::chrono::milliseconds(5);
  auto index = std::move(ChunkIndex::Open(options)).value();
  uint64_t seq = index->Put(ChunkKey{3, 3}, ChunkRecord{1, 1, 1});
  index->RequestCommit();
  // Bounded wait on the observable condition, not a fixed sleep.
  for (int i = 0; i < 2000 && index->durable_sequence() < seq; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GE(index->durable_sequence(), seq);
}

// Issue 9.3: RocksDB's preallocation (a 70 MiB WAL by default) is disk
// outside goldcache's budget; on a small cache disk it alone filled it.
TEST_F(ChunkIndexTest, AnOpenIndexTakesLittleDisk) {
  auto index = OpenIndex();
  ASSERT_NE(index, nullptr);
  ASSERT_TRUE(index->BindGeneration(GenerationKey{"ds:t.img", 100, 1, 2, 3}).ok());
  ASSERT_TRUE(index->PutMeta("k", "v").ok());
  uint64_t allocated = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir_)) {
    struct stat st;
    if (e.is_regular_file() && stat(e.path().c_str(), &st) == 0) allocated += st.st_blocks * 512;
  }
  EXPECT_LT(allocated, 8u << 20) << "the index directory allocates " << (allocated >> 20) << " MiB";
}

TEST_F(ChunkIndexTest, MetaRoundTrips) {
  auto index = OpenIndex();
  EXPECT_FALSE(index->GetMeta("chunk_size")->has_value());
  ASSERT_TRUE(index->PutMeta("chunk_size", "1048576").ok());
  EXPECT_EQ(index->GetMeta("chunk_size")->value(), "1048576");
}

}  // namespace
}  // namespace goldcache::index
