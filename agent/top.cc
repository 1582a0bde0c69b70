#include "agent/top.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <utility>

namespace goldcache::cli {
namespace {

using nlohmann::json;

double Number(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

// A counter's growth between samples; a counter that went down was reset in
// between (a desktop's overlay), so what it has now is all new.
double Delta(const json& before, const json& after, const char* key) {
  const double now = Number(after, key);
  if (before.is_null()) return now;
  const double then = Number(before, key);
  return now >= then ? now - then : now;
}

json Ratio(double part, double whole) {
  if (whole <= 0) return nullptr;
  return std::clamp(part / whole, 0.0, 1.0);
}

// Sum of a metric's samples whose labels include `labels`: "value" of
// counters, or "count"/"sum" of histograms (`field`).
double MetricSum(const json& stats, const std::string& name,
                 const std::vector<std::pair<std::string, std::string>>& labels,
                 const char* field = "value") {
  auto metrics = stats.find("metrics");
  if (metrics == stats.end() || !metrics->is_object()) return 0;
  auto family = metrics->find(name);
  if (family == metrics->end() || !family->contains("metrics")) return 0;
  double sum = 0;
  for (const json& m : (*family)["metrics"]) {
    const json& have = m.contains("labels") ? m["labels"] : json::object();
    bool match = std::all_of(
        labels.begin(), labels.end(), [&](const std::pair<std::string, std::string>& l) {
          auto it = have.find(l.first);
          return it != have.end() && it->is_string() && it->get<std::string>() == l.second;
        });
    if (match) sum += Number(m, field);
  }
  return sum;
}

// Rows of `key` ("templates", "desktops") by (datastore, path).
std::map<std::pair<std::string, std::string>, json> RowsByName(const json& stats, const char* key) {
  std::map<std::pair<std::string, std::string>, json> out;
  auto rows = stats.find(key);
  if (rows == stats.end() || !rows->is_array()) return out;
  for (const json& row : *rows) {
    out[{row.value("datastore", ""), row.value("path", "")}] = row;
  }
  return out;
}

double Ops(const json& row) {
  return Number(row, "read_ops_per_second") + Number(row, "write_ops_per_second");
}
double Bytes(const json& row) {
  return Number(row, "read_bytes_per_second") + Number(row, "write_bytes_per_second");
}

void SortBusiestFirst(json& rows) {
  std::vector<json> v(rows.begin(), rows.end());
  std::stable_sort(v.begin(), v.end(), [](const json& a, const json& b) {
    if (Ops(a) != Ops(b)) return Ops(a) > Ops(b);
    if (Bytes(a) != Bytes(b)) return Bytes(a) > Bytes(b);
    return std::make_pair(a.value("datastore", ""), a.value("path", "")) <
           std::make_pair(b.value("datastore", ""), b.value("path", ""));
  });
  rows = json(std::move(v));
}

std::string Printf(const char* format, double v, const char* unit) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), format, v, unit);
  return buf;
}

// Left-aligned `s` in `width` columns; shortened from the left ("...tail")
// when longer, since the end of a path tells desktops apart.
std::string FitLeft(const std::string& s, size_t width) {
  if (s.size() <= width) return s + std::string(width - s.size(), ' ');
  if (width <= 3) return s.substr(s.size() - width);
  return "..." + s.substr(s.size() - (width - 3));
}

std::string Right(const std::string& s, size_t width) {
  return s.size() >= width ? s : std::string(width - s.size(), ' ') + s;
}

std::string Percent(const json& ratio) {
  if (!ratio.is_number()) return "-";
  return Printf("%.0f%s", std::floor(ratio.get<double>() * 100), "%");
}

std::string Latency(const json& seconds) {
  return seconds.is_number() ? CompactSeconds(seconds.get<double>()) : "-";
}

std::string Duration(double seconds) {
  long s = std::lround(std::max(0.0, seconds));
  char buf[48];
  if (s >= 86400) {
    std::snprintf(buf, sizeof(buf), "%ldd %02ld:%02ld", s / 86400, (s / 3600) % 24, (s / 60) % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%02ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  }
  return buf;
}

// A table: one header and rows of cells; column 0 is the name, left-aligned
// and as wide as the line allows; the others right-aligned in `widths`.
struct Table {
  std::vector<std::string> header;
  std::vector<size_t> widths;  // of columns 1..n
  std::vector<std::vector<std::string>> rows;

  std::string Line(const std::vector<std::string>& cells, size_t name_width) const {
    std::string line = FitLeft(cells[0], name_width);
    for (size_t i = 1; i < cells.size(); ++i) line += " " + Right(cells[i], widths[i - 1]);
    // Names are padded: a trailing blank is of no use to anyone.
    while (!line.empty() && line.back() == ' ') line.pop_back();
    return line;
  }
  size_t NameWidth(int width) const {
    size_t fixed = 0;
    for (size_t w : widths) fixed += w + 1;
    return static_cast<size_t>(std::max<int>(8, width - static_cast<int>(fixed)));
  }
};

}  // namespace

