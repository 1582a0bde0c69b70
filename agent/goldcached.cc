// goldcached: the per-host agent. Mounts a FUSE view of one datastore whose
// templates are served from the host's chunk cache (docs/design.md §5).
//
// Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 when it cannot start
// or serving fails, 2 for bad command-line input.
#include <malloc.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <condition_variable>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <thread>

#include "agent/config.h"
#include "agent/control_server.h"
#include "agent/inventory_metrics.h"
#include "agent/stats_server.h"
#include "backing/metered_backing.h"
#include "backing/nfs_backing.h"
#include "cache/chunk_cache.h"
#include "cache/chunk_store.h"
#include "fuse/mount.h"
#include "metrics/metrics.h"
#include "overlay/overlay.h"
#include "roles/datastore_fs.h"
#include "roles/local_space.h"
#include "roles/rules.h"
#include "util/private_dir.h"
#include "util/units.h"

namespace goldcache::agent {
namespace {

using roles::DatastoreFs;
using roles::LocalSpace;

int Fail(const std::string& what) {
  spdlog::critical("{}", what);
  return 1;
}

// One datastore as served: its backing, its view and its mount.
struct Datastore {
  const DatastoreConfig& config;
  std::string identity;  // in generation keys: the URL or absolute path
  std::unique_ptr<backing::Backing> backing;
  std::unique_ptr<DatastoreFs> fs;
  std::unique_ptr<fuse::Mount> mount;
};

// What the agent serves, for the control socket and /stats.
struct Agent {
  const AgentConfig& config;
  cache::ChunkCache& cache;
  overlay::OverlayStore& overlays;
  std::vector<Datastore>& datastores;
  metrics::Registry& registry;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

  // A path as an operator gives it: under a mountpoint, under a datastore
  // source, or (with one datastore) relative to the datastore root.
  Result<std::pair<Datastore*, std::string>> Resolve(const std::string& given) const {
    std::filesystem::path p = std::filesystem::path(given).lexically_normal();
    for (Datastore& ds : datastores) {
      for (const std::string& root : {ds.config.mountpoint, ds.identity}) {
        auto rel = p.lexically_relative(std::filesystem::path(root).lexically_normal());
        if (p.is_absolute() && !rel.empty() && *rel.begin() != "..") {
          return std::make_pair(&ds, rel == "." ? std::string() : rel.string());
        }
      }
    }
    if (!p.is_absolute() && datastores.size() == 1 && !(!p.empty() && *p.begin() == "..")) {
      return std::make_pair(&datastores[0], p.string());
    }
    std::string roots;
    for (const Datastore& ds : datastores) roots += " " + ds.config.mountpoint;
    return goldcache::Status::Error(Code::kInvalidArgument,
                                    given + " is not under a goldcache mount:" + roots);
  }

  nlohmann::json Status() const {
    nlohmann::json ds = nlohmann::json::array();
    for (const Datastore& d : datastores) {
      ds.push_back({{"name", d.config.name},
                    {"source", d.identity},
                    {"mountpoint", d.config.mountpoint},
                    {"desktops", d.fs->ListDesktops().size()}});
    }
    return {
        {"version", GOLDCACHE_VERSION},
        {"pid", getpid()},
        {"uptime_seconds",
         std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()},
        {"datastores", ds},
        {"cache_dir", config.cache.dir},
        {"cache_used_bytes", cache.used_bytes()},
        {"cache_capacity_bytes", cache.capacity_bytes()},
        {"overlay_ram_bytes", overlays.ram_bytes()},
        {"overlay_disk_bytes", overlays.disk_bytes()},
    };
  }

  nlohmann::json List() const {
    nlohmann::json templates = nlohmann::json::array(), desktops = nlohmann::json::array();
    for (const Datastore& ds : datastores) {
      for (const auto& t : ds.fs->ListTemplates()) {
        nlohmann::json row = {{"datastore", ds.config.name},    {"path", t.path},
                              {"generation", t.generation},     {"size_bytes", t.size},
                              {"cached_bytes", t.cached_bytes}, {"open_handles", t.open_handles}};
        AddIo(row, t.io, false);
        templates.push_back(std::move(row));
      }
      for (const auto& d : ds.fs->ListDesktops()) {
        nlohmann::json row = {{"datastore", ds.config.name},
                              {"path", d.path},
                              {"host_only", d.local_only},
                              {"size_bytes", d.size},
                              {"overlay_ram_bytes", d.overlay_ram_bytes},
                              {"overlay_disk_bytes", d.overlay_disk_bytes},
                              {"open_handles", d.open_handles}};
        AddIo(row, d.io, true);
        desktops.push_back(std::move(row));
      }
    }
    return {{"templates", templates}, {"desktops", desktops}};
  }

