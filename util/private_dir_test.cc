#include "util/private_dir.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace goldcache {
namespace {

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

class PrivateDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gc-private-dir-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    old_umask_ = umask(022);  // what a systemd service and a shell have
  }
  void TearDown() override {
    umask(old_umask_);
    std::filesystem::remove_all(root_);
  }
  std::string root_;
  mode_t old_umask_ = 0;
};

TEST_F(PrivateDirTest, CreatesTheDirectoryOwnerOnly) {
  std::string dir = root_ + "/var/lib/goldcache";
  auto loosened = MakePrivateTree(dir);
  ASSERT_TRUE(loosened.ok()) << loosened.status().ToString();
  EXPECT_EQ(*loosened, 0u);
  EXPECT_EQ(ModeOf(dir), 0700u);
  EXPECT_EQ(ModeOf(root_ + "/var/lib"), 0755u);  // parents as usual
}

TEST_F(PrivateDirTest, TightensWhatAnOlderAgentLeftOpen) {
  std::string dir = root_ + "/cache";
  std::filesystem::create_directories(dir + "/index");
  std::ofstream(dir + "/index/000001.log") << "datastore paths";
  std::ofstream(dir + "/chunks.dat") << "data";
  std::ofstream(dir + "/own.dat") << "x";
  chmod(dir.c_str(), 0755);
  chmod((dir + "/index").c_str(), 0755);
  chmod((dir + "/index/000001.log").c_str(), 0644);
  chmod((dir + "/chunks.dat").c_str(), 0664);
  chmod((dir + "/own.dat").c_str(), 0600);
  symlink("/etc/passwd", (dir + "/link").c_str());

  auto loosened = MakePrivateTree(dir);
  ASSERT_TRUE(loosened.ok()) << loosened.status().ToString();
  EXPECT_EQ(*loosened, 4u);
  EXPECT_EQ(ModeOf(dir), 0700u);
  EXPECT_EQ(ModeOf(dir + "/index"), 0700u);
  EXPECT_EQ(ModeOf(dir + "/index/000001.log"), 0600u);
  EXPECT_EQ(ModeOf(dir + "/chunks.dat"), 0600u);
  EXPECT_EQ(ModeOf(dir + "/own.dat"), 0600u);
  EXPECT_EQ(ModeOf("/etc/passwd"), 0644u);  // a link is not followed
  // Nothing left to do the second time.
  auto again = MakePrivateTree(dir);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 0u);
}

TEST_F(PrivateDirTest, AFileInTheWayIsAnError) {
  std::string path = root_ + "/file";
  std::ofstream(path) << "x";
  chmod(path.c_str(), 0600);
  auto loosened = MakePrivateTree(path + "/cache");
  EXPECT_FALSE(loosened.ok());
}

}  // namespace
}  // namespace goldcache
