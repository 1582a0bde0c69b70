#include "cache/fetch_pool.h"

#include <gtest/gtest.h>

#include <future>

namespace goldcache::cache {
namespace {

using namespace std::chrono_literals;

// A gate a task waits at until the test opens it.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  int waiting = 0;
  void Wait() {
    std::unique_lock lock(mu);
    ++waiting;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
  }
  bool WaitWaiting(int n) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, 10s, [&] { return waiting >= n; });
  }
  void Open() {
    std::lock_guard lock(mu);
    open = true;
    cv.notify_all();
  }
};

TEST(FetchPoolTest, EveryTaskRunsExactlyOnce) {
  FetchPool pool(4, 2);
  std::atomic<int> runs{0};
  std::vector<std::shared_ptr<FetchPool::Task>> tasks;
  for (int i = 0; i < 200; ++i) {
    tasks.push_back(i % 3 ? pool.Submit([&] { runs++; }) : pool.SubmitPrefetch([&] { runs++; }));
  }
  for (auto& t : tasks) pool.RunOrWait(t);
  EXPECT_EQ(runs.load(), 200);
  for (auto& t : tasks) EXPECT_TRUE(t->done());
}

TEST(FetchPoolTest, AWaiterRunsATaskNoThreadHasStarted) {
  FetchPool pool(1, 1);
  Gate gate;
  auto blocker = pool.Submit([&] { gate.Wait(); });
  ASSERT_TRUE(gate.WaitWaiting(1));  // the only pool thread is busy
  bool ran_here = false;
  const auto me = std::this_thread::get_id();
  auto task = pool.Submit([&] { ran_here = std::this_thread::get_id() == me; });
  pool.RunOrWait(task);  // must not wait for the blocker
  EXPECT_TRUE(ran_here);
  gate.Open();
  pool.RunOrWait(blocker);
}

TEST(FetchPoolTest, PrefetchNeverDelaysDemandAndIsBounded) {
  FetchPool pool(3, 1);
  Gate gate;
  std::atomic<int> prefetch_started{0};
  std::vector<std::shared_ptr<FetchPool::Task>> prefetch;
  for (int i = 0; i < 3; ++i) {
    prefetch.push_back(pool.SubmitPrefetch([&] {
      prefetch_started++;
      gate.Wait();
    }));
  }
  ASSERT_TRUE(gate.WaitWaiting(1));
  // One prefetch at a time: the other two stay queued, threads stay free.
  auto demand = pool.Submit([] {});
  auto done = std::async(std::launch::async, [&] { demand->Wait(); });
  EXPECT_EQ(done.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(prefetch_started.load(), 1);
  EXPECT_EQ(pool.prefetch_load(), 3u);
  gate.Open();
  for (auto& t : prefetch) pool.RunOrWait(t);
  EXPECT_EQ(prefetch_started.load(), 3);
}

TEST(FetchPoolTest, QueuedTasksRunWhenThePoolGoes) {
  std::atomic<int> runs{0};
  std::shared_ptr<FetchPool::Task> late;
  {
    FetchPool pool(1, 1);
    Gate gate;
    auto blocker = pool.Submit([&] { gate.Wait(); });
    ASSERT_TRUE(gate.WaitWaiting(1));
    late = pool.Submit([&] { runs++; });
    gate.Open();
  }
  EXPECT_TRUE(late->done());
  EXPECT_EQ(runs.load(), 1);
}

}  // namespace
}  // namespace goldcache::cache
