#include "roles/datastore_fs.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>

#include "backing/fault_backing.h"
#include "backing/metered_backing.h"
#include "fuse/errno_map.h"
#include "io/fault_env.h"

namespace goldcache::roles {
namespace {

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

class DatastoreFsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gc-dsfs-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ds_ = dir_ + "/ds";
    std::filesystem::create_directories(ds_ + "/templates");
    std::filesystem::create_directories(ds_ + "/pool");
    std::filesystem::create_directories(ds_ + "/iso");
    content_ = RandomBytes(3 * 65536 + 100, 1);
    WriteFile(ds_ + "/templates/t.img", content_);
    WriteFile(ds_ + "/pool/vm1.img", content_);

    // The datastore misbehaves only where a test adds a fault to ds_faults_.
    backing_ = backing::MakeMeteredBacking(
        backing::MakeFaultBacking(std::move(backing::OpenPosixBacking(ds_)).value(), ds_faults_),
        registry_);
    cache::CacheOptions o;
    o.dir = dir_ + "/cache";
    o.capacity_bytes = 64 * 65536;
    o.chunk_size = 65536;
    o.registry = &registry_;
    cache_ = std::move(cache::ChunkCache::Open(o)).value();
    auto rules =
        RuleSet::Create({{"templates/**", Role::kTemplate}, {"pool/**", Role::kNonpersistent}});
    rules_ = std::move(rules).value();
    MakeOverlays(nullptr);
    MakeFs(std::chrono::milliseconds(0));
  }
  // A new overlay store whose disk tier uses `env` (null: the real one).
  void MakeOverlays(io::Env* env) {
    fs_.reset();
    overlays_.reset();
    overlay::OverlayOptions oo;
    oo.dir = dir_ + "/overlay";
    oo.ram_per_desktop = 256 * 1024;
    oo.segment_size = 1 << 20;
    oo.disk_space = &space_;
    oo.registry = &registry_;
    oo.env = env;
    overlays_ = std::move(overlay::OverlayStore::Open(oo)).value();
  }
  // A new DatastoreFs over the same datastore, cache and overlays.
  void MakeFs(std::chrono::milliseconds settle) {
    fs_.reset();
    DatastoreFs::Options options;
    options.templates.settle = settle;
    fs_ = std::make_unique<DatastoreFs>("ds", *backing_, rules_, *cache_, *overlays_, options,
                                        registry_);
  }
  void TearDown() override {
    fs_.reset();
    overlays_.reset();
    cache_.reset();
    std::filesystem::remove_all(dir_);
  }
  uint64_t Counter(const std::string& name, const metrics::Labels& labels = {}) {
    return registry_.GetCounter(name, "", labels).Value();
  }
  std::string ReadAll(fuse::OpenFile& f, size_t size) {
    std::string out(size, '\0');
    auto n = f.Read(0, std::span<char>(out.data(), out.size()));
    EXPECT_TRUE(n.ok()) << n.status().ToString();
    out.resize(n.ok() ? *n : 0);
    return out;
  }

  std::string dir_, ds_, content_;
  io::FaultEnv env_;        // outlives the overlays of the tests that use it
  io::FaultEnv ds_faults_;  // the datastore's faults; outlives backing_
  metrics::Registry registry_;
  std::unique_ptr<backing::Backing> backing_;
  std::unique_ptr<cache::ChunkCache> cache_;
  overlay::FixedDiskSpace space_{64 << 20};
  std::unique_ptr<overlay::OverlayStore> overlays_;
  std::unique_ptr<DatastoreFs> fs_;
  RuleSet rules_;
};

TEST_F(DatastoreFsTest, TemplateReadsComeFromTheDatastoreOnceThenFromTheCache) {
  for (int i = 0; i < 3; ++i) {
    auto f = fs_->Open("templates/t.img", O_RDONLY);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(ReadAll(**f, content_.size()), content_);
    (*f)->Release();
  }
  EXPECT_EQ(Counter("goldcache_datastore_read_bytes_total"), content_.size());
  EXPECT_EQ(Counter("goldcache_read_bytes_total", {{"source", "datastore"}}), content_.size());
  EXPECT_EQ(Counter("goldcache_read_bytes_total", {{"source", "cache"}}), 2 * content_.size());
}

