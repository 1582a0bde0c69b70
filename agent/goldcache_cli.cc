// goldcache: the operator's command line for the agent on this host. Each
// subcommand sends one request over the control socket (control_server.h)
// and prints the answer readably, or as JSON with --json.
//
// Exit status: 0 done, 1 the agent answered with an error (or refused us),
// 2 bad command-line input, 3 the agent is not running.
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/control_client.h"
#include "agent/control_server.h"
#include "agent/top.h"
#include "util/units.h"

namespace goldcache::cli {
namespace {

using nlohmann::json;
using Lines = std::vector<std::string>;

constexpr int kExitOk = 0;
constexpr int kExitAgentError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNotRunning = 3;

// ---------------------------------------------------------------------------
// Rendering an answer for a person. The agent's answers are plain JSON whose
// shape may grow; the renderer knows no command, only shapes:
//   object                  "key: value" lines, keys aligned
//   array of flat objects   a table with a header row
//   other arrays            one "- " block per element
// Keys ending in _bytes are sizes (FormatBytes); keys ending in _ratio with a
// value in [0, 1] are percentages.

bool IsScalar(const json& v) { return !v.is_object() && !v.is_array(); }

bool IsScalarArray(const json& v) {
  return v.is_array() && std::all_of(v.begin(), v.end(), IsScalar);
}

// Printed on the key's own line rather than as a nested block.
bool IsInline(const json& v) { return IsScalar(v) || IsScalarArray(v) || v.empty(); }

bool IsFlatObject(const json& v) {
  if (!v.is_object()) return false;
  for (const auto& item : v.items()) {
    if (!IsScalar(item.value()) && !IsScalarArray(item.value())) return false;
  }
  return true;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool IsBytesKey(const std::string& key) { return key == "bytes" || EndsWith(key, "_bytes"); }

std::string FormatScalar(const std::string& key, const json& v) {
  if (v.is_null()) return "-";
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number()) {
    double d = v.get<double>();
    if (IsBytesKey(key) && d >= 0) {
      return FormatBytes(v.is_number_unsigned() ? v.get<uint64_t>()
                                                : static_cast<uint64_t>(std::llround(d)));
    }
    char buf[64];
    if (EndsWith(key, "_ratio") && d >= 0 && d <= 1) {
      std::snprintf(buf, sizeof(buf), "%.1f %%", d * 100);
      return buf;
    }
    if (v.is_number_integer()) return v.dump();
    std::snprintf(buf, sizeof(buf), "%.6g", d);
    return buf;
  }
  if (IsScalarArray(v)) {
    if (v.empty()) return "(none)";
    std::string out;
    for (const json& item : v) {
      if (!out.empty()) out += ", ";
      out += FormatScalar(key, item);
    }
    return out;
  }
  if (v.empty()) return "(none)";
  return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Names that identify a row come first; the rest keep JSON's (sorted) order.
std::vector<std::string> OrderKeys(std::vector<std::string> keys) {
  static const std::vector<std::string> kFirst = {"name", "datastore", "path", "template",
                                                  "desktop"};
  auto rank = [](const std::string& key) {
    auto it = std::find(kFirst.begin(), kFirst.end(), key);
    return static_cast<size_t>(it - kFirst.begin());
  };
  std::stable_sort(keys.begin(), keys.end(),
                   [&](const std::string& a, const std::string& b) { return rank(a) < rank(b); });
  return keys;
}

std::string Pad(std::string s, size_t width, bool right = false) {
  if (s.size() >= width) return s;
  std::string fill(width - s.size(), ' ');
  return right ? fill + s : s + fill;
}

std::string Upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

Lines RenderArray(const json& array);

Lines Indent(const Lines& lines, const std::string& first, const std::string& rest) {
  Lines out;
  for (size_t i = 0; i < lines.size(); ++i) out.push_back((i == 0 ? first : rest) + lines[i]);
  return out;
}

Lines RenderObject(const json& object) {
  std::vector<std::string> keys;
  size_t width = 0;
  for (const auto& item : object.items()) {
    keys.push_back(item.key());
    if (IsInline(item.value())) width = std::max(width, item.key().size() + 1);
  }
  Lines out;
  for (const std::string& key : OrderKeys(keys)) {
    const json& value = object.at(key);
    if (IsInline(value)) {
      out.push_back(Pad(key + ":", width) + " " + FormatScalar(key, value));
      continue;
    }
    out.push_back(key + ":");
    Lines nested = value.is_object() ? RenderObject(value) : RenderArray(value);
    for (std::string& line : Indent(nested, "  ", "  ")) out.push_back(std::move(line));
  }
  return out;
}

Lines RenderTable(const json& rows) {
  std::vector<std::string> columns;
  for (const json& row : rows) {
    for (const auto& item : row.items()) {
      if (std::find(columns.begin(), columns.end(), item.key()) == columns.end()) {
        columns.push_back(item.key());
      }
    }
  }
  std::sort(columns.begin(), columns.end());
  columns = OrderKeys(columns);

  std::vector<Lines> cells(rows.size());
  std::vector<size_t> width(columns.size());
  std::vector<bool> numeric(columns.size(), true);
  for (size_t c = 0; c < columns.size(); ++c) {
    width[c] = columns[c].size();
    for (size_t r = 0; r < rows.size(); ++r) {
      auto it = rows[r].find(columns[c]);
      const json& value = it == rows[r].end() ? json() : *it;
      if (!value.is_null() && !value.is_number()) numeric[c] = false;
      cells[r].push_back(FormatScalar(columns[c], value));
      width[c] = std::max(width[c], cells[r].back().size());
    }
  }
  auto format_row = [&](const Lines& row) {
    std::string line;
    for (size_t c = 0; c < columns.size(); ++c) {
      bool last = c + 1 == columns.size();
      line += (last && !numeric[c]) ? row[c] : Pad(row[c], width[c], numeric[c]);
      if (!last) line += "  ";
    }
    return line;
  };
  Lines header;
  for (const std::string& column : columns) header.push_back(Upper(column));
  Lines out = {format_row(header)};
  for (const Lines& row : cells) out.push_back(format_row(row));
  return out;
}

Lines RenderArray(const json& array) {
  if (!array.empty() && std::all_of(array.begin(), array.end(), IsFlatObject)) {
    return RenderTable(array);
  }
  Lines out;
  for (const json& item : array) {
    Lines block = item.is_object()  ? RenderObject(item)
                  : item.is_array() ? RenderArray(item)
                                    : Lines{FormatScalar("", item)};
    if (block.empty()) block.push_back("(empty)");
    for (std::string& line : Indent(block, "- ", "  ")) out.push_back(std::move(line));
  }
  return out;
}

Lines Render(const json& result) {
  if (result.is_null() || (result.is_object() && result.empty())) return {"ok"};
  if (result.is_object()) return RenderObject(result);
  if (result.is_array()) return result.empty() ? Lines{"(none)"} : RenderArray(result);
  return {FormatScalar("", result)};
}

// ---------------------------------------------------------------------------
// Progress of a long command ({"done_bytes": N, "total_bytes": M}) on
// stderr: a redrawn bar on a terminal, one line per 10 % otherwise (logs,
// cron mails).

std::string FormatDuration(double seconds) {
  long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%ld:%02ld", s / 60, s % 60);
  }
  return buf;
}

int TerminalColumns() {
  winsize ws{};
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

volatile sig_atomic_t g_bar_on_screen = 0;

// ^C during a warm: end the half-drawn bar's line so the shell prompt starts
// on a fresh one, then die of SIGINT as usual.
void OnInterrupt(int sig) {
  if (g_bar_on_screen) {
    ssize_t ignored = write(STDERR_FILENO, "\n", 1);
    (void)ignored;
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

class ProgressDisplay {
 public:
  using Clock = std::chrono::steady_clock;

  ProgressDisplay(std::string label, bool tty) : label_(std::move(label)), tty_(tty) {
    if (tty_) signal(SIGINT, OnInterrupt);
  }

  void Update(const json& message) {
    if (!message.is_object()) return;
    if (auto text = message.find("message"); text != message.end() && text->is_string()) {
      Clear();
      std::cerr << label_ << ": " << text->get<std::string>() << "\n";
    }
    auto done = message.find("done_bytes");
    auto total = message.find("total_bytes");
    if (done == message.end() || total == message.end() || !done->is_number_unsigned() ||
        !total->is_number_unsigned()) {
      return;
    }
    done_ = done->get<uint64_t>();
    total_ = total->get<uint64_t>();
    if (auto unit = message.find("unit"); unit != message.end() && unit->is_string()) {
      unit_ = unit->get<std::string>();  // e.g. "chunks": counts, not bytes
    }
    Clock::time_point now = Clock::now();
    samples_.push_back({now, done_});
    // The rate over the last few seconds follows a datastore that slows
    // down better than the average since the start.
    while (samples_.size() > 2 && now - samples_.front().time > std::chrono::seconds(5)) {
      samples_.pop_front();
    }
    if (tty_) {
      bool finished = done_ >= total_;
      if (finished || !drawn_ || now - last_draw_ >= std::chrono::milliseconds(100)) {
        Draw();
        last_draw_ = now;
      }
    } else {
      int decile = static_cast<int>(Percent() / 10);
      if (decile > last_decile_) {
        last_decile_ = decile;
        std::cerr << label_ << ": " << static_cast<int>(decile * 10) << " % (" << Amount(done_)
                  << " of " << Amount(total_) << Speed(", ") << ")" << std::endl;
      }
    }
  }

  // Ends the bar's line; call before printing anything else.
  void Finish() {
    if (!tty_ || !drawn_) return;
    Draw();
    std::cerr << "\n" << std::flush;
    drawn_ = false;
    g_bar_on_screen = 0;
  }

 private:
  struct Sample {
    Clock::time_point time;
    uint64_t done;
  };

  std::string Amount(uint64_t n) const {
    return unit_.empty() ? FormatBytes(n) : std::to_string(n) + " " + unit_;
  }

  double Percent() const {
    if (total_ == 0) return 100;
    return std::min(100.0, 100.0 * static_cast<double>(done_) / static_cast<double>(total_));
  }

  std::optional<double> Rate() const {
    if (samples_.size() < 2) return std::nullopt;
    double seconds =
        std::chrono::duration<double>(samples_.back().time - samples_.front().time).count();
    if (seconds < 0.25) return std::nullopt;
    return static_cast<double>(samples_.back().done - samples_.front().done) / seconds;
  }

  // ", 180.5 MiB/s, ETA 0:42" or "" before the rate is known.
  std::string Speed(const std::string& sep) const {
    std::optional<double> rate = Rate();
    if (!rate) return "";
    std::string out = sep + Amount(static_cast<uint64_t>(*rate)) + "/s";
    if (*rate > 0 && done_ < total_) {
      out += sep + "ETA " + FormatDuration(static_cast<double>(total_ - done_) / *rate);
    }
    return out;
  }

  void Clear() {
    if (tty_ && drawn_) std::cerr << "\r\033[K";
  }

  void Draw() {
    char pct[16];
    std::snprintf(pct, sizeof(pct), "%5.1f %%", Percent());
    std::string tail =
        std::string(" ") + pct + "  " + Amount(done_) + " / " + Amount(total_) + Speed("  ");
    // A fixed width (room for the longest tail) keeps the bar from jumping
    // as the numbers change length.
    int room = TerminalColumns() - static_cast<int>(label_.size()) - 64;
    size_t width = static_cast<size_t>(std::clamp(room, 10, 40));
    size_t filled = static_cast<size_t>(Percent() / 100 * static_cast<double>(width));
    std::cerr << "\r" << label_ << " [" << std::string(filled, '#')
              << std::string(width - filled, '.') << "]" << tail << "\033[K" << std::flush;
    drawn_ = true;
    g_bar_on_screen = 1;
  }

  const std::string label_;
  const bool tty_;
  std::string unit_;  // empty: bytes
  uint64_t done_ = 0;
  uint64_t total_ = 0;
  std::deque<Sample> samples_;
  bool drawn_ = false;
  Clock::time_point last_draw_;
  int last_decile_ = -1;
};

// ---------------------------------------------------------------------------
// `goldcache top`: two `stats` samples an interval apart make one frame
// (top.h). On a terminal the frames replace each other on the alternate
// screen until `q` or ^C; otherwise (a pipe, --once) they are printed one
// after the other, 80 columns wide.

struct termios g_saved_termios;
volatile sig_atomic_t g_terminal_taken = 0;

constexpr char kLeaveScreen[] = "\033[?25h\033[?1049l";  // cursor on, main screen back

void RestoreTerminal() {
  if (!g_terminal_taken) return;
  g_terminal_taken = 0;
  tcsetattr(STDIN_FILENO, TCSANOW, &g_saved_termios);
  ssize_t ignored = write(STDOUT_FILENO, kLeaveScreen, sizeof(kLeaveScreen) - 1);
  (void)ignored;
}

void OnTopSignal(int sig) {
  RestoreTerminal();
  signal(sig, SIG_DFL);
  raise(sig);
}

// The terminal in top's mode while it lives: keys unbuffered and not
// echoed, the alternate screen, no cursor; put back on every way out.
class TerminalMode {
 public:
  TerminalMode() {
    if (tcgetattr(STDIN_FILENO, &g_saved_termios) != 0) return;
    struct termios raw = g_saved_termios;
    raw.c_lflag &= ~(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    g_terminal_taken = 1;
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) signal(sig, OnTopSignal);
    tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    std::cout << "\033[?1049h\033[?25l" << std::flush;
  }
  ~TerminalMode() { RestoreTerminal(); }
  TerminalMode(const TerminalMode&) = delete;
  TerminalMode& operator=(const TerminalMode&) = delete;
};

// Waits up to `timeout` for a key on the terminal; true when it was `q`.
bool QuitKeyWithin(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{STDIN_FILENO, POLLIN, 0};
    int n = poll(&p, 1, static_cast<int>(left.count()));
    if (n <= 0 || !(p.revents & POLLIN)) {
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      std::this_thread::sleep_until(deadline);  // stdin hung up: just wait
      return false;
    }
    char c = 0;
    if (read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q')) return true;
  }
}

std::pair<int, int> StdoutSize() {
  winsize ws{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
    return {ws.ws_col, ws.ws_row};
  }
  return {80, 0};
}

int RunTop(const std::string& socket, bool once, bool as_json, std::chrono::milliseconds interval) {
  const json request = {{"command", "stats"}};
  auto fail = [](const Status& status) {
    std::cerr << "goldcache: " << status.message() << "\n";
    return agent::ControlClient::AgentNotRunning(status) ? kExitNotRunning : kExitAgentError;
  };
  Result<json> before = agent::ControlClient::Call(socket, request);
  if (!before.ok()) return fail(before.status());

  if (once || as_json) {
    // Two tries: the agent may restart between the samples once.
    for (int attempt = 0; attempt < 2; ++attempt) {
      std::this_thread::sleep_for(interval);
      Result<json> after = agent::ControlClient::Call(socket, request);
      if (!after.ok()) return fail(after.status());
      Result<json> rates = TopRates(*before, *after);
      if (!rates.ok()) {
        before = std::move(after);
        continue;
      }
      if (as_json) {
        std::cout << rates->dump(2, ' ', false, json::error_handler_t::replace) << "\n";
      } else {
        for (const std::string& line : TopFrame(*rates, 80, 0)) std::cout << line << "\n";
      }
      std::cout << std::flush;
      return std::cout.good() ? kExitOk : kExitAgentError;
    }
    std::cerr << "goldcache: the agent restarted twice while sampling\n";
    return kExitAgentError;
  }

  const bool screen = isatty(STDOUT_FILENO) == 1 && isatty(STDIN_FILENO) == 1;
  std::optional<TerminalMode> mode;
  if (screen) mode.emplace();
  std::vector<std::string> frame = {"goldcache top: collecting a second sample..."};
  while (true) {
    if (screen) {
      std::string out = "\033[H";
      for (const std::string& line : frame) out += line + "\033[K\n";
      std::cout << out << "\033[J" << std::flush;
      if (QuitKeyWithin(interval)) return kExitOk;
    } else {
      std::this_thread::sleep_for(interval);
    }
    Result<json> after = agent::ControlClient::Call(socket, request);
    if (!after.ok()) {
      mode.reset();
      return fail(after.status());
    }
    Result<json> rates = TopRates(*before, *after);
    before = std::move(after);
    if (!rates.ok()) {
      frame = {"goldcache top: the agent restarted; collecting again..."};
      continue;
    }
    auto [columns, rows] = screen ? StdoutSize() : std::pair<int, int>{80, 0};
    frame = TopFrame(*rates, columns, screen ? rows - 1 : 0);
    if (!screen) {
      for (const std::string& line : frame) std::cout << line << "\n";
      std::cout << "\n" << std::flush;
      if (!std::cout.good()) return kExitAgentError;
    }
  }
}

// The IO counters of templates and desktops are for --json and `top`
// (rates); a person reading `list` gets the summary columns that fit a
// terminal: a template's read bytes and hit ratio, a desktop's overlay.
void DropIoCounters(json& answer) {
  static const char* kTemplateKeys[] = {"read_ops", "datastore_read_bytes", "read_latency_seconds"};
  static const char* kDesktopKeys[] = {
      "read_ops",  "read_bytes",  "datastore_read_bytes", "hit_ratio",
      "write_ops", "write_bytes", "read_latency_seconds", "write_latency_seconds"};
  if (auto t = answer.find("templates"); t != answer.end() && t->is_array()) {
    for (json& row : *t) {
      for (const char* key : kTemplateKeys) row.erase(key);
    }
  }
  if (auto d = answer.find("desktops"); d != answer.end() && d->is_array()) {
    for (json& row : *d) {
      for (const char* key : kDesktopKeys) row.erase(key);
    }
  }
}

// ---------------------------------------------------------------------------

// Relative paths are the operator's, relative to their shell's directory,
// which the agent does not know.
std::string AbsolutePath(const std::string& path) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  if (ec) return path;
  return abs.lexically_normal().string();
}

int Main(int argc, char** argv) {
  CLI::App app{
      "goldcache: drive the goldcache agent (goldcached) on this host through its control "
      "socket. Needs root or membership in the socket's group."};
  app.require_subcommand(1);
  app.fallthrough();  // global options are accepted after the subcommand too

  std::string socket = agent::kDefaultControlSocket;
  app.add_option("--socket", socket, "the agent's control socket")
      ->envname("GOLDCACHE_SOCKET")
      ->capture_default_str();
  bool as_json = false;
  app.add_flag("--json", as_json, "print the agent's answer as JSON instead of a readable text");
  app.set_version_flag("--version", GOLDCACHE_VERSION);

  app.add_subcommand("status",
                     "show whether the agent is up and what it serves: datastores, mountpoints, "
                     "cache and overlay use");
  app.add_subcommand("stats",
                     "show the numbers behind /stats: cache hit ratio, datastore offload, per "
                     "template and per desktop use");
  app.add_subcommand("list", "list the templates and desktops the agent knows on this host");
  app.add_subcommand(
      "check",
      "verify every chunk in this host's read cache against its checksum; bad chunks are "
      "reported and dropped (the next read fetches them from the datastore again)");

  std::string path;
  bool force = false;
  CLI::App* reset = app.add_subcommand(
      "reset",
      "discard a nonpersistent desktop's local writes (its overlay): the next open starts from "
      "the pristine datastore file; refuses while the desktop is open unless --force");
  reset->add_option("PATH", path, "the desktop's disk file, as seen through the mount")->required();
  reset->add_flag("--force", force,
                  "reset even while the desktop is open (its VM then sees its disk change "
                  "under it: stop the VM first)");

  CLI::App* evict = app.add_subcommand(
      "evict",
      "drop a template's chunks from this host's read cache (and unpin it); later reads fetch "
      "them from the datastore again");
  evict->add_option("PATH", path, "the template file, as seen through the mount")->required();

  bool pin = false;
  std::string rate_text;
  CLI::App* warm = app.add_subcommand(
      "warm",
      "load a template into this host's read cache ahead of a boot storm, showing progress");
  warm->add_option("PATH", path, "the template file, as seen through the mount")->required();
  warm->add_flag("--pin", pin, "keep the template's chunks from eviction until `evict`");
  warm->add_option("--rate", rate_text,
                   "cap the read rate from the datastore, e.g. 100MiB/s (default: no cap)");
  bool boot_set = false;
  warm->add_flag("--boot-set", boot_set,
                 "warm only the chunks a boot reads (the template's boot trace, recorded on this "
                 "host or carried by its manifest), in boot order");

  CLI::App* publish = app.add_subcommand(
      "publish",
      "write the template's manifest beside it on the datastore: the digest of every chunk and "
      "its boot trace. Hosts then fetch only the chunks they do not hold already (a patched "
      "template refetches what changed; a published full clone costs nothing) and prefetch "
      "along the trace. Run it once the file is final; the only datastore write goldcache makes");
  publish->add_option("PATH", path, "the template (or full clone) file, as seen through the mount")
      ->required();

  bool once = false;
  std::string interval_text = "2s";
  CLI::App* top = app.add_subcommand(
      "top",
      "a live view of this host, refreshed like top(1): per datastore the filer's load, per "
      "template and per desktop IOPS, bytes/s, hit ratio, latency and overlay tiers, busiest "
      "first; q quits");
  top->add_flag("--once", once,
                "take two samples an interval apart, print one frame and exit (for scripts; "
                "with --json, the rates as JSON)");
  top->add_option("--interval", interval_text,
                  "time between samples, e.g. 2s (default) or 500ms; at least 100ms");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }

  const std::string command = app.get_subcommands().front()->get_name();
  if (command == "top") {
    Result<std::chrono::milliseconds> interval = ParseDuration(interval_text);
    if (!interval.ok() || *interval < std::chrono::milliseconds(100)) {
      std::cerr << "goldcache: --interval: "
                << (interval.ok() ? "must be at least 100ms" : interval.status().message()) << "\n";
      return kExitUsage;
    }
    return RunTop(socket, once, as_json, *interval);
  }
  json request = {{"command", command}};
  if (command == "reset") {
    request["path"] = AbsolutePath(path);
    request["force"] = force;
  } else if (command == "evict") {
    request["path"] = AbsolutePath(path);
  } else if (command == "publish") {
    request["path"] = AbsolutePath(path);
  } else if (command == "warm") {
    request["path"] = AbsolutePath(path);
    request["pin"] = pin;
    if (boot_set) request["boot_set"] = true;
    if (!rate_text.empty()) {
      std::string size = rate_text;
      if (EndsWith(size, "/s")) size.resize(size.size() - 2);
      Result<uint64_t> rate = ParseSize(size);
      if (!rate.ok() || *rate == 0) {
        std::cerr << "goldcache: --rate: "
                  << (rate.ok() ? "must be more than 0" : rate.status().message())
                  << " (write e.g. 100MiB/s)\n";
        return kExitUsage;
      }
      request["rate_bytes_per_second"] = *rate;
    }
  }

  ProgressDisplay progress(command, isatty(STDERR_FILENO) == 1);
  Result<json> result = agent::ControlClient::Call(
      socket, request, [&progress](const json& message) { progress.Update(message); });
  progress.Finish();
  if (!result.ok()) {
    std::cerr << "goldcache: " << result.status().message() << "\n";
    return agent::ControlClient::AgentNotRunning(result.status()) ? kExitNotRunning
                                                                  : kExitAgentError;
  }
  if (as_json) {
    std::cout << result->dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  } else {
    // Every raw metric is for --json and Prometheus; a person gets the summary.
    if (command == "stats" && result->is_object()) result->erase("metrics");
    if ((command == "stats" || command == "list") && result->is_object()) DropIoCounters(*result);
    for (const std::string& line : Render(*result)) std::cout << line << "\n";
  }
  std::cout << std::flush;
  return std::cout.good() ? kExitOk : kExitAgentError;
}

}  // namespace
}  // namespace goldcache::cli

int main(int argc, char** argv) { return goldcache::cli::Main(argc, argv); }
