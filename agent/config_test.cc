#include "agent/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>

namespace goldcache::agent {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kFile[] = "/etc/goldcache/goldcache.toml";

// The lines joined, so that line N of the file is the N-th string.
std::string Lines(std::initializer_list<std::string> lines) {
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  return text;
}

// A small valid config; tests append to it or replace lines of it.
std::vector<std::string> BaseLines() {
  return {
      "[cache]",                              // 1
      "dir = \"/var/lib/goldcache\"",         // 2
      "",                                     // 3
      "[[datastore]]",                        // 4
      "name = \"ds1\"",                       // 5
      "source = \"/mnt/nfs/ds1\"",            // 6
      "mountpoint = \"/run/goldcache/ds1\"",  // 7
      "",                                     // 8
      "[[datastore.rule]]",                   // 9
      "match = \"templates/**\"",             // 10
      "role = \"template\"",                  // 11
  };
}

std::string Join(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  return text;
}

// Base config with line `n` (1-based) replaced by `line`.
std::string BaseWith(size_t n, const std::string& line) {
  auto lines = BaseLines();
  lines.at(n - 1) = line;
  return Join(lines);
}

// Base config with `more` appended (its first line is line 12).
std::string BasePlus(std::initializer_list<std::string> more) {
  auto lines = BaseLines();
  lines.insert(lines.end(), more);
  return Join(lines);
}

// The message of a config that must fail to parse.
std::string ErrorOf(const std::string& text) {
  auto config = ParseConfig(text, kFile);
  EXPECT_FALSE(config.ok()) << "parsed, but should not have:\n" << text;
  if (config.ok()) return "";
  EXPECT_EQ(config.status().code(), Code::kInvalidArgument);
  return config.status().message();
}

AgentConfig MustParse(const std::string& text) {
  auto config = ParseConfig(text, kFile);
  EXPECT_TRUE(config.ok()) << config.status().ToString() << "\n" << text;
  return config.ok() ? *config : AgentConfig();
}

std::string At(int line) { return std::string(kFile) + ":" + std::to_string(line) + ":"; }

TEST(ConfigTest, ReadsEveryKeyOfAFullConfig) {
  const std::string text = Lines({
      "# comment",                             // 1
      "[cache]",                               // 2
      "dir = \"/srv/ssd/goldcache\"",          // 3
      "size = \"200GiB\"",                     // 4
      "chunk_size = \"256KiB\"",               // 5
      "[overlay]",                             // 6
      "ram_per_desktop = \"64MiB\"",           // 7
      "ram_host = \"8GiB\"",                   // 8
      "reset = \"manual\"",                    // 9
      "[[datastore]]",                         // 10
      "name = \"ds1\"",                        // 11
      "source = \"/mnt/nfs/ds1\"",             // 12
      "mountpoint = \"/run/goldcache/ds1\"",   // 13
      "timeout = \"1m30s\"",                   // 14
      "[[datastore.rule]]",                    // 15
      "match = \"templates/scratch/**\"",      // 16
      "role = \"passthrough\"",                // 17
      "[[datastore.rule]]",                    // 18
      "match = \"templates/**\"",              // 19
      "role = \"template\"",                   // 20
      "[[datastore.rule]]",                    // 21
      "match = \"pool/**\"",                   // 22
      "role = \"nonpersistent\"",              // 23
      "[[datastore]]",                         // 24
      "name = \"ds2\"",                        // 25
      "source = \"nfs://filer/export/ds2\"",   // 26
      "mountpoint = \"/run/goldcache/ds2\"",   // 27
      "[stats]",                               // 28
      "listen = \"0.0.0.0:9100\"",             // 29
      "allow_non_loopback = true",             // 30
      "[control]",                             // 31
      "socket = \"/run/goldcache/ctl.sock\"",  // 32
      "group = \"vdi-admins\"",                // 33
      "[logging]",                             // 34
      "level = \"debug\"",                     // 35
  });
  AgentConfig c = MustParse(text);
  EXPECT_EQ(c.file, kFile);
  EXPECT_EQ(c.cache.dir, "/srv/ssd/goldcache");
  EXPECT_EQ(c.cache.size, 200ull << 30);
  EXPECT_EQ(c.cache.chunk_size, 256u << 10);
  EXPECT_EQ(c.overlay.ram_per_desktop, 64u << 20);
  EXPECT_EQ(c.overlay.ram_host, 8ull << 30);
  EXPECT_EQ(c.overlay.reset, OverlayReset::kManual);
  ASSERT_EQ(c.datastores.size(), 2u);
  const DatastoreConfig& d1 = c.datastores[0];
  EXPECT_EQ(d1.name, "ds1");
  EXPECT_EQ(d1.source, "/mnt/nfs/ds1");
  EXPECT_EQ(d1.mountpoint, "/run/goldcache/ds1");
  EXPECT_EQ(d1.timeout, std::chrono::seconds(90));
  ASSERT_EQ(d1.rules.size(), 3u);
  EXPECT_EQ(d1.rules[0].glob, "templates/scratch/**");
  EXPECT_EQ(d1.rules[0].role, Role::kPassthrough);
  EXPECT_EQ(d1.rules[1].glob, "templates/**");
  EXPECT_EQ(d1.rules[1].role, Role::kTemplate);
  EXPECT_EQ(d1.rules[2].glob, "pool/**");
  EXPECT_EQ(d1.rules[2].role, Role::kNonpersistent);
  const DatastoreConfig& d2 = c.datastores[1];
  EXPECT_EQ(d2.name, "ds2");
  EXPECT_EQ(d2.source, "nfs://filer/export/ds2");
  EXPECT_EQ(d2.timeout, std::chrono::seconds(30));
  EXPECT_TRUE(d2.rules.empty());
  EXPECT_EQ(c.stats.listen, "0.0.0.0:9100");
  EXPECT_TRUE(c.stats.allow_non_loopback);
  EXPECT_EQ(c.control.socket, "/run/goldcache/ctl.sock");
  EXPECT_EQ(c.control.group, "vdi-admins");
  EXPECT_EQ(c.logging.level, "debug");

  // Where each value came from, for messages the agent writes later.
  EXPECT_EQ(c.Where("cache.dir"), At(3) + "1: [cache] dir");
  EXPECT_EQ(c.Where("cache.size"), At(4) + "1: [cache] size");
  EXPECT_EQ(d1.Where("source"), At(12) + "1: [[datastore]] source");
  EXPECT_EQ(d2.Where("mountpoint"), At(27) + "1: [[datastore]] mountpoint");
  EXPECT_EQ(d1.Where("rules"), At(15) + "1: [[datastore.rule]]");
  EXPECT_EQ(d2.Where("timeout"), "[[datastore]] timeout (default)");
}

TEST(ConfigTest, ReadsNfsDatastoreSettings) {
  AgentConfig c =
      MustParse(BaseWith(8, "timeout = \"45s\"\nconnections = 8"));  // line 9 is now connections
  EXPECT_EQ(c.datastores[0].timeout, std::chrono::seconds(45));
  EXPECT_EQ(c.datastores[0].connections, 8u);
  EXPECT_EQ(c.datastores[0].Where("connections"), At(9) + "1: [[datastore]] connections");
  EXPECT_THAT(ErrorOf(BaseWith(8, "connections = 0")),
              AllOf(StartsWith(At(8) + "1: [[datastore]] connections: "), HasSubstr("1 to 64")));
  EXPECT_THAT(
      ErrorOf(BaseWith(8, "connections = \"4\"")),
      AllOf(StartsWith(At(8) + "1: [[datastore]] connections: "), HasSubstr("not a string")));
}

TEST(ConfigTest, OmittedKeysTakeTheAgentsDefaults) {
  AgentConfig c = MustParse(Join(BaseLines()));
  EXPECT_EQ(c.cache.size, 10ull << 30);
  EXPECT_EQ(c.cache.chunk_size, 1u << 20);
  EXPECT_TRUE(c.cache.read_cache);
  EXPECT_EQ(c.cache.settle, std::chrono::seconds(10));
  EXPECT_EQ(c.overlay.ram_per_desktop, 256u << 20);
  EXPECT_EQ(c.overlay.ram_host, 4ull << 30);
  EXPECT_EQ(c.overlay.reset, OverlayReset::kOnLastClose);
  EXPECT_EQ(c.stats.listen, "127.0.0.1:9477");
  EXPECT_FALSE(c.stats.allow_non_loopback);
  EXPECT_EQ(c.control.socket, "/run/goldcache/goldcached.sock");
  EXPECT_FALSE(c.control.group.has_value());
  EXPECT_EQ(c.logging.level, "info");
  ASSERT_EQ(c.datastores.size(), 1u);
  EXPECT_EQ(c.datastores[0].timeout, std::chrono::seconds(30));
  EXPECT_EQ(c.datastores[0].connections, 4u);
  EXPECT_EQ(c.Where("cache.size"), "[cache] size (default)");
}

TEST(ConfigTest, ShippedDefaultConfigIsValid) {
  auto c = LoadConfig(GOLDCACHE_DEFAULT_CONFIG);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->cache.dir, "/var/lib/goldcache");
  ASSERT_EQ(c->datastores.size(), 1u);
  EXPECT_EQ(c->datastores[0].mountpoint, "/run/goldcache/ds1");
  EXPECT_EQ(c->datastores[0].rules.size(), 2u);
  // The file states the defaults: the same values as a config without them.
  AgentConfig defaults = MustParse(Join(BaseLines()));
  EXPECT_EQ(c->cache.size, defaults.cache.size);
  EXPECT_EQ(c->cache.chunk_size, defaults.cache.chunk_size);
  EXPECT_EQ(c->cache.settle, defaults.cache.settle);
  EXPECT_EQ(c->cache.read_cache, defaults.cache.read_cache);
  EXPECT_EQ(c->overlay.ram_per_desktop, defaults.overlay.ram_per_desktop);
  EXPECT_EQ(c->overlay.ram_host, defaults.overlay.ram_host);
  EXPECT_EQ(c->overlay.reset, defaults.overlay.reset);
  EXPECT_EQ(c->stats.listen, defaults.stats.listen);
  EXPECT_EQ(c->control.socket, defaults.control.socket);
  EXPECT_EQ(c->logging.level, defaults.logging.level);
  EXPECT_EQ(c->datastores[0].timeout, defaults.datastores[0].timeout);
  EXPECT_EQ(c->datastores[0].connections, defaults.datastores[0].connections);
}

