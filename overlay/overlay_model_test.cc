// Randomized model test: random writes, reads, truncates, hole punches,
// resets and reopens against an overlay and against a std::string holding
// what the file must read as. Every read and every checkpoint must match byte
// for byte. A small RAM budget and small segments keep spill and reclamation
// running all the time; a tight disk tier on some seeds makes writes fail
// with kNoSpace, which must leave the content unchanged.
//
// Replay:  GOLDCACHE_MODEL_SEED=<seed> [GOLDCACHE_MODEL_OPS=<n>] overlay_model_test
// Scale:   GOLDCACHE_MODEL_OPS=<ops per seed> (default 50000; 4 seeds run)
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <random>

#include "overlay/overlay.h"

namespace goldcache::overlay {
namespace {

constexpr uint64_t KiB = 1024;
constexpr uint64_t MiB = 1024 * KiB;
constexpr uint64_t kRamBudget = 256 * KiB;
constexpr uint64_t kSegment = 1 * MiB;
constexpr uint64_t kMaxFile = 10 * MiB;  // writes and grows stay below this
constexpr uint64_t kDefaultOps = 50000;
// Below what the model's files reach, so tight-disk seeds hit ENOSPC often.
constexpr uint64_t kTightDisk = 3 * MiB;

class StringBase : public BaseReader {
 public:
  explicit StringBase(std::string data) : data_(std::move(data)) {}
  Result<size_t> ReadBase(uint64_t offset, std::span<char> out) override {
    if (offset >= data_.size()) return size_t{0};
    const size_t n = std::min<size_t>(out.size(), data_.size() - offset);
    std::memcpy(out.data(), data_.data() + offset, n);
    return n;
  }
  const std::string& data() const { return data_; }

 private:
  std::string data_;
};

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

class Model {
 public:
  Model(uint64_t seed, bool tight_disk) : rng_(seed), seed_(seed), tight_(tight_disk) {}

