// The overlay: an extent map over a RAM tier and a log-structured disk tier.
//
// Extent map. Each overlay keeps std::map<file offset, Extent>; extents never
// overlap and never reach past size(). An extent says where its bytes live:
//   kRam   its own buffer (`len` bytes, in a vector of at most a quarter
//          more capacity),
//   kDisk  `len` bytes at `disk_off` in the overlay's log file, inside one
//          segment,
//   kZero  reads as zeros (a punched hole over the base).
// A byte with no extent reads from the base below `base_limit` and as zeros
// above it. `base_limit` starts at the base size and only shrinks (truncate),
// so a truncate-then-grow reads zeros without any extent, and the only zero
// extents are holes punched where the base would otherwise show through.
// Every change goes through Clear() (cut a range out, trimming or splitting
// the extents at its edges) and Put()/PutMerged() (insert, joining a neighbour
// of the same kind that continues it). Put/Take are the only places that
// touch the accounting (RAM bytes, LRU order, per-segment live bytes and
// extent sets), so the books cannot drift from the map.
//
// RAM tier and coalescing. A write that fits the desktop's budget is copied
// into a RAM extent; one that continues a neighbouring RAM extent is appended
// to it (up to kMaxRamExtent), so runs of small, unaligned writes become one
// buffer, and a write inside an existing RAM extent is an in-place copy. RAM
// is counted by what the buffers hold from the heap (their capacity, not
// just the bytes in them) against the per-desktop budget and, through a
// compare-and-swap reservation, against the host cap shared by every overlay
// of the store. A buffer grows by a quarter at a time (AppendRam), not by
// the vector's doubling, so the slack stays small and an append still
// copies each byte only a few times on average.
//
// Spill. When a write would exceed either limit, the writer spills its own
// least recently written RAM extents (a set ordered by write stamp) in its own
// context: at least what the write needs and at least min(kSpillBatch,
// budget/2), sorted by file offset, staged into one buffer and appended to the
// log in one sequential write; neighbours that land next to each other in
// both file and log become one disk extent. A write larger than the budget,
// or one the host cap still refuses once the writer's RAM is empty, goes to
// the log directly (a large write is already a sequential append). The host
// cap is therefore enforced by making the writer pay, never by taking RAM
// from another desktop.
//
// Disk tier. One log file per overlay (created at its first spill, named
// after the desktop), cut into fixed slots of segment_size. Appends fill the
// head segment and open the lowest free slot when it is full. Each segment
// knows its written bytes, its live bytes and the file offsets of the extents
// that live in it. DiskSpace is asked for every append (exact bytes) and given
// back a segment's written bytes when the segment is freed (hole punched in
// the file; the whole file is truncated when the last segment goes). Own
// segments per overlay make Reset and destruction trivial and keep desktops
// from fragmenting each other's logs.
//
// Reclamation. After every change: a segment with no live bytes is freed; a
// sealed segment whose live bytes fell below 1/kSparseDivisor of what it holds
// is evacuated (its live extents read, the segment freed, the data appended
// at the head); and while the log's garbage exceeds its live data plus one
// segment, the sealed segment with the most garbage (and less than half live)
// is evacuated. The log thus stays below 2 x live + segment_size. When
// DiskSpace refuses an append, garbage comes back first: the segment with the
// most garbage is evacuated and the append retried, until no garbage is left;
// only then does the write fail with kNoSpace, before anything changed.
// Evacuation appends the copy before it frees the old segment, so reads are
// served from the old place until the new one is in the map. On a full disk
// (no room for the copy) it parks the live bytes in RAM, frees the segment
// and appends them from there; should another desktop take the space in
// between, the data stays in RAM over budget rather than being lost.
//
// Locking. Overlay::Impl::mu guards the extent map and the books. Changes
// (write, truncate, punch, reset) take turns: one at a time holds the turn
// (`mutating`) for its whole operation, and it releases mu for the duration
// of every disk-tier write and compaction read it makes, re-taking it to
// place the result. Since only the turn holder changes the map, nothing it
// decided goes stale while mu is released, and a segment cannot be freed and
// reused under a reader. So a spill or a compaction blocks this desktop's
// reads for no IO at all; a read holds mu across its own disk-tier reads
// only, and other changes wait for the turn. Base reads, which may wait on
// the datastore, run after mu is released. The store holds no lock: host
// totals are atomics, DiskSpace and io::Env are thread-safe, and metrics are
// atomics looked up once.
#include "overlay/overlay.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "io/file.h"

