#include "agent/config.h"

#include <arpa/inet.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>
#include <tuple>

#include "agent/control_server.h"
#include "agent/listen_address.h"
#include "util/units.h"

namespace goldcache::agent {

static_assert(std::string_view(kDefaultControlSocket) == "/run/goldcache/goldcached.sock",
              "AgentConfig::Control::socket's default must be kDefaultControlSocket");

namespace {

constexpr uint64_t kBlockSize = 4096;
constexpr uint64_t kMaxChunkSize = 64ull << 20;
constexpr size_t kMaxConfigBytes = 1 << 20;
constexpr std::string_view kLogLevels[] = {"trace", "debug", "info", "warn", "error"};

// A key of the config: its name in origins, how a file and a command line
// spell it.
struct KeyInfo {
  std::string_view key;
  std::string_view display;
  std::string_view flag;
};

constexpr KeyInfo kAgentKeys[] = {
    {"cache.dir", "[cache] dir", "--cache-dir"},
    {"cache.size", "[cache] size", "--cache-size"},
    {"cache.chunk_size", "[cache] chunk_size", "--chunk-size"},
    {"cache.read_cache", "[cache] read_cache", "--read-cache"},
    {"cache.settle", "[cache] settle", "--settle"},
    {"overlay.ram_per_desktop", "[overlay] ram_per_desktop", "--overlay-ram"},
    {"overlay.ram_host", "[overlay] ram_host", "--overlay-ram-host"},
    {"overlay.reset", "[overlay] reset", "--reset"},
    {"stats.listen", "[stats] listen", "--stats-listen"},
    {"stats.allow_non_loopback", "[stats] allow_non_loopback", "--stats-allow-non-loopback"},
    {"control.socket", "[control] socket", "--control-socket"},
    {"control.group", "[control] group", "--control-group"},
    {"logging.level", "[logging] level", "--log-level"},
};

constexpr KeyInfo kDatastoreKeys[] = {
    {"name", "[[datastore]] name", "--mountpoint"},
    {"source", "[[datastore]] source", "--datastore"},
    {"mountpoint", "[[datastore]] mountpoint", "--mountpoint"},
    {"timeout", "[[datastore]] timeout", "--datastore-timeout"},
    {"connections", "[[datastore]] connections", "--datastore-connections"},
    {"rules", "[[datastore.rule]]", "--template/--nonpersistent"},
};

std::string_view DisplayOf(std::span<const KeyInfo> keys, std::string_view key) {
  for (const KeyInfo& k : keys) {
    if (k.key == key) return k.display;
  }
  return key;
}

std::string FlagOf(std::span<const KeyInfo> keys, std::string_view key) {
  for (const KeyInfo& k : keys) {
    if (k.key == key) return std::string(k.flag);
  }
  return std::string(key);
}

// Gives every key that has no origin yet its "(default)" one.
void FillDefaultOrigins(KeyOrigins& origins, std::span<const KeyInfo> keys, bool from_file) {
  for (const KeyInfo& k : keys) {
    if (origins.find(k.key) == origins.end()) {
      origins.emplace(std::string(k.key),
                      std::string(from_file ? k.display : k.flag) + " (default)");
    }
  }
}

// Problems found so far. Reported one a line, sorted by position in the
// file; problems without a position come last, in the order found.
class Problems {
 public:
  void Add(std::string where, std::string_view what, uint32_t line = 0, uint32_t column = 0) {
    if (!where.empty()) where += ": ";
    where += what;
    const uint32_t never = UINT32_MAX;
    entries_.push_back(
        {line ? line : never, line ? column : never, entries_.size(), std::move(where)});
  }
  bool empty() const { return entries_.empty(); }

  Status ToStatus() {
    if (entries_.empty()) return Status::Ok();
    std::sort(entries_.begin(), entries_.end());
    std::string msg;
    for (const auto& e : entries_) {
      if (!msg.empty()) msg += '\n';
      msg += std::get<3>(e);
    }
    return Status::Error(Code::kInvalidArgument, std::move(msg));
  }

