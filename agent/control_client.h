// The client side of the control socket (protocol in control_server.h),
// shared by the `goldcache` CLI and the tests.
//
// Thread safety: the functions keep no state; concurrent calls are fine.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "util/status.h"

namespace goldcache::agent {

class ControlClient {
 public:
  using ProgressCallback = std::function<void(const nlohmann::json&)>;

  // Sends `request` to the agent listening on `socket_path` and waits for the
  // final answer, calling `on_progress` (on this thread, in order) with each
  // progress message that comes first. Returns the answer's "result" (null
  // when the agent sent none). No timeout: a warm runs as long as it runs.
  //
  // Errors, with messages meant for an operator:
  //   - the agent is not there (see AgentNotRunning):
  //       "goldcached is not running (no control socket at PATH)"
  //       "goldcached is not running (stale socket PATH)"
  //   - kOsError with EACCES: "permission denied on PATH: run as root or as a
  //     member of the GROUP group" when the socket file's mode keeps the
  //     caller out, or the agent's "permission denied: ..." when it refuses
  //     the caller's credentials;
  //   - the agent's own error, with its message and its Code (os_errno 0);
  //     protocol codes map to kInvalidArgument ("bad-request"), kTimedOut
  //     ("busy") and kIoError ("internal", or a code this client predates);
  //   - kIoError when the agent hangs up without a final answer or sends
  //     something that is not the protocol.
  static Result<nlohmann::json> Call(const std::string& socket_path, const nlohmann::json& request,
                                     ProgressCallback on_progress = {});

  // True when a Call failed because no agent listens on the socket (as
  // opposed to the agent answering with an error).
  static bool AgentNotRunning(const Status& status);
};

}  // namespace goldcache::agent