namespace goldcache::overlay {
namespace {

// Largest RAM extent that writes are merged into. Bounds the copy a write
// straddling an extent boundary costs, while keeping the map small.
constexpr uint64_t kMaxRamExtent = 256ull << 10;
// Preferred size of one spill append (capped at budget/2 for tiny budgets).
constexpr uint64_t kSpillBatch = 2ull << 20;
// A sealed segment with live < written / kSparseDivisor is evacuated at once:
// moving at most a quarter of a segment buys three quarters back.
constexpr uint64_t kSparseDivisor = 4;
// Disk reads of one request go to the ring in groups of this size.
constexpr size_t kReadBatch = 32;
// Attempts to make RAM room for one write before it goes to disk directly.
constexpr int kMaxSpillRounds = 16;
constexpr auto kNoSpaceLogInterval = std::chrono::seconds(10);
constexpr uint64_t kNoSlot = ~0ull;

enum class Kind : uint8_t { kRam, kDisk, kZero };

struct Extent {
  Kind kind = Kind::kZero;
  uint64_t len = 0;
  uint64_t disk_off = 0;   // kDisk: position in the log file
  uint64_t stamp = 0;      // kRam: write sequence, for spilling the coldest first
  std::vector<char> data;  // kRam: exactly len bytes
};

struct Segment {
  uint64_t written = 0;        // bytes appended (acquired from DiskSpace)
  uint64_t live = 0;           // bytes still referenced by extents
  std::set<uint64_t> extents;  // file offsets of the extents stored here
};

struct Range {
  uint64_t start;
  uint64_t len;
};

// Where a stretch of appended bytes went in the log file.
struct Piece {
  uint64_t off;
  uint64_t len;
};

// What a RAM extent holds from the heap: the budget and the host cap count this.
uint64_t RamCharge(const Extent& e) { return e.data.capacity(); }

// Appends `tail` to a RAM extent's buffer, growing it by a quarter (or to
// what is needed, if more) instead of doubling.
void AppendRam(std::vector<char>& data, const std::vector<char>& tail) {
  const size_t need = data.size() + tail.size();
  if (need > data.capacity()) {
    const size_t quarter_more = data.capacity() + data.capacity() / 4;
    data.reserve(std::max(need, std::min<size_t>(quarter_more, kMaxRamExtent)));
  }
  data.insert(data.end(), tail.begin(), tail.end());
}

Extent Slice(const Extent& e, uint64_t off, uint64_t len) {
  Extent s;
  s.kind = e.kind;
  s.len = len;
  s.stamp = e.stamp;
  if (e.kind == Kind::kDisk) s.disk_off = e.disk_off + off;
  if (e.kind == Kind::kRam) s.data.assign(e.data.begin() + off, e.data.begin() + off + len);
  return s;
}

std::string FileNameFor(uint64_t serial, const std::string& desktop) {
  std::string name = std::to_string(serial) + "-";
  for (char c : desktop.substr(0, 120)) {
    name += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-') ? c : '_';
  }
  return name + ".log";
}

}  // namespace

FixedDiskSpace::FixedDiskSpace(uint64_t capacity) : capacity_(capacity) {}

bool FixedDiskSpace::Acquire(uint64_t bytes) {
  uint64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (bytes > capacity_ - std::min(used, capacity_)) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return true;
}

void FixedDiskSpace::Release(uint64_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }

uint64_t FixedDiskSpace::used() const { return used_.load(std::memory_order_relaxed); }

struct OverlayStore::Impl {
  explicit Impl(const OverlayOptions& o)
      : options(o),
        env(o.env != nullptr ? *o.env : io::PosixEnv()),
        ram_gauge(o.registry->GetGauge("goldcache_overlay_bytes",
                                       "Bytes of desktop writes held by overlays, by tier.",
                                       {{"tier", "ram"}})),
        disk_gauge(o.registry->GetGauge("goldcache_overlay_bytes",
                                        "Bytes of desktop writes held by overlays, by tier.",
                                        {{"tier", "disk"}})),
        log_gauge(o.registry->GetGauge(
            "goldcache_overlay_log_bytes",
            "Bytes of the overlay disk tier taken from the local disk (live data and garbage "
            "not yet reclaimed).")),
        ram_extents(o.registry->GetGauge("goldcache_overlay_extents",
                                         "Extents in overlay extent maps, by tier.",
                                         {{"tier", "ram"}})),
        disk_extents(o.registry->GetGauge("goldcache_overlay_extents",
                                          "Extents in overlay extent maps, by tier.",
                                          {{"tier", "disk"}})),
        spilled(o.registry->GetCounter("goldcache_overlay_spilled_bytes_total",
                                       "Bytes moved from the overlay RAM tier to the disk tier.")),
        appends(o.registry->GetCounter(
            "goldcache_overlay_appends_total",
            "Sequential appends to the overlay disk tier (spills, large writes, compaction).")),
        reclaimed(o.registry->GetCounter(
            "goldcache_overlay_reclaimed_bytes_total",
            "Bytes of overwritten or discarded overlay data given back by the disk tier.")),
        compacted(o.registry->GetCounter(
            "goldcache_overlay_compacted_bytes_total",
            "Live overlay bytes rewritten to free mostly-dead disk-tier segments.")),
        enospc(o.registry->GetCounter(
            "goldcache_overlay_enospc_total",
            "Overlay writes refused with ENOSPC: RAM tier full and no local disk space.")),
        io_errors(o.registry->GetCounter("goldcache_errors_total", "Errors by kind.",
                                         {{"kind", "overlay_io"}})) {}

  // Takes `n` bytes of the host RAM cap; false when they are not there.
  bool TryReserveRam(uint64_t n) {
    if (n == 0) return true;
    uint64_t cur = ram_bytes.load(std::memory_order_relaxed);
    do {
      if (cur + n > options.ram_host_cap) return false;
    } while (!ram_bytes.compare_exchange_weak(cur, cur + n, std::memory_order_relaxed));
    return true;
  }

  const OverlayOptions options;
  io::Env& env;
  std::atomic<uint64_t> ram_bytes{0};   // host RAM tier total, reservations included
  std::atomic<uint64_t> disk_bytes{0};  // host disk tier total, live data
  std::atomic<uint64_t> next_serial{1};
  metrics::Gauge& ram_gauge;
  metrics::Gauge& disk_gauge;
  metrics::Gauge& log_gauge;
  metrics::Gauge& ram_extents;
  metrics::Gauge& disk_extents;
  metrics::Counter& spilled;
  metrics::Counter& appends;
  metrics::Counter& reclaimed;
  metrics::Counter& compacted;
  metrics::Counter& enospc;
  metrics::Counter& io_errors;
};

struct Overlay::Impl {
  using Map = std::map<uint64_t, Extent>;

