#include "cache/chunk_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "index/digest.h"
#include "index/fault_fs.h"
#include "io/fault_env.h"

namespace goldcache::cache {
namespace {

constexpr uint32_t kChunk = 64 * 1024;
// store.dat: per slot 4 KiB of header and checksums, then the data.
constexpr uint64_t kMeta = 4096;
constexpr uint64_t kSlot = kChunk + kMeta;
constexpr uint64_t kTableAt = 64;  // the checksum table within a slot's meta

// A datastore file held in memory that counts every read, and can hold reads
// at a gate so a test decides when a fetch finishes.
class CountingSource : public ChunkSource {
 public:
  explicit CountingSource(std::vector<char> data) : data_(std::move(data)) {}
  Result<size_t> ReadAt(uint64_t offset, std::span<char> buf) override {
    reads.fetch_add(1);
    {
      std::unique_lock lock(mu_);
      if (held_offsets_.empty() || held_offsets_.count(offset)) {
        ++waiting_;
        cv_.notify_all();
        cv_.wait(lock, [&] { return open_; });
        --waiting_;
      }
    }
    if (offset >= data_.size()) return size_t{0};
    size_t n = std::min<size_t>(buf.size(), data_.size() - offset - truncate_by);
    std::memcpy(buf.data(), data_.data() + offset, n);
    bytes.fetch_add(n);
    return n;
  }
  void Hold() {
    std::lock_guard lock(mu_);
    open_ = false;
  }
  // Holds only reads at these offsets (the others pass).
  void HoldOnly(std::set<uint64_t> offsets) {
    std::lock_guard lock(mu_);
    open_ = false;
    held_offsets_ = std::move(offsets);
  }
  // Until `n` reads wait at the gate.
  void WaitHeld(int n) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return waiting_ >= n; });
  }
  void Release() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  const std::vector<char>& data() const { return data_; }
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> bytes{0};
  size_t truncate_by = 0;

 private:
  std::vector<char> data_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  std::set<uint64_t> held_offsets_;
  int waiting_ = 0;
};

std::vector<char> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<char> v(n);
  for (auto& c : v) c = static_cast<char>(rng());
  return v;
}

class ChunkCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gc-cache-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // With `env`, a FaultEnv, both the store's and the index's files obey it.
  std::unique_ptr<ChunkCache> OpenCache(metrics::Registry& reg, uint64_t capacity = 64 * kChunk,
                                        std::string dir = "", io::FaultEnv* env = nullptr) {
    CacheOptions o;
    o.env = env;
    if (env != nullptr) o.index_env = index::NewFaultFilesEnv(*env);
    o.dir = dir.empty() ? dir_ + "/cache" : dir;
    o.capacity_bytes = capacity;
    o.chunk_size = kChunk;
    o.index_flush_interval = std::chrono::milliseconds(20);
    o.registry = &reg;
    auto c = ChunkCache::Open(o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }
  GenerationId Bind(ChunkCache& c, uint64_t size, int64_t mtime = 1) {
    return c.BindGeneration(index::GenerationKey{"ds:t.img", size, mtime, 1, 1})->id;
  }
  static uint64_t Counter(metrics::Registry& reg, const std::string& name) {
    return reg.GetCounter(name, "").Value();
  }
  // Reads the whole file in `step`-byte reads and checks every byte; then
  // waits until what was fetched is stored.
  static void ReadAllAndCheck(ChunkCache& c, GenerationId gen, CountingSource& src,
                              size_t step = 10000) {
    const auto& want = src.data();
    std::vector<char> buf(step);
    for (uint64_t off = 0; off < want.size(); off += step) {
      auto r = c.Read(gen, want.size(), off, buf, src);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      ASSERT_EQ(r->bytes, std::min<size_t>(step, want.size() - off));
      ASSERT_EQ(0, std::memcmp(buf.data(), want.data() + off, r->bytes)) << "offset " << off;
    }
    c.WaitIdle();
  }
  // Chunk 1 of template `a` and of its clone `b`, read at once: the
  // template's fetch is held at the datastore until the clone's reader has
  // joined it; both reads must succeed with their own file's bytes.
  static void ReadChunkOneWhileJoined(ChunkCache& c, metrics::Registry& reg, GenerationId a,
                                      CountingSource& tmpl, GenerationId b, CountingSource& clone) {
    const uint64_t size = tmpl.data().size();
    tmpl.HoldOnly({kChunk});
    std::vector<char> got_a(kChunk), got_b(kChunk);
    Result<ReadOutcome> ra = Status::Error(Code::kAborted, "not read");
    Result<ReadOutcome> rb = ra;
    std::thread ta([&] { ra = c.Read(a, size, kChunk, got_a, tmpl); });
    tmpl.WaitHeld(1);  // the template's fetch is at the datastore
    const uint64_t joins = Counter(reg, "goldcache_cache_single_flight_waits_total");
    std::thread tb([&] { rb = c.Read(b, size, kChunk, got_b, clone); });
    // The clone's reader joins that fetch rather than reading its own file.
    while (Counter(reg, "goldcache_cache_single_flight_waits_total") == joins) {
      std::this_thread::yield();
    }
    tmpl.Release();
    ta.join();
    tb.join();
    ASSERT_TRUE(ra.ok()) << ra.status().ToString();
    ASSERT_TRUE(rb.ok()) << rb.status().ToString();
    EXPECT_EQ(0, std::memcmp(got_a.data(), tmpl.data().data() + kChunk, kChunk));
    EXPECT_EQ(0, std::memcmp(got_b.data(), clone.data().data() + kChunk, kChunk));
  }
  // Where chunk `chunk` of `gen` lives in store.dat.
  static uint64_t SlotOf(ChunkCache& c, GenerationId gen, uint64_t chunk) {
    auto rec = c.RecordOf(ChunkKey{gen, chunk});
    EXPECT_TRUE(rec.has_value()) << "chunk " << chunk << " is not cached";
    return rec ? rec->slot : 0;
  }
  std::string dir_;
};

TEST_F(ChunkCacheTest, ServesEveryByteAndFetchesEachChunkOnce) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource src(RandomBytes(10 * kChunk + 1234, 1));  // short last chunk
  GenerationId gen = Bind(*cache, src.data().size());
  ReadAllAndCheck(*cache, gen, src);
  EXPECT_EQ(src.reads.load(), 11u);
  EXPECT_EQ(src.bytes.load(), src.data().size());
  ReadAllAndCheck(*cache, gen, src, 4096);
  EXPECT_EQ(src.reads.load(), 11u);  // second pass entirely from the cache
  EXPECT_EQ(cache->used_bytes(), src.data().size());
  EXPECT_GT(Counter(reg, "goldcache_cache_hits_total"), 0u);
}

