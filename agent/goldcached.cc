// goldcached: the per-host agent. Mounts a FUSE view of one datastore whose
// templates are served from the host's chunk cache (DESIGN §5).
//
// Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 when it cannot start
// or serving fails, 2 for bad command-line input.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>
#include <thread>

#include "agent/control_server.h"
#include "agent/datastore_fs.h"
#include "agent/local_space.h"
#include "agent/rules.h"
#include "agent/stats_server.h"
#include "backing/metered_backing.h"
#include "backing/nfs_backing.h"
#include "cache/chunk_cache.h"
#include "fuse/mount.h"
#include "metrics/metrics.h"
#include "overlay/overlay.h"
#include "util/units.h"

namespace goldcache::agent {
namespace {

struct Flags {
  std::string datastore;
  std::string mountpoint;
  std::string cache_dir;
  std::string cache_size = "10GiB";
  std::string chunk_size = "1MiB";
  std::vector<Rule> rules;
  std::string datastore_timeout = "30s";
  unsigned datastore_connections = 4;
  std::string overlay_ram = "256MiB";
  std::string overlay_ram_host = "4GiB";
  std::string reset = "on-last-close";
  std::string stats_listen = "127.0.0.1:9477";
  bool stats_allow_non_loopback = false;
  std::string control_socket = kDefaultControlSocket;
  std::string log_level = "info";
};

int Fail(const std::string& what) {
  spdlog::critical("{}", what);
  return 1;
}

// What the agent serves, for the control socket and /stats.
struct Agent {
  const Flags& flags;
  std::string name;
  cache::ChunkCache& cache;
  overlay::OverlayStore& overlays;
  DatastoreFs& fs;
  metrics::Registry& registry;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

  // A path as an operator gives it: under the mountpoint, under the
  // datastore source, or relative to the datastore root.
  Result<std::string> DatastorePath(const std::string& given) const {
    std::filesystem::path p = std::filesystem::path(given).lexically_normal();
    for (const std::string& root : {flags.mountpoint, name}) {
      auto rel = p.lexically_relative(std::filesystem::path(root).lexically_normal());
      if (p.is_absolute() && !rel.empty() && *rel.begin() != "..") {
        return rel == "." ? std::string() : rel.string();
      }
    }
    if (p.is_absolute() || (!p.empty() && *p.begin() == "..")) {
      return Status::Error(Code::kInvalidArgument,
                           given + " is not under " + flags.mountpoint + " or " + name);
    }
    return p.string();
  }

  nlohmann::json Status() const {
    return {
        {"version", GOLDCACHE_VERSION},
        {"pid", getpid()},
        {"uptime_seconds",
         std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()},
        {"datastore", name},
        {"mountpoint", flags.mountpoint},
        {"cache_dir", flags.cache_dir},
        {"cache_used_bytes", cache.used_bytes()},
        {"cache_capacity_bytes", cache.capacity_bytes()},
        {"overlay_ram_bytes", overlays.ram_bytes()},
        {"overlay_disk_bytes", overlays.disk_bytes()},
        {"desktops", fs.Desktops().size()},
    };
  }

  nlohmann::json List() const {
    nlohmann::json templates = nlohmann::json::array(), desktops = nlohmann::json::array();
    for (const auto& t : fs.Templates()) {
      templates.push_back({{"path", t.path},
                           {"generation", t.generation},
                           {"size_bytes", t.size},
                           {"cached_bytes", t.cached_bytes},
                           {"open_handles", t.open_handles}});
    }
    for (const auto& d : fs.Desktops()) {
      desktops.push_back({{"path", d.path},
                          {"host_only", d.local_only},
                          {"size_bytes", d.size},
                          {"overlay_ram_bytes", d.overlay_ram_bytes},
                          {"overlay_disk_bytes", d.overlay_disk_bytes},
                          {"open_handles", d.open_handles}});
    }
    return {{"templates", templates}, {"desktops", desktops}};
  }

  nlohmann::json Stats() const {
    nlohmann::json j = Status();
    j.update(List());
    j["metrics"] = registry.RenderJson();
    return j;
  }