TEST(ConfigTest, SyntaxErrorNamesFileLineAndColumn) {
  std::string msg = ErrorOf(BaseWith(6, "source = \"/mnt/nfs/ds1"));
  EXPECT_THAT(msg, AllOf(StartsWith(At(6)), HasSubstr("TOML syntax error")));
}

TEST(ConfigTest, UnknownKeyIsRejectedWithASuggestion) {
  std::string msg = ErrorOf(BaseWith(3, "sise = \"1GiB\""));
  EXPECT_THAT(msg, AllOf(StartsWith(At(3) + "1: [cache] sise: unknown key"),
                         HasSubstr("did you mean size?")));
}

TEST(ConfigTest, UnknownKeyInADatastoreIsRejected) {
  std::string msg = ErrorOf(BaseWith(8, "mountpiont = \"/run/x\""));
  EXPECT_THAT(msg, AllOf(StartsWith(At(8)), HasSubstr("[[datastore]] mountpiont: unknown key"),
                         HasSubstr("did you mean mountpoint?")));
}

TEST(ConfigTest, UnknownTableIsRejected) {
  std::string msg = ErrorOf(BasePlus({"[statistics]", "listen = \"127.0.0.1:1\""}));
  EXPECT_THAT(
      msg, AllOf(StartsWith(At(12)), HasSubstr("[statistics]: unknown table"), HasSubstr("stats")));
}