// Write-behind: the reader gets its bytes while the local store write is
// still held; the index names the chunk only once it is stored.
TEST_F(ChunkCacheTest, WriteBehindAnswersTheReaderBeforeTheStoreAndIndexesOnlyStoredChunks) {
  metrics::Registry reg;
  io::FaultEnv env;
  auto cache = OpenCache(reg, 64 * kChunk, "", &env);
  CountingSource src(RandomBytes(4 * kChunk, 21));
  GenerationId gen = Bind(*cache, src.data().size());
  auto latch = std::make_shared<io::Latch>();
  env.Add({.op = io::Op::kWrite, .path_contains = "store.dat", .latch = latch});

  std::vector<char> buf(kChunk);
  auto r = cache->Read(gen, src.data().size(), 0, buf, src);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->bytes, kChunk);
  EXPECT_EQ(0, std::memcmp(buf.data(), src.data().data(), kChunk));
  ASSERT_TRUE(latch->WaitBlocked(std::chrono::seconds(30))) << "the chunk was never stored";
  EXPECT_FALSE(cache->RecordOf(ChunkKey{gen, 0}).has_value())
      << "the index names a chunk whose store write has not happened";

  latch->Open();
  cache->WaitIdle();
  EXPECT_TRUE(cache->RecordOf(ChunkKey{gen, 0}).has_value());
  const uint64_t reads = src.reads.load();
  r = cache->Read(gen, src.data().size(), 0, buf, src);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(0, std::memcmp(buf.data(), src.data().data(), kChunk));
  EXPECT_EQ(src.reads.load(), reads) << "a stored chunk went back to the datastore";
}

// kill -9 while a fetched chunk waits for its store write: after the
// restart no index record names it, and it is fetched again, right. The
// "agent" is a death-test child: a fresh process (gtest re-executes this
// test in it, so no thread of ours is forked), which SIGKILLs itself once
// it was served and its store write is held.
TEST_F(ChunkCacheTest, KillBeforeTheStoreWriteLeavesNoRecordNamingTheChunk) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  CountingSource src(RandomBytes(4 * kChunk, 22));
  // The child runs SetUp and this body again (another temporary dir): it
  // takes ours from the environment, which only the parent sets.
  if (GTEST_FLAG_GET(internal_run_death_test).empty()) {
    ASSERT_EQ(setenv("GC_KILL_TEST_CACHE", (dir_ + "/cache").c_str(), 1), 0);
  }
  EXPECT_EXIT(
      {
        metrics::Registry reg;
        io::FaultEnv env;
        auto cache = OpenCache(reg, 64 * kChunk, std::getenv("GC_KILL_TEST_CACHE"), &env);
        if (cache == nullptr) _exit(2);
        GenerationId gen = Bind(*cache, src.data().size());
        auto latch = std::make_shared<io::Latch>();
        env.Add({.op = io::Op::kWrite, .path_contains = "store.dat", .latch = latch});
        std::vector<char> buf(kChunk);
        auto r = cache->Read(gen, src.data().size(), kChunk, buf, src);
        if (!r.ok() || r->bytes != kChunk ||
            std::memcmp(buf.data(), src.data().data() + kChunk, kChunk) != 0) {
          _exit(3);  // not served right
        }
        if (!latch->WaitBlocked(std::chrono::seconds(30))) _exit(4);  // store write not held
        std::filesystem::remove_all(dir_);  // the child's own (unused) SetUp dir
        raise(SIGKILL);
      },
      ::testing::KilledBySignal(SIGKILL), "");
  unsetenv("GC_KILL_TEST_CACHE");

  metrics::Registry reg;
  auto cache = OpenCache(reg);
  ASSERT_NE(cache, nullptr);
  EXPECT_TRUE(cache->recovered_from_crash()) << "the child never ran the cache here";
  auto bound = cache->BindGeneration(index::GenerationKey{"ds:t.img", src.data().size(), 1, 1, 1});
  ASSERT_TRUE(bound.ok());
  EXPECT_EQ(bound->id, 1u) << "not the generation the child bound and served";
  const GenerationId gen = bound->id;
  EXPECT_FALSE(cache->RecordOf(ChunkKey{gen, 1}).has_value());
  std::vector<char> buf(kChunk);
  auto r = cache->Read(gen, src.data().size(), kChunk, buf, src);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(0, std::memcmp(buf.data(), src.data().data() + kChunk, kChunk));
  EXPECT_EQ(src.reads.load(), 1u) << "chunk 1 must come from the datastore again";
}

// Issue 9.6: a damaged index is set aside and the cache starts empty, rather
// than keeping the agent (and every desktop) down until someone deletes it.
TEST_F(ChunkCacheTest, ADamagedIndexIsSetAsideAndTheCacheStartsEmpty) {
  CountingSource src(RandomBytes(4 * kChunk, 23));
  {
    metrics::Registry reg;
    auto cache = OpenCache(reg);
    GenerationId gen = Bind(*cache, src.data().size());
    ReadAllAndCheck(*cache, gen, src);
  }
  ASSERT_EQ(src.reads.load(), 4u);
  {
    std::ofstream current(dir_ + "/cache/index/CURRENT", std::ios::trunc);
    current << "MANIFEST-garbage";  // no newline: RocksDB calls it corruption
  }
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  ASSERT_NE(cache, nullptr);
  EXPECT_EQ(reg.GetCounter("goldcache_errors_total", "", {{"kind", "index_damaged"}}).Value(), 1u);
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/cache/index.damaged/CURRENT"));
  EXPECT_EQ(cache->used_bytes(), 0u);
  GenerationId gen = Bind(*cache, src.data().size());
  ReadAllAndCheck(*cache, gen, src);
  EXPECT_EQ(src.reads.load(), 8u) << "chunks named by no index were served";
  cache.reset();
  // And the new index is a good one: a restart serves from it.
  metrics::Registry reg2;
  cache = OpenCache(reg2);
  ASSERT_NE(cache, nullptr);
  gen = Bind(*cache, src.data().size());
  ReadAllAndCheck(*cache, gen, src);
  EXPECT_EQ(src.reads.load(), 8u);
  EXPECT_EQ(reg2.GetCounter("goldcache_errors_total", "", {{"kind", "index_damaged"}}).Value(), 0u);
}

