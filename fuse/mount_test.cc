// Real FUSE mounts: an in-memory FileSystem served at a temp directory, used
// through plain syscalls, as QEMU and the operator's tools use the mount.
#include "fuse/mount.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

namespace goldcache::fuse {
namespace {

using namespace std::chrono_literals;

#ifndef FUSE_SUPER_MAGIC
#define FUSE_SUPER_MAGIC 0x65735546
#endif

constexpr size_t kMiB = 1 << 20;

// ---------------------------------------------------------------------------
// In-memory FileSystem: a map path -> node. Nodes are shared so that a file
// unlinked while open keeps its data, as on a real file system.

struct MemNode {
  struct stat st {};
  std::string data;    // file content
  std::string target;  // symlink target
};

class MemFs;

class MemFile : public OpenFile {
 public:
  MemFile(MemFs* fs, std::shared_ptr<MemNode> node, int flags)
      : fs_(fs), node_(std::move(node)), flags_(flags) {}
  ~MemFile() override;
  Result<size_t> Read(uint64_t offset, std::span<char> buf) override;
  Result<size_t> Write(uint64_t offset, std::span<const char> buf) override;
  Status Fsync(bool) override { return Status::Ok(); }
  Status Fallocate(int mode, uint64_t offset, uint64_t length) override;
  Result<struct stat> Stat() override;
  Status Truncate(uint64_t size) override;
  PageCache PageCachePolicy() const override;
  Status Flush(bool by_opener) override;
  void Release() override;

 private:
  MemFs* fs_;
  std::shared_ptr<MemNode> node_;
  int flags_;
  int released_ = 0;

 public:
  PageCache page_cache = PageCache::kDrop;
  int flush_error = 0;
  bool throw_on_read = false;
};

class MemFs : public FileSystem {
 public:
  MemFs() { root_ = MakeNode(S_IFDIR | 0755); }

  // Test setup and inspection, bypassing the mount.
  void AddFile(const std::string& path, std::string data) {
    std::lock_guard lock(mu_);
    auto n = MakeNode(S_IFREG | 0644);
    n->data = std::move(data);
    nodes_[path] = n;
  }
  void AddDir(const std::string& path) {
    std::lock_guard lock(mu_);
    nodes_[path] = MakeNode(S_IFDIR | 0755);
  }
  // Opens of this path fail as a template does: writes are EROFS.
  void SetReadOnly(const std::string& path) {
    std::lock_guard lock(mu_);
    read_only_.insert(path);
  }
  // Handles of `path` opened from now on use the page cache so.
  void SetPageCache(const std::string& path, PageCache policy) {
    std::lock_guard lock(mu_);
    page_cache_[path] = policy;
  }
  // close(2) of this path's descriptors fails with `err` (a datastore's
  // lost write).
  void SetFlushError(const std::string& path, int err) {
    std::lock_guard lock(mu_);
    flush_errors_[path] = err;
  }
  int flushes() const { return flushes_.load(); }
  // Replaces a file's content behind the kernel's back (another host wrote it).
  void ReplaceData(const std::string& path, std::string data) {
    std::lock_guard lock(mu_);
    FindLocked(path)->data = std::move(data);
  }
  KernelCache* kernel() {
    std::lock_guard lock(mu_);
    return kernel_;
  }
  void AttachKernelCache(KernelCache* kernel) override {
    std::lock_guard lock(mu_);
    kernel_ = kernel;
  }
  // Reads of this path throw std::bad_alloc (memory pressure).
  void SetThrowingRead(const std::string& path) {
    std::lock_guard lock(mu_);
    throwing_.insert(path);
  }
  // Reads of this path fail as a datastore outage does.
  void SetTimingOut(const std::string& path) {
    std::lock_guard lock(mu_);
    timing_out_.insert(path);
  }
  // Waits (bounded) until every open has been released; false on timeout.
  bool WaitAllReleased(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return releases_ == opens_; });
  }
  int opens() {
    std::lock_guard lock(mu_);
    return opens_;
  }
  int releases() {
    std::lock_guard lock(mu_);
    return releases_;
  }
  int double_releases() {
    std::lock_guard lock(mu_);
    return double_releases_;
  }
  size_t max_read_request() const { return max_read_.load(); }
  size_t max_write_request() const { return max_write_.load(); }
  int last_open_flags() const { return last_open_flags_.load(); }

