// `goldcache top`: rates from two samples of the agent's `stats` answer
// (the control socket's "stats" command, the same JSON as GET /stats), and
// one screenful of them for a terminal.
//
// The agent keeps counters, never rates: per template and per desktop the
// IO through the mount (ops, bytes, latency sums; "templates" and "desktops"
// of /stats), per datastore the filer's traffic (the goldcache_datastore_*
// metrics under "metrics"). A rate is the difference of a counter between
// two samples over the agent's own clock (uptime_seconds) between them.
//
// A desktop's counters start at zero when its overlay is created (its first
// open after a reset); one missing from the earlier sample, or whose counters
// went down (it was reset in between), counts from zero.
//
// Thread safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "util/status.h"

namespace goldcache::cli {

// The rates between two `stats` answers of one agent, `before` taken first:
//   {"interval_seconds", "version", "pid", "uptime_seconds",
//    "cache": {"used_bytes", "capacity_bytes", "hit_ratio", "lookups_per_second"},
//    "offload_ratio", "overlay": {"ram_bytes", "disk_bytes"},
//    "datastores": [{"name", "up", "read_ops_per_second", "read_bytes_per_second",
//                    "read_latency_seconds", "write_ops_per_second",
//                    "write_bytes_per_second", "metadata_ops_per_second",
//                    "errors_per_second"}],
//    "templates": [{"datastore", "path", "read_ops_per_second", "read_bytes_per_second",
//                   "hit_ratio", "read_latency_seconds", "open_handles", "cached_bytes",
//                   "size_bytes"}],
//    "desktops": [{"datastore", "path", "read_ops_per_second", "write_ops_per_second",
//                  "read_bytes_per_second", "write_bytes_per_second", "hit_ratio",
//                  "read_latency_seconds", "write_latency_seconds", "overlay_ram_bytes",
//                  "overlay_disk_bytes", "open_handles"}]}
// Ratios and latencies are over the interval, null when nothing happened in
// it. Templates and desktops are sorted busiest first (operations per
// second, then bytes per second, then path).
// Errors: kInvalidArgument when the samples are not two of one agent's
// answers in order (another pid: the agent restarted in between).
Result<nlohmann::json> TopRates(const nlohmann::json& before, const nlohmann::json& after);

// One frame of `rates`: lines of at most `width` columns (at least 80 is
// assumed; names are shortened from the left to fit). `max_lines` > 0 caps
// the frame's height, dropping the least busy rows first and saying how many
// are not shown; 0 shows every row.
std::vector<std::string> TopFrame(const nlohmann::json& rates, int width, int max_lines);

// Compact forms for narrow columns: "0", "512B", "1.5K", "46M"; "980us",
// "1.2ms"; "12", "0.5", "123k".
std::string CompactBytes(double bytes);
std::string CompactSeconds(double seconds);
std::string CompactCount(double n);

}  // namespace goldcache::cli
