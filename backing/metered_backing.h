// A Backing decorator that counts everything crossing to the datastore, so an
// operator can see how much load the agent still puts on shared storage, and
// tests can prove a nonpersistent desktop wrote nothing there. It also keeps
// the datastore's health (invariant 6): once an operation times out, the
// datastore is down and further operations fail at once with kTimedOut
// instead of each waiting out the timeout; one operation per
// `retry_interval` goes through as a probe, and the first answer that is not
// a timeout marks the datastore up again.
//
// Metrics (all carry `labels`, e.g. {{"datastore", "ds1"}}):
//   goldcache_datastore_read_bytes_total      bytes returned by file reads
//   goldcache_datastore_read_ops_total        file reads (ReadAt calls)
//   goldcache_datastore_write_bytes_total     bytes written by file writes
//   goldcache_datastore_write_ops_total       file writes (WriteAt calls)
//   goldcache_datastore_metadata_ops_total{access="read"}   stat, readdir,
//       readlink, open, fstat, statfs
//   goldcache_datastore_metadata_ops_total{access="write"}  anything else that
//       changes the datastore: create, mkdir, unlink, rmdir, rename, symlink,
//       link, truncate, chmod, chown, utimens, allocate, sync
//   goldcache_datastore_errors_total          failed operations of any kind,
//       except kNotFound and kExists, which are answers, not failures (every
//       lookup of a name the kernel has not seen yet may be ENOENT)
//   goldcache_datastore_read_latency_seconds  histogram of ReadAt latency
//   goldcache_datastore_up                    1 while answering, 0 while down
//   goldcache_datastore_outages_total         times it went down
//   goldcache_datastore_fast_failures_total   operations refused while down
// A failed ReadAt/WriteAt counts as an op with zero bytes.
//
// Ownership: takes `inner`; `registry` must outlive the returned Backing and
// every file it opened. Thread safety: as the inner Backing; the counting is
// lock-free.
#pragma once

#include <chrono>
#include <memory>

#include "backing/backing.h"
#include "metrics/metrics.h"

namespace goldcache::backing {

std::unique_ptr<Backing> MakeMeteredBacking(
    std::unique_ptr<Backing> inner, metrics::Registry& registry, const metrics::Labels& labels = {},
    std::chrono::milliseconds retry_interval = std::chrono::seconds(1));

}  // namespace goldcache::backing