  // Reads a template through the cache so the next boot storm finds it there.
  Result<nlohmann::json> Warm(const std::string& path, uint64_t rate, const Progress& progress) {
    auto file = fs.Open(path, O_RDONLY);
    if (!file.ok()) return file.status();
    auto st = (*file)->Stat();
    if (!st.ok()) return st.status();
    const uint64_t size = st->st_size;
    std::vector<char> buf(cache.chunk_size());
    const auto start = std::chrono::steady_clock::now();
    auto last_report = start;
    uint64_t done = 0;
    goldcache::Status result;
    while (done < size) {
      auto n = (*file)->Read(done, buf);
      if (!n.ok()) {
        result = n.status();
        break;
      }
      if (*n == 0) break;
      done += *n;
      if (rate > 0) {  // hold the average at `rate` bytes per second
        auto due = start + std::chrono::duration<double>(static_cast<double>(done) / rate);
        std::this_thread::sleep_until(due);
      }
      auto now = std::chrono::steady_clock::now();
      if (now - last_report > std::chrono::milliseconds(200) || done == size) {
        last_report = now;
        if (!progress({{"done_bytes", done}, {"total_bytes", size}})) {
          result = goldcache::Status::Error(Code::kIoError, "client went away");
          break;
        }
      }
    }
    (*file)->Release();
    if (!result.ok()) return result;
    return nlohmann::json{
        {"path", path},
        {"bytes", done},
        {"seconds",
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()}};
  }

  // The cache's name for a datastore path (GenerationKey::path).
  std::string CacheKeyPath(const std::string& path) const { return name + ":" + path; }

