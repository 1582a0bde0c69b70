#include "backing/metered_backing.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace goldcache::backing {
namespace {

// The registry's metrics, looked up once so every operation costs a few
// relaxed atomic adds. Shared by the Backing and all files it opened.
struct Meters {
  Meters(metrics::Registry& r, const metrics::Labels& labels,
         std::chrono::milliseconds retry_interval)
      : retry_interval(retry_interval),
        up(r.GetGauge("goldcache_datastore_up",
                      "1 while the datastore answers, 0 while it is down (timing out).", labels)),
        outages(r.GetCounter("goldcache_datastore_outages_total",
                             "Times the datastore stopped answering.", labels)),
        fast_failures(r.GetCounter("goldcache_datastore_fast_failures_total",
                                   "Operations refused at once while the datastore was down.",
                                   labels)),
        read_bytes(r.GetCounter("goldcache_datastore_read_bytes_total",
                                "Bytes read from datastore files.", labels)),
        read_ops(r.GetCounter("goldcache_datastore_read_ops_total",
                              "Read operations on datastore files.", labels)),
        write_bytes(r.GetCounter("goldcache_datastore_write_bytes_total",
                                 "Bytes written to datastore files.", labels)),
        write_ops(r.GetCounter("goldcache_datastore_write_ops_total",
                               "Write operations on datastore files.", labels)),
        metadata_read_ops(r.GetCounter("goldcache_datastore_metadata_ops_total",
                                       "Datastore operations other than file data IO, by whether "
                                       "they change the datastore.",
                                       With(labels, "access", "read"))),
        metadata_write_ops(r.GetCounter("goldcache_datastore_metadata_ops_total", "",
                                        With(labels, "access", "write"))),
        errors(r.GetCounter("goldcache_datastore_errors_total",
                            "Datastore operations that failed (not counting not-found and "
                            "already-exists answers).",
                            labels)),
        read_latency(r.GetHistogram("goldcache_datastore_read_latency_seconds",
                                    "Latency of reads from datastore files.", labels,
                                    metrics::LatencyBuckets())) {
    up.Set(1);
  }

  static metrics::Labels With(metrics::Labels labels, std::string key, std::string value) {
    labels.emplace_back(std::move(key), std::move(value));
    return labels;
  }

  void CountError(const Status& s) {
    if (!s.ok() && s.code() != Code::kNotFound && s.code() != Code::kExists) errors.Add();
  }
  template <typename T>
  void CountError(const Result<T>& r) {
    if (!r.ok()) CountError(r.status());
  }

  // Runs `op` unless the datastore is down and this is not the time to probe;
  // records whether the datastore answered.
  template <typename F>
  auto Call(F&& op) -> decltype(op()) {
    using Clock = std::chrono::steady_clock;
    bool probe = false;
    if (down.load()) {
      if (Clock::now().time_since_epoch().count() < next_probe.load() || probing.exchange(true)) {
        fast_failures.Add();
        return Status::Error(Code::kTimedOut, "the datastore is not answering (retrying every " +
                                                  std::to_string(retry_interval.count()) + " ms)");
      }
      probe = true;
    }
    auto r = op();
    const bool timed_out = !r.ok() && StatusOf(r).code() == Code::kTimedOut;
    if (timed_out) {
      next_probe.store((Clock::now() + retry_interval).time_since_epoch().count());
      if (!down.exchange(true)) {
        outages.Add();
        up.Set(0);
        spdlog::error("datastore is not answering ({}); serving from the cache, misses fail",
                      StatusOf(r).ToString());
      }
    } else if (down.load() && (probe || !probing.load())) {
      down.store(false);
      up.Set(1);
      spdlog::info("datastore is answering again");
    }
    if (probe) probing.store(false);
    return r;
  }

  template <typename R>
  static Status StatusOf(const R& r) {
    if constexpr (std::is_same_v<R, Status>) {
      return r;
    } else {
      return r.status();
    }
  }

  // Counts a metadata operation and its failure.
  template <typename F>
  auto MetaRead(F&& op) {
    auto r = Call(op);
    metadata_read_ops.Add();
    CountError(r);
    return r;
  }
  template <typename F>
  auto MetaWrite(F&& op) {
    auto r = Call(op);
    metadata_write_ops.Add();
    CountError(r);
    return r;
  }

  const std::chrono::milliseconds retry_interval;
  std::atomic<bool> down{false};
  std::atomic<bool> probing{false};
  std::atomic<int64_t> next_probe{0};  // steady_clock ticks
  metrics::Gauge& up;
  metrics::Counter& outages;
  metrics::Counter& fast_failures;
  metrics::Counter& read_bytes;
  metrics::Counter& read_ops;
  metrics::Counter& write_bytes;
  metrics::Counter& write_ops;
  metrics::Counter& metadata_read_ops;
  metrics::Counter& metadata_write_ops;
  metrics::Counter& errors;
  metrics::Histogram& read_latency;
};

class MeteredFile final : public BackingFile {
 public:
  MeteredFile(std::unique_ptr<BackingFile> inner, std::shared_ptr<Meters> m)
      : inner_(std::move(inner)), m_(std::move(m)) {}

  Result<size_t> ReadAt(uint64_t offset, std::span<char> buf) override {
    auto start = std::chrono::steady_clock::now();
    Result<size_t> r = m_->Call([&] { return inner_->ReadAt(offset, buf); });
    m_->read_latency.Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    m_->read_ops.Add();
    if (r.ok()) m_->read_bytes.Add(*r);
    m_->CountError(r);
    return r;
  }