TEST_F(DatastoreFsTest, EveryChangeToATemplateIsReadOnly) {
  const std::string path = "templates/t.img";
  EXPECT_EQ(fs_->Open(path, O_RDWR).status().code(), Code::kReadOnly);
  EXPECT_EQ(fs_->Open(path, O_RDONLY | O_TRUNC).status().code(), Code::kReadOnly);
  fuse::SetAttrRequest truncate;
  truncate.size = 0;
  EXPECT_EQ(fs_->SetAttr(path, truncate, nullptr).status().code(), Code::kReadOnly);
  EXPECT_EQ(fs_->Unlink(path).code(), Code::kReadOnly);
  EXPECT_EQ(fs_->Rename(path, "iso/x", 0).code(), Code::kReadOnly);
  auto f = fs_->Open(path, O_RDONLY);
  ASSERT_TRUE(f.ok());
  char b = 'x';
  EXPECT_EQ((*f)->Write(0, std::span<const char>(&b, 1)).status().code(), Code::kReadOnly);
  (*f)->Release();
  EXPECT_EQ(fs_->Create("templates/new.img", O_WRONLY, 0644).status().code(), Code::kReadOnly);
  EXPECT_EQ(fs_->Rename("iso", "templates/iso", 0).code(), Code::kReadOnly);
  EXPECT_EQ(Counter("goldcache_datastore_write_bytes_total"), 0u);
  std::ifstream in(ds_ + "/templates/t.img", std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), content_);
}

TEST_F(DatastoreFsTest, DesktopWritesStayOnTheHostAndVanishAtLastClose) {
  const std::string path = "pool/vm1.img";
  auto a = fs_->Open(path, O_RDWR);
  auto b = fs_->Open(path, O_RDWR);  // a second handle shares the overlay
  ASSERT_TRUE(a.ok() && b.ok());
  std::string data = RandomBytes(300000, 7);  // spills: RAM budget is 256 KiB
  ASSERT_TRUE((*a)->Write(1000, std::span<const char>(data.data(), data.size())).ok());
  ASSERT_TRUE((*a)->Truncate(content_.size() + 5000).ok());  // extend
  std::string want = content_;
  want.replace(1000, data.size(), data);
  want.resize(content_.size() + 5000, '\0');
  EXPECT_EQ(ReadAll(**b, want.size() + 10), want);
  EXPECT_EQ(fs_->GetAttr(path)->st_size, static_cast<off_t>(want.size()));
  ASSERT_TRUE((*b)->Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096).ok());
  std::fill(want.begin(), want.begin() + 4096, '\0');
  EXPECT_EQ(ReadAll(**a, want.size()), want);
  EXPECT_GT(Counter("goldcache_read_bytes_total", {{"source", "overlay"}}), 0u);
  (*a)->Release();
  EXPECT_EQ(fs_->ListDesktops().size(), 1u);  // b still open
  (*b)->Release();
  EXPECT_TRUE(fs_->ListDesktops().empty());  // last close: reset
  auto c = fs_->Open(path, O_RDONLY);
  EXPECT_EQ(ReadAll(**c, content_.size()), content_);
  (*c)->Release();
  // Nothing reached the datastore, and its files in the area can't be removed.
  EXPECT_EQ(Counter("goldcache_datastore_write_bytes_total"), 0u);
  EXPECT_EQ(fs_->Unlink(path).code(), Code::kReadOnly);
  EXPECT_EQ(fs_->Rename(path, "pool/other.img", 0).code(), Code::kReadOnly);
  EXPECT_EQ(fs_->Mkdir("pool/sub", 0755).status().code(), Code::kReadOnly);
  fuse::SetAttrRequest truncate;
  truncate.size = 0;
  EXPECT_EQ(fs_->SetAttr(path, truncate, nullptr).status().code(), Code::kReadOnly);
  std::ifstream in(ds_ + "/" + path, std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), content_);
}