// Power cuts of the local store at seeded random points of a cold read,
// with index commits in between: after each, the restarted cache proves
// every chunk its index names (none dropped: the index never names bytes
// the cut took), and serves every byte right. The index itself (RocksDB)
// is not cut here; its own writes are synced before it answers.
TEST_F(ChunkCacheTest, PowerCutsAtRandomPointsNeverLeaveTheIndexNamingLostData) {
  constexpr uint64_t kChunks = 24;
  for (uint32_t trial = 0; trial < 8; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const std::string dir = dir_ + "/cut" + std::to_string(trial);
    CountingSource src(RandomBytes(kChunks * kChunk, 30 + trial));
    std::mt19937 rng(trial);
    std::vector<uint64_t> order(kChunks);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    const size_t cut_after = rng() % kChunks;
    {
      metrics::Registry reg;
      io::FaultEnv env;
      auto cache = OpenCache(reg, 64 * kChunk, dir, &env);
      ASSERT_NE(cache, nullptr);
      GenerationId gen = Bind(*cache, src.data().size());
      std::vector<char> buf(kChunk);
      for (size_t i = 0; i < kChunks; ++i) {
        if (i == cut_after) env.PowerCut();
        auto r = cache->Read(gen, src.data().size(), order[i] * kChunk, buf, src);
        ASSERT_TRUE(r.ok()) << r.status().ToString();  // the datastore still answers
        ASSERT_EQ(0, std::memcmp(buf.data(), src.data().data() + order[i] * kChunk, kChunk));
        if (rng() % 3 == 0) (void)cache->FlushIndex();  // fails once the power is off
      }
      cache->WaitIdle();
    }  // the "crashed" agent goes; its cleanup fails on the dead disk
    metrics::Registry reg;
    auto cache = OpenCache(reg, 64 * kChunk, dir);
    ASSERT_NE(cache, nullptr);
    EXPECT_TRUE(cache->recovered_from_crash());
    EXPECT_EQ(Counter(reg, "goldcache_cache_recovery_dropped_total"), 0u)
        << "the index named chunks whose bytes the power cut took";
    src.reads = 0;
    ReadAllAndCheck(*cache, Bind(*cache, src.data().size()), src);
    EXPECT_LE(src.reads.load(), kChunks);
  }
}

// Readahead ramps with the run: as many chunks ahead as the run has come
// (up to readahead_chunks), none for a lone read; a jump starts over.
TEST_F(ChunkCacheTest, ASequentialRunReadsAheadAsFarAsItHasComeAndNoFurther) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  auto src = std::make_shared<CountingSource>(RandomBytes(64 * kChunk, 25));
  GenerationId gen = Bind(*cache, src->data().size());
  ReadStream stream;
  std::vector<char> buf(kChunk);
  auto read = [&](uint64_t chunk) {
    auto r = cache->Read(gen, src->data().size(), chunk * kChunk, buf, *src, &stream, src);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(0, std::memcmp(buf.data(), src->data().data() + chunk * kChunk, kChunk));
  };
  read(0);
  cache->WaitIdle();
  EXPECT_EQ(src->reads.load(), 1u) << "a lone read fetched ahead";
  read(1);  // a run of 2 chunks: 2 ahead
  cache->WaitIdle();
  EXPECT_EQ(src->reads.load(), 4u);
  read(2);
  read(3);  // a run of 4 chunks: 4 ahead, to chunk 7
  cache->WaitIdle();
  EXPECT_EQ(src->reads.load(), 8u);
  EXPECT_EQ(Counter(reg, "goldcache_cache_readahead_chunks_total"), 6u);
  read(40);  // a jump (past the 1 MiB of slack a run allows): a new run, nothing ahead yet
  cache->WaitIdle();
  EXPECT_EQ(src->reads.load(), 9u);
  for (uint64_t c = 4; c < 8; ++c) read(c);  // served from what was fetched ahead
  cache->WaitIdle();
  EXPECT_LE(src->reads.load(), 9u + 4u);  // the new run from 4 fetches ahead again
}

TEST_F(ChunkCacheTest, ReadsPastEndOfFileAreShort) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource src(RandomBytes(5000, 2));
  GenerationId gen = Bind(*cache, 5000);
  std::vector<char> buf(8192);
  EXPECT_EQ(cache->Read(gen, 5000, 4096, buf, src)->bytes, 904u);
  EXPECT_EQ(cache->Read(gen, 5000, 5000, buf, src)->bytes, 0u);
}

TEST_F(ChunkCacheTest, ConcurrentMissesOnOneChunkCostOneDatastoreRead) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource src(RandomBytes(kChunk, 3));
  GenerationId gen = Bind(*cache, kChunk);
  src.Hold();
  std::vector<std::thread> readers;
  std::atomic<int> good{0};
  for (int i = 0; i < 8; ++i) {
    readers.emplace_back([&, i] {
      std::vector<char> buf(4096);
      auto r = cache->Read(gen, kChunk, i * 4096, buf, src);
      if (r.ok() && std::memcmp(buf.data(), src.data().data() + i * 4096, 4096) == 0) ++good;
    });
  }
  // Wait (bounded) until the other seven are provably waiting on the first.
  for (int i = 0; i < 5000 && Counter(reg, "goldcache_cache_single_flight_waits_total") < 7; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(Counter(reg, "goldcache_cache_single_flight_waits_total"), 7u);
  src.Release();
  for (auto& t : readers) t.join();
  EXPECT_EQ(good.load(), 8);
  EXPECT_EQ(src.reads.load(), 1u);
}

TEST_F(ChunkCacheTest, EightReadersInDifferentOrdersReadTheTemplateOnce) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource src(RandomBytes(48 * kChunk, 4));
  const uint64_t size = src.data().size();
  GenerationId gen = Bind(*cache, size);
  std::atomic<int> bad{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 8; ++r) {
    readers.emplace_back([&, r] {
      std::vector<uint64_t> blocks(size / 16384);
      std::iota(blocks.begin(), blocks.end(), 0);
      std::shuffle(blocks.begin(), blocks.end(), std::mt19937(r));
      std::vector<char> buf(16384);
      for (uint64_t b : blocks) {
        auto res = cache->Read(gen, size, b * 16384, buf, src);
        if (!res.ok() || std::memcmp(buf.data(), src.data().data() + b * 16384, 16384) != 0) ++bad;
      }
    });
  }
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(src.bytes.load(), size);  // exactly one datastore read per chunk
}

TEST_F(ChunkCacheTest, CleanRestartServesEverythingWithoutTheDatastore) {
  CountingSource src(RandomBytes(20 * kChunk, 5));
  {
    metrics::Registry reg;
    auto cache = OpenCache(reg);
    ReadAllAndCheck(*cache, Bind(*cache, src.data().size()), src);
  }
  src.reads = 0;
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  EXPECT_FALSE(cache->recovered_from_crash());
  ReadAllAndCheck(*cache, Bind(*cache, src.data().size()), src);
  EXPECT_EQ(src.reads.load(), 0u);
}

