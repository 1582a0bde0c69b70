#include "agent/control_server.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <fstream>
#include <list>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "util/mutex.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59  // Linux 4.13; older libc headers lack the name
#endif

namespace goldcache::agent {
namespace {

// A client that connects and says nothing must not hold a connection slot
// for long; the CLI writes its request right after connecting.
constexpr int kRequestTimeoutSeconds = 10;
// A client that stops reading (suspended CLI) blocks its handler's progress
// calls at most this long before they report the client gone.
constexpr int kSendTimeoutSeconds = 30;
constexpr int kListenBacklog = 64;

std::string ErrnoText(int err) { return std::strerror(err); }

Status OsError(int err, const std::string& what) {
  return Status::Error(Code::kOsError, what + ": " + ErrnoText(err), err);
}

std::string GroupName(gid_t gid) {
  std::vector<char> buf(4096);
  group grp;
  group* found = nullptr;
  while (getgrgid_r(gid, &grp, buf.data(), buf.size(), &found) == ERANGE &&
         buf.size() < (1 << 20)) {
    buf.resize(buf.size() * 2);
  }
  if (found != nullptr) return found->gr_name;
  return std::to_string(gid);
}

bool FillAddress(const std::string& path, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr->sun_path)) return false;
  std::memcpy(addr->sun_path, path.data(), path.size());
  return true;
}

// mkdir -p with mode 0755 for the parts that are missing; existing parts are
// left as they are (the operator may have made /run/goldcache 0750).
Status MakeParentDirectories(const std::string& socket_path) {
  size_t slash = socket_path.rfind('/');
  if (slash == std::string::npos || slash == 0) return Status::Ok();
  std::string dir = socket_path.substr(0, slash);
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    std::string part = dir.substr(0, pos);
    if (mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) {
      return OsError(errno, "cannot create directory " + part + " for the control socket");
    }
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return OsError(errno, "cannot use directory " + dir);
  if (!S_ISDIR(st.st_mode)) {
    return Status::Error(Code::kInvalidArgument, dir + " is not a directory");
  }
  return Status::Ok();
}

// Removes a socket file nobody listens on (left by a crashed agent). A live
// socket or a file of another kind is left alone and reported.
Status ClearStaleSocket(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return OsError(errno, "cannot inspect control socket " + path);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return Status::Error(Code::kExists,
                         path +
                             " exists and is not a socket; not replacing it with the control "
                             "socket (remove it or choose another socket path)");
  }
  int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return OsError(errno, "socket");
  int rc = connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  int err = errno;
  close(probe);
  if (rc == 0) {
    return Status::Error(Code::kExists, "another goldcached is running on " + path);
  }
  if (err != ECONNREFUSED) return OsError(err, "cannot probe existing control socket " + path);
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return OsError(errno, "cannot remove stale control socket " + path);
  }
  spdlog::info("removed stale control socket {} (left by an agent that did not stop cleanly)",
               path);
  return Status::Ok();
}

// The peer's supplementary groups as of connect(). SO_PEERGROUPS is exact and
// race-free; /proc is the fallback for kernels before 4.13.
std::vector<gid_t> PeerGroups(int fd, pid_t pid) {
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 2; ++attempt) {
    socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      return groups;
    }
    if (errno != ERANGE) break;
    groups.resize(len / sizeof(gid_t) + 1);
  }
  groups.clear();
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Groups:", 0) != 0) continue;
    std::istringstream in(line.substr(7));
    unsigned long gid;
    while (in >> gid) groups.push_back(static_cast<gid_t>(gid));
    break;
  }
  return groups;
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;  // EPIPE: client gone; EAGAIN: send timeout
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string Line(const nlohmann::json& message) {
  // Handlers may put file names with invalid UTF-8 into answers; replace the
  // bad bytes rather than throw.
  return message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

nlohmann::json ErrorAnswer(const std::string& message, const std::string& code) {
  return {{"ok", false}, {"error", message}, {"code", code}};
}

enum class ReadOutcome { kLine, kTooLarge, kClosed, kFailed };

// Reads up to the first newline (excluded); a request without a final
// newline before EOF is taken as it is.
ReadOutcome ReadRequestLine(int fd, std::string* line) {
  line->clear();
  char buf[64 * 1024];
  while (true) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ReadOutcome::kFailed;
    }
    if (n == 0) return line->empty() ? ReadOutcome::kClosed : ReadOutcome::kLine;
    std::string_view chunk(buf, static_cast<size_t>(n));
    size_t newline = chunk.find('\n');
    line->append(chunk.substr(0, newline));
    if (line->size() > kMaxRequestBytes) return ReadOutcome::kTooLarge;
    if (newline != std::string_view::npos) return ReadOutcome::kLine;
  }
}

