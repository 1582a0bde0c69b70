// Per-template and per-desktop series for /metrics, made at scrape time
// from DatastoreFs::ListTemplates() and ListDesktops(): the templates and desktops
// come and go, so they are not registry metrics (those live for the
// process). Appended after the registry's families by the stats endpoint.
//
// Families (Prometheus text format 0.0.4, each with # HELP and # TYPE; every
// series has datastore="NAME" and template="PATH" or desktop="PATH", the
// path relative to the datastore root):
//   goldcache_template_read_ops_total, goldcache_template_read_bytes_total,
//   goldcache_template_read_datastore_bytes_total,
//   goldcache_template_read_seconds_total        counters since the agent started
//   goldcache_template_cached_bytes, goldcache_template_open_handles   gauges
//   goldcache_desktop_read_ops_total, goldcache_desktop_read_bytes_total,
//   goldcache_desktop_read_datastore_bytes_total, goldcache_desktop_read_seconds_total,
//   goldcache_desktop_write_ops_total, goldcache_desktop_write_bytes_total,
//   goldcache_desktop_write_seconds_total        counters since the desktop's overlay
//                                                was created (they restart at each reset)
//   goldcache_desktop_overlay_bytes{tier="ram"|"disk"}, goldcache_desktop_open_handles
// A family with no series (no desktop yet) is left out.
//
// Thread safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "metrics/metrics.h"
#include "roles/datastore_fs.h"

namespace goldcache::agent {

struct DatastoreInventory {
  std::string name;  // the datastore label
  std::vector<roles::Templates::Info> templates;
  std::vector<roles::Desktops::Info> desktops;
};

struct InventoryFamily {
  std::string name;
  std::string type;  // "counter" or "gauge"
  std::string help;
  std::vector<std::pair<metrics::Labels, double>> series;
};

// The families above, sorted by name, each with at least one series.
std::vector<InventoryFamily> InventoryFamilies(const std::vector<DatastoreInventory>& datastores);

// Prometheus text: # HELP, # TYPE and the series of each family.
std::string RenderInventoryPrometheus(const std::vector<InventoryFamily>& families);

// Adds the families to `metrics`, a Registry::RenderJson() object, in its
// shape: {"<name>": {"type", "help", "metrics": [{"labels": {...}, "value"}]}}.
void AddInventoryJson(const std::vector<InventoryFamily>& families, nlohmann::json& metrics);

}  // namespace goldcache::agent