  // FileSystem.
  Result<struct stat> GetAttr(const std::string& path) override {
    getattr_calls_++;
    std::lock_guard lock(mu_);
    auto n = FindLocked(path);
    if (!n) return NotFound(path);
    return StatOf(*n);
  }
  Result<std::vector<DirEntry>> ReadDir(const std::string& path) override {
    std::lock_guard lock(mu_);
    auto dir = FindLocked(path);
    if (!dir) return NotFound(path);
    if (!S_ISDIR(dir->st.st_mode)) return Status::FromErrno(ENOTDIR, path);
    std::vector<DirEntry> out;
    for (const auto& [p, n] : nodes_) {
      if (ParentOf(p) == path) out.push_back(DirEntry{NameOf(p), StatOf(*n)});
    }
    return out;
  }
  Result<std::string> ReadLink(const std::string& path) override {
    std::lock_guard lock(mu_);
    auto n = FindLocked(path);
    if (!n) return NotFound(path);
    if (!S_ISLNK(n->st.st_mode)) return Status::FromErrno(EINVAL, path);
    return n->target;
  }
  Result<std::unique_ptr<OpenFile>> Open(const std::string& path, int flags) override {
    std::lock_guard lock(mu_);
    auto n = FindLocked(path);
    if (!n) return NotFound(path);
    if (read_only_.count(path) && (flags & O_ACCMODE) != O_RDONLY) {
      return Status::Error(Code::kReadOnly, path + " is a template");
    }
    if (flags & O_TRUNC) n->data.clear();
    last_open_flags_ = flags;
    opens_++;
    auto f = std::make_unique<MemFile>(this, n, timing_out_.count(path) ? -1 : flags);
    if (auto it = page_cache_.find(path); it != page_cache_.end()) f->page_cache = it->second;
    if (auto it = flush_errors_.find(path); it != flush_errors_.end()) f->flush_error = it->second;
    f->throw_on_read = throwing_.count(path) > 0;
    return std::unique_ptr<OpenFile>(std::move(f));
  }
  Result<std::unique_ptr<OpenFile>> Create(const std::string& path, int flags,
                                           mode_t mode) override {
    std::lock_guard lock(mu_);
    auto n = FindLocked(path);
    if (n && (flags & O_EXCL)) return Status::FromErrno(EEXIST, path);
    if (!n) {
      n = MakeNode(S_IFREG | (mode & 07777));
      nodes_[path] = n;
    }
    opens_++;
    std::unique_ptr<OpenFile> f = std::make_unique<MemFile>(this, n, flags);
    return f;
  }
  Result<struct stat> Mkdir(const std::string& path, mode_t mode) override {
    std::lock_guard lock(mu_);
    if (FindLocked(path)) return Status::FromErrno(EEXIST, path);
    auto n = MakeNode(S_IFDIR | (mode & 07777));
    nodes_[path] = n;
    return StatOf(*n);
  }
  Status Unlink(const std::string& path) override {
    std::lock_guard lock(mu_);
    auto n = FindLocked(path);
    if (!n) return NotFound(path);
    if (S_ISDIR(n->st.st_mode)) return Status::FromErrno(EISDIR, path);
    n->st.st_nlink--;
    nodes_.erase(path);
    return Status::Ok();
  }
  Status Rmdir(const std::string& path) override {
    std::lock_guard lock(mu_);
    auto n = FindLocked(path);
    if (!n) return NotFound(path);
    for (const auto& [p, unused] : nodes_) {
      if (ParentOf(p) == path) return Status::FromErrno(ENOTEMPTY, path);
    }
    nodes_.erase(path);
    return Status::Ok();
  }
  Status Rename(const std::string& from, const std::string& to, unsigned flags) override {
    std::lock_guard lock(mu_);
    if (!FindLocked(from)) return NotFound(from);
    if (flags != 0) return Status::FromErrno(EINVAL, "rename flags");
    nodes_.erase(to);
    std::map<std::string, std::shared_ptr<MemNode>> moved;
    for (auto it = nodes_.begin(); it != nodes_.end();) {
      if (it->first == from || it->first.starts_with(from + "/")) {
        moved[to + it->first.substr(from.size())] = it->second;
        it = nodes_.erase(it);
      } else {
        ++it;
      }
    }
    nodes_.merge(moved);
    return Status::Ok();
  }
  Result<struct stat> Symlink(const std::string& target, const std::string& path) override {
    std::lock_guard lock(mu_);
    if (FindLocked(path)) return Status::FromErrno(EEXIST, path);
    auto n = MakeNode(S_IFLNK | 0777);
    n->target = target;
    nodes_[path] = n;
    return StatOf(*n);
  }
  Result<struct stat> Link(const std::string& existing, const std::string& path) override {
    std::lock_guard lock(mu_);
    auto n = FindLocked(existing);
    if (!n) return NotFound(existing);
    if (FindLocked(path)) return Status::FromErrno(EEXIST, path);
    n->st.st_nlink++;
    nodes_[path] = n;
    return StatOf(*n);
  }
  Result<struct stat> SetAttr(const std::string& path, const SetAttrRequest& req,
                              OpenFile* file) override {
    std::lock_guard lock(mu_);
    auto n = FindLocked(path);
    if (!n) return NotFound(path);
    if (req.mode) n->st.st_mode = (n->st.st_mode & S_IFMT) | *req.mode;
    if (req.size) n->data.resize(*req.size);
    if (req.mtime) n->st.st_mtim = req.mtime->tv_nsec == UTIME_NOW ? Now() : *req.mtime;
    if (req.atime) n->st.st_atim = req.atime->tv_nsec == UTIME_NOW ? Now() : *req.atime;
    if (file != nullptr) setattr_with_file_++;
    return StatOf(*n);
  }
  Result<struct statvfs> StatFs() override {
    struct statvfs s {};
    s.f_bsize = 4096;
    s.f_frsize = 4096;
    s.f_blocks = 1000;
    s.f_bfree = 600;
    s.f_bavail = 500;
    s.f_files = 100;
    s.f_ffree = 50;
    s.f_namemax = 255;
    return s;
  }

  std::atomic<int> setattr_with_file_{0};
  std::atomic<int> getattr_calls_{0};

 private:
  friend class MemFile;