  Result<nlohmann::json> Handle(const nlohmann::json& req, const Progress& progress) {
    const std::string command = req.value("command", "");
    if (command == "status") return Status();
    if (command == "stats") return Stats();
    if (command == "list") return List();
    if (command == "check") {
      auto report = cache.Check([&](uint64_t done, uint64_t total) {
        return progress({{"done_bytes", done}, {"total_bytes", total}, {"unit", "chunks"}});
      });
      if (!report.ok()) return report.status();
      return nlohmann::json{{"checked_chunks", report->chunks},
                            {"checked_bytes", report->bytes},
                            {"bad_chunks_dropped", report->bad}};
    }
    auto path = DatastorePath(req.value("path", ""));
    if (!path.ok()) return path.status();
    if (command == "reset") {
      GC_RETURN_IF_ERROR(fs.Reset(*path, req.value("force", false)));
      return nlohmann::json{{"path", *path}, {"reset", true}};
    }
    if (command == "warm") {
      auto warmed = Warm(*path, req.value("rate_bytes_per_second", uint64_t{0}), progress);
      if (!warmed.ok() || !req.value("pin", false)) return warmed;
      // The open in Warm bound the file's current generation: the newest one.
      auto gens = cache.GenerationsOf(CacheKeyPath(*path));
      if (gens.empty()) return goldcache::Status::Error(Code::kNotFound, *path + ": not cached");
      GC_RETURN_IF_ERROR(cache.Pin(gens.back(), true));
      (*warmed)["pinned_generation"] = gens.back();
      return warmed;
    }
    if (command == "evict") {
      uint64_t bytes = 0;
      auto gens = cache.GenerationsOf(CacheKeyPath(*path));
      for (auto gen : gens) bytes += cache.Evict(gen);
      return nlohmann::json{
          {"path", *path}, {"generations", gens.size()}, {"evicted_bytes", bytes}};
    }
    return goldcache::Status::Error(Code::kNotSupported, "unknown command '" + command + "'");
  }
};

int Serve(const Flags& flags) {
  auto cache_size = ParseSize(flags.cache_size);
  if (!cache_size.ok()) return Fail("--cache-size: " + cache_size.status().message());
  auto chunk_size = ParseSize(flags.chunk_size);
  if (!chunk_size.ok()) return Fail("--chunk-size: " + chunk_size.status().message());
  if (*chunk_size > (64u << 20)) return Fail("--chunk-size: at most 64MiB");
  auto overlay_ram = ParseSize(flags.overlay_ram);
  if (!overlay_ram.ok()) return Fail("--overlay-ram: " + overlay_ram.status().message());
  auto overlay_ram_host = ParseSize(flags.overlay_ram_host);
  if (!overlay_ram_host.ok()) {
    return Fail("--overlay-ram-host: " + overlay_ram_host.status().message());
  }
  auto rules = RuleSet::Create(flags.rules);
  if (!rules.ok()) return Fail(rules.status().message());

  auto timeout = ParseDuration(flags.datastore_timeout);
  if (!timeout.ok()) return Fail("--datastore-timeout: " + timeout.status().message());

  metrics::Registry registry;
  // The datastore's identity in generation keys: its URL, or its absolute
  // path, so a restart over the same datastore finds its cached chunks again.
  std::string name;
  Result<std::unique_ptr<backing::Backing>> opened = Status::Error(Code::kNotFound, "");
  if (backing::IsNfsUrl(flags.datastore)) {
    name = flags.datastore;
    backing::NfsOptions nfs;
    nfs.timeout = *timeout;
    nfs.connections = std::max(1u, flags.datastore_connections);
    opened = backing::OpenNfsBacking(flags.datastore, nfs);
  } else {
    std::error_code ec;
    name = std::filesystem::absolute(flags.datastore, ec).lexically_normal().string();
    if (name.size() > 1 && name.back() == '/') name.pop_back();
    opened = backing::OpenPosixBacking(flags.datastore);
  }
  if (!opened.ok()) return Fail("--datastore: " + opened.status().message());
  auto datastore = backing::MakeMeteredBacking(std::move(opened).value(), registry);

  cache::CacheOptions cache_options;
  cache_options.dir = flags.cache_dir;
  cache_options.capacity_bytes = *cache_size;
  cache_options.chunk_size = static_cast<uint32_t>(*chunk_size);
  cache_options.registry = &registry;
  auto cache = cache::ChunkCache::Open(cache_options);
  if (!cache.ok()) return Fail("--cache-dir: " + cache.status().message());

  // One local budget for the read cache and the overlays' disk tier.
  LocalSpace space(*cache_size, **cache);
  overlay::OverlayOptions overlay_options;
  overlay_options.dir = flags.cache_dir + "/overlay";
  overlay_options.ram_per_desktop = *overlay_ram;
  overlay_options.ram_host_cap = *overlay_ram_host;
  overlay_options.disk_space = &space;
  overlay_options.registry = &registry;
  auto overlays = overlay::OverlayStore::Open(overlay_options);
  if (!overlays.ok()) return Fail("--cache-dir: " + overlays.status().message());

  auto reset = flags.reset == "manual" ? DatastoreFs::ResetPolicy::kManual
                                       : DatastoreFs::ResetPolicy::kOnLastClose;
  DatastoreFs fs(name, *datastore, std::move(rules).value(), **cache, **overlays, reset, registry);
  Agent agent{flags, name, **cache, **overlays, fs, registry};

  auto stats = StatsServer::Start(
      flags.stats_listen, registry, [&] { return agent.Stats(); }, flags.stats_allow_non_loopback);
  if (!stats.ok()) return Fail("--stats-listen: " + stats.status().message());

  ControlOptions control_options;
  control_options.socket_path = flags.control_socket;
  auto control = ControlServer::Start(control_options,
                                      [&](const nlohmann::json& req, const Progress& progress) {
                                        return agent.Handle(req, progress);
                                      });
  if (!control.ok()) return Fail("--control-socket: " + control.status().message());

  fuse::MountOptions mount_options;
  mount_options.mountpoint = flags.mountpoint;
  mount_options.fsname = "goldcache:" + name;
  auto mount = fuse::Mount::Create(fs, mount_options);
  if (!mount.ok()) return Fail("--mountpoint: " + mount.status().message());

  spdlog::info("serving {} at {} (cache {}, {} of {}), statistics on http://{}/metrics", name,
               flags.mountpoint, flags.cache_dir, FormatBytes((*cache)->used_bytes()),
               FormatBytes((*cache)->capacity_bytes()), flags.stats_listen);
  sd_notifyf(0, "READY=1\nSTATUS=serving %s at %s", name.c_str(), flags.mountpoint.c_str());
  goldcache::Status st = (*mount)->Run();
  sd_notify(0, "STOPPING=1\nSTATUS=stopping");
  mount->reset();
  control->reset();
  stats->reset();
  goldcache::Status flushed = (*cache)->FlushIndex();
  if (!flushed.ok()) spdlog::error("flushing the cache index: {}", flushed.ToString());
  if (!st.ok()) return Fail("serving stopped: " + st.ToString());
  spdlog::info("stopped cleanly");
  return 0;
}

}  // namespace
}  // namespace goldcache::agent