void SetTimeout(int fd, int option, int seconds) {
  timeval tv{};
  tv.tv_sec = seconds;
  setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv));
}

}  // namespace

std::string ErrorCodeName(Code code) {
  std::string name = CodeName(code);
  for (char& c : name) {
    if (c == ' ') c = '-';
  }
  return name;
}

struct ControlServer::Impl {
  struct Connection {
    Connection(int fd_in, Mutex& mu_in) : mu(mu_in), fd(fd_in) {}
    Mutex& mu;              // the Impl's
    int fd GUARDED_BY(mu);  // -1 once the connection's thread has closed it
    bool done GUARDED_BY(mu) = false;
    std::thread thread;
  };

  ControlOptions opts;
  Handler handler;
  std::string refusal;                // the message for a peer that may not use the socket
  metrics::Counter own_bad_requests;  // used when opts.registry is null
  metrics::Counter* bad_requests = &own_bad_requests;
  int listen_fd = -1;
  int wake_fd = -1;  // eventfd: written once by the destructor
  dev_t socket_dev = 0;
  ino_t socket_ino = 0;
  std::thread accept_thread;
  std::atomic<bool> stopping{false};

  // Lock order: mu is a leaf; never held while calling the handler or
  // blocking on a socket.
  Mutex mu;
  std::list<Connection> connections GUARDED_BY(mu);

  ~Impl() {
    if (listen_fd >= 0) close(listen_fd);
    if (wake_fd >= 0) close(wake_fd);
  }

  bool PeerAllowed(int fd, std::string* who) const;
  void AcceptLoop() EXCLUDES(mu);
  void ReapFinished() EXCLUDES(mu);
  void Serve(Connection* conn) EXCLUDES(mu);
  nlohmann::json Answer(const std::string& line, const Progress& progress, const std::string& who);
  // Counts and logs a request that never reaches the handler.
  nlohmann::json Refuse(const std::string& message, const std::string& who);
};

bool ControlServer::Impl::PeerAllowed(int fd, std::string* who) const {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    *who = "unknown peer";
    return false;
  }
  *who = "uid " + std::to_string(cred.uid) + " (pid " + std::to_string(cred.pid) + ")";
  if (cred.uid == 0 || cred.uid == geteuid()) return true;
  if (!opts.group) return false;
  if (cred.gid == *opts.group) return true;
  for (gid_t gid : PeerGroups(fd, cred.pid)) {
    if (gid == *opts.group) return true;
  }
  return false;
}