  Impl(OverlayStore::Impl& s, std::string name, uint64_t base, uint64_t serial)
      : store(s),
        desktop(std::move(name)),
        base_size(base),
        seg_size(s.options.segment_size),
        budget(s.options.ram_per_desktop),
        path(s.options.dir + "/" + FileNameFor(serial, desktop)),
        size(base),
        base_limit(base),
        seen_size(base) {}

  ~Impl() {
    Turn turn(*this);
    Discard();
  }

  // The right to change the overlay (see "Locking"): holds mu, except where
  // the holder lets it go for IO (Unlocked).
  class Turn {
   public:
    explicit Turn(Impl& impl) : impl_(impl), lock_(impl.mu) {
      impl_.turn_cv.wait(lock_, [&] { return !impl_.mutating; });
      impl_.mutating = true;
      impl_.turn_lock = &lock_;
    }
    ~Turn() {
      impl_.mutating = false;
      impl_.turn_lock = nullptr;
      lock_.unlock();
      impl_.turn_cv.notify_one();
    }
    Turn(const Turn&) = delete;
    Turn& operator=(const Turn&) = delete;

   private:
    Impl& impl_;
    std::unique_lock<std::mutex> lock_;
  };

  // Runs `io` with mu released. REQUIRES: the caller holds the turn.
  Status Unlocked(const std::function<Status()>& io) {
    turn_lock->unlock();
    Status st = io();
    turn_lock->lock();
    return st;
  }

  // All members below: REQUIRES mu held; those that change anything also
  // REQUIRE the turn.

  Status Write(uint64_t off, std::span<const char> data);
  Status WriteSlow(uint64_t off, std::span<const char> data);
  Result<size_t> ReadLocked(uint64_t off, std::span<char> out, std::vector<Range>* from_base);
  void Truncate(uint64_t new_size);
  void Punch(uint64_t off, uint64_t len);
  void Discard();

  // Extent map primitives.
  Map::iterator Put(uint64_t start, Extent e);
  Extent Take(Map::iterator it);
  void PutMerged(uint64_t start, Extent e);
  bool Mergeable(const Extent& left, const Extent& right) const;
  void Clear(uint64_t a, uint64_t b);
  uint64_t RamBytesIn(uint64_t a, uint64_t b) const;
  Map::iterator FirstEndingAfter(uint64_t pos);
  void Restamp(uint64_t start, Extent& e);

  // Disk tier.
  uint64_t SlotOf(uint64_t disk_off) const { return disk_off / seg_size; }
  Status Spill(uint64_t goal);
  Status ReserveDisk(uint64_t n);
  Status AppendReserved(std::span<const char> bytes, std::vector<Piece>* pieces);
  void PlaceOnDisk(std::span<const Range> ranges, std::span<const Piece> pieces);
  uint64_t AllocSlot();
  void FreeSlot(uint64_t slot, uint64_t moved);
  Status Evacuate(uint64_t slot);
  void FreeDeadSegments();
  void Maintain();
  // Disk-tier reads, in groups; with mu released when `unlocked` (the turn
  // holder's reads).
  Status RunBatched(std::vector<io::Request>& reqs, bool unlocked);

  // Publishes this overlay's byte counts to the store totals and gauges;
  // `reserved` bytes of RAM were already added to the host total by
  // TryReserveRam.
  void Settle(uint64_t reserved);
  void ReportNoSpace(uint64_t bytes);

  OverlayStore::Impl& store;
  const std::string desktop;
  const uint64_t base_size;
  const uint64_t seg_size;
  const uint64_t budget;
  const std::string path;

  mutable std::mutex mu;
  std::condition_variable turn_cv;                    // the turn is free
  bool mutating = false;                              // GUARDED_BY(mu): someone holds the turn
  std::unique_lock<std::mutex>* turn_lock = nullptr;  // GUARDED_BY(mu): the holder's lock
  uint64_t size;                                      // GUARDED_BY(mu)
  uint64_t base_limit;                          // GUARDED_BY(mu): base visible below this offset
  Map extents;                                  // GUARDED_BY(mu)
  std::set<std::pair<uint64_t, uint64_t>> lru;  // GUARDED_BY(mu): (stamp, start) of RAM extents
  uint64_t next_stamp = 1;                      // GUARDED_BY(mu)
  uint64_t ram = 0;                             // GUARDED_BY(mu): RAM extents' RamCharge
  uint64_t live = 0;                            // GUARDED_BY(mu): disk extent bytes
  uint64_t log_bytes = 0;         // GUARDED_BY(mu): written bytes of all segments (live + garbage)
  int64_t ram_extent_count = 0;   // GUARDED_BY(mu)
  int64_t disk_extent_count = 0;  // GUARDED_BY(mu)
  uint64_t pub_ram = 0, pub_live = 0, pub_log = 0;  // GUARDED_BY(mu): last Settle()
  // What size(), ram_bytes() and disk_bytes() answer without mu, which a
  // read holds across its disk IO: set by Settle().
  std::atomic<uint64_t> seen_size{0}, seen_ram{0}, seen_live{0};
  int64_t pub_ram_extents = 0, pub_disk_extents = 0;  // GUARDED_BY(mu)

  std::unique_ptr<io::File> file;        // GUARDED_BY(mu): the log file, once opened
  std::map<uint64_t, Segment> segments;  // GUARDED_BY(mu): by slot
  std::set<uint64_t> free_slots;         // GUARDED_BY(mu)
  uint64_t next_slot = 0;                // GUARDED_BY(mu)
  uint64_t head = kNoSlot;               // GUARDED_BY(mu): segment being appended to
  std::vector<uint64_t> dirty;           // GUARDED_BY(mu): slots that lost live bytes
  bool punch_warned = false;             // GUARDED_BY(mu)

