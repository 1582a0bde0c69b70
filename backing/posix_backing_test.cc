#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "backing/backing.h"

namespace goldcache::backing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class PosixBackingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/goldcache_posix_backing_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    Result<std::unique_ptr<Backing>> b = OpenPosixBacking(root_);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    backing_ = std::move(*b);
  }
  void TearDown() override {
    backing_.reset();
    std::filesystem::remove_all(root_);
  }

  void WriteLocal(const std::string& rel, const std::string& content) {
    std::ofstream(root_ + "/" + rel, std::ios::binary) << content;
  }
  std::string ReadLocal(const std::string& rel) {
    std::ifstream in(root_ + "/" + rel, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  std::string root_;
  std::unique_ptr<Backing> backing_;
};

TEST_F(PosixBackingTest, ReadsWholeFileAndShortAtEnd) {
  std::string content(10000, '\0');
  for (size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>('a' + i % 26);
  WriteLocal("t.img", content);
  auto f = backing_->Open("t.img", O_RDONLY);
  ASSERT_TRUE(f.ok()) << f.status().ToString();

  std::string buf(4096, '\0');
  auto n = (*f)->ReadAt(100, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 4096u);
  EXPECT_EQ(buf, content.substr(100, 4096));

  n = (*f)->ReadAt(9000, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1000u);
  EXPECT_EQ(buf.substr(0, 1000), content.substr(9000));

  n = (*f)->ReadAt(20000, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
}

TEST_F(PosixBackingTest, IgnoresODirectSoUnalignedReadsWork) {
  WriteLocal("t.img", "hello world");
  auto f = backing_->Open("t.img", O_RDONLY | O_DIRECT);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  char buf[5];
  auto n = (*f)->ReadAt(3, buf);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(std::string(buf, *n), "lo wo");
}

TEST_F(PosixBackingTest, WritesAtOffsetEvenWhenOpenedWithAppend) {
  WriteLocal("p.img", "0123456789");
  auto f = backing_->Open("p.img", O_RDWR | O_APPEND);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  auto n = (*f)->WriteAt(2, std::string_view("ab"));
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 2u);
  ASSERT_TRUE((*f)->Sync(true).ok());
  EXPECT_EQ(ReadLocal("p.img"), "01ab456789");
  auto st = (*f)->Stat();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_size, 10);
  ASSERT_TRUE((*f)->Truncate(4).ok());
  EXPECT_EQ(ReadLocal("p.img"), "01ab");
  ASSERT_TRUE((*f)->Allocate(0, 0, 8192).ok());
  EXPECT_EQ(std::filesystem::file_size(root_ + "/p.img"), 8192u);
}

TEST_F(PosixBackingTest, WriteToReadOnlyFileIsReadOnly) {
  WriteLocal("t.img", "x");
  auto f = backing_->Open("t.img", O_RDONLY);
  ASSERT_TRUE(f.ok());
  auto n = (*f)->WriteAt(0, std::string_view("y"));
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Code::kReadOnly);
  EXPECT_EQ(ReadLocal("t.img"), "x");
}

TEST_F(PosixBackingTest, CreateMakesFileAndHonoursExcl) {
  auto f = backing_->Create("new.qcow2", O_RDWR, 0640);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_TRUE((*f)->WriteAt(0, std::string_view("data")).ok());
  EXPECT_EQ(ReadLocal("new.qcow2"), "data");
  struct stat st;
  ASSERT_EQ(::stat((root_ + "/new.qcow2").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777 & ~0640, 0u);  // umask may only remove bits

  auto again = backing_->Create("new.qcow2", O_RDWR | O_EXCL, 0640);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), Code::kExists);
  EXPECT_EQ(again.status().os_errno(), EEXIST);

  auto reopen = backing_->Create("new.qcow2", O_RDWR, 0640);  // no O_EXCL: opens it
  EXPECT_TRUE(reopen.ok()) << reopen.status().ToString();
}

TEST_F(PosixBackingTest, OpenNeverCreates) {
  auto f = backing_->Open("absent.img", O_RDWR | O_CREAT);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().os_errno(), ENOENT);
  EXPECT_FALSE(std::filesystem::exists(root_ + "/absent.img"));
}

TEST_F(PosixBackingTest, StatOfRootAndMissingFile) {
  auto st = backing_->Stat("");
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(S_ISDIR(st->st_mode));

  auto missing = backing_->Stat("templates/nope.img");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_EQ(missing.status().os_errno(), ENOENT);
  EXPECT_THAT(missing.status().message(), HasSubstr("stat \"templates/nope.img\""));
  EXPECT_THAT(missing.status().message(), HasSubstr(root_));
}