  static Status NotFound(const std::string& path) {
    return Status::Error(Code::kNotFound, path + " not found");
  }
  static timespec Now() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts;
  }
  static std::string ParentOf(const std::string& p) {
    size_t slash = p.rfind('/');
    return slash == std::string::npos ? "" : p.substr(0, slash);
  }
  static std::string NameOf(const std::string& p) {
    size_t slash = p.rfind('/');
    return slash == std::string::npos ? p : p.substr(slash + 1);
  }
  std::shared_ptr<MemNode> MakeNode(mode_t mode) {
    auto n = std::make_shared<MemNode>();
    n->st.st_dev = 42;
    n->st.st_ino = next_ino_++;
    n->st.st_mode = mode;
    n->st.st_nlink = S_ISDIR(mode) ? 2 : 1;
    n->st.st_blksize = 4096;
    n->st.st_mtim = n->st.st_atim = n->st.st_ctim = Now();
    return n;
  }
  std::shared_ptr<MemNode> FindLocked(const std::string& path) {
    if (path.empty()) return root_;
    auto it = nodes_.find(path);
    return it == nodes_.end() ? nullptr : it->second;
  }
  static struct stat StatOf(const MemNode& n) {
    struct stat st = n.st;
    if (S_ISREG(st.st_mode)) st.st_size = static_cast<off_t>(n.data.size());
    if (S_ISLNK(st.st_mode)) st.st_size = static_cast<off_t>(n.target.size());
    st.st_blocks = (st.st_size + 511) / 512;
    return st;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<MemNode> root_;
  std::map<std::string, std::shared_ptr<MemNode>> nodes_;
  std::set<std::string> read_only_;
  std::set<std::string> timing_out_;
  std::set<std::string> throwing_;
  std::map<std::string, PageCache> page_cache_;
  std::map<std::string, int> flush_errors_;
  std::atomic<int> flushes_{0};
  KernelCache* kernel_ = nullptr;
  ino_t next_ino_ = 100;
  int opens_ = 0;
  int releases_ = 0;
  int double_releases_ = 0;
  std::atomic<size_t> max_read_{0};
  std::atomic<size_t> max_write_{0};
  std::atomic<int> last_open_flags_{0};
};

MemFile::~MemFile() = default;

PageCache MemFile::PageCachePolicy() const { return page_cache; }

Status MemFile::Flush(bool by_opener) {
  fs_->flushes_++;
  return flush_error == 0 ? Status::Ok() : Status::FromErrno(flush_error, "flush");
}

Result<size_t> MemFile::Read(uint64_t offset, std::span<char> buf) {
  size_t seen = fs_->max_read_.load();
  while (buf.size() > seen && !fs_->max_read_.compare_exchange_weak(seen, buf.size())) {
  }
  if (flags_ == -1) return Status::Error(Code::kTimedOut, "datastore did not answer");
  if (throw_on_read) throw std::bad_alloc();
  std::lock_guard lock(fs_->mu_);
  if (offset >= node_->data.size()) return size_t{0};
  size_t n = std::min(buf.size(), node_->data.size() - offset);
  std::memcpy(buf.data(), node_->data.data() + offset, n);
  return n;
}

Result<size_t> MemFile::Write(uint64_t offset, std::span<const char> buf) {
  size_t seen = fs_->max_write_.load();
  while (buf.size() > seen && !fs_->max_write_.compare_exchange_weak(seen, buf.size())) {
  }
  std::lock_guard lock(fs_->mu_);
  if (node_->data.size() < offset + buf.size()) node_->data.resize(offset + buf.size());
  std::memcpy(node_->data.data() + offset, buf.data(), buf.size());
  return buf.size();
}

Status MemFile::Fallocate(int mode, uint64_t offset, uint64_t length) {
  if (mode != 0) return Status::Error(Code::kNotSupported, "fallocate mode");
  std::lock_guard lock(fs_->mu_);
  if (node_->data.size() < offset + length) node_->data.resize(offset + length);
  return Status::Ok();
}

Result<struct stat> MemFile::Stat() {
  std::lock_guard lock(fs_->mu_);
  return MemFs::StatOf(*node_);
}

Status MemFile::Truncate(uint64_t size) {
  std::lock_guard lock(fs_->mu_);
  node_->data.resize(size);
  return Status::Ok();
}

void MemFile::Release() {
  std::lock_guard lock(fs_->mu_);
  if (released_++ > 0) fs_->double_releases_++;
  fs_->releases_++;
  fs_->cv_.notify_all();
}

// ---------------------------------------------------------------------------
// Helpers.

bool IsMounted(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point;
    if (fields >> id >> parent >> devno >> root >> mount_point && mount_point == path) return true;
  }
  return false;
}

std::string MakeTempDir() {
  char tmpl[] = "/tmp/goldcache-fuse-test.XXXXXX";
  const char* dir = mkdtemp(tmpl);
  return dir == nullptr ? std::string() : std::string(dir);
}

std::string Pattern(size_t size, char seed) {
  std::string s(size, '\0');
  for (size_t i = 0; i < size; ++i) s[i] = static_cast<char>(seed + i * 7 + i / 4096);
  return s;
}

// A served mount for one test. Teardown always unmounts and removes the temp
// directory, whatever the test did (RAII, also when an assertion failed).
class ServedMount {
 public:
  // `cache_timeout`: how long the kernel trusts entries and attributes.
  explicit ServedMount(FileSystem& fs, double cache_timeout = 1.0) : dir_(MakeTempDir()) {
    if (dir_.empty()) return;
    MountOptions options;
    options.entry_timeout = options.attr_timeout = cache_timeout;
    options.mountpoint = dir_;
    options.fsname = "memfs,test";  // a comma must survive option parsing
    Result<std::unique_ptr<Mount>> m = Mount::Create(fs, options);
    if (!m.ok()) {
      error_ = m.status().ToString();
      return;
    }
    mount_ = std::move(*m);
    runner_ = std::thread([this] {
      Status s = mount_->Run();
      std::lock_guard lock(mu_);
      run_status_ = s;
      run_done_ = true;
      cv_.notify_all();
    });
  }

  ~ServedMount() {
    if (mount_ != nullptr) {
      mount_->Exit();
      if (!WaitRunDone(20s)) {
        // Last resort, so that a broken Exit() cannot leave a mount behind.
        ADD_FAILURE() << "Run() did not return after Exit(); detaching " << dir_;
        umount2(dir_.c_str(), MNT_DETACH);
      }
      runner_.join();
      mount_.reset();
    }
    if (!dir_.empty()) {
      if (IsMounted(dir_)) umount2(dir_.c_str(), MNT_DETACH);
      rmdir(dir_.c_str());
    }
  }

