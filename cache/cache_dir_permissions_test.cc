// The cache dir and everything the cache writes into it (chunk store,
// markers, RocksDB's files) are owner-only: the index names datastore paths.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cache/chunk_cache.h"
#include "metrics/metrics.h"

namespace goldcache::cache {
namespace {

class CacheDirPermissionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gc-cache-perm-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    chmod(root_.c_str(), 0755);
    old_umask_ = umask(022);  // systemd's default for services, and a shell's
  }
  void TearDown() override {
    umask(old_umask_);
    std::filesystem::remove_all(root_);
  }

  CacheOptions Options() {
    CacheOptions o;
    o.dir = root_ + "/goldcache";
    o.capacity_bytes = 8ull << 20;
    o.chunk_size = 1u << 20;
    o.registry = &registry_;
    return o;
  }

  // Every entry under the cache dir (the dir included) open to group or
  // others, with its mode.
  std::vector<std::string> OpenToOthers() {
    std::vector<std::string> open;
    auto check = [&](const std::filesystem::path& p) {
      struct stat st;
      if (lstat(p.c_str(), &st) != 0 || S_ISLNK(st.st_mode)) return;
      if ((st.st_mode & 077) != 0) {
        char mode[8];
        snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);
        open.push_back(p.string() + " " + mode);
      }
    };
    check(Options().dir);
    for (const auto& entry : std::filesystem::recursive_directory_iterator(Options().dir)) {
      check(entry.path());
    }
    return open;
  }

  uint64_t Tightened() {
    return registry_
        .GetCounter("goldcache_errors_total", "Errors by kind.", {{"kind", "cache_permissions"}})
        .Value();
  }

  std::string root_;
  mode_t old_umask_ = 0;
  metrics::Registry registry_;
};

TEST_F(CacheDirPermissionsTest, ANewCacheIsOwnerOnly) {
  {
    auto cache = ChunkCache::Open(Options());
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    ASSERT_TRUE((*cache)->FlushIndex().ok());
    // While running, RocksDB's files (LOG, MANIFEST, WAL, LOCK, ...) too.
    EXPECT_EQ(OpenToOthers(), std::vector<std::string>{});
  }
  ASSERT_TRUE(std::filesystem::exists(Options().dir + "/index/CURRENT"));
  EXPECT_EQ(OpenToOthers(), std::vector<std::string>{});
  EXPECT_EQ(Tightened(), 0u);
  // Reopened (RocksDB rolls its log and writes new files): still so.
  auto again = ChunkCache::Open(Options());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(OpenToOthers(), std::vector<std::string>{});
}

TEST_F(CacheDirPermissionsTest, ACacheLeftOpenByAnOlderAgentIsTightenedAndCounted) {
  {
    auto cache = ChunkCache::Open(Options());
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  }
  // What agents before this fix left behind.
  chmod(Options().dir.c_str(), 0755);
  chmod((Options().dir + "/index").c_str(), 0755);
  chmod((Options().dir + "/index/CURRENT").c_str(), 0644);
  auto cache = ChunkCache::Open(Options());
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  EXPECT_EQ(OpenToOthers(), std::vector<std::string>{});
  EXPECT_EQ(Tightened(), 3u);
}

}  // namespace
}  // namespace goldcache::cache
