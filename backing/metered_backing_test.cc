#include "backing/metered_backing.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace goldcache::backing {
namespace {

using ::testing::HasSubstr;

class MeteredBackingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/goldcache_metered_backing_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    std::ofstream(root_ + "/t.img", std::ios::binary) << std::string(10000, 't');
    auto inner = OpenPosixBacking(root_);
    ASSERT_TRUE(inner.ok()) << inner.status().ToString();
    backing_ = MakeMeteredBacking(std::move(*inner), registry_, {{"datastore", "ds1"}});
  }
  void TearDown() override {
    backing_.reset();
    std::filesystem::remove_all(root_);
  }

  uint64_t Count(const std::string& name, metrics::Labels labels = {}) {
    labels.emplace_back("datastore", "ds1");
    return registry_.GetCounter(name, "", labels).Value();
  }

  std::string root_;
  metrics::Registry registry_;
  std::unique_ptr<Backing> backing_;
};

TEST_F(MeteredBackingTest, CountsExactBytesReadIncludingShortReads) {
  auto f = backing_->Open("t.img", O_RDONLY);
  ASSERT_TRUE(f.ok());
  std::string buf(4096, '\0');
  ASSERT_TRUE((*f)->ReadAt(0, buf).ok());
  ASSERT_TRUE((*f)->ReadAt(8192, buf).ok());   // 1808 bytes: short at end of file
  ASSERT_TRUE((*f)->ReadAt(20000, buf).ok());  // 0 bytes
  EXPECT_EQ(Count("goldcache_datastore_read_bytes_total"), 4096u + 1808u);
  EXPECT_EQ(Count("goldcache_datastore_read_ops_total"), 3u);
  EXPECT_EQ(Count("goldcache_datastore_write_bytes_total"), 0u);
  EXPECT_EQ(Count("goldcache_datastore_write_ops_total"), 0u);
  EXPECT_EQ(Count("goldcache_datastore_metadata_ops_total", {{"access", "read"}}), 1u);  // open
  EXPECT_EQ(Count("goldcache_datastore_metadata_ops_total", {{"access", "write"}}), 0u);
  metrics::Histogram& latency =
      registry_.GetHistogram("goldcache_datastore_read_latency_seconds", "", {{"datastore", "ds1"}},
                             metrics::LatencyBuckets());
  EXPECT_EQ(latency.Count(), 3u);
}

TEST_F(MeteredBackingTest, CountsExactBytesWrittenByCreatedFiles) {
  auto f = backing_->Create("pool/../x", O_RDWR, 0644);  // invalid path: an error
  EXPECT_FALSE(f.ok());
  f = backing_->Create("new.img", O_RDWR, 0644);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_TRUE((*f)->WriteAt(0, std::string(12345, 'w')).ok());
  ASSERT_TRUE((*f)->WriteAt(100000, std::string_view("z")).ok());
  ASSERT_TRUE((*f)->Truncate(5).ok());
  EXPECT_EQ(Count("goldcache_datastore_write_bytes_total"), 12346u);
  EXPECT_EQ(Count("goldcache_datastore_write_ops_total"), 2u);
  // two creates and one truncate change the datastore
  EXPECT_EQ(Count("goldcache_datastore_metadata_ops_total", {{"access", "write"}}), 3u);
  EXPECT_EQ(Count("goldcache_datastore_errors_total"), 1u);
}

TEST_F(MeteredBackingTest, FailedOpsCountAsErrorsButNotFoundDoesNot) {
  EXPECT_FALSE(backing_->Stat("missing").ok());
  EXPECT_EQ(Count("goldcache_datastore_errors_total"), 0u);

  auto f = backing_->Open("t.img", O_RDONLY);
  ASSERT_TRUE(f.ok());
  auto w = (*f)->WriteAt(0, std::string_view("nope"));  // read-only handle
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(Count("goldcache_datastore_errors_total"), 1u);
  EXPECT_EQ(Count("goldcache_datastore_write_ops_total"), 1u);
  EXPECT_EQ(Count("goldcache_datastore_write_bytes_total"), 0u);

  EXPECT_FALSE(backing_->Rmdir("t.img").ok());  // ENOTDIR
  EXPECT_EQ(Count("goldcache_datastore_errors_total"), 2u);
}

TEST_F(MeteredBackingTest, PassesResultsAndDescribeThrough) {
  EXPECT_EQ(backing_->Describe(), "posix:" + root_);
  auto st = backing_->Stat("t.img");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_size, 10000);
  auto missing = backing_->Open("nope", O_RDONLY);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().os_errno(), ENOENT);
}

TEST_F(MeteredBackingTest, RendersUnderTheDocumentedNames) {
  std::string text = registry_.RenderPrometheus();
  for (const char* name :
       {"goldcache_datastore_read_bytes_total{datastore=\"ds1\"} 0",
        "goldcache_datastore_read_ops_total{datastore=\"ds1\"} 0",
        "goldcache_datastore_write_bytes_total{datastore=\"ds1\"} 0",
        "goldcache_datastore_write_ops_total{datastore=\"ds1\"} 0",
        "goldcache_datastore_errors_total{datastore=\"ds1\"} 0",
        "goldcache_datastore_metadata_ops_total{access=\"write\",datastore=\"ds1\"} 0",
        "# TYPE goldcache_datastore_read_latency_seconds histogram"}) {
    EXPECT_THAT(text, HasSubstr(name));
  }
}

}  // namespace
}  // namespace goldcache::backing
