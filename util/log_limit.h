// LogLimit: at most one log line per interval for an error that can repeat
// per request (a full or failing local disk fails every chunk write): the
// first occurrence is logged at once, the rest of the interval's are
// counted and told in the next line that is let through ("... and 1532
// more like it since"). The metrics still count every one.
//
//   static LogLimit limit(std::chrono::seconds(10));
//   if (auto more = limit.Allow()) spdlog::error("... ({} more since)", ..., *more);
//
// Thread safety: Allow may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>

namespace goldcache {

class LogLimit {
 public:
  using Clock = std::chrono::steady_clock;

  explicit LogLimit(Clock::duration interval) : interval_(interval) {}

  // nullopt: do not log this one (it is counted). Otherwise log it, with the
  // number of occurrences held back since the last line let through.
  std::optional<uint64_t> Allow(Clock::time_point now = Clock::now()) {
    std::lock_guard lock(mu_);
    if (logged_ && now - last_ < interval_) {
      ++held_;
      return std::nullopt;
    }
    logged_ = true;
    last_ = now;
    const uint64_t held = held_;
    held_ = 0;
    return held;
  }

 private:
  const Clock::duration interval_;
  std::mutex mu_;
  bool logged_ = false;       // GUARDED_BY(mu_)
  Clock::time_point last_{};  // GUARDED_BY(mu_)
  uint64_t held_ = 0;         // GUARDED_BY(mu_)
};

}  // namespace goldcache