std::string CompactBytes(double bytes) {
  static const char* kUnits[] = {"B", "K", "M", "G", "T", "P", "E"};
  if (!(bytes > 0)) return "0";
  size_t u = 0;
  double v = bytes;
  while (u + 1 < std::size(kUnits) && std::round(v) >= 1000) {
    v /= 1024;
    ++u;
  }
  if (u == 0) return Printf("%.0f%s", std::round(v), kUnits[0]);
  return Printf(v < 9.95 ? "%.1f%s" : "%.0f%s", v, kUnits[u]);
}

std::string CompactSeconds(double seconds) {
  if (!(seconds > 0)) return "0";
  if (seconds < 0.0009995) return Printf("%.0f%s", seconds * 1e6, "us");
  if (seconds < 0.00995) return Printf("%.1f%s", seconds * 1e3, "ms");
  if (seconds < 0.9995) return Printf("%.0f%s", seconds * 1e3, "ms");
  if (seconds < 9.95) return Printf("%.1f%s", seconds, "s");
  return Printf("%.0f%s", seconds, "s");
}

std::string CompactCount(double n) {
  static const char* kUnits[] = {"k", "M", "G", "T", "P", "E"};
  if (!(n > 0)) return "0";
  if (n < 9.95) return Printf("%.1f%s", n, "");
  if (n < 99999.5) return Printf("%.0f%s", n, "");
  size_t u = 0;
  double v = n / 1000;
  while (u + 1 < std::size(kUnits) && std::round(v) >= 1000) {
    v /= 1000;
    ++u;
  }
  return Printf(v < 9.95 ? "%.1f%s" : "%.0f%s", v, kUnits[u]);
}