TEST_F(DatastoreFsTest, HostOnlyFilesSurviveCloseRenameAndGoAwayOnUnlink) {
  auto f = fs_->Create("pool/vm9.qcow2", O_RDWR | O_CREAT, 0640);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_TRUE((*f)->Write(0, std::span<const char>("QFI\xfb", 4)).ok());
  (*f)->Release();
  EXPECT_FALSE(std::filesystem::exists(ds_ + "/pool/vm9.qcow2"));  // host only
  auto st = fs_->GetAttr("pool/vm9.qcow2");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_size, 4);
  EXPECT_EQ(st->st_mode, S_IFREG | 0640);
  auto names = [&] {
    std::vector<std::string> out;
    auto entries = fs_->ReadDir("pool");
    for (auto& e : *entries) out.push_back(e.name);
    std::sort(out.begin(), out.end());
    return out;
  };
  EXPECT_EQ(names(), (std::vector<std::string>{"vm1.img", "vm9.qcow2"}));
  EXPECT_EQ(fs_->Create("pool/vm9.qcow2", O_RDWR | O_CREAT | O_EXCL, 0640).status().code(),
            Code::kExists);
  ASSERT_TRUE(fs_->Rename("pool/vm9.qcow2", "pool/vm10.qcow2", 0).ok());
  EXPECT_EQ(fs_->Rename("pool/vm10.qcow2", "pool/vm1.img", 0).code(), Code::kReadOnly);
  auto g = fs_->Open("pool/vm10.qcow2", O_RDONLY);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(ReadAll(**g, 4), std::string("QFI\xfb", 4));
  (*g)->Release();
  ASSERT_TRUE(fs_->Unlink("pool/vm10.qcow2").ok());
  EXPECT_EQ(fs_->GetAttr("pool/vm10.qcow2").status().code(), Code::kNotFound);
  EXPECT_EQ(names(), (std::vector<std::string>{"vm1.img"}));
}

TEST_F(DatastoreFsTest, ResetByCommandRefusesOpenDesktopsUnlessForced) {
  auto f = fs_->Open("pool/vm1.img", O_RDWR);
  ASSERT_TRUE((*f)->Write(0, std::span<const char>("xyz", 3)).ok());
  Status busy = fs_->Reset("pool/vm1.img", false);
  EXPECT_EQ(busy.os_errno(), EBUSY);
  ASSERT_TRUE(fs_->Reset("pool/vm1.img", true).ok());
  EXPECT_EQ(ReadAll(**f, content_.size()), content_);  // pristine under the open handle
  (*f)->Release();
  EXPECT_EQ(fs_->Reset("pool/vm1.img", false).code(), Code::kNotFound);
  EXPECT_EQ(Counter("goldcache_desktop_resets_total", {{"reason", "command"}}), 1u);
}

TEST_F(DatastoreFsTest, FullLocalDiskIsENOSPCForThatDesktopOnly) {
  // 64 MiB of disk tier and 256 KiB of RAM per desktop.
  auto a = fs_->Open("pool/vm1.img", O_RDWR);
  std::string block(1 << 20, 'a');
  Status st;
  uint64_t off = 0;
  for (int i = 0; i < 200 && st.ok(); ++i, off += block.size()) {
    st = (*a)->Write(off, std::span<const char>(block.data(), block.size())).status();
  }
  EXPECT_EQ(st.code(), Code::kNoSpace);
  auto b = fs_->Create("pool/other.img", O_RDWR | O_CREAT, 0600);
  EXPECT_TRUE((*b)->Write(0, std::span<const char>("ok", 2)).ok());  // RAM still takes it
  (*a)->Release();  // reset on last close gives the space back
  EXPECT_EQ(space_.used(), 0u);
  (*b)->Release();
  EXPECT_EQ(Counter("goldcache_datastore_write_bytes_total"), 0u);
}

