#include "agent/control_client.h"

#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <vector>

#include "agent/control_server.h"

namespace goldcache::agent {
namespace {

// Answers are small except `list`/`stats` on a big farm; this only guards
// against a runaway peer.
constexpr size_t kMaxAnswerLineBytes = 256u << 20;

// Closes the descriptor on every return path.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// "run as root or as a member of the X group", naming the group the socket
// file actually belongs to, when one is allowed at all.
std::string WhoMayUse(const std::string& socket_path) {
  struct stat st;
  if (stat(socket_path.c_str(), &st) != 0 || st.st_gid == 0 || !(st.st_mode & S_IWGRP)) {
    return "run as root (no group is allowed on this socket: see [control] group)";
  }
  std::vector<char> buf(4096);
  group grp;
  group* found = nullptr;
  std::string name = std::to_string(st.st_gid);
  if (getgrgid_r(st.st_gid, &grp, buf.data(), buf.size(), &found) == 0 && found != nullptr) {
    name = found->gr_name;
  }
  return "run as root or as a member of the " + name + " group";
}

Status PermissionDenied(const std::string& socket_path) {
  return Status::Error(Code::kOsError,
                       "permission denied on " + socket_path + ": " + WhoMayUse(socket_path),
                       EACCES);
}

Status ConnectError(int err, const std::string& path) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return Status::Error(Code::kNotFound,
                           "goldcached is not running (no control socket at " + path + ")", ENOENT);
    case ECONNREFUSED:
      return Status::Error(Code::kOsError, "goldcached is not running (stale socket " + path + ")",
                           ECONNREFUSED);
    case EACCES:
    case EPERM:
      return PermissionDenied(path);
    default:
      return Status::Error(Code::kOsError,
                           "cannot connect to goldcached at " + path + ": " + std::strerror(err),
                           err);
  }
}

Code CodeFromName(const std::string& name) {
  for (Code code : {Code::kNotFound, Code::kExists, Code::kReadOnly, Code::kNoSpace, Code::kIoError,
                    Code::kTimedOut, Code::kCorruption, Code::kStale, Code::kInvalidArgument,
                    Code::kNotSupported, Code::kOsError}) {
    if (ErrorCodeName(code) == name) return code;
  }
  if (name == "bad-request") return Code::kInvalidArgument;
  if (name == "busy") return Code::kTimedOut;
  return Code::kIoError;  // "internal" and codes from a newer agent
}

Status ProtocolError(const std::string& path, const std::string& what) {
  return Status::Error(Code::kIoError, "goldcached at " + path + " " + what);
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

Result<nlohmann::json> ControlClient::Call(const std::string& socket_path,
                                           const nlohmann::json& request,
                                           ProgressCallback on_progress) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return Status::Error(Code::kInvalidArgument,
                         "control socket path \"" + socket_path + "\" is empty or longer than " +
                             std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());

  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return Status::FromErrno(errno, "socket");
  while (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EINTR) return ConnectError(errno, socket_path);
  }

  // A send can fail because the agent refused us and closed already; its
  // answer is still readable, so report that rather than the EPIPE.
  bool sent = SendAll(
      fd.get(), request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  int send_errno = errno;

  std::string pending;
  char buf[64 * 1024];
  while (true) {
    size_t newline;
    while ((newline = pending.find('\n')) != std::string::npos) {
      nlohmann::json message =
          nlohmann::json::parse(std::string_view(pending).substr(0, newline), nullptr, false);
      pending.erase(0, newline + 1);
      if (message.is_discarded() || !message.is_object()) {
        return ProtocolError(socket_path, "sent a line that is not a JSON object");
      }
      if (auto progress = message.find("progress"); progress != message.end()) {
        if (on_progress) on_progress(*progress);
        continue;
      }
      auto ok = message.find("ok");
      if (ok == message.end() || !ok->is_boolean()) {
        return ProtocolError(socket_path, "sent an answer without \"ok\"");
      }
      if (ok->get<bool>()) {
        auto result = message.find("result");
        return result == message.end() ? nlohmann::json() : std::move(*result);
      }
      std::string error = message.value("error", std::string("unspecified error"));
      std::string code = message.value("code", std::string());
      if (code == "permission-denied") return Status::Error(Code::kOsError, error, EACCES);
      return Status::Error(CodeFromName(code), error);
    }
    if (pending.size() > kMaxAnswerLineBytes) {
      return ProtocolError(socket_path, "sent an answer line over 256 MiB");
    }
    ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Error(Code::kIoError, "lost the connection to goldcached at " + socket_path +
                                               ": " + std::strerror(errno));
    }
    if (n == 0) {
      if (!sent) {
        return Status::Error(Code::kIoError, "cannot send the request to goldcached at " +
                                                 socket_path + ": " + std::strerror(send_errno));
      }
      return ProtocolError(socket_path,
                           "closed the connection without an answer (did the agent stop?)");
    }
    pending.append(buf, static_cast<size_t>(n));
  }
}

bool ControlClient::AgentNotRunning(const Status& status) {
  return !status.ok() && (status.os_errno() == ENOENT || status.os_errno() == ECONNREFUSED);
}

}  // namespace goldcache::agent