  // A file's IO through the mount (counters since it was first opened; the
  // latencies are sums: divide by the ops). hit_ratio: the share of the
  // bytes read that the datastore did not have to serve.
  static void AddIo(nlohmann::json& row, const roles::IoCounts& io, bool writes) {
    row["read_ops"] = io.read_ops;
    row["read_bytes"] = io.read_bytes;
    row["datastore_read_bytes"] = io.read_bytes_from_datastore;
    row["read_latency_seconds"] = static_cast<double>(io.read_latency_ns) * 1e-9;
    row["hit_ratio"] = Ratio(io.read_bytes - io.read_bytes_from_datastore, io.read_bytes);
    if (!writes) return;
    row["write_ops"] = io.write_ops;
    row["write_bytes"] = io.write_bytes;
    row["write_latency_seconds"] = static_cast<double>(io.write_latency_ns) * 1e-9;
  }

  // Per-template and per-desktop series (inventory_metrics.h): appended to
  // /metrics, and under "metrics" in /stats.
  std::vector<InventoryFamily> Inventory() const {
    std::vector<DatastoreInventory> inventory;
    for (const Datastore& ds : datastores) {
      inventory.push_back({ds.config.name, ds.fs->ListTemplates(), ds.fs->ListDesktops()});
    }
    return InventoryFamilies(inventory);
  }

  static double Ratio(uint64_t part, uint64_t whole) {
    return whole == 0 ? 0.0 : static_cast<double>(part) / static_cast<double>(whole);
  }
  uint64_t Count(const std::string& name, const metrics::Labels& labels = {}) const {
    return registry.GetCounter(name, "", labels).Value();
  }

  // The operator's summary: per datastore, cache, templates, desktops; and
  // every metric, raw, under "metrics".
  nlohmann::json Stats() const {
    nlohmann::json j = Status();
    j.update(List());
    const uint64_t served = Count("goldcache_read_bytes_total", {{"source", "cache"}}) +
                            Count("goldcache_read_bytes_total", {{"source", "overlay"}}) +
                            Count("goldcache_read_bytes_total", {{"source", "datastore"}});
    uint64_t from_datastore = 0;
    for (auto& ds : j["datastores"]) {
      metrics::Labels l{{"datastore", ds["name"].get<std::string>()}};
      uint64_t read = Count("goldcache_datastore_read_bytes_total", l);
      from_datastore += read;
      ds["read_ops"] = Count("goldcache_datastore_read_ops_total", l);
      ds["read_bytes"] = read;
      ds["write_bytes"] = Count("goldcache_datastore_write_bytes_total", l);
      ds["errors"] = Count("goldcache_datastore_errors_total", l);
      ds["up"] = registry.GetGauge("goldcache_datastore_up", "", l).Value() == 1;
    }
    const uint64_t hits = Count("goldcache_cache_hits_total");
    const uint64_t misses = Count("goldcache_cache_misses_total");
    j["cache"] = {{"used_bytes", cache.used_bytes()},
                  {"capacity_bytes", cache.capacity_bytes()},
                  {"hits", hits},
                  {"misses", misses},
                  {"hit_ratio", Ratio(hits, hits + misses)},
                  {"evictions", Count("goldcache_cache_evictions_total")},
                  {"checksum_failures", Count("goldcache_cache_checksum_failures_total")}};
    // Offload: the share of what desktops read that the datastore did not serve.
    j["read_bytes"] = served;
    j["offload_ratio"] = served == 0 ? 0.0 : 1.0 - Ratio(std::min(from_datastore, served), served);
    j["metrics"] = registry.RenderJson();
    AddInventoryJson(Inventory(), j["metrics"]);
    return j;
  }