  metrics::Counter* enospc_counter = nullptr;               // GUARDED_BY(mu)
  std::chrono::steady_clock::time_point last_enospc_log{};  // GUARDED_BY(mu)
  uint64_t enospc_suppressed = 0;                           // GUARDED_BY(mu)
};

// ---------------------------------------------------------------------------
// Extent map

Overlay::Impl::Map::iterator Overlay::Impl::Put(uint64_t start, Extent e) {
  switch (e.kind) {
    case Kind::kRam:
      ram += RamCharge(e);
      ++ram_extent_count;
      lru.emplace(e.stamp, start);
      break;
    case Kind::kDisk: {
      Segment& s = segments.at(SlotOf(e.disk_off));
      s.live += e.len;
      s.extents.insert(start);
      live += e.len;
      ++disk_extent_count;
      break;
    }
    case Kind::kZero:
      break;
  }
  return extents.emplace(start, std::move(e)).first;
}

Extent Overlay::Impl::Take(Map::iterator it) {
  auto node = extents.extract(it);
  const uint64_t start = node.key();
  Extent& e = node.mapped();
  switch (e.kind) {
    case Kind::kRam:
      ram -= RamCharge(e);
      --ram_extent_count;
      lru.erase({e.stamp, start});
      break;
    case Kind::kDisk: {
      const uint64_t slot = SlotOf(e.disk_off);
      Segment& s = segments.at(slot);
      s.live -= e.len;
      s.extents.erase(start);
      live -= e.len;
      --disk_extent_count;
      dirty.push_back(slot);
      break;
    }
    case Kind::kZero:
      break;
  }
  return std::move(e);
}

bool Overlay::Impl::Mergeable(const Extent& left, const Extent& right) const {
  if (left.kind != right.kind) return false;
  switch (left.kind) {
    case Kind::kRam:
      return left.len + right.len <= kMaxRamExtent;
    case Kind::kDisk:
      return left.disk_off + left.len == right.disk_off &&
             SlotOf(left.disk_off) == SlotOf(right.disk_off);
    case Kind::kZero:
      return true;
  }
  return false;
}

// REQUIRES: [start, start + e.len) holds no extent.
void Overlay::Impl::PutMerged(uint64_t start, Extent e) {
  auto right = extents.lower_bound(start);
  if (right != extents.begin()) {
    auto left = std::prev(right);
    if (left->first + left->second.len == start && Mergeable(left->second, e)) {
      const uint64_t left_start = left->first;
      Extent joined = Take(left);
      joined.len += e.len;
      AppendRam(joined.data, e.data);
      joined.stamp = std::max(joined.stamp, e.stamp);
      e = std::move(joined);
      start = left_start;
    }
  }
  if (auto r = extents.find(start + e.len); r != extents.end() && Mergeable(e, r->second)) {
    Extent next = Take(r);
    e.len += next.len;
    AppendRam(e.data, next.data);
    e.stamp = std::max(e.stamp, next.stamp);
  }
  Put(start, std::move(e));
}

Overlay::Impl::Map::iterator Overlay::Impl::FirstEndingAfter(uint64_t pos) {
  auto it = extents.upper_bound(pos);
  if (it != extents.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second.len > pos) return prev;
  }
  return it;
}

void Overlay::Impl::Clear(uint64_t a, uint64_t b) {
  if (a >= b) return;
  auto it = FirstEndingAfter(a);
  while (it != extents.end() && it->first < b) {
    const uint64_t start = it->first;
    auto next = std::next(it);
    Extent e = Take(it);
    const uint64_t end = start + e.len;
    if (end > b) Put(b, Slice(e, b - start, end - b));
    if (start < a) {
      e.len = a - start;
      if (e.kind == Kind::kRam) {
        e.data.resize(e.len);
        // The cut-off part is charged until given back.
        if (e.data.capacity() > e.len + e.len / 4) e.data.shrink_to_fit();
      }
      Put(start, std::move(e));
    }
    it = next;
  }
}

uint64_t Overlay::Impl::RamBytesIn(uint64_t a, uint64_t b) const {
  uint64_t n = 0;
  auto it = extents.upper_bound(a);
  if (it != extents.begin()) --it;
  for (; it != extents.end() && it->first < b; ++it) {
    if (it->second.kind != Kind::kRam) continue;
    const uint64_t s = std::max(a, it->first);
    const uint64_t e = std::min(b, it->first + it->second.len);
    if (s < e) n += e - s;
  }
  return n;
}

void Overlay::Impl::Restamp(uint64_t start, Extent& e) {
  lru.erase({e.stamp, start});
  e.stamp = next_stamp++;
  lru.emplace(e.stamp, start);
}

// ---------------------------------------------------------------------------
// Operations

Status Overlay::Impl::Write(uint64_t off, std::span<const char> data) {
  const uint64_t n = data.size();
  if (n == 0) return Status::Ok();
  if (off > ~0ull - n) {
    return Status::Error(Code::kInvalidArgument, "write past the largest file offset");
  }
  // Rewriting bytes already in one RAM buffer (a guest rewriting the same
  // block) is a copy: no accounting, no spill. Not while over budget (data
  // parked there by a compaction that lost its space): the slow path spills.
  if (auto it = FirstEndingAfter(off); ram <= budget && it != extents.end() &&
                                       it->second.kind == Kind::kRam && it->first <= off &&
                                       it->first + it->second.len >= off + n) {
    std::memcpy(it->second.data.data() + (off - it->first), data.data(), n);
    Restamp(it->first, it->second);
    return Status::Ok();
  }
  Status st = WriteSlow(off, data);
  Maintain();
  Settle(0);
  if (st.code() == Code::kNoSpace) ReportNoSpace(n);
  return st;
}