 private:
  std::vector<std::tuple<uint32_t, uint32_t, size_t, std::string>> entries_;
};

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

// ---------------------------------------------------------------------------
// Values, the same whether they come from the file or a flag. Messages do not
// say where: the caller prefixes that.

Result<uint64_t> SizeValue(std::string_view text) {
  auto v = ParseSize(text);
  if (!v.ok()) {
    std::string msg = v.status().message();
    if (msg.find("e.g.") == std::string::npos) msg += " (sizes look like \"256MiB\" or \"200GiB\")";
    return Status::Error(Code::kInvalidArgument, msg);
  }
  return v;
}

Result<uint64_t> ChunkSizeValue(std::string_view text) {
  auto v = SizeValue(text);
  if (!v.ok()) return v;
  if (*v == 0 || *v % kBlockSize != 0 || *v > kMaxChunkSize) {
    return Status::Error(Code::kInvalidArgument,
                         Quote(text) + " is not a multiple of 4KiB between 4KiB and 64MiB");
  }
  return v;
}

Result<std::chrono::milliseconds> TimeoutValue(std::string_view text) {
  auto v = ParseDuration(text);
  if (!v.ok()) return v.status();
  if (v->count() == 0) {
    return Status::Error(Code::kInvalidArgument,
                         Quote(text) +
                             " is no time at all; a miss must wait for the datastore "
                             "a while (e.g. \"30s\")");
  }
  return v;
}

Result<bool> OnOffValue(std::string_view text) {
  if (text == "on") return true;
  if (text == "off") return false;
  return Status::Error(Code::kInvalidArgument, Quote(text) + ": expected \"on\" or \"off\"");
}

constexpr unsigned kMaxConnections = 64;

Status ConnectionsError(std::string_view shown) {
  return Status::Error(Code::kInvalidArgument, std::string(shown) + " is not a number of " +
                                                   "connections from 1 to " +
                                                   std::to_string(kMaxConnections));
}

Result<unsigned> ConnectionsValue(int64_t n, std::string_view shown) {
  if (n < 1 || n > static_cast<int64_t>(kMaxConnections)) return ConnectionsError(shown);
  return static_cast<unsigned>(n);
}

Result<unsigned> ConnectionsFlagValue(std::string_view text) {
  if (text.empty() || text.size() > 4 || !std::all_of(text.begin(), text.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c));
      })) {
    return ConnectionsError(Quote(text));
  }
  return ConnectionsValue(std::stoll(std::string(text)), text);
}

Result<OverlayReset> ResetValue(std::string_view text) {
  for (OverlayReset r : {OverlayReset::kOnLastClose, OverlayReset::kManual}) {
    if (text == OverlayResetName(r)) return r;
  }
  return Status::Error(Code::kInvalidArgument, "unknown reset policy " + Quote(text) +
                                                   " (expected on-last-close or manual)");
}

Result<std::string> LogLevelValue(std::string_view text) {
  for (std::string_view level : kLogLevels) {
    if (text == level) return std::string(text);
  }
  return Status::Error(Code::kInvalidArgument, "unknown log level " + Quote(text) +
                                                   " (expected trace, debug, info, warn or error)");
}

// A path of the local file system. In a file it must be absolute: the
// agent's working directory under systemd is "/", not the file's.
Result<std::string> PathValue(std::string_view text, bool require_absolute) {
  if (text.empty()) return Status::Error(Code::kInvalidArgument, "empty path");
  if (text.find('\0') != std::string_view::npos) {
    return Status::Error(Code::kInvalidArgument, "path contains a NUL byte");
  }
  if (require_absolute && text.front() != '/') {
    return Status::Error(Code::kInvalidArgument, Quote(text) + " is not an absolute path");
  }
  return std::string(text);
}

bool IsNfsUrl(std::string_view source) { return source.starts_with("nfs://"); }

Result<std::string> SourceValue(std::string_view text, bool require_absolute) {
  if (IsNfsUrl(text)) {
    std::string_view rest = text.substr(6);
    if (rest.empty() || rest.front() == '/') {
      return Status::Error(Code::kInvalidArgument,
                           Quote(text) + " names no server (e.g. \"nfs://filer/export/ds1\")");
    }
    return std::string(text);
  }
  if (text.find("://") != std::string_view::npos) {
    return Status::Error(Code::kInvalidArgument,
                         Quote(text) + ": only directories and nfs:// URLs are datastores");
  }
  return PathValue(text, require_absolute);
}

Result<std::string> SocketValue(std::string_view text, bool require_absolute) {
  auto p = PathValue(text, require_absolute);
  if (!p.ok()) return p;
  if (p->size() >= sizeof(sockaddr_un::sun_path)) {
    return Status::Error(Code::kInvalidArgument,
                         Quote(text) + " is too long for a Unix socket (at most " +
                             std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes)");
  }
  return p;
}

Result<std::string> GroupValue(std::string_view text) {
  bool digits = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c));
  });
  bool name = !text.empty() && text.size() <= 32 &&
              (std::isalpha(static_cast<unsigned char>(text[0])) || text[0] == '_');
  for (size_t i = 0; name && i < text.size(); ++i) {
    char c = text[i];
    name = std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' ||
           (c == '$' && i + 1 == text.size());
  }
  if (!digits && !name) {
    return Status::Error(Code::kInvalidArgument, Quote(text) + " is not a group name or number");
  }
  return std::string(text);
}

