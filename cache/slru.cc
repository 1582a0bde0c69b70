#include "cache/slru.h"

namespace goldcache::cache {

void SlruPolicy::Insert(const index::ChunkKey& key) {
  probation_.push_front(key);
  nodes_[key] = Node{probation_.begin(), false};
}

void SlruPolicy::Touch(const index::ChunkKey& key) {
  auto it = nodes_.find(key);
  if (it == nodes_.end()) return;
  Node& node = it->second;
  if (node.is_protected) {
    protected_.splice(protected_.begin(), protected_, node.it);
    return;
  }
  protected_.splice(protected_.begin(), probation_, node.it);
  node.is_protected = true;
  while (protected_.size() > protected_capacity_) {
    // Demote the coldest protected entry: it gets one more chance in probation.
    auto cold = std::prev(protected_.end());
    nodes_[*cold].is_protected = false;
    probation_.splice(probation_.begin(), protected_, cold);
  }
}

void SlruPolicy::Erase(const index::ChunkKey& key) {
  auto it = nodes_.find(key);
  if (it == nodes_.end()) return;
  (it->second.is_protected ? protected_ : probation_).erase(it->second.it);
  nodes_.erase(it);
}

std::vector<index::ChunkKey> SlruPolicy::PickVictims(
    size_t n, const std::function<bool(const index::ChunkKey&)>& evictable) {
  std::vector<index::ChunkKey> victims;
  for (List* list : {&probation_, &protected_}) {
    for (auto it = list->end(); it != list->begin() && victims.size() < n;) {
      --it;
      if (!evictable(*it)) continue;
      victims.push_back(*it);
      nodes_.erase(*it);
      it = list->erase(it);
    }
  }
  return victims;
}

}  // namespace goldcache::cache
