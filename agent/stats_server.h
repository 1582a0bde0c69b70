// The read-only HTTP endpoint for monitoring:
//   GET /metrics  Prometheus text format 0.0.4 (the registry, then whatever
//                 `more_metrics` returns: families the registry does not have)
//   GET /stats    JSON for people and the CLI (whatever stats_json returns)
//   GET /healthz  "ok\n"
// Other paths answer 404; other methods 405 (HEAD is served like GET). The
// endpoint has no authentication, so it binds to loopback unless the
// operator explicitly allows otherwise.
//
// Connections: httplib parses requests and writes answers, but the server
// owns its sockets, so that no client can hold the endpoint: each
// connection is served on a thread of its own, at most
// StatsLimits::max_connections at once (one more is answered 503 and
// closed); a connection that sends nothing for idle_timeout is closed; a
// request must be read and answered within request_deadline of its first
// byte, however slowly its client trickles it (slowloris), or the
// connection is cut. Refused and cut connections count in
// goldcache_errors_total{kind="stats_busy"|"stats_slow_client"} and are
// logged (at most once a minute each). Stopping cuts every connection.
//
// Threads: an accept thread and one per connection. `stats_json`,
// `more_metrics` and the registry's callback gauges are called from them,
// concurrently with the rest of the agent and with each other; all must be
// thread-safe.
//
// Ownership: `registry` and whatever the functions capture must outlive the
// StatsServer. The destructor stops the server and joins its threads.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/listen_address.h"
#include "metrics/metrics.h"
#include "util/status.h"

namespace goldcache::agent {

struct StatsLimits {
  // Connections served at once: a scraper, a person and room for a few
  // stuck clients.
  size_t max_connections = 32;
  // A connection that says nothing (a new one, or one kept alive between
  // requests) is closed after this long.
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(2)};
  // From a request's first byte until its answer is written.
  std::chrono::milliseconds request_deadline{std::chrono::seconds(5)};
  // Requests on one kept-alive connection; the last answer closes it.
  size_t max_requests_per_connection = 100;
};

class StatsServer {
 public:
  // `listen` is "HOST:PORT" or "[IPV6]:PORT"; port 0 picks a free port (see
  // port()). Returns once the socket is bound and accepting connections.
  // Errors: kInvalidArgument for a malformed address, or for a non-loopback
  // one when `allow_non_loopback` is false; kIoError naming the address when
  // it cannot be bound (in use, not local).
  static Result<std::unique_ptr<StatsServer>> Start(const std::string& listen,
                                                    metrics::Registry& registry,
                                                    std::function<nlohmann::json()> stats_json,
                                                    bool allow_non_loopback = false,
                                                    const StatsLimits& limits = {},
                                                    std::function<std::string()> more_metrics = {});
  ~StatsServer();
  StatsServer(const StatsServer&) = delete;
  StatsServer& operator=(const StatsServer&) = delete;

  // The bound port (the ephemeral one when Start was given port 0).
  int port() const { return port_; }

 private:
  struct Impl;
  StatsServer(std::unique_ptr<Impl> impl, int port);

  std::unique_ptr<Impl> impl_;
  const int port_;
};

}  // namespace goldcache::agent
