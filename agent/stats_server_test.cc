#include "agent/stats_server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <stdexcept>
#include <string>

namespace goldcache::agent {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

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
  auto server = StatsServer::Start("127.0.0.1:0", registry, nullptr, false, [&scrapes] {
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
