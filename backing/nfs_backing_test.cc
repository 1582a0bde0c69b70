// The nfs:// backing against a real NFS server: nfs-ganesha on loopback,
// started for this suite by tests/integration/nfsrig.py over a temporary
// export, on free ports. What the tests write through the Backing they check
// in the export directory, and the other way round.
//
// Cleanup of the server, whatever happens: TearDownTestSuite stops it; a
// static guard stops it on any other normal exit; and the rig's watchdog
// (--owner-pid) stops it when this process dies without either (a crash, a
// ctest timeout's SIGKILL). Everything is stopped by PID.
#include "backing/nfs_backing.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#ifndef GOLDCACHE_NFSRIG
#error "GOLDCACHE_NFSRIG must name tests/integration/nfsrig.py"
#endif

namespace goldcache::backing {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

bool GaneshaInstalled() {
  for (const char* dir : {"/usr/bin", "/usr/sbin", "/bin", "/sbin"}) {
    if (::access((std::string(dir) + "/ganesha.nfsd").c_str(), X_OK) == 0) return true;
  }
  return false;
}

std::string Python() {
  return ::access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
}

// Runs nfsrig.py with `args`; returns its exit code, stdout+stderr in *out.
int Rig(const std::string& args, std::string* out = nullptr) {
  std::string cmd = Python() + " " + GOLDCACHE_NFSRIG + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  int status = ::pclose(p);
  if (out != nullptr) *out = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(gen());
  return s;
}

// The suite's NFS server. Process-wide so that the guard below can stop it
// however the process ends.
struct Server {
  std::string dir;  // /tmp/goldcache-nfs-backing.XXXXXX
  std::string export_dir;
  std::string state_dir;
  std::string url;    // the export's root, version 3
  std::string error;  // why the rig did not start; empty when it did
  bool running = false;

  void Stop() {
    if (!running) return;
    running = false;
    std::string out;
    if (Rig("stop --state " + state_dir, &out) != 0) {
      fprintf(stderr, "nfs_backing_test: stopping the NFS rig failed:\n%s", out.c_str());
    }
  }
  ~Server() { Stop(); }  // the guard: normal exits that skipped TearDownTestSuite
};
Server server;

class NfsBackingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!GaneshaInstalled()) {
      fprintf(stderr,
              "\n*** nfs_backing_test: SKIPPING EVERY TEST: ganesha.nfsd is not installed.\n"
              "*** The nfs:// backing is NOT tested. Install nfs-ganesha nfs-ganesha-vfs rpcbind\n"
              "*** libnfs-utils (scripts/setup.sh does).\n\n");
      return;
    }
    // No ASSERT here: gtest reports a fatal failure in SetUpTestSuite as a
    // skip of every test, and ctest counts skips as fine. SetUp fails each
    // test with this instead.
    char tmpl[] = "/tmp/goldcache-nfs-backing.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      server.error = "mkdtemp failed";
      return;
    }
    server.dir = tmpl;
    server.export_dir = server.dir + "/export";
    server.state_dir = server.dir + "/state";
    std::filesystem::create_directory(server.export_dir);
    std::string out;
    int rc = Rig("start " + server.export_dir + " --state " + server.state_dir +
                     " --port 0 --mnt-port 0 --owner-pid " + std::to_string(::getpid()),
                 &out);
    server.running = true;  // stop whatever part of it did start
    if (rc != 0) {
      server.error = "nfsrig.py start failed:\n" + out;
      return;
    }
    server.url = out.substr(0, out.find('\n'));
    if (server.url.rfind("nfs://", 0) != 0) server.error = "nfsrig.py printed no URL:\n" + out;
  }

  static void TearDownTestSuite() {
    server.Stop();
    if (!server.dir.empty()) std::filesystem::remove_all(server.dir);
  }

  void SetUp() override {
    if (!GaneshaInstalled()) GTEST_SKIP() << "ganesha.nfsd is not installed: nfs:// NOT tested";
    ASSERT_TRUE(server.error.empty()) << server.error;
    ASSERT_FALSE(server.url.empty()) << "the NFS rig did not start";
    // Each test works in its own directory of the export.
    test_dir_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::create_directory(Local(""));
  }

  void TearDown() override {
    // A test that stopped or paused the server leaves it serving for the next.
    if (!server.running) return;
    Rig("resume-ganesha --state " + server.state_dir);
    Rig("start-ganesha --state " + server.state_dir);
  }

  // The URL of this test's directory, e.g. nfs://127.0.0.1/tmp/.../export/Name?...
  std::string Url(const std::string& version = "3") const {
    std::string url = server.url;
    url.insert(url.find('?'), "/" + test_dir_);
    if (version != "3") url.replace(url.find("version=3"), 9, "version=" + version);
    return url;
  }

  std::unique_ptr<Backing> Open(NfsOptions options = {}) {
    auto b = OpenNfsBacking(Url(), options);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    return b.ok() ? std::move(*b) : nullptr;
  }

  std::string Local(const std::string& rel) const {
    return server.export_dir + "/" + test_dir_ + (rel.empty() ? "" : "/" + rel);
  }
  void WriteLocal(const std::string& rel, const std::string& content) {
    std::ofstream(Local(rel), std::ios::binary) << content;
  }
  std::string ReadLocal(const std::string& rel) {
    std::ifstream in(Local(rel), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  std::string test_dir_;
};

TEST_F(NfsBackingTest, StatAndReadMatchTheExportByteForByte) {
  // Larger than ganesha's 1 MiB READ maximum: one ReadAt spans several RPCs.
  const std::string content = RandomBytes(3 * 1024 * 1024 + 123, 1);
  WriteLocal("t.img", content);
  auto b = Open();
  ASSERT_NE(b, nullptr);

  auto st = b->Stat("t.img");
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  struct stat local;
  ASSERT_EQ(::lstat(Local("t.img").c_str(), &local), 0);
  EXPECT_TRUE(S_ISREG(st->st_mode));
  EXPECT_EQ(st->st_mode, local.st_mode);
  EXPECT_EQ(st->st_size, local.st_size);
  EXPECT_EQ(st->st_ino, local.st_ino);
  EXPECT_EQ(st->st_mtim.tv_sec, local.st_mtim.tv_sec);
  EXPECT_EQ(st->st_mtim.tv_nsec, local.st_mtim.tv_nsec);

  auto root = b->Stat("");
  ASSERT_TRUE(root.ok()) << root.status().ToString();
  EXPECT_TRUE(S_ISDIR(root->st_mode));

  auto f = b->Open("t.img", O_RDONLY | O_DIRECT);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::string all(content.size() + 100, '\0');
  auto n = (*f)->ReadAt(0, all);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  ASSERT_EQ(*n, content.size());  // short only at end of file
  EXPECT_TRUE(all.substr(0, *n) == content);

  std::string part(4096, '\0');
  n = (*f)->ReadAt(1024 * 1024 - 100, part);  // across a READ boundary
  ASSERT_TRUE(n.ok());
  EXPECT_TRUE(part == content.substr(1024 * 1024 - 100, 4096));
  n = (*f)->ReadAt(content.size() + 10, part);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);

  auto fst = (*f)->Stat();
  ASSERT_TRUE(fst.ok()) << fst.status().ToString();
  EXPECT_EQ(fst->st_size, local.st_size);
}