// Invariant 7: desktop A's disk tier held on a latch in mid-spill; desktop
// B's opens, reads, writes (its own spills too), getattr of both, and a
// template hit all complete meanwhile, and so do A's reads of other bytes.
TEST_F(DatastoreFsTest, ADesktopStuckInASpillStallsNoOtherDesktopNorTheTemplates) {
  WriteFile(ds_ + "/pool/vm2.img", content_);
  auto latch = std::make_shared<io::Latch>();
  env_.Add({.op = io::Op::kWrite, .path_contains = "vm1.img", .latch = latch});
  MakeOverlays(&env_);
  MakeFs(std::chrono::milliseconds(0));
  {  // the template, cached
    auto t = fs_->Open("templates/t.img", O_RDONLY);
    ASSERT_TRUE(t.ok());
    ASSERT_EQ(ReadAll(**t, content_.size()), content_);
    (*t)->Release();
  }
  auto a = fs_->Open("pool/vm1.img", O_RDWR);
  ASSERT_TRUE(a.ok());
  const std::string head = RandomBytes(200000, 11), more = RandomBytes(100000, 12);
  ASSERT_TRUE((*a)->Write(0, std::span<const char>(head.data(), head.size())).ok());  // RAM
  // 200000 + 100000 bytes > the 256 KiB RAM budget: this write spills, and
  // the spill's append waits on the latch.
  auto stuck = std::async(std::launch::async, [&] {
    return (*a)->Write(head.size(), std::span<const char>(more.data(), more.size())).status();
  });
  ASSERT_TRUE(latch->WaitBlocked(std::chrono::seconds(30))) << "A's spill never reached the disk";

  auto others = std::async(std::launch::async, [&] {
    auto b = fs_->Open("pool/vm2.img", O_RDWR);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    const std::string big = RandomBytes(600000, 13);  // B spills too
    EXPECT_TRUE((*b)->Write(4096, std::span<const char>(big.data(), big.size())).ok());
    std::string want = content_;
    want.replace(4096, big.size(), big);
    EXPECT_EQ(ReadAll(**b, want.size()), want);
    EXPECT_EQ(fs_->GetAttr("pool/vm2.img")->st_size, static_cast<off_t>(want.size()));
    // A's size as of its last completed write (the stuck one extends it).
    EXPECT_EQ(fs_->GetAttr("pool/vm1.img")->st_size,
              static_cast<off_t>(std::max(content_.size(), head.size())));
    // Nothing else runs now (A's writer waits on the latch): the counters
    // say where the template's bytes came from.
    const uint64_t hits = Counter("goldcache_read_bytes_total", {{"source", "cache"}});
    const uint64_t filer = Counter("goldcache_datastore_read_bytes_total");
    auto t = fs_->Open("templates/t.img", O_RDONLY);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(ReadAll(**t, content_.size()), content_);
    (*t)->Release();
    EXPECT_EQ(Counter("goldcache_read_bytes_total", {{"source", "cache"}}) - hits, content_.size());
    EXPECT_EQ(Counter("goldcache_datastore_read_bytes_total"), filer) << "not a template hit";
    // A's bytes, those being spilled among them, read as written.
    std::string a_head(head.size(), '\0');
    auto n = (*a)->Read(0, std::span<char>(a_head.data(), a_head.size()));
    EXPECT_TRUE(n.ok() && *n == head.size());
    EXPECT_EQ(a_head, head);
    (*b)->Release();
  });
  // Not a timing assert: without a bound a deadlock would hang the test, and
  // 30 s is far beyond what these local operations take.
  const bool done = others.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  latch->Open();
  EXPECT_TRUE(done) << "another desktop or the template waited for A's stuck spill";
  others.wait();
  ASSERT_TRUE(stuck.get().ok());
  std::string want = content_;
  want.resize(head.size() + more.size());
  want.replace(0, head.size(), head);
  want.replace(head.size(), more.size(), more);
  EXPECT_EQ(ReadAll(**a, want.size() + 10), want);
  (*a)->Release();
  EXPECT_EQ(Counter("goldcache_datastore_write_bytes_total"), 0u);
}

TEST_F(DatastoreFsTest, PassthroughFilesGoToTheDatastore) {
  auto f = fs_->Create("iso/notes.txt", O_WRONLY, 0644);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::string text = "hello datastore";
  ASSERT_TRUE((*f)->Write(0, std::span<const char>(text.data(), text.size())).ok());
  (*f)->Release();
  std::ifstream in(ds_ + "/iso/notes.txt");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), text);
  EXPECT_EQ(Counter("goldcache_datastore_write_bytes_total"), text.size());
}

