#include "cache/eviction.h"

#include <algorithm>

namespace goldcache::cache {

EvictionPolicy::EvictionPolicy(size_t capacity)
    : capacity_(std::max<size_t>(capacity, 1)),
      protected_limit_(std::max<size_t>(capacity_ * 3 / 4, 1)) {}

void EvictionPolicy::MoveToFront(Node& node, List to) {
  L(to).splice(L(to).begin(), L(node.list), node.it);
  node.list = to;
}

void EvictionPolicy::AddGhost(const index::ChunkKey& key) {
  if (ghost_index_.count(key)) return;
  ghosts_.push_front(key);
  ghost_index_[key] = ghosts_.begin();
  while (ghost_index_.size() > capacity_) {
    ghost_index_.erase(ghosts_.back());
    ghosts_.pop_back();
  }
}

void EvictionPolicy::EnforceProtectedLimit() {
  Keys& prot = L(List::kProtected);
  while (prot.size() > protected_limit_) {
    // The coldest protected chunk gets one more chance in probation.
    Node& cold = nodes_.at(prot.back());
    MoveToFront(cold, List::kProbation);
  }
}

void EvictionPolicy::Insert(const index::ChunkKey& key, const Use& use) {
  List list = use.scan ? List::kScan : List::kProbation;
  if (auto g = ghost_index_.find(key); g != ghost_index_.end()) {
    ghosts_.erase(g->second);
    ghost_index_.erase(g);
    // Back soon after it was evicted while in use: this is its second use.
    if (!use.scan) list = List::kProtected;
  }
  L(list).push_front(key);
  nodes_[key] = Node{L(list).begin(), list, use.stream, use.now_ms};
  if (list == List::kProtected) EnforceProtectedLimit();
}

void EvictionPolicy::Touch(const index::ChunkKey& key, const Use& use) {
  auto it = nodes_.find(key);
  if (it == nodes_.end()) return;
  Node& node = it->second;
  const bool same_use = use.stream != 0 && use.stream == node.last_stream &&
                        use.now_ms - node.last_use_ms < kUseWindowMs;
  node.last_stream = use.stream;
  node.last_use_ms = use.now_ms;
  if (use.scan) return;  // a sweep neither promotes nor refreshes
  switch (node.list) {
    case List::kScan:
      MoveToFront(node, List::kProbation);  // its first use that is not a sweep
      break;
    case List::kProbation:
      if (same_use) {
        MoveToFront(node, List::kProbation);
      } else {
        MoveToFront(node, List::kProtected);
        EnforceProtectedLimit();
      }
      break;
    case List::kProtected:
      MoveToFront(node, List::kProtected);
      break;
  }
}

void EvictionPolicy::Retire(const index::ChunkKey& key) {
  auto it = nodes_.find(key);
  if (it == nodes_.end()) return;
  Node& node = it->second;
  L(List::kScan).splice(L(List::kScan).end(), L(node.list), node.it);
  node.list = List::kScan;
}

void EvictionPolicy::Erase(const index::ChunkKey& key) {
  auto it = nodes_.find(key);
  if (it == nodes_.end()) return;
  L(it->second.list).erase(it->second.it);
  nodes_.erase(it);
}

std::vector<index::ChunkKey> EvictionPolicy::PickVictims(
    size_t n, const std::function<bool(const index::ChunkKey&)>& evictable) {
  std::vector<index::ChunkKey> victims;
  for (List list : {List::kScan, List::kProbation, List::kProtected}) {
    Keys& keys = L(list);
    for (auto it = keys.end(); it != keys.begin() && victims.size() < n;) {
      --it;
      if (!evictable(*it)) continue;
      const index::ChunkKey key = *it;
      victims.push_back(key);
      nodes_.erase(key);
      it = keys.erase(it);
      if (list == List::kProbation) AddGhost(key);
    }
  }
  return victims;
}

std::vector<std::pair<index::ChunkKey, EvictionPolicy::List>> EvictionPolicy::Order() const {
  std::vector<std::pair<index::ChunkKey, List>> out;
  out.reserve(nodes_.size());
  for (List list : {List::kScan, List::kProbation, List::kProtected}) {
    const Keys& keys = lists_[static_cast<int>(list)];
    for (auto it = keys.rbegin(); it != keys.rend(); ++it) out.emplace_back(*it, list);
  }
  return out;
}

void EvictionPolicy::Restore(const index::ChunkKey& key, List list) {
  // Coldest first in, so each new one goes to the hot end.
  L(list).push_front(key);
  nodes_[key] = Node{L(list).begin(), list, 0, 0};
}

std::optional<EvictionPolicy::List> EvictionPolicy::ListOf(const index::ChunkKey& key) const {
  auto it = nodes_.find(key);
  if (it == nodes_.end()) return std::nullopt;
  return it->second.list;
}

}  // namespace goldcache::cache
