// IO through the mount on one file (a template, a desktop), counted by its
// open handles: what /stats reports per file and `goldcache top` turns into
// rates.
//
// Thread safety: IoCounters is updated by many handles at once without a
// lock (relaxed atomics); a Snapshot is not one instant, but each field is.
#pragma once

#include <atomic>
#include <cstdint>

namespace goldcache::roles {

// Latencies are sums over the operations (divide by the ops for a mean).
// Failed operations are not counted.
struct IoCounts {
  uint64_t read_ops = 0;
  uint64_t read_bytes = 0;
  uint64_t read_bytes_from_datastore = 0;  // of read_bytes, what the datastore served
  uint64_t read_latency_ns = 0;
  uint64_t write_ops = 0;
  uint64_t write_bytes = 0;
  uint64_t write_latency_ns = 0;
};

class IoCounters {
 public:
  void CountRead(uint64_t bytes, uint64_t from_datastore, uint64_t ns) {
    read_ops_.fetch_add(1, std::memory_order_relaxed);
    read_bytes_.fetch_add(bytes, std::memory_order_relaxed);
    read_from_datastore_.fetch_add(from_datastore, std::memory_order_relaxed);
    read_ns_.fetch_add(ns, std::memory_order_relaxed);
  }
  void CountWrite(uint64_t bytes, uint64_t ns) {
    write_ops_.fetch_add(1, std::memory_order_relaxed);
    write_bytes_.fetch_add(bytes, std::memory_order_relaxed);
    write_ns_.fetch_add(ns, std::memory_order_relaxed);
  }
  IoCounts Snapshot() const {
    constexpr auto kRelaxed = std::memory_order_relaxed;
    IoCounts c;
    c.read_ops = read_ops_.load(kRelaxed);
    c.read_bytes = read_bytes_.load(kRelaxed);
    c.read_bytes_from_datastore = read_from_datastore_.load(kRelaxed);
    c.read_latency_ns = read_ns_.load(kRelaxed);
    c.write_ops = write_ops_.load(kRelaxed);
    c.write_bytes = write_bytes_.load(kRelaxed);
    c.write_latency_ns = write_ns_.load(kRelaxed);
    return c;
  }

 private:
  std::atomic<uint64_t> read_ops_{0}, read_bytes_{0}, read_from_datastore_{0}, read_ns_{0};
  std::atomic<uint64_t> write_ops_{0}, write_bytes_{0}, write_ns_{0};
};

}  // namespace goldcache::roles