TEST_F(DatastoreFsTest, NewOpenAfterATemplateChangeReadsTheNewGeneration) {
  auto f = fs_->Open("templates/t.img", O_RDONLY);
  EXPECT_EQ(ReadAll(**f, content_.size()), content_);
  EXPECT_EQ((*f)->PageCachePolicy(), fuse::PageCache::kDrop);  // nothing known of the kernel's
  auto again = fs_->Open("templates/t.img", O_RDONLY);
  EXPECT_EQ((*again)->PageCachePolicy(), fuse::PageCache::kKeep);
  (*again)->Release();
  (*f)->Release();
  std::string v2 = RandomBytes(content_.size(), 2);
  WriteFile(ds_ + "/templates/t.img", v2);
  struct timespec times[2] = {{0, UTIME_OMIT}, {12345, 0}};  // a different mtime for sure
  ASSERT_EQ(utimensat(AT_FDCWD, (ds_ + "/templates/t.img").c_str(), times, 0), 0);
  auto g = fs_->Open("templates/t.img", O_RDONLY);
  // The kernel must drop pages of the old generation.
  EXPECT_EQ((*g)->PageCachePolicy(), fuse::PageCache::kDrop);
  EXPECT_EQ(ReadAll(**g, v2.size()), v2);
  (*g)->Release();
  EXPECT_EQ(Counter("goldcache_template_generation_changes_total"), 1u);
  EXPECT_EQ(Counter("goldcache_template_changed_while_open_total"), 0u);
}

TEST_F(DatastoreFsTest, NewGenerationBypassesThePageCacheWhileTheOldOneUsesIt) {
  auto old = fs_->Open("templates/t.img", O_RDONLY);
  ASSERT_TRUE(old.ok());
  EXPECT_EQ((*old)->PageCachePolicy(), fuse::PageCache::kDrop);
  WriteFile(ds_ + "/templates/t.img", RandomBytes(content_.size(), 3));
  struct timespec times[2] = {{0, UTIME_OMIT}, {12345, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, (ds_ + "/templates/t.img").c_str(), times, 0), 0);
  auto g = fs_->Open("templates/t.img", O_RDONLY);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->PageCachePolicy(), fuse::PageCache::kBypass);
  (*old)->Release();
  // The old generation's pages may still be in the kernel: dropped first.
  auto h = fs_->Open("templates/t.img", O_RDONLY);
  EXPECT_EQ((*h)->PageCachePolicy(), fuse::PageCache::kDrop);
  (*h)->Release();
  (*g)->Release();
}

TEST_F(DatastoreFsTest, UnsettledGenerationIsServedButNotCached) {
  MakeFs(std::chrono::hours(1));  // the template was written a moment ago
  auto f = fs_->Open("templates/t.img", O_RDONLY);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->PageCachePolicy(), fuse::PageCache::kBypass);
  EXPECT_EQ(ReadAll(**f, content_.size()), content_);
  EXPECT_EQ(ReadAll(**f, content_.size()), content_);
  (*f)->Release();
  cache_->WaitIdle();
  EXPECT_EQ(cache_->used_bytes(), 0u);
  EXPECT_EQ(Counter("goldcache_datastore_read_bytes_total"), 2 * content_.size());
  EXPECT_EQ(Counter("goldcache_cache_unsettled_fills_total"), 2u * 4);

  MakeFs(std::chrono::milliseconds(0));  // now it is old enough
  auto g = fs_->Open("templates/t.img", O_RDONLY);
  EXPECT_EQ(ReadAll(**g, content_.size()), content_);
  (*g)->Release();
  cache_->WaitIdle();
  EXPECT_EQ(cache_->used_bytes(), content_.size());
}

