// overlay/ — where a non-persistent desktop's writes live (docs/design.md §3
// "nonpersistent"; §4, contracts 4 and 5).
//
// An Overlay holds everything one desktop file wrote over its base (the
// datastore file's content, read through the chunk cache): written extents,
// punched holes, and the file's current size. Reads merge the overlay over
// the base. Nothing here can reach the datastore: the base is only ever read,
// through a BaseReader.
//
// Tiers: new writes land in RAM (a per-desktop budget and a host-wide cap);
// when a budget is exceeded, the coldest RAM data spills to the disk tier, a
// log of large sequential appends in segment files under the overlay dir,
// with an extent map saying where every byte lives. Overwritten and discarded
// data is garbage; segments are reclaimed (compacted or freed) so the log does
// not grow without bound. Small and unaligned writes are coalesced in RAM
// before they go down. The RAM limits count what the buffers take from the
// heap (their capacity), so they bound the agent's memory, not only payload.
//
// Durability: none, by contract. fsync returns once data is in the overlay; an
// overlay is discarded on reset and everything under the overlay dir is
// wiped when the store opens (an agent restart is a desktop reset).
//
// Space: when the disk tier would grow, it asks its DiskSpace; when neither
// RAM nor disk can take a write, the write fails with kNoSpace (ENOSPC at the
// FUSE edge) and changes nothing — never a crash, never a datastore write.
//
// Thread safety: OverlayStore and Overlay are safe for concurrent use.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "metrics/metrics.h"
#include "util/status.h"

namespace goldcache::io {
class Env;
}

namespace goldcache::overlay {

// The content under the overlay: reads of the base file. Short only at the
// base's end (bytes past it read as zeros when the overlay size is larger).
class BaseReader {
 public:
  virtual ~BaseReader() = default;
  virtual Result<size_t> ReadBase(uint64_t offset, std::span<char> out) = 0;
};

// Decides whether the disk tier may use more bytes of the host's local disk.
// The agent's implementation lets overlays outrank the read cache (which
// gives space back); FixedDiskSpace is a plain limit.
class DiskSpace {
 public:
  virtual ~DiskSpace() = default;
  // True when the disk tier may use `bytes` more; false = no space.
  virtual bool Acquire(uint64_t bytes) = 0;
  virtual void Release(uint64_t bytes) = 0;
  // The file system refused a write of `bytes` that Acquire allowed (the
  // disk is fuller than the budget knows): makes real room if it can (the
  // agent's read cache gives disk back) and says whether to retry once.
  virtual bool MakeRoom(uint64_t bytes) { return false; }
};

class FixedDiskSpace : public DiskSpace {
 public:
  explicit FixedDiskSpace(uint64_t capacity);
  bool Acquire(uint64_t bytes) override;
  void Release(uint64_t bytes) override;
  uint64_t used() const;

 private:
  const uint64_t capacity_;
  std::atomic<uint64_t> used_{0};
};

struct OverlayOptions {
  std::string dir;                          // disk tier; wiped at Open
  uint64_t ram_per_desktop = 256ull << 20;  // RAM budget of one overlay
  uint64_t ram_host_cap = 4ull << 30;       // RAM of all overlays together
  uint64_t segment_size = 64ull << 20;      // disk-tier log segment size
  DiskSpace* disk_space = nullptr;          // required; must outlive the store
  metrics::Registry* registry = nullptr;    // required; must outlive the store
  io::Env* env = nullptr;                   // the disk tier's files; null: io::PosixEnv()
};

class Overlay;

class OverlayStore {
 public:
  static Result<std::unique_ptr<OverlayStore>> Open(const OverlayOptions& options);
  ~OverlayStore();  // REQUIRES: every Overlay destroyed first

  // An empty overlay over a base of `base_size` bytes (its initial size).
  // `desktop` names it in logs and metrics (e.g. "pool/vm017.qcow2").
  std::unique_ptr<Overlay> Create(const std::string& desktop, uint64_t base_size);

  uint64_t ram_bytes() const;   // all overlays, RAM tier
  uint64_t disk_bytes() const;  // all overlays, disk tier (live data)

 private:
  struct Impl;
  friend class Overlay;
  explicit OverlayStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Overlay {
 public:
  ~Overlay();  // discards everything, RAM and disk

  uint64_t size() const;
  // Reads up to out.size() bytes at `offset`: overlay data where written,
  // zeros where punched or past the base's end, base content elsewhere.
  // Short only at size().
  Result<size_t> Read(uint64_t offset, std::span<char> out, BaseReader& base);
  // Writes all of `data` at `offset`, extending size() if needed. kNoSpace
  // leaves the overlay as it was.
  Status Write(uint64_t offset, std::span<const char> data);
  // Sets size(); growing reads as zeros, shrinking discards what lies beyond.
  Status Truncate(uint64_t size);
  // [offset, offset+length) reads as zeros afterwards; size() unchanged.
  Status PunchHole(uint64_t offset, uint64_t length);
  // Back to the base: all writes discarded, size() = base size.
  void Reset();

  // size(), ram_bytes() and disk_bytes() never wait for the overlay's IO:
  // they answer as of the last change that completed.
  uint64_t ram_bytes() const;
  uint64_t disk_bytes() const;

 private:
  struct Impl;
  friend class OverlayStore;
  explicit Overlay(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace goldcache::overlay