Status Overlay::Impl::WriteSlow(uint64_t off, std::span<const char> data) {
  const uint64_t n = data.size();
  const uint64_t end = off + n;
  if (n <= budget) {
    for (int round = 0; round < kMaxSpillRounds; ++round) {
      const uint64_t freed = RamBytesIn(off, end);
      const uint64_t growth = n - freed;
      if (ram + growth <= budget && store.TryReserveRam(growth)) {
        Clear(off, end);
        Extent e;
        e.kind = Kind::kRam;
        e.len = n;
        e.stamp = next_stamp++;
        e.data.assign(data.begin(), data.end());
        PutMerged(off, std::move(e));
        size = std::max(size, end);
        Settle(growth);
        return Status::Ok();
      }
      // Only RAM outside the range being overwritten can make room.
      if (ram <= freed) break;
      const uint64_t over_budget = ram + growth > budget ? ram + growth - budget : 0;
      const uint64_t batch = std::min(kSpillBatch, std::max<uint64_t>(budget / 2, 1));
      Status st = Spill(std::max({over_budget, growth, batch}));
      if (st.code() == Code::kNoSpace) break;  // the write itself may still fit on disk
      GC_RETURN_IF_ERROR(st);
    }
  }
  // Larger than the budget, or RAM cannot take it: straight to the log.
  std::vector<Piece> pieces;
  GC_RETURN_IF_ERROR(ReserveDisk(n));
  GC_RETURN_IF_ERROR(AppendReserved(data, &pieces));
  Clear(off, end);
  const Range r{off, n};
  PlaceOnDisk(std::span(&r, 1), pieces);
  size = std::max(size, end);
  return Status::Ok();
}

Result<size_t> Overlay::Impl::ReadLocked(uint64_t off, std::span<char> out,
                                         std::vector<Range>* from_base) {
  if (off >= size || out.empty()) return size_t{0};
  const uint64_t n = std::min<uint64_t>(out.size(), size - off);
  const uint64_t end = off + n;
  std::vector<io::Request> reqs;
  auto gap = [&](uint64_t a, uint64_t b) {
    const uint64_t base_end = std::clamp(base_limit, a, b);
    if (a < base_end) from_base->push_back({a, base_end - a});
    if (base_end < b) std::memset(out.data() + (base_end - off), 0, b - base_end);
  };
  uint64_t pos = off;
  for (auto it = FirstEndingAfter(off); pos < end; ++it) {
    if (it == extents.end() || it->first >= end) {
      gap(pos, end);
      break;
    }
    if (it->first > pos) {
      gap(pos, it->first);
      pos = it->first;
    }
    const Extent& e = it->second;
    const uint64_t in = pos - it->first;
    const uint64_t m = std::min(e.len - in, end - pos);
    char* dst = out.data() + (pos - off);
    switch (e.kind) {
      case Kind::kRam:
        std::memcpy(dst, e.data.data() + in, m);
        break;
      case Kind::kZero:
        std::memset(dst, 0, m);
        break;
      case Kind::kDisk:
        reqs.push_back({e.disk_off + in, dst, m, false});
        break;
    }
    pos += m;
  }
  GC_RETURN_IF_ERROR(RunBatched(reqs, false));
  return static_cast<size_t>(n);
}

void Overlay::Impl::Truncate(uint64_t new_size) {
  if (new_size < size) {
    Clear(new_size, size);
    base_limit = std::min(base_limit, new_size);
  }
  size = new_size;
  Maintain();
  Settle(0);
}

void Overlay::Impl::Punch(uint64_t off, uint64_t len) {
  if (off >= size || len == 0) return;
  const uint64_t end = len > size - off ? size : off + len;
  Clear(off, end);
  // Above base_limit a byte without an extent already reads as zero.
  const uint64_t zero_end = std::min(end, base_limit);
  if (off < zero_end) {
    Extent z;
    z.kind = Kind::kZero;
    z.len = zero_end - off;
    PutMerged(off, std::move(z));
  }
  Maintain();
  Settle(0);
}

void Overlay::Impl::Discard() {
  extents.clear();
  lru.clear();
  for (const auto& [slot, s] : segments) store.options.disk_space->Release(s.written);
  segments.clear();
  free_slots.clear();
  dirty.clear();
  next_slot = 0;
  head = kNoSlot;
  ram = live = log_bytes = 0;
  ram_extent_count = disk_extent_count = 0;
  if (file != nullptr) {
    file.reset();
    if (Status st = store.env.Remove(path); !st.ok()) {
      spdlog::warn("overlay of {}: removing {}: {}", desktop, path, st.ToString());
    }
  }
  size = base_limit = base_size;
  Settle(0);
}

// ---------------------------------------------------------------------------
// Disk tier

