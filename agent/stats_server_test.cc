#include "agent/stats_server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace goldcache::agent {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// A TCP connection to the server that the test drives byte by byte.
class RawConnection {
 public:
  explicit RawConnection(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawConnection() { close(fd_); }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return connected_; }
  bool Send(const std::string& bytes) {
    return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // Everything the server sends until it closes the connection, waiting at
  // most `bound` for each piece. nullopt when the server did not close.
  std::optional<std::string> ReadUntilClosed(std::chrono::milliseconds bound) {
    std::string out;
    while (true) {
      pollfd pfd{fd_, POLLIN, 0};
      if (poll(&pfd, 1, static_cast<int>(bound.count())) <= 0) return std::nullopt;
      char buf[4096];
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return out;
      out.append(buf, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  bool connected_ = false;
};

// A slowloris client: starts a request, then sends one more header byte
// every `interval`, never finishing it, until the server closes the
// connection or the Trickler is destroyed.
class Trickler {
 public:
  Trickler(int port, std::chrono::milliseconds interval) : conn_(port) {
    started_ = conn_.connected() && conn_.Send("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    thread_ = std::thread([this, interval] {
      while (!stop_ && started_) {
        if (!conn_.Send("a")) break;
        std::optional<std::string> answer = conn_.ReadUntilClosed(interval);
        if (answer) break;  // the server closed the connection
      }
      closed_by_server_ = !stop_;
    });
  }
  ~Trickler() {
    stop_ = true;
    thread_.join();
  }
  bool started() const { return started_; }
  bool closed_by_server() const { return closed_by_server_; }

 private:
  RawConnection conn_;
  bool started_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<bool> closed_by_server_{false};
  std::thread thread_;
};

// Polls `done` for up to `bound`.
bool WaitFor(const std::function<bool()>& done,
             std::chrono::milliseconds bound = std::chrono::seconds(20)) {
  auto deadline = std::chrono::steady_clock::now() + bound;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

uint64_t ErrorCount(metrics::Registry& registry, const std::string& kind) {
  return registry.GetCounter("goldcache_errors_total", "Errors by kind.", {{"kind", kind}}).Value();
}

class StatsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_.GetCounter("goldcache_cache_hits_total", "Chunk reads served from the cache.")
        .Add(42);
    auto server = StatsServer::Start("127.0.0.1:0", registry_, [] {
      return nlohmann::json{{"datastores", 1}};
    });
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    ASSERT_GT(server_->port(), 0);
  }

  httplib::Client Client() { return httplib::Client("127.0.0.1", server_->port()); }

  metrics::Registry registry_;
  std::unique_ptr<StatsServer> server_;
};

TEST_F(StatsServerTest, ServesMetricsInPrometheusFormat) {
  auto res = Client().Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(res->body, registry_.RenderPrometheus());
  EXPECT_THAT(res->body, HasSubstr("goldcache_cache_hits_total 42\n"));
}

TEST_F(StatsServerTest, ServesStatsJson) {
  auto res = Client().Get("/stats");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->get_header_value("Content-Type"), StartsWith("application/json"));
  EXPECT_EQ(nlohmann::json::parse(res->body), (nlohmann::json{{"datastores", 1}}));
}

TEST_F(StatsServerTest, ServesHealthz) {
  auto res = Client().Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok\n");
}

TEST_F(StatsServerTest, UnknownPathIs404) {
  auto res = Client().Get("/metrics/extra");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
}

TEST_F(StatsServerTest, NonGetIs405EvenOnUnknownPaths) {
  httplib::Client client = Client();
  auto post = client.Post("/metrics", "x", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 405);
  EXPECT_EQ(post->get_header_value("Allow"), "GET, HEAD");
  auto del = client.Delete("/nowhere");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 405);
  auto put = client.Put("/stats", "{}", "application/json");
  ASSERT_TRUE(put);
  EXPECT_EQ(put->status, 405);
}

TEST_F(StatsServerTest, StopsPromptlyWithIdleKeepAliveClient) {
  httplib::Client client = Client();
  client.set_keep_alive(true);
  ASSERT_TRUE(client.Get("/healthz"));
  server_.reset();  // must not hang; bounded by the keep-alive timeout
  SUCCEED();
}

TEST_F(StatsServerTest, ServesSeveralRequestsOnAKeptAliveConnection) {
  httplib::Client client = Client();
  client.set_keep_alive(true);
  for (int i = 0; i < 3; ++i) {
    auto res = client.Get("/healthz");
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->body, "ok\n");
  }
  auto head = client.Head("/metrics");
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
}

