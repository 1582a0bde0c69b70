// goldcached: the per-host agent. Mounts a FUSE view of one datastore whose
// templates are served from the host's chunk cache (DESIGN §5).
//
// Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 when it cannot start
// or serving fails, 2 for bad command-line input.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "agent/datastore_fs.h"
#include "agent/rules.h"
#include "agent/stats_server.h"
#include "backing/metered_backing.h"
#include "cache/chunk_cache.h"
#include "fuse/mount.h"
#include "metrics/metrics.h"
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
  std::string stats_listen = "127.0.0.1:9477";
  bool stats_allow_non_loopback = false;
  std::string log_level = "info";
};

int Fail(const std::string& what) {
  spdlog::critical("{}", what);
  return 1;
}

int Serve(const Flags& flags) {
  auto cache_size = ParseSize(flags.cache_size);
  if (!cache_size.ok()) return Fail("--cache-size: " + cache_size.status().message());
  auto chunk_size = ParseSize(flags.chunk_size);
  if (!chunk_size.ok()) return Fail("--chunk-size: " + chunk_size.status().message());
  if (*chunk_size > (64u << 20)) return Fail("--chunk-size: at most 64MiB");
  auto rules = RuleSet::Create(flags.rules);
  if (!rules.ok()) return Fail(rules.status().message());

  metrics::Registry registry;
  auto posix = backing::OpenPosixBacking(flags.datastore);
  if (!posix.ok()) return Fail("--datastore: " + posix.status().message());
  auto datastore = backing::MakeMeteredBacking(std::move(posix).value(), registry);

  cache::CacheOptions cache_options;
  cache_options.dir = flags.cache_dir;
  cache_options.capacity_bytes = *cache_size;
  cache_options.chunk_size = static_cast<uint32_t>(*chunk_size);
  cache_options.registry = &registry;
  auto cache = cache::ChunkCache::Open(cache_options);
  if (!cache.ok()) return Fail("--cache-dir: " + cache.status().message());

  // The datastore's identity in generation keys: its absolute source path, so
  // a restart over the same datastore finds its cached chunks again.
  std::error_code ec;
  std::string name = std::filesystem::absolute(flags.datastore, ec).lexically_normal().string();
  DatastoreFs fs(name, *datastore, std::move(rules).value(), **cache, registry);

  auto stats = StatsServer::Start(
      flags.stats_listen, registry,
      [&] {
        nlohmann::json j;
        j["datastore"] = {{"source", name}, {"mountpoint", flags.mountpoint}};
        j["cache"] = {{"dir", flags.cache_dir},
                      {"used_bytes", (*cache)->used_bytes()},
                      {"capacity_bytes", (*cache)->capacity_bytes()},
                      {"chunk_size", (*cache)->chunk_size()}};
        j["metrics"] = registry.RenderJson();
        return j;
      },
      flags.stats_allow_non_loopback);
  if (!stats.ok()) return Fail("--stats-listen: " + stats.status().message());

  fuse::MountOptions mount_options;
  mount_options.mountpoint = flags.mountpoint;
  mount_options.fsname = "goldcache:" + name;
  auto mount = fuse::Mount::Create(fs, mount_options);
  if (!mount.ok()) return Fail("--mountpoint: " + mount.status().message());

  spdlog::info("serving {} at {} (cache {}, {} of {}), statistics on http://{}/metrics", name,
               flags.mountpoint, flags.cache_dir, FormatBytes((*cache)->used_bytes()),
               FormatBytes((*cache)->capacity_bytes()), flags.stats_listen);
  sd_notifyf(0, "READY=1\nSTATUS=serving %s at %s", name.c_str(), flags.mountpoint.c_str());
  Status st = (*mount)->Run();
  sd_notify(0, "STOPPING=1\nSTATUS=stopping");
  mount->reset();
  stats->reset();
  Status flushed = (*cache)->FlushIndex();
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
      "datastore one read per chunk. Runs in the foreground; stops cleanly on SIGTERM/SIGINT.\n"
      "Roles: the first matching --template/--nonpersistent glob wins (in the order given);\n"
      "other paths pass through. '*' matches within a path component, '**' any depth."};
  app.set_version_flag("--version", std::string("goldcached ") + GOLDCACHE_VERSION);
  app.add_option("--datastore", flags.datastore, "Datastore directory (e.g. a kernel NFS mount)")
      ->required();
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
