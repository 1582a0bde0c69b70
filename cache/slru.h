// Segmented LRU: the read cache's scan-resistant eviction order.
//
// A chunk enters the probation segment; a second use promotes it to the
// protected segment (capped at a fraction of the entries; overflow is demoted
// back to probation). Victims come from the cold end of probation first, so a
// one-pass scan (an antivirus sweep, a full-image copy) churns probation and
// leaves the boot working set in protected alone.
//
// Not thread-safe: the cache calls it under its own mutex.
#pragma once

#include <cstddef>
#include <functional>
#include <list>
#include <unordered_map>
#include <vector>

#include "index/records.h"

namespace goldcache::cache {

class SlruPolicy {
 public:
  // `protected_capacity`: at most this many entries live in protected.
  explicit SlruPolicy(size_t protected_capacity) : protected_capacity_(protected_capacity) {}

  // REQUIRES: key not present.
  void Insert(const index::ChunkKey& key);
  // A use of a present key; no-op when absent.
  void Touch(const index::ChunkKey& key);
  void Erase(const index::ChunkKey& key);
  // Removes and returns up to `n` keys, coldest first, passing over keys for
  // which `evictable` is false (e.g. chunks being read).
  std::vector<index::ChunkKey> PickVictims(
      size_t n, const std::function<bool(const index::ChunkKey&)>& evictable);
  size_t size() const { return nodes_.size(); }
  size_t protected_size() const { return protected_.size(); }
  bool Contains(const index::ChunkKey& key) const { return nodes_.count(key) != 0; }

 private:
  using List = std::list<index::ChunkKey>;
  struct Node {
    List::iterator it;
    bool is_protected;
  };
  const size_t protected_capacity_;
  List probation_;  // front = most recent
  List protected_;  // front = most recent
  std::unordered_map<index::ChunkKey, Node, index::ChunkKeyHash> nodes_;
};

}  // namespace goldcache::cache