TEST_F(NfsBackingTest, ReadDirListsEntriesWithTheirAttributes) {
  WriteLocal("a.img", "aaaa");
  std::filesystem::create_directory(Local("sub"));
  std::filesystem::create_symlink("a.img", Local("link"));
  auto b = Open();
  ASSERT_NE(b, nullptr);

  auto entries = b->ReadDir("");
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  std::set<std::string> names;
  for (const DirEntry& e : *entries) {
    names.insert(e.name);
    struct stat local;
    ASSERT_EQ(::lstat(Local(e.name).c_str(), &local), 0) << e.name;
    EXPECT_EQ(e.st.st_mode, local.st_mode) << e.name;
    EXPECT_EQ(e.st.st_ino, local.st_ino) << e.name;
    if (S_ISREG(local.st_mode)) {
      EXPECT_EQ(e.st.st_size, 4) << e.name;
    }
  }
  EXPECT_EQ(names, (std::set<std::string>{"a.img", "sub", "link"}));

  auto link = b->Stat("link");
  ASSERT_TRUE(link.ok());
  EXPECT_TRUE(S_ISLNK(link->st_mode));
  auto target = b->ReadLink("link");
  ASSERT_TRUE(target.ok()) << target.status().ToString();
  EXPECT_EQ(*target, "a.img");

  auto empty = b->ReadDir("sub");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST_F(NfsBackingTest, CreateWriteRenameUnlinkShowInTheExport) {
  auto b = Open();
  ASSERT_NE(b, nullptr);
  const std::string content = RandomBytes(2 * 1024 * 1024 + 7, 2);  // > 1 MiB WRITE maximum
  {
    auto f = b->Create("new.bin", O_RDWR | O_EXCL, 0640);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    auto n = (*f)->WriteAt(0, content);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    EXPECT_EQ(*n, content.size());
    ASSERT_TRUE((*f)->Sync(false).ok());
    auto st = (*f)->Stat();
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(static_cast<size_t>(st->st_size), content.size());
  }
  EXPECT_TRUE(ReadLocal("new.bin") == content);
  struct stat local;
  ASSERT_EQ(::stat(Local("new.bin").c_str(), &local), 0);
  EXPECT_EQ(local.st_mode & 07777, 0640u);

  auto again = b->Create("new.bin", O_RDWR | O_EXCL, 0640);
  EXPECT_EQ(again.status().code(), Code::kExists);

  ASSERT_TRUE(b->Rename("new.bin", "renamed.bin", 0).ok());
  EXPECT_FALSE(std::filesystem::exists(Local("new.bin")));
  EXPECT_TRUE(ReadLocal("renamed.bin") == content);
  Status s = b->Rename("renamed.bin", "x", RENAME_NOREPLACE);
  EXPECT_EQ(s.code(), Code::kNotSupported) << s.ToString();

  ASSERT_TRUE(b->Truncate("renamed.bin", 10).ok());
  EXPECT_EQ(std::filesystem::file_size(Local("renamed.bin")), 10u);
  ASSERT_TRUE(b->Chmod("renamed.bin", 0604).ok());
  ASSERT_EQ(::stat(Local("renamed.bin").c_str(), &local), 0);
  EXPECT_EQ(local.st_mode & 07777, 0604u);
  const uid_t uid = local.st_uid;
  ASSERT_TRUE(b->Chown("renamed.bin", static_cast<uid_t>(-1), 4242).ok());
  ASSERT_EQ(::stat(Local("renamed.bin").c_str(), &local), 0);
  EXPECT_EQ(local.st_gid, 4242u);
  EXPECT_EQ(local.st_uid, uid);

  struct timespec times[2] = {{1000000000, 123456000}, {1100000000, 654321000}};
  ASSERT_TRUE(b->Utimens("renamed.bin", times).ok());
  ASSERT_EQ(::stat(Local("renamed.bin").c_str(), &local), 0);
  EXPECT_EQ(local.st_atim.tv_sec, 1000000000);
  EXPECT_EQ(local.st_mtim.tv_sec, 1100000000);
  EXPECT_EQ(local.st_mtim.tv_nsec, 654321000);
  struct timespec only_atime[2] = {{1200000000, 0}, {0, UTIME_OMIT}};
  ASSERT_TRUE(b->Utimens("renamed.bin", only_atime).ok());
  ASSERT_EQ(::stat(Local("renamed.bin").c_str(), &local), 0);
  EXPECT_EQ(local.st_atim.tv_sec, 1200000000);
  EXPECT_EQ(local.st_mtim.tv_sec, 1100000000);

  ASSERT_TRUE(b->Link("renamed.bin", "hard").ok());
  ASSERT_TRUE(b->Symlink("renamed.bin", "soft").ok());
  EXPECT_EQ(std::filesystem::read_symlink(Local("soft")), "renamed.bin");
  ASSERT_EQ(::stat(Local("hard").c_str(), &local), 0);
  EXPECT_EQ(local.st_nlink, 2u);

  ASSERT_TRUE(b->Unlink("renamed.bin").ok());
  ASSERT_TRUE(b->Unlink("hard").ok());
  EXPECT_FALSE(std::filesystem::exists(Local("renamed.bin")));
  EXPECT_EQ(b->Unlink("renamed.bin").code(), Code::kNotFound);

  ASSERT_TRUE(b->Mkdir("d", 0750).ok());
  ASSERT_EQ(::stat(Local("d").c_str(), &local), 0);
  EXPECT_TRUE(S_ISDIR(local.st_mode));
  EXPECT_EQ(local.st_mode & 07777, 0750u);
  ASSERT_TRUE(b->Rmdir("d").ok());
  EXPECT_FALSE(std::filesystem::exists(Local("d")));

  auto fs = b->StatFs();
  ASSERT_TRUE(fs.ok()) << fs.status().ToString();
  EXPECT_GT(fs->f_blocks, 0u);
}

TEST_F(NfsBackingTest, ErrorsAreValuesWithTheServersAnswer) {
  WriteLocal("ro.img", "data");
  auto b = Open();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->Stat("missing").status().code(), Code::kNotFound);
  EXPECT_EQ(b->Open("missing", O_RDONLY).status().code(), Code::kNotFound);
  EXPECT_EQ(b->Stat("../etc").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(b->Rmdir("ro.img").os_errno(), ENOTDIR);

  auto f = b->Open("ro.img", O_RDONLY);
  ASSERT_TRUE(f.ok());
  auto w = (*f)->WriteAt(0, std::string("x"));
  EXPECT_EQ(w.status().code(), Code::kReadOnly);
  EXPECT_EQ((*f)->Allocate(0, 0, 4096).code(), Code::kNotSupported);
  EXPECT_EQ(ReadLocal("ro.img"), "data");
}

TEST_F(NfsBackingTest, OpenRejectsBadUrlsAndUnreachableServers) {
  auto bad = OpenNfsBacking("nfs://", {});
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument) << bad.status().ToString();
  auto not_nfs = OpenNfsBacking("/mnt/nfs/ds1", {});
  EXPECT_EQ(not_nfs.status().code(), Code::kInvalidArgument);
  auto v4 = OpenNfsBacking(Url("4"), {});
  EXPECT_EQ(v4.status().code(), Code::kNotSupported) << v4.status().ToString();
  auto zero = OpenNfsBacking(Url(), {.timeout = 0ms});
  EXPECT_EQ(zero.status().code(), Code::kInvalidArgument);

  // A port nothing listens on: the mount fails, promptly, naming the URL.
  const std::string url = "nfs://127.0.0.1/nowhere?nfsport=1&mountport=1&version=3";
  auto start = Clock::now();
  auto down = OpenNfsBacking(url, {.timeout = 2000ms});
  EXPECT_FALSE(down.ok());
  EXPECT_NE(down.status().message().find(url), std::string::npos) << down.status().ToString();
  EXPECT_LT(Clock::now() - start, 5s);

  // ganesha answers a missing directory with MNT3ERR_ACCES: its answer, kept.
  std::string missing = Url();
  missing.insert(missing.find('?'), "/no-such-dir");
  auto no_export = OpenNfsBacking(missing, {.timeout = 2000ms});
  EXPECT_FALSE(no_export.ok());
  EXPECT_NE(no_export.status().message().find("no-such-dir"), std::string::npos);
}

