#include "fuse/mount.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>

#include "fuse/adapter.h"

namespace goldcache::fuse {
namespace {

// ---------------------------------------------------------------------------
// libfuse's own messages ("fuse: reading device: ...") go to the agent's log.

void FuseLogToSpdlog(enum fuse_log_level level, const char* fmt, va_list ap) {
  char buf[1024];
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  std::string_view msg(buf);
  while (!msg.empty() && msg.back() == '\n') msg.remove_suffix(1);
  switch (level) {
    case FUSE_LOG_EMERG:
    case FUSE_LOG_ALERT:
    case FUSE_LOG_CRIT:
    case FUSE_LOG_ERR:
      spdlog::error("libfuse: {}", msg);
      break;
    case FUSE_LOG_WARNING:
      spdlog::warn("libfuse: {}", msg);
      break;
    case FUSE_LOG_NOTICE:
    case FUSE_LOG_INFO:
      spdlog::info("libfuse: {}", msg);
      break;
    case FUSE_LOG_DEBUG:
      spdlog::debug("libfuse: {}", msg);
      break;
  }
}

// ---------------------------------------------------------------------------
// Stop signals. libfuse's fuse_set_signal_handlers() only sets the session's
// exit flag, which wakes nobody when the signal lands on a thread outside the
// loop (in the agent: any of its other threads), and it serves one session
// per process. Instead, the handler writes a byte to the wake pipe of every
// running Mount (write(2) is async-signal-safe); each Mount's watcher thread
// then stops its loop.

constexpr std::array<int, 3> kStopSignals = {SIGHUP, SIGINT, SIGTERM};
constexpr size_t kMaxRunningMounts = 64;

// Wake pipe write ends, stored as fd + 1 so that zero-initialized means empty.
std::atomic<int> g_wake_fds[kMaxRunningMounts];
std::atomic<int> g_handlers_running{0};
std::mutex g_signal_mu;
size_t g_registered = 0;                              // GUARDED_BY(g_signal_mu)
std::array<bool, kStopSignals.size()> g_installed{};  // GUARDED_BY(g_signal_mu)

void OnStopSignal(int /*signo*/) {
  g_handlers_running.fetch_add(1);
  const int saved_errno = errno;
  for (auto& slot : g_wake_fds) {
    int fd = slot.load() - 1;
    if (fd >= 0) {
      char c = 's';
      [[maybe_unused]] ssize_t n = write(fd, &c, 1);  // full pipe: a wake-up is pending anyway
    }
  }
  errno = saved_errno;
  g_handlers_running.fetch_sub(1);
}

// Returns the slot to pass to UnregisterStopSignals, or -1 if none is free.
int RegisterStopSignals(int wake_fd) {
  std::lock_guard lock(g_signal_mu);
  int slot = -1;
  for (size_t i = 0; i < kMaxRunningMounts; ++i) {
    if (g_wake_fds[i].load() == 0) {
      slot = static_cast<int>(i);
      break;
    }
  }
  if (slot < 0) return -1;
  g_wake_fds[slot].store(wake_fd + 1);
  if (g_registered++ == 0) {
    for (size_t i = 0; i < kStopSignals.size(); ++i) {
      struct sigaction old {};
      if (sigaction(kStopSignals[i], nullptr, &old) != 0) continue;
      // Respect a handler (or SIG_IGN) that the process chose itself.
      if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) continue;
      struct sigaction sa {};
      sa.sa_handler = &OnStopSignal;
      sigemptyset(&sa.sa_mask);
      sa.sa_flags = SA_RESTART;
      g_installed[i] = sigaction(kStopSignals[i], &sa, nullptr) == 0;
    }
  }
  return slot;
}

void UnregisterStopSignals(int slot) {
  if (slot < 0) return;
  std::lock_guard lock(g_signal_mu);
  g_wake_fds[slot].store(0);
  // A handler that read the fd before the store may still be writing to it;
  // the caller closes the fd next, so wait those handlers out (they are a
  // few instructions long and never block).
  while (g_handlers_running.load() != 0) std::this_thread::yield();
  if (--g_registered == 0) {
    for (size_t i = 0; i < kStopSignals.size(); ++i) {
      if (!g_installed[i]) continue;
      struct sigaction cur {};
      if (sigaction(kStopSignals[i], nullptr, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) &&
          cur.sa_handler == &OnStopSignal) {
        signal(kStopSignals[i], SIG_DFL);
      }
      g_installed[i] = false;
    }
  }
}

// ---------------------------------------------------------------------------
// Mountpoint checks.

// /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
std::string UnescapeMountinfo(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  auto octal = [](char c) { return c >= '0' && c <= '7'; };
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && octal(s[i + 1]) && octal(s[i + 2]) && octal(s[i + 3])) {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

// The device ("major:minor") of the topmost mount at `path` (canonical) in
// this process's mount namespace, or nullopt if `path` is not a mount point.
std::optional<std::string> MountDevice(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  std::optional<std::string> device;
  while (std::getline(in, line)) {
    // id parent major:minor root mount_point options ...
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point;
    if (!(fields >> id >> parent >> devno >> root >> mount_point)) continue;
    if (UnescapeMountinfo(mount_point) == path) device = devno;  // later lines are on top
  }
  return device;
}

// The kernel caps FUSE readahead at the bdi default (128 KiB) whatever INIT
// asks for; sequential buffered reads of a template (qemu-img convert, a VM
// with cache=writeback) want the full 1 MiB. Best effort: needs root.
void RaiseReadahead(const std::string& mountpoint) {
  std::optional<std::string> device = MountDevice(mountpoint);
  if (!device) return;
  std::ofstream ra("/sys/class/bdi/" + *device + "/read_ahead_kb");
  ra << (kMaxRequestBytes / 1024);
  ra.flush();
  if (!ra) spdlog::debug("fuse: could not raise readahead of {}", mountpoint);
}

bool IsDisconnected(int err) { return err == ENOTCONN || err == ECONNABORTED; }

// Checks the mountpoint and returns its canonical path.
Result<std::string> PrepareMountpoint(const std::string& mountpoint) {
  if (mountpoint.empty()) {
    return Status::Error(Code::kInvalidArgument, "no mountpoint given");
  }
  // A FUSE mount whose daemon died (our previous run, killed) stays until
  // someone unmounts it. statvfs always asks the daemon, so it tells such a
  // mount at once; stat may still answer from the kernel's attribute cache
  // for a while after the crash.
  struct statvfs vfs;
  bool stale = statvfs(mountpoint.c_str(), &vfs) != 0 && IsDisconnected(errno);
  struct stat st;
  if (stale || stat(mountpoint.c_str(), &st) != 0) {
    int err = stale ? ENOTCONN : errno;
    if (!IsDisconnected(err)) {
      if (err == ENOENT) {
        return Status::Error(Code::kNotFound, "mountpoint " + mountpoint + " does not exist",
                             ENOENT);
      }
      return Status::FromErrno(err, "mountpoint " + mountpoint);
    }
    spdlog::warn("fuse: {} is a stale FUSE mount (a crashed agent?); detaching it", mountpoint);
    if (umount2(mountpoint.c_str(), MNT_DETACH) != 0) {
      return Status::FromErrno(errno, "detaching stale mount at " + mountpoint);
    }
    if (stat(mountpoint.c_str(), &st) != 0) {
      return Status::FromErrno(errno, "mountpoint " + mountpoint + " after detaching stale mount");
    }
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::Error(Code::kInvalidArgument, "mountpoint " + mountpoint + " is not a directory",
                         ENOTDIR);
  }
  char* resolved = realpath(mountpoint.c_str(), nullptr);
  if (resolved == nullptr) return Status::FromErrno(errno, "resolving mountpoint " + mountpoint);
  std::string canonical(resolved);
  std::free(resolved);
  if (MountDevice(canonical)) {
    return Status::Error(Code::kExists,
                         "mountpoint " + canonical +
                             " is already a mount (another agent serving it? unmount it first)",
                         EBUSY);
  }
  return canonical;
}

// libfuse splits -o values at commas; a comma or backslash in a value (an
// fsname naming an nfs:// URL) must be escaped.
std::string EscapeOptionValue(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

Mount::Mount(std::string mountpoint, const MountOptions& options, std::unique_ptr<Adapter> adapter)
    : mountpoint_(std::move(mountpoint)), options_(options), adapter_(std::move(adapter)) {}

Result<std::unique_ptr<Mount>> Mount::Create(FileSystem& fs, const MountOptions& options) {
  static std::once_flag log_once;
  std::call_once(log_once, [] { fuse_set_log_func(&FuseLogToSpdlog); });

  Result<std::string> mountpoint = PrepareMountpoint(options.mountpoint);
  if (!mountpoint.ok()) return mountpoint.status();

  std::string mount_options = "fsname=" + EscapeOptionValue(options.fsname) +
                              ",subtype=" + EscapeOptionValue(options.subtype) +
                              ",default_permissions,max_read=" + std::to_string(kMaxRequestBytes);
  if (options.allow_other) mount_options += ",allow_other";
  fuse_args args = FUSE_ARGS_INIT(0, nullptr);
  bool args_ok = fuse_opt_add_arg(&args, "goldcached") == 0 && fuse_opt_add_arg(&args, "-o") == 0 &&
                 fuse_opt_add_arg(&args, mount_options.c_str()) == 0 &&
                 (!options.debug || fuse_opt_add_arg(&args, "-d") == 0);
  if (!args_ok) {
    fuse_opt_free_args(&args);
    return Status::Error(Code::kNoSpace, "out of memory building FUSE options");
  }

  AdapterOptions adapter_options;
  adapter_options.entry_timeout = options.entry_timeout;
  adapter_options.attr_timeout = options.attr_timeout;
  adapter_options.max_background = std::max(options.max_threads, 12u);
  auto adapter = std::make_unique<Adapter>(fs, adapter_options);

  fuse_session* session =
      fuse_session_new(&args, &Adapter::Ops(), sizeof(fuse_lowlevel_ops), adapter.get());
  fuse_opt_free_args(&args);
  if (session == nullptr) {
    return Status::Error(Code::kInvalidArgument,
                         "creating the FUSE session for " + *mountpoint + " failed (see log)");
  }
  if (fuse_session_mount(session, mountpoint->c_str()) != 0) {
    fuse_session_destroy(session);
    return Status::Error(Code::kOsError, "mounting FUSE at " + *mountpoint + " failed (see log)");
  }

  RaiseReadahead(*mountpoint);

  adapter->SetSession(session);
  fs.AttachKernelCache(adapter.get());
  std::unique_ptr<Mount> mount(new Mount(*mountpoint, options, std::move(adapter)));
  mount->fs_ = &fs;
  mount->session_ = session;
  mount->mounted_ = true;
  spdlog::info("fuse: mounted {} at {} (fuse.{})", options.fsname, mount->mountpoint_,
               options.subtype);
  return mount;
}

Status Mount::Run() {
  int pipe_fds[2];
  {
    std::lock_guard lock(mu_);
    if (ran_) {
      return Status::Error(Code::kInvalidArgument, "Run() called twice for " + mountpoint_);
    }
    ran_ = true;
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe2");
    // The signal handler must never block on a full pipe.
    fcntl(pipe_fds[1], F_SETFL, O_NONBLOCK);
    wake_write_fd_ = pipe_fds[1];
    if (exit_requested_) {
      char c = 'e';
      [[maybe_unused]] ssize_t n = write(wake_write_fd_, &c, 1);
    }
  }
  watcher_ = std::thread(&Mount::Watch, this, pipe_fds[0]);
  const int signal_slot = RegisterStopSignals(pipe_fds[1]);
  if (signal_slot < 0) {
    spdlog::warn("fuse: too many mounts running; {} does not stop on signals", mountpoint_);
  }

  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, 0);
  fuse_loop_cfg_set_idle_threads(config, options_.max_idle_threads);
  fuse_loop_cfg_set_max_threads(config, options_.max_threads);
  spdlog::info("fuse: serving {}", mountpoint_);
  const int rc = fuse_session_loop_mt(session_, config);
  fuse_loop_cfg_destroy(config);

  UnregisterStopSignals(signal_slot);
  {
    std::lock_guard lock(mu_);
    wake_write_fd_ = -1;
  }
  // Unmounting closes the session's /dev/fuse fd, which fails any request
  // still queued in the kernel, including the watcher's wake-up statfs.
  Unmount();
  char quit = 'q';
  [[maybe_unused]] ssize_t n = write(pipe_fds[1], &quit, 1);
  watcher_.join();
  close(pipe_fds[0]);
  close(pipe_fds[1]);

  if (rc < 0) return Status::FromErrno(-rc, "FUSE session for " + mountpoint_);
  return Status::Ok();  // rc > 0 would be a signal number: also a clean stop
}

void Mount::Watch(int wake_fd) {
  bool stopping = false;
  for (;;) {
    char c;
    ssize_t n = read(wake_fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == 'q') return;
    if (stopping) continue;
    stopping = true;
    if (c == 's') spdlog::info("fuse: stop signal received, stopping {}", mountpoint_);
    // libfuse 3.14's loop sleeps until a worker finishes, and workers sleep
    // in read(/dev/fuse): setting the exit flag alone wakes no one. So ask
    // the adapter to end the session after its next STATFS reply, and send
    // one. The statfs either completes or, if the session already ended, is
    // failed when Run() unmounts.
    adapter_->RequestExit(session_);
    struct statfs ignored;
    statfs(mountpoint_.c_str(), &ignored);
  }
}

void Mount::Exit() {
  std::lock_guard lock(mu_);
  exit_requested_ = true;
  if (wake_write_fd_ >= 0) {
    char c = 'e';
    [[maybe_unused]] ssize_t n = write(wake_write_fd_, &c, 1);
  }
}

size_t Mount::node_count() const { return adapter_->inodes().size(); }

void Mount::Unmount() {
  if (!mounted_) return;
  fuse_session_unmount(session_);
  mounted_ = false;
  spdlog::info("fuse: unmounted {}", mountpoint_);
}

Mount::~Mount() {
  if (fs_ != nullptr) fs_->AttachKernelCache(nullptr);
  adapter_->SetSession(nullptr);
  Unmount();
  if (session_ != nullptr) fuse_session_destroy(session_);
}

}  // namespace goldcache::fuse