Status Overlay::Impl::Spill(uint64_t goal) {
  std::vector<Range> ranges;
  uint64_t total = 0;
  for (const auto& [stamp, start] : lru) {
    const uint64_t len = extents.at(start).len;
    ranges.push_back({start, len});
    total += len;
    if (total >= goal) break;
  }
  if (ranges.empty()) return Status::Ok();
  // File order in the log: neighbours in the file become one disk extent,
  // and a later sequential read of them is sequential on disk too.
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& x, const Range& y) { return x.start < y.start; });
  std::vector<char> staged;
  staged.reserve(total);
  for (const Range& r : ranges) {
    const Extent& e = extents.at(r.start);
    staged.insert(staged.end(), e.data.begin(), e.data.end());
  }
  // ReserveDisk may evacuate segments; that never touches RAM extents (its
  // RAM fallback inserts without merging), so `ranges` stays valid.
  GC_RETURN_IF_ERROR(ReserveDisk(total));
  std::vector<Piece> pieces;
  GC_RETURN_IF_ERROR(AppendReserved(staged, &pieces));
  for (const Range& r : ranges) Take(extents.find(r.start));
  PlaceOnDisk(ranges, pieces);
  store.spilled.Add(total);
  Settle(0);
  return Status::Ok();
}

Status Overlay::Impl::ReserveDisk(uint64_t n) {
  DiskSpace& space = *store.options.disk_space;
  if (space.Acquire(n)) return Status::Ok();
  // Our own garbage is the first space to take back: evacuate the segment
  // with the most of it and ask again, until there is no garbage left.
  for (;;) {
    uint64_t victim = kNoSlot, most = 0;
    for (const auto& [slot, s] : segments) {
      if (s.written - s.live > most) {
        most = s.written - s.live;
        victim = slot;
      }
    }
    if (victim == kNoSlot) {
      return Status::Error(Code::kNoSpace, "overlay of " + desktop + ": no local disk space");
    }
    GC_RETURN_IF_ERROR(Evacuate(victim));
    if (space.Acquire(n)) return Status::Ok();
  }
}

// REQUIRES: bytes.size() acquired from DiskSpace. On failure the bytes
// count as written garbage of their segments (given back when those are
// freed), so the accounting stays whole.
Status Overlay::Impl::AppendReserved(std::span<const char> bytes, std::vector<Piece>* pieces) {
  pieces->clear();
  if (file == nullptr) {
    auto opened = store.env.Open(path, /*create=*/true, /*truncate=*/true);
    if (!opened.ok()) {
      store.options.disk_space->Release(bytes.size());
      store.io_errors.Add();
      return Status::Error(opened.status().code(),
                           "creating overlay log: " + opened.status().message());
    }
    file = std::move(opened).value();
  }
  std::vector<io::Request> reqs;
  for (uint64_t done = 0; done < bytes.size();) {
    if (head == kNoSlot || segments.at(head).written == seg_size) head = AllocSlot();
    Segment& s = segments.at(head);
    const uint64_t n = std::min<uint64_t>(bytes.size() - done, seg_size - s.written);
    const uint64_t pos = head * seg_size + s.written;
    s.written += n;
    log_bytes += n;
    pieces->push_back({pos, n});
    reqs.push_back({pos, const_cast<char*>(bytes.data() + done), n, true});
    done += n;
  }
  store.appends.Add();
  // The books above already say where the bytes go; only the turn holder
  // changes them, and readers cannot see these offsets before PlaceOnDisk.
  io::File* log = file.get();
  // A disk fuller than the budget knows: the read cache gives real space
  // back (still without mu), and the append is tried once more.
  DiskSpace& space = *store.options.disk_space;
  Status st = Unlocked([&] {
    Status s = log->Run(reqs);
    if (s.code() == Code::kNoSpace && space.MakeRoom(bytes.size())) s = log->Run(reqs);
    return s;
  });
  if (!st.ok()) {
    store.io_errors.Add();
    for (const Piece& p : *pieces) dirty.push_back(SlotOf(p.off));
    pieces->clear();
  }
  return st;
}

// REQUIRES: `ranges` (ascending, empty in the map) were appended end to end
// as `pieces`.
void Overlay::Impl::PlaceOnDisk(std::span<const Range> ranges, std::span<const Piece> pieces) {
  size_t pi = 0;
  uint64_t used = 0;
  for (const Range& r : ranges) {
    for (uint64_t done = 0; done < r.len;) {
      const Piece& p = pieces[pi];
      const uint64_t n = std::min(r.len - done, p.len - used);
      Extent e;
      e.kind = Kind::kDisk;
      e.len = n;
      e.disk_off = p.off + used;
      PutMerged(r.start + done, std::move(e));
      done += n;
      used += n;
      if (used == p.len) {
        ++pi;
        used = 0;
      }
    }
  }
}

uint64_t Overlay::Impl::AllocSlot() {
  uint64_t slot;
  if (!free_slots.empty()) {
    slot = *free_slots.begin();  // lowest first: the file stays compact
    free_slots.erase(free_slots.begin());
  } else {
    slot = next_slot++;
  }
  segments.emplace(slot, Segment{});
  return slot;
}

// REQUIRES: the segment has no live bytes left; `moved` of its bytes were
// relocated by the caller (the rest was garbage).
void Overlay::Impl::FreeSlot(uint64_t slot, uint64_t moved) {
  auto it = segments.find(slot);
  const uint64_t written = it->second.written;
  segments.erase(it);
  log_bytes -= written;
  store.options.disk_space->Release(written);
  store.reclaimed.Add(written - moved);
  if (head == slot) head = kNoSlot;
  if (segments.empty()) {
    if (Status st = file->Truncate(0); !st.ok()) {
      spdlog::warn("overlay of {}: truncating {}: {}", desktop, path, st.ToString());
    }
    free_slots.clear();
    next_slot = 0;
    return;
  }
  free_slots.insert(slot);
  if (Status st = file->Punch(slot * seg_size, seg_size); !st.ok() && !punch_warned) {
    // The slot is reused by the next segment, so the file does not grow; it
    // just keeps the freed blocks until then.
    punch_warned = true;
    spdlog::warn(
        "overlay of {}: cannot punch freed segments in {} ({}); their blocks stay "
        "allocated until reused",
        desktop, path, st.ToString());
  }
}