TEST_F(NfsBackingTest, EightThreadsReadOneFileConcurrently) {
  const std::string content = RandomBytes(8 * 1024 * 1024, 3);
  WriteLocal("t.img", content);
  auto b = Open({.timeout = 30000ms, .connections = 4});
  ASSERT_NE(b, nullptr);
  auto f = b->Open("t.img", O_RDONLY);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  BackingFile* file = f->get();

  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 gen(t);
      std::string buf(256 * 1024, '\0');
      for (int i = 0; i < 40; ++i) {
        uint64_t off = gen() % (content.size() - buf.size() / 2);  // some reads cross EOF
        auto n = file->ReadAt(off, buf);
        if (!n.ok()) {
          ++failures;
          continue;
        }
        size_t want = std::min(buf.size(), content.size() - off);
        if (*n != want || buf.compare(0, want, content, off, want) != 0) ++mismatches;
        if (i % 10 == 0 && !b->Stat("t.img").ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_F(NfsBackingTest, OutageFailsWithinTimeoutAndTheSameBackingRecovers) {
  const std::string content = RandomBytes(2 * 1024 * 1024, 4);
  WriteLocal("t.img", content);
  constexpr auto kTimeout = 2000ms;
  auto b = Open({.timeout = kTimeout, .connections = 2});
  ASSERT_NE(b, nullptr);
  auto f = b->Open("t.img", O_RDONLY);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::string buf(64 * 1024, '\0');
  ASSERT_TRUE((*f)->ReadAt(0, buf).ok());

  std::string out;
  ASSERT_EQ(Rig("stop-ganesha --state " + server.state_dir, &out), 0) << out;
  for (int attempt = 0; attempt < 2; ++attempt) {  // the second finds the session already down
    auto start = Clock::now();
    auto n = (*f)->ReadAt(1024 * 1024, buf);
    auto elapsed = Clock::now() - start;
    ASSERT_FALSE(n.ok());
    EXPECT_EQ(n.status().code(), Code::kTimedOut) << n.status().ToString();
    EXPECT_LT(elapsed, kTimeout + 3s);
  }
  auto st = b->Stat("t.img");
  EXPECT_EQ(st.status().code(), Code::kTimedOut) << st.status().ToString();

  ASSERT_EQ(Rig("start-ganesha --state " + server.state_dir, &out), 0) << out;
  auto n = (*f)->ReadAt(1024 * 1024, buf);  // same Backing, same file: no re-open
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_TRUE(buf == content.substr(1024 * 1024, buf.size()));
  EXPECT_TRUE(b->Stat("t.img").ok());
  EXPECT_TRUE(b->Open("t.img", O_RDONLY).ok());
}

TEST_F(NfsBackingTest, HungServerFailsWithinTimeoutAndRecoversWhenItAnswers) {
  // SIGSTOP: the TCP sessions stay up and the server just never answers,
  // which is what a wedged filer looks like; nothing fails fast here.
  const std::string content = RandomBytes(1024 * 1024, 5);
  WriteLocal("t.img", content);
  constexpr auto kTimeout = 2000ms;
  auto b = Open({.timeout = kTimeout, .connections = 1});
  ASSERT_NE(b, nullptr);
  auto f = b->Open("t.img", O_RDONLY);
  ASSERT_TRUE(f.ok()) << f.status().ToString();

  std::string out;
  ASSERT_EQ(Rig("pause-ganesha --state " + server.state_dir, &out), 0) << out;
  std::string buf(4096, '\0');
  auto start = Clock::now();
  auto n = (*f)->ReadAt(8192, buf);
  auto elapsed = Clock::now() - start;
  Rig("resume-ganesha --state " + server.state_dir);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Code::kTimedOut) << n.status().ToString();
  EXPECT_LT(elapsed, kTimeout + 3s);

  n = (*f)->ReadAt(8192, buf);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_TRUE(buf == content.substr(8192, 4096));
}

TEST_F(NfsBackingTest, ConnectionsWaitOutAHungServerSideBySide) {
  // Four readers on four connections against a hung server: each one's own
  // RPC times out (none gives up waiting for a busy connection), and they do
  // so together: four RPCs really are in flight at once.
  WriteLocal("t.img", RandomBytes(1024 * 1024, 6));
  constexpr auto kTimeout = 3000ms;
  auto b = Open({.timeout = kTimeout, .connections = 4});
  ASSERT_NE(b, nullptr);
  auto f = b->Open("t.img", O_RDONLY);
  ASSERT_TRUE(f.ok()) << f.status().ToString();

  std::string out;
  ASSERT_EQ(Rig("pause-ganesha --state " + server.state_dir, &out), 0) << out;
  std::atomic<int> rpc_timed_out{0};
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::string buf(4096, '\0');
      auto n = (*f)->ReadAt(t * 65536, buf);
      if (!n.ok() && n.status().code() == Code::kTimedOut &&
          n.status().message().find("no answer from the datastore") != std::string::npos) {
        ++rpc_timed_out;
      }
    });
  }
  for (auto& th : threads) th.join();
  auto elapsed = Clock::now() - start;
  Rig("resume-ganesha --state " + server.state_dir);
  EXPECT_EQ(rpc_timed_out.load(), 4);
  EXPECT_LT(elapsed, kTimeout + 3s);
}