  // Returns an empty string on success, else what went wrong.
  std::string Run(uint64_t ops, const std::string& dir) {
    std::string base_bytes(1 * MiB + rng_() % (3 * MiB), '\0');
    Fill(base_bytes.data(), base_bytes.size());
    StringBase base(base_bytes);
    metrics::Registry registry;
    FixedDiskSpace space(tight_ ? kTightDisk : 1024 * MiB);
    OverlayOptions o;
    o.dir = dir;
    o.ram_per_desktop = kRamBudget;
    o.ram_host_cap = 1024 * MiB;
    o.segment_size = kSegment;
    o.disk_space = &space;
    o.registry = &registry;
    auto opened = OverlayStore::Open(o);
    if (!opened.ok()) return opened.status().ToString();
    auto store = std::move(opened).value();
    auto ov = store->Create("pool/model", base_bytes.size());
    std::string model = base_bytes;
    auto& log_gauge = registry.GetGauge("goldcache_overlay_log_bytes", "");

    std::string buf;
    for (uint64_t i = 0; i < ops; ++i) {
      op_ = i;
      // Per mille: resets are rare enough that the overlay fills up between them.
      const unsigned kind = rng_() % 1000;
      if (kind < 550) {  // write
        const uint64_t len = RandomLength();
        const uint64_t limit = std::min<uint64_t>(model.size() + 256 * KiB, kMaxFile - len);
        const uint64_t off = RandomOffset(limit);
        buf.resize(len);
        Fill(buf.data(), len);
        Status st = ov->Write(off, {buf.data(), len});
        if (st.ok()) {
          if (off + len > model.size()) model.resize(off + len, '\0');
          model.replace(off, len, buf);
          ++writes_ok_;
        } else if (st.code() == Code::kNoSpace && tight_) {
          ++enospc_;
          // Nothing changed: the range the write aimed at still reads as before.
          if (auto e = Check(*ov, base, model, off, len); !e.empty()) return "after ENOSPC " + e;
        } else {
          return Where() + "write(" + std::to_string(off) + ", " + std::to_string(len) +
                 ") failed: " + st.ToString();
        }
      } else if (kind < 850) {  // read
        const uint64_t len = RandomLength();
        const uint64_t off = RandomOffset(model.size() + 64 * KiB);
        if (auto e = Check(*ov, base, model, off, len); !e.empty()) return e;
      } else if (kind < 880) {  // truncate
        uint64_t size =
            rng_() % 2 ? rng_() % (model.size() + 1) : model.size() + rng_() % (2 * MiB);
        size = std::min(size, kMaxFile);
        if (!ov->Truncate(size).ok()) return Where() + "truncate failed";
        model.resize(size, '\0');
      } else if (kind < 995) {  // punch
        const uint64_t off = RandomOffset(model.size() + 64 * KiB);
        const uint64_t len = rng_() % 10 == 0 ? rng_() % (4 * MiB) : RandomLength();
        if (!ov->PunchHole(off, len).ok()) return Where() + "punch failed";
        if (off < model.size()) {
          const uint64_t n = std::min<uint64_t>(len, model.size() - off);
          std::memset(model.data() + off, 0, n);
        }
      } else if (kind < 998) {  // reset
        ov->Reset();
        model = base_bytes;
        ++resets_;
      } else {  // reopen: a new overlay over the same base, as after a restart
        ov.reset();
        if (space.used() != 0 || store->ram_bytes() != 0) {
          return Where() + "destroyed overlay kept space: disk " + std::to_string(space.used()) +
                 ", ram " + std::to_string(store->ram_bytes());
        }
        ov = store->Create("pool/model", base_bytes.size());
        model = base_bytes;
        ++resets_;
      }
      peak_disk_ = std::max(peak_disk_, space.used());
      if (i % 1000 == 999 || i + 1 == ops) {
        if (auto e = Checkpoint(*ov, base, model, space, *store, log_gauge); !e.empty()) {
          return e;
        }
      }
    }
    spilled_ = registry.GetCounter("goldcache_overlay_spilled_bytes_total", "").Value();
    compacted_ = registry.GetCounter("goldcache_overlay_compacted_bytes_total", "").Value();
    reclaimed_ = registry.GetCounter("goldcache_overlay_reclaimed_bytes_total", "").Value();
    return "";
  }

  std::string Summary() const {
    return "seed " + std::to_string(seed_) + (tight_ ? " (tight disk)" : "") + ": " +
           std::to_string(writes_ok_) + " writes, " + std::to_string(enospc_) + " ENOSPC, " +
           std::to_string(resets_) + " resets/reopens; MiB spilled " +
           std::to_string(spilled_ >> 20) + ", compacted " + std::to_string(compacted_ >> 20) +
           ", reclaimed " + std::to_string(reclaimed_ >> 20) + ", peak disk tier " +
           std::to_string(peak_disk_ >> 10) + " KiB";
  }

 private:
  std::string Where() const {
    return "seed " + std::to_string(seed_) + " op " + std::to_string(op_) + ": ";
  }

  // Mostly small (the guest's 512 B - 64 KiB), sometimes up to 1 MiB.
  uint64_t RandomLength() {
    const unsigned r = rng_() % 100;
    if (r < 60) return 1 + rng_() % (8 * KiB);
    if (r < 95) return 1 + rng_() % (128 * KiB);
    return 1 + rng_() % (1 * MiB);
  }

  // Half of them 4 KiB-aligned, the others anywhere.
  uint64_t RandomOffset(uint64_t limit) {
    const uint64_t off = rng_() % (limit + 1);
    return rng_() % 2 ? off / (4 * KiB) * (4 * KiB) : off;
  }

  void Fill(char* p, size_t n) {
    uint64_t x = rng_();
    for (size_t i = 0; i < n; i += 8) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift: cheap, never repeats a block
      std::memcpy(p + i, &x, std::min<size_t>(8, n - i));
    }
  }