TEST(ConfigTest, KeyOutsideAnyTableIsRejected) {
  std::string text = "size = \"1GiB\"\n" + Join(BaseLines());
  EXPECT_THAT(ErrorOf(text), AllOf(StartsWith(At(1) + "1: size:"), HasSubstr("outside any table")));
}

TEST(ConfigTest, BadSizeNamesTheKeyAndTheValue) {
  std::string msg = ErrorOf(BaseWith(3, "size = \"200GB2\""));
  EXPECT_THAT(msg, AllOf(StartsWith(At(3) + "1: [cache] size: "), HasSubstr("\"200GB2\""),
                         HasSubstr("200GiB")));
}

TEST(ConfigTest, BadDurationNamesTheKey) {
  std::string msg = ErrorOf(BaseWith(8, "timeout = \"30 seconds\""));
  EXPECT_THAT(msg,
              AllOf(StartsWith(At(8) + "1: [[datastore]] timeout: "), HasSubstr("\"30 seconds\"")));
}

TEST(ConfigTest, BadRoleNamesTheKey) {
  std::string msg = ErrorOf(BaseWith(11, "role = \"golden\""));
  EXPECT_THAT(msg, AllOf(StartsWith(At(11) + "1: [[datastore.rule]] role: "),
                         HasSubstr("\"golden\""), HasSubstr("template, nonpersistent")));
}

