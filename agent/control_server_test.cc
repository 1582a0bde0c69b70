#include "agent/control_server.h"

#include <gmock/gmock.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "agent/control_client.h"

namespace goldcache::agent {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using json = nlohmann::json;

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;
// A group the test gives to the unprivileged child; it need not exist in
// /etc/group.
constexpr gid_t kControlGroup = 4711;

// A directory under /tmp that an unprivileged process can traverse, removed
// with everything in it even when a test fails.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/gc-control-test-XXXXXX";
    char* made = mkdtemp(tmpl);
    EXPECT_NE(made, nullptr) << std::strerror(errno);
    if (made != nullptr) {
      path_ = made;
      chmod(made, 0755);
    }
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Connects, sends `bytes` as they are, and returns everything the server
// writes until it closes.
std::string RawExchange(const std::string& socket_path, const std::string& bytes) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "connect failed: " + std::string(std::strerror(errno));
  }
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may answer and close before reading all
    off += static_cast<size_t>(n);
  }
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

// Makes a socket file nobody listens on, as a crashed agent leaves behind.
void MakeStaleSocket(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  close(fd);
}

struct ChildOutcome {
  bool ok = false;
  std::string text;  // the result as JSON, or the error message
  int os_errno = 0;
};

// Calls the server from a child process running as `uid`/`gid` with
// supplementary `groups`, the way an unprivileged operator would.
ChildOutcome CallAs(uid_t uid, gid_t gid, const std::vector<gid_t>& groups,
                    const std::string& socket_path) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return {false, "pipe failed"};
  pid_t pid = fork();
  if (pid == 0) {
    close(pipe_fds[0]);
    alarm(10);  // never outlive a stuck test
    json out;
    if (setgroups(groups.size(), groups.data()) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
      out = {{"ok", false}, {"text", "cannot drop privileges"}, {"errno", errno}};
    } else {
      Result<json> result = ControlClient::Call(socket_path, {{"command", "status"}});
      if (result.ok()) {
        out = {{"ok", true}, {"text", result->dump()}, {"errno", 0}};
      } else {
        out = {{"ok", false},
               {"text", result.status().message()},
               {"errno", result.status().os_errno()}};
      }
    }
    std::string text = out.dump();
    ssize_t ignored = write(pipe_fds[1], text.data(), text.size());
    (void)ignored;
    _exit(0);
  }
  close(pipe_fds[1]);
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = read(pipe_fds[0], buf, sizeof(buf))) > 0) text.append(buf, static_cast<size_t>(n));
  close(pipe_fds[0]);
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  json out = json::parse(text, nullptr, false);
  if (out.is_discarded()) return {false, "child died without an answer"};
  return {out["ok"].get<bool>(), out["text"].get<std::string>(), out["errno"].get<int>()};
}

// Waits up to 5 s for `done`.
bool WaitFor(const std::function<bool()>& done) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

Result<json> Echo(const json& request, const Progress&) { return json{{"echo", request}}; }

class ControlServerTest : public ::testing::Test {
 protected:
  std::string SocketPath() const { return dir_.path() + "/run/goldcached.sock"; }

  void StartServer(ControlServer::Handler handler, ControlOptions opts = {}) {
    opts.socket_path = SocketPath();
    auto server = ControlServer::Start(opts, std::move(handler));
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
  }

  TempDir dir_;
  std::unique_ptr<ControlServer> server_;
};

TEST_F(ControlServerTest, AnswersARequest) {
  StartServer(Echo);
  json request = {{"command", "reset"}, {"path", "/run/goldcache/ds1/pool/vm1.qcow2"}};
  auto result = ControlClient::Call(SocketPath(), request);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(*result, (json{{"echo", request}}));
}

TEST_F(ControlServerTest, WireFormatIsOneFinalLine) {
  StartServer([](const json&, const Progress&) -> Result<json> { return json{{"n", 1}}; });
  EXPECT_EQ(RawExchange(SocketPath(), "{\"command\":\"status\"}\n"),
            "{\"ok\":true,\"result\":{\"n\":1}}\n");
}