Result<json> TopRates(const json& before, const json& after) {
  if (!before.is_object() || !after.is_object()) {
    return Status::Error(Code::kInvalidArgument, "a stats sample is not a JSON object");
  }
  if (before.value("pid", -1) != after.value("pid", -2)) {
    return Status::Error(Code::kInvalidArgument,
                         "the samples come from different agents (it restarted)");
  }
  const double dt = Number(after, "uptime_seconds") - Number(before, "uptime_seconds");
  if (!(dt > 0)) {
    return Status::Error(Code::kInvalidArgument, "the samples are not in order");
  }
  auto rate = [dt](double delta) { return delta / dt; };

  json out = {{"interval_seconds", dt},
              {"version", after.value("version", "")},
              {"pid", after.value("pid", 0)},
              {"uptime_seconds", Number(after, "uptime_seconds")}};

  const json no_cache = json::object();
  const json& cache_before = before.contains("cache") ? before["cache"] : no_cache;
  const json& cache_after = after.contains("cache") ? after["cache"] : no_cache;
  const double hits = Delta(cache_before, cache_after, "hits");
  const double misses = Delta(cache_before, cache_after, "misses");
  out["cache"] = {{"used_bytes", Number(cache_after, "used_bytes")},
                  {"capacity_bytes", Number(cache_after, "capacity_bytes")},
                  {"hit_ratio", Ratio(hits, hits + misses)},
                  {"lookups_per_second", rate(hits + misses)}};
  out["overlay"] = {{"ram_bytes", Number(after, "overlay_ram_bytes")},
                    {"disk_bytes", Number(after, "overlay_disk_bytes")}};

  const double served = Delta(before, after, "read_bytes");
  double from_datastore = 0;
  json datastores = json::array();
  if (after.contains("datastores") && after["datastores"].is_array()) {
    for (const json& ds : after["datastores"]) {
      const std::string name = ds.value("name", "");
      const std::vector<std::pair<std::string, std::string>> l = {{"datastore", name}};
      auto delta = [&](const std::string& metric, const char* field = "value") {
        const double now = MetricSum(after, metric, l, field);
        const double then = MetricSum(before, metric, l, field);
        return now >= then ? now - then : now;
      };
      const double read_bytes = delta("goldcache_datastore_read_bytes_total");
      from_datastore += read_bytes;
      const double latency_count = delta("goldcache_datastore_read_latency_seconds", "count");
      const double latency_sum = delta("goldcache_datastore_read_latency_seconds", "sum");
      datastores.push_back(
          {{"name", name},
           {"up", ds.value("up", false)},
           {"read_ops_per_second", rate(delta("goldcache_datastore_read_ops_total"))},
           {"read_bytes_per_second", rate(read_bytes)},
           {"read_latency_seconds",
            latency_count > 0 ? json(latency_sum / latency_count) : json(nullptr)},
           {"write_ops_per_second", rate(delta("goldcache_datastore_write_ops_total"))},
           {"write_bytes_per_second", rate(delta("goldcache_datastore_write_bytes_total"))},
           {"metadata_ops_per_second", rate(delta("goldcache_datastore_metadata_ops_total"))},
           {"errors_per_second", rate(delta("goldcache_datastore_errors_total"))}});
    }
  }
  out["datastores"] = std::move(datastores);
  // The share of what was read through the mount that the datastore did not
  // serve; below 0 (shown as 0) while misses fetch whole chunks.
  out["offload_ratio"] =
      served > 0 ? json(std::clamp(1.0 - from_datastore / served, 0.0, 1.0)) : json(nullptr);

  auto earlier_templates = RowsByName(before, "templates");
  json templates = json::array();
  for (const auto& [key, row] : RowsByName(after, "templates")) {
    auto it = earlier_templates.find(key);
    const json& then = it == earlier_templates.end() ? json() : it->second;
    const double ops = Delta(then, row, "read_ops");
    const double bytes = Delta(then, row, "read_bytes");
    const double ds_bytes = Delta(then, row, "datastore_read_bytes");
    const double seconds = Delta(then, row, "read_latency_seconds");
    templates.push_back({{"datastore", key.first},
                         {"path", key.second},
                         {"read_ops_per_second", rate(ops)},
                         {"read_bytes_per_second", rate(bytes)},
                         {"hit_ratio", Ratio(bytes - std::min(bytes, ds_bytes), bytes)},
                         {"read_latency_seconds", ops > 0 ? json(seconds / ops) : json(nullptr)},
                         {"open_handles", row.value("open_handles", 0)},
                         {"cached_bytes", Number(row, "cached_bytes")},
                         {"size_bytes", Number(row, "size_bytes")}});
  }
  SortBusiestFirst(templates);
  out["templates"] = std::move(templates);

  auto earlier_desktops = RowsByName(before, "desktops");
  json desktops = json::array();
  for (const auto& [key, row] : RowsByName(after, "desktops")) {
    auto it = earlier_desktops.find(key);
    json then = it == earlier_desktops.end() ? json() : it->second;
    // One reset counter means all were reset: take them all from zero.
    for (const char* k : {"read_ops", "write_ops", "read_bytes", "write_bytes"}) {
      if (!then.is_null() && Number(row, k) < Number(then, k)) then = json();
    }
    const double reads = Delta(then, row, "read_ops");
    const double writes = Delta(then, row, "write_ops");
    const double bytes = Delta(then, row, "read_bytes");
    const double ds_bytes = Delta(then, row, "datastore_read_bytes");
    desktops.push_back(
        {{"datastore", key.first},
         {"path", key.second},
         {"read_ops_per_second", rate(reads)},
         {"write_ops_per_second", rate(writes)},
         {"read_bytes_per_second", rate(bytes)},
         {"write_bytes_per_second", rate(Delta(then, row, "write_bytes"))},
         {"hit_ratio", Ratio(bytes - std::min(bytes, ds_bytes), bytes)},
         {"read_latency_seconds",
          reads > 0 ? json(Delta(then, row, "read_latency_seconds") / reads) : json(nullptr)},
         {"write_latency_seconds",
          writes > 0 ? json(Delta(then, row, "write_latency_seconds") / writes) : json(nullptr)},
         {"overlay_ram_bytes", Number(row, "overlay_ram_bytes")},
         {"overlay_disk_bytes", Number(row, "overlay_disk_bytes")},
         {"open_handles", row.value("open_handles", 0)}});
  }
  SortBusiestFirst(desktops);
  out["desktops"] = std::move(desktops);
  return out;
}