TEST_F(NfsBackingTest, FileReplacedOnTheDatastoreIsStaleNeverMixed) {
  // An open file reaches every connection with its own handle, opened by
  // path on first use. After the path is replaced (a new template generation
  // renamed over the old one), a handle opened later must not read the new
  // file: each read returns the old bytes or fails with kStale.
  const std::string old_content(256 * 1024, 'o');
  WriteLocal("t.img", old_content);
  auto b = Open({.timeout = 30000ms, .connections = 4});
  ASSERT_NE(b, nullptr);
  auto f = b->Open("t.img", O_RDONLY);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  WriteLocal("t.img.new", std::string(256 * 1024, 'n'));
  ASSERT_EQ(::rename(Local("t.img.new").c_str(), Local("t.img").c_str()), 0);

  std::atomic<int> mixed{0}, other_errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      std::string buf(64 * 1024, '\0');
      for (int i = 0; i < 10; ++i) {
        auto n = (*f)->ReadAt(0, buf);
        if (n.ok()) {
          if (buf.find('n') != std::string::npos) ++mixed;
        } else if (n.status().code() != Code::kStale) {
          ++other_errors;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mixed.load(), 0);
  EXPECT_EQ(other_errors.load(), 0);
}

TEST_F(NfsBackingTest, FilesOutliveTheirBacking) {
  WriteLocal("t.img", "still readable");
  auto b = Open();
  ASSERT_NE(b, nullptr);
  auto f = b->Open("t.img", O_RDONLY);
  ASSERT_TRUE(f.ok());
  b.reset();
  std::string buf(14, '\0');
  auto n = (*f)->ReadAt(0, buf);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(buf, "still readable");
}

TEST_F(NfsBackingTest, DescribesItselfByUrl) {
  auto b = Open();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->Describe(), Url());
  EXPECT_TRUE(IsNfsUrl(Url()));
  EXPECT_FALSE(IsNfsUrl("/mnt/nfs/ds1"));
}

}  // namespace
}  // namespace goldcache::backing
