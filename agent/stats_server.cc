#include "agent/stats_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <thread>
#include <utility>

namespace goldcache::agent {
namespace {

// Two workers: one scrape and one person at a time is the expected load, and
// httplib's default (one thread per core, at least 8) is wasted on it.
constexpr size_t kWorkerThreads = 2;
// An idle keep-alive connection (Prometheus keeps one) holds shutdown up to
// this long, so keep it short.
constexpr time_t kKeepAliveSeconds = 2;
constexpr time_t kIoTimeoutSeconds = 5;

Status AddressError(const std::string& listen, const std::string& why) {
  return Status::Error(Code::kInvalidArgument, "\"" + listen + "\" is not HOST:PORT: " + why);
}

}  // namespace

Result<ListenAddress> ParseListenAddress(const std::string& listen) {
  ListenAddress addr;
  std::string port_text;
  if (!listen.empty() && listen.front() == '[') {
    size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      return AddressError(listen, "expected [IPV6]:PORT");
    }
    addr.host = listen.substr(1, close - 1);
    port_text = listen.substr(close + 2);
  } else {
    size_t colon = listen.rfind(':');
    if (colon == std::string::npos) return AddressError(listen, "expected HOST:PORT");
    addr.host = listen.substr(0, colon);
    port_text = listen.substr(colon + 1);
    if (addr.host.find(':') != std::string::npos) {
      return AddressError(listen, "write an IPv6 address in brackets, e.g. [::1]:9477");
    }
  }
  if (addr.host.empty()) return AddressError(listen, "missing host (e.g. 127.0.0.1)");
  if (port_text.empty() || port_text.size() > 5) return AddressError(listen, "bad port");
  for (char c : port_text) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return AddressError(listen, "bad port");
  }
  addr.port = std::stoi(port_text);
  if (addr.port > 65535) return AddressError(listen, "port above 65535");
  return addr;
}

bool IsLoopbackHost(const std::string& host) {
  if (host.size() == 9) {
    std::string lower = host;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower == "localhost") return true;
  }
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

namespace {

// httplib's default also sets SO_REUSEPORT, which would let a second agent
// bind the same port and silently split scrapes between the two.
void ReuseAddressOnly(int sock) {
  int yes = 1;
  setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
}

}  // namespace

struct StatsServer::Impl {
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> finished{false};
};

StatsServer::StatsServer(std::unique_ptr<Impl> impl, int port)
    : impl_(std::move(impl)), port_(port) {}

StatsServer::~StatsServer() {
  impl_->server.stop();
  impl_->thread.join();
}

Result<std::unique_ptr<StatsServer>> StatsServer::Start(const std::string& listen,
                                                        metrics::Registry& registry,
                                                        std::function<nlohmann::json()> stats_json,
                                                        bool allow_non_loopback,
                                                        std::function<std::string()> more_metrics) {
  Result<ListenAddress> addr = ParseListenAddress(listen);
  if (!addr.ok()) return addr.status();
  if (!allow_non_loopback && !IsLoopbackHost(addr->host)) {
    return Status::Error(
        Code::kInvalidArgument,
        "stats listen address \"" + listen +
            "\" is not a loopback address; the endpoint has no authentication, so exposing it "
            "beyond this host must be allowed explicitly: --stats-allow-non-loopback on the "
            "command line, or allow_non_loopback = true in the [stats] section of the config");
  }

  auto impl = std::make_unique<Impl>();
  httplib::Server& server = impl->server;
  server.new_task_queue = [] { return new httplib::ThreadPool(kWorkerThreads); };
  server.set_socket_options(ReuseAddressOnly);
  server.set_keep_alive_timeout(kKeepAliveSeconds);
  server.set_read_timeout(kIoTimeoutSeconds, 0);
  server.set_write_timeout(kIoTimeoutSeconds, 0);
  server.set_payload_max_length(64 * 1024);  // nothing here takes a body

  // Read-only by contract: refuse every other method before routing, for
  // every path, so a 404 never hides a write attempt.
  server.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "GET" || req.method == "HEAD") {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    res.status = 405;
    res.set_header("Allow", "GET, HEAD");
    res.set_content("method not allowed: this endpoint is read-only\n", "text/plain");
    return httplib::Server::HandlerResponse::Handled;
  });
  server.Get("/metrics", [&registry, more = std::move(more_metrics)](const httplib::Request&,
                                                                     httplib::Response& res) {
    std::string text = registry.RenderPrometheus();
    if (more) text += more();
    res.set_content(text, "text/plain; version=0.0.4; charset=utf-8");
  });
  server.Get("/stats", [fn = std::move(stats_json)](const httplib::Request&,
                                                    httplib::Response& res) {
    // nlohmann reports through exceptions; keep them from reaching
    // httplib and turn them into a readable 500.
    try {
      nlohmann::json stats = fn ? fn() : nlohmann::json::object();
      res.set_content(stats.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n",
                      "application/json");
    } catch (const std::exception& e) {
      spdlog::warn("stats endpoint: building /stats failed: {}", e.what());
      res.status = 500;
      res.set_content(std::string("stats unavailable: ") + e.what() + "\n", "text/plain");
    }
  });
  server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.status == 404 && res.body.empty()) res.set_content("not found\n", "text/plain");
  });

  errno = 0;
  int port = addr->port;
  bool bound;
  if (port == 0) {
    port = server.bind_to_any_port(addr->host);
    bound = port > 0;
  } else {
    bound = server.bind_to_port(addr->host, port);
  }
  if (!bound) {
    int err = errno;  // httplib keeps bind()'s errno but does not report it
    std::string why = err != 0 ? std::string(": ") + std::strerror(err) : "";
    return Status::Error(Code::kIoError,
                         "cannot listen on \"" + listen + "\" for the stats endpoint" + why, err);
  }

  Impl* raw = impl.get();
  raw->thread = std::thread([raw] {
    raw->server.listen_after_bind();
    raw->finished = true;
  });
  // The socket already accepts connections (httplib listens while binding),
  // but stop() is a no-op until the accept loop runs, so a StatsServer
  // destroyed right away would never join. Wait for the loop to start.
  while (!raw->server.is_running() && !raw->finished) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  if (!raw->server.is_running()) {
    raw->thread.join();
    return Status::Error(Code::kIoError, "stats endpoint on \"" + listen + "\" stopped at start");
  }
  spdlog::info("stats endpoint listening on {}:{}", addr->host, port);
  return std::unique_ptr<StatsServer>(new StatsServer(std::move(impl), port));
}

}  // namespace goldcache::agent