TEST_F(ChunkCacheTest, AfterACrashKeepsEveryChunkItCanProveGood) {
  CountingSource src(RandomBytes(20 * kChunk, 6));
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  GenerationId gen = Bind(*cache, src.data().size());
  ReadAllAndCheck(*cache, gen, src);
  ASSERT_TRUE(cache->FlushIndex().ok());
  // A crash image: the cache dir as it is on disk now, RUNNING marker and all.
  const std::string image = dir_ + "/image";
  std::filesystem::copy(dir_ + "/cache", image, std::filesystem::copy_options::recursive);
  // Damage chunk 3's checksum table: that chunk can no longer be proved good.
  {
    int fd = open((image + "/store.dat").c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint32_t garbage = 0xFFFFFFFF;
    ASSERT_EQ(pwrite(fd, &garbage, 4, SlotOf(*cache, gen, 3) * kSlot + kTableAt), 4);
    close(fd);
  }
  metrics::Registry reg2;
  auto recovered = OpenCache(reg2, 64 * kChunk, image);
  EXPECT_TRUE(recovered->recovered_from_crash());
  EXPECT_EQ(Counter(reg2, "goldcache_cache_recovery_dropped_total"), 1u);
  src.reads = 0;
  ReadAllAndCheck(*recovered, Bind(*recovered, src.data().size()), src);
  EXPECT_EQ(src.reads.load(), 1u);  // only the dropped chunk is fetched again
}

TEST_F(ChunkCacheTest, CorruptBlockIsDetectedAndRefetchedNeverServed) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource src(RandomBytes(4 * kChunk, 7));
  GenerationId gen = Bind(*cache, src.data().size());
  ReadAllAndCheck(*cache, gen, src);
  int fd = open((dir_ + "/cache/store.dat").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char flipped = ~src.data()[kChunk + 5000];
  ASSERT_EQ(pwrite(fd, &flipped, 1, SlotOf(*cache, gen, 1) * kSlot + kMeta + 5000), 1);
  close(fd);
  src.reads = 0;
  ReadAllAndCheck(*cache, gen, src, 4096);
  EXPECT_EQ(Counter(reg, "goldcache_cache_checksum_failures_total"), 1u);
  EXPECT_EQ(src.reads.load(), 1u);
}

TEST_F(ChunkCacheTest, StaysWithinCapacityAndKeepsServingCorrectBytes) {
  metrics::Registry reg;
  auto cache = OpenCache(reg, 4 * kChunk);
  CountingSource src(RandomBytes(16 * kChunk, 8));
  GenerationId gen = Bind(*cache, src.data().size());
  for (int pass = 0; pass < 3; ++pass) {
    ReadAllAndCheck(*cache, gen, src);
    EXPECT_LE(cache->used_bytes(), cache->capacity_bytes());
  }
  EXPECT_GT(Counter(reg, "goldcache_cache_evictions_total"), 0u);
}

TEST_F(ChunkCacheTest, GenerationsNeverShareChunks) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource v1(RandomBytes(2 * kChunk, 9)), v2(RandomBytes(2 * kChunk, 10));
  GenerationId g1 = Bind(*cache, 2 * kChunk, 1);
  ReadAllAndCheck(*cache, g1, v1);
  auto b2 = cache->BindGeneration(index::GenerationKey{"ds:t.img", 2 * kChunk, 2, 1, 1});
  ASSERT_TRUE(b2.ok());
  EXPECT_TRUE(b2->changed);
  ReadAllAndCheck(*cache, b2->id, v2);
  EXPECT_EQ(v2.reads.load(), 2u);
}

TEST_F(ChunkCacheTest, FileShorterThanItsGenerationIsStaleNotPadded) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource src(RandomBytes(2 * kChunk, 11));
  src.truncate_by = 100;  // the datastore file shrank after the generation was taken
  GenerationId gen = Bind(*cache, 2 * kChunk);
  std::vector<char> buf(4096);
  auto r = cache->Read(gen, 2 * kChunk, kChunk, buf, src);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kStale);
}

TEST_F(ChunkCacheTest, CacheMadeWithAnotherChunkSizeIsDiscarded) {
  CountingSource src(RandomBytes(2 * kChunk, 12));
  {
    metrics::Registry reg;
    auto cache = OpenCache(reg);
    ReadAllAndCheck(*cache, Bind(*cache, src.data().size()), src);
  }
  metrics::Registry reg;
  CacheOptions o;
  o.dir = dir_ + "/cache";
  o.capacity_bytes = 64 * kChunk;
  o.chunk_size = kChunk * 2;
  o.registry = &reg;
  auto cache = std::move(ChunkCache::Open(o)).value();
  EXPECT_EQ(cache->used_bytes(), 0u);
  src.reads = 0;
  ReadAllAndCheck(*cache, Bind(*cache, src.data().size()), src);
  EXPECT_EQ(src.reads.load(), 1u);
}

TEST_F(ChunkCacheTest, LendsSpaceToOverlaysByEvictingAndGrowsBackWhenReturned) {
  metrics::Registry reg;
  auto cache = OpenCache(reg, 8 * kChunk);
  ASSERT_EQ(cache->slot_bytes(), kSlot);
  // 6 chunks: the cache evicts one slot ahead, so 8 slots hold 7 at most.
  CountingSource src(RandomBytes(6 * kChunk, 13));
  GenerationId gen = Bind(*cache, src.data().size());
  ReadAllAndCheck(*cache, gen, src);
  EXPECT_EQ(cache->used_bytes(), 6 * kChunk);
  // Overlays need 3 chunks and a bit: the cache gives 4 whole chunks.
  EXPECT_EQ(cache->LendSpace(3 * kChunk + 1), 4 * kChunk);
  EXPECT_EQ(cache->capacity_bytes(), 4 * kChunk);
  EXPECT_LE(cache->used_bytes(), 4 * kChunk);
  struct stat st;
  ASSERT_EQ(stat((dir_ + "/cache/store.dat").c_str(), &st), 0);
  EXPECT_LE(static_cast<uint64_t>(st.st_blocks) * 512, 4 * kSlot + 65536);  // really given back
  // Never below two chunks: the cache must still be able to serve a miss.
  EXPECT_EQ(cache->LendSpace(100 * kChunk), 2 * kChunk);
  ReadAllAndCheck(*cache, gen, src);  // still correct, with less room
  EXPECT_LE(cache->used_bytes(), 2 * kChunk);
  EXPECT_EQ(cache->ReturnSpace(6 * kChunk), 6 * kChunk);
  EXPECT_EQ(cache->capacity_bytes(), 8 * kChunk);
  ReadAllAndCheck(*cache, gen, src);
  src.reads = 0;
  ReadAllAndCheck(*cache, gen, src);
  EXPECT_EQ(src.reads.load(), 0u);  // grown back: everything fits again
}

