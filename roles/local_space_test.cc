#include "roles/local_space.h"

#include <gtest/gtest.h>

#include <future>

namespace goldcache::roles {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// A read cache of `capacity` bytes in 1 MiB chunks that lends what it has.
class FakeCache : public ReadCacheSpace {
 public:
  explicit FakeCache(uint64_t capacity) : capacity_(capacity) {}
  uint64_t LendSpace(uint64_t bytes) override {
    std::lock_guard lock(mu_);
    const uint64_t chunks = std::min((bytes + kMiB - 1) / kMiB, capacity_ / kMiB);
    capacity_ -= chunks * kMiB;
    lent_ += chunks * kMiB;
    return chunks * kMiB;
  }
  uint64_t ReturnSpace(uint64_t bytes) override {
    std::lock_guard lock(mu_);
    const uint64_t n = std::min(bytes / kMiB * kMiB, lent_);
    capacity_ += n;
    lent_ -= n;
    return n;
  }
  uint64_t capacity_bytes() const override {
    std::lock_guard lock(mu_);
    return capacity_;
  }
  // A real cache evicts cached chunks here, not never-written slots; the
  // fake only counts that the disk path asked for this one.
  uint64_t GiveBackDisk(uint64_t bytes) override {
    const uint64_t n = LendSpace(bytes);
    given_back_ += n;
    return n;
  }
  uint64_t given_back() const { return given_back_.load(); }

 private:
  mutable std::mutex mu_;
  uint64_t capacity_;
  uint64_t lent_ = 0;
  std::atomic<uint64_t> given_back_{0};
};

// The file system's free space is whatever the test says.
class FakeDiskEnv : public io::Env {
 public:
  Result<std::unique_ptr<io::File>> Open(const std::string&, bool, bool) override {
    return Status::Error(Code::kNotSupported, "no files here");
  }
  Status Remove(const std::string&) override { return Status::Ok(); }
  Status SyncDir(const std::string&) override { return Status::Ok(); }
  Result<struct statvfs> StatFs(const std::string&) override {
    struct statvfs st {};
    st.f_frsize = 4096;
    st.f_bavail = free.load() / 4096;
    return st;
  }
  std::atomic<uint64_t> free{1ull << 40};
};

LocalSpace::Options Opts(uint64_t total, FakeDiskEnv& env) {
  LocalSpace::Options o;
  o.total = total;
  o.step = 8 * kMiB;
  o.dir = "/nowhere";
  o.env = &env;
  o.check_interval = std::chrono::milliseconds(20);
  return o;
}

TEST(LocalSpaceTest, LendsAheadSoAcquiresDoNotWaitForTheCache) {
  FakeDiskEnv env;
  FakeCache cache(100 * kMiB);
  LocalSpace space(Opts(100 * kMiB, env), cache);
  space.Settle();
  EXPECT_GE(space.pool_bytes(), 8 * kMiB);  // lent before anyone asked
  EXPECT_EQ(cache.capacity_bytes() + space.pool_bytes(), 100 * kMiB);
  EXPECT_TRUE(space.Acquire(2 * kMiB));
  EXPECT_EQ(space.overlay_bytes(), 2 * kMiB);
  space.Release(2 * kMiB);
  EXPECT_EQ(space.overlay_bytes(), 0u);
}

TEST(LocalSpaceTest, OverlaysOutrankTheCacheUntilItHasNothingLeft) {
  FakeDiskEnv env;
  FakeCache cache(40 * kMiB);
  LocalSpace space(Opts(40 * kMiB, env), cache);
  uint64_t got = 0;
  while (space.Acquire(2 * kMiB)) got += 2 * kMiB;
  EXPECT_EQ(got, 40 * kMiB);  // everything the cache had
  EXPECT_EQ(cache.capacity_bytes(), 0u);
  space.Release(got);
  space.Settle();
  // Beyond two steps, the pool gives back to the cache.
  EXPECT_LE(space.pool_bytes(), 2 * 8 * kMiB);
  EXPECT_GE(cache.capacity_bytes(), 40 * kMiB - 2 * 8 * kMiB);
  EXPECT_EQ(cache.capacity_bytes() + space.pool_bytes(), 40 * kMiB);
}

TEST(LocalSpaceTest, AFullDiskMakesTheCacheGiveBackAndKeepItUntilThereIsRoom) {
  FakeDiskEnv env;
  FakeCache cache(1000 * kMiB);
  LocalSpace space(Opts(1000 * kMiB, env), cache);
  space.Settle();
  const uint64_t before = cache.capacity_bytes();
  env.free = 10 * kMiB;  // something else filled the disk
  space.Settle();
  EXPECT_GE(space.held_for_disk_bytes(), LocalSpace::kReserve - 10 * kMiB);
  EXPECT_GE(cache.given_back(), LocalSpace::kReserve - 10 * kMiB)
      << "the reserve took budget (LendSpace), which frees no disk";
  EXPECT_LE(cache.capacity_bytes(), before - (LocalSpace::kReserve - 10 * kMiB));
  env.free = 1ull << 40;  // it went away
  space.Settle();
  EXPECT_EQ(space.held_for_disk_bytes(), 0u);
  EXPECT_EQ(cache.capacity_bytes() + space.pool_bytes(), 1000 * kMiB);
}

TEST(LocalSpaceTest, AWriterWaitsForALargeLoanRatherThanFailing) {
  FakeDiskEnv env;
  FakeCache cache(200 * kMiB);
  LocalSpace space(Opts(200 * kMiB, env), cache);
  space.Settle();
  EXPECT_TRUE(space.Acquire(100 * kMiB));  // far more than the pool held
  EXPECT_EQ(space.overlay_bytes(), 100 * kMiB);
}

}  // namespace
}  // namespace goldcache::roles
