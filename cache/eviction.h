// Which cached chunk leaves first when the local store needs room
// (invariant 9: one pass never evicts repeated use, whatever the request
// size).
//
// Three lists and a ghost list, the shape of Linux's active/inactive page
// lists with refault detection (and of 2Q's A1in/Am/A1out):
//
//   scan       chunks first brought in by a long sequential run of one reader
//              (an antivirus sweep, a backup, a full-image copy): FIFO, and
//              the first to go. Concurrent sweeps of one template by many
//              desktops still share them while they are close together.
//   probation  chunks used once, otherwise: LRU; victims after scan.
//   protected  chunks used again in a later pass: LRU, at most 3/4 of the
//              capacity; its coldest overflow drops back to probation.
//   ghosts     keys (not data) of chunks evicted from probation, as many as
//              the capacity: a miss whose key is there was in use and left
//              too early, and comes back protected. So a boot set read
//              once, swept out, and read by the next boot is protected from
//              then on.
//
// A use is one reader's one pass over a chunk: touches by the same stream
// within kUseWindow of the chunk's last counted touch are the same use (16
// reads of 64 KiB of one chunk, one handle's sequential run through it), so
// request size does not turn one pass into many uses. A touch from a
// scanning run is never a second use: N desktops sweeping the same template
// do not make it look hot.
//
// Eviction order survives a restart: Order() lists every key coldest first
// with its list, and Restore() rebuilds the lists from that.
//
// Not thread-safe: the cache keeps one per shard, under the shard's lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "index/records.h"

namespace goldcache::cache {

class EvictionPolicy {
 public:
  static constexpr uint64_t kUseWindowMs = 1000;

  enum class List : uint8_t { kScan = 0, kProbation = 1, kProtected = 2 };

  // Who touches a chunk, and how.
  struct Use {
    uint32_t stream = 0;  // a reader's identity (0: anonymous, every touch is its own use)
    bool scan = false;    // part of a long sequential run
    uint64_t now_ms = 0;  // a monotonic clock
  };

  // `capacity`: the chunks this policy may hold (sizes protected and ghosts).
  explicit EvictionPolicy(size_t capacity);

  // A chunk newly cached. REQUIRES: key not present.
  void Insert(const index::ChunkKey& key, const Use& use);
  // A hit. No-op when absent.
  void Touch(const index::ChunkKey& key, const Use& use);
  // A chunk no reader needs any more (its generation was superseded on the
  // datastore): the next victim, before everything else, and no ghost when
  // it goes. A later touch brings it back as usual. No-op when absent.
  void Retire(const index::ChunkKey& key);
  // Dropped for another reason (damaged, evicted by command): no ghost.
  void Erase(const index::ChunkKey& key);
  // Removes and returns up to `n` keys in eviction order (scan, probation,
  // protected; coldest first), passing over keys for which `evictable` is
  // false (chunks being read, pinned generations).
  std::vector<index::ChunkKey> PickVictims(
      size_t n, const std::function<bool(const index::ChunkKey&)>& evictable);

  // Every key, in eviction order (the first is the next victim).
  std::vector<std::pair<index::ChunkKey, List>> Order() const;
  // Puts `key` (not present) in `list` as its coldest so far: called in
  // Order()'s order rebuilds the same lists.
  void Restore(const index::ChunkKey& key, List list);

  bool Contains(const index::ChunkKey& key) const { return nodes_.count(key) != 0; }
  std::optional<List> ListOf(const index::ChunkKey& key) const;
  size_t size() const { return nodes_.size(); }
  size_t size(List list) const { return lists_[static_cast<int>(list)].size(); }
  size_t ghosts() const { return ghost_index_.size(); }

 private:
  using Keys = std::list<index::ChunkKey>;  // front = most recent
  struct Node {
    Keys::iterator it;
    List list;
    uint32_t last_stream = 0;
    uint64_t last_use_ms = 0;
  };
  Keys& L(List list) { return lists_[static_cast<int>(list)]; }
  void MoveToFront(Node& node, List to);
  void AddGhost(const index::ChunkKey& key);
  void EnforceProtectedLimit();

  const size_t capacity_;
  const size_t protected_limit_;
  Keys lists_[3];
  std::unordered_map<index::ChunkKey, Node, index::ChunkKeyHash> nodes_;
  Keys ghosts_;  // front = most recent
  std::unordered_map<index::ChunkKey, Keys::iterator, index::ChunkKeyHash> ghost_index_;
};

}  // namespace goldcache::cache