// A budget far larger than the cache's use: LendSpace takes never-written
// slots (nothing for the file system), GiveBackDisk takes cached chunks.
TEST_F(ChunkCacheTest, GiveBackDiskFreesRealSpaceWhereLendSpaceFreesOnlyBudget) {
  metrics::Registry reg;
  auto cache = OpenCache(reg, 64 * kChunk);
  CountingSource src(RandomBytes(8 * kChunk, 24));
  GenerationId gen = Bind(*cache, src.data().size());
  ReadAllAndCheck(*cache, gen, src);
  auto allocated = [&] {
    struct stat st;
    EXPECT_EQ(stat((dir_ + "/cache/store.dat").c_str(), &st), 0);
    return static_cast<uint64_t>(st.st_blocks) * 512;
  };
  const uint64_t before = allocated();
  ASSERT_GE(before, 8 * kChunk);
  EXPECT_EQ(cache->LendSpace(4 * kChunk), 4 * kChunk);
  EXPECT_EQ(cache->used_bytes(), 8 * kChunk);  // nothing cached had to go
  EXPECT_EQ(allocated(), before);
  EXPECT_EQ(cache->GiveBackDisk(4 * kChunk), 4 * kChunk);
  EXPECT_EQ(cache->used_bytes(), 4 * kChunk);
  EXPECT_EQ(cache->capacity_bytes(), 56 * kChunk);
  EXPECT_LE(allocated(), before - 4 * kChunk);
  ReadAllAndCheck(*cache, gen, src);  // still every byte right
}

TEST_F(ChunkCacheTest, CheckFindsAndDropsEveryCorruptChunk) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource src(RandomBytes(6 * kChunk, 14));
  GenerationId gen = Bind(*cache, src.data().size());
  ReadAllAndCheck(*cache, gen, src);
  int fd = open((dir_ + "/cache/store.dat").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  for (uint64_t chunk : {1, 4}) {
    char byte = ~src.data()[chunk * kChunk + 777];
    ASSERT_EQ(pwrite(fd, &byte, 1, SlotOf(*cache, gen, chunk) * kSlot + kMeta + 777), 1);
  }
  close(fd);
  uint64_t last_done = 0;
  auto report = cache->Check([&](uint64_t done, uint64_t total) {
    last_done = done;
    return true;
  });
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->chunks, 6u);
  EXPECT_EQ(report->bad, 2u);
  EXPECT_EQ(last_done, 6u);
  EXPECT_EQ(cache->used_bytes(), 4 * kChunk);
  src.reads = 0;
  ReadAllAndCheck(*cache, gen, src);
  EXPECT_EQ(src.reads.load(), 2u);  // exactly the two dropped chunks come back
}

TEST_F(ChunkCacheTest, EvictDropsOneGenerationOnly) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource a(RandomBytes(3 * kChunk, 15)), b(RandomBytes(3 * kChunk, 16));
  GenerationId ga = Bind(*cache, a.data().size(), 1);
  GenerationId gb =
      cache->BindGeneration(index::GenerationKey{"ds:u.img", 3 * kChunk, 1, 1, 2})->id;
  ReadAllAndCheck(*cache, ga, a);
  ReadAllAndCheck(*cache, gb, b);
  EXPECT_EQ(cache->Evict(ga), 3 * kChunk);
  EXPECT_EQ(cache->cached_bytes_of(ga), 0u);
  EXPECT_EQ(cache->cached_bytes_of(gb), 3 * kChunk);
  EXPECT_EQ(cache->GenerationsOf("ds:t.img"), std::vector<GenerationId>{ga});
}

TEST_F(ChunkCacheTest, PinnedGenerationSurvivesAScanAndARestart) {
  CountingSource boot(RandomBytes(3 * kChunk, 17)), scan(RandomBytes(20 * kChunk, 18));
  GenerationId gboot;
  {
    metrics::Registry reg;
    auto cache = OpenCache(reg, 8 * kChunk);
    gboot = Bind(*cache, boot.data().size(), 1);
    ReadAllAndCheck(*cache, gboot, boot);
    ASSERT_TRUE(cache->Pin(gboot, true).ok());
  }
  metrics::Registry reg;
  auto cache = OpenCache(reg, 8 * kChunk);
  EXPECT_TRUE(cache->pinned(gboot));
  GenerationId gscan =
      cache->BindGeneration(index::GenerationKey{"ds:scan.img", 20 * kChunk, 1, 1, 3})->id;
  EXPECT_EQ(cache->cached_bytes_of(gboot), 3 * kChunk);
  ReadAllAndCheck(*cache, gscan, scan);  // a scan much larger than the cache
  EXPECT_EQ(cache->cached_bytes_of(gboot), 3 * kChunk);
  boot.reads = 0;
  ReadAllAndCheck(*cache, Bind(*cache, boot.data().size(), 1), boot);
  EXPECT_EQ(boot.reads.load(), 0u);
}

// ---------------------------------------------------------------------------
// Content addressing and boot traces

index::GenerationKey KeyOf(const std::string& path, uint64_t size, int64_t mtime = 1) {
  return index::GenerationKey{path, size, mtime, 1, 1};
}

// What `goldcache publish` would write for `data` as generation `key`.
std::shared_ptr<const index::Manifest> ManifestFor(const std::vector<char>& data,
                                                   const index::GenerationKey& key) {
  auto m = std::make_shared<index::Manifest>();
  m->chunk_size = kChunk;
  m->size = key.size;
  m->mtime_ns = key.mtime_ns;
  m->ctime_ns = key.ctime_ns;
  m->ino = key.ino;
  for (uint64_t off = 0; off < data.size(); off += kChunk) {
    m->digests.push_back(index::ComputeDigest(
        std::span<const char>(data.data() + off, std::min<size_t>(kChunk, data.size() - off))));
  }
  return m;
}

// A patched copy: `chunks` chunks of `base` rewritten.
std::vector<char> Patched(std::vector<char> base, const std::vector<uint64_t>& chunks) {
  for (uint64_t c : chunks) {
    auto fresh = RandomBytes(kChunk, 1000 + static_cast<uint32_t>(c));
    std::memcpy(base.data() + c * kChunk, fresh.data(),
                std::min<size_t>(kChunk, base.size() - c * kChunk));
  }
  return base;
}

TEST_F(ChunkCacheTest, AFullCloneIsStoredOnceAndOutlivesItsTemplate) {
  metrics::Registry reg, reg2;  // before the cache: it outlives it
  auto cache = OpenCache(reg);
  CountingSource tmpl(RandomBytes(8 * kChunk + 100, 41));
  CountingSource clone(tmpl.data());
  const GenerationId a = cache->BindGeneration(KeyOf("ds:t.img", tmpl.data().size()))->id;
  const GenerationId b = cache->BindGeneration(KeyOf("ds:clone.img", tmpl.data().size()))->id;
  ReadAllAndCheck(*cache, a, tmpl);
  ReadAllAndCheck(*cache, b, clone);  // no manifest: fetched, but not stored again
  EXPECT_EQ(cache->used_bytes(), tmpl.data().size());
  EXPECT_EQ(cache->cached_bytes_of(b), tmpl.data().size());
  for (uint64_t c = 0; c < 9; ++c) EXPECT_EQ(SlotOf(*cache, a, c), SlotOf(*cache, b, c));
  EXPECT_EQ(reg.GetCounter("goldcache_cache_reused_chunks_total", "", {{"by", "store"}}).Value(),
            9u);

  // The slots stay while the clone names them, through a restart too.
  cache->Evict(a);
  EXPECT_EQ(cache->used_bytes(), tmpl.data().size());
  cache.reset();
  cache = OpenCache(reg2);
  const uint64_t reads = clone.reads.load();
  ReadAllAndCheck(*cache, b, clone, 4096);
  EXPECT_EQ(clone.reads.load(), reads);
  cache->Evict(b);
  ASSERT_TRUE(cache->FlushIndex().ok());
  EXPECT_EQ(cache->used_bytes(), 0u);
}

