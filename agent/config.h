// The agent's configuration: one TOML file (packaging/goldcache.toml is the
// commented default, docs/operations.md the reference), or the command line
// alone, or a file with command-line flags replacing some of its values.
//
// File format (TOML 1.0):
//
//   [cache]                          # required
//   dir        = "/var/lib/goldcache"  # required, absolute
//   size       = "10GiB"             # local disk budget: read cache + overlays' disk tier
//   chunk_size = "1MiB"              # multiple of 4KiB, at most 64MiB
//   read_cache = true                # false: every template read goes to the datastore
//   settle     = "10s"               # a template changed less than this long ago is
//                                    # served but not cached (it may still be being written)
//
//   [overlay]
//   ram_per_desktop = "256MiB"
//   ram_host        = "4GiB"
//   reset           = "on-last-close"  # or "manual"
//
//   [[datastore]]                    # one or more
//   name       = "ds1"               # required, unique; letters, digits, . _ -
//   source     = "/mnt/nfs/ds1"      # required: absolute directory or nfs:// URL
//   mountpoint = "/run/goldcache/ds1"  # required, absolute, unique
//   timeout    = "30s"               # nfs://: bound on each datastore request
//   connections = 4                  # nfs://: TCP sessions to the filer, 1 to 64
//
//   [[datastore.rule]]               # zero or more per datastore, in order;
//   match = "templates/**"           # the first match wins, no match: passthrough
//   role  = "template"               # template, nonpersistent or passthrough
//
//   [stats]
//   listen             = "127.0.0.1:9477"  # HOST:PORT or [IPV6]:PORT
//   allow_non_loopback = false
//
//   [control]
//   socket = "/run/goldcache/goldcached.sock"
//   group  = "goldcache"             # optional: a group (name or number) besides root
//
//   [logging]
//   level = "info"                   # trace, debug, info, warn or error
//
// Sizes and durations are strings in util/units.h's syntax ("200GiB", "30s");
// a bare TOML number is refused, since its unit would be a guess.
//
// Errors: parsing never stops at the first problem. Every problem found is one
// line of the returned kInvalidArgument message, in file order, each starting
// with where it is and which key:
//   /etc/goldcache/goldcache.toml:7:1: [cache] size: invalid size "200GB2": ...
// TOML syntax errors are one line "FILE:LINE:COL: TOML syntax error: ...".
// A value that is absent from the file is named without a position.
//
// Values checked later, against the host (a datastore directory that does not
// exist, a mountpoint in use), keep where they came from: Where("cache.dir")
// gives the "FILE:LINE:COL: [cache] dir" prefix, or the flag ("--cache-dir"),
// or "[cache] dir (default)", so the agent's message can name the line too.
//
// Thread safety: all functions are reentrant; configs are plain values.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "roles/rules.h"
#include "util/status.h"

namespace goldcache::agent {

using roles::ParseRole;
using roles::Role;
using roles::RoleName;
using roles::Rule;
using roles::RuleSet;

// Where each value came from, by key, as a message prefix (see Where()).
using KeyOrigins = std::map<std::string, std::string, std::less<>>;

// When a nonpersistent desktop's overlay is discarded.
enum class OverlayReset {
  kOnLastClose,  // when its last open handle closes: the VM shut down
  kManual,       // only by `goldcache reset PATH`
};
// "on-last-close", "manual": the words of the config file and --reset.
const char* OverlayResetName(OverlayReset reset);

struct DatastoreConfig {
  std::string name;         // label for the CLI, /stats and logs
  std::string source;       // absolute directory (a kernel NFS mount) or nfs:// URL
  std::string mountpoint;   // where the agent mounts this datastore's view
  std::vector<Rule> rules;  // in order; the first match wins
  // nfs:// datastores (backing::NfsOptions): how long one datastore request
  // may take before the read fails with EIO (docs/design.md §4, contract 6), and how many
  // connections (requests in flight) the agent keeps to the filer. Per
  // datastore, since each is usually its own filer. Kept, but unused, for a
  // directory source: there the kernel's NFS mount options decide.
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};
  unsigned connections = 4;

  // Keys: "name", "source", "mountpoint", "timeout", "connections", "rules".
  KeyOrigins origins;
  std::string Where(std::string_view key) const;
};

