#include "cache/fetch_pool.h"

#include <algorithm>

namespace goldcache::cache {
namespace {
thread_local bool on_pool_thread = false;
}  // namespace

bool FetchPool::OnPoolThread() { return on_pool_thread; }

bool FetchPool::Task::done() const { return state_.load(std::memory_order_acquire) == kDone; }

bool FetchPool::Task::TryRun() {
  int expected = kQueued;
  if (!state_.compare_exchange_strong(expected, kRunning, std::memory_order_acq_rel)) return false;
  fn_();
  fn_ = nullptr;  // what it captured goes now, not with the last reference
  {
    std::lock_guard lock(mu_);
    state_.store(kDone, std::memory_order_release);
  }
  cv_.notify_all();
  return true;
}

void FetchPool::Task::Wait() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return state_.load(std::memory_order_acquire) == kDone; });
}

FetchPool::FetchPool(unsigned threads, unsigned max_prefetch) : max_prefetch_(max_prefetch) {
  for (unsigned i = 0; i < std::max(threads, 1u); ++i) threads_.emplace_back([this] { Loop(); });
}

FetchPool::~FetchPool() {
  std::deque<std::shared_ptr<Task>> left;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    left.insert(left.end(), demand_.begin(), demand_.end());
    left.insert(left.end(), prefetch_.begin(), prefetch_.end());
    demand_.clear();
    prefetch_.clear();
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  // Whoever still waits on one must not wait forever.
  for (auto& task : left) task->TryRun();
}

std::shared_ptr<FetchPool::Task> FetchPool::Submit(std::function<void()> fn) {
  auto task = std::make_shared<Task>(std::move(fn), false);
  {
    std::lock_guard lock(mu_);
    demand_.push_back(task);
  }
  cv_.notify_one();
  return task;
}

std::shared_ptr<FetchPool::Task> FetchPool::SubmitPrefetch(std::function<void()> fn) {
  auto task = std::make_shared<Task>(std::move(fn), true);
  {
    std::lock_guard lock(mu_);
    prefetch_.push_back(task);
  }
  cv_.notify_one();
  return task;
}

void FetchPool::RunOrWait(const std::shared_ptr<Task>& task) {
  if (!task->TryRun()) task->Wait();
}

size_t FetchPool::prefetch_load() const {
  std::lock_guard lock(mu_);
  return prefetch_.size() + prefetch_running_;
}

void FetchPool::Loop() {
  on_pool_thread = true;
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] {
      return stop_ || !demand_.empty() || (!prefetch_.empty() && prefetch_running_ < max_prefetch_);
    });
    if (stop_) return;
    std::shared_ptr<Task> task;
    if (!demand_.empty()) {
      task = std::move(demand_.front());
      demand_.pop_front();
    } else {
      task = std::move(prefetch_.front());
      prefetch_.pop_front();
    }
    const bool prefetch = task->prefetch();
    if (prefetch) ++prefetch_running_;
    lock.unlock();
    task->TryRun();  // false: a waiting reader took it first
    task.reset();
    lock.lock();
    if (prefetch) {
      --prefetch_running_;
      cv_.notify_one();  // another prefetch may run now
    }
  }
}

}  // namespace goldcache::cache