TEST_F(ChunkCacheTest, AfterACrashASharedSlotIsProvedOnceAndKeepsServingBoth) {
  metrics::Registry reg, reg2;  // before the cache: it outlives it
  auto cache = OpenCache(reg);
  CountingSource tmpl(RandomBytes(4 * kChunk, 42));
  CountingSource clone(tmpl.data());
  const GenerationId a = cache->BindGeneration(KeyOf("ds:t.img", tmpl.data().size()))->id;
  const GenerationId b = cache->BindGeneration(KeyOf("ds:clone.img", tmpl.data().size()))->id;
  ReadAllAndCheck(*cache, a, tmpl);
  ReadAllAndCheck(*cache, b, clone);
  ASSERT_TRUE(cache->FlushIndex().ok());
  const uint64_t shared_slot = SlotOf(*cache, a, 2);
  cache.reset();
  // A crash: the marker stays; and one shared slot's data is damaged.
  std::ofstream(dir_ + "/cache/" + ChunkCache::kRunningMarker).put('x');
  {
    std::fstream f(dir_ + "/cache/" + ChunkStore::kFileName,
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(shared_slot * kSlot + kMeta + 100));
    f.put('\x5a');
  }
  cache = OpenCache(reg2);
  ASSERT_TRUE(cache->recovered_from_crash());
  EXPECT_FALSE(cache->RecordOf(ChunkKey{a, 2}).has_value());
  EXPECT_FALSE(cache->RecordOf(ChunkKey{b, 2}).has_value());
  EXPECT_EQ(Counter(reg2, "goldcache_cache_recovery_dropped_total"), 2u);
  EXPECT_EQ(cache->used_bytes(), 3u * kChunk);
  const uint64_t reads = tmpl.reads.load() + clone.reads.load();
  ReadAllAndCheck(*cache, a, tmpl);
  ReadAllAndCheck(*cache, b, clone);
  EXPECT_EQ(tmpl.reads.load() + clone.reads.load(), reads + 2);  // chunk 2 of each
}

TEST_F(ChunkCacheTest, ADamagedSharedSlotIsNeverAdoptedAgain) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource tmpl(RandomBytes(2 * kChunk, 43));
  CountingSource clone(tmpl.data());
  const GenerationId a = cache->BindGeneration(KeyOf("ds:t.img", tmpl.data().size()))->id;
  const GenerationId b = cache->BindGeneration(KeyOf("ds:clone.img", tmpl.data().size()))->id;
  ReadAllAndCheck(*cache, a, tmpl);
  ReadAllAndCheck(*cache, b, clone);
  const uint64_t slot = SlotOf(*cache, a, 0);
  {
    std::fstream f(dir_ + "/cache/" + ChunkStore::kFileName,
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(slot * kSlot + kMeta + 5));
    f.put('\x5a');
  }
  // Each chunk naming the slot fails, drops it and refetches: the refetched
  // bytes go to a new slot, which the other then names.
  ReadAllAndCheck(*cache, a, tmpl);
  EXPECT_NE(SlotOf(*cache, a, 0), slot);
  ReadAllAndCheck(*cache, b, clone);
  EXPECT_EQ(Counter(reg, "goldcache_cache_checksum_failures_total"), 2u);  // one per chunk
  EXPECT_EQ(SlotOf(*cache, a, 0), SlotOf(*cache, b, 0));
  const uint64_t reads = clone.reads.load();
  ReadAllAndCheck(*cache, b, clone);
  EXPECT_EQ(clone.reads.load(), reads);
}

// A published template and its published full clone, both cold, read the
// same chunk at once: the clone's reader waits for the template's fetch
// (or, had it come later, adopts what it stored): one datastore read.
TEST_F(ChunkCacheTest, ATemplateAndItsCloneMissingTogetherCostOneDatastoreRead) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  CountingSource tmpl(RandomBytes(4 * kChunk, 51));
  CountingSource clone(tmpl.data());
  const uint64_t size = tmpl.data().size();
  const auto ka = KeyOf("ds:t.img", size), kb = KeyOf("ds:clone.img", size);
  const GenerationId a = cache->BindGeneration(ka)->id;
  const GenerationId b = cache->BindGeneration(kb)->id;
  ASSERT_TRUE(cache->AttachManifest(a, ManifestFor(tmpl.data(), ka)));
  ASSERT_TRUE(cache->AttachManifest(b, ManifestFor(clone.data(), kb)));
  ReadChunkOneWhileJoined(*cache, reg, a, tmpl, b, clone);
  EXPECT_EQ(tmpl.reads.load(), 1u);
  EXPECT_EQ(clone.reads.load(), 0u);
  cache->WaitIdle();
  // And from then on the clone's chunk is the template's slot.
  std::vector<char> buf(kChunk);
  ASSERT_TRUE(cache->Read(b, size, kChunk, buf, clone).ok());
  EXPECT_EQ(clone.reads.load(), 0u);
  EXPECT_EQ(SlotOf(*cache, a, 1), SlotOf(*cache, b, 1));
}

// The template's manifest lies about chunk 1 (its bytes are not what the
// clone's true manifest, and its own, say): the clone's reader that joined
// the template's fetch gets the clone's bytes all the same, by a fetch of
// its own, also while the template's bytes wait for the store (and so stay
// findable by what they were taken for, before the fix).
TEST_F(ChunkCacheTest, ACloneWhoseJoinedFetchBroughtOtherBytesFetchesItsOwn) {
  metrics::Registry reg;
  io::FaultEnv env;
  auto cache = OpenCache(reg, 64 * kChunk, "", &env);
  CountingSource clone(RandomBytes(4 * kChunk, 53));
  CountingSource tmpl(Patched(clone.data(), {1}));
  const uint64_t size = tmpl.data().size();
  const auto ka = KeyOf("ds:t.img", size), kb = KeyOf("ds:clone.img", size);
  const GenerationId a = cache->BindGeneration(ka)->id;
  const GenerationId b = cache->BindGeneration(kb)->id;
  ASSERT_TRUE(cache->AttachManifest(a, ManifestFor(clone.data(), ka)));  // the lie
  ASSERT_TRUE(cache->AttachManifest(b, ManifestFor(clone.data(), kb)));
  auto store = std::make_shared<io::Latch>();
  env.Add({.op = io::Op::kWrite, .path_contains = "store.dat", .latch = store});
  ReadChunkOneWhileJoined(*cache, reg, a, tmpl, b, clone);
  store->Open();
  EXPECT_EQ(clone.reads.load(), 1u);
  EXPECT_TRUE(cache->ManifestDistrusted(a));
  EXPECT_FALSE(cache->ManifestDistrusted(b));
  cache->WaitIdle();
}