Status Overlay::Impl::Evacuate(uint64_t slot) {
  const Segment& s = segments.at(slot);
  const uint64_t moved = s.live;
  std::vector<Range> ranges;
  std::vector<io::Request> reqs;
  std::vector<char> buf(moved);
  uint64_t pos = 0;
  for (uint64_t start : s.extents) {  // ascending file offsets
    const Extent& e = extents.at(start);
    ranges.push_back({start, e.len});
    reqs.push_back({e.disk_off, buf.data() + pos, e.len, false});
    pos += e.len;
  }
  GC_RETURN_IF_ERROR(RunBatched(reqs, /*unlocked=*/true));
  if (head == slot) head = kNoSlot;  // the copy goes to another segment
  DiskSpace& space = *store.options.disk_space;
  std::vector<Piece> pieces;
  if (moved > 0 && space.Acquire(moved)) {
    // Copy first: the old extents keep serving reads until the copy is placed.
    GC_RETURN_IF_ERROR(AppendReserved(buf, &pieces));
    for (const Range& r : ranges) Take(extents.find(r.start));
    PlaceOnDisk(ranges, pieces);
    FreeSlot(slot, moved);
    store.compacted.Add(moved);
    return Status::Ok();
  }
  // No room for a copy beside the original (a full disk): park the live
  // bytes in RAM as the coldest extents, free the segment, and write them
  // again from there. Readers see the RAM copy meanwhile.
  auto park = [&] {
    uint64_t at = 0;
    for (const Range& r : ranges) {
      Extent e;
      e.kind = Kind::kRam;
      e.len = r.len;
      e.data.assign(buf.begin() + at, buf.begin() + at + r.len);
      Put(r.start, std::move(e));  // no merging: Spill() holds RAM extent keys
      at += r.len;
    }
  };
  for (const Range& r : ranges) Take(extents.find(r.start));
  park();
  FreeSlot(slot, moved);
  store.compacted.Add(moved);
  if (moved == 0) return Status::Ok();
  Status st = space.Acquire(moved)
                  ? AppendReserved(buf, &pieces)
                  : Status::Error(Code::kNoSpace, "disk space taken during compaction");
  if (st.ok()) {
    for (const Range& r : ranges) Take(extents.find(r.start));
    PlaceOnDisk(ranges, pieces);
    return Status::Ok();
  }
  // Never lose data: it stays in RAM (over budget), and the next spill tries
  // to write it again first.
  spdlog::warn("overlay of {}: compaction could not rewrite {} bytes ({}); keeping them in RAM",
               desktop, moved, st.ToString());
  return Status::Ok();
}

void Overlay::Impl::FreeDeadSegments() {
  std::vector<uint64_t> slots;
  slots.swap(dirty);
  std::sort(slots.begin(), slots.end());
  slots.erase(std::unique(slots.begin(), slots.end()), slots.end());
  for (uint64_t slot : slots) {
    auto it = segments.find(slot);
    if (it != segments.end() && it->second.live == 0) FreeSlot(slot, 0);
  }
  // Keep the survivors for the sparse check in Maintain().
  dirty = std::move(slots);
}

void Overlay::Impl::Maintain() {
  FreeDeadSegments();
  std::vector<uint64_t> touched;
  touched.swap(dirty);
  Status st;
  for (uint64_t slot : touched) {
    auto it = segments.find(slot);
    if (it == segments.end() || slot == head) continue;
    if (it->second.live * kSparseDivisor < it->second.written) {
      st = Evacuate(slot);
      if (!st.ok()) break;
    }
  }
  while (st.ok() && log_bytes - live > live + seg_size) {
    uint64_t victim = kNoSlot, most = 0;
    for (const auto& [slot, s] : segments) {
      if (slot != head && s.live * 2 < s.written && s.written - s.live > most) {
        most = s.written - s.live;
        victim = slot;
      }
    }
    if (victim == kNoSlot) break;
    st = Evacuate(victim);
  }
  if (!st.ok()) {
    spdlog::error("overlay of {}: reclaiming disk-tier space failed: {}", desktop, st.ToString());
  }
  FreeDeadSegments();
  dirty.clear();
}

Status Overlay::Impl::RunBatched(std::vector<io::Request>& reqs, bool unlocked) {
  if (reqs.empty()) return Status::Ok();
  io::File* log = file.get();
  for (size_t i = 0; i < reqs.size(); i += kReadBatch) {
    const size_t n = std::min(kReadBatch, reqs.size() - i);
    auto batch = std::span(reqs).subspan(i, n);
    Status st = unlocked ? Unlocked([&] { return log->Run(batch); }) : log->Run(batch);
    if (!st.ok()) {
      store.io_errors.Add();
      return st;
    }
  }
  return Status::Ok();
}

void Overlay::Impl::Settle(uint64_t reserved) {
  const uint64_t d_ram = ram - pub_ram;  // modular: may be "negative"
  store.ram_bytes.fetch_add(d_ram - reserved, std::memory_order_relaxed);
  store.ram_gauge.Add(static_cast<int64_t>(d_ram));
  store.disk_bytes.fetch_add(live - pub_live, std::memory_order_relaxed);
  store.disk_gauge.Add(static_cast<int64_t>(live - pub_live));
  store.log_gauge.Add(static_cast<int64_t>(log_bytes - pub_log));
  store.ram_extents.Add(ram_extent_count - pub_ram_extents);
  store.disk_extents.Add(disk_extent_count - pub_disk_extents);
  pub_ram = ram;
  pub_live = live;
  pub_log = log_bytes;
  seen_size.store(size, std::memory_order_release);
  seen_ram.store(ram, std::memory_order_relaxed);
  seen_live.store(live, std::memory_order_relaxed);
  pub_ram_extents = ram_extent_count;
  pub_disk_extents = disk_extent_count;
}

