#include "metrics/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace goldcache::metrics {
namespace {

// Registration mistakes are bugs in our code, not runtime conditions: dying
// loudly at startup beats publishing metrics a dashboard silently misreads.
[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "goldcache metrics: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

bool ValidName(const std::string& name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

// Shortest text that reads back as the same double, in the spellings the
// exposition format uses for the special values.
std::string FormatDouble(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

void AppendEscaped(std::string& out, const std::string& text, bool escape_quote) {
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && escape_quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

// `name{k="v",...,extra_key="extra_value"} value\n`; braces only when labels exist.
void AppendSample(std::string& out, const std::string& name, const Labels& labels,
                  const char* extra_key, const std::string& extra_value, const std::string& value) {
  out += name;
  if (!labels.empty() || extra_key != nullptr) {
    out += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!first) out += ',';
      first = false;
      out += k;
      out += "=\"";
      AppendEscaped(out, v, /*escape_quote=*/true);
      out += '"';
    }
    if (extra_key != nullptr) {
      if (!first) out += ',';
      out += extra_key;
      out += "=\"";
      AppendEscaped(out, extra_value, /*escape_quote=*/true);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  out += value;
  out += '\n';
}

nlohmann::json LabelsJson(const Labels& labels) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : labels) j[k] = v;
  return j;
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (!std::isfinite(bounds_[i]) || (i > 0 && !(bounds_[i - 1] < bounds_[i]))) {
      Die("histogram bounds must be finite and strictly increasing");
    }
  }
}

void Histogram::Observe(double v) {
  // First bucket whose bound is >= v; NaN compares false everywhere and so
  // lands in +Inf, as in the reference Prometheus clients.
  size_t i = std::partition_point(bounds_.begin(), bounds_.end(),
                                  [v](double bound) { return !(v <= bound); }) -
             bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

uint64_t Histogram::Count() const {
  uint64_t n = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) n += BucketCount(i);
  return n;
}

std::vector<double> LatencyBuckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,     10};
}

enum class Registry::Type : int { kCounter, kGauge, kHistogram };

namespace {
const char* TypeName(int type) {
  static constexpr const char* kNames[] = {"counter", "gauge", "histogram"};
  return kNames[type];
}
}  // namespace

// One labelled series. Exactly one member is set, matching the family type
// (a gauge family may hold plain and callback children side by side).
struct Registry::Child {
  std::unique_ptr<Counter> counter;
  std::unique_ptr<Gauge> gauge;
  std::unique_ptr<Histogram> histogram;
  std::function<double()> callback;
};

struct Registry::Family {
  Type type;
  std::string help;
  std::vector<double> bounds;  // histograms only
  std::map<Labels, Child> children;
};

Registry::Registry() = default;
Registry::~Registry() = default;

Registry::Child& Registry::ChildFor(const std::string& name, const std::string& help, Type type,
                                    const Labels& labels, const std::vector<double>* bounds) {
  if (!ValidName(name, /*allow_colon=*/true)) Die("invalid metric name \"" + name + "\"");
  Labels key = labels;
  std::sort(key.begin(), key.end());
  for (size_t i = 0; i < key.size(); ++i) {
    const std::string& label = key[i].first;
    if (!ValidName(label, /*allow_colon=*/false) || label.rfind("__", 0) == 0 ||
        (type == Type::kHistogram && label == "le")) {
      Die("metric \"" + name + "\" has invalid label name \"" + label + "\"");
    }
    if (i > 0 && key[i - 1].first == label) {
      Die("metric \"" + name + "\" repeats label \"" + label + "\"");
    }
  }

  std::unique_ptr<Family>& slot = families_[name];
  if (!slot) {
    slot = std::make_unique<Family>();
    slot->type = type;
    slot->help = help;
    if (bounds != nullptr) slot->bounds = *bounds;
  } else if (slot->type != type) {
    Die("metric \"" + name + "\" registered as " + TypeName(static_cast<int>(type)) +
        " but it already is a " + TypeName(static_cast<int>(slot->type)));
  } else if (bounds != nullptr && slot->bounds != *bounds) {
    Die("histogram \"" + name + "\" registered again with different bounds");
  }
  return slot->children[std::move(key)];
}

Counter& Registry::GetCounter(const std::string& name, const std::string& help,
                              const Labels& labels) {
  MutexLock lock(mu_);
  Child& child = ChildFor(name, help, Type::kCounter, labels, nullptr);
  if (!child.counter) child.counter = std::make_unique<Counter>();
  return *child.counter;
}