// A host that never booted a generation gets its trace from the manifest.
TEST_F(ChunkCacheTest, AManifestsTraceIsTheTraceOfAGenerationNeverBootedHere) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  std::vector<char> data = RandomBytes(8 * kChunk, 52);
  const auto key = KeyOf("ds:t.img", data.size());
  const GenerationId gen = cache->BindGeneration(key)->id;
  EXPECT_TRUE(cache->TraceOf(gen).empty());
  auto m = std::make_shared<index::Manifest>(*ManifestFor(data, key));
  m->trace = {5, 1, 7};
  ASSERT_TRUE(cache->AttachManifest(gen, m));
  EXPECT_EQ(cache->TraceOf(gen), (std::vector<uint64_t>{5, 1, 7}));
}

// Patch day: a cached template, 5 % of its chunks rewritten and published
// as a new generation: reading all of it costs the datastore only the
// rewritten chunks, and every byte is the new one.
TEST_F(ChunkCacheTest, APublishedPatchFetchesOnlyTheChangedChunks) {
  metrics::Registry reg;
  auto cache = OpenCache(reg, 128 * kChunk);
  CountingSource v1(RandomBytes(60 * kChunk + 7, 44));
  const GenerationId g1 = cache->BindGeneration(KeyOf("ds:t.img", v1.data().size(), 1))->id;
  ReadAllAndCheck(*cache, g1, v1);

  CountingSource v2(Patched(v1.data(), {3, 31, 59}));
  const auto key2 = KeyOf("ds:t.img", v2.data().size(), 2);
  const GenerationId g2 = cache->BindGeneration(key2)->id;
  ASSERT_NE(g1, g2);
  ASSERT_TRUE(cache->AttachManifest(g2, ManifestFor(v2.data(), key2)));
  ReadAllAndCheck(*cache, g2, v2, 65536);
  EXPECT_EQ(v2.bytes.load(), 3u * kChunk);
  EXPECT_EQ(reg.GetCounter("goldcache_manifest_chunks_total", "", {{"result", "hit"}}).Value(),
            58u);
  EXPECT_EQ(reg.GetCounter("goldcache_manifest_chunks_total", "", {{"result", "miss"}}).Value(),
            3u);
  EXPECT_EQ(Counter(reg, "goldcache_manifest_distrusts_total"), 0u);
  // Only the rewritten chunks took new room.
  EXPECT_EQ(cache->used_bytes(), v1.data().size() + 3u * kChunk);
  // The superseded generation's chunks are the first to go.
  EXPECT_EQ(cache->ListOf(ChunkKey{g1, 3}), EvictionPolicy::List::kScan);
}

TEST_F(ChunkCacheTest, AStaleManifestIsNotAttached) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  std::vector<char> data = RandomBytes(3 * kChunk, 45);
  const auto key = KeyOf("ds:t.img", data.size(), 7);
  const GenerationId gen = cache->BindGeneration(key)->id;
  auto other = key;
  other.ctime_ns += 1;  // written after publishing
  EXPECT_FALSE(cache->AttachManifest(gen, ManifestFor(data, other)));
  EXPECT_FALSE(cache->HasManifest(gen));
  EXPECT_TRUE(cache->AttachManifest(gen, ManifestFor(data, key)));
}

// A manifest that lies about one chunk: that chunk is fetched (its digest
// is not stored), disagrees, and the manifest is distrusted: every byte read
// is the datastore's, and from then on the generation reads the datastore.
TEST_F(ChunkCacheTest, ALyingManifestIsDistrustedAndNoWrongByteIsServed) {
  metrics::Registry reg;
  auto cache = OpenCache(reg, 128 * kChunk);
  CountingSource v1(RandomBytes(20 * kChunk, 46));
  const GenerationId g1 = cache->BindGeneration(KeyOf("ds:t.img", v1.data().size(), 1))->id;
  ReadAllAndCheck(*cache, g1, v1);
  CountingSource v2(Patched(v1.data(), {4}));
  const auto key2 = KeyOf("ds:t.img", v2.data().size(), 2);
  const GenerationId g2 = cache->BindGeneration(key2)->id;
  auto lie = std::make_shared<index::Manifest>(*ManifestFor(v2.data(), key2));
  lie->digests[4] = index::ComputeDigest(std::string("not chunk 4"));
  ASSERT_TRUE(cache->AttachManifest(g2, lie));
  std::vector<char> buf(kChunk);
  auto r = cache->Read(g2, v2.data().size(), 4 * kChunk, buf, v2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(0, std::memcmp(buf.data(), v2.data().data() + 4 * kChunk, kChunk));
  cache->WaitIdle();  // the digest is compared when the chunk is stored
  EXPECT_EQ(Counter(reg, "goldcache_manifest_distrusts_total"), 1u);
  EXPECT_FALSE(cache->HasManifest(g2));
  EXPECT_TRUE(cache->ManifestDistrusted(g2));
  EXPECT_FALSE(cache->AttachManifest(g2, lie));  // not that one again
  ReadAllAndCheck(*cache, g2, v2);
  EXPECT_EQ(v2.bytes.load(), v2.data().size());  // all of it from the datastore
}

// A host remembers the manifest that lied across a restart (it would
// otherwise take the same lie's word again), and takes a manifest
// published again.
TEST_F(ChunkCacheTest, ADistrustedManifestStaysDistrustedAfterARestartUntilPublishedAgain) {
  metrics::Registry reg, reg2;  // before the cache: it outlives it
  auto cache = OpenCache(reg);
  CountingSource v(RandomBytes(4 * kChunk, 55));
  const auto key = KeyOf("ds:t.img", v.data().size());
  const GenerationId gen = cache->BindGeneration(key)->id;
  auto lie = std::make_shared<index::Manifest>(*ManifestFor(v.data(), key));
  lie->digests[2] = index::ComputeDigest(std::string("not chunk 2"));
  ASSERT_TRUE(cache->AttachManifest(gen, lie));
  ReadAllAndCheck(*cache, gen, v);
  ASSERT_TRUE(cache->ManifestDistrusted(gen));
  cache.reset();
  cache = OpenCache(reg2);
  EXPECT_FALSE(cache->AttachManifest(gen, lie));
  EXPECT_TRUE(cache->ManifestDistrusted(gen));
  EXPECT_TRUE(cache->AttachManifest(gen, ManifestFor(v.data(), key)));  // published again
  EXPECT_FALSE(cache->ManifestDistrusted(gen));
}

TEST_F(ChunkCacheTest, WarmSaysHowMuchItReusedAndWarmsOnlyTheBootSetWhenAsked) {
  metrics::Registry reg;
  auto cache = OpenCache(reg, 128 * kChunk);
  CountingSource v1(RandomBytes(20 * kChunk, 47));
  const GenerationId g1 = cache->BindGeneration(KeyOf("ds:t.img", v1.data().size(), 1))->id;
  std::vector<uint64_t> boot{7, 2, 3};
  auto w = cache->Warm(g1, v1.data().size(), v1, 4, 0, nullptr, &boot);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->bytes, 3u * kChunk);
  EXPECT_EQ(v1.bytes.load(), 3u * kChunk);
  EXPECT_EQ(cache->cached_bytes_of(g1), 3u * kChunk);
  w = cache->Warm(g1, v1.data().size(), v1, 4, 0, nullptr);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->from_datastore, 17u * kChunk);

  CountingSource v2(Patched(v1.data(), {0}));
  const auto key2 = KeyOf("ds:t.img", v2.data().size(), 2);
  const GenerationId g2 = cache->BindGeneration(key2)->id;
  ASSERT_TRUE(cache->AttachManifest(g2, ManifestFor(v2.data(), key2)));
  w = cache->Warm(g2, v2.data().size(), v2, 4, 0, nullptr);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->reused, 19u * kChunk);
  EXPECT_EQ(w->from_datastore, 1u * kChunk);
  ReadAllAndCheck(*cache, g2, v2);
  EXPECT_EQ(v2.bytes.load(), 1u * kChunk);
}