TEST_F(ControlServerTest, ProgressArrivesInOrderBeforeTheAnswer) {
  StartServer([](const json&, const Progress& progress) -> Result<json> {
    for (int i = 1; i <= 5; ++i) {
      if (!progress({{"done_bytes", i * 100}, {"total_bytes", 500}})) {
        return Status::Error(Code::kIoError, "client gone");
      }
    }
    return json{{"warmed_bytes", 500}};
  });
  std::vector<json> seen;
  auto result = ControlClient::Call(SocketPath(), {{"command", "warm"}},
                                    [&](const json& p) { seen.push_back(p); });
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(*result, (json{{"warmed_bytes", 500}}));
  ASSERT_EQ(seen.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(seen[i]["done_bytes"], (i + 1) * 100);

  std::string wire = RawExchange(SocketPath(), "{\"command\":\"warm\"}\n");
  EXPECT_THAT(wire, StartsWith("{\"progress\":{\"done_bytes\":100,\"total_bytes\":500}}\n"));
  EXPECT_THAT(wire, testing::EndsWith("\n{\"ok\":true,\"result\":{\"warmed_bytes\":500}}\n"));
}

TEST_F(ControlServerTest, HandlerErrorBecomesOkFalseWithMessageAndCode) {
  StartServer([](const json&, const Progress&) -> Result<json> {
    return Status::Error(Code::kReadOnly, "templates/win11.img is a template, not a desktop");
  });
  EXPECT_EQ(json::parse(RawExchange(SocketPath(), "{\"command\":\"reset\"}\n")),
            (json{{"ok", false},
                  {"error", "templates/win11.img is a template, not a desktop"},
                  {"code", "read-only"}}));
  auto result = ControlClient::Call(SocketPath(), {{"command", "reset"}});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kReadOnly);
  EXPECT_EQ(result.status().message(), "templates/win11.img is a template, not a desktop");
  EXPECT_FALSE(ControlClient::AgentNotRunning(result.status()));
}

TEST_F(ControlServerTest, AgentNotFoundErrorIsNotMistakenForAgentNotRunning) {
  StartServer([](const json&, const Progress&) -> Result<json> {
    return Status::FromErrno(ENOENT, "no desktop pool/vm9.qcow2");
  });
  auto result = ControlClient::Call(SocketPath(), {{"command", "reset"}});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kNotFound);
  EXPECT_FALSE(ControlClient::AgentNotRunning(result.status()));
}

TEST_F(ControlServerTest, HandlerExceptionBecomesErrorAndServerKeepsServing) {
  StartServer([](const json& request, const Progress&) -> Result<json> {
    if (request["command"] == "boom") throw std::runtime_error("kaboom");
    return json{{"fine", true}};
  });
  auto result = ControlClient::Call(SocketPath(), {{"command", "boom"}});
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("kaboom"));
  EXPECT_TRUE(ControlClient::Call(SocketPath(), {{"command", "status"}}).ok());
}

TEST_F(ControlServerTest, MalformedRequestsGetAnErrorAndServerKeepsServing) {
  std::atomic<int> calls{0};
  StartServer([&](const json& r, const Progress& p) {
    ++calls;
    return Echo(r, p);
  });
  for (const char* bad :
       {"{not json\n", "[1,2]\n", "{\"path\":\"x\"}\n", "{\"command\":7}\n", "\xff\xfe\n"}) {
    json answer = json::parse(RawExchange(SocketPath(), bad), nullptr, false);
    ASSERT_FALSE(answer.is_discarded()) << bad;
    EXPECT_EQ(answer["ok"], false) << bad;
    EXPECT_EQ(answer["code"], "bad-request") << bad;
    EXPECT_THAT(answer["error"].get<std::string>(), HasSubstr("malformed request")) << bad;
  }
  EXPECT_EQ(calls, 0);
  EXPECT_TRUE(ControlClient::Call(SocketPath(), {{"command", "status"}}).ok());
}

// A member of the control group sends a request nested 100,000 deep (200 KB,
// well under the size limit). Logging or copying it recursively would
// overflow the connection thread's stack and kill the agent.
TEST_F(ControlServerTest, DeeplyNestedRequestIsRefusedAndServerKeepsServing) {
  std::atomic<int> calls{0};
  metrics::Registry registry;
  ControlOptions opts;
  opts.registry = &registry;
  StartServer(
      [&](const json& r, const Progress& p) {
        ++calls;
        return Echo(r, p);
      },
      opts);
  constexpr int kDepth = 100000;
  std::string deep = "{\"command\":\"warm\",\"path\":" + std::string(kDepth, '[') +
                     std::string(kDepth, ']') + "}\n";
  json answer = json::parse(RawExchange(SocketPath(), deep), nullptr, false);
  ASSERT_FALSE(answer.is_discarded());
  EXPECT_EQ(answer["ok"], false);
  EXPECT_EQ(answer["code"], "bad-request");
  EXPECT_EQ(answer["error"], "malformed request: objects and arrays nested deeper than " +
                                 std::to_string(kMaxRequestDepth) + " levels");
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(registry
                .GetCounter("goldcache_errors_total", "Errors by kind.",
                            {{"kind", "control_bad_request"}})
                .Value(),
            1u);
  EXPECT_TRUE(ControlClient::Call(SocketPath(), {{"command", "status"}}).ok());
}