TEST(ConfigTest, BadGlobNamesTheKey) {
  std::string msg = ErrorOf(BaseWith(10, "match = \"templates/[abc\""));
  EXPECT_THAT(msg, AllOf(StartsWith(At(10) + "1: [[datastore.rule]] match: "),
                         HasSubstr("templates/[abc")));
}

TEST(ConfigTest, RuleWithoutRoleIsRejectedAtItsTable) {
  std::string msg = ErrorOf(BaseWith(11, ""));
  EXPECT_THAT(msg, AllOf(StartsWith(At(9)), HasSubstr("[[datastore.rule]] role: missing")));
}

TEST(ConfigTest, DuplicateMountpointNamesBothLines) {
  std::string msg = ErrorOf(BasePlus({
      "[[datastore]]",                         // 12
      "name = \"ds2\"",                        // 13
      "source = \"/mnt/nfs/ds2\"",             // 14
      "mountpoint = \"/run/goldcache/ds1/\"",  // 15
  }));
  EXPECT_THAT(msg, AllOf(StartsWith(At(15) + "1: [[datastore]] mountpoint: "),
                         HasSubstr("also the mountpoint of datastore \"ds1\""), HasSubstr(At(7))));
}

TEST(ConfigTest, NestedMountpointsAreRejected) {
  std::string msg =
      ErrorOf(BasePlus({"[[datastore]]", "name = \"ds2\"", "source = \"/mnt/nfs/ds2\"",
                        "mountpoint = \"/run/goldcache/ds1/inner\""}));
  EXPECT_THAT(msg, AllOf(StartsWith(At(15)), HasSubstr("nested")));
}

TEST(ConfigTest, DuplicateNameIsRejected) {
  std::string msg =
      ErrorOf(BasePlus({"[[datastore]]", "name = \"ds1\"", "source = \"/mnt/nfs/ds2\"",
                        "mountpoint = \"/run/goldcache/ds2\""}));
  EXPECT_THAT(msg, AllOf(StartsWith(At(13) + "1: [[datastore]] name: "), HasSubstr("unique"),
                         HasSubstr(At(5))));
}

TEST(ConfigTest, MountpointInsideTheDatastoreIsRejected) {
  std::string msg = ErrorOf(BaseWith(7, "mountpoint = \"/mnt/nfs/ds1/view\""));
  EXPECT_THAT(
      msg, AllOf(StartsWith(At(7) + "1: [[datastore]] mountpoint: "), HasSubstr("its own mount")));
}

TEST(ConfigTest, NoDatastoreIsRejected) {
  std::string msg = ErrorOf(Lines({"[cache]", "dir = \"/var/lib/goldcache\""}));
  EXPECT_THAT(msg, AllOf(StartsWith(kFile), HasSubstr("no [[datastore]]")));
}

TEST(ConfigTest, DatastoreWithoutSourceIsRejectedAtItsTable) {
  std::string msg = ErrorOf(BaseWith(6, ""));
  EXPECT_THAT(msg, AllOf(StartsWith(At(4)), HasSubstr("[[datastore]] source: missing")));
}

TEST(ConfigTest, SingleDatastoreTableIsRejectedWithTheRightSpelling) {
  std::string msg = ErrorOf(BaseWith(4, "[datastore]"));
  EXPECT_THAT(msg, AllOf(HasSubstr(kFile), HasSubstr("[[datastore]]"),
                         HasSubstr("a single [datastore] table")));
}

TEST(ConfigTest, MissingCacheDirIsRejected) {
  std::string msg = ErrorOf(BaseWith(2, ""));
  EXPECT_THAT(msg, AllOf(StartsWith(At(1)), HasSubstr("[cache] dir: missing")));
}

TEST(ConfigTest, WrongTypesAreRejected) {
  EXPECT_THAT(ErrorOf(BasePlus({"[stats]", "allow_non_loopback = \"yes\""})),
              AllOf(StartsWith(At(13) + "1: [stats] allow_non_loopback: "),
                    HasSubstr("expected true or false, not a string")));
  EXPECT_THAT(ErrorOf(BaseWith(3, "size = 1073741824")),
              AllOf(StartsWith(At(3) + "1: [cache] size: "), HasSubstr("not an integer")));
  EXPECT_THAT(ErrorOf(BaseWith(5, "name = 1")),
              AllOf(StartsWith(At(5) + "1: [[datastore]] name: "), HasSubstr("not an integer")));
  EXPECT_THAT(ErrorOf("overlay = 3\n" + Join(BaseLines())),
              AllOf(StartsWith(At(1)), HasSubstr("[overlay]: expected a table")));
}