int main(int argc, char** argv) {
  using goldcache::agent::Flags;
  using goldcache::agent::Role;
  Flags flags;
  CLI::App app{
      "goldcached: the goldcache per-host agent.\n"
      "Mounts a FUSE view of a VM datastore. Reads of template files are served from a\n"
      "host-local chunk cache, so N desktops booting from one golden image cost the\n"
      "datastore one read per chunk. Nonpersistent desktops' writes stay on this host\n"
      "(RAM, spilling to the cache dir) and never reach the datastore.\n"
      "--cache-size is the local disk budget shared by the read cache and those writes;\n"
      "the writes come first. Runs in the foreground; stops cleanly on SIGTERM/SIGINT.\n"
      "Roles: the first matching --template/--nonpersistent glob wins (in the order given);\n"
      "other paths pass through. '*' matches within a path component, '**' any depth."};
  app.set_version_flag("--version", std::string("goldcached ") + GOLDCACHE_VERSION);
  app.add_option("--datastore", flags.datastore,
                 "The datastore: a directory (e.g. a kernel NFS mount) or an NFSv3 URL, "
                 "nfs://HOST/EXPORT[/DIR][?nfsport=N&mountport=N&version=3]")
      ->required();
  app.add_option("--datastore-timeout", flags.datastore_timeout,
                 "nfs://: how long one datastore request may take before the read fails with "
                 "EIO (cached data keeps being served meanwhile); e.g. 30s")
      ->capture_default_str();
  app.add_option("--datastore-connections", flags.datastore_connections,
                 "nfs://: connections to the filer (requests in flight)")
      ->capture_default_str();
  app.add_option("--mountpoint", flags.mountpoint, "Where to mount the goldcache view")->required();
  app.add_option("--cache-dir", flags.cache_dir, "Host-local cache directory (on SSD)")->required();
  app.add_option("--cache-size", flags.cache_size, "Read cache capacity, e.g. 200GiB")
      ->capture_default_str();
  app.add_option("--chunk-size", flags.chunk_size,
                 "Cache chunk size (multiple of 4KiB); changing it discards the cache")
      ->capture_default_str();
  app.add_option_function<std::string>(
         "--template",
         [&](const std::string& g) {
           flags.rules.push_back({g, Role::kTemplate});
         },
         "Glob of template (golden image) files: read-only, cached; repeatable")
      ->trigger_on_parse()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option_function<std::string>(
         "--nonpersistent",
         [&](const std::string& g) {
           flags.rules.push_back({g, Role::kNonpersistent});
         },
         "Glob of non-persistent desktop disks; repeatable")
      ->trigger_on_parse()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--overlay-ram", flags.overlay_ram,
                 "RAM for one nonpersistent desktop's writes before they spill to local disk")
      ->capture_default_str();
  app.add_option("--overlay-ram-host", flags.overlay_ram_host,
                 "RAM for all nonpersistent desktops' writes together")
      ->capture_default_str();
  app.add_option("--reset", flags.reset,
                 "When a nonpersistent desktop's writes are discarded: on-last-close (when the "
                 "VM shuts down) or manual (goldcache reset PATH)")
      ->capture_default_str()
      ->check(CLI::IsMember({"on-last-close", "manual"}));
  app.add_option("--control-socket", flags.control_socket,
                 "Unix socket of the goldcache CLI (root only)")
      ->capture_default_str();
  app.add_option("--stats-listen", flags.stats_listen,
                 "HOST:PORT of the statistics endpoint (/metrics, /stats, /healthz)")
      ->capture_default_str();
  app.add_flag("--stats-allow-non-loopback", flags.stats_allow_non_loopback,
               "Allow --stats-listen on an address other than loopback");
  app.add_option("--log-level", flags.log_level, "trace, debug, info, warn or error")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto logger = spdlog::stderr_color_mt("goldcached");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(flags.log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  return goldcache::agent::Serve(flags);
}