TEST_F(ControlServerTest, RequestNestedToTheLimitIsServed) {
  StartServer(Echo);
  // The request object is level 1; the argument adds the rest.
  std::string nested =
      std::string(kMaxRequestDepth - 1, '[') + "7" + std::string(kMaxRequestDepth - 1, ']');
  auto result =
      ControlClient::Call(SocketPath(), {{"command", "warm"}, {"arg", json::parse(nested)}});
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ((*result)["echo"]["arg"], json::parse(nested));
}

TEST_F(ControlServerTest, EveryRefusedRequestIsCounted) {
  metrics::Registry registry;
  ControlOptions opts;
  opts.registry = &registry;
  StartServer(Echo, opts);
  for (const char* bad : {"{not json\n", "[1]\n", "{\"command\":7}\n"}) {
    EXPECT_EQ(json::parse(RawExchange(SocketPath(), bad))["code"], "bad-request") << bad;
  }
  std::string huge =
      "{\"command\":\"warm\",\"path\":\"" + std::string(kMaxRequestBytes, 'a') + "\"}\n";
  EXPECT_EQ(json::parse(RawExchange(SocketPath(), huge))["code"], "bad-request");
  EXPECT_THAT(registry.RenderPrometheus(),
              HasSubstr("goldcache_errors_total{kind=\"control_bad_request\"} 4\n"));
}

TEST_F(ControlServerTest, RequestOverOneMebibyteIsRefused) {
  StartServer(Echo);
  std::string huge =
      "{\"command\":\"warm\",\"path\":\"" + std::string(kMaxRequestBytes, 'a') + "\"}\n";
  json answer = json::parse(RawExchange(SocketPath(), huge), nullptr, false);
  ASSERT_FALSE(answer.is_discarded());
  EXPECT_EQ(answer["code"], "bad-request");
  EXPECT_THAT(answer["error"].get<std::string>(), HasSubstr("larger than 1 MiB"));
  // Just under the limit is fine.
  std::string big(kMaxRequestBytes - 100, 'b');
  auto result = ControlClient::Call(SocketPath(), {{"command", "warm"}, {"path", big}});
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ((*result)["echo"]["path"], big);
}

TEST_F(ControlServerTest, RequestWithoutTrailingNewlineIsAccepted) {
  StartServer(Echo);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, SocketPath().c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  std::string req = "{\"command\":\"list\"}";
  ASSERT_EQ(send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  shutdown(fd, SHUT_WR);
  char buf[256];
  ssize_t n = recv(fd, buf, sizeof(buf), MSG_WAITALL);
  close(fd);
  ASSERT_GT(n, 0);
  EXPECT_EQ(json::parse(std::string(buf, static_cast<size_t>(n)))["ok"], true);
}

TEST_F(ControlServerTest, ServesClientsConcurrently) {
  constexpr int kClients = 4;
  std::mutex mu;
  std::condition_variable cv;
  int inside = 0;
  StartServer([&](const json&, const Progress&) -> Result<json> {
    std::unique_lock<std::mutex> lock(mu);
    ++inside;
    cv.notify_all();
    // Only returns once all clients are in the handler at the same time.
    bool all = cv.wait_for(lock, std::chrono::seconds(5), [&] { return inside == kClients; });
    return json{{"all_inside", all}};
  });
  std::vector<std::thread> clients;
  std::atomic<int> together{0};
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&] {
      auto result = ControlClient::Call(SocketPath(), {{"command", "status"}});
      if (result.ok() && (*result)["all_inside"] == true) ++together;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(together, kClients);
}

TEST_F(ControlServerTest, AnswersBusyBeyondMaxConnections) {
  std::mutex mu;
  std::condition_variable cv;
  int inside = 0;
  bool release = false;
  ControlOptions opts;
  opts.max_connections = 2;
  StartServer(
      [&](const json&, const Progress&) -> Result<json> {
        std::unique_lock<std::mutex> lock(mu);
        ++inside;
        cv.wait_for(lock, std::chrono::seconds(5), [&] { return release; });
        return json::object();
      },
      opts);
  std::vector<std::thread> clients;
  for (int i = 0; i < 2; ++i) {
    clients.emplace_back([&] { (void)ControlClient::Call(SocketPath(), {{"command", "warm"}}); });
  }
  EXPECT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(mu);
    return inside == 2;
  }));
  auto third = ControlClient::Call(SocketPath(), {{"command", "status"}});
  ASSERT_FALSE(third.ok());
  EXPECT_THAT(third.status().message(), StartsWith("busy:"));
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  for (auto& t : clients) t.join();
  // Slots come back once the commands finish.
  EXPECT_TRUE(ControlClient::Call(SocketPath(), {{"command", "status"}}).ok());
}