TEST_F(DatastoreFsTest, ChangeUnderAnOpenHandleIsReportedAndNeverMixed) {
  auto f = fs_->Open("templates/t.img", O_RDONLY);
  std::string first(65536, '\0');
  ASSERT_TRUE((*f)->Read(0, std::span<char>(first.data(), first.size())).ok());  // chunk 0 cached
  std::string v2 = RandomBytes(content_.size(), 3);
  WriteFile(ds_ + "/templates/t.img", v2);
  struct timespec times[2] = {{0, UTIME_OMIT}, {54321, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, (ds_ + "/templates/t.img").c_str(), times, 0), 0);
  // Cached chunk of the old generation: still served, and it is old content.
  std::string again(65536, '\0');
  ASSERT_TRUE((*f)->Read(0, std::span<char>(again.data(), again.size())).ok());
  EXPECT_EQ(again, content_.substr(0, 65536));
  // Uncached chunk: the datastore now has other bytes; refuse instead of mixing.
  auto r = (*f)->Read(65536, std::span<char>(again.data(), again.size()));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kStale);
  EXPECT_EQ(Counter("goldcache_template_changed_while_open_total"), 1u);
  // A new open while the old handle is still open: reported again, new content served.
  auto g = fs_->Open("templates/t.img", O_RDONLY);
  EXPECT_EQ(ReadAll(**g, v2.size()), v2);
  EXPECT_EQ(Counter("goldcache_template_changed_while_open_total"), 2u);
  (*f)->Release();
  (*g)->Release();
}

// ---------------------------------------------------------------------------
// The datastore misbehaving (issue 9): a failed read, a short one, a hung one,
// a failed write or commit. Never a wrong byte, never a stranded desktop.

// A read the filer fails (a bad disk behind it): that read is EIO, nothing is
// cached from it, and the next read of the same bytes goes to the datastore
// again and is right.
TEST_F(DatastoreFsTest, ADatastoreReadErrorFailsThatReadCachesNothingAndTheNextReadIsRight) {
  ds_faults_.Add({.op = io::Op::kRead, .path_contains = "t.img", .count = 1, .error = EIO});
  auto f = fs_->Open("templates/t.img", O_RDONLY);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::string buf(65536, '\0');
  auto r = (*f)->Read(0, std::span<char>(buf.data(), buf.size()));
  ASSERT_FALSE(r.ok()) << "a failed datastore read was served as " << *r << " bytes";
  EXPECT_EQ(fuse::ToErrno(r.status()), EIO) << r.status().ToString();
  EXPECT_GE(Counter("goldcache_datastore_errors_total"), 1u);
  EXPECT_GE(Counter("goldcache_errors_total", {{"kind", "read"}}), 1u);
  cache_->WaitIdle();
  EXPECT_EQ(cache_->used_bytes(), 0u) << "something was cached from a failed read";

  const uint64_t filer = Counter("goldcache_datastore_read_bytes_total");
  EXPECT_EQ(ReadAll(**f, content_.size()), content_);  // the same handle recovers
  EXPECT_EQ(Counter("goldcache_datastore_read_bytes_total") - filer, content_.size());
  cache_->WaitIdle();
  EXPECT_EQ(ReadAll(**f, content_.size()), content_);  // and now hits
  EXPECT_EQ(Counter("goldcache_datastore_read_bytes_total") - filer, content_.size());
  (*f)->Release();
}

// A read that comes back short of what the generation's size promises (the
// file was cut between the stat and the read, or the filer lied): never
// zero-filled, never cached; the read fails, the next one is right.
TEST_F(DatastoreFsTest, AShortDatastoreReadIsNeverServedAsDataNorCached) {
  ds_faults_.Add({.op = io::Op::kRead, .path_contains = "t.img", .count = 1, .short_write = true});
  auto f = fs_->Open("templates/t.img", O_RDONLY);
  ASSERT_TRUE(f.ok());
  std::string buf(65536, '\0');
  auto r = (*f)->Read(0, std::span<char>(buf.data(), buf.size()));
  ASSERT_FALSE(r.ok()) << "a short datastore read was served as " << *r << " bytes";
  cache_->WaitIdle();
  EXPECT_EQ(cache_->used_bytes(), 0u);
  EXPECT_EQ(ReadAll(**f, content_.size()), content_);
  (*f)->Release();
}

