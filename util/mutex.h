// A std::mutex that clang's thread-safety analysis can follow, its scoped
// lock, and a condition variable that waits on it. Same cost as std::mutex,
// std::unique_lock and std::condition_variable, which they wrap: the only
// difference is the annotations (util/thread_annotations.h).
//
// A predicate passed to CondVar::Wait runs with the mutex held, but the
// analysis checks a lambda's body on its own; start such a lambda with
// `mu.AssertHeld();`:
//
//   MutexLock lock(mu_);
//   cv_.Wait(lock, [&] {
//     mu_.AssertHeld();
//     return !queue_.empty();
//   });
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "util/thread_annotations.h"

namespace goldcache {

class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ACQUIRE() { mu_.lock(); }
  void Unlock() RELEASE() { mu_.unlock(); }
  bool TryLock() TRY_ACQUIRE(true) { return mu_.try_lock(); }
  // For the analysis only: says the caller holds this mutex (inside a
  // condition predicate, say). Checks nothing at run time.
  void AssertHeld() const ASSERT_CAPABILITY(this) {}

 private:
  friend class MutexLock;
  std::mutex mu_;
};

// Holds a Mutex for its scope. CondVar waits may drop and retake it.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : lock_(mu.mu_) {}
  ~MutexLock() RELEASE() {}
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  friend class CondVar;
  std::unique_lock<std::mutex> lock_;
};

class CondVar {
 public:
  void NotifyOne() { cv_.notify_one(); }
  void NotifyAll() { cv_.notify_all(); }

  // Waits until `pred()` holds; `lock` is held whenever pred runs.
  template <typename Pred>
  void Wait(MutexLock& lock, Pred pred) {
    cv_.wait(lock.lock_, std::move(pred));
  }
  // Waits until `pred()` holds or `timeout` passes; returns pred().
  template <typename Rep, typename Period, typename Pred>
  bool WaitFor(MutexLock& lock, const std::chrono::duration<Rep, Period>& timeout, Pred pred) {
    return cv_.wait_for(lock.lock_, timeout, std::move(pred));
  }
  template <typename Clock, typename Duration, typename Pred>
  bool WaitUntil(MutexLock& lock, const std::chrono::time_point<Clock, Duration>& deadline,
                 Pred pred) {
    return cv_.wait_until(lock.lock_, deadline, std::move(pred));
  }

 private:
  std::condition_variable cv_;
};

}  // namespace goldcache