void ControlServer::Impl::ReapFinished() {
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

void ControlServer::Impl::AcceptLoop() {
  pollfd fds[2] = {{listen_fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  while (!stopping) {
    int rc = poll(fds, 2, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      spdlog::error("control socket {}: poll failed: {}; no longer accepting commands",
                    opts.socket_path, ErrnoText(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EINTR || err == EAGAIN || err == ECONNABORTED) continue;
      spdlog::warn("control socket {}: accept failed: {}", opts.socket_path, ErrnoText(err));
      if (err == EMFILE || err == ENFILE || err == ENOMEM || err == ENOBUFS) {
        // Out of descriptors or memory: back off rather than spin.
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      continue;
    }
    ReapFinished();
    {
      MutexLock lock(mu);
      if (connections.size() < opts.max_connections) {
        Connection& conn = connections.emplace_back(fd, mu);
        conn.thread = std::thread([this, &conn] { Serve(&conn); });
        continue;
      }
    }
    SetTimeout(fd, SO_SNDTIMEO, 1);
    SendAll(fd, Line(ErrorAnswer("busy: " + std::to_string(opts.max_connections) +
                                     " control commands are already running; try again later",
                                 "busy")));
    close(fd);
  }
}

void ControlServer::Impl::Serve(Connection* conn) {
  int fd;
  {
    MutexLock lock(conn->mu);
    fd = conn->fd;  // stays open until this thread closes it below
  }
  std::string who;
  if (!PeerAllowed(fd, &who)) {
    spdlog::warn("control socket {}: refused {}", opts.socket_path, who);
    SetTimeout(fd, SO_SNDTIMEO, 1);
    SendAll(fd, Line(ErrorAnswer(refusal, "permission-denied")));
  } else {
    SetTimeout(fd, SO_RCVTIMEO, kRequestTimeoutSeconds);
    SetTimeout(fd, SO_SNDTIMEO, kSendTimeoutSeconds);
    std::string line;
    nlohmann::json answer;
    switch (ReadRequestLine(fd, &line)) {
      case ReadOutcome::kLine: {
        // A handler may report from several worker threads; one line at a
        // time keeps them whole.
        Mutex send_mu;
        Progress progress([this, fd, &send_mu](const nlohmann::json& message) {
          std::string text = Line(nlohmann::json{{"progress", message}});
          MutexLock lock(send_mu);
          return !stopping && SendAll(fd, text);
        });
        answer = Answer(line, progress, who);
        break;
      }
      case ReadOutcome::kTooLarge:
        answer =
            Refuse("request larger than " + std::to_string(kMaxRequestBytes >> 20) + " MiB", who);
        break;
      case ReadOutcome::kFailed:
        answer = Refuse(
            "no complete request within " + std::to_string(kRequestTimeoutSeconds) + " s", who);
        break;
      case ReadOutcome::kClosed:
        break;
    }
    if (!answer.is_null() && !stopping) SendAll(fd, Line(answer));
  }
  MutexLock lock(conn->mu);
  close(fd);
  conn->fd = -1;
  conn->done = true;
}

nlohmann::json ControlServer::Impl::Refuse(const std::string& message, const std::string& who) {
  bad_requests->Add();
  spdlog::warn("control socket {}: refused a request from {}: {}", opts.socket_path, who, message);
  return ErrorAnswer(message, "bad-request");
}

nlohmann::json ControlServer::Impl::Answer(const std::string& line, const Progress& progress,
                                           const std::string& who) {
  Result<ControlRequest> decoded = DecodeControlRequest(line);
  if (!decoded.ok()) return Refuse(decoded.status().message(), who);
  const nlohmann::json& request = decoded->body;
  const std::string& name = decoded->command;
  // Never dump() the request here: a bounded, flat summary of it.
  spdlog::info("control: {} from {}", SummarizeRequest(request), who);
  try {
    Result<nlohmann::json> result = handler(request, progress);
    if (result.ok()) return {{"ok", true}, {"result", std::move(result).value()}};
    spdlog::info("control: {} from {} failed: {}", SummarizeRequest(name), who,
                 result.status().ToString());
    return ErrorAnswer(result.status().message(), ErrorCodeName(result.status().code()));
  } catch (const std::exception& e) {
    spdlog::error("control: {} from {} threw: {}", SummarizeRequest(name), who, e.what());
    return ErrorAnswer(std::string("internal error in goldcached: ") + e.what(), "internal");
  } catch (...) {
    spdlog::error("control: {} from {} threw a non-exception", SummarizeRequest(name), who);
    return ErrorAnswer("internal error in goldcached", "internal");
  }
}

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

const std::string& ControlServer::socket_path() const { return impl_->opts.socket_path; }

ControlServer::~ControlServer() {
  Impl& impl = *impl_;
  impl.stopping = true;
  uint64_t one = 1;
  if (write(impl.wake_fd, &one, sizeof(one)) != sizeof(one)) {
    spdlog::error("control socket {}: cannot wake the accept thread: {}", impl.opts.socket_path,
                  ErrnoText(errno));
  }
  impl.accept_thread.join();
  close(impl.listen_fd);
  impl.listen_fd = -1;
  // Only the accept thread adds connections, so the list's shape is fixed
  // from here on; cut the open ones so blocked reads and writes return.
  std::list<Impl::Connection> all;
  {
    MutexLock lock(impl.mu);
    for (Impl::Connection& conn : impl.connections) {
      if (conn.fd >= 0) shutdown(conn.fd, SHUT_RDWR);
    }
    all.splice(all.end(), impl.connections);
  }
  for (Impl::Connection& conn : all) conn.thread.join();
  // Remove the socket file only if it is still ours: an operator may have
  // started another agent on the same path after moving this one aside.
  struct stat st;
  if (lstat(impl.opts.socket_path.c_str(), &st) == 0 && st.st_dev == impl.socket_dev &&
      st.st_ino == impl.socket_ino) {
    unlink(impl.opts.socket_path.c_str());
  }
}

Result<std::unique_ptr<ControlServer>> ControlServer::Start(const ControlOptions& opts,
                                                            Handler handler) {
  const std::string& path = opts.socket_path;
  sockaddr_un addr;
  if (!FillAddress(path, &addr)) {
    return Status::Error(Code::kInvalidArgument,
                         "control socket path \"" + path + "\" is empty or longer than " +
                             std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  if (opts.max_connections == 0) {
    return Status::Error(Code::kInvalidArgument, "control socket: max_connections must be > 0");
  }
  GC_RETURN_IF_ERROR(MakeParentDirectories(path));
  GC_RETURN_IF_ERROR(ClearStaleSocket(path, addr));

  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  impl->handler = std::move(handler);
  if (opts.registry != nullptr) {
    impl->bad_requests = &opts.registry->GetCounter("goldcache_errors_total", "Errors by kind.",
                                                    {{"kind", "control_bad_request"}});
  }
  impl->refusal = "permission denied: the goldcache control socket is for root";
  if (opts.group) impl->refusal += " (or group " + GroupName(*opts.group) + ")";

  impl->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (impl->listen_fd < 0) return OsError(errno, "cannot create the control socket");
  if (bind(impl->listen_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno == EADDRINUSE) {
      return Status::Error(Code::kExists, "another goldcached is running on " + path);
    }
    return OsError(errno, "cannot bind control socket " + path);
  }
  // Nobody can connect before listen(), so tightening the mode after bind
  // leaves no window.
  auto fail = [&](const std::string& what) {
    Status status = OsError(errno, what);
    unlink(path.c_str());
    return status;
  };
  if (chmod(path.c_str(), opts.group ? 0660 : 0600) != 0) {
    return fail("cannot set the mode of control socket " + path);
  }
  if (opts.group && chown(path.c_str(), static_cast<uid_t>(-1), *opts.group) != 0) {
    return fail("cannot give control socket " + path + " to group " + GroupName(*opts.group));
  }
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return fail("cannot inspect control socket " + path);
  impl->socket_dev = st.st_dev;
  impl->socket_ino = st.st_ino;
  if (listen(impl->listen_fd, kListenBacklog) != 0) {
    return fail("cannot listen on control socket " + path);
  }
  impl->wake_fd = eventfd(0, EFD_CLOEXEC);
  if (impl->wake_fd < 0) return fail("eventfd");

  Impl* raw = impl.get();
  raw->accept_thread = std::thread([raw] { raw->AcceptLoop(); });
  spdlog::info("control socket listening on {} (root{})", path,
               opts.group ? " and group " + GroupName(*opts.group) : std::string(" only"));
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(impl)));
}

}  // namespace goldcache::agent
