// FetchPool: the threads that fetch chunks from the datastore beside a
// reader's own thread: the other chunks of a request that spans several,
// readahead of a sequential run, warm, boot-trace prefetch.
//
// Two classes of work. Demand tasks (someone waits for them) always go
// first. Prefetch tasks run only while no demand task is queued, at most
// `max_prefetch` at a time (a task that is no longer wanted says so itself
// when it runs, and returns at once). A task runs exactly once, on a pool
// thread, on the thread that waits for it, or when the pool goes:
// RunOrWait() takes a task no thread has started yet and runs it right
// there, so a demand reader never waits behind a queue, whatever the pool
// is busy with.
//
// Thread safety: all methods are safe to call concurrently.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace goldcache::cache {

class FetchPool {
 public:
  class Task {
   public:
    Task(std::function<void()> fn, bool prefetch) : fn_(std::move(fn)), prefetch_(prefetch) {}
    bool prefetch() const { return prefetch_; }
    bool done() const;  // it ran
    void Wait();        // until it ran

   private:
    friend class FetchPool;
    enum State { kQueued, kRunning, kDone };
    // Runs the task if nobody has started it; true if this call did.
    bool TryRun();

    std::function<void()> fn_;
    const bool prefetch_;
    std::atomic<int> state_{kQueued};
    mutable std::mutex mu_;
    std::condition_variable cv_;
  };

  FetchPool(unsigned threads, unsigned max_prefetch);
  ~FetchPool();  // runs what is still queued (someone may wait for it), joins the threads
  FetchPool(const FetchPool&) = delete;
  FetchPool& operator=(const FetchPool&) = delete;

  std::shared_ptr<Task> Submit(std::function<void()> fn);
  std::shared_ptr<Task> SubmitPrefetch(std::function<void()> fn);
  // Runs `task` on this thread unless a pool thread already has; returns
  // once it is done.
  void RunOrWait(const std::shared_ptr<Task>& task);

  unsigned max_prefetch() const { return max_prefetch_; }
  // True on a pool thread (of any pool): a task may take its time there.
  static bool OnPoolThread();
  // Prefetch tasks queued or running now.
  size_t prefetch_load() const;

 private:
  void Loop();

  const unsigned max_prefetch_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Task>> demand_;    // GUARDED_BY(mu_)
  std::deque<std::shared_ptr<Task>> prefetch_;  // GUARDED_BY(mu_)
  unsigned prefetch_running_ = 0;               // GUARDED_BY(mu_)
  bool stop_ = false;                           // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

}  // namespace goldcache::cache