Gauge& Registry::GetGauge(const std::string& name, const std::string& help, const Labels& labels) {
  MutexLock lock(mu_);
  Child& child = ChildFor(name, help, Type::kGauge, labels, nullptr);
  if (child.callback) Die("gauge \"" + name + "\" already is a callback gauge for these labels");
  if (!child.gauge) child.gauge = std::make_unique<Gauge>();
  return *child.gauge;
}

Histogram& Registry::GetHistogram(const std::string& name, const std::string& help,
                                  const Labels& labels, std::vector<double> bounds) {
  MutexLock lock(mu_);
  Child& child = ChildFor(name, help, Type::kHistogram, labels, &bounds);
  if (!child.histogram) child.histogram = std::make_unique<Histogram>(std::move(bounds));
  return *child.histogram;
}

void Registry::AddCallbackGauge(const std::string& name, const std::string& help,
                                const Labels& labels, std::function<double()> fn) {
  MutexLock lock(mu_);
  Child& child = ChildFor(name, help, Type::kGauge, labels, nullptr);
  if (child.gauge) Die("gauge \"" + name + "\" already is a plain gauge for these labels");
  child.callback = std::move(fn);
}

std::string Registry::RenderPrometheus() const {
  MutexLock lock(mu_);
  std::string out;
  for (const auto& [name, family] : families_) {
    out += "# HELP ";
    out += name;
    out += ' ';
    AppendEscaped(out, family->help, /*escape_quote=*/false);
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += TypeName(static_cast<int>(family->type));
    out += '\n';
    for (const auto& [labels, child] : family->children) {
      switch (family->type) {
        case Type::kCounter:
          AppendSample(out, name, labels, nullptr, "", std::to_string(child.counter->Value()));
          break;
        case Type::kGauge:
          AppendSample(out, name, labels, nullptr, "",
                       child.callback ? FormatDouble(child.callback())
                                      : std::to_string(child.gauge->Value()));
          break;
        case Type::kHistogram: {
          const Histogram& h = *child.histogram;
          // _count is derived from the same bucket reads, so it always equals
          // the +Inf bucket even while observations race with the scrape.
          uint64_t cumulative = 0;
          for (size_t i = 0; i <= h.bounds().size(); ++i) {
            cumulative += h.BucketCount(i);
            AppendSample(out, name + "_bucket", labels, "le",
                         i < h.bounds().size() ? FormatDouble(h.bounds()[i]) : "+Inf",
                         std::to_string(cumulative));
          }
          AppendSample(out, name + "_sum", labels, nullptr, "", FormatDouble(h.Sum()));
          AppendSample(out, name + "_count", labels, nullptr, "", std::to_string(cumulative));
          break;
        }
      }
    }
  }
  return out;
}

nlohmann::json Registry::RenderJson() const {
  MutexLock lock(mu_);
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, family] : families_) {
    nlohmann::json metrics = nlohmann::json::array();
    for (const auto& [labels, child] : family->children) {
      nlohmann::json m = {{"labels", LabelsJson(labels)}};
      switch (family->type) {
        case Type::kCounter:
          m["value"] = child.counter->Value();
          break;
        case Type::kGauge:
          if (child.callback) {
            m["value"] = child.callback();  // NaN and infinities become null
          } else {
            m["value"] = child.gauge->Value();
          }
          break;
        case Type::kHistogram: {
          const Histogram& h = *child.histogram;
          nlohmann::json buckets = nlohmann::json::array();
          uint64_t cumulative = 0;
          for (size_t i = 0; i <= h.bounds().size(); ++i) {
            cumulative += h.BucketCount(i);
            nlohmann::json le =
                i < h.bounds().size() ? nlohmann::json(h.bounds()[i]) : nlohmann::json("+Inf");
            buckets.push_back({{"le", std::move(le)}, {"count", cumulative}});
          }
          m["count"] = cumulative;
          m["sum"] = h.Sum();
          m["buckets"] = std::move(buckets);
          break;
        }
      }
      metrics.push_back(std::move(m));
    }
    out[name] = {{"type", TypeName(static_cast<int>(family->type))},
                 {"help", family->help},
                 {"metrics", std::move(metrics)}};
  }
  return out;
}

}  // namespace goldcache::metrics