void Overlay::Impl::ReportNoSpace(uint64_t bytes) {
  store.enospc.Add();
  if (enospc_counter == nullptr) {
    // Registered on first use: only desktops that hit the wall get a series.
    enospc_counter = &store.options.registry->GetCounter(
        "goldcache_overlay_desktop_enospc_total", "Overlay writes refused with ENOSPC, by desktop.",
        {{"desktop", desktop}});
  }
  enospc_counter->Add();
  const auto now = std::chrono::steady_clock::now();
  if (now - last_enospc_log < kNoSpaceLogInterval && last_enospc_log.time_since_epoch().count()) {
    ++enospc_suppressed;
    return;
  }
  spdlog::warn(
      "overlay of {}: ENOSPC, write of {} bytes refused: RAM tier {}/{} bytes, disk tier "
      "{} live of {} bytes, local disk full ({} more refusals since the last report)",
      desktop, bytes, ram, budget, live, log_bytes, enospc_suppressed);
  last_enospc_log = now;
  enospc_suppressed = 0;
}

// ---------------------------------------------------------------------------
// Public API

Result<std::unique_ptr<OverlayStore>> OverlayStore::Open(const OverlayOptions& options) {
  if (options.dir.empty() || options.disk_space == nullptr || options.registry == nullptr) {
    return Status::Error(Code::kInvalidArgument,
                         "overlay store needs a dir, a disk space and a metrics registry");
  }
  if (options.segment_size < 4096 || options.segment_size % 4096 != 0) {
    return Status::Error(Code::kInvalidArgument,
                         "overlay segment size must be a positive multiple of 4KiB, got " +
                             std::to_string(options.segment_size));
  }
  // Non-persistent by contract: whatever an earlier agent left is garbage.
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) {
    return Status::Error(Code::kIoError,
                         "creating overlay dir " + options.dir + ": " + ec.message());
  }
  std::vector<std::filesystem::path> stale;
  for (const auto& entry : std::filesystem::directory_iterator(options.dir, ec)) {
    stale.push_back(entry.path());
  }
  if (ec) return Status::Error(Code::kIoError, "listing " + options.dir + ": " + ec.message());
  for (const auto& p : stale) {
    std::filesystem::remove_all(p, ec);
    if (ec) {
      return Status::Error(Code::kIoError, "wiping " + p.string() + ": " + ec.message());
    }
  }
  auto impl = std::make_unique<Impl>(options);
  spdlog::info(
      "overlay store {}: RAM {} bytes per desktop, {} per host, segments of {} bytes, "
      "{} stale entries wiped",
      options.dir, options.ram_per_desktop, options.ram_host_cap, options.segment_size,
      stale.size());
  return std::unique_ptr<OverlayStore>(new OverlayStore(std::move(impl)));
}

OverlayStore::OverlayStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

OverlayStore::~OverlayStore() = default;

std::unique_ptr<Overlay> OverlayStore::Create(const std::string& desktop, uint64_t base_size) {
  const uint64_t serial = impl_->next_serial.fetch_add(1, std::memory_order_relaxed);
  return std::unique_ptr<Overlay>(
      new Overlay(std::make_unique<Overlay::Impl>(*impl_, desktop, base_size, serial)));
}

uint64_t OverlayStore::ram_bytes() const {
  return impl_->ram_bytes.load(std::memory_order_relaxed);
}

uint64_t OverlayStore::disk_bytes() const {
  return impl_->disk_bytes.load(std::memory_order_relaxed);
}

Overlay::Overlay(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Overlay::~Overlay() = default;

uint64_t Overlay::size() const { return impl_->seen_size.load(std::memory_order_acquire); }

Result<size_t> Overlay::Read(uint64_t offset, std::span<char> out, BaseReader& base) {
  std::vector<Range> from_base;
  size_t n;
  {
    std::lock_guard lock(impl_->mu);
    auto got = impl_->ReadLocked(offset, out, &from_base);
    if (!got.ok()) return got.status();
    n = *got;
  }
  // The base may be a datastore read that takes long; the desktop's writes
  // need not wait for it. The ranges were decided under the lock, so a
  // concurrent write to them is simply ordered after this read.
  for (const Range& r : from_base) {
    char* dst = out.data() + (r.start - offset);
    auto got = base.ReadBase(r.start, std::span<char>(dst, r.len));
    if (!got.ok()) return got.status();
    if (*got < r.len) std::memset(dst + *got, 0, r.len - *got);  // past the base's end
  }
  return n;
}

Status Overlay::Write(uint64_t offset, std::span<const char> data) {
  Impl::Turn turn(*impl_);
  return impl_->Write(offset, data);
}

Status Overlay::Truncate(uint64_t size) {
  Impl::Turn turn(*impl_);
  impl_->Truncate(size);
  return Status::Ok();
}

Status Overlay::PunchHole(uint64_t offset, uint64_t length) {
  Impl::Turn turn(*impl_);
  impl_->Punch(offset, length);
  return Status::Ok();
}

void Overlay::Reset() {
  Impl::Turn turn(*impl_);
  impl_->Discard();
}

uint64_t Overlay::ram_bytes() const { return impl_->seen_ram.load(std::memory_order_relaxed); }

uint64_t Overlay::disk_bytes() const { return impl_->seen_live.load(std::memory_order_relaxed); }

}  // namespace goldcache::overlay