  // Reads a template through the cache so the next boot storm finds it there.
  Result<nlohmann::json> Warm(DatastoreFs& fs, const std::string& path, uint64_t rate, bool pin,
                              bool boot_set, const Progress& progress) {
    const auto start = std::chrono::steady_clock::now();
    bool client_gone = false;
    auto report = fs.Warm(path, rate, boot_set, [&](uint64_t done, uint64_t total) {
      client_gone = !progress({{"done_bytes", done}, {"total_bytes", total}});
      return !client_gone;
    });
    if (!report.ok()) {
      if (client_gone) return goldcache::Status::Error(Code::kIoError, "client went away");
      return report.status();
    }
    nlohmann::json out{
        {"path", path},
        {"bytes", report->bytes},
        {"fetched_bytes", report->from_datastore},
        {"already_cached_bytes", report->bytes - report->from_datastore - report->reused},
        {"reused_bytes", report->reused},
        {"boot_set", boot_set},
        {"generation", report->generation},
        {"seconds",
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()}};
    if (pin) {
      GC_RETURN_IF_ERROR(cache.Pin(report->generation, true));
      out["pinned_generation"] = report->generation;
    }
    return out;
  }

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
    auto target = Resolve(req.value("path", ""));
    if (!target.ok()) return target.status();
    auto& [ds, path] = *target;
    const std::string cache_path = ds->identity + ":" + path;  // GenerationKey::path
    if (command == "reset") {
      GC_RETURN_IF_ERROR(ds->fs->Reset(path, req.value("force", false)));
      return nlohmann::json{{"path", path}, {"reset", true}};
    }
    if (command == "warm") {
      return Warm(*ds->fs, path, req.value("rate_bytes_per_second", uint64_t{0}),
                  req.value("pin", false), req.value("boot_set", false), progress);
    }
    if (command == "publish") {
      const auto start = std::chrono::steady_clock::now();
      bool client_gone = false;
      auto report = ds->fs->Publish(path, [&](uint64_t done, uint64_t total) {
        client_gone = !progress({{"done_bytes", done}, {"total_bytes", total}});
        return !client_gone;
      });
      if (!report.ok()) {
        if (client_gone) return goldcache::Status::Error(Code::kIoError, "client went away");
        return report.status();
      }
      return nlohmann::json{
          {"path", path},
          {"manifest", report->manifest},
          {"generation", report->generation},
          {"bytes", report->bytes},
          {"chunks", report->chunks},
          {"trace_chunks", report->trace_chunks},
          {"seconds",
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()}};
    }
    if (command == "evict") {
      uint64_t bytes = 0;
      auto gens = cache.GenerationsOf(cache_path);
      for (auto gen : gens) bytes += cache.Evict(gen);
      return nlohmann::json{{"path", path}, {"generations", gens.size()}, {"evicted_bytes", bytes}};
    }
    return goldcache::Status::Error(Code::kNotSupported, "unknown command '" + command + "'");
  }
};

Result<std::unique_ptr<backing::Backing>> OpenDatastore(const DatastoreConfig& ds,
                                                        std::string& identity) {
  if (backing::IsNfsUrl(ds.source)) {
    identity = ds.source;
    backing::NfsOptions nfs;
    nfs.timeout = ds.timeout;
    nfs.connections = std::max(1u, ds.connections);
    return backing::OpenNfsBacking(ds.source, nfs);
  }
  std::error_code ec;
  identity = std::filesystem::absolute(ds.source, ec).lexically_normal().string();
  if (identity.size() > 1 && identity.back() == '/') identity.pop_back();
  return backing::OpenPosixBacking(ds.source);
}

// The cache directory holds datastore paths and desktops' data: one the
// agent makes is root's alone (the package makes /var/lib/goldcache 0700 as
// well). One that exists keeps its mode, with a warning if others can read it.
Status PrepareCacheDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::path path(dir);
  if (!std::filesystem::exists(path, ec)) {
    std::filesystem::create_directories(path.parent_path(), ec);
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::FromErrno(errno, "cannot create the cache directory " + dir);
    }
    return Status::Ok();
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 077) != 0) {
    spdlog::warn(
        "{}: mode {:04o} lets other users in; it holds datastore paths and desktops' data: "
        "chmod 0700 it",
        dir, st.st_mode & 07777);
  }
  return Status::Ok();
}