std::vector<std::string> TopFrame(const json& rates, int width, int max_lines) {
  width = std::max(width, 60);
  std::vector<std::string> lines;
  const json& cache = rates["cache"];
  lines.push_back("goldcache " + rates.value("version", "") + "  pid " +
                  std::to_string(rates.value("pid", 0)) + "  up " +
                  Duration(Number(rates, "uptime_seconds")) + "  interval " +
                  Printf("%.1f%s", Number(rates, "interval_seconds"), "s"));
  lines.push_back("cache " + CompactBytes(Number(cache, "used_bytes")) + " of " +
                  CompactBytes(Number(cache, "capacity_bytes")) + "  hit " +
                  Percent(cache["hit_ratio"]) + "  offload " + Percent(rates["offload_ratio"]) +
                  "  overlay ram " + CompactBytes(Number(rates["overlay"], "ram_bytes")) +
                  " disk " + CompactBytes(Number(rates["overlay"], "disk_bytes")));

  const bool several = rates["datastores"].size() > 1;
  auto name_of = [several](const json& row) {
    std::string path = row.value("path", "");
    return several ? row.value("datastore", "") + ":" + path : path;
  };

  Table filer{
      {"DATASTORE", "STATE", "RIOPS", "READ/s", "RLAT", "WIOPS", "WRITE/s", "META/s", "ERR/s"},
      {5, 6, 6, 6, 6, 7, 6, 5},
      {}};
  for (const json& ds : rates["datastores"]) {
    filer.rows.push_back({ds.value("name", ""), ds.value("up", false) ? "up" : "DOWN",
                          CompactCount(Number(ds, "read_ops_per_second")),
                          CompactBytes(Number(ds, "read_bytes_per_second")),
                          Latency(ds["read_latency_seconds"]),
                          CompactCount(Number(ds, "write_ops_per_second")),
                          CompactBytes(Number(ds, "write_bytes_per_second")),
                          CompactCount(Number(ds, "metadata_ops_per_second")),
                          CompactCount(Number(ds, "errors_per_second"))});
  }
  Table templates{{"TEMPLATE", "RIOPS", "READ/s", "HIT", "RLAT", "OPEN", "CACHED", "SIZE"},
                  {6, 6, 4, 6, 4, 6, 6},
                  {}};
  for (const json& t : rates["templates"]) {
    templates.rows.push_back(
        {name_of(t), CompactCount(Number(t, "read_ops_per_second")),
         CompactBytes(Number(t, "read_bytes_per_second")), Percent(t["hit_ratio"]),
         Latency(t["read_latency_seconds"]), std::to_string(t.value("open_handles", 0)),
         CompactBytes(Number(t, "cached_bytes")), CompactBytes(Number(t, "size_bytes"))});
  }
  Table desktops{
      {"DESKTOP", "RIOPS", "WIOPS", "READ/s", "WRITE/s", "HIT", "RLAT", "WLAT", "RAM", "DISK"},
      {5, 5, 6, 7, 4, 5, 5, 5, 5},
      {}};
  for (const json& d : rates["desktops"]) {
    desktops.rows.push_back({name_of(d), CompactCount(Number(d, "read_ops_per_second")),
                             CompactCount(Number(d, "write_ops_per_second")),
                             CompactBytes(Number(d, "read_bytes_per_second")),
                             CompactBytes(Number(d, "write_bytes_per_second")),
                             Percent(d["hit_ratio"]), Latency(d["read_latency_seconds"]),
                             Latency(d["write_latency_seconds"]),
                             CompactBytes(Number(d, "overlay_ram_bytes")),
                             CompactBytes(Number(d, "overlay_disk_bytes"))});
  }

  // Height: the header lines and every table's blank line and header are
  // fixed; the rest goes to the rows, the datastores first (few, and the
  // filer's state matters most), then templates, then desktops. A table that
  // does not fit whole ends with a line saying how many rows are hidden.
  size_t room = SIZE_MAX;
  if (max_lines > 0) {
    size_t fixed = lines.size() + 3 * 2;  // blank + header per table
    room = static_cast<size_t>(max_lines) > fixed ? static_cast<size_t>(max_lines) - fixed : 0;
  }
  for (Table* table : {&filer, &templates, &desktops}) {
    lines.push_back("");
    const size_t name_width = table->NameWidth(width);
    lines.push_back(table->Line(table->header, name_width));
    size_t shown = table->rows.size();
    if (shown > room) shown = room > 0 ? room - 1 : 0;  // one line for "... more"
    for (size_t i = 0; i < shown; ++i) lines.push_back(table->Line(table->rows[i], name_width));
    if (shown < table->rows.size() && room > 0) {
      lines.push_back("  ... " + std::to_string(table->rows.size() - shown) + " more");
      ++shown;
    }
    room = room == SIZE_MAX ? room : room - std::min(room, shown);
  }
  if (rates["templates"].empty() && rates["desktops"].empty()) {
    lines.push_back("(no template or desktop opened since the agent started)");
  }
  for (std::string& line : lines) {
    if (line.size() > static_cast<size_t>(width)) line.resize(width);
  }
  if (max_lines > 0 && lines.size() > static_cast<size_t>(max_lines)) lines.resize(max_lines);
  return lines;
}

}  // namespace goldcache::cli