  Result<size_t> ReadAtVersioned(uint64_t offset, std::span<char> buf,
                                 std::optional<FileVersion>* after) override {
    auto start = std::chrono::steady_clock::now();
    Result<size_t> r = m_->Call([&] { return inner_->ReadAtVersioned(offset, buf, after); });
    m_->read_latency.Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    m_->read_ops.Add();
    if (r.ok()) m_->read_bytes.Add(*r);
    m_->CountError(r);
    return r;
  }

  Result<size_t> WriteAt(uint64_t offset, std::span<const char> buf) override {
    Result<size_t> r = m_->Call([&] { return inner_->WriteAt(offset, buf); });
    m_->write_ops.Add();
    if (r.ok()) m_->write_bytes.Add(*r);
    m_->CountError(r);
    return r;
  }

  Result<struct stat> Stat() override {
    return m_->MetaRead([&] { return inner_->Stat(); });
  }
  Status Sync(bool datasync) override {
    return m_->MetaWrite([&] { return inner_->Sync(datasync); });
  }
  // Not an operation of its own: for a written file it is the tail of the
  // writes (or the commit of them), for a read-only one nothing.
  Status Flush() override {
    Status st = m_->Call([&] { return inner_->Flush(); });
    m_->CountError(st);
    return st;
  }
  Status Truncate(uint64_t size) override {
    return m_->MetaWrite([&] { return inner_->Truncate(size); });
  }
  Status Allocate(int mode, uint64_t offset, uint64_t length) override {
    return m_->MetaWrite([&] { return inner_->Allocate(mode, offset, length); });
  }

 private:
  const std::unique_ptr<BackingFile> inner_;
  const std::shared_ptr<Meters> m_;
};

class MeteredBacking final : public Backing {
 public:
  MeteredBacking(std::unique_ptr<Backing> inner, std::shared_ptr<Meters> m)
      : inner_(std::move(inner)), m_(std::move(m)) {}

  Result<struct stat> Stat(const std::string& path) override {
    return m_->MetaRead([&] { return inner_->Stat(path); });
  }
  Result<std::vector<DirEntry>> ReadDir(const std::string& path) override {
    return m_->MetaRead([&] { return inner_->ReadDir(path); });
  }
  Result<std::string> ReadLink(const std::string& path) override {
    return m_->MetaRead([&] { return inner_->ReadLink(path); });
  }
  Result<std::unique_ptr<BackingFile>> Open(const std::string& path, int flags) override {
    return Wrap(m_->MetaRead([&] { return inner_->Open(path, flags); }));
  }
  Result<std::unique_ptr<BackingFile>> Create(const std::string& path, int flags,
                                              mode_t mode) override {
    return Wrap(m_->MetaWrite([&] { return inner_->Create(path, flags, mode); }));
  }
  Status Mkdir(const std::string& path, mode_t mode) override {
    return m_->MetaWrite([&] { return inner_->Mkdir(path, mode); });
  }
  Status Unlink(const std::string& path) override {
    return m_->MetaWrite([&] { return inner_->Unlink(path); });
  }
  Status Rmdir(const std::string& path) override {
    return m_->MetaWrite([&] { return inner_->Rmdir(path); });
  }
  Status Rename(const std::string& from, const std::string& to, unsigned flags) override {
    return m_->MetaWrite([&] { return inner_->Rename(from, to, flags); });
  }
  Status Symlink(const std::string& target, const std::string& path) override {
    return m_->MetaWrite([&] { return inner_->Symlink(target, path); });
  }
  Status Link(const std::string& existing, const std::string& path) override {
    return m_->MetaWrite([&] { return inner_->Link(existing, path); });
  }
  Status Truncate(const std::string& path, uint64_t size) override {
    return m_->MetaWrite([&] { return inner_->Truncate(path, size); });
  }
  Status Chmod(const std::string& path, mode_t mode) override {
    return m_->MetaWrite([&] { return inner_->Chmod(path, mode); });
  }
  Status Chown(const std::string& path, uid_t uid, gid_t gid) override {
    return m_->MetaWrite([&] { return inner_->Chown(path, uid, gid); });
  }
  Status Utimens(const std::string& path, const struct timespec times[2]) override {
    return m_->MetaWrite([&] { return inner_->Utimens(path, times); });
  }
  Result<struct statvfs> StatFs() override {
    return m_->MetaRead([&] { return inner_->StatFs(); });
  }
  std::string Describe() const override { return inner_->Describe(); }

 private:
  Result<std::unique_ptr<BackingFile>> Wrap(Result<std::unique_ptr<BackingFile>> r) {
    if (!r.ok()) return r;
    return std::unique_ptr<BackingFile>(std::make_unique<MeteredFile>(std::move(*r), m_));
  }

  const std::unique_ptr<Backing> inner_;
  const std::shared_ptr<Meters> m_;
};

}  // namespace

std::unique_ptr<Backing> MakeMeteredBacking(std::unique_ptr<Backing> inner,
                                            metrics::Registry& registry,
                                            const metrics::Labels& labels,
                                            std::chrono::milliseconds retry_interval) {
  return std::make_unique<MeteredBacking>(
      std::move(inner), std::make_shared<Meters>(registry, labels, retry_interval));
}

}  // namespace goldcache::backing