struct AgentConfig {
  struct Cache {
    std::string dir;
    uint64_t size = 10ull << 30;
    uint64_t chunk_size = 1ull << 20;
    // Off: nothing is cached, every read of a template or a desktop's base
    // goes to the datastore (the "no goldcache" baseline of bench/storm).
    bool read_cache = true;
    // A generation whose ctime or mtime is younger than this may still be
    // being written (an in-place rewrite keeps the mtime it got when the
    // write started): it is served uncached and bypasses the page cache.
    std::chrono::milliseconds settle{std::chrono::seconds(10)};
  } cache;
  struct Overlay {
    uint64_t ram_per_desktop = 256ull << 20;
    uint64_t ram_host = 4ull << 30;
    OverlayReset reset = OverlayReset::kOnLastClose;
  } overlay;
  std::vector<DatastoreConfig> datastores;  // at least one once loaded
  struct Stats {
    std::string listen = "127.0.0.1:9477";
    bool allow_non_loopback = false;
  } stats;
  struct Control {
    std::string socket = "/run/goldcache/goldcached.sock";  // = kDefaultControlSocket
    std::optional<std::string> group;                       // a group name, or a number (gid)
  } control;
  struct Logging {
    std::string level = "info";  // trace, debug, info, warn, error
  } logging;

  // The config file, or "" when the config came from the command line alone.
  std::string file;
  // Keys: "cache.dir", "cache.size", "cache.chunk_size", "cache.read_cache", "cache.settle",
  // "overlay.ram_per_desktop", "overlay.ram_host", "overlay.reset",
  // "stats.listen", "stats.allow_non_loopback", "control.socket",
  // "control.group", "logging.level".
  KeyOrigins origins;
  // "FILE:LINE:COL: [cache] dir", "--cache-dir" or "[cache] dir (default)".
  std::string Where(std::string_view key) const;
};

// Reads and validates the file at `path`. Errors: kInvalidArgument as
// described above; kNotFound / kOsError naming the path when it cannot be read.
Result<AgentConfig> LoadConfig(const std::string& path);

// Validates `text`; `origin` is the file name used in messages and in
// AgentConfig::file. Does not touch the file system (see CheckConfigOnHost).
Result<AgentConfig> ParseConfig(std::string_view text, const std::string& origin);

// goldcached's command-line flags; each is set only when given on the command
// line. The strings are exactly what the operator typed.
struct FlagOverrides {
  std::optional<std::string> datastore;              // --datastore
  std::optional<std::string> mountpoint;             // --mountpoint
  std::optional<std::string> cache_dir;              // --cache-dir
  std::optional<std::string> cache_size;             // --cache-size
  std::optional<std::string> chunk_size;             // --chunk-size
  std::optional<std::string> read_cache;             // --read-cache on|off
  std::optional<std::string> settle;                 // --settle
  std::vector<Rule> rules;                           // --template/--nonpersistent, in order
  std::optional<std::string> overlay_ram;            // --overlay-ram
  std::optional<std::string> overlay_ram_host;       // --overlay-ram-host
  std::optional<std::string> reset;                  // --reset
  std::optional<std::string> datastore_timeout;      // --datastore-timeout
  std::optional<std::string> datastore_connections;  // --datastore-connections
  std::optional<std::string> stats_listen;           // --stats-listen
  std::optional<bool> stats_allow_non_loopback;      // --stats-allow-non-loopback
  std::optional<std::string> control_socket;         // --control-socket
  std::optional<std::string> control_group;          // --control-group
  std::optional<std::string> log_level;              // --log-level
};

// The config of `goldcached` run without --config: defaults plus flags.
// --datastore, --mountpoint and --cache-dir are required; the datastore is
// named after the mountpoint's last component. Relative paths are allowed
// (they mean the current directory, as on any command line).
// Errors: kInvalidArgument, one line per problem, each naming the flag.
Result<AgentConfig> ConfigFromFlags(const FlagOverrides& flags);

// Flags given on the command line replace the file's values, and Where()
// then names the flag. --datastore, --mountpoint, --datastore-timeout,
// --datastore-connections and --template/--nonpersistent (the rules,
// replaced as a whole) change the
// config's only datastore; with several datastores in the file they are an
// error, since they could not say which one they mean. The result is
// validated again as a whole (e.g. --chunk-size against [cache] size).
// On error `config` may be partly changed.
Status ApplyFlags(AgentConfig& config, const FlagOverrides& flags);

// The control group's gid; nullopt when no group is configured.
// Errors: kInvalidArgument, at Where("control.group"), for an unknown group.
Result<std::optional<gid_t>> ResolveControlGroup(const AgentConfig& config);

// The checks `goldcached --check-config` adds to parsing, against this host:
// every local datastore source is an existing directory, a mountpoint or the
// cache dir that exists is a directory, the control group exists. Missing
// mountpoints and cache dir are fine (the agent creates them). Each problem
// is one line naming its Where().
Status CheckConfigOnHost(const AgentConfig& config);

}  // namespace goldcache::agent