TEST_F(ControlServerTest, ProgressReportsAClientThatWentAway) {
  std::atomic<bool> saw_gone{false};
  StartServer([&](const json&, const Progress& progress) -> Result<json> {
    for (int i = 0; i < 5000; ++i) {
      if (!progress({{"done_bytes", i}, {"total_bytes", 5000}})) {
        saw_gone = true;
        return Status::Error(Code::kIoError, "cancelled");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return json::object();
  });
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, SocketPath().c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  std::string req = "{\"command\":\"warm\"}\n";
  ASSERT_EQ(send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  char c;
  ASSERT_EQ(recv(fd, &c, 1, 0), 1);  // the first progress line has started
  close(fd);                         // the operator pressed ^C
  EXPECT_TRUE(WaitFor([&] { return saw_gone.load(); }));
}

TEST_F(ControlServerTest, StoppingTheServerEndsARunningCommand) {
  std::atomic<bool> first_progress{false};
  std::atomic<bool> handler_done{false};
  StartServer([&](const json&, const Progress& progress) -> Result<json> {
    while (progress({{"done_bytes", 1}, {"total_bytes", 2}})) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    handler_done = true;
    return json::object();
  });
  Status client_status;
  std::thread client([&] {
    auto result = ControlClient::Call(SocketPath(), {{"command", "warm"}},
                                      [&](const json&) { first_progress = true; });
    client_status = result.status();
  });
  ASSERT_TRUE(WaitFor([&] { return first_progress.load(); }));
  server_.reset();
  EXPECT_TRUE(handler_done);
  client.join();
  ASSERT_FALSE(client_status.ok());
  EXPECT_THAT(client_status.message(), HasSubstr("without an answer"));
  EXPECT_FALSE(std::filesystem::exists(SocketPath()));
}

TEST_F(ControlServerTest, CreatesTheSocketDirectoryAndRemovesTheSocketAtStop) {
  StartServer(Echo);
  struct stat st;
  ASSERT_EQ(stat((dir_.path() + "/run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  ASSERT_EQ(lstat(SocketPath().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  server_.reset();
  EXPECT_FALSE(std::filesystem::exists(SocketPath()));
}

TEST_F(ControlServerTest, SocketIsOwnerOnlyWithoutAGroup) {
  StartServer(Echo);
  struct stat st;
  ASSERT_EQ(lstat(SocketPath().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ControlServerTest, SocketBelongsToTheConfiguredGroup) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give the socket to another group";
  ControlOptions opts;
  opts.group = kControlGroup;
  StartServer(Echo, opts);
  struct stat st;
  ASSERT_EQ(lstat(SocketPath().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_gid, kControlGroup);
}

TEST_F(ControlServerTest, ReplacesAStaleSocket) {
  std::filesystem::create_directories(dir_.path() + "/run");
  MakeStaleSocket(SocketPath());
  auto before = ControlClient::Call(SocketPath(), {{"command", "status"}});
  ASSERT_FALSE(before.ok());
  EXPECT_EQ(before.status().message(),
            "goldcached is not running (stale socket " + SocketPath() + ")");
  EXPECT_TRUE(ControlClient::AgentNotRunning(before.status()));

  StartServer(Echo);
  EXPECT_TRUE(ControlClient::Call(SocketPath(), {{"command", "status"}}).ok());
}

TEST_F(ControlServerTest, SecondServerOnALiveSocketFailsClearly) {
  StartServer(Echo);
  ControlOptions opts;
  opts.socket_path = SocketPath();
  auto second = ControlServer::Start(opts, Echo);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kExists);
  EXPECT_EQ(second.status().message(), "another goldcached is running on " + SocketPath());
  // The first one is untouched and still serving.
  EXPECT_TRUE(ControlClient::Call(SocketPath(), {{"command", "status"}}).ok());
}

TEST_F(ControlServerTest, NeverReplacesAFileThatIsNotASocket) {
  std::filesystem::create_directories(dir_.path() + "/run");
  { std::ofstream(SocketPath()) << "precious"; }
  ControlOptions opts;
  opts.socket_path = SocketPath();
  auto server = ControlServer::Start(opts, Echo);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(server.status().message(), HasSubstr("is not a socket"));
  EXPECT_TRUE(std::filesystem::is_regular_file(SocketPath()));
}

TEST_F(ControlServerTest, RejectsAPathTooLongForAUnixSocket) {
  ControlOptions opts;
  opts.socket_path = dir_.path() + "/" + std::string(120, 'x');
  auto server = ControlServer::Start(opts, Echo);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), Code::kInvalidArgument);
}

TEST_F(ControlServerTest, ClientSaysAgentNotRunningWithoutASocket) {
  auto result = ControlClient::Call(SocketPath(), {{"command", "status"}});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().message(),
            "goldcached is not running (no control socket at " + SocketPath() + ")");
  EXPECT_TRUE(ControlClient::AgentNotRunning(result.status()));
}

// --- Who may use the socket. These fork a child that drops to nobody.

class ControlServerPermissionTest : public ControlServerTest {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another user";
  }
};

TEST_F(ControlServerPermissionTest, RootIsAllowed) {
  StartServer(Echo);
  ChildOutcome child = CallAs(0, 0, {}, SocketPath());
  EXPECT_TRUE(child.ok) << child.text;
}

TEST_F(ControlServerPermissionTest, OtherUserIsRefusedWithoutAGroup) {
  StartServer(Echo);
  ChildOutcome child = CallAs(kNobody, kNogroup, {}, SocketPath());
  EXPECT_FALSE(child.ok);
  EXPECT_EQ(child.os_errno, EACCES);
  EXPECT_THAT(child.text, StartsWith("permission denied on " + SocketPath() + ": run as root"));
}

TEST_F(ControlServerPermissionTest, MemberOfTheGroupIsAllowed) {
  ControlOptions opts;
  opts.group = kControlGroup;
  StartServer(Echo, opts);
  ChildOutcome supplementary = CallAs(kNobody, kNogroup, {kControlGroup}, SocketPath());
  EXPECT_TRUE(supplementary.ok) << supplementary.text;
  ChildOutcome primary = CallAs(kNobody, kControlGroup, {}, SocketPath());
  EXPECT_TRUE(primary.ok) << primary.text;
}

TEST_F(ControlServerPermissionTest, NonMemberIsRefusedByTheSocketMode) {
  ControlOptions opts;
  opts.group = kControlGroup;
  StartServer(Echo, opts);
  ChildOutcome child = CallAs(kNobody, kNogroup, {}, SocketPath());
  EXPECT_FALSE(child.ok);
  EXPECT_EQ(child.os_errno, EACCES);
  EXPECT_THAT(child.text, StartsWith("permission denied on " + SocketPath()));
  EXPECT_THAT(child.text, HasSubstr("member of the"));
}

// Defence in depth: an operator who loosens the socket's mode does not let
// everybody in.
TEST_F(ControlServerPermissionTest, NonMemberIsRefusedByPeerCredentialsEvenIfModeIsLoosened) {
  ControlOptions opts;
  opts.group = kControlGroup;
  std::atomic<int> calls{0};
  StartServer(
      [&](const json& r, const Progress& p) {
        ++calls;
        return Echo(r, p);
      },
      opts);
  ASSERT_EQ(chmod(SocketPath().c_str(), 0666), 0);
  ChildOutcome child = CallAs(kNobody, kNogroup, {}, SocketPath());
  EXPECT_FALSE(child.ok);
  EXPECT_EQ(child.os_errno, EACCES);
  EXPECT_THAT(child.text,
              StartsWith("permission denied: the goldcache control socket is for root (or group "));
  EXPECT_EQ(calls, 0);
  // Without a group, nobody but root passes the credential check.
  server_.reset();
  StartServer(Echo);
  ASSERT_EQ(chmod(SocketPath().c_str(), 0666), 0);
  ChildOutcome again = CallAs(kNobody, kNogroup, {kControlGroup}, SocketPath());
  EXPECT_FALSE(again.ok);
  EXPECT_EQ(again.text, "permission denied: the goldcache control socket is for root");
}

}  // namespace
}  // namespace goldcache::agent
