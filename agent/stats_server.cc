#include "agent/stats_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <list>
#include <thread>
#include <utility>

#include "util/mutex.h"

namespace goldcache::agent {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kListenBacklog = 64;
// Warnings about refused or cut connections: at most one a minute per kind,
// each saying how many there were in all.
constexpr auto kWarningInterval = std::chrono::minutes(1);

}  // namespace

namespace {

// httplib's request parsing, routing and answer writing, driven by our own
// connection loop (httplib's own loop gives a connection no total deadline).
class HttpEngine : public httplib::Server {
 public:
  using httplib::Server::process_request;
};

std::string AddressText(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

void SplitAddress(const sockaddr_storage& addr, std::string& ip, int& port) {
  std::string text = AddressText(addr);
  size_t colon = text.rfind(':');
  ip = text.substr(0, colon);
  port = std::atoi(text.c_str() + colon + 1);
}

std::string PeerText(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "unknown peer";
  return AddressText(addr);
}

// An httplib::Stream over one accepted socket. Every wait ends at the
// current request's deadline (or at once when the server stops): a client
// cannot make a read or a write, nor a request, last longer.
class DeadlineStream : public httplib::Stream {
 public:
  explicit DeadlineStream(int fd) : fd_(fd) {}

  enum class Next { kRequest, kIdle, kClosed };
  // Waits up to `idle` for the first byte of the next request.
  Next WaitForRequest(std::chrono::milliseconds idle) {
    if (pos_ < end_) return Next::kRequest;
    deadline_ = Clock::now() + idle;
    if (!Wait(POLLIN)) return timed_out_ ? Next::kIdle : Next::kClosed;
    timed_out_ = false;
    return Next::kRequest;
  }
  void StartRequest(std::chrono::milliseconds deadline) {
    deadline_ = Clock::now() + deadline;
    timed_out_ = false;
  }
  // The last wait ended at the deadline.
  bool timed_out() const { return timed_out_; }

  bool is_readable() const override { return pos_ < end_ || Wait(POLLIN); }
  bool is_writable() const override { return Wait(POLLOUT); }

  ssize_t read(char* ptr, size_t size) override {
    if (pos_ == end_) {
      if (!Wait(POLLIN)) return -1;
      ssize_t n;
      do {
        n = recv(fd_, buf_, sizeof(buf_), MSG_DONTWAIT);
      } while (n < 0 && errno == EINTR);
      if (n <= 0) return n;
      pos_ = 0;
      end_ = static_cast<size_t>(n);
    }
    size_t n = std::min(size, end_ - pos_);
    std::memcpy(ptr, buf_ + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    while (true) {
      if (!Wait(POLLOUT)) return -1;
      ssize_t n = send(fd_, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) return n;
      if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    }
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    getpeername(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    SplitAddress(addr, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    SplitAddress(addr, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  // Waits for `events` until the deadline. False on timeout (timed_out_),
  // hang-up or error; a hang-up with data still to read counts as readable.
  bool Wait(short events) const {
    while (true) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline_ - Clock::now());
      if (left.count() <= 0) {
        timed_out_ = true;
        return false;
      }
      pollfd pfd{fd_, events, 0};
      int rc = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left.count(), 60'000)));
      if (rc < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      if (rc == 0) continue;  // the deadline check above decides
      if (pfd.revents & events) return true;
      return false;  // POLLERR, POLLHUP without data, POLLNVAL
    }
  }

  const int fd_;
  Clock::time_point deadline_ = Clock::now();
  mutable bool timed_out_ = false;
  char buf_[4096];
  size_t pos_ = 0;
  size_t end_ = 0;
};

// "once a minute" for a warning that an attacker could otherwise repeat at
// will into the journal.
class WarningLimiter {
 public:
  // True when a warning may be logged now.
  bool Allow() {
    int64_t now = Clock::now().time_since_epoch().count();
    int64_t next = next_.load(std::memory_order_relaxed);
    if (now < next) return false;
    int64_t then = now + std::chrono::duration_cast<Clock::duration>(kWarningInterval).count();
    return next_.compare_exchange_strong(next, then, std::memory_order_relaxed);
  }

 private:
  std::atomic<int64_t> next_{0};
};

}  // namespace

struct StatsServer::Impl {
  struct Connection {
    Connection(int fd_in, Mutex& mu_in) : mu(mu_in), fd(fd_in) {}
    Mutex& mu;              // the Impl's
    int fd GUARDED_BY(mu);  // -1 once its thread has closed it
    bool done GUARDED_BY(mu) = false;
    std::thread thread;
  };

  Impl(metrics::Registry& registry, const StatsLimits& limits_in)
      : limits(limits_in),
        busy(registry.GetCounter("goldcache_errors_total", "Errors by kind.",
                                 {{"kind", "stats_busy"}})),
        slow_clients(registry.GetCounter("goldcache_errors_total", "Errors by kind.",
                                         {{"kind", "stats_slow_client"}})) {}
  ~Impl() {
    if (listen_fd >= 0) close(listen_fd);
    if (wake_fd >= 0) close(wake_fd);
  }

  void AcceptLoop() EXCLUDES(mu);
  void ReapFinished() EXCLUDES(mu);
  void Refuse(int fd);
  void Serve(Connection* conn) EXCLUDES(mu);

  const StatsLimits limits;
  metrics::Counter& busy;
  metrics::Counter& slow_clients;
  WarningLimiter busy_warning;
  WarningLimiter slow_warning;
  HttpEngine http;
  std::string where;  // HOST:PORT, for log lines
  int listen_fd = -1;
  int wake_fd = -1;  // eventfd: written once by the destructor
  std::atomic<bool> stopping{false};
  std::thread accept_thread;

  // Lock order: mu is a leaf; never held while serving or blocking on a
  // socket.
  Mutex mu;
  std::list<Connection> connections GUARDED_BY(mu);
};

void StatsServer::Impl::ReapFinished() {
  std::list<Connection> finished;
  {
    MutexLock lock(mu);
    for (auto it = connections.begin(); it != connections.end();) {
      auto next = std::next(it);
      it->mu.AssertHeld();  // it->mu is mu: every Connection shares the Impl's
      if (it->done) finished.splice(finished.end(), connections, it);
      it = next;
    }
  }
  for (Connection& conn : finished) conn.thread.join();
}

void StatsServer::Impl::Refuse(int fd) {
  busy.Add();
  if (busy_warning.Allow()) {
    spdlog::warn(
        "stats endpoint {}: refused a connection from {}: {} connections are already open (a "
        "client that opens many and sends slowly?); {} refused so far, "
        "goldcache_errors_total{{kind=\"stats_busy\"}}",
        where, PeerText(fd), limits.max_connections, busy.Value());
  }
  static constexpr char kBusy[] =
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 34\r\n"
      "Connection: close\r\nRetry-After: 1\r\n\r\nbusy: too many connections, retry\n";
  // Best effort and never blocking: the accept thread must not wait.
  ssize_t ignored = send(fd, kBusy, sizeof(kBusy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)ignored;
  close(fd);
}

void StatsServer::Impl::AcceptLoop() {
  pollfd fds[2] = {{listen_fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  while (!stopping) {
    int rc = poll(fds, 2, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      spdlog::error("stats endpoint {}: poll failed: {}; no longer serving /metrics", where,
                    std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EINTR || err == EAGAIN || err == ECONNABORTED) continue;
      spdlog::warn("stats endpoint {}: accept failed: {}", where, std::strerror(err));
      if (err == EMFILE || err == ENFILE || err == ENOMEM || err == ENOBUFS) {
        // Out of descriptors or memory: back off rather than spin.
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      continue;
    }
    ReapFinished();
    {
      MutexLock lock(mu);
      if (connections.size() < limits.max_connections) {
        Connection& conn = connections.emplace_back(fd, mu);
        conn.thread = std::thread([this, &conn] { Serve(&conn); });
        continue;
      }
    }
    Refuse(fd);
  }
}

void StatsServer::Impl::Serve(Connection* conn) {
  int fd;
  {
    MutexLock lock(conn->mu);
    fd = conn->fd;  // stays open until this thread closes it below
  }
  DeadlineStream stream(fd);
  for (size_t n = 1; n <= limits.max_requests_per_connection && !stopping; ++n) {
    if (stream.WaitForRequest(limits.idle_timeout) != DeadlineStream::Next::kRequest) break;
    stream.StartRequest(limits.request_deadline);
    bool closed = false;
    bool ok = http.process_request(
        stream, /*close_connection=*/n == limits.max_requests_per_connection, closed, nullptr);
    if (stream.timed_out() && !stopping) {
      slow_clients.Add();
      if (slow_warning.Allow()) {
        spdlog::warn(
            "stats endpoint {}: cut the connection from {}: its request was not read and "
            "answered within {} ms (a client that sends or reads too slowly); {} cut so far, "
            "goldcache_errors_total{{kind=\"stats_slow_client\"}}",
            where, PeerText(fd), limits.request_deadline.count(), slow_clients.Value());
      }
      break;
    }
    if (!ok || closed) break;
  }
  MutexLock lock(conn->mu);
  shutdown(fd, SHUT_RDWR);
  close(fd);
  conn->fd = -1;
  conn->done = true;
}

StatsServer::StatsServer(std::unique_ptr<Impl> impl, int port)
    : impl_(std::move(impl)), port_(port) {}

StatsServer::~StatsServer() {
  Impl& impl = *impl_;
  impl.stopping = true;
  uint64_t one = 1;
  if (write(impl.wake_fd, &one, sizeof(one)) != sizeof(one)) {
    spdlog::error("stats endpoint {}: cannot wake the accept thread: {}", impl.where,
                  std::strerror(errno));
  }
  impl.accept_thread.join();
  // Only the accept thread adds connections; cut the open ones so that
  // blocked waits return, then join them.
  std::list<Impl::Connection> all;
  {
    MutexLock lock(impl.mu);
    for (Impl::Connection& conn : impl.connections) {
      if (conn.fd >= 0) shutdown(conn.fd, SHUT_RDWR);
    }
    all.splice(all.end(), impl.connections);
  }
  for (Impl::Connection& conn : all) conn.thread.join();
}

namespace {

// Binds and listens on the first address `host` resolves to. SO_REUSEADDR
// only: SO_REUSEPORT (httplib's default) would let a second agent bind the
// same port and silently split scrapes between the two.
Result<int> Listen(const std::string& listen, const ListenAddress& addr) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string port = std::to_string(addr.port);
  int rc = getaddrinfo(addr.host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    return Status::Error(Code::kIoError, "cannot listen on \"" + listen +
                                             "\" for the stats endpoint: " + gai_strerror(rc));
  }
  int err = EADDRNOTAVAIL;
  int fd = -1;
  for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (ai->ai_family == AF_INET6) {
      int no = 0;  // [::] takes IPv4 too, as httplib does
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &no, sizeof(no));
    }
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, kListenBacklog) != 0) {
      err = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) {
    return Status::Error(
        Code::kIoError,
        "cannot listen on \"" + listen + "\" for the stats endpoint: " + std::strerror(err), err);
  }
  return fd;
}

int BoundPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
}

}  // namespace

Result<std::unique_ptr<StatsServer>> StatsServer::Start(const std::string& listen,
                                                        metrics::Registry& registry,
                                                        std::function<nlohmann::json()> stats_json,
                                                        bool allow_non_loopback,
                                                        const StatsLimits& limits,
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
  if (limits.max_connections == 0 || limits.max_requests_per_connection == 0) {
    return Status::Error(Code::kInvalidArgument,
                         "stats endpoint: max_connections and max_requests_per_connection must "
                         "be > 0");
  }

  auto impl = std::make_unique<Impl>(registry, limits);
  httplib::Server& server = impl->http;
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

  Result<int> fd = Listen(listen, *addr);
  if (!fd.ok()) return fd.status();
  impl->listen_fd = *fd;
  int port = BoundPort(impl->listen_fd);
  impl->where = (addr->host.find(':') != std::string::npos ? "[" + addr->host + "]" : addr->host) +
                ":" + std::to_string(port);
  impl->wake_fd = eventfd(0, EFD_CLOEXEC);
  if (impl->wake_fd < 0) {
    return Status::Error(Code::kOsError, std::string("eventfd: ") + std::strerror(errno), errno);
  }
  Impl* raw = impl.get();
  raw->accept_thread = std::thread([raw] { raw->AcceptLoop(); });
  spdlog::info("stats endpoint listening on {}", raw->where);
  return std::unique_ptr<StatsServer>(new StatsServer(std::move(impl), port));
}

}  // namespace goldcache::agent