Result<std::string> DatastoreNameValue(std::string_view text) {
  bool ok = !text.empty() && text.size() <= 64 && std::isalnum(static_cast<unsigned char>(text[0]));
  for (char c : text) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  }
  if (!ok) {
    return Status::Error(Code::kInvalidArgument,
                         Quote(text) +
                             " is not a datastore name (1 to 64 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit)");
  }
  return std::string(text);
}

Result<std::string> ListenStringValue(std::string_view text) {
  auto a = ParseListenAddress(std::string(text));
  if (!a.ok()) return a.status();
  return std::string(text);
}

Status RuleValue(const Rule& rule) {
  auto set = RuleSet::Create({rule});
  return set.ok() ? Status::Ok() : set.status();
}

// ---------------------------------------------------------------------------
// Checks of the config as a whole, after the file and the flags.

std::filesystem::path Normal(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(path, ec);
  if (ec) p = path;
  p = p.lexically_normal();
  if (p.has_filename() || p == p.root_path()) return p;
  return p.parent_path();  // "a/b/" -> "a/b"
}

// Whether `inner` is `outer` or inside it.
bool IsWithin(const std::filesystem::path& inner, const std::filesystem::path& outer) {
  auto rel = inner.lexically_relative(outer);
  return !rel.empty() && *rel.begin() != "..";
}

