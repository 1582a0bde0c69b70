// The read-only HTTP endpoint for monitoring:
//   GET /metrics  Prometheus text format 0.0.4 (the registry, then whatever
//                 `more_metrics` returns: families the registry does not have)
//   GET /stats    JSON for people and the CLI (whatever stats_json returns)
//   GET /healthz  "ok\n"
// Other paths answer 404; other methods 405 (HEAD is served like GET). The
// endpoint has no authentication, so it binds to loopback unless the
// operator explicitly allows otherwise.
//
// Threads: serves on its own threads. `stats_json`, `more_metrics` and the
// registry's callback gauges are called from them, concurrently with the rest of the
// agent; both must be thread-safe.
//
// Ownership: `registry` and whatever the functions capture must outlive the
// StatsServer. The destructor stops the server and joins its threads.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "metrics/metrics.h"
#include "util/status.h"

namespace httplib {
class Server;
}

namespace goldcache::agent {

struct ListenAddress {
  std::string host;  // without brackets for IPv6
  int port = 0;
};
// "HOST:PORT" or "[IPV6]:PORT"; kInvalidArgument saying what is wrong.
Result<ListenAddress> ParseListenAddress(const std::string& listen);
// Literal loopback addresses and "localhost": any other host name could
// resolve anywhere, so it counts as non-loopback.
bool IsLoopbackHost(const std::string& host);

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