  std::string Check(Overlay& ov, StringBase& base, const std::string& model, uint64_t off,
                    uint64_t len) {
    std::string out(len, '\x5a');
    auto got = ov.Read(off, {out.data(), len}, base);
    if (!got.ok()) return Where() + "read failed: " + got.status().ToString();
    const uint64_t expect = off >= model.size() ? 0 : std::min<uint64_t>(len, model.size() - off);
    if (*got != expect) {
      return Where() + "read(" + std::to_string(off) + ", " + std::to_string(len) + ") gave " +
             std::to_string(*got) + " bytes, want " + std::to_string(expect);
    }
    if (std::memcmp(out.data(), model.data() + std::min<uint64_t>(off, model.size()), expect)) {
      uint64_t bad = 0;
      while (out[bad] == model[off + bad]) ++bad;
      return Where() + "read(" + std::to_string(off) + ", " + std::to_string(len) +
             ") differs at file offset " + std::to_string(off + bad);
    }
    return "";
  }

  std::string Checkpoint(Overlay& ov, StringBase& base, const std::string& model,
                         FixedDiskSpace& space, OverlayStore& store, metrics::Gauge& log_gauge) {
    if (ov.size() != model.size()) {
      return Where() + "size " + std::to_string(ov.size()) + ", want " +
             std::to_string(model.size());
    }
    for (uint64_t off = 0; off < model.size(); off += 1 * MiB) {
      if (auto e = Check(ov, base, model, off, 1 * MiB); !e.empty()) return "checkpoint " + e;
    }
    const uint64_t used = space.used(), live = ov.disk_bytes();
    if (used != static_cast<uint64_t>(log_gauge.Value())) {
      return Where() + "DiskSpace holds " + std::to_string(used) + " bytes, the log " +
             std::to_string(log_gauge.Value());
    }
    if (used > 2 * live + kSegment) {
      return Where() + "log of " + std::to_string(used) + " bytes for " + std::to_string(live) +
             " live: reclamation is behind";
    }
    if (ov.ram_bytes() > kRamBudget || store.ram_bytes() != ov.ram_bytes() ||
        store.disk_bytes() != live) {
      return Where() + "RAM " + std::to_string(ov.ram_bytes()) + " (store " +
             std::to_string(store.ram_bytes()) + "), disk " + std::to_string(live) + " (store " +
             std::to_string(store.disk_bytes()) + ")";
    }
    return "";
  }

  std::mt19937_64 rng_;
  const uint64_t seed_;
  const bool tight_;
  uint64_t op_ = 0;
  uint64_t writes_ok_ = 0, enospc_ = 0, resets_ = 0;
  uint64_t spilled_ = 0, compacted_ = 0, reclaimed_ = 0, peak_disk_ = 0;
};

class OverlayModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/gc-overlay-model.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void RunSeed(uint64_t seed, uint64_t ops) {
    const bool tight = seed % 2 == 1;
    std::cout << "[ model    ] seed " << seed << ", " << ops << " ops"
              << (tight ? ", tight disk" : "") << " (replay: GOLDCACHE_MODEL_SEED=" << seed << ")"
              << std::endl;
    const auto start = std::chrono::steady_clock::now();
    Model model(seed, tight);
    const std::string error = model.Run(ops, dir_ + "/seed-" + std::to_string(seed));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "[ model    ] " << model.Summary() << " in " << secs << " s" << std::endl;
    EXPECT_EQ(error, "") << "replay with GOLDCACHE_MODEL_SEED=" << seed;
  }

  std::string dir_;
};

TEST_F(OverlayModelTest, OverlayReadsAsTheModelThroughRandomOperations) {
  const uint64_t ops = EnvOr("GOLDCACHE_MODEL_OPS", kDefaultOps);
  if (const uint64_t seed = EnvOr("GOLDCACHE_MODEL_SEED", 0); seed != 0) {
    RunSeed(seed, ops);
    return;
  }
  // Fixed seeds (one with a tight disk tier) plus one new seed per run.
  const uint64_t now_seed = static_cast<uint64_t>(
      std::chrono::system_clock::now().time_since_epoch().count() / 1000 | 1 << 20);
  for (uint64_t seed : {uint64_t{2}, uint64_t{3}, uint64_t{4}, now_seed}) {
    RunSeed(seed, ops);
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace goldcache::overlay