int Serve(const AgentConfig& config) {
  if (Status st = PrepareCacheDir(config.cache.dir); !st.ok()) {
    return Fail(config.Where("cache.dir") + ": " + st.message());
  }
  metrics::Registry registry;
  // A restart shows as a new start time (alerts count restarts with it).
  registry
      .GetGauge("goldcache_agent_start_time_seconds",
                "When this agent process started, in seconds since the Unix epoch.")
      .Set(std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
               .count());
  registry
      .GetGauge("goldcache_agent_info", "Always 1; the agent's version is in the label.",
                {{"version", GOLDCACHE_VERSION}})
      .Set(1);
  cache::CacheOptions cache_options;
  cache_options.dir = config.cache.dir;
  cache_options.capacity_bytes = config.cache.size;
  cache_options.chunk_size = static_cast<uint32_t>(config.cache.chunk_size);
  cache_options.registry = &registry;
  // After a crash the cache re-proves every chunk before it serves (reads
  // the whole store): tell systemd it takes longer than TimeoutStartSec, or
  // a large cache would be killed mid-proof and loop under Restart=.
  const std::string marker_path = config.cache.dir + "/" + cache::ChunkCache::kRunningMarker;
  const std::string store_path = config.cache.dir + "/" + cache::ChunkStore::kFileName;
  if (struct stat marker, store;
      stat(marker_path.c_str(), &marker) == 0 && stat(store_path.c_str(), &store) == 0) {
    const uint64_t bytes = static_cast<uint64_t>(store.st_blocks) * 512;
    const uint64_t seconds = 60 + bytes / (100ull << 20);  // at 100 MiB/s, a slow disk
    sd_notifyf(0, "EXTEND_TIMEOUT_USEC=%llu\nSTATUS=re-proving %llu MiB of cached chunks",
               static_cast<unsigned long long>(seconds * 1000000),
               static_cast<unsigned long long>(bytes >> 20));
  }
  auto cache = cache::ChunkCache::Open(cache_options);
  if (!cache.ok()) return Fail(config.Where("cache.dir") + ": " + cache.status().message());

  // One local budget for the read cache and the overlays' disk tier.
  roles::ChunkCacheSpace cache_space(**cache);
  LocalSpace::Options space_options;
  space_options.total = config.cache.size;
  space_options.dir = config.cache.dir;
  space_options.registry = &registry;
  LocalSpace space(space_options, cache_space);
  overlay::OverlayOptions overlay_options;
  overlay_options.dir = config.cache.dir + "/overlay";
  overlay_options.ram_per_desktop = config.overlay.ram_per_desktop;
  overlay_options.ram_host_cap = config.overlay.ram_host;
  overlay_options.disk_space = &space;
  overlay_options.registry = &registry;
  // The desktops' data: owner-only like the rest of the cache dir (the
  // overlay store would create it with the process umask).
  auto overlay_dir = MakePrivateTree(overlay_options.dir);
  if (!overlay_dir.ok()) {
    return Fail(config.Where("cache.dir") + ": " + overlay_dir.status().message());
  }
  auto overlays = overlay::OverlayStore::Open(overlay_options);
  if (!overlays.ok()) return Fail(config.Where("cache.dir") + ": " + overlays.status().message());

  std::vector<Datastore> datastores;
  datastores.reserve(config.datastores.size());
  DatastoreFs::Options fs_options;
  fs_options.reset = config.overlay.reset == OverlayReset::kManual
                         ? roles::ResetPolicy::kManual
                         : roles::ResetPolicy::kOnLastClose;
  fs_options.templates.read_cache = config.cache.read_cache;
  fs_options.templates.settle = config.cache.settle;
  if (!config.cache.read_cache) {
    spdlog::warn("read cache off: every template read goes to the datastore");
  }
  for (const DatastoreConfig& dc : config.datastores) {
    Datastore ds{dc, "", nullptr, nullptr, nullptr};
    auto opened = OpenDatastore(dc, ds.identity);
    if (!opened.ok()) return Fail(dc.Where("source") + ": " + opened.status().message());
    ds.backing =
        backing::MakeMeteredBacking(std::move(opened).value(), registry, {{"datastore", dc.name}});
    auto rules = RuleSet::Create(dc.rules);
    if (!rules.ok()) return Fail(dc.Where("rule") + ": " + rules.status().message());
    ds.fs = std::make_unique<DatastoreFs>(ds.identity, *ds.backing, std::move(rules).value(),
                                          **cache, **overlays, fs_options, registry);
    datastores.push_back(std::move(ds));
  }
  Agent agent{config, **cache, **overlays, datastores, registry};

  auto stats = StatsServer::Start(
      config.stats.listen, registry, [&] { return agent.Stats(); }, config.stats.allow_non_loopback,
      StatsLimits{}, [&] { return RenderInventoryPrometheus(agent.Inventory()); });
  if (!stats.ok()) return Fail(config.Where("stats.listen") + ": " + stats.status().message());

  ControlOptions control_options;
  control_options.socket_path = config.control.socket;
  control_options.registry = &registry;
  auto group = ResolveControlGroup(config);
  if (!group.ok()) return Fail(config.Where("control.group") + ": " + group.status().message());
  control_options.group = *group;
  auto control = ControlServer::Start(control_options,
                                      [&](const nlohmann::json& req, const Progress& progress) {
                                        return agent.Handle(req, progress);
                                      });
  if (!control.ok())
    return Fail(config.Where("control.socket") + ": " + control.status().message());

  for (Datastore& ds : datastores) {
    std::error_code ec;
    // /run/goldcache is empty after a boot: make the mountpoint.
    std::filesystem::create_directories(ds.config.mountpoint, ec);
    fuse::MountOptions mount_options;
    mount_options.mountpoint = ds.config.mountpoint;
    mount_options.fsname = "goldcache:" + ds.identity;
    auto mount = fuse::Mount::Create(*ds.fs, mount_options);
    if (!mount.ok()) {
      return Fail(ds.config.Where("mountpoint") + ": " + mount.status().message());
    }
    ds.mount = std::move(mount).value();
    spdlog::info("serving {} ({}) at {}", ds.config.name, ds.identity, ds.config.mountpoint);
  }
  spdlog::info("cache {}: {} of {}; statistics on http://{}/metrics", config.cache.dir,
               FormatBytes((*cache)->used_bytes()), FormatBytes((*cache)->capacity_bytes()),
               config.stats.listen);
  sd_notifyf(0, "READY=1\nSTATUS=serving %zu datastore(s)", datastores.size());

  // Each mount serves on its own loop; when one stops (a signal stops them
  // all, an external unmount stops one), the agent stops the rest.
  std::vector<goldcache::Status> results(datastores.size());
  std::mutex done_mu;
  std::condition_variable done_cv;
  size_t running = datastores.size();
  std::vector<std::thread> loops;
  for (size_t i = 0; i < datastores.size(); ++i) {
    loops.emplace_back([&, i] {
      results[i] = datastores[i].mount->Run();
      std::lock_guard lock(done_mu);
      --running;
      done_cv.notify_all();
    });
  }
  {
    std::unique_lock lock(done_mu);
    done_cv.wait(lock, [&] { return running < datastores.size(); });
  }
  sd_notify(0, "STOPPING=1\nSTATUS=stopping");
  for (Datastore& ds : datastores) ds.mount->Exit();
  for (auto& t : loops) t.join();
  for (Datastore& ds : datastores) ds.mount.reset();
  control->reset();
  stats->reset();
  goldcache::Status flushed = (*cache)->FlushIndex();
  if (!flushed.ok()) spdlog::error("flushing the cache index: {}", flushed.ToString());
  int rc = 0;
  for (size_t i = 0; i < datastores.size(); ++i) {
    if (!results[i].ok()) {
      spdlog::critical("{}: serving stopped: {}", datastores[i].config.name, results[i].ToString());
      rc = 1;
    }
  }
  if (rc == 0) spdlog::info("stopped cleanly");
  return rc;
}

}  // namespace
}  // namespace goldcache::agent