// A desktop's base read failing at the datastore fails that read only: the
// desktop's own writes still read back, another desktop is untouched, and
// once the filer answers the same read is right.
TEST_F(DatastoreFsTest, ADatastoreErrorUnderADesktopFailsOnlyItsUnwrittenBytes) {
  WriteFile(ds_ + "/pool/vm2.img", content_);
  auto a = fs_->Open("pool/vm1.img", O_RDWR);
  auto b = fs_->Open("pool/vm2.img", O_RDWR);
  ASSERT_TRUE(a.ok() && b.ok());
  const std::string mine = RandomBytes(65536, 21);
  ASSERT_TRUE((*a)->Write(0, std::span<const char>(mine.data(), mine.size())).ok());
  ds_faults_.Add({.op = io::Op::kRead, .path_contains = "vm1.img", .error = EIO});

  std::string buf(65536, '\0');
  auto n = (*a)->Read(0, std::span<char>(buf.data(), buf.size()));
  ASSERT_TRUE(n.ok()) << "the desktop's own bytes need no datastore: " << n.status().ToString();
  EXPECT_EQ(buf, mine);
  auto r = (*a)->Read(2 * 65536, std::span<char>(buf.data(), buf.size()));
  ASSERT_FALSE(r.ok()) << "bytes the datastore failed to give were served";
  EXPECT_EQ(fuse::ToErrno(r.status()), EIO) << r.status().ToString();
  EXPECT_EQ(ReadAll(**b, content_.size()), content_);

  ds_faults_.Clear();
  std::string want = content_;
  want.replace(0, mine.size(), mine);
  EXPECT_EQ(ReadAll(**a, content_.size()), want);
  (*a)->Release();
  (*b)->Release();
  EXPECT_EQ(Counter("goldcache_datastore_write_bytes_total"), 0u);
}

// A datastore read that hangs (a server that stopped answering one request)
// holds only the readers of those bytes: a cached template, another
// desktop, lookups and the stuck file's own attributes all answer meanwhile,
// and the stuck read completes with the right bytes when the filer does.
TEST_F(DatastoreFsTest, AHungDatastoreReadStallsNoOtherReaderNorLookups) {
  WriteFile(ds_ + "/templates/slow.img", content_);
  {  // t.img, cached
    auto t = fs_->Open("templates/t.img", O_RDONLY);
    ASSERT_EQ(ReadAll(**t, content_.size()), content_);
    (*t)->Release();
  }
  cache_->WaitIdle();
  auto latch = std::make_shared<io::Latch>();
  ds_faults_.Add({.op = io::Op::kRead, .path_contains = "slow.img", .latch = latch});
  auto slow = fs_->Open("templates/slow.img", O_RDONLY);
  ASSERT_TRUE(slow.ok());
  auto stuck = std::async(std::launch::async, [&] { return ReadAll(**slow, content_.size()); });
  ASSERT_TRUE(latch->WaitBlocked(std::chrono::seconds(30))) << "the read never reached the filer";

  auto others = std::async(std::launch::async, [&] {
    const uint64_t filer = Counter("goldcache_datastore_read_bytes_total");
    auto t = fs_->Open("templates/t.img", O_RDONLY);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(ReadAll(**t, content_.size()), content_);
    (*t)->Release();
    EXPECT_EQ(Counter("goldcache_datastore_read_bytes_total"), filer) << "not a cache hit";
    auto d = fs_->Open("pool/vm1.img", O_RDWR);
    ASSERT_TRUE(d.ok());
    const std::string w = RandomBytes(4096, 22);
    EXPECT_TRUE((*d)->Write(0, std::span<const char>(w.data(), w.size())).ok());
    std::string back(4096, '\0');
    EXPECT_TRUE((*d)->Read(0, std::span<char>(back.data(), back.size())).ok());
    EXPECT_EQ(back, w);
    (*d)->Release();
    EXPECT_EQ(fs_->GetAttr("templates/slow.img")->st_size, static_cast<off_t>(content_.size()));
    EXPECT_TRUE(fs_->ReadDir("templates").ok());
    auto again = fs_->Open("templates/slow.img", O_RDONLY);  // an open is not a read
    EXPECT_TRUE(again.ok());
    if (again.ok()) (*again)->Release();
  });
  // Not a timing assert: a bound so that a deadlock fails instead of hanging.
  const bool done = others.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  latch->Open();
  EXPECT_TRUE(done) << "a reader of other bytes waited for the hung datastore read";
  others.wait();
  EXPECT_EQ(stuck.get(), content_);
  (*slow)->Release();
}

