#include "agent/inventory_metrics.h"

#include <cmath>
#include <cstdio>
#include <functional>

namespace goldcache::agent {
namespace {

// A label value in the text format: backslash, double quote and newline
// escaped.
std::string Quoted(const std::string& value) {
  std::string out = "\"";
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string Number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

using Tpl = roles::Templates::Info;
using Dsk = roles::Desktops::Info;
// A row's values: one per extra label value ("" for none).
using Values = std::vector<std::pair<std::string, double>>;

Values One(double v) { return {{"", v}}; }
double D(uint64_t v) { return static_cast<double>(v); }

template <typename Row>
void AddFamily(std::vector<InventoryFamily>& out, const std::vector<DatastoreInventory>& datastores,
               std::vector<Row> DatastoreInventory::*rows, const char* kind, const char* name,
               const char* type, const char* help, const std::function<Values(const Row&)>& values,
               const char* extra_label = "") {
  InventoryFamily family{name, type, help, {}};
  for (const DatastoreInventory& ds : datastores) {
    for (const Row& row : ds.*rows) {
      for (const auto& [extra, v] : values(row)) {
        metrics::Labels labels = {{"datastore", ds.name}, {kind, row.path}};
        if (!extra.empty()) labels.emplace_back(extra_label, extra);
        family.series.emplace_back(std::move(labels), v);
      }
    }
  }
  if (!family.series.empty()) out.push_back(std::move(family));
}

}  // namespace

std::vector<InventoryFamily> InventoryFamilies(const std::vector<DatastoreInventory>& datastores) {
  std::vector<InventoryFamily> out;
  auto dsk = [&](const char* name, const char* type, const char* help,
                 std::function<Values(const Dsk&)> f, const char* extra_label = "") {
    AddFamily<Dsk>(out, datastores, &DatastoreInventory::desktops, "desktop", name, type, help, f,
                   extra_label);
  };
  auto tpl = [&](const char* name, const char* type, const char* help,
                 std::function<Values(const Tpl&)> f) {
    AddFamily<Tpl>(out, datastores, &DatastoreInventory::templates, "template", name, type, help,
                   f);
  };
  // In order of name, as the registry's families are.
  dsk("goldcache_desktop_open_handles", "gauge", "Open handles on a desktop's disk file.",
      [](const Dsk& d) { return One(d.open_handles); });
  dsk(
      "goldcache_desktop_overlay_bytes", "gauge",
      "Bytes of a desktop's writes held on this host, by tier.",
      [](const Dsk& d) {
        return Values{{"ram", D(d.overlay_ram_bytes)}, {"disk", D(d.overlay_disk_bytes)}};
      },
      "tier");
  dsk("goldcache_desktop_read_bytes_total", "counter",
      "Bytes a desktop read through the mount, since its overlay was created.",
      [](const Dsk& d) { return One(D(d.io.read_bytes)); });
  dsk("goldcache_desktop_read_datastore_bytes_total", "counter",
      "Of a desktop's read bytes, those the datastore served (cache misses).",
      [](const Dsk& d) { return One(D(d.io.read_bytes_from_datastore)); });
  dsk("goldcache_desktop_read_ops_total", "counter",
      "Reads of a desktop through the mount, since its overlay was created.",
      [](const Dsk& d) { return One(D(d.io.read_ops)); });
  dsk("goldcache_desktop_read_seconds_total", "counter",
      "Time a desktop's reads took, summed (divide by its reads for the mean).",
      [](const Dsk& d) { return One(D(d.io.read_latency_ns) * 1e-9); });
  dsk("goldcache_desktop_write_bytes_total", "counter",
      "Bytes a desktop wrote (to its overlay), since its overlay was created.",
      [](const Dsk& d) { return One(D(d.io.write_bytes)); });
  dsk("goldcache_desktop_write_ops_total", "counter",
      "Writes of a desktop, since its overlay was created.",
      [](const Dsk& d) { return One(D(d.io.write_ops)); });
  dsk("goldcache_desktop_write_seconds_total", "counter",
      "Time a desktop's writes took, summed (divide by its writes for the mean).",
      [](const Dsk& d) { return One(D(d.io.write_latency_ns) * 1e-9); });
  tpl("goldcache_template_cached_bytes", "gauge",
      "Bytes of a template's current generation in the local cache.",
      [](const Tpl& t) { return One(D(t.cached_bytes)); });
  tpl("goldcache_template_open_handles", "gauge", "Open handles on a template, all generations.",
      [](const Tpl& t) { return One(t.open_handles); });
  tpl("goldcache_template_read_bytes_total", "counter",
      "Bytes read from a template through the mount since the agent started.",
      [](const Tpl& t) { return One(D(t.io.read_bytes)); });
  tpl("goldcache_template_read_datastore_bytes_total", "counter",
      "Of a template's read bytes, those the datastore served (cache misses).",
      [](const Tpl& t) { return One(D(t.io.read_bytes_from_datastore)); });
  tpl("goldcache_template_read_ops_total", "counter",
      "Reads of a template through the mount since the agent started.",
      [](const Tpl& t) { return One(D(t.io.read_ops)); });
  tpl("goldcache_template_read_seconds_total", "counter",
      "Time a template's reads took, summed (divide by its reads for the mean).",
      [](const Tpl& t) { return One(D(t.io.read_latency_ns) * 1e-9); });
  return out;
}

std::string RenderInventoryPrometheus(const std::vector<InventoryFamily>& families) {
  std::string out;
  for (const InventoryFamily& f : families) {
    out += "# HELP " + f.name + " " + f.help + "\n# TYPE " + f.name + " " + f.type + "\n";
    for (const auto& [labels, v] : f.series) {
      out += f.name + "{";
      for (size_t i = 0; i < labels.size(); ++i) {
        out += (i ? "," : "") + labels[i].first + "=" + Quoted(labels[i].second);
      }
      out += "} " + Number(v) + "\n";
    }
  }
  return out;
}

void AddInventoryJson(const std::vector<InventoryFamily>& families, nlohmann::json& metrics) {
  for (const InventoryFamily& f : families) {
    nlohmann::json series = nlohmann::json::array();
    for (const auto& [labels, v] : f.series) {
      nlohmann::json l = nlohmann::json::object();
      for (const auto& [k, val] : labels) l[k] = val;
      // Whole numbers stay integers, as the registry's counters are.
      nlohmann::json value = v;
      if (v >= 0 && v == std::floor(v) && v < 9.0e15) value = static_cast<uint64_t>(v);
      series.push_back({{"labels", std::move(l)}, {"value", std::move(value)}});
    }
    metrics[f.name] = {{"type", f.type}, {"help", f.help}, {"metrics", std::move(series)}};
  }
}

}  // namespace goldcache::agent