int main(int argc, char** argv) {
  // The overlays' RAM tier and the fetch buffers are blocks of 128 KiB to a
  // few MiB, allocated and freed by many threads. glibc's default raises its
  // mmap threshold after the first such free, so later ones come from
  // per-thread arenas, where freed space stays the process's: measured by
  // bench/storm (N=32, cold boot + steady), peak RSS 634 MiB against 583 MiB
  // with the threshold held at 128 KiB, for the same 512 MiB of RAM tiers.
  // Held, every such block is its own mapping and goes back when freed, so
  // the RAM budgets bound the agent's memory.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  using goldcache::agent::FlagOverrides;
  using goldcache::agent::Role;
  FlagOverrides flags;
  std::string config_file;
  bool check_config = false;
  CLI::App app{
      "goldcached: the goldcache per-host agent.\n"
      "Mounts a FUSE view of VM datastores. Reads of template files are served from a\n"
      "host-local chunk cache, so N desktops booting from one golden image cost the\n"
      "datastore one read per chunk. Nonpersistent desktops' writes stay on this host\n"
      "(RAM, spilling to the cache dir) and never reach the datastore.\n"
      "The cache size is the local disk budget shared by the read cache and those writes;\n"
      "the writes come first. Runs in the foreground; stops cleanly on SIGTERM/SIGINT.\n"
      "Configure with --config FILE (TOML, several datastores; see goldcache.toml(5))\n"
      "or with the flags below for one datastore; flags override the file.\n"
      "Roles: the first matching --template/--nonpersistent glob wins (in the order given);\n"
      "other paths pass through. '*' matches within a path component, '**' any depth."};
  app.set_version_flag("--version", std::string("goldcached ") + GOLDCACHE_VERSION);
  app.add_option("--config", config_file, "TOML config file (e.g. /etc/goldcache/goldcache.toml)");
  app.add_flag("--check-config", check_config,
               "Validate the configuration (and the paths it names) and exit");
  auto opt = [&](const char* name, std::optional<std::string>& into, const char* help) {
    return app.add_option_function<std::string>(
        name, [&into](const std::string& v) { into = v; }, help);
  };
  opt("--datastore", flags.datastore,
      "The datastore: a directory (e.g. a kernel NFS mount) or an NFSv3 URL, "
      "nfs://HOST/EXPORT[/DIR][?nfsport=N&mountport=N&version=3]");
  opt("--mountpoint", flags.mountpoint, "Where to mount the goldcache view (created if missing)");
  opt("--cache-dir", flags.cache_dir, "Host-local cache directory (on SSD)");
  opt("--cache-size", flags.cache_size,
      "Local disk budget for the read cache and desktops' spilled writes (default 10GiB)");
  opt("--chunk-size", flags.chunk_size,
      "Cache chunk size, a multiple of 4KiB (default 1MiB); changing it discards the cache");
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
         "Glob of non-persistent desktop disks: writes stay on this host; repeatable")
      ->trigger_on_parse()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  opt("--read-cache", flags.read_cache,
      "on (default) or off: off sends every template read to the datastore, caching nothing "
      "(a baseline to compare with)");
  opt("--settle", flags.settle,
      "A template changed on the datastore less than this long ago is served but not cached, "
      "since it may still be being written (default 10s)");
  opt("--overlay-ram", flags.overlay_ram,
      "RAM for one nonpersistent desktop's writes before they spill to local disk "
      "(default 256MiB)");
  opt("--overlay-ram-host", flags.overlay_ram_host,
      "RAM for all nonpersistent desktops' writes together (default 4GiB)");
  opt("--reset", flags.reset,
      "When a nonpersistent desktop's writes are discarded: on-last-close (default: when the "
      "VM shuts down) or manual (goldcache reset PATH)");
  opt("--datastore-timeout", flags.datastore_timeout,
      "nfs://: how long one datastore request may take before it fails with EIO (cached data "
      "keeps being served); default 30s");
  opt("--datastore-connections", flags.datastore_connections,
      "nfs://: connections to the filer, i.e. requests in flight (default 4)");
  opt("--stats-listen", flags.stats_listen,
      "HOST:PORT of the statistics endpoint: /metrics, /stats, /healthz (default "
      "127.0.0.1:9477)");
  app.add_flag_callback(
      "--stats-allow-non-loopback", [&] { flags.stats_allow_non_loopback = true; },
      "Allow --stats-listen on an address other than loopback");
  opt("--control-socket", flags.control_socket,
      "Unix socket of the goldcache CLI (default /run/goldcache/goldcached.sock)");
  opt("--control-group", flags.control_group, "Group that may use the control socket besides root");
  opt("--log-level", flags.log_level, "trace, debug, info, warn or error (default info)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto logger = spdlog::stderr_color_mt("goldcached");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  goldcache::Result<goldcache::agent::AgentConfig> config =
      config_file.empty() ? goldcache::agent::ConfigFromFlags(flags)
                          : goldcache::agent::LoadConfig(config_file);
  if (config.ok() && !config_file.empty()) {
    goldcache::Status st = goldcache::agent::ApplyFlags(*config, flags);
    if (!st.ok()) config = st;
  }
  if (!config.ok()) {
    std::cerr << "goldcached: " << config.status().message() << "\n";
    return config_file.empty() ? 2 : 1;  // 2: bad command line; 1: bad config file
  }
  spdlog::set_level(spdlog::level::from_str(config->logging.level));
  if (check_config) {
    goldcache::Status st = goldcache::agent::CheckConfigOnHost(*config);
    if (!st.ok()) {
      std::cerr << "goldcached: " << st.message() << "\n";
      return 1;
    }
    std::cout << "goldcached: configuration OK (" << config->datastores.size()
              << " datastore(s))\n";
    return 0;
  }
  return goldcache::agent::Serve(*config);
}