TEST(ConfigTest, ChunkSizeMustBeAMultipleOf4KiBUpTo64MiB) {
  EXPECT_THAT(ErrorOf(BaseWith(3, "chunk_size = \"6000\"")),
              AllOf(StartsWith(At(3) + "1: [cache] chunk_size: "), HasSubstr("multiple of 4KiB")));
  EXPECT_THAT(ErrorOf(BaseWith(3, "chunk_size = \"128MiB\"")),
              AllOf(StartsWith(At(3)), HasSubstr("64MiB")));
  EXPECT_EQ(MustParse(BaseWith(3, "chunk_size = \"64MiB\"")).cache.chunk_size, 64u << 20);
}

TEST(ConfigTest, CacheMustHoldTwoChunks) {
  EXPECT_THAT(ErrorOf(BaseWith(3, "size = \"1MiB\"")),
              AllOf(StartsWith(At(3) + "1: [cache] size: "), HasSubstr("two chunks")));
}

TEST(ConfigTest, ListenMustBeHostColonPort) {
  EXPECT_THAT(ErrorOf(BasePlus({"[stats]", "listen = \"127.0.0.1\""})),
              AllOf(StartsWith(At(13) + "1: [stats] listen: "), HasSubstr("HOST:PORT")));
  EXPECT_THAT(ErrorOf(BasePlus({"[stats]", "listen = \"127.0.0.1:99999\""})),
              HasSubstr("above 65535"));
  EXPECT_EQ(MustParse(BasePlus({"[stats]", "listen = \"[::1]:9477\""})).stats.listen, "[::1]:9477");
}

TEST(ConfigTest, NonLoopbackListenNeedsTheExplicitSetting) {
  EXPECT_THAT(ErrorOf(BasePlus({"[stats]", "listen = \"0.0.0.0:9477\""})),
              AllOf(StartsWith(At(13) + "1: [stats] listen: "), HasSubstr("allow_non_loopback")));
  EXPECT_TRUE(
      MustParse(BasePlus({"[stats]", "listen = \"0.0.0.0:9477\"", "allow_non_loopback = true"}))
          .stats.allow_non_loopback);
}

TEST(ConfigTest, PathsInTheFileMustBeAbsolute) {
  EXPECT_THAT(ErrorOf(BaseWith(2, "dir = \"var/lib/goldcache\"")),
              AllOf(StartsWith(At(2) + "1: [cache] dir: "), HasSubstr("not an absolute path")));
  EXPECT_THAT(ErrorOf(BaseWith(6, "source = \"ftp://filer/ds1\"")),
              AllOf(StartsWith(At(6)), HasSubstr("nfs://")));
}

TEST(ConfigTest, BadValuesOfOtherKeysAreRejected) {
  EXPECT_THAT(ErrorOf(BasePlus({"[overlay]", "reset = \"on-boot\""})),
              AllOf(StartsWith(At(13) + "1: [overlay] reset: "), HasSubstr("on-last-close")));
  EXPECT_THAT(ErrorOf(BasePlus({"[logging]", "level = \"verbose\""})),
              AllOf(StartsWith(At(13) + "1: [logging] level: "), HasSubstr("\"verbose\"")));
  EXPECT_THAT(ErrorOf(BaseWith(5, "name = \"ds 1\"")),
              AllOf(StartsWith(At(5) + "1: [[datastore]] name: ")));
  EXPECT_THAT(ErrorOf(BasePlus({"[control]", "group = \"a b\""})),
              AllOf(StartsWith(At(13) + "1: [control] group: ")));
  EXPECT_THAT(ErrorOf(BasePlus({"[control]", "socket = \"/" + std::string(120, 's') + "\""})),
              AllOf(StartsWith(At(13) + "1: [control] socket: "), HasSubstr("too long")));
}

