#include "io/rings.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace goldcache::io {
namespace {

// Polls `done` for up to 20 s.
bool WaitFor(const std::function<bool()>& done) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// The process's io_uring file descriptors.
std::set<int> RingFds() {
  std::set<int> fds;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  while (dirent* e = readdir(dir)) {
    char target[256];
    std::string link = std::string("/proc/self/fd/") + e->d_name;
    ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
    if (n > 0 && std::string(target, static_cast<size_t>(n)) == "anon_inode:[io_uring]") {
      fds.insert(std::atoi(e->d_name));
    }
  }
  closedir(dir);
  return fds;
}

class IoRingsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gc-io-rings-test-XXXXXX";
    fd_ = mkstemp(tmpl);
    ASSERT_GE(fd_, 0);
    path_ = tmpl;
    data_.assign(3 * 4096, '\0');
    for (size_t i = 0; i < data_.size(); ++i) data_[i] = static_cast<char>('a' + i % 26);
    ASSERT_EQ(pwrite(fd_, data_.data(), data_.size(), 0), static_cast<ssize_t>(data_.size()));
  }
  void TearDown() override {
    close(fd_);
    unlink(path_.c_str());
  }

  // Reads the file's three blocks in one batch and checks them.
  void ReadAndCheck(IoRings& rings) {
    std::vector<char> buf(data_.size(), 0);
    IoRequest reqs[3];
    for (int i = 0; i < 3; ++i) {
      reqs[i] = {fd_, uint64_t(i) * 4096, buf.data() + i * 4096, 4096, false};
    }
    Status st = rings.Run(reqs);
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(std::string(buf.begin(), buf.end()), data_);
  }

  int fd_ = -1;
  std::string path_;
  std::string data_;
};

TEST_F(IoRingsTest, ReadsAndWritesInOneBatch) {
  IoRings rings;
  ReadAndCheck(rings);
  char block[4096];
  std::memset(block, 'z', sizeof(block));
  IoRequest write{fd_, 4096, block, sizeof(block), true};
  ASSERT_TRUE(rings.Run(std::span<IoRequest>(&write, 1)).ok());
  data_.replace(4096, 4096, std::string(4096, 'z'));
  ReadAndCheck(rings);
  EXPECT_EQ(rings.discarded_rings(), 0u);
}

TEST_F(IoRingsTest, AFailedRequestLeavesTheRingUsable) {
  IoRings rings;
  char buf[16];
  IoRequest bad{-1, 0, buf, sizeof(buf), false};  // a bad fd fails in its CQE
  Status st = rings.Run(std::span<IoRequest>(&bad, 1));
  EXPECT_FALSE(st.ok());
  ReadAndCheck(rings);
  EXPECT_EQ(rings.discarded_rings(), 0u);
}

// A ring whose submit fails is destroyed, never pooled: its SQEs are still
// queued in it and would be taken by the next batch. The failure is made by
// replacing the ring's file descriptor with /dev/null, so io_uring_enter
// fails while the ring's memory stays mapped.
TEST_F(IoRingsTest, ARingWhoseSubmitFailedIsDiscardedAndTheBatchStillServed) {
  std::set<int> before = RingFds();
  IoRings rings;  // makes one ring and pools it
  if (!rings.uses_io_uring()) GTEST_SKIP() << "io_uring is unavailable here";
  std::set<int> after = RingFds();
  std::vector<int> made;
  for (int fd : after) {
    if (!before.count(fd)) made.push_back(fd);
  }
  ASSERT_EQ(made.size(), 1u);
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(null_fd, 0);
  ASSERT_EQ(dup2(null_fd, made[0]), made[0]);
  close(null_fd);

  metrics::Counter failures;
  rings.CountFailuresIn(&failures);
  ReadAndCheck(rings);  // on the broken ring: served with pread instead
  EXPECT_EQ(rings.discarded_rings(), 1u);
  EXPECT_EQ(failures.Value(), 1u);
  for (int i = 0; i < 3; ++i) ReadAndCheck(rings);  // on a new ring
  EXPECT_EQ(rings.discarded_rings(), 1u);
}

std::atomic<int> signals_seen{0};
void CountSignal(int) { ++signals_seen; }

// The syscall a thread is blocked in (its number), or -1 while it runs.
long BlockedIn(pid_t tid) {
  std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/syscall");
  std::string first;
  in >> first;
  if (first.empty() || first == "running") return -1;
  return std::strtol(first.c_str(), nullptr, 10);
}

// A signal while waiting for completions must not end the batch early: the
// kernel would still write into the caller's buffer after Run returned, and
// the ring would go back to the pool with a completion nobody reaped.
TEST_F(IoRingsTest, ASignalDuringTheWaitDoesNotAbandonTheBatch) {
  IoRings rings;
  if (!rings.uses_io_uring()) GTEST_SKIP() << "io_uring is unavailable here";
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  struct sigaction sa {};
  sa.sa_handler = CountSignal;  // no SA_RESTART
  struct sigaction old {};
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);

  char buf[8] = {};
  Status st = Status::Error(Code::kIoError, "not run");
  std::atomic<pid_t> tid{0};
  std::atomic<bool> returned{false};
  std::thread reader([&] {
    tid = static_cast<pid_t>(syscall(SYS_gettid));
    IoRequest read{pipe_fds[0], 0, buf, 4, false};  // blocks until the pipe has data
    st = rings.Run(std::span<IoRequest>(&read, 1));
    returned = true;
  });
  ASSERT_TRUE(WaitFor([&] { return tid != 0; }));
  // Interrupt the reader three times while it is blocked in io_uring_enter.
  signals_seen = 0;
  for (int i = 0; i < 3 && !returned; ++i) {
    ASSERT_TRUE(WaitFor([&] { return returned || BlockedIn(tid) == SYS_io_uring_enter; }));
    if (returned) break;
    pthread_kill(reader.native_handle(), SIGUSR1);
    ASSERT_TRUE(WaitFor([&] { return signals_seen == i + 1; }));
  }
  EXPECT_FALSE(returned) << "Run returned before its read completed: " << st.ToString();
  ASSERT_EQ(write(pipe_fds[1], "data", 4), 4);
  reader.join();
  sigaction(SIGUSR1, &old, nullptr);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(std::string(buf, 4), "data");
  EXPECT_EQ(rings.discarded_rings(), 0u);
  ReadAndCheck(rings);
}

}  // namespace
}  // namespace goldcache::io