TEST_F(PosixBackingTest, MkdirReadDirListsEntriesWithLstat) {
  ASSERT_TRUE(backing_->Mkdir("pool", 0755).ok());
  WriteLocal("pool/vm1.qcow2", "abc");
  ASSERT_TRUE(backing_->Symlink("../templates/win11.img", "pool/base").ok());
  ASSERT_TRUE(backing_->Mkdir("pool/sub", 0755).ok());

  auto entries = backing_->ReadDir("pool");
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  std::sort(entries->begin(), entries->end(),
            [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  std::vector<std::string> names;
  for (const DirEntry& e : *entries) names.push_back(e.name);
  EXPECT_THAT(names, ElementsAre("base", "sub", "vm1.qcow2"));
  EXPECT_TRUE(S_ISLNK((*entries)[0].st.st_mode));  // dangling link still listed
  EXPECT_TRUE(S_ISDIR((*entries)[1].st.st_mode));
  EXPECT_TRUE(S_ISREG((*entries)[2].st.st_mode));
  EXPECT_EQ((*entries)[2].st.st_size, 3);

  auto root_entries = backing_->ReadDir("");
  ASSERT_TRUE(root_entries.ok());
  ASSERT_EQ(root_entries->size(), 1u);
  EXPECT_EQ((*root_entries)[0].name, "pool");
}

TEST_F(PosixBackingTest, SymlinkIsNotFollowed) {
  WriteLocal("target.img", "secret");
  ASSERT_TRUE(backing_->Symlink("target.img", "link").ok());

  auto target = backing_->ReadLink("link");
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(*target, "target.img");
  auto st = backing_->Stat("link");
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(S_ISLNK(st->st_mode));

  auto f = backing_->Open("link", O_RDONLY);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().os_errno(), ELOOP);
}

TEST_F(PosixBackingTest, ReadLinkOfLongTarget) {
  std::string target(1000, 'x');
  ASSERT_TRUE(backing_->Symlink(target, "long").ok());
  auto got = backing_->ReadLink("long");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, target);
}

TEST_F(PosixBackingTest, RenameHonoursNoReplace) {
  WriteLocal("a", "A");
  WriteLocal("b", "B");
  Status s = backing_->Rename("a", "b", RENAME_NOREPLACE);
  EXPECT_EQ(s.code(), Code::kExists);
  EXPECT_THAT(s.message(), HasSubstr("rename \"a\" -> \"b\""));
  ASSERT_TRUE(backing_->Rename("a", "c", RENAME_NOREPLACE).ok());
  ASSERT_TRUE(backing_->Rename("c", "b", 0).ok());
  EXPECT_EQ(ReadLocal("b"), "A");
  EXPECT_FALSE(std::filesystem::exists(root_ + "/a"));
}

TEST_F(PosixBackingTest, LinkUnlinkRmdir) {
  WriteLocal("f", "F");
  ASSERT_TRUE(backing_->Link("f", "g").ok());
  EXPECT_EQ(ReadLocal("g"), "F");
  ASSERT_TRUE(backing_->Unlink("f").ok());
  EXPECT_EQ(backing_->Unlink("f").os_errno(), ENOENT);

  ASSERT_TRUE(backing_->Mkdir("d", 0755).ok());
  EXPECT_EQ(backing_->Mkdir("d", 0755).code(), Code::kExists);
  WriteLocal("d/x", "");
  EXPECT_EQ(backing_->Rmdir("d").os_errno(), ENOTEMPTY);
  ASSERT_TRUE(backing_->Unlink("d/x").ok());
  ASSERT_TRUE(backing_->Rmdir("d").ok());
}

TEST_F(PosixBackingTest, TruncateChmodUtimens) {
  WriteLocal("f", "0123456789");
  ASSERT_TRUE(backing_->Truncate("f", 3).ok());
  EXPECT_EQ(ReadLocal("f"), "012");
  ASSERT_TRUE(backing_->Chmod("f", 0600).ok());
  struct timespec times[2] = {{1000, 0}, {2000, 500}};
  ASSERT_TRUE(backing_->Utimens("f", times).ok());
  auto st = backing_->Stat("f");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_mode & 07777, 0600u);
  EXPECT_EQ(st->st_mtim.tv_sec, 2000);
  EXPECT_EQ(st->st_mtim.tv_nsec, 500);
  EXPECT_EQ(st->st_atim.tv_sec, 1000);
  ASSERT_TRUE(backing_->Chown("f", st->st_uid, st->st_gid).ok());
}

TEST_F(PosixBackingTest, ChmodDoesNotFollowSymlinkOutOfDatastore) {
  WriteLocal("victim", "v");
  ASSERT_EQ(::chmod((root_ + "/victim").c_str(), 0644), 0);
  ASSERT_TRUE(backing_->Symlink(root_ + "/victim", "evil").ok());
  EXPECT_FALSE(backing_->Chmod("evil", 0777).ok());
  struct stat st;
  ASSERT_EQ(::stat((root_ + "/victim").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
}

TEST_F(PosixBackingTest, RejectsPathsThatLeaveTheDatastore) {
  for (const char* bad : {"/etc/passwd", "..", "../x", "a/../../x", "a//b", "./a", "a/"}) {
    SCOPED_TRACE(bad);
    auto st = backing_->Stat(bad);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.status().code(), Code::kInvalidArgument);
  }
}

TEST_F(PosixBackingTest, StatFsAndDescribe) {
  auto st = backing_->StatFs();
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_GT(st->f_blocks, 0u);
  EXPECT_EQ(backing_->Describe(), "posix:" + root_);
}

TEST_F(PosixBackingTest, KeepsServingTheSameDirectoryAfterRootIsRenamed) {
  WriteLocal("f", "same");
  std::string moved = root_ + ".moved";
  ASSERT_EQ(::rename(root_.c_str(), moved.c_str()), 0);
  auto st = backing_->Stat("f");
  ::rename(moved.c_str(), root_.c_str());
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(st->st_size, 4);
}

TEST(OpenPosixBackingTest, MissingRootIsNotFoundAndNamesIt) {
  auto b = OpenPosixBacking("/nonexistent/goldcache/ds1");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kNotFound);
  EXPECT_THAT(b.status().message(), HasSubstr("/nonexistent/goldcache/ds1"));
}

TEST(OpenPosixBackingTest, FileRootIsInvalidArgument) {
  char tmpl[] = "/tmp/goldcache_posix_root_XXXXXX";
  int fd = ::mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ::close(fd);
  auto b = OpenPosixBacking(tmpl);
  ::unlink(tmpl);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr(tmpl));
}

}  // namespace
}  // namespace goldcache::backing
