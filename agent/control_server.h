// The control socket: how the `goldcache` CLI asks the agent to do things
// (warm, reset, evict, check) and to report (status, stats, list). Unlike
// the stats endpoint it can change state, so only root and, optionally, one
// configured group may use it.
//
// Protocol: newline-delimited JSON over a Unix stream socket, one request per
// connection. The client sends one object with a string "command" and that
// command's arguments, then a newline:
//   {"command": "warm", "path": "/run/goldcache/ds1/templates/win11.img"}
// The server answers with zero or more progress lines, then exactly one final
// line, then closes the connection:
//   {"progress": {"done_bytes": 1048576, "total_bytes": 4294967296}}
//   {"ok": true, "result": {...}}
//   {"ok": false, "error": "a readable message", "code": "read-only"}
// "code" is the goldcache Code of the failure (ErrorCodeName) or one of the
// protocol's own: "permission-denied", "bad-request" (not JSON, no command,
// over kMaxRequestBytes, nested deeper than kMaxRequestDepth: see
// control_protocol.h), "busy" (too many connections), "internal" (the
// handler threw). Refused requests count in
// goldcache_errors_total{kind="control_bad_request"} and are logged.
//
// Access control, twice: the socket file is mode 0660 owned by root:group
// (0600 without a group), and each accepted peer's credentials (SO_PEERCRED)
// must show uid 0, the agent's own uid, or `group` as its primary or a
// supplementary group. Others get a "permission-denied" answer.
//
// Threads: the server accepts on its own thread and runs each connection on
// a thread of its own, at most `max_connections` at once (more are answered
// "busy"). The handler is therefore called concurrently and must be
// thread-safe.
//
// Ownership: whatever the handler captures must outlive the ControlServer.
// The destructor stops accepting, cuts open connections (a handler's next
// progress call returns false), waits for running handlers to return, and
// removes the socket file.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "agent/control_protocol.h"
#include "metrics/metrics.h"
#include "util/status.h"

namespace goldcache::agent {

inline constexpr char kDefaultControlSocket[] = "/run/goldcache/goldcached.sock";

struct ControlOptions {
  std::string socket_path = kDefaultControlSocket;
  // Besides root, members of this group may use the socket.
  std::optional<gid_t> group;
  // Connections served at once; further ones are answered "busy".
  size_t max_connections = 16;
  // Where refused requests are counted; none when null. Must outlive the
  // server.
  metrics::Registry* registry = nullptr;
};

// Lets a long command (warm, check) stream progress to its client.
class Progress {
 public:
  using Sink = std::function<bool(const nlohmann::json&)>;
  // A Progress without a sink drops every message (and reports success).
  Progress() = default;
  explicit Progress(Sink sink) : sink_(std::move(sink)) {}

  // Sends {"progress": message} to the client. Returns false when the client
  // has gone away (the operator pressed ^C) or the server is stopping; the
  // handler should then wind down, as nobody will read its answer. Blocks
  // while the client is not reading, for at most 30 s. May be called from
  // several threads, but only until the handler returns.
  bool operator()(const nlohmann::json& message) const { return sink_ ? sink_(message) : true; }

 private:
  Sink sink_;
};

// Computes the answer to one request (the whole request object, "command"
// included). An error Status becomes {"ok": false, ...} with its message.
using ControlHandler =
    std::function<Result<nlohmann::json>(const nlohmann::json& request, const Progress& progress)>;

class ControlServer {
 public:
  using Handler = ControlHandler;

  // Creates the socket's parent directory if missing (mode 0755), replaces a
  // stale socket file left by a crashed agent, binds, sets mode and owner,
  // and listens. Returns once clients can connect.
  // Errors: kExists "another goldcached is running on PATH" when something
  // answers on the socket; kInvalidArgument for a path too long for a Unix
  // socket; kOsError/kIoError naming the path and the system call otherwise
  // (including a non-socket file in the way, which is never removed).
  static Result<std::unique_ptr<ControlServer>> Start(const ControlOptions& opts, Handler handler);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  const std::string& socket_path() const;

 private:
  struct Impl;
  explicit ControlServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

// The "code" a failure carries on the wire: CodeName with dashes
// ("not-found", "read-only", "no-space", ...).
std::string ErrorCodeName(Code code);

}  // namespace goldcache::agent