TEST(ConfigTest, EveryProblemIsReportedOneALineInFileOrder) {
  std::string text = BaseWith(3, "size = \"lots\"");
  text += "[logging]\nlevel = \"loud\"\n";
  std::string all = ErrorOf(text);
  auto first = all.find(At(3));
  auto second = all.find(At(13));
  ASSERT_NE(first, std::string::npos) << all;
  ASSERT_NE(second, std::string::npos) << all;
  EXPECT_LT(first, second);
  EXPECT_EQ(std::count(all.begin(), all.end(), '\n'), 1) << all;
}

TEST(ConfigTest, LoadConfigNamesAMissingFile) {
  auto c = LoadConfig("/nonexistent/goldcache.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("/nonexistent/goldcache.toml"));
}

TEST(ConfigTest, LoadConfigNamesTheFileInErrors) {
  std::string path = ::testing::TempDir() + "/config_test_" + std::to_string(getpid()) + ".toml";
  {
    std::ofstream out(path);
    out << BaseWith(3, "size = \"200GB2\"");
  }
  auto c = LoadConfig(path);
  std::filesystem::remove(path);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), StartsWith(path + ":3:1: [cache] size: "));
}

// --- The command line -------------------------------------------------------

FlagOverrides MinimalFlags() {
  FlagOverrides f;
  f.datastore = "/srv/ds1";
  f.mountpoint = "/run/goldcache/ds1";
  f.cache_dir = "/var/cache/gc";
  return f;
}

TEST(ConfigFlagsTest, CommandLineAloneMakesOneDatastore) {
  FlagOverrides f = MinimalFlags();
  f.cache_size = "2GiB";
  f.rules = {{"templates/**", Role::kTemplate}, {"pool/**", Role::kNonpersistent}};
  auto c = ConfigFromFlags(f);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->file.empty());
  ASSERT_EQ(c->datastores.size(), 1u);
  EXPECT_EQ(c->datastores[0].name, "ds1");
  EXPECT_EQ(c->datastores[0].source, "/srv/ds1");
  EXPECT_EQ(c->datastores[0].rules.size(), 2u);
  EXPECT_EQ(c->cache.size, 2ull << 30);
  EXPECT_EQ(c->cache.chunk_size, 1u << 20);
  EXPECT_EQ(c->Where("cache.size"), "--cache-size");
  EXPECT_EQ(c->Where("cache.chunk_size"), "--chunk-size (default)");
  EXPECT_EQ(c->datastores[0].Where("source"), "--datastore");
}

TEST(ConfigFlagsTest, CommandLineAloneNeedsDatastoreMountpointAndCacheDir) {
  auto c = ConfigFromFlags(FlagOverrides{});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(),
              AllOf(HasSubstr("--datastore: required"), HasSubstr("--mountpoint: required"),
                    HasSubstr("--cache-dir: required")));
}

TEST(ConfigFlagsTest, BadFlagValuesNameTheFlag) {
  FlagOverrides f = MinimalFlags();
  f.cache_size = "10 gigs";
  f.chunk_size = "3000";
  f.datastore_connections = "many";
  f.rules = {{"pool/[x", Role::kNonpersistent}};
  auto c = ConfigFromFlags(f);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), AllOf(HasSubstr("--cache-size: "), HasSubstr("--chunk-size: "),
                                          HasSubstr("--nonpersistent: ")));
}

TEST(ConfigFlagsTest, FlagsReplaceFileValues) {
  AgentConfig c = MustParse(BaseWith(3, "size = \"100GiB\""));
  FlagOverrides f;
  f.cache_size = "50GiB";
  f.log_level = "debug";
  f.mountpoint = "/run/goldcache/other";
  f.rules = {{"gold/**", Role::kTemplate}};
  f.datastore_connections = "16";
  ASSERT_TRUE(ApplyFlags(c, f).ok());
  EXPECT_EQ(c.datastores[0].connections, 16u);
  EXPECT_EQ(c.datastores[0].Where("connections"), "--datastore-connections");
  EXPECT_EQ(c.cache.size, 50ull << 30);
  EXPECT_EQ(c.Where("cache.size"), "--cache-size");
  EXPECT_EQ(c.logging.level, "debug");
  EXPECT_EQ(c.datastores[0].mountpoint, "/run/goldcache/other");
  EXPECT_EQ(c.datastores[0].source, "/mnt/nfs/ds1");  // not given: the file's
  ASSERT_EQ(c.datastores[0].rules.size(), 1u);
  EXPECT_EQ(c.datastores[0].rules[0].glob, "gold/**");
  EXPECT_EQ(c.Where("cache.dir"), At(2) + "1: [cache] dir");
}

