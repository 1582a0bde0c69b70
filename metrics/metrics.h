// metrics/ — counters, gauges and histograms that every room updates on its
// hot path, rendered for Prometheus (/metrics) and people (/stats).
//
// Hot path: Counter, Gauge and Histogram updates are single relaxed atomic
// operations (a histogram: three), never a lock and never an allocation. Look
// a metric up once (Registry::Get*), keep the reference, update it forever.
//
// Ownership: the Registry owns every metric. A reference returned by Get* stays
// valid for the registry's lifetime, so the registry must outlive every
// component holding one.
//
// Thread safety: all members of all classes here are safe to call from many
// threads at once. Registration and rendering share one mutex.
//
// Errors: registering a name with two different metric types, an invalid
// metric or label name, or histogram bounds that are not strictly increasing
// is a programming error; the process aborts with a message naming the metric.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "util/mutex.h"

namespace goldcache::metrics {

// Label name/value pairs. Order does not matter: {a,b} and {b,a} name the
// same metric, and rendering sorts labels by name.
using Labels = std::vector<std::pair<std::string, std::string>>;

// A count that only goes up (bytes, operations, errors).
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  void Add(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down (bytes in use, open handles).
class Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(int64_t v) { value_.store(v, std::memory_order_relaxed); }
  void Add(int64_t delta) { value_.fetch_add(delta, std::memory_order_relaxed); }
  int64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// A distribution over fixed buckets. Bucket i counts observations
// v <= bounds[i] (and > bounds[i-1]); one more bucket counts the rest (+Inf).
// Rendering makes the counts cumulative, as Prometheus expects.
class Histogram {
 public:
  // REQUIRES: `bounds` finite and strictly increasing (may be empty).
  explicit Histogram(std::vector<double> bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  void Observe(double v);

  const std::vector<double>& bounds() const { return bounds_; }
  // Observations in bucket i alone (not cumulative); i == bounds().size() is +Inf.
  uint64_t BucketCount(size_t i) const { return buckets_[i].load(std::memory_order_relaxed); }
  uint64_t Count() const;
  double Sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1 entries
  std::atomic<double> sum_{0.0};
};

// Latency bounds in seconds, 50us to 10s in 1-2.5-5 steps: wide enough for a
// local SSD hit and for a filer that is about to time out.
std::vector<double> LatencyBuckets();

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Returns the metric named `name` with exactly `labels`, creating it on
  // first use. `help` is taken from the first registration of the name.
  Counter& GetCounter(const std::string& name, const std::string& help, const Labels& labels = {})
      EXCLUDES(mu_);
  Gauge& GetGauge(const std::string& name, const std::string& help, const Labels& labels = {})
      EXCLUDES(mu_);
  // All histograms of one name must use the same bounds.
  Histogram& GetHistogram(const std::string& name, const std::string& help, const Labels& labels,
                          std::vector<double> bounds) EXCLUDES(mu_);
  // A gauge whose value is computed at render time (cache fill, free space).
  // `fn` is called with the registry's lock held: it must be cheap, must not
  // call into this registry, and must stay callable for the registry's
  // lifetime. Registering the same name and labels again replaces `fn`.
  void AddCallbackGauge(const std::string& name, const std::string& help, const Labels& labels,
                        std::function<double()> fn) EXCLUDES(mu_);

  // Prometheus text exposition format 0.0.4, families sorted by name.
  std::string RenderPrometheus() const EXCLUDES(mu_);
  // {"<name>": {"type": "counter", "help": "...", "metrics": [{"labels": {...},
  //   "value": 1}]}}; a histogram metric has "count", "sum" and "buckets":
  //   [{"le": 0.1, "count": <cumulative>}, ..., {"le": "+Inf", "count": n}].
  nlohmann::json RenderJson() const EXCLUDES(mu_);

 private:
  enum class Type : int;
  struct Child;
  struct Family;
  // Finds or creates the child for `labels`, aborting when `name` already
  // has another type.
  Child& ChildFor(const std::string& name, const std::string& help, Type type, const Labels& labels,
                  const std::vector<double>* bounds) REQUIRES(mu_);

  mutable Mutex mu_;
  // Families never move once created; children live in unique_ptrs, so
  // references handed out stay valid while the maps grow.
  std::map<std::string, std::unique_ptr<Family>> families_ GUARDED_BY(mu_);
};

}  // namespace goldcache::metrics