TEST_F(ChunkCacheTest, RecordsTheFirstReadsOfABootInOrderAndKeepsThemAcrossARestart) {
  metrics::Registry reg, reg2;  // before the cache: it outlives it
  auto cache = OpenCache(reg);
  CountingSource src(RandomBytes(16 * kChunk, 48));
  const GenerationId gen = Bind(*cache, src.data().size());
  cache->RecordTrace(gen);
  std::vector<char> buf(8192);
  for (uint64_t c : {9, 2, 9, 3, 2, 14}) {
    ASSERT_TRUE(cache->Read(gen, src.data().size(), c * kChunk + 100, buf, src).ok());
  }
  // A read across a chunk boundary notes both chunks.
  ASSERT_TRUE(cache->Read(gen, src.data().size(), 6 * kChunk - 10, buf, src).ok());
  const std::vector<uint64_t> want{9, 2, 3, 14, 5, 6};
  EXPECT_EQ(cache->TraceOf(gen), want);
  cache.reset();  // saves it
  cache = OpenCache(reg2);
  EXPECT_EQ(cache->TraceOf(gen), want);
  cache->RecordTrace(gen);  // traced already: nothing is recorded over it
  ASSERT_TRUE(cache->Read(gen, src.data().size(), 0, buf, src).ok());
  EXPECT_EQ(cache->TraceOf(gen), want);
}

// A boot of a cold generation replayed after its trace was prefetched
// finds every chunk cached: no demand miss, where the same boot without the
// prefetch misses every chunk.
TEST_F(ChunkCacheTest, APrefetchedTraceTurnsABootsMissesIntoHits) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  auto src = std::make_shared<CountingSource>(RandomBytes(32 * kChunk, 49));
  const uint64_t size = src->data().size();
  const GenerationId gen = Bind(*cache, size);
  const std::vector<uint64_t> boot{20, 3, 4, 5, 11, 30, 0, 17};
  auto replay = [&] {
    const uint64_t before = Counter(reg, "goldcache_cache_misses_total");
    std::vector<char> buf(16384);
    for (uint64_t c : boot) {
      auto r = cache->Read(gen, size, c * kChunk + 4096, buf, *src);
      EXPECT_TRUE(r.ok());
      EXPECT_EQ(0, std::memcmp(buf.data(), src->data().data() + c * kChunk + 4096, buf.size()));
    }
    cache->WaitIdle();
    return Counter(reg, "goldcache_cache_misses_total") - before;
  };
  cache->RecordTrace(gen);
  EXPECT_EQ(replay(), boot.size());  // the first boot: cold, recorded
  const std::vector<uint64_t> trace = cache->TraceOf(gen);
  ASSERT_EQ(trace, boot);
  cache->Evict(gen);

  cache->PrefetchTrace(gen, size, trace, src);
  cache->WaitIdle();
  EXPECT_EQ(Counter(reg, "goldcache_cache_prefetch_bytes_total"), boot.size() * kChunk);
  EXPECT_EQ(replay(), 0u);
  EXPECT_EQ(Counter(reg, "goldcache_cache_prefetch_in_time_total"), boot.size());
}

// What the owner of a source (roles::Templates) relies on before it goes:
// once DrainFetches returns, no background fetch holds the source (what had
// not been fetched by then is given up); later prefetches run again.
TEST_F(ChunkCacheTest, DrainFetchesLeavesNoBackgroundFetchHoldingASource) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  auto src = std::make_shared<CountingSource>(RandomBytes(32 * kChunk, 54));
  const uint64_t size = src->data().size();
  const GenerationId gen = Bind(*cache, size);
  std::vector<uint64_t> trace(16);
  std::iota(trace.begin(), trace.end(), 0);
  src->HoldOnly({0});
  cache->PrefetchTrace(gen, size, trace, src);
  src->WaitHeld(1);
  std::thread drain([&] { cache->DrainFetches(); });
  src->Release();
  drain.join();
  EXPECT_EQ(src.use_count(), 1) << "a background fetch still holds the source";
  cache->WaitIdle();
  cache->PrefetchTrace(gen, size, trace, src);
  cache->WaitIdle();
  EXPECT_EQ(cache->cached_bytes_of(gen), 16u * kChunk);
}

// Prefetch never delays a demand miss: with every prefetch fetch held at
// the datastore, a reader's miss of another chunk is still served.
TEST_F(ChunkCacheTest, ATracePrefetchHeldAtTheDatastoreDoesNotDelayADemandMiss) {
  metrics::Registry reg;
  auto cache = OpenCache(reg);
  auto src = std::make_shared<CountingSource>(RandomBytes(32 * kChunk, 50));
  const uint64_t size = src->data().size();
  const GenerationId gen = Bind(*cache, size);
  std::vector<uint64_t> trace;
  std::set<uint64_t> held;
  for (uint64_t c = 0; c < 16; ++c) {
    trace.push_back(c);
    held.insert(c * kChunk);
  }
  src->HoldOnly(held);
  cache->PrefetchTrace(gen, size, trace, src);
  src->WaitHeld(4);  // max_prefetch of them at the datastore, held there
  std::vector<char> buf(kChunk);
  for (uint64_t c : {20, 21, 25}) {
    auto r = cache->Read(gen, size, c * kChunk, buf, *src);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(0, std::memcmp(buf.data(), src->data().data() + c * kChunk, kChunk));
  }
  src->Release();
  cache->WaitIdle();
  EXPECT_EQ(cache->cached_bytes_of(gen), 19u * kChunk);
}

}  // namespace
}  // namespace goldcache::cache