// Clients that connect and say nothing, and clients that trickle a request
// one byte at a time, must not keep a scrape from being answered.
TEST_F(StatsServerTest, AnswersWhileIdleAndTricklingClientsAreConnected) {
  std::vector<std::unique_ptr<RawConnection>> idle;
  std::vector<std::unique_ptr<Trickler>> tricklers;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(std::make_unique<RawConnection>(server_->port()));
    ASSERT_TRUE(idle.back()->connected());
    tricklers.push_back(std::make_unique<Trickler>(server_->port(), std::chrono::milliseconds(50)));
    ASSERT_TRUE(tricklers.back()->started());
  }
  httplib::Client client = Client();
  client.set_read_timeout(20, 0);  // the bound; an answer is expected at once
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr("goldcache_cache_hits_total 42\n"));
}

TEST(StatsServerLimitsTest, CutsATricklingClientAtTheRequestDeadline) {
  metrics::Registry registry;
  StatsLimits limits;
  limits.request_deadline = std::chrono::milliseconds(200);
  auto server = StatsServer::Start("127.0.0.1:0", registry, nullptr, false, limits);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  Trickler slow((*server)->port(), std::chrono::milliseconds(20));
  ASSERT_TRUE(slow.started());
  EXPECT_TRUE(WaitFor([&] { return slow.closed_by_server(); }));
  EXPECT_TRUE(WaitFor([&] { return ErrorCount(registry, "stats_slow_client") == 1; }));
  EXPECT_THAT(registry.RenderPrometheus(),
              HasSubstr("goldcache_errors_total{kind=\"stats_slow_client\"} 1\n"));
}

TEST(StatsServerLimitsTest, ClosesAConnectionThatSaysNothing) {
  metrics::Registry registry;
  StatsLimits limits;
  limits.idle_timeout = std::chrono::milliseconds(100);
  auto server = StatsServer::Start("127.0.0.1:0", registry, nullptr, false, limits);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  RawConnection silent((*server)->port());
  ASSERT_TRUE(silent.connected());
  std::optional<std::string> answer = silent.ReadUntilClosed(std::chrono::seconds(20));
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(*answer, "");
  // Saying nothing is not an error: keep-alive scrapers do it between scrapes.
  EXPECT_EQ(ErrorCount(registry, "stats_slow_client"), 0u);
}

TEST(StatsServerLimitsTest, AnswersBusyBeyondMaxConnectionsAndRecovers) {
  metrics::Registry registry;
  StatsLimits limits;
  limits.max_connections = 2;
  limits.idle_timeout = std::chrono::hours(1);  // only closing them frees the slots
  auto server = StatsServer::Start("127.0.0.1:0", registry, nullptr, false, limits);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  int port = (*server)->port();
  auto first = std::make_unique<RawConnection>(port);
  auto second = std::make_unique<RawConnection>(port);
  ASSERT_TRUE(first->connected() && second->connected());
  // Accepted in order: by the time the third is accepted, two are open.
  RawConnection third(port);
  ASSERT_TRUE(third.connected());
  std::optional<std::string> answer = third.ReadUntilClosed(std::chrono::seconds(20));
  ASSERT_TRUE(answer.has_value());
  EXPECT_THAT(*answer, StartsWith("HTTP/1.1 503 "));
  EXPECT_EQ(ErrorCount(registry, "stats_busy"), 1u);
  first.reset();
  second.reset();
  EXPECT_TRUE(WaitFor([&] {
    auto res = httplib::Client("127.0.0.1", port).Get("/healthz");
    return res && res->status == 200;
  }));
}

TEST(StatsServerLimitsTest, StoppingCutsAClientInTheMiddleOfARequest) {
  metrics::Registry registry;
  StatsLimits limits;
  limits.request_deadline = std::chrono::hours(1);  // only stopping can end it
  auto server = StatsServer::Start("127.0.0.1:0", registry, nullptr, false, limits);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  Trickler slow((*server)->port(), std::chrono::milliseconds(20));
  ASSERT_TRUE(slow.started());
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    server->reset();
    stopped = true;
  });
  bool in_time = WaitFor([&] { return stopped.load(); }, std::chrono::seconds(30));
  if (!in_time) {
    ADD_FAILURE() << "the stats server did not stop while a client was sending a request";
    std::abort();  // the stopper thread would never join
  }
  stopper.join();
  EXPECT_TRUE(WaitFor([&] { return slow.closed_by_server(); }));
  EXPECT_EQ(ErrorCount(registry, "stats_slow_client"), 0u);
}