void CheckWhole(const AgentConfig& c, Problems& p) {
  if (c.datastores.empty()) {
    p.Add(c.file.empty() ? "--datastore" : c.file,
          c.file.empty() ? "required (or give --config FILE)"
                         : "no [[datastore]]: the agent needs at least one datastore to serve");
  }
  if (c.cache.size < 2 * c.cache.chunk_size) {
    p.Add(c.Where("cache.size"), FormatBytes(c.cache.size) + " is less than two chunks (" +
                                     c.Where("cache.chunk_size") + " is " +
                                     FormatBytes(c.cache.chunk_size) + ")");
  }
  auto listen = ParseListenAddress(c.stats.listen);
  if (listen.ok() && !c.stats.allow_non_loopback && !IsLoopbackHost(listen->host)) {
    p.Add(c.Where("stats.listen"),
          Quote(c.stats.listen) +
              " is not a loopback address; the endpoint has no authentication, so exposing it "
              "beyond this host must be allowed explicitly (allow_non_loopback = true in [stats], "
              "or --stats-allow-non-loopback)");
  }
  const auto cache_dir = c.cache.dir.empty() ? std::filesystem::path() : Normal(c.cache.dir);
  for (size_t i = 0; i < c.datastores.size(); ++i) {
    const DatastoreConfig& d = c.datastores[i];
    if (d.mountpoint.empty()) continue;
    const auto mount = Normal(d.mountpoint);
    if (!cache_dir.empty() && (IsWithin(mount, cache_dir) || IsWithin(cache_dir, mount))) {
      p.Add(d.Where("mountpoint"), Quote(d.mountpoint) + " overlaps the cache directory " +
                                       Quote(c.cache.dir) + " (" + c.Where("cache.dir") + ")");
    }
    for (size_t j = 0; j < c.datastores.size(); ++j) {
      const DatastoreConfig& o = c.datastores[j];
      if (!o.source.empty() && !IsNfsUrl(o.source) &&
          (IsWithin(mount, Normal(o.source)) || IsWithin(Normal(o.source), mount))) {
        p.Add(d.Where("mountpoint"), Quote(d.mountpoint) + " overlaps the source of datastore " +
                                         Quote(o.name) + " (" + Quote(o.source) +
                                         "): the agent would read its own mount");
      }
      if (j >= i || o.mountpoint.empty()) continue;
      if (d.name == o.name) {
        p.Add(d.Where("name"), Quote(d.name) + " is also the name of the datastore at " +
                                   o.Where("name") + "; names must be unique");
      }
      const auto other = Normal(o.mountpoint);
      if (mount == other) {
        p.Add(d.Where("mountpoint"), Quote(d.mountpoint) + " is also the mountpoint of datastore " +
                                         Quote(o.name) + " (" + o.Where("mountpoint") + ")");
      } else if (IsWithin(mount, other) || IsWithin(other, mount)) {
        p.Add(d.Where("mountpoint"), Quote(d.mountpoint) + " is nested with the mountpoint of " +
                                         "datastore " + Quote(o.name) + " (" +
                                         o.Where("mountpoint") + ")");
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The TOML file.

const char* TypeName(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// A key of a table, found: where it is and its value.
struct Field {
  std::string where;  // "FILE:LINE:COL: [cache] size"
  uint32_t line, column;
  const toml::node* node;
};

class TomlReader {
 public:
  TomlReader(const std::string& file, Problems& problems) : file_(file), p_(problems) {}

  std::string At(const toml::source_region& r) const {
    if (r.begin.line == 0) return file_;
    return file_ + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column);
  }

  void Report(const toml::source_region& r, std::string_view display, std::string_view what) {
    std::string where = At(r);
    if (!display.empty()) where += ": " + std::string(display);
    p_.Add(std::move(where), what, r.begin.line, r.begin.column);
  }
  void Report(const Field& f, std::string_view what) { p_.Add(f.where, what, f.line, f.column); }

  // Reports every key of `t` not among `known`, suggesting the nearest known
  // one. `section` is how messages name the table ("[cache]"); at the top
  // level (`section` empty) the known names are tables.
  void OnlyKnown(const toml::table& t, std::string_view section,
                 std::initializer_list<std::string_view> known) {
    std::string list;
    for (std::string_view k : known) list += (list.empty() ? "" : ", ") + std::string(k);
    for (auto&& [key, node] : t) {
      const std::string name(key.str());
      if (std::find(known.begin(), known.end(), name) != known.end()) continue;
      std::string display, what;
      if (!section.empty()) {
        display = std::string(section) + " " + name;
        what = "unknown key";
      } else if (node.is_table() || node.is_array_of_tables()) {
        display = "[" + name + "]";
        what = "unknown table";
      } else {
        display = name;
        what = "unknown key outside any table; every setting belongs in a table";
      }
      std::string_view best;
      size_t best_distance = 3;  // suggest only near misses
      for (std::string_view k : known) {
        size_t d = EditDistance(name, k);
        if (d < best_distance) best_distance = d, best = k;
      }
      if (!best.empty()) what += "; did you mean " + std::string(best) + "?";
      Report(key.source(), display, what + " (known: " + list + ")");
    }
  }

  std::optional<Field> Find(const toml::table& t, std::string_view key, std::string_view display) {
    auto it = t.find(key);
    if (it == t.end()) return std::nullopt;
    const toml::source_region& r = it->first.source();
    return Field{At(r) + ": " + std::string(display), r.begin.line, r.begin.column, &it->second};
  }

  // The table under `key` of `t`; reports a value of another type.
  const toml::table* Table(const toml::table& t, std::string_view key) {
    auto it = t.find(key);
    if (it == t.end()) return nullptr;
    if (const toml::table* sub = it->second.as_table()) return sub;
    Report(it->first.source(), "[" + std::string(key) + "]",
           std::string("expected a table, not ") + TypeName(it->second));
    return nullptr;
  }

  // Reads a string `key` of `t`, checks it with `parse` and stores the result
  // in *out, recording where it came from. `expect` describes a good value
  // for a type error. Returns false when absent.
  template <typename T, typename Parse>
  bool Read(const toml::table& t, std::string_view key, std::string_view display,
            std::string_view expect, Parse parse, T* out, KeyOrigins& origins,
            std::string_view origin_key) {
    std::optional<Field> f = Find(t, key, display);
    if (!f) return false;
    const toml::value<std::string>* s = f->node->as_string();
    if (!s) {
      Report(*f, "expected " + std::string(expect) + ", not " + TypeName(*f->node));
      return true;
    }
    auto v = parse(std::string_view(s->get()));
    if (!v.ok()) {
      Report(*f, v.status().message());
      return true;
    }
    *out = std::move(v).value();
    origins[std::string(origin_key)] = f->where;
    return true;
  }

  bool ReadBool(const toml::table& t, std::string_view key, std::string_view display, bool* out,
                KeyOrigins& origins, std::string_view origin_key) {
    std::optional<Field> f = Find(t, key, display);
    if (!f) return false;
    const toml::value<bool>* b = f->node->as_boolean();
    if (!b) {
      Report(*f, std::string("expected true or false, not ") + TypeName(*f->node));
      return true;
    }
    *out = b->get();
    origins[std::string(origin_key)] = f->where;
    return true;
  }

  void Missing(const toml::table& t, std::string_view display, std::string_view what) {
    Report(t.source(), display, "missing; " + std::string(what));
  }

 private:
  const std::string& file_;
  Problems& p_;
};

void ReadDatastore(TomlReader& r, const toml::table& t, AgentConfig& c) {
  DatastoreConfig d;
  r.OnlyKnown(t, "[[datastore]]",
              {"name", "source", "mountpoint", "timeout", "connections", "rule"});
  auto absolute_path = [](std::string_view s) { return PathValue(s, true); };
  auto source = [](std::string_view s) { return SourceValue(s, true); };
  if (!r.Read(t, "name", "[[datastore]] name", "a string such as \"ds1\"", DatastoreNameValue,
              &d.name, d.origins, "name")) {
    r.Missing(t, "[[datastore]] name", "each datastore needs a unique name, e.g. name = \"ds1\"");
  }
  if (!r.Read(t, "source", "[[datastore]] source", "a directory or an nfs:// URL", source,
              &d.source, d.origins, "source")) {
    r.Missing(
        t, "[[datastore]] source",
        "where the datastore is, e.g. source = \"/mnt/nfs/ds1\" or \"nfs://filer/export/ds1\"");
  }
  if (!r.Read(t, "mountpoint", "[[datastore]] mountpoint", "an absolute path", absolute_path,
              &d.mountpoint, d.origins, "mountpoint")) {
    r.Missing(t, "[[datastore]] mountpoint",
              "where the agent mounts it, e.g. mountpoint = \"/run/goldcache/ds1\"");
  }
  r.Read(t, "timeout", "[[datastore]] timeout", "a duration such as \"30s\"", TimeoutValue,
         &d.timeout, d.origins, "timeout");
  if (auto f = r.Find(t, "connections", "[[datastore]] connections")) {
    if (const toml::value<int64_t>* n = f->node->as_integer()) {
      auto v = ConnectionsValue(n->get(), std::to_string(n->get()));
      if (v.ok()) {
        d.connections = *v;
        d.origins["connections"] = f->where;
      } else {
        r.Report(*f, v.status().message());
      }
    } else {
      r.Report(*f, std::string("expected a number such as 4, not ") + TypeName(*f->node));
    }
  }

  if (auto it = t.find("rule"); it != t.end()) {
    const toml::array* rules = it->second.as_array();
    if (!rules || !rules->is_array_of_tables()) {
      r.Report(it->first.source(), "[[datastore]] rule",
               std::string("expected [[datastore.rule]] entries (an array of tables), not ") +
                   TypeName(it->second));
    } else {
      bool first = true;
      for (const toml::node& n : *rules) {
        const toml::table& rt = *n.as_table();
        r.OnlyKnown(rt, "[[datastore.rule]]", {"match", "role"});
        Rule rule{"", Role::kPassthrough};
        KeyOrigins rule_origins;
        bool has_match = r.Read(
            rt, "match", "[[datastore.rule]] match", "a glob such as \"templates/**\"",
            [](std::string_view s) { return Result<std::string>(std::string(s)); }, &rule.glob,
            rule_origins, "match");
        bool has_role =
            r.Read(rt, "role", "[[datastore.rule]] role", "template, nonpersistent or passthrough",
                   ParseRole, &rule.role, rule_origins, "role");
        if (!has_match) r.Missing(rt, "[[datastore.rule]] match", "the glob, e.g. \"pool/**\"");
        if (!has_role) {
          r.Missing(rt, "[[datastore.rule]] role", "template, nonpersistent or passthrough");
        }
        if (!rule_origins.count("match")) continue;
        if (Status st = RuleValue(rule); !st.ok()) {  // the glob; any role will do
          auto f = r.Find(rt, "match", "[[datastore.rule]] match");
          r.Report(*f, st.message());
          continue;
        }
        if (!rule_origins.count("role")) continue;
        if (first) d.origins["rules"] = r.At(rt.source()) + ": [[datastore.rule]]";
        first = false;
        d.rules.push_back(std::move(rule));
      }
    }
  }
  FillDefaultOrigins(d.origins, kDatastoreKeys, true);
  c.datastores.push_back(std::move(d));
}

void ReadDocument(TomlReader& r, const toml::table& root, AgentConfig& c) {
  r.OnlyKnown(root, "", {"cache", "overlay", "datastore", "stats", "control", "logging"});
  auto& o = c.origins;
  auto absolute_path = [](std::string_view s) { return PathValue(s, true); };

  const toml::table* cache = r.Table(root, "cache");
  if (cache) {
    r.OnlyKnown(*cache, "[cache]", {"dir", "size", "chunk_size", "read_cache", "settle"});
    if (!r.Read(*cache, "dir", "[cache] dir", "an absolute path", absolute_path, &c.cache.dir, o,
                "cache.dir")) {
      r.Missing(*cache, "[cache] dir",
                "the host-local cache directory, e.g. dir = \"/var/lib/goldcache\"");
    }
    r.Read(*cache, "size", "[cache] size", "a size such as \"200GiB\"", SizeValue, &c.cache.size, o,
           "cache.size");
    r.Read(*cache, "chunk_size", "[cache] chunk_size", "a size such as \"1MiB\"", ChunkSizeValue,
           &c.cache.chunk_size, o, "cache.chunk_size");
    r.ReadBool(*cache, "read_cache", "[cache] read_cache", &c.cache.read_cache, o,
               "cache.read_cache");
    r.Read(*cache, "settle", "[cache] settle", "a duration such as \"10s\"", ParseDuration,
           &c.cache.settle, o, "cache.settle");
  } else if (!root.contains("cache")) {
    r.Report(root.source(), "[cache] dir",
             "missing; add a [cache] table with dir = \"/var/lib/goldcache\" (the host-local "
             "cache directory)");
  }

  if (const toml::table* t = r.Table(root, "overlay")) {
    r.OnlyKnown(*t, "[overlay]", {"ram_per_desktop", "ram_host", "reset"});
    r.Read(*t, "ram_per_desktop", "[overlay] ram_per_desktop", "a size such as \"256MiB\"",
           SizeValue, &c.overlay.ram_per_desktop, o, "overlay.ram_per_desktop");
    r.Read(*t, "ram_host", "[overlay] ram_host", "a size such as \"4GiB\"", SizeValue,
           &c.overlay.ram_host, o, "overlay.ram_host");
    r.Read(*t, "reset", "[overlay] reset", "\"on-last-close\" or \"manual\"", ResetValue,
           &c.overlay.reset, o, "overlay.reset");
  }

  if (auto it = root.find("datastore"); it != root.end()) {
    const toml::array* a = it->second.as_array();
    if (a && a->is_array_of_tables() && !a->empty()) {
      for (const toml::node& n : *a) ReadDatastore(r, *n.as_table(), c);
    } else {
      r.Report(it->first.source(), "[[datastore]]",
               std::string("expected [[datastore]] entries (an array of tables), not ") +
                   (it->second.is_table() ? "a single [datastore] table" : TypeName(it->second)));
      c.datastores.emplace_back();  // reported; do not also say "no datastore"
    }
  }

  if (const toml::table* t = r.Table(root, "stats")) {
    r.OnlyKnown(*t, "[stats]", {"listen", "allow_non_loopback"});
    r.Read(*t, "listen", "[stats] listen", "HOST:PORT such as \"127.0.0.1:9477\"",
           ListenStringValue, &c.stats.listen, o, "stats.listen");
    r.ReadBool(*t, "allow_non_loopback", "[stats] allow_non_loopback", &c.stats.allow_non_loopback,
               o, "stats.allow_non_loopback");
  }

  if (const toml::table* t = r.Table(root, "control")) {
    r.OnlyKnown(*t, "[control]", {"socket", "group"});
    r.Read(
        *t, "socket", "[control] socket", "an absolute path",
        [](std::string_view s) { return SocketValue(s, true); }, &c.control.socket, o,
        "control.socket");
    std::string group;
    r.Read(*t, "group", "[control] group", "a group name", GroupValue, &group, o, "control.group");
    if (o.count("control.group")) c.control.group = group;
  }

  if (const toml::table* t = r.Table(root, "logging")) {
    r.OnlyKnown(*t, "[logging]", {"level"});
    r.Read(*t, "level", "[logging] level", "trace, debug, info, warn or error", LogLevelValue,
           &c.logging.level, o, "logging.level");
  }
}

// ---------------------------------------------------------------------------
// Flags.

// Parses one flag's value into *out, or reports it. Returns whether *out
// was set.
template <typename T, typename Parse>
bool FromFlag(const std::optional<std::string>& flag, std::string_view name, Parse parse, T* out,
              KeyOrigins& origins, std::string_view origin_key, Problems& p) {
  if (!flag) return false;
  auto v = parse(std::string_view(*flag));
  if (!v.ok()) {
    p.Add(std::string(name), v.status().message());
    return false;
  }
  *out = std::move(v).value();
  origins[std::string(origin_key)] = std::string(name);
  return true;
}

std::string NameFromMountpoint(const std::string& mountpoint) {
  std::string name = Normal(mountpoint).filename().string();
  for (char& ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_' && ch != '-') {
      ch = '_';
    }
  }
  if (name.size() > 64) name.resize(64);
  if (!DatastoreNameValue(name).ok()) name = "datastore";
  return name;
}

void ApplyFlagValues(AgentConfig& c, const FlagOverrides& f, bool from_file, Problems& p) {
  auto& o = c.origins;
  auto path = [&](std::string_view s) { return PathValue(s, false); };
  FromFlag(f.cache_dir, "--cache-dir", path, &c.cache.dir, o, "cache.dir", p);
  FromFlag(f.cache_size, "--cache-size", SizeValue, &c.cache.size, o, "cache.size", p);
  FromFlag(f.chunk_size, "--chunk-size", ChunkSizeValue, &c.cache.chunk_size, o, "cache.chunk_size",
           p);
  FromFlag(f.read_cache, "--read-cache", OnOffValue, &c.cache.read_cache, o, "cache.read_cache", p);
  FromFlag(f.settle, "--settle", ParseDuration, &c.cache.settle, o, "cache.settle", p);
  FromFlag(f.overlay_ram, "--overlay-ram", SizeValue, &c.overlay.ram_per_desktop, o,
           "overlay.ram_per_desktop", p);
  FromFlag(f.overlay_ram_host, "--overlay-ram-host", SizeValue, &c.overlay.ram_host, o,
           "overlay.ram_host", p);
  FromFlag(f.reset, "--reset", ResetValue, &c.overlay.reset, o, "overlay.reset", p);
  FromFlag(f.stats_listen, "--stats-listen", ListenStringValue, &c.stats.listen, o, "stats.listen",
           p);
  if (f.stats_allow_non_loopback) {
    c.stats.allow_non_loopback = *f.stats_allow_non_loopback;
    o["stats.allow_non_loopback"] = "--stats-allow-non-loopback";
  }
  FromFlag(
      f.control_socket, "--control-socket",
      [](std::string_view s) { return SocketValue(s, false); }, &c.control.socket, o,
      "control.socket", p);
  std::string group;
  if (FromFlag(f.control_group, "--control-group", GroupValue, &group, o, "control.group", p)) {
    c.control.group = group;
  }
  FromFlag(f.log_level, "--log-level", LogLevelValue, &c.logging.level, o, "logging.level", p);

  const bool touches_datastore = f.datastore || f.mountpoint || f.datastore_timeout ||
                                 f.datastore_connections || !f.rules.empty();
  if (!touches_datastore) return;
  if (from_file && c.datastores.size() > 1) {
    std::string names;
    for (const auto& d : c.datastores) names += (names.empty() ? "" : ", ") + d.name;
    std::string which = f.datastore               ? "--datastore"
                        : f.mountpoint            ? "--mountpoint"
                        : f.datastore_timeout     ? "--datastore-timeout"
                        : f.datastore_connections ? "--datastore-connections"
                                                  : "--template/--nonpersistent";
    p.Add(which, c.file + " serves " + std::to_string(c.datastores.size()) + " datastores (" +
                     names +
                     "); a datastore flag could not say which one it changes: edit the file, or "
                     "run without --config");
    return;
  }
  if (c.datastores.empty()) c.datastores.emplace_back();
  DatastoreConfig& d = c.datastores.front();
  auto source = [](std::string_view s) { return SourceValue(s, false); };
  FromFlag(f.datastore, "--datastore", source, &d.source, d.origins, "source", p);
  FromFlag(f.mountpoint, "--mountpoint", path, &d.mountpoint, d.origins, "mountpoint", p);
  FromFlag(f.datastore_timeout, "--datastore-timeout", TimeoutValue, &d.timeout, d.origins,
           "timeout", p);
  FromFlag(f.datastore_connections, "--datastore-connections", ConnectionsFlagValue, &d.connections,
           d.origins, "connections", p);
  if (!f.rules.empty()) {
    bool rules_ok = true;
    for (const Rule& rule : f.rules) {
      if (Status st = RuleValue(rule); !st.ok()) {
        p.Add(rule.role == Role::kTemplate        ? "--template"
              : rule.role == Role::kNonpersistent ? "--nonpersistent"
                                                  : "--template/--nonpersistent",
              st.message());
        rules_ok = false;
      }
    }
    if (rules_ok) {
      d.rules = f.rules;
      d.origins["rules"] = "--template/--nonpersistent";
    }
  }
}

}  // namespace

const char* OverlayResetName(OverlayReset reset) {
  switch (reset) {
    case OverlayReset::kOnLastClose:
      return "on-last-close";
    case OverlayReset::kManual:
      return "manual";
  }
  return "?";
}

std::string DatastoreConfig::Where(std::string_view key) const {
  if (auto it = origins.find(key); it != origins.end()) return it->second;
  return std::string(DisplayOf(kDatastoreKeys, key));
}

std::string AgentConfig::Where(std::string_view key) const {
  if (auto it = origins.find(key); it != origins.end()) return it->second;
  return file.empty() ? FlagOf(kAgentKeys, key) : std::string(DisplayOf(kAgentKeys, key));
}

Result<AgentConfig> ParseConfig(std::string_view text, const std::string& origin) {
  AgentConfig config;
  config.file = origin;
  Problems problems;
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    std::string where = origin;
    if (at.line) where += ":" + std::to_string(at.line) + ":" + std::to_string(at.column);
    return Status::Error(Code::kInvalidArgument,
                         where + ": TOML syntax error: " + std::string(e.description()));
  }
  TomlReader reader(origin, problems);
  ReadDocument(reader, root, config);
  FillDefaultOrigins(config.origins, kAgentKeys, true);
  if (problems.empty()) CheckWhole(config, problems);
  GC_RETURN_IF_ERROR(problems.ToStatus());
  return config;
}

Result<AgentConfig> LoadConfig(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "re");
  if (!f) return Status::FromErrno(errno, "config file " + path);
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0 && text.size() <= kMaxConfigBytes) {
    text.append(buf, n);
  }
  const int err = std::ferror(f) ? errno : 0;
  std::fclose(f);
  if (err) return Status::FromErrno(err, "reading config file " + path);
  if (text.size() > kMaxConfigBytes) {
    return Status::Error(Code::kInvalidArgument, path + ": larger than " +
                                                     FormatBytes(kMaxConfigBytes) +
                                                     "; is this really the config file?");
  }
  return ParseConfig(text, path);
}

