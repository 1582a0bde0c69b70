#include "io/fault_env.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <future>
#include <string>

namespace goldcache::io {
namespace {

using namespace std::chrono_literals;

class FaultEnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gc-io-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::unique_ptr<File> OpenOrDie(Env& env, const std::string& name) {
    auto f = env.Open(dir_ + "/" + name, true, false);
    EXPECT_TRUE(f.ok()) << f.status().ToString();
    return f.ok() ? std::move(f).value() : nullptr;
  }
  std::string ReadBack(const std::string& name, size_t n) {
    auto f = PosixEnv().Open(dir_ + "/" + name, false, false);
    std::string out(n, '\0');
    EXPECT_TRUE((*f)->ReadAt(0, out).ok());
    return out;
  }
  std::string dir_;
};

TEST_F(FaultEnvTest, PosixFilesReadWhatWasWrittenInOneBatch) {
  auto f = OpenOrDie(PosixEnv(), "a");
  std::string one = "first", two = "second";
  Request w[2] = {{0, one.data(), one.size(), true}, {4096, two.data(), two.size(), true}};
  ASSERT_TRUE(f->Run(w).ok());
  ASSERT_TRUE(f->Sync().ok());
  std::string a(5, '\0'), b(6, '\0');
  Request r[2] = {{0, a.data(), a.size(), false}, {4096, b.data(), b.size(), false}};
  ASSERT_TRUE(f->Run(r).ok());
  EXPECT_EQ(a, one);
  EXPECT_EQ(b, two);
  std::string past(8, '\0');
  EXPECT_FALSE(f->ReadAt(1 << 20, past).ok());  // past the end of the file
}

TEST_F(FaultEnvTest, ChosenCallFailsWithItsErrnoAfterTheSkippedOnes) {
  FaultEnv env;
  env.Add({.op = Op::kWrite, .path_contains = "chunks", .skip = 1, .count = 1, .error = EIO});
  auto f = OpenOrDie(env, "chunks.dat");
  auto other = OpenOrDie(env, "sums.dat");
  std::string data = "x";
  EXPECT_TRUE(f->WriteAt(0, data).ok());  // skipped
  Status st = f->WriteAt(0, data);
  EXPECT_EQ(st.os_errno(), EIO);
  EXPECT_TRUE(f->WriteAt(0, data).ok());  // count = 1: only once
  EXPECT_TRUE(other->WriteAt(0, data).ok());
  EXPECT_EQ(env.calls(Op::kWrite), 4u);
}

TEST_F(FaultEnvTest, ShortWriteLeavesHalfOnDisk) {
  FaultEnv env;
  env.Add({.op = Op::kWrite, .short_write = true});
  auto f = OpenOrDie(env, "a");
  std::string data(8, 'w');
  EXPECT_EQ(f->WriteAt(0, data).os_errno(), ENOSPC);
  EXPECT_EQ(ReadBack("a", 4), "wwww");
  EXPECT_EQ(std::filesystem::file_size(dir_ + "/a"), 4u);
}

TEST_F(FaultEnvTest, LatchHoldsTheCallUntilOpened) {
  FaultEnv env;
  auto latch = std::make_shared<Latch>();
  env.Add({.op = Op::kWrite, .latch = latch});
  auto f = OpenOrDie(env, "a");
  auto done = std::async(std::launch::async, [&] { return f->WriteAt(0, "held").ok(); });
  ASSERT_TRUE(latch->WaitBlocked(10s));
  EXPECT_EQ(done.wait_for(0s), std::future_status::timeout);
  EXPECT_EQ(ReadBack("a", 0), "");
  latch->Open();
  EXPECT_TRUE(done.get());
  EXPECT_EQ(ReadBack("a", 4), "held");
}

TEST_F(FaultEnvTest, PowerCutUndoesUnsyncedWritesAndFailsLaterCalls) {
  FaultEnv env;
  bool hook_ran = false;
  env.OnPowerCut([&] { hook_ran = true; });
  auto f = OpenOrDie(env, "a");
  ASSERT_TRUE(f->WriteAt(0, "durable!").ok());
  ASSERT_TRUE(f->Sync().ok());
  ASSERT_TRUE(f->WriteAt(8, "volatile").ok());
  env.PowerCut();
  EXPECT_TRUE(hook_ran);
  EXPECT_TRUE(env.powered_off());
  const std::string after = ReadBack("a", 16);
  EXPECT_EQ(after.substr(0, 8), "durable!");
  EXPECT_NE(after.substr(8, 8), "volatile");
  EXPECT_EQ(f->WriteAt(0, "x").os_errno(), EIO);
  EXPECT_EQ(f->Sync().os_errno(), EIO);
  EXPECT_FALSE(env.Open(dir_ + "/b", true, false).ok());
}

}  // namespace
}  // namespace goldcache::io