TEST(ConfigTest, ReadCacheAndSettleAreRead) {
  AgentConfig c = MustParse(BaseWith(3, "read_cache = false"));
  EXPECT_FALSE(c.cache.read_cache);
  c = MustParse(BaseWith(3, "settle = \"2s\""));
  EXPECT_EQ(c.cache.settle, std::chrono::seconds(2));
  EXPECT_THAT(ErrorOf(BaseWith(3, "read_cache = \"off\"")), HasSubstr("[cache] read_cache: "));
  EXPECT_THAT(ErrorOf(BaseWith(3, "settle = \"soon\"")), HasSubstr("[cache] settle: "));
}

TEST(ConfigFlagsTest, ReadCacheFlagTakesOnOrOff) {
  FlagOverrides f = MinimalFlags();
  f.read_cache = "off";
  f.settle = "0s";
  auto c = ConfigFromFlags(f);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_FALSE(c->cache.read_cache);
  EXPECT_EQ(c->cache.settle.count(), 0);
  EXPECT_EQ(c->Where("cache.read_cache"), "--read-cache");
  f.read_cache = "no";
  c = ConfigFromFlags(f);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("--read-cache: "));
}

TEST(ConfigFlagsTest, FlagsAreCheckedAgainstTheFile) {
  AgentConfig c = MustParse(BaseWith(3, "size = \"4MiB\""));
  FlagOverrides f;
  f.chunk_size = "4MiB";
  Status st = ApplyFlags(c, f);
  EXPECT_THAT(st.message(), AllOf(StartsWith(At(3) + "1: [cache] size: "),
                                  HasSubstr("--chunk-size"), HasSubstr("two chunks")));
}

TEST(ConfigFlagsTest, DatastoreFlagsCannotChooseAmongSeveralDatastores) {
  AgentConfig c =
      MustParse(BasePlus({"[[datastore]]", "name = \"ds2\"", "source = \"/mnt/nfs/ds2\"",
                          "mountpoint = \"/run/goldcache/ds2\""}));
  FlagOverrides f;
  f.datastore = "/mnt/nfs/ds3";
  Status st = ApplyFlags(c, f);
  EXPECT_THAT(st.message(), AllOf(StartsWith("--datastore: "), HasSubstr(kFile),
                                  HasSubstr("2 datastores (ds1, ds2)")));
  FlagOverrides rules;
  rules.rules = {{"x/**", Role::kTemplate}};
  EXPECT_THAT(ApplyFlags(c, rules).message(), StartsWith("--template/--nonpersistent: "));
}

// --- Against this host ------------------------------------------------------

TEST(ConfigHostTest, MissingDatastoreDirectoryNamesItsLine) {
  AgentConfig c = MustParse(BaseWith(6, "source = \"/nonexistent/goldcache-test/ds1\""));
  Status st = CheckConfigOnHost(c);
  EXPECT_THAT(st.message(),
              AllOf(StartsWith(At(6) + "1: [[datastore]] source: "),
                    HasSubstr("/nonexistent/goldcache-test/ds1"), HasSubstr("No such file")));
}

TEST(ConfigHostTest, ExistingDirectoriesPass) {
  std::string dir = ::testing::TempDir();
  AgentConfig c =
      MustParse(Lines({"[cache]", "dir = \"/nonexistent/cache\"", "[[datastore]]", "name = \"t\"",
                       "source = \"" + dir + "\"", "mountpoint = \"/nonexistent/mnt\""}));
  EXPECT_TRUE(CheckConfigOnHost(c).ok()) << CheckConfigOnHost(c).ToString();
}

TEST(ConfigHostTest, ControlGroupIsResolved) {
  AgentConfig c = MustParse(BasePlus({"[control]", "group = \"root\""}));
  auto gid = ResolveControlGroup(c);
  ASSERT_TRUE(gid.ok()) << gid.status().ToString();
  EXPECT_EQ(*gid, std::optional<gid_t>(0));

  c = MustParse(BasePlus({"[control]", "group = \"no-such-group-gc\""}));
  auto missing = ResolveControlGroup(c);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(),
              AllOf(StartsWith(At(13) + "1: [control] group: "), HasSubstr("does not exist")));

  EXPECT_EQ(*ResolveControlGroup(MustParse(Join(BaseLines()))), std::nullopt);
}

}  // namespace
}  // namespace goldcache::agent