  bool ok() const { return mount_ != nullptr; }
  const std::string& error() const { return error_; }
  std::string Path(const std::string& rel) const { return dir_ + "/" + rel; }
  const std::string& dir() const { return dir_; }
  Mount& mount() { return *mount_; }

  bool WaitRunDone(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return run_done_; });
  }
  Status run_status() {
    std::lock_guard lock(mu_);
    return run_status_;
  }

 private:
  std::string dir_;
  std::string error_;
  std::unique_ptr<Mount> mount_;
  std::thread runner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool run_done_ = false;
  Status run_status_;
};

class MountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Tests that prove the kernel's cache is dropped need it to outlive them.
    const bool long_cache =
        std::string(::testing::UnitTest::GetInstance()->current_test_info()->name())
            .starts_with("InvalidateFile");
    served_ = std::make_unique<ServedMount>(fs_, long_cache ? 3600.0 : 1.0);
    ASSERT_TRUE(served_->ok()) << served_->error();
  }
  void TearDown() override { served_.reset(); }
  std::string P(const std::string& rel) const { return served_->Path(rel); }

  MemFs fs_;
  std::unique_ptr<ServedMount> served_;
};

// RAII fd so that a failed assertion does not leak one into teardown.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int Close() {
    int rc = close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

std::set<std::string> ListDir(const std::string& path) {
  std::set<std::string> names;
  DIR* d = opendir(path.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) names.insert(e->d_name);
  closedir(d);
  return names;
}

// ---------------------------------------------------------------------------

TEST_F(MountTest, MountIsVisibleWithFsnameAndType) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line, found;
  while (std::getline(in, line)) {
    if (line.find(" " + served_->dir() + " ") != std::string::npos) found = line;
  }
  EXPECT_NE(found.find("fuse.goldcache"), std::string::npos) << found;
  EXPECT_NE(found.find("memfs,test"), std::string::npos) << found;
  EXPECT_NE(found.find("default_permissions"), std::string::npos) << found;
  EXPECT_NE(found.find("allow_other"), std::string::npos) << found;
  // Readahead raised from the kernel's 128 KiB default to 1 MiB.
  std::istringstream fields(found);
  std::string id, parent, device;
  fields >> id >> parent >> device;
  std::ifstream ra("/sys/class/bdi/" + device + "/read_ahead_kb");
  int read_ahead_kb = 0;
  ra >> read_ahead_kb;
  EXPECT_EQ(read_ahead_kb, 1024);
}