Result<AgentConfig> ConfigFromFlags(const FlagOverrides& flags) {
  AgentConfig config;
  Problems problems;
  if (!flags.datastore) problems.Add("--datastore", "required (or give --config FILE)");
  if (!flags.mountpoint) problems.Add("--mountpoint", "required (or give --config FILE)");
  if (!flags.cache_dir) problems.Add("--cache-dir", "required (or give --config FILE)");
  ApplyFlagValues(config, flags, false, problems);
  if (!config.datastores.empty()) {
    DatastoreConfig& d = config.datastores.front();
    d.name = NameFromMountpoint(d.mountpoint);
    d.origins["name"] = "datastore name \"" + d.name + "\" (from --mountpoint)";
    FillDefaultOrigins(d.origins, kDatastoreKeys, false);
  }
  FillDefaultOrigins(config.origins, kAgentKeys, false);
  if (problems.empty()) CheckWhole(config, problems);
  GC_RETURN_IF_ERROR(problems.ToStatus());
  return config;
}

Status ApplyFlags(AgentConfig& config, const FlagOverrides& flags) {
  Problems problems;
  ApplyFlagValues(config, flags, true, problems);
  if (problems.empty()) CheckWhole(config, problems);
  return problems.ToStatus();
}

Result<std::optional<gid_t>> ResolveControlGroup(const AgentConfig& config) {
  if (!config.control.group) return std::optional<gid_t>();
  const std::string& g = *config.control.group;
  if (!g.empty() && std::all_of(g.begin(), g.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c));
      })) {
    return std::optional<gid_t>(static_cast<gid_t>(std::stoul(g)));
  }
  std::vector<char> buf(16384);
  group grp;
  group* found = nullptr;
  int err;
  while ((err = getgrnam_r(g.c_str(), &grp, buf.data(), buf.size(), &found)) == ERANGE &&
         buf.size() < (1u << 22)) {
    buf.resize(buf.size() * 2);
  }
  if (err) {
    return Status::Error(Code::kInvalidArgument, config.Where("control.group") +
                                                     ": looking up group " + Quote(g) + ": " +
                                                     std::strerror(err));
  }
  if (!found) {
    return Status::Error(Code::kInvalidArgument, config.Where("control.group") + ": group " +
                                                     Quote(g) + " does not exist on this host");
  }
  return std::optional<gid_t>(grp.gr_gid);
}

Status CheckConfigOnHost(const AgentConfig& config) {
  Problems problems;
  auto check_dir = [&](const std::string& path, const std::string& where, bool must_exist,
                       std::string_view what) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      const int err = errno;
      // A stale FUSE mount answers ENOTCONN; the agent clears it at start.
      if (err == ENOTCONN || (err == ENOENT && !must_exist)) return;
      problems.Add(where, std::string(what) + " " + Quote(path) + ": " + std::strerror(err));
      return;
    }
    if (!S_ISDIR(st.st_mode)) {
      problems.Add(where, std::string(what) + " " + Quote(path) + " is not a directory");
    }
  };
  check_dir(config.cache.dir, config.Where("cache.dir"), false, "cache directory");
  for (const DatastoreConfig& d : config.datastores) {
    if (!IsNfsUrl(d.source)) {
      check_dir(d.source, d.Where("source"), true, "datastore directory");
    }
    check_dir(d.mountpoint, d.Where("mountpoint"), false, "mountpoint");
  }
  auto group = ResolveControlGroup(config);
  if (!group.ok()) problems.Add("", group.status().message());
  return problems.ToStatus();
}

}  // namespace goldcache::agent
