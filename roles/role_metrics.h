// The metrics every role of one datastore view updates (docs/metrics.md):
// looked up once, updated lock-free from every handle.
#pragma once

#include <chrono>

#include "metrics/metrics.h"

namespace goldcache::roles {

struct RoleMetrics {
  explicit RoleMetrics(metrics::Registry& r);

  // A read served through the mount, by where its bytes came from; its
  // latency counts for the datastore if any byte came from there, else for
  // the cache if any came from there, else for the overlay.
  void CountRead(uint64_t from_cache, uint64_t from_datastore, uint64_t from_overlay,
                 std::chrono::steady_clock::duration took);

  metrics::Counter& read_cache;
  metrics::Counter& read_datastore;
  metrics::Counter& read_overlay;
  metrics::Histogram& latency_cache;
  metrics::Histogram& latency_datastore;
  metrics::Histogram& latency_overlay;
  metrics::Counter& desktop_resets;
  metrics::Counter& desktop_manual_resets;
  metrics::Counter& release_waits;
  metrics::Counter& generation_changes;
  metrics::Counter& changed_while_open;
  metrics::Counter& stale_reads;
  metrics::Counter& read_errors;
  metrics::Counter& readonly_refusals;
  metrics::Counter& outage_attrs;
  metrics::Counter& outage_opens;
  // Manifests read at open, by what they were (index/manifest.h).
  metrics::Counter& manifest_loaded;
  metrics::Counter& manifest_stale;
  metrics::Counter& manifest_damaged;
  metrics::Counter& manifests_published;
};

// Nanoseconds since `start` on the steady clock.
uint64_t NanosSince(std::chrono::steady_clock::time_point start);

}  // namespace goldcache::roles