TEST_F(MountTest, StatAndListShowTheFileSystemContent) {
  fs_.AddDir("templates");
  fs_.AddFile("templates/win11.img", std::string(12345, 'x'));
  fs_.AddFile("readme", "hi");

  struct stat st;
  ASSERT_EQ(stat(P("templates/win11.img").c_str(), &st), 0) << strerror(errno);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, 12345);
  ASSERT_EQ(stat(P("templates").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(stat(P("missing").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);

  EXPECT_EQ(ListDir(served_->dir()), (std::set<std::string>{".", "..", "templates", "readme"}));
  EXPECT_EQ(ListDir(P("templates")), (std::set<std::string>{".", "..", "win11.img"}));
}

TEST_F(MountTest, LargeDirectoryListsCompletelyAcrossManyReplies) {
  fs_.AddDir("pool");
  std::set<std::string> expected{".", ".."};
  for (int i = 0; i < 3000; ++i) {
    std::string name = "desktop-with-a-rather-long-name-" + std::to_string(i) + ".qcow2";
    fs_.AddFile("pool/" + name, "");
    expected.insert(name);
  }
  EXPECT_EQ(ListDir(P("pool")), expected);
  EXPECT_EQ(ListDir(P("pool")), expected);  // second listing: plain readdir batches
}

TEST_F(MountTest, FallocateExtendsTheFile) {
  Fd fd(open(P("prealloc").c_str(), O_CREAT | O_RDWR, 0644));
  ASSERT_GE(fd.get(), 0);
  ASSERT_EQ(fallocate(fd.get(), 0, 0, 65536), 0) << strerror(errno);
  struct stat st;
  ASSERT_EQ(fstat(fd.get(), &st), 0);
  EXPECT_EQ(st.st_size, 65536);
  EXPECT_EQ(fallocate(fd.get(), FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, 4096), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
}

TEST_F(MountTest, ReadsAndWritesOfOneMiBAreSingleRequests) {
  const std::string a = Pattern(kMiB, 'a');
  const std::string b = Pattern(kMiB, 'b');
  {
    Fd fd(open(P("disk.raw").c_str(), O_CREAT | O_RDWR, 0644));
    ASSERT_GE(fd.get(), 0) << strerror(errno);
    ASSERT_EQ(pwrite(fd.get(), a.data(), a.size(), 0), static_cast<ssize_t>(kMiB));
    ASSERT_EQ(pwrite(fd.get(), b.data(), b.size(), kMiB), static_cast<ssize_t>(kMiB));
    std::string back(2 * kMiB, '\0');
    ASSERT_EQ(pread(fd.get(), back.data(), back.size(), 0), static_cast<ssize_t>(2 * kMiB));
    EXPECT_TRUE(back == a + b);
  }
  // max_write negotiated to 1 MiB: a 1 MiB write(2) is one FUSE WRITE.
  EXPECT_EQ(fs_.max_write_request(), kMiB);
  struct stat st;
  ASSERT_EQ(stat(P("disk.raw").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(2 * kMiB));
}

TEST_F(MountTest, ODirectAlignedReadsReachTheFileSystem) {
  const std::string content = Pattern(4 * kMiB, 'q');
  fs_.AddFile("pool/vm017.img", content);
  fs_.AddDir("pool");
  Fd fd(open(P("pool/vm017.img").c_str(), O_RDWR | O_DIRECT));
  ASSERT_GE(fd.get(), 0) << strerror(errno);
  EXPECT_TRUE(fs_.last_open_flags() & O_DIRECT);

  void* mem = nullptr;
  ASSERT_EQ(posix_memalign(&mem, 4096, kMiB), 0);
  std::unique_ptr<char, decltype(&free)> buf(static_cast<char*>(mem), &free);
  ASSERT_EQ(pread(fd.get(), buf.get(), kMiB, kMiB), static_cast<ssize_t>(kMiB)) << strerror(errno);
  EXPECT_EQ(std::memcmp(buf.get(), content.data() + kMiB, kMiB), 0);
  // The kernel sent the 1 MiB O_DIRECT read as one request (max_pages 256).
  EXPECT_EQ(fs_.max_read_request(), kMiB);

  std::memset(buf.get(), 'W', 4096);
  ASSERT_EQ(pwrite(fd.get(), buf.get(), 4096, 8192), 4096) << strerror(errno);
  ASSERT_EQ(pread(fd.get(), buf.get(), 4096, 8192), 4096);
  EXPECT_EQ(std::string(buf.get(), 4096), std::string(4096, 'W'));
}

TEST_F(MountTest, RenamedDirectoryServesItsChildrenAtTheNewPath) {
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0) << strerror(errno);
  {
    Fd fd(open(P("d/f").c_str(), O_CREAT | O_WRONLY, 0644));
    ASSERT_GE(fd.get(), 0) << strerror(errno);
    ASSERT_EQ(write(fd.get(), "hello", 5), 5);
  }
  struct stat st;
  ASSERT_EQ(stat(P("d/f").c_str(), &st), 0);  // the kernel now knows d/f
  ASSERT_EQ(rename(P("d").c_str(), P("e").c_str()), 0) << strerror(errno);

  Fd fd(open(P("e/f").c_str(), O_RDONLY));
  ASSERT_GE(fd.get(), 0) << strerror(errno);
  char buf[16] = {};
  EXPECT_EQ(read(fd.get(), buf, sizeof(buf)), 5);
  EXPECT_STREQ(buf, "hello");
  EXPECT_EQ(stat(P("d/f").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
  // A file created after the rename lands under the new name.
  Fd g(open(P("e/g").c_str(), O_CREAT | O_WRONLY, 0644));
  ASSERT_GE(g.get(), 0) << strerror(errno);
  EXPECT_EQ(fs_.GetAttr("e/g").ok(), true);
}

TEST_F(MountTest, FileUnlinkedWhileOpenKeepsWorkingThroughItsHandle) {
  Fd fd(open(P("scratch").c_str(), O_CREAT | O_RDWR, 0644));
  ASSERT_GE(fd.get(), 0) << strerror(errno);
  ASSERT_EQ(pwrite(fd.get(), "abcdef", 6, 0), 6);
  ASSERT_EQ(unlink(P("scratch").c_str()), 0) << strerror(errno);

  struct stat st;
  EXPECT_EQ(stat(P("scratch").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
  ASSERT_EQ(pwrite(fd.get(), "XYZ", 3, 6), 3) << strerror(errno);
  char buf[16] = {};
  ASSERT_EQ(pread(fd.get(), buf, sizeof(buf), 0), 9) << strerror(errno);
  EXPECT_STREQ(buf, "abcdefXYZ");
  ASSERT_EQ(fstat(fd.get(), &st), 0) << strerror(errno);
  EXPECT_EQ(st.st_size, 9);
  ASSERT_EQ(ftruncate(fd.get(), 4), 0) << strerror(errno);
  ASSERT_EQ(fstat(fd.get(), &st), 0) << strerror(errno);
  EXPECT_EQ(st.st_size, 4);
  EXPECT_EQ(fd.Close(), 0);
  EXPECT_TRUE(fs_.WaitAllReleased(10s));
}

TEST_F(MountTest, SymlinkAndReadlink) {
  ASSERT_EQ(symlink("../templates/win11.img", P("base.img").c_str()), 0) << strerror(errno);
  char buf[256] = {};
  ASSERT_EQ(readlink(P("base.img").c_str(), buf, sizeof(buf)), 22) << strerror(errno);
  EXPECT_STREQ(buf, "../templates/win11.img");
  struct stat st;
  ASSERT_EQ(lstat(P("base.img").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
}

TEST_F(MountTest, HardLinkSharesTheInode) {
  fs_.AddFile("a", "data");
  ASSERT_EQ(link(P("a").c_str(), P("b").c_str()), 0) << strerror(errno);
  struct stat sa, sb;
  ASSERT_EQ(stat(P("a").c_str(), &sa), 0);
  ASSERT_EQ(stat(P("b").c_str(), &sb), 0);
  EXPECT_EQ(sa.st_ino, sb.st_ino);
  EXPECT_EQ(sb.st_nlink, 2u);
  ASSERT_EQ(unlink(P("a").c_str()), 0);
  Fd fd(open(P("b").c_str(), O_RDONLY));  // the other name still resolves
  ASSERT_GE(fd.get(), 0) << strerror(errno);
}

TEST_F(MountTest, TruncateByPathAndByHandle) {
  fs_.AddFile("t", std::string(1000, 'z'));
  ASSERT_EQ(truncate(P("t").c_str(), 10), 0) << strerror(errno);
  struct stat st;
  ASSERT_EQ(stat(P("t").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 10);
  Fd fd(open(P("t").c_str(), O_RDWR));
  ASSERT_GE(fd.get(), 0);
  ASSERT_EQ(ftruncate(fd.get(), 5000), 0) << strerror(errno);
  ASSERT_EQ(fstat(fd.get(), &st), 0);
  EXPECT_EQ(st.st_size, 5000);
  EXPECT_GE(fs_.setattr_with_file_.load(), 1);  // ftruncate passed the handle
  Fd trunc(open(P("t").c_str(), O_WRONLY | O_TRUNC));
  ASSERT_GE(trunc.get(), 0) << strerror(errno);
  ASSERT_EQ(stat(P("t").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
}

TEST_F(MountTest, StatfsReportsTheFileSystemNumbers) {
  struct statfs s;
  ASSERT_EQ(statfs(served_->dir().c_str(), &s), 0) << strerror(errno);
  EXPECT_EQ(static_cast<unsigned long>(s.f_type), static_cast<unsigned long>(FUSE_SUPER_MAGIC));
  EXPECT_EQ(s.f_blocks, 1000u);
  EXPECT_EQ(s.f_bavail, 500u);
  EXPECT_EQ(s.f_namelen, 255);
}

TEST_F(MountTest, ErrorsReachTheCallerAsErrno) {
  fs_.AddFile("template.img", "gold");
  fs_.SetReadOnly("template.img");
  fs_.AddFile("slow.img", std::string(4096, 's'));
  fs_.SetTimingOut("slow.img");
  EXPECT_EQ(open(P("template.img").c_str(), O_WRONLY), -1);
  EXPECT_EQ(errno, EROFS);
  Fd fd(open(P("slow.img").c_str(), O_RDONLY));
  ASSERT_GE(fd.get(), 0);
  char buf[4096];
  EXPECT_EQ(pread(fd.get(), buf, sizeof(buf), 0), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(rmdir(P("template.img").c_str()), -1);
  EXPECT_EQ(errno, ENOTDIR);  // the kernel checks the type it knows
  ASSERT_EQ(mkdir(P("full").c_str(), 0755), 0);
  fs_.AddFile("full/x", "");
  EXPECT_EQ(rmdir(P("full").c_str()), -1);
  EXPECT_EQ(errno, ENOTEMPTY);  // exact errno from the FileSystem
}

TEST_F(MountTest, AHandlerOutOfMemoryFailsItsRequestAndTheMountServesOn) {
  fs_.AddFile("big.img", std::string(8192, 'b'));
  fs_.AddFile("ok.img", std::string(4096, 'o'));
  fs_.SetThrowingRead("big.img");
  int fd = open(P("big.img").c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(fd, 0);
  alignas(4096) static char buf[4096];
  errno = 0;
  EXPECT_EQ(pread(fd, buf, sizeof(buf), 0), -1);
  EXPECT_EQ(errno, ENOMEM);
  close(fd);
  // The agent lives on: other files read.
  fd = open(P("ok.img").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(pread(fd, buf, sizeof(buf), 0), 4096);
  EXPECT_EQ(buf[0], 'o');
  close(fd);
}

TEST_F(MountTest, CloseReportsTheFlushErrorOfTheFile) {
  fs_.AddFile("persistent.img", std::string(4096, 'p'));
  fs_.SetFlushError("persistent.img", ENOSPC);
  int fd = open(P("persistent.img").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  int dup_fd = dup(fd);
  ASSERT_GE(dup_fd, 0);
  const int before = fs_.flushes();
  // Every close(2) of a descriptor is a flush: both report the loss.
  errno = 0;
  EXPECT_EQ(close(dup_fd), -1);
  EXPECT_EQ(errno, ENOSPC);
  errno = 0;
  EXPECT_EQ(close(fd), -1);
  EXPECT_EQ(errno, ENOSPC);
  EXPECT_EQ(fs_.flushes() - before, 2);
}

TEST_F(MountTest, PageCachePolicyDecidesWhetherReadsReachTheFileSystem) {
  // Contents are one letter repeated; reads report which letter they saw.
  const char a = 'a', b = 'b', c = 'c';
  fs_.AddFile("t.img", std::string(4096, a));
  fs_.SetPageCache("t.img", PageCache::kKeep);
  auto read_once = [&] {
    int fd = open(P("t.img").c_str(), O_RDONLY);
    std::string got(4096, '\0');
    EXPECT_EQ(pread(fd, got.data(), got.size(), 0), 4096);
    close(fd);
    EXPECT_EQ(got, std::string(4096, got[0])) << "a torn page";
    return got[0];
  };
  EXPECT_EQ(read_once(), a);
  fs_.ReplaceData("t.img", std::string(4096, b));
  EXPECT_EQ(read_once(), a);  // kKeep: the kernel serves its pages
  fs_.SetPageCache("t.img", PageCache::kBypass);
  EXPECT_EQ(read_once(), b);  // kBypass: every read reaches the file system
  fs_.SetPageCache("t.img", PageCache::kKeep);
  EXPECT_EQ(read_once(), a);  // bypassing handles left the cached pages alone
  fs_.SetPageCache("t.img", PageCache::kDrop);
  EXPECT_EQ(read_once(), b);  // kDrop: cached pages gone before the open returned
  fs_.ReplaceData("t.img", std::string(4096, c));
  fs_.SetPageCache("t.img", PageCache::kKeep);
  EXPECT_EQ(read_once(), b);
}

TEST_F(MountTest, InvalidateFileDropsCachedAttributesAndPages) {
  fs_.AddFile("sub-less.img", std::string(8192, 'x'));
  fs_.SetPageCache("sub-less.img", PageCache::kKeep);
  const std::string path = P("sub-less.img");
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 8192);
  int fd = open(path.c_str(), O_RDONLY);
  std::string got(8192, '\0');
  ASSERT_EQ(pread(fd, got.data(), got.size(), 0), 8192);
  close(fd);
  fs_.ReplaceData("sub-less.img", std::string(4096, 'y'));
  // The size alone: a read dropped the kernel's atime, and a stat(2) asking
  // for it would fetch fresh attributes anyway.
  auto size_seen = [&] {
    struct statx stx;
    EXPECT_EQ(statx(AT_FDCWD, path.c_str(), 0, STATX_SIZE, &stx), 0);
    return stx.stx_size;
  };
  EXPECT_EQ(size_seen(), 8192u);  // the kernel's copy (attributes trusted for an hour)
  ASSERT_NE(fs_.kernel(), nullptr);
  fs_.kernel()->InvalidateFile("sub-less.img");
  EXPECT_EQ(size_seen(), 4096u);
  fd = open(path.c_str(), O_RDONLY);
  EXPECT_EQ(pread(fd, got.data(), got.size(), 0), 4096);
  close(fd);
  EXPECT_TRUE(got.substr(0, 4096) == std::string(4096, 'y')) << "stale pages after invalidation";
  fs_.kernel()->InvalidateFile("not/known/to/the/kernel");  // nothing to do, no harm
}

TEST_F(MountTest, ReleaseIsCalledExactlyOncePerOpen) {
  fs_.AddFile("f", "content");
  {
    Fd a(open(P("f").c_str(), O_RDONLY));
    Fd b(open(P("f").c_str(), O_RDWR));
    ASSERT_GE(a.get(), 0);
    ASSERT_GE(b.get(), 0);
    Fd dup_of_a(dup(a.get()));  // one open, two descriptors: one release
    Fd c(open(P("created").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600));
    ASSERT_GE(c.get(), 0) << strerror(errno);
    pid_t child = fork();
    if (child == 0) _exit(0);  // inherits and closes the descriptors
    int status;
    waitpid(child, &status, 0);
  }
  ASSERT_TRUE(fs_.WaitAllReleased(10s)) << fs_.releases() << " of " << fs_.opens();
  EXPECT_EQ(fs_.opens(), 3);
  EXPECT_EQ(fs_.releases(), 3);
  EXPECT_EQ(fs_.double_releases(), 0);
}

TEST_F(MountTest, LookupCountsReturnToZeroWhenTheKernelDropsEntries) {
  fs_.AddDir("many");
  for (int i = 0; i < 200; ++i) fs_.AddFile("many/f" + std::to_string(i), "x");
  // readdir (readdirplus) hands the kernel entries with lookup counts; stat
  // then uses them.
  ASSERT_EQ(ListDir(P("many")).size(), 202u);
  const int getattr_before = fs_.getattr_calls_.load();
  for (int i = 0; i < 200; ++i) {
    struct stat st;
    ASSERT_EQ(stat(P("many/f" + std::to_string(i)).c_str(), &st), 0);
  }
  // readdirplus gave the kernel (most of) the entries with their attributes.
  EXPECT_LT(fs_.getattr_calls_.load() - getattr_before, 100);
  EXPECT_GE(served_->mount().node_count(), 202u);
  // Unlinking makes the kernel drop each inode and send FORGET; rmdir then
  // drops the directory. Every count the adapter took must come back.
  for (int i = 0; i < 200; ++i) ASSERT_EQ(unlink(P("many/f" + std::to_string(i)).c_str()), 0);
  ASSERT_EQ(rmdir(P("many").c_str()), 0) << strerror(errno);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (served_->mount().node_count() > 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);  // FORGETs are asynchronous; bounded poll
  }
  EXPECT_EQ(served_->mount().node_count(), 1u);
}

TEST_F(MountTest, ManyThreadsReadConcurrently) {
  const std::string content = Pattern(8 * kMiB, 'c');
  fs_.AddFile("big", content);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 8; ++t) {
    readers.emplace_back([&, t] {
      int fd = open(P("big").c_str(), O_RDONLY | O_DIRECT);
      if (fd < 0) {
        mismatches++;
        return;
      }
      void* mem = nullptr;
      if (posix_memalign(&mem, 4096, 65536) != 0) std::abort();
      for (int i = 0; i < 64; ++i) {
        size_t off = ((t * 64 + i) * 65536) % content.size();
        if (pread(fd, mem, 65536, off) != 65536 ||
            std::memcmp(mem, content.data() + off, 65536) != 0) {
          mismatches++;
        }
      }
      free(mem);
      close(fd);
    });
  }
  for (auto& r : readers) r.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// ---------------------------------------------------------------------------
// Lifecycle.

TEST(MountLifecycleTest, CreateFailsClearlyForABadMountpoint) {
  MemFs fs;
  MountOptions options;
  options.mountpoint = "/tmp/goldcache-no-such-dir-for-test";
  Result<std::unique_ptr<Mount>> m = Mount::Create(fs, options);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), Code::kNotFound);
  EXPECT_NE(m.status().message().find(options.mountpoint), std::string::npos);

  std::string dir = MakeTempDir();
  ASSERT_FALSE(dir.empty());
  std::string file = dir + "/file";
  { std::ofstream(file) << "x"; }
  options.mountpoint = file;
  m = Mount::Create(fs, options);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("not a directory"), std::string::npos);
  unlink(file.c_str());
  rmdir(dir.c_str());
}

TEST(MountLifecycleTest, CreateRefusesALiveMount) {
  MemFs fs;
  ServedMount first(fs);
  ASSERT_TRUE(first.ok()) << first.error();
  MountOptions options;
  options.mountpoint = first.dir();
  Result<std::unique_ptr<Mount>> second = Mount::Create(fs, options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kExists);
  EXPECT_NE(second.status().message().find(first.dir()), std::string::npos);
}

TEST(MountLifecycleTest, ExitUnmountsAndRunReturnsOk) {
  MemFs fs;
  ServedMount served(fs);
  ASSERT_TRUE(served.ok()) << served.error();
  fs.AddFile("f", "x");
  Fd fd(open(served.Path("f").c_str(), O_RDONLY));  // an open file does not block the stop
  ASSERT_GE(fd.get(), 0);
  served.mount().Exit();
  ASSERT_TRUE(served.WaitRunDone(20s));
  EXPECT_TRUE(served.run_status().ok()) << served.run_status().ToString();
  EXPECT_FALSE(IsMounted(served.dir()));
}

TEST(MountLifecycleTest, ExitBeforeRunMakesRunReturnAtOnce) {
  MemFs fs;
  std::string dir = MakeTempDir();
  ASSERT_FALSE(dir.empty());
  {
    MountOptions options;
    options.mountpoint = dir;
    Result<std::unique_ptr<Mount>> m = Mount::Create(fs, options);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    (*m)->Exit();
    EXPECT_TRUE((*m)->Run().ok());
    EXPECT_FALSE(IsMounted(dir));
    Status again = (*m)->Run();
    EXPECT_FALSE(again.ok());
    EXPECT_NE(again.message().find("twice"), std::string::npos);
  }
  if (IsMounted(dir)) umount2(dir.c_str(), MNT_DETACH);
  EXPECT_EQ(rmdir(dir.c_str()), 0);
}

TEST(MountLifecycleTest, DestroyWithoutRunUnmounts) {
  MemFs fs;
  std::string dir = MakeTempDir();
  ASSERT_FALSE(dir.empty());
  {
    MountOptions options;
    options.mountpoint = dir;
    Result<std::unique_ptr<Mount>> m = Mount::Create(fs, options);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_TRUE(IsMounted(dir));  // the mount exists as soon as Create returns
  }
  EXPECT_FALSE(IsMounted(dir));
  if (IsMounted(dir)) umount2(dir.c_str(), MNT_DETACH);
  EXPECT_EQ(rmdir(dir.c_str()), 0);
}

TEST(MountLifecycleTest, SigtermStopsRunAndUnmounts) {
  MemFs fs;
  ServedMount served(fs);
  ASSERT_TRUE(served.ok()) << served.error();
  struct stat st;
  ASSERT_EQ(stat(served.dir().c_str(), &st), 0);  // serving
  // The signal lands on whichever thread the kernel picks, often this one,
  // which is not a FUSE worker.
  ASSERT_EQ(kill(getpid(), SIGTERM), 0);
  ASSERT_TRUE(served.WaitRunDone(20s));
  EXPECT_TRUE(served.run_status().ok()) << served.run_status().ToString();
  EXPECT_FALSE(IsMounted(served.dir()));
  struct sigaction sa;
  ASSERT_EQ(sigaction(SIGTERM, nullptr, &sa), 0);
  EXPECT_EQ(sa.sa_handler, SIG_DFL);  // handlers are gone with Run()
}

TEST(MountLifecycleTest, ExternalUnmountEndsRun) {
  MemFs fs;
  ServedMount served(fs);
  ASSERT_TRUE(served.ok()) << served.error();
  struct stat st;
  ASSERT_EQ(stat(served.dir().c_str(), &st), 0);
  ASSERT_EQ(umount2(served.dir().c_str(), 0), 0) << strerror(errno);  // operator's umount
  ASSERT_TRUE(served.WaitRunDone(20s));
  EXPECT_TRUE(served.run_status().ok()) << served.run_status().ToString();
}

TEST(MountLifecycleTest, StaleMountOfACrashedAgentIsCleared) {
  std::string dir = MakeTempDir();
  ASSERT_FALSE(dir.empty());
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t agent = fork();
  if (agent == 0) {
    // The "agent": mounts, reports, serves until SIGKILL.
    MemFs fs;
    MountOptions options;
    options.mountpoint = dir;
    Result<std::unique_ptr<Mount>> m = Mount::Create(fs, options);
    char c = m.ok() ? 'y' : 'n';
    if (write(ready[1], &c, 1) != 1 || !m.ok()) _exit(1);
    (void)(*m)->Run();
    _exit(0);
  }
  close(ready[1]);
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  close(ready[0]);
  ASSERT_EQ(c, 'y');
  kill(agent, SIGKILL);
  int status;
  waitpid(agent, &status, 0);

  struct stat st;
  EXPECT_EQ(stat(dir.c_str(), &st), -1);
  EXPECT_EQ(errno, ENOTCONN);  // what a crashed agent leaves behind

  {
    MemFs fs;
    fs.AddFile("after-restart", "ok");
    MountOptions options;
    options.mountpoint = dir;
    ServedMount served(fs);  // a second mount elsewhere must not be disturbed
    ASSERT_TRUE(served.ok()) << served.error();
    Result<std::unique_ptr<Mount>> m = Mount::Create(fs, options);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    std::unique_ptr<Mount> mount = std::move(*m);
    std::thread runner([&] { EXPECT_TRUE(mount->Run().ok()); });
    EXPECT_EQ(stat((dir + "/after-restart").c_str(), &st), 0) << strerror(errno);
    mount->Exit();
    runner.join();
    EXPECT_TRUE(IsMounted(served.dir()));
  }
  if (IsMounted(dir)) umount2(dir.c_str(), MNT_DETACH);
  EXPECT_EQ(rmdir(dir.c_str()), 0) << strerror(errno);
}

}  // namespace
}  // namespace goldcache::fuse
