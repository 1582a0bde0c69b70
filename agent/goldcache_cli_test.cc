// Runs the real `goldcache` binary against an in-process ControlServer whose
// handler plays the agent.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "agent/control_client.h"
#include "agent/control_server.h"

namespace goldcache::agent {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

struct CliRun {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class GoldcacheCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gc-cli-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    server_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string SocketPath() const { return dir_ + "/goldcached.sock"; }

  // Serves `answer` for every command and records the requests.
  void StartAgent(ControlServer::Handler answer) {
    ControlOptions opts;
    opts.socket_path = SocketPath();
    auto server = ControlServer::Start(
        opts, [this, answer = std::move(answer)](const json& request, const Progress& progress) {
          {
            std::lock_guard<std::mutex> lock(mu_);
            requests_.push_back(request);
          }
          return answer(request, progress);
        });
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
  }

  // Runs goldcache with `args`; --socket is added unless `env` sets
  // GOLDCACHE_SOCKET. stdin is /dev/null and stdout/stderr are files, so the
  // CLI sees no terminal.
  CliRun Run(std::vector<std::string> args, const std::vector<std::string>& env = {}) {
    bool socket_from_env = false;
    for (const std::string& e : env) socket_from_env |= e.rfind("GOLDCACHE_SOCKET=", 0) == 0;
    std::vector<std::string> argv = {GOLDCACHE_CLI_PATH};
    if (!socket_from_env) {
      argv.push_back("--socket");
      argv.push_back(SocketPath());
    }
    argv.insert(argv.end(), args.begin(), args.end());
    std::string out_path = dir_ + "/stdout", err_path = dir_ + "/stderr";
    pid_t pid = fork();
    if (pid == 0) {
      int in = open("/dev/null", O_RDONLY);
      int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(in, 0);
      dup2(out, 1);
      dup2(err, 2);
      unsetenv("GOLDCACHE_SOCKET");
      for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
      std::vector<char*> cargv;
      for (std::string& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      execv(cargv[0], cargv.data());
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CliRun run;
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    run.out = ReadFile(out_path);
    run.err = ReadFile(err_path);
    return run;
  }

  json LastRequest() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_.empty() ? json() : requests_.back();
  }

  std::string dir_;
  std::unique_ptr<ControlServer> server_;
  std::mutex mu_;
  std::vector<json> requests_;
};

const json kStatus = {
    {"agent", {{"version", "0.1.0"}, {"uptime_seconds", 3725}}},
    {"cache",
     {{"used_bytes", 1610612736}, {"capacity_bytes", 214748364800}, {"hit_ratio", 0.9321}}},
    {"datastores",
     {{{"name", "ds1"},
       {"mountpoint", "/run/goldcache/ds1"},
       {"templates", 2},
       {"read_only", false}},
      {{"name", "ds22"}, {"mountpoint", "/run/goldcache/ds22"}, {"templates", 14}}}},
};

TEST_F(GoldcacheCliTest, StatusIsReadableWithAlignedKeysAndTables) {
  StartAgent([](const json&, const Progress&) -> Result<json> { return kStatus; });
  CliRun run = Run({"status"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.err, "");
  EXPECT_EQ(run.out,
            "agent:\n"
            "  uptime_seconds: 3725\n"
            "  version:        0.1.0\n"
            "cache:\n"
            "  capacity_bytes: 200 GiB\n"
            "  hit_ratio:      93.2 %\n"
            "  used_bytes:     1.5 GiB\n"
            "datastores:\n"
            "  NAME  MOUNTPOINT           READ_ONLY  TEMPLATES\n"
            "  ds1   /run/goldcache/ds1   no                 2\n"
            "  ds22  /run/goldcache/ds22  -                 14\n");
  EXPECT_EQ(LastRequest(), (json{{"command", "status"}}));
}

TEST_F(GoldcacheCliTest, JsonPrintsTheAgentsAnswerAsIs) {
  StartAgent([](const json&, const Progress&) -> Result<json> { return kStatus; });
  for (auto args : {std::vector<std::string>{"--json", "stats"}, {"stats", "--json"}}) {
    CliRun run = Run(args);
    EXPECT_EQ(run.exit_code, 0) << run.err;
    EXPECT_EQ(json::parse(run.out), kStatus);
  }
  EXPECT_EQ(LastRequest(), (json{{"command", "stats"}}));
}

TEST_F(GoldcacheCliTest, NestedListsRenderAsBlocks) {
  StartAgent([](const json&, const Progress&) -> Result<json> {
    return json{{"datastores",
                 {{{"name", "ds1"},
                   {"desktops", json::array()},
                   {"templates", {{{"path", "templates/win11.img"}, {"cached_bytes", 1024}}}}}}}};
  });
  CliRun run = Run({"list"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out,
            "datastores:\n"
            "  - name:     ds1\n"
            "    desktops: (none)\n"
            "    templates:\n"
            "      PATH                 CACHED_BYTES\n"
            "      templates/win11.img         1 KiB\n");
}

TEST_F(GoldcacheCliTest, CommandsSendTheirArguments) {
  StartAgent([](const json&, const Progress&) -> Result<json> { return json::object(); });
  CliRun reset = Run({"reset", "/run/goldcache/ds1/pool/vm1.qcow2", "--force"});
  EXPECT_EQ(reset.exit_code, 0) << reset.err;
  EXPECT_EQ(reset.out, "ok\n");
  EXPECT_EQ(
      LastRequest(),
      (json{{"command", "reset"}, {"path", "/run/goldcache/ds1/pool/vm1.qcow2"}, {"force", true}}));

  ASSERT_EQ(Run({"evict", "/run/goldcache/ds1/templates/t.img"}).exit_code, 0);
  EXPECT_EQ(LastRequest(),
            (json{{"command", "evict"}, {"path", "/run/goldcache/ds1/templates/t.img"}}));

  ASSERT_EQ(
      Run({"warm", "/run/goldcache/ds1/templates/t.img", "--pin", "--rate", "100MiB/s"}).exit_code,
      0);
  EXPECT_EQ(LastRequest(), (json{{"command", "warm"},
                                 {"path", "/run/goldcache/ds1/templates/t.img"},
                                 {"pin", true},
                                 {"rate_bytes_per_second", 100 << 20}}));

  ASSERT_EQ(Run({"warm", "templates/../templates/t.img"}).exit_code, 0);
  EXPECT_EQ(LastRequest(),
            (json{{"command", "warm"},
                  {"path", (std::filesystem::current_path() / "templates/t.img").string()},
                  {"pin", false}}));

  ASSERT_EQ(Run({"warm", "--boot-set", "/run/goldcache/ds1/templates/t.img"}).exit_code, 0);
  EXPECT_EQ(LastRequest(), (json{{"command", "warm"},
                                 {"path", "/run/goldcache/ds1/templates/t.img"},
                                 {"pin", false},
                                 {"boot_set", true}}));

  ASSERT_EQ(Run({"publish", "/run/goldcache/ds1/templates/t.img"}).exit_code, 0);
  EXPECT_EQ(LastRequest(),
            (json{{"command", "publish"}, {"path", "/run/goldcache/ds1/templates/t.img"}}));

  for (const char* command : {"list", "check"}) {
    ASSERT_EQ(Run({command}).exit_code, 0);
    EXPECT_EQ(LastRequest(), (json{{"command", command}}));
  }
}

TEST_F(GoldcacheCliTest, WarmReportsEveryTenPercentWithoutATerminal) {
  StartAgent([](const json&, const Progress& progress) -> Result<json> {
    for (uint64_t done = 0; done <= 1000; done += 50) {
      (void)progress({{"done_bytes", done << 20}, {"total_bytes", 1000ull << 20}});
    }
    return json{{"warmed_bytes", 1000ull << 20}};
  });
  CliRun run = Run({"warm", "/run/goldcache/ds1/templates/t.img"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  std::vector<std::string> lines;
  std::istringstream in(run.err);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 11u) << run.err;
  EXPECT_EQ(lines[0], "warm: 0 % (0 B of 1000 MiB)");
  EXPECT_THAT(lines[5], ::testing::StartsWith("warm: 50 % (500 MiB of 1000 MiB"));
  EXPECT_THAT(lines[10], ::testing::StartsWith("warm: 100 % (1000 MiB of 1000 MiB"));
  EXPECT_EQ(run.out, "warmed_bytes: 1000 MiB\n");
}

TEST_F(GoldcacheCliTest, AgentErrorExitsOneWithTheMessage) {
  StartAgent([](const json&, const Progress&) -> Result<json> {
    return Status::Error(Code::kExists, "pool/vm1.qcow2 is open (2 handles); use --force");
  });
  CliRun run = Run({"reset", "/run/goldcache/ds1/pool/vm1.qcow2"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "goldcache: pool/vm1.qcow2 is open (2 handles); use --force\n");
  EXPECT_EQ(run.out, "");
}

TEST_F(GoldcacheCliTest, AgentNotRunningExitsThree) {
  CliRun run = Run({"status"});
  EXPECT_EQ(run.exit_code, 3);
  EXPECT_EQ(run.err,
            "goldcache: goldcached is not running (no control socket at " + SocketPath() + ")\n");
}

TEST_F(GoldcacheCliTest, SocketComesFromTheEnvironment) {
  StartAgent([](const json&, const Progress&) -> Result<json> { return json{{"up", true}}; });
  CliRun run = Run({"status"}, {"GOLDCACHE_SOCKET=" + SocketPath()});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "up: yes\n");
}

TEST_F(GoldcacheCliTest, UsageErrorsExitTwo) {
  StartAgent([](const json&, const Progress&) -> Result<json> { return json::object(); });
  EXPECT_EQ(Run({}).exit_code, 2);
  EXPECT_EQ(Run({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Run({"reset"}).exit_code, 2);
  EXPECT_EQ(Run({"status", "extra"}).exit_code, 2);
  CliRun bad_rate = Run({"warm", "/x", "--rate", "fast"});
  EXPECT_EQ(bad_rate.exit_code, 2);
  EXPECT_THAT(bad_rate.err, HasSubstr("--rate"));
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_TRUE(requests_.empty());
}

TEST_F(GoldcacheCliTest, HelpSaysWhatACommandDoes) {
  CliRun run = Run({"reset", "--help"});
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_THAT(run.out, HasSubstr("discard a nonpersistent desktop's local writes"));
  CliRun top = Run({"--help"});
  EXPECT_EQ(top.exit_code, 0);
  for (const char* command : {"status", "stats", "list", "reset", "evict", "warm", "check"}) {
    EXPECT_THAT(top.out, HasSubstr(command));
  }
}

}  // namespace
}  // namespace goldcache::agent