TEST(StatsServerStartTest, StatsThatThrowGive500) {
  metrics::Registry registry;
  auto server = StatsServer::Start("127.0.0.1:0", registry, []() -> nlohmann::json {
    throw std::runtime_error("index not open");
  });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto res = httplib::Client("127.0.0.1", (*server)->port()).Get("/stats");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 500);
  EXPECT_THAT(res->body, HasSubstr("index not open"));
}

TEST(StatsServerStartTest, MoreMetricsFollowTheRegistrysOnEachScrape) {
  metrics::Registry registry;
  registry.GetCounter("goldcache_cache_hits_total", "Hits.").Add(1);
  int scrapes = 0;
  auto server =
      StatsServer::Start("127.0.0.1:0", registry, nullptr, false, StatsLimits{}, [&scrapes] {
        ++scrapes;
        return "# HELP goldcache_x_total X.\n# TYPE goldcache_x_total counter\ngoldcache_x_total " +
               std::to_string(scrapes) + "\n";
      });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  httplib::Client client("127.0.0.1", (*server)->port());
  for (int i = 1; i <= 2; ++i) {
    auto res = client.Get("/metrics");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->body, registry.RenderPrometheus() +
                             "# HELP goldcache_x_total X.\n# TYPE goldcache_x_total counter\n"
                             "goldcache_x_total " +
                             std::to_string(i) + "\n");
  }
}

TEST(StatsServerStartTest, ServesOnIpv6Loopback) {
  metrics::Registry registry;
  auto server = StatsServer::Start("[::1]:0", registry, nullptr);
  if (!server.ok()) GTEST_SKIP() << "no IPv6 loopback here: " << server.status().ToString();
  auto res = httplib::Client("::1", (*server)->port()).Get("/healthz");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->body, "ok\n");
}

TEST(StatsServerStartTest, RefusesNonLoopbackUnlessAllowed) {
  metrics::Registry registry;
  for (const char* listen : {"0.0.0.0:0", "[::]:0", "example.com:9477", "10.1.2.3:9477"}) {
    SCOPED_TRACE(listen);
    auto server = StatsServer::Start(listen, registry, nullptr);
    ASSERT_FALSE(server.ok());
    EXPECT_EQ(server.status().code(), Code::kInvalidArgument);
    EXPECT_THAT(server.status().message(), HasSubstr("allow_non_loopback"));
    EXPECT_THAT(server.status().message(), HasSubstr(listen));
  }
  auto allowed = StatsServer::Start("0.0.0.0:0", registry, nullptr, /*allow_non_loopback=*/true);
  ASSERT_TRUE(allowed.ok()) << allowed.status().ToString();
  auto res = httplib::Client("127.0.0.1", (*allowed)->port()).Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST(StatsServerStartTest, RejectsMalformedAddresses) {
  metrics::Registry registry;
  for (const char* listen : {"", "127.0.0.1", ":9477", "127.0.0.1:", "127.0.0.1:abc",
                             "127.0.0.1:65536", "::1:9477", "[::1]9477", "127.0.0.1:-1"}) {
    SCOPED_TRACE(listen);
    auto server = StatsServer::Start(listen, registry, nullptr);
    ASSERT_FALSE(server.ok());
    EXPECT_EQ(server.status().code(), Code::kInvalidArgument);
  }
}

TEST(StatsServerStartTest, PortInUseIsAnErrorNamingTheAddress) {
  metrics::Registry registry;
  auto first = StatsServer::Start("127.0.0.1:0", registry, nullptr);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  std::string listen = "127.0.0.1:" + std::to_string((*first)->port());
  auto second = StatsServer::Start(listen, registry, nullptr);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kIoError);
  EXPECT_THAT(second.status().message(), HasSubstr("\"" + listen + "\""));
}

TEST(StatsServerStartTest, StartAndImmediateDestroyDoesNotHang) {
  metrics::Registry registry;
  for (int i = 0; i < 20; ++i) {
    auto server = StatsServer::Start("127.0.0.1:0", registry, nullptr);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
  }
}

}  // namespace
}  // namespace goldcache::agent