// A persistent (passthrough) file: the filer's write and commit errors reach
// the writer (an NFS mount reports ENOSPC/EDQUOT at write, fsync or close),
// instead of the writer believing its bytes are safe.
TEST_F(DatastoreFsTest, PassthroughWriteAndCommitErrorsReachTheWriter) {
  auto f = fs_->Create("iso/log.txt", O_WRONLY, 0644);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const std::string text = "persistent bytes";
  ds_faults_.Add({.op = io::Op::kWrite, .path_contains = "log.txt", .count = 1, .error = EDQUOT});
  auto w = (*f)->Write(0, std::span<const char>(text.data(), text.size()));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(fuse::ToErrno(w.status()), EDQUOT) << w.status().ToString();
  ASSERT_TRUE((*f)->Write(0, std::span<const char>(text.data(), text.size())).ok());
  ds_faults_.Add({.op = io::Op::kSync, .path_contains = "log.txt", .count = 2, .error = ENOSPC});
  EXPECT_EQ(fuse::ToErrno((*f)->Fsync(true)), ENOSPC);
  EXPECT_EQ(fuse::ToErrno((*f)->Flush(true)), ENOSPC) << "close(2) would have reported success";
  (*f)->Release();
  EXPECT_GE(Counter("goldcache_datastore_errors_total"), 3u);
}

TEST_F(DatastoreFsTest, DesktopsAndTemplatesCountTheirOwnIo) {
  auto t = fs_->Open("templates/t.img", O_RDONLY);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(ReadAll(**t, content_.size()), content_);  // misses: all from the datastore
  EXPECT_EQ(ReadAll(**t, content_.size()), content_);  // hits
  (*t)->Release();
  auto d = fs_->Open("pool/vm1.img", O_RDWR);
  ASSERT_TRUE(d.ok());
  std::string data = RandomBytes(5000, 9);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*d)->Write(i * 8192, std::span<const char>(data.data(), data.size())).ok());
  }
  std::string buf(65536, '\0');
  auto n = (*d)->Read(0, std::span<char>(buf.data(), buf.size()));
  ASSERT_TRUE(n.ok());

  auto templates = fs_->ListTemplates();
  ASSERT_EQ(templates.size(), 1u);
  const IoCounts& ti = templates[0].io;
  EXPECT_EQ(ti.read_ops, 2u);
  EXPECT_EQ(ti.read_bytes, 2 * content_.size());
  EXPECT_EQ(ti.read_bytes_from_datastore, content_.size());
  EXPECT_GT(ti.read_latency_ns, 0u);
  EXPECT_EQ(ti.write_ops, 0u);

  auto desktops = fs_->ListDesktops();
  ASSERT_EQ(desktops.size(), 1u);
  const IoCounts& di = desktops[0].io;
  EXPECT_EQ(di.write_ops, 3u);
  EXPECT_EQ(di.write_bytes, 3 * data.size());
  EXPECT_GT(di.write_latency_ns, 0u);
  EXPECT_EQ(di.read_ops, 1u);
  EXPECT_EQ(di.read_bytes, 65536u);
  // The base under the overlay is a separate file (pool/vm1.img) from the
  // template: its chunks come from the datastore the first time.
  EXPECT_GT(di.read_bytes_from_datastore, 0u);
  EXPECT_LT(di.read_bytes_from_datastore, di.read_bytes);  // some bytes came from the overlay
  EXPECT_GT(di.read_latency_ns, 0u);
  (*d)->Release();
  // The reset on last close starts the next overlay's counts from zero.
  auto again = fs_->Open("pool/vm1.img", O_RDONLY);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(fs_->ListDesktops().at(0).io.read_ops, 0u);
  (*again)->Release();
}

}  // namespace
}  // namespace goldcache::roles
